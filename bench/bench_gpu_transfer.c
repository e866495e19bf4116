/*
 * bench_gpu_transfer.c - registered engine GPU memory <-> kvtierd's tiers, through a
 * kvtierd (gpu_backend = cuda) this program starts itself, beside plain
 * cudaMemcpyAsync over pinned host memory measured in the same run.
 *
 * The engine is a vLLM-like paged KV cache of Llama-3-8B: 32 layers, one cudaMalloc
 * per layer holding [K,V][pages][16 tokens][8 KV heads][128] bf16, exported with
 * cudaIpcGetMemHandle and registered with kvt_gpu_region_register (device UUID from
 * cudaGetDeviceProperties). A block is 512 tokens = 32 pages = 64 MiB; every block's
 * pages are in random order in the cache, as an engine's block table has them.
 *
 * Part 1 (-n BLOCKS, -r ROUNDS): D2H and H2D GB/s of the daemon's GPU path.
 *   - D2H: kvt_gpu_put of N blocks (the daemon gathers the pages on the GPU and
 *     copies them into its host tier), requests of -b blocks, wall time of the calls;
 *   - H2D: kvt_gpu_get of the same blocks into a second, disjoint page set (the
 *     daemon copies host tier -> GPU and scatters into the pages);
 *   - beside them, on one CUDA stream, cudaMemcpyAsync of the same total bytes
 *     between a device buffer and cudaHostAlloc'd (pinned) memory, one copy per
 *     64 MiB block, wall time including cudaStreamSynchronize.
 *   One untimed warm-up round, then -r rounds, the daemon first in even rounds and
 *   the memcpy first in odd ones; fresh keys every round (a PUT of a present key is
 *   not copied), deleted after it. Figures are medians of the rounds (min, max
 *   beside); the ratio daemon/memcpy is printed against the goal >= 0.90x.
 *   Checks: before each round's GET the destination pages are zeroed; after it every
 *   destination page (all layers, K and V) is copied back and compared word for word
 *   with the pattern of the source page it must hold, and the source pages with
 *   theirs. In the warm-up, block 0 as a plain kvt_block_get returns it must equal
 *   the packed [layer][plane][token][head][dim] of its source pages (the PUT side
 *   alone). The daemon's gpu.d2h_bytes / gpu.h2d_bytes must grow by what was moved.
 *
 * Part 2 (-c TOKENS, -R ROUNDS): page-in of a long context, by default 262144 tokens
 *   (32 GiB, 512 blocks): a fresh daemon whose host tier (host_capacity) is sized
 *   from the context; the context is filled into GPU pages and stored with
 *   kvt_gpu_put (timed once, reported beside pinned D2H), then each round zeroes the
 *   whole cache and pages the context in with kvt_gpu_get in requests of -b blocks
 *   into a new random page order, timed, and checked in full (every page of every
 *   layer copied back and compared). Beside it each round: cudaMemcpyAsync H2D (and
 *   D2H) of the same total bytes between a pinned buffer (at most 1 GiB, reused
 *   cyclically) and the cache's layer allocations, in 64 MiB copies on one stream.
 *   With -T2 SIZE, also from the NVMe tier: a daemon with an NVMe tier
 *   (nvme_write = through, nvme_admission = always, nvme_codec = raw) stores the
 *   first SIZE bytes of the context (whole blocks, at most the context), waits until
 *   STATS t2.blocks says all are durable, and stops; each round then starts a daemon
 *   on the same data directory (cold host tier) and pages the blocks in with
 *   kvt_gpu_get (the daemon reads them up from NVMe, with its read-ahead), timed and
 *   checked in full. The NVMe figures stand beside the same pinned H2D baseline.
 *
 * Before anything runs, the machine is checked: MemAvailable must hold the largest
 * part's host tier, pinned baseline and staging (plus 1 GiB), the GPU must have the
 * cache's memory free, and with -T2 the directory the NVMe tier's size; if not, the
 * program says what it needs and what there is, and exits 1 (use a smaller -c, -n
 * or -T2 SIZE).
 *
 * Block contents are a pseudo-random pattern per (layer, plane, page), so a copy
 * that lands in the wrong page, layer or plane, or does not happen, fails the check.
 * Every daemon runs on its own socket and data directory in a temporary directory
 * under -d (default /var/tmp), removed at the end; a fresh daemon serves each part
 * and is stopped with SIGTERM after it. The whole run is bounded by -l SECONDS
 * (default 1800: SIGALRM kills the daemon and removes the directory) and every
 * daemon call by a 120 s timeout. -o FILE writes the report too.
 *
 * Examples:  bench_gpu_transfer -o gpu_transfer.txt
 *            bench_gpu_transfer -c 65536 -T2 8G          (8 GiB context, all from NVMe)
 *            bench_gpu_transfer -P 1 -n 16 -r 9          (part 1 only)
 *
 * Exit status: 0 done (whether or not the goal was met), 1 failure (a wrong byte,
 * a daemon that failed, a machine too small), 2 bad arguments, 77 skipped: needs a
 * CUDA device, and without one it says so and exits 77.
 */
#include <cuda_runtime_api.h>
#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <getopt.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "bench_daemon.h"
#include "bench_util.h"
#include "kvtier.h"

#ifndef KVT_BIN_DIR
#define KVT_BIN_DIR "build/bin"
#endif

#define PROG "bench_gpu_transfer"
#define MIB (1024ull * 1024)
#define GIB (1024ull * MIB)

/* Llama-3-8B, vLLM's per-layer [2][pages][16][8][128] bf16. */
#define LAYERS 32
#define PLANES 2
#define HEADS 8
#define HEAD_DIM 128
#define ELEM 2
#define PAGE_TOKENS 16
#define ROW_BYTES (HEADS * HEAD_DIM * ELEM)                       /* 2 KiB */
#define PAGE_BYTES ((size_t)PAGE_TOKENS * ROW_BYTES)               /* 32 KiB per plane */
#define PAGE_WORDS (PAGE_BYTES / 8)
#define TOKEN_BYTES ((uint64_t)LAYERS * PLANES * ROW_BYTES)        /* 128 KiB */
#define BLOCK_TOKENS 512u
#define PPB (BLOCK_TOKENS / PAGE_TOKENS)                           /* pages per block */
#define BLOCK_BYTES (TOKEN_BYTES * BLOCK_TOKENS)                   /* 64 MiB */

#define CALL_TIMEOUT_MS 120000
#define START_TIMEOUT_MS 180000 /* a 32 GiB host tier is faulted in and pinned first */
#define STOP_TIMEOUT_MS 120000
#define DURABLE_TIMEOUT_MS 60000 /* no t2.blocks progress for this long: give up */
#define HOST_SLACK (512 * MIB)
#define PINNED_MAX GIB           /* part 2's pinned baseline buffer, reused cyclically */
#define RAM_MARGIN GIB
#define GPU_MARGIN (3 * GIB)     /* the daemon's CUDA context and per-worker staging */
#define MAX_EXTRA 16
#define MAX_ROUNDS 64

/* ---- options ----------------------------------------------------------------------- */

struct opts {
	const char *dir;
	const char *daemon;
	const char *out;
	const char *extra[MAX_EXTRA];
	unsigned nextra;
	unsigned blocks;        /* part 1 */
	unsigned rounds;        /* part 1 */
	uint64_t ctx_tokens;    /* part 2; 0 = skip */
	unsigned pagein_rounds; /* part 2 and T2 */
	unsigned batch;         /* blocks per kvt_gpu_put / kvt_gpu_get request */
	uint64_t t2_bytes;      /* 0 = no NVMe page-in */
	int device;
	unsigned parts;         /* bit 0: part 1, bit 1: part 2 */
	unsigned limit_s;
};

static void usage(FILE *f)
{
	fprintf(f,
		"usage: " PROG " [-n BLOCKS] [-r ROUNDS] [-c TOKENS] [-R ROUNDS] [-b BLOCKS]\n"
		"                          [-T2 SIZE] [-P 1|2] [-g DEVICE] [-d DIR] [-D KVTIERD]\n"
		"                          [-O KEY=VALUE]... [-l SECONDS] [-o FILE]\n"
		"  -n BLOCKS   part 1: blocks of 512 tokens (64 MiB) per direction and round\n"
		"              (default 8 = 512 MiB)\n"
		"  -r ROUNDS   part 1: timed rounds after one warm-up (default 5)\n"
		"  -c TOKENS   part 2: context paged in, a multiple of 512 (default 262144 =\n"
		"              32 GiB; the daemon's host tier is sized from it; 0: skip part 2)\n"
		"  -R ROUNDS   part 2 (and -T2): page-in rounds (default 3)\n"
		"  -b BLOCKS   blocks per kvt_gpu_put/kvt_gpu_get request (default 8)\n"
		"  -T2 SIZE    also page in SIZE bytes of the context (K/M/G suffixes, whole\n"
		"              blocks, at most -c) from the NVMe tier, under -d; the daemon is\n"
		"              restarted before each round so its host tier is cold\n"
		"  -P PART     run part 1 or part 2 only (default both)\n"
		"  -g DEVICE   CUDA device (default 0)\n"
		"  -d DIR      parent of the temporary directory for the daemons' sockets and\n"
		"              data (default /var/tmp)\n"
		"  -D KVTIERD  daemon binary (default " KVT_BIN_DIR "/kvtierd)\n"
		"  -O KEY=VAL  one more kvtierd setting for every daemon (repeatable)\n"
		"  -l SECONDS  time limit for the whole run (default 1800)\n"
		"  -o FILE     also write the report to FILE\n"
		"Needs a CUDA device; exits 77 without one.\n");
}

static double gib(uint64_t b)
{
	return (double)b / (double)GIB;
}

/* ---- cleanup, failure ------------------------------------------------------------------ */

static char cur_log[400];            /* the running daemon's log, for failures */

/* Only async-signal-safe calls: kill the daemon, remove the temporary directory
 * (with rm, since nftw is not safe here), then die of the signal. */
static void on_signal(int sig)
{
	static const char msg[] = PROG ": time limit (-l) reached; stopping\n";

	if (sig == SIGALRM) {
		ssize_t w = write(STDERR_FILENO, msg, sizeof(msg) - 1);
		(void)w;
	}
	bench_on_signal(sig);
}

/* Say why, show the daemon's log, kill it, remove the directory, exit 1. */
__attribute__((noreturn, format(printf, 1, 2)))
static void fail(const char *fmt, ...)
{
	va_list ap;
	pid_t p = bench_child_pid;

	fflush(stdout);
	fprintf(stderr, PROG ": ");
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fputc('\n', stderr);
	if (p > 0) {
		bench_daemon_log_tail(cur_log);
		kill(p, SIGKILL);
		waitpid(p, NULL, 0);
		bench_child_pid = -1;
	}
	if (bench_tmp_dir[0])
		bench_rm_tree(bench_tmp_dir);
	exit(1);
}

#define CU(call)                                                                        \
	do {                                                                            \
		cudaError_t e_ = (call);                                                \
		if (e_ != cudaSuccess)                                                  \
			fail("%s: %s (line %d)", #call, cudaGetErrorString(e_), __LINE__); \
	} while (0)

/* ---- the daemon ------------------------------------------------------------------------ */

struct dconf {
	uint64_t host_capacity;
	uint64_t nvme_capacity; /* 0: no NVMe tier */
};

/* d's paths under bench_tmp_dir/name (made here). */
static void daemon_init(struct bench_daemon *d, const char *name)
{
	char dir[300];

	snprintf(dir, sizeof(dir), "%s/%s", bench_tmp_dir, name);
	if (bench_daemon_init(d, dir) != 0)
		fail("mkdir %s: %s", d->dir, strerror(errno));
}

/* Start kvtierd with c on d and connect to it; fails the run if it does not come up. */
static kvt_conn *daemon_start(const struct opts *o, const struct dconf *c, struct bench_daemon *d)
{
	char kv[12 + MAX_EXTRA][512];
	const char *argv[2 + 2 * (12 + MAX_EXTRA) + 1];
	size_t n = 0, nkv = 0, len;
	kvt_conn *conn = NULL;
	char why[512];
	int rc;

	snprintf(kv[nkv++], sizeof(kv[0]), "socket=%s", d->sock);
	snprintf(kv[nkv++], sizeof(kv[0]), "data_dir=%s", d->data);
	snprintf(kv[nkv++], sizeof(kv[0]), "gpu_backend=cuda");
	snprintf(kv[nkv++], sizeof(kv[0]), "gpu_pool_size=0");
	snprintf(kv[nkv++], sizeof(kv[0]), "host_capacity=%lluMiB",
		 (unsigned long long)(c->host_capacity / MIB));
	if (c->nvme_capacity) {
		snprintf(kv[nkv++], sizeof(kv[0]), "nvme_capacity=%lluGiB",
			 (unsigned long long)(c->nvme_capacity / GIB));
		snprintf(kv[nkv++], sizeof(kv[0]), "nvme_write=through");
		snprintf(kv[nkv++], sizeof(kv[0]), "nvme_admission=always");
		snprintf(kv[nkv++], sizeof(kv[0]), "nvme_codec=raw");
	} else {
		snprintf(kv[nkv++], sizeof(kv[0]), "nvme_capacity=0");
	}
	snprintf(kv[nkv++], sizeof(kv[0]), "log_level=info");
	for (unsigned i = 0; i < o->nextra; i++)
		snprintf(kv[nkv++], sizeof(kv[0]), "%s", o->extra[i]);
	argv[n++] = o->daemon;
	for (size_t i = 0; i < nkv; i++) {
		argv[n++] = "-o";
		argv[n++] = kv[i];
	}
	argv[n] = NULL;
	len = (size_t)snprintf(d->cmd, sizeof(d->cmd), "kvtierd");
	for (size_t i = 2; i < nkv; i++) /* socket and data_dir say nothing */
		if (len < sizeof(d->cmd))
			len += (size_t)snprintf(d->cmd + len, sizeof(d->cmd) - len, " -o %s", kv[i]);

	rc = bench_daemon_spawn(PROG, d, o->daemon, argv, NULL, 0);
	if (rc != 0)
		fail("fork: %s", strerror(-rc));
	snprintf(cur_log, sizeof(cur_log), "%s", d->log);
	rc = bench_daemon_connect(d, START_TIMEOUT_MS, CALL_TIMEOUT_MS, NULL, &conn, why,
				  sizeof(why));
	if (rc == -ECHILD) {
		bench_daemon_log_tail(d->log);
		fail("%s (%s)", why, o->daemon);
	}
	if (rc != 0)
		fail("%s", why);
	return conn;
}

/* SIGTERM and wait (SIGKILL after STOP_TIMEOUT_MS); fails the run unless it exits 0. */
static void daemon_stop(struct bench_daemon *d)
{
	int rc = bench_daemon_stop(PROG, d, STOP_TIMEOUT_MS);

	if (rc != 0)
		fail("kvtierd exited with status %d after SIGTERM", rc);
	cur_log[0] = '\0';
}

/* A numeric STATS entry (fails the run if the daemon does not answer). */
static uint64_t stat_u64(kvt_conn *c, const char *name)
{
	kvt_stats *s = NULL;
	uint64_t v = 0;
	int rc = kvt_stats_get(c, &s);

	if (rc)
		fail("STATS: %s", kvt_strerror(rc));
	if (!kvt_stats_find(s, name, &v))
		v = 0;
	kvt_stats_free(s);
	return v;
}

static void stat_text(kvt_conn *c, const char *name, char *buf, size_t cap)
{
	kvt_stats *s = NULL;

	snprintf(buf, cap, "(none)");
	if (kvt_stats_get(c, &s) != 0)
		return;
	for (size_t i = 0; i < kvt_stats_count(s); i++) {
		const char *n = NULL, *t = NULL;
		uint64_t v;

		if (kvt_stats_entry(s, i, &n, &v, &t) == 0 && t && strcmp(n, name) == 0) {
			snprintf(buf, cap, "%s", t);
			break;
		}
	}
	kvt_stats_free(s);
}

/* The first line of the log containing needle, from needle on. */
static void grep_line(const char *log, const char *needle, char *out, size_t cap)
{
	char line[1024];
	FILE *f = fopen(log, "r");

	snprintf(out, cap, "(not in the log)");
	if (!f)
		return;
	while (fgets(line, sizeof(line), f)) {
		char *p = strstr(line, needle);

		if (p) {
			line[strcspn(line, "\n")] = '\0';
			snprintf(out, cap, "%s", p);
			break;
		}
	}
	fclose(f);
}

/* The daemon must copy with CUDA: say what it reports, once per part. */
static void daemon_require_cuda(struct bench_out *out, kvt_conn *c, const struct bench_daemon *d,
				bool print)
{
	char backend[256], line[1024];

	stat_text(c, "gpu.backend", backend, sizeof(backend));
	if (strncmp(backend, "cuda", 4) != 0) {
		char dev[256];

		stat_text(c, "gpu.device", dev, sizeof(dev));
		fail("the daemon's GPU backend is '%s' (%s), not cuda; is %s built with CUDA=1?",
		     backend, dev, d->cmd);
	}
	if (!print)
		return;
	grep_line(d->log, "GPU transfers:", line, sizeof(line));
	bench_printf(out, "daemon:  %s\n", d->cmd);
	bench_printf(out, "         log: %s\n", line);
}

/* ---- page contents -------------------------------------------------------------------- */

static uint64_t mix64(uint64_t x)
{
	x += 0x9e3779b97f4a7c15ull;
	x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
	x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
	return x ^ (x >> 31);
}

static uint64_t page_seed(uint32_t layer, uint32_t plane, uint64_t page, uint64_t salt)
{
	return mix64(salt ^ ((uint64_t)layer << 56) ^ ((uint64_t)plane << 48) ^ page) | 1;
}

static void page_fill(uint64_t *w, uint64_t seed)
{
	uint64_t x = seed;

	for (size_t i = 0; i < PAGE_WORDS; i++)
		w[i] = bench_rand64(&x);
}

/* Index of the first word that differs from the pattern, or -1. */
static long page_diff(const uint64_t *w, uint64_t seed)
{
	uint64_t x = seed;

	for (size_t i = 0; i < PAGE_WORDS; i++)
		if (w[i] != bench_rand64(&x))
			return (long)i;
	return -1;
}

static uint64_t rng_state = 0x6a09e667f3bcc909ull;

/* A random permutation of 0..n-1. */
static void shuffle(uint32_t *v, size_t n)
{
	for (size_t i = 0; i < n; i++)
		v[i] = (uint32_t)i;
	for (size_t i = n; i > 1; i--) {
		size_t j = (size_t)(bench_rand64(&rng_state) % i);
		uint32_t t = v[i - 1];

		v[i - 1] = v[j];
		v[j] = t;
	}
}

/* ---- the engine's paged KV cache ------------------------------------------------------ */

struct engine {
	uint64_t num_pages;         /* per layer */
	size_t layer_bytes;         /* one allocation: K and V planes */
	unsigned char *dev[LAYERS];
	kvt_gpu_buffer buf[LAYERS];
	kvt_kv_layer layer[LAYERS];
	kvt_kv_layout L;
	unsigned char *stage;       /* host, layer_bytes: fill and check */
	uint8_t uuid[KVT_GPU_UUID_SIZE];
};

static void engine_alloc(struct engine *e, uint64_t num_pages, const uint8_t *uuid)
{
	memset(e, 0, sizeof(*e));
	e->num_pages = num_pages;
	e->layer_bytes = (size_t)PLANES * num_pages * PAGE_BYTES;
	memcpy(e->uuid, uuid, KVT_GPU_UUID_SIZE);
	for (int l = 0; l < LAYERS; l++) {
		cudaIpcMemHandle_t h;

		CU(cudaMalloc((void **)&e->dev[l], e->layer_bytes));
		CU(cudaIpcGetMemHandle(&h, e->dev[l]));
		memcpy(e->buf[l].ipc_handle, &h, sizeof(h));
		e->buf[l].size = e->layer_bytes;
		e->layer[l] = (kvt_kv_layer){ .buffer = (uint32_t)l, .offset = 0 };
	}
	e->L = (kvt_kv_layout){
		.layers = LAYERS, .planes = PLANES, .heads = HEADS, .head_dim = HEAD_DIM,
		.elem_size = ELEM, .page_tokens = PAGE_TOKENS, .num_pages = num_pages,
		.plane_stride = (int64_t)(num_pages * PAGE_BYTES), .page_stride = (int64_t)PAGE_BYTES,
		.token_stride = ROW_BYTES, .head_stride = HEAD_DIM * ELEM, .dim_stride = ELEM,
		.dtype = KVT_DTYPE_BF16, .layout_id = 1, .layer = e->layer,
	};
	e->stage = malloc(e->layer_bytes);
	if (!e->stage)
		fail("out of memory for %zu MiB of staging", e->layer_bytes >> 20);
}

static void engine_free(struct engine *e)
{
	for (int l = 0; l < LAYERS; l++)
		if (e->dev[l])
			cudaFree(e->dev[l]);
	free(e->stage);
	memset(e, 0, sizeof(*e));
}

static uint32_t engine_register(struct engine *e, kvt_conn *c)
{
	uint32_t id = 0;
	int rc = kvt_gpu_region_register(c, e->buf, LAYERS, &e->L, e->uuid, &id);

	if (rc)
		fail("kvt_gpu_region_register: %s (%s)", kvt_strerror(rc), kvt_errname(rc));
	return id;
}

static unsigned char *page_at(const struct engine *e, unsigned char *base, uint32_t plane,
			      uint64_t page)
{
	return base + (size_t)plane * e->num_pages * PAGE_BYTES + (size_t)page * PAGE_BYTES;
}

/* Pattern (salt) into the pages with pages[g] set (NULL: all), zeros elsewhere. */
static void engine_fill(struct engine *e, const uint8_t *pages, uint64_t salt)
{
	for (uint32_t l = 0; l < LAYERS; l++) {
		if (pages)
			memset(e->stage, 0, e->layer_bytes);
		for (uint32_t p = 0; p < PLANES; p++)
			for (uint64_t g = 0; g < e->num_pages; g++)
				if (!pages || pages[g])
					page_fill((uint64_t *)(void *)page_at(e, e->stage, p, g),
						  page_seed(l, p, g, salt));
		CU(cudaMemcpy(e->dev[l], e->stage, e->layer_bytes, cudaMemcpyHostToDevice));
	}
}

/* Zero pages[0..n) in every layer and plane (NULL: the whole cache). */
static void engine_clear(struct engine *e, const uint32_t *pages, size_t n, cudaStream_t st)
{
	for (int l = 0; l < LAYERS; l++) {
		if (!pages) {
			CU(cudaMemsetAsync(e->dev[l], 0, e->layer_bytes, st));
			continue;
		}
		for (uint32_t p = 0; p < PLANES; p++)
			for (size_t i = 0; i < n; i++)
				CU(cudaMemsetAsync(page_at(e, e->dev[l], p, pages[i]), 0, PAGE_BYTES,
						   st));
	}
	CU(cudaStreamSynchronize(st));
}

/*
 * Copy every layer back and check that page dst[i] holds the pattern of page
 * src[i] (salt), both planes, for i < n. Returns the number of bad pages (the first
 * one is described on stderr).
 */
static uint64_t engine_check(struct engine *e, const uint32_t *dst, const uint32_t *src, size_t n,
			     uint64_t salt)
{
	uint64_t bad = 0;

	for (uint32_t l = 0; l < LAYERS; l++) {
		CU(cudaMemcpy(e->stage, e->dev[l], e->layer_bytes, cudaMemcpyDeviceToHost));
		for (size_t i = 0; i < n; i++)
			for (uint32_t p = 0; p < PLANES; p++) {
				long w = page_diff((const uint64_t *)(const void *)
							   page_at(e, e->stage, p, dst[i]),
						   page_seed(l, p, src[i], salt));

				if (w >= 0 && bad++ == 0)
					fprintf(stderr, PROG ": layer %u plane %u page %u (should hold "
							"page %u) differs at byte %ld\n",
						l, p, dst[i], src[i], w * 8);
			}
	}
	return bad;
}

/* ---- transfers ---------------------------------------------------------------------------- */

static void make_keys(kvt_key *keys, size_t n, uint32_t part, uint32_t round, bool chain)
{
	static const kvt_salt_params sp = {
		.model_id = "meta-llama/Meta-Llama-3-8B",
		.weights_version = PROG,
		.kv_dtype = "bf16",
		.layout = "vllm-nhd",
		.tp_size = 1,
		.block_tokens = BLOCK_TOKENS,
	};
	kvt_key salt;

	if (kvt_key_salt(&sp, &salt) != 0)
		fail("kvt_key_salt failed");
	for (size_t i = 0; i < n; i++) {
		uint32_t t[3] = { part, round, (uint32_t)i };

		kvt_key_chain(&salt, chain && i ? &keys[i - 1] : NULL, t, 3, &keys[i]);
	}
}

/*
 * kvt_gpu_put (put) or kvt_gpu_get of blocks 0..n-1 in requests of batch blocks:
 * block i is keys[i], tokens i*512.., pages[i*32 .. i*32+32). With chain, a PUT
 * names block i-1 as the parent of block i. Fails the run on any error.
 */
static void gpu_xfer(kvt_conn *c, bool put, uint32_t region, const kvt_key *keys, bool chain,
		     const uint32_t *pages, size_t n, unsigned batch, kvt_gpu_item *items)
{
	for (size_t i = 0; i < n; i += batch) {
		size_t m = n - i < batch ? n - i : batch;
		int rc;

		for (size_t j = 0; j < m; j++) {
			size_t b = i + j;

			items[j] = (kvt_gpu_item){ .key = keys[b], .region_id = region,
						   .first_token = (uint32_t)(b * BLOCK_TOKENS),
						   .ntokens = BLOCK_TOKENS, .pages = pages + b * PPB,
						   .npages = PPB };
			if (put && chain && b > 0)
				items[j].parent = keys[b - 1];
		}
		rc = put ? kvt_gpu_put(c, items, m) : kvt_gpu_get(c, items, m);
		if (rc) {
			for (size_t j = 0; j < m; j++)
				if (items[j].status)
					fail("%s of block %zu: %s (%s)", put ? "kvt_gpu_put" : "kvt_gpu_get",
					     i + j, kvt_strerror(items[j].status),
					     kvt_errname(items[j].status));
			fail("%s of blocks %zu..%zu: %s (%s)", put ? "kvt_gpu_put" : "kvt_gpu_get", i,
			     i + m - 1, kvt_strerror(rc), kvt_errname(rc));
		}
	}
}

static double gpu_xfer_timed(kvt_conn *c, bool put, uint32_t region, const kvt_key *keys,
			     bool chain, const uint32_t *pages, size_t n, unsigned batch,
			     kvt_gpu_item *items)
{
	uint64_t t0 = bench_now_ns();

	gpu_xfer(c, put, region, keys, chain, pages, n, batch, items);
	return (double)(bench_now_ns() - t0) / 1e9;
}

/* Device memory the memcpy baseline copies from or to. */
struct drange {
	unsigned char *p;
	size_t len;
};

/*
 * cudaMemcpyAsync between the device ranges and the pinned buffer host[0..hsize),
 * in copies of at most one block (64 MiB), all on stream st; the host offset wraps
 * around. Wall seconds until cudaStreamSynchronize returns.
 */
static double memcpy_pass(const struct drange *r, size_t nr, unsigned char *host, size_t hsize,
			  bool h2d, cudaStream_t st)
{
	size_t hoff = 0;
	uint64_t t0 = bench_now_ns();

	for (size_t i = 0; i < nr; i++)
		for (size_t off = 0; off < r[i].len;) {
			size_t piece = r[i].len - off < BLOCK_BYTES ? r[i].len - off : BLOCK_BYTES;

			if (hoff + piece > hsize)
				hoff = 0;
			if (h2d)
				CU(cudaMemcpyAsync(r[i].p + off, host + hoff, piece,
						   cudaMemcpyHostToDevice, st));
			else
				CU(cudaMemcpyAsync(host + hoff, r[i].p + off, piece,
						   cudaMemcpyDeviceToHost, st));
			hoff += piece;
			off += piece;
		}
	CU(cudaStreamSynchronize(st));
	return (double)(bench_now_ns() - t0) / 1e9;
}

/* ---- figures ---------------------------------------------------------------------------- */

static int cmp_double(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;

	return x < y ? -1 : x > y;
}

struct series {
	double v[MAX_ROUNDS]; /* GB/s */
	unsigned n;
};

static void series_add(struct series *s, double bytes, double seconds)
{
	if (s->n < MAX_ROUNDS)
		s->v[s->n++] = seconds > 0 ? bytes / seconds / 1e9 : 0;
}

static double series_median(const struct series *s, double *min, double *max)
{
	double v[MAX_ROUNDS];

	if (!s->n) {
		*min = *max = 0;
		return 0;
	}
	memcpy(v, s->v, s->n * sizeof(double));
	qsort(v, s->n, sizeof(double), cmp_double);
	*min = v[0];
	*max = v[s->n - 1];
	return s->n % 2 ? v[s->n / 2] : (v[s->n / 2 - 1] + v[s->n / 2]) / 2;
}

/* One table row; returns the median. */
static double row(struct bench_out *out, const char *dir, const char *what, const struct series *s,
		  double base)
{
	double mn, mx, med = series_median(s, &mn, &mx);

	if (base > 0)
		bench_printf(out, "%-4s %-52s %8.2f %8.2f %8.2f %8.2fx\n", dir, what, med, mn, mx,
			     med / base);
	else
		bench_printf(out, "%-4s %-52s %8.2f %8.2f %8.2f %9s\n", dir, what, med, mn, mx, "-");
	return med;
}

static void table_head(struct bench_out *out)
{
	bench_printf(out, "%-4s %-52s %8s %8s %8s %9s\n", "dir", "copy", "GB/s", "min", "max",
		     "vs memcpy");
}

/* ---- machine checks ------------------------------------------------------------------- */

/* MemAvailable from /proc/meminfo in bytes (0 if unknown). */
static uint64_t mem_available(void)
{
	char line[256];
	unsigned long long kb = 0;
	FILE *f = fopen("/proc/meminfo", "r");

	if (!f)
		return 0;
	while (fgets(line, sizeof(line), f))
		if (sscanf(line, "MemAvailable: %llu kB", &kb) == 1)
			break;
	fclose(f);
	return (uint64_t)kb * 1024;
}

/* What a part needs of the host, for the check and the report. */
struct need {
	uint64_t host_tier, pinned, staging, other;
};

static uint64_t need_total(const struct need *n)
{
	return n->host_tier + n->pinned + n->staging + n->other + RAM_MARGIN;
}

static uint64_t align_up(uint64_t v, uint64_t a)
{
	return (v + a - 1) / a * a;
}

static struct need need_part1(unsigned blocks)
{
	struct need n = {
		/* room for a round's blocks twice over, so deletes need not be instant */
		.host_tier = 2 * (uint64_t)blocks * BLOCK_BYTES + HOST_SLACK,
		.pinned = (uint64_t)blocks * BLOCK_BYTES,
		.staging = (size_t)PLANES * 2 * blocks * PPB * PAGE_BYTES,
		.other = BLOCK_BYTES, /* the host region for the PUT-side check */
	};
	return n;
}

static struct need need_part2(uint64_t tokens)
{
	uint64_t bytes = tokens * TOKEN_BYTES;
	struct need n = {
		.host_tier = bytes + HOST_SLACK,
		.pinned = bytes < PINNED_MAX ? bytes : PINNED_MAX,
		.staging = (size_t)PLANES * (tokens / PAGE_TOKENS) * PAGE_BYTES,
		.other = 0,
	};
	return n;
}

static void print_pcie(struct bench_out *out, int dev)
{
	char bus[32] = "", path[160], v[4][64];
	static const char *const files[4] = { "current_link_speed", "current_link_width",
					       "max_link_speed", "max_link_width" };
	int numa = -1;
	bool ok = true;

	if (cudaDeviceGetPCIBusId(bus, sizeof(bus), dev) != cudaSuccess) {
		bench_printf(out, "pcie:    unknown\n");
		return;
	}
	for (char *p = bus; *p; p++)
		*p = (char)tolower((unsigned char)*p);
	for (int i = 0; i < 4; i++) {
		FILE *f;

		snprintf(path, sizeof(path), "/sys/bus/pci/devices/%s/%s", bus, files[i]);
		v[i][0] = '\0';
		f = fopen(path, "r");
		if (f) {
			if (!fgets(v[i], sizeof(v[i]), f))
				v[i][0] = '\0';
			fclose(f);
		}
		v[i][strcspn(v[i], "\n")] = '\0';
		if (!v[i][0])
			ok = false;
	}
	snprintf(path, sizeof(path), "/sys/bus/pci/devices/%s/numa_node", bus);
	{
		FILE *f = fopen(path, "r");

		if (f) {
			if (fscanf(f, "%d", &numa) != 1)
				numa = -1;
			fclose(f);
		}
	}
	if (ok)
		bench_printf(out, "pcie:    %s, link %s x%s (max %s x%s), NUMA node %d (sysfs)\n", bus,
			     v[0], v[1], v[2], v[3], numa);
	else
		bench_printf(out, "pcie:    %s (link speed and width not readable from sysfs)\n", bus);
}

/* ---- part 1 ---------------------------------------------------------------------------- */

static void part1(const struct opts *o, struct bench_out *out, const uint8_t *uuid,
		  cudaStream_t st)
{
	const size_t n = o->blocks, npages = 2 * n * PPB;
	const uint64_t bytes = (uint64_t)n * BLOCK_BYTES, salt = 0x11;
	const struct need nd = need_part1(o->blocks);
	struct dconf dc = { .host_capacity = align_up(nd.host_tier, MIB), .nvme_capacity = 0 };
	struct series put = { .n = 0 }, get = { .n = 0 }, d2h = { .n = 0 }, h2d = { .n = 0 };
	struct bench_daemon d;
	struct engine e;
	uint32_t *perm = malloc(npages * sizeof(uint32_t));
	uint32_t *chk_dst = malloc(2 * n * PPB * sizeof(uint32_t));
	uint32_t *chk_src = malloc(2 * n * PPB * sizeof(uint32_t));
	uint8_t *is_src = calloc(npages, 1);
	kvt_key *keys = malloc(n * sizeof(kvt_key));
	kvt_gpu_item *items = malloc(o->batch * sizeof(kvt_gpu_item));
	unsigned char *dbuf = NULL, *hbuf = NULL;
	const uint32_t *src, *dst;
	uint64_t d2h0, h2d0, d2h1, h2d1, bad;
	kvt_conn *c;
	uint32_t region;
	struct drange dr;

	if (!perm || !chk_dst || !chk_src || !is_src || !keys || !items)
		fail("out of memory");
	bench_printf(out, "\n== part 1: engine pages <-> host tier through kvtierd, %zu blocks of "
			  "512 tokens (%.0f MiB) per direction ==\n",
		     n, (double)bytes / MIB);
	daemon_init(&d, "part1");
	c = daemon_start(o, &dc, &d);
	daemon_require_cuda(out, c, &d, true);

	/* Two disjoint page sets in one random order: sources, then destinations. */
	engine_alloc(&e, npages, uuid);
	shuffle(perm, npages);
	src = perm;
	dst = perm + n * PPB;
	for (size_t i = 0; i < n * PPB; i++) {
		is_src[src[i]] = 1;
		chk_dst[i] = dst[i]; /* destinations hold their sources' pattern */
		chk_src[i] = src[i];
		chk_dst[n * PPB + i] = src[i]; /* sources are untouched */
		chk_src[n * PPB + i] = src[i];
	}
	engine_fill(&e, is_src, salt);
	region = engine_register(&e, c);

	CU(cudaMalloc((void **)&dbuf, bytes));
	CU(cudaMemset(dbuf, 0x5a, bytes));
	CU(cudaHostAlloc((void **)&hbuf, bytes, cudaHostAllocDefault));
	memset(hbuf, 0xa5, bytes);
	dr = (struct drange){ dbuf, bytes };

	bench_printf(out, "engine:  %zu pages of 16 tokens per layer (%.0f MiB per layer, %.2f GiB "
			  "in all); blocks from %zu random source pages into %zu other random pages\n",
		     npages, (double)e.layer_bytes / MIB, gib(e.layer_bytes * LAYERS), n * PPB,
		     n * PPB);
	bench_printf(out, "daemon:  %u blocks per kvt_gpu_put/kvt_gpu_get request; wall time of the "
			  "calls\n", o->batch);
	bench_printf(out, "memcpy:  cudaMemcpyAsync, one per 64 MiB block, one stream, between a "
			  "%.0f MiB device buffer and cudaHostAlloc'd memory; wall time to "
			  "cudaStreamSynchronize\n", (double)bytes / MIB);
	bench_printf(out, "rounds:  1 warm-up (untimed), %u timed; the daemon first in even rounds, "
			  "memcpy first in odd ones\n\n", o->rounds);

	d2h0 = stat_u64(c, "gpu.d2h_bytes");
	h2d0 = stat_u64(c, "gpu.h2d_bytes");
	for (unsigned r = 0; r <= o->rounds; r++) { /* r == 0: warm-up */
		bool timed = r > 0, daemon_first = r % 2 == 0;
		double tp = 0, tg = 0, tdh = 0, thd = 0;
		int rc;

		make_keys(keys, n, 1, r, false);
		engine_clear(&e, dst, n * PPB, st);
		for (int k = 0; k < 2; k++) {
			if ((k == 0) == daemon_first) {
				tp = gpu_xfer_timed(c, true, region, keys, false, src, n, o->batch,
						    items);
				tg = gpu_xfer_timed(c, false, region, keys, false, dst, n, o->batch,
						    items);
			} else {
				tdh = memcpy_pass(&dr, 1, hbuf, bytes, false, st);
				thd = memcpy_pass(&dr, 1, hbuf, bytes, true, st);
			}
		}
		bad = engine_check(&e, chk_dst, chk_src, 2 * n * PPB, salt);
		if (bad)
			fail("part 1, round %u: %llu pages (of %zu) differ after kvt_gpu_put + "
			     "kvt_gpu_get", r, (unsigned long long)bad, 2 * n * PPB * LAYERS * PLANES);
		if (r == 0) {
			/* The PUT side alone: block 0 as a plain GET returns it. */
			kvt_region *hr = NULL;
			kvt_get_item g;
			uint64_t page[PAGE_WORDS];
			const unsigned char *blk;

			rc = kvt_region_create(c, BLOCK_BYTES, &hr);
			if (rc)
				fail("kvt_region_create: %s", kvt_strerror(rc));
			g = (kvt_get_item){ .key = keys[0], .region = hr, .capacity = BLOCK_BYTES };
			rc = kvt_block_get(c, &g, 1);
			if (rc || g.length != BLOCK_BYTES)
				fail("kvt_block_get of block 0: %s, length %llu", kvt_strerror(rc),
				     (unsigned long long)g.length);
			blk = kvt_region_base(hr);
			for (uint32_t l = 0; l < LAYERS; l++)
				for (uint32_t p = 0; p < PLANES; p++)
					for (uint32_t k = 0; k < PPB; k++) {
						const unsigned char *rows =
							blk + ((size_t)(l * PLANES + p) * BLOCK_TOKENS +
							       (size_t)k * PAGE_TOKENS) * ROW_BYTES;

						page_fill(page, page_seed(l, p, src[k], salt));
						if (memcmp(rows, page, PAGE_BYTES) != 0)
							fail("block 0 as stored by kvt_gpu_put differs "
							     "from its pages (layer %u plane %u page %u)",
							     l, p, k);
					}
			kvt_region_destroy(hr);
		}
		rc = kvt_block_delete(c, keys, n, NULL);
		if (rc)
			fail("kvt_block_delete: %s", kvt_strerror(rc));
		if (!timed)
			continue;
		series_add(&put, (double)bytes, tp);
		series_add(&get, (double)bytes, tg);
		series_add(&d2h, (double)bytes, tdh);
		series_add(&h2d, (double)bytes, thd);
		bench_printf(out, "round %2u (%s first): GPU_PUT %6.2f  memcpy D2H %6.2f  GPU_GET %6.2f  "
				  "memcpy H2D %6.2f GB/s\n",
			     r, daemon_first ? "daemon" : "memcpy", put.v[put.n - 1], d2h.v[d2h.n - 1],
			     get.v[get.n - 1], h2d.v[h2d.n - 1]);
	}
	d2h1 = stat_u64(c, "gpu.d2h_bytes") - d2h0;
	h2d1 = stat_u64(c, "gpu.h2d_bytes") - h2d0;

	bench_printf(out, "\nGB/s: 10^9 block bytes per second; medians of %u rounds\n", o->rounds);
	table_head(out);
	double md2h = row(out, "D2H", "cudaMemcpyAsync D2H, pinned, 64 MiB copies", &d2h, 0);
	double mput = row(out, "D2H", "kvtierd kvt_gpu_put (gather pages + D2H)", &put, md2h);
	double mh2d = row(out, "H2D", "cudaMemcpyAsync H2D, pinned, 64 MiB copies", &h2d, 0);
	double mget = row(out, "H2D", "kvtierd kvt_gpu_get (H2D + scatter into pages)", &get, mh2d);
	double rp = md2h > 0 ? mput / md2h : 0, rg = mh2d > 0 ? mget / mh2d : 0;

	bench_printf(out, "goal:    kvtierd >= 0.90x pinned cudaMemcpyAsync: D2H %.2fx %s, H2D %.2fx "
			  "%s\n",
		     rp, rp >= 0.90 ? "met" : "NOT met", rg, rg >= 0.90 ? "met" : "NOT met");
	bench_printf(out, "checked: every round, all %zu destination pages x %d layers x K,V equal "
			  "their source pages (copied back, compared word for word) and the "
			  "sources are intact; block 0 as kvt_block_get returns it equals its pages "
			  "packed [layer][plane][token][head][dim]\n",
		     n * PPB, LAYERS);
	bench_printf(out, "daemon:  gpu.d2h_bytes +%llu, gpu.h2d_bytes +%llu (expected %llu each)\n",
		     (unsigned long long)d2h1, (unsigned long long)h2d1,
		     (unsigned long long)(bytes * (o->rounds + 1)));
	if (d2h1 != bytes * (o->rounds + 1) || h2d1 != bytes * (o->rounds + 1))
		bench_printf(out, "WARNING: the daemon's GPU byte counters do not match what was "
				  "moved (the pages themselves were checked)\n");

	kvt_gpu_region_destroy(c, region);
	kvt_conn_close(c);
	daemon_stop(&d);
	cudaFree(dbuf);
	cudaFreeHost(hbuf);
	engine_free(&e);
	free(perm);
	free(chk_dst);
	free(chk_src);
	free(is_src);
	free(keys);
	free(items);
}

/* ---- part 2 ---------------------------------------------------------------------------- */

/* Wait until t2.blocks reaches want, giving up after DURABLE_TIMEOUT_MS without progress. */
static double wait_durable(kvt_conn *c, uint64_t want)
{
	uint64_t t0 = bench_now_ns(), last = bench_now_ns(), seen = 0, v;

	while ((v = stat_u64(c, "t2.blocks")) < want) {
		if (v != seen) {
			seen = v;
			last = bench_now_ns();
		}
		if (bench_now_ns() - last > (uint64_t)DURABLE_TIMEOUT_MS * 1000000u)
			fail("NVMe tier: t2.blocks stuck at %llu of %llu for %d ms",
			     (unsigned long long)v, (unsigned long long)want, DURABLE_TIMEOUT_MS);
		bench_sleep_us(20000);
	}
	return (double)(bench_now_ns() - t0) / 1e9;
}

static void part2(const struct opts *o, struct bench_out *out, const uint8_t *uuid,
		  cudaStream_t st)
{
	const uint64_t tokens = o->ctx_tokens, bytes = tokens * TOKEN_BYTES;
	const size_t nblk = (size_t)(tokens / BLOCK_TOKENS), npages = (size_t)(tokens / PAGE_TOKENS);
	const struct need nd = need_part2(tokens);
	struct dconf dc = { .host_capacity = align_up(nd.host_tier, MIB), .nvme_capacity = 0 };
	struct series put = { .n = 0 }, get = { .n = 0 }, d2h = { .n = 0 }, h2d = { .n = 0 };
	struct series t2get = { .n = 0 };
	struct drange dr[LAYERS];
	struct bench_daemon d;
	struct engine e;
	uint32_t *pput = malloc(npages * sizeof(uint32_t)), *pget = malloc(npages * sizeof(uint32_t));
	kvt_key *keys = malloc(nblk * sizeof(kvt_key));
	kvt_gpu_item *items = malloc(o->batch * sizeof(kvt_gpu_item));
	unsigned char *hbuf = NULL;
	kvt_conn *c;
	uint32_t region;
	uint64_t bad;
	double tput, mh2d, mn, mx;

	if (!pput || !pget || !keys || !items)
		fail("out of memory");
	bench_printf(out, "\n== part 2: page-in of a %llu-token Llama-3-8B context (%.2f GiB, %zu "
			  "blocks of 64 MiB) into GPU pages ==\n",
		     (unsigned long long)tokens, gib(bytes), nblk);
	daemon_init(&d, "part2");
	c = daemon_start(o, &dc, &d);
	daemon_require_cuda(out, c, &d, true);
	engine_alloc(&e, npages, uuid);
	for (int l = 0; l < LAYERS; l++)
		dr[l] = (struct drange){ e.dev[l], e.layer_bytes };
	CU(cudaHostAlloc((void **)&hbuf, nd.pinned, cudaHostAllocDefault));
	memset(hbuf, 0xa5, nd.pinned);
	bench_printf(out, "engine:  %zu pages per layer (%.0f MiB per layer); store and page-in in "
			  "requests of %u blocks, each into its own random page order\n",
		     npages, (double)e.layer_bytes / MIB, o->batch);
	bench_printf(out, "memcpy:  cudaMemcpyAsync of the same %.2f GiB between a %.0f MiB "
			  "cudaHostAlloc'd buffer (reused cyclically) and the cache's layer "
			  "allocations, 64 MiB copies, one stream\n",
		     gib(bytes), (double)nd.pinned / MIB);

	/* Warm-up (untimed): both memcpy directions, and one request each way through
	 * the daemon (its copy workers set up their streams and staging), deleted after. */
	region = engine_register(&e, c);
	shuffle(pput, npages);
	shuffle(pget, npages);
	(void)memcpy_pass(dr, LAYERS, hbuf, nd.pinned, true, st);
	(void)memcpy_pass(dr, LAYERS, hbuf, nd.pinned, false, st);
	{
		size_t w = nblk < o->batch ? nblk : o->batch;
		int rc;

		make_keys(keys, w, 2, 99, false);
		gpu_xfer(c, true, region, keys, false, pput, w, o->batch, items);
		gpu_xfer(c, false, region, keys, false, pget, w, o->batch, items);
		rc = kvt_block_delete(c, keys, w, NULL);
		if (rc)
			fail("kvt_block_delete: %s", kvt_strerror(rc));
	}

	/* Store the context once (the D2H direction, timed), as an engine would. */
	make_keys(keys, nblk, 2, 0, true);
	engine_fill(&e, NULL, 0x21);
	tput = gpu_xfer_timed(c, true, region, keys, true, pput, nblk, o->batch, items);
	series_add(&put, (double)bytes, tput);
	bench_printf(out, "store:   kvt_gpu_put of the context %.2f s = %.2f GB/s (once; t1.used_bytes "
			  "%.2f GiB)\n", tput, put.v[0], gib(stat_u64(c, "t1.used_bytes")));

	for (unsigned r = 0; r < o->pagein_rounds; r++) {
		double tg, th, td;

		th = memcpy_pass(dr, LAYERS, hbuf, nd.pinned, true, st);
		td = memcpy_pass(dr, LAYERS, hbuf, nd.pinned, false, st);
		shuffle(pget, npages);
		engine_clear(&e, NULL, 0, st);
		tg = gpu_xfer_timed(c, false, region, keys, false, pget, nblk, o->batch, items);
		bad = engine_check(&e, pget, pput, npages, 0x21);
		if (bad)
			fail("part 2, round %u: %llu pages differ after the page-in", r + 1,
			     (unsigned long long)bad);
		series_add(&get, (double)bytes, tg);
		series_add(&h2d, (double)bytes, th);
		series_add(&d2h, (double)bytes, td);
		bench_printf(out, "round %2u: page-in from the host tier %.2f s = %6.2f GB/s; memcpy H2D "
				  "%.2f s = %6.2f GB/s (checked: every page)\n",
			     r + 1, tg, get.v[get.n - 1], th, h2d.v[h2d.n - 1]);
	}
	kvt_gpu_region_destroy(c, region);
	kvt_conn_close(c);
	daemon_stop(&d);

	bench_printf(out, "\nGB/s: 10^9 block bytes per second; medians of %u rounds (store: one "
			  "pass)\n", o->pagein_rounds);
	table_head(out);
	double md2h = row(out, "D2H", "cudaMemcpyAsync D2H, pinned, 64 MiB copies", &d2h, 0);
	row(out, "D2H", "kvtierd kvt_gpu_put, store the context", &put, md2h);
	mh2d = row(out, "H2D", "cudaMemcpyAsync H2D, pinned, 64 MiB copies", &h2d, 0);
	double mget = row(out, "H2D", "kvtierd kvt_gpu_get, page-in from the host tier", &get, mh2d);
	bench_printf(out, "page-in: %.2f GiB in %.2f s (median); %.2fx pinned memcpy (goal >= 0.90x: "
			  "%s)\n",
		     gib(bytes), mget > 0 ? (double)bytes / 1e9 / mget : 0, mh2d > 0 ? mget / mh2d : 0,
		     mh2d > 0 && mget / mh2d >= 0.90 ? "met" : "NOT met");

	if (o->t2_bytes) {
		uint64_t t2tok = o->t2_bytes / TOKEN_BYTES / BLOCK_TOKENS * BLOCK_TOKENS;
		size_t n2;
		uint64_t b2, rb0;
		struct dconf dc2;
		struct bench_daemon d2;
		char line[1024];
		double tw;

		if (t2tok > tokens)
			t2tok = tokens;
		n2 = (size_t)(t2tok / BLOCK_TOKENS);
		b2 = t2tok * TOKEN_BYTES;
		dc2 = (struct dconf){ .host_capacity = align_up(b2 + HOST_SLACK, MIB),
				      .nvme_capacity = align_up(b2, GIB) + 2 * GIB };
		bench_printf(out, "\n-- from the NVMe tier: %llu tokens (%.2f GiB, %zu blocks), daemon "
				  "restarted before each round (cold host tier) --\n",
			     (unsigned long long)t2tok, gib(b2), n2);
		daemon_init(&d2, "t2");
		c = daemon_start(o, &dc2, &d2);
		daemon_require_cuda(out, c, &d2, false);
		bench_printf(out, "daemon:  %s\n", d2.cmd);
		grep_line(d2.log, "NVMe", line, sizeof(line));
		bench_printf(out, "         log: %s\n", line);
		engine_fill(&e, NULL, 0x31);
		region = engine_register(&e, c);
		shuffle(pput, npages);
		make_keys(keys, n2, 3, 0, true);
		tw = gpu_xfer_timed(c, true, region, keys, true, pput, n2, o->batch, items);
		tw += wait_durable(c, n2);
		bench_printf(out, "write:   kvt_gpu_put + write-through until t2.blocks = %zu: %.2f s = "
				  "%.2f GB/s (t2.direct_io %llu, t2.backend ",
			     n2, tw, (double)b2 / tw / 1e9,
			     (unsigned long long)stat_u64(c, "t2.direct_io"));
		stat_text(c, "t2.backend", line, sizeof(line));
		bench_printf(out, "%s)\n", line);
		kvt_gpu_region_destroy(c, region);
		kvt_conn_close(c);
		daemon_stop(&d2);

		for (unsigned r = 0; r < o->pagein_rounds; r++) {
			double tg;
			uint64_t used;

			c = daemon_start(o, &dc2, &d2);
			daemon_require_cuda(out, c, &d2, false);
			used = stat_u64(c, "t1.used_bytes");
			region = engine_register(&e, c);
			rb0 = stat_u64(c, "t2.read_bytes");
			shuffle(pget, npages);
			engine_clear(&e, NULL, 0, st);
			tg = gpu_xfer_timed(c, false, region, keys, false, pget, n2, o->batch, items);
			rb0 = stat_u64(c, "t2.read_bytes") - rb0;
			bad = engine_check(&e, pget, pput, n2 * PPB, 0x31);
			if (bad)
				fail("NVMe page-in, round %u: %llu pages differ", r + 1,
				     (unsigned long long)bad);
			series_add(&t2get, (double)b2, tg);
			bench_printf(out, "round %2u: page-in from NVMe %.2f s = %6.2f GB/s (host tier "
					  "at start %.0f MiB; t2.read_bytes +%.2f GiB; checked: every "
					  "page)\n",
				     r + 1, tg, t2get.v[t2get.n - 1], (double)used / MIB, gib(rb0));
			kvt_gpu_region_destroy(c, region);
			kvt_conn_close(c);
			daemon_stop(&d2);
		}
		double m = series_median(&t2get, &mn, &mx);

		bench_printf(out, "NVMe page-in: median %.2f GB/s (min %.2f, max %.2f) = %.2fx the pinned "
				  "cudaMemcpyAsync H2D above\n",
			     m, mn, mx, mh2d > 0 ? m / mh2d : 0);
	}
	cudaFreeHost(hbuf);
	engine_free(&e);
	free(pput);
	free(pget);
	free(keys);
	free(items);
}

/* ---- main ------------------------------------------------------------------------------ */

int main(int argc, char **argv)
{
	struct opts o = {
		.dir = "/var/tmp",
		.daemon = KVT_BIN_DIR "/kvtierd",
		.blocks = 8,
		.rounds = 5,
		.ctx_tokens = 262144,
		.pagein_rounds = 3,
		.batch = 8,
		.device = 0,
		.parts = 3,
		.limit_s = 1800,
	};
	struct rlimit rl = { RLIM_INFINITY, RLIM_INFINITY };
	struct cudaDeviceProp prop;
	struct bench_out out;
	struct bench_cpu cpu0;
	cudaStream_t st;
	uint64_t v, avail, t_start = bench_now_ns();
	int opt, ndev = 0, copy_engines = 0;
	size_t gpu_free = 0, gpu_total = 0;
	cudaError_t err;

	while ((opt = getopt(argc, argv, "+n:r:c:R:b:T:P:g:d:D:O:l:o:h")) != -1) {
		switch (opt) {
		case 'n':
			if (bench_parse_size(optarg, &v) || v == 0 || v > 1024)
				goto bad_arg;
			o.blocks = (unsigned)v;
			break;
		case 'r':
			if (bench_parse_size(optarg, &v) || v == 0 || v > MAX_ROUNDS)
				goto bad_arg;
			o.rounds = (unsigned)v;
			break;
		case 'c':
			if (bench_parse_size(optarg, &v) || v % BLOCK_TOKENS || v > (1ull << 31))
				goto bad_arg;
			o.ctx_tokens = v;
			break;
		case 'R':
			if (bench_parse_size(optarg, &v) || v == 0 || v > MAX_ROUNDS)
				goto bad_arg;
			o.pagein_rounds = (unsigned)v;
			break;
		case 'b':
			if (bench_parse_size(optarg, &v) || v == 0 || v > 1024)
				goto bad_arg;
			o.batch = (unsigned)v;
			break;
		case 'T': {
			/* "-T2 SIZE" (the tier, then the size), or "-T SIZE". */
			const char *size = optarg;

			if (strcmp(optarg, "2") == 0) {
				if (optind >= argc)
					goto bad_arg;
				size = argv[optind++];
			}
			if (bench_parse_size(size, &o.t2_bytes) || o.t2_bytes < BLOCK_BYTES) {
				fprintf(stderr, PROG ": -T2 SIZE: '%s' is not a size of at least one "
						"block (64M)\n", size);
				return 2;
			}
			break;
		}
		case 'P':
			if (strcmp(optarg, "1") == 0)
				o.parts = 1;
			else if (strcmp(optarg, "2") == 0)
				o.parts = 2;
			else
				goto bad_arg;
			break;
		case 'g':
			if (bench_parse_size(optarg, &v) || v > 64)
				goto bad_arg;
			o.device = (int)v;
			break;
		case 'd':
			o.dir = optarg;
			break;
		case 'D':
			o.daemon = optarg;
			break;
		case 'O':
			if (o.nextra >= MAX_EXTRA || !strchr(optarg, '='))
				goto bad_arg;
			o.extra[o.nextra++] = optarg;
			break;
		case 'l':
			if (bench_parse_size(optarg, &v) || v == 0 || v > 86400)
				goto bad_arg;
			o.limit_s = (unsigned)v;
			break;
		case 'o':
			o.out = optarg;
			break;
		case 'h':
			usage(stdout);
			return 0;
		default:
			goto bad_arg;
		}
	}
	if (optind != argc)
		goto bad_arg;
	if (o.ctx_tokens == 0)
		o.parts &= 1u;
	if (!o.parts) {
		fprintf(stderr, PROG ": nothing to run (-P 2 with -c 0)\n");
		return 2;
	}
	if (o.t2_bytes && !(o.parts & 2)) {
		fprintf(stderr, PROG ": -T2 pages in part of part 2's context; it needs part 2 "
				"(-c > 0, not -P 1)\n");
		return 2;
	}

	/* No device: nothing to measure, say so, skip. */
	err = cudaGetDeviceCount(&ndev);
	if (err != cudaSuccess || ndev == 0) {
		fprintf(stderr, PROG ": no CUDA device (cudaGetDeviceCount: %s); nothing measured, "
				"skipped\n",
			err == cudaSuccess ? "0 devices" : cudaGetErrorString(err));
		return 77;
	}
	if (o.device >= ndev) {
		fprintf(stderr, PROG ": no device %d (%d present)\n", o.device, ndev);
		return 2;
	}
	CU(cudaSetDevice(o.device));
	CU(cudaGetDeviceProperties(&prop, o.device));
	cudaDeviceGetAttribute(&copy_engines, cudaDevAttrAsyncEngineCount, o.device);
	CU(cudaMemGetInfo(&gpu_free, &gpu_total));
	if (access(o.daemon, X_OK) != 0) {
		fprintf(stderr, PROG ": daemon %s: %s (build it, or pass -D)\n", o.daemon,
			strerror(errno));
		return 1;
	}

	/* Does the machine hold it? RAM, GPU memory, disk - before anything starts. */
	avail = mem_available();
	for (unsigned part = 1; part <= 2; part++) {
		struct need nd;
		uint64_t gpu_need, total;

		if (!(o.parts & part))
			continue;
		if (part == 1) {
			nd = need_part1(o.blocks);
			gpu_need = (uint64_t)LAYERS * PLANES * 2 * o.blocks * PPB * PAGE_BYTES +
				   (uint64_t)o.blocks * BLOCK_BYTES;
		} else {
			nd = need_part2(o.ctx_tokens);
			gpu_need = o.ctx_tokens * TOKEN_BYTES;
		}
		total = need_total(&nd);
		if (avail && total > avail) {
			fprintf(stderr,
				PROG ": part %u does not fit this machine's RAM: it needs %.1f GiB "
				     "(daemon host tier %.1f, pinned baseline %.1f, staging %.1f, "
				     "other %.1f, margin %.1f) and MemAvailable is %.1f GiB (of %lu "
				     "GiB).\n",
				part, gib(total), gib(nd.host_tier), gib(nd.pinned), gib(nd.staging),
				gib(nd.other), gib(RAM_MARGIN), gib(avail), bench_mem_gib());
			if (part == 2) {
				/* host tier + staging per token; pinned and slack fixed */
				double per = (double)TOKEN_BYTES * (1.0 + 1.0 / LAYERS);
				double fixed = (double)(HOST_SLACK + PINNED_MAX + RAM_MARGIN);
				uint64_t fit = avail > fixed ? (uint64_t)(((double)avail - fixed) / per)
							     : 0;

				fit = fit / BLOCK_TOKENS * BLOCK_TOKENS;
				fprintf(stderr, "  pass a smaller context: -c %llu fits (about %.1f "
						"GiB of KV), or -P 1 for part 1 only\n",
					(unsigned long long)fit, gib(fit * TOKEN_BYTES));
			} else {
				fprintf(stderr, "  pass fewer blocks with -n\n");
			}
			return 1;
		}
		if (gpu_need + GPU_MARGIN > gpu_free) {
			fprintf(stderr,
				PROG ": part %u does not fit the GPU: it needs %.1f GiB of device "
				     "memory (+%.0f GiB for the daemon's CUDA context and staging) "
				     "and %s has %.1f GiB free of %.1f; pass a smaller %s\n",
				part, gib(gpu_need), gib(GPU_MARGIN), prop.name, gib(gpu_free),
				gib(gpu_total),
				part == 1 ? "-n" : "-c");
			return 1;
		}
	}
	if (o.t2_bytes) {
		struct statfs sf;
		uint64_t t2tok = o.t2_bytes / TOKEN_BYTES / BLOCK_TOKENS * BLOCK_TOKENS;
		uint64_t b2, needd, freeb;

		if (t2tok > o.ctx_tokens)
			t2tok = o.ctx_tokens;
		b2 = t2tok * TOKEN_BYTES;
		needd = align_up(b2, GIB) + 2 * GIB + GIB;
		if (statfs(o.dir, &sf) != 0) {
			fprintf(stderr, PROG ": -d %s: %s\n", o.dir, strerror(errno));
			return 1;
		}
		freeb = (uint64_t)sf.f_bavail * (uint64_t)sf.f_bsize;
		if (needd > freeb) {
			fprintf(stderr,
				PROG ": -T2 %.2f GiB does not fit the disk: the NVMe tier needs %.1f "
				     "GiB free under %s (the blocks, 2 GiB of segment slack, 1 GiB "
				     "margin) and there are %.1f GiB; pass a smaller -T2 SIZE or -d "
				     "DIR on a larger disk\n",
				gib(b2), gib(needd), o.dir, gib(freeb));
			return 1;
		}
	}

	if (strlen(o.dir) > 200) {
		fprintf(stderr, PROG ": -d %s: path too long\n", o.dir);
		return 2;
	}
	snprintf(bench_tmp_dir, sizeof(bench_tmp_dir), "%s/kvtier-gpu.XXXXXX", o.dir);
	if (!mkdtemp(bench_tmp_dir)) {
		fprintf(stderr, PROG ": mkdtemp %s: %s\n", bench_tmp_dir, strerror(errno));
		bench_tmp_dir[0] = '\0';
		return 1;
	}
	/* Let the daemon lock its host tier, as the systemd unit does. */
	(void)setrlimit(RLIMIT_MEMLOCK, &rl);
	signal(SIGINT, on_signal);
	signal(SIGTERM, on_signal);
	signal(SIGHUP, on_signal);
	signal(SIGALRM, on_signal);
	signal(SIGPIPE, SIG_IGN);
	alarm(o.limit_s);

	if (bench_out_open(&out, o.out) != 0)
		fail("cannot write %s: %s", o.out, strerror(errno));
	bench_print_machine(&out, PROG ": registered GPU KV cache <-> kvtierd host/NVMe tiers vs "
				  "pinned cudaMemcpyAsync");
	bench_printf(&out, "gpu:     %s (device %d of %d), sm_%d%d, %d SMs, %.1f GiB (%.1f free), %d "
			   "copy engines\n",
		     prop.name, o.device, ndev, prop.major, prop.minor, prop.multiProcessorCount,
		     gib(prop.totalGlobalMem), gib(gpu_free), copy_engines);
	print_pcie(&out, o.device);
	bench_printf(&out, "model:   Llama-3-8B KV: %d layers x K,V x %d KV heads x %d, bf16 = %llu "
			   "KiB per token; vLLM pages of %d tokens, one cudaMalloc per layer "
			   "[2][pages][16][8][128], CUDA IPC handles\n",
		     LAYERS, HEADS, HEAD_DIM, (unsigned long long)(TOKEN_BYTES >> 10), PAGE_TOKENS);
	bench_printf(&out, "params:  part 1 %s (-n %u blocks, -r %u rounds); part 2 %s (-c %llu "
			   "tokens, -R %u rounds, -T2 %s); -b %u blocks per request; block 512 "
			   "tokens = 64 MiB; -l %u s\n",
		     o.parts & 1 ? "on" : "off", o.blocks, o.rounds, o.parts & 2 ? "on" : "off",
		     (unsigned long long)o.ctx_tokens, o.pagein_rounds,
		     o.t2_bytes ? "on" : "off", o.batch, o.limit_s);
	if (o.t2_bytes)
		bench_printf(&out, "         -T2 %.2f GiB, NVMe tier under %s\n", gib(o.t2_bytes),
			     o.dir);
	bench_printf(&out, "ram:     MemAvailable %.1f GiB at the start\n", gib(avail));

	CU(cudaStreamCreateWithFlags(&st, cudaStreamNonBlocking));
	bench_cpu_snapshot(&cpu0);
	if (o.parts & 1)
		part1(&o, &out, (const uint8_t *)prop.uuid.bytes, st);
	if (o.parts & 2)
		part2(&o, &out, (const uint8_t *)prop.uuid.bytes, st);
	CU(cudaStreamDestroy(st));

	bench_printf(&out, "\n");
	bench_print_cpu_use(&out, &cpu0);
	bench_printf(&out, "time:    %.0f s in all\n", (double)(bench_now_ns() - t_start) / 1e9);
	alarm(0);
	bench_rm_tree(bench_tmp_dir);
	bench_tmp_dir[0] = '\0';
	if (bench_out_close(&out) != 0) {
		fprintf(stderr, PROG ": writing %s failed\n", o.out);
		return 1;
	}
	return 0;

bad_arg:
	usage(stderr);
	return 2;
}
