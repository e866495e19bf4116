/*
 * index.h - the host tier's block index: an open-addressing hash table from
 * (tenant, key) to an index_node embedded in the block. Intrusive, so inserting
 * allocates nothing but the occasional larger table.
 */
#ifndef KVT_STORE_INDEX_H
#define KVT_STORE_INDEX_H

#include <stddef.h>
#include <stdint.h>

#include "t1.h"

/* Embed one in each indexed object; the index keeps pointers to it. */
struct index_node {
	struct t1_key key;
	uint64_t hash; /* set by index_insert */
};

struct index_slot {
	uint64_t hash;
	struct index_node *node; /* NULL = empty */
};

struct index {
	struct index_slot *slots;
	size_t mask;  /* table size - 1 (a power of two) */
	size_t count;
	size_t limit; /* grow when count would pass this (3/4 of the table) */
	uint64_t seed;
};

/* An empty index with room for about hint entries. Draws the hash seed from
 * getrandom(). Returns 0 or -ENOMEM. */
int index_init(struct index *ix, size_t hint);
/* Free the table (not the nodes). NULL-safe on a zeroed struct. */
void index_destroy(struct index *ix);

/* The node with this key, or NULL. */
struct index_node *index_find(const struct index *ix, const struct t1_key *key);

/* Make sure extra more inserts cannot fail for lack of memory. Returns 0 or -ENOMEM. */
int index_reserve(struct index *ix, size_t extra);

/* Insert n (n->key set by the caller). Returns 0, -EEXIST (a node with that key is
 * present; n is not inserted) or -ENOMEM. */
int index_insert(struct index *ix, struct index_node *n);

/* Remove n, which must be in the index. */
void index_remove(struct index *ix, struct index_node *n);

static inline size_t index_count(const struct index *ix)
{
	return ix->count;
}

/* Call fn for every node. fn must not change the index. */
void index_foreach(const struct index *ix, void (*fn)(struct index_node *, void *), void *arg);

#endif /* KVT_STORE_INDEX_H */
