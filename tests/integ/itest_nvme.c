/*
 * itest_nvme.c - the NVMe tier (T2) through a real kvtierd, on both I/O backends
 * (io_uring and the thread pool): round trips with every codec through demotion
 * and promotion, LOOKUP's tier, the admission rule, write-through, the fallback
 * when io_uring is refused, and memstat's T2 section. Restarts, kill -9,
 * corruption, DELETE and tenants on NVMe: itest_nvme_restart.c.
 *
 * Nothing here measures time: a test waits for the daemon by polling STATS
 * (bounded), never by sleeping and hoping.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "harness.h"
#include "kvtier.h"
#include "test.h"

#define KiB (1024ull)
#define MiB (1024ull * 1024)

/* A 64 MiB host tier over a 1 GiB NVMe tier of 64 MiB segments. */
#define T2_CONF                                                                        \
	"host_capacity = 64MiB\nnvme_capacity = 1GiB\nnvme_segment_size = 64MiB\n"
#define HOST_CAP (64 * MiB)
/* Longest a test waits for a STATS figure to reach a value. */
#define POLL_MS 30000

/* ---- helpers ---------------------------------------------------------------- */

static uint64_t mix64(uint64_t x)
{
	x += 0x9e3779b97f4a7c15ull;
	x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
	x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
	return x ^ (x >> 31);
}

/* Block n of namespace ns: its key, length in [lo, hi], descriptor and bytes are
 * all functions of (ns, n), so a test can check a block it wrote in another life
 * of the daemon. */
static kvt_key blk_key(uint32_t ns, uint64_t n)
{
	kvt_key k;
	memset(&k, 0, sizeof(k));
	k.b[0] = 0x4e;
	memcpy(k.b + 4, &ns, sizeof(ns));
	memcpy(k.b + 8, &n, sizeof(n));
	return k;
}

static size_t blk_len(uint32_t ns, uint64_t n, size_t lo, size_t hi)
{
	return lo + (size_t)(mix64(((uint64_t)ns << 40) ^ n ^ 0x1e9) % (hi - lo + 1));
}

static kvt_block_desc blk_desc(uint32_t ns, uint64_t n)
{
	kvt_block_desc d = { .dtype = KVT_DTYPE_BF16,
			     .layout = (uint16_t)(ns & 0xff),
			     .layers = (uint16_t)(1 + n % 32),
			     .tokens = (uint32_t)(16 + n) };
	return d;
}

/*
 * bf16-like KV bytes: values of either sign with exponents in a narrow band (as
 * attention keys and values have) and random mantissas, little-endian. zstd
 * shrinks such data a little, the bf16 byte split more, and raw not at all.
 */
static void fill_bf16(uint8_t *p, size_t len, uint64_t seed)
{
	uint64_t x = mix64(seed) | 1;
	size_t i = 0;
	while (i < len) {
		x ^= x << 13;
		x ^= x >> 7;
		x ^= x << 17;
		for (int k = 0; k < 4 && i < len; k++) {
			uint32_t r = (uint32_t)(x >> (16 * k));
			uint16_t sign = (uint16_t)(r & 1);
			uint16_t exp = (uint16_t)(120 + ((r >> 1) & 7));
			uint16_t mant = (uint16_t)((r >> 4) & 0x7f);
			uint16_t v = (uint16_t)(sign << 15 | exp << 7 | mant);
			p[i++] = (uint8_t)v;
			if (i < len)
				p[i++] = (uint8_t)(v >> 8);
		}
	}
}

static void blk_fill(uint8_t *p, uint32_t ns, uint64_t n, size_t len)
{
	fill_bf16(p, len, ((uint64_t)ns << 40) ^ n);
}

/* PUT block (ns, n) of len bytes from r at off (the bytes are written there
 * first). Returns the item's status. */
static int put_blk(kvt_conn *c, kvt_region *r, uint64_t off, uint32_t ns, uint64_t n, size_t len,
		   const kvt_key *parent)
{
	blk_fill((uint8_t *)kvt_region_base(r) + off, ns, n, len);
	kvt_put_item it = { .key = blk_key(ns, n), .region = r, .offset = off, .length = len,
			    .desc = blk_desc(ns, n), .status = 12345 };
	if (parent)
		it.parent = *parent;
	int rc = kvt_block_put(c, &it, 1);
	if (rc != 0 && rc != KVT_EPARTIAL)
		return rc;
	CHECK_EQ(rc, it.status ? KVT_EPARTIAL : 0);
	return it.status;
}

/*
 * GET block (ns, n) into dst (at offset 0) and return its status. A block that is
 * returned must be exactly the one written: its length, descriptor and every byte
 * (want: scratch of at least len bytes). Wrong bytes fail the test at once.
 */
static int get_blk(kvt_conn *c, kvt_region *dst, uint32_t ns, uint64_t n, size_t len,
		   uint8_t *want)
{
	uint8_t *got = kvt_region_base(dst);
	memset(got, 0xa5, len < 4096 ? len : 4096);
	kvt_get_item g = { .key = blk_key(ns, n), .region = dst, .offset = 0,
			   .capacity = kvt_region_size(dst), .status = 12345 };
	int rc = kvt_block_get(c, &g, 1);
	if (rc != 0 && rc != KVT_EPARTIAL)
		return rc;
	CHECK_EQ(rc, g.status ? KVT_EPARTIAL : 0);
	if (g.status)
		return g.status;
	CHECK_MSG(g.length == len, "block %u/%llu: GET returned %llu bytes, %zu were stored", ns,
		  (unsigned long long)n, (unsigned long long)g.length, len);
	kvt_block_desc dd = blk_desc(ns, n);
	CHECK_MSG(memcmp(&g.desc, &dd, sizeof(dd)) == 0,
		  "block %u/%llu: GET returned another descriptor", ns, (unsigned long long)n);
	blk_fill(want, ns, n, len);
	if (memcmp(got, want, len) != 0) {
		size_t i = 0;
		while (got[i] == want[i])
			i++;
		test_fail(__FILE__, __LINE__,
			  "WRONG BYTES served for block %u/%llu (%zu bytes): first difference at "
			  "byte %zu",
			  ns, (unsigned long long)n, len, i);
	}
	return 0;
}

/* The tier LOOKUP reports for one key, or -1 if it is not found. */
static int lookup_tier(kvt_conn *c, kvt_key k)
{
	size_t found = 99;
	uint8_t tier = 0xff;
	CHECK_RC(kvt_block_lookup(c, &k, 1, &found, &tier), 0);
	CHECK(found <= 1);
	return found ? tier : -1;
}

static bool stat_find(kvt_conn *c, const char *name, uint64_t *v)
{
	kvt_stats *s = NULL;
	CHECK_RC(kvt_stats_get(c, &s), 0);
	bool ok = kvt_stats_find(s, name, v);
	kvt_stats_free(s);
	return ok;
}

static uint64_t stat_num(kvt_conn *c, const char *name)
{
	uint64_t v = 0;
	CHECK_MSG(stat_find(c, name, &v), "STATS has no numeric entry %s", name);
	return v;
}

/* A text STATS entry, copied into buf ("" if absent); buf, for use in an expression. */
static const char *stat_text(kvt_conn *c, const char *name, char *buf, size_t cap)
{
	kvtd_stat_text(c, name, buf, cap);
	return buf;
}

/* Log every t1.* and t2.* STATS entry (shown if the case fails). */
static void log_tier_stats(kvt_conn *c, const char *when)
{
	kvt_stats *s = NULL;
	char line[1024];
	size_t len = 0;
	CHECK_RC(kvt_stats_get(c, &s), 0);
	for (size_t i = 0; i < kvt_stats_count(s); i++) {
		const char *en, *t;
		uint64_t v;
		if (kvt_stats_entry(s, i, &en, &v, &t) || t ||
		    (strncmp(en, "t1.", 3) && strncmp(en, "t2.", 3)))
			continue;
		int n = snprintf(line + len, sizeof(line) - len, " %s=%llu", en + 3,
				 (unsigned long long)v);
		if (n < 0 || (size_t)n >= sizeof(line) - len) {
			test_log("%s:%s", when, line);
			len = 0;
			line[0] = 0;
			i--;
			continue;
		}
		len += (size_t)n;
	}
	if (len)
		test_log("%s:%s", when, line);
	kvt_stats_free(s);
}

/* Poll STATS until name == want (bounded); fails with the last value seen. */
static void wait_stat_eq(kvt_conn *c, const char *name, uint64_t want)
{
	uint64_t v = 0;
	for (int waited = 0; waited < POLL_MS; waited += 10) {
		v = stat_num(c, name);
		if (v == want)
			return;
		test_sleep_ms(10);
	}
	test_fail(__FILE__, __LINE__, "%s stayed at %llu for %d ms, waiting for %llu", name,
		  (unsigned long long)v, POLL_MS, (unsigned long long)want);
}

static void wait_stat_ge(kvt_conn *c, const char *name, uint64_t want)
{
	uint64_t v = 0;
	for (int waited = 0; waited < POLL_MS; waited += 10) {
		v = stat_num(c, name);
		if (v >= want)
			return;
		test_sleep_ms(10);
	}
	test_fail(__FILE__, __LINE__, "%s stayed at %llu for %d ms, waiting for >= %llu", name,
		  (unsigned long long)v, POLL_MS, (unsigned long long)want);
}

/* The daemon runs the backend a configuration asked for, and says so. */
static void check_backend(struct kvtd *d, kvt_conn *c, const char *backend)
{
	char b[256];
	stat_text(c, "t2.backend", b, sizeof(b));
	test_log("t2.backend: %s", b);
	if (strcmp(backend, "uring") == 0) {
		CHECK_MSG(strncmp(b, "io_uring", 8) == 0, "t2.backend is '%s', not io_uring", b);
		CHECK(strstr(kvtd_log_text(d), "NVMe I/O: io_uring"));
	} else {
		CHECK_MSG(strncmp(b, "thread pool", 11) == 0 && strstr(b, "configuration"),
			  "t2.backend is '%s', not a thread pool chosen in the configuration", b);
		CHECK(strstr(kvtd_log_text(d), "NVMe I/O: thread pool"));
	}
}

static void conf_for(char *buf, size_t cap, const char *backend, const char *extra)
{
	int n = snprintf(buf, cap, T2_CONF "io_backend = %s\n%s", backend, extra);
	CHECK(n > 0 && (size_t)n < cap);
}

/* ---- round trips through T2 ----------------------------------------------------- */

/*
 * More than the host tier holds, in blocks of 1-4 MiB (odd lengths, so the last
 * 1 MiB frame of each is partial), with every block admitted: write (through or
 * back) is how blocks reach NVMe before they leave RAM. LOOKUP says tier 2 for
 * those that left RAM; GET brings every block back byte-identical with its
 * descriptor; the codec shows in the stored/logical ratio.
 */
static void roundtrip(const char *backend, const char *codec, const char *write)
{
	enum { N = 40 };
	const uint32_t ns = 1;
	char conf[512];
	char extra[160];
	snprintf(extra, sizeof(extra),
		 "nvme_codec = %s\nnvme_admission = always\nnvme_write = %s\n", codec, write);
	conf_for(conf, sizeof(conf), backend, extra);
	struct kvtd d;
	kvtd_start(&d, conf);
	kvt_conn *c = kvtd_connect(&d, 30000);
	CHECK_EQ(stat_num(c, "t2.active"), 1);
	check_backend(&d, c, backend);
	kvt_region *src = kvtd_region(c, 4 * MiB);
	kvt_region *dst = kvtd_region(c, 4 * MiB);
	uint8_t *want = malloc(4 * MiB);
	CHECK(want);

	uint64_t total = 0;
	for (uint64_t i = 0; i < N; i++) {
		size_t len = blk_len(ns, i, 1 * MiB, 4 * MiB);
		int st = put_blk(c, src, 0, ns, i, len, NULL);
		CHECK_MSG(st == 0, "PUT of block %llu (%zu bytes): %s", (unsigned long long)i, len,
			  test_errname(st));
		total += len;
	}
	CHECK_MSG(total > HOST_CAP + HOST_CAP / 4, "only %llu bytes written",
		  (unsigned long long)total);
	log_tier_stats(c, "after the PUTs");
	CHECK(stat_num(c, "t1.evictions") > 0);
	uint64_t dropped = stat_num(c, "t1.dropped_unwritten");
	CHECK_MSG(dropped == 0,
		  "%llu of %llu evicted blocks left RAM without being written to NVMe "
		  "(t1.dropped_unwritten), with nvme_admission = always and nvme_write = %s",
		  (unsigned long long)dropped, (unsigned long long)stat_num(c, "t1.evictions"),
		  write);
	/* Evicted blocks were written; t2.demotions counts writes once committed. */
	wait_stat_ge(c, "t2.demotions", 1);

	/* Every block is somewhere; those that left RAM are on NVMe. */
	int tier[N], on_nvme = 0;
	for (uint64_t i = 0; i < N; i++) {
		tier[i] = lookup_tier(c, blk_key(ns, i));
		CHECK_MSG(tier[i] == KVT_TIER_HOST || tier[i] == KVT_TIER_NVME,
			  "block %llu: LOOKUP says %d after PUT (admission = always, write %s)",
			  (unsigned long long)i, tier[i], write);
		on_nvme += tier[i] == KVT_TIER_NVME;
	}
	test_log("%s/%s: %llu bytes in %d blocks, %d only on NVMe", backend, codec,
		 (unsigned long long)total, N, on_nvme);
	CHECK_MSG(on_nvme >= 10, "only %d blocks on NVMe", on_nvme);
	CHECK(stat_num(c, "t2.blocks") >= (uint64_t)on_nvme);

	uint64_t hits0 = stat_num(c, "t2.hits"), prom0 = stat_num(c, "t2.promotions");
	for (uint64_t i = 0; i < N; i++) {
		int st = get_blk(c, dst, ns, i, blk_len(ns, i, 1 * MiB, 4 * MiB), want);
		CHECK_MSG(st == 0, "GET of block %llu (tier %d at LOOKUP): %s",
			  (unsigned long long)i, tier[i], test_errname(st));
	}
	uint64_t hits = stat_num(c, "t2.hits") - hits0;
	uint64_t prom = stat_num(c, "t2.promotions") - prom0;
	test_log("GETs answered from NVMe: %llu, promotions: %llu", (unsigned long long)hits,
		 (unsigned long long)prom);
	CHECK_MSG(hits >= (uint64_t)on_nvme, "t2.hits grew by %llu for %d blocks on NVMe",
		  (unsigned long long)hits, on_nvme);
	CHECK(prom > 0);
	CHECK_EQ(stat_num(c, "t2.checksum_failures"), 0);
	CHECK_EQ(stat_num(c, "t2.io_errors"), 0);
	CHECK_EQ(stat_num(c, "t2.fetch_failures"), 0);
	CHECK(stat_num(c, "t2.read_bytes") > 0 && stat_num(c, "t2.write_bytes") > 0);

	uint64_t logical = stat_num(c, "t2.logical_bytes");
	uint64_t stored = stat_num(c, "t2.stored_bytes");
	test_log("%s: logical %llu, stored %llu (ratio %.3f)", codec, (unsigned long long)logical,
		 (unsigned long long)stored, stored ? (double)logical / (double)stored : 0.0);
	CHECK(logical > 0);
	if (strcmp(codec, "raw") == 0)
		CHECK_MSG(stored >= logical, "raw stored %llu < logical %llu",
			  (unsigned long long)stored, (unsigned long long)logical);
	else /* about 1.1x for zstd, 1.4x for the bf16 split on these bytes */
		CHECK_MSG(stored < logical - logical / 20,
			  "%s did not compress bf16-like data: stored %llu of %llu", codec,
			  (unsigned long long)stored, (unsigned long long)logical);
	free(want);
	CHECK_RC(kvt_region_destroy(dst), 0);
	CHECK_RC(kvt_region_destroy(src), 0);
	kvt_conn_close(c);
	kvtd_stop_clean(&d);
}

TEST(uring_roundtrip_raw) { roundtrip("uring", "raw", "through"); }
TEST(uring_roundtrip_zstd) { roundtrip("uring", "zstd", "through"); }
TEST(uring_roundtrip_bf16) { roundtrip("uring", "bf16", "through"); }
TEST(threads_roundtrip_raw) { roundtrip("threads", "raw", "through"); }
TEST(threads_roundtrip_zstd) { roundtrip("threads", "zstd", "through"); }
TEST(threads_roundtrip_bf16) { roundtrip("threads", "bf16", "through"); }

/* Write-back with nvme_admission = always: "every block evicted from RAM is
 * written first" (tier2.h), so a client storing faster than the pump writes must
 * wait for room rather than have admitted blocks dropped unwritten. */
TEST(uring_writeback_always_loses_no_block) { roundtrip("uring", "bf16", "back"); }
TEST(threads_writeback_always_loses_no_block) { roundtrip("threads", "bf16", "back"); }

/* ---- admission ---------------------------------------------------------------- */

/*
 * nvme_admission = reused: blocks never read are dropped when evicted (counted
 * in t1.dropped_unwritten) and never written; a block that was read is written
 * by the next pump, and once evicted from RAM it comes back from NVMe.
 */
static void admission_reused(const char *backend)
{
	enum { N = 96, MORE = 80 };
	const uint32_t ns = 2, ns2 = 3;
	const size_t len = 1 * MiB;
	char conf[512];
	/* Plain LRU, so that newer blocks push the read one out of RAM (2Q would keep
	 * it: read blocks go after blocks seen once). */
	conf_for(conf, sizeof(conf), backend,
		 "nvme_admission = reused\nnvme_write = back\nhost_policy = lru\n");
	struct kvtd d;
	kvtd_start(&d, conf);
	kvt_conn *c = kvtd_connect(&d, 30000);
	check_backend(&d, c, backend);
	kvt_region *src = kvtd_region(c, len);
	kvt_region *dst = kvtd_region(c, len);
	uint8_t *want = malloc(len);
	CHECK(want);

	for (uint64_t i = 0; i < N; i++)
		CHECK_RC(put_blk(c, src, 0, ns, i, len, NULL), 0);
	uint64_t ev = stat_num(c, "t1.evictions");
	CHECK_MSG(ev >= N - HOST_CAP / len, "only %llu evictions", (unsigned long long)ev);
	CHECK_EQ(stat_num(c, "t1.dropped_unwritten"), ev);
	CHECK_EQ(stat_num(c, "t2.blocks"), 0);
	CHECK_EQ(stat_num(c, "t2.demotions"), 0);
	CHECK_EQ(lookup_tier(c, blk_key(ns, 0)), -1);

	/* Read one block: now it qualifies, and the pump (the host tier is full)
	 * writes it, and only it. */
	const uint64_t x = N - 1;
	CHECK_EQ(lookup_tier(c, blk_key(ns, x)), KVT_TIER_HOST);
	CHECK_RC(get_blk(c, dst, ns, x, len, want), 0);
	wait_stat_eq(c, "t2.demotions", 1);
	wait_stat_eq(c, "t2.blocks", 1);
	CHECK_EQ(stat_num(c, "t2.demotions"), 1);

	/* More unread blocks push it out of RAM: it is on NVMe, the others are gone. */
	for (uint64_t i = 0; i < MORE; i++)
		CHECK_RC(put_blk(c, src, 0, ns2, i, len, NULL), 0);
	CHECK_EQ(lookup_tier(c, blk_key(ns, x)), KVT_TIER_NVME);
	CHECK_EQ(lookup_tier(c, blk_key(ns, x - 1)), -1);
	CHECK_RC(get_blk(c, dst, ns, x, len, want), 0);
	CHECK_RC(get_blk(c, dst, ns, x - 1, len, want), KVT_ENOENT);
	CHECK_EQ(stat_num(c, "t2.blocks"), 1);
	CHECK_EQ(stat_num(c, "t2.demotions"), 1);
	CHECK(stat_num(c, "t1.dropped_unwritten") >= ev + MORE - 1);
	free(want);
	CHECK_RC(kvt_region_destroy(dst), 0);
	CHECK_RC(kvt_region_destroy(src), 0);
	kvt_conn_close(c);
	kvtd_stop_clean(&d);
}

TEST(uring_admission_reused_writes_only_read_blocks) { admission_reused("uring"); }
TEST(threads_admission_reused_writes_only_read_blocks) { admission_reused("threads"); }

/* ---- chains under pressure ---------------------------------------------------------- */

/*
 * One PUT of a 32-block chain (each block's parent the one before) into a host
 * tier full of admitted blocks not yet on NVMe: items wait for write-backs to
 * make room, in order, so no child is tried while its parent waits and refused
 * as an orphan. Every item succeeds and LOOKUP finds the whole chain.
 */
static void chain_put_waits_in_order(const char *backend)
{
	enum { FILL = 64, CHAIN = 32 };
	const uint32_t ns = 7, nc = 8;
	const size_t len = 1 * MiB;
	char conf[512];
	conf_for(conf, sizeof(conf), backend, "nvme_admission = always\nnvme_write = back\n");
	struct kvtd d;
	kvtd_start(&d, conf);
	kvt_conn *c = kvtd_connect(&d, 30000);
	kvt_region *src = kvtd_region(c, CHAIN * len);
	kvt_region *dst = kvtd_region(c, len);
	uint8_t *want = malloc(len);
	CHECK(want);
	for (uint64_t i = 0; i < FILL; i++)
		CHECK_RC(put_blk(c, src, 0, ns, i, len, NULL), 0);

	kvt_put_item it[CHAIN];
	kvt_key keys[CHAIN];
	for (uint64_t i = 0; i < CHAIN; i++) {
		keys[i] = blk_key(nc, i);
		blk_fill((uint8_t *)kvt_region_base(src) + i * len, nc, i, len);
		it[i] = (kvt_put_item){ .key = keys[i], .region = src, .offset = i * len,
					.length = len, .desc = blk_desc(nc, i), .status = 12345 };
		if (i)
			it[i].parent = keys[i - 1];
	}
	int rc = kvt_block_put(c, it, CHAIN);
	log_tier_stats(c, "after the chain");
	for (uint64_t i = 0; i < CHAIN; i++)
		CHECK_MSG(it[i].status == 0, "chain item %llu: %s", (unsigned long long)i,
			  test_errname(it[i].status));
	CHECK_RC(rc, 0);
	size_t found = 0;
	uint8_t tiers[CHAIN];
	CHECK_RC(kvt_block_lookup(c, keys, CHAIN, &found, tiers), 0);
	CHECK_EQ(found, CHAIN);
	for (uint64_t i = 0; i < CHAIN; i++)
		CHECK_RC(get_blk(c, dst, nc, i, len, want), 0);
	CHECK_EQ(stat_num(c, "t1.dropped_unwritten"), 0);
	free(want);
	CHECK_RC(kvt_region_destroy(dst), 0);
	CHECK_RC(kvt_region_destroy(src), 0);
	kvt_conn_close(c);
	kvtd_stop_clean(&d);
}

/*
 * The same chain split over two PUTs in flight at once (an engine pipelining its
 * stores): the second PUT's first block names the first PUT's last block as
 * parent, which may still be waiting for room. It must wait behind it, not be
 * refused as an orphan.
 */
TEST(chain_split_over_two_pipelined_puts_loses_no_child)
{
	enum { FILL = 64, HALF = 16 };
	const uint32_t ns = 17, nc = 18;
	const size_t len = 1 * MiB;
	char conf[512];
	conf_for(conf, sizeof(conf), "uring", "nvme_admission = always\nnvme_write = back\n");
	struct kvtd d;
	kvtd_start(&d, conf);
	kvt_conn *c = kvtd_connect(&d, 30000);
	kvt_region *src = kvtd_region(c, 2 * HALF * len);
	kvt_region *fill = kvtd_region(c, len);
	uint8_t *want = malloc(len);
	CHECK(want);
	for (uint64_t i = 0; i < FILL; i++)
		CHECK_RC(put_blk(c, fill, 0, ns, i, len, NULL), 0);

	kvt_put_item a[HALF], b[HALF];
	kvt_key keys[2 * HALF];
	for (uint64_t i = 0; i < 2 * HALF; i++) {
		keys[i] = blk_key(nc, i);
		blk_fill((uint8_t *)kvt_region_base(src) + i * len, nc, i, len);
		kvt_put_item *it = i < HALF ? &a[i] : &b[i - HALF];
		*it = (kvt_put_item){ .key = keys[i], .region = src, .offset = i * len,
				      .length = len, .desc = blk_desc(nc, i), .status = 12345 };
		if (i)
			it->parent = keys[i - 1];
	}
	kvt_ticket ta, tb;
	CHECK_RC(kvt_block_put_start(c, a, HALF, &ta), 0);
	CHECK_RC(kvt_block_put_start(c, b, HALF, &tb), 0);
	int ra = kvt_wait(c, ta), rb = kvt_wait(c, tb);
	log_tier_stats(c, "after the two PUTs");
	for (uint64_t i = 0; i < 2 * HALF; i++) {
		int st = i < HALF ? a[i].status : b[i - HALF].status;
		CHECK_MSG(st == 0, "chain item %llu: %s", (unsigned long long)i, test_errname(st));
	}
	CHECK_RC(ra, 0);
	CHECK_RC(rb, 0);
	size_t found = 0;
	uint8_t tiers[2 * HALF];
	CHECK_RC(kvt_block_lookup(c, keys, 2 * HALF, &found, tiers), 0);
	CHECK_EQ(found, 2 * HALF);
	for (uint64_t i = 0; i < 2 * HALF; i++)
		CHECK_RC(get_blk(c, fill, nc, i, len, want), 0);
	free(want);
	CHECK_RC(kvt_region_destroy(fill), 0);
	CHECK_RC(kvt_region_destroy(src), 0);
	kvt_conn_close(c);
	kvtd_stop_clean(&d);
}

TEST(uring_chain_put_waits_in_order_and_loses_no_child) { chain_put_waits_in_order("uring"); }
TEST(threads_chain_put_waits_in_order_and_loses_no_child) { chain_put_waits_in_order("threads"); }

/*
 * A block whose parent is only on NVMe is not an orphan: LOOKUP follows the chain
 * through both tiers. With the host tier full of blocks NVMe has too, storing
 * the child displaces one of them (it used to be refused with ENOSPC, as if the
 * parent were gone).
 */
TEST(child_of_a_block_on_nvme_is_stored)
{
	enum { N = 80 };
	const uint32_t ns = 9;
	const size_t len = 1 * MiB;
	char conf[512];
	conf_for(conf, sizeof(conf), "uring", "nvme_write = through\n");
	struct kvtd d;
	kvtd_start(&d, conf);
	kvt_conn *c = kvtd_connect(&d, 30000);
	kvt_region *src = kvtd_region(c, len);
	for (uint64_t i = 0; i < N; i++)
		CHECK_RC(put_blk(c, src, 0, ns, i, len, NULL), 0);
	wait_stat_eq(c, "t2.blocks", N);
	CHECK_EQ(lookup_tier(c, blk_key(ns, 0)), KVT_TIER_NVME);
	CHECK_EQ(stat_num(c, "t1.dropped_unwritten"), 0);

	kvt_key parent = blk_key(ns, 0);
	CHECK_RC(put_blk(c, src, 0, ns, 1000, len, &parent), 0);
	kvt_key chain[2] = { parent, blk_key(ns, 1000) };
	size_t found = 0;
	uint8_t tiers[2];
	CHECK_RC(kvt_block_lookup(c, chain, 2, &found, tiers), 0);
	CHECK_EQ(found, 2);
	CHECK_EQ(tiers[0], KVT_TIER_NVME);
	CHECK_EQ(tiers[1], KVT_TIER_HOST);
	CHECK_RC(kvt_region_destroy(src), 0);
	kvt_conn_close(c);
	kvtd_stop_clean(&d);
}

/* ---- write-through ---------------------------------------------------------------- */

/*
 * nvme_write = through: every PUT reaches NVMe (with the default admission rule,
 * which would turn these unread, childless blocks away), while the blocks stay in
 * RAM; under pressure only written blocks are evicted, so nothing is lost.
 */
static void write_through(const char *backend)
{
	enum { N1 = 24, N2 = 48 };
	const uint32_t ns = 4;
	char conf[512];
	conf_for(conf, sizeof(conf), backend, "nvme_write = through\n");
	struct kvtd d;
	kvtd_start(&d, conf);
	kvt_conn *c = kvtd_connect(&d, 30000);
	check_backend(&d, c, backend);
	kvt_region *src = kvtd_region(c, 2 * MiB);
	kvt_region *dst = kvtd_region(c, 2 * MiB);
	uint8_t *want = malloc(2 * MiB);
	CHECK(want);

	for (uint64_t i = 0; i < N1; i++)
		CHECK_RC(put_blk(c, src, 0, ns, i, blk_len(ns, i, 1 * MiB, 2 * MiB), NULL), 0);
	wait_stat_eq(c, "t2.blocks", N1);
	CHECK_EQ(stat_num(c, "t1.evictions"), 0);
	for (uint64_t i = 0; i < N1; i++)
		CHECK_EQ(lookup_tier(c, blk_key(ns, i)), KVT_TIER_HOST);

	for (uint64_t i = N1; i < N1 + N2; i++)
		CHECK_RC(put_blk(c, src, 0, ns, i, blk_len(ns, i, 1 * MiB, 2 * MiB), NULL), 0);
	wait_stat_eq(c, "t2.blocks", N1 + N2);
	CHECK(stat_num(c, "t1.evictions") > 0);
	CHECK_EQ(stat_num(c, "t1.dropped_unwritten"), 0);
	CHECK_EQ(lookup_tier(c, blk_key(ns, 0)), KVT_TIER_NVME);
	for (uint64_t i = 0; i < N1 + N2; i++)
		CHECK_RC(get_blk(c, dst, ns, i, blk_len(ns, i, 1 * MiB, 2 * MiB), want), 0);
	CHECK_EQ(stat_num(c, "t2.demote_failures"), 0);
	free(want);
	CHECK_RC(kvt_region_destroy(dst), 0);
	CHECK_RC(kvt_region_destroy(src), 0);
	kvt_conn_close(c);
	kvtd_stop_clean(&d);
}

TEST(uring_write_through_writes_every_put) { write_through("uring"); }
TEST(threads_write_through_writes_every_put) { write_through("threads"); }

/* ---- backend choice ----------------------------------------------------------------- */

/*
 * io_backend = auto picks io_uring where the kernel allows it; with io_uring
 * refused (KVT_IO_URING_DISABLE=1 stands for EPERM from the kernel) it runs the
 * thread pool, and the log and STATS say so and why. The tier then works as
 * usual, across a restart too.
 */
TEST(auto_backend_falls_back_to_threads_and_says_why)
{
	const uint32_t ns = 5;
	const char *conf = T2_CONF "io_backend = auto\nnvme_write = through\n";
	char b[256];
	struct kvtd d;

	CHECK(unsetenv("KVT_IO_URING_DISABLE") == 0);
	kvtd_start(&d, conf);
	kvt_conn *c = kvtd_connect(&d, 30000);
	stat_text(c, "t2.backend", b, sizeof(b));
	kvt_conn_close(c);
	kvtd_stop_clean(&d);
	if (strncmp(b, "io_uring", 8) != 0)
		test_log("io_uring is not available here (%s): only the fallback is checked", b);

	CHECK(setenv("KVT_IO_URING_DISABLE", "1", 1) == 0);
	kvtd_start(&d, conf);
	const char *log = kvtd_log_text(&d);
	const char *line = strstr(log, "NVMe I/O: ");
	CHECK_MSG(line, "the log does not say which NVMe I/O backend runs");
	char first[512];
	snprintf(first, sizeof(first), "%.*s", (int)strcspn(line, "\n"), line);
	test_log("log: %s", first);
	CHECK_MSG(strstr(first, "thread pool") && strstr(first, "io_uring refused") &&
			  strstr(first, "KVT_IO_URING_DISABLE=1"),
		  "the log line does not say the thread pool runs because io_uring was refused: %s",
		  first);
	c = kvtd_connect(&d, 30000);
	stat_text(c, "t2.backend", b, sizeof(b));
	CHECK_MSG(strncmp(b, "thread pool", 11) == 0 && strstr(b, "io_uring refused"),
		  "t2.backend is '%s'", b);

	kvt_region *src = kvtd_region(c, 2 * MiB);
	kvt_region *dst = kvtd_region(c, 2 * MiB);
	uint8_t *want = malloc(2 * MiB);
	CHECK(want);
	enum { N = 8 };
	for (uint64_t i = 0; i < N; i++)
		CHECK_RC(put_blk(c, src, 0, ns, i, blk_len(ns, i, 64 * KiB, 2 * MiB), NULL), 0);
	wait_stat_eq(c, "t2.blocks", N);
	kvt_region_destroy(src);
	kvt_region_destroy(dst);
	kvt_conn_close(c);
	d.keep_dir = true;
	kvtd_stop_clean(&d);
	kvtd_restart(&d);
	CHECK(strstr(kvtd_log_text(&d), "NVMe I/O: thread pool"));
	c = kvtd_connect(&d, 30000);
	dst = kvtd_region(c, 2 * MiB);
	for (uint64_t i = 0; i < N; i++) {
		CHECK_EQ(lookup_tier(c, blk_key(ns, i)), KVT_TIER_NVME);
		CHECK_RC(get_blk(c, dst, ns, i, blk_len(ns, i, 64 * KiB, 2 * MiB), want), 0);
	}
	free(want);
	kvt_region_destroy(dst);
	kvt_conn_close(c);
	d.keep_dir = false;
	kvtd_stop_clean(&d);
}

/* ---- memstat ---------------------------------------------------------------------- */

/* Run a command and capture its standard output (up to cap - 1 bytes); returns its
 * exit status. */
static int run_capture(const char *cmd, char *out, size_t cap)
{
	test_log("$ %s", cmd);
	FILE *p = popen(cmd, "r");
	CHECK(p);
	size_t len = 0, r;
	while (len < cap - 1 && (r = fread(out + len, 1, cap - 1 - len, p)) > 0)
		len += r;
	out[len] = 0;
	int st = pclose(p);
	return WIFEXITED(st) ? WEXITSTATUS(st) : 128;
}

static void log_lines(const char *text)
{
	char *copy = strdup(text), *save = NULL;
	CHECK(copy);
	for (char *l = strtok_r(copy, "\n", &save); l; l = strtok_r(NULL, "\n", &save))
		test_log("| %s", l);
	free(copy);
}

/*
 * memstat shows a T2 section from the t2.* entries: capacity, used, blocks,
 * compression ratio, bytes, backend, counters; with -w the read and write rates;
 * and a "t2" object in --json. Without the tier it says it is off.
 */
TEST(memstat_shows_the_nvme_tier)
{
	static char out[1 << 16];
	char cmd[1024];
	const uint32_t ns = 6;
	struct kvtd d;

	if (access(kvtd_bin("memstat"), X_OK) < 0)
		test_skip("no %s (the sanitizer build makes only the daemon)", kvtd_bin("memstat"));

	kvtd_start(&d, NULL);
	snprintf(cmd, sizeof(cmd), "%s -s %s", kvtd_bin("memstat"), d.sock);
	CHECK_EQ(run_capture(cmd, out, sizeof(out)), 0);
	log_lines(out);
	CHECK_MSG(strstr(out, "NVMe (T2) off"), "memstat does not say the NVMe tier is off");
	snprintf(cmd, sizeof(cmd), "%s -s %s --json", kvtd_bin("memstat"), d.sock);
	CHECK_EQ(run_capture(cmd, out, sizeof(out)), 0);
	CHECK_MSG(strstr(out, "\"t2\":{\"active\":0}"), "JSON without \"t2\":{\"active\":0}");
	kvtd_stop_clean(&d);

	kvtd_start(&d, T2_CONF "io_backend = uring\nnvme_write = through\nnvme_codec = bf16\n");
	kvt_conn *c = kvtd_connect(&d, 30000);
	kvt_region *src = kvtd_region(c, 1 * MiB);
	for (uint64_t i = 0; i < 5; i++)
		CHECK_RC(put_blk(c, src, 0, ns, i, 1 * MiB, NULL), 0);
	wait_stat_eq(c, "t2.blocks", 5);

	snprintf(cmd, sizeof(cmd), "%s -s %s", kvtd_bin("memstat"), d.sock);
	CHECK_EQ(run_capture(cmd, out, sizeof(out)), 0);
	log_lines(out);
	const char *t2 = strstr(out, "T2 NVMe");
	CHECK_MSG(t2, "memstat has no T2 NVMe section");
	CHECK_MSG(strstr(t2, "capacity 1.0 GiB"), "T2 capacity missing");
	CHECK_MSG(strstr(t2, "blocks 5"), "T2 block count missing");
	CHECK_MSG(strstr(t2, "compression"), "T2 compression ratio missing");
	CHECK_MSG(strstr(t2, "backend io_uring"), "T2 backend missing");
	CHECK_MSG(strstr(t2, "checksum failures 0"), "T2 checksum failures missing");
	CHECK_MSG(strstr(t2, "queue depth 64"), "T2 queue depth missing");

	snprintf(cmd, sizeof(cmd), "%s -s %s --json", kvtd_bin("memstat"), d.sock);
	CHECK_EQ(run_capture(cmd, out, sizeof(out)), 0);
	CHECK_MSG(strstr(out, "\"t2\":{\"active\":1,"), "JSON has no active t2 object");
	CHECK_MSG(strstr(out, "\"blocks\":5"), "JSON t2 has no block count");
	CHECK_MSG(strstr(out, "\"compression_ratio\":"), "JSON t2 has no compression ratio");

	/* Two samples: the second has T2 rates. */
	snprintf(cmd, sizeof(cmd), "%s -s %s -w 0.2 -n 2", kvtd_bin("memstat"), d.sock);
	CHECK_EQ(run_capture(cmd, out, sizeof(out)), 0);
	log_lines(out);
	CHECK_MSG(strstr(out, "T2 rates"), "memstat -w shows no T2 rates");
	snprintf(cmd, sizeof(cmd), "%s -s %s -w 0.2 -n 2 --json", kvtd_bin("memstat"), d.sock);
	CHECK_EQ(run_capture(cmd, out, sizeof(out)), 0);
	CHECK_MSG(strstr(out, "\"t2_read_gbps\":") && strstr(out, "\"t2_write_gbps\":"),
		  "memstat -w --json has no T2 rates");
	kvt_region_destroy(src);
	kvt_conn_close(c);
	kvtd_stop_clean(&d);
}

TEST_MAIN(uring_roundtrip_raw, uring_roundtrip_zstd, uring_roundtrip_bf16, threads_roundtrip_raw,
	  threads_roundtrip_zstd, threads_roundtrip_bf16, uring_writeback_always_loses_no_block,
	  threads_writeback_always_loses_no_block,
	  uring_admission_reused_writes_only_read_blocks,
	  threads_admission_reused_writes_only_read_blocks, uring_write_through_writes_every_put,
	  threads_write_through_writes_every_put, auto_backend_falls_back_to_threads_and_says_why,
	  memstat_shows_the_nvme_tier, uring_chain_put_waits_in_order_and_loses_no_child,
	  threads_chain_put_waits_in_order_and_loses_no_child, child_of_a_block_on_nvme_is_stored,
	  chain_split_over_two_pipelined_puts_loses_no_child)
