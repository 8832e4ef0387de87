/* The C API (dmabufio/dmabufio.h): the library's only raw io_uring_register(2) call. */
#include "dmabufio/dmabufio.h"

#include <errno.h>
#include <stdint.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <unistd.h>

int dmabufio_register_raw(int ring_fd, unsigned int opcode, void* arg, unsigned int nr_args) {
    const long ret = syscall(__NR_io_uring_register, ring_fd, opcode, arg, nr_args);
    return ret < 0 ? -errno : (int)ret;
}

int dmabufio_update_buffers(struct io_uring* ring, unsigned int off,
                            const struct io_uring_regbuf_desc* descs, const __u64* tags,
                            unsigned int nr) {
    struct io_uring_rsrc_update2 up = {
        .offset = off,
        .resv = IORING_RSRC_UPDATE_EXTENDED, /* the flags live in resv, as in the public series */
        .data = (__u64)(uintptr_t)descs,
        .tags = (__u64)(uintptr_t)tags,
        .nr = nr,
    };
    return dmabufio_register_raw(ring->ring_fd, IORING_REGISTER_BUFFERS_UPDATE, &up, sizeof(up));
}

int dmabufio_register_dmabuf(struct io_uring* ring, unsigned int slot, int dmabuf_fd, int target_fd,
                             __u64 tag) {
    const struct io_uring_regbuf_desc desc = {
        .type = IO_REGBUF_TYPE_DMABUF,
        .dmabuf_fd = dmabuf_fd,
        .target_fd = target_fd,
    };
    const int ret = dmabufio_update_buffers(ring, slot, &desc, tag ? &tag : NULL, 1);
    return ret < 0 ? ret : 0;
}

int dmabufio_clear_buffer(struct io_uring* ring, unsigned int slot) {
    const struct io_uring_regbuf_desc desc = {.type = IO_REGBUF_TYPE_EMPTY};
    int ret = dmabufio_update_buffers(ring, slot, &desc, NULL, 1);
    if (ret == -EINVAL) { /* a kernel without the extended update: the classic way */
        const struct iovec empty = {NULL, 0};
        ret = io_uring_register_buffers_update_tag(ring, slot, &empty, NULL, 1);
    }
    return ret < 0 ? ret : 0;
}

int dmabufio_probe(const char** advice) {
    struct io_uring ring;
    const char* why = NULL;
    int ret = io_uring_queue_init(1, &ring, 0);
    if (ret < 0) {
        if (advice) {
            *advice = ret == -ENOSYS ? "this kernel has no io_uring (CONFIG_IO_URING)"
                      : ret == -EPERM
                          ? "io_uring is disabled for this user: check the sysctl "
                            "kernel.io_uring_disabled and kernel.io_uring_group"
                          : "io_uring could not be set up (for ENOMEM raise RLIMIT_MEMLOCK)";
        }
        return ret;
    }
    ret = io_uring_register_buffers_sparse(&ring, 1);
    if (ret < 0) {
        why = "this kernel cannot make a sparse buffer table (Linux 5.19 or later is needed)";
        ret = 0;
    } else {
        const struct io_uring_regbuf_desc desc = {.type = IO_REGBUF_TYPE_EMPTY};
        ret = dmabufio_update_buffers(&ring, 0, &desc, NULL, 1);
        if (ret == 1) {
            why = "this kernel takes dma-buf slots (IORING_RSRC_UPDATE_EXTENDED)";
        } else if (ret == -EINVAL) {
            why =
                "this kernel lacks dma-buf registration: io_uring rejected "
                "IORING_RSRC_UPDATE_EXTENDED (boot a kernel with the dmabuf-io series, or "
                "register the dma-buf's CPU mapping as ordinary user memory instead)";
            ret = 0;
        } else {
            why = "probing dma-buf registration failed unexpectedly";
        }
    }
    io_uring_queue_exit(&ring);
    if (advice) {
        *advice = why;
    }
    return ret;
}
