// dma-bufs: an owning fd with its size and an optional CPU mapping, from the exporters we use.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <string>

#include "dmabufio/fd.hpp"

namespace dmabufio {

enum class Exporter {
    kUdmabuf,  // /dev/udmabuf over a sealed memfd
    kHeap,     // /dev/dma_heap/system
    kTest,     // /dev/dmabuf_test (the test exporter: MOVE on demand)
    kVram,     // the test exporter's device memory (DMABUF_TEST_CREATE_VRAM; vm/run --vram)
    kAdopted,  // any other dma-buf, taken over with DmaBuf::adopt()
};
// "udmabuf", "heap", "test", "vram" -> Exporter; throws Error(EINVAL) on anything else.
Exporter parse_exporter(const std::string& name);
const char* to_string(Exporter e);

class DmaBuf {
  public:
    // Allocates size bytes (a multiple of the page size) from exporter. Throws Error with advice
    // (e.g. the udmabuf size limit, a missing heap).
    static DmaBuf allocate(Exporter exporter, std::size_t size);
    // A udmabuf over the first size bytes of a memfd the caller made (MFD_ALLOW_SEALING; e.g.
    // MFD_HUGETLB for 2 MiB pages), sealed here against shrinking. The memfd may be closed
    // afterwards. Throws Error (EINVAL: size not a multiple of the memfd's page size, or over
    // udmabuf's size limit).
    static DmaBuf udmabuf_over_memfd(const Fd& memfd, std::size_t size);
    // Takes ownership of any dma-buf fd (a GPU driver's, V4L2's, another process's): its size is
    // lseek(fd, 0, SEEK_END). Throws Error(EBADF) if fd is not a dma-buf.
    static DmaBuf adopt(Fd fd);
    // Takes ownership of an existing dma-buf fd of the given size.
    DmaBuf(Fd fd, std::size_t size, Exporter exporter)
        : fd_(std::move(fd)), size_(size), exporter_(exporter) {}

    DmaBuf(const DmaBuf&) = delete;
    DmaBuf& operator=(const DmaBuf&) = delete;
    DmaBuf(DmaBuf&& other) noexcept;
    DmaBuf& operator=(DmaBuf&& other) noexcept;
    ~DmaBuf();

    [[nodiscard]] int fd() const noexcept { return fd_.get(); }
    [[nodiscard]] std::size_t size() const noexcept { return size_; }
    [[nodiscard]] Exporter exporter() const noexcept { return exporter_; }

    // The CPU view (MAP_SHARED), mapped on first use. Throws Error if the exporter cannot mmap.
    std::span<std::uint8_t> map();
    // CPU access brackets (DMA_BUF_IOCTL_SYNC) around reads/writes of map().
    void begin_cpu_access(bool write);
    void end_cpu_access(bool write);
    // Test exporter only (kTest, kVram): migrate to new backing memory (contents kept):
    // DMABUF_TEST_IOCTL_MOVE with flags (DMABUF_TEST_MOVE_TO_SYSTEM evicts a VRAM buffer,
    // DMABUF_TEST_MOVE_TO_VRAM restores it). The exporter's device stays open after the first call,
    // so that a MOVE costs one ioctl. Throws Error.
    void move(unsigned flags = 0);
    // Closes the fd (and unmaps); a registration made from it stays valid in the kernel.
    void close();

  private:
    Fd fd_;
    Fd test_dev_;  // /dev/dmabuf_test, opened by the first move()
    std::size_t size_ = 0;
    Exporter exporter_ = Exporter::kUdmabuf;
    void* map_ = nullptr;
};

}  // namespace dmabufio
