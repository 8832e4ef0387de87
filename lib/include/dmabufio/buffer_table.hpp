// The ring's registered-buffer table: user memory and dma-buf slots (design.md "uapi").
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "dmabufio/dmabuf.hpp"
#include "dmabufio/ring.hpp"
#include "dmabufio/uapi.hpp"

namespace dmabufio {

// Does the running kernel take dma-buf slots (IORING_RSRC_UPDATE_EXTENDED)? If not, why, in words.
struct Probe {
    bool dmabuf_slots = false;
    std::string why;
};
Probe probe();

// How a slot holds its memory. kCompat is compat mode, for kernels without the dmabuf-io series:
// the slot holds host staging memory, registered as an ordinary fixed buffer (so I/O to it is
// plain O_DIRECT, DMA-mapped per request), and bytes are copied between the staging memory and
// the dma-buf through the dma-buf's CPU mapping, bracketed with DMA_BUF_IOCTL_SYNC. It costs a
// copy through the CPU per byte and a mapping per I/O (make bench's "compat" row), and works only
// with exporters that can mmap. It is never taken unless asked for (Fallback::kCompat or
// register_dmabuf_compat()), and the slot's kind says it was.
enum class SlotKind { kEmpty, kUser, kDmaBuf, kCompat };
const char* to_string(SlotKind k);

// What register_dmabuf() may do when the kernel lacks dma-buf slots.
enum class Fallback {
    kNone,    // nothing: the registration fails (EINVAL, with advice)
    kCompat,  // compat mode (SlotKind::kCompat)
};

// The staging memory of a compat slot when register_dmabuf() falls back: min(dma-buf size, this).
// Pinned as a fixed buffer, it counts against RLIMIT_MEMLOCK (commonly 8 MiB) for unprivileged
// users.
inline constexpr std::size_t kCompatStagingBytes = std::size_t{4} << 20;

class BufferTable;

// One slot's registration, owned (RAII): the slot is cleared when the handle goes. With a tag, the
// ring then posts a completion with user_data = tag and res 0 once no I/O uses the old buffer any
// more (reap() hands it over; the synchronous helpers set it aside for reap()). The table must
// outlive the handle.
class Registration {
  public:
    Registration() = default;
    Registration(const Registration&) = delete;
    Registration& operator=(const Registration&) = delete;
    Registration(Registration&& other) noexcept;
    Registration& operator=(Registration&& other) noexcept;
    ~Registration() { reset(); }

    [[nodiscard]] bool valid() const noexcept { return table_ != nullptr; }
    [[nodiscard]] unsigned slot() const noexcept { return slot_; }
    [[nodiscard]] std::uint64_t tag() const noexcept { return tag_; }
    // Clears the slot now (errors are impossible for a slot this handle filled; ignored).
    void reset() noexcept;

  private:
    friend class BufferTable;
    Registration(BufferTable* table, unsigned slot, std::uint64_t tag)
        : table_(table), slot_(slot), tag_(tag) {}
    BufferTable* table_ = nullptr;
    unsigned slot_ = 0;
    std::uint64_t tag_ = 0;
};

class BufferTable {
  public:
    // Registers an empty (sparse) table of `slots` slots on ring. Throws Error.
    BufferTable(Ring& ring, unsigned slots);
    BufferTable(const BufferTable&) = delete;
    BufferTable& operator=(const BufferTable&) = delete;
    BufferTable(BufferTable&&) = delete;
    BufferTable& operator=(BufferTable&&) = delete;
    ~BufferTable();

    // One raw extended update of `slot`; returns the kernel's answer (1, or -errno), no throw.
    int update(unsigned slot, const io_uring_regbuf_desc& desc) noexcept;

    void register_user(unsigned slot, void* addr, std::size_t len);
    // Registers the whole dma-buf against target_fd (opened O_DIRECT: an NVMe block device, or a
    // file on ext4 or XFS on one). If the kernel lacks dma-buf slots and fallback is
    // Fallback::kCompat, sets the slot up in compat mode instead (register_dmabuf_compat() with
    // min(size, kCompatStagingBytes) of staging). Returns the kind used; never falls back unless
    // asked to. Throws Error.
    SlotKind register_dmabuf(unsigned slot, DmaBuf& buf, int target_fd,
                             Fallback fallback = Fallback::kNone);
    // Registers the whole dma-buf against target_fd in the first empty slot and returns the
    // owning handle; tag (0: none) is posted when the handle clears the slot. Throws Error
    // (ENOSPC when every slot is taken).
    Registration add_dmabuf(DmaBuf& buf, int target_fd, std::uint64_t tag = 0);
    // Compat mode, explicitly, on any kernel: the slot takes `staging` bytes of host memory (a
    // multiple of the page size; 0: min(dma-buf size, kCompatStagingBytes)) registered as an
    // ordinary fixed buffer, and keeps its own reference to the dma-buf and a CPU mapping of it.
    // read()/write() and the large transfers (transfer.hpp) copy through the staging memory;
    // prep() and addr() address the staging memory itself, and compat_copy() moves bytes between
    // it and the dma-buf. Returns kCompat. Throws Error (the exporter cannot mmap, no memory,
    // RLIMIT_MEMLOCK).
    SlotKind register_dmabuf_compat(unsigned slot, const DmaBuf& buf, std::size_t staging = 0);
    // Compat slots: copies len bytes between staging memory at staging_offset and the dma-buf at
    // buf_offset (to_dmabuf: after a read; otherwise before a write), bracketed with
    // DMA_BUF_IOCTL_SYNC. Throws Error (EINVAL: not a compat slot; EFAULT: out of range; the
    // sync's errno). A compat slot must not be cleared or replaced while a transfer on it runs.
    void compat_copy(unsigned slot, std::uint64_t staging_offset, std::uint64_t buf_offset,
                     std::uint64_t len, bool to_dmabuf);
    // A compat slot's staging size and its dma-buf's size (0 for other kinds).
    [[nodiscard]] std::size_t staging_bytes(unsigned slot) const {
        return slots_.at(slot).staging_len;
    }
    [[nodiscard]] std::size_t compat_dmabuf_bytes(unsigned slot) const {
        const Slot& s = slots_.at(slot);
        return s.dmabuf ? s.dmabuf->size() : 0;
    }
    void clear(unsigned slot);

    [[nodiscard]] Ring& ring() noexcept { return ring_; }
    [[nodiscard]] SlotKind kind(unsigned slot) const { return slots_.at(slot).kind; }
    // The `addr` an SQE gives for byte `offset` of the slot's buffer: the offset itself for a
    // dma-buf slot, a user address otherwise (for a compat slot, into its staging memory).
    [[nodiscard]] std::uint64_t addr(unsigned slot, std::uint64_t offset) const;

    // READ_FIXED/WRITE_FIXED of len bytes at byte `offset` of the slot, at dev_offset of fd.
    // They wait for their own completion: other I/O may be in flight on the ring (see
    // Ring::wait_for()). Returns the CQE result (bytes or -errno). On a compat slot, `offset` is
    // the dma-buf's, and the bytes go through the staging memory, all of it (so no other I/O may
    // use that slot meanwhile), in pieces of at most its size, len capped at 0x7ffff000 as the
    // kernel caps one read; the result is the bytes moved before the first short or failed piece,
    // or its -errno (-EFAULT if the range lies outside the dma-buf; a failed copy's errno).
    int read(int fd, unsigned slot, std::uint64_t offset, unsigned len, std::uint64_t dev_offset);
    int write(int fd, unsigned slot, std::uint64_t offset, unsigned len, std::uint64_t dev_offset);
    // Queues one without submitting (asynchronous form); user_data is the caller's. Returns the
    // SQE so the caller can add flags (IOSQE_FIXED_FILE: then fd is a fixed-file index).
    io_uring_sqe* prep(bool write, int fd, unsigned slot, std::uint64_t offset, unsigned len,
                       std::uint64_t dev_offset, std::uint64_t user_data);
    // The same on a fixed file (IOSQE_FIXED_FILE set). A dma-buf slot still only works with the
    // file it was registered against, through whichever fixed index names that file.
    int read(FixedFile file, unsigned slot, std::uint64_t offset, unsigned len,
             std::uint64_t dev_offset);
    int write(FixedFile file, unsigned slot, std::uint64_t offset, unsigned len,
              std::uint64_t dev_offset);
    io_uring_sqe* prep(bool write, FixedFile file, unsigned slot, std::uint64_t offset,
                       unsigned len, std::uint64_t dev_offset, std::uint64_t user_data);

  private:
    void register_dmabuf_tagged(unsigned slot, DmaBuf& buf, int target_fd, std::uint64_t tag);
    int sync_io(bool write, int fd, bool fixed_file, unsigned slot, std::uint64_t offset,
                unsigned len, std::uint64_t dev_offset);
    struct Slot {
        SlotKind kind = SlotKind::kEmpty;
        std::uint64_t base = 0;
        // compat mode: staging memory and the slot's own reference to the dma-buf (mapped)
        // (anonymous mmap, so that pages a late DMA still pins are never reused by malloc)
        std::shared_ptr<std::uint8_t> staging;
        std::size_t staging_len = 0;
        std::optional<DmaBuf> dmabuf;
    };
    Ring& ring_;
    std::vector<Slot> slots_;
};

}  // namespace dmabufio
