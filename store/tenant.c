/*
 * tenant.c - the table of per-tenant records of the host tier (see tenant.h).
 * Binary search over a sorted array of pointers: O(log n) lookups, O(n) inserts,
 * which is the right trade for a handful of tenants looked up on every block.
 */
#include "tenant.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

/* Position of id, or where it would go. */
static size_t lower_bound(const struct tenant_table *tt, uint32_t id)
{
	size_t lo = 0, hi = tt->n;
	while (lo < hi) {
		size_t mid = lo + (hi - lo) / 2;
		if (tt->v[mid]->id < id)
			lo = mid + 1;
		else
			hi = mid;
	}
	return lo;
}

struct tenant *tenant_find(const struct tenant_table *tt, uint32_t id)
{
	size_t i = lower_bound(tt, id);
	return i < tt->n && tt->v[i]->id == id ? tt->v[i] : NULL;
}

int tenant_get(struct tenant_table *tt, uint32_t id, struct tenant **out)
{
	size_t i = lower_bound(tt, id);
	if (i < tt->n && tt->v[i]->id == id) {
		*out = tt->v[i];
		return 0;
	}
	if (tt->n == tt->cap) {
		size_t cap = tt->cap ? tt->cap * 2 : 8;
		struct tenant **v = realloc(tt->v, cap * sizeof(*v));
		if (!v)
			return -ENOMEM;
		tt->v = v;
		tt->cap = cap;
	}
	struct tenant *t = calloc(1, sizeof(*t));
	if (!t)
		return -ENOMEM;
	t->id = id;
	memmove(&tt->v[i + 1], &tt->v[i], (tt->n - i) * sizeof(*tt->v));
	tt->v[i] = t;
	tt->n++;
	*out = t;
	return 0;
}

void tenant_put_if_idle(struct tenant_table *tt, struct tenant *t)
{
	if (t->users || t->quota_set)
		return;
	size_t i = lower_bound(tt, t->id);
	if (i >= tt->n || tt->v[i] != t)
		abort(); /* a record that is not in its table: memory is already corrupt */
	memmove(&tt->v[i], &tt->v[i + 1], (tt->n - i - 1) * sizeof(*tt->v));
	tt->n--;
	free(t);
}

void tenant_table_destroy(struct tenant_table *tt)
{
	for (size_t i = 0; i < tt->n; i++)
		free(tt->v[i]);
	free(tt->v);
	memset(tt, 0, sizeof(*tt));
}
