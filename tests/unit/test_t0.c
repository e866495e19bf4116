/* test_t0.c - unit tests of the GPU tier's block store (store/t0.h) over a pool
 * backend in host memory that counts its calls: the pool ops table, two-phase
 * insert and fill across extents, eviction through the policy (only unreferenced
 * committed blocks, decided before anything goes), deletes of committed, pending
 * and referenced blocks, and stats. */
#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "t0.h"
#include "test.h"

#define KiB (1024ULL)
#define CHUNK (4 * KiB)

struct fake_pool {
	int allocs, frees, copies;
	uint64_t bytes;
	void *base;
	int fail_alloc; /* -errno to return from alloc */
	int fail_copy;
};

static int fp_alloc(void *arg, uint64_t bytes, void **base)
{
	struct fake_pool *p = arg;
	if (p->fail_alloc)
		return p->fail_alloc;
	p->allocs++;
	p->bytes = bytes;
	p->base = malloc(bytes);
	*base = p->base;
	return p->base ? 0 : -ENOMEM;
}

static void fp_free(void *arg, void *base, uint64_t bytes)
{
	struct fake_pool *p = arg;
	CHECK(base == p->base);
	CHECK_EQ(bytes, p->bytes);
	p->frees++;
	free(base);
}

static int fp_copy(void *arg, void *dst, const void *src, uint64_t len)
{
	struct fake_pool *p = arg;
	CHECK(dst >= p->base && (uint8_t *)dst + len <= (uint8_t *)p->base + p->bytes);
	if (p->fail_copy)
		return p->fail_copy;
	p->copies++;
	memcpy(dst, src, len);
	return 0;
}

static const struct t0_pool_ops fp_ops = { fp_alloc, fp_free, fp_copy };

static struct t1_key tkey(uint32_t tenant, uint64_t id)
{
	struct t1_key k;
	memset(&k, 0, sizeof(k));
	k.tenant = tenant;
	for (int i = 0; i < 8; i++)
		k.key.b[i] = (uint8_t)(id >> (8 * i));
	k.key.b[15] = 0x5a;
	return k;
}

static struct t0 *open_pool(struct fake_pool *p, uint64_t chunks, enum t1_policy pol)
{
	memset(p, 0, sizeof(*p));
	struct t0_config cfg = { .capacity = chunks * CHUNK, .chunk_size = CHUNK, .policy = pol,
				 .ops = &fp_ops, .arg = p };
	struct t0 *t = NULL;
	CHECK_RC(t0_open(&cfg, &t), 0);
	CHECK_EQ(p->allocs, 1);
	return t;
}

static void fill_pattern(uint8_t *b, size_t n, unsigned seed)
{
	for (size_t i = 0; i < n; i++)
		b[i] = (uint8_t)(seed * 31 + i * 7 + (i >> 9));
}

/* Gather a committed block's bytes (host memory here) into out. */
static void read_block(struct t0_block *b, uint8_t *out)
{
	size_t n;
	const struct t1_extent *e = t0_block_extents(b, &n);
	uint64_t off = 0;
	for (size_t i = 0; i < n; i++) {
		memcpy(out + off, e[i].ptr, e[i].len);
		off += e[i].len;
	}
	CHECK_EQ(off, t0_block_len(b));
}

/* Reserve, fill from src given as two host extents, commit. */
static struct t0_block *put(struct t0 *t, struct t1_key k, const uint8_t *src, uint64_t len)
{
	struct t0_block *b = NULL;
	CHECK_RC(t0_reserve(t, &k, len, &b), 0);
	CHECK(t0_find(t, &k) == NULL); /* pending: invisible */
	struct t1_extent ext[2] = { { (uint8_t *)src, len / 3 },
				    { (uint8_t *)src + len / 3, len - len / 3 } };
	CHECK_RC(t0_fill(t, b, ext, 2), 0);
	CHECK_RC(t0_commit(t, b), 0);
	CHECK(t0_find(t, &k) == b);
	return b;
}

TEST(open_checks_config_and_pool_ops)
{
	struct fake_pool p;
	memset(&p, 0, sizeof(p));
	struct t0 *t = NULL;
	struct t0_config cfg = { .capacity = 8 * CHUNK, .chunk_size = CHUNK, .ops = &fp_ops,
				 .arg = &p };
	cfg.capacity = CHUNK - 1;
	CHECK_RC(t0_open(&cfg, &t), -EINVAL);
	cfg.capacity = 8 * CHUNK;
	cfg.chunk_size = 3000;
	CHECK_RC(t0_open(&cfg, &t), -EINVAL);
	cfg.chunk_size = CHUNK;
	cfg.ops = NULL;
	CHECK_RC(t0_open(&cfg, &t), -EINVAL);
	cfg.ops = &fp_ops;
	p.fail_alloc = -ENOMEM;
	CHECK_RC(t0_open(&cfg, &t), -ENOMEM);
	CHECK_EQ(p.allocs, 0);
	t = open_pool(&p, 8, T1_POLICY_2Q);
	struct t0_stats st;
	t0_get_stats(t, &st);
	CHECK_EQ(st.capacity, 8 * CHUNK);
	CHECK_EQ(st.used, 0);
	CHECK_EQ(st.chunk_size, CHUNK);
	CHECK(strcmp(t0_policy_name(t), "2q") == 0);
	t0_close(t);
	CHECK_EQ(p.frees, 1);
	t0_close(NULL);
}

TEST(fill_commit_find_bytes_identical)
{
	struct fake_pool p;
	struct t0 *t = open_pool(&p, 16, T1_POLICY_LRU);
	uint8_t src[3 * CHUNK + 100], out[sizeof(src)];
	fill_pattern(src, sizeof(src), 3);
	struct t0_block *b = put(t, tkey(1, 1), src, sizeof(src));
	CHECK(p.copies >= 2);
	read_block(b, out);
	CHECK(memcmp(src, out, sizeof(src)) == 0);
	CHECK_EQ(t0_block_len(b), sizeof(src));
	/* the same key of another tenant is another block */
	struct t1_key other = tkey(2, 1);
	CHECK(t0_find(t, &other) == NULL);
	struct t1_key k = tkey(1, 1);
	struct t0_block *dup;
	CHECK_RC(t0_reserve(t, &k, 10, &dup), -EEXIST);
	CHECK_RC(t0_reserve(t, &other, 0, &dup), -EFBIG);
	CHECK_RC(t0_reserve(t, &other, 17 * CHUNK, &dup), -EFBIG);
	struct t0_stats st;
	t0_get_stats(t, &st);
	CHECK_EQ(st.blocks, 1);
	CHECK_EQ(st.used, 4 * CHUNK);
	t0_close(t);
}

/* A fragmented pool gives a block several extents; the fill crosses both sides'
 * extent boundaries and the bytes still come out in order. */
TEST(fill_across_fragmented_extents)
{
	struct fake_pool p;
	struct t0 *t = open_pool(&p, 8, T1_POLICY_LRU);
	uint8_t one[CHUNK], big[4 * CHUNK], out[4 * CHUNK];
	fill_pattern(one, sizeof(one), 1);
	for (uint64_t i = 0; i < 8; i++)
		put(t, tkey(1, i), one, sizeof(one));
	struct t1_key k;
	for (uint64_t i = 0; i < 8; i += 2) {
		k = tkey(1, i);
		CHECK_RC(t0_delete(t, &k), 0);
	}
	fill_pattern(big, sizeof(big), 9);
	/* 4 chunks into 4 holes of one chunk: no eviction needed */
	struct t0_block *b = NULL;
	k = tkey(1, 100);
	CHECK_RC(t0_reserve(t, &k, sizeof(big), &b), 0);
	size_t n;
	t0_block_extents(b, &n);
	CHECK_EQ(n, 4);
	struct t1_extent src[3] = { { big, 5000 }, { big + 5000, 3 }, { big + 5003, sizeof(big) - 5003 } };
	CHECK_RC(t0_fill(t, b, src, 3), 0);
	CHECK_RC(t0_commit(t, b), 0);
	read_block(b, out);
	CHECK(memcmp(big, out, sizeof(big)) == 0);
	struct t0_stats st;
	t0_get_stats(t, &st);
	CHECK_EQ(st.evictions, 0);
	/* a source shorter than the block is refused */
	struct t0_block *c = NULL;
	struct t1_key k2 = tkey(1, 101);
	for (uint64_t i = 1; i < 8; i += 2) {
		k = tkey(1, i);
		CHECK_RC(t0_delete(t, &k), 0);
	}
	CHECK_RC(t0_reserve(t, &k2, 2 * CHUNK, &c), 0);
	struct t1_extent shortsrc = { big, CHUNK };
	CHECK_RC(t0_fill(t, c, &shortsrc, 1), -EINVAL);
	p.fail_copy = -EIO;
	struct t1_extent full = { big, 2 * CHUNK };
	CHECK_RC(t0_fill(t, c, &full, 1), -EIO);
	t0_abort(t, c);
	CHECK(t0_find(t, &k2) == NULL);
	t0_close(t);
}

/* Eviction follows the policy (LRU here: touched blocks stay), skips referenced
 * and pending blocks, and fails up front (evicting nothing) when the evictable
 * room is not enough. */
TEST(eviction_by_policy_spares_referenced)
{
	struct fake_pool p;
	struct t0 *t = open_pool(&p, 4, T1_POLICY_LRU);
	uint8_t one[CHUNK];
	fill_pattern(one, sizeof(one), 2);
	struct t0_block *b[4];
	for (uint64_t i = 0; i < 4; i++)
		b[i] = put(t, tkey(1, i), one, sizeof(one));
	t0_touch(t, b[0]);  /* 0 is now the most recent */
	t0_block_ref(t, b[1]); /* 1 is being read */
	struct t0_block *n = NULL;
	struct t1_key k = tkey(1, 10);
	CHECK_RC(t0_reserve(t, &k, CHUNK, &n), 0); /* evicts 2, the coldest unreferenced */
	struct t1_key k2 = tkey(1, 2), k0 = tkey(1, 0), k1 = tkey(1, 1), k3 = tkey(1, 3);
	CHECK(t0_find(t, &k2) == NULL);
	CHECK(t0_find(t, &k0) && t0_find(t, &k1) && t0_find(t, &k3));
	/* 3 chunks wanted, evictable: 0 and 3 (1 is referenced, 10 pending) */
	struct t0_block *big = NULL;
	struct t1_key kb = tkey(1, 11);
	CHECK_RC(t0_reserve(t, &kb, 3 * CHUNK, &big), -ENOSPC);
	struct t0_stats st;
	t0_get_stats(t, &st);
	CHECK_EQ(st.evictions, 1);
	CHECK_EQ(st.blocks, 3);
	CHECK_EQ(st.pending, 1);
	/* the reader finishes: now there is room, at the cost of 3, 0 and 1 */
	t0_block_unref(t, b[1]);
	CHECK_RC(t0_reserve(t, &kb, 3 * CHUNK, &big), 0);
	t0_get_stats(t, &st);
	CHECK_EQ(st.evictions, 4);
	CHECK_EQ(st.evicted_bytes, 4 * CHUNK);
	CHECK(t0_find(t, &k0) == NULL && t0_find(t, &k1) == NULL && t0_find(t, &k3) == NULL);
	t0_abort(t, big);
	t0_abort(t, n);
	t0_get_stats(t, &st);
	CHECK_EQ(st.used, 0);
	CHECK_EQ(st.pending, 0);
	t0_close(t);
}

/* 2Q: a block accessed again outlives blocks seen once. */
TEST(eviction_2q_keeps_reused_blocks)
{
	struct fake_pool p;
	struct t0 *t = open_pool(&p, 4, T1_POLICY_2Q);
	uint8_t one[CHUNK];
	fill_pattern(one, sizeof(one), 4);
	struct t0_block *hot = put(t, tkey(1, 0), one, sizeof(one));
	t0_touch(t, hot);
	for (uint64_t i = 1; i < 20; i++)
		put(t, tkey(1, i), one, sizeof(one));
	struct t1_key k0 = tkey(1, 0);
	CHECK(t0_find(t, &k0) == hot);
	struct t0_stats st;
	t0_get_stats(t, &st);
	CHECK_EQ(st.blocks, 4);
	CHECK_EQ(st.evictions, 16);
	t0_close(t);
}

/* Deletes: committed (freed now), referenced (freed at the last unref), pending
 * (the commit then says -ENOENT and frees it). */
TEST(delete_committed_referenced_pending)
{
	struct fake_pool p;
	struct t0 *t = open_pool(&p, 4, T1_POLICY_2Q);
	uint8_t one[CHUNK], out[CHUNK];
	fill_pattern(one, sizeof(one), 5);
	put(t, tkey(1, 1), one, sizeof(one));
	struct t1_key k1 = tkey(1, 1), k2 = tkey(1, 2), k3 = tkey(1, 3);
	CHECK_RC(t0_delete(t, &k1), 0);
	CHECK_RC(t0_delete(t, &k1), -ENOENT);
	struct t0_block *b = put(t, tkey(1, 2), one, sizeof(one));
	t0_block_ref(t, b);
	CHECK_RC(t0_delete(t, &k2), 0);
	CHECK(t0_find(t, &k2) == NULL);
	struct t0_stats st;
	t0_get_stats(t, &st);
	CHECK_EQ(st.used, CHUNK); /* still being read */
	read_block(b, out);
	CHECK(memcmp(one, out, sizeof(one)) == 0);
	t0_block_unref(t, b);
	t0_get_stats(t, &st);
	CHECK_EQ(st.used, 0);
	/* the key may be stored again at once */
	put(t, tkey(1, 2), one, sizeof(one));
	struct t0_block *pend = NULL;
	CHECK_RC(t0_reserve(t, &k3, CHUNK, &pend), 0);
	CHECK_RC(t0_delete(t, &k3), 0);
	struct t1_extent e = { one, sizeof(one) };
	CHECK_RC(t0_fill(t, pend, &e, 1), 0); /* the filler may still write its bytes */
	CHECK_RC(t0_commit(t, pend), -ENOENT);
	CHECK(t0_find(t, &k3) == NULL);
	CHECK_RC(t0_reserve(t, &k3, CHUNK, &pend), 0);
	CHECK_RC(t0_delete(t, &k3), 0);
	t0_abort(t, pend);
	t0_get_stats(t, &st);
	CHECK_EQ(st.used, CHUNK);
	CHECK_EQ(st.blocks, 1);
	CHECK_EQ(st.pending, 0);
	t0_close(t);
}

/* Tenant 1: two chunks of T0; every other tenant: none. */
static uint64_t two_chunks_for_1(void *arg, uint32_t tenant)
{
	(void)arg;
	return tenant == 1 ? 2 * CHUNK : 0;
}

/* A tenant over its quota evicts its own blocks, never another tenant's; a block
 * larger than the quota, or a quota whose own blocks are all in use, is -EDQUOT;
 * per-tenant bytes follow reserves, aborts and deletes. */
TEST(tenant_quota_evicts_own_blocks_only)
{
	struct fake_pool p;
	memset(&p, 0, sizeof(p));
	struct t0_config cfg = { .capacity = 6 * CHUNK, .chunk_size = CHUNK,
				 .policy = T1_POLICY_LRU, .ops = &fp_ops, .arg = &p,
				 .quota = two_chunks_for_1 };
	struct t0 *t = NULL;
	CHECK_RC(t0_open(&cfg, &t), 0);
	uint8_t src[CHUNK];
	fill_pattern(src, sizeof(src), 3);
	struct t0_block *a1 = put(t, tkey(1, 1), src, CHUNK);
	put(t, tkey(1, 2), src, CHUNK);
	put(t, tkey(2, 1), src, CHUNK);
	put(t, tkey(2, 2), src, CHUNK);
	CHECK_EQ(t0_tenant_bytes(t, 1), 2 * CHUNK);
	CHECK_EQ(t0_tenant_bytes(t, 2), 2 * CHUNK);
	CHECK_EQ(t0_tenant_bytes(t, 3), 0);
	(void)a1;

	/* Room in the pool, none in the quota: tenant 1's coldest block goes. */
	put(t, tkey(1, 3), src, CHUNK);
	struct t0_stats st;
	t0_get_stats(t, &st);
	CHECK_EQ(st.quota_evictions, 1);
	CHECK_EQ(st.evictions, 1);
	CHECK(t0_find(t, &(struct t1_key){ 0 }) == NULL);
	struct t1_key k11 = tkey(1, 1), k12 = tkey(1, 2), k13 = tkey(1, 3);
	CHECK(t0_find(t, &k11) == NULL);
	CHECK(t0_find(t, &k12) != NULL && t0_find(t, &k13) != NULL);
	struct t1_key k21 = tkey(2, 1), k22 = tkey(2, 2);
	CHECK(t0_find(t, &k21) != NULL && t0_find(t, &k22) != NULL);
	CHECK_EQ(t0_tenant_bytes(t, 1), 2 * CHUNK);

	/* Larger than the quota. */
	struct t0_block *b = NULL;
	struct t1_key k14 = tkey(1, 4);
	CHECK_RC(t0_reserve(t, &k14, 3 * CHUNK, &b), -EDQUOT);
	/* Both of tenant 1's blocks in use: nothing of its own can go. */
	struct t0_block *b12 = t0_find(t, &k12), *b13 = t0_find(t, &k13);
	t0_block_ref(t, b12);
	t0_block_ref(t, b13);
	CHECK_RC(t0_reserve(t, &k14, CHUNK, &b), -EDQUOT);
	t0_get_stats(t, &st);
	CHECK_EQ(st.quota_refusals, 2);
	CHECK_EQ(st.evictions, 1); /* tenant 2 was never touched */
	CHECK_EQ(t0_tenant_bytes(t, 1), 2 * CHUNK);
	t0_block_unref(t, b12);
	t0_block_unref(t, b13);

	/* A tenant with no quota fills the pool from everyone, itself included. */
	put(t, tkey(3, 1), src, CHUNK);
	put(t, tkey(3, 2), src, CHUNK);
	put(t, tkey(3, 3), src, CHUNK);
	CHECK_EQ(t0_tenant_bytes(t, 3), 3 * CHUNK);
	t0_get_stats(t, &st);
	CHECK_EQ(st.used, 6 * CHUNK);

	/* Aborts and deletes give the bytes back. */
	uint64_t before = t0_tenant_bytes(t, 1);
	CHECK_RC(t0_reserve(t, &k14, CHUNK, &b), 0);
	CHECK(t0_tenant_bytes(t, 1) > 0 && t0_tenant_bytes(t, 1) <= 2 * CHUNK);
	t0_abort(t, b);
	CHECK(t0_tenant_bytes(t, 1) <= before);
	for (uint64_t id = 1; id <= 4; id++) {
		struct t1_key k = tkey(1, id);
		(void)t0_delete(t, &k);
	}
	CHECK_EQ(t0_tenant_bytes(t, 1), 0);
	t0_close(t);
	CHECK_EQ(p.frees, 1);
}

TEST_MAIN(open_checks_config_and_pool_ops, fill_commit_find_bytes_identical,
	  fill_across_fragmented_extents, eviction_by_policy_spares_referenced,
	  eviction_2q_keeps_reused_blocks, delete_committed_referenced_pending,
	  tenant_quota_evicts_own_blocks_only)
