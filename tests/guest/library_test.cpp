// libdmabufio on the series kernel: Ring options (IOPOLL on poll queues, SQPOLL, registered ring
// fd), fixed files with dma-buf slots, batch submit/reap, the I/O helpers and MOVE through the
// library. Data is checked against the ordinary O_DIRECT path (guest::Reference). Device region:
// [1 GiB, 1 GiB + 16 MiB).
#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <array>
#include <cerrno>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <future>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "dmabufio/buffer_table.hpp"
#include "dmabufio/dmabuf.hpp"
#include "dmabufio/dmabufio.h"
#include "dmabufio/error.hpp"
#include "dmabufio/file.hpp"
#include "dmabufio/ring.hpp"
#include "dmabufio/transfer.hpp"
#include "guest_util.hpp"

namespace {

using dmabufio::BlockFile;
using dmabufio::BufferTable;
using dmabufio::Completion;
using dmabufio::DmaBuf;
using dmabufio::Exporter;
using dmabufio::FixedFile;
using dmabufio::FixedFiles;
using dmabufio::Ring;
using dmabufio::RingOptions;
using dmabufio::SlotKind;
using guest::kGiB;
using guest::kKiB;
using guest::kMiB;

constexpr std::uint64_t kDevBase = 1024 * kMiB;

// Does the namespace have poll queues (vm/run --append nvme.poll_queues=1)?
bool poll_queues() {
    std::ifstream f("/sys/block/nvme0n1/queue/io_poll");
    int v = 0;
    return (f >> v) && v != 0;
}

// Writes a known pattern to the device region, returns it.
std::unique_ptr<guest::Memory> seed_device(std::size_t n, std::uint64_t seed) {
    auto m = std::make_unique<guest::Memory>(n);
    guest::fill(m->data(), n, seed);
    guest::Reference().write(m->data(), n, kDevBase);
    return m;
}

// Reads n bytes of the device region into the slot at offset 0 in 64 KiB pieces through
// BufferTable's synchronous helper on a fixed file, then compares the dma-buf's CPU view.
void read_and_verify(BufferTable& table, FixedFile file, DmaBuf& buf, const guest::Memory& expect,
                     std::size_t n) {
    for (std::size_t off = 0; off < n; off += 64 * kKiB) {
        ASSERT_EQ(table.read(file, 0, off, 64 * kKiB, kDevBase + off), static_cast<int>(64 * kKiB))
            << "at " << off;
    }
    buf.begin_cpu_access(false);
    EXPECT_EQ(std::memcmp(buf.map().data(), expect.data(), n), 0);
    buf.end_cpu_access(false);
}

TEST(Library, ProbeSaysTheSeriesIsThere) {
    const dmabufio::Probe p = dmabufio::probe();
    EXPECT_TRUE(p.dmabuf_slots) << p.why;
}

TEST(Library, FixedFileAndDmaBufSlotRoundTrip) {
    BlockFile dev(guest::kDevice);
    Ring ring(16);
    const std::array<int, 1> fds{dev.fd()};
    FixedFiles files(ring, fds);
    DmaBuf buf = DmaBuf::allocate(Exporter::kUdmabuf, kMiB);
    BufferTable table(ring, 2);
    ASSERT_EQ(table.register_dmabuf(0, buf, dev.fd()), SlotKind::kDmaBuf);
    // Write a pattern from the dma-buf through the fixed file, read it back with the reference.
    guest::Memory pattern(kMiB);
    guest::fill(pattern.data(), kMiB, 7);
    buf.begin_cpu_access(true);
    std::memcpy(buf.map().data(), pattern.data(), kMiB);
    buf.end_cpu_access(true);
    ASSERT_EQ(table.write(files[0], 0, 0, kMiB, kDevBase), static_cast<int>(kMiB));
    guest::Memory back(kMiB);
    guest::Reference().read(back.data(), kMiB, kDevBase);
    EXPECT_EQ(std::memcmp(back.data(), pattern.data(), kMiB), 0);
    // And the other way, into a cleared dma-buf.
    buf.begin_cpu_access(true);
    std::memset(buf.map().data(), 0, kMiB);
    buf.end_cpu_access(true);
    read_and_verify(table, files[0], buf, pattern, kMiB);
}

TEST(Library, DmaBufSlotThroughAnotherFileIsEbadfWithAdvice) {
    BlockFile dev(guest::kDevice);
    BlockFile other(guest::kDevice);  // the same device, another struct file
    Ring ring(4);
    const std::array<int, 2> fds{other.fd(), dev.fd()};
    FixedFiles files(ring, fds);
    DmaBuf buf = DmaBuf::allocate(Exporter::kUdmabuf, 64 * kKiB);
    BufferTable table(ring, 1);
    ASSERT_EQ(table.register_dmabuf(0, buf, dev.fd()), SlotKind::kDmaBuf);
    EXPECT_EQ(table.read(files[1], 0, 0, 4096, kDevBase), 4096);
    const int res = table.read(files[0], 0, 0, 4096, kDevBase);
    EXPECT_EQ(res, -EBADF);
    EXPECT_NE(dmabufio::io_advice(-res).find("registered against"), std::string::npos);
}

TEST(Library, BatchSubmitAndReapOnADmaBufSlot) {
    constexpr unsigned kIos = 64;
    constexpr std::size_t kBs = 16 * kKiB;
    BlockFile dev(guest::kDevice);
    RingOptions o;
    o.depth = 32;
    Ring ring(o);
    const std::array<int, 1> fds{dev.fd()};
    FixedFiles files(ring, fds);
    auto expect = seed_device(kIos * kBs, 11);
    DmaBuf buf = DmaBuf::allocate(Exporter::kHeap, kIos * kBs);
    BufferTable table(ring, 1);
    ASSERT_EQ(table.register_dmabuf(0, buf, dev.fd()), SlotKind::kDmaBuf);
    // Batches of 16 queued then submitted at once; completions reaped 8 at a time.
    unsigned queued = 0;
    unsigned done = 0;
    std::array<Completion, 8> cqes{};
    while (done < kIos) {
        while (queued < kIos && queued - done < 32 && ring.queued() < 16) {
            table.prep(false, files[0], 0, queued * kBs, kBs, kDevBase + queued * kBs, queued);
            queued++;
        }
        ring.submit();
        const unsigned n = ring.reap(cqes, 1);
        for (unsigned i = 0; i < n; i++) {
            ASSERT_EQ(cqes[i].res, static_cast<int>(kBs)) << "I/O " << cqes[i].user_data;
        }
        done += n;
    }
    buf.begin_cpu_access(false);
    EXPECT_EQ(std::memcmp(buf.map().data(), expect->data(), kIos * kBs), 0);
    buf.end_cpu_access(false);
}

// A synchronous read on a dma-buf slot while the caller's own asynchronous reads are in flight on
// the same ring: the sync read returns its own result and data, and every asynchronous completion
// reaches reap() exactly once.
TEST(Library, SyncReadWithOtherIoInFlightKeepsEveryCompletionWithItsOwner) {
    constexpr unsigned kIos = 16;
    constexpr std::size_t kBs = 64 * kKiB;
    BlockFile dev(guest::kDevice);
    Ring ring(32);
    auto expect = seed_device((kIos + 1) * kBs, 53);
    DmaBuf buf = DmaBuf::allocate(Exporter::kUdmabuf, (kIos + 1) * kBs);
    BufferTable table(ring, 1);
    ASSERT_EQ(table.register_dmabuf(0, buf, dev.fd()), SlotKind::kDmaBuf);
    for (unsigned i = 0; i < kIos; i++) {
        table.prep(false, dev.fd(), 0, i * kBs, kBs, kDevBase + i * kBs, 1000 + i);
    }
    ring.submit();
    EXPECT_EQ(table.read(dev.fd(), 0, kIos * kBs, kBs, kDevBase + kIos * kBs),
              static_cast<int>(kBs));
    std::array<Completion, kIos + 1> cqes{};
    ASSERT_EQ(ring.reap(cqes, kIos), kIos);
    std::array<int, kIos> seen{};
    for (unsigned i = 0; i < kIos; i++) {
        ASSERT_GE(cqes[i].user_data, 1000U);
        ASSERT_LT(cqes[i].user_data, 1000U + kIos);
        EXPECT_EQ(cqes[i].res, static_cast<int>(kBs)) << cqes[i].user_data;
        seen.at(cqes[i].user_data - 1000)++;
    }
    EXPECT_EQ(seen, (std::array<int, kIos>{1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1}));
    EXPECT_EQ(ring.ready(), 0U);
    buf.begin_cpu_access(false);
    EXPECT_EQ(std::memcmp(buf.map().data(), expect->data(), (kIos + 1) * kBs), 0);
    buf.end_cpu_access(false);
}

// The C API on the series kernel: the probe, a tagged dma-buf registration read through with
// liburing alone, the tag posted once the slot is cleared, and each documented errno.
TEST(LibraryCApi, RegisterReadClearAndTheTagArrives) {
    const char* advice = nullptr;
    EXPECT_EQ(dmabufio_probe(&advice), 1) << advice;
    BlockFile dev(guest::kDevice);
    auto expect = seed_device(256 * kKiB, 61);
    DmaBuf buf = DmaBuf::allocate(Exporter::kUdmabuf, 256 * kKiB);
    io_uring ring{};
    ASSERT_EQ(io_uring_queue_init(8, &ring, 0), 0);
    EXPECT_EQ(dmabufio_register_dmabuf(&ring, 0, buf.fd(), dev.fd(), 0), -ENXIO);  // no table
    ASSERT_EQ(io_uring_register_buffers_sparse(&ring, 2), 0);
    ASSERT_EQ(dmabufio_register_dmabuf(&ring, 1, buf.fd(), dev.fd(), 0xabc), 0);
    io_uring_sqe* sqe = io_uring_get_sqe(&ring);
    // The addr of a dma-buf slot is the byte offset into the dma-buf: 64 KiB here.
    // NOLINTNEXTLINE(performance-no-int-to-ptr)
    io_uring_prep_read_fixed(sqe, dev.fd(), reinterpret_cast<void*>(64 * kKiB), 192 * kKiB,
                             kDevBase, 1);
    sqe->user_data = 1;
    io_uring_cqe* cqe = nullptr;
    ASSERT_EQ(io_uring_submit_and_wait(&ring, 1), 1);
    ASSERT_EQ(io_uring_peek_cqe(&ring, &cqe), 0);
    EXPECT_EQ(cqe->user_data, 1U);
    EXPECT_EQ(cqe->res, static_cast<int>(192 * kKiB));
    io_uring_cqe_seen(&ring, cqe);
    buf.begin_cpu_access(false);
    EXPECT_EQ(std::memcmp(buf.map().data() + 64 * kKiB, expect->data(), 192 * kKiB), 0);
    buf.end_cpu_access(false);
    EXPECT_EQ(io_uring_peek_cqe(&ring, &cqe), -EAGAIN);  // the tag waits for the slot to go
    ASSERT_EQ(dmabufio_clear_buffer(&ring, 1), 0);
    __kernel_timespec two_s{2, 0};
    ASSERT_EQ(io_uring_wait_cqe_timeout(&ring, &cqe, &two_s), 0) << "no tag within 2 s";
    EXPECT_EQ(cqe->user_data, 0xabcU);
    EXPECT_EQ(cqe->res, 0);
    io_uring_cqe_seen(&ring, cqe);
    // The errnos of the man pages.
    EXPECT_EQ(dmabufio_register_dmabuf(&ring, 2, buf.fd(), dev.fd(), 0), -EINVAL);  // no slot 2
    EXPECT_EQ(dmabufio_register_dmabuf(&ring, 0, dev.fd(), dev.fd(), 0), -EBADF);   // no dma-buf
    const int closed = ::dup(dev.fd());
    ::close(closed);
    EXPECT_EQ(dmabufio_register_dmabuf(&ring, 0, buf.fd(), closed, 0), -EBADF);
    const dmabufio::Fd buffered(::open(guest::kDevice, O_RDWR | O_CLOEXEC));
    EXPECT_EQ(dmabufio_register_dmabuf(&ring, 0, buf.fd(), buffered.get(), 0), -EOPNOTSUPP);
    const io_uring_regbuf_desc empty{};
    const __u64 tag = 5;
    EXPECT_EQ(dmabufio_update_buffers(&ring, 0, &empty, &tag, 1), -EINVAL);  // tag on empty
    EXPECT_EQ(dmabufio_clear_buffer(&ring, 2), -EINVAL);
    io_uring_queue_exit(&ring);
}

// Any dma-buf fd adopted (size from lseek), registered through owning, tagged handles against a
// read-only open of the device: reads land, writes are refused, a full table is ENOSPC, and each
// handle's end clears its slot and brings its tag to reap().
TEST(Library, AdoptedDmaBufTaggedRegistrationsOnAReadOnlyDevice) {
    BlockFile dev(guest::kDevice, dmabufio::Access::kReadOnly);
    EXPECT_TRUE(dev.is_block_device());
    EXPECT_EQ(dev.logical_block_size(), BlockFile(guest::kDevice).logical_block_size());
    auto expect = seed_device(512 * kKiB, 67);
    DmaBuf buf = DmaBuf::allocate(Exporter::kHeap, 512 * kKiB);
    DmaBuf adopted = DmaBuf::adopt(dmabufio::Fd(::dup(buf.fd())));
    EXPECT_EQ(adopted.size(), 512 * kKiB);
    EXPECT_EQ(adopted.exporter(), Exporter::kAdopted);
    Ring ring(8);
    BufferTable table(ring, 2);
    {
        dmabufio::Registration a = table.add_dmabuf(adopted, dev.fd(), 0x55);
        dmabufio::Registration b = table.add_dmabuf(buf, dev.fd());
        EXPECT_EQ(a.slot(), 0U);
        EXPECT_EQ(b.slot(), 1U);
        try {
            (void)table.add_dmabuf(buf, dev.fd());
            ADD_FAILURE() << "a third registration in a table of two";
        } catch (const dmabufio::Error& e) {
            EXPECT_EQ(e.err(), ENOSPC) << e.what();
        }
        EXPECT_EQ(table.read(dev.fd(), a.slot(), 0, 512 * kKiB, kDevBase),
                  static_cast<int>(512 * kKiB));
        EXPECT_EQ(table.write(dev.fd(), a.slot(), 0, 4096, kDevBase), -EBADF);  // read-only
        dmabufio::Registration moved = std::move(a);
        // Checking the move itself:
        // NOLINTNEXTLINE(bugprone-use-after-move,clang-analyzer-cplusplus.Move)
        EXPECT_FALSE(a.valid());
        EXPECT_EQ(moved.slot(), 0U);
        std::array<Completion, 1> c{};
        EXPECT_EQ(ring.reap(c, 0), 0U);  // no tag while the registration lives
    }
    EXPECT_EQ(table.kind(0), SlotKind::kEmpty);
    EXPECT_EQ(table.kind(1), SlotKind::kEmpty);
    // A NOP through the kernel, then the tag must be there (bounded: no wait for it).
    const std::uint64_t nop = ring.sync_user_data();
    io_uring_sqe* s = ring.sqe();
    io_uring_prep_nop(s);
    s->user_data = nop;
    EXPECT_EQ(ring.wait_for(nop), 0);
    std::array<Completion, 2> c{};
    ASSERT_EQ(ring.reap(c, 0), 1U) << "no tag posted";
    EXPECT_EQ(c[0].user_data, 0x55U);
    EXPECT_EQ(c[0].res, 0);
    buf.begin_cpu_access(false);
    EXPECT_EQ(std::memcmp(buf.map().data(), expect->data(), 512 * kKiB), 0);
    buf.end_cpu_access(false);
}

// Large transfers on a dma-buf slot: one call each way, split at the device's largest request
// (its sysfs max_sectors_kb) or a chosen one, pipelined; data compared with the reference path.
TEST(Library, LargeReadAndWriteOfADmaBufSplitAndPipelined) {
    constexpr std::size_t kLen = 8 * kMiB + 12 * kKiB;
    BlockFile dev(guest::kDevice);
    std::ifstream sysfs("/sys/block/nvme0n1/queue/max_sectors_kb");
    std::uint32_t kb = 0;
    ASSERT_TRUE(sysfs >> kb);
    EXPECT_EQ(dmabufio::max_request_bytes(dev), kb * 1024);
    auto expect = seed_device(kLen, 79);
    DmaBuf buf = DmaBuf::allocate(Exporter::kHeap, kLen);
    Ring ring(16);
    BufferTable table(ring, 1);
    ASSERT_EQ(table.register_dmabuf(0, buf, dev.fd()), SlotKind::kDmaBuf);
    std::future<std::uint64_t> r = dmabufio::read(table, dev, 0, 0, kDevBase, kLen);
    EXPECT_EQ(r.get(), kLen);
    buf.begin_cpu_access(true);
    EXPECT_EQ(std::memcmp(buf.map().data(), expect->data(), kLen), 0);
    guest::fill(buf.map().data(), kLen, 83);
    buf.end_cpu_access(true);
    const dmabufio::TransferOptions o{.queue_depth = 3, .max_request = 192 * kKiB};
    EXPECT_EQ(dmabufio::write(table, dev, 0, 0, kDevBase + 16 * kMiB, kLen, o).get(), kLen);
    guest::Memory back(kLen);
    guest::Reference().read(back.data(), kLen, kDevBase + 16 * kMiB);
    buf.begin_cpu_access(false);
    EXPECT_EQ(std::memcmp(back.data(), buf.map().data(), kLen), 0);
    buf.end_cpu_access(false);
}

// SQPOLL and a registered ring fd together, with a dma-buf slot (and a user slot beside it).
TEST(Library, SqpollAndRegisteredRingFdWithDmaBufAndUserSlots) {
    BlockFile dev(guest::kDevice);
    RingOptions o;
    o.depth = 8;
    o.sqpoll = true;
    o.sqpoll_idle_ms = 50;
    o.register_ring_fd = true;
    Ring ring(o);
    EXPECT_TRUE(ring.ring_fd_registered());
    const std::array<int, 1> fds{dev.fd()};
    FixedFiles files(ring, fds);
    auto expect = seed_device(kMiB, 23);
    DmaBuf buf = DmaBuf::allocate(Exporter::kTest, kMiB);
    guest::Memory user(kMiB);
    BufferTable table(ring, 2);
    ASSERT_EQ(table.register_dmabuf(0, buf, dev.fd()), SlotKind::kDmaBuf);
    table.register_user(1, user.data(), kMiB);
    read_and_verify(table, files[0], buf, *expect, kMiB);
    ASSERT_EQ(table.read(files[0], 1, 0, kMiB, kDevBase), static_cast<int>(kMiB));
    EXPECT_EQ(std::memcmp(user.data(), expect->data(), kMiB), 0);
}

// IOPOLL: with poll queues, dma-buf and user slots read correctly by polling; without them the
// I/O fails with EOPNOTSUPP and the advice names nvme.poll_queues. The CTest entry guest-iopoll
// boots with --append nvme.poll_queues=1; the ordinary suites see the other branch.
TEST(Library, IopollOnPollQueuesOrAdviceWithout) {
    BlockFile dev(guest::kDevice);
    RingOptions o;
    o.depth = 16;
    o.iopoll = true;
    Ring ring(o);
    const std::array<int, 1> fds{dev.fd()};
    FixedFiles files(ring, fds);
    auto expect = seed_device(kMiB, 31);
    DmaBuf buf = DmaBuf::allocate(Exporter::kUdmabuf, kMiB);
    guest::Memory user(kMiB);
    BufferTable table(ring, 2);
    ASSERT_EQ(table.register_dmabuf(0, buf, dev.fd()), SlotKind::kDmaBuf);
    table.register_user(1, user.data(), kMiB);
    if (!poll_queues()) {
        const int res = table.read(files[0], 1, 0, 4096, kDevBase);
        EXPECT_EQ(res, -EOPNOTSUPP);
        EXPECT_NE(dmabufio::io_advice(-res, true).find("nvme.poll_queues"), std::string::npos);
        // No NVMe poll queues in this boot: the refusal and its advice are what is tested here;
        // the guest-iopoll CTest entry boots with nvme.poll_queues=1 and runs the polled path.
        return;
    }
    read_and_verify(table, files[0], buf, *expect, kMiB);
    ASSERT_EQ(table.read(files[0], 1, 0, kMiB, kDevBase), static_cast<int>(kMiB));
    EXPECT_EQ(std::memcmp(user.data(), expect->data(), kMiB), 0);
    // Many in flight at once, polled.
    std::memset(user.data(), 0, kMiB);
    for (std::size_t i = 0; i < 16; i++) {
        table.prep(false, files[0], 1, i * 64 * kKiB, 64 * kKiB, kDevBase + i * 64 * kKiB, i);
    }
    std::array<Completion, 16> cqes{};
    EXPECT_EQ(ring.reap(cqes, 16), 16U);
    for (const auto& c : cqes) {
        EXPECT_EQ(c.res, static_cast<int>(64 * kKiB));
    }
    EXPECT_EQ(std::memcmp(user.data(), expect->data(), kMiB), 0);
}

// MOVE through the library (the exporter's device kept open): I/O after each MOVE still lands in
// the dma-buf's (new) memory.
TEST(Library, IoAfterEachMoveLandsInTheNewPages) {
    BlockFile dev(guest::kDevice);
    Ring ring(8);
    const std::array<int, 1> fds{dev.fd()};
    FixedFiles files(ring, fds);
    DmaBuf buf = DmaBuf::allocate(Exporter::kTest, 256 * kKiB);
    BufferTable table(ring, 1);
    ASSERT_EQ(table.register_dmabuf(0, buf, dev.fd()), SlotKind::kDmaBuf);
    for (int i = 0; i < 8; i++) {
        auto expect = seed_device(256 * kKiB, 100 + i);
        buf.move();
        read_and_verify(table, files[0], buf, *expect, 256 * kKiB);
    }
}

// The examples, as installed and built against the installed package by the host unit test
// install-and-examples (tests/unit/install/check, into DMABUFIO_INSTALL_TEST_DIR): each reads a
// seeded device region into a dma-buf and prints the FNV-1a hash of what arrived.
std::string fnv1a64(const std::uint8_t* p, std::size_t n) {
    std::uint64_t h = 0xcbf29ce484222325ULL;
    for (std::size_t i = 0; i < n; i++) {
        h = (h ^ p[i]) * 0x100000001b3ULL;
    }
    std::array<char, 17> hex{};
    std::snprintf(hex.data(), hex.size(), "%016llx", static_cast<unsigned long long>(h));
    return hex.data();
}

// Runs cmd, returns (exit status, stdout and stderr).
std::string installed_example(const char* name) {
    std::string path = std::string(DMABUFIO_INSTALL_TEST_DIR) + "/" + name;
    EXPECT_EQ(::access(path.c_str(), X_OK), 0)
        << path << " is missing: the host unit test install-and-examples builds it "
        << "(ctest -L unit, which make check runs before the guest suites)";
    return path;
}

TEST(LibraryExamples, CExampleReadsTheDeviceIntoADmaBuf) {
    const std::string bin = installed_example("read_to_dmabuf");
    auto expect = seed_device(2 * kMiB, 71);
    const auto [status, out] =
        guest::run_command(bin + " " + guest::kDevice + " " + std::to_string(2 * kMiB) + " " +
                           std::to_string(kDevBase));
    EXPECT_EQ(status, 0) << out;
    EXPECT_EQ(out, "read 2097152 bytes into the dma-buf; fnv1a64 " +
                       fnv1a64(expect->data(), 2 * kMiB) + "\n");
}

TEST(LibraryExamples, CxxExampleLoadsTheDeviceIntoADmaBufAndPrintsBandwidth) {
    const std::string bin = installed_example("cmake/load_file");
    auto expect = seed_device(8 * kMiB + 64 * kKiB, 73);  // not a multiple of the 1 MiB reads
    const auto [status, out] =
        guest::run_command(bin + " " + guest::kDevice + " " + std::to_string(8 * kMiB + 64 * kKiB) +
                           " " + std::to_string(kDevBase) + " 4");
    EXPECT_EQ(status, 0) << out;
    const std::string hash = fnv1a64(expect->data(), 8 * kMiB + 64 * kKiB);
    EXPECT_TRUE(out.starts_with("loaded 8454144 bytes in ")) << out;
    EXPECT_NE(out.find(" MiB/s; fnv1a64 " + hash + "\n"), std::string::npos)
        << out << "expected hash " << hash;
    std::printf("[          ] %s", out.c_str());
}

// In guest-iopoll only (LibraryLarge is excluded from the IOMMU-mode boots). Device region:
// [2 GiB, 3 GiB).
// The large-read API end to end at 1 GiB: the device region written with a pattern in which every
// 8 bytes name their own offset, read into a 1 GiB system-heap dma-buf in one call (split at the
// device's largest request, 8 in flight), checked word by word through the CPU mapping. fio reads
// the same region the same way (io_uring, that request size and depth), Debian's into fixed
// buffers of host memory and the patched one into a dma-buf, for a side-by-side bandwidth
// (printed; speed targets live in make bench).
TEST(LibraryLarge, OneGiBReadIntoADmaBufIsVerified) {
    constexpr std::uint64_t kBase = 2 * kGiB;
    constexpr std::size_t kLen = kGiB;
    constexpr std::size_t kChunk = 64 * kMiB;
    constexpr std::uint64_t kSalt = 0x9e3779b97f4a7c15ULL;
    BlockFile dev(guest::kDevice);
    {
        const guest::Reference ref;
        guest::Memory chunk(kChunk);
        for (std::uint64_t off = 0; off < kLen; off += kChunk) {
            auto* w = reinterpret_cast<std::uint64_t*>(chunk.data());
            for (std::size_t i = 0; i < kChunk / 8; i++) {
                w[i] = (off + i * 8) ^ kSalt;
            }
            ref.write(chunk.data(), kChunk, kBase + off);
        }
    }
    DmaBuf buf = DmaBuf::allocate(Exporter::kHeap, kLen);
    Ring ring(16);
    BufferTable table(ring, 1);
    ASSERT_EQ(table.register_dmabuf(0, buf, dev.fd()), SlotKind::kDmaBuf);
    const std::uint32_t req = dmabufio::max_request_bytes(dev);
    const auto t0 = std::chrono::steady_clock::now();
    EXPECT_EQ(dmabufio::read(table, dev, 0, 0, kBase, kLen, {.queue_depth = 8}).get(), kLen);
    const double secs =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    buf.begin_cpu_access(false);
    const auto* w = reinterpret_cast<const std::uint64_t*>(buf.map().data());
    std::size_t bad = 0;
    for (std::size_t i = 0; i < kLen / 8; i++) {
        bad += static_cast<std::size_t>(w[i] != ((i * 8) ^ kSalt));
    }
    buf.end_cpu_access(false);
    EXPECT_EQ(bad, 0U) << "words of the 1 GiB read that differ from the device";

    // fio on the same region, same request size and depth: Debian's (fixed buffers in host
    // memory) and the patched one with dmabuf=heap (make fio). --minimal: field 7 is KiB/s.
    auto fio_mib_s = [&](const std::string& bin, const std::string& extra) {
        const std::string cmd =
            bin + " --name=large --filename=" + guest::kDevice +
            " --ioengine=io_uring --fixedbufs=1 --direct=1 --rw=read --bs=" + std::to_string(req) +
            " --iodepth=8 --offset=" + std::to_string(kBase) + " --size=" + std::to_string(kLen) +
            extra + " --minimal";
        const auto [status, out] = guest::run_command(cmd);
        EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << cmd << "\n" << out;
        const std::size_t terse = out.find("3;fio-");  // after the engine's own lines
        std::vector<std::string> f;
        for (std::size_t a = terse, b = 0; terse != std::string::npos && b != std::string::npos;
             a = b + 1) {
            b = out.find(';', a);
            f.push_back(out.substr(a, b == std::string::npos ? b : b - a));
        }
        EXPECT_GT(f.size(), 7U) << cmd << "\n" << out;
        return f.size() > 7 ? std::stod(f[6]) / 1024.0 : 0.0;
    };
    const double debian = fio_mib_s("fio", "");
    const double patched = fio_mib_s(DMABUFIO_FIO_BINARY, " --dmabuf=heap --registerfiles=1");
    std::printf(
        "[  large ] 1 GiB read into a dma-buf, %u KiB requests, 8 in flight: %.1f MiB/s "
        "(%.2f s); fio, same reads: %.1f MiB/s into host memory (Debian's), %.1f MiB/s "
        "into a dma-buf (dmabuf=heap)\n",
        req / 1024, 1024.0 / secs, secs, debian, patched);
}

}  // namespace
