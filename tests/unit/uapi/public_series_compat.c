/*
 * A program written against the public series' uapi (v3-v7) builds against the patched kernel
 * headers (build/usr/include) unchanged: struct io_uring_rsrc_update2 keeps its field `resv`
 * (where IORING_RSRC_UPDATE_EXTENDED is set), and io_uring_regbuf_desc, the flag and the
 * IO_REGBUF_TYPE_* values keep their layout and values. Compiled by CTest (uapi-compat).
 */
#include <linux/io_uring.h>
#include <stddef.h>

_Static_assert(IORING_RSRC_UPDATE_EXTENDED == (1U << 1), "IORING_RSRC_UPDATE_EXTENDED");
_Static_assert(IO_REGBUF_TYPE_EMPTY == 0, "IO_REGBUF_TYPE_EMPTY");
_Static_assert(IO_REGBUF_TYPE_UADDR == 1, "IO_REGBUF_TYPE_UADDR");
_Static_assert(IO_REGBUF_TYPE_DMABUF == 2, "IO_REGBUF_TYPE_DMABUF");
_Static_assert(sizeof(struct io_uring_regbuf_desc) == 80, "io_uring_regbuf_desc size");
_Static_assert(offsetof(struct io_uring_regbuf_desc, flags) == 4, "flags");
_Static_assert(offsetof(struct io_uring_regbuf_desc, size) == 8, "size");
_Static_assert(offsetof(struct io_uring_regbuf_desc, uaddr) == 16, "uaddr");
_Static_assert(offsetof(struct io_uring_regbuf_desc, dmabuf_fd) == 24, "dmabuf_fd");
_Static_assert(offsetof(struct io_uring_regbuf_desc, target_fd) == 28, "target_fd");
_Static_assert(offsetof(struct io_uring_regbuf_desc, __resv) == 32, "__resv");
_Static_assert(offsetof(struct io_uring_rsrc_update2, resv) == 4, "io_uring_rsrc_update2.resv");

int main(void)
{
	struct io_uring_regbuf_desc desc = { .type = IO_REGBUF_TYPE_DMABUF, .dmabuf_fd = 3,
					     .target_fd = 4 };
	struct io_uring_rsrc_update2 up = { 0 };

	up.resv = IORING_RSRC_UPDATE_EXTENDED;
	up.data = (unsigned long)&desc;
	up.nr = 1;
	return up.resv == IORING_RSRC_UPDATE_EXTENDED ? 0 : 1;
}
