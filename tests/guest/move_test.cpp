// The test exporter (/dev/dmabuf_test) and invalidation under I/O: dma-buf slots keep working,
// byte for byte, while the exporter MOVEs the buffer (move_notify, fence, re-map) underneath.
#include <gtest/gtest.h>

#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <thread>
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
using guest::kKiB;
using guest::kMiB;

int create_errno(std::size_t size) {
    try {
        DmaBuf::allocate(Exporter::kTest, size);
        return 0;
    } catch (const dmabufio::Error& e) {
        return e.err();
    }
}

TEST(TestExporter, BadCreateAndMoveAreRefused) {
    EXPECT_EQ(create_errno(0), EINVAL);
    EXPECT_EQ(create_errno(4097), EINVAL);
    DmaBuf udma = DmaBuf::allocate(Exporter::kUdmabuf, 64 * kKiB);
    DmaBuf fake(dmabufio::Fd(::dup(udma.fd())), udma.size(), Exporter::kTest);
    try {
        fake.move();
        FAIL() << "MOVE of a udmabuf succeeded";
    } catch (const dmabufio::Error& e) {
        EXPECT_EQ(e.err(), EINVAL);
    }
}

TEST(TestExporter, ContentsSurviveMoves) {
    DmaBuf buf = DmaBuf::allocate(Exporter::kTest, kMiB);
    auto view = buf.map();
    guest::Memory expect(kMiB);
    guest::fill(expect.data(), kMiB, 99);
    std::memcpy(view.data(), expect.data(), kMiB);
    for (int i = 0; i < 20; i++) {
        buf.move();
        ASSERT_EQ(std::memcmp(buf.map().data(), expect.data(), kMiB), 0) << "after move " << i;
    }
}

// Two I/O threads (each its own ring and registration of the same dma-buf) do verified random
// I/O while a third MOVEs the buffer every couple of milliseconds. Reads land in per-thread
// scratch areas and are compared with what the device holds; writes send the dma-buf's constant
// pattern area to the device, so the device region must still equal the pattern at the end.
TEST(MoveUnderIo, EveryIoSucceedsAndVerifiesWhileMoving) {
    constexpr std::size_t kPattern = 2 * kMiB;      // dma-buf [0, 2 MiB): constant pattern
    constexpr std::size_t kScratch = 1 * kMiB;      // per thread, after the pattern
    constexpr std::uint64_t kDevBase = 512 * kMiB;  // device region holding the pattern
    constexpr unsigned kThreads = 2;
    constexpr unsigned kDepth = 8;
    constexpr std::size_t kMaxIo = kScratch / kDepth;  // 128 KiB
    const auto runtime = std::chrono::seconds(20);

    BlockFile dev(guest::kDevice);
    guest::Reference ref;
    DmaBuf buf = DmaBuf::allocate(Exporter::kTest, kPattern + kThreads * kScratch);
    guest::Memory pattern(kPattern);
    guest::fill(pattern.data(), kPattern, 2024);
    std::memcpy(buf.map().data(), pattern.data(), kPattern);
    ref.write(pattern.data(), kPattern, kDevBase);

    std::atomic<bool> stop{false};
    std::atomic<std::uint64_t> ios{0};
    std::atomic<std::uint64_t> verified{0};
    std::atomic<std::uint64_t> moves{0};
    std::vector<std::string> failures(kThreads);

    auto io_thread = [&](unsigned t) {
        try {
            Ring ring(kDepth);
            BufferTable table(ring, 1);
            table.register_dmabuf(0, buf, dev.fd());
            std::mt19937_64 gen(t + 1);
            const std::size_t scratch = kPattern + t * kScratch;
            while (!stop.load()) {
                struct Io {
                    std::size_t off = 0, len = 0;
                    bool write = false;
                };
                std::vector<Io> batch(kDepth);
                for (unsigned i = 0; i < kDepth; i++) {
                    const std::size_t len = (1 + gen() % (kMaxIo / (4 * kKiB))) * 4 * kKiB;
                    const std::size_t off = (gen() % ((kPattern - len) / (4 * kKiB))) * 4 * kKiB;
                    const bool write = gen() % 2 == 0;
                    // A write sends pattern bytes to where they already are; a read fetches them
                    // into this slot of the scratch area.
                    table.prep(write, dev.fd(), 0, write ? off : scratch + i * kMaxIo,
                               static_cast<unsigned>(len), kDevBase + off, i);
                    batch[i] = {off, len, write};
                }
                for (unsigned i = 0; i < kDepth; i++) {
                    auto [ud, res] = ring.submit_and_wait_one();
                    if (ud >= kDepth || res < 0 || static_cast<std::size_t>(res) != batch[ud].len) {
                        failures[t] =
                            "I/O " + std::to_string(ud) + " returned " + std::to_string(res);
                        stop = true;
                        return;
                    }
                    ios++;
                }
                auto view = buf.map();
                for (unsigned i = 0; i < kDepth; i++) {
                    if (batch[i].write) {
                        continue;
                    }
                    if (std::memcmp(view.data() + scratch + i * kMaxIo,
                                    pattern.data() + batch[i].off, batch[i].len) != 0) {
                        failures[t] = "read " + std::to_string(i) + " did not verify";
                        stop = true;
                        return;
                    }
                    verified += batch[i].len;
                }
            }
        } catch (const std::exception& e) {
            failures[t] = e.what();
            stop = true;
        }
    };
    std::vector<std::thread> threads;
    for (unsigned t = 0; t < kThreads; t++) {
        threads.emplace_back(io_thread, t);
    }
    const auto deadline = std::chrono::steady_clock::now() + runtime;
    while (!stop.load() && std::chrono::steady_clock::now() < deadline) {
        buf.move();
        moves++;
        std::this_thread::sleep_for(std::chrono::milliseconds(moves % 16 == 0 ? 0 : 2));
    }
    stop = true;
    for (auto& th : threads) {
        th.join();
    }
    for (const auto& f : failures) {
        EXPECT_EQ(f, "");
    }
    guest::Memory back(kPattern);
    ref.read(back.data(), kPattern, kDevBase);
    EXPECT_EQ(std::memcmp(back.data(), pattern.data(), kPattern), 0) << "device region changed";
    EXPECT_EQ(std::memcmp(buf.map().data(), pattern.data(), kPattern), 0)
        << "dma-buf pattern changed";
    std::printf("[          ] moves %llu, I/Os %llu, bytes verified %llu\n",
                static_cast<unsigned long long>(moves.load()),
                static_cast<unsigned long long>(ios.load()),
                static_cast<unsigned long long>(verified.load()));
    EXPECT_GT(moves.load(), 100U);
    EXPECT_GT(ios.load(), 100U);
}

}  // namespace
