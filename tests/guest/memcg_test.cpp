// Memory cgroup charging (issue 10): the mapping's metadata (nvme-pci's DMA address array, 8 bytes
// per 4 KiB page) is charged to the memory cgroup of the task that registered the dma-buf, at
// registration and again when a worker re-creates the mapping after a move, although the I/O that
// triggers the re-map comes from a task in another cgroup. Strict boot only: it does not depend
// on the IOMMU mode.
#include <gtest/gtest.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <fstream>
#include <stdexcept>
#include <string>
#include <thread>

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
using guest::kGiB;
using guest::kKiB;
using guest::kMiB;

constexpr const char* kRoot = "/sys/fs/cgroup";
constexpr const char* kGroup = "/sys/fs/cgroup/dmabufio-memcg";

long long memory_current() {
    std::ifstream in(std::string(kGroup) + "/memory.current");
    long long v = -1;
    in >> v;
    return v;
}

// A child cgroup with the memory controller; the constructor moves this process into it, leave()
// moves it back to the root (and so does the destructor, which also removes the group).
class Cgroup {
  public:
    Cgroup() {
        if (::access((std::string(kRoot) + "/cgroup.controllers").c_str(), F_OK) != 0 &&
            ::mount("none", kRoot, "cgroup2", 0, nullptr) != 0) {
            throw std::runtime_error("cannot mount cgroup2 on /sys/fs/cgroup");
        }
        guest::write_str(std::string(kRoot) + "/cgroup.subtree_control", "+memory");
        ::rmdir(kGroup);
        if (::mkdir(kGroup, 0755) != 0) {
            throw std::runtime_error("cannot create " + std::string(kGroup));
        }
        guest::write_str(std::string(kGroup) + "/cgroup.procs", std::to_string(::getpid()));
    }
    Cgroup(const Cgroup&) = delete;
    Cgroup& operator=(const Cgroup&) = delete;
    ~Cgroup() {
        try {
            leave();
        } catch (...) {  // NOLINT(bugprone-empty-catch): best effort in a destructor
        }
        ::rmdir(kGroup);
    }
    static void leave() {
        guest::write_str(std::string(kRoot) + "/cgroup.procs", std::to_string(::getpid()));
    }
};

// Polls memory.current until pred holds (charges and uncharges may lag a little: kvfree of a
// vmalloc'ed array, per-CPU charge stocks); returns the last value read.
template <typename Pred>
long long wait_memory(Pred pred) {
    long long v = -1;
    guest::wait_until(
        [&] {
            v = memory_current();
            return pred(v);
        },
        5, 50);
    return v;
}

TEST(Memcg, RemapAfterMoveIsChargedToTheRegisteringCgroup) {
    constexpr std::size_t kSize = kGiB;
    // nvme-pci's DMA address array: 8 bytes per 4 KiB page. Charges are counted in pages and
    // per-CPU stocks of 64 pages, so expect at least three quarters of it.
    constexpr auto kArray = static_cast<long long>(kSize / (4 * kKiB)) * 8;
    constexpr long long kMin = kArray * 3 / 4;

    // Everything but the registration happens outside the group.
    BlockFile dev(guest::kDevice);
    Ring ring(4);
    BufferTable table(ring, 1);
    DmaBuf buf = DmaBuf::allocate(Exporter::kTest, kSize);

    Cgroup group;
    const long long before = memory_current();
    ASSERT_GE(before, 0) << "no memory.current in " << kGroup;
    ASSERT_EQ(table.register_dmabuf(0, buf, dev.fd()), SlotKind::kDmaBuf);
    const long long registered = memory_current();
    Cgroup::leave();
    EXPECT_GE(registered - before, kMin) << "registration not charged to the registering cgroup";

    // A move invalidates the mapping: its array is freed and uncharged.
    buf.move();
    const long long moved = wait_memory([&](long long v) { return registered - v >= kMin; });
    EXPECT_GE(registered - moved, kMin) << "invalidation did not uncharge the mapping";

    // The next I/O (from this task, now in the root cgroup) makes a worker re-map.
    ASSERT_EQ(table.read(dev.fd(), 0, 0, 4 * kKiB, 0), static_cast<int>(4 * kKiB));
    const long long remapped = wait_memory([&](long long v) { return v - moved >= kMin; });
    EXPECT_GE(remapped - moved, kMin) << "the re-map was not charged to the registering cgroup";
    std::printf(
        "[   counts ] memcg: registration +%lld KiB, move -%lld KiB, re-map +%lld KiB "
        "(address array %lld KiB)\n",
        (registered - before) / 1024, (registered - moved) / 1024, (remapped - moved) / 1024,
        kArray / 1024);
    table.clear(0);
}

}  // namespace
