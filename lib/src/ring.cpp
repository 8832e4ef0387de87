#include "dmabufio/ring.hpp"

#include "dmabufio/error.hpp"

namespace dmabufio {

Ring::Ring(unsigned entries, unsigned flags) {
    if (int ret = io_uring_queue_init(entries, &ring_, flags); ret < 0) {
        throw_error(ret, "io_uring_queue_init",
                    "the kernel may lack io_uring or have it disabled (kernel.io_uring_disabled)");
    }
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
        if (int ret = io_uring_submit(&ring_); ret < 0) {
            throw_error(ret, "io_uring_submit");
        }
        sqe = io_uring_get_sqe(&ring_);
    }
    if (sqe == nullptr) {
        throw_error(EBUSY, "get an SQE", "the submission queue is full");
    }
    return sqe;
}

std::pair<std::uint64_t, int> Ring::submit_and_wait_one() {
    if (int ret = io_uring_submit_and_wait(&ring_, 1); ret < 0) {
        throw_error(ret, "io_uring_submit_and_wait");
    }
    io_uring_cqe* cqe = nullptr;
    if (int ret = io_uring_wait_cqe(&ring_, &cqe); ret < 0) {
        throw_error(ret, "io_uring_wait_cqe");
    }
    std::pair<std::uint64_t, int> out{cqe->user_data, cqe->res};
    io_uring_cqe_seen(&ring_, cqe);
    return out;
}

int Ring::read_fixed(int fd, void* addr, unsigned len, std::uint64_t offset, int buf_index) {
    io_uring_prep_read_fixed(sqe(), fd, addr, len, offset, buf_index);
    return submit_and_wait_one().second;
}

int Ring::write_fixed(int fd, const void* addr, unsigned len, std::uint64_t offset, int buf_index) {
    io_uring_prep_write_fixed(sqe(), fd, addr, len, offset, buf_index);
    return submit_and_wait_one().second;
}

}  // namespace dmabufio
