// A disk that gains integrity metadata under a live registration (issue 10): the namespace is
// reformatted with 8 bytes of metadata per block and T10 PI type 1 (NVMe Format NVM) and
// rescanned while a dma-buf slot is registered against it. Token bios carry no pages for the
// block layer to build protection information from, so I/O on the slot must fail with
// EOPNOTSUPP (documented) instead of oopsing in bio_integrity_prep(); a new registration is
// refused the same way; formatted back without metadata, the same slot works again.
//
// Own boot (guest-integrity): formatting destroys the namespace's contents.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <linux/nvme_ioctl.h>
#include <sys/ioctl.h>
#include <unistd.h>

#include <array>
#include <chrono>
#include <cstring>
#include <fstream>
#include <string>
#include <thread>

#include "dmabufio/buffer_table.hpp"
#include "dmabufio/dmabuf.hpp"
#include "dmabufio/error.hpp"
#include "dmabufio/fd.hpp"
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

constexpr std::uint8_t kNvmeAdminFormat = 0x80;
constexpr std::uint32_t kLbafPlain = 0;      // QEMU's LBA format 0: 512 bytes, no metadata
constexpr std::uint32_t kLbafMeta = 1;       // LBA format 1: 512 bytes + 8 bytes of metadata
constexpr std::uint32_t kPiType1 = 1U << 5;  // Format NVM CDW10 PI field = 1

std::string integrity_format() {
    std::ifstream f("/sys/block/nvme0n1/integrity/format");
    std::string s;
    std::getline(f, s);
    return s;
}

// Formats namespace 1 of /dev/nvme0 and waits until the block layer shows the new profile.
void format(std::uint32_t cdw10, bool want_integrity) {
    dmabufio::Fd ctrl(::open("/dev/nvme0", O_RDWR | O_CLOEXEC));
    ASSERT_TRUE(ctrl.valid()) << "open /dev/nvme0: " << std::strerror(errno);
    nvme_admin_cmd cmd{};
    cmd.opcode = kNvmeAdminFormat;
    cmd.nsid = 1;
    cmd.cdw10 = cdw10;
    cmd.timeout_ms = 60000;
    const int ret = ::ioctl(ctrl.get(), NVME_IOCTL_ADMIN_CMD, &cmd);
    ASSERT_EQ(ret, 0) << "Format NVM cdw10 " << cdw10 << ": ioctl " << ret << " errno "
                      << std::strerror(errno);
    std::ofstream("/sys/class/nvme/nvme0/rescan_controller") << 1 << std::endl;
    ASSERT_TRUE(
        guest::wait_until([&] { return (integrity_format() != "none") == want_integrity; }, 30, 50))
        << "integrity profile still '" << integrity_format() << "'";
    std::printf("[          ] formatted (cdw10 %#x): integrity profile '%s'\n", cdw10,
                integrity_format().c_str());
}

TEST(Integrity, TokenIoRefusedWhileTheDiskHasMetadata) {
    ASSERT_EQ(integrity_format(), "none");
    BlockFile dev(guest::kDevice);
    guest::Reference ref;
    Ring ring(8);
    BufferTable table(ring, 2);
    DmaBuf buf = DmaBuf::allocate(Exporter::kUdmabuf, 64 * kKiB);
    ASSERT_EQ(table.register_dmabuf(0, buf, dev.fd()), SlotKind::kDmaBuf);
    auto view = buf.map();
    guest::fill(view.data(), view.size(), 5);
    ASSERT_EQ(table.write(dev.fd(), 0, 0, 64 * kKiB, 0), static_cast<int>(64 * kKiB));

    ASSERT_NO_FATAL_FAILURE(format(kLbafMeta | kPiType1, true));
    EXPECT_EQ(table.read(dev.fd(), 0, 0, 4 * kKiB, 0), -EOPNOTSUPP);
    EXPECT_EQ(table.write(dev.fd(), 0, 0, 4 * kKiB, 0), -EOPNOTSUPP);
    // the ordinary path still works (the block layer generates the PI)
    guest::Memory page(4 * kKiB);
    guest::fill(page.data(), page.size(), 6);
    ref.write(page.data(), page.size(), 0);
    // and a new registration is refused up front
    DmaBuf other = DmaBuf::allocate(Exporter::kUdmabuf, 64 * kKiB);
    try {
        table.register_dmabuf(1, other, dev.fd());
        ADD_FAILURE() << "registration succeeded on a disk with integrity metadata";
    } catch (const dmabufio::Error& e) {
        EXPECT_EQ(e.err(), EOPNOTSUPP) << e.what();
    }

    ASSERT_NO_FATAL_FAILURE(format(kLbafPlain, false));
    // The same registration works again: write, read back through the ordinary path, read.
    guest::fill(view.data(), view.size(), 7);
    ASSERT_EQ(table.write(dev.fd(), 0, 0, 64 * kKiB, 128 * kKiB), static_cast<int>(64 * kKiB));
    guest::Memory back(64 * kKiB);
    ref.read(back.data(), back.size(), 128 * kKiB);
    EXPECT_EQ(std::memcmp(back.data(), view.data(), back.size()), 0);
    std::memset(view.data(), 0, view.size());
    ASSERT_EQ(table.read(dev.fd(), 0, 0, 64 * kKiB, 128 * kKiB), static_cast<int>(64 * kKiB));
    EXPECT_EQ(std::memcmp(back.data(), view.data(), back.size()), 0);
}

}  // namespace
