// Compat mode (SlotKind::kCompat), in the guest-iopoll boot only (the Library* filter; excluded
// from the IOMMU-mode boots): it doesn't depend on the IOMMU mode, and it brackets CPU access to
// system-heap dma-bufs, which DMA API debugging can't follow there (tests/guest/CMakeLists.txt).
//
// Compat mode is the path a kernel without the series takes: ordinary O_DIRECT fixed-buffer I/O
// into host staging memory, then a copy through the dma-buf's CPU mapping. It is set up
// explicitly here (this kernel has the series, so register_dmabuf() would not fall back; the
// host unit test checks that choice on a kernel without it), and the test checks that the
// dma-buf is never attached to the NVMe: no dma-buf registration is involved.
// Device region: [1 GiB + 64 MiB, 1 GiB + 96 MiB).
#include <gtest/gtest.h>
#include <sys/stat.h>

#include <cstdint>
#include <cstdio>
#include <cstring>
#include <future>
#include <string>
#include <vector>

#include "dmabufio/buffer_table.hpp"
#include "dmabufio/dmabuf.hpp"
#include "dmabufio/error.hpp"
#include "dmabufio/file.hpp"
#include "dmabufio/ring.hpp"
#include "dmabufio/transfer.hpp"
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

constexpr std::uint64_t kCompatBase = kGiB + 64 * kMiB;

ino_t inode(const DmaBuf& buf) {
    struct stat st {};
    EXPECT_EQ(::fstat(buf.fd(), &st), 0);
    return st.st_ino;
}

// Every exporter the lab has, explicitly in compat mode with 256 KiB of staging (so that reads and
// writes of a few MiB go through it in many pieces): the synchronous helpers and the large
// transfers move the right bytes to the right places, and leave the rest of the dma-buf alone;
// the test exporter MOVEs between read and write, and the copy follows its new pages.
TEST(LibraryCompat, ReadsAndWritesThroughStagingMemoryAreVerified) {
    constexpr std::size_t kLen = 3 * kMiB + 12 * kKiB;  // not a multiple of the staging
    constexpr std::size_t kBuf = 4 * kMiB;
    BlockFile dev(guest::kDevice);
    const guest::Reference ref;
    guest::Memory expect(kLen);
    guest::fill(expect.data(), kLen, 501);
    ref.write(expect.data(), kLen, kCompatBase);
    for (Exporter e : {Exporter::kUdmabuf, Exporter::kHeap, Exporter::kTest}) {
        SCOPED_TRACE(dmabufio::to_string(e));
        DmaBuf buf = DmaBuf::allocate(e, kBuf);
        buf.begin_cpu_access(true);
        std::memset(buf.map().data(), 0x5a, kBuf);
        buf.end_cpu_access(true);
        Ring ring(16);
        BufferTable table(ring, 2);
        ASSERT_EQ(table.register_dmabuf_compat(0, buf, 256 * kKiB), SlotKind::kCompat);
        EXPECT_EQ(table.staging_bytes(0), 256 * kKiB);
        EXPECT_EQ(guest::attached_devices(inode(buf)), 0) << "compat mode attached the dma-buf";

        // Synchronous: kLen bytes into the dma-buf at 4 KiB, in 256 KiB pieces.
        ASSERT_EQ(table.read(dev.fd(), 0, 4 * kKiB, kLen, kCompatBase), static_cast<int>(kLen));
        buf.begin_cpu_access(false);
        EXPECT_EQ(std::memcmp(buf.map().data() + 4 * kKiB, expect.data(), kLen), 0);
        const std::vector<std::uint8_t> untouched(4 * kKiB, 0x5a);
        EXPECT_EQ(std::memcmp(buf.map().data(), untouched.data(), 4 * kKiB), 0);
        EXPECT_EQ(std::memcmp(buf.map().data() + 4 * kKiB + kLen, untouched.data(), 4 * kKiB), 0);
        buf.end_cpu_access(false);

        // A large transfer, four requests in flight (each in its own 64 KiB of the staging).
        buf.begin_cpu_access(true);
        std::memset(buf.map().data(), 0, kBuf);
        buf.end_cpu_access(true);
        if (e == Exporter::kTest) {
            buf.move();  // new pages: the slot's own mapping must copy into them
        }
        const dmabufio::TransferOptions o{.queue_depth = 4};
        EXPECT_EQ(dmabufio::read(table, dev, 0, 0, kCompatBase, kLen, o).get(), kLen);
        if (e == Exporter::kTest) {
            buf.move();  // and again, contents kept, before the writes copy out of them
        }
        buf.begin_cpu_access(true);
        EXPECT_EQ(std::memcmp(buf.map().data(), expect.data(), kLen), 0);
        guest::fill(buf.map().data(), kLen, 503);
        buf.end_cpu_access(true);

        // And back: synchronous and large writes carry the CPU's bytes to the device.
        EXPECT_EQ(dmabufio::write(table, dev, 0, 0, kCompatBase + 8 * kMiB, kLen, o).get(), kLen);
        ASSERT_EQ(table.write(dev.fd(), 0, 0, kLen, kCompatBase + 16 * kMiB),
                  static_cast<int>(kLen));
        guest::Memory back(kLen);
        buf.begin_cpu_access(false);
        for (std::uint64_t at : {kCompatBase + 8 * kMiB, kCompatBase + 16 * kMiB}) {
            ref.read(back.data(), kLen, at);
            EXPECT_EQ(std::memcmp(back.data(), buf.map().data(), kLen), 0) << "at " << at;
        }
        buf.end_cpu_access(false);
        EXPECT_EQ(guest::attached_devices(inode(buf)), 0) << "compat mode attached the dma-buf";

        // The check above can fail: a real registration of the same dma-buf attaches the NVMe.
        ASSERT_EQ(table.register_dmabuf(1, buf, dev.fd()), SlotKind::kDmaBuf);
        EXPECT_EQ(guest::attached_devices(inode(buf)), 1);
        table.clear(1);
        table.clear(0);
    }
}

// Errors in compat mode keep their errno: a read past the end of the device is short, then 0
// bytes (a large read ending there is EIO after the bytes before the end were copied); a
// misaligned one is EINVAL; ranges outside the dma-buf are EFAULT before any I/O.
TEST(LibraryCompat, ErrorsAreTheOrdinaryPathsAndNothingIsCopiedOutOfRange) {
    BlockFile dev(guest::kDevice);
    DmaBuf buf = DmaBuf::allocate(Exporter::kHeap, kMiB);
    Ring ring(4);
    BufferTable table(ring, 1);
    ASSERT_EQ(table.register_dmabuf_compat(0, buf), SlotKind::kCompat);
    EXPECT_EQ(table.staging_bytes(0), kMiB);  // min(dma-buf size, 4 MiB)
    const std::uint64_t end = dev.size();
    EXPECT_EQ(table.read(dev.fd(), 0, 0, 64 * kKiB, end - 16 * kKiB), static_cast<int>(16 * kKiB));
    EXPECT_EQ(table.read(dev.fd(), 0, 0, 64 * kKiB, end), 0);
    EXPECT_EQ(table.read(dev.fd(), 0, 0, 4 * kKiB + 1, kCompatBase), -EINVAL);
    EXPECT_EQ(table.read(dev.fd(), 0, kMiB - 4 * kKiB, 8 * kKiB, kCompatBase), -EFAULT);
    EXPECT_EQ(table.write(dev.fd(), 0, kMiB, 4 * kKiB, kCompatBase), -EFAULT);
    try {
        table.compat_copy(0, 0, kMiB - 4 * kKiB, 8 * kKiB, true);
        ADD_FAILURE() << "copied past the end of the dma-buf";
    } catch (const dmabufio::Error& err) {
        EXPECT_EQ(err.err(), EFAULT);
    }
    auto expect_throw = [](std::future<std::uint64_t> f, int errnum) {
        try {
            f.get();
            ADD_FAILURE() << "the transfer succeeded";
        } catch (const dmabufio::Error& err) {
            EXPECT_EQ(err.err(), errnum) << err.what();
        }
    };
    expect_throw(dmabufio::read(table, dev, 0, 4 * kKiB, kCompatBase, kMiB), EFAULT);
    // The device's last 256 KiB then its end: EIO, and the 256 KiB are in the dma-buf.
    guest::Memory tail(256 * kKiB);
    guest::Reference().read(tail.data(), 256 * kKiB, end - 256 * kKiB);
    expect_throw(dmabufio::read(table, dev, 0, 0, end - 256 * kKiB, kMiB, {.queue_depth = 4}), EIO);
    buf.begin_cpu_access(false);
    EXPECT_EQ(std::memcmp(buf.map().data(), tail.data(), 256 * kKiB), 0);
    buf.end_cpu_access(false);
}

}  // namespace
