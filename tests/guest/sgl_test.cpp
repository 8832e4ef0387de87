// How nvme-pci describes a dma-buf token request to the controller: SGLs for requests of at least
// sgl_threshold bytes (the emulated controller supports SGLs), PRPs below. The same token reads,
// of 4, 28, 32 and 128 KiB at offsets that are not page aligned in the dma-buf, are verified with
// the threshold at 0 (never SGLs), 4 KiB (always SGLs) and its default of 32 KiB (both). Which
// one the driver picked can't be seen from here (the nvme_setup_cmd trace event fires before the
// data pointer is built), so what this checks is that both constructions move the right bytes.
#include <gtest/gtest.h>

#include <array>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <string>
#include <utility>

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

constexpr std::uint64_t kDisk = 520 * kMiB;  // device region the suite owns
constexpr std::size_t kBuf = 512 * kKiB;
const std::string kThreshold = "/sys/module/nvme/parameters/sgl_threshold";

std::string read_threshold() {
    std::ifstream f(kThreshold);
    std::string v;
    f >> v;
    if (!f) {
        throw std::runtime_error("cannot read " + kThreshold);
    }
    return v;
}

// Puts the threshold back however the test ends, so that a failed assertion doesn't change how
// the later tests of the boot build their commands.
struct ThresholdRestore {
    std::string saved;
    explicit ThresholdRestore(std::string s) : saved(std::move(s)) {}
    ThresholdRestore(const ThresholdRestore&) = delete;
    ThresholdRestore& operator=(const ThresholdRestore&) = delete;
    ThresholdRestore(ThresholdRestore&&) = delete;
    ThresholdRestore& operator=(ThresholdRestore&&) = delete;
    ~ThresholdRestore() {
        try {
            guest::write_str(kThreshold, saved);
        } catch (const std::exception& e) {
            std::fprintf(stderr, "cannot restore %s: %s\n", kThreshold.c_str(), e.what());
        }
    }
};

TEST(Sgl, TokenReadsWithPrpsAndSgls) {
    const std::string saved = read_threshold();
    ASSERT_EQ(saved, "32768") << "the lab runs nvme with its default sgl_threshold";
    const ThresholdRestore restore{saved};
    guest::Reference ref;
    BlockFile dev(guest::kDevice);
    Ring ring(8);
    BufferTable table(ring, 1);
    DmaBuf buf = DmaBuf::allocate(Exporter::kUdmabuf, kBuf);
    ASSERT_EQ(table.register_dmabuf(0, buf, dev.fd()), SlotKind::kDmaBuf);
    const auto view = buf.map();

    struct Io {
        std::size_t buf_off;
        std::size_t len;
    };
    // dma-buf offsets 512 bytes past a page: the first PRP has an offset, SGLs start mid-page
    const std::array<Io, 4> ios = {{{512, 4 * kKiB},
                                    {16 * kKiB + 512, 28 * kKiB},
                                    {64 * kKiB + 512, 32 * kKiB},
                                    {128 * kKiB + 512, 128 * kKiB}}};
    int reads = 0;
    for (const char* threshold : {"0", "4096", "32768"}) {
        SCOPED_TRACE(std::string("sgl_threshold=") + threshold);
        guest::write_str(kThreshold, threshold);
        guest::Memory disk(kBuf);
        guest::fill(disk.data(), kBuf, std::strtoull(threshold, nullptr, 10) + 1);
        ref.write(disk.data(), kBuf, kDisk);
        std::memset(view.data(), 0, kBuf);
        for (const auto& io : ios) {
            ASSERT_EQ(table.read(dev.fd(), 0, io.buf_off, io.len, kDisk + io.buf_off),
                      static_cast<int>(io.len));
            EXPECT_EQ(std::memcmp(view.data() + io.buf_off, disk.data() + io.buf_off, io.len), 0)
                << io.len / kKiB << " KiB at " << io.buf_off;
            reads++;
        }
    }
    std::printf("[   counts ] token reads verified across sgl_threshold 0/4096/32768: %d\n", reads);
    EXPECT_EQ(reads, 12);
}

}  // namespace
