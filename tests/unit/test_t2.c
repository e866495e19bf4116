/*
 * test_t2.c - the NVMe tier: the record format (round trips for every codec,
 * damage refused), append/read round trips on both I/O backends, warm reopen
 * without scanning data, index operations, format-version refusal, LMDB map
 * growth, the buffered fallback and a file system without room.
 */
#include <fcntl.h>
#include <lmdb.h>
#include <sched.h>
#include <sys/mount.h>
#include <sys/stat.h>

#include <xxhash.h>

#include "t2_internal.h"
#include "test_t2_util.h"

/* ---- records (pure) ------------------------------------------------------------------ */

/* Split [0, len) into spans of irregular sizes over buf. */
static size_t make_spans(uint8_t *buf, uint64_t len, struct t2_span *sp, size_t cap, uint64_t seed)
{
	uint64_t off = 0, s = seed;
	size_t n = 0;

	while (off < len && n + 1 < cap) {
		uint64_t take = 1 + t2t_rand(&s) % (700 * 1024);

		if (take > len - off)
			take = len - off;
		sp[n].ptr = buf + off;
		sp[n].len = take;
		n++;
		off += take;
	}
	if (off < len) {
		sp[n].ptr = buf + off;
		sp[n].len = len - off;
		n++;
	}
	return n;
}

TEST(record_roundtrip_every_codec)
{
	static const uint64_t lens[] = { 0, 1, 4096, MIB - 3, MIB, MIB + 1, 3 * MIB + MIB / 2 };
	struct codec_ctx *ctx;

	CHECK_RC(codec_ctx_new(0, &ctx), 0);
	for (int c = 0; c < CODEC_COUNT; c++) {
		bool compressed = false;

		for (size_t li = 0; li < sizeof(lens) / sizeof(lens[0]); li++) {
			uint64_t len = lens[li];
			struct t1_key key = t2t_key(7, len + (uint64_t)c);
			uint8_t *data = t2t_alloc(len), *out = t2t_alloc(len);
			size_t bound = t2_record_bound(len), rl = 0, nf = 0;
			uint8_t *rec = t2t_alloc(bound);
			struct t2_span src[64], dst[64];
			size_t nsrc, ndst;
			struct t2_frame fr[8];
			kvt_block_desc d = t2t_desc(len), d2;
			uint64_t got_len = 0;

			t2t_fill(data, len, t2t_seed(&key));
			nsrc = make_spans(data, len, src, 64, len * 3 + 1);
			CHECK_RC(t2_record_encode(ctx, (enum codec_id)c, &key, &d, src, nsrc, len, rec,
						  bound, &rl),
				 0);
			CHECK(rl % T2_ALIGN == 0 && rl <= bound && rl >= T2_ALIGN);
			CHECK_RC(t2_record_parse(rec, rl, &key, fr, 8, &nf, &got_len, &d2), 0);
			CHECK_EQ(got_len, len);
			CHECK_EQ(nf, (len + CODEC_FRAME_SIZE - 1) / CODEC_FRAME_SIZE);
			CHECK(memcmp(&d, &d2, sizeof(d)) == 0);
			memset(out, 0xa5, len);
			ndst = make_spans(out, len, dst, 64, len * 7 + 5);
			for (size_t i = 0; i < nf; i++) {
				CHECK_RC(t2_frame_decode(ctx, rec, &fr[i], dst, ndst), 0);
				if (fr[i].codec != CODEC_RAW)
					compressed = true;
				CHECK(c != CODEC_RAW || fr[i].codec == CODEC_RAW);
			}
			CHECK_MSG(memcmp(out, data, len) == 0, "codec %d len %llu: decoded bytes differ",
				  c, (unsigned long long)len);
			free(data);
			free(out);
			free(rec);
		}
		/* The mixed data compresses: a codec that never did would be a bug. */
		CHECK_MSG(c == CODEC_RAW || compressed, "codec %s never compressed", codec_name(c));
	}
	codec_ctx_free(ctx);
}

/* Frames encoded one by one in any order, by two contexts (as two workers would),
 * then packed: the same record as t2_record_encode, byte for byte, for every codec
 * and for lengths that end mid-frame; and a frame index out of range refused. */
TEST(record_parallel_frames_match_sequential_encode)
{
	static const uint64_t lens[] = { 1, MIB - 3, MIB, 2 * MIB + 4097, 5 * MIB + MIB / 3 };
	struct codec_ctx *ctx[2];

	CHECK_RC(codec_ctx_new(0, &ctx[0]), 0);
	CHECK_RC(codec_ctx_new(0, &ctx[1]), 0);
	for (int c = 0; c < CODEC_COUNT; c++) {
		for (size_t li = 0; li < sizeof(lens) / sizeof(lens[0]); li++) {
			uint64_t len = lens[li], nf = t2_record_frames(len);
			struct t1_key key = t2t_key(9, len * 5 + (uint64_t)c);
			kvt_block_desc d = t2t_desc(len);
			size_t bound = t2_record_bound(len), rl1 = 0, rl2 = 0;
			uint8_t *data = t2t_alloc(len), *r1 = t2t_alloc(bound), *r2 = t2t_alloc(bound);
			struct t2_frame_out fo[8];
			struct t2_span src[64];
			size_t nsrc;

			CHECK(nf >= 1 && nf <= 8);
			t2t_fill(data, len, t2t_seed(&key));
			nsrc = make_spans(data, len, src, 64, len * 11 + 3);
			CHECK_RC(t2_record_encode(ctx[0], (enum codec_id)c, &key, &d, src, nsrc, len, r1,
						  bound, &rl1),
				 0);
			memset(r2, 0x5c, bound);
			for (uint64_t k = nf; k-- > 0;)
				CHECK_RC(t2_record_encode_frame(ctx[k % 2], (enum codec_id)c, src, nsrc, len,
								k, r2, bound, &fo[k]),
					 0);
			CHECK_RC(t2_record_encode_frame(ctx[0], (enum codec_id)c, src, nsrc, len, nf, r2,
							bound, &fo[0]),
				 -EINVAL);
			CHECK_RC(t2_record_encode_finish(&key, &d, (enum codec_id)c, len, r2, bound, fo,
							 &rl2),
				 0);
			CHECK_EQ(rl2, rl1);
			CHECK_MSG(memcmp(r1, r2, rl1) == 0, "codec %s, %llu bytes: records differ",
				  codec_name(c), (unsigned long long)len);
			free(data);
			free(r1);
			free(r2);
		}
	}
	codec_ctx_free(ctx[0]);
	codec_ctx_free(ctx[1]);
}

/* Rewrite the header checksum after a deliberate change, as a forger would. */
static void reseal(uint8_t *rec)
{
	uint32_t hdr_len = t2_get32(rec + 8);
	uint8_t *copy = malloc(hdr_len);

	memcpy(copy, rec, hdr_len);
	memset(copy + T2_HDR_CSUM_OFF, 0, 8);
	t2_put64(rec + T2_HDR_CSUM_OFF, XXH3_64bits(copy, hdr_len));
	free(copy);
}

TEST(record_parse_rejects_damage)
{
	struct codec_ctx *ctx;
	struct t1_key key = t2t_key(3, 99), other;
	uint64_t len = 2 * MIB + 12345;
	size_t rl, nf;
	uint8_t *rec, *work;
	struct t2_frame fr[8];
	uint32_t hdr_len;
	int rejected = 0;

	CHECK_RC(codec_ctx_new(0, &ctx), 0);
	rec = t2t_record(ctx, CODEC_ZSTD, &key, len, &rl);
	work = t2t_alloc(rl);
	hdr_len = t2_get32(rec + 8);
	CHECK_EQ(hdr_len, T2_HDR_FIXED + 3 * T2_HDR_FRAME);
	CHECK_RC(t2_record_parse(rec, rl, &key, fr, 8, &nf, NULL, NULL), 0);

	/* Truncated. */
	CHECK_RC(t2_record_parse(rec, rl - T2_ALIGN, &key, fr, 8, &nf, NULL, NULL), -EBADMSG);
	CHECK_RC(t2_record_parse(rec, T2_ALIGN - 1, &key, fr, 8, &nf, NULL, NULL), -EBADMSG);
	CHECK_RC(t2_record_parse(rec, 0, &key, fr, 8, &nf, NULL, NULL), -EBADMSG);
	/* Every single bit of the header flipped. */
	for (uint32_t bit = 0; bit < hdr_len * 8; bit++) {
		memcpy(work, rec, rl);
		work[bit / 8] ^= (uint8_t)(1u << (bit % 8));
		rejected += t2_record_parse(work, rl, &key, fr, 8, &nf, NULL, NULL) == -EBADMSG;
	}
	CHECK_EQ(rejected, hdr_len * 8);
	/* Someone else's record: another tenant, another key. */
	other = key;
	other.tenant++;
	CHECK_RC(t2_record_parse(rec, rl, &other, fr, 8, &nf, NULL, NULL), -EBADMSG);
	other = key;
	other.key.b[9] ^= 0x40;
	CHECK_RC(t2_record_parse(rec, rl, &other, fr, 8, &nf, NULL, NULL), -EBADMSG);
	/* Well-formed but from the future, or with an unknown must-understand flag,
	 * or a reserved byte set: refused even with a valid checksum. */
	memcpy(work, rec, rl);
	t2_put16(work + 4, T2_RECORD_VERSION + 1);
	reseal(work);
	CHECK_RC(t2_record_parse(work, rl, &key, fr, 8, &nf, NULL, NULL), -EBADMSG);
	memcpy(work, rec, rl);
	t2_put16(work + 6, 0x0001);
	reseal(work);
	CHECK_RC(t2_record_parse(work, rl, &key, fr, 8, &nf, NULL, NULL), -EBADMSG);
	memcpy(work, rec, rl);
	t2_put16(work + 6, 0x0100); /* an ignorable flag: accepted */
	reseal(work);
	CHECK_RC(t2_record_parse(work, rl, &key, fr, 8, &nf, NULL, NULL), 0);
	memcpy(work, rec, rl);
	work[58] = 1;
	reseal(work);
	CHECK_RC(t2_record_parse(work, rl, &key, fr, 8, &nf, NULL, NULL), -EBADMSG);
	/* A frame table that lies about lengths, with a valid checksum. */
	memcpy(work, rec, rl);
	t2_put32(work + T2_HDR_FIXED + 8, t2_get32(work + T2_HDR_FIXED + 8) + 4096);
	reseal(work);
	CHECK_RC(t2_record_parse(work, rl, &key, fr, 8, &nf, NULL, NULL), -EBADMSG);
	memcpy(work, rec, rl);
	t2_put64(work + 48, len + CODEC_FRAME_SIZE); /* length without the frame for it */
	reseal(work);
	CHECK_RC(t2_record_parse(work, rl, &key, fr, 8, &nf, NULL, NULL), -EBADMSG);
	/* Too small a frame table. */
	CHECK_RC(t2_record_parse(rec, rl, &key, fr, 2, &nf, NULL, NULL), -ENOBUFS);
	/* A flipped bit in frame data: the header parses, that frame fails, the
	 * others decode. */
	{
		uint8_t *out = t2t_alloc(len);
		struct t2_span sp = { out, len };

		memcpy(work, rec, rl);
		CHECK_RC(t2_record_parse(work, rl, &key, fr, 8, &nf, NULL, NULL), 0);
		work[fr[1].stored_off + fr[1].stored_len / 2] ^= 0x10;
		CHECK_RC(t2_frame_decode(ctx, work, &fr[0], &sp, 1), 0);
		CHECK_RC(t2_frame_decode(ctx, work, &fr[1], &sp, 1), -EBADMSG);
		CHECK_RC(t2_frame_decode(ctx, work, &fr[2], &sp, 1), 0);
		free(out);
	}
	free(work);
	free(rec);
	codec_ctx_free(ctx);
}

TEST(record_layout_signature_stable)
{
	/* The signature is what old stores are checked against: it must not drift
	 * between runs, and it must cover the structures it names. */
	CHECK(t2_layout_signature() == t2_layout_signature());
	CHECK(strstr(t2_layout_string(), "record-header") != NULL);
	CHECK(strstr(t2_layout_string(), "segments key") != NULL);
	CHECK(t2_layout_signature() == XXH3_64bits(t2_layout_string(), strlen(t2_layout_string())));
}

/* ---- append and read ----------------------------------------------------------------- */

static void append_read(const char *dir, enum io_backend b)
{
	struct io_engine *io = t2t_io(b);
	struct t2_config c = t2t_config(dir, io, 4);
	struct t2_open_report rep;
	struct t2 *t = t2t_open(&c, &rep);
	struct codec_ctx *ctx;
	struct t2_stats st;
	struct t2_info info;
	const int n = 40;

	CHECK(rep.created);
	CHECK_EQ(rep.blocks, 0);
	CHECK(rep.direct_io);
	CHECK_RC(codec_ctx_new(1, &ctx), 0);
	for (int i = 0; i < n; i++) {
		struct t1_key k = t2t_key(1, (uint64_t)i);
		uint64_t len = 4096 + ((uint64_t)i * 77777) % (3 * MIB);

		CHECK_RC(t2t_append(io, t, ctx, (enum codec_id)(i % CODEC_COUNT), &k, NULL, len), 0);
	}
	for (int i = 0; i < n; i++) {
		struct t1_key k = t2t_key(1, (uint64_t)i);

		CHECK_RC(t2t_verify(io, t, ctx, &k, 4096 + ((uint64_t)i * 77777) % (3 * MIB)), 0);
		CHECK_RC(t2_lookup(t, &k, &info), 0);
		CHECK_EQ(info.codec, i % CODEC_COUNT);
		CHECK_EQ(info.refs, 0);
	}
	/* Replacing a key serves the new bytes. */
	{
		struct t1_key k = t2t_key(1, 5);

		CHECK_RC(t2t_append(io, t, ctx, CODEC_RAW, &k, NULL, 12345), 0);
		CHECK_RC(t2t_verify(io, t, ctx, &k, 12345), 0);
	}
	/* Misuse is refused, never written. */
	{
		struct t1_key k = t2t_key(1, 1000), wrong = t2t_key(1, 1001);
		size_t rl;
		uint8_t *rec = t2t_record(ctx, CODEC_RAW, &k, 8192, &rl);
		kvt_block_desc d = t2t_desc(8192);
		struct t2t_done dn = { false, 0 };
		uint8_t *buf = t2t_alloc(rl + T2_ALIGN);

		t2_append(t, &wrong, NULL, rec, rl, 8192, &d, 0, t2t_done_cb, &dn);
		CHECK(!dn.done); /* never answered inside the call */
		t2t_wait(io, t, &dn);
		CHECK_RC(dn.status, -EINVAL);
		dn.done = false;
		t2_append(t, &k, NULL, rec, rl, 8191, &d, 0, t2t_done_cb, &dn);
		t2t_wait(io, t, &dn);
		CHECK_RC(dn.status, -EINVAL);
		CHECK_RC(t2_lookup(t, &k, NULL), -ENOENT);
		CHECK_RC(t2_lookup(t, &wrong, NULL), -ENOENT);
		/* Reads: missing key, small buffer, unaligned buffer. */
		dn.done = false;
		t2_read(t, &k, buf, rl, t2t_done_cb, &dn);
		t2t_wait(io, t, &dn);
		CHECK_RC(dn.status, -ENOENT);
		{
			struct t1_key k0 = t2t_key(1, 0);

			dn.done = false;
			t2_read(t, &k0, buf, T2_ALIGN, t2t_done_cb, &dn);
			t2t_wait(io, t, &dn);
			CHECK_RC(dn.status, -ENOBUFS);
			dn.done = false;
			t2_read(t, &k0, buf + 1, rl, t2t_done_cb, &dn);
			t2t_wait(io, t, &dn);
			CHECK_RC(dn.status, -EINVAL);
		}
		free(buf);
		free(rec);
	}
	t2_get_stats(t, &st);
	CHECK_EQ(st.blocks, n);
	CHECK_EQ(st.writes, n + 1);
	CHECK(st.commits >= 1 && st.commits <= (uint64_t)n + 10);
	CHECK(st.stored_bytes > 0 && st.stored_bytes < st.logical_bytes + (uint64_t)n * 8192);
	CHECK_EQ(st.checksum_failures, 0);
	CHECK_EQ(st.io_errors, 0);
	CHECK_EQ(t2_inflight(t), 0);
	t2_close(t);
	CHECK_EQ(io_inflight(io), 0);
	codec_ctx_free(ctx);
	io_close(io);
}
T2T_BOTH(append_read)

static const struct t2_span *good_of(uint8_t *buf)
{
	static struct t2_span one;
	one = (struct t2_span){ buf, 8192 };
	return &one;
}

/*
 * Raw records written from the block's memory (t2_record_raw_plan + t2_append_spans):
 * the pieces hold exactly what t2_record_encode builds with CODEC_RAW; appended,
 * the record reads back and decodes to the block; unaligned extents are refused
 * by the planner and badly shaped pieces by the append; a write error on any one
 * piece fails the record and indexes nothing.
 */
static void raw_pieces(const char *dir, enum io_backend b)
{
	static const uint64_t lens[] = { 4096, 5000, MIB, 3 * MIB + 100, 2 * MIB + 65536 };
	struct io_engine *io = t2t_io(b);
	struct t2_config c = t2t_config(dir, io, 4);
	struct t2 *t = t2t_open(&c, NULL);
	struct codec_ctx *ctx;
	struct t2t_done dn;

	CHECK_RC(codec_ctx_new(1, &ctx), 0);
	for (size_t li = 0; li < sizeof(lens) / sizeof(lens[0]); li++) {
		uint64_t len = lens[li];
		struct t1_key k = t2t_key(3, 100 + li);
		kvt_block_desc d = t2t_desc(len);
		/* The block as T1 holds it: 64 KiB extents, out of order in memory. */
		uint64_t nx = (len + 65535) / 65536;
		uint8_t *arena = t2t_alloc(nx * 65536), *flat = t2t_alloc(len);
		struct t2_span src[64], out[66];
		size_t nout = 0, rl = 0, rl2 = 0;
		uint64_t seed = 99 + li;

		for (uint64_t i = 0; i < len; i++)
			flat[i] = (uint8_t)t2t_rand(&seed);
		for (uint64_t x = 0; x < nx; x++) {
			uint64_t slot = (x * 5) % nx; /* a permutation when nx is not a multiple of 5 */
			uint64_t take = len - x * 65536 < 65536 ? len - x * 65536 : 65536;

			src[x] = (struct t2_span){ arena + slot * 65536, take };
			memcpy(src[x].ptr, flat + x * 65536, take);
		}
		CHECK(nx <= 64 && nx % 5 != 0);
		size_t hcap = t2_record_raw_head_bound(len);
		uint8_t *hdr = t2t_alloc(hcap);
		CHECK_RC(t2_record_raw_plan(&k, &d, src, nx, len, hdr, hcap, out, 66, &nout, &rl), 0);
		/* Same bytes as the copying encoder. */
		uint8_t *rec = t2t_alloc(t2_record_bound(len)), *cat = t2t_alloc(rl);
		size_t pos = 0;
		CHECK_RC(t2_record_encode(ctx, CODEC_RAW, &k, &d, src, nx, len, rec,
					  t2_record_bound(len), &rl2),
			 0);
		CHECK_EQ(rl, rl2);
		for (size_t i = 0; i < nout; i++) {
			CHECK(((uintptr_t)out[i].ptr % T2_ALIGN) == 0 && out[i].len % T2_ALIGN == 0);
			CHECK(pos + out[i].len <= rl);
			memcpy(cat + pos, out[i].ptr, out[i].len);
			pos += out[i].len;
		}
		CHECK_EQ(pos, rl);
		CHECK_MSG(memcmp(cat, rec, rl) == 0, "len %llu: pieces differ from the encoder's record",
			  (unsigned long long)len);
		/* Appended as pieces, it reads back as the block. */
		dn = (struct t2t_done){ false, 0 };
		t2_append_spans(t, &k, NULL, out, nout, rl, len, &d, CODEC_RAW, t2t_done_cb, &dn);
		CHECK(!dn.done);
		t2t_wait(io, t, &dn);
		CHECK_RC(dn.status, 0);
		{
			struct t2_info info;
			uint8_t *back = t2t_alloc(rl);
			struct t2_frame fr[8];
			size_t nf = 0;
			uint64_t blen = 0;
			kvt_block_desc bd;
			uint8_t *got = t2t_alloc(len);
			struct t2_span dst = { got, len };

			CHECK_RC(t2_lookup(t, &k, &info), 0);
			CHECK_EQ(info.record_len, rl);
			dn = (struct t2t_done){ false, 0 };
			t2_read(t, &k, back, rl, t2t_done_cb, &dn);
			t2t_wait(io, t, &dn);
			CHECK_RC(dn.status, 0);
			CHECK_RC(t2_record_parse(back, rl, &k, fr, 8, &nf, &blen, &bd), 0);
			CHECK_EQ(blen, len);
			for (size_t f = 0; f < nf; f++)
				CHECK_RC(t2_frame_decode(ctx, back, &fr[f], &dst, 1), 0);
			CHECK(memcmp(got, flat, len) == 0);
			free(got);
			free(back);
		}
		free(cat);
		free(rec);
		free(hdr);
		free(arena);
		free(flat);
	}
	/* The planner refuses extents O_DIRECT cannot take. */
	{
		struct t1_key k = t2t_key(3, 900);
		kvt_block_desc d = t2t_desc(8192);
		uint8_t *buf = t2t_alloc(3 * 8192), *hdr = t2t_alloc(t2_record_raw_head_bound(8192));
		struct t2_span bad1[2] = { { buf + 1, 4096 }, { buf + 8192, 4096 } };
		struct t2_span bad2[2] = { { buf, 1000 }, { buf + 8192, 7192 } };
		struct t2_span out[4];
		size_t nout, rl;

		CHECK_RC(t2_record_raw_plan(&k, &d, bad1, 2, 8192, hdr, t2_record_raw_head_bound(8192),
					    out, 4, &nout, &rl),
			 -EINVAL);
		CHECK_RC(t2_record_raw_plan(&k, &d, bad2, 2, 8192, hdr, t2_record_raw_head_bound(8192),
					    out, 4, &nout, &rl),
			 -EINVAL);
		CHECK_RC(t2_record_raw_plan(&k, &d, good_of(buf), 1, 8192, hdr, 4096, out, 4, &nout,
					    &rl),
			 -ENOBUFS);
		/* A good plan, then pieces that break the rules: refused, nothing written. */
		struct t2_span good[1] = { { buf, 8192 } };
		CHECK_RC(t2_record_raw_plan(&k, &d, good, 1, 8192, hdr, t2_record_raw_head_bound(8192),
					    out, 4, &nout, &rl),
			 0);
		struct t2_span cut[2] = { out[0], { out[1].ptr, out[1].len - 512 } };
		dn = (struct t2t_done){ false, 0 };
		t2_append_spans(t, &k, NULL, cut, 2, rl - 512, 8192, &d, CODEC_RAW, t2t_done_cb, &dn);
		t2t_wait(io, t, &dn);
		CHECK_RC(dn.status, -EINVAL);
		dn = (struct t2t_done){ false, 0 };
		t2_append_spans(t, &k, NULL, out + 1, nout - 1, rl - out[0].len, 8192, &d, CODEC_RAW,
				t2t_done_cb, &dn);
		t2t_wait(io, t, &dn);
		CHECK_RC(dn.status, -EINVAL); /* the first piece must be the header */
		CHECK_RC(t2_lookup(t, &k, NULL), -ENOENT);
		/* A write error on the second piece fails the whole record. */
		struct io_fault f = { .on_write = true, .skip = 1, .err = -EIO };
		io_fault_set(io, &f);
		dn = (struct t2t_done){ false, 0 };
		t2_append_spans(t, &k, NULL, out, nout, rl, 8192, &d, CODEC_RAW, t2t_done_cb, &dn);
		t2t_wait(io, t, &dn);
		io_fault_clear(io);
		CHECK_RC(dn.status, -EIO);
		CHECK_RC(t2_lookup(t, &k, NULL), -ENOENT);
		free(hdr);
		free(buf);
	}
	CHECK_EQ(t2_inflight(t), 0);
	t2_close(t);
	CHECK_EQ(io_inflight(io), 0);
	codec_ctx_free(ctx);
	io_close(io);
}
T2T_BOTH(raw_pieces)

/* Bytes read through read(2)-family calls by this process so far. */
static uint64_t rchar(void)
{
	FILE *f = fopen("/proc/self/io", "r");
	char line[128];
	unsigned long long v = 0;

	CHECK(f != NULL);
	while (fgets(line, sizeof(line), f))
		if (sscanf(line, "rchar: %llu", &v) == 1)
			break;
	fclose(f);
	return v;
}

static void reopen_warm(const char *dir, enum io_backend b)
{
	struct io_engine *io = t2t_io(b);
	struct t2_config c = t2t_config(dir, io, 4);
	struct t2_open_report rep;
	struct codec_ctx *ctx;
	struct t2 *t = t2t_open(&c, &rep);
	const int n = 40;
	uint64_t before;

	CHECK_RC(codec_ctx_new(1, &ctx), 0);
	for (int i = 0; i < n; i++) {
		struct t1_key k = t2t_key(2, (uint64_t)i);

		CHECK_RC(t2t_append(io, t, ctx, i % 2 ? CODEC_RAW : CODEC_ZSTD, &k, NULL,
				    MIB + (uint64_t)i * 4096),
			 0);
	}
	t2_close(t);

	/* Reopen: the index is opened, not rebuilt; no segment data is read. */
	before = rchar();
	t = t2t_open(&c, &rep);
	CHECK_MSG(rchar() - before < MIB, "t2_open read %llu bytes",
		  (unsigned long long)(rchar() - before));
	CHECK(!rep.created);
	CHECK_EQ(rep.blocks, n);
	CHECK(rep.segments >= 1);
	CHECK_EQ(rep.segment_size, SEG64);
	for (int i = 0; i < n; i++) {
		struct t1_key k = t2t_key(2, (uint64_t)i);

		CHECK_RC(t2t_verify(io, t, ctx, &k, MIB + (uint64_t)i * 4096), 0);
	}
	/* Appends resume after what is indexed; nothing earlier is overwritten. */
	for (int i = n; i < n + 10; i++) {
		struct t1_key k = t2t_key(2, (uint64_t)i);

		CHECK_RC(t2t_append(io, t, ctx, CODEC_BF16, &k, NULL, 300000), 0);
	}
	t2_close(t);
	t = t2t_open(&c, &rep);
	CHECK_EQ(rep.blocks, n + 10);
	for (int i = 0; i < n + 10; i++) {
		struct t1_key k = t2t_key(2, (uint64_t)i);

		CHECK_RC(t2t_verify(io, t, ctx, &k, i < n ? MIB + (uint64_t)i * 4096 : 300000), 0);
	}
	/* An existing store keeps its segment size, whatever the configuration says. */
	t2_close(t);
	c.segment_size = 2 * SEG64;
	c.capacity = 8 * SEG64;
	t = t2t_open(&c, &rep);
	CHECK_EQ(rep.segment_size, SEG64);
	CHECK_RC(t2t_verify(io, t, ctx, &(struct t1_key){ 0 }, 0), -ENOENT);
	t2_close(t);
	codec_ctx_free(ctx);
	io_close(io);
}
T2T_BOTH(reopen_warm)

/* ---- index operations ---------------------------------------------------------------- */

static void flush_wait(struct io_engine *io, struct t2 *t)
{
	struct t2t_done dn = { false, 0 };

	t2_flush(t, t2t_done_cb, &dn);
	t2t_wait(io, t, &dn);
	CHECK_RC(dn.status, 0);
}

/* Read a block's row straight from the index (the store must be closed). */
static int read_row(const char *dir, const struct t1_key *k, struct t2_entry *e)
{
	char path[512];
	MDB_env *env;
	MDB_txn *txn;
	MDB_dbi dbi;
	uint8_t kb[T2_KEY_BYTES];
	MDB_val key = { sizeof(kb), kb }, v;
	int rc;

	snprintf(path, sizeof(path), "%s/index", dir);
	CHECK_RC(mdb_env_create(&env), 0);
	mdb_env_set_maxdbs(env, 8);
	CHECK_RC(mdb_env_open(env, path, MDB_RDONLY, 0600), 0);
	CHECK_RC(mdb_txn_begin(env, NULL, MDB_RDONLY, &txn), 0);
	CHECK_RC(mdb_dbi_open(txn, "blocks", 0, &dbi), 0);
	t2_key_encode(kb, k);
	rc = mdb_get(txn, dbi, &key, &v);
	if (rc == 0)
		rc = t2_entry_decode(e, v.mv_data, v.mv_size);
	mdb_txn_abort(txn);
	mdb_env_close(env);
	return rc;
}


struct refs_seen {
	size_t n;
	struct t1_key key;
	uint32_t refs;
	bool stop;
};

static int note_ref(void *arg, const struct t1_key *key, uint32_t refs)
{
	struct refs_seen *rs = arg;

	rs->n++;
	rs->key = *key;
	rs->refs = refs;
	return rs->stop ? 5 : 0;
}

static void index_ops(const char *dir, enum io_backend b)
{
	struct io_engine *io = t2t_io(b);
	struct t2_config c = t2t_config(dir, io, 4);
	struct t2_open_report rep;
	struct codec_ctx *ctx;
	struct t2 *t = t2t_open(&c, &rep);
	struct t1_key k1 = t2t_key(4, 1), k2 = t2t_key(4, 2), k3 = t2t_key(4, 3), k4 = t2t_key(4, 4);
	struct t1_key kids[8];
	struct t2_info info;
	struct t2_entry e;
	size_t n;

	CHECK_RC(codec_ctx_new(1, &ctx), 0);
	CHECK_RC(t2t_append(io, t, ctx, CODEC_ZSTD, &k1, NULL, 100000), 0);
	CHECK_RC(t2t_append(io, t, ctx, CODEC_ZSTD, &k2, &k1.key, 100000), 0);
	CHECK_RC(t2t_append(io, t, ctx, CODEC_ZSTD, &k3, &k1.key, 100000), 0);
	CHECK_RC(t2t_append(io, t, ctx, CODEC_ZSTD, &k4, &k3.key, 100000), 0);
	n = t2_children(t, &k1, kids, 8);
	CHECK_EQ(n, 2);
	CHECK((memcmp(&kids[0].key, &k2.key, 16) == 0 && memcmp(&kids[1].key, &k3.key, 16) == 0) ||
	      (memcmp(&kids[0].key, &k3.key, 16) == 0 && memcmp(&kids[1].key, &k2.key, 16) == 0));
	CHECK_EQ(kids[0].tenant, 4);
	CHECK_EQ(t2_children(t, &k4, kids, 8), 0);
	/* Another tenant's key with the same bytes has no children. */
	{
		struct t1_key o = k1;

		o.tenant = 5;
		CHECK_EQ(t2_children(t, &o, kids, 8), 0);
	}

	/* Delete: gone for lookups at once, and from the children list once durable. */
	CHECK_RC(t2_delete(t, &k2), 0);
	CHECK_RC(t2_lookup(t, &k2, NULL), -ENOENT);
	CHECK_RC(t2_delete(t, &k2), -ENOENT);
	flush_wait(io, t);
	CHECK_EQ(t2_children(t, &k1, kids, 8), 1);

	/* References: a referenced block cannot be deleted; refs count. */
	CHECK_RC(t2_ref(t, &k3), 0);
	CHECK_RC(t2_ref(t, &k3), 0);
	CHECK_RC(t2_lookup(t, &k3, &info), 0);
	CHECK_EQ(info.refs, 2);
	CHECK_RC(t2_delete(t, &k3), -EBUSY);
	CHECK_RC(t2_unref(t, &k3), 0);
	CHECK_RC(t2_ref(t, &k2), -ENOENT);
	CHECK_RC(t2_unref(t, &k1), -ENOENT);
	/* The walk over referenced blocks refuses while changes are queued, then sees
	 * the committed counts. */
	{
		struct refs_seen rs = { 0 };

		CHECK_RC(t2_foreach_ref(t, note_ref, &rs), -EBUSY);
		flush_wait(io, t);
		CHECK_RC(t2_foreach_ref(t, note_ref, &rs), 0);
		CHECK_EQ(rs.n, 1);
		CHECK(rs.key.tenant == k3.tenant && memcmp(&rs.key.key, &k3.key, 16) == 0);
		CHECK_EQ(rs.refs, 1);
		rs.stop = true;
		CHECK_RC(t2_foreach_ref(t, note_ref, &rs), 5);
	}
	/* Replacing a referenced block keeps its references. */
	CHECK_RC(t2t_append(io, t, ctx, CODEC_RAW, &k3, &k1.key, 50000), 0);
	CHECK_RC(t2_lookup(t, &k3, &info), 0);
	CHECK_EQ(info.refs, 1);
	CHECK_EQ(info.len, 50000);
	CHECK_EQ(t2_children(t, &k1, kids, 8), 1);

	/* Accesses are kept in RAM and persisted in a batch, not one write each. */
	{
		struct t2_stats s0, s1;

		t2_get_stats(t, &s0);
		for (int i = 0; i < 5; i++)
			t2_touch(t, &k4);
		t2_tick(t);
		t2_get_stats(t, &s1);
		CHECK_EQ(s1.commits, s0.commits);
	}
	flush_wait(io, t);
	t2_close(t);

	CHECK_RC(read_row(dir, &k4, &e), 0);
	CHECK_EQ(e.access_count, 5);
	CHECK(e.last_access_ms >= e.created_ms);
	CHECK(e.has_parent && memcmp(e.parent.b, k3.key.b, 16) == 0);
	CHECK_RC(read_row(dir, &k3, &e), 0);
	CHECK_EQ(e.refs, 1);
	CHECK_RC(read_row(dir, &k2, &e), MDB_NOTFOUND);

	/* References and deletes survive a reopen. */
	t = t2t_open(&c, &rep);
	CHECK_EQ(rep.blocks, 3);
	CHECK_RC(t2_lookup(t, &k3, &info), 0);
	CHECK_EQ(info.refs, 1);
	CHECK_RC(t2_lookup(t, &k2, NULL), -ENOENT);
	CHECK_RC(t2t_verify(io, t, ctx, &k3, 50000), 0);
	CHECK_RC(t2_unref(t, &k3), 0);
	CHECK_RC(t2_delete(t, &k3), 0);
	t2_close(t);
	codec_ctx_free(ctx);
	io_close(io);
}
T2T_BOTH(index_ops)

/* ---- format versions ----------------------------------------------------------------- */

/* Change one meta value of a closed store. */
static void set_meta(const char *dir, const char *name, uint64_t v)
{
	char path[512];
	MDB_env *env;
	MDB_txn *txn;
	MDB_dbi dbi;
	uint8_t b[8];
	MDB_val k = { strlen(name), (void *)name }, val = { sizeof(b), b };

	snprintf(path, sizeof(path), "%s/index", dir);
	t2_put64(b, v);
	CHECK_RC(mdb_env_create(&env), 0);
	mdb_env_set_maxdbs(env, 8);
	CHECK_RC(mdb_env_open(env, path, 0, 0600), 0);
	CHECK_RC(mdb_txn_begin(env, NULL, 0, &txn), 0);
	CHECK_RC(mdb_dbi_open(txn, "meta", 0, &dbi), 0);
	CHECK_RC(mdb_put(txn, dbi, &k, &val, 0), 0);
	CHECK_RC(mdb_txn_commit(txn), 0);
	mdb_env_close(env);
}

static void format_versions(const char *dir, enum io_backend b)
{
	struct io_engine *io = t2t_io(b);
	struct t2_config c = t2t_config(dir, io, 2);
	struct t2_open_report rep;
	struct codec_ctx *ctx;
	struct t2 *t = t2t_open(&c, &rep);
	struct t1_key k = t2t_key(9, 9);
	char err[512];

	CHECK_RC(codec_ctx_new(1, &ctx), 0);
	CHECK_RC(t2t_append(io, t, ctx, CODEC_ZSTD, &k, NULL, 200000), 0);
	t2_close(t);

	/* Written by a newer kvtierd: refused, with a message naming the directory
	 * and what to do; nothing rewritten. */
	set_meta(dir, "version", T2_FORMAT_VERSION + 1);
	t = NULL;
	CHECK_RC(t2_open(&c, &t, &rep, err, sizeof(err)), -EPROTO);
	CHECK(t == NULL);
	CHECK_MSG(strstr(err, dir) && strstr(err, "newer") && strstr(err, "move the directory"),
		  "message: %s", err);
	test_log("refusal: %s", err);
	/* Same version, different layout. */
	set_meta(dir, "version", T2_FORMAT_VERSION);
	set_meta(dir, "layout", t2_layout_signature() ^ 1);
	CHECK_RC(t2_open(&c, &t, &rep, err, sizeof(err)), -EPROTO);
	CHECK_MSG(strstr(err, dir) && strstr(err, "layout"), "message: %s", err);
	/* An unknown must-understand feature. */
	set_meta(dir, "layout", t2_layout_signature());
	set_meta(dir, "incompat", 4);
	CHECK_RC(t2_open(&c, &t, &rep, err, sizeof(err)), -EPROTO);
	/* Put right, the store opens with its data. */
	set_meta(dir, "incompat", 0);
	t = t2t_open(&c, &rep);
	CHECK_EQ(rep.blocks, 1);
	CHECK_RC(t2t_verify(io, t, ctx, &k, 200000), 0);
	t2_close(t);

	/* Some other program's LMDB environment is not taken over. */
	{
		char other[512], path[600];
		MDB_env *env;
		MDB_txn *txn;
		MDB_dbi dbi;
		MDB_val kk = { 3, (void *)"foo" }, vv = { 3, (void *)"bar" };

		snprintf(other, sizeof(other), "%s/other", dir);
		snprintf(path, sizeof(path), "%s/index", other);
		CHECK(mkdir(other, 0700) == 0 && mkdir(path, 0700) == 0);
		CHECK_RC(mdb_env_create(&env), 0);
		CHECK_RC(mdb_env_open(env, path, 0, 0600), 0);
		CHECK_RC(mdb_txn_begin(env, NULL, 0, &txn), 0);
		CHECK_RC(mdb_dbi_open(txn, NULL, 0, &dbi), 0);
		CHECK_RC(mdb_put(txn, dbi, &kk, &vv, 0), 0);
		CHECK_RC(mdb_txn_commit(txn), 0);
		mdb_env_close(env);
		c.dir = other;
		CHECK_RC(t2_open(&c, &t, &rep, err, sizeof(err)), -EPROTO);
		CHECK_MSG(strstr(err, "not a kvtier index"), "message: %s", err);
	}
	codec_ctx_free(ctx);
	io_close(io);
}

TEST(format_newer_version_refused)
{
	t2t_run(format_versions, IO_BACKEND_THREADS);
}

TEST(bad_config_refused)
{
	struct io_engine *io = t2t_io(IO_BACKEND_THREADS);
	struct t2_config c = t2t_config("/var/tmp/kvt-t2-never-created", io, 2);
	struct t2 *t = NULL;
	char err[256];

	c.segment_size = MIB;
	CHECK_RC(t2_open(&c, &t, NULL, err, sizeof(err)), -EINVAL);
	c = t2t_config("/var/tmp/kvt-t2-never-created", io, 2);
	c.segment_size += 100;
	CHECK_RC(t2_open(&c, &t, NULL, err, sizeof(err)), -EINVAL);
	c = t2t_config("/var/tmp/kvt-t2-never-created", io, 2);
	c.capacity = SEG64 - 1;
	CHECK_RC(t2_open(&c, &t, NULL, err, sizeof(err)), -EINVAL);
	c = t2t_config("/var/tmp/kvt-t2-never-created", NULL, 2);
	CHECK_RC(t2_open(&c, &t, NULL, err, sizeof(err)), -EINVAL);
	CHECK(t == NULL);
	CHECK(access("/var/tmp/kvt-t2-never-created", F_OK) != 0);
	t2_close(NULL);
	io_close(io);
}

/* ---- the directory ------------------------------------------------------------------- */

static void dir_in_use(const char *dir, enum io_backend b)
{
	struct io_engine *io = t2t_io(b);
	struct t2_config c = t2t_config(dir, io, 2);
	struct t2_open_report rep;
	struct t2 *t = t2t_open(&c, &rep), *t2 = NULL;
	char err[512];
	pid_t pid;
	int st;

	/* A second opener, here or in another process, is refused: it would write
	 * over the first one's records. */
	CHECK_RC(t2_open(&c, &t2, &rep, err, sizeof(err)), -EBUSY);
	CHECK_MSG(strstr(err, dir) && strstr(err, "another process"), "message: %s", err);
	pid = fork();
	CHECK(pid >= 0);
	if (pid == 0) {
		struct io_engine *io2 = t2t_io(IO_BACKEND_THREADS);

		c.io = io2;
		_exit(t2_open(&c, &t2, &rep, err, sizeof(err)) == -EBUSY ? 0 : 1);
	}
	CHECK(waitpid(pid, &st, 0) == pid && WIFEXITED(st) && WEXITSTATUS(st) == 0);
	t2_close(t);
	t = t2t_open(&c, &rep);
	t2_close(t);
	io_close(io);
}

TEST(directory_in_use_refused)
{
	t2t_run(dir_in_use, IO_BACKEND_THREADS);
}

/* Segment files that went missing: their blocks are dropped at open, the rest
 * serves, the store goes on. */
static void missing_segment(const char *dir, enum io_backend b)
{
	struct io_engine *io = t2t_io(b);
	struct t2_config c = t2t_config(dir, io, 8); /* room enough: nothing is cleaned */
	struct t2_open_report rep;
	struct codec_ctx *ctx;
	struct t2 *t = t2t_open(&c, &rep);
	char err[512], path[512];
	const int n = 20;
	int present = 0;

	CHECK_RC(codec_ctx_new(1, &ctx), 0);
	/* 20 x 8 MiB: seven to a segment, so keys 0-6 are in the first. */
	for (int i = 0; i < n; i++) {
		struct t1_key k = t2t_key(17, (uint64_t)i);

		CHECK_RC(t2t_append(io, t, ctx, CODEC_RAW, &k, NULL, 8 * MIB), 0);
	}
	t2_close(t);
	snprintf(path, sizeof(path), "%s/segments/seg-%08u.kvs", dir, 0u);
	CHECK(unlink(path) == 0);
	t = NULL;
	CHECK_RC(t2_open(&c, &t, &rep, err, sizeof(err)), 0);
	CHECK_MSG(strstr(err, "missing") != NULL, "no note about the missing file: '%s'", err);
	CHECK_EQ(rep.blocks, n - 7);
	for (int i = 0; i < n; i++) {
		struct t1_key k = t2t_key(17, (uint64_t)i);
		int rc = t2t_verify(io, t, ctx, &k, 8 * MIB);

		CHECK_MSG(rc == 0 || rc == -ENOENT, "key %d: %d", i, rc);
		CHECK_MSG(i < 7 ? rc == -ENOENT : rc == 0, "key %d: %d", i, rc);
		present += rc == 0;
	}
	for (int i = n; i < n + 10; i++) {
		struct t1_key k = t2t_key(17, (uint64_t)i);

		CHECK_RC(t2t_append(io, t, ctx, CODEC_RAW, &k, NULL, 8 * MIB), 0);
	}
	t2_close(t);
	t = t2t_open(&c, &rep);
	CHECK_EQ(rep.blocks, present + 10);
	t2_close(t);
	codec_ctx_free(ctx);
	io_close(io);
}
T2T_BOTH(missing_segment)

/* ---- LMDB map growth ----------------------------------------------------------------- */

static void map_growth(const char *dir, enum io_backend b)
{
	struct io_engine *io = t2t_io(b);
	struct t2_config c = t2t_config(dir, io, 2);
	struct t2_open_report rep;
	struct codec_ctx *ctx;
	struct t2 *t;
	struct t2_stats st;
	const int n = 3000;
	uint8_t **recs = calloc(n, sizeof(*recs));
	struct t2t_done *dn = calloc(n, sizeof(*dn));
	int ok = 0;

	c.map_size = 64 * 1024; /* a few pages: the index outgrows it at once */
	c.commit_interval_ms = 5;
	t = t2t_open(&c, &rep);
	CHECK_RC(codec_ctx_new(1, &ctx), 0);
	/* Many small blocks in flight at once, so group commits carry many rows. */
	for (int i = 0; i < n; i++) {
		struct t1_key k = t2t_key(6, (uint64_t)i);
		kvt_block_desc d = t2t_desc(1000);
		struct t1_key pk = t2t_key(6, (uint64_t)(i ? i - 1 : 0));
		size_t rl;

		recs[i] = t2t_record(ctx, CODEC_RAW, &k, 1000, &rl);
		t2_append(t, &k, i ? &pk.key : NULL, recs[i], rl, 1000, &d, 0, t2t_done_cb, &dn[i]);
	}
	t2t_drain(io, t);
	for (int i = 0; i < n; i++) {
		CHECK_MSG(dn[i].done && dn[i].status == 0, "append %d: %d", i, dn[i].status);
		ok++;
		free(recs[i]);
	}
	t2_get_stats(t, &st);
	CHECK_MSG(st.map_resizes > 0, "the map never grew");
	CHECK(st.commits < (uint64_t)n); /* grouped */
	test_log("%d appends in %llu commits, %llu map resizes", ok,
		 (unsigned long long)st.commits, (unsigned long long)st.map_resizes);
	t2_close(t);
	t = t2t_open(&c, &rep);
	CHECK_EQ(rep.blocks, n);
	for (int i = 0; i < n; i += 97) {
		struct t1_key k = t2t_key(6, (uint64_t)i);

		CHECK_RC(t2t_verify(io, t, ctx, &k, 1000), 0);
	}
	t2_close(t);
	free(recs);
	free(dn);
	codec_ctx_free(ctx);
	io_close(io);
}
T2T_BOTH(map_growth)

/* ---- file systems -------------------------------------------------------------------- */

static void buffered_fallback(const char *dir, enum io_backend b)
{
	struct io_engine *io = t2t_io(b);
	struct t2_config c = t2t_config(dir, io, 2);
	struct t2_open_report rep;
	struct codec_ctx *ctx;
	struct t2 *t = NULL;
	char err[512];

	setenv(T2_DIRECT_IO_DISABLE_ENV, "1", 1);
	CHECK_RC(t2_open(&c, &t, &rep, err, sizeof(err)), 0);
	CHECK(!rep.direct_io);
	CHECK_MSG(strstr(err, "O_DIRECT") != NULL, "no note about O_DIRECT: '%s'", err);
	CHECK_RC(codec_ctx_new(1, &ctx), 0);
	for (int i = 0; i < 10; i++) {
		struct t1_key k = t2t_key(8, (uint64_t)i);

		CHECK_RC(t2t_append(io, t, ctx, CODEC_BF16, &k, NULL, 700000 + (uint64_t)i), 0);
	}
	t2_close(t);
	t = t2t_open(&c, &rep);
	CHECK(!rep.direct_io);
	CHECK_EQ(rep.blocks, 10);
	for (int i = 0; i < 10; i++) {
		struct t1_key k = t2t_key(8, (uint64_t)i);

		CHECK_RC(t2t_verify(io, t, ctx, &k, 700000 + (uint64_t)i), 0);
	}
	t2_close(t);
	unsetenv(T2_DIRECT_IO_DISABLE_ENV);
	codec_ctx_free(ctx);
	io_close(io);
}
T2T_BOTH(buffered_fallback)

/* A private mount namespace with a small tmpfs at dir/mnt, or skip. */
static void small_fs(const char *dir, char *mnt, size_t cap, const char *size)
{
	snprintf(mnt, cap, "%s/mnt", dir);
	CHECK(mkdir(mnt, 0700) == 0);
	if (unshare(CLONE_NEWNS) != 0)
		test_skip("cannot make a mount namespace (needs CAP_SYS_ADMIN): %s", strerror(errno));
	if (mount(NULL, "/", NULL, MS_REC | MS_PRIVATE, NULL) != 0 ||
	    mount("tmpfs", mnt, "tmpfs", 0, size) != 0)
		test_skip("cannot mount a tmpfs: %s", strerror(errno));
}

static void segment_enospc(const char *dir, enum io_backend b)
{
	struct io_engine *io = t2t_io(b);
	char mnt[512], err[512];
	struct t2_config c;
	struct t2_open_report rep;
	struct codec_ctx *ctx;
	struct t2 *t = NULL;
	struct t2_stats st;
	const int n = 40;

	small_fs(dir, mnt, sizeof(mnt), "size=220m");
	c = t2t_config(mnt, io, 8);
	c.map_size = 1 * MIB;
	t = t2t_open(&c, &rep);
	CHECK_RC(codec_ctx_new(1, &ctx), 0);
	/* 320 MiB into room for three segments: the fourth cannot be made; t2 keeps
	 * going with three, cleaning to make room. */
	for (int i = 0; i < n; i++) {
		struct t1_key k = t2t_key(10, (uint64_t)i);

		CHECK_RC(t2t_append(io, t, ctx, CODEC_RAW, &k, NULL, 8 * MIB), 0);
	}
	t2_get_stats(t, &st);
	test_log("segments %llu, enospc %llu, cleaned %llu", (unsigned long long)st.segments_total,
		 (unsigned long long)st.enospc, (unsigned long long)st.cleaned_segments);
	CHECK(st.enospc >= 1);
	CHECK(st.segments_total >= 2 && st.segments_total <= 3);
	CHECK(st.cleaned_segments >= 1);
	for (int i = n - 4; i < n; i++) {
		struct t1_key k = t2t_key(10, (uint64_t)i);

		CHECK_RC(t2t_verify(io, t, ctx, &k, 8 * MIB), 0);
	}
	for (int i = 0; i < n; i++) {
		struct t1_key k = t2t_key(10, (uint64_t)i);
		int rc = t2t_verify(io, t, ctx, &k, 8 * MIB);

		CHECK(rc == 0 || rc == -ENOENT);
	}
	t2_close(t);

	/* No room for even one segment: refused at open. */
	{
		char mnt2[600];

		snprintf(mnt2, sizeof(mnt2), "%s/mnt2", dir);
		CHECK(mkdir(mnt2, 0700) == 0);
		CHECK(mount("tmpfs", mnt2, "tmpfs", 0, "size=16m") == 0);
		c = t2t_config(mnt2, io, 2);
		c.map_size = 1 * MIB;
		t = NULL;
		CHECK_RC(t2_open(&c, &t, &rep, err, sizeof(err)), -ENOSPC);
		CHECK(t == NULL);
		CHECK_MSG(strstr(err, "no space") != NULL, "message: %s", err);
	}
	codec_ctx_free(ctx);
	io_close(io);
}
T2T_BOTH(segment_enospc)

TEST_MAIN(record_roundtrip_every_codec, record_parallel_frames_match_sequential_encode,
	  record_parse_rejects_damage, record_layout_signature_stable,
	  append_read_uring, append_read_threads, reopen_warm_uring, reopen_warm_threads,
	  index_ops_uring, index_ops_threads, format_newer_version_refused, bad_config_refused,
	  directory_in_use_refused, missing_segment_uring, missing_segment_threads,
	  map_growth_uring, map_growth_threads, buffered_fallback_uring, buffered_fallback_threads,
	  segment_enospc_uring, segment_enospc_threads, raw_pieces_uring, raw_pieces_threads)
