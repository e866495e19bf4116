/*
 * bench_t2.c - the NVMe tier (T2) end to end through a kvtierd this program starts
 * itself: sequential write (PUT with nvme_write = through and a small host tier,
 * timed until STATS shows every block durable and indexed) and sequential read
 * (daemon restarted: cold host tier, warm NVMe index; GET the chain in order with
 * read-ahead) of the example engine's Llama-3-8B-shaped context, with the raw and
 * the bf16 codec; then the cold page-in of a larger context (8 GiB by default)
 * with PREFETCH running ahead of the GETs, and with GET + read-ahead alone.
 *
 * Every figure stands beside fio (ioengine=io_uring, direct=1) run by this program
 * in the same run, in the same directory, with the same block size (one KV block)
 * and the queue depth the daemon was seen to keep in flight. Contenders run in
 * interleaved rounds in a rotating order; figures are medians.
 *
 * Block contents are real bf16 KV cache (tools/dump_kv.py's /tmp/kv.bf16, laid
 * end to end cyclically) or, without that file, the synthetic KV-like bf16 of
 * bench_codec. Every GET is checked: sampled words of every block, and the first
 * and last block of every pass in full, so a path that skips the copy or serves
 * wrong bytes cannot look fast.
 *
 * GETs go as the example engine issues them (4 blocks per request, 2 in flight);
 * PUTs one block at a time by default, because with the engine's pipelining the
 * daemon of commit 09bbce3 wedges its host tier (ENOSPC) - a one-off check in the
 * engine's pattern reports whether it still does. A contender run that fails
 * (the daemon crashing, a refused PUT) is listed in the report and retried on a
 * fresh daemon and directory; the figures are from the runs that worked.
 *
 * Needs nothing beyond libkvtier.a, fio in $PATH, and gnuplot for -g.
 */
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <getopt.h>
#include <pthread.h>
#include <signal.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <sys/wait.h>
#include <unistd.h>

#include "kvtier.h"
#include "bench_daemon.h"
#include "bench_util.h"

#ifndef KVT_BIN_DIR
#define KVT_BIN_DIR "build/bin"
#endif

#define PROG "bench_t2"
#define MIB (1024ull * 1024)
#define GIB (1024ull * MIB)
#define MAX_ROUNDS 9
#define MAX_EXTRA 16
#define SAMPLES 16            /* 8-byte words poisoned and checked per GET'd block */
#define CALL_TIMEOUT_MS 120000
#define START_TIMEOUT_MS 60000
#define STOP_TIMEOUT_MS 120000
#define DURABLE_TIMEOUT_MS 30000 /* no t2.blocks progress for this long: give up */
#define SAMPLE_US 2000        /* STATS polling interval */
#define SYN_BYTES (96 * MIB)
#define ATTEMPTS 5            /* a contender run that fails is retried on a fresh daemon */
#define STR_(x) #x
#define STR(x) STR_(x)

/* ---- options -------------------------------------------------------------------- */

struct opts {
	const char *dir;      /* parent of the temporary directory */
	const char *daemon;
	const char *input;    /* real bf16 KV bytes, or NULL for synthetic */
	const char *out, *plot, *png, *gnuplot_script;
	uint64_t tokens, pagein_tokens;
	uint64_t host_capacity;
	unsigned rounds, pagein_rounds;
	unsigned batch, groups, window;    /* GETs: blocks per request, requests in flight */
	unsigned put_batch, put_groups;    /* PUTs: the same */
	bool no_check;                     /* skip the engine-pattern PUT check */
	const char *label;                 /* a line for the report (-L) */
	unsigned qd;          /* fio iodepth; 0: what the daemon was seen to keep in flight */
	bool pagein_raw_only;
	const char *extra[MAX_EXTRA];
	unsigned nextra;
	const char *env[MAX_EXTRA];        /* NAME=VALUE for the daemon's environment (-E) */
	unsigned nenv;
	const char *venv[MAX_EXTRA];       /* the same for the variant contenders (-V) */
	unsigned nvenv;
};

/* Llama-3-8B as examples/engine.c has it: 32 layers x 2 (K, V) x 8 heads x 128 x bf16. */
#define TOKEN_BYTES (32u * 2 * 8 * 128 * 2)
#define BLOCK_TOKENS 256u
#define BLOCK_BYTES ((uint64_t)TOKEN_BYTES * BLOCK_TOKENS)

static void usage(FILE *f)
{
	fprintf(f,
		"usage: " PROG " [-d DIR] [-D KVTIERD] [-i FILE | -S] [-t TOKENS] [-T TOKENS]\n"
		"                [-r ROUNDS] [-R ROUNDS] [-H SIZE] [-b N] [-G N] [-w BxG] [-N] [-W N]\n"
		"                [-q DEPTH] [-x] [-O KEY=VALUE]... [-E NAME=VALUE]... [-V NAME=VALUE]...\n"
		"                [-L TEXT] [-o FILE] [-p DATFILE] [-g PNG]\n"
		"  -d DIR      parent of the temporary directory holding the daemon's data and\n"
		"              fio's file (default /var/tmp; must accept O_DIRECT)\n"
		"  -D KVTIERD  daemon binary (default " KVT_BIN_DIR "/kvtierd)\n"
		"  -i FILE     real bf16 KV bytes to fill blocks with, cyclically\n"
		"              (default /tmp/kv.bf16 from tools/dump_kv.py when it exists)\n"
		"  -S          synthetic KV-like bf16 (bench_codec's generator) instead\n"
		"  -t TOKENS   context for the write/read test (default 32768 = 4 GiB, the\n"
		"              example engine's default)\n"
		"  -T TOKENS   context for the cold page-in (default 65536 = 8 GiB; 0: skip)\n"
		"  -r ROUNDS   rounds of the write/read test (default 3)\n"
		"  -R ROUNDS   rounds of the page-in test (default 1)\n"
		"  -H SIZE     the daemon's host tier, K/M/G suffixes (default 1G)\n"
		"  -b N        blocks per GET request (default 4)\n"
		"  -G N        GET requests in flight (default 2; the engine's region of 8 slots)\n"
		"  -w BxG      PUTs: B blocks per request, G requests in flight (default 1x1; see\n"
		"              the report for why not the engine's 4x2)\n"
		"  -N          skip the one-off check of PUTs in the engine's pattern (-b x -G)\n"
		"  -W N        page-in: PREFETCH keeps this many blocks ahead of the GETs (default 16)\n"
		"  -q DEPTH    fio iodepth (default: the most reads/writes the daemon was seen\n"
		"              to keep in flight, STATS t2.inflight)\n"
		"  -x          page-in with the raw codec only (default: raw and bf16)\n"
		"  -O KEY=VAL  one more kvtierd setting for every daemon start (repeatable)\n"
		"  -E NAME=VAL put NAME=VAL in the daemon's environment (repeatable), e.g.\n"
		"              GLIBC_TUNABLES=... to try an allocator setting without a rebuild\n"
		"  -V NAME=VAL add write/read contenders (raw and bf16, marked *) whose kvtierd has\n"
		"              NAME=VAL in its environment, interleaved with the others\n"
		"              (repeatable: all go to the same variant)\n"
		"  -L TEXT     a note for the report (e.g. which commit the daemon was built from)\n"
		"  -o FILE     also write the report to FILE\n"
		"  -p DATFILE  write the GB/s medians for gnuplot (bench/t2.gnuplot)\n"
		"  -g PNG      draw PNG with gnuplot from DATFILE (needs -p)\n");
}

/* ---- block contents ------------------------------------------------------------------ */

/* bench_codec's synthetic KV-like bf16 (see SYN_DESC there and below). */
#define SYN_DESC                                                                              \
	"synthetic KV-like bf16 (bench_codec's generator): [tokens][8 heads][128 dims]; channel " \
	"c ~ N(mu_c, sigma_c) (Irwin-Hall), sigma_c = 0.02 * 2^U{0..5} * (1 + U[0,1)), every 16th " \
	"channel an outlier x16, mu_c = 0.5 sigma_c N(0,1); nearest-even bf16; no token-to-token " \
	"correlation (pessimistic)"

/*
 * The source image: the data (len bytes, a multiple of 4 KiB) followed by its own
 * first block_bytes, so block b is the contiguous image[(b * block) % len ...] and
 * a PUT reads it straight from the region, as an engine's KV already sits in its
 * own memory: no per-PUT generation on the client's side.
 */
struct source {
	uint8_t *img;
	uint64_t len;     /* period */
	uint64_t img_len; /* len + one block */
	char desc[512];
	bool real;
};

static int source_load(const struct opts *o, struct source *src)
{
	uint8_t *data = NULL;
	uint64_t len = 0;

	memset(src, 0, sizeof(*src));
	if (o->input) {
		FILE *f = fopen(o->input, "rb");
		struct stat st;

		if (!f)
			return -errno;
		if (fstat(fileno(f), &st) != 0 || st.st_size < (off_t)(4 * MIB)) {
			fclose(f);
			return -EINVAL;
		}
		len = (uint64_t)st.st_size & ~(uint64_t)4095;
		data = malloc(len);
		if (!data || fread(data, 1, len, f) != len) {
			free(data);
			fclose(f);
			return -EIO;
		}
		fclose(f);
		src->real = true;
		snprintf(src->desc, sizeof(src->desc),
			 "%s, %llu bytes: real bf16 KV cache of SmolLM2-135M-Instruct under llama.cpp "
			 "(tools/dump_kv.py), laid end to end cyclically (block b = bytes "
			 "[b*%llu mod %llu ...) of the file)",
			 o->input, (unsigned long long)len, (unsigned long long)BLOCK_BYTES,
			 (unsigned long long)len);
	} else {
		len = SYN_BYTES;
		data = malloc(len);
		if (!data)
			return -ENOMEM;
		bench_fill_kv_bf16(data, len);
		snprintf(src->desc, sizeof(src->desc), "%llu MiB of " SYN_DESC ", laid end to end "
			 "cyclically (/tmp/kv.bf16 not used)", (unsigned long long)(len / MIB));
	}
	src->len = len;
	src->img_len = len + BLOCK_BYTES;
	src->img = malloc(src->img_len);
	if (!src->img) {
		free(data);
		return -ENOMEM;
	}
	for (uint64_t off = 0; off < src->img_len; off += len) {
		uint64_t n = src->img_len - off < len ? src->img_len - off : len;

		memcpy(src->img + off, data, n);
	}
	free(data);
	return 0;
}

static uint64_t block_src_off(const struct source *src, uint64_t b)
{
	return (b * BLOCK_BYTES) % src->len;
}

/* ---- fio ------------------------------------------------------------------------------ */

/* One fio job over path: GB/s (fio's own bandwidth figure, 10^9 B/s) or -errno.
 * The command line goes to cmd. */
static int run_fio(const char *path, uint64_t size, unsigned qd, bool write, double *gbps,
		   char *cmd, size_t cmdcap)
{
	char file[600], sz[64], bs[64], depth[32];
	const char *argv[16];
	size_t n = 0;

	snprintf(file, sizeof(file), "--filename=%s", path);
	snprintf(sz, sizeof(sz), "--size=%llu", (unsigned long long)size);
	snprintf(bs, sizeof(bs), "--bs=%llu", (unsigned long long)BLOCK_BYTES);
	snprintf(depth, sizeof(depth), "--iodepth=%u", qd);
	argv[n++] = "fio";
	argv[n++] = "--name=kvtier-bench-t2";
	argv[n++] = file;
	argv[n++] = sz;
	argv[n++] = bs;
	argv[n++] = depth;
	argv[n++] = "--ioengine=io_uring";
	argv[n++] = "--direct=1";
	argv[n++] = write ? "--rw=write" : "--rw=read";
	if (write) {
		argv[n++] = "--fallocate=native";
		argv[n++] = "--end_fsync=1";
	}
	argv[n++] = "--output-format=json";
	argv[n] = NULL;
	return bench_fio_run(PROG, argv, write, cmd, cmdcap, gbps, NULL, NULL);
}

/* ---- the daemon ------------------------------------------------------------------------ */

struct dconf {
	const char *codec;      /* nvme_codec */
	uint64_t nvme_capacity;
	uint64_t host_capacity;
	bool variant;           /* with the -V environment */
};

/* Start kvtierd on d (d->dir made by the caller) with c, and connect to it. */
static int daemon_start(const struct opts *o, const struct dconf *c, struct bench_daemon *d,
			kvt_conn **out)
{
	char kv[10 + MAX_EXTRA][512];
	const char *argv[2 + 2 * (10 + MAX_EXTRA) + 1];
	const char *env[2 * MAX_EXTRA];
	char why[512];
	size_t n = 0, nkv = 0, len = 0, nenv = 0;
	int rc;

	snprintf(kv[nkv++], sizeof(kv[0]), "socket=%s", d->sock);
	snprintf(kv[nkv++], sizeof(kv[0]), "data_dir=%s", d->data);
	snprintf(kv[nkv++], sizeof(kv[0]), "host_capacity=%lluMiB",
		 (unsigned long long)(c->host_capacity / MIB));
	snprintf(kv[nkv++], sizeof(kv[0]), "nvme_capacity=%lluGiB",
		 (unsigned long long)(c->nvme_capacity / GIB));
	snprintf(kv[nkv++], sizeof(kv[0]), "nvme_codec=%s", c->codec);
	snprintf(kv[nkv++], sizeof(kv[0]), "nvme_write=through");
	/* Write-through must write every block: under the default admission rule
	 * (chain) a chain's last block is written only if the PUT found staging room
	 * (see the report), so "every block durable" might never come. */
	snprintf(kv[nkv++], sizeof(kv[0]), "nvme_admission=always");
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
	for (size_t i = 2; i < n && len < sizeof(d->cmd); i += 2) {
		const char *v = argv[i];

		/* The per-run paths say nothing; keep the command readable. */
		if (strncmp(v, "socket=", 7) == 0 || strncmp(v, "data_dir=", 9) == 0)
			continue;
		len += (size_t)snprintf(d->cmd + len, sizeof(d->cmd) - len, " -o %s", v);
	}

	for (unsigned i = 0; i < o->nenv; i++)
		env[nenv++] = o->env[i];
	for (unsigned i = 0; c->variant && i < o->nvenv; i++)
		env[nenv++] = o->venv[i];
	rc = bench_daemon_spawn(PROG, d, o->daemon, argv, env, nenv);
	if (rc != 0)
		return rc;
	rc = bench_daemon_connect(d, START_TIMEOUT_MS, CALL_TIMEOUT_MS, NULL, out, why,
				  sizeof(why));
	if (rc != 0) {
		fprintf(stderr, PROG ": %s\n", why);
		bench_daemon_log_tail(d->log);
	}
	return rc;
}

/* SIGTERM and wait (SIGKILL after STOP_TIMEOUT_MS). Returns the daemon's exit
 * status (0 = clean) or -1 if it had to be killed. */
static int daemon_stop(struct bench_daemon *d)
{
	return bench_daemon_stop(PROG, d, STOP_TIMEOUT_MS);
}

/* User+system CPU seconds of pid so far, from /proc/PID/stat (-1 if unknown), and
 * its minor page faults in *minflt. */
static double proc_cpu_s(pid_t pid, uint64_t *minflt)
{
	char path[64], buf[1024], *p;
	unsigned long long ut = 0, stime = 0, mf = 0;
	FILE *f;

	snprintf(path, sizeof(path), "/proc/%d/stat", (int)pid);
	f = fopen(path, "r");
	if (!f)
		return -1;
	if (!fgets(buf, sizeof(buf), f)) {
		fclose(f);
		return -1;
	}
	fclose(f);
	p = strrchr(buf, ')'); /* the command name may hold spaces */
	if (!p || sscanf(p + 2, "%*c %*d %*d %*d %*d %*d %*u %llu %*u %*u %*u %llu %llu", &mf,
			 &ut, &stime) != 3)
		return -1;
	*minflt = mf;
	return (double)(ut + stime) / (double)sysconf(_SC_CLK_TCK);
}

/* ---- the daemon's counters ----------------------------------------------------------- */

enum ctr {
	C_T2_BLOCKS, C_T2_WRITE_BYTES, C_T2_READ_BYTES, C_T2_WRITES, C_T2_READS,
	C_T2_LOGICAL, C_T2_STORED, C_T2_PROMOTIONS, C_T2_DEMOTIONS, C_T2_READAHEAD, C_T2_HITS,
	C_T2_FETCH_FAIL, C_T2_DEMOTE_FAIL, C_T2_CSUM, C_T2_IOERR, C_T2_ENOSPC, C_T2_INFLIGHT,
	C_T2_STAGING, C_T2_QD, C_T2_DIRECT, C_T1_DROPPED, C_T1_EVICTIONS, C_T1_HITS, C_T1_MISSES,
	C_T1_MLOCKED, NCTR
};

static const char *const ctr_name[NCTR] = {
	"t2.blocks", "t2.write_bytes", "t2.read_bytes", "t2.writes", "t2.reads",
	"t2.logical_bytes", "t2.stored_bytes", "t2.promotions", "t2.demotions", "t2.readahead",
	"t2.hits", "t2.fetch_failures", "t2.demote_failures", "t2.checksum_failures",
	"t2.io_errors", "t2.enospc", "t2.inflight", "t2.staging_bytes", "t2.queue_depth",
	"t2.direct_io", "t1.dropped_unwritten", "t1.evictions", "t1.hits", "t1.misses",
	"t1.mlocked",
};

struct counters {
	uint64_t v[NCTR];
	char backend[256];
};

static int counters_get(kvt_conn *c, struct counters *out)
{
	kvt_stats *s;
	int rc = kvt_stats_get(c, &s);

	if (rc)
		return rc;
	memset(out, 0, sizeof(*out));
	for (int i = 0; i < NCTR; i++)
		kvt_stats_find(s, ctr_name[i], &out->v[i]);
	for (size_t i = 0; i < kvt_stats_count(s); i++) {
		const char *name, *text;
		uint64_t v;

		if (kvt_stats_entry(s, i, &name, &v, &text) == 0 && text &&
		    strcmp(name, "t2.backend") == 0)
			snprintf(out->backend, sizeof(out->backend), "%s", text);
	}
	kvt_stats_free(s);
	return 0;
}

/*
 * A thread with its own connection polling STATS every SAMPLE_US: the most I/O the
 * daemon kept in flight and the moment t2.blocks first reached the target (every
 * block durable: a record is counted only once its commit, fdatasync then LMDB,
 * is done).
 */
struct sampler {
	pthread_t th;
	kvt_conn *c;
	pthread_mutex_t mu;
	bool stop, running;
	int err;
	uint64_t target;    /* t2.blocks to wait for (0: none) */
	uint64_t reached_ns;
	uint64_t last_ns, blocks, last_change_ns;
	uint64_t max_inflight, max_staging;
	unsigned polls;
};

static void *sampler_main(void *arg)
{
	struct sampler *s = arg;

	for (;;) {
		struct counters k;
		int rc;
		uint64_t now;

		pthread_mutex_lock(&s->mu);
		if (s->stop) {
			pthread_mutex_unlock(&s->mu);
			break;
		}
		pthread_mutex_unlock(&s->mu);
		rc = counters_get(s->c, &k);
		now = bench_now_ns();
		pthread_mutex_lock(&s->mu);
		if (rc) {
			s->err = rc;
			pthread_mutex_unlock(&s->mu);
			break;
		}
		s->polls++;
		if (k.v[C_T2_BLOCKS] != s->blocks)
			s->last_change_ns = now;
		s->blocks = k.v[C_T2_BLOCKS];
		s->last_ns = now;
		if (k.v[C_T2_INFLIGHT] > s->max_inflight)
			s->max_inflight = k.v[C_T2_INFLIGHT];
		if (k.v[C_T2_STAGING] > s->max_staging)
			s->max_staging = k.v[C_T2_STAGING];
		if (s->target && !s->reached_ns && s->blocks >= s->target)
			s->reached_ns = now;
		pthread_mutex_unlock(&s->mu);
		bench_sleep_us(SAMPLE_US);
	}
	return NULL;
}

static int sampler_start(struct sampler *s, const char *sock, uint64_t target)
{
	int rc;

	memset(s, 0, sizeof(*s));
	pthread_mutex_init(&s->mu, NULL);
	s->target = target;
	s->last_change_ns = bench_now_ns();
	rc = kvt_conn_open(sock, &s->c);
	if (rc)
		return rc;
	kvt_conn_set_timeout(s->c, CALL_TIMEOUT_MS);
	rc = pthread_create(&s->th, NULL, sampler_main, s);
	if (rc) {
		kvt_conn_close(s->c);
		return -rc;
	}
	s->running = true;
	return 0;
}

static void sampler_stop(struct sampler *s)
{
	if (!s->running)
		return;
	pthread_mutex_lock(&s->mu);
	s->stop = true;
	pthread_mutex_unlock(&s->mu);
	pthread_join(s->th, NULL);
	kvt_conn_close(s->c);
	pthread_mutex_destroy(&s->mu);
	s->running = false;
}

/* ---- the client side ---------------------------------------------------------------------- */

/* What one kvtier pass measured. */
struct pass {
	bool ok;
	double seconds;     /* first request to last block delivered (or durable) */
	double ack_s;       /* writes: first PUT to last PUT answered */
	double first_ms;    /* reads: first GET issued to first GET answered */
	double gbps;        /* logical bytes / seconds */
	double daemon_cpu;  /* daemon CPU seconds over wall seconds */
	double faults;      /* daemon minor page faults per block */
	uint64_t inflight;  /* most I/O in flight seen */
	struct counters d;  /* counter deltas over the pass */
	uint64_t stored, logical; /* t2.stored_bytes, t2.logical_bytes after the pass */
	unsigned prefetched, prefetch_calls;
	bool prefetch_unsupported;
	char note[1024];    /* why it failed */
};

struct client {
	kvt_conn *c;
	kvt_region *r;
	uint8_t *base;
	const struct source *src;
	kvt_key *keys;
	size_t n;
	unsigned batch, groups;         /* GET pattern */
	unsigned put_batch, put_groups; /* PUT pattern */
	uint64_t dst_off; /* first destination slot in the region */
	char note[1024];  /* why a PUT failed, for the report */
	uint64_t verified, full_checked;
};

static void make_keys(kvt_key *keys, size_t n, const char *tag)
{
	kvt_salt_params p = {
		.model_id = "meta-llama/Meta-Llama-3-8B",
		.weights_version = tag,
		.kv_dtype = "bf16",
		.layout = "kvtier-engine:L32:H8:D128",
		.adapter = "",
		.tp_size = 1,
		.block_tokens = BLOCK_TOKENS,
	};
	uint32_t tokens[BLOCK_TOKENS];
	uint64_t rng = 0x5eed ^ (uint64_t)n;
	kvt_key salt;

	kvt_key_salt(&p, &salt);
	for (size_t b = 0; b < n; b++) {
		for (unsigned t = 0; t < BLOCK_TOKENS; t++)
			tokens[t] = (uint32_t)(bench_rand64(&rng) % 128256u);
		kvt_key_chain(&salt, b ? &keys[b - 1] : NULL, tokens, BLOCK_TOKENS, &keys[b]);
	}
}

static const kvt_block_desc block_desc = {
	.dtype = KVT_DTYPE_BF16, .layout = 1, .layers = 32, .tokens = BLOCK_TOKENS,
};

/* A region holding the source image and groups x batch destination slots. */
static int client_open(struct client *cl, kvt_conn *c, const struct source *src,
		       kvt_key *keys, size_t n, const struct opts *o)
{
	uint64_t size;
	int rc;

	memset(cl, 0, sizeof(*cl));
	cl->c = c;
	cl->src = src;
	cl->keys = keys;
	cl->n = n;
	cl->batch = o->batch;
	cl->groups = o->groups;
	cl->put_batch = o->put_batch;
	cl->put_groups = o->put_groups;
	cl->dst_off = (src->img_len + 4095) & ~(uint64_t)4095;
	size = cl->dst_off + (uint64_t)o->batch * o->groups * BLOCK_BYTES;
	rc = kvt_region_create(c, (size_t)size, &cl->r);
	if (rc)
		return rc;
	cl->base = kvt_region_base(cl->r);
	memcpy(cl->base, src->img, src->img_len);
	/* Touch the destination slots now so first-touch faults are not timed. */
	memset(cl->base + cl->dst_off, 0, size - cl->dst_off);
	return 0;
}

static void client_close(struct client *cl)
{
	kvt_region_destroy(cl->r);
	cl->r = NULL;
}

/* After a refused PUT: what the tiers looked like, to stderr and appended to buf. */
static void print_refusal_state(kvt_conn *c, char *buf, size_t cap)
{
	static const char *const names[] = {
		"t1.capacity_bytes", "t1.used_bytes", "t1.free_bytes", "t1.blocks", "t1.pending",
		"t1.evictions", "t1.evictions_nontail", "t2.demotions", "t2.staging_bytes",
		"t2.inflight", "t2.blocks", "t2.used_bytes", "t2.capacity_bytes",
	};
	kvt_stats *s;

	if (kvt_stats_get(c, &s) != 0)
		return;
	size_t len = (size_t)snprintf(buf, cap, "; then STATS said");
	for (size_t i = 0; i < sizeof(names) / sizeof(names[0]) && len < cap; i++) {
		uint64_t v = 0;

		if (kvt_stats_find(s, names[i], &v))
			len += (size_t)snprintf(buf + len, cap - len, " %s=%llu", names[i],
						(unsigned long long)v);
	}
	fprintf(stderr, PROG ":   %s\n", buf);
	kvt_stats_free(s);
}

/* PUT the whole chain, batch blocks per request, groups requests in flight. */
static int put_chain(struct client *cl)
{
	kvt_put_item items[64][64];
	kvt_ticket tk[64];
	bool busy[64] = { false };
	size_t first[64] = { 0 }, count[64] = { 0 };
	size_t issued = 0;
	int rc;

	for (size_t b = 0;; b += cl->put_batch, issued++) {
		unsigned g = (unsigned)(issued % cl->put_groups);

		if (busy[g]) {
			rc = kvt_wait(cl->c, tk[g]);
			busy[g] = false;
			if (rc) {
				size_t len = 0, bad = 0;

				for (size_t j = 0; rc == KVT_EPARTIAL && j < count[g]; j++) {
					if (!items[g][j].status)
						continue;
					if (bad++ == 0)
						len = (size_t)snprintf(cl->note, sizeof(cl->note),
								       "PUT of block %zu of %zu refused with %s",
								       first[g] + j, cl->n,
								       kvt_errname(items[g][j].status));
				}
				if (bad > 1)
					len += (size_t)snprintf(cl->note + len, sizeof(cl->note) - len,
								" (and %zu more of its request)", bad - 1);
				if (!bad)
					len = (size_t)snprintf(cl->note, sizeof(cl->note), "PUT: %s",
							       kvt_errname(rc));
				fprintf(stderr, PROG ": %s\n", cl->note);
				if (len < sizeof(cl->note))
					print_refusal_state(cl->c, cl->note + len, sizeof(cl->note) - len);
				return rc;
			}
		}
		if (b >= cl->n) {
			/* Drain the rest, oldest first. */
			bool any = false;

			for (unsigned k = 0; k < cl->put_groups; k++)
				any |= busy[k];
			if (!any)
				return 0;
			continue;
		}
		first[g] = b;
		count[g] = cl->n - b < cl->put_batch ? cl->n - b : cl->put_batch;
		for (size_t j = 0; j < count[g]; j++) {
			kvt_put_item *it = &items[g][j];

			memset(it, 0, sizeof(*it));
			it->key = cl->keys[b + j];
			if (b + j)
				it->parent = cl->keys[b + j - 1];
			it->region = cl->r;
			it->offset = block_src_off(cl->src, b + j);
			it->length = BLOCK_BYTES;
			it->desc = block_desc;
		}
		rc = kvt_block_put_start(cl->c, items[g], count[g], &tk[g]);
		if (rc) {
			fprintf(stderr, PROG ": PUT start: %s\n", kvt_strerror(rc));
			return rc;
		}
		busy[g] = true;
	}
}

/* Sample word offsets for block b: the first and last word always, the rest
 * spread pseudo-randomly (differently each pass). */
static void sample_offsets(uint64_t b, uint64_t pass, uint64_t *off)
{
	uint64_t s = (b + 1) * 0xd1b54a32d192ed03ull ^ pass, words = BLOCK_BYTES / 8;

	off[0] = 0;
	off[1] = (words - 1) * 8;
	for (size_t i = 2; i < SAMPLES; i++)
		off[i] = (bench_rand64(&s) % words) * 8;
}

struct getter {
	struct client *cl;
	kvt_get_item items[64][64];
	kvt_ticket tk[64];
	bool busy[64];
	size_t first[64], count[64];
	uint64_t pass;
	uint64_t t0, first_done;
	/* PREFETCH ahead of the GETs (pf NULL: none) */
	kvt_conn *pf;
	unsigned window;
	size_t next_pf;
	unsigned prefetched, prefetch_calls;
	bool prefetch_unsupported;
};

static uint8_t *slot(struct client *cl, unsigned g, size_t j)
{
	return cl->base + cl->dst_off + ((uint64_t)g * cl->batch + j) * BLOCK_BYTES;
}

static int get_finish(struct getter *gt, unsigned g)
{
	struct client *cl = gt->cl;
	int rc = kvt_wait(cl->c, gt->tk[g]);

	gt->busy[g] = false;
	if (!gt->first_done)
		gt->first_done = bench_now_ns();
	for (size_t j = 0; j < gt->count[g]; j++) {
		const kvt_get_item *it = &gt->items[g][j];
		size_t b = gt->first[g] + j;
		const uint8_t *want = cl->base + block_src_off(cl->src, b), *got = slot(cl, g, j);
		uint64_t off[SAMPLES];

		if (it->status || (rc && rc != KVT_EPARTIAL)) {
			snprintf(cl->note, sizeof(cl->note), "GET of block %zu of %zu: %s (%s)", b,
				 cl->n, kvt_strerror(it->status ? it->status : rc),
				 kvt_errname(it->status ? it->status : rc));
			fprintf(stderr, PROG ": %s\n", cl->note);
			return it->status ? it->status : rc;
		}
		if (it->length != BLOCK_BYTES) {
			fprintf(stderr, PROG ": block %zu came back with %llu bytes\n", b,
				(unsigned long long)it->length);
			return KVT_EIO;
		}
		sample_offsets(b, gt->pass, off);
		for (size_t i = 0; i < SAMPLES; i++)
			if (memcmp(got + off[i], want + off[i], 8) != 0) {
				snprintf(cl->note, sizeof(cl->note), "block %zu: WRONG BYTES at offset "
					 "%llu", b, (unsigned long long)off[i]);
				fprintf(stderr, PROG ": %s\n", cl->note);
				return KVT_EIO;
			}
		/* The first and last block of every pass in full. */
		if (b == 0 || b == cl->n - 1) {
			if (memcmp(got, want, BLOCK_BYTES) != 0) {
				snprintf(cl->note, sizeof(cl->note), "block %zu: WRONG BYTES (full "
					 "compare)", b);
				fprintf(stderr, PROG ": %s\n", cl->note);
				return KVT_EIO;
			}
			cl->full_checked++;
		}
		cl->verified++;
	}
	return rc == KVT_EPARTIAL ? 0 : rc;
}

/* Keep PREFETCH up to window blocks ahead of position b (deadline 0: a hint; the
 * daemon answers at once and keeps fetching). */
static void prefetch_ahead(struct getter *gt, size_t b)
{
	size_t want = b + gt->window < gt->cl->n ? b + gt->window : gt->cl->n;

	if (!gt->pf || gt->prefetch_unsupported || gt->next_pf >= want)
		return;
	int rc = kvt_block_prefetch(gt->pf, gt->cl->keys + gt->next_pf, want - gt->next_pf,
				    KVT_TIER_HOST, 0, NULL);
	if (rc == KVT_EOPCODE || rc == KVT_ENOSYS || rc == KVT_EOPNOTSUPP) {
		gt->prefetch_unsupported = true;
		return;
	}
	if (rc) {
		fprintf(stderr, PROG ": PREFETCH: %s (%s)\n", kvt_strerror(rc), kvt_errname(rc));
		gt->prefetch_unsupported = true;
		return;
	}
	gt->prefetch_calls++;
	gt->prefetched += (unsigned)(want - gt->next_pf);
	gt->next_pf = want;
}

/* GET the whole chain in order into the destination slots, checking every block. */
static int get_chain(struct getter *gt)
{
	struct client *cl = gt->cl;
	size_t issued = 0;
	int rc;

	prefetch_ahead(gt, 0);
	for (size_t b = 0;; b += cl->batch, issued++) {
		unsigned g = (unsigned)(issued % cl->groups);

		if (gt->busy[g] && (rc = get_finish(gt, g)) != 0)
			return rc;
		if (b >= cl->n) {
			bool any = false;

			for (unsigned k = 0; k < cl->groups; k++)
				any |= gt->busy[k];
			if (!any)
				return 0;
			continue;
		}
		gt->first[g] = b;
		gt->count[g] = cl->n - b < cl->batch ? cl->n - b : cl->batch;
		for (size_t j = 0; j < gt->count[g]; j++) {
			kvt_get_item *it = &gt->items[g][j];
			const uint8_t *want = cl->base + block_src_off(cl->src, b + j);
			uint8_t *dst = slot(cl, g, j);
			uint64_t off[SAMPLES];

			/* Make the sampled words differ from the right bytes first. */
			sample_offsets(b + j, gt->pass, off);
			for (size_t i = 0; i < SAMPLES; i++) {
				uint64_t v;

				memcpy(&v, want + off[i], 8);
				v = ~v;
				memcpy(dst + off[i], &v, 8);
			}
			if (b + j == 0 || b + j == cl->n - 1)
				memset(dst, 0, BLOCK_BYTES);
			memset(it, 0, sizeof(*it));
			it->key = cl->keys[b + j];
			it->region = cl->r;
			it->offset = (uint64_t)(dst - cl->base);
			it->capacity = BLOCK_BYTES;
		}
		rc = kvt_block_get_start(cl->c, gt->items[g], gt->count[g], &gt->tk[g]);
		if (rc) {
			fprintf(stderr, PROG ": GET start: %s\n", kvt_strerror(rc));
			return rc;
		}
		gt->busy[g] = true;
		prefetch_ahead(gt, b + gt->count[g]);
	}
}

static void counters_delta(const struct counters *a, const struct counters *b,
			   struct counters *d)
{
	for (int i = 0; i < NCTR; i++)
		d->v[i] = b->v[i] - a->v[i];
	memcpy(d->backend, b->backend, sizeof(d->backend));
}

/* What the first daemon start said about itself, for the report. */
struct daemon_facts {
	bool have;
	char host_line[512], io_line[512], t2_line[512];
	char backend[256];
	uint64_t queue_depth;
	bool direct_io, mlocked;
};

static void grep_line(const char *log, const char *needle, char *out, size_t cap)
{
	char line[1024];
	FILE *f = fopen(log, "r");

	out[0] = '\0';
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

/* Lines of the log at warn or error level, and anything that is not the daemon's
 * own logging (glibc's "free(): invalid pointer", a sanitizer), appended to a
 * report buffer. */
struct log_notes {
	char text[8192];
	size_t len;
	unsigned count;
};

static void collect_warnings(const char *log, const char *phase, struct log_notes *n)
{
	char line[1024];
	FILE *f = fopen(log, "r");

	if (!f)
		return;
	while (fgets(line, sizeof(line), f)) {
		if (strncmp(line, "kvtierd: ", 9) == 0 && !strstr(line, ": warn:") &&
		    !strstr(line, ": error:"))
			continue;
		if (line[0] == '\n')
			continue;
		n->count++;
		if (n->len < sizeof(n->text) - 1200)
			n->len += (size_t)snprintf(n->text + n->len, sizeof(n->text) - n->len,
						   "  [%s] %s", phase, line);
	}
	fclose(f);
}

static void note_exit(struct log_notes *n, const char *phase, int status, char *why, size_t cap)
{
	char line[256];

	if (status == 0)
		return;
	snprintf(line, sizeof(line), "kvtierd %s (status %d)%s",
		 status < 0 ? "did not stop within the SIGTERM timeout and was killed" : "exited abnormally",
		 status, status == 128 + SIGSEGV ? ": killed by SIGSEGV, it crashed" :
		 status == 128 + SIGABRT ? ": killed by SIGABRT" : "");
	n->count++;
	if (n->len < sizeof(n->text) - 400)
		n->len += (size_t)snprintf(n->text + n->len, sizeof(n->text) - n->len, "  [%s] %s\n",
					   phase, line);
	if (why && !why[0])
		snprintf(why, cap, "%s", line);
}

/* ---- the passes ------------------------------------------------------------------------ */

struct env {
	const struct opts *o;
	const struct source *src;
	struct daemon_facts facts;
	struct log_notes notes;
	struct log_notes failures; /* every failed contender run, retried or not */
	char last_cmd[4096];
	char base[256]; /* the run's temporary directory */
	unsigned seq;   /* runs so far, for unique data directories */
};

/* Make a fresh data directory for one contender run. */
static int run_dir(struct env *e, struct bench_daemon *d)
{
	char dir[300];

	snprintf(dir, sizeof(dir), "%s/run%u", e->base, e->seq++);
	return bench_daemon_init(d, dir);
}

static void note_facts(struct env *e, const struct bench_daemon *d, const struct counters *k)
{
	if (e->facts.have)
		return;
	e->facts.have = true;
	grep_line(d->log, "host tier:", e->facts.host_line, sizeof(e->facts.host_line));
	grep_line(d->log, "NVMe I/O:", e->facts.io_line, sizeof(e->facts.io_line));
	grep_line(d->log, "NVMe tier (T2):", e->facts.t2_line, sizeof(e->facts.t2_line));
	snprintf(e->facts.backend, sizeof(e->facts.backend), "%s", k->backend);
	e->facts.queue_depth = k->v[C_T2_QD];
	e->facts.direct_io = k->v[C_T2_DIRECT];
	e->facts.mlocked = k->v[C_T1_MLOCKED];
	snprintf(e->last_cmd, sizeof(e->last_cmd), "%s", d->cmd);
}

/*
 * Write pass: a fresh daemon on d, PUT the chain, wait until t2.blocks says every
 * block is durable; stop the daemon (its data stays for the read pass).
 */
static int kvt_write_pass(struct env *e, struct bench_daemon *d, const struct dconf *dc, kvt_key *keys,
			  size_t n, const char *phase, struct pass *res)
{
	struct counters k0, k1;
	struct sampler smp;
	struct client cl;
	kvt_conn *c = NULL;
	uint64_t t0, t_ack, t_done = 0, mf0 = 0, mf1 = 0;
	double cpu0;
	int rc, stop_rc;

	memset(res, 0, sizeof(*res));
	rc = daemon_start(e->o, dc, d, &c);
	if (rc)
		return rc;
	rc = client_open(&cl, c, e->src, keys, n, e->o);
	if (rc) {
		fprintf(stderr, PROG ": region: %s\n", kvt_strerror(rc));
		goto out;
	}
	if ((rc = counters_get(c, &k0)) != 0)
		goto out_client;
	note_facts(e, d, &k0);
	rc = sampler_start(&smp, d->sock, k0.v[C_T2_BLOCKS] + n);
	if (rc)
		goto out_client;
	cpu0 = proc_cpu_s(d->pid, &mf0);
	t0 = bench_now_ns();
	rc = put_chain(&cl);
	t_ack = bench_now_ns();
	if (rc) {
		snprintf(res->note, sizeof(res->note), "%s", cl.note);
		goto out_sampler;
	}
	/* Durable = counted in t2.blocks (indexed after fdatasync). */
	for (;;) {
		bool stuck;

		pthread_mutex_lock(&smp.mu);
		t_done = smp.reached_ns;
		rc = smp.err;
		stuck = bench_now_ns() - smp.last_change_ns > (uint64_t)DURABLE_TIMEOUT_MS * 1000000u;
		pthread_mutex_unlock(&smp.mu);
		if (t_done || rc)
			break;
		if (stuck) {
			snprintf(res->note, sizeof(res->note), "t2.blocks stopped at %llu of %zu for "
				 "%d s: not every block was made durable",
				 (unsigned long long)(smp.blocks - k0.v[C_T2_BLOCKS]), n,
				 DURABLE_TIMEOUT_MS / 1000);
			fprintf(stderr, PROG ": %s: %s\n", phase, res->note);
			rc = -ETIMEDOUT;
			break;
		}
		bench_sleep_us(1000);
	}
	res->daemon_cpu = (proc_cpu_s(d->pid, &mf1) - cpu0) / ((double)(bench_now_ns() - t0) / 1e9);
	res->faults = (double)(mf1 - mf0) / (double)n;
out_sampler:
	sampler_stop(&smp);
	res->inflight = smp.max_inflight;
	if (rc == 0 && (rc = counters_get(c, &k1)) == 0) {
		counters_delta(&k0, &k1, &res->d);
		res->stored = k1.v[C_T2_STORED];
		res->logical = k1.v[C_T2_LOGICAL];
		res->seconds = (double)(t_done - t0) / 1e9;
		res->ack_s = (double)(t_ack - t0) / 1e9;
		res->gbps = (double)(n * BLOCK_BYTES) / (double)(t_done - t0);
		res->ok = true;
	}
out_client:
	client_close(&cl);
out:
	kvt_conn_close(c);
	stop_rc = daemon_stop(d);
	collect_warnings(d->log, phase, &e->notes);
	note_exit(&e->notes, phase, stop_rc, res->note, sizeof(res->note));
	/* Truncate the log so the read pass's lines are its own. */
	if (truncate(d->log, 0) != 0)
		(void)0;
	if (rc == 0 && stop_rc != 0)
		rc = -EIO;
	return rc;
}

/*
 * Read pass: restart the daemon on d's data (cold host tier, warm index), check that
 * every block is indexed, GET the chain in order (with PREFETCH window blocks ahead
 * if window > 0), verifying it.
 */
static int kvt_read_pass(struct env *e, struct bench_daemon *d, const struct dconf *dc, kvt_key *keys,
			 size_t n, unsigned window, const char *phase, struct pass *res)
{
	struct counters k0, k1;
	struct sampler smp;
	struct client cl;
	struct getter *gt = NULL;
	kvt_conn *c = NULL, *pf = NULL;
	uint64_t t0, t1, mf0 = 0, mf1 = 0;
	double cpu0;
	int rc, stop_rc;

	memset(res, 0, sizeof(*res));
	rc = daemon_start(e->o, dc, d, &c);
	if (rc)
		return rc;
	rc = client_open(&cl, c, e->src, keys, n, e->o);
	if (rc) {
		fprintf(stderr, PROG ": region: %s\n", kvt_strerror(rc));
		goto out;
	}
	if ((rc = counters_get(c, &k0)) != 0)
		goto out_client;
	if (k0.v[C_T2_BLOCKS] < n) {
		snprintf(res->note, sizeof(res->note), "after the restart t2.blocks is %llu, "
			 "expected %zu", (unsigned long long)k0.v[C_T2_BLOCKS], n);
		fprintf(stderr, PROG ": %s: %s\n", phase, res->note);
		rc = -ENOENT;
		goto out_client;
	}
	gt = calloc(1, sizeof(*gt));
	if (!gt) {
		rc = -ENOMEM;
		goto out_client;
	}
	gt->cl = &cl;
	gt->pass = (uint64_t)e->seq * 7919u;
	gt->window = window;
	if (window) {
		rc = kvt_conn_open(d->sock, &pf);
		if (rc)
			goto out_client;
		kvt_conn_set_timeout(pf, CALL_TIMEOUT_MS);
		gt->pf = pf;
	}
	rc = sampler_start(&smp, d->sock, 0);
	if (rc)
		goto out_client;
	cpu0 = proc_cpu_s(d->pid, &mf0);
	t0 = bench_now_ns();
	gt->t0 = t0;
	rc = get_chain(gt);
	t1 = bench_now_ns();
	res->daemon_cpu = (proc_cpu_s(d->pid, &mf1) - cpu0) / ((double)(t1 - t0) / 1e9);
	res->faults = (double)(mf1 - mf0) / (double)n;
	if (rc)
		snprintf(res->note, sizeof(res->note), "%s", cl.note[0] ? cl.note : kvt_errname(rc));
	sampler_stop(&smp);
	res->inflight = smp.max_inflight;
	if (rc == 0 && (rc = counters_get(c, &k1)) == 0) {
		counters_delta(&k0, &k1, &res->d);
		res->seconds = (double)(t1 - t0) / 1e9;
		res->first_ms = (double)(gt->first_done - t0) / 1e6;
		res->gbps = (double)(n * BLOCK_BYTES) / (double)(t1 - t0);
		res->prefetched = gt->prefetched;
		res->prefetch_calls = gt->prefetch_calls;
		res->prefetch_unsupported = gt->prefetch_unsupported;
		res->ok = true;
	}
out_client:
	client_close(&cl);
	free(gt);
out:
	kvt_conn_close(pf);
	kvt_conn_close(c);
	stop_rc = daemon_stop(d);
	collect_warnings(d->log, phase, &e->notes);
	note_exit(&e->notes, phase, stop_rc, res->note, sizeof(res->note));
	if (truncate(d->log, 0) != 0)
		(void)0;
	if (rc == 0 && stop_rc != 0)
		rc = -EIO;
	return rc;
}

/* ---- series and report ------------------------------------------------------------------- */

struct series {
	const char *name;
	struct pass p[MAX_ROUNDS];
	unsigned n;
	bool failed;
	unsigned fails;       /* failed attempts (retried) */
	unsigned gave_up;     /* rounds in which every attempt failed */
	char last_note[1024]; /* why the last one failed */
};

struct fio_series {
	double w[MAX_ROUNDS], r[MAX_ROUNDS];
	unsigned n;
	bool failed;
};

/* A contender run failed: count it against s and keep why for the report. */
static void note_failure(struct env *e, struct series *s, const char *phase,
			 const struct pass *p, int rc)
{
	struct log_notes *n = &e->failures;
	const char *why = p->note[0] ? p->note : kvt_strerror(rc);

	s->fails++;
	snprintf(s->last_note, sizeof(s->last_note), "%s", why);
	n->count++;
	if (n->len < sizeof(n->text) - 1200)
		n->len += (size_t)snprintf(n->text + n->len, sizeof(n->text) - n->len,
					   "  [%s] %s\n", phase, why);
}

static int cmp_double(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;

	return x < y ? -1 : x > y;
}

static double median_of(double *v, unsigned n, double *lo, double *hi)
{
	qsort(v, n, sizeof(v[0]), cmp_double);
	if (lo)
		*lo = v[0];
	if (hi)
		*hi = v[n - 1];
	return n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

/* Median of a pass field picked by off (a double inside struct pass). */
static double pass_median(const struct series *s, size_t off, double *lo, double *hi)
{
	double v[MAX_ROUNDS];

	for (unsigned i = 0; i < s->n; i++)
		memcpy(&v[i], (const char *)&s->p[i] + off, sizeof(double));
	return median_of(v, s->n, lo, hi);
}

static double fio_median(const struct fio_series *f, bool write, double *lo, double *hi)
{
	double v[MAX_ROUNDS];

	for (unsigned i = 0; i < f->n; i++)
		v[i] = write ? f->w[i] : f->r[i];
	return median_of(v, f->n, lo, hi);
}

/* Sum of a counter over a series' passes, divided by passes (a per-pass mean). */
static double ctr_mean(const struct series *s, enum ctr c)
{
	double sum = 0;

	for (unsigned i = 0; i < s->n; i++)
		sum += (double)s->p[i].d.v[c];
	return s->n ? sum / s->n : 0;
}

static uint64_t max_inflight(const struct series *s)
{
	uint64_t m = 0;

	for (unsigned i = 0; i < s->n; i++)
		if (s->p[i].inflight > m)
			m = s->p[i].inflight;
	return m;
}

static const char *goal(double ratio)
{
	return ratio >= 0.95 ? "meets" : "MISSES";
}

/* Under a row: the runs of this contender that failed (the figures are the others'). */
static void row_failures(struct bench_out *out, const struct series *s)
{
	if (!s->fails)
		return;
	bench_printf(out, "%-22s   ^ medians of %u round%s; %u failed run%s, each retried on a "
		     "fresh daemon; %u round%s without a run that worked after " STR(ATTEMPTS)
		     " attempts (last failure: %s)\n", "", s->n, s->n == 1 ? "" : "s", s->fails,
		     s->fails == 1 ? "" : "s", s->gave_up, s->gave_up == 1 ? "" : "s",
		     s->last_note);
}

/* One table row: name, median GB/s (min-max), ratio to fio, extra columns. */
static void row_write(struct bench_out *out, const struct series *s, double fio_w, uint64_t ctx)
{
	double lo, hi, g, t, a, cpu, dev;

	if (s->n == 0) {
		bench_printf(out, "%-22s FAILED: no run worked in %u attempts (last failure: %s)\n",
			     s->name, s->fails, s->last_note[0] ? s->last_note : "see above");
		return;
	}
	g = pass_median(s, offsetof(struct pass, gbps), &lo, &hi);
	t = pass_median(s, offsetof(struct pass, seconds), NULL, NULL);
	a = pass_median(s, offsetof(struct pass, ack_s), NULL, NULL);
	cpu = pass_median(s, offsetof(struct pass, daemon_cpu), NULL, NULL);
	dev = ctr_mean(s, C_T2_WRITE_BYTES);
	bench_printf(out, "%-22s %5.2f (%4.2f-%4.2f)  %5.3fx %-6s %6.2f  %5.3f  %6.2f %6.2f  %4.0f%%\n",
		     s->name, g, lo, hi, fio_w > 0 ? g / fio_w : 0, fio_w > 0 ? goal(g / fio_w) : "-",
		     dev / (1 << 30), dev / (double)ctx, a, t, 100 * cpu);
	row_failures(out, s);
}

static void row_read(struct bench_out *out, const struct series *s, double fio_r, uint64_t ctx)
{
	double lo, hi, g, t, f, cpu, dev;

	if (s->n == 0) {
		bench_printf(out, "%-22s FAILED: no run worked in %u attempts (last failure: %s)\n",
			     s->name, s->fails, s->last_note[0] ? s->last_note : "see above");
		return;
	}
	g = pass_median(s, offsetof(struct pass, gbps), &lo, &hi);
	t = pass_median(s, offsetof(struct pass, seconds), NULL, NULL);
	f = pass_median(s, offsetof(struct pass, first_ms), NULL, NULL);
	cpu = pass_median(s, offsetof(struct pass, daemon_cpu), NULL, NULL);
	dev = ctr_mean(s, C_T2_READ_BYTES);
	bench_printf(out, "%-22s %5.2f (%4.2f-%4.2f)  %5.3fx %-6s %6.2f  %5.3f  %6.2f %6.1f  %4.0f%%\n",
		     s->name, g, lo, hi, fio_r > 0 ? g / fio_r : 0, fio_r > 0 ? goal(g / fio_r) : "-",
		     dev / (1 << 30), dev / (double)ctx, t, f, 100 * cpu);
	row_failures(out, s);
}

static void counters_line(struct bench_out *out, const struct series *s, bool write)
{
	if (s->n == 0)
		return;
	if (write)
		bench_printf(out, "  %-20s per pass: t2.writes %.0f, t2.demotions %.0f, demote_failures %.0f, "
			     "t1.evictions %.0f, t1.dropped_unwritten %.0f, t2.io_errors %.0f, "
			     "t2.enospc %.0f; stored/logical %.3f; most I/O in flight %llu; daemon minor "
			     "page faults per block %.0f\n",
			     s->name, ctr_mean(s, C_T2_WRITES), ctr_mean(s, C_T2_DEMOTIONS),
			     ctr_mean(s, C_T2_DEMOTE_FAIL), ctr_mean(s, C_T1_EVICTIONS),
			     ctr_mean(s, C_T1_DROPPED), ctr_mean(s, C_T2_IOERR),
			     ctr_mean(s, C_T2_ENOSPC),
			     s->p[0].logical ? (double)s->p[0].stored / (double)s->p[0].logical : 0,
			     (unsigned long long)max_inflight(s),
			     pass_median(s, offsetof(struct pass, faults), NULL, NULL));
	else
		bench_printf(out, "  %-20s per pass: t2.reads %.0f, t2.promotions %.0f, t2.readahead %.0f, "
			     "t2.hits %.0f, t1.hits %.0f, t1.misses %.0f, t1.evictions %.0f, "
			     "fetch_failures %.0f, checksum_failures %.0f, io_errors %.0f; most I/O "
			     "in flight %llu; PREFETCH calls %u (%u keys); daemon minor page faults per "
			     "block %.0f\n",
			     s->name, ctr_mean(s, C_T2_READS), ctr_mean(s, C_T2_PROMOTIONS),
			     ctr_mean(s, C_T2_READAHEAD), ctr_mean(s, C_T2_HITS),
			     ctr_mean(s, C_T1_HITS), ctr_mean(s, C_T1_MISSES),
			     ctr_mean(s, C_T1_EVICTIONS), ctr_mean(s, C_T2_FETCH_FAIL),
			     ctr_mean(s, C_T2_CSUM), ctr_mean(s, C_T2_IOERR),
			     (unsigned long long)max_inflight(s), s->p[0].prefetch_calls,
			     s->p[0].prefetched, pass_median(s, offsetof(struct pass, faults), NULL, NULL));
}

/* Draw the PNG: gnuplot -e "datafile=...; outfile=..." SCRIPT. */
static int draw_png(const struct opts *o)
{
	char expr[2048];
	const char *const argv[] = { "gnuplot", "-e", expr, o->gnuplot_script, NULL };
	char sink[256];
	int rc;

	snprintf(expr, sizeof(expr), "datafile='%s'; outfile='%s'", o->plot, o->png);
	rc = bench_run_capture(argv, sink, sizeof(sink), NULL);
	if (rc != 0)
		fprintf(stderr, PROG ": gnuplot exited with status %d; no %s\n", rc, o->png);
	return rc;
}

/* Copy the executable at path to dir/kvtierd (mode 0755); its path goes to out. */
static int copy_file(const char *path, char *out, size_t cap, const char *dir)
{
	char buf[1 << 16];
	int in, fd, rc = 0;
	ssize_t r;

	snprintf(out, cap, "%s/kvtierd", dir);
	in = open(path, O_RDONLY | O_CLOEXEC);
	if (in < 0)
		return -errno;
	fd = open(out, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0755);
	if (fd < 0) {
		rc = -errno;
		close(in);
		return rc;
	}
	while ((r = read(in, buf, sizeof(buf))) > 0) {
		if (write(fd, buf, (size_t)r) != r) {
			rc = -EIO;
			break;
		}
	}
	if (r < 0)
		rc = -errno;
	close(in);
	if (close(fd) != 0 && rc == 0)
		rc = -EIO;
	return rc;
}

/* ---- main ------------------------------------------------------------------------------------ */

int main(int argc, char **argv)
{
	struct opts o = {
		.dir = "/var/tmp",
		.daemon = KVT_BIN_DIR "/kvtierd",
		.input = "/tmp/kv.bf16",
		.tokens = 32768,
		.pagein_tokens = 65536,
		.host_capacity = GIB,
		.rounds = 3,
		.pagein_rounds = 1,
		.batch = 4,
		.groups = 2,
		.put_batch = 1,
		.put_groups = 1,
		.window = 16,
		.gnuplot_script = "bench/t2.gnuplot",
	};
	static struct series wraw = { .name = "kvtier raw" }, wbf = { .name = "kvtier bf16" },
			     rraw = { .name = "kvtier raw" }, rbf = { .name = "kvtier bf16" };
	static struct series vwraw = { .name = "kvtier raw *" }, vwbf = { .name = "kvtier bf16 *" },
			     vrraw = { .name = "kvtier raw *" }, vrbf = { .name = "kvtier bf16 *" };
	static struct series pin_pf[2] = { { .name = "PREFETCH+GET raw" },
					   { .name = "PREFETCH+GET bf16" } };
	static struct series pin_get[2] = { { .name = "GET+readahead raw" },
					    { .name = "GET+readahead bf16" } };
	static struct fio_series fio, fio_pin;
	static struct env e;
	struct bench_out out;
	struct bench_cpu cpu0;
	struct source src;
	char fiover[128], fio_wcmd[1024] = "", fio_rcmd[1024] = "", fio_pcmd[1024] = "";
	char daemon_copy[320];
	const char *daemon_path;
	bool input_given = false, synthetic = false, prefetch_unsupported = false;
	unsigned qd_r = 0, qd_w = 0;
	uint64_t v, t_start = bench_now_ns();
	size_t n, npin;
	kvt_key *keys = NULL, *pkeys = NULL;
	struct rlimit rl = { RLIM_INFINITY, RLIM_INFINITY };
	int opt, ret = 0, rc;

	while ((opt = getopt(argc, argv, "d:D:i:St:T:r:R:H:b:G:w:NW:q:xO:E:V:L:o:p:g:h")) != -1) {
		switch (opt) {
		case 'd': o.dir = optarg; break;
		case 'D': o.daemon = optarg; break;
		case 'i': o.input = optarg; input_given = true; break;
		case 'S': synthetic = true; break;
		case 'o': o.out = optarg; break;
		case 'p': o.plot = optarg; break;
		case 'g': o.png = optarg; break;
		case 'x': o.pagein_raw_only = true; break;
		case 'O':
			if (o.nextra == MAX_EXTRA || !strchr(optarg, '='))
				goto bad_arg;
			o.extra[o.nextra++] = optarg;
			break;
		case 't':
		case 'T':
			if (bench_parse_size(optarg, &v) || v > (1u << 24) || (opt == 't' && v < BLOCK_TOKENS))
				goto bad_arg;
			*(opt == 't' ? &o.tokens : &o.pagein_tokens) = v;
			break;
		case 'r':
		case 'R':
			if (bench_parse_size(optarg, &v) || v < 1 || v > MAX_ROUNDS)
				goto bad_arg;
			*(opt == 'r' ? &o.rounds : &o.pagein_rounds) = (unsigned)v;
			break;
		case 'H':
			if (bench_parse_size(optarg, &v) || v < 256 * MIB)
				goto bad_arg;
			o.host_capacity = v;
			break;
		case 'b':
		case 'G':
			if (bench_parse_size(optarg, &v) || v < 1 || v > 64)
				goto bad_arg;
			*(opt == 'b' ? &o.batch : &o.groups) = (unsigned)v;
			break;
		case 'w': {
			unsigned pb, pg;
			char tail;

			if (sscanf(optarg, "%ux%u%c", &pb, &pg, &tail) != 2 || pb < 1 || pb > 64 ||
			    pg < 1 || pg > 64)
				goto bad_arg;
			o.put_batch = pb;
			o.put_groups = pg;
			break;
		}
		case 'N': o.no_check = true; break;
		case 'L': o.label = optarg; break;
		case 'E':
			if (o.nenv == MAX_EXTRA || !strchr(optarg, '=') || optarg[0] == '=')
				goto bad_arg;
			o.env[o.nenv++] = optarg;
			break;
		case 'V':
			if (o.nvenv == MAX_EXTRA || !strchr(optarg, '=') || optarg[0] == '=')
				goto bad_arg;
			o.venv[o.nvenv++] = optarg;
			break;
		case 'W':
			if (bench_parse_size(optarg, &v) || v > 4096)
				goto bad_arg;
			o.window = (unsigned)v;
			break;
		case 'q':
			if (bench_parse_size(optarg, &v) || v < 1 || v > 4096)
				goto bad_arg;
			o.qd = (unsigned)v;
			break;
		case 'h':
			usage(stdout);
			return 0;
		default:
			usage(stderr);
			return 2;
		}
	}
	if (optind != argc || (o.png && !o.plot))
		goto bad_arg;
	if (synthetic)
		o.input = NULL;
	else if (!input_given && access(o.input, R_OK) != 0)
		o.input = NULL; /* no /tmp/kv.bf16: synthetic, and the report says so */

	/* Let the daemon lock its host tier, as the systemd unit does. */
	(void)setrlimit(RLIMIT_MEMLOCK, &rl);
	signal(SIGINT, bench_on_signal);
	signal(SIGTERM, bench_on_signal);
	signal(SIGHUP, bench_on_signal);
	signal(SIGPIPE, SIG_IGN);

	rc = source_load(&o, &src);
	if (rc) {
		fprintf(stderr, PROG ": %s: %s\n", o.input ? o.input : "synthetic data", strerror(-rc));
		return 1;
	}
	n = (size_t)(o.tokens / BLOCK_TOKENS);
	npin = (size_t)(o.pagein_tokens / BLOCK_TOKENS);
	keys = calloc(n, sizeof(*keys));
	pkeys = calloc(npin ? npin : 1, sizeof(*pkeys));
	if (!keys || !pkeys)
		return 1;
	make_keys(keys, n, "bench_t2 write/read");
	make_keys(pkeys, npin, "bench_t2 page-in");

	if (strlen(o.dir) > 200) {
		fprintf(stderr, PROG ": -d %s: path too long\n", o.dir);
		return 2;
	}
	snprintf(e.base, sizeof(e.base), "%s/kvtier-t2.XXXXXX", o.dir);
	if (!mkdtemp(e.base)) {
		fprintf(stderr, PROG ": mkdtemp %s: %s\n", e.base, strerror(errno));
		return 1;
	}
	snprintf(bench_tmp_dir, sizeof(bench_tmp_dir), "%s", e.base);
	/* Run a private copy of the daemon: a rebuild of build/bin during the run
	 * (make replaces the file) must neither break nor change it halfway. */
	rc = copy_file(o.daemon, daemon_copy, sizeof(daemon_copy), e.base);
	if (rc) {
		fprintf(stderr, PROG ": %s: %s\n", o.daemon, strerror(-rc));
		bench_rm_tree(e.base);
		return 1;
	}
	daemon_path = o.daemon;
	o.daemon = daemon_copy;
	e.o = &o;
	e.src = &src;
	if (bench_out_open(&out, o.out) != 0) {
		fprintf(stderr, PROG ": cannot write %s: %s\n", o.out, strerror(errno));
		bench_rm_tree(e.base);
		return 1;
	}
	bench_fio_version(fiover, sizeof(fiover));
	bench_print_machine(&out, "bench_t2: NVMe tier (T2) through kvtierd, sequential write/read "
				  "and cold page-in, beside fio");
	{
		char cmd[2048];
		size_t len = 0;

		for (int i = 0; i < argc && len < sizeof(cmd); i++)
			len += (size_t)snprintf(cmd + len, sizeof(cmd) - len, "%s%s", i ? " " : "",
						argv[i]);
		bench_printf(&out, "command: %s\n", cmd);
	}
	if (o.label)
		bench_printf(&out, "note:    %s\n", o.label);
	for (unsigned i = 0; i < o.nenv; i++)
		bench_printf(&out, "env:     kvtierd runs with %s in its environment\n", o.env[i]);
	for (unsigned i = 0; i < o.nvenv; i++)
		bench_printf(&out, "variant: rows marked * (write/read test only): kvtierd runs with %s "
				   "in its environment, interleaved with the unmarked rows\n", o.venv[i]);
	bench_printf(&out, "dir:     %s (%s), fresh directory per contender run, removed after\n",
		     o.dir, bench_fs_name(e.base));
	bench_cpu_snapshot(&cpu0);

	uint64_t ctx = (uint64_t)n * BLOCK_BYTES, pctx = (uint64_t)npin * BLOCK_BYTES;
	uint64_t big = ctx > pctx ? ctx : pctx;
	/* Room for the context, a segment of slack per 8, and the cleaning reserve. */
	uint64_t nvme_cap = ((big + big / 4) / GIB + 3) * GIB;
	struct dconf dc_raw = { "raw", nvme_cap, o.host_capacity, false };
	struct dconf dc_bf16 = { "bf16", nvme_cap, o.host_capacity, false };
	struct dconf dc_vraw = { "raw", nvme_cap, o.host_capacity, true };
	struct dconf dc_vbf16 = { "bf16", nvme_cap, o.host_capacity, true };

	/* ---- 0. PUTs the way the example engine issues them --------------------------- */
	/* The measurements below PUT one block at a time; this checks, once, whether the
	 * daemon takes the engine's pipelined pattern into the same small host tier. */
	static struct pass check;
	bool check_ran = false;
	int check_rc = 0;

	if (!o.no_check && (o.put_batch != o.batch || o.put_groups != o.groups)) {
		struct opts oc = o;
		struct env ec;
		struct bench_daemon d;

		oc.put_batch = o.batch;
		oc.put_groups = o.groups;
		ec = e;
		ec.o = &oc;
		if (run_dir(&ec, &d) == 0) {
			check_rc = kvt_write_pass(&ec, &d, &dc_raw, keys, n, "engine-pattern PUT check",
						  &check);
			check_ran = true;
			e.notes = ec.notes;
			e.facts = ec.facts;
			snprintf(e.last_cmd, sizeof(e.last_cmd), "%s", ec.last_cmd);
			bench_rm_tree(d.dir);
		}
		e.seq = ec.seq;
	}

	/* ---- 1. sequential write and read, rounds interleaved ---------------------------- */
	/* 0 raw, 1 bf16, 2 fio, 3 raw *, 4 bf16 *; round 0 starts with raw. */
	unsigned ncont = o.nvenv ? 5 : 3;

	for (unsigned round = 0; round < o.rounds; round++) {
		for (unsigned k = 0; k < ncont; k++) {
			unsigned who = (round + k) % ncont;
			struct bench_daemon d;
			char phase[64];

			if (who == 2) {
				char path[320];
				int frc;

				if (fio.failed)
					continue;
				if (!qd_r) { /* kvtier ran first in round 0: use what it kept in flight */
					qd_r = o.qd ? o.qd : (unsigned)max_inflight(&rraw);
					qd_w = o.qd ? o.qd : (unsigned)max_inflight(&wraw);
					if (!qd_r)
						qd_r = 8;
					if (!qd_w)
						qd_w = 8;
				}
				snprintf(path, sizeof(path), "%s/fio.dat", e.base);
				frc = run_fio(path, ctx, qd_w, true, &fio.w[fio.n], fio_wcmd,
					      sizeof(fio_wcmd));
				if (frc == 0)
					frc = run_fio(path, ctx, qd_r, false, &fio.r[fio.n], fio_rcmd,
						      sizeof(fio_rcmd));
				unlink(path);
				if (frc)
					fio.failed = true;
				else
					fio.n++;
				continue;
			}
			static struct series *const wsv[5] = { &wraw, &wbf, NULL, &vwraw, &vwbf };
			static struct series *const rsv[5] = { &rraw, &rbf, NULL, &vrraw, &vrbf };
			struct series *ws = wsv[who], *rs = rsv[who];
			const struct dconf *dc = who == 0 ? &dc_raw : who == 1 ? &dc_bf16
						: who == 3 ? &dc_vraw : &dc_vbf16;

			/* A failed run is kept in the report and retried on a fresh daemon and
			 * directory: the figures are of runs that worked, the failures are
			 * findings. A round whose attempts all fail is skipped; the next round
			 * tries again. */
			bool done = false;

			for (unsigned at = 0; at < ATTEMPTS && !done; at++) {
				rc = run_dir(&e, &d);
				if (rc) {
					fprintf(stderr, PROG ": %s: %s\n", d.dir, strerror(-rc));
					break;
				}
				snprintf(phase, sizeof(phase), "write %s%s round %u attempt %u", dc->codec,
					 dc->variant ? " *" : "", round + 1, at + 1);
				rc = kvt_write_pass(&e, &d, dc, keys, n, phase, &ws->p[ws->n]);
				if (rc) {
					fprintf(stderr, PROG ": %s failed: %s\n", phase, kvt_strerror(rc));
					note_failure(&e, ws, phase, &ws->p[ws->n], rc);
				} else {
					snprintf(phase, sizeof(phase), "read %s%s round %u attempt %u",
						 dc->codec, dc->variant ? " *" : "", round + 1, at + 1);
					rc = kvt_read_pass(&e, &d, dc, keys, n, 0, phase, &rs->p[rs->n]);
					if (rc) {
						fprintf(stderr, PROG ": %s failed: %s\n", phase,
							kvt_strerror(rc));
						note_failure(&e, rs, phase, &rs->p[rs->n], rc);
					} else {
						ws->n++;
						rs->n++;
						done = true;
					}
				}
				bench_rm_tree(d.dir);
			}
			if (!done) {
				ws->failed = rs->failed = true;
				ws->gave_up++;
				rs->gave_up++;
			}
		}
	}

	/* ---- 2. cold page-in of the larger context ------------------------------------------ */
	unsigned ncodec = o.pagein_raw_only ? 1 : 2;

	for (unsigned round = 0; npin && round < o.pagein_rounds; round++) {
		for (unsigned k = 0; k < ncodec + 1; k++) {
			unsigned who = (round + k) % (ncodec + 1); /* ncodec: fio */

			if (who == ncodec) {
				char path[320], wcmd[1024];
				double wg;
				int frc;

				if (fio_pin.failed)
					continue;
				if (!qd_r)
					qd_r = o.qd ? o.qd : 8;
				/* fio needs the file first: its write figure is not reported. */
				snprintf(path, sizeof(path), "%s/fio.dat", e.base);
				frc = run_fio(path, pctx, qd_w ? qd_w : qd_r, true, &wg, wcmd,
					      sizeof(wcmd));
				if (frc == 0)
					frc = run_fio(path, pctx, qd_r, false, &fio_pin.r[fio_pin.n],
						      fio_pcmd, sizeof(fio_pcmd));
				unlink(path);
				if (frc)
					fio_pin.failed = true;
				else
					fio_pin.w[fio_pin.n++] = wg;
				continue;
			}
			const struct dconf *dc = who ? &dc_bf16 : &dc_raw;
			struct series *ps = &pin_pf[who], *gs = &pin_get[who];
			struct pass wp;
			struct bench_daemon d;
			char phase[64];

			bool done = false;

			for (unsigned at = 0; at < ATTEMPTS && !done; at++) {
				bool ok = true;

				if (run_dir(&e, &d) != 0)
					break;
				snprintf(phase, sizeof(phase), "page-in write %s round %u attempt %u",
					 dc->codec, round + 1, at + 1);
				rc = kvt_write_pass(&e, &d, dc, pkeys, npin, phase, &wp);
				if (rc) {
					fprintf(stderr, PROG ": %s failed: %s\n", phase, kvt_strerror(rc));
					note_failure(&e, ps, phase, &wp, rc);
					bench_rm_tree(d.dir);
					continue;
				}
				/* Both readers, in an order alternating by round; each on a fresh
				 * restart, so each starts cold. */
				for (unsigned j = 0; j < 2 && ok; j++) {
					bool with_pf = ((round + j) % 2) == 0;
					struct series *s = with_pf ? ps : gs;

					snprintf(phase, sizeof(phase), "page-in %s %s round %u attempt %u",
						 with_pf ? "PREFETCH+GET" : "GET", dc->codec, round + 1,
						 at + 1);
					rc = kvt_read_pass(&e, &d, dc, pkeys, npin, with_pf ? o.window : 0,
							   phase, &s->p[s->n]);
					if (rc) {
						fprintf(stderr, PROG ": %s failed: %s\n", phase,
							kvt_strerror(rc));
						note_failure(&e, s, phase, &s->p[s->n], rc);
						ok = false;
					}
				}
				if (ok) {
					if (ps->p[ps->n].prefetch_unsupported)
						prefetch_unsupported = true;
					ps->n++;
					gs->n++;
					done = true;
				}
				bench_rm_tree(d.dir);
			}
			if (!done) {
				ps->failed = gs->failed = true;
				ps->gave_up++;
				gs->gave_up++;
			}
		}
	}

	/* ---- report ------------------------------------------------------------------------------ */
	bench_print_cpu_use(&out, &cpu0);
	bench_printf(&out, "daemon:  %s (a copy of %s taken at the start)\n",
		     e.last_cmd[0] ? e.last_cmd : "(did not start)", daemon_path);
	bench_printf(&out, "         (+ socket and data_dir in the run's directory; everything else "
			   "the embedded defaults: nvme_segment_size 1GiB, nvme_staging 256MiB, "
			   "io_backend auto, io_queue_depth 64, readahead 4)\n");
	if (e.facts.have) {
		bench_printf(&out, "log:     %s\n", e.facts.host_line);
		bench_printf(&out, "log:     %s\n", e.facts.io_line);
		bench_printf(&out, "log:     %s\n", e.facts.t2_line);
		bench_printf(&out, "O_DIRECT: %s (STATS t2.direct_io = %d, t2.backend \"%s\", "
			     "t2.queue_depth %llu); host tier locked in RAM: %s\n",
			     e.facts.direct_io ? "yes" : "NO", e.facts.direct_io, e.facts.backend,
			     (unsigned long long)e.facts.queue_depth, e.facts.mlocked ? "yes" : "no");
	}
	bench_printf(&out, "data:    %s\n", src.desc);
	bench_printf(&out, "blocks:  Llama-3-8B shape of examples/engine.c: 32 layers x 8 KV heads x "
			   "128 dims x K,V x bf16 = %u KiB/token, %u-token blocks = %llu MiB; "
			   "descriptor dtype bf16\n", TOKEN_BYTES / 1024, BLOCK_TOKENS,
		     (unsigned long long)(BLOCK_BYTES / MIB));
	bench_printf(&out, "client:  one connection; GETs: %u blocks per request, %u requests in "
			   "flight (the example engine's 8-slot region); PUTs: %u block%s per request, "
			   "%u in flight, read straight from the region; every GET'd block checked "
			   "(%d sampled words; first and last block of each pass in full)\n",
		     o.batch, o.groups, o.put_batch, o.put_batch > 1 ? "s" : "", o.put_groups,
		     SAMPLES);
	bench_printf(&out, "STATS:   polled every %d ms on a second connection (t2.blocks for "
			   "durability, t2.inflight for the queue depth)\n", SAMPLE_US / 1000);
	bench_printf(&out, "fio:     %s: %s; then %s\n", fiover,
		     fio_wcmd[0] ? fio_wcmd : "did not run", fio_rcmd[0] ? fio_rcmd : "-");
	bench_printf(&out, "         queue depth: the most I/O STATS showed kvtierd keeping in flight "
			   "(%s): write %u, read %u; buffers not registered on either side (the "
			   "daemon's staging buffers are not)\n",
		     o.qd ? "overridden by -q" : "raw codec, round 1", qd_w, qd_r);
	bench_printf(&out, "rounds:  %u of the write/read test, %u of the page-in, contenders in a "
			   "rotating order; figures are medians (min-max); GB/s = 10^9 bytes/s\n",
		     o.rounds, o.pagein_rounds);

	double fw = fio.n ? fio_median(&fio, true, NULL, NULL) : 0;
	double fr = fio.n ? fio_median(&fio, false, NULL, NULL) : 0;
	double lo, hi;

	bench_printf(&out, "\n## 1. Sequential write: %llu tokens = %zu blocks = %.2f GiB; PUT with "
			   "nvme_write = through into a %llu MiB host tier, timed from the first PUT "
			   "until STATS t2.blocks counts every block (written, fdatasync'd, indexed)\n",
		     (unsigned long long)o.tokens, n, (double)ctx / GIB,
		     (unsigned long long)(o.host_capacity / MIB));
	bench_printf(&out, "%-22s %-17s %7s %-6s %6s  %5s  %6s %6s  %5s\n", "", "logical GB/s",
		     "vs fio", "goal", "dev GiB", "dev/lg", "ack s", "dur. s", "dCPU");
	if (fio.n) {
		double m = fio_median(&fio, true, &lo, &hi);

		bench_printf(&out, "%-22s %5.2f (%4.2f-%4.2f)  %5.3fx %-6s %6.2f  %5.3f\n",
			     "fio write (baseline)", m, lo, hi, 1.0, "", (double)ctx / GIB, 1.0);
	} else {
		bench_printf(&out, "%-22s did not run (see above)\n", "fio write (baseline)");
	}
	row_write(&out, &wraw, fw, ctx);
	row_write(&out, &wbf, fw, ctx);
	if (o.nvenv) {
		row_write(&out, &vwraw, fw, ctx);
		row_write(&out, &vwbf, fw, ctx);
	}
	if (check_ran) {
		if (check_rc == 0 && check.ok)
			bench_printf(&out, "  engine-pattern PUT check (%u blocks per PUT, %u in flight, raw, "
					   "one run): OK, %.2f GB/s until durable (ack %.2f s, durable %.2f s)\n",
				     o.batch, o.groups, check.gbps, check.ack_s, check.seconds);
		else
			bench_printf(&out, "  engine-pattern PUT check (%u blocks per PUT, %u in flight, raw, "
					   "one run): FAILED: %s\n", o.batch, o.groups,
				     check.note[0] ? check.note : kvt_errname(check_rc));
	}
	counters_line(&out, &wraw, true);
	counters_line(&out, &wbf, true);
	if (o.nvenv) {
		counters_line(&out, &vwraw, true);
		counters_line(&out, &vwbf, true);
	}

	bench_printf(&out, "\n## 1. Sequential read: daemon restarted on that data (cold host tier, "
			   "warm NVMe index), GET the chain in order (readahead 4 along the chain), "
			   "logical bytes delivered into the client's region\n");
	bench_printf(&out, "%-22s %-17s %7s %-6s %6s  %5s  %6s %6s  %5s\n", "", "logical GB/s",
		     "vs fio", "goal", "dev GiB", "dev/lg", "s", "1st ms", "dCPU");
	if (fio.n) {
		double m = fio_median(&fio, false, &lo, &hi);

		bench_printf(&out, "%-22s %5.2f (%4.2f-%4.2f)  %5.3fx %-6s %6.2f  %5.3f\n",
			     "fio read (baseline)", m, lo, hi, 1.0, "", (double)ctx / GIB, 1.0);
	} else {
		bench_printf(&out, "%-22s did not run (see above)\n", "fio read (baseline)");
	}
	row_read(&out, &rraw, fr, ctx);
	row_read(&out, &rbf, fr, ctx);
	if (o.nvenv) {
		row_read(&out, &vrraw, fr, ctx);
		row_read(&out, &vrbf, fr, ctx);
	}
	counters_line(&out, &rraw, false);
	counters_line(&out, &rbf, false);
	if (o.nvenv) {
		counters_line(&out, &vrraw, false);
		counters_line(&out, &vrbf, false);
	}
	if (rraw.n && rbf.n) {
		double a = pass_median(&rraw, offsetof(struct pass, gbps), NULL, NULL);
		double b = pass_median(&rbf, offsetof(struct pass, gbps), NULL, NULL);

		bench_printf(&out, "  logical read GB/s, bf16 codec vs raw: %.3fx; stored/logical with "
				   "bf16: %.3f\n", b / a,
			     wbf.n && wbf.p[0].logical
				     ? (double)wbf.p[0].stored / (double)wbf.p[0].logical : 0);
	}

	double fp = fio_pin.n ? fio_median(&fio_pin, false, NULL, NULL) : 0;

	if (npin) {
		bench_printf(&out, "\n## 2. Cold page-in: %llu tokens = %zu blocks = %.2f GiB written "
				   "as in 1 (write-through), daemon restarted (cold host tier of %llu MiB), "
				   "then the chain read in order: with PREFETCH (to the host tier, "
				   "deadline 0) kept %u blocks ahead of the GETs, and with GET + readahead "
				   "alone; each reader on its own restart\n",
			     (unsigned long long)o.pagein_tokens, npin, (double)pctx / GIB,
			     (unsigned long long)(o.host_capacity / MIB), o.window);
		if (prefetch_unsupported)
			bench_printf(&out, "  NOTE: this daemon refused PREFETCH; the PREFETCH rows are "
					   "GET + readahead only\n");
		bench_printf(&out, "%-22s %-17s %7s %-6s %6s  %5s  %6s %6s  %5s\n", "", "logical GB/s",
			     "vs fio", "goal", "dev GiB", "dev/lg", "s", "1st ms", "dCPU");
		if (fio_pin.n) {
			double m = fio_median(&fio_pin, false, &lo, &hi);

			bench_printf(&out, "%-22s %5.2f (%4.2f-%4.2f)  %5.3fx %-6s %6.2f  %5.3f  %6.2f\n",
				     "fio read (baseline)", m, lo, hi, 1.0, "", (double)pctx / GIB, 1.0,
				     (double)pctx / (m * 1e9));
		} else {
			bench_printf(&out, "%-22s did not run (see above)\n", "fio read (baseline)");
		}
		for (unsigned c = 0; c < ncodec; c++) {
			row_read(&out, &pin_pf[c], fp, pctx);
			row_read(&out, &pin_get[c], fp, pctx);
		}
		for (unsigned c = 0; c < ncodec; c++) {
			counters_line(&out, &pin_pf[c], false);
			counters_line(&out, &pin_get[c], false);
		}
		if (fio_pcmd[0])
			bench_printf(&out, "  fio: %s (after writing the file with --rw=write)\n",
				     fio_pcmd);
	}

	bench_printf(&out, "\nlogical GB/s: context bytes / wall time (write: first PUT until every "
			   "block durable; read: first GET until the last block is in the client's "
			   "region). vs fio: over fio's GB/s for the same bytes, block size and queue "
			   "depth; goal >= 0.95x. dev GiB: bytes the daemon wrote (t2.write_bytes) or "
			   "read (t2.read_bytes), per pass; dev/lg: that over the logical bytes (records "
			   "carry a header; < 1 means compression, > 1 on reads means blocks read "
			   "twice). ack s: first PUT until the last PUT was answered; dur. s: until "
			   "durable. 1st ms: until the first GET (%u blocks) was answered. dCPU: "
			   "kvtierd's CPU time over wall time (100%% = one core of %ld).\n",
		     o.batch, sysconf(_SC_NPROCESSORS_ONLN));
	if (e.failures.count)
		bench_printf(&out, "\nFAILED contender runs: %u (each retried on a fresh daemon and "
				   "directory, up to %u attempts per round; the figures above are from "
				   "the runs that worked):\n%s", e.failures.count, ATTEMPTS,
			     e.failures.text);
	else
		bench_printf(&out, "\nfailed contender runs: none\n");
	if (e.notes.count)
		bench_printf(&out, "\ndaemon log: %u warning/error lines:\n%s", e.notes.count,
			     e.notes.text);
	else
		bench_printf(&out, "\ndaemon log: no warning or error lines in any run\n");
	bench_printf(&out, "verified: %s; whole run %.0f s\n",
		     "every GET'd block sampled, first/last block of each pass compared in full",
		     (double)(bench_now_ns() - t_start) / 1e9);

	if (o.plot) {
		FILE *f = fopen(o.plot, "w");
		double g[4][3];

#define MED(s) ((s).n ? pass_median(&(s), offsetof(struct pass, gbps), NULL, NULL) : -1)
		g[0][0] = fio.n ? fw : -1;
		g[0][1] = MED(wraw);
		g[0][2] = MED(wbf);
		g[1][0] = fio.n ? fr : -1;
		g[1][1] = MED(rraw);
		g[1][2] = MED(rbf);
		g[2][0] = fio_pin.n ? fp : -1;
		g[2][1] = MED(pin_pf[0]);
		g[2][2] = ncodec > 1 ? MED(pin_pf[1]) : -1;
		g[3][0] = fio_pin.n ? fp : -1;
		g[3][1] = MED(pin_get[0]);
		g[3][2] = ncodec > 1 ? MED(pin_get[1]) : -1;
#undef MED
		if (!f) {
			fprintf(stderr, PROG ": cannot write %s: %s\n", o.plot, strerror(errno));
			ret = 1;
		} else {
			static const char *const label[4][2] = {
				{ "write", "" }, { "read", "" }, { "page-in", ", PREFETCH" },
				{ "page-in", ", GET" },
			};

			fprintf(f, "# bench_t2 GB/s medians: test, fio (raw device), kvtier raw, kvtier "
				   "bf16 (logical); ? = not measured\n");
			for (int i = 0; i < 4; i++) {
				if (i >= 2 && !npin)
					break;
				fprintf(f, "\"%s %.0f GiB%s\"", label[i][0],
					(double)(i < 2 ? ctx : pctx) / GIB, label[i][1]);
				for (int j = 0; j < 3; j++) {
					if (g[i][j] < 0)
						fprintf(f, " ?");
					else
						fprintf(f, " %.3f", g[i][j]);
				}
				fprintf(f, "\n");
			}
			if (fclose(f) != 0)
				ret = 1;
			if (o.png && draw_png(&o) != 0)
				ret = 1;
		}
	}

	if (vwraw.failed || vwbf.failed || vrraw.failed || vrbf.failed)
		ret = 1;
	if (fio.failed || wraw.failed || wbf.failed || rraw.failed || rbf.failed ||
	    fio_pin.failed || pin_pf[0].failed || pin_get[0].failed ||
	    (ncodec > 1 && (pin_pf[1].failed || pin_get[1].failed)))
		ret = 1;
	if (bench_out_close(&out) != 0)
		ret = 1;
	bench_rm_tree(e.base);
	bench_tmp_dir[0] = '\0';
	free(keys);
	free(pkeys);
	free(src.img);
	return ret;

bad_arg:
	usage(stderr);
	return 2;
}
