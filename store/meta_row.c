/*
 * meta_row.c - the metadata store's keys and rows: pure encoders and decoders over
 * bytes (no LMDB, no globals), so they can be tested and fuzzed on their own. Every
 * length is checked before anything is allocated or read. Tables: docs/STORAGE.md.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <xxhash.h>

#include "meta_internal.h"

/* ---- keys ------------------------------------------------------------------------- */

size_t meta_ctx_key(uint8_t *out, uint32_t tenant, const char *name, size_t len)
{
	meta_wr32be(out, tenant);
	if (len) /* name may be NULL for an empty prefix */
		memcpy(out + 4, name, len);
	return 4 + len;
}

size_t meta_ns_key(uint8_t *out, uint32_t tenant, const char *ns, size_t len)
{
	return meta_ctx_key(out, tenant, ns, len);
}

size_t meta_rec_key(uint8_t *out, uint32_t tenant, uint64_t ns_id, const char *key, size_t len)
{
	meta_wr32be(out, tenant);
	meta_wr64be(out + 4, ns_id);
	if (len)
		memcpy(out + META_REC_KEY_HDR, key, len);
	return META_REC_KEY_HDR + len;
}

size_t meta_exp_key(uint8_t *out, uint64_t expires_ms, const uint8_t *row_key, size_t len)
{
	meta_wr64be(out, expires_ms);
	memcpy(out + 8, row_key, len);
	return 8 + len;
}

bool meta_name_ok(const char *s, size_t len)
{
	return s && len >= 1 && len <= META_NAME_MAX && !memchr(s, 0, len);
}

/* ---- checksums ------------------------------------------------------------------------
 * XXH3-64 over every byte of the row but the checksum field itself: LMDB 0.9 has no
 * page checksums, and these rows are the only copy of what they hold. */

static uint64_t row_sum(const uint8_t *row, size_t len)
{
	/* Bytes before the field seed the hash of the bytes after it. */
	uint64_t seed = XXH3_64bits(row, META_ROW_CSUM_OFF);

	return XXH3_64bits_withSeed(row + META_ROW_CSUM_OFF + 8, len - META_ROW_CSUM_OFF - 8,
				    seed);
}

static void row_seal(uint8_t *row, size_t len)
{
	meta_wr64(row + META_ROW_CSUM_OFF, row_sum(row, len));
}

static bool row_sum_ok(const uint8_t *row, size_t len)
{
	return meta_rd64(row + META_ROW_CSUM_OFF) == row_sum(row, len);
}

/* ---- contexts --------------------------------------------------------------------------
 *  0 u32 flags (none defined: must be 0)   4 u32 nkeys        8 u64 checksum
 * 16 u64 token_count    24 u64 bytes    32 u64 created_ms    40 u64 expires_ms
 * 48 16  salt           64 u32 ntokens  68 u32 metadata_len
 * 72 keys (16 each), token ids (u32 each), metadata */

static uint64_t ctx_row_len(uint64_t nkeys, uint64_t ntokens, uint64_t mlen)
{
	return META_CTX_HDR + nkeys * 16 + ntokens * 4 + mlen;
}

int meta_ctx_encode(const struct meta_ctx *c, uint8_t **out, size_t *out_len)
{
	uint32_t ntokens = c->tokens ? c->ntokens : 0;
	size_t len = (size_t)ctx_row_len(c->nkeys, ntokens, c->metadata_len);
	uint8_t *row = malloc(len), *p;

	if (!row)
		return -ENOMEM;
	memset(row, 0, META_CTX_HDR);
	meta_wr32(row + 4, c->nkeys);
	meta_wr64(row + 16, c->token_count);
	meta_wr64(row + 24, c->bytes);
	meta_wr64(row + 32, c->created_ms);
	meta_wr64(row + 40, c->expires_ms);
	memcpy(row + 48, c->salt.b, 16);
	meta_wr32(row + 64, ntokens);
	meta_wr32(row + 68, c->metadata_len);
	p = row + META_CTX_HDR;
	for (uint32_t i = 0; i < c->nkeys; i++, p += 16)
		memcpy(p, c->keys[i].b, 16);
	for (uint32_t i = 0; i < ntokens; i++, p += 4)
		meta_wr32(p, c->tokens[i]);
	if (c->metadata_len)
		memcpy(p, c->metadata, c->metadata_len);
	row_seal(row, len);
	*out = row;
	*out_len = len;
	return 0;
}

int meta_ctx_decode_head(const uint8_t *key, size_t klen, const uint8_t *row, size_t len,
			 struct meta_ctx *c)
{
	uint32_t nkeys, ntokens, mlen;

	if (klen < 5 || klen > META_CTX_KEY_MAX || len < META_CTX_HDR)
		return -EBADMSG;
	if (!meta_name_ok((const char *)key + 4, klen - 4))
		return -EBADMSG;
	nkeys = meta_rd32(row + 4);
	ntokens = meta_rd32(row + 64);
	mlen = meta_rd32(row + 68);
	if (meta_rd32(row) != 0 || nkeys == 0 || nkeys > META_CTX_KEYS_MAX ||
	    ntokens > META_CTX_TOKENS_MAX || mlen > KVT_CTX_META_MAX ||
	    ctx_row_len(nkeys, ntokens, mlen) != len)
		return -EBADMSG;
	memset(c, 0, sizeof(*c));
	c->tenant = meta_rd32be(key);
	c->name_len = (uint16_t)(klen - 4);
	memcpy(c->name, key + 4, c->name_len);
	c->name[c->name_len] = 0;
	c->nkeys = nkeys;
	c->ntokens = ntokens;
	c->metadata_len = mlen;
	c->token_count = meta_rd64(row + 16);
	c->bytes = meta_rd64(row + 24);
	c->created_ms = meta_rd64(row + 32);
	c->expires_ms = meta_rd64(row + 40);
	memcpy(c->salt.b, row + 48, 16);
	return 0;
}

int meta_ctx_decode(const uint8_t *key, size_t klen, const uint8_t *row, size_t len,
		    struct meta_ctx **out)
{
	struct meta_ctx *c = malloc(sizeof(*c));
	const uint8_t *p = row + META_CTX_HDR;
	int rc;

	*out = NULL;
	if (!c)
		return -ENOMEM;
	rc = meta_ctx_decode_head(key, klen, row, len, c);
	if (rc == 0 && !row_sum_ok(row, len))
		rc = -EBADMSG;
	if (rc) {
		free(c);
		return rc;
	}
	c->keys = malloc((size_t)c->nkeys * sizeof(*c->keys));
	c->tokens = c->ntokens ? malloc((size_t)c->ntokens * sizeof(*c->tokens)) : NULL;
	c->metadata = c->metadata_len ? malloc(c->metadata_len) : NULL;
	if (!c->keys || (c->ntokens && !c->tokens) || (c->metadata_len && !c->metadata)) {
		meta_ctx_free(c);
		return -ENOMEM;
	}
	for (uint32_t i = 0; i < c->nkeys; i++, p += 16)
		memcpy(c->keys[i].b, p, 16);
	for (uint32_t i = 0; i < c->ntokens; i++, p += 4)
		c->tokens[i] = meta_rd32(p);
	if (c->metadata_len)
		memcpy(c->metadata, p, c->metadata_len);
	*out = c;
	return 0;
}

void meta_ctx_free(struct meta_ctx *c)
{
	if (!c)
		return;
	free(c->keys);
	free(c->tokens);
	free(c->metadata);
	free(c);
}

/* ---- records ----------------------------------------------------------------------------
 *  0 u32 flags (none defined: must be 0)   4 u32 dim          8 u64 checksum
 * 16 u64 created_ms     24 u64 updated_ms   32 u64 expires_ms
 * 40 u32 value_len      44 u32 metadata_len 48 u16 ns_len     50 u16 key_len
 * 52 u32 reserved (0)
 * 56 namespace, key, embedding (f32 LE each), metadata, value */

static uint64_t rec_row_len(uint64_t ns_len, uint64_t key_len, uint64_t dim, uint64_t mlen,
			    uint64_t vlen)
{
	return META_REC_HDR + ns_len + key_len + dim * 4 + mlen + vlen;
}

int meta_rec_encode(const struct meta_rec *r, uint64_t created_ms, uint64_t updated_ms,
		    uint8_t **out, size_t *out_len)
{
	uint32_t dim = r->embedding ? r->dim : 0;
	size_t len = (size_t)rec_row_len(r->ns_len, r->key_len, dim, r->metadata_len, r->value_len);
	uint8_t *row = malloc(len), *p;

	if (!row)
		return -ENOMEM;
	memset(row, 0, META_REC_HDR);
	meta_wr32(row + 4, dim);
	meta_wr64(row + 16, created_ms);
	meta_wr64(row + 24, updated_ms);
	meta_wr64(row + 32, r->expires_ms);
	meta_wr32(row + 40, r->value_len);
	meta_wr32(row + 44, r->metadata_len);
	meta_wr16(row + 48, r->ns_len);
	meta_wr16(row + 50, r->key_len);
	p = row + META_REC_HDR;
	memcpy(p, r->ns, r->ns_len);
	p += r->ns_len;
	memcpy(p, r->key, r->key_len);
	p += r->key_len;
	for (uint32_t i = 0; i < dim; i++, p += 4) {
		uint32_t u;

		memcpy(&u, &r->embedding[i], 4);
		meta_wr32(p, u);
	}
	if (r->metadata_len)
		memcpy(p, r->metadata, r->metadata_len);
	p += r->metadata_len;
	if (r->value_len)
		memcpy(p, r->value, r->value_len);
	row_seal(row, len);
	*out = row;
	*out_len = len;
	return 0;
}

void meta_rec_set_created(uint8_t *row, size_t len, uint64_t created_ms)
{
	meta_wr64(row + META_REC_CREATED_OFF, created_ms);
	row_seal(row, len);
}

int meta_rec_view(const uint8_t *row, size_t len, bool verify, struct meta_rec_view *v)
{
	const uint8_t *p;

	if (len < META_REC_HDR || meta_rd32(row) != 0 || meta_rd32(row + 52) != 0)
		return -EBADMSG;
	v->dim = meta_rd32(row + 4);
	v->created_ms = meta_rd64(row + 16);
	v->updated_ms = meta_rd64(row + 24);
	v->expires_ms = meta_rd64(row + 32);
	v->value_len = meta_rd32(row + 40);
	v->metadata_len = meta_rd32(row + 44);
	v->ns_len = meta_rd16(row + 48);
	v->key_len = meta_rd16(row + 50);
	if (v->dim > KVT_MEM_DIM_MAX || v->metadata_len > KVT_MEM_META_MAX ||
	    v->ns_len < 1 || v->ns_len > META_NAME_MAX || v->key_len < 1 ||
	    v->key_len > META_NAME_MAX ||
	    rec_row_len(v->ns_len, v->key_len, v->dim, v->metadata_len, v->value_len) != len)
		return -EBADMSG;
	if (verify && !row_sum_ok(row, len))
		return -EBADMSG;
	p = row + META_REC_HDR;
	v->ns = p;
	v->key = p + v->ns_len;
	v->embedding = v->key + v->key_len;
	v->metadata = v->embedding + (size_t)v->dim * 4;
	v->value = v->metadata + v->metadata_len;
	if (memchr(v->ns, 0, v->ns_len) || memchr(v->key, 0, v->key_len))
		return -EBADMSG;
	return 0;
}

uint64_t meta_rec_bytes(const struct meta_rec_view *v)
{
	return (uint64_t)v->value_len + v->metadata_len + (uint64_t)v->dim * 4;
}

float meta_view_emb(const struct meta_rec_view *v, uint32_t i)
{
	uint32_t u = meta_rd32(v->embedding + (size_t)i * 4);
	float f;

	memcpy(&f, &u, 4);
	return f;
}

int meta_rec_from_view(const struct meta_rec_view *v, uint32_t tenant, struct meta_rec **out)
{
	struct meta_rec *r = calloc(1, sizeof(*r));

	*out = NULL;
	if (!r)
		return -ENOMEM;
	r->tenant = tenant;
	r->ns_len = v->ns_len;
	memcpy(r->ns, v->ns, v->ns_len);
	r->key_len = v->key_len;
	memcpy(r->key, v->key, v->key_len);
	/* Never NULL, even when empty: callers memcpy from them. */
	r->value = malloc(v->value_len ? v->value_len : 1);
	r->metadata = malloc((size_t)v->metadata_len + 1);
	r->embedding = v->dim ? malloc((size_t)v->dim * sizeof(float)) : NULL;
	if (!r->value || !r->metadata || (v->dim && !r->embedding)) {
		meta_rec_free(r);
		return -ENOMEM;
	}
	r->value_len = v->value_len;
	if (v->value_len)
		memcpy(r->value, v->value, v->value_len);
	r->metadata_len = v->metadata_len;
	if (v->metadata_len)
		memcpy(r->metadata, v->metadata, v->metadata_len);
	r->metadata[v->metadata_len] = 0;
	r->dim = v->dim;
	for (uint32_t i = 0; i < v->dim; i++)
		r->embedding[i] = meta_view_emb(v, i);
	r->created_ms = v->created_ms;
	r->updated_ms = v->updated_ms;
	r->expires_ms = v->expires_ms;
	*out = r;
	return 0;
}

void meta_rec_free(struct meta_rec *r)
{
	if (!r)
		return;
	free(r->value);
	free(r->metadata);
	free(r->embedding);
	free(r);
}

/* ---- namespaces ---------------------------------------------------------------------------
 *  0 u64 id   8 u32 dim   12 u32 flags (0)   16 u64 records   24 u64 embedded
 * 32 u64 bytes */

void meta_ns_encode(uint8_t out[META_NS_ROW], const struct meta_ns_row *r)
{
	memset(out, 0, META_NS_ROW);
	meta_wr64(out, r->id);
	meta_wr32(out + 8, r->dim);
	meta_wr64(out + 16, r->records);
	meta_wr64(out + 24, r->embedded);
	meta_wr64(out + 32, r->bytes);
}

int meta_ns_decode(struct meta_ns_row *r, const uint8_t *row, size_t len)
{
	if (len < META_NS_ROW || meta_rd32(row + 12) != 0)
		return -EBADMSG;
	r->id = meta_rd64(row);
	r->dim = meta_rd32(row + 8);
	r->records = meta_rd64(row + 16);
	r->embedded = meta_rd64(row + 24);
	r->bytes = meta_rd64(row + 32);
	if (r->id == 0 || r->dim > KVT_MEM_DIM_MAX || r->embedded > r->records ||
	    (r->embedded == 0) != (r->dim == 0))
		return -EBADMSG;
	return 0;
}

/* ---- layout signature ----------------------------------------------------------------------
 * Every table, key and row field by field (name:offset:size), with the constants that
 * shape them. Its XXH3-64 is kept in "meta"; a build whose text differs refuses the
 * store even if someone forgot to bump the format version. Change it with the code. */

static const char layout_text[] =
	"kvtier-meta;"
	"meta(keys magic,version,layout,layout_text,created_ms,incompat,next_ns;u64 le);"
	"ctx.key(tenant:0:4be,name:4:1..255);"
	"ctx.row(flags:0:4,nkeys:4:4,csum:8:8xxh3,token_count:16:8,bytes:24:8,"
	"created_ms:32:8,expires_ms:40:8,salt:48:16,ntokens:64:4,metadata_len:68:4,"
	"keys:72:16n,tokens:u32n,metadata);"
	"ns.key(tenant:0:4be,ns:4:1..255);"
	"ns.row(id:0:8,dim:8:4,flags:12:4,records:16:8,embedded:24:8,bytes:32:8);"
	"rec.key(tenant:0:4be,ns_id:4:8be,key:12:1..255);"
	"rec.row(flags:0:4,dim:4:4,csum:8:8xxh3,created_ms:16:8,updated_ms:24:8,"
	"expires_ms:32:8,value_len:40:4,metadata_len:44:4,ns_len:48:2,key_len:50:2,"
	"reserved:52:4,ns,key,embedding:f32le*dim,metadata,value);"
	"ctx_exp.key(expires_ms:0:8be,ctx.key);rec_exp.key(expires_ms:0:8be,rec.key);"
	"exp.value(empty);le rows,be keys";

const char *meta_layout_string(void)
{
	return layout_text;
}

uint64_t meta_layout_signature(void)
{
	return XXH3_64bits(layout_text, sizeof(layout_text) - 1);
}

/* ---- arithmetic -------------------------------------------------------------------------- */

double meta_sqrt(double x)
{
	uint64_t u;
	double y;

	if (!(x > 0))
		return 0;
	if (x > 1e300)
		return 2 * meta_sqrt(x / 4);
	/* Halving the exponent gives a start within 6%; Newton's method doubles the
	 * correct bits each step: 6 steps reach double precision from there. */
	memcpy(&u, &x, sizeof(u));
	u = (u >> 1) + ((uint64_t)1023 << 51);
	memcpy(&y, &u, sizeof(y));
	for (int i = 0; i < 6; i++)
		y = 0.5 * (y + x / y);
	return y;
}
