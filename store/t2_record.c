/*
 * t2_record.c - the NVMe tier's record format: encode a block into a checksummed
 * record, parse and verify one read back, decode its frames. Pure functions over
 * bytes (no I/O, no globals), so they run on any thread and can be fuzzed directly.
 * The format is specified in docs/STORAGE.md; every field is written and read byte
 * by byte, little-endian.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define XXH_STATIC_LINKING_ONLY /* XXH3_state_t on the stack */
#include <xxhash.h>

#include "t2.h"
#include "t2_internal.h"

/* Header field offsets (docs/STORAGE.md, "Record header"). */
enum {
	H_MAGIC = 0,
	H_VERSION = 4,
	H_FLAGS = 6,
	H_HDRLEN = 8,
	H_TENANT = 12,
	H_KEY = 16,
	H_DESC = 32,
	H_LEN = 48,
	H_CODEC = 56,
	H_RESERVED = 57, /* 3 bytes */
	H_NFRAMES = 60,
	H_RECLEN = 64,
	H_CSUM = T2_HDR_CSUM_OFF,
	H_FRAMES = T2_HDR_FIXED,
};

/* Frame-table entry offsets. */
enum {
	F_STORED_OFF = 0,
	F_STORED_LEN = 8,
	F_LOGICAL_LEN = 12,
	F_CODEC = 16,
	F_RESERVED = 17, /* 7 bytes */
	F_CSUM = 24,
};

static uint64_t frames_for(uint64_t len)
{
	return (len + CODEC_FRAME_SIZE - 1) / CODEC_FRAME_SIZE;
}

uint64_t t2_record_header_len(uint64_t len)
{
	return T2_HDR_FIXED + (uint64_t)T2_HDR_FRAME * frames_for(len);
}

/*
 * Every on-disk structure, field by field (name:offset:size), with the constants
 * that shape them. Its hash is the layout signature kept in the index's meta: a
 * build whose structures differ from the store's refuses to open it, even if
 * someone forgot to bump T2_FORMAT_VERSION. Change it only with the format.
 */
static int layout_build(char *buf, size_t cap)
{
	return snprintf(
		buf, cap,
		"kvtier-t2 v%u align=%u frame=%u checksum=xxh3-64 codecs=raw:0,zstd:1,bf16:2;"
		"record-header(le) magic:0:4=KVTR version:4:2 flags:6:2 hdrlen:8:4 tenant:12:4 "
		"key:16:16 desc:32:16(dtype:0:2,layout:2:2,layers:4:2,reserved0:6:2,tokens:8:4,"
		"reserved1:12:4) len:48:8 codec:56:1 reserved:57:3 nframes:60:4 reclen:64:8 "
		"hdrcsum:72:8 frames:80:%u*n;"
		"frame(le) stored_off:0:8 stored_len:8:4 logical_len:12:4 codec:16:1 reserved:17:7 "
		"csum:24:8;"
		"lmdb meta(keys magic,version,layout,segment_size,created_ms,incompat);"
		"blocks key(tenant:be4,key:16) val(le) seg:0:4 flags:4:4 off:8:8 reclen:16:8 len:24:8 "
		"desc:32:16 codec:48:1 reserved:49:3 refs:52:4 created_ms:56:8 last_access_ms:64:8 "
		"access_count:72:8 parent:80:16;"
		"byloc key(seg:be4,off:be8) val(tenant:be4,key:16);"
		"children dupsort key(tenant:be4,parent:16) val(tenant:be4,key:16);"
		"segments key(seg:be4) val(le) live:0:8 write_off:8:8 nblocks:16:8 ref_blocks:24:8 "
		"logical:32:8;"
		"segment-file seg-%%08u.kvs records appended at 4096-aligned offsets",
		T2_RECORD_VERSION, T2_ALIGN, CODEC_FRAME_SIZE, T2_HDR_FRAME);
}

static char layout_text[2048];

static void layout_once(void)
{
	layout_build(layout_text, sizeof(layout_text));
}

const char *t2_layout_string(void)
{
	static pthread_once_t once = PTHREAD_ONCE_INIT;

	pthread_once(&once, layout_once);
	return layout_text;
}

uint64_t t2_layout_signature(void)
{
	char s[2048];
	int n = layout_build(s, sizeof(s));

	return XXH3_64bits(s, n > 0 && (size_t)n < sizeof(s) ? (size_t)n : strlen(s));
}

void t2_desc_encode(uint8_t out[16], const kvt_block_desc *d)
{
	t2_put16(out + 0, d->dtype);
	t2_put16(out + 2, d->layout);
	t2_put16(out + 4, d->layers);
	t2_put16(out + 6, d->reserved0);
	t2_put32(out + 8, d->tokens);
	t2_put32(out + 12, d->reserved1);
}

void t2_desc_decode(kvt_block_desc *d, const uint8_t in[16])
{
	memset(d, 0, sizeof(*d));
	d->dtype = t2_get16(in + 0);
	d->layout = t2_get16(in + 2);
	d->layers = t2_get16(in + 4);
	d->reserved0 = t2_get16(in + 6);
	d->tokens = t2_get32(in + 8);
	d->reserved1 = t2_get32(in + 12);
}

size_t t2_record_bound(uint64_t len)
{
	uint64_t first, slack;

	if (len > T2_MAX_BLOCK)
		return 0;
	/* A frame is stored raw when compression does not pay, so frames never take
	 * more than their logical size; but the codec wants its full working bound
	 * (codec_frame_bound) as room for the frame it is encoding, so the last frame
	 * may need that much past where the raw layout would end. */
	first = len < CODEC_FRAME_SIZE ? len : CODEC_FRAME_SIZE;
	slack = codec_frame_bound((size_t)first) - first;
	return (size_t)(t2_align_up(t2_record_header_len(len)) + t2_align_up(len + slack));
}

static uint64_t header_checksum(const uint8_t *rec, uint64_t hdr_len)
{
	static const uint8_t zero[8];
	XXH3_state_t st;

	XXH3_64bits_reset(&st);
	XXH3_64bits_update(&st, rec, H_CSUM);
	XXH3_64bits_update(&st, zero, sizeof(zero));
	XXH3_64bits_update(&st, rec + H_CSUM + 8, (size_t)(hdr_len - H_CSUM - 8));
	return XXH3_64bits_digest(&st);
}

/* Copy n logical bytes starting at off out of the spans into dst. */
static void gather(const struct t2_span *src, size_t nsrc, uint64_t off, uint8_t *dst, uint64_t n)
{
	for (size_t i = 0; i < nsrc && n > 0; i++) {
		if (off >= src[i].len) {
			off -= src[i].len;
			continue;
		}
		uint64_t take = src[i].len - off;

		if (take > n)
			take = n;
		memcpy(dst, src[i].ptr + off, (size_t)take);
		dst += take;
		n -= take;
		off = 0;
	}
}

/* Scatter n bytes into the spans at logical offset off. */
static void scatter(const struct t2_span *dst, size_t ndst, uint64_t off, const uint8_t *src,
		    uint64_t n)
{
	for (size_t i = 0; i < ndst && n > 0; i++) {
		if (off >= dst[i].len) {
			off -= dst[i].len;
			continue;
		}
		uint64_t take = dst[i].len - off;

		if (take > n)
			take = n;
		memcpy(dst[i].ptr + off, src, (size_t)take);
		src += take;
		n -= take;
		off = 0;
	}
}

/* The span holding [off, off+n) whole, or NULL if the range straddles spans. */
static uint8_t *contiguous(const struct t2_span *s, size_t ns, uint64_t off, uint64_t n)
{
	for (size_t i = 0; i < ns; i++) {
		if (off >= s[i].len) {
			off -= s[i].len;
			continue;
		}
		return off + n <= s[i].len ? s[i].ptr + off : NULL;
	}
	return NULL;
}

static int spans_total(const struct t2_span *s, size_t n, uint64_t *total)
{
	uint64_t t = 0;

	for (size_t i = 0; i < n; i++) {
		if (s[i].len && !s[i].ptr)
			return -EINVAL;
		if (t + s[i].len < t)
			return -EINVAL;
		t += s[i].len;
	}
	*total = t;
	return 0;
}

/* The fixed header fields and its checksum; the frame table must be in place. */
static void fill_header(uint8_t *buf, const struct t1_key *key, const kvt_block_desc *desc,
			uint64_t len, uint8_t codec, uint64_t record_len)
{
	uint64_t hdr_len = t2_record_header_len(len);

	memcpy(buf + H_MAGIC, T2_RECORD_MAGIC, 4);
	t2_put16(buf + H_VERSION, T2_RECORD_VERSION);
	t2_put16(buf + H_FLAGS, 0);
	t2_put32(buf + H_HDRLEN, (uint32_t)hdr_len);
	t2_put32(buf + H_TENANT, key->tenant);
	memcpy(buf + H_KEY, key->key.b, 16);
	t2_desc_encode(buf + H_DESC, desc);
	t2_put64(buf + H_LEN, len);
	buf[H_CODEC] = codec;
	t2_put32(buf + H_NFRAMES, (uint32_t)frames_for(len));
	t2_put64(buf + H_RECLEN, record_len);
	t2_put64(buf + H_CSUM, header_checksum(buf, hdr_len));
}

int t2_record_encode(struct codec_ctx *ctx, enum codec_id codec, const struct t1_key *key,
		     const kvt_block_desc *desc, const struct t2_span *src, size_t nsrc,
		     uint64_t len, uint8_t *buf, size_t cap, size_t *record_len)
{
	uint64_t total, nframes, hdr_len, pos;
	uint8_t *scratch = NULL;
	int rc;

	if (!key || !desc || !buf || !record_len || (nsrc && !src) || (unsigned)codec >= CODEC_COUNT)
		return -EINVAL;
	if (((uintptr_t)buf & (T2_ALIGN - 1)) || len > T2_MAX_BLOCK)
		return -EINVAL;
	if (codec != CODEC_RAW && !ctx)
		return -EINVAL;
	rc = spans_total(src, nsrc, &total);
	if (rc < 0 || total != len)
		return -EINVAL;
	if (cap < t2_record_bound(len))
		return -ENOBUFS;

	nframes = frames_for(len);
	hdr_len = t2_record_header_len(len);
	pos = t2_align_up(hdr_len);
	memset(buf, 0, (size_t)pos);

	for (uint64_t i = 0; i < nframes; i++) {
		uint64_t loff = i * CODEC_FRAME_SIZE;
		uint64_t flen = len - loff < CODEC_FRAME_SIZE ? len - loff : CODEC_FRAME_SIZE;
		uint8_t *ent = buf + H_FRAMES + i * T2_HDR_FRAME;
		enum codec_id used = CODEC_RAW;
		long stored;

		if (codec == CODEC_RAW) {
			gather(src, nsrc, loff, buf + pos, flen);
			stored = (long)flen;
		} else {
			const uint8_t *in = contiguous(src, nsrc, loff, flen);

			if (!in) {
				if (!scratch && !(scratch = malloc(CODEC_FRAME_SIZE))) {
					rc = -ENOMEM;
					goto out;
				}
				gather(src, nsrc, loff, scratch, flen);
				in = scratch;
			}
			stored = codec_encode_frame(ctx, codec, in, (size_t)flen, buf + pos,
						    cap - (size_t)pos, &used);
			if (stored < 0) {
				rc = (int)stored;
				goto out;
			}
			if ((uint64_t)stored > flen || (unsigned)used >= CODEC_COUNT ||
			    (used == CODEC_RAW && (uint64_t)stored != flen)) {
				rc = -EIO; /* the codec broke its contract */
				goto out;
			}
		}
		t2_put64(ent + F_STORED_OFF, pos);
		t2_put32(ent + F_STORED_LEN, (uint32_t)stored);
		t2_put32(ent + F_LOGICAL_LEN, (uint32_t)flen);
		ent[F_CODEC] = (uint8_t)used;
		t2_put64(ent + F_CSUM, XXH3_64bits(buf + pos, (size_t)stored));
		pos += (uint64_t)stored;
	}
	{
		uint64_t end = t2_align_up(pos);

		memset(buf + pos, 0, (size_t)(end - pos));
		fill_header(buf, key, desc, len, codec, end);
		*record_len = (size_t)end;
	}
	rc = 0;
out:
	free(scratch);
	return rc;
}

/* ---- the same record, its frames encoded in parallel ---------------------------------- */

uint64_t t2_record_frames(uint64_t len)
{
	return len > T2_MAX_BLOCK ? 0 : frames_for(len);
}

/* Where frame i sits before packing: its place in the raw layout. */
static uint64_t frame_slot(uint64_t len, uint64_t i)
{
	return t2_align_up(t2_record_header_len(len)) + i * CODEC_FRAME_SIZE;
}

int t2_record_encode_frame(struct codec_ctx *ctx, enum codec_id codec, const struct t2_span *src,
			   size_t nsrc, uint64_t len, uint64_t i, uint8_t *buf, size_t cap,
			   struct t2_frame_out *fo)
{
	uint64_t loff = i * CODEC_FRAME_SIZE, slot = frame_slot(len, i), flen;
	enum codec_id used = CODEC_RAW;
	long stored;

	uint64_t total;

	if (!buf || !fo || (nsrc && !src) || (unsigned)codec >= CODEC_COUNT ||
	    len > T2_MAX_BLOCK || i >= frames_for(len) || cap < t2_record_bound(len))
		return -EINVAL;
	if (spans_total(src, nsrc, &total) < 0 || total != len)
		return -EINVAL;
	if (codec != CODEC_RAW && !ctx)
		return -EINVAL;
	flen = len - loff < CODEC_FRAME_SIZE ? len - loff : CODEC_FRAME_SIZE;
	if (codec == CODEC_RAW) {
		gather(src, nsrc, loff, buf + slot, flen);
		stored = (long)flen;
	} else {
		/* The codec wants its whole working bound as room, which would run into
		 * the next frame's slot (another thread's): encode aside, then copy. */
		size_t bound = codec_frame_bound((size_t)flen);
		uint8_t *work = codec_ctx_work(ctx, bound + CODEC_FRAME_SIZE);
		const uint8_t *in;

		if (!work)
			return -ENOMEM;
		in = contiguous(src, nsrc, loff, flen);
		if (!in) {
			gather(src, nsrc, loff, work + bound, flen);
			in = work + bound;
		}
		stored = codec_encode_frame(ctx, codec, in, (size_t)flen, work, bound, &used);
		if (stored < 0)
			return (int)stored;
		if ((uint64_t)stored > flen || (unsigned)used >= CODEC_COUNT ||
		    (used == CODEC_RAW && (uint64_t)stored != flen))
			return -EIO; /* the codec broke its contract */
		memcpy(buf + slot, work, (size_t)stored);
	}
	fo->stored = (uint32_t)stored;
	fo->logical = (uint32_t)flen;
	fo->codec = (uint8_t)used;
	fo->csum = XXH3_64bits(buf + slot, (size_t)stored);
	return 0;
}

int t2_record_encode_finish(const struct t1_key *key, const kvt_block_desc *desc,
			    enum codec_id codec, uint64_t len, uint8_t *buf, size_t cap,
			    const struct t2_frame_out *fo, size_t *record_len)
{
	uint64_t nframes, pos;

	if (!key || !desc || !buf || !fo || !record_len || len > T2_MAX_BLOCK ||
	    cap < t2_record_bound(len))
		return -EINVAL;
	nframes = frames_for(len);
	pos = t2_align_up(t2_record_header_len(len));
	memset(buf, 0, (size_t)pos);
	for (uint64_t i = 0; i < nframes; i++) {
		uint8_t *ent = buf + H_FRAMES + i * T2_HDR_FRAME;

		if (fo[i].stored > CODEC_FRAME_SIZE)
			return -EINVAL;
		/* Frames only shrink, so each moves down (or stays). */
		memmove(buf + pos, buf + frame_slot(len, i), fo[i].stored);
		t2_put64(ent + F_STORED_OFF, pos);
		t2_put32(ent + F_STORED_LEN, fo[i].stored);
		t2_put32(ent + F_LOGICAL_LEN, fo[i].logical);
		ent[F_CODEC] = fo[i].codec;
		t2_put64(ent + F_CSUM, fo[i].csum);
		pos += fo[i].stored;
	}
	{
		uint64_t end = t2_align_up(pos);

		memset(buf + pos, 0, (size_t)(end - pos));
		fill_header(buf, key, desc, len, codec, end);
		*record_len = (size_t)end;
	}
	return 0;
}

/*
 * A raw record written straight from the block's memory: the record is the header
 * (padded to T2_ALIGN), the block's bytes as they are, and the block's last partial
 * T2_ALIGN page zero-padded. Only the header and that last page are built, in hdr;
 * out[] lists what to write, in order. Frame checksums are computed over src as it
 * is (streaming across extents), so the bytes on disk are exactly what
 * t2_record_encode would have produced for CODEC_RAW.
 */
size_t t2_record_raw_head_bound(uint64_t len)
{
	if (len > T2_MAX_BLOCK)
		return 0;
	return (size_t)t2_align_up(t2_record_header_len(len)) + T2_ALIGN;
}

int t2_record_raw_plan(const struct t1_key *key, const kvt_block_desc *desc,
		       const struct t2_span *src, size_t nsrc, uint64_t len, uint8_t *hdr,
		       size_t hdr_cap, struct t2_span *out, size_t out_cap, size_t *nout,
		       size_t *record_len)
{
	uint64_t total, nframes, hdr_pad, tail, body;
	XXH3_state_t st;
	size_t n = 0;
	int rc;

	if (!key || !desc || !hdr || !out || !nout || !record_len || (nsrc && !src))
		return -EINVAL;
	if (((uintptr_t)hdr & (T2_ALIGN - 1)) || len == 0 || len > T2_MAX_BLOCK)
		return -EINVAL;
	rc = spans_total(src, nsrc, &total);
	if (rc < 0 || total != len)
		return -EINVAL;
	if (hdr_cap < t2_record_raw_head_bound(len) || out_cap < nsrc + 2)
		return -ENOBUFS;
	/* Direct I/O: every piece written from the block's memory starts on a page and,
	 * but for the last, is whole pages. Anything else is for t2_record_encode. */
	for (size_t i = 0; i < nsrc; i++)
		if (((uintptr_t)src[i].ptr & (T2_ALIGN - 1)) ||
		    (i + 1 < nsrc && src[i].len % T2_ALIGN))
			return -EINVAL;

	nframes = frames_for(len);
	hdr_pad = t2_align_up(t2_record_header_len(len));
	memset(hdr, 0, (size_t)hdr_pad + T2_ALIGN);
	/* Frame table and checksums: frame i covers logical [i MiB, +1 MiB). */
	{
		size_t si = 0;
		uint64_t soff = 0;

		for (uint64_t i = 0; i < nframes; i++) {
			uint64_t loff = i * CODEC_FRAME_SIZE;
			uint64_t flen = len - loff < CODEC_FRAME_SIZE ? len - loff : CODEC_FRAME_SIZE;
			uint8_t *ent = hdr + H_FRAMES + i * T2_HDR_FRAME;
			uint64_t left = flen;

			if (XXH3_64bits_reset(&st) != XXH_OK)
				return -EIO;
			while (left) {
				uint64_t take = src[si].len - soff < left ? src[si].len - soff : left;

				if (take && XXH3_64bits_update(&st, src[si].ptr + soff, (size_t)take) !=
						    XXH_OK)
					return -EIO;
				soff += take;
				left -= take;
				if (soff == src[si].len) {
					si++;
					soff = 0;
				}
			}
			t2_put64(ent + F_STORED_OFF, hdr_pad + loff);
			t2_put32(ent + F_STORED_LEN, (uint32_t)flen);
			t2_put32(ent + F_LOGICAL_LEN, (uint32_t)flen);
			ent[F_CODEC] = CODEC_RAW;
			t2_put64(ent + F_CSUM, XXH3_64bits_digest(&st));
		}
	}
	body = len - len % T2_ALIGN; /* written from src */
	tail = len % T2_ALIGN;       /* copied into the page after the header */
	fill_header(hdr, key, desc, len, CODEC_RAW, t2_align_up(hdr_pad + len));

	out[n++] = (struct t2_span){ hdr, hdr_pad };
	for (size_t i = 0; i < nsrc && body; i++) {
		uint64_t take = src[i].len < body ? src[i].len : body;

		if (take)
			out[n++] = (struct t2_span){ src[i].ptr, take };
		body -= take;
	}
	if (tail) {
		gather(src, nsrc, len - tail, hdr + hdr_pad, tail);
		out[n++] = (struct t2_span){ hdr + hdr_pad, T2_ALIGN };
	}
	*nout = n;
	*record_len = (size_t)t2_align_up(hdr_pad + len);
	return 0;
}

int t2_record_check_head(const uint8_t *head, size_t head_len, size_t rec_len,
			 const struct t1_key *key, uint64_t *len, kvt_block_desc *desc,
			 uint64_t *record_len)
{
	if (!head || head_len < T2_ALIGN)
		return -EBADMSG;
	if (t2_align_up(t2_get32(head + H_HDRLEN)) > head_len)
		return -EBADMSG;
	return t2_record_check(head, rec_len, key, len, desc, record_len, NULL);
}

static bool all_zero(const uint8_t *p, size_t n)
{
	for (size_t i = 0; i < n; i++)
		if (p[i])
			return false;
	return true;
}

int t2_record_check(const uint8_t *rec, size_t rec_len, const struct t1_key *key,
		    uint64_t *len, kvt_block_desc *desc, uint64_t *record_len, uint64_t *nframes)
{
	uint64_t hdr_len, blen, nf, reclen, pos;

	if (!rec || !key)
		return -EINVAL;
	/* Fixed part first, then lengths against rec_len, then the checksum, and only
	 * then anything that depends on the header's contents. */
	if (rec_len < T2_ALIGN)
		return -EBADMSG;
	if (memcmp(rec + H_MAGIC, T2_RECORD_MAGIC, 4) != 0)
		return -EBADMSG;
	if (t2_get16(rec + H_VERSION) != T2_RECORD_VERSION)
		return -EBADMSG;
	if (t2_get16(rec + H_FLAGS) & T2_RECORD_FLAGS_INCOMPAT & ~T2_RECORD_FLAGS_KNOWN)
		return -EBADMSG;
	hdr_len = t2_get32(rec + H_HDRLEN);
	nf = t2_get32(rec + H_NFRAMES);
	blen = t2_get64(rec + H_LEN);
	reclen = t2_get64(rec + H_RECLEN);
	if (blen > T2_MAX_BLOCK || nf != frames_for(blen) ||
	    hdr_len != T2_HDR_FIXED + nf * T2_HDR_FRAME || t2_align_up(hdr_len) > rec_len)
		return -EBADMSG;
	if (reclen > rec_len || reclen % T2_ALIGN || reclen < t2_align_up(hdr_len))
		return -EBADMSG;
	if (t2_get64(rec + H_CSUM) != header_checksum(rec, hdr_len))
		return -EBADMSG;
	/* The record must be the one asked for: a stale index entry pointing into
	 * space that was reused holds another key's record. */
	if (t2_get32(rec + H_TENANT) != key->tenant || memcmp(rec + H_KEY, key->key.b, 16) != 0)
		return -EBADMSG;
	if (!all_zero(rec + H_RESERVED, 3) || rec[H_CODEC] >= CODEC_COUNT)
		return -EBADMSG;

	pos = t2_align_up(hdr_len);
	for (uint64_t i = 0; i < nf; i++) {
		const uint8_t *ent = rec + H_FRAMES + i * T2_HDR_FRAME;
		uint64_t off = t2_get64(ent + F_STORED_OFF);
		uint64_t slen = t2_get32(ent + F_STORED_LEN);
		uint64_t llen = t2_get32(ent + F_LOGICAL_LEN);
		uint64_t want = blen - i * CODEC_FRAME_SIZE;
		uint8_t c = ent[F_CODEC];

		if (want > CODEC_FRAME_SIZE)
			want = CODEC_FRAME_SIZE;
		/* Frames follow one another from the end of the padded header, each
		 * no larger than its logical size (raw exactly so). */
		if (off != pos || llen != want || slen > llen || (llen && !slen) ||
		    c >= CODEC_COUNT || (c == CODEC_RAW && slen != llen) ||
		    !all_zero(ent + F_RESERVED, 7) || off + slen > reclen)
			return -EBADMSG;
		pos = off + slen;
	}
	if (t2_align_up(pos) != reclen)
		return -EBADMSG;
	if (len)
		*len = blen;
	if (desc)
		t2_desc_decode(desc, rec + H_DESC);
	if (record_len)
		*record_len = reclen;
	if (nframes)
		*nframes = nf;
	return 0;
}

int t2_record_parse(const uint8_t *rec, size_t rec_len, const struct t1_key *key,
		    struct t2_frame *frames, size_t cap, size_t *nframes, uint64_t *len,
		    kvt_block_desc *desc)
{
	uint64_t nf;
	int rc;

	if (!nframes || (cap && !frames))
		return -EINVAL;
	rc = t2_record_check(rec, rec_len, key, len, desc, NULL, &nf);
	if (rc)
		return rc;
	if (nf > cap)
		return -ENOBUFS;
	for (uint64_t i = 0; i < nf; i++) {
		const uint8_t *ent = rec + H_FRAMES + i * T2_HDR_FRAME;

		frames[i].stored_off = t2_get64(ent + F_STORED_OFF);
		frames[i].stored_len = t2_get32(ent + F_STORED_LEN);
		frames[i].logical_off = i * CODEC_FRAME_SIZE;
		frames[i].logical_len = t2_get32(ent + F_LOGICAL_LEN);
		frames[i].codec = ent[F_CODEC];
		frames[i].checksum = t2_get64(ent + F_CSUM);
	}
	*nframes = (size_t)nf;
	return 0;
}

int t2_frame_decode(struct codec_ctx *ctx, const uint8_t *rec, const struct t2_frame *f,
		    const struct t2_span *dst, size_t ndst)
{
	const uint8_t *stored;
	uint64_t total;
	uint8_t *out, *tmp;
	int rc;

	if (!rec || !f || (ndst && !dst))
		return -EINVAL;
	rc = spans_total(dst, ndst, &total);
	if (rc < 0 || f->logical_off + f->logical_len > total)
		return -EINVAL;
	stored = rec + f->stored_off;
	if (XXH3_64bits(stored, f->stored_len) != f->checksum)
		return -EBADMSG;
	if (f->codec == CODEC_RAW) {
		if (f->stored_len != f->logical_len)
			return -EBADMSG;
		scatter(dst, ndst, f->logical_off, stored, f->logical_len);
		return 0;
	}
	if (!ctx)
		return -EINVAL;
	out = contiguous(dst, ndst, f->logical_off, f->logical_len);
	if (out)
		return codec_decode_frame(ctx, (enum codec_id)f->codec, stored, f->stored_len, out,
					  f->logical_len);
	tmp = malloc(f->logical_len ? f->logical_len : 1);
	if (!tmp)
		return -ENOMEM;
	rc = codec_decode_frame(ctx, (enum codec_id)f->codec, stored, f->stored_len, tmp,
				f->logical_len);
	if (rc == 0)
		scatter(dst, ndst, f->logical_off, tmp, f->logical_len);
	free(tmp);
	return rc;
}
