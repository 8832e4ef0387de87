// dmabufio-bench: random or sequential direct I/O through io_uring, modelled on fio's t/io_uring.
//
//   dmabufio-bench [options] TARGET...
//     TARGET        a block device or a file on one; with several, each thread sends its I/Os to
//                   them in turn (I/O k to target k mod N; sequential offsets advance once per
//                   round), the dma-buf registered once per target (a slot each), over the
//                   smallest target's size (or --span)
//     -d DEPTH      queue depth per thread (32) -s BATCH   submit batch (8)
//     -c BATCH      complete batch (8)          -b BYTES   block size (4096)
//     -p 0|1        polled I/O (IOPOLL) (0)     -F 0|1     fixed files (1)
//     -B 0|1        fixed buffers (= --buffers fixed / plain)
//     -n THREADS    threads, each with its own ring and buffer registration; results summed (1)
//     -X 0|1        registered ring fd (io_uring_register_ring_fd) (0)
//     -r SECONDS    runtime (5)                 -R 0|1     random offsets (1)
//     -w 0|1        write instead of read (0)   --span BYTES  region of the device used (all)
//     --sqpoll      a kernel thread submits (IORING_SETUP_SQPOLL)
//     --buffers plain|fixed|dmabuf|compat (fixed) --dmabuf udmabuf|heap|test|vram (udmabuf)
//                   vram: the test exporter's device memory (a PCI BAR; vm/run --vram)
//                   compat: the library's compat mode, what works without the series: each I/O
//                   reads into registered host memory, then its bytes are copied into the dma-buf
//                   through its CPU mapping (DMA_BUF_IOCTL_SYNC around the copy; before a write)
//     --move-every MS  (--dmabuf test or vram) a mover thread MOVEs the dma-buf every MS ms (vram:
//                      evicts it to system memory and restores it to VRAM in turn) and the
//                      re-map latency is reported: MOVE ioctl return -> first completion of an
//                      I/O submitted after that return (median, p99 over all moves); and, from
//                      the test exporter's debugfs, the mean time a map took and the mean time
//                      from a move's end to the end of the map that followed it
//     --hugepages   the buffers on 2 MiB pages: plain and fixed from mmap(MAP_HUGETLB), dmabuf
//                   from udmabuf over a hugetlbfs memfd (reserve them: /proc/sys/vm/nr_hugepages)
//     --json        one JSON object on stdout
//     --progress, --no-progress
//                   a line a second on stderr, as t/io_uring's: "IOPS=..., BW=...MiB/s,
//                   IOS/call=..." (I/Os completed per io_uring_enter); on by default without --json
//     --mark FILE   write "start" to FILE when the timed run begins and "stop" when it ends, so
//                   that a host-side observer (tools/bench/qemu-cpu) can attribute QEMU's CPU time
//
// Prints IOPS, bandwidth, latency percentiles (submission to completion, every I/O), CPU time per
// I/O of this process (getrusage user+sys) and of the whole system (/proc/stat busy time: also
// interrupts and kernel threads), IOMMU maps, unmaps and IOTLB invalidations and plugged batches
// per I/O (system-wide tracepoint counts, tools/bench/trace_counters.hpp), and with --move-every
// the moves and re-map latencies.
#include <fcntl.h>
#include <getopt.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <chrono>
#include <cmath>
#include <condition_variable>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <memory>
#include <mutex>
#include <optional>
#include <random>
#include <sstream>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "dmabufio/buffer_table.hpp"
#include "dmabufio/dmabuf.hpp"
#include "dmabufio/error.hpp"
#include "dmabufio/file.hpp"
#include "dmabufio/ring.hpp"
#include "options.hpp"
#include "trace_counters.hpp"

namespace {

using dmabufio::bench::Options;
using Clock = std::chrono::steady_clock;

template <typename T>
double percentile(std::vector<T>& v, double p) {
    if (v.empty()) {
        return 0;
    }
    auto k = static_cast<std::size_t>(std::lround(p / 100.0 * static_cast<double>(v.size() - 1)));
    std::nth_element(v.begin(), v.begin() + static_cast<std::ptrdiff_t>(k), v.end());
    return static_cast<double>(v[k]);
}

double process_cpu_seconds() {
    rusage ru{};
    getrusage(RUSAGE_SELF, &ru);
    auto tv = [](timeval t) {
        return static_cast<double>(t.tv_sec) + static_cast<double>(t.tv_usec) / 1e6;
    };
    return tv(ru.ru_utime) + tv(ru.ru_stime);
}

// The test exporter's map timing (debugfs dmabuf_test/, test-only kernel patch): maps and the
// microseconds they took; moves followed by a map and the microseconds from each such move's end
// to the end of its map. nullopt where debugfs or the counters are missing.
struct ExporterTiming {
    std::uint64_t maps = 0, map_us = 0, remaps = 0, remap_us = 0;
    static std::optional<ExporterTiming> read() {
        ExporterTiming t;
        const std::array<std::pair<const char*, std::uint64_t*>, 4> files{
            {{"maps", &t.maps},
             {"map_us", &t.map_us},
             {"remaps", &t.remaps},
             {"remap_us", &t.remap_us}}};
        for (const auto& [name, value] : files) {
            std::ifstream in(std::string("/sys/kernel/debug/dmabuf_test/") + name);
            if (!(in >> *value)) {
                return std::nullopt;
            }
        }
        return t;
    }
};

// "%.1f" of a / b, or JSON null when b is 0.
std::string mean_or_null(std::uint64_t a, std::uint64_t b) {
    if (b == 0) {
        return "null";
    }
    std::array<char, 32> buf{};
    std::snprintf(buf.data(), buf.size(), "%.1f", static_cast<double>(a) / static_cast<double>(b));
    return buf.data();
}

// Busy CPU seconds of the whole system (all CPUs): /proc/stat's "cpu" line minus idle and iowait.
double system_busy_seconds() {
    std::ifstream in("/proc/stat");
    std::string line;
    std::getline(in, line);
    std::istringstream s(line);
    std::string cpu;
    s >> cpu;
    std::uint64_t total = 0;
    std::uint64_t idle = 0;
    std::uint64_t v = 0;
    for (int i = 0; i < 8 && s >> v; i++) {  // user nice system idle iowait irq softirq steal
        total += v;
        if (i == 3 || i == 4) {
            idle += v;
        }
    }
    return static_cast<double>(total - idle) / static_cast<double>(sysconf(_SC_CLK_TCK));
}

std::int64_t now_ns() {
    return std::chrono::duration_cast<std::chrono::nanoseconds>(Clock::now().time_since_epoch())
        .count();
}

constexpr std::size_t kHugePage = std::size_t{2} << 20;
const char* const kReserveHugePages =
    "reserve 2 MiB pages first: echo N > /proc/sys/vm/nr_hugepages (the kernel needs "
    "CONFIG_HUGETLBFS)";

std::size_t round_up(std::size_t n, std::size_t to) { return (n + to - 1) / to * to; }

// Anonymous, page-aligned I/O memory, populated. On 4 KiB pages (MADV_NOHUGEPAGE before the first
// touch, so that no transparent huge page backs it: the other kinds, udmabuf's memfd pages
// included, are on 4 KiB pages too), or with huge on 2 MiB hugetlb pages.
class Memory {
  public:
    Memory(std::size_t n, bool huge) : size_(huge ? round_up(n, kHugePage) : n) {
        ptr_ = ::mmap(nullptr, size_, PROT_READ | PROT_WRITE,
                      MAP_PRIVATE | MAP_ANONYMOUS | (huge ? MAP_HUGETLB : 0), -1, 0);
        if (ptr_ == MAP_FAILED) {
            dmabufio::throw_error(errno,
                                  "allocate " + std::to_string(size_) + " bytes of I/O buffers" +
                                      (huge ? " on 2 MiB pages" : ""),
                                  huge ? kReserveHugePages : "");
        }
        // A kernel without transparent huge pages (EINVAL) or without madvise at all (ENOSYS: the
        // lab's tinyconfig kernels) has 4 KiB pages only; any other failure, or one on a kernel
        // that has transparent huge pages, is an error.
        if (!huge && ::madvise(ptr_, n, MADV_NOHUGEPAGE) != 0) {
            const int err = errno;
            if ((err != EINVAL && err != ENOSYS) ||
                ::access("/sys/kernel/mm/transparent_hugepage", F_OK) == 0) {
                ::munmap(ptr_, n);
                dmabufio::throw_error(err, "madvise(MADV_NOHUGEPAGE) the I/O buffers");
            }
        }
        std::memset(ptr_, 0x5a, size_);
    }
    Memory(const Memory&) = delete;
    Memory& operator=(const Memory&) = delete;
    Memory(Memory&&) = delete;
    Memory& operator=(Memory&&) = delete;
    ~Memory() { ::munmap(ptr_, size_); }
    [[nodiscard]] std::uint8_t* data() const { return static_cast<std::uint8_t*>(ptr_); }

  private:
    std::size_t size_;
    void* ptr_ = nullptr;
};

// A udmabuf over a hugetlbfs memfd: size bytes (a multiple of 2 MiB) on 2 MiB pages.
dmabufio::DmaBuf huge_udmabuf(std::size_t size) {
    const dmabufio::Fd memfd(
        ::memfd_create("dmabufio-bench", MFD_HUGETLB | MFD_ALLOW_SEALING | MFD_CLOEXEC));
    if (!memfd.valid()) {
        dmabufio::throw_error(errno, "memfd_create(MFD_HUGETLB) for a udmabuf", kReserveHugePages);
    }
    if (::fallocate(memfd.get(), 0, 0, static_cast<off_t>(size)) != 0) {
        dmabufio::throw_error(errno, "allocate " + std::to_string(size) + " bytes of 2 MiB pages",
                              kReserveHugePages);
    }
    return dmabufio::DmaBuf::udmabuf_over_memfd(memfd, size);
}

// What the mover thread publishes: move g (1-based) returned from its ioctl at ret_ns[g]; the
// first completion of an I/O prepared after that return is first_done_ns[g] (any thread).
struct MoveLog {
    explicit MoveLog(std::size_t max) : ret_ns(max), first_done_ns(max) {}
    std::atomic<std::uint32_t> gen{0};
    std::vector<std::int64_t> ret_ns;
    std::vector<std::int64_t> ioctl_ns;
    std::vector<std::atomic<std::int64_t>> first_done_ns;

    void completed(std::uint32_t g, std::int64_t t) {
        if (g == 0) {
            return;
        }
        std::int64_t cur = first_done_ns[g].load(std::memory_order_relaxed);
        while ((cur == 0 || t < cur) &&
               !first_done_ns[g].compare_exchange_weak(cur, t, std::memory_order_relaxed)) {
        }
    }
};

// One thread's ring, files, buffers and results.
struct Worker {
    unsigned id = 0;
    std::unique_ptr<dmabufio::Ring> ring;
    std::optional<dmabufio::FixedFiles> files;
    std::optional<dmabufio::BufferTable> table;
    std::unique_ptr<Memory> mem;
    std::uint64_t dma_base = 0;  // this thread's region of the shared dma-buf
    dmabufio::SlotKind kind = dmabufio::SlotKind::kEmpty;
    // results
    std::uint64_t ios = 0;
    // for the progress line: I/Os completed and io_uring_enter calls so far
    std::atomic<std::uint64_t> ios_now{0};
    std::atomic<std::uint64_t> calls_now{0};
    std::vector<std::uint32_t> lat_ns;
    std::string error;
};

void run_worker(const Options& o, Worker& w, const std::vector<int>& dev_fds, std::uint64_t blocks,
                Clock::time_point deadline, MoveLog* moves, std::atomic<bool>& stop) {
    dmabufio::Ring& ring = *w.ring;
    if (o.register_ring) {
        ring.register_ring_fd();
    }
    const bool fixed = o.buffers == "fixed";
    const bool dmabuf = o.buffers == "dmabuf";
    const bool compat = o.buffers == "compat";
    const auto ntargets = static_cast<unsigned>(dev_fds.size());
    std::mt19937_64 gen(42 + w.id);
    // I/O k goes to target k mod N; sequential offsets advance once per round of the targets.
    std::uint64_t seq = blocks / o.threads * w.id * ntargets;
    std::uint64_t issued_ios = 0;
    std::vector<unsigned> slot_target(o.depth);
    auto next_offset = [&] {
        return (o.random ? gen() % blocks : seq++ / ntargets % blocks) * o.bs;
    };
    std::vector<std::int64_t> issued(o.depth);
    std::vector<std::uint32_t> move_gen(o.depth);
    w.lat_ns.reserve(1 << 20);

    auto prep = [&](unsigned slot) {
        io_uring_sqe* sqe = ring.sqe();
        const auto target = static_cast<unsigned>(issued_ios++ % ntargets);
        const int fd = o.fixed_files ? static_cast<int>(target) : dev_fds[target];
        slot_target[slot] = target;
        const std::uint64_t off = next_offset();
        void* buf = nullptr;
        const std::uint64_t slot_off = static_cast<std::uint64_t>(slot) * o.bs;
        int buf_index = 0;
        if (dmabuf) {
            // A dma-buf slot's address is the byte offset into the dma-buf; the dma-buf is
            // registered once per target, in the slot of the target's index.
            // NOLINTNEXTLINE(performance-no-int-to-ptr)
            buf = reinterpret_cast<void*>(w.table->addr(target, w.dma_base + slot_off));
            buf_index = static_cast<int>(target);
        } else if (compat) {
            // Compat: the I/O addresses the slot's staging memory; a write's bytes come from the
            // dma-buf first.
            if (o.write) {
                w.table->compat_copy(0, slot_off, w.dma_base + slot_off, o.bs, false);
            }
            // NOLINTNEXTLINE(performance-no-int-to-ptr)
            buf = reinterpret_cast<void*>(w.table->addr(0, slot_off));
        } else {
            buf = w.mem->data() + static_cast<std::size_t>(slot) * o.bs;
        }
        if (fixed || dmabuf || compat) {
            o.write ? io_uring_prep_write_fixed(sqe, fd, buf, o.bs, off, buf_index)
                    : io_uring_prep_read_fixed(sqe, fd, buf, o.bs, off, buf_index);
        } else {
            o.write ? io_uring_prep_write(sqe, fd, buf, o.bs, off)
                    : io_uring_prep_read(sqe, fd, buf, o.bs, off);
        }
        if (o.fixed_files) {
            sqe->flags |= IOSQE_FIXED_FILE;
        }
        sqe->user_data = slot;
        // The move generation is read before the timestamp and the submission: an I/O tagged
        // with generation g is submitted after move g's ioctl returned.
        if (moves != nullptr) {
            move_gen[slot] = moves->gen.load(std::memory_order_acquire);
        }
        issued[slot] = now_ns();
    };

    unsigned inflight = 0;
    std::vector<unsigned> free_slots;
    for (unsigned s = 0; s < o.depth; s++) {
        free_slots.push_back(o.depth - 1 - s);
    }
    bool stopping = false;
    while (!stopping || inflight > 0) {
        unsigned queued = 0;
        while (!stopping && !free_slots.empty() && queued < o.submit_batch) {
            prep(free_slots.back());
            free_slots.pop_back();
            queued++;
        }
        const unsigned want = std::min(inflight + queued, o.complete_batch);
        ring.submit_and_wait(want);
        inflight += queued;
        io_uring_cqe* cqe = nullptr;
        unsigned head = 0;
        unsigned seen = 0;
        const std::int64_t now = now_ns();
        io_uring_for_each_cqe(ring.get(), head, cqe) {
            if (cqe->res != static_cast<int>(o.bs)) {
                const int err = cqe->res < 0 ? -cqe->res : EIO;
                dmabufio::throw_error(err,
                                      "I/O on " + o.targets[slot_target[cqe->user_data % o.depth]],
                                      cqe->res < 0 ? dmabufio::io_advice(err, o.polled)
                                                   : "short I/O: check the device and block size");
            }
            const auto slot = static_cast<unsigned>(cqe->user_data);
            if (compat && !o.write) {
                const std::uint64_t slot_off = static_cast<std::uint64_t>(slot) * o.bs;
                w.table->compat_copy(0, slot_off, w.dma_base + slot_off, o.bs, true);
            }
            w.lat_ns.push_back(static_cast<std::uint32_t>(now - issued[slot]));
            if (moves != nullptr) {
                moves->completed(move_gen[slot], now);
            }
            free_slots.push_back(slot);
            seen++;
        }
        io_uring_cq_advance(ring.get(), seen);
        inflight -= seen;
        w.ios += seen;
        w.ios_now.store(w.ios, std::memory_order_relaxed);
        w.calls_now.fetch_add(1, std::memory_order_relaxed);
        stopping = stopping || stop.load(std::memory_order_relaxed) || Clock::now() >= deadline;
    }
}

struct MoveStats {
    std::uint64_t moves = 0;
    std::uint64_t remapped = 0;  // moves with an I/O submitted after them and completed
    double remap_p50_us = 0, remap_p99_us = 0, remap_max_us = 0, ioctl_p50_us = 0;
    // The exporter's view (ExporterTiming over the run): mean map time, mean move end to re-mapped.
    std::string map_us_mean = "null", exporter_remap_us_mean = "null";
};

int run(const Options& o) {
    std::vector<std::unique_ptr<dmabufio::BlockFile>> devs;
    std::vector<int> dev_fds;
    std::uint64_t size = UINT64_MAX;
    for (const std::string& t : o.targets) {
        devs.push_back(std::make_unique<dmabufio::BlockFile>(t));
        dev_fds.push_back(devs.back()->fd());
        size = std::min(size, devs.back()->size());
    }
    const std::uint64_t span = o.span != 0 ? std::min(o.span, size) : size;
    const std::uint64_t blocks = span / o.bs;
    if (blocks == 0) {
        std::fprintf(stderr, "dmabufio-bench: the device (or --span) is smaller than one block\n");
        return 2;
    }
    dmabufio::RingOptions ro;
    ro.depth = o.depth;
    ro.iopoll = o.polled;
    ro.sqpoll = o.sqpoll;
    // The ring fd is registered per thread: each worker registers its own (run_worker).

    const std::size_t per_thread = static_cast<std::size_t>(o.depth) * o.bs;
    const std::size_t page = 4096;
    const bool dmabuf = o.buffers == "dmabuf";
    const bool compat = o.buffers == "compat";
    std::optional<dmabufio::DmaBuf> dbuf;
    if (dmabuf || compat) {
        // One dma-buf, each thread registers it once in its own ring and uses its own region.
        const std::size_t bytes = per_thread * o.threads;
        if (o.hugepages) {
            dbuf.emplace(huge_udmabuf(round_up(bytes, kHugePage)));
        } else {
            dbuf.emplace(dmabufio::DmaBuf::allocate(o.exporter, round_up(bytes, page)));
        }
    }
    std::vector<Worker> workers(o.threads);
    for (unsigned t = 0; t < o.threads; t++) {
        Worker& w = workers[t];
        w.id = t;
        w.ring = std::make_unique<dmabufio::Ring>(ro);
        if (o.fixed_files) {
            w.files.emplace(*w.ring, std::span<const int>(dev_fds));
        }
        if (dmabuf) {
            // Registered against each target's own file (its fixed file names the same file).
            w.table.emplace(*w.ring, static_cast<unsigned>(devs.size()));
            for (unsigned d = 0; d < devs.size(); d++) {
                w.kind = w.table->register_dmabuf(d, *dbuf, dev_fds[d]);
            }
            w.dma_base = per_thread * t;
        } else if (compat) {
            w.table.emplace(*w.ring, 1);
            w.kind = w.table->register_dmabuf_compat(0, *dbuf, round_up(per_thread, page));
            w.dma_base = per_thread * t;
        } else {
            w.mem = std::make_unique<Memory>(per_thread, o.hugepages);
            if (o.buffers == "fixed") {
                iovec iov{w.mem->data(), per_thread};
                w.ring->register_buffers({&iov, 1});
            }
        }
    }
    const char* path = "user memory";
    if (dmabuf || compat) {
        path = dmabufio::to_string(workers[0].kind);
    }

    std::atomic<bool> stop{false};
    std::optional<MoveLog> moves;
    if (o.move_every_ms != 0) {
        moves.emplace(static_cast<std::size_t>(o.runtime * 1000 / o.move_every_ms) + 64);
        moves->ioctl_ns.reserve(moves->ret_ns.size());
    }
    std::string mover_error;

    auto mark = [&o](const char* what) {
        if (!o.mark.empty()) {
            std::ofstream(o.mark, std::ios::trunc) << what << '\n';
        }
    };
    const dmabufio::bench::TraceCounters counters;
    mark("start");
    const dmabufio::bench::TraceCounts counts0 = counters.read();
    const std::optional<ExporterTiming> exp0 =
        moves ? ExporterTiming::read() : std::optional<ExporterTiming>{};
    const double cpu0 = process_cpu_seconds();
    const double sys0 = system_busy_seconds();
    const auto t0 = Clock::now();
    const auto deadline =
        t0 + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(o.runtime));
    std::vector<std::thread> threads;
    threads.reserve(o.threads);
    for (auto& w : workers) {
        threads.emplace_back([&, wp = &w] {
            try {
                run_worker(o, *wp, dev_fds, blocks, deadline, moves ? &*moves : nullptr, stop);
            } catch (const std::exception& e) {
                wp->error = e.what();
                stop = true;
            }
        });
    }
    std::thread mover;
    if (moves) {
        mover = std::thread([&] {
            try {
                auto next = t0 + std::chrono::milliseconds(o.move_every_ms);
                while (!stop.load() && next < deadline) {
                    std::this_thread::sleep_until(next);
                    // Every MS ms; when a MOVE takes longer than that (a debug kernel), the next
                    // one still waits MS after it, rather than MOVEs running back to back.
                    next =
                        std::max(next, Clock::now()) + std::chrono::milliseconds(o.move_every_ms);
                    const std::uint32_t g = moves->gen.load(std::memory_order_relaxed) + 1;
                    if (g >= moves->ret_ns.size()) {
                        break;
                    }
                    const std::int64_t t_call = now_ns();
                    // VRAM: an eviction to system memory and a restore to VRAM in turn.
                    dbuf->move(o.exporter != dmabufio::Exporter::kVram ? 0
                               : g % 2 == 1                            ? DMABUF_TEST_MOVE_TO_SYSTEM
                                                                       : DMABUF_TEST_MOVE_TO_VRAM);
                    const std::int64_t t_ret = now_ns();
                    moves->ret_ns[g] = t_ret;
                    moves->ioctl_ns.push_back(t_ret - t_call);
                    moves->gen.store(g, std::memory_order_release);
                }
            } catch (const std::exception& e) {
                mover_error = e.what();
                stop = true;
            }
        });
    }
    // The progress line: every second, the last second's IOPS, bandwidth and I/Os per
    // io_uring_enter, on stderr (stdout keeps the result alone).
    std::mutex progress_mutex;
    std::condition_variable progress_cv;
    bool finished = false;
    std::thread progress;
    if (o.progress) {
        progress = std::thread([&] {
            std::unique_lock lock(progress_mutex);
            std::uint64_t last_ios = 0;
            std::uint64_t last_calls = 0;
            auto last = t0;
            auto next = t0 + std::chrono::seconds(1);
            while (!progress_cv.wait_until(lock, next, [&] { return finished; })) {
                std::uint64_t ios = 0;
                std::uint64_t calls = 0;
                for (const auto& w : workers) {
                    ios += w.ios_now.load(std::memory_order_relaxed);
                    calls += w.calls_now.load(std::memory_order_relaxed);
                }
                const auto now = Clock::now();
                const double dt = std::chrono::duration<double>(now - last).count();
                const auto d_ios = static_cast<double>(ios - last_ios);
                const auto d_calls = static_cast<double>(calls - last_calls);
                std::fprintf(stderr, "IOPS=%.0f, BW=%.0fMiB/s, IOS/call=%.1f\n", d_ios / dt,
                             d_ios * o.bs / dt / (1 << 20), d_calls != 0 ? d_ios / d_calls : 0.0);
                last_ios = ios;
                last_calls = calls;
                last = now;
                next += std::chrono::seconds(1);
            }
        });
    }
    for (auto& th : threads) {
        th.join();
    }
    stop = true;
    if (mover.joinable()) {
        mover.join();
    }
    const double secs = std::chrono::duration<double>(Clock::now() - t0).count();
    const double cpu = process_cpu_seconds() - cpu0;
    const double sys = system_busy_seconds() - sys0;
    const dmabufio::bench::TraceCounts counts1 = counters.read();
    const std::optional<ExporterTiming> exp1 =
        exp0 ? ExporterTiming::read() : std::optional<ExporterTiming>{};
    mark("stop");
    if (progress.joinable()) {
        {
            const std::lock_guard lock(progress_mutex);
            finished = true;
        }
        progress_cv.notify_one();
        progress.join();
    }
    for (const auto& w : workers) {
        if (!w.error.empty()) {
            std::fprintf(stderr, "dmabufio-bench: thread %u: %s\n", w.id, w.error.c_str());
            return 1;
        }
    }
    if (!mover_error.empty()) {
        std::fprintf(stderr, "dmabufio-bench: mover: %s\n", mover_error.c_str());
        return 1;
    }

    std::uint64_t done = 0;
    std::vector<std::uint32_t> lat_ns;
    for (auto& w : workers) {
        done += w.ios;
        lat_ns.insert(lat_ns.end(), w.lat_ns.begin(), w.lat_ns.end());
        w.lat_ns = {};
    }
    MoveStats ms;
    if (moves) {
        ms.moves = moves->gen.load();
        // An I/O tagged with generation g' >= g was also submitted after move g returned: the
        // first completion after move g is the minimum over g' >= g (a suffix minimum), which
        // matters when the next MOVE came before this one's first I/O was even submitted.
        std::vector<std::int64_t> remap;
        std::int64_t first = 0;
        for (std::uint32_t g = ms.moves; g >= 1; g--) {
            const std::int64_t t = moves->first_done_ns[g].load();
            if (t != 0 && (first == 0 || t < first)) {
                first = t;
            }
            if (first != 0) {
                remap.push_back(first - moves->ret_ns[g]);
            }
        }
        ms.remapped = remap.size();
        ms.remap_p50_us = percentile(remap, 50) / 1e3;
        ms.remap_p99_us = percentile(remap, 99) / 1e3;
        ms.remap_max_us = percentile(remap, 100) / 1e3;
        ms.ioctl_p50_us = percentile(moves->ioctl_ns, 50) / 1e3;
        if (exp0 && exp1) {
            ms.map_us_mean = mean_or_null(exp1->map_us - exp0->map_us, exp1->maps - exp0->maps);
            ms.exporter_remap_us_mean =
                mean_or_null(exp1->remap_us - exp0->remap_us, exp1->remaps - exp0->remaps);
        }
    }

    const double iops = static_cast<double>(done) / secs;
    const double mbps = iops * o.bs / 1e6;
    const double p50 = percentile(lat_ns, 50) / 1e3;
    const double p99 = percentile(lat_ns, 99) / 1e3;
    const double p999 = percentile(lat_ns, 99.9) / 1e3;
    const double per_io = done != 0 ? 1e6 / static_cast<double>(done) : 0;
    ro.register_ring_fd = o.register_ring;
    const std::string ring_desc = dmabufio::describe(ro);
    const char* exporter = dmabuf || compat ? dmabufio::to_string(o.exporter) : "";
    // IOMMU operations and plugged batches per I/O (system-wide counts over the timed run; JSON
    // null where the counters are unavailable).
    std::array<std::string, 4> counted{"null", "null", "null", "null"};
    if (counters.available() && done != 0) {
        const std::array<std::uint64_t, 4> d{
            counts1.maps - counts0.maps, counts1.unmaps - counts0.unmaps,
            counts1.iotlb_invalidations - counts0.iotlb_invalidations,
            counts1.plug_batches - counts0.plug_batches};
        for (std::size_t i = 0; i < d.size(); i++) {
            std::array<char, 32> b{};
            std::snprintf(b.data(), b.size(), "%.4f",
                          static_cast<double>(d[i]) / static_cast<double>(done));
            counted[i] = b.data();
        }
    }
    if (o.json) {
        std::printf(
            "{\"buffers\": \"%s\", \"rw\": \"%s%s\", \"bs\": %u, \"qd\": %u, \"ios\": %llu, "
            "\"seconds\": %.3f, \"iops\": %.0f, \"mb_per_s\": %.1f, \"lat_us\": {\"p50\": %.1f, "
            "\"p99\": %.1f, \"p99.9\": %.1f}, \"cpu_us_per_io\": %.2f, "
            "\"sys_cpu_us_per_io\": %.2f, \"threads\": %u, \"ring\": \"%s\", "
            "\"fixed_files\": %s, \"exporter\": \"%s\", \"path\": \"%s\", \"hugepages\": %s",
            o.buffers.c_str(), o.random ? "rand" : "", o.write ? "write" : "read", o.bs, o.depth,
            static_cast<unsigned long long>(done), secs, iops, mbps, p50, p99, p999, cpu * per_io,
            sys * per_io, o.threads, ring_desc.c_str(), o.fixed_files ? "true" : "false", exporter,
            path, o.hugepages ? "true" : "false");
        std::printf(
            ", \"iommu_maps_per_io\": %s, \"iommu_unmaps_per_io\": %s, "
            "\"iotlb_invalidations_per_io\": %s, \"plug_batches_per_io\": %s",
            counted[0].c_str(), counted[1].c_str(), counted[2].c_str(), counted[3].c_str());
        if (moves) {
            std::printf(
                ", \"move_every_ms\": %u, \"moves\": %llu, \"moves_remapped\": %llu, "
                "\"remap_us\": {\"p50\": %.1f, \"p99\": %.1f, \"max\": %.1f}, "
                "\"move_ioctl_us_p50\": %.1f, \"map_us_mean\": %s, "
                "\"exporter_remap_us_mean\": %s",
                o.move_every_ms, static_cast<unsigned long long>(ms.moves),
                static_cast<unsigned long long>(ms.remapped), ms.remap_p50_us, ms.remap_p99_us,
                ms.remap_max_us, ms.ioctl_p50_us, ms.map_us_mean.c_str(),
                ms.exporter_remap_us_mean.c_str());
        }
        std::printf("}\n");
    } else {
        std::printf(
            "%s%s%s%s %s%s bs=%u qd=%u threads=%u ring=%s: IOPS=%.0f BW=%.1fMB/s lat p50=%.1fus "
            "p99=%.1fus p99.9=%.1fus cpu/io=%.2fus (system %.2fus) (%llu I/Os in %.2fs)\n",
            o.buffers.c_str(), dmabuf || compat ? "/" : "", exporter,
            o.hugepages ? " (2 MiB pages)" : "", o.random ? "rand" : "seq",
            o.write ? "write" : "read", o.bs, o.depth, o.threads, ring_desc.c_str(), iops, mbps,
            p50, p99, p999, cpu * per_io, sys * per_io, static_cast<unsigned long long>(done),
            secs);
        if (dmabuf || compat) {
            std::printf("  buffer path: %s\n", path);
        }
        if (counters.available()) {
            std::printf(
                "  per I/O: IOMMU maps %s, unmaps %s, IOTLB invalidations %s; plugged batches %s\n",
                counted[0].c_str(), counted[1].c_str(), counted[2].c_str(), counted[3].c_str());
        } else {
            std::printf("  per I/O: not counted (%s)\n", counters.why().c_str());
        }
        if (moves) {
            std::printf(
                "  moves every %ums: %llu (%llu followed by a completion); re-map latency "
                "p50=%.1fus p99=%.1fus max=%.1fus; MOVE ioctl p50=%.1fus; exporter: map "
                "%sus, move end to re-mapped %sus (means)\n",
                o.move_every_ms, static_cast<unsigned long long>(ms.moves),
                static_cast<unsigned long long>(ms.remapped), ms.remap_p50_us, ms.remap_p99_us,
                ms.remap_max_us, ms.ioctl_p50_us, ms.map_us_mean.c_str(),
                ms.exporter_remap_us_mean.c_str());
        }
    }
    return 0;
}

}  // namespace

int main(int argc, char** argv) {
    Options o;
    try {
        o = dmabufio::bench::parse_options(argc, argv);
    } catch (const std::invalid_argument& e) {
        std::fprintf(stderr, "dmabufio-bench: %s (see the header of tools/bench/bench.cpp)\n",
                     e.what());
        return 2;
    }
    try {
        return run(o);
    } catch (const dmabufio::Error& e) {
        std::fprintf(stderr, "dmabufio-bench: %s\n", e.what());
        return 1;
    }
}
