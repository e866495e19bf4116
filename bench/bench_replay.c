/*
 * bench_replay.c - replays a Mooncake KV-cache trace (JSONL; hash_ids are
 * 512-token prefix blocks) through a real kvtierd, started by this program at
 * several host-tier (and NVMe-tier) capacities, and reports the prefix hit ratio
 * per tier beside a plain LRU simulation of the same capacities in the same run.
 *
 * Per request it does what an engine does: LOOKUP the request's chain of block
 * keys, GET the prefix that hit (checking sample words of every fetched block
 * against what that hash id's block must contain), PUT the blocks that missed
 * with their parent keys. Host-tier hit ratios do not depend on the block size;
 * byte counts scale with it. The NVMe tier reclaims space a segment (>= 64 MiB)
 * at a time, so there the number of blocks per segment matters too.
 */
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <getopt.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "kvtier.h"
#include "bench_daemon.h"
#include "bench_util.h"
#include "trace.h"

#ifndef KVT_BIN_DIR
#define KVT_BIN_DIR "build/bin"
#endif

#define KIB 1024ull
#define MIB (1024ull * 1024)
#define BLOCK_TOKENS TRACE_BLOCK_TOKENS
#define LLAMA3_8B_BLOCK (64 * MIB) /* 512 tokens x 128 KiB/token (bf16, GQA) */
#define MAX_POINTS 16
#define MAX_EXTRA 16
#define MAX_BATCH_ITEMS 1024u  /* keeps every frame far below the default max_frame */
#define REGION_CAP (512 * MIB) /* region = slots x block size, at most this */
#define NSTAMP 8               /* words per block derived from its hash id */
#define START_TIMEOUT_MS 20000
#define STOP_TIMEOUT_MS 20000
#define CALL_TIMEOUT_MS 60000

struct opts {
	const char *trace;
	const char *daemon;
	const char *out;
	const char *plot;
	const char *png;
	const char *gnuplot_script;
	const char *extra[MAX_EXTRA];
	unsigned nextra;
	uint64_t block;         /* bytes per 512-token block */
	double nvme_factor;     /* NVMe tier = factor x host tier; 0: no NVMe points */
	double point_seconds;   /* a point stops after this long */
	double speed;           /* > 0: keep the trace's timing, this many times faster */
	size_t max_requests;    /* 0: the whole trace */
	double hint_seconds;    /* > 0: send the engine hints the trace implies (HINT) */
	double frac[MAX_POINTS];
	char frac_label[MAX_POINTS][16];
	unsigned nfracs;
};

/* ---- the plain LRU baseline ------------------------------------------------------ */

/*
 * Two LRU lists over dense block ids: host (H blocks) and NVMe (N blocks), exclusive.
 * A block enters the host list at its MRU end; host evictions go to the NVMe list's
 * MRU end (and NVMe evictions are dropped); an NVMe hit moves the block back into
 * the host list. Within a request blocks are accessed head first, so the tail ends
 * up most recent: plain LRU, no knowledge of chains.
 */
enum { WHERE_NONE, WHERE_HOST, WHERE_NVME };

struct lru_sim {
	uint32_t *prev, *next;
	uint8_t *where;
	uint32_t head[3]; /* sentinel ids per list (index WHERE_HOST / WHERE_NVME) */
	uint64_t cap[3], count[3];
};

static int lru_init(struct lru_sim *l, size_t nids, uint64_t host, uint64_t nvme)
{
	memset(l, 0, sizeof(*l));
	l->prev = malloc((nids + 3) * sizeof(*l->prev));
	l->next = malloc((nids + 3) * sizeof(*l->next));
	l->where = calloc(nids + 3, 1);
	if (!l->prev || !l->next || !l->where) {
		free(l->prev);
		free(l->next);
		free(l->where);
		return -ENOMEM;
	}
	for (int w = WHERE_HOST; w <= WHERE_NVME; w++) {
		uint32_t s = (uint32_t)(nids + (size_t)w);

		l->head[w] = s;
		l->prev[s] = l->next[s] = s;
	}
	l->cap[WHERE_HOST] = host;
	l->cap[WHERE_NVME] = nvme;
	return 0;
}

static void lru_free(struct lru_sim *l)
{
	free(l->prev);
	free(l->next);
	free(l->where);
}

static void lru_unlink(struct lru_sim *l, uint32_t id)
{
	l->next[l->prev[id]] = l->next[id];
	l->prev[l->next[id]] = l->prev[id];
	l->count[l->where[id]]--;
	l->where[id] = WHERE_NONE;
}

static void lru_push_mru(struct lru_sim *l, int w, uint32_t id)
{
	uint32_t s = l->head[w];

	l->prev[id] = l->prev[s];
	l->next[id] = s;
	l->next[l->prev[s]] = id;
	l->prev[s] = id;
	l->where[id] = (uint8_t)w;
	l->count[w]++;
}

static void lru_insert_host(struct lru_sim *l, uint32_t id)
{
	lru_push_mru(l, WHERE_HOST, id);
	while (l->count[WHERE_HOST] > l->cap[WHERE_HOST]) {
		uint32_t v = l->next[l->head[WHERE_HOST]];

		lru_unlink(l, v);
		if (l->cap[WHERE_NVME] == 0)
			continue;
		lru_push_mru(l, WHERE_NVME, v);
		while (l->count[WHERE_NVME] > l->cap[WHERE_NVME])
			lru_unlink(l, l->next[l->head[WHERE_NVME]]);
	}
}

/* One request: count its leading hits per tier, then access every block. */
static void lru_request(struct lru_sim *l, const uint32_t *ids, uint32_t n, uint64_t *hit_host,
			uint64_t *hit_nvme)
{
	uint32_t i;

	for (i = 0; i < n && l->where[ids[i]] != WHERE_NONE; i++) {
		if (l->where[ids[i]] == WHERE_HOST)
			(*hit_host)++;
		else
			(*hit_nvme)++;
	}
	for (i = 0; i < n; i++) {
		uint32_t id = ids[i];

		if (l->where[id] != WHERE_NONE)
			lru_unlink(l, id);
		lru_insert_host(l, id);
	}
}

/* Replay the first nreq requests through an LRU of host + nvme blocks. */
static int lru_run(const struct trace *t, size_t nreq, uint64_t host, uint64_t nvme,
		   uint64_t *hit_host, uint64_t *hit_nvme)
{
	struct lru_sim l;
	int rc = lru_init(&l, t->nunique, host, nvme);

	if (rc)
		return rc;
	*hit_host = *hit_nvme = 0;
	for (size_t r = 0; r < nreq; r++)
		lru_request(&l, t->id + t->req[r].first, t->req[r].n, hit_host, hit_nvme);
	lru_free(&l);
	return 0;
}

/*
 * The inclusive variant: the NVMe list sees every block written and every access
 * (write-through), independently of the host list, so (LRU's stack property) it
 * holds everything the host list holds when N >= H: the pair hits what one LRU of
 * max(H, N) blocks hits. A hit counts for the host tier when the host list has it.
 */
static int lru_run_inclusive(const struct trace *t, size_t nreq, uint64_t host, uint64_t nvme,
			     uint64_t *hit_host, uint64_t *hit_nvme)
{
	struct lru_sim h, n;
	uint64_t ignored_a = 0, ignored_b = 0;
	int rc = lru_init(&h, t->nunique, host, 0);

	if (rc)
		return rc;
	rc = lru_init(&n, t->nunique, nvme, 0);
	if (rc) {
		lru_free(&h);
		return rc;
	}
	*hit_host = *hit_nvme = 0;
	for (size_t r = 0; r < nreq; r++) {
		const uint32_t *ids = t->id + t->req[r].first;
		uint32_t cnt = t->req[r].n;

		for (uint32_t i = 0; i < cnt; i++) {
			if (h.where[ids[i]] != WHERE_NONE)
				(*hit_host)++;
			else if (n.where[ids[i]] != WHERE_NONE)
				(*hit_nvme)++;
			else
				break;
		}
		lru_request(&h, ids, cnt, &ignored_a, &ignored_b);
		lru_request(&n, ids, cnt, &ignored_a, &ignored_b);
	}
	lru_free(&h);
	lru_free(&n);
	return 0;
}

/* ---- block contents -------------------------------------------------------------- */

/*
 * A block of hash id h holds the base words everywhere except NSTAMP words at
 * offsets derived from h, which hold values derived from h: its contents are a
 * function of h alone, cheap to make in a slot (restore the previous block's
 * stamped words, stamp the new ones) and cheap to check. The base words are
 * pseudo-random, so no NVMe codec can make a tier hold more blocks than its
 * size in blocks, which is what the LRU baseline gets.
 */
static uint64_t *base_words; /* block size / 8 words, made once */

static int base_init(uint64_t words)
{
	uint64_t s = 0x6b76746965722d72ull;

	base_words = malloc(words * sizeof(*base_words));
	if (!base_words)
		return -ENOMEM;
	for (uint64_t w = 0; w < words; w++)
		base_words[w] = bench_rand64(&s);
	return 0;
}

static uint64_t base_word(uint64_t w)
{
	return base_words[w];
}

static uint64_t stamp_value(uint64_t h, unsigned j)
{
	return bench_splitmix64(h * NSTAMP + j + 0x6b76746965720000ull);
}

/* Distinct word offsets: the first and the last word, the rest spread by h. */
static void stamp_offsets(uint64_t h, uint64_t words, uint64_t off[NSTAMP])
{
	uint64_t s = bench_splitmix64(h ^ 0x5eedull);

	off[0] = 0;
	off[1] = words - 1;
	for (unsigned j = 2; j < NSTAMP; j++) {
		uint64_t o = bench_splitmix64(s + j) % words;
		bool dup;

		do {
			dup = false;
			for (unsigned k = 0; k < j; k++)
				if (off[k] == o)
					dup = true;
			if (dup)
				o = (o + 1) % words;
		} while (dup);
		off[j] = o;
	}
}

static void put_word(uint8_t *slot, uint64_t w, uint64_t v)
{
	memcpy(slot + w * 8, &v, 8);
}

static uint64_t get_word(const uint8_t *slot, uint64_t w)
{
	uint64_t v;

	memcpy(&v, slot + w * 8, 8);
	return v;
}

/* ---- the daemon ------------------------------------------------------------------ */

static volatile sig_atomic_t stop_requested;

static void on_signal(int sig)
{
	(void)sig;
	stop_requested = 1;
	/* The replay then fails on a closed connection and cleans up normally. */
	if (bench_child_pid > 0)
		kill(bench_child_pid, SIGKILL);
}

static void sleep_ms(unsigned ms)
{
	struct timespec ts = { ms / 1000, (long)(ms % 1000) * 1000000L };

	nanosleep(&ts, NULL);
}

/* What one point asks of the daemon. */
struct tier_config {
	uint64_t host_bytes;
	uint64_t nvme_bytes;    /* 0: no NVMe tier */
	uint64_t segment_bytes; /* nvme_segment_size, when nvme_bytes > 0 */
	bool nvme_keys;         /* the daemon knows nvme_capacity: say 0 to have none */
};

struct daemon_args {
	char kv[8][400];
	char *argv[24 + 2 * MAX_EXTRA];
};

/*
 * kvtierd -o KEY=VALUE... for a point (d NULL: no socket or data_dir, for
 * --print-config). The -O extras come last, so they override ours.
 */
static void daemon_args_build(struct daemon_args *a, const struct opts *o,
			      const struct bench_daemon *d, const struct tier_config *tc,
			      bool print_config)
{
	int argc = 0, nkv = 0;

#define KV_(...)                                                                           \
	do {                                                                               \
		snprintf(a->kv[nkv], sizeof(a->kv[nkv]), __VA_ARGS__);                     \
		a->argv[argc++] = (char *)"-o";                                            \
		a->argv[argc++] = a->kv[nkv++];                                            \
	} while (0)

	a->argv[argc++] = (char *)"kvtierd";
	if (d) {
		KV_("socket=%s", d->sock);
		KV_("data_dir=%s", d->data);
	}
	KV_("host_capacity=%llu", (unsigned long long)tc->host_bytes);
	KV_("host_chunk=%llu", (unsigned long long)o->block);
	if (tc->nvme_keys)
		KV_("nvme_capacity=%llu", (unsigned long long)tc->nvme_bytes);
	if (tc->nvme_bytes) {
		KV_("nvme_segment_size=%llu", (unsigned long long)tc->segment_bytes);
		KV_("nvme_codec=raw");
	}
#undef KV_
	a->argv[argc++] = (char *)"-o";
	a->argv[argc++] = (char *)"log_level=warn";
	for (unsigned i = 0; i < o->nextra; i++) {
		a->argv[argc++] = (char *)"-o";
		a->argv[argc++] = (char *)o->extra[i];
	}
	if (print_config)
		a->argv[argc++] = (char *)"--print-config";
	a->argv[argc] = NULL;
}

/* Run `kvtierd -o key_value --print-config`: its exit status, or -errno. */
static int daemon_probe(const char *bin, const char *key_value)
{
	pid_t pid = fork();
	int st;

	if (pid < 0)
		return -errno;
	if (pid == 0) {
		int fd = open("/dev/null", O_RDWR);

		if (fd >= 0) {
			dup2(fd, STDIN_FILENO);
			dup2(fd, STDOUT_FILENO);
			dup2(fd, STDERR_FILENO);
		}
		execl(bin, "kvtierd", "-o", key_value, "--print-config", (char *)NULL);
		_exit(127);
	}
	if (waitpid(pid, &st, 0) != pid)
		return -errno;
	return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
}

/*
 * The settings a point runs with, as the daemon itself resolves them
 * (--print-config): the lines whose key starts with one of prefixes (a
 * comma-separated list), joined by ", " into buf. 0, or -errno / -EIO.
 */
static int daemon_effective_config(const struct opts *o, const struct tier_config *tc,
				   const char *prefixes, char *buf, size_t cap)
{
	struct daemon_args a;
	char text[16384];
	size_t len = 0, used = 0;
	int fds[2], st;
	pid_t pid;

	buf[0] = '\0';
	daemon_args_build(&a, o, NULL, tc, true);
	if (pipe2(fds, O_CLOEXEC) != 0)
		return -errno;
	fflush(NULL);
	pid = fork();
	if (pid < 0) {
		close(fds[0]);
		close(fds[1]);
		return -errno;
	}
	if (pid == 0) {
		int fd = open("/dev/null", O_RDWR);

		dup2(fds[1], STDOUT_FILENO);
		if (fd >= 0) {
			dup2(fd, STDIN_FILENO);
			dup2(fd, STDERR_FILENO);
		}
		execv(o->daemon, a.argv);
		_exit(127);
	}
	close(fds[1]);
	for (;;) {
		ssize_t r = read(fds[0], text + len, sizeof(text) - 1 - len);

		if (r < 0 && errno == EINTR)
			continue;
		if (r <= 0)
			break;
		len += (size_t)r;
		if (len == sizeof(text) - 1)
			break;
	}
	close(fds[0]);
	text[len] = '\0';
	if (waitpid(pid, &st, 0) != pid || !WIFEXITED(st) || WEXITSTATUS(st) != 0)
		return -EIO;
	for (char *save = NULL, *line = strtok_r(text, "\n", &save); line;
	     line = strtok_r(NULL, "\n", &save)) {
		char pre[128], *psave = NULL;
		bool want = false;
		int w;

		snprintf(pre, sizeof(pre), "%s", prefixes);
		for (char *p = strtok_r(pre, ",", &psave); p; p = strtok_r(NULL, ",", &psave))
			if (strncmp(line, p, strlen(p)) == 0)
				want = true;
		if (!want)
			continue;
		w = snprintf(buf + used, cap - used, "%s%s", used ? ", " : "", line);
		if (w < 0 || (size_t)w >= cap - used) {
			buf[used] = '\0';
			break;
		}
		used += (size_t)w;
	}
	return 0;
}

/*
 * Start kvtierd on a socket and data directory in a fresh directory under /var/tmp
 * with the point's tier sizes, and connect to it.
 */
static int daemon_start(const struct opts *o, const struct tier_config *tc, struct bench_daemon *d,
			kvt_conn **out)
{
	struct daemon_args a;
	char dir[64], why[512];
	int rc;

	memset(d, 0, sizeof(*d));
	d->pid = -1;
	snprintf(dir, sizeof(dir), "/var/tmp/kvtier-replay.XXXXXX");
	if (!mkdtemp(dir)) {
		rc = -errno;
		fprintf(stderr, "bench_replay: mkdtemp %s: %s\n", dir, strerror(errno));
		return rc;
	}
	bench_daemon_init(d, dir);
	daemon_args_build(&a, o, d, tc, false);

	rc = bench_daemon_spawn("bench_replay", d, o->daemon, (const char *const *)a.argv, NULL, 0);
	if (rc != 0) {
		fprintf(stderr, "bench_replay: fork: %s\n", strerror(-rc));
		return rc;
	}
	rc = bench_daemon_connect(d, START_TIMEOUT_MS, CALL_TIMEOUT_MS, &stop_requested, out, why,
				  sizeof(why));
	if (rc == -EINTR)
		return KVT_EINTR;
	if (rc != 0) {
		fprintf(stderr, "bench_replay: %s\n", why);
		bench_daemon_log_tail(d->log);
		return rc == -ETIMEDOUT ? KVT_ETIMEDOUT : rc;
	}
	return 0;
}

/*
 * SIGTERM, wait (SIGKILL after STOP_TIMEOUT_MS), remove the directory. Returns the
 * daemon's exit status (0 = clean), or -1 if it had to be killed.
 */
static int daemon_stop(struct bench_daemon *d)
{
	int ret = bench_daemon_stop("bench_replay", d, STOP_TIMEOUT_MS);

	if (d->dir[0]) {
		bench_rm_tree(d->dir);
		d->dir[0] = '\0';
	}
	return ret;
}

/* ---- the replay ------------------------------------------------------------------ */

struct point {
	char label[16];     /* host fraction as given, e.g. "1/8" */
	double frac;
	uint64_t host_blocks, nvme_blocks;
	struct tier_config tc;
	bool nvme;          /* a point with an NVMe tier */
	bool skipped;       /* NVMe point, daemon without an NVMe tier */
	bool ran;           /* kvtier was measured */
	bool stopped_early; /* the time limit ended it before the end of the trace */
	/* kvtier, counted by the bench */
	uint64_t requests, blocks, hit_host, hit_nvme, hit_other, get_lost;
	uint64_t got_blocks, put_blocks, put_nospc, put_busy;
	uint64_t hinted; /* keys sent in HINT requests */
	double wall_s;
	uint64_t lat_p50_us, lat_p99_us;
	/* kvtier, the daemon's own counters */
	bool have_stats;
	uint64_t t1_capacity, t1_bytes_in, t1_bytes_out, t1_evictions, t1_evictions_nontail;
	uint64_t t1_retain_capped, t1_retain_evicted, t1_retain_expired;
	uint64_t t2[16];  /* the daemon's t2_names counters */
	bool have_t2[16];
	/* the LRU simulation over the same requests */
	uint64_t lru_requests, lru_blocks, lru_host, lru_nvme;
	uint64_t lru_inc_host, lru_inc_nvme; /* inclusive variant, NVMe points */
};

/* NVMe-tier counters shown per point (docs/PROTOCOL.md), as "name" and header. */
static const char *const t2_names[][2] = {
	{ "t2.capacity_bytes", "cap MiB" }, { "t2.blocks", "blocks" },
	{ "t2.write_bytes", "wr MiB" },     { "t2.read_bytes", "rd MiB" },
	{ "t2.demotions", "demote" },       { "t2.demote_failures", "dem.fail" },
	{ "t2.hits", "hits" },              { "t2.promotions", "promote" },
	{ "t2.dropped_blocks", "dropped" }, { "t2.cleaned_segments", "cleaned" },
	{ "t2.fetch_failures", "fet.fail" }, { "t2.enospc", "enospc" },
};
#define NT2 (sizeof(t2_names) / sizeof(t2_names[0]))

struct replayer {
	kvt_conn *c;
	kvt_region *r;
	uint8_t *base;
	uint64_t block, words;
	size_t slots, batch;
	uint64_t *slot_hash; /* hash id whose words are stamped in each slot */
	bool *slot_stamped;
	uint8_t *tiers;
	kvt_get_item *gets;
	kvt_put_item *puts;
	uint64_t *lat_ns;
	const uint8_t *hints; /* per request: the HINT to send after it, or NULL */
};

/*
 * The hints an engine or agent framework would send, taken from the trace's
 * future: after request r, its blocks are retained if the next request of its
 * session (same first block) comes within `seconds` of trace time, released if
 * none ever comes, and left alone otherwise. The retain lasts far longer than
 * any replay (the next request's hint replaces it), so the daemon's clock,
 * which runs faster than the trace's here, plays no part.
 */
#define HINT_RETAIN_MS 3600000u
#define HINT_SKIP 0xff

static uint8_t *hints_from_trace(const struct trace *t, size_t nreq, double seconds)
{
	uint8_t *h = malloc(nreq ? nreq : 1);
	size_t *last = malloc((t->nunique ? t->nunique : 1) * sizeof(*last));
	if (!h || !last) {
		free(h);
		free(last);
		return NULL;
	}
	for (size_t i = 0; i < t->nunique; i++)
		last[i] = SIZE_MAX;
	for (size_t r = 0; r < nreq; r++)
		h[r] = t->req[r].n ? KVT_HINT_RELEASE : HINT_SKIP;
	for (size_t r = 0; r < nreq; r++) {
		if (!t->req[r].n)
			continue;
		uint32_t s = t->id[t->req[r].first];
		size_t p = last[s];
		if (p != SIZE_MAX)
			h[p] = t->req[r].ts_ms - t->req[p].ts_ms <= seconds * 1000 ? KVT_HINT_RETAIN
										: HINT_SKIP;
		last[s] = r;
	}
	free(last);
	return h;
}

static uint8_t *slot_ptr(const struct replayer *rp, size_t s)
{
	return rp->base + (uint64_t)s * rp->block;
}

/* Back to base words where the slot's previous block had its stamps. */
static void slot_clear(struct replayer *rp, size_t s)
{
	uint64_t off[NSTAMP];

	if (!rp->slot_stamped[s])
		return;
	stamp_offsets(rp->slot_hash[s], rp->words, off);
	for (unsigned j = 0; j < NSTAMP; j++)
		put_word(slot_ptr(rp, s), off[j], base_word(off[j]));
	rp->slot_stamped[s] = false;
}

/* Make slot s hold block h (before a PUT). */
static void slot_make(struct replayer *rp, size_t s, uint64_t h)
{
	uint64_t off[NSTAMP];

	slot_clear(rp, s);
	stamp_offsets(h, rp->words, off);
	for (unsigned j = 0; j < NSTAMP; j++)
		put_word(slot_ptr(rp, s), off[j], stamp_value(h, j));
	rp->slot_hash[s] = h;
	rp->slot_stamped[s] = true;
}

/* Before a GET of block h into slot s: its stamp words must change to be right. */
static void slot_poison(struct replayer *rp, size_t s, uint64_t h)
{
	uint64_t off[NSTAMP];

	slot_clear(rp, s);
	stamp_offsets(h, rp->words, off);
	for (unsigned j = 0; j < NSTAMP; j++)
		put_word(slot_ptr(rp, s), off[j], ~stamp_value(h, j));
	rp->slot_hash[s] = h;
	rp->slot_stamped[s] = true;
}

static bool slot_check(const struct replayer *rp, size_t s, uint64_t h)
{
	uint64_t off[NSTAMP];

	stamp_offsets(h, rp->words, off);
	for (unsigned j = 0; j < NSTAMP; j++)
		if (get_word(slot_ptr(rp, s), off[j]) != stamp_value(h, j))
			return false;
	return true;
}

/* kvtier's message for its codes, strerror's for other -errno values. */
static const char *err_text(int rc)
{
	if (strcmp(kvt_errname(rc), "UNKNOWN") != 0)
		return kvt_strerror(rc);
	return strerror(-rc);
}

static size_t min_sz(size_t a, size_t b)
{
	return a < b ? a : b;
}

/* LOOKUP, GET the hit prefix, PUT the rest: one request, as an engine would. */
static int replay_request(struct replayer *rp, const struct trace *t, size_t r, struct point *pt)
{
	const struct req *q = &t->req[r];
	const kvt_key *keys = t->key + q->first;
	const uint64_t *hs = t->hash + q->first;
	size_t n = q->n, found = 0, at;
	int rc;

	for (at = 0; at < n;) {
		size_t m = min_sz(n - at, rp->batch), f = 0;

		rc = kvt_block_lookup(rp->c, keys + at, m, &f, rp->tiers + at);
		if (rc) {
			fprintf(stderr, "bench_replay: LOOKUP: %s\n", kvt_strerror(rc));
			return rc;
		}
		found += f;
		at += m;
		if (f < m)
			break;
	}

	for (at = 0; at < found;) {
		size_t m = min_sz(found - at, rp->slots);

		for (size_t i = 0; i < m; i++) {
			kvt_get_item *it = &rp->gets[i];

			slot_poison(rp, i, hs[at + i]);
			memset(it, 0, sizeof(*it));
			it->key = keys[at + i];
			it->region = rp->r;
			it->offset = (uint64_t)i * rp->block;
			it->capacity = rp->block;
		}
		rc = kvt_block_get(rp->c, rp->gets, m);
		if (rc && rc != KVT_EPARTIAL) {
			fprintf(stderr, "bench_replay: GET: %s\n", kvt_strerror(rc));
			return rc;
		}
		for (size_t i = 0; i < m; i++) {
			const kvt_get_item *it = &rp->gets[i];

			if (it->status == KVT_ENOENT) {
				/* Gone between LOOKUP and GET: the prefix ends here. */
				pt->get_lost += found - (at + i);
				found = at + i;
				break;
			}
			if (it->status != 0) {
				fprintf(stderr, "bench_replay: GET of block %zu of request %zu: %s\n",
					at + i, r, kvt_strerror(it->status));
				return it->status;
			}
			if (it->length != rp->block || !slot_check(rp, i, hs[at + i])) {
				fprintf(stderr, "bench_replay: GET of block %zu (hash id %llu) of "
					"request %zu returned wrong bytes\n", at + i,
					(unsigned long long)hs[at + i], r);
				return KVT_EIO;
			}
			pt->got_blocks++;
		}
		at += m;
	}

	for (size_t i = 0; i < found; i++) {
		if (rp->tiers[i] == KVT_TIER_HOST)
			pt->hit_host++;
		else if (rp->tiers[i] == KVT_TIER_NVME)
			pt->hit_nvme++;
		else
			pt->hit_other++;
	}

	for (at = found; at < n;) {
		size_t m = min_sz(n - at, rp->slots);

		for (size_t i = 0; i < m; i++) {
			kvt_put_item *it = &rp->puts[i];
			size_t b = at + i;

			slot_make(rp, i, hs[b]);
			memset(it, 0, sizeof(*it));
			it->key = keys[b];
			if (b > 0)
				it->parent = keys[b - 1];
			it->region = rp->r;
			it->offset = (uint64_t)i * rp->block;
			it->length = rp->block;
			it->desc.dtype = KVT_DTYPE_BF16;
			it->desc.layers = 32;
			it->desc.tokens = BLOCK_TOKENS;
		}
		rc = kvt_block_put(rp->c, rp->puts, m);
		if (rc && rc != KVT_EPARTIAL) {
			fprintf(stderr, "bench_replay: PUT: %s\n", kvt_strerror(rc));
			return rc;
		}
		for (size_t i = 0; i < m; i++) {
			int st = rp->puts[i].status;

			if (st == 0) {
				pt->put_blocks++;
			} else if (st == KVT_ENOSPC || st == KVT_EDQUOT) {
				pt->put_nospc++;
			} else if (st == KVT_EBUSY) {
				pt->put_busy++;
			} else {
				fprintf(stderr, "bench_replay: PUT of block %zu of request %zu: %s\n",
					at + i, r, kvt_strerror(st));
				return st;
			}
		}
		at += m;
	}
	if (rp->hints && rp->hints[r] != HINT_SKIP) {
		for (at = 0; at < n;) {
			size_t m = min_sz(n - at, rp->batch);
			/* KVT_EPARTIAL: blocks the host tier does not hold (on NVMe, or
			 * not stored for want of room) take no hint. */
			rc = kvt_block_hint(rp->c, keys + at, m, rp->hints[r], HINT_RETAIN_MS, NULL);
			if (rc && rc != KVT_EPARTIAL) {
				fprintf(stderr, "bench_replay: HINT: %s\n", kvt_strerror(rc));
				return rc;
			}
			pt->hinted += m;
			at += m;
		}
	}
	pt->requests++;
	pt->blocks += n;
	return 0;
}

static void read_stats(kvt_conn *c, struct point *pt)
{
	kvt_stats *st = NULL;
	if (kvt_stats_get(c, &st) != 0)
		return;
	pt->have_stats = true;
	kvt_stats_find(st, "t1.capacity_bytes", &pt->t1_capacity);
	kvt_stats_find(st, "t1.bytes_in", &pt->t1_bytes_in);
	kvt_stats_find(st, "t1.bytes_out", &pt->t1_bytes_out);
	kvt_stats_find(st, "t1.evictions", &pt->t1_evictions);
	kvt_stats_find(st, "t1.evictions_nontail", &pt->t1_evictions_nontail);
	kvt_stats_find(st, "t1.retain_capped", &pt->t1_retain_capped);
	kvt_stats_find(st, "t1.retain_evicted", &pt->t1_retain_evicted);
	kvt_stats_find(st, "t1.retain_expired", &pt->t1_retain_expired);
	for (size_t i = 0; i < NT2; i++)
		pt->have_t2[i] = kvt_stats_find(st, t2_names[i][0], &pt->t2[i]);
	kvt_stats_free(st);
}

struct run_info {
	char server[64];
	char hugepages[32];
	uint64_t workers, mlocked;
	bool have;
};

static void read_run_info(kvt_conn *c, struct run_info *ri)
{
	kvt_stats *st = NULL;

	if (ri->have || kvt_stats_get(c, &st) != 0)
		return;
	ri->have = true;
	snprintf(ri->server, sizeof(ri->server), "%s", kvt_conn_server(c)->server);
	snprintf(ri->hugepages, sizeof(ri->hugepages), "?");
	kvt_stats_find(st, "server.workers", &ri->workers);
	kvt_stats_find(st, "t1.mlocked", &ri->mlocked);
	for (size_t i = 0; i < kvt_stats_count(st); i++) {
		const char *name, *text;
		uint64_t v;

		if (kvt_stats_entry(st, i, &name, &v, &text) == 0 && text &&
		    strcmp(name, "t1.hugepages") == 0)
			snprintf(ri->hugepages, sizeof(ri->hugepages), "%s", text);
	}
	kvt_stats_free(st);
}

static void replayer_free(struct replayer *rp)
{
	kvt_region_destroy(rp->r);
	kvt_conn_close(rp->c);
	free(rp->slot_hash);
	free(rp->slot_stamped);
	free(rp->tiers);
	free(rp->gets);
	free(rp->puts);
	free(rp->lat_ns);
	memset(rp, 0, sizeof(*rp));
}

/* One capacity point on a fresh daemon. */
static const uint8_t *g_hints; /* -H: per request, the HINT to send after it */

static int run_point(const struct opts *o, const struct trace *t, size_t nreq, struct point *pt,
		     struct run_info *ri)
{
	struct bench_daemon d;
	struct replayer rp = { .hints = g_hints };
	uint64_t t0, limit = (uint64_t)(o->point_seconds * 1e9);
	int rc, src;

	rc = daemon_start(o, &pt->tc, &d, &rp.c);
	if (rc)
		goto out;
	read_run_info(rp.c, ri);
	rp.block = o->block;
	rp.words = o->block / 8;
	rp.slots = t->max_n ? t->max_n : 1;
	if (rp.slots > REGION_CAP / o->block)
		rp.slots = REGION_CAP / o->block ? REGION_CAP / o->block : 1;
	rp.batch = kvt_conn_server(rp.c)->max_batch;
	if (rp.batch > MAX_BATCH_ITEMS)
		rp.batch = MAX_BATCH_ITEMS;
	if (rp.batch == 0)
		rp.batch = 1;
	if (rp.slots > rp.batch)
		rp.slots = rp.batch;
	rp.slot_hash = calloc(rp.slots, sizeof(*rp.slot_hash));
	rp.slot_stamped = calloc(rp.slots, sizeof(*rp.slot_stamped));
	rp.tiers = calloc(t->max_n ? t->max_n : 1, 1);
	rp.gets = calloc(rp.slots, sizeof(*rp.gets));
	rp.puts = calloc(rp.slots, sizeof(*rp.puts));
	rp.lat_ns = calloc(nreq, sizeof(*rp.lat_ns));
	if (!rp.slot_hash || !rp.slot_stamped || !rp.tiers || !rp.gets || !rp.puts || !rp.lat_ns) {
		rc = KVT_ENOMEM;
		goto out;
	}
	rc = kvt_region_create(rp.c, rp.slots * rp.block, &rp.r);
	if (rc) {
		fprintf(stderr, "bench_replay: region of %zu x %llu bytes: %s\n", rp.slots,
			(unsigned long long)rp.block, kvt_strerror(rc));
		goto out;
	}
	rp.base = kvt_region_base(rp.r);
	for (size_t s = 0; s < rp.slots; s++)
		for (uint64_t w = 0; w < rp.words; w++)
			put_word(slot_ptr(&rp, s), w, base_word(w));

	t0 = bench_now_ns();
	for (size_t r = 0; r < nreq; r++) {
		uint64_t r0;

		if (o->speed > 0) {
			double due_ms = (t->req[r].ts_ms - t->req[0].ts_ms) / o->speed;
			uint64_t due = t0 + (uint64_t)(due_ms > 0 ? due_ms * 1e6 : 0);
			uint64_t now = bench_now_ns();

			if (due > now && due - now < limit)
				sleep_ms((unsigned)((due - now) / 1000000u));
		}
		r0 = bench_now_ns();
		if (stop_requested) {
			rc = KVT_EINTR;
			goto out;
		}
		if (r0 - t0 > limit) {
			pt->stopped_early = true;
			break;
		}
		rc = replay_request(&rp, t, r, pt);
		if (rc)
			goto out;
		rp.lat_ns[r] = bench_now_ns() - r0;
	}
	pt->wall_s = (double)(bench_now_ns() - t0) / 1e9;
	if (pt->requests) {
		qsort(rp.lat_ns, pt->requests, sizeof(*rp.lat_ns), bench_cmp_u64);
		pt->lat_p50_us = bench_quantile(rp.lat_ns, pt->requests, 0.50) / 1000;
		pt->lat_p99_us = bench_quantile(rp.lat_ns, pt->requests, 0.99) / 1000;
	}
	read_stats(rp.c, pt);
	pt->ran = true;
out:
	replayer_free(&rp);
	src = daemon_stop(&d);
	if (rc == 0 && src != 0)
		rc = KVT_EIO;
	return rc;
}

/* ---- report ---------------------------------------------------------------------- */

static double ratio(uint64_t a, uint64_t b)
{
	return b ? (double)a / (double)b : 0;
}

static void fmt_block(char *buf, size_t cap, uint64_t b)
{
	if (b % MIB == 0)
		snprintf(buf, cap, "%llu MiB", (unsigned long long)(b / MIB));
	else
		snprintf(buf, cap, "%llu KiB", (unsigned long long)(b / KIB));
}

static void fmt_ratio3(char *buf, size_t cap, bool show, double v)
{
	if (show)
		snprintf(buf, cap, "%.3f", v);
	else
		snprintf(buf, cap, "-");
}

static void fmt_times(char *buf, size_t cap, double a, double b)
{
	if (b > 0)
		snprintf(buf, cap, "%.2fx", a / b);
	else
		snprintf(buf, cap, "-");
}

static void print_hit_table(struct bench_out *out, const struct point *pts, unsigned npts)
{
	bench_printf(out, "%-5s %6s %6s | %-20s | %-20s | %6s | %-13s\n", "host", "host", "nvme",
		     "kvtier", "LRU, exclusive", "LRU,", "kvtier / LRU");
	bench_printf(out, "%-5s %6s %6s | %5s %5s %7s | %5s %5s %7s | %6s | %6s %6s\n", "frac",
		     "blocks", "blocks", "host", "nvme", "total", "host", "nvme", "total", "incl.",
		     "excl.", "incl.");
	for (unsigned i = 0; i < npts; i++) {
		const struct point *p = &pts[i];
		double lh = ratio(p->lru_host, p->lru_blocks), ln = ratio(p->lru_nvme, p->lru_blocks);
		double it = ratio(p->lru_inc_host + p->lru_inc_nvme, p->lru_blocks);
		char lnv[16], inc[16], kh_s[16], knv[16], kt_s[16], qe[16], qi[16];

		fmt_ratio3(lnv, sizeof(lnv), p->nvme || p->lru_nvme, ln);
		fmt_ratio3(inc, sizeof(inc), p->nvme, it);
		bench_printf(out, "%-5s %6llu %6llu | ", p->label,
			     (unsigned long long)p->host_blocks,
			     (unsigned long long)(p->nvme ? p->nvme_blocks : 0));
		if (p->ran) {
			double kh = ratio(p->hit_host, p->blocks), kn = ratio(p->hit_nvme, p->blocks);
			double kt = ratio(p->hit_host + p->hit_nvme + p->hit_other, p->blocks);

			fmt_ratio3(kh_s, sizeof(kh_s), true, kh);
			fmt_ratio3(knv, sizeof(knv), p->nvme || p->hit_nvme, kn);
			fmt_ratio3(kt_s, sizeof(kt_s), true, kt);
			fmt_times(qe, sizeof(qe), kt, lh + ln);
			fmt_times(qi, sizeof(qi), kt, p->nvme ? it : 0);
		} else {
			snprintf(kh_s, sizeof(kh_s), "n/a");
			snprintf(knv, sizeof(knv), "-");
			snprintf(kt_s, sizeof(kt_s), "-");
			snprintf(qe, sizeof(qe), "-");
			snprintf(qi, sizeof(qi), "-");
		}
		bench_printf(out, "%5s %5s %7s | %5.3f %5s %7.3f | %6s | %6s %6s%s\n", kh_s, knv,
			     kt_s, lh, lnv, lh + ln, inc, qe, qi,
			     p->skipped ? "  NVMe tier not available in this daemon build" :
			     !p->ran ? "  FAILED" :
			     p->stopped_early ? "  (time limit)" : "");
	}
}

static void print_traffic_table(struct bench_out *out, const struct point *pts, unsigned npts,
				uint64_t block)
{
	bench_printf(out, "%-5s %5s %5s %8s %8s %8s %8s %7s %6s %9s %8s %6s %7s %6s %6s\n",
		     "host", "nvme", "reqs", "GET", "PUT", "t1.out", "t1.in", "ENOSPC", "EBUSY",
		     "t1.evict", "nontail", "wall", "req/s", "p50", "p99");
	bench_printf(out, "%-5s %5s %5s %8s %8s %8s %8s %7s %6s %9s %8s %6s %7s %6s %6s\n",
		     "frac", "", "", "GiB", "GiB", "GiB", "GiB", "PUTs", "PUTs", "blocks", "", "s",
		     "", "ms", "ms");
	for (unsigned i = 0; i < npts; i++) {
		const struct point *p = &pts[i];
		const double gib = 1024.0 * MIB;

		if (!p->ran)
			continue;
		bench_printf(out, "%-5s %5s %5llu %8.2f %8.2f %8.2f %8.2f %7llu %6llu %9llu %8llu "
			     "%6.1f %7.0f %6.2f %6.2f\n",
			     p->label, p->nvme ? "yes" : "no", (unsigned long long)p->requests,
			     (double)(p->got_blocks * block) / gib,
			     (double)(p->put_blocks * block) / gib,
			     (double)p->t1_bytes_out / gib, (double)p->t1_bytes_in / gib,
			     (unsigned long long)p->put_nospc, (unsigned long long)p->put_busy,
			     (unsigned long long)p->t1_evictions,
			     (unsigned long long)p->t1_evictions_nontail, p->wall_s,
			     p->wall_s > 0 ? (double)p->requests / p->wall_s : 0,
			     (double)p->lat_p50_us / 1000, (double)p->lat_p99_us / 1000);
	}
}

static void print_t2_table(struct bench_out *out, const struct point *pts, unsigned npts)
{
	bool any = false;

	for (unsigned i = 0; i < npts; i++)
		for (size_t k = 0; k < NT2; k++)
			any |= pts[i].ran && pts[i].nvme && pts[i].have_t2[k];
	if (!any)
		return;
	bench_printf(out, "\n## the daemon's NVMe-tier counters at the end of each NVMe point "
		     "(STATS t2.*; '-' = not reported)\n%-5s", "host");
	for (size_t k = 0; k < NT2; k++)
		bench_printf(out, " %9s", t2_names[k][1]);
	bench_printf(out, "\n");
	for (unsigned i = 0; i < npts; i++) {
		const struct point *p = &pts[i];

		if (!p->ran || !p->nvme)
			continue;
		bench_printf(out, "%-5s", p->label);
		for (size_t k = 0; k < NT2; k++) {
			bool mib = strstr(t2_names[k][0], "bytes") != NULL;

			if (!p->have_t2[k])
				bench_printf(out, " %9s", "-");
			else if (mib)
				bench_printf(out, " %9.0f", (double)p->t2[k] / MIB);
			else
				bench_printf(out, " %9llu", (unsigned long long)p->t2[k]);
		}
		bench_printf(out, "\n");
	}
}

static int write_plot_data(const char *path, const struct point *pts, unsigned npts,
			   double bound)
{
	FILE *f = fopen(path, "w");

	if (!f)
		return -errno;
	fprintf(f, "# bench_replay: prefix hit ratio by host-tier capacity; index 0 without, "
		"index 1 with an NVMe tier\n"
		"# host_frac host_blocks nvme_blocks kvtier_total lru_total infinite_bound "
		"kvtier_host kvtier_nvme lru_host lru_nvme lru_inclusive_total (? = not measured)\n");
	for (int with = 0; with < 2; with++) {
		bool any = false;

		if (with)
			fprintf(f, "\n\n");
		for (unsigned i = 0; i < npts; i++) {
			const struct point *p = &pts[i];

			if (p->nvme != (with == 1))
				continue;
			any = true;
			fprintf(f, "%.6f %llu %llu ", p->frac, (unsigned long long)p->host_blocks,
				(unsigned long long)(p->nvme ? p->nvme_blocks : 0));
			if (p->ran)
				fprintf(f, "%.4f ", ratio(p->hit_host + p->hit_nvme + p->hit_other,
							  p->blocks));
			else
				fprintf(f, "? ");
			fprintf(f, "%.4f %.4f ", ratio(p->lru_host + p->lru_nvme, p->lru_blocks),
				bound);
			if (p->ran)
				fprintf(f, "%.4f %.4f ", ratio(p->hit_host, p->blocks),
					ratio(p->hit_nvme, p->blocks));
			else
				fprintf(f, "? ? ");
			fprintf(f, "%.4f %.4f ", ratio(p->lru_host, p->lru_blocks),
				ratio(p->lru_nvme, p->lru_blocks));
			if (p->nvme)
				fprintf(f, "%.4f\n", ratio(p->lru_inc_host + p->lru_inc_nvme,
							   p->lru_blocks));
			else
				fprintf(f, "?\n");
		}
		if (!any) /* keep index 1 present so the plot script finds it */
			fprintf(f, "? ? ? ? ? ? ? ? ? ? ?\n");
	}
	if (fclose(f) != 0)
		return -EIO;
	return 0;
}

/* gnuplot -e "datafile='..'; outfile='..'" SCRIPT; 0, 1 if it failed, -1 if absent. */
static int draw_plot(const struct opts *o)
{
	char expr[1024];
	pid_t pid;
	int st;

	if (access(o->gnuplot_script, R_OK) != 0) {
		fprintf(stderr, "bench_replay: %s: %s; no plot\n", o->gnuplot_script,
			strerror(errno));
		return 1;
	}
	if (strchr(o->plot, '\'') || strchr(o->png, '\'')) {
		fprintf(stderr, "bench_replay: quote in a plot path; no plot\n");
		return 1;
	}
	snprintf(expr, sizeof(expr), "datafile='%s'; outfile='%s'", o->plot, o->png);
	fflush(NULL);
	pid = fork();
	if (pid < 0)
		return 1;
	if (pid == 0) {
		execlp("gnuplot", "gnuplot", "-e", expr, o->gnuplot_script, (char *)NULL);
		_exit(errno == ENOENT ? 126 : 127);
	}
	if (waitpid(pid, &st, 0) != pid)
		return 1;
	if (WIFEXITED(st) && WEXITSTATUS(st) == 126)
		return -1;
	return WIFEXITED(st) && WEXITSTATUS(st) == 0 ? 0 : 1;
}

/* "ext4 on /dev/vda" for the file system holding path, from /proc/self/mounts. */
static void describe_fs(const char *path, char *buf, size_t cap)
{
	char line[1024], best_dev[256] = "?", best_type[64] = "?";
	size_t best_len = 0;
	FILE *f = fopen("/proc/self/mounts", "r");

	if (!f) {
		snprintf(buf, cap, "?");
		return;
	}
	while (fgets(line, sizeof(line), f)) {
		char dev[256], mnt[512], type[64];
		size_t n;

		if (sscanf(line, "%255s %511s %63s", dev, mnt, type) != 3)
			continue;
		n = strlen(mnt);
		if (strncmp(path, mnt, n) == 0 && (path[n] == '/' || path[n] == '\0' || n == 1) &&
		    n >= best_len) {
			best_len = n;
			snprintf(best_dev, sizeof(best_dev), "%s", dev);
			snprintf(best_type, sizeof(best_type), "%s", type);
		}
	}
	fclose(f);
	snprintf(buf, cap, "%s on %s", best_type, best_dev);
}

/* ---- options --------------------------------------------------------------------- */

/* "1/16,1/8,0.25": each a fraction of the unique blocks in (0, 1]. */
static int parse_fracs(struct opts *o, const char *text)
{
	char buf[256], *save = NULL;

	if (strlen(text) >= sizeof(buf))
		return -EINVAL;
	snprintf(buf, sizeof(buf), "%s", text);
	o->nfracs = 0;
	for (char *tok = strtok_r(buf, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
		double v;

		if (o->nfracs == MAX_POINTS / 2 || strlen(tok) >= sizeof(o->frac_label[0]))
			return -EINVAL;
		if (bench_parse_frac(tok, &v))
			return -EINVAL;
		o->frac[o->nfracs] = v;
		snprintf(o->frac_label[o->nfracs], sizeof(o->frac_label[0]), "%s", tok);
		o->nfracs++;
	}
	return o->nfracs ? 0 : -EINVAL;
}

static int parse_size(const char *s, uint64_t *out)
{
	char *end;
	unsigned long long v = strtoull(s, &end, 10);

	if (end == s)
		return -EINVAL;
	if (strcmp(end, "") == 0)
		;
	else if (strcmp(end, "K") == 0 || strcmp(end, "KiB") == 0)
		v *= KIB;
	else if (strcmp(end, "M") == 0 || strcmp(end, "MiB") == 0)
		v *= MIB;
	else
		return -EINVAL;
	*out = v;
	return 0;
}

static void usage(FILE *f)
{
	fprintf(f,
		"usage: bench_replay [-t TRACE] [-d KVTIERD] [-b BLOCK] [-c FRACS] [-N FACTOR]\n"
		"                    [-T SECONDS] [-S SPEEDUP] [-n REQUESTS] [-H SECONDS] [-O KEY=VALUE]...\n"
		"                    [-o FILE] [-p PLOTDATA] [-g PNG] [-G SCRIPT]\n"
		"  -t TRACE     Mooncake JSONL trace (default %s)\n"
		"  -d KVTIERD   daemon binary to start (default %s/kvtierd)\n"
		"  -b BLOCK     bytes per 512-token block, a power of two from 4KiB to 64MiB\n"
		"               (default 64KiB; hit ratios do not depend on it)\n"
		"  -c FRACS     host-tier sizes as fractions of the trace's unique blocks\n"
		"               (default 1/16,1/8,1/4,1/2)\n"
		"  -N FACTOR    NVMe tier = FACTOR x host tier for the NVMe points (default 2;\n"
		"               0: no NVMe points)\n"
		"  -T SECONDS   most time per capacity point (default 90)\n"
		"  -S SPEEDUP   keep the trace's arrival times, SPEEDUP times faster (default 0:\n"
		"               as fast as the daemon answers)\n"
		"  -n REQUESTS  replay only the first REQUESTS requests (default: all)\n"
		"  -H SECONDS   send the eviction hints an engine that knows the sessions would:\n"
		"               after each request, RETAIN its blocks if the trace continues its\n"
		"               session within SECONDS, RELEASE them if it never does\n"
		"  -O KEY=VALUE one more kvtierd setting for every point, after the bench's own\n"
		"               (repeatable; e.g. -O nvme_codec=bf16)\n"
		"  -o FILE      also write the results to FILE\n"
		"  -p PLOTDATA  write the numbers behind the plot to PLOTDATA\n"
		"  -g PNG       draw PNG from PLOTDATA with gnuplot (needs -p)\n"
		"  -G SCRIPT    gnuplot script (default bench/replay.gnuplot)\n",
		"/work/shared/traces/synthetic_trace.jsonl", KVT_BIN_DIR);
}

/* ---- main ------------------------------------------------------------------------ */

int main(int argc, char **argv)
{
	struct opts o = {
		.trace = "/work/shared/traces/synthetic_trace.jsonl",
		.daemon = KVT_BIN_DIR "/kvtierd",
		.gnuplot_script = "bench/replay.gnuplot",
		.block = 64 * KIB,
		.nvme_factor = 2,
		.point_seconds = 90,
	};
	static struct point pts[MAX_POINTS];
	struct trace t;
	struct run_info ri = { 0 };
	struct bench_out out = { 0 };
	struct bench_cpu cpu0;
	struct sigaction sa;
	kvt_key salt;
	kvt_salt_params sp = {
		.model_id = "kvtier-bench/replay", .kv_dtype = "bf16", .layout = "bench-replay",
		.block_tokens = BLOCK_TOKENS,
	};
	unsigned npts = 0;
	size_t nreq;
	uint64_t inf_host = 0, inf_nvme = 0, total_blocks = 0;
	bool nvme_ok = false, failed = false;
	uint64_t segment;
	char nvme_config[1024] = "", fs_desc[128] = "?";
	int opt, rc, ret = 1;
	char probe_kv[64];
	char bstr[32], bigstr[32], pace[96];

	parse_fracs(&o, "1/16,1/8,1/4,1/2");
	while ((opt = getopt(argc, argv, "t:d:b:c:N:T:S:n:H:O:o:p:g:G:h")) != -1) {
		char *end;

		switch (opt) {
		case 't': o.trace = optarg; break;
		case 'd': o.daemon = optarg; break;
		case 'o': o.out = optarg; break;
		case 'p': o.plot = optarg; break;
		case 'g': o.png = optarg; break;
		case 'G': o.gnuplot_script = optarg; break;
		case 'b':
			if (parse_size(optarg, &o.block) != 0 || o.block < 4 * KIB ||
			    o.block > 64 * MIB || (o.block & (o.block - 1)) != 0)
				goto bad_arg;
			break;
		case 'c':
			if (parse_fracs(&o, optarg) != 0)
				goto bad_arg;
			break;
		case 'N':
			o.nvme_factor = strtod(optarg, &end);
			if (*end || !(o.nvme_factor >= 0 && o.nvme_factor <= 1000))
				goto bad_arg;
			break;
		case 'T':
			o.point_seconds = strtod(optarg, &end);
			if (*end || !(o.point_seconds > 0))
				goto bad_arg;
			break;
		case 'S':
			o.speed = strtod(optarg, &end);
			if (*end || !(o.speed >= 0))
				goto bad_arg;
			break;
		case 'n':
			o.max_requests = strtoull(optarg, &end, 10);
			if (*end || o.max_requests == 0)
				goto bad_arg;
			break;
		case 'H':
			o.hint_seconds = strtod(optarg, &end);
			if (*end || !(o.hint_seconds > 0))
				goto bad_arg;
			break;
		case 'O':
			if (o.nextra == MAX_EXTRA || !strchr(optarg, '='))
				goto bad_arg;
			o.extra[o.nextra++] = optarg;
			break;
		case 'h':
			usage(stdout);
			return 0;
		default:
			goto bad_arg;
		}
	}
	if (optind != argc || (o.png && !o.plot))
		goto bad_arg;
	if (access(o.daemon, X_OK) != 0) {
		fprintf(stderr, "bench_replay: %s: %s (build it with make, or give -d)\n", o.daemon,
			strerror(errno));
		return 1;
	}

	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = on_signal;
	sigemptyset(&sa.sa_mask);
	sigaction(SIGINT, &sa, NULL);
	sigaction(SIGTERM, &sa, NULL);
	signal(SIGPIPE, SIG_IGN);

	if (base_init(o.block / 8) != 0) {
		fprintf(stderr, "bench_replay: out of memory\n");
		return 1;
	}
	rc = kvt_key_salt(&sp, &salt);
	if (rc) {
		fprintf(stderr, "bench_replay: kvt_key_salt: %s\n", kvt_strerror(rc));
		return 1;
	}
	fprintf(stderr, "bench_replay: reading %s...\n", o.trace);
	if (trace_load("bench_replay", o.trace, &t) != 0)
		return 1;
	if (trace_index(&t, &salt) != 0) {
		fprintf(stderr, "bench_replay: out of memory indexing the trace\n");
		trace_free(&t);
		return 1;
	}
	nreq = o.max_requests && o.max_requests < t.nreq ? o.max_requests : t.nreq;
	if (o.hint_seconds > 0) {
		uint8_t *h = hints_from_trace(&t, nreq, o.hint_seconds);
		if (!h) {
			fprintf(stderr, "bench_replay: out of memory for the hints\n");
			trace_free(&t);
			return 1;
		}
		g_hints = h;
	}
	for (size_t r = 0; r < nreq; r++)
		total_blocks += t.req[r].n;
	/* The most any cache could hit: every block but its first appearance. */
	if (lru_run(&t, nreq, t.nunique, 0, &inf_host, &inf_nvme) != 0)
		goto out_trace;

	/* A daemon that knows the NVMe tier turns it on by default: ask every point
	 * for exactly the tiers it measures. */
	snprintf(probe_kv, sizeof(probe_kv), "nvme_capacity=1GiB");
	nvme_ok = daemon_probe(o.daemon, probe_kv) == 0;
	/* Segments of 64 MiB (the daemon's smallest), and at least 4 blocks each. */
	segment = 64 * MIB;
	while (segment < 4 * o.block)
		segment *= 2;

	for (int with = 0; with < 2; with++) {
		if (with && !(o.nvme_factor > 0))
			break;
		for (unsigned i = 0; i < o.nfracs; i++) {
			struct point *p = &pts[npts++];
			double hb = o.frac[i] * (double)t.nunique + 0.5;

			snprintf(p->label, sizeof(p->label), "%s", o.frac_label[i]);
			p->frac = o.frac[i];
			p->host_blocks = hb < 1 ? 1 : (uint64_t)hb;
			p->nvme = with == 1;
			p->tc.host_bytes = p->host_blocks * o.block;
			p->tc.nvme_keys = nvme_ok;
			if (p->nvme) {
				/* The daemon's NVMe tier is whole segments: round to the nearest
				 * whole number of them, and give the LRU the same block count. */
				uint64_t per_seg = segment / o.block;
				double want = o.nvme_factor * (double)p->host_blocks;
				uint64_t segs = (uint64_t)(want / (double)per_seg + 0.5);

				p->nvme_blocks = (segs ? segs : 1) * per_seg;
				p->tc.nvme_bytes = p->nvme_blocks * o.block;
				p->tc.segment_bytes = segment;
			}
			if (p->host_blocks * o.block < MIB) {
				fprintf(stderr, "bench_replay: host tier of %llu blocks of %llu bytes "
					"is under the daemon's 1 MiB minimum; use a larger -b\n",
					(unsigned long long)p->host_blocks,
					(unsigned long long)o.block);
				goto out_trace;
			}
		}
	}

	rc = bench_out_open(&out, o.out);
	if (rc) {
		fprintf(stderr, "bench_replay: cannot write %s: %s\n", o.out, strerror(-rc));
		goto out_trace;
	}

	for (unsigned i = 0; i < npts; i++)
		if (pts[i].nvme && nvme_ok) {
			daemon_effective_config(&o, &pts[i].tc, "nvme_,host_chunk,host_policy", nvme_config,
						sizeof(nvme_config));
			break;
		}

	describe_fs("/var/tmp", fs_desc, sizeof(fs_desc));
	bench_cpu_snapshot(&cpu0);
	for (unsigned i = 0; i < npts; i++) {
		struct point *p = &pts[i];
		uint64_t lh = 0, ln = 0;

		if (p->nvme && !nvme_ok) {
			p->skipped = true;
			fprintf(stderr, "bench_replay: point %u/%u: host %s + NVMe %.3gx: NVMe tier not "
				"available in this daemon build; LRU only\n", i + 1, npts, p->label,
				o.nvme_factor);
		} else {
			fprintf(stderr, "bench_replay: point %u/%u: host %s (%llu blocks)%s...\n", i + 1,
				npts, p->label, (unsigned long long)p->host_blocks,
				p->nvme ? " + NVMe" : "");
			rc = run_point(&o, &t, nreq, p, &ri);
			if (rc) {
				fprintf(stderr, "bench_replay: point %s%s failed: %s\n", p->label,
					p->nvme ? " + NVMe" : "", err_text(rc));
				failed = true;
				if (stop_requested)
					goto out_file;
			}
		}
		/* The baseline replays exactly the requests kvtier got (all, unless the time
		 * limit cut the point short). */
		p->lru_requests = p->ran ? p->requests : nreq;
		p->lru_blocks = 0;
		for (size_t r = 0; r < p->lru_requests; r++)
			p->lru_blocks += t.req[r].n;
		if (lru_run(&t, p->lru_requests, p->host_blocks, p->nvme ? p->nvme_blocks : 0, &lh,
			    &ln) != 0)
			goto out_file;
		p->lru_host = lh;
		p->lru_nvme = ln;
		if (p->nvme && lru_run_inclusive(&t, p->lru_requests, p->host_blocks,
						 p->nvme_blocks, &lh, &ln) != 0)
			goto out_file;
		p->lru_inc_host = p->nvme ? lh : 0;
		p->lru_inc_nvme = p->nvme ? ln : 0;
	}

	if (o.speed > 0)
		snprintf(pace, sizeof(pace), "at the trace's arrival times sped up %.3gx (-S)",
			 o.speed);
	else
		snprintf(pace, sizeof(pace), "as fast as the daemon answers (arrival times not "
			 "kept: -S 0)");
	fmt_block(bstr, sizeof(bstr), o.block);
	fmt_block(bigstr, sizeof(bigstr), LLAMA3_8B_BLOCK);
	bench_print_machine(&out, "bench_replay: Mooncake trace replayed through kvtierd, beside "
			    "plain LRU of the same capacities");
	if (ri.have)
		bench_printf(&out, "daemon:  %s, %s, a fresh one per point (socket and data_dir in "
			     "/var/tmp), %llu copy workers, host tier hugepages %s, mlocked %llu\n",
			     ri.server, o.daemon, (unsigned long long)ri.workers, ri.hugepages,
			     (unsigned long long)ri.mlocked);
	else
		bench_printf(&out, "daemon:  %s (no point ran)\n", o.daemon);
	if (!nvme_ok)
		bench_printf(&out, "         NVMe tier not available in this daemon build ('kvtierd "
			     "-o nvme_capacity=1GiB --print-config' refused the key)%s\n",
			     o.nvme_factor > 0 ? ": NVMe points are LRU only" : "");
	else if (!(o.nvme_factor > 0))
		bench_printf(&out, "         NVMe tier: not measured (-N 0); host-only points run "
			     "with nvme_capacity=0\n");
	else
		bench_printf(&out, "         NVMe tier: segment files in data_dir (/var/tmp, %s); "
			     "host-only points run with nvme_capacity=0. NVMe points, as the\n"
			     "         daemon resolved them: %s\n", fs_desc,
			     nvme_config[0] ? nvme_config : "(--print-config failed)");
	{
		uint64_t *in = malloc(nreq * sizeof(*in));
		double span = nreq ? (t.req[nreq - 1].ts_ms - t.req[0].ts_ms) / 1000.0 : 0;

		if (in) {
			for (size_t r = 0; r < nreq; r++)
				in[r] = t.req[r].in_len;
			qsort(in, nreq, sizeof(*in), bench_cmp_u64);
		}
		bench_printf(&out, "trace:   %s: %zu of %zu requests, %.0f s of trace time, input "
			     "tokens p50/p90/max %llu/%llu/%llu\n", o.trace, nreq, t.nreq, span,
			     in ? (unsigned long long)bench_quantile(in, nreq, 0.5) : 0ull,
			     in ? (unsigned long long)bench_quantile(in, nreq, 0.9) : 0ull,
			     in ? (unsigned long long)in[nreq - 1] : 0ull);
		free(in);
	}
	bench_printf(&out, "         %llu blocks asked (512-token blocks), %zu unique blocks by "
		     "chain key (%zu unique hash ids in the whole trace); len(hash_ids) != "
		     "ceil(input_length/512) in %zu requests\n",
		     (unsigned long long)total_blocks, t.nunique, t.nunique_hash, t.len_mismatch);
	bench_printf(&out, "         infinite capacity would hit %.3f of the blocks asked (every "
		     "block but its first appearance)\n", ratio(inf_host, total_blocks));
	bench_printf(&out, "params:  each 512-token block is a %s block (-b); a real "
		     "Llama-3-8B block (bf16, 128 KiB/token) is %s, %llux more.\n"
		     "         Host-tier hit ratios do not depend on the block size; the byte "
		     "counts scale with it. host_chunk = block size.\n", bstr, bigstr,
		     (unsigned long long)(LLAMA3_8B_BLOCK / o.block));
	bench_printf(&out, "         host tier = fraction x unique blocks (below); NVMe points: "
		     "NVMe tier = %.3gx the host tier, rounded to whole segments.\n",
		     o.nvme_factor);
	if (nvme_ok && o.nvme_factor > 0) {
		bench_printf(&out, "         NVMe space is reclaimed a segment at a time: segments "
			     "of %llu MiB hold %llu blocks here (a Llama-3-8B deployment with "
			     "1 GiB segments: 16);\n         segments per NVMe point:",
			     (unsigned long long)(segment / MIB),
			     (unsigned long long)(segment / o.block));
		for (unsigned i = 0; i < npts; i++)
			if (pts[i].nvme)
				bench_printf(&out, " %s: %llu", pts[i].label,
					     (unsigned long long)(pts[i].tc.nvme_bytes / segment));
		bench_printf(&out, ". Few segments cost NVMe hits (a larger -b gives more).\n");
	}
	bench_printf(&out, "         key of block i = kvt_key_chain(salt, key of block i-1, "
		     "{hash_ids[i]}): a block is identified by its whole prefix.\n"
		     "         Requests in trace order, one connection, %s; decode output "
		     "not stored.\n"
		     "         Per request: LOOKUP the chain; GET the hit prefix (8 words of each "
		     "block poisoned before and checked after against its hash id);\n"
		     "         PUT the rest with parent keys. Hit = block in the leading run "
		     "LOOKUP found, per the tier LOOKUP named.\n"
		     "         Each point stops after %.0f s (-T).\n", pace, o.point_seconds);
	if (g_hints)
		bench_printf(&out, "hints:   -H %.0f: after each request, one HINT for its blocks: RETAIN "
			     "if the trace's next request of the same session (same first block)\n"
			     "         comes within %.0f s of trace time, RELEASE if none comes, "
			     "nothing otherwise. The hints come from the trace's future: they stand\n"
			     "         in for an engine or agent framework that knows a session will be "
			     "back (a tool call in flight) or is over. Retains last %u s of wall time\n"
			     "         (the session's next hint replaces them); host_retain_share as "
			     "the daemon's default unless -O sets it.\n",
			     o.hint_seconds, o.hint_seconds, HINT_RETAIN_MS / 1000);
	bench_printf(&out, "baseline: plain LRU over the same block ids, simulated here: host "
		     "LRU of H blocks; with NVMe a second LRU of N blocks,\n"
		     "         'exclusive': host evictions go to the NVMe MRU end, an NVMe hit "
		     "moves the block back to host, NVMe evictions are dropped (holds H+N "
		     "distinct blocks);\n"
		     "         'inclusive': the NVMe LRU sees every block written and every access "
		     "(write-through), so it holds what the host holds (= one LRU of max(H,N)).\n"
		     "         kvtier's NVMe tier is write-back with an admission rule: a demoted "
		     "block may stay in host too, so it lies between the two.\n"
		     "         Blocks of a request are touched head first (tail most recent); "
		     "prefix hit = leading blocks present in either tier.\n\n");

	bench_printf(&out, "## prefix hit ratio (hit blocks / blocks asked)\n");
	print_hit_table(&out, pts, npts);
	if (g_hints) {
		bench_printf(&out, "\n## hints (keys sent in HINT requests; the daemon's "
			     "t1.retain_capped, t1.retain_evicted, t1.retain_expired)\n");
		bench_printf(&out, "%-5s %6s %10s %10s %10s %10s\n", "host", "nvme", "hinted",
			     "capped", "evicted", "expired");
		for (unsigned i = 0; i < npts; i++)
			if (pts[i].ran)
				bench_printf(&out, "%-5s %6llu %10llu %10llu %10llu %10llu\n",
					     pts[i].label, (unsigned long long)pts[i].nvme_blocks,
					     (unsigned long long)pts[i].hinted,
					     (unsigned long long)pts[i].t1_retain_capped,
					     (unsigned long long)pts[i].t1_retain_evicted,
					     (unsigned long long)pts[i].t1_retain_expired);
	}
	bench_printf(&out, "\n## traffic and the daemon's counters (GET/PUT = bytes this bench "
		     "moved; t1.out/t1.in, t1.evict = the daemon's STATS; ENOSPC/EBUSY = PUT "
		     "items refused so;\n##   p50/p99 = time per request: LOOKUP + GET + PUT)\n");
	print_traffic_table(&out, pts, npts, o.block);
	for (unsigned i = 0; i < npts; i++) {
		const struct point *p = &pts[i];

		if (!p->ran)
			continue;
		if (p->have_stats && p->t1_capacity != p->host_blocks * o.block)
			bench_printf(&out, "note: point %s%s: daemon reports t1.capacity_bytes %llu, "
				     "asked for %llu\n", p->label, p->nvme ? " + NVMe" : "",
				     (unsigned long long)p->t1_capacity,
				     (unsigned long long)(p->host_blocks * o.block));
		if (!p->nvme && p->hit_nvme)
			bench_printf(&out, "note: point %s: the daemon served %llu hits from an NVMe "
				     "tier though this point asked for none\n", p->label,
				     (unsigned long long)p->hit_nvme);
		if (p->get_lost || p->hit_other)
			bench_printf(&out, "note: point %s%s: blocks LOOKUP found but gone at GET: "
				     "%llu; hits in a tier other than host/NVMe: %llu\n", p->label,
				     p->nvme ? " + NVMe" : "",
				     (unsigned long long)p->get_lost,
				     (unsigned long long)p->hit_other);
	}
	print_t2_table(&out, pts, npts);
	bench_print_cpu_use(&out, &cpu0);
	if (failed)
		bench_printf(&out, "SOME POINTS FAILED (see stderr)\n");

	if (o.plot) {
		rc = write_plot_data(o.plot, pts, npts, ratio(inf_host, total_blocks));
		if (rc) {
			fprintf(stderr, "bench_replay: writing %s: %s\n", o.plot, strerror(-rc));
			failed = true;
		} else if (o.png) {
			rc = draw_plot(&o);
			if (rc < 0)
				fprintf(stderr, "bench_replay: gnuplot not installed: no %s\n", o.png);
			else if (rc > 0) {
				fprintf(stderr, "bench_replay: gnuplot failed: no %s\n", o.png);
				failed = true;
			} else {
				fprintf(stderr, "bench_replay: wrote %s\n", o.png);
			}
		}
	}
	ret = failed ? 1 : 0;

out_file:
	if (bench_out_close(&out) != 0 && ret == 0) {
		fprintf(stderr, "bench_replay: writing %s failed\n", o.out);
		ret = 1;
	}
out_trace:
	free((void *)g_hints);
	trace_free(&t);
	free(base_words);
	return ret;

bad_arg:
	usage(stderr);
	return 2;
}
