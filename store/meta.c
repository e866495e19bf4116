/*
 * meta.c - the metadata store's owner side (store/meta.h): checking requests,
 * queueing writes for the committer and completing them (callbacks, per-tenant
 * counts, vector indexes), reads in short read transactions, search, and the
 * expiry sweeper. Everything here runs on the owner thread.
 */
#include <errno.h>
#include <math.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <unistd.h>
#include <xxhash.h>

#include "meta_internal.h"

#define VALUE_MAX_DEFAULT (1u << 20)
/* Expired entries one meta_tick removes at most. */
#define SWEEP_MAX 256u
/* Search looks at this many candidates beyond k, so a record deleted or replaced
 * since the vector index last heard of it does not leave the answer short. */
#define SEARCH_SLACK 16u

/* ---- small tables ----------------------------------------------------------------- */

static int htab_init(struct meta_htab *t)
{
	t->mask = 63;
	t->n = 0;
	t->b = calloc(t->mask + 1, sizeof(*t->b));
	return t->b ? 0 : -ENOMEM;
}

static struct meta_hnode *htab_head(const struct meta_htab *t, uint64_t h)
{
	return t->b[h & t->mask];
}

static void htab_insert(struct meta_htab *t, struct meta_hnode *n)
{
	if (t->n + 1 > t->mask + 1) {
		size_t nmask = t->mask * 2 + 1;
		struct meta_hnode **nb = calloc(nmask + 1, sizeof(*nb));

		/* Without room to grow, the chains just get longer. */
		if (nb) {
			for (size_t i = 0; i <= t->mask; i++) {
				while (t->b[i]) {
					struct meta_hnode *x = t->b[i];

					t->b[i] = x->next;
					x->next = nb[x->h & nmask];
					nb[x->h & nmask] = x;
				}
			}
			free(t->b);
			t->b = nb;
			t->mask = nmask;
		}
	}
	n->next = t->b[n->h & t->mask];
	t->b[n->h & t->mask] = n;
	t->n++;
}

static void htab_remove(struct meta_htab *t, struct meta_hnode *n)
{
	struct meta_hnode **pp = &t->b[n->h & t->mask];

	while (*pp && *pp != n)
		pp = &(*pp)->next;
	if (*pp) {
		*pp = n->next;
		t->n--;
	}
}

static void htab_destroy(struct meta_htab *t, void (*fn)(struct meta_hnode *))
{
	if (!t->b)
		return;
	for (size_t i = 0; i <= t->mask; i++) {
		while (t->b[i]) {
			struct meta_hnode *x = t->b[i];

			t->b[i] = x->next;
			fn(x);
		}
	}
	free(t->b);
	t->b = NULL;
}

struct meta_tenant_stats *meta_tenant_get(struct meta_tenants *t, uint32_t tenant)
{
	size_t lo = 0, hi = t->n;

	while (lo < hi) {
		size_t mid = (lo + hi) / 2;

		if (t->v[mid].tenant < tenant)
			lo = mid + 1;
		else
			hi = mid;
	}
	if (lo < t->n && t->v[lo].tenant == tenant)
		return &t->v[lo];
	if (t->n == t->cap) {
		size_t ncap = t->cap ? t->cap * 2 : 16;
		struct meta_tenant_stats *nv = realloc(t->v, ncap * sizeof(*nv));

		if (!nv)
			return NULL;
		t->v = nv;
		t->cap = ncap;
	}
	memmove(&t->v[lo + 1], &t->v[lo], (t->n - lo) * sizeof(*t->v));
	memset(&t->v[lo], 0, sizeof(*t->v));
	t->v[lo].tenant = tenant;
	t->n++;
	return &t->v[lo];
}

void meta_tenants_free(struct meta_tenants *t)
{
	free(t->v);
	t->v = NULL;
	t->n = t->cap = 0;
}

static uint64_t ns_hash(uint32_t tenant, const char *ns, size_t len)
{
	uint8_t kb[META_NS_KEY_MAX];

	return XXH3_64bits(kb, meta_ns_key(kb, tenant, ns, len));
}

static struct meta_ns *ns_find(struct meta *m, uint32_t tenant, const char *ns, size_t len)
{
	uint64_t h = ns_hash(tenant, ns, len);

	for (struct meta_hnode *n = htab_head(&m->nsmap, h); n; n = n->next) {
		struct meta_ns *e = (struct meta_ns *)n;

		if (n->h == h && e->tenant == tenant && e->ns_len == len &&
		    memcmp(e->ns, ns, len) == 0)
			return e;
	}
	return NULL;
}

static struct meta_ns *ns_get(struct meta *m, uint32_t tenant, const char *ns, size_t len)
{
	struct meta_ns *e = ns_find(m, tenant, ns, len);

	if (e)
		return e;
	e = calloc(1, sizeof(*e));
	if (!e)
		return NULL;
	e->hn.h = ns_hash(tenant, ns, len);
	e->tenant = tenant;
	e->ns_len = (uint16_t)len;
	memcpy(e->ns, ns, len);
	htab_insert(&m->nsmap, &e->hn);
	return e;
}

/* Drop an entry that no longer holds anything. */
static void ns_trim(struct meta *m, struct meta_ns *e)
{
	if (e->vec && meta_vec_count(e->vec) == 0) {
		meta_vec_free(e->vec);
		e->vec = NULL;
	}
	if (!e->vec && e->claims == 0) {
		htab_remove(&m->nsmap, &e->hn);
		free(e);
	}
}

static void ns_node_free(struct meta_hnode *n)
{
	struct meta_ns *e = (struct meta_ns *)n;

	meta_vec_free(e->vec);
	free(e);
}

static void free_node(struct meta_hnode *n)
{
	free(n);
}

/* The pending-put set is keyed by hash alone: a collision only makes a delete go
 * to the committer, which then answers -ENOENT itself. */
static uint64_t rec_hash(uint32_t tenant, const char *ns, size_t ns_len, const char *key,
			 size_t key_len)
{
	uint8_t b[4 + 2 * META_NAME_MAX + 1];

	meta_wr32be(b, tenant);
	memcpy(b + 4, ns, ns_len);
	b[4 + ns_len] = 0;
	memcpy(b + 5 + ns_len, key, key_len);
	return XXH3_64bits(b, 5 + ns_len + key_len);
}

static struct meta_pend *pend_find(struct meta *m, uint64_t h)
{
	for (struct meta_hnode *n = htab_head(&m->pendmap, h); n; n = n->next)
		if (n->h == h)
			return (struct meta_pend *)n;
	return NULL;
}

/* ---- open, close, events ----------------------------------------------------------- */

int meta_open(const struct meta_config *cfg, struct meta **out, char *err, size_t errcap)
{
	char dummy[8];
	struct meta *m;
	int rc;

	if (!err || errcap == 0) {
		err = dummy;
		errcap = sizeof(dummy);
	}
	err[0] = 0;
	if (!out)
		return -EINVAL;
	*out = NULL;
	if (!cfg || !cfg->dir || !cfg->dir[0]) {
		snprintf(err, errcap, "no data directory given");
		return -EINVAL;
	}
	m = calloc(1, sizeof(*m));
	if (!m)
		return -ENOMEM;
	m->lockfd = -1;
	m->efd = -1;
	m->value_max = cfg->value_max ? cfg->value_max : VALUE_MAX_DEFAULT;
	m->interval_ms = cfg->commit_interval_ms;
	if (htab_init(&m->nsmap) || htab_init(&m->pendmap)) {
		rc = -ENOMEM;
		goto out_free;
	}
	rc = meta_db_open(m, cfg, err, errcap);
	if (rc)
		goto out_free;
	rc = meta_db_load_stats(m);
	if (rc) {
		snprintf(err, errcap, "%s: cannot read the store's totals: %s", m->path,
			 strerror(-rc));
		goto out_db;
	}
	m->efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
	if (m->efd < 0) {
		rc = -errno;
		snprintf(err, errcap, "eventfd: %s", strerror(-rc));
		goto out_db;
	}
	rc = meta_commit_start(m);
	if (rc) {
		snprintf(err, errcap, "cannot start the committer thread: %s", strerror(-rc));
		goto out_efd;
	}
	*out = m;
	return 0;

out_efd:
	close(m->efd);
out_db:
	meta_db_close(m);
out_free:
	meta_tenants_free(&m->tenants);
	htab_destroy(&m->nsmap, ns_node_free);
	htab_destroy(&m->pendmap, free_node);
	free(m);
	return rc;
}

void meta_close(struct meta *m)
{
	if (!m)
		return;
	/* Callbacks may queue more writes; wait until nothing is left. */
	while (m->inflight > 0) {
		struct pollfd p = { .fd = m->efd, .events = POLLIN };

		poll(&p, 1, 100);
		meta_reap(m);
	}
	meta_commit_stop(m);
	htab_destroy(&m->nsmap, ns_node_free);
	htab_destroy(&m->pendmap, free_node);
	meta_tenants_free(&m->tenants);
	meta_db_close(m);
	close(m->efd);
	free(m);
}

int meta_eventfd(const struct meta *m)
{
	return m->efd;
}

size_t meta_inflight(const struct meta *m)
{
	return m->inflight;
}

bool meta_failed(const struct meta *m)
{
	return atomic_load(&m->failed) != 0;
}

void meta_set_expire_hook(struct meta *m, void (*fn)(void *arg, const struct meta_ctx *c),
			  void *arg)
{
	m->expire_fn = fn;
	m->expire_arg = arg;
}

void meta_get_stats(const struct meta *m, struct meta_stats *s)
{
	s->commits = atomic_load(&m->commits);
	s->writes = atomic_load(&m->writes);
	s->expired = atomic_load(&m->expired);
	s->fsyncs = atomic_load(&m->fsyncs);
	s->map_resizes = atomic_load(&m->db.map_resizes);
	s->corrupt = atomic_load(&m->corrupt);
}

void meta_foreach_tenant(const struct meta *m,
			 void (*fn)(const struct meta_tenant_stats *, void *), void *arg)
{
	for (size_t i = 0; i < m->tenants.n; i++)
		fn(&m->tenants.v[i], arg);
}

static void queue(struct meta *m, struct meta_op *op)
{
	m->inflight++;
	meta_commit_push(m, op, op, 1);
}

/* A request refused before queueing whose callback must still run (later, from
 * meta_reap). */
static void refuse(struct meta *m, struct meta_op *op, int status)
{
	op->status = status;
	m->inflight++;
	meta_commit_finish(m, op);
}

/* ---- completions --------------------------------------------------------------------- */

static uint64_t add_floor(uint64_t a, int64_t d)
{
	if (d < 0 && (uint64_t)-d > a)
		return 0;
	return a + (uint64_t)d;
}

static void count(struct meta *m, const struct meta_op *op)
{
	struct meta_tenant_stats *t;

	if (!op->d_contexts && !op->d_ctx_bytes && !op->d_records && !op->d_rec_bytes)
		return;
	t = meta_tenant_get(&m->tenants, op->tenant);
	if (!t)
		return;
	t->contexts = add_floor(t->contexts, op->d_contexts);
	t->context_bytes = add_floor(t->context_bytes, op->d_ctx_bytes);
	t->records = add_floor(t->records, op->d_records);
	t->record_bytes = add_floor(t->record_bytes, op->d_rec_bytes);
	if (!t->contexts && !t->context_bytes && !t->records && !t->record_bytes) {
		size_t i = (size_t)(t - m->tenants.v);

		memmove(t, t + 1, (m->tenants.n - i - 1) * sizeof(*t));
		m->tenants.n--;
	}
}

/* Keep a built vector index in step with a committed write. */
static void follow(struct meta *m, const struct meta_op *op)
{
	struct meta_ns *e = ns_find(m, op->tenant, op->name, op->name_len);
	struct meta_rec_view v;

	if (!e || !e->vec)
		return;
	if (op->kind == META_OP_REC_PUT && meta_rec_view(op->row, op->row_len, false, &v) == 0 &&
	    v.dim) {
		if (meta_vec_count(e->vec) == 0 && meta_vec_dim(e->vec) != v.dim) {
			/* The namespace's dimension was released and fixed again. */
			meta_vec_free(e->vec);
			e->vec = meta_vec_new(v.dim);
			if (!e->vec)
				return;
		}
		/* Out of memory or out of step: forget it, the next search rebuilds it. */
		if (meta_vec_upsert_view(e->vec, &v) != 0) {
			meta_vec_free(e->vec);
			e->vec = NULL;
		}
	} else {
		meta_vec_remove(e->vec, op->key, op->key_len);
	}
	ns_trim(m, e);
}

static void complete(struct meta *m, struct meta_op *op)
{
	m->inflight--;
	if (op->sweep)
		m->sweeping--;
	if (op->claimed) {
		struct meta_ns *e = ns_find(m, op->tenant, op->name, op->name_len);

		if (e) {
			e->claims--;
			ns_trim(m, e);
		}
	}
	if (op->pending) {
		struct meta_pend *p = pend_find(m, rec_hash(op->tenant, op->name, op->name_len,
							    op->key, op->key_len));

		if (p && --p->count == 0) {
			htab_remove(&m->pendmap, &p->hn);
			free(p);
		}
	}
	if (op->status == 0) {
		count(m, op);
		if (op->kind == META_OP_REC_PUT || op->kind == META_OP_REC_DEL ||
		    op->kind == META_OP_REC_EXPIRE)
			follow(m, op);
		if (op->kind == META_OP_CTX_EXPIRE || op->kind == META_OP_REC_EXPIRE)
			atomic_fetch_add(&m->expired, 1);
	}
	switch (op->kind) {
	case META_OP_CTX_PUT:
	case META_OP_CTX_DEL:
		if (op->ctx_done) {
			struct meta_ctx *c = op->status == 0 ? op->ctx_out : NULL;

			if (c)
				op->ctx_out = NULL; /* the callback owns it now */
			op->ctx_done(op->arg, op->status, c);
		}
		break;
	case META_OP_CTX_EXPIRE:
		if (op->status == 0 && op->ctx_out && m->expire_fn)
			m->expire_fn(m->expire_arg, op->ctx_out);
		break;
	case META_OP_REC_PUT:
	case META_OP_REC_DEL:
		if (op->rec_done)
			op->rec_done(op->arg, op->status);
		break;
	case META_OP_REC_EXPIRE:
		break;
	}
	meta_op_free(op);
}

void meta_reap(struct meta *m)
{
	uint64_t n;
	struct meta_op *op;

	if (read(m->efd, &n, sizeof(n)) < 0) {
		/* EAGAIN: nothing signalled; finished ops are still taken below. */
	}
	op = meta_commit_take(m);
	while (op) {
		struct meta_op *next = op->next;

		complete(m, op);
		op = next;
	}
}

/* ---- checks ----------------------------------------------------------------------------- */

static bool prefix_ok(const char *s, size_t len)
{
	return len == 0 || (s && len <= META_NAME_MAX && !memchr(s, 0, len));
}

static bool expired(uint64_t expires_ms, uint64_t now)
{
	return expires_ms && expires_ms <= now;
}

static bool floats_ok(const float *v, uint32_t n)
{
	for (uint32_t i = 0; i < n; i++)
		if (!isfinite(v[i]))
			return false;
	return true;
}

/* ---- contexts ---------------------------------------------------------------------------- */

static bool ctx_ok(const struct meta_ctx *c)
{
	return c && c->name_len >= 1 && c->name_len <= META_NAME_MAX &&
	       !memchr(c->name, 0, c->name_len) && c->nkeys >= 1 &&
	       c->nkeys <= META_CTX_KEYS_MAX && c->keys &&
	       (!c->tokens || c->ntokens <= META_CTX_TOKENS_MAX) &&
	       c->metadata_len <= KVT_CTX_META_MAX && (!c->metadata_len || c->metadata);
}

void meta_ctx_put(struct meta *m, const struct meta_ctx *c,
		  void (*done)(void *arg, int status, struct meta_ctx *replaced), void *arg)
{
	struct meta_op *op = calloc(1, sizeof(*op));
	struct meta_ctx copy;
	int rc;

	if (!op) {
		/* Cannot even queue the answer: the one callback run in place. */
		if (done)
			done(arg, -ENOMEM, NULL);
		return;
	}
	op->kind = META_OP_CTX_PUT;
	op->ctx_done = done;
	op->arg = arg;
	if (!ctx_ok(c)) {
		refuse(m, op, -EINVAL);
		return;
	}
	if (meta_failed(m)) {
		refuse(m, op, -EIO);
		return;
	}
	copy = *c;
	if (!copy.created_ms)
		copy.created_ms = meta_now_ms();
	rc = meta_ctx_encode(&copy, &op->row, &op->row_len);
	if (rc) {
		refuse(m, op, rc);
		return;
	}
	op->tenant = c->tenant;
	op->name_len = c->name_len;
	memcpy(op->name, c->name, c->name_len);
	queue(m, op);
}

void meta_ctx_delete(struct meta *m, uint32_t tenant, const char *name, size_t name_len,
		     void (*done)(void *arg, int status, struct meta_ctx *deleted), void *arg)
{
	struct meta_op *op = calloc(1, sizeof(*op));

	if (!op) {
		if (done)
			done(arg, -ENOMEM, NULL);
		return;
	}
	op->kind = META_OP_CTX_DEL;
	op->ctx_done = done;
	op->arg = arg;
	if (!meta_name_ok(name, name_len)) {
		refuse(m, op, -EINVAL);
		return;
	}
	if (meta_failed(m)) {
		refuse(m, op, -EIO);
		return;
	}
	op->tenant = tenant;
	op->name_len = (uint16_t)name_len;
	memcpy(op->name, name, name_len);
	op->now_ms = meta_now_ms();
	queue(m, op);
}

int meta_ctx_get(struct meta *m, uint32_t tenant, const char *name, size_t name_len,
		 struct meta_ctx **out)
{
	uint8_t kb[META_CTX_KEY_MAX];
	MDB_val k, v;
	int rc;

	*out = NULL;
	if (!meta_name_ok(name, name_len))
		return -EINVAL;
	k.mv_size = meta_ctx_key(kb, tenant, name, name_len);
	k.mv_data = kb;
	if ((rc = meta_read_begin(m)))
		return rc;
	rc = mdb_get(m->db.rtxn, m->dbi_ctx, &k, &v);
	if (rc == 0) {
		rc = meta_ctx_decode(kb, k.mv_size, v.mv_data, v.mv_size, out);
		if (rc == -EBADMSG) {
			atomic_fetch_add(&m->corrupt, 1);
			rc = -EIO;
		}
	} else {
		rc = meta_db_err(m, rc);
	}
	meta_read_end(m);
	if (rc == 0 && expired((*out)->expires_ms, meta_now_ms())) {
		meta_ctx_free(*out);
		*out = NULL;
		rc = -ENOENT;
	}
	return rc;
}

bool meta_was_created(const struct meta *m)
{
	return m->created;
}

int meta_ctx_foreach(struct meta *m, int (*fn)(void *arg, const struct meta_ctx *c), void *arg,
		     size_t *corrupt)
{
	MDB_cursor *cur;
	MDB_val k, v;
	int rc, stop = 0;

	*corrupt = 0;
	if ((rc = meta_read_begin(m)))
		return rc;
	rc = mdb_cursor_open(m->db.rtxn, m->dbi_ctx, &cur);
	if (rc == 0) {
		while (!stop && (rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT)) == 0) {
			struct meta_ctx *c;
			int drc = meta_ctx_decode(k.mv_data, k.mv_size, v.mv_data, v.mv_size, &c);

			if (drc == -EBADMSG) {
				atomic_fetch_add(&m->corrupt, 1);
				(*corrupt)++;
				continue;
			}
			if (drc) {
				rc = ENOMEM;
				break;
			}
			stop = fn(arg, c);
			meta_ctx_free(c);
		}
		mdb_cursor_close(cur);
	}
	meta_read_end(m);
	if (stop)
		return stop;
	if (rc == MDB_NOTFOUND)
		rc = 0;
	return meta_db_err(m, rc);
}

/* A growing array of pointers for list and search results. */
struct plist {
	void **v;
	size_t n, cap;
};

static int plist_add(struct plist *l, void *p)
{
	if (l->n == l->cap) {
		size_t ncap = l->cap ? l->cap * 2 : 16;
		void **nv = realloc(l->v, ncap * sizeof(*nv));

		if (!nv)
			return -ENOMEM;
		l->v = nv;
		l->cap = ncap;
	}
	l->v[l->n++] = p;
	return 0;
}

/* Position cur at the first key >= tenant+prefix, or past tenant+after when that is
 * later (after is exclusive). Returns an LMDB code; k, v hold the entry. */
static int seek_names(MDB_cursor *cur, uint32_t tenant, const char *prefix, size_t prefix_len,
		      const char *after, size_t after_len, MDB_val *k, MDB_val *v,
		      uint8_t *kb)
{
	int rc;

	k->mv_size = meta_ctx_key(kb, tenant, prefix, prefix_len);
	k->mv_data = kb;
	if (after_len) {
		size_t l = prefix_len < after_len ? prefix_len : after_len;
		int c = memcmp(after, prefix, l);

		if (c > 0 || (c == 0 && after_len >= prefix_len)) {
			size_t al = meta_ctx_key(kb, tenant, after, after_len);

			k->mv_size = al;
			rc = mdb_cursor_get(cur, k, v, MDB_SET_RANGE);
			if (rc == 0 && k->mv_size == al && memcmp(k->mv_data, kb, al) == 0)
				rc = mdb_cursor_get(cur, k, v, MDB_NEXT);
			return rc;
		}
	}
	return mdb_cursor_get(cur, k, v, MDB_SET_RANGE);
}

static bool has_prefix(const MDB_val *k, uint32_t tenant, const char *prefix, size_t len)
{
	const uint8_t *p = k->mv_data;

	return k->mv_size >= 4 + len && meta_rd32be(p) == tenant &&
	       (len == 0 || memcmp(p + 4, prefix, len) == 0);
}

int meta_ctx_list(struct meta *m, uint32_t tenant, const char *prefix, size_t prefix_len,
		  const char *after, size_t after_len, uint32_t limit, struct meta_ctx ***out,
		  size_t *n, bool *more)
{
	uint8_t kb[META_CTX_KEY_MAX];
	struct plist l = { 0 };
	MDB_cursor *cur;
	MDB_val k, v;
	uint64_t now = meta_now_ms();
	int rc;

	*out = NULL;
	*n = 0;
	*more = false;
	if (!prefix_ok(prefix, prefix_len) || !prefix_ok(after, after_len) || limit == 0)
		return -EINVAL;
	if ((rc = meta_read_begin(m)))
		return rc;
	rc = mdb_cursor_open(m->db.rtxn, m->dbi_ctx, &cur);
	if (rc == 0) {
		for (rc = seek_names(cur, tenant, prefix, prefix_len, after, after_len, &k, &v, kb);
		     rc == 0 && has_prefix(&k, tenant, prefix, prefix_len);
		     rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT)) {
			struct meta_ctx *c;

			c = malloc(sizeof(*c));
			if (!c) {
				rc = ENOMEM;
				break;
			}
			if (meta_ctx_decode_head(k.mv_data, k.mv_size, v.mv_data, v.mv_size, c)) {
				atomic_fetch_add(&m->corrupt, 1);
				free(c);
				continue;
			}
			if (expired(c->expires_ms, now)) {
				free(c);
				continue;
			}
			if (l.n == limit) {
				*more = true;
				free(c);
				break;
			}
			if (plist_add(&l, c)) {
				free(c);
				rc = ENOMEM;
				break;
			}
		}
		mdb_cursor_close(cur);
	}
	meta_read_end(m);
	if (rc == MDB_NOTFOUND)
		rc = 0;
	rc = meta_db_err(m, rc);
	if (rc) {
		for (size_t i = 0; i < l.n; i++)
			meta_ctx_free(l.v[i]);
		free(l.v);
		*more = false;
		return rc;
	}
	*out = (struct meta_ctx **)l.v;
	*n = l.n;
	return 0;
}

/* ---- records ----------------------------------------------------------------------------- */

/* The "ns" row of (tenant, ns) in the owner's read transaction. */
static int read_ns(struct meta *m, uint32_t tenant, const char *ns, size_t len,
		   struct meta_ns_row *r)
{
	uint8_t kb[META_NS_KEY_MAX];
	MDB_val k = { meta_ns_key(kb, tenant, ns, len), kb }, v;
	int rc = mdb_get(m->db.rtxn, m->dbi_ns, &k, &v);

	if (rc)
		return meta_db_err(m, rc);
	if (meta_ns_decode(r, v.mv_data, v.mv_size)) {
		atomic_fetch_add(&m->corrupt, 1);
		return -EIO;
	}
	return 0;
}

int meta_rec_put(struct meta *m, const struct meta_rec *r, meta_done_fn done, void *arg)
{
	struct meta_ns_row row = { 0 };
	struct meta_ns *e = NULL;
	struct meta_pend *p;
	struct meta_op *op;
	uint64_t now, h;
	uint32_t fixed;
	int rc;

	if (!r || !meta_name_ok(r->ns, r->ns_len) || !meta_name_ok(r->key, r->key_len) ||
	    r->metadata_len > KVT_MEM_META_MAX || (r->metadata_len && !r->metadata) ||
	    (r->value_len && !r->value))
		return -EINVAL;
	if (r->value_len > m->value_max)
		return -EMSGSIZE;
	if (r->embedding ? r->dim < 1 || r->dim > KVT_MEM_DIM_MAX || !floats_ok(r->embedding, r->dim)
			 : r->dim != 0)
		return -EINVAL;
	if (meta_failed(m))
		return -EIO;
	if (r->embedding) {
		/* The namespace's dimension: committed, or claimed by a queued put. */
		if ((rc = meta_read_begin(m)))
			return rc;
		rc = read_ns(m, r->tenant, r->ns, r->ns_len, &row);
		meta_read_end(m);
		if (rc && rc != -ENOENT)
			return rc;
		e = ns_get(m, r->tenant, r->ns, r->ns_len);
		if (!e)
			return -ENOMEM;
		fixed = row.dim ? row.dim : e->claims ? e->claim_dim : 0;
		if (fixed && fixed != r->dim) {
			ns_trim(m, e);
			return -ERANGE;
		}
	}
	op = calloc(1, sizeof(*op));
	h = rec_hash(r->tenant, r->ns, r->ns_len, r->key, r->key_len);
	p = pend_find(m, h);
	if (!p && op) {
		p = calloc(1, sizeof(*p));
		if (p) {
			p->hn.h = h;
			htab_insert(&m->pendmap, &p->hn);
		}
	}
	now = meta_now_ms();
	if (!op || !p ||
	    meta_rec_encode(r, r->created_ms ? r->created_ms : now,
			    r->updated_ms ? r->updated_ms : now, &op->row, &op->row_len)) {
		if (p && p->count == 0) {
			htab_remove(&m->pendmap, &p->hn);
			free(p);
		}
		if (e)
			ns_trim(m, e);
		free(op);
		return -ENOMEM;
	}
	op->kind = META_OP_REC_PUT;
	op->tenant = r->tenant;
	op->name_len = r->ns_len;
	memcpy(op->name, r->ns, r->ns_len);
	op->key_len = r->key_len;
	memcpy(op->key, r->key, r->key_len);
	op->dim = r->embedding ? r->dim : 0;
	op->rec_done = done;
	op->arg = arg;
	op->pending = true;
	p->count++;
	if (e) {
		if (e->claims++ == 0)
			e->claim_dim = r->dim;
		op->claimed = true;
	}
	queue(m, op);
	return 0;
}

/* The row of (tenant, ns, key) in the owner's read transaction, viewed and checked.
 * -ENOENT (absent or expired), -EIO (damaged). */
static int read_rec(struct meta *m, uint32_t tenant, const char *ns, size_t ns_len,
		    const char *key, size_t key_len, struct meta_rec_view *view)
{
	uint8_t kb[META_REC_KEY_MAX];
	struct meta_ns_row row;
	MDB_val k, v;
	int rc = read_ns(m, tenant, ns, ns_len, &row);

	if (rc)
		return rc;
	k.mv_size = meta_rec_key(kb, tenant, row.id, key, key_len);
	k.mv_data = kb;
	rc = mdb_get(m->db.rtxn, m->dbi_rec, &k, &v);
	if (rc)
		return meta_db_err(m, rc);
	if (meta_rec_view(v.mv_data, v.mv_size, true, view)) {
		atomic_fetch_add(&m->corrupt, 1);
		return -EIO;
	}
	return expired(view->expires_ms, meta_now_ms()) ? -ENOENT : 0;
}

int meta_rec_get(struct meta *m, uint32_t tenant, const char *ns, size_t ns_len,
		 const char *key, size_t key_len, struct meta_rec **out)
{
	struct meta_rec_view view;
	int rc;

	*out = NULL;
	if (!meta_name_ok(ns, ns_len) || !meta_name_ok(key, key_len))
		return -EINVAL;
	if ((rc = meta_read_begin(m)))
		return rc;
	rc = read_rec(m, tenant, ns, ns_len, key, key_len, &view);
	if (rc == 0)
		rc = meta_rec_from_view(&view, tenant, out);
	meta_read_end(m);
	return rc;
}

int meta_rec_delete(struct meta *m, uint32_t tenant, const char *ns, size_t ns_len,
		    const char *key, size_t key_len, meta_done_fn done, void *arg)
{
	struct meta_rec_view view;
	struct meta_op *op;
	int rc;

	if (!meta_name_ok(ns, ns_len) || !meta_name_ok(key, key_len))
		return -EINVAL;
	if ((rc = meta_read_begin(m)))
		return rc;
	rc = read_rec(m, tenant, ns, ns_len, key, key_len, &view);
	meta_read_end(m);
	/* Absent now, but a queued put may make it exist before the delete runs. */
	if (rc == -ENOENT && pend_find(m, rec_hash(tenant, ns, ns_len, key, key_len)))
		rc = 0;
	if (rc == -EIO && !meta_failed(m))
		rc = 0; /* a damaged record can still be deleted */
	if (rc)
		return rc;
	op = calloc(1, sizeof(*op));
	if (!op)
		return -ENOMEM;
	op->kind = META_OP_REC_DEL;
	op->tenant = tenant;
	op->name_len = (uint16_t)ns_len;
	memcpy(op->name, ns, ns_len);
	op->key_len = (uint16_t)key_len;
	memcpy(op->key, key, key_len);
	op->now_ms = meta_now_ms();
	op->rec_done = done;
	op->arg = arg;
	queue(m, op);
	return 0;
}

struct ns_match {
	char ns[META_NAME_MAX + 1];
	uint16_t ns_len;
	struct meta_ns_row row;
};

/* Every namespace of tenant whose name starts with prefix, from (after_ns), in name
 * order, into *out (malloc'd). Runs in the owner's read transaction. */
static int match_ns(struct meta *m, uint32_t tenant, const char *prefix, size_t prefix_len,
		    const char *after_ns, size_t after_len, struct ns_match **out, size_t *n)
{
	uint8_t kb[META_NS_KEY_MAX];
	struct ns_match *v = NULL;
	size_t cap = 0;
	MDB_cursor *cur;
	MDB_val k, d;
	int rc;

	*out = NULL;
	*n = 0;
	rc = mdb_cursor_open(m->db.rtxn, m->dbi_ns, &cur);
	if (rc)
		return meta_db_err(m, rc);
	/* after_ns is inclusive here: its keys after after_key still follow. */
	k.mv_size = meta_ns_key(kb, tenant, prefix, prefix_len);
	k.mv_data = kb;
	if (after_len) {
		size_t l = prefix_len < after_len ? prefix_len : after_len;
		int c = memcmp(after_ns, prefix, l);

		if (c > 0 || (c == 0 && after_len >= prefix_len))
			k.mv_size = meta_ns_key(kb, tenant, after_ns, after_len);
	}
	for (rc = mdb_cursor_get(cur, &k, &d, MDB_SET_RANGE);
	     rc == 0 && has_prefix(&k, tenant, prefix, prefix_len);
	     rc = mdb_cursor_get(cur, &k, &d, MDB_NEXT)) {
		struct meta_ns_row row;

		if (k.mv_size < 5 || k.mv_size > META_NS_KEY_MAX ||
		    meta_ns_decode(&row, d.mv_data, d.mv_size)) {
			atomic_fetch_add(&m->corrupt, 1);
			continue;
		}
		if (*n == cap) {
			size_t ncap = cap ? cap * 2 : 8;
			struct ns_match *nv = realloc(v, ncap * sizeof(*nv));

			if (!nv) {
				rc = ENOMEM;
				break;
			}
			v = nv;
			cap = ncap;
		}
		v[*n].ns_len = (uint16_t)(k.mv_size - 4);
		memcpy(v[*n].ns, (const uint8_t *)k.mv_data + 4, v[*n].ns_len);
		v[*n].ns[v[*n].ns_len] = 0;
		v[*n].row = row;
		(*n)++;
	}
	mdb_cursor_close(cur);
	if (rc != 0 && rc != MDB_NOTFOUND) {
		free(v);
		*n = 0;
		return meta_db_err(m, rc);
	}
	*out = v;
	return 0;
}

/* Records of one namespace (after after_key when given) onto l, up to limit; finding
 * one more sets *more. */
static int list_ns(struct meta *m, uint32_t tenant, const struct ns_match *ns,
		   const char *after_key, size_t after_key_len, uint32_t limit, uint64_t now,
		   struct plist *l, bool *more)
{
	uint8_t kb[META_REC_KEY_MAX];
	MDB_cursor *cur;
	MDB_val k, v;
	size_t base = meta_rec_key(kb, tenant, ns->row.id, NULL, 0);
	int rc = mdb_cursor_open(m->db.rtxn, m->dbi_rec, &cur);

	if (rc)
		return rc;
	k.mv_size = meta_rec_key(kb, tenant, ns->row.id, after_key, after_key_len);
	k.mv_data = kb;
	rc = mdb_cursor_get(cur, &k, &v, MDB_SET_RANGE);
	if (rc == 0 && after_key_len && k.mv_size == base + after_key_len &&
	    memcmp(k.mv_data, kb, k.mv_size) == 0)
		rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT);
	for (; rc == 0 && k.mv_size > base && memcmp(k.mv_data, kb, base) == 0;
	     rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT)) {
		struct meta_rec_view view;
		struct meta_rec *r;

		if (meta_rec_view(v.mv_data, v.mv_size, true, &view)) {
			atomic_fetch_add(&m->corrupt, 1);
			continue;
		}
		if (expired(view.expires_ms, now))
			continue;
		if (l->n == limit) {
			*more = true;
			break;
		}
		if (meta_rec_from_view(&view, tenant, &r) || plist_add(l, r)) {
			meta_rec_free(r);
			rc = ENOMEM;
			break;
		}
	}
	mdb_cursor_close(cur);
	return rc == MDB_NOTFOUND ? 0 : rc;
}

int meta_rec_list(struct meta *m, uint32_t tenant, const char *ns_prefix, size_t prefix_len,
		  const char *after_ns, size_t after_ns_len, const char *after_key,
		  size_t after_key_len, uint32_t limit, struct meta_rec ***out, size_t *n,
		  bool *more)
{
	struct ns_match *ns = NULL;
	struct plist l = { 0 };
	size_t nns = 0;
	uint64_t now = meta_now_ms();
	int rc;

	*out = NULL;
	*n = 0;
	*more = false;
	if (!prefix_ok(ns_prefix, prefix_len) || !prefix_ok(after_ns, after_ns_len) ||
	    !prefix_ok(after_key, after_key_len) || limit == 0)
		return -EINVAL;
	if ((rc = meta_read_begin(m)))
		return rc;
	rc = match_ns(m, tenant, ns_prefix, prefix_len, after_ns, after_ns_len, &ns, &nns);
	for (size_t i = 0; rc == 0 && i < nns && !*more; i++) {
		bool same = after_ns_len && ns[i].ns_len == after_ns_len &&
			    memcmp(ns[i].ns, after_ns, after_ns_len) == 0;

		rc = list_ns(m, tenant, &ns[i], same ? after_key : NULL, same ? after_key_len : 0,
			     limit, now, &l, more);
		rc = meta_db_err(m, rc);
	}
	meta_read_end(m);
	free(ns);
	if (rc) {
		for (size_t i = 0; i < l.n; i++)
			meta_rec_free(l.v[i]);
		free(l.v);
		*more = false;
		return rc;
	}
	*out = (struct meta_rec **)l.v;
	*n = l.n;
	return 0;
}

/* ---- search ------------------------------------------------------------------------------- */

/* Build the vector index of one namespace: one pass over its records. */
static int build_vec(struct meta *m, uint32_t tenant, const struct ns_match *ns,
		     struct meta_vec **out)
{
	uint8_t kb[META_REC_KEY_MAX];
	size_t base = meta_rec_key(kb, tenant, ns->row.id, NULL, 0);
	struct meta_vec *x = meta_vec_new(ns->row.dim);
	MDB_cursor *cur;
	MDB_val k = { base, kb }, v;
	int rc;

	*out = NULL;
	if (!x)
		return -ENOMEM;
	rc = mdb_cursor_open(m->db.rtxn, m->dbi_rec, &cur);
	if (rc) {
		meta_vec_free(x);
		return meta_db_err(m, rc);
	}
	for (rc = mdb_cursor_get(cur, &k, &v, MDB_SET_RANGE);
	     rc == 0 && k.mv_size > base && memcmp(k.mv_data, kb, base) == 0;
	     rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT)) {
		struct meta_rec_view view;

		if (meta_rec_view(v.mv_data, v.mv_size, true, &view)) {
			atomic_fetch_add(&m->corrupt, 1);
			continue;
		}
		if (view.dim != ns->row.dim)
			continue;
		if (meta_vec_upsert_view(x, &view)) {
			rc = ENOMEM;
			break;
		}
	}
	mdb_cursor_close(cur);
	if (rc != 0 && rc != MDB_NOTFOUND) {
		meta_vec_free(x);
		return meta_db_err(m, rc);
	}
	*out = x;
	return 0;
}

/* The namespace's vector index, built if needed, or NULL with *rc. */
static struct meta_vec *vec_for(struct meta *m, uint32_t tenant, const struct ns_match *ns,
				int *rc)
{
	struct meta_ns *e = ns_get(m, tenant, ns->ns, ns->ns_len);

	*rc = 0;
	if (!e) {
		*rc = -ENOMEM;
		return NULL;
	}
	if (e->vec && meta_vec_dim(e->vec) != ns->row.dim) {
		meta_vec_free(e->vec);
		e->vec = NULL;
	}
	if (!e->vec) {
		*rc = build_vec(m, tenant, ns, &e->vec);
		if (*rc) {
			ns_trim(m, e);
			return NULL;
		}
	}
	return e->vec;
}

static int search_locked(struct meta *m, uint32_t tenant, const struct ns_match *ns, size_t nns,
			 const float *q, uint32_t dim, uint32_t k, struct plist *l)
{
	struct meta_vec **vecs = calloc(nns ? nns : 1, sizeof(*vecs));
	struct meta_topk t = { NULL, 0, 0 };
	size_t total = 0, most = 0, found = 0;
	float *scratch = NULL;
	uint64_t now = meta_now_ms();
	int rc = 0;

	if (!vecs)
		return -ENOMEM;
	for (size_t i = 0; i < nns; i++) {
		if (ns[i].row.dim != dim)
			continue;
		vecs[i] = vec_for(m, tenant, &ns[i], &rc);
		if (rc)
			goto out;
		total += meta_vec_count(vecs[i]);
		if (meta_vec_count(vecs[i]) > most)
			most = meta_vec_count(vecs[i]);
	}
	t.k = (size_t)k + SEARCH_SLACK < total ? (size_t)k + SEARCH_SLACK : total;
	t.h = malloc((t.k ? t.k : 1) * sizeof(*t.h));
	scratch = malloc((most ? most : 1) * sizeof(*scratch));
	if (!t.h || !scratch) {
		rc = -ENOMEM;
		goto out;
	}
	for (size_t i = 0; i < nns; i++)
		if (vecs[i])
			meta_vec_search(vecs[i], (uint32_t)i, q, now, scratch, &t);
	meta_topk_sort(&t);
	/* Fetch the winners from the same read transaction. */
	for (size_t i = 0; i < t.n && found < k; i++) {
		const struct ns_match *s = &ns[t.h[i].src];
		struct meta_rec_view view;
		struct meta_rec *r;
		size_t klen;
		const char *key = meta_vec_key(vecs[t.h[i].src], t.h[i].slot, &klen);
		uint8_t kb[META_REC_KEY_MAX];
		MDB_val kv = { meta_rec_key(kb, tenant, s->row.id, key, klen), kb }, v;

		if (mdb_get(m->db.rtxn, m->dbi_rec, &kv, &v) != 0)
			continue; /* deleted since the index heard of it */
		if (meta_rec_view(v.mv_data, v.mv_size, true, &view) || expired(view.expires_ms, now))
			continue;
		if ((rc = meta_rec_from_view(&view, tenant, &r)))
			goto out;
		r->score = t.h[i].score;
		if ((rc = plist_add(l, r))) {
			meta_rec_free(r);
			goto out;
		}
		found++;
	}
out:
	free(scratch);
	free(t.h);
	free(vecs);
	return rc;
}

int meta_rec_search(struct meta *m, uint32_t tenant, const char *ns_prefix, size_t prefix_len,
		    const float *query, uint32_t dim, uint32_t k, struct meta_rec ***out,
		    size_t *n)
{
	struct ns_match *ns = NULL;
	struct plist l = { 0 };
	size_t nns = 0;
	float *q;
	double ss = 0, inv;
	bool same = false, any = false;
	int rc;

	*out = NULL;
	*n = 0;
	if (!prefix_ok(ns_prefix, prefix_len) || !query || dim < 1 || dim > KVT_MEM_DIM_MAX ||
	    k == 0 || !floats_ok(query, dim))
		return -EINVAL;
	q = malloc((size_t)dim * sizeof(*q));
	if (!q)
		return -ENOMEM;
	for (uint32_t i = 0; i < dim; i++)
		ss += (double)query[i] * query[i];
	inv = ss > 0 ? 1.0 / meta_sqrt(ss) : 0;
	for (uint32_t i = 0; i < dim; i++)
		q[i] = (float)(query[i] * inv);
	if ((rc = meta_read_begin(m))) {
		free(q);
		return rc;
	}
	rc = match_ns(m, tenant, ns_prefix, prefix_len, NULL, 0, &ns, &nns);
	for (size_t i = 0; rc == 0 && i < nns; i++) {
		same = same || ns[i].row.dim == dim;
		any = any || ns[i].row.dim != 0;
	}
	if (rc == 0 && nns == 0)
		rc = -ENOENT;
	else if (rc == 0 && !same && any)
		rc = -ERANGE;
	else if (rc == 0)
		rc = search_locked(m, tenant, ns, nns, q, dim, k, &l);
	meta_read_end(m);
	free(ns);
	free(q);
	if (rc) {
		for (size_t i = 0; i < l.n; i++)
			meta_rec_free(l.v[i]);
		free(l.v);
		return rc;
	}
	*out = (struct meta_rec **)l.v;
	*n = l.n;
	return 0;
}

/* ---- expiry ------------------------------------------------------------------------------- */

/* Queue removal of up to budget expired entries of one expiry table onto the list. */
static size_t sweep_table(struct meta *m, MDB_dbi dbi, bool ctx, uint64_t now, size_t budget,
			  struct meta_op **head, struct meta_op **tail)
{
	MDB_cursor *cur;
	MDB_val k, v;
	size_t n = 0, seen = 0;
	int rc;

	if (mdb_cursor_open(m->db.rtxn, dbi, &cur))
		return 0;
	for (rc = mdb_cursor_get(cur, &k, &v, MDB_FIRST); rc == 0 && seen < budget;
	     rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT)) {
		const uint8_t *p = k.mv_data;
		size_t rl = k.mv_size - 8;
		struct meta_op *op;

		seen++;
		if (k.mv_size < 8 + 5)
			continue;
		if (meta_rd64be(p) > now)
			break;
		if (ctx ? rl > META_CTX_KEY_MAX || !meta_name_ok((const char *)p + 12, rl - 4)
			: rl <= META_REC_KEY_HDR || rl > META_REC_KEY_MAX)
			continue;
		op = calloc(1, sizeof(*op));
		if (!op)
			break;
		op->kind = ctx ? META_OP_CTX_EXPIRE : META_OP_REC_EXPIRE;
		op->tenant = meta_rd32be(p + 8);
		op->expires_ms = meta_rd64be(p);
		op->now_ms = now;
		op->sweep = true;
		if (ctx) {
			op->name_len = (uint16_t)(rl - 4);
			memcpy(op->name, p + 12, op->name_len);
		} else {
			op->xkey_len = (uint16_t)rl;
			memcpy(op->xkey, p + 8, rl);
		}
		if (*tail)
			(*tail)->next = op;
		else
			*head = op;
		*tail = op;
		n++;
	}
	mdb_cursor_close(cur);
	return n;
}

void meta_tick(struct meta *m)
{
	struct meta_op *head = NULL, *tail = NULL;
	uint64_t now = meta_now_ms();
	size_t n;

	/* One sweep at a time: the next starts once this one's removals are known. */
	if (m->sweeping || meta_failed(m) || meta_read_begin(m))
		return;
	n = sweep_table(m, m->dbi_ctx_exp, true, now, SWEEP_MAX, &head, &tail);
	n += sweep_table(m, m->dbi_rec_exp, false, now, SWEEP_MAX - n, &head, &tail);
	meta_read_end(m);
	if (!n)
		return;
	m->sweeping = n;
	m->inflight += n;
	meta_commit_push(m, head, tail, n);
}
