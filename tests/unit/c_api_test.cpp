// Host tests of the C API (dmabufio/dmabufio.h). The host kernel has no dmabuf-io series: the
// extended update is EINVAL there, the probe says so, and clearing falls back to the classic
// update.
#include <gtest/gtest.h>
#include <unistd.h>

#include <array>
#include <cerrno>
#include <cstdint>
#include <string>

#include "dmabufio/dmabufio.h"

namespace {

struct CRing {
    io_uring ring{};
    CRing() { EXPECT_EQ(io_uring_queue_init(4, &ring, 0), 0); }
    CRing(const CRing&) = delete;
    CRing& operator=(const CRing&) = delete;
    ~CRing() { io_uring_queue_exit(&ring); }
};

TEST(CApi, ProbeOnTheHostSaysTheSeriesIsMissingAndWhatToDo) {
    const char* advice = nullptr;
    EXPECT_EQ(dmabufio_probe(&advice), 0);
    ASSERT_NE(advice, nullptr);
    EXPECT_NE(std::string(advice).find("boot a kernel with the dmabuf-io series"),
              std::string::npos)
        << advice;
    EXPECT_EQ(dmabufio_probe(nullptr), 0);
}

TEST(CApi, RawRegisterReturnsMinusErrno) {
    io_uring_rsrc_update2 up{};
    std::array<int, 2> pipe{};
    ASSERT_EQ(::pipe(pipe.data()), 0);
    EXPECT_EQ(dmabufio_register_raw(pipe[0], IORING_REGISTER_BUFFERS_UPDATE, &up, sizeof(up)),
              -EOPNOTSUPP);  // not a ring
    ::close(pipe[0]);
    ::close(pipe[1]);
    EXPECT_EQ(dmabufio_register_raw(pipe[0], IORING_REGISTER_BUFFERS_UPDATE, &up, sizeof(up)),
              -EBADF);  // closed
    CRing r;
    EXPECT_EQ(dmabufio_register_raw(r.ring.ring_fd, 9999, nullptr, 0), -EINVAL);
    // NOLINTNEXTLINE(performance-no-int-to-ptr): an unmapped address on purpose
    void* unmapped = reinterpret_cast<void*>(std::uintptr_t{16});
    EXPECT_EQ(
        dmabufio_register_raw(r.ring.ring_fd, IORING_REGISTER_BUFFERS_UPDATE, unmapped, sizeof(up)),
        -EFAULT);
}

TEST(CApi, ExtendedUpdateAndDmaBufRegistrationAreEinvalOnTheHost) {
    CRing r;
    ASSERT_EQ(io_uring_register_buffers_sparse(&r.ring, 2), 0);
    const io_uring_regbuf_desc empty{};
    EXPECT_EQ(dmabufio_update_buffers(&r.ring, 0, &empty, nullptr, 1), -EINVAL);
    EXPECT_EQ(dmabufio_register_dmabuf(&r.ring, 0, 0, 0, 0), -EINVAL);
}

TEST(CApi, ClearFallsBackToTheClassicUpdateWithExactErrnos) {
    CRing r;
    EXPECT_EQ(dmabufio_clear_buffer(&r.ring, 0), -ENXIO);  // no table yet
    ASSERT_EQ(io_uring_register_buffers_sparse(&r.ring, 2), 0);
    EXPECT_EQ(dmabufio_clear_buffer(&r.ring, 1), 0);
    EXPECT_EQ(dmabufio_clear_buffer(&r.ring, 2), -EINVAL);  // outside the table
}

}  // namespace
