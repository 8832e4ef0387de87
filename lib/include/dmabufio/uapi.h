/*
 * The kernel uapi this project adds (design.md "uapi"; include/uapi/linux/io_uring.h and
 * include/uapi/linux/dmabuf_test.h of kernel/patches). liburing ships its own copy of io_uring.h,
 * which predates the series, so the additions are spelled out here, guarded against a header that
 * already has them. C11 and C++.
 */
#ifndef DMABUFIO_UAPI_H
#define DMABUFIO_UAPI_H

#include <linux/ioctl.h>
#include <linux/types.h>

#ifndef IORING_RSRC_UPDATE_EXTENDED
#define IORING_RSRC_UPDATE_EXTENDED (1U << 1) /* data points to io_uring_regbuf_desc[nr] */

enum {
    IO_REGBUF_TYPE_EMPTY = 0,  /* clear the slot */
    IO_REGBUF_TYPE_UADDR = 1,  /* user memory: uaddr, size */
    IO_REGBUF_TYPE_DMABUF = 2, /* whole dma-buf dmabuf_fd, mapped for target_fd */
};

struct io_uring_regbuf_desc {
    __u32 type;
    __u32 flags; /* must be 0 */
    __u64 size;
    __u64 uaddr;
    __s32 dmabuf_fd;
    __s32 target_fd;
    __u64 __resv[6]; /* must be 0 */ /* NOLINT: the kernel uapi spelling and layout */
};
#endif

#ifndef DMABUF_TEST_IOCTL_CREATE
struct dmabuf_test_create {
    __u64 size;
    __u32 flags;
    __s32 fd; /* out */
};
struct dmabuf_test_move {
    __s32 fd;
    __u32 flags;
};
#define DMABUF_TEST_IOCTL_CREATE _IOWR('D', 0x70, struct dmabuf_test_create)
#define DMABUF_TEST_IOCTL_MOVE _IOW('D', 0x71, struct dmabuf_test_move)
#endif
#ifndef DMABUF_TEST_CREATE_REPEAT
/* CREATE: one physically contiguous chunk repeated; the size may exceed memory. */
#define DMABUF_TEST_CREATE_REPEAT (1U << 0)
#define DMABUF_TEST_REPEAT_CHUNK (2U << 20)
#endif
#ifndef DMABUF_TEST_MOVE_NO_RESERVE
/* MOVE without reserving the importers' fence slots: their move_notify must reserve (allocate). */
#define DMABUF_TEST_MOVE_NO_RESERVE (1U << 0)
#endif
#ifndef DMABUF_TEST_CREATE_VRAM
/* CREATE in device memory (the lab's ivshmem BAR); MOVE to system memory (evict) or back. */
#define DMABUF_TEST_CREATE_VRAM (1U << 1)
#define DMABUF_TEST_MOVE_TO_SYSTEM (1U << 1)
#define DMABUF_TEST_MOVE_TO_VRAM (1U << 2)
struct dmabuf_test_info {
    __s32 fd;
    __u32 flags;       /* out: DMABUF_TEST_INFO_VRAM */
    __u64 vram_offset; /* out: where in the BAR, if in VRAM */
};
#define DMABUF_TEST_INFO_VRAM (1U << 0)
#define DMABUF_TEST_IOCTL_INFO _IOWR('D', 0x72, struct dmabuf_test_info)
#endif

#ifdef __cplusplus
static_assert(sizeof(io_uring_regbuf_desc) == 80, "io_uring_regbuf_desc is 80 bytes in the uapi");
#else
_Static_assert(sizeof(struct io_uring_regbuf_desc) == 80,
               "io_uring_regbuf_desc is 80 bytes in the uapi");
#endif

#endif /* DMABUFIO_UAPI_H */
