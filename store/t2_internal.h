/*
 * t2_internal.h - what the pieces of the NVMe tier share: byte-order helpers, the
 * LMDB row layouts, the index (t2_index.c), cleaning plans (t2_plan.c), segment
 * files (t2_segment.c), the committer thread (t2_commit.c) and the owner-side key
 * map (t2_keymap.c). Nothing outside store/t2*.c and the t2 unit tests includes it.
 */
#ifndef KVT_T2_INTERNAL_H
#define KVT_T2_INTERNAL_H

#include <lmdb.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "lmdb_env.h"
#include "t2.h"

/* ---- byte order ----------------------------------------------------------------
 * Record fields and LMDB values are little-endian. LMDB keys that must sort
 * numerically (segment ids, locations, tenants) are big-endian, because LMDB
 * compares keys with memcmp. */

static inline void t2_put16(uint8_t *p, uint16_t v)
{
	p[0] = (uint8_t)v;
	p[1] = (uint8_t)(v >> 8);
}

static inline void t2_put32(uint8_t *p, uint32_t v)
{
	for (int i = 0; i < 4; i++)
		p[i] = (uint8_t)(v >> (8 * i));
}

static inline void t2_put64(uint8_t *p, uint64_t v)
{
	for (int i = 0; i < 8; i++)
		p[i] = (uint8_t)(v >> (8 * i));
}

static inline uint16_t t2_get16(const uint8_t *p)
{
	return (uint16_t)(p[0] | (p[1] << 8));
}

static inline uint32_t t2_get32(const uint8_t *p)
{
	uint32_t v = 0;

	for (int i = 3; i >= 0; i--)
		v = (v << 8) | p[i];
	return v;
}

static inline uint64_t t2_get64(const uint8_t *p)
{
	uint64_t v = 0;

	for (int i = 7; i >= 0; i--)
		v = (v << 8) | p[i];
	return v;
}

static inline void t2_put32be(uint8_t *p, uint32_t v)
{
	for (int i = 0; i < 4; i++)
		p[i] = (uint8_t)(v >> (24 - 8 * i));
}

static inline void t2_put64be(uint8_t *p, uint64_t v)
{
	for (int i = 0; i < 8; i++)
		p[i] = (uint8_t)(v >> (56 - 8 * i));
}

static inline uint32_t t2_get32be(const uint8_t *p)
{
	uint32_t v = 0;

	for (int i = 0; i < 4; i++)
		v = (v << 8) | p[i];
	return v;
}

static inline uint64_t t2_get64be(const uint8_t *p)
{
	uint64_t v = 0;

	for (int i = 0; i < 8; i++)
		v = (v << 8) | p[i];
	return v;
}

static inline uint64_t t2_align_up(uint64_t v)
{
	return (v + T2_ALIGN - 1) & ~(uint64_t)(T2_ALIGN - 1);
}

/* ---- record format (t2_record.c; docs/STORAGE.md has the tables) --------------------- */

#define T2_RECORD_MAGIC "KVTR"
#define T2_RECORD_VERSION 1u
#define T2_HDR_FIXED 80u        /* bytes before the frame table */
#define T2_HDR_FRAME 32u        /* bytes per frame-table entry */
#define T2_HDR_CSUM_OFF 72u     /* the header checksum field */
/* Flags: the low byte must be understood (a record with an unknown one is
 * refused), the high byte may be ignored. None is defined in version 1. */
#define T2_RECORD_FLAGS_INCOMPAT 0x00ffu
#define T2_RECORD_FLAGS_KNOWN 0x0000u
/* Largest block a record describes: 2^20 frames of CODEC_FRAME_SIZE. Bounds the
 * frame table before anything is trusted or allocated. */
#define T2_MAX_FRAMES (1u << 20)
#define T2_MAX_BLOCK ((uint64_t)T2_MAX_FRAMES * CODEC_FRAME_SIZE)

/* Everything t2_record_parse verifies, without filling a frame table: outputs
 * may be NULL. Returns 0, -EBADMSG, -EINVAL. */
int t2_record_check(const uint8_t *rec, size_t rec_len, const struct t1_key *key,
		    uint64_t *len, kvt_block_desc *desc, uint64_t *record_len, uint64_t *nframes);

/* t2_record_check on a record of rec_len bytes of which only the first head_len
 * (its padded header at least, else -EBADMSG) are at head. */
int t2_record_check_head(const uint8_t *head, size_t head_len, size_t rec_len,
			 const struct t1_key *key, uint64_t *len, kvt_block_desc *desc,
			 uint64_t *record_len);

/* Bytes of the header (unpadded) for a block of len logical bytes. */
uint64_t t2_record_header_len(uint64_t len);

/* The string the layout signature hashes: every on-disk structure, field by field. */
const char *t2_layout_string(void);
uint64_t t2_layout_signature(void);

/* ---- keys and rows ------------------------------------------------------------------- */

#define T2_KEY_BYTES 20u   /* tenant (u32 BE) + key (16) */
#define T2_LOC_BYTES 12u   /* segment (u32 BE) + offset (u64 BE) */
#define T2_SEG_KEY_BYTES 4u

struct t2_loc {
	uint32_t seg;
	uint64_t off;
	uint64_t rec_len;
};

/* A "blocks" row. */
#define T2_ENTRY_BYTES 96u
struct t2_entry {
	struct t2_loc loc;
	uint64_t len;
	kvt_block_desc desc;
	uint8_t codec;
	uint32_t refs;
	uint64_t created_ms;
	uint64_t last_access_ms;
	uint64_t access_count;
	bool has_parent;
	kvt_key parent;   /* same tenant as the block */
};

/* A "segments" row. */
#define T2_SEGROW_BYTES 40u
struct t2_segrow {
	uint64_t live_bytes;    /* record bytes of indexed blocks */
	uint64_t write_off;     /* end of the last indexed record: appends resume here */
	uint64_t nblocks;
	uint64_t ref_blocks;    /* blocks with context references */
	uint64_t logical_bytes;
};

void t2_key_encode(uint8_t out[T2_KEY_BYTES], const struct t1_key *k);
void t2_key_decode(struct t1_key *k, const uint8_t in[T2_KEY_BYTES]);
void t2_loc_encode(uint8_t out[T2_LOC_BYTES], uint32_t seg, uint64_t off);
void t2_entry_encode(uint8_t out[T2_ENTRY_BYTES], const struct t2_entry *e);
/* Rows may grow in later versions (new fields appended); shorter ones are refused. */
int t2_entry_decode(struct t2_entry *e, const void *data, size_t len);
void t2_segrow_encode(uint8_t out[T2_SEGROW_BYTES], const struct t2_segrow *r);
int t2_segrow_decode(struct t2_segrow *r, const void *data, size_t len);
void t2_desc_encode(uint8_t out[16], const kvt_block_desc *d);
void t2_desc_decode(kvt_block_desc *d, const uint8_t in[16]);

/* ---- index (t2_index.c) -------------------------------------------------------------- */

#define T2_META_MAGIC "KVTIER-T2-INDEX"
#define T2_FORMAT_VERSION 1u
/* Feature bits in meta "incompat": a store using one this build does not know is refused. */
#define T2_INCOMPAT_KNOWN 0u

struct t2_index {
	struct lmdb_env db;       /* environment, map lock, the owner's read txn, map size */
	MDB_dbi meta, blocks, byloc, children, segments;
	atomic_int fatal;         /* MDB_PANIC or corruption seen: T2_EFATAL from now on */
	const char *dir;          /* the index directory, for messages */
};

/*
 * Open or create the index in dir/index (dir is the data directory; messages name
 * it, and ix keeps the pointer only during the call). *segment_size: in, the size to
 * record for a new store; out, the size the store uses. Returns 0, -EPROTO (with
 * a message in err) for a store this build must not open, or -errno.
 */
int t2_index_open(struct t2_index *ix, const char *dir, uint64_t map_size,
		  uint64_t *segment_size, bool *created, char *err, size_t errcap);
void t2_index_close(struct t2_index *ix);

/* Map an LMDB/errno code to ours; MDB_PANIC and corruption set ix->fatal. */
int t2_index_err(struct t2_index *ix, int rc);

/* Owner thread: read the row of key. Returns 0, -ENOENT, T2_EFATAL or -EIO. */
int t2_index_get(struct t2_index *ix, const struct t1_key *key, struct t2_entry *e);
/* Owner thread: children of parent (same tenant). */
size_t t2_index_children(struct t2_index *ix, const struct t1_key *parent, struct t1_key *out,
			 size_t cap);
/* Any time no writer runs: every "segments" row into rows[0..n) (ids >= n are
 * reported through *max_id only); *max_id = highest id + 1 seen (0 if none). */
int t2_index_load_segments(struct t2_index *ix, struct t2_segrow *rows, size_t n,
			   uint32_t *max_id);
uint64_t t2_index_count(struct t2_index *ix);
/* Call fn for every entry, in key order, inside one read transaction (fn must not
 * use the index); a nonzero return from fn stops the walk and is returned. */
int t2_index_foreach(struct t2_index *ix,
		     int (*fn)(void *arg, const struct t1_key *key, const struct t2_entry *e),
		     void *arg);

/* ---- operations: from the owner to the committer ------------------------------------- */

enum t2_op_kind {
	T2_OP_INSERT,   /* a written record: index it (replacing any older copy) */
	T2_OP_DELETE,
	T2_OP_REF,
	T2_OP_UNREF,
	T2_OP_DROP_SEG, /* cleaning: drop every block of a segment (none referenced) */
	T2_OP_TOUCH,    /* access statistics */
	T2_OP_FLUSH,    /* a barrier: done when everything before it is durable */
	T2_OP_PLAN,     /* cleaning: choose a segment and what of it to keep (t2_plan.c) */
	T2_OP_MOVE,     /* cleaning: a block copied out of the segment being cleaned now
			 * lives at e.loc, if the index still has it at from */
};

struct t2_req;

/* ---- cleaning plans (t2_plan.c) ------------------------------------------------------ */

/* Segments the owner offers the planner per cleaning. */
#define T2_PLAN_CANDIDATES 4u

struct t2_plan_item {
	struct t1_key key;
	struct t2_loc loc;
};

/*
 * What the planner is asked (in) and answers (out). The owner offers candidate
 * segments (sealed, unreferenced, nothing pending) in its order of preference and
 * byte budgets for relocation; the planner evaluates each in the committer's
 * transaction and picks one (docs/STORAGE.md, "What cleaning keeps").
 */
struct t2_plan {
	uint32_t cand[T2_PLAN_CANDIDATES];  /* in */
	size_t ncand;                       /* in */
	uint64_t seg_size;                  /* in */
	uint64_t keep_soft;   /* in: bytes that may be relocated to keep chain prefixes */
	uint64_t keep_hard;   /* in: bytes that may be relocated so that no chain loses a
			       * block in the middle (>= keep_soft) */
	int seg;              /* out: the segment chosen, -1 if none can be cleaned */
	struct t2_plan_item *items; /* out: the segment's blocks; [0, nkeep) are relocated,
				     * in this order (parents before children), the rest
				     * go with the segment */
	size_t nitems, nkeep;
	uint64_t keep_bytes;  /* out: record bytes of items [0, nkeep) */
	bool cuts_chain;      /* out: a dropped block has children that stay indexed */
};

/* Percent of a segment that one cleaning may relocate: to keep chain prefixes
 * (soft), and at most to avoid cutting a chain in the middle (hard). Set before
 * t2_open (the committer reads them). */
extern unsigned t2_keep_soft_pct, t2_keep_hard_pct;
/* false: the planner takes the owner's first choice and keeps nothing, as cleaning
 * did before chains were taken into account (tests compare the two). Set before
 * t2_open. */
extern bool t2_keep_chains;

/* Evaluate p's candidates in txn (the committer's) and fill p's answer. Returns 0
 * or an LMDB/errno code (positive, as LMDB's); ENOMEM leaves p without an answer. */
int t2_plan_build(struct t2_index *ix, MDB_txn *txn, struct t2_plan *p);
/* Forget the answer (the question stays). */
void t2_plan_reset(struct t2_plan *p);
void t2_plan_free(struct t2_plan *p);

/* Tests only: called on the owner thread for each block cleaning keeps (moved:
 * once its MOVE is queued) and, just before the drop is queued, for each block the
 * drop will remove (dropped). */
extern void (*t2_clean_notify)(const struct t1_key *key, bool dropped, void *arg);
extern void *t2_clean_notify_arg;

struct t2_op {
	struct t2_op *next;
	uint64_t seq;
	enum t2_op_kind kind;
	struct t1_key key;
	struct t2_entry e;         /* INSERT: the new row (refs and stats are taken over);
				    * MOVE: e.loc is the new location */
	int fd;                    /* INSERT, MOVE: the segment's file, made durable first */
	uint64_t touch_ms, touch_count;
	uint32_t seg;              /* DROP_SEG */
	struct t2_loc from;        /* MOVE: where the block was */
	struct t2_plan *plan;      /* PLAN: owned by the op */
	bool unsynced;             /* INSERT, MOVE: its segment's fdatasync failed: not indexed */
	bool force;                /* DELETE: even if referenced (corrupt data) */
	int status;                /* set by the committer */
	uint64_t dropped;          /* DROP_SEG: blocks dropped */
	struct t2_req *req;        /* INSERT, FLUSH: the caller's request */
	uint32_t pend_seg[2];      /* owner: segments whose pending count this op holds */
	uint8_t npend;
};

/* Most blocks one DROP_SEG removes per transaction (tests lower it). */
extern unsigned t2_drop_chunk;

/* Apply ops (in order) in one write transaction; rows is the committer's copy of
 * the "segments" table (nrows entries), updated only if the commit succeeds; dirty
 * (nrows flags) marks the rows changed. Ops marked unsynced are skipped. Grows the
 * map on MDB_MAP_FULL and retries. Returns 0 (op statuses say how each fared) or
 * the error that failed them all. */
int t2_index_apply(struct t2_index *ix, struct t2_op *ops, struct t2_segrow *rows,
		   bool *dirty, size_t nrows);

/* ---- committer (t2_commit.c) --------------------------------------------------------- */

struct t2_batch {
	struct t2_batch *next;
	struct t2_op *ops;
	uint32_t *upd_seg;         /* rows changed by this batch, with their new values */
	struct t2_segrow *upd_row;
	size_t nupd;
	int sync_failed_seg;       /* a segment whose fdatasync failed, or -1 */
};

struct t2_committer {
	pthread_t thread;
	bool started;
	pthread_mutex_t mu;
	pthread_cond_t cv;
	struct t2_op *q_head, **q_tail;
	size_t q_len;
	uint64_t q_first_ms;       /* when the oldest queued op arrived */
	bool urgent;               /* commit without waiting for the interval */
	bool stop;
	struct t2_batch *done_head, **done_tail;
	int efd;                   /* written after each batch */
	unsigned interval_ms;
	struct t2_index *ix;
	struct t2_segrow *rows;    /* the committer's own copy of "segments" */
	bool *dirty;
	size_t nrows;
	atomic_uint_fast64_t commits;
};

/* What the committer calls to make a segment durable: fdatasync, or a test's
 * fault (set it before t2_open; the committer thread reads it). */
extern int (*t2_fdatasync_fn)(int fd);

int t2_commit_start(struct t2_committer *c, struct t2_index *ix, int efd, unsigned interval_ms,
		    const struct t2_segrow *rows, size_t nrows);
/* Commit what is queued, then stop the thread. */
void t2_commit_stop(struct t2_committer *c);
/* Free what t2_commit_start allocated (after t2_commit_stop and the last take). */
void t2_commit_destroy(struct t2_committer *c);
/* Queue ops (a list linked by next, in order). urgent: commit without waiting. */
void t2_commit_push(struct t2_committer *c, struct t2_op *head, struct t2_op *tail, size_t n,
		    bool urgent);
/* Take every finished batch (a list linked by next), oldest first. */
struct t2_batch *t2_commit_take(struct t2_committer *c);
void t2_batch_free(struct t2_batch *b);

/* ---- segment files (t2_segment.c) ---------------------------------------------------- */

/* Set KVT_T2_DIRECT_IO_DISABLE=1 to make opens behave as if the file system had
 * refused O_DIRECT (EINVAL), so the buffered fallback can be tested anywhere. */
#define T2_DIRECT_IO_DISABLE_ENV "KVT_T2_DIRECT_IO_DISABLE"

/* Path of segment id in dir/segments. */
int t2_segment_path(char *buf, size_t cap, const char *dir, uint32_t id);
/*
 * Take flock(LOCK_EX) on fd's open file description, waiting while it is held
 * elsewhere: by the description of an earlier opener that some of its I/O still
 * references (a killed process's io_uring writes complete after it is reaped;
 * t2_segment.c explains why nothing may be written before they have). Every fd
 * t2_segment_open and t2_segment_create return holds it until closed. Returns 0,
 * -EBUSY (still held after t2_segment_lock_wait_ms) or -ENOLCK (flock failed).
 */
int t2_segment_lock(int fd);
/* How long t2_segment_lock waits (default 60 s; tests lower it). */
extern unsigned t2_segment_lock_wait_ms;
/* Open an existing segment, locked; *direct in: try O_DIRECT, out: whether it is
 * used. Returns the fd, -EBUSY or -ENOLCK (the lock, see t2_segment_lock; never
 * from open itself), or -errno. */
int t2_segment_open(const char *dir, uint32_t id, bool *direct);
/* Create and preallocate a segment, durably (file and directory entry), locked
 * as t2_segment_open. Returns the fd, -ENOSPC when the file system cannot hold
 * it (nothing left behind), -EBUSY or -ENOLCK (an existing file whose lock
 * could not be taken; left as it is), or -errno. */
int t2_segment_create(const char *dir, uint32_t id, uint64_t size, bool *direct);
/* Before appending to an existing segment: make sure it is preallocated to size
 * (a crash during creation, or a damaged file, can leave it short). Returns 0,
 * -ENOSPC or -errno; appends may go ahead either way. */
int t2_segment_prepare(int fd, uint64_t size);
/* Call fn for every segment file present (id from its name). */
int t2_segment_scan(const char *dir, void (*fn)(uint32_t id, void *arg), void *arg);

/* ---- key map (t2_keymap.c): open addressing, owner thread only ----------------------- */

struct t2_pend {
	bool present;          /* false: deleted (pending) */
	struct t2_entry e;
	uint64_t seq;          /* the last op that changed it */
};

struct t2_touch {
	uint64_t last_ms;
	uint64_t count;
};

struct t2_kv {
	struct t1_key key;
	bool used;
	union {
		struct t2_pend pend;
		struct t2_touch touch;
	} v;
};

struct t2_keymap {
	struct t2_kv *slots;
	size_t mask;
	size_t count;
};

void t2_keymap_free(struct t2_keymap *m);
struct t2_kv *t2_keymap_find(const struct t2_keymap *m, const struct t1_key *k);
/* Find or add (zeroed value). NULL on -ENOMEM. */
struct t2_kv *t2_keymap_get(struct t2_keymap *m, const struct t1_key *k);
void t2_keymap_remove(struct t2_keymap *m, struct t2_kv *kv);

/* Wall clock, for created/last-access times; monotonic, for intervals. */
static inline uint64_t t2_now_ms(void)
{
	return lmdb_now_ms();
}

static inline uint64_t t2_mono_ms(void)
{
	return lmdb_mono_ms();
}

#endif /* KVT_T2_INTERNAL_H */
