/*
 * itest_t0.c - the GPU tier (T0, gpu_pool_size) through a real kvtierd on the
 * emulated GPU backend, whose pool is host memory: blocks GPU_GET reads a second
 * time are promoted and then served from the pool (t0.hits, gpu.d2d_bytes,
 * LOOKUP tier 0) byte for byte; a pool smaller than the hot set evicts by the
 * policy and what leaves T0 is still read from the host tier; under host-tier
 * pressure with the NVMe tier on, every block stays readable and identical
 * through all three tiers and T0 never holds a block the host tier dropped;
 * DELETE removes a block from every tier (a pinned one stays in every tier);
 * gpu_pool_size without a GPU backend leaves T0 off with the reason; and the
 * emulated pool is never reported (STATS, log, memstat) as HBM.
 */
#include <errno.h>
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

#define KiB (1024ull)
#define MiB (1024ull * 1024)
#define EMU "gpu_backend = emulated\n"

static kvt_key key_n(uint32_t n)
{
	kvt_key k;
	memset(&k, 0, sizeof(k));
	k.b[0] = 0x70;
	memcpy(k.b + 8, &n, 4);
	return k;
}

/* true if text calls something HBM other than as "not HBM". */
static bool claims_hbm(const char *text)
{
	for (const char *p = strstr(text, "HBM"); p; p = strstr(p + 3, "HBM"))
		if (p - text < 4 || strncmp(p - 4, "not ", 4) != 0)
			return true;
	return false;
}

static uint64_t wait_stat(kvt_conn *c, const char *name, uint64_t want)
{
	uint64_t v = 0;
	for (int i = 0; i < 500 && (v = kvtd_stat(c, name)) < want; i++)
		test_sleep_ms(10);
	return v;
}

/* Wait until no promotion copy is running, so counts and tiers hold still. */
static void settle(kvt_conn *c)
{
	for (int i = 0; i < 500 && kvtd_stat(c, "t0.promotions_inflight") > 0; i++)
		test_sleep_ms(10);
	CHECK_EQ(kvtd_stat(c, "t0.promotions_inflight"), 0);
}

static int lookup_tier(kvt_conn *c, kvt_key k)
{
	size_t found = 0;
	uint8_t tier = 99;
	CHECK_RC(kvt_block_lookup(c, &k, 1, &found, &tier), 0);
	return found ? tier : -1;
}

/* ---- an engine cache in host regions (vLLM-like), one region per layer -------- */

#define LAYERS 2
#define HEADS 2
#define HDIM 64
#define PAGE_TOK 16
#define NPAGES 64
#define TOKEN_BYTES (HEADS * HDIM * 2)               /* one token row, one plane */
#define BLOCK_BYTES(nt) ((size_t)LAYERS * 2 * (nt) * TOKEN_BYTES)

struct cache {
	kvt_kv_layout L;
	kvt_kv_layer layer[LAYERS];
	kvt_region *reg[LAYERS];
	uint8_t *base[LAYERS];
	uint32_t id;
};

static size_t layer_bytes(void)
{
	return (size_t)2 * NPAGES * PAGE_TOK * TOKEN_BYTES;
}

static void cache_make(kvt_conn *conn, struct cache *c, uint64_t seed)
{
	memset(c, 0, sizeof(*c));
	kvt_kv_layout *L = &c->L;
	L->layers = LAYERS;
	L->planes = 2;
	L->heads = HEADS;
	L->head_dim = HDIM;
	L->elem_size = 2;
	L->page_tokens = PAGE_TOK;
	L->num_pages = NPAGES;
	L->dim_stride = 2;
	L->head_stride = HDIM * 2;
	L->token_stride = TOKEN_BYTES;
	L->page_stride = (int64_t)TOKEN_BYTES * PAGE_TOK;
	L->plane_stride = L->page_stride * NPAGES;
	L->dtype = KVT_DTYPE_BF16;
	L->layout_id = 7;
	for (uint32_t l = 0; l < LAYERS; l++) {
		CHECK_RC(kvt_region_create(conn, layer_bytes(), &c->reg[l]), 0);
		c->base[l] = kvt_region_base(c->reg[l]);
		fill_pattern(c->base[l], layer_bytes(), seed + l);
		c->layer[l].buffer = l;
		c->layer[l].offset = 0;
	}
	L->layer = c->layer;
	CHECK_RC(kvt_gpu_region_register_emulated(conn, c->reg, LAYERS, L, &c->id), 0);
}

static void cache_free(struct cache *c)
{
	for (uint32_t l = 0; l < LAYERS; l++)
		kvt_region_destroy(c->reg[l]);
}

/* Pack (or unpack into the pages) a block of ntok tokens at page-aligned first
 * token 0, pages[0..]: [layer][plane][token][head][dim]. */
static void pack(struct cache *c, const uint32_t *pages, uint32_t ntok, uint8_t *blk, bool unpack)
{
	for (uint32_t l = 0; l < LAYERS; l++)
		for (uint32_t p = 0; p < 2; p++)
			for (uint32_t t = 0; t < ntok; t++) {
				uint8_t *row = c->base[l] + (size_t)p * c->L.plane_stride +
					       (size_t)pages[t / PAGE_TOK] * c->L.page_stride +
					       (size_t)(t % PAGE_TOK) * TOKEN_BYTES;
				if (unpack)
					memcpy(row, blk, TOKEN_BYTES);
				else
					memcpy(blk, row, TOKEN_BYTES);
				blk += TOKEN_BYTES;
			}
}

/* An item from token 0: as many pages as ntok tokens fill. */
static kvt_gpu_item gitem(kvt_key key, uint32_t region, uint32_t ntok, const uint32_t *pages)
{
	return gpu_item(key, region, 0, ntok, pages, (ntok + PAGE_TOK - 1) / PAGE_TOK);
}

/* Host PUT of a block of ntok tokens with bytes seeded by n (kept in want). */
static void put_block(kvt_conn *c, kvt_region *r, uint32_t n, uint32_t ntok, uint8_t *want)
{
	size_t len = BLOCK_BYTES(ntok);
	fill_pattern(kvt_region_base(r), len, 1000 + n);
	memcpy(want, kvt_region_base(r), len);
	kvt_put_item it;
	memset(&it, 0, sizeof(it));
	it.key = key_n(n);
	it.region = r;
	it.offset = 0;
	it.length = len;
	it.desc.dtype = KVT_DTYPE_BF16;
	it.desc.layout = 7;
	it.desc.layers = LAYERS;
	it.desc.tokens = ntok;
	CHECK_RC(kvt_block_put(c, &it, 1), 0);
}

/* GPU_GET block n into dst's pages and check that exactly want landed there,
 * and nothing else of dst's memory changed. */
static void gpu_get_check(kvt_conn *c, struct cache *dst, uint32_t n, uint32_t ntok,
			  const uint8_t *want)
{
	static const uint32_t pages[16] = { 3, 9, 1, 60, 17, 33, 2, 40, 5, 6, 7, 8, 50, 51, 52, 53 };
	uint8_t *expect[LAYERS];
	for (uint32_t l = 0; l < LAYERS; l++) {
		expect[l] = malloc(layer_bytes());
		CHECK(expect[l]);
		memcpy(expect[l], dst->base[l], layer_bytes());
	}
	/* the expectation: unpack into a copy (swap the bases for the call) */
	uint8_t *saved[LAYERS];
	for (uint32_t l = 0; l < LAYERS; l++) {
		saved[l] = dst->base[l];
		dst->base[l] = expect[l];
	}
	pack(dst, pages, ntok, (uint8_t *)want, true);
	for (uint32_t l = 0; l < LAYERS; l++)
		dst->base[l] = saved[l];
	kvt_gpu_item it = gitem(key_n(n), dst->id, ntok, pages);
	int rc = kvt_gpu_get(c, &it, 1);
	CHECK_MSG(rc == 0 && it.status == 0, "GPU_GET of block %u: %s / %s", n,
		  kvt_errname(rc), kvt_errname(it.status));
	CHECK_EQ(it.length, BLOCK_BYTES(ntok));
	for (uint32_t l = 0; l < LAYERS; l++) {
		CHECK_MSG(memcmp(expect[l], dst->base[l], layer_bytes()) == 0,
			  "GPU_GET of block %u: layer %u differs from the expected scatter", n, l);
		free(expect[l]);
	}
}

/* ---- tests ------------------------------------------------------------------------ */

/* Read once: stays in the host tier. Read twice: promoted. Read again: from T0,
 * byte for byte. GPU_PUT and plain GET never fill T0. */
TEST(second_read_promotes_then_served_from_t0)
{
	struct kvtd d;
	kvtd_start(&d, EMU "gpu_pool_size = 4MiB\n");
	const char *log = kvtd_log_text(&d);
	CHECK_MSG(strstr(log, "GPU tier (T0): active: 4 MiB pool in emulated (host memory), not HBM"),
		  "no T0 start-up line in:\n%s", log);
	CHECK(!claims_hbm(strstr(log, "GPU transfers: active")));
	kvt_conn *c = kvtd_connect(&d, 10000);
	CHECK_EQ(kvtd_stat(c, "t0.active"), 1);
	CHECK_EQ(kvtd_stat(c, "t0.capacity_bytes"), 4 * MiB);
	char txt[512];
	kvtd_stat_text(c, "t0.memory", txt, sizeof(txt));
	CHECK_MSG(strcmp(txt, "emulated (host memory), not HBM") == 0, "t0.memory = %s", txt);
	kvtd_stat_text(c, "t0.reason", txt, sizeof(txt));
	CHECK_MSG(strstr(txt, "emulated") && !claims_hbm(txt), "t0.reason = %s", txt);

	struct cache a, b;
	cache_make(c, &a, 1);
	cache_make(c, &b, 2);
	/* three blocks of 64 tokens (64 KiB) gathered by GPU_PUT */
	uint32_t sp[3][4] = { { 0, 1, 2, 3 }, { 10, 11, 12, 13 }, { 20, 21, 22, 23 } };
	uint8_t *want[3];
	for (uint32_t i = 0; i < 3; i++) {
		want[i] = malloc(BLOCK_BYTES(64));
		CHECK(want[i]);
		pack(&a, sp[i], 64, want[i], false);
		kvt_gpu_item it = gitem(key_n(i), a.id, 64, sp[i]);
		CHECK_RC(kvt_gpu_put(c, &it, 1), 0);
	}
	CHECK_EQ(kvtd_stat(c, "t0.blocks"), 0);

	gpu_get_check(c, &b, 0, 64, want[0]);
	test_sleep_ms(50);
	CHECK_EQ(kvtd_stat(c, "t0.promotions"), 0);
	CHECK_EQ(lookup_tier(c, key_n(0)), KVT_TIER_HOST);
	gpu_get_check(c, &b, 0, 64, want[0]); /* the second read promotes */
	CHECK_EQ(wait_stat(c, "t0.promotions", 1), 1);
	CHECK_EQ(kvtd_stat(c, "t0.blocks"), 1);
	CHECK_EQ(kvtd_stat(c, "t0.used_bytes"), 64 * KiB);
	CHECK_EQ(lookup_tier(c, key_n(0)), KVT_TIER_GPU);
	CHECK_EQ(kvtd_stat(c, "t0.hits"), 0);
	CHECK_EQ(kvtd_stat(c, "gpu.d2d_bytes"), 0);
	uint64_t h2d = kvtd_stat(c, "gpu.h2d_bytes");
	for (int r = 1; r <= 3; r++) {
		gpu_get_check(c, &b, 0, 64, want[0]);
		CHECK_EQ(kvtd_stat(c, "t0.hits"), (uint64_t)r);
		CHECK_EQ(kvtd_stat(c, "gpu.d2d_bytes"), (uint64_t)r * BLOCK_BYTES(64));
	}
	CHECK_EQ(kvtd_stat(c, "gpu.h2d_bytes"), h2d); /* none of those came from the host tier */
	CHECK_EQ(kvtd_stat(c, "t0.promotions"), 1);
	/* the host tier's copy is still there: a plain GET returns the same bytes */
	kvt_region *r = NULL;
	CHECK_RC(kvt_region_create(c, BLOCK_BYTES(64), &r), 0);
	kvt_get_item g = { .key = key_n(0), .region = r, .offset = 0, .capacity = BLOCK_BYTES(64) };
	CHECK_RC(kvt_block_get(c, &g, 1), 0);
	CHECK(memcmp(kvt_region_base(r), want[0], BLOCK_BYTES(64)) == 0);
	/* plain GETs never promote; a second GPU_PUT of a stored key neither */
	g.key = key_n(1);
	CHECK_RC(kvt_block_get(c, &g, 1), 0);
	CHECK_RC(kvt_block_get(c, &g, 1), 0);
	CHECK_RC(kvt_block_get(c, &g, 1), 0);
	kvt_gpu_item again = gitem(key_n(1), a.id, 64, sp[1]);
	CHECK_RC(kvt_gpu_put(c, &again, 1), 0);
	test_sleep_ms(50);
	CHECK_EQ(kvtd_stat(c, "t0.blocks"), 1);
	CHECK_EQ(lookup_tier(c, key_n(1)), KVT_TIER_HOST);
	/* two GPU_GETs of block 2 in one request: promoted once */
	static const uint32_t dp[4] = { 30, 31, 32, 33 };
	kvt_gpu_item two[2] = { gitem(key_n(2), b.id, 64, dp), gitem(key_n(2), b.id, 64, dp) };
	CHECK_RC(kvt_gpu_get(c, two, 2), 0);
	CHECK_EQ(wait_stat(c, "t0.promotions", 2), 2);
	CHECK_EQ(kvtd_stat(c, "t0.blocks"), 2);
	gpu_get_check(c, &b, 2, 64, want[2]);
	CHECK_EQ(kvtd_stat(c, "t0.hits"), 4);
	/* LOOKUP of a chain across tiers: 0 (T0), 1 (host) */
	kvt_key ks[3] = { key_n(0), key_n(1), key_n(2) };
	size_t found = 0;
	uint8_t tiers[3];
	CHECK_RC(kvt_block_lookup(c, ks, 3, &found, tiers), 0);
	CHECK_EQ(found, 3);
	CHECK_EQ(tiers[0], KVT_TIER_GPU);
	CHECK_EQ(tiers[1], KVT_TIER_HOST);
	CHECK_EQ(tiers[2], KVT_TIER_GPU);

	/* memstat names the pool for what it is (the sanitizer build makes only the
	 * daemon: there the rest of the case still runs) */
	if (access(kvtd_bin("memstat"), X_OK) == 0) {
		char cmd[1024];
		snprintf(cmd, sizeof(cmd), "%s -s %s 2>&1", kvtd_bin("memstat"), d.sock);
		FILE *p = popen(cmd, "r");
		CHECK(p);
		static char out[16384];
		size_t n = fread(out, 1, sizeof(out) - 1, p);
		out[n] = 0;
		pclose(p);
		CHECK_MSG(strstr(out, "T0 GPU pool   emulated (host memory), not HBM"),
			  "memstat:\n%s", out);
		CHECK_MSG(strstr(out, "T0 hits 4"), "memstat:\n%s", out);
		CHECK_MSG(!claims_hbm(out), "memstat calls something HBM:\n%s", out);
	} else {
		test_log("no %s in this build: memstat's T0 lines not checked", kvtd_bin("memstat"));
	}

	kvt_region_destroy(r);
	for (int i = 0; i < 3; i++)
		free(want[i]);
	cache_free(&a);
	cache_free(&b);
	kvt_conn_close(c);
	kvtd_stop_clean(&d);
}

/* A pool of two blocks under a hot set of four: the policy (2Q) evicts the block
 * read least (the one not hit in T0), and every block leaving T0 stays readable,
 * from the host tier, byte for byte; a block read before comes back into T0 at
 * its next read. */
TEST(small_pool_evicts_by_policy)
{
	struct kvtd d;
	kvtd_start(&d, EMU "gpu_pool_size = 128KiB\n");
	kvt_conn *c = kvtd_connect(&d, 10000);
	CHECK_EQ(kvtd_stat(c, "t0.capacity_bytes"), 128 * KiB);
	struct cache b;
	cache_make(c, &b, 5);
	kvt_region *src = NULL;
	CHECK_RC(kvt_region_create(c, BLOCK_BYTES(64), &src), 0);
	uint8_t *want[4];
	for (uint32_t i = 0; i < 4; i++) {
		want[i] = malloc(BLOCK_BYTES(64));
		CHECK(want[i]);
		put_block(c, src, i, 64, want[i]);
	}
	/* promote 0 and 1: the pool is full */
	for (uint32_t i = 0; i < 2; i++) {
		gpu_get_check(c, &b, i, 64, want[i]);
		gpu_get_check(c, &b, i, 64, want[i]);
		CHECK_EQ(wait_stat(c, "t0.promotions", i + 1), i + 1);
	}
	CHECK_EQ(kvtd_stat(c, "t0.used_bytes"), 128 * KiB);
	/* 0 is hot in T0; 1 is not read again */
	gpu_get_check(c, &b, 0, 64, want[0]);
	gpu_get_check(c, &b, 0, 64, want[0]);
	CHECK_EQ(kvtd_stat(c, "t0.hits"), 2);
	/* promoting 2 evicts 1 */
	gpu_get_check(c, &b, 2, 64, want[2]);
	gpu_get_check(c, &b, 2, 64, want[2]);
	CHECK_EQ(wait_stat(c, "t0.promotions", 3), 3);
	CHECK_EQ(kvtd_stat(c, "t0.evictions"), 1);
	CHECK_EQ(kvtd_stat(c, "t0.blocks"), 2);
	CHECK_EQ(lookup_tier(c, key_n(0)), KVT_TIER_GPU);
	CHECK_EQ(lookup_tier(c, key_n(1)), KVT_TIER_HOST);
	CHECK_EQ(lookup_tier(c, key_n(2)), KVT_TIER_GPU);
	/* what left T0 is read from the host tier, unchanged; read there again (it
	 * was read before), it comes back into T0 at the cost of 2, never hit in T0,
	 * while 0, hit there, stays */
	uint64_t hits = kvtd_stat(c, "t0.hits");
	gpu_get_check(c, &b, 1, 64, want[1]);
	CHECK_EQ(kvtd_stat(c, "t0.hits"), hits);
	CHECK_EQ(wait_stat(c, "t0.promotions", 4), 4);
	CHECK_EQ(kvtd_stat(c, "t0.evictions"), 2);
	CHECK_EQ(lookup_tier(c, key_n(0)), KVT_TIER_GPU);
	CHECK_EQ(lookup_tier(c, key_n(1)), KVT_TIER_GPU);
	CHECK_EQ(lookup_tier(c, key_n(2)), KVT_TIER_HOST);
	/* 3, read once, is not promoted */
	gpu_get_check(c, &b, 3, 64, want[3]);
	test_sleep_ms(50);
	CHECK_EQ(kvtd_stat(c, "t0.promotions"), 4);
	CHECK_EQ(lookup_tier(c, key_n(3)), KVT_TIER_HOST);
	for (uint32_t i = 0; i < 4; i++)
		gpu_get_check(c, &b, i, 64, want[i]);
	/* Those reads may have started promotions (each evicts one block, then
	 * inserts one): let them finish. */
	settle(c);
	CHECK_EQ(kvtd_stat(c, "t0.blocks"), 2);
	/* a block larger than the whole pool is never promoted, and still served */
	kvt_region *big = NULL;
	CHECK_RC(kvt_region_create(c, BLOCK_BYTES(256), &big), 0);
	uint8_t *wbig = malloc(BLOCK_BYTES(256));
	CHECK(wbig);
	put_block(c, big, 9, 256, wbig);
	uint64_t prom = kvtd_stat(c, "t0.promotions");
	for (int r = 0; r < 3; r++)
		gpu_get_check(c, &b, 9, 256, wbig);
	test_sleep_ms(50);
	CHECK_EQ(kvtd_stat(c, "t0.promotions"), prom);
	CHECK_EQ(lookup_tier(c, key_n(9)), KVT_TIER_HOST);
	free(wbig);
	kvt_region_destroy(big);
	for (int i = 0; i < 4; i++)
		free(want[i]);
	kvt_region_destroy(src);
	cache_free(&b);
	kvt_conn_close(c);
	kvtd_stop_clean(&d);
}

/* Three tiers: a 4 MiB host tier, NVMe with write-back (every evicted block
 * written), a 1 MiB pool. Far more blocks than the host tier holds, some read
 * hot all along: every block stays readable and byte-identical through GPU_GET
 * wherever it is, LOOKUP shows all three tiers, and T0 holds only blocks the
 * host tier holds. */
TEST(three_tiers_under_host_pressure)
{
	enum { N = 48, NT = 256 }; /* 256 KiB blocks: 12 MiB in all */
	struct kvtd d;
	kvtd_start(&d, EMU "gpu_pool_size = 1MiB\nhost_capacity = 4MiB\n"
			   "nvme_capacity = 1GiB\nnvme_segment_size = 64MiB\n"
			   "nvme_admission = always\nnvme_write = back\n");
	kvt_conn *c = kvtd_connect(&d, 30000);
	CHECK_EQ(kvtd_stat(c, "t0.active"), 1);
	CHECK_EQ(kvtd_stat(c, "t2.active"), 1);
	struct cache b;
	cache_make(c, &b, 9);
	kvt_region *src = NULL;
	CHECK_RC(kvt_region_create(c, BLOCK_BYTES(NT), &src), 0);
	uint8_t *want[N];
	for (uint32_t i = 0; i < N; i++) {
		want[i] = malloc(BLOCK_BYTES(NT));
		CHECK(want[i]);
		put_block(c, src, i, NT, want[i]);
		if (i < 2 || (i >= 2 && i % 8 == 0)) {
			/* blocks 0 and 1 are read all along; every 8th once more */
			for (uint32_t h = 0; h < 2 && h <= i; h++)
				gpu_get_check(c, &b, h, NT, want[h]);
			gpu_get_check(c, &b, i, NT, want[i]);
			gpu_get_check(c, &b, i, NT, want[i]);
		}
	}
	CHECK(kvtd_stat(c, "t1.evictions") > 0);
	CHECK_EQ(kvtd_stat(c, "t1.dropped_unwritten"), 0);
	CHECK(kvtd_stat(c, "t0.promotions") > 0);
	settle(c);
	/* where everything is: tiers agree with T0's count */
	int count[3] = { 0, 0, 0 };
	for (uint32_t i = 0; i < N; i++) {
		int t = lookup_tier(c, key_n(i));
		CHECK_MSG(t >= 0 && t <= 2, "block %u: LOOKUP tier %d", i, t);
		if (t >= 0 && t <= 2)
			count[t]++;
	}
	test_log("tiers: %d in T0, %d in host RAM, %d on NVMe; t0.evictions %llu, t1.evictions %llu",
		 count[0], count[1], count[2], (unsigned long long)kvtd_stat(c, "t0.evictions"),
		 (unsigned long long)kvtd_stat(c, "t1.evictions"));
	CHECK_EQ((uint64_t)count[0], kvtd_stat(c, "t0.blocks"));
	CHECK(count[0] >= 1);
	CHECK(count[2] >= 1);
	CHECK(count[1] + count[0] <= 16); /* T0 is within the host tier's 16 blocks */
	/* promote the host-resident blocks read once more, so T1 shows too */
	for (uint32_t i = 0; i < N; i++)
		if (lookup_tier(c, key_n(i)) == KVT_TIER_HOST) {
			count[1]++;
			break;
		}
	CHECK(count[1] >= 1);
	/* every block, wherever it is, byte for byte (NVMe ones come back through
	 * the host tier) */
	for (uint32_t i = 0; i < N; i++)
		gpu_get_check(c, &b, i, NT, want[i]);
	settle(c);
	/* after all that, a block of the host tier is still promoted by its second
	 * read and then served from T0 */
	uint32_t back = N;
	for (uint32_t i = 0; i < N && back == N; i++)
		if (lookup_tier(c, key_n(i)) == KVT_TIER_HOST)
			back = i;
	CHECK_MSG(back < N, "no block in the host tier");
	uint64_t hits = kvtd_stat(c, "t0.hits"), prom = kvtd_stat(c, "t0.promotions");
	gpu_get_check(c, &b, back, NT, want[back]); /* its second read: the pass was one */
	CHECK_EQ(wait_stat(c, "t0.promotions", prom + 1), prom + 1);
	CHECK_EQ(lookup_tier(c, key_n(back)), KVT_TIER_GPU);
	gpu_get_check(c, &b, back, NT, want[back]);
	CHECK_EQ(kvtd_stat(c, "t0.hits"), hits + 1);
	CHECK_EQ(kvtd_stat(c, "t2.checksum_failures"), 0);
	/* T0 never outlives the host tier's copy: its blocks are all host-resident
	 * (a LOOKUP tier 0 count never exceeds what the host tier holds) */
	settle(c);
	int t0n = 0;
	for (uint32_t i = 0; i < N; i++)
		t0n += lookup_tier(c, key_n(i)) == KVT_TIER_GPU;
	CHECK_EQ((uint64_t)t0n, kvtd_stat(c, "t0.blocks"));
	CHECK((uint64_t)t0n <= kvtd_stat(c, "t1.blocks"));
	for (uint32_t i = 0; i < N; i++)
		free(want[i]);
	kvt_region_destroy(src);
	cache_free(&b);
	kvt_conn_close(c);
	kvtd_stop_clean(&d);
}

/* DELETE takes a block out of T0, the host tier and NVMe; a pinned one stays in
 * every tier, T0 included. */
TEST(delete_removes_from_every_tier)
{
	struct kvtd d;
	kvtd_start(&d, EMU "gpu_pool_size = 1MiB\nnvme_capacity = 1GiB\n"
			   "nvme_segment_size = 64MiB\nnvme_write = through\n"
			   "nvme_admission = always\n");
	kvt_conn *c = kvtd_connect(&d, 30000);
	struct cache b;
	cache_make(c, &b, 3);
	kvt_region *src = NULL;
	CHECK_RC(kvt_region_create(c, BLOCK_BYTES(64), &src), 0);
	uint8_t *want[2];
	for (uint32_t i = 0; i < 2; i++) {
		want[i] = malloc(BLOCK_BYTES(64));
		CHECK(want[i]);
		put_block(c, src, i, 64, want[i]);
		gpu_get_check(c, &b, i, 64, want[i]);
		gpu_get_check(c, &b, i, 64, want[i]);
	}
	CHECK_EQ(wait_stat(c, "t0.promotions", 2), 2);
	CHECK_EQ(wait_stat(c, "t2.blocks", 2), 2); /* written through */
	CHECK_EQ(lookup_tier(c, key_n(0)), KVT_TIER_GPU);
	/* pinned: refused, and still in T0 */
	kvt_key k1 = key_n(1);
	CHECK_RC(kvt_block_pin(c, &k1, 1, NULL), 0);
	int st = 0;
	CHECK_RC(kvt_block_delete(c, &k1, 1, &st), KVT_EPARTIAL);
	CHECK_RC(st, KVT_EPINNED);
	CHECK_EQ(lookup_tier(c, key_n(1)), KVT_TIER_GPU);
	gpu_get_check(c, &b, 1, 64, want[1]);
	CHECK_RC(kvt_block_unpin(c, &k1, 1, NULL), 0);
	/* deleted: gone from every tier */
	kvt_key k0 = key_n(0);
	CHECK_RC(kvt_block_delete(c, &k0, 1, &st), 0);
	CHECK_EQ(lookup_tier(c, key_n(0)), -1);
	CHECK_EQ(kvtd_stat(c, "t0.blocks"), 1);
	static const uint32_t pages[4] = { 0, 1, 2, 3 };
	kvt_gpu_item it = gitem(key_n(0), b.id, 64, pages);
	CHECK_RC(kvt_gpu_get(c, &it, 1), KVT_EPARTIAL);
	CHECK_RC(it.status, KVT_ENOENT);
	CHECK_RC(kvt_block_delete(c, &k0, 1, &st), KVT_EPARTIAL);
	CHECK_RC(st, KVT_ENOENT);
	/* stored again: a new block, read from the host tier until read twice more */
	put_block(c, src, 0, 64, want[0]);
	CHECK_EQ(lookup_tier(c, key_n(0)), KVT_TIER_HOST);
	uint64_t hits = kvtd_stat(c, "t0.hits");
	gpu_get_check(c, &b, 0, 64, want[0]);
	CHECK_EQ(kvtd_stat(c, "t0.hits"), hits);
	CHECK_RC(kvt_block_delete(c, &k1, 1, &st), 0);
	CHECK_EQ(kvtd_stat(c, "t0.blocks"), 0);
	CHECK_EQ(kvtd_stat(c, "t0.used_bytes"), 0);
	for (int i = 0; i < 2; i++)
		free(want[i]);
	kvt_region_destroy(src);
	cache_free(&b);
	kvt_conn_close(c);
	kvtd_stop_clean(&d);
}

/* PREFETCH of n blocks from first to tier; returns the request's status. */
static int prefetch(kvt_conn *c, uint32_t first, size_t n, uint8_t tier, uint32_t deadline_ms,
		    uint8_t *tiers)
{
	kvt_key ks[16];
	CHECK(n <= 16);
	for (size_t i = 0; i < n; i++)
		ks[i] = key_n(first + (uint32_t)i);
	return kvt_block_prefetch(c, ks, n, tier, deadline_ms, tiers);
}

/*
 * PREFETCH and CTX_LOAD to tier 0: blocks in the host tier are copied into T0 and
 * so reported; the first GPU_GET after is served from T0, byte for byte. Blocks
 * only on NVMe (after a restart) come up through the host tier into T0. Missing
 * blocks are reported missing; deadline 0 answers at once and the copies go on;
 * a pool smaller than the request reports where each block is at the answer.
 */
TEST(prefetch_and_ctx_load_bring_blocks_into_t0)
{
	enum { N = 4 };
	struct kvtd d;
	kvtd_start(&d, EMU "gpu_pool_size = 1MiB\nnvme_capacity = 1GiB\n"
			   "nvme_segment_size = 64MiB\nnvme_write = through\n"
			   "nvme_admission = always\n");
	d.keep_dir = true;
	kvt_conn *c = kvtd_connect(&d, 30000);
	struct cache b;
	cache_make(c, &b, 5);
	kvt_region *src = NULL;
	CHECK_RC(kvt_region_create(c, BLOCK_BYTES(64), &src), 0);
	uint8_t *want[2 * N];
	for (uint32_t i = 0; i < 2 * N; i++) {
		want[i] = malloc(BLOCK_BYTES(64));
		CHECK(want[i]);
		put_block(c, src, i, 64, want[i]);
	}
	uint8_t tiers[N + 1];

	/* In the host tier: into T0 by the answer, then served from there. */
	CHECK_RC(prefetch(c, 0, N, KVT_TIER_GPU, 10000, tiers), 0);
	for (int i = 0; i < N; i++)
		CHECK_MSG(tiers[i] == KVT_TIER_GPU, "block %d reported in tier %u", i, tiers[i]);
	CHECK_EQ(kvtd_stat(c, "t0.promotions"), N);
	CHECK_EQ(kvtd_stat(c, "t0.blocks"), N);
	CHECK_EQ(lookup_tier(c, key_n(2)), KVT_TIER_GPU);
	gpu_get_check(c, &b, 2, 64, want[2]);
	CHECK_EQ(kvtd_stat(c, "t0.hits"), 1);
	/* Already there: reported at once, nothing copied again. */
	CHECK_RC(prefetch(c, 0, N, KVT_TIER_GPU, 10000, tiers), 0);
	CHECK(tiers[0] == KVT_TIER_GPU && tiers[N - 1] == KVT_TIER_GPU);
	CHECK_EQ(kvtd_stat(c, "t0.promotions"), N);
	/* A missing block is reported missing; the others are not held up. */
	CHECK_RC(prefetch(c, N, 2, KVT_TIER_GPU, 10000, tiers), 0);
	CHECK_EQ(tiers[0], KVT_TIER_GPU);
	CHECK_RC(prefetch(c, 900, 1, KVT_TIER_GPU, 10000, tiers), 0);
	CHECK_EQ(tiers[0], KVT_TIER_NONE);
	/* Deadline 0: answered at once with where they are; the copies go on. */
	CHECK_RC(prefetch(c, N + 2, 2, KVT_TIER_GPU, 0, tiers), 0);
	CHECK(tiers[0] == KVT_TIER_HOST || tiers[0] == KVT_TIER_GPU);
	settle(c);
	CHECK_EQ(lookup_tier(c, key_n(N + 2)), KVT_TIER_GPU);
	CHECK_EQ(lookup_tier(c, key_n(N + 3)), KVT_TIER_GPU);
	kvt_conn_close(c);

	/* After a restart every block is only on NVMe: CTX_LOAD to tier 0 pages the
	 * context in through the host tier into T0. */
	c = kvtd_connect(&d, 30000);
	{
		kvt_key ks[N];
		for (uint32_t i = 0; i < N; i++)
			ks[i] = key_n(i);
		kvt_context ctx = { .name = "t0ctx", .keys = ks, .nkeys = N, .token_count = 64 * N };
		CHECK_RC(kvt_ctx_save(c, &ctx, NULL), 0);
	}
	kvt_region_destroy(src);
	cache_free(&b);
	kvt_conn_close(c);
	kvtd_stop_clean(&d);
	kvtd_restart(&d);
	c = kvtd_connect(&d, 30000);
	cache_make(c, &b, 6);
	CHECK_EQ(lookup_tier(c, key_n(0)), KVT_TIER_NVME);
	kvt_ctx_info *in = NULL;
	CHECK_RC(kvt_ctx_load(c, "t0ctx", KVT_TIER_GPU, 10000, &in), 0);
	CHECK_EQ(in->nkeys, N);
	CHECK_EQ(in->resident, N);
	for (int i = 0; i < N; i++)
		CHECK_MSG(in->tiers[i] == KVT_TIER_GPU, "context block %d in tier %u", i,
			  in->tiers[i]);
	kvt_ctx_free(in);
	CHECK_EQ(kvtd_stat(c, "t0.blocks"), N);
	for (uint32_t i = 0; i < N; i++)
		gpu_get_check(c, &b, i, 64, want[i]);
	CHECK_EQ(kvtd_stat(c, "t0.hits"), N);
	/* PREFETCH from NVMe to tier 0 too. */
	CHECK_RC(prefetch(c, N, 2, KVT_TIER_GPU, 10000, tiers), 0);
	CHECK(tiers[0] == KVT_TIER_GPU && tiers[1] == KVT_TIER_GPU);
	gpu_get_check(c, &b, N, 64, want[N]);
	CHECK_EQ(kvtd_stat(c, "t0.hits"), N + 1);
	cache_free(&b);
	kvt_conn_close(c);
	d.keep_dir = false;
	kvtd_stop_clean(&d);

	/* A pool of two blocks asked for four: the answer says where each one is. */
	kvtd_start(&d, EMU "gpu_pool_size = 128KiB\n");
	c = kvtd_connect(&d, 30000);
	CHECK_RC(kvt_region_create(c, BLOCK_BYTES(64), &src), 0);
	for (uint32_t i = 0; i < N; i++)
		put_block(c, src, i, 64, want[i]);
	CHECK_RC(prefetch(c, 0, N, KVT_TIER_GPU, 10000, tiers), 0);
	size_t in_t0 = 0;
	for (uint32_t i = 0; i < N; i++) {
		CHECK_MSG(tiers[i] == KVT_TIER_GPU || tiers[i] == KVT_TIER_HOST,
			  "block %u reported in tier %u", i, tiers[i]);
		CHECK_EQ(lookup_tier(c, key_n(i)), tiers[i]);
		in_t0 += tiers[i] == KVT_TIER_GPU;
	}
	CHECK_MSG(in_t0 >= 1 && in_t0 <= 2, "%zu blocks reported in a two-block pool", in_t0);
	kvt_region_destroy(src);
	kvt_conn_close(c);
	kvtd_stop_clean(&d);

	/* A full pool of four, block 0 the coldest: a PREFETCH naming 0 and a new
	 * block keeps 0 (it counts as accessed) and pushes out another one. */
	kvtd_start(&d, EMU "gpu_pool_size = 256KiB\n");
	c = kvtd_connect(&d, 30000);
	CHECK_RC(kvt_region_create(c, BLOCK_BYTES(64), &src), 0);
	for (uint32_t i = 0; i < 2 * N; i++)
		put_block(c, src, i, 64, want[i]);
	CHECK_RC(prefetch(c, 0, 1, KVT_TIER_GPU, 10000, tiers), 0);
	CHECK_RC(prefetch(c, N, 3, KVT_TIER_GPU, 10000, tiers), 0);
	CHECK_EQ(kvtd_stat(c, "t0.blocks"), 4);
	CHECK_RC(prefetch(c, 0, 2, KVT_TIER_GPU, 10000, tiers), 0);
	CHECK_MSG(tiers[0] == KVT_TIER_GPU && tiers[1] == KVT_TIER_GPU, "tiers %u %u", tiers[0],
		  tiers[1]);
	CHECK_EQ(lookup_tier(c, key_n(0)), KVT_TIER_GPU);
	CHECK_EQ(kvtd_stat(c, "t0.blocks"), 4);
	kvt_region_destroy(src);
	kvt_conn_close(c);
	kvtd_stop_clean(&d);
	for (uint32_t i = 0; i < 2 * N; i++)
		free(want[i]);
}

/* A tenant's T0 share mirrors its host-tier share: host quota 2 MiB of an 8 MiB
 * host tier gives a quarter of a 1 MiB pool, 256 KiB (four 64 KiB blocks). Filling
 * T0 past it evicts the tenant's own blocks, and the pool never holds more of it. */
TEST(tenant_t0_share_follows_its_host_quota)
{
	enum { N = 12 };
	struct kvtd d;
	kvtd_start(&d, EMU "gpu_pool_size = 1MiB\nhost_capacity = 8MiB\ntenant_quota = 2MiB\n");
	kvt_conn *c = kvtd_connect(&d, 30000);
	kvt_region *src = NULL;
	CHECK_RC(kvt_region_create(c, BLOCK_BYTES(64), &src), 0);
	uint8_t *want = malloc(BLOCK_BYTES(64));
	CHECK(want);
	for (uint32_t i = 0; i < N; i++)
		put_block(c, src, i, 64, want);
	char name[64];
	snprintf(name, sizeof(name), "tenant.%u.t0_bytes", (unsigned)getuid());
	uint8_t tiers[4];
	for (uint32_t i = 0; i < N; i += 4) {
		CHECK_RC(prefetch(c, i, 4, KVT_TIER_GPU, 10000, tiers), 0);
		settle(c);
		CHECK_MSG(kvtd_stat(c, name) <= 256 * KiB, "%s = %llu after blocks %u..%u", name,
			  (unsigned long long)kvtd_stat(c, name), i, i + 3);
	}
	CHECK_EQ(kvtd_stat(c, name), 256 * KiB);
	CHECK_EQ(kvtd_stat(c, "t0.blocks"), 4);
	CHECK_EQ(kvtd_stat(c, "t0.quota_evictions"), N - 4);
	/* The last four asked for are the ones there. */
	for (uint32_t i = 0; i < N; i++)
		CHECK_EQ(lookup_tier(c, key_n(i)), i >= N - 4 ? KVT_TIER_GPU : KVT_TIER_HOST);
	free(want);
	kvt_region_destroy(src);
	kvt_conn_close(c);
	kvtd_stop_clean(&d);
}

/* gpu_pool_size with no GPU backend: T0 is off and says why; gpu_pool_size = 0
 * with a backend: off, and says that. */
TEST(pool_without_backend_is_inactive_with_reason)
{
	struct kvtd d;
	kvtd_start(&d, "gpu_backend = off\ngpu_pool_size = 4MiB\n");
	CHECK_MSG(strstr(kvtd_log_text(&d), "GPU tier (T0): not active: gpu_pool_size = 4194304 "
					    "needs a GPU backend"),
		  "log:\n%s", kvtd_log_text(&d));
	kvt_conn *c = kvtd_connect(&d, 10000);
	CHECK_EQ(kvtd_stat(c, "t0.active"), 0);
	CHECK_EQ(kvtd_stat(c, "t0.capacity_bytes"), 0);
	{
		kvt_key k = key_n(0);
		CHECK_RC(kvt_block_prefetch(c, &k, 1, KVT_TIER_GPU, 100, NULL), KVT_EOPNOTSUPP);
	}
	char txt[512];
	kvtd_stat_text(c, "t0.reason", txt, sizeof(txt));
	CHECK_MSG(strstr(txt, "gpu_pool_size") && strstr(txt, "needs a GPU backend") &&
			  strstr(txt, "gpu_backend = off"),
		  "t0.reason = %s", txt);
	kvtd_stat_text(c, "t0.memory", txt, sizeof(txt));
	CHECK_MSG(strstr(txt, "none"), "t0.memory = %s", txt);
	kvt_conn_close(c);
	kvtd_stop_clean(&d);

	kvtd_start(&d, EMU);
	c = kvtd_connect(&d, 10000);
	CHECK_EQ(kvtd_stat(c, "t0.active"), 0);
	kvtd_stat_text(c, "t0.reason", txt, sizeof(txt));
	CHECK_MSG(strstr(txt, "gpu_pool_size = 0"), "t0.reason = %s", txt);
	kvt_conn_close(c);
	kvtd_stop_clean(&d);

	/* a pool below one chunk */
	kvtd_start(&d, EMU "gpu_pool_size = 4KiB\n");
	c = kvtd_connect(&d, 10000);
	CHECK_EQ(kvtd_stat(c, "t0.active"), 0);
	kvtd_stat_text(c, "t0.reason", txt, sizeof(txt));
	CHECK_MSG(strstr(txt, "below one host_chunk"), "t0.reason = %s", txt);
	kvt_conn_close(c);
	kvtd_stop_clean(&d);
}

TEST_MAIN(second_read_promotes_then_served_from_t0, small_pool_evicts_by_policy,
	  three_tiers_under_host_pressure, delete_removes_from_every_tier,
	  prefetch_and_ctx_load_bring_blocks_into_t0, tenant_t0_share_follows_its_host_quota,
	  pool_without_backend_is_inactive_with_reason)
