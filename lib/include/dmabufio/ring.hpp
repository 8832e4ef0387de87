// An io_uring instance (RAII over liburing) with batch submit/reap, fixed files and fixed-buffer
// I/O helpers.
#pragma once

#include <liburing.h>
#include <sys/uio.h>

#include <cstdint>
#include <deque>
#include <span>
#include <string>
#include <utility>

namespace dmabufio {

// How to set a ring up. The defaults are an interrupt-driven ring of 32 entries.
struct RingOptions {
    unsigned depth = 32;    // submission queue entries (the kernel rounds up to a power of 2)
    unsigned cq_depth = 0;  // completion queue entries; 0: the kernel's default (2 x depth)
    bool iopoll = false;    // IORING_SETUP_IOPOLL: completions are polled for, not interrupts.
                            // Needs O_DIRECT files; on NVMe, poll queues (nvme.poll_queues=N)
                            // or the kernel just spins on interrupt-driven completions.
    bool sqpoll = false;    // IORING_SETUP_SQPOLL: a kernel thread submits
    unsigned sqpoll_idle_ms = 1000;  // SQPOLL thread idle time before it sleeps
    int sqpoll_cpu = -1;             // >= 0: pin the SQPOLL thread (IORING_SETUP_SQ_AFF)
    bool register_ring_fd = false;   // io_uring_register_ring_fd: io_uring_enter skips fdget.
                                     // The registration is per thread: only the constructing
                                     // thread may then enter the ring (see register_ring_fd())
    unsigned flags = 0;              // further IORING_SETUP_* flags, as given
};

// "iopoll,sqpoll,register_ring_fd" style summary of what is on (for logs and --json).
std::string describe(const RingOptions& o);

// One completion, copied out of the CQ ring.
struct Completion {
    std::uint64_t user_data = 0;
    int res = 0;
};

// A fixed-file index, typed so that it cannot be confused with a file descriptor. SQEs made with
// one carry IOSQE_FIXED_FILE.
struct FixedFile {
    unsigned index = 0;
};

class Ring {
  public:
    // entries: submission queue depth; flags: IORING_SETUP_*. Throws Error.
    explicit Ring(unsigned entries, unsigned flags = 0);
    // Throws Error with advice (RLIMIT_MEMLOCK, io_uring_disabled, an old kernel...).
    explicit Ring(const RingOptions& options);
    Ring(const Ring&) = delete;
    Ring& operator=(const Ring&) = delete;
    Ring(Ring&&) = delete;
    Ring& operator=(Ring&&) = delete;
    ~Ring();

    [[nodiscard]] io_uring* get() noexcept { return &ring_; }
    // The ring's real file descriptor (also when the ring fd is registered).
    [[nodiscard]] int fd() const noexcept { return ring_.ring_fd; }
    [[nodiscard]] const RingOptions& options() const noexcept { return options_; }
    [[nodiscard]] bool ring_fd_registered() const noexcept { return ring_fd_registered_; }
    [[nodiscard]] unsigned features() const noexcept { return ring_.features; }
    // Registers the ring fd in the calling thread's io_uring context (per thread, like the
    // kernel's table): from then on only this thread may submit/reap. For a ring made in one
    // thread and driven by another, call it in the driving thread. Throws Error.
    void register_ring_fd();

    // Registers user memory as fixed buffers 0..n-1. Throws Error (with RLIMIT_MEMLOCK advice).
    void register_buffers(std::span<const iovec> buffers);
    // Makes an empty (sparse) table of nr slots, to be filled by updates.
    void register_buffers_sparse(unsigned nr);
    void unregister_buffers();

    // A free SQE; submits what is queued to make room if the SQ is full.
    io_uring_sqe* sqe();

    // Batch submit: hands every queued SQE to the kernel; returns how many it took.
    unsigned submit();
    // Submits what is queued and waits until at least wait_nr completions are ready; returns how
    // many SQEs were submitted. EINTR is retried.
    unsigned submit_and_wait(unsigned wait_nr);
    // Batch reap: copies up to out.size() ready completions into out and marks them seen; waits
    // (submitting what is queued first) until at least min(wait_nr, out.size()) have been
    // reaped. Completions that a synchronous helper set aside (see wait_for()) come first.
    // Returns the number copied.
    unsigned reap(std::span<Completion> out, unsigned wait_nr = 0);
    // SQEs queued but not yet submitted; completions ready (in the CQ or set aside).
    [[nodiscard]] unsigned queued() const noexcept;
    [[nodiscard]] unsigned ready() const noexcept;

    // Submits what is queued and waits for one completion, whichever; returns its (user_data,
    // res).
    std::pair<std::uint64_t, int> submit_and_wait_one();
    // Submits what is queued and waits for the completion whose user_data is `user_data`; returns
    // its res. Other completions that arrive meanwhile are set aside, in order, for reap(): their
    // owners still get them.
    int wait_for(std::uint64_t user_data);
    // The same for the first completion whose user_data & mask is tag.
    Completion wait_for_any(std::uint64_t tag, std::uint64_t mask);
    // A user_data for one synchronous I/O: the sync helpers below and BufferTable's tag their SQE
    // with it and wait for that completion only. Values with the top 16 bits kSyncTag are
    // reserved for them; give asynchronous I/O any other user_data.
    static constexpr std::uint64_t kSyncTag = 0xd3abULL << 48;
    static constexpr std::uint64_t kSyncTagMask = 0xffffULL << 48;
    [[nodiscard]] std::uint64_t sync_user_data() noexcept { return kSyncTag | ++sync_seq_; }

    // READ_FIXED / WRITE_FIXED from/into `addr` (within slot buf_index), at `offset` on fd, run to
    // completion: they wait for their own completion, so other I/O may be in flight on the ring.
    // Returns the CQE result: bytes transferred or -errno, exactly as the kernel gave.
    int read_fixed(int fd, void* addr, unsigned len, std::uint64_t offset, int buf_index);
    int write_fixed(int fd, const void* addr, unsigned len, std::uint64_t offset, int buf_index);
    int read_fixed(FixedFile file, void* addr, unsigned len, std::uint64_t offset, int buf_index);
    int write_fixed(FixedFile file, const void* addr, unsigned len, std::uint64_t offset,
                    int buf_index);
    // Asynchronous forms: queue one READ_FIXED / WRITE_FIXED with user_data (not submitted; see
    // submit() and reap()). Returns the SQE for further flags.
    io_uring_sqe* prep_read_fixed(int fd, void* addr, unsigned len, std::uint64_t offset,
                                  int buf_index, std::uint64_t user_data);
    io_uring_sqe* prep_write_fixed(int fd, const void* addr, unsigned len, std::uint64_t offset,
                                   int buf_index, std::uint64_t user_data);
    io_uring_sqe* prep_read_fixed(FixedFile file, void* addr, unsigned len, std::uint64_t offset,
                                  int buf_index, std::uint64_t user_data);
    io_uring_sqe* prep_write_fixed(FixedFile file, const void* addr, unsigned len,
                                   std::uint64_t offset, int buf_index, std::uint64_t user_data);

  private:
    void init(const RingOptions& options);
    [[nodiscard]] std::string enter_advice(int err) const;
    io_uring ring_{};
    RingOptions options_;
    bool ring_fd_registered_ = false;
    std::deque<Completion> set_aside_;  // others' completions seen by wait_for()
    std::uint64_t sync_seq_ = 0;
};

// A fixed-file table registered on a ring (io_uring_register_files); unregistered on
// destruction. Index i names fds[i]. The ring must outlive it.
class FixedFiles {
  public:
    // Throws Error (EMFILE/ENFILE: RLIMIT_NOFILE advice; EBADF: a closed fd).
    FixedFiles(Ring& ring, std::span<const int> fds);
    FixedFiles(const FixedFiles&) = delete;
    FixedFiles& operator=(const FixedFiles&) = delete;
    FixedFiles(FixedFiles&&) = delete;
    FixedFiles& operator=(FixedFiles&&) = delete;
    ~FixedFiles();

    [[nodiscard]] unsigned size() const noexcept { return n_; }
    // The handle of the i-th file. Throws Error(EINVAL) out of range.
    [[nodiscard]] FixedFile operator[](unsigned i) const;

  private:
    Ring& ring_;
    unsigned n_ = 0;
};

// Advice, in words, for an I/O that completed with -err (positive errno). polled: the ring uses
// IOPOLL. Empty when there is nothing more specific to say than strerror.
std::string io_advice(int err, bool polled = false);

}  // namespace dmabufio
