// Kernel events counted system-wide while a benchmark runs: perf tracepoint counters on every CPU.
// The IOMMU work: iommu:map and iommu:unmap (one per contiguous IOVA range mapped or unmapped: a
// whole request's scatterlist may be one) and the Intel IOMMU's IOTLB flushes
// (intel_iommu:cache_tag_flush_range, cache_tag_flush_range_np and cache_tag_flush_all; a lazy-mode
// flush of the whole domain counts once). And block:block_plug: one per batch of requests that a
// submitter plugged, which blk-mq hands to the driver together (one doorbell for the batch). Needs
// root, CONFIG_PERF_EVENTS and tracefs (/sys/kernel/tracing or under debugfs).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "dmabufio/fd.hpp"

namespace dmabufio::bench {

struct TraceCounts {
    std::uint64_t maps = 0;
    std::uint64_t unmaps = 0;
    std::uint64_t iotlb_invalidations = 0;
    std::uint64_t plug_batches = 0;
};

class TraceCounters {
  public:
    // Opens and starts the counters. If they can't be opened, available() is false and why()
    // says what is missing; read() then gives zeros.
    TraceCounters();
    [[nodiscard]] bool available() const noexcept { return why_.empty(); }
    [[nodiscard]] const std::string& why() const noexcept { return why_; }
    // The counts since the constructor.
    [[nodiscard]] TraceCounts read() const;

  private:
    struct Event {
        int kind = 0;  // 0 map, 1 unmap, 2 IOTLB invalidation, 3 plug batch
        std::vector<Fd> per_cpu;
    };
    std::vector<Event> events_;
    std::string why_;
};

}  // namespace dmabufio::bench
