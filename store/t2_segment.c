/*
 * t2_segment.c - the NVMe tier's segment files: DIR/segments/seg-NNNNNNNN.kvs,
 * preallocated with fallocate so appends never allocate blocks, opened O_DIRECT
 * (buffered with fdatasync where the file system refuses O_DIRECT), created
 * durably (file size and directory entry synced before anything in them is
 * indexed), and locked (flock) for as long as this opener or any I/O it started
 * may use them.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <time.h>
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

/*
 * Segment locks. Invariant: no opener writes a byte of a segment file while a
 * write that an earlier opener submitted to it may still reach the disk.
 *
 * The committed index says what is indexed; it says nothing about what a killed
 * process still had on its way to the disk. With io_uring, the O_DIRECT writes
 * of a process killed with SIGKILL are not waited for when it exits: the kernel
 * completes them afterwards, possibly well after the process has been reaped and
 * t2.lock released (a loaded machine takes tens or hundreds of ms). They land
 * where that process had reserved space: past the committed write_off of the
 * segment it was appending to, or in a segment whose blocks have all gone since
 * and that is free now. That is exactly the space the next opener fills first,
 * so without this lock a late write could overwrite a record the next opener
 * has already written, synced and indexed: an acknowledged block that then
 * fails its checksum. (The thread-pool backend is not exposed: its pwrite calls
 * finish before the process can be reaped.)
 *
 * Every I/O request holds a reference to the open file description it was
 * submitted on, and a flock lock belongs to the description: it goes only when
 * the last reference does. So each opener takes LOCK_EX on every segment file
 * it opens, on the description it does its I/O through, and keeps it until it
 * closes the file. A new opener that finds a segment still locked after t2.lock
 * was free waits until the previous opener's last request on it is gone, and
 * only then reads or writes it.
 */
unsigned t2_segment_lock_wait_ms = 60000;

int t2_segment_lock(int fd)
{
	struct timespec start, now, pause = { 0, 1000000 };
	int64_t waited_ms;

	clock_gettime(CLOCK_MONOTONIC, &start);
	for (;;) {
		if (flock(fd, LOCK_EX | LOCK_NB) == 0)
			return 0;
		if (errno == EINTR)
			continue;
		if (errno != EWOULDBLOCK)
			return -ENOLCK;
		clock_gettime(CLOCK_MONOTONIC, &now);
		waited_ms = (int64_t)(now.tv_sec - start.tv_sec) * 1000 +
			    (int64_t)(now.tv_nsec - start.tv_nsec) / 1000000;
		if (waited_ms >= (int64_t)t2_segment_lock_wait_ms)
			return -EBUSY;
		nanosleep(&pause, NULL);
		if (pause.tv_nsec < 16000000L)
			pause.tv_nsec *= 2;
	}
}

int t2_segment_open(const char *dir, uint32_t id, bool *direct)
{
	char path[4096];
	int fd, rc = t2_segment_path(path, sizeof(path), dir, id);

	if (rc < 0)
		return rc;
	fd = open_segment(path, O_RDWR | O_CLOEXEC, direct);
	if (fd < 0) /* -EBUSY and -ENOLCK say the lock failed, nothing else */
		return fd == -EBUSY || fd == -ENOLCK ? -EIO : fd;
	rc = t2_segment_lock(fd);
	if (rc < 0) {
		close(fd);
		return rc;
	}
	return fd;
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
	if (fd < 0) /* as in t2_segment_open */
		return fd == -EBUSY || fd == -ENOLCK ? -EIO : fd;
	/* The file may exist (left by an earlier opener): never write to it while
	 * that opener's I/O may still be in flight. Locked: it is not ours to
	 * remove either. */
	rc = t2_segment_lock(fd);
	if (rc < 0) {
		close(fd);
		return rc;
	}
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
