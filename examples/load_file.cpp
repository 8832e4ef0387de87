// Loads a file (an NVMe block device; the whole of it, or LEN bytes at OFFSET) into a dma-buf
// through a registered dma-buf slot, QD reads of 1 MiB in flight, and prints the bandwidth and an
// FNV-1a hash of what arrived. Usage: load_file DEV [LEN [OFFSET [QD]]]
#include <algorithm>
#include <chrono>
#include <cinttypes>
#include <cstdio>
#include <cstdlib>
#include <dmabufio/buffer_table.hpp>
#include <dmabufio/dmabuf.hpp>
#include <dmabufio/error.hpp>
#include <dmabufio/file.hpp>
#include <dmabufio/ring.hpp>
#include <string>
#include <vector>

int main(int argc, char** argv) {
    if (argc < 2) {
        std::fprintf(stderr, "usage: load_file DEV [LEN [OFFSET [QD]]]\n");
        return 2;
    }
    try {
        dmabufio::BlockFile dev(argv[1]);
        const std::uint64_t len = argc > 2 ? std::stoull(argv[2], nullptr, 0) : dev.size();
        const std::uint64_t base = argc > 3 ? std::stoull(argv[3], nullptr, 0) : 0;
        const unsigned qd = argc > 4 ? std::stoul(argv[4]) : 8;
        constexpr std::uint64_t kChunk = 1 << 20;
        auto buf = dmabufio::DmaBuf::allocate(dmabufio::Exporter::kHeap, len);
        dmabufio::Ring ring(qd);
        dmabufio::BufferTable table(ring, 1);
        table.register_dmabuf(0, buf, dev.fd());

        const auto start = std::chrono::steady_clock::now();
        std::uint64_t queued = 0;
        std::uint64_t done = 0;
        unsigned in_flight = 0;
        std::vector<dmabufio::Completion> cqes(qd);
        while (done < len) {
            for (; queued < len && in_flight < qd; queued += kChunk, in_flight++) {
                const auto n = static_cast<unsigned>(std::min(kChunk, len - queued));
                table.prep(false, dev.fd(), 0, queued, n, base + queued, n);  // user_data: size
            }
            const unsigned got = ring.reap(cqes, 1);
            for (unsigned i = 0; i < got; i++) {
                if (cqes[i].res != static_cast<int>(cqes[i].user_data)) {  // error or short
                    dmabufio::throw_error(cqes[i].res < 0 ? cqes[i].res : EIO, "read",
                                          dmabufio::io_advice(-cqes[i].res));
                }
                done += cqes[i].user_data;
            }
            in_flight -= got;
        }
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
