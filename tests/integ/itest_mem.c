/*
 * itest_mem.c - long-term memory records against a real kvtierd: put, get,
 * upsert (created kept, updated moves), delete, list by namespace prefix with
 * pagination, exact top-k cosine search checked against a brute-force reference
 * computed here, TTL expiry (an expired record is never returned), durability of
 * acknowledged writes across kill -9 and restarts, bad input through the library
 * and as hand-made frames (the daemon's own answers), and tenant isolation.
 *
 * Env: KVT_MEM_KILL_LOOPS=N kill -9 cycles (default 3).
 */
#include <grp.h>
#include <math.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "harness.h"
#include "kvtier.h"
#include "proto.h"
#include "test.h"

#define KiB 1024u
#define VALUE_MAX (64 * KiB)
#define MEM_CONF "mem_value_max = 64KiB\n"

/* ---- helpers ------------------------------------------------------------------ */

/* Uniform in [-1, 1), from (seed, i). */
static float unit(uint64_t seed, uint64_t i)
{
	return (float)((double)(mix64(seed * 1000003 + i) >> 11) / (double)(1ull << 52) - 1.0);
}

static void fill_vec(float *v, uint32_t dim, uint64_t seed)
{
	for (uint32_t i = 0; i < dim; i++)
		v[i] = unit(seed, i);
}

/* Record id's value: length id % span, bytes from id (zeros included). */
static size_t rec_value(uint64_t id, size_t span, uint8_t *out)
{
	size_t len = span ? (size_t)(mix64(id) % span) : 0;
	for (size_t i = 0; i < len; i++)
		out[i] = (uint8_t)(mix64(id ^ (i / 8)) >> (8 * (i % 8)));
	return len;
}

/* Put record (ns, key) made from id: value (span), metadata "meta <id>", and an
 * embedding of dim floats (none if dim is 0). */
static int put_rec(kvt_conn *c, const char *ns, const char *key, uint64_t id, size_t span,
		   uint32_t dim, uint32_t ttl)
{
	uint8_t *val = malloc(span + 1); /* writers run in threads: no static buffer */
	float *e = dim ? malloc(dim * sizeof(float)) : NULL;
	char meta[48];
	CHECK(val != NULL);
	snprintf(meta, sizeof(meta), "meta %llu", (unsigned long long)id);
	if (dim) {
		CHECK(e != NULL);
		fill_vec(e, dim, id);
	}
	kvt_mem_record rec = { .ns = ns, .key = key, .value = val,
			       .value_len = rec_value(id, span, val), .metadata = meta,
			       .metadata_len = strlen(meta), .embedding = e, .dim = dim,
			       .ttl_s = ttl };
	int rc = kvt_mem_put(c, &rec);
	free(e);
	free(val);
	return rc;
}

/* The item is what put_rec(ns, key, id, span, dim) stored. */
static void check_item(const kvt_mem_item *it, const char *ns, const char *key, uint64_t id,
		       size_t span, uint32_t dim)
{
	static uint8_t val[VALUE_MAX];
	CHECK_MSG(!strcmp(it->ns, ns) && !strcmp(it->key, key), "got (%s, %s), expected (%s, %s)",
		  it->ns, it->key, ns, key);
	size_t len = rec_value(id, span, val);
	CHECK_MSG(it->value_len == len, "(%s, %s): value of %zu bytes, expected %zu", ns, key,
		  it->value_len, len);
	CHECK_MSG(len == 0 || memcmp(it->value, val, len) == 0, "(%s, %s): value differs", ns,
		  key);
	char meta[48];
	snprintf(meta, sizeof(meta), "meta %llu", (unsigned long long)id);
	CHECK_MSG(it->metadata && it->metadata_len == strlen(meta) &&
			  !strcmp(it->metadata, meta),
		  "(%s, %s): metadata '%s'", ns, key, it->metadata ? it->metadata : "(null)");
	CHECK_EQ(it->dim, dim);
	if (dim) {
		float *e = malloc(dim * sizeof(float));
		CHECK(e && it->embedding);
		fill_vec(e, dim, id);
		CHECK_MSG(memcmp(e, it->embedding, dim * sizeof(float)) == 0,
			  "(%s, %s): embedding differs", ns, key);
		free(e);
	} else {
		CHECK(it->embedding == NULL);
	}
	CHECK(it->created_ms > 0 && it->updated_ms >= it->created_ms);
}

/* ---- put, get, upsert, delete ----------------------------------------------------- */

TEST(put_get_upsert_delete)
{
	struct kvtd d;
	kvtd_start(&d, MEM_CONF);
	kvt_conn *c = kvtd_connect(&d, 60000);
	uint64_t t0 = realtime_ms();
	CHECK_RC(put_rec(c, "agent/alice", "likes", 1, 3000, 8, 0), 0);
	uint64_t t1 = realtime_ms();
	kvt_mem_item *it = NULL;
	CHECK_RC(kvt_mem_get(c, "agent/alice", "likes", &it), 0);
	check_item(it, "agent/alice", "likes", 1, 3000, 8);
	CHECK_MSG(it->created_ms + 1000 >= t0 && it->created_ms <= t1 + 1000,
		  "created_ms %llu outside the put [%llu, %llu]",
		  (unsigned long long)it->created_ms, (unsigned long long)t0,
		  (unsigned long long)t1);
	CHECK_EQ(it->updated_ms, it->created_ms);
	CHECK_EQ(it->expires_ms, 0);
	uint64_t created = it->created_ms;
	kvt_mem_item_free(it);

	/* Upsert: same key, new value and embedding; created kept, updated moves. */
	test_sleep_ms(30);
	CHECK_RC(put_rec(c, "agent/alice", "likes", 2, 3000, 8, 0), 0);
	it = NULL;
	CHECK_RC(kvt_mem_get(c, "agent/alice", "likes", &it), 0);
	check_item(it, "agent/alice", "likes", 2, 3000, 8);
	CHECK_EQ(it->created_ms, created);
	CHECK_MSG(it->updated_ms >= created + 30, "updated_ms %llu, created_ms %llu",
		  (unsigned long long)it->updated_ms, (unsigned long long)created);
	kvt_mem_item_free(it);
	/* The same put again is harmless. */
	CHECK_RC(put_rec(c, "agent/alice", "likes", 2, 3000, 8, 0), 0);
	CHECK_RC(kvt_mem_get(c, "agent/alice", "likes", &it), 0);
	check_item(it, "agent/alice", "likes", 2, 3000, 8);
	CHECK_EQ(it->created_ms, created);
	kvt_mem_item_free(it);

	/* Empty value, no metadata, no embedding; the longest names; the biggest value. */
	kvt_mem_record bare = { .ns = "agent/alice", .key = "empty", .value = "", .value_len = 0 };
	CHECK_RC(kvt_mem_put(c, &bare), 0);
	CHECK_RC(kvt_mem_get(c, "agent/alice", "empty", &it), 0);
	CHECK_EQ(it->value_len, 0);
	CHECK_EQ(it->metadata_len, 0);
	CHECK(it->embedding == NULL && it->dim == 0);
	kvt_mem_item_free(it);
	char ns[KVT_NAME_LEN_MAX + 1], key[KVT_NAME_LEN_MAX + 1];
	memset(ns, 'N', KVT_NAME_LEN_MAX);
	memset(key, 'K', KVT_NAME_LEN_MAX);
	ns[KVT_NAME_LEN_MAX] = key[KVT_NAME_LEN_MAX] = 0;
	CHECK_RC(put_rec(c, ns, key, 3, 100, 0, 0), 0);
	CHECK_RC(kvt_mem_get(c, ns, key, &it), 0);
	check_item(it, ns, key, 3, 100, 0);
	kvt_mem_item_free(it);
	static uint8_t big[VALUE_MAX];
	memset(big, 0xa5, sizeof(big));
	kvt_mem_record full = { .ns = "blobs", .key = "max", .value = big,
				.value_len = VALUE_MAX };
	CHECK_RC(kvt_mem_put(c, &full), 0);
	CHECK_RC(kvt_mem_get(c, "blobs", "max", &it), 0);
	CHECK_EQ(it->value_len, VALUE_MAX);
	CHECK(memcmp(it->value, big, VALUE_MAX) == 0);
	kvt_mem_item_free(it);
	/* Namespaces and keys are exact, not prefixes. */
	it = NULL;
	CHECK_RC(kvt_mem_get(c, "agent/alic", "likes", &it), KVT_ENOENT);
	CHECK_RC(kvt_mem_get(c, "agent/alice", "like", &it), KVT_ENOENT);
	CHECK_RC(kvt_mem_get(c, "agent/alice", "likes2", &it), KVT_ENOENT);
	CHECK(it == NULL);

	/* Delete. */
	CHECK_RC(kvt_mem_delete(c, "agent/alice", "likes"), 0);
	CHECK_RC(kvt_mem_get(c, "agent/alice", "likes", &it), KVT_ENOENT);
	CHECK_RC(kvt_mem_delete(c, "agent/alice", "likes"), KVT_ENOENT);
	CHECK_RC(kvt_mem_delete(c, "nowhere", "likes"), KVT_ENOENT);
	/* A new record under the deleted key starts afresh. */
	test_sleep_ms(5);
	CHECK_RC(put_rec(c, "agent/alice", "likes", 4, 3000, 8, 0), 0);
	CHECK_RC(kvt_mem_get(c, "agent/alice", "likes", &it), 0);
	check_item(it, "agent/alice", "likes", 4, 3000, 8);
	CHECK(it->created_ms > created);
	kvt_mem_item_free(it);

	CHECK_EQ(kvtd_stat_u64(c, "tenant.0.records", NULL), 4);
	uint64_t rb = kvtd_stat_u64(c, "tenant.0.record_bytes", NULL);
	CHECK_MSG(rb >= VALUE_MAX && rb < VALUE_MAX + 16 * KiB, "tenant.0.record_bytes %llu",
		  (unsigned long long)rb);
	uint64_t writes = kvtd_stat_u64(c, "meta.writes", NULL);
	uint64_t commits = kvtd_stat_u64(c, "meta.commits", NULL);
	uint64_t fsyncs = kvtd_stat_u64(c, "meta.fsyncs", NULL);
	test_log("meta.writes %llu meta.commits %llu meta.fsyncs %llu", (unsigned long long)writes,
		 (unsigned long long)commits, (unsigned long long)fsyncs);
	CHECK(writes >= 8 && commits >= 1 && fsyncs >= 1);
	kvt_conn_close(c);
	kvtd_stop_clean(&d);
}

/* ---- list ----------------------------------------------------------------------- */

struct nk {
	char ns[16], key[16];
};

static int nk_cmp(const void *a, const void *b)
{
	const struct nk *x = a, *y = b;
	int r = strcmp(x->ns, y->ns);
	return r ? r : strcmp(x->key, y->key);
}

TEST(list_by_namespace_prefix_with_pagination)
{
	struct kvtd d;
	kvtd_start(&d, MEM_CONF);
	kvt_conn *c = kvtd_connect(&d, 60000);
	static const char *const nss[] = { "a/y", "b", "a/x", "a", "ab" };
	static const int counts[] = { 5, 3, 25, 2, 4 };
	struct nk all[64];
	size_t nall = 0;
	for (size_t n = 0; n < 5; n++) {
		for (int k = counts[n] - 1; k >= 0; k--) {
			struct nk *e = &all[nall++];
			snprintf(e->ns, sizeof(e->ns), "%s", nss[n]);
			snprintf(e->key, sizeof(e->key), "k%02d", k);
			CHECK_RC(put_rec(c, e->ns, e->key, nall, 200, 4, 0), 0);
		}
	}
	qsort(all, nall, sizeof(all[0]), nk_cmp);

	/* Walk "a/" (30 records) 7 at a time, and everything 10 at a time. */
	static const struct {
		const char *prefix;
		size_t limit, want;
	} walks[] = { { "a/", 7, 30 }, { NULL, 10, 39 }, { "a", 1000, 36 }, { "ab", 3, 4 },
		      { "", 39, 39 } };
	for (size_t w = 0; w < sizeof(walks) / sizeof(walks[0]); w++) {
		char after_ns[KVT_NAME_LEN_MAX + 1] = "", after_key[KVT_NAME_LEN_MAX + 1] = "";
		size_t got = 0, pages = 0, plen = walks[w].prefix ? strlen(walks[w].prefix) : 0;
		size_t idx = 0;
		for (;;) {
			kvt_mem_items *items = NULL;
			CHECK_RC(kvt_mem_list(c, walks[w].prefix, pages ? after_ns : NULL,
					      pages ? after_key : NULL, walks[w].limit, &items),
				 0);
			pages++;
			CHECK(items->n <= walks[w].limit);
			for (size_t i = 0; i < items->n; i++) {
				const kvt_mem_item *it = &items->items[i];
				while (idx < nall && strncmp(all[idx].ns, walks[w].prefix ?
								 walks[w].prefix : "", plen))
					idx++;
				CHECK_MSG(idx < nall && !strcmp(it->ns, all[idx].ns) &&
						  !strcmp(it->key, all[idx].key),
					  "walk %zu: entry %zu is (%s, %s), expected (%s, %s)", w, got,
					  it->ns, it->key, idx < nall ? all[idx].ns : "-",
					  idx < nall ? all[idx].key : "-");
				CHECK_EQ(it->dim, 4);
				CHECK(it->embedding != NULL && it->metadata != NULL);
				idx++;
				got++;
			}
			if (items->n) {
				snprintf(after_ns, sizeof(after_ns), "%s", items->items[items->n - 1].ns);
				snprintf(after_key, sizeof(after_key), "%s",
					 items->items[items->n - 1].key);
			}
			bool more = items->more;
			size_t n = items->n;
			kvt_mem_items_free(items);
			if (!more)
				break;
			CHECK_MSG(n == walks[w].limit, "walk %zu: MORE on a short page", w);
			CHECK(pages < 100);
		}
		CHECK_MSG(got == walks[w].want, "walk %zu (prefix %s): %zu records, expected %zu", w,
			  walks[w].prefix ? walks[w].prefix : "NULL", got, walks[w].want);
	}
	/* Values and embeddings come with list entries. */
	kvt_mem_items *items = NULL;
	CHECK_RC(kvt_mem_list(c, "b", NULL, NULL, 10, &items), 0);
	CHECK_EQ(items->n, 3);
	CHECK(!items->more);
	kvt_mem_items_free(items);
	/* After a (namespace, key) in the middle, and after the last. */
	CHECK_RC(kvt_mem_list(c, "a/", "a/x", "k24", 2, &items), 0);
	CHECK_EQ(items->n, 2);
	CHECK(!strcmp(items->items[0].ns, "a/y") && !strcmp(items->items[0].key, "k00"));
	kvt_mem_items_free(items);
	CHECK_RC(kvt_mem_list(c, "a/", "a/y", "k04", 10, &items), 0);
	CHECK_EQ(items->n, 0);
	CHECK(!items->more);
	kvt_mem_items_free(items);
	CHECK_RC(kvt_mem_list(c, "zzz", NULL, NULL, 10, &items), 0);
	CHECK_EQ(items->n, 0);
	kvt_mem_items_free(items);
	items = NULL;
	CHECK_RC(kvt_mem_list(c, NULL, NULL, NULL, 0, &items), KVT_EINVAL);
	CHECK_RC(kvt_mem_list(c, NULL, NULL, NULL, 1001, &items), KVT_EINVAL);
	CHECK(items == NULL);
	kvt_conn_close(c);
	kvtd_stop_clean(&d);
}

/* ---- search ----------------------------------------------------------------------- */

#define DIM 48

struct ref {
	double score;
	int ns;
	unsigned key;
};

static int ref_cmp(const void *a, const void *b)
{
	const struct ref *x = a, *y = b;
	return x->score < y->score ? 1 : x->score > y->score ? -1 : 0;
}

/* Integration tests link without libm: Newton's square root and abs are enough. */
static double sqrt_nr(double x)
{
	if (!(x > 0))
		return 0;
	double r = x > 1 ? x : 1;
	for (int i = 0; i < 100; i++)
		r = 0.5 * (r + x / r);
	return r;
}

static double absd(double x)
{
	return x < 0 ? -x : x;
}

static double cosine(const float *a, const float *b, uint32_t dim)
{
	double dot = 0, na = 0, nb = 0;
	for (uint32_t i = 0; i < dim; i++) {
		dot += (double)a[i] * b[i];
		na += (double)a[i] * a[i];
		nb += (double)b[i] * b[i];
	}
	return dot / (sqrt_nr(na) * sqrt_nr(nb));
}

static const char *const search_ns[] = { "s/one", "s/two", "t" };
static const unsigned search_n[] = { 600, 300, 50 };

static uint64_t search_id(int ns, unsigned key)
{
	return 1000000ull * (uint64_t)(ns + 1) + key;
}

/* Ask the daemon and compare with the brute force over the records of namespaces
 * whose names start with prefix. */
static void check_search(kvt_conn *c, const char *prefix, uint64_t qseed, uint32_t k)
{
	float q[DIM], e[DIM];
	fill_vec(q, DIM, qseed);
	struct ref *ref = malloc(1000 * sizeof(*ref));
	CHECK(ref != NULL);
	size_t nref = 0;
	for (int n = 0; n < 3; n++) {
		if (strncmp(search_ns[n], prefix, strlen(prefix)))
			continue;
		for (unsigned i = 0; i < search_n[n]; i++) {
			fill_vec(e, DIM, search_id(n, i));
			ref[nref++] = (struct ref){ cosine(q, e, DIM), n, i };
		}
	}
	qsort(ref, nref, sizeof(*ref), ref_cmp);
	kvt_mem_items *res = NULL;
	CHECK_RC(kvt_mem_search(c, prefix, q, DIM, k, &res), 0);
	size_t want = k < nref ? k : nref;
	CHECK_MSG(res->n == want, "search '%s' k=%u: %zu results, expected %zu", prefix, k, res->n,
		  want);
	for (size_t i = 0; i < res->n; i++) {
		const kvt_mem_item *it = &res->items[i];
		char key[16];
		snprintf(key, sizeof(key), "r%04u", ref[i].key);
		bool same = !strcmp(it->ns, search_ns[ref[i].ns]) && !strcmp(it->key, key);
		/* Neighbours closer than float rounding may come in either order. */
		if (!same) {
			for (size_t j = i ? i - 1 : 0; j < nref && j <= i + 1; j++) {
				snprintf(key, sizeof(key), "r%04u", ref[j].key);
				if (!strcmp(it->ns, search_ns[ref[j].ns]) && !strcmp(it->key, key) &&
				    absd(ref[j].score - ref[i].score) < 1e-5)
					same = true;
			}
		}
		CHECK_MSG(same, "search '%s' result %zu is (%s, %s) score %.6f; the brute force has "
				"(%s, r%04u) score %.6f", prefix, i, it->ns, it->key, it->score,
			  search_ns[ref[i].ns], ref[i].key, ref[i].score);
		CHECK_MSG(absd(it->score - ref[i].score) < 1e-4, "result %zu score %.6f, expected %.6f",
			  i, it->score, ref[i].score);
		CHECK(i == 0 || it->score <= res->items[i - 1].score + 1e-6f);
		CHECK_EQ(it->dim, DIM);
	}
	kvt_mem_items_free(res);
	free(ref);
}

TEST(search_is_exact_top_k_by_cosine)
{
	struct kvtd d;
	kvtd_start(&d, MEM_CONF);
	kvt_conn *c = kvtd_connect(&d, 60000);
	for (int n = 0; n < 3; n++) {
		for (unsigned i = 0; i < search_n[n]; i++) {
			char key[16];
			snprintf(key, sizeof(key), "r%04u", i);
			CHECK_RC(put_rec(c, search_ns[n], key, search_id(n, i), 64, DIM, 0), 0);
		}
	}
	/* A record without an embedding is never a hit. */
	kvt_mem_record plain = { .ns = "s/one", .key = "plain", .value = "x", .value_len = 1 };
	CHECK_RC(kvt_mem_put(c, &plain), 0);

	for (uint64_t q = 1; q <= 12; q++) {
		check_search(c, "s/", q, 10);
		check_search(c, "s/one", q + 100, 1);
		check_search(c, "", q + 200, 25); /* across s/one, s/two and t */
	}
	check_search(c, "t", 999, 1000); /* k above the matches: all 50, in order */
	check_search(c, "s/two", 998, 300);
	/* Under a prefix that also matches a namespace of another dimension, a query
	 * searches the namespaces of its own dimension (the store's reading of "dim
	 * differs from a matching namespace's": ERANGE only when none has its dim). */
	CHECK_RC(put_rec(c, "u", "other-dim", 5, 64, 16, 0), 0);
	float q16[16];
	fill_vec(q16, 16, 5);
	kvt_mem_items *res = NULL;
	CHECK_RC(kvt_mem_search(c, "", q16, 16, 10, &res), 0);
	CHECK(res->n == 1 && !strcmp(res->items[0].key, "other-dim"));
	kvt_mem_items_free(res);
	res = NULL;
	CHECK_RC(kvt_mem_search(c, "", q16, 15, 1, &res), KVT_ERANGE);
	check_search(c, "", 77, 30);

	/* A record's own embedding is its best match (score 1). */
	float e[DIM];
	fill_vec(e, DIM, search_id(1, 42));
	CHECK_RC(kvt_mem_search(c, "s/", e, DIM, 3, &res), 0);
	CHECK(res->n == 3 && !strcmp(res->items[0].ns, "s/two") &&
	      !strcmp(res->items[0].key, "r0042"));
	CHECK(absd(res->items[0].score - 1.0) < 1e-5);
	check_item(&res->items[0], "s/two", "r0042", search_id(1, 42), 64, DIM);
	kvt_mem_items_free(res);
	/* Upserts and deletes show in the next search. */
	CHECK_RC(kvt_mem_delete(c, "s/two", "r0042"), 0);
	CHECK_RC(kvt_mem_search(c, "s/two", e, DIM, 1, &res), 0);
	CHECK(res->n == 1 && strcmp(res->items[0].key, "r0042") != 0);
	kvt_mem_items_free(res);
	CHECK_RC(put_rec(c, "s/one", "r0007", search_id(1, 42), 64, DIM, 0), 0);
	CHECK_RC(kvt_mem_search(c, "s/", e, DIM, 1, &res), 0);
	CHECK(res->n == 1 && !strcmp(res->items[0].ns, "s/one") &&
	      !strcmp(res->items[0].key, "r0007"));
	kvt_mem_items_free(res);

	/* Errors: no namespace matches, another dimension, bad k or query. */
	res = NULL;
	CHECK_RC(kvt_mem_search(c, "nope", e, DIM, 5, &res), KVT_ENOENT);
	CHECK_RC(kvt_mem_search(c, "s/", e, DIM - 1, 5, &res), KVT_ERANGE);
	CHECK_RC(kvt_mem_search(c, "s/", e, DIM, 0, &res), KVT_EINVAL);
	CHECK_RC(kvt_mem_search(c, "s/", e, DIM, 1001, &res), KVT_EINVAL);
	e[3] = NAN;
	CHECK_RC(kvt_mem_search(c, "s/", e, DIM, 5, &res), KVT_EINVAL);
	CHECK(res == NULL);
	kvt_conn_close(c);
	kvtd_stop_clean(&d);
}

/* ---- TTL ---------------------------------------------------------------------- */

TEST(expired_records_are_never_returned)
{
	struct kvtd d;
	kvtd_start(&d, MEM_CONF);
	kvt_conn *c = kvtd_connect(&d, 60000);
	CHECK_RC(put_rec(c, "ttl", "short", 1, 100, 8, 1), 0);
	CHECK_RC(put_rec(c, "ttl", "long", 2, 100, 8, 3600), 0);
	CHECK_RC(put_rec(c, "ttl", "never", 3, 100, 8, 0), 0);
	kvt_mem_item *it = NULL;
	uint64_t expires = 0;
	if (kvt_mem_get(c, "ttl", "short", &it) == 0) {
		expires = it->expires_ms;
		CHECK_MSG(expires >= it->updated_ms + 1000 && expires <= it->updated_ms + 1001,
			  "expires_ms %llu, updated_ms %llu, ttl 1 s", (unsigned long long)expires,
			  (unsigned long long)it->updated_ms);
		kvt_mem_item_free(it);
	}
	CHECK_RC(kvt_mem_get(c, "ttl", "long", &it), 0);
	CHECK(it->expires_ms > it->updated_ms + 3500 * 1000ull);
	kvt_mem_item_free(it);

	float q[8];
	fill_vec(q, 8, 1); /* the short record's own vector */
	bool gone = false;
	for (int i = 0; i < 150 && !gone; i++) {
		uint64_t before = realtime_ms();
		bool past = expires && before > expires;
		it = NULL;
		int rc = kvt_mem_get(c, "ttl", "short", &it);
		CHECK_MSG(rc == 0 || rc == KVT_ENOENT, "GET: %s", kvt_errname(rc));
		CHECK_MSG(!(past && rc == 0), "GET returned a record %llu ms after it expired",
			  (unsigned long long)(before - expires));
		kvt_mem_item_free(it);
		bool listed = false, found = false;
		kvt_mem_items *items = NULL;
		CHECK_RC(kvt_mem_list(c, "ttl", NULL, NULL, 10, &items), 0);
		for (size_t j = 0; j < items->n; j++)
			listed |= !strcmp(items->items[j].key, "short");
		CHECK_EQ(items->n, 2 + listed);
		kvt_mem_items_free(items);
		CHECK_MSG(!(past && listed), "LIST returned a record after it expired");
		CHECK_RC(kvt_mem_search(c, "ttl", q, 8, 3, &items), 0);
		for (size_t j = 0; j < items->n; j++)
			found |= !strcmp(items->items[j].key, "short");
		kvt_mem_items_free(items);
		CHECK_MSG(!(past && found), "SEARCH returned a record after it expired");
		gone = rc == KVT_ENOENT && !listed && !found;
		if (!gone)
			test_sleep_ms(100);
	}
	CHECK_MSG(gone, "a record with a TTL of 1 s is still returned after 15 s");
	CHECK_RC(kvt_mem_delete(c, "ttl", "short"), KVT_ENOENT);
	CHECK_RC(kvt_mem_get(c, "ttl", "long", &it), 0);
	kvt_mem_item_free(it);
	/* The sweeper removes it for good (bounded wait). */
	uint64_t n = 0;
	for (int i = 0; i < 150 && (n = kvtd_stat_u64(c, "meta.expired", NULL)) == 0; i++)
		test_sleep_ms(100);
	CHECK_MSG(n >= 1, "meta.expired is still 0 after 15 s");
	CHECK_EQ(kvtd_stat_u64(c, "tenant.0.records", NULL), 2);
	/* A new put under the key is a new record. */
	CHECK_RC(put_rec(c, "ttl", "short", 4, 100, 8, 0), 0);
	CHECK_RC(kvt_mem_get(c, "ttl", "short", &it), 0);
	check_item(it, "ttl", "short", 4, 100, 8);
	CHECK_EQ(it->expires_ms, 0);
	kvt_mem_item_free(it);
	kvt_conn_close(c);
	kvtd_stop_clean(&d);
}

/* ---- durability ------------------------------------------------------------------ */

struct writer {
	const char *sock;
	unsigned loop, thread, n;
	int rc;
};

static void dur_key(char *key, size_t cap, unsigned loop, unsigned thread, unsigned i)
{
	snprintf(key, cap, "l%u-t%u-%03u", loop, thread, i);
}

static uint64_t dur_id(unsigned loop, unsigned thread, unsigned i)
{
	return ((uint64_t)loop << 32) | ((uint64_t)thread << 16) | i;
}

static void *writer_main(void *arg)
{
	struct writer *w = arg;
	kvt_conn *c = NULL;
	w->rc = kvt_conn_open(w->sock, &c);
	if (w->rc)
		return NULL;
	kvt_conn_set_timeout(c, 60000);
	for (unsigned i = 0; i < w->n && !w->rc; i++) {
		char key[48];
		dur_key(key, sizeof(key), w->loop, w->thread, i);
		w->rc = put_rec(c, "dur", key, dur_id(w->loop, w->thread, i), 2000, 16, 0);
	}
	kvt_conn_close(c);
	return NULL;
}

TEST(acknowledged_records_survive_kill9_and_restarts)
{
	enum { THREADS = 4, PER_THREAD = 40 };
	const char *env = getenv("KVT_MEM_KILL_LOOPS");
	unsigned loops = env && atoi(env) > 0 ? (unsigned)atoi(env) : 3;
	struct kvtd d;
	kvtd_start(&d, MEM_CONF);
	d.keep_dir = true;
	for (unsigned l = 0; l < loops; l++) {
		struct writer w[THREADS];
		pthread_t th[THREADS];
		for (unsigned t = 0; t < THREADS; t++) {
			w[t] = (struct writer){ d.sock, l, t, PER_THREAD, 0 };
			CHECK(pthread_create(&th[t], NULL, writer_main, &w[t]) == 0);
		}
		for (unsigned t = 0; t < THREADS; t++) {
			pthread_join(th[t], NULL);
			CHECK_MSG(w[t].rc == 0, "writer %u: %s", t, kvt_errname(w[t].rc));
		}
		kvt_conn *c = kvtd_connect(&d, 60000);
		/* One deletion per loop, acknowledged before the kill. */
		char key[48];
		dur_key(key, sizeof(key), l, 0, 0);
		CHECK_RC(kvt_mem_delete(c, "dur", key), 0);
		uint64_t writes = kvtd_stat_u64(c, "meta.writes", NULL);
		uint64_t commits = kvtd_stat_u64(c, "meta.commits", NULL);
		test_log("loop %u: meta.writes %llu in %llu commits", l, (unsigned long long)writes,
			 (unsigned long long)commits);
		kvt_conn_close(c);
		kvtd_kill(&d);
		kvtd_restart(&d);
		c = kvtd_connect(&d, 60000);
		for (unsigned ll = 0; ll <= l; ll++) {
			for (unsigned t = 0; t < THREADS; t++) {
				for (unsigned i = 0; i < PER_THREAD; i++) {
					kvt_mem_item *it = NULL;
					dur_key(key, sizeof(key), ll, t, i);
					int rc = kvt_mem_get(c, "dur", key, &it);
					if (t == 0 && i == 0) {
						CHECK_MSG(rc == KVT_ENOENT,
							  "deleted record %s is back after kill -9 (%s)",
							  key, kvt_errname(rc));
						continue;
					}
					CHECK_MSG(rc == 0, "acknowledged record %s lost after kill -9: %s",
						  key, kvt_errname(rc));
					check_item(it, "dur", key, dur_id(ll, t, i), 2000, 16);
					kvt_mem_item_free(it);
				}
			}
		}
		CHECK_EQ(kvtd_stat_u64(c, "tenant.0.records", NULL),
			 (uint64_t)(l + 1) * (THREADS * PER_THREAD - 1));
		/* Search works on what was reloaded. */
		float q[16];
		fill_vec(q, 16, dur_id(l, 1, 7));
		kvt_mem_items *res = NULL;
		CHECK_RC(kvt_mem_search(c, "dur", q, 16, 1, &res), 0);
		dur_key(key, sizeof(key), l, 1, 7);
		CHECK(res->n == 1 && !strcmp(res->items[0].key, key));
		kvt_mem_items_free(res);
		kvt_conn_close(c);
	}
	/* And a clean restart keeps everything too. */
	kvtd_stop_clean(&d);
	kvtd_restart(&d);
	kvt_conn *c = kvtd_connect(&d, 60000);
	CHECK_EQ(kvtd_stat_u64(c, "tenant.0.records", NULL),
		 (uint64_t)loops * (THREADS * PER_THREAD - 1));
	kvt_conn_close(c);
	d.keep_dir = false;
	kvtd_stop_clean(&d);
}

/* ---- bad input ------------------------------------------------------------------ */

TEST(bad_records_are_refused_by_the_library)
{
	struct kvtd d;
	kvtd_start(&d, MEM_CONF);
	kvt_conn *c = kvtd_connect(&d, 60000);
	char longname[KVT_NAME_LEN_MAX + 2];
	memset(longname, 'x', sizeof(longname) - 1);
	longname[sizeof(longname) - 1] = 0; /* 256 bytes */
	float e[9] = { 1, 2, 3, 4, 5, 6, 7, 8, 9 };
	kvt_mem_record ok = { .ns = "n", .key = "k", .value = "v", .value_len = 1, .embedding = e,
			      .dim = 8 };
	CHECK_RC(kvt_mem_put(c, &ok), 0);

	kvt_mem_record r = ok;
	r.ns = "";
	CHECK_RC(kvt_mem_put(c, &r), KVT_EINVAL);
	r = ok;
	r.key = "";
	CHECK_RC(kvt_mem_put(c, &r), KVT_EINVAL);
	r = ok;
	r.ns = longname;
	CHECK_RC(kvt_mem_put(c, &r), KVT_EINVAL);
	r = ok;
	r.key = longname;
	CHECK_RC(kvt_mem_put(c, &r), KVT_EINVAL);
	/* Values over mem_value_max (64 KiB here). */
	static uint8_t big[VALUE_MAX + 1];
	r = ok;
	r.value = big;
	r.value_len = VALUE_MAX + 1;
	CHECK_RC(kvt_mem_put(c, &r), KVT_EMSGSIZE);
	r.value_len = VALUE_MAX;
	CHECK_RC(kvt_mem_put(c, &r), 0);
	/* The namespace's dimension is 8. */
	r = ok;
	r.dim = 9;
	CHECK_RC(kvt_mem_put(c, &r), KVT_ERANGE);
	r.dim = 7;
	CHECK_RC(kvt_mem_put(c, &r), KVT_ERANGE);
	r.key = "k2";
	r.dim = 0;
	r.embedding = NULL;
	CHECK_RC(kvt_mem_put(c, &r), 0); /* no embedding is fine */
	/* NaN, infinity, too many dimensions, too much metadata. */
	r = ok;
	e[2] = NAN;
	CHECK_RC(kvt_mem_put(c, &r), KVT_EINVAL);
	e[2] = INFINITY;
	CHECK_RC(kvt_mem_put(c, &r), KVT_EINVAL);
	e[2] = -INFINITY;
	CHECK_RC(kvt_mem_put(c, &r), KVT_EINVAL);
	e[2] = 3;
	float *huge = calloc(KVT_MEM_DIM_MAX + 1, sizeof(float));
	CHECK(huge != NULL);
	huge[0] = 1;
	r = ok;
	r.ns = "wide";
	r.embedding = huge;
	r.dim = KVT_MEM_DIM_MAX + 1;
	CHECK_RC(kvt_mem_put(c, &r), KVT_EINVAL);
	r.dim = KVT_MEM_DIM_MAX;
	CHECK_RC(kvt_mem_put(c, &r), 0);
	free(huge);
	static char meta[KVT_MEM_META_MAX + 1];
	memset(meta, 'm', sizeof(meta));
	r = ok;
	r.metadata = meta;
	r.metadata_len = KVT_MEM_META_MAX + 1;
	CHECK_RC(kvt_mem_put(c, &r), KVT_EINVAL);
	r.metadata_len = KVT_MEM_META_MAX;
	CHECK_RC(kvt_mem_put(c, &r), 0);
	/* The record was only ever changed by the accepted puts. */
	kvt_mem_item *it = NULL;
	CHECK_RC(kvt_mem_get(c, "n", "k", &it), 0);
	CHECK_EQ(it->dim, 8);
	CHECK_EQ(it->metadata_len, KVT_MEM_META_MAX);
	CHECK(it->embedding[2] == 3.0f);
	kvt_mem_item_free(it);
	it = NULL;
	CHECK_RC(kvt_mem_get(c, "", "k", &it), KVT_EINVAL);
	CHECK_RC(kvt_mem_get(c, "n", "", &it), KVT_EINVAL);
	CHECK_RC(kvt_mem_get(c, longname, "k", &it), KVT_EINVAL);
	CHECK_RC(kvt_mem_delete(c, "n", ""), KVT_EINVAL);
	CHECK_RC(kvt_mem_delete(c, "n", longname), KVT_EINVAL);
	kvt_mem_items *items = NULL;
	CHECK_RC(kvt_mem_list(c, longname, NULL, NULL, 10, &items), KVT_EINVAL);
	CHECK_RC(kvt_mem_search(c, longname, e, 8, 1, &items), KVT_EINVAL);
	CHECK_RC(kvt_mem_search(c, "n", e, 0, 1, &items), KVT_EINVAL);
	CHECK(it == NULL && items == NULL);
	CHECK_RC(kvt_ping(c), 0);
	kvt_conn_close(c);
	kvtd_stop_clean(&d);
}

struct raw {
	int fd;
	uint64_t id;
	uint8_t rep[1 << 16];
	struct kvt_hdr h;
};

/* The bad-input table is checked row by row to the end, so one run names every
 * answer that differs from the contract; the case fails at the end if any did. */
static int mismatches;

#define EXPECT_RC(rc, want)                                                            \
	do {                                                                           \
		int rc_ = (rc), want_ = (want);                                        \
		if (rc_ != want_) {                                                    \
			mismatches++;                                                  \
			test_log("%s:%d: %s is %s, the contract says %s", __FILE__,    \
				 __LINE__, #rc, test_errname(rc_), test_errname(want_)); \
		}                                                                      \
	} while (0)

static int raw_call(struct raw *rw, uint16_t op, const struct kvt_fields_writer *w)
{
	CHECK(!w->err);
	uint64_t id = ++rw->id;
	CHECK_RC(raw_send_frame(rw->fd, op, 0, id, w->buf, (uint32_t)w->len), 0);
	CHECK_RC(raw_recv_frame(rw->fd, &rw->h, rw->rep, sizeof(rw->rep), 20000), 0);
	CHECK_EQ(rw->h.request_id, id);
	CHECK_EQ(rw->h.opcode, op);
	return rw->h.status;
}

/* A MEM_PUT body (ns "n", key "raw", value "v", 8 floats) with tag skip left out and
 * tag over given over_val/over_len instead (appended if it is not a base field). */
static void put_body(struct kvt_fields_writer *w, uint8_t *buf, size_t cap, unsigned skip,
		     unsigned over, const void *over_val, size_t over_len)
{
	uint8_t emb[32];
	for (int i = 0; i < 8; i++) {
		float f = (float)(i + 1);
		uint32_t u;
		memcpy(&u, &f, 4);
		kvt_put32(emb + 4 * i, u);
	}
	const struct {
		unsigned tag;
		const void *v;
		size_t len;
	} f[] = { { KVT_TAG_NS, "n", 1 }, { KVT_TAG_KEY, "raw", 3 }, { KVT_TAG_VALUE, "v", 1 },
		  { KVT_TAG_EMBEDDING, emb, sizeof(emb) } };
	bool used = false;
	kvt_fw_init(w, buf, cap);
	for (size_t i = 0; i < 4; i++) {
		if (f[i].tag == skip)
			continue;
		if (f[i].tag == over) {
			kvt_fw_bytes(w, over, over_val, over_len);
			used = true;
			continue;
		}
		kvt_fw_bytes(w, f[i].tag, f[i].v, f[i].len);
	}
	if (over && !used)
		kvt_fw_bytes(w, over, over_val, over_len);
}

TEST(bad_record_requests_get_the_daemons_own_answers)
{
	struct kvtd d;
	kvtd_start(&d, MEM_CONF);
	struct raw *rw = calloc(1, sizeof(*rw));
	CHECK(rw != NULL);
	rw->fd = raw_connect(d.sock);
	raw_hello(rw->fd);
	static uint8_t buf[VALUE_MAX + KVT_MEM_META_MAX + 4096];
	static uint8_t zeros[VALUE_MAX + KVT_MEM_META_MAX + 16];
	char longname[KVT_NAME_LEN_MAX + 1];
	memset(longname, 'x', sizeof(longname));
	struct kvt_fields_writer w;

	put_body(&w, buf, sizeof(buf), 0, 0, NULL, 0);
	EXPECT_RC(raw_call(rw, KVT_OP_MEM_PUT, &w), 0);
	CHECK_EQ(rw->h.body_len, 0);

	/* Names. */
	put_body(&w, buf, sizeof(buf), 0, KVT_TAG_NS, "", 0);
	EXPECT_RC(raw_call(rw, KVT_OP_MEM_PUT, &w), KVT_EINVAL);
	put_body(&w, buf, sizeof(buf), 0, KVT_TAG_KEY, "", 0);
	EXPECT_RC(raw_call(rw, KVT_OP_MEM_PUT, &w), KVT_EINVAL);
	put_body(&w, buf, sizeof(buf), 0, KVT_TAG_NS, longname, sizeof(longname));
	EXPECT_RC(raw_call(rw, KVT_OP_MEM_PUT, &w), KVT_EINVAL);
	put_body(&w, buf, sizeof(buf), 0, KVT_TAG_KEY, longname, sizeof(longname));
	EXPECT_RC(raw_call(rw, KVT_OP_MEM_PUT, &w), KVT_EINVAL);
	put_body(&w, buf, sizeof(buf), 0, KVT_TAG_KEY, "a\0b", 3);
	EXPECT_RC(raw_call(rw, KVT_OP_MEM_PUT, &w), KVT_EINVAL);
	/* Missing fields, wrong sizes. */
	static const unsigned required[] = { KVT_TAG_NS, KVT_TAG_KEY, KVT_TAG_VALUE };
	for (size_t i = 0; i < 3; i++) {
		put_body(&w, buf, sizeof(buf), required[i], 0, NULL, 0);
		test_log("MEM_PUT without tag %u:", required[i]);
		EXPECT_RC(raw_call(rw, KVT_OP_MEM_PUT, &w), KVT_EBADMSG);
	}
	put_body(&w, buf, sizeof(buf), 0, KVT_TAG_EMBEDDING, zeros, 6);
	EXPECT_RC(raw_call(rw, KVT_OP_MEM_PUT, &w), KVT_EBADMSG);
	put_body(&w, buf, sizeof(buf), 0, KVT_TAG_EMBEDDING, zeros, 0);
	EXPECT_RC(raw_call(rw, KVT_OP_MEM_PUT, &w), KVT_EBADMSG);
	put_body(&w, buf, sizeof(buf), 0, KVT_TAG_TTL_S, zeros, 2);
	EXPECT_RC(raw_call(rw, KVT_OP_MEM_PUT, &w), KVT_EBADMSG);
	put_body(&w, buf, sizeof(buf), 0, KVT_TAG_METADATA, zeros, KVT_MEM_META_MAX + 1);
	int rc = raw_call(rw, KVT_OP_MEM_PUT, &w);
	CHECK_MSG(rc == KVT_EBADMSG || rc == KVT_EINVAL, "metadata of 65537 bytes: %s",
		  kvt_errname(rc));
	/* The value limit, the namespace's dimension, non-finite floats. */
	put_body(&w, buf, sizeof(buf), 0, KVT_TAG_VALUE, zeros, VALUE_MAX + 1);
	EXPECT_RC(raw_call(rw, KVT_OP_MEM_PUT, &w), KVT_EMSGSIZE);
	put_body(&w, buf, sizeof(buf), 0, KVT_TAG_VALUE, zeros, VALUE_MAX);
	EXPECT_RC(raw_call(rw, KVT_OP_MEM_PUT, &w), 0);
	put_body(&w, buf, sizeof(buf), 0, KVT_TAG_EMBEDDING, zeros, 12);
	EXPECT_RC(raw_call(rw, KVT_OP_MEM_PUT, &w), KVT_ERANGE);
	uint8_t nan[32];
	memset(nan, 0, sizeof(nan));
	kvt_put32(nan + 8, 0x7fc00000u); /* quiet NaN */
	put_body(&w, buf, sizeof(buf), 0, KVT_TAG_EMBEDDING, nan, sizeof(nan));
	EXPECT_RC(raw_call(rw, KVT_OP_MEM_PUT, &w), KVT_EINVAL);
	kvt_put32(nan + 8, 0x7f800000u); /* +Inf */
	put_body(&w, buf, sizeof(buf), 0, KVT_TAG_EMBEDDING, nan, sizeof(nan));
	EXPECT_RC(raw_call(rw, KVT_OP_MEM_PUT, &w), KVT_EINVAL);
	/* Framing. */
	put_body(&w, buf, sizeof(buf), 0, 0x6123, "x", 1);
	EXPECT_RC(raw_call(rw, KVT_OP_MEM_PUT, &w), KVT_EBADMSG);
	put_body(&w, buf, sizeof(buf), 0, KVT_TAG_IGNORABLE | 0x123, "x", 1);
	EXPECT_RC(raw_call(rw, KVT_OP_MEM_PUT, &w), 0);
	put_body(&w, buf, sizeof(buf), 0, 0, NULL, 0);
	kvt_fw_bytes(&w, KVT_TAG_KEY, "dup", 3);
	EXPECT_RC(raw_call(rw, KVT_OP_MEM_PUT, &w), KVT_EBADMSG);

	/* GET, DELETE. */
	kvt_fw_init(&w, buf, sizeof(buf));
	kvt_fw_bytes(&w, KVT_TAG_NS, "n", 1);
	EXPECT_RC(raw_call(rw, KVT_OP_MEM_GET, &w), KVT_EBADMSG);
	kvt_fw_bytes(&w, KVT_TAG_KEY, "raw", 3);
	EXPECT_RC(raw_call(rw, KVT_OP_MEM_GET, &w), 0);
	{
		struct kvt_fields f;
		CHECK_RC(kvt_fields_decode(rw->rep, rw->h.body_len, &f), 0);
		static const unsigned want[] = { KVT_TAG_NS, KVT_TAG_KEY, KVT_TAG_VALUE,
						 KVT_TAG_EMBEDDING, KVT_TAG_CREATED_MS,
						 KVT_TAG_UPDATED_MS, KVT_TAG_EXPIRES_MS };
		for (size_t i = 0; i < sizeof(want) / sizeof(want[0]); i++)
			CHECK_MSG(f.val[want[i]] != NULL, "MEM_GET reply lacks tag %u", want[i]);
		CHECK_EQ(f.len[KVT_TAG_VALUE], 1); /* the last accepted put's */
		CHECK_EQ(f.len[KVT_TAG_EMBEDDING], 32);
	}
	kvt_fw_init(&w, buf, sizeof(buf));
	kvt_fw_bytes(&w, KVT_TAG_NS, "n", 1);
	kvt_fw_bytes(&w, KVT_TAG_KEY, "nothing", 7);
	EXPECT_RC(raw_call(rw, KVT_OP_MEM_GET, &w), KVT_ENOENT);
	CHECK_EQ(rw->h.body_len, 0);
	EXPECT_RC(raw_call(rw, KVT_OP_MEM_DELETE, &w), KVT_ENOENT);
	kvt_fw_init(&w, buf, sizeof(buf));
	kvt_fw_bytes(&w, KVT_TAG_KEY, "raw", 3);
	EXPECT_RC(raw_call(rw, KVT_OP_MEM_DELETE, &w), KVT_EBADMSG);

	/* LIST. */
	kvt_fw_init(&w, buf, sizeof(buf));
	EXPECT_RC(raw_call(rw, KVT_OP_MEM_LIST, &w), KVT_EBADMSG);
	kvt_fw_u32(&w, KVT_TAG_LIMIT, 0);
	EXPECT_RC(raw_call(rw, KVT_OP_MEM_LIST, &w), KVT_EINVAL);
	kvt_fw_init(&w, buf, sizeof(buf));
	kvt_fw_u32(&w, KVT_TAG_LIMIT, 1001);
	EXPECT_RC(raw_call(rw, KVT_OP_MEM_LIST, &w), KVT_EINVAL);
	kvt_fw_init(&w, buf, sizeof(buf));
	kvt_fw_u32(&w, KVT_TAG_LIMIT, 5);
	kvt_fw_bytes(&w, KVT_TAG_AFTER_NS, longname, sizeof(longname));
	EXPECT_RC(raw_call(rw, KVT_OP_MEM_LIST, &w), KVT_EINVAL);
	kvt_fw_init(&w, buf, sizeof(buf));
	kvt_fw_u32(&w, KVT_TAG_LIMIT, 5);
	EXPECT_RC(raw_call(rw, KVT_OP_MEM_LIST, &w), 0);
	{
		struct kvt_fields f;
		CHECK_RC(kvt_fields_decode(rw->rep, rw->h.body_len, &f), 0);
		CHECK_EQ(f.nentries, 1);
		CHECK(f.val[KVT_TAG_MORE] != NULL);
	}

	/* SEARCH. */
	uint8_t q[32];
	memset(q, 0, sizeof(q));
	kvt_put32(q, 0x3f800000u); /* 1.0f */
	kvt_fw_init(&w, buf, sizeof(buf));
	kvt_fw_bytes(&w, KVT_TAG_EMBEDDING, q, sizeof(q));
	EXPECT_RC(raw_call(rw, KVT_OP_MEM_SEARCH, &w), KVT_EBADMSG); /* no K */
	kvt_fw_init(&w, buf, sizeof(buf));
	kvt_fw_u32(&w, KVT_TAG_K, 3);
	EXPECT_RC(raw_call(rw, KVT_OP_MEM_SEARCH, &w), KVT_EBADMSG); /* no EMBEDDING */
	kvt_fw_bytes(&w, KVT_TAG_EMBEDDING, q, sizeof(q));
	EXPECT_RC(raw_call(rw, KVT_OP_MEM_SEARCH, &w), 0);
	{
		struct kvt_fields f;
		CHECK_RC(kvt_fields_decode(rw->rep, rw->h.body_len, &f), 0);
		CHECK_EQ(f.nentries, 1);
		size_t pos = 0;
		const uint8_t *v;
		uint32_t len;
		CHECK_EQ(kvt_fields_next_entry(&f, &pos, &v, &len), 1);
		struct kvt_fields e;
		CHECK_RC(kvt_fields_decode(v, len, &e), 0);
		CHECK_EQ(e.len[KVT_TAG_SCORE], 4);
	}
	kvt_fw_init(&w, buf, sizeof(buf));
	kvt_fw_u32(&w, KVT_TAG_K, 0);
	kvt_fw_bytes(&w, KVT_TAG_EMBEDDING, q, sizeof(q));
	EXPECT_RC(raw_call(rw, KVT_OP_MEM_SEARCH, &w), KVT_EINVAL);
	kvt_fw_init(&w, buf, sizeof(buf));
	kvt_fw_u32(&w, KVT_TAG_K, 3);
	kvt_fw_bytes(&w, KVT_TAG_EMBEDDING, q, 28);
	EXPECT_RC(raw_call(rw, KVT_OP_MEM_SEARCH, &w), KVT_ERANGE);
	kvt_fw_init(&w, buf, sizeof(buf));
	kvt_fw_u32(&w, KVT_TAG_K, 3);
	kvt_fw_bytes(&w, KVT_TAG_EMBEDDING, q, sizeof(q));
	kvt_fw_bytes(&w, KVT_TAG_PREFIX, "elsewhere", 9);
	EXPECT_RC(raw_call(rw, KVT_OP_MEM_SEARCH, &w), KVT_ENOENT);
	kvt_fw_init(&w, buf, sizeof(buf));
	kvt_fw_u32(&w, KVT_TAG_K, 3);
	kvt_fw_bytes(&w, KVT_TAG_EMBEDDING, nan, sizeof(nan));
	EXPECT_RC(raw_call(rw, KVT_OP_MEM_SEARCH, &w), KVT_EINVAL);

	CHECK_MSG(mismatches == 0, "%d answers differ from the contract (listed above)",
		  mismatches);
	close(rw->fd);
	free(rw);
	kvt_conn *c = kvtd_connect(&d, 60000);
	kvt_mem_item *it = NULL;
	CHECK_RC(kvt_mem_get(c, "n", "raw", &it), 0);
	CHECK_EQ(it->value_len, 1);
	CHECK_EQ(it->dim, 8);
	kvt_mem_item_free(it);
	kvt_conn_close(c);
	kvtd_stop_clean(&d);
}

/* ---- tenants ------------------------------------------------------------------- */

static void nobody_cannot_see_roots_records(const struct kvtd *d)
{
	kvt_conn *c = kvtd_connect(d, 60000);
	CHECK_EQ(kvt_conn_server(c)->tenant, NOBODY);
	kvt_mem_item *it = NULL;
	CHECK_RC(kvt_mem_get(c, "notes", "k", &it), KVT_ENOENT);
	kvt_mem_items *items = NULL;
	CHECK_RC(kvt_mem_list(c, NULL, NULL, NULL, 100, &items), 0);
	CHECK_EQ(items->n, 0);
	kvt_mem_items_free(items);
	float q[8];
	fill_vec(q, 8, 1);
	items = NULL;
	CHECK_RC(kvt_mem_search(c, "", q, 8, 5, &items), KVT_ENOENT);
	CHECK_RC(kvt_mem_search(c, "notes", q, 8, 5, &items), KVT_ENOENT);
	CHECK_RC(kvt_mem_delete(c, "notes", "k"), KVT_ENOENT);
	/* Its own "notes" namespace, with a dimension of its own. */
	CHECK_RC(put_rec(c, "notes", "k", 77, 100, 4, 0), 0);
	CHECK_RC(kvt_mem_get(c, "notes", "k", &it), 0);
	check_item(it, "notes", "k", 77, 100, 4);
	kvt_mem_item_free(it);
	CHECK_RC(kvt_mem_search(c, "", q, 4, 5, &items), 0);
	CHECK_EQ(items->n, 1);
	CHECK(!strcmp(items->items[0].key, "k"));
	kvt_mem_items_free(items);
	CHECK_RC(kvt_mem_search(c, "", q, 8, 5, &items), KVT_ERANGE);
	bool present;
	CHECK_EQ(kvtd_stat_u64(c, "tenant.65534.records", NULL), 1);
	kvtd_stat_u64(c, "tenant.0.records", &present);
	CHECK_MSG(!present, "tenant 65534 sees tenant 0's record count");
	kvt_conn_close(c);
}

TEST(tenants_never_see_each_others_records)
{
	need_root();
	struct kvtd d;
	kvtd_start(&d, MEM_CONF);
	kvt_conn *c = kvtd_connect(&d, 60000);
	CHECK_RC(put_rec(c, "notes", "k", 1, 100, 8, 0), 0);
	CHECK_RC(put_rec(c, "notes", "k2", 2, 100, 8, 0), 0);

	as_nobody(&d, nobody_cannot_see_roots_records);

	kvt_mem_item *it = NULL;
	CHECK_RC(kvt_mem_get(c, "notes", "k", &it), 0);
	check_item(it, "notes", "k", 1, 100, 8);
	kvt_mem_item_free(it);
	kvt_mem_items *items = NULL;
	CHECK_RC(kvt_mem_list(c, NULL, NULL, NULL, 100, &items), 0);
	CHECK_EQ(items->n, 2);
	kvt_mem_items_free(items);
	CHECK_EQ(kvtd_stat_u64(c, "tenant.0.records", NULL), 2);
	CHECK_EQ(kvtd_stat_u64(c, "tenant.65534.records", NULL), 1);
	kvt_conn_close(c);
	kvtd_stop_clean(&d);
}

TEST_MAIN(put_get_upsert_delete, list_by_namespace_prefix_with_pagination,
	  search_is_exact_top_k_by_cosine, expired_records_are_never_returned,
	  acknowledged_records_survive_kill9_and_restarts, bad_records_are_refused_by_the_library,
	  bad_record_requests_get_the_daemons_own_answers, tenants_never_see_each_others_records)
