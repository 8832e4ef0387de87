// Files on ext4 and XFS (issue #12 item 1): dma-buf slots registered against an O_DIRECT file on
// a filesystem made on /dev/nvme0n1 (its own boot: make check's guest-files), READ_FIXED and
// WRITE_FIXED at the file's extents, holes and unwritten extents, checked byte for byte against
// the ordinary O_DIRECT path; the cases the filesystem cannot carry without the buffer's pages
// refused with their errno; truncate, hole punch and unlink racing with I/O; and the filesystem
// checked (e2fsck -fn, xfs_repair -n) after every test.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <linux/falloc.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <fstream>
#include <string>
#include <thread>
#include <tuple>
#include <vector>

#include "dmabufio/buffer_table.hpp"
#include "dmabufio/dmabuf.hpp"
#include "dmabufio/fd.hpp"
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

constexpr const char* kMount = "/tmp/dmabufio-fs";

// The file's bytes through the ordinary O_DIRECT path (a second descriptor).
class Plain {
  public:
    explicit Plain(const std::string& path)
        : fd_(::open(path.c_str(), O_RDWR | O_CREAT | O_DIRECT, 0644)) {
        if (!fd_.valid()) {
            throw std::runtime_error("open " + path + ": " + std::strerror(errno));
        }
    }
    void write(const std::uint8_t* p, std::size_t n, std::uint64_t off) const {
        if (::pwrite(fd_.get(), p, n, static_cast<off_t>(off)) != static_cast<ssize_t>(n)) {
            throw std::runtime_error(std::string("pwrite: ") + std::strerror(errno));
        }
    }
    // Reads n bytes; what lies beyond the end of the file reads as zeros.
    void read(std::uint8_t* p, std::size_t n, std::uint64_t off) const {
        std::memset(p, 0, n);
        if (::pread(fd_.get(), p, n, static_cast<off_t>(off)) < 0) {
            throw std::runtime_error(std::string("pread: ") + std::strerror(errno));
        }
    }

  private:
    Fd fd_;
};

class Files : public testing::TestWithParam<std::string> {
  protected:
    void SetUp() override {
        ASSERT_TRUE(dmabufio::probe().dmabuf_slots) << dmabufio::probe().why;
        std::ofstream("/sys/module/udmabuf/parameters/size_limit_mb") << 1024 << std::endl;
        // ext4 with inline data, so that a small file can be stored in its inode.
        const std::string mkfs =
            fs() == "ext4" ? "mkfs.ext4 -q -F -O inline_data " : "mkfs.xfs -q -f ";
        auto [st, out] = guest::run_command(mkfs + guest::kDevice);
        ASSERT_EQ(st, 0) << out;
        ::mkdir(kMount, 0755);
        ASSERT_EQ(::mount(guest::kDevice, kMount, fs().c_str(), 0, nullptr), 0)
            << std::strerror(errno);
        mounted_ = true;
    }
    void TearDown() override {
        if (!mounted_) {
            return;
        }
        unmount();
        const std::string check = fs() == "ext4" ? "e2fsck -fn " : "xfs_repair -n ";
        auto [st, out] = guest::run_command(check + guest::kDevice);
        EXPECT_EQ(st, 0) << check << "found problems:\n" << out;
    }
    // Unmounts the filesystem (every file on it closed, its registrations cleared) and mounts it
    // again with opts.
    static void remount(const char* opts) {
        unmount();
        ASSERT_EQ(::mount(guest::kDevice, kMount, fs().c_str(), 0, opts), 0)
            << opts << ": " << std::strerror(errno);
    }
    static void unmount() {
        // io_uring drops a registered file's last reference after its slot or ring is gone,
        // from a worker: until then the filesystem is busy.
        int err = 0;
        ASSERT_TRUE(guest::wait_until(
            [&] {
                err = ::umount(kMount) == 0 ? 0 : errno;
                return err != EBUSY;
            },
            10))
            << "still busy";
        ASSERT_EQ(err, 0) << std::strerror(err);
    }
    [[nodiscard]] static std::string fs() { return GetParam(); }
    [[nodiscard]] static std::string path(const char* name) {
        return std::string(kMount) + "/" + name;
    }
    static Fd open_file(const char* name, int flags = O_DIRECT) {
        Fd f(::open(path(name).c_str(), O_RDWR | O_CREAT | flags, 0644));
        if (!f.valid()) {
            throw std::runtime_error("open " + path(name) + ": " + std::strerror(errno));
        }
        return f;
    }

    bool mounted_ = false;
};

// Writes 1 MiB pieces of two files in turn, so that each file's extents are 1 MiB apart on disk:
// I/O at the file's offsets crosses extent boundaries.
void interleave(const Plain& a, const Plain& b, std::uint64_t from, std::uint64_t to,
                const guest::Memory& data, std::uint64_t data_base) {
    for (std::uint64_t off = from; off < to; off += kMiB) {
        a.write(data.data() + (off - data_base), kMiB, off);
        b.write(data.data(), kMiB, off);
    }
}

// The file is: data [0, 8 MiB) in 1 MiB extents, a hole [8, 12 MiB), an unwritten (fallocated)
// extent [12, 16 MiB), data [16, 20 MiB); the dma-buf reads it in pieces of 4 KiB to 3 MiB at both
// ends of the buffer and every boundary, checked against what the ordinary path reads; then writes
// fill the hole and the unwritten extent and extend the file, read back through the ordinary path,
// and fsync.
TEST_P(Files, ReadsExtentsHolesAndUnwrittenThenWritesAllocateAndExtend) {
    constexpr std::size_t kFile = 20 * kMiB;
    Fd f = open_file("data");
    Plain plain(path("data"));
    Plain other(path("other"));
    guest::Memory data(kFile);
    guest::fill(data.data(), kFile, 12);
    interleave(plain, other, 0, 8 * kMiB, data, 0);
    interleave(plain, other, 16 * kMiB, kFile, data, 0);
    ASSERT_EQ(::fallocate(f.get(), FALLOC_FL_KEEP_SIZE, 12 * kMiB, 4 * kMiB), 0);
    std::memset(data.data() + 8 * kMiB, 0, 8 * kMiB);  // the hole and the unwritten extent

    Ring ring(8);
    BufferTable table(ring, 1);
    // 8 MiB: every hole read maps the whole dma-buf into the kernel, and every CPU-access bracket
    // syncs all of it.
    constexpr std::size_t kBuf = 8 * kMiB;
    DmaBuf buf = DmaBuf::allocate(Exporter::kUdmabuf, kBuf);
    ASSERT_EQ(table.register_dmabuf(0, buf, f.get()), SlotKind::kDmaBuf);
    auto view = buf.map();
    std::size_t verified = 0;
    std::uint64_t seed = 1;
    for (std::size_t len : {4 * kKiB, 60 * kKiB, 512 * kKiB, kMiB + 4 * kKiB, 3 * kMiB}) {
        for (std::uint64_t at : {std::uint64_t{0}, kMiB - 4 * kKiB, 8 * kMiB - 8 * kKiB,
                                 12 * kMiB - kMiB / 2, 16 * kMiB - 4 * kKiB, kFile - len}) {
            for (std::uint64_t boff : {std::uint64_t{0}, kBuf - len}) {
                SCOPED_TRACE(testing::Message()
                             << "len " << len << " file off " << at << " buf off " << boff);
                buf.begin_cpu_access(true);
                std::memset(view.data() + boff, 0xa5, len);  // holes must be zeroed, not skipped
                buf.end_cpu_access(true);
                // Holes and unwritten extents are not zeroed in the dma-buf: a read that starts
                // in one is refused (EOPNOTSUPP), one that reaches one is short, and the rest of
                // the buffer stays as it was.
                std::size_t good = len;
                int want = static_cast<int>(len);
                if (at < 16 * kMiB && at + len > 8 * kMiB) {
                    good = at < 8 * kMiB ? 8 * kMiB - at : 0;
                    want = good != 0 ? static_cast<int>(good) : -EOPNOTSUPP;
                }
                ASSERT_EQ(table.read(f.get(), 0, boff, static_cast<unsigned>(len), at), want);
                buf.begin_cpu_access(false);
                ASSERT_EQ(std::memcmp(view.data() + boff, data.data() + at, good), 0);
                ASSERT_TRUE(std::all_of(view.data() + boff + good, view.data() + boff + len,
                                        [](std::uint8_t c) { return c == 0xa5; }))
                    << "a refused range was written";
                buf.end_cpu_access(false);
                verified += good;
            }
        }
    }
    // Writes: into the hole, across the unwritten extent's start and end, and past the end of
    // the file (the file grows to the write's end).
    guest::Memory back(4 * kMiB);
    for (auto [at, len] : {std::pair{9 * kMiB + 4 * kKiB, 2 * kMiB}, std::pair{11 * kMiB, 2 * kMiB},
                           std::pair{15 * kMiB, 2 * kMiB}, std::pair{kFile - kMiB, 3 * kMiB}}) {
        SCOPED_TRACE(testing::Message() << "write len " << len << " file off " << at);
        buf.begin_cpu_access(true);
        guest::fill(view.data(), len, seed++);
        buf.end_cpu_access(true);
        ASSERT_EQ(table.write(f.get(), 0, 0, static_cast<unsigned>(len), at),
                  static_cast<int>(len));
        plain.read(back.data(), len, at);
        buf.begin_cpu_access(false);
        ASSERT_EQ(std::memcmp(back.data(), view.data(), len), 0);
        buf.end_cpu_access(false);
        verified += len;
    }
    struct stat st {};
    ASSERT_EQ(::fstat(f.get(), &st), 0);
    EXPECT_EQ(st.st_size, static_cast<off_t>(kFile + 2 * kMiB));
    EXPECT_EQ(::fsync(f.get()), 0);
    std::printf("[          ] %s: %zu bytes verified\n", fs().c_str(), verified);
}

// The test exporter has no kernel mapping (vmap): data reads, a read of a hole is EOPNOTSUPP and
// leaves the buffer as it was.
TEST_P(Files, AHoleReadWithoutTheExportersKernelMappingIsEopnotsupp) {
    Fd f = open_file("data");
    Plain plain(path("data"));
    guest::Memory data(kMiB);
    guest::fill(data.data(), kMiB, 5);
    plain.write(data.data(), kMiB, 0);
    ASSERT_EQ(::ftruncate(f.get(), 4 * kMiB), 0);
    Ring ring(8);
    BufferTable table(ring, 1);
    DmaBuf buf = DmaBuf::allocate(Exporter::kTest, 4 * kMiB);
    ASSERT_EQ(table.register_dmabuf(0, buf, f.get()), SlotKind::kDmaBuf);
    auto view = buf.map();
    ASSERT_EQ(table.read(f.get(), 0, 0, kMiB, 0), static_cast<int>(kMiB));
    EXPECT_EQ(std::memcmp(view.data(), data.data(), kMiB), 0);
    std::memset(view.data() + kMiB, 0x5a, kMiB);
    EXPECT_EQ(table.read(f.get(), 0, kMiB, kMiB, 2 * kMiB), -EOPNOTSUPP);
    EXPECT_EQ(view[kMiB], 0x5a);
    EXPECT_EQ(view[2 * kMiB - 1], 0x5a);
}

// What any direct I/O refuses, and a descriptor whose O_DIRECT was cleared (no buffered fallback);
// nothing refused is written.
TEST_P(Files, UnalignedOtherFilesAndBufferedDescriptorsAreRefused) {
    Fd f = open_file("data");
    Plain plain(path("data"));
    guest::Memory data(kMiB);
    guest::fill(data.data(), kMiB, 9);
    plain.write(data.data(), kMiB, 0);
    Ring ring(8);
    BufferTable table(ring, 1);
    DmaBuf buf = DmaBuf::allocate(Exporter::kUdmabuf, 4 * kMiB);

    Fd buffered = open_file("data", 0);
    EXPECT_EQ(table.update(0, guest::dmabuf_desc(buf.fd(), buffered.get())), -EOPNOTSUPP)
        << "no O_DIRECT";
    ASSERT_EQ(table.update(0, guest::dmabuf_desc(buf.fd(), f.get())), 1);
    // Offsets and lengths below the logical block size, as for any direct I/O.
    EXPECT_EQ(table.read(f.get(), 0, 0, 4096, 100), -EINVAL) << "unaligned file offset";
    EXPECT_EQ(table.read(f.get(), 0, 0, 100, 0), -EINVAL) << "unaligned length";
    // Another file of the same filesystem.
    Fd g = open_file("other");
    EXPECT_EQ(table.read(g.get(), 0, 0, 4096, 0), -EBADF) << "another file";
    // O_DIRECT cleared after registration: no buffered fallback.
    ASSERT_EQ(::fcntl(f.get(), F_SETFL, 0), 0);
    EXPECT_EQ(table.read(f.get(), 0, 0, 4096, 0), -EOPNOTSUPP) << "O_DIRECT cleared (read)";
    EXPECT_EQ(table.write(f.get(), 0, 0, 4096, 0), -EOPNOTSUPP) << "O_DIRECT cleared (write)";
    ASSERT_EQ(::fcntl(f.get(), F_SETFL, O_DIRECT), 0);
    EXPECT_EQ(table.read(f.get(), 0, 0, 4096, 0), 4096) << "O_DIRECT set again";

    // Nothing refused wrote anything: the file still holds what the ordinary path wrote.
    guest::Memory back(kMiB);
    plain.read(back.data(), kMiB, 0);
    EXPECT_EQ(std::memcmp(back.data(), data.data(), kMiB), 0);
}

// What only ext4 or only XFS would do through the page cache. ext4: data journalling for one file
// (chattr +j, which takes effect only without delayed allocation, so the filesystem is mounted
// nodelalloc first) refused at registration and on I/O once set, and for the whole filesystem
// (data=journal); inline data. XFS: an unaligned write to a reflinked file.
TEST_P(Files, JournalledInlineAndReflinkedFilesAreRefused) {
    guest::Memory data(kMiB);
    guest::fill(data.data(), kMiB, 21);
    guest::Memory back(kMiB);
    Ring ring(8);
    BufferTable table(ring, 2);
    DmaBuf buf = DmaBuf::allocate(Exporter::kUdmabuf, 4 * kMiB);
    if (fs() == "ext4") {
        remount("nodelalloc");
        {
            Plain(path("journalled")).write(data.data(), kMiB, 0);
            auto [st, out] = guest::run_command("chattr +j " + path("journalled"));
            ASSERT_EQ(st, 0) << out;
            Fd j = open_file("journalled");
            EXPECT_EQ(table.update(1, guest::dmabuf_desc(buf.fd(), j.get())), -EOPNOTSUPP) << "+j";
            Plain(path("data")).write(data.data(), kMiB, 0);
            Fd f = open_file("data");
            ASSERT_EQ(table.update(0, guest::dmabuf_desc(buf.fd(), f.get())), 1);
            EXPECT_EQ(table.read(f.get(), 0, 0, 4096, 0), 4096);
            std::tie(st, out) = guest::run_command("chattr +j " + path("data"));
            ASSERT_EQ(st, 0) << out;
            EXPECT_EQ(table.read(f.get(), 0, 0, 4096, 0), -EOPNOTSUPP) << "+j after registration";
            EXPECT_EQ(table.write(f.get(), 0, 0, 4096, 0), -EOPNOTSUPP) << "+j after registration";
            std::tie(st, out) = guest::run_command("chattr -j " + path("data"));
            ASSERT_EQ(st, 0) << out;
            EXPECT_EQ(table.read(f.get(), 0, 0, 4096, 0), 4096) << "-j again";
            // Inline data: a small file written through the page cache lives in its inode.
            { std::ofstream(path("inline")) << "a few bytes, stored in the inode"; }
            std::tie(st, out) = guest::run_command("sync; lsattr " + path("inline"));
            ASSERT_EQ(st, 0) << out;
            ASSERT_NE(out.find('N'), std::string::npos) << "not inline: " << out;
            Fd in = open_file("inline");
            EXPECT_EQ(table.update(1, guest::dmabuf_desc(buf.fd(), in.get())), -EOPNOTSUPP)
                << "inline data";
            table.clear(0);
        }
        remount("data=journal");
        Fd f = open_file("data");
        EXPECT_EQ(table.update(0, guest::dmabuf_desc(buf.fd(), f.get())), -EOPNOTSUPP)
            << "data=journal";
        Plain(path("data")).read(back.data(), kMiB, 0);
        EXPECT_EQ(std::memcmp(back.data(), data.data(), kMiB), 0);
        return;
    }
    // A reflinked file: XFS writes an unaligned direct write to it through the page cache.
    Plain(path("data")).write(data.data(), kMiB, 0);
    auto [st, out] =
        guest::run_command("cp --reflink=always " + path("data") + " " + path("shared"));
    ASSERT_EQ(st, 0) << out;
    Fd s = open_file("shared");
    ASSERT_EQ(table.update(1, guest::dmabuf_desc(buf.fd(), s.get())), 1);
    EXPECT_EQ(table.write(s.get(), 1, 0, 512, 512), -EOPNOTSUPP) << "unaligned CoW write";
    Plain(path("shared")).read(back.data(), kMiB, 0);
    EXPECT_EQ(std::memcmp(back.data(), data.data(), kMiB), 0) << "the refused write wrote";
    // An aligned one is copied on write: the original keeps its data.
    auto view = buf.map();
    buf.begin_cpu_access(true);
    guest::fill(view.data(), 4096, 99);
    buf.end_cpu_access(true);
    ASSERT_EQ(table.write(s.get(), 1, 0, 4096, 0), 4096);
    Plain(path("shared")).read(back.data(), 4096, 0);
    buf.begin_cpu_access(false);
    EXPECT_EQ(std::memcmp(back.data(), view.data(), 4096), 0);
    buf.end_cpu_access(false);
    Plain(path("data")).read(back.data(), kMiB, 0);
    EXPECT_EQ(std::memcmp(back.data(), data.data(), kMiB), 0) << "the original changed";
}

// Verified reads and writes at queue depths 1 to 64 into a test-exporter dma-buf that a second
// thread MOVEs every 20 ms: each MOVE invalidates the mapping under the file's I/O, which waits
// and goes on with the next mapping; every read is checked against the file's data and every
// write read back through the ordinary path.
TEST_P(Files, VerifiedIoAtDepthsWhileTheBufferMoves) {
    constexpr std::size_t kFile = 32 * kMiB;
    constexpr std::size_t kSlot = 256 * kKiB;  // each I/O's part of the dma-buf
    constexpr unsigned kMaxDepth = 64;
    Fd f = open_file("data");
    Plain plain(path("data"));
    Plain other(path("other"));
    guest::Memory data(kFile);
    guest::fill(data.data(), kFile, 31);
    interleave(plain, other, 0, kFile, data, 0);
    Ring ring(kMaxDepth);
    BufferTable table(ring, 1);
    DmaBuf buf = DmaBuf::allocate(Exporter::kTest, kMaxDepth * kSlot);
    ASSERT_EQ(table.register_dmabuf(0, buf, f.get()), SlotKind::kDmaBuf);
    auto view = buf.map();
    guest::PeriodicMover mover(buf.fd(), std::chrono::milliseconds(20));
    std::mt19937_64 gen(17);
    guest::Memory back(kSlot);
    std::size_t ios = 0;
    std::size_t verified = 0;
    const auto t0 = std::chrono::steady_clock::now();
    for (unsigned qd : {1U, 4U, 16U, 64U}) {
        for (int round = 0; round < 4 && !HasFatalFailure(); round++) {
            struct Io {
                bool write;
                unsigned len;
                std::uint64_t at;
            };
            std::vector<Io> batch(qd);
            for (unsigned i = 0; i < qd; i++) {
                // Distinct 256 KiB windows of the file, so that no two I/Os of a batch overlap.
                const std::uint64_t window = (gen() % (kFile / kSlot / kMaxDepth)) * kMaxDepth + i;
                batch[i] = {gen() % 2 == 0, static_cast<unsigned>((1 + gen() % 64) * 4 * kKiB),
                            window * kSlot};
                if (batch[i].write) {
                    guest::fill(view.data() + i * kSlot, batch[i].len, gen());
                }
                table.prep(batch[i].write, f.get(), 0, i * kSlot, batch[i].len, batch[i].at, i);
            }
            for (unsigned i = 0; i < qd; i++) {
                auto [ud, res] = ring.submit_and_wait_one();
                ASSERT_LT(ud, qd);
                ASSERT_EQ(res, static_cast<int>(batch[ud].len)) << "qd " << qd;
                ios++;
            }
            for (unsigned i = 0; i < qd; i++) {
                const Io& io = batch[i];
                if (io.write) {
                    std::memcpy(data.data() + io.at, view.data() + i * kSlot, io.len);
                    plain.read(back.data(), io.len, io.at);
                    ASSERT_EQ(std::memcmp(back.data(), data.data() + io.at, io.len), 0)
                        << "write, qd " << qd << " I/O " << i;
                } else {
                    ASSERT_EQ(std::memcmp(view.data() + i * kSlot, data.data() + io.at, io.len), 0)
                        << "read, qd " << qd << " I/O " << i;
                }
                verified += io.len;
            }
        }
        std::printf("[          ] %s: depth %u done at %.1f s, %u moves\n", fs().c_str(), qd,
                    std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count(),
                    mover.moves());
    }
    const unsigned moves = mover.stop();
    EXPECT_EQ(mover.error(), "");
    EXPECT_GT(moves, 0U);
    std::printf("[          ] %s: %zu I/Os at depths 1-64, %zu bytes verified, %u moves\n",
                fs().c_str(), ios, verified, moves);
}

// Truncate, hole punch and re-extension race with reads and writes at queue depth 16; each I/O
// completes as direct I/O does (its length, a short read at the end of the file, or 0 past it),
// and the filesystem checks clean afterwards. Then the file is unlinked with I/O in flight.
TEST_P(Files, TruncatePunchAndUnlinkRaceWithIo) {
    constexpr std::size_t kFile = 16 * kMiB;
    Fd f = open_file("data");
    Plain plain(path("data"));
    guest::Memory data(kFile);
    guest::fill(data.data(), kFile, 3);
    plain.write(data.data(), kFile, 0);
    Ring ring(32);
    BufferTable table(ring, 1);
    constexpr std::size_t kSlot = 256 * kKiB;  // each I/O's part of the dma-buf
    DmaBuf buf = DmaBuf::allocate(Exporter::kUdmabuf, 16 * kSlot);
    ASSERT_EQ(table.register_dmabuf(0, buf, f.get()), SlotKind::kDmaBuf);
    std::atomic<bool> stop{false};
    std::thread mangler([&] {
        std::uint64_t i = 0;
        while (!stop.load()) {
            const auto at = static_cast<off_t>((i * 3 % 16) * kMiB);
            switch (i++ % 3) {
                case 0:
                    (void)::ftruncate(f.get(), at);
                    break;
                case 1:
                    (void)::fallocate(f.get(), FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, at,
                                      static_cast<off_t>(kMiB));
                    break;
                default:
                    (void)::ftruncate(f.get(), static_cast<off_t>(kFile));
                    break;
            }
            std::this_thread::sleep_for(std::chrono::milliseconds(2));
        }
    });
    // a failed assertion returns early: stop and join the mangler then too
    struct Joiner {
        std::atomic<bool>& stop;
        std::thread& t;
        ~Joiner() {
            stop = true;
            if (t.joinable()) {
                t.join();
            }
        }
    } joiner{stop, mangler};
    std::mt19937_64 gen(11);
    std::size_t ios = 0;
    std::size_t refused = 0;
    const auto t0 = std::chrono::steady_clock::now();
    while (std::chrono::steady_clock::now() - t0 < std::chrono::seconds(3)) {
        std::vector<unsigned> lens(16);
        std::vector<bool> writes(16);
        for (unsigned i = 0; i < 16; i++) {
            lens[i] = static_cast<unsigned>((1 + gen() % 64) * 4 * kKiB);
            const std::uint64_t at = (gen() % (kFile / (4 * kKiB))) * 4 * kKiB;
            writes[i] = gen() % 2 == 0;
            table.prep(writes[i], f.get(), 0, i * kSlot, lens[i], at, i);
        }
        for (unsigned i = 0; i < 16; i++) {
            auto [ud, res] = ring.submit_and_wait_one();
            ASSERT_LT(ud, 16U);
            // a read that starts in a hole the punch made is refused
            if (!writes[ud] && res == -EOPNOTSUPP) {
                refused++;
                continue;
            }
            ASSERT_GE(res, 0) << "I/O " << ud << ": " << std::strerror(-res);
            ASSERT_LE(res, static_cast<int>(lens[ud]));
            ios++;
        }
    }
    stop = true;
    mangler.join();
    // Unlinked with I/O in flight: the open file keeps the inode until the slot and the
    // descriptors go.
    for (unsigned i = 0; i < 16; i++) {
        table.prep(i % 2 == 0, f.get(), 0, i * kSlot, kSlot, i * kSlot, i);
    }
    ASSERT_EQ(ring.submit(), 16U);
    ASSERT_EQ(::unlink(path("data").c_str()), 0);
    for (unsigned i = 0; i < 16; i++) {
        auto [ud, res] = ring.submit_and_wait_one();
        if (ud % 2 == 1 && res == -EOPNOTSUPP) {
            continue;  // a read of a hole the last punch left
        }
        EXPECT_GE(res, 0) << "I/O " << ud << " after unlink: " << std::strerror(-res);
    }
    std::printf(
        "[          ] %s: %zu I/Os raced with truncate and hole punch (%zu reads of a "
        "hole refused)\n",
        fs().c_str(), ios, refused);
}

INSTANTIATE_TEST_SUITE_P(OnFilesystem, Files, testing::Values("ext4", "xfs"),
                         [](const auto& info) { return info.param; });

}  // namespace
