// Helpers shared by the guest suites.
#pragma once

#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <cctype>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <random>
#include <span>
#include <sstream>
#include <stdexcept>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "dmabufio/buffer_table.hpp"
#include "dmabufio/dmabuf.hpp"
#include "dmabufio/fd.hpp"
#include "dmabufio/uapi.h"

namespace guest {

constexpr const char* kDevice = "/dev/nvme0n1";
constexpr std::size_t kKiB = 1024;
constexpr std::size_t kMiB = 1024 * kKiB;
constexpr std::size_t kGiB = 1024 * kMiB;

// Anonymous page-aligned memory (for the ordinary O_DIRECT reference path).
class Memory {
  public:
    explicit Memory(std::size_t n)
        : size_(n),
          ptr_(::mmap(nullptr, n, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0)) {
        if (ptr_ == MAP_FAILED) {
            throw std::runtime_error("mmap " + std::to_string(n) + " bytes failed");
        }
    }
    Memory(const Memory&) = delete;
    Memory& operator=(const Memory&) = delete;
    ~Memory() { ::munmap(ptr_, size_); }
    [[nodiscard]] std::uint8_t* data() const { return static_cast<std::uint8_t*>(ptr_); }
    [[nodiscard]] std::size_t size() const { return size_; }
    [[nodiscard]] std::span<std::uint8_t> span() const { return {data(), size_}; }

  private:
    std::size_t size_;
    void* ptr_;
};

// Writes value to a sysfs/debugfs file; throws if the kernel refuses it.
inline void write_str(const std::string& path, const std::string& value) {
    std::ofstream out(path);
    out << value << std::flush;
    if (!out) {
        throw std::runtime_error("cannot write '" + value + "' to " + path);
    }
}

// Polls `done` every `poll_ms` until it returns true (then true) or `seconds` have passed (then
// false): for state the kernel reaches asynchronously (devices coming and going, deferred frees).
template <typename Pred>
bool wait_until(Pred done, double seconds, unsigned poll_ms = 20) {
    const auto t0 = std::chrono::steady_clock::now();
    while (!done()) {
        if (std::chrono::steady_clock::now() - t0 > std::chrono::duration<double>(seconds)) {
            return false;
        }
        std::this_thread::sleep_for(std::chrono::milliseconds(poll_ms));
    }
    return true;
}

// Runs cmd with sh (stderr joined to stdout); returns pclose()'s status (0: exited 0; -1: popen
// failed) and the output.
inline std::pair<int, std::string> run_command(const std::string& cmd) {
    std::string out;
    FILE* f = ::popen((cmd + " 2>&1").c_str(), "r");
    if (f == nullptr) {
        return {-1, "popen failed"};
    }
    std::array<char, 4096> chunk{};
    while (std::fgets(chunk.data(), chunk.size(), f) != nullptr) {
        out += chunk.data();
    }
    return {::pclose(f), out};
}

// The dma-buf objects in debugfs dma_buf/bufinfo: each one's exporter name, inode and attached
// devices. Empty if bufinfo cannot be read.
struct BufInfo {
    std::string exp_name;
    unsigned long long ino = 0;
    std::vector<std::string> devices;
};
inline std::vector<BufInfo> bufinfo() {
    std::ifstream f("/sys/kernel/debug/dma_buf/bufinfo");
    std::vector<BufInfo> objs;
    std::string line;
    while (std::getline(f, line)) {
        // An object's line: size flags mode count exp_name ino name, numbers zero-padded; then
        // "\tAttached Devices:", a device a line after a tab, "Total N devices attached". A fence's
        // line (after a MOVE) starts with a tab and a word.
        std::istringstream fields(line);
        std::string size;
        std::string flags;
        std::string mode;
        std::string count;
        BufInfo o;
        if (!line.empty() && std::isdigit(static_cast<unsigned char>(line[0])) != 0 &&
            fields >> size >> flags >> mode >> count >> o.exp_name >> o.ino) {
            objs.push_back(std::move(o));
        } else if (!objs.empty() && line.size() > 1 && line[0] == '\t' &&
                   line.find(' ') == std::string::npos) {
            objs.back().devices.push_back(line.substr(1));
        }
    }
    return objs;
}

// Devices attached to the dma-buf with inode `ino`, -1 if it is not listed.
inline int attached_devices(ino_t ino) {
    for (const BufInfo& o : bufinfo()) {
        if (o.ino == ino) {
            return static_cast<int>(o.devices.size());
        }
    }
    return -1;
}

inline void fill(std::uint8_t* p, std::size_t n, std::uint64_t seed) {
    std::mt19937_64 gen(seed);
    std::size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        const std::uint64_t v = gen();
        std::memcpy(p + i, &v, 8);
    }
    for (; i < n; i++) {
        p[i] = static_cast<std::uint8_t>(gen());
    }
}

// The first number in a sysfs or debugfs file (decimal, or hex with 0x); throws if there is none.
inline std::uint64_t read_u64(const std::string& path) {
    std::ifstream in(path);
    std::string s;
    in >> s;
    if (!in) {
        throw std::runtime_error("cannot read " + path);
    }
    return std::stoull(s, nullptr, 0);
}

// The IOMMU group type of the lab's NVMe: "DMA" (strict), "DMA-FQ" (lazy) or "identity"
// (passthrough); empty if it has no IOMMU group.
inline std::string iommu_group_type() {
    std::ifstream t("/sys/block/nvme0n1/device/device/iommu_group/type");
    std::string type;
    t >> type;
    return type;
}

// Memory cgroup accounting: a child cgroup this process can move into, and its memory.current.
constexpr const char* kCgroupRoot = "/sys/fs/cgroup";
constexpr const char* kCgroup = "/sys/fs/cgroup/dmabufio-memcg";

inline long long memory_current() {
    std::ifstream in(std::string(kCgroup) + "/memory.current");
    long long v = -1;
    in >> v;
    return v;
}

// A child cgroup with the memory controller; the constructor moves this process into it, leave()
// moves it back to the root (and so does the destructor, which also removes the group).
class Cgroup {
  public:
    Cgroup() {
        if (::access((std::string(kCgroupRoot) + "/cgroup.controllers").c_str(), F_OK) != 0 &&
            ::mount("none", kCgroupRoot, "cgroup2", 0, nullptr) != 0) {
            throw std::runtime_error("cannot mount cgroup2 on /sys/fs/cgroup");
        }
        write_str(std::string(kCgroupRoot) + "/cgroup.subtree_control", "+memory");
        ::rmdir(kCgroup);
        if (::mkdir(kCgroup, 0755) != 0) {
            throw std::runtime_error("cannot create " + std::string(kCgroup));
        }
        write_str(std::string(kCgroup) + "/cgroup.procs", std::to_string(::getpid()));
    }
    Cgroup(const Cgroup&) = delete;
    Cgroup& operator=(const Cgroup&) = delete;
    ~Cgroup() {
        try {
            leave();
        } catch (...) {  // NOLINT(bugprone-empty-catch): best effort in a destructor
        }
        ::rmdir(kCgroup);
    }
    static void leave() {
        write_str(std::string(kCgroupRoot) + "/cgroup.procs", std::to_string(::getpid()));
    }
};

// Polls memory.current until pred holds (charges and uncharges may lag a little: kvfree of a
// vmalloc'ed array, per-CPU charge stocks); returns the last value read.
template <typename Pred>
long long wait_memory(Pred pred) {
    long long v = -1;
    wait_until(
        [&] {
            v = memory_current();
            return pred(v);
        },
        5, 50);
    return v;
}

// A test-exporter dma-buf of size bytes that repeats one 2 MiB chunk of memory
// (DMABUF_TEST_CREATE_REPEAT): every 2 MiB of it is the same memory, so it may be far larger than
// the guest's memory. Size: a multiple of 2 MiB.
inline dmabufio::DmaBuf repeating_dmabuf(std::size_t size) {
    const dmabufio::Fd dev(::open("/dev/dmabuf_test", O_RDWR | O_CLOEXEC));
    if (!dev.valid()) {
        throw std::runtime_error(std::string("open /dev/dmabuf_test: ") + std::strerror(errno));
    }
    dmabuf_test_create create{};
    create.size = size;
    create.flags = DMABUF_TEST_CREATE_REPEAT;
    if (::ioctl(dev.get(), DMABUF_TEST_IOCTL_CREATE, &create) != 0) {
        throw std::runtime_error("DMABUF_TEST_IOCTL_CREATE (repeat) of " + std::to_string(size) +
                                 " bytes: " + std::strerror(errno));
    }
    return dmabufio::DmaBuf::adopt(dmabufio::Fd(create.fd));
}

// DMABUF_TEST_IOCTL_CREATE of `size` bytes with `flags`: 0 when it succeeds (the new dma-buf is
// closed again), else its errno. Throws if /dev/dmabuf_test cannot be opened.
inline int test_exporter_create_errno(std::uint64_t size, std::uint32_t flags) {
    const dmabufio::Fd dev(::open("/dev/dmabuf_test", O_RDWR | O_CLOEXEC));
    if (!dev.valid()) {
        throw std::runtime_error(std::string("open /dev/dmabuf_test: ") + std::strerror(errno));
    }
    dmabuf_test_create c{};
    c.size = size;
    c.flags = flags;
    if (::ioctl(dev.get(), DMABUF_TEST_IOCTL_CREATE, &c) != 0) {
        return errno;
    }
    ::close(c.fd);
    return 0;
}

// DMABUF_TEST_IOCTL_MOVE of a test-exporter dma-buf that the library adopted (and so can't move).
inline void test_exporter_move(int dmabuf_fd) {
    const dmabufio::Fd dev(::open("/dev/dmabuf_test", O_RDWR | O_CLOEXEC));
    dmabuf_test_move move{};
    move.fd = dmabuf_fd;
    if (!dev.valid() || ::ioctl(dev.get(), DMABUF_TEST_IOCTL_MOVE, &move) != 0) {
        throw std::runtime_error(std::string("DMABUF_TEST_IOCTL_MOVE: ") + std::strerror(errno));
    }
}

// The extended update's descriptor that registers dma-buf `dmabuf_fd` for I/O to `target_fd`.
inline io_uring_regbuf_desc dmabuf_desc(int dmabuf_fd, int target_fd) {
    io_uring_regbuf_desc d{};
    d.type = IO_REGBUF_TYPE_DMABUF;
    d.dmabuf_fd = dmabuf_fd;
    d.target_fd = target_fd;
    return d;
}

// MOVEs a test-exporter dma-buf every `interval` from a thread of its own until destroyed (or
// stop()): each MOVE invalidates every mapping of it under the I/O of the test.
class PeriodicMover {
  public:
    PeriodicMover(int dmabuf_fd, std::chrono::milliseconds interval)
        : thread_([this, dmabuf_fd, interval] {
              try {
                  while (!stop_.load()) {
                      test_exporter_move(dmabuf_fd);
                      moves_++;
                      std::this_thread::sleep_for(interval);
                  }
              } catch (const std::exception& e) {
                  error_ = e.what();
              }
          }) {}
    PeriodicMover(const PeriodicMover&) = delete;
    PeriodicMover& operator=(const PeriodicMover&) = delete;
    PeriodicMover(PeriodicMover&&) = delete;
    PeriodicMover& operator=(PeriodicMover&&) = delete;
    ~PeriodicMover() { stop(); }
    // Stops and returns the number of MOVEs; the first failed MOVE's message is in error().
    unsigned stop() {
        stop_ = true;
        if (thread_.joinable()) {
            thread_.join();
        }
        return moves_.load();
    }
    [[nodiscard]] unsigned moves() const { return moves_.load(); }
    [[nodiscard]] const std::string& error() const { return error_; }

  private:
    std::atomic<bool> stop_{false};
    std::atomic<unsigned> moves_{0};
    std::string error_;
    std::thread thread_;  // last: started once the members above exist
};

// The ordinary direct-I/O path, for reference: a second O_DIRECT fd and pread/pwrite.
class Reference {
  public:
    explicit Reference(const std::string& device = kDevice)
        : fd_(::open(device.c_str(), O_RDWR | O_DIRECT | O_CLOEXEC)) {
        if (!fd_.valid()) {
            throw std::runtime_error("open " + device + ": " + std::strerror(errno));
        }
    }
    void write(const std::uint8_t* p, std::size_t n, std::uint64_t off) const {
        io(true, const_cast<std::uint8_t*>(p), n, off);
    }
    void read(std::uint8_t* p, std::size_t n, std::uint64_t off) const { io(false, p, n, off); }
    [[nodiscard]] int fd() const { return fd_.get(); }

  private:
    void io(bool w, std::uint8_t* p, std::size_t n, std::uint64_t off) const {
        while (n > 0) {
            const ssize_t r = w ? ::pwrite(fd_.get(), p, n, static_cast<off_t>(off))
                                : ::pread(fd_.get(), p, n, static_cast<off_t>(off));
            if (r <= 0) {
                throw std::runtime_error(std::string("reference ") + (w ? "pwrite" : "pread") +
                                         ": " + std::strerror(r < 0 ? errno : EIO));
            }
            p += r;
            n -= static_cast<std::size_t>(r);
            off += static_cast<std::uint64_t>(r);
        }
    }
    dmabufio::Fd fd_;
};

// Verified reads and writes at depth 16 in rounds, each I/O in its own 1 MiB window of the first
// 32 MiB of `dev` (whose contents `data_` holds), from and to slot 0 of `table` (a dma-buf of at
// least kDepth * kSlot bytes, `view` its CPU mapping): counts I/Os and bytes, fails the test on any
// I/O that doesn't complete in full with the right bytes.
struct VerifiedRounds {
    static constexpr unsigned kDepth = 16;
    static constexpr std::size_t kSlot = 128 * kKiB;
    static constexpr std::size_t kArea = 32 * kMiB;

    VerifiedRounds(int fd, const std::string& dev, dmabufio::BufferTable& table,
                   std::span<std::uint8_t> view)
        : fd_(fd), plain_(dev), table_(table), view_(view), data_(kArea), back_(kSlot) {
        fill(data_.data(), kArea, 3);
        plain_.write(data_.data(), kArea, 0);
    }
    void round() {
        std::vector<unsigned> windows(kArea / kMiB);
        for (unsigned w = 0; w < windows.size(); w++) {
            windows[w] = w;
        }
        std::shuffle(windows.begin(), windows.end(), gen_);
        std::vector<std::pair<bool, std::uint64_t>> batch(kDepth);
        for (unsigned i = 0; i < kDepth; i++) {
            batch[i] = {gen_() % 2 == 0, windows[i] * kMiB + (gen_() % 8) * kSlot};
            if (batch[i].first) {
                fill(view_.data() + i * kSlot, kSlot, gen_());
            }
            table_.prep(batch[i].first, fd_, 0, i * kSlot, kSlot, batch[i].second, i);
        }
        for (unsigned i = 0; i < kDepth; i++) {
            auto [ud, res] = table_.ring().submit_and_wait_one();
            ASSERT_LT(ud, kDepth);
            ASSERT_EQ(res, static_cast<int>(kSlot)) << "I/O at " << batch[ud].second;
            ios++;
        }
        for (unsigned i = 0; i < kDepth; i++) {
            const auto [write, at] = batch[i];
            if (write) {
                std::memcpy(data_.data() + at, view_.data() + i * kSlot, kSlot);
                plain_.read(back_.data(), kSlot, at);
                ASSERT_EQ(std::memcmp(back_.data(), data_.data() + at, kSlot), 0)
                    << "write at " << at;
            } else {
                ASSERT_EQ(std::memcmp(view_.data() + i * kSlot, data_.data() + at, kSlot), 0)
                    << "read at " << at;
            }
            verified += kSlot;
        }
    }

    std::size_t ios = 0;
    std::size_t verified = 0;

  private:
    int fd_;
    Reference plain_;
    dmabufio::BufferTable& table_;
    std::span<std::uint8_t> view_;
    Memory data_;
    Memory back_;
    std::mt19937_64 gen_{29};
};

}  // namespace guest
