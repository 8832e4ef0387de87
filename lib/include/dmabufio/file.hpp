// Block-device files for direct I/O.
#pragma once

#include <cstdint>
#include <string>

#include "dmabufio/fd.hpp"

namespace dmabufio {

class BlockFile {
  public:
    // Opens path read-write with O_DIRECT and reads its geometry. Throws Error.
    explicit BlockFile(std::string path);

    [[nodiscard]] int fd() const noexcept { return fd_.get(); }
    [[nodiscard]] const std::string& path() const noexcept { return path_; }
    [[nodiscard]] std::uint64_t size() const noexcept { return size_; }
    // The smallest unit of direct I/O: offsets and lengths must be multiples of it.
    [[nodiscard]] std::uint32_t logical_block_size() const noexcept { return lbs_; }

  private:
    std::string path_;
    Fd fd_;
    std::uint64_t size_ = 0;
    std::uint32_t lbs_ = 0;
};

}  // namespace dmabufio
