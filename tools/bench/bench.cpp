// dmabufio-bench: random or sequential direct I/O through io_uring, modelled on fio's t/io_uring.
//
//   dmabufio-bench [options] DEVICE
//     -d DEPTH      queue depth (32)            -s BATCH   submit batch (8)
//     -c BATCH      complete batch (8)          -b BYTES   block size (4096)
//     -p 0|1        polled I/O (IOPOLL) (0)     -F 0|1     fixed files (1)
//     -r SECONDS    runtime (5)                 -R 0|1     random offsets (1)
//     -w 0|1        write instead of read (0)   --span BYTES  region of the device used (all)
//     --buffers plain|fixed|dmabuf (fixed)      --dmabuf udmabuf|heap|test (udmabuf)
//     --json        one JSON object on stdout
//
// Prints IOPS, bandwidth, latency percentiles (submission to completion) and CPU time per I/O.
#include <getopt.h>
#include <sys/mman.h>
#include <sys/resource.h>

#include <algorithm>
#include <array>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <iostream>
#include <optional>
#include <random>
#include <string>
#include <vector>

#include "dmabufio/buffer_table.hpp"
#include "dmabufio/dmabuf.hpp"
#include "dmabufio/error.hpp"
#include "dmabufio/file.hpp"
#include "dmabufio/ring.hpp"

namespace {

using Clock = std::chrono::steady_clock;

struct Options {
    unsigned depth = 32;
    unsigned submit_batch = 8;
    unsigned complete_batch = 8;
    unsigned bs = 4096;
    bool polled = false;
    bool fixed_files = true;
    double runtime = 5;
    bool random = true;
    bool write = false;
    std::uint64_t span = 0;
    std::string buffers = "fixed";
    dmabufio::Exporter exporter = dmabufio::Exporter::kUdmabuf;
    bool json = false;
    std::string device;
};

[[noreturn]] void usage(const char* msg) {
    std::fprintf(stderr, "dmabufio-bench: %s (see the header of tools/bench/bench.cpp)\n", msg);
    std::exit(2);
}

Options parse(int argc, char** argv) {
    Options o;
    enum { kBuffers = 1000, kJson, kSpan, kDmaBuf };
    const std::array<option, 5> longopts{{{"buffers", required_argument, nullptr, kBuffers},
                                          {"dmabuf", required_argument, nullptr, kDmaBuf},
                                          {"json", no_argument, nullptr, kJson},
                                          {"span", required_argument, nullptr, kSpan},
                                          {nullptr, 0, nullptr, 0}}};
    int c = 0;
    while ((c = getopt_long(argc, argv, "d:s:c:b:p:F:r:R:w:", longopts.data(), nullptr)) != -1) {
        switch (c) {
            case 'd':
                o.depth = std::stoul(optarg);
                break;
            case 's':
                o.submit_batch = std::stoul(optarg);
                break;
            case 'c':
                o.complete_batch = std::stoul(optarg);
                break;
            case 'b':
                o.bs = std::stoul(optarg);
                break;
            case 'p':
                o.polled = std::stoi(optarg) != 0;
                break;
            case 'F':
                o.fixed_files = std::stoi(optarg) != 0;
                break;
            case 'r':
                o.runtime = std::stod(optarg);
                break;
            case 'R':
                o.random = std::stoi(optarg) != 0;
                break;
            case 'w':
                o.write = std::stoi(optarg) != 0;
                break;
            case kBuffers:
                o.buffers = optarg;
                break;
            case kJson:
                o.json = true;
                break;
            case kSpan:
                o.span = std::stoull(optarg);
                break;
            default:
                usage("unknown option");
        }
    }
    if (optind + 1 != argc) {
        usage("exactly one DEVICE is needed");
    }
    o.device = argv[optind];
    if (o.buffers != "plain" && o.buffers != "fixed" && o.buffers != "dmabuf") {
        usage("--buffers takes plain, fixed or dmabuf");
    }
    if (o.depth == 0 || o.bs == 0 || o.bs % 512 != 0) {
        usage("depth must be > 0 and the block size a multiple of 512");
    }
    o.submit_batch = std::clamp(o.submit_batch, 1U, o.depth);
    o.complete_batch = std::clamp(o.complete_batch, 1U, o.depth);
    return o;
}

double percentile(std::vector<std::uint32_t>& v, double p) {
    if (v.empty()) {
        return 0;
    }
    auto k = static_cast<std::size_t>(p / 100.0 * static_cast<double>(v.size() - 1));
    std::nth_element(v.begin(), v.begin() + static_cast<std::ptrdiff_t>(k), v.end());
    return v[k];
}

double cpu_seconds() {
    rusage ru{};
    getrusage(RUSAGE_SELF, &ru);
    auto tv = [](timeval t) {
        return static_cast<double>(t.tv_sec) + static_cast<double>(t.tv_usec) / 1e6;
    };
    return tv(ru.ru_utime) + tv(ru.ru_stime);
}

int run(const Options& o) {
    dmabufio::BlockFile dev(o.device);
    const std::uint64_t span = o.span != 0 ? std::min(o.span, dev.size()) : dev.size();
    const std::uint64_t blocks = span / o.bs;
    if (blocks == 0) {
        usage("the device (or --span) is smaller than one block");
    }
    dmabufio::Ring ring(o.depth, o.polled ? IORING_SETUP_IOPOLL : 0);
    int fd = dev.fd();
    if (o.fixed_files) {
        if (int ret = io_uring_register_files(ring.get(), &fd, 1); ret < 0) {
            dmabufio::throw_error(ret, "register the device as a fixed file");
        }
        fd = 0;
    }
    const std::size_t bytes = static_cast<std::size_t>(o.depth) * o.bs;
    void* mem = ::mmap(nullptr, bytes, PROT_READ | PROT_WRITE,
                       MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE, -1, 0);
    if (mem == MAP_FAILED) {
        dmabufio::throw_error(errno, "allocate I/O buffers");
    }
    auto* base = static_cast<std::uint8_t*>(mem);
    std::memset(base, 0x5a, bytes);
    const bool fixed = o.buffers == "fixed";
    const bool dmabuf = o.buffers == "dmabuf";
    std::optional<dmabufio::BufferTable> table;
    std::optional<dmabufio::DmaBuf> dbuf;
    if (fixed) {
        iovec iov{mem, bytes};
        ring.register_buffers({&iov, 1});
    } else if (dmabuf) {
        const std::size_t page = 4096;
        dbuf.emplace(dmabufio::DmaBuf::allocate(o.exporter, (bytes + page - 1) / page * page));
        table.emplace(ring, 1);
        // Registered against the device's own file (not the fixed-file index).
        if (table->register_dmabuf(0, *dbuf, dev.fd()) != dmabufio::SlotKind::kDmaBuf) {
            dmabufio::throw_error(EOPNOTSUPP, "register the dma-buf");
        }
    }

    std::mt19937_64 gen(42);
    std::uint64_t seq = 0;
    auto next_offset = [&] { return (o.random ? gen() % blocks : seq++ % blocks) * o.bs; };
    std::vector<Clock::time_point> issued(o.depth);
    std::vector<std::uint32_t> lat_ns;
    lat_ns.reserve(1 << 20);
    auto prep = [&](unsigned slot) {
        io_uring_sqe* sqe = ring.sqe();
        void* buf = base + static_cast<std::size_t>(slot) * o.bs;
        const std::uint64_t off = next_offset();
        if (dmabuf) {
            // A dma-buf slot's address is the byte offset into the dma-buf.
            // NOLINTNEXTLINE(performance-no-int-to-ptr)
            buf = reinterpret_cast<void*>(static_cast<std::uintptr_t>(slot) * o.bs);
        }
        if (fixed || dmabuf) {
            o.write ? io_uring_prep_write_fixed(sqe, fd, buf, o.bs, off, 0)
                    : io_uring_prep_read_fixed(sqe, fd, buf, o.bs, off, 0);
        } else {
            o.write ? io_uring_prep_write(sqe, fd, buf, o.bs, off)
                    : io_uring_prep_read(sqe, fd, buf, o.bs, off);
        }
        if (o.fixed_files) {
            sqe->flags |= IOSQE_FIXED_FILE;
        }
        sqe->user_data = slot;
        issued[slot] = Clock::now();
    };

    const double cpu0 = cpu_seconds();
    const auto t0 = Clock::now();
    const auto deadline = t0 + std::chrono::duration<double>(o.runtime);
    std::uint64_t done = 0;
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
        if (int ret = io_uring_submit_and_wait(ring.get(), want); ret < 0 && ret != -EINTR) {
            dmabufio::throw_error(ret, "io_uring_submit_and_wait");
        }
        inflight += queued;
        io_uring_cqe* cqe = nullptr;
        unsigned head = 0;
        unsigned seen = 0;
        const auto now = Clock::now();
        io_uring_for_each_cqe(ring.get(), head, cqe) {
            if (cqe->res != static_cast<int>(o.bs)) {
                dmabufio::throw_error(cqe->res < 0 ? cqe->res : EIO, "I/O on " + o.device,
                                      "short or failed I/O: check the device and block size");
            }
            const auto slot = static_cast<unsigned>(cqe->user_data);
            lat_ns.push_back(static_cast<std::uint32_t>(
                std::chrono::duration_cast<std::chrono::nanoseconds>(now - issued[slot]).count()));
            free_slots.push_back(slot);
            seen++;
        }
        io_uring_cq_advance(ring.get(), seen);
        inflight -= seen;
        done += seen;
        stopping = stopping || now >= deadline;
    }
    const double secs = std::chrono::duration<double>(Clock::now() - t0).count();
    const double cpu = cpu_seconds() - cpu0;
    ::munmap(mem, bytes);

    const double iops = static_cast<double>(done) / secs;
    const double mbps = iops * o.bs / 1e6;
    const double p50 = percentile(lat_ns, 50) / 1e3;
    const double p99 = percentile(lat_ns, 99) / 1e3;
    const double p999 = percentile(lat_ns, 99.9) / 1e3;
    const double cpu_us = done != 0 ? cpu / static_cast<double>(done) * 1e6 : 0;
    if (o.json) {
        std::printf(
            "{\"buffers\": \"%s\", \"rw\": \"%s%s\", \"bs\": %u, \"qd\": %u, \"ios\": %llu, "
            "\"seconds\": %.3f, \"iops\": %.0f, \"mb_per_s\": %.1f, \"lat_us\": {\"p50\": %.1f, "
            "\"p99\": %.1f, \"p99.9\": %.1f}, \"cpu_us_per_io\": %.2f}\n",
            o.buffers.c_str(), o.random ? "rand" : "", o.write ? "write" : "read", o.bs, o.depth,
            static_cast<unsigned long long>(done), secs, iops, mbps, p50, p99, p999, cpu_us);
    } else {
        std::printf(
            "%s %s%s bs=%u qd=%u: IOPS=%.0f BW=%.1fMB/s lat p50=%.1fus p99=%.1fus "
            "p99.9=%.1fus cpu/io=%.2fus (%llu I/Os in %.2fs)\n",
            o.buffers.c_str(), o.random ? "rand" : "seq", o.write ? "write" : "read", o.bs, o.depth,
            iops, mbps, p50, p99, p999, cpu_us, static_cast<unsigned long long>(done), secs);
    }
    return 0;
}

}  // namespace

int main(int argc, char** argv) {
    try {
        return run(parse(argc, argv));
    } catch (const dmabufio::Error& e) {
        std::fprintf(stderr, "dmabufio-bench: %s\n", e.what());
        return 1;
    }
}
