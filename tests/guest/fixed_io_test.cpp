// Ordinary registered (fixed) buffers against the emulated NVMe namespace, opened O_DIRECT:
// data written with WRITE_FIXED reads back identical with READ_FIXED, at many offsets and sizes.
#include <gtest/gtest.h>
#include <sys/mman.h>

#include <cstdint>
#include <cstring>
#include <random>
#include <vector>

#include "dmabufio/file.hpp"
#include "dmabufio/ring.hpp"

namespace {

constexpr const char* kDevice = "/dev/nvme0n1";
constexpr std::size_t kMiB = std::size_t{1024} * 1024;

struct Mapping {
    explicit Mapping(std::size_t n)
        : size(n),
          ptr(::mmap(nullptr, n, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0)) {}
    Mapping(const Mapping&) = delete;
    Mapping& operator=(const Mapping&) = delete;
    ~Mapping() {
        if (ptr != MAP_FAILED) {
            ::munmap(ptr, size);
        }
    }
    [[nodiscard]] std::uint8_t* bytes() const { return static_cast<std::uint8_t*>(ptr); }
    std::size_t size;
    void* ptr;
};

void fill(std::uint8_t* p, std::size_t n, std::uint64_t seed) {
    std::mt19937_64 gen(seed);
    for (std::size_t i = 0; i < n; i += sizeof(std::uint64_t)) {
        std::uint64_t v = gen();
        std::memcpy(p + i, &v, std::min(sizeof v, n - i));
    }
}

TEST(FixedIo, DeviceIsTheEmulatedNvme) {
    dmabufio::BlockFile dev(kDevice);
    EXPECT_GE(dev.size(), 1024 * kMiB);
    EXPECT_EQ(dev.logical_block_size() & (dev.logical_block_size() - 1), 0U);
}

TEST(FixedIo, WriteThenReadBackAtManyOffsetsAndSizes) {
    dmabufio::BlockFile dev(kDevice);
    dmabufio::Ring ring(8);
    Mapping out(2 * kMiB);
    Mapping in(2 * kMiB);
    ASSERT_NE(out.ptr, MAP_FAILED);
    ASSERT_NE(in.ptr, MAP_FAILED);
    std::vector<iovec> iov{{out.ptr, out.size}, {in.ptr, in.size}};
    ring.register_buffers(iov);

    const std::vector<std::size_t> sizes{4096, 8192, 12288, 65536, 131072, 258048, 524288, kMiB};
    // Device offsets: start, unaligned to the I/O size, and near the end of the namespace.
    const std::vector<std::uint64_t> offsets{0, 4096, 61440, std::uint64_t{1000} * 4096,
                                             dev.size() - 2 * kMiB};
    // Offsets within the registered buffer, so the data does not always start on the first page.
    const std::vector<std::size_t> buf_offsets{0, 4096, 12288};
    std::uint64_t seed = 1;
    std::size_t checked = 0;
    for (std::size_t size : sizes) {
        for (std::uint64_t off : offsets) {
            for (std::size_t boff : buf_offsets) {
                SCOPED_TRACE(testing::Message() << "size " << size << " dev offset " << off
                                                << " buffer offset " << boff);
                std::uint8_t* src = out.bytes() + boff;
                std::uint8_t* dst = in.bytes() + boff;
                fill(src, size, seed++);
                std::memset(dst, 0xa5, size);
                const auto len = static_cast<unsigned>(size);
                ASSERT_EQ(ring.write_fixed(dev.fd(), src, len, off, 0), static_cast<int>(size));
                ASSERT_EQ(ring.read_fixed(dev.fd(), dst, len, off, 1), static_cast<int>(size));
                ASSERT_EQ(std::memcmp(src, dst, size), 0);
                checked += size;
            }
        }
    }
    RecordProperty("bytes_verified", static_cast<int>(checked));
}

TEST(FixedIo, OutOfRangeBufferAddressIsEfault) {
    dmabufio::BlockFile dev(kDevice);
    dmabufio::Ring ring(4);
    Mapping buf(kMiB);
    ASSERT_NE(buf.ptr, MAP_FAILED);
    std::vector<iovec> iov{{buf.ptr, buf.size}};
    ring.register_buffers(iov);
    // The last page of the registration plus one more page is outside the registered range.
    EXPECT_EQ(ring.read_fixed(dev.fd(), buf.bytes() + kMiB - 4096, 8192, 0, 0), -EFAULT);
}

}  // namespace
