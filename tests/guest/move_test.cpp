// The test exporter (/dev/dmabuf_test): its errors, and contents that survive MOVEs. Invalidation
// under I/O is in move_stress_test.cpp.
#include <gtest/gtest.h>

#include <cerrno>
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
