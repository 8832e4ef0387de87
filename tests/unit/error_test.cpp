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
    std::string path = "/tmp/dmabufio-ring-XXXXXX";
    const int fd = ::mkstemp(path.data());
    ASSERT_GE(fd, 0);
    ::unlink(path.c_str());
    dmabufio::Ring ring(4);
    std::vector<char> out(8192);
    std::vector<char> in(8192);
    for (std::size_t i = 0; i < out.size(); i++) {
        out[i] = static_cast<char>(i * 7);
    }
    std::vector<iovec> iov{{out.data(), out.size()}, {in.data(), in.size()}};
    ring.register_buffers(iov);
    EXPECT_EQ(ring.write_fixed(fd, out.data(), 8192, 4096, 0), 8192);
    EXPECT_EQ(ring.read_fixed(fd, in.data(), 8192, 4096, 1), 8192);
    EXPECT_EQ(out, in);
    ::close(fd);
}

}  // namespace
