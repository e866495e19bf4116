/*
 * engine.c - kvtier-engine: behaves like an inference engine offloading the KV
 * cache of one long context to kvtierd and reading it back, with a
 * Llama-3-8B-shaped cache by default (32 layers, 8 KV heads, head dim 128, bf16:
 * 128 KiB per token). Every byte it reads back is checked against the generator
 * that wrote it, so it doubles as an end-to-end correctness check of the daemon.
 *
 * Flow: derive chained block keys from deterministic pseudo-random token ids;
 * write the context block by block through a small shared region (pipelined:
 * while the daemon copies one batch, the next is generated); LOOKUP the chain;
 * GET the present prefix back through the region (pipelined the same way) and
 * verify it. Uses only the public API (kvtier.h).
 */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "kvtier.h"

#define PROG "kvtier-engine"
#define VOCAB 128256u         /* Llama 3 vocabulary size: token ids are below it */
#define LAYOUT_ID 1           /* our layout id in block descriptors */
#define CALL_TIMEOUT_MS 120000 /* a daemon stuck this long is a failure, not a wait */

struct opts {
	const char *socket;
	const char *model;
	uint64_t tokens, block_tokens, layers, kv_heads, head_dim;
	uint64_t region_blocks, batch, seed;
};

/* One batch slot group of the region, with its ticket while a request is out. */
struct group {
	bool busy;
	kvt_ticket ticket;
	size_t first, count; /* blocks [first, first + count) of the chain */
	kvt_put_item *put;
	kvt_get_item *get;
};

struct engine {
	struct opts o;
	kvt_conn *c;
	kvt_region *region;
	uint8_t *base;
	uint64_t block_bytes;
	size_t nblocks;
	kvt_key *keys;
	kvt_block_desc desc;
	struct group *groups;
	size_t ngroups, batch;
	double verify_s; /* GET pass time spent clearing slots and checking bytes */
	bool may_miss;   /* this GET pass is past the LOOKUP prefix: misses are evictions */
	size_t verified; /* blocks read back and checked */
	size_t missing;  /* blocks past the prefix that were evicted */
	size_t refused;  /* blocks the daemon had no room for (ENOSPC/EDQUOT) */
};

static void usage(FILE *f)
{
	fprintf(f,
		"Usage: " PROG " [-s SOCKET] [--tokens N] [--block-tokens N] [--layers N]\n"
		"                     [--kv-heads N] [--head-dim N] [--region-blocks N]\n"
		"                     [--batch N] [--seed N] [--model NAME] [-h]\n"
		"Write a context's KV cache to kvtierd as chained blocks and read it back,\n"
		"verifying every byte. KV bytes per token = layers x 2 x kv-heads x head-dim x 2\n"
		"(bf16 keys and values).\n"
		"\n"
		"  -s, --socket SOCKET    daemon socket (default: $KVTIER_SOCKET, else %s)\n"
		"      --tokens N         context length in tokens (default 32768)\n"
		"      --block-tokens N   tokens per block (default 256)\n"
		"      --layers N         (default 32)\n"
		"      --kv-heads N       (default 8)\n"
		"      --head-dim N       (default 128)\n"
		"      --region-blocks N  block slots in the shared region (default 8)\n"
		"      --batch N          blocks per PUT/GET request (default region-blocks/2)\n"
		"      --seed N           token and data generator seed (default 1)\n"
		"      --model NAME       model id for the key salt (default\n"
		"                         meta-llama/Meta-Llama-3-8B)\n"
		"  -h, --help             this help\n"
		"\n"
		"Exit status: 0 when everything read back matched, 1 on a mismatch or error,\n"
		"2 on a usage error.\n",
		KVT_DEFAULT_SOCKET);
}

static int parse_u64(const char *opt, const char *arg, uint64_t min, uint64_t max, uint64_t *out)
{
	unsigned long long v;
	char *end;

	errno = 0;
	v = strtoull(arg, &end, 10);
	if (errno || end == arg || *end || arg[0] == '-' || v < min || v > max) {
		fprintf(stderr, PROG ": --%s wants a number from %" PRIu64 " to %" PRIu64
				", not '%s'\n", opt, min, max, arg);
		return -1;
	}
	*out = v;
	return 0;
}

static double now_s(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

static const char *fmt_size(uint64_t v, char *buf, size_t cap)
{
	static const char *const unit[] = { "KiB", "MiB", "GiB", "TiB" };
	double d = (double)v;
	int u = -1;

	if (v < 1024) {
		snprintf(buf, cap, "%" PRIu64 " B", v);
		return buf;
	}
	while (d >= 1024 && u < 3) {
		d /= 1024;
		u++;
	}
	snprintf(buf, cap, "%.1f %s", d, unit[u]);
	return buf;
}

/* ---- deterministic data ------------------------------------------------------------ */

static uint64_t splitmix64(uint64_t *s)
{
	uint64_t z = (*s += 0x9e3779b97f4a7c15ull);

	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
	return z ^ (z >> 31);
}

/* First xorshift state for block index: never zero, distinct per seed and block. */
static uint64_t block_state(uint64_t seed, uint64_t index)
{
	uint64_t s = seed * 0xd1b54a32d192ed03ull ^ index;

	return splitmix64(&s) | 1;
}

static inline uint64_t xorshift64(uint64_t *x)
{
	*x ^= *x << 13;
	*x ^= *x >> 7;
	*x ^= *x << 17;
	return *x;
}

/* Block index's bytes: a xorshift64 stream, 8 bytes at a time. */
static void block_fill(uint8_t *dst, uint64_t len, uint64_t seed, uint64_t index)
{
	uint64_t x = block_state(seed, index), off;

	for (off = 0; off + 8 <= len; off += 8) {
		uint64_t w = xorshift64(&x);

		memcpy(dst + off, &w, 8);
	}
	if (off < len) {
		uint64_t w = xorshift64(&x);

		memcpy(dst + off, &w, len - off);
	}
}

/* Check block index's bytes; returns true, or false with the first bad offset. */
static bool block_check(const uint8_t *src, uint64_t len, uint64_t seed, uint64_t index,
			uint64_t *bad)
{
	uint64_t x = block_state(seed, index), off, w = 0;

	*bad = 0;
	/* Whole words on the fast path; the byte-exact search only after a difference. */
	for (off = 0; off + 8 <= len; off += 8) {
		uint64_t got;

		w = xorshift64(&x);
		memcpy(&got, src + off, 8);
		if (got != w)
			goto locate;
	}
	if (off == len)
		return true;
	w = xorshift64(&x);
	if (memcmp(src + off, &w, (size_t)(len - off)) == 0)
		return true;
locate:
	for (size_t i = 0; i < 8 && off + i < len; i++) {
		if (src[off + i] != ((const uint8_t *)&w)[i]) {
			*bad = off + i;
			break;
		}
	}
	return false;
}

/* ---- setup --------------------------------------------------------------------------- */

static int make_keys(struct engine *e)
{
	char layout[96];
	kvt_salt_params p = {
		.model_id = e->o.model,
		.weights_version = "kvtier-engine-synthetic",
		.kv_dtype = "bf16",
		.layout = layout,
		.adapter = "",
		.tp_rank = 0,
		.tp_size = 1,
		.block_tokens = (uint32_t)e->o.block_tokens,
	};
	uint64_t rng = e->o.seed;
	uint32_t *tokens;
	kvt_key salt;
	int rc;

	/* The shape is part of what makes blocks interchangeable, so it goes in the salt. */
	snprintf(layout, sizeof(layout), "kvtier-engine:L%" PRIu64 ":H%" PRIu64 ":D%" PRIu64,
		 e->o.layers, e->o.kv_heads, e->o.head_dim);
	rc = kvt_key_salt(&p, &salt);
	if (rc) {
		fprintf(stderr, PROG ": kvt_key_salt: %s\n", kvt_strerror(rc));
		return -1;
	}
	tokens = malloc(e->o.block_tokens * sizeof(*tokens));
	e->keys = calloc(e->nblocks ? e->nblocks : 1, sizeof(*e->keys));
	if (!tokens || !e->keys) {
		fprintf(stderr, PROG ": out of memory for %zu keys\n", e->nblocks);
		free(tokens);
		return -1;
	}
	for (size_t b = 0; b < e->nblocks; b++) {
		for (uint64_t t = 0; t < e->o.block_tokens; t++)
			tokens[t] = (uint32_t)(splitmix64(&rng) % VOCAB);
		kvt_key_chain(&salt, b ? &e->keys[b - 1] : NULL, tokens, e->o.block_tokens,
			      &e->keys[b]);
	}
	free(tokens);
	return 0;
}

static int make_groups(struct engine *e)
{
	const kvt_server_info *si = kvt_conn_server(e->c);

	e->batch = e->o.batch ? e->o.batch : (e->o.region_blocks >= 2 ? e->o.region_blocks / 2 : 1);
	if (e->batch > e->o.region_blocks)
		e->batch = e->o.region_blocks;
	if (e->batch > si->max_batch)
		e->batch = si->max_batch;
	e->ngroups = e->o.region_blocks / e->batch;
	/* One request per group is outstanding at most. */
	if (e->ngroups > si->max_inflight)
		e->ngroups = si->max_inflight;
	e->groups = calloc(e->ngroups, sizeof(*e->groups));
	if (!e->groups)
		return -1;
	for (size_t g = 0; g < e->ngroups; g++) {
		e->groups[g].put = calloc(e->batch, sizeof(kvt_put_item));
		e->groups[g].get = calloc(e->batch, sizeof(kvt_get_item));
		if (!e->groups[g].put || !e->groups[g].get)
			return -1;
	}
	return 0;
}

static void free_groups(struct engine *e)
{
	for (size_t g = 0; e->groups && g < e->ngroups; g++) {
		free(e->groups[g].put);
		free(e->groups[g].get);
	}
	free(e->groups);
}

/* Offset in the region of slot j of group g. */
static uint64_t slot_offset(const struct engine *e, size_t g, size_t j)
{
	return ((uint64_t)g * e->batch + j) * e->block_bytes;
}

/* ---- PUT --------------------------------------------------------------------------- */

static int put_finish(struct engine *e, struct group *g)
{
	int rc = kvt_wait(e->c, g->ticket);

	g->busy = false;
	if (rc == KVT_EPARTIAL) {
		for (size_t j = 0; j < g->count; j++) {
			int st = g->put[j].status;
			/* A full tier keeps the context's prefix and refuses the rest: that
			 * is the daemon working as designed, not an error of the run. */
			if (st == KVT_ENOSPC || st == KVT_EDQUOT) {
				if (e->refused++ == 0)
					printf("PUT     block %zu and later: %s; the context is larger "
					       "than the tier can hold\n",
					       g->first + j, kvt_errname(st));
				continue;
			}
			if (st) {
				fprintf(stderr, PROG ": PUT of block %zu failed: %s (%s)\n",
					g->first + j, kvt_strerror(st), kvt_errname(st));
				return -1;
			}
		}
		return 0;
	}
	if (rc) {
		fprintf(stderr, PROG ": PUT of blocks %zu..%zu failed: %s (%s)\n", g->first,
			g->first + g->count - 1, kvt_strerror(rc), kvt_errname(rc));
		return -1;
	}
	return 0;
}

static int put_all(struct engine *e)
{
	size_t issued = 0;

	for (size_t b = 0; b < e->nblocks; b += e->batch, issued++) {
		size_t gi = issued % e->ngroups;
		struct group *g = &e->groups[gi];
		int rc;

		/* The slots are reusable once the daemon has copied them out. */
		if (g->busy && put_finish(e, g))
			return -1;
		g->first = b;
		g->count = e->nblocks - b < e->batch ? e->nblocks - b : e->batch;
		for (size_t j = 0; j < g->count; j++) {
			uint64_t off = slot_offset(e, gi, j);
			kvt_put_item *it = &g->put[j];

			block_fill(e->base + off, e->block_bytes, e->o.seed, b + j);
			memset(it, 0, sizeof(*it));
			it->key = e->keys[b + j];
			if (b + j)
				it->parent = e->keys[b + j - 1];
			it->region = e->region;
			it->offset = off;
			it->length = e->block_bytes;
			it->desc = e->desc;
		}
		rc = kvt_block_put_start(e->c, g->put, g->count, &g->ticket);
		if (rc) {
			fprintf(stderr, PROG ": PUT of blocks %zu..%zu: %s (%s)\n", b,
				b + g->count - 1, kvt_strerror(rc), kvt_errname(rc));
			return -1;
		}
		g->busy = true;
	}
	/* Drain oldest first. */
	for (size_t k = 0; k < e->ngroups; k++) {
		struct group *g = &e->groups[(issued + k) % e->ngroups];

		if (g->busy && put_finish(e, g))
			return -1;
	}
	return 0;
}

/* ---- LOOKUP ------------------------------------------------------------------------ */

static int lookup_chain(struct engine *e, size_t *found)
{
	size_t max = kvt_conn_server(e->c)->max_batch, total = 0;

	/* A chain longer than one batch is asked for in pieces, stopping at a gap. */
	while (total < e->nblocks) {
		size_t n = e->nblocks - total < max ? e->nblocks - total : max, f = 0;
		int rc = kvt_block_lookup(e->c, e->keys + total, n, &f, NULL);

		if (rc) {
			fprintf(stderr, PROG ": LOOKUP: %s (%s)\n", kvt_strerror(rc),
				kvt_errname(rc));
			return -1;
		}
		total += f;
		if (f < n)
			break;
	}
	*found = total;
	return 0;
}

/* ---- GET --------------------------------------------------------------------------- */

static int get_finish(struct engine *e, struct group *g, size_t gi)
{
	int rc = kvt_wait(e->c, g->ticket);
	double t0;

	g->busy = false;
	if (rc && rc != KVT_EPARTIAL) {
		fprintf(stderr, PROG ": GET of blocks %zu..%zu failed: %s (%s)\n", g->first,
			g->first + g->count - 1, kvt_strerror(rc), kvt_errname(rc));
		return -1;
	}
	t0 = now_s();
	for (size_t j = 0; j < g->count; j++) {
		const kvt_get_item *it = &g->get[j];
		size_t b = g->first + j;
		uint64_t bad = 0;

		if (it->status == KVT_ENOENT && e->may_miss) {
			e->missing++;
			continue;
		}
		if (it->status) {
			fprintf(stderr, PROG ": GET of block %zu failed: %s (%s)%s\n", b,
				kvt_strerror(it->status), kvt_errname(it->status),
				it->status == KVT_ENOENT ? " although LOOKUP found it" : "");
			return -1;
		}
		if (it->length != e->block_bytes) {
			fprintf(stderr, PROG ": block %zu came back with %" PRIu64
					" bytes, expected %" PRIu64 "\n", b, it->length, e->block_bytes);
			return -1;
		}
		if (memcmp(&it->desc, &e->desc, sizeof(e->desc)) != 0) {
			fprintf(stderr, PROG ": block %zu came back with a different descriptor"
					" (dtype %u layers %u tokens %" PRIu32 ")\n", b, it->desc.dtype,
				it->desc.layers, it->desc.tokens);
			return -1;
		}
		if (!block_check(e->base + slot_offset(e, gi, j), e->block_bytes, e->o.seed, b,
				 &bad)) {
			fprintf(stderr, PROG ": MISMATCH in block %zu at byte offset %" PRIu64
					" (of %" PRIu64 ")\n", b, bad, e->block_bytes);
			return -1;
		}
		e->verified++;
	}
	e->verify_s += now_s() - t0;
	return 0;
}

/* GET blocks [from, to) through the region and verify them. */
static int get_blocks(struct engine *e, size_t from, size_t to)
{
	size_t issued = 0;
	double t0;

	for (size_t b = from; b < to; b += e->batch, issued++) {
		size_t gi = issued % e->ngroups;
		struct group *g = &e->groups[gi];
		int rc;

		if (g->busy && get_finish(e, g, gi))
			return -1;
		g->first = b;
		g->count = to - b < e->batch ? to - b : e->batch;
		for (size_t j = 0; j < g->count; j++) {
			kvt_get_item *it = &g->get[j];
			uint64_t off = slot_offset(e, gi, j);

			memset(it, 0, sizeof(*it));
			it->key = e->keys[b + j];
			it->region = e->region;
			it->offset = off;
			it->capacity = e->block_bytes;
			/* Stale bytes from the PUT pass must not pass for fetched ones. */
			t0 = now_s();
			memset(e->base + off, 0, e->block_bytes);
			e->verify_s += now_s() - t0;
		}
		rc = kvt_block_get_start(e->c, g->get, g->count, &g->ticket);
		if (rc) {
			fprintf(stderr, PROG ": GET of blocks %zu..%zu: %s (%s)\n", b,
				b + g->count - 1, kvt_strerror(rc), kvt_errname(rc));
			return -1;
		}
		g->busy = true;
	}
	for (size_t k = 0; k < e->ngroups; k++) {
		size_t gi = (issued + k) % e->ngroups;
		struct group *g = &e->groups[gi];

		if (g->busy && get_finish(e, g, gi))
			return -1;
	}
	return 0;
}

/* ---- main ---------------------------------------------------------------------------- */

static int parse_args(int argc, char **argv, struct opts *o)
{
	enum { O_TOKENS = 256, O_BT, O_LAYERS, O_HEADS, O_DIM, O_RB, O_BATCH, O_SEED, O_MODEL };
	static const struct option longopts[] = {
		{ "socket", required_argument, NULL, 's' },
		{ "tokens", required_argument, NULL, O_TOKENS },
		{ "block-tokens", required_argument, NULL, O_BT },
		{ "layers", required_argument, NULL, O_LAYERS },
		{ "kv-heads", required_argument, NULL, O_HEADS },
		{ "head-dim", required_argument, NULL, O_DIM },
		{ "region-blocks", required_argument, NULL, O_RB },
		{ "batch", required_argument, NULL, O_BATCH },
		{ "seed", required_argument, NULL, O_SEED },
		{ "model", required_argument, NULL, O_MODEL },
		{ "help", no_argument, NULL, 'h' },
		{ NULL, 0, NULL, 0 },
	};
	int opt, rc = 0;

	*o = (struct opts){
		.model = "meta-llama/Meta-Llama-3-8B",
		.tokens = 32768,
		.block_tokens = 256,
		.layers = 32,
		.kv_heads = 8,
		.head_dim = 128,
		.region_blocks = 8,
		.seed = 1,
	};
	while (rc == 0 && (opt = getopt_long(argc, argv, "s:h", longopts, NULL)) != -1) {
		switch (opt) {
		case 's':
			o->socket = optarg;
			break;
		case O_TOKENS:
			rc = parse_u64("tokens", optarg, 1, 1u << 30, &o->tokens);
			break;
		case O_BT:
			rc = parse_u64("block-tokens", optarg, 1, 1u << 20, &o->block_tokens);
			break;
		case O_LAYERS:
			rc = parse_u64("layers", optarg, 1, UINT16_MAX, &o->layers);
			break;
		case O_HEADS:
			rc = parse_u64("kv-heads", optarg, 1, 4096, &o->kv_heads);
			break;
		case O_DIM:
			rc = parse_u64("head-dim", optarg, 1, 65536, &o->head_dim);
			break;
		case O_RB:
			rc = parse_u64("region-blocks", optarg, 1, 4096, &o->region_blocks);
			break;
		case O_BATCH:
			rc = parse_u64("batch", optarg, 1, 4096, &o->batch);
			break;
		case O_SEED:
			rc = parse_u64("seed", optarg, 0, UINT64_MAX, &o->seed);
			break;
		case O_MODEL:
			o->model = optarg;
			break;
		case 'h':
			usage(stdout);
			exit(0);
		default:
			usage(stderr);
			return -1;
		}
	}
	if (rc == 0 && optind < argc) {
		fprintf(stderr, PROG ": unexpected argument '%s'\n", argv[optind]);
		return -1;
	}
	return rc;
}

int main(int argc, char **argv)
{
	struct engine e;
	char s1[32], s2[32], s3[32];
	const kvt_server_info *si;
	uint64_t token_bytes, region_bytes, ctx_bytes, cap = 0;
	const char *sock;
	kvt_stats *st;
	size_t found = 0;
	double t0, t_put, t_lookup, t_get;
	int rc, status = 1;

	memset(&e, 0, sizeof(e));
	if (parse_args(argc, argv, &e.o))
		return 2;
	sock = e.o.socket;
	if (!sock) {
		sock = getenv("KVTIER_SOCKET");
		if (!sock || !*sock)
			sock = KVT_DEFAULT_SOCKET;
	}

	/* Keys and values, bf16: 2 x 2 bytes per layer, head and dimension. The option
	 * bounds keep every product below 2^64. */
	token_bytes = e.o.layers * 2 * e.o.kv_heads * e.o.head_dim * 2;
	e.block_bytes = token_bytes * e.o.block_tokens;
	e.nblocks = (size_t)(e.o.tokens / e.o.block_tokens);
	ctx_bytes = e.block_bytes * e.nblocks;
	e.desc = (kvt_block_desc){ .dtype = KVT_DTYPE_BF16,
				   .layout = LAYOUT_ID,
				   .layers = (uint16_t)e.o.layers,
				   .tokens = (uint32_t)e.o.block_tokens };
	if (e.nblocks == 0) {
		fprintf(stderr, PROG ": %" PRIu64 " tokens do not fill one block of %" PRIu64 "\n",
			e.o.tokens, e.o.block_tokens);
		return 2;
	}

	rc = kvt_conn_open(e.o.socket, &e.c);
	if (rc) {
		fprintf(stderr, PROG ": cannot reach kvtierd at %s: %s (%s)\n", sock,
			rc == KVT_ENOENT ? "no such socket" : kvt_strerror(rc), kvt_errname(rc));
		return 1;
	}
	kvt_conn_set_timeout(e.c, CALL_TIMEOUT_MS);
	si = kvt_conn_server(e.c);
	if (e.block_bytes > si->max_block_size) {
		fprintf(stderr, PROG ": blocks of %s exceed the daemon's max_block_size (%s)\n",
			fmt_size(e.block_bytes, s1, sizeof(s1)),
			fmt_size(si->max_block_size, s2, sizeof(s2)));
		goto out;
	}
	region_bytes = e.block_bytes * e.o.region_blocks;
	if (region_bytes / e.o.region_blocks != e.block_bytes || region_bytes > SIZE_MAX ||
	    region_bytes > si->max_region_size) {
		fprintf(stderr, PROG ": a region of %" PRIu64 " blocks is too large for the daemon"
				" (max_region_size %s)\n", e.o.region_blocks,
			fmt_size(si->max_region_size, s1, sizeof(s1)));
		goto out;
	}
	if (make_keys(&e) || make_groups(&e))
		goto out;
	rc = kvt_region_create(e.c, (size_t)region_bytes, &e.region);
	if (rc) {
		fprintf(stderr, PROG ": region of %s: %s (%s)\n",
			fmt_size(region_bytes, s1, sizeof(s1)), kvt_strerror(rc), kvt_errname(rc));
		goto out;
	}
	e.base = kvt_region_base(e.region);

	printf("%s: %" PRIu64 " layers x %" PRIu64 " KV heads x %" PRIu64
	       " head dim, bf16: %s per token\n", e.o.model, e.o.layers, e.o.kv_heads,
	       e.o.head_dim, fmt_size(token_bytes, s1, sizeof(s1)));
	printf("context %" PRIu64 " tokens = %zu blocks of %" PRIu64 " tokens (%s each), %s",
	       e.o.tokens, e.nblocks, e.o.block_tokens, fmt_size(e.block_bytes, s1, sizeof(s1)),
	       fmt_size(ctx_bytes, s2, sizeof(s2)));
	if (e.o.tokens % e.o.block_tokens)
		printf(" (%" PRIu64 " tail tokens not cached)", e.o.tokens % e.o.block_tokens);
	printf("\ndaemon %s at %s, tenant %" PRIu32 "; region %" PRIu64
	       " slots (%s), %zu blocks per request, %zu requests in flight\n",
	       si->server, sock, si->tenant, e.o.region_blocks,
	       fmt_size(region_bytes, s3, sizeof(s3)), e.batch, e.ngroups);

	t0 = now_s();
	if (put_all(&e))
		goto out;
	t_put = now_s() - t0;
	printf("PUT     %zu blocks, %s in %.3f s: %.2f GB/s, %.0f tokens/s\n", e.nblocks,
	       fmt_size(ctx_bytes, s1, sizeof(s1)), t_put, (double)ctx_bytes / t_put / 1e9,
	       (double)e.nblocks * (double)e.o.block_tokens / t_put);

	t0 = now_s();
	if (lookup_chain(&e, &found))
		goto out;
	t_lookup = now_s() - t0;
	if (kvt_stats_get(e.c, &st) == 0) {
		kvt_stats_find(st, "t1.capacity_bytes", &cap);
		kvt_stats_free(st);
	}
	printf("LOOKUP  %zu of %zu blocks present (%.2f ms)\n", found, e.nblocks, t_lookup * 1e3);
	if (found < e.nblocks) {
		printf("        the context (%s) is larger than the host tier kept",
		       fmt_size(ctx_bytes, s1, sizeof(s1)));
		if (cap)
			printf(" (capacity %s)", fmt_size(cap, s2, sizeof(s2)));
		if (found)
			printf(": block %zu was evicted, so only the first %zu are reusable\n",
			       found, found);
		else
			printf(": the chain's head was evicted, so none of it is reusable\n");
	}

	if (found) {
		t0 = now_s();
		if (get_blocks(&e, 0, found))
			goto out;
		t_get = now_s() - t0;
		printf("GET     %zu blocks, %s in %.3f s: %.2f GB/s, %.0f tokens/s"
		       " (clearing + verifying %.3f s of it)\n", found,
		       fmt_size(e.block_bytes * found, s1, sizeof(s1)), t_get,
		       (double)(e.block_bytes * found) / t_get / 1e9,
		       (double)found * (double)e.o.block_tokens / t_get, e.verify_s);
	}
	if (found < e.nblocks) {
		/* Past the prefix, blocks may or may not have survived; check every one
		 * that did, so a run that lost its head still verifies something. */
		e.may_miss = true;
		if (get_blocks(&e, found, e.nblocks))
			goto out;
		printf("GET     past the prefix: %zu of %zu later blocks still present and"
		       " verified, %zu evicted\n", e.nblocks - found - e.missing,
		       e.nblocks - found, e.missing);
	}
	if (e.verified == 0) {
		fprintf(stderr, PROG ": every block was evicted; nothing could be verified\n");
		goto out;
	}
	printf("OK: every byte of the %zu blocks read back matched%s\n", e.verified,
	       found < e.nblocks ? " (evicted blocks were not checked)" : "");
	status = 0;

out:
	/* Closing abandons any tickets still out; the region handle is freed after. */
	kvt_conn_close(e.c);
	kvt_region_destroy(e.region);
	free_groups(&e);
	free(e.keys);
	return status;
}
