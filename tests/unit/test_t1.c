/* test_t1.c - unit tests of the host tier's contract (store/t1.h) and its block
 * index (store/index.c): visibility, two-phase insert, refs, pins, deletes, stats,
 * arena modes. What gets evicted is tested in test_policy.c. */
#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <unistd.h>

#include <sys/mman.h>

#include "arena.h"
#include "index.h"
#include "t1.h"
#include "test.h"

#define KiB (1024ULL)
#define MiB (1024ULL * 1024)
#define CHUNK (4 * KiB)

static kvt_key key_of(uint64_t id)
{
	kvt_key k;
	memset(&k, 0, sizeof(k));
	for (int i = 0; i < 8; i++)
		k.b[i] = (uint8_t)(id >> (8 * i));
	k.b[15] = 0xa5; /* never the zero key */
	return k;
}

static struct t1_key tkey(uint32_t tenant, uint64_t id)
{
	struct t1_key k = { .tenant = tenant, .key = key_of(id) };
	return k;
}

static struct t1 *open_small(uint64_t chunks)
{
	struct t1_config cfg = {
		.capacity = chunks * CHUNK,
		.chunk_size = CHUNK,
		.hugepages = T1_OFF,
		.mlock = T1_OFF,
	};
	struct t1 *t = NULL;
	CHECK_RC(t1_open(&cfg, &t, NULL), 0);
	CHECK(t != NULL);
	return t;
}

static uint8_t pattern(uint64_t id, uint64_t off)
{
	return (uint8_t)(id * 131 + off * 7 + (off >> 9));
}

static void fill(struct t1_block *b, uint64_t id)
{
	size_t n;
	const struct t1_extent *e = t1_block_extents(b, &n);
	uint64_t off = 0;
	for (size_t i = 0; i < n; i++)
		for (uint64_t j = 0; j < e[i].len; j++, off++)
			e[i].ptr[j] = pattern(id, off);
}

static bool intact(const struct t1_block *b, uint64_t id)
{
	size_t n;
	const struct t1_extent *e = t1_block_extents(b, &n);
	uint64_t off = 0;
	for (size_t i = 0; i < n; i++)
		for (uint64_t j = 0; j < e[i].len; j++, off++)
			if (e[i].ptr[j] != pattern(id, off))
				return false;
	return off == t1_block_len(b);
}

/* reserve + fill + commit, expecting success. */
static struct t1_block *put(struct t1 *t, uint32_t tenant, uint64_t id, uint64_t len)
{
	struct t1_key k = tkey(tenant, id);
	struct t1_block *b = NULL;
	CHECK_RC(t1_reserve(t, &k, NULL, len, NULL, &b), 0);
	fill(b, id);
	t1_commit(t, b);
	return b;
}

static struct t1_stats stats(const struct t1 *t)
{
	struct t1_stats s;
	t1_get_stats(t, &s);
	return s;
}

/* ---- index ------------------------------------------------------------------ */

TEST(index_many_keys_insert_find_remove_and_grow)
{
	const size_t n = 100000;
	struct index ix;
	CHECK_RC(index_init(&ix, 16), 0);
	size_t slots0 = ix.mask + 1;
	struct index_node *nodes = calloc(n, sizeof(*nodes));
	CHECK(nodes);
	for (size_t i = 0; i < n; i++) {
		nodes[i].key = tkey((uint32_t)(i % 7), i);
		CHECK_RC(index_insert(&ix, &nodes[i]), 0);
	}
	CHECK_EQ(index_count(&ix), n);
	CHECK(ix.mask + 1 > slots0);
	CHECK(index_count(&ix) <= ix.limit);
	for (size_t i = 0; i < n; i++)
		CHECK(index_find(&ix, &nodes[i].key) == &nodes[i]);
	for (size_t i = n; i < n + 1000; i++) {
		struct t1_key k = tkey((uint32_t)(i % 7), i);
		CHECK(index_find(&ix, &k) == NULL);
	}
	/* Remove the even ones; the odd ones must still be found (backward shift must
	 * not break probe runs). */
	for (size_t i = 0; i < n; i += 2)
		index_remove(&ix, &nodes[i]);
	CHECK_EQ(index_count(&ix), n / 2);
	for (size_t i = 0; i < n; i++)
		CHECK(index_find(&ix, &nodes[i].key) == (i % 2 ? &nodes[i] : NULL));
	for (size_t i = 0; i < n; i += 2)
		CHECK_RC(index_insert(&ix, &nodes[i]), 0);
	for (size_t i = 0; i < n; i++)
		CHECK(index_find(&ix, &nodes[i].key) == &nodes[i]);
	for (size_t i = 0; i < n; i++)
		index_remove(&ix, &nodes[i]);
	CHECK_EQ(index_count(&ix), 0);
	for (size_t i = 0; i <= ix.mask; i++)
		CHECK(ix.slots[i].node == NULL);
	index_destroy(&ix);
	free(nodes);
}

TEST(index_same_key_under_two_tenants_is_two_entries)
{
	struct index ix;
	CHECK_RC(index_init(&ix, 0), 0);
	struct index_node a = { .key = tkey(1000, 42) }, b = { .key = tkey(1001, 42) };
	CHECK_RC(index_insert(&ix, &a), 0);
	CHECK_RC(index_insert(&ix, &b), 0);
	CHECK_EQ(index_count(&ix), 2);
	CHECK(index_find(&ix, &a.key) == &a);
	CHECK(index_find(&ix, &b.key) == &b);
	struct t1_key other = tkey(1002, 42);
	CHECK(index_find(&ix, &other) == NULL);
	index_remove(&ix, &a);
	CHECK(index_find(&ix, &a.key) == NULL);
	CHECK(index_find(&ix, &b.key) == &b);
	index_destroy(&ix);
}

TEST(index_duplicate_insert_is_eexist)
{
	struct index ix;
	CHECK_RC(index_init(&ix, 0), 0);
	struct index_node a = { .key = tkey(1, 7) }, dup = { .key = tkey(1, 7) };
	CHECK_RC(index_insert(&ix, &a), 0);
	CHECK_RC(index_insert(&ix, &dup), -EEXIST);
	CHECK_EQ(index_count(&ix), 1);
	CHECK(index_find(&ix, &dup.key) == &a);
	index_destroy(&ix);
}

TEST(index_seeds_differ_between_tables)
{
	/* Two tables hash the same key differently (per-table random seed), so
	 * colliding keys cannot be computed offline. */
	struct index a, b;
	CHECK_RC(index_init(&a, 0), 0);
	CHECK_RC(index_init(&b, 0), 0);
	CHECK(a.seed != b.seed);
	struct index_node na = { .key = tkey(1, 1) }, nb = { .key = tkey(1, 1) };
	CHECK_RC(index_insert(&a, &na), 0);
	CHECK_RC(index_insert(&b, &nb), 0);
	CHECK(na.hash != nb.hash);
	index_destroy(&a);
	index_destroy(&b);
}

/* ---- open --------------------------------------------------------------------- */

TEST(open_rejects_bad_config_and_rounds_capacity)
{
	struct t1 *t = NULL;
	struct t1_config cfg = { .capacity = 1 * MiB, .chunk_size = 3000 };
	CHECK_RC(t1_open(&cfg, &t, NULL), -EINVAL); /* not a power of two */
	cfg.chunk_size = 2048;
	CHECK_RC(t1_open(&cfg, &t, NULL), -EINVAL); /* below 4 KiB */
	cfg.chunk_size = 64 * KiB;
	cfg.capacity = 32 * KiB;
	CHECK_RC(t1_open(&cfg, &t, NULL), -EINVAL); /* less than one chunk */
	cfg.capacity = 1 * MiB;
	cfg.hugepages = (enum t1_mode)7;
	CHECK_RC(t1_open(&cfg, &t, NULL), -EINVAL);
	cfg.hugepages = T1_OFF;
	cfg.mlock = (enum t1_mode)9;
	CHECK_RC(t1_open(&cfg, &t, NULL), -EINVAL);
	CHECK(t == NULL);

	/* chunk_size 0 = 64 KiB; capacity rounds down to whole chunks. */
	cfg.mlock = T1_OFF;
	cfg.chunk_size = 0;
	cfg.capacity = 1 * MiB + 100 * KiB;
	CHECK_RC(t1_open(&cfg, &t, NULL), 0);
	struct t1_stats s = stats(t);
	CHECK_EQ(s.chunk_size, 64 * KiB);
	CHECK_EQ(s.capacity, 1 * MiB + 64 * KiB);
	CHECK_EQ(s.free_chunks, 17);
	CHECK_EQ(s.used, 0);
	CHECK_EQ(s.largest_free_run, 17);
	t1_close(t);
	t1_close(NULL);
}

/* ---- two-phase insert ------------------------------------------------------------ */

TEST(reserve_is_invisible_until_commit)
{
	struct t1 *t = open_small(64);
	struct t1_key k = tkey(1, 1);
	kvt_block_desc d = { .dtype = KVT_DTYPE_BF16, .layout = 3, .layers = 32, .tokens = 256 };
	struct t1_block *b = NULL;
	CHECK_RC(t1_reserve(t, &k, NULL, 10000, &d, &b), 0);
	CHECK(t1_find(t, &k) == NULL);
	struct t1_stats s = stats(t);
	CHECK_EQ(s.pending, 1);
	CHECK_EQ(s.blocks, 0);
	CHECK_EQ(s.used, 3 * CHUNK); /* chunk-rounded */
	fill(b, 1);
	t1_commit(t, b);
	CHECK(t1_find(t, &k) == b);
	s = stats(t);
	CHECK_EQ(s.pending, 0);
	CHECK_EQ(s.blocks, 1);
	CHECK_EQ(t1_block_len(b), 10000);
	CHECK_EQ(t1_block_desc(b)->layers, 32);
	CHECK_EQ(t1_block_desc(b)->tokens, 256);
	CHECK_EQ(t1_block_key(b)->tenant, 1);
	CHECK(memcmp(&t1_block_key(b)->key, &k.key, sizeof(k.key)) == 0);
	CHECK(intact(b, 1));
	/* Another tenant does not see it. */
	struct t1_key other = tkey(2, 1);
	CHECK(t1_find(t, &other) == NULL);
	t1_close(t);
}

TEST(second_reserve_of_a_key_is_eexist_pending_or_committed)
{
	struct t1 *t = open_small(64);
	struct t1_key k = tkey(1, 1);
	struct t1_block *b = NULL, *b2 = NULL;
	CHECK_RC(t1_reserve(t, &k, NULL, CHUNK, NULL, &b), 0);
	CHECK_RC(t1_reserve(t, &k, NULL, CHUNK, NULL, &b2), -EEXIST);
	CHECK(b2 == NULL);
	/* The same key of another tenant is a different block. */
	struct t1_key k2 = tkey(2, 1);
	CHECK_RC(t1_reserve(t, &k2, NULL, CHUNK, NULL, &b2), 0);
	t1_commit(t, b);
	CHECK_RC(t1_reserve(t, &k, NULL, CHUNK, NULL, &b2), -EEXIST);
	CHECK_EQ(stats(t).alloc_failures, 0); /* EEXIST is not an allocation failure */
	t1_close(t);
}

static void count_tenants(const struct t1_tenant_stats *ts, void *arg)
{
	(void)ts;
	(*(int *)arg)++;
}

TEST(abort_gives_everything_back)
{
	struct t1 *t = open_small(64);
	struct t1_key k = tkey(7, 1);
	struct t1_block *b = NULL;
	CHECK_RC(t1_reserve(t, &k, NULL, 5 * CHUNK + 1, NULL, &b), 0);
	CHECK_EQ(stats(t).used, 6 * CHUNK);
	t1_abort(t, b);
	struct t1_stats s = stats(t);
	CHECK_EQ(s.used, 0);
	CHECK_EQ(s.pending, 0);
	CHECK_EQ(s.extents, 0);
	CHECK_EQ(s.free_chunks, 64);
	int ntenants = 0;
	t1_foreach_tenant(t, count_tenants, &ntenants);
	CHECK_EQ(ntenants, 0);
	/* The key is free again. */
	CHECK_RC(t1_reserve(t, &k, NULL, CHUNK, NULL, &b), 0);
	t1_close(t);
}

TEST(zero_and_oversize_lengths_are_efbig)
{
	struct t1 *t = open_small(16);
	struct t1_key k = tkey(1, 1);
	struct t1_block *b = NULL;
	CHECK_RC(t1_reserve(t, &k, NULL, 0, NULL, &b), -EFBIG);
	CHECK_RC(t1_reserve(t, &k, NULL, 16 * CHUNK + 1, NULL, &b), -EFBIG);
	CHECK_RC(t1_reserve(t, &k, NULL, UINT64_MAX, NULL, &b), -EFBIG);
	CHECK(b == NULL);
	CHECK_RC(t1_reserve(t, &k, NULL, 16 * CHUNK, NULL, &b), 0); /* exactly the arena */
	CHECK_EQ(stats(t).free_chunks, 0);
	t1_close(t);
}

TEST(fragmented_block_extents_cover_its_length_and_keep_neighbours_intact)
{
	const uint64_t nch = 64;
	struct t1 *t = open_small(nch);
	struct t1_block *small[64];
	for (uint64_t i = 0; i < nch; i++)
		small[i] = put(t, 1, i, CHUNK - i); /* one chunk each, various lengths */
	for (uint64_t i = 0; i < nch; i += 2)
		CHECK_RC(t1_delete(t, t1_block_key(small[i])), 0);
	struct t1_stats s = stats(t);
	CHECK_EQ(s.free_chunks, nch / 2);
	CHECK_EQ(s.largest_free_run, 1);

	/* 10 chunks and a bit: needs 11 runs of one chunk; no eviction needed. */
	uint64_t len = 10 * CHUNK + 123;
	struct t1_block *big = put(t, 1, 1000, len);
	size_t n;
	const struct t1_extent *e = t1_block_extents(big, &n);
	CHECK_EQ(n, 11);
	uint64_t sum = 0;
	for (size_t i = 0; i < n; i++) {
		CHECK(e[i].len > 0);
		CHECK((uintptr_t)e[i].ptr % CHUNK == 0);
		if (i + 1 < n)
			CHECK_EQ(e[i].len, CHUNK);
		sum += e[i].len;
	}
	CHECK_EQ(e[n - 1].len, 123);
	CHECK_EQ(sum, len);
	CHECK(intact(big, 1000));
	for (uint64_t i = 1; i < nch; i += 2)
		CHECK_MSG(intact(small[i], i), "block %llu damaged", (unsigned long long)i);
	s = stats(t);
	CHECK_EQ(s.evictions, 0);
	CHECK_EQ(s.extents, nch / 2 + 11);
	CHECK_EQ(s.used, (nch / 2 + 11) * CHUNK);
	t1_close(t);
}

/* ---- delete, pins, refs --------------------------------------------------------------- */

TEST(delete_unpin_and_pin_counts)
{
	struct t1 *t = open_small(16);
	struct t1_key k = tkey(1, 1), missing = tkey(1, 2), pend = tkey(1, 3);
	CHECK_RC(t1_delete(t, &missing), -ENOENT);
	struct t1_block *p = NULL;
	CHECK_RC(t1_reserve(t, &pend, NULL, CHUNK, NULL, &p), 0);
	CHECK_RC(t1_delete(t, &pend), -ENOENT); /* pending is not there yet */

	struct t1_block *b = put(t, 1, 1, CHUNK);
	CHECK_RC(t1_unpin(t, b), -ENOENT);
	t1_pin(t, b);
	t1_pin(t, b);
	CHECK_EQ(stats(t).pinned, 1);
	CHECK_RC(t1_delete(t, &k), -EBUSY);
	CHECK_RC(t1_unpin(t, b), 0);
	CHECK_RC(t1_delete(t, &k), -EBUSY); /* counted: one pin left */
	CHECK_RC(t1_unpin(t, b), 0);
	CHECK_EQ(stats(t).pinned, 0);
	CHECK_RC(t1_unpin(t, b), -ENOENT);
	CHECK_RC(t1_delete(t, &k), 0);
	CHECK(t1_find(t, &k) == NULL);
	CHECK_RC(t1_delete(t, &k), -ENOENT);
	struct t1_stats s = stats(t);
	CHECK_EQ(s.blocks, 0);
	CHECK_EQ(s.used, CHUNK); /* the pending one */
	t1_close(t);
}

TEST(deleted_while_referenced_is_freed_at_last_unref)
{
	struct t1 *t = open_small(16);
	struct t1_block *keep = put(t, 1, 9, CHUNK);
	struct t1_block *b = put(t, 1, 1, 3 * CHUNK);
	struct t1_key k = *t1_block_key(b);
	t1_block_ref(t, b);
	t1_block_ref(t, b);
	CHECK_RC(t1_delete(t, &k), 0);
	CHECK(t1_find(t, &k) == NULL);
	struct t1_stats s = stats(t);
	CHECK_EQ(s.blocks, 1);
	CHECK_EQ(s.used, 4 * CHUNK); /* still held by the readers */
	CHECK(intact(b, 1));         /* and its bytes still valid */

	/* The key can be stored again meanwhile; it is a new block. */
	struct t1_block *again = put(t, 1, 1, CHUNK);
	CHECK(again != b);
	CHECK(t1_find(t, &k) == again);
	CHECK_EQ(stats(t).used, 5 * CHUNK);

	t1_block_unref(t, b);
	CHECK_EQ(stats(t).used, 5 * CHUNK);
	CHECK(intact(b, 1));
	t1_block_unref(t, b); /* last reader: freed now */
	s = stats(t);
	CHECK_EQ(s.used, 2 * CHUNK);
	CHECK_EQ(s.blocks, 2);
	CHECK(t1_find(t, &k) == again);
	CHECK(intact(keep, 9));
	t1_close(t);
}

TEST(aborted_while_referenced_is_freed_at_last_unref)
{
	struct t1 *t = open_small(16);
	struct t1_key k = tkey(1, 1);
	struct t1_block *b = NULL;
	CHECK_RC(t1_reserve(t, &k, NULL, 2 * CHUNK, NULL, &b), 0);
	t1_block_ref(t, b); /* a worker copying into it */
	t1_abort(t, b);
	struct t1_stats s = stats(t);
	CHECK_EQ(s.pending, 0);
	CHECK_EQ(s.used, 2 * CHUNK);
	CHECK_RC(t1_reserve(t, &k, NULL, CHUNK, NULL, &b), 0);
	t1_abort(t, b);
	CHECK_EQ(stats(t).used, 2 * CHUNK);
	t1_close(t); /* frees the dead block still referenced (ASan checks the leak) */
}

TEST(referenced_block_bytes_survive_a_full_arena)
{
	/* A referenced block is neither evicted nor overwritten while others churn. */
	struct t1 *t = open_small(8);
	struct t1_block *b = put(t, 1, 1, 2 * CHUNK);
	t1_block_ref(t, b);
	for (uint64_t i = 100; i < 200; i++)
		put(t, 1, i, 3 * CHUNK);
	CHECK(intact(b, 1));
	struct t1_key k = tkey(1, 1);
	CHECK(t1_find(t, &k) == b);
	t1_block_unref(t, b);
	t1_close(t);
}

/* ---- quotas and stats ---------------------------------------------------------------- */

struct seen {
	int n;
	struct t1_tenant_stats v[8];
};

static void collect(const struct t1_tenant_stats *ts, void *arg)
{
	struct seen *s = arg;
	if (s->n < 8)
		s->v[s->n] = *ts;
	s->n++;
}

TEST(foreach_tenant_reports_blocks_and_quotas)
{
	struct t1_config cfg = {
		.capacity = 64 * CHUNK, .chunk_size = CHUNK, .default_quota = 10 * CHUNK,
	};
	struct t1 *t = NULL;
	CHECK_RC(t1_open(&cfg, &t, NULL), 0);
	CHECK_RC(t1_set_quota(t, 50, 0), 0);          /* override: unlimited */
	CHECK_RC(t1_set_quota(t, 40, 3 * CHUNK), 0);  /* no blocks, still listed */
	put(t, 30, 1, CHUNK + 1);
	put(t, 30, 2, CHUNK);
	struct t1_block *p = NULL;
	struct t1_key pk = tkey(30, 3);
	CHECK_RC(t1_reserve(t, &pk, NULL, CHUNK, NULL, &p), 0); /* pending counts in bytes */
	struct seen s = { 0 };
	t1_foreach_tenant(t, collect, &s);
	CHECK_EQ(s.n, 3);
	CHECK_EQ(s.v[0].tenant, 30); /* ascending */
	CHECK_EQ(s.v[0].bytes, 4 * CHUNK);
	CHECK_EQ(s.v[0].blocks, 2);
	CHECK_EQ(s.v[0].quota, 10 * CHUNK);
	CHECK_EQ(s.v[1].tenant, 40);
	CHECK_EQ(s.v[1].bytes, 0);
	CHECK_EQ(s.v[1].quota, 3 * CHUNK);
	CHECK_EQ(s.v[2].tenant, 50);
	CHECK_EQ(s.v[2].quota, 0);
	/* Tenant 50 is unlimited despite the default quota. */
	struct t1_block *big = NULL;
	struct t1_key bk = tkey(50, 1);
	CHECK_RC(t1_reserve(t, &bk, NULL, 20 * CHUNK, NULL, &big), 0);
	t1_close(t);
}

/* A random mix of every operation over three tenants, with a model of what must be
 * there; after each step the stats must agree with the model and with each other,
 * and a block may only have gone missing if it was evictable. */
struct mblock {
	bool used;
	bool committed;
	uint32_t tenant;
	uint64_t id;
	uint32_t pins, refs;
	uint64_t len;
	struct t1_block *b;
};

/* Chunk-rounded bytes the model says eviction could take (of tenant, or all if < 0). */
static uint64_t model_evictable(const struct mblock *m, int nb, int tenant)
{
	uint64_t sum = 0;
	for (int i = 0; i < nb; i++)
		if (m[i].used && m[i].committed && !m[i].pins && !m[i].refs &&
		    (tenant < 0 || m[i].tenant == (uint32_t)tenant))
			sum += (m[i].len + CHUNK - 1) / CHUNK * CHUNK;
	return sum;
}

struct tsum {
	uint64_t bytes[3], blocks[3];
	int n;
};

static void sum_tenants(const struct t1_tenant_stats *ts, void *arg)
{
	struct tsum *s = arg;
	if (ts->tenant < 3) {
		s->bytes[ts->tenant] = ts->bytes;
		s->blocks[ts->tenant] = ts->blocks;
	}
	s->n++;
}

TEST(stats_stay_consistent_under_random_operations)
{
	enum { NB = 256, OPS = 30000 };
	struct t1 *t = open_small(128);
	CHECK_RC(t1_set_quota(t, 2, 40 * CHUNK), 0);
	static struct mblock m[NB];
	uint64_t rng = 12345, next_id = 1, model_evictions = 0, nospc = 0, dquot = 0;
#define R() (rng = rng * 6364136223846793005ULL + 1442695040888963407ULL, rng >> 33)
	for (int op = 0; op < OPS; op++) {
		struct mblock *x = &m[R() % NB];
		unsigned what = (unsigned)(R() % 10);
		if (!x->used) {
			x->tenant = (uint32_t)(R() % 3);
			x->id = next_id++;
			struct t1_key k = tkey(x->tenant, x->id);
			uint64_t len = 1 + R() % (6 * CHUNK);
			uint64_t need = (len + CHUNK - 1) / CHUNK * CHUNK;
			struct t1_stats before = stats(t);
			struct tsum tb = { { 0 }, { 0 }, 0 };
			t1_foreach_tenant(t, sum_tenants, &tb);
			int rc = t1_reserve(t, &k, NULL, len, NULL, &x->b);
			CHECK_MSG(rc == 0 || rc == -ENOSPC || rc == -EDQUOT, "op %d: rc %d", op, rc);
			/* It may only fail when it must, and then without evicting. */
			if (rc == -ENOSPC) {
				nospc++;
				CHECK(before.free_chunks * CHUNK + model_evictable(m, NB, -1) < need);
			}
			if (rc == -EDQUOT) {
				dquot++;
				CHECK_EQ(x->tenant, 2);
				CHECK(tb.bytes[2] + need > 40 * CHUNK);
				CHECK(tb.bytes[2] + need - 40 * CHUNK > model_evictable(m, NB, 2));
			}
			if (rc < 0)
				CHECK_EQ(stats(t).evictions, before.evictions);
			if (rc == 0) {
				x->len = len;
				x->used = true;
				x->committed = false;
				x->pins = x->refs = 0;
				fill(x->b, x->id);
				/* Most blocks are committed at once, as the daemon does
				 * after its copy; some stay pending for a while. */
				if (R() % 4) {
					t1_commit(t, x->b);
					x->committed = true;
				}
			}
		} else if (!x->committed) {
			if (what < 7) {
				t1_commit(t, x->b);
				x->committed = true;
			} else if (x->refs == 0) {
				t1_abort(t, x->b);
				x->used = false;
			}
		} else if (what < 1) {
			t1_pin(t, x->b);
			x->pins++;
		} else if (what < 5 && x->pins) {
			CHECK_RC(t1_unpin(t, x->b), 0);
			x->pins--;
		} else if (what < 6) {
			t1_block_ref(t, x->b);
			x->refs++;
		} else if (what < 8 && x->refs) {
			t1_block_unref(t, x->b);
			x->refs--;
		} else if (what < 9) {
			t1_touch(t, x->b);
		} else if (x->refs == 0) {
			struct t1_key k = tkey(x->tenant, x->id);
			CHECK_RC(t1_delete(t, &k), x->pins ? -EBUSY : 0);
			if (!x->pins)
				x->used = false;
		}

		/* Reconcile: committed blocks missing from t1 must have been evictable. */
		uint64_t blocks = 0, pending = 0, pinned = 0;
		for (int i = 0; i < NB; i++) {
			struct mblock *y = &m[i];
			if (!y->used)
				continue;
			if (y->committed) {
				struct t1_key k = tkey(y->tenant, y->id);
				if (!t1_find(t, &k)) {
					CHECK_MSG(y->pins == 0 && y->refs == 0,
						  "op %d: pinned/referenced block evicted", op);
					y->used = false;
					model_evictions++;
					continue;
				}
				blocks++;
			} else {
				pending++;
			}
			if (y->pins)
				pinned++;
		}
		struct t1_stats s = stats(t);
		CHECK_EQ(s.blocks, blocks);
		CHECK_EQ(s.pending, pending);
		CHECK_EQ(s.pinned, pinned);
		CHECK_EQ(s.evictions, model_evictions);
		CHECK_EQ(s.used + s.free_chunks * CHUNK, s.capacity);
		CHECK(s.largest_free_run <= s.free_chunks);
		CHECK(s.extents >= s.blocks + s.pending);
		struct tsum ts = { { 0 }, { 0 }, 0 };
		t1_foreach_tenant(t, sum_tenants, &ts);
		CHECK_EQ(ts.bytes[0] + ts.bytes[1] + ts.bytes[2], s.used);
		CHECK_EQ(ts.blocks[0] + ts.blocks[1] + ts.blocks[2], s.blocks);
		CHECK(ts.bytes[2] <= 40 * CHUNK);
	}
#undef R
	struct t1_stats s = stats(t);
	test_log("%llu ENOSPC, %llu EDQUOT", (unsigned long long)nospc, (unsigned long long)dquot);
	test_log("%llu evictions (%llu nontail), %llu failures, %llu blocks, %llu extents",
		 (unsigned long long)s.evictions, (unsigned long long)s.evict_nontail,
		 (unsigned long long)s.alloc_failures, (unsigned long long)s.blocks,
		 (unsigned long long)s.extents);
	CHECK(s.evictions > 1000);
	CHECK_EQ(s.alloc_failures, nospc + dquot);
	CHECK(nospc > 0 && dquot > 0);

	/* Let go of everything: all space comes back, only the quota override stays. */
	for (int i = 0; i < NB; i++) {
		struct mblock *y = &m[i];
		if (!y->used)
			continue;
		while (y->refs--)
			t1_block_unref(t, y->b);
		while (y->pins--)
			CHECK_RC(t1_unpin(t, y->b), 0);
		if (y->committed) {
			struct t1_key k = tkey(y->tenant, y->id);
			CHECK_RC(t1_delete(t, &k), 0);
		} else {
			t1_abort(t, y->b);
		}
	}
	s = stats(t);
	CHECK_EQ(s.used, 0);
	CHECK_EQ(s.blocks + s.pending + s.pinned + s.extents, 0);
	CHECK_EQ(s.largest_free_run, 128);
	struct tsum ts = { { 0 }, { 0 }, 0 };
	t1_foreach_tenant(t, sum_tenants, &ts);
	CHECK_EQ(ts.n, 1);
	t1_close(t);
}

/* ---- arena modes ------------------------------------------------------------------------ */

static long meminfo(const char *field)
{
	FILE *f = fopen("/proc/meminfo", "r");
	if (!f)
		return -1;
	char line[256];
	long v = -1;
	size_t n = strlen(field);
	while (fgets(line, sizeof(line), f))
		if (strncmp(line, field, n) == 0 && line[n] == ':')
			v = strtol(line + n + 1, NULL, 10);
	fclose(f);
	return v;
}

static struct t1_config mode_cfg(uint64_t cap, enum t1_mode huge, enum t1_mode lock)
{
	struct t1_config c = { .capacity = cap, .chunk_size = 64 * KiB, .hugepages = huge,
			       .mlock = lock };
	return c;
}

/* Write every byte of the arena: the mapping must be real and writable. */
static void touch_all(struct t1 *t, uint64_t cap)
{
	struct t1_block *b = put(t, 1, 1, cap);
	CHECK(intact(b, 1));
}

TEST(hugepages_off_maps_plain_memory)
{
	struct t1_config c = mode_cfg(4 * MiB, T1_OFF, T1_OFF);
	struct t1_report rep;
	memset(&rep, 0xff, sizeof(rep));
	struct t1 *t = NULL;
	CHECK_RC(t1_open(&c, &t, &rep), 0);
	CHECK(!rep.hugetlb);
	CHECK(!rep.thp);
	CHECK(!rep.locked);
	CHECK_EQ(rep.huge_error, 0);
	CHECK_EQ(rep.lock_error, 0);
	touch_all(t, 4 * MiB);
	t1_close(t);
}

TEST(hugepages_auto_falls_back_to_thp)
{
	struct t1_config c = mode_cfg(4 * MiB, T1_AUTO, T1_OFF);
	struct t1_report rep;
	struct t1 *t = NULL;
	CHECK_RC(t1_open(&c, &t, &rep), 0);
	long free_huge = meminfo("HugePages_Free");
	test_log("hugetlb=%d thp=%d huge_error=%d HugePages_Free=%ld", rep.hugetlb, rep.thp,
		 rep.huge_error, free_huge);
	if (rep.hugetlb) {
		CHECK_EQ(rep.huge_error, 0);
		CHECK(!rep.thp);
	} else {
		CHECK(rep.huge_error < 0);
		/* THP advice works wherever the kernel has THP at all. */
		if (access("/sys/kernel/mm/transparent_hugepage/enabled", F_OK) == 0)
			CHECK(rep.thp);
	}
	if (free_huge == 0)
		CHECK(!rep.hugetlb);
	touch_all(t, 4 * MiB);
	t1_close(t);
}

TEST(hugepages_on_fails_cleanly_without_huge_pages)
{
	struct t1_config c = mode_cfg(4 * MiB, T1_ON, T1_OFF);
	struct t1_report rep;
	struct t1 *t = NULL;
	int rc = t1_open(&c, &t, &rep);
	long free_huge = meminfo("HugePages_Free");
	test_log("rc=%d huge_error=%d HugePages_Free=%ld", rc, rep.huge_error, free_huge);
	if (rc == 0) {
		CHECK(rep.hugetlb);
		touch_all(t, 4 * MiB);
		t1_close(t);
		return;
	}
	CHECK(t == NULL);
	CHECK(rc < 0);
	CHECK_EQ(rc, rep.huge_error);
	CHECK(!rep.hugetlb && !rep.thp && !rep.locked);
	if (free_huge >= 0 && free_huge * 2 * (long)MiB >= (long)(4 * MiB))
		test_fail(__FILE__, __LINE__, "MAP_HUGETLB failed with %ld free huge pages", free_huge);
}

TEST(mlock_modes)
{
	struct rlimit rl;
	CHECK(getrlimit(RLIMIT_MEMLOCK, &rl) == 0);
	struct t1_report rep;
	struct t1 *t = NULL;

	struct t1_config c = mode_cfg(1 * MiB, T1_OFF, T1_OFF);
	CHECK_RC(t1_open(&c, &t, &rep), 0);
	CHECK(!rep.locked);
	CHECK_EQ(rep.lock_error, 0);
	t1_close(t);

	/* AUTO within the limit locks. */
	if (rl.rlim_cur != RLIM_INFINITY && rl.rlim_cur < 1 * MiB)
		test_skip("RLIMIT_MEMLOCK below 1 MiB");
	c = mode_cfg(1 * MiB, T1_OFF, T1_AUTO);
	CHECK_RC(t1_open(&c, &t, &rep), 0);
	CHECK_MSG(rep.locked, "not locked: lock_error %d", rep.lock_error);
	CHECK_EQ(rep.lock_error, 0);
	touch_all(t, 1 * MiB);
	t1_close(t);

	/* ON within the limit locks too. */
	c = mode_cfg(1 * MiB, T1_OFF, T1_ON);
	CHECK_RC(t1_open(&c, &t, &rep), 0);
	CHECK(rep.locked);
	t1_close(t);

	/* AUTO beyond the limit: reported, not fatal, nothing locked. */
	if (rl.rlim_cur == RLIM_INFINITY)
		return;
	uint64_t over = ((uint64_t)rl.rlim_cur + 4 * MiB) & ~(64 * KiB - 1);
	c = mode_cfg(over, T1_OFF, T1_AUTO);
	CHECK_RC(t1_open(&c, &t, &rep), 0);
	CHECK(!rep.locked);
	CHECK_RC(rep.lock_error, -ENOMEM);
	t1_close(t);
}

TEST(close_frees_pending_referenced_and_dead_blocks)
{
	/* Run under ASan, a leak here fails the build's sanitizer pass. */
	struct t1 *t = open_small(32);
	struct t1_block *p = NULL, *d;
	struct t1_key pk = tkey(1, 1);
	CHECK_RC(t1_reserve(t, &pk, NULL, CHUNK, NULL, &p), 0);
	d = put(t, 1, 2, CHUNK);
	t1_block_ref(t, d);
	CHECK_RC(t1_delete(t, t1_block_key(d)), 0);
	struct t1_block *r = put(t, 2, 3, CHUNK);
	t1_block_ref(t, r);
	t1_pin(t, r);
	put(t, 3, 4, CHUNK);
	t1_close(t);
}

TEST(reserve_free_never_evicts_and_contains_sees_pending)
{
	struct t1 *t = open_small(4);
	put(t, 1, 1, CHUNK);
	put(t, 1, 2, CHUNK);
	struct t1_key k3 = tkey(1, 3), k4 = tkey(1, 4), k5 = tkey(1, 5);
	struct t1_block *b3 = NULL, *b4 = NULL, *b5 = NULL;
	/* Free space: taken without evicting. */
	CHECK_RC(t1_reserve_free(t, &k3, NULL, CHUNK, NULL, &b3), 0);
	CHECK(t1_contains(t, &k3));          /* pending counts */
	CHECK(t1_find(t, &k3) == NULL);      /* but is not found yet */
	t1_commit(t, b3);
	CHECK_RC(t1_reserve_free(t, &k4, NULL, CHUNK, NULL, &b4), 0);
	t1_commit(t, b4);
	/* Full: refused, and nothing was evicted for it. */
	CHECK_RC(t1_reserve_free(t, &k5, NULL, CHUNK, NULL, &b5), -ENOSPC);
	CHECK_EQ(stats(t).evictions, 0);
	CHECK_EQ(stats(t).blocks, 4);
	/* The ordinary reserve does evict. */
	CHECK_RC(t1_reserve(t, &k5, NULL, CHUNK, NULL, &b5), 0);
	t1_commit(t, b5);
	CHECK_EQ(stats(t).evictions, 1);
	struct t1_key gone = tkey(1, 99);
	CHECK(!t1_contains(t, &gone));
	t1_close(t);
}

TEST(reserve_free_respects_the_quota_without_evicting)
{
	struct t1 *t = open_small(8);
	CHECK_RC(t1_set_quota(t, 1, 2 * CHUNK), 0);
	put(t, 1, 1, CHUNK);
	put(t, 1, 2, CHUNK);
	struct t1_key k3 = tkey(1, 3);
	struct t1_block *b3 = NULL;
	CHECK_RC(t1_reserve_free(t, &k3, NULL, CHUNK, NULL, &b3), -EDQUOT);
	CHECK_EQ(stats(t).evictions, 0);
	CHECK_EQ(stats(t).blocks, 2);
	t1_close(t);
}

/* reserve + fill + commit with a parent. */
static struct t1_block *put_child(struct t1 *t, uint32_t tenant, uint64_t id, uint64_t parent_id)
{
	struct t1_key k = tkey(tenant, id);
	kvt_key parent = key_of(parent_id);
	struct t1_block *b = NULL;
	CHECK_RC(t1_reserve(t, &k, &parent, CHUNK, NULL, &b), 0);
	fill(b, id);
	t1_commit(t, b);
	return b;
}

TEST(backed_parent_may_be_evicted_for_its_own_child)
{
	/* Two chunks: A (backed by a lower tier) and X. Storing A's child evicts the
	 * coldest costless block, which is A itself: the child must not link to the
	 * freed parent (ASan catches a use after free) and nothing stays held. */
	struct t1 *t = open_small(2);
	struct t1_block *a = put(t, 1, 1, CHUNK);
	t1_block_set_flags(a, T1_FLAG_BACKED);
	put(t, 1, 2, CHUNK);
	put_child(t, 1, 3, 1);
	struct t1_key ka = tkey(1, 1), kc = tkey(1, 3);
	CHECK(t1_find(t, &ka) == NULL);
	CHECK(t1_find(t, &kc) != NULL);
	/* Nothing leaked a hold: two more blocks can take the whole tier. */
	put(t, 1, 4, CHUNK);
	put(t, 1, 5, CHUNK);
	CHECK_EQ(stats(t).blocks, 2);
	t1_close(t);
}

TEST(evicting_a_backed_middle_block_releases_every_hold)
{
	/* Chain A -> B -> C with B backed: storing C's child holds A and C, may evict
	 * B (which unlinks the chain) and must still release A and C exactly. */
	struct t1 *t = open_small(4);
	put(t, 1, 1, CHUNK);
	struct t1_block *b = put_child(t, 1, 2, 1);
	put_child(t, 1, 3, 2);
	t1_block_set_flags(b, T1_FLAG_BACKED);
	put(t, 1, 9, CHUNK); /* fills the tier */
	put_child(t, 1, 4, 3);
	struct t1_key kb = tkey(1, 2);
	CHECK(t1_find(t, &kb) == NULL); /* the costless block went */
	/* Every block is evictable again: four unrelated blocks replace them all. */
	for (uint64_t id = 20; id < 24; id++)
		put(t, 1, id, CHUNK);
	CHECK_EQ(stats(t).blocks, 4);
	for (uint64_t id = 20; id < 24; id++) {
		struct t1_key k = tkey(1, id);
		CHECK(t1_find(t, &k) != NULL);
	}
	t1_close(t);
}

/* The hook says odd ids would be turned away by the lower tier. */
static bool odd_is_droppable(const struct t1_block *b, void *arg)
{
	(*(int *)arg)++;
	return t1_block_key(b)->key.b[0] & 1;
}

TEST(droppable_blocks_are_free_room_for_a_clean_reserve)
{
	/* Four unbacked blocks fill the tier; ids 1 and 3 are droppable. A clean
	 * reserve (only costless evictions) takes exactly those two, oldest first,
	 * then fails: the others would be lost, not merely dropped. */
	int asked = 0;
	struct t1_config cfg = { .capacity = 4 * CHUNK, .chunk_size = CHUNK,
				 .hugepages = T1_OFF, .mlock = T1_OFF,
				 .droppable = odd_is_droppable, .evict_arg = &asked };
	struct t1 *t = NULL;
	CHECK_RC(t1_open(&cfg, &t, NULL), 0);
	for (uint64_t id = 1; id <= 4; id++)
		put(t, 1, id, CHUNK);
	struct t1_block *b = NULL;
	for (uint64_t id = 10; id <= 12; id += 2) {
		struct t1_key k = tkey(1, id);
		CHECK_RC(t1_reserve_clean(t, &k, NULL, CHUNK, NULL, &b), 0);
		fill(b, id);
		t1_commit(t, b);
	}
	CHECK(asked > 0);
	for (uint64_t id = 1; id <= 4; id++) {
		struct t1_key k = tkey(1, id);
		CHECK_MSG((t1_find(t, &k) != NULL) == !(id & 1), "block %llu %s",
			  (unsigned long long)id, t1_find(t, &k) ? "kept" : "evicted");
	}
	struct t1_key k14 = tkey(1, 14);
	CHECK_RC(t1_reserve_clean(t, &k14, NULL, CHUNK, NULL, &b), -ENOSPC);
	/* An unrestricted reserve still evicts anything. */
	CHECK_RC(t1_reserve(t, &k14, NULL, CHUNK, NULL, &b), 0);
	t1_abort(t, b);
	t1_close(t);
}

/* Pages of [p, p + len) resident in RAM (mincore). */
static size_t resident_pages(void *p, size_t len)
{
	size_t n = len / 4096, got = 0;
	unsigned char *v = malloc(n);
	CHECK(v != NULL);
	CHECK_RC(mincore(p, len, v) == 0 ? 0 : -errno, 0);
	for (size_t i = 0; i < n; i++)
		got += v[i] & 1;
	free(v);
	return got;
}

TEST(unlocked_arena_is_faulted_in_by_a_background_thread)
{
	/* Untouched anonymous memory is not resident; an unlocked arena must become
	 * resident without anyone writing to it (MADV_POPULATE_WRITE, Linux >= 5.14),
	 * and unmapping stops and joins the thread (LeakSanitizer and ASan check). */
	const size_t len = 96u << 20;
	struct arena a;
	struct t1_report rep;
	CHECK_RC(arena_map(&a, len, T1_OFF, T1_OFF, &rep), 0);
	if (!rep.prefault) {
		arena_unmap(&a);
		test_skip("the kernel refuses MADV_POPULATE_WRITE (before Linux 5.14)");
	}
	size_t want = a.map_len / 4096, have = 0;
	for (int i = 0; i < 2000 && have < want; i++) {
		have = resident_pages(a.map, a.map_len);
		if (have < want)
			usleep(10000);
	}
	CHECK_MSG(have == want, "%zu of %zu pages resident after 20 s", have, want);
	/* The contents are untouched: still zero. */
	for (size_t off = 0; off < len; off += 4096)
		CHECK_EQ(a.base[off], 0);
	arena_unmap(&a);

	/* Unmapping an arena while its thread is still at work stops it. */
	CHECK_RC(arena_map(&a, 1u << 30, T1_OFF, T1_OFF, &rep), 0);
	arena_unmap(&a);
}

/* ---- eviction hints ------------------------------------------------------------ */

static uint64_t fake_now;
static uint64_t fake_clock(void)
{
	return fake_now;
}

static struct t1 *open_hinted(uint64_t chunks, uint32_t retain_pct)
{
	struct t1_config cfg = { .capacity = chunks * CHUNK, .chunk_size = CHUNK,
				 .hugepages = T1_OFF, .mlock = T1_OFF, .policy = T1_POLICY_LRU,
				 .retain_max_pct = retain_pct, .clock_ms = fake_clock };
	struct t1 *t = NULL;
	fake_now = 1000;
	CHECK_RC(t1_open(&cfg, &t, NULL), 0);
	return t;
}

static bool has(struct t1 *t, uint64_t id)
{
	struct t1_key k = tkey(1, id);
	return t1_find(t, &k) != NULL;
}

static struct t1_block *find(struct t1 *t, uint64_t id)
{
	struct t1_key k = tkey(1, id);
	struct t1_block *b = t1_find(t, &k);
	CHECK(b != NULL);
	return b;
}

TEST(released_blocks_go_first_and_retained_ones_last)
{
	struct t1 *t = open_hinted(4, 100);
	for (uint64_t id = 1; id <= 4; id++)
		put(t, 1, id, CHUNK);
	/* LRU order 1 2 3 4. Retain the coldest, release the hottest. */
	CHECK_RC(t1_set_hint(t, find(t, 1), T1_HINT_RETAIN, 5000), 0);
	CHECK_RC(t1_set_hint(t, find(t, 4), T1_HINT_RELEASE, 0), 0);
	CHECK_EQ(stats(t).retained_blocks, 1);
	CHECK_EQ(stats(t).retained_bytes, CHUNK);
	CHECK_EQ(stats(t).released_blocks, 1);
	put(t, 1, 5, CHUNK);
	CHECK(!has(t, 4)); /* released: first, although the most recent */
	put(t, 1, 6, CHUNK);
	CHECK(!has(t, 2));
	put(t, 1, 7, CHUNK);
	CHECK(!has(t, 3));
	put(t, 1, 8, CHUNK);
	CHECK(!has(t, 5));
	CHECK(has(t, 1)); /* retained: outlived four evictions while the coldest */
	CHECK_EQ(stats(t).released_blocks, 0);
	CHECK_EQ(stats(t).retain_evicted, 0);
	t1_close(t);
}

TEST(retain_runs_out_at_its_deadline)
{
	struct t1 *t = open_hinted(3, 100);
	for (uint64_t id = 1; id <= 3; id++)
		put(t, 1, id, CHUNK);
	CHECK_RC(t1_set_hint(t, find(t, 1), T1_HINT_RETAIN, 100), 0);
	fake_now += 99;
	put(t, 1, 4, CHUNK); /* evicts 2 */
	CHECK(has(t, 1) && !has(t, 2));
	CHECK_EQ(t1_block_hint(find(t, 1)), T1_HINT_RETAIN);
	fake_now += 1;
	put(t, 1, 5, CHUNK); /* 1 expires first: back in the policy as the newest */
	CHECK_EQ(stats(t).retain_expired, 1);
	CHECK_EQ(stats(t).retained_blocks, 0);
	CHECK_EQ(t1_block_hint(find(t, 1)), T1_HINT_NONE);
	CHECK(!has(t, 3));
	put(t, 1, 6, CHUNK);
	CHECK(!has(t, 4));
	put(t, 1, 7, CHUNK);
	CHECK(!has(t, 1)); /* an ordinary block now */
	t1_close(t);
}

TEST(retain_zero_or_release_clears_and_renewing_moves_the_deadline)
{
	struct t1 *t = open_hinted(4, 100);
	for (uint64_t id = 1; id <= 4; id++)
		put(t, 1, id, CHUNK);
	struct t1_block *b1 = find(t, 1), *b2 = find(t, 2);
	CHECK_RC(t1_set_hint(t, b1, T1_HINT_RETAIN, 100), 0);
	CHECK_RC(t1_set_hint(t, b2, T1_HINT_RETAIN, 200), 0);
	CHECK_RC(t1_set_hint(t, b1, T1_HINT_RETAIN, 300), 0); /* now after 2's */
	CHECK_EQ(stats(t).retained_blocks, 2);
	fake_now += 200;
	put(t, 1, 5, CHUNK); /* 2 expired, 1 has not */
	CHECK_EQ(t1_block_hint(b1), T1_HINT_RETAIN);
	CHECK_EQ(stats(t).retain_expired, 1);
	CHECK_RC(t1_set_hint(t, b1, T1_HINT_RETAIN, 0), 0);
	CHECK_EQ(t1_block_hint(b1), T1_HINT_NONE);
	CHECK_EQ(stats(t).retained_blocks, 0);
	CHECK_EQ(stats(t).retained_bytes, 0);
	CHECK_RC(t1_set_hint(t, b1, 7, 0), -EINVAL);
	CHECK_RC(t1_set_hint(t, b1, T1_HINT_RELEASE, 0), 0);
	CHECK_EQ(stats(t).released_blocks, 1);
	CHECK_RC(t1_set_hint(t, b1, T1_HINT_NONE, 0), 0);
	CHECK_EQ(stats(t).released_blocks, 0);
	CHECK_EQ(t1_block_hint(b1), T1_HINT_NONE);
	/* A pinned block takes no hint, and keeps none past its unpin. */
	t1_pin(t, b1);
	CHECK_RC(t1_set_hint(t, b1, T1_HINT_RETAIN, 100), -EBUSY);
	CHECK_RC(t1_set_hint(t, b1, T1_HINT_RELEASE, 0), -EBUSY);
	CHECK_EQ(t1_block_hint(b1), T1_HINT_NONE);
	CHECK_EQ(stats(t).retained_bytes, 0);
	CHECK_RC(t1_unpin(t, b1), 0);
	CHECK_EQ(t1_block_hint(b1), T1_HINT_NONE);
	t1_close(t);
}

TEST(a_released_chain_shortens_from_its_tail)
{
	/* Chain 1 -> 2 -> 3 released head first, beside ordinary 4: the evictions
	 * take 3, then 2, then 1, and only then 4. */
	struct t1 *t = open_hinted(4, 100);
	put(t, 1, 1, CHUNK);
	put_child(t, 1, 2, 1);
	put_child(t, 1, 3, 2);
	put(t, 1, 4, CHUNK);
	for (uint64_t id = 1; id <= 3; id++)
		CHECK_RC(t1_set_hint(t, find(t, id), T1_HINT_RELEASE, 0), 0);
	put(t, 1, 5, CHUNK);
	CHECK(!has(t, 3) && has(t, 2) && has(t, 1));
	put(t, 1, 6, CHUNK);
	CHECK(!has(t, 2) && has(t, 1));
	put(t, 1, 7, CHUNK);
	CHECK(!has(t, 1) && has(t, 4));
	CHECK_EQ(stats(t).evict_nontail, 0);
	t1_close(t);
}

TEST(retain_is_capped_nearest_deadlines_first)
{
	struct t1 *t = open_hinted(4, 50); /* two chunks may be retained */
	for (uint64_t id = 1; id <= 4; id++)
		put(t, 1, id, CHUNK);
	CHECK_RC(t1_set_hint(t, find(t, 1), T1_HINT_RETAIN, 300), 0);
	CHECK_RC(t1_set_hint(t, find(t, 2), T1_HINT_RETAIN, 100), 0);
	CHECK_RC(t1_set_hint(t, find(t, 3), T1_HINT_RETAIN, 200), 0);
	CHECK_EQ(stats(t).retained_blocks, 2);
	CHECK_EQ(stats(t).retain_capped, 1);
	CHECK_EQ(t1_block_hint(find(t, 2)), T1_HINT_NONE);
	/* With 0% nothing is ever retained. */
	struct t1 *z = open_hinted(2, 0);
	struct t1_block *b = put(z, 1, 1, CHUNK);
	CHECK_RC(t1_set_hint(z, b, T1_HINT_RETAIN, 100), 0);
	CHECK_EQ(t1_block_hint(b), T1_HINT_NONE);
	CHECK_EQ(stats(z).retain_capped, 1);
	t1_close(z);
	t1_close(t);
}

TEST(retained_blocks_still_go_when_nothing_else_can)
{
	struct t1 *t = open_hinted(3, 100);
	for (uint64_t id = 1; id <= 3; id++) {
		put(t, 1, id, CHUNK);
		CHECK_RC(t1_set_hint(t, find(t, id), T1_HINT_RETAIN, 1000 - 100 * id), 0);
	}
	put(t, 1, 4, CHUNK);
	CHECK(!has(t, 3)); /* the nearest deadline */
	CHECK(has(t, 1) && has(t, 2));
	CHECK_EQ(stats(t).retain_evicted, 1);
	CHECK_EQ(stats(t).retained_blocks, 2);
	t1_close(t);
}

TEST(access_clears_release_and_a_pin_ends_a_retain)
{
	struct t1 *t = open_hinted(3, 100);
	for (uint64_t id = 1; id <= 3; id++)
		put(t, 1, id, CHUNK);
	struct t1_block *b3 = find(t, 3), *b1 = find(t, 1);
	CHECK_RC(t1_set_hint(t, b3, T1_HINT_RELEASE, 0), 0);
	t1_touch(t, b3);
	CHECK_EQ(t1_block_hint(b3), T1_HINT_NONE);
	CHECK_EQ(stats(t).released_blocks, 0);
	/* A pin ends a retain: the block is in use, and its unpin makes it the most
	 * recent block of the policy. */
	CHECK_RC(t1_set_hint(t, b1, T1_HINT_RETAIN, 50), 0);
	t1_pin(t, b1);
	CHECK_EQ(t1_block_hint(b1), T1_HINT_NONE);
	CHECK_EQ(stats(t).retained_blocks, 0);
	put(t, 1, 4, CHUNK); /* 2 goes: 1 is pinned */
	CHECK(!has(t, 2) && has(t, 1));
	CHECK_RC(t1_unpin(t, b1), 0);
	CHECK_EQ(stats(t).retained_blocks, 0);
	put(t, 1, 5, CHUNK);
	CHECK(!has(t, 3) && has(t, 1));
	/* Deleting hinted blocks leaves the counters at zero. */
	CHECK_RC(t1_set_hint(t, b1, T1_HINT_RETAIN, 50), 0);
	CHECK_RC(t1_set_hint(t, find(t, 4), T1_HINT_RELEASE, 0), 0);
	struct t1_key k1 = tkey(1, 1), k4 = tkey(1, 4);
	CHECK_RC(t1_delete(t, &k1), 0);
	CHECK_RC(t1_delete(t, &k4), 0);
	CHECK_EQ(stats(t).retained_blocks, 0);
	CHECK_EQ(stats(t).retained_bytes, 0);
	CHECK_EQ(stats(t).released_blocks, 0);
	t1_close(t);
}

TEST(cold_walk_and_random_hints_agree_with_the_counters)
{
	/* Random puts, touches, pins, deletes and hints on a 2Q tier: after every step
	 * the cold walk visits each unpinned committed block exactly once (released,
	 * then the policy's, then retained), and the hint counters match the blocks. */
	enum { NB = 48, OPS = 20000 };
	struct t1_config cfg = { .capacity = 24 * CHUNK, .chunk_size = CHUNK,
				 .hugepages = T1_OFF, .mlock = T1_OFF, .retain_max_pct = 60,
				 .clock_ms = fake_clock };
	struct t1 *t = NULL;
	fake_now = 0;
	CHECK_RC(t1_open(&cfg, &t, NULL), 0);
	uint64_t rng = 777;
	unsigned pins[NB] = { 0 };
#define R() (rng = rng * 6364136223846793005ULL + 1442695040888963407ULL, rng >> 33)
	for (int op = 0; op < OPS; op++) {
		uint64_t id = 1 + R() % NB;
		struct t1_key k = tkey(1, id);
		struct t1_block *b = t1_find(t, &k);
		unsigned what = (unsigned)(R() % 8);
		fake_now += R() % 4;
		if (!b) {
			CHECK_MSG(pins[id - 1] == 0, "op %d: a pinned block went", op);
			struct t1_block *nb = NULL;
			int rc = t1_reserve(t, &k, NULL, 1 + R() % (2 * CHUNK), NULL, &nb);
			CHECK_MSG(rc == 0 || rc == -ENOSPC, "op %d rc %d", op, rc);
			if (rc == 0)
				t1_commit(t, nb);
		} else if (what == 0) {
			t1_touch(t, b);
		} else if (what == 1 && pins[id - 1] < 2) {
			t1_pin(t, b);
			pins[id - 1]++;
		} else if (what == 2 && pins[id - 1]) {
			CHECK_RC(t1_unpin(t, b), 0);
			pins[id - 1]--;
		} else if (what == 3 && !pins[id - 1]) {
			CHECK_RC(t1_delete(t, &k), 0);
		} else {
			enum t1_hint h = (enum t1_hint)(R() % 3);
			CHECK_RC(t1_set_hint(t, b, h, R() % 40), pins[id - 1] ? -EBUSY : 0);
		}
		uint64_t linked = 0, walked = 0, ret = 0, rel = 0, retb = 0;
		for (uint64_t i = 1; i <= NB; i++) {
			struct t1_key ki = tkey(1, i);
			struct t1_block *x = t1_find(t, &ki);
			if (!x)
				continue;
			linked += pins[i - 1] == 0;
			if (t1_block_hint(x) == T1_HINT_RETAIN) {
				ret++;
				retb += (t1_block_len(x) + CHUNK - 1) / CHUNK * CHUNK;
			}
			rel += t1_block_hint(x) == T1_HINT_RELEASE;
		}
		int phase = 0;
		for (struct t1_block *x = t1_cold_next(t, NULL); x; x = t1_cold_next(t, x)) {
			int ph = t1_block_hint(x) == T1_HINT_RELEASE ? 0
				 : t1_block_hint(x) == T1_HINT_NONE  ? 1
								     : 2;
			CHECK_MSG(ph >= phase, "op %d: cold walk out of order", op);
			phase = ph;
			walked++;
			CHECK(walked <= NB);
		}
		struct t1_stats s = stats(t);
		CHECK_MSG(walked == linked, "op %d: walked %llu of %llu", op,
			  (unsigned long long)walked, (unsigned long long)linked);
		CHECK_EQ(s.retained_blocks, ret);
		CHECK_EQ(s.retained_bytes, retb);
		CHECK_EQ(s.released_blocks, rel);
		CHECK(s.retained_bytes <= 24 * CHUNK * 60 / 100);
	}
#undef R
	t1_close(t);
}

TEST_MAIN(index_many_keys_insert_find_remove_and_grow,
	  index_same_key_under_two_tenants_is_two_entries, index_duplicate_insert_is_eexist, index_seeds_differ_between_tables,
	  open_rejects_bad_config_and_rounds_capacity, reserve_is_invisible_until_commit,
	  second_reserve_of_a_key_is_eexist_pending_or_committed, abort_gives_everything_back,
	  zero_and_oversize_lengths_are_efbig,
	  fragmented_block_extents_cover_its_length_and_keep_neighbours_intact,
	  delete_unpin_and_pin_counts, deleted_while_referenced_is_freed_at_last_unref,
	  aborted_while_referenced_is_freed_at_last_unref, referenced_block_bytes_survive_a_full_arena,
	  foreach_tenant_reports_blocks_and_quotas, stats_stay_consistent_under_random_operations,
	  hugepages_off_maps_plain_memory, hugepages_auto_falls_back_to_thp,
	  hugepages_on_fails_cleanly_without_huge_pages, mlock_modes,
	  close_frees_pending_referenced_and_dead_blocks,
	  reserve_free_never_evicts_and_contains_sees_pending,
	  reserve_free_respects_the_quota_without_evicting,
	  backed_parent_may_be_evicted_for_its_own_child,
	  evicting_a_backed_middle_block_releases_every_hold,
	  droppable_blocks_are_free_room_for_a_clean_reserve,
	  unlocked_arena_is_faulted_in_by_a_background_thread,
	  released_blocks_go_first_and_retained_ones_last, retain_runs_out_at_its_deadline,
	  retain_zero_or_release_clears_and_renewing_moves_the_deadline,
	  retain_is_capped_nearest_deadlines_first, retained_blocks_still_go_when_nothing_else_can,
	  access_clears_release_and_a_pin_ends_a_retain,
	  a_released_chain_shortens_from_its_tail,
	  cold_walk_and_random_hints_agree_with_the_counters)
