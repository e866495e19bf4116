/*
 * pcfs.c - a power-cut file system for tests: a FUSE pass-through over a backing
 * directory that remembers, for every file, what its writes since the file's last
 * fsync/fdatasync overwrote. Unmounted normally, it changes nothing; started with
 * --cut, its unmount rolls every file back to what the last sync made durable, as
 * a power cut would leave it (for data: everything synced survives, nothing that
 * was not).
 *
 *   pcfs [--cut] BACKING_DIR MOUNTPOINT [FUSE options, e.g. -f]
 *
 * Model and limits:
 *   - data only: writes, truncates and fallocate are undone; creating, removing
 *     and renaming files and directories are taken as durable at once (as a
 *     journaling file system nearly makes them), so a test sees lost data, never
 *     a lost file;
 *   - a cut drops every unsynced write of a file, none survives partly: the
 *     harshest of the orders a disk may apply them in, but not the torn-sector
 *     cases, which the stores' checksums cover and their own tests inject;
 *   - the undo data lives in memory: the unsynced bytes of a test's workload;
 *   - writes go straight to the backing file (FUSE without writeback caching),
 *     so what the kernel caches above is dropped by the unmount.
 * The owner of the mount must be the only writer of BACKING_DIR.
 */
#define FUSE_USE_VERSION 35
#define _GNU_SOURCE

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <fuse.h>
#include <limits.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <sys/types.h>
#include <unistd.h>

/* What one write (or truncate) replaced, in the order it happened. */
struct undo {
	struct undo *next;
	uint64_t seq; /* order of the writes, across files */
	off_t off;
	size_t len;
	uint8_t data[];
};

/* A file with writes since its last sync. */
struct pfile {
	struct pfile *next;
	char path[PATH_MAX];
	off_t synced_size; /* its size at the last sync (or before its first write since) */
	struct undo *undo;  /* newest first */
	size_t undo_bytes;
};

static struct {
	char backing[PATH_MAX];
	bool cut;
	pthread_mutex_t mu;
	struct pfile *files;
	uint64_t seq;
	uint64_t writes, syncs, bytes_kept;
	unsigned rollback_failures;
} g = { .mu = PTHREAD_MUTEX_INITIALIZER };

/* BACKING_DIR + path (a path too long is cut, and then not found). */
static void full(char *out, const char *path)
{
	size_t a = strlen(g.backing), b = strlen(path);
	if (a + b >= PATH_MAX)
		b = PATH_MAX - 1 - a;
	memcpy(out, g.backing, a);
	memcpy(out + a, path, b);
	out[a + b] = 0;
}

static struct pfile *pfile_find(const char *path, bool create, int fd)
{
	for (struct pfile *f = g.files; f; f = f->next)
		if (strcmp(f->path, path) == 0)
			return f;
	if (!create)
		return NULL;
	struct pfile *f = calloc(1, sizeof(*f));
	struct stat st;
	if (!f)
		return NULL;
	snprintf(f->path, sizeof(f->path), "%s", path);
	f->synced_size = fstat(fd, &st) == 0 ? st.st_size : 0;
	f->next = g.files;
	g.files = f;
	return f;
}

static void pfile_clear(struct pfile *f)
{
	while (f->undo) {
		struct undo *u = f->undo;
		f->undo = u->next;
		free(u);
	}
	f->undo_bytes = 0;
}

static void pfile_drop(const char *path)
{
	for (struct pfile **pp = &g.files; *pp; pp = &(*pp)->next)
		if (strcmp((*pp)->path, path) == 0) {
			struct pfile *f = *pp;
			*pp = f->next;
			pfile_clear(f);
			free(f);
			return;
		}
}

/* Remember what [off, off + len) of the file holds now, as far as the file
 * reaches (bytes past the synced size are cut off by the final truncate anyway,
 * but a sync racing this write may move the synced size past them). Lock held. */
static int remember(int fd, const char *path, off_t off, size_t len)
{
	struct pfile *f = pfile_find(path, true, fd);
	struct stat st;
	if (!f)
		return -ENOMEM;
	if (fstat(fd, &st) < 0)
		return -errno;
	if (off >= st.st_size)
		return 0;
	if ((off_t)len > st.st_size - off)
		len = (size_t)(st.st_size - off);
	struct undo *u = malloc(sizeof(*u) + len);
	if (!u)
		return -ENOMEM;
	ssize_t n = pread(fd, u->data, len, off);
	if (n < 0) {
		int e = errno;
		free(u);
		return -e;
	}
	/* A hole or a file shorter than synced_size reads short: zeros were there. */
	memset(u->data + n, 0, len - (size_t)n);
	u->seq = ++g.seq;
	u->off = off;
	u->len = len;
	u->next = f->undo;
	f->undo = u;
	f->undo_bytes += len;
	g.bytes_kept += len;
	return 0;
}

/* ---- operations -------------------------------------------------------------- */

static void *pc_init(struct fuse_conn_info *conn, struct fuse_config *cfg)
{
	(void)conn;
	cfg->use_ino = 1;
	cfg->kernel_cache = 0;
	cfg->direct_io = 0;
	cfg->attr_timeout = 0;
	cfg->entry_timeout = 0;
	cfg->negative_timeout = 0;
	return NULL;
}

/* With --cut: every file back to its synced state. No operation runs any more. */
static void pc_destroy(void *arg)
{
	(void)arg;
	pthread_mutex_lock(&g.mu);
	size_t files = 0, restored = 0;
	while (g.files) {
		struct pfile *f = g.files;
		g.files = f->next;
		if (g.cut) {
			char p[PATH_MAX];
			full(p, f->path);
			int fd = open(p, O_WRONLY);
			bool ok = fd >= 0;
			for (struct undo *u = f->undo; ok && u; u = u->next) {
				ok = pwrite(fd, u->data, u->len, u->off) == (ssize_t)u->len;
				restored += ok ? u->len : 0;
			}
			ok = ok && ftruncate(fd, f->synced_size) == 0 && fsync(fd) == 0;
			if (fd >= 0)
				close(fd);
			if (ok) {
				files++;
			} else {
				g.rollback_failures++;
				fprintf(stderr, "pcfs: cut: %s could not be rolled back: %s\n",
					f->path, strerror(errno));
			}
		}
		pfile_clear(f);
		free(f);
	}
	pthread_mutex_unlock(&g.mu);
	if (g.cut)
		fprintf(stderr, "pcfs: cut: %zu files rolled back to their last sync (%zu bytes "
			"restored; %llu writes, %llu syncs seen)\n", files, restored,
			(unsigned long long)g.writes, (unsigned long long)g.syncs);
}

static int pc_getattr(const char *path, struct stat *st, struct fuse_file_info *fi)
{
	char p[PATH_MAX];
	int r = fi ? fstat((int)fi->fh, st) : (full(p, path), lstat(p, st));
	return r < 0 ? -errno : 0;
}

static int pc_access(const char *path, int mask)
{
	char p[PATH_MAX];
	full(p, path);
	return access(p, mask) < 0 ? -errno : 0;
}

static int pc_readdir(const char *path, void *buf, fuse_fill_dir_t fill, off_t off,
		      struct fuse_file_info *fi, enum fuse_readdir_flags flags)
{
	(void)off;
	(void)fi;
	(void)flags;
	char p[PATH_MAX];
	full(p, path);
	DIR *d = opendir(p);
	if (!d)
		return -errno;
	for (struct dirent *e; (e = readdir(d));) {
		struct stat st = { .st_ino = e->d_ino, .st_mode = (mode_t)(DTTOIF(e->d_type)) };
		if (fill(buf, e->d_name, &st, 0, 0))
			break;
	}
	closedir(d);
	return 0;
}

static int pc_mkdir(const char *path, mode_t mode)
{
	char p[PATH_MAX];
	full(p, path);
	return mkdir(p, mode) < 0 ? -errno : 0;
}

static int pc_rmdir(const char *path)
{
	char p[PATH_MAX];
	full(p, path);
	return rmdir(p) < 0 ? -errno : 0;
}

static int pc_unlink(const char *path)
{
	char p[PATH_MAX];
	full(p, path);
	if (unlink(p) < 0)
		return -errno;
	pthread_mutex_lock(&g.mu);
	pfile_drop(path);
	pthread_mutex_unlock(&g.mu);
	return 0;
}

static int pc_rename(const char *from, const char *to, unsigned int flags)
{
	char a[PATH_MAX], b[PATH_MAX];
	if (flags)
		return -EINVAL;
	full(a, from);
	full(b, to);
	if (rename(a, b) < 0)
		return -errno;
	pthread_mutex_lock(&g.mu);
	pfile_drop(to);
	/* The file itself, or everything under a directory renamed. */
	size_t fl = strlen(from);
	for (struct pfile *f = g.files; f; f = f->next) {
		if (strcmp(f->path, from) == 0) {
			snprintf(f->path, sizeof(f->path), "%s", to);
		} else if (strncmp(f->path, from, fl) == 0 && f->path[fl] == '/') {
			char moved[PATH_MAX];
			int n = snprintf(moved, sizeof(moved), "%s%s", to, f->path + fl);
			if (n > 0 && n < (int)sizeof(moved))
				memcpy(f->path, moved, (size_t)n + 1);
		}
	}
	pthread_mutex_unlock(&g.mu);
	return 0;
}

static int pc_chmod(const char *path, mode_t mode, struct fuse_file_info *fi)
{
	char p[PATH_MAX];
	int r = fi ? fchmod((int)fi->fh, mode) : (full(p, path), chmod(p, mode));
	return r < 0 ? -errno : 0;
}

static int pc_utimens(const char *path, const struct timespec tv[2], struct fuse_file_info *fi)
{
	char p[PATH_MAX];
	int r = fi ? futimens((int)fi->fh, tv)
		   : (full(p, path), utimensat(AT_FDCWD, p, tv, AT_SYMLINK_NOFOLLOW));
	return r < 0 ? -errno : 0;
}

/* O_DIRECT stays with the kernel's FUSE path; the backing file is opened
 * without it (the undo reads need no alignment). */
static int open_flags(int flags)
{
	return flags & ~(O_DIRECT | O_NOATIME);
}

static int pc_open(const char *path, struct fuse_file_info *fi)
{
	char p[PATH_MAX];
	full(p, path);
	int fl = open_flags(fi->flags);
	/* Writes must be readable first (the undo copy); a truncating open is a
	 * truncate, remembered like one. */
	if ((fl & O_ACCMODE) == O_WRONLY)
		fl = (fl & ~O_ACCMODE) | O_RDWR;
	int fd = open(p, fl & ~O_TRUNC);
	if (fd < 0)
		return -errno;
	if (fl & O_TRUNC) {
		struct stat st;
		pthread_mutex_lock(&g.mu);
		int rc = fstat(fd, &st) < 0 ? -errno : remember(fd, path, 0, (size_t)st.st_size);
		if (!rc && ftruncate(fd, 0) < 0)
			rc = -errno;
		pthread_mutex_unlock(&g.mu);
		if (rc) {
			close(fd);
			return rc;
		}
	}
	fi->fh = (uint64_t)fd;
	return 0;
}

static int pc_create(const char *path, mode_t mode, struct fuse_file_info *fi)
{
	char p[PATH_MAX];
	full(p, path);
	int fd = open(p, (open_flags(fi->flags) & ~O_ACCMODE) | O_RDWR | O_CREAT, mode);
	if (fd < 0)
		return -errno;
	fi->fh = (uint64_t)fd;
	return 0;
}

static int pc_read(const char *path, char *buf, size_t size, off_t off, struct fuse_file_info *fi)
{
	(void)path;
	ssize_t n = pread((int)fi->fh, buf, size, off);
	return n < 0 ? -errno : (int)n;
}

static int pc_write(const char *path, const char *buf, size_t size, off_t off,
		    struct fuse_file_info *fi)
{
	int fd = (int)fi->fh;
	pthread_mutex_lock(&g.mu);
	int rc = remember(fd, path, off, size);
	ssize_t n = rc ? -1 : pwrite(fd, buf, size, off);
	if (!rc && n < 0)
		rc = -errno;
	g.writes++;
	pthread_mutex_unlock(&g.mu);
	return rc ? rc : (int)n;
}

static int pc_truncate(const char *path, off_t size, struct fuse_file_info *fi)
{
	char p[PATH_MAX];
	int fd = fi ? (int)fi->fh : (full(p, path), open(p, O_RDWR));
	if (fd < 0)
		return -errno;
	pthread_mutex_lock(&g.mu);
	struct stat st;
	int rc = fstat(fd, &st) < 0 ? -errno : 0;
	if (!rc && size < st.st_size)
		rc = remember(fd, path, size, (size_t)(st.st_size - size));
	else if (!rc)
		rc = pfile_find(path, true, fd) ? 0 : -ENOMEM;
	if (!rc && ftruncate(fd, size) < 0)
		rc = -errno;
	pthread_mutex_unlock(&g.mu);
	if (!fi)
		close(fd);
	return rc;
}

static int pc_fallocate(const char *path, int mode, off_t off, off_t len,
			struct fuse_file_info *fi)
{
	int fd = (int)fi->fh;
	pthread_mutex_lock(&g.mu);
	/* Only allocation that keeps the data (mode 0 or KEEP_SIZE): the size it may
	 * add is undone by the final truncate. */
	int rc = mode & ~FALLOC_FL_KEEP_SIZE ? -EOPNOTSUPP
					     : (pfile_find(path, true, fd) ? 0 : -ENOMEM);
	if (!rc && fallocate(fd, mode, off, len) < 0)
		rc = -errno;
	pthread_mutex_unlock(&g.mu);
	return rc;
}

/* What a sync covers: the writes done before it started. Writes racing it (the
 * file's other users go on writing) keep their undo copies. */
static int pc_fsync(const char *path, int datasync, struct fuse_file_info *fi)
{
	int fd = (int)fi->fh;
	struct stat st;
	pthread_mutex_lock(&g.mu);
	uint64_t mark = g.seq;
	int rc = fstat(fd, &st) < 0 ? -errno : 0;
	pthread_mutex_unlock(&g.mu);
	if (rc)
		return rc;
	if ((datasync ? fdatasync(fd) : fsync(fd)) < 0)
		return -errno;
	pthread_mutex_lock(&g.mu);
	struct pfile *f = pfile_find(path, false, fd);
	if (f) {
		/* Drop the entries no newer than the mark (the list is newest first). */
		struct undo **pp = &f->undo;
		while (*pp && (*pp)->seq > mark)
			pp = &(*pp)->next;
		while (*pp) {
			struct undo *u = *pp;
			*pp = u->next;
			f->undo_bytes -= u->len;
			free(u);
		}
		f->synced_size = st.st_size;
	}
	g.syncs++;
	pthread_mutex_unlock(&g.mu);
	return 0;
}

static int pc_flush(const char *path, struct fuse_file_info *fi)
{
	(void)path;
	(void)fi;
	return 0;
}

static int pc_release(const char *path, struct fuse_file_info *fi)
{
	(void)path;
	close((int)fi->fh);
	return 0;
}

static int pc_statfs(const char *path, struct statvfs *st)
{
	char p[PATH_MAX];
	full(p, path);
	return statvfs(p, st) < 0 ? -errno : 0;
}

static const struct fuse_operations ops = {
	.init = pc_init,
	.destroy = pc_destroy,
	.getattr = pc_getattr,
	.access = pc_access,
	.readdir = pc_readdir,
	.mkdir = pc_mkdir,
	.rmdir = pc_rmdir,
	.unlink = pc_unlink,
	.rename = pc_rename,
	.chmod = pc_chmod,
	.utimens = pc_utimens,
	.open = pc_open,
	.create = pc_create,
	.read = pc_read,
	.write = pc_write,
	.truncate = pc_truncate,
	.fallocate = pc_fallocate,
	.fsync = pc_fsync,
	.flush = pc_flush,
	.release = pc_release,
	.statfs = pc_statfs,
};

int main(int argc, char **argv)
{
	int a = 1;
	if (a < argc && strcmp(argv[a], "--cut") == 0) {
		g.cut = true;
		a++;
	}
	if (argc - a < 2) {
		fprintf(stderr, "usage: pcfs [--cut] BACKING_DIR MOUNTPOINT [FUSE options]\n");
		return 2;
	}
	if (!realpath(argv[a], g.backing)) {
		fprintf(stderr, "pcfs: %s: %s\n", argv[a], strerror(errno));
		return 1;
	}
	/* fuse_main gets the program name, the mount point and the rest. */
	argv[a] = argv[0];
	int rc = fuse_main(argc - a, argv + a, &ops, NULL);
	/* A cut that could not roll everything back must not pass for one. */
	return rc ? rc : g.rollback_failures ? 3 : 0;
}
