/*
 * itest_evict.c - the host tier under memory pressure: eviction makes room,
 * chains lose their tails before their heads (LOOKUP keeps returning a prefix),
 * pinned blocks survive, ENOSPC when nothing can be evicted, pins vanish with
 * the connection that held them, and eviction hints (HINT) reorder eviction.
 */
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "harness.h"
#include "proto.h"
#include "kvtier.h"
#include "test.h"

#define KiB (1024ull)
#define MiB (1024ull * 1024)

/* A 4 MiB tier of 64 KiB chunks: 64 one-chunk blocks fill it. */
#define TIER_CONF "host_capacity = 4MiB\nhost_chunk = 64KiB\n"
#define BLK (64 * 1024)
#define TIER_BLOCKS 64

static const kvt_block_desc test_desc = { .dtype = KVT_DTYPE_BF16, .tokens = 16 };

static kvt_key test_key(uint32_t ns, uint64_t n)
{
	kvt_key k;
	memset(&k, 0, sizeof(k));
	k.b[0] = 0x65;
	memcpy(k.b + 4, &ns, sizeof(ns));
	memcpy(k.b + 8, &n, sizeof(n));
	return k;
}

static void pattern(uint8_t *p, size_t n, uint64_t seed)
{
	uint64_t x = seed * 0x9e3779b97f4a7c15ull + 99;
	for (size_t i = 0; i < n; i++) {
		x ^= x << 13;
		x ^= x >> 7;
		x ^= x << 17;
		p[i] = (uint8_t)(x >> 24);
	}
}

static int put_one(kvt_conn *c, const kvt_region *r, kvt_key key, const kvt_key *parent,
		   uint64_t off, uint64_t len)
{
	kvt_put_item it = { .key = key, .region = r, .offset = off, .length = len,
			    .desc = test_desc, .status = 12345 };
	if (parent)
		it.parent = *parent;
	int rc = kvt_block_put(c, &it, 1);
	if (rc != 0 && rc != KVT_EPARTIAL)
		return rc;
	CHECK_EQ(rc, it.status ? KVT_EPARTIAL : 0);
	return it.status;
}

static bool present(kvt_conn *c, kvt_key k)
{
	size_t found = 99;
	CHECK_RC(kvt_block_lookup(c, &k, 1, &found, NULL), 0);
	CHECK(found <= 1);
	return found == 1;
}

/* GET key into dst at off and compare with want. */
static void check_block(kvt_conn *c, const kvt_region *dst, uint64_t off, kvt_key key,
			const uint8_t *want, size_t len)
{
	kvt_get_item g = { .key = key, .region = dst, .offset = off, .capacity = len };
	int rc = kvt_block_get(c, &g, 1);
	CHECK_MSG(rc == 0 && g.status == 0, "GET: rc %s, status %s", test_errname(rc),
		  test_errname(g.status));
	CHECK_EQ(g.length, len);
	CHECK_MSG(memcmp((uint8_t *)kvt_region_base(dst) + off, want, len) == 0,
		  "block bytes differ");
}

/* ------------------------------------------------------------------------ */

TEST(filling_past_capacity_evicts_old_blocks)
{
	enum { N = 3 * TIER_BLOCKS };
	struct kvtd d;
	kvtd_start(&d, TIER_CONF);
	kvt_conn *c = kvtd_connect(&d, 30000);
	CHECK_EQ(kvtd_stat(c, "t1.capacity_bytes"), 4 * MiB);
	kvt_region *r = kvtd_region(c, N * BLK);
	uint8_t *base = kvt_region_base(r);
	pattern(base, N * BLK, 1);
	for (int i = 0; i < N; i++)
		CHECK_RC(put_one(c, r, test_key(1, (uint64_t)i), NULL, (uint64_t)i * BLK, BLK), 0);
	uint64_t evictions = kvtd_stat(c, "t1.evictions");
	CHECK_MSG(evictions >= N - TIER_BLOCKS, "only %llu evictions after %d blocks",
		  (unsigned long long)evictions, N);
	CHECK_MSG(kvtd_stat(c, "t1.evicted_bytes") >= (uint64_t)(N - TIER_BLOCKS) * BLK,
		  "t1.evicted_bytes too small");
	CHECK(kvtd_stat(c, "t1.used_bytes") <= 4 * MiB);
	CHECK(kvtd_stat(c, "t1.blocks") <= TIER_BLOCKS);
	/* The newest block is there, with its bytes; the oldest is gone. */
	CHECK(present(c, test_key(1, N - 1)));
	CHECK(!present(c, test_key(1, 0)));
	kvt_region *dst = kvtd_region(c, BLK);
	check_block(c, dst, 0, test_key(1, N - 1), base + (size_t)(N - 1) * BLK, BLK);
	/* Whatever survived is intact. */
	int alive = 0;
	for (int i = 0; i < N; i++) {
		if (!present(c, test_key(1, (uint64_t)i)))
			continue;
		alive++;
		check_block(c, dst, 0, test_key(1, (uint64_t)i), base + (size_t)i * BLK, BLK);
	}
	CHECK(alive > 0 && alive <= TIER_BLOCKS);
	CHECK_RC(kvt_region_destroy(dst), 0);
	CHECK_RC(kvt_region_destroy(r), 0);
	kvt_conn_close(c);
	kvtd_stop_clean(&d);
}

TEST(chain_loses_its_tail_before_its_head)
{
	enum { L = 32, PRESSURE = TIER_BLOCKS - L + 8 };
	struct kvtd d;
	kvtd_start(&d, TIER_CONF);
	kvt_conn *c = kvtd_connect(&d, 30000);
	kvt_region *r = kvtd_region(c, (L + PRESSURE) * BLK);
	uint8_t *base = kvt_region_base(r);
	pattern(base, (L + PRESSURE) * BLK, 2);

	kvt_salt_params sp = { .model_id = "itest/evict", .block_tokens = 4 };
	kvt_key salt, chain[L];
	CHECK_RC(kvt_key_salt(&sp, &salt), 0);
	for (int i = 0; i < L; i++) {
		uint32_t toks[4] = { (uint32_t)i, 1, 2, 3 };
		kvt_key_chain(&salt, i ? &chain[i - 1] : NULL, toks, 4, &chain[i]);
		CHECK_RC(put_one(c, r, chain[i], i ? &chain[i - 1] : NULL, (uint64_t)i * BLK, BLK),
			 0);
	}
	size_t found = 0;
	CHECK_RC(kvt_block_lookup(c, chain, L, &found, NULL), 0);
	CHECK_EQ(found, L);

	/* Pressure the daemon can only relieve from the chain: every other block is
	 * pinned as soon as it is stored, so 8 chain blocks must go. */
	for (int i = 0; i < PRESSURE; i++) {
		kvt_key k = test_key(2, (uint64_t)i);
		CHECK_RC(put_one(c, r, k, NULL, (uint64_t)(L + i) * BLK, BLK), 0);
		CHECK_RC(kvt_block_pin(c, &k, 1, NULL), 0);
	}
	CHECK_MSG(kvtd_stat(c, "t1.evictions") >= 8, "no evictions under pressure");
	CHECK_RC(kvt_block_lookup(c, chain, L, &found, NULL), 0);
	test_log("chain prefix after pressure: %zu of %d", found, L);
	CHECK_MSG(found >= 1, "the chain's head was evicted");
	CHECK_MSG(found < L, "nothing of the chain was evicted");
	/* No holes: everything before found is there, everything after is gone. */
	for (int i = 0; i < L; i++)
		CHECK_MSG(present(c, chain[i]) == ((size_t)i < found),
			  "chain block %d is %s, prefix is %zu", i,
			  present(c, chain[i]) ? "present" : "missing", found);
	kvt_region *dst = kvtd_region(c, BLK);
	check_block(c, dst, 0, chain[0], base, BLK);
	CHECK_RC(kvt_region_destroy(dst), 0);
	CHECK_RC(kvt_region_destroy(r), 0);
	kvt_conn_close(c);
	kvtd_stop_clean(&d);
}

TEST(pinned_blocks_survive_pressure)
{
	enum { P = 16, N = 4 * TIER_BLOCKS };
	struct kvtd d;
	kvtd_start(&d, TIER_CONF);
	kvt_conn *c = kvtd_connect(&d, 30000);
	kvt_region *r = kvtd_region(c, (P + 1) * BLK);
	uint8_t *base = kvt_region_base(r);
	pattern(base, (P + 1) * BLK, 3);
	kvt_key pinned[P];
	for (int i = 0; i < P; i++) {
		pinned[i] = test_key(3, (uint64_t)i);
		CHECK_RC(put_one(c, r, pinned[i], NULL, (uint64_t)i * BLK, BLK), 0);
	}
	int st[P];
	CHECK_RC(kvt_block_pin(c, pinned, P, st), 0);
	CHECK_EQ(kvtd_stat(c, "t1.pinned_blocks"), P);
	for (int i = 0; i < N; i++)
		CHECK_RC(put_one(c, r, test_key(4, (uint64_t)i), NULL, (uint64_t)P * BLK, BLK), 0);
	CHECK(kvtd_stat(c, "t1.evictions") >= N - (TIER_BLOCKS - P));
	size_t found = 0;
	CHECK_RC(kvt_block_lookup(c, pinned, P, &found, NULL), 0);
	CHECK_EQ(found, P);
	kvt_region *dst = kvtd_region(c, BLK);
	for (int i = 0; i < P; i++)
		check_block(c, dst, 0, pinned[i], base + (size_t)i * BLK, BLK);
	/* Unpinned, they are ordinary blocks again and go under pressure. */
	CHECK_RC(kvt_block_unpin(c, pinned, P, st), 0);
	CHECK_EQ(kvtd_stat(c, "t1.pinned_blocks"), 0);
	for (int i = 0; i < N; i++)
		CHECK_RC(put_one(c, r, test_key(5, (uint64_t)i), NULL, (uint64_t)P * BLK, BLK), 0);
	CHECK_RC(kvt_block_lookup(c, pinned, P, &found, NULL), 0);
	CHECK_MSG(found < P, "unpinned blocks were never evicted");
	CHECK_RC(kvt_region_destroy(dst), 0);
	CHECK_RC(kvt_region_destroy(r), 0);
	kvt_conn_close(c);
	kvtd_stop_clean(&d);
}

/* Store and pin one-chunk blocks until the tier refuses; returns how many fit. */
static int fill_pinned(kvt_conn *c, const kvt_region *r, uint32_t ns, int *last_rc)
{
	for (int i = 0; i < 4 * TIER_BLOCKS; i++) {
		kvt_key k = test_key(ns, (uint64_t)i);
		int rc = put_one(c, r, k, NULL, 0, BLK);
		if (rc != 0) {
			*last_rc = rc;
			return i;
		}
		CHECK_RC(kvt_block_pin(c, &k, 1, NULL), 0);
	}
	*last_rc = 0;
	return 4 * TIER_BLOCKS;
}

TEST(everything_pinned_is_enospc)
{
	struct kvtd d;
	kvtd_start(&d, TIER_CONF);
	kvt_conn *c = kvtd_connect(&d, 30000);
	kvt_region *r = kvtd_region(c, 1 * MiB);
	pattern(kvt_region_base(r), 1 * MiB, 4);
	int rc = 0;
	int n = fill_pinned(c, r, 6, &rc);
	CHECK_RC(rc, KVT_ENOSPC);
	test_log("%d pinned one-chunk blocks fit in the tier", n);
	CHECK_EQ(n, TIER_BLOCKS);
	CHECK_EQ(kvtd_stat(c, "t1.pinned_blocks"), n);
	/* A refused PUT stored nothing and left no pending reservation. */
	CHECK(!present(c, test_key(6, (uint64_t)n)));
	CHECK_EQ(kvtd_stat(c, "t1.pending"), 0);
	CHECK_EQ(kvtd_stat(c, "t1.blocks"), n);
	/* Smaller blocks do not fit either, and a present key is still fine. */
	CHECK_RC(put_one(c, r, test_key(7, 1), NULL, 0, 1), KVT_ENOSPC);
	CHECK_RC(put_one(c, r, test_key(6, 0), NULL, 0, BLK), 0);
	/* One unpin makes exactly one block evictable. */
	kvt_key k0 = test_key(6, 0);
	CHECK_RC(kvt_block_unpin(c, &k0, 1, NULL), 0);
	kvt_key k72 = test_key(7, 2);
	CHECK_RC(put_one(c, r, k72, NULL, 0, BLK), 0);
	CHECK(!present(c, k0));
	CHECK_RC(kvt_block_pin(c, &k72, 1, NULL), 0);
	CHECK_RC(put_one(c, r, test_key(7, 3), NULL, 0, BLK), KVT_ENOSPC);
	CHECK_RC(kvt_region_destroy(r), 0);
	kvt_conn_close(c);
	kvtd_stop_clean(&d);
}

TEST(pins_are_dropped_when_their_connection_closes)
{
	struct kvtd d;
	kvtd_start(&d, TIER_CONF);
	kvt_conn *a = kvtd_connect(&d, 30000);
	kvt_conn *b = kvtd_connect(&d, 30000);
	kvt_region *ra = kvtd_region(a, 1 * MiB);
	kvt_region *rb = kvtd_region(b, 1 * MiB);
	pattern(kvt_region_base(ra), 1 * MiB, 5);
	int rc = 0;
	int n = fill_pinned(a, ra, 8, &rc);
	CHECK_RC(rc, KVT_ENOSPC);
	CHECK(n > 0);
	CHECK_RC(put_one(b, rb, test_key(9, 0), NULL, 0, BLK), KVT_ENOSPC);
	/* B's own pins of A's blocks count separately: pin one from B too. */
	kvt_key k0 = test_key(8, 0);
	CHECK_RC(kvt_block_pin(b, &k0, 1, NULL), 0);
	CHECK_RC(kvt_region_destroy(ra), 0);
	kvt_conn_close(a);
	/* The daemon notices the close asynchronously: poll, bounded. */
	uint64_t pinned = 0;
	for (int i = 0; i < 1000; i++) {
		pinned = kvtd_stat(b, "t1.pinned_blocks");
		if (pinned == 1)
			break;
		test_sleep_ms(10);
	}
	CHECK_EQ(pinned, 1);
	for (int i = 0; i < TIER_BLOCKS - 1; i++)
		CHECK_RC(put_one(b, rb, test_key(9, (uint64_t)i), NULL, 0, BLK), 0);
	/* The block B pinned is still there; the others could be evicted. */
	CHECK(present(b, k0));
	int st = 0;
	CHECK_RC(kvt_block_delete(b, &k0, 1, &st), KVT_EPARTIAL);
	CHECK_RC(st, KVT_EPINNED);
	CHECK_RC(kvt_region_destroy(rb), 0);
	kvt_conn_close(b);
	kvtd_stop_clean(&d);
}

TEST(pins_belong_to_their_connection)
{
	struct kvtd d;
	kvtd_start(&d, TIER_CONF);
	kvt_conn *a = kvtd_connect(&d, 30000);
	kvt_conn *b = kvtd_connect(&d, 30000);
	kvt_region *r = kvtd_region(a, 1 * MiB);
	kvt_key k = test_key(10, 1);
	CHECK_RC(put_one(a, r, k, NULL, 0, BLK), 0);
	CHECK_RC(kvt_block_pin(a, &k, 1, NULL), 0);
	/* B cannot drop A's pin, so B cannot delete the block either. */
	int st = 1;
	CHECK_RC(kvt_block_unpin(b, &k, 1, &st), KVT_EPARTIAL);
	CHECK_RC(st, KVT_ENOENT);
	CHECK_RC(kvt_block_delete(b, &k, 1, &st), KVT_EPARTIAL);
	CHECK_RC(st, KVT_EPINNED);
	/* Both pin, A lets go: still pinned by B. */
	CHECK_RC(kvt_block_pin(b, &k, 1, NULL), 0);
	CHECK_RC(kvt_block_unpin(a, &k, 1, NULL), 0);
	CHECK_RC(kvt_block_delete(a, &k, 1, &st), KVT_EPARTIAL);
	CHECK_RC(st, KVT_EPINNED);
	CHECK_RC(kvt_block_unpin(b, &k, 1, NULL), 0);
	CHECK_EQ(kvtd_stat(a, "t1.pinned_blocks"), 0);
	CHECK_RC(kvt_block_delete(b, &k, 1, &st), 0);
	CHECK(!present(a, k));
	CHECK_RC(kvt_region_destroy(r), 0);
	kvt_conn_close(b);
	kvt_conn_close(a);
	kvtd_stop_clean(&d);
}

/* Keys [0, n) of namespace ns: how many are present. */
static int count_present(kvt_conn *c, uint32_t ns, int n)
{
	int got = 0;
	for (int i = 0; i < n; i++)
		got += present(c, test_key(ns, (uint64_t)i));
	return got;
}

/* Plain LRU under the hints, so that which ordinary block goes is plain too. */
#define HINT_CONF TIER_CONF "host_policy = lru\n"

TEST(retained_blocks_outlive_pressure_and_released_ones_go_first)
{
	enum { R = 16, L = 8 };
	struct kvtd d;
	kvtd_start(&d, HINT_CONF);
	kvt_conn *c = kvtd_connect(&d, 30000);
	kvt_region *r = kvtd_region(c, (R + 1) * BLK);
	uint8_t *base = kvt_region_base(r);
	pattern(base, (R + 1) * BLK, 11);
	/* R blocks to retain, then L to release, then filler up to the brim. */
	kvt_key keep[R], done[L];
	for (int i = 0; i < R; i++) {
		keep[i] = test_key(20, (uint64_t)i);
		CHECK_RC(put_one(c, r, keep[i], NULL, (uint64_t)i * BLK, BLK), 0);
	}
	for (int i = 0; i < L; i++) {
		done[i] = test_key(21, (uint64_t)i);
		CHECK_RC(put_one(c, r, done[i], NULL, (uint64_t)R * BLK, BLK), 0);
	}
	for (int i = 0; i < TIER_BLOCKS - R - L; i++)
		CHECK_RC(put_one(c, r, test_key(22, (uint64_t)i), NULL, (uint64_t)R * BLK, BLK), 0);
	int st[R];
	CHECK_RC(kvt_block_hint(c, keep, R, KVT_HINT_RETAIN, 600000, st), 0);
	CHECK_RC(kvt_block_hint(c, done, L, KVT_HINT_RELEASE, 0, st), 0);
	CHECK_EQ(kvtd_stat(c, "t1.retained_blocks"), R);
	CHECK_EQ(kvtd_stat(c, "t1.retained_bytes"), R * BLK);
	CHECK_EQ(kvtd_stat(c, "t1.released_blocks"), L);
	/* memstat shows them (the sanitizer build has no memstat). */
	if (access(kvtd_bin("memstat"), X_OK) == 0) {
		static char out[1 << 16];
		char cmd[1024];
		snprintf(cmd, sizeof(cmd), "%s -s %s", kvtd_bin("memstat"), d.sock);
		CHECK_EQ(run_capture(cmd, out, sizeof(out)), 0);
		CHECK_MSG(strstr(out, "hints: retained 16 (1.0 MiB)  released 8"),
			  "memstat does not show the hints");
	}
	/* The released blocks are the newest but go first. */
	for (int i = 0; i < L; i++)
		CHECK_RC(put_one(c, r, test_key(23, (uint64_t)i), NULL, (uint64_t)R * BLK, BLK), 0);
	CHECK_EQ(count_present(c, 21, L), 0);
	CHECK_EQ(kvtd_stat(c, "t1.evictions"), L);
	/* Four tiers' worth of new blocks later, the retained (and oldest) ones are
	 * all still there, byte for byte. */
	for (int i = 0; i < 4 * TIER_BLOCKS; i++)
		CHECK_RC(put_one(c, r, test_key(24, (uint64_t)i), NULL, (uint64_t)R * BLK, BLK), 0);
	CHECK_EQ(count_present(c, 22, TIER_BLOCKS - R - L), 0);
	kvt_region *dst = kvtd_region(c, BLK);
	for (int i = 0; i < R; i++)
		check_block(c, dst, 0, keep[i], base + (size_t)i * BLK, BLK);
	CHECK_EQ(kvtd_stat(c, "t1.retain_evicted"), 0);
	/* Cleared, they are ordinary blocks and go under pressure. */
	CHECK_RC(kvt_block_hint(c, keep, R, KVT_HINT_NONE, 0, st), 0);
	CHECK_EQ(kvtd_stat(c, "t1.retained_blocks"), 0);
	for (int i = 0; i < 2 * TIER_BLOCKS; i++)
		CHECK_RC(put_one(c, r, test_key(25, (uint64_t)i), NULL, (uint64_t)R * BLK, BLK), 0);
	CHECK_EQ(count_present(c, 20, R), 0);
	/* A key the tier does not hold is ENOENT, and the others still apply. */
	kvt_key two[2] = { test_key(25, 2 * TIER_BLOCKS - 1), test_key(99, 1) };
	CHECK_RC(kvt_block_hint(c, two, 2, KVT_HINT_RETAIN, 1000, st), KVT_EPARTIAL);
	CHECK_RC(st[0], 0);
	CHECK_RC(st[1], KVT_ENOENT);
	CHECK_RC(kvt_block_hint(c, two, 2, 3, 1000, st), KVT_EINVAL);
	/* A pinned block takes no hint. */
	CHECK_RC(kvt_block_pin(c, two, 1, NULL), 0);
	CHECK_RC(kvt_block_hint(c, two, 1, KVT_HINT_RELEASE, 0, st), KVT_EPARTIAL);
	CHECK_RC(st[0], KVT_EPINNED);
	CHECK_EQ(kvtd_stat(c, "t1.released_blocks"), 0);
	CHECK_RC(kvt_block_unpin(c, two, 1, NULL), 0);
	CHECK_RC(kvt_region_destroy(dst), 0);
	CHECK_RC(kvt_region_destroy(r), 0);
	kvt_conn_close(c);
	kvtd_stop_clean(&d);
}

TEST(retain_share_and_deadline_bound_what_retain_keeps)
{
	/* host_retain_share = 25: 16 of the 64 blocks may be retained. Retaining 32
	 * keeps the 16 with the farthest deadlines; a short retain runs out. */
	struct kvtd d;
	kvtd_start(&d, HINT_CONF "host_retain_share = 25\n");
	kvt_conn *c = kvtd_connect(&d, 30000);
	kvt_region *r = kvtd_region(c, BLK);
	pattern(kvt_region_base(r), BLK, 12);
	kvt_key k[32];
	for (int i = 0; i < 32; i++) {
		k[i] = test_key(30, (uint64_t)i);
		CHECK_RC(put_one(c, r, k[i], NULL, 0, BLK), 0);
	}
	CHECK_RC(kvt_block_hint(c, k, 16, KVT_HINT_RETAIN, 600000, NULL), 0);
	CHECK_RC(kvt_block_hint(c, k + 16, 16, KVT_HINT_RETAIN, 900000, NULL), 0);
	CHECK_EQ(kvtd_stat(c, "t1.retained_blocks"), 16);
	CHECK_EQ(kvtd_stat(c, "t1.retain_capped"), 16);
	for (int i = 0; i < 4 * TIER_BLOCKS; i++)
		CHECK_RC(put_one(c, r, test_key(31, (uint64_t)i), NULL, 0, BLK), 0);
	CHECK_EQ(count_present(c, 30, 16), 0);
	for (int i = 16; i < 32; i++)
		CHECK(present(c, k[i]));
	/* 50 ms of retention is over well before the next hundred PUTs finish being
	 * needed: it expires, and the blocks go like any other. */
	CHECK_RC(kvt_block_hint(c, k + 16, 16, KVT_HINT_RETAIN, 50, NULL), 0);
	test_sleep_ms(100);
	for (int i = 0; i < 2 * TIER_BLOCKS; i++)
		CHECK_RC(put_one(c, r, test_key(32, (uint64_t)i), NULL, 0, BLK), 0);
	CHECK(kvtd_stat(c, "t1.retain_expired") >= 16);
	CHECK_EQ(count_present(c, 30, 32), 0);
	CHECK_RC(kvt_region_destroy(r), 0);
	kvt_conn_close(c);
	kvtd_stop_clean(&d);
}

TEST(hint_with_bad_parameters_is_refused)
{
	struct kvtd d;
	kvtd_start(&d, TIER_CONF);
	int s = raw_connect(d.sock);
	raw_hello(s);
	uint8_t body[KVT_HINT_PARAMS_SIZE + 8 + KVT_KEY_SIZE];
	memset(body, 0, sizeof(body));
	kvt_put32(body + KVT_HINT_PARAMS_SIZE, 1); /* one key */
	body[6] = 1;                               /* reserved byte set */
	struct kvt_hdr h;
	uint8_t rep[64];
	CHECK_RC(raw_send_frame(s, KVT_OP_HINT, 0, 7, body, sizeof(body)), 0);
	CHECK_RC(raw_recv_frame(s, &h, rep, sizeof(rep), 10000), 0);
	CHECK_EQ(h.request_id, 7);
	CHECK_RC(h.status, KVT_ERESERVED);
	body[6] = 0;
	body[4] = KVT_HINT_RELEASE + 1; /* no such hint */
	CHECK_RC(raw_send_frame(s, KVT_OP_HINT, 0, 8, body, sizeof(body)), 0);
	CHECK_RC(raw_recv_frame(s, &h, rep, sizeof(rep), 10000), 0);
	CHECK_RC(h.status, KVT_EBADMSG);
	/* Short: parameters only, and a batch that claims more keys than it has. */
	CHECK_RC(raw_send_frame(s, KVT_OP_HINT, 0, 9, body, 4), 0);
	CHECK_RC(raw_recv_frame(s, &h, rep, sizeof(rep), 10000), 0);
	CHECK_RC(h.status, KVT_EBADMSG);
	body[4] = KVT_HINT_RETAIN;
	kvt_put32(body + KVT_HINT_PARAMS_SIZE, 2);
	CHECK_RC(raw_send_frame(s, KVT_OP_HINT, 0, 10, body, sizeof(body)), 0);
	CHECK_RC(raw_recv_frame(s, &h, rep, sizeof(rep), 10000), 0);
	CHECK_RC(h.status, KVT_EBADMSG);
	/* Well formed, for a key nobody stored: answered per key. */
	kvt_put32(body + KVT_HINT_PARAMS_SIZE, 1);
	CHECK_RC(raw_send_frame(s, KVT_OP_HINT, 0, 11, body, sizeof(body)), 0);
	CHECK_RC(raw_recv_frame(s, &h, rep, sizeof(rep), 10000), 0);
	CHECK_RC(h.status, 0);
	CHECK_EQ(h.body_len, 12);
	CHECK_RC((int32_t)kvt_get32(rep + 8), KVT_ENOENT);
	/* The connection is still fine. */
	CHECK_RC(raw_send_frame(s, KVT_OP_PING, 0, 12, NULL, 0), 0);
	CHECK_RC(raw_recv_frame(s, &h, rep, sizeof(rep), 10000), 0);
	CHECK_RC(h.status, 0);
	close(s);
	kvtd_stop_clean(&d);
}

TEST_MAIN(filling_past_capacity_evicts_old_blocks, chain_loses_its_tail_before_its_head,
	  pinned_blocks_survive_pressure, everything_pinned_is_enospc,
	  pins_are_dropped_when_their_connection_closes, pins_belong_to_their_connection,
	  retained_blocks_outlive_pressure_and_released_ones_go_first,
	  retain_share_and_deadline_bound_what_retain_keeps, hint_with_bad_parameters_is_refused)
