/*
 * gtest_kernels.c - the CUDA gather/scatter (kernels/kvcopy.cu) against the CPU
 * references (kernels/kvcopy_ref.c), byte for byte, on many random layouts: random
 * axis orders (vLLM, pages-major, head-major, llama.cpp transposed V and stranger
 * ones), padded extents, element gaps, misaligned layer bases and blocks, random
 * page tables and batches of many items in one launch. Whole regions and whole
 * block buffers are compared, so a kernel writing a byte it should not shows too.
 *
 * C, compiled by the host compiler against the CUDA runtime API. Exits 77 (skip)
 * when cudaGetDeviceCount reports no device. KVT_GTEST_SEED=n changes the random
 * layouts; every failure logs the seed and the layout.
 */
#include "test.h"

#include <cuda_runtime_api.h>
#include <errno.h>
#include <sys/wait.h>
#include <unistd.h>

#include "kvcopy.h"

#define CU(call)                                                                        \
	do {                                                                            \
		cudaError_t e_ = (call);                                                \
		CHECK_MSG(e_ == cudaSuccess, "%s: %s", #call, cudaGetErrorString(e_));  \
	} while (0)

/* ---- random numbers (xorshift64*, seeded, so a failure reproduces) ---------- */

static uint64_t rng;

static uint64_t rnd(void)
{
	rng ^= rng >> 12;
	rng ^= rng << 25;
	rng ^= rng >> 27;
	return rng * 0x2545f4914f6cdd1dULL;
}

static uint32_t below(uint32_t n)
{
	return (uint32_t)(rnd() % n);
}

static uint64_t seed_base(void)
{
	const char *s = getenv("KVT_GTEST_SEED");
	return s ? strtoull(s, NULL, 0) : 0x6b7674696572ULL;
}

static void seed_case(uint64_t salt)
{
	rng = (seed_base() ^ (salt * 0x9e3779b97f4a7c15ULL)) | 1;
	for (int i = 0; i < 4; i++)
		rnd();
}

static void fill_random(unsigned char *p, size_t n)
{
	for (size_t i = 0; i < n; i++)
		p[i] = (unsigned char)(rnd() >> 56);
}

/* ---- a random engine, mirrored on host and device --------------------------- */

#define MAX_LAYERS 8

struct eng {
	struct kvl_layout L;
	size_t region;         /* bytes each layer's allocation holds, slack included */
	size_t base_off;       /* layer_base = allocation + base_off */
	size_t span;           /* bytes from layer_base the layout may touch */
	unsigned char *host[MAX_LAYERS], *dev[MAX_LAYERS];
	void *hbase[MAX_LAYERS];
	void **dbase;          /* device array of the device layer bases */
	char desc[256];
};

static const char *const axis_name[5] = { "plane", "page", "slot", "head", "dim" };

/* A layout built from a random order of the five axes, each allocated with some
 * padding, and the innermost unit one or two elements wide. */
static void eng_random(struct eng *e, size_t max_span)
{
	static const uint32_t dims[] = { 1, 2, 3, 4, 5, 8, 16, 31, 64, 128 };
	static const uint32_t ptoks[] = { 1, 2, 3, 7, 8, 16, 32 };
	static const uint32_t ess[] = { 1, 2, 4 };
	static const size_t offs[] = { 0, 0, 0, 0, 16, 8, 4, 2, 1, 3, 6, 12 };

	for (;;) {
		struct kvl_layout *L = &e->L;
		uint32_t count[5], alloc[5];
		int order[5] = { 0, 1, 2, 3, 4 };
		int64_t stride[5];
		uint64_t unit;

		memset(e, 0, sizeof(*e));
		L->layers = 1 + below(4);
		L->planes = 1 + below(2);
		L->heads = 1 + below(8);
		L->head_dim = dims[below(sizeof(dims) / sizeof(dims[0]))];
		L->elem_size = ess[below(3)];
		L->page_tokens = ptoks[below(sizeof(ptoks) / sizeof(ptoks[0]))];
		L->num_pages = 1 + below(40);
		count[0] = L->planes;
		count[1] = (uint32_t)L->num_pages;
		count[2] = L->page_tokens;
		count[3] = L->heads;
		count[4] = L->head_dim;
		for (int i = 4; i > 0; i--) {
			int j = (int)below((uint32_t)i + 1), t = order[i];
			order[i] = order[j];
			order[j] = t;
		}
		/* Mostly the engines people have (vLLM order, llama.cpp's transposed V),
		 * often something else. */
		if (below(3) == 0)
			for (int i = 0; i < 5; i++)
				order[i] = i;
		else if (below(4) == 0) {
			static const int v[5] = { 0, 1, 3, 4, 2 };
			memcpy(order, v, sizeof(order));
		}
		for (int i = 0; i < 5; i++)
			alloc[i] = count[i] + (below(4) == 0 ? below(3) : 0);
		unit = (uint64_t)L->elem_size * (below(8) == 0 ? 2 : 1);
		for (int i = 4; i >= 0; i--) {
			stride[order[i]] = (int64_t)unit;
			unit *= alloc[order[i]];
		}
		L->plane_stride = stride[0];
		L->page_stride = stride[1];
		L->token_stride = stride[2];
		L->head_stride = stride[3];
		L->dim_stride = stride[4];
		if (unit > max_span)
			continue;
		e->span = unit;
		e->base_off = offs[below(sizeof(offs) / sizeof(offs[0]))];
		e->region = e->base_off + e->span + below(64);
		CHECK_RC(kvl_layout_check(L, e->region - e->base_off), 0);
		snprintf(e->desc, sizeof(e->desc),
			 "layers %u planes %u pages %llu ptok %u heads %u dim %u es %u; order "
			 "%s,%s,%s,%s,%s; strides plane %lld page %lld token %lld head %lld dim %lld; "
			 "base +%zu",
			 L->layers, L->planes, (unsigned long long)L->num_pages, L->page_tokens,
			 L->heads, L->head_dim, L->elem_size, axis_name[order[0]],
			 axis_name[order[1]], axis_name[order[2]], axis_name[order[3]],
			 axis_name[order[4]], (long long)L->plane_stride, (long long)L->page_stride,
			 (long long)L->token_stride, (long long)L->head_stride,
			 (long long)L->dim_stride, e->base_off);
		return;
	}
}

static void eng_alloc(struct eng *e)
{
	void *hb[MAX_LAYERS];

	for (uint32_t l = 0; l < e->L.layers; l++) {
		e->host[l] = malloc(e->region);
		CHECK(e->host[l]);
		fill_random(e->host[l], e->region);
		CU(cudaMalloc((void **)&e->dev[l], e->region));
		CU(cudaMemcpy(e->dev[l], e->host[l], e->region, cudaMemcpyHostToDevice));
		e->hbase[l] = e->host[l] + e->base_off;
		hb[l] = e->dev[l] + e->base_off;
	}
	CU(cudaMalloc((void **)&e->dbase, e->L.layers * sizeof(void *)));
	CU(cudaMemcpy(e->dbase, hb, e->L.layers * sizeof(void *), cudaMemcpyHostToDevice));
}

static void eng_free(struct eng *e)
{
	for (uint32_t l = 0; l < e->L.layers; l++) {
		free(e->host[l]);
		cudaFree(e->dev[l]);
	}
	cudaFree(e->dbase);
}

/* Bytes where the device copy of the engine differs from the host one. */
static size_t eng_diff(const struct eng *e)
{
	size_t bad = 0;
	unsigned char *d = malloc(e->region);

	CHECK(d);
	for (uint32_t l = 0; l < e->L.layers; l++) {
		CU(cudaMemcpy(d, e->dev[l], e->region, cudaMemcpyDeviceToHost));
		for (size_t o = 0; o < e->region; o++)
			if (d[o] != e->host[l][o] && bad++ == 0)
				test_log("engine layer %u byte %zu (base %+lld): gpu %#x, reference %#x",
					 l, o, (long long)o - (long long)e->base_off, d[o],
					 e->host[l][o]);
	}
	free(d);
	return bad;
}

/* ---- a batch of items, mirrored ----------------------------------------------- */

struct batch {
	size_t n;
	struct kvl_item *hitems, *ditems_h; /* host view; device-pointer view */
	struct kvl_item *ditems;            /* device array */
	uint32_t *hpages, *dpages;          /* all page tables, concatenated */
	unsigned char *hblocks, *dblocks;   /* all blocks, with gaps */
	size_t pages_len, blocks_len;
	uint32_t max_ntokens;
};

/*
 * n items of random spans over the engine's pages. With distinct_slots, no two
 * tokens of the batch share a (page, slot), as a scatter needs to be
 * deterministic; then n shrinks if the pages run out. Page-table entries before
 * the first used one hold junk, out of range too: they must be ignored.
 */
static void batch_random(struct batch *b, const struct eng *e, size_t n, uint32_t max_tok,
			 bool distinct_slots)
{
	const struct kvl_layout *L = &e->L;
	uint32_t *pool = malloc(L->num_pages * sizeof(*pool));
	uint32_t next_page = 0;
	size_t *poff = calloc(n, sizeof(*poff)), *boff = calloc(n, sizeof(*boff));

	CHECK(pool && poff && boff);
	memset(b, 0, sizeof(*b));
	for (uint32_t i = 0; i < L->num_pages; i++)
		pool[i] = i;
	for (uint32_t i = (uint32_t)L->num_pages; i > 1; i--) {
		uint32_t j = below(i), t = pool[i - 1];
		pool[i - 1] = pool[j];
		pool[j] = t;
	}
	b->hitems = calloc(n, sizeof(*b->hitems));
	b->ditems_h = calloc(n, sizeof(*b->ditems_h));
	b->hpages = malloc(1);
	CHECK(b->hitems && b->ditems_h && b->hpages);
	for (size_t i = 0; i < n; i++) {
		struct kvl_item *it = &b->hitems[i];
		uint32_t first = below(3 * L->page_tokens + 5);
		uint32_t nt = 1 + below(max_tok);
		uint32_t p0 = first / L->page_tokens;
		uint32_t p1 = (first + nt - 1) / L->page_tokens;

		if (distinct_slots && next_page + (p1 - p0 + 1) > L->num_pages) {
			/* whole pages of the pool for this item alone: shorten it to the
			 * pages left, stop when none are */
			uint32_t left = (uint32_t)L->num_pages - next_page;

			if (left == 0) {
				n = i;
				break;
			}
			nt = left * L->page_tokens - first % L->page_tokens;
			p1 = (first + nt - 1) / L->page_tokens;
		}
		/* keep a batch's blocks to 64 MiB */
		if (i > 0 && b->blocks_len + kvl_block_bytes(L, nt) > ((size_t)64 << 20)) {
			n = i;
			break;
		}
		it->first_token = first;
		it->ntokens = nt;
		poff[i] = b->pages_len;
		b->pages_len += p1 + 1;
		b->hpages = realloc(b->hpages, b->pages_len * sizeof(uint32_t));
		CHECK(b->hpages);
		for (uint32_t k = 0; k <= p1; k++) {
			uint32_t *slot = &b->hpages[poff[i] + k];

			if (k < p0)
				*slot = below(3) == 0 ? UINT32_MAX : (uint32_t)L->num_pages + below(9);
			else if (distinct_slots)
				*slot = pool[next_page++];
			else
				*slot = below((uint32_t)L->num_pages);
		}
		/* gap of 0..40 bytes before each block, so blocks start at every
		 * alignment; mostly 16-byte aligned */
		b->blocks_len += below(2) ? (16 - b->blocks_len % 16) % 16 : below(41);
		boff[i] = b->blocks_len;
		b->blocks_len += kvl_block_bytes(L, nt);
		if (nt > b->max_ntokens)
			b->max_ntokens = nt;
	}
	b->n = n;
	b->blocks_len += 64;
	CHECK(n > 0);

	b->hblocks = malloc(b->blocks_len);
	CHECK(b->hblocks);
	fill_random(b->hblocks, b->blocks_len);
	CU(cudaMalloc((void **)&b->dblocks, b->blocks_len));
	CU(cudaMemcpy(b->dblocks, b->hblocks, b->blocks_len, cudaMemcpyHostToDevice));
	CU(cudaMalloc((void **)&b->dpages, b->pages_len * sizeof(uint32_t)));
	CU(cudaMemcpy(b->dpages, b->hpages, b->pages_len * sizeof(uint32_t), cudaMemcpyHostToDevice));
	for (size_t i = 0; i < n; i++) {
		b->hitems[i].block = b->hblocks + boff[i];
		b->hitems[i].pages = b->hpages + poff[i];
		b->ditems_h[i] = b->hitems[i];
		b->ditems_h[i].block = b->dblocks + boff[i];
		b->ditems_h[i].pages = b->dpages + poff[i];
	}
	CU(cudaMalloc((void **)&b->ditems, n * sizeof(struct kvl_item)));
	CU(cudaMemcpy(b->ditems, b->ditems_h, n * sizeof(struct kvl_item), cudaMemcpyHostToDevice));
	free(pool);
	free(poff);
	free(boff);
}

static void batch_free(struct batch *b)
{
	free(b->hitems);
	free(b->ditems_h);
	free(b->hpages);
	free(b->hblocks);
	cudaFree(b->ditems);
	cudaFree(b->dpages);
	cudaFree(b->dblocks);
}

/* Bytes where the device blocks buffer differs from the host one. */
static size_t blocks_diff(const struct batch *b)
{
	size_t bad = 0;
	unsigned char *d = malloc(b->blocks_len);

	CHECK(d);
	CU(cudaMemcpy(d, b->dblocks, b->blocks_len, cudaMemcpyDeviceToHost));
	for (size_t o = 0; o < b->blocks_len; o++)
		if (d[o] != b->hblocks[o] && bad++ == 0) {
			size_t i = 0;

			while (i + 1 < b->n && (unsigned char *)b->hitems[i + 1].block <= b->hblocks + o)
				i++;
			test_log("blocks byte %zu (item %zu, block byte %lld): gpu %#x, reference %#x",
				 o, i, (long long)(b->hblocks + o - (unsigned char *)b->hitems[i].block),
				 d[o], b->hblocks[o]);
		}
	free(d);
	return bad;
}

/* One random layout and batch, one direction, on stream s; compares everything. */
static void one_random(bool gather, size_t max_items, uint32_t max_tok, cudaStream_t s)
{
	struct eng e;
	struct batch b;
	uint32_t *dflag, flag = 7;

	eng_random(&e, 1 << 20);
	eng_alloc(&e);
	batch_random(&b, &e, 1 + below((uint32_t)max_items), max_tok, !gather);
	test_log("%s, %zu items (max %u tokens): %s", gather ? "gather" : "scatter", b.n,
		 b.max_ntokens, e.desc);
	CU(cudaMalloc((void **)&dflag, sizeof(*dflag)));
	CU(cudaMemset(dflag, 0, sizeof(*dflag)));

	/* Sometimes a smaller token hint than the real maximum: still copied in full. */
	uint32_t hint = below(4) == 0 ? 1 + below(b.max_ntokens) : b.max_ntokens;
	if (gather) {
		CHECK_RC(kvl_gather_ref(&e.L, e.hbase, b.hitems, b.n), 0);
		CU((cudaError_t)kvl_gather_cuda(&e.L, e.dbase, b.ditems, b.n, hint, dflag, s));
	} else {
		CHECK_RC(kvl_scatter_ref(&e.L, e.hbase, b.hitems, b.n), 0);
		CU((cudaError_t)kvl_scatter_cuda(&e.L, e.dbase, b.ditems, b.n, hint, dflag, s));
	}
	CU(cudaStreamSynchronize(s));
	CU(cudaMemcpy(&flag, dflag, sizeof(flag), cudaMemcpyDeviceToHost));
	CHECK_EQ(flag, 0);
	CHECK_EQ(blocks_diff(&b), 0);
	CHECK_EQ(eng_diff(&e), 0);
	cudaFree(dflag);
	batch_free(&b);
	eng_free(&e);
}

static void many_random(bool gather, uint64_t salt, int rounds, size_t max_items,
			uint32_t max_tok)
{
	cudaStream_t s;

	CU(cudaStreamCreate(&s));
	for (int r = 0; r < rounds; r++) {
		seed_case(salt * 1000 + (uint64_t)r);
		test_log("seed %#llx salt %llu round %d", (unsigned long long)seed_base(),
			 (unsigned long long)salt, r);
		one_random(gather, max_items, max_tok, s);
	}
	CU(cudaStreamDestroy(s));
}

/* ---- cases --------------------------------------------------------------------- */

TEST(random_layouts_gather_matches_reference)
{
	many_random(true, 1, 150, 12, 70);
}

TEST(random_layouts_scatter_matches_reference)
{
	many_random(false, 2, 150, 12, 70);
}

TEST(random_large_batches_one_launch)
{
	many_random(true, 3, 10, 600, 40);
	many_random(false, 4, 10, 600, 40);
}

/* A fixed vLLM-style engine the size of a real one (Llama-3-8B: 8 KV heads of 128
 * bf16, 16-token pages), blocks of 512 tokens at every alignment of the base. */
TEST(llama_8b_layout_blocks_of_512)
{
	static const size_t offs[] = { 0, 8, 4, 2, 1 };
	cudaStream_t s;

	CU(cudaStreamCreate(&s));
	for (size_t k = 0; k < sizeof(offs) / sizeof(offs[0]); k++) {
		for (int dir = 0; dir < 2; dir++) {
			struct eng e;
			struct batch b;
			struct kvl_layout *L = &e.L;

			seed_case(100 + k * 2 + (size_t)dir);
			memset(&e, 0, sizeof(e));
			*L = (struct kvl_layout){ .layers = 4, .planes = 2, .heads = 8, .head_dim = 128,
						  .elem_size = 2, .page_tokens = 16, .num_pages = 80 };
			L->dim_stride = 2;
			L->head_stride = 256;
			L->token_stride = 2048;
			L->page_stride = 16 * 2048;
			L->plane_stride = 80 * 16 * 2048;
			e.base_off = offs[k];
			e.span = 2 * 80 * 16 * 2048;
			e.region = e.base_off + e.span;
			snprintf(e.desc, sizeof(e.desc), "llama-8b-like, base +%zu", e.base_off);
			CHECK_RC(kvl_layout_check(L, e.span), 0);
			eng_alloc(&e);
			batch_random(&b, &e, 2, 512, dir == 1);
			test_log("%s: %s, %zu items", dir ? "scatter" : "gather", e.desc, b.n);
			if (dir == 0) {
				CHECK_RC(kvl_gather_ref(L, e.hbase, b.hitems, b.n), 0);
				CU((cudaError_t)kvl_gather_cuda(L, e.dbase, b.ditems, b.n, b.max_ntokens,
								NULL, s));
			} else {
				CHECK_RC(kvl_scatter_ref(L, e.hbase, b.hitems, b.n), 0);
				CU((cudaError_t)kvl_scatter_cuda(L, e.dbase, b.ditems, b.n,
								 b.max_ntokens, NULL, s));
			}
			CU(cudaStreamSynchronize(s));
			CHECK_EQ(blocks_diff(&b), 0);
			CHECK_EQ(eng_diff(&e), 0);
			batch_free(&b);
			eng_free(&e);
		}
	}
	CU(cudaStreamDestroy(s));
}

/* llama.cpp's transposed V goes through the tiled path: every element size, aligned
 * and not. */
TEST(transposed_v_every_element_size_and_alignment)
{
	static const uint32_t ess[] = { 1, 2, 4 };
	static const size_t offs[] = { 0, 1, 2, 3 };

	for (size_t a = 0; a < 3; a++)
		for (size_t k = 0; k < 4; k++)
			for (int dir = 0; dir < 2; dir++) {
				struct eng e;
				struct batch b;
				struct kvl_layout *L = &e.L;
				const uint32_t n_ctx = 100, es = ess[a];

				seed_case(200 + a * 8 + k * 2 + (size_t)dir);
				memset(&e, 0, sizeof(e));
				*L = (struct kvl_layout){ .layers = 2, .planes = 1, .heads = 3,
							  .head_dim = 40, .elem_size = es,
							  .page_tokens = n_ctx, .num_pages = 1 };
				L->token_stride = es;
				L->dim_stride = (int64_t)n_ctx * es;
				L->head_stride = (int64_t)40 * n_ctx * es;
				e.base_off = offs[k];
				e.span = (size_t)3 * 40 * n_ctx * es;
				e.region = e.base_off + e.span + 5;
				snprintf(e.desc, sizeof(e.desc), "transposed V es %u base +%zu", es,
					 e.base_off);
				eng_alloc(&e);
				/* one item: the whole context or a piece of it */
				batch_random(&b, &e, 1, n_ctx - 15, dir == 1);
				test_log("%s: %s, first %u ntokens %u", dir ? "scatter" : "gather", e.desc,
					 b.hitems[0].first_token, b.hitems[0].ntokens);
				if (dir == 0) {
					CHECK_RC(kvl_gather_ref(L, e.hbase, b.hitems, b.n), 0);
					CU((cudaError_t)kvl_gather_cuda(L, e.dbase, b.ditems, b.n,
									b.max_ntokens, NULL, NULL));
				} else {
					CHECK_RC(kvl_scatter_ref(L, e.hbase, b.hitems, b.n), 0);
					CU((cudaError_t)kvl_scatter_cuda(L, e.dbase, b.ditems, b.n,
									 b.max_ntokens, NULL, NULL));
				}
				CU(cudaDeviceSynchronize());
				CHECK_EQ(blocks_diff(&b), 0);
				CHECK_EQ(eng_diff(&e), 0);
				batch_free(&b);
				eng_free(&e);
			}
}

/* A token on a page id >= num_pages is skipped and flagged; the rest is copied. */
TEST(out_of_range_page_is_skipped_and_flagged)
{
	struct eng e;
	struct batch b;
	uint32_t *dflag, flag = 0;
	struct kvl_layout *L = &e.L;

	seed_case(300);
	memset(&e, 0, sizeof(e));
	*L = (struct kvl_layout){ .layers = 2, .planes = 2, .heads = 2, .head_dim = 16,
				  .elem_size = 2, .page_tokens = 8, .num_pages = 12,
				  .dim_stride = 2, .head_stride = 32, .token_stride = 64,
				  .page_stride = 512, .plane_stride = 12 * 512 };
	e.span = 2 * 12 * 512;
	e.region = e.span;
	eng_alloc(&e);
	CU(cudaMalloc((void **)&dflag, sizeof(*dflag)));

	for (int dir = 0; dir < 2; dir++) {
		/* item 0 uses pages 0..2 of its table; its middle page is bad */
		batch_random(&b, &e, 2, 24, true);
		while (b.n < 2 || (b.hitems[0].first_token + b.hitems[0].ntokens - 1) / 8 <
					  b.hitems[0].first_token / 8 + 2) {
			batch_free(&b);
			batch_random(&b, &e, 2, 24, true);
		}
		const struct kvl_item *it = &b.hitems[0];
		uint32_t mid = it->first_token / 8 + 1;
		/* the first id out of range, then the last */
		uint32_t good = it->pages[mid], bad = dir == 0 ? 12 : UINT32_MAX;
		size_t pi = (size_t)(it->pages - b.hpages) + mid;

		test_log("%s: item 0 first %u ntokens %u, table entry %u bad", dir ? "scatter" : "gather",
			 it->first_token, it->ntokens, mid);
		CU(cudaMemset(dflag, 0, sizeof(*dflag)));
		b.hpages[pi] = bad;
		CU(cudaMemcpy(b.dpages + pi, &bad, sizeof(bad), cudaMemcpyHostToDevice));
		unsigned char *before = malloc(b.blocks_len);
		CHECK(before);
		memcpy(before, b.hblocks, b.blocks_len);
		if (dir == 0)
			CU((cudaError_t)kvl_gather_cuda(L, e.dbase, b.ditems, b.n, 24, dflag, NULL));
		else
			CU((cudaError_t)kvl_scatter_cuda(L, e.dbase, b.ditems, b.n, 24, dflag, NULL));
		CU(cudaDeviceSynchronize());
		CU(cudaMemcpy(&flag, dflag, sizeof(flag), cudaMemcpyDeviceToHost));
		CHECK_EQ(flag, 1);

		/* The reference: the same copy with that page good, then the skipped
		 * tokens put back as they were (gather: block bytes; scatter: the page
		 * the reference wrote and the GPU did not). */
		b.hpages[pi] = good;
		unsigned char *page_before[2];
		for (uint32_t l = 0; l < 2; l++) {
			page_before[l] = malloc(e.region);
			CHECK(page_before[l]);
			memcpy(page_before[l], e.host[l], e.region);
		}
		if (dir == 0)
			CHECK_RC(kvl_gather_ref(L, e.hbase, b.hitems, b.n), 0);
		else
			CHECK_RC(kvl_scatter_ref(L, e.hbase, b.hitems, b.n), 0);
		size_t row = 2 * 16 * 2;
		for (uint32_t t = 0; t < it->ntokens; t++) {
			if ((it->first_token + t) / 8 != mid)
				continue;
			for (uint32_t lp = 0; lp < 4; lp++) {
				size_t o = ((size_t)lp * it->ntokens + t) * row;
				unsigned char *hb = (unsigned char *)it->block;
				size_t bo = (size_t)(hb - b.hblocks) + o;

				if (dir == 0)
					memcpy(hb + o, before + bo, row);
			}
		}
		if (dir == 1)
			for (uint32_t l = 0; l < 2; l++)
				for (uint32_t p = 0; p < 2; p++) {
					size_t po = (size_t)p * 12 * 512 + (size_t)good * 512;
					memcpy(e.host[l] + po, page_before[l] + po, 512);
				}
		CHECK_EQ(blocks_diff(&b), 0);
		CHECK_EQ(eng_diff(&e), 0);
		for (uint32_t l = 0; l < 2; l++)
			free(page_before[l]);
		free(before);
		batch_free(&b);
	}
	cudaFree(dflag);
	eng_free(&e);
}

TEST(bad_arguments_queue_nothing)
{
	struct kvl_layout L = { .layers = 1, .planes = 1, .heads = 1, .head_dim = 4,
				.elem_size = 2, .page_tokens = 4, .num_pages = 1,
				.dim_stride = 2, .token_stride = 8 };
	void **dbase;
	struct kvl_item *ditems;

	CU(cudaMalloc((void **)&dbase, sizeof(void *)));
	CU(cudaMalloc((void **)&ditems, sizeof(struct kvl_item)));
	CHECK_EQ(kvl_gather_cuda(&L, dbase, ditems, 0, 4, NULL, NULL), cudaSuccess);
	CHECK_EQ(kvl_gather_cuda(NULL, dbase, ditems, 1, 4, NULL, NULL), cudaErrorInvalidValue);
	CHECK_EQ(kvl_scatter_cuda(&L, NULL, ditems, 1, 4, NULL, NULL), cudaErrorInvalidValue);
	CHECK_EQ(kvl_scatter_cuda(&L, dbase, NULL, 1, 4, NULL, NULL), cudaErrorInvalidValue);
	L.elem_size = 3;
	CHECK_EQ(kvl_gather_cuda(&L, dbase, ditems, 1, 4, NULL, NULL), cudaErrorInvalidValue);
	L.elem_size = 2;
	L.dim_stride = 1; /* overlapping row */
	CHECK_EQ(kvl_scatter_cuda(&L, dbase, ditems, 1, 4, NULL, NULL), cudaErrorInvalidValue);
	CU(cudaDeviceSynchronize());
	cudaFree(dbase);
	cudaFree(ditems);
}

/*
 * Whether a CUDA device is there, asked in a child process: CUDA must not be
 * initialised in this process before the framework forks a child per case.
 * Returns 1 with a device, 0 without (why in `why`).
 */
static int device_present(char *why, size_t cap)
{
	int pfd[2];
	pid_t pid;
	int st = 0;
	ssize_t r;

	snprintf(why, cap, "could not ask");
	if (pipe(pfd) < 0)
		return 0;
	pid = fork();
	if (pid < 0)
		return 0;
	if (pid == 0) {
		int n = 0;
		cudaError_t err = cudaGetDeviceCount(&n);
		char msg[256];

		close(pfd[0]);
		if (err == cudaSuccess && n > 0)
			snprintf(msg, sizeof(msg), "%d", n);
		else
			snprintf(msg, sizeof(msg), "cudaGetDeviceCount: %s, %d devices",
				 err == cudaSuccess ? "ok" : cudaGetErrorString(err), n);
		r = write(pfd[1], msg, strlen(msg));
		(void)r;
		_exit(err == cudaSuccess && n > 0 ? 0 : 77);
	}
	close(pfd[1]);
	r = read(pfd[0], why, cap - 1);
	why[r > 0 ? r : 0] = 0;
	close(pfd[0]);
	while (waitpid(pid, &st, 0) < 0 && errno == EINTR)
		;
	return WIFEXITED(st) && WEXITSTATUS(st) == 0;
}

static const struct test_case cases[] = {
	{ "random_layouts_gather_matches_reference", random_layouts_gather_matches_reference },
	{ "random_layouts_scatter_matches_reference", random_layouts_scatter_matches_reference },
	{ "random_large_batches_one_launch", random_large_batches_one_launch },
	{ "llama_8b_layout_blocks_of_512", llama_8b_layout_blocks_of_512 },
	{ "transposed_v_every_element_size_and_alignment",
	  transposed_v_every_element_size_and_alignment },
	{ "out_of_range_page_is_skipped_and_flagged", out_of_range_page_is_skipped_and_flagged },
	{ "bad_arguments_queue_nothing", bad_arguments_queue_nothing },
};

int main(int argc, char **argv)
{
	const char *prog = strrchr(argv[0], '/') ? strrchr(argv[0], '/') + 1 : argv[0];
	char why[256];

	if (!device_present(why, sizeof(why))) {
		printf("SKIP %s: no CUDA device (%s)\n", prog, why);
		return 77;
	}
	return test_run(argv[0], cases, sizeof(cases) / sizeof(cases[0]), argc, argv);
}
