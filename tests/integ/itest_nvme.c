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

#include "blocks.h"
#include "harness.h"
#include "kvtier.h"
#include "test.h"

#define KiB (1024ull)
#define MiB (1024ull * 1024)

/* The host tier T2_CONF configures. */
#define HOST_CAP (64 * MiB)

/* ---- helpers ---------------------------------------------------------------- */

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
	CHECK_EQ(kvtd_stat(c, "t2.active"), 1);
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
	CHECK(kvtd_stat(c, "t1.evictions") > 0);
	uint64_t dropped = kvtd_stat(c, "t1.dropped_unwritten");
	CHECK_MSG(dropped == 0,
		  "%llu of %llu evicted blocks left RAM without being written to NVMe "
		  "(t1.dropped_unwritten), with nvme_admission = always and nvme_write = %s",
		  (unsigned long long)dropped, (unsigned long long)kvtd_stat(c, "t1.evictions"),
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
	CHECK(kvtd_stat(c, "t2.blocks") >= (uint64_t)on_nvme);

	uint64_t hits0 = kvtd_stat(c, "t2.hits"), prom0 = kvtd_stat(c, "t2.promotions");
	for (uint64_t i = 0; i < N; i++) {
		int st = get_blk(c, dst, ns, i, blk_len(ns, i, 1 * MiB, 4 * MiB), want);
		CHECK_MSG(st == 0, "GET of block %llu (tier %d at LOOKUP): %s",
			  (unsigned long long)i, tier[i], test_errname(st));
	}
	uint64_t hits = kvtd_stat(c, "t2.hits") - hits0;
	uint64_t prom = kvtd_stat(c, "t2.promotions") - prom0;
	test_log("GETs answered from NVMe: %llu, promotions: %llu", (unsigned long long)hits,
		 (unsigned long long)prom);
	CHECK_MSG(hits >= (uint64_t)on_nvme, "t2.hits grew by %llu for %d blocks on NVMe",
		  (unsigned long long)hits, on_nvme);
	CHECK(prom > 0);
	CHECK_EQ(kvtd_stat(c, "t2.checksum_failures"), 0);
	CHECK_EQ(kvtd_stat(c, "t2.io_errors"), 0);
	CHECK_EQ(kvtd_stat(c, "t2.fetch_failures"), 0);
	CHECK(kvtd_stat(c, "t2.read_bytes") > 0 && kvtd_stat(c, "t2.write_bytes") > 0);

	uint64_t logical = kvtd_stat(c, "t2.logical_bytes");
	uint64_t stored = kvtd_stat(c, "t2.stored_bytes");
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
	uint64_t ev = kvtd_stat(c, "t1.evictions");
	CHECK_MSG(ev >= N - HOST_CAP / len, "only %llu evictions", (unsigned long long)ev);
	CHECK_EQ(kvtd_stat(c, "t1.dropped_unwritten"), ev);
	CHECK_EQ(kvtd_stat(c, "t2.blocks"), 0);
	CHECK_EQ(kvtd_stat(c, "t2.demotions"), 0);
	CHECK_EQ(lookup_tier(c, blk_key(ns, 0)), -1);

	/* Read one block: now it qualifies, and the pump (the host tier is full)
	 * writes it, and only it. */
	const uint64_t x = N - 1;
	CHECK_EQ(lookup_tier(c, blk_key(ns, x)), KVT_TIER_HOST);
	CHECK_RC(get_blk(c, dst, ns, x, len, want), 0);
	wait_stat_eq(c, "t2.demotions", 1);
	wait_stat_eq(c, "t2.blocks", 1);
	CHECK_EQ(kvtd_stat(c, "t2.demotions"), 1);

	/* More unread blocks push it out of RAM: it is on NVMe, the others are gone. */
	for (uint64_t i = 0; i < MORE; i++)
		CHECK_RC(put_blk(c, src, 0, ns2, i, len, NULL), 0);
	CHECK_EQ(lookup_tier(c, blk_key(ns, x)), KVT_TIER_NVME);
	CHECK_EQ(lookup_tier(c, blk_key(ns, x - 1)), -1);
	CHECK_RC(get_blk(c, dst, ns, x, len, want), 0);
	CHECK_RC(get_blk(c, dst, ns, x - 1, len, want), KVT_ENOENT);
	CHECK_EQ(kvtd_stat(c, "t2.blocks"), 1);
	CHECK_EQ(kvtd_stat(c, "t2.demotions"), 1);
	CHECK(kvtd_stat(c, "t1.dropped_unwritten") >= ev + MORE - 1);
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
	CHECK_EQ(kvtd_stat(c, "t1.dropped_unwritten"), 0);
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
	CHECK_EQ(kvtd_stat(c, "t1.dropped_unwritten"), 0);

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

/*
 * A chain cut off from its head (the head deleted) is unreachable by LOOKUP, so
 * write-back does not spend the disk on it: under pressure its blocks leave RAM
 * without being written (t1.orphans counts them), while an intact chain written
 * beside it reaches NVMe whole.
 */
TEST(cut_off_chain_is_evicted_without_being_written)
{
	enum { CHAIN = 16, MORE = 96 };
	const uint32_t ns = 10, ns2 = 11, ns3 = 12;
	const size_t len = 1 * MiB;
	char conf[512];
	conf_for(conf, sizeof(conf), "uring",
		 "nvme_write = back\nnvme_admission = always\nhost_policy = lru\n");
	struct kvtd d;
	kvtd_start(&d, conf);
	kvt_conn *c = kvtd_connect(&d, 30000);
	kvt_region *src = kvtd_region(c, len);
	kvt_key chain[CHAIN];
	put_chain(c, src, ns, CHAIN, len, NULL);
	put_chain(c, src, ns2, CHAIN, len, chain);
	CHECK_EQ(kvtd_stat(c, "t2.demotions"), 0);
	kvt_key head = blk_key(ns, 0);
	int st = 0;
	CHECK_RC(kvt_block_delete(c, &head, 1, &st), 0);

	/* Twice the host tier of unrelated blocks. */
	for (uint64_t i = 0; i < MORE; i++)
		CHECK_RC(put_blk(c, src, 0, ns3, i, len, NULL), 0);
	wait_stat_ge(c, "t1.orphans", CHAIN - 1);
	for (uint64_t i = 1; i < CHAIN; i++)
		CHECK_MSG(lookup_tier(c, blk_key(ns, i)) != KVT_TIER_NVME,
			  "block %llu of the cut-off chain was written to NVMe",
			  (unsigned long long)i);
	CHECK_EQ(kvtd_stat(c, "t1.orphans"), CHAIN - 1);
	/* The intact chain: all on NVMe now, found from its head. */
	size_t found = 0;
	uint8_t tiers[CHAIN];
	CHECK_RC(kvt_block_lookup(c, chain, CHAIN, &found, tiers), 0);
	CHECK_EQ(found, CHAIN);

	CHECK_RC(kvt_region_destroy(src), 0);
	kvt_conn_close(c);
	kvtd_stop_clean(&d);
}

/*
 * A cut-off chain whose blocks write-back has marked while they are still in RAM,
 * then stored again with its head: it is reachable again, so it is written back
 * like any other chain and survives the pressure that follows, whole.
 */
TEST(cut_off_chain_stored_again_is_written_back)
{
	enum { CHAIN = 16, FILL = 46, MORE = 128 }; /* 15 + 46 of a 64 MiB host tier */
	const uint32_t ns = 13, ns3 = 14;
	const size_t len = 1 * MiB;
	char conf[512];
	conf_for(conf, sizeof(conf), "uring",
		 "nvme_write = back\nnvme_admission = always\nhost_policy = lru\n");
	struct kvtd d;
	kvtd_start(&d, conf);
	kvt_conn *c = kvtd_connect(&d, 30000);
	kvt_region *src = kvtd_region(c, len);
	kvt_key chain[CHAIN];
	put_chain(c, src, ns, CHAIN, len, chain);
	kvt_key head = blk_key(ns, 0);
	int st = 0;
	CHECK_RC(kvt_block_delete(c, &head, 1, &st), 0);
	/* The host tier past its free target, not past full: write-back runs and
	 * marks some of the cut-off blocks, nothing is evicted yet. */
	for (uint64_t i = 0; i < FILL; i++)
		CHECK_RC(put_blk(c, src, 0, ns3, i, len, NULL), 0);
	wait_stat_ge(c, "t1.orphans", 1);
	CHECK_EQ(kvtd_stat(c, "t1.evictions"), 0);
	/* Stored again, head first: the whole chain is there. */
	put_chain(c, src, ns, CHAIN, len, NULL);
	size_t found = 0;
	uint8_t tiers[CHAIN];
	CHECK_RC(kvt_block_lookup(c, chain, CHAIN, &found, tiers), 0);
	CHECK_EQ(found, CHAIN);
	/* Twice the host tier more: the chain goes to NVMe, all of it. */
	for (uint64_t i = 1000; i < 1000 + MORE; i++)
		CHECK_RC(put_blk(c, src, 0, ns3, i, len, NULL), 0);
	CHECK_RC(kvt_block_lookup(c, chain, CHAIN, &found, tiers), 0);
	CHECK_MSG(found == CHAIN, "the chain stored again: %zu of %d blocks found after the "
		  "pressure", found, CHAIN);
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

	put_blks(c, src, ns, 0, N1, 1 * MiB, 2 * MiB);
	wait_stat_eq(c, "t2.blocks", N1);
	CHECK_EQ(kvtd_stat(c, "t1.evictions"), 0);
	for (uint64_t i = 0; i < N1; i++)
		CHECK_EQ(lookup_tier(c, blk_key(ns, i)), KVT_TIER_HOST);

	put_blks(c, src, ns, N1, N1 + N2, 1 * MiB, 2 * MiB);
	wait_stat_eq(c, "t2.blocks", N1 + N2);
	CHECK(kvtd_stat(c, "t1.evictions") > 0);
	CHECK_EQ(kvtd_stat(c, "t1.dropped_unwritten"), 0);
	CHECK_EQ(lookup_tier(c, blk_key(ns, 0)), KVT_TIER_NVME);
	get_blks(c, dst, ns, 0, N1 + N2, 1 * MiB, 2 * MiB, want);
	CHECK_EQ(kvtd_stat(c, "t2.demote_failures"), 0);
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
	put_blks(c, src, ns, 0, N, 64 * KiB, 2 * MiB);
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
	finish(&d, c, dst, want);
}

/* ---- memstat ---------------------------------------------------------------------- */



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
	  chain_split_over_two_pipelined_puts_loses_no_child,
	  cut_off_chain_is_evicted_without_being_written, cut_off_chain_stored_again_is_written_back)
