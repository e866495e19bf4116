/*
 * proto.h - kvtier wire protocol v1: frame header and message bodies.
 *
 * Pure encode/decode over byte buffers, shared by kvtierd and libkvtier. No I/O,
 * no allocation: decoders validate every length against the bytes present and
 * against the caller's limits, and return views into the buffer. docs/PROTOCOL.md
 * is the specification; this file implements it.
 */
#ifndef KVT_PROTO_H
#define KVT_PROTO_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "kvtier.h"

/* ---- frame header ------------------------------------------------------- */

#define KVT_MAGIC 0x5054564bu /* bytes 'K' 'V' 'T' 'P' on the wire */
#define KVT_PROTO_MIN_VERSION 1
#define KVT_PROTO_MAX_VERSION 1
#define KVT_HDR_SIZE 32

/* Flags bits 0..15 must be understood (reject if unknown); bits 16..31 may be ignored. */
#define KVT_F_REPLY (1u << 0)
#define KVT_F_MUST_MASK 0x0000ffffu
#define KVT_F_KNOWN_MUST KVT_F_REPLY

enum kvt_opcode {
	KVT_OP_HELLO = 1,
	KVT_OP_PING = 2,
	KVT_OP_REGISTER = 3,
	KVT_OP_UNREGISTER = 4,
	KVT_OP_PUT = 5,
	KVT_OP_GET = 6,
	KVT_OP_LOOKUP = 7,
	KVT_OP_DELETE = 8,
	KVT_OP_PIN = 9,
	KVT_OP_UNPIN = 10,
	KVT_OP_STATS = 11,
	KVT_OP_PREFETCH = 12,
	KVT_OP_GPU_REGION_REGISTER = 13,
	KVT_OP_GPU_REGION_DESTROY = 14,
	KVT_OP_GPU_PUT = 15,
	KVT_OP_GPU_GET = 16,
	KVT_OP_HINT = 17,
	KVT_OP_CTX_SAVE = 20,
	KVT_OP_CTX_LOAD = 21,
	KVT_OP_CTX_LIST = 22,
	KVT_OP_CTX_DELETE = 23,
	KVT_OP_MEM_PUT = 30,
	KVT_OP_MEM_GET = 31,
	KVT_OP_MEM_DELETE = 32,
	KVT_OP_MEM_LIST = 33,
	KVT_OP_MEM_SEARCH = 34,
	/* Sent by the daemon only, request id 0, just before it closes the
	 * connection for a stream-level reason (status says which). */
	KVT_OP_NOTICE = 255,
};

struct kvt_hdr {
	uint32_t magic;
	uint16_t version;
	uint16_t opcode;
	uint32_t flags;
	uint32_t body_len;
	uint64_t request_id;
	int32_t status;
	uint32_t reserved;
};

/* Name of an opcode ("PUT"), or "UNKNOWN". */
const char *kvt_op_name(uint16_t opcode);

void kvt_hdr_encode(const struct kvt_hdr *h, uint8_t out[KVT_HDR_SIZE]);

/*
 * Decode and check a header: magic, version (KVT_EVERSION if outside
 * [KVT_PROTO_MIN_VERSION, KVT_PROTO_MAX_VERSION]), reserved == 0 (KVT_ERESERVED),
 * body_len <= max_body (KVT_EMSGSIZE). Fills *h in every case where the 32 bytes
 * were present, so a caller can still answer with the request id. Returns 0 or the
 * error; KVT_EBADMAGIC is the only one after which nothing in *h can be trusted.
 * Unknown opcodes and flags are for the dispatcher to judge (kvt_hdr_check_flags).
 */
int kvt_hdr_decode(const uint8_t in[KVT_HDR_SIZE], uint32_t max_body, struct kvt_hdr *h);

/* KVT_EFLAGS if h sets a must-understand flag this version does not know, or if the
 * REPLY bit does not match is_reply (whether the frame should be a reply); else 0. */
int kvt_hdr_check_flags(const struct kvt_hdr *h, bool is_reply);

/* ---- message bodies ------------------------------------------------------ */

#define KVT_NAME_MAX 64 /* client/server name strings in HELLO */

struct kvt_hello_req {
	uint16_t min_version;
	uint16_t max_version;
	uint32_t flags; /* reserved, 0 */
	const char *name; /* view into the buffer, not NUL-terminated */
	uint16_t name_len;
};

struct kvt_hello_rep {
	uint16_t version;
	uint32_t tenant;
	uint32_t max_frame;
	uint32_t max_inflight;
	uint32_t max_batch;
	uint32_t max_regions;
	uint64_t max_region_size;
	uint64_t max_block_size;
	const char *server; /* view, not NUL-terminated */
	uint16_t server_len;
};

struct kvt_register_req {
	uint64_t size;
	uint32_t flags; /* reserved, 0 */
};

struct kvt_register_rep {
	uint32_t region_id;
};

struct kvt_unregister_req {
	uint32_t region_id;
};

/* Wire sizes of batch items. */
#define KVT_KEY_SIZE 16
#define KVT_DESC_SIZE 16
#define KVT_PUT_ITEM_SIZE 72
#define KVT_GET_ITEM_SIZE 40
#define KVT_GET_RESULT_SIZE 32

struct kvt_put_wire {
	kvt_key key;
	kvt_key parent;
	uint32_t region_id;
	uint64_t offset;
	uint64_t length;
	kvt_block_desc desc;
};

struct kvt_get_wire {
	kvt_key key;
	uint32_t region_id;
	uint64_t offset;
	uint64_t capacity;
};

struct kvt_get_result {
	int32_t status;
	uint64_t length;
	kvt_block_desc desc;
};

/*
 * A decoded batch request: count items of item_size bytes starting at items.
 * Use the *_item_decode helpers to read item i. Every batch body is
 * u32 count, u32 flags (reserved, 0), then count fixed-size items.
 */
struct kvt_batch {
	uint32_t count;
	uint32_t flags;
	const uint8_t *items;
	size_t item_size;
};

/*
 * Encoders write into out (capacity cap) and return the number of bytes written,
 * or KVT_EMSGSIZE if cap is too small. *_size helpers give the exact body size.
 */
size_t kvt_hello_req_size(uint16_t name_len);
int kvt_hello_req_encode(const struct kvt_hello_req *m, uint8_t *out, size_t cap);
int kvt_hello_req_decode(const uint8_t *in, size_t len, struct kvt_hello_req *m);

size_t kvt_hello_rep_size(uint16_t server_len);
int kvt_hello_rep_encode(const struct kvt_hello_rep *m, uint8_t *out, size_t cap);
int kvt_hello_rep_decode(const uint8_t *in, size_t len, struct kvt_hello_rep *m);

#define KVT_REGISTER_REQ_SIZE 16
#define KVT_REGISTER_REP_SIZE 8
#define KVT_UNREGISTER_REQ_SIZE 8
int kvt_register_req_encode(const struct kvt_register_req *m, uint8_t *out, size_t cap);
int kvt_register_req_decode(const uint8_t *in, size_t len, struct kvt_register_req *m);
int kvt_register_rep_encode(const struct kvt_register_rep *m, uint8_t *out, size_t cap);
int kvt_register_rep_decode(const uint8_t *in, size_t len, struct kvt_register_rep *m);
int kvt_unregister_req_encode(const struct kvt_unregister_req *m, uint8_t *out, size_t cap);
int kvt_unregister_req_decode(const uint8_t *in, size_t len, struct kvt_unregister_req *m);

/* Batches: PUT (put_wire items), GET (get_wire items), and key batches for
 * LOOKUP, DELETE, PIN, UNPIN. decode checks count <= max_batch (KVT_E2BIG),
 * flags == 0 (KVT_ERESERVED), and len == 8 + count * item_size exactly (KVT_EBADMSG). */
size_t kvt_batch_size(uint32_t count, size_t item_size);
int kvt_batch_decode(const uint8_t *in, size_t len, size_t item_size, uint32_t max_batch,
		     struct kvt_batch *b);
/* Write the 8-byte batch prefix (count, flags=0). Returns 8 or KVT_EMSGSIZE. */
int kvt_batch_prefix_encode(uint32_t count, uint8_t *out, size_t cap);

void kvt_put_item_encode(const struct kvt_put_wire *it, uint8_t out[KVT_PUT_ITEM_SIZE]);
/* KVT_ERESERVED if a reserved field of the item or its descriptor is not zero. */
int kvt_put_item_decode(const uint8_t in[KVT_PUT_ITEM_SIZE], struct kvt_put_wire *it);
void kvt_get_item_encode(const struct kvt_get_wire *it, uint8_t out[KVT_GET_ITEM_SIZE]);
int kvt_get_item_decode(const uint8_t in[KVT_GET_ITEM_SIZE], struct kvt_get_wire *it);
void kvt_key_encode(const kvt_key *k, uint8_t out[KVT_KEY_SIZE]);
void kvt_key_decode(const uint8_t in[KVT_KEY_SIZE], kvt_key *k);
void kvt_desc_encode(const kvt_block_desc *d, uint8_t out[KVT_DESC_SIZE]);
int kvt_desc_decode(const uint8_t in[KVT_DESC_SIZE], kvt_block_desc *d);

/* Status replies (PUT, DELETE, PIN, UNPIN): u32 count, u32 reserved, count x i32. */
size_t kvt_status_rep_size(uint32_t count);
int kvt_status_rep_encode(const int32_t *status, uint32_t count, uint8_t *out, size_t cap);
/* Decodes into status[0..count); count must match the reply's count (KVT_EBADMSG). */
int kvt_status_rep_decode(const uint8_t *in, size_t len, uint32_t count, int32_t *status);

/* GET reply: u32 count, u32 reserved, count x 32-byte results. */
size_t kvt_get_rep_size(uint32_t count);
int kvt_get_rep_encode(const struct kvt_get_result *r, uint32_t count, uint8_t *out, size_t cap);
int kvt_get_rep_decode(const uint8_t *in, size_t len, uint32_t count, struct kvt_get_result *r);

/* LOOKUP reply: u32 found, u32 reserved, found x u8 tier. found must be <= asked. */
size_t kvt_lookup_rep_size(uint32_t found);
int kvt_lookup_rep_encode(uint32_t found, const uint8_t *tiers, uint8_t *out, size_t cap);
int kvt_lookup_rep_decode(const uint8_t *in, size_t len, uint32_t asked, uint32_t *found,
			  uint8_t *tiers);

/* PREFETCH request: u32 deadline_ms, u8 tier, 3 reserved bytes (0), then a key batch
 * (u32 count, u32 flags, keys). Reply: u32 count, u32 reserved, count x u8 where each
 * key is when the reply is sent: a tier (0..2) or KVT_TIER_NONE. */
#define KVT_PREFETCH_PARAMS_SIZE 8

struct kvt_prefetch_params {
	uint32_t deadline_ms;
	uint8_t tier;
};

int kvt_prefetch_params_encode(const struct kvt_prefetch_params *p, uint8_t *out, size_t cap);

/* HINT request: u32 duration_ms, u8 hint (enum kvt_hint), 3 reserved bytes (0), then
 * a key batch. Reply: a status reply (per key: 0, or KVT_ENOENT not in host RAM). */
#define KVT_HINT_PARAMS_SIZE 8

struct kvt_hint_params {
	uint32_t duration_ms;
	uint8_t hint;
};

int kvt_hint_params_encode(const struct kvt_hint_params *p, uint8_t *out, size_t cap);
/* Checks the parameters (reserved bytes 0: KVT_ERESERVED; hint 0..2: else KVT_EBADMSG)
 * and decodes the key batch after them like kvt_batch_decode. */
int kvt_hint_req_decode(const uint8_t *in, size_t len, uint32_t max_batch,
			struct kvt_hint_params *p, struct kvt_batch *b);
/* Checks the parameters (reserved bytes 0: KVT_ERESERVED; tier 0..2: else KVT_EBADMSG)
 * and decodes the key batch after them like kvt_batch_decode. */
int kvt_prefetch_req_decode(const uint8_t *in, size_t len, uint32_t max_batch,
			    struct kvt_prefetch_params *p, struct kvt_batch *b);
size_t kvt_prefetch_rep_size(uint32_t count);
int kvt_prefetch_rep_encode(const uint8_t *tiers, uint32_t count, uint8_t *out, size_t cap);
/* count must match the reply's (KVT_EBADMSG); each value 0..2 or KVT_TIER_NONE. */
int kvt_prefetch_rep_decode(const uint8_t *in, size_t len, uint32_t count, uint8_t *tiers);

/* STATS request: u32 flags (0). Reply: u32 count, u32 reserved, then count entries of
 * u8 kind (1 = u64, 2 = text), u8 reserved, u16 name_len, u32 value_len, name, value. */
#define KVT_STATS_REQ_SIZE 4
#define KVT_STAT_U64 1
#define KVT_STAT_TEXT 2
#define KVT_STAT_NAME_MAX 128
#define KVT_STAT_TEXT_MAX 1024

struct kvt_stat_entry {
	uint8_t kind;
	const char *name; /* view */
	uint16_t name_len;
	uint64_t value;   /* KVT_STAT_U64 */
	const char *text; /* KVT_STAT_TEXT, view */
	uint32_t text_len;
};

/* Incremental STATS reply writer: init reserves the 8-byte prefix, add appends an
 * entry (KVT_EMSGSIZE when it does not fit; the writer is unchanged then),
 * finish writes the count and returns the body length. */
struct kvt_stats_writer {
	uint8_t *buf;
	size_t cap;
	size_t len;
	uint32_t count;
};
void kvt_stats_writer_init(struct kvt_stats_writer *w, uint8_t *buf, size_t cap);
int kvt_stats_writer_u64(struct kvt_stats_writer *w, const char *name, uint64_t value);
int kvt_stats_writer_text(struct kvt_stats_writer *w, const char *name, const char *text);
size_t kvt_stats_writer_finish(struct kvt_stats_writer *w);

/* Iterate a STATS reply: *pos starts at 0; returns 1 and fills *e while entries remain,
 * 0 at the end, or KVT_EBADMSG/KVT_ERESERVED. kvt_stats_rep_count validates the whole
 * body and returns the declared count. */
int kvt_stats_rep_count(const uint8_t *in, size_t len, uint32_t *count);
int kvt_stats_rep_next(const uint8_t *in, size_t len, size_t *pos, struct kvt_stat_entry *e);

/* NOTICE body: u16 len, message bytes (<= 256). */
#define KVT_NOTICE_MAX 256
int kvt_notice_encode(const char *msg, uint8_t *out, size_t cap);
int kvt_notice_decode(const uint8_t *in, size_t len, const char **msg, uint16_t *msg_len);

/* ---- GPU regions (GPU_REGION_REGISTER, GPU_REGION_DESTROY, GPU_PUT, GPU_GET) ---- */

/*
 * GPU_REGION_REGISTER request: a 104-byte fixed part (kind, counts, device UUID,
 * the paged-KV layout), then nbuffers buffers of 80 bytes, then `layers` layer
 * entries of 16 bytes. Reply: the same 8 bytes as REGISTER's (region id).
 * GPU_REGION_DESTROY request: the same 8 bytes as UNREGISTER's. docs/PROTOCOL.md
 * has the tables.
 */
#define KVT_GPU_REG_FIXED_SIZE 104
#define KVT_GPU_BUF_SIZE 80
#define KVT_GPU_LAYER_SIZE 16
#define KVT_GPU_KIND_CUDA_IPC 1 /* buffers are CUDA IPC memory handles */
#define KVT_GPU_KIND_EMULATED 2 /* buffers are host region ids (gpu_backend = emulated) */

struct kvt_gpu_layout_wire {
	uint32_t layers, planes, heads, head_dim, elem_size, page_tokens;
	uint64_t num_pages;
	int64_t plane_stride, page_stride, token_stride, head_stride, dim_stride;
	uint16_t dtype, layout_id;
};

struct kvt_gpu_buf_wire {
	uint8_t handle[KVT_GPU_IPC_HANDLE_SIZE]; /* CUDA IPC: the handle; emulated: zero */
	uint64_t size;
	uint32_t region_id; /* emulated: a host region id; CUDA IPC: 0 */
};

struct kvt_gpu_layer_wire {
	uint32_t buffer;
	uint64_t offset;
};

struct kvt_gpu_register_req {
	uint16_t kind;
	uint16_t nbuffers;
	uint8_t uuid[KVT_GPU_UUID_SIZE];
	struct kvt_gpu_layout_wire layout;
	const uint8_t *buffers; /* decode: view of nbuffers x KVT_GPU_BUF_SIZE */
	const uint8_t *layer;   /* decode: view of layout.layers x KVT_GPU_LAYER_SIZE */
};

size_t kvt_gpu_register_req_size(uint32_t nbuffers, uint32_t layers);
/* m's buffers/layer views are ignored: bufs[0..m->nbuffers) and layers[0..
 * m->layout.layers) are written instead. Returns the length or KVT_EMSGSIZE
 * (KVT_EINVAL for counts outside 1..KVT_GPU_MAX_BUFFERS / KVT_GPU_MAX_LAYERS). */
int kvt_gpu_register_req_encode(const struct kvt_gpu_register_req *m,
				const struct kvt_gpu_buf_wire *bufs,
				const struct kvt_gpu_layer_wire *layers, uint8_t *out, size_t cap);
/*
 * Checks, in order: at least the fixed part (KVT_EBADMSG); kind 1 or 2
 * (KVT_EBADMSG); nbuffers and layers not 0 (KVT_EBADMSG) and within
 * KVT_GPU_MAX_BUFFERS / KVT_GPU_MAX_LAYERS (KVT_E2BIG); reserved fields 0
 * (KVT_ERESERVED); the length exactly the fixed part plus the arrays
 * (KVT_EBADMSG); every buffer: reserved 0, and for CUDA IPC region_id 0, for
 * emulated an all-zero handle (KVT_ERESERVED); every layer: reserved 0
 * (KVT_ERESERVED) and buffer < nbuffers (KVT_EBADMSG). The layout's values are
 * not judged here (the daemon runs kvl_layout_check). Pure.
 */
int kvt_gpu_register_req_decode(const uint8_t *in, size_t len, struct kvt_gpu_register_req *m);
/* Entry i of a decoded request (in range and checked by the decode). */
void kvt_gpu_buf_get(const struct kvt_gpu_register_req *m, uint32_t i, struct kvt_gpu_buf_wire *b);
void kvt_gpu_layer_get(const struct kvt_gpu_register_req *m, uint32_t i,
		       struct kvt_gpu_layer_wire *l);

/*
 * GPU_PUT / GPU_GET request: u32 count, u32 npage_ids, u32 flags (0),
 * u32 reserved (0), count items of 56 bytes, then npage_ids u32 page ids that the
 * items index (pages_offset, npages). Reply: GPU_PUT a status reply, GPU_GET a GET
 * reply (kvt_get_rep_*).
 */
#define KVT_GPU_XFER_PREFIX 16
#define KVT_GPU_ITEM_SIZE 56

struct kvt_gpu_item_wire {
	kvt_key key;
	kvt_key parent; /* GPU_PUT; zero in GPU_GET */
	uint32_t region_id;
	uint32_t first_token;
	uint32_t ntokens;
	uint32_t pages_offset;
	uint32_t npages;
};

struct kvt_gpu_xfer {
	uint32_t count;
	uint32_t npage_ids;
	const uint8_t *items; /* view: count x KVT_GPU_ITEM_SIZE */
	const uint8_t *pages; /* view: npage_ids x u32 */
};

/* Exact body size, or 0 when it would not fit a size_t. */
size_t kvt_gpu_xfer_size(uint32_t count, uint32_t npage_ids);
/* Writes the 16-byte prefix; returns 16 or KVT_EMSGSIZE. */
int kvt_gpu_xfer_prefix_encode(uint32_t count, uint32_t npage_ids, uint8_t *out, size_t cap);
void kvt_gpu_item_encode(const struct kvt_gpu_item_wire *it, uint8_t out[KVT_GPU_ITEM_SIZE]);
/* KVT_ERESERVED (reserved word; a GPU_GET item with a parent), KVT_EBADMSG
 * (pages_offset + npages beyond npage_ids, overflow included). */
int kvt_gpu_item_decode(const uint8_t in[KVT_GPU_ITEM_SIZE], bool is_put, uint32_t npage_ids,
			struct kvt_gpu_item_wire *it);
/*
 * Checks, in order: at least the prefix (KVT_EBADMSG); count > max_batch or
 * npage_ids > max_pages (KVT_E2BIG); flags or reserved not 0 (KVT_ERESERVED); the
 * length exactly prefix + items + page ids (KVT_EBADMSG); then every item with
 * kvt_gpu_item_decode, so a malformed item refuses the whole request. Pure.
 */
int kvt_gpu_xfer_decode(const uint8_t *in, size_t len, bool is_put, uint32_t max_batch,
			uint32_t max_pages, struct kvt_gpu_xfer *x);
/* Page id j of a decoded request (j < npage_ids). */
static inline uint32_t kvt_gpu_xfer_page(const struct kvt_gpu_xfer *x, uint32_t j);

/* ---- field lists (contexts and memory records) -------------------------- */

/*
 * The bodies of CTX_* and MEM_* requests and replies are lists of fields:
 * u16 tag, u16 reserved (0), u32 length, then length bytes; no padding. Tags below
 * 0x8000 must be understood (an unknown one refuses the frame, KVT_EBADMSG); tags
 * from 0x8000 may be ignored. A tag appears at most once, except KVT_TAG_ENTRY,
 * whose value is itself a field list (one list or search result). Which tags each
 * operation needs, and their sizes, are in docs/PROTOCOL.md; the daemon and the
 * client check them after kvt_fields_decode has checked the framing.
 */
enum kvt_tag {
	KVT_TAG_NAME = 1,        /* bytes 1..255: context name */
	KVT_TAG_SALT = 2,        /* 16: model salt key */
	KVT_TAG_TOKEN_COUNT = 3, /* u64 */
	KVT_TAG_TTL_S = 4,       /* u32 */
	KVT_TAG_KEYS = 5,        /* 16 x n */
	KVT_TAG_TOKENS = 6,      /* u32 x n */
	KVT_TAG_METADATA = 7,    /* bytes */
	KVT_TAG_TIER = 8,        /* u8 */
	KVT_TAG_DEADLINE_MS = 9, /* u32 */
	KVT_TAG_PREFIX = 10,     /* bytes 0..255 */
	KVT_TAG_AFTER = 11,      /* bytes 0..255 (a name or a key) */
	KVT_TAG_LIMIT = 12,      /* u32 */
	KVT_TAG_NS = 13,         /* bytes 1..255: namespace */
	KVT_TAG_KEY = 14,        /* bytes 1..255: record key */
	KVT_TAG_VALUE = 15,      /* bytes */
	KVT_TAG_EMBEDDING = 16,  /* f32 x dim, little-endian IEEE 754 */
	KVT_TAG_K = 17,          /* u32 */
	KVT_TAG_CREATED_MS = 18, /* u64 */
	KVT_TAG_UPDATED_MS = 19, /* u64 */
	KVT_TAG_EXPIRES_MS = 20, /* u64, 0 = never */
	KVT_TAG_TIERS = 21,      /* u8 x n */
	KVT_TAG_RESIDENT = 22,   /* u32 */
	KVT_TAG_ENTRY = 23,      /* nested field list; repeatable */
	KVT_TAG_MORE = 24,       /* u8 0/1 */
	KVT_TAG_SCORE = 25,      /* f32 */
	KVT_TAG_BYTES = 26,      /* u64 */
	KVT_TAG_MISSING = 27,    /* u32: index of the first block stored nowhere */
	KVT_TAG_AFTER_NS = 28,   /* bytes 0..255 */
	KVT_TAG_NKEYS = 29,      /* u32 */
	KVT_TAG_MAX = 29,
};

#define KVT_TAG_IGNORABLE 0x8000u

struct kvt_fields {
	const uint8_t *val[KVT_TAG_MAX + 1]; /* NULL if absent */
	uint32_t len[KVT_TAG_MAX + 1];
	uint32_t nentries;                   /* KVT_TAG_ENTRY occurrences */
	const uint8_t *body;                 /* for kvt_fields_next_entry */
	size_t body_len;
};

/* Check the framing of a field list and index it. KVT_EBADMSG (truncated, unknown
 * must-understand tag, repeated tag), KVT_ERESERVED (reserved != 0). */
int kvt_fields_decode(const uint8_t *in, size_t len, struct kvt_fields *f);
/* Iterate KVT_TAG_ENTRY values: *pos starts at 0; returns 1 with the entry's bytes,
 * 0 at the end. (The framing was checked by kvt_fields_decode.) */
int kvt_fields_next_entry(const struct kvt_fields *f, size_t *pos, const uint8_t **val,
			  uint32_t *len);
/* Typed getters: 0, KVT_ENOENT (absent), KVT_EBADMSG (wrong size). */
int kvt_fields_u8(const struct kvt_fields *f, unsigned tag, uint8_t *v);
int kvt_fields_u32(const struct kvt_fields *f, unsigned tag, uint32_t *v);
int kvt_fields_u64(const struct kvt_fields *f, unsigned tag, uint64_t *v);
/* Bytes of length min..max (KVT_EBADMSG otherwise); *p points into the body. */
int kvt_fields_bytes(const struct kvt_fields *f, unsigned tag, size_t min, size_t max,
		     const uint8_t **p, uint32_t *len);

/* Writer: appends fields; on overflow sets err = KVT_EMSGSIZE and stops writing. */
struct kvt_fields_writer {
	uint8_t *buf;
	size_t cap, len;
	int err;
};
void kvt_fw_init(struct kvt_fields_writer *w, uint8_t *buf, size_t cap);
void kvt_fw_bytes(struct kvt_fields_writer *w, unsigned tag, const void *p, size_t n);
void kvt_fw_u8(struct kvt_fields_writer *w, unsigned tag, uint8_t v);
void kvt_fw_u32(struct kvt_fields_writer *w, unsigned tag, uint32_t v);
void kvt_fw_u64(struct kvt_fields_writer *w, unsigned tag, uint64_t v);
/* Nested entry: begin returns a mark; fields written until end go inside. */
size_t kvt_fw_begin(struct kvt_fields_writer *w, unsigned tag);
void kvt_fw_end(struct kvt_fields_writer *w, size_t mark);
/* Bytes needed for a field of n bytes. */
static inline size_t kvt_fw_size(size_t n)
{
	return 8 + n;
}

/* ---- little-endian helpers ---------------------------------------------- */

static inline void kvt_put16(uint8_t *p, uint16_t v)
{
	p[0] = (uint8_t)v;
	p[1] = (uint8_t)(v >> 8);
}

static inline void kvt_put32(uint8_t *p, uint32_t v)
{
	p[0] = (uint8_t)v;
	p[1] = (uint8_t)(v >> 8);
	p[2] = (uint8_t)(v >> 16);
	p[3] = (uint8_t)(v >> 24);
}

static inline void kvt_put64(uint8_t *p, uint64_t v)
{
	kvt_put32(p, (uint32_t)v);
	kvt_put32(p + 4, (uint32_t)(v >> 32));
}

static inline uint16_t kvt_get16(const uint8_t *p)
{
	return (uint16_t)(p[0] | (p[1] << 8));
}

static inline uint32_t kvt_get32(const uint8_t *p)
{
	return (uint32_t)p[0] | ((uint32_t)p[1] << 8) | ((uint32_t)p[2] << 16) |
	       ((uint32_t)p[3] << 24);
}

static inline uint64_t kvt_get64(const uint8_t *p)
{
	return (uint64_t)kvt_get32(p) | ((uint64_t)kvt_get32(p + 4) << 32);
}

static inline uint32_t kvt_gpu_xfer_page(const struct kvt_gpu_xfer *x, uint32_t j)
{
	return kvt_get32(x->pages + (size_t)j * 4);
}

#endif /* KVT_PROTO_H */
