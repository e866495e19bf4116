/*
 * blocks.c - blocks for the NVMe-tier integration tests (see blocks.h).
 */
#include "blocks.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "harness.h"
#include "test.h"

kvt_key blk_key(uint32_t ns, uint64_t n)
{
	kvt_key k;
	memset(&k, 0, sizeof(k));
	k.b[0] = 0x4e;
	memcpy(k.b + 4, &ns, sizeof(ns));
	memcpy(k.b + 8, &n, sizeof(n));
	return k;
}

size_t blk_len(uint32_t ns, uint64_t n, size_t lo, size_t hi)
{
	return lo + (size_t)(mix64(((uint64_t)ns << 40) ^ n ^ 0x1e9) % (hi - lo + 1));
}

kvt_block_desc blk_desc(uint32_t ns, uint64_t n)
{
	kvt_block_desc d = { .dtype = KVT_DTYPE_BF16,
			     .layout = (uint16_t)(ns & 0xff),
			     .layers = (uint16_t)(1 + n % 32),
			     .tokens = (uint32_t)(16 + n) };
	return d;
}

void fill_bf16(uint8_t *p, size_t len, uint64_t seed)
{
	uint64_t x = mix64(seed) | 1;
	size_t i = 0;
	while (i < len) {
		x ^= x << 13;
		x ^= x >> 7;
		x ^= x << 17;
		for (int k = 0; k < 4 && i < len; k++) {
			uint32_t r = (uint32_t)(x >> (16 * k));
			uint16_t sign = (uint16_t)(r & 1);
			uint16_t exp = (uint16_t)(120 + ((r >> 1) & 7));
			uint16_t mant = (uint16_t)((r >> 4) & 0x7f);
			uint16_t v = (uint16_t)(sign << 15 | exp << 7 | mant);
			p[i++] = (uint8_t)v;
			if (i < len)
				p[i++] = (uint8_t)(v >> 8);
		}
	}
}

void blk_fill(uint8_t *p, uint32_t ns, uint64_t n, size_t len)
{
	fill_bf16(p, len, ((uint64_t)ns << 40) ^ n);
}

int put_blk(kvt_conn *c, kvt_region *r, uint64_t off, uint32_t ns, uint64_t n, size_t len,
	    const kvt_key *parent)
{
	blk_fill((uint8_t *)kvt_region_base(r) + off, ns, n, len);
	kvt_put_item it = { .key = blk_key(ns, n), .region = r, .offset = off, .length = len,
			    .desc = blk_desc(ns, n), .status = 12345 };
	if (parent)
		it.parent = *parent;
	int rc = kvt_block_put(c, &it, 1);
	if (rc != 0 && rc != KVT_EPARTIAL)
		return rc;
	CHECK_EQ(rc, it.status ? KVT_EPARTIAL : 0);
	return it.status;
}

int get_blk(kvt_conn *c, kvt_region *dst, uint32_t ns, uint64_t n, size_t len, uint8_t *want)
{
	uint8_t *got = kvt_region_base(dst);
	memset(got, 0xa5, len < 4096 ? len : 4096);
	kvt_get_item g = { .key = blk_key(ns, n), .region = dst, .offset = 0,
			   .capacity = kvt_region_size(dst), .status = 12345 };
	int rc = kvt_block_get(c, &g, 1);
	if (rc != 0 && rc != KVT_EPARTIAL)
		return rc;
	CHECK_EQ(rc, g.status ? KVT_EPARTIAL : 0);
	if (g.status)
		return g.status;
	CHECK_MSG(g.length == len, "block %u/%llu: GET returned %llu bytes, %zu were stored", ns,
		  (unsigned long long)n, (unsigned long long)g.length, len);
	kvt_block_desc dd = blk_desc(ns, n);
	CHECK_MSG(memcmp(&g.desc, &dd, sizeof(dd)) == 0,
		  "block %u/%llu: GET returned another descriptor", ns, (unsigned long long)n);
	blk_fill(want, ns, n, len);
	if (memcmp(got, want, len) != 0) {
		size_t i = 0;
		while (got[i] == want[i])
			i++;
		test_fail(__FILE__, __LINE__,
			  "WRONG BYTES served for block %u/%llu (%zu bytes): first difference at "
			  "byte %zu",
			  ns, (unsigned long long)n, len, i);
	}
	return 0;
}

void put_blks(kvt_conn *c, kvt_region *r, uint32_t ns, uint64_t from, uint64_t to, size_t lo,
	      size_t hi)
{
	for (uint64_t i = from; i < to; i++)
		CHECK_RC(put_blk(c, r, 0, ns, i, blk_len(ns, i, lo, hi), NULL), 0);
}

void put_chain(kvt_conn *c, kvt_region *r, uint32_t ns, uint64_t n, size_t len, kvt_key *keys)
{
	for (uint64_t i = 0; i < n; i++) {
		kvt_key p = blk_key(ns, i - 1);
		CHECK_RC(put_blk(c, r, 0, ns, i, len, i ? &p : NULL), 0);
		if (keys)
			keys[i] = blk_key(ns, i);
	}
}

void get_blks(kvt_conn *c, kvt_region *dst, uint32_t ns, uint64_t from, uint64_t to, size_t lo,
	      size_t hi, uint8_t *want)
{
	for (uint64_t i = from; i < to; i++)
		CHECK_RC(get_blk(c, dst, ns, i, blk_len(ns, i, lo, hi), want), 0);
}

void finish(struct kvtd *d, kvt_conn *c, kvt_region *dst, uint8_t *want)
{
	free(want);
	kvt_region_destroy(dst);
	kvt_conn_close(c);
	d->keep_dir = false;
	kvtd_stop_clean(d);
}

int lookup_tier(kvt_conn *c, kvt_key k)
{
	size_t found = 99;
	uint8_t tier = 0xff;
	CHECK_RC(kvt_block_lookup(c, &k, 1, &found, &tier), 0);
	CHECK(found <= 1);
	return found ? tier : -1;
}

/* Poll name until it is want (ge: at least want). */
static void wait_stat(kvt_conn *c, const char *name, uint64_t want, bool ge)
{
	uint64_t v = 0;
	for (int waited = 0; waited < POLL_MS; waited += 10) {
		v = kvtd_stat(c, name);
		if (ge ? v >= want : v == want)
			return;
		test_sleep_ms(10);
	}
	test_fail(__FILE__, __LINE__, "%s stayed at %llu for %d ms, waiting for %s%llu", name,
		  (unsigned long long)v, POLL_MS, ge ? ">= " : "", (unsigned long long)want);
}

void wait_stat_eq(kvt_conn *c, const char *name, uint64_t want)
{
	wait_stat(c, name, want, false);
}

void wait_stat_ge(kvt_conn *c, const char *name, uint64_t want)
{
	wait_stat(c, name, want, true);
}

void conf_for(char *buf, size_t cap, const char *backend, const char *extra)
{
	int n = snprintf(buf, cap, T2_CONF "io_backend = %s\n%s", backend, extra);
	CHECK(n > 0 && (size_t)n < cap);
}
