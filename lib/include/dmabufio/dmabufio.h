/*
 * dmabufio: dma-bufs as io_uring fixed buffers (design.md "uapi"). The C API, in liburing's
 * style: functions take a struct io_uring * (or, for the raw call, a ring fd) and return 0 (or a
 * count) on success and -errno on failure; errno is not set. C11 and C++; link with -ldmabufio
 * (pkg-config dmabufio). The C++ library (the .hpp headers beside this one) is built on these
 * functions.
 *
 * After registration a dma-buf slot works like any fixed buffer, with one difference: the SQE's
 * addr is the byte offset into the dma-buf, not a user address:
 *
 *     io_uring_prep_read_fixed(sqe, target_fd, (void *)offset, len, file_offset, slot);
 *
 * and only IORING_OP_READ_FIXED and IORING_OP_WRITE_FIXED on the file the slot was registered
 * against may use it. I/O errors on a dma-buf slot (in the CQE's res):
 *     EBADF       the I/O names another file than the slot's target_fd (another open of the
 *                 same device included);
 *     EOPNOTSUPP  an opcode other than READ_FIXED/WRITE_FIXED, or the device gained integrity
 *                 metadata since registration;
 *     EFAULT      offset + len lies outside the dma-buf, or a READ_FIXED into a dma-buf whose
 *                 fd was not open for writing (such a slot is only read from);
 *     EINVAL      offset (into the dma-buf) is not aligned to the device's DMA alignment
 *                 (queue/dma_alignment + 1), or len or the file offset is not a multiple of the
 *                 device's logical block size.
 */
#ifndef DMABUFIO_DMABUFIO_H
#define DMABUFIO_DMABUFIO_H

#include <liburing.h>
#include <linux/types.h>

#include "dmabufio/uapi.h" /* IORING_RSRC_UPDATE_EXTENDED, struct io_uring_regbuf_desc */

#ifdef __cplusplus
extern "C" {
#endif

/*
 * dmabufio_register_raw - io_uring_register(2), the one raw system call of the library
 *
 * int dmabufio_register_raw(int ring_fd, unsigned int opcode, void *arg, unsigned int nr_args);
 *
 * DESCRIPTION
 *     Calls io_uring_register(ring_fd, opcode, arg, nr_args) as given, without checking the
 *     arguments: for tests that must hand the kernel what no well-formed caller would, and for
 *     opcodes liburing does not wrap. ring_fd is the ring's real fd (ring->ring_fd), not a
 *     registered index.
 *
 * RETURN VALUE
 *     The system call's non-negative result, or -errno.
 *
 * ERRORS
 *     Whatever io_uring_register(2) reports for opcode; see io_uring_register(2).
 */
int dmabufio_register_raw(int ring_fd, unsigned int opcode, void* arg, unsigned int nr_args);

/*
 * dmabufio_update_buffers - update fixed-buffer slots with typed descriptors and tags
 *
 * int dmabufio_update_buffers(struct io_uring *ring, unsigned int off,
 *                             const struct io_uring_regbuf_desc *descs, const __u64 *tags,
 *                             unsigned int nr);
 *
 * DESCRIPTION
 *     The extended buffer update (IORING_REGISTER_BUFFERS_UPDATE with
 *     IORING_RSRC_UPDATE_EXTENDED): slots off .. off + nr - 1 of ring's buffer table take
 *     descs[0 .. nr - 1]. A descriptor's type is IO_REGBUF_TYPE_EMPTY (clear the slot; uaddr and
 *     size 0), IO_REGBUF_TYPE_UADDR (user memory uaddr, size) or IO_REGBUF_TYPE_DMABUF (the whole
 *     dma-buf dmabuf_fd, mapped for target_fd, an NVMe block device opened with O_DIRECT; uaddr
 *     and size 0); flags and __resv must be 0. tags may be NULL; otherwise tags[i] is the tag of
 *     slot off + i: when what the slot holds is later replaced or cleared, and no I/O uses it any
 *     more, the ring posts a CQE with user_data = tags[i] and res 0. An empty descriptor takes no
 *     tag (0). A slot replaced while I/O uses it stays valid for that I/O. The table must exist
 *     (io_uring_register_buffers_sparse() or io_uring_register_buffers()).
 *
 * RETURN VALUE
 *     The number of slots updated (nr, or fewer if one failed: slots before it were updated), or
 *     -errno if the first failed.
 *
 * ERRORS
 *     EINVAL      the kernel lacks the extended update (no dmabuf-io series: see
 *                 dmabufio_probe()); off + nr exceeds the table; nr is 0; an unknown type;
 *                 nonzero flags or __resv; uaddr or size set for a dma-buf or an empty slot; a
 *                 tag on an empty descriptor; the dma-buf's size is not a multiple of the
 *                 device's page size.
 *     ENXIO       ring has no buffer table.
 *     EBADF       dmabuf_fd is not a dma-buf, or target_fd is not open.
 *     EOPNOTSUPP  target_fd cannot take dma-bufs: not a blk-mq block device, not opened with
 *                 O_DIRECT, a device with integrity metadata, or a kernel without
 *                 CONFIG_DMABUF_IO.
 *     EREMOTEIO   the dma-buf is device memory (a peer-to-peer exporter's) that target_fd's
 *                 device cannot reach: the kernel's PCI P2PDMA distance check refused the pair.
 *     EFAULT      descs or tags is not readable memory, or user memory is not valid.
 *     ENOMEM      no memory to register (for user memory, RLIMIT_MEMLOCK may be the limit).
 */
int dmabufio_update_buffers(struct io_uring* ring, unsigned int off,
                            const struct io_uring_regbuf_desc* descs, const __u64* tags,
                            unsigned int nr);

/*
 * dmabufio_register_dmabuf - register a dma-buf in one fixed-buffer slot against a target
 *
 * int dmabufio_register_dmabuf(struct io_uring *ring, unsigned int slot, int dmabuf_fd,
 *                              int target_fd, __u64 tag);
 *
 * DESCRIPTION
 *     Maps the whole dma-buf dmabuf_fd for target_fd (an NVMe block device opened with O_DIRECT)
 *     once, and puts it in slot, replacing what the slot held. tag (0 for none) is posted as a
 *     CQE's user_data once the registration is replaced or cleared and no I/O uses it. dmabuf_fd
 *     may be closed afterwards; the registration holds the dma-buf. The exporter may move the
 *     memory at any time; I/O waits for the new mapping, it never fails for it.
 *
 * RETURN VALUE
 *     0 on success, -errno on failure.
 *
 * ERRORS
 *     As dmabufio_update_buffers() (EINVAL, ENXIO, EBADF, EOPNOTSUPP, EREMOTEIO, ENOMEM); EINVAL
 *     also when slot is outside the table.
 */
int dmabufio_register_dmabuf(struct io_uring* ring, unsigned int slot, int dmabuf_fd, int target_fd,
                             __u64 tag);

/*
 * dmabufio_clear_buffer - empty one fixed-buffer slot
 *
 * int dmabufio_clear_buffer(struct io_uring *ring, unsigned int slot);
 *
 * DESCRIPTION
 *     Empties slot (any kind: user memory or dma-buf). I/O in flight on it completes normally;
 *     the slot's tag, if any, is posted once it has. On a kernel without the extended update the
 *     classic update (an empty iovec) is used, so this works on any kernel with sparse tables.
 *
 * RETURN VALUE
 *     0 on success, -errno on failure.
 *
 * ERRORS
 *     EINVAL      slot is outside the table.
 *     ENXIO       ring has no buffer table.
 */
int dmabufio_clear_buffer(struct io_uring* ring, unsigned int slot);

/*
 * dmabufio_probe - does the running kernel take dma-buf slots?
 *
 * int dmabufio_probe(const char **advice);
 *
 * DESCRIPTION
 *     Sets up a one-entry ring with a one-slot sparse table and tries an extended update that
 *     clears the slot (harmless everywhere). If advice is not NULL, *advice is set to a static
 *     sentence that says what was found and, if the feature is missing, what to do.
 *
 * RETURN VALUE
 *     1 if the kernel takes dma-buf slots, 0 if it does not (it rejects the extended update), or
 *     -errno if io_uring itself is unavailable.
 *
 * ERRORS
 *     ENOSYS      the kernel has no io_uring.
 *     EPERM       io_uring is disabled for this user (sysctl kernel.io_uring_disabled).
 *     ENOMEM      ring memory could not be allocated (RLIMIT_MEMLOCK on kernels before 5.12).
 *     Any other errno that io_uring_queue_init() or io_uring_register_buffers_sparse() report.
 */
int dmabufio_probe(const char** advice);

#ifdef __cplusplus
}
#endif

#endif /* DMABUFIO_DMABUFIO_H */
