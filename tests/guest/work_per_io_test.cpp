// The kernel's work per I/O, counted (dmabufio-bench's system-wide tracepoint counters).
// IommuWork: a dma-buf slot costs no map, no unmap and no IOTLB invalidation per I/O in any IOMMU
// mode, while the same reads into fixed buffers of user memory map and unmap every I/O under a DMA
// domain and, in strict mode, invalidate the IOTLB every I/O. The fixed-buffer half is what shows
// the counters count.
// Plugging: dma-buf requests submitted together are plugged and reach the driver as one batch
// (block:block_plug once a batch), as often as the same reads into fixed buffers.
// Runs in the strict, lazy and passthrough boots; the mode comes from the NVMe's IOMMU group.
#include <gtest/gtest.h>
#include <sys/wait.h>

#include <cstdio>
#include <string>

#include "guest_util.hpp"

namespace {

struct PerIo {
    double maps = -1;
    double unmaps = -1;
    double iotlb = -1;
    double plugs = -1;
    double ios = 0;
};

double field(const std::string& json, const std::string& key) {
    const std::size_t at = json.find("\"" + key + "\": ");
    if (at == std::string::npos) {
        ADD_FAILURE() << "no " << key << " in " << json;
        return -1;
    }
    const std::string rest = json.substr(at + key.size() + 4);
    if (rest.rfind("null", 0) == 0) {
        ADD_FAILURE() << key << " is null (counters unavailable): " << json;
        return -1;
    }
    return std::stod(rest);
}

PerIo bench(const std::string& buffers) {
    const std::string cmd = std::string(DMABUFIO_BENCH_BIN) + " --buffers " + buffers +
                            " -d 8 -b 4096 -r 1 --span 67108864 --json " + guest::kDevice;
    const auto [status, out] = guest::run_command(cmd);
    EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << cmd << "\n" << out;
    PerIo r;
    r.maps = field(out, "iommu_maps_per_io");
    r.unmaps = field(out, "iommu_unmaps_per_io");
    r.iotlb = field(out, "iotlb_invalidations_per_io");
    r.plugs = field(out, "plug_batches_per_io");
    r.ios = field(out, "ios");
    std::printf(
        "[   counts ] %s: %.0f I/Os; per I/O: maps %.4f, unmaps %.4f, IOTLB invalidations "
        "%.4f, plugged batches %.4f\n",
        buffers.c_str(), r.ios, r.maps, r.unmaps, r.iotlb, r.plugs);
    return r;
}

TEST(IommuWork, DmaBufSlotsNoneFixedBuffersEveryIo) {
    const std::string type = guest::iommu_group_type();
    ASSERT_FALSE(type.empty()) << "no IOMMU group for the NVMe";
    SCOPED_TRACE("iommu group type " + type);

    const PerIo dma = bench("dmabuf");
    ASSERT_GT(dma.ios, 100);
    EXPECT_EQ(dma.maps, 0);
    EXPECT_EQ(dma.unmaps, 0);
    EXPECT_EQ(dma.iotlb, 0);

    const PerIo fixed = bench("fixed");
    ASSERT_GT(fixed.ios, 100);
    if (type == "identity") {  // passthrough: DMA goes untranslated, nothing to map
        EXPECT_EQ(fixed.maps, 0);
        EXPECT_EQ(fixed.unmaps, 0);
        EXPECT_EQ(fixed.iotlb, 0);
    } else {
        // One 4 KiB page a read: one IOVA mapped and unmapped (a little more: queue bookkeeping).
        EXPECT_GE(fixed.maps, 0.99);
        EXPECT_LE(fixed.maps, 1.1);
        EXPECT_GE(fixed.unmaps, 0.99);
        EXPECT_LE(fixed.unmaps, 1.1);
        if (type == "DMA") {  // strict: every unmap invalidates the IOTLB
            EXPECT_GE(fixed.iotlb, 0.99);
        } else {  // lazy (DMA-FQ): invalidations are batched
            ASSERT_EQ(type, "DMA-FQ");
            EXPECT_LT(fixed.iotlb, 0.5);
        }
    }
}

// Without plugging, each dma-buf request went to the driver on its own (no block_plug at all) and
// nvme-pci rang one doorbell per request; the fixed reads, plugged, are the yardstick.
TEST(Plugging, DmaBufRequestsBatchLikeFixedOnes) {
    const PerIo fixed = bench("fixed");
    ASSERT_GT(fixed.ios, 100);
    // the bench submits several reads at a time: batches of more than one request
    ASSERT_GT(fixed.plugs, 0.01);
    ASSERT_LT(fixed.plugs, 0.75);

    const PerIo dma = bench("dmabuf");
    ASSERT_GT(dma.ios, 100);
    // the same batches (0.125 a read for both at queue depth 8; a partial batch at either end)
    EXPECT_NEAR(dma.plugs, fixed.plugs, fixed.plugs * 0.05);
}

}  // namespace
