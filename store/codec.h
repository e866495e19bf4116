/*
 * codec.h - block codecs for the NVMe tier: raw, zstd, and bf16 byte-split + zstd.
 *
 * A block is stored as independent frames of at most CODEC_FRAME_SIZE logical
 * bytes, so frames decompress in parallel on worker threads and a range read
 * touches only the frames it needs. Each frame carries the codec actually used
 * (an encoder falls back to raw when compression does not pay) and a checksum of
 * its stored bytes, verified before decoding.
 *
 * A codec_ctx holds one zstd compression and one decompression context plus
 * scratch space; use one per thread (they are not thread-safe). Everything else
 * is pure.
 */
#ifndef KVT_CODEC_H
#define KVT_CODEC_H

#include <stddef.h>
#include <stdint.h>

#include "kvtier.h"

#define CODEC_FRAME_SIZE (1u << 20)

enum codec_id {
	CODEC_RAW = 0,
	CODEC_ZSTD = 1,
	CODEC_BF16 = 2, /* bf16 byte split: exponent plane zstd, mantissa plane as measured best */
	CODEC_COUNT
};

struct codec_ctx;

/* Default zstd level: on bf16 KV data level 1 matches level 3's ratio on whole
 * frames and beats it on the exponent plane, at twice the speed (numbers in codec.c). */
#define CODEC_DEFAULT_LEVEL 1

/* level: zstd level (1..19; 0 = CODEC_DEFAULT_LEVEL). Returns 0, -EINVAL (level out
 * of range), -ENOMEM. */
int codec_ctx_new(int level, struct codec_ctx **out);
void codec_ctx_free(struct codec_ctx *ctx); /* NULL-safe */
/* Scratch memory of at least len bytes owned by ctx (for its thread's use, valid
 * until the next call or codec_ctx_free), or NULL. */
void *codec_ctx_work(struct codec_ctx *ctx, size_t len);

/* Name ("raw", "zstd", "bf16") or NULL for an unknown id. */
const char *codec_name(enum codec_id id);
/* Parse a name; returns the id or -EINVAL. */
int codec_parse(const char *name);

/* The codec to try for a block with this descriptor, given the configured
 * preference (CODEC_BF16 applies only to bf16 data; other dtypes get zstd). */
enum codec_id codec_for_desc(enum codec_id preferred, const kvt_block_desc *desc);

/* Capacity dst must have to encode a frame of len logical bytes with any codec:
 * a little over len (zstd's working room: at most len + len/256 + 137), though
 * the stored size that results never exceeds len. */
size_t codec_frame_bound(size_t len);

/*
 * Encode one frame (len <= CODEC_FRAME_SIZE) with codec want into dst (cap bytes,
 * at least codec_frame_bound(len)). *used receives the codec actually used: raw
 * when the encoded form would not be smaller than CODEC_RAW_THRESHOLD of len, so
 * the stored size never exceeds len. src and dst must not overlap.
 * Returns the stored size, or a negative errno (-EINVAL, -ENOBUFS, -EIO).
 */
#define CODEC_RAW_THRESHOLD_PCT 97
long codec_encode_frame(struct codec_ctx *ctx, enum codec_id want, const void *src, size_t len,
			void *dst, size_t cap, enum codec_id *used);

/*
 * Decode one stored frame of codec id (stored_len bytes) into exactly len logical
 * bytes at dst. Returns 0, or -EBADMSG if the frame is malformed, the id is
 * unknown, or it does not decode to exactly len bytes (never writes past
 * dst + len; dst's contents are unspecified after a failure); -EINVAL for a NULL
 * ctx, or a NULL src/dst with a nonzero length. src and dst must not overlap.
 */
int codec_decode_frame(struct codec_ctx *ctx, enum codec_id id, const void *src,
		       size_t stored_len, void *dst, size_t len);

/* Checksum of stored frame bytes (XXH3-64). */
uint64_t codec_checksum(const void *p, size_t len);

#endif /* KVT_CODEC_H */
