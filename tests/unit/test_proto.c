/*
 * test_proto.c - unit tests for the wire codec (common/proto.c): every message
 * round-trips, the header is little-endian byte for byte, every malformed shape
 * is refused with the right code, and 200k mutated frames go through every
 * decoder with the fuzz oracle checking each verdict (under ASan in `make test`).
 */
#include "test.h"

#include "proto.h"

/* The same oracle the libFuzzer target uses, failing through CHECK and naming
 * the mutation iteration (-1: outside the loop) so a failure can be replayed. */
static long g_iter = -1;
#define FUZZ_ORACLE_ONLY
#define FUZZ_CHECK(cond) CHECK_MSG(cond, "oracle: %s (mutation iteration %ld)", #cond, g_iter)
#include "../fuzz/fuzz_proto.c"

/* ---- helpers ------------------------------------------------------------- */

/* A decoder reduced to (bytes, length) -> verdict, for the truncation loops. */
typedef int (*dec_fn)(const uint8_t *in, size_t len);

/* Run dec on an exact-size heap copy, so ASan catches a read past the end. */
static int dec_exact(dec_fn dec, const uint8_t *in, size_t len)
{
	uint8_t *copy = malloc(len ? len : 1);
	CHECK(copy != NULL);
	if (len)
		memcpy(copy, in, len);
	int rc = dec(copy, len);
	free(copy);
	return rc;
}

/* Every strict prefix of a valid body is refused with want, and so is the body
 * with one extra byte. */
static void check_truncations(dec_fn dec, const uint8_t *valid, size_t len, int want)
{
	uint8_t *longer = malloc(len + 1);
	CHECK(longer != NULL);
	CHECK_RC(dec_exact(dec, valid, len), 0);
	for (size_t l = 0; l < len; l++) {
		int rc = dec_exact(dec, valid, l);
		CHECK_MSG(rc == want, "prefix of %zu/%zu bytes: %d (%s), want %s", l, len, rc,
			  kvt_errname(rc), kvt_errname(want));
	}
	memcpy(longer, valid, len);
	longer[len] = 0;
	CHECK_RC(dec_exact(dec, longer, len + 1), want);
	free(longer);
}

/* Set each byte of the field [off, off+n) non-zero in turn: want every time. */
static void check_reserved(dec_fn dec, const uint8_t *valid, size_t len, size_t off, size_t n,
			   int want)
{
	uint8_t *copy = malloc(len);
	CHECK(copy != NULL);
	for (size_t i = off; i < off + n; i++) {
		memcpy(copy, valid, len);
		copy[i] = 0x01;
		CHECK_RC(dec_exact(dec, copy, len), want);
		copy[i] = 0x80;
		CHECK_RC(dec_exact(dec, copy, len), want);
	}
	free(copy);
}

static kvt_key key_n(uint8_t n)
{
	kvt_key k;
	for (int i = 0; i < 16; i++)
		k.b[i] = (uint8_t)(n * 16 + i + 1);
	return k;
}

static kvt_block_desc desc_n(uint16_t n)
{
	kvt_block_desc d = { .dtype = KVT_DTYPE_BF16, .layout = (uint16_t)(7 + n),
			     .layers = (uint16_t)(32 + n), .tokens = 16u + n };
	return d;
}

static bool desc_eq(const kvt_block_desc *a, const kvt_block_desc *b)
{
	return a->dtype == b->dtype && a->layout == b->layout && a->layers == b->layers &&
	       a->reserved0 == b->reserved0 && a->tokens == b->tokens &&
	       a->reserved1 == b->reserved1;
}

/* Decoder wrappers (for dec_fn). */
static uint32_t g_count;     /* count/asked passed to reply decoders */
static uint32_t g_max_batch; /* max_batch passed to kvt_batch_decode */
static size_t g_item_size;

static int dec_hello_req(const uint8_t *in, size_t len)
{
	struct kvt_hello_req m;
	return kvt_hello_req_decode(in, len, &m);
}

static int dec_hello_rep(const uint8_t *in, size_t len)
{
	struct kvt_hello_rep m;
	return kvt_hello_rep_decode(in, len, &m);
}

static int dec_register_req(const uint8_t *in, size_t len)
{
	struct kvt_register_req m;
	return kvt_register_req_decode(in, len, &m);
}

static int dec_register_rep(const uint8_t *in, size_t len)
{
	struct kvt_register_rep m;
	return kvt_register_rep_decode(in, len, &m);
}

static int dec_unregister_req(const uint8_t *in, size_t len)
{
	struct kvt_unregister_req m;
	return kvt_unregister_req_decode(in, len, &m);
}

static int dec_batch(const uint8_t *in, size_t len)
{
	struct kvt_batch b;
	return kvt_batch_decode(in, len, g_item_size, g_max_batch, &b);
}

static int dec_status_rep(const uint8_t *in, size_t len)
{
	return kvt_status_rep_decode(in, len, g_count, NULL);
}

static int dec_get_rep(const uint8_t *in, size_t len)
{
	return kvt_get_rep_decode(in, len, g_count, NULL);
}

static int dec_lookup_rep(const uint8_t *in, size_t len)
{
	uint32_t found;
	return kvt_lookup_rep_decode(in, len, g_count, &found, NULL);
}

/* Walk a whole STATS reply: the count of entries, or the first error. */
static int dec_stats(const uint8_t *in, size_t len)
{
	uint32_t count;
	struct kvt_stat_entry e;
	size_t pos = 0;
	int rc;

	rc = kvt_stats_rep_count(in, len, &count);
	if (rc)
		return rc;
	while ((rc = kvt_stats_rep_next(in, len, &pos, &e)) == 1)
		;
	return rc;
}

static int dec_notice(const uint8_t *in, size_t len)
{
	const char *msg;
	uint16_t n;
	return kvt_notice_decode(in, len, &msg, &n);
}

/* ---- header -------------------------------------------------------------- */

static const struct kvt_hdr sample_hdr = {
	.magic = KVT_MAGIC,
	.version = 1,
	.opcode = KVT_OP_LOOKUP,
	.flags = KVT_F_REPLY | (1u << 16),
	.body_len = 0x24,
	.request_id = 0x0102030405060708ull,
	.status = KVT_ENOENT,
	.reserved = 0,
};

/* The same header written out by hand, byte by byte. */
static const uint8_t sample_hdr_bytes[KVT_HDR_SIZE] = {
	'K',  'V',  'T',  'P',			/* magic 0x5054564b */
	0x01, 0x00,				/* version 1 */
	0x07, 0x00,				/* opcode LOOKUP */
	0x01, 0x00, 0x01, 0x00,			/* flags REPLY | bit 16 */
	0x24, 0x00, 0x00, 0x00,			/* body_len 36 */
	0x08, 0x07, 0x06, 0x05, 0x04, 0x03, 0x02, 0x01, /* request_id */
	0xfe, 0xff, 0xff, 0xff,			/* status -2 */
	0x00, 0x00, 0x00, 0x00,			/* reserved */
};

TEST(hdr_roundtrip)
{
	struct kvt_hdr h = sample_hdr, back;
	uint8_t buf[KVT_HDR_SIZE];

	h.status = INT32_MIN;
	h.request_id = UINT64_MAX;
	h.body_len = 1234;
	kvt_hdr_encode(&h, buf);
	CHECK_RC(kvt_hdr_decode(buf, 1u << 20, &back), 0);
	CHECK_EQ(back.magic, KVT_MAGIC);
	CHECK_EQ(back.version, 1);
	CHECK_EQ(back.opcode, KVT_OP_LOOKUP);
	CHECK_EQ(back.flags, h.flags);
	CHECK_EQ(back.body_len, 1234);
	CHECK(back.request_id == UINT64_MAX);
	CHECK_EQ(back.status, INT32_MIN);
	CHECK_EQ(back.reserved, 0);
}

TEST(hdr_bytes_are_little_endian)
{
	uint8_t buf[KVT_HDR_SIZE];
	struct kvt_hdr h;

	memset(buf, 0xaa, sizeof(buf));
	kvt_hdr_encode(&sample_hdr, buf);
	for (int i = 0; i < KVT_HDR_SIZE; i++)
		CHECK_MSG(buf[i] == sample_hdr_bytes[i], "byte %d is %#x, want %#x", i, buf[i],
			  sample_hdr_bytes[i]);
	CHECK_RC(kvt_hdr_decode(sample_hdr_bytes, 0x24, &h), 0);
	CHECK_EQ(h.magic, KVT_MAGIC);
	CHECK_EQ(h.version, 1);
	CHECK_EQ(h.opcode, KVT_OP_LOOKUP);
	CHECK_EQ(h.flags, 0x00010001);
	CHECK_EQ(h.body_len, 0x24);
	CHECK(h.request_id == 0x0102030405060708ull);
	CHECK_EQ(h.status, KVT_ENOENT);
	CHECK_EQ(h.reserved, 0);
}

TEST(hdr_bad_magic_still_fills_header)
{
	uint8_t buf[KVT_HDR_SIZE];
	struct kvt_hdr h;
	static const uint8_t big_endian_magic[4] = { 'P', 'T', 'V', 'K' };

	memcpy(buf, sample_hdr_bytes, sizeof(buf));
	memcpy(buf, big_endian_magic, 4);
	CHECK_RC(kvt_hdr_decode(buf, UINT32_MAX, &h), KVT_EBADMAGIC);
	for (int i = 0; i < 4; i++) {
		memcpy(buf, sample_hdr_bytes, sizeof(buf));
		buf[i] ^= 0x20;
		CHECK_RC(kvt_hdr_decode(buf, UINT32_MAX, &h), KVT_EBADMAGIC);
	}
	/* Bad magic wins over every other fault. */
	memset(buf, 0xff, sizeof(buf));
	CHECK_RC(kvt_hdr_decode(buf, 0, &h), KVT_EBADMAGIC);
}

TEST(hdr_bad_version)
{
	static const uint16_t bad[] = { 0, 2, 0x100, 0xffff };
	uint8_t buf[KVT_HDR_SIZE];
	struct kvt_hdr h;

	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		memcpy(buf, sample_hdr_bytes, sizeof(buf));
		kvt_put16(buf + 4, bad[i]);
		memset(&h, 0, sizeof(h));
		CHECK_RC(kvt_hdr_decode(buf, UINT32_MAX, &h), KVT_EVERSION);
		/* The caller can still answer this request id. */
		CHECK(h.request_id == sample_hdr.request_id);
		CHECK_EQ(h.version, bad[i]);
	}
}

TEST(hdr_reserved_nonzero)
{
	uint8_t buf[KVT_HDR_SIZE];
	struct kvt_hdr h;

	for (int i = 28; i < 32; i++) {
		memcpy(buf, sample_hdr_bytes, sizeof(buf));
		buf[i] = 1;
		CHECK_RC(kvt_hdr_decode(buf, UINT32_MAX, &h), KVT_ERESERVED);
		CHECK(h.request_id == sample_hdr.request_id);
	}
}

TEST(hdr_body_len_over_max)
{
	uint8_t buf[KVT_HDR_SIZE];
	struct kvt_hdr h = sample_hdr;
	const uint32_t max = 1024 * 1024 - KVT_HDR_SIZE;

	h.body_len = max;
	kvt_hdr_encode(&h, buf);
	CHECK_RC(kvt_hdr_decode(buf, max, &h), 0);
	h.body_len = max + 1;
	kvt_hdr_encode(&h, buf);
	CHECK_RC(kvt_hdr_decode(buf, max, &h), KVT_EMSGSIZE);
	CHECK(h.request_id == sample_hdr.request_id);
	h.body_len = UINT32_MAX;
	kvt_hdr_encode(&h, buf);
	CHECK_RC(kvt_hdr_decode(buf, max, &h), KVT_EMSGSIZE);
	CHECK_RC(kvt_hdr_decode(buf, UINT32_MAX, &h), 0);
	h.body_len = 1;
	kvt_hdr_encode(&h, buf);
	CHECK_RC(kvt_hdr_decode(buf, 0, &h), KVT_EMSGSIZE);
}

TEST(hdr_flags_must_understand)
{
	struct kvt_hdr h = sample_hdr;

	h.flags = KVT_F_REPLY;
	CHECK_RC(kvt_hdr_check_flags(&h, true), 0);
	CHECK_RC(kvt_hdr_check_flags(&h, false), KVT_EFLAGS);
	h.flags = 0;
	CHECK_RC(kvt_hdr_check_flags(&h, false), 0);
	CHECK_RC(kvt_hdr_check_flags(&h, true), KVT_EFLAGS);
	for (int bit = 1; bit < 16; bit++) {
		h.flags = 1u << bit;
		CHECK_RC(kvt_hdr_check_flags(&h, false), KVT_EFLAGS);
		h.flags |= KVT_F_REPLY;
		CHECK_RC(kvt_hdr_check_flags(&h, true), KVT_EFLAGS);
	}
	for (int bit = 16; bit < 32; bit++) {
		h.flags = 1u << bit;
		CHECK_RC(kvt_hdr_check_flags(&h, false), 0);
		h.flags |= KVT_F_REPLY;
		CHECK_RC(kvt_hdr_check_flags(&h, true), 0);
	}
	h.flags = 0xffff0000u;
	CHECK_RC(kvt_hdr_check_flags(&h, false), 0);
}

TEST(op_names)
{
	static const struct {
		uint16_t op;
		const char *name;
	} ops[] = {
		{ KVT_OP_HELLO, "HELLO" },   { KVT_OP_PING, "PING" },
		{ KVT_OP_REGISTER, "REGISTER" }, { KVT_OP_UNREGISTER, "UNREGISTER" },
		{ KVT_OP_PUT, "PUT" },	     { KVT_OP_GET, "GET" },
		{ KVT_OP_LOOKUP, "LOOKUP" }, { KVT_OP_DELETE, "DELETE" },
		{ KVT_OP_PIN, "PIN" },	     { KVT_OP_UNPIN, "UNPIN" },
		{ KVT_OP_STATS, "STATS" },   { KVT_OP_NOTICE, "NOTICE" },
		{ KVT_OP_PREFETCH, "PREFETCH" }, { KVT_OP_CTX_SAVE, "CTX_SAVE" },
		{ KVT_OP_CTX_LOAD, "CTX_LOAD" }, { KVT_OP_CTX_LIST, "CTX_LIST" },
		{ KVT_OP_CTX_DELETE, "CTX_DELETE" }, { KVT_OP_MEM_PUT, "MEM_PUT" },
		{ KVT_OP_MEM_GET, "MEM_GET" }, { KVT_OP_MEM_DELETE, "MEM_DELETE" },
		{ KVT_OP_MEM_LIST, "MEM_LIST" }, { KVT_OP_MEM_SEARCH, "MEM_SEARCH" },
		{ 24, "UNKNOWN" }, { 35, "UNKNOWN" },
		{ KVT_OP_GPU_REGION_REGISTER, "GPU_REGION_REGISTER" },
		{ KVT_OP_GPU_REGION_DESTROY, "GPU_REGION_DESTROY" },
		{ KVT_OP_GPU_PUT, "GPU_PUT" }, { KVT_OP_GPU_GET, "GPU_GET" },
		{ KVT_OP_HINT, "HINT" }, { 0, "UNKNOWN" }, { 18, "UNKNOWN" },
		{ 254, "UNKNOWN" },	     { 0xffff, "UNKNOWN" },
	};
	for (size_t i = 0; i < sizeof(ops) / sizeof(ops[0]); i++)
		CHECK_MSG(strcmp(kvt_op_name(ops[i].op), ops[i].name) == 0, "op %u: %s",
			  ops[i].op, kvt_op_name(ops[i].op));
}

/* ---- HELLO --------------------------------------------------------------- */

static const char name64[] = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

TEST(hello_req_roundtrip)
{
	static const char *const names[] = { "vllm-worker-3", "", name64, "caf\xc3\xa9" };
	uint8_t buf[128];

	for (size_t i = 0; i < 4; i++) {
		struct kvt_hello_req m = { .min_version = 1, .max_version = 7, .name = names[i],
					   .name_len = (uint16_t)strlen(names[i]) };
		struct kvt_hello_req back;
		int n = kvt_hello_req_encode(&m, buf, sizeof(buf));
		CHECK_EQ(n, 10 + m.name_len);
		CHECK_EQ(kvt_hello_req_size(m.name_len), (size_t)n);
		CHECK_EQ(kvt_get16(buf + 8), m.name_len);
		CHECK_RC(kvt_hello_req_decode(buf, (size_t)n, &back), 0);
		CHECK_EQ(back.min_version, 1);
		CHECK_EQ(back.max_version, 7);
		CHECK_EQ(back.flags, 0);
		CHECK_EQ(back.name_len, m.name_len);
		CHECK(back.name == (const char *)buf + 10);
		CHECK(memcmp(back.name, names[i], m.name_len) == 0);
	}
}

TEST(hello_req_malformed)
{
	struct kvt_hello_req m = { .min_version = 1, .max_version = 1, .name = "engine",
				   .name_len = 6 };
	uint8_t buf[128], big[128];
	int n = kvt_hello_req_encode(&m, buf, sizeof(buf));
	CHECK_EQ(n, 16);

	check_truncations(dec_hello_req, buf, (size_t)n, KVT_EBADMSG);
	check_reserved(dec_hello_req, buf, (size_t)n, 4, 4, KVT_ERESERVED);
	/* name_len one off either way */
	memcpy(big, buf, (size_t)n);
	kvt_put16(big + 8, 5);
	CHECK_RC(dec_exact(dec_hello_req, big, (size_t)n), KVT_EBADMSG);
	kvt_put16(big + 8, 7);
	CHECK_RC(dec_exact(dec_hello_req, big, (size_t)n), KVT_EBADMSG);
	/* a 65-byte name, even in a body of the right length */
	memset(big, 'a', sizeof(big));
	memcpy(big, buf, 10);
	kvt_put16(big + 8, KVT_NAME_MAX + 1);
	CHECK_RC(dec_exact(dec_hello_req, big, 10 + KVT_NAME_MAX + 1), KVT_EBADMSG);
	kvt_put16(big + 8, KVT_NAME_MAX);
	CHECK_RC(dec_exact(dec_hello_req, big, 10 + KVT_NAME_MAX), 0);
	kvt_put16(big + 8, 0xffff);
	CHECK_RC(dec_exact(dec_hello_req, big, sizeof(big)), KVT_EBADMSG);
	/* control bytes in the name */
	memcpy(big, buf, (size_t)n);
	big[12] = '\n';
	CHECK_RC(dec_exact(dec_hello_req, big, (size_t)n), KVT_EBADMSG);
	big[12] = 0;
	CHECK_RC(dec_exact(dec_hello_req, big, (size_t)n), KVT_EBADMSG);

	/* encoder refuses what the decoder would */
	struct kvt_hello_req e = m;
	char longname[KVT_NAME_MAX + 2];
	memset(longname, 'x', sizeof(longname));
	e.name = longname;
	e.name_len = KVT_NAME_MAX + 1;
	CHECK_RC(kvt_hello_req_encode(&e, buf, sizeof(buf)), KVT_EMSGSIZE);
	e.name = NULL;
	e.name_len = 3;
	CHECK_RC(kvt_hello_req_encode(&e, buf, sizeof(buf)), KVT_EINVAL);
	e.name = "a\tb";
	CHECK_RC(kvt_hello_req_encode(&e, buf, sizeof(buf)), KVT_EINVAL);
	e.name = NULL;
	e.name_len = 0;
	CHECK_EQ(kvt_hello_req_encode(&e, buf, sizeof(buf)), 10);
}

static struct kvt_hello_rep sample_hello_rep(void)
{
	struct kvt_hello_rep m = {
		.version = 1,
		.tenant = 1000,
		.max_frame = 1u << 20,
		.max_inflight = 64,
		.max_batch = 4096,
		.max_regions = 64,
		.max_region_size = 64ull << 30,
		.max_block_size = 1ull << 30,
		.server = "kvtierd 0.1.0",
		.server_len = 13,
	};
	return m;
}

TEST(hello_rep_roundtrip)
{
	struct kvt_hello_rep m = sample_hello_rep(), back;
	uint8_t buf[128];

	int n = kvt_hello_rep_encode(&m, buf, sizeof(buf));
	CHECK_EQ(n, 42 + 13);
	CHECK_EQ(kvt_hello_rep_size(13), 55);
	CHECK_RC(kvt_hello_rep_decode(buf, (size_t)n, &back), 0);
	CHECK_EQ(back.version, 1);
	CHECK_EQ(back.tenant, 1000);
	CHECK_EQ(back.max_frame, 1u << 20);
	CHECK_EQ(back.max_inflight, 64);
	CHECK_EQ(back.max_batch, 4096);
	CHECK_EQ(back.max_regions, 64);
	CHECK(back.max_region_size == 64ull << 30);
	CHECK(back.max_block_size == 1ull << 30);
	CHECK_EQ(back.server_len, 13);
	CHECK(memcmp(back.server, "kvtierd 0.1.0", 13) == 0);
	/* fixed offsets from docs/PROTOCOL.md */
	CHECK_EQ(kvt_get32(buf + 4), 1000);
	CHECK(kvt_get64(buf + 24) == 64ull << 30);
	CHECK_EQ(kvt_get16(buf + 40), 13);

	m.server = NULL;
	m.server_len = 0;
	n = kvt_hello_rep_encode(&m, buf, sizeof(buf));
	CHECK_EQ(n, 42);
	CHECK_RC(kvt_hello_rep_decode(buf, 42, &back), 0);
	CHECK_EQ(back.server_len, 0);
}

TEST(hello_rep_malformed)
{
	struct kvt_hello_rep m = sample_hello_rep();
	uint8_t buf[128], big[128];
	int n = kvt_hello_rep_encode(&m, buf, sizeof(buf));
	CHECK(n > 0);

	check_truncations(dec_hello_rep, buf, (size_t)n, KVT_EBADMSG);
	check_reserved(dec_hello_rep, buf, (size_t)n, 2, 2, KVT_ERESERVED);
	memcpy(big, buf, (size_t)n);
	kvt_put16(big + 40, 12);
	CHECK_RC(dec_exact(dec_hello_rep, big, (size_t)n), KVT_EBADMSG);
	kvt_put16(big + 40, 14);
	CHECK_RC(dec_exact(dec_hello_rep, big, (size_t)n), KVT_EBADMSG);
	memset(big, 'a', sizeof(big));
	memcpy(big, buf, 42);
	kvt_put16(big + 40, KVT_NAME_MAX + 1);
	CHECK_RC(dec_exact(dec_hello_rep, big, 42 + KVT_NAME_MAX + 1), KVT_EBADMSG);
	memcpy(big, buf, (size_t)n);
	big[45] = 0x7f;
	CHECK_RC(dec_exact(dec_hello_rep, big, (size_t)n), KVT_EBADMSG);

	struct kvt_hello_rep e = m;
	e.server = name64;
	e.server_len = KVT_NAME_MAX + 1; /* refused before anything is read */
	CHECK_RC(kvt_hello_rep_encode(&e, buf, sizeof(buf)), KVT_EMSGSIZE);
	e.server_len = KVT_NAME_MAX;
	CHECK_EQ(kvt_hello_rep_encode(&e, buf, sizeof(buf)), 42 + KVT_NAME_MAX);
}

/* ---- REGISTER / UNREGISTER ----------------------------------------------- */

TEST(register_roundtrip)
{
	uint8_t buf[32];
	struct kvt_register_req rq = { .size = 0x123456789abcull }, rq2;
	struct kvt_register_rep rp = { .region_id = 0xdeadbeef }, rp2;
	struct kvt_unregister_req ur = { .region_id = 42 }, ur2;

	CHECK_EQ(kvt_register_req_encode(&rq, buf, sizeof(buf)), KVT_REGISTER_REQ_SIZE);
	CHECK(kvt_get64(buf) == 0x123456789abcull);
	CHECK_RC(kvt_register_req_decode(buf, KVT_REGISTER_REQ_SIZE, &rq2), 0);
	CHECK(rq2.size == rq.size);
	CHECK_EQ(rq2.flags, 0);

	CHECK_EQ(kvt_register_rep_encode(&rp, buf, sizeof(buf)), KVT_REGISTER_REP_SIZE);
	CHECK_RC(kvt_register_rep_decode(buf, KVT_REGISTER_REP_SIZE, &rp2), 0);
	CHECK_EQ(rp2.region_id, 0xdeadbeef);

	CHECK_EQ(kvt_unregister_req_encode(&ur, buf, sizeof(buf)), KVT_UNREGISTER_REQ_SIZE);
	CHECK_RC(kvt_unregister_req_decode(buf, KVT_UNREGISTER_REQ_SIZE, &ur2), 0);
	CHECK_EQ(ur2.region_id, 42);
}

TEST(register_malformed)
{
	uint8_t buf[32];
	struct kvt_register_req rq = { .size = 4096 };
	struct kvt_register_rep rp = { .region_id = 1 };
	struct kvt_unregister_req ur = { .region_id = 1 };

	kvt_register_req_encode(&rq, buf, sizeof(buf));
	check_truncations(dec_register_req, buf, KVT_REGISTER_REQ_SIZE, KVT_EBADMSG);
	check_reserved(dec_register_req, buf, KVT_REGISTER_REQ_SIZE, 8, 8, KVT_ERESERVED);
	rq.flags = 1; /* encoded as given, refused by the decoder */
	kvt_register_req_encode(&rq, buf, sizeof(buf));
	CHECK_RC(dec_exact(dec_register_req, buf, KVT_REGISTER_REQ_SIZE), KVT_ERESERVED);

	kvt_register_rep_encode(&rp, buf, sizeof(buf));
	check_truncations(dec_register_rep, buf, KVT_REGISTER_REP_SIZE, KVT_EBADMSG);
	check_reserved(dec_register_rep, buf, KVT_REGISTER_REP_SIZE, 4, 4, KVT_ERESERVED);

	kvt_unregister_req_encode(&ur, buf, sizeof(buf));
	check_truncations(dec_unregister_req, buf, KVT_UNREGISTER_REQ_SIZE, KVT_EBADMSG);
	check_reserved(dec_unregister_req, buf, KVT_UNREGISTER_REQ_SIZE, 4, 4, KVT_ERESERVED);
}

/* ---- batches ------------------------------------------------------------- */

/* A PUT body of n items into buf; returns its length. */
static size_t build_put(uint8_t *buf, size_t cap, uint32_t n)
{
	CHECK(kvt_batch_size(n, KVT_PUT_ITEM_SIZE) <= cap);
	CHECK_EQ(kvt_batch_prefix_encode(n, buf, cap), 8);
	for (uint32_t i = 0; i < n; i++) {
		struct kvt_put_wire it = {
			.key = key_n((uint8_t)i),
			.parent = i ? key_n((uint8_t)(i - 1)) : (kvt_key){ { 0 } },
			.region_id = 1 + i,
			.offset = (uint64_t)i << 33,
			.length = 65536 + i,
			.desc = desc_n((uint16_t)i),
		};
		kvt_put_item_encode(&it, buf + 8 + (size_t)i * KVT_PUT_ITEM_SIZE);
	}
	return kvt_batch_size(n, KVT_PUT_ITEM_SIZE);
}

static size_t build_get(uint8_t *buf, size_t cap, uint32_t n)
{
	CHECK(kvt_batch_size(n, KVT_GET_ITEM_SIZE) <= cap);
	CHECK_EQ(kvt_batch_prefix_encode(n, buf, cap), 8);
	for (uint32_t i = 0; i < n; i++) {
		struct kvt_get_wire it = {
			.key = key_n((uint8_t)i),
			.region_id = 7,
			.offset = 4096ull * i,
			.capacity = UINT64_MAX - i,
		};
		kvt_get_item_encode(&it, buf + 8 + (size_t)i * KVT_GET_ITEM_SIZE);
	}
	return kvt_batch_size(n, KVT_GET_ITEM_SIZE);
}

static size_t build_keys(uint8_t *buf, size_t cap, uint32_t n)
{
	CHECK(kvt_batch_size(n, KVT_KEY_SIZE) <= cap);
	CHECK_EQ(kvt_batch_prefix_encode(n, buf, cap), 8);
	for (uint32_t i = 0; i < n; i++) {
		kvt_key k = key_n((uint8_t)i);
		kvt_key_encode(&k, buf + 8 + (size_t)i * KVT_KEY_SIZE);
	}
	return kvt_batch_size(n, KVT_KEY_SIZE);
}

TEST(put_batch_roundtrip)
{
	uint8_t buf[8 + 5 * KVT_PUT_ITEM_SIZE];
	struct kvt_batch b;
	size_t len = build_put(buf, sizeof(buf), 5);

	CHECK_EQ(len, 8 + 5 * 72);
	CHECK_RC(kvt_batch_decode(buf, len, KVT_PUT_ITEM_SIZE, 5, &b), 0);
	CHECK_EQ(b.count, 5);
	CHECK_EQ(b.flags, 0);
	CHECK(b.items == buf + 8);
	CHECK_EQ(b.item_size, KVT_PUT_ITEM_SIZE);
	for (uint32_t i = 0; i < 5; i++) {
		struct kvt_put_wire it;
		const uint8_t *p = b.items + i * KVT_PUT_ITEM_SIZE;
		CHECK_RC(kvt_put_item_decode(p, &it), 0);
		kvt_key k = key_n((uint8_t)i);
		kvt_block_desc d = desc_n((uint16_t)i);
		CHECK(kvt_key_equal(&it.key, &k));
		CHECK(i ? !kvt_key_is_zero(&it.parent) : kvt_key_is_zero(&it.parent));
		CHECK_EQ(it.region_id, 1 + i);
		CHECK(it.offset == (uint64_t)i << 33);
		CHECK(it.length == 65536 + i);
		CHECK(desc_eq(&it.desc, &d));
		/* documented offsets */
		CHECK_EQ(kvt_get32(p + 32), 1 + i);
		CHECK(kvt_get64(p + 48) == 65536 + i);
		CHECK_EQ(kvt_get16(p + 56), KVT_DTYPE_BF16);
		CHECK_EQ(kvt_get32(p + 64), 16 + i);
	}
}

TEST(get_batch_roundtrip)
{
	uint8_t buf[8 + 3 * KVT_GET_ITEM_SIZE];
	struct kvt_batch b;
	size_t len = build_get(buf, sizeof(buf), 3);

	CHECK_EQ(len, 8 + 3 * 40);
	CHECK_RC(kvt_batch_decode(buf, len, KVT_GET_ITEM_SIZE, 4096, &b), 0);
	CHECK_EQ(b.count, 3);
	for (uint32_t i = 0; i < 3; i++) {
		struct kvt_get_wire it;
		const uint8_t *p = b.items + i * KVT_GET_ITEM_SIZE;
		CHECK_RC(kvt_get_item_decode(p, &it), 0);
		kvt_key k = key_n((uint8_t)i);
		CHECK(kvt_key_equal(&it.key, &k));
		CHECK_EQ(it.region_id, 7);
		CHECK(it.offset == 4096ull * i);
		CHECK(it.capacity == UINT64_MAX - i);
		CHECK(kvt_get64(p + 24) == 4096ull * i);
	}
}

TEST(key_batch_roundtrip)
{
	uint8_t buf[8 + 4 * KVT_KEY_SIZE];
	struct kvt_batch b;
	size_t len = build_keys(buf, sizeof(buf), 4);

	CHECK_RC(kvt_batch_decode(buf, len, KVT_KEY_SIZE, 4, &b), 0);
	CHECK_EQ(b.count, 4);
	for (uint32_t i = 0; i < 4; i++) {
		kvt_key k, want = key_n((uint8_t)i);
		kvt_key_decode(b.items + i * KVT_KEY_SIZE, &k);
		CHECK(kvt_key_equal(&k, &want));
	}
	/* An empty batch is well-formed. */
	len = build_keys(buf, sizeof(buf), 0);
	CHECK_EQ(len, 8);
	CHECK_RC(kvt_batch_decode(buf, len, KVT_KEY_SIZE, 4, &b), 0);
	CHECK_EQ(b.count, 0);
}

TEST(batch_malformed)
{
	uint8_t buf[8 + 3 * KVT_PUT_ITEM_SIZE + 1], tmp[sizeof(buf)];
	size_t len;

	g_max_batch = 4096;
	g_item_size = KVT_PUT_ITEM_SIZE;
	len = build_put(buf, sizeof(buf), 3);
	check_truncations(dec_batch, buf, len, KVT_EBADMSG);
	check_reserved(dec_batch, buf, len, 4, 4, KVT_ERESERVED);

	g_item_size = KVT_GET_ITEM_SIZE;
	len = build_get(buf, sizeof(buf), 3);
	check_truncations(dec_batch, buf, len, KVT_EBADMSG);
	check_reserved(dec_batch, buf, len, 4, 4, KVT_ERESERVED);

	g_item_size = KVT_KEY_SIZE;
	len = build_keys(buf, sizeof(buf), 3);
	check_truncations(dec_batch, buf, len, KVT_EBADMSG);
	/* count one off either way with the body unchanged */
	memcpy(tmp, buf, len);
	kvt_put32(tmp, 2);
	CHECK_RC(dec_exact(dec_batch, tmp, len), KVT_EBADMSG);
	kvt_put32(tmp, 4);
	CHECK_RC(dec_exact(dec_batch, tmp, len), KVT_EBADMSG);
	/* an item size that is not the message's */
	g_item_size = KVT_GET_ITEM_SIZE;
	CHECK_RC(dec_exact(dec_batch, buf, len), KVT_EBADMSG);
	struct kvt_batch b;
	CHECK_RC(kvt_batch_decode(buf, len, 0, 4096, &b), KVT_EINVAL);
}

TEST(batch_count_over_max)
{
	uint8_t buf[8 + 5 * KVT_KEY_SIZE];
	struct kvt_batch b;
	size_t len = build_keys(buf, sizeof(buf), 5);

	CHECK_RC(kvt_batch_decode(buf, len, KVT_KEY_SIZE, 5, &b), 0);
	CHECK_RC(kvt_batch_decode(buf, len, KVT_KEY_SIZE, 4, &b), KVT_E2BIG);
	CHECK_RC(kvt_batch_decode(buf, len, KVT_KEY_SIZE, 0, &b), KVT_E2BIG);
	/* E2BIG is judged from the prefix alone: the body need not be there. */
	kvt_put32(buf, 100000);
	CHECK_RC(kvt_batch_decode(buf, 8, KVT_KEY_SIZE, 4096, &b), KVT_E2BIG);
	kvt_put32(buf, UINT32_MAX);
	CHECK_RC(kvt_batch_decode(buf, 8, KVT_KEY_SIZE, 4096, &b), KVT_E2BIG);
}

TEST(batch_size_overflow)
{
	uint8_t buf[64];
	struct kvt_batch b;

	CHECK(kvt_batch_size(UINT32_MAX, SIZE_MAX) == SIZE_MAX);
	CHECK(kvt_batch_size(2, SIZE_MAX / 2 + 1) == SIZE_MAX);
	CHECK(kvt_batch_size(1, SIZE_MAX - 7) == SIZE_MAX);
	CHECK(kvt_batch_size(1, SIZE_MAX - 8) == SIZE_MAX);
	CHECK_EQ(kvt_batch_size(3, 72), 8 + 216);
	CHECK(kvt_batch_size(UINT32_MAX, 72) == 8 + (size_t)UINT32_MAX * 72);

	/* count * item_size wraps to exactly the bytes present: still refused */
	memset(buf, 0, sizeof(buf));
	kvt_put32(buf, 2);
	CHECK_RC(kvt_batch_decode(buf, 8, SIZE_MAX / 2 + 1, UINT32_MAX, &b), KVT_EBADMSG);
	kvt_put32(buf, 16);
	CHECK_RC(kvt_batch_decode(buf, 8 + 16, (SIZE_MAX >> 4) + 2, UINT32_MAX, &b),
		 KVT_EBADMSG);
	/* encoders refuse sizes they cannot write (before touching the buffer) */
	int32_t st = 0;
	struct kvt_get_result r = { 0 };
	uint8_t tier = 1;
	CHECK_RC(kvt_status_rep_encode(&st, UINT32_MAX, buf, sizeof(buf)), KVT_EMSGSIZE);
	CHECK_RC(kvt_get_rep_encode(&r, UINT32_MAX, buf, sizeof(buf)), KVT_EMSGSIZE);
	CHECK_RC(kvt_lookup_rep_encode(UINT32_MAX, &tier, buf, sizeof(buf)), KVT_EMSGSIZE);
	CHECK_RC(kvt_status_rep_encode(&st, UINT32_MAX, buf, SIZE_MAX), KVT_EMSGSIZE);
}

TEST(item_reserved_fields)
{
	uint8_t buf[8 + KVT_PUT_ITEM_SIZE], g[8 + KVT_GET_ITEM_SIZE], d[KVT_DESC_SIZE];
	struct kvt_put_wire pw;
	struct kvt_get_wire gw;
	kvt_block_desc desc = desc_n(1), back;

	build_put(buf, sizeof(buf), 1);
	uint8_t *p = buf + 8;
	CHECK_RC(kvt_put_item_decode(p, &pw), 0);
	for (int off = 36; off < 40; off++) { /* item reserved */
		p[off] = 1;
		CHECK_RC(kvt_put_item_decode(p, &pw), KVT_ERESERVED);
		p[off] = 0;
	}
	for (int off = 56 + 6; off < 56 + 8; off++) { /* desc reserved0 */
		p[off] = 1;
		CHECK_RC(kvt_put_item_decode(p, &pw), KVT_ERESERVED);
		p[off] = 0;
	}
	for (int off = 56 + 12; off < 56 + 16; off++) { /* desc reserved1 */
		p[off] = 0x80;
		CHECK_RC(kvt_put_item_decode(p, &pw), KVT_ERESERVED);
		p[off] = 0;
	}
	CHECK_RC(kvt_put_item_decode(p, &pw), 0);

	build_get(g, sizeof(g), 1);
	for (int off = 20; off < 24; off++) {
		g[8 + off] = 1;
		CHECK_RC(kvt_get_item_decode(g + 8, &gw), KVT_ERESERVED);
		g[8 + off] = 0;
	}
	CHECK_RC(kvt_get_item_decode(g + 8, &gw), 0);

	/* the descriptor encodes its reserved fields as given, and the decoder
	 * refuses them */
	kvt_desc_encode(&desc, d);
	CHECK_RC(kvt_desc_decode(d, &back), 0);
	CHECK(desc_eq(&desc, &back));
	desc.reserved0 = 1;
	kvt_desc_encode(&desc, d);
	CHECK_RC(kvt_desc_decode(d, &back), KVT_ERESERVED);
	desc.reserved0 = 0;
	desc.reserved1 = 0x10000;
	kvt_desc_encode(&desc, d);
	CHECK_RC(kvt_desc_decode(d, &back), KVT_ERESERVED);
}

/* ---- replies -------------------------------------------------------------- */

TEST(status_rep_roundtrip)
{
	int32_t st[4] = { 0, KVT_ENOENT, KVT_EPINNED, INT32_MIN }, back[4] = { 1, 1, 1, 1 };
	uint8_t buf[64];

	int n = kvt_status_rep_encode(st, 4, buf, sizeof(buf));
	CHECK_EQ(n, 8 + 16);
	CHECK_EQ(kvt_status_rep_size(4), 24);
	CHECK_RC(kvt_status_rep_decode(buf, (size_t)n, 4, back), 0);
	for (int i = 0; i < 4; i++)
		CHECK_EQ(back[i], st[i]);
	CHECK_RC(kvt_status_rep_decode(buf, (size_t)n, 4, NULL), 0);
	n = kvt_status_rep_encode(NULL, 0, buf, sizeof(buf));
	CHECK_EQ(n, 8);
	CHECK_RC(kvt_status_rep_decode(buf, 8, 0, NULL), 0);
	CHECK_RC(kvt_status_rep_encode(NULL, 1, buf, sizeof(buf)), KVT_EINVAL);
}

TEST(status_rep_malformed)
{
	int32_t st[3] = { 0, KVT_ENOENT, 0 }, back[3] = { 7, 7, 7 };
	uint8_t buf[64];
	int n = kvt_status_rep_encode(st, 3, buf, sizeof(buf));

	g_count = 3;
	check_truncations(dec_status_rep, buf, (size_t)n, KVT_EBADMSG);
	check_reserved(dec_status_rep, buf, (size_t)n, 4, 4, KVT_ERESERVED);
	/* a reply for a batch of another size */
	CHECK_RC(kvt_status_rep_decode(buf, (size_t)n, 2, back), KVT_EBADMSG);
	CHECK_RC(kvt_status_rep_decode(buf, (size_t)n, 4, back), KVT_EBADMSG);
	/* a positive status is not a status */
	kvt_put32(buf + 8 + 4, 5);
	CHECK_RC(kvt_status_rep_decode(buf, (size_t)n, 3, back), KVT_EBADMSG);
	/* nothing written on failure */
	for (int i = 0; i < 3; i++)
		CHECK_EQ(back[i], 7);
}

TEST(get_rep_roundtrip)
{
	struct kvt_get_result r[3] = {
		{ .status = 0, .length = 65536, .desc = desc_n(0) },
		{ .status = KVT_ENOBUFS, .length = 1ull << 40 },
		{ .status = KVT_ENOENT },
	};
	struct kvt_get_result back[3];
	uint8_t buf[8 + 3 * 32];

	int n = kvt_get_rep_encode(r, 3, buf, sizeof(buf));
	CHECK_EQ(n, 8 + 3 * 32);
	CHECK_EQ(kvt_get_rep_size(3), (size_t)n);
	memset(back, 0xaa, sizeof(back));
	CHECK_RC(kvt_get_rep_decode(buf, (size_t)n, 3, back), 0);
	for (int i = 0; i < 3; i++) {
		CHECK_EQ(back[i].status, r[i].status);
		CHECK(back[i].length == r[i].length);
		CHECK(desc_eq(&back[i].desc, &r[i].desc));
	}
	CHECK(kvt_get64(buf + 8 + 32 + 8) == 1ull << 40);
	CHECK_EQ((int32_t)kvt_get32(buf + 8 + 32), KVT_ENOBUFS);
}

TEST(get_rep_malformed)
{
	struct kvt_get_result r[2] = { { .status = 0, .length = 10, .desc = desc_n(1) },
				       { .status = KVT_ENOENT } };
	struct kvt_get_result back[2];
	uint8_t buf[8 + 2 * 32];
	int n = kvt_get_rep_encode(r, 2, buf, sizeof(buf));

	g_count = 2;
	check_truncations(dec_get_rep, buf, (size_t)n, KVT_EBADMSG);
	check_reserved(dec_get_rep, buf, (size_t)n, 4, 4, KVT_ERESERVED);
	for (int item = 0; item < 2; item++) {
		size_t base = 8 + (size_t)item * 32;
		check_reserved(dec_get_rep, buf, (size_t)n, base + 4, 4, KVT_ERESERVED);
		check_reserved(dec_get_rep, buf, (size_t)n, base + 16 + 6, 2, KVT_ERESERVED);
		check_reserved(dec_get_rep, buf, (size_t)n, base + 16 + 12, 4, KVT_ERESERVED);
	}
	CHECK_RC(kvt_get_rep_decode(buf, (size_t)n, 1, back), KVT_EBADMSG);
	CHECK_RC(kvt_get_rep_decode(buf, (size_t)n, 3, back), KVT_EBADMSG);
	kvt_put32(buf + 8 + 32, 1);
	memset(back, 0x5a, sizeof(back));
	CHECK_RC(kvt_get_rep_decode(buf, (size_t)n, 2, back), KVT_EBADMSG);
	CHECK_EQ(back[0].status, 0x5a5a5a5a); /* untouched */
}

TEST(lookup_rep_roundtrip)
{
	uint8_t tiers[3] = { KVT_TIER_HOST, KVT_TIER_HBM, KVT_TIER_NVME }, back[8];
	uint8_t buf[16];
	uint32_t found = 99;

	int n = kvt_lookup_rep_encode(3, tiers, buf, sizeof(buf));
	CHECK_EQ(n, 11);
	CHECK_EQ(kvt_lookup_rep_size(3), 11);
	memset(back, 0xee, sizeof(back));
	CHECK_RC(kvt_lookup_rep_decode(buf, 11, 8, &found, back), 0);
	CHECK_EQ(found, 3);
	CHECK(memcmp(back, tiers, 3) == 0);
	CHECK_EQ(back[3], 0xee);
	CHECK_RC(kvt_lookup_rep_decode(buf, 11, 3, &found, NULL), 0);
	n = kvt_lookup_rep_encode(0, NULL, buf, sizeof(buf));
	CHECK_EQ(n, 8);
	CHECK_RC(kvt_lookup_rep_decode(buf, 8, 0, &found, NULL), 0);
	CHECK_EQ(found, 0);
	CHECK_RC(kvt_lookup_rep_encode(1, NULL, buf, sizeof(buf)), KVT_EINVAL);
}

TEST(lookup_rep_malformed)
{
	uint8_t tiers[3] = { 1, 1, 1 }, back[3] = { 9, 9, 9 };
	uint8_t buf[16];
	uint32_t found = 77;
	int n = kvt_lookup_rep_encode(3, tiers, buf, sizeof(buf));

	g_count = 3;
	check_truncations(dec_lookup_rep, buf, (size_t)n, KVT_EBADMSG);
	check_reserved(dec_lookup_rep, buf, (size_t)n, 4, 4, KVT_ERESERVED);
	/* found > asked */
	CHECK_RC(kvt_lookup_rep_decode(buf, (size_t)n, 2, &found, back), KVT_EBADMSG);
	CHECK_RC(kvt_lookup_rep_decode(buf, (size_t)n, 0, &found, back), KVT_EBADMSG);
	CHECK_EQ(found, 77);
	CHECK_EQ(back[0], 9);
	/* found > asked is refused before the length is looked at */
	kvt_put32(buf, UINT32_MAX);
	CHECK_RC(kvt_lookup_rep_decode(buf, 8, 3, &found, back), KVT_EBADMSG);
	/* unknown tier */
	kvt_lookup_rep_encode(3, tiers, buf, sizeof(buf));
	buf[9] = KVT_TIER_NVME + 1;
	CHECK_RC(kvt_lookup_rep_decode(buf, (size_t)n, 3, &found, back), KVT_EBADMSG);
	CHECK_EQ(back[0], 9);
}

/* ---- STATS ---------------------------------------------------------------- */

TEST(stats_roundtrip)
{
	uint8_t buf[512];
	struct kvt_stats_writer w;
	struct kvt_stat_entry e;
	size_t pos = 0;
	uint32_t count = 0;

	kvt_stats_writer_init(&w, buf, sizeof(buf));
	CHECK_RC(kvt_stats_writer_text(&w, "server.version", "0.1.0"), 0);
	CHECK_RC(kvt_stats_writer_u64(&w, "server.pid", 4242), 0);
	CHECK_RC(kvt_stats_writer_u64(&w, "tenant.1000.bytes", UINT64_MAX), 0);
	CHECK_RC(kvt_stats_writer_text(&w, "t0.reason", ""), 0);
	CHECK_RC(kvt_stats_writer_text(&w, "t1.hugepages", NULL), 0);
	size_t len = kvt_stats_writer_finish(&w);
	CHECK_EQ(len, 8 + (8 + 14 + 5) + (8 + 10 + 8) + (8 + 17 + 8) + (8 + 9) + (8 + 12));

	CHECK_RC(kvt_stats_rep_count(buf, len, &count), 0);
	CHECK_EQ(count, 5);
	/* first entry at documented offsets */
	CHECK_EQ(buf[8], KVT_STAT_TEXT);
	CHECK_EQ(kvt_get16(buf + 10), 14);
	CHECK_EQ(kvt_get32(buf + 12), 5);
	CHECK(memcmp(buf + 16, "server.version0.1.0", 19) == 0);

	CHECK_EQ(kvt_stats_rep_next(buf, len, &pos, &e), 1);
	CHECK_EQ(e.kind, KVT_STAT_TEXT);
	CHECK(e.name_len == 14 && memcmp(e.name, "server.version", 14) == 0);
	CHECK(e.text_len == 5 && memcmp(e.text, "0.1.0", 5) == 0);
	CHECK_EQ(e.value, 0);
	CHECK_EQ(kvt_stats_rep_next(buf, len, &pos, &e), 1);
	CHECK_EQ(e.kind, KVT_STAT_U64);
	CHECK(e.name_len == 10 && memcmp(e.name, "server.pid", 10) == 0);
	CHECK_EQ(e.value, 4242);
	CHECK(e.text == NULL);
	CHECK_EQ(kvt_stats_rep_next(buf, len, &pos, &e), 1);
	CHECK(e.value == UINT64_MAX);
	CHECK_EQ(kvt_stats_rep_next(buf, len, &pos, &e), 1);
	CHECK(e.kind == KVT_STAT_TEXT && e.text_len == 0);
	CHECK_EQ(kvt_stats_rep_next(buf, len, &pos, &e), 1);
	CHECK(e.kind == KVT_STAT_TEXT && e.text_len == 0);
	CHECK_EQ(kvt_stats_rep_next(buf, len, &pos, &e), 0);
	CHECK_EQ(pos, len);
	CHECK_EQ(kvt_stats_rep_next(buf, len, &pos, &e), 0); /* stays at the end */
	/* positions the caller made up are checked, not trusted */
	pos = 3;
	CHECK_RC(kvt_stats_rep_next(buf, len, &pos, &e), KVT_EBADMSG);
	pos = len + 1;
	CHECK_RC(kvt_stats_rep_next(buf, len, &pos, &e), KVT_EBADMSG);
	pos = 9; /* inside the first entry */
	CHECK(kvt_stats_rep_next(buf, len, &pos, &e) < 0);

	/* empty reply */
	kvt_stats_writer_init(&w, buf, sizeof(buf));
	CHECK_EQ(kvt_stats_writer_finish(&w), 8);
	CHECK_RC(dec_stats(buf, 8), 0);
}

TEST(stats_writer_limits)
{
	uint8_t buf[2048];
	struct kvt_stats_writer w;
	char name[KVT_STAT_NAME_MAX + 2];
	char text[KVT_STAT_TEXT_MAX + 2];

	kvt_stats_writer_init(&w, buf, sizeof(buf));
	memset(name, 'n', sizeof(name));
	name[KVT_STAT_NAME_MAX + 1] = 0;
	CHECK_RC(kvt_stats_writer_u64(&w, name, 1), KVT_EINVAL);
	name[KVT_STAT_NAME_MAX] = 0;
	CHECK_RC(kvt_stats_writer_u64(&w, name, 1), 0);
	CHECK_RC(kvt_stats_writer_u64(&w, "", 1), KVT_EINVAL);
	CHECK_RC(kvt_stats_writer_u64(&w, NULL, 1), KVT_EINVAL);
	CHECK_RC(kvt_stats_writer_u64(&w, "has space", 1), KVT_EINVAL);
	CHECK_RC(kvt_stats_writer_u64(&w, "tab\there", 1), KVT_EINVAL);
	memset(text, 't', sizeof(text));
	text[KVT_STAT_TEXT_MAX + 1] = 0;
	CHECK_RC(kvt_stats_writer_text(&w, "x", text), KVT_EINVAL);
	text[KVT_STAT_TEXT_MAX] = 0;
	CHECK_RC(kvt_stats_writer_text(&w, "x", text), 0);
	CHECK_RC(kvt_stats_writer_text(&w, "y", "line\nbreak"), KVT_EINVAL);
	CHECK_EQ(w.count, 2);
	size_t len = kvt_stats_writer_finish(&w);
	CHECK_EQ(len, 8 + 8 + 128 + 8 + 8 + 1 + 1024);
	CHECK_RC(dec_stats(buf, len), 0);

	/* full: refused, and the writer (and the bytes past it) are unchanged */
	uint8_t small[8 + (8 + 4 + 8) + (8 + 1 + 2)];
	memset(small, 0xcc, sizeof(small));
	kvt_stats_writer_init(&w, small, sizeof(small));
	CHECK_RC(kvt_stats_writer_u64(&w, "abcd", 1), 0);
	size_t before = w.len;
	CHECK_RC(kvt_stats_writer_u64(&w, "e", 2), KVT_EMSGSIZE);
	CHECK_RC(kvt_stats_writer_text(&w, "e", "abc"), KVT_EMSGSIZE);
	CHECK_EQ(w.len, before);
	CHECK_EQ(w.count, 1);
	for (size_t i = before; i < sizeof(small); i++)
		CHECK_EQ(small[i], 0xcc);
	CHECK_RC(kvt_stats_writer_text(&w, "e", "ab"), 0); /* exactly fits */
	CHECK_EQ(kvt_stats_writer_finish(&w), sizeof(small));
	CHECK_RC(dec_stats(small, sizeof(small)), 0);

	/* no room even for the prefix */
	kvt_stats_writer_init(&w, small, 7);
	CHECK_RC(kvt_stats_writer_u64(&w, "a", 1), KVT_EMSGSIZE);
	CHECK_EQ(kvt_stats_writer_finish(&w), 0);
}

/* A valid two-entry STATS body: u64 "a.b" = 5, text "c" = "xy". */
static size_t build_stats(uint8_t *buf, size_t cap)
{
	struct kvt_stats_writer w;
	kvt_stats_writer_init(&w, buf, cap);
	CHECK_RC(kvt_stats_writer_u64(&w, "a.b", 5), 0);
	CHECK_RC(kvt_stats_writer_text(&w, "c", "xy"), 0);
	return kvt_stats_writer_finish(&w);
}

TEST(stats_malformed)
{
	uint8_t buf[256], tmp[256];
	size_t len = build_stats(buf, sizeof(buf));
	const size_t e1 = 8, e2 = 8 + 8 + 3 + 8; /* entry offsets */
	uint32_t count;

	CHECK_EQ(len, e2 + 8 + 1 + 2);
	check_truncations(dec_stats, buf, len, KVT_EBADMSG);
	check_reserved(dec_stats, buf, len, 4, 4, KVT_ERESERVED);
	check_reserved(dec_stats, buf, len, e1 + 1, 1, KVT_ERESERVED);
	check_reserved(dec_stats, buf, len, e2 + 1, 1, KVT_ERESERVED);

#define MUTATE(stmt, want)                                       \
	do {                                                     \
		memcpy(tmp, buf, len);                           \
		stmt;                                            \
		CHECK_RC(dec_exact(dec_stats, tmp, len), want);  \
	} while (0)
	MUTATE(kvt_put32(tmp, 1), KVT_EBADMSG);	 /* fewer than present */
	MUTATE(kvt_put32(tmp, 3), KVT_EBADMSG);	 /* more than present */
	MUTATE(kvt_put32(tmp, UINT32_MAX), KVT_EBADMSG);
	MUTATE(tmp[e1] = 0, KVT_EBADMSG);		 /* unknown kinds */
	MUTATE(tmp[e1] = 3, KVT_EBADMSG);
	MUTATE(tmp[e2] = KVT_STAT_U64, KVT_EBADMSG); /* u64 with 2 value bytes */
	MUTATE(kvt_put16(tmp + e1 + 2, 0), KVT_EBADMSG); /* empty name */
	MUTATE(kvt_put16(tmp + e1 + 2, 4), KVT_EBADMSG); /* name runs into value */
	MUTATE(kvt_put32(tmp + e1 + 4, 7), KVT_EBADMSG);
	MUTATE(kvt_put32(tmp + e1 + 4, 9), KVT_EBADMSG);
	MUTATE(kvt_put32(tmp + e2 + 4, UINT32_MAX), KVT_EBADMSG);
	MUTATE(kvt_put16(tmp + e2 + 2, UINT16_MAX), KVT_EBADMSG);
	MUTATE(tmp[e1 + 8 + 1] = ' ', KVT_EBADMSG);	 /* space in a name */
	MUTATE(tmp[e2 + 8 + 1] = 0, KVT_EBADMSG);	 /* NUL in a text */
	MUTATE(tmp[e2 + 8 + 1] = 0x1b, KVT_EBADMSG);	 /* ESC in a text */
#undef MUTATE

	/* trailing garbage after the declared entries */
	memcpy(tmp, buf, len);
	tmp[len] = 0;
	CHECK_RC(dec_exact(dec_stats, tmp, len + 1), KVT_EBADMSG);
	/* a third, well-formed entry that the count does not mention */
	struct kvt_stats_writer w;
	kvt_stats_writer_init(&w, tmp, sizeof(tmp));
	CHECK_RC(kvt_stats_writer_u64(&w, "a.b", 5), 0);
	CHECK_RC(kvt_stats_writer_text(&w, "c", "xy"), 0);
	CHECK_RC(kvt_stats_writer_u64(&w, "d", 1), 0);
	size_t l3 = kvt_stats_writer_finish(&w);
	kvt_put32(tmp, 2);
	CHECK_RC(dec_exact(dec_stats, tmp, l3), KVT_EBADMSG);

	/* names at the limit and over it, texts at the limit and over it */
	uint8_t big[8 + 8 + 129 + 1025];
	memset(big, 'z', sizeof(big));
	kvt_put32(big, 1);
	kvt_put32(big + 4, 0);
	big[8] = KVT_STAT_TEXT;
	big[9] = 0;
	kvt_put16(big + 10, 128);
	kvt_put32(big + 12, 1024);
	CHECK_RC(dec_exact(dec_stats, big, 8 + 8 + 128 + 1024), 0);
	kvt_put16(big + 10, 129);
	CHECK_RC(dec_exact(dec_stats, big, 8 + 8 + 129 + 1024), KVT_EBADMSG);
	kvt_put16(big + 10, 128);
	kvt_put32(big + 12, 1025);
	CHECK_RC(dec_exact(dec_stats, big, 8 + 8 + 128 + 1025), KVT_EBADMSG);

	/* a count the body cannot hold is refused, and a good one reported */
	memset(tmp, 0, sizeof(tmp));
	kvt_put32(tmp, 2);
	CHECK_RC(kvt_stats_rep_count(tmp, 8 + 17, &count), KVT_EBADMSG);
	count = 0;
	CHECK_RC(kvt_stats_rep_count(buf, len, &count), 0);
	CHECK_EQ(count, 2);
	/* count validates the whole reply, not just the prefix */
	memcpy(tmp, buf, len);
	tmp[len - 1] = 0x01;
	CHECK_RC(kvt_stats_rep_count(tmp, len, &count), KVT_EBADMSG);
}

/* ---- NOTICE --------------------------------------------------------------- */

TEST(notice_roundtrip)
{
	uint8_t buf[300];
	const char *msg;
	uint16_t n;
	char longmsg[400];

	int len = kvt_notice_encode("idle for 600 s", buf, sizeof(buf));
	CHECK_EQ(len, 2 + 14);
	CHECK_EQ(kvt_get16(buf), 14);
	CHECK_RC(kvt_notice_decode(buf, (size_t)len, &msg, &n), 0);
	CHECK(n == 14 && memcmp(msg, "idle for 600 s", 14) == 0);

	CHECK_EQ(kvt_notice_encode(NULL, buf, sizeof(buf)), 2);
	CHECK_RC(kvt_notice_decode(buf, 2, &msg, &n), 0);
	CHECK_EQ(n, 0);

	/* long messages are cut at KVT_NOTICE_MAX, control bytes become '?' */
	memset(longmsg, 'm', sizeof(longmsg) - 1);
	longmsg[sizeof(longmsg) - 1] = 0;
	longmsg[3] = '\n';
	len = kvt_notice_encode(longmsg, buf, sizeof(buf));
	CHECK_EQ(len, 2 + KVT_NOTICE_MAX);
	CHECK_RC(kvt_notice_decode(buf, (size_t)len, &msg, &n), 0);
	CHECK_EQ(n, KVT_NOTICE_MAX);
	CHECK_EQ(msg[3], '?');
	CHECK_EQ(msg[4], 'm');
}

TEST(notice_malformed)
{
	uint8_t buf[300];
	int len = kvt_notice_encode("bad magic", buf, sizeof(buf));

	check_truncations(dec_notice, buf, (size_t)len, KVT_EBADMSG);
	kvt_put16(buf, 8);
	CHECK_RC(dec_exact(dec_notice, buf, (size_t)len), KVT_EBADMSG);
	kvt_put16(buf, 10);
	CHECK_RC(dec_exact(dec_notice, buf, (size_t)len), KVT_EBADMSG);
	memset(buf, 'q', sizeof(buf));
	kvt_put16(buf, KVT_NOTICE_MAX + 1);
	CHECK_RC(dec_exact(dec_notice, buf, 2 + KVT_NOTICE_MAX + 1), KVT_EBADMSG);
	kvt_put16(buf, KVT_NOTICE_MAX);
	CHECK_RC(dec_exact(dec_notice, buf, 2 + KVT_NOTICE_MAX), 0);
	buf[10] = 0;
	CHECK_RC(dec_exact(dec_notice, buf, 2 + KVT_NOTICE_MAX), KVT_EBADMSG);
}

/* ---- encoders and capacity ------------------------------------------------ */

TEST(encoders_leave_short_buffers_alone)
{
	uint8_t buf[256];
	struct kvt_hello_req hq = { .min_version = 1, .max_version = 1, .name = "x", .name_len = 1 };
	struct kvt_hello_rep hp = sample_hello_rep();
	struct kvt_register_req rq = { .size = 1 };
	struct kvt_register_rep rp = { .region_id = 1 };
	struct kvt_unregister_req ur = { .region_id = 1 };
	int32_t st[2] = { 0, 0 };
	struct kvt_get_result gr[2] = { { 0 }, { 0 } };
	uint8_t tiers[2] = { 1, 1 };

#define SHORT(call_cap, need)                                                  \
	do {                                                                   \
		memset(buf, 0x5c, sizeof(buf));                                \
		size_t cap_ = (need) - 1;                                      \
		int short_rc = (call_cap);                                          \
		CHECK_RC(short_rc, KVT_EMSGSIZE);                                   \
		for (size_t i_ = 0; i_ < sizeof(buf); i_++)                    \
			CHECK_MSG(buf[i_] == 0x5c, "byte %zu written", i_);    \
		cap_ = (need);                                                 \
		CHECK_EQ((call_cap), (int)(need));                             \
	} while (0)
	SHORT(kvt_hello_req_encode(&hq, buf, cap_), 11);
	SHORT(kvt_hello_rep_encode(&hp, buf, cap_), 55);
	SHORT(kvt_register_req_encode(&rq, buf, cap_), 16);
	SHORT(kvt_register_rep_encode(&rp, buf, cap_), 8);
	SHORT(kvt_unregister_req_encode(&ur, buf, cap_), 8);
	SHORT(kvt_batch_prefix_encode(3, buf, cap_), 8);
	SHORT(kvt_status_rep_encode(st, 2, buf, cap_), 16);
	SHORT(kvt_get_rep_encode(gr, 2, buf, cap_), 72);
	SHORT(kvt_lookup_rep_encode(2, tiers, buf, cap_), 10);
	SHORT(kvt_notice_encode("hello", buf, cap_), 7);
#undef SHORT
}

/* ---- field lists ------------------------------------------------------------- */

static int dec_fields(const uint8_t *in, size_t len)
{
	struct kvt_fields f;
	return kvt_fields_decode(in, len, &f);
}

/* A list with every kind of field: numbers of each size, bytes (one of them
 * empty), an ignorable hint, and two entries, the second holding one of its own. */
static void write_fields(struct kvt_fields_writer *w)
{
	kvt_key k[2] = { key_n(1), key_n(2) }, salt = key_n(9);

	kvt_fw_bytes(w, KVT_TAG_NAME, "chat-1", 6);
	kvt_fw_bytes(w, KVT_TAG_SALT, salt.b, 16);
	kvt_fw_u64(w, KVT_TAG_TOKEN_COUNT, 0x0102030405060708ull);
	kvt_fw_bytes(w, KVT_TAG_KEYS, k, sizeof(k));
	kvt_fw_u8(w, KVT_TAG_TIER, 2);
	kvt_fw_u32(w, KVT_TAG_RESIDENT, 0xa1b2c3d4u);
	kvt_fw_bytes(w, KVT_TAG_VALUE, NULL, 0);
	kvt_fw_bytes(w, 0x8123, "hint", 4);
	size_t m = kvt_fw_begin(w, KVT_TAG_ENTRY);
	kvt_fw_bytes(w, KVT_TAG_NS, "ns", 2);
	kvt_fw_u32(w, KVT_TAG_SCORE, 0x3f800000u);
	kvt_fw_end(w, m);
	m = kvt_fw_begin(w, KVT_TAG_ENTRY);
	kvt_fw_bytes(w, KVT_TAG_KEY, "k", 1);
	size_t inner = kvt_fw_begin(w, KVT_TAG_ENTRY);
	kvt_fw_u8(w, KVT_TAG_MORE, 1);
	kvt_fw_end(w, inner);
	kvt_fw_end(w, m);
	kvt_fw_u8(w, KVT_TAG_MORE, 0);
}

#define FIELDS_LEN 208 /* what write_fields writes */

static size_t build_fields(uint8_t *buf, size_t cap)
{
	struct kvt_fields_writer w;
	kvt_fw_init(&w, buf, cap);
	write_fields(&w);
	CHECK_RC(w.err, 0);
	CHECK_EQ(w.len, FIELDS_LEN);
	return w.len;
}

/* Top-level field boundaries of a valid list: at[l] is true if a field ends at l. */
static void field_bounds(const uint8_t *in, size_t len, bool *at)
{
	memset(at, 0, len + 1);
	at[0] = true;
	for (size_t p = 0; p < len;) {
		p += 8 + (size_t)kvt_get32(in + p + 4);
		CHECK(p <= len);
		at[p] = true;
	}
}

TEST(fields_roundtrip)
{
	uint8_t buf[256];
	struct kvt_fields f, e, e2;
	const uint8_t *p, *ev;
	uint32_t n, elen, v32;
	uint64_t v64;
	uint8_t v8;
	size_t len = build_fields(buf, sizeof(buf)), pos = 0;

	/* Byte for byte: u16 tag, u16 reserved, u32 length, little-endian, no padding. */
	static const uint8_t head[] = { 0x01, 0x00, 0x00, 0x00, 0x06, 0x00, 0x00, 0x00,
					'c',  'h',  'a',  't',	'-',  '1',  0x02, 0x00,
					0x00, 0x00, 0x10, 0x00, 0x00, 0x00 };
	CHECK(memcmp(buf, head, sizeof(head)) == 0);
	static const uint8_t tc[] = { 0x03, 0x00, 0x00, 0x00, 0x08, 0x00, 0x00, 0x00,
				      0x08, 0x07, 0x06, 0x05, 0x04, 0x03, 0x02, 0x01 };
	CHECK(memcmp(buf + 14 + 24, tc, sizeof(tc)) == 0);

	/* A counting writer (NULL buffer) measures the same length. */
	CHECK_EQ(build_fields(NULL, SIZE_MAX), len);

	CHECK_RC(dec_exact(dec_fields, buf, len), 0);
	CHECK_RC(kvt_fields_decode(buf, len, &f), 0);
	CHECK(f.body == buf && f.body_len == len);
	CHECK_RC(kvt_fields_bytes(&f, KVT_TAG_NAME, 1, 255, &p, &n), 0);
	CHECK(n == 6 && memcmp(p, "chat-1", 6) == 0 && p == buf + 8);
	kvt_key salt = key_n(9), k1 = key_n(1), k2 = key_n(2);
	CHECK_RC(kvt_fields_bytes(&f, KVT_TAG_SALT, 16, 16, &p, &n), 0);
	CHECK(memcmp(p, salt.b, 16) == 0);
	CHECK_RC(kvt_fields_u64(&f, KVT_TAG_TOKEN_COUNT, &v64), 0);
	CHECK(v64 == 0x0102030405060708ull);
	CHECK_RC(kvt_fields_bytes(&f, KVT_TAG_KEYS, 0, 1 << 20, &p, &n), 0);
	CHECK(n == 32 && memcmp(p, k1.b, 16) == 0 && memcmp(p + 16, k2.b, 16) == 0);
	CHECK_RC(kvt_fields_u8(&f, KVT_TAG_TIER, &v8), 0);
	CHECK_EQ(v8, 2);
	CHECK_RC(kvt_fields_u32(&f, KVT_TAG_RESIDENT, &v32), 0);
	CHECK_EQ(v32, 0xa1b2c3d4u);
	/* An empty value is present, not absent. */
	CHECK_RC(kvt_fields_bytes(&f, KVT_TAG_VALUE, 0, 0, &p, &n), 0);
	CHECK(p != NULL && n == 0);
	CHECK_RC(kvt_fields_u8(&f, KVT_TAG_MORE, &v8), 0);
	CHECK_EQ(v8, 0);
	/* The ignorable hint is skipped, not indexed; absent tags are absent. */
	CHECK_RC(kvt_fields_bytes(&f, 0x8123, 0, 100, &p, &n), KVT_ENOENT);
	CHECK_RC(kvt_fields_u32(&f, KVT_TAG_TTL_S, &v32), KVT_ENOENT);
	CHECK(f.val[KVT_TAG_METADATA] == NULL);

	/* Entries, in order; the first is also what the index shows for ENTRY. */
	CHECK_EQ(f.nentries, 2);
	CHECK_EQ(kvt_fields_next_entry(&f, &pos, &ev, &elen), 1);
	CHECK(ev == f.val[KVT_TAG_ENTRY] && elen == f.len[KVT_TAG_ENTRY] && elen == 22);
	CHECK_RC(kvt_fields_decode(ev, elen, &e), 0);
	CHECK_RC(kvt_fields_bytes(&e, KVT_TAG_NS, 1, 255, &p, &n), 0);
	CHECK(n == 2 && memcmp(p, "ns", 2) == 0);
	CHECK_RC(kvt_fields_u32(&e, KVT_TAG_SCORE, &v32), 0);
	CHECK_EQ(v32, 0x3f800000u);
	CHECK_EQ(e.nentries, 0);
	CHECK_EQ(kvt_fields_next_entry(&f, &pos, &ev, &elen), 1);
	CHECK_RC(kvt_fields_decode(ev, elen, &e), 0);
	CHECK_EQ(e.nentries, 1);
	CHECK_RC(kvt_fields_bytes(&e, KVT_TAG_KEY, 1, 1, &p, &n), 0);
	CHECK_RC(kvt_fields_decode(e.val[KVT_TAG_ENTRY], e.len[KVT_TAG_ENTRY], &e2), 0);
	CHECK_RC(kvt_fields_u8(&e2, KVT_TAG_MORE, &v8), 0);
	CHECK_EQ(v8, 1);
	CHECK_EQ(kvt_fields_next_entry(&f, &pos, &ev, &elen), 0);
	CHECK_EQ(pos, len);
	CHECK_EQ(kvt_fields_next_entry(&f, &pos, &ev, &elen), 0);

	/* The empty list is a list (PING-like bodies, "no fields"). */
	CHECK_RC(kvt_fields_decode(buf, 0, &f), 0);
	CHECK(f.nentries == 0 && f.val[KVT_TAG_NAME] == NULL);
	pos = 0;
	CHECK_EQ(kvt_fields_next_entry(&f, &pos, &ev, &elen), 0);
}

TEST(fields_malformed)
{
	uint8_t buf[FIELDS_LEN + 8];
	bool at[FIELDS_LEN + 1];
	struct kvt_fields f, e;
	size_t len = build_fields(buf, sizeof(buf));

	/* Every truncation: a prefix that ends between fields is a shorter list, any
	 * other is refused; so is one stray byte after the last field. */
	field_bounds(buf, len, at);
	for (size_t l = 0; l <= len; l++) {
		int rc = dec_exact(dec_fields, buf, l);
		CHECK_MSG(rc == (at[l] ? 0 : KVT_EBADMSG), "prefix of %zu/%zu bytes: %s", l, len,
			  kvt_errname(rc));
	}
	buf[len] = 0;
	CHECK_RC(dec_exact(dec_fields, buf, len + 1), KVT_EBADMSG);

	/* Reserved bytes of every field header, including the entries' and the hint's. */
	for (size_t p = 0; p < len; p += 8 + kvt_get32(buf + p + 4))
		check_reserved(dec_fields, buf, len, p + 2, 2, KVT_ERESERVED);

	/* A length past the end, by one and by the most a u32 can say. */
	size_t last = len - 9; /* MORE, the last field */
	CHECK(at[last]);
	kvt_put32(buf + last + 4, 2);
	CHECK_RC(dec_exact(dec_fields, buf, len), KVT_EBADMSG);
	kvt_put32(buf + last + 4, UINT32_MAX);
	CHECK_RC(dec_exact(dec_fields, buf, len), KVT_EBADMSG);
	kvt_put32(buf + last + 4, 1);
	CHECK_RC(dec_exact(dec_fields, buf, len), 0);

	/* Checks run field by field in order, and within a field the reserved bytes
	 * come before the tag: an unknown tag with reserved bits is ERESERVED. */
	uint8_t two[16] = { 0x99, 0x00, 0x01, 0x00, 0, 0, 0, 0, 0x01, 0x00, 0x00, 0x00, 0, 0, 0, 0 };
	CHECK_RC(dec_exact(dec_fields, two, 16), KVT_ERESERVED);
	two[2] = 0; /* now field 1's unknown tag refuses the list */
	CHECK_RC(dec_exact(dec_fields, two, 16), KVT_EBADMSG);

	/* An entry's own framing is its decoder's business: garbage inside an ENTRY
	 * passes the outer decode and fails the inner one. */
	uint8_t junk[8 + 3] = { KVT_TAG_ENTRY, 0, 0, 0, 3, 0, 0, 0, 1, 2, 3 };
	CHECK_RC(kvt_fields_decode(junk, sizeof(junk), &f), 0);
	CHECK_EQ(f.nentries, 1);
	CHECK_RC(kvt_fields_decode(f.val[KVT_TAG_ENTRY], f.len[KVT_TAG_ENTRY], &e), KVT_EBADMSG);
	uint8_t inner_res[16] = { KVT_TAG_ENTRY, 0, 0, 0, 8, 0, 0, 0,
				  KVT_TAG_TIER, 0, 7, 0, 0, 0, 0, 0 };
	CHECK_RC(kvt_fields_decode(inner_res, sizeof(inner_res), &f), 0);
	CHECK_RC(kvt_fields_decode(f.val[KVT_TAG_ENTRY], f.len[KVT_TAG_ENTRY], &e), KVT_ERESERVED);

	/* A failed decode leaves the output alone. */
	memset(&f, 0x5c, sizeof(f));
	CHECK_RC(kvt_fields_decode(junk, 5, &f), KVT_EBADMSG);
	CHECK(f.nentries == 0x5c5c5c5cu);
}

/* Append one field with a raw tag and a value of n bytes (0xab). */
static size_t put_field(uint8_t *b, size_t pos, unsigned tag, uint32_t n)
{
	kvt_put16(b + pos, (uint16_t)tag);
	kvt_put16(b + pos + 2, 0);
	kvt_put32(b + pos + 4, n);
	memset(b + pos + 8, 0xab, n);
	return pos + 8 + n;
}

TEST(fields_tags)
{
	uint8_t b[16 * 1024];
	struct kvt_fields f;
	size_t len;

	/* Any known tag but ENTRY twice is refused, wherever the second one is. */
	for (unsigned t = 1; t <= KVT_TAG_MAX; t++) {
		len = put_field(b, 0, t, 4);
		CHECK_RC(dec_exact(dec_fields, b, len), 0);
		len = put_field(b, len, KVT_TAG_ENTRY, 0);
		len = put_field(b, len, 0x8000, 2);
		if (t == KVT_TAG_ENTRY) {
			CHECK_RC(dec_exact(dec_fields, b, len), 0);
			continue;
		}
		len = put_field(b, len, t, 0);
		CHECK_MSG(dec_exact(dec_fields, b, len) == KVT_EBADMSG, "tag %u twice", t);
	}

	/* Unknown must-understand tags refuse the list; ignorable ones are skipped,
	 * even repeated, and never indexed. */
	static const unsigned must[] = { 0, KVT_TAG_MAX + 1, 0x100, 0x7fff };
	for (size_t i = 0; i < sizeof(must) / sizeof(must[0]); i++) {
		len = put_field(b, 0, KVT_TAG_NAME, 3);
		len = put_field(b, len, must[i], 1);
		CHECK_MSG(dec_exact(dec_fields, b, len) == KVT_EBADMSG, "tag %#x", must[i]);
	}
	len = put_field(b, 0, 0x8000, 0);
	len = put_field(b, len, KVT_TAG_NAME, 3);
	len = put_field(b, len, 0xffff, 5);
	len = put_field(b, len, 0x8000, 1);
	CHECK_RC(kvt_fields_decode(b, len, &f), 0);
	CHECK(f.val[KVT_TAG_NAME] == b + 16 && f.len[KVT_TAG_NAME] == 3);
	for (unsigned t = 0; t <= KVT_TAG_MAX; t++)
		CHECK(t == KVT_TAG_NAME || f.val[t] == NULL);

	/* ENTRY repeats: a thousand of them, counted and walked in order. */
	len = 0;
	for (unsigned i = 0; i < 1000; i++) {
		len = put_field(b, len, KVT_TAG_ENTRY, 4);
		kvt_put32(b + len - 4, i);
	}
	len = put_field(b, len, KVT_TAG_MORE, 1);
	CHECK_RC(kvt_fields_decode(b, len, &f), 0);
	CHECK_EQ(f.nentries, 1000);
	size_t pos = 0;
	const uint8_t *ev;
	uint32_t elen, i = 0;
	int rc;
	while ((rc = kvt_fields_next_entry(&f, &pos, &ev, &elen)) == 1) {
		CHECK(elen == 4 && kvt_get32(ev) == i);
		i++;
	}
	CHECK_RC(rc, 0);
	CHECK_EQ(i, 1000);
}

TEST(fields_getters)
{
	uint8_t b[64];
	struct kvt_fields f;
	const uint8_t *p = NULL;
	uint32_t n = 7, v32 = 7;
	uint64_t v64 = 7;
	uint8_t v8 = 7;

	/* Each fixed-size getter wants exactly its size: one byte less or more is
	 * KVT_EBADMSG, and the output is left alone. */
	static const struct {
		uint32_t len;
		int u8, u32, u64;
	} sizes[] = {
		{ 0, KVT_EBADMSG, KVT_EBADMSG, KVT_EBADMSG }, { 1, 0, KVT_EBADMSG, KVT_EBADMSG },
		{ 2, KVT_EBADMSG, KVT_EBADMSG, KVT_EBADMSG }, { 3, KVT_EBADMSG, KVT_EBADMSG, KVT_EBADMSG },
		{ 4, KVT_EBADMSG, 0, KVT_EBADMSG },	     { 5, KVT_EBADMSG, KVT_EBADMSG, KVT_EBADMSG },
		{ 7, KVT_EBADMSG, KVT_EBADMSG, KVT_EBADMSG }, { 8, KVT_EBADMSG, KVT_EBADMSG, 0 },
		{ 9, KVT_EBADMSG, KVT_EBADMSG, KVT_EBADMSG },
	};
	for (size_t i = 0; i < sizeof(sizes) / sizeof(sizes[0]); i++) {
		size_t len = put_field(b, 0, KVT_TAG_LIMIT, sizes[i].len);
		CHECK_RC(kvt_fields_decode(b, len, &f), 0);
		v8 = 7, v32 = 7, v64 = 7;
		CHECK_RC(kvt_fields_u8(&f, KVT_TAG_LIMIT, &v8), sizes[i].u8);
		CHECK_RC(kvt_fields_u32(&f, KVT_TAG_LIMIT, &v32), sizes[i].u32);
		CHECK_RC(kvt_fields_u64(&f, KVT_TAG_LIMIT, &v64), sizes[i].u64);
		CHECK(sizes[i].u8 ? v8 == 7 : v8 == 0xab);
		CHECK(sizes[i].u32 ? v32 == 7 : v32 == 0xababababu);
		CHECK(sizes[i].u64 ? v64 == 7 : v64 == 0xababababababababull);
		/* bytes: min and max are inclusive */
		CHECK_RC(kvt_fields_bytes(&f, KVT_TAG_LIMIT, sizes[i].len, sizes[i].len, &p, &n), 0);
		CHECK(p == b + 8 && n == sizes[i].len);
		p = NULL, n = 7;
		CHECK_RC(kvt_fields_bytes(&f, KVT_TAG_LIMIT, sizes[i].len + 1, 100, &p, &n),
			 KVT_EBADMSG);
		if (sizes[i].len)
			CHECK_RC(kvt_fields_bytes(&f, KVT_TAG_LIMIT, 0, sizes[i].len - 1, &p, &n),
				 KVT_EBADMSG);
		CHECK(p == NULL && n == 7);
	}

	/* Absent, and tags no list can hold: KVT_ENOENT, output alone. */
	size_t len = put_field(b, 0, KVT_TAG_LIMIT, 4);
	CHECK_RC(kvt_fields_decode(b, len, &f), 0);
	static const unsigned absent[] = { KVT_TAG_K, 0, KVT_TAG_MAX + 1, 0x8000, 0xffff, 0x10000 };
	for (size_t i = 0; i < sizeof(absent) / sizeof(absent[0]); i++) {
		CHECK_RC(kvt_fields_u8(&f, absent[i], &v8), KVT_ENOENT);
		CHECK_RC(kvt_fields_u32(&f, absent[i], &v32), KVT_ENOENT);
		CHECK_RC(kvt_fields_u64(&f, absent[i], &v64), KVT_ENOENT);
		CHECK_RC(kvt_fields_bytes(&f, absent[i], 0, SIZE_MAX, &p, &n), KVT_ENOENT);
	}
	CHECK(v8 == 7 && p == NULL && n == 7);

	/* kvt_fields_next_entry from a position the caller made up never leaves the
	 * body (exact-size copy: ASan would see it). */
	uint8_t src[FIELDS_LEN];
	len = build_fields(src, sizeof(src));
	uint8_t *copy = malloc(len);
	CHECK(copy != NULL);
	memcpy(copy, src, len);
	CHECK_RC(kvt_fields_decode(copy, len, &f), 0);
	for (size_t start = 0; start <= len + 9; start++) {
		size_t pos = start, steps = 0;
		const uint8_t *ev;
		uint32_t elen;
		int rc;
		while ((rc = kvt_fields_next_entry(&f, &pos, &ev, &elen)) == 1) {
			CHECK(ev >= copy && ev + elen <= copy + len && pos <= len);
			CHECK(++steps <= len);
		}
		CHECK(rc == 0 || rc == KVT_EBADMSG);
		if (start > len)
			CHECK_RC(rc, KVT_EBADMSG);
	}
	free(copy);
}

TEST(fields_writer)
{
	uint8_t full[FIELDS_LEN], buf[FIELDS_LEN + 32];
	struct kvt_fields_writer w;
	struct kvt_fields f;
	bool at[FIELDS_LEN + 1];
	size_t len = build_fields(full, sizeof(full));

	field_bounds(full, len, at);
	/* Every capacity short of the whole: KVT_EMSGSIZE, nothing written past cap,
	 * and what was kept is a well-formed prefix made of whole fields (an entry
	 * that did not fit is dropped entirely, never cut). */
	for (size_t cap = 0; cap < len; cap++) {
		memset(buf, 0x5c, sizeof(buf));
		kvt_fw_init(&w, buf, cap);
		write_fields(&w);
		CHECK_MSG(w.err == KVT_EMSGSIZE, "cap %zu: err %d", cap, w.err);
		CHECK_MSG(w.len <= cap && at[w.len], "cap %zu: len %zu", cap, w.len);
		CHECK(memcmp(buf, full, w.len) == 0);
		for (size_t i = cap; i < sizeof(buf); i++)
			CHECK_MSG(buf[i] == 0x5c, "cap %zu: byte %zu written", cap, i);
		CHECK_RC(kvt_fields_decode(buf, w.len, &f), 0);
		/* The longest prefix of whole top-level fields that fits. */
		size_t best = 0;
		for (size_t l = 0; l <= cap; l++)
			if (at[l])
				best = l;
		CHECK_EQ(w.len, best);
	}
	kvt_fw_init(&w, buf, len);
	write_fields(&w);
	CHECK(w.err == 0 && w.len == len && memcmp(buf, full, len) == 0);

	/* Once failed, it stays failed and writes nothing more. */
	kvt_fw_init(&w, buf, 10);
	kvt_fw_u64(&w, KVT_TAG_BYTES, 1);
	CHECK(w.err == KVT_EMSGSIZE && w.len == 0);
	kvt_fw_u8(&w, KVT_TAG_TIER, 1);
	size_t m = kvt_fw_begin(&w, KVT_TAG_ENTRY);
	kvt_fw_end(&w, m);
	CHECK(w.err == KVT_EMSGSIZE && w.len == 0);

	/* Misuse: a tag that does not fit 16 bits, bytes from NULL, a made-up mark. */
	kvt_fw_init(&w, buf, sizeof(buf));
	kvt_fw_u8(&w, 0x10000, 1);
	CHECK(w.err == KVT_EINVAL && w.len == 0);
	kvt_fw_init(&w, buf, sizeof(buf));
	kvt_fw_bytes(&w, KVT_TAG_VALUE, NULL, 1);
	CHECK(w.err == KVT_EINVAL && w.len == 0);
	kvt_fw_init(&w, buf, sizeof(buf));
	kvt_fw_u8(&w, KVT_TAG_TIER, 1);
	kvt_fw_end(&w, 100);
	CHECK(w.err == KVT_EINVAL && w.len == 9);
	kvt_fw_init(&w, buf, sizeof(buf));
	kvt_fw_u8(&w, KVT_TAG_TIER, 1);
	kvt_fw_end(&w, 5); /* no header there */
	CHECK(w.err == KVT_EINVAL && w.len == 9);

	/* A value longer than a u32 length can say, even for a counting writer. */
	kvt_fw_init(&w, NULL, SIZE_MAX);
	kvt_fw_bytes(&w, KVT_TAG_VALUE, buf, (size_t)UINT32_MAX + 1);
	CHECK(w.err == KVT_EMSGSIZE && w.len == 0);

	/* An empty entry is 8 bytes; sizes add up as kvt_fw_size says. */
	kvt_fw_init(&w, buf, sizeof(buf));
	m = kvt_fw_begin(&w, KVT_TAG_ENTRY);
	kvt_fw_end(&w, m);
	CHECK(w.err == 0 && w.len == kvt_fw_size(0) && kvt_get32(buf + 4) == 0);
	CHECK_EQ(kvt_fw_size(13), 21);
}

/* ---- mutation loop -------------------------------------------------------- */

static uint64_t rng_state = 0x9e3779b97f4a7c15ull;

static uint64_t rng(void)
{
	/* xorshift64*: deterministic, so a failure reproduces. */
	rng_state ^= rng_state >> 12;
	rng_state ^= rng_state << 25;
	rng_state ^= rng_state >> 27;
	return rng_state * 0x2545f4914f6cdd1dull;
}

/* ---- GPU regions -------------------------------------------------------------- */

/* A CUDA IPC registration of nb buffers and nl layers (layer l in buffer l % nb). */
static int build_gpu_register(uint8_t *out, size_t cap, uint16_t kind, uint16_t nb, uint32_t nl)
{
	struct kvt_gpu_buf_wire bufs[4];
	struct kvt_gpu_layer_wire layers[4];
	struct kvt_gpu_register_req m = {
		.kind = kind, .nbuffers = nb,
		.layout = { .layers = nl, .planes = 2, .heads = 8, .head_dim = 128, .elem_size = 2,
			    .page_tokens = 16, .num_pages = 1000, .plane_stride = -4096,
			    .page_stride = 65536, .token_stride = 2048, .head_stride = 256,
			    .dim_stride = 2, .dtype = KVT_DTYPE_BF16, .layout_id = 7 },
	};
	CHECK(nb <= 4 && nl <= 4);
	for (int i = 0; i < 16; i++)
		m.uuid[i] = (uint8_t)(0xa0 + i);
	for (uint16_t i = 0; i < nb; i++) {
		memset(&bufs[i], 0, sizeof(bufs[i]));
		if (kind == KVT_GPU_KIND_CUDA_IPC)
			memset(bufs[i].handle, 0x11 * (i + 1), KVT_GPU_IPC_HANDLE_SIZE);
		else
			bufs[i].region_id = i + 1u;
		bufs[i].size = (1ull << 32) + i;
	}
	for (uint32_t l = 0; l < nl; l++)
		layers[l] = (struct kvt_gpu_layer_wire){ .buffer = l % nb, .offset = 4096u * l };
	return kvt_gpu_register_req_encode(&m, bufs, layers, out, cap);
}

/* A GPU_PUT (or GET: no parents) of n items over 3 page ids each 1 apart. */
static size_t build_gpu_xfer(uint8_t *out, size_t cap, bool put, uint32_t n)
{
	uint32_t npages = n + 2;
	size_t len = kvt_gpu_xfer_size(n, npages);
	CHECK(len <= cap);
	CHECK_EQ(kvt_gpu_xfer_prefix_encode(n, npages, out, cap), KVT_GPU_XFER_PREFIX);
	for (uint32_t i = 0; i < n; i++) {
		struct kvt_gpu_item_wire it = {
			.key = key_n((uint8_t)(i + 1)), .region_id = 1, .first_token = 5 + i,
			.ntokens = 20, .pages_offset = i, .npages = 3,
		};
		if (put)
			it.parent = key_n((uint8_t)(i + 100));
		kvt_gpu_item_encode(&it, out + KVT_GPU_XFER_PREFIX + (size_t)i * KVT_GPU_ITEM_SIZE);
	}
	uint8_t *pg = out + KVT_GPU_XFER_PREFIX + (size_t)n * KVT_GPU_ITEM_SIZE;
	for (uint32_t j = 0; j < npages; j++)
		kvt_put32(pg + 4 * j, 1000u * j + 3);
	return len;
}

static int dec_gpu_register(const uint8_t *in, size_t len)
{
	struct kvt_gpu_register_req m;
	return kvt_gpu_register_req_decode(in, len, &m);
}

static int dec_gpu_put(const uint8_t *in, size_t len)
{
	struct kvt_gpu_xfer x;
	return kvt_gpu_xfer_decode(in, len, true, 4096, 1 << 20, &x);
}

TEST(gpu_register_roundtrip)
{
	uint8_t buf[1024];
	int n = build_gpu_register(buf, sizeof(buf), KVT_GPU_KIND_CUDA_IPC, 2, 3);
	CHECK_EQ(n, (int)kvt_gpu_register_req_size(2, 3));
	CHECK_EQ(n, 104 + 2 * 80 + 3 * 16);
	struct kvt_gpu_register_req m;
	CHECK_RC(kvt_gpu_register_req_decode(buf, (size_t)n, &m), 0);
	CHECK_EQ(m.kind, KVT_GPU_KIND_CUDA_IPC);
	CHECK_EQ(m.nbuffers, 2);
	CHECK_EQ(m.uuid[0], 0xa0);
	CHECK_EQ(m.uuid[15], 0xaf);
	CHECK_EQ(m.layout.layers, 3);
	CHECK_EQ(m.layout.planes, 2);
	CHECK_EQ(m.layout.heads, 8);
	CHECK_EQ(m.layout.head_dim, 128);
	CHECK_EQ(m.layout.elem_size, 2);
	CHECK_EQ(m.layout.page_tokens, 16);
	CHECK_EQ(m.layout.num_pages, 1000);
	CHECK(m.layout.plane_stride == -4096); /* signed strides survive */
	CHECK_EQ(m.layout.page_stride, 65536);
	CHECK_EQ(m.layout.dim_stride, 2);
	CHECK_EQ(m.layout.dtype, KVT_DTYPE_BF16);
	CHECK_EQ(m.layout.layout_id, 7);
	struct kvt_gpu_buf_wire b;
	kvt_gpu_buf_get(&m, 1, &b);
	CHECK_EQ(b.handle[0], 0x22);
	CHECK_EQ(b.size, (1ull << 32) + 1);
	CHECK_EQ(b.region_id, 0);
	struct kvt_gpu_layer_wire l;
	kvt_gpu_layer_get(&m, 2, &l);
	CHECK_EQ(l.buffer, 0);
	CHECK_EQ(l.offset, 8192);
	/* byte layout: kind, nbuffers, layers at the front, little-endian */
	CHECK_EQ(buf[0], 1);
	CHECK_EQ(buf[2], 2);
	CHECK_EQ(buf[4], 3);
	CHECK_EQ(kvt_get64(buf + 64), (uint64_t)-4096);

	n = build_gpu_register(buf, sizeof(buf), KVT_GPU_KIND_EMULATED, 1, 2);
	CHECK_RC(kvt_gpu_register_req_decode(buf, (size_t)n, &m), 0);
	kvt_gpu_buf_get(&m, 0, &b);
	CHECK_EQ(b.region_id, 1);
	/* the encoder refuses counts the decoder would, and short buffers */
	m.nbuffers = 0;
	CHECK_RC(kvt_gpu_register_req_encode(&m, &b, &l, buf, sizeof(buf)), KVT_EINVAL);
	CHECK_RC(build_gpu_register(buf, 100, KVT_GPU_KIND_CUDA_IPC, 1, 1), KVT_EMSGSIZE);
}

TEST(gpu_register_malformed)
{
	uint8_t buf[1024], bad[1024];
	int n = build_gpu_register(buf, sizeof(buf), KVT_GPU_KIND_CUDA_IPC, 2, 3);
	size_t len = (size_t)n;
	check_truncations(dec_gpu_register, buf, len, KVT_EBADMSG);
	struct {
		size_t off;
		uint8_t val;
		int want;
	} cases[] = {
		{ 0, 0, KVT_EBADMSG },    /* kind 0 */
		{ 0, 3, KVT_EBADMSG },    /* unknown kind */
		{ 2, 0, KVT_EBADMSG },    /* no buffers */
		{ 4, 0, KVT_EBADMSG },    /* no layers */
		{ 10, 1, KVT_ERESERVED }, /* reserved u16 */
		{ 12, 1, KVT_ERESERVED }, /* flags */
		{ 52, 1, KVT_ERESERVED }, /* reserved in the layout */
		{ 104 + 76, 1, KVT_ERESERVED },           /* buffer 0 reserved */
		{ 104 + 72, 5, KVT_ERESERVED },           /* CUDA IPC buffer naming a region */
		{ 104 + 160 + 4, 1, KVT_ERESERVED },      /* layer 0 reserved */
		{ 104 + 160, 2, KVT_EBADMSG },            /* layer 0 names buffer 2 of 2 */
		{ 104 + 160 + 16 + 3, 0x80, KVT_EBADMSG }, /* layer 1 names buffer 2^31 */
	};
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		memcpy(bad, buf, len);
		bad[cases[i].off] = cases[i].val;
		CHECK_MSG(dec_exact(dec_gpu_register, bad, len) == cases[i].want, "case %zu", i);
	}
	/* oversized counts: E2BIG before the length is judged */
	memcpy(bad, buf, len);
	kvt_put16(bad + 2, KVT_GPU_MAX_BUFFERS + 1);
	CHECK_RC(dec_exact(dec_gpu_register, bad, len), KVT_E2BIG);
	memcpy(bad, buf, len);
	kvt_put16(bad + 4, KVT_GPU_MAX_LAYERS + 1);
	CHECK_RC(dec_exact(dec_gpu_register, bad, len), KVT_E2BIG);
	/* a count that disagrees with the length */
	memcpy(bad, buf, len);
	kvt_put16(bad + 2, 3);
	CHECK_RC(dec_exact(dec_gpu_register, bad, len), KVT_EBADMSG);
	/* the largest registration is exactly accepted */
	size_t big = kvt_gpu_register_req_size(KVT_GPU_MAX_BUFFERS, KVT_GPU_MAX_LAYERS);
	uint8_t *mx = calloc(1, big);
	CHECK(mx);
	kvt_put16(mx + 0, KVT_GPU_KIND_CUDA_IPC);
	kvt_put16(mx + 2, KVT_GPU_MAX_BUFFERS);
	kvt_put16(mx + 4, KVT_GPU_MAX_LAYERS);
	CHECK_RC(dec_exact(dec_gpu_register, mx, big), 0);
	free(mx);
	/* an emulated buffer must not carry handle bytes */
	n = build_gpu_register(buf, sizeof(buf), KVT_GPU_KIND_EMULATED, 1, 1);
	buf[104 + 63] = 1;
	CHECK_RC(dec_exact(dec_gpu_register, buf, (size_t)n), KVT_ERESERVED);
}

TEST(gpu_xfer_roundtrip)
{
	uint8_t buf[1024];
	size_t len = build_gpu_xfer(buf, sizeof(buf), true, 3);
	CHECK_EQ(len, 16u + 3 * 56 + 5 * 4);
	struct kvt_gpu_xfer x;
	CHECK_RC(kvt_gpu_xfer_decode(buf, len, true, 3, 5, &x), 0);
	CHECK_EQ(x.count, 3);
	CHECK_EQ(x.npage_ids, 5);
	CHECK(x.items == buf + 16);
	CHECK(x.pages == buf + 16 + 3 * 56);
	CHECK_EQ(kvt_gpu_xfer_page(&x, 4), 4003);
	struct kvt_gpu_item_wire it;
	CHECK_RC(kvt_gpu_item_decode(x.items + 56, true, x.npage_ids, &it), 0);
	CHECK(kvt_key_equal(&it.key, &(kvt_key){ .b = { 0 } }) == false);
	CHECK_EQ(it.region_id, 1);
	CHECK_EQ(it.first_token, 6);
	CHECK_EQ(it.ntokens, 20);
	CHECK_EQ(it.pages_offset, 1);
	CHECK_EQ(it.npages, 3);
	uint8_t back[KVT_GPU_ITEM_SIZE];
	kvt_gpu_item_encode(&it, back);
	CHECK(memcmp(back, x.items + 56, KVT_GPU_ITEM_SIZE) == 0);
	/* GPU_GET: the same without parents; an empty request is fine */
	len = build_gpu_xfer(buf, sizeof(buf), false, 2);
	CHECK_RC(kvt_gpu_xfer_decode(buf, len, false, 2, 4, &x), 0);
	len = build_gpu_xfer(buf, sizeof(buf), false, 0);
	CHECK_RC(kvt_gpu_xfer_decode(buf, len, false, 2, 4, &x), 0);
	CHECK_EQ(x.count, 0);
	CHECK_RC(kvt_gpu_xfer_prefix_encode(1, 1, buf, 15), KVT_EMSGSIZE);
	CHECK_EQ(kvt_gpu_xfer_size(UINT32_MAX, UINT32_MAX),
		 16 + (size_t)UINT32_MAX * 56 + (size_t)UINT32_MAX * 4);
}

TEST(gpu_xfer_malformed)
{
	uint8_t buf[1024], bad[1024];
	struct kvt_gpu_xfer x;
	size_t len = build_gpu_xfer(buf, sizeof(buf), true, 2);
	check_truncations(dec_gpu_put, buf, len, KVT_EBADMSG);
	/* limits: E2BIG for items over max_batch and page ids over max_pages */
	CHECK_RC(kvt_gpu_xfer_decode(buf, len, true, 1, 1 << 20, &x), KVT_E2BIG);
	CHECK_RC(kvt_gpu_xfer_decode(buf, len, true, 4096, 3, &x), KVT_E2BIG);
	CHECK_RC(kvt_gpu_xfer_decode(buf, len, true, 2, 4, &x), 0);
	struct {
		size_t off;
		uint8_t val;
		int want;
	} cases[] = {
		{ 8, 1, KVT_ERESERVED },             /* flags */
		{ 12, 1, KVT_ERESERVED },            /* reserved */
		{ 16 + 52, 1, KVT_ERESERVED },       /* item 0 reserved */
		{ 16 + 56 + 55, 1, KVT_ERESERVED },  /* item 1 reserved */
		{ 16 + 44, 2, KVT_EBADMSG },         /* item 0 pages [2, 5) of 4 */
		{ 16 + 48, 5, KVT_EBADMSG },         /* item 0 npages 5 > 4 */
		{ 16 + 56 + 47, 0xff, KVT_EBADMSG }, /* item 1 offset near 2^32: no overflow */
		{ 0, 3, KVT_EBADMSG },               /* count disagrees with the length */
		{ 4, 5, KVT_EBADMSG },               /* npage_ids disagrees with the length */
	};
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		memcpy(bad, buf, len);
		bad[cases[i].off] = cases[i].val;
		CHECK_MSG(dec_exact(dec_gpu_put, bad, len) == cases[i].want, "case %zu", i);
	}
	/* a GPU_GET item must not carry a parent */
	CHECK_RC(kvt_gpu_xfer_decode(buf, len, false, 4096, 1 << 20, &x), KVT_ERESERVED);
	/* counts that would overflow a 32-bit length still end as E2BIG/EBADMSG */
	memcpy(bad, buf, len);
	kvt_put32(bad + 0, UINT32_MAX);
	kvt_put32(bad + 4, UINT32_MAX);
	CHECK_RC(kvt_gpu_xfer_decode(bad, len, true, UINT32_MAX, UINT32_MAX, &x), KVT_EBADMSG);
	CHECK_RC(kvt_gpu_xfer_decode(bad, len, true, 4096, UINT32_MAX, &x), KVT_E2BIG);
}

#define SEED_MAX 600

struct seed {
	uint8_t b[SEED_MAX];
	size_t len;
};

static void add_frame(struct seed *s, uint16_t op, bool reply, const uint8_t *body, size_t blen)
{
	struct kvt_hdr h = { .magic = KVT_MAGIC, .version = 1, .opcode = op,
			     .flags = reply ? KVT_F_REPLY : 0, .body_len = (uint32_t)blen,
			     .request_id = 0x77 };
	CHECK(KVT_HDR_SIZE + blen <= SEED_MAX);
	kvt_hdr_encode(&h, s->b);
	if (blen)
		memcpy(s->b + KVT_HDR_SIZE, body, blen);
	s->len = KVT_HDR_SIZE + blen;
}

/* One valid frame of every message. */
static size_t build_seeds(struct seed *s)
{
	uint8_t body[SEED_MAX];
	size_t n = 0;
	int len;

	struct kvt_hello_req hq = { .min_version = 1, .max_version = 1, .name = "mut",
				    .name_len = 3 };
	len = kvt_hello_req_encode(&hq, body, sizeof(body));
	add_frame(&s[n++], KVT_OP_HELLO, false, body, (size_t)len);
	struct kvt_hello_rep hp = sample_hello_rep();
	len = kvt_hello_rep_encode(&hp, body, sizeof(body));
	add_frame(&s[n++], KVT_OP_HELLO, true, body, (size_t)len);
	add_frame(&s[n++], KVT_OP_PING, false, NULL, 0);
	struct kvt_register_req rq = { .size = 1 << 20 };
	len = kvt_register_req_encode(&rq, body, sizeof(body));
	add_frame(&s[n++], KVT_OP_REGISTER, false, body, (size_t)len);
	struct kvt_register_rep rp = { .region_id = 3 };
	len = kvt_register_rep_encode(&rp, body, sizeof(body));
	add_frame(&s[n++], KVT_OP_REGISTER, true, body, (size_t)len);
	add_frame(&s[n++], KVT_OP_UNREGISTER, false, body, (size_t)len);
	add_frame(&s[n++], KVT_OP_PUT, false, body, build_put(body, sizeof(body), 2));
	int32_t st[3] = { 0, KVT_ENOSPC, KVT_EDQUOT };
	len = kvt_status_rep_encode(st, 2, body, sizeof(body));
	add_frame(&s[n++], KVT_OP_PUT, true, body, (size_t)len);
	add_frame(&s[n++], KVT_OP_GET, false, body, build_get(body, sizeof(body), 3));
	struct kvt_get_result gr[2] = { { .status = 0, .length = 9, .desc = desc_n(2) },
					{ .status = KVT_ENOBUFS, .length = 99 } };
	len = kvt_get_rep_encode(gr, 2, body, sizeof(body));
	add_frame(&s[n++], KVT_OP_GET, true, body, (size_t)len);
	add_frame(&s[n++], KVT_OP_LOOKUP, false, body, build_keys(body, sizeof(body), 3));
	uint8_t tiers[2] = { 1, 0 };
	len = kvt_lookup_rep_encode(2, tiers, body, sizeof(body));
	add_frame(&s[n++], KVT_OP_LOOKUP, true, body, (size_t)len);
	add_frame(&s[n++], KVT_OP_DELETE, false, body, build_keys(body, sizeof(body), 2));
	struct kvt_hint_params hint = { .duration_ms = 30000, .hint = KVT_HINT_RETAIN };
	CHECK_EQ(kvt_hint_params_encode(&hint, body, sizeof(body)), KVT_HINT_PARAMS_SIZE);
	add_frame(&s[n++], KVT_OP_HINT, false, body,
		  KVT_HINT_PARAMS_SIZE + build_keys(body + 8, sizeof(body) - 8, 2));
	len = kvt_status_rep_encode(st, 3, body, sizeof(body));
	add_frame(&s[n++], KVT_OP_PIN, true, body, (size_t)len);
	add_frame(&s[n++], KVT_OP_STATS, true, body, build_stats(body, sizeof(body)));
	len = kvt_notice_encode("frame timeout", body, sizeof(body));
	add_frame(&s[n++], KVT_OP_NOTICE, true, body, (size_t)len);

	/* Field lists: a CTX_SAVE request, a CTX_LOAD reply, a MEM_LIST reply with two
	 * entries and a hint, a MEM_SEARCH request, CTX_SAVE's KVT_ENOENT body. */
	struct kvt_fields_writer w;
	kvt_key k[2] = { key_n(3), key_n(4) };
	uint32_t toks[2] = { 0x01020304u, 7 };
	kvt_fw_init(&w, body, sizeof(body));
	kvt_fw_bytes(&w, KVT_TAG_NAME, "chat-7", 6);
	kvt_fw_bytes(&w, KVT_TAG_SALT, k[0].b, 16);
	kvt_fw_u64(&w, KVT_TAG_TOKEN_COUNT, 2);
	kvt_fw_bytes(&w, KVT_TAG_KEYS, k, sizeof(k));
	kvt_fw_bytes(&w, KVT_TAG_TOKENS, toks, sizeof(toks));
	kvt_fw_bytes(&w, KVT_TAG_METADATA, "m", 1);
	kvt_fw_u32(&w, KVT_TAG_TTL_S, 3600);
	CHECK(w.err == 0);
	add_frame(&s[n++], KVT_OP_CTX_SAVE, false, body, w.len);
	kvt_fw_init(&w, body, sizeof(body));
	kvt_fw_bytes(&w, KVT_TAG_NAME, "chat-7", 6);
	kvt_fw_bytes(&w, KVT_TAG_SALT, k[1].b, 16);
	kvt_fw_u64(&w, KVT_TAG_TOKEN_COUNT, 32);
	kvt_fw_bytes(&w, KVT_TAG_KEYS, k, sizeof(k));
	kvt_fw_bytes(&w, KVT_TAG_TIERS, "\x01\xff", 2);
	kvt_fw_u32(&w, KVT_TAG_RESIDENT, 1);
	kvt_fw_u64(&w, KVT_TAG_BYTES, 1 << 20);
	kvt_fw_u64(&w, KVT_TAG_CREATED_MS, 1700000000000ull);
	kvt_fw_u64(&w, KVT_TAG_EXPIRES_MS, 0);
	CHECK(w.err == 0);
	add_frame(&s[n++], KVT_OP_CTX_LOAD, true, body, w.len);
	kvt_fw_init(&w, body, sizeof(body));
	for (int i = 0; i < 2; i++) {
		size_t m = kvt_fw_begin(&w, KVT_TAG_ENTRY);
		kvt_fw_bytes(&w, KVT_TAG_NS, "agent", 5);
		kvt_fw_bytes(&w, KVT_TAG_KEY, i ? "b" : "a", 1);
		kvt_fw_bytes(&w, KVT_TAG_VALUE, "val", 3);
		kvt_fw_bytes(&w, KVT_TAG_EMBEDDING, toks, sizeof(toks));
		kvt_fw_u64(&w, KVT_TAG_CREATED_MS, 1);
		kvt_fw_u64(&w, KVT_TAG_UPDATED_MS, 2);
		kvt_fw_u64(&w, KVT_TAG_EXPIRES_MS, 0);
		kvt_fw_end(&w, m);
	}
	kvt_fw_bytes(&w, 0x8001, "h", 1);
	kvt_fw_u8(&w, KVT_TAG_MORE, 1);
	CHECK(w.err == 0);
	add_frame(&s[n++], KVT_OP_MEM_LIST, true, body, w.len);
	kvt_fw_init(&w, body, sizeof(body));
	kvt_fw_bytes(&w, KVT_TAG_PREFIX, "ag", 2);
	kvt_fw_bytes(&w, KVT_TAG_EMBEDDING, toks, sizeof(toks));
	kvt_fw_u32(&w, KVT_TAG_K, 10);
	CHECK(w.err == 0);
	add_frame(&s[n++], KVT_OP_MEM_SEARCH, false, body, w.len);
	kvt_fw_init(&w, body, sizeof(body));
	kvt_fw_u32(&w, KVT_TAG_MISSING, 1);
	add_frame(&s[n++], KVT_OP_CTX_SAVE, true, body, w.len);

	/* GPU regions: CUDA IPC and emulated registrations, GPU_PUT and GPU_GET. */
	len = build_gpu_register(body, sizeof(body), KVT_GPU_KIND_CUDA_IPC, 2, 3);
	add_frame(&s[n++], KVT_OP_GPU_REGION_REGISTER, false, body, (size_t)len);
	len = build_gpu_register(body, sizeof(body), KVT_GPU_KIND_EMULATED, 1, 2);
	add_frame(&s[n++], KVT_OP_GPU_REGION_REGISTER, false, body, (size_t)len);
	add_frame(&s[n++], KVT_OP_GPU_PUT, false, body, build_gpu_xfer(body, sizeof(body), true, 2));
	add_frame(&s[n++], KVT_OP_GPU_GET, false, body, build_gpu_xfer(body, sizeof(body), false, 3));
	return n;
}

static void mutate(uint8_t *b, size_t *len, size_t cap)
{
	static const uint32_t interesting[] = { 0, 1, 2, 3, 8, 0x7f, 0x80, 0xff, 0x100,
						0xffff, 0x10000, 0x7fffffff, 0x80000000u,
						0xffffffffu };
	int steps = 1 + (int)(rng() % 4);

	for (int s = 0; s < steps; s++) {
		size_t l = *len;
		switch (rng() % 7) {
		case 0: /* flip a bit */
			if (l)
				b[rng() % l] ^= (uint8_t)(1u << (rng() % 8));
			break;
		case 1: /* random byte */
			if (l)
				b[rng() % l] = (uint8_t)rng();
			break;
		case 2: /* interesting u32 / u16 at any offset */
			if (l >= 4) {
				uint32_t v = interesting[rng() % (sizeof(interesting) /
								   sizeof(interesting[0]))];
				size_t off = rng() % (l - 3);
				if (rng() & 1)
					kvt_put32(b + off, v);
				else
					kvt_put16(b + off, (uint16_t)v);
			}
			break;
		case 3: /* truncate */
			*len = l ? rng() % l : 0;
			break;
		case 4: /* append */
		{
			size_t add = 1 + rng() % 16;
			if (l + add > cap)
				add = cap - l;
			for (size_t i = 0; i < add; i++)
				b[l + i] = (uint8_t)rng();
			*len = l + add;
			break;
		}
		case 5: /* nudge a count or length field by one */
			if (l >= 4) {
				size_t off = rng() % (l - 3);
				kvt_put32(b + off, kvt_get32(b + off) + (rng() & 1 ? 1u : -1u));
			}
			break;
		default: /* drop one byte from the middle */
			if (l) {
				size_t off = rng() % l;
				memmove(b + off, b + off + 1, l - off - 1);
				*len = l - 1;
			}
			break;
		}
	}
}

TEST(mutation_loop)
{
	struct seed seeds[32];
	uint8_t work[SEED_MAX + 64];
	size_t nseeds = build_seeds(seeds);
	const long iters = 200000;

	/* The seeds themselves are valid, and the oracle agrees. */
	for (size_t i = 0; i < nseeds; i++) {
		uint8_t *copy = malloc(seeds[i].len);
		CHECK(copy != NULL);
		memcpy(copy, seeds[i].b, seeds[i].len);
		fuzz_frame(copy, seeds[i].len);
		free(copy);
	}
	memset(fuzz_ok, 0, sizeof(fuzz_ok));
	memset(fuzz_err, 0, sizeof(fuzz_err));

	for (long it = 0; it < iters; it++) {
		const struct seed *s = &seeds[rng() % nseeds];
		size_t len = s->len;
		memcpy(work, s->b, len);
		/* One in eight mutates only the header, so bodies still decode. */
		if (rng() % 8) {
			mutate(work, &len, sizeof(work));
		} else {
			size_t hlen = KVT_HDR_SIZE;
			mutate(work, &hlen, KVT_HDR_SIZE);
			if (hlen < KVT_HDR_SIZE)
				len = hlen;
		}
		/* Exact-size heap copy: any read past the end is an ASan error. */
		uint8_t *copy = malloc(len ? len : 1);
		CHECK(copy != NULL);
		memcpy(copy, work, len);
		g_iter = it;
		if (it % 16 == 0)
			fuzz_bodies(copy, len);
		else
			fuzz_frame(copy, len);
		free(copy);
	}
	g_iter = -1;

	/* A loop that never reaches a decoder's accept or reject path proves nothing. */
	static const char *const names[FZ_COUNT] = {
		"hdr",	     "hello_req", "hello_rep", "register_req", "register_rep",
		"unregister_req", "batch_put", "batch_get", "batch_keys", "put_item",
		"get_item",  "status_rep", "get_rep",	"lookup_rep", "stats_rep",
		"notice",    "fields",	  "fields_entry", "gpu_register", "gpu_xfer",
		"params_batch",
	};
	for (int d = 0; d < FZ_COUNT; d++) {
		test_log("%-15s accepted %8lu refused %8lu", names[d], fuzz_ok[d], fuzz_err[d]);
		CHECK_MSG(fuzz_ok[d] > 0 && fuzz_err[d] > 0,
			  "decoder %s: %lu accepted, %lu refused", names[d], fuzz_ok[d],
			  fuzz_err[d]);
	}
}

TEST(prefetch_round_trip_and_malformed)
{
	uint8_t buf[KVT_PREFETCH_PARAMS_SIZE + 8 + 2 * KVT_KEY_SIZE];
	struct kvt_prefetch_params p = { .deadline_ms = 1234, .tier = KVT_TIER_HOST }, q;
	CHECK_EQ(kvt_prefetch_params_encode(&p, buf, sizeof(buf)), KVT_PREFETCH_PARAMS_SIZE);
	CHECK_EQ(kvt_batch_prefix_encode(2, buf + 8, sizeof(buf) - 8), 8);
	memset(buf + 16, 0xab, 2 * KVT_KEY_SIZE);
	struct kvt_batch b;
	CHECK_RC(kvt_prefetch_req_decode(buf, sizeof(buf), 16, &q, &b), 0);
	CHECK_EQ(q.deadline_ms, 1234);
	CHECK_EQ(q.tier, KVT_TIER_HOST);
	CHECK_EQ(b.count, 2);
	CHECK(b.items == buf + 16);
	/* every shorter body is refused */
	for (size_t n = 0; n < sizeof(buf); n++)
		CHECK(kvt_prefetch_req_decode(buf, n, 16, &q, &b) < 0);
	CHECK_RC(kvt_prefetch_req_decode(buf, sizeof(buf), 1, &q, &b), KVT_E2BIG);
	buf[6] = 1;
	CHECK_RC(kvt_prefetch_req_decode(buf, sizeof(buf), 16, &q, &b), KVT_ERESERVED);
	buf[6] = 0;
	buf[4] = 3;
	CHECK_RC(kvt_prefetch_req_decode(buf, sizeof(buf), 16, &q, &b), KVT_EBADMSG);

	uint8_t tiers[3] = { KVT_TIER_HOST, KVT_TIER_NVME, KVT_TIER_NONE }, out[3];
	uint8_t rep[16];
	CHECK_EQ(kvt_prefetch_rep_encode(tiers, 3, rep, sizeof(rep)), 11);
	CHECK_RC(kvt_prefetch_rep_decode(rep, 11, 3, out), 0);
	CHECK(memcmp(tiers, out, 3) == 0);
	CHECK_RC(kvt_prefetch_rep_decode(rep, 11, 2, out), KVT_EBADMSG);
	CHECK_RC(kvt_prefetch_rep_decode(rep, 10, 3, out), KVT_EBADMSG);
	rep[9] = 7; /* not a tier */
	CHECK_RC(kvt_prefetch_rep_decode(rep, 11, 3, out), KVT_EBADMSG);
	rep[9] = 1;
	rep[4] = 1; /* reserved */
	CHECK_RC(kvt_prefetch_rep_decode(rep, 11, 3, out), KVT_ERESERVED);
	CHECK_EQ(kvt_prefetch_rep_encode(tiers, 3, rep, 10), KVT_EMSGSIZE);
}

TEST(hint_round_trip_and_malformed)
{
	uint8_t buf[KVT_HINT_PARAMS_SIZE + 8 + KVT_KEY_SIZE];
	struct kvt_hint_params p = { .duration_ms = 60000, .hint = KVT_HINT_RETAIN }, q;
	CHECK_EQ(kvt_hint_params_encode(&p, buf, sizeof(buf)), KVT_HINT_PARAMS_SIZE);
	CHECK_EQ(kvt_hint_params_encode(&p, buf, KVT_HINT_PARAMS_SIZE - 1), KVT_EMSGSIZE);
	CHECK_EQ(kvt_batch_prefix_encode(1, buf + 8, sizeof(buf) - 8), 8);
	memset(buf + 16, 0xcd, KVT_KEY_SIZE);
	struct kvt_batch b;
	CHECK_RC(kvt_hint_req_decode(buf, sizeof(buf), 16, &q, &b), 0);
	CHECK_EQ(q.duration_ms, 60000);
	CHECK_EQ(q.hint, KVT_HINT_RETAIN);
	CHECK_EQ(b.count, 1);
	CHECK(b.items == buf + 16);
	for (size_t n = 0; n < sizeof(buf); n++)
		CHECK(kvt_hint_req_decode(buf, n, 16, &q, &b) < 0);
	CHECK_RC(kvt_hint_req_decode(buf, sizeof(buf), 0, &q, &b), KVT_E2BIG); /* over max_batch */
	CHECK_RC(kvt_hint_req_decode(buf, sizeof(buf), 16, NULL, &b), KVT_EBADMSG);
	buf[7] = 1;
	CHECK_RC(kvt_hint_req_decode(buf, sizeof(buf), 16, &q, &b), KVT_ERESERVED);
	buf[7] = 0;
	buf[4] = KVT_HINT_RELEASE + 1;
	CHECK_RC(kvt_hint_req_decode(buf, sizeof(buf), 16, &q, &b), KVT_EBADMSG);
	buf[4] = KVT_HINT_RELEASE;
	CHECK_RC(kvt_hint_req_decode(buf, sizeof(buf), 16, &q, &b), 0);
	CHECK_EQ(q.hint, KVT_HINT_RELEASE);
	CHECK(strcmp(kvt_op_name(KVT_OP_HINT), "HINT") == 0);
}

TEST_MAIN(gpu_register_roundtrip, gpu_register_malformed, gpu_xfer_roundtrip, gpu_xfer_malformed,
	  hdr_roundtrip, hdr_bytes_are_little_endian, hdr_bad_magic_still_fills_header,
	  hdr_bad_version, hdr_reserved_nonzero, hdr_body_len_over_max,
	  hdr_flags_must_understand, op_names, hello_req_roundtrip, hello_req_malformed,
	  hello_rep_roundtrip, hello_rep_malformed, register_roundtrip, register_malformed,
	  put_batch_roundtrip, get_batch_roundtrip, key_batch_roundtrip, batch_malformed,
	  batch_count_over_max, batch_size_overflow, item_reserved_fields,
	  status_rep_roundtrip, status_rep_malformed, get_rep_roundtrip, get_rep_malformed,
	  lookup_rep_roundtrip, lookup_rep_malformed, stats_roundtrip, stats_writer_limits,
	  stats_malformed, notice_roundtrip, notice_malformed,
	  encoders_leave_short_buffers_alone, mutation_loop, prefetch_round_trip_and_malformed,
	  hint_round_trip_and_malformed,
	  fields_roundtrip, fields_malformed, fields_tags, fields_getters, fields_writer)
