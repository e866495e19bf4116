/*
 * request.c - libkvtier's request table and operations: assigning request ids,
 * splitting a batch into requests that fit max_frame, keeping at most the
 * inflight limit outstanding, matching replies (in any order) to their requests
 * by id, and driving an operation until every request of it is answered.
 */
#include <stdlib.h>
#include <string.h>

#include "client.h"

/* ---- request table --------------------------------------------------------------
 * Open addressing with linear probing, keyed by request id. Ids are handed out in
 * sequence, so id & mask spreads them evenly; the table is at least twice the
 * inflight limit, so probes stay short. Removal shifts entries back instead of
 * leaving tombstones. */

int kvt_reqs_init(struct kvt_conn *c)
{
	uint32_t cap = 8;
	struct kvt_req *t;

	while (cap < 2 * c->inflight_limit)
		cap *= 2;
	t = calloc(cap, sizeof(*t));
	if (!t)
		return KVT_ENOMEM;
	free(c->reqs);
	c->reqs = t;
	c->reqs_mask = cap - 1;
	c->nreqs = 0;
	return 0;
}

struct kvt_req *kvt_reqs_find(struct kvt_conn *c, uint64_t id)
{
	uint32_t i;

	if (!id || !c->reqs)
		return NULL;
	for (i = (uint32_t)id & c->reqs_mask; c->reqs[i].id; i = (i + 1) & c->reqs_mask) {
		if (c->reqs[i].id == id)
			return &c->reqs[i];
	}
	return NULL;
}

static struct kvt_req *reqs_insert(struct kvt_conn *c, uint64_t id)
{
	uint32_t i = (uint32_t)id & c->reqs_mask;

	while (c->reqs[i].id)
		i = (i + 1) & c->reqs_mask;
	c->reqs[i].id = id;
	c->nreqs++;
	return &c->reqs[i];
}

void kvt_reqs_remove(struct kvt_conn *c, struct kvt_req *rq)
{
	uint32_t mask = c->reqs_mask;
	uint32_t i = (uint32_t)(rq - c->reqs);
	uint32_t j = i;

	for (;;) {
		uint32_t home;

		j = (j + 1) & mask;
		if (!c->reqs[j].id)
			break;
		home = (uint32_t)c->reqs[j].id & mask;
		/* Move j into the hole at i unless j's home lies cyclically in (i, j]. */
		if (i <= j ? (home <= i || home > j) : (home <= i && home > j)) {
			c->reqs[i] = c->reqs[j];
			i = j;
		}
	}
	memset(&c->reqs[i], 0, sizeof(c->reqs[i]));
	c->nreqs--;
}

/* ---- operations ---------------------------------------------------------------- */

void kvt_op_init_batch(struct kvt_conn *c, struct kvt_op *op, uint16_t opcode, size_t n,
		       size_t item_size, kvt_encode_fn encode, kvt_reply_fn reply, kvt_fail_fn fail)
{
	size_t per = c->info.max_batch;
	size_t room = c->info.max_frame > KVT_HDR_SIZE + 8 ?
			      (c->info.max_frame - KVT_HDR_SIZE - 8) / item_size : 1;

	/* Split so that every request's frame fits max_frame: the caller sees one
	 * batch, the daemon sees several. */
	if (room < per)
		per = room;
	if (per < 1)
		per = 1;
	memset(op, 0, sizeof(*op));
	op->opcode = opcode;
	op->n = n;
	op->per_req = per;
	op->item_size = item_size;
	op->encode = encode;
	op->reply = reply;
	op->fail = fail;
	op->send_fd = -1;
}

void kvt_op_init_single(struct kvt_op *op, uint16_t opcode, size_t body_len, kvt_encode_fn encode,
			kvt_reply_fn reply, void *ctx)
{
	memset(op, 0, sizeof(*op));
	op->opcode = opcode;
	op->n = 1;
	op->per_req = 1;
	op->body_len = body_len;
	op->encode = encode;
	op->reply = reply;
	op->ctx = ctx;
	op->send_fd = -1;
}

size_t kvt_op_requests(const struct kvt_op *op)
{
	return (op->n + op->per_req - 1) / op->per_req;
}

void kvt_op_attach(struct kvt_conn *c, struct kvt_op *op)
{
	struct kvt_op *last = NULL;

	/* Tickets have their own sequence: an operation may wait for free slots
	 * before its first request gets an id. */
	op->ticket = c->next_ticket++;
	/* Appended, so unsent parts of older operations go out first. */
	for (struct kvt_op *o = c->ops; o; o = o->next)
		last = o;
	op->prev = last;
	op->next = NULL;
	if (last)
		last->next = op;
	else
		c->ops = op;
}

void kvt_op_detach(struct kvt_conn *c, struct kvt_op *op)
{
	if (op->prev)
		op->prev->next = op->next;
	else if (c->ops == op)
		c->ops = op->next;
	if (op->next)
		op->next->prev = op->prev;
	op->next = op->prev = NULL;
}

bool kvt_op_done(const struct kvt_op *op)
{
	return op->sent >= op->n && op->inflight == 0;
}

int kvt_conn_usable(const struct kvt_conn *c)
{
	return c->fd < 0 || c->broken ? KVT_ECLOSED : 0;
}

void *kvt_scratch(struct kvt_conn *c, size_t bytes)
{
	if (c->scratch_cap < bytes) {
		void *p = realloc(c->scratch, bytes);

		if (!p)
			return NULL;
		c->scratch = p;
		c->scratch_cap = bytes;
	}
	return c->scratch;
}

int kvt_op_send_some(struct kvt_conn *c, struct kvt_op *op, int64_t deadline)
{
	while (op->sent < op->n) {
		size_t first = op->sent;
		size_t count = op->n - first < op->per_req ? op->n - first : op->per_req;
		/* Batches: body_len is what comes before the batch (PREFETCH's parameters). */
		size_t body = op->item_size ? op->body_len + 8 + count * op->item_size : op->body_len;
		uint64_t id;
		struct kvt_req *rq;
		uint8_t *buf;
		int len, rc;

		if (kvt_conn_usable(c)) {
			op->sent = op->n;
			if (!op->err)
				op->err = KVT_ECLOSED;
			return op->err;
		}
		if (c->nreqs >= c->inflight_limit)
			return 0; /* the rest goes out as replies free slots */

		buf = kvt_io_frame_buf(c, body);
		len = buf ? op->encode(c, op, first, count, buf, body) : KVT_ENOMEM;
		if (len < 0 || (size_t)len != body) {
			/* Nothing of this request left the library; fail what is unsent. */
			op->sent = op->n;
			if (!op->err)
				op->err = len < 0 ? len : KVT_EPROTO;
			return op->err;
		}

		id = c->next_id++;
		rq = reqs_insert(c, id);
		rq->op = op;
		rq->first = first;
		rq->count = count;
		op->inflight++;
		op->sent += count;
		/* Registered before sending, so a break during the send fails it. */
		rc = kvt_io_send_frame(c, op->opcode, id, body, first == 0 ? op->send_fd : -1,
				       deadline);
		if (rc)
			return rc;
	}
	return 0;
}

void kvt_ops_send_pending(struct kvt_conn *c, int64_t deadline)
{
	for (struct kvt_op *op = c->ops; op; op = op->next) {
		if (c->nreqs >= c->inflight_limit || kvt_conn_usable(c))
			break;
		if (op->sent < op->n)
			kvt_op_send_some(c, op, deadline);
	}
}

int kvt_op_result(const struct kvt_conn *c, const struct kvt_op *op, bool was_broken)
{
	/* The call during which the connection broke says why; a ticket cut earlier,
	 * collected later, just says the connection is gone. */
	if (op->cut && !was_broken && c->broken)
		return c->broken;
	if (op->err)
		return op->err;
	return op->partial ? KVT_EPARTIAL : 0;
}

int kvt_op_finish(struct kvt_conn *c, struct kvt_op *op, int64_t deadline)
{
	bool was_broken = c->broken != 0;

	for (;;) {
		if (op->sent < op->n)
			kvt_ops_send_pending(c, deadline);
		if (kvt_op_done(op))
			break;
		/* Any error here broke the connection, which failed op too. */
		kvt_io_pump(c, deadline);
	}
	return kvt_op_result(c, op, was_broken);
}

int kvt_op_run(struct kvt_conn *c, struct kvt_op *op)
{
	int64_t deadline = kvt_deadline(c->timeout_ms);
	int rc;

	if (kvt_conn_usable(c))
		return KVT_ECLOSED;
	kvt_op_attach(c, op);
	rc = kvt_op_finish(c, op, deadline);
	kvt_op_detach(c, op);
	return rc;
}

int kvt_op_run_fields(struct kvt_conn *c, struct kvt_op *op)
{
	/* The same function sizes the body and writes it, so the two cannot differ. */
	int len = op->encode(c, op, 0, 1, NULL, SIZE_MAX);

	if (len < 0)
		return len;
	if ((size_t)len > c->info.max_frame - KVT_HDR_SIZE)
		return KVT_EMSGSIZE;
	op->body_len = (size_t)len;
	return kvt_op_run(c, op);
}

int kvt_dispatch(struct kvt_conn *c, const struct kvt_hdr *h, const uint8_t *body)
{
	struct kvt_req *slot;
	struct kvt_req rq;
	struct kvt_op *op;
	int rc;

	if (h->opcode == KVT_OP_NOTICE) {
		/* The daemon's last word; its status is why it is closing. */
		return h->status < 0 ? h->status : KVT_ECLOSED;
	}
	if (kvt_hdr_check_flags(h, true) || !(h->flags & KVT_F_REPLY))
		return KVT_EPROTO;
	slot = kvt_reqs_find(c, h->request_id);
	if (!slot || slot->op->opcode != h->opcode)
		return KVT_EPROTO; /* an answer to nothing we asked: stream is not ours */

	rq = *slot;
	kvt_reqs_remove(c, slot);
	op = rq.op;
	op->inflight--;

	if (h->status < 0 && op->error_body) {
		op->reply_status = h->status;
		rc = op->reply(c, op, &rq, body, h->body_len);
	} else if (h->status) {
		rc = h->status < 0 ? h->status : KVT_EPROTO;
		if (op->fail)
			op->fail(op, &rq, rc);
	} else {
		rc = op->reply ? op->reply(c, op, &rq, body, h->body_len) : 0;
	}
	if (rc && !op->err)
		op->err = rc;
	return 0;
}
