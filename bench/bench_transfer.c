/*
 * bench_transfer.c - data-path benchmark: PUT and GET bandwidth through kvtierd
 * for 1, 16 and 64 MiB blocks, beside memcpy of the same sizes between the same
 * buffers and beside redis-server SET/GET of the same blobs over a Unix socket,
 * all measured in the same run.
 *
 * kvtierd must already run (-s or $KVTIER_SOCKET; bench/run.sh starts one). The
 * Redis baseline is a redis-server this program starts itself on a Unix socket in
 * a temporary directory and kills at the end.
 *
 * Every transfer is checked: each GET's destination has sample positions poisoned
 * before and compared with the source after, and the last blocks of every point
 * are compared in full, so a path that skips the copy cannot look fast.
 */
#include <errno.h>
#include <fcntl.h>
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
#include <sys/time.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <hiredis/hiredis.h>

#include "kvtier.h"
#include "bench_util.h"

#define MIB (1024ull * 1024)
#define MAX_DEPTH 16
#define MAX_THREADS 64
#define MAX_ROUNDS 15
#define SAMPLES 16 /* 8-byte positions poisoned and checked per transfer */
#define STAMPS 8   /* 8-byte positions that make each PUT's bytes unique */

static const uint64_t sizes[] = { 1 * MIB, 16 * MIB, 64 * MIB };
#define NSIZES (sizeof(sizes) / sizeof(sizes[0]))

struct opts {
	const char *socket;
	const char *out;
	const char *plot;
	const char *redis_bin;
	double seconds;
	unsigned rounds;
	unsigned depth;
	unsigned threads;
	bool no_redis;
	bool no_fill;
};

/* ---- the redis-server baseline -------------------------------------------------- */

static volatile pid_t redis_pid = -1;
static char redis_dir[64];
static char redis_sock[128];
static char redis_log[128];

static void redis_stop(void)
{
	pid_t pid = redis_pid;

	if (pid > 0) {
		kill(pid, SIGTERM);
		waitpid(pid, NULL, 0);
		redis_pid = -1;
	}
	if (redis_dir[0]) {
		unlink(redis_sock);
		unlink(redis_log);
		rmdir(redis_dir);
		redis_dir[0] = '\0';
	}
}

static void on_signal(int sig)
{
	/* Only async-signal-safe calls: leave no redis-server behind if we are stopped. */
	if (redis_pid > 0)
		kill(redis_pid, SIGKILL);
	if (redis_dir[0]) {
		unlink(redis_sock);
		unlink(redis_log);
		rmdir(redis_dir);
	}
	signal(sig, SIG_DFL);
	raise(sig);
}

/* Start redis-server on a Unix socket in a fresh temporary directory; connect. */
static int redis_start(const char *bin, redisContext **out)
{
	struct timeval tv = { .tv_sec = 60 };
	uint64_t deadline;
	pid_t pid;
	int logfd;

	snprintf(redis_dir, sizeof(redis_dir), "/tmp/kvtier-bench-redis.XXXXXX");
	if (!mkdtemp(redis_dir)) {
		redis_dir[0] = '\0';
		return -errno;
	}
	snprintf(redis_sock, sizeof(redis_sock), "%s/redis.sock", redis_dir);
	snprintf(redis_log, sizeof(redis_log), "%s/redis.log", redis_dir);
	logfd = open(redis_log, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
	if (logfd < 0)
		return -errno;
	pid = fork();
	if (pid < 0) {
		close(logfd);
		return -errno;
	}
	if (pid == 0) {
		/* If the benchmark dies without cleaning up, redis goes with it. */
		prctl(PR_SET_PDEATHSIG, SIGKILL);
		dup2(logfd, STDOUT_FILENO);
		dup2(logfd, STDERR_FILENO);
		execlp(bin, bin, "--port", "0", "--unixsocket", redis_sock, "--unixsocketperm",
		       "700", "--save", "", "--appendonly", "no", "--dir", redis_dir,
		       "--daemonize", "no", "--loglevel", "warning", (char *)NULL);
		_exit(127);
	}
	close(logfd);
	redis_pid = pid;

	deadline = bench_now_ns() + 10ull * 1000000000u;
	for (;;) {
		redisContext *ctx;
		int status;

		if (waitpid(pid, &status, WNOHANG) == pid) {
			redis_pid = -1;
			return -ECHILD;
		}
		ctx = redisConnectUnix(redis_sock);
		if (ctx && !ctx->err) {
			redisSetTimeout(ctx, tv);
			*out = ctx;
			return 0;
		}
		redisFree(ctx);
		if (bench_now_ns() > deadline)
			return -ETIMEDOUT;
		usleep(20000);
	}
}

/* ---- block contents and checks ---------------------------------------------------- */

static void fill_pattern(uint8_t *p, uint64_t len, uint64_t seed)
{
	uint64_t s = seed * 0x9e3779b97f4a7c15ull + 1;

	for (uint64_t i = 0; i + 8 <= len; i += 8) {
		uint64_t v = bench_rand64(&s);

		memcpy(p + i, &v, 8);
	}
}

/* Sample word offsets for transfer number n of a block of len bytes: the first and
 * last word always, the rest spread pseudo-randomly. */
static void sample_offsets(uint64_t n, uint64_t len, uint64_t *off, size_t k)
{
	uint64_t s = n * 0xd1b54a32d192ed03ull + 7, words = len / 8;

	off[0] = 0;
	off[1] = (words - 1) * 8;
	for (size_t i = 2; i < k; i++)
		off[i] = (bench_rand64(&s) % words) * 8;
}

/* Write a tag unique to this PUT into the source so every PUT carries new bytes. */
static void stamp(uint8_t *src, uint64_t len, uint64_t tag)
{
	uint64_t off[STAMPS];

	sample_offsets(tag, len, off, STAMPS);
	for (size_t i = 0; i < STAMPS; i++)
		memcpy(src + off[i], &tag, 8);
}

/* Before a GET: make the sampled words of dst differ from the source. */
static void poison(uint8_t *dst, const uint8_t *src, uint64_t len, uint64_t n)
{
	uint64_t off[SAMPLES];

	sample_offsets(n, len, off, SAMPLES);
	for (size_t i = 0; i < SAMPLES; i++) {
		uint64_t v;

		memcpy(&v, src + off[i], 8);
		v = ~v;
		memcpy(dst + off[i], &v, 8);
	}
}

/* After a GET: the sampled words must equal the source. */
static bool samples_match(const uint8_t *dst, const uint8_t *src, uint64_t len, uint64_t n)
{
	uint64_t off[SAMPLES];

	sample_offsets(n, len, off, SAMPLES);
	for (size_t i = 0; i < SAMPLES; i++)
		if (memcmp(dst + off[i], src + off[i], 8) != 0)
			return false;
	return true;
}

/* ---- kvtier ------------------------------------------------------------------------- */

struct kvt_bench {
	kvt_conn *c;
	kvt_region *r;
	uint8_t *base;
	unsigned depth;
	uint64_t slot;  /* bytes per slot: the largest block size */
	kvt_key salt;
	uint64_t nonce; /* per run, so no PUT ever finds its key already present */
	uint64_t seq;   /* PUTs issued so far: with the nonce, makes every PUT key new */
	uint64_t gen;   /* GET rounds so far: each stores its own fresh blocks */
};

static uint8_t *src_slot(struct kvt_bench *kb, unsigned i)
{
	return kb->base + (uint64_t)i * kb->slot;
}

static uint8_t *dst_slot(struct kvt_bench *kb, unsigned i)
{
	return kb->base + (uint64_t)(kb->depth + i) * kb->slot;
}

static void make_key(struct kvt_bench *kb, uint32_t phase, uint64_t size, uint64_t n,
		     kvt_key *k)
{
	uint32_t tok[6] = {
		(uint32_t)kb->nonce, (uint32_t)(kb->nonce >> 32), phase, (uint32_t)(size / MIB),
		(uint32_t)n, (uint32_t)(n >> 32),
	};

	kvt_key_chain(&kb->salt, NULL, tok, 6, k);
}

static void put_item(struct kvt_bench *kb, kvt_put_item *it, const kvt_key *k, unsigned slot,
		     uint64_t size)
{
	memset(it, 0, sizeof(*it));
	it->key = *k;
	it->region = kb->r;
	it->offset = (uint64_t)slot * kb->slot;
	it->length = size;
	it->desc.dtype = KVT_DTYPE_BF16;
	it->desc.layers = 1;
}

static int check_put(const kvt_put_item *it, int rc, const char *what)
{
	if (rc == 0 && it->status == 0)
		return 0;
	fprintf(stderr, "bench_transfer: %s: %s (item: %s)\n", what, kvt_strerror(rc),
		kvt_strerror(it->status));
	return rc ? rc : it->status;
}

/* Wait for the PUT in slot s; 0 or the error (printed). */
static int put_wait(struct kvt_bench *kb, kvt_put_item *items, kvt_ticket *tk, unsigned s)
{
	int rc = kvt_wait(kb->c, tk[s]);

	return check_put(&items[s], rc, "PUT");
}

/* Start the next PUT (number kb->seq, from slot seq % depth): stamp the slot so
 * its bytes are new, under a key never used before. */
static int put_issue(struct kvt_bench *kb, kvt_put_item *items, kvt_ticket *tk, uint64_t size)
{
	uint64_t seq = kb->seq++;
	unsigned s = (unsigned)(seq % kb->depth);
	kvt_key k;
	int rc;

	stamp(src_slot(kb, s), size, (kb->nonce << 20) ^ (size << 8) ^ seq);
	make_key(kb, 1, size, seq, &k);
	put_item(kb, &items[s], &k, s, size);
	rc = kvt_block_put_start(kb->c, &items[s], 1, &tk[s]);
	if (rc)
		fprintf(stderr, "bench_transfer: PUT start: %s\n", kvt_strerror(rc));
	return rc;
}

/*
 * PUT fresh blocks of size bytes from the source slots, depth in flight, after a
 * drained warm-up round, until at least seconds have passed, or (stop_bytes != 0)
 * as soon as stop_bytes have been stored. Every PUT stamps its slot first, so each
 * block is new bytes (a present key would succeed without copying). Afterwards the
 * last depth blocks are read back and compared in full with their sources.
 */
static int kvt_put_run(struct kvt_bench *kb, uint64_t size, double seconds, uint64_t stop_bytes,
		       double *gbps, uint64_t *bytes)
{
	kvt_put_item items[MAX_DEPTH];
	kvt_ticket tk[MAX_DEPTH];
	uint64_t n, t0, limit = (uint64_t)(seconds * 1e9);
	unsigned d = kb->depth;
	int rc;

	kb->seq += d - kb->seq % d; /* start at slot 0 */
	for (unsigned s = 0; s < d; s++) /* warm-up round */
		if ((rc = put_issue(kb, items, tk, size)) != 0)
			return rc;
	for (unsigned s = 0; s < d; s++)
		if ((rc = put_wait(kb, items, tk, s)) != 0)
			return rc;

	t0 = bench_now_ns();
	for (n = 0;; n++) {
		unsigned s = (unsigned)(n % d);

		/* The slot's previous PUT must be done before its bytes change. */
		if (n >= d && (rc = put_wait(kb, items, tk, s)) != 0)
			return rc;
		if (n >= 2 * d && (bench_now_ns() - t0 >= limit || (stop_bytes && n * size >= stop_bytes)))
			break;
		if ((rc = put_issue(kb, items, tk, size)) != 0)
			return rc;
	}
	/* PUTs n-d+1 .. n-1 are still in flight. */
	for (uint64_t i = n - d + 1; i < n; i++)
		if ((rc = put_wait(kb, items, tk, (unsigned)(i % d))) != 0)
			return rc;
	*gbps = (double)(n * size) / (double)(bench_now_ns() - t0);
	if (bytes)
		*bytes = n * size;

	/* Read the last d blocks back; each must equal its slot's current bytes. */
	for (uint64_t i = kb->seq - d; i < kb->seq; i++) {
		unsigned s = (unsigned)(i % d);
		kvt_get_item g;

		memset(&g, 0, sizeof(g));
		make_key(kb, 1, size, i, &g.key);
		g.region = kb->r;
		g.offset = (uint64_t)(d + s) * kb->slot;
		g.capacity = size;
		memset(dst_slot(kb, s), 0, size);
		rc = kvt_block_get(kb->c, &g, 1);
		if (rc || g.status || g.length != size) {
			fprintf(stderr, "bench_transfer: reading back PUT %llu: %s\n",
				(unsigned long long)i, kvt_strerror(rc ? rc : g.status));
			return rc ? rc : g.status ? g.status : KVT_EIO;
		}
		if (memcmp(dst_slot(kb, s), src_slot(kb, s), size) != 0) {
			fprintf(stderr, "bench_transfer: PUT %llu read back different bytes\n",
				(unsigned long long)i);
			return KVT_EIO;
		}
	}
	return 0;
}

/* Wait for the GET in slot s (transfer number seq) and check its sample words. */
static int get_wait(struct kvt_bench *kb, kvt_get_item *items, kvt_ticket *tk, unsigned s,
		    uint64_t size, uint64_t seq)
{
	kvt_get_item *g = &items[s];
	int rc = kvt_wait(kb->c, tk[s]);

	if (rc || g->status || g->length != size) {
		fprintf(stderr, "bench_transfer: GET: %s\n", kvt_strerror(rc ? rc : g->status));
		return rc ? rc : g->status ? g->status : KVT_EIO;
	}
	if (!samples_match(dst_slot(kb, s), src_slot(kb, s), size, seq)) {
		fprintf(stderr, "bench_transfer: GET %llu returned wrong bytes\n",
			(unsigned long long)seq);
		return KVT_EIO;
	}
	return 0;
}

/* Start GET number seq of block keys[s] into destination slot s, poisoned first. */
static int get_issue(struct kvt_bench *kb, kvt_get_item *items, kvt_ticket *tk,
		     const kvt_key *keys, unsigned s, uint64_t size, uint64_t seq)
{
	int rc;

	poison(dst_slot(kb, s), src_slot(kb, s), size, seq);
	memset(&items[s], 0, sizeof(items[s]));
	items[s].key = keys[s];
	items[s].region = kb->r;
	items[s].offset = (uint64_t)(kb->depth + s) * kb->slot;
	items[s].capacity = size;
	rc = kvt_block_get_start(kb->c, &items[s], 1, &tk[s]);
	if (rc)
		fprintf(stderr, "bench_transfer: GET start: %s\n", kvt_strerror(rc));
	return rc;
}

/*
 * Store d fresh blocks (the source slots as they are now), then GET them
 * round-robin into the destination slots, d in flight, for at least seconds after a
 * drained warm-up round. Every destination has its sample words poisoned before the
 * GET and checked after it; at the end every slot is compared in full.
 */
static int kvt_get_point(struct kvt_bench *kb, uint64_t size, double seconds, double *gbps)
{
	kvt_get_item items[MAX_DEPTH];
	kvt_ticket tk[MAX_DEPTH];
	kvt_key keys[MAX_DEPTH];
	uint64_t n, t0, limit = (uint64_t)(seconds * 1e9), seq = 0, gen = kb->gen++;
	unsigned d = kb->depth;
	int rc;

	for (unsigned s = 0; s < d; s++) {
		kvt_put_item p;

		make_key(kb, 2, size, gen * MAX_DEPTH + s, &keys[s]);
		put_item(kb, &p, &keys[s], s, size);
		rc = kvt_block_put(kb->c, &p, 1);
		if ((rc = check_put(&p, rc, "PUT for GET")) != 0)
			return rc;
	}

	for (unsigned s = 0; s < d; s++) /* warm-up round */
		if ((rc = get_issue(kb, items, tk, keys, s, size, seq + s)) != 0)
			return rc;
	for (unsigned s = 0; s < d; s++)
		if ((rc = get_wait(kb, items, tk, s, size, seq + s)) != 0)
			return rc;
	seq += d;

	t0 = bench_now_ns();
	for (n = 0;; n++) {
		unsigned s = (unsigned)(n % d);

		if (n >= d && (rc = get_wait(kb, items, tk, s, size, seq + n - d)) != 0)
			return rc;
		if (n >= 2 * d && bench_now_ns() - t0 >= limit)
			break;
		if ((rc = get_issue(kb, items, tk, keys, s, size, seq + n)) != 0)
			return rc;
	}
	for (uint64_t i = n - d + 1; i < n; i++)
		if ((rc = get_wait(kb, items, tk, (unsigned)(i % d), size, seq + i)) != 0)
			return rc;
	*gbps = (double)(n * size) / (double)(bench_now_ns() - t0);

	for (unsigned s = 0; s < d; s++) {
		if (memcmp(dst_slot(kb, s), src_slot(kb, s), size) != 0) {
			fprintf(stderr, "bench_transfer: GET into slot %u left different bytes\n", s);
			return KVT_EIO;
		}
	}
	return 0;
}

/* ---- memcpy ------------------------------------------------------------------------- */

/*
 * memcpy between the same (warmed) source and destination slots, by nthreads
 * threads that each copy one slice of every block: the baseline for a daemon that
 * spreads each copy over its workers. The calling thread is thread 0.
 */
struct mc_pool;

struct mc_arg {
	struct mc_pool *p;
	unsigned i;
};

struct mc_pool {
	pthread_t th[MAX_THREADS];
	struct mc_arg args[MAX_THREADS];
	unsigned n;
	pthread_barrier_t start, done;
	uint8_t *dst;
	const uint8_t *src;
	size_t len;
	bool quit;
};

static void mc_slice(struct mc_pool *p, unsigned i)
{
	/* 64-byte aligned slices, so threads never share a cache line. */
	size_t per = (p->len / p->n + 63) & ~(size_t)63;
	size_t off = per * i, len;

	if (off >= p->len)
		return;
	len = p->len - off < per ? p->len - off : per;
	memcpy(p->dst + off, p->src + off, len);
}

static void *mc_main(void *arg)
{
	struct mc_arg *a = arg;
	struct mc_pool *p = a->p;

	for (;;) {
		pthread_barrier_wait(&p->start);
		if (p->quit)
			break;
		mc_slice(p, a->i);
		pthread_barrier_wait(&p->done);
	}
	return NULL;
}

static void mc_copy(struct mc_pool *p, void *dst, const void *src, size_t len)
{
	p->dst = dst;
	p->src = src;
	p->len = len;
	if (p->n > 1)
		pthread_barrier_wait(&p->start);
	mc_slice(p, 0);
	if (p->n > 1)
		pthread_barrier_wait(&p->done);
	/* Keep the compiler from treating the copy as dead. */
	__asm__ __volatile__("" : : "r"(dst) : "memory");
}

static int mc_start(struct mc_pool *p, unsigned n)
{
	memset(p, 0, sizeof(*p));
	p->n = n;
	if (n <= 1)
		return 0;
	if (pthread_barrier_init(&p->start, NULL, n) || pthread_barrier_init(&p->done, NULL, n))
		return -ENOMEM;
	for (unsigned i = 1; i < n; i++) {
		p->args[i] = (struct mc_arg){ p, i };
		if (pthread_create(&p->th[i], NULL, mc_main, &p->args[i]) != 0)
			return -EAGAIN; /* the pool is unusable; see main */
	}
	return 0;
}

static void mc_stop(struct mc_pool *p)
{
	if (p->n <= 1)
		return;
	p->quit = true;
	pthread_barrier_wait(&p->start);
	for (unsigned i = 1; i < p->n; i++)
		pthread_join(p->th[i], NULL);
	pthread_barrier_destroy(&p->start);
	pthread_barrier_destroy(&p->done);
}

static double memcpy_point(struct kvt_bench *kb, struct mc_pool *p, uint64_t size,
			   double seconds)
{
	uint64_t n = 0, t0, dt, limit = (uint64_t)(seconds * 1e9);
	unsigned d = kb->depth;

	for (unsigned s = 0; s < d; s++)
		mc_copy(p, dst_slot(kb, s), src_slot(kb, s), size);
	t0 = bench_now_ns();
	do {
		unsigned s = (unsigned)(n % d);

		mc_copy(p, dst_slot(kb, s), src_slot(kb, s), size);
		n++;
		dt = bench_now_ns() - t0;
	} while (dt < limit || n < 2 * d);
	return (double)(n * size) / (double)dt;
}

/* ---- redis ---------------------------------------------------------------------------- */

static int redis_ok(redisReply *rep, int type, const char *what)
{
	if (rep && rep->type == type)
		return 0;
	fprintf(stderr, "bench_transfer: redis %s: %s\n", what,
		!rep ? "no reply" : rep->type == REDIS_REPLY_ERROR ? rep->str : "unexpected reply");
	return KVT_EIO;
}

static int redis_cmd_ok(redisContext *ctx, const char *cmd)
{
	redisReply *rep = redisCommand(ctx, cmd);
	int rc = redis_ok(rep, REDIS_REPLY_STATUS, cmd);

	freeReplyObject(rep);
	return rc;
}

static int redis_reply(redisContext *ctx, int type, const char *what, redisReply **out)
{
	redisReply *rep = NULL;
	int rc;

	if (redisGetReply(ctx, (void **)&rep) != REDIS_OK)
		rep = NULL;
	rc = redis_ok(rep, type, what);
	if (rc == 0 && out) {
		*out = rep;
		return 0;
	}
	freeReplyObject(rep);
	return rc;
}

static int redis_set_issue(redisContext *ctx, struct kvt_bench *kb, uint64_t size, uint64_t seq)
{
	char key[64];

	snprintf(key, sizeof(key), "bench:set:%llu:%llu", (unsigned long long)size,
		 (unsigned long long)seq);
	if (redisAppendCommand(ctx, "SET %s %b", key, (const char *)src_slot(kb, seq % kb->depth),
			       (size_t)size) != REDIS_OK)
		return redis_ok(NULL, 0, "SET");
	return 0;
}

/* SET fresh keys of the same blobs, d pipelined, for at least seconds after a
 * drained warm-up round. Replies come in order, so a ring of d is a window. */
static int redis_set_point(redisContext *ctx, struct kvt_bench *kb, uint64_t size,
			   double seconds, double *gbps)
{
	uint64_t n, t0, limit = (uint64_t)(seconds * 1e9), seq = 0;
	unsigned d = kb->depth;
	int rc;

	for (unsigned s = 0; s < d; s++)
		if ((rc = redis_set_issue(ctx, kb, size, seq++)) != 0)
			return rc;
	for (unsigned s = 0; s < d; s++)
		if ((rc = redis_reply(ctx, REDIS_REPLY_STATUS, "SET", NULL)) != 0)
			return rc;

	t0 = bench_now_ns();
	for (n = 0;; n++) {
		if (n >= d && (rc = redis_reply(ctx, REDIS_REPLY_STATUS, "SET", NULL)) != 0)
			return rc;
		if (n >= 2 * d && bench_now_ns() - t0 >= limit)
			break;
		if ((rc = redis_set_issue(ctx, kb, size, seq++)) != 0)
			return rc;
	}
	for (uint64_t i = n - d + 1; i < n; i++)
		if ((rc = redis_reply(ctx, REDIS_REPLY_STATUS, "SET", NULL)) != 0)
			return rc;
	*gbps = (double)(n * size) / (double)(bench_now_ns() - t0);
	return redis_cmd_ok(ctx, "FLUSHALL SYNC");
}

/* Reply to GET number seq (of key seq % d): the blob, sample-checked. */
static int redis_get_wait(redisContext *ctx, struct kvt_bench *kb, uint64_t size, uint64_t seq)
{
	redisReply *rep;
	int rc = redis_reply(ctx, REDIS_REPLY_STRING, "GET", &rep);

	if (rc)
		return rc;
	if (rep->len != (size_t)size ||
	    !samples_match((const uint8_t *)rep->str, src_slot(kb, seq % kb->depth), size, seq)) {
		fprintf(stderr, "bench_transfer: redis GET returned wrong bytes\n");
		rc = KVT_EIO;
	}
	freeReplyObject(rep);
	return rc;
}

static int redis_get_issue(redisContext *ctx, struct kvt_bench *kb, uint64_t seq)
{
	char key[64];

	snprintf(key, sizeof(key), "bench:get:%u", (unsigned)(seq % kb->depth));
	if (redisAppendCommand(ctx, "GET %s", key) != REDIS_OK)
		return redis_ok(NULL, 0, "GET");
	return 0;
}

/* GET d stored blobs round-robin, d pipelined, checking samples of every reply. */
static int redis_get_point(redisContext *ctx, struct kvt_bench *kb, uint64_t size,
			   double seconds, double *gbps)
{
	uint64_t n, t0, limit = (uint64_t)(seconds * 1e9), seq = 0;
	unsigned d = kb->depth;
	char key[64];
	int rc;

	for (unsigned s = 0; s < d; s++) {
		redisReply *rep;

		snprintf(key, sizeof(key), "bench:get:%u", s);
		rep = redisCommand(ctx, "SET %s %b", key, (const char *)src_slot(kb, s),
				   (size_t)size);
		rc = redis_ok(rep, REDIS_REPLY_STATUS, "SET for GET");
		freeReplyObject(rep);
		if (rc)
			return rc;
	}
	for (unsigned s = 0; s < d; s++)
		if ((rc = redis_get_issue(ctx, kb, seq + s)) != 0)
			return rc;
	for (unsigned s = 0; s < d; s++)
		if ((rc = redis_get_wait(ctx, kb, size, seq + s)) != 0)
			return rc;
	seq += d;

	t0 = bench_now_ns();
	for (n = 0;; n++) {
		if (n >= d && (rc = redis_get_wait(ctx, kb, size, seq + n - d)) != 0)
			return rc;
		if (n >= 2 * d && bench_now_ns() - t0 >= limit)
			break;
		if ((rc = redis_get_issue(ctx, kb, seq + n)) != 0)
			return rc;
	}
	for (uint64_t i = n - d + 1; i < n; i++)
		if ((rc = redis_get_wait(ctx, kb, size, seq + i)) != 0)
			return rc;
	*gbps = (double)(n * size) / (double)(bench_now_ns() - t0);
	return redis_cmd_ok(ctx, "FLUSHALL SYNC");
}

/* ---- report ---------------------------------------------------------------------------- */

enum method { M_KPUT, M_KGET, M_MC1, M_MCN, M_RSET, M_RGET, NMETHODS };

/* Per block size: every round's GB/s (10^9 bytes/s) of every method. */
struct point {
	double v[NMETHODS][MAX_ROUNDS];
	unsigned n[NMETHODS];
};

static int cmp_double(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;

	return x < y ? -1 : x > y;
}

/* Median of a method's rounds (the mean of the middle two for an even count);
 * -1 when it was not measured. *lo and *hi (may be NULL) get the extremes. */
static double median(const struct point *pt, enum method m, double *lo, double *hi)
{
	double v[MAX_ROUNDS];
	unsigned n = pt->n[m];

	if (n == 0) {
		if (lo)
			*lo = -1;
		if (hi)
			*hi = -1;
		return -1;
	}
	memcpy(v, pt->v[m], n * sizeof(v[0]));
	qsort(v, n, sizeof(v[0]), cmp_double);
	if (lo)
		*lo = v[0];
	if (hi)
		*hi = v[n - 1];
	return n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

static void fmt_bw(char *buf, size_t cap, double v)
{
	if (v < 0)
		snprintf(buf, cap, "-");
	else
		snprintf(buf, cap, "%.2f", v);
}

static void fmt_ratio(char *buf, size_t cap, double a, double b)
{
	if (a < 0 || b <= 0)
		snprintf(buf, cap, "-");
	else
		snprintf(buf, cap, "%.2fx", a / b);
}

struct daemon_info {
	uint64_t workers, capacity, mlocked, chunk;
	char huge[32];
};

static void get_daemon_info(kvt_conn *c, struct daemon_info *di)
{
	kvt_stats *st = NULL;

	memset(di, 0, sizeof(*di));
	snprintf(di->huge, sizeof(di->huge), "?");
	if (kvt_stats_get(c, &st) != 0)
		return;
	kvt_stats_find(st, "server.workers", &di->workers);
	kvt_stats_find(st, "t1.capacity_bytes", &di->capacity);
	kvt_stats_find(st, "t1.mlocked", &di->mlocked);
	kvt_stats_find(st, "t1.chunk_size", &di->chunk);
	for (size_t i = 0; i < kvt_stats_count(st); i++) {
		const char *name, *text;
		uint64_t v;

		if (kvt_stats_entry(st, i, &name, &v, &text) == 0 && text &&
		    strcmp(name, "t1.hugepages") == 0)
			snprintf(di->huge, sizeof(di->huge), "%s", text);
	}
	kvt_stats_free(st);
}

static void usage(FILE *f)
{
	fprintf(f,
		"usage: bench_transfer [-s SOCKET] [-t SECONDS] [-n ROUNDS] [-d DEPTH] [-w THREADS]\n"
		"                      [-r REDIS_SERVER | -R] [-F] [-o FILE] [-p PLOTDATA]\n"
		"  -s SOCKET    daemon socket (default: $KVTIER_SOCKET, else %s)\n"
		"  -t SECONDS   time per method and round (default 0.5)\n"
		"  -n ROUNDS    interleaved rounds per block size; medians are reported (default 5)\n"
		"  -d DEPTH     transfers in flight (default 4, at most %d)\n"
		"  -w THREADS   threads of the parallel memcpy baseline (default: the daemon's workers)\n"
		"  -r PATH      redis-server to start for the baseline (default redis-server)\n"
		"  -R           skip the Redis baseline\n"
		"  -F           skip the first fill of the host tier\n"
		"  -o FILE      also write the results table to FILE\n"
		"  -p PLOTDATA  write size_mib kvt_put kvt_get memcpy_1 memcpy_n redis_set redis_get\n",
		KVT_DEFAULT_SOCKET, MAX_DEPTH);
}

int main(int argc, char **argv)
{
	struct opts o = { .seconds = 0.5, .rounds = 5, .depth = 4, .redis_bin = "redis-server" };
	struct kvt_bench kb;
	struct daemon_info di;
	struct mc_pool mc1, mcn;
	static struct point pts[NSIZES];
	struct bench_out out = { 0 };
	struct bench_cpu cpu0;
	redisContext *rctx = NULL;
	double fill_gbps = -1;
	uint64_t fill_bytes = 0;
	unsigned nthreads;
	bool goals_met = true, mc_started = false;
	int opt, rc, ret = 1;

	while ((opt = getopt(argc, argv, "s:t:n:d:w:r:RFo:p:h")) != -1) {
		switch (opt) {
		case 's': o.socket = optarg; break;
		case 'o': o.out = optarg; break;
		case 'p': o.plot = optarg; break;
		case 'r': o.redis_bin = optarg; break;
		case 'R': o.no_redis = true; break;
		case 'F': o.no_fill = true; break;
		case 't':
			o.seconds = strtod(optarg, NULL);
			if (!(o.seconds > 0))
				goto bad_arg;
			break;
		case 'n':
			o.rounds = (unsigned)strtoul(optarg, NULL, 10);
			if (o.rounds < 1 || o.rounds > MAX_ROUNDS)
				goto bad_arg;
			break;
		case 'd':
			o.depth = (unsigned)strtoul(optarg, NULL, 10);
			if (o.depth < 1 || o.depth > MAX_DEPTH)
				goto bad_arg;
			break;
		case 'w':
			o.threads = (unsigned)strtoul(optarg, NULL, 10);
			if (o.threads < 1 || o.threads > MAX_THREADS)
				goto bad_arg;
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

	memset(&kb, 0, sizeof(kb));
	kb.depth = o.depth;
	kb.slot = sizes[NSIZES - 1];
	kb.nonce = ((uint64_t)getpid() << 32) ^ bench_now_ns();
	{
		char model[64];
		kvt_salt_params sp = {
			.model_id = model, .kv_dtype = "bf16", .layout = "bench", .block_tokens = 1,
		};

		snprintf(model, sizeof(model), "kvtier-bench/transfer/%llx",
			 (unsigned long long)kb.nonce);
		rc = kvt_key_salt(&sp, &kb.salt);
		if (rc) {
			fprintf(stderr, "bench_transfer: kvt_key_salt: %s\n", kvt_strerror(rc));
			return 1;
		}
	}

	signal(SIGINT, on_signal);
	signal(SIGTERM, on_signal);
	signal(SIGPIPE, SIG_IGN);

	rc = kvt_conn_open(o.socket, &kb.c);
	if (rc) {
		fprintf(stderr, "bench_transfer: cannot connect to %s: %s\n",
			o.socket ? o.socket : "$KVTIER_SOCKET/default socket", kvt_strerror(rc));
		return 1;
	}
	if (kb.depth > kvt_conn_server(kb.c)->max_inflight)
		kb.depth = kvt_conn_server(kb.c)->max_inflight;
	get_daemon_info(kb.c, &di);
	nthreads = o.threads ? o.threads : di.workers ? (unsigned)di.workers : 1;
	if (nthreads > MAX_THREADS)
		nthreads = MAX_THREADS;

	rc = kvt_region_create(kb.c, 2 * kb.depth * kb.slot, &kb.r);
	if (rc) {
		fprintf(stderr, "bench_transfer: region of %llu MiB: %s\n",
			(unsigned long long)(2 * kb.depth * kb.slot / MIB), kvt_strerror(rc));
		goto out;
	}
	kb.base = kvt_region_base(kb.r);
	/* Fill (and so fault in) every slot once, before anything is timed. */
	for (unsigned s = 0; s < 2 * kb.depth; s++)
		fill_pattern(kb.base + (uint64_t)s * kb.slot, kb.slot, s + 1);

	if (mc_start(&mc1, 1) != 0 || mc_start(&mcn, nthreads) != 0) {
		/* Threads that did start wait on a barrier that can never fill; they end
		 * with the process, which exits next. */
		fprintf(stderr, "bench_transfer: cannot start memcpy threads\n");
		goto out;
	}
	mc_started = true;

	if (!o.no_redis) {
		rc = redis_start(o.redis_bin, &rctx);
		if (rc) {
			fprintf(stderr, "bench_transfer: cannot start %s: %s (log: %s); "
				"use -R to skip the Redis baseline\n",
				o.redis_bin, strerror(-rc), redis_log);
			goto out;
		}
	}
	if (bench_out_open(&out, o.out) != 0) {
		fprintf(stderr, "bench_transfer: cannot write %s: %s\n", o.out, strerror(errno));
		goto out;
	}

	/*
	 * A fresh daemon's arena has never been touched: the first PUT into each page
	 * pays the page fault (and, with transparent huge pages, possibly compaction).
	 * Fill the whole tier once, report what that cost, and measure the points on
	 * a tier in its steady state, as a long-running daemon is.
	 */
	bench_cpu_snapshot(&cpu0);
	if (!o.no_fill && di.capacity) {
		fprintf(stderr, "bench_transfer: first fill of the host tier (%.2f GiB)...\n",
			(double)di.capacity / (1024.0 * MIB));
		rc = kvt_put_run(&kb, sizes[NSIZES - 1], 120.0, di.capacity, &fill_gbps, &fill_bytes);
		if (rc)
			goto out_file;
	}

	for (unsigned round = 0; round < o.rounds; round++) {
		for (size_t i = 0; i < NSIZES; i++) {
			uint64_t size = sizes[i];
			struct point *pt = &pts[i];
			double v;

			fprintf(stderr, "bench_transfer: round %u/%u, %llu MiB blocks...\n",
				round + 1, o.rounds, (unsigned long long)(size / MIB));
			rc = kvt_put_run(&kb, size, o.seconds, 0, &v, NULL);
			if (rc)
				goto out_file;
			pt->v[M_KPUT][pt->n[M_KPUT]++] = v;
			rc = kvt_get_point(&kb, size, o.seconds, &v);
			if (rc)
				goto out_file;
			pt->v[M_KGET][pt->n[M_KGET]++] = v;
			pt->v[M_MC1][pt->n[M_MC1]++] = memcpy_point(&kb, &mc1, size, o.seconds);
			pt->v[M_MCN][pt->n[M_MCN]++] = memcpy_point(&kb, &mcn, size, o.seconds);
			if (rctx) {
				rc = redis_set_point(rctx, &kb, size, o.seconds, &v);
				if (rc)
					goto out_file;
				pt->v[M_RSET][pt->n[M_RSET]++] = v;
				rc = redis_get_point(rctx, &kb, size, o.seconds, &v);
				if (rc)
					goto out_file;
				pt->v[M_RGET][pt->n[M_RGET]++] = v;
			}
		}
	}

	bench_print_machine(&out, "bench_transfer: host-tier PUT/GET bandwidth vs memcpy and Redis");
	bench_printf(&out, "daemon:  %s (protocol %u), %llu copy workers, host tier %.2f GiB in "
		     "%llu KiB chunks, hugepages %s, mlocked %llu\n",
		     kvt_conn_server(kb.c)->server, kvt_conn_server(kb.c)->version,
		     (unsigned long long)di.workers, (double)di.capacity / (1024.0 * MIB),
		     (unsigned long long)(di.chunk / 1024), di.huge,
		     (unsigned long long)di.mlocked);
	if (rctx) {
		redisReply *rep = redisCommand(rctx, "INFO server");
		const char *v = rep && rep->type == REDIS_REPLY_STRING ?
			strstr(rep->str, "redis_version:") : NULL;

		bench_printf(&out, "redis:   redis-server %.*s on a Unix socket, no persistence; "
			     "hiredis %d.%d.%d client\n",
			     v ? (int)strcspn(v + 14, "\r\n") : 1, v ? v + 14 : "?",
			     HIREDIS_MAJOR, HIREDIS_MINOR, HIREDIS_PATCH);
		freeReplyObject(rep);
	}
	bench_printf(&out, "params:  %u transfers in flight; %u interleaved rounds of %.1f s per "
		     "method and block size, medians shown; one %llu MiB region (sealed memfd)\n"
		     "         holds sources and destinations. GB/s = 10^9 bytes/s.\n",
		     kb.depth, o.rounds, o.seconds,
		     (unsigned long long)(2 * kb.depth * kb.slot / MIB));
	bench_printf(&out, "         memcpy-x1 = one thread, memcpy-x%u = %u threads each copying a "
		     "slice (as many as the daemon's copy workers), same buffers, warmed.\n",
		     nthreads, nthreads);
	bench_printf(&out, "         Every kvtier GET is sample-checked (poisoned before, compared "
		     "after); the last blocks of every run are compared in full.\n"
		     "         redis SET/GET via hiredis, pipelined to the same depth; a GET counts "
		     "when its reply is in hiredis' buffer (no copy out).\n\n");
	if (fill_gbps >= 0)
		bench_printf(&out, "first fill of the host tier right after start (arena pages "
			     "touched for the first time): PUT %.2f GB/s over %.2f GiB of 64 MiB "
			     "blocks\n\n",
			     fill_gbps, (double)fill_bytes / (1024.0 * MIB));

	bench_printf(&out, "## bandwidth on a filled host tier, GB/s (median of %u rounds; "
		     "kvtier min..max)\n", o.rounds);
	{
		char mn_h[24], qn_h[24];

		snprintf(mn_h, sizeof(mn_h), "memcpy-x%u", nthreads);
		snprintf(qn_h, sizeof(qn_h), "/memcpy-x%u", nthreads);
		bench_printf(&out, "%-6s %4s %7s %14s %10s %10s %7s %11s %11s %8s\n", "block",
			     "op", "kvtier", "(min..max)", "memcpy-x1", mn_h, "redis", qn_h,
			     "/memcpy-x1", "/redis");
	}
	for (size_t i = 0; i < NSIZES; i++) {
		double m1 = median(&pts[i], M_MC1, NULL, NULL);
		double mn = median(&pts[i], M_MCN, NULL, NULL);

		for (int op = 0; op < 2; op++) {
			double lo, hi;
			double k = median(&pts[i], op ? M_KGET : M_KPUT, &lo, &hi);
			double r = median(&pts[i], op ? M_RGET : M_RSET, NULL, NULL);
			char k_s[24], range[40], m1_s[24], mn_s[24], r_s[24], q1[24], qn[24], qr[24];
			char sz[24];

			snprintf(sz, sizeof(sz), "%lluMiB", (unsigned long long)(sizes[i] / MIB));
			fmt_bw(k_s, sizeof(k_s), k);
			snprintf(range, sizeof(range), "(%.2f..%.2f)", lo, hi);
			fmt_bw(m1_s, sizeof(m1_s), m1);
			fmt_bw(mn_s, sizeof(mn_s), mn);
			fmt_bw(r_s, sizeof(r_s), r);
			fmt_ratio(qn, sizeof(qn), k, mn);
			fmt_ratio(q1, sizeof(q1), k, m1);
			fmt_ratio(qr, sizeof(qr), k, r);
			bench_printf(&out, "%-6s %4s %7s %14s %10s %10s %7s %11s %11s %8s\n", sz,
				     op ? "GET" : "PUT", k_s, range, m1_s, mn_s, r_s, qn, q1, qr);
			if (k < 0.8 * (mn > m1 ? mn : m1) || (r > 0 && k < 5 * r))
				goals_met = false;
		}
	}
	bench_printf(&out, "(redis column: SET on PUT rows, GET on GET rows)\n\n");
	bench_printf(&out, "goals (DESIGN.md): kvtier GET and PUT >= 0.80x memcpy (judged against "
		     "the faster memcpy baseline); >= 5x Redis\n");
	for (size_t i = 0; i < NSIZES; i++) {
		double m1 = median(&pts[i], M_MC1, NULL, NULL);
		double mn = median(&pts[i], M_MCN, NULL, NULL);
		double mbest = mn > m1 ? mn : m1;

		for (int op = 0; op < 2; op++) {
			double k = median(&pts[i], op ? M_KGET : M_KPUT, NULL, NULL);
			double r = median(&pts[i], op ? M_RGET : M_RSET, NULL, NULL);

			bench_printf(&out, "  %2lluMiB %s: %.2fx memcpy (%s), ",
				     (unsigned long long)(sizes[i] / MIB), op ? "GET" : "PUT",
				     k / mbest, k >= 0.8 * mbest ? "met" : "NOT met");
			if (r > 0)
				bench_printf(&out, "%.2fx redis (%s)\n", k / r,
					     k >= 5 * r ? "met" : "NOT met");
			else
				bench_printf(&out, "redis not measured\n");
		}
	}
	bench_printf(&out, "all goals: %s\n", goals_met ? "met" : "NOT met");
	bench_print_cpu_use(&out, &cpu0);

	if (o.plot) {
		FILE *plot = fopen(o.plot, "w");

		if (!plot) {
			fprintf(stderr, "bench_transfer: cannot write %s: %s\n", o.plot,
				strerror(errno));
			goto out_file;
		}
		fprintf(plot, "# size_mib kvt_put kvt_get memcpy_x1 memcpy_x%u redis_set "
			"redis_get (GB/s, medians; ? = not measured)\n", nthreads);
		for (size_t i = 0; i < NSIZES; i++) {
			fprintf(plot, "%llu", (unsigned long long)(sizes[i] / MIB));
			for (int m = 0; m < NMETHODS; m++) {
				double v = median(&pts[i], (enum method)m, NULL, NULL);

				if (v < 0)
					fprintf(plot, " ?");
				else
					fprintf(plot, " %.3f", v);
			}
			fprintf(plot, "\n");
		}
		if (fclose(plot) != 0)
			goto out_file;
	}
	ret = 0;

out_file:
	if (bench_out_close(&out) != 0 && ret == 0) {
		fprintf(stderr, "bench_transfer: writing %s failed\n", o.out);
		ret = 1;
	}
out:
	if (mc_started) {
		mc_stop(&mc1);
		mc_stop(&mcn);
	}
	redisFree(rctx);
	redis_stop();
	kvt_region_destroy(kb.r);
	kvt_conn_close(kb.c);
	return ret;

bad_arg:
	usage(stderr);
	return 2;
}
