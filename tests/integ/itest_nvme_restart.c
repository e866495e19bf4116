/*
 * itest_nvme_restart.c - what the NVMe tier (T2) keeps across the daemon's life,
 * through a real kvtierd on both I/O backends: a warm restart after SIGTERM
 * (blocks found through the index, byte-identical), kill -9 (every block STATS
 * counted as durable survives; anything else is a clean miss or identical), a
 * kill -9 loop during heavy writes, corrupted segment files (flipped bits, a
 * zeroed page, truncation: misses, never wrong bytes), DELETE reaching NVMe,
 * tenants on NVMe, and the flush of admitted blocks at a clean shutdown.
 *
 * Env: KVT_NVME_KILL_LOOPS=N runs N kill -9 cycles per backend (default 24),
 * KVT_NVME_KILL_SEED=S replays a run (the seed is logged).
 */
#include <dirent.h>
#include <fcntl.h>
#include <grp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "blocks.h"
#include "harness.h"
#include "kvtier.h"
#include "test.h"

#define KiB (1024ull)
#define MiB (1024ull * 1024)

/* The host tier T2_CONF configures. */
#define HOST_CAP (64 * MiB)

/* ---- helpers ---------------------------------------------------------------- */

/* Start a daemon on T2_CONF with backend and extra (keeping its directory for
 * restarts) and connect to it. */
static kvt_conn *start_t2(struct kvtd *d, const char *backend, const char *extra)
{
	char conf[512];
	conf_for(conf, sizeof(conf), backend, extra);
	kvtd_start(d, conf);
	d->keep_dir = true;
	return kvtd_connect(d, 30000);
}

/* The start-up line of a warm restart, with the block count it found. */
static void check_warm(struct kvtd *d, uint64_t *blocks)
{
	const char *log = kvtd_log_text(d);
	const char *w = strstr(log, "warm restart: ");
	CHECK_MSG(w, "the daemon's log does not say \"warm restart\"");
	unsigned long long n = 0;
	CHECK_MSG(sscanf(w, "warm restart: %llu blocks indexed", &n) == 1,
		  "no block count after \"warm restart\": %.80s", w);
	test_log("log: %.*s", (int)strcspn(w, "\n"), w);
	*blocks = n;
}

/* ---- restart after SIGTERM ------------------------------------------------------- */

/*
 * Write-through, SIGTERM, restart on the same directory: the log says "warm
 * restart" with the block count, LOOKUP says NVMe for every block before any GET
 * (RAM is empty), and every block comes back byte-identical.
 */
static void restart_warm(const char *backend)
{
	enum { N = 32 };
	const uint32_t ns = 10;
	struct kvtd d;
	kvt_conn *c = start_t2(&d, backend, "nvme_write = through\nnvme_codec = bf16\n");
	kvt_region *src = kvtd_region(c, 4 * MiB);
	uint64_t total = 0;
	for (uint64_t i = 0; i < N; i++) {
		size_t len = blk_len(ns, i, 1 * MiB, 4 * MiB);
		CHECK_RC(put_blk(c, src, 0, ns, i, len, NULL), 0);
		total += len;
	}
	CHECK(total > HOST_CAP);
	kvt_region_destroy(src);
	kvt_conn_close(c);
	/* No waiting for the writes: a clean stop finishes them. */
	kvtd_stop_clean(&d);

	kvtd_restart(&d);
	uint64_t warm = 0;
	check_warm(&d, &warm);
	CHECK_EQ(warm, N);
	c = kvtd_connect(&d, 30000);
	CHECK_EQ(kvtd_stat(c, "t2.blocks"), N);
	CHECK_EQ(kvtd_stat(c, "t1.blocks"), 0);
	for (uint64_t i = 0; i < N; i++)
		CHECK_MSG(lookup_tier(c, blk_key(ns, i)) == KVT_TIER_NVME,
			  "block %llu: LOOKUP says %d after a restart", (unsigned long long)i,
			  lookup_tier(c, blk_key(ns, i)));
	kvt_region *dst = kvtd_region(c, 4 * MiB);
	uint8_t *want = malloc(4 * MiB);
	CHECK(want);
	get_blks(c, dst, ns, 0, N, 1 * MiB, 4 * MiB, want);
	CHECK_EQ(kvtd_stat(c, "t2.checksum_failures"), 0);
	finish(&d, c, dst, want);
}

TEST(uring_restart_after_sigterm_is_warm) { restart_warm("uring"); }
TEST(threads_restart_after_sigterm_is_warm) { restart_warm("threads"); }

/* ---- kill -9 ------------------------------------------------------------------------- */

/*
 * N blocks that STATS counted (t2.blocks) before the kill must all be there,
 * byte-identical; M more written just before the kill are each a clean miss or
 * identical, and the index holds exactly the blocks that read back.
 */
static void kill9_durable(const char *backend)
{
	enum { N = 16, M = 16 };
	const uint32_t ns = 11;
	struct kvtd d;
	kvt_conn *c = start_t2(&d, backend, "nvme_write = through\nnvme_codec = zstd\n");
	kvt_region *src = kvtd_region(c, 4 * MiB);
	put_blks(c, src, ns, 0, N, 1 * MiB, 4 * MiB);
	wait_stat_eq(c, "t2.blocks", N);
	put_blks(c, src, ns, N, N + M, 1 * MiB, 4 * MiB);
	uint64_t before = kvtd_stat(c, "t2.blocks");
	kvtd_kill(&d);
	kvt_region_destroy(src);
	kvt_conn_close(c);
	test_log("t2.blocks before the kill: %llu", (unsigned long long)before);

	kvtd_restart(&d);
	uint64_t warm = 0;
	check_warm(&d, &warm);
	c = kvtd_connect(&d, 30000);
	uint64_t blocks = kvtd_stat(c, "t2.blocks");
	CHECK_EQ(blocks, warm);
	CHECK_MSG(blocks >= before, "%llu blocks after the restart, %llu were durable before",
		  (unsigned long long)blocks, (unsigned long long)before);
	kvt_region *dst = kvtd_region(c, 4 * MiB);
	uint8_t *want = malloc(4 * MiB);
	CHECK(want);
	for (uint64_t i = 0; i < N; i++) {
		CHECK_EQ(lookup_tier(c, blk_key(ns, i)), KVT_TIER_NVME);
		CHECK_RC(get_blk(c, dst, ns, i, blk_len(ns, i, 1 * MiB, 4 * MiB), want), 0);
	}
	uint64_t present = 0;
	for (uint64_t i = N; i < N + M; i++) {
		int st = get_blk(c, dst, ns, i, blk_len(ns, i, 1 * MiB, 4 * MiB), want);
		CHECK_MSG(st == 0 || st == KVT_ENOENT, "block %llu: GET %s", (unsigned long long)i,
			  test_errname(st));
		present += st == 0;
	}
	test_log("%llu of the %d blocks written just before the kill survived",
		 (unsigned long long)present, M);
	CHECK_EQ(blocks, N + present);
	CHECK_EQ(kvtd_stat(c, "t2.checksum_failures"), 0);
	finish(&d, c, dst, want);
}

TEST(uring_kill9_keeps_every_durable_block) { kill9_durable("uring"); }
TEST(threads_kill9_keeps_every_durable_block) { kill9_durable("threads"); }

/* ---- kill -9 loop ------------------------------------------------------------------ */

enum kstate {
	K_DURABLE, /* counted by t2.blocks: must read back identical after any crash */
	K_MAYBE,   /* written, or its write cut off by a kill: identical or a miss */
	K_GONE,    /* deleted and the delete counted: must be a miss */
};

struct kent {
	uint64_t n;
	enum kstate st;
};

#define NH_MAX 24 /* PUTs in flight when the daemon is killed, at most */

struct kill_loop {
	uint32_t ns;
	struct kent *keys;
	size_t nkeys, cap;
	uint64_t next;
	uint64_t rng;
	/* The pipelined PUTs' items: the library fills them in as replies that
	 * arrived before the kill are read, until the connection is closed. */
	kvt_put_item items[NH_MAX];
	kvt_ticket tk[NH_MAX];
};

static uint64_t loop_rand(struct kill_loop *l)
{
	l->rng = mix64(l->rng);
	return l->rng;
}

static void loop_add(struct kill_loop *l, uint64_t n, enum kstate st)
{
	if (l->nkeys == l->cap) {
		l->cap = l->cap ? 2 * l->cap : 64;
		l->keys = realloc(l->keys, l->cap * sizeof(*l->keys));
		CHECK(l->keys);
	}
	l->keys[l->nkeys++] = (struct kent){ n, st };
}

static size_t loop_len(const struct kill_loop *l, uint64_t n)
{
	return blk_len(l->ns, n, 64 * KiB, 1 * MiB);
}

static size_t loop_count(const struct kill_loop *l, enum kstate st)
{
	size_t k = 0;
	for (size_t i = 0; i < l->nkeys; i++)
		k += l->keys[i].st == st;
	return k;
}

/*
 * After a restart: durable blocks are on NVMe and identical, deleted ones are
 * misses, the others identical or misses; the index holds exactly the blocks
 * that read back, and at least as many as STATS counted before the kill.
 * Maybe-blocks are settled: those present join the durable ones, the others
 * are gone.
 */
static void loop_verify(struct kill_loop *l, kvt_conn *c, kvt_region *dst, uint8_t *want,
			uint64_t before_kill, unsigned cycle)
{
	uint64_t blocks = kvtd_stat(c, "t2.blocks"), present = 0, survived = 0, maybe = 0;
	CHECK_MSG(blocks >= before_kill,
		  "cycle %u: %llu blocks after the restart, %llu were counted before the kill",
		  cycle, (unsigned long long)blocks, (unsigned long long)before_kill);
	for (size_t i = 0; i < l->nkeys; i++) {
		struct kent *k = &l->keys[i];
		size_t len = loop_len(l, k->n);
		int st;
		switch (k->st) {
		case K_DURABLE:
			CHECK_MSG(lookup_tier(c, blk_key(l->ns, k->n)) == KVT_TIER_NVME,
				  "cycle %u: durable block %llu is not on NVMe", cycle,
				  (unsigned long long)k->n);
			st = get_blk(c, dst, l->ns, k->n, len, want);
			CHECK_MSG(st == 0, "cycle %u: durable block %llu: GET %s", cycle,
				  (unsigned long long)k->n, test_errname(st));
			present++;
			break;
		case K_GONE:
			CHECK_MSG(lookup_tier(c, blk_key(l->ns, k->n)) == -1,
				  "cycle %u: deleted block %llu is back", cycle,
				  (unsigned long long)k->n);
			CHECK_RC(get_blk(c, dst, l->ns, k->n, len, want), KVT_ENOENT);
			break;
		case K_MAYBE:
			maybe++;
			st = get_blk(c, dst, l->ns, k->n, len, want);
			CHECK_MSG(st == 0 || st == KVT_ENOENT, "cycle %u: block %llu: GET %s",
				  cycle, (unsigned long long)k->n, test_errname(st));
			if (st == 0) {
				present++;
				survived++;
				k->st = K_DURABLE; /* indexed: it was durable */
			} else {
				k->st = K_GONE; /* not indexed, and nothing writes it again */
			}
			break;
		}
	}
	test_log("cycle %u: %llu blocks indexed, %llu of %llu cut-off writes survived", cycle,
		 (unsigned long long)blocks, (unsigned long long)survived,
		 (unsigned long long)maybe);
	CHECK_MSG(blocks == present,
		  "cycle %u: the index counts %llu blocks, %llu read back (no wrong bytes)", cycle,
		  (unsigned long long)blocks, (unsigned long long)present);
	CHECK_EQ(kvtd_stat(c, "t2.checksum_failures"), 0);
}

/*
 * Delete the oldest blocks beyond a window (so old segments empty and cleaning
 * finds dead ones), wait until the deletes are counted, then write a batch and
 * wait until it is counted: those are durable.
 */
static void loop_settle(struct kill_loop *l, kvt_conn *c, kvt_region *src)
{
	enum { WINDOW = 16 };
	size_t ndur = loop_count(l, K_DURABLE);
	kvt_key del[64];
	int st[64];
	size_t nd = 0;
	/* Forget misses from earlier cycles; keep this cycle's as K_GONE. */
	size_t w = 0;
	for (size_t i = 0; i < l->nkeys; i++) {
		struct kent k = l->keys[i];
		if (k.st == K_DURABLE && ndur > WINDOW && nd < 64) {
			del[nd++] = blk_key(l->ns, k.n);
			ndur--;
			k.st = K_GONE;
		}
		l->keys[w++] = k;
	}
	l->nkeys = w;
	if (nd) {
		int rc = kvt_block_delete(c, del, nd, st);
		for (size_t i = 0; i < nd; i++)
			CHECK_MSG(st[i] == 0, "DELETE: %s (request %s)", test_errname(st[i]),
				  test_errname(rc));
	}
	wait_stat_eq(c, "t2.blocks", ndur);

	size_t nb = 4 + loop_rand(l) % 8;
	for (size_t i = 0; i < nb; i++) {
		uint64_t n = l->next++;
		CHECK_RC(put_blk(c, src, 0, l->ns, n, loop_len(l, n), NULL), 0);
		loop_add(l, n, K_MAYBE);
	}
	wait_stat_eq(c, "t2.blocks", ndur + nb);
	for (size_t i = 0; i < l->nkeys; i++)
		if (l->keys[i].st == K_MAYBE)
			l->keys[i].st = K_DURABLE;
}

/* Pipelined PUTs of new blocks; kill -9 after a random number of them were
 * answered. Returns t2.blocks as counted just before the kill. */
static uint64_t loop_crash(struct kill_loop *l, struct kvtd *d, kvt_conn *c, kvt_conn *c2,
			   kvt_region *heavy)
{
	kvt_put_item *items = l->items;
	kvt_ticket *tk = l->tk;
	size_t nh = 8 + loop_rand(l) % (NH_MAX - 8 + 1);
	size_t kill_after = loop_rand(l) % (nh + 1);
	for (size_t i = 0; i < nh; i++) {
		uint64_t n = l->next++;
		size_t len = loop_len(l, n);
		blk_fill((uint8_t *)kvt_region_base(heavy) + i * MiB, l->ns, n, len);
		items[i] = (kvt_put_item){ .key = blk_key(l->ns, n), .region = heavy,
					   .offset = i * MiB, .length = len,
					   .desc = blk_desc(l->ns, n) };
		loop_add(l, n, K_MAYBE);
	}
	for (size_t i = 0; i < nh; i++)
		CHECK_RC(kvt_block_put_start(c, &items[i], 1, &tk[i]), 0);
	for (size_t i = 0; i < kill_after; i++) {
		CHECK_RC(kvt_wait(c, tk[i]), 0);
		CHECK_RC(items[i].status, 0);
	}
	/* Sometimes at once, sometimes while group commits are landing. */
	if (loop_rand(l) % 3)
		test_sleep_ms((int)(loop_rand(l) % 40));
	uint64_t before = kvtd_stat(c2, "t2.blocks");
	kvtd_kill(d);
	return before;
}

static void kill_loop(const char *backend, uint32_t ns)
{
	unsigned loops = 24;
	const char *e = getenv("KVT_NVME_KILL_LOOPS");
	if (e && atoi(e) > 0) {
		loops = (unsigned)atoi(e);
		alarm(60 + loops * 5);
	}
	uint64_t seed = (uint64_t)time(NULL) ^ ((uint64_t)getpid() << 20);
	e = getenv("KVT_NVME_KILL_SEED");
	if (e && *e)
		seed = strtoull(e, NULL, 0);
	test_log("%u kill -9 cycles, KVT_NVME_KILL_SEED=%llu", loops, (unsigned long long)seed);

	char conf[512];
	conf_for(conf, sizeof(conf), backend, "nvme_write = through\nnvme_codec = bf16\n");
	static struct kill_loop l;
	l = (struct kill_loop){ .ns = ns, .rng = seed };
	uint8_t *want = malloc(1 * MiB);
	CHECK(want);
	struct kvtd d;
	uint64_t before = 0;
	for (unsigned cycle = 0; cycle <= loops; cycle++) {
		if (cycle == 0) {
			kvtd_start(&d, conf);
			d.keep_dir = true;
		} else {
			kvtd_restart(&d);
			uint64_t warm = 0;
			check_warm(&d, &warm);
		}
		kvt_conn *c = kvtd_connect(&d, 30000);
		kvt_conn *c2 = kvtd_connect(&d, 30000);
		kvt_region *dst = kvtd_region(c, 1 * MiB);
		kvt_region *src = kvtd_region(c, 1 * MiB);
		if (cycle > 0)
			loop_verify(&l, c, dst, want, before, cycle);
		if (cycle == loops) {
			kvt_region_destroy(src);
			kvt_region_destroy(dst);
			kvt_conn_close(c2);
			kvt_conn_close(c);
			break;
		}
		loop_settle(&l, c, src);
		kvt_region *heavy = kvtd_region(c, 24 * MiB);
		before = loop_crash(&l, &d, c, c2, heavy);
		kvt_region_destroy(heavy);
		kvt_region_destroy(src);
		kvt_region_destroy(dst);
		kvt_conn_close(c2);
		kvt_conn_close(c);
	}
	free(l.keys);
	free(want);
	d.keep_dir = false;
	kvtd_stop_clean(&d);
}

TEST(uring_kill9_loop_during_writes_serves_no_wrong_bytes) { kill_loop("uring", 12); }
TEST(threads_kill9_loop_during_writes_serves_no_wrong_bytes) { kill_loop("threads", 13); }

/* ---- corruption ------------------------------------------------------------------------ */

/* A record found in a segment file (docs/STORAGE.md, "Records"). */
struct rec {
	char path[512];
	uint64_t off, len;
	kvt_key key;
};

static uint32_t get32(const uint8_t *p)
{
	return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static uint64_t get64(const uint8_t *p)
{
	return (uint64_t)get32(p) | (uint64_t)get32(p + 4) << 32;
}

/* Walk every segment file's records from offset 0 (appends are contiguous). */
static size_t find_records(const char *dir, struct rec *out, size_t cap)
{
	char sdir[256];
	int sl = snprintf(sdir, sizeof(sdir), "%s/data/segments", dir);
	CHECK(sl > 0 && (size_t)sl < sizeof(sdir));
	DIR *dh = opendir(sdir);
	CHECK_MSG(dh, "opendir %s", sdir);
	size_t n = 0;
	struct dirent *de;
	while ((de = readdir(dh)) != NULL) {
		if (strncmp(de->d_name, "seg-", 4) != 0)
			continue;
		char path[512];
		int pl = snprintf(path, sizeof(path), "%s/%s", sdir, de->d_name);
		CHECK(pl > 0 && (size_t)pl < sizeof(path));
		int fd = open(path, O_RDONLY);
		CHECK(fd >= 0);
		uint8_t h[80];
		for (uint64_t off = 0; n < cap; ) {
			if (pread(fd, h, sizeof(h), (off_t)off) != (ssize_t)sizeof(h) ||
			    memcmp(h, "KVTR", 4) != 0)
				break;
			uint64_t len = get64(h + 64);
			if (len == 0 || len % 4096)
				break;
			struct rec *r = &out[n++];
			snprintf(r->path, sizeof(r->path), "%s", path);
			r->off = off;
			r->len = len;
			memcpy(r->key.b, h + 16, 16);
			CHECK_EQ(get32(h + 12), 0); /* root's tenant */
			off += len;
		}
		close(fd);
	}
	closedir(dh);
	return n;
}

static void flip_bit(const char *path, uint64_t off, uint8_t mask)
{
	int fd = open(path, O_RDWR);
	CHECK(fd >= 0);
	uint8_t b;
	CHECK(pread(fd, &b, 1, (off_t)off) == 1);
	b ^= mask;
	CHECK(pwrite(fd, &b, 1, (off_t)off) == 1);
	CHECK(fsync(fd) == 0);
	close(fd);
}

static void zero_page(const char *path, uint64_t off)
{
	static uint8_t zero[4096];
	int fd = open(path, O_RDWR);
	CHECK(fd >= 0);
	CHECK(pwrite(fd, zero, sizeof(zero), (off_t)off) == (ssize_t)sizeof(zero));
	CHECK(fsync(fd) == 0);
	close(fd);
}

/* Index of block n of ns among the records. */
static size_t rec_of(const struct rec *r, size_t n, kvt_key k)
{
	for (size_t i = 0; i < n; i++)
		if (memcmp(r[i].key.b, k.b, 16) == 0)
			return i;
	test_fail(__FILE__, __LINE__, "a block's record is not in any segment file");
}

/*
 * With the daemon stopped: a flipped bit in a block's data, one in a record
 * header, a zeroed 4 KiB page, and a segment truncated in the middle of its last
 * record. After a restart each of those is a miss (KVT_ENOENT), counted as a
 * checksum failure (or an I/O error for the cut record) and logged; the other
 * blocks come back identical and the daemon keeps serving, including the damaged
 * keys once they are stored again.
 */
static void corruption(const char *backend)
{
	enum { N = 8 };
	const uint32_t ns = 14;
	struct kvtd d;
	kvt_conn *c = start_t2(&d, backend, "nvme_write = through\nnvme_codec = bf16\n");
	kvt_region *src = kvtd_region(c, 2 * MiB);
	put_blks(c, src, ns, 0, N, 256 * KiB, 2 * MiB);
	wait_stat_eq(c, "t2.blocks", N);
	kvt_region_destroy(src);
	kvt_conn_close(c);
	kvtd_stop_clean(&d);

	struct rec recs[64];
	size_t nr = find_records(d.dir, recs, 64);
	CHECK_EQ(nr, N);
	/* The victims, by position on disk: the last record is cut short. */
	size_t last = 0;
	for (size_t i = 1; i < nr; i++)
		if (strcmp(recs[i].path, recs[last].path) == 0 && recs[i].off > recs[last].off)
			last = i;
	size_t v[3], nv = 0;
	for (size_t i = 0; i < nr && nv < 3; i++)
		if (i != last)
			v[nv++] = i;
	CHECK(recs[v[2]].len >= 3 * 4096);
	flip_bit(recs[v[0]].path, recs[v[0]].off + 4096 + 777, 0x10); /* frame data */
	flip_bit(recs[v[1]].path, recs[v[1]].off + 40, 0x01);         /* header: tokens */
	zero_page(recs[v[2]].path, recs[v[2]].off + 2 * 4096);         /* frame data */
	CHECK(truncate(recs[last].path, (off_t)(recs[last].off + 4096)) == 0);
	bool bad[N] = { false };
	for (uint64_t i = 0; i < N; i++) {
		size_t r = rec_of(recs, nr, blk_key(ns, i));
		bad[i] = r == v[0] || r == v[1] || r == v[2] || r == last;
	}

	kvtd_restart(&d);
	c = kvtd_connect(&d, 30000);
	kvt_region *dst = kvtd_region(c, 2 * MiB);
	uint8_t *want = malloc(2 * MiB);
	CHECK(want);
	uint64_t misses = 0;
	for (uint64_t i = 0; i < N; i++) {
		int st = get_blk(c, dst, ns, i, blk_len(ns, i, 256 * KiB, 2 * MiB), want);
		if (bad[i]) {
			CHECK_MSG(st == KVT_ENOENT, "damaged block %llu: GET %s, expected ENOENT",
				  (unsigned long long)i, test_errname(st));
			misses++;
		} else {
			CHECK_MSG(st == 0, "intact block %llu: GET %s", (unsigned long long)i,
				  test_errname(st));
		}
	}
	CHECK_EQ(misses, 4);
	uint64_t cks = kvtd_stat(c, "t2.checksum_failures"), ioe = kvtd_stat(c, "t2.io_errors");
	test_log("checksum failures %llu, I/O errors %llu", (unsigned long long)cks,
		 (unsigned long long)ioe);
	CHECK(cks >= 3);
	CHECK(cks + ioe >= 4);
	CHECK(kvtd_stat(c, "t2.fetch_failures") >= 4);
	CHECK(strstr(kvtd_log_text(&d), "failed verification"));
	/* Records that failed their checksums left the index. */
	for (size_t j = 0; j < 3; j++)
		for (uint64_t i = 0; i < N; i++)
			if (rec_of(recs, nr, blk_key(ns, i)) == v[j])
				CHECK_EQ(lookup_tier(c, blk_key(ns, i)), -1);
	/* A second GET of every damaged block is a miss too. */
	for (uint64_t i = 0; i < N; i++)
		if (bad[i])
			CHECK_RC(get_blk(c, dst, ns, i, blk_len(ns, i, 256 * KiB, 2 * MiB), want),
				 KVT_ENOENT);

	/* Still serving: store the damaged blocks again (they are written to the
	 * segment that was cut), read everything back. */
	src = kvtd_region(c, 2 * MiB);
	uint64_t before = kvtd_stat(c, "t2.demotions");
	for (uint64_t i = 0; i < N; i++) {
		size_t len = blk_len(ns, i, 256 * KiB, 2 * MiB);
		if (bad[i])
			CHECK_RC(put_blk(c, src, 0, ns, i, len, NULL), 0);
	}
	wait_stat_eq(c, "t2.demotions", before + 4);
	get_blks(c, dst, ns, 0, N, 256 * KiB, 2 * MiB, want);
	kvt_region_destroy(src);
	kvt_region_destroy(dst);
	kvt_conn_close(c);
	kvtd_stop_clean(&d);

	/* And after one more restart, everything is on NVMe and intact. */
	kvtd_restart(&d);
	c = kvtd_connect(&d, 30000);
	dst = kvtd_region(c, 2 * MiB);
	for (uint64_t i = 0; i < N; i++) {
		CHECK_EQ(lookup_tier(c, blk_key(ns, i)), KVT_TIER_NVME);
		CHECK_RC(get_blk(c, dst, ns, i, blk_len(ns, i, 256 * KiB, 2 * MiB), want), 0);
	}
	finish(&d, c, dst, want);
}

TEST(uring_corruption_is_a_miss_never_wrong_bytes) { corruption("uring"); }
TEST(threads_corruption_is_a_miss_never_wrong_bytes) { corruption("threads"); }

/* ---- DELETE ----------------------------------------------------------------------------- */

/*
 * DELETE removes a block from NVMe as well as RAM: it is a miss at once, the
 * count drops, and it stays gone after a restart; a block only on NVMe is deleted
 * the same way and stays gone after kill -9 once the count said so.
 */
static void delete_reaches_nvme(const char *backend)
{
	enum { N = 6 };
	const uint32_t ns = 15;
	struct kvtd d;
	kvt_conn *c = start_t2(&d, backend, "nvme_write = through\n");
	kvt_region *src = kvtd_region(c, 2 * MiB);
	kvt_region *dst = kvtd_region(c, 2 * MiB);
	uint8_t *want = malloc(2 * MiB);
	CHECK(want);
	put_blks(c, src, ns, 0, N, 64 * KiB, 2 * MiB);
	wait_stat_eq(c, "t2.blocks", N);
	kvt_key del[2] = { blk_key(ns, 0), blk_key(ns, 1) };
	int st[2] = { 1, 1 };
	CHECK_RC(kvt_block_delete(c, del, 2, st), 0);
	CHECK_RC(st[0], 0);
	CHECK_RC(st[1], 0);
	CHECK_EQ(lookup_tier(c, del[0]), -1);
	CHECK_RC(get_blk(c, dst, ns, 1, blk_len(ns, 1, 64 * KiB, 2 * MiB), want), KVT_ENOENT);
	wait_stat_eq(c, "t2.blocks", N - 2);
	kvt_region_destroy(src);
	kvt_region_destroy(dst);
	kvt_conn_close(c);
	kvtd_stop_clean(&d);

	kvtd_restart(&d);
	c = kvtd_connect(&d, 30000);
	dst = kvtd_region(c, 2 * MiB);
	CHECK_EQ(kvtd_stat(c, "t2.blocks"), N - 2);
	for (uint64_t i = 0; i < N; i++) {
		size_t len = blk_len(ns, i, 64 * KiB, 2 * MiB);
		if (i < 2) {
			CHECK_EQ(lookup_tier(c, blk_key(ns, i)), -1);
			CHECK_RC(get_blk(c, dst, ns, i, len, want), KVT_ENOENT);
		} else {
			CHECK_EQ(lookup_tier(c, blk_key(ns, i)), KVT_TIER_NVME);
		}
	}
	/* Block 2 is only on NVMe (RAM is empty after the restart). */
	kvt_key k2 = blk_key(ns, 2);
	CHECK_RC(kvt_block_delete(c, &k2, 1, st), 0);
	CHECK_RC(st[0], 0);
	CHECK_EQ(lookup_tier(c, k2), -1);
	CHECK_RC(get_blk(c, dst, ns, 2, blk_len(ns, 2, 64 * KiB, 2 * MiB), want), KVT_ENOENT);
	CHECK_RC(kvt_block_delete(c, &k2, 1, st), KVT_EPARTIAL);
	CHECK_RC(st[0], KVT_ENOENT);
	wait_stat_eq(c, "t2.blocks", N - 3);
	kvt_region_destroy(dst);
	kvt_conn_close(c);
	kvtd_kill(&d);

	kvtd_restart(&d);
	c = kvtd_connect(&d, 30000);
	dst = kvtd_region(c, 2 * MiB);
	CHECK_EQ(kvtd_stat(c, "t2.blocks"), N - 3);
	for (uint64_t i = 0; i < N; i++) {
		int got = get_blk(c, dst, ns, i, blk_len(ns, i, 64 * KiB, 2 * MiB), want);
		CHECK_MSG(got == (i < 3 ? KVT_ENOENT : 0), "block %llu after kill -9: GET %s",
			  (unsigned long long)i, test_errname(got));
	}
	finish(&d, c, dst, want);
}

TEST(uring_delete_removes_the_block_from_nvme) { delete_reaches_nvme("uring"); }
TEST(threads_delete_removes_the_block_from_nvme) { delete_reaches_nvme("threads"); }

/* ---- tenants ------------------------------------------------------------------------------ */

#define TENANT_NS 16
#define TENANT_N 4

/* Block lengths of the tenant case. */
static size_t tenant_len(uint64_t n)
{
	return blk_len(TENANT_NS, n, 64 * KiB, 1 * MiB);
}

/* As uid NOBODY: root's blocks, only on NVMe, are misses for every operation; a
 * PUT of the same key stores this tenant's own block. */
static void nobody_client(const struct kvtd *d)
{
	kvt_conn *c = kvtd_connect(d, 30000);
	CHECK_EQ(kvt_conn_server(c)->tenant, NOBODY);
	kvt_region *r = kvtd_region(c, 1 * MiB);
	uint8_t *want = malloc(1 * MiB);
	CHECK(want);
	for (uint64_t i = 0; i < TENANT_N; i++) {
		kvt_key k = blk_key(TENANT_NS, i);
		CHECK_EQ(lookup_tier(c, k), -1);
		CHECK_RC(get_blk(c, r, TENANT_NS, i, tenant_len(i), want), KVT_ENOENT);
		int st = 1;
		CHECK_RC(kvt_block_delete(c, &k, 1, &st), KVT_EPARTIAL);
		CHECK_RC(st, KVT_ENOENT);
	}
	/* Its own block 0 under the same key: another namespace's bytes. */
	uint8_t *p = kvt_region_base(r);
	size_t len = 100 * KiB;
	fill_bf16(p, len, 0xb0d1);
	kvt_put_item it = { .key = blk_key(TENANT_NS, 0), .region = r, .length = len,
			    .desc = blk_desc(TENANT_NS, 0) };
	CHECK_RC(kvt_block_put(c, &it, 1), 0);
	memset(p, 0, len);
	kvt_get_item g = { .key = blk_key(TENANT_NS, 0), .region = r, .capacity = 1 * MiB };
	CHECK_RC(kvt_block_get(c, &g, 1), 0);
	CHECK_EQ(g.length, len);
	fill_bf16(want, len, 0xb0d1);
	CHECK_MSG(memcmp(p, want, len) == 0, "tenant %u got other bytes for its own block",
		  NOBODY);
	free(want);
	kvt_region_destroy(r);
	kvt_conn_close(c);
}

TEST(other_tenant_cannot_see_nvme_blocks)
{
	need_root();
	struct kvtd d;
	kvtd_start(&d, T2_CONF "io_backend = uring\nnvme_write = through\n");
	d.keep_dir = true;
	kvt_conn *c = kvtd_connect(&d, 30000);
	kvt_region *src = kvtd_region(c, 1 * MiB);
	for (uint64_t i = 0; i < TENANT_N; i++)
		CHECK_RC(put_blk(c, src, 0, TENANT_NS, i, tenant_len(i), NULL), 0);
	wait_stat_eq(c, "t2.blocks", TENANT_N);
	kvt_region_destroy(src);
	kvt_conn_close(c);
	kvtd_stop_clean(&d);
	kvtd_restart(&d); /* RAM is empty: the blocks are only on NVMe */

	as_nobody(&d, nobody_client);

	c = kvtd_connect(&d, 30000);
	kvt_region *dst = kvtd_region(c, 1 * MiB);
	uint8_t *want = malloc(1 * MiB);
	CHECK(want);
	for (uint64_t i = 0; i < TENANT_N; i++) {
		CHECK_EQ(lookup_tier(c, blk_key(TENANT_NS, i)), KVT_TIER_NVME);
		CHECK_RC(get_blk(c, dst, TENANT_NS, i, tenant_len(i), want), 0);
	}
	finish(&d, c, dst, want);
}

/* ---- flush at a clean shutdown --------------------------------------------------------- */

/*
 * Write-back: blocks that fit in RAM are not written while there is room. A
 * clean stop writes the admitted ones (nvme_admission = reused: those read), so
 * after a restart they are on NVMe; the unread ones were never written.
 */
static void shutdown_flush(const char *backend)
{
	enum { N = 8, READ = 4 };
	const uint32_t ns = 17;
	const size_t len = 1 * MiB;
	struct kvtd d;
	kvt_conn *c = start_t2(&d, backend, "nvme_write = back\nnvme_admission = reused\n");
	kvt_region *src = kvtd_region(c, len);
	kvt_region *dst = kvtd_region(c, len);
	uint8_t *want = malloc(len);
	CHECK(want);
	for (uint64_t i = 0; i < N; i++)
		CHECK_RC(put_blk(c, src, 0, ns, i, len, NULL), 0);
	for (uint64_t i = 0; i < READ; i++)
		CHECK_RC(get_blk(c, dst, ns, i, len, want), 0);
	/* Far below the free target: nothing needs writing yet. */
	CHECK_EQ(kvtd_stat(c, "t2.blocks"), 0);
	CHECK_EQ(kvtd_stat(c, "t2.demotions"), 0);
	kvt_region_destroy(src);
	kvt_region_destroy(dst);
	kvt_conn_close(c);
	kvtd_stop_clean(&d);
	CHECK(strstr(kvtd_log_text(&d), "before exit"));

	kvtd_restart(&d);
	uint64_t warm = 0;
	check_warm(&d, &warm);
	CHECK_EQ(warm, READ);
	c = kvtd_connect(&d, 30000);
	dst = kvtd_region(c, len);
	for (uint64_t i = 0; i < N; i++) {
		if (i < READ) {
			CHECK_EQ(lookup_tier(c, blk_key(ns, i)), KVT_TIER_NVME);
			CHECK_RC(get_blk(c, dst, ns, i, len, want), 0);
		} else {
			CHECK_EQ(lookup_tier(c, blk_key(ns, i)), -1);
			CHECK_RC(get_blk(c, dst, ns, i, len, want), KVT_ENOENT);
		}
	}
	finish(&d, c, dst, want);
}

TEST(uring_clean_shutdown_flushes_admitted_blocks) { shutdown_flush("uring"); }
TEST(threads_clean_shutdown_flushes_admitted_blocks) { shutdown_flush("threads"); }

TEST_MAIN(uring_restart_after_sigterm_is_warm, threads_restart_after_sigterm_is_warm,
	  uring_kill9_keeps_every_durable_block, threads_kill9_keeps_every_durable_block,
	  uring_kill9_loop_during_writes_serves_no_wrong_bytes,
	  threads_kill9_loop_during_writes_serves_no_wrong_bytes,
	  uring_corruption_is_a_miss_never_wrong_bytes,
	  threads_corruption_is_a_miss_never_wrong_bytes, uring_delete_removes_the_block_from_nvme,
	  threads_delete_removes_the_block_from_nvme, other_tenant_cannot_see_nvme_blocks,
	  uring_clean_shutdown_flushes_admitted_blocks,
	  threads_clean_shutdown_flushes_admitted_blocks)
