/*
 * alloc.c - the chunk allocator of the host tier.
 *
 * Design. The arena is cut into fixed chunks (t1_config.chunk_size, 64 KiB by
 * default) and one bit per chunk says whether it is free. A block is a list of
 * extents, each a run of consecutive chunks, so a block never has to be contiguous:
 *
 *  - Allocation first looks for ONE free run long enough (next-fit from a rover,
 *    scanning the bitmap 64 chunks at a time with ctz). Next-fit spreads fresh
 *    blocks over the arena instead of re-splitting the same low hole every time.
 *  - Only if no run is long enough does it gather several free runs, in address
 *    order from the start of the arena, until it has n chunks.
 *
 * Consequences: allocation never fails while at least n chunks are free, however
 * fragmented the arena is; fragmentation only costs contiguity (extents per block),
 * which is counted (contiguous / gathered here, t1 counts extents). Waste is at most
 * one partial chunk per block. Freeing sets bits, so neighbours coalesce by
 * themselves; there are no free lists to merge.
 *
 * To keep the fragmented case cheap, run_bound is an upper bound on the longest
 * free run: a search that fails measures the exact longest run, allocation can only
 * shorten runs, and a free raises the bound to the length of the run it joins. A
 * request longer than the bound skips the contiguous search. The longest run for
 * stats is measured on demand (O(nchunks / 64 + runs)).
 */
#include "alloc.h"

#include <assert.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>

static inline unsigned ctz64(uint64_t x)
{
	return (unsigned)__builtin_ctzll(x);
}

static inline unsigned clz64(uint64_t x)
{
	return (unsigned)__builtin_clzll(x);
}

/* First free chunk at or after from, or nchunks. */
static uint64_t next_free(const struct alloc *a, uint64_t from)
{
	if (from >= a->nchunks)
		return a->nchunks;
	uint64_t w = from >> 6;
	uint64_t word = a->bits[w] & (~0ULL << (from & 63));
	while (!word) {
		if (++w >= a->nwords)
			return a->nchunks;
		word = a->bits[w];
	}
	return (w << 6) + ctz64(word);
}

/* First used chunk at or after from, or nchunks (bits past the end read as used). */
static uint64_t next_used(const struct alloc *a, uint64_t from)
{
	if (from >= a->nchunks)
		return a->nchunks;
	uint64_t w = from >> 6;
	uint64_t word = ~a->bits[w] & (~0ULL << (from & 63));
	while (!word) {
		if (++w >= a->nwords)
			return a->nchunks;
		word = ~a->bits[w];
	}
	uint64_t i = (w << 6) + ctz64(word);
	return i < a->nchunks ? i : a->nchunks;
}

/* Start of the free run that contains free chunk i. */
static uint64_t run_start(const struct alloc *a, uint64_t i)
{
	uint64_t w = i >> 6;
	uint64_t below = (i & 63) ? (~0ULL >> (64 - (i & 63))) : 0;
	uint64_t word = ~a->bits[w] & below;
	while (!word) {
		if (w == 0)
			return 0;
		word = ~a->bits[--w];
	}
	return (w << 6) + (63 - clz64(word)) + 1;
}

/* Set (free) or clear (use) the bits of [start, start + len); the bits must all be
 * in the opposite state, which the asserts check (a double free or a double
 * allocation is a bug in the caller that would corrupt other blocks). */
static void mark(struct alloc *a, uint64_t start, uint64_t len, bool free)
{
	uint64_t end = start + len;
	while (start < end) {
		uint64_t w = start >> 6;
		unsigned lo = start & 63;
		uint64_t span = 64 - lo;
		if (span > end - start)
			span = end - start;
		uint64_t mask = (span == 64 ? ~0ULL : ((1ULL << span) - 1)) << lo;
		if (free) {
			assert((a->bits[w] & mask) == 0);
			a->bits[w] |= mask;
		} else {
			assert((a->bits[w] & mask) == mask);
			a->bits[w] &= ~mask;
		}
		start += span;
	}
}

int alloc_init(struct alloc *a, uint64_t nchunks)
{
	memset(a, 0, sizeof(*a));
	if (nchunks == 0)
		return -EINVAL;
	uint64_t nwords = (nchunks + 63) / 64;
	a->bits = calloc(nwords, sizeof(uint64_t));
	if (!a->bits)
		return -ENOMEM;
	a->nchunks = nchunks;
	a->nwords = nwords;
	mark(a, 0, nchunks, true);
	a->free = nchunks;
	a->run_bound = nchunks;
	return 0;
}

void alloc_destroy(struct alloc *a)
{
	free(a->bits);
	a->bits = NULL;
}

void alloc_runs_free(struct alloc_runs *r)
{
	free(r->v);
	r->v = NULL;
	r->n = r->cap = 0;
}

static int runs_push(struct alloc_runs *r, uint64_t start, uint64_t len)
{
	if (r->n == r->cap) {
		size_t cap = r->cap ? r->cap * 2 : 8;
		struct alloc_run *v = realloc(r->v, cap * sizeof(*v));
		if (!v)
			return -ENOMEM;
		r->v = v;
		r->cap = cap;
	}
	r->v[r->n].start = start;
	r->v[r->n].len = len;
	r->n++;
	return 0;
}

/* Next-fit search for one free run of at least n chunks: from the rover to the end,
 * then from the start up to the rover. On failure the scan has seen every run, so
 * the longest one it measured becomes the exact run_bound. */
static bool find_run(struct alloc *a, uint64_t n, uint64_t *start)
{
	if (n > a->run_bound)
		return false;
	uint64_t longest = 0;
	uint64_t pos = a->rover, stop = a->nchunks;
	for (int pass = 0; pass < 2; pass++) {
		while (pos < stop) {
			uint64_t s = next_free(a, pos);
			if (s >= stop)
				break;
			/* A run may cross the rover; pass 2 sees it whole. */
			uint64_t e = next_used(a, s);
			if (e - s >= n) {
				*start = s;
				return true;
			}
			if (e - s > longest)
				longest = e - s;
			pos = e;
		}
		pos = 0;
		stop = a->rover;
	}
	a->run_bound = longest;
	return false;
}

int alloc_get(struct alloc *a, uint64_t n, struct alloc_runs *out)
{
	if (n == 0)
		return -EINVAL;
	if (n > a->nchunks)
		return -EFBIG;
	if (n > a->free)
		return -ENOSPC;

	out->n = 0;
	uint64_t start;
	if (find_run(a, n, &start)) {
		if (runs_push(out, start, n) < 0)
			return -ENOMEM;
		mark(a, start, n, false);
		a->free -= n;
		a->rover = start + n < a->nchunks ? start + n : 0;
		a->contiguous++;
		return 0;
	}

	/* No run is long enough: gather runs in address order. free >= n guarantees
	 * the walk ends before the arena does. The runs are collected first and marked
	 * afterwards so that an -ENOMEM leaves the bitmap untouched. */
	uint64_t need = n, pos = 0;
	while (need) {
		uint64_t s = next_free(a, pos);
		assert(s < a->nchunks);
		uint64_t e = next_used(a, s);
		uint64_t take = e - s < need ? e - s : need;
		if (runs_push(out, s, take) < 0) {
			out->n = 0;
			return -ENOMEM;
		}
		need -= take;
		pos = e;
	}
	for (size_t i = 0; i < out->n; i++)
		mark(a, out->v[i].start, out->v[i].len, false);
	a->free -= n;
	a->gathered++;
	return 0;
}

void alloc_put(struct alloc *a, uint64_t start, uint64_t len)
{
	assert(len > 0 && start < a->nchunks && len <= a->nchunks - start);
	mark(a, start, len, true);
	a->free += len;
	uint64_t run = next_used(a, start + len) - run_start(a, start);
	if (run > a->run_bound)
		a->run_bound = run;
}

uint64_t alloc_largest_free_run(const struct alloc *a)
{
	uint64_t longest = 0, pos = 0;
	for (;;) {
		uint64_t s = next_free(a, pos);
		if (s >= a->nchunks)
			break;
		uint64_t e = next_used(a, s);
		if (e - s > longest)
			longest = e - s;
		pos = e;
	}
	return longest;
}

bool alloc_check(const struct alloc *a)
{
	uint64_t count = 0;
	for (uint64_t w = 0; w < a->nwords; w++)
		count += (uint64_t)__builtin_popcountll(a->bits[w]);
	unsigned tail = a->nchunks & 63;
	if (tail && (a->bits[a->nwords - 1] >> tail) != 0)
		return false;
	if (count != a->free)
		return false;
	/* The search shortcut relies on run_bound never being below the truth. */
	return a->run_bound >= alloc_largest_free_run(a);
}
