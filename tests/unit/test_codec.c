/*
 * test_codec.c - unit tests for store/codec.c: round trips of every codec, the raw
 * fallback, hostile frames (truncated, bit-flipped, wrong length, wrong codec,
 * oversized zstd window) that must fail cleanly without writing past dst + len,
 * and the compression-ratio property the bf16 byte split exists for.
 */
#include <errno.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <zstd.h>

#include "codec.h"
#include "test.h"

#define GUARD 64
#define GUARD_BYTE 0xa5
#define MIB (1u << 20)

static const enum codec_id all_codecs[] = { CODEC_RAW, CODEC_ZSTD, CODEC_BF16 };
#define NCODECS (sizeof(all_codecs) / sizeof(all_codecs[0]))

/* ---- data ---------------------------------------------------------------------------- */

static uint64_t rnd(uint64_t *s)
{
	uint64_t x = *s;

	x ^= x >> 12;
	x ^= x << 25;
	x ^= x >> 27;
	*s = x;
	return x * 0x2545f4914f6cdd1dull;
}

static void fill_random(uint8_t *p, size_t len, uint64_t seed)
{
	uint64_t s = seed | 1;

	for (size_t i = 0; i < len; i++)
		p[i] = (uint8_t)(rnd(&s) >> 56);
}

/* Uniform in [0, 1). */
static float unit(uint64_t *s)
{
	return (float)(rnd(s) >> 40) * (1.0f / 16777216.0f);
}

/* Approximately N(0, 1): Irwin-Hall sum of 12 uniforms. */
static float gauss(uint64_t *s)
{
	float a = 0;

	for (int i = 0; i < 12; i++)
		a += unit(s);
	return a - 6.0f;
}

/* Round to nearest even bf16. */
static uint16_t to_bf16(float f)
{
	uint32_t u;

	memcpy(&u, &f, sizeof(u));
	u += 0x7fffu + ((u >> 16) & 1);
	return (uint16_t)(u >> 16);
}

/*
 * bf16 KV-like bytes: a [tokens][8 heads][128 dims] tensor whose channel c is
 * N(mu_c, sigma_c) with sigma_c spread over 2^0..2^5 times 0.02 and one channel
 * in 16 an outlier 16x larger, rounded to bf16, stored little-endian. With
 * mant_bits < 7, the low mantissa bits are cleared (values widened from a
 * narrower type). An odd len gets one trailing byte of the next value.
 */
static void fill_kv(uint8_t *p, size_t len, uint64_t seed, int mant_bits)
{
	enum { CH = 8 * 128 };
	static float mu[CH], sigma[CH];
	uint64_t s = seed | 1;
	uint16_t mask = (uint16_t)(0xffffu << (7 - mant_bits));

	for (int c = 0; c < CH; c++) {
		sigma[c] = 0.02f * (float)(1u << (rnd(&s) % 6)) * (1.0f + unit(&s));
		if (c % 16 == 5)
			sigma[c] *= 16.0f;
		mu[c] = 0.5f * sigma[c] * gauss(&s);
	}
	for (size_t i = 0; i < len; i += 2) {
		size_t c = (i / 2) % CH;
		uint16_t v = to_bf16(mu[c] + sigma[c] * gauss(&s)) & mask;

		p[i] = (uint8_t)v;
		if (i + 1 < len)
			p[i + 1] = (uint8_t)(v >> 8);
	}
}

/* ---- helpers ------------------------------------------------------------------------- */

/* A buffer of len bytes followed by GUARD guard bytes. */
static uint8_t *guarded(size_t len)
{
	uint8_t *p = malloc(len + GUARD);

	CHECK(p != NULL);
	memset(p, 0, len);
	memset(p + len, GUARD_BYTE, GUARD);
	return p;
}

static void check_guard(const uint8_t *p, size_t len)
{
	for (size_t i = 0; i < GUARD; i++)
		CHECK_MSG(p[len + i] == GUARD_BYTE, "write past dst + len (%zu) at +%zu", len, i);
}

static struct codec_ctx *new_ctx(void)
{
	struct codec_ctx *ctx = NULL;

	CHECK_RC(codec_ctx_new(0, &ctx), 0);
	CHECK(ctx != NULL);
	return ctx;
}

/* Encode src with want into a fresh buffer; checks the contract of every result. */
static uint8_t *encode(struct codec_ctx *ctx, enum codec_id want, const uint8_t *src, size_t len,
		       size_t *stored, enum codec_id *used)
{
	size_t cap = codec_frame_bound(len);
	uint8_t *dst = guarded(cap);
	long r = codec_encode_frame(ctx, want, src, len, dst, cap, used);

	CHECK_MSG(r >= 0, "encode %s len %zu: %ld", codec_name(want), len, r);
	CHECK((size_t)r <= cap);
	check_guard(dst, cap);
	CHECK(*used == want || *used == CODEC_RAW);
	if (*used == CODEC_RAW)
		CHECK_EQ(r, len);
	else
		CHECK_MSG((size_t)r * 100 < len * CODEC_RAW_THRESHOLD_PCT,
			  "%s kept %ld of %zu bytes", codec_name(want), r, len);
	*stored = (size_t)r;
	return dst;
}

/* Decode into a guarded buffer of len bytes; returns the rc, checks the guard. */
static int decode_guarded(struct codec_ctx *ctx, enum codec_id id, const uint8_t *src,
			  size_t stored, size_t len, uint8_t **out)
{
	uint8_t *dst = guarded(len);
	int rc = codec_decode_frame(ctx, id, src, stored, dst, len);

	check_guard(dst, len);
	if (out)
		*out = dst;
	else
		free(dst);
	return rc;
}

static void round_trip(struct codec_ctx *ctx, enum codec_id want, const uint8_t *src, size_t len,
		       enum codec_id *used_out)
{
	size_t stored;
	enum codec_id used;
	uint8_t *frame = encode(ctx, want, src, len, &stored, &used);
	uint8_t *back;

	CHECK_RC(decode_guarded(ctx, used, frame, stored, len, &back), 0);
	CHECK_MSG(len == 0 || memcmp(back, src, len) == 0, "%s len %zu: bytes differ",
		  codec_name(want), len);
	if (used_out)
		*used_out = used;
	free(back);
	free(frame);
}

/* An encoded frame of 64 KiB KV-like data that really used codec id. */
static uint8_t *compressed_frame(struct codec_ctx *ctx, enum codec_id id, uint8_t **src,
				 size_t *len, size_t *stored)
{
	enum codec_id used;
	uint8_t *frame;

	*len = 65536;
	*src = malloc(*len);
	CHECK(*src != NULL);
	fill_kv(*src, *len, 7, 7);
	frame = encode(ctx, id, *src, *len, stored, &used);
	CHECK_EQ(used, id);
	return frame;
}

/* A bf16 frame of 64 KiB with the high plane raw and the low plane zstd. */
static uint8_t *hi_raw_frame(struct codec_ctx *ctx, uint8_t **src, size_t *len, size_t *stored)
{
	enum codec_id used;
	uint8_t *frame;

	*len = 65536;
	*src = malloc(*len);
	CHECK(*src != NULL);
	fill_random(*src, *len, 21);
	for (size_t i = 0; i < *len; i += 2)
		(*src)[i] = 0;
	frame = encode(ctx, CODEC_BF16, *src, *len, stored, &used);
	CHECK_EQ(used, CODEC_BF16);
	CHECK_EQ(frame[1], 0x02);
	return frame;
}

/* ---- tests ----------------------------------------------------------------------------- */

TEST(round_trip_every_codec_input_and_length)
{
	static const size_t lens[] = { 0, 1, 2, 3, 4095, 4096, 4097, 65537, MIB - 1, MIB };
	struct codec_ctx *ctx = new_ctx();
	uint8_t *buf = malloc(MIB);

	CHECK(buf != NULL);
	for (int kind = 0; kind < 3; kind++) {
		for (size_t l = 0; l < sizeof(lens) / sizeof(lens[0]); l++) {
			size_t len = lens[l];

			if (kind == 0)
				memset(buf, 0, len);
			else if (kind == 1)
				fill_random(buf, len, len + 1);
			else
				fill_kv(buf, len, len + 1, 7);
			for (size_t c = 0; c < NCODECS; c++) {
				enum codec_id used;

				round_trip(ctx, all_codecs[c], buf, len, &used);
				/* Zeros of a page or more must actually compress. */
				if (kind == 0 && len >= 4095 && all_codecs[c] != CODEC_RAW)
					CHECK_MSG(used == all_codecs[c], "%s did not compress %zu zeros",
						  codec_name(all_codecs[c]), len);
			}
		}
	}
	free(buf);
	codec_ctx_free(ctx);
}

TEST(random_bytes_fall_back_to_raw)
{
	struct codec_ctx *ctx = new_ctx();
	uint8_t *src = malloc(MIB);
	enum codec_id used;
	size_t stored;

	CHECK(src != NULL);
	fill_random(src, MIB, 42);
	for (size_t c = 0; c < NCODECS; c++) {
		uint8_t *frame = encode(ctx, all_codecs[c], src, MIB, &stored, &used);

		CHECK_EQ(used, CODEC_RAW);
		CHECK_EQ(stored, MIB);
		CHECK(memcmp(frame, src, MIB) == 0);
		free(frame);
	}
	free(src);
	codec_ctx_free(ctx);
}

/* Random bytes with a zero run at the start of every KiB compress to ~98% with
 * 28-byte runs (kept raw: not below CODEC_RAW_THRESHOLD_PCT) and ~95% with 60. */
TEST(compression_kept_only_below_threshold)
{
	struct codec_ctx *ctx = new_ctx();
	uint8_t *src = malloc(65536), *f;
	enum codec_id used;
	size_t stored;

	CHECK(src != NULL);
	for (size_t run = 28; run <= 60; run += 32) {
		fill_random(src, 65536, 77);
		for (size_t off = 0; off < 65536; off += 1024)
			memset(src + off, 0, run);
		f = encode(ctx, CODEC_ZSTD, src, 65536, &stored, &used);
		test_log("zero runs of %zu: stored %zu of 65536", run, stored);
		CHECK_EQ(used, run == 28 ? CODEC_RAW : CODEC_ZSTD);
		free(f);
	}
	free(src);
	codec_ctx_free(ctx);
}

TEST(kv_data_compresses_and_bf16_beats_zstd)
{
	struct codec_ctx *ctx = new_ctx();
	uint8_t *src = malloc(MIB);
	size_t zstd_size, bf16_size;
	enum codec_id used;
	uint8_t *f;

	CHECK(src != NULL);
	fill_kv(src, MIB, 1, 7);
	f = encode(ctx, CODEC_ZSTD, src, MIB, &zstd_size, &used);
	CHECK_EQ(used, CODEC_ZSTD);
	free(f);
	f = encode(ctx, CODEC_BF16, src, MIB, &bf16_size, &used);
	CHECK_EQ(used, CODEC_BF16);
	free(f);
	test_log("ratio zstd %.3f bf16 %.3f", (double)MIB / (double)zstd_size,
		 (double)MIB / (double)bf16_size);
	CHECK(zstd_size < MIB);
	CHECK_MSG(bf16_size <= zstd_size, "bf16 %zu bytes > zstd %zu bytes", bf16_size, zstd_size);
	free(src);
	codec_ctx_free(ctx);
}

/* Mantissa noise goes raw (flag clear); widened values (4 low bits zero) and
 * repeated rows get zstd on the low plane too, and it pays. */
TEST(bf16_low_plane_zstd_only_when_it_pays)
{
	struct codec_ctx *ctx = new_ctx();
	uint8_t *src = malloc(MIB);
	size_t stored, lo;
	uint64_t seed = 99;
	enum codec_id used;
	uint8_t *f;

	CHECK(src != NULL);
	fill_kv(src, MIB, 3, 7);
	f = encode(ctx, CODEC_BF16, src, MIB, &stored, &used);
	CHECK_EQ(used, CODEC_BF16);
	CHECK_EQ(f[1], 0x01); /* high plane zstd, low plane raw */
	free(f);

	fill_kv(src, MIB, 3, 3);
	f = encode(ctx, CODEC_BF16, src, MIB, &stored, &used);
	CHECK_EQ(used, CODEC_BF16);
	CHECK_EQ(f[1], 0x03); /* both planes zstd */
	lo = stored - 8 - ((size_t)f[4] | (size_t)f[5] << 8 | (size_t)f[6] << 16);
	CHECK_MSG(lo * 4 < MIB / 2 * 3, "low plane of widened data kept %zu of %u bytes", lo,
		  MIB / 2);
	free(f);
	round_trip(ctx, CODEC_BF16, src, MIB, NULL);

	/* Random exponent bytes with zero mantissa bytes: high plane raw, low zstd. */
	fill_random(src, MIB, 5);
	for (size_t i = 0; i < MIB; i += 2)
		src[i] = 0;
	f = encode(ctx, CODEC_BF16, src, MIB, &stored, &used);
	CHECK_EQ(used, CODEC_BF16);
	CHECK_EQ(f[1], 0x02);
	CHECK(stored < MIB / 2 + 4096);
	free(f);
	round_trip(ctx, CODEC_BF16, src, MIB, NULL);

	/* Rows repeated from a small set (like layer-0 V rows of repeated tokens):
	 * the low plane's byte histogram is flat, but it repeats like the high plane. */
	fill_kv(src, 64 * 2048, 4, 7);
	for (size_t off = 64 * 2048; off < MIB; off += 2048)
		memcpy(src + off, src + (rnd(&seed) % 64) * 2048, 2048);
	f = encode(ctx, CODEC_BF16, src, MIB, &stored, &used);
	CHECK_EQ(used, CODEC_BF16);
	CHECK_EQ(f[1], 0x03);
	lo = stored - 8 - ((size_t)f[4] | (size_t)f[5] << 8 | (size_t)f[6] << 16);
	CHECK_MSG(lo * 4 < MIB / 2, "low plane of repeated rows kept %zu of %u bytes", lo, MIB / 2);
	free(f);
	round_trip(ctx, CODEC_BF16, src, MIB, NULL);
	free(src);
	codec_ctx_free(ctx);
}

TEST(bf16_codec_on_odd_and_non_bf16_input)
{
	static const size_t lens[] = { 1, 3, 5, 4097, 65535, MIB - 1 };
	struct codec_ctx *ctx = new_ctx();
	uint8_t *src = malloc(MIB);
	enum codec_id used;

	CHECK(src != NULL);
	for (size_t l = 0; l < sizeof(lens) / sizeof(lens[0]); l++) {
		fill_kv(src, lens[l], 11, 7);
		round_trip(ctx, CODEC_BF16, src, lens[l], &used);
		if (lens[l] >= 4097)
			CHECK_EQ(used, CODEC_BF16); /* odd length still byte-split */
		/* Text is not bf16: still a lossless round trip. */
		for (size_t i = 0; i < lens[l]; i++)
			src[i] = (uint8_t)"the quick brown fox jumps over the lazy dog "[i % 44];
		round_trip(ctx, CODEC_BF16, src, lens[l], NULL);
	}
	free(src);
	codec_ctx_free(ctx);
}

TEST(truncated_frames_are_rejected)
{
	struct codec_ctx *ctx = new_ctx();

	for (size_t c = 0; c < NCODECS; c++) {
		enum codec_id id = all_codecs[c];
		size_t len, stored;
		uint8_t *src, *frame;

		if (id == CODEC_RAW) {
			len = stored = 65536;
			src = malloc(len);
			CHECK(src != NULL);
			fill_random(src, len, 5);
			frame = malloc(len);
			CHECK(frame != NULL);
			memcpy(frame, src, len);
		} else {
			frame = compressed_frame(ctx, id, &src, &len, &stored);
		}
		for (size_t cut = 1; cut <= stored; cut = cut < 64 ? cut + 1 : cut * 2)
			CHECK_MSG(decode_guarded(ctx, id, frame, stored - cut, len, NULL) == -EBADMSG,
				  "%s accepted a frame cut by %zu bytes", codec_name(id), cut);
		free(frame);
		free(src);
	}
	/* A raw high plane longer than what is left: each cut copied to a buffer of
	 * its own size, so reading past it is caught under ASan. */
	{
		size_t len, stored;
		uint8_t *src, *frame = hi_raw_frame(ctx, &src, &len, &stored);

		for (size_t cut = 1; cut <= stored; cut = cut < 64 ? cut + 1 : cut * 2) {
			uint8_t *copy = malloc(stored - cut + 1);

			CHECK(copy != NULL);
			memcpy(copy, frame, stored - cut);
			CHECK_RC(decode_guarded(ctx, CODEC_BF16, copy, stored - cut, len, NULL),
				 -EBADMSG);
			free(copy);
		}
		CHECK_RC(decode_guarded(ctx, CODEC_BF16, frame, stored, len, NULL), 0);
		free(frame);
		free(src);
	}
	codec_ctx_free(ctx);
}

TEST(length_mismatch_is_rejected)
{
	struct codec_ctx *ctx = new_ctx();

	for (size_t c = 0; c < NCODECS; c++) {
		enum codec_id id = all_codecs[c];
		size_t len, stored;
		uint8_t *src, *frame;

		if (id == CODEC_RAW) {
			len = stored = 65536;
			src = malloc(len);
			CHECK(src != NULL);
			fill_random(src, len, 6);
			frame = malloc(len);
			CHECK(frame != NULL);
			memcpy(frame, src, len);
		} else {
			frame = compressed_frame(ctx, id, &src, &len, &stored);
		}
		CHECK_RC(decode_guarded(ctx, id, frame, stored, len - 1, NULL), -EBADMSG);
		CHECK_RC(decode_guarded(ctx, id, frame, stored, len + 1, NULL), -EBADMSG);
		CHECK_RC(decode_guarded(ctx, id, frame, stored, len / 2, NULL), -EBADMSG);
		CHECK_RC(decode_guarded(ctx, id, frame, stored, 0, NULL), -EBADMSG);
		CHECK_RC(decode_guarded(ctx, id, frame, stored, MIB + 1, NULL), -EBADMSG);
		CHECK_RC(decode_guarded(ctx, id, frame, stored, len, NULL), 0);
		free(frame);
		free(src);
	}
	codec_ctx_free(ctx);
}

/*
 * Every single-bit flip of a frame either fails with -EBADMSG or decodes to len
 * bytes, never writing past dst + len. The codecs carry no checksum of their own
 * (raw cannot), so a flip that still parses is caught by codec_checksum of the
 * stored bytes, which the caller verifies before decoding; structural bytes are
 * always caught by the decoder itself.
 */
TEST(bit_flipped_frames_fail_cleanly)
{
	struct codec_ctx *ctx = new_ctx();

	for (size_t c = 0; c < NCODECS; c++) {
		enum codec_id id = all_codecs[c];
		size_t len, stored, rejected = 0, tried = 0;
		uint8_t *src, *frame;
		uint64_t sum;

		if (id == CODEC_RAW) {
			len = stored = 4096;
			src = malloc(len);
			CHECK(src != NULL);
			fill_kv(src, len, 8, 7);
			frame = malloc(len);
			CHECK(frame != NULL);
			memcpy(frame, src, len);
		} else {
			frame = compressed_frame(ctx, id, &src, &len, &stored);
		}
		sum = codec_checksum(frame, stored);
		for (size_t byte = 0; byte < stored; byte += byte < 256 ? 1 : 61) {
			for (int bit = 0; bit < 8; bit++) {
				int rc;

				frame[byte] ^= (uint8_t)(1u << bit);
				CHECK(codec_checksum(frame, stored) != sum);
				rc = decode_guarded(ctx, id, frame, stored, len, NULL);
				CHECK_MSG(rc == 0 || rc == -EBADMSG, "%s flip %zu.%d: rc %d",
					  codec_name(id), byte, bit, rc);
				frame[byte] ^= (uint8_t)(1u << bit);
				tried++;
				rejected += rc == -EBADMSG;
				/* zstd magic and the whole bf16 header are structural. */
				if (id == CODEC_ZSTD && byte < 4)
					CHECK_RC(rc, -EBADMSG);
				if (id == CODEC_BF16 && byte < 12)
					CHECK_MSG(rc == -EBADMSG, "bf16 flip in byte %zu.%d accepted",
						  byte, bit);
			}
		}
		test_log("%s: %zu of %zu flips rejected by the decoder", codec_name(id), rejected,
			 tried);
		CHECK_RC(decode_guarded(ctx, id, frame, stored, len, NULL), 0);
		free(frame);
		free(src);
	}
	codec_ctx_free(ctx);
}

TEST(wrong_codec_id_is_rejected)
{
	struct codec_ctx *ctx = new_ctx();
	size_t len, zlen, blen;
	uint8_t *src, *src2, *zf = compressed_frame(ctx, CODEC_ZSTD, &src, &len, &zlen);
	uint8_t *bf = compressed_frame(ctx, CODEC_BF16, &src2, &len, &blen);

	CHECK_RC(decode_guarded(ctx, CODEC_BF16, zf, zlen, len, NULL), -EBADMSG);
	CHECK_RC(decode_guarded(ctx, CODEC_RAW, zf, zlen, len, NULL), -EBADMSG);
	CHECK_RC(decode_guarded(ctx, CODEC_ZSTD, bf, blen, len, NULL), -EBADMSG);
	CHECK_RC(decode_guarded(ctx, CODEC_RAW, bf, blen, len, NULL), -EBADMSG);
	/* A raw frame of random bytes is neither a zstd nor a bf16 frame. */
	fill_random(src, len, 9);
	CHECK_RC(decode_guarded(ctx, CODEC_ZSTD, src, len, len, NULL), -EBADMSG);
	CHECK_RC(decode_guarded(ctx, CODEC_BF16, src, len, len, NULL), -EBADMSG);
	CHECK_RC(decode_guarded(ctx, CODEC_COUNT, zf, zlen, len, NULL), -EBADMSG);
	CHECK_RC(decode_guarded(ctx, (enum codec_id)99, src, len, len, NULL), -EBADMSG);
	CHECK_RC(decode_guarded(ctx, (enum codec_id)-1, src, len, len, NULL), -EBADMSG);
	free(zf);
	free(bf);
	free(src);
	free(src2);
	codec_ctx_free(ctx);
}

/* Frames that are valid zstd but not what one stored frame may be. */
TEST(zstd_frame_shape_is_enforced)
{
	static const int exps[] = { 10, 11, 17 };
	struct codec_ctx *ctx = new_ctx();
	uint8_t payload[100], frame[256], two[256];
	size_t n1, n2, fl;

	/* Hand-built frame (RFC 8878): magic, FHD 0x80 (4-byte content size, no single
	 * segment), window descriptor, content size 100, one last RLE block of 100. */
	for (size_t e = 0; e < sizeof(exps) / sizeof(exps[0]); e++) {
		int exp = exps[e];
		uint8_t *p = frame;
		uint32_t bh = 100u << 3 | 1u << 1 | 1;

		p[0] = 0x28, p[1] = 0xb5, p[2] = 0x2f, p[3] = 0xfd;
		p[4] = 0x80;
		p[5] = (uint8_t)(exp << 3); /* window 2^(10 + exp) */
		p[6] = 100, p[7] = 0, p[8] = 0, p[9] = 0;
		p[10] = (uint8_t)bh, p[11] = (uint8_t)(bh >> 8), p[12] = (uint8_t)(bh >> 16);
		p[13] = 0x42;
		fl = 14;
		/* libzstd itself accepts every such window in one-shot mode... */
		CHECK_EQ(ZSTD_decompress(two, sizeof(two), frame, fl), 100);
		CHECK(two[0] == 0x42 && two[99] == 0x42);
		/* ...the codec accepts 1 MiB and refuses 2 MiB and 128 MiB. */
		CHECK_RC(decode_guarded(ctx, CODEC_ZSTD, frame, fl, 100, NULL),
			 exp == 10 ? 0 : -EBADMSG);
	}
	/* The same as one raw block: valid zstd, but larger than its content, which
	 * no encoder stores (it would store raw). */
	{
		uint32_t bh = 100u << 3 | 1;

		frame[5] = 10 << 3;
		frame[10] = (uint8_t)bh, frame[11] = (uint8_t)(bh >> 8), frame[12] = (uint8_t)(bh >> 16);
		memset(frame + 13, 0x42, 100);
		CHECK_EQ(ZSTD_decompress(two, sizeof(two), frame, 113), 100);
		CHECK_RC(decode_guarded(ctx, CODEC_ZSTD, frame, 113, 100, NULL), -EBADMSG);
	}

	/* Trailing bytes and a second frame (compressible, so each is smaller than
	 * its content, as every stored frame is). */
	for (size_t i = 0; i < sizeof(payload); i++)
		payload[i] = (uint8_t)(i % 7);
	n1 = ZSTD_compress(frame, sizeof(frame), payload, 50, 3);
	CHECK(!ZSTD_isError(n1));
	n2 = ZSTD_compress(frame + n1, sizeof(frame) - n1, payload + 50, 50, 3);
	CHECK(!ZSTD_isError(n2));
	CHECK_RC(decode_guarded(ctx, CODEC_ZSTD, frame, n1, 50, NULL), 0);
	CHECK_RC(decode_guarded(ctx, CODEC_ZSTD, frame, n1 + n2, 100, NULL), -EBADMSG);
	frame[n1] = 0;
	CHECK_RC(decode_guarded(ctx, CODEC_ZSTD, frame, n1 + 1, 50, NULL), -EBADMSG);
	/* libzstd would decode these to exactly 50 bytes: a frame of 50 followed by
	 * an empty frame, or by a skippable frame. */
	n2 = ZSTD_compress(frame + n1, sizeof(frame) - n1, payload, 0, 3);
	CHECK(!ZSTD_isError(n2));
	CHECK_EQ(ZSTD_decompress(two, sizeof(two), frame, n1 + n2), 50);
	CHECK_RC(decode_guarded(ctx, CODEC_ZSTD, frame, n1 + n2, 50, NULL), -EBADMSG);
	memset(frame + n1, 0, 8);
	frame[n1] = 0x50, frame[n1 + 1] = 0x2a, frame[n1 + 2] = 0x4d, frame[n1 + 3] = 0x18;
	CHECK_EQ(ZSTD_decompress(two, sizeof(two), frame, n1 + 8), 50);
	CHECK_RC(decode_guarded(ctx, CODEC_ZSTD, frame, n1 + 8, 50, NULL), -EBADMSG);

	/* No content size in the header. */
	{
		ZSTD_CCtx *cc = ZSTD_createCCtx();
		size_t r;

		CHECK(cc != NULL);
		CHECK(!ZSTD_isError(ZSTD_CCtx_setParameter(cc, ZSTD_c_contentSizeFlag, 0)));
		r = ZSTD_compress2(cc, two, sizeof(two), payload, sizeof(payload));
		CHECK(!ZSTD_isError(r));
		CHECK_RC(decode_guarded(ctx, CODEC_ZSTD, two, r, sizeof(payload), NULL), -EBADMSG);
		ZSTD_freeCCtx(cc);
	}

	/* A skippable frame (magic 0x184D2A50) of "content size" 0. */
	memset(two, 0, 16);
	two[0] = 0x50, two[1] = 0x2a, two[2] = 0x4d, two[3] = 0x18, two[4] = 8;
	CHECK_RC(decode_guarded(ctx, CODEC_ZSTD, two, 16, 0, NULL), -EBADMSG);
	codec_ctx_free(ctx);
}

/* The bf16 header's sizes and flags are all cross-checked. */
TEST(bf16_header_is_validated)
{
	struct codec_ctx *ctx = new_ctx();
	size_t len, stored;
	uint8_t *src, *frame = compressed_frame(ctx, CODEC_BF16, &src, &len, &stored);
	uint32_t hi = (uint32_t)frame[4] | (uint32_t)frame[5] << 8 | (uint32_t)frame[6] << 16 |
		      (uint32_t)frame[7] << 24;
	uint8_t *copy = malloc(stored + 1);

	CHECK(copy != NULL);
	/* Every other high-plane size, the reserved fields and unknown flags. */
	for (uint64_t h = 0; h <= stored + 2; h += h < hi + 70 && h + 70 > hi ? 1 : 97) {
		if (h == hi)
			continue;
		memcpy(copy, frame, stored);
		copy[4] = (uint8_t)h, copy[5] = (uint8_t)(h >> 8);
		copy[6] = (uint8_t)(h >> 16), copy[7] = (uint8_t)(h >> 24);
		CHECK_MSG(decode_guarded(ctx, CODEC_BF16, copy, stored, len, NULL) == -EBADMSG,
			  "hi_size %llu accepted", (unsigned long long)h);
	}
	memcpy(copy, frame, stored);
	copy[7] = 0x80; /* hi_size beyond 2 GiB */
	CHECK_RC(decode_guarded(ctx, CODEC_BF16, copy, stored, len, NULL), -EBADMSG);
	for (int v = 0; v < 256; v++) {
		memcpy(copy, frame, stored);
		copy[0] = (uint8_t)v;
		CHECK_RC(decode_guarded(ctx, CODEC_BF16, copy, stored, len, NULL),
			 v == 1 ? 0 : -EBADMSG);
		copy[0] = 1;
		copy[1] = (uint8_t)v;
		CHECK_RC(decode_guarded(ctx, CODEC_BF16, copy, stored, len, NULL),
			 v == frame[1] ? 0 : -EBADMSG);
		copy[1] = frame[1];
		copy[2 + (v & 1)] = (uint8_t)v;
		CHECK_RC(decode_guarded(ctx, CODEC_BF16, copy, stored, len, NULL),
			 v == 0 ? 0 : -EBADMSG);
	}
	/* One trailing byte more. */
	memcpy(copy, frame, stored);
	copy[stored] = 0;
	CHECK_RC(decode_guarded(ctx, CODEC_BF16, copy, stored + 1, len, NULL), -EBADMSG);
	free(copy);
	free(frame);
	free(src);
	codec_ctx_free(ctx);
}

/* Random bytes, and random bytes behind a plausible bf16 header, never crash,
 * never overrun, and never decode to anything but 0 or -EBADMSG. */
TEST(garbage_frames_fail_cleanly)
{
	struct codec_ctx *ctx = new_ctx();
	uint8_t buf[2048];
	uint64_t s = 12345;

	for (int iter = 0; iter < 3000; iter++) {
		size_t stored = rnd(&s) % sizeof(buf), len = rnd(&s) % (2 * sizeof(buf));
		enum codec_id id = all_codecs[rnd(&s) % NCODECS];
		int rc;

		fill_random(buf, stored, rnd(&s));
		if (id == CODEC_BF16 && stored >= 8) {
			uint32_t hi = (uint32_t)(rnd(&s) % (stored - 7));

			buf[0] = 1, buf[1] = (uint8_t)(rnd(&s) & 3), buf[2] = buf[3] = 0;
			buf[4] = (uint8_t)hi, buf[5] = (uint8_t)(hi >> 8), buf[6] = buf[7] = 0;
			if (stored >= 12 && (buf[1] & 1))
				buf[8] = 0x28, buf[9] = 0xb5, buf[10] = 0x2f, buf[11] = 0xfd;
		}
		if (id == CODEC_ZSTD && stored >= 4)
			buf[0] = 0x28, buf[1] = 0xb5, buf[2] = 0x2f, buf[3] = 0xfd;
		rc = decode_guarded(ctx, id, buf, stored, len, NULL);
		CHECK_MSG(rc == 0 || rc == -EBADMSG, "%s stored %zu len %zu: rc %d",
			  codec_name(id), stored, len, rc);
	}
	codec_ctx_free(ctx);
}

TEST(encode_rejects_bad_arguments)
{
	struct codec_ctx *ctx = new_ctx();
	uint8_t *src = calloc(1, MIB + 1), *dst = malloc(MIB + 1);
	enum codec_id used = CODEC_COUNT;

	CHECK(src && dst);
	CHECK_RC(codec_encode_frame(ctx, CODEC_ZSTD, src, 4096, dst, 4095, &used), -ENOBUFS);
	CHECK_RC(codec_encode_frame(ctx, CODEC_ZSTD, src, MIB + 1, dst, MIB + 1, &used), -EINVAL);
	CHECK_RC(codec_encode_frame(ctx, CODEC_COUNT, src, 4096, dst, 4096, &used), -EINVAL);
	CHECK_RC(codec_encode_frame(ctx, CODEC_ZSTD, NULL, 4096, dst, 4096, &used), -EINVAL);
	CHECK_RC(codec_encode_frame(NULL, CODEC_ZSTD, src, 4096, dst, 4096, &used), -EINVAL);
	CHECK_EQ(used, CODEC_COUNT);
	/* Exactly codec_frame_bound(len) is enough, whatever the data. */
	fill_random(src, 4096, 1);
	CHECK_EQ(codec_encode_frame(ctx, CODEC_BF16, src, 4096, dst, codec_frame_bound(4096), &used),
		 4096);
	CHECK_EQ(used, CODEC_RAW);
	CHECK_RC(codec_decode_frame(NULL, CODEC_RAW, src, 1, dst, 1), -EINVAL);
	free(src);
	free(dst);
	codec_ctx_free(ctx);
}

TEST(ctx_levels_names_and_policy)
{
	struct codec_ctx *ctx = NULL;
	kvt_block_desc bf16 = { .dtype = KVT_DTYPE_BF16 }, f16 = { .dtype = KVT_DTYPE_F16 };

	CHECK_RC(codec_ctx_new(-1, &ctx), -EINVAL);
	CHECK_RC(codec_ctx_new(20, &ctx), -EINVAL);
	CHECK(ctx == NULL);
	CHECK_RC(codec_ctx_new(1, &ctx), 0);
	codec_ctx_free(ctx);
	CHECK_RC(codec_ctx_new(19, &ctx), 0);
	codec_ctx_free(ctx);
	codec_ctx_free(NULL);

	/* Level 0 means CODEC_DEFAULT_LEVEL, and the level reaches zstd. */
	{
		static const int levels[] = { 0, CODEC_DEFAULT_LEVEL, 3 };
		uint8_t *src = malloc(MIB), *f[3];
		size_t stored[3];
		enum codec_id used;

		CHECK(src != NULL);
		fill_kv(src, MIB, 13, 7);
		for (int i = 0; i < 3; i++) {
			CHECK_RC(codec_ctx_new(levels[i], &ctx), 0);
			f[i] = encode(ctx, CODEC_BF16, src, MIB, &stored[i], &used);
			codec_ctx_free(ctx);
		}
		CHECK(stored[0] == stored[1] && memcmp(f[0], f[1], stored[0]) == 0);
		CHECK(stored[2] != stored[1] || memcmp(f[2], f[1], stored[1]) != 0);
		for (int i = 0; i < 3; i++)
			free(f[i]);
		free(src);
	}

	for (int i = 0; i < CODEC_COUNT; i++)
		CHECK_EQ(codec_parse(codec_name((enum codec_id)i)), i);
	CHECK(codec_name(CODEC_COUNT) == NULL);
	CHECK(codec_name((enum codec_id)-1) == NULL);
	CHECK_RC(codec_parse("lz4"), -EINVAL);
	CHECK_RC(codec_parse(NULL), -EINVAL);
	CHECK_EQ(codec_for_desc(CODEC_BF16, &bf16), CODEC_BF16);
	CHECK_EQ(codec_for_desc(CODEC_BF16, &f16), CODEC_ZSTD);
	CHECK_EQ(codec_for_desc(CODEC_BF16, NULL), CODEC_ZSTD);
	CHECK_EQ(codec_for_desc(CODEC_ZSTD, &bf16), CODEC_ZSTD);
	CHECK_EQ(codec_for_desc(CODEC_RAW, &bf16), CODEC_RAW);
}

TEST(checksum_is_xxh3_64)
{
	uint8_t b[3] = { 'a', 'b', 'c' };

	/* Reference values of XXH3_64bits with seed 0. */
	CHECK(codec_checksum(b, 0) == 0x2d06800538d394c2ull);
	CHECK(codec_checksum(b, 3) == 0x78af5f94892f3950ull);
	b[1] ^= 1;
	CHECK(codec_checksum(b, 3) != 0x78af5f94892f3950ull);
}

TEST_MAIN(round_trip_every_codec_input_and_length, random_bytes_fall_back_to_raw,
	  compression_kept_only_below_threshold,
	  kv_data_compresses_and_bf16_beats_zstd, bf16_low_plane_zstd_only_when_it_pays,
	  bf16_codec_on_odd_and_non_bf16_input, truncated_frames_are_rejected,
	  length_mismatch_is_rejected, bit_flipped_frames_fail_cleanly, wrong_codec_id_is_rejected,
	  zstd_frame_shape_is_enforced, bf16_header_is_validated, garbage_frames_fail_cleanly,
	  encode_rejects_bad_arguments, ctx_levels_names_and_policy, checksum_is_xxh3_64)
