#include "trace_counters.hpp"

#include <linux/perf_event.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <array>
#include <cerrno>
#include <cstring>
#include <fstream>

namespace dmabufio::bench {
namespace {

// The tracepoint's id from tracefs, or -1.
long tracepoint_id(const std::string& event) {
    for (const char* root : {"/sys/kernel/tracing/events/", "/sys/kernel/debug/tracing/events/"}) {
        std::ifstream f(std::string(root) + event + "/id");
        long id = -1;
        if (f >> id) {
            return id;
        }
    }
    return -1;
}

}  // namespace

TraceCounters::TraceCounters() {
    struct Want {
        const char* event;
        int kind;
        bool optional;
    };
    // intel_iommu/cache_tag_flush_all exists up to 6.x; 7.3 flushes everything through
    // cache_tag_flush_range, which is counted already.
    const std::array<Want, 6> wants{{{"iommu/map", 0, false},
                                     {"iommu/unmap", 1, false},
                                     {"intel_iommu/cache_tag_flush_range", 2, false},
                                     {"intel_iommu/cache_tag_flush_range_np", 2, false},
                                     {"intel_iommu/cache_tag_flush_all", 2, true},
                                     {"block/block_plug", 3, false}}};
    const long cpus = ::sysconf(_SC_NPROCESSORS_ONLN);
    for (const Want& w : wants) {
        const long id = tracepoint_id(w.event);
        if (id < 0 && w.optional) {
            continue;
        }
        if (id < 0) {
            why_ = std::string("no tracepoint ") + w.event + " in tracefs";
            events_.clear();
            return;
        }
        Event e;
        e.kind = w.kind;
        for (long cpu = 0; cpu < cpus; cpu++) {
            perf_event_attr attr{};
            attr.type = PERF_TYPE_TRACEPOINT;
            attr.size = sizeof(attr);
            attr.config = static_cast<std::uint64_t>(id);
            const long fd = ::syscall(SYS_perf_event_open, &attr, -1, static_cast<int>(cpu), -1,
                                      PERF_FLAG_FD_CLOEXEC);
            if (fd < 0) {
                why_ = std::string("perf_event_open ") + w.event + ": " + std::strerror(errno);
                events_.clear();
                return;
            }
            e.per_cpu.emplace_back(static_cast<int>(fd));
        }
        events_.push_back(std::move(e));
    }
}

TraceCounts TraceCounters::read() const {
    TraceCounts c;
    for (const Event& e : events_) {
        std::uint64_t sum = 0;
        for (const Fd& fd : e.per_cpu) {
            std::uint64_t v = 0;
            if (::read(fd.get(), &v, sizeof(v)) == static_cast<ssize_t>(sizeof(v))) {
                sum += v;
            }
        }
        switch (e.kind) {
            case 0:
                c.maps += sum;
                break;
            case 1:
                c.unmaps += sum;
                break;
            case 2:
                c.iotlb_invalidations += sum;
                break;
            default:
                c.plug_batches += sum;
                break;
        }
    }
    return c;
}

}  // namespace dmabufio::bench
