/*
 * meta_internal.h - what the pieces of the metadata store share: byte order, the
 * LMDB keys and rows (meta_row.c, pure), the environment and its committer thread
 * (meta_db.c, meta_commit.c), the vector index (meta_vec.c) and the owner-side
 * glue (meta.c). Nothing outside store/meta*.c and tests/unit/test_meta*.c
 * includes it. Tables and field offsets: docs/STORAGE.md, "Metadata store".
 */
#ifndef KVT_META_INTERNAL_H
#define KVT_META_INTERNAL_H

#include <lmdb.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "lmdb_env.h"
#include "meta.h"

/* ---- byte order ------------------------------------------------------------------
 * Row fields are little-endian; key fields that must sort by number (tenant,
 * namespace id, expiry time) are big-endian, because LMDB compares keys with
 * memcmp. Always one byte at a time: rows are never cast to structs. */

static inline void meta_wr16(uint8_t *p, uint16_t v)
{
	p[0] = (uint8_t)v;
	p[1] = (uint8_t)(v >> 8);
}

static inline void meta_wr32(uint8_t *p, uint32_t v)
{
	for (int i = 0; i < 4; i++)
		p[i] = (uint8_t)(v >> (8 * i));
}

static inline void meta_wr64(uint8_t *p, uint64_t v)
{
	for (int i = 0; i < 8; i++)
		p[i] = (uint8_t)(v >> (8 * i));
}

static inline uint16_t meta_rd16(const uint8_t *p)
{
	return (uint16_t)(p[0] | (p[1] << 8));
}

static inline uint32_t meta_rd32(const uint8_t *p)
{
	uint32_t v = 0;

	for (int i = 3; i >= 0; i--)
		v = (v << 8) | p[i];
	return v;
}

static inline uint64_t meta_rd64(const uint8_t *p)
{
	uint64_t v = 0;

	for (int i = 7; i >= 0; i--)
		v = (v << 8) | p[i];
	return v;
}

static inline void meta_wr32be(uint8_t *p, uint32_t v)
{
	for (int i = 0; i < 4; i++)
		p[i] = (uint8_t)(v >> (24 - 8 * i));
}

static inline void meta_wr64be(uint8_t *p, uint64_t v)
{
	for (int i = 0; i < 8; i++)
		p[i] = (uint8_t)(v >> (56 - 8 * i));
}

static inline uint32_t meta_rd32be(const uint8_t *p)
{
	uint32_t v = 0;

	for (int i = 0; i < 4; i++)
		v = (v << 8) | p[i];
	return v;
}

static inline uint64_t meta_rd64be(const uint8_t *p)
{
	uint64_t v = 0;

	for (int i = 0; i < 8; i++)
		v = (v << 8) | p[i];
	return v;
}

/* ---- keys (meta_row.c) --------------------------------------------------------------
 * ctx:     tenant (u32 BE) + name                          4 + 1..255
 * ns:      tenant (u32 BE) + namespace                     4 + 1..255
 * rec:     tenant (u32 BE) + namespace id (u64 BE) + key   12 + 1..255
 * ctx_exp: expiry ms (u64 BE) + a ctx key                  8 + ...
 * rec_exp: expiry ms (u64 BE) + a rec key                  8 + ...
 * Records name their namespace by a number rather than by its bytes because
 * tenant + namespace + key could reach 515 bytes, over LMDB's 511-byte key limit;
 * the "ns" table maps names to numbers and is scanned in name order. */

#define META_NAME_MAX KVT_NAME_LEN_MAX
#define META_CTX_KEY_MAX (4u + META_NAME_MAX)
#define META_NS_KEY_MAX (4u + META_NAME_MAX)
#define META_REC_KEY_HDR 12u
#define META_REC_KEY_MAX (META_REC_KEY_HDR + META_NAME_MAX)
#define META_EXP_KEY_MAX (8u + META_REC_KEY_MAX)

size_t meta_ctx_key(uint8_t *out, uint32_t tenant, const char *name, size_t len);
size_t meta_ns_key(uint8_t *out, uint32_t tenant, const char *ns, size_t len);
size_t meta_rec_key(uint8_t *out, uint32_t tenant, uint64_t ns_id, const char *key, size_t len);
size_t meta_exp_key(uint8_t *out, uint64_t expires_ms, const uint8_t *row_key, size_t len);

/* ---- rows (meta_row.c): pure encoders and decoders over bytes --------------------- */

/* Limits a manifest may have (checked before allocating, on write and on read). */
#define META_CTX_KEYS_MAX (1u << 24)
#define META_CTX_TOKENS_MAX (1u << 26)

/* "ctx" row: a header, then keys (16 each), token ids (u32), metadata. */
#define META_CTX_HDR 72u
/* "rec" row: a header, then namespace, key, embedding (f32), metadata, value. */
#define META_REC_HDR 56u
/* "ns" row. */
#define META_NS_ROW 40u
/* Offsets every reader of a row needs. */
#define META_ROW_CSUM_OFF 8u        /* both row kinds: XXH3-64, field read as zero */
#define META_CTX_EXPIRES_OFF 40u
#define META_REC_CREATED_OFF 16u

/* A name, namespace or key is 1..255 bytes without a NUL. */
bool meta_name_ok(const char *s, size_t len);

/* Encode c (validated by the caller) into a new buffer; -ENOMEM. */
int meta_ctx_encode(const struct meta_ctx *c, uint8_t **row, size_t *len);
/* The header fields only (no checksum check, arrays left NULL): for listing and
 * for the committer's bookkeeping. tenant and name come from the row's key.
 * Returns 0 or -EBADMSG. */
int meta_ctx_decode_head(const uint8_t *key, size_t klen, const uint8_t *row, size_t len,
			 struct meta_ctx *c);
/* A full copy (arrays allocated, checksum verified) into *out. -EBADMSG, -ENOMEM. */
int meta_ctx_decode(const uint8_t *key, size_t klen, const uint8_t *row, size_t len,
		    struct meta_ctx **out);

/* Encode r (validated by the caller) with the given times into a new buffer. */
int meta_rec_encode(const struct meta_rec *r, uint64_t created_ms, uint64_t updated_ms,
		    uint8_t **row, size_t *len);
/* Set created_ms of an encoded row and its checksum again. */
void meta_rec_set_created(uint8_t *row, size_t len, uint64_t created_ms);

/* What a reader learns from a rec row's header, with pointers into the row. */
struct meta_rec_view {
	uint64_t created_ms, updated_ms, expires_ms;
	uint32_t dim, value_len, metadata_len;
	uint16_t ns_len, key_len;
	const uint8_t *ns, *key, *embedding, *metadata, *value;
};
/* Check the structure (and the checksum if verify) and fill v. 0 or -EBADMSG. */
int meta_rec_view(const uint8_t *row, size_t len, bool verify, struct meta_rec_view *v);
/* Bytes a record counts for in the statistics: value + metadata + embedding. */
uint64_t meta_rec_bytes(const struct meta_rec_view *v);
/* A full copy of the record (tenant from the caller). -ENOMEM. */
int meta_rec_from_view(const struct meta_rec_view *v, uint32_t tenant, struct meta_rec **out);
/* Embedding element i of a view (little-endian f32). */
float meta_view_emb(const struct meta_rec_view *v, uint32_t i);

struct meta_ns_row {
	uint64_t id;
	uint32_t dim;            /* 0: no embedded record, not fixed */
	uint64_t records, embedded, bytes;
};
void meta_ns_encode(uint8_t out[META_NS_ROW], const struct meta_ns_row *r);
int meta_ns_decode(struct meta_ns_row *r, const uint8_t *row, size_t len);

/* The text the layout signature hashes, and the signature. */
const char *meta_layout_string(void);
uint64_t meta_layout_signature(void);

/* Square root without libm (store/ links no -lm); exact to the last bit or so. */
double meta_sqrt(double x);

/* ---- the vector index (meta_vec.c): owner thread only ------------------------------ */

struct meta_vec;

/* A new, empty index for dim-dimensional embeddings; NULL on -ENOMEM. */
struct meta_vec *meta_vec_new(uint32_t dim);
void meta_vec_free(struct meta_vec *x);
uint32_t meta_vec_dim(const struct meta_vec *x);
size_t meta_vec_count(const struct meta_vec *x);
/* Insert or replace key's embedding (emb: dim raw floats, normalised here).
 * 0 or -ENOMEM (the index is then unchanged). */
int meta_vec_upsert(struct meta_vec *x, const char *key, size_t key_len, const float *emb,
		    uint64_t expires_ms);
/* Same, from a record row's embedding. */
int meta_vec_upsert_view(struct meta_vec *x, const struct meta_rec_view *v);
void meta_vec_remove(struct meta_vec *x, const char *key, size_t key_len);

/* A bounded min-heap of the best k candidates over several indexes. */
struct meta_hit {
	float score;
	uint32_t src;            /* which index (the caller's numbering) */
	uint32_t slot;
};
struct meta_topk {
	struct meta_hit *h;
	size_t n, k;
};
/* Offer every live (not expired at now_ms) slot of x, scored against the unit
 * query q, to t. scratch holds meta_vec_count(x) floats. */
void meta_vec_search(const struct meta_vec *x, uint32_t src, const float *q, uint64_t now_ms,
		     float *scratch, struct meta_topk *t);
/* Sort t's hits best first (score descending; ties by src, slot). */
void meta_topk_sort(struct meta_topk *t);
/* The key of a slot; valid until x next changes. */
const char *meta_vec_key(const struct meta_vec *x, uint32_t slot, size_t *len);

/* ---- the store --------------------------------------------------------------------- */

#define META_MAGIC "KVTIER-META"
#define META_FORMAT_VERSION 1u
/* Feature bits in meta "incompat": a store using one this build does not know is refused. */
#define META_INCOMPAT_KNOWN 0u

enum meta_op_kind {
	META_OP_CTX_PUT,
	META_OP_CTX_DEL,
	META_OP_CTX_EXPIRE,
	META_OP_REC_PUT,
	META_OP_REC_DEL,
	META_OP_REC_EXPIRE,
};

/* One write, from the owner to the committer and back. */
struct meta_op {
	struct meta_op *next;
	enum meta_op_kind kind;
	uint32_t tenant;
	char name[META_NAME_MAX + 1];      /* context name, or record namespace */
	uint16_t name_len;
	char key[META_NAME_MAX + 1];       /* record key */
	uint16_t key_len;
	uint8_t *row;                      /* PUT: the encoded row */
	size_t row_len;
	uint64_t expires_ms;               /* EXPIRE: the expiry it was queued for */
	uint64_t now_ms;                   /* EXPIRE, DEL: the owner's clock */
	uint8_t xkey[META_REC_KEY_MAX];    /* REC_EXPIRE: the row's key */
	uint16_t xkey_len;
	uint32_t dim;                      /* REC_PUT: embedding dimension (0: none) */
	bool claimed;                      /* REC_PUT: holds a dimension claim */
	bool pending;                      /* REC_PUT: counted in the pending-put set */
	bool sweep;                        /* queued by meta_tick */
	void (*ctx_done)(void *arg, int status, struct meta_ctx *c);
	meta_done_fn rec_done;
	void *arg;
	/* Set by the committer. */
	int status;
	struct meta_ctx *ctx_out;          /* replaced, deleted or expired manifest */
	int64_t d_contexts, d_ctx_bytes, d_records, d_rec_bytes;
};

/* Per-tenant counts (owner thread). */
struct meta_tenants {
	struct meta_tenant_stats *v; /* sorted by tenant */
	size_t n, cap;
};

/* A chained hash table of nodes that start with struct meta_hnode. */
struct meta_hnode {
	struct meta_hnode *next;
	uint64_t h;
};
struct meta_htab {
	struct meta_hnode **b;
	size_t mask, n;
};

/* Owner-side state of a namespace that has a vector index or pending claims. */
struct meta_ns {
	struct meta_hnode hn;
	uint32_t tenant;
	uint16_t ns_len;
	char ns[META_NAME_MAX + 1];
	uint32_t claim_dim;        /* dimension claimed by queued puts (ns had none) */
	uint32_t claims;
	struct meta_vec *vec;      /* NULL until the first search */
};

/* A queued put of one (tenant, namespace, key), by hash. */
struct meta_pend {
	struct meta_hnode hn;
	uint32_t count;
};

struct meta {
	struct lmdb_env db;        /* environment, map lock, the owner's read txn, map size */
	MDB_dbi dbi_meta, dbi_ctx, dbi_ctx_exp, dbi_rec, dbi_rec_exp, dbi_ns;
	atomic_int failed;
	int lockfd, efd;
	uint32_t value_max;
	bool created;              /* this open created the store */
	char path[4096];           /* DIR/meta, for messages */

	/* Committer. */
	pthread_t thread;
	bool started;
	pthread_mutex_t mu;
	pthread_cond_t cv;
	struct meta_op *q_head, **q_tail;
	size_t q_len;
	uint64_t q_first_ms;       /* monotonic: when the oldest queued op arrived */
	bool stop;
	struct meta_op *done_head, **done_tail;
	struct meta_op **batch;    /* the committer's group, META_BATCH_MAX slots */
	unsigned interval_ms;
	uint64_t next_ns_id;       /* committer only (after open) */
	atomic_uint_fast64_t commits, writes, fsyncs, expired, corrupt;

	/* Owner only. */
	size_t inflight;
	size_t sweeping;           /* expiry ops in flight */
	void (*expire_fn)(void *arg, const struct meta_ctx *c);
	void *expire_arg;
	struct meta_tenants tenants;
	struct meta_htab nsmap;    /* struct meta_ns */
	struct meta_htab pendmap;  /* struct meta_pend */
};

/* What the committer calls to commit: mdb_txn_commit, or a test's fault (set it
 * before meta_open). A fault must end the transaction as a commit would. */
extern int (*meta_txn_commit_fn)(MDB_txn *txn);

/* meta_db.c: environment, format, reads. */
int meta_db_open(struct meta *m, const struct meta_config *cfg, char *err, size_t errcap);
void meta_db_close(struct meta *m);
/* Map an LMDB/errno code to ours; MDB_PANIC sets m->failed. */
int meta_db_err(struct meta *m, int rc);
int meta_read_begin(struct meta *m);
void meta_read_end(struct meta *m);
/* Per-tenant counts from the "ns" and "ctx" tables. */
int meta_db_load_stats(struct meta *m);

/* meta_commit.c: the committer thread and its transactions. */
int meta_commit_start(struct meta *m);
void meta_commit_stop(struct meta *m);
/* Most ops in one transaction (keeps LMDB's dirty-page list and the owner's work
 * per batch bounded). */
#define META_BATCH_MAX 4096u
/* Queue ops (a list linked by next, in order). */
void meta_commit_push(struct meta *m, struct meta_op *head, struct meta_op *tail, size_t n);
/* Hand op straight back with its status already set (a refused request), so that
 * its callback runs from meta_reap and never inside the call that queued it. */
void meta_commit_finish(struct meta *m, struct meta_op *op);
/* Every finished op (a list linked by next), oldest first. */
struct meta_op *meta_commit_take(struct meta *m);
void meta_op_free(struct meta_op *op);

/* meta.c: tenants and hash tables. */
struct meta_tenant_stats *meta_tenant_get(struct meta_tenants *t, uint32_t tenant);
void meta_tenants_free(struct meta_tenants *t);

/* CLOCK_REALTIME and CLOCK_MONOTONIC, ms. */
static inline uint64_t meta_now_ms(void)
{
	return lmdb_now_ms();
}

static inline uint64_t meta_mono_ms(void)
{
	return lmdb_mono_ms();
}

#endif /* KVT_META_INTERNAL_H */
