// Large transfers: one call moves any number of bytes between a file range and a registered
// buffer's range (a dma-buf slot or user memory), split at the device's largest request and
// pipelined at a chosen queue depth. On a compat slot (SlotKind::kCompat) each request in flight
// has its own region of the staging memory, so requests are at most staging / queue_depth.
#pragma once

#include <cstdint>
#include <future>

#include "dmabufio/buffer_table.hpp"
#include "dmabufio/file.hpp"

namespace dmabufio {

struct TransferOptions {
    unsigned queue_depth = 8;       // requests in flight
    std::uint32_t max_request = 0;  // bytes per request; 0: max_request_bytes(file)
};

// The largest request the device under file takes, in bytes: its queue's max_sectors_kb
// (/sys/dev/block/MAJ:MIN/queue, the whole disk's for a partition or a file on one), 1 MiB where
// sysfs does not say.
std::uint32_t max_request_bytes(const BlockFile& file);

// Reads len bytes at file_offset of file into slot's buffer at buf_offset (write: from the buffer
// into the file), as requests of at most max_request bytes, queue_depth of them in flight. A short
// transfer is continued where it stopped. The future gives len, or throws the Error of the first
// request that failed (after the others in flight are done), or EIO if the file ended early.
// Offsets and len follow file.logical_block_size(). The transfer runs on its own thread and
// needs the table's ring to itself until the future is ready (a ring is not thread-safe).
std::future<std::uint64_t> read(BufferTable& table, const BlockFile& file, unsigned slot,
                                std::uint64_t buf_offset, std::uint64_t file_offset,
                                std::uint64_t len, TransferOptions options = {});
std::future<std::uint64_t> write(BufferTable& table, const BlockFile& file, unsigned slot,
                                 std::uint64_t buf_offset, std::uint64_t file_offset,
                                 std::uint64_t len, TransferOptions options = {});

}  // namespace dmabufio
