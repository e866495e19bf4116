/*
 * proto.c - kvtier wire protocol v1 codec: frame header, message bodies, and the
 * field lists that CTX_* and MEM_* bodies are made of.
 *
 * Decoders are pure functions over (bytes, length) so they can be fuzzed as they
 * are: every length is checked against the bytes present before anything is read,
 * reserved fields must be zero, and a body must be exactly as long as its counts
 * say. A decoder fills its output only when it succeeds. Encoders check the
 * capacity before writing, so a failed encode leaves the buffer alone.
 * docs/PROTOCOL.md is the specification; the offsets below follow its tables.
 */
#include "proto.h"

#include <limits.h>
#include <string.h>

/* Fixed parts of the variable-length bodies. */
#define HELLO_REQ_FIXED 10
#define HELLO_REP_FIXED 42
#define BATCH_PREFIX 8
#define STAT_ENTRY_FIXED 8
/* The smallest possible STATS entry: a text entry with a 1-byte name, no text. */
#define STAT_ENTRY_MIN (STAT_ENTRY_FIXED + 1)
#define NOTICE_FIXED 2

/*
 * Encoders report the byte count as an int: refuse anything int cannot carry as
 * well as anything the buffer cannot hold. SIZE_MAX (an overflowed size) fails too.
 */
static int check_room(size_t need, size_t cap)
{
	if (need > cap || need > INT_MAX)
		return KVT_EMSGSIZE;
	return 0;
}

/*
 * Names and messages end up in logs and on terminals: refuse control bytes (and
 * with them NUL, which would silently cut a C string short). Bytes >= 0x80 pass
 * so UTF-8 names work.
 */
static bool text_ok(const uint8_t *p, size_t n)
{
	for (size_t i = 0; i < n; i++)
		if (p[i] < 0x20 || p[i] == 0x7f)
			return false;
	return true;
}

/* STATS names are identifiers ("tenant.1000.bytes"): printable ASCII, no spaces. */
static bool stat_name_ok(const uint8_t *p, size_t n)
{
	if (n == 0 || n > KVT_STAT_NAME_MAX)
		return false;
	for (size_t i = 0; i < n; i++)
		if (p[i] <= 0x20 || p[i] >= 0x7f)
			return false;
	return true;
}

/* Statuses on the wire are 0 or a negative code; anything positive is garbage. */
static bool status_ok(int32_t s)
{
	return s <= 0;
}

/* strnlen without needing POSIX: stops at the NUL or at max, reading no further. */
static size_t bounded_len(const char *s, size_t max)
{
	size_t n = 0;

	while (n < max && s[n])
		n++;
	return n;
}

static int32_t get_i32(const uint8_t *p)
{
	return (int32_t)kvt_get32(p);
}

/* ---- frame header -------------------------------------------------------- */

const char *kvt_op_name(uint16_t opcode)
{
	switch (opcode) {
	case KVT_OP_HELLO:
		return "HELLO";
	case KVT_OP_PING:
		return "PING";
	case KVT_OP_REGISTER:
		return "REGISTER";
	case KVT_OP_UNREGISTER:
		return "UNREGISTER";
	case KVT_OP_PUT:
		return "PUT";
	case KVT_OP_GET:
		return "GET";
	case KVT_OP_LOOKUP:
		return "LOOKUP";
	case KVT_OP_DELETE:
		return "DELETE";
	case KVT_OP_PIN:
		return "PIN";
	case KVT_OP_UNPIN:
		return "UNPIN";
	case KVT_OP_STATS:
		return "STATS";
	case KVT_OP_PREFETCH:
		return "PREFETCH";
	case KVT_OP_GPU_REGION_REGISTER:
		return "GPU_REGION_REGISTER";
	case KVT_OP_GPU_REGION_DESTROY:
		return "GPU_REGION_DESTROY";
	case KVT_OP_GPU_PUT:
		return "GPU_PUT";
	case KVT_OP_GPU_GET:
		return "GPU_GET";
	case KVT_OP_HINT:
		return "HINT";
	case KVT_OP_CTX_SAVE:
		return "CTX_SAVE";
	case KVT_OP_CTX_LOAD:
		return "CTX_LOAD";
	case KVT_OP_CTX_LIST:
		return "CTX_LIST";
	case KVT_OP_CTX_DELETE:
		return "CTX_DELETE";
	case KVT_OP_MEM_PUT:
		return "MEM_PUT";
	case KVT_OP_MEM_GET:
		return "MEM_GET";
	case KVT_OP_MEM_DELETE:
		return "MEM_DELETE";
	case KVT_OP_MEM_LIST:
		return "MEM_LIST";
	case KVT_OP_MEM_SEARCH:
		return "MEM_SEARCH";
	case KVT_OP_NOTICE:
		return "NOTICE";
	}
	return "UNKNOWN";
}

void kvt_hdr_encode(const struct kvt_hdr *h, uint8_t out[KVT_HDR_SIZE])
{
	kvt_put32(out + 0, h->magic);
	kvt_put16(out + 4, h->version);
	kvt_put16(out + 6, h->opcode);
	kvt_put32(out + 8, h->flags);
	kvt_put32(out + 12, h->body_len);
	kvt_put64(out + 16, h->request_id);
	kvt_put32(out + 24, (uint32_t)h->status);
	kvt_put32(out + 28, h->reserved);
}

int kvt_hdr_decode(const uint8_t in[KVT_HDR_SIZE], uint32_t max_body, struct kvt_hdr *h)
{
	/* Fill everything first: even a rejected header names the request to answer. */
	h->magic = kvt_get32(in + 0);
	h->version = kvt_get16(in + 4);
	h->opcode = kvt_get16(in + 6);
	h->flags = kvt_get32(in + 8);
	h->body_len = kvt_get32(in + 12);
	h->request_id = kvt_get64(in + 16);
	h->status = get_i32(in + 24);
	h->reserved = kvt_get32(in + 28);

	if (h->magic != KVT_MAGIC)
		return KVT_EBADMAGIC;
	if (h->version < KVT_PROTO_MIN_VERSION || h->version > KVT_PROTO_MAX_VERSION)
		return KVT_EVERSION;
	if (h->reserved != 0)
		return KVT_ERESERVED;
	if (h->body_len > max_body)
		return KVT_EMSGSIZE;
	return 0;
}

int kvt_hdr_check_flags(const struct kvt_hdr *h, bool is_reply)
{
	uint32_t must = h->flags & KVT_F_MUST_MASK;

	if (must & ~KVT_F_KNOWN_MUST)
		return KVT_EFLAGS;
	/* REPLY is must-understand: a request that claims to be a reply (or the
	 * reverse) would be misread, so it is refused like an unknown flag. */
	if (((must & KVT_F_REPLY) != 0) != is_reply)
		return KVT_EFLAGS;
	return 0;
}

/* ---- HELLO --------------------------------------------------------------- */

size_t kvt_hello_req_size(uint16_t name_len)
{
	return HELLO_REQ_FIXED + (size_t)name_len;
}

int kvt_hello_req_encode(const struct kvt_hello_req *m, uint8_t *out, size_t cap)
{
	if (m->name_len > KVT_NAME_MAX)
		return KVT_EMSGSIZE;
	if (m->name_len && (!m->name || !text_ok((const uint8_t *)m->name, m->name_len)))
		return KVT_EINVAL;
	size_t need = kvt_hello_req_size(m->name_len);
	int rc = check_room(need, cap);
	if (rc)
		return rc;
	kvt_put16(out + 0, m->min_version);
	kvt_put16(out + 2, m->max_version);
	kvt_put32(out + 4, m->flags);
	kvt_put16(out + 8, m->name_len);
	if (m->name_len)
		memcpy(out + HELLO_REQ_FIXED, m->name, m->name_len);
	return (int)need;
}

int kvt_hello_req_decode(const uint8_t *in, size_t len, struct kvt_hello_req *m)
{
	if (len < HELLO_REQ_FIXED)
		return KVT_EBADMSG;
	uint16_t name_len = kvt_get16(in + 8);
	if (name_len > KVT_NAME_MAX || len != kvt_hello_req_size(name_len))
		return KVT_EBADMSG;
	if (kvt_get32(in + 4) != 0)
		return KVT_ERESERVED;
	if (!text_ok(in + HELLO_REQ_FIXED, name_len))
		return KVT_EBADMSG;
	m->min_version = kvt_get16(in + 0);
	m->max_version = kvt_get16(in + 2);
	m->flags = 0;
	m->name = (const char *)(in + HELLO_REQ_FIXED);
	m->name_len = name_len;
	return 0;
}

size_t kvt_hello_rep_size(uint16_t server_len)
{
	return HELLO_REP_FIXED + (size_t)server_len;
}

int kvt_hello_rep_encode(const struct kvt_hello_rep *m, uint8_t *out, size_t cap)
{
	if (m->server_len > KVT_NAME_MAX)
		return KVT_EMSGSIZE;
	if (m->server_len &&
	    (!m->server || !text_ok((const uint8_t *)m->server, m->server_len)))
		return KVT_EINVAL;
	size_t need = kvt_hello_rep_size(m->server_len);
	int rc = check_room(need, cap);
	if (rc)
		return rc;
	kvt_put16(out + 0, m->version);
	kvt_put16(out + 2, 0);
	kvt_put32(out + 4, m->tenant);
	kvt_put32(out + 8, m->max_frame);
	kvt_put32(out + 12, m->max_inflight);
	kvt_put32(out + 16, m->max_batch);
	kvt_put32(out + 20, m->max_regions);
	kvt_put64(out + 24, m->max_region_size);
	kvt_put64(out + 32, m->max_block_size);
	kvt_put16(out + 40, m->server_len);
	if (m->server_len)
		memcpy(out + HELLO_REP_FIXED, m->server, m->server_len);
	return (int)need;
}

int kvt_hello_rep_decode(const uint8_t *in, size_t len, struct kvt_hello_rep *m)
{
	if (len < HELLO_REP_FIXED)
		return KVT_EBADMSG;
	uint16_t server_len = kvt_get16(in + 40);
	if (server_len > KVT_NAME_MAX || len != kvt_hello_rep_size(server_len))
		return KVT_EBADMSG;
	if (kvt_get16(in + 2) != 0)
		return KVT_ERESERVED;
	if (!text_ok(in + HELLO_REP_FIXED, server_len))
		return KVT_EBADMSG;
	m->version = kvt_get16(in + 0);
	m->tenant = kvt_get32(in + 4);
	m->max_frame = kvt_get32(in + 8);
	m->max_inflight = kvt_get32(in + 12);
	m->max_batch = kvt_get32(in + 16);
	m->max_regions = kvt_get32(in + 20);
	m->max_region_size = kvt_get64(in + 24);
	m->max_block_size = kvt_get64(in + 32);
	m->server = (const char *)(in + HELLO_REP_FIXED);
	m->server_len = server_len;
	return 0;
}

/* ---- REGISTER / UNREGISTER ----------------------------------------------- */

int kvt_register_req_encode(const struct kvt_register_req *m, uint8_t *out, size_t cap)
{
	int rc = check_room(KVT_REGISTER_REQ_SIZE, cap);
	if (rc)
		return rc;
	kvt_put64(out + 0, m->size);
	kvt_put32(out + 8, m->flags);
	kvt_put32(out + 12, 0);
	return KVT_REGISTER_REQ_SIZE;
}

int kvt_register_req_decode(const uint8_t *in, size_t len, struct kvt_register_req *m)
{
	if (len != KVT_REGISTER_REQ_SIZE)
		return KVT_EBADMSG;
	/* No flags are defined in v1, so the flags word is as reserved as the next. */
	if (kvt_get32(in + 8) != 0 || kvt_get32(in + 12) != 0)
		return KVT_ERESERVED;
	m->size = kvt_get64(in + 0);
	m->flags = 0;
	return 0;
}

/* REGISTER's reply and UNREGISTER's request share one shape: u32 id, u32 reserved. */
static int id_encode(uint32_t id, uint8_t *out, size_t cap)
{
	int rc = check_room(8, cap);
	if (rc)
		return rc;
	kvt_put32(out + 0, id);
	kvt_put32(out + 4, 0);
	return 8;
}

static int id_decode(const uint8_t *in, size_t len, uint32_t *id)
{
	if (len != 8)
		return KVT_EBADMSG;
	if (kvt_get32(in + 4) != 0)
		return KVT_ERESERVED;
	*id = kvt_get32(in + 0);
	return 0;
}

int kvt_register_rep_encode(const struct kvt_register_rep *m, uint8_t *out, size_t cap)
{
	return id_encode(m->region_id, out, cap);
}

int kvt_register_rep_decode(const uint8_t *in, size_t len, struct kvt_register_rep *m)
{
	return id_decode(in, len, &m->region_id);
}

int kvt_unregister_req_encode(const struct kvt_unregister_req *m, uint8_t *out, size_t cap)
{
	return id_encode(m->region_id, out, cap);
}

int kvt_unregister_req_decode(const uint8_t *in, size_t len, struct kvt_unregister_req *m)
{
	return id_decode(in, len, &m->region_id);
}

/* ---- batches ------------------------------------------------------------- */

size_t kvt_batch_size(uint32_t count, size_t item_size)
{
	size_t items;

	if (__builtin_mul_overflow((size_t)count, item_size, &items) ||
	    items > SIZE_MAX - BATCH_PREFIX)
		return SIZE_MAX;
	return BATCH_PREFIX + items;
}

int kvt_batch_decode(const uint8_t *in, size_t len, size_t item_size, uint32_t max_batch,
		     struct kvt_batch *b)
{
	size_t items;

	if (item_size == 0)
		return KVT_EINVAL;
	if (len < BATCH_PREFIX)
		return KVT_EBADMSG;
	uint32_t count = kvt_get32(in + 0);
	if (count > max_batch)
		return KVT_E2BIG;
	if (kvt_get32(in + 4) != 0)
		return KVT_ERESERVED;
	if (__builtin_mul_overflow((size_t)count, item_size, &items) ||
	    items != len - BATCH_PREFIX)
		return KVT_EBADMSG;
	b->count = count;
	b->flags = 0;
	b->items = in + BATCH_PREFIX;
	b->item_size = item_size;
	return 0;
}

int kvt_batch_prefix_encode(uint32_t count, uint8_t *out, size_t cap)
{
	int rc = check_room(BATCH_PREFIX, cap);
	if (rc)
		return rc;
	kvt_put32(out + 0, count);
	kvt_put32(out + 4, 0);
	return BATCH_PREFIX;
}

void kvt_key_encode(const kvt_key *k, uint8_t out[KVT_KEY_SIZE])
{
	memcpy(out, k->b, KVT_KEY_SIZE);
}

void kvt_key_decode(const uint8_t in[KVT_KEY_SIZE], kvt_key *k)
{
	memcpy(k->b, in, KVT_KEY_SIZE);
}

void kvt_desc_encode(const kvt_block_desc *d, uint8_t out[KVT_DESC_SIZE])
{
	kvt_put16(out + 0, d->dtype);
	kvt_put16(out + 2, d->layout);
	kvt_put16(out + 4, d->layers);
	kvt_put16(out + 6, d->reserved0);
	kvt_put32(out + 8, d->tokens);
	kvt_put32(out + 12, d->reserved1);
}

int kvt_desc_decode(const uint8_t in[KVT_DESC_SIZE], kvt_block_desc *d)
{
	if (kvt_get16(in + 6) != 0 || kvt_get32(in + 12) != 0)
		return KVT_ERESERVED;
	d->dtype = kvt_get16(in + 0);
	d->layout = kvt_get16(in + 2);
	d->layers = kvt_get16(in + 4);
	d->reserved0 = 0;
	d->tokens = kvt_get32(in + 8);
	d->reserved1 = 0;
	return 0;
}

void kvt_put_item_encode(const struct kvt_put_wire *it, uint8_t out[KVT_PUT_ITEM_SIZE])
{
	kvt_key_encode(&it->key, out + 0);
	kvt_key_encode(&it->parent, out + 16);
	kvt_put32(out + 32, it->region_id);
	kvt_put32(out + 36, 0);
	kvt_put64(out + 40, it->offset);
	kvt_put64(out + 48, it->length);
	kvt_desc_encode(&it->desc, out + 56);
}

int kvt_put_item_decode(const uint8_t in[KVT_PUT_ITEM_SIZE], struct kvt_put_wire *it)
{
	kvt_block_desc desc;

	if (kvt_get32(in + 36) != 0)
		return KVT_ERESERVED;
	int rc = kvt_desc_decode(in + 56, &desc);
	if (rc)
		return rc;
	kvt_key_decode(in + 0, &it->key);
	kvt_key_decode(in + 16, &it->parent);
	it->region_id = kvt_get32(in + 32);
	it->offset = kvt_get64(in + 40);
	it->length = kvt_get64(in + 48);
	it->desc = desc;
	return 0;
}

void kvt_get_item_encode(const struct kvt_get_wire *it, uint8_t out[KVT_GET_ITEM_SIZE])
{
	kvt_key_encode(&it->key, out + 0);
	kvt_put32(out + 16, it->region_id);
	kvt_put32(out + 20, 0);
	kvt_put64(out + 24, it->offset);
	kvt_put64(out + 32, it->capacity);
}

int kvt_get_item_decode(const uint8_t in[KVT_GET_ITEM_SIZE], struct kvt_get_wire *it)
{
	if (kvt_get32(in + 20) != 0)
		return KVT_ERESERVED;
	kvt_key_decode(in + 0, &it->key);
	it->region_id = kvt_get32(in + 16);
	it->offset = kvt_get64(in + 24);
	it->capacity = kvt_get64(in + 32);
	return 0;
}

/*
 * Replies to batches start with the same 8-byte prefix as requests; the count
 * must be the one the caller asked for (a reply for a different batch is garbage).
 */
static int reply_prefix_check(const uint8_t *in, size_t len, uint32_t count, size_t item_size)
{
	if (len < BATCH_PREFIX || kvt_get32(in + 0) != count)
		return KVT_EBADMSG;
	if (kvt_get32(in + 4) != 0)
		return KVT_ERESERVED;
	if (len != kvt_batch_size(count, item_size))
		return KVT_EBADMSG;
	return 0;
}

/* ---- per-item status replies (PUT, DELETE, PIN, UNPIN) ------------------- */

size_t kvt_status_rep_size(uint32_t count)
{
	return kvt_batch_size(count, 4);
}

int kvt_status_rep_encode(const int32_t *status, uint32_t count, uint8_t *out, size_t cap)
{
	if (count && !status)
		return KVT_EINVAL;
	size_t need = kvt_status_rep_size(count);
	int rc = check_room(need, cap);
	if (rc)
		return rc;
	kvt_put32(out + 0, count);
	kvt_put32(out + 4, 0);
	for (uint32_t i = 0; i < count; i++)
		kvt_put32(out + BATCH_PREFIX + 4 * (size_t)i, (uint32_t)status[i]);
	return (int)need;
}

int kvt_status_rep_decode(const uint8_t *in, size_t len, uint32_t count, int32_t *status)
{
	int rc = reply_prefix_check(in, len, count, 4);
	if (rc)
		return rc;
	const uint8_t *p = in + BATCH_PREFIX;
	for (uint32_t i = 0; i < count; i++)
		if (!status_ok(get_i32(p + 4 * (size_t)i)))
			return KVT_EBADMSG;
	if (status)
		for (uint32_t i = 0; i < count; i++)
			status[i] = get_i32(p + 4 * (size_t)i);
	return 0;
}

/* ---- GET reply ----------------------------------------------------------- */

size_t kvt_get_rep_size(uint32_t count)
{
	return kvt_batch_size(count, KVT_GET_RESULT_SIZE);
}

int kvt_get_rep_encode(const struct kvt_get_result *r, uint32_t count, uint8_t *out, size_t cap)
{
	if (count && !r)
		return KVT_EINVAL;
	size_t need = kvt_get_rep_size(count);
	int rc = check_room(need, cap);
	if (rc)
		return rc;
	kvt_put32(out + 0, count);
	kvt_put32(out + 4, 0);
	for (uint32_t i = 0; i < count; i++) {
		uint8_t *p = out + BATCH_PREFIX + (size_t)i * KVT_GET_RESULT_SIZE;
		kvt_put32(p + 0, (uint32_t)r[i].status);
		kvt_put32(p + 4, 0);
		kvt_put64(p + 8, r[i].length);
		kvt_desc_encode(&r[i].desc, p + 16);
	}
	return (int)need;
}

int kvt_get_rep_decode(const uint8_t *in, size_t len, uint32_t count, struct kvt_get_result *r)
{
	kvt_block_desc desc;
	int rc = reply_prefix_check(in, len, count, KVT_GET_RESULT_SIZE);
	if (rc)
		return rc;
	/* Check every result before writing any, so a failed decode leaves r alone. */
	for (uint32_t i = 0; i < count; i++) {
		const uint8_t *p = in + BATCH_PREFIX + (size_t)i * KVT_GET_RESULT_SIZE;
		if (kvt_get32(p + 4) != 0)
			return KVT_ERESERVED;
		rc = kvt_desc_decode(p + 16, &desc);
		if (rc)
			return rc;
		if (!status_ok(get_i32(p + 0)))
			return KVT_EBADMSG;
	}
	if (!r)
		return 0;
	for (uint32_t i = 0; i < count; i++) {
		const uint8_t *p = in + BATCH_PREFIX + (size_t)i * KVT_GET_RESULT_SIZE;
		r[i].status = get_i32(p + 0);
		r[i].length = kvt_get64(p + 8);
		kvt_desc_decode(p + 16, &r[i].desc);
	}
	return 0;
}

/* ---- LOOKUP reply -------------------------------------------------------- */

size_t kvt_lookup_rep_size(uint32_t found)
{
	return kvt_batch_size(found, 1);
}

int kvt_lookup_rep_encode(uint32_t found, const uint8_t *tiers, uint8_t *out, size_t cap)
{
	if (found && !tiers)
		return KVT_EINVAL;
	size_t need = kvt_lookup_rep_size(found);
	int rc = check_room(need, cap);
	if (rc)
		return rc;
	kvt_put32(out + 0, found);
	kvt_put32(out + 4, 0);
	if (found)
		memcpy(out + BATCH_PREFIX, tiers, found);
	return (int)need;
}

int kvt_lookup_rep_decode(const uint8_t *in, size_t len, uint32_t asked, uint32_t *found,
			  uint8_t *tiers)
{
	if (len < BATCH_PREFIX)
		return KVT_EBADMSG;
	uint32_t n = kvt_get32(in + 0);
	/* More present keys than were asked about cannot be right, and tiers[] is
	 * only asked entries long. */
	if (n > asked)
		return KVT_EBADMSG;
	if (kvt_get32(in + 4) != 0)
		return KVT_ERESERVED;
	if (len != kvt_lookup_rep_size(n))
		return KVT_EBADMSG;
	for (uint32_t i = 0; i < n; i++)
		if (in[BATCH_PREFIX + i] > KVT_TIER_NVME)
			return KVT_EBADMSG;
	*found = n;
	if (tiers && n)
		memcpy(tiers, in + BATCH_PREFIX, n);
	return 0;
}

/* ---- STATS reply --------------------------------------------------------- */

void kvt_stats_writer_init(struct kvt_stats_writer *w, uint8_t *buf, size_t cap)
{
	/* The prefix is written by finish; len starts past it even when cap is
	 * smaller, so every add fails and finish reports 0. */
	w->buf = buf;
	w->cap = cap;
	w->len = BATCH_PREFIX;
	w->count = 0;
}

static int stats_writer_add(struct kvt_stats_writer *w, uint8_t kind, const char *name,
			    const uint8_t *value, size_t value_len)
{
	size_t name_len = name ? strlen(name) : 0;

	if (!stat_name_ok((const uint8_t *)name, name_len))
		return KVT_EINVAL;
	size_t need = STAT_ENTRY_FIXED + name_len + value_len;
	if (w->len > w->cap || need > w->cap - w->len || w->count == UINT32_MAX)
		return KVT_EMSGSIZE;
	uint8_t *p = w->buf + w->len;
	p[0] = kind;
	p[1] = 0;
	kvt_put16(p + 2, (uint16_t)name_len);
	kvt_put32(p + 4, (uint32_t)value_len);
	memcpy(p + STAT_ENTRY_FIXED, name, name_len);
	if (value_len)
		memcpy(p + STAT_ENTRY_FIXED + name_len, value, value_len);
	w->len += need;
	w->count++;
	return 0;
}

int kvt_stats_writer_u64(struct kvt_stats_writer *w, const char *name, uint64_t value)
{
	uint8_t v[8];

	kvt_put64(v, value);
	return stats_writer_add(w, KVT_STAT_U64, name, v, sizeof(v));
}

int kvt_stats_writer_text(struct kvt_stats_writer *w, const char *name, const char *text)
{
	if (!text)
		text = "";
	size_t text_len = bounded_len(text, KVT_STAT_TEXT_MAX + 1);
	if (text_len > KVT_STAT_TEXT_MAX || !text_ok((const uint8_t *)text, text_len))
		return KVT_EINVAL;
	return stats_writer_add(w, KVT_STAT_TEXT, name, (const uint8_t *)text, text_len);
}

size_t kvt_stats_writer_finish(struct kvt_stats_writer *w)
{
	if (w->len > w->cap)
		return 0;
	kvt_put32(w->buf + 0, w->count);
	kvt_put32(w->buf + 4, 0);
	return w->len;
}

/* Parse and check the entry at p (p < len) into *e; *next receives the offset
 * just past it. */
static int stats_entry_parse(const uint8_t *in, size_t len, size_t p, struct kvt_stat_entry *e,
			     size_t *next)
{
	if (len - p < STAT_ENTRY_FIXED)
		return KVT_EBADMSG;
	const uint8_t *q = in + p;
	uint8_t kind = q[0];
	uint16_t name_len = kvt_get16(q + 2);
	uint32_t value_len = kvt_get32(q + 4);
	if (q[1] != 0)
		return KVT_ERESERVED;
	if (kind == KVT_STAT_U64) {
		if (value_len != 8)
			return KVT_EBADMSG;
	} else if (kind == KVT_STAT_TEXT) {
		if (value_len > KVT_STAT_TEXT_MAX)
			return KVT_EBADMSG;
	} else {
		return KVT_EBADMSG;
	}
	/* Both lengths are small now, so the sum cannot wrap. */
	if (name_len > KVT_STAT_NAME_MAX ||
	    (size_t)name_len + value_len > len - p - STAT_ENTRY_FIXED)
		return KVT_EBADMSG;
	const uint8_t *name = q + STAT_ENTRY_FIXED;
	const uint8_t *value = name + name_len;
	if (!stat_name_ok(name, name_len))
		return KVT_EBADMSG;
	if (kind == KVT_STAT_TEXT && !text_ok(value, value_len))
		return KVT_EBADMSG;

	e->kind = kind;
	e->name = (const char *)name;
	e->name_len = name_len;
	if (kind == KVT_STAT_U64) {
		e->value = kvt_get64(value);
		e->text = NULL;
		e->text_len = 0;
	} else {
		e->value = 0;
		e->text = (const char *)value;
		e->text_len = value_len;
	}
	*next = p + STAT_ENTRY_FIXED + name_len + value_len;
	return 0;
}

/*
 * Check the whole reply: prefix, every entry, and exactly the declared number of
 * them. Done once, before the first entry is handed out, so a caller never acts
 * on part of a reply that turns out to be malformed further on.
 */
int kvt_stats_rep_count(const uint8_t *in, size_t len, uint32_t *count)
{
	struct kvt_stat_entry e;

	if (len < BATCH_PREFIX)
		return KVT_EBADMSG;
	if (kvt_get32(in + 4) != 0)
		return KVT_ERESERVED;
	uint32_t declared = kvt_get32(in + 0), seen = 0;
	/* Cheap bound first: a count the body could not possibly hold. */
	if (declared > (len - BATCH_PREFIX) / STAT_ENTRY_MIN)
		return KVT_EBADMSG;
	for (size_t p = BATCH_PREFIX; p < len; seen++) {
		if (seen == declared)
			return KVT_EBADMSG; /* bytes after the last declared entry */
		int rc = stats_entry_parse(in, len, p, &e, &p);
		if (rc)
			return rc;
	}
	if (seen != declared)
		return KVT_EBADMSG;
	*count = declared;
	return 0;
}

int kvt_stats_rep_next(const uint8_t *in, size_t len, size_t *pos, struct kvt_stat_entry *e)
{
	size_t p = *pos;

	if (p == 0) {
		uint32_t count;
		int rc = kvt_stats_rep_count(in, len, &count);
		if (rc)
			return rc;
		p = BATCH_PREFIX;
	}
	/* A position the caller made up is still checked, never trusted. */
	if (p < BATCH_PREFIX || p > len)
		return KVT_EBADMSG;
	if (p == len) {
		*pos = p;
		return 0;
	}
	int rc = stats_entry_parse(in, len, p, e, &p);
	if (rc)
		return rc;
	*pos = p;
	return 1;
}

/* ---- NOTICE -------------------------------------------------------------- */

int kvt_notice_encode(const char *msg, uint8_t *out, size_t cap)
{
	/* A notice is the last word before a close: never fail over its text.
	 * Long messages are cut at KVT_NOTICE_MAX and control bytes become '?'. */
	if (!msg)
		msg = "";
	size_t n = bounded_len(msg, KVT_NOTICE_MAX);
	int rc = check_room(NOTICE_FIXED + n, cap);
	if (rc)
		return rc;
	kvt_put16(out, (uint16_t)n);
	for (size_t i = 0; i < n; i++) {
		uint8_t c = (uint8_t)msg[i];
		out[NOTICE_FIXED + i] = text_ok(&c, 1) ? c : '?';
	}
	return (int)(NOTICE_FIXED + n);
}

int kvt_notice_decode(const uint8_t *in, size_t len, const char **msg, uint16_t *msg_len)
{
	if (len < NOTICE_FIXED)
		return KVT_EBADMSG;
	uint16_t n = kvt_get16(in);
	if (n > KVT_NOTICE_MAX || len != NOTICE_FIXED + (size_t)n)
		return KVT_EBADMSG;
	if (!text_ok(in + NOTICE_FIXED, n))
		return KVT_EBADMSG;
	*msg = (const char *)(in + NOTICE_FIXED);
	*msg_len = n;
	return 0;
}

/* ---- PREFETCH and HINT ------------------------------------------------------------ */

/* Both requests put 8 bytes ahead of a key batch: u32 value, u8 selector (at most
 * sel_max), 3 reserved bytes. */
#define KEY_PARAMS_SIZE 8

static int key_params_encode(uint32_t value, uint8_t sel, uint8_t *out, size_t cap)
{
	if (!out)
		return KVT_EINVAL;
	if (cap < KEY_PARAMS_SIZE)
		return KVT_EMSGSIZE;
	kvt_put32(out, value);
	out[4] = sel;
	out[5] = out[6] = out[7] = 0;
	return KEY_PARAMS_SIZE;
}

static int key_params_decode(const uint8_t *in, size_t len, uint32_t max_batch, uint8_t sel_max,
			     uint32_t *value, uint8_t *sel, struct kvt_batch *b)
{
	if (!in || !b || len < KEY_PARAMS_SIZE)
		return KVT_EBADMSG;
	if (in[5] || in[6] || in[7])
		return KVT_ERESERVED;
	if (in[4] > sel_max)
		return KVT_EBADMSG;
	*value = kvt_get32(in);
	*sel = in[4];
	return kvt_batch_decode(in + KEY_PARAMS_SIZE, len - KEY_PARAMS_SIZE, KVT_KEY_SIZE,
				max_batch, b);
}

_Static_assert(KVT_PREFETCH_PARAMS_SIZE == KEY_PARAMS_SIZE &&
		       KVT_HINT_PARAMS_SIZE == KEY_PARAMS_SIZE,
	       "one parameter layout");

int kvt_prefetch_params_encode(const struct kvt_prefetch_params *p, uint8_t *out, size_t cap)
{
	return p ? key_params_encode(p->deadline_ms, p->tier, out, cap) : KVT_EINVAL;
}

int kvt_prefetch_req_decode(const uint8_t *in, size_t len, uint32_t max_batch,
			    struct kvt_prefetch_params *p, struct kvt_batch *b)
{
	if (!p)
		return KVT_EBADMSG;
	return key_params_decode(in, len, max_batch, KVT_TIER_NVME, &p->deadline_ms, &p->tier, b);
}

int kvt_hint_params_encode(const struct kvt_hint_params *p, uint8_t *out, size_t cap)
{
	return p ? key_params_encode(p->duration_ms, p->hint, out, cap) : KVT_EINVAL;
}

int kvt_hint_req_decode(const uint8_t *in, size_t len, uint32_t max_batch,
			struct kvt_hint_params *p, struct kvt_batch *b)
{
	if (!p)
		return KVT_EBADMSG;
	return key_params_decode(in, len, max_batch, KVT_HINT_RELEASE, &p->duration_ms, &p->hint, b);
}

size_t kvt_prefetch_rep_size(uint32_t count)
{
	return 8 + (size_t)count;
}

int kvt_prefetch_rep_encode(const uint8_t *tiers, uint32_t count, uint8_t *out, size_t cap)
{
	if (!out || (count && !tiers))
		return KVT_EINVAL;
	if (cap < kvt_prefetch_rep_size(count))
		return KVT_EMSGSIZE;
	kvt_put32(out, count);
	kvt_put32(out + 4, 0);
	if (count)
		memcpy(out + 8, tiers, count);
	return (int)kvt_prefetch_rep_size(count);
}

int kvt_prefetch_rep_decode(const uint8_t *in, size_t len, uint32_t count, uint8_t *tiers)
{
	if (!in || len < 8 || len != kvt_prefetch_rep_size(count) || kvt_get32(in) != count)
		return KVT_EBADMSG;
	if (kvt_get32(in + 4))
		return KVT_ERESERVED;
	for (uint32_t i = 0; i < count; i++)
		if (in[8 + i] > KVT_TIER_NVME && in[8 + i] != KVT_TIER_NONE)
			return KVT_EBADMSG;
	if (tiers && count)
		memcpy(tiers, in + 8, count);
	return 0;
}

/* ---- field lists (CTX_*, MEM_*) ------------------------------------------------
 * A body is a sequence of fields: u16 tag, u16 reserved, u32 length, value. The
 * decoder checks the framing of one level and indexes it; an ENTRY's value is a
 * field list of its own, checked when the caller decodes it (so a list of 1000
 * entries is walked once here and once per entry, never recursively). Which tags
 * an operation needs, and their sizes, is for the caller: these functions only
 * promise that every indexed value lies inside the body. */

#define FIELD_HDR 8

int kvt_fields_decode(const uint8_t *in, size_t len, struct kvt_fields *f)
{
	struct kvt_fields t;
	size_t p = 0;

	memset(&t, 0, sizeof(t));
	/* Checked field by field, in order: the header present, reserved 0, the value
	 * inside the body, then the tag. The first field that fails decides. */
	while (p < len) {
		if (len - p < FIELD_HDR)
			return KVT_EBADMSG;
		uint16_t tag = kvt_get16(in + p);
		uint32_t flen = kvt_get32(in + p + 4);
		if (kvt_get16(in + p + 2) != 0)
			return KVT_ERESERVED;
		if (flen > len - p - FIELD_HDR)
			return KVT_EBADMSG;
		const uint8_t *val = in + p + FIELD_HDR;
		p += FIELD_HDR + (size_t)flen;
		if (tag >= KVT_TAG_IGNORABLE)
			continue; /* a later version's hint: skipped, framing still checked */
		if (tag == 0 || tag > KVT_TAG_MAX)
			return KVT_EBADMSG;
		if (tag == KVT_TAG_ENTRY) {
			/* Each entry takes at least 8 bytes, so only a body over 32 GiB
			 * could overflow the count; refuse rather than wrap. */
			if (t.nentries == UINT32_MAX)
				return KVT_EBADMSG;
			if (t.nentries++ == 0) {
				t.val[tag] = val;
				t.len[tag] = flen;
			}
			continue;
		}
		/* Two values for one tag would let sender and receiver disagree on
		 * which one counts: refused. */
		if (t.val[tag])
			return KVT_EBADMSG;
		t.val[tag] = val;
		t.len[tag] = flen;
	}
	t.body = in;
	t.body_len = len;
	*f = t;
	return 0;
}

int kvt_fields_next_entry(const struct kvt_fields *f, size_t *pos, const uint8_t **val,
			  uint32_t *len)
{
	size_t p = *pos;

	/* The framing was checked by kvt_fields_decode, but a position the caller
	 * made up (or a struct it filled itself) is still checked, never trusted. */
	while (p < f->body_len) {
		if (f->body_len - p < FIELD_HDR)
			return KVT_EBADMSG;
		const uint8_t *q = f->body + p;
		uint32_t flen = kvt_get32(q + 4);
		if (flen > f->body_len - p - FIELD_HDR)
			return KVT_EBADMSG;
		p += FIELD_HDR + (size_t)flen;
		if (kvt_get16(q) == KVT_TAG_ENTRY) {
			*val = q + FIELD_HDR;
			*len = flen;
			*pos = p;
			return 1;
		}
	}
	if (p > f->body_len)
		return KVT_EBADMSG;
	*pos = p;
	return 0;
}

/* The value of tag if it is present with exactly size bytes. */
static int field_fixed(const struct kvt_fields *f, unsigned tag, uint32_t size,
		       const uint8_t **val)
{
	if (tag == 0 || tag > KVT_TAG_MAX || !f->val[tag])
		return KVT_ENOENT;
	if (f->len[tag] != size)
		return KVT_EBADMSG;
	*val = f->val[tag];
	return 0;
}

int kvt_fields_u8(const struct kvt_fields *f, unsigned tag, uint8_t *v)
{
	const uint8_t *p;
	int rc = field_fixed(f, tag, 1, &p);

	if (rc == 0)
		*v = p[0];
	return rc;
}

int kvt_fields_u32(const struct kvt_fields *f, unsigned tag, uint32_t *v)
{
	const uint8_t *p;
	int rc = field_fixed(f, tag, 4, &p);

	if (rc == 0)
		*v = kvt_get32(p);
	return rc;
}

int kvt_fields_u64(const struct kvt_fields *f, unsigned tag, uint64_t *v)
{
	const uint8_t *p;
	int rc = field_fixed(f, tag, 8, &p);

	if (rc == 0)
		*v = kvt_get64(p);
	return rc;
}

int kvt_fields_bytes(const struct kvt_fields *f, unsigned tag, size_t min, size_t max,
		     const uint8_t **p, uint32_t *len)
{
	if (tag == 0 || tag > KVT_TAG_MAX || !f->val[tag])
		return KVT_ENOENT;
	if (f->len[tag] < min || f->len[tag] > max)
		return KVT_EBADMSG;
	*p = f->val[tag];
	*len = f->len[tag];
	return 0;
}

/*
 * The writer appends whole fields only: a field that does not fit is not started,
 * err becomes KVT_EMSGSIZE and stays, and buf[0, len) remains a well-formed list.
 * A writer over a NULL buffer (kvt_fw_init(w, NULL, SIZE_MAX)) writes nothing and
 * only counts, so one function can size a body and then write it.
 */
void kvt_fw_init(struct kvt_fields_writer *w, uint8_t *buf, size_t cap)
{
	w->buf = buf;
	w->cap = cap;
	w->len = 0;
	w->err = 0;
}

/* Room for a field header and n value bytes at w->len; sets err if there is none. */
static bool fw_room(struct kvt_fields_writer *w, unsigned tag, size_t n)
{
	if (w->err)
		return false;
	if (tag > 0xffff) {
		w->err = KVT_EINVAL;
		return false;
	}
	if (n > UINT32_MAX || w->len > w->cap || w->cap - w->len < FIELD_HDR ||
	    n > w->cap - w->len - FIELD_HDR) {
		w->err = KVT_EMSGSIZE;
		return false;
	}
	return true;
}

static void fw_header(struct kvt_fields_writer *w, unsigned tag, size_t n)
{
	if (w->buf) {
		uint8_t *q = w->buf + w->len;
		kvt_put16(q, (uint16_t)tag);
		kvt_put16(q + 2, 0);
		kvt_put32(q + 4, (uint32_t)n);
	}
	w->len += FIELD_HDR;
}

void kvt_fw_bytes(struct kvt_fields_writer *w, unsigned tag, const void *p, size_t n)
{
	if (!fw_room(w, tag, n))
		return;
	if (n && !p) {
		w->err = KVT_EINVAL;
		return;
	}
	fw_header(w, tag, n);
	if (w->buf && n)
		memcpy(w->buf + w->len, p, n);
	w->len += n;
}

void kvt_fw_u8(struct kvt_fields_writer *w, unsigned tag, uint8_t v)
{
	kvt_fw_bytes(w, tag, &v, 1);
}

void kvt_fw_u32(struct kvt_fields_writer *w, unsigned tag, uint32_t v)
{
	uint8_t b[4];

	kvt_put32(b, v);
	kvt_fw_bytes(w, tag, b, sizeof(b));
}

void kvt_fw_u64(struct kvt_fields_writer *w, unsigned tag, uint64_t v)
{
	uint8_t b[8];

	kvt_put64(b, v);
	kvt_fw_bytes(w, tag, b, sizeof(b));
}

/*
 * begin writes the entry's header with length 0 and returns where it starts; end
 * patches the length to what was written since. If anything failed in between (or
 * before), end drops the whole entry, so the list never holds a half entry: a
 * reply that runs out of room ends with the last complete one.
 */
size_t kvt_fw_begin(struct kvt_fields_writer *w, unsigned tag)
{
	size_t mark = w->len;

	if (fw_room(w, tag, 0))
		fw_header(w, tag, 0);
	return mark;
}

void kvt_fw_end(struct kvt_fields_writer *w, size_t mark)
{
	if (mark > w->len || (!w->err && w->len - mark < FIELD_HDR)) {
		/* Not a mark of this writer: nothing sane to patch or to drop. */
		if (!w->err)
			w->err = KVT_EINVAL;
		return;
	}
	if (!w->err && w->len - mark - FIELD_HDR > UINT32_MAX)
		w->err = KVT_EMSGSIZE;
	if (w->err) {
		w->len = mark;
		return;
	}
	if (w->buf)
		kvt_put32(w->buf + mark + 4, (uint32_t)(w->len - mark - FIELD_HDR));
}

/* ---- GPU regions ------------------------------------------------------------ */

size_t kvt_gpu_register_req_size(uint32_t nbuffers, uint32_t layers)
{
	return KVT_GPU_REG_FIXED_SIZE + (size_t)nbuffers * KVT_GPU_BUF_SIZE +
	       (size_t)layers * KVT_GPU_LAYER_SIZE;
}

int kvt_gpu_register_req_encode(const struct kvt_gpu_register_req *m,
				const struct kvt_gpu_buf_wire *bufs,
				const struct kvt_gpu_layer_wire *layers, uint8_t *out, size_t cap)
{
	const struct kvt_gpu_layout_wire *l = &m->layout;

	if (m->nbuffers < 1 || m->nbuffers > KVT_GPU_MAX_BUFFERS || l->layers < 1 ||
	    l->layers > KVT_GPU_MAX_LAYERS || !bufs || !layers)
		return KVT_EINVAL;
	size_t len = kvt_gpu_register_req_size(m->nbuffers, l->layers);
	int rc = check_room(len, cap);
	if (rc)
		return rc;
	memset(out, 0, KVT_GPU_REG_FIXED_SIZE);
	kvt_put16(out + 0, m->kind);
	kvt_put16(out + 2, m->nbuffers);
	kvt_put16(out + 4, (uint16_t)l->layers);
	kvt_put16(out + 6, l->dtype);
	kvt_put16(out + 8, l->layout_id);
	memcpy(out + 16, m->uuid, KVT_GPU_UUID_SIZE);
	kvt_put32(out + 32, l->planes);
	kvt_put32(out + 36, l->heads);
	kvt_put32(out + 40, l->head_dim);
	kvt_put32(out + 44, l->elem_size);
	kvt_put32(out + 48, l->page_tokens);
	kvt_put64(out + 56, l->num_pages);
	kvt_put64(out + 64, (uint64_t)l->plane_stride);
	kvt_put64(out + 72, (uint64_t)l->page_stride);
	kvt_put64(out + 80, (uint64_t)l->token_stride);
	kvt_put64(out + 88, (uint64_t)l->head_stride);
	kvt_put64(out + 96, (uint64_t)l->dim_stride);
	uint8_t *p = out + KVT_GPU_REG_FIXED_SIZE;
	for (uint32_t i = 0; i < m->nbuffers; i++, p += KVT_GPU_BUF_SIZE) {
		memcpy(p, bufs[i].handle, KVT_GPU_IPC_HANDLE_SIZE);
		kvt_put64(p + 64, bufs[i].size);
		kvt_put32(p + 72, bufs[i].region_id);
		kvt_put32(p + 76, 0);
	}
	for (uint32_t i = 0; i < l->layers; i++, p += KVT_GPU_LAYER_SIZE) {
		kvt_put32(p + 0, layers[i].buffer);
		kvt_put32(p + 4, 0);
		kvt_put64(p + 8, layers[i].offset);
	}
	return (int)len;
}

static bool bytes_are_zero(const uint8_t *p, size_t n)
{
	for (size_t i = 0; i < n; i++)
		if (p[i])
			return false;
	return true;
}

int kvt_gpu_register_req_decode(const uint8_t *in, size_t len, struct kvt_gpu_register_req *m)
{
	if (!in || len < KVT_GPU_REG_FIXED_SIZE)
		return KVT_EBADMSG;
	uint16_t kind = kvt_get16(in + 0), nbuf = kvt_get16(in + 2), layers = kvt_get16(in + 4);
	if (kind != KVT_GPU_KIND_CUDA_IPC && kind != KVT_GPU_KIND_EMULATED)
		return KVT_EBADMSG;
	if (nbuf == 0 || layers == 0)
		return KVT_EBADMSG;
	if (nbuf > KVT_GPU_MAX_BUFFERS || layers > KVT_GPU_MAX_LAYERS)
		return KVT_E2BIG;
	if (kvt_get16(in + 10) != 0 || kvt_get32(in + 12) != 0 || kvt_get32(in + 52) != 0)
		return KVT_ERESERVED;
	if (len != kvt_gpu_register_req_size(nbuf, layers))
		return KVT_EBADMSG;
	const uint8_t *bufs = in + KVT_GPU_REG_FIXED_SIZE;
	const uint8_t *lay = bufs + (size_t)nbuf * KVT_GPU_BUF_SIZE;
	for (uint32_t i = 0; i < nbuf; i++) {
		const uint8_t *b = bufs + (size_t)i * KVT_GPU_BUF_SIZE;
		if (kvt_get32(b + 76) != 0)
			return KVT_ERESERVED;
		if (kind == KVT_GPU_KIND_CUDA_IPC ? kvt_get32(b + 72) != 0
						  : !bytes_are_zero(b, KVT_GPU_IPC_HANDLE_SIZE))
			return KVT_ERESERVED;
	}
	for (uint32_t i = 0; i < layers; i++) {
		const uint8_t *e = lay + (size_t)i * KVT_GPU_LAYER_SIZE;
		if (kvt_get32(e + 4) != 0)
			return KVT_ERESERVED;
		if (kvt_get32(e + 0) >= nbuf)
			return KVT_EBADMSG;
	}
	m->kind = kind;
	m->nbuffers = nbuf;
	memcpy(m->uuid, in + 16, KVT_GPU_UUID_SIZE);
	struct kvt_gpu_layout_wire *l = &m->layout;
	l->layers = layers;
	l->dtype = kvt_get16(in + 6);
	l->layout_id = kvt_get16(in + 8);
	l->planes = kvt_get32(in + 32);
	l->heads = kvt_get32(in + 36);
	l->head_dim = kvt_get32(in + 40);
	l->elem_size = kvt_get32(in + 44);
	l->page_tokens = kvt_get32(in + 48);
	l->num_pages = kvt_get64(in + 56);
	l->plane_stride = (int64_t)kvt_get64(in + 64);
	l->page_stride = (int64_t)kvt_get64(in + 72);
	l->token_stride = (int64_t)kvt_get64(in + 80);
	l->head_stride = (int64_t)kvt_get64(in + 88);
	l->dim_stride = (int64_t)kvt_get64(in + 96);
	m->buffers = bufs;
	m->layer = lay;
	return 0;
}

void kvt_gpu_buf_get(const struct kvt_gpu_register_req *m, uint32_t i, struct kvt_gpu_buf_wire *b)
{
	const uint8_t *p = m->buffers + (size_t)i * KVT_GPU_BUF_SIZE;
	memcpy(b->handle, p, KVT_GPU_IPC_HANDLE_SIZE);
	b->size = kvt_get64(p + 64);
	b->region_id = kvt_get32(p + 72);
}

void kvt_gpu_layer_get(const struct kvt_gpu_register_req *m, uint32_t i,
		       struct kvt_gpu_layer_wire *l)
{
	const uint8_t *p = m->layer + (size_t)i * KVT_GPU_LAYER_SIZE;
	l->buffer = kvt_get32(p + 0);
	l->offset = kvt_get64(p + 8);
}

size_t kvt_gpu_xfer_size(uint32_t count, uint32_t npage_ids)
{
	size_t items, pages, len;
	if (__builtin_mul_overflow((size_t)count, (size_t)KVT_GPU_ITEM_SIZE, &items) ||
	    __builtin_mul_overflow((size_t)npage_ids, (size_t)4, &pages) ||
	    __builtin_add_overflow(items, pages, &len) ||
	    __builtin_add_overflow(len, (size_t)KVT_GPU_XFER_PREFIX, &len))
		return 0;
	return len;
}

int kvt_gpu_xfer_prefix_encode(uint32_t count, uint32_t npage_ids, uint8_t *out, size_t cap)
{
	int rc = check_room(KVT_GPU_XFER_PREFIX, cap);
	if (rc)
		return rc;
	kvt_put32(out + 0, count);
	kvt_put32(out + 4, npage_ids);
	kvt_put32(out + 8, 0);
	kvt_put32(out + 12, 0);
	return KVT_GPU_XFER_PREFIX;
}

void kvt_gpu_item_encode(const struct kvt_gpu_item_wire *it, uint8_t out[KVT_GPU_ITEM_SIZE])
{
	kvt_key_encode(&it->key, out + 0);
	kvt_key_encode(&it->parent, out + 16);
	kvt_put32(out + 32, it->region_id);
	kvt_put32(out + 36, it->first_token);
	kvt_put32(out + 40, it->ntokens);
	kvt_put32(out + 44, it->pages_offset);
	kvt_put32(out + 48, it->npages);
	kvt_put32(out + 52, 0);
}

int kvt_gpu_item_decode(const uint8_t in[KVT_GPU_ITEM_SIZE], bool is_put, uint32_t npage_ids,
			struct kvt_gpu_item_wire *it)
{
	if (kvt_get32(in + 52) != 0 || (!is_put && !bytes_are_zero(in + 16, KVT_KEY_SIZE)))
		return KVT_ERESERVED;
	uint32_t off = kvt_get32(in + 44), n = kvt_get32(in + 48);
	if (off > npage_ids || n > npage_ids - off)
		return KVT_EBADMSG;
	kvt_key_decode(in + 0, &it->key);
	kvt_key_decode(in + 16, &it->parent);
	it->region_id = kvt_get32(in + 32);
	it->first_token = kvt_get32(in + 36);
	it->ntokens = kvt_get32(in + 40);
	it->pages_offset = off;
	it->npages = n;
	return 0;
}

int kvt_gpu_xfer_decode(const uint8_t *in, size_t len, bool is_put, uint32_t max_batch,
			uint32_t max_pages, struct kvt_gpu_xfer *x)
{
	if (!in || len < KVT_GPU_XFER_PREFIX)
		return KVT_EBADMSG;
	uint32_t count = kvt_get32(in + 0), npages = kvt_get32(in + 4);
	if (count > max_batch || npages > max_pages)
		return KVT_E2BIG;
	if (kvt_get32(in + 8) != 0 || kvt_get32(in + 12) != 0)
		return KVT_ERESERVED;
	size_t want = kvt_gpu_xfer_size(count, npages);
	if (want == 0 || want != len)
		return KVT_EBADMSG;
	const uint8_t *items = in + KVT_GPU_XFER_PREFIX;
	for (uint32_t i = 0; i < count; i++) {
		struct kvt_gpu_item_wire it;
		int rc = kvt_gpu_item_decode(items + (size_t)i * KVT_GPU_ITEM_SIZE, is_put, npages,
					     &it);
		if (rc)
			return rc;
	}
	x->count = count;
	x->npage_ids = npages;
	x->items = items;
	x->pages = items + (size_t)count * KVT_GPU_ITEM_SIZE;
	return 0;
}
