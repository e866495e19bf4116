/* test_alloc.c - unit tests of the host tier's chunk allocator (store/alloc.c). */
#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "alloc.h"
#include "test.h"

/* Deterministic PRNG (xorshift64*), so a failure reproduces. */
static uint64_t rng_state = 0x9e3779b97f4a7c15ULL;

static uint64_t rnd(void)
{
	rng_state ^= rng_state >> 12;
	rng_state ^= rng_state << 25;
	rng_state ^= rng_state >> 27;
	return rng_state * 0x2545f4914f6cdd1dULL;
}

static uint64_t runs_total(const struct alloc_runs *r)
{
	uint64_t n = 0;
	for (size_t i = 0; i < r->n; i++)
		n += r->v[i].len;
	return n;
}

static void put_runs(struct alloc *a, const struct alloc_runs *r)
{
	for (size_t i = 0; i < r->n; i++)
		alloc_put(a, r->v[i].start, r->v[i].len);
}

TEST(exact_fit_uses_one_run_and_reuses_the_hole)
{
	struct alloc a;
	struct alloc_runs r = { 0 };
	CHECK_RC(alloc_init(&a, 8), 0);
	CHECK_RC(alloc_get(&a, 8, &r), 0);
	CHECK_EQ(r.n, 1);
	CHECK_EQ(r.v[0].start, 0);
	CHECK_EQ(r.v[0].len, 8);
	CHECK_EQ(alloc_free_chunks(&a), 0);
	put_runs(&a, &r);
	CHECK_EQ(alloc_free_chunks(&a), 8);

	/* 3 + 5 fill it exactly, each in one run. */
	struct alloc_runs r3 = { 0 }, r5 = { 0 };
	CHECK_RC(alloc_get(&a, 3, &r3), 0);
	CHECK_RC(alloc_get(&a, 5, &r5), 0);
	CHECK_EQ(r3.n, 1);
	CHECK_EQ(r5.n, 1);
	CHECK_EQ(alloc_free_chunks(&a), 0);
	CHECK(r3.v[0].start + 3 == r5.v[0].start || r5.v[0].start + 5 == r3.v[0].start);
	/* The 3-chunk hole takes a 3-chunk request, whole. */
	uint64_t hole = r3.v[0].start;
	put_runs(&a, &r3);
	CHECK_EQ(alloc_largest_free_run(&a), 3);
	CHECK_RC(alloc_get(&a, 3, &r3), 0);
	CHECK_EQ(r3.n, 1);
	CHECK_EQ(r3.v[0].start, hole);
	CHECK(alloc_check(&a));
	alloc_runs_free(&r);
	alloc_runs_free(&r3);
	alloc_runs_free(&r5);
	alloc_destroy(&a);
}

TEST(fragmented_arena_splits_across_runs)
{
	struct alloc a;
	struct alloc_runs one = { 0 }, r = { 0 };
	CHECK_RC(alloc_init(&a, 16), 0);
	uint64_t at[16];
	for (int i = 0; i < 16; i++) {
		CHECK_RC(alloc_get(&a, 1, &one), 0);
		CHECK_EQ(one.n, 1);
		at[i] = one.v[0].start;
	}
	CHECK_EQ(alloc_free_chunks(&a), 0);
	/* Free every other chunk: 8 free, none adjacent. */
	for (int i = 0; i < 16; i++)
		if (at[i] % 2 == 0)
			alloc_put(&a, at[i], 1);
	CHECK_EQ(alloc_free_chunks(&a), 8);
	CHECK_EQ(alloc_largest_free_run(&a), 1);

	CHECK_RC(alloc_get(&a, 8, &r), 0);
	CHECK_EQ(r.n, 8);
	CHECK_EQ(runs_total(&r), 8);
	for (size_t i = 0; i < r.n; i++) {
		CHECK_EQ(r.v[i].len, 1);
		CHECK_EQ(r.v[i].start % 2, 0);
		if (i)
			CHECK(r.v[i].start > r.v[i - 1].start); /* address order */
	}
	CHECK_EQ(alloc_free_chunks(&a), 0);
	CHECK_EQ(a.gathered, 1);
	CHECK_RC(alloc_get(&a, 1, &one), -ENOSPC);
	CHECK(alloc_check(&a));
	alloc_runs_free(&one);
	alloc_runs_free(&r);
	alloc_destroy(&a);
}

TEST(gather_takes_only_what_it_needs_from_the_last_run)
{
	struct alloc a;
	struct alloc_runs r = { 0 };
	CHECK_RC(alloc_init(&a, 10), 0);
	CHECK_RC(alloc_get(&a, 10, &r), 0);
	/* Free [0,2) and [4,10): runs of 2 and 6; ask for 7. */
	alloc_put(&a, 0, 2);
	alloc_put(&a, 4, 6);
	CHECK_RC(alloc_get(&a, 7, &r), 0);
	CHECK_EQ(r.n, 2);
	CHECK_EQ(r.v[0].start, 0);
	CHECK_EQ(r.v[0].len, 2);
	CHECK_EQ(r.v[1].start, 4);
	CHECK_EQ(r.v[1].len, 5);
	CHECK_EQ(alloc_free_chunks(&a), 1);
	CHECK(alloc_chunk_is_free(&a, 9));
	CHECK(alloc_check(&a));
	alloc_runs_free(&r);
	alloc_destroy(&a);
}

TEST(full_arena_refuses_and_recovers)
{
	struct alloc a;
	struct alloc_runs r = { 0 }, x = { 0 };
	CHECK_RC(alloc_init(&a, 100), 0); /* not a multiple of 64: the tail word matters */
	CHECK_RC(alloc_get(&a, 100, &r), 0);
	CHECK_EQ(r.n, 1);
	CHECK_EQ(alloc_free_chunks(&a), 0);
	CHECK_EQ(alloc_largest_free_run(&a), 0);
	CHECK_RC(alloc_get(&a, 1, &x), -ENOSPC);
	CHECK_EQ(x.n, 0);
	CHECK(alloc_check(&a));
	put_runs(&a, &r);
	CHECK_EQ(alloc_free_chunks(&a), 100);
	CHECK_EQ(alloc_largest_free_run(&a), 100);
	CHECK(alloc_check(&a));
	alloc_runs_free(&r);
	alloc_runs_free(&x);
	alloc_destroy(&a);
}

TEST(zero_and_oversize_requests_fail_without_taking)
{
	struct alloc a;
	struct alloc_runs r = { 0 };
	CHECK_RC(alloc_init(&a, 0), -EINVAL);
	CHECK_RC(alloc_init(&a, 64), 0);
	CHECK_RC(alloc_get(&a, 0, &r), -EINVAL);
	CHECK_RC(alloc_get(&a, 65, &r), -EFBIG);
	CHECK_RC(alloc_get(&a, UINT64_MAX, &r), -EFBIG);
	CHECK_EQ(alloc_free_chunks(&a), 64);
	CHECK_RC(alloc_get(&a, 60, &r), 0);
	CHECK_RC(alloc_get(&a, 5, &r), -ENOSPC);
	CHECK_EQ(alloc_free_chunks(&a), 4);
	CHECK(alloc_check(&a));
	alloc_runs_free(&r);
	alloc_destroy(&a);
}

TEST(free_coalesces_neighbours)
{
	struct alloc a;
	struct alloc_runs r1 = { 0 }, r2 = { 0 }, r3 = { 0 }, big = { 0 };
	CHECK_RC(alloc_init(&a, 300), 0);
	CHECK_RC(alloc_get(&a, 100, &r1), 0);
	CHECK_RC(alloc_get(&a, 100, &r2), 0);
	CHECK_RC(alloc_get(&a, 100, &r3), 0);
	put_runs(&a, &r1);
	put_runs(&a, &r3);
	CHECK_EQ(alloc_largest_free_run(&a), 100);
	CHECK_RC(alloc_get(&a, 150, &big), 0);
	CHECK_EQ(big.n, 2); /* no run of 150 yet */
	put_runs(&a, &big);
	put_runs(&a, &r2);
	CHECK_EQ(alloc_largest_free_run(&a), 300);
	CHECK_RC(alloc_get(&a, 300, &big), 0);
	CHECK_EQ(big.n, 1); /* the bound rose again when the middle came back */
	CHECK(alloc_check(&a));
	alloc_runs_free(&r1);
	alloc_runs_free(&r2);
	alloc_runs_free(&r3);
	alloc_runs_free(&big);
	alloc_destroy(&a);
}

TEST(next_fit_moves_past_the_last_allocation)
{
	struct alloc a;
	struct alloc_runs r = { 0 };
	CHECK_RC(alloc_init(&a, 1000), 0);
	CHECK_RC(alloc_get(&a, 10, &r), 0);
	uint64_t first = r.v[0].start;
	put_runs(&a, &r);
	CHECK_RC(alloc_get(&a, 10, &r), 0);
	CHECK(r.v[0].start != first);
	CHECK_EQ(r.v[0].start, first + 10);
	alloc_runs_free(&r);
	alloc_destroy(&a);
}

struct live {
	uint32_t id;
	uint64_t n;
	struct alloc_run *runs;
	size_t nruns;
};

/* Sizes 1..1024 chunks, log-uniform, so small and large requests both happen. */
static uint64_t random_size(void)
{
	unsigned k = (unsigned)(rnd() % 11); /* 2^0 .. 2^10 */
	uint64_t base = 1ULL << k;
	uint64_t n = base + rnd() % base;
	return n > 1024 ? 1024 : n;
}

TEST(random_workload_never_fails_while_enough_is_free)
{
	const uint64_t nchunks = 65536;
	const int ops = 200000;
	struct alloc a;
	struct alloc_runs r = { 0 };
	CHECK_RC(alloc_init(&a, nchunks), 0);
	/* The "arena": one owner id per chunk. Every allocation writes its id into its
	 * chunks and checks them before it is freed, so any overlap shows. */
	uint32_t *owner = calloc(nchunks, sizeof(*owner));
	struct live *live = calloc(nchunks, sizeof(*live));
	CHECK(owner && live);
	size_t nlive = 0;
	uint64_t in_use = 0;
	uint32_t next_id = 1;
	uint64_t allocs = 0, extents = 0, enospc = 0, max_ext = 0, must_be_one = 0;

	for (int op = 0; op < ops; op++) {
		bool do_alloc = nlive == 0 || rnd() % 100 < 55;
		if (do_alloc) {
			uint64_t n = random_size();
			uint64_t free_before = alloc_free_chunks(&a);
			bool run_fits = alloc_largest_free_run(&a) >= n;
			int rc = alloc_get(&a, n, &r);
			if (free_before < n) {
				CHECK_RC(rc, -ENOSPC);
				CHECK_EQ(alloc_free_chunks(&a), free_before);
				enospc++;
			} else {
				CHECK_MSG(rc == 0, "op %d: alloc of %llu failed (%d) with %llu free",
					  op, (unsigned long long)n, rc,
					  (unsigned long long)free_before);
				CHECK_EQ(runs_total(&r), n);
				/* A run long enough existed: it must have been used. */
				if (run_fits) {
					CHECK_EQ(r.n, 1);
					must_be_one++;
				}
				struct live *l = &live[nlive++];
				l->id = next_id++;
				l->n = n;
				l->nruns = r.n;
				l->runs = malloc(r.n * sizeof(*l->runs));
				CHECK(l->runs);
				memcpy(l->runs, r.v, r.n * sizeof(*l->runs));
				for (size_t i = 0; i < r.n; i++) {
					CHECK(r.v[i].len > 0);
					CHECK(r.v[i].start + r.v[i].len <= nchunks);
					for (uint64_t c = r.v[i].start; c < r.v[i].start + r.v[i].len;
					     c++) {
						CHECK_MSG(owner[c] == 0,
							  "op %d: chunk %llu handed out twice", op,
							  (unsigned long long)c);
						owner[c] = l->id;
					}
				}
				in_use += n;
				allocs++;
				extents += r.n;
				if (r.n > max_ext)
					max_ext = r.n;
			}
		} else {
			size_t k = (size_t)(rnd() % nlive);
			struct live *l = &live[k];
			for (size_t i = 0; i < l->nruns; i++) {
				for (uint64_t c = l->runs[i].start;
				     c < l->runs[i].start + l->runs[i].len; c++) {
					CHECK_MSG(owner[c] == l->id,
						  "op %d: chunk %llu of allocation %u was overwritten",
						  op, (unsigned long long)c, l->id);
					owner[c] = 0;
				}
				alloc_put(&a, l->runs[i].start, l->runs[i].len);
			}
			in_use -= l->n;
			free(l->runs);
			live[k] = live[--nlive];
		}
		CHECK_EQ(alloc_free_chunks(&a), nchunks - in_use);
		CHECK_MSG(alloc_check(&a), "op %d: bitmap disagrees with the counters", op);
		if (op % 4096 == 0)
			for (uint64_t c = 0; c < nchunks; c++)
				CHECK_EQ(alloc_chunk_is_free(&a, c), owner[c] == 0);
	}
	test_log("%llu allocations, %llu refused (not enough free), %.3f extents/allocation, "
		 "max %llu, %llu gathered, %llu checked to be one run",
		 (unsigned long long)allocs, (unsigned long long)enospc,
		 allocs ? (double)extents / (double)allocs : 0.0, (unsigned long long)max_ext,
		 (unsigned long long)a.gathered, (unsigned long long)must_be_one);
	/* The workload must actually have exercised the interesting paths. */
	CHECK(enospc > 0);
	CHECK(a.gathered > 0);

	while (nlive) {
		struct live *l = &live[--nlive];
		for (size_t i = 0; i < l->nruns; i++)
			alloc_put(&a, l->runs[i].start, l->runs[i].len);
		free(l->runs);
	}
	CHECK_EQ(alloc_free_chunks(&a), nchunks);
	CHECK_EQ(alloc_largest_free_run(&a), nchunks);
	CHECK(alloc_check(&a));
	free(live);
	free(owner);
	alloc_runs_free(&r);
	alloc_destroy(&a);
}

TEST_MAIN(exact_fit_uses_one_run_and_reuses_the_hole, fragmented_arena_splits_across_runs,
	  gather_takes_only_what_it_needs_from_the_last_run, full_arena_refuses_and_recovers,
	  zero_and_oversize_requests_fail_without_taking, free_coalesces_neighbours,
	  next_fit_moves_past_the_last_allocation, random_workload_never_fails_while_enough_is_free)
