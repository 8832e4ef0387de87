// Loads a file (an NVMe block device; the whole of it, or LEN bytes at OFFSET) into a dma-buf
// through a registered dma-buf slot with one large read (QD requests in flight, each as large as
// the device takes), and prints the bandwidth and an FNV-1a hash of what arrived.
// Usage: load_file DEV [LEN [OFFSET [QD]]]
#include <chrono>
#include <cinttypes>
#include <cstdio>
#include <cstdlib>
#include <dmabufio/buffer_table.hpp>
#include <dmabufio/dmabuf.hpp>
#include <dmabufio/error.hpp>
#include <dmabufio/file.hpp>
#include <dmabufio/ring.hpp>
#include <dmabufio/transfer.hpp>
#include <string>

int main(int argc, char** argv) {
    if (argc < 2) {
        std::fprintf(stderr, "usage: load_file DEV [LEN [OFFSET [QD]]]\n");
        return 2;
    }
    try {
        const dmabufio::BlockFile dev(argv[1], dmabufio::Access::kReadOnly);
        const std::uint64_t len = argc > 2 ? std::stoull(argv[2], nullptr, 0) : dev.size();
        const std::uint64_t base = argc > 3 ? std::stoull(argv[3], nullptr, 0) : 0;
        const unsigned qd = argc > 4 ? std::stoul(argv[4]) : 8;
        auto buf = dmabufio::DmaBuf::allocate(dmabufio::Exporter::kHeap, len);
        dmabufio::Ring ring(qd);
        dmabufio::BufferTable table(ring, 1);
        table.register_dmabuf(0, buf, dev.fd());

        const auto start = std::chrono::steady_clock::now();
        // One call: split at the device's largest request, qd requests in flight.
        dmabufio::read(table, dev, 0, 0, base, len, {.queue_depth = qd}).get();
        const std::chrono::duration<double> secs = std::chrono::steady_clock::now() - start;

        buf.begin_cpu_access(false);
        std::uint64_t h = 0xcbf29ce484222325ULL;  // FNV-1a 64
        for (const std::uint8_t b : buf.map()) {
            h = (h ^ b) * 0x100000001b3ULL;
        }
        buf.end_cpu_access(false);
        std::printf("loaded %" PRIu64 " bytes in %.3f s: %.1f MiB/s; fnv1a64 %016" PRIx64 "\n", len,
                    secs.count(), static_cast<double>(len) / secs.count() / (1 << 20), h);
    } catch (const dmabufio::Error& e) {
        std::fprintf(stderr, "load_file: %s\n", e.what());
        return 1;
    }
    return 0;
}
