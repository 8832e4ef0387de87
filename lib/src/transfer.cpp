#include "dmabufio/transfer.hpp"

#include <sys/stat.h>
#include <sys/sysmacros.h>

#include <algorithm>
#include <cerrno>
#include <deque>
#include <fstream>
#include <string>
#include <vector>

#include "dmabufio/error.hpp"

namespace dmabufio {
namespace {

struct Piece {
    std::uint64_t off = 0;  // within the transfer
    std::uint64_t len = 0;
    unsigned region = 0;  // compat: the staging region it uses while in flight
};

std::uint64_t run(bool write, BufferTable& table, const BlockFile& file, unsigned slot,
                  std::uint64_t buf_offset, std::uint64_t file_offset, std::uint64_t len,
                  TransferOptions o) {
    std::uint64_t max_req = o.max_request != 0 ? o.max_request : max_request_bytes(file);
    unsigned qd = std::max(1U, o.queue_depth);
    // Compat mode: each request in flight has its own region of the slot's staging memory; the
    // bytes are copied from it into the dma-buf after a read, into it before a write.
    const bool compat = table.kind(slot) == SlotKind::kCompat;
    std::vector<unsigned> free_regions;
    if (compat) {
        if (buf_offset > table.compat_dmabuf_bytes(slot) ||
            len > table.compat_dmabuf_bytes(slot) - buf_offset) {
            throw_error(EFAULT,
                        std::string(write ? "write" : "read") + " of " + std::to_string(len) +
                            " bytes at " + std::to_string(buf_offset) + " of a compat slot",
                        "the range lies outside the dma-buf");
        }
        const std::uint64_t block = file.logical_block_size();
        const std::uint64_t staging = table.staging_bytes(slot);
        qd = static_cast<unsigned>(
            std::min<std::uint64_t>(qd, std::max<std::uint64_t>(1, staging / block)));
        max_req = std::min(max_req, staging / qd / block * block);
        for (unsigned r = qd; r-- > 0;) {
            free_regions.push_back(r);
        }
    }
    Ring& ring = table.ring();
    std::deque<Piece> todo;  // continuations of short transfers go first
    std::vector<std::pair<std::uint64_t, Piece>> in_flight;  // (user_data, piece)
    std::uint64_t next = 0;
    std::uint64_t done = 0;
    int err = 0;
    std::string what;
    // A failed copy ends the transfer like a failed request: nothing more is queued, and what is
    // in flight (into the staging memory) is waited for before the error is thrown.
    auto copy = [&](const Piece& p, std::uint64_t n, bool to_dmabuf) {
        try {
            table.compat_copy(slot, p.region * max_req, buf_offset + p.off, n, to_dmabuf);
            return true;
        } catch (const Error& e) {
            if (err == 0) {
                err = e.err();
                what = e.what();
            }
            return false;
        }
    };
    while ((done < len && err == 0) || !in_flight.empty()) {
        while (err == 0 && in_flight.size() < qd && (!todo.empty() || next < len)) {
            Piece p;
            if (!todo.empty()) {
                p = todo.front();
                todo.pop_front();
            } else {
                p = {next, std::min(max_req, len - next)};
                next += p.len;
            }
            const std::uint64_t ud = ring.sync_user_data();
            std::uint64_t addr_offset = buf_offset + p.off;
            if (compat) {
                p.region = free_regions.back();
                free_regions.pop_back();
                addr_offset = p.region * max_req;
                if (write && !copy(p, p.len, false)) {
                    free_regions.push_back(p.region);
                    break;
                }
            }
            table.prep(write, file.fd(), slot, addr_offset, static_cast<unsigned>(p.len),
                       file_offset + p.off, ud);
            in_flight.emplace_back(ud, p);
        }
        if (in_flight.empty()) {
            break;  // a copy failed before anything was queued
        }
        const Completion c = ring.wait_for_any(Ring::kSyncTag, Ring::kSyncTagMask);
        const auto it = std::find_if(in_flight.begin(), in_flight.end(),
                                     [&](const auto& f) { return f.first == c.user_data; });
        if (it == in_flight.end()) {
            throw_error(EINVAL, "a large transfer met another synchronous I/O's completion",
                        "a transfer needs its ring to itself until its future is ready");
        }
        const Piece p = it->second;
        in_flight.erase(it);
        if (compat) {
            free_regions.push_back(p.region);
            if (!write && c.res > 0 && !copy(p, static_cast<std::uint64_t>(c.res), true)) {
                continue;
            }
        }
        if (c.res < 0 || (c.res == 0 && err == 0)) {
            if (err == 0) {
                err = c.res < 0 ? -c.res : EIO;
                what = std::string(write ? "write" : "read") + " of " + std::to_string(p.len) +
                       " bytes at " + std::to_string(file_offset + p.off) + " of " + file.path();
                if (c.res == 0) {
                    what += ": the file ended early";
                }
            }
        } else if (static_cast<std::uint64_t>(c.res) < p.len) {
            todo.push_back({p.off + static_cast<std::uint64_t>(c.res),
                            p.len - static_cast<std::uint64_t>(c.res)});
            done += static_cast<std::uint64_t>(c.res);
        } else {
            done += p.len;
        }
    }
    if (err != 0) {
        throw_error(err, what, io_advice(err, ring.options().iopoll));
    }
    return done;
}

}  // namespace

std::uint32_t max_request_bytes(const BlockFile& file) {
    struct stat st {};
    if (::fstat(file.fd(), &st) != 0) {
        throw_error(errno, "fstat " + file.path());
    }
    const dev_t dev = S_ISBLK(st.st_mode) ? st.st_rdev : st.st_dev;
    const std::string sys =
        "/sys/dev/block/" + std::to_string(major(dev)) + ":" + std::to_string(minor(dev));
    for (const char* q : {"/queue/max_sectors_kb", "/../queue/max_sectors_kb"}) {
        std::ifstream f(sys + q);
        std::uint32_t kb = 0;
        if (f >> kb && kb != 0) {
            return kb * 1024;
        }
    }
    return 1U << 20;
}

std::future<std::uint64_t> read(BufferTable& table, const BlockFile& file, unsigned slot,
                                std::uint64_t buf_offset, std::uint64_t file_offset,
                                std::uint64_t len, TransferOptions options) {
    return std::async(std::launch::async, run, false, std::ref(table), std::cref(file), slot,
                      buf_offset, file_offset, len, options);
}

std::future<std::uint64_t> write(BufferTable& table, const BlockFile& file, unsigned slot,
                                 std::uint64_t buf_offset, std::uint64_t file_offset,
                                 std::uint64_t len, TransferOptions options) {
    return std::async(std::launch::async, run, true, std::ref(table), std::cref(file), slot,
                      buf_offset, file_offset, len, options);
}

}  // namespace dmabufio
