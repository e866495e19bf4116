/*
 * t2.h - the NVMe tier: blocks stored as checksummed records in large
 * preallocated segment files (O_DIRECT, 4 KiB aligned, written through the I/O
 * engine of io.h), indexed in LMDB so a restarted daemon is warm at once.
 *
 * Layout and format: docs/STORAGE.md. In short: a record is a header (magic,
 * format version, tenant, key, descriptor, lengths, codec, frame table with a
 * checksum per frame, header checksum) padded to 4 KiB, followed by the stored
 * frames, padded to 4 KiB. Segments are filled append-only; space comes back by
 * cleaning whole segments (see docs/STORAGE.md for why).
 *
 * Threads: the owner (the daemon's loop) calls every function here. Inside, a
 * committer thread makes written records durable (fdatasync of the segments, then
 * one LMDB write transaction for many records: group commit) and reports back
 * through t2_eventfd / t2_reap. Codec work (t2_record_encode, t2_frame_decode) is
 * pure and runs on the caller's worker threads, one codec_ctx per thread.
 */
#ifndef KVT_T2_H
#define KVT_T2_H

#include <errno.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "codec.h"
#include "io.h"
#include "kvtier.h"
#include "t1.h"

#define T2_ALIGN 4096u

/*
 * The index is unusable (LMDB reported MDB_PANIC or found a corrupt page): every
 * later call fails with this, and the daemon should exit cleanly and let systemd
 * restart it (LMDB recovers on the next open). t2_has_failed says so too.
 */
#define T2_EFATAL (-ENOTRECOVERABLE)

struct t2_config {
	const char *dir;          /* data directory; t2 uses DIR/segments and DIR/index */
	uint64_t capacity;        /* bytes of segment space (whole segments) */
	uint64_t segment_size;    /* bytes per segment file, multiple of T2_ALIGN, >= 64 MiB;
				   * only used to create a store: an existing one keeps its own */
	uint64_t map_size;        /* initial LMDB map size (0: 64 MiB); grown on MDB_MAP_FULL */
	unsigned commit_interval_ms; /* longest a written record waits for its group commit
				      * (0: commit as soon as the committer is free) */
	struct io_engine *io;     /* owned by the caller; outlives the t2 */
};

struct t2_open_report {
	uint64_t blocks;          /* indexed blocks found */
	uint64_t segments;        /* segment files in use */
	uint64_t open_ms;         /* time to open (no data is scanned) */
	bool created;             /* a new, empty store was made */
	bool direct_io;           /* false: the file system refused O_DIRECT (EINVAL), so
				   * segments use buffered I/O + fdatasync: log it */
	uint64_t segment_size;    /* in effect (an existing store keeps its own) */
};

struct t2;

/*
 * Open (or create) the store. An existing index is opened as it is; its format
 * version and layout signature are checked: a newer or unknown format is refused
 * with -EPROTO and a message in err saying what to do; nothing is ever rewritten
 * silently. Returns 0, -EINVAL (bad config), -EPROTO, -EBUSY (another process has
 * the directory open, or a segment file is still locked after 60 s by writes a
 * killed opener left in flight), -ENOSPC (cannot create segments), or -errno.
 * After a crash it waits (up to that long) until every write the previous opener
 * still had in flight has landed: only then is that space reused. On success err
 * holds "" or a note worth logging (O_DIRECT refused, segment files missing, more
 * segments than the capacity); rep may be NULL. io is used from the calling
 * thread, which becomes the owner.
 */
int t2_open(const struct t2_config *cfg, struct t2 **out, struct t2_open_report *rep, char *err,
	    size_t errcap);
/* Finish pending commits, persist access statistics, close. Waits for this t2's
 * I/O (running io_reap, so other users' callbacks may run too), runs every
 * outstanding done callback (appends still waiting for segment space get
 * -ECANCELED); callbacks must not call into t. NULL-safe. */
void t2_close(struct t2 *t);

/* ---- records (pure; any thread) ------------------------------------------------------ */

/* A source or destination of a block's logical bytes, as extents (e.g. T1's). */
struct t2_span {
	uint8_t *ptr;
	uint64_t len;
};

/* Buffer size t2_record_encode needs for a block of len bytes (the header, the
 * frames, and the room the codec wants to work in), a multiple of T2_ALIGN; 0
 * if len is over the largest block a record describes (2^20 frames, 1 TiB). */
size_t t2_record_bound(uint64_t len);

/*
 * Build a record for key in buf (T2_ALIGN aligned, cap >= t2_record_bound(len)) from
 * the block's bytes in src[0..nsrc) (len bytes in all), compressing each frame with
 * codec (falling back to raw per frame where it does not pay). *record_len receives
 * the padded length to write. Returns 0 or -errno.
 */
int t2_record_encode(struct codec_ctx *ctx, enum codec_id codec, const struct t1_key *key,
		     const kvt_block_desc *desc, const struct t2_span *src, size_t nsrc,
		     uint64_t len, uint8_t *buf, size_t cap, size_t *record_len);

/*
 * A raw record without copying the block: header (and the block's last partial
 * page) built in hdr (T2_ALIGN aligned, hdr_cap >= t2_record_raw_head_bound(len)),
 * and out[0..*nout) (out_cap >= nsrc + 2) listing the pieces to write in order:
 * the header, src's pages, the last page from hdr. src's extents must each start
 * on a T2_ALIGN boundary and all but the last be whole T2_ALIGN pages (T1's are);
 * -EINVAL otherwise (use t2_record_encode). *record_len: the padded record length.
 * The bytes written equal what t2_record_encode builds with CODEC_RAW. Returns 0,
 * -EINVAL, -ENOBUFS, -EIO.
 */
/*
 * The same record as t2_record_encode, byte for byte, with its frames encoded in
 * parallel: t2_record_encode_frame encodes frame i (0 .. t2_record_frames(len) - 1)
 * into its slot of buf (any thread, any order, one ctx per thread; cap as for
 * t2_record_encode) and describes it in *fo; once all are done,
 * t2_record_encode_finish packs them and writes the header. Same errors as
 * t2_record_encode.
 */
struct t2_frame_out {
	uint32_t stored, logical;
	uint8_t codec;
	uint64_t csum;
};
uint64_t t2_record_frames(uint64_t len);
int t2_record_encode_frame(struct codec_ctx *ctx, enum codec_id codec, const struct t2_span *src,
			   size_t nsrc, uint64_t len, uint64_t i, uint8_t *buf, size_t cap,
			   struct t2_frame_out *fo);
int t2_record_encode_finish(const struct t1_key *key, const kvt_block_desc *desc,
			    enum codec_id codec, uint64_t len, uint8_t *buf, size_t cap,
			    const struct t2_frame_out *fo, size_t *record_len);

size_t t2_record_raw_head_bound(uint64_t len);
int t2_record_raw_plan(const struct t1_key *key, const kvt_block_desc *desc,
		       const struct t2_span *src, size_t nsrc, uint64_t len, uint8_t *hdr,
		       size_t hdr_cap, struct t2_span *out, size_t out_cap, size_t *nout,
		       size_t *record_len);

struct t2_frame {
	uint64_t stored_off;   /* offset of the stored bytes within the record */
	uint32_t stored_len;
	uint64_t logical_off;  /* offset of the frame's bytes within the block */
	uint32_t logical_len;
	uint8_t codec;
	uint64_t checksum;
};

/*
 * Check a record read back from disk (header magic, version, checksum, and that it
 * is the record of key) and describe its frames. *frames points into a table the
 * caller provides (cap entries; -ENOBUFS if more are needed). Returns 0 or -EBADMSG.
 */
int t2_record_parse(const uint8_t *rec, size_t rec_len, const struct t1_key *key,
		    struct t2_frame *frames, size_t cap, size_t *nframes, uint64_t *len,
		    kvt_block_desc *desc);

/* Verify a frame's checksum and decode it into the block's logical range
 * [f->logical_off, +f->logical_len) of dst. Returns 0 or -EBADMSG. */
int t2_frame_decode(struct codec_ctx *ctx, const uint8_t *rec, const struct t2_frame *f,
		    const struct t2_span *dst, size_t ndst);

/* ---- index and I/O (owner thread) ---------------------------------------------------- */

struct t2_info {
	uint64_t len;          /* logical bytes */
	uint64_t record_len;   /* bytes on disk */
	kvt_block_desc desc;
	uint8_t codec;         /* codec asked for when the block was written */
	uint32_t refs;         /* references held by saved contexts */
	kvt_key parent;        /* parent given when it was written, or zero */
};

/* Is key indexed? Fills *info when not NULL. Returns 0 or -ENOENT. */
int t2_lookup(struct t2 *t, const struct t1_key *key, struct t2_info *info);

/* Completion of t2_append and t2_read: status 0 or -errno. */
typedef void (*t2_done_fn)(void *arg, int status);

/*
 * Write a record built by t2_record_encode and index it. done runs (from t2_reap on
 * the owner thread; inside t2_append only with -ENOMEM when not even the request
 * can be allocated) once the record is durable and indexed,
 * or with an error: -ENOSPC (no segment space even after cleaning, or the write
 * failed so), -EIO, -EFBIG (record larger than a segment), -EINVAL (buffer not
 * aligned, or the record is not key's / disagrees with len, desc), -ECANCELED
 * (t2_close), T2_EFATAL. The buffer must stay valid until done. Appending a key
 * that is already indexed replaces it (context references carry over).
 * parent (NULL or zero: none) is the key of the previous block of the chain, same
 * tenant; t2_children(parent) lists the block for read-ahead.
 */
void t2_append(struct t2 *t, const struct t1_key *key, const kvt_key *parent, const uint8_t *rec,
	       size_t rec_len, uint64_t len, const kvt_block_desc *desc, uint8_t codec,
	       t2_done_fn done, void *arg);

/* t2_append for a record given as pieces (t2_record_raw_plan's out[]): each piece
 * T2_ALIGN aligned and a multiple of T2_ALIGN long, rec_len in all, the first
 * holding the whole padded header. The pieces are written in order at consecutive
 * offsets; the array is copied, the memory it points to must stay valid until done.
 * Same results as t2_append. */
void t2_append_spans(struct t2 *t, const struct t1_key *key, const kvt_key *parent,
		     const struct t2_span *spans, size_t nspans, size_t rec_len, uint64_t len,
		     const kvt_block_desc *desc, uint8_t codec, t2_done_fn done, void *arg);

/* Read key's record into buf (T2_ALIGN aligned, cap >= info.record_len). done gets 0,
 * -ENOENT (not indexed), -EIO, -ENOBUFS (cap too small), -EINVAL (buf not aligned),
 * -ECANCELED, T2_EFATAL; from t2_reap or io_reap (inside t2_read only -ENOMEM, as
 * for t2_append). buf must
 * stay valid until done. The caller then parses and decodes it; on -EBADMSG from
 * either it calls t2_corrupt. */
void t2_read(struct t2 *t, const struct t1_key *key, uint8_t *buf, size_t cap, t2_done_fn done,
	     void *arg);

/* A read record failed verification: drop it from the index, count it, log-worthy. */
void t2_corrupt(struct t2 *t, const struct t1_key *key);

/* Remove key. Returns 0 or -ENOENT. (-EBUSY if it has context references.)
 * Takes effect for lookups at once; durable with the next group commit (t2_flush). */
int t2_delete(struct t2 *t, const struct t1_key *key);

/* Context references (for saved contexts): a referenced block is never dropped by
 * cleaning. Returns 0, -ENOENT (unref: also when there is no reference). Durable
 * with the next group commit: t2_flush before committing a manifest that needs it. */
int t2_ref(struct t2 *t, const struct t1_key *key);
int t2_unref(struct t2 *t, const struct t1_key *key);
/* Call fn(arg, key, refs) for every readable block with context references, in
 * key order; fn must not call into t2, and a nonzero return stops the walk and is
 * returned. For start-up checks: -EBUSY while any delete or reference change is
 * still queued. */
int t2_foreach_ref(struct t2 *t, int (*fn)(void *arg, const struct t1_key *key, uint32_t refs),
		   void *arg);

/* Record an access (kept in RAM, persisted in batches by t2_tick). */
void t2_touch(struct t2 *t, const struct t1_key *key);

/* Children of key written with it as parent (for read-ahead along a chain): up to
 * cap keys into out; returns how many. */
size_t t2_children(struct t2 *t, const struct t1_key *key, struct t1_key *out, size_t cap);

/* A barrier: done(0) runs once every append completed, delete, ref and unref made
 * before the call is durable (or done(-errno) if that commit failed). */
void t2_flush(struct t2 *t, t2_done_fn done, void *arg);

/* true once the index failed for good (T2_EFATAL): the daemon should exit. */
bool t2_has_failed(const struct t2 *t);

/* The committer's eventfd; run t2_reap when it is readable. */
int t2_eventfd(const struct t2 *t);
void t2_reap(struct t2 *t);

/* Periodic work from the owner's timer: flush a commit group that has waited
 * commit_interval_ms, persist access statistics, clean segments when free space
 * runs low. */
void t2_tick(struct t2 *t);

/* Appends still waiting for durability, and reads in flight. */
size_t t2_inflight(const struct t2 *t);

struct t2_stats {
	uint64_t capacity, used, segments_total, segments_free, blocks;
	uint64_t logical_bytes, stored_bytes;   /* compression ratio = logical / stored */
	uint64_t read_bytes, write_bytes, reads, writes;
	uint64_t checksum_failures, io_errors, enospc;
	uint64_t cleaned_segments, dropped_blocks, commits, map_resizes;
	uint64_t relocated_blocks, relocated_bytes; /* kept by cleaning: copied forward */
};
void t2_get_stats(const struct t2 *t, struct t2_stats *s);

#endif /* KVT_T2_H */
