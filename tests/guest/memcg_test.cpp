// Memory cgroup charging (issue 10): the mapping's metadata (its table of runs of contiguous DMA
// addresses, 24 bytes a run) is charged to the memory cgroup of the task that registered the
// dma-buf, at registration and again when a worker re-creates the mapping after a move, although
// the I/O that triggers the re-map comes from a task in another cgroup. Passthrough boot only: with
// an IOMMU a dma-buf is a few runs whatever its size, too little to see in memory.current; without
// one the test exporter's repeating buffer is exactly one run per 2 MiB chunk.
#include <gtest/gtest.h>

#include <cstdio>
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
using dmabufio::Ring;
using dmabufio::SlotKind;
using guest::kGiB;
using guest::kKiB;
using guest::kMiB;

TEST(Memcg, RemapAfterMoveIsChargedToTheRegisteringCgroup) {
    const std::string type = guest::iommu_group_type();
    ASSERT_EQ(type, "identity") << "runs in the passthrough boot, not " << type;
    // 64 GiB of one repeated 2 MiB chunk: 32768 runs of 24 bytes (struct dma_buf_io_seg). Charges
    // are counted in pages and per-CPU stocks of 64 pages, so expect at least three quarters.
    constexpr std::size_t kSize = 64 * kGiB;
    constexpr auto kArray = static_cast<long long>(kSize / (2 * kMiB)) * 24;
    constexpr long long kMin = kArray * 3 / 4;

    // Everything but the registration happens outside the group.
    BlockFile dev(guest::kDevice);
    Ring ring(4);
    BufferTable table(ring, 1);
    DmaBuf buf = guest::repeating_dmabuf(kSize);

    guest::Cgroup group;
    const long long before = guest::memory_current();
    ASSERT_GE(before, 0) << "no memory.current in " << guest::kCgroup;
    ASSERT_EQ(table.register_dmabuf(0, buf, dev.fd()), SlotKind::kDmaBuf);
    const long long registered = guest::memory_current();
    guest::Cgroup::leave();
    EXPECT_GE(registered - before, kMin) << "registration not charged to the registering cgroup";
    // The metadata target (issue 14): at most 64 KiB per GiB registered.
    EXPECT_LE(registered - before, static_cast<long long>(kSize / kGiB * 64 * kKiB))
        << "the mapping's metadata exceeds 64 KiB per GiB";

    // A move invalidates the mapping: its run table is freed and uncharged.
    guest::test_exporter_move(buf.fd());
    const long long moved = guest::wait_memory([&](long long v) { return registered - v >= kMin; });
    EXPECT_GE(registered - moved, kMin) << "invalidation did not uncharge the mapping";

    // The next I/O (from this task, now in the root cgroup) makes a worker re-map.
    ASSERT_EQ(table.read(dev.fd(), 0, 0, 4 * kKiB, 0), static_cast<int>(4 * kKiB));
    const long long remapped = guest::wait_memory([&](long long v) { return v - moved >= kMin; });
    EXPECT_GE(remapped - moved, kMin) << "the re-map was not charged to the registering cgroup";
    std::printf(
        "[   counts ] memcg: registration +%lld KiB, move -%lld KiB, re-map +%lld KiB "
        "(run table %lld KiB)\n",
        (registered - before) / 1024, (registered - moved) / 1024, (remapped - moved) / 1024,
        kArray / 1024);
    table.clear(0);
}

}  // namespace
