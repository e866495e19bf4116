/*
 * index.c - open-addressing hash table of blocks keyed by (tenant, key).
 *
 * Linear probing over slots that cache the full 64-bit hash, so a probe compares
 * keys only when hashes match, and removal by backward shift, so there are no
 * tombstones and lookups never slow down with churn. The table doubles at 3/4 load.
 *
 * The hash is XXH3 seeded from getrandom() per index: clients choose their keys, and
 * a fixed hash would let one of them build keys that all land in one probe run and
 * slow every other tenant's lookups down.
 */
#include "index.h"

#include <errno.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>
#include <unistd.h>

#define XXH_INLINE_ALL
#include <xxhash.h>

#define INDEX_MIN_SLOTS 64

static uint64_t key_hash(const struct index *ix, const struct t1_key *k)
{
	uint8_t buf[4 + sizeof(k->key.b)];
	buf[0] = (uint8_t)k->tenant;
	buf[1] = (uint8_t)(k->tenant >> 8);
	buf[2] = (uint8_t)(k->tenant >> 16);
	buf[3] = (uint8_t)(k->tenant >> 24);
	memcpy(buf + 4, k->key.b, sizeof(k->key.b));
	return XXH3_64bits_withSeed(buf, sizeof(buf), ix->seed);
}

static bool key_eq(const struct t1_key *a, const struct t1_key *b)
{
	return a->tenant == b->tenant && memcmp(a->key.b, b->key.b, sizeof(a->key.b)) == 0;
}

static uint64_t draw_seed(void)
{
	uint64_t seed;
	if (getrandom(&seed, sizeof(seed), GRND_NONBLOCK) == (ssize_t)sizeof(seed))
		return seed;
	/* Entropy pool not ready (early boot): still unpredictable enough from outside
	 * the host to spoil precomputed collisions. */
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	seed = (uint64_t)ts.tv_nsec ^ ((uint64_t)ts.tv_sec << 32) ^ (uint64_t)getpid() ^
	       (uint64_t)(uintptr_t)&seed;
	return XXH3_64bits(&seed, sizeof(seed));
}

static size_t limit_for(size_t nslots)
{
	return nslots / 4 * 3;
}

int index_init(struct index *ix, size_t hint)
{
	memset(ix, 0, sizeof(*ix));
	size_t n = INDEX_MIN_SLOTS;
	while (limit_for(n) < hint && n < (SIZE_MAX / 2) / sizeof(struct index_slot))
		n *= 2;
	ix->slots = calloc(n, sizeof(*ix->slots));
	if (!ix->slots)
		return -ENOMEM;
	ix->mask = n - 1;
	ix->limit = limit_for(n);
	ix->seed = draw_seed();
	return 0;
}

void index_destroy(struct index *ix)
{
	free(ix->slots);
	ix->slots = NULL;
	ix->count = 0;
}

struct index_node *index_find(const struct index *ix, const struct t1_key *key)
{
	uint64_t h = key_hash(ix, key);
	for (size_t i = h & ix->mask;; i = (i + 1) & ix->mask) {
		const struct index_slot *s = &ix->slots[i];
		if (!s->node)
			return NULL;
		if (s->hash == h && key_eq(&s->node->key, key))
			return s->node;
	}
}

/* Put a node whose key is known to be absent into a table with room. */
static void place(struct index_slot *slots, size_t mask, uint64_t h, struct index_node *n)
{
	size_t i = h & mask;
	while (slots[i].node)
		i = (i + 1) & mask;
	slots[i].hash = h;
	slots[i].node = n;
}

static int grow(struct index *ix, size_t want)
{
	size_t n = ix->mask + 1;
	while (limit_for(n) < want) {
		if (n > (SIZE_MAX / 2) / sizeof(struct index_slot))
			return -ENOMEM;
		n *= 2;
	}
	if (n == ix->mask + 1)
		return 0;
	struct index_slot *slots = calloc(n, sizeof(*slots));
	if (!slots)
		return -ENOMEM;
	for (size_t i = 0; i <= ix->mask; i++)
		if (ix->slots[i].node)
			place(slots, n - 1, ix->slots[i].hash, ix->slots[i].node);
	free(ix->slots);
	ix->slots = slots;
	ix->mask = n - 1;
	ix->limit = limit_for(n);
	return 0;
}

int index_reserve(struct index *ix, size_t extra)
{
	if (extra > SIZE_MAX - ix->count)
		return -ENOMEM;
	if (ix->count + extra <= ix->limit)
		return 0;
	return grow(ix, ix->count + extra);
}

int index_insert(struct index *ix, struct index_node *n)
{
	uint64_t h = key_hash(ix, &n->key);
	size_t i = h & ix->mask;
	for (; ix->slots[i].node; i = (i + 1) & ix->mask)
		if (ix->slots[i].hash == h && key_eq(&ix->slots[i].node->key, &n->key))
			return -EEXIST;
	n->hash = h;
	if (ix->count + 1 > ix->limit) {
		int rc = grow(ix, ix->count + 1);
		if (rc < 0)
			return rc;
		place(ix->slots, ix->mask, h, n);
	} else {
		ix->slots[i].hash = h;
		ix->slots[i].node = n;
	}
	ix->count++;
	return 0;
}

void index_remove(struct index *ix, struct index_node *n)
{
	size_t i = n->hash & ix->mask;
	while (ix->slots[i].node != n) {
		/* Removing a node that is not there is a caller bug; stop rather than spin. */
		if (!ix->slots[i].node)
			abort();
		i = (i + 1) & ix->mask;
	}
	/* Backward shift: pull later members of the probe run into the hole when the
	 * hole lies between their home slot and where they sit. */
	size_t hole = i;
	for (size_t j = (i + 1) & ix->mask; ix->slots[j].node; j = (j + 1) & ix->mask) {
		size_t home = ix->slots[j].hash & ix->mask;
		if (((j - home) & ix->mask) >= ((j - hole) & ix->mask)) {
			ix->slots[hole] = ix->slots[j];
			hole = j;
		}
	}
	ix->slots[hole].node = NULL;
	ix->slots[hole].hash = 0;
	ix->count--;
}

void index_foreach(const struct index *ix, void (*fn)(struct index_node *, void *), void *arg)
{
	for (size_t i = 0; i <= ix->mask; i++)
		if (ix->slots[i].node)
			fn(ix->slots[i].node, arg);
}
