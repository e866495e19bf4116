/*
 * client.h - libkvtier's private state, shared by the files of client/ and by
 * nothing else: the connection, the request table, operations (tickets) and
 * regions. Nothing here is part of the public API.
 *
 * Model: every public call becomes one "operation" (struct kvt_op). An operation
 * is sent as one or more wire requests (a batch is split when its encoding would
 * exceed the daemon's max_frame); each request has its own id and sits in the
 * request table until its reply arrives. Replies are matched by id, in whatever
 * order they come, and decoded straight into the items of their operation.
 * Synchronous calls are an operation that the caller waits for at once;
 * *_start/kvt_wait keep the operation on the connection's list until waited for.
 */
#ifndef KVT_CLIENT_H
#define KVT_CLIENT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "kvtier.h"
#include "proto.h"

/* How long kvt_conn_open waits for connect + HELLO (there is no user timeout yet). */
#define KVT_OPEN_TIMEOUT_MS 10000

/* Largest reply frame body the library accepts; bounds the receive buffer. */
#define KVT_MAX_REPLY_BODY (64u << 20)

/* The library never keeps more requests outstanding than this, whatever the daemon
 * allows, so the request table stays small. */
#define KVT_MAX_INFLIGHT_CAP 4096u

struct kvt_op;

/* One outstanding wire request: an entry of the request table. */
struct kvt_req {
	uint64_t id;        /* 0 = free slot */
	struct kvt_op *op;  /* the operation it is part of */
	size_t first;       /* its items are op items [first, first + count) */
	size_t count;
};

/* Decodes a reply body into op for the request's item range. Returns 0 or a
 * request-level error to record on the operation. */
typedef int (*kvt_reply_fn)(struct kvt_conn *c, struct kvt_op *op, const struct kvt_req *rq,
			    const uint8_t *body, size_t len);

/* Called instead of kvt_reply_fn when a request failed as a whole (status < 0),
 * so the operation can mark the items of that request; may be NULL. */
typedef void (*kvt_fail_fn)(struct kvt_op *op, const struct kvt_req *rq, int status);

/* Encodes the body of the request covering items [first, first + count) into out
 * (capacity cap); returns the body length or a negative error. */
typedef int (*kvt_encode_fn)(struct kvt_conn *c, struct kvt_op *op, size_t first, size_t count,
			     uint8_t *out, size_t cap);

struct kvt_op {
	struct kvt_op *next, *prev; /* the connection's list of unfinished + unwaited ops */
	kvt_ticket ticket;          /* the caller's handle; from c->next_ticket */
	uint16_t opcode;
	size_t n;                   /* items (1 for single requests) */
	size_t per_req;             /* items per wire request */
	size_t sent;                /* items handed to requests so far */
	unsigned inflight;          /* requests sent and not yet answered */
	int err;                    /* first request-level error, 0 if none */
	bool cut;                   /* failed by a connection break (err KVT_ECLOSED
				     * unless it had an error already) */
	bool partial;               /* some item failed */
	size_t item_size;           /* wire bytes per item; 0 for single requests */
	size_t body_len;            /* single requests: body length; batches: bytes before
				     * the batch prefix (PREFETCH and HINT parameters) */
	bool heap;                  /* allocated by *_start, freed by kvt_wait/close */
	kvt_encode_fn encode;
	kvt_reply_fn reply;
	kvt_fail_fn fail;
	int send_fd;                /* fd to pass with the first request, or -1 */

	/* Operation-specific state (only the fields the opcode uses are set). */
	kvt_put_item *put;
	kvt_get_item *get;
	const kvt_key *keys;
	int *status;                /* DELETE/PIN/UNPIN: caller's per-key status, or NULL */
	uint8_t *tiers;             /* LOOKUP: caller's tiers, or NULL */
	size_t found;               /* LOOKUP: leading keys present (min over short requests) */
	void *ctx;                  /* single requests: where the reply goes */
	bool error_body;            /* single requests: error replies go to reply too (with
				     * reply_status set), for error bodies that carry details:
				     * CTX_SAVE's MISSING on KVT_ENOENT */
	int reply_status;           /* the request-level status reply is called for */
};

/* A registered region. Stays allocated until kvt_region_destroy; conn is NULL once
 * its connection was closed (base is then already unmapped). */
struct kvt_region {
	struct kvt_conn *conn;
	struct kvt_region *next, *prev; /* conn's list of live regions */
	uint32_t id;
	void *base;
	size_t size;
};

struct kvt_conn {
	int fd;                 /* -1 once broken */
	int broken;             /* 0, or why the connection broke (reported once) */
	int timeout_ms;         /* 0 = wait forever */
	kvt_server_info info;
	uint32_t inflight_limit; /* min(info.max_inflight, KVT_MAX_INFLIGHT_CAP) */

	uint64_t next_id;       /* next request id; starts at 1 */
	uint64_t next_ticket;   /* next ticket; starts at 1 */

	/* Request table: open addressing keyed by id, linear probing. */
	struct kvt_req *reqs;
	uint32_t reqs_mask;     /* capacity - 1; capacity is a power of two */
	uint32_t nreqs;

	struct kvt_op *ops;     /* unfinished or not yet waited-for operations */
	struct kvt_region *regions;

	uint8_t *sbuf;          /* one outgoing frame */
	size_t scap;
	uint8_t *rbuf;          /* received bytes: [rpos, rlen) not yet parsed */
	size_t rcap, rpos, rlen;

	void *scratch;          /* reply decoding space, grown on demand */
	size_t scratch_cap;
};

/* ---- io.c: transport --------------------------------------------------------- */

/* Absolute deadline in ms on CLOCK_MONOTONIC for a call starting now, or -1 (none). */
int64_t kvt_deadline(int timeout_ms);

/* Room for a frame with a body of body_len bytes in c->sbuf; returns where the body
 * goes (c->sbuf + KVT_HDR_SIZE) or NULL when out of memory. */
uint8_t *kvt_io_frame_buf(struct kvt_conn *c, size_t body_len);

/* Send the frame whose body kvt_io_frame_buf's buffer holds: writes the header
 * (REPLY flag clear) and sends header + body, passing fd (>= 0) as SCM_RIGHTS with
 * the first bytes. Replies that arrive while the socket is full are dispatched.
 * Returns 0 or a negative error (the connection is then broken). */
int kvt_io_send_frame(struct kvt_conn *c, uint16_t opcode, uint64_t id, size_t body_len, int fd,
		      int64_t deadline);

/* Receive and dispatch at least one frame (or find the connection broken).
 * Returns 0 or the error that broke the connection. */
int kvt_io_pump(struct kvt_conn *c, int64_t deadline);

/* Break the connection for reason why: close the socket and fail every outstanding
 * request and unsent operation with KVT_ECLOSED (marking them cut). The call in
 * progress reports why instead (kvt_op_finish); later calls see KVT_ECLOSED.
 * Idempotent (the first reason wins). */
void kvt_conn_break(struct kvt_conn *c, int why);

/* ---- request.c: request table and operations ------------------------------- */

/* Table of outstanding requests; sized for the connection's inflight limit. */
int kvt_reqs_init(struct kvt_conn *c);
struct kvt_req *kvt_reqs_find(struct kvt_conn *c, uint64_t id);
void kvt_reqs_remove(struct kvt_conn *c, struct kvt_req *rq);

/* Prepare op (zeroing it) as a batch of n items of item_size wire bytes each; the
 * items per request follow from max_batch and max_frame. */
void kvt_op_init_batch(struct kvt_conn *c, struct kvt_op *op, uint16_t opcode, size_t n,
		       size_t item_size, kvt_encode_fn encode, kvt_reply_fn reply, kvt_fail_fn fail);

/* Prepare op (zeroing it) as one request with a body of body_len bytes. */
void kvt_op_init_single(struct kvt_op *op, uint16_t opcode, size_t body_len, kvt_encode_fn encode,
			kvt_reply_fn reply, void *ctx);

/* Number of wire requests op needs. */
size_t kvt_op_requests(const struct kvt_op *op);

/* Link op into the connection and assign its ticket. */
void kvt_op_attach(struct kvt_conn *c, struct kvt_op *op);
void kvt_op_detach(struct kvt_conn *c, struct kvt_op *op);

/* Send every request of op that fits in the free inflight slots. Returns 0 or a
 * connection error (op->err is then set too). */
int kvt_op_send_some(struct kvt_conn *c, struct kvt_op *op, int64_t deadline);

/* Give every operation with unsent items a chance at free slots, oldest first. */
void kvt_ops_send_pending(struct kvt_conn *c, int64_t deadline);

/* true once every item was sent and answered (or the connection broke). */
bool kvt_op_done(const struct kvt_op *op);

/* Drive op to completion (sending what is left as slots free up) and return the
 * result the synchronous call returns: op->err, else KVT_EPARTIAL if op->partial,
 * else 0 - except that an op cut by a break that happened during this call
 * returns the break's reason (the NOTICE status, KVT_ETIMEDOUT, ...). */
int kvt_op_finish(struct kvt_conn *c, struct kvt_op *op, int64_t deadline);

/* op's result after it is done; was_broken: the connection was broken before the
 * current call started (then a cut op reports KVT_ECLOSED, not the reason). */
int kvt_op_result(const struct kvt_conn *c, const struct kvt_op *op, bool was_broken);

/* Attach op, run it to completion and detach it: the body of every synchronous call. */
int kvt_op_run(struct kvt_conn *c, struct kvt_op *op);

/* Run a single request whose body is a field list (CTX_*, MEM_*): op->encode writes
 * it with a kvt_fields_writer over the (out, cap) it gets, and is first called with
 * out NULL and cap SIZE_MAX, a counting writer, to size the body. A body over
 * max_frame fails with KVT_EMSGSIZE before anything is sent. */
int kvt_op_run_fields(struct kvt_conn *c, struct kvt_op *op);

/* Dispatch a complete reply frame. Returns 0, or an error that breaks the stream. */
int kvt_dispatch(struct kvt_conn *c, const struct kvt_hdr *h, const uint8_t *body);

/* Ensure c->scratch holds at least bytes; returns it or NULL. */
void *kvt_scratch(struct kvt_conn *c, size_t bytes);

/* KVT_ECLOSED if c can take no new request, else 0. */
int kvt_conn_usable(const struct kvt_conn *c);

/* ---- ctx.c: argument and reply helpers shared with mem.c ---------------------- */

/* LIMIT (CTX_LIST, MEM_LIST) and K (MEM_SEARCH) on the wire: 1..this. */
#define KVT_LIST_LIMIT_MAX 1000u

/* Length of the name argument s: min..KVT_NAME_LEN_MAX bytes (0 for a NULL s when
 * min is 0), else KVT_EINVAL. */
int kvt_name_arg(const char *s, size_t min, size_t *len);

/* Copy the name field tag of a reply (1..KVT_NAME_LEN_MAX bytes, no NUL inside) into
 * out, NUL-terminated: 0 or KVT_EBADMSG. *len (may be NULL) receives its length. */
int kvt_name_field(const struct kvt_fields *f, unsigned tag, char out[KVT_NAME_LEN_MAX + 1],
		   size_t *len);

/* The MORE field of a list reply: required, 0 or 1 (KVT_EBADMSG otherwise). */
int kvt_more_field(const struct kvt_fields *f, bool *more);

/* The wire image (little-endian) of n 32-bit words (u32 or f32) at v: v itself on a
 * little-endian host, else a converted copy that *tmp owns (free it; NULL when v
 * was returned). NULL if out of memory. */
const void *kvt_le32_image(const void *v, size_t n, void **tmp);

/* Copy n little-endian 32-bit words from the wire into dst (u32 or f32 array). */
void kvt_le32_copy(void *dst, const uint8_t *src, size_t n);

/* What a field-list encoder returns: the body length, or the writer's error. */
int kvt_fw_result(const struct kvt_fields_writer *w);

/* kvt_reply_fn for replies with no fields to read (CTX_DELETE, MEM_PUT, MEM_DELETE):
 * the framing must still be right; fields a later daemon adds are ignored. */
int kvt_empty_reply(struct kvt_conn *c, struct kvt_op *op, const struct kvt_req *rq,
		    const uint8_t *body, size_t len);

/* Bytewise order of (a, alen) and (b, blen), a shorter string before its extensions:
 * <0, 0, >0 like memcmp. */
int kvt_name_cmp(const char *a, size_t alen, const char *b, size_t blen);

/* ---- block.c: reply decoding and checks shared with gpu.c ------------------------ */

/* Argument checks of every batch call (KVT_EINVAL, KVT_E2BIG or 0); callers check
 * kvt_conn_usable after their own argument checks. */
int kvt_batch_args_check(const struct kvt_conn *c, const void *items, size_t n);

/* Decode a per-item status reply for n items into c's scratch space (*st). */
int kvt_status_results(struct kvt_conn *c, const uint8_t *body, size_t len, size_t n,
		       int32_t **st);

/* Decode a GET-style reply for n items into c's scratch space (*res). */
int kvt_get_results(struct kvt_conn *c, const uint8_t *body, size_t len, size_t n,
		    struct kvt_get_result **res);

/* Copy one GET-style result into an item's out fields (desc only on success); a
 * failed item makes op partial. */
void kvt_get_result_store(struct kvt_op *op, const struct kvt_get_result *r, int *status,
			  uint64_t *length, kvt_block_desc *desc);

/* ---- region.c ------------------------------------------------------------------ */

/* The region id a REGISTER or GPU_REGISTER reply carries (0 is refused with
 * KVT_EPROTO: it is the id that means "no region"). */
int kvt_register_rep_id(const uint8_t *body, size_t len, uint32_t *id);

/* The body of an UNREGISTER or GPU_REGION_DESTROY request for region id. */
int kvt_unregister_body(uint32_t id, uint8_t *out, size_t cap);

/* The region id to put on the wire for r on c: 0 (never valid, so the daemon
 * answers KVT_EREGION for the item) if r is NULL, dead or from another connection. */
uint32_t kvt_region_wire_id(const struct kvt_conn *c, const kvt_region *r);

/* Unmap every region of c and mark it dead (kvt_conn_close). */
void kvt_regions_release(struct kvt_conn *c);

/* Map a negative errno from a system call to a KVT_E* code. */
int kvt_from_errno(int e);

#endif /* KVT_CLIENT_H */
