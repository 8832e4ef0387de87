// The NVMe PCI function removed, or unbound from nvme, while a dma-buf is registered against it
// and reads are in flight (issue 10). No DMA mapping may outlive the driver's binding (DMA API
// debugging reports one that does, and vm/run fails on it); the reads end, the registration can
// be dropped afterwards, and once the device is back (bus rescan, bound again, or its module
// loaded again) it works with a new registration, data verified. Own boot (guest-removal): the
// device goes away meanwhile.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <array>
#include <cerrno>
#include <chrono>
#include <climits>
#include <cstdlib>
#include <cstring>
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
using guest::kKiB;
using guest::kMiB;

constexpr unsigned kDepth = 16;

// The PCI address of nvme0's controller, e.g. "0000:00:03.0".
std::string nvme0_pci_address() {
    std::array<char, PATH_MAX> buf{};
    const ssize_t n = ::readlink("/sys/class/nvme/nvme0/device", buf.data(), buf.size() - 1);
    if (n <= 0) {
        return {};
    }
    const std::string link(buf.data(), static_cast<std::size_t>(n));
    return link.substr(link.rfind('/') + 1);
}

bool wait_for(const char* path, bool present, double seconds) {
    return guest::wait_until([&] { return (::access(path, F_OK) == 0) == present; }, seconds);
}

// Registers a udmabuf and a test-exporter dma-buf, puts kDepth reads in flight, lets `remove`
// take the device away, reaps every read (any result), drops the registrations; then `restore`
// brings the device back and a new registration must round-trip data.
template <typename Remove, typename Restore>
void remove_with_registrations(Remove remove, Restore restore) {
    guest::Memory pattern(64 * kKiB);
    guest::fill(pattern.data(), pattern.size(), 17);
    {
        guest::Reference ref;
        ref.write(pattern.data(), pattern.size(), 8 * kMiB);
    }
    unsigned ok = 0;
    unsigned failed = 0;
    {
        BlockFile dev(guest::kDevice);
        Ring ring(2 * kDepth);
        BufferTable table(ring, 2);
        DmaBuf ubuf = DmaBuf::allocate(Exporter::kUdmabuf, std::size_t{kDepth} * 64 * kKiB);
        DmaBuf tbuf = DmaBuf::allocate(Exporter::kTest, std::size_t{kDepth} * 64 * kKiB);
        ASSERT_EQ(table.register_dmabuf(0, ubuf, dev.fd()), SlotKind::kDmaBuf);
        ASSERT_EQ(table.register_dmabuf(1, tbuf, dev.fd()), SlotKind::kDmaBuf);
        for (unsigned i = 0; i < kDepth; i++) {
            table.prep(false, dev.fd(), i % 2, std::size_t{i / 2} * 64 * kKiB, 64 * kKiB, 8 * kMiB,
                       i);
        }
        ASSERT_EQ(io_uring_submit(ring.get()), static_cast<int>(kDepth));
        ASSERT_NO_FATAL_FAILURE(remove());
        for (unsigned i = 0; i < kDepth; i++) {
            auto [ud, res] = ring.submit_and_wait_one();
            EXPECT_LT(ud, kDepth);
            if (res == static_cast<int>(64 * kKiB)) {
                ok++;
            } else {
                EXPECT_LT(res, 0) << "read " << ud;
                failed++;
            }
        }
        table.clear(0);
        table.clear(1);
    }
    std::printf("[   counts ] device removed with %u reads in flight: %u completed, %u failed\n",
                kDepth, ok, failed);
    ASSERT_NO_FATAL_FAILURE(restore());
    ASSERT_TRUE(wait_for(guest::kDevice, true, 60)) << guest::kDevice << " did not come back";
    // The device works again, with a new registration.
    BlockFile dev(guest::kDevice);
    Ring ring(4);
    BufferTable table(ring, 1);
    DmaBuf buf = DmaBuf::allocate(Exporter::kUdmabuf, 64 * kKiB);
    ASSERT_EQ(table.register_dmabuf(0, buf, dev.fd()), SlotKind::kDmaBuf);
    ASSERT_EQ(table.read(dev.fd(), 0, 0, 64 * kKiB, 8 * kMiB), static_cast<int>(64 * kKiB));
    EXPECT_EQ(std::memcmp(buf.map().data(), pattern.data(), pattern.size()), 0);
}

TEST(Removal, PciFunctionRemovedAndRescanned) {
    const std::string addr = nvme0_pci_address();
    ASSERT_FALSE(addr.empty()) << "no /sys/class/nvme/nvme0/device";
    remove_with_registrations(
        [&] {
            guest::write_str("/sys/bus/pci/devices/" + addr + "/remove", "1");
            ASSERT_TRUE(wait_for(guest::kDevice, false, 30));
        },
        [&] { guest::write_str("/sys/bus/pci/rescan", "1"); });
}

TEST(Removal, DriverUnboundAndBoundAgain) {
    const std::string addr = nvme0_pci_address();
    ASSERT_FALSE(addr.empty()) << "no /sys/class/nvme/nvme0/device";
    remove_with_registrations(
        [&] {
            guest::write_str("/sys/bus/pci/drivers/nvme/unbind", addr);
            ASSERT_TRUE(wait_for(guest::kDevice, false, 30));
        },
        [&] { guest::write_str("/sys/bus/pci/drivers/nvme/bind", addr); });
}

// delete_module(2) as rmmod calls it: returns 0 or the errno.
int unload_module(const char* name) {
    return ::syscall(SYS_delete_module, name, O_NONBLOCK) == 0 ? 0 : errno;
}

// finit_module(2) as insmod calls it: returns 0 or the errno.
int load_module(const char* path) {
    const int fd = ::open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        return errno;
    }
    const int ret = ::syscall(SYS_finit_module, fd, "", 0) == 0 ? 0 : errno;
    ::close(fd);
    return ret;
}

// nvme built as a module (the debug kernel; vm/init loaded it and says where it is): a token holds
// the driver's module, so it cannot be unloaded while a registration lives, also not once the
// driver is unbound (which revokes the token); once the registrations are dropped it unloads, and
// loaded again the device works with a new registration.
TEST(Removal, ModuleUnloadRefusedWhileRegistered) {
    const char* ko = std::getenv("DMABUFIO_NVME_KO");
    ASSERT_NE(ko, nullptr) << "nvme is built in: this test needs the debug kernel's nvme.ko "
                              "(vm/init sets DMABUFIO_NVME_KO when it loads it)";
    const std::string addr = nvme0_pci_address();
    ASSERT_FALSE(addr.empty()) << "no /sys/class/nvme/nvme0/device";
    remove_with_registrations(
        [&] {
            EXPECT_EQ(unload_module("nvme"), EWOULDBLOCK) << "nvme unloaded under a registration";
            guest::write_str("/sys/bus/pci/drivers/nvme/unbind", addr);
            ASSERT_TRUE(wait_for(guest::kDevice, false, 30));
            EXPECT_EQ(unload_module("nvme"), EWOULDBLOCK)
                << "nvme unloaded under a revoked registration";
        },
        [&] {
            ASSERT_EQ(unload_module("nvme"), 0) << "nvme still held after unregistration";
            ASSERT_NE(::access("/sys/module/nvme", F_OK), 0) << "nvme still loaded";
            ASSERT_EQ(load_module(ko), 0) << ko;
        });
}

}  // namespace
