/*
 * block.c - libkvtier block operations: PUT, GET, LOOKUP, DELETE, PIN, UNPIN,
 * synchronous and pipelined (*_start + kvt_wait). Encodes items into wire
 * batches and decodes per-item results back into the caller's arrays.
 */
#include <stdlib.h>
#include <string.h>

#include "client.h"
#include "export.h"

/* ---- encoders ------------------------------------------------------------------ */

static int put_encode(struct kvt_conn *c, struct kvt_op *op, size_t first, size_t count,
		      uint8_t *out, size_t cap)
{
	int pos;

	if (cap < kvt_batch_size((uint32_t)count, KVT_PUT_ITEM_SIZE))
		return KVT_EMSGSIZE;
	pos = kvt_batch_prefix_encode((uint32_t)count, out, cap);
	if (pos < 0)
		return pos;
	for (size_t i = 0; i < count; i++) {
		const kvt_put_item *it = &op->put[first + i];
		struct kvt_put_wire w = {
			.key = it->key,
			.parent = it->parent,
			.region_id = kvt_region_wire_id(c, it->region),
			.offset = it->offset,
			.length = it->length,
			.desc = it->desc,
		};

		kvt_put_item_encode(&w, out + pos);
		pos += KVT_PUT_ITEM_SIZE;
	}
	return pos;
}

static int get_encode(struct kvt_conn *c, struct kvt_op *op, size_t first, size_t count,
		      uint8_t *out, size_t cap)
{
	int pos;

	if (cap < kvt_batch_size((uint32_t)count, KVT_GET_ITEM_SIZE))
		return KVT_EMSGSIZE;
	pos = kvt_batch_prefix_encode((uint32_t)count, out, cap);
	if (pos < 0)
		return pos;
	for (size_t i = 0; i < count; i++) {
		const kvt_get_item *it = &op->get[first + i];
		struct kvt_get_wire w = {
			.key = it->key,
			.region_id = kvt_region_wire_id(c, it->region),
			.offset = it->offset,
			.capacity = it->capacity,
		};

		kvt_get_item_encode(&w, out + pos);
		pos += KVT_GET_ITEM_SIZE;
	}
	return pos;
}

static int keys_encode(struct kvt_conn *c, struct kvt_op *op, size_t first, size_t count,
		       uint8_t *out, size_t cap)
{
	int pos;

	(void)c;
	if (cap < kvt_batch_size((uint32_t)count, KVT_KEY_SIZE))
		return KVT_EMSGSIZE;
	pos = kvt_batch_prefix_encode((uint32_t)count, out, cap);
	if (pos < 0)
		return pos;
	for (size_t i = 0; i < count; i++) {
		kvt_key_encode(&op->keys[first + i], out + pos);
		pos += KVT_KEY_SIZE;
	}
	return pos;
}

/* ---- replies ------------------------------------------------------------------- */

/* Scratch space for n decoded results: an empty GPU batch (one request, no items)
 * still gets room for one, so it never reads as out of memory. */
static void *results_scratch(struct kvt_conn *c, size_t n, size_t size)
{
	return kvt_scratch(c, (n ? n : 1) * size);
}

int kvt_status_results(struct kvt_conn *c, const uint8_t *body, size_t len, size_t n,
		       int32_t **st)
{
	*st = results_scratch(c, n, sizeof(**st));
	if (!*st)
		return KVT_ENOMEM;
	return kvt_status_rep_decode(body, len, (uint32_t)n, *st);
}

int kvt_get_results(struct kvt_conn *c, const uint8_t *body, size_t len, size_t n,
		    struct kvt_get_result **res)
{
	*res = results_scratch(c, n, sizeof(**res));
	if (!*res)
		return KVT_ENOMEM;
	return kvt_get_rep_decode(body, len, (uint32_t)n, *res);
}

void kvt_get_result_store(struct kvt_op *op, const struct kvt_get_result *r, int *status,
			  uint64_t *length, kvt_block_desc *desc)
{
	*status = r->status;
	*length = r->length;
	if (r->status == 0)
		*desc = r->desc;
	else
		op->partial = true;
}

static int put_reply(struct kvt_conn *c, struct kvt_op *op, const struct kvt_req *rq,
		     const uint8_t *body, size_t len)
{
	int32_t *st;
	int rc = kvt_status_results(c, body, len, rq->count, &st);

	if (rc)
		return rc;
	for (size_t i = 0; i < rq->count; i++) {
		op->put[rq->first + i].status = st[i];
		if (st[i])
			op->partial = true;
	}
	return 0;
}

static void put_fail(struct kvt_op *op, const struct kvt_req *rq, int status)
{
	for (size_t i = 0; i < rq->count; i++)
		op->put[rq->first + i].status = status;
}

static int get_reply(struct kvt_conn *c, struct kvt_op *op, const struct kvt_req *rq,
		     const uint8_t *body, size_t len)
{
	struct kvt_get_result *res;
	int rc = kvt_get_results(c, body, len, rq->count, &res);

	if (rc)
		return rc;
	for (size_t i = 0; i < rq->count; i++) {
		kvt_get_item *it = &op->get[rq->first + i];

		kvt_get_result_store(op, &res[i], &it->status, &it->length, &it->desc);
	}
	return 0;
}

static void get_fail(struct kvt_op *op, const struct kvt_req *rq, int status)
{
	for (size_t i = 0; i < rq->count; i++)
		op->get[rq->first + i].status = status;
}

static int lookup_reply(struct kvt_conn *c, struct kvt_op *op, const struct kvt_req *rq,
			const uint8_t *body, size_t len)
{
	uint8_t *tiers = op->tiers ? op->tiers + rq->first : kvt_scratch(c, rq->count);
	uint32_t found;
	int rc;

	if (!tiers)
		return KVT_ENOMEM;
	rc = kvt_lookup_rep_decode(body, len, (uint32_t)rq->count, &found, tiers);
	if (rc)
		return rc;
	/* The chain stops at the first request that came up short. */
	if (found < rq->count && rq->first + found < op->found)
		op->found = rq->first + found;
	return 0;
}

static int keys_reply(struct kvt_conn *c, struct kvt_op *op, const struct kvt_req *rq,
		      const uint8_t *body, size_t len)
{
	int32_t *st;
	int rc = kvt_status_results(c, body, len, rq->count, &st);

	if (rc)
		return rc;
	for (size_t i = 0; i < rq->count; i++) {
		if (op->status)
			op->status[rq->first + i] = st[i];
		if (st[i])
			op->partial = true;
	}
	return 0;
}

static void keys_fail(struct kvt_op *op, const struct kvt_req *rq, int status)
{
	for (size_t i = 0; op->status && i < rq->count; i++)
		op->status[rq->first + i] = status;
}

/* ---- calls --------------------------------------------------------------------- */

int kvt_batch_args_check(const struct kvt_conn *c, const void *items, size_t n)
{
	if (!c || (n && !items))
		return KVT_EINVAL;
	if (n > c->info.max_batch)
		return KVT_E2BIG;
	return 0;
}

/* Argument checks shared by every batch call; KVT_ECLOSED last so that misuse is
 * reported as such even on a broken connection. */
static int batch_check(const struct kvt_conn *c, const void *items, size_t n)
{
	int rc = kvt_batch_args_check(c, items, n);

	return rc ? rc : kvt_conn_usable(c);
}

static void put_prepare(struct kvt_conn *c, struct kvt_op *op, kvt_put_item *items, size_t n)
{
	kvt_op_init_batch(c, op, KVT_OP_PUT, n, KVT_PUT_ITEM_SIZE, put_encode, put_reply,
			  put_fail);
	op->put = items;
}

static void get_prepare(struct kvt_conn *c, struct kvt_op *op, kvt_get_item *items, size_t n)
{
	kvt_op_init_batch(c, op, KVT_OP_GET, n, KVT_GET_ITEM_SIZE, get_encode, get_reply,
			  get_fail);
	op->get = items;
}

KVT_EXPORT int kvt_block_put(kvt_conn *c, kvt_put_item *items, size_t n)
{
	struct kvt_op op;
	int rc;

	rc = batch_check(c, items, n);
	if (rc || n == 0)
		return rc;
	put_prepare(c, &op, items, n);
	return kvt_op_run(c, &op);
}

KVT_EXPORT int kvt_block_get(kvt_conn *c, kvt_get_item *items, size_t n)
{
	struct kvt_op op;
	int rc;

	rc = batch_check(c, items, n);
	if (rc || n == 0)
		return rc;
	get_prepare(c, &op, items, n);
	return kvt_op_run(c, &op);
}

KVT_EXPORT int kvt_block_lookup(kvt_conn *c, const kvt_key *keys, size_t n, size_t *found,
				uint8_t *tiers)
{
	struct kvt_op op;
	int rc;

	if (!found)
		return KVT_EINVAL;
	rc = batch_check(c, keys, n);
	if (rc)
		return rc;
	if (n == 0) {
		*found = 0;
		return 0;
	}
	kvt_op_init_batch(c, &op, KVT_OP_LOOKUP, n, KVT_KEY_SIZE, keys_encode, lookup_reply, NULL);
	op.keys = keys;
	op.tiers = tiers;
	op.found = n;
	rc = kvt_op_run(c, &op);
	if (rc == 0)
		*found = op.found;
	return rc;
}

/* PREFETCH and HINT: 8 bytes of parameters, encoded once into op->ctx, ahead of
 * each frame's key batch. */
static int params_keys_encode(struct kvt_conn *c, struct kvt_op *op, size_t first, size_t count,
			      uint8_t *out, size_t cap)
{
	if (cap < op->body_len)
		return KVT_EMSGSIZE;
	memcpy(out, op->ctx, op->body_len);
	int rc = keys_encode(c, op, first, count, out + op->body_len, cap - op->body_len);
	return rc < 0 ? rc : (int)op->body_len + rc;
}

/* The parameters take len bytes of each frame ahead of the key batch. */
static void params_keys_room(const struct kvt_conn *c, struct kvt_op *op, uint8_t *params,
			     size_t len)
{
	size_t room = c->info.max_frame > KVT_HDR_SIZE + 8 + len
			      ? (c->info.max_frame - KVT_HDR_SIZE - 8 - len) / KVT_KEY_SIZE
			      : 1;
	if (room < op->per_req)
		op->per_req = room ? room : 1;
	op->body_len = len;
	op->ctx = params;
}

static int prefetch_reply(struct kvt_conn *c, struct kvt_op *op, const struct kvt_req *rq,
			  const uint8_t *body, size_t len)
{
	uint8_t *tiers = op->tiers ? op->tiers + rq->first : kvt_scratch(c, rq->count);

	if (!tiers)
		return KVT_ENOMEM;
	return kvt_prefetch_rep_decode(body, len, (uint32_t)rq->count, tiers);
}

KVT_EXPORT int kvt_block_prefetch(kvt_conn *c, const kvt_key *keys, size_t n, uint8_t tier,
				  uint32_t deadline_ms, uint8_t *tiers)
{
	struct kvt_op op;
	struct kvt_prefetch_params p = { .deadline_ms = deadline_ms, .tier = tier };
	uint8_t params[KVT_PREFETCH_PARAMS_SIZE];
	int rc;

	if (tier > KVT_TIER_NVME)
		return KVT_EINVAL;
	rc = batch_check(c, keys, n);
	if (rc || n == 0)
		return rc;
	if (kvt_prefetch_params_encode(&p, params, sizeof(params)) != sizeof(params))
		return KVT_EINVAL;
	kvt_op_init_batch(c, &op, KVT_OP_PREFETCH, n, KVT_KEY_SIZE, params_keys_encode,
			  prefetch_reply, NULL);
	params_keys_room(c, &op, params, sizeof(params));
	op.keys = keys;
	op.tiers = tiers;
	return kvt_op_run(c, &op);
}

KVT_EXPORT int kvt_block_hint(kvt_conn *c, const kvt_key *keys, size_t n, int hint,
			      uint32_t duration_ms, int *status)
{
	struct kvt_op op;
	struct kvt_hint_params p = { .duration_ms = duration_ms, .hint = (uint8_t)hint };
	uint8_t params[KVT_HINT_PARAMS_SIZE];
	int rc;

	if (hint < KVT_HINT_NONE || hint > KVT_HINT_RELEASE)
		return KVT_EINVAL;
	rc = batch_check(c, keys, n);
	if (rc || n == 0)
		return rc;
	if (kvt_hint_params_encode(&p, params, sizeof(params)) != sizeof(params))
		return KVT_EINVAL;
	kvt_op_init_batch(c, &op, KVT_OP_HINT, n, KVT_KEY_SIZE, params_keys_encode, keys_reply,
			  keys_fail);
	params_keys_room(c, &op, params, sizeof(params));
	op.keys = keys;
	op.status = status;
	return kvt_op_run(c, &op);
}

static int keys_call(kvt_conn *c, uint16_t opcode, const kvt_key *keys, size_t n, int *status)
{
	struct kvt_op op;
	int rc;

	rc = batch_check(c, keys, n);
	if (rc || n == 0)
		return rc;
	kvt_op_init_batch(c, &op, opcode, n, KVT_KEY_SIZE, keys_encode, keys_reply, keys_fail);
	op.keys = keys;
	op.status = status;
	return kvt_op_run(c, &op);
}

KVT_EXPORT int kvt_block_delete(kvt_conn *c, const kvt_key *keys, size_t n, int *status)
{
	return keys_call(c, KVT_OP_DELETE, keys, n, status);
}

KVT_EXPORT int kvt_block_pin(kvt_conn *c, const kvt_key *keys, size_t n, int *status)
{
	return keys_call(c, KVT_OP_PIN, keys, n, status);
}

KVT_EXPORT int kvt_block_unpin(kvt_conn *c, const kvt_key *keys, size_t n, int *status)
{
	return keys_call(c, KVT_OP_UNPIN, keys, n, status);
}

/* ---- pipelining ---------------------------------------------------------------- */

/*
 * Start op: it joins the connection's list and sends what free slots allow; the
 * rest goes out while the caller waits for something. Only when no slot at all
 * is free does the caller get KVT_EAGAIN, as the header promises.
 */
static int op_start(struct kvt_conn *c, struct kvt_op *tmpl, kvt_ticket *ticket)
{
	bool was_broken = c->broken != 0;
	struct kvt_op *op;

	if (c->nreqs >= c->inflight_limit && tmpl->n > 0)
		return KVT_EAGAIN;
	op = malloc(sizeof(*op));
	if (!op)
		return KVT_ENOMEM;
	*op = *tmpl;
	op->heap = true;
	kvt_op_attach(c, op);
	kvt_ops_send_pending(c, kvt_deadline(c->timeout_ms));
	if (op->err && kvt_op_done(op)) {
		/* Nothing of it is outstanding: report now instead of via a ticket. */
		int rc = kvt_op_result(c, op, was_broken);

		kvt_op_detach(c, op);
		free(op);
		return rc;
	}
	*ticket = op->ticket;
	return 0;
}

KVT_EXPORT int kvt_block_put_start(kvt_conn *c, kvt_put_item *items, size_t n, kvt_ticket *ticket)
{
	struct kvt_op op;
	int rc;

	if (!ticket)
		return KVT_EINVAL;
	rc = batch_check(c, items, n);
	if (rc)
		return rc;
	put_prepare(c, &op, items, n);
	return op_start(c, &op, ticket);
}

KVT_EXPORT int kvt_block_get_start(kvt_conn *c, kvt_get_item *items, size_t n, kvt_ticket *ticket)
{
	struct kvt_op op;
	int rc;

	if (!ticket)
		return KVT_EINVAL;
	rc = batch_check(c, items, n);
	if (rc)
		return rc;
	get_prepare(c, &op, items, n);
	return op_start(c, &op, ticket);
}

KVT_EXPORT int kvt_wait(kvt_conn *c, kvt_ticket ticket)
{
	struct kvt_op *op;
	int rc;

	if (!c)
		return KVT_EINVAL;
	for (op = c->ops; op; op = op->next) {
		if (op->heap && op->ticket == ticket)
			break;
	}
	if (!op)
		return KVT_ETICKET;
	rc = kvt_op_finish(c, op, kvt_deadline(c->timeout_ms));
	kvt_op_detach(c, op);
	free(op);
	return rc;
}
