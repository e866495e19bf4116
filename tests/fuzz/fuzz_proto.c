/*
 * fuzz_proto.c - libFuzzer target for the wire codec (common/proto.c), and the
 * oracle that tests/unit/test_proto.c runs over mutated frames under ASan.
 *
 * Every decoder gets the input, both as a whole and, when it starts with a
 * header, as the body of the frame it claims to be (field lists for CTX_* and
 * MEM_*, with their entries followed a few levels down). The oracle asserts more than
 * "no crash": a decoder either fails with one of the codes it may return, or
 * succeeds with a result that encodes back to exactly the input bytes (so the
 * format has one encoding per message, and nothing was read past the end).
 * Build and run: see tests/fuzz/README.md.
 */
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "proto.h"

/* test_proto.c defines FUZZ_CHECK as its CHECK before including this file. */
#ifndef FUZZ_CHECK
#define FUZZ_CHECK(cond)                                                              \
	do {                                                                          \
		if (!(cond)) {                                                        \
			fprintf(stderr, "%s:%d: oracle failed: %s\n", __FILE__, __LINE__, \
				#cond);                                               \
			abort();                                                      \
		}                                                                     \
	} while (0)
#endif

/* Which decoder accepted or refused how often (the unit test checks both happen). */
enum fuzz_dec {
	FZ_HDR,
	FZ_HELLO_REQ,
	FZ_HELLO_REP,
	FZ_REGISTER_REQ,
	FZ_REGISTER_REP,
	FZ_UNREGISTER_REQ,
	FZ_BATCH_PUT,
	FZ_BATCH_GET,
	FZ_BATCH_KEYS,
	FZ_PUT_ITEM,
	FZ_GET_ITEM,
	FZ_STATUS_REP,
	FZ_GET_REP,
	FZ_LOOKUP_REP,
	FZ_STATS_REP,
	FZ_NOTICE,
	FZ_FIELDS,
	FZ_FIELDS_ENTRY,
	FZ_GPU_REGISTER,
	FZ_GPU_XFER,
	FZ_PARAMS_BATCH,
	FZ_COUNT
};
static unsigned long fuzz_ok[FZ_COUNT], fuzz_err[FZ_COUNT];

static void fuzz_count(enum fuzz_dec d, int rc)
{
	if (rc == 0)
		fuzz_ok[d]++;
	else
		fuzz_err[d]++;
}

/* Encode into a heap buffer of exactly len bytes (so ASan sees any overrun) and
 * compare with the input; a buffer one byte short must be refused. */
typedef int (*fuzz_enc_fn)(const void *msg, uint8_t *out, size_t cap);

static void fuzz_reencode(fuzz_enc_fn enc, const void *msg, const uint8_t *in, size_t len)
{
	uint8_t *buf = malloc(len ? len : 1);
	FUZZ_CHECK(buf != NULL);
	int n = enc(msg, buf, len);
	FUZZ_CHECK(n >= 0 && (size_t)n == len);
	FUZZ_CHECK(memcmp(buf, in, len) == 0);
	if (len > 0)
		FUZZ_CHECK(enc(msg, buf, len - 1) == KVT_EMSGSIZE);
	free(buf);
}

static bool fuzz_rc_in(int rc, int a, int b)
{
	return rc == 0 || rc == a || rc == b;
}

/* ---- header -------------------------------------------------------------- */

static void fuzz_hdr(const uint8_t *in, size_t len, uint32_t max_body)
{
	struct kvt_hdr h;
	uint8_t back[KVT_HDR_SIZE];

	if (len < KVT_HDR_SIZE)
		return;
	int rc = kvt_hdr_decode(in, max_body, &h);
	fuzz_count(FZ_HDR, rc);
	/* Every field is filled whatever the verdict, so the header re-encodes. */
	kvt_hdr_encode(&h, back);
	FUZZ_CHECK(memcmp(back, in, KVT_HDR_SIZE) == 0);
	bool magic = h.magic == KVT_MAGIC;
	bool version = h.version >= KVT_PROTO_MIN_VERSION && h.version <= KVT_PROTO_MAX_VERSION;
	int want = !magic			? KVT_EBADMAGIC
		   : !version			? KVT_EVERSION
		   : h.reserved != 0		? KVT_ERESERVED
		   : h.body_len > max_body	? KVT_EMSGSIZE
						: 0;
	FUZZ_CHECK(rc == want);
	for (int reply = 0; reply < 2; reply++) {
		uint32_t must = h.flags & KVT_F_MUST_MASK;
		bool ok = (must & ~KVT_F_KNOWN_MUST) == 0 && ((must & KVT_F_REPLY) != 0) == reply;
		FUZZ_CHECK(kvt_hdr_check_flags(&h, reply) == (ok ? 0 : KVT_EFLAGS));
	}
}

/* ---- HELLO, REGISTER, UNREGISTER, NOTICE ---------------------------------- */

static int fuzz_hello_req_enc(const void *m, uint8_t *out, size_t cap)
{
	return kvt_hello_req_encode(m, out, cap);
}

static int fuzz_hello_rep_enc(const void *m, uint8_t *out, size_t cap)
{
	return kvt_hello_rep_encode(m, out, cap);
}

static int fuzz_register_req_enc(const void *m, uint8_t *out, size_t cap)
{
	return kvt_register_req_encode(m, out, cap);
}

static int fuzz_register_rep_enc(const void *m, uint8_t *out, size_t cap)
{
	return kvt_register_rep_encode(m, out, cap);
}

static int fuzz_unregister_req_enc(const void *m, uint8_t *out, size_t cap)
{
	return kvt_unregister_req_encode(m, out, cap);
}

static int fuzz_notice_enc(const void *m, uint8_t *out, size_t cap)
{
	return kvt_notice_encode(m, out, cap);
}

static void fuzz_hello_req(const uint8_t *in, size_t len)
{
	struct kvt_hello_req m;
	int rc = kvt_hello_req_decode(in, len, &m);
	fuzz_count(FZ_HELLO_REQ, rc);
	FUZZ_CHECK(fuzz_rc_in(rc, KVT_EBADMSG, KVT_ERESERVED));
	if (rc)
		return;
	FUZZ_CHECK(m.name_len <= KVT_NAME_MAX && m.flags == 0);
	FUZZ_CHECK(m.name == (const char *)in + 10 && len == kvt_hello_req_size(m.name_len));
	fuzz_reencode(fuzz_hello_req_enc, &m, in, len);
}

static void fuzz_hello_rep(const uint8_t *in, size_t len)
{
	struct kvt_hello_rep m;
	int rc = kvt_hello_rep_decode(in, len, &m);
	fuzz_count(FZ_HELLO_REP, rc);
	FUZZ_CHECK(fuzz_rc_in(rc, KVT_EBADMSG, KVT_ERESERVED));
	if (rc)
		return;
	FUZZ_CHECK(m.server_len <= KVT_NAME_MAX);
	FUZZ_CHECK(m.server == (const char *)in + 42 && len == kvt_hello_rep_size(m.server_len));
	fuzz_reencode(fuzz_hello_rep_enc, &m, in, len);
}

static void fuzz_register(const uint8_t *in, size_t len)
{
	struct kvt_register_req req;
	struct kvt_register_rep rep;
	struct kvt_unregister_req unreg;

	int rc = kvt_register_req_decode(in, len, &req);
	fuzz_count(FZ_REGISTER_REQ, rc);
	FUZZ_CHECK(fuzz_rc_in(rc, KVT_EBADMSG, KVT_ERESERVED));
	if (rc == 0) {
		FUZZ_CHECK(len == KVT_REGISTER_REQ_SIZE && req.flags == 0);
		fuzz_reencode(fuzz_register_req_enc, &req, in, len);
	}
	rc = kvt_register_rep_decode(in, len, &rep);
	fuzz_count(FZ_REGISTER_REP, rc);
	FUZZ_CHECK(fuzz_rc_in(rc, KVT_EBADMSG, KVT_ERESERVED));
	if (rc == 0) {
		FUZZ_CHECK(len == KVT_REGISTER_REP_SIZE);
		fuzz_reencode(fuzz_register_rep_enc, &rep, in, len);
	}
	rc = kvt_unregister_req_decode(in, len, &unreg);
	fuzz_count(FZ_UNREGISTER_REQ, rc);
	FUZZ_CHECK(fuzz_rc_in(rc, KVT_EBADMSG, KVT_ERESERVED));
	if (rc == 0) {
		FUZZ_CHECK(len == KVT_UNREGISTER_REQ_SIZE);
		fuzz_reencode(fuzz_unregister_req_enc, &unreg, in, len);
	}
}

static void fuzz_notice(const uint8_t *in, size_t len)
{
	const char *msg;
	uint16_t n;
	char copy[KVT_NOTICE_MAX + 1];

	int rc = kvt_notice_decode(in, len, &msg, &n);
	fuzz_count(FZ_NOTICE, rc);
	FUZZ_CHECK(fuzz_rc_in(rc, KVT_EBADMSG, KVT_EBADMSG));
	if (rc)
		return;
	FUZZ_CHECK(n <= KVT_NOTICE_MAX && msg == (const char *)in + 2 && len == 2u + n);
	memcpy(copy, msg, n);
	copy[n] = '\0';
	FUZZ_CHECK(strlen(copy) == n); /* no NUL inside */
	fuzz_reencode(fuzz_notice_enc, copy, in, len);
}

/* ---- batches -------------------------------------------------------------- */

static void fuzz_batch(const uint8_t *in, size_t len, size_t item_size, uint32_t max_batch,
		       enum fuzz_dec which)
{
	struct kvt_batch b;
	uint8_t back[KVT_PUT_ITEM_SIZE];

	int rc = kvt_batch_decode(in, len, item_size, max_batch, &b);
	fuzz_count(which, rc);
	FUZZ_CHECK(rc == 0 || rc == KVT_EBADMSG || rc == KVT_E2BIG || rc == KVT_ERESERVED);
	if (rc)
		return;
	FUZZ_CHECK(b.count <= max_batch && b.flags == 0 && b.item_size == item_size);
	FUZZ_CHECK(b.items == in + 8 && len == kvt_batch_size(b.count, item_size));
	FUZZ_CHECK(kvt_batch_prefix_encode(b.count, back, 8) == 8 && memcmp(back, in, 8) == 0);
	for (uint32_t i = 0; i < b.count; i++) {
		const uint8_t *p = b.items + (size_t)i * item_size;
		if (item_size == KVT_PUT_ITEM_SIZE) {
			struct kvt_put_wire it;
			rc = kvt_put_item_decode(p, &it);
			fuzz_count(FZ_PUT_ITEM, rc);
			FUZZ_CHECK(fuzz_rc_in(rc, KVT_ERESERVED, KVT_ERESERVED));
			if (rc == 0) {
				kvt_put_item_encode(&it, back);
				FUZZ_CHECK(memcmp(back, p, KVT_PUT_ITEM_SIZE) == 0);
			}
		} else if (item_size == KVT_GET_ITEM_SIZE) {
			struct kvt_get_wire it;
			rc = kvt_get_item_decode(p, &it);
			fuzz_count(FZ_GET_ITEM, rc);
			FUZZ_CHECK(fuzz_rc_in(rc, KVT_ERESERVED, KVT_ERESERVED));
			if (rc == 0) {
				kvt_get_item_encode(&it, back);
				FUZZ_CHECK(memcmp(back, p, KVT_GET_ITEM_SIZE) == 0);
			}
		} else if (item_size == KVT_KEY_SIZE) {
			kvt_key k;
			kvt_key_decode(p, &k);
			kvt_key_encode(&k, back);
			FUZZ_CHECK(memcmp(back, p, KVT_KEY_SIZE) == 0);
		}
	}
}

/* ---- batch replies -------------------------------------------------------- */

/* The counts a client could plausibly pass: what the reply says, and its neighbours. */
static void fuzz_counts(const uint8_t *in, size_t len, uint32_t counts[3])
{
	uint32_t c = len >= 4 ? kvt_get32(in) : 0;
	counts[0] = c;
	counts[1] = c - 1;
	counts[2] = c + 1;
}

static void fuzz_status_rep(const uint8_t *in, size_t len)
{
	uint32_t counts[3];
	/* Sized by what the body can hold, not by the claimed count: a decoder that
	 * writes before checking the length overruns it and ASan says so. */
	size_t room = len >= 8 ? (len - 8) / 4 : 0;
	int32_t *st = malloc(room * sizeof(*st) + 1);

	FUZZ_CHECK(st != NULL);
	fuzz_counts(in, len, counts);
	for (int k = 0; k < 3; k++) {
		int rc = kvt_status_rep_decode(in, len, counts[k], st);
		fuzz_count(FZ_STATUS_REP, rc);
		FUZZ_CHECK(fuzz_rc_in(rc, KVT_EBADMSG, KVT_ERESERVED));
		FUZZ_CHECK(kvt_status_rep_decode(in, len, counts[k], NULL) == rc);
		if (rc)
			continue;
		FUZZ_CHECK(counts[k] <= room && len == kvt_status_rep_size(counts[k]));
		uint8_t *buf = malloc(len);
		FUZZ_CHECK(buf != NULL);
		for (uint32_t i = 0; i < counts[k]; i++)
			FUZZ_CHECK(st[i] <= 0);
		FUZZ_CHECK(kvt_status_rep_encode(st, counts[k], buf, len) == (int)len);
		FUZZ_CHECK(memcmp(buf, in, len) == 0);
		FUZZ_CHECK(kvt_status_rep_encode(st, counts[k], buf, len - 1) == KVT_EMSGSIZE);
		free(buf);
	}
	free(st);
}

static void fuzz_get_rep(const uint8_t *in, size_t len)
{
	uint32_t counts[3];
	size_t room = len >= 8 ? (len - 8) / KVT_GET_RESULT_SIZE : 0;
	struct kvt_get_result *r = malloc(room * sizeof(*r) + 1);

	FUZZ_CHECK(r != NULL);
	fuzz_counts(in, len, counts);
	for (int k = 0; k < 3; k++) {
		int rc = kvt_get_rep_decode(in, len, counts[k], r);
		fuzz_count(FZ_GET_REP, rc);
		FUZZ_CHECK(fuzz_rc_in(rc, KVT_EBADMSG, KVT_ERESERVED));
		FUZZ_CHECK(kvt_get_rep_decode(in, len, counts[k], NULL) == rc);
		if (rc)
			continue;
		FUZZ_CHECK(counts[k] <= room && len == kvt_get_rep_size(counts[k]));
		uint8_t *buf = malloc(len);
		FUZZ_CHECK(buf != NULL);
		FUZZ_CHECK(kvt_get_rep_encode(r, counts[k], buf, len) == (int)len);
		FUZZ_CHECK(memcmp(buf, in, len) == 0);
		FUZZ_CHECK(kvt_get_rep_encode(r, counts[k], buf, len - 1) == KVT_EMSGSIZE);
		free(buf);
	}
	free(r);
}

static void fuzz_lookup_rep(const uint8_t *in, size_t len)
{
	uint32_t counts[3];
	size_t room = len >= 8 ? len - 8 : 0;
	uint8_t *tiers = malloc(room + 1);

	FUZZ_CHECK(tiers != NULL);
	fuzz_counts(in, len, counts);
	for (int k = 0; k < 3; k++) {
		uint32_t asked = counts[k], found = UINT32_MAX, found2 = UINT32_MAX;
		int rc = kvt_lookup_rep_decode(in, len, asked, &found, tiers);
		fuzz_count(FZ_LOOKUP_REP, rc);
		FUZZ_CHECK(fuzz_rc_in(rc, KVT_EBADMSG, KVT_ERESERVED));
		FUZZ_CHECK(kvt_lookup_rep_decode(in, len, asked, &found2, NULL) == rc);
		if (rc) {
			FUZZ_CHECK(found == UINT32_MAX); /* untouched on failure */
			continue;
		}
		FUZZ_CHECK(found == found2 && found <= asked && found <= room);
		FUZZ_CHECK(len == kvt_lookup_rep_size(found));
		for (uint32_t i = 0; i < found; i++)
			FUZZ_CHECK(tiers[i] <= KVT_TIER_NVME);
		uint8_t *buf = malloc(len);
		FUZZ_CHECK(buf != NULL);
		FUZZ_CHECK(kvt_lookup_rep_encode(found, tiers, buf, len) == (int)len);
		FUZZ_CHECK(memcmp(buf, in, len) == 0);
		FUZZ_CHECK(kvt_lookup_rep_encode(found, tiers, buf, len - 1) == KVT_EMSGSIZE);
		free(buf);
	}
	free(tiers);
}

/* Walk a STATS reply; if it is accepted, write it again with the writer. */
static void fuzz_stats_rep(const uint8_t *in, size_t len)
{
	uint32_t count = 0;
	int crc = kvt_stats_rep_count(in, len, &count);
	FUZZ_CHECK(fuzz_rc_in(crc, KVT_EBADMSG, KVT_ERESERVED));
	if (crc == 0)
		FUZZ_CHECK(8 + (size_t)count * 9 <= len);

	uint8_t *buf = malloc(len ? len : 1);
	FUZZ_CHECK(buf != NULL);
	struct kvt_stats_writer w;
	kvt_stats_writer_init(&w, buf, len);
	size_t pos = 0, prev = 0;
	uint32_t seen = 0;
	struct kvt_stat_entry e;
	int rc;
	while ((rc = kvt_stats_rep_next(in, len, &pos, &e)) == 1) {
		char name[KVT_STAT_NAME_MAX + 1], text[KVT_STAT_TEXT_MAX + 1];
		FUZZ_CHECK(crc == 0 && pos > prev && pos <= len);
		prev = pos;
		seen++;
		FUZZ_CHECK(seen <= count);
		FUZZ_CHECK(e.name_len >= 1 && e.name_len <= KVT_STAT_NAME_MAX);
		FUZZ_CHECK(e.name >= (const char *)in && e.name + e.name_len <= (const char *)in + len);
		memcpy(name, e.name, e.name_len);
		name[e.name_len] = '\0';
		FUZZ_CHECK(strlen(name) == e.name_len);
		if (e.kind == KVT_STAT_U64) {
			FUZZ_CHECK(e.text == NULL && e.text_len == 0);
			FUZZ_CHECK(kvt_stats_writer_u64(&w, name, e.value) == 0);
		} else {
			FUZZ_CHECK(e.kind == KVT_STAT_TEXT && e.value == 0);
			FUZZ_CHECK(e.text_len <= KVT_STAT_TEXT_MAX);
			FUZZ_CHECK(e.text + e.text_len <= (const char *)in + len);
			memcpy(text, e.text, e.text_len);
			text[e.text_len] = '\0';
			FUZZ_CHECK(strlen(text) == e.text_len);
			FUZZ_CHECK(kvt_stats_writer_text(&w, name, text) == 0);
		}
	}
	fuzz_count(FZ_STATS_REP, rc);
	FUZZ_CHECK(fuzz_rc_in(rc, KVT_EBADMSG, KVT_ERESERVED));
	/* The whole reply is checked before the first entry comes out: either
	 * nothing is handed out, or everything is and the walk ends cleanly. */
	FUZZ_CHECK(crc ? rc == crc && seen == 0 : rc == 0);
	if (rc == 0) {
		FUZZ_CHECK(crc == 0 && seen == count && pos == len);
		FUZZ_CHECK(kvt_stats_writer_finish(&w) == len);
		FUZZ_CHECK(memcmp(buf, in, len) == 0);
	}
	free(buf);
}

/* ---- field lists (CTX_*, MEM_*) ------------------------------------------- */

/* How deep the oracle follows entries inside entries (the protocol uses one level). */
#define FUZZ_FIELDS_DEPTH 3

/* The verdict kvt_fields_decode must reach, from an independent walk that follows
 * docs/PROTOCOL.md: field by field, header present, reserved 0, value inside the
 * body, then the tag (ignorable, known, not repeated unless ENTRY). */
static int fuzz_fields_verdict(const uint8_t *in, size_t len)
{
	bool seen[KVT_TAG_MAX + 1] = { false };
	size_t p = 0;

	while (p < len) {
		if (len - p < 8)
			return KVT_EBADMSG;
		if (in[p + 2] || in[p + 3])
			return KVT_ERESERVED;
		uint64_t flen = kvt_get32(in + p + 4);
		unsigned tag = kvt_get16(in + p);
		if (flen > len - p - 8)
			return KVT_EBADMSG;
		p += 8 + (size_t)flen;
		if (tag & KVT_TAG_IGNORABLE)
			continue;
		if (tag == 0 || tag > KVT_TAG_MAX || (tag != KVT_TAG_ENTRY && seen[tag]))
			return KVT_EBADMSG;
		seen[tag] = true;
	}
	return 0;
}

/* Write the (valid) list in[0, len) again, field by field, with the writer: entries
 * whose value is itself a valid list go through kvt_fw_begin/kvt_fw_end. */
static void fuzz_fields_write(struct kvt_fields_writer *w, const uint8_t *in, size_t len,
			      int depth)
{
	for (size_t p = 0; p < len;) {
		unsigned tag = kvt_get16(in + p);
		uint32_t flen = kvt_get32(in + p + 4);
		const uint8_t *val = in + p + 8;
		if (tag == KVT_TAG_ENTRY && depth < FUZZ_FIELDS_DEPTH &&
		    fuzz_fields_verdict(val, flen) == 0) {
			size_t mark = kvt_fw_begin(w, tag);
			fuzz_fields_write(w, val, flen, depth + 1);
			kvt_fw_end(w, mark);
		} else {
			kvt_fw_bytes(w, tag, val, flen);
		}
		p += 8 + (size_t)flen;
	}
}

/* The typed getters agree with the value's length. */
static void fuzz_fields_getters(const struct kvt_fields *f, unsigned tag, const uint8_t *val,
				uint32_t flen)
{
	uint8_t v8 = 0x5a;
	uint32_t v32 = 0x5a5a5a5a;
	uint64_t v64 = 0x5a5a5a5a5a5a5a5aull;
	const uint8_t *p = NULL;
	uint32_t n = 0;

	int rc = kvt_fields_u8(f, tag, &v8);
	FUZZ_CHECK(rc == (flen == 1 ? 0 : KVT_EBADMSG));
	FUZZ_CHECK(rc ? v8 == 0x5a : v8 == val[0]);
	rc = kvt_fields_u32(f, tag, &v32);
	FUZZ_CHECK(rc == (flen == 4 ? 0 : KVT_EBADMSG));
	FUZZ_CHECK(rc ? v32 == 0x5a5a5a5a : v32 == kvt_get32(val));
	rc = kvt_fields_u64(f, tag, &v64);
	FUZZ_CHECK(rc == (flen == 8 ? 0 : KVT_EBADMSG));
	FUZZ_CHECK(rc ? v64 == 0x5a5a5a5a5a5a5a5aull : v64 == kvt_get64(val));
	FUZZ_CHECK(kvt_fields_bytes(f, tag, flen, flen, &p, &n) == 0 && p == val && n == flen);
	FUZZ_CHECK(kvt_fields_bytes(f, tag, (size_t)flen + 1, SIZE_MAX, &p, &n) == KVT_EBADMSG);
	if (flen)
		FUZZ_CHECK(kvt_fields_bytes(f, tag, 0, flen - 1, &p, &n) == KVT_EBADMSG);
}

static void fuzz_fields_at(const uint8_t *in, size_t len, int depth, enum fuzz_dec which)
{
	struct kvt_fields f;
	bool present[KVT_TAG_MAX + 1] = { false };
	uint32_t entries = 0;

	int rc = kvt_fields_decode(in, len, &f);
	fuzz_count(which, rc);
	FUZZ_CHECK(rc == fuzz_fields_verdict(in, len));
	if (rc)
		return;
	FUZZ_CHECK(f.body == in && f.body_len == len);

	/* Every field is indexed where it is (the first ENTRY for ENTRY). */
	for (size_t p = 0; p < len;) {
		unsigned tag = kvt_get16(in + p);
		uint32_t flen = kvt_get32(in + p + 4);
		const uint8_t *val = in + p + 8;
		p += 8 + (size_t)flen;
		if (tag & KVT_TAG_IGNORABLE)
			continue;
		if (tag == KVT_TAG_ENTRY && entries++)
			continue;
		present[tag] = true;
		FUZZ_CHECK(f.val[tag] == val && f.len[tag] == flen);
		fuzz_fields_getters(&f, tag, val, flen);
	}
	FUZZ_CHECK(entries == f.nentries);
	for (unsigned tag = 0; tag <= KVT_TAG_MAX + 1; tag++) {
		uint64_t v;
		if (tag <= KVT_TAG_MAX && present[tag])
			continue;
		FUZZ_CHECK(tag > KVT_TAG_MAX || f.val[tag] == NULL);
		FUZZ_CHECK(kvt_fields_u64(&f, tag, &v) == KVT_ENOENT);
	}

	/* The entries come out in order, and each is a list of its own. */
	size_t pos = 0;
	const uint8_t *ev;
	uint32_t elen, k = 0;
	while ((rc = kvt_fields_next_entry(&f, &pos, &ev, &elen)) == 1) {
		FUZZ_CHECK(ev >= in + 8 && elen <= len && ev + elen <= in + len && pos <= len);
		k++;
		if (depth < FUZZ_FIELDS_DEPTH)
			fuzz_fields_at(ev, elen, depth + 1, FZ_FIELDS_ENTRY);
	}
	FUZZ_CHECK(rc == 0 && k == f.nentries && pos == len);

	/* Written again, field by field (entries through begin/end), it is the same
	 * bytes; into one byte less, the writer fails and what it kept is a
	 * well-formed prefix of the input. */
	if (depth > 0)
		return;
	uint8_t *buf = malloc(len ? len : 1);
	FUZZ_CHECK(buf != NULL);
	struct kvt_fields_writer w;
	kvt_fw_init(&w, NULL, SIZE_MAX);
	fuzz_fields_write(&w, in, len, 0);
	FUZZ_CHECK(w.err == 0 && w.len == len);
	kvt_fw_init(&w, buf, len);
	fuzz_fields_write(&w, in, len, 0);
	FUZZ_CHECK(w.err == 0 && w.len == len && memcmp(buf, in, len) == 0);
	if (len > 0) {
		kvt_fw_init(&w, buf, len - 1);
		fuzz_fields_write(&w, in, len, 0);
		FUZZ_CHECK(w.err == KVT_EMSGSIZE && w.len < len);
		FUZZ_CHECK(memcmp(buf, in, w.len) == 0);
		FUZZ_CHECK(fuzz_fields_verdict(buf, w.len) == 0);
	}
	free(buf);
}

static void fuzz_fields(const uint8_t *in, size_t len)
{
	fuzz_fields_at(in, len, 0, FZ_FIELDS);
}

/* ---- GPU regions (GPU_REGION_REGISTER, GPU_PUT, GPU_GET) ------------------- */

struct fuzz_gpu_reg {
	const struct kvt_gpu_register_req *m;
	const struct kvt_gpu_buf_wire *bufs;
	const struct kvt_gpu_layer_wire *layers;
};

static int fuzz_gpu_register_enc(const void *msg, uint8_t *out, size_t cap)
{
	const struct fuzz_gpu_reg *r = msg;
	return kvt_gpu_register_req_encode(r->m, r->bufs, r->layers, out, cap);
}

static void fuzz_gpu_register(const uint8_t *in, size_t len)
{
	struct kvt_gpu_register_req m;
	int rc = kvt_gpu_register_req_decode(in, len, &m);
	fuzz_count(FZ_GPU_REGISTER, rc);
	FUZZ_CHECK(rc == 0 || rc == KVT_EBADMSG || rc == KVT_ERESERVED || rc == KVT_E2BIG);
	if (rc)
		return;
	FUZZ_CHECK(m.nbuffers >= 1 && m.nbuffers <= KVT_GPU_MAX_BUFFERS);
	FUZZ_CHECK(m.layout.layers >= 1 && m.layout.layers <= KVT_GPU_MAX_LAYERS);
	FUZZ_CHECK(len == kvt_gpu_register_req_size(m.nbuffers, m.layout.layers));
	struct kvt_gpu_buf_wire *bufs = malloc(m.nbuffers * sizeof(*bufs));
	struct kvt_gpu_layer_wire *layers = malloc(m.layout.layers * sizeof(*layers));
	FUZZ_CHECK(bufs != NULL && layers != NULL);
	for (uint32_t i = 0; i < m.nbuffers; i++)
		kvt_gpu_buf_get(&m, i, &bufs[i]);
	for (uint32_t i = 0; i < m.layout.layers; i++) {
		kvt_gpu_layer_get(&m, i, &layers[i]);
		FUZZ_CHECK(layers[i].buffer < m.nbuffers);
	}
	struct fuzz_gpu_reg r = { &m, bufs, layers };
	fuzz_reencode(fuzz_gpu_register_enc, &r, in, len);
	free(bufs);
	free(layers);
}

static void fuzz_gpu_xfer(const uint8_t *in, size_t len, bool is_put, uint32_t max_batch,
			  uint32_t max_pages)
{
	struct kvt_gpu_xfer x;
	int rc = kvt_gpu_xfer_decode(in, len, is_put, max_batch, max_pages, &x);
	fuzz_count(FZ_GPU_XFER, rc);
	FUZZ_CHECK(rc == 0 || rc == KVT_EBADMSG || rc == KVT_ERESERVED || rc == KVT_E2BIG);
	if (rc)
		return;
	FUZZ_CHECK(x.count <= max_batch && x.npage_ids <= max_pages);
	FUZZ_CHECK(len == kvt_gpu_xfer_size(x.count, x.npage_ids));
	FUZZ_CHECK(x.items == in + KVT_GPU_XFER_PREFIX);
	uint8_t *buf = malloc(len);
	FUZZ_CHECK(buf != NULL);
	FUZZ_CHECK(kvt_gpu_xfer_prefix_encode(x.count, x.npage_ids, buf, len) ==
		   KVT_GPU_XFER_PREFIX);
	for (uint32_t i = 0; i < x.count; i++) {
		struct kvt_gpu_item_wire it;
		const uint8_t *p = x.items + (size_t)i * KVT_GPU_ITEM_SIZE;
		FUZZ_CHECK(kvt_gpu_item_decode(p, is_put, x.npage_ids, &it) == 0);
		FUZZ_CHECK(it.pages_offset <= x.npage_ids &&
			   it.npages <= x.npage_ids - it.pages_offset);
		FUZZ_CHECK(is_put || kvt_key_is_zero(&it.parent));
		kvt_gpu_item_encode(&it, buf + (p - in));
	}
	for (uint32_t j = 0; j < x.npage_ids; j++)
		kvt_put32(buf + (x.pages - in) + (size_t)j * 4, kvt_gpu_xfer_page(&x, j));
	FUZZ_CHECK(memcmp(buf, in, len) == 0);
	free(buf);
}

/* ---- entry points --------------------------------------------------------- */

/* Every body decoder on one buffer. */
static void fuzz_bodies(const uint8_t *in, size_t len)
{
	fuzz_hello_req(in, len);
	fuzz_hello_rep(in, len);
	fuzz_register(in, len);
	fuzz_batch(in, len, KVT_PUT_ITEM_SIZE, 4096, FZ_BATCH_PUT);
	fuzz_batch(in, len, KVT_GET_ITEM_SIZE, 4096, FZ_BATCH_GET);
	fuzz_batch(in, len, KVT_KEY_SIZE, 4096, FZ_BATCH_KEYS);
	fuzz_batch(in, len, KVT_KEY_SIZE, 2, FZ_BATCH_KEYS);
	fuzz_status_rep(in, len);
	fuzz_get_rep(in, len);
	fuzz_lookup_rep(in, len);
	fuzz_stats_rep(in, len);
	fuzz_notice(in, len);
	fuzz_fields(in, len);
	fuzz_gpu_register(in, len);
	fuzz_gpu_xfer(in, len, true, 4096, 1 << 20);
	fuzz_gpu_xfer(in, len, false, 2, 4);
}

/* PREFETCH and HINT requests: 8 bytes of parameters ahead of a key batch. On
 * success the parameters are in range and re-encode to the input's first 8 bytes,
 * and the batch lies inside the body. */
static void fuzz_params_batch(const uint8_t *in, size_t len)
{
	struct kvt_prefetch_params pp;
	struct kvt_hint_params hp;
	struct kvt_batch b;
	uint8_t enc[8];
	int rc = kvt_prefetch_req_decode(in, len, 4096, &pp, &b);
	fuzz_count(FZ_PARAMS_BATCH, rc);
	FUZZ_CHECK(fuzz_rc_in(rc, KVT_EBADMSG, KVT_ERESERVED) || rc == KVT_E2BIG);
	if (rc == 0) {
		FUZZ_CHECK(pp.tier <= KVT_TIER_NVME);
		FUZZ_CHECK(kvt_prefetch_params_encode(&pp, enc, sizeof(enc)) == 8);
		FUZZ_CHECK(memcmp(enc, in, 8) == 0);
		FUZZ_CHECK(b.items == in + 16 && 16 + (size_t)b.count * KVT_KEY_SIZE == len);
	}
	rc = kvt_hint_req_decode(in, len, 4096, &hp, &b);
	fuzz_count(FZ_PARAMS_BATCH, rc);
	FUZZ_CHECK(fuzz_rc_in(rc, KVT_EBADMSG, KVT_ERESERVED) || rc == KVT_E2BIG);
	if (rc == 0) {
		FUZZ_CHECK(hp.hint <= KVT_HINT_RELEASE);
		FUZZ_CHECK(kvt_hint_params_encode(&hp, enc, sizeof(enc)) == 8);
		FUZZ_CHECK(memcmp(enc, in, 8) == 0);
		FUZZ_CHECK(b.items == in + 16 && 16 + (size_t)b.count * KVT_KEY_SIZE == len);
	}
}

/* A frame as a daemon or client would see it: the header, then the body handed
 * to the decoders its opcode selects (request and reply both). */
static void fuzz_frame(const uint8_t *in, size_t len)
{
	if (len < KVT_HDR_SIZE) {
		fuzz_bodies(in, len);
		return;
	}
	fuzz_hdr(in, len, UINT32_MAX);
	fuzz_hdr(in, len, 1024 * 1024 - KVT_HDR_SIZE);
	const uint8_t *body = in + KVT_HDR_SIZE;
	size_t blen = len - KVT_HDR_SIZE;
	switch (kvt_get16(in + 6)) {
	case KVT_OP_HELLO:
		fuzz_hello_req(body, blen);
		fuzz_hello_rep(body, blen);
		break;
	case KVT_OP_REGISTER:
	case KVT_OP_UNREGISTER:
		fuzz_register(body, blen);
		break;
	case KVT_OP_PUT:
		fuzz_batch(body, blen, KVT_PUT_ITEM_SIZE, 4096, FZ_BATCH_PUT);
		fuzz_status_rep(body, blen);
		break;
	case KVT_OP_GET:
		fuzz_batch(body, blen, KVT_GET_ITEM_SIZE, 4096, FZ_BATCH_GET);
		fuzz_get_rep(body, blen);
		break;
	case KVT_OP_LOOKUP:
		fuzz_batch(body, blen, KVT_KEY_SIZE, 4096, FZ_BATCH_KEYS);
		fuzz_lookup_rep(body, blen);
		break;
	case KVT_OP_DELETE:
	case KVT_OP_PIN:
	case KVT_OP_UNPIN:
		fuzz_batch(body, blen, KVT_KEY_SIZE, 4096, FZ_BATCH_KEYS);
		fuzz_status_rep(body, blen);
		break;
	case KVT_OP_STATS:
		fuzz_stats_rep(body, blen);
		break;
	case KVT_OP_PREFETCH:
	case KVT_OP_HINT:
		fuzz_params_batch(body, blen);
		fuzz_lookup_rep(body, blen);
		fuzz_status_rep(body, blen);
		break;
	case KVT_OP_NOTICE:
		fuzz_notice(body, blen);
		break;
	case KVT_OP_GPU_REGION_REGISTER:
		fuzz_gpu_register(body, blen);
		fuzz_register(body, blen);
		break;
	case KVT_OP_GPU_REGION_DESTROY:
		fuzz_register(body, blen);
		break;
	case KVT_OP_GPU_PUT:
		fuzz_gpu_xfer(body, blen, true, 4096, 1 << 20);
		fuzz_status_rep(body, blen);
		break;
	case KVT_OP_GPU_GET:
		fuzz_gpu_xfer(body, blen, false, 4096, 1 << 20);
		fuzz_get_rep(body, blen);
		break;
	case KVT_OP_CTX_SAVE:
	case KVT_OP_CTX_LOAD:
	case KVT_OP_CTX_LIST:
	case KVT_OP_CTX_DELETE:
	case KVT_OP_MEM_PUT:
	case KVT_OP_MEM_GET:
	case KVT_OP_MEM_DELETE:
	case KVT_OP_MEM_LIST:
	case KVT_OP_MEM_SEARCH:
		fuzz_fields(body, blen);
		break;
	default:
		fuzz_bodies(body, blen);
		break;
	}
}

#ifndef FUZZ_ORACLE_ONLY
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	fuzz_frame(data, size);
	fuzz_bodies(data, size);
	return 0;
}
#endif
