/*
 * t2_segment.c - the NVMe tier's segment files: DIR/segments/seg-NNNNNNNN.kvs,
 * preallocated with fallocate so appends never allocate blocks, opened O_DIRECT
 * (buffered with fdatasync where the file system refuses O_DIRECT), created
 * durably (file size and directory entry synced before anything in them is
 * indexed).
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "t2_internal.h"

int t2_segment_path(char *buf, size_t cap, const char *dir, uint32_t id)
{
	int n = snprintf(buf, cap, "%s/segments/seg-%08u.kvs", dir, id);

	return n < 0 || (size_t)n >= cap ? -ENAMETOOLONG : 0;
}

static bool direct_io_disabled(void)
{
	const char *v = getenv(T2_DIRECT_IO_DISABLE_ENV);

	return v && v[0] == '1';
}

/* Open path with O_DIRECT if *direct, falling back to buffered I/O when the file
 * system refuses O_DIRECT (EINVAL); *direct says what was used. */
static int open_segment(const char *path, int flags, bool *direct)
{
	int fd;

	if (*direct) {
		if (direct_io_disabled()) {
			fd = -1;
			errno = EINVAL;
		} else {
			fd = open(path, flags | O_DIRECT, 0600);
		}
		if (fd >= 0 || errno != EINVAL)
			return fd >= 0 ? fd : -errno;
		*direct = false;
	}
	fd = open(path, flags, 0600);
	return fd >= 0 ? fd : -errno;
}

int t2_segment_open(const char *dir, uint32_t id, bool *direct)
{
	char path[4096];
	int rc = t2_segment_path(path, sizeof(path), dir, id);

	if (rc < 0)
		return rc;
	return open_segment(path, O_RDWR | O_CLOEXEC, direct);
}

static int sync_dir(const char *dir)
{
	char path[4096];
	int fd, rc = 0;

	if (snprintf(path, sizeof(path), "%s/segments", dir) >= (int)sizeof(path))
		return -ENAMETOOLONG;
	fd = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (fd < 0)
		return -errno;
	if (fsync(fd) < 0 && errno != EINVAL && errno != EBADF)
		rc = -errno;
	close(fd);
	return rc;
}

int t2_segment_create(const char *dir, uint32_t id, uint64_t size, bool *direct)
{
	char path[4096];
	int fd, rc = t2_segment_path(path, sizeof(path), dir, id);

	if (rc < 0)
		return rc;
	fd = open_segment(path, O_RDWR | O_CREAT | O_CLOEXEC, direct);
	if (fd < 0)
		return fd;
	/* Preallocate: appends then never allocate, and a full file system shows up
	 * here, once, rather than as a failed write later. */
	rc = fallocate(fd, 0, 0, (off_t)size);
	if (rc < 0) {
		rc = -errno;
		/* Some file systems cannot preallocate at all: then extend the file
		 * (sparse) and let writes allocate. */
		if (rc == -EOPNOTSUPP)
			rc = ftruncate(fd, (off_t)size) < 0 ? -errno : 0;
		if (rc == -EDQUOT || rc == -EFBIG)
			rc = -ENOSPC;
		if (rc < 0)
			goto out_unlink;
	}
	if (fsync(fd) < 0) {
		rc = -errno;
		goto out_unlink;
	}
	rc = sync_dir(dir);
	if (rc < 0)
		goto out_unlink;
	return fd;

out_unlink:
	close(fd);
	unlink(path);
	return rc;
}

int t2_segment_prepare(int fd, uint64_t size)
{
	struct stat st;

	if (fstat(fd, &st) < 0)
		return -errno;
	if ((uint64_t)st.st_size >= size)
		return 0;
	if (fallocate(fd, 0, 0, (off_t)size) == 0)
		return fsync(fd) < 0 ? -errno : 0;
	if (errno == EOPNOTSUPP)
		return ftruncate(fd, (off_t)size) < 0 ? -errno : 0;
	return errno == EDQUOT || errno == EFBIG || errno == ENOSPC ? -ENOSPC : -errno;
}

int t2_segment_scan(const char *dir, void (*fn)(uint32_t id, void *arg), void *arg)
{
	char path[4096];
	struct dirent *de;
	DIR *d;

	if (snprintf(path, sizeof(path), "%s/segments", dir) >= (int)sizeof(path))
		return -ENAMETOOLONG;
	d = opendir(path);
	if (!d)
		return -errno;
	while ((de = readdir(d)) != NULL) {
		unsigned id;
		char tail[8];

		/* Exactly seg-NNNNNNNN.kvs: anything else is not ours. */
		if (strlen(de->d_name) != 16 ||
		    sscanf(de->d_name, "seg-%8u.%3s", &id, tail) != 2 || strcmp(tail, "kvs") != 0)
			continue;
		fn((uint32_t)id, arg);
	}
	closedir(d);
	return 0;
}
