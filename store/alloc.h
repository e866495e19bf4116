/*
 * alloc.h - the chunk allocator of the host tier: which chunks of the arena are free,
 * and which runs of chunks a new block gets. Pure bookkeeping over chunk numbers; it
 * never touches the arena's bytes. See alloc.c for the design.
 */
#ifndef KVT_STORE_ALLOC_H
#define KVT_STORE_ALLOC_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* A run of consecutive chunks [start, start + len). */
struct alloc_run {
	uint64_t start;
	uint64_t len;
};

/* A growable list of runs; the result of alloc_get. The caller owns it and may reuse
 * it across calls (alloc_get overwrites it); free with alloc_runs_free. */
struct alloc_runs {
	struct alloc_run *v;
	size_t n;
	size_t cap;
};

struct alloc {
	uint64_t *bits;     /* bit i set = chunk i free; bits past nchunks stay 0 */
	uint64_t nchunks;
	uint64_t nwords;
	uint64_t free;      /* number of set bits */
	uint64_t rover;     /* next-fit: where the next contiguous search starts */
	uint64_t run_bound; /* upper bound on the longest free run (exact after a failed search) */
	uint64_t contiguous;/* allocations served by one run */
	uint64_t gathered;  /* allocations that had to take several runs */
};

/* Set up an allocator for nchunks chunks, all free. Returns 0, -EINVAL (0 chunks) or
 * -ENOMEM. */
int alloc_init(struct alloc *a, uint64_t nchunks);
/* Free the bitmap. NULL-safe on a zeroed struct. */
void alloc_destroy(struct alloc *a);

/*
 * Take n chunks. On success out holds the runs in the order the block uses them and
 * the chunks are marked used. Never fails for lack of contiguity: if free >= n, it
 * succeeds (possibly with several runs).
 * Returns 0; -EINVAL (n == 0); -EFBIG (n > nchunks); -ENOSPC (fewer than n free);
 * -ENOMEM (out could not grow). On failure nothing is taken.
 */
int alloc_get(struct alloc *a, uint64_t n, struct alloc_runs *out);

/* Give back the run [start, start + len), which must be wholly in use. */
void alloc_put(struct alloc *a, uint64_t start, uint64_t len);

static inline uint64_t alloc_free_chunks(const struct alloc *a)
{
	return a->free;
}

/* Length of the longest free run, in chunks. O(nchunks / 64 + runs): for stats. */
uint64_t alloc_largest_free_run(const struct alloc *a);

/* Recount the bitmap; true if it agrees with the free counter, no bit past nchunks
 * is set and run_bound is not below the longest free run. For tests and debugging;
 * O(nchunks / 64 + runs). */
bool alloc_check(const struct alloc *a);

/* true if chunk i is free. */
static inline bool alloc_chunk_is_free(const struct alloc *a, uint64_t i)
{
	return (a->bits[i >> 6] >> (i & 63)) & 1;
}

void alloc_runs_free(struct alloc_runs *r);

#endif /* KVT_STORE_ALLOC_H */
