/*
 * codec.c - frame codecs for the NVMe tier (see codec.h): raw, zstd, and a bf16
 * byte split that zstd-compresses the sign+exponent plane.
 *
 * Decoders are pure functions over the stored bytes plus a reusable zstd context:
 * they validate every length before touching dst and never write past dst + len.
 */
#include "codec.h"

#include <errno.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include <zstd.h>
#include <zstd_errors.h>

#define XXH_INLINE_ALL
#include <xxhash.h>

#if defined(__SSE2__)
#include <emmintrin.h>
#endif

/*
 * Largest zstd window a stored frame may declare. A frame holds at most
 * CODEC_FRAME_SIZE bytes, so a legitimate encoder never needs more; anything
 * larger is a hostile or corrupt frame.
 */
#define CODEC_WINDOW_LOG_MAX 20
_Static_assert(CODEC_FRAME_SIZE <= (1u << CODEC_WINDOW_LOG_MAX),
	       "CODEC_WINDOW_LOG_MAX must cover a whole frame");
_Static_assert(CODEC_FRAME_SIZE % 2 == 0, "bf16 planes split the frame in halves");

/*
 * bf16 byte-split frame (CODEC_BF16), all integers little-endian:
 *
 *   offset  size  field
 *   0       1     version, BF16_VERSION; any other value is rejected
 *   1       1     flags: BF16_HI_ZSTD, BF16_LO_ZSTD; other bits reserved, must be 0
 *   2       2     reserved, must be 0
 *   4       4     hi_size: stored bytes of the high plane
 *   8       ...   high plane: n = len / 2 bytes raw, or one zstd frame of exactly n
 *   .       ...   low plane: the rest but the tail; n bytes raw or one zstd frame of n
 *   end-1   1     tail: only when len is odd, the last logical byte, raw
 *
 * bf16 is stored little-endian, so byte 1 of each value is sign + 7 exponent bits
 * (the "high" plane, ~3 bits of entropy per byte on KV data) and byte 0 is the
 * exponent LSB + 7 mantissa bits (the "low" plane, close to 8 bits per byte).
 *
 * Low-plane policy, from bench/bench_codec on a real bf16 KV cache (SmolLM2-135M
 * under llama.cpp, 4096 tokens, 90 MiB = 90 frames; bench/results/codec.txt),
 * zstd level 1, one core, MiB/s of logical bytes, fastest of >= 3 passes on a
 * shared 2-core VM (differences under ~5% are noise):
 *
 *   low plane                      bf16 ratio  compress  decompress
 *   always raw                     1.465       621       1855
 *   always zstd (keep if smaller)  1.477       586       1801
 *   zstd when gated (chosen)       1.477       615-637   1774-1814
 *
 * The low plane's order-0 entropy is 7.97 bits/byte (noise is 8), and zstd gains
 * exactly nothing on it in 88 frames; all of the gain comes from the two frames
 * holding layer 0's V, whose rows repeat exactly for repeated tokens (low plane
 * 3.3:1 and 1.5:1 there). So zstd sees the low plane only when that shows: the
 * high plane compressed 4:1 or better (7.8:1 and 4.8:1 on those two frames,
 * 2.6:1 to 3.96:1 on the other 88), or a sampled histogram of the low plane is
 * far from flat (collision entropy under 7 bits/byte: zero padding, values
 * widened from a narrower type, which tests/unit/test_codec.c checks).
 * The whole-frame figures at level 1 are zstd 1.284 against bf16 1.477, and bf16
 * decodes ~1.6x faster (only half the bytes go through zstd); level 3 gives bf16
 * 1.428 at half the speed, so level 1 is the default (codec.h). Both agree with
 * the published figures: ~1.4-1.5x as the ceiling for lossless bf16, and level 1
 * beating level 3 after a byte split (BloomBee PR #59: 1.47x vs 1.43x on Qwen3
 * hidden states).
 */
#define BF16_HDR 8
#define BF16_VERSION 1
#define BF16_HI_ZSTD 0x01u
#define BF16_LO_ZSTD 0x02u
#define BF16_FLAGS_KNOWN (BF16_HI_ZSTD | BF16_LO_ZSTD)

/* Low-plane gate: bytes sampled, the collision-entropy bound in bits/byte, and
 * the high-plane ratio that signals repeated values. */
#define LO_SAMPLE 4096
#define LO_GATE_BITS 7
#define LO_HI_RATIO 4

struct codec_ctx {
	ZSTD_CCtx *cctx;
	ZSTD_DCtx *dctx;
	int level;
	uint8_t *planes; /* CODEC_FRAME_SIZE bytes: high plane, then low plane */
	uint8_t *work;   /* codec_ctx_work's buffer */
	size_t work_cap;
};

/* ---- little-endian helpers ---------------------------------------------------- */

static void put_le16(uint8_t *p, uint16_t v)
{
	p[0] = (uint8_t)v;
	p[1] = (uint8_t)(v >> 8);
}

static void put_le32(uint8_t *p, uint32_t v)
{
	p[0] = (uint8_t)v;
	p[1] = (uint8_t)(v >> 8);
	p[2] = (uint8_t)(v >> 16);
	p[3] = (uint8_t)(v >> 24);
}

static uint16_t get_le16(const uint8_t *p)
{
	return (uint16_t)(p[0] | (p[1] << 8));
}

static uint32_t get_le32(const uint8_t *p)
{
	return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

/* ---- context ------------------------------------------------------------------- */

void *codec_ctx_work(struct codec_ctx *ctx, size_t len)
{
	if (len > ctx->work_cap) {
		void *p = realloc(ctx->work, len);
		if (!p)
			return NULL;
		ctx->work = p;
		ctx->work_cap = len;
	}
	return ctx->work;
}

int codec_ctx_new(int level, struct codec_ctx **out)
{
	struct codec_ctx *ctx;

	if (level == 0)
		level = CODEC_DEFAULT_LEVEL;
	if (level < 1 || level > 19)
		return -EINVAL;
	ctx = calloc(1, sizeof(*ctx));
	if (!ctx)
		return -ENOMEM;
	ctx->level = level;
	ctx->cctx = ZSTD_createCCtx();
	ctx->dctx = ZSTD_createDCtx();
	ctx->planes = malloc(CODEC_FRAME_SIZE);
	if (!ctx->cctx || !ctx->dctx || !ctx->planes)
		goto out_free;
	/* One-shot decoding keeps its history in dst, so this bound matters for any
	 * streaming use of dctx; zstd_frame_fits() enforces it for one-shot calls. */
	if (ZSTD_isError(ZSTD_DCtx_setParameter(ctx->dctx, ZSTD_d_windowLogMax,
						CODEC_WINDOW_LOG_MAX)))
		goto out_free;
	*out = ctx;
	return 0;

out_free:
	codec_ctx_free(ctx);
	return -ENOMEM;
}

void codec_ctx_free(struct codec_ctx *ctx)
{
	if (!ctx)
		return;
	ZSTD_freeCCtx(ctx->cctx);
	ZSTD_freeDCtx(ctx->dctx);
	free(ctx->planes);
	free(ctx->work);
	free(ctx);
}

/* ---- names and policy ------------------------------------------------------------ */

static const char *const codec_names[CODEC_COUNT] = {
	[CODEC_RAW] = "raw",
	[CODEC_ZSTD] = "zstd",
	[CODEC_BF16] = "bf16",
};

const char *codec_name(enum codec_id id)
{
	if ((unsigned)id >= CODEC_COUNT)
		return NULL;
	return codec_names[id];
}

int codec_parse(const char *name)
{
	if (!name)
		return -EINVAL;
	for (int i = 0; i < CODEC_COUNT; i++)
		if (strcmp(name, codec_names[i]) == 0)
			return i;
	return -EINVAL;
}

enum codec_id codec_for_desc(enum codec_id preferred, const kvt_block_desc *desc)
{
	switch (preferred) {
	case CODEC_RAW:
		return CODEC_RAW;
	case CODEC_BF16:
		return desc && desc->dtype == KVT_DTYPE_BF16 ? CODEC_BF16 : CODEC_ZSTD;
	case CODEC_ZSTD:
		return CODEC_ZSTD;
	default:
		return CODEC_RAW;
	}
}

size_t codec_frame_bound(size_t len)
{
	/* zstd is given its full bound: with less room it can fail on frames that
	 * would have fitted (a block it cannot shrink needs room to be stored raw),
	 * and a tight bound is no faster. The stored result is never larger than len. */
	size_t whole = ZSTD_compressBound(len);
	size_t split = BF16_HDR + 2 * ZSTD_compressBound(len / 2) + 1;

	return whole > split ? whole : split;
}

uint64_t codec_checksum(const void *p, size_t len)
{
	return XXH3_64bits(p, len);
}

/* ---- bf16 planes ------------------------------------------------------------------ */

/* hi[i] = src[2i + 1], lo[i] = src[2i] for i < n. */
static void bf16_split(const uint8_t *src, size_t n, uint8_t *hi, uint8_t *lo)
{
	size_t i = 0;

#if defined(__SSE2__)
	const __m128i low_byte = _mm_set1_epi16(0x00ff);

	for (; i + 16 <= n; i += 16) {
		__m128i a = _mm_loadu_si128((const __m128i *)(const void *)(src + 2 * i));
		__m128i b = _mm_loadu_si128((const __m128i *)(const void *)(src + 2 * i + 16));

		_mm_storeu_si128((__m128i *)(void *)(lo + i),
				 _mm_packus_epi16(_mm_and_si128(a, low_byte),
						  _mm_and_si128(b, low_byte)));
		_mm_storeu_si128((__m128i *)(void *)(hi + i),
				 _mm_packus_epi16(_mm_srli_epi16(a, 8), _mm_srli_epi16(b, 8)));
	}
#endif
	for (; i < n; i++) {
		lo[i] = src[2 * i];
		hi[i] = src[2 * i + 1];
	}
}

/* dst[2i] = lo[i], dst[2i + 1] = hi[i] for i < n. */
static void bf16_merge(const uint8_t *hi, const uint8_t *lo, size_t n, uint8_t *dst)
{
	size_t i = 0;

#if defined(__SSE2__)
	for (; i + 16 <= n; i += 16) {
		__m128i l = _mm_loadu_si128((const __m128i *)(const void *)(lo + i));
		__m128i h = _mm_loadu_si128((const __m128i *)(const void *)(hi + i));

		_mm_storeu_si128((__m128i *)(void *)(dst + 2 * i), _mm_unpacklo_epi8(l, h));
		_mm_storeu_si128((__m128i *)(void *)(dst + 2 * i + 16), _mm_unpackhi_epi8(l, h));
	}
#endif
	for (; i < n; i++) {
		dst[2 * i] = lo[i];
		dst[2 * i + 1] = hi[i];
	}
}

/*
 * Whether the low plane's bytes are far from uniform: the collision entropy
 * -log2(sum p_i^2) of LO_SAMPLE bytes spread over the plane is below
 * LO_GATE_BITS. Mantissa noise gives ~8 bits; zero padding or values widened
 * from a narrower type give far less. The stride is odd so that it cannot line
 * up with power-of-two row lengths and sample only a few channels.
 */
static bool lo_plane_skewed(const uint8_t *lo, size_t n)
{
	uint32_t count[256] = { 0 };
	size_t step, s = 0;
	uint64_t sumsq = 0;

	if (n == 0)
		return false;
	step = (n / LO_SAMPLE) | 1;
	for (size_t i = 0; i < n && s < LO_SAMPLE; i += step, s++)
		count[lo[i]]++;
	/* sum c(c-1) / (s(s-1)) is an unbiased estimate of sum p^2. */
	for (int b = 0; b < 256; b++)
		sumsq += (uint64_t)count[b] * (count[b] ? count[b] - 1 : 0);
	return s > 1 && sumsq << LO_GATE_BITS > (uint64_t)s * (s - 1);
}

/* ---- zstd ------------------------------------------------------------------------ */

/* zstd-compress src into dst (room >= ZSTD_compressBound(len)). Returns the
 * compressed size or -EIO. */
static long zstd_encode(struct codec_ctx *ctx, const void *src, size_t len, void *dst,
			size_t room)
{
	size_t r = ZSTD_compressCCtx(ctx->cctx, dst, room, src, len, ctx->level);

	return ZSTD_isError(r) ? -EIO : (long)r;
}

/*
 * Whether a zstd frame header declares a window of at most
 * 2^CODEC_WINDOW_LOG_MAX (format: RFC 8878, 3.1.1.1.2). A single-segment frame's
 * window is its content size, which the caller checks separately.
 */
static bool zstd_window_ok(const uint8_t *src, size_t n)
{
	uint8_t fhd, wd;
	uint64_t base, size;

	if (n < 6)
		return false;
	fhd = src[4];
	if (fhd & 0x20)
		return true;
	wd = src[5];
	base = (uint64_t)1 << (10 + (wd >> 3));
	size = base + (base / 8) * (wd & 7);
	return size <= ((uint64_t)1 << CODEC_WINDOW_LOG_MAX);
}

/*
 * Decode src[0..n) as exactly one zstd frame of exactly len bytes into dst.
 * Rejects legacy and skippable frames (other magic), unknown or wrong content
 * sizes, oversized windows and trailing bytes before decoding anything.
 */
static int zstd_decode_exact(struct codec_ctx *ctx, const uint8_t *src, size_t n, void *dst,
			     size_t len)
{
	unsigned long long content;
	size_t r;

	if (n < 6 || get_le32(src) != ZSTD_MAGICNUMBER)
		return -EBADMSG;
	content = ZSTD_getFrameContentSize(src, n);
	if (content == ZSTD_CONTENTSIZE_UNKNOWN || content == ZSTD_CONTENTSIZE_ERROR ||
	    content != (unsigned long long)len)
		return -EBADMSG;
	if (!zstd_window_ok(src, n))
		return -EBADMSG;
	r = ZSTD_findFrameCompressedSize(src, n);
	if (ZSTD_isError(r) || r != n)
		return -EBADMSG;
	r = ZSTD_decompressDCtx(ctx->dctx, dst, len, src, n);
	if (ZSTD_isError(r) || r != len)
		return -EBADMSG;
	return 0;
}

/* ---- bf16 ------------------------------------------------------------------------ */

/*
 * Store one plane of n bytes at out (room >= ZSTD_compressBound(n)): as a zstd
 * frame when try_zstd and that is smaller than n, else raw. Returns the bytes
 * written or -EIO; *zstd says which.
 */
static long bf16_store_plane(struct codec_ctx *ctx, const uint8_t *plane, size_t n,
			     uint8_t *out, size_t room, bool try_zstd, bool *zstd)
{
	*zstd = false;
	if (try_zstd && n > 0) {
		long r = zstd_encode(ctx, plane, n, out, room);

		if (r < 0 || (size_t)r < n) {
			*zstd = r >= 0;
			return r;
		}
	}
	memcpy(out, plane, n);
	return (long)n;
}

/* Encode src into dst (cap >= codec_frame_bound(len)). Returns the stored size,
 * 0 when that would exceed budget, or -EIO. */
static long bf16_encode(struct codec_ctx *ctx, const uint8_t *src, size_t len, uint8_t *dst,
			size_t cap, size_t budget)
{
	size_t n = len / 2, tail = len & 1, pos = BF16_HDR;
	uint8_t *hi = ctx->planes, *lo = ctx->planes + CODEC_FRAME_SIZE / 2;
	uint8_t flags = 0;
	bool zstd, lo_zstd;
	long r;

	bf16_split(src, n, hi, lo);

	r = bf16_store_plane(ctx, hi, n, dst + pos, cap - pos - tail, true, &zstd);
	if (r < 0)
		return r;
	if (zstd)
		flags |= BF16_HI_ZSTD;
	put_le32(dst + 4, (uint32_t)r);
	pos += (size_t)r;
	/* Repeated values (e.g. layer-0 V rows of repeated tokens) show up as an
	 * exponent plane far below its usual ~3 bits/byte; their mantissas repeat too. */
	lo_zstd = (size_t)r * LO_HI_RATIO <= n || lo_plane_skewed(lo, n);
	if (pos + (lo_zstd ? 0 : n) + tail > budget)
		return 0; /* cannot pay: skip the low plane */

	r = bf16_store_plane(ctx, lo, n, dst + pos, cap - pos - tail, lo_zstd, &zstd);
	if (r < 0)
		return r;
	if (zstd)
		flags |= BF16_LO_ZSTD;
	pos += (size_t)r;
	if (pos + tail > budget)
		return 0;

	if (tail)
		dst[pos++] = src[len - 1];
	dst[0] = BF16_VERSION;
	dst[1] = flags;
	put_le16(dst + 2, 0);
	return (long)pos;
}

/* The n-byte plane stored in src[0..size): a pointer to its bytes, or NULL if bad. */
static const uint8_t *bf16_load_plane(struct codec_ctx *ctx, const uint8_t *src, size_t size,
				      bool zstd, size_t n, uint8_t *scratch)
{
	if (!zstd)
		return size == n ? src : NULL;
	return zstd_decode_exact(ctx, src, size, scratch, n) == 0 ? scratch : NULL;
}

static int bf16_decode(struct codec_ctx *ctx, const uint8_t *src, size_t stored_len,
		       uint8_t *dst, size_t len)
{
	size_t n = len / 2, tail = len & 1, hi_size, lo_size;
	const uint8_t *hi, *lo;
	uint8_t flags;

	if (stored_len < BF16_HDR + tail)
		return -EBADMSG;
	flags = src[1];
	if (src[0] != BF16_VERSION || (flags & ~BF16_FLAGS_KNOWN) || get_le16(src + 2) != 0)
		return -EBADMSG;
	hi_size = get_le32(src + 4);
	if (hi_size > stored_len - BF16_HDR - tail)
		return -EBADMSG;
	lo_size = stored_len - BF16_HDR - tail - hi_size;

	hi = bf16_load_plane(ctx, src + BF16_HDR, hi_size, flags & BF16_HI_ZSTD, n, ctx->planes);
	if (!hi)
		return -EBADMSG;
	lo = bf16_load_plane(ctx, src + BF16_HDR + hi_size, lo_size, flags & BF16_LO_ZSTD, n,
			     ctx->planes + CODEC_FRAME_SIZE / 2);
	if (!lo)
		return -EBADMSG;
	bf16_merge(hi, lo, n, dst);
	if (tail)
		dst[len - 1] = src[stored_len - 1];
	return 0;
}

/* ---- frames ------------------------------------------------------------------------ */

long codec_encode_frame(struct codec_ctx *ctx, enum codec_id want, const void *src, size_t len,
			void *dst, size_t cap, enum codec_id *used)
{
	size_t budget;
	long r = 0;

	if (!ctx || !used || (unsigned)want >= CODEC_COUNT || len > CODEC_FRAME_SIZE ||
	    (len && (!src || !dst)))
		return -EINVAL;
	if (cap < codec_frame_bound(len))
		return -ENOBUFS;

	/* The largest stored size that is below CODEC_RAW_THRESHOLD_PCT of len. */
	budget = len ? (len * CODEC_RAW_THRESHOLD_PCT + 99) / 100 - 1 : 0;
	if (budget > 0) {
		if (want == CODEC_ZSTD)
			r = zstd_encode(ctx, src, len, dst, cap);
		else if (want == CODEC_BF16)
			r = bf16_encode(ctx, src, len, dst, cap, budget);
		if (r < 0)
			return r;
		if (r > 0 && (size_t)r <= budget) {
			*used = want;
			return r;
		}
	}
	if (len)
		memcpy(dst, src, len);
	*used = CODEC_RAW;
	return (long)len;
}

int codec_decode_frame(struct codec_ctx *ctx, enum codec_id id, const void *src,
		       size_t stored_len, void *dst, size_t len)
{
	if (!ctx || (stored_len && !src) || (len && !dst))
		return -EINVAL;
	/* An encoder stores raw rather than anything larger, so stored_len <= len. */
	if (len > CODEC_FRAME_SIZE || stored_len > len)
		return -EBADMSG;
	switch (id) {
	case CODEC_RAW:
		if (stored_len != len)
			return -EBADMSG;
		if (len)
			memcpy(dst, src, len);
		return 0;
	case CODEC_ZSTD:
		return zstd_decode_exact(ctx, src, stored_len, dst, len);
	case CODEC_BF16:
		return bf16_decode(ctx, src, stored_len, dst, len);
	default:
		return -EBADMSG;
	}
}
