/*
 * itest_basic.c - the everyday requests against a real kvtierd through the public
 * client API: HELLO, PING, regions, PUT/GET byte round trips, batches with mixed
 * per-item results, LOOKUP prefix counting, DELETE, PIN, idempotent PUT, ENOBUFS,
 * range and region errors, and STATS.
 */
#include <stdint.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "harness.h"
#include "kvtier.h"
#include "test.h"

#define KiB (1024ull)
#define MiB (1024ull * 1024)
#define GiB (1024ull * 1024 * 1024)

static const kvt_block_desc test_desc = {
	.dtype = KVT_DTYPE_BF16, .layout = 3, .layers = 32, .tokens = 16,
};

static kvt_conn *open_conn(const struct kvtd *d)
{
	kvt_conn *c = NULL;
	CHECK_RC(kvt_conn_open(d->sock, &c), 0);
	CHECK(c != NULL);
	/* A hung daemon fails the call instead of the whole case timing out. */
	kvt_conn_set_timeout(c, 30000);
	return c;
}

/* A distinct non-zero key per (namespace, n). */
static kvt_key test_key(uint32_t ns, uint64_t n)
{
	kvt_key k;
	memset(&k, 0, sizeof(k));
	k.b[0] = 0x6b;
	memcpy(k.b + 4, &ns, sizeof(ns));
	memcpy(k.b + 8, &n, sizeof(n));
	return k;
}

/* Deterministic bytes that differ for every seed and position. */
static void pattern(uint8_t *p, size_t n, uint64_t seed)
{
	uint64_t x = seed * 0x9e3779b97f4a7c15ull + 0x1234567;
	for (size_t i = 0; i < n; i++) {
		x ^= x << 13;
		x ^= x >> 7;
		x ^= x << 17;
		p[i] = (uint8_t)(x >> 24);
	}
}

static void check_bytes(const uint8_t *got, const uint8_t *want, size_t n, const char *what)
{
	for (size_t i = 0; i < n; i++)
		if (got[i] != want[i])
			test_fail(__FILE__, __LINE__, "%s: byte %zu of %zu is %#x, expected %#x",
				  what, i, n, got[i], want[i]);
}

static void check_fill(const uint8_t *p, size_t n, uint8_t v, const char *what)
{
	for (size_t i = 0; i < n; i++)
		if (p[i] != v)
			test_fail(__FILE__, __LINE__, "%s: byte %zu is %#x, expected untouched %#x",
				  what, i, p[i], v);
}

/* PUT one block; returns the item's status (or the request-level error). */
static int put1(kvt_conn *c, const kvt_region *r, kvt_key key, uint64_t off, uint64_t len)
{
	kvt_put_item it = { .key = key, .region = r, .offset = off, .length = len,
			    .desc = test_desc, .status = 12345 };
	int rc = kvt_block_put(c, &it, 1);
	if (rc != 0 && rc != KVT_EPARTIAL)
		return rc;
	CHECK_MSG(rc == (it.status ? KVT_EPARTIAL : 0), "put rc %d (%s) vs item status %d (%s)",
		  rc, test_errname(rc), it.status, test_errname(it.status));
	return it.status;
}

/* GET one block into it (filled in); returns the item's status or request error. */
static int get1(kvt_conn *c, kvt_get_item *it)
{
	it->status = 12345;
	int rc = kvt_block_get(c, it, 1);
	if (rc != 0 && rc != KVT_EPARTIAL)
		return rc;
	CHECK_MSG(rc == (it->status ? KVT_EPARTIAL : 0), "get rc %d (%s) vs item status %d (%s)",
		  rc, test_errname(rc), it->status, test_errname(it->status));
	return it->status;
}

static size_t lookup_n(kvt_conn *c, const kvt_key *keys, size_t n)
{
	size_t found = 999999;
	CHECK_RC(kvt_block_lookup(c, keys, n, &found, NULL), 0);
	CHECK(found <= n);
	return found;
}

/* ------------------------------------------------------------------------ */

TEST(hello_reports_default_limits_and_tenant)
{
	struct kvtd d;
	kvtd_start(&d, NULL);
	kvt_conn *c = open_conn(&d);
	const kvt_server_info *si = kvt_conn_server(c);
	CHECK(si != NULL);
	CHECK_EQ(si->version, 1);
	CHECK_EQ(si->tenant, geteuid());
	CHECK_EQ(si->max_frame, 4 * MiB);
	CHECK_EQ(si->max_inflight, 64);
	CHECK_EQ(si->max_batch, 4096);
	CHECK_EQ(si->max_regions, 64);
	CHECK_EQ(si->max_region_size, 64 * GiB);
	CHECK_EQ(si->max_block_size, 1 * GiB);
	CHECK_MSG(memchr(si->server, 0, sizeof(si->server)) != NULL, "server name not terminated");
	CHECK_MSG(strstr(si->server, "kvtierd") != NULL, "server name \"%s\" lacks kvtierd",
		  si->server);
	CHECK_RC(kvt_ping(c), 0);
	/* socket_mode = 0666 from the harness's configuration. */
	struct stat sb;
	CHECK(stat(d.sock, &sb) == 0);
	CHECK(S_ISSOCK(sb.st_mode));
	CHECK_EQ(sb.st_mode & 07777, 0666);
	kvt_conn_close(c);
	kvtd_stop_clean(&d);
}

TEST(hello_reports_configured_limits)
{
	struct kvtd d;
	kvtd_start(&d, "max_frame = 256KiB\n"
		       "max_inflight = 7\n"
		       "max_batch = 100\n"
		       "max_regions = 3\n"
		       "max_region_size = 1GiB\n"
		       "max_block_size = 2MiB\n");
	kvt_conn *c = open_conn(&d);
	const kvt_server_info *si = kvt_conn_server(c);
	CHECK_EQ(si->max_frame, 256 * KiB);
	CHECK_EQ(si->max_inflight, 7);
	CHECK_EQ(si->max_batch, 100);
	CHECK_EQ(si->max_regions, 3);
	CHECK_EQ(si->max_region_size, 1 * GiB);
	CHECK_EQ(si->max_block_size, 2 * MiB);
	kvt_conn_close(c);
	kvtd_stop_clean(&d);
}

TEST(ping_round_trips_repeatedly)
{
	struct kvtd d;
	kvtd_start(&d, NULL);
	kvt_conn *c = open_conn(&d);
	for (int i = 0; i < 200; i++)
		CHECK_RC(kvt_ping(c), 0);
	/* Two connections at once are independent. */
	kvt_conn *c2 = open_conn(&d);
	CHECK_RC(kvt_ping(c2), 0);
	CHECK_RC(kvt_ping(c), 0);
	kvt_conn_close(c2);
	CHECK_RC(kvt_ping(c), 0);
	kvt_conn_close(c);
	kvtd_stop_clean(&d);
}

TEST(region_ids_start_at_one_and_are_never_reused)
{
	struct kvtd d;
	kvtd_start(&d, NULL);
	kvt_conn *c = open_conn(&d);
	kvt_region *r1 = kvtd_region(c, 4096);
	kvt_region *r2 = kvtd_region(c, 100000);
	uint32_t id1 = kvt_region_id(r1), id2 = kvt_region_id(r2);
	CHECK(id1 != 0 && id2 != 0 && id1 != id2);
	CHECK_EQ(kvt_region_size(r2), 100000);
	CHECK(kvt_region_base(r2) != NULL);
	check_fill(kvt_region_base(r2), 100000, 0, "new region");
	CHECK_RC(kvt_region_destroy(r1), 0);
	kvt_region *r3 = kvtd_region(c, 4096);
	uint32_t id3 = kvt_region_id(r3);
	CHECK_MSG(id3 != id1 && id3 != id2, "region id %u reused", id3);
	/* Ids are per connection: a second connection starts at 1 again. */
	kvt_conn *c2 = open_conn(&d);
	kvt_region *q1 = kvtd_region(c2, 4096);
	uint32_t qid = kvt_region_id(q1);
	kvt_region *bad = NULL;
	CHECK_RC(kvt_region_create(c, 0, &bad), KVT_EINVAL);
	CHECK(bad == NULL);
	CHECK_RC(kvt_region_destroy(q1), 0);
	kvt_conn_close(c2);
	CHECK_RC(kvt_region_destroy(r2), 0);
	CHECK_RC(kvt_region_destroy(r3), 0);
	CHECK_RC(kvt_ping(c), 0);
	kvt_conn_close(c);
	kvtd_stop_clean(&d);
	/* The numbering the spec promises: 1, 2, 3 on one connection, 1 on the next. */
	CHECK_EQ(id1, 1);
	CHECK_EQ(id2, 2);
	CHECK_EQ(id3, 3);
	CHECK_EQ(qid, 1);
}

TEST(put_get_round_trip_many_sizes)
{
	static const uint64_t sizes[] = { 1,	      2,	     7,		  4095,
					  4096,	      4097,	     65535,	  65536,
					  65537,      131073,	     1000003,	  2 * MiB + 1 };
	const size_t nsizes = sizeof(sizes) / sizeof(sizes[0]);
	struct kvtd d;
	kvtd_start(&d, NULL);
	kvt_conn *c = open_conn(&d);
	kvt_region *src = kvtd_region(c, 8 * MiB);
	kvt_region *dst = kvtd_region(c, 8 * MiB);
	uint8_t *s = kvt_region_base(src), *t = kvt_region_base(dst);

	/* One at a time: odd source and destination offsets, canaries around the
	 * destination to prove exactly length bytes were written. */
	for (size_t i = 0; i < nsizes; i++) {
		uint64_t len = sizes[i];
		pattern(s + 13, len, 100 + i);
		CHECK_RC(put1(c, src, test_key(1, i), 13, len), 0);
		memset(s + 13, 0xcc, len); /* the daemon copied before answering */
		memset(t, 0xa5, len + 200);
		kvt_get_item g = { .key = test_key(1, i), .region = dst, .offset = 5,
				   .capacity = len + 100 };
		CHECK_RC(get1(c, &g), 0);
		CHECK_EQ(g.length, len);
		CHECK(memcmp(&g.desc, &test_desc, sizeof(test_desc)) == 0);
		uint8_t *want = malloc(len);
		CHECK(want != NULL);
		pattern(want, len, 100 + i);
		check_bytes(t + 5, want, len, "GET bytes");
		free(want);
		check_fill(t, 5, 0xa5, "before the GET destination");
		check_fill(t + 5 + len, 100, 0xa5, "after the GET destination");
	}

	/* All at once in one batch, packed back to back in the destination. */
	kvt_get_item g[sizeof(sizes) / sizeof(sizes[0])];
	memset(g, 0, sizeof(g));
	memset(t, 0xa5, 8 * MiB);
	uint64_t off = 1;
	for (size_t i = 0; i < nsizes; i++) {
		g[i].key = test_key(1, i);
		g[i].region = dst;
		g[i].offset = off;
		g[i].capacity = sizes[i];
		off += sizes[i];
	}
	CHECK_RC(kvt_block_get(c, g, nsizes), 0);
	for (size_t i = 0; i < nsizes; i++) {
		CHECK_EQ(g[i].status, 0);
		CHECK_EQ(g[i].length, sizes[i]);
		uint8_t *want = malloc(sizes[i]);
		CHECK(want != NULL);
		pattern(want, sizes[i], 100 + i);
		check_bytes(t + g[i].offset, want, sizes[i], "batched GET bytes");
		free(want);
	}
	check_fill(t + off, 4096, 0xa5, "after the batched GET");

	CHECK_RC(kvt_region_destroy(src), 0);
	CHECK_RC(kvt_region_destroy(dst), 0);
	kvt_conn_close(c);
	kvtd_stop_clean(&d);
}

TEST(put_batch_reports_each_item)
{
	struct kvtd d;
	kvtd_start(&d, "max_block_size = 1MiB\n");
	kvt_conn *c = open_conn(&d);
	kvt_conn *other = open_conn(&d);
	kvt_region *r = kvtd_region(c, 2 * MiB);
	kvt_region *foreign = kvtd_region(other, 2 * MiB);
	uint8_t *base = kvt_region_base(r);
	pattern(base, 2 * MiB, 7);

	enum { N = 200 };
	static kvt_put_item it[N];
	int want[N];
	memset(it, 0, sizeof(it));
	for (int i = 0; i < N; i++) {
		it[i].key = test_key(2, (uint64_t)i);
		it[i].region = r;
		it[i].offset = (uint64_t)i * 1000;
		it[i].length = 1000 + (uint64_t)i;
		it[i].desc = test_desc;
		it[i].status = 12345;
		want[i] = 0;
		switch (i % 10) {
		case 1: /* a region of another connection is unknown here */
			it[i].region = foreign;
			want[i] = KVT_EREGION;
			break;
		case 2: /* one byte past the end */
			it[i].offset = 2 * MiB - 10;
			it[i].length = 11;
			want[i] = KVT_ERANGE;
			break;
		case 3:
			it[i].length = 0;
			want[i] = KVT_EINVAL;
			break;
		case 4:
			memset(&it[i].key, 0, sizeof(it[i].key));
			want[i] = KVT_EINVAL;
			break;
		case 5: /* over max_block_size, inside the region */
			it[i].offset = 0;
			it[i].length = 1 * MiB + 1;
			want[i] = KVT_EFBIG;
			break;
		case 6: /* offset + length wraps around */
			it[i].offset = UINT64_MAX - 4;
			it[i].length = 10;
			want[i] = KVT_ERANGE;
			break;
		default:
			break;
		}
	}
	CHECK_RC(kvt_block_put(c, it, N), KVT_EPARTIAL);
	for (int i = 0; i < N; i++)
		CHECK_MSG(it[i].status == want[i], "item %d: status %d (%s), expected %d (%s)", i,
			  it[i].status, test_errname(it[i].status), want[i],
			  test_errname(want[i]));

	/* Exactly the successful items are stored, with their bytes. */
	kvt_region *dst = kvtd_region(c, 2 * MiB);
	static kvt_get_item g[N];
	memset(g, 0, sizeof(g));
	size_t ng = 0;
	for (int i = 0; i < N; i++) {
		if (i % 10 == 4)
			continue; /* zero key */
		g[ng].key = test_key(2, (uint64_t)i);
		g[ng].region = dst;
		g[ng].offset = (uint64_t)i * 1200;
		g[ng].capacity = 1200;
		ng++;
	}
	CHECK_RC(kvt_block_get(c, g, ng), KVT_EPARTIAL);
	uint8_t *out = kvt_region_base(dst);
	for (size_t j = 0; j < ng; j++) {
		uint64_t i = g[j].offset / 1200;
		if (want[i] == 0) {
			CHECK_MSG(g[j].status == 0, "GET of stored item %llu: %s",
				  (unsigned long long)i, test_errname(g[j].status));
			CHECK_EQ(g[j].length, 1000 + i);
			check_bytes(out + g[j].offset, base + i * 1000, 1000 + i, "batch item");
		} else {
			CHECK_MSG(g[j].status == KVT_ENOENT, "GET of failed item %llu: %s",
				  (unsigned long long)i, test_errname(g[j].status));
		}
	}
	CHECK_RC(kvt_region_destroy(dst), 0);
	CHECK_RC(kvt_region_destroy(r), 0);
	CHECK_RC(kvt_region_destroy(foreign), 0);
	kvt_conn_close(other);
	kvt_conn_close(c);
	kvtd_stop_clean(&d);
}

TEST(get_batch_mixes_hits_misses_and_errors)
{
	struct kvtd d;
	kvtd_start(&d, NULL);
	kvt_conn *c = open_conn(&d);
	kvt_conn *other = open_conn(&d);
	kvt_region *r = kvtd_region(c, 1 * MiB);
	kvt_region *foreign = kvtd_region(other, 1 * MiB);
	uint8_t *base = kvt_region_base(r);
	pattern(base, 64 * KiB, 9);
	for (int i = 0; i < 4; i++)
		CHECK_RC(put1(c, r, test_key(3, (uint64_t)i), (uint64_t)i * 4096, 4096), 0);

	kvt_get_item g[6];
	memset(g, 0, sizeof(g));
	for (int i = 0; i < 6; i++) {
		g[i].region = r;
		g[i].offset = 512 * KiB + (uint64_t)i * 8192;
		g[i].capacity = 8192;
	}
	g[0].key = test_key(3, 0);		    /* hit */
	g[1].key = test_key(3, 77);		    /* miss */
	g[2].key = test_key(3, 2);		    /* hit */
	g[3].key = test_key(3, 3), g[3].region = foreign; /* unknown region */
	g[4].key = test_key(3, 1), g[4].offset = 1 * MiB - 100; /* does not fit the region */
	g[5].key = test_key(3, 1);		    /* hit */
	uint64_t misses0 = kvtd_stat(c, "t1.misses");
	uint64_t hits0 = kvtd_stat(c, "t1.hits");
	CHECK_RC(kvt_block_get(c, g, 6), KVT_EPARTIAL);
	CHECK_RC(g[0].status, 0);
	CHECK_RC(g[1].status, KVT_ENOENT);
	CHECK_RC(g[2].status, 0);
	CHECK_RC(g[3].status, KVT_EREGION);
	CHECK_RC(g[4].status, KVT_ERANGE);
	CHECK_RC(g[5].status, 0);
	check_bytes(base + g[0].offset, base + 0, 4096, "hit 0");
	check_bytes(base + g[2].offset, base + 2 * 4096, 4096, "hit 2");
	check_bytes(base + g[5].offset, base + 1 * 4096, 4096, "hit 1");
	CHECK_MSG(kvtd_stat(c, "t1.misses") >= misses0 + 1, "t1.misses did not count the miss");
	CHECK_MSG(kvtd_stat(c, "t1.hits") >= hits0 + 3, "t1.hits did not count the hits");
	CHECK_RC(kvt_region_destroy(r), 0);
	CHECK_RC(kvt_region_destroy(foreign), 0);
	kvt_conn_close(other);
	kvt_conn_close(c);
	kvtd_stop_clean(&d);
}

TEST(lookup_counts_leading_present_keys)
{
	struct kvtd d;
	kvtd_start(&d, NULL);
	kvt_conn *c = open_conn(&d);
	kvt_region *r = kvtd_region(c, 1 * MiB);
	pattern(kvt_region_base(r), 1 * MiB, 11);

	kvt_salt_params sp = { .model_id = "itest/model", .kv_dtype = "bf16", .block_tokens = 16 };
	kvt_key salt, keys[10];
	CHECK_RC(kvt_key_salt(&sp, &salt), 0);
	for (uint32_t i = 0; i < 10; i++) {
		uint32_t toks[16];
		for (uint32_t t = 0; t < 16; t++)
			toks[t] = i * 16 + t;
		kvt_key_chain(&salt, i ? &keys[i - 1] : NULL, toks, 16, &keys[i]);
	}
	/* Store the chain with a hole at 5. */
	for (int i = 0; i < 10; i++) {
		if (i == 5)
			continue;
		kvt_put_item it = { .key = keys[i], .region = r, .offset = (uint64_t)i * 1000,
				    .length = 1000, .desc = test_desc };
		if (i)
			it.parent = keys[i - 1];
		CHECK_RC(kvt_block_put(c, &it, 1), 0);
	}
	uint8_t tiers[10];
	memset(tiers, 0xee, sizeof(tiers));
	size_t found = 999;
	CHECK_RC(kvt_block_lookup(c, keys, 10, &found, tiers), 0);
	CHECK_EQ(found, 5);
	for (int i = 0; i < 5; i++)
		CHECK_EQ(tiers[i], KVT_TIER_HOST);
	CHECK_EQ(lookup_n(c, keys + 5, 5), 0);
	CHECK_EQ(lookup_n(c, keys + 6, 4), 4);
	CHECK_EQ(lookup_n(c, keys + 9, 1), 1);
	CHECK_EQ(lookup_n(c, keys, 1), 1);
	kvt_key missing = test_key(4, 1);
	CHECK_EQ(lookup_n(c, &missing, 1), 0);
	/* A miss in front hides everything after it. */
	kvt_key mixed[3] = { missing, keys[0], keys[1] };
	CHECK_EQ(lookup_n(c, mixed, 3), 0);
	CHECK_RC(kvt_region_destroy(r), 0);
	kvt_conn_close(c);
	kvtd_stop_clean(&d);
}

TEST(delete_removes_blocks_and_reports_missing_ones)
{
	struct kvtd d;
	kvtd_start(&d, NULL);
	kvt_conn *c = open_conn(&d);
	kvt_region *r = kvtd_region(c, 1 * MiB);
	uint8_t *base = kvt_region_base(r);
	pattern(base, 1 * MiB, 13);
	for (int i = 0; i < 3; i++)
		CHECK_RC(put1(c, r, test_key(5, (uint64_t)i), (uint64_t)i * 10000, 10000), 0);
	uint64_t blocks0 = kvtd_stat(c, "t1.blocks");

	kvt_key del[3] = { test_key(5, 0), test_key(5, 99), test_key(5, 2) };
	int st[3] = { 1, 1, 1 };
	CHECK_RC(kvt_block_delete(c, del, 3, st), KVT_EPARTIAL);
	CHECK_RC(st[0], 0);
	CHECK_RC(st[1], KVT_ENOENT);
	CHECK_RC(st[2], 0);
	CHECK_EQ(kvtd_stat(c, "t1.blocks"), blocks0 - 2);
	CHECK_EQ(lookup_n(c, &del[0], 1), 0);
	CHECK_EQ(lookup_n(c, &del[2], 1), 0);
	kvt_key k1 = test_key(5, 1);
	CHECK_EQ(lookup_n(c, &k1, 1), 1);
	kvt_get_item g = { .key = del[0], .region = r, .offset = 512 * KiB, .capacity = 10000 };
	CHECK_RC(get1(c, &g), KVT_ENOENT);
	/* Deleting again is a miss; status may be NULL. */
	CHECK_RC(kvt_block_delete(c, del, 1, NULL), KVT_EPARTIAL);
	st[0] = 1;
	CHECK_RC(kvt_block_delete(c, &k1, 1, st), 0);
	CHECK_RC(st[0], 0);
	/* A deleted key can be stored again, with new bytes. */
	CHECK_RC(put1(c, r, del[0], 50000, 777), 0);
	g.capacity = 10000;
	CHECK_RC(get1(c, &g), 0);
	CHECK_EQ(g.length, 777);
	check_bytes(base + 512 * KiB, base + 50000, 777, "re-stored block");
	CHECK_RC(kvt_region_destroy(r), 0);
	kvt_conn_close(c);
	kvtd_stop_clean(&d);
}

TEST(put_of_present_key_is_idempotent_and_keeps_first_bytes)
{
	struct kvtd d;
	kvtd_start(&d, NULL);
	kvt_conn *c = open_conn(&d);
	kvt_region *r = kvtd_region(c, 1 * MiB);
	uint8_t *base = kvt_region_base(r);
	pattern(base, 100000, 17);
	pattern(base + 200000, 100000, 18);
	kvt_key k = test_key(6, 1);
	CHECK_RC(put1(c, r, k, 0, 100000), 0);
	uint64_t blocks = kvtd_stat(c, "t1.blocks");
	uint64_t in = kvtd_stat(c, "t1.bytes_in");
	uint64_t used = kvtd_stat(c, "t1.used_bytes");
	/* Same key, other bytes, even another length: succeeds, changes nothing. */
	CHECK_RC(put1(c, r, k, 200000, 100000), 0);
	CHECK_RC(put1(c, r, k, 200000, 5000), 0);
	CHECK_EQ(kvtd_stat(c, "t1.blocks"), blocks);
	CHECK_EQ(kvtd_stat(c, "t1.used_bytes"), used);
	CHECK_MSG(kvtd_stat(c, "t1.bytes_in") == in, "a PUT of a present key copied bytes");
	kvt_get_item g = { .key = k, .region = r, .offset = 500000, .capacity = 200000 };
	CHECK_RC(get1(c, &g), 0);
	CHECK_EQ(g.length, 100000);
	check_bytes(base + 500000, base, 100000, "first PUT's bytes");
	/* The same key twice in one batch: the first stores it. The second finds it
	 * still being copied; the spec does not say whether that is success or
	 * KVT_EBUSY, but it must be one of the two and must not copy. */
	kvt_put_item two[2] = {
		{ .key = test_key(6, 2), .region = r, .offset = 0, .length = 10, .desc = test_desc },
		{ .key = test_key(6, 2), .region = r, .offset = 10, .length = 10, .desc = test_desc },
	};
	int rc = kvt_block_put(c, two, 2);
	CHECK(rc == 0 || rc == KVT_EPARTIAL);
	CHECK_RC(two[0].status, 0);
	CHECK_MSG(two[1].status == 0 || two[1].status == KVT_EBUSY,
		  "duplicate in one batch: %s", test_errname(two[1].status));
	test_log("duplicate key in one batch: %s", test_errname(two[1].status));
	g.key = test_key(6, 2);
	g.capacity = 10;
	CHECK_RC(get1(c, &g), 0);
	check_bytes(base + 500000, base, 10, "first of two duplicates");
	CHECK_RC(kvt_region_destroy(r), 0);
	kvt_conn_close(c);
	kvtd_stop_clean(&d);
}

TEST(get_into_too_small_capacity_is_enobufs_with_length)
{
	struct kvtd d;
	kvtd_start(&d, NULL);
	kvt_conn *c = open_conn(&d);
	kvt_region *r = kvtd_region(c, 1 * MiB);
	uint8_t *base = kvt_region_base(r);
	pattern(base, 1000, 19);
	kvt_key k = test_key(7, 1);
	CHECK_RC(put1(c, r, k, 0, 1000), 0);
	memset(base + 4096, 0x5a, 2000);
	kvt_get_item g = { .key = k, .region = r, .offset = 4096, .capacity = 999 };
	CHECK_RC(get1(c, &g), KVT_ENOBUFS);
	CHECK_EQ(g.length, 1000);
	check_fill(base + 4096, 2000, 0x5a, "destination of a refused GET");
	g.capacity = 0;
	CHECK_RC(get1(c, &g), KVT_ENOBUFS);
	CHECK_EQ(g.length, 1000);
	g.capacity = 1000;
	CHECK_RC(get1(c, &g), 0);
	CHECK_EQ(g.length, 1000);
	check_bytes(base + 4096, base, 1000, "exact-capacity GET");
	check_fill(base + 5096, 1000, 0x5a, "after an exact-capacity GET");
	CHECK_RC(kvt_region_destroy(r), 0);
	kvt_conn_close(c);
	kvtd_stop_clean(&d);
}

TEST(offsets_outside_the_region_are_erange)
{
	struct kvtd d;
	kvtd_start(&d, NULL);
	kvt_conn *c = open_conn(&d);
	kvt_region *r = kvtd_region(c, 64 * KiB);
	const uint64_t sz = 64 * KiB;
	CHECK_RC(put1(c, r, test_key(8, 1), sz - 10, 11), KVT_ERANGE);
	CHECK_RC(put1(c, r, test_key(8, 2), sz, 1), KVT_ERANGE);
	CHECK_RC(put1(c, r, test_key(8, 3), UINT64_MAX - 5, 10), KVT_ERANGE);
	CHECK_RC(put1(c, r, test_key(8, 4), UINT64_MAX, 1), KVT_ERANGE);
	CHECK_RC(put1(c, r, test_key(8, 5), 0, sz + 1), KVT_ERANGE);
	/* The exact end is fine. */
	CHECK_RC(put1(c, r, test_key(8, 6), sz - 100, 100), 0);
	CHECK_RC(put1(c, r, test_key(8, 7), 0, sz), 0);

	kvt_get_item g = { .key = test_key(8, 6), .region = r, .offset = sz - 50, .capacity = 100 };
	CHECK_RC(get1(c, &g), KVT_ERANGE);
	g.offset = sz;
	CHECK_RC(get1(c, &g), KVT_ERANGE);
	g.offset = UINT64_MAX - 5;
	CHECK_RC(get1(c, &g), KVT_ERANGE);
	g.offset = sz - 100;
	CHECK_RC(get1(c, &g), 0);
	CHECK_EQ(g.length, 100);
	/* None of the refused PUTs stored anything. */
	for (uint64_t i = 1; i <= 5; i++) {
		kvt_key k = test_key(8, i);
		CHECK_EQ(lookup_n(c, &k, 1), 0);
	}
	CHECK_RC(kvt_region_destroy(r), 0);
	kvt_conn_close(c);
	kvtd_stop_clean(&d);
}

TEST(pin_blocks_delete_until_every_pin_is_dropped)
{
	struct kvtd d;
	kvtd_start(&d, NULL);
	kvt_conn *c = open_conn(&d);
	kvt_region *r = kvtd_region(c, 1 * MiB);
	pattern(kvt_region_base(r), 4096, 23);
	kvt_key k = test_key(9, 1);
	CHECK_RC(put1(c, r, k, 0, 4096), 0);
	kvt_key two[2] = { k, test_key(9, 2) };
	int st[2] = { 1, 1 };
	CHECK_RC(kvt_block_pin(c, two, 2, st), KVT_EPARTIAL);
	CHECK_RC(st[0], 0);
	CHECK_RC(st[1], KVT_ENOENT);
	CHECK_EQ(kvtd_stat(c, "t1.pinned_blocks"), 1);
	st[0] = 1;
	CHECK_RC(kvt_block_delete(c, &k, 1, st), KVT_EPARTIAL);
	CHECK_RC(st[0], KVT_EPINNED);
	CHECK_RC(kvt_block_pin(c, &k, 1, NULL), 0); /* counts twice */
	CHECK_RC(kvt_block_unpin(c, &k, 1, NULL), 0);
	CHECK_RC(kvt_block_delete(c, &k, 1, st), KVT_EPARTIAL);
	CHECK_RC(st[0], KVT_EPINNED);
	CHECK_RC(kvt_block_unpin(c, &k, 1, NULL), 0);
	CHECK_EQ(kvtd_stat(c, "t1.pinned_blocks"), 0);
	st[0] = 1;
	CHECK_RC(kvt_block_unpin(c, &k, 1, st), KVT_EPARTIAL);
	CHECK_RC(st[0], KVT_ENOENT);
	CHECK_RC(kvt_block_delete(c, &k, 1, st), 0);
	CHECK_RC(st[0], 0);
	CHECK_EQ(lookup_n(c, &k, 1), 0);
	CHECK_RC(kvt_region_destroy(r), 0);
	kvt_conn_close(c);
	kvtd_stop_clean(&d);
}

TEST(block_larger_than_limit_or_tier_is_efbig)
{
	struct kvtd d;
	kvtd_start(&d, "host_capacity = 1MiB\nmax_block_size = 4MiB\n");
	kvt_conn *c = open_conn(&d);
	kvt_region *r = kvtd_region(c, 8 * MiB);
	pattern(kvt_region_base(r), 8 * MiB, 29);
	CHECK_RC(put1(c, r, test_key(10, 1), 0, 4 * MiB + 1), KVT_EFBIG); /* over the limit */
	CHECK_RC(put1(c, r, test_key(10, 2), 0, 2 * MiB), KVT_EFBIG);	/* over the tier */
	CHECK_RC(put1(c, r, test_key(10, 3), 0, 1 * MiB), 0);		/* exactly the tier */
	kvt_get_item g = { .key = test_key(10, 3), .region = r, .offset = 4 * MiB,
			   .capacity = 1 * MiB };
	CHECK_RC(get1(c, &g), 0);
	check_bytes((uint8_t *)kvt_region_base(r) + 4 * MiB, kvt_region_base(r), 1 * MiB,
		    "tier-sized block");
	CHECK_RC(kvt_region_destroy(r), 0);
	kvt_conn_close(c);
	kvtd_stop_clean(&d);
}

TEST(stats_report_server_tier_and_tenant)
{
	struct kvtd d;
	kvtd_start(&d, NULL);
	kvt_conn *c = open_conn(&d);
	kvt_region *r = kvtd_region(c, 1 * MiB);
	for (int i = 0; i < 3; i++)
		CHECK_RC(put1(c, r, test_key(11, (uint64_t)i), 0, 1000), 0);

	kvt_stats *s = NULL;
	CHECK_RC(kvt_stats_get(c, &s), 0);
	size_t n = kvt_stats_count(s);
	CHECK(n > 10);
	bool have_version = false, have_reason = false, have_huge = false;
	for (size_t i = 0; i < n; i++) {
		const char *name = NULL, *text = NULL;
		uint64_t v = 0;
		CHECK_RC(kvt_stats_entry(s, i, &name, &v, &text), 0);
		CHECK(name != NULL && *name);
		for (size_t j = 0; j < i; j++) {
			const char *other = NULL, *ot = NULL;
			uint64_t ov;
			CHECK_RC(kvt_stats_entry(s, j, &other, &ov, &ot), 0);
			CHECK_MSG(strcmp(name, other) != 0, "STATS entry %s appears twice", name);
		}
		if (strcmp(name, "server.version") == 0)
			have_version = text && *text;
		if (strcmp(name, "t0.reason") == 0)
			have_reason = text && *text;
		if (strcmp(name, "t1.hugepages") == 0)
			have_huge = text && (!strcmp(text, "hugetlb") || !strcmp(text, "thp") ||
					     !strcmp(text, "none"));
	}
	const char *name, *text;
	uint64_t v;
	CHECK_RC(kvt_stats_entry(s, n, &name, &v, &text), KVT_ERANGE);
	CHECK_MSG(have_version, "no text server.version");
	CHECK_MSG(have_reason, "no text t0.reason");
	CHECK_MSG(have_huge, "no text t1.hugepages (hugetlb|thp|none)");

	uint64_t x;
	CHECK(kvt_stats_find(s, "server.pid", &x) && x == (uint64_t)d.pid);
	CHECK(kvt_stats_find(s, "server.workers", &x) && x == 2);
	CHECK(kvt_stats_find(s, "t0.active", &x) && x == 0);
	CHECK(kvt_stats_find(s, "t1.capacity_bytes", &x) && x == 64 * MiB);
	CHECK(kvt_stats_find(s, "t1.chunk_size", &x) && x == 64 * KiB);
	CHECK(kvt_stats_find(s, "t1.blocks", &x) && x == 3);
	CHECK(kvt_stats_find(s, "t1.pending", &x) && x == 0);
	CHECK(kvt_stats_find(s, "conn.current", &x) && x >= 1);
	CHECK(kvt_stats_find(s, "conn.total", &x) && x >= 1);
	CHECK(kvt_stats_find(s, "requests.total", &x) && x >= 4);
	uint64_t used = 0, free_b = 0;
	CHECK(kvt_stats_find(s, "t1.used_bytes", &used) && used >= 3000);
	CHECK(kvt_stats_find(s, "t1.free_bytes", &free_b));
	CHECK_EQ(used + free_b, 64 * MiB);
	char tname[64];
	snprintf(tname, sizeof(tname), "tenant.%u.blocks", (unsigned)geteuid());
	CHECK_MSG(kvt_stats_find(s, tname, &x) && x == 3, "%s missing or not 3", tname);
	snprintf(tname, sizeof(tname), "tenant.%u.bytes", (unsigned)geteuid());
	CHECK_MSG(kvt_stats_find(s, tname, &x) && x >= 3000, "%s missing or < 3000", tname);
	CHECK(!kvt_stats_find(s, "no.such.stat", &x));
	CHECK(!kvt_stats_find(s, "server.version", &x)); /* text, not numeric */
	kvt_stats_free(s);
	CHECK_RC(kvt_region_destroy(r), 0);
	kvt_conn_close(c);
	kvtd_stop_clean(&d);
}

TEST_MAIN(hello_reports_default_limits_and_tenant, hello_reports_configured_limits,
	  ping_round_trips_repeatedly, region_ids_start_at_one_and_are_never_reused,
	  put_get_round_trip_many_sizes, put_batch_reports_each_item,
	  get_batch_mixes_hits_misses_and_errors, lookup_counts_leading_present_keys,
	  delete_removes_blocks_and_reports_missing_ones,
	  put_of_present_key_is_idempotent_and_keeps_first_bytes,
	  get_into_too_small_capacity_is_enobufs_with_length,
	  offsets_outside_the_region_are_erange, pin_blocks_delete_until_every_pin_is_dropped,
	  block_larger_than_limit_or_tier_is_efbig, stats_report_server_tier_and_tenant)
