/*
 * test_t2_util.h - what the NVMe-tier tests share: a data directory that is removed
 * even when a case fails, the owner loop (poll both eventfds, reap, tick), block
 * contents derived from a key, and synchronous wrappers around append and read that
 * verify every byte. Included by tests/unit/test_t2*.c only.
 */
#ifndef KVT_TEST_T2_UTIL_H
#define KVT_TEST_T2_UTIL_H

#include <errno.h>
#include <ftw.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "codec.h"
#include "io.h"
#include "t2.h"
#include "test.h"

#define MIB ((uint64_t)1 << 20)
#define SEG64 (64 * MIB)

/* ---- data directory ------------------------------------------------------------------ */

static int rm_one(const char *path, const struct stat *sb, int flag, struct FTW *ftw)
{
	(void)sb;
	(void)flag;
	(void)ftw;
	remove(path);
	return 0;
}

static __attribute__((unused)) void t2t_rmrf(const char *dir)
{
	nftw(dir, rm_one, 16, FTW_DEPTH | FTW_PHYS);
}

/* Where test stores live: $KVT_T2_TEST_DIR, else /var/tmp (a real disk file system
 * here, so O_DIRECT and fallocate behave as in production). */
static __attribute__((unused)) void t2t_mkdtemp(char *buf, size_t cap)
{
	const char *base = getenv("KVT_T2_TEST_DIR");

	snprintf(buf, cap, "%s/kvt-t2-XXXXXX", base && base[0] ? base : "/var/tmp");
	CHECK_MSG(mkdtemp(buf) != NULL, "mkdtemp %s: %s", buf, strerror(errno));
}

/* LeakSanitizer's own check runs at exit(), which the test framework's _exit
 * skips: call it by hand where it is linked in (ASan builds). */
extern int __lsan_do_recoverable_leak_check(void) __attribute__((weak));

static __attribute__((unused)) void t2t_leak_check(void)
{
	if (__lsan_do_recoverable_leak_check && __lsan_do_recoverable_leak_check())
		test_fail(__FILE__, __LINE__, "memory leaked (LeakSanitizer report above)");
}

/*
 * Run body(dir, backend) in a child with a fresh data directory and remove the
 * directory afterwards whatever happened; the case fails or skips as the body did
 * (its reason reaches the runner through the inherited log pipe).
 */
static __attribute__((unused)) void t2t_run(void (*body)(const char *dir, enum io_backend b),
					     enum io_backend backend)
{
	char dir[256];
	pid_t pid;
	int st = 0;

	t2t_mkdtemp(dir, sizeof(dir));
	pid = fork();
	CHECK(pid >= 0);
	if (pid == 0) {
		body(dir, backend);
		t2t_leak_check();
		_exit(0);
	}
	while (waitpid(pid, &st, 0) < 0 && errno == EINTR)
		;
	t2t_rmrf(dir);
	if (WIFEXITED(st))
		_exit(WEXITSTATUS(st));
	test_fail(__FILE__, __LINE__, "test body died: %s", strsignal(WTERMSIG(st)));
}

/* Both I/O backends for one body. */
#define T2T_BOTH(name)                                                                     \
	TEST(name##_uring)                                                                 \
	{                                                                                  \
		t2t_run(name, IO_BACKEND_URING);                                           \
	}                                                                                  \
	TEST(name##_threads)                                                               \
	{                                                                                  \
		t2t_run(name, IO_BACKEND_THREADS);                                         \
	}

/* ---- engine and store ---------------------------------------------------------------- */

static __attribute__((unused)) struct io_engine *t2t_io(enum io_backend b)
{
	struct io_config c = { b, 64, 4 };
	struct io_engine *io = NULL;
	char why[256] = "";
	int rc = io_open(&c, &io, why, sizeof(why));

	if (rc != 0 && b == IO_BACKEND_URING && (rc == -EPERM || rc == -ENOSYS || rc == -EOPNOTSUPP))
		test_skip("io_uring unavailable here: %s", why);
	CHECK_MSG(rc == 0, "io_open: %d %s", rc, why);
	return io;
}

static __attribute__((unused)) struct t2_config t2t_config(const char *dir, struct io_engine *io,
							   uint64_t nseg)
{
	struct t2_config c = { dir, nseg * SEG64, SEG64, 0, 2, io };

	return c;
}

static __attribute__((unused)) struct t2 *t2t_open(const struct t2_config *c,
						   struct t2_open_report *rep)
{
	struct t2 *t = NULL;
	char err[512] = "";
	int rc = t2_open(c, &t, rep, err, sizeof(err));

	CHECK_MSG(rc == 0, "t2_open(%s): %d (%s) %s", c->dir, rc, test_errname(rc), err);
	return t;
}

/* One turn of the owner loop: wait up to ms for either eventfd, reap both, tick. */
static __attribute__((unused)) void t2t_pump(struct io_engine *io, struct t2 *t, int ms)
{
	struct pollfd p[2] = { { io_eventfd(io), POLLIN, 0 }, { t2_eventfd(t), POLLIN, 0 } };

	(void)poll(p, 2, ms);
	io_reap(io);
	t2_reap(t);
	t2_tick(t);
}

struct t2t_done {
	bool done;
	int status;
};

static __attribute__((unused)) void t2t_done_cb(void *arg, int status)
{
	struct t2t_done *d = arg;

	d->done = true;
	d->status = status;
}

/* Pump until d is done (60 s at most). */
static __attribute__((unused)) void t2t_wait(struct io_engine *io, struct t2 *t, struct t2t_done *d)
{
	for (int i = 0; i < 60000 && !d->done; i++)
		t2t_pump(io, t, 1);
	CHECK_MSG(d->done, "operation did not complete");
}

/* Pump until nothing of t is in flight. */
static __attribute__((unused)) void t2t_drain(struct io_engine *io, struct t2 *t)
{
	for (int i = 0; i < 60000 && t2_inflight(t) > 0; i++)
		t2t_pump(io, t, 1);
	CHECK_MSG(t2_inflight(t) == 0, "t2 still has %zu in flight", t2_inflight(t));
}

/* ---- contents ------------------------------------------------------------------------ */

static __attribute__((unused)) struct t1_key t2t_key(uint32_t tenant, uint64_t n)
{
	struct t1_key k;

	memset(&k, 0, sizeof(k));
	k.tenant = tenant;
	for (int i = 0; i < 8; i++) {
		k.key.b[i] = (uint8_t)(n >> (8 * i));
		k.key.b[8 + i] = (uint8_t)((n * 0x9e3779b97f4a7c15ull) >> (8 * i));
	}
	k.key.b[15] |= 1; /* never the zero key */
	return k;
}

static __attribute__((unused)) uint64_t t2t_seed(const struct t1_key *k)
{
	uint64_t s = k->tenant * 0x100000001b3ull;

	for (int i = 0; i < 16; i++)
		s = (s ^ k->key.b[i]) * 0x100000001b3ull;
	return s | 1;
}

static inline uint64_t t2t_rand(uint64_t *s)
{
	*s ^= *s << 13;
	*s ^= *s >> 7;
	*s ^= *s << 17;
	return *s;
}

/* Bytes of a block from a seed: a mix of random pages, bf16-like values (compress
 * with the byte split) and zero runs, so every codec has something to do. */
static __attribute__((unused)) void t2t_fill(uint8_t *p, uint64_t len, uint64_t seed)
{
	uint64_t s = seed;

	for (uint64_t off = 0; off < len; off += 4096) {
		uint64_t n = len - off < 4096 ? len - off : 4096;
		unsigned kind = (unsigned)(t2t_rand(&s) % 3);

		for (uint64_t i = 0; i < n; i += 8) {
			uint64_t r = t2t_rand(&s), v;

			if (kind == 0)
				v = r;
			else if (kind == 1) /* four bf16 values near 1.0 */
				v = (r & 0x007f007f007f007full) | 0x3f003f003f003f00ull;
			else
				v = 0;
			for (uint64_t b = 0; b < 8 && i + b < n; b++)
				p[off + i + b] = (uint8_t)(v >> (8 * b));
		}
	}
}

static __attribute__((unused)) uint8_t *t2t_alloc(size_t len)
{
	void *p = NULL;

	CHECK(posix_memalign(&p, T2_ALIGN, len ? len : T2_ALIGN) == 0);
	return p;
}

static __attribute__((unused)) kvt_block_desc t2t_desc(uint64_t len)
{
	kvt_block_desc d;

	memset(&d, 0, sizeof(d));
	d.dtype = KVT_DTYPE_BF16;
	d.layout = 7;
	d.layers = 32;
	d.tokens = (uint32_t)(len / 1024 + 1);
	return d;
}

/* A record of key's block (len bytes from its seed), codec as asked. *rec_len set. */
static __attribute__((unused)) uint8_t *t2t_record(struct codec_ctx *ctx, enum codec_id codec,
						   const struct t1_key *key, uint64_t len,
						   size_t *rec_len)
{
	uint8_t *data = t2t_alloc(len), *rec = t2t_alloc(t2_record_bound(len));
	struct t2_span sp = { data, len };
	kvt_block_desc d = t2t_desc(len);
	int rc;

	t2t_fill(data, len, t2t_seed(key));
	rc = t2_record_encode(ctx, codec, key, &d, &sp, 1, len, rec, t2_record_bound(len), rec_len);
	CHECK_MSG(rc == 0, "encode: %d", rc);
	free(data);
	return rec;
}

/* Append and wait; returns the done status. */
static __attribute__((unused)) int t2t_append(struct io_engine *io, struct t2 *t,
					      struct codec_ctx *ctx, enum codec_id codec,
					      const struct t1_key *key, const kvt_key *parent,
					      uint64_t len)
{
	size_t rl;
	uint8_t *rec = t2t_record(ctx, codec, key, len, &rl);
	kvt_block_desc d = t2t_desc(len);
	struct t2t_done dn = { false, 0 };

	t2_append(t, key, parent, rec, rl, len, &d, (uint8_t)codec, t2t_done_cb, &dn);
	t2t_wait(io, t, &dn);
	free(rec);
	return dn.status;
}

/*
 * Read key and check it: 0 if it read back byte-identical to its seed's contents
 * (len bytes), -ENOENT for a clean miss, or the error of the read, parse or decode
 * (which calls t2_corrupt as the daemon would). Anything served that differs from
 * what was stored fails the case on the spot.
 */
static __attribute__((unused)) int t2t_verify(struct io_engine *io, struct t2 *t,
					      struct codec_ctx *ctx, const struct t1_key *key,
					      uint64_t want_len)
{
	struct t2_info info;
	struct t2t_done dn = { false, 0 };
	struct t2_frame frames[256];
	size_t nf = 0;
	uint64_t len = 0;
	kvt_block_desc d;
	uint8_t *rec, *got, *want;
	int rc = t2_lookup(t, key, &info);

	if (rc)
		return rc;
	rec = t2t_alloc(info.record_len);
	t2_read(t, key, rec, info.record_len, t2t_done_cb, &dn);
	t2t_wait(io, t, &dn);
	if (dn.status) {
		free(rec);
		return dn.status;
	}
	rc = t2_record_parse(rec, info.record_len, key, frames, 256, &nf, &len, &d);
	if (rc) {
		t2_corrupt(t, key);
		free(rec);
		return rc;
	}
	CHECK_EQ(len, info.len);
	if (want_len != UINT64_MAX)
		CHECK_EQ(len, want_len);
	got = t2t_alloc(len);
	want = t2t_alloc(len);
	t2t_fill(want, len, t2t_seed(key));
	for (size_t i = 0; i < nf && rc == 0; i++) {
		struct t2_span sp = { got, len };

		rc = t2_frame_decode(ctx, rec, &frames[i], &sp, 1);
	}
	if (rc) {
		t2_corrupt(t, key);
	} else {
		kvt_block_desc wd = t2t_desc(len);

		CHECK_MSG(memcmp(got, want, len) == 0, "key %llu: bytes served differ from those stored",
			  (unsigned long long)key->key.b[0]);
		CHECK(d.dtype == wd.dtype && d.layout == wd.layout && d.layers == wd.layers &&
		      d.tokens == wd.tokens);
	}
	free(got);
	free(want);
	free(rec);
	return rc;
}

#endif /* KVT_TEST_T2_UTIL_H */
