// SPDX-License-Identifier: Apache-2.0
/*
 * uring: one IORING_OP_UNLINKAT or IORING_OP_RENAMEAT through a raw io_uring (no liburing), so tests can
 * check which attach modes see deletions that make no unlink or rename syscall.
 *
 *   uring unlink PATH          uring rename OLD NEW
 *
 * Prints the completion's result (0 or -errno) and exits 0; exits 3 when the kernel offers no io_uring.
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <linux/io_uring.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>

int main(int argc, char **argv)
{
	struct io_uring_params p;
	int rename = argc == 4 && !strcmp(argv[1], "rename");

	if (!rename && !(argc == 3 && !strcmp(argv[1], "unlink"))) {
		fprintf(stderr, "usage: uring unlink PATH | uring rename OLD NEW\n");
		return 2;
	}
	memset(&p, 0, sizeof(p));
	int fd = (int)syscall(__NR_io_uring_setup, 4, &p);
	if (fd < 0) {
		perror("io_uring_setup");
		return 3;
	}
	size_t sq_size = p.sq_off.array + p.sq_entries * sizeof(unsigned);
	size_t cq_size = p.cq_off.cqes + p.cq_entries * sizeof(struct io_uring_cqe);
	char *sq = mmap(NULL, sq_size, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, fd, IORING_OFF_SQ_RING);
	char *cq = mmap(NULL, cq_size, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, fd, IORING_OFF_CQ_RING);
	struct io_uring_sqe *sqes = mmap(NULL, p.sq_entries * sizeof(struct io_uring_sqe), PROT_READ | PROT_WRITE,
					 MAP_SHARED | MAP_POPULATE, fd, IORING_OFF_SQES);
	if (sq == MAP_FAILED || cq == MAP_FAILED || sqes == MAP_FAILED) {
		perror("mmap");
		return 3;
	}
	unsigned *tail = (unsigned *)(sq + p.sq_off.tail), mask = *(unsigned *)(sq + p.sq_off.ring_mask);
	unsigned *array = (unsigned *)(sq + p.sq_off.array), t = *tail;
	struct io_uring_sqe *sqe = &sqes[t & mask];

	memset(sqe, 0, sizeof(*sqe));
	sqe->fd = AT_FDCWD;
	sqe->addr = (uint64_t)(uintptr_t)argv[2];
	if (rename) {
		sqe->opcode = IORING_OP_RENAMEAT;
		sqe->len = (uint32_t)AT_FDCWD;	/* the new path's dirfd */
		sqe->addr2 = (uint64_t)(uintptr_t)argv[3];
	} else {
		sqe->opcode = IORING_OP_UNLINKAT;
	}
	array[t & mask] = t & mask;
	__atomic_store_n(tail, t + 1, __ATOMIC_RELEASE);
	if (syscall(__NR_io_uring_enter, fd, 1, 1, IORING_ENTER_GETEVENTS, NULL, 0) < 0) {
		perror("io_uring_enter");
		return 3;
	}
	unsigned head = __atomic_load_n((unsigned *)(cq + p.cq_off.head), __ATOMIC_ACQUIRE);
	struct io_uring_cqe *cqes = (struct io_uring_cqe *)(cq + p.cq_off.cqes);
	printf("%d\n", cqes[head & *(unsigned *)(cq + p.cq_off.ring_mask)].res);
	return 0;
}
