/* Deletes NAME relative to an open directory, as fts-based tools do: unlinkat(open(DIR), NAME, 0). Built static,
 * so that it runs in a container whose root has nothing but busybox. Usage: dirfd_unlink DIR NAME */
#include <fcntl.h>
#include <stdio.h>
#include <unistd.h>

int main(int argc, char **argv)
{
	if (argc != 3) {
		fprintf(stderr, "usage: %s DIR NAME\n", argv[0]);
		return 2;
	}
	int fd = open(argv[1], O_RDONLY | O_DIRECTORY);
	if (fd < 0 || unlinkat(fd, argv[2], 0) != 0) {
		perror(argv[2]);
		return 1;
	}
	return 0;
}
