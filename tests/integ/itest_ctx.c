/*
 * itest_ctx.c - saved contexts against a real kvtierd with an NVMe tier: save,
 * load, list (prefix, pagination) and delete round trips; replacing a context
 * under its name (the new manifest wins, the old one's blocks lose their
 * reference, shared blocks keep one); TTL expiry; a block stored nowhere
 * (KVT_ENOENT and its index); no NVMe tier (KVT_EOPNOTSUPP); bad requests sent
 * by hand (the daemon's own answers); tenant isolation; and memstat's section on
 * contexts and records.
 *
 * Whether a block is held by a context is seen from outside through DELETE: the
 * NVMe tier refuses to drop a referenced block (the block stays findable), and
 * drops an unreferenced one.
 */
#include <grp.h>
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

#define KiB (1024ull)
#define MiB (1024ull * 1024)
#define BLK (256 * KiB)
#define TOKENS_PER_BLOCK 16

/* 64 MiB host tier (the harness's) over 512 MiB of NVMe in 64 MiB segments. */
#define NVME_CONF "nvme_capacity = 512MiB\nnvme_segment_size = 64MiB\n"

/* ---- helpers ------------------------------------------------------------------ */

/* Block id: its key and its BLK bytes are functions of the id alone. */
static kvt_key blk_key(uint64_t id)
{
	return id_key(id, 0xc7c7);
}

static const kvt_block_desc blk_desc = { .dtype = KVT_DTYPE_BF16, .layers = 4,
					 .tokens = TOKENS_PER_BLOCK };

static kvt_key test_salt(void)
{
	kvt_salt_params sp = { .model_id = "itest-ctx", .kv_dtype = "bf16",
			       .block_tokens = TOKENS_PER_BLOCK };
	kvt_key salt;
	CHECK_RC(kvt_key_salt(&sp, &salt), 0);
	return salt;
}

/* PUT blocks ids[0..n) (each after the previous one in its chain) through r. */
static void put_ids(kvt_conn *c, kvt_region *r, const uint64_t *ids, size_t n)
{
	for (size_t i = 0; i < n; i++) {
		id_fill(kvt_region_base(r), BLK, ids[i]);
		kvt_put_item it = { .key = blk_key(ids[i]), .region = r, .length = BLK,
				    .desc = blk_desc };
		if (i)
			it.parent = blk_key(ids[i - 1]);
		CHECK_RC(kvt_block_put(c, &it, 1), 0);
	}
}

/* GET every block of ids and compare it with what was written. */
static void check_ids(kvt_conn *c, kvt_region *r, const uint64_t *ids, size_t n)
{
	uint8_t *want = malloc(BLK);
	CHECK(want != NULL);
	for (size_t i = 0; i < n; i++) {
		memset(kvt_region_base(r), 0, BLK);
		kvt_get_item g = { .key = blk_key(ids[i]), .region = r, .capacity = BLK };
		int rc = kvt_block_get(c, &g, 1);
		CHECK_MSG(rc == 0, "GET of block %zu (id %llu): %s, item %s", i,
			  (unsigned long long)ids[i], kvt_errname(rc), kvt_errname(g.status));
		CHECK_EQ(g.length, BLK);
		id_fill(want, BLK, ids[i]);
		CHECK_MSG(memcmp(kvt_region_base(r), want, BLK) == 0, "block %zu (id %llu) differs",
			  i, (unsigned long long)ids[i]);
	}
	free(want);
}

static void ids_range(uint64_t *ids, size_t n, uint64_t first)
{
	for (size_t i = 0; i < n; i++)
		ids[i] = first + i;
}

/* Token ids of a context over ids: TOKENS_PER_BLOCK per block, from the block ids. */
static uint32_t *make_tokens(const uint64_t *ids, size_t n)
{
	uint32_t *t = malloc(n * TOKENS_PER_BLOCK * sizeof(*t) + 1);
	CHECK(t != NULL);
	for (size_t i = 0; i < n * TOKENS_PER_BLOCK; i++)
		t[i] = (uint32_t)(mix64(ids[i / TOKENS_PER_BLOCK] * 131 + i % TOKENS_PER_BLOCK) %
				  128256);
	return t;
}

/* Save ids as name, with token ids and meta (may be NULL). Returns the result. */
static int save_ids(kvt_conn *c, const char *name, const uint64_t *ids, size_t n,
		    const char *meta, uint32_t ttl_s, size_t *missing)
{
	kvt_key *keys = malloc(n * sizeof(*keys) + 1);
	CHECK(keys != NULL);
	for (size_t i = 0; i < n; i++)
		keys[i] = blk_key(ids[i]);
	uint32_t *tokens = make_tokens(ids, n);
	kvt_context ctx = {
		.name = name,
		.model_salt = test_salt(),
		.token_count = n * TOKENS_PER_BLOCK,
		.keys = keys,
		.nkeys = n,
		.tokens = tokens,
		.metadata = meta,
		.metadata_len = meta ? strlen(meta) : 0,
		.ttl_s = ttl_s,
	};
	int rc = kvt_ctx_save(c, &ctx, missing);
	free(tokens);
	free(keys);
	return rc;
}

/* The manifest says exactly what save_ids saved. */
static void check_manifest(const kvt_ctx_info *in, const char *name, const uint64_t *ids,
			   size_t n, const char *meta)
{
	CHECK_MSG(strcmp(in->name, name) == 0, "loaded '%s', asked for '%s'", in->name, name);
	kvt_key salt = test_salt();
	CHECK(kvt_key_equal(&in->model_salt, &salt));
	CHECK_EQ(in->token_count, n * TOKENS_PER_BLOCK);
	CHECK_EQ(in->nkeys, n);
	CHECK(in->keys != NULL);
	for (size_t i = 0; i < n; i++) {
		kvt_key k = blk_key(ids[i]);
		CHECK_MSG(kvt_key_equal(&in->keys[i], &k), "manifest key %zu differs", i);
	}
	CHECK_EQ(in->ntokens, n * TOKENS_PER_BLOCK);
	uint32_t *tokens = make_tokens(ids, n);
	CHECK(in->tokens != NULL);
	CHECK_MSG(memcmp(in->tokens, tokens, n * TOKENS_PER_BLOCK * 4) == 0,
		  "token ids differ from the saved ones");
	free(tokens);
	if (meta) {
		CHECK_EQ(in->metadata_len, strlen(meta));
		CHECK(memcmp(in->metadata, meta, strlen(meta)) == 0);
	} else {
		CHECK_EQ(in->metadata_len, 0);
	}
	CHECK_EQ(in->bytes, (uint64_t)n * BLK);
}

static size_t lookup_count(kvt_conn *c, uint64_t id, uint8_t *tier)
{
	kvt_key k = blk_key(id);
	size_t found = 0;
	uint8_t t = 0xee;
	CHECK_RC(kvt_block_lookup(c, &k, 1, &found, &t), 0);
	if (tier)
		*tier = t;
	return found;
}

/*
 * Try to DELETE block id: a block a live context references is refused with
 * KVT_EREFERENCED and stays where it was (LOOKUP still finds it); any other block
 * goes. Returns true if it was held by a reference.
 */
static bool delete_shows_referenced(kvt_conn *c, uint64_t id)
{
	kvt_key k = blk_key(id);
	int st = 0;
	int rc = kvt_block_delete(c, &k, 1, &st);
	uint8_t tier = 0;
	size_t found = lookup_count(c, id, &tier);
	if (rc == 0 && st == 0) {
		CHECK_MSG(found == 0, "block id %llu still found after a successful DELETE",
			  (unsigned long long)id);
		return false;
	}
	test_log("DELETE of block id %llu: %s / item %s; LOOKUP finds %zu (tier %u)",
		 (unsigned long long)id, kvt_errname(rc), kvt_errname(st), found, tier);
	CHECK_MSG(rc == KVT_EPARTIAL && st == KVT_EREFERENCED,
		  "DELETE of block id %llu failed with %s / item %s, not EREFERENCED",
		  (unsigned long long)id, kvt_errname(rc), kvt_errname(st));
	CHECK_MSG(found == 1, "DELETE of block id %llu was refused but the block is gone",
		  (unsigned long long)id);
	return true;
}

/* Start a daemon on conf, connect (60 s calls) and create a BLK region in *r. */
static kvt_conn *start_with_region(struct kvtd *d, const char *conf, kvt_region **r)
{
	kvtd_start(d, conf);
	kvt_conn *c = kvtd_connect(d, 60000);
	CHECK_RC(kvt_region_create(c, BLK, r), 0);
	return c;
}

/* Destroy r, close c and stop the daemon, which must exit cleanly. */
static void end_with_region(struct kvtd *d, kvt_conn *c, kvt_region *r)
{
	kvt_region_destroy(r);
	kvt_conn_close(c);
	kvtd_stop_clean(d);
}

/* ---- round trips ------------------------------------------------------------------ */

TEST(save_load_delete_round_trip)
{
	struct kvtd d;
	kvt_region *r = NULL;
	kvt_conn *c = start_with_region(&d, NVME_CONF, &r);
	uint64_t ids[12];
	ids_range(ids, 12, 1000);
	put_ids(c, r, ids, 12);

	uint64_t t0 = realtime_ms();
	size_t missing = 777;
	const char *meta = "model=itest\nturns=3\n";
	CHECK_RC(save_ids(c, "chat/alice", ids, 12, meta, 0, &missing), 0);
	uint64_t t1 = realtime_ms();

	kvt_ctx_info *in = NULL;
	CHECK_RC(kvt_ctx_load(c, "chat/alice", KVT_TIER_HOST, 20000, &in), 0);
	check_manifest(in, "chat/alice", ids, 12, meta);
	CHECK_MSG(in->created_ms + 1000 >= t0 && in->created_ms <= t1 + 1000,
		  "created_ms %llu outside the save call [%llu, %llu]",
		  (unsigned long long)in->created_ms, (unsigned long long)t0,
		  (unsigned long long)t1);
	CHECK_EQ(in->expires_ms, 0);
	CHECK(in->tiers != NULL);
	for (size_t i = 0; i < 12; i++)
		CHECK_MSG(in->tiers[i] == KVT_TIER_HOST, "block %zu reported in tier %u", i,
			  in->tiers[i]);
	CHECK_EQ(in->resident, 12);
	kvt_ctx_free(in);
	check_ids(c, r, ids, 12);

	/* Without token ids or metadata; a report-only load. */
	CHECK_RC(kvt_ctx_save(c,
			      &(kvt_context){ .name = "bare", .model_salt = test_salt(),
					      .token_count = 5,
					      .keys = (kvt_key[]){ blk_key(ids[3]) }, .nkeys = 1 },
			      NULL),
		 0);
	in = NULL;
	CHECK_RC(kvt_ctx_load(c, "bare", KVT_TIER_NVME, 0, &in), 0);
	CHECK_EQ(in->nkeys, 1);
	CHECK_EQ(in->token_count, 5);
	CHECK(in->tokens == NULL);
	CHECK_EQ(in->ntokens, 0);
	CHECK_EQ(in->metadata_len, 0);
	CHECK_EQ(in->bytes, BLK);
	CHECK_MSG(in->tiers[0] == KVT_TIER_HOST || in->tiers[0] == KVT_TIER_NVME,
		  "tier %u", in->tiers[0]);
	kvt_ctx_free(in);

	/* No GPU tier here; unknown names. */
	in = NULL;
	CHECK_RC(kvt_ctx_load(c, "chat/alice", KVT_TIER_HBM, 0, &in), KVT_EOPNOTSUPP);
	CHECK(in == NULL);
	CHECK_RC(kvt_ctx_load(c, "chat/bob", KVT_TIER_HOST, 0, &in), KVT_ENOENT);
	CHECK(in == NULL);
	CHECK_RC(kvt_ctx_load(c, "chat/alic", KVT_TIER_HOST, 0, &in), KVT_ENOENT);
	CHECK_RC(kvt_ctx_delete(c, "chat/bob"), KVT_ENOENT);

	/* Delete: gone, and its blocks are no longer held (ids[3] is still "bare"'s). */
	CHECK_RC(kvt_ctx_delete(c, "chat/alice"), 0);
	CHECK_RC(kvt_ctx_load(c, "chat/alice", KVT_TIER_HOST, 0, &in), KVT_ENOENT);
	CHECK_RC(kvt_ctx_delete(c, "chat/alice"), KVT_ENOENT);
	CHECK(delete_shows_referenced(c, ids[3]));
	CHECK(!delete_shows_referenced(c, ids[0]));
	CHECK(!delete_shows_referenced(c, ids[11]));
	CHECK_RC(kvt_ctx_delete(c, "bare"), 0);
	CHECK(!delete_shows_referenced(c, ids[3]));
	/* A context whose blocks were deleted after its own deletion is simply gone. */
	end_with_region(&d, c, r);
}

/* Names in order, page by page: what a client walking the list sees. */
static size_t list_all(kvt_conn *c, const char *prefix, size_t cap, char (*names)[64],
		       size_t max, size_t *pages)
{
	char after[KVT_NAME_LEN_MAX + 1] = "";
	size_t total = 0;
	*pages = 0;
	for (;;) {
		kvt_ctx_info *list = NULL;
		size_t n = 99;
		bool more = true;
		CHECK_RC(kvt_ctx_list(c, prefix, *pages ? after : NULL, cap, &list, &n, &more), 0);
		(*pages)++;
		CHECK_MSG(n <= cap, "a page of %zu entries for cap %zu", n, cap);
		for (size_t i = 0; i < n; i++) {
			CHECK(total < max);
			CHECK(list[i].keys == NULL && list[i].tiers == NULL &&
			      list[i].tokens == NULL && list[i].metadata == NULL);
			snprintf(names[total++], 64, "%.63s", list[i].name);
		}
		if (n)
			snprintf(after, sizeof(after), "%s", list[n - 1].name);
		kvt_ctx_list_free(list, n);
		if (!more)
			break;
		CHECK_MSG(n == cap, "MORE set on a short page (%zu of %zu)", n, cap);
		CHECK(*pages < 100);
	}
	return total;
}

TEST(list_by_prefix_with_pagination)
{
	struct kvtd d;
	kvt_region *r = NULL;
	kvt_conn *c = start_with_region(&d, NVME_CONF, &r);
	uint64_t ids[3] = { 1, 2, 3 };
	put_ids(c, r, ids, 3);
	/* Saved out of order; 25 under "p/", 3 under "q/", one "p" alone. */
	for (int i = 24; i >= 0; i--) {
		char name[32];
		snprintf(name, sizeof(name), "p/%03d", i);
		CHECK_RC(save_ids(c, name, ids, 1 + (size_t)i % 3, NULL, 0, NULL), 0);
	}
	CHECK_RC(save_ids(c, "q/b", ids, 1, NULL, 0, NULL), 0);
	CHECK_RC(save_ids(c, "q/a", ids, 1, NULL, 0, NULL), 0);
	CHECK_RC(save_ids(c, "q/c", ids, 1, NULL, 3600, NULL), 0);
	CHECK_RC(save_ids(c, "p", ids, 2, NULL, 0, NULL), 0);

	static char names[64][64];
	size_t pages;
	size_t n = list_all(c, "p/", 10, names, 64, &pages);
	CHECK_EQ(n, 25);
	CHECK_EQ(pages, 3);
	for (size_t i = 0; i < n; i++) {
		char want[32];
		snprintf(want, sizeof(want), "p/%03zu", i);
		CHECK_MSG(strcmp(names[i], want) == 0, "entry %zu is '%s', expected '%s'", i,
			  names[i], want);
	}
	/* An exact multiple of the page size still ends. */
	n = list_all(c, "p/", 5, names, 64, &pages);
	CHECK_EQ(n, 25);
	CHECK(pages == 5 || pages == 6);
	n = list_all(c, "p/01", 3, names, 64, &pages);
	CHECK_EQ(n, 10);
	CHECK(strcmp(names[0], "p/010") == 0 && strcmp(names[9], "p/019") == 0);
	n = list_all(c, NULL, 1000, names, 64, &pages);
	CHECK_EQ(n, 29);
	CHECK_EQ(pages, 1);
	CHECK(strcmp(names[0], "p") == 0 && strcmp(names[1], "p/000") == 0 &&
	      strcmp(names[26], "q/a") == 0 && strcmp(names[28], "q/c") == 0);
	n = list_all(c, "", 7, names, 64, &pages);
	CHECK_EQ(n, 29);
	n = list_all(c, "zz", 10, names, 64, &pages);
	CHECK_EQ(n, 0);
	CHECK_EQ(pages, 1);

	/* Entries carry the figures of each context. */
	kvt_ctx_info *list = NULL;
	size_t cnt = 0;
	bool more = true;
	CHECK_RC(kvt_ctx_list(c, "q/", NULL, 10, &list, &cnt, &more), 0);
	CHECK_EQ(cnt, 3);
	CHECK(!more);
	CHECK(strcmp(list[0].name, "q/a") == 0);
	CHECK_EQ(list[0].nkeys, 1);
	CHECK_EQ(list[0].token_count, TOKENS_PER_BLOCK);
	CHECK_EQ(list[0].bytes, BLK);
	CHECK(list[0].created_ms > 0);
	CHECK_EQ(list[0].expires_ms, 0);
	CHECK(list[2].expires_ms > list[2].created_ms + 3500 * 1000ull);
	kvt_ctx_list_free(list, cnt);
	/* After the last name: empty. */
	list = NULL;
	CHECK_RC(kvt_ctx_list(c, "q/", "q/c", 10, &list, &cnt, &more), 0);
	CHECK_EQ(cnt, 0);
	CHECK(!more);
	kvt_ctx_list_free(list, cnt);
	/* After a name that does not exist: from the next one. */
	CHECK_RC(kvt_ctx_list(c, NULL, "p/0125", 2, &list, &cnt, &more), 0);
	CHECK_EQ(cnt, 2);
	CHECK(more);
	CHECK(strcmp(list[0].name, "p/013") == 0 && strcmp(list[1].name, "p/014") == 0);
	kvt_ctx_list_free(list, cnt);
	CHECK_RC(kvt_ctx_list(c, NULL, NULL, 0, &list, &cnt, &more), KVT_EINVAL);

	/* Deleted ones leave the list. */
	CHECK_RC(kvt_ctx_delete(c, "p/007"), 0);
	n = list_all(c, "p/", 10, names, 64, &pages);
	CHECK_EQ(n, 24);
	CHECK(strcmp(names[7], "p/008") == 0);
	end_with_region(&d, c, r);
}

TEST(replace_under_the_same_name_moves_the_references)
{
	struct kvtd d;
	kvt_region *r = NULL;
	kvt_conn *c = start_with_region(&d, NVME_CONF, &r);
	uint64_t a[8], b[8];
	ids_range(a, 8, 100);
	/* The new version shares the first two blocks of the old one. */
	b[0] = a[0];
	b[1] = a[1];
	ids_range(b + 2, 6, 200);
	put_ids(c, r, a, 8);
	put_ids(c, r, b + 2, 6);

	CHECK_RC(save_ids(c, "conv", a, 8, "v1", 0, NULL), 0);
	/* Saving the same version again changes nothing (references are not doubled). */
	CHECK_RC(save_ids(c, "conv", a, 8, "v1", 0, NULL), 0);
	CHECK_RC(save_ids(c, "conv", b, 8, "v2", 0, NULL), 0);

	kvt_ctx_info *in = NULL;
	CHECK_RC(kvt_ctx_load(c, "conv", KVT_TIER_HOST, 20000, &in), 0);
	check_manifest(in, "conv", b, 8, "v2");
	kvt_ctx_free(in);
	check_ids(c, r, b, 8);
	kvt_ctx_info *list = NULL;
	size_t n = 0;
	bool more = true;
	CHECK_RC(kvt_ctx_list(c, NULL, NULL, 10, &list, &n, &more), 0);
	CHECK_EQ(n, 1);
	kvt_ctx_list_free(list, n);

	/* Blocks only the old version named are free; the shared and new ones held. */
	for (size_t i = 2; i < 8; i++)
		CHECK_MSG(!delete_shows_referenced(c, a[i]),
			  "old-only block %zu still referenced after the replace", i);
	CHECK(delete_shows_referenced(c, a[0]));
	CHECK(delete_shows_referenced(c, b[5]));
	/* Still complete: its blocks come back from NVMe. */
	CHECK_RC(kvt_ctx_load(c, "conv", KVT_TIER_HOST, 20000, &in), 0);
	check_manifest(in, "conv", b, 8, "v2");
	kvt_ctx_free(in);
	check_ids(c, r, b, 8);

	/* Deleting the context lets every block go, exactly once referenced. */
	CHECK_RC(kvt_ctx_delete(c, "conv"), 0);
	for (size_t i = 0; i < 8; i++)
		CHECK_MSG(!delete_shows_referenced(c, b[i]),
			  "block %zu still referenced after the context was deleted", i);
	end_with_region(&d, c, r);
}

TEST(ttl_expiry_removes_the_context_and_its_references)
{
	struct kvtd d;
	kvt_region *r = NULL;
	kvt_conn *c = start_with_region(&d, NVME_CONF, &r);
	uint64_t a[4], b[2];
	ids_range(a, 4, 300);
	ids_range(b, 2, 400);
	put_ids(c, r, a, 4);
	put_ids(c, r, b, 2);
	CHECK_RC(save_ids(c, "short", a, 4, NULL, 1, NULL), 0);
	CHECK_RC(save_ids(c, "long", b, 2, NULL, 0, NULL), 0);

	kvt_ctx_info *in = NULL;
	uint64_t expires = 0;
	int rc = kvt_ctx_load(c, "short", KVT_TIER_NVME, 0, &in);
	if (rc == 0) {
		expires = in->expires_ms;
		CHECK_MSG(in->expires_ms >= in->created_ms + 1000 &&
				  in->expires_ms <= in->created_ms + 1001,
			  "expires_ms %llu for created_ms %llu and ttl 1 s",
			  (unsigned long long)in->expires_ms, (unsigned long long)in->created_ms);
		kvt_ctx_free(in);
	}
	/* Poll (bounded) until it is gone; never served past its expiry time. */
	bool gone = false;
	for (int i = 0; i < 150 && !gone; i++) {
		uint64_t before = realtime_ms();
		in = NULL;
		rc = kvt_ctx_load(c, "short", KVT_TIER_NVME, 0, &in);
		if (rc == 0) {
			CHECK_MSG(!expires || before <= expires,
				  "an expired context was loaded %llu ms after its expiry",
				  (unsigned long long)(before - expires));
			kvt_ctx_free(in);
			test_sleep_ms(100);
			continue;
		}
		CHECK_RC(rc, KVT_ENOENT);
		kvt_ctx_info *list = NULL;
		size_t n = 0;
		bool more;
		before = realtime_ms();
		CHECK_RC(kvt_ctx_list(c, NULL, NULL, 10, &list, &n, &more), 0);
		gone = true;
		for (size_t j = 0; j < n; j++)
			if (!strcmp(list[j].name, "short"))
				gone = false;
		kvt_ctx_list_free(list, n);
		CHECK_MSG(gone || (expires && before <= expires),
			  "CTX_LIST shows a context that expired %lld ms ago (and LOAD refuses it)",
			  (long long)(before - expires));
		if (!gone)
			test_sleep_ms(100);
	}
	CHECK_MSG(gone, "the 1 s context is still there after 15 s");
	CHECK_RC(kvt_ctx_delete(c, "short"), KVT_ENOENT);

	/* The sweeper drops its references (bounded wait), the other context keeps its. */
	bool freed = false;
	for (int i = 0; i < 150 && !freed; i++) {
		freed = !delete_shows_referenced(c, a[0]);
		if (!freed)
			test_sleep_ms(100);
	}
	CHECK_MSG(freed, "the expired context's blocks are still referenced after 15 s");
	for (size_t i = 1; i < 4; i++)
		CHECK(!delete_shows_referenced(c, a[i]));
	CHECK_RC(kvt_ctx_load(c, "long", KVT_TIER_HOST, 20000, &in), 0);
	check_manifest(in, "long", b, 2, NULL);
	kvt_ctx_free(in);
	CHECK(delete_shows_referenced(c, b[0]));
	uint64_t expired = kvtd_stat_u64(c, "meta.expired", NULL);
	CHECK_MSG(expired >= 1, "meta.expired is %llu", (unsigned long long)expired);
	end_with_region(&d, c, r);
}

TEST(block_stored_nowhere_is_named_by_its_index)
{
	struct kvtd d;
	kvt_region *r = NULL;
	kvt_conn *c = start_with_region(&d, NVME_CONF, &r);
	uint64_t ids[6];
	ids_range(ids, 6, 500);
	uint64_t stored[4] = { ids[0], ids[1], ids[3], ids[5] };
	put_ids(c, r, stored, 4);
	size_t missing = 999;
	CHECK_RC(save_ids(c, "holes", ids, 6, NULL, 0, &missing), KVT_ENOENT);
	CHECK_EQ(missing, 2);
	missing = 999;
	CHECK_RC(save_ids(c, "holes", ids + 3, 3, NULL, 0, &missing), KVT_ENOENT);
	CHECK_EQ(missing, 1);
	CHECK_RC(save_ids(c, "holes", ids + 3, 3, NULL, 0, NULL), KVT_ENOENT);
	/* Nothing was saved and nothing stays referenced. */
	kvt_ctx_info *in = NULL;
	CHECK_RC(kvt_ctx_load(c, "holes", KVT_TIER_HOST, 0, &in), KVT_ENOENT);
	for (size_t i = 0; i < 4; i++)
		CHECK(!delete_shows_referenced(c, stored[i]));

	/* A failed replace keeps the old version. */
	put_ids(c, r, stored, 4);
	CHECK_RC(save_ids(c, "keep", stored, 2, "old", 0, NULL), 0);
	missing = 999;
	CHECK_RC(save_ids(c, "keep", ids, 6, "new", 0, &missing), KVT_ENOENT);
	CHECK_EQ(missing, 2);
	CHECK_RC(kvt_ctx_load(c, "keep", KVT_TIER_HOST, 20000, &in), 0);
	check_manifest(in, "keep", stored, 2, "old");
	kvt_ctx_free(in);
	CHECK(!delete_shows_referenced(c, stored[2]));
	CHECK(delete_shows_referenced(c, stored[0]));

	/* The daemon's own answer carries MISSING in its body. */
	int fd = raw_connect(d.sock);
	raw_hello(fd);
	uint8_t body[256], rep[64];
	struct kvt_fields_writer w;
	kvt_fw_init(&w, body, sizeof(body));
	kvt_fw_bytes(&w, KVT_TAG_NAME, "raw", 3);
	uint8_t salt[16] = { 0 }, keys[3 * 16];
	kvt_fw_bytes(&w, KVT_TAG_SALT, salt, 16);
	kvt_fw_u64(&w, KVT_TAG_TOKEN_COUNT, 0);
	for (int i = 0; i < 3; i++) {
		kvt_key k = blk_key(i == 2 ? ids[2] : stored[i]);
		kvt_key_encode(&k, keys + i * 16);
	}
	kvt_fw_bytes(&w, KVT_TAG_KEYS, keys, sizeof(keys));
	CHECK(!w.err);
	CHECK_RC(raw_send_frame(fd, KVT_OP_CTX_SAVE, 0, 41, body, (uint32_t)w.len), 0);
	struct kvt_hdr h;
	CHECK_RC(raw_recv_frame(fd, &h, rep, sizeof(rep), 20000), 0);
	CHECK_EQ(h.request_id, 41);
	CHECK_RC(h.status, KVT_ENOENT);
	struct kvt_fields f;
	CHECK_RC(kvt_fields_decode(rep, h.body_len, &f), 0);
	uint32_t m = 99;
	CHECK_RC(kvt_fields_u32(&f, KVT_TAG_MISSING, &m), 0);
	CHECK_EQ(m, 2);
	close(fd);
	end_with_region(&d, c, r);
}

TEST(contexts_without_an_nvme_tier_are_not_supported)
{
	struct kvtd d;
	kvt_region *r = NULL;
	kvt_conn *c = start_with_region(&d, NULL, &r); /* the harness's default: host tier only */
	uint64_t ids[2] = { 1, 2 };
	put_ids(c, r, ids, 2);
	CHECK_RC(save_ids(c, "x", ids, 2, NULL, 0, NULL), KVT_EOPNOTSUPP);
	kvt_ctx_info *in = NULL;
	CHECK_RC(kvt_ctx_load(c, "x", KVT_TIER_HOST, 0, &in), KVT_EOPNOTSUPP);
	CHECK(in == NULL);
	/* The blocks are untouched. */
	check_ids(c, r, ids, 2);
	end_with_region(&d, c, r);
}

/* ---- bad input ------------------------------------------------------------------ */

TEST(bad_names_are_refused_by_the_library)
{
	struct kvtd d;
	kvt_region *r = NULL;
	kvt_conn *c = start_with_region(&d, NVME_CONF, &r);
	uint64_t ids[1] = { 7 };
	put_ids(c, r, ids, 1);
	char name[KVT_NAME_LEN_MAX + 2];
	memset(name, 'n', sizeof(name) - 1);
	name[sizeof(name) - 1] = 0; /* 256 bytes */
	CHECK_RC(save_ids(c, "", ids, 1, NULL, 0, NULL), KVT_EINVAL);
	CHECK_RC(save_ids(c, name, ids, 1, NULL, 0, NULL), KVT_EINVAL);
	kvt_ctx_info *in = NULL;
	CHECK_RC(kvt_ctx_load(c, "", KVT_TIER_HOST, 0, &in), KVT_EINVAL);
	CHECK_RC(kvt_ctx_load(c, name, KVT_TIER_HOST, 0, &in), KVT_EINVAL);
	CHECK_RC(kvt_ctx_load(c, NULL, KVT_TIER_HOST, 0, &in), KVT_EINVAL);
	CHECK_RC(kvt_ctx_delete(c, ""), KVT_EINVAL);
	CHECK_RC(kvt_ctx_delete(c, name), KVT_EINVAL);
	kvt_ctx_info *list = NULL;
	size_t n = 0;
	bool more;
	CHECK_RC(kvt_ctx_list(c, name, NULL, 10, &list, &n, &more), KVT_EINVAL);
	/* 255 bytes is the longest name, and works. */
	name[KVT_NAME_LEN_MAX] = 0;
	CHECK_RC(save_ids(c, name, ids, 1, NULL, 0, NULL), 0);
	CHECK_RC(kvt_ctx_load(c, name, KVT_TIER_HOST, 0, &in), 0);
	CHECK_EQ(strlen(in->name), KVT_NAME_LEN_MAX);
	kvt_ctx_free(in);
	/* Empty key list, token ids that do not match token_count, oversized metadata. */
	kvt_context ctx = { .name = "bad", .model_salt = test_salt(), .token_count = 1,
			    .keys = (kvt_key[]){ blk_key(7) }, .nkeys = 0 };
	CHECK_RC(kvt_ctx_save(c, &ctx, NULL), KVT_EINVAL);
	static uint8_t big[KVT_CTX_META_MAX + 1];
	ctx.nkeys = 1;
	ctx.metadata = big;
	ctx.metadata_len = sizeof(big);
	CHECK_RC(kvt_ctx_save(c, &ctx, NULL), KVT_EINVAL);
	ctx.metadata_len = KVT_CTX_META_MAX;
	CHECK_RC(kvt_ctx_save(c, &ctx, NULL), 0);
	/* The connection is still usable after all of that. */
	CHECK_RC(kvt_ping(c), 0);
	end_with_region(&d, c, r);
}

struct raw {
	int fd;
	uint64_t id;
	uint8_t rep[4096];
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

/* Send a field list as op and return the daemon's status. */
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

/* A valid CTX_SAVE body for block id 7 with one field changed (tag skip left out,
 * tag over written with over/over_len instead, if over is not NULL). */
static void save_body(struct kvt_fields_writer *w, uint8_t *buf, size_t cap, unsigned skip,
		      unsigned over, const void *over_val, size_t over_len)
{
	uint8_t salt[16], key[16];
	kvt_key s = test_salt(), k = blk_key(7);
	kvt_key_encode(&s, salt);
	kvt_key_encode(&k, key);
	uint8_t tokens[16 * 4] = { 0 };
	struct {
		unsigned tag;
		const void *v;
		size_t len;
	} f[] = {
		{ KVT_TAG_NAME, "rawctx", 6 },
		{ KVT_TAG_SALT, salt, 16 },
		{ KVT_TAG_TOKEN_COUNT, NULL, 8 },
		{ KVT_TAG_KEYS, key, 16 },
		{ KVT_TAG_TOKENS, tokens, sizeof(tokens) },
	};
	kvt_fw_init(w, buf, cap);
	for (size_t i = 0; i < sizeof(f) / sizeof(f[0]); i++) {
		if (f[i].tag == skip)
			continue;
		if (f[i].tag == over) {
			kvt_fw_bytes(w, over, over_val, over_len);
			continue;
		}
		if (f[i].tag == KVT_TAG_TOKEN_COUNT)
			kvt_fw_u64(w, KVT_TAG_TOKEN_COUNT, 16);
		else
			kvt_fw_bytes(w, f[i].tag, f[i].v, f[i].len);
	}
	if (over && over != KVT_TAG_NAME && over != KVT_TAG_SALT && over != KVT_TAG_TOKEN_COUNT &&
	    over != KVT_TAG_KEYS && over != KVT_TAG_TOKENS)
		kvt_fw_bytes(w, over, over_val, over_len);
}

TEST(bad_requests_get_the_daemons_own_answers)
{
	struct kvtd d;
	kvt_region *r = NULL;
	kvt_conn *c = start_with_region(&d, NVME_CONF, &r);
	uint64_t ids[1] = { 7 };
	put_ids(c, r, ids, 1);
	struct raw rw = { .fd = raw_connect(d.sock) };
	raw_hello(rw.fd);
	static uint8_t buf[KVT_CTX_META_MAX + 4096];
	struct kvt_fields_writer w;
	char longname[KVT_NAME_LEN_MAX + 1];
	memset(longname, 'x', sizeof(longname));
	static uint8_t zeros[KVT_CTX_META_MAX + 16];

	/* The untouched body is accepted: every refusal below is the change's. */
	save_body(&w, buf, sizeof(buf), 0, 0, NULL, 0);
	EXPECT_RC(raw_call(&rw, KVT_OP_CTX_SAVE, &w), 0);

	/* Names: empty, too long, NUL inside. */
	save_body(&w, buf, sizeof(buf), 0, KVT_TAG_NAME, "", 0);
	EXPECT_RC(raw_call(&rw, KVT_OP_CTX_SAVE, &w), KVT_EINVAL);
	save_body(&w, buf, sizeof(buf), 0, KVT_TAG_NAME, longname, sizeof(longname));
	EXPECT_RC(raw_call(&rw, KVT_OP_CTX_SAVE, &w), KVT_EINVAL);
	save_body(&w, buf, sizeof(buf), 0, KVT_TAG_NAME, "a\0b", 3);
	EXPECT_RC(raw_call(&rw, KVT_OP_CTX_SAVE, &w), KVT_EINVAL);
	/* Required fields missing. */
	static const unsigned required[] = { KVT_TAG_NAME, KVT_TAG_SALT, KVT_TAG_TOKEN_COUNT,
					     KVT_TAG_KEYS };
	for (size_t i = 0; i < 4; i++) {
		save_body(&w, buf, sizeof(buf), required[i], 0, NULL, 0);
		test_log("CTX_SAVE without tag %u:", required[i]);
		EXPECT_RC(raw_call(&rw, KVT_OP_CTX_SAVE, &w), KVT_EBADMSG);
	}
	/* Wrong sizes. */
	save_body(&w, buf, sizeof(buf), 0, KVT_TAG_SALT, zeros, 15);
	EXPECT_RC(raw_call(&rw, KVT_OP_CTX_SAVE, &w), KVT_EBADMSG);
	save_body(&w, buf, sizeof(buf), 0, KVT_TAG_TOKEN_COUNT, zeros, 4);
	EXPECT_RC(raw_call(&rw, KVT_OP_CTX_SAVE, &w), KVT_EBADMSG);
	save_body(&w, buf, sizeof(buf), 0, KVT_TAG_KEYS, zeros, 0);
	EXPECT_RC(raw_call(&rw, KVT_OP_CTX_SAVE, &w), KVT_EBADMSG);
	save_body(&w, buf, sizeof(buf), 0, KVT_TAG_KEYS, zeros, 17);
	EXPECT_RC(raw_call(&rw, KVT_OP_CTX_SAVE, &w), KVT_EBADMSG);
	save_body(&w, buf, sizeof(buf), 0, KVT_TAG_TTL_S, zeros, 8);
	EXPECT_RC(raw_call(&rw, KVT_OP_CTX_SAVE, &w), KVT_EBADMSG);
	save_body(&w, buf, sizeof(buf), 0, KVT_TAG_METADATA, zeros, KVT_CTX_META_MAX + 1);
	EXPECT_RC(raw_call(&rw, KVT_OP_CTX_SAVE, &w), KVT_EBADMSG);
	/* Token ids that are not token_count u32s. */
	save_body(&w, buf, sizeof(buf), 0, KVT_TAG_TOKENS, zeros, 15 * 4);
	int rc = raw_call(&rw, KVT_OP_CTX_SAVE, &w);
	CHECK_MSG(rc == KVT_EBADMSG || rc == KVT_EINVAL, "15 token ids for 16: %s",
		  kvt_errname(rc));
	if (rc != KVT_EBADMSG)
		test_log("note: a TOKENS field of the wrong size is %s, not EBADMSG",
			 kvt_errname(rc));
	/* Framing: unknown must-understand tag, repeated tag, reserved bits. An
	 * ignorable tag is ignored. */
	save_body(&w, buf, sizeof(buf), 0, 0x7000, "x", 1);
	EXPECT_RC(raw_call(&rw, KVT_OP_CTX_SAVE, &w), KVT_EBADMSG);
	save_body(&w, buf, sizeof(buf), 0, KVT_TAG_IGNORABLE | 5, "x", 1);
	EXPECT_RC(raw_call(&rw, KVT_OP_CTX_SAVE, &w), 0);
	save_body(&w, buf, sizeof(buf), 0, 0, NULL, 0);
	kvt_fw_bytes(&w, KVT_TAG_NAME, "again", 5);
	EXPECT_RC(raw_call(&rw, KVT_OP_CTX_SAVE, &w), KVT_EBADMSG);
	save_body(&w, buf, sizeof(buf), 0, 0, NULL, 0);
	buf[2] = 1; /* the first field's reserved u16 */
	EXPECT_RC(raw_call(&rw, KVT_OP_CTX_SAVE, &w), KVT_ERESERVED);
	save_body(&w, buf, sizeof(buf), 0, 0, NULL, 0);
	w.len -= 3; /* truncated field */
	EXPECT_RC(raw_call(&rw, KVT_OP_CTX_SAVE, &w), KVT_EBADMSG);

	/* CTX_LOAD: the name, the tier. */
	kvt_fw_init(&w, buf, sizeof(buf));
	EXPECT_RC(raw_call(&rw, KVT_OP_CTX_LOAD, &w), KVT_EBADMSG);
	kvt_fw_init(&w, buf, sizeof(buf));
	kvt_fw_bytes(&w, KVT_TAG_NAME, "", 0);
	EXPECT_RC(raw_call(&rw, KVT_OP_CTX_LOAD, &w), KVT_EINVAL);
	kvt_fw_init(&w, buf, sizeof(buf));
	kvt_fw_bytes(&w, KVT_TAG_NAME, longname, sizeof(longname));
	EXPECT_RC(raw_call(&rw, KVT_OP_CTX_LOAD, &w), KVT_EINVAL);
	kvt_fw_init(&w, buf, sizeof(buf));
	kvt_fw_bytes(&w, KVT_TAG_NAME, "rawctx", 6);
	kvt_fw_u32(&w, KVT_TAG_TIER, 1);
	EXPECT_RC(raw_call(&rw, KVT_OP_CTX_LOAD, &w), KVT_EBADMSG);
	kvt_fw_init(&w, buf, sizeof(buf));
	kvt_fw_bytes(&w, KVT_TAG_NAME, "rawctx", 6);
	kvt_fw_u8(&w, KVT_TAG_TIER, 0);
	EXPECT_RC(raw_call(&rw, KVT_OP_CTX_LOAD, &w), KVT_EOPNOTSUPP);
	kvt_fw_init(&w, buf, sizeof(buf));
	kvt_fw_bytes(&w, KVT_TAG_NAME, "rawctx", 6);
	kvt_fw_u8(&w, KVT_TAG_DEADLINE_MS, 1);
	EXPECT_RC(raw_call(&rw, KVT_OP_CTX_LOAD, &w), KVT_EBADMSG);
	/* Defaults: host tier, no wait; the reply has every field of the contract. */
	kvt_fw_init(&w, buf, sizeof(buf));
	kvt_fw_bytes(&w, KVT_TAG_NAME, "rawctx", 6);
	EXPECT_RC(raw_call(&rw, KVT_OP_CTX_LOAD, &w), 0);
	{
		struct kvt_fields f;
		CHECK_RC(kvt_fields_decode(rw.rep, rw.h.body_len, &f), 0);
		static const unsigned want[] = { KVT_TAG_NAME, KVT_TAG_SALT, KVT_TAG_TOKEN_COUNT,
						 KVT_TAG_KEYS, KVT_TAG_TIERS, KVT_TAG_RESIDENT,
						 KVT_TAG_TOKENS, KVT_TAG_BYTES, KVT_TAG_CREATED_MS,
						 KVT_TAG_EXPIRES_MS };
		for (size_t i = 0; i < sizeof(want) / sizeof(want[0]); i++)
			CHECK_MSG(f.val[want[i]] != NULL, "CTX_LOAD reply lacks tag %u", want[i]);
		CHECK_EQ(f.len[KVT_TAG_KEYS], 16);
		CHECK_EQ(f.len[KVT_TAG_TIERS], 1);
		CHECK_EQ(f.len[KVT_TAG_TOKENS], 64);
		CHECK(f.val[KVT_TAG_METADATA] == NULL);
	}

	/* CTX_LIST: LIMIT required, 1..1000. */
	kvt_fw_init(&w, buf, sizeof(buf));
	EXPECT_RC(raw_call(&rw, KVT_OP_CTX_LIST, &w), KVT_EBADMSG);
	kvt_fw_init(&w, buf, sizeof(buf));
	kvt_fw_u32(&w, KVT_TAG_LIMIT, 0);
	EXPECT_RC(raw_call(&rw, KVT_OP_CTX_LIST, &w), KVT_EINVAL);
	kvt_fw_init(&w, buf, sizeof(buf));
	kvt_fw_u32(&w, KVT_TAG_LIMIT, 1001);
	EXPECT_RC(raw_call(&rw, KVT_OP_CTX_LIST, &w), KVT_EINVAL);
	kvt_fw_init(&w, buf, sizeof(buf));
	kvt_fw_u64(&w, KVT_TAG_LIMIT, 10);
	EXPECT_RC(raw_call(&rw, KVT_OP_CTX_LIST, &w), KVT_EBADMSG);
	kvt_fw_init(&w, buf, sizeof(buf));
	kvt_fw_u32(&w, KVT_TAG_LIMIT, 1000);
	kvt_fw_bytes(&w, KVT_TAG_PREFIX, longname, sizeof(longname));
	EXPECT_RC(raw_call(&rw, KVT_OP_CTX_LIST, &w), KVT_EINVAL);
	kvt_fw_init(&w, buf, sizeof(buf));
	kvt_fw_u32(&w, KVT_TAG_LIMIT, 1000);
	kvt_fw_bytes(&w, KVT_TAG_PREFIX, "", 0);
	EXPECT_RC(raw_call(&rw, KVT_OP_CTX_LIST, &w), 0);
	{
		struct kvt_fields f;
		CHECK_RC(kvt_fields_decode(rw.rep, rw.h.body_len, &f), 0);
		CHECK_EQ(f.nentries, 1);
		uint8_t more = 9;
		CHECK_RC(kvt_fields_u8(&f, KVT_TAG_MORE, &more), 0);
		CHECK_EQ(more, 0);
	}

	/* CTX_DELETE: the name. */
	kvt_fw_init(&w, buf, sizeof(buf));
	EXPECT_RC(raw_call(&rw, KVT_OP_CTX_DELETE, &w), KVT_EBADMSG);
	kvt_fw_init(&w, buf, sizeof(buf));
	kvt_fw_bytes(&w, KVT_TAG_NAME, "", 0);
	EXPECT_RC(raw_call(&rw, KVT_OP_CTX_DELETE, &w), KVT_EINVAL);
	kvt_fw_init(&w, buf, sizeof(buf));
	kvt_fw_bytes(&w, KVT_TAG_NAME, "rawctx", 6);
	EXPECT_RC(raw_call(&rw, KVT_OP_CTX_DELETE, &w), 0);
	EXPECT_RC(raw_call(&rw, KVT_OP_CTX_DELETE, &w), KVT_ENOENT);

	CHECK_MSG(mismatches == 0, "%d answers differ from the contract (listed above)",
		  mismatches);
	/* After all of that the daemon still serves both connections. */
	close(rw.fd);
	CHECK_RC(kvt_ping(c), 0);
	check_ids(c, r, ids, 1);
	end_with_region(&d, c, r);
}

/* ---- tenants -------------------------------------------------------------------- */

static const uint64_t root_ids[3] = { 900, 901, 902 };
static const uint64_t nobody_ids[2] = { 950, 951 };

static void nobody_cannot_see_roots_context(const struct kvtd *d)
{
	kvt_conn *c = kvtd_connect(d, 60000);
	CHECK_EQ(kvt_conn_server(c)->tenant, NOBODY);
	kvt_ctx_info *in = NULL;
	CHECK_RC(kvt_ctx_load(c, "shared", KVT_TIER_HOST, 0, &in), KVT_ENOENT);
	CHECK_RC(kvt_ctx_load(c, "root-only", KVT_TIER_HOST, 0, &in), KVT_ENOENT);
	kvt_ctx_info *list = NULL;
	size_t n = 9;
	bool more = true;
	CHECK_RC(kvt_ctx_list(c, NULL, NULL, 100, &list, &n, &more), 0);
	CHECK_EQ(n, 0);
	CHECK(!more);
	kvt_ctx_list_free(list, n);
	CHECK_RC(kvt_ctx_delete(c, "root-only"), KVT_ENOENT);
	/* Root's blocks are not this tenant's: saving them names a missing block. */
	size_t missing = 99;
	CHECK_RC(save_ids(c, "stolen", root_ids, 3, NULL, 0, &missing), KVT_ENOENT);
	CHECK_EQ(missing, 0);
	/* The same name is a context of its own for this tenant. */
	kvt_region *r = NULL;
	CHECK_RC(kvt_region_create(c, BLK, &r), 0);
	put_ids(c, r, nobody_ids, 2);
	CHECK_RC(save_ids(c, "shared", nobody_ids, 2, "nobody's", 0, NULL), 0);
	CHECK_RC(kvt_ctx_load(c, "shared", KVT_TIER_HOST, 20000, &in), 0);
	check_manifest(in, "shared", nobody_ids, 2, "nobody's");
	kvt_ctx_free(in);
	CHECK_RC(kvt_ctx_list(c, NULL, NULL, 100, &list, &n, &more), 0);
	CHECK_EQ(n, 1);
	kvt_ctx_list_free(list, n);
	bool present;
	CHECK_EQ(kvtd_stat_u64(c, "tenant.65534.contexts", NULL), 1);
	CHECK_EQ(kvtd_stat_u64(c, "tenant.65534.context_bytes", NULL), 2 * BLK);
	kvtd_stat_u64(c, "tenant.0.contexts", &present);
	CHECK_MSG(!present, "tenant 65534 sees tenant 0's context count");
	kvtd_stat_u64(c, "meta.commits", &present);
	CHECK_MSG(!present, "tenant 65534 sees the admin-only meta.commits");
	kvt_region_destroy(r);
	kvt_conn_close(c);
}

TEST(tenants_never_see_each_others_contexts)
{
	need_root();
	struct kvtd d;
	kvtd_start(&d, NVME_CONF);
	kvt_conn *c = kvtd_connect(&d, 60000);
	CHECK_EQ(kvt_conn_server(c)->tenant, 0);
	kvt_region *r = NULL;
	CHECK_RC(kvt_region_create(c, BLK, &r), 0);
	put_ids(c, r, root_ids, 3);
	CHECK_RC(save_ids(c, "shared", root_ids, 3, "root's", 0, NULL), 0);
	CHECK_RC(save_ids(c, "root-only", root_ids, 1, NULL, 0, NULL), 0);

	as_nobody(&d, nobody_cannot_see_roots_context);

	/* Root's contexts are as they were. */
	kvt_ctx_info *in = NULL;
	CHECK_RC(kvt_ctx_load(c, "shared", KVT_TIER_HOST, 20000, &in), 0);
	check_manifest(in, "shared", root_ids, 3, "root's");
	kvt_ctx_free(in);
	CHECK_RC(kvt_ctx_load(c, "root-only", KVT_TIER_HOST, 0, &in), 0);
	kvt_ctx_free(in);
	check_ids(c, r, root_ids, 3);
	kvt_ctx_info *list = NULL;
	size_t n = 0;
	bool more;
	CHECK_RC(kvt_ctx_list(c, NULL, NULL, 100, &list, &n, &more), 0);
	CHECK_EQ(n, 2);
	kvt_ctx_list_free(list, n);
	/* The admin sees both tenants' figures. */
	CHECK_EQ(kvtd_stat_u64(c, "tenant.0.contexts", NULL), 2);
	CHECK_EQ(kvtd_stat_u64(c, "tenant.0.context_bytes", NULL), 4 * BLK);
	CHECK_EQ(kvtd_stat_u64(c, "tenant.65534.contexts", NULL), 1);
	kvtd_stat_u64(c, "meta.commits", NULL);
	end_with_region(&d, c, r);
}

/* ---- memstat ------------------------------------------------------------------ */


TEST(memstat_shows_contexts_and_records_per_tenant)
{
	if (access(kvtd_bin("memstat"), X_OK) < 0)
		test_skip("no %s (the sanitizer build makes only the daemon)", kvtd_bin("memstat"));
	struct kvtd d;
	kvt_region *r = NULL;
	kvt_conn *c = start_with_region(&d, NVME_CONF, &r);
	uint64_t ids[4];
	ids_range(ids, 4, 600);
	put_ids(c, r, ids, 4);
	CHECK_RC(save_ids(c, "one", ids, 4, NULL, 0, NULL), 0);
	CHECK_RC(save_ids(c, "two", ids, 2, NULL, 0, NULL), 0);
	kvt_mem_record rec = { .ns = "notes", .key = "k", .value = "0123456789", .value_len = 10 };
	CHECK_RC(kvt_mem_put(c, &rec), 0);
	kvt_region_destroy(r);
	kvt_conn_close(c);

	static char out[65536];
	char cmd[1024];
	snprintf(cmd, sizeof(cmd), "%s -s %s", kvtd_bin("memstat"), d.sock);
	CHECK_EQ(run_capture(cmd, out, sizeof(out)), 0);
	const char *sec = strstr(out, "\nContexts and memory records\n");
	CHECK_MSG(sec, "memstat has no contexts section:\n%s", out);
	char row[256];
	/* TENANT CONTEXTS CONTEXT-BYTES RECORDS RECORD-BYTES */
	snprintf(row, sizeof(row), "  %-10u %9u %14s %11u", 0u, 2u, "1.5 MiB", 1u);
	CHECK_MSG(strstr(sec, row), "no row '%s' in:\n%s", row, sec);
	CHECK_MSG(strstr(sec, "metadata store: 3 writes in "), "no metadata store line in:\n%s",
		  sec);
	snprintf(cmd, sizeof(cmd), "%s -s %s --json", kvtd_bin("memstat"), d.sock);
	CHECK_EQ(run_capture(cmd, out, sizeof(out)), 0);
	CHECK_MSG(strstr(out, "\"contexts\":2,\"context_bytes\":1572864,\"records\":1,"),
		  "JSON tenant figures missing: %s", out);
	CHECK_MSG(strstr(out, "\"meta\":{\"commits\":"), "JSON has no meta group: %s", out);
	CHECK_MSG(strstr(out, "\"writes\":3,"), "JSON meta.writes is not 3: %s", out);
	kvtd_stop_clean(&d);
}

TEST_MAIN(save_load_delete_round_trip, list_by_prefix_with_pagination,
	  replace_under_the_same_name_moves_the_references,
	  ttl_expiry_removes_the_context_and_its_references,
	  block_stored_nowhere_is_named_by_its_index,
	  contexts_without_an_nvme_tier_are_not_supported, bad_names_are_refused_by_the_library,
	  bad_requests_get_the_daemons_own_answers, tenants_never_see_each_others_contexts,
	  memstat_shows_contexts_and_records_per_tenant)
