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
 *
 * Saved contexts: --save NAME writes the context and saves it in the daemon (the
 * block keys, the token ids and a metadata text recording the shape, the seed and
 * the write time); --restore NAME, typically after the daemon was restarted,
 * writes nothing: it loads the saved context into the host tier, GETs every block
 * in chain order and verifies every byte against the generator that wrote it.
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
/* Saving makes every block durable on NVMe first and loading pages them all in:
 * give those calls as long as writing 64 GiB at 0.2 GB/s would take. */
#define CTX_TIMEOUT_MS 600000
#define META_MAGIC "kvtier-engine context v1"

struct opts {
	const char *socket;
	const char *model;
	uint64_t tokens, block_tokens, layers, kv_heads, head_dim;
	uint64_t region_blocks, batch, seed;
	const char *save, *restore; /* context names, or NULL */
	uint64_t deadline_ms;       /* CTX_LOAD deadline */
	unsigned given;             /* shape options given on the command line (GIVEN_*) */
};

enum {
	GIVEN_TOKENS = 1u << 0,
	GIVEN_BT = 1u << 1,
	GIVEN_LAYERS = 1u << 2,
	GIVEN_HEADS = 1u << 3,
	GIVEN_DIM = 1u << 4,
	GIVEN_SEED = 1u << 5,
	GIVEN_MODEL = 1u << 6,
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
	kvt_key salt;
	kvt_key *keys;
	uint32_t *tokens;  /* every token id of the context, when saving or restoring */
	kvt_block_desc desc;
	struct group *groups;
	size_t ngroups, batch;
	double verify_s; /* GET pass time spent clearing slots and checking bytes */
	bool may_miss;   /* this GET pass is past the LOOKUP prefix: misses are evictions */
	size_t verified; /* blocks read back and checked */
	size_t missing;  /* blocks past the prefix that were evicted */
	size_t refused;  /* blocks the daemon had no room for (ENOSPC/EDQUOT) */
	size_t waited;   /* --save: PUTs sent again after ENOSPC, waiting for room */
	size_t went;     /* blocks LOOKUP found that were gone by their GET */
};

static void usage(FILE *f)
{
	fprintf(f,
		"Usage: " PROG " [-s SOCKET] [--tokens N] [--block-tokens N] [--layers N]\n"
		"                     [--kv-heads N] [--head-dim N] [--region-blocks N]\n"
		"                     [--batch N] [--seed N] [--model NAME]\n"
		"                     [--save NAME | --restore NAME [--deadline MS]] [-h]\n"
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
		"      --save NAME        write the context, then save it in the daemon as NAME\n"
		"                         (CTX_SAVE: acknowledged once every block is durable\n"
		"                         on NVMe; needs the daemon's NVMe tier) with its token\n"
		"                         ids and a metadata text recording the shape, the seed\n"
		"                         and the write time; report the save time and GB/s.\n"
		"                         Nothing is read back: --restore does that\n"
		"      --restore NAME     write nothing: load the context saved as NAME into the\n"
		"                         host tier (e.g. after a daemon restart), GET every\n"
		"                         block in chain order, verify every byte, and report\n"
		"                         the restore time against the saved write time. The\n"
		"                         shape and seed come from the saved metadata; shape\n"
		"                         options given as well must agree with it\n"
		"      --deadline MS      --restore: how long the load may wait for blocks to\n"
		"                         reach the host tier (default 30000)\n"
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

/* Chained keys of the context's blocks from its token ids (deterministic in the
 * seed). With keep_tokens, e->tokens receives every token id of the context, the
 * uncached tail too, drawn from the same stream after the blocks' ones. */
static int make_keys(struct engine *e, bool keep_tokens)
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
	kvt_key *salt = &e->salt;
	int rc;

	/* The shape is part of what makes blocks interchangeable, so it goes in the salt. */
	snprintf(layout, sizeof(layout), "kvtier-engine:L%" PRIu64 ":H%" PRIu64 ":D%" PRIu64,
		 e->o.layers, e->o.kv_heads, e->o.head_dim);
	rc = kvt_key_salt(&p, salt);
	if (rc) {
		fprintf(stderr, PROG ": kvt_key_salt: %s\n", kvt_strerror(rc));
		return -1;
	}
	if (keep_tokens)
		tokens = e->tokens = malloc(e->o.tokens * sizeof(*tokens));
	else
		tokens = malloc(e->o.block_tokens * sizeof(*tokens));
	e->keys = calloc(e->nblocks ? e->nblocks : 1, sizeof(*e->keys));
	if (!tokens || !e->keys) {
		fprintf(stderr, PROG ": out of memory for %zu keys\n", e->nblocks);
		if (!keep_tokens)
			free(tokens);
		return -1;
	}
	for (size_t b = 0; b < e->nblocks; b++) {
		uint32_t *bt = keep_tokens ? tokens + b * e->o.block_tokens : tokens;

		for (uint64_t t = 0; t < e->o.block_tokens; t++)
			bt[t] = (uint32_t)(splitmix64(&rng) % VOCAB);
		kvt_key_chain(salt, b ? &e->keys[b - 1] : NULL, bt, e->o.block_tokens,
			      &e->keys[b]);
	}
	if (keep_tokens) {
		for (uint64_t t = e->nblocks * e->o.block_tokens; t < e->o.tokens; t++)
			tokens[t] = (uint32_t)(splitmix64(&rng) % VOCAB);
	} else {
		free(tokens);
	}
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
			/* Saving needs every block: a host tier full of blocks still on their
			 * way to NVMe makes room as they land, so wait for it (a minute at
			 * most per block). */
			for (int tries = 0; e->o.save && st == KVT_ENOSPC && tries < 30000; tries++) {
				struct timespec ts = { 0, 2000000 };

				nanosleep(&ts, NULL);
				e->waited++;
				rc = kvt_block_put(e->c, &g->put[j], 1);
				st = rc == KVT_EPARTIAL ? g->put[j].status : rc;
				if (st == 0)
					break;
			}
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
		/* LOOKUP is a snapshot: in a cache a block may go before the GET that
		 * follows (evicted, or its NVMe segment cleaned). That is a miss to
		 * report, not a failure; only wrong or short bytes are. */
		if (it->status == KVT_ENOENT && !e->o.restore) {
			fprintf(stderr, PROG ": block %zu went between LOOKUP and GET (a miss)\n", b);
			e->went++;
			continue;
		}
		if (it->status) {
			fprintf(stderr, PROG ": GET of block %zu failed: %s (%s)%s\n", b,
				kvt_strerror(it->status), kvt_errname(it->status),
				it->status != KVT_ENOENT ? "" :
				e->o.restore ? ": a block of a saved context is stored nowhere" :
					       " although LOOKUP found it");
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

/* ---- saved contexts ------------------------------------------------------------------ */

/* Bounds of the shape options, shared by the command line and the saved metadata. */
#define TOKENS_MAX (1u << 30)
#define BT_MAX (1u << 20)
#define HEADS_MAX 4096
#define DIM_MAX 65536

/* The metadata text saved with a context: what a restore needs to regenerate and
 * check every byte, and how long the write took. */
static int meta_format(const struct engine *e, double t_put, uint64_t ctx_bytes, char *buf,
		       size_t cap)
{
	int n = snprintf(buf, cap,
			 META_MAGIC "\n"
			 "model=%s\ntokens=%" PRIu64 "\nblock_tokens=%" PRIu64 "\nlayers=%" PRIu64
			 "\nkv_heads=%" PRIu64 "\nhead_dim=%" PRIu64 "\nseed=%" PRIu64
			 "\nput_bytes=%" PRIu64 "\nput_s=%.6f\nput_gbps=%.4f\nsaved_unix=%lld\n",
			 e->o.model, e->o.tokens, e->o.block_tokens, e->o.layers, e->o.kv_heads,
			 e->o.head_dim, e->o.seed, ctx_bytes, t_put,
			 (double)ctx_bytes / t_put / 1e9, (long long)time(NULL));

	return n < 0 || (size_t)n >= cap ? -1 : n;
}

struct saved {
	double put_s, put_gbps;
	uint64_t put_bytes;
	long long saved_unix;
};

/* One "key=value" number of the metadata; false if absent or out of [min, max]. */
static bool meta_u64(const char *text, const char *key, uint64_t min, uint64_t max,
		     uint64_t *out)
{
	size_t klen = strlen(key);

	for (const char *l = text; l && *l; l = strchr(l, '\n'), l = l ? l + 1 : NULL) {
		if (strncmp(l, key, klen) == 0 && l[klen] == '=') {
			char *end;
			unsigned long long v;

			errno = 0;
			v = strtoull(l + klen + 1, &end, 10);
			if (errno || end == l + klen + 1 || (*end && *end != '\n') || v < min ||
			    v > max)
				return false;
			*out = v;
			return true;
		}
	}
	return false;
}

static bool meta_double(const char *text, const char *key, double *out)
{
	size_t klen = strlen(key);

	for (const char *l = text; l && *l; l = strchr(l, '\n'), l = l ? l + 1 : NULL) {
		if (strncmp(l, key, klen) == 0 && l[klen] == '=') {
			char *end;

			*out = strtod(l + klen + 1, &end);
			return end != l + klen + 1;
		}
	}
	return false;
}

/* The model line, copied into buf. */
static bool meta_model(const char *text, char *buf, size_t cap)
{
	const char *l = strstr(text, "\nmodel=");
	size_t len;

	if (!l)
		return false;
	l += 7;
	len = strcspn(l, "\n");
	if (len == 0 || len >= cap)
		return false;
	memcpy(buf, l, len);
	buf[len] = '\0';
	return true;
}

/*
 * Take the shape and seed from a saved context's metadata. Options also given on
 * the command line must agree (they would describe other bytes). Returns 0, or -1
 * with a message.
 */
static int meta_apply(const char *name, const uint8_t *meta, size_t len, struct opts *o,
		      char *model, size_t model_cap, struct saved *sv)
{
	char *text = malloc(len + 1);
	struct {
		const char *key;
		unsigned flag;
		uint64_t min, max, *dst;
	} f[] = {
		{ "tokens", GIVEN_TOKENS, 1, TOKENS_MAX, NULL },
		{ "block_tokens", GIVEN_BT, 1, BT_MAX, NULL },
		{ "layers", GIVEN_LAYERS, 1, UINT16_MAX, NULL },
		{ "kv_heads", GIVEN_HEADS, 1, HEADS_MAX, NULL },
		{ "head_dim", GIVEN_DIM, 1, DIM_MAX, NULL },
		{ "seed", GIVEN_SEED, 0, UINT64_MAX, NULL },
	};
	int rc = -1;

	f[0].dst = &o->tokens;
	f[1].dst = &o->block_tokens;
	f[2].dst = &o->layers;
	f[3].dst = &o->kv_heads;
	f[4].dst = &o->head_dim;
	f[5].dst = &o->seed;
	if (!text) {
		fprintf(stderr, PROG ": out of memory\n");
		return -1;
	}
	if (len)
		memcpy(text, meta, len);
	text[len] = '\0';
	if (strncmp(text, META_MAGIC "\n", strlen(META_MAGIC) + 1) != 0) {
		fprintf(stderr, PROG ": context '%s' was not saved by " PROG " (its metadata does "
				"not start with \"" META_MAGIC "\")\n", name);
		goto out;
	}
	for (size_t i = 0; i < sizeof(f) / sizeof(f[0]); i++) {
		uint64_t v;

		if (!meta_u64(text, f[i].key, f[i].min, f[i].max, &v)) {
			fprintf(stderr, PROG ": context '%s': metadata has no valid %s\n", name,
				f[i].key);
			goto out;
		}
		if ((o->given & f[i].flag) && *f[i].dst != v) {
			fprintf(stderr, PROG ": context '%s' was saved with %s %" PRIu64 ", not %"
					PRIu64 " as given\n", name, f[i].key, v, *f[i].dst);
			goto out;
		}
		*f[i].dst = v;
	}
	if (!meta_model(text, model, model_cap)) {
		fprintf(stderr, PROG ": context '%s': metadata has no valid model\n", name);
		goto out;
	}
	if ((o->given & GIVEN_MODEL) && strcmp(o->model, model) != 0) {
		fprintf(stderr, PROG ": context '%s' was saved for model %s, not %s\n", name, model,
			o->model);
		goto out;
	}
	o->model = model;
	memset(sv, 0, sizeof(*sv));
	if (!meta_double(text, "put_s", &sv->put_s) || !(sv->put_s > 0) ||
	    !meta_double(text, "put_gbps", &sv->put_gbps) ||
	    !meta_u64(text, "put_bytes", 0, UINT64_MAX, &sv->put_bytes))
		sv->put_s = 0; /* reported as unknown */
	{
		uint64_t t;

		if (meta_u64(text, "saved_unix", 0, INT64_MAX, &t))
			sv->saved_unix = (long long)t;
	}
	rc = 0;
out:
	free(text);
	return rc;
}

/* CTX_SAVE the written context as name and report how long it took. */
static int save_context(struct engine *e, const char *name, double t_put, uint64_t ctx_bytes)
{
	char meta[1024], s1[32];
	kvt_context ctx;
	size_t missing = 0;
	double t0, t_save;
	int rc;

	if (meta_format(e, t_put, ctx_bytes, meta, sizeof(meta)) < 0) {
		fprintf(stderr, PROG ": the model name is too long for the metadata\n");
		return -1;
	}
	ctx = (kvt_context){
		.name = name,
		.model_salt = e->salt,
		.token_count = e->o.tokens,
		.keys = e->keys,
		.nkeys = e->nblocks,
		.tokens = e->tokens,
		.metadata = meta,
		.metadata_len = strlen(meta),
	};
	kvt_conn_set_timeout(e->c, CTX_TIMEOUT_MS);
	t0 = now_s();
	rc = kvt_ctx_save(e->c, &ctx, &missing);
	t_save = now_s() - t0;
	kvt_conn_set_timeout(e->c, CALL_TIMEOUT_MS);
	if (rc == KVT_ENOENT) {
		fprintf(stderr, PROG ": SAVE '%s': block %zu is stored in no tier (evicted before"
				" it was saved; a larger host tier or nvme_write = through keeps it)\n",
			name, missing);
		return -1;
	}
	if (rc) {
		fprintf(stderr, PROG ": SAVE '%s': %s (%s)%s\n", name, kvt_strerror(rc),
			kvt_errname(rc),
			rc == KVT_EOPNOTSUPP ? ": the daemon has no NVMe tier (nvme_capacity)" :
			rc == KVT_EMSGSIZE ? ": the manifest with its token ids exceeds the daemon's"
					     " max_frame" :
			rc == KVT_E2BIG || rc == KVT_EINVAL ? ": more blocks than max_batch?" : "");
		return -1;
	}
	printf("SAVE    '%s': %zu blocks, %s, %" PRIu64 " token ids, durable on NVMe in %.3f s:"
	       " %.2f GB/s\n", name, e->nblocks, fmt_size(ctx_bytes, s1, sizeof(s1)),
	       e->o.tokens, t_save, (double)ctx_bytes / t_save / 1e9);
	printf("OK: context saved; restore it with --restore %s (after a daemon restart, too)\n",
	       name);
	return 0;
}

/* The loaded manifest is the one this engine would write with these options. */
static int check_manifest(const struct engine *e, const kvt_ctx_info *in)
{
	if (!kvt_key_equal(&in->model_salt, &e->salt)) {
		fprintf(stderr, PROG ": context '%s' was saved with another model salt than its"
				" metadata's model and shape give\n", in->name);
		return -1;
	}
	if (in->nkeys != e->nblocks) {
		fprintf(stderr, PROG ": context '%s' has %zu blocks; its metadata says %zu\n",
			in->name, in->nkeys, e->nblocks);
		return -1;
	}
	for (size_t b = 0; b < e->nblocks; b++) {
		if (!kvt_key_equal(&in->keys[b], &e->keys[b])) {
			fprintf(stderr, PROG ": MISMATCH: key of block %zu of context '%s' is not the"
					" one its token ids and shape give\n", b, in->name);
			return -1;
		}
	}
	if (in->token_count != e->o.tokens || !in->tokens || in->ntokens != e->o.tokens ||
	    memcmp(in->tokens, e->tokens, e->o.tokens * sizeof(*e->tokens)) != 0) {
		fprintf(stderr, PROG ": MISMATCH: the token ids of context '%s' are not the"
				" generator's\n", in->name);
		return -1;
	}
	return 0;
}

/* ---- main ---------------------------------------------------------------------------- */

static int parse_args(int argc, char **argv, struct opts *o)
{
	enum { O_TOKENS = 256, O_BT, O_LAYERS, O_HEADS, O_DIM, O_RB, O_BATCH, O_SEED, O_MODEL,
	       O_SAVE, O_RESTORE, O_DEADLINE };
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
		{ "save", required_argument, NULL, O_SAVE },
		{ "restore", required_argument, NULL, O_RESTORE },
		{ "deadline", required_argument, NULL, O_DEADLINE },
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
		.deadline_ms = 30000,
	};
	while (rc == 0 && (opt = getopt_long(argc, argv, "s:h", longopts, NULL)) != -1) {
		switch (opt) {
		case 's':
			o->socket = optarg;
			break;
		case O_TOKENS:
			rc = parse_u64("tokens", optarg, 1, TOKENS_MAX, &o->tokens);
			o->given |= GIVEN_TOKENS;
			break;
		case O_BT:
			rc = parse_u64("block-tokens", optarg, 1, BT_MAX, &o->block_tokens);
			o->given |= GIVEN_BT;
			break;
		case O_LAYERS:
			rc = parse_u64("layers", optarg, 1, UINT16_MAX, &o->layers);
			o->given |= GIVEN_LAYERS;
			break;
		case O_HEADS:
			rc = parse_u64("kv-heads", optarg, 1, HEADS_MAX, &o->kv_heads);
			o->given |= GIVEN_HEADS;
			break;
		case O_DIM:
			rc = parse_u64("head-dim", optarg, 1, DIM_MAX, &o->head_dim);
			o->given |= GIVEN_DIM;
			break;
		case O_RB:
			rc = parse_u64("region-blocks", optarg, 1, 4096, &o->region_blocks);
			break;
		case O_BATCH:
			rc = parse_u64("batch", optarg, 1, 4096, &o->batch);
			break;
		case O_SEED:
			rc = parse_u64("seed", optarg, 0, UINT64_MAX, &o->seed);
			o->given |= GIVEN_SEED;
			break;
		case O_MODEL:
			o->model = optarg;
			o->given |= GIVEN_MODEL;
			break;
		case O_SAVE:
		case O_RESTORE:
			if (!optarg[0] || strlen(optarg) > KVT_NAME_LEN_MAX) {
				fprintf(stderr, PROG ": --%s wants a name of 1 to %d bytes\n",
					opt == O_SAVE ? "save" : "restore", KVT_NAME_LEN_MAX);
				rc = -1;
			}
			if (opt == O_SAVE)
				o->save = optarg;
			else
				o->restore = optarg;
			break;
		case O_DEADLINE:
			rc = parse_u64("deadline", optarg, 0, UINT32_MAX, &o->deadline_ms);
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
	if (rc == 0 && o->save && o->restore) {
		fprintf(stderr, PROG ": --save and --restore do not go together\n");
		return -1;
	}
	return rc;
}

/* Sizes derived from the shape. Returns 0, or -1 (nothing to cache). */
static int set_shape(struct engine *e, uint64_t *token_bytes, uint64_t *ctx_bytes)
{
	/* Keys and values, bf16: 2 x 2 bytes per layer, head and dimension. The option
	 * bounds keep every product below 2^64. */
	*token_bytes = e->o.layers * 2 * e->o.kv_heads * e->o.head_dim * 2;
	e->block_bytes = *token_bytes * e->o.block_tokens;
	e->nblocks = (size_t)(e->o.tokens / e->o.block_tokens);
	*ctx_bytes = e->block_bytes * e->nblocks;
	e->desc = (kvt_block_desc){ .dtype = KVT_DTYPE_BF16,
				    .layout = LAYOUT_ID,
				    .layers = (uint16_t)e->o.layers,
				    .tokens = (uint32_t)e->o.block_tokens };
	if (e->nblocks == 0) {
		fprintf(stderr, PROG ": %" PRIu64 " tokens do not fill one block of %" PRIu64 "\n",
			e->o.tokens, e->o.block_tokens);
		return -1;
	}
	return 0;
}

int main(int argc, char **argv)
{
	struct engine e;
	char s1[32], s2[32], s3[32], model[256];
	const kvt_server_info *si;
	uint64_t token_bytes = 0, region_bytes, ctx_bytes = 0, cap = 0;
	const char *sock;
	kvt_stats *st;
	kvt_ctx_info *saved = NULL;
	struct saved sv = { 0 };
	size_t found = 0;
	double t0, t_put, t_lookup, t_get, t_load = 0;
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

	/* A restore learns its shape from the saved context, after connecting. */
	if (!e.o.restore && set_shape(&e, &token_bytes, &ctx_bytes))
		return 2;

	rc = kvt_conn_open(e.o.socket, &e.c);
	if (rc) {
		fprintf(stderr, PROG ": cannot reach kvtierd at %s: %s (%s)\n", sock,
			rc == KVT_ENOENT ? "no such socket" : kvt_strerror(rc), kvt_errname(rc));
		return 1;
	}
	kvt_conn_set_timeout(e.c, CALL_TIMEOUT_MS);
	si = kvt_conn_server(e.c);

	if (e.o.restore) {
		/* Nothing is written: the manifest and the blocks come from the daemon. */
		kvt_conn_set_timeout(e.c, CTX_TIMEOUT_MS);
		t0 = now_s();
		rc = kvt_ctx_load(e.c, e.o.restore, KVT_TIER_HOST, (uint32_t)e.o.deadline_ms,
				  &saved);
		t_load = now_s() - t0;
		kvt_conn_set_timeout(e.c, CALL_TIMEOUT_MS);
		if (rc) {
			/* The library's ENOENT message speaks of blocks; here a context is missing. */
			fprintf(stderr, PROG ": LOAD '%s': %s (%s)\n", e.o.restore,
				rc == KVT_ENOENT ? "no such context for this tenant (never saved, "
						   "deleted, or expired)" :
				rc == KVT_EOPNOTSUPP ? "the daemon has no NVMe tier" : kvt_strerror(rc),
				kvt_errname(rc));
			goto out;
		}
		if (meta_apply(e.o.restore, saved->metadata, saved->metadata_len, &e.o, model,
			       sizeof(model), &sv) ||
		    set_shape(&e, &token_bytes, &ctx_bytes))
			goto out;
	}
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
	if (make_keys(&e, e.o.save || e.o.restore) || make_groups(&e))
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

	if (e.o.restore) {
		size_t resident = saved->resident;

		if (check_manifest(&e, saved))
			goto out;
		printf("LOAD    '%s' (saved", e.o.restore);
		if (sv.saved_unix) {
			time_t ts = (time_t)sv.saved_unix;
			struct tm tm;
			char when[32];

			gmtime_r(&ts, &tm);
			strftime(when, sizeof(when), "%Y-%m-%d %H:%M:%S UTC", &tm);
			printf(" %s", when);
		}
		printf(", seed %" PRIu64 "): manifest and token ids match the generator; %zu of %zu"
		       " blocks in the host tier after %.3f s (deadline %" PRIu64 " ms)\n",
		       e.o.seed, resident, e.nblocks, t_load, e.o.deadline_ms);
		/* Every block, in chain order; none may be missing. */
		t0 = now_s();
		if (get_blocks(&e, 0, e.nblocks))
			goto out;
		t_get = now_s() - t0;
		if (e.verified != e.nblocks) {
			fprintf(stderr, PROG ": only %zu of the %zu blocks were read back\n", e.verified,
				e.nblocks);
			goto out;
		}
		printf("GET     %zu blocks, %s in %.3f s: %.2f GB/s (clearing + verifying %.3f s of"
		       " it)\n", e.nblocks, fmt_size(ctx_bytes, s1, sizeof(s1)), t_get,
		       (double)ctx_bytes / t_get / 1e9, e.verify_s);
		printf("RESTORE %s in %.3f s (load %.3f s + GET %.3f s): %.2f GB/s, %.2f GB/s not"
		       " counting this engine's own clearing and checking\n",
		       fmt_size(ctx_bytes, s1, sizeof(s1)), t_load + t_get, t_load, t_get,
		       (double)ctx_bytes / (t_load + t_get) / 1e9,
		       (double)ctx_bytes / (t_load + t_get - e.verify_s) / 1e9);
		if (sv.put_s > 0)
			printf("        written (PUT) in %.3f s at %.2f GB/s when it was saved: the"
			       " restore took %.2fx the write time\n", sv.put_s, sv.put_gbps,
			       (t_load + t_get) / sv.put_s);
		else
			printf("        (the saved metadata has no write time to compare with)\n");
		printf("OK: every byte of the %zu blocks read back matched\n", e.verified);
		status = 0;
		goto out;
	}

	t0 = now_s();
	if (put_all(&e))
		goto out;
	t_put = now_s() - t0;
	printf("PUT     %zu blocks, %s in %.3f s: %.2f GB/s, %.0f tokens/s\n", e.nblocks,
	       fmt_size(ctx_bytes, s1, sizeof(s1)), t_put, (double)ctx_bytes / t_put / 1e9,
	       (double)e.nblocks * (double)e.o.block_tokens / t_put);
	if (e.o.save) {
		if (e.waited)
			printf("        %zu PUTs waited for room in the host tier (blocks still being"
			       " written to NVMe) and were sent again\n", e.waited);
		if (e.refused) {
			fprintf(stderr, PROG ": %zu blocks were refused: not saving an incomplete"
					" context\n", e.refused);
			goto out;
		}
		if (save_context(&e, e.o.save, t_put, ctx_bytes) == 0)
			status = 0;
		goto out;
	}

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
	if (e.went)
		printf("GET     %zu blocks LOOKUP had found were gone by their GET (misses)\n",
		       e.went);
	printf("OK: every byte of the %zu blocks read back matched%s\n", e.verified,
	       found < e.nblocks || e.went ? " (blocks not there were not checked)" : "");
	status = 0;

out:
	/* Closing abandons any tickets still out; the region handle is freed after. */
	kvt_conn_close(e.c);
	kvt_region_destroy(e.region);
	kvt_ctx_free(saved);
	free_groups(&e);
	free(e.keys);
	free(e.tokens);
	return status;
}
