// Host tests of the dma-buf registration front end. The host kernel has no dmabuf-io series, so it
// must answer the extended update with EINVAL, and the library must say so in words.
#include "dmabufio/buffer_table.hpp"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cerrno>
#include <cstddef>
#include <string>

#include "dmabufio/error.hpp"
#include "dmabufio/uapi.hpp"

namespace {

TEST(Uapi, DescriptorLayoutMatchesTheKernel) {
    EXPECT_EQ(sizeof(io_uring_regbuf_desc), 80U);
    EXPECT_EQ(offsetof(io_uring_regbuf_desc, size), 8U);
    EXPECT_EQ(offsetof(io_uring_regbuf_desc, uaddr), 16U);
    EXPECT_EQ(offsetof(io_uring_regbuf_desc, dmabuf_fd), 24U);
    EXPECT_EQ(offsetof(io_uring_regbuf_desc, target_fd), 28U);
    EXPECT_EQ(offsetof(io_uring_regbuf_desc, __resv), 32U);
    EXPECT_EQ(sizeof(dmabuf_test_create), 16U);
}

TEST(Probe, HostKernelWithoutTheSeriesSaysWhy) {
    const dmabufio::Probe p = dmabufio::probe();
    EXPECT_FALSE(p.dmabuf_slots);
    EXPECT_NE(p.why.find("lacks dma-buf registration"), std::string::npos) << p.why;
}

TEST(BufferTable, ExtendedUpdateIsEinvalOnTheHostKernel) {
    dmabufio::Ring ring(4);
    dmabufio::BufferTable table(ring, 4);
    io_uring_regbuf_desc desc{};
    desc.type = IO_REGBUF_TYPE_EMPTY;
    EXPECT_EQ(table.update(0, desc), -EINVAL);
}

TEST(BufferTable, UserSlotsWorkAndClearFallsBackToTheClassicUpdate) {
    dmabufio::Ring ring(4);
    dmabufio::BufferTable table(ring, 2);
    void* mem = ::mmap(nullptr, 8192, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    ASSERT_NE(mem, MAP_FAILED);
    table.register_user(1, mem, 8192);
    EXPECT_EQ(table.kind(1), dmabufio::SlotKind::kUser);
    EXPECT_EQ(table.addr(1, 4096), reinterpret_cast<std::uintptr_t>(mem) + 4096);
    table.clear(1);
    EXPECT_EQ(table.kind(1), dmabufio::SlotKind::kEmpty);
    ::munmap(mem, 8192);
}

// Compat mode's choice on a kernel without the series (the host's). A memfd stands in for the
// dma-buf: registration never reaches the exporter here (the kernel refuses the extended update
// first), and compat mode only dups and maps the fd. Its data path (DMA_BUF_IOCTL_SYNC, real
// exporters) is checked in the guest (tests/guest/compat_test.cpp).
TEST(BufferTable, CompatIsTakenOnlyWhenAskedForOnAKernelWithoutTheSeries) {
    const int memfd = ::memfd_create("not-a-dma-buf", MFD_CLOEXEC);
    ASSERT_GE(memfd, 0);
    ASSERT_EQ(::ftruncate(memfd, 64 << 20), 0);
    dmabufio::DmaBuf buf(dmabufio::Fd(memfd), 64 << 20, dmabufio::Exporter::kAdopted);
    dmabufio::Ring ring(4);
    dmabufio::BufferTable table(ring, 2);
    const int target = ::open("/dev/null", O_RDONLY | O_CLOEXEC);
    ASSERT_GE(target, 0);
    try {
        table.register_dmabuf(0, buf, target);
        ADD_FAILURE() << "registered without the series";
    } catch (const dmabufio::Error& e) {
        EXPECT_EQ(e.err(), EINVAL);
        EXPECT_NE(std::string(e.what()).find("opt in to compat mode (Fallback::kCompat)"),
                  std::string::npos)
            << e.what();
    }
    EXPECT_EQ(table.kind(0), dmabufio::SlotKind::kEmpty);
    EXPECT_EQ(table.register_dmabuf(0, buf, target, dmabufio::Fallback::kCompat),
              dmabufio::SlotKind::kCompat);
    EXPECT_EQ(table.staging_bytes(0), dmabufio::kCompatStagingBytes);  // min(64 MiB, 4 MiB)
    EXPECT_STREQ(dmabufio::to_string(table.kind(0)),
                 "compat: O_DIRECT into host memory, copied through the dma-buf's CPU mapping");
    EXPECT_NE(table.addr(0, 0), 0U);  // the staging memory, a user address
    try {
        table.compat_copy(0, 4 << 20, 0, 4096, true);
        ADD_FAILURE() << "copied past the staging memory";
    } catch (const dmabufio::Error& e) {
        EXPECT_EQ(e.err(), EFAULT);
    }
    try {
        table.compat_copy(1, 0, 0, 4096, true);
        ADD_FAILURE() << "compat copy on an empty slot";
    } catch (const dmabufio::Error& e) {
        EXPECT_EQ(e.err(), EINVAL);
    }
    try {
        table.register_dmabuf_compat(1, buf, 4096 + 512);
        ADD_FAILURE() << "staging that is not a multiple of the page size";
    } catch (const dmabufio::Error& e) {
        EXPECT_EQ(e.err(), EINVAL);
    }
    table.clear(0);
    EXPECT_EQ(table.staging_bytes(0), 0U);
    ::close(target);
}

TEST(DmaBuf, UnknownExporterIsEinvalWithTheChoices) {
    try {
        (void)dmabufio::parse_exporter("gpu");
        FAIL();
    } catch (const dmabufio::Error& e) {
        EXPECT_EQ(e.err(), EINVAL);
        EXPECT_NE(std::string(e.what()).find("udmabuf, heap, test or vram"), std::string::npos);
    }
}

}  // namespace
