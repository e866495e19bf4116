/*
 * test_key.c - unit tests for key derivation (common/key.c) and the error table
 * (common/errors.c): fixed known answers, so any change to KVT_KEY_SCHEME 1 fails
 * here; an independent one-shot hash of the documented byte encoding; every input
 * changes the key; argument errors; formatting; every error code's name and text.
 */
#include "test.h"

#include <errno.h>
#include <limits.h>

#include "kvtier.h"

/* The reference hashes the documented encoding in one shot, independently of
 * key.c's streaming. */
#define XXH_INLINE_ALL
#include <xxhash.h>

/* ---- helpers ------------------------------------------------------------- */

static const char *hex(const kvt_key *k)
{
	static char buf[4][33];
	static int next;
	char *b = buf[next++ % 4];
	return kvt_key_format(k, b);
}

#define CHECK_KEY_HEX(k, want)                                                        \
	CHECK_MSG(strcmp(hex(k), want) == 0, "%s is %s, want %s", #k, hex(k), want)

static kvt_salt_params llama(void)
{
	kvt_salt_params p = {
		.model_id = "meta-llama/Llama-3.1-8B-Instruct",
		.weights_version = "main",
		.kv_dtype = "bf16",
		.layout = "vllm-nhd",
		.adapter = "",
		.tp_rank = 0,
		.tp_size = 1,
		.block_tokens = 16,
	};
	return p;
}

static kvt_salt_params qwen(void)
{
	kvt_salt_params p = {
		.model_id = "Qwen/Qwen2.5-72B",
		.weights_version = "sha256:0f3a",
		.kv_dtype = "fp8_e4m3",
		.layout = "sglang-mla",
		.adapter = "lora-7",
		.tp_rank = 3,
		.tp_size = 8,
		.block_tokens = 64,
	};
	return p;
}

static kvt_key salt_of(const kvt_salt_params *p)
{
	kvt_key k;
	CHECK_RC(kvt_key_salt(p, &k), 0);
	return k;
}

/* Deterministic token ids that use all 32 bits. */
static uint32_t tokens[5000];

static void fill_tokens(void)
{
	for (uint32_t i = 0; i < 5000; i++)
		tokens[i] = i * 2654435761u;
}

/* ---- the documented encoding, built by hand -------------------------------- */

struct enc {
	uint8_t b[32768];
	size_t n;
};

static void enc_u32(struct enc *e, uint32_t v)
{
	CHECK(e->n + 4 <= sizeof(e->b));
	for (int i = 0; i < 4; i++)
		e->b[e->n++] = (uint8_t)(v >> (8 * i));
}

static void enc_u64(struct enc *e, uint64_t v)
{
	enc_u32(e, (uint32_t)v);
	enc_u32(e, (uint32_t)(v >> 32));
}

static void enc_bytes(struct enc *e, const void *p, size_t n)
{
	CHECK(e->n + n <= sizeof(e->b));
	if (n)
		memcpy(e->b + e->n, p, n);
	e->n += n;
}

static void enc_str(struct enc *e, const char *s)
{
	size_t n = s ? strlen(s) : 0;
	enc_u32(e, (uint32_t)n);
	enc_bytes(e, s, n);
}

/* XXH3-128 (seed 0) of the bytes, as the canonical big-endian 16 bytes. */
static kvt_key ref_hash(const struct enc *e)
{
	XXH128_canonical_t c;
	kvt_key k;
	XXH128_canonicalFromHash(&c, XXH3_128bits(e->b, e->n));
	memcpy(k.b, c.digest, 16);
	return k;
}

static kvt_key ref_salt(const kvt_salt_params *p)
{
	static struct enc e;
	e.n = 0;
	enc_str(&e, "kvtier-salt-v1");
	enc_str(&e, p->model_id);
	enc_str(&e, p->weights_version);
	enc_str(&e, p->kv_dtype);
	enc_str(&e, p->layout);
	enc_str(&e, p->adapter);
	enc_u32(&e, p->tp_rank);
	enc_u32(&e, p->tp_size ? p->tp_size : 1);
	enc_u32(&e, p->block_tokens);
	return ref_hash(&e);
}

static kvt_key ref_chain(const kvt_key *salt, const kvt_key *parent, const uint32_t *t, size_t n)
{
	static struct enc e;
	static const kvt_key zero;
	e.n = 0;
	enc_str(&e, "kvtier-chain-v1");
	enc_bytes(&e, salt->b, 16);
	enc_bytes(&e, (parent ? parent : &zero)->b, 16);
	enc_u64(&e, n);
	for (size_t i = 0; i < n; i++)
		enc_u32(&e, t[i]);
	return ref_hash(&e);
}

/* ---- known answers ---------------------------------------------------------- */

/* Computed once with KVT_KEY_SCHEME 1 and frozen: if one of these changes, every
 * key a deployed engine ever stored becomes unreachable. Bump the scheme instead. */
TEST(salt_known_answers)
{
	kvt_salt_params p = llama();
	kvt_key k = salt_of(&p);
	CHECK_KEY_HEX(&k, "d85b2079251458da1e5ae2c4d39d5e67");

	kvt_salt_params m = { .model_id = "m", .block_tokens = 1 };
	k = salt_of(&m);
	CHECK_KEY_HEX(&k, "cdb9cd6524e9aa4a72d0f195c36181ed");

	p = qwen();
	k = salt_of(&p);
	CHECK_KEY_HEX(&k, "719ee5074c06d2661c2df99f705db4cc");
}

TEST(chain_known_answers)
{
	kvt_salt_params p = llama(), q = qwen();
	kvt_key s1 = salt_of(&p), s3 = salt_of(&q), c1, c2, c3, c4;

	fill_tokens();
	kvt_key_chain(&s1, NULL, tokens, 16, &c1);
	CHECK_KEY_HEX(&c1, "6b4f385e0fb96a01b4ce0dde41e06791");
	kvt_key_chain(&s1, &c1, tokens + 16, 16, &c2);
	CHECK_KEY_HEX(&c2, "aee89a18f9d66c2cf2f6742daaaf712e");
	kvt_key_chain(&s1, NULL, NULL, 0, &c3);
	CHECK_KEY_HEX(&c3, "266e47ee939b33e762d9c920a9fd5f3e");
	kvt_key_chain(&s3, &c2, tokens, 1000, &c4);
	CHECK_KEY_HEX(&c4, "87872a18b1143ae131766741e3d6b2ca");
}

/* The encoding in docs/PROTOCOL.md, hashed in one go, gives the same keys. */
TEST(salt_matches_reference_encoding)
{
	kvt_salt_params ps[4] = { llama(), qwen(), { .model_id = "m", .block_tokens = 1 },
				  llama() };
	ps[3].weights_version = NULL;
	ps[3].adapter = "x";
	ps[3].tp_size = 0;
	for (int i = 0; i < 4; i++) {
		kvt_key k = salt_of(&ps[i]), r = ref_salt(&ps[i]);
		CHECK_MSG(kvt_key_equal(&k, &r), "params %d: %s vs reference %s", i, hex(&k),
			  hex(&r));
	}
}

TEST(chain_matches_reference_encoding)
{
	/* Around the 256-token chunk key.c converts at a time, and far past it. */
	static const size_t counts[] = { 0, 1, 2, 16, 255, 256, 257, 511, 512, 513, 1000, 5000 };
	kvt_salt_params p = llama();
	kvt_key s = salt_of(&p), parent, k, r;

	fill_tokens();
	memset(parent.b, 0x5a, 16);
	for (size_t i = 0; i < sizeof(counts) / sizeof(counts[0]); i++) {
		kvt_key_chain(&s, &parent, tokens, counts[i], &k);
		r = ref_chain(&s, &parent, tokens, counts[i]);
		CHECK_MSG(kvt_key_equal(&k, &r), "%zu tokens: %s vs reference %s", counts[i],
			  hex(&k), hex(&r));
		kvt_key_chain(&s, NULL, tokens, counts[i], &k);
		r = ref_chain(&s, NULL, tokens, counts[i]);
		CHECK(kvt_key_equal(&k, &r));
	}
}

/* ---- every input matters ------------------------------------------------------ */

TEST(salt_every_field_matters)
{
	kvt_salt_params base = qwen(), p;
	kvt_key ks[16];
	int n = 0;

	ks[n++] = salt_of(&base);
#define VARY(stmt)                      \
	do {                            \
		p = base;               \
		stmt;                   \
		ks[n++] = salt_of(&p);  \
	} while (0)
	VARY(p.model_id = "Qwen/Qwen2.5-72B-Instruct");
	VARY(p.weights_version = "sha256:0f3b");
	VARY(p.kv_dtype = "bf16");
	VARY(p.layout = "sglang-mha");
	VARY(p.adapter = "");
	VARY(p.tp_rank = 2);
	VARY(p.tp_size = 16);
	VARY(p.block_tokens = 32);
	/* Moving a byte across a field boundary is a different salt too. */
	VARY((p.kv_dtype = "fp8_e4m", p.layout = "3sglang-mla"));
	VARY((p.adapter = "lora-", p.tp_rank = 7));
	VARY((p.weights_version = "", p.kv_dtype = "sha256:0f3afp8_e4m3"));
#undef VARY
	for (int i = 0; i < n; i++)
		for (int j = i + 1; j < n; j++)
			CHECK_MSG(!kvt_key_equal(&ks[i], &ks[j]), "variants %d and %d collide", i,
				  j);
	/* and a change to nothing changes nothing */
	p = base;
	kvt_key again = salt_of(&p);
	CHECK(kvt_key_equal(&again, &ks[0]));
}

TEST(salt_null_and_defaults)
{
	kvt_salt_params a = { .model_id = "m", .block_tokens = 8 };
	kvt_salt_params b = { .model_id = "m", .weights_version = "", .kv_dtype = "",
			      .layout = "", .adapter = "", .tp_size = 1, .block_tokens = 8 };
	kvt_key ka = salt_of(&a), kb = salt_of(&b);

	/* NULL strings are "", tp_size 0 is 1 */
	CHECK(kvt_key_equal(&ka, &kb));
	b.tp_size = 2;
	kb = salt_of(&b);
	CHECK(!kvt_key_equal(&ka, &kb));
	CHECK(!kvt_key_is_zero(&ka));
}

TEST(salt_errors)
{
	kvt_salt_params p = llama();
	kvt_key out, untouched;

	memset(untouched.b, 0xab, 16);
	out = untouched;
	CHECK_RC(kvt_key_salt(NULL, &out), KVT_EINVAL);
	CHECK_RC(kvt_key_salt(&p, NULL), KVT_EINVAL);
	p.model_id = NULL;
	CHECK_RC(kvt_key_salt(&p, &out), KVT_EINVAL);
	p.model_id = "";
	CHECK_RC(kvt_key_salt(&p, &out), KVT_EINVAL);
	p = llama();
	p.block_tokens = 0;
	CHECK_RC(kvt_key_salt(&p, &out), KVT_EINVAL);
	p = llama();
	p.tp_rank = 1; /* rank outside the world of size 1 */
	CHECK_RC(kvt_key_salt(&p, &out), KVT_EINVAL);
	p.tp_size = 0;
	CHECK_RC(kvt_key_salt(&p, &out), KVT_EINVAL);
	p.tp_size = 2;
	CHECK_RC(kvt_key_salt(&p, &out), 0);
	p.tp_rank = 2;
	CHECK_RC(kvt_key_salt(&p, &untouched), KVT_EINVAL);
	/* nothing written on failure */
	for (int i = 0; i < 16; i++)
		CHECK_EQ(untouched.b[i], 0xab);
}

TEST(chain_inputs_matter)
{
	kvt_salt_params p = llama(), q = llama();
	q.block_tokens = 32;
	kvt_key s = salt_of(&p), s2 = salt_of(&q), parent, base, k, zero;
	uint32_t t[64];

	memset(&zero, 0, sizeof(zero));
	memset(parent.b, 0x11, 16);
	for (int i = 0; i < 64; i++)
		t[i] = (uint32_t)(i + 1) * 7919u;
	kvt_key_chain(&s, &parent, t, 64, &base);

	kvt_key_chain(&s2, &parent, t, 64, &k);
	CHECK(!kvt_key_equal(&k, &base));
	kvt_key_chain(&s, NULL, t, 64, &k);
	CHECK(!kvt_key_equal(&k, &base));
	for (int b = 0; b < 16; b++) { /* every parent byte */
		kvt_key p2 = parent;
		p2.b[b] ^= 1;
		kvt_key_chain(&s, &p2, t, 64, &k);
		CHECK_MSG(!kvt_key_equal(&k, &base), "parent byte %d ignored", b);
	}
	for (int i = 0; i < 64; i++) { /* every token, in its low and high byte */
		uint32_t saved = t[i];
		t[i] ^= 1;
		kvt_key_chain(&s, &parent, t, 64, &k);
		CHECK_MSG(!kvt_key_equal(&k, &base), "token %d low bit ignored", i);
		t[i] = saved ^ 0x80000000u;
		kvt_key_chain(&s, &parent, t, 64, &k);
		CHECK_MSG(!kvt_key_equal(&k, &base), "token %d high bit ignored", i);
		t[i] = saved;
	}
	kvt_key_chain(&s, &parent, t, 63, &k); /* fewer tokens */
	CHECK(!kvt_key_equal(&k, &base));
	uint32_t sw = t[0]; /* order */
	t[0] = t[1];
	t[1] = sw;
	kvt_key_chain(&s, &parent, t, 64, &k);
	CHECK(!kvt_key_equal(&k, &base));
	t[1] = t[0];
	t[0] = sw;
	kvt_key_chain(&s, &parent, t, 64, &k);
	CHECK(kvt_key_equal(&k, &base)); /* deterministic */

	/* NULL parent is the zero key; NULL salt is the zero salt. */
	kvt_key a, b;
	kvt_key_chain(&s, NULL, t, 8, &a);
	kvt_key_chain(&s, &zero, t, 8, &b);
	CHECK(kvt_key_equal(&a, &b));
	kvt_key_chain(NULL, NULL, t, 8, &a);
	kvt_key_chain(&zero, &zero, t, 8, &b);
	CHECK(kvt_key_equal(&a, &b));
	/* No tokens: NULL or not, the same key, and never the zero key. */
	kvt_key_chain(&s, &parent, NULL, 0, &a);
	kvt_key_chain(&s, &parent, t, 0, &b);
	CHECK(kvt_key_equal(&a, &b));
	CHECK(!kvt_key_is_zero(&a));
	/* A chain split differently is a different chain: [t0 t1] != [t0] then [t1]. */
	kvt_key one, two;
	kvt_key_chain(&s, NULL, t, 2, &two);
	kvt_key_chain(&s, NULL, t, 1, &one);
	kvt_key_chain(&s, &one, t + 1, 1, &k);
	CHECK(!kvt_key_equal(&k, &two));
	/* salt and chain hash different domains */
	kvt_key_chain(&s, NULL, NULL, 0, &k);
	CHECK(!kvt_key_equal(&k, &s));
	/* out may alias an input */
	k = parent;
	kvt_key_chain(&s, &k, t, 64, &k);
	CHECK(kvt_key_equal(&k, &base));
	kvt_key_chain(&s, &parent, t, 64, NULL); /* NULL out: nothing to do, no crash */
}

/* ---- helpers ------------------------------------------------------------------ */

TEST(key_zero_and_equal)
{
	kvt_key z, a, b;

	memset(&z, 0, sizeof(z));
	CHECK(kvt_key_is_zero(&z));
	for (int i = 0; i < 16; i++) {
		a = z;
		a.b[i] = 0x80;
		CHECK_MSG(!kvt_key_is_zero(&a), "byte %d", i);
		CHECK(!kvt_key_equal(&a, &z));
		b = a;
		CHECK(kvt_key_equal(&a, &b));
		b.b[15 - i] ^= 1;
		CHECK(!kvt_key_equal(&a, &b));
	}
	CHECK(kvt_key_equal(&z, &z));
}

TEST(key_format)
{
	kvt_key k;
	char buf[40];

	for (int i = 0; i < 16; i++)
		k.b[i] = (uint8_t)(i * 0x11);
	memset(buf, '#', sizeof(buf));
	CHECK(kvt_key_format(&k, buf) == buf);
	CHECK(strcmp(buf, "00112233445566778899aabbccddeeff") == 0);
	CHECK_EQ(buf[32], '\0');
	CHECK_EQ(buf[33], '#'); /* exactly 33 bytes written */
	memset(&k, 0xff, sizeof(k));
	CHECK(strcmp(kvt_key_format(&k, buf), "ffffffffffffffffffffffffffffffff") == 0);
	memset(&k, 0, sizeof(k));
	CHECK(strcmp(kvt_key_format(&k, buf), "00000000000000000000000000000000") == 0);
}

/* ---- errors and version ----------------------------------------------------------- */

TEST(error_names_and_messages)
{
	static const struct {
		int code;
		const char *name, *msg;
	} table[] = {
#define ROW_(name, value, msg) { value, #name, msg },
		KVT_ERRNO_MAP(ROW_)
#undef ROW_
	};
	size_t n = sizeof(table) / sizeof(table[0]);

	for (size_t i = 0; i < n; i++) {
		CHECK_MSG(strcmp(kvt_errname(table[i].code), table[i].name) == 0, "%d: %s vs %s",
			  table[i].code, kvt_errname(table[i].code), table[i].name);
		CHECK_MSG(strcmp(kvt_strerror(table[i].code), table[i].msg) == 0, "%d: %s",
			  table[i].code, kvt_strerror(table[i].code));
		CHECK(table[i].code <= 0);
		for (size_t j = i + 1; j < n; j++)
			CHECK_MSG(table[i].code != table[j].code, "%s and %s share %d",
				  table[i].name, table[j].name, table[i].code);
	}
	/* spot checks written out by hand, independent of the table macro */
	CHECK(strcmp(kvt_errname(0), "OK") == 0);
	CHECK(strcmp(kvt_strerror(0), "success") == 0);
	CHECK(strcmp(kvt_errname(-2), "ENOENT") == 0);
	CHECK(strcmp(kvt_errname(-1001), "EBADMAGIC") == 0);
	CHECK(strcmp(kvt_errname(-1018), "ETICKET") == 0);
	CHECK(strcmp(kvt_errname(-1019), "ENOGPU") == 0);
	CHECK(strcmp(kvt_errname(-1020), "EREFERENCED") == 0);
	CHECK(strcmp(kvt_errname(-19), "ENODEV") == 0);
	CHECK(strcmp(kvt_strerror(-1014), "reserved field is not zero") == 0);

	static const int unknown[] = { 1, 2, 22, -3, -6, -999, -1000, -1021, -2000,
				       INT_MIN, INT_MAX };
	for (size_t i = 0; i < sizeof(unknown) / sizeof(unknown[0]); i++) {
		CHECK_MSG(strcmp(kvt_errname(unknown[i]), "UNKNOWN") == 0, "%d", unknown[i]);
		CHECK_MSG(strcmp(kvt_strerror(unknown[i]), "unknown error") == 0, "%d",
			  unknown[i]);
	}
}

/* Codes that mean what an errno means carry Linux's value; the rest live at -1000
 * and below. */
TEST(error_codes_match_errno)
{
	static const struct {
		int kvt, sys;
	} same[] = {
		{ KVT_EPERM, EPERM },	      { KVT_ENOENT, ENOENT },	  { KVT_EINTR, EINTR },
		{ KVT_EIO, EIO },	      { KVT_E2BIG, E2BIG },	  { KVT_EBADF, EBADF },
		{ KVT_EAGAIN, EAGAIN },	      { KVT_ENOMEM, ENOMEM },	  { KVT_EACCES, EACCES },
		{ KVT_EBUSY, EBUSY },	      { KVT_EEXIST, EEXIST },	  { KVT_EINVAL, EINVAL },
		{ KVT_EMFILE, EMFILE },	      { KVT_EFBIG, EFBIG },	  { KVT_ENOSPC, ENOSPC },
		{ KVT_ERANGE, ERANGE },	      { KVT_ENOSYS, ENOSYS },	  { KVT_EPROTO, EPROTO },
		{ KVT_EBADMSG, EBADMSG },     { KVT_EMSGSIZE, EMSGSIZE },
		{ KVT_EOPNOTSUPP, EOPNOTSUPP }, { KVT_ECONNRESET, ECONNRESET },
		{ KVT_ENOBUFS, ENOBUFS },     { KVT_ETIMEDOUT, ETIMEDOUT },
		{ KVT_ECONNREFUSED, ECONNREFUSED }, { KVT_EDQUOT, EDQUOT },
		{ KVT_ECANCELED, ECANCELED }, { KVT_ENODEV, ENODEV },
	};
	for (size_t i = 0; i < sizeof(same) / sizeof(same[0]); i++)
		CHECK_MSG(same[i].kvt == -same[i].sys, "%s is %d, errno says %d",
			  kvt_errname(same[i].kvt), same[i].kvt, -same[i].sys);
	CHECK(KVT_EBADMAGIC <= -1000 && KVT_ETICKET <= -1000 && KVT_ENOGPU <= -1000);
}

TEST(version_string)
{
	char want[32];

	snprintf(want, sizeof(want), "%d.%d.%d", KVT_VERSION_MAJOR, KVT_VERSION_MINOR,
		 KVT_VERSION_PATCH);
	CHECK(strcmp(kvt_version(), KVT_VERSION_STRING) == 0);
	CHECK(strcmp(kvt_version(), want) == 0);
}

TEST_MAIN(salt_known_answers, chain_known_answers, salt_matches_reference_encoding,
	  chain_matches_reference_encoding, salt_every_field_matters, salt_null_and_defaults,
	  salt_errors, chain_inputs_matter, key_zero_and_equal, key_format,
	  error_names_and_messages, error_codes_match_errno, version_string)
