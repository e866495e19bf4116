/*
 * test_kernels.c - unit tests of the layout validator and the CPU reference
 * gather/scatter (kernels/kvcopy_ref.c), no GPU needed.
 *
 * Each engine here is an array allocated by hand (vLLM [2][pages][tokens][heads][dim],
 * its [pages][2]... variant, head-major pages, llama.cpp's K and transposed V), whose
 * element addresses the test computes by nested indexing over the axes in the
 * array's own order, padding included, and whose kvl_layout strides are written out
 * by hand beside it. Every element byte holds a hash of (layer, plane, page, slot,
 * head, dim, byte); a gathered block is checked by decoding each of its bytes'
 * position with the block format and recomputing that hash, and an engine after a
 * scatter is compared byte for byte, padding and untouched slots included, with the
 * original plus what the block says should have landed where.
 */
#include "test.h"

#include <errno.h>
#include <limits.h>

#include "kvcopy.h"

/* ---- hand-built engines ---------------------------------------------------- */

enum axis { AX_PLANE, AX_PAGE, AX_SLOT, AX_HEAD, AX_DIM, AX_N };

enum kind {
	VLLM,        /* [planes][pages][slots][heads][dim] */
	PAGES_MAJOR, /* [pages][planes][slots][heads][dim] */
	HEAD_MAJOR,  /* [planes][pages][heads][slots][dim]: rows are heads runs apart */
	LLAMA_K,     /* one page: [n_ctx][heads][dim] */
	LLAMA_V,     /* one page, transposed: [heads][dim][n_ctx] */
};

#define MAX_LAYERS 4

struct eng {
	enum kind kind;
	uint32_t layers, planes, pages, ptok, heads, dim, es;
	uint32_t alloc[AX_N]; /* allocated extent of each axis (>= the used one) */
	int order[AX_N];      /* axes, outermost first */
	struct kvl_layout L;  /* the descriptor under test, strides set by hand */
	size_t region;        /* bytes per layer */
	unsigned char *mem[MAX_LAYERS];
	void *base[MAX_LAYERS];
	uint64_t seed;
};

struct dims {
	uint32_t layers, planes, pages, ptok, heads, dim, es;
	uint32_t pad_slot, pad_head, pad_dim; /* unused allocated entries */
};

static uint8_t mix8(uint64_t x)
{
	x ^= x >> 33;
	x *= 0xff51afd7ed558ccdULL;
	x ^= x >> 33;
	x *= 0xc4ceb9fe1a85ec53ULL;
	x ^= x >> 33;
	return (uint8_t)x;
}

/* The byte an element byte of the engine holds. */
static uint8_t elem_pat(const struct eng *e, uint32_t l, uint32_t p, uint32_t g, uint32_t s,
			uint32_t h, uint32_t d, uint32_t b)
{
	uint64_t k = l;
	k = k * 3 + p;
	k = k * 1000003 + g;
	k = k * 1009 + s;
	k = k * 101 + h;
	k = k * 1031 + d;
	k = k * 5 + b;
	return mix8(k ^ e->seed);
}

/* The byte anything else in the region (padding) holds. */
static uint8_t bg_pat(const struct eng *e, uint32_t l, size_t off)
{
	return mix8(((uint64_t)off << 8 | l) ^ ~e->seed);
}

/* Byte offset of an element in its layer: nested indexing in the array's order. */
static size_t at(const struct eng *e, uint32_t p, uint32_t g, uint32_t s, uint32_t h,
		 uint32_t d)
{
	const uint32_t idx[AX_N] = { p, g, s, h, d };
	size_t off = 0;

	for (int i = 0; i < AX_N; i++) {
		int a = e->order[i];
		off = off * e->alloc[a] + idx[a];
	}
	return off * e->es;
}

static void eng_fill(struct eng *e)
{
	for (uint32_t l = 0; l < e->layers; l++) {
		for (size_t o = 0; o < e->region; o++)
			e->mem[l][o] = bg_pat(e, l, o);
		for (uint32_t p = 0; p < e->planes; p++)
			for (uint32_t g = 0; g < e->pages; g++)
				for (uint32_t s = 0; s < e->ptok; s++)
					for (uint32_t h = 0; h < e->heads; h++)
						for (uint32_t d = 0; d < e->dim; d++)
							for (uint32_t b = 0; b < e->es; b++)
								e->mem[l][at(e, p, g, s, h, d) + b] =
									elem_pat(e, l, p, g, s, h, d, b);
	}
}

/* Build an engine of a kind with the given sizes; the layout strides are spelled
 * out for each kind. Fills it with the patterns when fill is set. */
static void eng_make(struct eng *e, enum kind kind, struct dims z, uint64_t seed, bool fill)
{
	const size_t es = z.es;

	memset(e, 0, sizeof(*e));
	e->kind = kind;
	e->seed = seed;
	if (kind == LLAMA_K || kind == LLAMA_V) {
		z.pages = 1;
		z.planes = 1;
	}
	e->layers = z.layers, e->planes = z.planes, e->pages = z.pages, e->ptok = z.ptok;
	e->heads = z.heads, e->dim = z.dim, e->es = z.es;
	CHECK(z.layers <= MAX_LAYERS);

	const size_t P = z.planes, G = z.pages;
	const size_t Ta = z.ptok + z.pad_slot, Ha = z.heads + z.pad_head, Da = z.dim + z.pad_dim;
	e->alloc[AX_PLANE] = (uint32_t)P;
	e->alloc[AX_PAGE] = (uint32_t)G;
	e->alloc[AX_SLOT] = (uint32_t)Ta;
	e->alloc[AX_HEAD] = (uint32_t)Ha;
	e->alloc[AX_DIM] = (uint32_t)Da;

	struct kvl_layout *L = &e->L;
	L->layers = z.layers;
	L->planes = z.planes;
	L->heads = z.heads;
	L->head_dim = z.dim;
	L->elem_size = z.es;
	L->page_tokens = z.ptok;
	L->num_pages = z.pages;
	switch (kind) {
	case VLLM:
		memcpy(e->order, (int[]){ AX_PLANE, AX_PAGE, AX_SLOT, AX_HEAD, AX_DIM }, sizeof(e->order));
		L->dim_stride = (int64_t)es;
		L->head_stride = (int64_t)(Da * es);
		L->token_stride = (int64_t)(Ha * Da * es);
		L->page_stride = (int64_t)(Ta * Ha * Da * es);
		L->plane_stride = (int64_t)(G * Ta * Ha * Da * es);
		break;
	case PAGES_MAJOR:
		memcpy(e->order, (int[]){ AX_PAGE, AX_PLANE, AX_SLOT, AX_HEAD, AX_DIM }, sizeof(e->order));
		L->dim_stride = (int64_t)es;
		L->head_stride = (int64_t)(Da * es);
		L->token_stride = (int64_t)(Ha * Da * es);
		L->plane_stride = (int64_t)(Ta * Ha * Da * es);
		L->page_stride = (int64_t)(P * Ta * Ha * Da * es);
		break;
	case HEAD_MAJOR:
		memcpy(e->order, (int[]){ AX_PLANE, AX_PAGE, AX_HEAD, AX_SLOT, AX_DIM }, sizeof(e->order));
		L->dim_stride = (int64_t)es;
		L->token_stride = (int64_t)(Da * es);
		L->head_stride = (int64_t)(Ta * Da * es);
		L->page_stride = (int64_t)(Ha * Ta * Da * es);
		L->plane_stride = (int64_t)(G * Ha * Ta * Da * es);
		break;
	case LLAMA_K:
		memcpy(e->order, (int[]){ AX_PLANE, AX_PAGE, AX_SLOT, AX_HEAD, AX_DIM }, sizeof(e->order));
		L->dim_stride = (int64_t)es;
		L->head_stride = (int64_t)(Da * es);
		L->token_stride = (int64_t)(Ha * Da * es);
		L->page_stride = 77777; /* one page, one plane: never used */
		L->plane_stride = -5;
		break;
	case LLAMA_V:
		memcpy(e->order, (int[]){ AX_PLANE, AX_PAGE, AX_HEAD, AX_DIM, AX_SLOT }, sizeof(e->order));
		L->token_stride = (int64_t)es;
		L->dim_stride = (int64_t)(Ta * es);
		L->head_stride = (int64_t)(Da * Ta * es);
		L->page_stride = 3;
		L->plane_stride = 0;
		break;
	}
	e->region = P * G * Ta * Ha * Da * es;
	for (uint32_t l = 0; l < e->layers; l++) {
		e->mem[l] = malloc(e->region);
		CHECK(e->mem[l]);
		e->base[l] = e->mem[l];
	}
	CHECK_RC(kvl_layout_check(&e->L, e->region), 0);
	if (fill)
		eng_fill(e);
}

static void eng_free(struct eng *e)
{
	for (uint32_t l = 0; l < e->layers; l++)
		free(e->mem[l]);
}

/* ---- blocks ---------------------------------------------------------------- */

struct blk {
	struct kvl_item item;
	uint32_t *pages;
	size_t npages, bytes;
	unsigned char *data;
};

/* A block of ntokens from first, over a page table of the engine's page ids in a
 * scrambled order (distinct ids while they last). Block bytes start as a pattern
 * of their own (seed), so a copy that skips a byte shows. */
static void blk_make(struct blk *b, const struct eng *e, uint32_t first, uint32_t ntokens,
		     uint32_t seed)
{
	memset(b, 0, sizeof(*b));
	b->npages = (first + ntokens + e->ptok - 1) / e->ptok;
	b->pages = malloc(b->npages * sizeof(*b->pages));
	CHECK(b->pages);
	/* a seeded shuffle of 0..pages-1, repeated if the block needs more */
	uint32_t *perm = malloc(e->pages * sizeof(*perm));
	uint64_t r = 0x9e3779b97f4a7c15ULL * (seed + 1);
	CHECK(perm);
	for (uint32_t k = 0; k < e->pages; k++)
		perm[k] = k;
	for (uint32_t k = e->pages; k > 1; k--) {
		r = r * 6364136223846793005ULL + 1442695040888963407ULL;
		uint32_t j = (uint32_t)((r >> 33) % k), t = perm[k - 1];
		perm[k - 1] = perm[j];
		perm[j] = t;
	}
	for (size_t k = 0; k < b->npages; k++)
		b->pages[k] = perm[k % e->pages];
	free(perm);
	b->bytes = kvl_block_bytes(&e->L, ntokens);
	CHECK(b->bytes > 0);
	b->data = malloc(b->bytes);
	CHECK(b->data);
	for (size_t o = 0; o < b->bytes; o++)
		b->data[o] = mix8(o * 31 + seed + 0x5bd1e995);
	b->item.block = b->data;
	b->item.pages = b->pages;
	b->item.first_token = first;
	b->item.ntokens = ntokens;
}

static void blk_free(struct blk *b)
{
	free(b->pages);
	free(b->data);
}

/* Where block byte o comes from, decoded from the block format
 * [layer][plane][token][head][dim] elements. */
struct where {
	uint32_t l, p, g, s, h, d, b;
};

static struct where blk_where(const struct eng *e, const struct blk *b, size_t o)
{
	struct where w;
	size_t x = o / e->es;
	uint32_t t;

	w.b = (uint32_t)(o % e->es);
	w.d = (uint32_t)(x % e->dim), x /= e->dim;
	w.h = (uint32_t)(x % e->heads), x /= e->heads;
	t = (uint32_t)(x % b->item.ntokens), x /= b->item.ntokens;
	w.p = (uint32_t)(x % e->planes), x /= e->planes;
	w.l = (uint32_t)x;
	w.g = b->pages[(b->item.first_token + t) / e->ptok];
	w.s = (b->item.first_token + t) % e->ptok;
	return w;
}

/* Bytes of the block that do not hold what the engine holds for them (the first
 * one logged). */
static size_t blk_mismatches(const struct eng *e, const struct blk *b)
{
	size_t bad = 0;

	for (size_t o = 0; o < b->bytes; o++) {
		struct where w = blk_where(e, b, o);
		uint8_t want = elem_pat(e, w.l, w.p, w.g, w.s, w.h, w.d, w.b);

		if (b->data[o] != want && bad++ == 0)
			test_log("block byte %zu (layer %u plane %u page %u slot %u head %u dim %u "
				 "byte %u) is %#x, want %#x",
				 o, w.l, w.p, w.g, w.s, w.h, w.d, w.b, b->data[o], want);
	}
	return bad;
}

/* The engine a scatter of blocks bs[0..n) into e should leave: a copy of e with each
 * block's bytes put where nested indexing says (later blocks win). */
static unsigned char **expect_after_scatter(const struct eng *e, const struct blk *bs, size_t n)
{
	unsigned char **x = calloc(e->layers, sizeof(*x));

	CHECK(x);
	for (uint32_t l = 0; l < e->layers; l++) {
		x[l] = malloc(e->region);
		CHECK(x[l]);
		memcpy(x[l], e->mem[l], e->region);
	}
	for (size_t i = 0; i < n; i++)
		for (size_t o = 0; o < bs[i].bytes; o++) {
			struct where w = blk_where(e, &bs[i], o);

			x[w.l][at(e, w.p, w.g, w.s, w.h, w.d) + w.b] = bs[i].data[o];
		}
	return x;
}

/* Bytes of the engine that differ from x (the first one logged); frees x. */
static size_t eng_mismatches(const struct eng *e, unsigned char **x)
{
	size_t bad = 0;

	for (uint32_t l = 0; l < e->layers; l++) {
		for (size_t o = 0; o < e->region; o++)
			if (e->mem[l][o] != x[l][o] && bad++ == 0)
				test_log("engine layer %u byte %zu is %#x, want %#x", l, o,
					 e->mem[l][o], x[l][o]);
		free(x[l]);
	}
	free(x);
	return bad;
}

/* Gather one block and check it; then scatter a fresh block into the engine and
 * check every engine byte. */
static void gather_scatter_one(enum kind kind, struct dims z, uint32_t first, uint32_t ntokens)
{
	struct eng e;
	struct blk b;

	test_log("kind %d layers %u planes %u pages %u ptok %u heads %u dim %u es %u pads %u/%u/%u "
		 "first %u ntokens %u",
		 kind, z.layers, z.planes, z.pages, z.ptok, z.heads, z.dim, z.es, z.pad_slot,
		 z.pad_head, z.pad_dim, first, ntokens);
	eng_make(&e, kind, z, 0x1234 + first, true);
	blk_make(&b, &e, first, ntokens, 11);
	CHECK_RC(kvl_gather_ref(&e.L, e.base, &b.item, 1), 0);
	CHECK_EQ(blk_mismatches(&e, &b), 0);
	blk_free(&b);

	blk_make(&b, &e, first, ntokens, 29);
	unsigned char **x = expect_after_scatter(&e, &b, 1);
	CHECK_RC(kvl_scatter_ref(&e.L, e.base, &b.item, 1), 0);
	CHECK_EQ(eng_mismatches(&e, x), 0);
	blk_free(&b);
	eng_free(&e);
}

/* ---- layouts of real engines --------------------------------------------- */

TEST(vllm_gather_and_scatter_match_the_hand_layout)
{
	struct dims z = { .layers = 3, .planes = 2, .pages = 11, .ptok = 16, .heads = 4,
			  .dim = 8, .es = 2 };
	gather_scatter_one(VLLM, z, 0, 48);
	gather_scatter_one(VLLM, z, 32, 16);
}

TEST(vllm_block_starting_mid_page_spans_partial_pages)
{
	struct dims z = { .layers = 2, .planes = 2, .pages = 9, .ptok = 16, .heads = 2,
			  .dim = 8, .es = 2 };
	gather_scatter_one(VLLM, z, 5, 37);  /* 11 + 16 + 10 */
	gather_scatter_one(VLLM, z, 15, 2);  /* last slot of one page, first of the next */
	gather_scatter_one(VLLM, z, 17, 1);
}

TEST(pages_major_variant_matches_the_hand_layout)
{
	struct dims z = { .layers = 2, .planes = 2, .pages = 7, .ptok = 16, .heads = 3,
			  .dim = 4, .es = 4 };
	gather_scatter_one(PAGES_MAJOR, z, 0, 32);
	gather_scatter_one(PAGES_MAJOR, z, 9, 30);
}

TEST(head_major_pages_match_the_hand_layout)
{
	struct dims z = { .layers = 2, .planes = 2, .pages = 6, .ptok = 8, .heads = 3,
			  .dim = 5, .es = 2 };
	gather_scatter_one(HEAD_MAJOR, z, 3, 20);
}

TEST(llama_cpp_k_single_page_matches_the_hand_layout)
{
	struct dims z = { .layers = 3, .ptok = 64, .heads = 4, .dim = 8, .es = 2 };
	gather_scatter_one(LLAMA_K, z, 0, 64);
	gather_scatter_one(LLAMA_K, z, 13, 40);
}

TEST(llama_cpp_transposed_v_matches_the_hand_layout)
{
	struct dims z = { .layers = 2, .ptok = 48, .heads = 3, .dim = 8, .es = 2 };
	gather_scatter_one(LLAMA_V, z, 0, 48);
	gather_scatter_one(LLAMA_V, z, 7, 17);
	z.es = 4;
	gather_scatter_one(LLAMA_V, z, 1, 46);
	z.es = 1;
	gather_scatter_one(LLAMA_V, z, 20, 28);
}

TEST(mla_single_plane_single_head)
{
	struct dims z = { .layers = 4, .planes = 1, .pages = 5, .ptok = 16, .heads = 1,
			  .dim = 36, .es = 2 };
	gather_scatter_one(VLLM, z, 6, 50);
}

TEST(padded_slots_heads_and_dims_are_skipped)
{
	struct dims z = { .layers = 2, .planes = 2, .pages = 5, .ptok = 7, .heads = 3,
			  .dim = 5, .es = 2, .pad_slot = 2, .pad_head = 1, .pad_dim = 3 };
	gather_scatter_one(VLLM, z, 4, 23);
	gather_scatter_one(PAGES_MAJOR, z, 0, 14);
	gather_scatter_one(HEAD_MAJOR, z, 2, 9);
	gather_scatter_one(LLAMA_K, z, 1, 6);
	gather_scatter_one(LLAMA_V, z, 3, 4);
}

/* Every small combination of the awkward sizes. */
TEST(odd_sizes_every_combination)
{
	static const uint32_t es[] = { 1, 2, 4 }, heads[] = { 1, 3 }, dim[] = { 1, 3, 5 },
			      ptok[] = { 1, 7, 16 };
	unsigned runs = 0;

	for (size_t a = 0; a < 3; a++)
		for (size_t bh = 0; bh < 2; bh++)
			for (size_t c = 0; c < 3; c++)
				for (size_t d = 0; d < 3; d++) {
					struct dims z = { .layers = 2, .planes = 2, .pages = 13,
							  .ptok = ptok[d], .heads = heads[bh],
							  .dim = dim[c], .es = es[a],
							  .pad_dim = (uint32_t)(c & 1) };
					const uint32_t firsts[] = { 0, 3, ptok[d] + 2 };
					const uint32_t ns[] = { 1, 9, 2 * ptok[d] + 1 };

					for (int f = 0; f < 3; f++)
						for (int n = 0; n < 3; n++) {
							/* enough pages for distinct ids */
							if ((firsts[f] + ns[n]) / ptok[d] + 1 > 13)
								continue;
							gather_scatter_one(VLLM, z, firsts[f], ns[n]);
							runs++;
						}
				}
	CHECK(runs > 400);
}

/* ---- batches and round trips --------------------------------------------- */

TEST(batch_of_items_each_lands_in_its_block)
{
	struct dims z = { .layers = 2, .planes = 2, .pages = 40, .ptok = 16, .heads = 2,
			  .dim = 4, .es = 2 };
	struct eng e;
	struct blk b[5];
	struct kvl_item items[5];
	const uint32_t first[5] = { 0, 16, 3, 40, 100 }, n[5] = { 16, 32, 1, 57, 20 };

	eng_make(&e, VLLM, z, 77, true);
	for (int i = 0; i < 5; i++) {
		blk_make(&b[i], &e, first[i], n[i], (uint32_t)i * 5);
		items[i] = b[i].item;
	}
	CHECK_RC(kvl_gather_ref(&e.L, e.base, items, 5), 0);
	for (int i = 0; i < 5; i++)
		CHECK_EQ(blk_mismatches(&e, &b[i]), 0);
	for (int i = 0; i < 5; i++)
		blk_free(&b[i]);
	eng_free(&e);
}

TEST(scatter_of_gather_round_trips_and_leaves_other_slots)
{
	struct dims z = { .layers = 3, .planes = 2, .pages = 12, .ptok = 7, .heads = 3,
			  .dim = 3, .es = 2, .pad_head = 1 };
	struct eng a, c;
	struct blk b;

	/* Gather from a, scatter into c (other contents): the block's slots of c must
	 * then equal a's, and every other byte of c (other slots, padding) be c's. */
	eng_make(&a, VLLM, z, 1, true);
	eng_make(&c, VLLM, z, 2, true);
	blk_make(&b, &a, 5, 30, 3);
	CHECK_RC(kvl_gather_ref(&a.L, a.base, &b.item, 1), 0);
	CHECK_EQ(blk_mismatches(&a, &b), 0);
	unsigned char **x = expect_after_scatter(&c, &b, 1);
	CHECK_RC(kvl_scatter_ref(&c.L, c.base, &b.item, 1), 0);
	CHECK_EQ(eng_mismatches(&c, x), 0);

	/* Scatter of a gather into the same engine changes nothing. */
	x = expect_after_scatter(&a, &b, 0);
	CHECK_RC(kvl_scatter_ref(&a.L, a.base, &b.item, 1), 0);
	CHECK_EQ(eng_mismatches(&a, x), 0);

	/* Untouched means untouched: slots outside the block still hold c's own
	 * pattern (checked directly, not through the expectation). */
	uint32_t used_page = b.pages[0], first_slot = 5;
	for (uint32_t s = 0; s < first_slot; s++)
		CHECK_EQ(c.mem[1][at(&c, 1, used_page, s, 2, 1)], elem_pat(&c, 1, 1, used_page, s, 2, 1, 0));
	CHECK(c.mem[1][at(&c, 1, used_page, first_slot, 2, 1)] ==
	      elem_pat(&a, 1, 1, used_page, first_slot, 2, 1, 0));
	blk_free(&b);
	eng_free(&a);
	eng_free(&c);
}

TEST(the_checks_catch_a_wrong_byte)
{
	/* The block and engine checks above must be able to fail. */
	struct dims z = { .layers = 1, .planes = 2, .pages = 4, .ptok = 4, .heads = 2,
			  .dim = 2, .es = 2 };
	struct eng e;
	struct blk b;

	eng_make(&e, VLLM, z, 5, true);
	blk_make(&b, &e, 1, 6, 0);
	CHECK_RC(kvl_gather_ref(&e.L, e.base, &b.item, 1), 0);
	CHECK_EQ(blk_mismatches(&e, &b), 0);
	b.data[b.bytes / 2] ^= 0x40;
	CHECK_EQ(blk_mismatches(&e, &b), 1);
	/* A swapped K/V plane is caught too. */
	b.data[b.bytes / 2] ^= 0x40;
	size_t half = b.bytes / 2;
	unsigned char *tmp = malloc(half);
	CHECK(tmp);
	memcpy(tmp, b.data, half);
	memmove(b.data, b.data + half, half);
	memcpy(b.data + half, tmp, half);
	free(tmp);
	CHECK(blk_mismatches(&e, &b) > half);

	unsigned char **x = expect_after_scatter(&e, &b, 0);
	e.mem[0][e.region - 1] ^= 1; /* padding-free layout: the last element's byte */
	CHECK_EQ(eng_mismatches(&e, x), 1);
	blk_free(&b);
	eng_free(&e);
}

/* ---- page ids and arguments ------------------------------------------------ */

TEST(out_of_range_page_in_a_later_item_fails_gather_before_any_copy)
{
	struct dims z = { .layers = 2, .planes = 2, .pages = 8, .ptok = 4, .heads = 2,
			  .dim = 3, .es = 2 };
	struct eng e;
	struct blk b[2];
	struct kvl_item items[2];

	eng_make(&e, VLLM, z, 9, true);
	blk_make(&b[0], &e, 0, 8, 1);
	blk_make(&b[1], &e, 2, 9, 2);
	b[1].pages[b[1].npages - 1] = 8; /* == num_pages: the last token's page */
	items[0] = b[0].item;
	items[1] = b[1].item;
	unsigned char *before = malloc(b[0].bytes);
	CHECK(before);
	memcpy(before, b[0].data, b[0].bytes);
	CHECK_RC(kvl_gather_ref(&e.L, e.base, items, 2), -ERANGE);
	CHECK(memcmp(before, b[0].data, b[0].bytes) == 0);
	b[1].pages[b[1].npages - 1] = UINT32_MAX;
	CHECK_RC(kvl_gather_ref(&e.L, e.base, items, 2), -ERANGE);
	CHECK(memcmp(before, b[0].data, b[0].bytes) == 0);
	/* The same ids in range work. */
	b[1].pages[b[1].npages - 1] = 7;
	CHECK_RC(kvl_gather_ref(&e.L, e.base, items, 2), 0);
	CHECK_EQ(blk_mismatches(&e, &b[0]), 0);
	CHECK_EQ(blk_mismatches(&e, &b[1]), 0);
	free(before);
	blk_free(&b[0]);
	blk_free(&b[1]);
	eng_free(&e);
}

TEST(out_of_range_page_fails_scatter_and_writes_nothing)
{
	struct dims z = { .layers = 2, .planes = 2, .pages = 8, .ptok = 4, .heads = 2,
			  .dim = 3, .es = 2 };
	struct eng e;
	struct blk b[2];
	struct kvl_item items[2];

	eng_make(&e, VLLM, z, 9, true);
	blk_make(&b[0], &e, 0, 8, 1);
	blk_make(&b[1], &e, 1, 3, 2);
	b[1].pages[0] = 1000;
	items[0] = b[0].item;
	items[1] = b[1].item;
	unsigned char **x = expect_after_scatter(&e, b, 0);
	CHECK_RC(kvl_scatter_ref(&e.L, e.base, items, 2), -ERANGE);
	CHECK_EQ(eng_mismatches(&e, x), 0);
	blk_free(&b[0]);
	blk_free(&b[1]);
	eng_free(&e);
}

TEST(page_ids_beyond_the_block_are_not_checked)
{
	/* Only the page-table entries the block's tokens use matter. */
	struct dims z = { .layers = 1, .planes = 2, .pages = 6, .ptok = 4, .heads = 1,
			  .dim = 4, .es = 2 };
	struct eng e;
	struct blk b;

	eng_make(&e, VLLM, z, 4, true);
	blk_make(&b, &e, 4, 4, 0); /* tokens 4..7: page-table entry 1 only */
	b.pages[0] = UINT32_MAX;
	CHECK_RC(kvl_gather_ref(&e.L, e.base, &b.item, 1), 0);
	CHECK_EQ(blk_mismatches(&e, &b), 0);
	blk_free(&b);
	eng_free(&e);
}

TEST(bad_arguments_are_refused)
{
	struct dims z = { .layers = 2, .planes = 2, .pages = 4, .ptok = 4, .heads = 1,
			  .dim = 4, .es = 2 };
	struct eng e;
	struct blk b;
	struct kvl_item it;

	eng_make(&e, VLLM, z, 4, true);
	blk_make(&b, &e, 0, 4, 0);
	unsigned char **x = expect_after_scatter(&e, &b, 0);
	CHECK_RC(kvl_gather_ref(NULL, e.base, &b.item, 1), -EINVAL);
	CHECK_RC(kvl_gather_ref(&e.L, NULL, &b.item, 1), -EINVAL);
	CHECK_RC(kvl_gather_ref(&e.L, e.base, NULL, 1), -EINVAL);
	CHECK_RC(kvl_gather_ref(&e.L, e.base, NULL, 0), 0);
	CHECK_RC(kvl_scatter_ref(&e.L, e.base, &b.item, 0), 0);
	it = b.item;
	it.ntokens = 0;
	CHECK_RC(kvl_scatter_ref(&e.L, e.base, &it, 1), -EINVAL);
	it = b.item;
	it.block = NULL;
	CHECK_RC(kvl_scatter_ref(&e.L, e.base, &it, 1), -EINVAL);
	it = b.item;
	it.pages = NULL;
	CHECK_RC(kvl_scatter_ref(&e.L, e.base, &it, 1), -EINVAL);
	void *bases[2] = { e.base[0], NULL };
	CHECK_RC(kvl_scatter_ref(&e.L, bases, &b.item, 1), -EINVAL);
	struct kvl_layout L = e.L;
	L.elem_size = 3;
	CHECK_RC(kvl_scatter_ref(&L, e.base, &b.item, 1), -EINVAL);
	CHECK_EQ(eng_mismatches(&e, x), 0);
	blk_free(&b);
	eng_free(&e);
}

TEST(block_bytes_counts_and_overflows_to_zero)
{
	struct kvl_layout L = { .layers = 32, .planes = 2, .heads = 8, .head_dim = 128,
				.elem_size = 2, .page_tokens = 16, .num_pages = 1 };

	CHECK_EQ(kvl_block_bytes(&L, 512), 32ull * 2 * 512 * 8 * 128 * 2); /* 64 MiB */
	CHECK_EQ(kvl_block_bytes(&L, 1), 131072);
	CHECK_EQ(kvl_block_bytes(&L, 0), 0);
	CHECK_EQ(kvl_block_bytes(NULL, 16), 0);
	L.heads = UINT32_MAX;
	L.head_dim = UINT32_MAX;
	CHECK_EQ(kvl_block_bytes(&L, UINT32_MAX), 0);
}

/* ---- the validator ------------------------------------------------------- */

static struct kvl_layout vllm_layout(void)
{
	/* [2][10 pages][16][4 heads][8] bf16: 2*10*16*4*8*2 = 20480 bytes */
	struct kvl_layout L = { .layers = 2, .planes = 2, .heads = 4, .head_dim = 8,
				.elem_size = 2, .page_tokens = 16, .num_pages = 10,
				.plane_stride = 10240, .page_stride = 1024, .token_stride = 64,
				.head_stride = 16, .dim_stride = 2 };
	return L;
}

TEST(check_accepts_exact_regions_and_refuses_one_byte_less)
{
	struct kvl_layout L = vllm_layout();

	CHECK_RC(kvl_layout_check(&L, 20480), 0);
	CHECK_RC(kvl_layout_check(&L, 20479), -ERANGE);
	CHECK_RC(kvl_layout_check(&L, UINT64_MAX), 0);
	/* one more page than the region holds */
	L.num_pages = 11;
	CHECK_RC(kvl_layout_check(&L, 20480), -ERANGE);
	L = vllm_layout();
	/* a page stride that walks past the end */
	L.page_stride = 1025;
	CHECK_RC(kvl_layout_check(&L, 20480), -ERANGE);
	L = vllm_layout();
	L.token_stride = 65;
	CHECK_RC(kvl_layout_check(&L, 20480), -ERANGE);
	/* llama.cpp's transposed V: 64 tokens, 4x8 elements 64*2 bytes apart */
	struct kvl_layout V = { .layers = 1, .planes = 1, .heads = 4, .head_dim = 8,
				.elem_size = 2, .page_tokens = 64, .num_pages = 1,
				.token_stride = 2, .dim_stride = 128, .head_stride = 1024,
				.page_stride = -99999, .plane_stride = 12345 };
	CHECK_RC(kvl_layout_check(&V, 4096), 0);
	CHECK_RC(kvl_layout_check(&V, 4095), -ERANGE);
}

TEST(check_refuses_overlapping_rows)
{
	struct kvl_layout L = vllm_layout();

	L.head_stride = 14; /* 8 elements of 2 bytes need 16 */
	CHECK_RC(kvl_layout_check(&L, 1 << 20), -EINVAL);
	L = vllm_layout();
	L.dim_stride = 1; /* 2-byte elements 1 byte apart */
	CHECK_RC(kvl_layout_check(&L, 1 << 20), -EINVAL);
	L = vllm_layout();
	L.dim_stride = 0;
	CHECK_RC(kvl_layout_check(&L, 1 << 20), -EINVAL);
	L = vllm_layout();
	L.head_stride = L.dim_stride; /* heads on top of each other */
	CHECK_RC(kvl_layout_check(&L, 1 << 20), -EINVAL);
	L = vllm_layout();
	L.head_stride = 0;
	CHECK_RC(kvl_layout_check(&L, 1 << 20), -EINVAL);
	/* dims the outer axis: 8 dims 2 bytes apart overlap heads 8 bytes apart */
	L = vllm_layout();
	L.head_stride = 2;
	L.dim_stride = 6;
	CHECK_RC(kvl_layout_check(&L, 1 << 20), -EINVAL);
	/* ... and nest when dims are 8 bytes apart (head-interleaved rows) */
	L.dim_stride = 8;
	CHECK_RC(kvl_layout_check(&L, 1 << 20), 0);
	/* a single head or a single dim ignores its stride */
	L = vllm_layout();
	L.heads = 1;
	L.head_stride = 0;
	CHECK_RC(kvl_layout_check(&L, 1 << 20), 0);
	L = vllm_layout();
	L.head_dim = 1;
	L.dim_stride = -3;
	L.head_stride = 2;
	CHECK_RC(kvl_layout_check(&L, 1 << 20), 0);
}

TEST(check_refuses_bad_fields)
{
	struct kvl_layout L;
	static const uint32_t bad_es[] = { 0, 3, 5, 8, 16 };

	CHECK_RC(kvl_layout_check(NULL, 1 << 20), -EINVAL);
	for (size_t i = 0; i < sizeof(bad_es) / sizeof(bad_es[0]); i++) {
		/* strides roomy enough for 16-byte elements: only the size is wrong */
		L = vllm_layout();
		L.dim_stride = 16;
		L.head_stride = 128;
		L.token_stride = 512;
		L.page_stride = 8192;
		L.plane_stride = 81920;
		L.elem_size = 4;
		CHECK_RC(kvl_layout_check(&L, 1 << 20), 0);
		L.elem_size = bad_es[i];
		CHECK_RC(kvl_layout_check(&L, 1 << 20), -EINVAL);
	}
	L = vllm_layout();
	L.elem_size = 1;
	CHECK_RC(kvl_layout_check(&L, 1 << 20), 0);
	L.elem_size = 4;
	L.dim_stride = 4;
	L.head_stride = 32;
	L.token_stride = 128;
	CHECK_RC(kvl_layout_check(&L, 1 << 20), 0);

#define REFUSE(field, value)                                          \
	do {                                                          \
		L = vllm_layout();                                    \
		L.field = value;                                      \
		CHECK_RC(kvl_layout_check(&L, 1 << 20), -EINVAL);     \
	} while (0)
	REFUSE(layers, 0);
	REFUSE(layers, KVL_MAX_LAYERS + 1);
	REFUSE(planes, 0);
	REFUSE(planes, 3);
	REFUSE(heads, 0);
	REFUSE(head_dim, 0);
	REFUSE(page_tokens, 0);
	REFUSE(num_pages, 0);
#undef REFUSE
	L = vllm_layout();
	L.layers = KVL_MAX_LAYERS;
	CHECK_RC(kvl_layout_check(&L, 1 << 20), 0);
}

TEST(check_refuses_negative_and_overflowing_strides)
{
	struct kvl_layout L = vllm_layout();

	L.plane_stride = -10240; /* V before K: below the layer base */
	CHECK_RC(kvl_layout_check(&L, UINT64_MAX), -ERANGE);
	L = vllm_layout();
	L.token_stride = -64;
	CHECK_RC(kvl_layout_check(&L, UINT64_MAX), -ERANGE);
	L = vllm_layout();
	L.page_stride = INT64_MAX / 4;
	CHECK_RC(kvl_layout_check(&L, UINT64_MAX), -ERANGE);
	L = vllm_layout();
	L.page_stride = INT64_MIN;
	CHECK_RC(kvl_layout_check(&L, UINT64_MAX), -ERANGE);
	L = vllm_layout();
	L.num_pages = UINT64_MAX;
	CHECK_RC(kvl_layout_check(&L, UINT64_MAX), -ERANGE);
	L = vllm_layout();
	L.dim_stride = INT64_MAX; /* nests, but the row's span overflows */
	CHECK_RC(kvl_layout_check(&L, UINT64_MAX), -ERANGE);
	/* a row over 4 GiB */
	L = vllm_layout();
	L.heads = 1;
	L.head_dim = 1u << 31;
	L.elem_size = 2;
	L.token_stride = (int64_t)1 << 32;
	L.page_stride = (int64_t)1 << 36;
	L.plane_stride = (int64_t)1 << 40;
	CHECK_RC(kvl_layout_check(&L, UINT64_MAX), -ERANGE);
	L.elem_size = 1;
	CHECK_RC(kvl_layout_check(&L, UINT64_MAX), 0);
}

TEST_MAIN(vllm_gather_and_scatter_match_the_hand_layout,
	  vllm_block_starting_mid_page_spans_partial_pages,
	  pages_major_variant_matches_the_hand_layout, head_major_pages_match_the_hand_layout,
	  llama_cpp_k_single_page_matches_the_hand_layout,
	  llama_cpp_transposed_v_matches_the_hand_layout, mla_single_plane_single_head,
	  padded_slots_heads_and_dims_are_skipped, odd_sizes_every_combination,
	  batch_of_items_each_lands_in_its_block,
	  scatter_of_gather_round_trips_and_leaves_other_slots, the_checks_catch_a_wrong_byte,
	  out_of_range_page_in_a_later_item_fails_gather_before_any_copy,
	  out_of_range_page_fails_scatter_and_writes_nothing,
	  page_ids_beyond_the_block_are_not_checked, bad_arguments_are_refused,
	  block_bytes_counts_and_overflows_to_zero,
	  check_accepts_exact_regions_and_refuses_one_byte_less, check_refuses_overlapping_rows,
	  check_refuses_bad_fields, check_refuses_negative_and_overflowing_strides)
