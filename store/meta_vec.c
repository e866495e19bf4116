/*
 * meta_vec.c - the exact vector index of one (tenant, namespace): its embeddings as
 * unit vectors in one contiguous float array, the expiry and key of each slot, and a
 * key -> slot hash table so puts and deletes keep it in step in O(d).
 *
 * Search cost, for N slots of dimension d and the best k:
 *   scoring   O(N*d) multiply-adds, streamed through the array once; the dot product
 *             keeps 16 independent partial sums, so gcc -O2 vectorises it without
 *             -ffast-math (check: gcc -O2 -fopt-info-vec store/meta_vec.c);
 *   selection O(N log k) worst case with a bounded min-heap, O(N) once the heap's
 *             floor is above most scores;
 *   memory    N*d*4 bytes of vectors, 20 bytes of bookkeeping per slot.
 * Vectors are stored normalised, so a score is one dot product (cosine similarity)
 * and never overflows however large the inputs; a zero vector scores 0.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <xxhash.h>

#include "meta_internal.h"

#define EMPTY UINT32_MAX
#define LANES 16

struct vkey {
	uint16_t len;
	char s[];
};

struct meta_vec {
	uint32_t dim;
	size_t n, cap;
	float *v;             /* n * dim, slot i at v + i * dim */
	uint64_t *expires;    /* 0: never */
	struct vkey **keys;
	uint32_t *table;      /* open addressing, linear probing: slot numbers */
	size_t tmask;
};

static uint64_t key_hash(const char *key, size_t len)
{
	return XXH3_64bits(key, len);
}

struct meta_vec *meta_vec_new(uint32_t dim)
{
	struct meta_vec *x = calloc(1, sizeof(*x));

	if (!x)
		return NULL;
	x->dim = dim;
	x->tmask = 15;
	x->table = malloc((x->tmask + 1) * sizeof(*x->table));
	if (!x->table) {
		free(x);
		return NULL;
	}
	memset(x->table, 0xff, (x->tmask + 1) * sizeof(*x->table));
	return x;
}

void meta_vec_free(struct meta_vec *x)
{
	if (!x)
		return;
	for (size_t i = 0; i < x->n; i++)
		free(x->keys[i]);
	free(x->v);
	free(x->expires);
	free(x->keys);
	free(x->table);
	free(x);
}

uint32_t meta_vec_dim(const struct meta_vec *x)
{
	return x->dim;
}

size_t meta_vec_count(const struct meta_vec *x)
{
	return x->n;
}

const char *meta_vec_key(const struct meta_vec *x, uint32_t slot, size_t *len)
{
	*len = x->keys[slot]->len;
	return x->keys[slot]->s;
}

/* The table position holding key's slot, or the empty position where it would go. */
static size_t find_pos(const struct meta_vec *x, const char *key, size_t len, bool *found)
{
	size_t pos = (size_t)key_hash(key, len) & x->tmask;

	for (;;) {
		uint32_t s = x->table[pos];

		if (s == EMPTY) {
			*found = false;
			return pos;
		}
		if (x->keys[s]->len == len && memcmp(x->keys[s]->s, key, len) == 0) {
			*found = true;
			return pos;
		}
		pos = (pos + 1) & x->tmask;
	}
}

static int table_grow(struct meta_vec *x)
{
	size_t nmask = x->tmask * 2 + 1;
	uint32_t *nt = malloc((nmask + 1) * sizeof(*nt));

	if (!nt)
		return -ENOMEM;
	memset(nt, 0xff, (nmask + 1) * sizeof(*nt));
	for (size_t i = 0; i < x->n; i++) {
		size_t pos = (size_t)key_hash(x->keys[i]->s, x->keys[i]->len) & nmask;

		while (nt[pos] != EMPTY)
			pos = (pos + 1) & nmask;
		nt[pos] = (uint32_t)i;
	}
	free(x->table);
	x->table = nt;
	x->tmask = nmask;
	return 0;
}

static int slots_grow(struct meta_vec *x)
{
	size_t ncap = x->cap ? x->cap * 2 : 64;
	float *nv;
	uint64_t *ne;
	struct vkey **nk;

	if (ncap > EMPTY)
		return -ENOMEM;
	nv = realloc(x->v, ncap * x->dim * sizeof(*nv));
	if (!nv)
		return -ENOMEM;
	x->v = nv;
	ne = realloc(x->expires, ncap * sizeof(*ne));
	if (!ne)
		return -ENOMEM;
	x->expires = ne;
	nk = realloc(x->keys, ncap * sizeof(*nk));
	if (!nk)
		return -ENOMEM;
	x->keys = nk;
	x->cap = ncap;
	return 0;
}

/* The slot of key, added (vector and expiry still to be set) if it is new.
 * 0 or -ENOMEM (nothing changed). */
static int slot_for(struct meta_vec *x, const char *key, size_t len, size_t *slot)
{
	struct vkey *k;
	bool found;
	size_t pos = find_pos(x, key, len, &found);

	if (found) {
		*slot = x->table[pos];
		return 0;
	}
	/* Keep the table at most half full. */
	if ((x->n + 1) * 2 > x->tmask + 1) {
		if (table_grow(x))
			return -ENOMEM;
		pos = find_pos(x, key, len, &found);
	}
	if (x->n == x->cap && slots_grow(x))
		return -ENOMEM;
	k = malloc(sizeof(*k) + len);
	if (!k)
		return -ENOMEM;
	k->len = (uint16_t)len;
	memcpy(k->s, key, len);
	x->keys[x->n] = k;
	x->table[pos] = (uint32_t)x->n;
	*slot = x->n++;
	return 0;
}

int meta_vec_upsert(struct meta_vec *x, const char *key, size_t len, const float *emb,
		    uint64_t expires_ms)
{
	float *dst;
	double ss = 0, inv;
	size_t slot;

	if (slot_for(x, key, len, &slot))
		return -ENOMEM;
	dst = x->v + slot * x->dim;
	for (uint32_t i = 0; i < x->dim; i++)
		ss += (double)emb[i] * emb[i];
	inv = ss > 0 ? 1.0 / meta_sqrt(ss) : 0;
	for (uint32_t i = 0; i < x->dim; i++)
		dst[i] = (float)(emb[i] * inv);
	x->expires[slot] = expires_ms;
	return 0;
}

int meta_vec_upsert_view(struct meta_vec *x, const struct meta_rec_view *v)
{
	float *dst;
	double ss = 0, inv;
	size_t slot;

	if (v->dim != x->dim)
		return -ERANGE;
	if (slot_for(x, (const char *)v->key, v->key_len, &slot))
		return -ENOMEM;
	/* Decode into the slot, then scale it in place. */
	dst = x->v + slot * x->dim;
	for (uint32_t i = 0; i < x->dim; i++) {
		dst[i] = meta_view_emb(v, i);
		ss += (double)dst[i] * dst[i];
	}
	inv = ss > 0 ? 1.0 / meta_sqrt(ss) : 0;
	for (uint32_t i = 0; i < x->dim; i++)
		dst[i] = (float)(dst[i] * inv);
	x->expires[slot] = v->expires_ms;
	return 0;
}

/* Remove the table entry at pos, shifting later members of its probe run back so
 * lookups never stop at a hole (linear probing's deletion, no tombstones). */
static void table_delete(struct meta_vec *x, size_t pos)
{
	size_t hole = pos, i = pos;

	for (;;) {
		size_t home;

		i = (i + 1) & x->tmask;
		if (x->table[i] == EMPTY)
			break;
		home = (size_t)key_hash(x->keys[x->table[i]]->s, x->keys[x->table[i]]->len) &
		       x->tmask;
		/* Move it if its home is not cyclically within (hole, i]. */
		if ((i > hole && (home <= hole || home > i)) ||
		    (i < hole && home <= hole && home > i)) {
			x->table[hole] = x->table[i];
			hole = i;
		}
	}
	x->table[hole] = EMPTY;
}

void meta_vec_remove(struct meta_vec *x, const char *key, size_t len)
{
	bool found;
	size_t pos = find_pos(x, key, len, &found), last;
	uint32_t s;

	if (!found)
		return;
	s = x->table[pos];
	table_delete(x, pos);
	free(x->keys[s]);
	last = x->n - 1;
	if (s != last) {
		/* The last slot fills the hole: the array stays dense. */
		size_t lpos = find_pos(x, x->keys[last]->s, x->keys[last]->len, &found);

		x->table[lpos] = s;
		memcpy(x->v + (size_t)s * x->dim, x->v + last * x->dim, x->dim * sizeof(float));
		x->expires[s] = x->expires[last];
		x->keys[s] = x->keys[last];
	}
	x->n--;
}

/* ---- scoring ------------------------------------------------------------------------ */

/* 16 independent partial sums: a loop gcc vectorises at -O2 (no reassociation of one
 * sum is needed), kept in registers by unrolling the lane loop. */
static float dot(const float *restrict a, const float *restrict b, size_t d)
{
	float acc[LANES] = { 0 };
	size_t blocks = d / LANES;
	float s = 0;

	for (size_t j = 0; j < blocks; j++) {
		const float *x = a + j * LANES, *y = b + j * LANES;

#pragma GCC unroll 16
		for (size_t l = 0; l < LANES; l++)
			acc[l] += x[l] * y[l];
	}
	for (size_t j = blocks * LANES; j < d; j++)
		s += a[j] * b[j];
	for (size_t l = 0; l < LANES / 2; l++)
		acc[l] += acc[l + LANES / 2];
	for (size_t l = 0; l < LANES / 4; l++)
		acc[l] += acc[l + LANES / 4];
	return s + ((acc[0] + acc[2]) + (acc[1] + acc[3]));
}

/* Heap order: the worst hit on top. Worse = lower score; on equal scores the later
 * (src, slot), so results do not depend on the order candidates arrive in. */
static bool worse(const struct meta_hit *a, const struct meta_hit *b)
{
	if (a->score != b->score)
		return a->score < b->score;
	if (a->src != b->src)
		return a->src > b->src;
	return a->slot > b->slot;
}

static void sift_down(struct meta_hit *h, size_t n, size_t i)
{
	for (;;) {
		size_t l = 2 * i + 1, r = l + 1, m = i;
		struct meta_hit t;

		if (l < n && worse(&h[l], &h[m]))
			m = l;
		if (r < n && worse(&h[r], &h[m]))
			m = r;
		if (m == i)
			return;
		t = h[i];
		h[i] = h[m];
		h[m] = t;
		i = m;
	}
}

static void offer(struct meta_topk *t, const struct meta_hit *c)
{
	if (t->n < t->k) {
		size_t i = t->n++;

		t->h[i] = *c;
		while (i > 0) {
			size_t p = (i - 1) / 2;
			struct meta_hit tmp;

			if (!worse(&t->h[i], &t->h[p]))
				break;
			tmp = t->h[i];
			t->h[i] = t->h[p];
			t->h[p] = tmp;
			i = p;
		}
		return;
	}
	if (!worse(&t->h[0], c))
		return;
	t->h[0] = *c;
	sift_down(t->h, t->n, 0);
}

void meta_vec_search(const struct meta_vec *x, uint32_t src, const float *q, uint64_t now_ms,
		     float *scratch, struct meta_topk *t)
{
	size_t d = x->dim;

	if (t->k == 0)
		return;
	/* Pass 1, the O(N*d) part: one sweep over the contiguous array. */
	for (size_t i = 0; i < x->n; i++)
		scratch[i] = dot(x->v + i * d, q, d);
	/* Pass 2, O(N log k): the heap, skipping expired slots. */
	for (size_t i = 0; i < x->n; i++) {
		struct meta_hit c = { scratch[i], src, (uint32_t)i };

		if (t->n == t->k && scratch[i] < t->h[0].score)
			continue;
		if (x->expires[i] && x->expires[i] <= now_ms)
			continue;
		offer(t, &c);
	}
}

static int hit_cmp(const void *a, const void *b)
{
	const struct meta_hit *x = a, *y = b;

	if (worse(y, x))
		return -1;
	if (worse(x, y))
		return 1;
	return 0;
}

void meta_topk_sort(struct meta_topk *t)
{
	qsort(t->h, t->n, sizeof(*t->h), hit_cmp);
}
