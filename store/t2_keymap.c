/*
 * t2_keymap.c - a small open-addressing hash map keyed by (tenant, key), used by
 * the NVMe tier's owner thread for the state of keys with operations not yet
 * committed, and for access statistics waiting to be persisted. Linear probing
 * with backward-shift deletion, so there are no tombstones to clean up.
 */
#include <stdlib.h>
#include <string.h>

#include <xxhash.h>

#include "t2_internal.h"

#define KEYMAP_MIN 64u

static size_t slot_of(const struct t2_keymap *m, const struct t1_key *k)
{
	uint8_t b[T2_KEY_BYTES];

	t2_key_encode(b, k);
	return (size_t)XXH3_64bits(b, sizeof(b)) & m->mask;
}

static bool key_eq(const struct t1_key *a, const struct t1_key *b)
{
	return a->tenant == b->tenant && memcmp(a->key.b, b->key.b, sizeof(a->key.b)) == 0;
}

void t2_keymap_free(struct t2_keymap *m)
{
	free(m->slots);
	memset(m, 0, sizeof(*m));
}

struct t2_kv *t2_keymap_find(const struct t2_keymap *m, const struct t1_key *k)
{
	if (!m->slots)
		return NULL;
	for (size_t i = slot_of(m, k);; i = (i + 1) & m->mask) {
		struct t2_kv *kv = &m->slots[i];

		if (!kv->used)
			return NULL;
		if (key_eq(&kv->key, k))
			return kv;
	}
}

static int grow(struct t2_keymap *m)
{
	size_t n = m->slots ? (m->mask + 1) * 2 : KEYMAP_MIN;
	struct t2_keymap nm = { calloc(n, sizeof(struct t2_kv)), n - 1, 0 };

	if (!nm.slots)
		return -1;
	for (size_t i = 0; m->slots && i <= m->mask; i++) {
		struct t2_kv *kv = &m->slots[i];

		if (!kv->used)
			continue;
		size_t j = slot_of(&nm, &kv->key);

		while (nm.slots[j].used)
			j = (j + 1) & nm.mask;
		nm.slots[j] = *kv;
		nm.count++;
	}
	free(m->slots);
	*m = nm;
	return 0;
}

struct t2_kv *t2_keymap_get(struct t2_keymap *m, const struct t1_key *k)
{
	struct t2_kv *kv = t2_keymap_find(m, k);

	if (kv)
		return kv;
	/* Keep the load under 3/4 so probes stay short. */
	if (!m->slots || (m->count + 1) * 4 > (m->mask + 1) * 3)
		if (grow(m) < 0)
			return NULL;
	size_t i = slot_of(m, k);

	while (m->slots[i].used)
		i = (i + 1) & m->mask;
	kv = &m->slots[i];
	memset(kv, 0, sizeof(*kv));
	kv->used = true;
	kv->key = *k;
	m->count++;
	return kv;
}

void t2_keymap_remove(struct t2_keymap *m, struct t2_kv *kv)
{
	size_t i = (size_t)(kv - m->slots);

	m->slots[i].used = false;
	m->count--;
	/* Backward shift: pull later entries of the run into the hole when their
	 * home slot does not lie (cyclically) between the hole and themselves. */
	for (size_t j = (i + 1) & m->mask; m->slots[j].used; j = (j + 1) & m->mask) {
		size_t home = slot_of(m, &m->slots[j].key);
		bool stays = (i <= j) ? (i < home && home <= j) : (i < home || home <= j);

		if (stays)
			continue;
		m->slots[i] = m->slots[j];
		m->slots[j].used = false;
		i = j;
	}
}
