#include "dmabufio/error.hpp"

#include <gtest/gtest.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "dmabufio/file.hpp"
#include "dmabufio/ring.hpp"

namespace {

TEST(Error, CarriesErrnoAndAdvice) {
    try {
        dmabufio::throw_error(-EINVAL, "register a dma-buf", "open the target with O_DIRECT");
        FAIL() << "throw_error returned";
    } catch (const dmabufio::Error& e) {
        EXPECT_EQ(e.err(), EINVAL);
        const std::string what = e.what();
        EXPECT_NE(what.find("register a dma-buf"), std::string::npos);
        EXPECT_NE(what.find("open the target with O_DIRECT"), std::string::npos);
    }
}

TEST(BlockFile, MissingDeviceSaysWhatToDo) {
    try {
        dmabufio::BlockFile f("/nonexistent/nvme");
        FAIL() << "opened a missing device";
    } catch (const dmabufio::Error& e) {
        EXPECT_EQ(e.err(), ENOENT);
        EXPECT_NE(std::string(e.what()).find("O_DIRECT"), std::string::npos);
    }
}

TEST(Ring, FixedIoOnARegularFileRoundTrips) {
    // Host-side sanity of the ring helpers on a tmpfs/disk file (buffered, not O_DIRECT).
    char path[] = "/tmp/dmabufio-ring-XXXXXX";
    const int fd = ::mkstemp(path);
    ASSERT_GE(fd, 0);
    ::unlink(path);
    dmabufio::Ring ring(4);
    alignas(4096) static char out[8192];
    alignas(4096) static char in[8192];
    for (std::size_t i = 0; i < sizeof out; i++) {
        out[i] = static_cast<char>(i * 7);
    }
    std::vector<iovec> iov{{out, sizeof out}, {in, sizeof in}};
    ring.register_buffers(iov);
    EXPECT_EQ(ring.write_fixed(fd, out, sizeof out, 4096, 0), static_cast<int>(sizeof out));
    EXPECT_EQ(ring.read_fixed(fd, in, sizeof in, 4096, 1), static_cast<int>(sizeof in));
    EXPECT_EQ(std::memcmp(out, in, sizeof in), 0);
    ::close(fd);
}

}  // namespace
