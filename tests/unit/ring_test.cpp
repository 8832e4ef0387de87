// Host tests of Ring options, batch submit/reap, fixed files and error advice. They need no
// dmabuf-io kernel: every feature here is stock io_uring (SQPOLL and registered ring fds where the
// host kernel allows them; the test skips, saying why, where it does not).
#include "dmabufio/ring.hpp"

#include <gtest/gtest.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <cstdlib>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "dmabufio/error.hpp"
#include "dmabufio/fd.hpp"

namespace {

using dmabufio::Completion;
using dmabufio::FixedFile;
using dmabufio::FixedFiles;
using dmabufio::Ring;
using dmabufio::RingOptions;

// An unlinked temporary file of n bytes (buffered I/O: tmpfs or disk, no O_DIRECT needed).
dmabufio::Fd temp_file(std::size_t n) {
    std::string path = "/tmp/dmabufio-ring-XXXXXX";
    dmabufio::Fd fd(::mkstemp(path.data()));
    EXPECT_TRUE(fd.valid());
    ::unlink(path.c_str());
    EXPECT_EQ(::ftruncate(fd.get(), static_cast<off_t>(n)), 0);
    return fd;
}

// Fixed buffers 0 (out, a pattern) and 1 (in) of 8 KiB each.
struct Buffers {
    std::vector<char> out = std::vector<char>(8192);
    std::vector<char> in = std::vector<char>(8192);
    explicit Buffers(Ring& ring) {
        for (std::size_t i = 0; i < out.size(); i++) {
            out[i] = static_cast<char>(i * 13 + 1);
        }
        const std::array<iovec, 2> iov{{{out.data(), out.size()}, {in.data(), in.size()}}};
        ring.register_buffers(iov);
    }
};

void round_trip(Ring& ring) {
    dmabufio::Fd fd = temp_file(1 << 20);
    Buffers b(ring);
    EXPECT_EQ(ring.write_fixed(fd.get(), b.out.data(), 8192, 65536, 0), 8192);
    EXPECT_EQ(ring.read_fixed(fd.get(), b.in.data(), 8192, 65536, 1), 8192);
    EXPECT_EQ(b.out, b.in);
}

TEST(RingOptions, DescribeNamesWhatIsOn) {
    RingOptions o;
    EXPECT_EQ(dmabufio::describe(o), "interrupts");
    o.iopoll = true;
    o.sqpoll = true;
    o.register_ring_fd = true;
    EXPECT_EQ(dmabufio::describe(o), "iopoll,sqpoll,register_ring_fd");
    o = {};
    o.flags = 0x1000;
    EXPECT_EQ(dmabufio::describe(o), "flags=0x1000");
}

TEST(Ring, DepthIsHonoured) {
    RingOptions o;
    o.depth = 64;
    o.cq_depth = 256;
    Ring ring(o);
    EXPECT_EQ(ring.get()->sq.ring_entries, 64U);
    EXPECT_EQ(ring.get()->cq.ring_entries, 256U);
    EXPECT_FALSE(ring.ring_fd_registered());
}

TEST(Ring, BadDepthSaysWhy) {
    RingOptions o;
    o.depth = 1U << 20;
    try {
        Ring ring(o);
        FAIL() << "a ring of 2^20 entries was made";
    } catch (const dmabufio::Error& e) {
        EXPECT_EQ(e.err(), EINVAL);
        EXPECT_NE(std::string(e.what()).find("1..32768"), std::string::npos) << e.what();
    }
}

TEST(Ring, SqpollRoundTrips) {
    RingOptions o;
    o.depth = 8;
    o.sqpoll = true;
    o.sqpoll_idle_ms = 10;
    std::unique_ptr<Ring> ring;
    try {
        ring = std::make_unique<Ring>(o);
    } catch (const dmabufio::Error& e) {
        GTEST_SKIP() << "the host does not allow SQPOLL here: " << e.what();
    }
    EXPECT_NE(ring->get()->flags & IORING_SETUP_SQPOLL, 0U);
    round_trip(*ring);
}

TEST(Ring, RegisteredRingFdRoundTrips) {
    RingOptions o;
    o.depth = 8;
    o.register_ring_fd = true;
    std::unique_ptr<Ring> ring;
    try {
        ring = std::make_unique<Ring>(o);
    } catch (const dmabufio::Error& e) {
        GTEST_SKIP() << "the host kernel has no registered ring fds: " << e.what();
    }
    EXPECT_TRUE(ring->ring_fd_registered());
    EXPECT_GE(ring->fd(), 0);  // the real fd stays available (registration updates use it)
    round_trip(*ring);
}

TEST(Ring, RegisteredRingFdIsPerThreadAndTheErrorSaysSo) {
    RingOptions o;
    o.depth = 8;
    o.register_ring_fd = true;
    std::unique_ptr<Ring> ring;
    try {
        ring = std::make_unique<Ring>(o);
    } catch (const dmabufio::Error& e) {
        GTEST_SKIP() << "the host kernel has no registered ring fds: " << e.what();
    }
    std::string what;
    std::thread other([&] {
        io_uring_prep_nop(ring->sqe());
        try {
            ring->submit();
        } catch (const dmabufio::Error& e) {
            what = e.what();
        }
    });
    other.join();
    EXPECT_NE(what.find("registered per thread"), std::string::npos) << what;
}

TEST(Ring, IopollRingOnABufferedFileSaysPollQueues) {
    RingOptions o;
    o.depth = 4;
    o.iopoll = true;
    Ring ring(o);
    dmabufio::Fd fd = temp_file(1 << 16);
    Buffers b(ring);
    const int res = ring.read_fixed(fd.get(), b.in.data(), 4096, 0, 1);
    ASSERT_EQ(res, -EOPNOTSUPP) << "IOPOLL on a buffered file";
    EXPECT_NE(dmabufio::io_advice(-res, true).find("nvme.poll_queues"), std::string::npos);
}

TEST(Ring, BatchSubmitAndReap) {
    Ring ring(32);
    constexpr unsigned kN = 20;
    for (unsigned i = 0; i < kN; i++) {
        io_uring_sqe* s = ring.sqe();
        io_uring_prep_nop(s);
        s->user_data = 100 + i;
    }
    EXPECT_EQ(ring.queued(), kN);
    EXPECT_EQ(ring.submit(), kN);
    EXPECT_EQ(ring.queued(), 0U);
    std::array<Completion, 8> out{};
    std::vector<std::uint64_t> seen;
    while (seen.size() < kN) {
        const unsigned n = ring.reap(out, 1);
        ASSERT_GE(n, 1U);
        ASSERT_LE(n, out.size());
        for (unsigned i = 0; i < n; i++) {
            EXPECT_EQ(out[i].res, 0);
            seen.push_back(out[i].user_data);
        }
    }
    std::sort(seen.begin(), seen.end());
    for (unsigned i = 0; i < kN; i++) {
        EXPECT_EQ(seen[i], 100 + i);
    }
    EXPECT_EQ(ring.ready(), 0U);
    EXPECT_EQ(ring.reap(out, 0), 0U);  // nothing ready, no wait
}

// The synchronous helpers wait for their own completion: with another completion already in the
// CQ (a NOP) and another I/O still in flight (a 100 ms timeout), read_fixed() returns its own
// result and data, and reap() then hands the other two to their owner, in order, exactly once.
TEST(Ring, SyncHelpersTakeOnlyTheirOwnCompletion) {
    Ring ring(8);
    dmabufio::Fd fd = temp_file(1 << 20);
    Buffers b(ring);
    ASSERT_EQ(::pwrite(fd.get(), b.out.data(), 8192, 4096), 8192);
    io_uring_sqe* nop = ring.sqe();
    io_uring_prep_nop(nop);
    nop->user_data = 7;
    __kernel_timespec ts{0, 100'000'000};
    io_uring_sqe* timeout = ring.sqe();
    io_uring_prep_timeout(timeout, &ts, 0, 0);
    timeout->user_data = 8;
    ASSERT_EQ(ring.submit(), 2U);
    EXPECT_EQ(ring.ready(), 1U);  // the NOP's completion is waiting in the CQ
    EXPECT_EQ(ring.read_fixed(fd.get(), b.in.data(), 8192, 4096, 1), 8192);
    EXPECT_EQ(b.in, b.out);
    std::fill(b.in.begin(), b.in.end(), 0);
    EXPECT_EQ(ring.read_fixed(FixedFile{0}, b.in.data(), 4096, 4096, 1), -EBADF);  // no files
    std::array<Completion, 3> c{};
    ASSERT_EQ(ring.reap(c, 2), 2U);
    EXPECT_EQ(c[0].user_data, 7U);
    EXPECT_EQ(c[0].res, 0);
    EXPECT_EQ(c[1].user_data, 8U);
    EXPECT_EQ(c[1].res, -ETIME);
    EXPECT_EQ(ring.ready(), 0U);
}

TEST(Ring, ReapWaitsForAsManyAsAsked) {
    Ring ring(8);
    for (unsigned i = 0; i < 4; i++) {
        io_uring_prep_nop(ring.sqe());
    }
    std::array<Completion, 4> out{};
    // Queued, not submitted: reap submits them itself and waits for all four.
    EXPECT_EQ(ring.reap(out, 4), 4U);
}

TEST(FixedFiles, TypedHandleRoundTrips) {
    Ring ring(8);
    dmabufio::Fd a = temp_file(1 << 16);
    dmabufio::Fd b = temp_file(1 << 16);
    const std::array<int, 2> fds{a.get(), b.get()};
    FixedFiles files(ring, fds);
    EXPECT_EQ(files.size(), 2U);
    Buffers buf(ring);
    EXPECT_EQ(ring.write_fixed(files[1], buf.out.data(), 4096, 8192, 0), 4096);
    EXPECT_EQ(ring.read_fixed(files[1], buf.in.data(), 4096, 8192, 1), 4096);
    EXPECT_TRUE(std::equal(buf.out.begin(), buf.out.begin() + 4096, buf.in.begin()));
    // It went to file 1, not file 0: file 0 still reads zeros there.
    std::vector<char> z(4096, 1);
    EXPECT_EQ(::pread(a.get(), z.data(), z.size(), 8192), 4096);
    EXPECT_EQ(z, std::vector<char>(4096, 0));
    // Asynchronous form: prep sets IOSQE_FIXED_FILE; submit and reap by user_data.
    io_uring_sqe* sqe = ring.prep_read_fixed(files[0], buf.in.data(), 4096, 0, 1, 77);
    EXPECT_NE(sqe->flags & IOSQE_FIXED_FILE, 0);
    EXPECT_EQ(ring.submit(), 1U);
    Completion c;
    EXPECT_EQ(ring.reap({&c, 1}, 1), 1U);
    EXPECT_EQ(c.user_data, 77U);
    EXPECT_EQ(c.res, 4096);
}

TEST(FixedFiles, OutOfRangeAndClosedFdsAreRefused) {
    Ring ring(4);
    dmabufio::Fd a = temp_file(4096);
    const std::array<int, 1> fds{a.get()};
    {
        FixedFiles files(ring, fds);
        EXPECT_THROW((void)files[1], dmabufio::Error);
    }
    // Unregistered on destruction: a second table can be registered.
    FixedFiles again(ring, fds);
    EXPECT_EQ(again.size(), 1U);
    Ring other(4);
    const std::array<int, 1> bad{1000000};
    try {
        FixedFiles files(other, bad);
        FAIL() << "registered a closed fd";
    } catch (const dmabufio::Error& e) {
        EXPECT_EQ(e.err(), EBADF);
        EXPECT_NE(std::string(e.what()).find("must be open"), std::string::npos) << e.what();
    }
}

TEST(FixedFiles, SecondTableOnARingIsBusyWithAdvice) {
    Ring ring(4);
    dmabufio::Fd a = temp_file(4096);
    const std::array<int, 1> fds{a.get()};
    FixedFiles files(ring, fds);
    try {
        FixedFiles twice(ring, fds);
        FAIL() << "registered two fixed-file tables";
    } catch (const dmabufio::Error& e) {
        EXPECT_EQ(e.err(), EBUSY);
        EXPECT_NE(std::string(e.what()).find("already has a fixed-file table"), std::string::npos);
    }
}

TEST(IoAdvice, SaysWhatToDo) {
    EXPECT_NE(dmabufio::io_advice(EINVAL).find("O_DIRECT"), std::string::npos);
    EXPECT_NE(dmabufio::io_advice(EOPNOTSUPP, true).find("nvme.poll_queues"), std::string::npos);
    EXPECT_NE(dmabufio::io_advice(EOPNOTSUPP, false).find("READ_FIXED"), std::string::npos);
    EXPECT_NE(dmabufio::io_advice(EFAULT).find("outside the registered buffer"), std::string::npos);
    EXPECT_NE(dmabufio::io_advice(EBADF).find("registered against"), std::string::npos);
    EXPECT_NE(dmabufio::io_advice(ENOMEM).find("RLIMIT_MEMLOCK"), std::string::npos);
    EXPECT_EQ(dmabufio::io_advice(EIO), "");
}

// Registering more than RLIMIT_MEMLOCK allows fails with ENOMEM (pinned fixed buffers are
// accounted) and the error says what to do. Root (CAP_IPC_LOCK) is exempt, so as root the check
// runs in a child that has become "nobody" with a 64 KiB limit.
void expect_memlock_advice() {
    Ring ring(4);
    rlimit rl{};
    ASSERT_EQ(::getrlimit(RLIMIT_MEMLOCK, &rl), 0);
    const std::size_t n = rl.rlim_cur + (4U << 20);
    std::vector<char> mem(n);
    iovec iov{mem.data(), n};
    try {
        ring.register_buffers({&iov, 1});
        ADD_FAILURE() << "registered " << n << " bytes beyond RLIMIT_MEMLOCK " << rl.rlim_cur;
    } catch (const dmabufio::Error& e) {
        EXPECT_EQ(e.err(), ENOMEM);
        EXPECT_NE(std::string(e.what()).find("RLIMIT_MEMLOCK"), std::string::npos) << e.what();
    }
}

TEST(Ring, MemlockAdviceWhenUserMemoryCannotBePinned) {
    if (::geteuid() != 0) {
        expect_memlock_advice();
        return;
    }
    const pid_t pid = ::fork();
    ASSERT_GE(pid, 0);
    if (pid == 0) {
        const rlimit small{64U << 10, 64U << 10};
        constexpr uid_t kNobody = 65534;
        if (::setrlimit(RLIMIT_MEMLOCK, &small) != 0 || ::setgid(kNobody) != 0 ||
            ::setuid(kNobody) != 0) {
            ::_exit(3);
        }
        expect_memlock_advice();
        ::_exit(::testing::Test::HasFailure() ? 1 : 0);
    }
    int status = 0;
    ASSERT_EQ(::waitpid(pid, &status, 0), pid);
    ASSERT_TRUE(WIFEXITED(status)) << status;
    EXPECT_EQ(WEXITSTATUS(status), 0)
        << "3: could not become nobody; 1: see the child's failure above";
}

}  // namespace
