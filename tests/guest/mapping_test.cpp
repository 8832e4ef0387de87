// The mapping scales (issue 14): the kernel keeps a registered dma-buf as runs of contiguous DMA
// addresses, not one entry per page, and builds each request's PRPs or SGLs from them. So a 64 GiB
// dma-buf registers in a 4 GiB guest and reads and writes correctly beyond 4 GiB, at its last
// byte and across runs; and a request on a dma-buf slot is as large as the device allows
// (max_hw_sectors), not max_segments pages. Runs in the strict, lazy and passthrough boots. (The
// metadata per GiB is counted in memcg_test.cpp.)
#include <gtest/gtest.h>

#include <array>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <string>

#include "dmabufio/buffer_table.hpp"
#include "dmabufio/dmabuf.hpp"
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

// Reads completed by the whole disk (first field of its stat file).
std::uint64_t disk_reads() { return guest::read_u64("/sys/block/nvme0n1/stat"); }

TEST(Mapping, SixtyFourGiBDmaBufReadsAndWritesBeyondFourGiBAndAcrossRuns) {
    constexpr std::size_t kSize = 64 * kGiB;
    constexpr std::size_t kChunk = DMABUF_TEST_REPEAT_CHUNK;
    guest::Reference ref;
    BlockFile dev(guest::kDevice);
    Ring ring(4);
    BufferTable table(ring, 1);
    DmaBuf buf = guest::repeating_dmabuf(kSize);
    ASSERT_EQ(buf.size(), kSize);
    ASSERT_EQ(table.register_dmabuf(0, buf, dev.fd()), SlotKind::kDmaBuf);
    const auto view = buf.map();

    guest::Memory disk(8 * kMiB);
    guest::fill(disk.data(), disk.size(), 64);
    ref.write(disk.data(), disk.size(), 0);

    struct Io {
        std::size_t buf_off;
        unsigned len;
        std::size_t disk_off;
    };
    // Every 2 MiB of the buffer is the same memory: each read is checked before the next one.
    // In passthrough every chunk is its own run, so a read across a chunk boundary spans two runs.
    const std::array<Io, 5> ios = {{
        {0, static_cast<unsigned>(kMiB), 0},
        {5 * kGiB + 12 * kKiB + 512, static_cast<unsigned>(100 * kKiB), kMiB + 512},
        {32 * kGiB + kChunk - 256 * kKiB, static_cast<unsigned>(kMiB), 2 * kMiB},
        {48 * kGiB + 7 * kChunk - 4 * kKiB, static_cast<unsigned>(8 * kKiB), 4 * kMiB},
        {kSize - kMiB, static_cast<unsigned>(kMiB), 5 * kMiB},
    }};
    for (const auto& io : ios) {
        SCOPED_TRACE("dma-buf offset " + std::to_string(io.buf_off));
        std::memset(view.data() + io.buf_off, 0, io.len);
        ASSERT_EQ(table.read(dev.fd(), 0, io.buf_off, io.len, io.disk_off),
                  static_cast<int>(io.len));
        EXPECT_EQ(std::memcmp(view.data() + io.buf_off, disk.data() + io.disk_off, io.len), 0);
    }

    // A write from the buffer's last pages and from across a chunk boundary, read back from the
    // device the ordinary way.
    guest::Memory back(kMiB);
    for (const std::size_t off : {kSize - kMiB, 16 * kGiB + kChunk - 512 * kKiB}) {
        SCOPED_TRACE("write from dma-buf offset " + std::to_string(off));
        guest::fill(view.data() + off, kMiB, off);
        ASSERT_EQ(table.write(dev.fd(), 0, off, kMiB, 6 * kMiB), static_cast<int>(kMiB));
        ref.read(back.data(), kMiB, 6 * kMiB);
        EXPECT_EQ(std::memcmp(back.data(), view.data() + off, kMiB), 0);
    }
    std::printf("[   counts ] 64 GiB dma-buf (%s): %zu reads and 2 writes verified\n",
                guest::iommu_group_type().c_str(), ios.size());
    table.clear(0);
}

TEST(Mapping, ADmaBufRequestIsAsLargeAsTheDeviceAllows) {
    const std::string q = "/sys/block/nvme0n1/queue/";
    const std::uint64_t hw_kb = guest::read_u64(q + "max_hw_sectors_kb");
    const std::uint64_t saved_kb = guest::read_u64(q + "max_sectors_kb");
    guest::write_str(q + "max_sectors_kb", std::to_string(hw_kb));
    const std::uint64_t segs = guest::read_u64(q + "max_segments");
    const std::string type = guest::iommu_group_type();
    if (type == "identity") {
        // Without an IOMMU nothing else caps the transfer: the lab's NVMe (mdts=9) allows 2 MiB,
        // more than max_segments pages, so this checks something.
        EXPECT_GT(hw_kb, segs * 4) << "the lab's NVMe should allow more than max_segments pages";
    }

    constexpr unsigned kLen = 4 * kMiB;
    BlockFile dev(guest::kDevice);
    Ring ring(4);
    BufferTable table(ring, 1);
    DmaBuf buf = DmaBuf::allocate(Exporter::kTest, kLen);
    ASSERT_EQ(table.register_dmabuf(0, buf, dev.fd()), SlotKind::kDmaBuf);

    guest::Reference ref;
    guest::Memory disk(kLen);
    guest::fill(disk.data(), kLen, 4);
    ref.write(disk.data(), kLen, 0);

    const std::uint64_t before = disk_reads();
    ASSERT_EQ(table.read(dev.fd(), 0, 0, kLen, 0), static_cast<int>(kLen));
    const std::uint64_t requests = disk_reads() - before;
    guest::write_str(q + "max_sectors_kb", std::to_string(saved_kb));
    const auto view = buf.map();
    EXPECT_EQ(std::memcmp(view.data(), disk.data(), kLen), 0);
    // One read of 4 MiB: exactly as many requests as max_hw_sectors needs.
    EXPECT_EQ(requests, (kLen / kKiB + hw_kb - 1) / hw_kb)
        << "max_hw_sectors_kb " << hw_kb << ", max_segments " << segs;
    std::printf(
        "[   counts ] %s: a 4 MiB dma-buf read took %llu requests (max_hw_sectors_kb %llu, "
        "max_segments %llu)\n",
        type.c_str(), static_cast<unsigned long long>(requests),
        static_cast<unsigned long long>(hw_kb), static_cast<unsigned long long>(segs));
    table.clear(0);
}

}  // namespace
