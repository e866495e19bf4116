/*
 * policy_lru.c - least-recently-used eviction with a preference for chain tails
 * (see policy.h for why). One doubly linked list with a sentinel: the sentinel's
 * next is the coldest block, its prev the most recent.
 */
#include "policy.h"

#include <errno.h>
#include <stdlib.h>

struct lru {
	struct policy base; /* first: a struct policy * is a struct lru * */
	struct policy_node head;
	uint32_t scan;
};

static struct lru *to_lru(struct policy *p)
{
	return (struct lru *)p;
}

static void unlink_node(struct policy_node *n)
{
	n->prev->next = n->next;
	n->next->prev = n->prev;
	n->prev = n->next = NULL;
}

static void append_mru(struct lru *l, struct policy_node *n)
{
	n->prev = l->head.prev;
	n->next = &l->head;
	l->head.prev->next = n;
	l->head.prev = n;
}

static void lru_destroy(struct policy *p)
{
	free(to_lru(p));
}

static void lru_insert(struct policy *p, struct policy_node *n)
{
	append_mru(to_lru(p), n);
	n->aux = 0;
	p->count++;
}

static void lru_access(struct policy *p, struct policy_node *n)
{
	struct lru *l = to_lru(p);
	if (l->head.prev == n)
		return;
	unlink_node(n);
	append_mru(l, n);
}

static void lru_remove(struct policy *p, struct policy_node *n)
{
	unlink_node(n);
	p->count--;
}

/* Walk from the cold end. Nodes the owner KEEPs do not use up the window: pinned
 * or referenced blocks at the cold end must not hide the tails behind them. */
struct policy_node *policy_list_search(struct policy_node *head, uint32_t scan,
				       policy_classify_fn classify, void *arg, bool *nontail)
{
	struct policy_node *coldest = NULL, *tail = NULL;
	uint32_t seen = 0;
	for (struct policy_node *n = head->next; n != head; n = n->next) {
		enum policy_class c = classify(n, arg);
		if (c == POLICY_KEEP)
			continue;
		if (c == POLICY_FREE) {
			*nontail = false;
			return n;
		}
		if (c == POLICY_TAIL && !tail)
			tail = n;
		if (!coldest)
			coldest = n;
		if (++seen >= scan)
			break;
	}
	if (tail) {
		*nontail = false;
		return tail;
	}
	*nontail = coldest != NULL;
	return coldest;
}

static struct policy_node *lru_victim(struct policy *p, policy_classify_fn classify, void *arg,
				      bool *nontail)
{
	struct lru *l = to_lru(p);
	return policy_list_search(&l->head, l->scan, classify, arg, nontail);
}

static struct policy_node *lru_next_cold(struct policy *p, struct policy_node *after)
{
	struct lru *l = to_lru(p);
	struct policy_node *n = after ? after->next : l->head.next;
	return n == &l->head ? NULL : n;
}

static const struct policy_ops lru_ops = {
	.name = "lru",
	.destroy = lru_destroy,
	.insert = lru_insert,
	.access = lru_access,
	.remove = lru_remove,
	.victim = lru_victim,
	.next_cold = lru_next_cold,
};

int policy_lru_create(const struct policy_config *cfg, struct policy **out)
{
	struct lru *l = calloc(1, sizeof(*l));
	if (!l)
		return -ENOMEM;
	l->base.ops = &lru_ops;
	l->head.prev = l->head.next = &l->head;
	l->scan = cfg && cfg->evict_scan ? cfg->evict_scan : POLICY_DEFAULT_SCAN;
	*out = &l->base;
	return 0;
}
