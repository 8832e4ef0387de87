// move_notify under fire (issue #5): verified reads and writes on a test-exporter dma-buf while
// another thread MOVEs it, MOVE racing with unregister / replace / ring teardown / process exit /
// controller reset, fault injection proving that invalidation never allocates and that transient
// re-map failures are retried, and the exporter's map count (mapped once). Every test prints its
// counts: moves, re-maps, I/Os, bytes verified.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <liburing.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <memory>
#include <mutex>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "dmabufio/buffer_table.hpp"
#include "dmabufio/dmabuf.hpp"
#include "dmabufio/error.hpp"
#include "dmabufio/file.hpp"
#include "dmabufio/ring.hpp"
#include "dmabufio/uapi.hpp"
#include "guest_util.hpp"

namespace {

using dmabufio::BlockFile;
using dmabufio::BufferTable;
using dmabufio::DmaBuf;
using dmabufio::Exporter;
using dmabufio::Ring;
using guest::kKiB;
using guest::kMiB;
using guest::read_u64;
using guest::write_str;
using Clock = std::chrono::steady_clock;

// ---- small helpers ---------------------------------------------------------------------------

// The test exporter's debugfs counters over all buffers: moves done, importer maps and unmaps,
// the time the maps took (us), and the moves followed by a map with the time from the end of each
// such move to the end of its map (us).
struct ExporterStats {
    std::uint64_t moves = 0, maps = 0, unmaps = 0, map_us = 0, remaps = 0, remap_us = 0;
    static ExporterStats now() {
        const std::string d = "/sys/kernel/debug/dmabuf_test/";
        return {read_u64(d + "moves"),  read_u64(d + "maps"),   read_u64(d + "unmaps"),
                read_u64(d + "map_us"), read_u64(d + "remaps"), read_u64(d + "remap_us")};
    }
    ExporterStats operator-(const ExporterStats& o) const {
        return {moves - o.moves,   maps - o.maps,     unmaps - o.unmaps,
                map_us - o.map_us, remaps - o.remaps, remap_us - o.remap_us};
    }
};

std::string env_or(const char* name, const char* fallback) {
    const char* v = std::getenv(name);
    return v != nullptr && *v != '\0' ? v : fallback;
}

// Moves `buf` in a background thread: bursts of back-to-back MOVEs, then a pause of 0-3 ms.
// Only this thread calls buf.move(); the I/O threads use the fd and the mapping made before.
class Mover {
  public:
    Mover(DmaBuf& buf, std::uint32_t flags) : buf_(buf), flags_(flags) {
        thread_ = std::thread([this] { run(); });
    }
    Mover(const Mover&) = delete;
    Mover& operator=(const Mover&) = delete;
    Mover(Mover&&) = delete;
    Mover& operator=(Mover&&) = delete;
    ~Mover() { stop(); }
    // Stops and returns the number of moves done; the first error, if any, is in error().
    std::uint64_t stop() {
        stop_ = true;
        if (thread_.joinable()) {
            thread_.join();
        }
        return moves_.load();
    }
    [[nodiscard]] std::uint64_t moves() const { return moves_.load(); }
    [[nodiscard]] const std::string& error() const { return error_; }
    // The mover thread writes 1 to its own make-it-fail (fault injection's task filter).
    void make_it_fail() { want_make_it_fail_ = true; }

  private:
    void run() {
        std::mt19937 gen(7);
        bool marked = false;
        while (!stop_.load()) {
            if (want_make_it_fail_.load() && !marked) {
                write_str("/proc/thread-self/make-it-fail", "1");
                marked = true;
            }
            const unsigned burst = 1 + gen() % 32;
            for (unsigned i = 0; i < burst && !stop_.load(); i++) {
                try {
                    buf_.move(flags_);
                } catch (const dmabufio::Error& e) {
                    error_ = e.what();
                    return;
                }
                moves_++;
            }
            std::this_thread::sleep_for(std::chrono::microseconds(gen() % 3000));
        }
    }
    DmaBuf& buf_;
    std::uint32_t flags_;
    std::atomic<bool> stop_{false};
    std::atomic<bool> want_make_it_fail_{false};
    std::atomic<std::uint64_t> moves_{0};
    std::string error_;
    std::thread thread_;
};

// ---- verified random I/O ---------------------------------------------------------------------

// Each I/O thread owns a device region and a dma-buf area of kDepth windows of kWindow bytes.
// I/O i of a batch goes to window i on both sides, so a batch never overlaps itself. Writes send
// fresh random bytes (written into the dma-buf through its CPU mapping first) and update a host
// shadow of the device region; reads are compared with the shadow. A MOVE between the CPU fill
// and the write, or under an in-flight read, must lose nothing.
constexpr unsigned kDepth = 4;
constexpr std::size_t kWindow = 64 * kKiB;
constexpr std::size_t kArea = kDepth * kWindow;        // per thread, in the dma-buf
constexpr std::size_t kDevWindow = 256 * kKiB;         // per I/O window, on the device
constexpr std::size_t kDevArea = kDepth * kDevWindow;  // per thread, on the device
constexpr std::uint64_t kDevBase = 1024 * kMiB;

struct Totals {
    std::atomic<std::uint64_t> ios{0}, bytes_verified{0};
};

class VerifiedIo {
  public:
    VerifiedIo(DmaBuf& buf, unsigned threads, Totals& totals)
        : buf_(buf), view_(buf.map()), threads_(threads), totals_(totals), shadows_(threads) {
        guest::Reference ref;
        for (unsigned t = 0; t < threads; t++) {
            shadows_[t].resize(kDevArea);
            guest::fill(shadows_[t].data(), kDevArea, 1000 + t);
            guest::Memory m(kDevArea);
            std::memcpy(m.data(), shadows_[t].data(), kDevArea);
            ref.write(m.data(), kDevArea, dev_off(t, 0));
        }
    }
    static std::uint64_t dev_off(unsigned t, unsigned i) {
        return kDevBase + t * kDevArea + i * kDevWindow;
    }

    // Runs until `stop`; returns "" or what went wrong.
    std::string run_thread(unsigned t, const std::atomic<bool>& stop) {
        try {
            BlockFile dev(guest::kDevice);
            Ring ring(kDepth * 2);
            BufferTable table(ring, 1);
            table.register_dmabuf(0, buf_, dev.fd());
            std::mt19937_64 gen(t * 7919 + 1);
            auto& shadow = shadows_[t];
            std::vector<std::uint8_t> staged(kWindow);
            while (!stop.load()) {
                struct Io {
                    std::size_t devpos = 0, len = 0;
                    bool write = false;
                };
                std::vector<Io> batch(kDepth);
                std::vector<std::vector<std::uint8_t>> written(kDepth);
                auto view = view_;
                for (unsigned i = 0; i < kDepth; i++) {
                    const std::size_t len = (1 + gen() % (kWindow / (4 * kKiB))) * 4 * kKiB;
                    const std::size_t pos =
                        (gen() % ((kDevWindow - len) / (4 * kKiB) + 1)) * 4 * kKiB;
                    const bool write = gen() % 2 == 0;
                    const std::size_t area = t * kArea + i * kWindow;
                    if (write) {
                        written[i].resize(len);
                        guest::fill(written[i].data(), len, gen());
                        std::memcpy(view.data() + area, written[i].data(), len);
                    }
                    table.prep(write, dev.fd(), 0, area, static_cast<unsigned>(len),
                               dev_off(t, i) + pos, i);
                    batch[i] = {i * kDevWindow + pos, len, write};
                }
                for (unsigned n = 0; n < kDepth; n++) {
                    auto [ud, res] = ring.submit_and_wait_one();
                    if (ud >= kDepth || res < 0 || static_cast<std::size_t>(res) != batch[ud].len) {
                        return "I/O " + std::to_string(ud) + " returned " + std::to_string(res) +
                               (res < 0 ? std::string(" (") + std::strerror(-res) + ")" : "");
                    }
                    totals_.ios++;
                }
                for (unsigned i = 0; i < kDepth; i++) {
                    const Io& io = batch[i];
                    if (io.write) {
                        std::memcpy(shadow.data() + io.devpos, written[i].data(), io.len);
                        continue;
                    }
                    if (std::memcmp(view.data() + t * kArea + i * kWindow,
                                    shadow.data() + io.devpos, io.len) != 0) {
                        return "read of " + std::to_string(io.len) + " bytes did not verify";
                    }
                    totals_.bytes_verified += io.len;
                }
            }
        } catch (const std::exception& e) {
            return e.what();
        }
        return "";
    }

    // Runs `threads` I/O threads until `deadline` or `until()` says so; returns failures.
    template <typename Until>
    std::vector<std::string> run(Clock::time_point deadline, Until until) {
        std::atomic<bool> stop{false};
        std::vector<std::string> failures(threads_);
        std::vector<std::thread> ts;
        for (unsigned t = 0; t < threads_; t++) {
            ts.emplace_back([&, t] {
                failures[t] = run_thread(t, stop);
                if (!failures[t].empty()) {
                    stop = true;
                }
            });
        }
        while (!stop.load() && Clock::now() < deadline && !until()) {
            std::this_thread::sleep_for(std::chrono::milliseconds(20));
        }
        stop = true;
        for (auto& th : ts) {
            th.join();
        }
        failures.erase(std::remove(failures.begin(), failures.end(), ""), failures.end());
        return failures;
    }

    // The whole device side, through the ordinary O_DIRECT path, against the shadows.
    void expect_device_matches() {
        guest::Reference ref;
        guest::Memory m(kDevArea);
        for (unsigned t = 0; t < threads_; t++) {
            ref.read(m.data(), kDevArea, dev_off(t, 0));
            EXPECT_EQ(std::memcmp(m.data(), shadows_[t].data(), kDevArea), 0)
                << "thread " << t << "'s device region differs from what was acknowledged";
            totals_.bytes_verified += kDevArea;
        }
    }

  private:
    DmaBuf& buf_;
    std::span<std::uint8_t> view_;  // mapped once, before the threads start
    unsigned threads_;
    Totals& totals_;
    std::vector<std::vector<std::uint8_t>> shadows_;
};

void print_counts(const char* what, const ExporterStats& s, const Totals& t) {
    std::printf("[   counts ] %s: moves %llu, re-maps %llu, I/Os %llu, bytes verified %llu\n", what,
                static_cast<unsigned long long>(s.moves), static_cast<unsigned long long>(s.maps),
                static_cast<unsigned long long>(t.ios.load()),
                static_cast<unsigned long long>(t.bytes_verified.load()));
    std::fflush(stdout);
}

// Prints the moves done by the whole run and, when the stress test ran, insists on at least
// DMABUFIO_MIN_SUITE_MOVES (default 3400: make check runs three IOMMU modes, >= 10 000 moves).
class MoveTotals : public ::testing::Environment {
  public:
    void SetUp() override {
        try {
            start_ = ExporterStats::now();
        } catch (const std::exception&) {
            have_ = false;  // no test exporter: the tests that need it fail on their own
        }
    }
    void TearDown() override {
        if (!have_) {
            return;
        }
        const ExporterStats d = ExporterStats::now() - start_;
        std::printf("[   counts ] this run: moves %llu, importer maps %llu, unmaps %llu\n",
                    static_cast<unsigned long long>(d.moves),
                    static_cast<unsigned long long>(d.maps),
                    static_cast<unsigned long long>(d.unmaps));
        const auto* suite = find_suite("MoveStress");
        if (suite != nullptr && suite->should_run()) {
            EXPECT_GE(d.moves, std::stoull(env_or("DMABUFIO_MIN_SUITE_MOVES", "3400")));
        }
    }

  private:
    static const ::testing::TestSuite* find_suite(const char* name) {
        const auto* ut = ::testing::UnitTest::GetInstance();
        for (int i = 0; i < ut->total_test_suite_count(); i++) {
            if (std::strcmp(ut->GetTestSuite(i)->name(), name) == 0) {
                return ut->GetTestSuite(i);
            }
        }
        return nullptr;
    }
    ExporterStats start_;
    bool have_ = true;
};
[[maybe_unused]] const auto* const kMoveTotals =
    ::testing::AddGlobalTestEnvironment(new MoveTotals);  // gtest owns it

// ---- the stress test -------------------------------------------------------------------------

// Three verified I/O threads while the buffer is moved in bursts, for DMABUFIO_MOVE_SECONDS
// (default 30) seconds or until DMABUFIO_MOVES moves (default: no limit); at least 300 moves.
TEST(MoveStress, VerifiedIoWhileMovingInBursts) {
    const std::uint64_t want = std::stoull(env_or("DMABUFIO_MOVES", "0"));
    const auto deadline =
        Clock::now() + std::chrono::seconds(std::stoul(env_or("DMABUFIO_MOVE_SECONDS", "30")));
    constexpr unsigned kThreads = 3;
    DmaBuf buf = DmaBuf::allocate(Exporter::kTest, kThreads * kArea);
    Totals totals;
    VerifiedIo io(buf, kThreads, totals);
    const ExporterStats before = ExporterStats::now();
    Mover mover(buf, 0);
    const auto failures = io.run(deadline, [&] { return want != 0 && mover.moves() >= want; });
    mover.stop();
    EXPECT_EQ(mover.error(), "");
    for (const auto& f : failures) {
        ADD_FAILURE() << f;
    }
    io.expect_device_matches();
    const ExporterStats d = ExporterStats::now() - before;
    print_counts("stress", d, totals);
    EXPECT_GE(d.moves, std::max<std::uint64_t>(want, 300)) << "the time bound ran out first";
    EXPECT_GT(d.maps, 0U);
    EXPECT_GT(totals.ios.load(), 1000U);
}

// ---- MOVE racing with the registration's lifetime ------------------------------------------

// Idempotent traffic for races whose I/O may be abandoned: writes send the dma-buf's constant
// pattern to the device region that already holds it; reads fetch it and are compared.
constexpr std::size_t kPattern = 256 * kKiB;
constexpr std::uint64_t kPatternDev = 512 * kMiB;
constexpr unsigned kRaceDepth = 8;
constexpr std::size_t kRaceIo = 32 * kKiB;

struct RaceFixture {
    BlockFile dev{guest::kDevice};
    DmaBuf buf = DmaBuf::allocate(Exporter::kTest, kPattern + kRaceDepth * kRaceIo);
    guest::Memory pattern{kPattern};
    RaceFixture() {
        guest::fill(pattern.data(), kPattern, 77);
        std::memcpy(buf.map().data(), pattern.data(), kPattern);
        guest::Reference().write(pattern.data(), kPattern, kPatternDev);
    }
    // Queues and submits kRaceDepth I/Os; I/O i reads into window i or writes pattern bytes.
    void submit(Ring& ring, BufferTable& table, unsigned slot, std::mt19937& gen) const {
        for (unsigned i = 0; i < kRaceDepth; i++) {
            const std::size_t off = (gen() % ((kPattern - kRaceIo) / (4 * kKiB))) * 4 * kKiB;
            const bool write = gen() % 2 == 0;
            table.prep(write, dev.fd(), slot, write ? off : kPattern + i * kRaceIo, kRaceIo,
                       kPatternDev + off, (static_cast<std::uint64_t>(off) << 8) | i);
        }
        ASSERT_EQ(io_uring_submit(ring.get()), static_cast<int>(kRaceDepth));
    }
    // Reaps kRaceDepth completions: each must be complete and reads must verify.
    static void reap(Ring& ring, Totals& totals) {
        for (unsigned n = 0; n < kRaceDepth; n++) {
            io_uring_cqe* cqe = nullptr;
            ASSERT_EQ(io_uring_wait_cqe(ring.get(), &cqe), 0);
            const int res = cqe->res;
            io_uring_cqe_seen(ring.get(), cqe);
            ASSERT_EQ(res, static_cast<int>(kRaceIo)) << (res < 0 ? std::strerror(-res) : "short");
            totals.ios++;
        }
    }
    void expect_intact(Totals& totals) {
        guest::Memory back(kPattern);
        guest::Reference().read(back.data(), kPattern, kPatternDev);
        EXPECT_EQ(std::memcmp(back.data(), pattern.data(), kPattern), 0) << "device pattern";
        EXPECT_EQ(std::memcmp(buf.map().data(), pattern.data(), kPattern), 0) << "dma-buf pattern";
        totals.bytes_verified += 2 * kPattern;
    }
};

enum class Race { kUnregister, kReplace, kRingTeardown, kProcessExit, kProcessKill };

void race(Race kind, unsigned iterations) {
    RaceFixture fx;
    Totals totals;
    const ExporterStats before = ExporterStats::now();
    Mover mover(fx.buf, 0);
    std::mt19937 gen(static_cast<unsigned>(kind) + 11);
    for (unsigned it = 0; it < iterations && !::testing::Test::HasFailure(); it++) {
        if (kind == Race::kProcessExit || kind == Race::kProcessKill) {
            std::array<int, 2> ready{};
            ASSERT_EQ(::pipe2(ready.data(), O_CLOEXEC), 0);
            const pid_t pid = ::fork();
            ASSERT_GE(pid, 0);
            if (pid == 0) {
                // Child: register, put I/O in flight, then exit (or wait to be killed).
                try {
                    Ring ring(kRaceDepth * 2);
                    BufferTable table(ring, 1);
                    table.register_dmabuf(0, fx.buf, fx.dev.fd());
                    fx.submit(ring, table, 0, gen);
                    const char c = 1;
                    if (::write(ready[1], &c, 1) != 1) {
                        ::_exit(3);
                    }
                    if (kind == Race::kProcessKill) {
                        ::pause();
                    }
                    ::_exit(0);
                } catch (...) {
                    ::_exit(2);
                }
            }
            ::close(ready[1]);
            char c = 0;
            const ssize_t r = ::read(ready[0], &c, 1);
            ::close(ready[0]);
            if (kind == Race::kProcessKill) {
                ::kill(pid, SIGKILL);
            }
            int status = 0;
            ASSERT_EQ(::waitpid(pid, &status, 0), pid);
            ASSERT_EQ(r, 1) << "child failed before its I/O was in flight, status " << status;
            if (kind == Race::kProcessExit) {
                ASSERT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << status;
            }
            continue;
        }
        Ring ring(kRaceDepth * 2);
        BufferTable table(ring, 2);
        table.register_dmabuf(0, fx.buf, fx.dev.fd());
        fx.submit(ring, table, 0, gen);
        if (kind == Race::kUnregister) {
            table.clear(0);  // I/O in flight keeps its registration until it completes
            RaceFixture::reap(ring, totals);
        } else if (kind == Race::kReplace) {
            table.register_dmabuf(0, fx.buf, fx.dev.fd());  // replaces slot 0 in place
            RaceFixture::reap(ring, totals);
            fx.submit(ring, table, 0, gen);  // and the new registration works
            RaceFixture::reap(ring, totals);
        }
        // kRingTeardown: ring and table go away here with the I/O in flight
    }
    mover.stop();
    EXPECT_EQ(mover.error(), "");
    fx.expect_intact(totals);
    const ExporterStats d = ExporterStats::now() - before;
    print_counts("race", d, totals);
    EXPECT_GT(d.moves, 0U);
}

TEST(MoveRace, Unregister) { race(Race::kUnregister, 150); }
TEST(MoveRace, Replace) { race(Race::kReplace, 100); }
TEST(MoveRace, RingTeardown) { race(Race::kRingTeardown, 150); }
TEST(MoveRace, ProcessExit) { race(Race::kProcessExit, 40); }
TEST(MoveRace, ProcessKill) { race(Race::kProcessKill, 40); }

// Verified I/O and moves while the NVMe controller is reset through sysfs: requests caught by a
// reset are retried by the driver, so every I/O still succeeds and verifies, and the
// registration (its mapping belongs to the PCI device, not to the queues) keeps working.
TEST(MoveRace, ControllerReset) {
    constexpr unsigned kThreads = 2;
    constexpr unsigned kResets = 5;
    DmaBuf buf = DmaBuf::allocate(Exporter::kTest, kThreads * kArea);
    Totals totals;
    VerifiedIo io(buf, kThreads, totals);
    const ExporterStats before = ExporterStats::now();
    Mover mover(buf, 0);
    std::atomic<unsigned> resets{0};
    std::string reset_error;
    std::thread resetter([&] {
        for (unsigned i = 0; i < kResets; i++) {
            std::this_thread::sleep_for(std::chrono::milliseconds(300));
            try {
                write_str("/sys/class/nvme/nvme0/reset_controller", "1");
            } catch (const std::exception& e) {
                reset_error = e.what();
                return;
            }
            resets++;
        }
    });
    const auto failures =
        io.run(Clock::now() + std::chrono::seconds(120), [&] { return resets.load() >= kResets; });
    resetter.join();
    mover.stop();
    EXPECT_EQ(reset_error, "");
    EXPECT_EQ(mover.error(), "");
    for (const auto& f : failures) {
        ADD_FAILURE() << f;
    }
    io.expect_device_matches();
    const ExporterStats d = ExporterStats::now() - before;
    print_counts("controller reset", d, totals);
    std::printf("[   counts ] controller resets %u\n", resets.load());
    EXPECT_EQ(resets.load(), kResets);
}

// ---- no allocation after publish, proven by fault injection ------------------------------------

struct Symbol {
    std::uint64_t start = 0, end = 0;
};

// [start, end) of a kernel text symbol: from /proc/kallsyms, end = the next symbol's address.
Symbol kernel_symbol(const std::string& name) {
    std::ifstream in("/proc/kallsyms");
    std::vector<std::uint64_t> addrs;
    std::uint64_t start = 0;
    std::string addr;
    std::string type;
    std::string sym;
    while (in >> addr >> type >> sym) {
        std::string rest;
        std::getline(in, rest);  // module name, if any
        if (type != "t" && type != "T") {
            continue;
        }
        const std::uint64_t a = std::stoull(addr, nullptr, 16);
        addrs.push_back(a);
        if (sym == name) {
            start = a;
        }
    }
    if (start == 0) {
        throw std::runtime_error(name + " not in /proc/kallsyms (KALLSYMS, root?)");
    }
    std::sort(addrs.begin(), addrs.end());
    const auto next = std::upper_bound(addrs.begin(), addrs.end(), start);
    if (next == addrs.end()) {
        throw std::runtime_error("no symbol after " + name);
    }
    return {start, *next};
}

// The importer's invalidation callback (dma_buf_attach_ops.invalidate_mappings).
constexpr const char* kInvalidationCallback = "dma_buf_io_invalidate_mappings";

// failslab and fail_page_alloc set to fail every allocation (any gfp, any order) whose call chain
// passes through `sym`; restored to off on destruction. injected() counts the failures. Never
// those of DMA API debugging's own bookkeeping (add_dma_entry()), which switches itself off for
// good when one fails (a splat): the exporter's DMA mapping calls it from the paths tested.
class FailAllocationsIn {
  public:
    static constexpr std::uint64_t kTimes = 1000000;
    FailAllocationsIn(const Symbol& sym, bool task_filter, unsigned probability = 100) {
        const Symbol dma_debug = kernel_symbol("add_dma_entry");
        for (const char* a : kAttrs) {
            const std::string d = std::string("/sys/kernel/debug/") + a + "/";
            write_str(d + "probability", "0");
            write_str(d + "verbose", "0");
            write_str(d + "interval", "1");
            write_str(d + "space", "0");
            write_str(d + "times", std::to_string(kTimes));
            write_str(d + "task-filter", task_filter ? "Y" : "N");
            write_str(d + "ignore-gfp-wait", "N");
            write_str(d + "stacktrace-depth", "32");
            write_str(d + "require-end", std::to_string(sym.end));
            write_str(d + "require-start", std::to_string(sym.start));
            write_str(d + "reject-end", std::to_string(dma_debug.end));
            write_str(d + "reject-start", std::to_string(dma_debug.start));
        }
        write_str("/sys/kernel/debug/fail_page_alloc/ignore-gfp-highmem", "N");
        write_str("/sys/kernel/debug/fail_page_alloc/min-order", "0");
        for (const char* a : kAttrs) {
            write_str(std::string("/sys/kernel/debug/") + a + "/probability",
                      std::to_string(probability));
        }
    }
    FailAllocationsIn(const FailAllocationsIn&) = delete;
    FailAllocationsIn& operator=(const FailAllocationsIn&) = delete;
    FailAllocationsIn(FailAllocationsIn&&) = delete;
    FailAllocationsIn& operator=(FailAllocationsIn&&) = delete;
    ~FailAllocationsIn() {
        try {
            for (const char* a : kAttrs) {
                const std::string d = std::string("/sys/kernel/debug/") + a + "/";
                write_str(d + "probability", "0");
                write_str(d + "require-start", "0");
                write_str(d + "require-end", std::to_string(~0ULL));
                write_str(d + "reject-start", "0");
                write_str(d + "reject-end", "0");
                write_str(d + "task-filter", "N");
            }
        } catch (...) {  // NOLINT(bugprone-empty-catch): the guest is about to end anyway
        }
    }
    // Failures injected so far, by failslab and by fail_page_alloc.
    static std::pair<std::uint64_t, std::uint64_t> injected() {
        return {kTimes - read_u64("/sys/kernel/debug/failslab/times"),
                kTimes - read_u64("/sys/kernel/debug/fail_page_alloc/times")};
    }

  private:
    static constexpr std::array<const char*, 2> kAttrs = {"failslab", "fail_page_alloc"};
};

struct InjectionRun {
    std::pair<std::uint64_t, std::uint64_t> injected;
    ExporterStats stats;
};

constexpr unsigned kMinIos = 100;

// Two verified I/O threads for `seconds` while the buffer is moved with `move_flags`, with every
// allocation failing whose call chain contains `symbol`.
// `probability` (percent) below 100 lets some attempts through.
InjectionRun run_with_failing_allocations(const char* symbol, std::uint32_t move_flags,
                                          bool mover_only, unsigned seconds,
                                          unsigned probability = 100) {
    constexpr unsigned kThreads = 2;
    DmaBuf buf = DmaBuf::allocate(Exporter::kTest, kThreads * kArea);
    Totals totals;
    VerifiedIo io(buf, kThreads, totals);
    const ExporterStats before = ExporterStats::now();
    InjectionRun out;
    {
        FailAllocationsIn inject(kernel_symbol(symbol), mover_only, probability);
        Mover mover(buf, move_flags);
        if (mover_only) {
            mover.make_it_fail();
        }
        // At least `seconds`, and on until kMinIos I/Os have completed (a loaded host slows the
        // guest down), for up to four times as long.
        const auto soft = Clock::now() + std::chrono::seconds(seconds);
        const auto failures = io.run(Clock::now() + 4 * std::chrono::seconds(seconds), [&] {
            return Clock::now() >= soft && totals.ios.load() > kMinIos;
        });
        mover.stop();
        EXPECT_EQ(mover.error(), "");
        for (const auto& f : failures) {
            ADD_FAILURE() << f;
        }
        out.injected = FailAllocationsIn::injected();
    }
    io.expect_device_matches();
    out.stats = ExporterStats::now() - before;
    std::printf(
        "[   counts ] %s, move flags %u: failures injected failslab %llu, "
        "fail_page_alloc %llu\n",
        symbol, move_flags, static_cast<unsigned long long>(out.injected.first),
        static_cast<unsigned long long>(out.injected.second));
    print_counts(symbol, out.stats, totals);
    EXPECT_GT(out.stats.moves, 10U);
    EXPECT_GT(totals.ios.load(), kMinIos);
    return out;
}

// An exporter that reserves no fence slots for its importers (as TTM and amdgpu don't): move_notify
// still allocates nothing, since it publishes no fence (it waits for the in-flight I/O itself).
TEST(MoveFaultInjection, MoveNotifyAllocatesNothingWithoutReservedSlots) {
    const auto r =
        run_with_failing_allocations(kInvalidationCallback, DMABUF_TEST_MOVE_NO_RESERVE, true, 8);
    EXPECT_EQ(r.injected.first + r.injected.second, 0U);
}

// With an exporter that reserves the importers' slots (as the test exporter does by default),
// move_notify allocates nothing either: every allocation in it would fail, and none is made.
TEST(MoveFaultInjection, MoveNotifyAllocatesNothing) {
    const auto r = run_with_failing_allocations(kInvalidationCallback, 0, true, 8);
    EXPECT_EQ(r.injected.first + r.injected.second, 0U);
}

// The end of an invalidation's wait (blk-mq's completion hook drops the request's count on an
// invalidated mapping and wakes the waiter, in completion context) allocates nothing: every
// allocation in it would fail, in any task or interrupt.
TEST(MoveFaultInjection, DrainCompletionAllocatesNothing) {
    const auto r = run_with_failing_allocations("blk_mq_dma_rq_done", 0, false, 6);
    EXPECT_EQ(r.injected.first + r.injected.second, 0U);
}

// Re-mapping after a move allocates (the mapping, the exporter's sg_table, the driver's address
// array); out of memory there is transient: the waiting requests are retried a little later, never
// failed with EIO. Positive control: failures must really have been injected.
TEST(MoveFaultInjection, TransientRemapFailuresAreRetried) {
    const auto r = run_with_failing_allocations("dma_buf_io_remap_work", 0, false, 8, 30);
    EXPECT_GT(r.injected.first + r.injected.second, 0U)
        << "no failure was injected: the stack filter did not see the re-map allocate";
}

// ---- invalidation vs polled I/O ------------------------------------------------------------

// A task with polled (IOPOLL) reads in flight on a dma-buf slot moves the buffer itself: the MOVE
// waits for those reads, which nobody polls meanwhile. dma-buf reads are therefore never polled
// (they complete by interrupt, also on an IOPOLL ring), so the MOVE returns promptly instead of
// after the NVMe timeout. The guest-iopoll boot has poll queues (nvme.poll_queues=1).
TEST(MoveIopoll, MoveWithOwnPolledReadsInFlight) {
    BlockFile dev(guest::kDevice);
    dmabufio::RingOptions o;
    o.depth = 16;
    o.iopoll = true;
    Ring ring(o);
    constexpr unsigned kReads = 8;
    DmaBuf buf = DmaBuf::allocate(Exporter::kTest, std::size_t{kReads} * 64 * kKiB);
    BufferTable table(ring, 1);
    table.register_dmabuf(0, buf, dev.fd());
    for (unsigned i = 0; i < kReads; i++) {
        table.prep(false, dev.fd(), 0, std::size_t{i} * 64 * kKiB, 64 * kKiB,
                   std::size_t{i} * 64 * kKiB, i);
    }
    ASSERT_EQ(io_uring_submit(ring.get()), static_cast<int>(kReads));
    const auto t0 = Clock::now();
    buf.move();
    const double ms = std::chrono::duration<double, std::milli>(Clock::now() - t0).count();
    std::printf("[   counts ] MOVE with %u polled reads of its own in flight: %.0f ms\n", kReads,
                ms);
    EXPECT_LT(ms, 5000.0) << "the MOVE waited for reads that only its own task would poll";
    for (unsigned i = 0; i < kReads; i++) {
        auto [ud, res] = ring.submit_and_wait_one();
        EXPECT_EQ(res, static_cast<int>(64 * kKiB)) << "read " << ud;
    }
}

// ---- "mapped once" ---------------------------------------------------------------------------

// Waits (up to 10 s) until every importer map of the test exporter has been unmapped again.
bool wait_maps_balanced(const ExporterStats& base) {
    for (int i = 0; i < 1000; i++) {
        const ExporterStats d = ExporterStats::now() - base;
        if (d.maps == d.unmaps) {
            return true;
        }
        std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    return false;
}

// The point of the feature, counted at the exporter: registration maps the dma-buf once, I/O
// without moves maps nothing more, a move costs exactly one re-map (made right after the move when
// the old mapping served I/O, else by the next I/O), moves of a mapping no I/O used re-map
// nothing, and at teardown every map has been unmapped.
TEST(MappedOnce, ExporterMapsCountedExactly) {
    BlockFile dev(guest::kDevice);
    Ring ring(8);
    DmaBuf buf = DmaBuf::allocate(Exporter::kTest, 4 * kMiB);
    const ExporterStats base = ExporterStats::now();
    const auto read = [&](BufferTable& table, unsigned i) {
        ASSERT_EQ(table.read(dev.fd(), 0, std::size_t{i % 1024} * 4 * kKiB, 4 * kKiB,
                             std::size_t{i} * 4 * kKiB),
                  static_cast<int>(4 * kKiB));
    };
    {
        BufferTable table(ring, 1);
        table.register_dmabuf(0, buf, dev.fd());
        EXPECT_EQ((ExporterStats::now() - base).maps, 1U) << "registration maps once";
        for (unsigned i = 0; i < 2000; i++) {
            ASSERT_NO_FATAL_FAILURE(read(table, i));
        }
        ExporterStats d = ExporterStats::now() - base;
        EXPECT_EQ(d.maps, 1U) << "2000 I/Os without a move mapped again";
        EXPECT_EQ(d.unmaps, 0U);
        for (unsigned m = 0; m < 20; m++) {
            buf.move();
            for (unsigned i = 0; i < 10; i++) {
                ASSERT_NO_FATAL_FAILURE(read(table, m * 10 + i));
            }
        }
        d = ExporterStats::now() - base;
        EXPECT_EQ(d.moves, 20U);
        EXPECT_EQ(d.maps, 21U) << "one re-map per move";
        EXPECT_EQ(d.unmaps, 20U);
        // A move of a mapping that served I/O re-maps at once, without waiting for the next I/O.
        buf.move();
        EXPECT_TRUE(guest::wait_until([&] { return (ExporterStats::now() - base).maps == 22; }, 10))
            << "no re-map right after the move of a mapping in use";
        for (unsigned m = 0; m < 4; m++) {
            buf.move();  // that mapping served no I/O: nothing is re-mapped for these
        }
        std::this_thread::sleep_for(std::chrono::milliseconds(200));
        d = ExporterStats::now() - base;
        EXPECT_EQ(d.maps, 22U) << "a mapping no I/O used was re-made after its move";
        ASSERT_NO_FATAL_FAILURE(read(table, 0));
        d = ExporterStats::now() - base;
        EXPECT_EQ(d.moves, 25U);
        EXPECT_EQ(d.maps, 23U) << "five moves, the last four of an unused mapping, then one I/O";
        // Every map but the registration's followed a move, and the exporter timed each.
        EXPECT_EQ(d.remaps, 22U);
        EXPECT_GT(d.map_us, 0U);
        EXPECT_GT(d.remap_us, 0U);
        std::printf(
            "[   counts ] mapped once: %llu moves, %llu maps, 2211 I/Os; map %.0f us, "
            "move end to re-mapped %.0f us (means)\n",
            static_cast<unsigned long long>(d.moves), static_cast<unsigned long long>(d.maps),
            static_cast<double>(d.map_us) / static_cast<double>(d.maps),
            static_cast<double>(d.remap_us) / static_cast<double>(d.remaps));
    }
    EXPECT_TRUE(wait_maps_balanced(base)) << "maps and unmaps differ after unregistering";
}

}  // namespace

namespace {

// Pins the calling thread to one CPU (so that its requests share one hardware queue) for its life.
class PinToCpu {
  public:
    explicit PinToCpu(int cpu) {
        ::sched_getaffinity(0, sizeof(saved_), &saved_);
        cpu_set_t one;
        CPU_ZERO(&one);
        CPU_SET(cpu, &one);
        ok_ = ::sched_setaffinity(0, sizeof(one), &one) == 0;
    }
    PinToCpu(const PinToCpu&) = delete;
    PinToCpu& operator=(const PinToCpu&) = delete;
    ~PinToCpu() { ::sched_setaffinity(0, sizeof(saved_), &saved_); }
    [[nodiscard]] bool ok() const { return ok_; }

  private:
    cpu_set_t saved_{};
    bool ok_ = false;
};

// A dma-buf read that waits for its mapping (the exporter is moving the buffer) waits off the
// queue: ordinary O_DIRECT reads of the namespace from the same CPU, so the same hardware queue,
// go on meanwhile with their usual latency. With mq-deadline every request goes through the
// scheduler's dispatch, where a request the driver could not take used to hold up all behind it
// until the re-map; with none, requests are issued directly. Both schedulers are checked.
class MoveWaitForMapping : public ::testing::TestWithParam<const char*> {};

TEST_P(MoveWaitForMapping, OtherIoGoesOnWhileADmaBufReadWaitsForItsMapping) {
    const std::string sched_path = "/sys/block/nvme0n1/queue/scheduler";
    std::string saved;
    {
        std::ifstream in(sched_path);
        std::getline(in, saved);
    }
    ASSERT_NE(saved.find(GetParam()), std::string::npos)
        << GetParam() << " is not available: " << saved;
    write_str(sched_path, GetParam());
    struct Restore {
        std::string path;
        ~Restore() {
            try {
                guest::write_str(path, "none");
            } catch (...) {  // NOLINT(bugprone-empty-catch): best effort in a destructor
            }
        }
    } restore{sched_path};

    constexpr std::size_t kBuf = 512 * kMiB;
    BlockFile dev(guest::kDevice);
    guest::Reference ref;
    guest::Memory pattern(64 * kKiB);
    guest::fill(pattern.data(), pattern.size(), 77);
    ref.write(pattern.data(), pattern.size(), 8 * kMiB);
    Ring ring(8);
    BufferTable table(ring, 1);
    DmaBuf buf = DmaBuf::allocate(Exporter::kTest, kBuf);
    table.register_dmabuf(0, buf, dev.fd());
    ASSERT_EQ(table.read(dev.fd(), 0, 0, 64 * kKiB, 8 * kMiB), static_cast<int>(64 * kKiB));

    struct Span {
        Clock::time_point start, end;
    };
    std::vector<Span> ordinary;
    std::vector<Span> token;
    std::atomic<bool> moving{true};
    std::atomic<bool> pinned{true};
    int bad_token = 0;
    int bad_ordinary = 0;

    // Ordinary reads from CPU 0 for as long as the move lasts.
    std::thread reader([&] {
        const PinToCpu pin(0);
        pinned = pinned && pin.ok();
        guest::Memory mem(64 * kKiB);
        while (moving.load()) {
            const auto t0 = Clock::now();
            ::pread(ref.fd(), mem.data(), 64 * kKiB, static_cast<off_t>(8 * kMiB));
            ordinary.push_back({t0, Clock::now()});
            bad_ordinary += std::memcmp(mem.data(), pattern.data(), 64 * kKiB) == 0 ? 0 : 1;
        }
    });
    std::thread mover([&] {
        buf.move();
        moving = false;
    });
    {
        // dma-buf reads from CPU 0 too, back to back: one of them finds the mapping gone.
        const PinToCpu pin(0);
        pinned = pinned && pin.ok();
        for (unsigned i = 0; moving.load(); i++) {
            const auto t0 = Clock::now();
            const std::size_t off = std::size_t{i % 1024} * 64 * kKiB;
            bad_token +=
                table.read(dev.fd(), 0, off, 64 * kKiB, 8 * kMiB) == static_cast<int>(64 * kKiB)
                    ? 0
                    : 1;
            token.push_back({t0, Clock::now()});
        }
    }
    mover.join();
    reader.join();
    // Checked after the move: a CPU access meanwhile would wait for the move itself.
    for (std::size_t i = 0; i < std::min<std::size_t>(token.size(), 1024); i++) {
        bad_token +=
            std::memcmp(buf.map().data() + i * 64 * kKiB, pattern.data(), 64 * kKiB) == 0 ? 0 : 1;
    }
    ASSERT_TRUE(pinned.load()) << "cannot pin to CPU 0";
    EXPECT_EQ(bad_token, 0);
    EXPECT_EQ(bad_ordinary, 0);

    const auto ms = [](Clock::duration d) {
        return std::chrono::duration<double, std::milli>(d).count();
    };
    ASSERT_FALSE(token.empty());
    const Span parked = *std::max_element(
        token.begin(), token.end(),
        [&](const Span& a, const Span& b) { return a.end - a.start < b.end - b.start; });
    const double parked_ms = ms(parked.end - parked.start);
    // Ordinary reads that started while the dma-buf read waited.
    int during = 0;
    double worst_ms = 0;
    for (const Span& s : ordinary) {
        if (s.start >= parked.start && s.start < parked.end) {
            during++;
            worst_ms = std::max(worst_ms, ms(s.end - s.start));
        }
    }
    std::printf(
        "[   counts ] %s: a dma-buf read waited %.0f ms for its mapping; %d ordinary reads started "
        "meanwhile, the slowest took %.1f ms (%zu dma-buf and %zu ordinary reads in all)\n",
        GetParam(), parked_ms, during, worst_ms, token.size(), ordinary.size());
    ASSERT_GE(parked_ms, 200.0) << "the move left no window to test in";
    EXPECT_GE(during, 5) << "ordinary reads stalled while a dma-buf read waited for its mapping";
    EXPECT_LE(worst_ms, parked_ms / 4) << "an ordinary read waited for the dma-buf's mapping";
    table.clear(0);
}

INSTANTIATE_TEST_SUITE_P(Schedulers, MoveWaitForMapping, ::testing::Values("none", "mq-deadline"),
                         [](const auto& info) {
                             return std::string(info.param) == "none" ? "none" : "mq_deadline";
                         });

// Registrations of one dma-buf for one device share its mapping (else DMA API debugging would
// report overlapping mappings of the same memory): two slots of one ring and a slot of another
// map it once, a move of the mapping they used re-maps it once, and it is unmapped when the last
// registration goes, not before.
TEST(MappedOnce, RegistrationsForOneDeviceShareTheMapping) {
    BlockFile dev(guest::kDevice);
    Ring ring(8);
    Ring ring2(8);
    DmaBuf buf = DmaBuf::allocate(Exporter::kTest, 4 * kMiB);
    const ExporterStats base = ExporterStats::now();
    auto b = std::make_unique<BufferTable>(ring2, 1);
    b->register_dmabuf(0, buf, dev.fd());
    {
        BufferTable a(ring, 2);
        a.register_dmabuf(0, buf, dev.fd());
        a.register_dmabuf(1, buf, dev.fd());
        EXPECT_EQ((ExporterStats::now() - base).maps, 1U);
        for (unsigned m = 0; m < 2; m++) {
            ASSERT_EQ(a.read(dev.fd(), 0, 0, 4 * kKiB, 0), static_cast<int>(4 * kKiB));
            ASSERT_EQ(a.read(dev.fd(), 1, 4 * kKiB, 4 * kKiB, 4 * kKiB),
                      static_cast<int>(4 * kKiB));
            ASSERT_EQ(b->read(dev.fd(), 0, 8 * kKiB, 4 * kKiB, 8 * kKiB),
                      static_cast<int>(4 * kKiB));
            if (m == 0) {
                buf.move();
            }
        }
        const ExporterStats d = ExporterStats::now() - base;
        EXPECT_EQ(d.moves, 1U);
        EXPECT_EQ(d.maps, 2U) << "one re-map of the mapping the move invalidated";
        EXPECT_EQ(d.unmaps, 1U);
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(200));
    EXPECT_EQ((ExporterStats::now() - base).unmaps, 1U) << "unmapped while a slot still has it";
    ASSERT_EQ(b->read(dev.fd(), 0, 0, 4 * kKiB, 0), static_cast<int>(4 * kKiB));
    b.reset();
    EXPECT_TRUE(wait_maps_balanced(base)) << "maps and unmaps differ after unregistering";
}

}  // namespace
