/*
 * test_io.c - the NVMe tier's I/O engine (store/io.h) on a real O_DIRECT file:
 * every behaviour is checked through both backends (io_uring and the thread
 * pool), plus the choice between them and the io_uring refusal fallback.
 *
 * io_uring cases skip, saying why, where io_uring cannot be set up (or where
 * KVT_IO_URING_DISABLE=1 is set for the whole run). Completions are always waited
 * for through the engine's eventfd, so a missing signal fails the case.
 */
#include <errno.h>
#include <fcntl.h>
#include <linux/capability.h>
#include <poll.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "io.h"
#include "test.h"

#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/lsan_interface.h>
/* The framework ends each case with _exit, which skips LeakSanitizer's exit-time
 * check; run it ourselves so a leak fails the case. */
#define LEAK_CHECK() \
	CHECK_MSG(__lsan_do_recoverable_leak_check() == 0, "memory leaked (report on stderr)")
#else
#define LEAK_CHECK() ((void)0)
#endif

#define BLK 4096u

/* ---- helpers ------------------------------------------------------------------ */

/* Aligned buffers, all freed by buffers_free at the end of a case. */
static void *allocated[1024];
static size_t nallocated;

static void *abuf(size_t len)
{
	void *p = NULL;

	CHECK(nallocated < sizeof(allocated) / sizeof(allocated[0]));
	CHECK_RC(posix_memalign(&p, BLK, len), 0);
	memset(p, 0xA5, len);
	allocated[nallocated++] = p;
	return p;
}

static void buffers_free(void)
{
	while (nallocated > 0)
		free(allocated[--nallocated]);
}

/* Byte i of the file is a function of its offset and a seed, so any misplaced
 * piece of a transfer shows. */
static uint64_t pattern_word(uint64_t word_index, uint64_t seed)
{
	uint64_t z = word_index * 0x9E3779B97F4A7C15ull + seed;

	z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
	z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
	return z ^ (z >> 31);
}

static void pattern_fill(void *buf, size_t len, uint64_t file_off, uint64_t seed)
{
	uint64_t *w = buf;

	for (size_t i = 0; i < len / 8; i++)
		w[i] = pattern_word(file_off / 8 + i, seed);
}

/* CHECKs that buf holds the pattern of [file_off, file_off+len). */
static void pattern_check(const void *buf, size_t len, uint64_t file_off, uint64_t seed)
{
	const uint64_t *w = buf;

	for (size_t i = 0; i < len / 8; i++)
		CHECK_MSG(w[i] == pattern_word(file_off / 8 + i, seed),
			  "wrong data at file offset %llu (request at %llu, %zu bytes)",
			  (unsigned long long)(file_off + i * 8), (unsigned long long)file_off, len);
}

/* An O_DIRECT scratch file. Its name is gone as soon as it is open, so a case
 * that crashes leaves nothing behind. Filesystems that refuse O_DIRECT (tmpfs on
 * older kernels) are skipped for the next candidate, and the log says so. */
static int scratch_open(void)
{
	const char *tmp = getenv("TMPDIR");
	const char *dirs[] = { tmp && *tmp ? tmp : "/tmp", "/var/tmp", "build" };
	void *probe = abuf(BLK);

	for (size_t i = 0; i < sizeof(dirs) / sizeof(dirs[0]); i++) {
		char dir[512], path[600];
		int fd, err;

		snprintf(dir, sizeof(dir), "%s/kvt-test-io-XXXXXX", dirs[i]);
		if (!mkdtemp(dir)) {
			test_log("cannot make a directory in %s: %s", dirs[i], strerror(errno));
			continue;
		}
		snprintf(path, sizeof(path), "%s/data", dir);
		fd = open(path, O_RDWR | O_CREAT | O_EXCL | O_DIRECT | O_CLOEXEC, 0600);
		err = errno;
		unlink(path);
		rmdir(dir);
		if (fd >= 0 && pwrite(fd, probe, BLK, 0) == (ssize_t)BLK && ftruncate(fd, 0) == 0) {
			if (i > 0)
				test_log("using %s for the O_DIRECT file", dirs[i]);
			return fd;
		}
		if (fd >= 0) {
			err = errno;
			close(fd);
		}
		test_log("%s refuses O_DIRECT (%s); trying the next directory", dirs[i],
			 strerror(err));
	}
	test_fail(__FILE__, __LINE__, "no directory accepts O_DIRECT files (tried $TMPDIR or "
				      "/tmp, /var/tmp, build)");
}

static const char *backend_name(enum io_backend b)
{
	return b == IO_BACKEND_URING ? "io_uring" : b == IO_BACKEND_THREADS ? "threads" : "auto";
}

static struct io_engine *engine_open(enum io_backend b, unsigned queue_depth)
{
	struct io_config cfg = { .backend = b, .queue_depth = queue_depth, .threads = 4 };
	struct io_engine *e = NULL;
	char why[256];
	int rc = io_open(&cfg, &e, why, sizeof(why));

	if (rc < 0 && b == IO_BACKEND_URING)
		test_skip("io_uring unavailable here: %s", why);
	CHECK_MSG(rc == 0, "io_open(%s) returned %d: %s", backend_name(b), rc, why);
	CHECK_EQ(io_backend(e), b);
	test_log("engine: %s", why);
	return e;
}

struct tally {
	size_t done;
	size_t failed;
};

static void on_done(struct io_req *r)
{
	struct tally *t = r->arg;

	t->done++;
	if (r->result != 0)
		t->failed++;
}

/* Reap until *count reaches want, waking only on the eventfd. */
static void wait_for(struct io_engine *e, const size_t *count, size_t want)
{
	while (*count < want) {
		struct pollfd p = { .fd = io_eventfd(e), .events = POLLIN };
		int n = poll(&p, 1, 10000);

		CHECK_MSG(n != 0, "no completion signalled within 10 s (%zu of %zu done, %zu in flight)",
			  *count, want, io_inflight(e));
		CHECK_MSG(n > 0 || errno == EINTR, "poll: %s", strerror(errno));
		io_reap(e);
	}
}

static void req_init(struct io_req *r, int fd, bool write, void *buf, size_t len, uint64_t off,
		     struct tally *t)
{
	memset(r, 0, sizeof(*r));
	r->fd = fd;
	r->write = write;
	r->buf = buf;
	r->len = len;
	r->off = off;
	r->result = 1; /* the engine must overwrite it */
	r->done = on_done;
	r->arg = t;
}

/* Submit one request and wait for it; returns its result. */
static int do_one(struct io_engine *e, int fd, bool write, void *buf, size_t len, uint64_t off)
{
	struct tally t = { 0, 0 };
	struct io_req r, *rp = &r;

	req_init(&r, fd, write, buf, len, off, &t);
	io_submit(e, &rp, 1);
	wait_for(e, &t.done, 1);
	CHECK_EQ(io_inflight(e), 0);
	return r.result;
}

/* Write n blocks of len bytes at 0, len, 2*len... with the pattern, through e. */
static void write_blocks(struct io_engine *e, int fd, size_t n, size_t len, uint64_t seed)
{
	for (size_t i = 0; i < n; i++) {
		void *b = abuf(len);

		pattern_fill(b, len, i * len, seed);
		CHECK_RC(do_one(e, fd, true, b, len, i * len), 0);
	}
}

/* Read the file with plain pread, independently of the engine, and check it. */
static void verify_file(int fd, uint64_t off, size_t len, uint64_t seed)
{
	char *b = abuf(len);

	CHECK_EQ(pread(fd, b, len, (off_t)off), (ssize_t)len);
	pattern_check(b, len, off, seed);
}

static uint64_t retries_of(const struct io_engine *e)
{
	struct io_stats s;

	io_get_stats(e, &s);
	return s.retries;
}

/* ---- cases, each run for both backends ------------------------------------------- */

/* 200 requests of 4..64 KiB at scattered offsets, submitted in uneven batches
 * out of file order; every byte read back matches, through the engine and
 * through plain pread; the statistics add up. */
static void write_then_read_back_many(enum io_backend b)
{
	enum { N = 200 };
	struct io_engine *e = engine_open(b, 32);
	int fd = scratch_open();
	static struct io_req w[N], r[N];
	struct io_req *batch[N];
	uint64_t off[N], total = 0;
	size_t len[N];
	struct tally tw = { 0, 0 }, tr = { 0, 0 };
	struct io_stats st;
	const uint64_t seed = 11;

	for (size_t i = 0; i < N; i++) {
		len[i] = (1 + (i * 5) % 16) * BLK;
		off[i] = total + ((i % 3) * BLK); /* holes between some requests */
		total = off[i] + len[i];
	}
	for (size_t sent = 0, k = 0; sent < N; k++) {
		size_t nb = 0, want = 1 + (k * 7) % 17;

		while (nb < want && sent < N) {
			size_t i = (sent++ * 73) % N; /* 73 is prime to N: a permutation */
			void *buf = abuf(len[i]);

			pattern_fill(buf, len[i], off[i], seed);
			req_init(&w[i], fd, true, buf, len[i], off[i], &tw);
			batch[nb++] = &w[i];
		}
		io_submit(e, batch, nb);
	}
	wait_for(e, &tw.done, N);
	CHECK_EQ(tw.failed, 0);
	for (size_t i = 0; i < N; i++) {
		CHECK_RC(w[i].result, 0);
		req_init(&r[i], fd, false, abuf(len[i]), len[i], off[i], &tr);
		batch[i] = &r[N - 1 - i];
	}
	io_submit(e, batch, N);
	CHECK_EQ(io_inflight(e), N);
	wait_for(e, &tr.done, N);
	CHECK_EQ(tr.failed, 0);
	for (size_t i = 0; i < N; i++) {
		CHECK_RC(r[i].result, 0);
		pattern_check(r[i].buf, len[i], off[i], seed);
		verify_file(fd, off[i], len[i], seed);
	}
	io_get_stats(e, &st);
	CHECK_EQ(st.writes, N);
	CHECK_EQ(st.reads, N);
	CHECK_EQ(st.errors, 0);
	CHECK_EQ(st.inflight, 0);
	CHECK_EQ(st.queue_depth, 32);
	{
		uint64_t bytes = 0;

		for (size_t i = 0; i < N; i++)
			bytes += len[i];
		CHECK_EQ(st.write_bytes, bytes);
		CHECK_EQ(st.read_bytes, bytes);
	}
	CHECK_EQ(io_reap(e), 0); /* nothing left */
	io_close(e);
	close(fd);
	buffers_free();
}

/* Queue depth 4, 100 requests in one call: all stay accounted for, all complete,
 * the data is right. */
static void overflow_beyond_queue_depth(enum io_backend b)
{
	enum { N = 100, LEN = 16 * 1024 };
	struct io_engine *e = engine_open(b, 4);
	int fd = scratch_open();
	static struct io_req req[N];
	struct io_req *p[N];
	struct tally t = { 0, 0 };
	struct io_stats st;

	for (size_t i = 0; i < N; i++) {
		void *buf = abuf(LEN);

		pattern_fill(buf, LEN, i * LEN, 3);
		req_init(&req[i], fd, true, buf, LEN, i * LEN, &t);
		p[i] = &req[i];
	}
	io_submit(e, p, N);
	io_get_stats(e, &st);
	CHECK_EQ(st.inflight, N);
	CHECK_EQ(io_inflight(e), N);
	wait_for(e, &t.done, N);
	CHECK_EQ(t.failed, 0);
	CHECK_EQ(io_inflight(e), 0);
	for (size_t i = 0; i < N; i++) {
		req_init(&req[i], fd, false, abuf(LEN), LEN, i * LEN, &t);
		p[i] = &req[i];
	}
	t.done = 0;
	io_submit(e, p, N);
	wait_for(e, &t.done, N);
	CHECK_EQ(t.failed, 0);
	for (size_t i = 0; i < N; i++)
		pattern_check(req[i].buf, LEN, i * LEN, 3);
	io_close(e);
	close(fd);
	buffers_free();
}

/* Buffers inside registered ranges go through READ_FIXED/WRITE_FIXED (counted),
 * others and one straddling a range's end through plain READ/WRITE; a second
 * registration adds to the first; all data is right either way. */
static void registered_and_plain_buffers(enum io_backend b)
{
	enum { LEN = 64 * 1024, N = 16 };
	const size_t region_len = 3u << 20, first = 2u << 20;
	struct io_engine *e = engine_open(b, 16);
	int fd = scratch_open();
	char *region = abuf(region_len);
	struct io_stats st;
	int rc;

	rc = io_buffers_register(e, region, first);
	if (rc == -ENOMEM)
		test_skip("RLIMIT_MEMLOCK is too small to register 2 MiB (the engine returned "
			  "-ENOMEM, as it should)");
	CHECK_RC(rc, 0);
	CHECK_RC(io_buffers_register(e, NULL, 4096), -EINVAL);
	/* N requests from the registered range, N from plain buffers. */
	for (size_t i = 0; i < N; i++) {
		char *fixed = region + i * LEN;
		char *plain = abuf(LEN);

		pattern_fill(fixed, LEN, i * LEN, 5);
		pattern_fill(plain, LEN, (N + i) * LEN, 5);
		CHECK_RC(do_one(e, fd, true, fixed, LEN, i * LEN), 0);
		CHECK_RC(do_one(e, fd, true, plain, LEN, (N + i) * LEN), 0);
	}
	/* A buffer that starts inside the range and ends outside it. */
	pattern_fill(region + first - LEN / 2, LEN, 2 * N * LEN, 5);
	CHECK_RC(do_one(e, fd, true, region + first - LEN / 2, LEN, 2 * N * LEN), 0);
	io_get_stats(e, &st);
	CHECK_EQ(st.fixed_ios, b == IO_BACKEND_URING ? N : 0);

	/* Read everything back into registered memory (poisoned first). */
	memset(region, 0x5A, first);
	for (size_t i = 0; i < 2 * N + 1; i++) {
		CHECK_RC(do_one(e, fd, false, region + (i % N) * LEN, LEN, i * LEN), 0);
		pattern_check(region + (i % N) * LEN, LEN, i * LEN, 5);
	}
	io_get_stats(e, &st);
	CHECK_EQ(st.fixed_ios, b == IO_BACKEND_URING ? 3 * N + 1 : 0);

	/* A second range: requests inside it are fixed too. */
	CHECK_RC(io_buffers_register(e, region + first, region_len - first), 0);
	memset(region + first, 0, LEN);
	CHECK_RC(do_one(e, fd, false, region + first, LEN, 0), 0);
	pattern_check(region + first, LEN, 0, 5);
	io_get_stats(e, &st);
	CHECK_EQ(st.fixed_ios, b == IO_BACKEND_URING ? 3 * N + 2 : 0);
	CHECK_EQ(st.errors, 0);
	io_close(e);
	close(fd);
	buffers_free();
}

/* Drop CAP_IPC_LOCK from the effective set (if held), so RLIMIT_MEMLOCK applies. */
static void drop_ipc_lock(void)
{
	struct __user_cap_header_struct h = { _LINUX_CAPABILITY_VERSION_3, 0 };
	struct __user_cap_data_struct d[_LINUX_CAPABILITY_U32S_3];

	if (syscall(SYS_capget, &h, d) != 0)
		return;
	d[CAP_TO_INDEX(CAP_IPC_LOCK)].effective &= ~CAP_TO_MASK(CAP_IPC_LOCK);
	CHECK_MSG(syscall(SYS_capset, &h, d) == 0, "capset: %s", strerror(errno));
}

/* With a 64 KiB RLIMIT_MEMLOCK and no CAP_IPC_LOCK, registering 1 MiB fails with
 * -ENOMEM (io_uring) and leaves nothing behind; I/O from that memory still works. */
static void register_refused_by_memlock(enum io_backend b)
{
	const size_t len = 1u << 20;
	struct rlimit lim = { 64 * 1024, 64 * 1024 };
	struct io_engine *e;
	struct io_stats st;
	int fd = scratch_open();
	char *buf = abuf(len);
	int rc;

	drop_ipc_lock();
	CHECK_MSG(setrlimit(RLIMIT_MEMLOCK, &lim) == 0, "setrlimit: %s", strerror(errno));
	e = engine_open(b, 8);
	rc = io_buffers_register(e, buf, len);
	CHECK_RC(rc, b == IO_BACKEND_URING ? -ENOMEM : 0);
	pattern_fill(buf, len, 0, 9);
	CHECK_RC(do_one(e, fd, true, buf, len, 0), 0);
	memset(buf, 0, len);
	CHECK_RC(do_one(e, fd, false, buf, len, 0), 0);
	pattern_check(buf, len, 0, 9);
	io_get_stats(e, &st);
	CHECK_EQ(st.fixed_ios, 0);
	io_close(e);
	close(fd);
	buffers_free();
}

/* skip 3 on writes, once: reads in between pass untouched, exactly the 4th write
 * fails with -EIO, the ones after pass; the failure is not retried. */
static void fault_eio_once_hits_the_nth_write(enum io_backend b)
{
	struct io_engine *e = engine_open(b, 8);
	int fd = scratch_open();
	struct io_fault f = { .on_write = true, .skip = 3, .err = -EIO };
	struct io_stats st;
	char *rbuf = abuf(BLK);

	write_blocks(e, fd, 8, BLK, 1);
	io_fault_set(e, &f);
	for (size_t i = 0; i < 8; i++) {
		void *w = abuf(BLK);

		CHECK_RC(do_one(e, fd, false, rbuf, BLK, i * BLK), 0);
		pattern_fill(w, BLK, i * BLK, 2);
		CHECK_RC(do_one(e, fd, true, w, BLK, i * BLK), i == 3 ? -EIO : 0);
	}
	io_get_stats(e, &st);
	CHECK_EQ(st.errors, 1);
	CHECK_EQ(st.retries, 0);
	io_close(e);
	close(fd);
	buffers_free();
}

/* skip 2 on reads, always: of 10 concurrent reads exactly 2 succeed; after
 * io_fault_clear all succeed again and the data is right. */
static void fault_eio_always_after_skip(enum io_backend b)
{
	enum { N = 10 };
	struct io_engine *e = engine_open(b, 32);
	int fd = scratch_open();
	struct io_fault f = { .on_read = true, .skip = 2, .always = true, .err = -EIO };
	static struct io_req r[N];
	struct io_req *p[N];
	struct tally t = { 0, 0 };
	size_t eio = 0;

	write_blocks(e, fd, N, 2 * BLK, 4);
	io_fault_set(e, &f);
	for (size_t i = 0; i < N; i++) {
		req_init(&r[i], fd, false, abuf(2 * BLK), 2 * BLK, i * 2 * BLK, &t);
		p[i] = &r[i];
	}
	io_submit(e, p, N);
	wait_for(e, &t.done, N);
	for (size_t i = 0; i < N; i++) {
		CHECK_MSG(r[i].result == 0 || r[i].result == -EIO, "result %d", r[i].result);
		eio += r[i].result == -EIO;
	}
	CHECK_EQ(eio, N - 2);
	CHECK_EQ(retries_of(e), 0);
	/* Writes are not affected by a read fault. */
	CHECK_RC(do_one(e, fd, true, r[0].buf, 2 * BLK, 100 * BLK), 0);

	io_fault_clear(e);
	t.done = 0;
	for (size_t i = 0; i < N; i++) {
		req_init(&r[i], fd, false, abuf(2 * BLK), 2 * BLK, i * 2 * BLK, &t);
		p[i] = &r[i];
	}
	io_submit(e, p, N);
	wait_for(e, &t.done, N);
	for (size_t i = 0; i < N; i++) {
		CHECK_RC(r[i].result, 0);
		pattern_check(r[i].buf, 2 * BLK, i * 2 * BLK, 4);
	}
	io_close(e);
	close(fd);
	buffers_free();
}

/* -ENOSPC once on writes: exactly one of 5 concurrent writes reports it, unretried. */
static void fault_enospc_reported(enum io_backend b)
{
	enum { N = 5 };
	struct io_engine *e = engine_open(b, 8);
	int fd = scratch_open();
	struct io_fault f = { .on_write = true, .err = ENOSPC }; /* positive: taken as -ENOSPC */
	static struct io_req w[N];
	struct io_req *p[N];
	struct tally t = { 0, 0 };
	size_t nospc = 0;
	struct io_stats st;

	io_fault_set(e, &f);
	for (size_t i = 0; i < N; i++) {
		req_init(&w[i], fd, true, abuf(BLK), BLK, i * BLK, &t);
		p[i] = &w[i];
	}
	io_submit(e, p, N);
	wait_for(e, &t.done, N);
	for (size_t i = 0; i < N; i++) {
		CHECK_MSG(w[i].result == 0 || w[i].result == -ENOSPC, "result %d", w[i].result);
		nospc += w[i].result == -ENOSPC;
	}
	CHECK_EQ(nospc, 1);
	io_get_stats(e, &st);
	CHECK_EQ(st.errors, 1);
	CHECK_EQ(st.retries, 0);
	CHECK_EQ(st.writes, N);
	CHECK_EQ(st.write_bytes, (N - 1) * BLK);
	io_close(e);
	close(fd);
	buffers_free();
}

/* How many retries io.h's short-transfer rule takes to finish len bytes:
 * each attempt over 4 KiB is cut to half, rounded down to 4 KiB. */
static unsigned short_retries(size_t len)
{
	unsigned n = 0;

	while (len > BLK) {
		len -= (len / 2) & ~(size_t)(BLK - 1);
		n++;
	}
	return n;
}

static const size_t short_lens[] = { 64 * 1024, 20 * 1024, 4096, 8192, 256 * 1024, 12 * 1024 };
#define NSHORT (sizeof(short_lens) / sizeof(short_lens[0]))

/* Every read is reported short (always): the engine fetches the remainders until
 * each request is whole, with exactly the retries the rule implies. */
static void short_reads_completed_by_engine(enum io_backend b)
{
	struct io_engine *e = engine_open(b, 8);
	int fd = scratch_open();
	struct io_fault f = { .on_read = true, .always = true, .short_io = true };
	static struct io_req r[NSHORT];
	struct io_req *p[NSHORT];
	struct tally t = { 0, 0 };
	uint64_t off = 0, base, expect = 0;

	for (size_t i = 0; i < NSHORT; i++) {
		void *w = abuf(short_lens[i]);

		pattern_fill(w, short_lens[i], off, 6);
		CHECK_RC(do_one(e, fd, true, w, short_lens[i], off), 0);
		off += short_lens[i];
	}
	base = retries_of(e);
	CHECK_EQ(base, 0);
	io_fault_set(e, &f);
	off = 0;
	for (size_t i = 0; i < NSHORT; i++) {
		req_init(&r[i], fd, false, abuf(short_lens[i]), short_lens[i], off, &t);
		p[i] = &r[i];
		off += short_lens[i];
		expect += short_retries(short_lens[i]);
	}
	io_submit(e, p, NSHORT);
	wait_for(e, &t.done, NSHORT);
	CHECK_EQ(t.failed, 0);
	for (size_t i = 0; i < NSHORT; i++)
		pattern_check(r[i].buf, r[i].len, r[i].off, 6);
	CHECK_EQ(retries_of(e), expect);
	CHECK(expect >= 10);
	io_close(e);
	close(fd);
	buffers_free();
}

/* Every write is reported short (always): the remainders are written by the
 * engine; plain pread finds every byte in place. */
static void short_writes_completed_by_engine(enum io_backend b)
{
	struct io_engine *e = engine_open(b, 8);
	int fd = scratch_open();
	struct io_fault f = { .on_write = true, .always = true, .short_io = true };
	static struct io_req w[NSHORT];
	struct io_req *p[NSHORT];
	struct tally t = { 0, 0 };
	uint64_t off = 0, expect = 0;

	io_fault_set(e, &f);
	for (size_t i = 0; i < NSHORT; i++) {
		void *buf = abuf(short_lens[i]);

		pattern_fill(buf, short_lens[i], off, 8);
		req_init(&w[i], fd, true, buf, short_lens[i], off, &t);
		p[i] = &w[i];
		off += short_lens[i];
		expect += short_retries(short_lens[i]);
	}
	io_submit(e, p, NSHORT);
	wait_for(e, &t.done, NSHORT);
	CHECK_EQ(t.failed, 0);
	CHECK_EQ(retries_of(e), expect);
	for (size_t i = 0; i < NSHORT; i++)
		verify_file(fd, w[i].off, w[i].len, 8);
	io_close(e);
	close(fd);
	buffers_free();
}

/* -EAGAIN and -EINTR once: retried, the requests succeed. -EAGAIN always: each
 * request is retried IO_TRANSIENT_RETRY_MAX times, then fails with -EAGAIN
 * instead of spinning forever. */
static void eagain_and_eintr_retried(enum io_backend b)
{
	struct io_engine *e = engine_open(b, 8);
	int fd = scratch_open();
	struct io_fault again = { .on_read = true, .skip = 1, .err = -EAGAIN };
	struct io_fault intr = { .on_write = true, .err = -EINTR };
	struct io_fault stuck = { .on_write = true, .always = true, .err = -EAGAIN };
	char *buf = abuf(8 * BLK);

	write_blocks(e, fd, 4, 8 * BLK, 12);
	io_fault_set(e, &again);
	for (size_t i = 0; i < 3; i++) {
		memset(buf, 0, 8 * BLK);
		CHECK_RC(do_one(e, fd, false, buf, 8 * BLK, i * 8 * BLK), 0);
		pattern_check(buf, 8 * BLK, i * 8 * BLK, 12);
	}
	CHECK_EQ(retries_of(e), 1);

	io_fault_set(e, &intr);
	pattern_fill(buf, 8 * BLK, 3 * 8 * BLK, 13);
	CHECK_RC(do_one(e, fd, true, buf, 8 * BLK, 3 * 8 * BLK), 0);
	CHECK_EQ(retries_of(e), 2);
	verify_file(fd, 3 * 8 * BLK, 8 * BLK, 13);

	io_fault_set(e, &stuck);
	CHECK_RC(do_one(e, fd, true, buf, BLK, 0), -EAGAIN);
	CHECK_RC(do_one(e, fd, true, buf, BLK, 0), -EAGAIN);
	CHECK_EQ(retries_of(e), 2 + 2 * (uint64_t)IO_TRANSIENT_RETRY_MAX);
	io_fault_clear(e);
	CHECK_RC(do_one(e, fd, true, buf, BLK, 0), 0);
	io_close(e);
	close(fd);
	buffers_free();
}

/* Callbacks that submit: 4 chains each writing its next block from its callback,
 * one callback submitting a batch larger than the queue depth, and a nested
 * io_reap that must do nothing. */
enum { CHAINS = 4, STEPS = 40, BURST = 20, CLEN = 8192 };

struct chain_ctx {
	struct io_engine *e;
	int fd;
	struct io_req req[CHAINS];
	unsigned step[CHAINS];
	struct io_req burst[BURST];
	size_t burst_done, chain_done, errors;
	bool burst_sent;
	size_t nested_reaped;
};

static uint64_t chain_off(unsigned chain, unsigned step)
{
	return ((uint64_t)step * CHAINS + chain) * CLEN;
}

static void on_burst_done(struct io_req *r)
{
	struct chain_ctx *c = r->arg;

	c->burst_done++;
	if (r->result)
		c->errors++;
}

static void on_chain_done(struct io_req *r)
{
	struct chain_ctx *c = r->arg;
	unsigned k = (unsigned)(r - c->req);

	if (r->result)
		c->errors++;
	c->nested_reaped += io_reap(c->e);
	if (!c->burst_sent) {
		struct io_req *p[BURST];

		c->burst_sent = true;
		for (size_t i = 0; i < BURST; i++) {
			struct io_req *b = &c->burst[i];

			memset(b, 0, sizeof(*b));
			b->fd = c->fd;
			b->write = true;
			b->len = CLEN;
			b->buf = abuf(CLEN);
			b->off = chain_off(0, STEPS) + i * CLEN;
			pattern_fill(b->buf, CLEN, b->off, 21);
			b->done = on_burst_done;
			b->arg = c;
			p[i] = b;
		}
		io_submit(c->e, p, BURST);
	}
	if (++c->step[k] == STEPS) {
		c->chain_done++;
		return;
	}
	r->off = chain_off(k, c->step[k]);
	r->buf = abuf(CLEN);
	pattern_fill(r->buf, CLEN, r->off, 21);
	io_submit(c->e, &r, 1);
}

static void callback_submits_more(enum io_backend b)
{
	static struct chain_ctx c;
	struct io_req *p[CHAINS];
	const size_t total = CHAINS * STEPS + BURST;

	memset(&c, 0, sizeof(c));
	c.e = engine_open(b, 8);
	c.fd = scratch_open();
	for (unsigned k = 0; k < CHAINS; k++) {
		struct io_req *r = &c.req[k];

		r->fd = c.fd;
		r->write = true;
		r->len = CLEN;
		r->off = chain_off(k, 0);
		r->buf = abuf(CLEN);
		pattern_fill(r->buf, CLEN, r->off, 21);
		r->done = on_chain_done;
		r->arg = &c;
		p[k] = r;
	}
	io_submit(c.e, p, CHAINS);
	while (c.chain_done < CHAINS || c.burst_done < BURST) {
		struct pollfd pf = { .fd = io_eventfd(c.e), .events = POLLIN };

		CHECK_MSG(poll(&pf, 1, 10000) != 0, "stalled: %zu chains, %zu of the burst done",
			  c.chain_done, c.burst_done);
		io_reap(c.e);
	}
	CHECK_EQ(c.errors, 0);
	CHECK_EQ(c.nested_reaped, 0);
	CHECK_EQ(io_inflight(c.e), 0);
	verify_file(c.fd, 0, total * CLEN, 21);
	io_close(c.e);
	close(c.fd);
	buffers_free();
}

/* io_close right after submitting 64 writes at queue depth 8, without reaping:
 * it waits for them all, runs every callback, and the data is on disk. */
static void close_waits_for_inflight(enum io_backend b)
{
	enum { N = 64, LEN = 128 * 1024 };
	struct io_engine *e = engine_open(b, 8);
	int fd = scratch_open();
	static struct io_req w[N];
	struct io_req *p[N];
	struct tally t = { 0, 0 };

	for (size_t i = 0; i < N; i++) {
		void *buf = abuf(LEN);

		pattern_fill(buf, LEN, i * LEN, 31);
		req_init(&w[i], fd, true, buf, LEN, i * LEN, &t);
		p[i] = &w[i];
	}
	io_submit(e, p, N);
	io_close(e);
	CHECK_EQ(t.done, N);
	CHECK_EQ(t.failed, 0);
	verify_file(fd, 0, N * LEN, 31);
	close(fd);
	buffers_free();
}

/* Requests the kernel (or the engine) must refuse, each with its own error, and a
 * zero-length one that completes through the eventfd like any other. */
static void odd_requests_fail_cleanly(enum io_backend b)
{
	struct io_engine *e = engine_open(b, 8);
	int fd = scratch_open();
	char *buf = abuf(4 * BLK);
	struct io_stats st;
	uint64_t before;

	write_blocks(e, fd, 2, BLK, 40); /* the file is 8 KiB long */
	CHECK_RC(do_one(e, fd, false, buf, 0, 0), 0);
	CHECK_RC(do_one(e, -1, false, buf, BLK, 0), -EBADF);
	CHECK_RC(do_one(e, fd, true, buf + 1, BLK, 0), -EINVAL); /* O_DIRECT alignment */
	/* Past end of file: 8 KiB come back, the rest cannot; a retry is made first. */
	before = retries_of(e);
	CHECK_RC(do_one(e, fd, false, buf, 4 * BLK, 0), -EIO);
	CHECK_EQ(retries_of(e) - before, 1);
	CHECK_RC(do_one(e, fd, false, buf, BLK, 1 << 20), -EIO);
	io_get_stats(e, &st);
	CHECK_EQ(st.errors, 4);
	CHECK_EQ(st.inflight, 0);
	io_close(e);
	close(fd);
	buffers_free();
}

struct opener {
	enum io_backend backend;
	struct io_engine *e;
	int rc;
	char why[256];
};

static void *open_elsewhere(void *arg)
{
	struct opener *o = arg;
	struct io_config cfg = { .backend = o->backend, .queue_depth = 8 };

	o->rc = io_open(&cfg, &o->e, o->why, sizeof(o->why));
	return NULL;
}

/* io_open on one thread, everything else on another (the daemon opens at start-up
 * and hands the engine to its loop): with SINGLE_ISSUER the ring must bind to the
 * thread that submits, not to the one that opened it. */
static void opened_on_another_thread(enum io_backend b)
{
	struct opener o = { .backend = b };
	pthread_t t;
	int fd;
	void *buf;

	CHECK_RC(pthread_create(&t, NULL, open_elsewhere, &o), 0);
	CHECK_RC(pthread_join(t, NULL), 0);
	if (o.rc < 0 && b == IO_BACKEND_URING)
		test_skip("io_uring unavailable here: %s", o.why);
	CHECK_RC(o.rc, 0);
	CHECK_EQ(io_backend(o.e), b);
	fd = scratch_open();
	buf = abuf(2 * BLK);
	CHECK_RC(io_buffers_register(o.e, buf, 2 * BLK), 0);
	pattern_fill(buf, 2 * BLK, 0, 60);
	CHECK_RC(do_one(o.e, fd, true, buf, 2 * BLK, 0), 0);
	memset(buf, 0, 2 * BLK);
	CHECK_RC(do_one(o.e, fd, false, buf, 2 * BLK, 0), 0);
	pattern_check(buf, 2 * BLK, 0, 60);
	io_close(o.e);
	close(fd);
	buffers_free();
}

#define BOTH(fn)                              \
	TEST(uring_##fn)                      \
	{                                     \
		fn(IO_BACKEND_URING);         \
		LEAK_CHECK();                 \
	}                                     \
	TEST(threads_##fn)                    \
	{                                     \
		fn(IO_BACKEND_THREADS);       \
		LEAK_CHECK();                 \
	}

BOTH(write_then_read_back_many)
BOTH(overflow_beyond_queue_depth)
BOTH(registered_and_plain_buffers)
BOTH(register_refused_by_memlock)
BOTH(fault_eio_once_hits_the_nth_write)
BOTH(fault_eio_always_after_skip)
BOTH(fault_enospc_reported)
BOTH(short_reads_completed_by_engine)
BOTH(short_writes_completed_by_engine)
BOTH(eagain_and_eintr_retried)
BOTH(callback_submits_more)
BOTH(close_waits_for_inflight)
BOTH(odd_requests_fail_cleanly)
BOTH(opened_on_another_thread)

/* ---- choosing the backend ------------------------------------------------------ */

/* AUTO picks io_uring wherever io_uring itself opens. */
TEST(auto_prefers_uring)
{
	struct io_config uring = { .backend = IO_BACKEND_URING };
	struct io_config any = { .backend = IO_BACKEND_AUTO };
	struct io_engine *e = NULL;
	char why[256];

	if (io_open(&uring, &e, why, sizeof(why)) < 0)
		test_skip("io_uring unavailable here: %s", why);
	CHECK(strstr(why, "io_uring (queue depth 64") == why);
	io_close(e);
	CHECK_RC(io_open(&any, &e, why, sizeof(why)), 0);
	CHECK_EQ(io_backend(e), IO_BACKEND_URING);
	io_close(e);
	LEAK_CHECK();
}

/* KVT_IO_URING_DISABLE=1 stands for a kernel that refuses io_uring with EPERM:
 * AUTO falls back to the thread pool and says why, and the pool works; URING
 * fails with -EPERM. */
TEST(auto_falls_back_when_uring_refused)
{
	struct io_config any = { .backend = IO_BACKEND_AUTO, .queue_depth = 16 };
	struct io_config uring = { .backend = IO_BACKEND_URING };
	struct io_engine *e = NULL;
	char why[256];
	int fd;
	void *buf;

	CHECK(setenv("KVT_IO_URING_DISABLE", "1", 1) == 0);
	CHECK_RC(io_open(&any, &e, why, sizeof(why)), 0);
	test_log("AUTO: %s", why);
	CHECK_EQ(io_backend(e), IO_BACKEND_THREADS);
	CHECK_MSG(strstr(why, "thread pool (4 threads, queue depth 16)") == why, "why: %s", why);
	CHECK_MSG(strstr(why, "io_uring refused") && strstr(why, strerror(EPERM)) &&
			  strstr(why, "KVT_IO_URING_DISABLE=1"),
		  "why: %s", why);
	fd = scratch_open();
	buf = abuf(BLK);
	pattern_fill(buf, BLK, 0, 50);
	CHECK_RC(do_one(e, fd, true, buf, BLK, 0), 0);
	verify_file(fd, 0, BLK, 50);
	io_close(e);
	close(fd);

	e = NULL;
	CHECK_RC(io_open(&uring, &e, why, sizeof(why)), -EPERM);
	CHECK(e == NULL);
	CHECK_MSG(strstr(why, "io_uring refused"), "why: %s", why);
	buffers_free();
	LEAK_CHECK();
}

TEST(threads_forced_says_configuration)
{
	struct io_config cfg = { .backend = IO_BACKEND_THREADS, .queue_depth = 2, .threads = 8 };
	struct io_engine *e = NULL;
	char why[256];

	CHECK_RC(io_open(&cfg, &e, why, sizeof(why)), 0);
	CHECK_EQ(io_backend(e), IO_BACKEND_THREADS);
	/* No more workers than requests that can be in flight. */
	CHECK_MSG(strcmp(why, "thread pool (2 threads, queue depth 2): chosen in the "
			      "configuration") == 0,
		  "why: %s", why);
	io_close(e);
	LEAK_CHECK();
}

TEST(open_checks_its_configuration)
{
	struct io_config deep = { .queue_depth = IO_QUEUE_DEPTH_MAX + 1 };
	struct io_config many = { .threads = IO_THREADS_MAX + 1 };
	struct io_config odd = { .backend = (enum io_backend)7 };
	struct io_engine *e = NULL;
	struct io_stats st;

	CHECK_RC(io_open(&deep, &e, NULL, 0), -EINVAL);
	CHECK_RC(io_open(&many, &e, NULL, 0), -EINVAL);
	CHECK_RC(io_open(&odd, &e, NULL, 0), -EINVAL);
	CHECK(e == NULL);
	CHECK_RC(io_open(NULL, NULL, NULL, 0), -EINVAL);
	CHECK_RC(io_open(NULL, &e, NULL, 0), 0);
	io_get_stats(e, &st);
	CHECK_EQ(st.queue_depth, 64);
	CHECK_EQ(st.inflight, 0);
	CHECK_EQ(io_reap(e), 0);
	io_close(e);
	io_close(NULL);
	LEAK_CHECK();
}

TEST_MAIN(uring_write_then_read_back_many, threads_write_then_read_back_many,
	  uring_overflow_beyond_queue_depth, threads_overflow_beyond_queue_depth,
	  uring_registered_and_plain_buffers, threads_registered_and_plain_buffers,
	  uring_register_refused_by_memlock, threads_register_refused_by_memlock,
	  uring_fault_eio_once_hits_the_nth_write, threads_fault_eio_once_hits_the_nth_write,
	  uring_fault_eio_always_after_skip, threads_fault_eio_always_after_skip,
	  uring_fault_enospc_reported, threads_fault_enospc_reported,
	  uring_short_reads_completed_by_engine, threads_short_reads_completed_by_engine,
	  uring_short_writes_completed_by_engine, threads_short_writes_completed_by_engine,
	  uring_eagain_and_eintr_retried, threads_eagain_and_eintr_retried,
	  uring_callback_submits_more, threads_callback_submits_more,
	  uring_close_waits_for_inflight, threads_close_waits_for_inflight,
	  uring_odd_requests_fail_cleanly, threads_odd_requests_fail_cleanly,
	  uring_opened_on_another_thread, threads_opened_on_another_thread,
	  auto_prefers_uring, auto_falls_back_when_uring_refused,
	  threads_forced_says_configuration, open_checks_its_configuration)
