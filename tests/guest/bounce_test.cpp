// DMA ownership when the DMA layer bounces (issue 10): the kernel syncs only the range an I/O
// touches, so a read into one range of a dma-buf leaves every other range alone (including what
// the CPU wrote there since the last I/O), a write carries what the CPU wrote last, and reads to
// disjoint ranges in flight at once don't overwrite each other's neighbours.
//
// Meaningful in the guest-bounce boot (passthrough, swiotlb=force, DMA API debugging): there
// every mapping of a udmabuf is a bounce buffer, and DMABUFIO_EXPECT_BOUNCE=1 makes the suite
// check that it really is. In the other boots it runs as one more data-integrity test.
#include <gtest/gtest.h>
#include <sys/stat.h>

#include <chrono>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <sstream>
#include <thread>
#include <vector>

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
using guest::kKiB;
using guest::kMiB;

constexpr std::size_t kBuf = 1 * kMiB;
constexpr std::uint64_t kDisk = 512 * kMiB;  // device region the suite owns

bool expect_bounce() {
    const char* e = std::getenv("DMABUFIO_EXPECT_BOUNCE");
    return e != nullptr && std::strcmp(e, "1") == 0;
}

// Bytes of swiotlb in use (debugfs), or -1 where there is no swiotlb debugfs.
long swiotlb_used() {
    std::ifstream f("/sys/kernel/debug/swiotlb/io_tlb_used");
    long slots = -1;
    f >> slots;
    return f ? slots : -1;
}

std::vector<std::uint8_t> pattern(std::size_t n, std::uint64_t seed) {
    std::vector<std::uint8_t> v(n);
    guest::fill(v.data(), n, seed);
    return v;
}

class Bounce : public testing::Test {
  protected:
    void SetUp() override {
        guest::Memory disk(kBuf);
        guest::fill(disk.data(), kBuf, 1);
        disk_ = std::vector<std::uint8_t>(disk.data(), disk.data() + kBuf);
        ref_.write(disk.data(), kBuf, kDisk);
        // The CPU fills the buffer before registration: the mapping starts from this.
        cpu_ = pattern(kBuf, 2);
        view_ = buf_.map();
        std::memcpy(view_.data(), cpu_.data(), kBuf);
        const long before = swiotlb_used();
        ASSERT_EQ(table_.register_dmabuf(0, buf_, dev_.fd()), SlotKind::kDmaBuf);
        const long after = swiotlb_used();
        std::printf("[   counts ] swiotlb slots in use: %ld before registration, %ld after\n",
                    before, after);
        if (expect_bounce()) {
            // 1 MiB of udmabuf bounced page by page: at least 512 slots of 2 KiB.
            ASSERT_GE(after - before, static_cast<long>(kBuf / 2048))
                << "the dma-buf's mapping is not bounced: is this boot swiotlb=force?";
        }
    }

    // The CPU writes len bytes of a new pattern at off (and the model follows).
    void cpu_write(std::size_t off, std::size_t len, std::uint64_t seed) {
        auto p = pattern(len, seed);
        std::memcpy(view_.data() + off, p.data(), len);
        std::memcpy(cpu_.data() + off, p.data(), len);
    }
    // The model after a read of len bytes at disk offset doff into buffer offset off.
    void model_read(std::size_t off, std::size_t len, std::size_t doff) {
        std::memcpy(cpu_.data() + off, disk_.data() + doff, len);
    }
    // The whole buffer equals the model; names the first wrong byte.
    void expect_model(const char* when) {
        for (std::size_t i = 0; i < kBuf; i++) {
            if (view_[i] != cpu_[i]) {
                ADD_FAILURE() << when << ": byte " << i << " (" << i / kKiB
                              << " KiB) of the dma-buf is not what the CPU or the last read put "
                                 "there";
                return;
            }
        }
    }

    BlockFile dev_{guest::kDevice};
    guest::Reference ref_;
    Ring ring_{64};
    BufferTable table_{ring_, 1};
    DmaBuf buf_ = DmaBuf::allocate(Exporter::kUdmabuf, kBuf);
    std::span<std::uint8_t> view_;
    std::vector<std::uint8_t> cpu_;   // what the buffer must hold
    std::vector<std::uint8_t> disk_;  // what the device region holds
};

// A 4 KiB read at 512 KiB leaves the 64 KiB the CPU rewrote at the start untouched; a write of
// those 64 KiB then carries the CPU's data to the disk.
TEST_F(Bounce, ReadLeavesOtherRangesAndWriteCarriesTheCpusData) {
    cpu_write(0, 64 * kKiB, 3);
    ASSERT_EQ(table_.read(dev_.fd(), 0, 512 * kKiB, 4 * kKiB, kDisk + 512 * kKiB),
              static_cast<int>(4 * kKiB));
    model_read(512 * kKiB, 4 * kKiB, 512 * kKiB);
    expect_model("after a 4 KiB read at 512 KiB");

    ASSERT_EQ(table_.write(dev_.fd(), 0, 0, 64 * kKiB, kDisk + 768 * kKiB),
              static_cast<int>(64 * kKiB));
    guest::Memory back(64 * kKiB);
    ref_.read(back.data(), 64 * kKiB, kDisk + 768 * kKiB);
    EXPECT_EQ(std::memcmp(back.data(), cpu_.data(), 64 * kKiB), 0)
        << "the write did not carry what the CPU wrote last";
    expect_model("after the write");
}

// 32 reads of 4 KiB into disjoint ranges, all in flight at once, while the CPU's data lies
// between them: every range gets its read, every gap keeps the CPU's bytes.
TEST_F(Bounce, ParallelReadsToDisjointRanges) {
    constexpr std::size_t kStride = kBuf / 32;
    for (std::size_t i = 0; i < 32; i++) {
        cpu_write(i * kStride + 4 * kKiB, kStride - 4 * kKiB, 100 + i);
    }
    for (unsigned i = 0; i < 32; i++) {
        table_.prep(false, dev_.fd(), 0, i * kStride, 4 * kKiB, kDisk + (31 - i) * kStride, i);
    }
    for (unsigned i = 0; i < 32; i++) {
        auto [ud, res] = ring_.submit_and_wait_one();
        ASSERT_LT(ud, 32U);
        ASSERT_EQ(res, static_cast<int>(4 * kKiB)) << "read " << ud;
    }
    for (std::size_t i = 0; i < 32; i++) {
        model_read(i * kStride, 4 * kKiB, (31 - i) * kStride);
    }
    expect_model("after 32 parallel reads");
}

// What the CPU wrote after the last I/O survives the registration going away (the exporter's
// unmap copies the bounce buffer back).
TEST_F(Bounce, CpuDataSurvivesUnregister) {
    struct stat st {};
    ASSERT_EQ(::fstat(buf_.fd(), &st), 0);
    ASSERT_EQ(guest::attached_devices(st.st_ino), 1) << "the registration is not attached";
    ASSERT_EQ(table_.read(dev_.fd(), 0, 0, 8 * kKiB, kDisk), static_cast<int>(8 * kKiB));
    model_read(0, 8 * kKiB, 0);
    cpu_write(0, kBuf, 9);
    table_.clear(0);
    // io_uring may drop the registration a little later: wait until it has detached.
    ASSERT_TRUE(guest::wait_until([&] { return guest::attached_devices(st.st_ino) == 0; }, 10, 10))
        << "the registration did not detach from the dma-buf";
    expect_model("after unregistering");
}

}  // namespace
