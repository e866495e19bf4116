/*
 * ctx.c - libkvtier contexts (CTX_SAVE, CTX_LOAD, CTX_LIST, CTX_DELETE), and the
 * helpers for field-list requests that mem.c shares. Requests are written with the
 * field writer of common/proto.c; a reply is checked field by field (present,
 * right size, agreeing with what was asked) before anything reaches the caller,
 * and every result is a single allocation.
 */
#include <limits.h>
#include <stdlib.h>
#include <string.h>

#include "client.h"
#include "export.h"

_Static_assert(sizeof(kvt_key) == KVT_KEY_SIZE, "kvt_key arrays are the wire's key lists");

/* ---- shared helpers -------------------------------------------------------------- */

int kvt_name_arg(const char *s, size_t min, size_t *len)
{
	size_t n = s ? strnlen(s, KVT_NAME_LEN_MAX + 1) : 0;

	if (n < min || n > KVT_NAME_LEN_MAX)
		return KVT_EINVAL;
	*len = n;
	return 0;
}

int kvt_name_field(const struct kvt_fields *f, unsigned tag, char out[KVT_NAME_LEN_MAX + 1],
		   size_t *len)
{
	const uint8_t *p;
	uint32_t n;

	if (kvt_fields_bytes(f, tag, 1, KVT_NAME_LEN_MAX, &p, &n))
		return KVT_EBADMSG;
	/* A NUL inside would silently cut the C string the caller gets. */
	if (memchr(p, 0, n))
		return KVT_EBADMSG;
	memcpy(out, p, n);
	out[n] = '\0';
	if (len)
		*len = n;
	return 0;
}

int kvt_more_field(const struct kvt_fields *f, bool *more)
{
	uint8_t v;

	if (kvt_fields_u8(f, KVT_TAG_MORE, &v) || v > 1)
		return KVT_EBADMSG;
	*more = v != 0;
	return 0;
}

int kvt_name_cmp(const char *a, size_t alen, const char *b, size_t blen)
{
	size_t n = alen < blen ? alen : blen;
	int d = n ? memcmp(a, b, n) : 0; /* an empty cursor may be NULL */

	if (d)
		return d;
	return alen < blen ? -1 : alen > blen;
}

const void *kvt_le32_image(const void *v, size_t n, void **tmp)
{
	*tmp = NULL;
#if __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
	(void)n;
	return v;
#else
	uint8_t *b = malloc(n ? 4 * n : 1);

	if (!b)
		return NULL;
	for (size_t i = 0; i < n; i++) {
		uint32_t u;

		memcpy(&u, (const uint8_t *)v + 4 * i, 4);
		kvt_put32(b + 4 * i, u);
	}
	*tmp = b;
	return b;
#endif
}

void kvt_le32_copy(void *dst, const uint8_t *src, size_t n)
{
	for (size_t i = 0; i < n; i++) {
		uint32_t u = kvt_get32(src + 4 * i);

		memcpy((uint8_t *)dst + 4 * i, &u, 4);
	}
}

int kvt_fw_result(const struct kvt_fields_writer *w)
{
	if (w->err)
		return w->err;
	return w->len > INT_MAX ? KVT_EMSGSIZE : (int)w->len;
}

int kvt_empty_reply(struct kvt_conn *c, struct kvt_op *op, const struct kvt_req *rq,
		    const uint8_t *body, size_t len)
{
	struct kvt_fields f;

	(void)c;
	(void)op;
	(void)rq;
	return kvt_fields_decode(body, len, &f);
}

/* ---- CTX_SAVE -------------------------------------------------------------------- */

struct save_args {
	const kvt_context *ctx;
	size_t name_len;
	const void *tokens;  /* wire image of ctx->tokens, or NULL */
	bool have_missing;   /* a KVT_ENOENT reply named the block */
	uint32_t missing;
};

static int save_encode(struct kvt_conn *c, struct kvt_op *op, size_t first, size_t count,
		       uint8_t *out, size_t cap)
{
	const struct save_args *a = op->ctx;
	const kvt_context *x = a->ctx;
	struct kvt_fields_writer w;

	(void)c;
	(void)first;
	(void)count;
	kvt_fw_init(&w, out, cap);
	kvt_fw_bytes(&w, KVT_TAG_NAME, x->name, a->name_len);
	kvt_fw_bytes(&w, KVT_TAG_SALT, x->model_salt.b, KVT_KEY_SIZE);
	kvt_fw_u64(&w, KVT_TAG_TOKEN_COUNT, x->token_count);
	kvt_fw_bytes(&w, KVT_TAG_KEYS, x->keys, x->nkeys * KVT_KEY_SIZE);
	if (a->tokens)
		kvt_fw_bytes(&w, KVT_TAG_TOKENS, a->tokens, (size_t)x->token_count * 4);
	if (x->metadata_len)
		kvt_fw_bytes(&w, KVT_TAG_METADATA, x->metadata, x->metadata_len);
	if (x->ttl_s)
		kvt_fw_u32(&w, KVT_TAG_TTL_S, x->ttl_s);
	return kvt_fw_result(&w);
}

/* Called for error replies too (op->error_body): KVT_ENOENT is the one status whose
 * body says something, the index of the first block stored nowhere. */
static int save_reply(struct kvt_conn *c, struct kvt_op *op, const struct kvt_req *rq,
		      const uint8_t *body, size_t len)
{
	struct save_args *a = op->ctx;
	struct kvt_fields f;
	uint32_t idx;
	int rc;

	(void)c;
	(void)rq;
	if (op->reply_status && op->reply_status != KVT_ENOENT)
		return op->reply_status;
	rc = kvt_fields_decode(body, len, &f);
	if (rc || op->reply_status == 0)
		return rc;
	if (kvt_fields_u32(&f, KVT_TAG_MISSING, &idx) || idx >= a->ctx->nkeys)
		return KVT_EBADMSG;
	a->missing = idx;
	a->have_missing = true;
	return KVT_ENOENT;
}

KVT_EXPORT int kvt_ctx_save(kvt_conn *c, const kvt_context *ctx, size_t *missing)
{
	struct save_args a = { .ctx = ctx };
	struct kvt_op op;
	void *tmp = NULL;
	int rc;

	if (!c || !ctx)
		return KVT_EINVAL;
	rc = kvt_name_arg(ctx->name, 1, &a.name_len);
	if (rc)
		return rc;
	if (ctx->nkeys == 0 || ctx->nkeys > c->info.max_batch || !ctx->keys)
		return KVT_EINVAL;
	if (ctx->metadata_len > KVT_CTX_META_MAX || (ctx->metadata_len && !ctx->metadata))
		return KVT_EINVAL;
	if (ctx->tokens && ctx->token_count) {
		/* Bounded before the copy a big-endian host makes. */
		if (ctx->token_count > c->info.max_frame / 4)
			return KVT_EMSGSIZE;
		a.tokens = kvt_le32_image(ctx->tokens, (size_t)ctx->token_count, &tmp);
		if (!a.tokens)
			return KVT_ENOMEM;
	}
	kvt_op_init_single(&op, KVT_OP_CTX_SAVE, 0, save_encode, save_reply, &a);
	op.error_body = true;
	rc = kvt_op_run_fields(c, &op);
	free(tmp);
	if (rc == KVT_ENOENT && a.have_missing && missing)
		*missing = a.missing;
	return rc;
}

/* ---- CTX_LOAD -------------------------------------------------------------------- */

struct load_args {
	const char *name;
	size_t name_len;
	uint8_t tier;
	uint32_t deadline_ms;
	kvt_ctx_info *out;
};

static int load_encode(struct kvt_conn *c, struct kvt_op *op, size_t first, size_t count,
		       uint8_t *out, size_t cap)
{
	const struct load_args *a = op->ctx;
	struct kvt_fields_writer w;

	(void)c;
	(void)first;
	(void)count;
	kvt_fw_init(&w, out, cap);
	kvt_fw_bytes(&w, KVT_TAG_NAME, a->name, a->name_len);
	kvt_fw_u8(&w, KVT_TAG_TIER, a->tier);
	kvt_fw_u32(&w, KVT_TAG_DEADLINE_MS, a->deadline_ms);
	return kvt_fw_result(&w);
}

/* An optional bytes field: absent (*p NULL, 0), present within [min, max] (0), or
 * KVT_EBADMSG. */
static int opt_bytes(const struct kvt_fields *f, unsigned tag, size_t min, size_t max,
		     const uint8_t **p, uint32_t *len)
{
	int rc = kvt_fields_bytes(f, tag, min, max, p, len);

	if (rc == KVT_ENOENT) {
		*p = NULL;
		*len = 0;
		return 0;
	}
	return rc ? KVT_EBADMSG : 0;
}

static int load_reply(struct kvt_conn *c, struct kvt_op *op, const struct kvt_req *rq,
		      const uint8_t *body, size_t len)
{
	struct load_args *a = op->ctx;
	const uint8_t *salt, *keys, *tiers, *tokens, *meta;
	uint32_t slen, klen, tlen, toklen, mlen, resident;
	uint64_t token_count, bytes, created, expires;
	char name[KVT_NAME_LEN_MAX + 1];
	struct kvt_fields f;
	kvt_ctx_info *info;
	size_t nlen, n;
	uint8_t *pool;
	int rc;

	(void)c;
	(void)rq;
	rc = kvt_fields_decode(body, len, &f);
	if (rc)
		return rc;
	/* A manifest of another context than the one asked for is no answer. */
	if (kvt_name_field(&f, KVT_TAG_NAME, name, &nlen) || nlen != a->name_len ||
	    memcmp(name, a->name, nlen) != 0)
		return KVT_EBADMSG;
	if (kvt_fields_bytes(&f, KVT_TAG_SALT, KVT_KEY_SIZE, KVT_KEY_SIZE, &salt, &slen) ||
	    kvt_fields_bytes(&f, KVT_TAG_KEYS, KVT_KEY_SIZE, UINT32_MAX, &keys, &klen) ||
	    klen % KVT_KEY_SIZE != 0)
		return KVT_EBADMSG;
	n = klen / KVT_KEY_SIZE;
	if (kvt_fields_bytes(&f, KVT_TAG_TIERS, n, n, &tiers, &tlen) ||
	    kvt_fields_u32(&f, KVT_TAG_RESIDENT, &resident) || resident > n ||
	    kvt_fields_u64(&f, KVT_TAG_TOKEN_COUNT, &token_count) ||
	    kvt_fields_u64(&f, KVT_TAG_BYTES, &bytes) ||
	    kvt_fields_u64(&f, KVT_TAG_CREATED_MS, &created) ||
	    kvt_fields_u64(&f, KVT_TAG_EXPIRES_MS, &expires))
		return KVT_EBADMSG;
	for (size_t i = 0; i < n; i++)
		if (tiers[i] > KVT_TIER_NVME && tiers[i] != KVT_TIER_NONE)
			return KVT_EBADMSG;
	if (opt_bytes(&f, KVT_TAG_TOKENS, 0, UINT32_MAX, &tokens, &toklen) ||
	    opt_bytes(&f, KVT_TAG_METADATA, 0, KVT_CTX_META_MAX, &meta, &mlen))
		return KVT_EBADMSG;
	/* Token ids, when saved, are exactly token_count of them. */
	if (tokens && (toklen % 4 != 0 || toklen / 4 != token_count))
		return KVT_EBADMSG;

	/* One allocation: the info, then token ids (4-aligned: the struct's size is a
	 * multiple of its pointer alignment), keys, tiers, metadata and a NUL. */
	info = malloc(sizeof(*info) + toklen + klen + n + mlen + 1);
	if (!info)
		return KVT_ENOMEM;
	memset(info, 0, sizeof(*info));
	pool = (uint8_t *)(info + 1);
	memcpy(info->name, name, nlen + 1);
	kvt_key_decode(salt, &info->model_salt);
	info->token_count = token_count;
	if (toklen) {
		info->tokens = (uint32_t *)(void *)pool;
		info->ntokens = toklen / 4;
		kvt_le32_copy(info->tokens, tokens, info->ntokens);
		pool += toklen;
	}
	info->nkeys = n;
	info->keys = (kvt_key *)(void *)pool;
	memcpy(info->keys, keys, klen);
	pool += klen;
	info->tiers = pool;
	memcpy(info->tiers, tiers, n);
	pool += n;
	info->resident = resident;
	if (mlen) {
		info->metadata = pool;
		info->metadata_len = mlen;
		memcpy(pool, meta, mlen);
	}
	pool[mlen] = '\0';
	info->bytes = bytes;
	info->created_ms = created;
	info->expires_ms = expires;
	a->out = info;
	return 0;
}

KVT_EXPORT int kvt_ctx_load(kvt_conn *c, const char *name, uint8_t tier, uint32_t deadline_ms,
			    kvt_ctx_info **out)
{
	struct load_args a = { .name = name, .tier = tier, .deadline_ms = deadline_ms };
	struct kvt_op op;
	int rc;

	if (!c || !out || tier > KVT_TIER_NVME)
		return KVT_EINVAL;
	rc = kvt_name_arg(name, 1, &a.name_len);
	if (rc)
		return rc;
	kvt_op_init_single(&op, KVT_OP_CTX_LOAD, 0, load_encode, load_reply, &a);
	rc = kvt_op_run_fields(c, &op);
	if (rc) {
		free(a.out);
		return rc;
	}
	*out = a.out;
	return 0;
}

KVT_EXPORT void kvt_ctx_free(kvt_ctx_info *info)
{
	free(info);
}

/* ---- CTX_LIST -------------------------------------------------------------------- */

struct list_args {
	const char *prefix, *after;
	size_t prefix_len, after_len;
	uint32_t limit;
	kvt_ctx_info *list;
	size_t n;
	bool more;
};

static int list_encode(struct kvt_conn *c, struct kvt_op *op, size_t first, size_t count,
		       uint8_t *out, size_t cap)
{
	const struct list_args *a = op->ctx;
	struct kvt_fields_writer w;

	(void)c;
	(void)first;
	(void)count;
	kvt_fw_init(&w, out, cap);
	if (a->prefix_len)
		kvt_fw_bytes(&w, KVT_TAG_PREFIX, a->prefix, a->prefix_len);
	if (a->after_len)
		kvt_fw_bytes(&w, KVT_TAG_AFTER, a->after, a->after_len);
	kvt_fw_u32(&w, KVT_TAG_LIMIT, a->limit);
	return kvt_fw_result(&w);
}

/* One CTX_LIST entry into *e; prev (prev_len) is the name it must come after. */
static int list_entry(const struct list_args *a, const uint8_t *val, uint32_t len,
		      const char *prev, size_t prev_len, kvt_ctx_info *e)
{
	struct kvt_fields f;
	uint32_t nkeys;
	size_t nlen;
	int rc;

	rc = kvt_fields_decode(val, len, &f);
	if (rc)
		return rc;
	if (kvt_name_field(&f, KVT_TAG_NAME, e->name, &nlen) ||
	    kvt_fields_u64(&f, KVT_TAG_TOKEN_COUNT, &e->token_count) ||
	    kvt_fields_u32(&f, KVT_TAG_NKEYS, &nkeys) ||
	    kvt_fields_u64(&f, KVT_TAG_BYTES, &e->bytes) ||
	    kvt_fields_u64(&f, KVT_TAG_CREATED_MS, &e->created_ms) ||
	    kvt_fields_u64(&f, KVT_TAG_EXPIRES_MS, &e->expires_ms))
		return KVT_EBADMSG;
	/* Only names under the prefix, in ascending order after the cursor: anything
	 * else would make the caller's next page skip or repeat names. */
	if (nlen < a->prefix_len ||
	    (a->prefix_len && memcmp(e->name, a->prefix, a->prefix_len) != 0))
		return KVT_EBADMSG;
	if (prev && kvt_name_cmp(e->name, nlen, prev, prev_len) <= 0)
		return KVT_EBADMSG;
	e->nkeys = nkeys;
	return 0;
}

static int list_reply(struct kvt_conn *c, struct kvt_op *op, const struct kvt_req *rq,
		      const uint8_t *body, size_t len)
{
	struct list_args *a = op->ctx;
	struct kvt_fields f;
	kvt_ctx_info *list = NULL;
	const char *prev = a->after_len ? a->after : NULL;
	size_t prev_len = a->after_len, i = 0, pos = 0;
	const uint8_t *val;
	uint32_t vlen;
	bool more;
	int rc;

	(void)c;
	(void)rq;
	rc = kvt_fields_decode(body, len, &f);
	if (rc)
		return rc;
	if (kvt_more_field(&f, &more) || f.nentries > a->limit)
		return KVT_EBADMSG;
	if (f.nentries) {
		list = calloc(f.nentries, sizeof(*list));
		if (!list)
			return KVT_ENOMEM;
	}
	while ((rc = kvt_fields_next_entry(&f, &pos, &val, &vlen)) == 1) {
		if (i == f.nentries) {
			rc = KVT_EBADMSG;
			break;
		}
		rc = list_entry(a, val, vlen, prev, prev_len, &list[i]);
		if (rc)
			break;
		prev = list[i].name;
		prev_len = strlen(prev);
		i++;
	}
	if (rc == 0 && i != f.nentries)
		rc = KVT_EBADMSG;
	if (rc) {
		free(list);
		return rc;
	}
	a->list = list;
	a->n = i;
	a->more = more;
	return 0;
}

KVT_EXPORT int kvt_ctx_list(kvt_conn *c, const char *prefix, const char *after, size_t cap,
			    kvt_ctx_info **list, size_t *n, bool *more)
{
	struct list_args a = { .prefix = prefix, .after = after };
	struct kvt_op op;
	int rc;

	if (!c || !list || !n || cap == 0)
		return KVT_EINVAL;
	if (kvt_name_arg(prefix, 0, &a.prefix_len) || kvt_name_arg(after, 0, &a.after_len))
		return KVT_EINVAL;
	/* More than a page can hold is still "at most cap": the rest comes with more. */
	a.limit = cap < KVT_LIST_LIMIT_MAX ? (uint32_t)cap : KVT_LIST_LIMIT_MAX;
	kvt_op_init_single(&op, KVT_OP_CTX_LIST, 0, list_encode, list_reply, &a);
	rc = kvt_op_run_fields(c, &op);
	if (rc) {
		free(a.list);
		return rc;
	}
	*list = a.list;
	*n = a.n;
	if (more)
		*more = a.more;
	return 0;
}

KVT_EXPORT void kvt_ctx_list_free(kvt_ctx_info *list, size_t n)
{
	(void)n; /* one allocation, whatever n */
	free(list);
}

/* ---- CTX_DELETE ------------------------------------------------------------------ */

struct name_args {
	const char *name;
	size_t name_len;
};

static int delete_encode(struct kvt_conn *c, struct kvt_op *op, size_t first, size_t count,
			 uint8_t *out, size_t cap)
{
	const struct name_args *a = op->ctx;
	struct kvt_fields_writer w;

	(void)c;
	(void)first;
	(void)count;
	kvt_fw_init(&w, out, cap);
	kvt_fw_bytes(&w, KVT_TAG_NAME, a->name, a->name_len);
	return kvt_fw_result(&w);
}

KVT_EXPORT int kvt_ctx_delete(kvt_conn *c, const char *name)
{
	struct name_args a = { .name = name };
	struct kvt_op op;
	int rc;

	if (!c)
		return KVT_EINVAL;
	rc = kvt_name_arg(name, 1, &a.name_len);
	if (rc)
		return rc;
	kvt_op_init_single(&op, KVT_OP_CTX_DELETE, 0, delete_encode, kvt_empty_reply, &a);
	return kvt_op_run_fields(c, &op);
}
