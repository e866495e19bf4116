/*
 * bench_ctxmem.c - saved contexts and memory records through a kvtierd this
 * program starts itself, each figure beside its baseline from the same run:
 *
 *  1. Context save and restore GB/s for a large Llama-3-8B-shaped context (8 GiB
 *     by default) against the raw NVMe tier: "raw write" is PUT with
 *     nvme_write = through timed until STATS shows every block durable, "raw
 *     read" is GET of the chain in order after a restart (cold host tier, read-
 *     ahead on), as bench_t2 measures them; and fio (io_uring, O_DIRECT, the same
 *     block size) on the same file system for the device itself. Every daemon's
 *     host tier holds the whole context, so nothing is evicted: the raw read and
 *     the restore page into the same empty tier. Save: the blocks
 *     are only in RAM (write-back, a host tier larger than the context), and
 *     CTX_SAVE makes them durable on NVMe and commits the manifest. Restore: a
 *     restarted daemon (cold host tier), CTX_LOAD into the host tier, then GET
 *     of every block in chain order.
 *  2. MEM_PUT throughput with 1, 8 and 64 concurrent clients (threads, each with
 *     its own connection), with meta.commits against meta.writes to show the
 *     group commit, beside the rate of one writer doing write + fdatasync on the
 *     same file system (what a store without group commit could at best reach).
 *  3. MEM_SEARCH latency (exact top-10 by cosine) at 10K and 100K records of
 *     dimension 768, beside a brute-force cosine scan over the same vectors in
 *     this process; the top-10 of both are compared.
 *
 * Every GET is checked: sampled words of every block, and the first and last
 * block of every pass in full.
 */
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <getopt.h>
#include <pthread.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <sys/statvfs.h>
#include <sys/wait.h>
#include <unistd.h>

#include "kvtier.h"
#include "bench_daemon.h"
#include "bench_util.h"

#ifndef KVT_BIN_DIR
#define KVT_BIN_DIR "build/bin"
#endif

#define PROG "bench_ctxmem"
#define MIB (1024ull * 1024)
#define GIB (1024ull * MIB)
#define CALL_TIMEOUT_MS 600000
#define START_TIMEOUT_MS 60000
#define STOP_TIMEOUT_MS 180000
#define DURABLE_STALL_MS 120000
#define SAMPLES 16

/* The example engine's Llama-3-8B block: 32 layers x 2 x 8 heads x 128 x bf16 x 256 tokens. */
#define BLOCK_TOKENS 256u
#define BLOCK_BYTES (32ull * 2 * 8 * 128 * 2 * BLOCK_TOKENS)
#define IMG_BLOCKS 8    /* distinct block images, used cyclically */
#define BATCH 4         /* blocks per PUT/GET request */
#define GROUPS 2        /* requests in flight */

#define DIM 768
#define TOPK 10

/* ---- options ------------------------------------------------------------------------ */

struct opts {
	const char *dir, *daemon, *out;
	uint64_t ctx_bytes;   /* 0: 8 GiB, or less if RAM or disk are short */
	unsigned put_seconds; /* per MEM_PUT client count */
	unsigned queries;
	unsigned small_n, large_n;
	bool no_ctx, no_mem, no_fio;
};

static void usage(FILE *f)
{
	fprintf(f,
		"usage: " PROG " [-d DIR] [-D KVTIERD] [-c SIZE] [-t SECONDS] [-q QUERIES]\n"
		"                    [-n SMALL,LARGE] [-C] [-M] [-F] [-o FILE]\n"
		"  -d DIR      parent of the temporary directory (default /var/tmp; must accept\n"
		"              O_DIRECT)\n"
		"  -D KVTIERD  daemon binary (default " KVT_BIN_DIR "/kvtierd)\n"
		"  -c SIZE     context size, K/M/G suffixes (default 8G, reduced when RAM or\n"
		"              disk space is short; the report says which)\n"
		"  -t SECONDS  MEM_PUT: how long each client count runs (default 3)\n"
		"  -q QUERIES  MEM_SEARCH: queries per size (default 200)\n"
		"  -n A,B      MEM_SEARCH: the two record counts (default 10000,100000)\n"
		"  -C          skip the context part   -M  skip the memory-record parts\n"
		"  -F          no fio baseline\n"
		"  -o FILE     also write the report to FILE\n");
}

static double secs(uint64_t ns)
{
	return (double)ns / 1e9;
}

/* The bench links no libm: Newton's square root is plenty for norms. */
static double sqrt_nr(double x)
{
	double r;

	if (!(x > 0))
		return 0;
	r = x > 1 ? x : 1;
	for (int i = 0; i < 200; i++) {
		double n = 0.5 * (r + x / r);

		if (n == r)
			break;
		r = n;
	}
	return r;
}

/* ---- the daemon ------------------------------------------------------------------------ */

/* Make d's directory (under the run's) for a daemon of its own. */
static int daemon_init(struct bench_daemon *d, const char *name)
{
	char dir[300];

	snprintf(dir, sizeof(dir), "%s/%s", bench_tmp_dir, name);
	return bench_daemon_init(d, dir);
}

/* Fork/exec kvtierd -o socket=... -o data_dir=... -o KV... and connect. */
static int daemon_start(const struct opts *o, struct bench_daemon *d, const char *const *kv,
			size_t nkv, kvt_conn **out)
{
	char sock_kv[400], data_kv[400];
	const char *argv[64];
	char why[512];
	size_t n = 0, len;
	int rc;

	if (nkv > 24)
		return -E2BIG;
	snprintf(sock_kv, sizeof(sock_kv), "socket=%s", d->sock);
	snprintf(data_kv, sizeof(data_kv), "data_dir=%s", d->data);
	argv[n++] = o->daemon;
	argv[n++] = "-o";
	argv[n++] = sock_kv;
	argv[n++] = "-o";
	argv[n++] = data_kv;
	argv[n++] = "-o";
	argv[n++] = "log_level=info";
	len = (size_t)snprintf(d->cmd, sizeof(d->cmd), "kvtierd");
	for (size_t i = 0; i < nkv; i++) {
		argv[n++] = "-o";
		argv[n++] = kv[i];
		if (len < sizeof(d->cmd))
			len += (size_t)snprintf(d->cmd + len, sizeof(d->cmd) - len, " -o %s", kv[i]);
	}
	argv[n] = NULL;

	rc = bench_daemon_spawn(PROG, d, o->daemon, argv, NULL, 0);
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

/* SIGTERM and wait. Returns its exit status, or -1 if it had to be killed. */
static int daemon_stop(struct bench_daemon *d)
{
	return bench_daemon_stop(PROG, d, STOP_TIMEOUT_MS);
}

static uint64_t stat_u64(kvt_conn *c, const char *name)
{
	kvt_stats *s;
	uint64_t v = 0;

	if (kvt_stats_get(c, &s) != 0)
		return 0;
	kvt_stats_find(s, name, &v);
	kvt_stats_free(s);
	return v;
}

/* ---- fio (the device) ------------------------------------------------------------------- */

/* Run fio; returns its GB/s for the job, or a negative number. */
static double fio_run(const char *file, const char *rw, uint64_t size, uint64_t bs)
{
	char name[64], fname[400], sz[64], b[64], *out = NULL;
	int pfd[2];
	pid_t pid;
	size_t len = 0, cap = 0;
	double gbps = -1;

	snprintf(name, sizeof(name), "--name=%s", rw);
	snprintf(fname, sizeof(fname), "--filename=%s", file);
	snprintf(sz, sizeof(sz), "--size=%llu", (unsigned long long)size);
	snprintf(b, sizeof(b), "--bs=%llu", (unsigned long long)bs);
	if (pipe(pfd) != 0)
		return -1;
	fflush(NULL);
	pid = fork();
	if (pid < 0)
		return -1;
	if (pid == 0) {
		char rwopt[32];

		snprintf(rwopt, sizeof(rwopt), "--rw=%s", rw);
		prctl(PR_SET_PDEATHSIG, SIGKILL);
		dup2(pfd[1], STDOUT_FILENO);
		close(pfd[0]);
		close(pfd[1]);
		execlp("fio", "fio", name, fname, sz, b, rwopt, "--ioengine=io_uring", "--direct=1",
		       "--iodepth=32", "--end_fsync=1", "--minimal", (char *)NULL);
		_exit(127);
	}
	bench_child_pid = pid;
	close(pfd[1]);
	for (;;) {
		ssize_t r;

		if (len + 4096 > cap) {
			char *nb = realloc(out, cap + 65536);

			if (!nb)
				break;
			out = nb;
			cap += 65536;
		}
		r = read(pfd[0], out + len, cap - len - 1);
		if (r <= 0)
			break;
		len += (size_t)r;
	}
	close(pfd[0]);
	waitpid(pid, NULL, 0);
	bench_child_pid = -1;
	if (out) {
		/* --minimal (terse v3): field 7 is read bandwidth KiB/s, field 48 write. */
		char *save = NULL, *tok;
		int field = 0;
		double rd = -1, wr = -1;

		out[len] = 0;
		for (tok = strtok_r(out, ";", &save); tok; tok = strtok_r(NULL, ";", &save)) {
			field++;
			if (field == 7)
				rd = strtod(tok, NULL);
			else if (field == 48)
				wr = strtod(tok, NULL);
		}
		if (strcmp(rw, "read") == 0 && rd > 0)
			gbps = rd * 1024 / 1e9;
		else if (strcmp(rw, "write") == 0 && wr > 0)
			gbps = wr * 1024 / 1e9;
		free(out);
	}
	return gbps;
}

/* ---- the context's blocks --------------------------------------------------------------- */

struct chain {
	kvt_conn *c;
	kvt_region *r;
	uint8_t *base;     /* IMG_BLOCKS source images, then GROUPS x BATCH slots */
	kvt_key *keys;
	uint32_t *tokens;
	kvt_key salt;
	size_t n;
	uint64_t verified, full;
};

static const kvt_block_desc block_desc = {
	.dtype = KVT_DTYPE_BF16, .layout = 1, .layers = 32, .tokens = BLOCK_TOKENS,
};

static uint8_t *img(struct chain *ch, size_t b)
{
	return ch->base + (b % IMG_BLOCKS) * BLOCK_BYTES;
}

static uint8_t *slot(struct chain *ch, unsigned g, size_t j)
{
	return ch->base + (IMG_BLOCKS + (uint64_t)g * BATCH + j) * BLOCK_BYTES;
}

static void chain_keys(struct chain *ch, size_t n, const char *tag)
{
	kvt_salt_params p = {
		.model_id = "meta-llama/Meta-Llama-3-8B", .weights_version = tag,
		.kv_dtype = "bf16", .layout = "kvtier-engine:L32:H8:D128", .tp_size = 1,
		.block_tokens = BLOCK_TOKENS,
	};
	uint64_t rng = 0xc7c7 ^ n;

	ch->n = n;
	kvt_key_salt(&p, &ch->salt);
	for (size_t t = 0; t < n * BLOCK_TOKENS; t++)
		ch->tokens[t] = (uint32_t)(bench_rand64(&rng) % 128256u);
	for (size_t b = 0; b < n; b++)
		kvt_key_chain(&ch->salt, b ? &ch->keys[b - 1] : NULL, ch->tokens + b * BLOCK_TOKENS,
			      BLOCK_TOKENS, &ch->keys[b]);
}

/* A region with the images (random bytes) and the GET slots, pages touched. */
static int chain_region(struct chain *ch, kvt_conn *c)
{
	uint64_t size = (IMG_BLOCKS + (uint64_t)GROUPS * BATCH) * BLOCK_BYTES, s = 0x1234567;
	int rc;

	ch->c = c;
	rc = kvt_region_create(c, (size_t)size, &ch->r);
	if (rc)
		return rc;
	ch->base = kvt_region_base(ch->r);
	for (uint64_t i = 0; i < IMG_BLOCKS * BLOCK_BYTES / 8; i++) {
		uint64_t w = bench_rand64(&s);

		memcpy(ch->base + i * 8, &w, 8);
	}
	memset(ch->base + IMG_BLOCKS * BLOCK_BYTES, 0, (size_t)(GROUPS * BATCH * BLOCK_BYTES));
	return 0;
}

/* PUTs turned away with ENOSPC while the host tier waited for NVMe to catch up. */
static uint64_t put_retries;

/* Finish a PUT request: items refused for lack of room (ENOSPC: the host tier is
 * full of blocks not yet on NVMe) are put again, one at a time, until they fit. */
static int put_finish(struct chain *ch, kvt_put_item *items, size_t m, int rc)
{
	uint64_t deadline = bench_now_ns() + (uint64_t)DURABLE_STALL_MS * 1000000u;

	if (rc == KVT_EPARTIAL) {
		rc = 0;
		for (size_t j = 0; j < m && !rc; j++) {
			while (items[j].status == KVT_ENOSPC && bench_now_ns() < deadline) {
				put_retries++;
				bench_sleep_us(2000);
				if (kvt_block_put(ch->c, &items[j], 1) == 0)
					items[j].status = 0;
			}
			rc = items[j].status;
		}
	}
	if (rc)
		fprintf(stderr, PROG ": PUT: %s (%s)\n", kvt_strerror(rc), kvt_errname(rc));
	return rc;
}

/* PUT the whole chain, BATCH blocks a request, GROUPS requests in flight. */
static int chain_put(struct chain *ch)
{
	kvt_put_item items[GROUPS][BATCH];
	kvt_ticket tk[GROUPS];
	bool busy[GROUPS] = { false };
	size_t issued = 0;

	for (size_t b = 0; b < ch->n; b += BATCH, issued++) {
		unsigned g = (unsigned)(issued % GROUPS);
		size_t m = ch->n - b < BATCH ? ch->n - b : BATCH;
		int rc;

		if (busy[g]) {
			busy[g] = false;
			rc = put_finish(ch, items[g], BATCH, kvt_wait(ch->c, tk[g]));
			if (rc)
				return rc;
		}
		for (size_t j = 0; j < m; j++) {
			kvt_put_item *it = &items[g][j];

			memset(it, 0, sizeof(*it));
			it->key = ch->keys[b + j];
			if (b + j)
				it->parent = ch->keys[b + j - 1];
			it->region = ch->r;
			it->offset = (uint64_t)(img(ch, b + j) - ch->base);
			it->length = BLOCK_BYTES;
			it->desc = block_desc;
		}
		rc = kvt_block_put_start(ch->c, items[g], m, &tk[g]);
		if (rc) {
			fprintf(stderr, PROG ": PUT: %s\n", kvt_strerror(rc));
			return rc;
		}
		busy[g] = true;
	}
	for (unsigned k = 0; k < GROUPS; k++) {
		unsigned g = (unsigned)((issued + k) % GROUPS);

		if (busy[g]) {
			size_t m = ch->n - (issued - GROUPS + k) * BATCH;
			int rc;

			if (m > BATCH)
				m = BATCH;
			rc = put_finish(ch, items[g], m, kvt_wait(ch->c, tk[g]));
			if (rc)
				return rc;
		}
	}
	return 0;
}

static int check_block(struct chain *ch, size_t b, const uint8_t *got, bool full)
{
	const uint8_t *want = img(ch, b);
	uint64_t s = (b + 1) * 0x9e3779b97f4a7c15ull;

	if (full) {
		ch->full++;
		if (memcmp(got, want, BLOCK_BYTES) != 0)
			goto bad;
		return 0;
	}
	for (int i = 0; i < SAMPLES; i++) {
		uint64_t off = i == 0 ? 0 : i == 1 ? BLOCK_BYTES - 8 :
			       (bench_rand64(&s) % (BLOCK_BYTES / 8)) * 8;

		if (memcmp(got + off, want + off, 8) != 0)
			goto bad;
	}
	return 0;
bad:
	fprintf(stderr, PROG ": block %zu came back with wrong bytes\n", b);
	return KVT_EIO;
}

/* GET the whole chain in order into the slots, checking each block. */
static int chain_get(struct chain *ch)
{
	kvt_get_item items[GROUPS][BATCH];
	kvt_ticket tk[GROUPS];
	bool busy[GROUPS] = { false };
	size_t first[GROUPS] = { 0 }, count[GROUPS] = { 0 }, issued = 0;

	for (size_t b = 0;; b += BATCH, issued++) {
		unsigned g = (unsigned)(issued % GROUPS);

		if (busy[g]) {
			int rc = kvt_wait(ch->c, tk[g]);

			busy[g] = false;
			for (size_t j = 0; j < count[g]; j++) {
				size_t blk = first[g] + j;
				const kvt_get_item *it = &items[g][j];

				if ((rc && rc != KVT_EPARTIAL) || it->status || it->length != BLOCK_BYTES) {
					size_t found = 0;
					uint8_t tier = 0xff;

					/* Where the daemon says the block is now, for the report. */
					kvt_block_lookup(ch->c, &ch->keys[blk], 1, &found, &tier);
					fprintf(stderr, PROG ": GET of block %zu: %s / %s (LOOKUP now: %s, "
							"tier %u)\n", blk, kvt_errname(rc),
						kvt_errname(it->status), found ? "found" : "not found", tier);
					return it->status ? it->status : rc ? rc : KVT_EIO;
				}
				if (check_block(ch, blk, slot(ch, g, j), blk == 0 || blk == ch->n - 1))
					return KVT_EIO;
				/* Poison the checked words so a skipped copy cannot pass next time. */
				memset(slot(ch, g, j), 0xa5, 8);
				memset(slot(ch, g, j) + BLOCK_BYTES - 8, 0xa5, 8);
				ch->verified++;
			}
		}
		if (b >= ch->n) {
			bool any = false;

			for (unsigned k = 0; k < GROUPS; k++)
				any |= busy[k];
			if (!any)
				return 0;
			continue;
		}
		first[g] = b;
		count[g] = ch->n - b < BATCH ? ch->n - b : BATCH;
		for (size_t j = 0; j < count[g]; j++) {
			kvt_get_item *it = &items[g][j];

			memset(it, 0, sizeof(*it));
			it->key = ch->keys[b + j];
			it->region = ch->r;
			it->offset = (uint64_t)(slot(ch, g, j) - ch->base);
			it->capacity = BLOCK_BYTES;
		}
		int rc = kvt_block_get_start(ch->c, items[g], count[g], &tk[g]);

		if (rc) {
			fprintf(stderr, PROG ": GET: %s\n", kvt_strerror(rc));
			return rc;
		}
		busy[g] = true;
	}
}

/* Poll until t2.blocks reaches want; returns the time it did, or 0 on a stall. */
static uint64_t wait_durable(kvt_conn *c, uint64_t want)
{
	uint64_t last = 0, last_change = bench_now_ns();

	for (;;) {
		uint64_t v = stat_u64(c, "t2.blocks"), now = bench_now_ns();

		if (v >= want)
			return now;
		if (v != last) {
			last = v;
			last_change = now;
		}
		if (now - last_change > (uint64_t)DURABLE_STALL_MS * 1000000u) {
			fprintf(stderr, PROG ": t2.blocks stuck at %llu of %llu\n",
				(unsigned long long)v, (unsigned long long)want);
			return 0;
		}
		bench_sleep_us(1000);
	}
}

/* ---- part 1: contexts --------------------------------------------------------------------- */

struct ctx_result {
	bool ok;
	double raw_write, raw_read, put_ram, save, restore, load_only, fio_write, fio_read;
	double raw_write_s, raw_read_s, put_ram_s, save_s, restore_s, load_s;
	uint64_t pre_durable, resident;
	char cmd_raw[4096], cmd_ctx[4096];
};

static int run_ctx(const struct opts *o, struct bench_out *out, uint64_t ctx_bytes,
		   struct ctx_result *res)
{
	size_t n = (size_t)(ctx_bytes / BLOCK_BYTES);
	struct chain ch;
	struct bench_daemon d;
	kvt_conn *c = NULL;
	char host[64], nvme[64];
	uint64_t t0, t1;
	int rc;

	memset(res, 0, sizeof(*res));
	memset(&ch, 0, sizeof(ch));
	ch.keys = calloc(n, sizeof(*ch.keys));
	ch.tokens = calloc(n * BLOCK_TOKENS, sizeof(*ch.tokens));
	if (!ch.keys || !ch.tokens)
		return -ENOMEM;

	/* The NVMe tier keeps free segments in reserve (cleaning starts when fewer than
	 * 2 are available): 4 GiB beyond the context, so nothing is ever cleaned away.
	 * The host tier holds the whole context in every daemon, so the raw read and
	 * the restore run against the same one. */
	snprintf(nvme, sizeof(nvme), "nvme_capacity=%lluMiB",
		 (unsigned long long)((ctx_bytes + 4 * GIB) / MIB));
	snprintf(host, sizeof(host), "host_capacity=%lluMiB",
		 (unsigned long long)((ctx_bytes + GIB) / MIB));

	/* Raw tier: write-through, timed until durable; read after a restart. */
	{
		const char *kv[] = { host, nvme, "nvme_segment_size=1GiB", "nvme_write=through",
				     "nvme_codec=raw", "nvme_admission=always" };

		if ((rc = daemon_init(&d, "raw")) ||
		    (rc = daemon_start(o, &d, kv, sizeof(kv) / sizeof(kv[0]), &c)))
			goto out;
		snprintf(res->cmd_raw, sizeof(res->cmd_raw), "%s", d.cmd);
		chain_keys(&ch, n, "raw");
		if ((rc = chain_region(&ch, c)))
			goto out_stop;
		fprintf(stderr, PROG ": raw write of %zu blocks...\n", n);
		t0 = bench_now_ns();
		if ((rc = chain_put(&ch)))
			goto out_stop;
		t1 = wait_durable(c, n);
		if (!t1) {
			rc = -ETIMEDOUT;
			goto out_stop;
		}
		res->raw_write_s = secs(t1 - t0);
		res->raw_write = (double)(n * BLOCK_BYTES) / 1e9 / res->raw_write_s;
		kvt_region_destroy(ch.r);
		kvt_conn_close(c);
		c = NULL;
		if ((rc = daemon_stop(&d)))
			goto out;
		if ((rc = daemon_start(o, &d, kv, sizeof(kv) / sizeof(kv[0]), &c)))
			goto out;
		if ((rc = chain_region(&ch, c)))
			goto out_stop;
		fprintf(stderr, PROG ": raw read after a restart...\n");
		t0 = bench_now_ns();
		if ((rc = chain_get(&ch)))
			goto out_stop;
		res->raw_read_s = secs(bench_now_ns() - t0);
		res->raw_read = (double)(n * BLOCK_BYTES) / 1e9 / res->raw_read_s;
		kvt_region_destroy(ch.r);
		kvt_conn_close(c);
		c = NULL;
		if ((rc = daemon_stop(&d)))
			goto out;
		bench_rm_tree(d.dir);
	}

	/* The device: fio in the same directory, same block size, O_DIRECT. */
	if (!o->no_fio) {
		char file[400];

		snprintf(file, sizeof(file), "%s/fio.dat", bench_tmp_dir);
		fprintf(stderr, PROG ": fio...\n");
		res->fio_write = fio_run(file, "write", n * BLOCK_BYTES, BLOCK_BYTES);
		res->fio_read = fio_run(file, "read", n * BLOCK_BYTES, BLOCK_BYTES);
		unlink(file);
	}

	/* Contexts: write-back into a host tier larger than the context, then save;
	 * restore after a restart. */
	{
		const char *kv[] = { host, nvme, "nvme_segment_size=1GiB", "nvme_write=back",
				     "nvme_codec=raw", "nvme_free_target=1" };
		kvt_context ctx;
		kvt_ctx_info *in = NULL;

		if ((rc = daemon_init(&d, "ctx")) ||
		    (rc = daemon_start(o, &d, kv, sizeof(kv) / sizeof(kv[0]), &c)))
			goto out;
		snprintf(res->cmd_ctx, sizeof(res->cmd_ctx), "%s", d.cmd);
		chain_keys(&ch, n, "ctx");
		if ((rc = chain_region(&ch, c)))
			goto out_stop;
		fprintf(stderr, PROG ": PUT into RAM, then CTX_SAVE...\n");
		t0 = bench_now_ns();
		if ((rc = chain_put(&ch)))
			goto out_stop;
		res->put_ram_s = secs(bench_now_ns() - t0);
		res->put_ram = (double)(n * BLOCK_BYTES) / 1e9 / res->put_ram_s;
		res->pre_durable = stat_u64(c, "t2.blocks");
		ctx = (kvt_context){ .name = "bench", .model_salt = ch.salt,
				     .token_count = n * BLOCK_TOKENS, .keys = ch.keys, .nkeys = n,
				     .tokens = ch.tokens, .metadata = "bench_ctxmem",
				     .metadata_len = 12 };
		t0 = bench_now_ns();
		rc = kvt_ctx_save(c, &ctx, NULL);
		res->save_s = secs(bench_now_ns() - t0);
		if (rc) {
			fprintf(stderr, PROG ": CTX_SAVE: %s (%s)\n", kvt_strerror(rc), kvt_errname(rc));
			goto out_stop;
		}
		res->save = (double)(n * BLOCK_BYTES) / 1e9 / res->save_s;
		kvt_region_destroy(ch.r);
		kvt_conn_close(c);
		c = NULL;
		if ((rc = daemon_stop(&d)))
			goto out;
		if ((rc = daemon_start(o, &d, kv, sizeof(kv) / sizeof(kv[0]), &c)))
			goto out;
		if ((rc = chain_region(&ch, c)))
			goto out_stop;
		fprintf(stderr, PROG ": CTX_LOAD + GET after a restart...\n");
		t0 = bench_now_ns();
		rc = kvt_ctx_load(c, "bench", KVT_TIER_HOST, CALL_TIMEOUT_MS / 2, &in);
		res->load_s = secs(bench_now_ns() - t0);
		if (rc) {
			fprintf(stderr, PROG ": CTX_LOAD: %s (%s)\n", kvt_strerror(rc), kvt_errname(rc));
			goto out_stop;
		}
		res->resident = in->resident;
		if (in->nkeys != n || memcmp(in->keys, ch.keys, n * sizeof(*ch.keys)) != 0) {
			fprintf(stderr, PROG ": CTX_LOAD returned another manifest\n");
			kvt_ctx_free(in);
			rc = KVT_EIO;
			goto out_stop;
		}
		kvt_ctx_free(in);
		rc = chain_get(&ch);
		res->restore_s = secs(bench_now_ns() - t0);
		if (rc)
			goto out_stop;
		res->restore = (double)(n * BLOCK_BYTES) / 1e9 / res->restore_s;
		res->load_only = (double)(n * BLOCK_BYTES) / 1e9 / res->load_s;
		kvt_region_destroy(ch.r);
		kvt_conn_close(c);
		c = NULL;
		rc = daemon_stop(&d);
		bench_rm_tree(d.dir);
	}
	res->ok = rc == 0;
	bench_printf(out, "verified: %llu blocks read back (sampled words of each, %llu in full)\n",
		     (unsigned long long)ch.verified, (unsigned long long)ch.full);
	goto out;
out_stop:
	kvt_conn_close(c);
	daemon_stop(&d);
out:
	free(ch.keys);
	free(ch.tokens);
	return rc;
}

/* ---- part 2: MEM_PUT throughput -------------------------------------------------------------- */

struct putter {
	pthread_t th;
	const char *sock;
	unsigned clients, id;
	pthread_barrier_t *bar;
	volatile bool *stop;
	uint64_t n;
	uint32_t *lat_us;  /* per put */
	size_t lat_cap;
	int rc;
};

static void *putter_main(void *arg)
{
	struct putter *p = arg;
	kvt_conn *c = NULL;
	uint8_t value[512];
	char key[64], meta[64];
	uint64_t s = p->id * 7919 + p->clients;

	p->rc = kvt_conn_open(p->sock, &c);
	pthread_barrier_wait(p->bar);
	if (p->rc)
		return NULL;
	kvt_conn_set_timeout(c, CALL_TIMEOUT_MS);
	for (size_t i = 0; i < sizeof(value); i += 8) {
		uint64_t w = bench_rand64(&s);

		memcpy(value + i, &w, 8);
	}
	while (!*p->stop) {
		kvt_mem_record r;
		uint64_t t0;

		snprintf(key, sizeof(key), "c%u-t%u-%llu", p->clients, p->id, (unsigned long long)p->n);
		snprintf(meta, sizeof(meta), "{\"turn\":%llu}", (unsigned long long)p->n);
		r = (kvt_mem_record){ .ns = "bench/put", .key = key, .value = value,
				      .value_len = sizeof(value), .metadata = meta,
				      .metadata_len = strlen(meta) };
		t0 = bench_now_ns();
		p->rc = kvt_mem_put(c, &r);
		if (p->rc)
			break;
		if (p->n < p->lat_cap)
			p->lat_us[p->n] = (uint32_t)((bench_now_ns() - t0) / 1000);
		p->n++;
	}
	kvt_conn_close(c);
	return NULL;
}

/* One writer: write 512 bytes and fdatasync, as fast as it goes, for seconds. */
static double fsync_rate(const char *dir, double seconds)
{
	char path[400], buf[512];
	uint64_t n = 0, t0, end;
	int fd;

	snprintf(path, sizeof(path), "%s/fsync.dat", dir);
	fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
	if (fd < 0)
		return -1;
	memset(buf, 'x', sizeof(buf));
	t0 = bench_now_ns();
	end = t0 + (uint64_t)(seconds * 1e9);
	while (bench_now_ns() < end) {
		if (pwrite(fd, buf, sizeof(buf), (off_t)((n % 64) * 4096)) != (ssize_t)sizeof(buf) ||
		    fdatasync(fd) != 0)
			break;
		n++;
	}
	close(fd);
	unlink(path);
	return (double)n / secs(bench_now_ns() - t0);
}

static int run_mem_put(const struct opts *o, struct bench_out *out, struct bench_daemon *d)
{
	static const unsigned counts[] = { 1, 8, 64 };
	double base = fsync_rate(d->dir, 2.0);
	kvt_conn *c = NULL;
	int rc = kvt_conn_open(d->sock, &c);

	if (rc)
		return rc;
	bench_printf(out, "\n## 2. MEM_PUT throughput (512-byte values, %u s per client count, each "
			  "client a thread with its own connection)\n", o->put_seconds);
	bench_printf(out, "baseline: one writer doing pwrite(512 B) + fdatasync in %s: %.0f/s "
			  "(a store that fsyncs every write alone cannot beat this)\n\n", d->dir, base);
	bench_printf(out, "%8s %12s %9s %10s %10s %12s %12s %14s\n", "clients", "records/s",
		     "vs fsync", "p50 ms", "p99 ms", "meta.writes", "meta.commits",
		     "writes/commit");
	for (size_t k = 0; k < sizeof(counts) / sizeof(counts[0]); k++) {
		unsigned nc = counts[k];
		struct putter *p = calloc(nc, sizeof(*p));
		pthread_barrier_t bar;
		volatile bool stop = false;
		uint64_t w0, c0, f0, w1, c1, f1, t0, total = 0, *v;
		size_t nall = 0;
		double el;

		if (!p)
			return -ENOMEM;
		pthread_barrier_init(&bar, NULL, nc + 1);
		for (unsigned i = 0; i < nc; i++) {
			p[i] = (struct putter){ .sock = d->sock, .clients = nc, .id = i, .bar = &bar,
						.stop = &stop, .lat_cap = 1u << 17 };
			p[i].lat_us = malloc(p[i].lat_cap * sizeof(uint32_t));
			if (!p[i].lat_us || pthread_create(&p[i].th, NULL, putter_main, &p[i]) != 0)
				return -ENOMEM;
		}
		w0 = stat_u64(c, "meta.writes");
		c0 = stat_u64(c, "meta.commits");
		f0 = stat_u64(c, "meta.fsyncs");
		pthread_barrier_wait(&bar);
		t0 = bench_now_ns();
		bench_sleep_us(o->put_seconds * 1000000u);
		stop = true;
		for (unsigned i = 0; i < nc; i++)
			pthread_join(p[i].th, NULL);
		el = secs(bench_now_ns() - t0);
		w1 = stat_u64(c, "meta.writes");
		c1 = stat_u64(c, "meta.commits");
		f1 = stat_u64(c, "meta.fsyncs");
		for (unsigned i = 0; i < nc; i++) {
			if (p[i].rc) {
				fprintf(stderr, PROG ": MEM_PUT client %u: %s\n", i, kvt_strerror(p[i].rc));
				rc = p[i].rc;
			}
			total += p[i].n;
		}
		v = malloc((total ? total : 1) * sizeof(*v));
		if (v) {
			for (unsigned i = 0; i < nc; i++)
				for (uint64_t j = 0; j < p[i].n && j < p[i].lat_cap; j++)
					v[nall++] = p[i].lat_us[j];
			qsort(v, nall, sizeof(uint64_t), bench_cmp_u64);
			bench_printf(out, "%8u %12.0f %8.1fx %10.2f %10.2f %12llu %12llu %14.1f\n", nc,
				     (double)total / el, base > 0 ? (double)total / el / base : 0,
				     (double)bench_quantile(v, nall, 0.5) / 1000,
				     (double)bench_quantile(v, nall, 0.99) / 1000,
				     (unsigned long long)(w1 - w0), (unsigned long long)(c1 - c0),
				     c1 > c0 ? (double)(w1 - w0) / (double)(c1 - c0) : 0);
			free(v);
		}
		bench_printf(out, "%8s fsyncs by the store: %llu\n", "",
			     (unsigned long long)(f1 - f0));
		for (unsigned i = 0; i < nc; i++)
			free(p[i].lat_us);
		free(p);
		pthread_barrier_destroy(&bar);
		if (rc)
			break;
	}
	kvt_conn_close(c);
	return rc;
}

/* ---- part 3: MEM_SEARCH latency ---------------------------------------------------------------- */

struct vecs {
	float *v;     /* n x DIM, as stored */
	float *inv;   /* 1 / |v_i| */
	size_t n;
};

static void vec_fill(float *v, uint64_t seed)
{
	uint64_t s = seed * 0x9e3779b97f4a7c15ull + 1;

	for (int i = 0; i < DIM; i++)
		v[i] = (float)((double)(bench_rand64(&s) >> 11) / (double)(1ull << 52) - 1.0);
}

struct inserter {
	pthread_t th;
	const char *sock;
	const struct vecs *vs;
	size_t from, to;
	int rc;
};

static void *inserter_main(void *arg)
{
	struct inserter *in = arg;
	kvt_conn *c = NULL;
	char key[32], meta[48];

	in->rc = kvt_conn_open(in->sock, &c);
	if (in->rc)
		return NULL;
	kvt_conn_set_timeout(c, CALL_TIMEOUT_MS);
	for (size_t i = in->from; i < in->to && !in->rc; i++) {
		kvt_mem_record r;

		snprintf(key, sizeof(key), "m%07zu", i);
		snprintf(meta, sizeof(meta), "memory %zu", i);
		r = (kvt_mem_record){ .ns = "bench/vec", .key = key, .value = key,
				      .value_len = strlen(key), .metadata = meta,
				      .metadata_len = strlen(meta),
				      .embedding = in->vs->v + i * DIM, .dim = DIM };
		in->rc = kvt_mem_put(c, &r);
	}
	kvt_conn_close(c);
	return NULL;
}

static int insert_range(const char *sock, const struct vecs *vs, size_t from, size_t to,
			double *rate)
{
	enum { T = 32 }; /* enough writers for the group commit to batch */
	struct inserter in[T];
	uint64_t t0 = bench_now_ns();
	int rc = 0;

	for (int i = 0; i < T; i++) {
		in[i] = (struct inserter){ .sock = sock, .vs = vs,
					   .from = from + (to - from) * (size_t)i / T,
					   .to = from + (to - from) * (size_t)(i + 1) / T };
		if (pthread_create(&in[i].th, NULL, inserter_main, &in[i]) != 0)
			return -ENOMEM;
	}
	for (int i = 0; i < T; i++) {
		pthread_join(in[i].th, NULL);
		if (in[i].rc && !rc) {
			rc = in[i].rc;
			fprintf(stderr, PROG ": MEM_PUT: %s (%s)\n", kvt_strerror(rc), kvt_errname(rc));
		}
	}
	*rate = (double)(to - from) / secs(bench_now_ns() - t0);
	return rc;
}

/* Brute force: the k best of vs[0..n) for q by cosine; idx/score best first. */
static void brute_topk(const struct vecs *vs, size_t n, const float *q, size_t *idx, float *score)
{
	double qq = 0;
	size_t have = 0;
	float qn;

	for (int d = 0; d < DIM; d++)
		qq += (double)q[d] * q[d];
	qn = (float)(1.0 / sqrt_nr(qq));
	for (size_t i = 0; i < n; i++) {
		const float *x = vs->v + i * DIM;
		float lane[16] = { 0 }, dot = 0, sc;
		size_t j;

		/* Sixteen independent sums, so the compiler vectorises the loop without
		 * reassociating anything (no -ffast-math here). */
		for (int d = 0; d < DIM; d += 16)
			for (int l = 0; l < 16; l++)
				lane[l] += q[d + l] * x[d + l];
		for (int l = 0; l < 16; l++)
			dot += lane[l];
		sc = dot * qn * vs->inv[i];
		if (have == TOPK && sc <= score[TOPK - 1])
			continue;
		j = have < TOPK ? have++ : TOPK - 1;
		while (j > 0 && score[j - 1] < sc) {
			score[j] = score[j - 1];
			idx[j] = idx[j - 1];
			j--;
		}
		score[j] = sc;
		idx[j] = i;
	}
}

static int search_at(const struct opts *o, struct bench_out *out, kvt_conn *c,
		     const struct vecs *vs, size_t n, double insert_rate)
{
	uint64_t *dl = calloc(o->queries, sizeof(*dl)), *bl = calloc(o->queries, sizeof(*bl));
	float q[DIM], bs[TOPK];
	size_t bi[TOPK];
	unsigned agree = 0;
	double cold_ms = 0;
	int rc = 0;

	if (!dl || !bl)
		return -ENOMEM;
	for (unsigned i = 0; i <= o->queries && !rc; i++) {
		kvt_mem_items *res = NULL;
		uint64_t t0;

		vec_fill(q, 0xabcdef00ull + n * 1000 + i);
		t0 = bench_now_ns();
		rc = kvt_mem_search(c, "bench/vec", q, DIM, TOPK, &res);
		if (rc) {
			fprintf(stderr, PROG ": MEM_SEARCH: %s (%s)\n", kvt_strerror(rc), kvt_errname(rc));
			break;
		}
		if (i == 0) {
			/* The first search after the inserts: the namespace's vectors are
			 * brought in (or brought up to date) first. */
			cold_ms = secs(bench_now_ns() - t0) * 1e3;
		} else {
			dl[i - 1] = bench_now_ns() - t0;
		}
		t0 = bench_now_ns();
		brute_topk(vs, n, q, bi, bs);
		if (i)
			bl[i - 1] = bench_now_ns() - t0;
		if (i) {
			bool same = res->n == TOPK;

			for (size_t j = 0; same && j < TOPK; j++) {
				char key[32];

				snprintf(key, sizeof(key), "m%07zu", bi[j]);
				same = strcmp(res->items[j].key, key) == 0;
			}
			agree += same;
		}
		kvt_mem_items_free(res);
	}
	if (!rc) {
		qsort(dl, o->queries, sizeof(*dl), bench_cmp_u64);
		qsort(bl, o->queries, sizeof(*bl), bench_cmp_u64);
		bench_printf(out, "%9zu %11.0f %9.1f %9.2f %9.2f %9.2f %9.2f %7.2fx %7u/%u\n", n,
			     insert_rate, cold_ms, (double)bench_quantile(dl, o->queries, 0.5) / 1e6,
			     (double)bench_quantile(dl, o->queries, 0.99) / 1e6,
			     (double)bench_quantile(bl, o->queries, 0.5) / 1e6,
			     (double)bench_quantile(bl, o->queries, 0.99) / 1e6,
			     (double)bench_quantile(dl, o->queries, 0.5) /
				     (double)bench_quantile(bl, o->queries, 0.5),
			     agree, o->queries);
	}
	free(dl);
	free(bl);
	return rc;
}

static int run_mem_search(const struct opts *o, struct bench_out *out, struct bench_daemon *d)
{
	struct vecs vs;
	kvt_conn *c = NULL;
	double rate = 0;
	int rc;

	vs.n = o->large_n;
	vs.v = malloc(vs.n * DIM * sizeof(float));
	vs.inv = malloc(vs.n * sizeof(float));
	if (!vs.v || !vs.inv)
		return -ENOMEM;
	for (size_t i = 0; i < vs.n; i++) {
		double ss = 0;

		vec_fill(vs.v + i * DIM, i + 1);
		for (int k = 0; k < DIM; k++)
			ss += (double)vs.v[i * DIM + k] * vs.v[i * DIM + k];
		vs.inv[i] = (float)(1.0 / sqrt_nr(ss));
	}
	rc = kvt_conn_open(d->sock, &c);
	if (rc)
		goto out;
	kvt_conn_set_timeout(c, CALL_TIMEOUT_MS);
	bench_printf(out, "\n## 3. MEM_SEARCH latency: exact top-%d by cosine, dimension %d, one "
			  "namespace, %u queries per size (random query vectors), one client\n",
		     TOPK, DIM, o->queries);
	bench_printf(out, "baseline: the same exact scan in this process, one thread: float32 dot "
			  "products in 16 lanes (vectorised by the compiler, same flags as the "
			  "daemon) over the same vectors with their norms precomputed, and a "
			  "top-%d insertion list\n\n", TOPK);
	bench_printf(out, "%9s %11s %9s %9s %9s %9s %9s %8s %9s\n", "records", "insert/s",
		     "cold ms", "p50 ms", "p99 ms", "base p50", "base p99", "p50/base", "same top");
	fprintf(stderr, PROG ": inserting %u records of dimension %d...\n", o->small_n, DIM);
	rc = insert_range(d->sock, &vs, 0, o->small_n, &rate);
	if (!rc)
		rc = search_at(o, out, c, &vs, o->small_n, rate);
	if (!rc) {
		fprintf(stderr, PROG ": inserting up to %u...\n", o->large_n);
		rc = insert_range(d->sock, &vs, o->small_n, o->large_n, &rate);
	}
	if (!rc)
		rc = search_at(o, out, c, &vs, o->large_n, rate);
	if (!rc)
		bench_printf(out, "insert/s: MEM_PUT of those records with 32 clients (value ~8 B, "
				  "metadata ~12 B, %d floats); cold: the first search after the "
				  "inserts; same top: queries whose top-%d keys (in order) equal the "
				  "baseline's\n", DIM, TOPK);
	kvt_conn_close(c);
out:
	free(vs.v);
	free(vs.inv);
	return rc;
}

/* ---- main ---------------------------------------------------------------------------------------- */

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
	return kb * 1024;
}

int main(int argc, char **argv)
{
	struct opts o = { .dir = "/var/tmp", .daemon = KVT_BIN_DIR "/kvtierd", .put_seconds = 3,
			  .queries = 200, .small_n = 10000, .large_n = 100000 };
	struct bench_out out;
	struct bench_cpu cpu0;
	struct statvfs vfs;
	char why[256] = "";
	int opt, rc = 0;

	while ((opt = getopt(argc, argv, "d:D:c:t:q:n:CMFo:h")) != -1) {
		switch (opt) {
		case 'd': o.dir = optarg; break;
		case 'D': o.daemon = optarg; break;
		case 'c':
			if (bench_parse_size(optarg, &o.ctx_bytes) || o.ctx_bytes < BLOCK_BYTES) {
				fprintf(stderr, PROG ": -c wants a size of at least one block (32M)\n");
				return 2;
			}
			break;
		case 't': o.put_seconds = (unsigned)strtoul(optarg, NULL, 10); break;
		case 'q': o.queries = (unsigned)strtoul(optarg, NULL, 10); break;
		case 'n':
			if (sscanf(optarg, "%u,%u", &o.small_n, &o.large_n) != 2 || !o.small_n ||
			    o.large_n <= o.small_n) {
				fprintf(stderr, PROG ": -n wants SMALL,LARGE with SMALL < LARGE\n");
				return 2;
			}
			break;
		case 'C': o.no_ctx = true; break;
		case 'M': o.no_mem = true; break;
		case 'F': o.no_fio = true; break;
		case 'o': o.out = optarg; break;
		case 'h': usage(stdout); return 0;
		default: usage(stderr); return 2;
		}
	}
	if (!o.put_seconds || !o.queries) {
		usage(stderr);
		return 2;
	}
	if (access(o.daemon, X_OK) != 0) {
		fprintf(stderr, PROG ": %s: %s (build it, or give -D)\n", o.daemon, strerror(errno));
		return 1;
	}
	if (!o.no_fio && system("fio --version >/dev/null 2>&1") != 0) {
		fprintf(stderr, PROG ": fio is not installed: no device baseline\n");
		o.no_fio = true;
	}

	/* The context: 8 GiB unless RAM (host tier of context + 1 GiB, plus 2 GiB to
	 * spare) or disk (the NVMe tier and fio's file) is short. */
	if (!o.ctx_bytes) {
		uint64_t avail = mem_available(), want = 8 * GIB, disk = 0;

		if (statvfs(o.dir, &vfs) == 0)
			disk = (uint64_t)vfs.f_bavail * vfs.f_frsize;
		o.ctx_bytes = want;
		while (o.ctx_bytes > 512 * MIB &&
		       (o.ctx_bytes + 3 * GIB + 512 * MIB > avail || 2 * o.ctx_bytes + 6 * GIB > disk))
			o.ctx_bytes /= 2;
		if (o.ctx_bytes < want)
			snprintf(why, sizeof(why), " (not 8 GiB: %.1f GiB of RAM available, %.1f GiB of "
				 "disk free)", (double)avail / GIB, (double)disk / GIB);
	}
	o.ctx_bytes = o.ctx_bytes / BLOCK_BYTES * BLOCK_BYTES;

	if (bench_out_open(&out, o.out) != 0) {
		fprintf(stderr, PROG ": %s: %s\n", o.out, strerror(errno));
		return 1;
	}
	snprintf(bench_tmp_dir, sizeof(bench_tmp_dir), "%s/bench_ctxmem.XXXXXX", o.dir);
	if (!mkdtemp(bench_tmp_dir)) {
		fprintf(stderr, PROG ": mkdtemp in %s: %s\n", o.dir, strerror(errno));
		bench_tmp_dir[0] = 0;
		return 1;
	}
	signal(SIGINT, bench_on_signal);
	signal(SIGTERM, bench_on_signal);
	signal(SIGPIPE, SIG_IGN);

	bench_print_machine(&out, "bench_ctxmem: saved contexts and memory records through kvtierd");
	bench_printf(&out, "storage: %s (%s), the daemons' data and fio's file\n", o.dir,
		     bench_fs_name(o.dir));
	bench_printf(&out, "command: " PROG);
	for (int i = 1; i < argc; i++)
		bench_printf(&out, " %s", argv[i]);
	bench_printf(&out, "\n");
	bench_cpu_snapshot(&cpu0);

	if (!o.no_ctx) {
		struct ctx_result r;
		size_t n = (size_t)(o.ctx_bytes / BLOCK_BYTES);

		bench_printf(&out, "\n## 1. Context save and restore: %.2f GiB context%s = %zu blocks of "
				   "%u tokens (%llu MiB, Llama-3-8B bf16 KV), %d blocks per request, "
				   "%d requests in flight, nvme_codec = raw\n",
			     (double)o.ctx_bytes / GIB, why, n, BLOCK_TOKENS,
			     (unsigned long long)(BLOCK_BYTES / MIB), BATCH, GROUPS);
		rc = run_ctx(&o, &out, o.ctx_bytes, &r);
		if (rc) {
			bench_printf(&out, "FAILED: %s\n", rc < 0 && rc > -1000 ? strerror(-rc) :
					   kvt_strerror(rc));
		} else {
			bench_printf(&out, "raw tier daemon:     %s\n", r.cmd_raw);
			bench_printf(&out, "context daemon:      %s\n\n", r.cmd_ctx);
			double fw = o.no_fio ? 0 : r.fio_write, fr = o.no_fio ? 0 : r.fio_read;

			bench_printf(&out, "%-56s %8s %7s %12s %10s\n", "", "seconds", "GB/s",
				     "vs raw tier", "vs device");
			bench_printf(&out, "%-56s %8.3f %7.2f %12s %9.2fx\n",
				     "raw write: PUT, write-through, until all durable", r.raw_write_s,
				     r.raw_write, "", fw > 0 ? r.raw_write / fw : 0);
			bench_printf(&out, "%-56s %8.3f %7.2f %11.2fx %9.2fx\n",
				     "context save: CTX_SAVE of blocks only in RAM", r.save_s, r.save,
				     r.save / r.raw_write, fw > 0 ? r.save / fw : 0);
			bench_printf(&out, "%-56s %8.3f %7.2f %12s %9.2fx\n",
				     "raw read: GET in order after a restart (read-ahead 4)",
				     r.raw_read_s, r.raw_read, "", fr > 0 ? r.raw_read / fr : 0);
			bench_printf(&out, "%-56s %8.3f %7.2f %11.2fx %9.2fx\n",
				     "context restore: CTX_LOAD to host + GET, after restart",
				     r.restore_s, r.restore, r.restore / r.raw_read,
				     fr > 0 ? r.restore / fr : 0);
			bench_printf(&out, "%-56s %8.3f %7.2f %11.2fx %9.2fx\n",
				     "  of which CTX_LOAD (page-in to the host tier)", r.load_s,
				     r.load_only, r.load_only / r.raw_read,
				     fr > 0 ? r.load_only / fr : 0);
			if (!o.no_fio)
				bench_printf(&out, "%-56s %8s %7.2f write, %.2f read\n",
					     "device: fio io_uring O_DIRECT, 32 MiB blocks, iodepth 32",
					     "", r.fio_write, r.fio_read);
			bench_printf(&out, "%-56s %8.3f %7.2f\n",
				     "(PUT of the context into RAM before the save)", r.put_ram_s,
				     r.put_ram);
			if (put_retries)
				bench_printf(&out, "%llu PUTs were refused with ENOSPC (a host tier full of "
						   "blocks not yet on NVMe) and sent again; the times "
						   "include the waits\n", (unsigned long long)put_retries);
			bench_printf(&out, "%llu of %zu blocks were already on NVMe when the save started; "
					   "%llu of %zu were in the host tier when CTX_LOAD answered\n",
				     (unsigned long long)r.pre_durable, n,
				     (unsigned long long)r.resident, n);
		}
	}

	if (!o.no_mem && !rc) {
		struct bench_daemon d;
		kvt_conn *c = NULL;
		const char *kv[] = { "host_capacity=256MiB", "nvme_capacity=0" };

		rc = daemon_init(&d, "mem");
		if (!rc)
			rc = daemon_start(&o, &d, kv, 2, &c);
		if (!rc) {
			bench_printf(&out, "\nmemory-record daemon: %s (metadata store in its data "
					   "directory)\n", d.cmd);
			kvt_conn_close(c);
			rc = run_mem_put(&o, &out, &d);
			if (!rc)
				rc = run_mem_search(&o, &out, &d);
			if (rc)
				bench_printf(&out, "FAILED: %s\n", kvt_strerror(rc));
			if (daemon_stop(&d) != 0 && !rc)
				rc = -EIO;
		}
	}
	bench_printf(&out, "\n");
	bench_print_cpu_use(&out, &cpu0);
	bench_print_load(&out);
	if (bench_out_close(&out) != 0)
		rc = rc ? rc : -EIO;
	if (rc)
		fprintf(stderr, PROG ": failed; the daemons' logs and data are kept in %s\n",
			bench_tmp_dir); /* no fio file: it is removed after each use */
	else
		bench_rm_tree(bench_tmp_dir);
	return rc ? 1 : 0;
}
