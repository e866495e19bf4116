/*
 * policy.h - the host tier's eviction policy interface: which committed block goes
 * when room is needed. t1.c drives it through policy_ops, so other policies (an
 * admission filter, frequency-aware ones) can replace LRU without touching t1.c.
 *
 * Chain awareness. Blocks form prefix chains (key(i) depends on key(i-1)) and a
 * lookup only counts the LEADING present blocks of a chain, so evicting a chain's
 * head makes every block after it useless while evicting its tail costs one block.
 * t1 therefore keeps, for each block, how many resident children name it as their
 * parent, and the policy prefers chain tails (blocks with no resident children):
 * it walks from the cold end over up to evict_scan evictable candidates and takes
 * the first tail; if the window holds none, it takes the coldest evictable block
 * and says so (t1 counts that in evict_nontail).
 *
 * Note for the daemon: when one request accesses a whole chain (GET or LOOKUP of
 * k0..kn), touch the blocks tail first (kn, ..., k1, k0) so that the head ends up
 * the most recent. Then recency and chain order agree, and even a nontail fallback
 * takes blocks from the tail side of the chain.
 */
#ifndef KVT_STORE_POLICY_H
#define KVT_STORE_POLICY_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Per-block policy state, embedded in the block. The LRU uses the links; other
 * policies may use aux (e.g. a frequency count or a queue id). key is set by the
 * owner before insert: a hash of the block's identity, the same every time that
 * block is stored, so a policy can remember keys it has seen (2Q's history). */
struct policy_node {
	struct policy_node *prev, *next;
	uint64_t aux;
	uint64_t key;
};

/* What the owner says about one candidate during a victim search. */
enum policy_class {
	POLICY_KEEP = 0,    /* not evictable now (pinned, referenced, not ours...) */
	POLICY_TAIL = 1,    /* evictable, no resident children: preferred */
	POLICY_NONTAIL = 2, /* evictable, but other resident blocks hang off it */
	POLICY_FREE = 3,    /* evictable at no cost (a lower tier has a copy): preferred */
};

typedef enum policy_class (*policy_classify_fn)(const struct policy_node *n, void *arg);

struct policy;

struct policy_ops {
	const char *name;
	void (*destroy)(struct policy *p);
	/* n becomes known to the policy as the most recent block. */
	void (*insert)(struct policy *p, struct policy_node *n);
	/* n was accessed. */
	void (*access)(struct policy *p, struct policy_node *n);
	/* n leaves (evicted, deleted); it was inserted. */
	void (*remove)(struct policy *p, struct policy_node *n);
	/* The next block to evict among those classify does not KEEP, or NULL if there is
	 * none: the first FREE one in the window, else its first TAIL, else the coldest. *nontail is set when the choice had resident children. Does not remove
	 * it: the owner evicts it and then calls remove. */
	struct policy_node *(*victim)(struct policy *p, policy_classify_fn classify, void *arg,
				      bool *nontail);
	/* Walk in eviction order: the node after `after` (NULL: the first one that would
	 * be considered), or NULL at the end. Used to find blocks to write back to the
	 * next tier before they are evicted. */
	struct policy_node *(*next_cold)(struct policy *p, struct policy_node *after);
};

struct policy {
	const struct policy_ops *ops;
	size_t count; /* nodes inserted and not removed */
};

struct policy_config {
	uint32_t evict_scan; /* candidates examined for a chain tail (0: 64) */
};

#define POLICY_DEFAULT_SCAN 64

/* One list's victim search, for the list-based policies (policy_lru.c): from the
 * cold end (head->next) over up to scan nodes classify does not KEEP, the first
 * FREE one, else the first TAIL, else the coldest (and *nontail set); NULL if every
 * node is KEPT. */
struct policy_node *policy_list_search(struct policy_node *head, uint32_t scan,
				       policy_classify_fn classify, void *arg, bool *nontail);

/* LRU with chain-tail preference (policy_lru.c). Returns 0 or -ENOMEM. */
int policy_lru_create(const struct policy_config *cfg, struct policy **out);
/* Two LRU lists, blocks seen for the first time before blocks seen again, with a
 * history of keys that outlives residency; chain tails first within each list
 * (policy_2q.c). Returns 0 or -ENOMEM. */
int policy_2q_create(const struct policy_config *cfg, struct policy **out);

static inline void policy_destroy(struct policy *p)
{
	if (p)
		p->ops->destroy(p);
}

static inline void policy_insert(struct policy *p, struct policy_node *n)
{
	p->ops->insert(p, n);
}

static inline void policy_access(struct policy *p, struct policy_node *n)
{
	p->ops->access(p, n);
}

static inline void policy_remove(struct policy *p, struct policy_node *n)
{
	p->ops->remove(p, n);
}

static inline struct policy_node *policy_victim(struct policy *p, policy_classify_fn classify,
						void *arg, bool *nontail)
{
	return p->ops->victim(p, classify, arg, nontail);
}

static inline struct policy_node *policy_next_cold(struct policy *p, struct policy_node *after)
{
	return p->ops->next_cold(p, after);
}

#endif /* KVT_STORE_POLICY_H */
