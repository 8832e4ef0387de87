/* Reads LEN bytes at OFFSET of an NVMe device into a dma-buf registered as an io_uring fixed
 * buffer, and prints an FNV-1a hash of what arrived. Usage: read_to_dmabuf DEV [LEN [OFFSET]]
 * (DEV e.g. /dev/nvme0n1; LEN a multiple of the page size, default 1 MiB; OFFSET default 0). */
#define _GNU_SOURCE
#include <dmabufio/dmabufio.h>
#include <fcntl.h>
#include <linux/udmabuf.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <unistd.h>

int main(int argc, char** argv) {
    const char* why = NULL;
    const size_t len = argc > 2 ? strtoull(argv[2], NULL, 0) : 1 << 20;
    const int dev = argc > 1 ? open(argv[1], O_RDWR | O_DIRECT) : -1;    /* O_DIRECT: needed */
    const int memfd = memfd_create("read_to_dmabuf", MFD_ALLOW_SEALING); /* the dma-buf's pages */
    struct udmabuf_create create = {.memfd = memfd, .size = len};
    struct io_uring ring;
    struct io_uring_cqe* cqe;
    if (dmabufio_probe(&why) != 1) return fprintf(stderr, "%s\n", why), 1;
    if (dev < 0 || ftruncate(memfd, len) || fcntl(memfd, F_ADD_SEALS, F_SEAL_SHRINK))
        return perror(argc > 1 ? argv[1] : "usage: read_to_dmabuf DEV [LEN [OFFSET]]"), 1;
    const int dmabuf = ioctl(open("/dev/udmabuf", O_RDWR), UDMABUF_CREATE, &create);
    if (dmabuf < 0 || io_uring_queue_init(4, &ring, 0) ||
        io_uring_register_buffers_sparse(&ring, 1))
        return perror("udmabuf or io_uring"), 1;
    int ret = dmabufio_register_dmabuf(&ring, 0, dmabuf, dev, 0); /* slot 0, mapped for dev */
    if (ret < 0) return fprintf(stderr, "register the dma-buf: %s\n", strerror(-ret)), 1;
    /* addr is the byte offset into the dma-buf (0), not a pointer */
    io_uring_prep_read_fixed(io_uring_get_sqe(&ring), dev, NULL, len,
                             argc > 3 ? strtoull(argv[3], NULL, 0) : 0, 0);
    if ((ret = io_uring_submit_and_wait(&ring, 1)) < 0 || (ret = io_uring_peek_cqe(&ring, &cqe)))
        return fprintf(stderr, "io_uring: %s\n", strerror(-ret)), 1;
    if (cqe->res != (int)len) return fprintf(stderr, "read: %d\n", cqe->res), 1;
    const unsigned char* p = mmap(NULL, len, PROT_READ, MAP_SHARED, memfd, 0);
    unsigned long long h = 0xcbf29ce484222325ULL; /* FNV-1a 64 */
    for (size_t i = 0; i < len; i++) h = (h ^ p[i]) * 0x100000001b3ULL;
    printf("read %zu bytes into the dma-buf; fnv1a64 %016llx\n", len, h);
    return 0;
}
