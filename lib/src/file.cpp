#include "dmabufio/file.hpp"

#include <fcntl.h>
#include <linux/fs.h>
#include <sys/ioctl.h>
#include <sys/stat.h>

#include <cerrno>

#include "dmabufio/error.hpp"

namespace dmabufio {

BlockFile::BlockFile(std::string path, Access access) : path_(std::move(path)), access_(access) {
    const bool rw = access == Access::kReadWrite;
    fd_.reset(::open(path_.c_str(), (rw ? O_RDWR : O_RDONLY) | O_DIRECT | O_CLOEXEC));
    if (!fd_.valid()) {
        throw_error(
            errno,
            std::string("open ") + path_ + (rw ? " read-write" : " read-only") + " with O_DIRECT",
            errno == EINVAL ? "this file system does not support direct I/O"
            : errno == EACCES || errno == EROFS
                ? "no permission to open it so: open it read-only, or check its mode"
                : "the target must be a block device or a file that supports direct I/O");
    }
    struct statx stx {};
    if (::statx(fd_.get(), "", AT_EMPTY_PATH, STATX_TYPE | STATX_SIZE | STATX_DIOALIGN, &stx) !=
        0) {
        throw_error(errno, "statx " + path_, "statx needs Linux 4.11 or later");
    }
    block_device_ = S_ISBLK(stx.stx_mode);
    if ((stx.stx_mask & STATX_DIOALIGN) != 0 && stx.stx_dio_offset_align != 0) {
        offset_align_ = stx.stx_dio_offset_align;
        mem_align_ = stx.stx_dio_mem_align;
    }
    if (block_device_) {
        if (::ioctl(fd_.get(), BLKGETSIZE64, &size_) != 0) {
            throw_error(errno, "BLKGETSIZE64 on " + path_);
        }
        if (offset_align_ == 0) {  // a kernel before 6.11 has no STATX_DIOALIGN for block devices
            int lbs = 0;
            if (::ioctl(fd_.get(), BLKSSZGET, &lbs) != 0) {
                throw_error(errno, "BLKSSZGET on " + path_);
            }
            offset_align_ = mem_align_ = static_cast<std::uint32_t>(lbs);
        }
    } else if (S_ISREG(stx.stx_mode)) {
        size_ = stx.stx_size;
        if (offset_align_ == 0) {
            throw_error(EOPNOTSUPP, "direct I/O alignment of " + path_,
                        "statx reports no STATX_DIOALIGN for this file (Linux 6.1 or later and a "
                        "file system that reports it are needed)");
        }
    } else {
        throw_error(EINVAL, "open " + path_, "the target must be a block device or a regular file");
    }
}

}  // namespace dmabufio
