// Host tests of the dma-buf registration front end. The host kernel has no dmabuf-io series, so it
// must answer the extended update with EINVAL, and the library must say so in words.
#include "dmabufio/buffer_table.hpp"

#include <gtest/gtest.h>
#include <sys/mman.h>

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

TEST(DmaBuf, UnknownExporterIsEinvalWithTheChoices) {
    try {
        (void)dmabufio::parse_exporter("gpu");
        FAIL();
    } catch (const dmabufio::Error& e) {
        EXPECT_EQ(e.err(), EINVAL);
        EXPECT_NE(std::string(e.what()).find("udmabuf, heap or test"), std::string::npos);
    }
}

}  // namespace
