// Host tests of BlockFile on regular files (the host has no NVMe to spare): read-only and
// read-write opens, size and direct-I/O alignment from statx, and the errors, with advice.
#include "dmabufio/file.hpp"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <array>
#include <cerrno>
#include <cstdlib>
#include <string>

#include "dmabufio/dmabuf.hpp"
#include "dmabufio/error.hpp"
#include "dmabufio/ring.hpp"

namespace {

using dmabufio::Access;
using dmabufio::BlockFile;

// A 1 MiB + 4 KiB file under /tmp, removed at the end.
struct TempFile {
    std::string path = "/tmp/dmabufio-file-XXXXXX";
    TempFile() {
        const int fd = ::mkstemp(path.data());
        EXPECT_GE(fd, 0);
        EXPECT_EQ(::ftruncate(fd, (1 << 20) + 4096), 0);
        ::close(fd);
    }
    TempFile(const TempFile&) = delete;
    TempFile& operator=(const TempFile&) = delete;
    ~TempFile() { ::unlink(path.c_str()); }
};

TEST(BlockFile, RegularFileSizeAndAlignmentComeFromStatx) {
    TempFile t;
    const BlockFile f(t.path);
    EXPECT_FALSE(f.is_block_device());
    EXPECT_EQ(f.access(), Access::kReadWrite);
    EXPECT_EQ(f.size(), (1U << 20) + 4096);
    struct statx stx {};
    ASSERT_EQ(::statx(AT_FDCWD, t.path.c_str(), 0, STATX_DIOALIGN, &stx), 0);
    ASSERT_NE(stx.stx_mask & STATX_DIOALIGN, 0U) << "the host's /tmp reports no DIOALIGN";
    EXPECT_EQ(f.logical_block_size(), stx.stx_dio_offset_align);
    EXPECT_EQ(f.memory_alignment(), stx.stx_dio_mem_align);
    EXPECT_GT(f.logical_block_size(), 0U);
    EXPECT_EQ(::fcntl(f.fd(), F_GETFL) & O_ACCMODE, O_RDWR);
}

TEST(BlockFile, ReadOnlyReadsAndRefusesWritesWithEbadf) {
    TempFile t;
    const BlockFile f(t.path, Access::kReadOnly);
    EXPECT_EQ(f.access(), Access::kReadOnly);
    EXPECT_EQ(::fcntl(f.fd(), F_GETFL) & O_ACCMODE, O_RDONLY);
    EXPECT_NE(::fcntl(f.fd(), F_GETFL) & O_DIRECT, 0);
    dmabufio::Ring ring(4);
    void* mem = nullptr;
    ASSERT_EQ(::posix_memalign(&mem, 4096, 4096), 0);
    const std::array<iovec, 1> iov{{{mem, 4096}}};
    ring.register_buffers(iov);
    EXPECT_EQ(ring.read_fixed(f.fd(), mem, 4096, 4096, 0), 4096);
    EXPECT_EQ(ring.write_fixed(f.fd(), mem, 4096, 4096, 0), -EBADF);
    ring.unregister_buffers();
    std::free(mem);  // NOLINT(cppcoreguidelines-no-malloc): posix_memalign's
}

TEST(BlockFile, ErrorsSayWhatToDo) {
    try {
        const BlockFile f("/tmp");
        FAIL() << "a directory was taken";
    } catch (const dmabufio::Error& e) {
        EXPECT_EQ(e.err(), EISDIR) << e.what();
        EXPECT_NE(std::string(e.what()).find("read-write with O_DIRECT"), std::string::npos);
    }
    try {
        const BlockFile f("/nonexistent/dmabufio", Access::kReadOnly);
        FAIL();
    } catch (const dmabufio::Error& e) {
        EXPECT_EQ(e.err(), ENOENT);
        EXPECT_NE(std::string(e.what()).find("read-only with O_DIRECT"), std::string::npos);
    }
}

TEST(DmaBuf, AdoptRefusesAnFdThatIsNotADmaBuf) {
    dmabufio::Fd memfd(::memfd_create("not-a-dmabuf", MFD_CLOEXEC));
    ASSERT_TRUE(memfd.valid());
    ASSERT_EQ(::ftruncate(memfd.get(), 65536), 0);
    try {
        (void)dmabufio::DmaBuf::adopt(std::move(memfd));
        FAIL() << "a memfd was adopted as a dma-buf";
    } catch (const dmabufio::Error& e) {
        EXPECT_EQ(e.err(), EBADF);
        EXPECT_NE(std::string(e.what()).find("it is not a dma-buf"), std::string::npos) << e.what();
    }
}

}  // namespace
