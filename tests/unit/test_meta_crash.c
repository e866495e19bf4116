/*
 * test_meta_crash.c - kill -9 at a random moment. A child process opens the metadata
 * store and issues a deterministic stream of writes (record puts and deletes, context
 * saves and deletes, up to 16 in flight) and reports each acknowledged one on a
 * pipe; the parent SIGKILLs it at a random point (sometimes while it is still
 * opening the store), reopens the store and checks:
 *   - every row decodes and is byte-identical to one the child wrote (nothing
 *     half-written, nothing invented);
 *   - the whole store equals the result of some prefix of the stream that includes
 *     every acknowledged write (so every acknowledged write is there, and writes
 *     commit atomically and in order);
 *   - lists enumerate exactly those rows, and the per-tenant counts rebuilt at open
 *     match them.
 * The store carries over from one kill to the next, so recovery from a recovered
 * store is tested too.
 *
 * KVT_META_KILL_LOOPS sets the number of kills (default 24); for thousands, raise the
 * case time limit too: KVT_META_KILL_LOOPS=3000 KVT_TEST_TIMEOUT=7200.
 * KVT_META_KILL_SEED replays a run (the seed is logged).
 */
#include <errno.h>
#include <ftw.h>
#include <poll.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "meta.h"
#include "test.h"

#define TENANTS 2
#define NSS 3
#define KEYS 40
#define CTXS 10
#define NREC (TENANTS * NSS * KEYS)
#define NCTX (TENANTS * CTXS)
#define INFLIGHT 16
#define DIM 8
#define NONE UINT64_MAX

static const char *const ns_names[NSS] = { "a", "b/x", "b/y" };

static uint64_t mix(uint64_t x)
{
	x += 0x9e3779b97f4a7c15ull;
	x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
	x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
	return x ^ (x >> 31);
}

/* ---- the write stream: op number s of run `run`, the same in both processes ------- */

enum kind { REC_PUT, REC_DEL, CTX_PUT, CTX_DEL };

struct op {
	enum kind kind;
	uint32_t tenant;
	unsigned ns, key, ctx; /* indexes */
	uint64_t id;           /* run << 32 | s: names what a put wrote */
};

static struct op op_at(uint64_t run, uint32_t s)
{
	uint64_t r = mix(run * 0x100000001b3ull ^ s);
	struct op o;
	unsigned p = (unsigned)(r % 100);

	o.kind = p < 60 ? REC_PUT : p < 72 ? REC_DEL : p < 92 ? CTX_PUT : CTX_DEL;
	o.tenant = 1 + (uint32_t)((r >> 8) % TENANTS);
	o.ns = (unsigned)((r >> 16) % NSS);
	o.key = (unsigned)((r >> 24) % KEYS);
	o.ctx = (unsigned)((r >> 40) % CTXS);
	o.id = run << 32 | s;
	return o;
}

static unsigned rec_slot(uint32_t tenant, unsigned ns, unsigned key)
{
	return ((tenant - 1) * NSS + ns) * KEYS + key;
}

static unsigned ctx_slot(uint32_t tenant, unsigned ctx)
{
	return (tenant - 1) * CTXS + ctx;
}

/* What a put with this id wrote. */
struct rec_content {
	uint8_t value[1500];
	uint32_t value_len;
	char meta[32];
	float emb[DIM];
	bool has_emb;
};

static void rec_content(uint64_t id, unsigned ns, struct rec_content *c)
{
	uint64_t r = mix(id ^ 0xabcdef);

	c->value_len = (uint32_t)(r % sizeof(c->value));
	for (uint32_t i = 0; i < c->value_len; i++)
		c->value[i] = (uint8_t)(mix(r + i) >> 7);
	snprintf(c->meta, sizeof(c->meta), "%llu", (unsigned long long)id);
	c->has_emb = ns != 2;
	for (int i = 0; i < DIM; i++)
		c->emb[i] = (float)((int)(mix(r ^ (uint64_t)(i + 1)) % 2001) - 1000) / 100.0f;
}

struct ctx_content {
	kvt_key keys[40];
	uint32_t nkeys;
	uint32_t tokens[40 * 16];
	uint32_t ntokens;
	char meta[32];
	kvt_key salt;
};

static void ctx_content(uint64_t id, struct ctx_content *c)
{
	uint64_t r = mix(id ^ 0x5a5a5a);

	c->nkeys = 1 + (uint32_t)(r % 40);
	for (uint32_t i = 0; i < c->nkeys; i++)
		for (int j = 0; j < 16; j++)
			c->keys[i].b[j] = (uint8_t)(mix(r + i * 16 + (uint64_t)j) >> 9);
	c->ntokens = (r >> 20) & 1 ? c->nkeys * 16 : 0;
	for (uint32_t i = 0; i < c->ntokens; i++)
		c->tokens[i] = (uint32_t)mix(r ^ (i + 7));
	snprintf(c->meta, sizeof(c->meta), "%llu", (unsigned long long)id);
	for (int j = 0; j < 16; j++)
		c->salt.b[j] = (uint8_t)(id >> (j % 8 * 8));
}

static void fill_ctx(struct meta_ctx *m, const struct ctx_content *c, uint32_t tenant,
		     unsigned ctx, uint64_t id)
{
	memset(m, 0, sizeof(*m));
	m->tenant = tenant;
	m->name_len = (uint16_t)snprintf(m->name, sizeof(m->name), "ctx-%u", ctx);
	m->salt = c->salt;
	m->keys = (kvt_key *)c->keys;
	m->nkeys = c->nkeys;
	m->tokens = c->ntokens ? (uint32_t *)c->tokens : NULL;
	m->ntokens = c->ntokens;
	m->token_count = c->nkeys * 16;
	m->metadata = (uint8_t *)c->meta;
	m->metadata_len = (uint32_t)strlen(c->meta);
	m->bytes = (uint64_t)c->nkeys << 12;
	m->created_ms = 1600000000000ull + (id & 0xffffff);
}

/* ---- the child ------------------------------------------------------------------------ */

#define MSG_OPEN 'O'
#define MSG_ISSUED 'I'
#define MSG_ACKED 'A'
#define MSG_FAILED 'F'

static int report_fd = -1;
static unsigned child_inflight;

static void report(char type, uint64_t v)
{
	uint8_t b[9];

	b[0] = (uint8_t)type;
	memcpy(b + 1, &v, 8);
	/* Nine bytes to a pipe: atomic, so a kill never leaves half a message. */
	while (write(report_fd, b, sizeof(b)) < 0 && errno == EINTR)
		;
}

static void acked(void *arg, int status)
{
	child_inflight--;
	report(status == 0 || status == -ENOENT ? MSG_ACKED : MSG_FAILED, (uint64_t)(uintptr_t)arg);
}

static void ctx_acked(void *arg, int status, struct meta_ctx *c)
{
	meta_ctx_free(c);
	acked(arg, status);
}

static void issue(struct meta *m, uint64_t run, uint32_t s)
{
	struct op o = op_at(run, s);
	void *tag = (void *)(uintptr_t)s;
	int rc = 0;

	report(MSG_ISSUED, s);
	child_inflight++;
	if (o.kind == REC_PUT) {
		struct rec_content c;
		struct meta_rec r;

		rec_content(o.id, o.ns, &c);
		memset(&r, 0, sizeof(r));
		r.tenant = o.tenant;
		r.ns_len = (uint16_t)snprintf(r.ns, sizeof(r.ns), "%s", ns_names[o.ns]);
		r.key_len = (uint16_t)snprintf(r.key, sizeof(r.key), "k%02u", o.key);
		r.value = c.value;
		r.value_len = c.value_len;
		r.metadata = c.meta;
		r.metadata_len = (uint32_t)strlen(c.meta);
		r.embedding = c.has_emb ? c.emb : NULL;
		r.dim = c.has_emb ? DIM : 0;
		rc = meta_rec_put(m, &r, acked, tag);
	} else if (o.kind == REC_DEL) {
		char key[8];
		int kl = snprintf(key, sizeof(key), "k%02u", o.key);

		rc = meta_rec_delete(m, o.tenant, ns_names[o.ns], strlen(ns_names[o.ns]), key,
				     (size_t)kl, acked, tag);
	} else if (o.kind == CTX_PUT) {
		struct ctx_content c;
		struct meta_ctx mc;

		ctx_content(o.id, &c);
		fill_ctx(&mc, &c, o.tenant, o.ctx, o.id);
		meta_ctx_put(m, &mc, ctx_acked, tag);
	} else {
		char name[16];
		int nl = snprintf(name, sizeof(name), "ctx-%u", o.ctx);

		meta_ctx_delete(m, o.tenant, name, (size_t)nl, ctx_acked, tag);
	}
	if (rc == -ENOENT) {
		child_inflight--; /* a delete of something absent: no effect */
	} else if (rc) {
		report(MSG_FAILED, s);
		_exit(1);
	}
}

static void writer(const char *dir, uint64_t run, int fd)
{
	struct meta_config cfg = { dir, 0, 4096, (unsigned)(run % 3) };
	struct meta *m = NULL;
	char err[256];
	uint32_t s = 0;

	report_fd = fd;
	if (meta_open(&cfg, &m, err, sizeof(err)) != 0) {
		report(MSG_FAILED, UINT32_MAX);
		_exit(1);
	}
	report(MSG_OPEN, 0);
	for (;;) {
		struct pollfd p = { meta_eventfd(m), POLLIN, 0 };

		while (child_inflight < INFLIGHT && s < 1000000)
			issue(m, run, s++);
		poll(&p, 1, 100);
		meta_reap(m);
	}
}

/* ---- the parent's model and checks ------------------------------------------------------ */

struct state {
	uint64_t rec[NREC]; /* the id of the put that wrote it, or NONE */
	uint64_t ctx[NCTX];
};

static void apply(struct state *st, uint64_t run, uint32_t s)
{
	struct op o = op_at(run, s);

	switch (o.kind) {
	case REC_PUT:
		st->rec[rec_slot(o.tenant, o.ns, o.key)] = o.id;
		break;
	case REC_DEL:
		st->rec[rec_slot(o.tenant, o.ns, o.key)] = NONE;
		break;
	case CTX_PUT:
		st->ctx[ctx_slot(o.tenant, o.ctx)] = o.id;
		break;
	case CTX_DEL:
		st->ctx[ctx_slot(o.tenant, o.ctx)] = NONE;
		break;
	}
}

static uint64_t parse_id(const void *p, size_t len)
{
	char buf[32];

	CHECK(len > 0 && len < sizeof(buf));
	memcpy(buf, p, len);
	buf[len] = 0;
	return strtoull(buf, NULL, 10);
}

struct totals {
	uint64_t records[TENANTS + 1], record_bytes[TENANTS + 1];
	uint64_t contexts[TENANTS + 1], context_bytes[TENANTS + 1];
};

/* Read the whole store into st, checking every row against what its id wrote. */
static void read_store(struct meta *m, struct state *st, struct totals *tot)
{
	memset(tot, 0, sizeof(*tot));
	for (uint32_t t = 1; t <= TENANTS; t++) {
		for (unsigned ns = 0; ns < NSS; ns++) {
			for (unsigned k = 0; k < KEYS; k++) {
				unsigned slot = rec_slot(t, ns, k);
				struct rec_content c;
				struct meta_rec *r = NULL;
				char key[8];
				int kl = snprintf(key, sizeof(key), "k%02u", k);
				int rc = meta_rec_get(m, t, ns_names[ns], strlen(ns_names[ns]), key,
						      (size_t)kl, &r);

				if (rc == -ENOENT) {
					st->rec[slot] = NONE;
					continue;
				}
				CHECK_MSG(rc == 0, "get %u/%s/%s: %d", t, ns_names[ns], key, rc);
				st->rec[slot] = parse_id(r->metadata, r->metadata_len);
				rec_content(st->rec[slot], ns, &c);
				CHECK_MSG(r->value_len == c.value_len &&
						  memcmp(r->value, c.value, c.value_len) == 0,
					  "record %u/%s/%s: value differs from what put %llx wrote", t,
					  ns_names[ns], key, (unsigned long long)st->rec[slot]);
				CHECK(r->dim == (c.has_emb ? DIM : 0));
				CHECK(!c.has_emb || memcmp(r->embedding, c.emb, sizeof(c.emb)) == 0);
				CHECK(r->expires_ms == 0 && r->updated_ms >= r->created_ms);
				tot->records[t]++;
				tot->record_bytes[t] += r->value_len + r->metadata_len + r->dim * 4u;
				meta_rec_free(r);
			}
		}
		for (unsigned i = 0; i < CTXS; i++) {
			unsigned slot = ctx_slot(t, i);
			struct ctx_content c;
			struct meta_ctx want, *got = NULL;
			char name[16];
			int nl = snprintf(name, sizeof(name), "ctx-%u", i);
			int rc = meta_ctx_get(m, t, name, (size_t)nl, &got);

			if (rc == -ENOENT) {
				st->ctx[slot] = NONE;
				continue;
			}
			CHECK_MSG(rc == 0, "get context %u/%s: %d", t, name, rc);
			st->ctx[slot] = parse_id(got->metadata, got->metadata_len);
			ctx_content(st->ctx[slot], &c);
			fill_ctx(&want, &c, t, i, st->ctx[slot]);
			CHECK_MSG(got->nkeys == want.nkeys &&
					  memcmp(got->keys, want.keys, want.nkeys * 16) == 0 &&
					  got->ntokens == want.ntokens &&
					  (!want.ntokens ||
					   memcmp(got->tokens, want.tokens, want.ntokens * 4) == 0) &&
					  got->token_count == want.token_count &&
					  got->bytes == want.bytes && got->created_ms == want.created_ms &&
					  memcmp(got->salt.b, want.salt.b, 16) == 0,
				  "context %u/%s differs from what save %llx wrote", t, name,
				  (unsigned long long)st->ctx[slot]);
			tot->contexts[t]++;
			tot->context_bytes[t] += got->bytes;
			meta_ctx_free(got);
		}
	}
}

/* Lists see exactly the rows gets see; the counts rebuilt at open agree. */
static void tenant_cb(const struct meta_tenant_stats *s, void *arg)
{
	struct totals *seen = arg;

	CHECK(s->tenant >= 1 && s->tenant <= TENANTS);
	seen->records[s->tenant] = s->records;
	seen->record_bytes[s->tenant] = s->record_bytes;
	seen->contexts[s->tenant] = s->contexts;
	seen->context_bytes[s->tenant] = s->context_bytes;
}

static void check_lists(struct meta *m, const struct totals *tot)
{
	struct totals seen;

	memset(&seen, 0, sizeof(seen));
	meta_foreach_tenant(m, tenant_cb, &seen);
	CHECK_MSG(memcmp(&seen, tot, sizeof(seen)) == 0,
		  "per-tenant counts (t1: %llu rec %llu B, %llu ctx) differ from the rows "
		  "(t1: %llu rec %llu B, %llu ctx)",
		  (unsigned long long)seen.records[1], (unsigned long long)seen.record_bytes[1],
		  (unsigned long long)seen.contexts[1], (unsigned long long)tot->records[1],
		  (unsigned long long)tot->record_bytes[1], (unsigned long long)tot->contexts[1]);
	for (uint32_t t = 1; t <= TENANTS; t++) {
		struct meta_rec **rl;
		struct meta_ctx **cl;
		size_t n;
		bool more;

		CHECK_RC(meta_rec_list(m, t, "", 0, "", 0, "", 0, 1000, &rl, &n, &more), 0);
		CHECK(!more);
		CHECK_EQ(n, tot->records[t]);
		for (size_t i = 0; i < n; i++)
			meta_rec_free(rl[i]);
		free(rl);
		CHECK_RC(meta_ctx_list(m, t, "", 0, "", 0, 1000, &cl, &n, &more), 0);
		CHECK_EQ(n, tot->contexts[t]);
		for (size_t i = 0; i < n; i++)
			meta_ctx_free(cl[i]);
		free(cl);
	}
}

static unsigned differing(const struct state *a, const struct state *b)
{
	unsigned d = 0;

	for (unsigned i = 0; i < NREC; i++)
		d += a->rec[i] != b->rec[i];
	for (unsigned i = 0; i < NCTX; i++)
		d += a->ctx[i] != b->ctx[i];
	return d;
}

static uint64_t now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

struct heard {
	bool opened, failed;
	int64_t acked, issued; /* highest, or -1 */
	size_t acks;
};

static void hear(int fd, struct heard *h, int timeout_ms)
{
	static uint8_t buf[9 * 1024];
	static size_t have;
	struct pollfd p = { fd, POLLIN, 0 };

	if (poll(&p, 1, timeout_ms) <= 0)
		return;
	for (;;) {
		ssize_t r = read(fd, buf + have, sizeof(buf) - have);
		size_t i;

		if (r <= 0)
			return;
		have += (size_t)r;
		for (i = 0; i + 9 <= have; i += 9) {
			uint64_t v;

			memcpy(&v, buf + i + 1, 8);
			switch (buf[i]) {
			case MSG_OPEN:
				h->opened = true;
				break;
			case MSG_ISSUED:
				h->issued = (int64_t)v > h->issued ? (int64_t)v : h->issued;
				break;
			case MSG_ACKED:
				/* Callbacks run in commit order: acknowledgements only grow. */
				CHECK_MSG((int64_t)v > h->acked, "ack %llu after %lld",
					  (unsigned long long)v, (long long)h->acked);
				h->acked = (int64_t)v;
				h->acks++;
				break;
			default:
				h->failed = true;
			}
		}
		memmove(buf, buf + i, have - i);
		have -= i;
		if ((size_t)r < sizeof(buf) / 2)
			return;
	}
}

static int rm_one(const char *path, const struct stat *sb, int flag, struct FTW *ftw)
{
	(void)sb;
	(void)flag;
	(void)ftw;
	remove(path);
	return 0;
}

static void crash_loop(const char *dir)
{
	const char *e = getenv("KVT_META_KILL_LOOPS");
	const char *se = getenv("KVT_META_KILL_SEED");
	unsigned loops = e && atoi(e) > 0 ? (unsigned)atoi(e) : 24;
	uint64_t seed = se && se[0] ? strtoull(se, NULL, 0) : now_ns();
	struct state st;
	size_t total_acks = 0;
	unsigned during_open = 0;

	test_log("seed %llu (KVT_META_KILL_SEED replays it), %u kills",
		 (unsigned long long)seed, loops);
	for (unsigned i = 0; i < NREC; i++)
		st.rec[i] = NONE;
	for (unsigned i = 0; i < NCTX; i++)
		st.ctx[i] = NONE;
	for (unsigned loop = 0; loop < loops; loop++) {
		uint64_t run = mix(seed + loop) & 0xffffffffu, deadline;
		struct heard h = { false, false, -1, -1, 0 };
		struct state model, found;
		struct totals tot;
		struct meta_config cfg = { dir, 0, 4096, 0 };
		struct meta *m = NULL;
		char err[256];
		int pfd[2], status, rc;
		pid_t pid;
		int64_t p;

		CHECK(pipe(pfd) == 0);
		pid = fork();
		CHECK(pid >= 0);
		if (pid == 0) {
			close(pfd[0]);
			writer(dir, run, pfd[1]);
			_exit(0);
		}
		close(pfd[1]);
		/* Kill between 0 and 120 ms after the fork; one in six within the first
		 * 3 ms, most of which land while the store is being opened. */
		deadline = mix(run ^ 77);
		deadline = now_ns() + (deadline % 6 ? (deadline >> 8) % 120000 : (deadline >> 8) % 3000) * 1000u;
		while (now_ns() < deadline)
			hear(pfd[0], &h, 1 + (int)((deadline - now_ns()) / 1000000u));
		kill(pid, SIGKILL);
		while (waitpid(pid, &status, 0) < 0 && errno == EINTR)
			;
		for (;;) {
			struct heard before = h;

			hear(pfd[0], &h, 0);
			if (memcmp(&before, &h, sizeof(h)) == 0)
				break;
		}
		close(pfd[0]);
		CHECK_MSG(!h.failed, "run %u: the writer saw a failure", loop);
		CHECK_MSG(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL,
			  "run %u: the writer exited by itself (status %#x)", loop, status);
		during_open += !h.opened;
		total_acks += h.acks;

		rc = meta_open(&cfg, &m, err, sizeof(err));
		CHECK_MSG(rc == 0, "run %u: reopen after kill: %d %s", loop, rc, err);
		read_store(m, &found, &tot);
		check_lists(m, &tot);
		meta_close(m);

		/* Some prefix [0, p] with p >= the last ack must explain the store. */
		model = st;
		for (p = 0; p <= h.acked; p++)
			apply(&model, run, (uint32_t)p);
		p = h.acked;
		while (differing(&model, &found) != 0 && p < h.issued) {
			p++;
			apply(&model, run, (uint32_t)p);
		}
		if (differing(&model, &found) != 0) {
			model = st;
			for (p = 0; p <= h.acked; p++)
				apply(&model, run, (uint32_t)p);
			for (unsigned i = 0; i < NREC; i++)
				if (model.rec[i] != found.rec[i])
					test_log("record slot %u: store %llx, after the last ack %llx",
						 i, (unsigned long long)found.rec[i],
						 (unsigned long long)model.rec[i]);
			for (unsigned i = 0; i < NCTX; i++)
				if (model.ctx[i] != found.ctx[i])
					test_log("context slot %u: store %llx, after the last ack %llx",
						 i, (unsigned long long)found.ctx[i],
						 (unsigned long long)model.ctx[i]);
			CHECK_MSG(false, "run %u (seed %llu): no prefix of the writes from %lld "
				  "(last ack) to %lld (last issued) gives the store found",
				  loop, (unsigned long long)seed, (long long)h.acked,
				  (long long)h.issued);
		}
		st = found;
	}
	test_log("%zu acknowledged writes checked over %u kills (%u during open)", total_acks,
		 loops, during_open);
	CHECK_MSG(total_acks > 0, "no write was ever acknowledged: the kills came too early");
}

extern int __lsan_do_recoverable_leak_check(void) __attribute__((weak));

TEST(kill9_keeps_every_acknowledged_write)
{
	const char *base = getenv("KVT_META_TEST_DIR");
	char dir[256];
	pid_t pid;
	int st = 0;

	snprintf(dir, sizeof(dir), "%s/kvt-metacrash-XXXXXX", base && base[0] ? base : "/var/tmp");
	CHECK_MSG(mkdtemp(dir) != NULL, "mkdtemp: %s", strerror(errno));
	pid = fork();
	CHECK(pid >= 0);
	if (pid == 0) {
		crash_loop(dir);
		if (__lsan_do_recoverable_leak_check && __lsan_do_recoverable_leak_check())
			test_fail(__FILE__, __LINE__, "memory leaked (report above)");
		_exit(0);
	}
	while (waitpid(pid, &st, 0) < 0 && errno == EINTR)
		;
	nftw(dir, rm_one, 16, FTW_DEPTH | FTW_PHYS);
	if (WIFEXITED(st))
		_exit(WEXITSTATUS(st));
	test_fail(__FILE__, __LINE__, "test body died: %s", strsignal(WTERMSIG(st)));
}

TEST_MAIN(kill9_keeps_every_acknowledged_write)
