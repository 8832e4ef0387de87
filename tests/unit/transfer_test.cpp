// Host tests of large transfers on a regular file through a user-memory slot (the transfer code is
// the same for dma-buf slots; the guest suite runs it on one): split, pipelined, data compared.
#include "dmabufio/transfer.hpp"

#include <gtest/gtest.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cerrno>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <string>

#include "dmabufio/error.hpp"

namespace {

constexpr std::size_t kLen = (3 << 20) + 8192;  // not a multiple of the request size

struct Fixture {
    std::string path = "/tmp/dmabufio-transfer-XXXXXX";
    std::uint8_t* mem = nullptr;
    dmabufio::Ring ring{8};
    dmabufio::BufferTable table{ring, 1};
    Fixture() {
        const int fd = ::mkstemp(path.data());
        EXPECT_GE(fd, 0);
        ::close(fd);
        void* p = ::mmap(nullptr, kLen, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        EXPECT_NE(p, MAP_FAILED);
        mem = static_cast<std::uint8_t*>(p);
        table.register_user(0, mem, kLen);
    }
    Fixture(const Fixture&) = delete;
    Fixture& operator=(const Fixture&) = delete;
    ~Fixture() {
        table.clear(0);
        ::munmap(mem, kLen);
        ::unlink(path.c_str());
    }
};

TEST(Transfer, WriteThenReadBackSplitAndPipelined) {
    Fixture f;
    const dmabufio::BlockFile file(f.path);
    for (std::size_t i = 0; i < kLen; i++) {
        f.mem[i] = static_cast<std::uint8_t>(i * 7 + i / 4096);
    }
    const dmabufio::TransferOptions o{.queue_depth = 4, .max_request = 64 * 1024};
    EXPECT_EQ(dmabufio::write(f.table, file, 0, 0, 4096, kLen, o).get(), kLen);
    std::vector<std::uint8_t> want(f.mem, f.mem + kLen);
    std::memset(f.mem, 0, kLen);
    EXPECT_EQ(dmabufio::read(f.table, file, 0, 0, 4096, kLen, o).get(), kLen);
    EXPECT_EQ(std::memcmp(f.mem, want.data(), kLen), 0);
    // And with the device's own request size and default depth, from the middle of the buffer.
    std::memset(f.mem, 0, kLen);
    EXPECT_EQ(dmabufio::read(f.table, file, 0, 8192, 4096 + 8192, kLen - 8192).get(), kLen - 8192);
    EXPECT_EQ(std::memcmp(f.mem + 8192, want.data() + 8192, kLen - 8192), 0);
    EXPECT_GE(dmabufio::max_request_bytes(file), 4096U);
}

TEST(Transfer, FileEndingEarlyIsEioAndAnErrorCarriesItsErrno) {
    Fixture f;
    const dmabufio::BlockFile file(f.path);
    ASSERT_EQ(::truncate(f.path.c_str(), 1 << 20), 0);
    const dmabufio::TransferOptions o{.queue_depth = 2, .max_request = 256 * 1024};
    try {
        (void)dmabufio::read(f.table, file, 0, 0, 0, 2 << 20, o).get();
        FAIL() << "read past the end of the file";
    } catch (const dmabufio::Error& e) {
        EXPECT_EQ(e.err(), EIO);
        EXPECT_NE(std::string(e.what()).find("the file ended early"), std::string::npos)
            << e.what();
    }
    const dmabufio::BlockFile ro(f.path, dmabufio::Access::kReadOnly);
    try {
        (void)dmabufio::write(f.table, ro, 0, 0, 0, 1 << 20, o).get();
        FAIL() << "a write through a read-only open";
    } catch (const dmabufio::Error& e) {
        EXPECT_EQ(e.err(), EBADF) << e.what();
        EXPECT_NE(std::string(e.what()).find("write of 262144 bytes at 0 of "), std::string::npos)
            << e.what();
    }
}

}  // namespace
