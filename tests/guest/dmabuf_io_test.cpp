// dma-buf slots end to end (issue 3): registration against /dev/nvme0n1, READ_FIXED/WRITE_FIXED
// at many offsets, lengths and queue depths, checked byte for byte against the ordinary O_DIRECT
// path. (The errno rows and lifetime with I/O in flight: dmabuf_errors_test.cpp.)
#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <fstream>
#include <memory>
#include <vector>

#include "dmabufio/buffer_table.hpp"
#include "dmabufio/dmabuf.hpp"
#include "dmabufio/error.hpp"
#include "dmabufio/file.hpp"
#include "dmabufio/ring.hpp"
#include "guest_util.hpp"

namespace {

using dmabufio::BlockFile;
using dmabufio::BufferTable;
using dmabufio::DmaBuf;
using dmabufio::Exporter;
using dmabufio::Ring;
using dmabufio::SlotKind;
using guest::kGiB;
using guest::kKiB;
using guest::kMiB;

// udmabuf caps a buffer at size_limit_mb (64 MiB by default); the tests need up to 1 GiB.
void raise_udmabuf_limit() {
    std::ofstream("/sys/module/udmabuf/parameters/size_limit_mb") << 4096 << std::endl;
}

class DmaBufIo : public testing::TestWithParam<std::tuple<Exporter, std::size_t>> {
  protected:
    void SetUp() override { raise_udmabuf_limit(); }
};

// Writes go out of the dma-buf and read back through the ordinary path; then the ordinary path
// writes and the dma-buf slot reads. Offsets and lengths cross split boundaries (max_sectors,
// PRP-list pages) and both ends of the buffer.
TEST_P(DmaBufIo, RoundTripsAgainstTheOrdinaryPath) {
    const auto [exporter, size] = GetParam();
    ASSERT_TRUE(dmabufio::probe().dmabuf_slots) << dmabufio::probe().why;
    BlockFile dev(guest::kDevice);
    ASSERT_GE(dev.size(), size + 8 * kMiB);
    guest::Reference ref;
    Ring ring(8);
    BufferTable table(ring, 4);
    DmaBuf buf = DmaBuf::allocate(exporter, size);
    ASSERT_EQ(table.register_dmabuf(1, buf, dev.fd()), SlotKind::kDmaBuf);
    auto view = buf.map();

    std::vector<std::size_t> lens{
        4 * kKiB, 8 * kKiB, 60 * kKiB, 128 * kKiB, 512 * kKiB + 4 * kKiB, kMiB, 3 * kMiB + 512};
    std::vector<std::size_t> boffs{0, 512, 4 * kKiB, 12 * kKiB + 512};
    guest::Memory bounce(4 * kMiB);
    std::uint64_t seed = size;
    std::size_t verified = 0;
    for (std::size_t len : lens) {
        len &= ~std::size_t{511};
        for (std::size_t boff : boffs) {
            for (std::size_t where : {std::size_t{0}, std::size_t{1}}) {
                std::size_t off = where == 0 ? boff : size - len - boff;
                if (len + boff > size) {
                    continue;
                }
                off &= ~std::size_t{511};
                const std::uint64_t dev_off = (seed % 64) * kMiB + boff;
                SCOPED_TRACE(testing::Message()
                             << "len " << len << " buf off " << off << " dev off " << dev_off);
                // dma-buf -> device, checked through the ordinary path.
                buf.begin_cpu_access(true);
                guest::fill(view.data() + off, len, seed++);
                buf.end_cpu_access(true);
                ASSERT_EQ(table.write(dev.fd(), 1, off, static_cast<unsigned>(len), dev_off),
                          static_cast<int>(len));
                ref.read(bounce.data(), len, dev_off);
                buf.begin_cpu_access(false);
                ASSERT_EQ(std::memcmp(bounce.data(), view.data() + off, len), 0);
                buf.end_cpu_access(false);
                // device -> dma-buf, written through the ordinary path.
                guest::fill(bounce.data(), len, seed++);
                ref.write(bounce.data(), len, dev_off);
                ASSERT_EQ(table.read(dev.fd(), 1, off, static_cast<unsigned>(len), dev_off),
                          static_cast<int>(len));
                buf.begin_cpu_access(false);
                ASSERT_EQ(std::memcmp(bounce.data(), view.data() + off, len), 0);
                buf.end_cpu_access(false);
                verified += 2 * len;
            }
        }
    }
    std::printf("[          ] %s %zu bytes: %zu bytes verified\n", dmabufio::to_string(exporter),
                size, verified);
}

std::string name(const testing::TestParamInfo<DmaBufIo::ParamType>& info) {
    const auto [e, size] = info.param;
    return std::string(dmabufio::to_string(e)) + "_" + std::to_string(size / kKiB) + "KiB";
}

// udmabuf stops at 1 GiB: its creation pins every 4 KiB memfd page one by one, ~2 min a GiB on
// the debug kernel under TCG; the system heap's large pages make the 2 GiB case cheap.
INSTANTIATE_TEST_SUITE_P(Sizes, DmaBufIo,
                         testing::Values(std::tuple{Exporter::kUdmabuf, 4 * kMiB},
                                         std::tuple{Exporter::kUdmabuf, 64 * kMiB},
                                         std::tuple{Exporter::kUdmabuf, kGiB},
                                         std::tuple{Exporter::kHeap, 4 * kMiB},
                                         std::tuple{Exporter::kHeap, 64 * kMiB},
                                         std::tuple{Exporter::kHeap, 2 * kGiB}),
                         name);

TEST(DmaBufIoSmall, OnePageBuffer) {
    raise_udmabuf_limit();
    BlockFile dev(guest::kDevice);
    guest::Reference ref;
    Ring ring(4);
    BufferTable table(ring, 1);
    for (Exporter e : {Exporter::kUdmabuf, Exporter::kHeap}) {
        DmaBuf buf = DmaBuf::allocate(e, 4 * kKiB);
        ASSERT_EQ(table.register_dmabuf(0, buf, dev.fd()), SlotKind::kDmaBuf);
        auto view = buf.map();
        guest::fill(view.data(), view.size(), 77);
        ASSERT_EQ(table.write(dev.fd(), 0, 0, 4096, 8192), 4096);
        guest::Memory back(4096);
        ref.read(back.data(), 4096, 8192);
        EXPECT_EQ(std::memcmp(back.data(), view.data(), 4096), 0);
        EXPECT_EQ(table.write(dev.fd(), 0, 0, 8192, 0), -EFAULT);
        table.clear(0);
    }
}

// Queue depths 1..128: a batch of random reads in flight at once, each landing in its own part of
// the dma-buf, checked against the device contents written through the ordinary path.
TEST(DmaBufIoDepth, RandomReadsAtQueueDepths1To128) {
    raise_udmabuf_limit();
    BlockFile dev(guest::kDevice);
    guest::Reference ref;
    constexpr std::size_t kRegion = 16 * kMiB;
    guest::Memory pattern(kRegion);
    guest::fill(pattern.data(), kRegion, 4242);
    ref.write(pattern.data(), kRegion, 256 * kMiB);
    Ring ring(128);
    BufferTable table(ring, 1);
    DmaBuf buf = DmaBuf::allocate(Exporter::kUdmabuf, 64 * kKiB * 128);
    ASSERT_EQ(table.register_dmabuf(0, buf, dev.fd()), SlotKind::kDmaBuf);
    auto view = buf.map();
    std::mt19937_64 gen(7);
    for (unsigned qd : {1U, 2U, 8U, 32U, 64U, 128U}) {
        for (int round = 0; round < 4; round++) {
            std::vector<std::pair<std::size_t, std::size_t>> ios;  // (device offset in region, len)
            for (unsigned i = 0; i < qd; i++) {
                const std::size_t len = (1 + gen() % 16) * 4 * kKiB;
                const std::size_t off = (gen() % ((kRegion - len) / 512)) * 512;
                ios.emplace_back(off, len);
                table.prep(false, dev.fd(), 0, 64 * kKiB * i, static_cast<unsigned>(len),
                           256 * kMiB + off, i);
            }
            for (unsigned i = 0; i < qd; i++) {
                auto [ud, res] = ring.submit_and_wait_one();
                ASSERT_LT(ud, qd);
                ASSERT_EQ(res, static_cast<int>(ios[ud].second)) << "qd " << qd;
            }
            buf.begin_cpu_access(false);
            for (unsigned i = 0; i < qd; i++) {
                ASSERT_EQ(std::memcmp(view.data() + 64 * kKiB * i, pattern.data() + ios[i].first,
                                      ios[i].second),
                          0)
                    << "qd " << qd << " I/O " << i;
            }
            buf.end_cpu_access(false);
        }
    }
}

// A dma-buf slot and an ordinary user-memory slot in one ring, interleaved, with fixed files.
TEST(DmaBufIoMixed, DmaBufAndUserSlotsInOneRingWithFixedFiles) {
    raise_udmabuf_limit();
    BlockFile dev(guest::kDevice);
    Ring ring(16);
    BufferTable table(ring, 3);
    int fd = dev.fd();
    ASSERT_EQ(io_uring_register_files(ring.get(), &fd, 1), 0);
    DmaBuf buf = DmaBuf::allocate(Exporter::kHeap, kMiB);
    guest::Memory user(kMiB);
    ASSERT_EQ(table.register_dmabuf(0, buf, dev.fd()), SlotKind::kDmaBuf);
    table.register_user(2, user.data(), user.size());
    auto view = buf.map();
    for (int i = 0; i < 16; i++) {
        const auto dev_off = static_cast<std::uint64_t>(i) * kMiB;
        guest::fill(user.data(), kMiB, static_cast<std::uint64_t>(i));
        // user memory -> device, then device -> dma-buf, both through fixed file 0.
        table.prep(true, 0, 2, 0, kMiB, dev_off, 1)->flags |= IOSQE_FIXED_FILE;
        ASSERT_EQ(ring.submit_and_wait_one().second, static_cast<int>(kMiB));
        table.prep(false, 0, 0, 0, kMiB, dev_off, 2)->flags |= IOSQE_FIXED_FILE;
        ASSERT_EQ(ring.submit_and_wait_one().second, static_cast<int>(kMiB));
        ASSERT_EQ(std::memcmp(view.data(), user.data(), kMiB), 0) << "round " << i;
    }
    // Both kinds in flight together.
    table.prep(false, 0, 0, 0, kMiB, 0, 1)->flags |= IOSQE_FIXED_FILE;
    table.prep(false, 0, 2, 0, kMiB, 0, 2)->flags |= IOSQE_FIXED_FILE;
    EXPECT_EQ(ring.submit_and_wait_one().second, static_cast<int>(kMiB));
    EXPECT_EQ(ring.submit_and_wait_one().second, static_cast<int>(kMiB));
    EXPECT_EQ(std::memcmp(view.data(), user.data(), kMiB), 0);
}

}  // namespace
