/*
 * itest_gpu.c - GPU regions end to end against a real kvtierd running the
 * emulated GPU backend (gpu_backend = emulated: host regions stand in for the
 * engine's device memory, the daemon copies with the CPU reference kernels), so
 * the whole GPU_* protocol path runs without a GPU: registration and its checks,
 * GPU_PUT gathering pages into a block that a plain GET returns packed exactly as
 * computed here independently, GPU_GET scattering it into other pages byte for
 * byte, vLLM-like and llama.cpp-like (transposed V) layouts, unaligned first
 * tokens, every refusal, limits, a client killed mid-transfer, gpu_backend = off,
 * and the start-up log lines.
 */
#include <errno.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "harness.h"
#include "kvtier.h"
#include "test.h"

#define EMU "gpu_backend = emulated\n"

static kvt_key key_n(uint32_t ns, uint32_t n)
{
	kvt_key k;
	memset(&k, 0, sizeof(k));
	k.b[0] = 0x67;
	memcpy(k.b + 4, &ns, 4);
	memcpy(k.b + 8, &n, 4);
	return k;
}

/* ---- an engine cache in host regions, and the packing computed independently --- */

struct cache {
	kvt_kv_layout L;
	kvt_kv_layer layer[16];
	kvt_region *reg[16];
	uint8_t *base[16]; /* per layer: region base + offset */
	size_t nreg;
	uint32_t id;       /* GPU region id */
};

/* Byte offset of element (p, g, s, h, d) from its layer's base. */
static int64_t elem_off(const kvt_kv_layout *L, uint64_t p, uint64_t g, uint64_t s, uint64_t h,
			uint64_t d)
{
	return (int64_t)p * L->plane_stride + (int64_t)g * L->page_stride +
	       (int64_t)s * L->token_stride + (int64_t)h * L->head_stride +
	       (int64_t)d * L->dim_stride;
}

static size_t block_bytes(const kvt_kv_layout *L, uint32_t ntokens)
{
	return (size_t)L->layers * L->planes * ntokens * L->heads * L->head_dim * L->elem_size;
}

/* [layer][plane][token][head][dim] from the pages (pages[0] holds first_token). */
static void pack(const struct cache *c, const uint32_t *pages, uint32_t first_token,
		 uint32_t ntokens, uint8_t *out, bool unpack)
{
	const kvt_kv_layout *L = &c->L;
	uint32_t slot0 = first_token % L->page_tokens;
	for (uint32_t l = 0; l < L->layers; l++)
		for (uint32_t p = 0; p < L->planes; p++)
			for (uint32_t t = 0; t < ntokens; t++) {
				uint32_t pos = slot0 + t;
				uint32_t g = pages[pos / L->page_tokens], s = pos % L->page_tokens;
				for (uint32_t h = 0; h < L->heads; h++)
					for (uint32_t d = 0; d < L->head_dim; d++) {
						uint8_t *e = c->base[l] + elem_off(L, p, g, s, h, d);
						if (unpack)
							memcpy(e, out, L->elem_size);
						else
							memcpy(out, e, L->elem_size);
						out += L->elem_size;
					}
			}
}

/* vLLM: one allocation per layer, [2][num_pages][page_tokens][heads][head_dim]. */
static void vllm_layout(kvt_kv_layout *L, uint32_t layers, uint32_t heads, uint32_t head_dim,
			uint32_t page_tokens, uint64_t num_pages)
{
	memset(L, 0, sizeof(*L));
	L->layers = layers;
	L->planes = 2;
	L->heads = heads;
	L->head_dim = head_dim;
	L->elem_size = 2;
	L->page_tokens = page_tokens;
	L->num_pages = num_pages;
	L->dim_stride = 2;
	L->head_stride = (int64_t)head_dim * 2;
	L->token_stride = L->head_stride * heads;
	L->page_stride = L->token_stride * page_tokens;
	L->plane_stride = L->page_stride * (int64_t)num_pages;
	L->dtype = KVT_DTYPE_BF16;
	L->layout_id = 11;
}

static size_t layer_bytes(const kvt_kv_layout *L)
{
	return (size_t)L->plane_stride * L->planes;
}

/* One region per layer (vLLM), filled with a pattern, registered. */
static void cache_make(kvt_conn *conn, struct cache *c, const kvt_kv_layout *L, uint64_t seed,
		       bool one_region)
{
	memset(c, 0, sizeof(*c));
	c->L = *L;
	size_t lb = layer_bytes(L);
	c->nreg = one_region ? 1 : L->layers;
	for (size_t i = 0; i < c->nreg; i++) {
		size_t sz = one_region ? lb * L->layers + 4096 : lb;
		CHECK_RC(kvt_region_create(conn, sz, &c->reg[i]), 0);
		fill_pattern(kvt_region_base(c->reg[i]), sz, seed + i);
	}
	for (uint32_t l = 0; l < L->layers; l++) {
		c->layer[l].buffer = one_region ? 0 : l;
		c->layer[l].offset = one_region ? 4096 + (uint64_t)l * lb : 0;
		c->base[l] = (uint8_t *)kvt_region_base(c->reg[c->layer[l].buffer]) +
			     c->layer[l].offset;
	}
	c->L.layer = c->layer;
	CHECK_RC(kvt_gpu_region_register_emulated(conn, c->reg, c->nreg, &c->L, &c->id), 0);
	CHECK(c->id != 0);
}

static void cache_free(struct cache *c)
{
	for (size_t i = 0; i < c->nreg; i++)
		kvt_region_destroy(c->reg[i]);
}

/* GET a stored block through the normal host path and compare it with want. */
static void host_get_check(kvt_conn *conn, kvt_key key, const uint8_t *want, size_t len,
			   const kvt_block_desc *desc)
{
	kvt_region *r = NULL;
	CHECK_RC(kvt_region_create(conn, len, &r), 0);
	kvt_get_item g = { .key = key, .region = r, .offset = 0, .capacity = len };
	CHECK_RC(kvt_block_get(conn, &g, 1), 0);
	CHECK_EQ(g.length, len);
	CHECK_MSG(memcmp(kvt_region_base(r), want, len) == 0,
		  "the stored block is not the independently packed one");
	if (desc) {
		CHECK_EQ(g.desc.dtype, desc->dtype);
		CHECK_EQ(g.desc.layout, desc->layout);
		CHECK_EQ(g.desc.layers, desc->layers);
		CHECK_EQ(g.desc.tokens, desc->tokens);
	}
	kvt_region_destroy(r);
}

/* Put one block from src pages, get it into dst pages (of the same or another
 * cache), and check every byte of dst's memory. */
static void roundtrip(kvt_conn *conn, struct cache *src, struct cache *dst, kvt_key key,
		      uint32_t first, uint32_t ntok, const uint32_t *sp, const uint32_t *dp,
		      uint32_t npages)
{
	size_t blen = block_bytes(&src->L, ntok);
	uint8_t *want = malloc(blen);
	CHECK(want);
	pack(src, sp, first, ntok, want, false);

	kvt_gpu_item it = gpu_item(key, src->id, first, ntok, sp, npages);
	CHECK_RC(kvt_gpu_put(conn, &it, 1), 0);
	CHECK_RC(it.status, 0);
	kvt_block_desc desc = { .dtype = src->L.dtype, .layout = src->L.layout_id,
				.layers = (uint16_t)src->L.layers, .tokens = ntok };
	host_get_check(conn, key, want, blen, &desc);

	/* The expected destination: its memory with the block unpacked into dp. */
	size_t total = 0;
	for (size_t i = 0; i < dst->nreg; i++)
		total += kvt_region_size(dst->reg[i]);
	uint8_t *before = malloc(total), *expect = malloc(total);
	CHECK(before && expect);
	size_t o = 0;
	for (size_t i = 0; i < dst->nreg; i++) {
		memcpy(before + o, kvt_region_base(dst->reg[i]), kvt_region_size(dst->reg[i]));
		o += kvt_region_size(dst->reg[i]);
	}
	pack(dst, dp, first, ntok, want, true); /* into dst memory directly ... */
	o = 0;
	for (size_t i = 0; i < dst->nreg; i++) { /* ... kept as the expectation ... */
		memcpy(expect + o, kvt_region_base(dst->reg[i]), kvt_region_size(dst->reg[i]));
		memcpy(kvt_region_base(dst->reg[i]), before + o, kvt_region_size(dst->reg[i]));
		o += kvt_region_size(dst->reg[i]); /* ... and the memory put back */
	}
	it = gpu_item(key, dst->id, first, ntok, dp, npages);
	CHECK_RC(kvt_gpu_get(conn, &it, 1), 0);
	CHECK_RC(it.status, 0);
	CHECK_EQ(it.length, blen);
	CHECK_EQ(it.desc.tokens, ntok);
	o = 0;
	for (size_t i = 0; i < dst->nreg; i++) {
		CHECK_MSG(memcmp(kvt_region_base(dst->reg[i]), expect + o,
				 kvt_region_size(dst->reg[i])) == 0,
			  "GPU_GET: region %zu differs from the expected scatter", i);
		o += kvt_region_size(dst->reg[i]);
	}
	free(before);
	free(expect);
	free(want);
}

/* ---- tests ------------------------------------------------------------------------ */

TEST(emulated_vllm_put_get_roundtrip)
{
	struct kvtd d;
	kvtd_start(&d, EMU);
	CHECK(strstr(kvtd_log_text(&d), "GPU transfers: active: backend emulated (host memory), "
					"not HBM"));
	kvt_conn *conn = kvtd_connect(&d, 10000);
	kvt_kv_layout L;
	vllm_layout(&L, 3, 2, 8, 4, 16);
	struct cache a, b;
	cache_make(conn, &a, &L, 1, false);
	cache_make(conn, &b, &L, 2, true); /* the same layout, all layers in one region */
	CHECK(a.id != b.id);
	CHECK_EQ(kvtd_stat(conn, "gpu.regions"), 2);

	/* first_token 6: slot 2 of its page, 10 tokens over 3 pages */
	uint32_t sp[3] = { 7, 2, 11 }, dp[3] = { 0, 5, 15 };
	roundtrip(conn, &a, &b, key_n(1, 1), 6, 10, sp, dp, 3);
	/* aligned, exactly one page; and one token at the end of a page */
	uint32_t sp1[1] = { 9 }, dp1[1] = { 3 };
	roundtrip(conn, &a, &b, key_n(1, 2), 8, 4, sp1, dp1, 1);
	roundtrip(conn, &b, &a, key_n(1, 3), 3, 1, sp1, dp1, 1);
	size_t moved = block_bytes(&L, 10) + block_bytes(&L, 4) + block_bytes(&L, 1);
	CHECK_EQ(kvtd_stat(conn, "gpu.d2h_bytes"), moved);
	CHECK_EQ(kvtd_stat(conn, "gpu.h2d_bytes"), moved);
	CHECK_EQ(kvtd_stat(conn, "gpu.copies_inflight"), 0);
	CHECK_EQ(kvtd_stat(conn, "t0.active"), 0);
	char txt[256];
	kvtd_stat_text(conn, "gpu.backend", txt, sizeof(txt));
	CHECK_MSG(strstr(txt, "emulated"), "gpu.backend = %s", txt);
	kvtd_stat_text(conn, "t0.reason", txt, sizeof(txt));
	CHECK_MSG(strstr(txt, "gpu_pool_size = 0"), "t0.reason = %s", txt);

	/* A second put of the same key succeeds without copying (immutable). */
	kvt_gpu_item it = gpu_item(key_n(1, 1), a.id, 6, 10, sp, 3);
	CHECK_RC(kvt_gpu_put(conn, &it, 1), 0);
	CHECK_EQ(kvtd_stat(conn, "gpu.d2h_bytes"), moved);
	/* Several items in one request, sharing the page array. */
	kvt_gpu_item two[2] = { gpu_item(key_n(1, 10), a.id, 0, 4, sp, 1),
				gpu_item(key_n(1, 11), a.id, 4, 8, sp + 1, 2) };
	two[1].parent = key_n(1, 10);
	CHECK_RC(kvt_gpu_put(conn, two, 2), 0);
	kvt_gpu_item back[2] = { gpu_item(key_n(1, 10), b.id, 0, 4, dp, 1),
				 gpu_item(key_n(1, 11), b.id, 4, 8, dp + 1, 2) };
	CHECK_RC(kvt_gpu_get(conn, back, 2), 0);

	CHECK_RC(kvt_gpu_region_destroy(conn, a.id), 0);
	CHECK_RC(kvt_gpu_region_destroy(conn, b.id), 0);
	CHECK_EQ(kvtd_stat(conn, "gpu.regions"), 0);
	cache_free(&a);
	cache_free(&b);
	kvt_conn_close(conn);
	kvtd_stop_clean(&d);
}

/* llama.cpp: per layer K [n_ctx][heads*head_dim] and V transposed
 * [heads*head_dim][n_ctx], one page of n_ctx tokens; K and V are two GPU regions
 * over the same allocation, the layers at offsets. */
TEST(emulated_llamacpp_transposed_v)
{
	struct kvtd d;
	kvtd_start(&d, EMU);
	kvt_conn *conn = kvtd_connect(&d, 10000);
	const uint32_t layers = 4, heads = 2, hd = 8, nctx = 64, es = 2;
	size_t kbytes = (size_t)nctx * heads * hd * es;
	kvt_region *mem[2];
	CHECK_RC(kvt_region_create(conn, 2 * layers * kbytes, &mem[0]), 0);
	CHECK_RC(kvt_region_create(conn, 2 * layers * kbytes, &mem[1]), 0);
	fill_pattern(kvt_region_base(mem[0]), 2 * layers * kbytes, 77);
	fill_pattern(kvt_region_base(mem[1]), 2 * layers * kbytes, 78);

	struct cache k[2], v[2];
	for (int m = 0; m < 2; m++) {
		memset(&k[m], 0, sizeof(k[m]));
		memset(&v[m], 0, sizeof(v[m]));
		kvt_kv_layout *K = &k[m].L, *V = &v[m].L;
		K->layers = V->layers = layers;
		K->planes = V->planes = 1;
		K->heads = V->heads = heads;
		K->head_dim = V->head_dim = hd;
		K->elem_size = V->elem_size = es;
		K->page_tokens = V->page_tokens = nctx;
		K->num_pages = V->num_pages = 1;
		K->dtype = V->dtype = KVT_DTYPE_F16;
		K->layout_id = 1;
		V->layout_id = 2;
		K->dim_stride = es;
		K->head_stride = (int64_t)hd * es;
		K->token_stride = (int64_t)heads * hd * es;
		V->token_stride = es; /* transposed: tokens are contiguous */
		V->dim_stride = (int64_t)nctx * es;
		V->head_stride = (int64_t)hd * nctx * es;
		for (uint32_t l = 0; l < layers; l++) {
			k[m].layer[l] = (kvt_kv_layer){ 0, 2 * l * kbytes };
			v[m].layer[l] = (kvt_kv_layer){ 0, (2 * l + 1) * kbytes };
			k[m].base[l] = (uint8_t *)kvt_region_base(mem[m]) + 2 * l * kbytes;
			v[m].base[l] = (uint8_t *)kvt_region_base(mem[m]) + (2 * l + 1) * kbytes;
		}
		K->layer = k[m].layer;
		V->layer = v[m].layer;
		k[m].reg[0] = v[m].reg[0] = mem[m];
		k[m].nreg = v[m].nreg = 1;
		CHECK_RC(kvt_gpu_region_register_emulated(conn, &mem[m], 1, K, &k[m].id), 0);
		CHECK_RC(kvt_gpu_region_register_emulated(conn, &mem[m], 1, V, &v[m].id), 0);
	}
	uint32_t page0 = 0;
	/* tokens 13..45 of the context (not aligned to anything) */
	roundtrip(conn, &k[0], &k[1], key_n(2, 1), 13, 33, &page0, &page0, 1);
	roundtrip(conn, &v[0], &v[1], key_n(2, 2), 13, 33, &page0, &page0, 1);
	CHECK_EQ(kvtd_stat(conn, "gpu.regions"), 4);
	kvt_region_destroy(mem[0]); /* the GPU regions keep their memory mapped */
	kvt_region_destroy(mem[1]);
	kvt_conn_close(conn); /* and the connection closing releases them */
	conn = kvtd_connect(&d, 10000);
	uint64_t left = 1;
	for (int i = 0; i < 100 && (left = kvtd_stat(conn, "gpu.regions")) != 0; i++)
		test_sleep_ms(20);
	CHECK_EQ(left, 0);
	kvt_conn_close(conn);
	kvtd_stop_clean(&d);
}

TEST(layouts_refused)
{
	struct kvtd d;
	kvtd_start(&d, EMU);
	kvt_conn *conn = kvtd_connect(&d, 10000);
	kvt_kv_layout L;
	vllm_layout(&L, 2, 2, 8, 4, 16);
	kvt_kv_layer lay[2] = { { 0, 0 }, { 1, 0 } };
	L.layer = lay;
	kvt_region *reg[2];
	CHECK_RC(kvt_region_create(conn, layer_bytes(&L), &reg[0]), 0);
	CHECK_RC(kvt_region_create(conn, layer_bytes(&L), &reg[1]), 0);
	uint32_t id = 0;
	CHECK_RC(kvt_gpu_region_register_emulated(conn, reg, 2, &L, &id), 0);
	CHECK_RC(kvt_gpu_region_destroy(conn, id), 0);

	kvt_kv_layout bad = L;
	bad.head_stride = 8; /* heads overlap within a token row */
	CHECK_RC(kvt_gpu_region_register_emulated(conn, reg, 2, &bad, &id), KVT_EINVAL);
	bad = L;
	bad.num_pages = 17; /* one page more than the memory holds */
	CHECK_RC(kvt_gpu_region_register_emulated(conn, reg, 2, &bad, &id), KVT_ERANGE);
	bad = L;
	bad.plane_stride = -bad.plane_stride; /* reaches below the buffer */
	CHECK_RC(kvt_gpu_region_register_emulated(conn, reg, 2, &bad, &id), KVT_ERANGE);
	kvt_kv_layer off[2] = { { 0, 0 }, { 1, 2 } }; /* layer 1 runs 2 bytes past its end */
	bad = L;
	bad.layer = off;
	CHECK_RC(kvt_gpu_region_register_emulated(conn, reg, 2, &bad, &id), KVT_ERANGE);
	bad = L;
	bad.dtype = KVT_DTYPE_F32; /* 4 bytes, but elem_size is 2 */
	CHECK_RC(kvt_gpu_region_register_emulated(conn, reg, 2, &bad, &id), KVT_EINVAL);
	bad = L;
	bad.planes = 3;
	CHECK_RC(kvt_gpu_region_register_emulated(conn, reg, 2, &bad, &id), KVT_EINVAL);
	bad = L;
	bad.elem_size = 3;
	bad.dtype = 0;
	CHECK_RC(kvt_gpu_region_register_emulated(conn, reg, 2, &bad, &id), KVT_EINVAL);
	kvt_kv_layer nobuf[2] = { { 0, 0 }, { 2, 0 } }; /* buffer 2 of 2 */
	bad = L;
	bad.layer = nobuf;
	CHECK_RC(kvt_gpu_region_register_emulated(conn, reg, 2, &bad, &id), KVT_EINVAL);
	/* a host region of another connection is not one of this connection's */
	kvt_conn *other = kvtd_connect(&d, 10000);
	kvt_region *theirs = NULL;
	CHECK_RC(kvt_region_create(other, layer_bytes(&L), &theirs), 0);
	kvt_region *mix[2] = { reg[0], theirs };
	CHECK_RC(kvt_gpu_region_register_emulated(conn, mix, 2, &L, &id), KVT_EREGION);
	kvt_region_destroy(theirs);
	kvt_conn_close(other);
	/* CUDA IPC handles on an emulated daemon */
	kvt_gpu_buffer gb[2];
	memset(gb, 0x5a, sizeof(gb));
	gb[0].size = gb[1].size = layer_bytes(&L);
	uint8_t uuid[16] = { 1 };
	CHECK_RC(kvt_gpu_region_register(conn, gb, 2, &L, uuid, &id), KVT_EOPNOTSUPP);
	/* arguments */
	CHECK_RC(kvt_gpu_region_register_emulated(conn, reg, 0, &L, &id), KVT_EINVAL);
	CHECK_RC(kvt_gpu_region_register_emulated(conn, reg, 2, NULL, &id), KVT_EINVAL);
	CHECK_EQ(kvtd_stat(conn, "gpu.regions"), 0);
	/* the connection still works */
	CHECK_RC(kvt_gpu_region_register_emulated(conn, reg, 2, &L, &id), 0);
	CHECK_EQ(kvtd_stat(conn, "gpu.regions"), 1);
	kvt_region_destroy(reg[0]);
	kvt_region_destroy(reg[1]);
	kvt_conn_close(conn);
	kvtd_stop_clean(&d);
}

TEST(bad_items_write_nothing)
{
	struct kvtd d;
	kvtd_start(&d, EMU "max_block_size = 4KiB\n");
	kvt_conn *conn = kvtd_connect(&d, 10000);
	kvt_kv_layout L;
	vllm_layout(&L, 2, 2, 8, 4, 16);
	struct cache a;
	cache_make(conn, &a, &L, 5, false);
	uint8_t *snap0 = malloc(layer_bytes(&L)), *snap1 = malloc(layer_bytes(&L));
	CHECK(snap0 && snap1);
	memcpy(snap0, a.base[0], layer_bytes(&L));
	memcpy(snap1, a.base[1], layer_bytes(&L));

	uint32_t ok[2] = { 1, 2 }, badp[2] = { 1, 16 }; /* 16 = num_pages */
	uint32_t pg3[3] = { 1, 2, 3 };
	kvt_gpu_item it[6] = {
		gpu_item(key_n(3, 1), a.id, 2, 4, badp, 2),  /* page id out of range */
		gpu_item(key_n(3, 2), a.id, 2, 4, pg3, 3),   /* npages 3, the tokens need 2 */
		gpu_item(key_n(3, 3), a.id, 0, 0, ok, 0),    /* no tokens */
		gpu_item(key_n(3, 4), 99, 0, 4, ok, 1),      /* unknown region */
		gpu_item(key_n(3, 5), a.id, 2, 7, pg3, 2),   /* too few pages (needs 3) */
		gpu_item(key_n(3, 6), a.id, 0, 8, ok, 2),    /* 2 KiB: fine */
	};
	CHECK_RC(kvt_gpu_put(conn, it, 6), KVT_EPARTIAL);
	CHECK_RC(it[0].status, KVT_ERANGE);
	CHECK_RC(it[1].status, KVT_EINVAL);
	CHECK_RC(it[2].status, KVT_EINVAL);
	CHECK_RC(it[3].status, KVT_EREGION);
	CHECK_RC(it[4].status, KVT_EINVAL);
	CHECK_RC(it[5].status, 0);
	kvt_key keys[5] = { key_n(3, 1), key_n(3, 2), key_n(3, 3), key_n(3, 4), key_n(3, 5) };
	for (int i = 0; i < 5; i++) {
		size_t found = 9;
		CHECK_RC(kvt_block_lookup(conn, &keys[i], 1, &found, NULL), 0);
		CHECK_EQ(found, 0);
	}
	/* zero key; a block over max_block_size (33 tokens of 128 bytes > 4 KiB) */
	uint32_t pg9[9] = { 1, 2, 3, 4, 5, 6, 7, 8, 9 };
	kvt_gpu_item z[2] = { gpu_item(key_n(3, 7), a.id, 0, 4, ok, 1),
			      gpu_item(key_n(3, 8), a.id, 0, 33, pg9, 9) };
	memset(&z[0].key, 0, sizeof(z[0].key));
	CHECK_RC(kvt_gpu_put(conn, z, 2), KVT_EPARTIAL);
	CHECK_RC(z[0].status, KVT_EINVAL);
	CHECK_RC(z[1].status, KVT_EFBIG);

	/* GPU_GET: a bad page id writes nothing, not even the good pages */
	kvt_gpu_item g[4] = {
		gpu_item(key_n(3, 6), a.id, 0, 8, badp, 2),
		gpu_item(key_n(3, 6), a.id, 0, 4, ok, 1),    /* block is 8 tokens, not 4 */
		gpu_item(key_n(3, 99), a.id, 0, 4, ok, 1),   /* miss */
		gpu_item(key_n(3, 6), 42, 0, 8, ok, 2),      /* unknown region */
	};
	CHECK_RC(kvt_gpu_get(conn, g, 4), KVT_EPARTIAL);
	CHECK_RC(g[0].status, KVT_ERANGE);
	CHECK_RC(g[1].status, KVT_EINVAL);
	CHECK_EQ(g[1].length, block_bytes(&L, 8));
	CHECK_RC(g[2].status, KVT_ENOENT);
	CHECK_RC(g[3].status, KVT_EREGION);
	CHECK_MSG(memcmp(snap0, a.base[0], layer_bytes(&L)) == 0 &&
			  memcmp(snap1, a.base[1], layer_bytes(&L)) == 0,
		  "a refused GPU_GET wrote into the pages");
	/* a GPU_GET never needs a parent: the library sends none */
	free(snap0);
	free(snap1);
	cache_free(&a);
	kvt_conn_close(conn);
	kvtd_stop_clean(&d);
}

TEST(unknown_and_destroyed_regions)
{
	struct kvtd d;
	kvtd_start(&d, EMU);
	kvt_conn *conn = kvtd_connect(&d, 10000);
	kvt_kv_layout L;
	vllm_layout(&L, 1, 1, 4, 4, 4);
	struct cache a;
	cache_make(conn, &a, &L, 9, false);
	uint32_t pg = 1;
	kvt_gpu_item it = gpu_item(key_n(4, 1), a.id, 0, 4, &pg, 1);
	CHECK_RC(kvt_gpu_put(conn, &it, 1), 0);
	CHECK_RC(kvt_gpu_region_destroy(conn, a.id + 1), KVT_EREGION);
	CHECK_RC(kvt_gpu_region_destroy(conn, 0), KVT_EREGION);
	CHECK_RC(kvt_gpu_region_destroy(conn, a.id), 0);
	CHECK_RC(kvt_gpu_region_destroy(conn, a.id), KVT_EREGION);
	it = gpu_item(key_n(4, 1), a.id, 0, 4, &pg, 1);
	CHECK_RC(kvt_gpu_get(conn, &it, 1), KVT_EPARTIAL);
	CHECK_RC(it.status, KVT_EREGION);
	it = gpu_item(key_n(4, 2), a.id, 0, 4, &pg, 1);
	CHECK_RC(kvt_gpu_put(conn, &it, 1), KVT_EPARTIAL);
	CHECK_RC(it.status, KVT_EREGION);
	/* ids are never reused on a connection */
	uint32_t id2 = 0;
	CHECK_RC(kvt_gpu_region_register_emulated(conn, a.reg, 1, &a.L, &id2), 0);
	CHECK(id2 > a.id);
	/* another connection cannot name it */
	kvt_conn *other = kvtd_connect(&d, 10000);
	it = gpu_item(key_n(4, 1), id2, 0, 4, &pg, 1);
	CHECK_RC(kvt_gpu_get(other, &it, 1), KVT_EPARTIAL);
	CHECK_RC(it.status, KVT_EREGION);
	CHECK_RC(kvt_gpu_region_destroy(other, id2), KVT_EREGION);
	kvt_conn_close(other);
	cache_free(&a);
	kvt_conn_close(conn);
	kvtd_stop_clean(&d);
}

TEST(limits)
{
	struct kvtd d;
	kvtd_start(&d, EMU "gpu_max_regions = 2\ngpu_max_pages = 8\nmax_batch = 4\n");
	kvt_conn *conn = kvtd_connect(&d, 10000);
	kvt_kv_layout L;
	vllm_layout(&L, 1, 1, 4, 1, 16);
	struct cache a;
	cache_make(conn, &a, &L, 3, false);
	uint32_t id = 0;
	CHECK_RC(kvt_gpu_region_register_emulated(conn, a.reg, 1, &a.L, &id), 0);
	CHECK_RC(kvt_gpu_region_register_emulated(conn, a.reg, 1, &a.L, &id), KVT_EMFILE);
	CHECK_RC(kvt_gpu_region_destroy(conn, id), 0);
	CHECK_RC(kvt_gpu_region_register_emulated(conn, a.reg, 1, &a.L, &id), 0);
	/* page ids: 8 fine, 9 refused as a whole */
	uint32_t pg[9] = { 0, 1, 2, 3, 4, 5, 6, 7, 8 };
	kvt_gpu_item it = gpu_item(key_n(5, 1), a.id, 0, 8, pg, 8);
	CHECK_RC(kvt_gpu_put(conn, &it, 1), 0);
	it = gpu_item(key_n(5, 2), a.id, 0, 9, pg, 9);
	CHECK_RC(kvt_gpu_put(conn, &it, 1), KVT_E2BIG);
	CHECK_RC(it.status, KVT_E2BIG);
	/* items: max_batch */
	kvt_gpu_item five[5];
	for (int i = 0; i < 5; i++)
		five[i] = gpu_item(key_n(5, 10 + (uint32_t)i), a.id, 0, 1, pg, 1);
	CHECK_RC(kvt_gpu_put(conn, five, 5), KVT_E2BIG);
	CHECK_RC(kvt_gpu_put(conn, five, 4), 0);
	cache_free(&a);
	kvt_conn_close(conn);
	kvtd_stop_clean(&d);
}

/* A client SIGKILLed with GPU regions registered and transfers running: its
 * regions go, nothing stays in flight, and the daemon serves the next client. */
TEST(killed_client_releases_gpu_regions)
{
	struct kvtd d;
	kvtd_start(&d, EMU);
	pid_t pid = fork();
	CHECK(pid >= 0);
	if (pid == 0) {
		kvt_conn *c = NULL;
		if (kvt_conn_open(d.sock, &c))
			_exit(3);
		kvt_kv_layout L;
		vllm_layout(&L, 8, 8, 64, 16, 32); /* 16 KiB per token, 2 MiB per layer */
		struct cache a;
		cache_make(c, &a, &L, 4, true);
		uint32_t id2;
		kvt_gpu_region_register_emulated(c, a.reg, 1, &a.L, &id2);
		uint32_t pages[4] = { 1, 2, 3, 4 };
		for (uint32_t n = 0;; n++) {
			kvt_gpu_item it[4];
			for (int i = 0; i < 4; i++)
				it[i] = gpu_item(key_n(6, n * 4 + (uint32_t)i), i % 2 ? id2 : a.id, 0,
					      64, pages, 4);
			kvt_gpu_put(c, it, 4);
			kvt_gpu_get(c, it, 4);
		}
	}
	test_sleep_ms(300);
	kill(pid, SIGKILL);
	int st;
	CHECK(waitpid(pid, &st, 0) == pid);
	CHECK(WIFSIGNALED(st));
	kvt_conn *conn = kvtd_connect(&d, 10000);
	uint64_t regions = 1, inflight = 1;
	for (int i = 0; i < 200 && (regions || inflight); i++) {
		regions = kvtd_stat(conn, "gpu.regions");
		inflight = kvtd_stat(conn, "gpu.copies_inflight");
		if (regions || inflight)
			test_sleep_ms(20);
	}
	CHECK_EQ(regions, 0);
	CHECK_EQ(inflight, 0);
	CHECK(kvtd_stat(conn, "gpu.d2h_bytes") > 0); /* the child did transfer */
	/* and the daemon goes on serving */
	kvt_kv_layout L;
	vllm_layout(&L, 1, 2, 8, 4, 4);
	struct cache a, b;
	cache_make(conn, &a, &L, 7, false);
	cache_make(conn, &b, &L, 8, false);
	uint32_t sp[2] = { 3, 0 }, dp[2] = { 1, 2 };
	roundtrip(conn, &a, &b, key_n(6, 1u << 30), 1, 6, sp, dp, 2);
	cache_free(&a);
	cache_free(&b);
	kvt_conn_close(conn);
	kvtd_stop_clean(&d);
}

TEST(backend_off_is_a_clear_error)
{
	struct kvtd d;
	kvtd_start(&d, "gpu_backend = off\n");
	CHECK(strstr(kvtd_log_text(&d),
		     "GPU transfers: off: off in the configuration (gpu_backend = off)"));
	kvt_conn *conn = kvtd_connect(&d, 10000);
	kvt_kv_layout L;
	vllm_layout(&L, 1, 1, 4, 4, 4);
	kvt_kv_layer lay = { 0, 0 };
	L.layer = &lay;
	kvt_region *r = NULL;
	CHECK_RC(kvt_region_create(conn, layer_bytes(&L), &r), 0);
	uint32_t id = 0;
	CHECK_RC(kvt_gpu_region_register_emulated(conn, &r, 1, &L, &id), KVT_ENOGPU);
	kvt_gpu_buffer gb = { .size = layer_bytes(&L) };
	uint8_t uuid[16] = { 0 };
	CHECK_RC(kvt_gpu_region_register(conn, &gb, 1, &L, uuid, &id), KVT_ENOGPU);
	uint32_t pg = 0;
	kvt_gpu_item it = gpu_item(key_n(7, 1), 1, 0, 4, &pg, 1);
	CHECK_RC(kvt_gpu_put(conn, &it, 1), KVT_ENOGPU);
	CHECK_RC(it.status, KVT_ENOGPU);
	CHECK_RC(kvt_gpu_get(conn, &it, 1), KVT_ENOGPU);
	CHECK_RC(kvt_gpu_region_destroy(conn, 1), KVT_ENOGPU);
	CHECK(strstr(kvt_strerror(KVT_ENOGPU), "GPU"));
	CHECK(strcmp(kvt_errname(KVT_ENOGPU), "ENOGPU") == 0);
	CHECK_EQ(kvtd_stat(conn, "gpu.regions"), 0);
	CHECK_EQ(kvtd_stat(conn, "t0.active"), 0);
	char txt[256];
	kvtd_stat_text(conn, "gpu.backend", txt, sizeof(txt));
	CHECK_MSG(strcmp(txt, "off") == 0, "gpu.backend = %s", txt);
	CHECK_RC(kvt_ping(conn), 0);
	kvt_region_destroy(r);
	kvt_conn_close(conn);
	kvtd_stop_clean(&d);

	/* The default (auto) on a machine without a usable device says why. */
	kvtd_start(&d, NULL);
	const char *log = kvtd_log_text(&d);
	CHECK_MSG(strstr(log, "GPU transfers: off: no device: ") ||
			  strstr(log, "GPU transfers: off: no CUDA in this build") ||
			  strstr(log, "GPU transfers: active: backend cuda"),
		  "no GPU start-up line in:\n%s", log);
	CHECK(!strstr(log, "emulated")); /* never the default */
	kvtd_stop_clean(&d);
}

TEST_MAIN(emulated_vllm_put_get_roundtrip, emulated_llamacpp_transposed_v, layouts_refused,
	  bad_items_write_nothing, unknown_and_destroyed_regions, limits,
	  killed_client_releases_gpu_regions, backend_off_is_a_clear_error)
