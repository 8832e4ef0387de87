#include "dmabufio/dmabuf.hpp"

#include <fcntl.h>
#include <linux/dma-buf.h>
#include <linux/dma-heap.h>
#include <linux/udmabuf.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cerrno>
#include <fstream>
#include <string>
#include <utility>

#include "dmabufio/error.hpp"
#include "dmabufio/uapi.hpp"

namespace dmabufio {
namespace {

Fd open_dev(const char* path, std::string_view advice) {
    Fd fd(::open(path, O_RDWR | O_CLOEXEC));
    if (!fd.valid()) {
        throw_error(errno, std::string("open ") + path, advice);
    }
    return fd;
}

// A udmabuf over memfd's first size bytes; seals the memfd against shrinking, as udmabuf needs.
Fd udmabuf_over(const Fd& memfd, std::size_t size) {
    if (::fcntl(memfd.get(), F_ADD_SEALS, F_SEAL_SHRINK) != 0) {
        throw_error(errno, "seal the memfd behind a udmabuf");
    }
    Fd dev = open_dev("/dev/udmabuf", "the kernel needs CONFIG_UDMABUF");
    udmabuf_create create{};
    create.memfd = static_cast<__u32>(memfd.get());
    create.flags = UDMABUF_FLAGS_CLOEXEC;
    create.size = size;
    const int fd = ::ioctl(dev.get(), UDMABUF_CREATE, &create);
    if (fd < 0) {
        throw_error(errno, "UDMABUF_CREATE of " + std::to_string(size) + " bytes",
                    errno == EINVAL ? "the size must be a multiple of the page size and at most "
                                      "/sys/module/udmabuf/parameters/size_limit_mb"
                                    : "");
    }
    return Fd(fd);
}

Fd udmabuf(std::size_t size) {
    Fd memfd(::memfd_create("dmabufio", MFD_ALLOW_SEALING | MFD_CLOEXEC));
    if (!memfd.valid()) {
        throw_error(errno, "memfd_create for a udmabuf");
    }
    if (::ftruncate(memfd.get(), static_cast<off_t>(size)) != 0) {
        throw_error(errno, "size the memfd behind a udmabuf");
    }
    return udmabuf_over(memfd, size);
}

Fd heap(std::size_t size) {
    Fd dev = open_dev("/dev/dma_heap/system", "the kernel needs CONFIG_DMABUF_HEAPS_SYSTEM");
    dma_heap_allocation_data alloc{};
    alloc.len = size;
    alloc.fd_flags = O_RDWR | O_CLOEXEC;
    if (::ioctl(dev.get(), DMA_HEAP_IOCTL_ALLOC, &alloc) != 0) {
        throw_error(errno, "allocate " + std::to_string(size) + " bytes from the system dma-heap");
    }
    return Fd(static_cast<int>(alloc.fd));
}

Fd test_exporter(std::size_t size, unsigned flags) {
    Fd dev = open_dev("/dev/dmabuf_test", "the kernel needs CONFIG_DMABUF_TEST_EXPORTER");
    dmabuf_test_create create{};
    create.size = size;
    create.flags = flags;
    if (::ioctl(dev.get(), DMABUF_TEST_IOCTL_CREATE, &create) != 0) {
        const int err = errno;
        const bool vram = (flags & DMABUF_TEST_CREATE_VRAM) != 0;
        throw_error(err,
                    std::string("DMABUF_TEST_IOCTL_CREATE of ") + std::to_string(size) + " bytes" +
                        (vram ? " of VRAM" : ""),
                    vram && err == ENODEV   ? "no VRAM device: boot the lab with vm/run --vram SIZE"
                    : vram && err == ENOMEM ? "the VRAM device's BAR has no room that large left"
                                            : "");
    }
    return Fd(create.fd);
}

}  // namespace

Exporter parse_exporter(const std::string& name) {
    if (name == "udmabuf") {
        return Exporter::kUdmabuf;
    }
    if (name == "heap") {
        return Exporter::kHeap;
    }
    if (name == "test") {
        return Exporter::kTest;
    }
    if (name == "vram") {
        return Exporter::kVram;
    }
    throw_error(EINVAL, "unknown dma-buf exporter '" + name + "'",
                "use udmabuf, heap, test or vram");
}

const char* to_string(Exporter e) {
    switch (e) {
        case Exporter::kUdmabuf:
            return "udmabuf";
        case Exporter::kHeap:
            return "heap";
        case Exporter::kTest:
            return "test";
        case Exporter::kVram:
            return "vram";
        case Exporter::kAdopted:
            return "adopted";
    }
    return "?";
}

DmaBuf DmaBuf::allocate(Exporter exporter, std::size_t size) {
    switch (exporter) {
        case Exporter::kUdmabuf:
            return {udmabuf(size), size, exporter};
        case Exporter::kHeap:
            return {heap(size), size, exporter};
        case Exporter::kTest:
            return {test_exporter(size, 0), size, exporter};
        case Exporter::kVram:
            return {test_exporter(size, DMABUF_TEST_CREATE_VRAM), size, exporter};
        case Exporter::kAdopted:
            break;
    }
    throw_error(EINVAL, "allocate a dma-buf from an unknown exporter",
                "take over a dma-buf from elsewhere with DmaBuf::adopt()");
}

DmaBuf DmaBuf::udmabuf_over_memfd(const Fd& memfd, std::size_t size) {
    return {udmabuf_over(memfd, size), size, Exporter::kUdmabuf};
}

DmaBuf DmaBuf::adopt(Fd fd) {
    // Only dma-bufs have an exporter name in their fdinfo.
    std::ifstream info("/proc/self/fdinfo/" + std::to_string(fd.get()));
    std::string line;
    bool dmabuf = false;
    while (std::getline(info, line) && !dmabuf) {
        dmabuf = line.starts_with("exp_name:");
    }
    if (!dmabuf) {
        throw_error(EBADF, "adopt fd " + std::to_string(fd.get()) + " as a dma-buf",
                    "it is not a dma-buf (no exp_name in its fdinfo): pass the fd an exporter "
                    "gave (DMA_HEAP_IOCTL_ALLOC, UDMABUF_CREATE, a GPU driver's PRIME export)");
    }
    const off_t size = ::lseek(fd.get(), 0, SEEK_END);
    if (size < 0 || ::lseek(fd.get(), 0, SEEK_SET) != 0) {
        throw_error(errno, "find the size of dma-buf fd " + std::to_string(fd.get()),
                    "lseek(SEEK_END) on a dma-buf needs Linux 3.19 or later");
    }
    return {std::move(fd), static_cast<std::size_t>(size), Exporter::kAdopted};
}

DmaBuf::DmaBuf(DmaBuf&& other) noexcept
    : fd_(std::move(other.fd_)),
      test_dev_(std::move(other.test_dev_)),
      size_(other.size_),
      exporter_(other.exporter_),
      map_(std::exchange(other.map_, nullptr)) {}

DmaBuf& DmaBuf::operator=(DmaBuf&& other) noexcept {
    if (this != &other) {
        close();
        fd_ = std::move(other.fd_);
        test_dev_ = std::move(other.test_dev_);
        size_ = other.size_;
        exporter_ = other.exporter_;
        map_ = std::exchange(other.map_, nullptr);
    }
    return *this;
}

DmaBuf::~DmaBuf() { close(); }

void DmaBuf::close() {
    if (map_ != nullptr) {
        ::munmap(map_, size_);
        map_ = nullptr;
    }
    fd_.reset();
    test_dev_.reset();
}

std::span<std::uint8_t> DmaBuf::map() {
    if (map_ == nullptr) {
        void* p = ::mmap(nullptr, size_, PROT_READ | PROT_WRITE, MAP_SHARED, fd_.get(), 0);
        if (p == MAP_FAILED) {
            throw_error(errno, std::string("mmap a ") + to_string(exporter_) + " dma-buf",
                        "this exporter may not support CPU mappings");
        }
        map_ = p;
    }
    return {static_cast<std::uint8_t*>(map_), size_};
}

namespace {
void sync(int fd, __u64 flags) {
    dma_buf_sync s{flags};
    // The dma-buf uapi: an interrupted wait for the exporter's fences is EINTR or EAGAIN, and the
    // call is to be restarted.
    while (::ioctl(fd, DMA_BUF_IOCTL_SYNC, &s) != 0) {
        if (errno != EINTR && errno != EAGAIN) {
            throw_error(errno, "DMA_BUF_IOCTL_SYNC");
        }
    }
}
}  // namespace

void DmaBuf::begin_cpu_access(bool write) {
    sync(fd_.get(), DMA_BUF_SYNC_START | (write ? DMA_BUF_SYNC_RW : DMA_BUF_SYNC_READ));
}

void DmaBuf::end_cpu_access(bool write) {
    sync(fd_.get(), DMA_BUF_SYNC_END | (write ? DMA_BUF_SYNC_RW : DMA_BUF_SYNC_READ));
}

void DmaBuf::move(unsigned flags) {
    if (exporter_ != Exporter::kTest && exporter_ != Exporter::kVram) {
        throw_error(EOPNOTSUPP, "move a dma-buf", "only the test exporter can MOVE on demand");
    }
    if (!test_dev_.valid()) {
        test_dev_ = open_dev("/dev/dmabuf_test", "the kernel needs CONFIG_DMABUF_TEST_EXPORTER");
    }
    dmabuf_test_move mv{};
    mv.fd = fd_.get();
    mv.flags = flags;
    if (::ioctl(test_dev_.get(), DMABUF_TEST_IOCTL_MOVE, &mv) != 0) {
        throw_error(errno, "DMABUF_TEST_IOCTL_MOVE");
    }
}

}  // namespace dmabufio
