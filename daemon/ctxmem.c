/*
 * ctxmem.c - CTX_SAVE/LOAD/LIST/DELETE and MEM_PUT/GET/DELETE/LIST/SEARCH: saved
 * contexts and long-term memory records, on top of the metadata store (store/meta.h)
 * and the NVMe tier.
 *
 * A context save is acknowledged only after: every block it names is durable on
 * NVMe (blocks only in RAM are written first, tier2_persist), a context reference
 * is held on each (so NVMe cleaning never drops them), those references are
 * durable (tier2_flush), and the manifest is committed (meta_ctx_put). A crash at
 * any point before the last step leaves the old manifest (or none) in force.
 *
 * References live in the NVMe index, manifests in the metadata store: two LMDB
 * environments, so no transaction covers both. A crash between a save's references
 * and its commit leaves references no manifest accounts for, and one between the
 * commit of a delete, replacement or expiry and the release of the old manifest's
 * references leaves them behind too; either would pin blocks on NVMe for good.
 * So at start-up, before the socket is served, reconcile_refs counts what every
 * manifest names and sets each block's references to that count.
 */
#include <errno.h>
#include <math.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <time.h>

#include "ctxmem.h"
#include "log.h"
#include "meta.h"
#include "server.h"
#include "tier2.h"

/* Replies listing many entries stop before this and say MORE. */
#define REPLY_MAX (16u << 20)
#define LIST_MAX 1000

static uint64_t realtime_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_REALTIME, &ts);
	return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

static int map_err(int rc)
{
	switch (rc) {
	case 0: return 0;
	case -ENOENT: return KVT_ENOENT;
	case -EINVAL: return KVT_EINVAL;
	case -EMSGSIZE: return KVT_EMSGSIZE;
	case -ERANGE: return KVT_ERANGE;
	case -ENOSPC: return KVT_ENOSPC;
	case -ENOMEM: return KVT_ENOMEM;
	case -EOPNOTSUPP: return KVT_EOPNOTSUPP;
	case -EBUSY: return KVT_EBUSY;
	default: return KVT_EIO;
	}
}

/* A name, namespace or key: 1..255 bytes, no NUL inside. */
static int get_name(const struct kvt_fields *f, unsigned tag, const char **p, uint16_t *len,
		    bool required)
{
	const uint8_t *v;
	uint32_t n;
	int rc = kvt_fields_bytes(f, tag, 0, UINT32_MAX, &v, &n);
	if (rc == KVT_ENOENT && !required) {
		*p = "";
		*len = 0;
		return 0;
	}
	if (rc)
		return rc == KVT_ENOENT ? KVT_EBADMSG : rc;
	/* Framing is fine; the name itself is not acceptable. */
	if ((required && n == 0) || n > KVT_NAME_LEN_MAX || memchr(v, 0, n))
		return KVT_EINVAL;
	*p = (const char *)v;
	*len = (uint16_t)n;
	return 0;
}

static void put_float(uint8_t *p, float v)
{
	uint32_t u;
	memcpy(&u, &v, sizeof(u));
	kvt_put32(p, u);
}

static float get_float(const uint8_t *p)
{
	uint32_t u = kvt_get32(p);
	float v;
	memcpy(&v, &u, sizeof(v));
	return v;
}

/* ---- contexts: save -------------------------------------------------------- */

struct save_item {
	struct ctx_save *cs;
	uint32_t i;
};

struct ctx_save {
	struct conn *c;
	uint64_t id;
	struct meta_ctx mc;
	struct save_item *items;
	bool *refd;      /* a context reference was taken on block i */
	unsigned pending;
	int err;
	uint32_t missing;
};

static void save_free(struct ctx_save *cs)
{
	struct conn *c = cs->c;
	free(cs->mc.keys);
	free(cs->mc.tokens);
	free(cs->mc.metadata);
	free(cs->items);
	free(cs->refd);
	free(cs);
	c->inflight--;
	if (!c->dead)
		conn_update_events(c);
	conn_put(c);
}

static void save_unref(struct ctx_save *cs)
{
	struct server *s = cs->c->srv;
	for (uint32_t i = 0; i < cs->mc.nkeys; i++) {
		if (!cs->refd[i])
			continue;
		struct t1_key tk = { .tenant = cs->mc.tenant, .key = cs->mc.keys[i] };
		tier2_unref(s, &tk);
		cs->refd[i] = false;
	}
}

static void save_fail(struct ctx_save *cs, int status)
{
	struct conn *c = cs->c;
	save_unref(cs);
	if (!c->dead) {
		if (status == KVT_ENOENT) {
			uint8_t body[16];
			struct kvt_fields_writer w;
			kvt_fw_init(&w, body, sizeof(body));
			kvt_fw_u32(&w, KVT_TAG_MISSING, cs->missing);
			conn_reply(c, KVT_OP_CTX_SAVE, cs->id, status, body, w.len);
		} else {
			conn_reply(c, KVT_OP_CTX_SAVE, cs->id, status, NULL, 0);
		}
	}
	save_free(cs);
}

/*
 * KVT_TEST_CRASH_POINT=name makes the daemon kill itself with SIGKILL at that
 * point, so integration tests can check what a restart recovers from the crash
 * windows above: "ctx_commit" (a save's references are durable, its manifest is
 * not committed) and "ctx_unref" (a delete, replacement or expiry is committed,
 * the old manifest's references are not yet dropped).
 */
static void crash_point(const char *name)
{
	const char *v = getenv("KVT_TEST_CRASH_POINT");

	if (v && strcmp(v, name) == 0) {
		log_warn("KVT_TEST_CRASH_POINT=%s: killing the daemon here", name);
		raise(SIGKILL);
	}
}

static void unref_manifest(struct server *s, const struct meta_ctx *mc)
{
	crash_point("ctx_unref");
	for (uint32_t i = 0; i < mc->nkeys; i++) {
		struct t1_key tk = { .tenant = mc->tenant, .key = mc->keys[i] };
		tier2_unref(s, &tk);
	}
}

static void save_committed(void *arg, int status, struct meta_ctx *replaced)
{
	struct ctx_save *cs = arg;
	struct server *s = cs->c->srv;
	if (status) {
		save_fail(cs, map_err(status));
		return;
	}
	/* The new manifest holds its own references now; the one it replaced lets go
	 * of its (blocks both name keep the difference). */
	if (replaced) {
		unref_manifest(s, replaced);
		meta_ctx_free(replaced);
	}
	if (!cs->c->dead)
		conn_reply(cs->c, KVT_OP_CTX_SAVE, cs->id, 0, NULL, 0);
	save_free(cs);
}

static void save_flushed(void *arg, int status)
{
	struct ctx_save *cs = arg;
	if (status) {
		save_fail(cs, map_err(status));
		return;
	}
	crash_point("ctx_commit");
	meta_ctx_put(cs->c->srv->meta, &cs->mc, save_committed, cs);
}

static void save_step(struct ctx_save *cs)
{
	if (--cs->pending)
		return;
	if (cs->err) {
		save_fail(cs, cs->err);
		return;
	}
	tier2_flush(cs->c->srv, save_flushed, cs);
}

static void save_persisted(void *arg, int status)
{
	struct save_item *it = arg;
	struct ctx_save *cs = it->cs;
	if (!status) {
		struct t1_key tk = { .tenant = cs->mc.tenant, .key = cs->mc.keys[it->i] };
		status = tier2_ref(cs->c->srv, &tk);
		if (!status)
			cs->refd[it->i] = true;
	}
	if (status) {
		int e = map_err(status);
		if (e == KVT_ENOENT && (!cs->err || cs->err == KVT_ENOENT)) {
			if (!cs->err || it->i < cs->missing)
				cs->missing = it->i;
			cs->err = e;
		} else if (!cs->err) {
			cs->err = e;
		}
	}
	save_step(cs);
}

static uint64_t block_len(struct server *s, const struct t1_key *tk, bool *found)
{
	struct t1_block *b = t1_find(s->t1, tk);
	struct t2_info info;
	*found = true;
	if (b)
		return t1_block_len(b);
	if (tier2_lookup(s, tk, &info) == 0)
		return info.len;
	*found = false;
	return 0;
}

static int do_ctx_save(struct conn *c, const struct kvt_hdr *h, const struct kvt_fields *f)
{
	struct server *s = c->srv;
	const char *name;
	uint16_t name_len;
	const uint8_t *salt, *keys, *tokens = NULL, *meta = NULL;
	uint32_t salt_len, keys_len, tokens_len = 0, meta_len = 0, ttl = 0;
	uint64_t token_count;
	int rc = get_name(f, KVT_TAG_NAME, &name, &name_len, true);
	if (!rc)
		rc = kvt_fields_bytes(f, KVT_TAG_SALT, KVT_KEY_SIZE, KVT_KEY_SIZE, &salt, &salt_len);
	if (!rc)
		rc = kvt_fields_u64(f, KVT_TAG_TOKEN_COUNT, &token_count);
	if (!rc)
		rc = kvt_fields_bytes(f, KVT_TAG_KEYS, KVT_KEY_SIZE,
				      (size_t)s->cfg->max_batch * KVT_KEY_SIZE, &keys, &keys_len);
	if (rc)
		return rc == KVT_ENOENT ? KVT_EBADMSG : rc;
	if (keys_len % KVT_KEY_SIZE)
		return KVT_EBADMSG;
	rc = kvt_fields_bytes(f, KVT_TAG_TOKENS, 0, UINT32_MAX, &tokens, &tokens_len);
	if (rc && rc != KVT_ENOENT)
		return rc;
	if (!rc && (uint64_t)tokens_len != token_count * 4)
		return KVT_EINVAL;
	rc = kvt_fields_bytes(f, KVT_TAG_METADATA, 0, KVT_CTX_META_MAX, &meta, &meta_len);
	if (rc && rc != KVT_ENOENT)
		return rc;
	rc = kvt_fields_u32(f, KVT_TAG_TTL_S, &ttl);
	if (rc && rc != KVT_ENOENT)
		return rc;
	if (!tier2_active(s))
		return KVT_EOPNOTSUPP; /* contexts live on NVMe */

	uint32_t n = keys_len / KVT_KEY_SIZE;
	struct ctx_save *cs = calloc(1, sizeof(*cs));
	if (!cs)
		return KVT_ENOMEM;
	cs->mc.keys = calloc(n, sizeof(kvt_key));
	cs->items = calloc(n, sizeof(*cs->items));
	cs->refd = calloc(n, sizeof(*cs->refd));
	if (tokens_len)
		cs->mc.tokens = malloc(tokens_len);
	if (meta_len)
		cs->mc.metadata = malloc(meta_len);
	if (!cs->mc.keys || !cs->items || !cs->refd || (tokens_len && !cs->mc.tokens) ||
	    (meta_len && !cs->mc.metadata)) {
		free(cs->mc.keys);
		free(cs->items);
		free(cs->refd);
		free(cs->mc.tokens);
		free(cs->mc.metadata);
		free(cs);
		return KVT_ENOMEM;
	}
	struct meta_ctx *mc = &cs->mc;
	mc->tenant = c->tenant;
	memcpy(mc->name, name, name_len);
	mc->name[name_len] = 0;
	mc->name_len = name_len;
	kvt_key_decode(salt, &mc->salt);
	mc->token_count = token_count;
	mc->nkeys = n;
	for (uint32_t i = 0; i < n; i++)
		kvt_key_decode(keys + (size_t)i * KVT_KEY_SIZE, &mc->keys[i]);
	mc->ntokens = tokens_len / 4;
	for (uint32_t i = 0; i < mc->ntokens; i++)
		mc->tokens[i] = kvt_get32(tokens + (size_t)i * 4);
	if (meta_len)
		memcpy(mc->metadata, meta, meta_len);
	mc->metadata_len = meta_len;
	mc->created_ms = realtime_ms();
	mc->expires_ms = ttl ? mc->created_ms + (uint64_t)ttl * 1000 : 0;
	cs->c = c;
	cs->id = h->request_id;
	c->refs++;
	c->inflight++;

	/* Every block must exist somewhere; the first that does not is named. */
	for (uint32_t i = 0; i < n; i++) {
		struct t1_key tk = { .tenant = c->tenant, .key = mc->keys[i] };
		bool found;
		mc->bytes += block_len(s, &tk, &found);
		if (!found) {
			cs->missing = i;
			cs->pending = 1;
			cs->err = KVT_ENOENT;
			save_step(cs);
			return 0;
		}
	}
	cs->pending = 1; /* held while the persists are being started */
	for (uint32_t i = 0; i < n; i++) {
		struct t1_key tk = { .tenant = c->tenant, .key = mc->keys[i] };
		cs->items[i] = (struct save_item){ cs, i };
		cs->pending++;
		tier2_persist(s, &tk, save_persisted, &cs->items[i]);
	}
	save_step(cs);
	return 0;
}

/* ---- contexts: load, list, delete ------------------------------------------- */

static size_t ctx_reply_size(const struct meta_ctx *mc)
{
	return kvt_fw_size(mc->name_len) + kvt_fw_size(KVT_KEY_SIZE) + kvt_fw_size(8) +
	       kvt_fw_size((size_t)mc->nkeys * KVT_KEY_SIZE) + kvt_fw_size(mc->nkeys) +
	       kvt_fw_size(4) + kvt_fw_size((size_t)mc->ntokens * 4) +
	       kvt_fw_size(mc->metadata_len) + 3 * kvt_fw_size(8);
}

static void ctx_load_answer(struct conn *c, uint64_t id, uint8_t tier, const uint8_t *tiers,
			    uint32_t n, void *arg)
{
	struct meta_ctx *mc = arg;
	if (!c->dead) {
		size_t cap = ctx_reply_size(mc);
		uint8_t *buf = malloc(cap);
		if (!buf) {
			conn_reply(c, KVT_OP_CTX_LOAD, id, KVT_ENOMEM, NULL, 0);
			meta_ctx_free(mc);
			return;
		}
		struct kvt_fields_writer w;
		kvt_fw_init(&w, buf, cap);
		kvt_fw_bytes(&w, KVT_TAG_NAME, mc->name, mc->name_len);
		uint8_t k[KVT_KEY_SIZE];
		kvt_key_encode(&mc->salt, k);
		kvt_fw_bytes(&w, KVT_TAG_SALT, k, sizeof(k));
		kvt_fw_u64(&w, KVT_TAG_TOKEN_COUNT, mc->token_count);
		size_t mark = kvt_fw_begin(&w, KVT_TAG_KEYS);
		for (uint32_t i = 0; i < mc->nkeys && !w.err; i++) {
			if (w.len + KVT_KEY_SIZE > w.cap) {
				w.err = KVT_EMSGSIZE;
				break;
			}
			kvt_key_encode(&mc->keys[i], w.buf + w.len);
			w.len += KVT_KEY_SIZE;
		}
		kvt_fw_end(&w, mark);
		kvt_fw_bytes(&w, KVT_TAG_TIERS, tiers, n);
		uint32_t resident = 0;
		uint8_t want = tier == KVT_TIER_HBM ? KVT_TIER_HBM : KVT_TIER_HOST;
		while (resident < n && tiers[resident] == want)
			resident++;
		kvt_fw_u32(&w, KVT_TAG_RESIDENT, resident);
		if (mc->ntokens) {
			mark = kvt_fw_begin(&w, KVT_TAG_TOKENS);
			for (uint32_t i = 0; i < mc->ntokens && !w.err; i++) {
				if (w.len + 4 > w.cap) {
					w.err = KVT_EMSGSIZE;
					break;
				}
				kvt_put32(w.buf + w.len, mc->tokens[i]);
				w.len += 4;
			}
			kvt_fw_end(&w, mark);
		}
		if (mc->metadata_len)
			kvt_fw_bytes(&w, KVT_TAG_METADATA, mc->metadata, mc->metadata_len);
		kvt_fw_u64(&w, KVT_TAG_BYTES, mc->bytes);
		kvt_fw_u64(&w, KVT_TAG_CREATED_MS, mc->created_ms);
		kvt_fw_u64(&w, KVT_TAG_EXPIRES_MS, mc->expires_ms);
		if (w.err)
			conn_reply(c, KVT_OP_CTX_LOAD, id, KVT_EIO, NULL, 0);
		else
			conn_reply(c, KVT_OP_CTX_LOAD, id, 0, buf, w.len);
		free(buf);
	}
	meta_ctx_free(mc);
}

static int do_ctx_load(struct conn *c, const struct kvt_hdr *h, const struct kvt_fields *f)
{
	struct server *s = c->srv;
	const char *name;
	uint16_t name_len;
	uint8_t tier = KVT_TIER_HOST;
	uint32_t deadline = 0;
	int rc = get_name(f, KVT_TAG_NAME, &name, &name_len, true);
	if (rc)
		return rc;
	rc = kvt_fields_u8(f, KVT_TAG_TIER, &tier);
	if (rc && rc != KVT_ENOENT)
		return rc;
	rc = kvt_fields_u32(f, KVT_TAG_DEADLINE_MS, &deadline);
	if (rc && rc != KVT_ENOENT)
		return rc;
	if (!tier2_active(s))
		return KVT_EOPNOTSUPP; /* contexts live on NVMe */
	if (tier > KVT_TIER_NVME)
		return KVT_EBADMSG;
	struct meta_ctx *mc = NULL;
	rc = meta_ctx_get(s->meta, c->tenant, name, name_len, &mc);
	if (rc)
		return map_err(rc);
	uint8_t *keys = malloc((size_t)mc->nkeys * KVT_KEY_SIZE + 1);
	if (!keys) {
		meta_ctx_free(mc);
		return KVT_ENOMEM;
	}
	for (uint32_t i = 0; i < mc->nkeys; i++)
		kvt_key_encode(&mc->keys[i], keys + (size_t)i * KVT_KEY_SIZE);
	rc = pagein_start(c, h->request_id, keys, mc->nkeys, tier, deadline, ctx_load_answer, mc);
	free(keys);
	if (rc)
		meta_ctx_free(mc);
	return rc;
}

static int do_ctx_list(struct conn *c, const struct kvt_hdr *h, const struct kvt_fields *f)
{
	struct server *s = c->srv;
	const char *prefix, *after;
	uint16_t prefix_len, after_len;
	uint32_t limit;
	int rc = get_name(f, KVT_TAG_PREFIX, &prefix, &prefix_len, false);
	if (!rc)
		rc = get_name(f, KVT_TAG_AFTER, &after, &after_len, false);
	if (!rc) {
		rc = kvt_fields_u32(f, KVT_TAG_LIMIT, &limit);
		if (rc == KVT_ENOENT)
			rc = KVT_EBADMSG;
	}
	if (rc)
		return rc;
	if (limit == 0 || limit > LIST_MAX)
		return KVT_EINVAL;
	struct meta_ctx **list = NULL;
	size_t n = 0;
	bool more = false;
	rc = meta_ctx_list(s->meta, c->tenant, prefix, prefix_len, after, after_len, limit, &list,
			   &n, &more);
	if (rc)
		return map_err(rc);
	size_t cap = 64 + n * (kvt_fw_size(0) + kvt_fw_size(KVT_NAME_LEN_MAX) + 5 * kvt_fw_size(8));
	uint8_t *buf = malloc(cap);
	if (!buf) {
		rc = KVT_ENOMEM;
		goto out;
	}
	struct kvt_fields_writer w;
	kvt_fw_init(&w, buf, cap);
	for (size_t i = 0; i < n; i++) {
		size_t mark = kvt_fw_begin(&w, KVT_TAG_ENTRY);
		kvt_fw_bytes(&w, KVT_TAG_NAME, list[i]->name, list[i]->name_len);
		kvt_fw_u64(&w, KVT_TAG_TOKEN_COUNT, list[i]->token_count);
		kvt_fw_u32(&w, KVT_TAG_NKEYS, list[i]->nkeys);
		kvt_fw_u64(&w, KVT_TAG_BYTES, list[i]->bytes);
		kvt_fw_u64(&w, KVT_TAG_CREATED_MS, list[i]->created_ms);
		kvt_fw_u64(&w, KVT_TAG_EXPIRES_MS, list[i]->expires_ms);
		kvt_fw_end(&w, mark);
	}
	kvt_fw_u8(&w, KVT_TAG_MORE, more);
	if (w.err)
		rc = KVT_EIO;
	else
		conn_reply(c, h->opcode, h->request_id, 0, buf, w.len);
	free(buf);
out:
	for (size_t i = 0; i < n; i++)
		meta_ctx_free(list[i]);
	free(list);
	return rc;
}

struct async_req {
	struct conn *c;
	uint64_t id;
	uint16_t op;
};

static struct async_req *async_begin(struct conn *c, const struct kvt_hdr *h)
{
	struct async_req *a = malloc(sizeof(*a));
	if (!a)
		return NULL;
	*a = (struct async_req){ c, h->request_id, h->opcode };
	c->refs++;
	c->inflight++;
	return a;
}

static void async_end(struct async_req *a, int status)
{
	struct conn *c = a->c;
	c->inflight--;
	if (!c->dead) {
		conn_reply(c, a->op, a->id, status, NULL, 0);
		conn_update_events(c);
	}
	free(a);
	conn_put(c);
}

static void ctx_deleted(void *arg, int status, struct meta_ctx *deleted)
{
	struct async_req *a = arg;
	if (!status && deleted)
		unref_manifest(a->c->srv, deleted);
	meta_ctx_free(deleted);
	async_end(a, map_err(status));
}

static int do_ctx_delete(struct conn *c, const struct kvt_hdr *h, const struct kvt_fields *f)
{
	const char *name;
	uint16_t name_len;
	int rc = get_name(f, KVT_TAG_NAME, &name, &name_len, true);
	if (rc)
		return rc;
	struct meta_ctx *mc = NULL;
	rc = meta_ctx_get(c->srv->meta, c->tenant, name, name_len, &mc);
	meta_ctx_free(mc);
	if (rc)
		return map_err(rc);
	struct async_req *a = async_begin(c, h);
	if (!a)
		return KVT_ENOMEM;
	meta_ctx_delete(c->srv->meta, c->tenant, name, name_len, ctx_deleted, a);
	return 0;
}

/* ---- memory records ------------------------------------------------------------ */

static void mem_done(void *arg, int status)
{
	async_end(arg, map_err(status));
}

/* Parse NS and KEY (both required). */
static int get_ns_key(const struct kvt_fields *f, struct meta_rec *r)
{
	const char *ns, *key;
	uint16_t nl, kl;
	int rc = get_name(f, KVT_TAG_NS, &ns, &nl, true);
	if (!rc)
		rc = get_name(f, KVT_TAG_KEY, &key, &kl, true);
	if (rc)
		return rc;
	memcpy(r->ns, ns, nl);
	r->ns[nl] = 0;
	r->ns_len = nl;
	memcpy(r->key, key, kl);
	r->key[kl] = 0;
	r->key_len = kl;
	return 0;
}

/* EMBEDDING as floats in *out (malloc'd), finite, 1..KVT_MEM_DIM_MAX. */
static int get_embedding(const struct kvt_fields *f, float **out, uint32_t *dim, bool required)
{
	const uint8_t *v;
	uint32_t n;
	int rc = kvt_fields_bytes(f, KVT_TAG_EMBEDDING, 4, 4 * KVT_MEM_DIM_MAX, &v, &n);
	if (rc == KVT_ENOENT && !required) {
		*out = NULL;
		*dim = 0;
		return 0;
	}
	if (rc)
		return rc == KVT_ENOENT ? KVT_EBADMSG : rc;
	if (n % 4)
		return KVT_EBADMSG;
	float *e = malloc(n);
	if (!e)
		return KVT_ENOMEM;
	for (uint32_t i = 0; i < n / 4; i++) {
		e[i] = get_float(v + (size_t)i * 4);
		if (!isfinite(e[i])) {
			free(e);
			return KVT_EINVAL;
		}
	}
	*out = e;
	*dim = n / 4;
	return 0;
}

static int do_mem_put(struct conn *c, const struct kvt_hdr *h, const struct kvt_fields *f)
{
	struct server *s = c->srv;
	struct meta_rec r;
	memset(&r, 0, sizeof(r));
	r.tenant = c->tenant;
	int rc = get_ns_key(f, &r);
	if (rc)
		return rc;
	const uint8_t *val, *meta = NULL;
	uint32_t val_len, meta_len = 0, ttl = 0;
	rc = kvt_fields_bytes(f, KVT_TAG_VALUE, 0, UINT32_MAX, &val, &val_len);
	if (rc)
		return rc == KVT_ENOENT ? KVT_EBADMSG : rc;
	if (val_len > s->cfg->mem_value_max)
		return KVT_EMSGSIZE;
	rc = kvt_fields_bytes(f, KVT_TAG_METADATA, 0, KVT_MEM_META_MAX, &meta, &meta_len);
	if (rc && rc != KVT_ENOENT)
		return rc;
	rc = kvt_fields_u32(f, KVT_TAG_TTL_S, &ttl);
	if (rc && rc != KVT_ENOENT)
		return rc;
	rc = get_embedding(f, &r.embedding, &r.dim, false);
	if (rc)
		return rc;
	char *mtext = malloc((size_t)meta_len + 1);
	if (!mtext) {
		free(r.embedding);
		return KVT_ENOMEM;
	}
	if (meta_len)
		memcpy(mtext, meta, meta_len);
	mtext[meta_len] = 0;
	r.value = (uint8_t *)val; /* meta_rec_put copies */
	r.value_len = val_len;
	r.metadata = mtext;
	r.metadata_len = meta_len;
	r.created_ms = r.updated_ms = realtime_ms();
	r.expires_ms = ttl ? r.created_ms + (uint64_t)ttl * 1000 : 0;
	struct async_req *a = async_begin(c, h);
	if (!a) {
		free(mtext);
		free(r.embedding);
		return KVT_ENOMEM;
	}
	rc = meta_rec_put(s->meta, &r, mem_done, a);
	free(mtext);
	free(r.embedding);
	if (rc) {
		/* refused before queueing: answer now, as a request-level error */
		c->inflight--;
		free(a);
		conn_put(c);
		return map_err(rc);
	}
	return 0;
}

static size_t rec_size(const struct meta_rec *r)
{
	return kvt_fw_size(0) + kvt_fw_size(r->ns_len) + kvt_fw_size(r->key_len) +
	       kvt_fw_size(r->value_len) + kvt_fw_size(r->metadata_len) +
	       kvt_fw_size((size_t)r->dim * 4) + 4 * kvt_fw_size(8);
}

static void write_rec(struct kvt_fields_writer *w, const struct meta_rec *r, bool score)
{
	kvt_fw_bytes(w, KVT_TAG_NS, r->ns, r->ns_len);
	kvt_fw_bytes(w, KVT_TAG_KEY, r->key, r->key_len);
	kvt_fw_bytes(w, KVT_TAG_VALUE, r->value, r->value_len);
	if (r->metadata_len)
		kvt_fw_bytes(w, KVT_TAG_METADATA, r->metadata, r->metadata_len);
	if (r->dim) {
		size_t mark = kvt_fw_begin(w, KVT_TAG_EMBEDDING);
		for (uint32_t i = 0; i < r->dim && !w->err; i++) {
			if (w->len + 4 > w->cap) {
				w->err = KVT_EMSGSIZE;
				break;
			}
			put_float(w->buf + w->len, r->embedding[i]);
			w->len += 4;
		}
		kvt_fw_end(w, mark);
	}
	kvt_fw_u64(w, KVT_TAG_CREATED_MS, r->created_ms);
	kvt_fw_u64(w, KVT_TAG_UPDATED_MS, r->updated_ms);
	kvt_fw_u64(w, KVT_TAG_EXPIRES_MS, r->expires_ms);
	if (score) {
		uint8_t b[4];
		put_float(b, r->score);
		kvt_fw_bytes(w, KVT_TAG_SCORE, b, 4);
	}
}

static int do_mem_get(struct conn *c, const struct kvt_hdr *h, const struct kvt_fields *f)
{
	struct meta_rec q;
	int rc = get_ns_key(f, &q);
	if (rc)
		return rc;
	struct meta_rec *r = NULL;
	rc = meta_rec_get(c->srv->meta, c->tenant, q.ns, q.ns_len, q.key, q.key_len, &r);
	if (rc)
		return map_err(rc);
	size_t cap = rec_size(r);
	uint8_t *buf = malloc(cap);
	if (!buf) {
		meta_rec_free(r);
		return KVT_ENOMEM;
	}
	struct kvt_fields_writer w;
	kvt_fw_init(&w, buf, cap);
	write_rec(&w, r, false);
	rc = w.err ? KVT_EIO : 0;
	if (!rc)
		conn_reply(c, h->opcode, h->request_id, 0, buf, w.len);
	free(buf);
	meta_rec_free(r);
	return rc;
}

static int do_mem_delete(struct conn *c, const struct kvt_hdr *h, const struct kvt_fields *f)
{
	struct meta_rec q;
	int rc = get_ns_key(f, &q);
	if (rc)
		return rc;
	struct async_req *a = async_begin(c, h);
	if (!a)
		return KVT_ENOMEM;
	rc = meta_rec_delete(c->srv->meta, c->tenant, q.ns, q.ns_len, q.key, q.key_len, mem_done, a);
	if (rc) {
		c->inflight--;
		free(a);
		conn_put(c);
		return map_err(rc);
	}
	return 0;
}

/* Send records as ENTRY fields (+ SCORE for search), stopping before REPLY_MAX. */
static int reply_records(struct conn *c, const struct kvt_hdr *h, struct meta_rec **list,
			 size_t n, bool more, bool score)
{
	size_t cap = 64;
	size_t fit = 0;
	for (; fit < n; fit++) {
		size_t sz = rec_size(list[fit]) + kvt_fw_size(4);
		if (cap + sz > REPLY_MAX) {
			more = true;
			break;
		}
		cap += sz;
	}
	uint8_t *buf = malloc(cap);
	if (!buf)
		return KVT_ENOMEM;
	struct kvt_fields_writer w;
	kvt_fw_init(&w, buf, cap);
	for (size_t i = 0; i < fit; i++) {
		size_t mark = kvt_fw_begin(&w, KVT_TAG_ENTRY);
		write_rec(&w, list[i], score);
		kvt_fw_end(&w, mark);
	}
	kvt_fw_u8(&w, KVT_TAG_MORE, more);
	int rc = w.err ? KVT_EIO : 0;
	if (!rc)
		conn_reply(c, h->opcode, h->request_id, 0, buf, w.len);
	free(buf);
	return rc;
}

static int do_mem_list(struct conn *c, const struct kvt_hdr *h, const struct kvt_fields *f)
{
	const char *prefix, *after_ns, *after;
	uint16_t pl, anl, al;
	uint32_t limit;
	int rc = get_name(f, KVT_TAG_PREFIX, &prefix, &pl, false);
	if (!rc)
		rc = get_name(f, KVT_TAG_AFTER_NS, &after_ns, &anl, false);
	if (!rc)
		rc = get_name(f, KVT_TAG_AFTER, &after, &al, false);
	if (!rc) {
		rc = kvt_fields_u32(f, KVT_TAG_LIMIT, &limit);
		if (rc == KVT_ENOENT)
			rc = KVT_EBADMSG;
	}
	if (rc)
		return rc;
	if (limit == 0 || limit > LIST_MAX)
		return KVT_EINVAL;
	struct meta_rec **list = NULL;
	size_t n = 0;
	bool more = false;
	rc = meta_rec_list(c->srv->meta, c->tenant, prefix, pl, after_ns, anl, after, al, limit,
			   &list, &n, &more);
	if (rc)
		return map_err(rc);
	rc = reply_records(c, h, list, n, more, false);
	for (size_t i = 0; i < n; i++)
		meta_rec_free(list[i]);
	free(list);
	return rc;
}

static int do_mem_search(struct conn *c, const struct kvt_hdr *h, const struct kvt_fields *f)
{
	const char *prefix;
	uint16_t pl;
	uint32_t k, dim;
	float *query = NULL;
	int rc = get_name(f, KVT_TAG_PREFIX, &prefix, &pl, false);
	if (!rc) {
		rc = kvt_fields_u32(f, KVT_TAG_K, &k);
		if (rc == KVT_ENOENT)
			rc = KVT_EBADMSG;
	}
	if (!rc && (k == 0 || k > LIST_MAX))
		rc = KVT_EINVAL;
	if (!rc)
		rc = get_embedding(f, &query, &dim, true);
	if (rc)
		return rc;
	struct meta_rec **list = NULL;
	size_t n = 0;
	rc = meta_rec_search(c->srv->meta, c->tenant, prefix, pl, query, dim, k, &list, &n);
	free(query);
	if (rc)
		return map_err(rc);
	rc = reply_records(c, h, list, n, false, true);
	for (size_t i = 0; i < n; i++)
		meta_rec_free(list[i]);
	free(list);
	return rc;
}

/* ---- dispatch, lifecycle, stats -------------------------------------------------- */

bool ctxmem_handles(uint16_t opcode)
{
	return (opcode >= KVT_OP_CTX_SAVE && opcode <= KVT_OP_CTX_DELETE) ||
	       (opcode >= KVT_OP_MEM_PUT && opcode <= KVT_OP_MEM_SEARCH);
}

void ctxmem_dispatch(struct conn *c, const struct kvt_hdr *h, const uint8_t *body)
{
	struct kvt_fields f;
	int rc = kvt_fields_decode(body, h->body_len, &f);
	if (!rc && !c->srv->meta)
		rc = KVT_EOPNOTSUPP;
	if (!rc) {
		switch (h->opcode) {
		case KVT_OP_CTX_SAVE: rc = do_ctx_save(c, h, &f); break;
		case KVT_OP_CTX_LOAD: rc = do_ctx_load(c, h, &f); break;
		case KVT_OP_CTX_LIST: rc = do_ctx_list(c, h, &f); break;
		case KVT_OP_CTX_DELETE: rc = do_ctx_delete(c, h, &f); break;
		case KVT_OP_MEM_PUT: rc = do_mem_put(c, h, &f); break;
		case KVT_OP_MEM_GET: rc = do_mem_get(c, h, &f); break;
		case KVT_OP_MEM_DELETE: rc = do_mem_delete(c, h, &f); break;
		case KVT_OP_MEM_LIST: rc = do_mem_list(c, h, &f); break;
		case KVT_OP_MEM_SEARCH: rc = do_mem_search(c, h, &f); break;
		default: rc = KVT_EOPCODE; break;
		}
	}
	if (rc)
		reply_status(c, h, rc);
}

static char meta_tag;

/* ---- start-up reconciliation of context references ------------------------------- */

struct ref_count {
	struct t1_key key;
	uint32_t n;
};

struct ref_list {
	struct ref_count *v;
	size_t n, cap;
};

static int ref_list_add(struct ref_list *l, const struct t1_key *key, uint32_t n)
{
	if (l->n == l->cap) {
		size_t ncap = l->cap ? l->cap * 2 : 1024;
		struct ref_count *nv = realloc(l->v, ncap * sizeof(*nv));

		if (!nv)
			return -ENOMEM;
		l->v = nv;
		l->cap = ncap;
	}
	l->v[l->n++] = (struct ref_count){ *key, n };
	return 0;
}

static int cmp_ref_key(const struct t1_key *a, const struct t1_key *b)
{
	if (a->tenant != b->tenant)
		return a->tenant < b->tenant ? -1 : 1;
	return memcmp(a->key.b, b->key.b, sizeof(a->key.b));
}

static int cmp_ref(const void *a, const void *b)
{
	return cmp_ref_key(&((const struct ref_count *)a)->key,
			   &((const struct ref_count *)b)->key);
}

/* Sort and merge equal keys, adding their counts (saturating). */
static void ref_list_merge(struct ref_list *l)
{
	size_t out = 0;

	if (l->n)
		qsort(l->v, l->n, sizeof(*l->v), cmp_ref);
	for (size_t i = 0; i < l->n; i++) {
		if (out && cmp_ref_key(&l->v[out - 1].key, &l->v[i].key) == 0) {
			uint32_t *n = &l->v[out - 1].n;

			*n = UINT32_MAX - *n < l->v[i].n ? UINT32_MAX : *n + l->v[i].n;
		} else {
			l->v[out++] = l->v[i];
		}
	}
	l->n = out;
}

static int want_manifest(void *arg, const struct meta_ctx *mc)
{
	for (uint32_t i = 0; i < mc->nkeys; i++) {
		struct t1_key tk = { .tenant = mc->tenant, .key = mc->keys[i] };

		if (ref_list_add(arg, &tk, 1))
			return -ENOMEM;
	}
	return 0;
}

static int have_ref(void *arg, const struct t1_key *key, uint32_t refs)
{
	return ref_list_add(arg, key, refs) ? -ENOMEM : 0;
}

struct reconcile {
	uint64_t dropped, restored; /* references */
	uint64_t blocks_fixed, missing, failed;
	size_t manifests_corrupt;
	bool keep_extra; /* drop nothing (see reconcile_refs) */
};

/* Bring key's references from have to want. */
static void reconcile_key(struct server *s, const struct t1_key *key, uint32_t want,
			  uint32_t have, struct reconcile *r)
{
	if (want == have)
		return;
	if (want < have && r->keep_extra)
		return;
	if (want > have && tier2_lookup(s, key, NULL) != 0) {
		r->missing++; /* a manifest names a block the NVMe tier no longer has */
		return;
	}
	r->blocks_fixed++;
	for (; have > want; have--) {
		if (tier2_unref(s, key)) {
			r->failed++;
			return;
		}
		r->dropped++;
	}
	for (; have < want; have++) {
		if (tier2_ref(s, key)) {
			r->failed++;
			return;
		}
		r->restored++;
	}
}

static void reconcile_flushed(void *arg, int status)
{
	(void)arg;
	if (status)
		log_error("context references reconciled at start-up could not be made durable: "
			  "%s; they are checked again at the next start", strerror(-status));
}

/*
 * Set every block's context references to the number of times the manifests name
 * it. Runs before the socket is served and before the expiry sweeper's first
 * tick, so no save, delete or expiry is in flight and both stores are settled.
 * Cost: one pass over the manifests and one over the NVMe index.
 */
static void reconcile_refs(struct server *s)
{
	struct ref_list want = { 0 }, have = { 0 };
	struct reconcile r = { 0 };
	struct timespec t0, t1;
	size_t i = 0, j = 0;
	int rc;

	clock_gettime(CLOCK_MONOTONIC, &t0);
	rc = meta_ctx_foreach(s->meta, want_manifest, &want, &r.manifests_corrupt);
	if (rc == 0)
		rc = tier2_foreach_ref(s, have_ref, &have);
	if (rc) {
		log_warn("context references were not checked at start-up: %s",
			 rc == -EBUSY ? "NVMe index operations still queued" : strerror(-rc));
		goto out;
	}
	ref_list_merge(&want);
	ref_list_merge(&have);
	/* Drop nothing when an unreadable manifest may be the one holding the
	 * references, or when the metadata store was created just now while the NVMe
	 * index holds references: more likely a store moved away or a volume not
	 * mounted than every context gone. */
	bool fresh = meta_was_created(s->meta) && have.n > 0;
	r.keep_extra = r.manifests_corrupt > 0 || fresh;
	if (fresh)
		log_error("the metadata store %s/meta was created at this start, but %zu NVMe "
			  "blocks hold context references: they are kept, not reconciled (was "
			  "meta/ moved, deleted or not mounted?); the next start reconciles them",
			  s->cfg->data_dir, have.n);
	while (i < want.n || j < have.n) {
		int c = i == want.n   ? 1
			: j == have.n ? -1
				      : cmp_ref_key(&want.v[i].key, &have.v[j].key);

		if (c < 0) {
			reconcile_key(s, &want.v[i].key, want.v[i].n, 0, &r);
			i++;
		} else if (c > 0) {
			reconcile_key(s, &have.v[j].key, 0, have.v[j].n, &r);
			j++;
		} else {
			reconcile_key(s, &want.v[i].key, want.v[i].n, have.v[j].n, &r);
			i++;
			j++;
		}
	}
	clock_gettime(CLOCK_MONOTONIC, &t1);
	s->ctx_refs_dropped = r.dropped;
	s->ctx_refs_restored = r.restored;
	if (r.blocks_fixed || r.failed) {
		log_warn("context references reconciled with the manifests: %llu blocks fixed, "
			 "%llu leaked references dropped, %llu missing ones taken%s",
			 (unsigned long long)r.blocks_fixed, (unsigned long long)r.dropped,
			 (unsigned long long)r.restored,
			 r.failed ? " (some changes failed; checked again at the next start)" : "");
		tier2_flush(s, reconcile_flushed, NULL);
	}
	if (r.manifests_corrupt)
		log_warn("%zu context manifests fail their checksum: references no readable "
			 "manifest accounts for are kept", r.manifests_corrupt);
	if (r.missing)
		log_warn("saved contexts name %llu blocks the NVMe tier does not hold; loading "
			 "those contexts reports them missing", (unsigned long long)r.missing);
	log_info("context references checked: %zu blocks named by manifests, %zu with "
		 "references, in %.1f ms", want.n, have.n,
		 (double)(t1.tv_sec - t0.tv_sec) * 1e3 + (double)(t1.tv_nsec - t0.tv_nsec) / 1e6);
out:
	free(want.v);
	free(have.v);
}

static void expired_ctx(void *arg, const struct meta_ctx *mc)
{
	unref_manifest(arg, mc);
}

int ctxmem_open(struct server *s)
{
	struct meta_config mcfg = {
		.dir = s->cfg->data_dir,
		.value_max = (uint32_t)s->cfg->mem_value_max,
	};
	char err[512] = "";
	int rc = meta_open(&mcfg, &s->meta, err, sizeof(err));
	if (rc) {
		log_error("contexts and memory records in %s could not be opened: %s",
			  s->cfg->data_dir, err[0] ? err : strerror(-rc));
		return rc;
	}
	if (err[0])
		log_warn("metadata store: %s", err);
	meta_set_expire_hook(s->meta, expired_ctx, s);
	if (tier2_active(s))
		reconcile_refs(s);
	struct epoll_event e = { .events = EPOLLIN, .data.ptr = &meta_tag };
	if (epoll_ctl(s->epfd, EPOLL_CTL_ADD, meta_eventfd(s->meta), &e) < 0) {
		rc = -errno;
		meta_close(s->meta);
		s->meta = NULL;
		return rc;
	}
	log_info("contexts and memory records: %s/meta%s", s->cfg->data_dir,
		 tier2_active(s) ? "" : " (contexts need the NVMe tier: nvme_capacity is 0)");
	return 0;
}

void ctxmem_close(struct server *s)
{
	meta_close(s->meta);
	s->meta = NULL;
}

bool ctxmem_is_tag(const void *tag)
{
	return tag == &meta_tag;
}

void ctxmem_handle(struct server *s)
{
	meta_reap(s->meta);
}

void ctxmem_tick(struct server *s)
{
	if (s->meta)
		meta_tick(s->meta);
}

bool ctxmem_busy(const struct server *s)
{
	return s->meta && meta_inflight(s->meta) > 0;
}

bool ctxmem_failed(const struct server *s)
{
	return s->meta && meta_failed(s->meta);
}

struct tenant_walk {
	struct kvt_stats_writer *w;
	bool all;
	uint32_t only;
};

static void tenant_cb(const struct meta_tenant_stats *ts, void *arg)
{
	struct tenant_walk *tw = arg;
	if (!tw->all && ts->tenant != tw->only)
		return;
	char name[KVT_STAT_NAME_MAX];
	snprintf(name, sizeof(name), "tenant.%u.contexts", ts->tenant);
	kvt_stats_writer_u64(tw->w, name, ts->contexts);
	snprintf(name, sizeof(name), "tenant.%u.context_bytes", ts->tenant);
	kvt_stats_writer_u64(tw->w, name, ts->context_bytes);
	snprintf(name, sizeof(name), "tenant.%u.records", ts->tenant);
	kvt_stats_writer_u64(tw->w, name, ts->records);
	snprintf(name, sizeof(name), "tenant.%u.record_bytes", ts->tenant);
	kvt_stats_writer_u64(tw->w, name, ts->record_bytes);
}

void ctxmem_stats(struct conn *c, struct kvt_stats_writer *w)
{
	struct server *s = c->srv;
	if (!s->meta)
		return;
	if (c->admin) {
		struct meta_stats ms;
		meta_get_stats(s->meta, &ms);
		kvt_stats_writer_u64(w, "meta.commits", ms.commits);
		kvt_stats_writer_u64(w, "meta.writes", ms.writes);
		kvt_stats_writer_u64(w, "meta.fsyncs", ms.fsyncs);
		kvt_stats_writer_u64(w, "meta.expired", ms.expired);
		kvt_stats_writer_u64(w, "meta.refs_dropped", s->ctx_refs_dropped);
		kvt_stats_writer_u64(w, "meta.refs_restored", s->ctx_refs_restored);
	}
	struct tenant_walk tw = { w, c->admin, c->tenant };
	meta_foreach_tenant(s->meta, tenant_cb, &tw);
}
