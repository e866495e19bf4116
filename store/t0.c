/*
 * t0.c - the GPU tier's block store (t0.h): the host tier's chunk allocator,
 * block index and eviction policy over a pool of memory that a backend provides.
 * It keeps none of the host tier's chain, pin or quota machinery: T0 holds copies
 * of blocks that the host tier also holds, so any committed block nobody is
 * reading may go at no cost (POLICY_FREE), and LOOKUP still finds the chain in
 * the lower tiers.
 *
 * A block's life: t0_reserve makes it PENDING with one reference (the filler's),
 * t0_commit makes it COMMITTED (visible, in the policy) and drops that reference;
 * delete, eviction or abort unlink it, and an unlinked block still referenced is
 * DEAD until its last unref.
 */
#include "t0.h"

#include <assert.h>
#include <errno.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#include "alloc.h"
#include "index.h"
#include "policy.h"
#include "tenant.h"

#define T0_DEFAULT_CHUNK (64u << 10)
#define T0_MIN_CHUNK 4096u
#define T0_MAX_CHUNK (1u << 30)

enum zstate { Z_PENDING, Z_COMMITTED, Z_DEAD };

struct t0_block {
	struct index_node inode;
	struct policy_node pnode;
	struct tenant *tenant;
	struct t0_block *dead_prev, *dead_next;
	uint64_t len;
	uint64_t nchunks;
	uint32_t refs;
	enum zstate state;
	size_t nextents;
	struct t1_extent ext[];
};

struct t0 {
	const struct t0_pool_ops *ops;
	void *arg;
	uint8_t *base;
	uint64_t capacity;
	uint64_t chunk;
	unsigned shift;
	struct alloc alloc;
	struct alloc_runs runs;
	struct index index;
	struct policy *policy;
	struct t0_block *dead;
	uint64_t evictable; /* chunks of committed, unreferenced blocks */
	uint64_t blocks, pending, evictions, evicted_bytes;
	/* Per-tenant bytes (chunk-rounded; tenant.h's fields, in bytes) and quotas. */
	struct tenant_table tenants;
	uint64_t (*quota)(void *arg, uint32_t tenant);
	void *quota_arg;
	uint64_t quota_evictions, quota_refusals;
};

static struct t0_block *from_inode(struct index_node *n)
{
	return (struct t0_block *)((char *)n - offsetof(struct t0_block, inode));
}

static struct t0_block *from_pnode(struct policy_node *n)
{
	return (struct t0_block *)((char *)n - offsetof(struct t0_block, pnode));
}

static bool is_evictable(const struct t0_block *b)
{
	return b->state == Z_COMMITTED && b->refs == 0;
}

static void account(struct t0 *t, const struct t0_block *b, bool was)
{
	bool now = is_evictable(b);
	if (now && !was) {
		t->evictable += b->nchunks;
		b->tenant->evictable += b->nchunks << t->shift;
	} else if (was && !now) {
		t->evictable -= b->nchunks;
		b->tenant->evictable -= b->nchunks << t->shift;
	}
}

int t0_open(const struct t0_config *cfg, struct t0 **out)
{
	if (!cfg || !out || !cfg->ops || !cfg->ops->alloc || !cfg->ops->free || !cfg->ops->copy)
		return -EINVAL;
	uint64_t chunk = cfg->chunk_size ? cfg->chunk_size : T0_DEFAULT_CHUNK;
	if (chunk < T0_MIN_CHUNK || chunk > T0_MAX_CHUNK || (chunk & (chunk - 1)) ||
	    cfg->policy > T1_POLICY_LRU)
		return -EINVAL;
	uint64_t nchunks = cfg->capacity / chunk;
	if (nchunks == 0)
		return -EINVAL;
	struct t0 *t = calloc(1, sizeof(*t));
	if (!t)
		return -ENOMEM;
	t->ops = cfg->ops;
	t->arg = cfg->arg;
	t->quota = cfg->quota;
	t->quota_arg = cfg->quota_arg;
	t->chunk = chunk;
	t->shift = (unsigned)__builtin_ctzll(chunk);
	t->capacity = nchunks * chunk;
	int rc = alloc_init(&t->alloc, nchunks);
	if (rc < 0)
		goto out_free;
	rc = index_init(&t->index, nchunks < 4096 ? (size_t)nchunks : 4096);
	if (rc < 0)
		goto out_alloc;
	struct policy_config pc = { .evict_scan = cfg->evict_scan };
	rc = cfg->policy == T1_POLICY_LRU ? policy_lru_create(&pc, &t->policy)
					  : policy_2q_create(&pc, &t->policy);
	if (rc < 0)
		goto out_index;
	void *base = NULL;
	rc = t->ops->alloc(t->arg, t->capacity, &base);
	if (rc < 0)
		goto out_policy;
	if (!base) {
		rc = -ENOMEM;
		goto out_policy;
	}
	t->base = base;
	*out = t;
	return 0;

out_policy:
	policy_destroy(t->policy);
out_index:
	index_destroy(&t->index);
out_alloc:
	alloc_destroy(&t->alloc);
out_free:
	free(t);
	return rc;
}

static void free_indexed(struct index_node *n, void *arg)
{
	(void)arg;
	free(from_inode(n));
}

void t0_close(struct t0 *t)
{
	if (!t)
		return;
	index_foreach(&t->index, free_indexed, NULL);
	while (t->dead) {
		struct t0_block *b = t->dead;
		t->dead = b->dead_next;
		free(b);
	}
	policy_destroy(t->policy);
	index_destroy(&t->index);
	alloc_runs_free(&t->runs);
	alloc_destroy(&t->alloc);
	tenant_table_destroy(&t->tenants);
	t->ops->free(t->arg, t->base, t->capacity);
	free(t);
}

/* ---- lifetime ------------------------------------------------------------------ */

static void block_free(struct t0 *t, struct t0_block *b)
{
	for (size_t i = 0; i < b->nextents; i++) {
		uint64_t start = (uint64_t)(b->ext[i].ptr - t->base) >> t->shift;
		uint64_t n = (b->ext[i].len + t->chunk - 1) >> t->shift;
		alloc_put(&t->alloc, start, n);
	}
	struct tenant *tn = b->tenant;
	tn->bytes -= b->nchunks << t->shift;
	tn->users--;
	tenant_put_if_idle(&t->tenants, tn);
	free(b);
}

/* Out of the index and the policy; DEAD. */
static void block_unlink(struct t0 *t, struct t0_block *b)
{
	bool was = is_evictable(b);
	index_remove(&t->index, &b->inode);
	if (b->state == Z_COMMITTED) {
		policy_remove(t->policy, &b->pnode);
		t->blocks--;
		b->tenant->blocks--;
	} else {
		t->pending--;
	}
	b->state = Z_DEAD;
	account(t, b, was);
}

/* After block_unlink: free now, or at the last unref. */
static void block_drop(struct t0 *t, struct t0_block *b)
{
	if (b->refs == 0) {
		block_free(t, b);
		return;
	}
	b->dead_prev = NULL;
	b->dead_next = t->dead;
	if (t->dead)
		t->dead->dead_prev = b;
	t->dead = b;
}

static void dead_remove(struct t0 *t, struct t0_block *b)
{
	if (b->dead_prev)
		b->dead_prev->dead_next = b->dead_next;
	else
		t->dead = b->dead_next;
	if (b->dead_next)
		b->dead_next->dead_prev = b->dead_prev;
}

/* arg: NULL, or the only tenant whose blocks may go. */
static enum policy_class classify(const struct policy_node *n, void *arg)
{
	const struct t0_block *b =
		(const struct t0_block *)((const char *)n - offsetof(struct t0_block, pnode));
	if (arg && b->tenant != arg)
		return POLICY_KEEP;
	/* Every block is also in a lower tier: evicting it costs nothing. */
	return is_evictable(b) ? POLICY_FREE : POLICY_KEEP;
}

static bool evict_one(struct t0 *t, struct tenant *only)
{
	bool nontail = false;
	struct policy_node *n = policy_victim(t->policy, classify, only, &nontail);
	if (!n)
		return false;
	struct t0_block *v = from_pnode(n);
	t->evictions++;
	t->evicted_bytes += v->nchunks << t->shift;
	block_unlink(t, v);
	block_drop(t, v);
	return true;
}

/* The tenant's T0 quota in bytes, 0 for none. */
static uint64_t quota_of(const struct t0 *t, const struct tenant *tn)
{
	return t->quota ? t->quota(t->quota_arg, tn->id) : 0;
}

/* Room for bytes of tn: its own blocks first while it would be over its quota, then
 * anyone's while the pool is short. Checked before anything is evicted. */
static int make_room(struct t0 *t, struct tenant *tn, uint64_t nchunks)
{
	uint64_t bytes = nchunks << t->shift, q = quota_of(t, tn);
	if (q && (bytes > q || (tn->bytes + bytes > q && tn->bytes + bytes - q > tn->evictable))) {
		t->quota_refusals++;
		return -EDQUOT;
	}
	if (alloc_free_chunks(&t->alloc) + t->evictable < nchunks)
		return -ENOSPC;
	while (q && tn->bytes + bytes > q) {
		if (!evict_one(t, tn))
			return -EDQUOT; /* the counters lied; fail rather than overrun */
		t->quota_evictions++;
	}
	while (alloc_free_chunks(&t->alloc) < nchunks)
		if (!evict_one(t, NULL))
			return -ENOSPC;
	return 0;
}

/* ---- insert ---------------------------------------------------------------------- */

int t0_reserve(struct t0 *t, const struct t1_key *key, uint64_t len, struct t0_block **out)
{
	if (len == 0 || len > t->capacity)
		return -EFBIG;
	if (index_find(&t->index, key))
		return -EEXIST;
	uint64_t nchunks = (len + t->chunk - 1) >> t->shift;
	struct tenant *tn;
	int rc = tenant_get(&t->tenants, key->tenant, &tn);
	if (rc < 0)
		return rc;
	tn->users++; /* held while room is made */
	rc = index_reserve(&t->index, 1);
	if (rc == 0)
		rc = make_room(t, tn, nchunks);
	if (rc == 0)
		rc = alloc_get(&t->alloc, nchunks, &t->runs);
	size_t nruns = t->runs.n;
	struct t0_block *b = NULL;
	if (rc == 0) {
		b = malloc(sizeof(*b) + nruns * sizeof(b->ext[0]));
		if (!b) {
			for (size_t i = 0; i < nruns; i++)
				alloc_put(&t->alloc, t->runs.v[i].start, t->runs.v[i].len);
			rc = -ENOMEM;
		}
	}
	if (rc < 0 || !b) {
		tn->users--;
		tenant_put_if_idle(&t->tenants, tn);
		return rc < 0 ? rc : -ENOMEM;
	}
	memset(b, 0, sizeof(*b));
	b->tenant = tn; /* keeps the hold taken above */
	tn->bytes += nchunks << t->shift;
	b->inode.key = *key;
	b->len = len;
	b->nchunks = nchunks;
	b->refs = 1;
	b->state = Z_PENDING;
	b->nextents = nruns;
	uint64_t left = len;
	for (size_t i = 0; i < nruns; i++) {
		uint64_t run_bytes = t->runs.v[i].len << t->shift;
		b->ext[i].ptr = t->base + (t->runs.v[i].start << t->shift);
		b->ext[i].len = run_bytes < left ? run_bytes : left;
		left -= b->ext[i].len;
	}
	rc = index_insert(&t->index, &b->inode);
	assert(rc == 0); /* room reserved, key checked absent */
	(void)rc;
	t->pending++;
	*out = b;
	return 0;
}

int t0_fill(struct t0 *t, struct t0_block *b, const struct t1_extent *src, size_t nsrc)
{
	uint64_t off = 0;
	size_t d = 0;
	uint64_t doff = 0;
	for (size_t i = 0; i < nsrc && off < b->len; i++) {
		uint64_t soff = 0;
		uint64_t slen = src[i].len < b->len - off ? src[i].len : b->len - off;
		while (soff < slen) {
			if (d >= b->nextents)
				return -EINVAL;
			uint64_t room = b->ext[d].len - doff;
			uint64_t n = slen - soff < room ? slen - soff : room;
			int rc = t->ops->copy(t->arg, b->ext[d].ptr + doff, src[i].ptr + soff, n);
			if (rc)
				return rc < 0 ? rc : -EIO;
			soff += n;
			doff += n;
			if (doff == b->ext[d].len) {
				d++;
				doff = 0;
			}
		}
		off += slen;
	}
	return off == b->len ? 0 : -EINVAL;
}

int t0_commit(struct t0 *t, struct t0_block *b)
{
	if (b->state == Z_DEAD) {
		t0_block_unref(t, b);
		return -ENOENT;
	}
	assert(b->state == Z_PENDING);
	b->state = Z_COMMITTED;
	b->pnode.key = b->inode.hash;
	t->pending--;
	t->blocks++;
	b->tenant->blocks++;
	policy_insert(t->policy, &b->pnode);
	t0_block_unref(t, b); /* the filler's reference */
	return 0;
}

void t0_abort(struct t0 *t, struct t0_block *b)
{
	if (b->state == Z_PENDING) {
		block_unlink(t, b);
		block_drop(t, b); /* onto the dead list: the filler still holds it */
	}
	assert(b->state == Z_DEAD);
	t0_block_unref(t, b);
}

/* ---- lookups and readers ----------------------------------------------------------- */

struct t0_block *t0_find(struct t0 *t, const struct t1_key *key)
{
	struct index_node *n = index_find(&t->index, key);
	if (!n)
		return NULL;
	struct t0_block *b = from_inode(n);
	return b->state == Z_COMMITTED ? b : NULL;
}

void t0_touch(struct t0 *t, struct t0_block *b)
{
	if (b->state == Z_COMMITTED)
		policy_access(t->policy, &b->pnode);
}

void t0_block_ref(struct t0 *t, struct t0_block *b)
{
	bool was = is_evictable(b);
	b->refs++;
	account(t, b, was);
}

void t0_block_unref(struct t0 *t, struct t0_block *b)
{
	assert(b->refs > 0);
	if (b->refs == 0)
		return;
	bool was = is_evictable(b);
	b->refs--;
	if (b->state == Z_DEAD) {
		if (b->refs == 0) {
			dead_remove(t, b);
			block_free(t, b);
		}
		return;
	}
	account(t, b, was);
}

int t0_delete(struct t0 *t, const struct t1_key *key)
{
	struct index_node *n = index_find(&t->index, key);
	if (!n)
		return -ENOENT;
	struct t0_block *b = from_inode(n);
	block_unlink(t, b);
	block_drop(t, b);
	return 0;
}

/* ---- accessors --------------------------------------------------------------------- */

uint64_t t0_block_len(const struct t0_block *b)
{
	return b->len;
}

const struct t1_extent *t0_block_extents(const struct t0_block *b, size_t *n)
{
	*n = b->nextents;
	return b->ext;
}

void t0_get_stats(const struct t0 *t, struct t0_stats *s)
{
	memset(s, 0, sizeof(*s));
	s->capacity = t->capacity;
	s->used = t->capacity - (alloc_free_chunks(&t->alloc) << t->shift);
	s->blocks = t->blocks;
	s->pending = t->pending;
	s->evictions = t->evictions;
	s->evicted_bytes = t->evicted_bytes;
	s->chunk_size = t->chunk;
	s->quota_evictions = t->quota_evictions;
	s->quota_refusals = t->quota_refusals;
}

uint64_t t0_tenant_bytes(const struct t0 *t, uint32_t tenant)
{
	const struct tenant *tn = tenant_find(&t->tenants, tenant);
	return tn ? tn->bytes : 0;
}

const char *t0_policy_name(const struct t0 *t)
{
	return t->policy->ops->name;
}
