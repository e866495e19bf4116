/*
 * test_meta.c - the metadata store (store/meta.h): contexts and memory records round
 * trips, listing and pagination, TTL expiry through meta_tick and the expire hook,
 * exact vector search against a brute-force reference, bad input, tenant isolation,
 * group commit, format checks, map growth, a failed environment, and the row
 * decoders. Each case runs on a fresh store under /var/tmp (or $KVT_META_TEST_DIR)
 * that is removed even when the case fails. Durability under kill -9 is in
 * test_meta_crash.c.
 */
#include <errno.h>
#include <ftw.h>
#include <lmdb.h>
#include <math.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "meta.h"
#include "meta_internal.h"
#include "test.h"

/* ---- harness ------------------------------------------------------------------------ */

static int rm_one(const char *path, const struct stat *sb, int flag, struct FTW *ftw)
{
	(void)sb;
	(void)flag;
	(void)ftw;
	remove(path);
	return 0;
}

extern int __lsan_do_recoverable_leak_check(void) __attribute__((weak));

/* Run body(dir) in a child with a fresh directory, removed afterwards whatever
 * happened; the case passes, fails or skips as the body did. */
static void in_dir(void (*body)(const char *dir))
{
	const char *base = getenv("KVT_META_TEST_DIR");
	char dir[256];
	pid_t pid;
	int st = 0;

	snprintf(dir, sizeof(dir), "%s/kvt-meta-XXXXXX", base && base[0] ? base : "/var/tmp");
	CHECK_MSG(mkdtemp(dir) != NULL, "mkdtemp %s: %s", dir, strerror(errno));
	pid = fork();
	CHECK(pid >= 0);
	if (pid == 0) {
		body(dir);
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

#define META_TEST(name)                                                                    \
	static void name##_body(const char *dir);                                          \
	TEST(name)                                                                         \
	{                                                                                  \
		in_dir(name##_body);                                                       \
	}                                                                                  \
	static void name##_body(const char *dir)

static struct meta *open_cfg(const struct meta_config *c)
{
	struct meta *m = NULL;
	char err[512] = "";
	int rc = meta_open(c, &m, err, sizeof(err));

	CHECK_MSG(rc == 0, "meta_open(%s): %d (%s) %s", c->dir, rc, test_errname(rc), err);
	CHECK_MSG(err[0] == 0, "meta_open left a message on success: %s", err);
	return m;
}

static struct meta *open_dir(const char *dir)
{
	struct meta_config c = { dir, 0, 4096, 1 };

	return open_cfg(&c);
}

/* The owner loop: wait for the eventfd and reap until nothing is in flight. */
static void drain(struct meta *m)
{
	for (int i = 0; meta_inflight(m) > 0; i++) {
		struct pollfd p = { meta_eventfd(m), POLLIN, 0 };

		CHECK_MSG(i < 3000, "writes still in flight after 30 s: %zu", meta_inflight(m));
		poll(&p, 1, 10);
		meta_reap(m);
	}
}

static uint64_t rng(uint64_t *s)
{
	uint64_t z = (*s += 0x9e3779b97f4a7c15ull);

	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
	return z ^ (z >> 31);
}

static float frand(uint64_t *s)
{
	return (float)((double)(rng(s) >> 11) / (double)(1ull << 53) * 2.0 - 1.0);
}

/* ---- callbacks ------------------------------------------------------------------------ */

struct done {
	int calls;
	int status;
	struct meta_ctx *ctx;
};

static void rec_done(void *arg, int status)
{
	struct done *d = arg;

	d->calls++;
	d->status = status;
}

static void ctx_done(void *arg, int status, struct meta_ctx *c)
{
	struct done *d = arg;

	d->calls++;
	d->status = status;
	meta_ctx_free(d->ctx);
	d->ctx = c;
}

/* ---- records helpers --------------------------------------------------------------- */

static struct meta_rec mkrec(uint32_t tenant, const char *ns, const char *key, const char *value,
			     const char *metadata, const float *emb, uint32_t dim)
{
	struct meta_rec r;

	memset(&r, 0, sizeof(r));
	r.tenant = tenant;
	r.ns_len = (uint16_t)strlen(ns);
	memcpy(r.ns, ns, r.ns_len);
	r.key_len = (uint16_t)strlen(key);
	memcpy(r.key, key, r.key_len);
	r.value = (uint8_t *)value;
	r.value_len = (uint32_t)strlen(value);
	r.metadata = (char *)metadata;
	r.metadata_len = metadata ? (uint32_t)strlen(metadata) : 0;
	r.embedding = (float *)emb;
	r.dim = emb ? dim : 0;
	return r;
}

/* Put and wait for durability; returns the put's refusal or the done status. */
static int put_sync(struct meta *m, const struct meta_rec *r)
{
	struct done d = { 0 };
	int rc = meta_rec_put(m, r, rec_done, &d);

	if (rc)
		return rc;
	drain(m);
	CHECK_EQ(d.calls, 1);
	return d.status;
}

static int put(struct meta *m, uint32_t tenant, const char *ns, const char *key,
	       const char *value, const float *emb, uint32_t dim)
{
	struct meta_rec r = mkrec(tenant, ns, key, value, NULL, emb, dim);

	return put_sync(m, &r);
}

static int del_sync(struct meta *m, uint32_t tenant, const char *ns, const char *key)
{
	struct done d = { 0 };
	int rc = meta_rec_delete(m, tenant, ns, strlen(ns), key, strlen(key), rec_done, &d);

	if (rc)
		return rc;
	drain(m);
	CHECK_EQ(d.calls, 1);
	return d.status;
}

static int get_value(struct meta *m, uint32_t tenant, const char *ns, const char *key,
		     char *buf, size_t cap)
{
	struct meta_rec *r = NULL;
	int rc = meta_rec_get(m, tenant, ns, strlen(ns), key, strlen(key), &r);

	if (rc)
		return rc;
	CHECK(r->value_len < cap);
	memcpy(buf, r->value, r->value_len);
	buf[r->value_len] = 0;
	meta_rec_free(r);
	return 0;
}

/* ---- context helpers ----------------------------------------------------------------- */

struct ctxbuf {
	struct meta_ctx c;
	kvt_key keys[64];
	uint32_t tokens[256];
	uint8_t meta[64];
};

static void mkctx(struct ctxbuf *b, uint32_t tenant, const char *name, uint32_t nkeys,
		  uint32_t seed)
{
	memset(b, 0, sizeof(*b));
	b->c.tenant = tenant;
	b->c.name_len = (uint16_t)strlen(name);
	memcpy(b->c.name, name, b->c.name_len);
	for (uint32_t i = 0; i < 16; i++)
		b->c.salt.b[i] = (uint8_t)(seed + i);
	b->c.nkeys = nkeys;
	b->c.keys = b->keys;
	for (uint32_t i = 0; i < nkeys; i++)
		for (int j = 0; j < 16; j++)
			b->keys[i].b[j] = (uint8_t)(seed * 7 + i * 3 + (uint32_t)j);
	b->c.ntokens = nkeys * 4;
	b->c.tokens = b->tokens;
	for (uint32_t i = 0; i < b->c.ntokens; i++)
		b->tokens[i] = seed * 1000 + i;
	b->c.token_count = b->c.ntokens;
	b->c.metadata_len = (uint32_t)snprintf((char *)b->meta, sizeof(b->meta), "meta-%u", seed);
	b->c.metadata = b->meta;
	b->c.bytes = (uint64_t)nkeys << 20;
	b->c.created_ms = 1700000000000ull + seed;
}

static void check_same_ctx(const struct meta_ctx *a, const struct meta_ctx *b)
{
	CHECK_EQ(a->tenant, b->tenant);
	CHECK_EQ(a->name_len, b->name_len);
	CHECK(memcmp(a->name, b->name, a->name_len) == 0);
	CHECK(memcmp(a->salt.b, b->salt.b, 16) == 0);
	CHECK_EQ(a->token_count, b->token_count);
	CHECK_EQ(a->nkeys, b->nkeys);
	CHECK(memcmp(a->keys, b->keys, a->nkeys * sizeof(kvt_key)) == 0);
	CHECK_EQ(a->ntokens, b->ntokens);
	CHECK(a->ntokens == 0 || memcmp(a->tokens, b->tokens, a->ntokens * 4) == 0);
	CHECK_EQ(a->metadata_len, b->metadata_len);
	CHECK(a->metadata_len == 0 || memcmp(a->metadata, b->metadata, a->metadata_len) == 0);
	CHECK_EQ(a->bytes, b->bytes);
	CHECK_EQ(a->created_ms, b->created_ms);
	CHECK_EQ(a->expires_ms, b->expires_ms);
}

static int ctx_put_sync(struct meta *m, const struct meta_ctx *c, struct meta_ctx **replaced)
{
	struct done d = { 0 };

	meta_ctx_put(m, c, ctx_done, &d);
	CHECK_MSG(d.calls == 0, "ctx_put ran its callback inside the call");
	drain(m);
	CHECK_EQ(d.calls, 1);
	if (replaced)
		*replaced = d.ctx;
	else
		meta_ctx_free(d.ctx);
	return d.status;
}

static int ctx_del_sync(struct meta *m, uint32_t tenant, const char *name,
			struct meta_ctx **deleted)
{
	struct done d = { 0 };

	meta_ctx_delete(m, tenant, name, strlen(name), ctx_done, &d);
	CHECK_MSG(d.calls == 0, "ctx_delete ran its callback inside the call");
	drain(m);
	CHECK_EQ(d.calls, 1);
	if (deleted)
		*deleted = d.ctx;
	else
		meta_ctx_free(d.ctx);
	return d.status;
}

struct tstats {
	struct meta_tenant_stats v[8];
	size_t n;
};

static void collect(const struct meta_tenant_stats *s, void *arg)
{
	struct tstats *t = arg;

	CHECK(t->n < 8);
	t->v[t->n++] = *s;
}

static struct meta_tenant_stats tenant_stats(struct meta *m, uint32_t tenant)
{
	struct tstats t = { .n = 0 };
	struct meta_tenant_stats z = { .tenant = tenant };

	meta_foreach_tenant(m, collect, &t);
	for (size_t i = 0; i < t.n; i++)
		if (t.v[i].tenant == tenant)
			return t.v[i];
	return z;
}

/* ==== contexts ========================================================================== */

META_TEST(ctx_put_get_replace_delete)
{
	struct meta *m = open_dir(dir);
	struct ctxbuf a, b;
	struct meta_ctx *got = NULL, *old = NULL;

	mkctx(&a, 1, "chat/42", 10, 1);
	CHECK_RC(ctx_put_sync(m, &a.c, &old), 0);
	CHECK(old == NULL);
	CHECK_RC(meta_ctx_get(m, 1, "chat/42", 7, &got), 0);
	check_same_ctx(got, &a.c);
	meta_ctx_free(got);

	/* Replace under the same name: the old manifest comes back, whole. */
	mkctx(&b, 1, "chat/42", 20, 2);
	b.c.tokens = NULL;
	b.c.ntokens = 0;
	CHECK_RC(ctx_put_sync(m, &b.c, &old), 0);
	CHECK_MSG(old != NULL, "replaced manifest not handed back");
	check_same_ctx(old, &a.c);
	meta_ctx_free(old);
	CHECK_RC(meta_ctx_get(m, 1, "chat/42", 7, &got), 0);
	check_same_ctx(got, &b.c);
	CHECK(got->tokens == NULL);
	meta_ctx_free(got);
	CHECK_EQ(tenant_stats(m, 1).contexts, 1);
	CHECK_EQ(tenant_stats(m, 1).context_bytes, 20ull << 20);

	/* Survives a reopen byte for byte. */
	meta_close(m);
	m = open_dir(dir);
	CHECK_RC(meta_ctx_get(m, 1, "chat/42", 7, &got), 0);
	check_same_ctx(got, &b.c);
	meta_ctx_free(got);
	CHECK_EQ(tenant_stats(m, 1).contexts, 1);

	/* Delete hands the manifest back for its block references. */
	CHECK_RC(ctx_del_sync(m, 1, "chat/42", &old), 0);
	CHECK(old != NULL);
	check_same_ctx(old, &b.c);
	meta_ctx_free(old);
	CHECK_RC(meta_ctx_get(m, 1, "chat/42", 7, &got), -ENOENT);
	CHECK_RC(ctx_del_sync(m, 1, "chat/42", &old), -ENOENT);
	CHECK(old == NULL);
	CHECK_EQ(tenant_stats(m, 1).contexts, 0);
	meta_close(m);
}

static void list_names(struct meta *m, uint32_t tenant, const char *prefix, const char *after,
		       uint32_t limit, char names[][KVT_NAME_LEN_MAX + 1], size_t *n, bool *more)
{
	struct meta_ctx **l = NULL;
	int rc = meta_ctx_list(m, tenant, prefix, strlen(prefix), after, strlen(after), limit, &l,
			       n, more);

	CHECK_RC(rc, 0);
	CHECK(*n <= limit);
	for (size_t i = 0; i < *n; i++) {
		CHECK(l[i]->keys == NULL && l[i]->tokens == NULL && l[i]->metadata == NULL);
		CHECK(l[i]->nkeys > 0);
		CHECK_EQ(l[i]->tenant, tenant);
		snprintf(names[i], KVT_NAME_LEN_MAX + 1, "%s", l[i]->name);
		meta_ctx_free(l[i]);
	}
	free(l);
}

static int cmp_str(const void *a, const void *b)
{
	return strcmp(*(const char *const *)a, *(const char *const *)b);
}

META_TEST(ctx_list_prefix_pagination_order)
{
	struct meta *m = open_dir(dir);
	static const char *fixed[] = { "a", "ab", "abc", "b", "ba", "x", "x0", "y/1" };
	const char *all[64];
	char namebuf[40][16], got[64][KVT_NAME_LEN_MAX + 1];
	size_t nall = 0, n, total;
	bool more;
	char after[KVT_NAME_LEN_MAX + 1];
	struct ctxbuf b;

	for (size_t i = 0; i < sizeof(fixed) / sizeof(fixed[0]); i++)
		all[nall++] = fixed[i];
	for (int i = 0; i < 25; i++) {
		/* Not inserted in order: the store sorts. */
		snprintf(namebuf[i], sizeof(namebuf[i]), "x/%02d", (i * 7) % 25);
		all[nall++] = namebuf[i];
	}
	for (size_t i = 0; i < nall; i++) {
		mkctx(&b, 1, all[i], 2, (uint32_t)i);
		CHECK_RC(ctx_put_sync(m, &b.c, NULL), 0);
	}
	/* Another tenant's names never show up. */
	mkctx(&b, 2, "x/00", 2, 99);
	CHECK_RC(ctx_put_sync(m, &b.c, NULL), 0);
	mkctx(&b, 2, "x/zz", 2, 98);
	CHECK_RC(ctx_put_sync(m, &b.c, NULL), 0);
	qsort(all, nall, sizeof(all[0]), cmp_str);

	/* Everything of tenant 1 in pages of 7, in name order. */
	total = 0;
	after[0] = 0;
	do {
		list_names(m, 1, "", after, 7, got, &n, &more);
		for (size_t i = 0; i < n; i++, total++) {
			CHECK(total < nall);
			CHECK_MSG(strcmp(got[i], all[total]) == 0, "entry %zu: %s, expected %s",
				  total, got[i], all[total]);
		}
		if (n)
			snprintf(after, sizeof(after), "%s", got[n - 1]);
		CHECK(more == (total < nall));
	} while (more);
	CHECK_EQ(total, nall);

	/* Prefix "x/": 25 names in pages of 10, 10, 5. */
	list_names(m, 1, "x/", "", 10, got, &n, &more);
	CHECK_EQ(n, 10);
	CHECK(more);
	CHECK(strcmp(got[0], "x/00") == 0 && strcmp(got[9], "x/09") == 0);
	list_names(m, 1, "x/", "x/09", 10, got, &n, &more);
	CHECK(n == 10 && more && strcmp(got[0], "x/10") == 0);
	list_names(m, 1, "x/", "x/19", 10, got, &n, &more);
	CHECK(n == 5 && !more && strcmp(got[4], "x/24") == 0);
	/* Exactly a page left: more is false. */
	list_names(m, 1, "x/", "x/19", 5, got, &n, &more);
	CHECK(n == 5 && !more);

	/* Prefix "a": a, ab, abc; after "ab": abc; after something before the prefix. */
	list_names(m, 1, "a", "", 100, got, &n, &more);
	CHECK(n == 3 && !more && !strcmp(got[0], "a") && !strcmp(got[1], "ab") &&
	      !strcmp(got[2], "abc"));
	list_names(m, 1, "a", "ab", 100, got, &n, &more);
	CHECK(n == 1 && !strcmp(got[0], "abc"));
	list_names(m, 1, "b", "a", 100, got, &n, &more);
	CHECK(n == 2 && !strcmp(got[0], "b") && !strcmp(got[1], "ba"));
	list_names(m, 1, "a", "zzz", 100, got, &n, &more);
	CHECK(n == 0 && !more);
	list_names(m, 1, "nothing", "", 100, got, &n, &more);
	CHECK(n == 0 && !more);
	list_names(m, 2, "", "", 100, got, &n, &more);
	CHECK(n == 2 && !strcmp(got[0], "x/00") && !strcmp(got[1], "x/zz"));
	list_names(m, 3, "", "", 100, got, &n, &more);
	CHECK(n == 0);

	{
		struct meta_ctx **l;

		CHECK_RC(meta_ctx_list(m, 1, "", 0, "", 0, 0, &l, &n, &more), -EINVAL);
		CHECK_RC(meta_ctx_list(m, 1, "a\0b", 3, "", 0, 5, &l, &n, &more), -EINVAL);
	}
	meta_close(m);
}

struct hooked {
	int calls;
	struct meta_ctx got;
	kvt_key first_key;
	uint32_t nkeys;
};

static void expire_hook(void *arg, const struct meta_ctx *c)
{
	struct hooked *h = arg;

	h->calls++;
	h->got = *c;
	h->got.keys = NULL;
	h->got.tokens = NULL;
	h->got.metadata = NULL;
	h->nkeys = c->nkeys;
	CHECK(c->keys != NULL);
	h->first_key = c->keys[0];
}

META_TEST(ctx_ttl_expiry_sweeps_through_hook)
{
	struct meta *m = open_dir(dir);
	struct hooked h = { 0 };
	struct ctxbuf gone, later, never, stale;
	struct meta_ctx *got = NULL, *old = NULL, **l = NULL;
	struct meta_stats st;
	uint64_t now = meta_now_ms();
	size_t n;
	bool more;

	meta_set_expire_hook(m, expire_hook, &h);
	mkctx(&gone, 1, "gone", 3, 1);
	gone.c.expires_ms = now - 1000;
	mkctx(&later, 1, "later", 3, 2);
	later.c.expires_ms = now + 3600 * 1000;
	mkctx(&never, 1, "never", 3, 3);
	mkctx(&stale, 1, "stale", 3, 4);
	stale.c.expires_ms = now - 500;
	CHECK_RC(ctx_put_sync(m, &gone.c, NULL), 0);
	CHECK_RC(ctx_put_sync(m, &later.c, NULL), 0);
	CHECK_RC(ctx_put_sync(m, &never.c, NULL), 0);
	CHECK_RC(ctx_put_sync(m, &stale.c, NULL), 0);

	/* Expired: never returned. */
	CHECK_RC(meta_ctx_get(m, 1, "gone", 4, &got), -ENOENT);
	CHECK_RC(meta_ctx_get(m, 1, "later", 5, &got), 0);
	meta_ctx_free(got);
	CHECK_RC(meta_ctx_list(m, 1, "", 0, "", 0, 10, &l, &n, &more), 0);
	CHECK_EQ(n, 2);
	CHECK(!strcmp(l[0]->name, "later") && !strcmp(l[1]->name, "never"));
	for (size_t i = 0; i < n; i++)
		meta_ctx_free(l[i]);
	free(l);
	/* Deleting an expired one is ENOENT: the sweeper owns it. */
	CHECK_RC(ctx_del_sync(m, 1, "gone", NULL), -ENOENT);
	/* Replacing an expired one hands it back (so its references are dropped once,
	 * by the caller) and it never reaches the hook. */
	stale.c.expires_ms = 0;
	CHECK_RC(ctx_put_sync(m, &stale.c, &old), 0);
	CHECK(old != NULL && old->expires_ms == now - 500);
	meta_ctx_free(old);

	CHECK_EQ(tenant_stats(m, 1).contexts, 4);
	meta_tick(m);
	drain(m);
	CHECK_EQ(h.calls, 1);
	CHECK(!strcmp(h.got.name, "gone") && h.got.tenant == 1);
	CHECK_EQ(h.nkeys, 3);
	CHECK(memcmp(&h.first_key, &gone.keys[0], 16) == 0);
	meta_get_stats(m, &st);
	CHECK_EQ(st.expired, 1);
	CHECK_EQ(tenant_stats(m, 1).contexts, 3);
	CHECK_EQ(tenant_stats(m, 1).context_bytes, 9ull << 20);
	meta_tick(m);
	drain(m);
	CHECK_EQ(h.calls, 1);
	/* Gone for good, also after a restart. */
	meta_close(m);
	m = open_dir(dir);
	meta_set_expire_hook(m, expire_hook, &h);
	meta_tick(m);
	drain(m);
	CHECK_EQ(h.calls, 1);
	CHECK_EQ(tenant_stats(m, 1).contexts, 3);
	CHECK_RC(meta_ctx_get(m, 1, "stale", 5, &got), 0);
	meta_ctx_free(got);
	meta_close(m);
}

struct walked {
	uint32_t tenant[8];
	char name[8][KVT_NAME_LEN_MAX + 1];
	uint32_t nkeys[8];
	kvt_key first_key[8];
	size_t n;
	size_t stop_at; /* return 7 after this many, 0: never */
};

static int walk_one(void *arg, const struct meta_ctx *c)
{
	struct walked *w = arg;

	CHECK(w->n < 8);
	w->tenant[w->n] = c->tenant;
	snprintf(w->name[w->n], sizeof(w->name[0]), "%s", c->name);
	w->nkeys[w->n] = c->nkeys;
	w->first_key[w->n] = c->keys[0];
	w->n++;
	return w->stop_at && w->n == w->stop_at ? 7 : 0;
}

/* meta_ctx_foreach: every manifest of every tenant, expired ones too (they hold
 * block references until the sweeper hands them over), whole, in (tenant, name)
 * order; a callback's nonzero return stops it; a row failing its checksum is
 * skipped and counted. */
META_TEST(ctx_foreach_walks_all_manifests_and_counts_corrupt_rows)
{
	struct meta *m = open_dir(dir);
	struct ctxbuf a, b, x, old;
	struct walked w = { 0 };
	size_t corrupt = 9;

	mkctx(&a, 2, "alpha", 3, 1);
	mkctx(&b, 2, "beta", 5, 2);
	mkctx(&x, 1, "x", 1, 3);
	mkctx(&old, 2, "aardvark", 2, 4);
	old.c.expires_ms = meta_now_ms() - 1000;
	CHECK_RC(ctx_put_sync(m, &a.c, NULL), 0);
	CHECK_RC(ctx_put_sync(m, &b.c, NULL), 0);
	CHECK_RC(ctx_put_sync(m, &x.c, NULL), 0);
	CHECK_RC(ctx_put_sync(m, &old.c, NULL), 0);

	CHECK_RC(meta_ctx_foreach(m, walk_one, &w, &corrupt), 0);
	CHECK_EQ(corrupt, 0);
	CHECK_EQ(w.n, 4);
	CHECK(w.tenant[0] == 1 && !strcmp(w.name[0], "x") && w.nkeys[0] == 1);
	CHECK(w.tenant[1] == 2 && !strcmp(w.name[1], "aardvark") && w.nkeys[1] == 2);
	CHECK(w.tenant[2] == 2 && !strcmp(w.name[2], "alpha") && w.nkeys[2] == 3);
	CHECK(w.tenant[3] == 2 && !strcmp(w.name[3], "beta") && w.nkeys[3] == 5);
	CHECK(memcmp(&w.first_key[3], &b.keys[0], 16) == 0);

	memset(&w, 0, sizeof(w));
	w.stop_at = 2;
	CHECK_RC(meta_ctx_foreach(m, walk_one, &w, &corrupt), 7);
	CHECK_EQ(w.n, 2);

	/* Flip a byte of beta's keys in place: its checksum no longer holds. */
	{
		uint8_t kb[META_CTX_KEY_MAX];
		MDB_val k = { meta_ctx_key(kb, 2, "beta", 4), kb }, v;
		MDB_txn *txn;
		uint8_t *row;

		CHECK_RC(mdb_txn_begin(m->db.env, NULL, 0, &txn), 0);
		CHECK_RC(mdb_get(txn, m->dbi_ctx, &k, &v), 0);
		row = malloc(v.mv_size);
		CHECK(row != NULL);
		memcpy(row, v.mv_data, v.mv_size);
		row[META_CTX_HDR + 3] ^= 0x10;
		v.mv_data = row;
		CHECK_RC(mdb_put(txn, m->dbi_ctx, &k, &v, 0), 0);
		CHECK_RC(mdb_txn_commit(txn), 0);
		free(row);
	}
	memset(&w, 0, sizeof(w));
	CHECK_RC(meta_ctx_foreach(m, walk_one, &w, &corrupt), 0);
	CHECK_EQ(corrupt, 1);
	CHECK_EQ(w.n, 3);
	CHECK(!strcmp(w.name[2], "alpha"));
	meta_close(m);
}

META_TEST(ctx_bad_input_refused_through_callback)
{
	struct meta *m = open_dir(dir);
	struct ctxbuf b;
	static uint8_t big[KVT_CTX_META_MAX + 1];

	mkctx(&b, 1, "x", 2, 1);
	b.c.name_len = 0;
	CHECK_RC(ctx_put_sync(m, &b.c, NULL), -EINVAL);
	mkctx(&b, 1, "x", 2, 1);
	b.c.name_len = 256;
	CHECK_RC(ctx_put_sync(m, &b.c, NULL), -EINVAL);
	mkctx(&b, 1, "a\0b", 2, 1);
	b.c.name_len = 3;
	CHECK_RC(ctx_put_sync(m, &b.c, NULL), -EINVAL);
	mkctx(&b, 1, "x", 2, 1);
	b.c.nkeys = 0;
	CHECK_RC(ctx_put_sync(m, &b.c, NULL), -EINVAL);
	mkctx(&b, 1, "x", 2, 1);
	b.c.metadata = big;
	b.c.metadata_len = sizeof(big);
	CHECK_RC(ctx_put_sync(m, &b.c, NULL), -EINVAL);
	b.c.metadata_len = KVT_CTX_META_MAX;
	CHECK_RC(ctx_put_sync(m, &b.c, NULL), 0);
	CHECK_RC(ctx_del_sync(m, 1, "", NULL), -EINVAL);
	{
		struct meta_ctx *c;
		char name[300];

		memset(name, 'n', sizeof(name));
		CHECK_RC(meta_ctx_get(m, 1, name, 256, &c), -EINVAL);
		CHECK_RC(meta_ctx_get(m, 1, name, 255, &c), -ENOENT);
		CHECK_RC(meta_ctx_get(m, 1, "", 0, &c), -EINVAL);
	}
	meta_close(m);
}

/* ==== records ============================================================================== */

META_TEST(rec_put_get_upsert_delete)
{
	struct meta *m = open_dir(dir);
	float emb[4] = { 1, 2, 3, 4 };
	struct meta_rec r = mkrec(7, "user1/memories", "likes", "green tea", "{\"src\":\"chat\"}",
				  emb, 4);
	struct meta_rec *got = NULL;
	uint64_t created;
	char buf[64];
	struct done d = { 0 };

	r.expires_ms = meta_now_ms() + 3600 * 1000;
	CHECK_RC(put_sync(m, &r), 0);
	CHECK_RC(meta_rec_get(m, 7, "user1/memories", 14, "likes", 5, &got), 0);
	CHECK(got->value_len == 9 && memcmp(got->value, "green tea", 9) == 0);
	CHECK(got->metadata_len == 14 && strcmp(got->metadata, "{\"src\":\"chat\"}") == 0);
	CHECK(got->dim == 4 && memcmp(got->embedding, emb, sizeof(emb)) == 0);
	CHECK(got->tenant == 7 && !strcmp(got->ns, "user1/memories") && !strcmp(got->key, "likes"));
	CHECK_EQ(got->created_ms, got->updated_ms);
	CHECK_EQ(got->expires_ms, r.expires_ms);
	created = got->created_ms;
	meta_rec_free(got);

	/* Upsert: created is kept, updated moves, the rest is replaced. */
	usleep(20 * 1000);
	r = mkrec(7, "user1/memories", "likes", "oolong", NULL, NULL, 0);
	CHECK_RC(put_sync(m, &r), 0);
	CHECK_RC(meta_rec_get(m, 7, "user1/memories", 14, "likes", 5, &got), 0);
	CHECK(got->value_len == 6 && memcmp(got->value, "oolong", 6) == 0);
	CHECK(got->metadata_len == 0 && got->metadata && got->metadata[0] == 0);
	CHECK(got->embedding == NULL && got->dim == 0 && got->expires_ms == 0);
	CHECK_EQ(got->created_ms, created);
	CHECK_MSG(got->updated_ms > created, "updated %llu, created %llu",
		  (unsigned long long)got->updated_ms, (unsigned long long)created);
	meta_rec_free(got);
	/* The same put again is harmless. */
	CHECK_RC(put_sync(m, &r), 0);
	CHECK_EQ(tenant_stats(m, 7).records, 1);
	CHECK_EQ(tenant_stats(m, 7).record_bytes, 6);

	/* An empty value is a value. */
	r = mkrec(7, "user1/memories", "empty", "", NULL, NULL, 0);
	CHECK_RC(put_sync(m, &r), 0);
	CHECK_RC(get_value(m, 7, "user1/memories", "empty", buf, sizeof(buf)), 0);
	CHECK(buf[0] == 0);

	CHECK_RC(del_sync(m, 7, "user1/memories", "likes"), 0);
	CHECK_RC(get_value(m, 7, "user1/memories", "likes", buf, sizeof(buf)), -ENOENT);
	CHECK_RC(del_sync(m, 7, "user1/memories", "likes"), -ENOENT);
	CHECK_RC(del_sync(m, 7, "nope", "likes"), -ENOENT);
	CHECK_EQ(tenant_stats(m, 7).records, 1);

	/* A delete queued behind a put not yet durable still finds it. */
	r = mkrec(7, "user1/memories", "fresh", "v", NULL, NULL, 0);
	CHECK_RC(meta_rec_put(m, &r, NULL, NULL), 0);
	CHECK_RC(meta_rec_delete(m, 7, "user1/memories", 14, "fresh", 5, rec_done, &d), 0);
	drain(m);
	CHECK_EQ(d.status, 0);
	CHECK_RC(get_value(m, 7, "user1/memories", "fresh", buf, sizeof(buf)), -ENOENT);
	meta_close(m);
}

struct recid {
	char ns[16], key[16];
};

static int cmp_recid(const void *a, const void *b)
{
	const struct recid *x = a, *y = b;
	int c = strcmp(x->ns, y->ns);

	return c ? c : strcmp(x->key, y->key);
}

META_TEST(rec_list_prefix_pagination_order)
{
	struct meta *m = open_dir(dir);
	static const char *nss[] = { "n1", "n10", "n2", "o", "n" };
	struct recid ref[200];
	size_t nref = 0, total = 0, n;
	struct meta_rec **l;
	char after_ns[KVT_NAME_LEN_MAX + 1] = "", after_key[KVT_NAME_LEN_MAX + 1] = "";
	bool more;
	uint64_t s = 1;

	for (int i = 0; i < 5; i++) {
		for (int j = 0; j < 13; j++) {
			struct meta_rec r;
			char key[16];

			snprintf(key, sizeof(key), "k%llu", (unsigned long long)(rng(&s) % 1000));
			r = mkrec(3, nss[i], key, "v", NULL, NULL, 0);
			CHECK_RC(put_sync(m, &r), 0);
			if (nss[i][0] == 'n') {
				bool dup = false;

				for (size_t q = 0; q < nref; q++)
					dup = dup || (!strcmp(ref[q].ns, nss[i]) &&
						      !strcmp(ref[q].key, key));
				if (!dup) {
					snprintf(ref[nref].ns, 16, "%s", nss[i]);
					snprintf(ref[nref].key, 16, "%s", key);
					nref++;
				}
			}
		}
	}
	/* Expired records are invisible; other tenants' too. */
	{
		struct meta_rec r = mkrec(3, "n2", "zz-expired", "v", NULL, NULL, 0);

		r.expires_ms = meta_now_ms() - 1;
		CHECK_RC(put_sync(m, &r), 0);
		r = mkrec(4, "n2", "other", "v", NULL, NULL, 0);
		CHECK_RC(put_sync(m, &r), 0);
	}
	qsort(ref, nref, sizeof(ref[0]), cmp_recid);
	do {
		CHECK_RC(meta_rec_list(m, 3, "n", 1, after_ns, strlen(after_ns), after_key,
				       strlen(after_key), 7, &l, &n, &more), 0);
		CHECK(n <= 7);
		for (size_t i = 0; i < n; i++, total++) {
			CHECK(total < nref);
			CHECK_MSG(!strcmp(l[i]->ns, ref[total].ns) && !strcmp(l[i]->key, ref[total].key),
				  "entry %zu: %s/%s, expected %s/%s", total, l[i]->ns, l[i]->key,
				  ref[total].ns, ref[total].key);
			CHECK(l[i]->value_len == 1 && l[i]->value[0] == 'v');
			CHECK_EQ(l[i]->tenant, 3);
		}
		if (n) {
			snprintf(after_ns, sizeof(after_ns), "%s", l[n - 1]->ns);
			snprintf(after_key, sizeof(after_key), "%s", l[n - 1]->key);
		}
		for (size_t i = 0; i < n; i++)
			meta_rec_free(l[i]);
		free(l);
		CHECK(more == (total < nref));
	} while (more);
	CHECK_EQ(total, nref);

	/* after_ns alone starts at that namespace's first key. */
	CHECK_RC(meta_rec_list(m, 3, "", 0, "n2", 2, "", 0, 1, &l, &n, &more), 0);
	CHECK(n == 1 && more && !strcmp(l[0]->ns, "n2"));
	meta_rec_free(l[0]);
	free(l);
	/* Prefix "o" only; a prefix that matches nothing. */
	CHECK_RC(meta_rec_list(m, 3, "o", 1, "", 0, "", 0, 100, &l, &n, &more), 0);
	CHECK(n >= 1 && !more);
	for (size_t i = 0; i < n; i++) {
		CHECK(!strcmp(l[i]->ns, "o"));
		meta_rec_free(l[i]);
	}
	free(l);
	CHECK_RC(meta_rec_list(m, 3, "q", 1, "", 0, "", 0, 100, &l, &n, &more), 0);
	CHECK(n == 0 && !more);
	free(l);
	CHECK_RC(meta_rec_list(m, 3, "", 0, "", 0, "", 0, 0, &l, &n, &more), -EINVAL);
	meta_close(m);
}

META_TEST(rec_bad_input)
{
	struct meta *m = open_dir(dir);
	float emb[8] = { 1, 0, 0, 0, 0, 0, 0, 0 }, e4[4] = { 1, 1, 1, 1 };
	static char bigmeta[KVT_MEM_META_MAX + 2];
	static char bigval[4098];
	static float bigemb[KVT_MEM_DIM_MAX + 1];
	char name[300];
	struct meta_rec r;

	memset(name, 'a', sizeof(name));
	name[256] = 0;
	r = mkrec(1, name, "k", "v", NULL, NULL, 0);
	CHECK_RC(meta_rec_put(m, &r, NULL, NULL), -EINVAL);
	r = mkrec(1, "ns", name, "v", NULL, NULL, 0);
	CHECK_RC(meta_rec_put(m, &r, NULL, NULL), -EINVAL);
	name[255] = 0;
	r = mkrec(1, name, name, "v", NULL, NULL, 0);
	CHECK_RC(put_sync(m, &r), 0); /* 255 bytes each: the longest allowed */
	r = mkrec(1, "", "k", "v", NULL, NULL, 0);
	CHECK_RC(meta_rec_put(m, &r, NULL, NULL), -EINVAL);
	r = mkrec(1, "ns", "", "v", NULL, NULL, 0);
	CHECK_RC(meta_rec_put(m, &r, NULL, NULL), -EINVAL);
	r = mkrec(1, "ns", "kk", "v", NULL, NULL, 0);
	r.key[0] = 0;
	CHECK_RC(meta_rec_put(m, &r, NULL, NULL), -EINVAL);
	memset(bigmeta, 'm', KVT_MEM_META_MAX + 1);
	r = mkrec(1, "ns", "k", "v", bigmeta, NULL, 0);
	CHECK_RC(meta_rec_put(m, &r, NULL, NULL), -EINVAL);
	bigmeta[KVT_MEM_META_MAX] = 0;
	r = mkrec(1, "ns", "k", "v", bigmeta, NULL, 0);
	CHECK_RC(put_sync(m, &r), 0);
	memset(bigval, 'v', 4097);
	r = mkrec(1, "ns", "k", bigval, NULL, NULL, 0);
	CHECK_RC(meta_rec_put(m, &r, NULL, NULL), -EMSGSIZE);
	bigval[4096] = 0;
	r = mkrec(1, "ns", "k", bigval, NULL, NULL, 0);
	CHECK_RC(put_sync(m, &r), 0);
	r = mkrec(1, "ns", "k", "v", NULL, bigemb, KVT_MEM_DIM_MAX + 1);
	CHECK_RC(meta_rec_put(m, &r, NULL, NULL), -EINVAL);
	r = mkrec(1, "big", "k", "v", NULL, bigemb, KVT_MEM_DIM_MAX);
	CHECK_RC(put_sync(m, &r), 0);
	emb[3] = NAN;
	r = mkrec(1, "ns", "k", "v", NULL, emb, 8);
	CHECK_RC(meta_rec_put(m, &r, NULL, NULL), -EINVAL);
	emb[3] = INFINITY;
	CHECK_RC(meta_rec_put(m, &r, NULL, NULL), -EINVAL);
	emb[3] = 0;
	r = mkrec(1, "ns", "k", "v", NULL, NULL, 0);
	r.dim = 8; /* a dimension without an embedding */
	CHECK_RC(meta_rec_put(m, &r, NULL, NULL), -EINVAL);

	/* The namespace's dimension: fixed by its first embedded record, also while
	 * that put is still queued, and released when its last embedded record goes. */
	r = mkrec(1, "dims", "a", "v", NULL, emb, 8);
	CHECK_RC(meta_rec_put(m, &r, NULL, NULL), 0);
	r = mkrec(1, "dims", "b", "v", NULL, e4, 4);
	CHECK_RC(meta_rec_put(m, &r, NULL, NULL), -ERANGE);
	drain(m);
	CHECK_RC(meta_rec_put(m, &r, NULL, NULL), -ERANGE);
	r = mkrec(1, "dims", "c", "v", NULL, NULL, 0);
	CHECK_RC(put_sync(m, &r), 0); /* no embedding: always fine */
	CHECK_RC(del_sync(m, 1, "dims", "a"), 0);
	r = mkrec(1, "dims", "b", "v", NULL, e4, 4);
	CHECK_RC(put_sync(m, &r), 0);
	r = mkrec(1, "dims", "a", "v", NULL, emb, 8);
	CHECK_RC(meta_rec_put(m, &r, NULL, NULL), -ERANGE);
	/* Replacing the last embedded record without one releases it too. */
	r = mkrec(1, "dims", "b", "v", NULL, NULL, 0);
	CHECK_RC(put_sync(m, &r), 0);
	r = mkrec(1, "dims", "a", "v", NULL, emb, 8);
	CHECK_RC(put_sync(m, &r), 0);

	{
		struct meta_rec *g;

		CHECK_RC(meta_rec_get(m, 1, "", 0, "k", 1, &g), -EINVAL);
		CHECK_RC(meta_rec_get(m, 1, "ns", 2, "k\0", 2, &g), -EINVAL);
		CHECK_RC(meta_rec_delete(m, 1, "ns", 2, "", 0, NULL, NULL), -EINVAL);
		CHECK_RC(meta_rec_delete(m, 1, "ns", 2, "absent", 6, NULL, NULL), -ENOENT);
	}
	meta_close(m);
}

META_TEST(rec_ttl_expiry)
{
	struct meta *m = open_dir(dir);
	float e[4] = { 1, 0, 0, 0 }, q[4] = { 1, 0, 0, 0 };
	struct meta_rec r = mkrec(1, "ttl", "old", "v", NULL, e, 4), **l;
	struct meta_stats st;
	char buf[8];
	size_t n;
	bool more;

	r.expires_ms = meta_now_ms() - 10;
	CHECK_RC(put_sync(m, &r), 0);
	r = mkrec(1, "ttl", "live", "w", NULL, NULL, 0);
	r.expires_ms = meta_now_ms() + 3600 * 1000;
	CHECK_RC(put_sync(m, &r), 0);
	CHECK_RC(get_value(m, 1, "ttl", "old", buf, sizeof(buf)), -ENOENT);
	CHECK_RC(meta_rec_list(m, 1, "", 0, "", 0, "", 0, 10, &l, &n, &more), 0);
	CHECK(n == 1 && !strcmp(l[0]->key, "live"));
	meta_rec_free(l[0]);
	free(l);
	CHECK_RC(meta_rec_search(m, 1, "ttl", 3, q, 4, 5, &l, &n), 0);
	CHECK_EQ(n, 0);
	free(l);
	CHECK_RC(del_sync(m, 1, "ttl", "old"), -ENOENT);
	CHECK_EQ(tenant_stats(m, 1).records, 2);
	meta_tick(m);
	drain(m);
	meta_get_stats(m, &st);
	CHECK_EQ(st.expired, 1);
	CHECK_EQ(tenant_stats(m, 1).records, 1);
	/* Its dimension went with it: another one is accepted now. */
	{
		float e8[8] = { 1 };

		r = mkrec(1, "ttl", "new", "v", NULL, e8, 8);
		CHECK_RC(put_sync(m, &r), 0);
	}
	meta_close(m);
}

/* ==== search ================================================================================ */

struct refvec {
	char ns[8], key[16];
	float v[64];
	bool live;
};

struct scored {
	double s;
	size_t i;
};

static int cmp_scored(const void *a, const void *b)
{
	const struct scored *x = a, *y = b;

	return x->s < y->s ? 1 : x->s > y->s ? -1 : 0;
}

/* Brute force in double, then the store's answer must match: same records in the
 * same order, scores within 1e-5. */
static void check_search(struct meta *m, uint32_t tenant, const char *prefix,
			 const struct refvec *ref, size_t nref, const float *q, uint32_t k)
{
	struct scored *sc = malloc(nref * sizeof(*sc));
	struct meta_rec **l = NULL;
	size_t n = 0, ns = 0;
	double qn = 0;

	CHECK(sc != NULL);
	for (int j = 0; j < 64; j++)
		qn += (double)q[j] * q[j];
	for (size_t i = 0; i < nref; i++) {
		double dot = 0, vn = 0;

		if (!ref[i].live || strncmp(ref[i].ns, prefix, strlen(prefix)) != 0)
			continue;
		for (int j = 0; j < 64; j++) {
			dot += (double)ref[i].v[j] * q[j];
			vn += (double)ref[i].v[j] * ref[i].v[j];
		}
		sc[ns].s = dot / (meta_sqrt(vn) * meta_sqrt(qn));
		sc[ns].i = i;
		ns++;
	}
	qsort(sc, ns, sizeof(*sc), cmp_scored);
	CHECK_RC(meta_rec_search(m, tenant, prefix, strlen(prefix), q, 64, k, &l, &n), 0);
	CHECK_EQ(n, ns < k ? ns : k);
	for (size_t i = 0; i < n; i++) {
		const struct refvec *want = &ref[sc[i].i];

		CHECK_MSG(!strcmp(l[i]->ns, want->ns) && !strcmp(l[i]->key, want->key),
			  "rank %zu: %s/%s (%.7f), expected %s/%s (%.7f)", i, l[i]->ns, l[i]->key,
			  l[i]->score, want->ns, want->key, sc[i].s);
		CHECK_MSG(fabs(l[i]->score - sc[i].s) < 1e-5, "rank %zu: score %.8f, expected %.8f",
			  i, l[i]->score, sc[i].s);
		CHECK(l[i]->dim == 64 && memcmp(l[i]->embedding, want->v, sizeof(want->v)) == 0);
		CHECK_EQ(l[i]->tenant, tenant);
	}
	for (size_t i = 0; i < n; i++)
		meta_rec_free(l[i]);
	free(l);
	free(sc);
}

static void put_ref(struct meta *m, struct refvec *r, uint64_t *s)
{
	struct meta_rec rec;

	for (int j = 0; j < 64; j++)
		r->v[j] = frand(s);
	rec = mkrec(1, r->ns, r->key, r->key, NULL, r->v, 64);
	CHECK_RC(meta_rec_put(m, &rec, NULL, NULL), 0);
	r->live = true;
}

META_TEST(search_exact_against_brute_force)
{
	struct meta *m = open_dir(dir);
	enum { N = 2000 };
	struct refvec *ref = calloc(N + 200, sizeof(*ref));
	uint64_t s = 42;
	float q[64];
	size_t nref = 0;

	CHECK(ref != NULL);
	for (size_t i = 0; i < N; i++, nref++) {
		snprintf(ref[i].ns, sizeof(ref[i].ns), "%s", i % 4 == 3 ? "docs2" : "docs");
		snprintf(ref[i].key, sizeof(ref[i].key), "r%zu", i);
		put_ref(m, &ref[i], &s);
		if (i % 500 == 499)
			drain(m);
	}
	/* Another namespace of another dimension under a different prefix. */
	{
		float e32[32] = { 1 };
		struct meta_rec r = mkrec(1, "other", "x", "v", NULL, e32, 32);

		CHECK_RC(meta_rec_put(m, &r, NULL, NULL), 0);
	}
	drain(m);
	for (int t = 0; t < 5; t++) {
		for (int j = 0; j < 64; j++)
			q[j] = frand(&s);
		check_search(m, 1, "docs", ref, nref, q, 10);
		check_search(m, 1, "docs2", ref, nref, q, 10);
	}
	check_search(m, 1, "docs", ref, nref, q, 1);
	check_search(m, 1, "docs", ref, nref, q, 3000); /* k beyond the count: everything */

	/* Kept in step: deletes, replaced embeddings, new records, and records that
	 * lose their embedding. */
	for (size_t i = 0; i < N; i += 10) {
		CHECK_RC(meta_rec_delete(m, 1, ref[i].ns, strlen(ref[i].ns), ref[i].key,
					 strlen(ref[i].key), NULL, NULL), 0);
		ref[i].live = false;
	}
	for (size_t i = 1; i < N; i += 10)
		put_ref(m, &ref[i], &s);
	for (size_t i = 2; i < N; i += 50) {
		struct meta_rec r = mkrec(1, ref[i].ns, ref[i].key, "plain", NULL, NULL, 0);

		CHECK_RC(meta_rec_put(m, &r, NULL, NULL), 0);
		ref[i].live = false;
	}
	for (size_t i = 0; i < 100; i++, nref++) {
		snprintf(ref[nref].ns, sizeof(ref[nref].ns), "docs");
		snprintf(ref[nref].key, sizeof(ref[nref].key), "new%zu", i);
		put_ref(m, &ref[nref], &s);
	}
	drain(m);
	for (int t = 0; t < 5; t++) {
		for (int j = 0; j < 64; j++)
			q[j] = frand(&s);
		check_search(m, 1, "docs", ref, nref, q, 10);
	}
	/* An exact copy of the query that has expired is never returned. */
	{
		struct meta_rec r = mkrec(1, "docs", "expired", "v", NULL, q, 64);

		r.expires_ms = meta_now_ms() - 1;
		CHECK_RC(put_sync(m, &r), 0);
		check_search(m, 1, "docs", ref, nref, q, 10);
	}
	/* After a restart the index is rebuilt from the records. */
	meta_close(m);
	m = open_dir(dir);
	for (int t = 0; t < 3; t++) {
		for (int j = 0; j < 64; j++)
			q[j] = frand(&s);
		check_search(m, 1, "docs", ref, nref, q, 10);
	}
	/* An identical vector scores 1 and comes first. */
	{
		struct meta_rec **l;
		size_t n;

		CHECK_RC(meta_rec_search(m, 1, "docs", 4, ref[5].v, 64, 1, &l, &n), 0);
		CHECK(n == 1 && !strcmp(l[0]->key, ref[5].key) && fabsf(l[0]->score - 1) < 1e-5f);
		meta_rec_free(l[0]);
		free(l);
	}
	meta_close(m);
	free(ref);
}

META_TEST(search_bad_input)
{
	struct meta *m = open_dir(dir);
	float e32[32] = { 1 }, q64[64] = { 1 }, q32[32] = { 0, 1 };
	struct meta_rec r = mkrec(1, "a/x", "k", "v", NULL, e32, 32), **l;
	size_t n;

	CHECK_RC(meta_rec_search(m, 1, "a", 1, q32, 32, 5, &l, &n), -ENOENT);
	CHECK_RC(put_sync(m, &r), 0);
	CHECK_RC(meta_rec_search(m, 1, "a", 1, q64, 64, 5, &l, &n), -ERANGE);
	CHECK_RC(meta_rec_search(m, 1, "b", 1, q32, 32, 5, &l, &n), -ENOENT);
	CHECK_RC(meta_rec_search(m, 2, "a", 1, q32, 32, 5, &l, &n), -ENOENT);
	CHECK_RC(meta_rec_search(m, 1, "a", 1, q32, 32, 0, &l, &n), -EINVAL);
	CHECK_RC(meta_rec_search(m, 1, "a", 1, q32, 0, 5, &l, &n), -EINVAL);
	CHECK_RC(meta_rec_search(m, 1, "a", 1, q32, KVT_MEM_DIM_MAX + 1, 5, &l, &n), -EINVAL);
	q32[5] = NAN;
	CHECK_RC(meta_rec_search(m, 1, "a", 1, q32, 32, 5, &l, &n), -EINVAL);
	q32[5] = -INFINITY;
	CHECK_RC(meta_rec_search(m, 1, "a", 1, q32, 32, 5, &l, &n), -EINVAL);
	q32[5] = 0;
	CHECK_RC(meta_rec_search(m, 1, "a", 1, q32, 32, 5, &l, &n), 0);
	CHECK(n == 1 && fabsf(l[0]->score) < 1e-6f);
	meta_rec_free(l[0]);
	free(l);
	/* A namespace with records but no embeddings matches, with nothing to rank. */
	r = mkrec(1, "plain", "k", "v", NULL, NULL, 0);
	CHECK_RC(put_sync(m, &r), 0);
	CHECK_RC(meta_rec_search(m, 1, "plain", 5, q64, 64, 5, &l, &n), 0);
	CHECK_EQ(n, 0);
	free(l);
	/* A prefix spanning namespaces of two dimensions searches those of the query's. */
	CHECK_RC(meta_rec_search(m, 1, "", 0, q32, 32, 5, &l, &n), 0);
	CHECK_EQ(n, 1);
	meta_rec_free(l[0]);
	free(l);
	meta_close(m);
}

/* ==== tenants ================================================================================ */

META_TEST(tenants_never_mix)
{
	struct meta *m = open_dir(dir);
	float e1[4] = { 1, 0, 0, 0 }, e2[4] = { 1, 0.1f, 0, 0 };
	struct meta_rec **l;
	struct meta_ctx *c;
	struct ctxbuf a, b;
	char buf[16];
	size_t n;
	bool more;

	CHECK_RC(put(m, 1, "mem", "k", "one", e1, 4), 0);
	CHECK_RC(put(m, 2, "mem", "k", "two", e2, 4), 0);
	CHECK_RC(put(m, 2, "mem", "only2", "two", e2, 4), 0);
	mkctx(&a, 1, "ctx", 2, 1);
	mkctx(&b, 2, "ctx", 3, 2);
	CHECK_RC(ctx_put_sync(m, &a.c, NULL), 0);
	CHECK_RC(ctx_put_sync(m, &b.c, NULL), 0);

	CHECK_RC(get_value(m, 1, "mem", "k", buf, sizeof(buf)), 0);
	CHECK(!strcmp(buf, "one"));
	CHECK_RC(get_value(m, 2, "mem", "k", buf, sizeof(buf)), 0);
	CHECK(!strcmp(buf, "two"));
	CHECK_RC(get_value(m, 1, "mem", "only2", buf, sizeof(buf)), -ENOENT);
	CHECK_RC(get_value(m, 3, "mem", "k", buf, sizeof(buf)), -ENOENT);
	CHECK_RC(meta_rec_list(m, 1, "", 0, "", 0, "", 0, 100, &l, &n, &more), 0);
	CHECK(n == 1 && l[0]->tenant == 1 && l[0]->value[0] == 'o');
	meta_rec_free(l[0]);
	free(l);
	CHECK_RC(meta_rec_search(m, 1, "mem", 3, e2, 4, 10, &l, &n), 0);
	CHECK(n == 1 && l[0]->value[0] == 'o');
	meta_rec_free(l[0]);
	free(l);
	CHECK_RC(meta_rec_search(m, 2, "", 0, e1, 4, 10, &l, &n), 0);
	CHECK(n == 2 && l[0]->value[0] == 't' && l[1]->value[0] == 't');
	meta_rec_free(l[0]);
	meta_rec_free(l[1]);
	free(l);
	CHECK_RC(meta_rec_search(m, 3, "", 0, e1, 4, 10, &l, &n), -ENOENT);
	/* The same name under two tenants: two contexts. */
	CHECK_RC(meta_ctx_get(m, 1, "ctx", 3, &c), 0);
	check_same_ctx(c, &a.c);
	meta_ctx_free(c);
	CHECK_RC(meta_ctx_get(m, 2, "ctx", 3, &c), 0);
	check_same_ctx(c, &b.c);
	meta_ctx_free(c);
	CHECK_RC(ctx_del_sync(m, 1, "ctx", NULL), 0);
	CHECK_RC(meta_ctx_get(m, 2, "ctx", 3, &c), 0);
	meta_ctx_free(c);
	CHECK_RC(meta_rec_delete(m, 3, "mem", 3, "k", 1, NULL, NULL), -ENOENT);
	CHECK_RC(del_sync(m, 1, "mem", "k"), 0);
	CHECK_RC(get_value(m, 2, "mem", "k", buf, sizeof(buf)), 0);
	CHECK_EQ(tenant_stats(m, 1).records, 0);
	CHECK_EQ(tenant_stats(m, 2).records, 2);
	CHECK_EQ(tenant_stats(m, 2).record_bytes, 2 * (3 + 16));
	CHECK_EQ(tenant_stats(m, 2).contexts, 1);
	meta_close(m);
}

META_TEST(tenant_stats_rebuilt_at_open)
{
	struct meta *m = open_dir(dir);
	struct tstats before = { .n = 0 }, after = { .n = 0 };
	struct ctxbuf b;
	float e[3] = { 1, 2, 3 };

	for (uint32_t t = 1; t <= 3; t++) {
		for (int i = 0; i < 5 * (int)t; i++) {
			char key[16];

			snprintf(key, sizeof(key), "k%d", i);
			CHECK_RC(put(m, t, t == 2 ? "b" : "a", key, "12345", i % 2 ? e : NULL, 3), 0);
		}
		mkctx(&b, t, "c", t, t);
		CHECK_RC(ctx_put_sync(m, &b.c, NULL), 0);
	}
	CHECK_RC(del_sync(m, 3, "a", "k0"), 0);
	meta_foreach_tenant(m, collect, &before);
	CHECK_EQ(before.n, 3);
	CHECK_EQ(before.v[2].records, 14);
	CHECK_EQ(before.v[1].record_bytes, 10 * 5 + 5 * 12);
	meta_close(m);
	m = open_dir(dir);
	meta_foreach_tenant(m, collect, &after);
	CHECK_EQ(after.n, before.n);
	CHECK(memcmp(after.v, before.v, before.n * sizeof(before.v[0])) == 0);
	meta_close(m);
}

/* ==== commit, format, map, failure ================================================================ */

META_TEST(group_commit_batches_writes)
{
	struct meta_config c = { dir, 0, 4096, 2 };
	struct meta *m = open_cfg(&c);
	struct meta_stats st;
	struct done d[1000];

	memset(d, 0, sizeof(d));
	for (int i = 0; i < 1000; i++) {
		char key[16];
		struct meta_rec r;

		snprintf(key, sizeof(key), "k%d", i);
		r = mkrec(1, "gc", key, "value", NULL, NULL, 0);
		CHECK_RC(meta_rec_put(m, &r, rec_done, &d[i]), 0);
	}
	CHECK_EQ(meta_inflight(m), 1000);
	drain(m);
	for (int i = 0; i < 1000; i++)
		CHECK(d[i].calls == 1 && d[i].status == 0);
	meta_get_stats(m, &st);
	test_log("1000 writes in %llu commits", (unsigned long long)st.commits);
	CHECK_EQ(st.writes, 1000);
	CHECK_MSG(st.commits * 10 <= st.writes, "%llu commits for %llu writes",
		  (unsigned long long)st.commits, (unsigned long long)st.writes);
	CHECK_EQ(st.fsyncs, st.commits);
	meta_close(m);
}

static void set_meta_u64(const char *dir, const char *name, uint64_t v)
{
	char path[512];
	MDB_env *env;
	MDB_txn *txn;
	MDB_dbi dbi;
	uint8_t b[8];
	MDB_val k = { strlen(name), (void *)name }, val = { 8, b };

	meta_wr64(b, v);
	snprintf(path, sizeof(path), "%s/meta", dir);
	CHECK(mdb_env_create(&env) == 0);
	CHECK(mdb_env_set_maxdbs(env, 8) == 0);
	CHECK(mdb_env_open(env, path, 0, 0600) == 0);
	CHECK(mdb_txn_begin(env, NULL, 0, &txn) == 0);
	CHECK(mdb_dbi_open(txn, "meta", 0, &dbi) == 0);
	CHECK(mdb_put(txn, dbi, &k, &val, 0) == 0);
	CHECK(mdb_txn_commit(txn) == 0);
	mdb_env_close(env);
}

static int open_err(const char *dir, char *err, size_t cap)
{
	struct meta_config c = { dir, 0, 4096, 0 };
	struct meta *m = NULL;
	int rc = meta_open(&c, &m, err, cap);

	CHECK(rc != 0 || m != NULL);
	meta_close(m);
	return rc;
}

META_TEST(format_newer_or_foreign_refused)
{
	struct meta *m = open_dir(dir), *m2 = NULL;
	char err[512], sub[300];
	struct meta_config c = { dir, 0, 0, 0 };

	CHECK_RC(put(m, 1, "n", "k", "v", NULL, 0), 0);
	/* A second opener of the same store is refused. */
	CHECK_RC(meta_open(&c, &m2, err, sizeof(err)), -EBUSY);
	CHECK(m2 == NULL && strstr(err, "in use"));
	meta_close(m);

	set_meta_u64(dir, "version", META_FORMAT_VERSION + 1);
	CHECK_RC(open_err(dir, err, sizeof(err)), -EPROTO);
	test_log("%s", err);
	CHECK_MSG(strstr(err, "newer") && strstr(err, "format 2"), "message: %s", err);
	set_meta_u64(dir, "version", META_FORMAT_VERSION);
	CHECK_RC(open_err(dir, err, sizeof(err)), 0);

	set_meta_u64(dir, "layout", meta_layout_signature() ^ 1);
	CHECK_RC(open_err(dir, err, sizeof(err)), -EPROTO);
	CHECK_MSG(strstr(err, "layout signature"), "message: %s", err);
	set_meta_u64(dir, "layout", meta_layout_signature());
	set_meta_u64(dir, "incompat", 4);
	CHECK_RC(open_err(dir, err, sizeof(err)), -EPROTO);
	CHECK_MSG(strstr(err, "features"), "message: %s", err);
	set_meta_u64(dir, "incompat", 0);
	CHECK_RC(open_err(dir, err, sizeof(err)), 0);

	/* An LMDB environment that is not ours. */
	snprintf(sub, sizeof(sub), "%s/foreign", dir);
	CHECK(mkdir(sub, 0700) == 0);
	{
		char path[400];
		MDB_env *env;
		MDB_txn *txn;
		MDB_dbi dbi;
		MDB_val k = { 3, (void *)"abc" }, v = { 3, (void *)"xyz" };

		snprintf(path, sizeof(path), "%s/meta", sub);
		CHECK(mkdir(path, 0700) == 0);
		CHECK(mdb_env_create(&env) == 0);
		CHECK(mdb_env_open(env, path, 0, 0600) == 0);
		CHECK(mdb_txn_begin(env, NULL, 0, &txn) == 0);
		CHECK(mdb_dbi_open(txn, NULL, 0, &dbi) == 0);
		CHECK(mdb_put(txn, dbi, &k, &v, 0) == 0);
		CHECK(mdb_txn_commit(txn) == 0);
		mdb_env_close(env);
	}
	CHECK_RC(open_err(sub, err, sizeof(err)), -EPROTO);
	CHECK_MSG(strstr(err, "not a kvtier metadata store"), "message: %s", err);
	/* A data directory that does not exist. */
	snprintf(sub, sizeof(sub), "%s/missing/deeper", dir);
	CHECK_RC(open_err(sub, err, sizeof(err)), -ENOENT);
	CHECK(err[0] != 0);
}

META_TEST(map_grows_from_tiny)
{
	struct meta_config c = { dir, 64 << 10, 4096, 0 };
	struct meta *m = open_cfg(&c);
	static char val[1025];
	struct meta_stats st;
	struct meta_rec **l;
	char after[KVT_NAME_LEN_MAX + 1] = "";
	size_t n, total = 0;
	bool more;

	memset(val, 'x', 1024);
	for (int i = 0; i < 3000; i++) {
		char key[16];
		struct meta_rec r;

		snprintf(key, sizeof(key), "k%05d", i);
		val[0] = (char)('a' + i % 26);
		r = mkrec(1, "grow", key, val, NULL, NULL, 0);
		CHECK_RC(meta_rec_put(m, &r, NULL, NULL), 0);
		if (i % 300 == 299)
			drain(m);
	}
	drain(m);
	meta_get_stats(m, &st);
	test_log("map resized %llu times", (unsigned long long)st.map_resizes);
	CHECK(st.map_resizes >= 3);
	CHECK_EQ(tenant_stats(m, 1).records, 3000);
	meta_close(m);
	m = open_cfg(&c);
	do {
		CHECK_RC(meta_rec_list(m, 1, "grow", 4, "grow", strlen(after) ? 4 : 0, after,
				       strlen(after), 1000, &l, &n, &more), 0);
		for (size_t i = 0; i < n; i++, total++) {
			char key[16];

			snprintf(key, sizeof(key), "k%05zu", total);
			CHECK(!strcmp(l[i]->key, key));
			CHECK(l[i]->value_len == 1024 && l[i]->value[0] == (char)('a' + total % 26));
		}
		if (n)
			snprintf(after, sizeof(after), "%s", l[n - 1]->key);
		for (size_t i = 0; i < n; i++)
			meta_rec_free(l[i]);
		free(l);
	} while (more);
	CHECK_EQ(total, 3000);
	meta_close(m);
}

static int commits_left;

static int failing_commit(MDB_txn *txn)
{
	if (commits_left-- > 0)
		return mdb_txn_commit(txn);
	mdb_txn_abort(txn);
	return MDB_PANIC;
}

META_TEST(panic_fails_writes_with_eio)
{
	struct meta *m;
	struct done d[50];
	struct meta_rec r, *g;
	struct ctxbuf b;
	struct done cd = { 0 };
	char buf[8];

	meta_txn_commit_fn = failing_commit;
	commits_left = 1;
	m = open_dir(dir);
	CHECK_RC(put(m, 1, "n", "first", "v", NULL, 0), 0);
	memset(d, 0, sizeof(d));
	/* The committer may fail (and mark the store failed) while later writes are
	 * still being queued: each write then fails either way, asynchronously with
	 * -EIO, or at once with -EIO and no callback. None succeeds. The first is
	 * always queued: nothing has failed before its commit. */
	int rc_put[50];
	for (int i = 0; i < 50; i++) {
		char key[16];

		snprintf(key, sizeof(key), "k%d", i);
		r = mkrec(1, "n", key, "v", NULL, NULL, 0);
		rc_put[i] = meta_rec_put(m, &r, rec_done, &d[i]);
		CHECK_MSG(rc_put[i] == 0 || rc_put[i] == -EIO, "write %d: %d", i, rc_put[i]);
	}
	CHECK_RC(rc_put[0], 0);
	drain(m);
	for (int i = 0; i < 50; i++) {
		if (rc_put[i] == 0)
			CHECK_MSG(d[i].calls == 1 && d[i].status == -EIO,
				  "write %d: %d calls, status %d", i, d[i].calls, d[i].status);
		else
			CHECK_MSG(d[i].calls == 0, "write %d refused at once but called back", i);
	}
	CHECK(meta_failed(m));
	r = mkrec(1, "n", "later", "v", NULL, NULL, 0);
	CHECK_RC(meta_rec_put(m, &r, NULL, NULL), -EIO);
	CHECK_RC(meta_rec_get(m, 1, "n", 1, "first", 5, &g), -EIO);
	mkctx(&b, 1, "c", 1, 1);
	meta_ctx_put(m, &b.c, ctx_done, &cd);
	drain(m);
	CHECK(cd.calls == 1 && cd.status == -EIO);
	meta_tick(m);
	meta_close(m);
	/* A restart recovers: what was committed is there. */
	meta_txn_commit_fn = mdb_txn_commit;
	m = open_dir(dir);
	CHECK_RC(get_value(m, 1, "n", "first", buf, sizeof(buf)), 0);
	CHECK_RC(get_value(m, 1, "n", "k0", buf, sizeof(buf)), -ENOENT);
	meta_close(m);
}

/* ==== rows ==================================================================================== */

TEST(rows_refuse_truncation_and_bit_flips)
{
	struct ctxbuf b;
	uint8_t key[META_CTX_KEY_MAX], *row;
	size_t klen, len;
	struct meta_ctx *c, head;
	float emb[5] = { 0.5f, -1, 2, 3, 4 };
	struct meta_rec r = mkrec(9, "ns", "key", "value", "md", emb, 5);
	struct meta_rec_view v;

	mkctx(&b, 5, "name", 3, 7);
	klen = meta_ctx_key(key, 5, "name", 4);
	CHECK_RC(meta_ctx_encode(&b.c, &row, &len), 0);
	CHECK_RC(meta_ctx_decode(key, klen, row, len, &c), 0);
	check_same_ctx(c, &b.c);
	meta_ctx_free(c);
	for (size_t cut = 0; cut < len; cut++)
		CHECK_RC(meta_ctx_decode_head(key, klen, row, cut, &head), -EBADMSG);
	for (size_t i = 0; i < len * 8; i++) {
		row[i / 8] ^= (uint8_t)(1u << (i % 8));
		CHECK_MSG(meta_ctx_decode(key, klen, row, len, &c) == -EBADMSG,
			  "bit %zu flipped: accepted", i);
		row[i / 8] ^= (uint8_t)(1u << (i % 8));
	}
	free(row);

	CHECK_RC(meta_rec_encode(&r, 11, 22, &row, &len), 0);
	CHECK_RC(meta_rec_view(row, len, true, &v), 0);
	CHECK(v.created_ms == 11 && v.updated_ms == 22 && v.dim == 5 && v.value_len == 5);
	CHECK(meta_view_emb(&v, 1) == -1.0f && memcmp(v.value, "value", 5) == 0);
	meta_rec_set_created(row, len, 5);
	CHECK_RC(meta_rec_view(row, len, true, &v), 0);
	CHECK_EQ(v.created_ms, 5);
	for (size_t cut = 0; cut < len; cut++)
		CHECK_RC(meta_rec_view(row, cut, false, &v), -EBADMSG);
	for (size_t i = 0; i < len * 8; i++) {
		row[i / 8] ^= (uint8_t)(1u << (i % 8));
		CHECK_MSG(meta_rec_view(row, len, true, &v) == -EBADMSG, "bit %zu flipped: accepted", i);
		row[i / 8] ^= (uint8_t)(1u << (i % 8));
	}
	free(row);
	/* The layout text names every table. */
	CHECK(strstr(meta_layout_string(), "ctx.row") && strstr(meta_layout_string(), "rec.row") &&
	      strstr(meta_layout_string(), "ns.row") && strstr(meta_layout_string(), "rec_exp"));
	CHECK(fabs(meta_sqrt(2.0) - 1.4142135623730951) < 1e-15 && meta_sqrt(0) == 0 &&
	      fabs(meta_sqrt(1e80) - 1e40) < 1e25 && fabs(meta_sqrt(1e-80) - 1e-40) < 1e-55);
}

TEST_MAIN(ctx_put_get_replace_delete, ctx_list_prefix_pagination_order,
	  ctx_ttl_expiry_sweeps_through_hook, ctx_bad_input_refused_through_callback,
	  rec_put_get_upsert_delete, rec_list_prefix_pagination_order, rec_bad_input,
	  rec_ttl_expiry, search_exact_against_brute_force, search_bad_input, tenants_never_mix,
	  tenant_stats_rebuilt_at_open, group_commit_batches_writes,
	  format_newer_or_foreign_refused, map_grows_from_tiny, panic_fails_writes_with_eio,
	  rows_refuse_truncation_and_bit_flips, ctx_foreach_walks_all_manifests_and_counts_corrupt_rows)
