/*
 * policy_2q.c - two LRU lists and a history of keys: blocks seen for the first
 * time (the "once" list) go before blocks seen again (the "again" list), so a
 * stream of one-off blocks cannot flush what is being reused. Chain tails are
 * preferred within each list, as in policy_lru.c (see policy.h).
 *
 * Why this shape (bench/bench_policy on the Mooncake trace, docs/ARCHITECTURE.md):
 * a block whose key was seen before is several times likelier to be asked for
 * again soon than a new one, but most reuses of a prefix come after it has left a
 * small cache, so "seen before" must outlive residency: a history of the last
 * HIST_FACTOR x (resident blocks) keys decides, at insert, which list a block
 * joins. A block read while resident moves to the "again" list. Frequency-gated
 * admission (W-TinyLFU) measured worse: refusing a block cuts its chain, and every
 * block after it with it. The once list keeps at least ONCE_MIN_PCT percent of the
 * blocks, so blocks written once and read back soon (a preempted request paged
 * out and in) keep a recency window even when reused blocks fill the tier.
 *
 * History: a ring of key hashes (most recent at head) and an open-addressing table
 * from hash to its latest ring position. A key is "seen" while that position is
 * inside the ring; overwriting a ring slot deletes the key from the table if that
 * slot was its latest. Both grow with the number of resident blocks (never shrink);
 * if growing fails the history stays as it is: the policy gets less sharp, never
 * wrong, and insert never fails.
 */
#include "policy.h"

#include <errno.h>
#include <stdlib.h>

#define HIST_FACTOR 4     /* history length / resident blocks */
#define HIST_MIN 256      /* smallest ring */
#define ONCE_MIN_PCT 5    /* the once list is not drained below this share */

enum { LIST_ONCE = 0, LIST_AGAIN = 1 };

struct hslot {
	uint64_t key; /* 0 = empty */
	uint64_t pos; /* latest ring position of key */
};

struct history {
	uint64_t *ring;
	size_t ring_cap; /* power of two */
	uint64_t head;   /* positions ever written; the ring holds [head - ring_cap, head) */
	struct hslot *tab;
	size_t tab_mask; /* table size - 1; size = 2 x ring_cap */
};

struct q2 {
	struct policy base; /* first: a struct policy * is a struct q2 * */
	struct policy_node list[2]; /* sentinels: next = coldest, prev = most recent */
	size_t n[2];
	uint32_t scan;
	struct history h;
};

static struct q2 *to_q2(struct policy *p)
{
	return (struct q2 *)p;
}

/* ---- history ------------------------------------------------------------------ */

static uint64_t hkey(uint64_t k)
{
	return k ? k : 1; /* 0 marks an empty slot */
}

static size_t slot_of(const struct history *h, uint64_t key)
{
	/* The key is already a hash; mix once more so that table bits and the index's
	 * own bucket bits are not the same ones. */
	uint64_t x = key * 0x9e3779b97f4a7c15ull;
	return (size_t)(x >> 17) & h->tab_mask;
}

static struct hslot *hist_find(struct history *h, uint64_t key)
{
	for (size_t i = slot_of(h, key);; i = (i + 1) & h->tab_mask) {
		struct hslot *s = &h->tab[i];
		if (s->key == key)
			return s;
		if (!s->key)
			return NULL;
	}
}

/* Delete by backward shift, so lookups never need tombstones. */
static void hist_delete(struct history *h, struct hslot *s)
{
	size_t i = (size_t)(s - h->tab);
	for (size_t j = (i + 1) & h->tab_mask;; j = (j + 1) & h->tab_mask) {
		struct hslot *t = &h->tab[j];
		if (!t->key)
			break;
		size_t home = slot_of(h, t->key);
		/* t may move into the hole at i if i lies cyclically in [home, j). */
		if (((j - home) & h->tab_mask) >= ((j - i) & h->tab_mask)) {
			h->tab[i] = *t;
			i = j;
		}
	}
	h->tab[i].key = 0;
}

static void hist_put(struct history *h, uint64_t key, uint64_t pos)
{
	size_t i = slot_of(h, key);
	while (h->tab[i].key && h->tab[i].key != key)
		i = (i + 1) & h->tab_mask;
	h->tab[i].key = key;
	h->tab[i].pos = pos;
}

static int hist_alloc(struct history *h, size_t ring_cap)
{
	h->ring = calloc(ring_cap, sizeof(*h->ring));
	h->tab = calloc(2 * ring_cap, sizeof(*h->tab));
	if (!h->ring || !h->tab) {
		free(h->ring);
		free(h->tab);
		h->ring = NULL;
		h->tab = NULL;
		return -ENOMEM;
	}
	h->ring_cap = ring_cap;
	h->tab_mask = 2 * ring_cap - 1;
	h->head = 0;
	return 0;
}

/* Double the ring, keeping every live key in order. */
static void hist_grow(struct history *h)
{
	struct history g;
	if (hist_alloc(&g, 2 * h->ring_cap))
		return;
	uint64_t first = h->head > h->ring_cap ? h->head - h->ring_cap : 0;
	for (uint64_t pos = first; pos < h->head; pos++) {
		uint64_t key = h->ring[pos & (h->ring_cap - 1)];
		struct hslot *s = hist_find(h, key);
		if (!s || s->pos != pos)
			continue; /* a stale copy: the key was seen again later */
		g.ring[g.head & (g.ring_cap - 1)] = key;
		hist_put(&g, key, g.head);
		g.head++;
	}
	free(h->ring);
	free(h->tab);
	*h = g;
}

/* Record key as just seen; true if it was in the history already. */
static bool hist_note(struct history *h, uint64_t key)
{
	key = hkey(key);
	struct hslot *s = hist_find(h, key);
	bool seen = s != NULL;
	size_t at = (size_t)(h->head & (h->ring_cap - 1));
	if (h->head >= h->ring_cap) { /* the slot's old key falls out unless seen since */
		uint64_t old = h->ring[at];
		struct hslot *o = hist_find(h, old);
		if (o && o->pos == h->head - h->ring_cap) {
			if (o == s)
				s = NULL;
			hist_delete(h, o);
			if (s) /* the shift may have moved key's slot */
				s = hist_find(h, key);
		}
	}
	h->ring[at] = key;
	if (s)
		s->pos = h->head;
	else
		hist_put(h, key, h->head);
	h->head++;
	return seen;
}

/* ---- the two lists ---------------------------------------------------------------- */

static void unlink_node(struct q2 *q, struct policy_node *n)
{
	n->prev->next = n->next;
	n->next->prev = n->prev;
	n->prev = n->next = NULL;
	q->n[n->aux]--;
}

static void append_mru(struct q2 *q, struct policy_node *n, unsigned which)
{
	struct policy_node *head = &q->list[which];
	n->prev = head->prev;
	n->next = head;
	head->prev->next = n;
	head->prev = n;
	n->aux = which;
	q->n[which]++;
}

static void q2_destroy(struct policy *p)
{
	struct q2 *q = to_q2(p);
	if (!q)
		return;
	free(q->h.ring);
	free(q->h.tab);
	free(q);
}

static void q2_insert(struct policy *p, struct policy_node *n)
{
	struct q2 *q = to_q2(p);
	p->count++;
	if ((uint64_t)p->count * HIST_FACTOR > q->h.ring_cap)
		hist_grow(&q->h);
	bool seen = hist_note(&q->h, n->key);
	append_mru(q, n, seen ? LIST_AGAIN : LIST_ONCE);
}

static void q2_access(struct policy *p, struct policy_node *n)
{
	struct q2 *q = to_q2(p);
	hist_note(&q->h, n->key);
	if (n->aux == LIST_AGAIN && q->list[LIST_AGAIN].prev == n)
		return;
	unlink_node(q, n);
	append_mru(q, n, LIST_AGAIN);
}

static void q2_remove(struct policy *p, struct policy_node *n)
{
	unlink_node(to_q2(p), n);
	p->count--;
}

/* Which list goes first: the once list, unless it is down to its reserve. */
static unsigned first_list(const struct q2 *q)
{
	size_t total = q->n[LIST_ONCE] + q->n[LIST_AGAIN];
	if (q->n[LIST_AGAIN] && q->n[LIST_ONCE] * 100 <= total * ONCE_MIN_PCT)
		return LIST_AGAIN;
	return LIST_ONCE;
}

static struct policy_node *q2_victim(struct policy *p, policy_classify_fn classify, void *arg,
				     bool *nontail)
{
	struct q2 *q = to_q2(p);
	unsigned first = first_list(q);
	struct policy_node *n = policy_list_search(&q->list[first], q->scan, classify, arg, nontail);
	if (!n)
		n = policy_list_search(&q->list[!first], q->scan, classify, arg, nontail);
	return n;
}

/* The once list cold to hot, then the again list cold to hot. */
static struct policy_node *q2_next_cold(struct policy *p, struct policy_node *after)
{
	struct q2 *q = to_q2(p);
	unsigned which = after ? (unsigned)after->aux : LIST_ONCE;
	struct policy_node *n = after ? after->next : q->list[LIST_ONCE].next;
	if (n == &q->list[which]) {
		if (which == LIST_AGAIN)
			return NULL;
		n = q->list[LIST_AGAIN].next;
		if (n == &q->list[LIST_AGAIN])
			return NULL;
	}
	return n;
}

static const struct policy_ops q2_ops = {
	.name = "2q",
	.destroy = q2_destroy,
	.insert = q2_insert,
	.access = q2_access,
	.remove = q2_remove,
	.victim = q2_victim,
	.next_cold = q2_next_cold,
};

int policy_2q_create(const struct policy_config *cfg, struct policy **out)
{
	struct q2 *q = calloc(1, sizeof(*q));
	if (!q)
		return -ENOMEM;
	if (hist_alloc(&q->h, HIST_MIN)) {
		free(q);
		return -ENOMEM;
	}
	q->base.ops = &q2_ops;
	for (int i = 0; i < 2; i++)
		q->list[i].prev = q->list[i].next = &q->list[i];
	q->scan = cfg && cfg->evict_scan ? cfg->evict_scan : POLICY_DEFAULT_SCAN;
	*out = &q->base;
	return 0;
}
