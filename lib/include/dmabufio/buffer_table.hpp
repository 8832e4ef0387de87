// The ring's registered-buffer table: user memory and dma-buf slots (design.md "uapi").
#pragma once

#include <cstddef>
#include <cstdint>
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

// How a slot holds its memory. kUserMapping is the explicit fallback: a dma-buf's CPU mapping
// registered as ordinary user memory (per-I/O DMA mapping, but the same data).
enum class SlotKind { kEmpty, kUser, kDmaBuf, kUserMapping };
const char* to_string(SlotKind k);

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
    // Registers the whole dma-buf against target_fd (an O_DIRECT NVMe block device). If the kernel
    // lacks dma-buf slots and allow_mmap_fallback is set, registers the dma-buf's CPU mapping as
    // user memory instead. Returns the kind used; never falls back silently. Throws Error.
    SlotKind register_dmabuf(unsigned slot, DmaBuf& buf, int target_fd,
                             bool allow_mmap_fallback = false);
    // Registers the whole dma-buf against target_fd in the first empty slot and returns the
    // owning handle; tag (0: none) is posted when the handle clears the slot. Throws Error
    // (ENOSPC when every slot is taken).
    Registration add_dmabuf(DmaBuf& buf, int target_fd, std::uint64_t tag = 0);
    // The fallback itself, explicitly: registers the dma-buf's CPU mapping (mmap) as ordinary user
    // memory in slot, on any kernel. I/O then maps pages per request like any fixed buffer, and
    // the exporter cannot move the memory under it. Returns kUserMapping. Throws Error.
    SlotKind register_dmabuf_mapping(unsigned slot, DmaBuf& buf);
    void clear(unsigned slot);

    [[nodiscard]] Ring& ring() noexcept { return ring_; }
    [[nodiscard]] SlotKind kind(unsigned slot) const { return slots_.at(slot).kind; }
    // The `addr` an SQE gives for byte `offset` of the slot's buffer: the offset itself for a
    // dma-buf slot, a user address otherwise.
    [[nodiscard]] std::uint64_t addr(unsigned slot, std::uint64_t offset) const;

    // READ_FIXED/WRITE_FIXED of len bytes at byte `offset` of the slot, at dev_offset of fd.
    // They wait for their own completion: other I/O may be in flight on the ring (see
    // Ring::wait_for()). Returns the CQE result (bytes or -errno).
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
    struct Slot {
        SlotKind kind = SlotKind::kEmpty;
        std::uint64_t base = 0;
    };
    Ring& ring_;
    std::vector<Slot> slots_;
};

}  // namespace dmabufio
