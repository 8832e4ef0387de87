// The errno rows of the uapi table (docs/design.md) that the lab can trigger, each checked, and
// dma-buf slots whose dma-buf, target file, table or process go away with I/O in flight. Not
// triggered here: a dma-buf whose size is not a multiple of the device's page size (no lab
// exporter makes one on x86), and a re-map that keeps failing (EIO after 5 s).
#include <fcntl.h>
#include <gtest/gtest.h>
#include <linux/dma-heap.h>
#include <linux/nvme_ioctl.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <array>
#include <cerrno>
#include <cstring>
#include <fstream>
#include <memory>
#include <string>
#include <vector>

#include "dmabufio/buffer_table.hpp"
#include "dmabufio/dmabuf.hpp"
#include "dmabufio/dmabufio.h"
#include "dmabufio/file.hpp"
#include "dmabufio/ring.hpp"
#include "guest_util.hpp"

namespace {

using dmabufio::BlockFile;
using dmabufio::BufferTable;
using dmabufio::DmaBuf;
using dmabufio::Exporter;
using dmabufio::Fd;
using dmabufio::Ring;
using guest::kKiB;
using guest::kMiB;

int update_with_flags(int ring_fd, unsigned slot, std::uint32_t flags,
                      const io_uring_regbuf_desc* d) {
    io_uring_rsrc_update2 up{};
    up.offset = slot;
    up.resv = flags;
    up.data = reinterpret_cast<std::uintptr_t>(d);
    up.nr = 1;
    return dmabufio_register_raw(ring_fd, IORING_REGISTER_BUFFERS_UPDATE, &up, sizeof(up));
}

// A descriptor of user memory (IO_REGBUF_TYPE_UADDR) covering @mem.
io_uring_regbuf_desc user_desc(const guest::Memory& mem) {
    io_uring_regbuf_desc d{};
    d.type = IO_REGBUF_TYPE_UADDR;
    d.uaddr = reinterpret_cast<std::uintptr_t>(mem.data());
    d.size = mem.size();
    return d;
}

class Errors : public testing::Test {
  protected:
    BlockFile dev{guest::kDevice};
    Ring ring{8};
    BufferTable table{ring, 4};
    DmaBuf buf = DmaBuf::allocate(Exporter::kUdmabuf, kMiB);
};

TEST_F(Errors, UnknownUpdateFlagIsEinval) {
    auto d = guest::dmabuf_desc(buf.fd(), dev.fd());
    EXPECT_EQ(update_with_flags(ring.fd(), 0, IORING_RSRC_UPDATE_EXTENDED | (1U << 7), &d),
              -EINVAL);
    EXPECT_EQ(update_with_flags(ring.fd(), 0, 1U << 0, &d), -EINVAL);
}

TEST_F(Errors, BadDescriptorsAreEinval) {
    auto d = guest::dmabuf_desc(buf.fd(), dev.fd());
    d.type = 3;
    EXPECT_EQ(table.update(0, d), -EINVAL) << "unknown type";
    d = guest::dmabuf_desc(buf.fd(), dev.fd());
    d.flags = 1;
    EXPECT_EQ(table.update(0, d), -EINVAL) << "nonzero desc flags";
    for (int i = 0; i < 6; i++) {
        d = guest::dmabuf_desc(buf.fd(), dev.fd());
        d.__resv[i] = 1;
        EXPECT_EQ(table.update(0, d), -EINVAL) << "nonzero __resv[" << i << "]";
    }
    d = guest::dmabuf_desc(buf.fd(), dev.fd());
    d.uaddr = 4096;
    EXPECT_EQ(table.update(0, d), -EINVAL) << "uaddr set for a dma-buf";
    d = guest::dmabuf_desc(buf.fd(), dev.fd());
    d.size = kMiB;
    EXPECT_EQ(table.update(0, d), -EINVAL) << "size set for a dma-buf";
}

TEST_F(Errors, BadFdsAreEbadf) {
    Fd memfd(::memfd_create("not-a-dmabuf", MFD_CLOEXEC));
    ASSERT_TRUE(memfd.valid());
    EXPECT_EQ(table.update(0, guest::dmabuf_desc(memfd.get(), dev.fd())), -EBADF)
        << "memfd as dmabuf_fd";
    EXPECT_EQ(table.update(0, guest::dmabuf_desc(-1, dev.fd())), -EBADF) << "dmabuf_fd -1";
    EXPECT_EQ(table.update(0, guest::dmabuf_desc(buf.fd(), 1000)), -EBADF) << "target_fd not open";
    EXPECT_EQ(table.update(0, guest::dmabuf_desc(buf.fd(), -1)), -EBADF) << "target_fd -1";
}

TEST_F(Errors, TargetsThatCannotTakeTokensAreEopnotsupp) {
    std::string path = "/tmp/dmabufio-target-XXXXXX";
    Fd regular(::mkstemp(path.data()));
    ASSERT_TRUE(regular.valid());
    ::unlink(path.c_str());
    EXPECT_EQ(table.update(0, guest::dmabuf_desc(buf.fd(), regular.get())), -EOPNOTSUPP)
        << "regular file";
    Fd buffered(::open(guest::kDevice, O_RDWR | O_CLOEXEC));
    ASSERT_TRUE(buffered.valid());
    EXPECT_EQ(table.update(0, guest::dmabuf_desc(buf.fd(), buffered.get())), -EOPNOTSUPP)
        << "no O_DIRECT";
    Fd efd(::eventfd(0, EFD_CLOEXEC));
    EXPECT_EQ(table.update(0, guest::dmabuf_desc(buf.fd(), efd.get())), -EOPNOTSUPP) << "eventfd";
}

TEST_F(Errors, IoWithAnotherFileIsEbadf) {
    ASSERT_EQ(table.update(0, guest::dmabuf_desc(buf.fd(), dev.fd())), 1);
    BlockFile other(guest::kDevice);  // the same device, but another open file
    EXPECT_EQ(table.read(other.fd(), 0, 0, 4096, 0), -EBADF);
    EXPECT_EQ(table.write(other.fd(), 0, 0, 4096, 0), -EBADF);
    EXPECT_EQ(table.read(dev.fd(), 0, 0, 4096, 0), 4096) << "the target file still works";
}

TEST_F(Errors, OtherOpcodesOnADmaBufSlotAreEopnotsupp) {
    ASSERT_EQ(table.update(0, guest::dmabuf_desc(buf.fd(), dev.fd())), 1);
    std::array<int, 2> sv{};
    ASSERT_EQ(::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv.data()), 0);
    Fd a(sv[0]);
    Fd b(sv[1]);
    io_uring_sqe* sqe = ring.sqe();
    io_uring_prep_send_zc_fixed(sqe, a.get(), nullptr, 4096, 0, 0, 0);
    auto [ud, res] = ring.submit_and_wait_one();
    EXPECT_EQ(res, -EOPNOTSUPP) << "SEND_ZC with a fixed dma-buf buffer";
    // A zero-copy send posts a second (notification) CQE only when it was accepted.
    (void)ud;
}

// NVMe passthrough (IORING_OP_URING_CMD on the generic char device) with IORING_URING_CMD_FIXED
// naming a dma-buf slot: the driver imports the fixed buffer as pages, which a dma-buf slot has
// none of, so it is refused with EOPNOTSUPP (documented).
TEST(ErrorsUringCmd, FixedUringCmdOnADmaBufSlotIsEopnotsupp) {
    constexpr std::uint32_t kUringCmdFixed = 1U << 0;  // IORING_URING_CMD_FIXED
    BlockFile dev(guest::kDevice);
    Fd ng(::open("/dev/ng0n1", O_RDWR | O_CLOEXEC));
    ASSERT_TRUE(ng.valid()) << "open /dev/ng0n1: " << std::strerror(errno);
    dmabufio::RingOptions opt;
    opt.depth = 4;
    opt.flags = IORING_SETUP_SQE128 | IORING_SETUP_CQE32;
    Ring ring(opt);
    BufferTable table(ring, 2);
    DmaBuf buf = DmaBuf::allocate(Exporter::kUdmabuf, 64 * kKiB);
    ASSERT_EQ(table.update(0, guest::dmabuf_desc(buf.fd(), dev.fd())), 1);
    guest::Memory mem(64 * kKiB);
    table.register_user(1, mem.data(), mem.size());

    const auto passthrough_read = [&](unsigned slot, std::uint64_t addr) {
        io_uring_sqe* sqe = ring.sqe();
        std::memset(sqe, 0, 2 * sizeof(*sqe));
        sqe->opcode = IORING_OP_URING_CMD;
        sqe->fd = ng.get();
        sqe->cmd_op = NVME_URING_CMD_IO;
        sqe->uring_cmd_flags = kUringCmdFixed;
        sqe->buf_index = static_cast<std::uint16_t>(slot);
        auto* cmd = reinterpret_cast<nvme_uring_cmd*>(sqe->cmd);
        cmd->opcode = 0x02;  // Read
        cmd->nsid = 1;
        cmd->addr = addr;
        cmd->data_len = 4096;
        cmd->cdw12 = 4096 / 512 - 1;  // number of 512-byte blocks, 0's based
        return ring.submit_and_wait_one().second;
    };
    // Positive control: the same command on a user-memory slot works.
    EXPECT_EQ(passthrough_read(1, reinterpret_cast<std::uintptr_t>(mem.data())), 0);
    // A nonzero addr (here: byte 4096 of the dma-buf): with addr 0 the nvme driver maps no buffer
    // at all and sends the command without one (raw passthrough; the device then DMAs to IOVA 0,
    // which strict mode reports as a DMAR fault).
    EXPECT_EQ(passthrough_read(0, 4096), -EOPNOTSUPP);
}

// IORING_REGISTER_CLONE_BUFFERS copies a table holding a dma-buf slot to another ring: the clone
// shares the registration, bound to the same target file, and keeps working after the original
// ring dropped its slot (documented).
TEST(CloneBuffers, CloneSharesTheDmaBufSlot) {
    constexpr unsigned kRegisterCloneBuffers = 30;  // IORING_REGISTER_CLONE_BUFFERS
    struct CloneBuffers {
        std::uint32_t src_fd, flags;
        std::array<std::uint32_t, 6> pad;
    };
    BlockFile dev(guest::kDevice);
    guest::Reference ref;
    guest::Memory pattern(64 * kKiB);
    guest::fill(pattern.data(), pattern.size(), 23);
    ref.write(pattern.data(), pattern.size(), 24 * kMiB);
    DmaBuf buf = DmaBuf::allocate(Exporter::kHeap, 64 * kKiB);
    auto src = std::make_unique<Ring>(4);
    auto src_table = std::make_unique<BufferTable>(*src, 2);
    ASSERT_EQ(src_table->update(1, guest::dmabuf_desc(buf.fd(), dev.fd())), 1);

    Ring dst(4);
    CloneBuffers arg{};
    arg.src_fd = static_cast<std::uint32_t>(src->fd());
    const int r = dmabufio_register_raw(dst.fd(), kRegisterCloneBuffers, &arg, 1);
    ASSERT_EQ(r, 0) << "IORING_REGISTER_CLONE_BUFFERS: " << std::strerror(-r);
    src_table.reset();  // the original ring's slots go
    src.reset();

    io_uring_sqe* sqe = dst.sqe();
    io_uring_prep_read_fixed(sqe, dev.fd(), nullptr, 64 * kKiB, 24 * kMiB, 1);
    EXPECT_EQ(dst.submit_and_wait_one().second, static_cast<int>(64 * kKiB));
    EXPECT_EQ(std::memcmp(buf.map().data(), pattern.data(), pattern.size()), 0);
    // still bound to its target file: another file is EBADF
    guest::Reference other;
    sqe = dst.sqe();
    io_uring_prep_read_fixed(sqe, other.fd(), nullptr, 4096, 0, 1);
    EXPECT_EQ(dst.submit_and_wait_one().second, -EBADF);
}

TEST_F(Errors, OutsideTheDmaBufIsEfault) {
    ASSERT_EQ(table.update(0, guest::dmabuf_desc(buf.fd(), dev.fd())), 1);
    EXPECT_EQ(table.read(dev.fd(), 0, kMiB - 4096, 8192, 0), -EFAULT);
    EXPECT_EQ(table.read(dev.fd(), 0, kMiB, 4096, 0), -EFAULT);
    EXPECT_EQ(table.read(dev.fd(), 0, ~std::uint64_t{0} - 4095, 4096, 0), -EFAULT)
        << "wrapping offset";
    EXPECT_EQ(table.read(dev.fd(), 0, kMiB - 4096, 4096, 0), 4096) << "the last page is inside";
}

TEST_F(Errors, MisalignedOffsetOrLengthIsEinval) {
    ASSERT_EQ(table.update(0, guest::dmabuf_desc(buf.fd(), dev.fd())), 1);
    EXPECT_EQ(table.read(dev.fd(), 0, 1, 4096, 0), -EINVAL) << "offset 1";
    EXPECT_EQ(table.read(dev.fd(), 0, 0, 100, 0), -EINVAL) << "length 100";
    EXPECT_EQ(table.read(dev.fd(), 0, 0, 4096, 3), -EINVAL) << "device offset 3";
}

TEST_F(Errors, EmptyAndUserTypesThroughTheExtendedUpdate) {
    guest::Memory mem(64 * kKiB);
    io_uring_regbuf_desc d = user_desc(mem);
    ASSERT_EQ(table.update(2, d), 1);
    io_uring_prep_read_fixed(ring.sqe(), dev.fd(), mem.data(), 4096, 0, 2);
    EXPECT_EQ(ring.submit_and_wait_one().second, 4096);
    d = {};
    d.type = IO_REGBUF_TYPE_EMPTY;
    ASSERT_EQ(table.update(2, d), 1);
    io_uring_prep_read_fixed(ring.sqe(), dev.fd(), mem.data(), 4096, 0, 2);
    EXPECT_EQ(ring.submit_and_wait_one().second, -EFAULT) << "an empty slot";
}

TEST_F(Errors, DmaBufFieldsOfOtherTypesAreEinval) {
    guest::Memory mem(64 * kKiB);
    io_uring_regbuf_desc d = user_desc(mem);
    d.dmabuf_fd = buf.fd();
    EXPECT_EQ(table.update(2, d), -EINVAL) << "dmabuf_fd set for user memory";
    d.dmabuf_fd = 0;
    d.target_fd = dev.fd();
    EXPECT_EQ(table.update(2, d), -EINVAL) << "target_fd set for user memory";
    d = {};
    d.type = IO_REGBUF_TYPE_EMPTY;
    d.target_fd = dev.fd();
    EXPECT_EQ(table.update(2, d), -EINVAL) << "target_fd set for an empty slot";
    d.target_fd = 0;
    EXPECT_EQ(table.update(2, d), 1) << "the same empty descriptor without it";
}

// A dma-buf handed out read-only (here by the system heap, fd_flags O_RDONLY) is only read from:
// WRITE_FIXED carries its contents to the device, READ_FIXED into it is EFAULT.
TEST_F(Errors, ReadOnlyDmaBufIsOnlyReadFrom) {
    Fd heap(::open("/dev/dma_heap/system", O_RDONLY | O_CLOEXEC));
    ASSERT_TRUE(heap.valid()) << std::strerror(errno);
    dma_heap_allocation_data alloc{};
    alloc.len = kMiB;
    alloc.fd_flags = O_RDONLY | O_CLOEXEC;
    ASSERT_EQ(::ioctl(heap.get(), DMA_HEAP_IOCTL_ALLOC, &alloc), 0) << std::strerror(errno);
    Fd ro(static_cast<int>(alloc.fd));
    guest::Memory mem(4 * kKiB);
    std::memset(mem.data(), 0x5a, mem.size());
    ASSERT_EQ(::pwrite(dev.fd(), mem.data(), mem.size(), 0), static_cast<ssize_t>(mem.size()));
    ASSERT_EQ(table.update(0, guest::dmabuf_desc(ro.get(), dev.fd())), 1);
    EXPECT_EQ(table.write(dev.fd(), 0, 0, 4096, 0), 4096) << "the device reads it";
    EXPECT_EQ(table.read(dev.fd(), 0, 0, 4096, 0), -EFAULT) << "the device may not write it";
    ASSERT_EQ(::pread(dev.fd(), mem.data(), mem.size(), 0), static_cast<ssize_t>(mem.size()));
    const std::vector<std::uint8_t> zeros(mem.size(), 0);
    EXPECT_EQ(std::memcmp(mem.data(), zeros.data(), zeros.size()), 0)
        << "the heap's zeroed memory reached the device";
}

// Lifetime: the registration keeps what it needs; I/O in flight completes correctly whatever
// userspace closes or replaces under it.
class Lifetime : public testing::Test {
  protected:
    static constexpr unsigned kDepth = 32;
    // Queues kDepth 64 KiB reads into the slot and submits them.
    static void queue_reads(Ring& ring, BufferTable& table, int fd, unsigned slot) {
        for (unsigned i = 0; i < kDepth; i++) {
            table.prep(false, fd, slot, 64 * kKiB * i, 64 * kKiB, 64 * kKiB * i, i);
        }
        ASSERT_EQ(io_uring_submit(ring.get()), static_cast<int>(kDepth));
    }
    static void reap_all(Ring& ring) {
        for (unsigned i = 0; i < kDepth; i++) {
            io_uring_cqe* cqe = nullptr;
            ASSERT_EQ(io_uring_wait_cqe(ring.get(), &cqe), 0);
            EXPECT_EQ(cqe->res, static_cast<int>(64 * kKiB)) << "I/O " << cqe->user_data;
            io_uring_cqe_seen(ring.get(), cqe);
        }
    }
};

TEST_F(Lifetime, UnregisterReplaceAndCloseWithIoInFlight) {
    BlockFile dev(guest::kDevice);
    Ring ring(64);
    auto table = std::make_unique<BufferTable>(ring, 2);
    DmaBuf first = DmaBuf::allocate(Exporter::kUdmabuf, 64 * kKiB * kDepth);
    DmaBuf second = DmaBuf::allocate(Exporter::kHeap, 64 * kKiB * kDepth);

    table->register_dmabuf(0, first, dev.fd());
    queue_reads(ring, *table, dev.fd(), 0);
    first.close();  // the dma-buf fd goes away; the registration holds the buffer
    table->register_dmabuf(0, second, dev.fd());  // replace under in-flight I/O
    reap_all(ring);

    queue_reads(ring, *table, dev.fd(), 0);
    table->clear(0);  // unregister the slot under in-flight I/O
    reap_all(ring);

    table->register_dmabuf(1, second, dev.fd());
    queue_reads(ring, *table, dev.fd(), 1);
    table.reset();  // unregister the whole table under in-flight I/O
    reap_all(ring);
}

TEST_F(Lifetime, CloseTheTargetFileWithIoInFlight) {
    auto dev = std::make_unique<BlockFile>(guest::kDevice);
    Ring ring(64);
    BufferTable table(ring, 1);
    DmaBuf buf = DmaBuf::allocate(Exporter::kUdmabuf, 64 * kKiB * kDepth);
    table.register_dmabuf(0, buf, dev->fd());
    const int fd = dev->fd();
    queue_reads(ring, table, fd, 0);
    dev.reset();  // the registration holds the target file; the fd number is gone
    reap_all(ring);
}

TEST_F(Lifetime, ProcessExitAndRingCloseWithIoInFlight) {
    for (int how = 0; how < 2; how++) {
        const pid_t pid = ::fork();
        ASSERT_GE(pid, 0);
        if (pid == 0) {
            BlockFile dev(guest::kDevice);
            auto ring = std::make_unique<Ring>(64);
            auto table = std::make_unique<BufferTable>(*ring, 1);
            DmaBuf buf = DmaBuf::allocate(Exporter::kHeap, 64 * kKiB * kDepth);
            table->register_dmabuf(0, buf, dev.fd());
            for (unsigned i = 0; i < kDepth; i++) {
                table->prep(i % 2 == 0, dev.fd(), 0, 64 * kKiB * i, 64 * kKiB, 64 * kKiB * (64 + i),
                            i);
            }
            io_uring_submit(ring->get());
            if (how == 1) {
                ::close(ring->fd());  // the ring fd goes while requests are in flight
            }
            ::_exit(0);  // exit with I/O in flight
        }
        int status = 0;
        ASSERT_EQ(::waitpid(pid, &status, 0), pid);
        EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << "how " << how;
    }
}

}  // namespace
