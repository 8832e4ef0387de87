// Files for direct I/O: NVMe block devices (dma-buf slots need one) and regular files.
#pragma once

#include <cstdint>
#include <string>

#include "dmabufio/fd.hpp"

namespace dmabufio {

enum class Access { kReadOnly, kReadWrite };

class BlockFile {
  public:
    // Opens path (a block device or a regular file) with O_DIRECT, read-only or read-write, and
    // reads its size and direct-I/O alignment. Throws Error.
    explicit BlockFile(std::string path, Access access = Access::kReadWrite);

    [[nodiscard]] int fd() const noexcept { return fd_.get(); }
    [[nodiscard]] const std::string& path() const noexcept { return path_; }
    [[nodiscard]] Access access() const noexcept { return access_; }
    [[nodiscard]] bool is_block_device() const noexcept { return block_device_; }
    [[nodiscard]] std::uint64_t size() const noexcept { return size_; }
    // The smallest unit of direct I/O: file offsets and lengths must be multiples of it
    // (statx STATX_DIOALIGN dio_offset_align; the logical block size where statx does not say).
    [[nodiscard]] std::uint32_t logical_block_size() const noexcept { return offset_align_; }
    // The alignment direct I/O needs of user memory addresses (statx dio_mem_align). dma-buf
    // offsets follow logical_block_size().
    [[nodiscard]] std::uint32_t memory_alignment() const noexcept { return mem_align_; }

  private:
    std::string path_;
    Access access_;
    Fd fd_;
    bool block_device_ = false;
    std::uint64_t size_ = 0;
    std::uint32_t offset_align_ = 0;
    std::uint32_t mem_align_ = 0;
};

}  // namespace dmabufio
