// Device memory: the test exporter's VRAM (vm/run --vram: QEMU's ivshmem-plain, whose BAR is PCI
// peer-to-peer memory to the guest) read from and written to NVMe through registered dma-bufs,
// evicted to system memory and restored under I/O, and its device removed with registrations
// live. VramHost leaves what it moved in the BAR for tests/guest/vram-host-check, which compares
// it with the NVMe image on the host after the guest is gone.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <string>
#include <thread>
#include <vector>

#include "dmabufio/buffer_table.hpp"
#include "dmabufio/dmabuf.hpp"
#include "dmabufio/error.hpp"
#include "dmabufio/ring.hpp"
#include "guest_util.hpp"

namespace {

using dmabufio::BufferTable;
using dmabufio::DmaBuf;
using dmabufio::Exporter;
using dmabufio::Fd;
using dmabufio::Ring;
using dmabufio::SlotKind;
using guest::kKiB;
using guest::kMiB;
using guest::VerifiedRounds;

struct Placement {
    bool in_vram = false;
    std::uint64_t offset = 0;  // in the BAR
};

// DMABUF_TEST_IOCTL_INFO: where the buffer is now.
Placement placement(const DmaBuf& buf) {
    const Fd dev(::open("/dev/dmabuf_test", O_RDWR | O_CLOEXEC));
    dmabuf_test_info info{};
    info.fd = buf.fd();
    if (!dev.valid() || ::ioctl(dev.get(), DMABUF_TEST_IOCTL_INFO, &info) != 0) {
        throw std::runtime_error(std::string("DMABUF_TEST_IOCTL_INFO: ") + std::strerror(errno));
    }
    return {(info.flags & DMABUF_TEST_INFO_VRAM) != 0, info.vram_offset};
}

int move_errno(DmaBuf& buf, unsigned flags) {
    try {
        buf.move(flags);
        return 0;
    } catch (const dmabufio::Error& e) {
        return e.err();
    }
}

// The PCI address of the VRAM device (QEMU's ivshmem, 1af4:1110), "" if there is none.
std::string vram_pci() {
    for (const auto& d : std::filesystem::directory_iterator("/sys/bus/pci/devices")) {
        std::ifstream vendor(d.path() / "vendor");
        std::ifstream device(d.path() / "device");
        std::string v;
        std::string id;
        vendor >> v;
        device >> id;
        if (v == "0x1af4" && id == "0x1110") {
            return d.path().filename().string();
        }
    }
    return {};
}

Fd open_nvme() {
    Fd f(::open(guest::kDevice, O_RDWR | O_DIRECT | O_CLOEXEC));
    if (!f.valid()) {
        throw std::runtime_error(std::string("open ") + guest::kDevice + ": " +
                                 std::strerror(errno));
    }
    return f;
}

// NVMe -> VRAM and VRAM -> NVMe through a registered VRAM dma-buf of `size` bytes at dev_off:
// the whole buffer, then its first and last 4 KiB, each read checked through the BAR's CPU
// mapping and each write read back through the ordinary O_DIRECT path.
void round_trip(std::size_t size, std::uint64_t dev_off) {
    SCOPED_TRACE("size " + std::to_string(size));
    const Fd f = open_nvme();
    DmaBuf buf = DmaBuf::allocate(Exporter::kVram, size);
    ASSERT_TRUE(placement(buf).in_vram);
    Ring ring(4);
    BufferTable table(ring, 1);
    ASSERT_EQ(table.register_dmabuf(0, buf, f.get()), SlotKind::kDmaBuf);
    const guest::Reference plain;
    guest::Memory data(size);
    guest::Memory back(size);
    guest::fill(data.data(), size, size);
    plain.write(data.data(), size, dev_off);
    auto view = buf.map();

    ASSERT_EQ(table.read(f.get(), 0, 0, static_cast<unsigned>(size), dev_off),
              static_cast<int>(size));
    EXPECT_EQ(std::memcmp(view.data(), data.data(), size), 0) << "NVMe -> VRAM";
    guest::fill(view.data(), size, size + 1);
    ASSERT_EQ(table.write(f.get(), 0, 0, static_cast<unsigned>(size), dev_off),
              static_cast<int>(size));
    plain.read(back.data(), size, dev_off);
    EXPECT_EQ(std::memcmp(back.data(), view.data(), size), 0) << "VRAM -> NVMe";

    // Both ends of the buffer, 4 KiB each, at other places of the device.
    for (const std::uint64_t at : {std::uint64_t{0}, std::uint64_t{size - 4 * kKiB}}) {
        guest::fill(data.data(), 4 * kKiB, at + 7);
        plain.write(data.data(), 4 * kKiB, dev_off + size + at);
        ASSERT_EQ(table.read(f.get(), 0, at, 4 * kKiB, dev_off + size + at),
                  static_cast<int>(4 * kKiB));
        EXPECT_EQ(std::memcmp(view.data() + at, data.data(), 4 * kKiB), 0) << "read at " << at;
        ASSERT_EQ(table.write(f.get(), 0, at, 4 * kKiB, dev_off + at), static_cast<int>(4 * kKiB));
        plain.read(back.data(), 4 * kKiB, dev_off + at);
        EXPECT_EQ(std::memcmp(back.data(), view.data() + at, 4 * kKiB), 0) << "write at " << at;
    }
}

// A VRAM dma-buf registered against the NVMe (kind says how), and verified rounds of I/O
// through it.
struct VramUnderIo {
    Fd f = open_nvme();
    DmaBuf buf = DmaBuf::allocate(Exporter::kVram, VerifiedRounds::kDepth* VerifiedRounds::kSlot);
    Ring ring{VerifiedRounds::kDepth};
    BufferTable table{ring, 1};
    SlotKind kind = table.register_dmabuf(0, buf, f.get());
    VerifiedRounds rounds{f.get(), guest::kDevice, table, buf.map()};
};

TEST(Vram, BadRequestsAreRefused) {
    ASSERT_FALSE(vram_pci().empty()) << "no VRAM device: boot with vm/run --vram SIZE";
    EXPECT_EQ(guest::test_exporter_create_errno(
                  DMABUF_TEST_REPEAT_CHUNK, DMABUF_TEST_CREATE_VRAM | DMABUF_TEST_CREATE_REPEAT),
              EINVAL);
    EXPECT_EQ(guest::test_exporter_create_errno(std::size_t{64} << 30, DMABUF_TEST_CREATE_VRAM),
              ENOMEM)
        << "a VRAM buffer larger than the BAR";
    DmaBuf sys = DmaBuf::allocate(Exporter::kTest, 64 * kKiB);
    EXPECT_EQ(move_errno(sys, DMABUF_TEST_MOVE_TO_VRAM), EINVAL) << "restore of a system buffer";
    EXPECT_FALSE(placement(sys).in_vram);
    DmaBuf vram = DmaBuf::allocate(Exporter::kVram, 64 * kKiB);
    EXPECT_EQ(move_errno(vram, DMABUF_TEST_MOVE_TO_VRAM | DMABUF_TEST_MOVE_TO_SYSTEM), EINVAL);
    EXPECT_TRUE(placement(vram).in_vram);
    // Its CPU mapping can't be pinned for direct I/O (an NVMe that reaches the BAR would take
    // peer-to-peer pages otherwise, and the buffer moves).
    auto view = vram.map();
    view[0] = 1;
    const Fd f(::open(guest::kDevice, O_RDONLY | O_DIRECT | O_CLOEXEC));
    ASSERT_TRUE(f.valid());
    EXPECT_EQ(::pread(f.get(), view.data(), 64 * kKiB, 0), -1);
    EXPECT_EQ(errno, EFAULT);
}

// 4 KiB to 4 MiB in every VRAM boot; 128 MiB below, not with DMA API debugging (its per-sync
// lookups make a mapping of that much contiguous VRAM take minutes).
TEST(Vram, VerifiedReadsAndWritesFrom4KiBTo4MiB) {
    std::uint64_t at = 0;
    for (const std::size_t size : {4 * kKiB, 64 * kKiB, kMiB, 4 * kMiB}) {
        round_trip(size, at);
        at += 2 * size + 4 * kMiB;
    }
}

TEST(Vram, VerifiedReadsAndWritesOf128MiB) { round_trip(128 * kMiB, 256 * kMiB); }

// Contents and registrations survive placements: a buffer filled in VRAM reads the same from
// system memory and back, and one registration keeps working (verified) wherever it is, also one
// made while the buffer was evicted.
TEST(Vram, RegistrationFollowsTheBufferAcrossEvictionAndRestore) {
    const Fd f = open_nvme();
    DmaBuf buf = DmaBuf::allocate(Exporter::kVram, VerifiedRounds::kDepth * VerifiedRounds::kSlot);
    guest::Memory expect(buf.size());
    guest::fill(expect.data(), buf.size(), 41);
    std::memcpy(buf.map().data(), expect.data(), buf.size());
    const std::uint64_t first = placement(buf).offset;
    buf.move(DMABUF_TEST_MOVE_TO_SYSTEM);
    EXPECT_FALSE(placement(buf).in_vram);
    EXPECT_EQ(std::memcmp(buf.map().data(), expect.data(), buf.size()), 0) << "evicted";
    buf.move(DMABUF_TEST_MOVE_TO_VRAM);
    EXPECT_TRUE(placement(buf).in_vram);
    EXPECT_EQ(std::memcmp(buf.map().data(), expect.data(), buf.size()), 0) << "restored";
    buf.move();
    EXPECT_TRUE(placement(buf).in_vram) << "a move without a placement flag stays in VRAM";
    EXPECT_NE(placement(buf).offset, first) << "a move within VRAM moved nowhere";
    EXPECT_EQ(std::memcmp(buf.map().data(), expect.data(), buf.size()), 0) << "moved in VRAM";

    Ring ring(VerifiedRounds::kDepth);
    BufferTable table(ring, 2);
    ASSERT_EQ(table.register_dmabuf(0, buf, f.get()), SlotKind::kDmaBuf);
    VerifiedRounds rounds(f.get(), guest::kDevice, table, buf.map());
    rounds.round();
    buf.move(DMABUF_TEST_MOVE_TO_SYSTEM);
    rounds.round();
    buf.move(DMABUF_TEST_MOVE_TO_VRAM);
    rounds.round();

    // Registered while in system memory, then restored.
    buf.move(DMABUF_TEST_MOVE_TO_SYSTEM);
    table.clear(0);
    ASSERT_EQ(table.register_dmabuf(0, buf, f.get()), SlotKind::kDmaBuf);
    rounds.round();
    buf.move(DMABUF_TEST_MOVE_TO_VRAM);
    rounds.round();
    EXPECT_EQ(rounds.ios, std::size_t{5} * VerifiedRounds::kDepth);
}

// The dma-buf rules' own case: the exporter evicts the buffer out of device memory and brings it
// back while I/O uses it, in bursts (back-to-back pairs, then a pause), at least 1000 times. Every
// read and write is verified; each eviction poisons the VRAM it left and the next allocation
// there checks the poison, so a late DMA is caught either way.
TEST(Vram, VerifiedIoWhileEvictedAndRestoredInBursts) {
    VramUnderIo v;
    ASSERT_EQ(v.kind, SlotKind::kDmaBuf);
    DmaBuf& buf = v.buf;
    VerifiedRounds& rounds = v.rounds;

    constexpr unsigned kEvictions = 1000;
    std::atomic<bool> stop{false};
    std::atomic<unsigned> evictions{0};
    std::string error;
    std::thread mover([&] {
        try {
            while (!stop.load()) {
                for (int i = 0; i < 8; i++) {
                    buf.move(DMABUF_TEST_MOVE_TO_SYSTEM);
                    evictions++;
                    buf.move(DMABUF_TEST_MOVE_TO_VRAM);
                }
                std::this_thread::sleep_for(std::chrono::milliseconds(20));
            }
        } catch (const std::exception& e) {
            error = e.what();
        }
    });
    const auto t0 = std::chrono::steady_clock::now();
    while (
        (evictions.load() < kEvictions || rounds.ios < std::size_t{20} * VerifiedRounds::kDepth) &&
        error.empty() && !testing::Test::HasFatalFailure()) {
        rounds.round();
    }
    stop = true;
    mover.join();
    EXPECT_EQ(error, "");
    EXPECT_GE(evictions.load(), kEvictions);
    EXPECT_TRUE(placement(buf).in_vram);
    const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    std::printf(
        "VRAM under I/O: %u evictions and as many restores, %zu I/Os, %zu bytes verified, "
        "%.1f s\n",
        evictions.load(), rounds.ios, rounds.verified, s);
}

// The device goes away (PCI remove) with a registration live and verified I/O running: its
// buffers are evicted to system memory and I/O goes on; restoring and creating VRAM then fail
// with ENODEV. A rescan brings the device back, as a new one.
TEST(VramRemoval, DeviceRemovedUnderIoEvictsItsBuffers) {
    const std::string addr = vram_pci();
    ASSERT_FALSE(addr.empty()) << "no VRAM device: boot with vm/run --vram SIZE";
    VramUnderIo v;
    ASSERT_EQ(v.kind, SlotKind::kDmaBuf);
    DmaBuf& buf = v.buf;
    VerifiedRounds& rounds = v.rounds;
    rounds.round();

    std::atomic<bool> removed{false};
    std::thread remover([&] {
        guest::write_str("/sys/bus/pci/devices/" + addr + "/remove", "1");
        removed = true;
    });
    unsigned during = 0;
    while ((!removed.load() || during < 4) && !testing::Test::HasFatalFailure()) {
        rounds.round();
        during++;
    }
    remover.join();
    EXPECT_TRUE(vram_pci().empty());
    EXPECT_FALSE(placement(buf).in_vram);
    EXPECT_EQ(move_errno(buf, DMABUF_TEST_MOVE_TO_VRAM), ENODEV);
    EXPECT_EQ(guest::test_exporter_create_errno(64 * kKiB, DMABUF_TEST_CREATE_VRAM), ENODEV);
    for (int i = 0; i < 4; i++) {
        rounds.round();
    }
    std::printf("VRAM device removed under I/O: %u rounds during the removal, %zu I/Os verified\n",
                during, rounds.ios);

    guest::write_str("/sys/bus/pci/rescan", "1");
    ASSERT_TRUE(guest::wait_until(
        [] { return guest::test_exporter_create_errno(64 * kKiB, DMABUF_TEST_CREATE_VRAM) == 0; },
        30));
    EXPECT_EQ(move_errno(buf, DMABUF_TEST_MOVE_TO_VRAM), ENODEV) << "the old device is gone";
}

// vm/run --vram-far: the VRAM device under a host bridge of its own, which the kernel's P2PDMA
// distance check does not let the NVMe reach: registering a VRAM dma-buf against the NVMe is
// EREMOTEIO (with the library's advice), wherever the buffer is at the time, and leaves nothing
// attached; the buffer itself works (CPU access, eviction).
TEST(VramFar, RegistrationAcrossHostBridgesIsEremoteio) {
    const std::string addr = vram_pci();
    ASSERT_FALSE(addr.empty()) << "no VRAM device: boot with vm/run --vram SIZE --vram-far";
    ASSERT_NE(addr.rfind("0000:00:", 0), 0U) << addr << " is on the NVMe's root bus";
    const Fd f = open_nvme();
    DmaBuf buf = DmaBuf::allocate(Exporter::kVram, kMiB);
    ASSERT_TRUE(placement(buf).in_vram);
    guest::fill(buf.map().data(), kMiB, 5);
    Ring ring(4);
    BufferTable table(ring, 1);
    for (const unsigned to : {0U, unsigned{DMABUF_TEST_MOVE_TO_SYSTEM}}) {
        if (to != 0) {
            buf.move(to);
            ASSERT_FALSE(placement(buf).in_vram);
        }
        EXPECT_EQ(table.update(0, guest::dmabuf_desc(buf.fd(), f.get())), -EREMOTEIO);
        try {
            table.register_dmabuf(0, buf, f.get());
            ADD_FAILURE() << "registered across host bridges";
        } catch (const dmabufio::Error& e) {
            EXPECT_EQ(e.err(), EREMOTEIO);
            EXPECT_NE(std::string(e.what()).find("peer-to-peer"), std::string::npos) << e.what();
        }
    }
    struct stat st {};
    ASSERT_EQ(::fstat(buf.fd(), &st), 0);
    EXPECT_EQ(guest::attached_devices(st.st_ino), 0) << "a refused attachment was left behind";
    buf.move(DMABUF_TEST_MOVE_TO_VRAM);
    guest::Memory expect(kMiB);
    guest::fill(expect.data(), kMiB, 5);
    EXPECT_EQ(std::memcmp(buf.map().data(), expect.data(), kMiB), 0);
}

// Defined last in this file, so that it runs after the others of a boot (gtest keeps definition
// order): NVMe -> VRAM reads and a VRAM -> NVMe write, each range recorded in
// $DMABUFIO_VM_RUN/vram-expect (NVMe image, offset there, offset in the BAR, length) for the host
// check. The buffers stay allocated until the process exits, so nothing else gets their VRAM (a
// released buffer's VRAM keeps its contents), and the NVMe ranges (from 2 GiB) are this test's.
TEST(VramHost, TransfersLandInTheBar) {
    const char* run = std::getenv("DMABUFIO_VM_RUN");
    ASSERT_NE(run, nullptr) << "not under vm/run";
    std::string serial;
    std::ifstream("/sys/block/nvme0n1/device/serial") >> serial;
    ASSERT_EQ(serial.rfind("dmabufio", 0), 0U) << serial;
    const std::string image = "nvme" + serial.substr(8) + ".img";
    std::ofstream expect(std::string(run) + "/vram-expect", std::ios::app);
    ASSERT_TRUE(expect) << run;

    static std::vector<DmaBuf> kept;  // until exit
    const Fd f = open_nvme();
    Ring ring(4);
    BufferTable table(ring, 1);
    const guest::Reference plain;
    std::uint64_t dev_off = std::uint64_t{2} << 30;
    std::size_t bytes = 0;
    for (const std::size_t size : {4 * kKiB, kMiB, 4 * kMiB, kMiB}) {
        const bool write = kept.size() == 3;  // the last one: VRAM -> NVMe
        kept.push_back(DmaBuf::allocate(Exporter::kVram, size));
        DmaBuf& buf = kept.back();
        const Placement p = placement(buf);
        ASSERT_TRUE(p.in_vram);
        ASSERT_EQ(table.register_dmabuf(0, buf, f.get()), SlotKind::kDmaBuf);
        if (write) {
            guest::fill(buf.map().data(), size, dev_off);
            ASSERT_EQ(table.write(f.get(), 0, 0, static_cast<unsigned>(size), dev_off),
                      static_cast<int>(size));
        } else {
            guest::Memory data(size);
            guest::fill(data.data(), size, dev_off);
            plain.write(data.data(), size, dev_off);
            ASSERT_EQ(table.read(f.get(), 0, 0, static_cast<unsigned>(size), dev_off),
                      static_cast<int>(size));
        }
        table.clear(0);
        expect << image << ' ' << dev_off << ' ' << p.offset << ' ' << size << '\n';
        bytes += size;
        dev_off += size + kMiB;
    }
    expect.flush();
    ASSERT_TRUE(expect);
    ::sync();
    std::printf("VramHost: %zu ranges, %zu bytes left for the host check\n", kept.size(), bytes);
}

}  // namespace
