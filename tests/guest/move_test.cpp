// The test exporter (/dev/dmabuf_test): its errors, and contents that survive MOVEs. Invalidation
// under I/O is in move_stress_test.cpp.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/ioctl.h>
#include <unistd.h>

#include <cerrno>
#include <cstdint>
#include <cstring>

#include "dmabufio/dmabuf.hpp"
#include "dmabufio/error.hpp"
#include "guest_util.hpp"

namespace {

using dmabufio::DmaBuf;
using dmabufio::Exporter;
using guest::kKiB;
using guest::kMiB;

int create_errno(std::size_t size) {
    try {
        DmaBuf::allocate(Exporter::kTest, size);
        return 0;
    } catch (const dmabufio::Error& e) {
        return e.err();
    }
}

TEST(TestExporter, BadCreateAndMoveAreRefused) {
    EXPECT_EQ(create_errno(0), EINVAL);
    EXPECT_EQ(create_errno(4097), EINVAL);
    DmaBuf udma = DmaBuf::allocate(Exporter::kUdmabuf, 64 * kKiB);
    DmaBuf fake(dmabufio::Fd(::dup(udma.fd())), udma.size(), Exporter::kTest);
    try {
        fake.move();
        FAIL() << "MOVE of a udmabuf succeeded";
    } catch (const dmabufio::Error& e) {
        EXPECT_EQ(e.err(), EINVAL);
    }
}

// DMABUF_TEST_CREATE_REPEAT: sizes that are not whole 2 MiB chunks and unknown flags are refused; a
// repeating buffer far larger than the guest's memory is created, and every chunk of it is the
// same memory, also after a MOVE.
TEST(TestExporter, RepeatingBuffersAreWholeChunksOfOneMemory) {
    const auto create = guest::test_exporter_create_errno;
    EXPECT_EQ(create(DMABUF_TEST_REPEAT_CHUNK + 4 * kKiB, DMABUF_TEST_CREATE_REPEAT), EINVAL);
    EXPECT_EQ(create(4 * kKiB, DMABUF_TEST_CREATE_REPEAT), EINVAL);
    EXPECT_EQ(create(DMABUF_TEST_REPEAT_CHUNK, 1U << 2), EINVAL);
    EXPECT_EQ(create(DMABUF_TEST_REPEAT_CHUNK, DMABUF_TEST_CREATE_REPEAT | DMABUF_TEST_CREATE_VRAM),
              EINVAL);

    DmaBuf buf = guest::repeating_dmabuf(std::size_t{16} << 30);
    auto view = buf.map();
    const std::size_t last = buf.size() - DMABUF_TEST_REPEAT_CHUNK;
    std::memset(view.data(), 0x5a, 4 * kKiB);
    EXPECT_EQ(view[last], 0x5a) << "the last chunk is not the first one's memory";
    guest::test_exporter_move(buf.fd());
    EXPECT_EQ(buf.map()[last + 4 * kKiB - 1], 0x5a) << "a MOVE lost the chunk's contents";
}

// The CPU mapping is of raw PFNs: direct I/O cannot pin its pages (they move), not even through
// the lockless GUP walk, which ignores VM_IO.
TEST(TestExporter, CpuMappingCannotBePinnedForDirectIo) {
    DmaBuf buf = DmaBuf::allocate(Exporter::kTest, kMiB);
    auto view = buf.map();
    view[0] = 1;  // populated
    const dmabufio::Fd f(::open(guest::kDevice, O_RDONLY | O_DIRECT | O_CLOEXEC));
    ASSERT_TRUE(f.valid());
    EXPECT_EQ(::pread(f.get(), view.data(), 64 * kKiB, 0), -1);
    EXPECT_EQ(errno, EFAULT);
}

TEST(TestExporter, ContentsSurviveMoves) {
    DmaBuf buf = DmaBuf::allocate(Exporter::kTest, kMiB);
    auto view = buf.map();
    guest::Memory expect(kMiB);
    guest::fill(expect.data(), kMiB, 99);
    std::memcpy(view.data(), expect.data(), kMiB);
    for (int i = 0; i < 20; i++) {
        buf.move();
        ASSERT_EQ(std::memcmp(buf.map().data(), expect.data(), kMiB), 0) << "after move " << i;
    }
}

}  // namespace
