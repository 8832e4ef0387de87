#include "dmabufio/buffer_table.hpp"

#include <fcntl.h>
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <utility>

#include "dmabufio/dmabufio.h"
#include "dmabufio/error.hpp"

namespace dmabufio {
namespace {

constexpr unsigned kMaxRw = 0x7ffff000;  // the kernel's MAX_RW_COUNT: the most one read moves

std::string advice_for(int err) {
    switch (err) {
        case EOPNOTSUPP:
            return "the target must be opened with O_DIRECT and be an NVMe (blk-mq) block device, "
                   "a dm-linear/dm-stripe table, md raid0 array or NVMe multipath head over NVMe, "
                   "or a file on ext4 or XFS on one of those (not DAX, encrypted, verity, "
                   "journalled or inline data, nor on XFS's realtime device)";
        case ENXIO:
            return "the dm device has no table loaded, or the md array is not running";
        case EREMOTEIO:
            return "the dma-buf is device memory that this device cannot reach peer-to-peer "
                   "(the kernel's PCI P2PDMA distance check refused the pair)";
        case EBADF:
            return "dmabuf_fd must be an open dma-buf and target_fd an open file";
        case EINVAL:
            return "the dma-buf size must be a multiple of the device's page size, and this kernel "
                   "must have dma-buf registration (see probe())";
        case ENOMEM:
            return "not enough memory to map the dma-buf";
        default:
            return {};
    }
}

}  // namespace

Probe probe() {
    const char* why = nullptr;
    const int ret = dmabufio_probe(&why);
    return {ret == 1, ret < 0 ? std::string(why) + " (errno " + std::to_string(-ret) + ")" : why};
}

const char* to_string(SlotKind k) {
    switch (k) {
        case SlotKind::kEmpty:
            return "empty";
        case SlotKind::kUser:
            return "user memory";
        case SlotKind::kDmaBuf:
            return "dma-buf (pre-mapped)";
        case SlotKind::kCompat:
            return "compat: O_DIRECT into host memory, copied through the dma-buf's CPU mapping";
    }
    return "?";
}

BufferTable::BufferTable(Ring& ring, unsigned slots) : ring_(ring), slots_(slots) {
    ring_.register_buffers_sparse(slots);
}

BufferTable::~BufferTable() { io_uring_unregister_buffers(ring_.get()); }

int BufferTable::update(unsigned slot, const io_uring_regbuf_desc& desc) noexcept {
    return dmabufio_update_buffers(ring_.get(), slot, &desc, nullptr, 1);
}

void BufferTable::register_user(unsigned slot, void* addr, std::size_t len) {
    iovec iov{addr, len};
    // The classic (non-extended) update works on every kernel with sparse tables.
    const int ret = io_uring_register_buffers_update_tag(ring_.get(), slot, &iov, nullptr, 1);
    if (ret < 0) {
        throw_error(ret, "register user memory in slot " + std::to_string(slot),
                    ret == -ENOMEM ? "raise RLIMIT_MEMLOCK (ulimit -l)" : "");
    }
    Slot& s = slots_.at(slot) = {};
    s.kind = SlotKind::kUser;
    s.base = reinterpret_cast<std::uintptr_t>(addr);
}

void BufferTable::register_dmabuf_tagged(unsigned slot, DmaBuf& buf, int target_fd,
                                         std::uint64_t tag) {
    const int ret = dmabufio_register_dmabuf(ring_.get(), slot, buf.fd(), target_fd, tag);
    if (ret == 0) {
        slots_.at(slot) = {};
        slots_.at(slot).kind = SlotKind::kDmaBuf;
        return;
    }
    std::string advice = advice_for(-ret);
    if (ret == -EINVAL && !probe().dmabuf_slots) {
        advice =
            "this kernel lacks dma-buf registration (IORING_RSRC_UPDATE_EXTENDED); "
            "boot a kernel with the dmabuf-io series, or opt in to compat mode "
            "(Fallback::kCompat): reads into host memory copied through the dma-buf's CPU mapping";
    }
    throw_error(ret,
                "register a " + std::string(to_string(buf.exporter())) + " dma-buf in slot " +
                    std::to_string(slot),
                advice);
}

SlotKind BufferTable::register_dmabuf(unsigned slot, DmaBuf& buf, int target_fd,
                                      Fallback fallback) {
    try {
        register_dmabuf_tagged(slot, buf, target_fd, 0);
        return SlotKind::kDmaBuf;
    } catch (const Error& e) {
        if (e.err() != EINVAL || fallback != Fallback::kCompat || probe().dmabuf_slots) {
            throw;
        }
    }
    return register_dmabuf_compat(slot, buf, std::min(buf.size(), kCompatStagingBytes));
}

Registration BufferTable::add_dmabuf(DmaBuf& buf, int target_fd, std::uint64_t tag) {
    for (unsigned slot = 0; slot < slots_.size(); slot++) {
        if (slots_[slot].kind == SlotKind::kEmpty) {
            register_dmabuf_tagged(slot, buf, target_fd, tag);
            return {this, slot, tag};
        }
    }
    throw_error(ENOSPC,
                "register a dma-buf: all " + std::to_string(slots_.size()) + " slots are taken",
                "make the table larger or release a Registration");
}

Registration::Registration(Registration&& other) noexcept
    : table_(std::exchange(other.table_, nullptr)), slot_(other.slot_), tag_(other.tag_) {}

Registration& Registration::operator=(Registration&& other) noexcept {
    if (this != &other) {
        reset();
        table_ = std::exchange(other.table_, nullptr);
        slot_ = other.slot_;
        tag_ = other.tag_;
    }
    return *this;
}

void Registration::reset() noexcept {
    if (table_ != nullptr) {
        try {
            table_->clear(slot_);
        } catch (const Error&) {  // NOLINT(bugprone-empty-catch): a filled slot always clears
        }
        table_ = nullptr;
    }
}

SlotKind BufferTable::register_dmabuf_compat(unsigned slot, const DmaBuf& buf,
                                             std::size_t staging) {
    const auto page = static_cast<std::size_t>(::sysconf(_SC_PAGESIZE));
    if (staging == 0) {
        staging = std::min(buf.size(), kCompatStagingBytes);
    }
    if (staging == 0 || staging % page != 0) {
        throw_error(EINVAL,
                    "set up compat mode with " + std::to_string(staging) + " bytes of staging",
                    "the staging size must be a nonzero multiple of the page size");
    }
    Slot s;
    s.kind = SlotKind::kCompat;
    s.dmabuf.emplace(Fd(::fcntl(buf.fd(), F_DUPFD_CLOEXEC, 0)), buf.size(), buf.exporter());
    if (s.dmabuf->fd() < 0) {
        throw_error(errno, "set up compat mode: dup the dma-buf fd");
    }
    s.dmabuf->map();  // now, so that copies from a transfer's thread only read the mapping
    void* mem =
        ::mmap(nullptr, staging, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (mem == MAP_FAILED) {
        throw_error(errno, "set up compat mode: allocate " + std::to_string(staging) +
                               " bytes of staging memory");
    }
    s.staging.reset(static_cast<std::uint8_t*>(mem),
                    [staging](std::uint8_t* p) { ::munmap(p, staging); });
    s.staging_len = staging;
    s.base = reinterpret_cast<std::uintptr_t>(s.staging.get());
    iovec iov{s.staging.get(), staging};
    // The classic (non-extended) update: this works on every kernel with sparse tables.
    const int ret = io_uring_register_buffers_update_tag(ring_.get(), slot, &iov, nullptr, 1);
    if (ret < 0) {
        throw_error(ret, "register compat staging memory in slot " + std::to_string(slot),
                    ret == -ENOMEM ? "raise RLIMIT_MEMLOCK (ulimit -l)" : "");
    }
    slots_.at(slot) = std::move(s);
    return SlotKind::kCompat;
}

void BufferTable::compat_copy(unsigned slot, std::uint64_t staging_offset, std::uint64_t buf_offset,
                              std::uint64_t len, bool to_dmabuf) {
    Slot& s = slots_.at(slot);
    if (s.kind != SlotKind::kCompat) {
        throw_error(EINVAL, "compat copy on slot " + std::to_string(slot),
                    std::string("the slot holds ") + to_string(s.kind) + ", not compat mode");
    }
    if (staging_offset > s.staging_len || len > s.staging_len - staging_offset ||
        buf_offset > s.dmabuf->size() || len > s.dmabuf->size() - buf_offset) {
        throw_error(EFAULT, "compat copy of " + std::to_string(len) + " bytes",
                    "the range lies outside the staging memory or the dma-buf");
    }
    std::uint8_t* staged = s.staging.get() + staging_offset;
    std::uint8_t* mapped = s.dmabuf->map().data() + buf_offset;
    s.dmabuf->begin_cpu_access(to_dmabuf);
    if (to_dmabuf) {
        std::memcpy(mapped, staged, len);
    } else {
        std::memcpy(staged, mapped, len);
    }
    s.dmabuf->end_cpu_access(to_dmabuf);
}

void BufferTable::clear(unsigned slot) {
    if (const int ret = dmabufio_clear_buffer(ring_.get(), slot); ret < 0) {
        throw_error(ret, "clear buffer slot " + std::to_string(slot));
    }
    slots_.at(slot) = {};
}

std::uint64_t BufferTable::addr(unsigned slot, std::uint64_t offset) const {
    return slots_.at(slot).base + offset;
}

io_uring_sqe* BufferTable::prep(bool write, int fd, unsigned slot, std::uint64_t offset,
                                unsigned len, std::uint64_t dev_offset, std::uint64_t user_data) {
    io_uring_sqe* sqe = ring_.sqe();
    // NOLINTNEXTLINE(performance-no-int-to-ptr): a dma-buf slot's "address" is a byte offset.
    auto* a = reinterpret_cast<void*>(addr(slot, offset));
    if (write) {
        io_uring_prep_write_fixed(sqe, fd, a, len, dev_offset, static_cast<int>(slot));
    } else {
        io_uring_prep_read_fixed(sqe, fd, a, len, dev_offset, static_cast<int>(slot));
    }
    sqe->user_data = user_data;
    return sqe;
}

io_uring_sqe* BufferTable::prep(bool write, FixedFile file, unsigned slot, std::uint64_t offset,
                                unsigned len, std::uint64_t dev_offset, std::uint64_t user_data) {
    io_uring_sqe* sqe =
        prep(write, static_cast<int>(file.index), slot, offset, len, dev_offset, user_data);
    sqe->flags |= IOSQE_FIXED_FILE;
    return sqe;
}

int BufferTable::sync_io(bool write, int fd, bool fixed_file, unsigned slot, std::uint64_t offset,
                         unsigned len, std::uint64_t dev_offset) {
    auto one = [&](std::uint64_t addr_offset, unsigned n, std::uint64_t at) {
        const std::uint64_t tag = ring_.sync_user_data();
        io_uring_sqe* sqe = prep(write, fd, slot, addr_offset, n, at, tag);
        if (fixed_file) {
            sqe->flags |= IOSQE_FIXED_FILE;
        }
        return ring_.wait_for(tag);
    };
    if (slots_.at(slot).kind != SlotKind::kCompat) {
        return one(offset, len, dev_offset);
    }
    // Compat: through the staging memory, in pieces of at most its size.
    const Slot& s = slots_.at(slot);
    if (offset > s.dmabuf->size() || len > s.dmabuf->size() - offset) {
        return -EFAULT;
    }
    len = std::min(len, kMaxRw);
    const std::size_t piece = s.staging_len;
    unsigned done = 0;
    while (done < len) {
        const auto n = static_cast<unsigned>(std::min<std::uint64_t>(piece, len - done));
        int res = 0;
        try {
            if (write) {
                compat_copy(slot, 0, offset + done, n, false);
            }
            res = one(0, n, dev_offset + done);
            if (!write && res > 0) {
                compat_copy(slot, 0, offset + done, static_cast<unsigned>(res), true);
            }
        } catch (const Error& e) {
            res = -e.err();
        }
        if (res < 0) {
            return done != 0 ? static_cast<int>(done) : res;
        }
        done += static_cast<unsigned>(res);
        if (static_cast<unsigned>(res) < n) {
            break;
        }
    }
    return static_cast<int>(done);
}

int BufferTable::read(FixedFile file, unsigned slot, std::uint64_t offset, unsigned len,
                      std::uint64_t dev_offset) {
    return sync_io(false, static_cast<int>(file.index), true, slot, offset, len, dev_offset);
}

int BufferTable::write(FixedFile file, unsigned slot, std::uint64_t offset, unsigned len,
                       std::uint64_t dev_offset) {
    return sync_io(true, static_cast<int>(file.index), true, slot, offset, len, dev_offset);
}

int BufferTable::read(int fd, unsigned slot, std::uint64_t offset, unsigned len,
                      std::uint64_t dev_offset) {
    return sync_io(false, fd, false, slot, offset, len, dev_offset);
}

int BufferTable::write(int fd, unsigned slot, std::uint64_t offset, unsigned len,
                       std::uint64_t dev_offset) {
    return sync_io(true, fd, false, slot, offset, len, dev_offset);
}

}  // namespace dmabufio
