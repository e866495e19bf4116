/*
 * key.c - block key derivation (KVT_KEY_SCHEME 1) and key helpers.
 *
 * A key is XXH3-128 over an explicit byte encoding, never over host memory: a
 * domain tag, strings as u32 LE length + bytes, integers little-endian. So two
 * machines, compilers or library builds that agree on the inputs agree on the
 * key, and no two different inputs share an encoding. xxHash is compiled in
 * (XXH_INLINE_ALL) so libkvtier has no runtime dependency on libxxhash.
 * docs/PROTOCOL.md ("Block keys") writes the encoding down.
 */
#include "kvtier.h"

#include <string.h>

#include "export.h"

#define XXH_INLINE_ALL
#include <xxhash.h>

#define SALT_TAG "kvtier-salt-v1"
#define CHAIN_TAG "kvtier-chain-v1"

/* Tokens are converted to LE in chunks of this many, on the stack. */
#define TOKEN_CHUNK 256

static void hash_u32(XXH3_state_t *st, uint32_t v)
{
	uint8_t b[4] = { (uint8_t)v, (uint8_t)(v >> 8), (uint8_t)(v >> 16), (uint8_t)(v >> 24) };
	XXH3_128bits_update(st, b, sizeof(b));
}

static void hash_u64(XXH3_state_t *st, uint64_t v)
{
	hash_u32(st, (uint32_t)v);
	hash_u32(st, (uint32_t)(v >> 32));
}

/* Length-prefixed, so ("ab", "c") and ("a", "bc") hash differently. */
static void hash_str(XXH3_state_t *st, const char *s, size_t len)
{
	hash_u32(st, (uint32_t)len);
	if (len)
		XXH3_128bits_update(st, s, len);
}

static void hash_begin(XXH3_state_t *st, const char *tag)
{
	XXH3_INITSTATE(st);
	XXH3_128bits_reset(st);
	hash_str(st, tag, strlen(tag));
}

static void hash_end(XXH3_state_t *st, kvt_key *out)
{
	XXH128_canonical_t c;

	/* The canonical form is big-endian and fixed by xxHash, independent of host. */
	XXH128_canonicalFromHash(&c, XXH3_128bits_digest(st));
	memcpy(out->b, c.digest, sizeof(out->b));
	/* All-zero means "no key" everywhere; never hand it out (odds 2^-128). */
	if (kvt_key_is_zero(out))
		out->b[15] = 1;
}

/* A NULL string is "", and one too long for the u32 length prefix is refused. */
static int str_len(const char *s, size_t *len)
{
	*len = s ? strlen(s) : 0;
	return *len > UINT32_MAX ? KVT_EINVAL : 0;
}

KVT_EXPORT int kvt_key_salt(const kvt_salt_params *p, kvt_key *salt)
{
	XXH3_state_t st;
	const char *strs[5];
	size_t lens[5];

	if (!p || !salt || !p->model_id || !p->model_id[0] || p->block_tokens == 0)
		return KVT_EINVAL;
	uint32_t tp_size = p->tp_size ? p->tp_size : 1;
	if (p->tp_rank >= tp_size)
		return KVT_EINVAL;
	strs[0] = p->model_id;
	strs[1] = p->weights_version;
	strs[2] = p->kv_dtype;
	strs[3] = p->layout;
	strs[4] = p->adapter;
	for (size_t i = 0; i < 5; i++)
		if (str_len(strs[i], &lens[i]))
			return KVT_EINVAL;

	hash_begin(&st, SALT_TAG);
	for (size_t i = 0; i < 5; i++)
		hash_str(&st, strs[i], lens[i]);
	hash_u32(&st, p->tp_rank);
	hash_u32(&st, tp_size);
	hash_u32(&st, p->block_tokens);
	hash_end(&st, salt);
	return 0;
}

KVT_EXPORT void kvt_key_chain(const kvt_key *salt, const kvt_key *parent, const uint32_t *tokens,
			      size_t ntokens, kvt_key *out)
{
	static const kvt_key zero;
	XXH3_state_t st;
	uint8_t buf[TOKEN_CHUNK * 4];

	if (!out)
		return;
	if (!tokens)
		ntokens = 0;
	hash_begin(&st, CHAIN_TAG);
	XXH3_128bits_update(&st, (salt ? salt : &zero)->b, sizeof(zero.b));
	XXH3_128bits_update(&st, (parent ? parent : &zero)->b, sizeof(zero.b));
	hash_u64(&st, (uint64_t)ntokens);
	for (size_t i = 0; i < ntokens;) {
		size_t n = ntokens - i < TOKEN_CHUNK ? ntokens - i : TOKEN_CHUNK;
		for (size_t j = 0; j < n; j++) {
			uint32_t t = tokens[i + j];
			buf[4 * j + 0] = (uint8_t)t;
			buf[4 * j + 1] = (uint8_t)(t >> 8);
			buf[4 * j + 2] = (uint8_t)(t >> 16);
			buf[4 * j + 3] = (uint8_t)(t >> 24);
		}
		XXH3_128bits_update(&st, buf, 4 * n);
		i += n;
	}
	hash_end(&st, out);
}

KVT_EXPORT bool kvt_key_is_zero(const kvt_key *k)
{
	uint8_t acc = 0;

	for (size_t i = 0; i < sizeof(k->b); i++)
		acc |= k->b[i];
	return acc == 0;
}

KVT_EXPORT bool kvt_key_equal(const kvt_key *a, const kvt_key *b)
{
	return memcmp(a->b, b->b, sizeof(a->b)) == 0;
}

KVT_EXPORT char *kvt_key_format(const kvt_key *k, char *buf)
{
	static const char hex[] = "0123456789abcdef";

	for (size_t i = 0; i < sizeof(k->b); i++) {
		buf[2 * i] = hex[k->b[i] >> 4];
		buf[2 * i + 1] = hex[k->b[i] & 15];
	}
	buf[2 * sizeof(k->b)] = '\0';
	return buf;
}
