/*
 * t1.c - the host-RAM tier: composes the arena (arena.c), the chunk allocator
 * (alloc.c), the block index (index.c), the eviction policy (policy.h) and the
 * per-tenant accounting (tenant.c) into the block store that t1.h promises.
 *
 * A block's life: t1_reserve makes it PENDING (indexed, so a second reserve of the
 * key fails, but invisible to t1_find), t1_commit makes it COMMITTED (visible and
 * known to the policy), and delete, eviction or abort unlink it. An unlinked block
 * whose bytes a worker still holds (refs > 0) becomes DEAD: it keeps its chunks and
 * its tenant's byte count until the last t1_block_unref frees it.
 *
 * Space checks are done before anything is evicted: t1 keeps the bytes that eviction
 * could take right now (committed, unpinned, unreferenced), globally and per tenant,
 * so a reserve that cannot succeed fails without destroying cached blocks, and one
 * that can succeed is sure to find its victims.
 */
#include "t1.h"

#include <assert.h>
#include <errno.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "alloc.h"
#include "arena.h"
#include "index.h"
#include "policy.h"
#include "tenant.h"

#define T1_DEFAULT_CHUNK (64u << 10)
#define T1_MIN_CHUNK 4096u
#define T1_MAX_CHUNK (1u << 30)

/* What a reserve may evict to make room. */
enum evict_mode {
	EVICT_ANY,  /* anything the policy picks */
	EVICT_NONE, /* nothing: free space only */
	EVICT_FREE, /* only blocks whose eviction costs nothing (T1_FLAG_BACKED) */
};

enum blk_state {
	BLK_PENDING,
	BLK_COMMITTED,
	BLK_DEAD, /* unlinked, waiting for its last unref */
};

struct t1_block {
	struct index_node inode;
	struct policy_node pnode;
	struct tenant *tenant;
	kvt_key parent_key;
	/* Chain links: parent is the resident block this one counts in (found by
	 * parent_key when this one was reserved); children are those counting in this
	 * one. Kept as pointers, not keys, so that a parent leaving first can detach its
	 * children and a later block under the same key is never miscounted. */
	struct t1_block *parent;
	struct t1_block *first_child;
	struct t1_block *sib_prev, *sib_next;
	uint32_t nchildren;
	/* DEAD blocks, so that t1_close can find them. */
	struct t1_block *dead_prev, *dead_next;
	uint64_t len;
	uint64_t nchunks;
	kvt_block_desc desc;
	uint32_t refs;
	uint32_t pins;
	uint32_t accesses; /* t1_touch calls since it was reserved */
	uint32_t uflags;   /* the owner's (t1_block_flags) */
	enum blk_state state;
	enum t1_hint hint;     /* the engine's eviction hint (t1_set_hint) */
	uint64_t retain_until; /* T1_HINT_RETAIN: t1 clock milliseconds */
	size_t nextents;
	struct t1_extent ext[];
};

struct t1 {
	struct t1_block **held; /* ancestors held during a reserve (hold_chain) */
	size_t nheld, held_cap;
	void (*on_evict)(const struct t1_block *b, void *arg);
	void *evict_arg;
	bool (*droppable)(const struct t1_block *b, void *arg);
	struct arena arena;
	struct alloc alloc;
	struct alloc_runs runs; /* scratch for alloc_get */
	struct index index;
	struct policy *policy;
	/* Blocks with an eviction hint live outside the policy, in two lists with
	 * policy_node links (sentinels; next = first to go): released ones, in the
	 * order they were released, go before anything the policy holds; retained
	 * ones, by deadline, go after it. */
	struct policy_node released, retained;
	uint32_t scan;
	uint64_t (*clock_ms)(void);
	uint64_t retain_max;    /* bytes that may hold RETAIN at once */
	uint64_t retained_bytes; /* chunk-rounded */
	uint64_t retained_blocks, released_blocks;
	uint64_t retain_expired, retain_capped, retain_evicted;
	struct tenant_table tenants;
	struct t1_block *dead;
	uint64_t chunk;
	unsigned chunk_shift;
	uint64_t capacity;
	uint64_t default_quota;
	uint64_t evictable; /* chunk-rounded bytes of evictable blocks */
	uint64_t blocks, pending, pinned;
	uint64_t evictions, evicted_bytes, evict_nontail, alloc_failures, extents;
};

static struct t1_block *from_inode(struct index_node *n)
{
	return (struct t1_block *)((char *)n - offsetof(struct t1_block, inode));
}

static const struct t1_block *from_pnode(const struct policy_node *n)
{
	return (const struct t1_block *)((const char *)n - offsetof(struct t1_block, pnode));
}

static struct t1_block *from_pnode_mut(struct policy_node *n)
{
	return (struct t1_block *)((char *)n - offsetof(struct t1_block, pnode));
}

static bool key_is_zero(const kvt_key *k)
{
	static const kvt_key zero;
	return memcmp(k->b, zero.b, sizeof(zero.b)) == 0;
}

static uint64_t block_bytes(const struct t1 *t, const struct t1_block *b)
{
	return b->nchunks << t->chunk_shift;
}

static uint64_t tenant_quota(const struct t1 *t, const struct tenant *tn)
{
	return tn->quota_set ? tn->quota : t->default_quota;
}

/* ---- evictable accounting --------------------------------------------------- */

/* Pinned blocks are taken out of the policy while pinned: pins are held for as long
 * as a connection likes, and victim searches should not walk over them every time.
 * Unpinning puts the block back as the most recent (it was in use until then). */
static bool linked(const struct t1_block *b)
{
	return b->state == BLK_COMMITTED && b->pins == 0;
}

static bool in_policy(const struct t1_block *b)
{
	return linked(b) && b->hint == T1_HINT_NONE;
}

static bool is_evictable(const struct t1_block *b)
{
	return b->state == BLK_COMMITTED && b->pins == 0 && b->refs == 0;
}

/* Call after changing b's state, pins or refs, with what is_evictable said before. */
static void account(struct t1 *t, struct t1_block *b, bool was)
{
	bool now = is_evictable(b);
	if (now == was)
		return;
	uint64_t bytes = block_bytes(t, b);
	if (now) {
		t->evictable += bytes;
		b->tenant->evictable += bytes;
	} else {
		t->evictable -= bytes;
		b->tenant->evictable -= bytes;
	}
}

/* ---- eviction hints ------------------------------------------------------------ */

/*
 * An engine knows what no eviction rule can see: that a session is finished, or
 * that it will be back shortly (a tool call in flight). t1_set_hint takes that
 * as a block's hint. A RELEASED block goes before any block the policy holds; a
 * RETAINED one only after all of them, until its deadline, when it returns to the
 * policy as a new block. Pinning a block, like reading a released one, ends its
 * hint: it is in use. Hinted blocks leave the policy, as pinned ones do, and
 * sit in t1's own two lists; victim searches take the lists and the policy in
 * order, under the same classify rules (chain tails, tenant scope, free room).
 * At most retain_max bytes hold RETAIN at once: past that, the retained blocks
 * with the nearest deadlines lose it first. So a client that retains everything
 * gets LRU-like behaviour among its own blocks, never an unevictable tier.
 */

static uint64_t clock_monotonic_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

static void node_unlink(struct policy_node *n)
{
	n->prev->next = n->next;
	n->next->prev = n->prev;
	n->prev = n->next = NULL;
}

static void node_insert_before(struct policy_node *at, struct policy_node *n)
{
	n->next = at;
	n->prev = at->prev;
	at->prev->next = n;
	at->prev = n;
}

/* Retained blocks by deadline, nearest first. Deadlines mostly arrive in order
 * (one duration per client), so the walk from the far end is short; one nearer
 * than every other goes straight to the front. */
static void retained_insert(struct t1 *t, struct t1_block *b)
{
	struct policy_node *at = &t->retained;
	if (at->next != at && from_pnode(at->next)->retain_until > b->retain_until) {
		node_insert_before(at->next, &b->pnode);
		return;
	}
	while (at->prev != &t->retained &&
	       from_pnode(at->prev)->retain_until > b->retain_until)
		at = at->prev;
	node_insert_before(at, &b->pnode);
}

/* b is linked (committed, unpinned): put it where its hint says. */
static void list_enter(struct t1 *t, struct t1_block *b)
{
	switch (b->hint) {
	case T1_HINT_NONE:
		policy_insert(t->policy, &b->pnode);
		break;
	case T1_HINT_RELEASE:
		node_insert_before(&t->released, &b->pnode);
		break;
	case T1_HINT_RETAIN:
		retained_insert(t, b);
		break;
	}
}

static void list_leave(struct t1 *t, struct t1_block *b)
{
	if (b->hint == T1_HINT_NONE)
		policy_remove(t->policy, &b->pnode);
	else
		node_unlink(&b->pnode);
}

/* Set b's hint in the counters (b committed); the lists are the caller's. */
static void hint_count(struct t1 *t, struct t1_block *b, enum t1_hint h)
{
	uint64_t bytes = block_bytes(t, b);
	if (b->hint == T1_HINT_RETAIN) {
		t->retained_blocks--;
		t->retained_bytes -= bytes;
	} else if (b->hint == T1_HINT_RELEASE) {
		t->released_blocks--;
	}
	if (h == T1_HINT_RETAIN) {
		t->retained_blocks++;
		t->retained_bytes += bytes;
	} else if (h == T1_HINT_RELEASE) {
		t->released_blocks++;
	}
	b->hint = h;
}

/* Change a committed block's hint, moving it between the lists if it is in one. */
static void hint_move(struct t1 *t, struct t1_block *b, enum t1_hint h)
{
	bool in = linked(b);
	if (in)
		list_leave(t, b);
	hint_count(t, b, h);
	if (in)
		list_enter(t, b);
}

/* Retained blocks past their deadline go back to the policy. */
static void retain_expire(struct t1 *t)
{
	if (t->retained.next == &t->retained)
		return;
	uint64_t now = t->clock_ms();
	while (t->retained.next != &t->retained) {
		struct t1_block *b = from_pnode_mut(t->retained.next);
		if (b->retain_until > now)
			break;
		hint_move(t, b, T1_HINT_NONE);
		t->retain_expired++;
	}
}

/* Over retain_max: the nearest deadlines lose RETAIN first. */
static void retain_cap(struct t1 *t)
{
	while (t->retained_bytes > t->retain_max && t->retained.next != &t->retained) {
		hint_move(t, from_pnode_mut(t->retained.next), T1_HINT_NONE);
		t->retain_capped++;
	}
}

int t1_set_hint(struct t1 *t, struct t1_block *b, enum t1_hint hint, uint64_t duration_ms)
{
	if (b->state != BLK_COMMITTED)
		return -ENOENT;
	if (hint > T1_HINT_RELEASE)
		return -EINVAL;
	if (b->pins)
		return -EBUSY; /* in use: a pin outranks any hint, and ends it */
	if (hint == T1_HINT_RETAIN && duration_ms == 0)
		hint = T1_HINT_NONE;
	if (hint != T1_HINT_RETAIN) {
		if (b->hint != hint)
			hint_move(t, b, hint);
		return 0;
	}
	/* A new deadline re-sorts the block even when it was retained already. */
	uint64_t now = t->clock_ms();
	b->retain_until = duration_ms > UINT64_MAX - now ? UINT64_MAX : now + duration_ms;
	hint_move(t, b, T1_HINT_RETAIN);
	retain_cap(t);
	return 0;
}

enum t1_hint t1_block_hint(const struct t1_block *b)
{
	return b->hint;
}

/* A victim: released blocks, then the policy's, then retained ones (nearest
 * deadline first). */
static struct policy_node *victim(struct t1 *t, policy_classify_fn classify, void *arg,
				  bool *nontail)
{
	retain_expire(t);
	struct policy_node *n = policy_list_search(&t->released, t->scan, classify, arg, nontail);
	if (!n)
		n = policy_victim(t->policy, classify, arg, nontail);
	if (!n)
		n = policy_list_search(&t->retained, t->scan, classify, arg, nontail);
	return n;
}

/* ---- chains ------------------------------------------------------------------ */

/* The indexed block (pending or committed) of tenant named parent, or NULL. */
static struct t1_block *find_parent(struct t1 *t, uint32_t tenant, const kvt_key *parent)
{
	if (!parent || key_is_zero(parent))
		return NULL;
	struct t1_key pk = { .tenant = tenant, .key = *parent };
	struct index_node *n = index_find(&t->index, &pk);
	return n ? from_inode(n) : NULL;
}

/*
 * Hold a ref on p and its ancestors while room is made for a new child of p. A
 * block is only useful behind its whole prefix, so making room for it must never
 * evict that prefix: when nothing else can go, the reserve fails and the prefix
 * stays, rather than hollowing the chain out from the middle. Refs (rather than a
 * mark) keep the evictable counters, and so the up-front checks, exact.
 *
 * Blocks with a copy in a lower tier are not held: they may go, and the prefix
 * stays whole there. Because eviction can therefore free an ancestor, and with it
 * unlink the chain, the blocks held are recorded and released from that record,
 * never by walking the chain again.
 */
static void release_chain(struct t1 *t);

static int hold_chain(struct t1 *t, struct t1_block *p)
{
	t->nheld = 0;
	for (; p; p = p->parent) {
		if (p->uflags & T1_FLAG_BACKED)
			continue;
		if (t->nheld == t->held_cap) {
			size_t ncap = t->held_cap ? t->held_cap * 2 : 64;
			struct t1_block **nh = realloc(t->held, ncap * sizeof(*nh));
			if (!nh) {
				release_chain(t);
				return -ENOMEM;
			}
			t->held = nh;
			t->held_cap = ncap;
		}
		bool was = is_evictable(p);
		p->refs++;
		account(t, p, was);
		t->held[t->nheld++] = p;
	}
	return 0;
}

static void release_chain(struct t1 *t)
{
	for (size_t i = 0; i < t->nheld; i++) {
		struct t1_block *p = t->held[i];
		bool was = is_evictable(p);
		p->refs--;
		account(t, p, was);
	}
	t->nheld = 0;
}

static void chain_link(struct t1_block *b, struct t1_block *p)
{
	if (!p)
		return;
	b->parent = p;
	b->sib_prev = NULL;
	b->sib_next = p->first_child;
	if (p->first_child)
		p->first_child->sib_prev = b;
	p->first_child = b;
	p->nchildren++;
}

static void chain_unlink(struct t1_block *b)
{
	struct t1_block *p = b->parent;
	if (p) {
		if (b->sib_prev)
			b->sib_prev->sib_next = b->sib_next;
		else
			p->first_child = b->sib_next;
		if (b->sib_next)
			b->sib_next->sib_prev = b->sib_prev;
		p->nchildren--;
		b->parent = NULL;
		b->sib_prev = b->sib_next = NULL;
	}
	/* Orphan the children: they stay, but no longer count in anything. */
	struct t1_block *c = b->first_child;
	while (c) {
		struct t1_block *next = c->sib_next;
		c->parent = NULL;
		c->sib_prev = c->sib_next = NULL;
		c = next;
	}
	b->first_child = NULL;
	b->nchildren = 0;
}

/* ---- block lifetime ---------------------------------------------------------- */

/* Give the chunks back and free the struct. b is unlinked and unreferenced. */
static void block_free(struct t1 *t, struct t1_block *b)
{
	for (size_t i = 0; i < b->nextents; i++) {
		uint64_t start = (uint64_t)(b->ext[i].ptr - t->arena.base) >> t->chunk_shift;
		uint64_t n = (b->ext[i].len + t->chunk - 1) >> t->chunk_shift;
		alloc_put(&t->alloc, start, n);
	}
	t->extents -= b->nextents;
	struct tenant *tn = b->tenant;
	tn->bytes -= block_bytes(t, b);
	tn->users--;
	tenant_put_if_idle(&t->tenants, tn);
	free(b);
}

/* Take b out of the index, the policy and its chain; it becomes DEAD. Pins only
 * survive to here through t1_abort of a pinned pending block, and go with it. */
static void block_unlink(struct t1 *t, struct t1_block *b)
{
	bool was = is_evictable(b);
	index_remove(&t->index, &b->inode);
	if (linked(b))
		list_leave(t, b);
	if (b->state == BLK_COMMITTED) {
		hint_count(t, b, T1_HINT_NONE);
		t->blocks--;
		b->tenant->blocks--;
	} else {
		t->pending--;
	}
	chain_unlink(b);
	if (b->pins) {
		b->pins = 0;
		t->pinned--;
	}
	b->state = BLK_DEAD;
	account(t, b, was);
}

/* After block_unlink: free now, or when the last reader lets go. */
static void block_drop(struct t1 *t, struct t1_block *b)
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

static void dead_remove(struct t1 *t, struct t1_block *b)
{
	if (b->dead_prev)
		b->dead_prev->dead_next = b->dead_next;
	else
		t->dead = b->dead_next;
	if (b->dead_next)
		b->dead_next->dead_prev = b->dead_prev;
}

/* ---- eviction ---------------------------------------------------------------- */

/* A victim search: the t1 (for its droppable hook) and the tenant it is limited
 * to (NULL: anyone's). */
struct evict_scope {
	const struct t1 *t;
	const struct tenant *tenant;
};

static enum policy_class classify_block(const struct t1 *t, const struct t1_block *b)
{
	if (!is_evictable(b))
		return POLICY_KEEP;
	/* Evicting a backed block costs nothing and breaks no chain: the lower tier
	 * still has it. Nor does one the lower tier would not take. */
	if (b->uflags & T1_FLAG_BACKED)
		return POLICY_FREE;
	if (t->droppable && t->droppable(b, t->evict_arg))
		return POLICY_FREE;
	return b->nchildren ? POLICY_NONTAIL : POLICY_TAIL;
}

static enum policy_class classify_any(const struct policy_node *n, void *arg)
{
	const struct evict_scope *sc = arg;
	return classify_block(sc->t, from_pnode(n));
}

/* Only blocks whose eviction costs nothing (a lower tier has them, or would not). */
static enum policy_class classify_free(const struct policy_node *n, void *arg)
{
	const struct evict_scope *sc = arg;
	const struct t1_block *b = from_pnode(n);
	if (sc->tenant && b->tenant != sc->tenant)
		return POLICY_KEEP;
	return classify_block(sc->t, b) == POLICY_FREE ? POLICY_FREE : POLICY_KEEP;
}

static enum policy_class classify_tenant(const struct policy_node *n, void *arg)
{
	const struct evict_scope *sc = arg;
	const struct t1_block *b = from_pnode(n);
	if (b->tenant != sc->tenant)
		return POLICY_KEEP;
	return classify_block(sc->t, b);
}

/* Evict one block chosen by the policy; false if it found none. */
static bool evict_one(struct t1 *t, policy_classify_fn classify, void *arg)
{
	bool nontail = false;
	struct policy_node *n = victim(t, classify, arg, &nontail);
	if (!n)
		return false;
	struct t1_block *b = from_pnode_mut(n);
	assert(is_evictable(b));
	/* No tail in the window: the coldest block heads a resident chain (typically a
	 * chain longer than the window, written in order). Take the deepest evictable
	 * block down that chain instead, so the chain shortens from its end (or, if its
	 * end is pinned or still being written, is cut as late as possible) and its
	 * head survives. */
	if (nontail) {
		struct t1_block *best = b;
		for (struct t1_block *x = b->first_child; x; x = x->first_child)
			if (linked(x) && x->hint == b->hint &&
			    classify(&x->pnode, arg) != POLICY_KEEP)
				best = x;
		if (best != b) {
			b = best;
			nontail = best->first_child != NULL;
		}
	}
	t->evictions++;
	t->evicted_bytes += block_bytes(t, b);
	if (nontail)
		t->evict_nontail++;
	if (b->hint == T1_HINT_RETAIN)
		t->retain_evicted++;
	if (t->on_evict)
		t->on_evict(b, t->evict_arg);
	block_unlink(t, b);
	block_free(t, b);
	return true;
}

/*
 * Make room for bytes (= nchunks chunks) of tenant tn: first evict tn's own blocks
 * while tn would be over its quota, then anyone's while the arena is short. The
 * checks up front use the evictable counters, so nothing is evicted for a reserve
 * that would fail anyway.
 */
static int make_room(struct t1 *t, struct tenant *tn, uint64_t bytes, uint64_t nchunks,
		     enum evict_mode mode)
{
	uint64_t quota = tenant_quota(t, tn);
	if (mode == EVICT_NONE) {
		if (quota && tn->bytes + bytes > quota)
			return -EDQUOT;
		return alloc_free_chunks(&t->alloc) < nchunks ? -ENOSPC : 0;
	}
	struct evict_scope mine = { t, tn }, anyone = { t, NULL };
	if (mode == EVICT_FREE) {
		/* No exact count of free-to-evict bytes is kept: evict and see. What
		 * goes is backed elsewhere, so an attempt that fails loses nothing. */
		while (quota && tn->bytes + bytes > quota)
			if (!evict_one(t, classify_free, &mine))
				return -EDQUOT;
		while (alloc_free_chunks(&t->alloc) < nchunks)
			if (!evict_one(t, classify_free, &anyone))
				return -ENOSPC;
		return 0;
	}
	if (quota) {
		if (bytes > quota)
			return -EDQUOT;
		if (tn->bytes + bytes > quota && tn->bytes + bytes - quota > tn->evictable)
			return -EDQUOT;
	}
	uint64_t free_bytes = alloc_free_chunks(&t->alloc) << t->chunk_shift;
	if (free_bytes + t->evictable < bytes)
		return -ENOSPC;

	while (quota && tn->bytes + bytes > quota)
		if (!evict_one(t, classify_tenant, &mine))
			return -EDQUOT; /* the counters lied; fail rather than overrun */
	while (alloc_free_chunks(&t->alloc) < nchunks)
		if (!evict_one(t, classify_any, &anyone))
			return -ENOSPC;
	return 0;
}

/* ---- open / close ------------------------------------------------------------ */

int t1_open(const struct t1_config *cfg, struct t1 **out, struct t1_report *rep)
{
	struct t1_report local;
	if (!rep)
		rep = &local;
	memset(rep, 0, sizeof(*rep));
	if (!cfg || !out)
		return -EINVAL;

	uint64_t chunk = cfg->chunk_size ? cfg->chunk_size : T1_DEFAULT_CHUNK;
	if (chunk < T1_MIN_CHUNK || chunk > T1_MAX_CHUNK || (chunk & (chunk - 1)))
		return -EINVAL;
	if (cfg->hugepages > T1_AUTO || cfg->mlock > T1_AUTO || cfg->policy > T1_POLICY_LRU)
		return -EINVAL;
	uint64_t nchunks = cfg->capacity / chunk;
	if (nchunks == 0)
		return -EINVAL;

	struct t1 *t = calloc(1, sizeof(*t));
	if (!t)
		return -ENOMEM;
	t->chunk = chunk;
	t->chunk_shift = (unsigned)__builtin_ctzll(chunk);
	t->capacity = nchunks * chunk;
	t->default_quota = cfg->default_quota;
	t->on_evict = cfg->on_evict;
	t->evict_arg = cfg->evict_arg;
	t->droppable = cfg->droppable;
	t->released.prev = t->released.next = &t->released;
	t->retained.prev = t->retained.next = &t->retained;
	t->scan = cfg->evict_scan ? cfg->evict_scan : POLICY_DEFAULT_SCAN;
	t->clock_ms = cfg->clock_ms ? cfg->clock_ms : clock_monotonic_ms;
	uint32_t pct = cfg->retain_max_pct > 100 ? 100 : cfg->retain_max_pct;
	t->retain_max = t->capacity / 100 * pct + t->capacity % 100 * pct / 100;

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
	rc = arena_map(&t->arena, t->capacity, cfg->hugepages, cfg->mlock, rep);
	if (rc < 0)
		goto out_policy;
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

void t1_close(struct t1 *t)
{
	if (!t)
		return;
	free(t->held);
	index_foreach(&t->index, free_indexed, NULL);
	while (t->dead) {
		struct t1_block *b = t->dead;
		t->dead = b->dead_next;
		free(b);
	}
	policy_destroy(t->policy);
	index_destroy(&t->index);
	tenant_table_destroy(&t->tenants);
	alloc_runs_free(&t->runs);
	alloc_destroy(&t->alloc);
	arena_unmap(&t->arena);
	free(t);
}

/* ---- two-phase insert --------------------------------------------------------- */

static int reserve(struct t1 *t, const struct t1_key *key, const kvt_key *parent, uint64_t len,
		   const kvt_block_desc *desc, enum evict_mode mode, struct t1_block **out)
{
	if (len == 0 || len > t->capacity)
		return -EFBIG;
	if (index_find(&t->index, key))
		return -EEXIST;

	uint64_t nchunks = (len + t->chunk - 1) >> t->chunk_shift;
	uint64_t bytes = nchunks << t->chunk_shift;
	struct t1_block *p = NULL;
	struct tenant *tn;
	int rc = tenant_get(&t->tenants, key->tenant, &tn);
	if (rc < 0)
		goto out_count;
	/* Hold the record across evictions of this tenant's blocks; on success the
	 * hold becomes the new block's. */
	tn->users++;
	rc = index_reserve(&t->index, 1);
	if (rc < 0)
		goto out_tenant;
	p = find_parent(t, key->tenant, parent);
	rc = hold_chain(t, p);
	if (rc < 0)
		goto out_tenant;
	rc = make_room(t, tn, bytes, nchunks, mode);
	if (rc < 0)
		goto out_chain;
	rc = alloc_get(&t->alloc, nchunks, &t->runs);
	if (rc < 0)
		goto out_chain;

	size_t nruns = t->runs.n;
	struct t1_block *b = malloc(sizeof(*b) + nruns * sizeof(b->ext[0]));
	if (!b) {
		rc = -ENOMEM;
		goto out_runs;
	}
	memset(b, 0, sizeof(*b));
	b->inode.key = *key;
	b->tenant = tn;
	if (parent)
		b->parent_key = *parent;
	b->len = len;
	b->nchunks = nchunks;
	if (desc)
		b->desc = *desc;
	b->state = BLK_PENDING;
	b->nextents = nruns;
	uint64_t left = len;
	for (size_t i = 0; i < nruns; i++) {
		uint64_t run_bytes = t->runs.v[i].len << t->chunk_shift;
		b->ext[i].ptr = t->arena.base + (t->runs.v[i].start << t->chunk_shift);
		b->ext[i].len = run_bytes < left ? run_bytes : left;
		left -= b->ext[i].len;
	}

	/* Eviction may have taken the parent (a backed one is not held): look it up
	 * again rather than trust p. */
	chain_link(b, find_parent(t, key->tenant, parent));
	release_chain(t);
	rc = index_insert(&t->index, &b->inode);
	assert(rc == 0); /* room reserved, key checked absent */
	(void)rc;
	tn->bytes += bytes;
	t->pending++;
	t->extents += nruns;
	*out = b;
	return 0;

out_runs:
	for (size_t i = 0; i < t->runs.n; i++)
		alloc_put(&t->alloc, t->runs.v[i].start, t->runs.v[i].len);
out_chain:
	release_chain(t);
out_tenant:
	tn->users--;
	tenant_put_if_idle(&t->tenants, tn);
out_count:
	t->alloc_failures++;
	return rc;
}

int t1_reserve(struct t1 *t, const struct t1_key *key, const kvt_key *parent, uint64_t len,
	       const kvt_block_desc *desc, struct t1_block **out)
{
	return reserve(t, key, parent, len, desc, EVICT_ANY, out);
}

int t1_reserve_free(struct t1 *t, const struct t1_key *key, const kvt_key *parent, uint64_t len,
		    const kvt_block_desc *desc, struct t1_block **out)
{
	return reserve(t, key, parent, len, desc, EVICT_NONE, out);
}

int t1_reserve_clean(struct t1 *t, const struct t1_key *key, const kvt_key *parent, uint64_t len,
		     const kvt_block_desc *desc, struct t1_block **out)
{
	return reserve(t, key, parent, len, desc, EVICT_FREE, out);
}

bool t1_contains(struct t1 *t, const struct t1_key *key)
{
	return index_find(&t->index, key) != NULL;
}

void t1_commit(struct t1 *t, struct t1_block *b)
{
	assert(b->state == BLK_PENDING);
	if (b->state != BLK_PENDING)
		return;
	bool was = is_evictable(b);
	b->state = BLK_COMMITTED;
	b->pnode.key = b->inode.hash; /* (tenant, key): the same whenever it is stored again */
	t->pending--;
	t->blocks++;
	b->tenant->blocks++;
	if (linked(b))
		list_enter(t, b);
	account(t, b, was);
}

void t1_abort(struct t1 *t, struct t1_block *b)
{
	assert(b->state == BLK_PENDING);
	if (b->state != BLK_PENDING)
		return;
	block_unlink(t, b);
	block_drop(t, b);
}

/* ---- lookups, access, readers, pins -------------------------------------------- */

struct t1_block *t1_find(struct t1 *t, const struct t1_key *key)
{
	struct index_node *n = index_find(&t->index, key);
	if (!n)
		return NULL;
	struct t1_block *b = from_inode(n);
	return b->state == BLK_COMMITTED ? b : NULL;
}

void t1_touch(struct t1 *t, struct t1_block *b)
{
	if (b->accesses < UINT32_MAX)
		b->accesses++;
	if (b->hint == T1_HINT_RELEASE) /* in use again: the release no longer holds */
		hint_move(t, b, T1_HINT_NONE);
	else if (in_policy(b))
		policy_access(t->policy, &b->pnode);
}

void t1_block_ref(struct t1 *t, struct t1_block *b)
{
	bool was = is_evictable(b);
	b->refs++;
	account(t, b, was);
}

void t1_block_unref(struct t1 *t, struct t1_block *b)
{
	assert(b->refs > 0);
	if (b->refs == 0)
		return;
	bool was = is_evictable(b);
	b->refs--;
	if (b->state == BLK_DEAD) {
		if (b->refs == 0) {
			dead_remove(t, b);
			block_free(t, b);
		}
		return;
	}
	account(t, b, was);
}

void t1_pin(struct t1 *t, struct t1_block *b)
{
	if (b->state == BLK_DEAD)
		return; /* unreachable through t1_find; nothing to protect */
	bool was = is_evictable(b);
	if (linked(b))
		list_leave(t, b);
	/* In use: whatever the engine said about it before no longer holds. */
	if (b->state == BLK_COMMITTED)
		hint_count(t, b, T1_HINT_NONE);
	if (b->pins++ == 0)
		t->pinned++;
	account(t, b, was);
}

int t1_unpin(struct t1 *t, struct t1_block *b)
{
	if (b->pins == 0)
		return -ENOENT;
	bool was = is_evictable(b);
	if (--b->pins == 0) {
		t->pinned--;
		if (linked(b))
			list_enter(t, b);
	}
	account(t, b, was);
	return 0;
}

int t1_delete(struct t1 *t, const struct t1_key *key)
{
	struct t1_block *b = t1_find(t, key);
	if (!b)
		return -ENOENT;
	if (b->pins)
		return -EBUSY;
	block_unlink(t, b);
	block_drop(t, b);
	return 0;
}

/* ---- accessors ------------------------------------------------------------------ */

struct t1_block *t1_cold_next(struct t1 *t, struct t1_block *after)
{
	/* Released blocks, the policy's, then retained ones, as victim() takes them. */
	struct policy_node *n;
	enum t1_hint in = after ? after->hint : T1_HINT_RELEASE;
	if (in == T1_HINT_RELEASE) {
		n = after ? after->pnode.next : t->released.next;
		if (n != &t->released)
			return from_pnode_mut(n);
		after = NULL;
		in = T1_HINT_NONE;
	}
	if (in == T1_HINT_NONE) {
		n = policy_next_cold(t->policy, after ? &after->pnode : NULL);
		if (n)
			return from_pnode_mut(n);
		after = NULL;
	}
	n = after ? after->pnode.next : t->retained.next;
	return n != &t->retained ? from_pnode_mut(n) : NULL;
}

const kvt_key *t1_block_parent(const struct t1_block *b)
{
	return &b->parent_key;
}

uint32_t t1_block_flags(const struct t1_block *b)
{
	return b->uflags;
}

void t1_block_set_flags(struct t1_block *b, uint32_t flags)
{
	b->uflags = flags;
}

uint32_t t1_block_accesses(const struct t1_block *b)
{
	return b->accesses;
}

bool t1_block_has_children(const struct t1_block *b)
{
	return b->nchildren > 0;
}

bool t1_block_is_committed(const struct t1_block *b)
{
	return b->state == BLK_COMMITTED;
}

uint64_t t1_block_len(const struct t1_block *b)
{
	return b->len;
}

const kvt_block_desc *t1_block_desc(const struct t1_block *b)
{
	return &b->desc;
}

const struct t1_extent *t1_block_extents(const struct t1_block *b, size_t *n)
{
	*n = b->nextents;
	return b->ext;
}

const struct t1_key *t1_block_key(const struct t1_block *b)
{
	return &b->inode.key;
}

/* ---- quotas and stats ------------------------------------------------------------ */

int t1_set_quota(struct t1 *t, uint32_t tenant, uint64_t bytes)
{
	struct tenant *tn;
	int rc = tenant_get(&t->tenants, tenant, &tn);
	if (rc < 0)
		return rc;
	tn->quota_set = true;
	tn->quota = bytes;
	return 0;
}

uint64_t t1_capacity(const struct t1 *t)
{
	return t->capacity;
}

uint64_t t1_free_bytes(const struct t1 *t)
{
	return alloc_free_chunks(&t->alloc) << t->chunk_shift;
}

uint64_t t1_tenant_quota(const struct t1 *t, uint32_t tenant)
{
	const struct tenant *tn = tenant_find(&t->tenants, tenant);
	return tn ? tenant_quota(t, tn) : t->default_quota;
}

void t1_arena(const struct t1 *t, void **base, size_t *len)
{
	*base = t->arena.map;
	*len = t->arena.map_len;
}

const char *t1_policy_name(const struct t1 *t)
{
	return t->policy->ops->name;
}

void t1_get_stats(const struct t1 *t, struct t1_stats *s)
{
	memset(s, 0, sizeof(*s));
	s->capacity = t->capacity;
	s->free_chunks = alloc_free_chunks(&t->alloc);
	s->used = t->capacity - (s->free_chunks << t->chunk_shift);
	s->blocks = t->blocks;
	s->pending = t->pending;
	s->pinned = t->pinned;
	s->evictions = t->evictions;
	s->evicted_bytes = t->evicted_bytes;
	s->evict_nontail = t->evict_nontail;
	s->alloc_failures = t->alloc_failures;
	s->extents = t->extents;
	s->chunk_size = t->chunk;
	s->largest_free_run = alloc_largest_free_run(&t->alloc);
	s->retained_blocks = t->retained_blocks;
	s->retained_bytes = t->retained_bytes;
	s->released_blocks = t->released_blocks;
	s->retain_expired = t->retain_expired;
	s->retain_capped = t->retain_capped;
	s->retain_evicted = t->retain_evicted;
}

void t1_foreach_tenant(const struct t1 *t, void (*fn)(const struct t1_tenant_stats *, void *),
		       void *arg)
{
	for (size_t i = 0; i < t->tenants.n; i++) {
		const struct tenant *tn = t->tenants.v[i];
		struct t1_tenant_stats ts = {
			.tenant = tn->id,
			.bytes = tn->bytes,
			.blocks = tn->blocks,
			.quota = tenant_quota(t, tn),
		};
		fn(&ts, arg);
	}
}
