#include "dmabufio/buffer_table.hpp"

#include <cerrno>
#include <utility>

#include "dmabufio/dmabufio.h"
#include "dmabufio/error.hpp"

namespace dmabufio {
namespace {

std::string advice_for(int err) {
    switch (err) {
        case EOPNOTSUPP:
            return "the target must be an NVMe (blk-mq) block device opened with O_DIRECT";
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
        case SlotKind::kUserMapping:
            return "dma-buf CPU mapping as user memory (fallback)";
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
    slots_.at(slot) = {SlotKind::kUser, reinterpret_cast<std::uintptr_t>(addr)};
}

void BufferTable::register_dmabuf_tagged(unsigned slot, DmaBuf& buf, int target_fd,
                                         std::uint64_t tag) {
    const int ret = dmabufio_register_dmabuf(ring_.get(), slot, buf.fd(), target_fd, tag);
    if (ret == 0) {
        slots_.at(slot) = {SlotKind::kDmaBuf, 0};
        return;
    }
    std::string advice = advice_for(-ret);
    if (ret == -EINVAL && !probe().dmabuf_slots) {
        advice =
            "this kernel lacks dma-buf registration (IORING_RSRC_UPDATE_EXTENDED); "
            "opt in to the mmap fallback to register the dma-buf's CPU mapping as "
            "ordinary user memory";
    }
    throw_error(ret,
                "register a " + std::string(to_string(buf.exporter())) + " dma-buf in slot " +
                    std::to_string(slot),
                advice);
}

SlotKind BufferTable::register_dmabuf(unsigned slot, DmaBuf& buf, int target_fd,
                                      bool allow_mmap_fallback) {
    try {
        register_dmabuf_tagged(slot, buf, target_fd, 0);
        return SlotKind::kDmaBuf;
    } catch (const Error& e) {
        if (e.err() != EINVAL || !allow_mmap_fallback || probe().dmabuf_slots) {
            throw;
        }
    }
    return register_dmabuf_mapping(slot, buf);
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

SlotKind BufferTable::register_dmabuf_mapping(unsigned slot, DmaBuf& buf) {
    auto view = buf.map();
    iovec iov{view.data(), view.size()};
    const int ret = io_uring_register_buffers_update_tag(ring_.get(), slot, &iov, nullptr, 1);
    if (ret < 0) {
        std::string advice;
        if (ret == -EFAULT || ret == -EOPNOTSUPP) {
            advice = "the " + std::string(to_string(buf.exporter())) +
                     " exporter's CPU mapping cannot be pinned as user memory (udmabuf and the "
                     "system heap map PFNs, the test exporter's pages move); the mmap "
                     "fallback needs an exporter whose mapping has pinnable pages";
        } else if (ret == -ENOMEM) {
            advice = "raise RLIMIT_MEMLOCK (ulimit -l)";
        }
        throw_error(ret, "register a dma-buf's CPU mapping in slot " + std::to_string(slot),
                    advice);
    }
    slots_.at(slot) = {SlotKind::kUser, reinterpret_cast<std::uintptr_t>(view.data())};
    slots_.at(slot).kind = SlotKind::kUserMapping;
    return SlotKind::kUserMapping;
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

int BufferTable::read(FixedFile file, unsigned slot, std::uint64_t offset, unsigned len,
                      std::uint64_t dev_offset) {
    const std::uint64_t tag = ring_.sync_user_data();
    prep(false, file, slot, offset, len, dev_offset, tag);
    return ring_.wait_for(tag);
}

int BufferTable::write(FixedFile file, unsigned slot, std::uint64_t offset, unsigned len,
                       std::uint64_t dev_offset) {
    const std::uint64_t tag = ring_.sync_user_data();
    prep(true, file, slot, offset, len, dev_offset, tag);
    return ring_.wait_for(tag);
}

int BufferTable::read(int fd, unsigned slot, std::uint64_t offset, unsigned len,
                      std::uint64_t dev_offset) {
    const std::uint64_t tag = ring_.sync_user_data();
    prep(false, fd, slot, offset, len, dev_offset, tag);
    return ring_.wait_for(tag);
}

int BufferTable::write(int fd, unsigned slot, std::uint64_t offset, unsigned len,
                       std::uint64_t dev_offset) {
    const std::uint64_t tag = ring_.sync_user_data();
    prep(true, fd, slot, offset, len, dev_offset, tag);
    return ring_.wait_for(tag);
}

}  // namespace dmabufio
