#include "dmabufio/file.hpp"

#include <fcntl.h>
#include <linux/fs.h>
#include <sys/ioctl.h>

#include <cerrno>

#include "dmabufio/error.hpp"

namespace dmabufio {

BlockFile::BlockFile(std::string path) : path_(std::move(path)) {
    fd_.reset(::open(path_.c_str(), O_RDWR | O_DIRECT | O_CLOEXEC));
    if (!fd_.valid()) {
        throw_error(errno, "open " + path_ + " with O_DIRECT",
                    "the target must be a block device that supports direct I/O");
    }
    if (::ioctl(fd_.get(), BLKGETSIZE64, &size_) != 0) {
        throw_error(errno, "BLKGETSIZE64 on " + path_, "the target must be a block device");
    }
    int lbs = 0;
    if (::ioctl(fd_.get(), BLKSSZGET, &lbs) != 0) {
        throw_error(errno, "BLKSSZGET on " + path_, "the target must be a block device");
    }
    lbs_ = static_cast<std::uint32_t>(lbs);
}

}  // namespace dmabufio
