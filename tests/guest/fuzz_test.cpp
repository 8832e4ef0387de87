// Hostile inputs (issue #6): a seeded, reproducible fuzzer of the dma-buf uapi, and the buffer
// table's size limits.
//
// The fuzzer throws random and mutated extended buffer updates (types, flags, reserved words,
// sizes, addresses, update flags, offsets, nr, tags, bad pointers), fds of every kind (dma-bufs of
// the three exporters, memfds, regular files, pipes, sockets, eventfds, /dev/nvme0n1 with and
// without O_DIRECT, read-only, write-only, O_PATH, character devices, an io_uring fd, closed and
// reused fds, -1), random slots (also out of range) and READ_FIXED/WRITE_FIXED/other opcodes with
// random offsets, lengths and files at one ring. A model of the kernel state (the fd table, the
// slots, the fixed-file table, the device's contents in two windows) predicts every result: the
// exact errno wherever the input determines it (design.md's table, the Documentation page's table,
// and io_uring's own rules for what is not dma-buf specific), otherwise membership in the
// documented set. Successful I/O is checked byte for byte against the model of the device, and the
// device windows are read back through the ordinary O_DIRECT path.
//
// DMABUFIO_FUZZ_SEED=N reproduces a run (the seed is always printed); DMABUFIO_FUZZ_CALLS=N sets
// the number of uapi calls (default 100000).
#include <arpa/inet.h>
#include <fcntl.h>
#include <gtest/gtest.h>
#include <net/if.h>
#include <netinet/in.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <chrono>
#include <climits>
#include <csignal>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <memory>
#include <optional>
#include <random>
#include <string>
#include <vector>

#include "dmabufio/buffer_table.hpp"
#include "dmabufio/dmabuf.hpp"
#include "dmabufio/dmabufio.h"
#include "dmabufio/error.hpp"
#include "dmabufio/file.hpp"
#include "dmabufio/ring.hpp"
#include "dmabufio/uapi.hpp"
#include "guest_util.hpp"

namespace {

// io_uring imports a fixed buffer at issue, after it has looked the file up: with both a bad file
// and a bad slot, the answer is EBADF. The extended update takes a UADDR descriptor exactly as an
// iovec: an empty one (uaddr and size 0) with a tag is EINVAL, as an empty iovec with a tag is.

using dmabufio::BlockFile;
using dmabufio::BufferTable;
using dmabufio::DmaBuf;
using dmabufio::Exporter;
using dmabufio::Fd;
using dmabufio::Ring;
using guest::kKiB;
using guest::kMiB;

constexpr unsigned kSlots = 32;
constexpr unsigned kFixedFiles = 8;
constexpr std::uint64_t kTagBit = 1ULL << 62;
constexpr std::uint64_t kNotifMask = kTagBit;
constexpr std::uint64_t kWindowA = 1 * guest::kGiB;  // device bytes the model tracks
constexpr std::size_t kWindowASize = 4 * kMiB;
constexpr std::size_t kWindowBSize = 1 * kMiB;  // and the device's last MiB
constexpr std::size_t kUserSize = 1 * kMiB;     // user memory for UADDR slots
constexpr std::size_t kHoleSize = 64 * kKiB;    // inaccessible, after it
constexpr std::size_t kPage = 4096;
constexpr std::size_t kMaxIo = 256 * kKiB;
constexpr unsigned kBadOpcode = 250;  // no io_uring opcode (IORING_OP_LAST is far below)

std::uint64_t env_u64(const char* name, std::uint64_t def) {
    const char* v = std::getenv(name);
    if (v == nullptr || *v == '\0') {
        return def;
    }
    return std::strtoull(v, nullptr, 0);
}

std::string res_name(int res) {
    if (res >= 0) {
        return "ok";
    }
    const char* n = strerrorname_np(-res);
    return n != nullptr ? n : "errno " + std::to_string(-res);
}

long io_uring_register_raw(int fd, unsigned op, const void* arg, unsigned nr) {
    return dmabufio_register_raw(fd, op, const_cast<void*>(arg), nr);
}

enum class Kind {
    kNvme,      // /dev/nvme0n1 (access mode and O_DIRECT in Desc)
    kNvmePath,  // O_PATH
    kDmaBuf,
    kMemfd,
    kRegular,
    kRegularDirect,
    kPipeRead,
    kPipeWrite,
    kUnixSocket,
    kUdpSocket,
    kEventfd,
    kDevNull,
    kNvmeChar,  // /dev/nvme0
    kNgChar,    // /dev/ng0n1
    kRingFd,
};

// A dma-buf object: our CPU view keeps it alive as long as a handle or a slot refers to it.
struct Buffer {
    Exporter exporter = Exporter::kUdmabuf;
    std::size_t size = 0;
    std::uint8_t* map = nullptr;
    Buffer() = default;
    Buffer(const Buffer&) = delete;
    Buffer& operator=(const Buffer&) = delete;
    Buffer(Buffer&&) = delete;
    Buffer& operator=(Buffer&&) = delete;
    ~Buffer() {
        if (map != nullptr) {
            ::munmap(map, size);
        }
    }
};

// An open file description (what an fd number or a registration refers to).
struct Desc {
    std::uint64_t id = 0;
    Kind kind = Kind::kDevNull;
    int accmode = O_RDWR;
    bool direct = false;
    std::int64_t fpos = 0;
    std::shared_ptr<Buffer> buf;  // kDmaBuf
};

// What the fuzzer opens, and reopens: a recipe and the current fd.
struct Handle {
    Kind kind = Kind::kDevNull;
    int open_flags = 0;  // kNvme
    Exporter exporter = Exporter::kUdmabuf;
    std::size_t size = 0;  // kDmaBuf
    int fd = -1;
    std::shared_ptr<Desc> desc;
};

struct Slot {
    enum Type { kEmpty, kUser, kDma } type = kEmpty;
    std::uint64_t uaddr = 0, size = 0;  // kUser
    bool user_unknown = false;          // kUser over memory we do not model (a dma-buf's mmap)
    std::shared_ptr<Buffer> buf;        // kDma
    std::shared_ptr<Desc> target;       // kDma
    std::uint64_t tag = 0;
};

// The expected result of one call.
struct Expect {
    bool exact = true;
    int value = 0;  // exact: the result (>= 0) or -errno
    bool success_ok = false;
    std::vector<int> errnos;  // inexact: allowed -errno values
    [[nodiscard]] bool matches(int res) const {
        if (exact) {
            return res == value;
        }
        if (res >= 0) {
            return success_ok;
        }
        return std::find(errnos.begin(), errnos.end(), res) != errnos.end();
    }
    [[nodiscard]] std::string str() const {
        if (exact) {
            return value >= 0 ? std::to_string(value) : res_name(value);
        }
        std::string s = success_ok ? "{ok" : "{";
        for (int e : errnos) {
            s += (s.size() > 1 ? "," : "") + res_name(e);
        }
        return s + "}";
    }
};
Expect exactly(int v) { return {true, v, false, {}}; }
Expect one_of(std::vector<int> errnos, bool success_ok) {
    return {false, 0, success_ok, std::move(errnos)};
}

// Results of operations outside the contract (non-dma-buf I/O on pipes, sockets, ...): io_uring's
// ordinary errors.
const std::vector<int> kGeneric = {
    -EINVAL,   -EBADF,        -EFAULT,   -EAGAIN,   -EOPNOTSUPP,   -ENOSPC, -ESPIPE, -EPERM, -EPIPE,
    -ENOTSOCK, -EDESTADDRREQ, -ENOTCONN, -EMSGSIZE, -ECONNREFUSED, -ENOTTY, -ENXIO,  -ENODEV};

class Fuzzer {
  public:
    explicit Fuzzer(std::uint64_t seed) : gen_(seed) {}
    Fuzzer(const Fuzzer&) = delete;
    Fuzzer& operator=(const Fuzzer&) = delete;
    Fuzzer(Fuzzer&&) = delete;
    Fuzzer& operator=(Fuzzer&&) = delete;
    ~Fuzzer() {
        for (auto& h : handles_) {
            close_handle(h);
        }
        if (user_ != nullptr) {
            ::munmap(user_, kUserSize + kHoleSize + kPage);
        }
        if (arena_ != nullptr) {
            ::munmap(arena_, 2 * kPage);
        }
    }

    void setup();
    void run(std::uint64_t calls);
    void finish();

  private:
    // randomness
    std::uint64_t rnd(std::uint64_t n) { return n == 0 ? 0 : gen_() % n; }
    bool chance(unsigned pct) { return rnd(100) < pct; }

    // handles and the fd table model
    void open_handle(Handle& h);
    void close_handle(Handle& h);
    [[nodiscard]] std::shared_ptr<Desc> lookup(int fd) const;
    int pick_fd(bool want_dmabuf, bool want_target);
    int pick_any_fd();

    // the calls
    void call_register();
    void call_io();
    void call_other();
    void maintenance();

    // oracles
    int predict_uaddr(std::uint64_t uaddr, std::uint64_t size, bool* uncertain, Slot* out) const;
    int predict_desc(const io_uring_regbuf_desc& d, std::uint64_t tag, bool* uncertain,
                     Slot* out) const;
    Expect predict_rw(bool write, unsigned slot, std::uint64_t addr, std::uint32_t len,
                      std::uint64_t pos, int fd, bool fixed_file, unsigned sqe_flags,
                      unsigned rw_flags, std::shared_ptr<Desc>* file_out,
                      std::int64_t* eff_pos) const;
    void place_slot(unsigned i, Slot s);

    // submission and completions
    int submit(io_uring_sqe proto, unsigned* cqe_flags);
    void drain_cqes();
    void note(const std::string& what, const Expect& e, int res);
    void count(const std::string& key) {
        outcomes_[key]++;
        last_key_ = key;
    }

    // the device model
    void shadow_write(std::uint64_t pos, const std::uint8_t* src, std::size_t n);
    bool shadow_check(std::uint64_t pos, const std::uint8_t* data, std::size_t n);
    void verify_device();
    std::string explain(std::uint64_t pos, const std::uint8_t* data, std::size_t n);

    std::mt19937_64 gen_;
    std::uint64_t next_id_ = 1;
    std::uint64_t calls_ = 0;
    std::unique_ptr<BlockFile> dev_;
    std::unique_ptr<guest::Reference> ref_;
    std::unique_ptr<Ring> ring_;
    std::unique_ptr<Ring> bare_ring_;  // no buffer table: ENXIO
    std::vector<Handle> handles_;
    std::vector<int> closed_fds_;
    std::array<Slot, kSlots> slots_{};
    std::array<std::shared_ptr<Desc>, kFixedFiles> fixed_{};
    std::uint8_t* user_ = nullptr;   // kUserSize RW, then kHoleSize + a page PROT_NONE
    std::uint8_t* arena_ = nullptr;  // a RW page then a PROT_NONE page: descriptors, iovecs, tags
    std::vector<std::uint8_t> shadow_a_, shadow_b_;
    std::uint64_t dev_size_ = 0;
    std::uint32_t lbs_ = 512;
    std::uint32_t dma_align_ = 3;
    bool udp_ok_ = false;
    Fd udp_rx_;
    std::uint64_t next_tag_ = 1;
    std::uint64_t tags_expected_ = 0, tags_seen_ = 0;
    std::uint64_t next_user_data_ = 1;
    std::uint64_t moves_ = 0, reopens_ = 0, toggles_ = 0, verified_bytes_ = 0;
    std::uint64_t mismatches_ = 0;
    std::uint64_t paranoid_ = env_u64("DMABUFIO_FUZZ_PARANOID", 0);
    std::uint64_t paranoid_from_ = env_u64("DMABUFIO_FUZZ_PARANOID_FROM", 0);
    std::string last_what_;
    std::map<std::string, std::uint64_t> outcomes_;
    std::map<std::string, double> seconds_;  // time spent per outcome
    std::string last_key_;
};

// ---------------------------------------------------------------------------------------------
// setup

bool loopback_up() {
    Fd s(::socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0));
    if (!s.valid()) {
        return false;
    }
    ifreq ifr{};
    std::strncpy(ifr.ifr_name, "lo", IFNAMSIZ - 1);
    if (::ioctl(s.get(), SIOCGIFFLAGS, &ifr) != 0) {
        return false;
    }
    ifr.ifr_flags = static_cast<short>(ifr.ifr_flags | IFF_UP);
    return ::ioctl(s.get(), SIOCSIFFLAGS, &ifr) == 0;
}

std::uint32_t read_sysfs_u32(const char* path, std::uint32_t def) {
    FILE* f = std::fopen(path, "re");
    if (f == nullptr) {
        return def;
    }
    unsigned v = def;
    if (std::fscanf(f, "%u", &v) != 1) {
        v = def;
    }
    std::fclose(f);
    return v;
}

void Fuzzer::setup() {
    std::signal(SIGPIPE, SIG_IGN);  // writes to pipes without readers: EPIPE, not death
    dev_ = std::make_unique<BlockFile>(guest::kDevice);
    ref_ = std::make_unique<guest::Reference>();
    dev_size_ = dev_->size();
    lbs_ = dev_->logical_block_size();
    dma_align_ = read_sysfs_u32("/sys/block/nvme0n1/queue/dma_alignment", 511);

    // user memory: RW, then an unmapped hole, then PROT_NONE
    void* p = ::mmap(nullptr, kUserSize + kHoleSize + kPage, PROT_READ | PROT_WRITE,
                     MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    ASSERT_NE(p, MAP_FAILED);
    user_ = static_cast<std::uint8_t*>(p);
    // (PROT_NONE rather than unmapped: nothing else can be mapped there later)
    ASSERT_EQ(::mprotect(user_ + kUserSize, kHoleSize + kPage, PROT_NONE), 0);
    guest::fill(user_, kUserSize, gen_());
    p = ::mmap(nullptr, 2 * kPage, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    ASSERT_NE(p, MAP_FAILED);
    arena_ = static_cast<std::uint8_t*>(p);
    ASSERT_EQ(::mprotect(arena_ + kPage, kPage, PROT_NONE), 0);

    // the device model: two windows with known contents
    shadow_a_.resize(kWindowASize);
    shadow_b_.resize(kWindowBSize);
    guest::fill(shadow_a_.data(), kWindowASize, gen_());
    guest::fill(shadow_b_.data(), kWindowBSize, gen_());
    {
        guest::Memory m(kWindowASize);
        std::memcpy(m.data(), shadow_a_.data(), kWindowASize);
        ref_->write(m.data(), kWindowASize, kWindowA);
        std::memcpy(m.data(), shadow_b_.data(), kWindowBSize);
        ref_->write(m.data(), kWindowBSize, dev_size_ - kWindowBSize);
    }

    udp_ok_ = loopback_up();
    ring_ = std::make_unique<Ring>(64);
    bare_ring_ = std::make_unique<Ring>(4);
    ring_->register_buffers_sparse(kSlots);

    auto nvme = [](int flags) {
        Handle h;
        h.kind = Kind::kNvme;
        h.open_flags = flags;
        return h;
    };
    auto dma = [](Exporter e, std::size_t size) {
        Handle h;
        h.kind = Kind::kDmaBuf;
        h.exporter = e;
        h.size = size;
        return h;
    };
    auto plain = [](Kind k) {
        Handle h;
        h.kind = k;
        return h;
    };
    handles_ = {nvme(O_RDWR | O_DIRECT),
                nvme(O_RDWR | O_DIRECT),
                nvme(O_RDONLY | O_DIRECT),
                nvme(O_WRONLY | O_DIRECT),
                nvme(O_RDWR),
                plain(Kind::kNvmePath),
                dma(Exporter::kUdmabuf, 64 * kKiB),
                dma(Exporter::kUdmabuf, 8 * kKiB),
                dma(Exporter::kUdmabuf, 256 * kKiB),
                dma(Exporter::kHeap, 64 * kKiB),
                dma(Exporter::kHeap, 1 * kMiB),
                dma(Exporter::kTest, 64 * kKiB),
                dma(Exporter::kTest, 256 * kKiB),
                plain(Kind::kMemfd),
                plain(Kind::kRegular),
                plain(Kind::kRegularDirect),
                plain(Kind::kPipeRead),
                plain(Kind::kPipeWrite),
                plain(Kind::kUnixSocket),
                plain(Kind::kEventfd),
                plain(Kind::kDevNull),
                plain(Kind::kNvmeChar),
                plain(Kind::kRingFd)};
    if (::access("/dev/ng0n1", F_OK) == 0) {
        handles_.push_back(plain(Kind::kNgChar));
    }
    if (udp_ok_) {
        udp_rx_.reset(::socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0));
        sockaddr_in a{};
        a.sin_family = AF_INET;
        a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        udp_ok_ = udp_rx_.valid() &&
                  ::bind(udp_rx_.get(), reinterpret_cast<sockaddr*>(&a), sizeof(a)) == 0;
        if (udp_ok_) {
            handles_.push_back(plain(Kind::kUdpSocket));
        }
    }
    for (auto& h : handles_) {
        open_handle(h);
        ASSERT_GE(h.fd, 0) << "opening handle of kind " << static_cast<int>(h.kind);
    }
    // fixed files: both read-write targets, the read-only one, the buffered one, a pipe, sparse
    std::array<int, kFixedFiles> ffds{handles_[0].fd,
                                      handles_[1].fd,
                                      handles_[2].fd,
                                      handles_[4].fd,
                                      handles_[16].fd,
                                      handles_[13].fd,
                                      -1,
                                      -1};
    ASSERT_EQ(io_uring_register_files(ring_->get(), ffds.data(), kFixedFiles), 0);
    for (unsigned i = 0; i < kFixedFiles; i++) {
        fixed_[i] = ffds[i] < 0 ? nullptr : lookup(ffds[i]);
    }
}

void Fuzzer::open_handle(Handle& h) {
    auto d = std::make_shared<Desc>();
    d->id = next_id_++;
    d->kind = h.kind;
    int fd = -1;
    switch (h.kind) {
        case Kind::kNvme:
            fd = ::open(guest::kDevice, h.open_flags | O_CLOEXEC);
            d->accmode = h.open_flags & O_ACCMODE;
            d->direct = (h.open_flags & O_DIRECT) != 0;
            if (fd >= 0) {
                // pos -1 I/O uses the file position: keep it in the modelled window
                d->fpos = static_cast<std::int64_t>(kWindowA + kMiB * rnd(2));
                ::lseek(fd, d->fpos, SEEK_SET);
            }
            break;
        case Kind::kNvmePath:
            fd = ::open(guest::kDevice, O_PATH | O_CLOEXEC);
            break;
        case Kind::kDmaBuf: {
            try {
                DmaBuf b = DmaBuf::allocate(h.exporter, h.size);
                fd = ::fcntl(b.fd(), F_DUPFD_CLOEXEC, 0);
            } catch (const dmabufio::Error& e) {
                ADD_FAILURE() << e.what();
                return;
            }
            auto buf = std::make_shared<Buffer>();
            buf->exporter = h.exporter;
            buf->size = h.size;
            void* m = ::mmap(nullptr, h.size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
            if (m == MAP_FAILED) {
                ADD_FAILURE() << "mmap of a " << dmabufio::to_string(h.exporter) << " dma-buf";
                ::close(fd);
                return;
            }
            buf->map = static_cast<std::uint8_t*>(m);
            guest::fill(buf->map, h.size, gen_());
            d->buf = buf;
            break;
        }
        case Kind::kMemfd:
            fd = ::memfd_create("fuzz", MFD_CLOEXEC);
            if (fd >= 0 && ::ftruncate(fd, 1 * kMiB) != 0) {
                ADD_FAILURE() << "ftruncate memfd";
            }
            break;
        case Kind::kRegular:
        case Kind::kRegularDirect: {
            std::string path = "/tmp/dmabufio-fuzz-XXXXXX";
            fd = ::mkostemp(path.data(), O_CLOEXEC);
            if (fd >= 0) {
                ::unlink(path.c_str());
                if (::ftruncate(fd, 1 * kMiB) != 0) {
                    ADD_FAILURE() << "ftruncate";
                }
                if (h.kind == Kind::kRegularDirect) {
                    d->direct = ::fcntl(fd, F_SETFL, O_DIRECT) == 0;
                }
            }
            break;
        }
        case Kind::kPipeRead:
        case Kind::kPipeWrite: {
            // One end of a fresh pipe whose other end is closed: reads see EOF, writes EPIPE.
            std::array<int, 2> p{};
            if (::pipe2(p.data(), O_CLOEXEC | O_NONBLOCK) == 0) {
                const bool read_end = h.kind == Kind::kPipeRead;
                fd = read_end ? p[0] : p[1];
                ::close(read_end ? p[1] : p[0]);
                d->accmode = read_end ? O_RDONLY : O_WRONLY;
            }
            break;
        }
        case Kind::kUnixSocket: {
            std::array<int, 2> sv{};
            if (::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0, sv.data()) ==
                0) {
                fd = sv[0];
                ::close(sv[1]);
            }
            break;
        }
        case Kind::kUdpSocket: {
            fd = ::socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
            sockaddr_in a{};
            socklen_t alen = sizeof(a);
            if (fd >= 0 &&
                (::getsockname(udp_rx_.get(), reinterpret_cast<sockaddr*>(&a), &alen) != 0 ||
                 ::connect(fd, reinterpret_cast<sockaddr*>(&a), alen) != 0)) {
                ADD_FAILURE() << "connect UDP: " << std::strerror(errno);
            }
            break;
        }
        case Kind::kEventfd:
            fd = ::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
            break;
        case Kind::kDevNull:
            fd = ::open("/dev/null", O_RDWR | O_CLOEXEC);
            break;
        case Kind::kNvmeChar:
            fd = ::open("/dev/nvme0", O_RDWR | O_CLOEXEC);
            break;
        case Kind::kNgChar:
            fd = ::open("/dev/ng0n1", O_RDWR | O_CLOEXEC);
            break;
        case Kind::kRingFd: {
            io_uring_params params{};
            fd = static_cast<int>(::syscall(__NR_io_uring_setup, 2, &params));
            break;
        }
    }
    h.fd = fd;
    h.desc = fd >= 0 ? d : nullptr;
    if (fd >= 0) {
        std::erase(closed_fds_, fd);
    }
}

void Fuzzer::close_handle(Handle& h) {
    if (h.fd >= 0) {
        ::close(h.fd);
        closed_fds_.push_back(h.fd);
        if (closed_fds_.size() > 8) {
            closed_fds_.erase(closed_fds_.begin());
        }
    }
    h.fd = -1;
    h.desc = nullptr;
}

std::shared_ptr<Desc> Fuzzer::lookup(int fd) const {
    if (fd < 0) {
        return nullptr;
    }
    for (const auto& h : handles_) {
        if (h.fd == fd) {
            return h.desc;
        }
    }
    return nullptr;
}

int Fuzzer::pick_any_fd() {
    const std::uint64_t r = rnd(100);
    if (r < 85) {
        return handles_[rnd(handles_.size())].fd;
    }
    if (r < 90 && !closed_fds_.empty()) {
        const int fd = closed_fds_[rnd(closed_fds_.size())];
        return lookup(fd) ? -1 : fd;
    }
    static constexpr std::array<int, 5> kOdd{-1, -2, 9999, INT_MAX, INT_MIN};
    return kOdd[rnd(kOdd.size())];
}

int Fuzzer::pick_fd(bool want_dmabuf, bool want_target) {
    if (chance(75)) {
        std::vector<int> fds;
        for (const auto& h : handles_) {
            if (h.fd >= 0 && ((want_dmabuf && h.kind == Kind::kDmaBuf) ||
                              (want_target && h.kind == Kind::kNvme))) {
                fds.push_back(h.fd);
                if (want_target && h.open_flags == (O_RDWR | O_DIRECT)) {
                    fds.push_back(h.fd);  // favour the read-write targets
                    fds.push_back(h.fd);
                }
            }
        }
        if (!fds.empty()) {
            return fds[rnd(fds.size())];
        }
    }
    return pick_any_fd();
}

// ---------------------------------------------------------------------------------------------
// registration

int Fuzzer::predict_uaddr(std::uint64_t uaddr, std::uint64_t size, bool* uncertain,
                          Slot* out) const {
    // io_buffer_validate(), then io_pin_pages()
    if (uaddr == 0) {
        if (size != 0) {
            return -EFAULT;
        }
        *out = Slot{};
        return 0;
    }
    if (size == 0 || size > guest::kGiB) {
        return -EFAULT;
    }
    std::uint64_t end = 0;
    if (__builtin_add_overflow(uaddr, size + kPage - 1, &end)) {
        return -EOVERFLOW;
    }
    const auto base = reinterpret_cast<std::uintptr_t>(user_);
    out->type = Slot::kUser;
    out->uaddr = uaddr;
    out->size = size;
    if (uaddr >= base && uaddr + size <= base + kUserSize) {
        return 0;
    }
    for (const auto& h : handles_) {
        if (h.desc && h.desc->buf) {
            const auto m = reinterpret_cast<std::uintptr_t>(h.desc->buf->map);
            if (uaddr >= m && uaddr < m + h.desc->buf->size) {
                // a dma-buf's CPU mapping: whether it can be pinned is the exporter's business
                *uncertain = true;
                out->user_unknown = true;
                return 0;
            }
        }
    }
    return -EFAULT;  // the hole, PROT_NONE, kernel addresses
}

int Fuzzer::predict_desc(const io_uring_regbuf_desc& d, std::uint64_t tag, bool* uncertain,
                         Slot* out) const {
    *out = Slot{};
    out->tag = tag;
    if (d.type == IO_REGBUF_TYPE_EMPTY && tag != 0) {
        return -EINVAL;
    }
    if (d.flags != 0 || std::any_of(std::begin(d.__resv), std::end(d.__resv),
                                    [](std::uint64_t v) { return v != 0; })) {
        return -EINVAL;
    }
    // the dma-buf's fields must be 0 for the other types
    if (d.type != IO_REGBUF_TYPE_DMABUF && (d.dmabuf_fd != 0 || d.target_fd != 0)) {
        return -EINVAL;
    }
    switch (d.type) {
        case IO_REGBUF_TYPE_EMPTY:
            return d.uaddr != 0 || d.size != 0 ? -EINVAL : 0;
        case IO_REGBUF_TYPE_UADDR: {
            if (d.uaddr == 0 && d.size == 0 && tag != 0) {
                return -EINVAL;
            }
            const int r = predict_uaddr(d.uaddr, d.size, uncertain, out);
            out->tag = tag;
            return r;
        }
        case IO_REGBUF_TYPE_DMABUF: {
            if (d.uaddr != 0 || d.size != 0) {
                return -EINVAL;
            }
            auto b = lookup(d.dmabuf_fd);
            if (!b || b->kind != Kind::kDmaBuf) {
                return -EBADF;
            }
            auto t = lookup(d.target_fd);
            if (!t || t->kind == Kind::kNvmePath) {
                return -EBADF;
            }
            if (t->kind != Kind::kNvme || !t->direct) {
                return -EOPNOTSUPP;
            }
            out->type = Slot::kDma;
            out->buf = b->buf;
            out->target = t;
            return 0;
        }
        default:
            return -EINVAL;
    }
}

void Fuzzer::place_slot(unsigned i, Slot s) {
    Slot& old = slots_.at(i);
    if (old.type != Slot::kEmpty && old.tag != 0) {
        tags_expected_++;  // a replaced tagged buffer posts its tag once released
    }
    old = std::move(s);
}

void Fuzzer::call_register() {
    calls_++;
    const bool bare = chance(2);
    // nr and the offset
    unsigned nr = 1;
    if (chance(12)) {
        nr = 2 + static_cast<unsigned>(rnd(3));
    } else if (chance(1)) {
        nr = 0;
    }
    auto offset = static_cast<std::uint32_t>(rnd(kSlots));
    const std::uint64_t oroll = rnd(100);
    if (oroll < 3) {
        offset = kSlots - static_cast<std::uint32_t>(rnd(2));  // just past the end
    } else if (oroll < 5) {
        offset = static_cast<std::uint32_t>(gen_());  // anywhere
    } else if (oroll < 6) {
        offset = UINT32_MAX - static_cast<std::uint32_t>(rnd(2));  // wraps with nr
    }
    // update flags
    std::uint32_t flags = IORING_RSRC_UPDATE_EXTENDED;
    const std::uint64_t froll = rnd(100);
    const bool classic = froll < 4;  // the old iovec format
    if (classic) {
        flags = 0;
    } else if (froll < 6) {
        flags |= 1U << (2 + rnd(30));
    } else if (froll < 7) {
        flags = 1U << 0;
    }
    const std::uint32_t resv2 = chance(1) ? 1 + static_cast<std::uint32_t>(rnd(1000)) : 0;
    const unsigned argsz =
        chance(1) ? static_cast<unsigned>(rnd(64)) : sizeof(io_uring_rsrc_update2);

    // the descriptors (or iovecs), in the arena; optionally ending at the PROT_NONE page
    const unsigned n = std::max(nr, 1U);
    const bool at_guard = !classic && n > 1 && chance(10);
    const std::size_t esz = classic ? sizeof(iovec) : sizeof(io_uring_regbuf_desc);
    std::uint8_t* data = at_guard ? arena_ + kPage - esz * (1 + rnd(n - 1)) : arena_;
    const unsigned valid_n =
        static_cast<unsigned>(std::min<std::uint64_t>(n, (arena_ + kPage - data) / esz));
    std::vector<io_uring_regbuf_desc> descs(n);
    std::vector<iovec> iovs(n);
    for (unsigned k = 0; k < n; k++) {
        io_uring_regbuf_desc d{};
        const std::uint64_t troll = rnd(100);
        if (troll < 55) {
            // A successful registration costs an attach and a map, and the release of what it
            // replaces an RCU grace period (~30 ms under TCG): most descriptors carry a defect.
            d.type = IO_REGBUF_TYPE_DMABUF;
            d.dmabuf_fd = pick_fd(true, false);
            d.target_fd = pick_fd(false, true);
            if (!chance(7)) {
                switch (rnd(6)) {
                    case 0:
                        d.dmabuf_fd = pick_any_fd();  // anything but a dma-buf, mostly
                        break;
                    case 1:
                        d.target_fd = pick_any_fd();
                        break;
                    case 2:
                        d.target_fd = handles_[2 + rnd(4)].fd;  // RDONLY, WRONLY, buffered, O_PATH
                        break;
                    case 3:
                        std::swap(d.dmabuf_fd, d.target_fd);
                        break;
                    case 4:
                        d.flags = 1U << rnd(32);
                        break;
                    default:
                        d.__resv[rnd(6)] = 1 + rnd(UINT32_MAX);
                        break;
                }
            }
        } else if (troll < 65) {
            d.type = IO_REGBUF_TYPE_EMPTY;
        } else if (troll < 95) {
            d.type = IO_REGBUF_TYPE_UADDR;
            const auto base = reinterpret_cast<std::uintptr_t>(user_);
            const std::uint64_t uroll = rnd(100);
            if (uroll < 70) {
                d.uaddr = base + (chance(70) ? kPage * rnd(kUserSize / kPage) : rnd(kUserSize));
                d.size = 1 + rnd(base + kUserSize - d.uaddr);
            } else if (uroll < 75) {
                d.uaddr = base + kUserSize - kPage * rnd(4);  // into the hole
                d.size = kPage * (1 + rnd(8));
            } else if (uroll < 80) {
                d.uaddr = 0;
                d.size = chance(50) ? 0 : kPage;
            } else if (uroll < 84) {
                d.uaddr = 0xffff888000000000ULL + kPage * rnd(1024);  // a kernel address
                d.size = kPage;
            } else if (uroll < 88) {
                d.uaddr = ~0ULL - rnd(3 * kPage);  // wraps
                d.size = 1 + rnd(2 * kPage);
            } else if (uroll < 91) {
                d.uaddr = base;
                d.size = chance(50) ? 0 : guest::kGiB + 1 + rnd(kPage);
            } else if (uroll < 94 && nr <= 1) {
                // a dma-buf's CPU mapping as user memory
                const auto& h = handles_[6 + rnd(7)];
                if (h.desc && h.desc->buf) {
                    d.uaddr = reinterpret_cast<std::uintptr_t>(h.desc->buf->map);
                    d.size = h.desc->buf->size;
                } else {
                    d.uaddr = base;
                    d.size = kPage;
                }
            } else {
                d.uaddr = gen_() & 0x00007fffffffffffULL;  // random user address
                d.size = 1 + rnd(64 * kKiB);
            }
        } else {
            d.type = static_cast<std::uint32_t>(chance(50) ? 3 + rnd(5) : gen_());
            d.dmabuf_fd = pick_fd(true, false);
            d.target_fd = pick_fd(false, true);
        }
        // mutations
        if (chance(3)) {
            d.flags = 1U << rnd(32);
        }
        if (chance(3)) {
            d.__resv[rnd(6)] = 1ULL << rnd(64);
        }
        if (d.type == IO_REGBUF_TYPE_DMABUF && chance(3)) {
            (chance(50) ? d.uaddr : d.size) = 1 + rnd(1ULL << 40);
        }
        if (d.type == IO_REGBUF_TYPE_EMPTY && chance(3)) {
            (chance(50) ? d.uaddr : d.size) = 1 + rnd(kMiB);
        }
        if (d.type != IO_REGBUF_TYPE_DMABUF && chance(20)) {
            (chance(50) ? d.dmabuf_fd : d.target_fd) = pick_any_fd();  // EINVAL unless fd 0
        }
        descs[k] = d;
        if (classic) {
            // old format: an iovec in the user region, or an empty one
            if (chance(30)) {
                iovs[k] = {nullptr, 0};
            } else {
                const std::size_t off = kPage * rnd(kUserSize / kPage);
                iovs[k] = {user_ + off, 1 + rnd(kUserSize - off)};
            }
        }
    }
    for (unsigned k = 0; k < valid_n; k++) {
        if (classic) {
            std::memcpy(data + k * esz, &iovs[k], esz);
        } else {
            std::memcpy(data + k * esz, &descs[k], esz);
        }
    }
    // tags
    std::array<std::uint64_t, 8> tag_arr{};
    const std::uint64_t tgroll = rnd(100);
    const std::uint64_t* tags_ptr = nullptr;
    bool tags_bad = false;
    if (tgroll < 25) {
        for (unsigned k = 0; k < n; k++) {
            tag_arr[k] = chance(80) ? (kTagBit | next_tag_++) : 0;
        }
        tags_ptr = tag_arr.data();
    } else if (tgroll < 26) {
        tags_ptr = reinterpret_cast<const std::uint64_t*>(arena_ + kPage);  // PROT_NONE
        tags_bad = true;
    }
    io_uring_rsrc_update2 up{};
    up.offset = offset;
    up.resv = flags;
    up.nr = nr;
    up.resv2 = resv2;
    up.tags = reinterpret_cast<std::uintptr_t>(tags_ptr);
    const std::uint64_t droll = rnd(200);
    bool data_bad = false;
    if (droll == 0) {
        up.data = 0;
        data_bad = true;
    } else if (droll == 1) {
        up.data = reinterpret_cast<std::uintptr_t>(arena_ + kPage);
        data_bad = true;
    } else if (droll == 2) {
        up.data = 0xffff888000000000ULL;
        data_bad = true;
    } else {
        up.data = reinterpret_cast<std::uintptr_t>(data);
    }

    // the oracle
    std::vector<Slot> new_slots(n);
    Expect e;
    bool uncertain = false;
    // NOLINTBEGIN(bugprone-branch-clone): the kernel's order of checks, equal errnos included
    if (argsz != sizeof(up) || nr == 0 || resv2 != 0 ||
        (flags & ~IORING_RSRC_UPDATE_EXTENDED) != 0) {
        e = exactly(-EINVAL);
    } else if (static_cast<std::uint64_t>(offset) + nr > UINT32_MAX) {
        e = exactly(-EOVERFLOW);
    } else if (bare) {
        e = exactly(-ENXIO);
    } else if (offset + nr > kSlots) {
        e = exactly(-EINVAL);
    } else {
        int done = 0;
        int err = 0;
        for (unsigned k = 0; k < n; k++) {
            if (data_bad || k >= valid_n) {
                err = -EFAULT;
                break;
            }
            const std::uint64_t tag = tags_ptr != nullptr && !tags_bad ? tag_arr[k] : 0;
            int r = 0;
            if (classic) {
                // order: iovec, tag, validate, empty+tag, pin
                if (tags_bad) {
                    r = -EFAULT;
                } else {
                    const auto u = reinterpret_cast<std::uintptr_t>(iovs[k].iov_base);
                    bool unc = false;
                    r = predict_uaddr(u, iovs[k].iov_len, &unc, &new_slots[k]);
                    new_slots[k].tag = tag;
                    if (r == 0 && u == 0 && tag != 0) {
                        r = -EINVAL;
                    }
                }
            } else if (tags_bad) {
                r = -EFAULT;
            } else {
                r = predict_desc(descs[k], tag, &uncertain, &new_slots[k]);
            }
            if (r < 0) {
                err = r;
                break;
            }
            done++;
        }
        e = exactly(done > 0 ? done : err);
        if (uncertain) {
            e = one_of({-EFAULT}, true);
        }
    }
    // NOLINTEND(bugprone-branch-clone)

    const int ring_fd = bare ? bare_ring_->fd() : ring_->fd();
    const long res = io_uring_register_raw(ring_fd, IORING_REGISTER_BUFFERS_UPDATE, &up, argsz);
    const int ires = static_cast<int>(res);
    std::string what = "register offset " + std::to_string(offset) + " nr " + std::to_string(nr) +
                       " flags " + std::to_string(flags) + (classic ? " (iovec)" : "");
    if (!classic && n >= 1) {
        const auto& d = descs[0];
        what += " desc0{type " + std::to_string(d.type) + " flags " + std::to_string(d.flags) +
                " size " + std::to_string(d.size) + " uaddr " + std::to_string(d.uaddr) +
                " dmabuf_fd " + std::to_string(d.dmabuf_fd) + " target_fd " +
                std::to_string(d.target_fd) + "}";
    }
    note(what, e, ires);
    std::string key = "register ";
    if (bare) {
        key += "(no table) ";
    }
    if (!classic && n >= 1 && ires < 0 && nr == 1) {
        key += descs[0].type == IO_REGBUF_TYPE_DMABUF  ? "dmabuf "
               : descs[0].type == IO_REGBUF_TYPE_UADDR ? "uaddr "
               : descs[0].type == IO_REGBUF_TYPE_EMPTY ? "empty "
                                                       : "bad-type ";
    }
    count(key + res_name(ires));
    // apply what the kernel did (as predicted, or as it answered where the input did not say)
    if (ires > 0 && !bare) {
        for (int k = 0; k < ires && k < static_cast<int>(n); k++) {
            Slot s = new_slots[k];
            if (s.type == Slot::kUser && s.uaddr == 0) {
                s.type = Slot::kEmpty;
            }
            place_slot(offset + k, std::move(s));
        }
    }
    drain_cqes();
}

// ---------------------------------------------------------------------------------------------
// I/O

Expect Fuzzer::predict_rw(bool write, unsigned slot, std::uint64_t addr, std::uint32_t len,
                          std::uint64_t pos, int fd, bool fixed_file, unsigned sqe_flags,
                          unsigned rw_flags, std::shared_ptr<Desc>* file_out,
                          std::int64_t* eff_pos) const {
    if ((sqe_flags & IOSQE_BUFFER_SELECT) != 0) {
        return exactly(-EOPNOTSUPP);  // READ_FIXED/WRITE_FIXED select no buffers
    }
    // the file: looked up (at issue) before the buffer
    const std::shared_ptr<Desc> f =
        fixed_file ? (fd >= 0 && fd < static_cast<int>(kFixedFiles) ? fixed_.at(fd) : nullptr)
                   : lookup(fd);
    const bool bad_file = !f || f->kind == Kind::kNvmePath;
    if (bad_file) {
        return exactly(-EBADF);
    }
    // issue: the slot and the range in it
    if (slot >= kSlots) {
        return exactly(-EFAULT);
    }
    const Slot& s = slots_.at(slot);
    std::uint64_t end = 0;
    const bool wraps = __builtin_add_overflow(addr, static_cast<std::uint64_t>(len), &end);
    if (s.type == Slot::kEmpty) {
        return exactly(-EFAULT);
    }
    if (s.type == Slot::kDma && (wraps || end > s.buf->size)) {
        return exactly(-EFAULT);
    }
    if (s.type == Slot::kUser && (wraps || addr < s.uaddr || end > s.uaddr + s.size)) {
        return exactly(-EFAULT);
    }
    if (bad_file) {
        return exactly(-EBADF);
    }
    *file_out = f;
    const int acc = f->accmode;
    if ((write && acc == O_RDONLY) || (!write && acc == O_WRONLY)) {
        return exactly(-EBADF);
    }
    const bool dma = s.type == Slot::kDma;
    if (dma && f != s.target) {
        return exactly(-EBADF);
    }
    if (!dma && (f->kind != Kind::kNvme || s.user_unknown)) {
        // user memory on a file that is not the device: outside the contract
        return one_of(kGeneric, true);
    }
    if ((rw_flags & ~static_cast<unsigned>(RWF_SUPPORTED)) != 0) {
        return exactly(-EOPNOTSUPP);
    }
    if ((rw_flags & RWF_HIPRI) != 0) {
        return exactly(-EINVAL);  // not an IOPOLL ring
    }
    auto p = static_cast<std::int64_t>(pos);
    if (p == -1) {
        // the file position; io_uring never advances it for asynchronous direct I/O on a block
        // device (kiocb_done() sees -EIOCBQUEUED), so it stays where lseek() put it
        p = f->fpos;
    }
    if (p < 0 || p > INT64_MAX - static_cast<std::int64_t>(len)) {
        return exactly(-EINVAL);  // rw_verify_area
    }
    *eff_pos = p;
    const auto size = static_cast<std::int64_t>(dev_size_);
    std::uint64_t eff = len;
    if (write) {
        if (len == 0) {
            return exactly(0);
        }
        if (p >= size) {
            return exactly(-ENOSPC);
        }
    } else if (p >= size) {
        return exactly(0);
    }
    eff = std::min<std::uint64_t>(len, static_cast<std::uint64_t>(size - p));
    if (eff == 0) {
        return exactly(0);
    }
    const bool nowait = (rw_flags & RWF_NOWAIT) != 0;
    if (!f->direct) {
        if (dma) {
            // O_DIRECT cleared after registration; io_uring turns a NOWAIT EOPNOTSUPP into EAGAIN
            return nowait ? one_of({-EOPNOTSUPP, -EAGAIN}, false) : exactly(-EOPNOTSUPP);
        }
        return one_of(kGeneric, true);  // buffered user I/O: not what we test
    }
    const std::uint64_t addr_mask = dma_align_;
    if ((static_cast<std::uint64_t>(p) & (lbs_ - 1)) != 0 || (eff & (lbs_ - 1)) != 0) {
        // with NOWAIT, cached pages in the range (the buffered fds) answer EAGAIN first
        return nowait ? one_of({-EINVAL, -EAGAIN}, false) : exactly(-EINVAL);
    }
    if (!dma && (addr & (lbs_ - 1)) != 0) {
        // block device direct I/O bounces some user memory that is not aligned for DMA
        // (small I/O) and refuses the rest: both are outside the dma-buf contract
        return nowait ? one_of({-EINVAL, -EAGAIN}, true) : one_of({-EINVAL}, true);
    }
    if ((addr & addr_mask) != 0) {
        return nowait ? one_of({-EINVAL, -EAGAIN}, false) : exactly(-EINVAL);
    }
    if (!dma && (addr & (lbs_ - 1)) != 0) {
        // user memory: each page's piece must be a multiple of the block size as well
        return nowait ? one_of({-EINVAL, -EAGAIN}, true) : one_of({-EINVAL}, true);
    }
    if (nowait) {
        return one_of({-EAGAIN}, true);  // a split or a busy tag: EAGAIN is the contract
    }
    return exactly(static_cast<int>(eff));
}

void Fuzzer::call_io() {
    calls_++;
    bool write = chance(50);
    // the slot
    auto slot = static_cast<unsigned>(rnd(kSlots));
    if (chance(3)) {
        slot = chance(50) ? kSlots + static_cast<unsigned>(rnd(4)) : 0xffffU;
    } else if (chance(60)) {
        // favour dma-buf slots
        std::vector<unsigned> dma;
        for (unsigned i = 0; i < kSlots; i++) {
            if (slots_.at(i).type == Slot::kDma) {
                dma.push_back(i);
            }
        }
        if (!dma.empty()) {
            slot = dma[rnd(dma.size())];
        }
    }
    const Slot* s = slot < kSlots ? &slots_.at(slot) : nullptr;
    const std::uint64_t span = s == nullptr             ? 64 * kKiB
                               : s->type == Slot::kDma  ? s->buf->size
                               : s->type == Slot::kUser ? s->size
                                                        : 64 * kKiB;
    const std::uint64_t base = s != nullptr && s->type == Slot::kUser ? s->uaddr : 0;
    // length
    std::uint32_t len = 0;
    const std::uint64_t lroll = rnd(100);
    const std::uint64_t maxlen = std::min<std::uint64_t>(span, kMaxIo);
    if (lroll < 82) {
        // mostly small (data movement is what costs under TCG), sometimes up to 256 KiB (splits)
        const std::uint64_t cap = chance(75) ? std::min<std::uint64_t>(maxlen, 32 * kKiB) : maxlen;
        len = static_cast<std::uint32_t>(lbs_ * (1 + rnd(std::max<std::uint64_t>(cap / lbs_, 1))));
        if (chance(40)) {
            len = static_cast<std::uint32_t>(std::min<std::uint64_t>(
                4 * kKiB * (1 + rnd(4)), std::max<std::uint64_t>(maxlen, lbs_)));
        }
    } else if (lroll < 86) {
        len = 0;
    } else if (lroll < 92) {
        len = static_cast<std::uint32_t>(1 + rnd(maxlen));
    } else if (lroll < 97) {
        len = static_cast<std::uint32_t>(span + lbs_ * (1 + rnd(8)));
    } else {
        len = static_cast<std::uint32_t>(gen_());
    }
    // offset into the buffer
    std::uint64_t addr = 0;
    const std::uint64_t aroll = rnd(100);
    const std::uint64_t room = span > len ? span - len : 0;
    if (aroll < 60) {
        addr = base + kPage * rnd(room / kPage + 1);
    } else if (aroll < 80) {
        addr = base + lbs_ * rnd(room / lbs_ + 1);
    } else if (aroll < 86) {
        addr = base + 4 * rnd(room / 4 + 1);
    } else if (aroll < 91) {
        addr = base + rnd(room + 1);
    } else if (aroll < 96) {
        addr = base + span - (chance(50) ? 0 : lbs_) + kPage * rnd(3);
    } else {
        addr = ~0ULL - rnd(2 * static_cast<std::uint64_t>(len) + kPage);
    }
    if (addr + len > base + span && s != nullptr && s->type == Slot::kUser && aroll < 91) {
        addr = base;  // user slots: keep the common case inside
    }
    // device position
    std::uint64_t pos = 0;
    const std::uint64_t proll = rnd(100);
    const std::uint64_t blocks_a =
        (kWindowASize - std::min<std::uint64_t>(len, kWindowASize)) / lbs_;
    if (proll < 74) {
        pos = kWindowA + lbs_ * rnd(blocks_a + 1);
    } else if (proll < 80) {
        pos = dev_size_ - kWindowBSize +
              lbs_ * rnd((kWindowBSize - std::min<std::uint64_t>(len, kWindowBSize)) / lbs_ + 1);
    } else if (proll < 85) {
        pos = dev_size_ - lbs_ * (1 + rnd(std::max<std::uint64_t>(len / lbs_, 1)));  // crosses end
    } else if (proll < 88) {
        pos = dev_size_ + lbs_ * rnd(100);
    } else if (proll < 92) {
        pos = kWindowA + 1 + rnd(blocks_a * lbs_);
    } else if (proll < 95) {
        pos = ~0ULL;  // -1: the file position
    } else if (proll < 98) {
        static constexpr std::array<std::uint64_t, 4> kNeg{
            ~0ULL - 511, 1ULL << 63, (1ULL << 63) - 512, ~0ULL - (1ULL << 32)};
        pos = kNeg[rnd(kNeg.size())];
    } else {
        pos = gen_();
    }
    // the file: usually the slot's target, by fd or by fixed-file index
    int fd = -1;
    bool fixed_file = false;
    if (s != nullptr && s->type == Slot::kDma && chance(75)) {
        if (chance(25)) {
            for (unsigned i = 0; i < kFixedFiles; i++) {
                if (fixed_.at(i) == s->target) {
                    fd = static_cast<int>(i);
                    fixed_file = true;
                }
            }
        }
        if (!fixed_file) {
            for (const auto& h : handles_) {
                if (h.desc == s->target) {
                    fd = h.fd;
                }
            }
            if (fd < 0) {
                fd = pick_fd(false, true);
            }
        }
    } else if (chance(10)) {
        fixed_file = true;
        fd = static_cast<int>(rnd(kFixedFiles + 2));
    } else if (chance(60)) {
        fd = pick_fd(false, true);
    } else {
        fd = pick_any_fd();
    }
    // never write user memory through a buffered device fd (the page cache would hide it from
    // the O_DIRECT checks)
    const std::shared_ptr<Desc> fdesc =
        fixed_file ? (fd < static_cast<int>(kFixedFiles) ? fixed_.at(fd) : nullptr) : lookup(fd);
    if (write && s != nullptr && s->type == Slot::kUser && fdesc && fdesc->kind == Kind::kNvme &&
        !fdesc->direct) {
        write = false;
    }
    // A user slot over a dma-buf's CPU mapping (the test exporter's can be pinned) holds the pages
    // of the time of registration; after a MOVE they are not the buffer's any more, so what such
    // a slot writes cannot be modelled: only read through it.
    if (write && s != nullptr && s->type == Slot::kUser && s->user_unknown) {
        write = false;
    }
    if (fdesc && s != nullptr && s->type != Slot::kDma && pos == ~0ULL) {
        pos = kWindowA;  // the file position is tracked for dma-buf I/O only
    }
    // flags
    unsigned sqe_flags = fixed_file ? IOSQE_FIXED_FILE : 0;
    const std::uint64_t sroll = rnd(100);
    if (sroll < 10) {
        sqe_flags |= IOSQE_ASYNC;
    } else if (sroll < 11) {
        sqe_flags |= IOSQE_BUFFER_SELECT;
    } else if (sroll < 12) {
        sqe_flags |= 1U << 7;  // no such flag
    }
    unsigned rw_flags = 0;
    const std::uint64_t rroll = rnd(100);
    if (rroll < 4) {
        rw_flags = RWF_NOWAIT;
    } else if (rroll < 5) {
        rw_flags = RWF_HIPRI;
    } else if (rroll < 7) {
        rw_flags = write ? RWF_DSYNC : 0;
    } else if (rroll < 8) {
        rw_flags = 1U << 30;
    }
    // non-device files can block: never wait on them
    const std::shared_ptr<Desc> fd2 =
        fixed_file ? (fd >= 0 && fd < static_cast<int>(kFixedFiles) ? fixed_.at(fd) : nullptr)
                   : lookup(fd);
    if (fd2 && fd2->kind != Kind::kNvme && fd2->kind != Kind::kRegular &&
        fd2->kind != Kind::kRegularDirect && fd2->kind != Kind::kMemfd) {
        rw_flags |= RWF_NOWAIT;
    }

    Expect e;
    std::shared_ptr<Desc> file;
    std::int64_t eff_pos = 0;
    if ((sqe_flags & (1U << 7)) != 0) {
        e = exactly(-EINVAL);
    } else {
        e = predict_rw(write, slot, addr, len, pos, fd, fixed_file, sqe_flags, rw_flags, &file,
                       &eff_pos);
    }

    io_uring_sqe sqe{};
    sqe.opcode = write ? IORING_OP_WRITE_FIXED : IORING_OP_READ_FIXED;
    sqe.fd = fd;
    sqe.addr = addr;
    sqe.len = len;
    sqe.off = pos;
    sqe.buf_index = static_cast<std::uint16_t>(slot);
    sqe.flags = static_cast<std::uint8_t>(sqe_flags);
    sqe.rw_flags = static_cast<int>(rw_flags);
    unsigned cflags = 0;
    const int res = submit(sqe, &cflags);

    const bool dma = s != nullptr && s->type == Slot::kDma;
    std::string what =
        std::string(write ? "WRITE_FIXED" : "READ_FIXED") + " slot " + std::to_string(slot) + " (" +
        (s == nullptr             ? "out of range"
         : s->type == Slot::kDma  ? "dma-buf"
         : s->type == Slot::kUser ? "user"
                                  : "empty") +
        ") addr " + std::to_string(addr) + " len " + std::to_string(len) + " pos " +
        std::to_string(pos) + " fd " + std::to_string(fd) + (fixed_file ? " (fixed)" : "") +
        " sqe_flags " + std::to_string(sqe_flags) + " rw_flags " + std::to_string(rw_flags);
    note(what, e, res);
    count(std::string(dma ? "io dmabuf " : "io other-slot ") + (write ? "write " : "read ") +
          res_name(res));

    // success: the data really moved
    if (res > 0 && file && file->kind == Kind::kNvme && file->direct &&
        (dma || (s != nullptr && s->type == Slot::kUser && (write || !s->user_unknown)))) {
        const std::uint8_t* mem =
            dma ? s->buf->map + addr : reinterpret_cast<const std::uint8_t*>(addr);  // NOLINT
        if (write) {
            shadow_write(static_cast<std::uint64_t>(eff_pos), mem, static_cast<std::size_t>(res));
        } else if (!shadow_check(static_cast<std::uint64_t>(eff_pos), mem,
                                 static_cast<std::size_t>(res))) {
            mismatches_++;
            ADD_FAILURE() << "call " << calls_ << ": " << what
                          << ": the data read differs from what the device holds; "
                          << explain(static_cast<std::uint64_t>(eff_pos), mem,
                                     static_cast<std::size_t>(res));
        }
    }
}

// Opcodes other than READ_FIXED/WRITE_FIXED naming buffer slots.
void Fuzzer::call_other() {
    calls_++;
    const unsigned slot = chance(90) ? static_cast<unsigned>(rnd(kSlots)) : 0xffffU;
    const Slot* s = slot < kSlots ? &slots_.at(slot) : nullptr;
    io_uring_sqe sqe{};
    sqe.buf_index = static_cast<std::uint16_t>(slot);
    Expect e;
    std::string what;
    const std::uint64_t roll = rnd(100);
    std::uint64_t dev_pos = 0;
    std::uint8_t* mem = nullptr;
    bool is_write = false;
    if (roll < 10) {
        sqe.opcode = kBadOpcode;
        e = exactly(-EINVAL);
        what = "opcode " + std::to_string(kBadOpcode);
    } else if (roll < 30) {
        sqe.opcode = IORING_OP_NOP;
        e = exactly(0);
        what = "NOP";
    } else if (roll < 75 || !udp_ok_) {
        // READ/WRITE/READV/WRITEV take no fixed buffer: a buf_index naming a dma-buf slot is
        // ignored. Block-aligned user memory at a block-aligned position in window A.
        is_write = chance(50);
        const bool vec = chance(50);
        const auto len = static_cast<std::uint32_t>(4 * kKiB * (1 + rnd(16)));
        mem = user_ + kPage * rnd((kUserSize - len) / kPage + 1);
        dev_pos = kWindowA + lbs_ * rnd((kWindowASize - len) / lbs_ + 1);
        auto* iov = reinterpret_cast<iovec*>(arena_);
        iov[0] = {mem, len};
        sqe.fd = handles_[0].fd;
        if (vec) {
            sqe.opcode = is_write ? IORING_OP_WRITEV : IORING_OP_READV;
            sqe.addr = reinterpret_cast<std::uintptr_t>(iov);
            sqe.len = 1;
        } else {
            sqe.opcode = is_write ? IORING_OP_WRITE : IORING_OP_READ;
            sqe.addr = reinterpret_cast<std::uintptr_t>(mem);
            sqe.len = len;
        }
        sqe.off = dev_pos;
        const bool ok = handles_[0].desc && handles_[0].desc->direct;
        if (!ok && is_write) {
            sqe.opcode = vec ? IORING_OP_READV : IORING_OP_READ;  // no buffered device writes
            is_write = false;
        }
        e = ok ? exactly(static_cast<int>(len)) : one_of(kGeneric, true);
        if (!ok) {
            mem = nullptr;
        }
        what = std::string(vec ? (is_write ? "WRITEV" : "READV") : (is_write ? "WRITE" : "READ")) +
               " buf_index " + std::to_string(slot) + " pos " + std::to_string(dev_pos);
    } else {
        // SEND_ZC with a fixed buffer: EOPNOTSUPP for a dma-buf slot
        int fd = -1;
        for (const auto& h : handles_) {
            if (h.kind == Kind::kUdpSocket) {
                fd = h.fd;
            }
        }
        const std::uint64_t span = s != nullptr && s->type == Slot::kUser ? s->size : 4096;
        const std::uint64_t base = s != nullptr && s->type == Slot::kUser ? s->uaddr : 0;
        const auto len = static_cast<std::uint32_t>(1 + rnd(std::min<std::uint64_t>(span, 8192)));
        io_uring_prep_send_zc_fixed(&sqe, fd, reinterpret_cast<void*>(base),  // NOLINT
                                    len, MSG_DONTWAIT, 0, slot);
        sqe.buf_index = static_cast<std::uint16_t>(slot);
        // issue checks the socket, then imports the buffer (the index first)
        // NOLINTBEGIN(bugprone-branch-clone): the kernel's order of checks
        if (fd < 0) {
            e = exactly(-EBADF);
        } else if (s == nullptr) {
            e = exactly(-EFAULT);
        } else if (s->type == Slot::kEmpty) {
            e = exactly(-EFAULT);
        } else if (s->type == Slot::kDma) {
            e = exactly(-EOPNOTSUPP);
        } else {
            e = s->user_unknown ? one_of(kGeneric, true) : one_of({-EAGAIN}, true);
        }
        // NOLINTEND(bugprone-branch-clone)
        what = "SEND_ZC fixed slot " + std::to_string(slot) + " len " + std::to_string(len);
    }
    unsigned cflags = 0;
    const int res = submit(sqe, &cflags);
    note(what + " (slot " +
             (s == nullptr             ? "out of range"
              : s->type == Slot::kDma  ? "dma-buf"
              : s->type == Slot::kUser ? "user"
                                       : "empty") +
             ")",
         e, res);
    const std::string op = what.substr(0, what.find(' '));
    count("other " + op + (s != nullptr && s->type == Slot::kDma ? " on dmabuf slot " : " ") +
          res_name(res));
    if (res > 0 && mem != nullptr) {
        if (is_write) {
            shadow_write(dev_pos, mem, static_cast<std::size_t>(res));
        } else if (!shadow_check(dev_pos, mem, static_cast<std::size_t>(res))) {
            mismatches_++;
            ADD_FAILURE() << "call " << calls_ << ": " << what << ": read data differs; "
                          << explain(dev_pos, mem, static_cast<std::size_t>(res));
        }
    }
    if (udp_ok_) {
        std::array<char, 9000> sink{};
        while (::recv(udp_rx_.get(), sink.data(), sink.size(), MSG_DONTWAIT) > 0) {
        }
    }
}

// Fd churn, O_DIRECT toggles, exporter moves, fixed-file updates (not counted as calls).
void Fuzzer::maintenance() {
    const std::uint64_t roll = rnd(100);
    if (roll < 45) {
        Handle& h = handles_[rnd(handles_.size())];
        close_handle(h);
        open_handle(h);  // usually the same fd number: a reused fd
        reopens_++;
    } else if (roll < 55) {
        Handle& h = handles_[1 + rnd(handles_.size() - 1)];
        close_handle(h);  // stays closed until a later reopen
        reopens_++;
    } else if (roll < 58) {
        for (auto& h : handles_) {
            if (h.fd < 0) {
                open_handle(h);
            }
        }
    } else if (roll < 72) {
        Handle& h = handles_[rnd(5)];
        if (h.fd >= 0 && h.desc) {
            const int fl = ::fcntl(h.fd, F_GETFL);
            if (::fcntl(h.fd, F_SETFL, fl ^ O_DIRECT) == 0) {
                h.desc->direct = !h.desc->direct;
                toggles_++;
            }
        }
    } else if (roll < 86) {
        for (auto& h : handles_) {
            if (h.kind == Kind::kDmaBuf && h.exporter == Exporter::kTest && h.fd >= 0 &&
                chance(50)) {
                Fd dev(::open("/dev/dmabuf_test", O_RDWR | O_CLOEXEC));
                dmabuf_test_move mv{};
                mv.fd = h.fd;
                if (::ioctl(dev.get(), DMABUF_TEST_IOCTL_MOVE, &mv) == 0) {
                    moves_++;
                } else {
                    ADD_FAILURE() << "MOVE: " << std::strerror(errno);
                }
            }
        }
    } else {
        const auto i = static_cast<unsigned>(rnd(kFixedFiles));
        const int fd = chance(80) ? pick_fd(false, true) : pick_any_fd();
        auto d = lookup(fd);
        const int ret = io_uring_register_files_update(ring_->get(), i, &fd, 1);
        if (ret == 1 && fd != IORING_REGISTER_FILES_SKIP) {
            fixed_.at(i) = d;  // fd -1 clears the entry
        } else if (ret < 0) {
            // io_uring drops the old file before it looks at the new fd: the entry is empty
            fixed_.at(i) = nullptr;
            if (d && d->kind != Kind::kRingFd && d->kind != Kind::kNvmePath) {
                ADD_FAILURE() << "files update with fd " << fd << ": " << res_name(ret);
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// completions

int Fuzzer::submit(io_uring_sqe proto, unsigned* cqe_flags) {
    io_uring* r = ring_->get();
    io_uring_sqe* sqe = io_uring_get_sqe(r);
    if (sqe == nullptr) {
        ADD_FAILURE() << "no SQE";
        return INT_MIN;
    }
    const std::uint64_t ud = next_user_data_++;
    proto.user_data = ud;
    *sqe = proto;
    if (int ret = io_uring_submit(r); ret != 1) {
        ADD_FAILURE() << "io_uring_submit: " << ret;
        return INT_MIN;
    }
    int res = INT_MIN;
    bool need_notif = false;
    bool have_res = false;
    while (!have_res || need_notif) {
        io_uring_cqe* cqe = nullptr;
        __kernel_timespec ts{60, 0};
        const int ret = io_uring_wait_cqe_timeout(r, &cqe, &ts);
        if (ret != 0) {
            ADD_FAILURE() << "call " << calls_ << ": no completion within 60 s (" << ret
                          << "): a hang";
            return INT_MIN;
        }
        const std::uint64_t cud = cqe->user_data;
        const unsigned fl = cqe->flags;
        const int cres = cqe->res;
        io_uring_cqe_seen(r, cqe);
        if ((cud & kTagBit) != 0) {
            tags_seen_++;
            continue;
        }
        if (cud != ud) {
            ADD_FAILURE() << "unexpected completion " << cud;
            continue;
        }
        if ((fl & IORING_CQE_F_NOTIF) != 0) {
            need_notif = false;
            continue;
        }
        res = cres;
        *cqe_flags = fl;
        have_res = true;
        need_notif = (fl & IORING_CQE_F_MORE) != 0;
    }
    return res;
}

void Fuzzer::drain_cqes() {
    io_uring_cqe* cqe = nullptr;
    while (io_uring_peek_cqe(ring_->get(), &cqe) == 0) {
        if ((cqe->user_data & kTagBit) != 0) {
            tags_seen_++;
        } else {
            ADD_FAILURE() << "stray completion " << cqe->user_data;
        }
        io_uring_cqe_seen(ring_->get(), cqe);
    }
}

void Fuzzer::note(const std::string& what, const Expect& e, int res) {
    last_what_ = what + " -> " + res_name(res) + " (" + std::to_string(res) + ")";
    if (e.matches(res)) {
        return;
    }
    mismatches_++;
    if (mismatches_ <= 25) {
        ADD_FAILURE() << "call " << calls_ << ": " << what << ": got " << res_name(res) << " ("
                      << res << "), expected " << e.str();
    }
}

// ---------------------------------------------------------------------------------------------
// the device model

void Fuzzer::shadow_write(std::uint64_t pos, const std::uint8_t* src, std::size_t n) {
    auto apply = [&](std::uint64_t wbase, std::vector<std::uint8_t>& w) {
        const std::uint64_t lo = std::max(pos, wbase);
        const std::uint64_t hi = std::min(pos + n, wbase + w.size());
        if (lo < hi) {
            std::memcpy(w.data() + (lo - wbase), src + (lo - pos), hi - lo);
        }
    };
    apply(kWindowA, shadow_a_);
    apply(dev_size_ - kWindowBSize, shadow_b_);
}

bool Fuzzer::shadow_check(std::uint64_t pos, const std::uint8_t* data, std::size_t n) {
    bool ok = true;
    auto check = [&](std::uint64_t wbase, const std::vector<std::uint8_t>& w) {
        const std::uint64_t lo = std::max(pos, wbase);
        const std::uint64_t hi = std::min(pos + n, wbase + w.size());
        if (lo < hi) {
            ok = ok && std::memcmp(w.data() + (lo - wbase), data + (lo - pos), hi - lo) == 0;
            verified_bytes_ += hi - lo;
        }
    };
    check(kWindowA, shadow_a_);
    check(dev_size_ - kWindowBSize, shadow_b_);
    return ok;
}

// After a read that did not match the model: what the device holds now, through the ordinary path.
std::string Fuzzer::explain(std::uint64_t pos, const std::uint8_t* data, std::size_t n) {
    if (pos < kWindowA || pos + n > kWindowA + kWindowASize) {
        return "(outside window A)";
    }
    guest::Memory m((n + kPage - 1) / kPage * kPage);
    ref_->read(m.data(), m.size(), pos);
    std::size_t first = 0;
    while (first < n && data[first] == shadow_a_[pos - kWindowA + first]) {
        first++;
    }
    const bool dev_model = std::memcmp(m.data(), shadow_a_.data() + (pos - kWindowA), n) == 0;
    const bool dev_read = std::memcmp(m.data(), data, n) == 0;
    return "first differing byte " + std::to_string(first) + " of " + std::to_string(n) +
           "; the device now matches the model: " + (dev_model ? "yes" : "no") +
           ", matches the data read: " + (dev_read ? "yes" : "no");
}

void Fuzzer::verify_device() {
    guest::Memory m(kWindowASize);
    ref_->read(m.data(), kWindowASize, kWindowA);
    EXPECT_EQ(std::memcmp(m.data(), shadow_a_.data(), kWindowASize), 0)
        << "device window A differs from the model after " << calls_ << " calls";
    ref_->read(m.data(), kWindowBSize, dev_size_ - kWindowBSize);
    EXPECT_EQ(std::memcmp(m.data(), shadow_b_.data(), kWindowBSize), 0)
        << "device window B differs from the model after " << calls_ << " calls";
    verified_bytes_ += kWindowASize + kWindowBSize;
}

void Fuzzer::run(std::uint64_t calls) {
    const auto t0 = std::chrono::steady_clock::now();
    while (calls_ < calls && !testing::Test::HasFatalFailure()) {
        const std::uint64_t roll = rnd(100);
        const auto c0 = std::chrono::steady_clock::now();
        if (roll < 38) {
            call_register();
        } else if (roll < 90) {
            call_io();
        } else {
            call_other();
        }
        seconds_[last_key_] +=
            std::chrono::duration<double>(std::chrono::steady_clock::now() - c0).count();
        if (chance(3)) {
            maintenance();
        }
        if (calls_ <= paranoid_ && calls_ >= paranoid_from_) {
            // debugging aid: the device against the model after every call
            guest::Memory m(kWindowASize);
            ref_->read(m.data(), kWindowASize, kWindowA);
            if (std::memcmp(m.data(), shadow_a_.data(), kWindowASize) != 0) {
                std::size_t i = 0;
                while (m.data()[i] == shadow_a_[i]) {
                    i++;
                }
                FAIL() << "call " << calls_ << ": " << last_what_
                       << ": the device diverges from the model at byte " << i << " of window A";
            }
        }
        if (calls_ % 25000 == 0) {
            verify_device();
            const double s =
                std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
            std::printf("[          ] %llu calls, %.1f s\n",
                        static_cast<unsigned long long>(calls_), s);
            std::fflush(stdout);
        }
        if (mismatches_ > 200) {
            FAIL() << "too many mismatches; stopping";
        }
    }
}

void Fuzzer::finish() {
    // every slot cleared: tagged buffers post their tags once released
    for (unsigned i = 0; i < kSlots; i++) {
        io_uring_regbuf_desc d{};
        io_uring_rsrc_update2 up{};
        up.offset = i;
        up.resv = IORING_RSRC_UPDATE_EXTENDED;
        up.data = reinterpret_cast<std::uintptr_t>(&d);
        up.nr = 1;
        ASSERT_EQ(
            io_uring_register_raw(ring_->fd(), IORING_REGISTER_BUFFERS_UPDATE, &up, sizeof(up)), 1);
        Slot empty;
        place_slot(i, empty);
    }
    io_uring_sqe nop{};
    nop.opcode = IORING_OP_NOP;
    unsigned fl = 0;
    EXPECT_EQ(submit(nop, &fl), 0);
    drain_cqes();
    verify_device();
    std::printf("[          ] outcomes (count, seconds spent):\n");
    for (const auto& [k, v] : outcomes_) {
        std::printf("[          ]   %8llu %7.2f s  %s\n", static_cast<unsigned long long>(v),
                    seconds_[k], k.c_str());
    }
    std::printf(
        "[          ] calls %llu, mismatches %llu, bytes verified %llu, fd reopen/close %llu, "
        "O_DIRECT toggles %llu, exporter moves %llu, tags posted %llu of %llu\n",
        static_cast<unsigned long long>(calls_), static_cast<unsigned long long>(mismatches_),
        static_cast<unsigned long long>(verified_bytes_), static_cast<unsigned long long>(reopens_),
        static_cast<unsigned long long>(toggles_), static_cast<unsigned long long>(moves_),
        static_cast<unsigned long long>(tags_seen_),
        static_cast<unsigned long long>(tags_expected_));
    EXPECT_EQ(mismatches_, 0U);
    EXPECT_EQ(tags_seen_, tags_expected_) << "tag completions of released buffers";
}

TEST(Fuzz, UapiCallsGetDocumentedResults) {
    const auto now =
        static_cast<std::uint64_t>(std::chrono::system_clock::now().time_since_epoch().count());
    const std::uint64_t seed = env_u64("DMABUFIO_FUZZ_SEED", now);
    const std::uint64_t calls = env_u64("DMABUFIO_FUZZ_CALLS", 100000);
    std::printf("[          ] DMABUFIO_FUZZ_SEED=%llu DMABUFIO_FUZZ_CALLS=%llu\n",
                static_cast<unsigned long long>(seed), static_cast<unsigned long long>(calls));
    std::fflush(stdout);
    RecordProperty("seed", std::to_string(seed));
    Fuzzer f(seed);
    f.setup();
    if (testing::Test::HasFatalFailure()) {
        return;
    }
    f.run(calls);
    f.finish();
    if (testing::Test::HasFailure()) {
        std::printf("[          ] reproduce with DMABUFIO_FUZZ_SEED=%llu\n",
                    static_cast<unsigned long long>(seed));
    }
}

// ---------------------------------------------------------------------------------------------
// limits: IORING_MAX_REG_BUFFERS

double seconds_since(std::chrono::steady_clock::time_point t0) {
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

TEST(FuzzLimits, TableOf16385IsRefused) {
    Ring ring(4);
    EXPECT_EQ(io_uring_register_buffers_sparse(ring.get(), 16385), -EINVAL);
    EXPECT_EQ(io_uring_register_buffers_sparse(ring.get(), 1U << 20), -EINVAL);
    EXPECT_EQ(io_uring_register_buffers_sparse(ring.get(), 16384), 0);
}

// Every slot of the largest table (IORING_MAX_REG_BUFFERS) holds a registration of one small
// dma-buf, filled in batches of 256 descriptors from the top; one past the end is EINVAL; I/O
// through slots at both ends works. DMABUFIO_LIMIT_SLOTS=N fills only the top N slots (a quick
// look). Releasing used to wait for an RCU grace period per slot (~30 ms under TCG, 8 minutes for
// the table) until the mapping's percpu_ref went atomic; now it is ~1.4 ms per slot.
TEST(FuzzLimits, AllSlotsHoldDmaBufs) {
    constexpr unsigned kMax = 16384;
    const auto fill_n =
        static_cast<unsigned>(std::min<std::uint64_t>(env_u64("DMABUFIO_LIMIT_SLOTS", kMax), kMax));
    BlockFile dev(guest::kDevice);
    Ring ring(8);
    BufferTable table(ring, kMax);
    DmaBuf buf = DmaBuf::allocate(Exporter::kUdmabuf, 4 * kKiB);
    guest::fill(buf.map().data(), buf.size(), 77);
    io_uring_regbuf_desc d{};
    d.type = IO_REGBUF_TYPE_DMABUF;
    d.dmabuf_fd = buf.fd();
    d.target_fd = dev.fd();
    // one update of many descriptors at a time, as an application would
    constexpr unsigned kBatch = 256;
    std::vector<io_uring_regbuf_desc> descs(kBatch, d);
    const auto t0 = std::chrono::steady_clock::now();
    unsigned filled = 0;
    int err = 0;
    while (filled < fill_n) {
        // the last slots first: the top of the table is where off-by-ones live
        io_uring_rsrc_update2 up{};
        up.nr = std::min(kBatch, fill_n - filled);
        up.offset = kMax - filled - up.nr;
        up.resv = IORING_RSRC_UPDATE_EXTENDED;
        up.data = reinterpret_cast<std::uintptr_t>(descs.data());
        const long r =
            io_uring_register_raw(ring.fd(), IORING_REGISTER_BUFFERS_UPDATE, &up, sizeof(up));
        if (r <= 0) {
            err = static_cast<int>(r);
            break;
        }
        filled += static_cast<unsigned>(r);
    }
    const double fill_s = seconds_since(t0);
    if (filled < fill_n) {
        // only memory may stop us, and it must say so
        EXPECT_EQ(err, -ENOMEM) << "stopped at " << filled << " slots";
    }
    EXPECT_EQ(filled, fill_n);
    const unsigned lowest = kMax - filled;
    // beyond the table
    EXPECT_EQ(table.update(kMax, d), -EINVAL);
    // every slot works: I/O through the first, the last and a few in between
    guest::Reference ref;
    const auto t1 = std::chrono::steady_clock::now();
    for (unsigned slot : {0U, 1U, kMax / 2, kMax - 2, kMax - 1}) {
        if (slot < lowest) {
            EXPECT_EQ(table.write(dev.fd(), slot, 0, 4096, 0), -EFAULT) << "empty slot " << slot;
            continue;
        }
        const std::uint64_t pos = 2 * guest::kGiB + std::uint64_t{slot} * 4 * kKiB;
        ASSERT_EQ(table.write(dev.fd(), slot, 0, 4096, pos), 4096) << "slot " << slot;
        guest::Memory back(4096);
        ref.read(back.data(), 4096, pos);
        EXPECT_EQ(std::memcmp(back.data(), buf.map().data(), 4096), 0) << "slot " << slot;
    }
    const double io_s = seconds_since(t1);
    // and all of them go away with the table
    const auto t2 = std::chrono::steady_clock::now();
    ring.unregister_buffers();
    const double unreg_s = seconds_since(t2);
    std::printf(
        "[          ] %u of %u slots hold one 4 KiB udmabuf: filled in %.2f s (%.0f us/slot), "
        "verified writes %.2f s, unregistered in %.2f s (%.1f ms/slot)\n",
        filled, kMax, fill_s, filled > 0 ? fill_s * 1e6 / filled : 0.0, io_s, unreg_s,
        filled > 0 ? unreg_s * 1e3 / filled : 0.0);
}

}  // namespace
