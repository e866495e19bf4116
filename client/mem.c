/*
 * mem.c - libkvtier memory records: MEM_PUT, MEM_GET, MEM_DELETE, MEM_LIST and
 * MEM_SEARCH. Requests are field lists (see ctx.c for the shared helpers); every
 * record in a reply is checked completely - names, sizes, embedding dimension,
 * order, prefix - before the result is built, as one allocation the caller frees.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "client.h"
#include "export.h"

/* A record of a reply, checked, as views into the body. */
struct rec_view {
	const char *ns, *key;
	size_t ns_len, key_len;
	const uint8_t *value, *meta, *emb;
	uint32_t value_len, meta_len, dim;
	uint64_t created, updated, expires;
	float score;
};

static bool f32_bits_finite(uint32_t u)
{
	return (u & 0x7f800000u) != 0x7f800000u;
}

static bool floats_finite(const float *v, size_t n)
{
	for (size_t i = 0; i < n; i++)
		if (!isfinite(v[i]))
			return false;
	return true;
}

/* A name field as a view: 1..KVT_NAME_LEN_MAX bytes without NUL, else KVT_EBADMSG. */
static int name_view(const struct kvt_fields *f, unsigned tag, const char **p, size_t *len)
{
	const uint8_t *v;
	uint32_t n;

	if (kvt_fields_bytes(f, tag, 1, KVT_NAME_LEN_MAX, &v, &n) || memchr(v, 0, n))
		return KVT_EBADMSG;
	*p = (const char *)v;
	*len = n;
	return 0;
}

/* Parse one record (a MEM_GET body or a list/search entry); scored: SCORE required. */
static int rec_parse(const uint8_t *in, size_t len, bool scored, struct rec_view *v)
{
	struct kvt_fields f;
	uint32_t elen, score;
	int rc;

	rc = kvt_fields_decode(in, len, &f);
	if (rc)
		return rc;
	if (name_view(&f, KVT_TAG_NS, &v->ns, &v->ns_len) ||
	    name_view(&f, KVT_TAG_KEY, &v->key, &v->key_len) ||
	    kvt_fields_bytes(&f, KVT_TAG_VALUE, 0, UINT32_MAX, &v->value, &v->value_len) ||
	    kvt_fields_u64(&f, KVT_TAG_CREATED_MS, &v->created) ||
	    kvt_fields_u64(&f, KVT_TAG_UPDATED_MS, &v->updated) ||
	    kvt_fields_u64(&f, KVT_TAG_EXPIRES_MS, &v->expires))
		return KVT_EBADMSG;

	rc = kvt_fields_bytes(&f, KVT_TAG_METADATA, 0, KVT_MEM_META_MAX, &v->meta, &v->meta_len);
	if (rc == KVT_ENOENT) {
		v->meta = NULL;
		v->meta_len = 0;
	} else if (rc) {
		return KVT_EBADMSG;
	}

	rc = kvt_fields_bytes(&f, KVT_TAG_EMBEDDING, 4, 4 * KVT_MEM_DIM_MAX, &v->emb, &elen);
	if (rc == KVT_ENOENT) {
		v->emb = NULL;
		v->dim = 0;
	} else if (rc || elen % 4 != 0) {
		return KVT_EBADMSG;
	} else {
		v->dim = elen / 4;
		/* The daemon refuses NaN and Inf on the way in; one coming back is garbage. */
		for (uint32_t i = 0; i < v->dim; i++)
			if (!f32_bits_finite(kvt_get32(v->emb + 4 * (size_t)i)))
				return KVT_EBADMSG;
	}

	v->score = 0;
	if (scored) {
		if (kvt_fields_u32(&f, KVT_TAG_SCORE, &score) || !f32_bits_finite(score))
			return KVT_EBADMSG;
		memcpy(&v->score, &score, sizeof(score));
	}
	return 0;
}

/* Bytes a record needs besides its kvt_mem_item: embedding, value, metadata + NUL. */
static size_t rec_emb_size(const struct rec_view *v)
{
	return 4 * (size_t)v->dim;
}

static size_t rec_data_size(const struct rec_view *v)
{
	return (size_t)v->value_len + v->meta_len + 1;
}

/* Fill it from v: the embedding at *emb (4-aligned), the rest at *data; both advance. */
static void rec_fill(kvt_mem_item *it, const struct rec_view *v, uint8_t **emb, uint8_t **data)
{
	memset(it, 0, sizeof(*it));
	memcpy(it->ns, v->ns, v->ns_len);
	it->ns[v->ns_len] = '\0';
	memcpy(it->key, v->key, v->key_len);
	it->key[v->key_len] = '\0';
	if (v->dim) {
		it->embedding = (float *)(void *)*emb;
		it->dim = v->dim;
		kvt_le32_copy(it->embedding, v->emb, v->dim);
		*emb += rec_emb_size(v);
	}
	it->value = *data;
	it->value_len = v->value_len;
	if (v->value_len)
		memcpy(it->value, v->value, v->value_len);
	*data += v->value_len;
	it->metadata = (char *)*data;
	it->metadata_len = v->meta_len;
	if (v->meta_len)
		memcpy(it->metadata, v->meta, v->meta_len);
	it->metadata[v->meta_len] = '\0';
	*data += (size_t)v->meta_len + 1;
	it->created_ms = v->created;
	it->updated_ms = v->updated;
	it->expires_ms = v->expires;
	it->score = v->score;
}

/* ---- MEM_PUT, MEM_GET, MEM_DELETE ------------------------------------------------- */

struct rec_args {
	const char *ns, *key;
	size_t ns_len, key_len;
	const kvt_mem_record *rec; /* MEM_PUT */
	const void *emb;           /* MEM_PUT: wire image of rec->embedding */
	kvt_mem_item *out;         /* MEM_GET */
};

/* Check ns and key arguments into a. */
static int rec_names(struct rec_args *a, const char *ns, const char *key)
{
	a->ns = ns;
	a->key = key;
	if (kvt_name_arg(ns, 1, &a->ns_len) || kvt_name_arg(key, 1, &a->key_len))
		return KVT_EINVAL;
	return 0;
}

static void rec_names_encode(struct kvt_fields_writer *w, const struct rec_args *a)
{
	kvt_fw_bytes(w, KVT_TAG_NS, a->ns, a->ns_len);
	kvt_fw_bytes(w, KVT_TAG_KEY, a->key, a->key_len);
}

static int put_encode(struct kvt_conn *c, struct kvt_op *op, size_t first, size_t count,
		      uint8_t *out, size_t cap)
{
	const struct rec_args *a = op->ctx;
	const kvt_mem_record *r = a->rec;
	struct kvt_fields_writer w;

	(void)c;
	(void)first;
	(void)count;
	kvt_fw_init(&w, out, cap);
	rec_names_encode(&w, a);
	kvt_fw_bytes(&w, KVT_TAG_VALUE, r->value, r->value_len);
	if (r->metadata_len)
		kvt_fw_bytes(&w, KVT_TAG_METADATA, r->metadata, r->metadata_len);
	if (r->dim)
		kvt_fw_bytes(&w, KVT_TAG_EMBEDDING, a->emb, 4 * (size_t)r->dim);
	if (r->ttl_s)
		kvt_fw_u32(&w, KVT_TAG_TTL_S, r->ttl_s);
	return kvt_fw_result(&w);
}

KVT_EXPORT int kvt_mem_put(kvt_conn *c, const kvt_mem_record *rec)
{
	struct rec_args a = { .rec = rec };
	struct kvt_op op;
	void *tmp = NULL;
	int rc;

	if (!c || !rec)
		return KVT_EINVAL;
	rc = rec_names(&a, rec->ns, rec->key);
	if (rc)
		return rc;
	if ((rec->value_len && !rec->value) || rec->metadata_len > KVT_MEM_META_MAX ||
	    (rec->metadata_len && !rec->metadata) || rec->dim > KVT_MEM_DIM_MAX ||
	    (rec->dim && !rec->embedding))
		return KVT_EINVAL;
	if (rec->dim && !floats_finite(rec->embedding, rec->dim))
		return KVT_EINVAL;
	if (rec->dim) {
		a.emb = kvt_le32_image(rec->embedding, rec->dim, &tmp);
		if (!a.emb)
			return KVT_ENOMEM;
	}
	kvt_op_init_single(&op, KVT_OP_MEM_PUT, 0, put_encode, kvt_empty_reply, &a);
	rc = kvt_op_run_fields(c, &op);
	free(tmp);
	return rc;
}

static int names_encode(struct kvt_conn *c, struct kvt_op *op, size_t first, size_t count,
			uint8_t *out, size_t cap)
{
	struct kvt_fields_writer w;

	(void)c;
	(void)first;
	(void)count;
	kvt_fw_init(&w, out, cap);
	rec_names_encode(&w, op->ctx);
	return kvt_fw_result(&w);
}

static int get_reply(struct kvt_conn *c, struct kvt_op *op, const struct kvt_req *rq,
		     const uint8_t *body, size_t len)
{
	struct rec_args *a = op->ctx;
	struct rec_view v;
	kvt_mem_item *it;
	uint8_t *emb, *data;
	int rc;

	(void)c;
	(void)rq;
	rc = rec_parse(body, len, false, &v);
	if (rc)
		return rc;
	/* Another record than the one asked for is no answer. */
	if (v.ns_len != a->ns_len || memcmp(v.ns, a->ns, v.ns_len) != 0 ||
	    v.key_len != a->key_len || memcmp(v.key, a->key, v.key_len) != 0)
		return KVT_EBADMSG;
	/* The struct's size is a multiple of its alignment (8), so the embedding that
	 * follows it is 4-aligned. */
	it = malloc(sizeof(*it) + rec_emb_size(&v) + rec_data_size(&v));
	if (!it)
		return KVT_ENOMEM;
	emb = (uint8_t *)(it + 1);
	data = emb + rec_emb_size(&v);
	rec_fill(it, &v, &emb, &data);
	a->out = it;
	return 0;
}

KVT_EXPORT int kvt_mem_get(kvt_conn *c, const char *ns, const char *key, kvt_mem_item **out)
{
	struct rec_args a = { 0 };
	struct kvt_op op;
	int rc;

	if (!c || !out)
		return KVT_EINVAL;
	rc = rec_names(&a, ns, key);
	if (rc)
		return rc;
	kvt_op_init_single(&op, KVT_OP_MEM_GET, 0, names_encode, get_reply, &a);
	rc = kvt_op_run_fields(c, &op);
	if (rc) {
		free(a.out);
		return rc;
	}
	*out = a.out;
	return 0;
}

KVT_EXPORT void kvt_mem_item_free(kvt_mem_item *item)
{
	free(item);
}

KVT_EXPORT int kvt_mem_delete(kvt_conn *c, const char *ns, const char *key)
{
	struct rec_args a = { 0 };
	struct kvt_op op;
	int rc;

	if (!c)
		return KVT_EINVAL;
	rc = rec_names(&a, ns, key);
	if (rc)
		return rc;
	kvt_op_init_single(&op, KVT_OP_MEM_DELETE, 0, names_encode, kvt_empty_reply, &a);
	return kvt_op_run_fields(c, &op);
}

/* ---- MEM_LIST, MEM_SEARCH ---------------------------------------------------------- */

struct items_args {
	bool search;
	const char *prefix, *after_ns, *after_key;
	size_t prefix_len, after_ns_len, after_key_len;
	uint32_t limit;    /* LIMIT, or K */
	const void *query; /* search: wire image of the query */
	uint32_t dim;
	kvt_mem_items *out;
};

static int list_encode(struct kvt_conn *c, struct kvt_op *op, size_t first, size_t count,
		       uint8_t *out, size_t cap)
{
	const struct items_args *a = op->ctx;
	struct kvt_fields_writer w;

	(void)c;
	(void)first;
	(void)count;
	kvt_fw_init(&w, out, cap);
	if (a->prefix_len)
		kvt_fw_bytes(&w, KVT_TAG_PREFIX, a->prefix, a->prefix_len);
	if (a->search) {
		kvt_fw_bytes(&w, KVT_TAG_EMBEDDING, a->query, 4 * (size_t)a->dim);
		kvt_fw_u32(&w, KVT_TAG_K, a->limit);
	} else {
		if (a->after_ns_len)
			kvt_fw_bytes(&w, KVT_TAG_AFTER_NS, a->after_ns, a->after_ns_len);
		if (a->after_key_len)
			kvt_fw_bytes(&w, KVT_TAG_AFTER, a->after_key, a->after_key_len);
		kvt_fw_u32(&w, KVT_TAG_LIMIT, a->limit);
	}
	return kvt_fw_result(&w);
}

/*
 * What the caller was promised about each entry: a namespace under the prefix;
 * for a list, (namespace, key) ascending and after the cursor (else the next page
 * would skip or repeat records); for a search, the query's dimension and scores
 * best first. prev is the entry before v, or NULL.
 */
static int items_check(const struct items_args *a, const struct rec_view *v,
		       const struct rec_view *prev)
{
	if (v->ns_len < a->prefix_len ||
	    (a->prefix_len && memcmp(v->ns, a->prefix, a->prefix_len) != 0))
		return KVT_EBADMSG;
	if (a->search) {
		if ((v->emb && v->dim != a->dim) || (prev && v->score > prev->score))
			return KVT_EBADMSG;
		return 0;
	}
	const char *ns = prev ? prev->ns : a->after_ns;
	const char *key = prev ? prev->key : a->after_key;
	size_t ns_len = prev ? prev->ns_len : a->after_ns_len;
	size_t key_len = prev ? prev->key_len : a->after_key_len;
	if (!prev && !ns_len)
		return 0; /* from the start */
	int d = kvt_name_cmp(v->ns, v->ns_len, ns, ns_len);
	if (d < 0 || (d == 0 && kvt_name_cmp(v->key, v->key_len, key, key_len) <= 0))
		return KVT_EBADMSG;
	return 0;
}

static int items_reply(struct kvt_conn *c, struct kvt_op *op, const struct kvt_req *rq,
		       const uint8_t *body, size_t len)
{
	struct items_args *a = op->ctx;
	struct rec_view v, prev;
	struct kvt_fields f;
	kvt_mem_items *res;
	size_t pos = 0, n = 0, emb_size = 0, data_size = 0;
	uint8_t *emb, *data;
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

	/* Pass 1: check every entry and size the result, so nothing is allocated for
	 * a reply that turns out to be malformed at its end. */
	while ((rc = kvt_fields_next_entry(&f, &pos, &val, &vlen)) == 1) {
		rc = rec_parse(val, vlen, a->search, &v);
		if (rc)
			return rc;
		rc = items_check(a, &v, n ? &prev : NULL);
		if (rc)
			return rc;
		emb_size += rec_emb_size(&v);
		data_size += rec_data_size(&v);
		prev = v;
		n++;
	}
	if (rc < 0)
		return rc;

	/* Pass 2: one allocation - the header, the items, every embedding (4-aligned
	 * after the 8-aligned items), then values and metadata. */
	res = malloc(sizeof(*res) + n * sizeof(res->items[0]) + emb_size + data_size);
	if (!res)
		return KVT_ENOMEM;
	res->n = n;
	res->more = more;
	res->items = n ? (kvt_mem_item *)(res + 1) : NULL;
	emb = (uint8_t *)(res + 1) + n * sizeof(res->items[0]);
	data = emb + emb_size;
	pos = 0;
	for (size_t i = 0; i < n; i++) {
		/* Checked in pass 1; the body has not changed since. */
		if (kvt_fields_next_entry(&f, &pos, &val, &vlen) != 1 ||
		    rec_parse(val, vlen, a->search, &v) != 0) {
			free(res);
			return KVT_EBADMSG;
		}
		rec_fill(&res->items[i], &v, &emb, &data);
	}
	a->out = res;
	return 0;
}

static int items_run(kvt_conn *c, uint16_t opcode, struct items_args *a, kvt_mem_items **out)
{
	struct kvt_op op;
	int rc;

	kvt_op_init_single(&op, opcode, 0, list_encode, items_reply, a);
	rc = kvt_op_run_fields(c, &op);
	if (rc) {
		free(a->out);
		return rc;
	}
	*out = a->out;
	return 0;
}

KVT_EXPORT int kvt_mem_list(kvt_conn *c, const char *ns_prefix, const char *after_ns,
			    const char *after_key, size_t limit, kvt_mem_items **out)
{
	struct items_args a = { .prefix = ns_prefix, .after_ns = after_ns, .after_key = after_key };

	if (!c || !out || limit == 0 || limit > KVT_LIST_LIMIT_MAX)
		return KVT_EINVAL;
	if (kvt_name_arg(ns_prefix, 0, &a.prefix_len) ||
	    kvt_name_arg(after_ns, 0, &a.after_ns_len) ||
	    kvt_name_arg(after_key, 0, &a.after_key_len))
		return KVT_EINVAL;
	/* A key cursor means nothing without its namespace. */
	if (a.after_key_len && !a.after_ns_len)
		return KVT_EINVAL;
	a.limit = (uint32_t)limit;
	return items_run(c, KVT_OP_MEM_LIST, &a, out);
}

KVT_EXPORT int kvt_mem_search(kvt_conn *c, const char *ns_prefix, const float *query, uint32_t dim,
			      uint32_t k, kvt_mem_items **out)
{
	struct items_args a = { .search = true, .prefix = ns_prefix, .dim = dim, .limit = k };
	void *tmp = NULL;
	int rc;

	if (!c || !out || !query || dim == 0 || dim > KVT_MEM_DIM_MAX || k == 0 ||
	    k > KVT_LIST_LIMIT_MAX)
		return KVT_EINVAL;
	if (kvt_name_arg(ns_prefix, 0, &a.prefix_len) || !floats_finite(query, dim))
		return KVT_EINVAL;
	a.query = kvt_le32_image(query, dim, &tmp);
	if (!a.query)
		return KVT_ENOMEM;
	rc = items_run(c, KVT_OP_MEM_SEARCH, &a, out);
	free(tmp);
	return rc;
}

KVT_EXPORT void kvt_mem_items_free(kvt_mem_items *items)
{
	free(items);
}
