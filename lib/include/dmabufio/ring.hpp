// An io_uring instance (RAII over liburing) with fixed-buffer I/O helpers.
#pragma once

#include <liburing.h>
#include <sys/uio.h>

#include <cstdint>
#include <span>

namespace dmabufio {

class Ring {
  public:
    // entries: submission queue depth; flags: IORING_SETUP_*. Throws Error.
    explicit Ring(unsigned entries, unsigned flags = 0);
    Ring(const Ring&) = delete;
    Ring& operator=(const Ring&) = delete;
    Ring(Ring&&) = delete;
    Ring& operator=(Ring&&) = delete;
    ~Ring();

    [[nodiscard]] io_uring* get() noexcept { return &ring_; }
    [[nodiscard]] int fd() const noexcept { return ring_.ring_fd; }

    // Registers user memory as fixed buffers 0..n-1. Throws Error (with RLIMIT_MEMLOCK advice).
    void register_buffers(std::span<const iovec> buffers);
    // Makes an empty (sparse) table of nr slots, to be filled by updates.
    void register_buffers_sparse(unsigned nr);
    void unregister_buffers();

    // A free SQE; submits what is queued to make room if the SQ is full.
    io_uring_sqe* sqe();
    // READ_FIXED / WRITE_FIXED from/into `addr` (within slot buf_index), at `offset` on fd, run to
    // completion. Returns the CQE result: bytes transferred or -errno, exactly as the kernel gave.
    int read_fixed(int fd, void* addr, unsigned len, std::uint64_t offset, int buf_index);
    int write_fixed(int fd, const void* addr, unsigned len, std::uint64_t offset, int buf_index);
    // Submits what is queued and waits for one completion; returns its (user_data, res).
    std::pair<std::uint64_t, int> submit_and_wait_one();

  private:
    io_uring ring_{};
};

}  // namespace dmabufio
