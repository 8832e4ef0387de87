#include "dmabufio/ring.hpp"

#include <algorithm>
#include <array>
#include <cerrno>
#include <cstdio>
#include <string>

#include "dmabufio/error.hpp"

namespace dmabufio {
namespace {

std::string setup_advice(int err, const RingOptions& o) {
    switch (err) {
        case ENOMEM:
            return "raise RLIMIT_MEMLOCK (ulimit -l): kernels before 5.12 charge ring memory to "
                   "it; or use a smaller depth";
        case EPERM:
            return o.sqpoll ? "SQPOLL needs CAP_SYS_NICE on kernels before 5.11; also check "
                              "the sysctl kernel.io_uring_disabled"
                            : "io_uring is disabled for this user: check the sysctl "
                              "kernel.io_uring_disabled and kernel.io_uring_group";
        case EINVAL:
            return "this kernel does not take one of the setup flags (" + describe(o) +
                   ") or the depth " + std::to_string(o.depth) + " (1..32768)";
        case ENOSYS:
            return "this kernel has no io_uring (CONFIG_IO_URING)";
        default:
            return "the kernel may lack io_uring or have it disabled (kernel.io_uring_disabled)";
    }
}

}  // namespace

std::string describe(const RingOptions& o) {
    std::string s;
    auto add = [&s](const char* what) {
        s += s.empty() ? "" : ",";
        s += what;
    };
    if (o.iopoll) {
        add("iopoll");
    }
    if (o.sqpoll) {
        add("sqpoll");
    }
    if (o.register_ring_fd) {
        add("register_ring_fd");
    }
    if (o.flags != 0) {
        std::array<char, 24> buf{};
        std::snprintf(buf.data(), buf.size(), "flags=0x%x", o.flags);
        add(buf.data());
    }
    return s.empty() ? "interrupts" : s;
}

std::string io_advice(int err, bool polled) {
    switch (err) {
        case EOPNOTSUPP:
            return polled ? "polled I/O (IOPOLL) needs an O_DIRECT file whose driver polls: for "
                            "NVMe boot with nvme.poll_queues=1 (or more)"
                          : "this file or opcode does not support the operation (a dma-buf slot "
                            "takes only READ_FIXED/WRITE_FIXED, on a file still opened O_DIRECT; "
                            "a file system refuses what it could only do through the page cache, "
                            "and a read of a hole where the exporter has no kernel mapping; a dm "
                            "table or md array changed since registration to a target or level "
                            "that can't carry a dma-buf)";
        case EINVAL:
            return "direct I/O needs offset, length and buffer address aligned to the device's "
                   "logical block size (open the target with O_DIRECT); on a dma-buf slot of a "
                   "stacked device, the I/O reached a device that the registration has no mapping "
                   "for (dm table reloaded, multipath path added): register again";
        case EFAULT:
            return "offset + length lies outside the registered buffer";
        case EBADF:
            return "a dma-buf slot can only be used with the file it was registered against";
        case EBUSY:
            return "the file's page cache over the range could not be dropped for direct I/O "
                   "(pages mapped and being written); retry";
        case EAGAIN:
            return "the device queue is full; lower the depth or retry";
        case ENOMEM:
            return "out of memory; for registered user memory raise RLIMIT_MEMLOCK (ulimit -l)";
        default:
            return {};
    }
}

Ring::Ring(unsigned entries, unsigned flags) {
    RingOptions o;
    o.depth = entries;
    o.flags = flags;
    init(o);
}

Ring::Ring(const RingOptions& options) { init(options); }

void Ring::init(const RingOptions& options) {
    options_ = options;
    io_uring_params p{};
    p.flags = options.flags;
    if (options.iopoll) {
        p.flags |= IORING_SETUP_IOPOLL;
    }
    if (options.sqpoll) {
        p.flags |= IORING_SETUP_SQPOLL;
        p.sq_thread_idle = options.sqpoll_idle_ms;
        if (options.sqpoll_cpu >= 0) {
            p.flags |= IORING_SETUP_SQ_AFF;
            p.sq_thread_cpu = static_cast<unsigned>(options.sqpoll_cpu);
        }
    }
    if (options.cq_depth != 0) {
        p.flags |= IORING_SETUP_CQSIZE;
        p.cq_entries = options.cq_depth;
    }
    if (int ret = io_uring_queue_init_params(options.depth, &ring_, &p); ret < 0) {
        throw_error(ret, "io_uring_queue_init (" + describe(options) + ")",
                    setup_advice(-ret, options));
    }
    if (options.register_ring_fd) {
        try {
            register_ring_fd();
        } catch (const Error&) {
            io_uring_queue_exit(&ring_);
            throw;
        }
    }
}

void Ring::register_ring_fd() {
    if (ring_fd_registered_) {
        return;
    }
    const int ret = io_uring_register_ring_fd(&ring_);
    if (ret != 1) {
        throw_error(ret < 0 ? ret : EIO, "io_uring_register_ring_fd",
                    "registered ring fds need Linux 5.18 or later");
    }
    ring_fd_registered_ = true;
    options_.register_ring_fd = true;
}

std::string Ring::enter_advice(int err) const {
    if (err == EINVAL && ring_fd_registered_) {
        return "the ring fd is registered per thread: enter the ring only from the thread that "
               "registered it";
    }
    if (err == EBUSY) {
        return "the completion queue is full: reap completions before submitting more";
    }
    return io_advice(err, options_.iopoll);
}

Ring::~Ring() { io_uring_queue_exit(&ring_); }

void Ring::register_buffers(std::span<const iovec> buffers) {
    int ret =
        io_uring_register_buffers(&ring_, buffers.data(), static_cast<unsigned>(buffers.size()));
    if (ret < 0) {
        throw_error(ret, "register user buffers",
                    ret == -ENOMEM ? "raise RLIMIT_MEMLOCK (ulimit -l) or register less memory"
                                   : "buffers must be valid, writable user memory");
    }
}

void Ring::register_buffers_sparse(unsigned nr) {
    if (int ret = io_uring_register_buffers_sparse(&ring_, nr); ret < 0) {
        throw_error(ret, "register a sparse buffer table", "the kernel needs 5.19 or later");
    }
}

void Ring::unregister_buffers() {
    if (int ret = io_uring_unregister_buffers(&ring_); ret < 0) {
        throw_error(ret, "unregister buffers");
    }
}

io_uring_sqe* Ring::sqe() {
    io_uring_sqe* sqe = io_uring_get_sqe(&ring_);
    if (sqe == nullptr) {
        submit();
        sqe = io_uring_get_sqe(&ring_);
    }
    if (sqe == nullptr) {
        throw_error(EBUSY, "get an SQE", "the submission queue is full");
    }
    return sqe;
}

unsigned Ring::submit() {
    int ret = 0;
    do {
        ret = io_uring_submit(&ring_);
    } while (ret == -EINTR);
    if (ret < 0) {
        throw_error(ret, "io_uring_submit", enter_advice(-ret));
    }
    return static_cast<unsigned>(ret);
}

unsigned Ring::submit_and_wait(unsigned wait_nr) {
    int ret = 0;
    do {
        ret = io_uring_submit_and_wait(&ring_, wait_nr);
    } while (ret == -EINTR);
    if (ret < 0) {
        throw_error(ret, "io_uring_submit_and_wait", enter_advice(-ret));
    }
    return static_cast<unsigned>(ret);
}

unsigned Ring::queued() const noexcept {
    // io_uring_sq_ready() takes a non-const ring; the arithmetic is the same.
    return ring_.sq.sqe_tail - ring_.sq.sqe_head;
}

unsigned Ring::ready() const noexcept {
    return static_cast<unsigned>(set_aside_.size()) +
           io_uring_cq_ready(const_cast<io_uring*>(&ring_));  // reads only
}

unsigned Ring::reap(std::span<Completion> out, unsigned wait_nr) {
    const auto want = static_cast<unsigned>(std::min<std::size_t>(wait_nr, out.size()));
    unsigned n = 0;
    while (n < out.size() && !set_aside_.empty()) {
        out[n++] = set_aside_.front();
        set_aside_.pop_front();
    }
    while (true) {
        io_uring_cqe* cqe = nullptr;
        unsigned head = 0;
        unsigned seen = 0;
        io_uring_for_each_cqe(&ring_, head, cqe) {
            if (n == out.size()) {
                break;
            }
            out[n++] = {cqe->user_data, cqe->res};
            seen++;
        }
        io_uring_cq_advance(&ring_, seen);
        if (n >= want) {
            return n;
        }
        submit_and_wait(want - n);
    }
}

std::pair<std::uint64_t, int> Ring::submit_and_wait_one() {
    Completion c;
    reap({&c, 1}, 1);
    return {c.user_data, c.res};
}

int Ring::wait_for(std::uint64_t user_data) { return wait_for_any(user_data, ~0ULL).res; }

Completion Ring::wait_for_any(std::uint64_t tag, std::uint64_t mask) {
    while (true) {
        io_uring_cqe* cqe = nullptr;
        unsigned head = 0;
        unsigned seen = 0;
        bool found = false;
        Completion mine;
        io_uring_for_each_cqe(&ring_, head, cqe) {
            seen++;
            if ((cqe->user_data & mask) == tag) {
                found = true;
                mine = {cqe->user_data, cqe->res};
                break;
            }
            set_aside_.push_back({cqe->user_data, cqe->res});
        }
        io_uring_cq_advance(&ring_, seen);
        if (found) {
            return mine;
        }
        submit_and_wait(1);
    }
}

io_uring_sqe* Ring::prep_read_fixed(int fd, void* addr, unsigned len, std::uint64_t offset,
                                    int buf_index, std::uint64_t user_data) {
    io_uring_sqe* s = sqe();
    io_uring_prep_read_fixed(s, fd, addr, len, offset, buf_index);
    s->user_data = user_data;
    return s;
}

io_uring_sqe* Ring::prep_write_fixed(int fd, const void* addr, unsigned len, std::uint64_t offset,
                                     int buf_index, std::uint64_t user_data) {
    io_uring_sqe* s = sqe();
    io_uring_prep_write_fixed(s, fd, addr, len, offset, buf_index);
    s->user_data = user_data;
    return s;
}

io_uring_sqe* Ring::prep_read_fixed(FixedFile file, void* addr, unsigned len, std::uint64_t offset,
                                    int buf_index, std::uint64_t user_data) {
    io_uring_sqe* s =
        prep_read_fixed(static_cast<int>(file.index), addr, len, offset, buf_index, user_data);
    s->flags |= IOSQE_FIXED_FILE;
    return s;
}

io_uring_sqe* Ring::prep_write_fixed(FixedFile file, const void* addr, unsigned len,
                                     std::uint64_t offset, int buf_index, std::uint64_t user_data) {
    io_uring_sqe* s =
        prep_write_fixed(static_cast<int>(file.index), addr, len, offset, buf_index, user_data);
    s->flags |= IOSQE_FIXED_FILE;
    return s;
}

int Ring::read_fixed(int fd, void* addr, unsigned len, std::uint64_t offset, int buf_index) {
    const std::uint64_t tag = sync_user_data();
    prep_read_fixed(fd, addr, len, offset, buf_index, tag);
    return wait_for(tag);
}

int Ring::write_fixed(int fd, const void* addr, unsigned len, std::uint64_t offset, int buf_index) {
    const std::uint64_t tag = sync_user_data();
    prep_write_fixed(fd, addr, len, offset, buf_index, tag);
    return wait_for(tag);
}

int Ring::read_fixed(FixedFile file, void* addr, unsigned len, std::uint64_t offset,
                     int buf_index) {
    const std::uint64_t tag = sync_user_data();
    prep_read_fixed(file, addr, len, offset, buf_index, tag);
    return wait_for(tag);
}

int Ring::write_fixed(FixedFile file, const void* addr, unsigned len, std::uint64_t offset,
                      int buf_index) {
    const std::uint64_t tag = sync_user_data();
    prep_write_fixed(file, addr, len, offset, buf_index, tag);
    return wait_for(tag);
}

FixedFiles::FixedFiles(Ring& ring, std::span<const int> fds)
    : ring_(ring), n_(static_cast<unsigned>(fds.size())) {
    if (int ret = io_uring_register_files(ring_.get(), fds.data(), n_); ret < 0) {
        std::string advice;
        switch (-ret) {
            case EMFILE:
            case ENFILE:
                advice = "raise RLIMIT_NOFILE (ulimit -n) or register fewer files";
                break;
            case EBADF:
                advice = "every fd must be open (-1 only for a sparse slot)";
                break;
            case EBUSY:
                advice = "this ring already has a fixed-file table";
                break;
            default:
                break;
        }
        throw_error(ret, "register " + std::to_string(n_) + " fixed files", advice);
    }
}

FixedFiles::~FixedFiles() { io_uring_unregister_files(ring_.get()); }

FixedFile FixedFiles::operator[](unsigned i) const {
    if (i >= n_) {
        throw_error(EINVAL, "fixed file " + std::to_string(i) + " of " + std::to_string(n_));
    }
    return FixedFile{i};
}

}  // namespace dmabufio
