/*
 * itest_ctx_durable.c - what a saved context survives, against a real kvtierd with
 * an NVMe tier: a SIGTERM restart and kill -9 (loaded afterwards without the
 * client re-sending anything, every byte identical), a kill -9 loop right after
 * acknowledged saves, kill -9 in the middle of a save (the context is then either
 * fully there or absent, and a replaced version is either the old or the new one,
 * complete), and heavy NVMe pressure (referenced blocks are never cleaned away;
 * once the context is deleted they are); and the example engine's --save and
 * --restore across a restart.
 *
 * Env: KVT_CTX_KILL_LOOPS=N kill -9 cycles for the acknowledged-save loop
 * (default 4), KVT_CTX_CRASH_LOOPS=N for the mid-save loop (default 6).
 */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <signal.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "harness.h"
#include "kvtier.h"
#include "test.h"

#define KiB (1024ull)
#define MiB (1024ull * 1024)
#define TOKENS_PER_BLOCK 16

#define NVME_CONF "nvme_capacity = 512MiB\nnvme_segment_size = 64MiB\n"

/* ---- helpers ------------------------------------------------------------------ */

static kvt_key blk_key(uint64_t id)
{
	return id_key(id, 0xd00d);
}

static const kvt_block_desc blk_desc = { .dtype = KVT_DTYPE_BF16, .layers = 4,
					 .tokens = TOKENS_PER_BLOCK };

static kvt_key test_salt(void)
{
	kvt_salt_params sp = { .model_id = "itest-ctx-durable", .block_tokens = TOKENS_PER_BLOCK };
	kvt_key salt;
	CHECK_RC(kvt_key_salt(&sp, &salt), 0);
	return salt;
}

/*
 * PUT blocks first..first+n of len bytes, batch at a time through r (batch * len
 * bytes). A full host tier (ENOSPC while NVMe catches up) is waited out, briefly.
 */
static void put_range(kvt_conn *c, kvt_region *r, uint64_t first, size_t n, size_t len,
		      size_t batch)
{
	kvt_put_item it[64];
	CHECK(batch <= 64);
	for (size_t b = 0; b < n; b += batch) {
		size_t m = n - b < batch ? n - b : batch;
		for (size_t j = 0; j < m; j++) {
			uint64_t id = first + b + j;
			id_fill((uint8_t *)kvt_region_base(r) + j * len, len, id);
			it[j] = (kvt_put_item){ .key = blk_key(id), .region = r, .offset = j * len,
						.length = len, .desc = blk_desc };
			if (id > first)
				it[j].parent = blk_key(id - 1);
		}
		for (int tries = 0;; tries++) {
			int rc = kvt_block_put(c, it, m);
			if (rc == 0)
				break;
			bool full = rc == KVT_EPARTIAL;
			for (size_t j = 0; j < m && full; j++)
				full = it[j].status == 0 || it[j].status == KVT_ENOSPC;
			CHECK_MSG(full && tries < 500, "PUT of blocks %llu..: %s (item 0 %s)",
				  (unsigned long long)(first + b), kvt_errname(rc),
				  kvt_errname(it[0].status));
			test_sleep_ms(10);
		}
	}
}

/* The per-item DELETE status of block id (the block is deleted if it is 0). */
static int delete_status(kvt_conn *c, uint64_t id)
{
	kvt_key k = blk_key(id);
	int st = 0;
	kvt_block_delete(c, &k, 1, &st);
	return st;
}

/* GET blocks ids[0..n) of len bytes and compare every byte. */
static void check_ids(kvt_conn *c, const kvt_key *keys, const uint64_t *ids, size_t n, size_t len)
{
	kvt_region *r = NULL;
	CHECK_RC(kvt_region_create(c, len, &r), 0);
	uint8_t *want = malloc(len);
	CHECK(want != NULL);
	for (size_t i = 0; i < n; i++) {
		memset(kvt_region_base(r), 0, len);
		kvt_get_item g = { .key = keys[i], .region = r, .capacity = len };
		int rc = kvt_block_get(c, &g, 1);
		CHECK_MSG(rc == 0, "GET of block %zu of the context (id %llu): %s, item %s", i,
			  (unsigned long long)ids[i], kvt_errname(rc), kvt_errname(g.status));
		CHECK_EQ(g.length, len);
		CHECK_EQ(g.desc.tokens, TOKENS_PER_BLOCK);
		id_fill(want, len, ids[i]);
		CHECK_MSG(memcmp(kvt_region_base(r), want, len) == 0,
			  "block %zu of the context (id %llu) differs", i, (unsigned long long)ids[i]);
	}
	free(want);
	kvt_region_destroy(r);
}

static uint32_t token_of(uint64_t first, size_t i)
{
	return (uint32_t)(mix64(first * 7919 + i) % 128256);
}

/* Save blocks first..first+n as name, with its token ids and a metadata text
 * naming the range. */
static int save_range(kvt_conn *c, const char *name, uint64_t first, size_t n, uint32_t ttl)
{
	kvt_key *keys = malloc(n * sizeof(*keys));
	uint32_t *tokens = malloc(n * TOKENS_PER_BLOCK * sizeof(*tokens));
	CHECK(keys && tokens);
	for (size_t i = 0; i < n; i++)
		keys[i] = blk_key(first + i);
	for (size_t i = 0; i < n * TOKENS_PER_BLOCK; i++)
		tokens[i] = token_of(first, i);
	char meta[64];
	snprintf(meta, sizeof(meta), "first=%llu n=%zu", (unsigned long long)first, n);
	kvt_context ctx = { .name = name, .model_salt = test_salt(),
			    .token_count = n * TOKENS_PER_BLOCK, .keys = keys, .nkeys = n,
			    .tokens = tokens, .metadata = meta, .metadata_len = strlen(meta),
			    .ttl_s = ttl };
	int rc = kvt_ctx_save(c, &ctx, NULL);
	free(keys);
	free(tokens);
	return rc;
}

/*
 * Load name and check it is the range first..first+n saved by save_range, every
 * block byte-identical through GET. Returns KVT_ENOENT if absent (allowed only if
 * absent_ok), else 0.
 */
static int check_range(kvt_conn *c, const char *name, uint64_t first, size_t n, size_t len,
		       bool absent_ok)
{
	kvt_ctx_info *in = NULL;
	struct timespec t0, t1;
	clock_gettime(CLOCK_MONOTONIC, &t0);
	int rc = kvt_ctx_load(c, name, KVT_TIER_HOST, 30000, &in);
	clock_gettime(CLOCK_MONOTONIC, &t1);
	test_log("CTX_LOAD %s: %s in %.3f s, %zu of %zu resident", name, kvt_errname(rc),
		 (double)(t1.tv_sec - t0.tv_sec) + (double)(t1.tv_nsec - t0.tv_nsec) / 1e9,
		 rc ? 0 : in->resident, rc ? 0 : in->nkeys);
	if (rc == KVT_ENOENT && absent_ok)
		return rc;
	CHECK_MSG(rc == 0, "CTX_LOAD %s: %s", name, kvt_errname(rc));
	CHECK_EQ(in->nkeys, n);
	CHECK_EQ(in->token_count, n * TOKENS_PER_BLOCK);
	CHECK_EQ(in->ntokens, n * TOKENS_PER_BLOCK);
	for (size_t i = 0; i < n * TOKENS_PER_BLOCK; i++)
		CHECK_MSG(in->tokens[i] == token_of(first, i), "%s: token %zu differs", name, i);
	char meta[64];
	snprintf(meta, sizeof(meta), "first=%llu n=%zu", (unsigned long long)first, n);
	CHECK_MSG(in->metadata_len == strlen(meta) && !memcmp(in->metadata, meta, strlen(meta)),
		  "%s: metadata '%.*s', expected '%s'", name, (int)in->metadata_len,
		  (const char *)in->metadata, meta);
	kvt_key salt = test_salt();
	CHECK(kvt_key_equal(&in->model_salt, &salt));
	CHECK_EQ(in->bytes, (uint64_t)n * len);
	uint64_t *ids = malloc(n * sizeof(*ids));
	CHECK(ids != NULL);
	for (size_t i = 0; i < n; i++) {
		kvt_key k = blk_key(first + i);
		CHECK_MSG(kvt_key_equal(&in->keys[i], &k), "%s: key %zu differs", name, i);
		CHECK_MSG(in->tiers[i] == KVT_TIER_HOST || in->tiers[i] == KVT_TIER_NVME,
			  "%s: block %zu reported in tier %u", name, i, in->tiers[i]);
		ids[i] = first + i;
	}
	check_ids(c, in->keys, ids, n, len);
	free(ids);
	kvt_ctx_free(in);
	return 0;
}

/* ---- restarts ----------------------------------------------------------------- */

#define BLK (256 * KiB)

TEST(saved_contexts_survive_sigterm_and_kill9_restarts)
{
	struct kvtd d;
	/* Write-back: the blocks are only in RAM when the save starts. */
	kvtd_start(&d, NVME_CONF "nvme_write = back\nnvme_admission = reused\n");
	d.keep_dir = true;
	kvt_conn *c = kvtd_connect(&d, 60000);
	kvt_region *r = NULL;
	CHECK_RC(kvt_region_create(c, 8 * BLK, &r), 0);
	put_range(c, r, 1000, 16, BLK, 8);
	put_range(c, r, 2000, 4, BLK, 4);
	CHECK_RC(save_range(c, "s1", 1000, 16, 0), 0);
	CHECK_RC(save_range(c, "s2", 2000, 4, 3600), 0);
	kvt_region_destroy(r);
	kvt_conn_close(c);
	kvtd_stop_clean(&d);

	/* A clean restart: nothing re-sent, everything there. */
	kvtd_restart(&d);
	c = kvtd_connect(&d, 60000);
	uint64_t cold = kvtd_stat(c, "t1.blocks");
	CHECK_MSG(cold == 0, "the host tier holds %llu blocks after a restart",
		  (unsigned long long)cold);
	CHECK_EQ(check_range(c, "s1", 1000, 16, BLK, false), 0);
	CHECK_EQ(check_range(c, "s2", 2000, 4, BLK, false), 0);
	kvt_ctx_info *list = NULL;
	size_t n = 0;
	bool more;
	CHECK_RC(kvt_ctx_list(c, NULL, NULL, 10, &list, &n, &more), 0);
	CHECK_EQ(n, 2);
	CHECK(strcmp(list[1].name, "s2") == 0 && list[1].expires_ms > 0);
	kvt_ctx_list_free(list, n);
	CHECK_EQ(kvtd_stat(c, "tenant.0.contexts"), 2);
	CHECK_EQ(kvtd_stat(c, "tenant.0.context_bytes"), 20 * BLK);

	/* One more, then kill -9 right after its acknowledgement. */
	r = NULL;
	CHECK_RC(kvt_region_create(c, 8 * BLK, &r), 0);
	put_range(c, r, 3000, 8, BLK, 8);
	CHECK_RC(save_range(c, "s3", 3000, 8, 0), 0);
	kvtd_kill(&d);
	kvt_region_destroy(r);
	kvt_conn_close(c);
	kvtd_restart(&d);
	c = kvtd_connect(&d, 60000);
	CHECK_EQ(check_range(c, "s3", 3000, 8, BLK, false), 0);
	CHECK_EQ(check_range(c, "s1", 1000, 16, BLK, false), 0);
	CHECK_EQ(check_range(c, "s2", 2000, 4, BLK, false), 0);
	CHECK_EQ(kvtd_stat(c, "tenant.0.contexts"), 3);
	/* A delete is durable too. */
	CHECK_RC(kvt_ctx_delete(c, "s2"), 0);
	kvtd_kill(&d);
	kvt_conn_close(c);
	kvtd_restart(&d);
	c = kvtd_connect(&d, 60000);
	kvt_ctx_info *in = NULL;
	CHECK_RC(kvt_ctx_load(c, "s2", KVT_TIER_HOST, 0, &in), KVT_ENOENT);
	CHECK_EQ(check_range(c, "s1", 1000, 16, BLK, false), 0);
	kvt_conn_close(c);
	d.keep_dir = false;
	kvtd_stop_clean(&d);
}

TEST(acknowledged_saves_survive_a_kill9_loop)
{
	unsigned loops = env_loops("KVT_CTX_KILL_LOOPS", 4);
	struct kvtd d;
	kvtd_start(&d, NVME_CONF "nvme_write = back\n");
	d.keep_dir = true;
	for (unsigned i = 0; i < loops; i++) {
		kvt_conn *c = kvtd_connect(&d, 60000);
		kvt_region *r = NULL;
		CHECK_RC(kvt_region_create(c, 8 * BLK, &r), 0);
		uint64_t first = 10000 + i * 100;
		put_range(c, r, first, 8, BLK, 8);
		char name[32];
		snprintf(name, sizeof(name), "loop/%u", i);
		CHECK_RC(save_range(c, name, first, 8, 0), 0);
		CHECK_RC(save_range(c, "latest", first, 8, 0), 0);
		kvtd_kill(&d);
		kvt_region_destroy(r);
		kvt_conn_close(c);
		kvtd_restart(&d);
		c = kvtd_connect(&d, 60000);
		for (unsigned j = 0; j <= i; j++) {
			snprintf(name, sizeof(name), "loop/%u", j);
			CHECK_EQ(check_range(c, name, 10000 + j * 100, 8, BLK, false), 0);
		}
		CHECK_EQ(check_range(c, "latest", first, 8, BLK, false), 0);
		CHECK_EQ(kvtd_stat(c, "tenant.0.contexts"), i + 2);
		kvt_conn_close(c);
	}
	d.keep_dir = false;
	kvtd_stop_clean(&d);
}

/* ---- kill -9 during a save -------------------------------------------------------- */

struct saver {
	const char *sock;
	const char *name;
	uint64_t first;
	size_t n;
	int rc;
};

static void *saver_main(void *arg)
{
	struct saver *s = arg;
	kvt_conn *c = NULL;
	s->rc = kvt_conn_open(s->sock, &c);
	if (s->rc)
		return NULL;
	kvt_conn_set_timeout(c, 60000);
	s->rc = save_range(c, s->name, s->first, s->n, 0);
	kvt_conn_close(c);
	return NULL;
}

TEST(a_save_cut_by_kill9_is_all_or_nothing)
{
	enum { N = 96 }; /* 24 MiB per version, only in RAM when the save starts */
	unsigned loops = env_loops("KVT_CTX_CRASH_LOOPS", 6);
	struct kvtd d;
	kvtd_start(&d, "host_capacity = 128MiB\n" NVME_CONF
		   "nvme_write = back\nnvme_admission = reused\n");
	d.keep_dir = true;
	unsigned completed = 0, cut = 0;
	uint64_t seed = (uint64_t)time(NULL);
	test_log("seed %llu", (unsigned long long)seed);
	for (unsigned i = 0; i < loops; i++) {
		kvt_conn *c = kvtd_connect(&d, 60000);
		kvt_region *r = NULL;
		CHECK_RC(kvt_region_create(c, 16 * BLK, &r), 0);
		uint64_t old_first = 100000 + i * 1000, new_first = old_first + 500;
		/* "conv" exists in an acknowledged version; the new one is cut. */
		put_range(c, r, old_first, 8, BLK, 8);
		CHECK_RC(save_range(c, "conv", old_first, 8, 0), 0);
		put_range(c, r, new_first, N, BLK, 16);
		kvt_region_destroy(r);
		kvt_conn_close(c);

		char name[32];
		snprintf(name, sizeof(name), "cut/%u", i);
		struct saver sv[2] = { { d.sock, "conv", new_first, N, 1 },
				       { d.sock, name, new_first, N, 1 } };
		/* Kill once the saves' writes to NVMe are under way: after a different
		 * share of the blocks each time (t2.writes counts them), so the cut falls
		 * early, midway and late in the persisting, and now and then after the
		 * manifest was committed. */
		kvt_conn *watch = kvtd_connect(&d, 60000);
		uint64_t w0 = kvtd_stat(watch, "t2.writes");
		uint64_t target = w0 + 1 + mix64(seed + i) % N;
		pthread_t th[2];
		for (int k = 0; k < 2; k++)
			CHECK(pthread_create(&th[k], NULL, saver_main, &sv[k]) == 0);
		uint64_t w = w0;
		for (int spin = 0; spin < 200000 && w < target; spin++) {
			w = kvtd_stat(watch, "t2.writes");
			if (w < target)
				usleep(100);
		}
		kvtd_kill(&d);
		kvt_conn_close(watch);
		test_log("loop %u: killed after %llu of the %d blocks were written", i,
			 (unsigned long long)(w - w0), N);
		for (int k = 0; k < 2; k++)
			pthread_join(th[k], NULL);
		test_log("loop %u: saves returned %s and %s", i, kvt_errname(sv[0].rc),
			 kvt_errname(sv[1].rc));

		kvtd_restart(&d);
		c = kvtd_connect(&d, 60000);
		/* The new context: complete, or absent (never partial); present for sure
		 * if its save was acknowledged. */
		int rc = check_range(c, name, new_first, N, BLK, sv[1].rc != 0);
		if (rc == 0)
			completed++;
		else
			cut++;
		/* The replaced one: the old version or the new one, complete. */
		kvt_ctx_info *in = NULL;
		CHECK_RC(kvt_ctx_load(c, "conv", KVT_TIER_NVME, 0, &in), 0);
		size_t nk = in->nkeys;
		kvt_key k0 = blk_key(new_first);
		bool is_new = kvt_key_equal(&in->keys[0], &k0);
		kvt_ctx_free(in);
		if (sv[0].rc == 0)
			CHECK_MSG(is_new, "loop %u: the acknowledged replace of conv was lost", i);
		if (is_new)
			CHECK_EQ(check_range(c, "conv", new_first, N, BLK, false), 0);
		else
			CHECK_EQ(check_range(c, "conv", old_first, 8, BLK, false), 0);
		test_log("loop %u: %s is %s, conv is the %s version (%zu blocks)", i, name,
			 rc == 0 ? "complete" : "absent", is_new ? "new" : "old", nk);
		CHECK_RC(kvt_ctx_delete(c, "conv"), 0);
		if (rc == 0)
			CHECK_RC(kvt_ctx_delete(c, name), 0);
		kvt_conn_close(c);
	}
	test_log("%u saves completed before the kill, %u were cut", completed, cut);
	d.keep_dir = false;
	kvtd_stop_clean(&d);
}

/* ---- NVMe pressure ------------------------------------------------------------------ */

#define BIG (1 * MiB)

static size_t count_found(kvt_conn *c, uint64_t first, size_t n, size_t *on_nvme)
{
	size_t found = 0;
	*on_nvme = 0;
	for (size_t i = 0; i < n; i++) {
		kvt_key k = blk_key(first + i);
		size_t f = 0;
		uint8_t t = 0;
		CHECK_RC(kvt_block_lookup(c, &k, 1, &f, &t), 0);
		found += f;
		*on_nvme += f && t == KVT_TIER_NVME;
	}
	return found;
}

TEST(referenced_blocks_outlive_nvme_pressure_until_deleted)
{
	/* 4 segments of 64 MiB; every block written through, uncompressed. Plain LRU
	 * in RAM, so the pressure pushes the context's blocks out of RAM and what is
	 * left of them shows NVMe cleaning's choice (2Q would keep the blocks
	 * CTX_LOAD read in RAM, wherever they sit in the chain). */
	enum { CTX = 32, COMPANIONS = 24, PRESSURE = 1024 };
	struct kvtd d;
	kvtd_start(&d, "nvme_capacity = 256MiB\nnvme_segment_size = 64MiB\n"
		       "nvme_write = through\nnvme_admission = always\nnvme_codec = raw\n"
		       "host_policy = lru\n");
	kvt_conn *c = kvtd_connect(&d, 60000);
	/* A daemon that stops answering fails the case with ETIMEDOUT on the call that
	 * found it, well inside the case's time limit. */
	kvt_conn_set_timeout(c, 20000);
	kvt_region *r = NULL;
	CHECK_RC(kvt_region_create(c, 8 * BIG, &r), 0);

	/* The context's blocks fill most of the first segment; its companions, which
	 * are deleted, leave that segment the emptiest: the first one cleaning would
	 * take, were it not referenced. */
	put_range(c, r, 1, CTX, BIG, 8);
	put_range(c, r, 5000, COMPANIONS, BIG, 8);
	CHECK_RC(save_range(c, "pinned", 1, CTX, 0), 0);
	/* A block of a saved context cannot be deleted from under it: the item says
	 * why, and the block stays in every tier. */
	{
		CHECK_EQ(delete_status(c, 1 + CTX / 2), KVT_EREFERENCED);
		size_t nv = 0;
		CHECK_EQ(count_found(c, 1 + CTX / 2, 1, &nv), 1);
	}
	for (size_t i = 0; i < COMPANIONS; i++)
		(void)delete_status(c, 5000 + i);
	uint64_t dropped0 = kvtd_stat(c, "t2.dropped_blocks");
	uint64_t cleaned0 = kvtd_stat(c, "t2.cleaned_segments");

	/* Four times the NVMe tier's capacity of other blocks. */
	put_range(c, r, 100000, PRESSURE, BIG, 8);
	uint64_t cleaned1 = kvtd_stat(c, "t2.cleaned_segments");
	uint64_t dropped1 = kvtd_stat(c, "t2.dropped_blocks");
	test_log("pressure 1: %llu segments cleaned, %llu blocks dropped, t2.enospc %llu",
		 (unsigned long long)(cleaned1 - cleaned0),
		 (unsigned long long)(dropped1 - dropped0),
		 (unsigned long long)kvtd_stat(c, "t2.enospc"));
	CHECK_MSG(cleaned1 - cleaned0 >= 4, "only %llu segments were cleaned: no pressure",
		  (unsigned long long)(cleaned1 - cleaned0));
	size_t on_nvme = 0;
	size_t found = count_found(c, 1, CTX, &on_nvme);
	CHECK_MSG(found == CTX && on_nvme == CTX,
		  "after the pressure %zu of %d context blocks are found, %zu on NVMe", found, CTX,
		  on_nvme);
	CHECK_EQ(check_range(c, "pinned", 1, CTX, BIG, false), 0);

	/* Deleted: its blocks lose their references and are cleaned like any others.
	 * Cleaning keeps chain heads in preference to tails (docs/STORAGE.md), so the
	 * unreferenced chain shortens from its end: some blocks go, and what is left
	 * is a prefix. Write in rounds of 256 MiB, up to 2 GiB, until some went. */
	CHECK_RC(kvt_ctx_delete(c, "pinned"), 0);
	uint64_t next = 200000;
	for (int round = 1; round <= 8; round++, next += PRESSURE / 4) {
		put_range(c, r, next, PRESSURE / 4, BIG, 8);
		found = count_found(c, 1, CTX, &on_nvme);
		test_log("pressure 2, round %d: %llu segments cleaned so far; %zu of %d context "
			 "blocks left (%zu on NVMe)", round,
			 (unsigned long long)(kvtd_stat(c, "t2.cleaned_segments") - cleaned1), found,
			 CTX, on_nvme);
		if (found < CTX)
			break;
	}
	CHECK_MSG(found < CTX,
		  "all %d blocks of the deleted context are still stored after 2 GiB more "
		  "writes through a 256 MiB NVMe tier: its references were not dropped", CTX);
	/* What is left is the chain's head: no block is stored after a missing one. */
	bool gap = false;
	for (size_t i = 0; i < CTX; i++) {
		size_t one = 0, nv = 0;
		one = count_found(c, 1 + i, 1, &nv);
		CHECK_MSG(!(gap && one), "block %zu of the deleted chain is stored after a gap", i);
		gap = gap || !one;
	}
	kvt_region_destroy(r);
	kvt_conn_close(c);
	kvtd_stop_clean(&d);
}

/* ---- references after a crash between the two stores --------------------------------- */

/* Restart with KVT_TEST_CRASH_POINT=point, run the step that reaches it (the daemon
 * kills itself there: the call fails), call between (if not NULL) on the stopped
 * daemon's directory, then restart normally. */
static void crash_at(struct kvtd *d, const char *point, int (*step)(kvt_conn *c),
		     void (*between)(struct kvtd *d))
{
	kvtd_stop_clean(d);
	CHECK_RC(setenv("KVT_TEST_CRASH_POINT", point, 1), 0);
	kvtd_restart(d);
	CHECK_RC(unsetenv("KVT_TEST_CRASH_POINT"), 0);
	kvt_conn *c = kvtd_connect(d, 60000);
	kvt_conn_set_timeout(c, 20000);
	int rc = step(c);
	CHECK_MSG(rc != 0, "the step meant to reach %s succeeded", point);
	for (int i = 0; i < 2000 && kvtd_alive(d); i++)
		test_sleep_ms(5);
	CHECK_MSG(!kvtd_alive(d), "the daemon did not stop at %s", point);
	CHECK(strstr(kvtd_log_text(d), point) != NULL);
	kvt_conn_close(c);
	kvtd_kill(d);
	if (between)
		between(d);
	kvtd_restart(d);
}

static int delete_gone(kvt_conn *c)
{
	return kvt_ctx_delete(c, "gone");
}

static int save_cut(kvt_conn *c)
{
	return save_range(c, "cut", 300, 8, 0);
}

static int delete_gone2(kvt_conn *c)
{
	return kvt_ctx_delete(c, "gone2");
}

#define PROBE_NAME "probe-manifest-to-corrupt"

/* Flip a byte of PROBE_NAME's manifest row in the metadata store's file: the row
 * follows its key (tenant + name) in its LMDB leaf node, and past its 72-byte
 * header come the block keys, which the row checksum covers. Every copy is hit
 * (LMDB keeps older ones in free pages). */
static void corrupt_probe(struct kvtd *d)
{
	char path[512];
	snprintf(path, sizeof(path), "%s/data/meta/data.mdb", d->dir);
	FILE *f = fopen(path, "r+b");
	CHECK_MSG(f != NULL, "%s: %s", path, strerror(errno));
	static uint8_t buf[64 << 20];
	size_t n = fread(buf, 1, sizeof(buf), f);
	size_t nl = strlen(PROBE_NAME), hits = 0;
	for (size_t i = 0; i + nl + 80 < n; i++) {
		if (memcmp(buf + i, PROBE_NAME, nl) != 0)
			continue;
		buf[i + nl + 72 + 5] ^= 0x40;
		hits++;
	}
	CHECK_MSG(hits > 0, "%s: no manifest row named %s", path, PROBE_NAME);
	CHECK_RC(fseek(f, 0, SEEK_SET), 0);
	CHECK_EQ(fwrite(buf, 1, n, f), n);
	CHECK_RC(fclose(f), 0);
}

/*
 * Manifests live in the metadata store, references in the NVMe index, and no
 * transaction spans both. A crash after a delete is committed but before its
 * references are dropped, or after a save's references are durable but before
 * its manifest is committed, leaves references no manifest accounts for, and
 * they would pin those blocks on NVMe for good. The restart reconciles: the
 * blocks can be deleted again, and the references of live contexts stay.
 */
TEST(references_left_by_a_crash_between_the_stores_are_reconciled)
{
	enum { N = 8 };
	struct kvtd d;
	kvtd_start(&d, NVME_CONF "nvme_write = through\nnvme_admission = always\n");
	d.keep_dir = true;
	kvt_conn *c = kvtd_connect(&d, 60000);
	kvt_conn_set_timeout(c, 20000);
	kvt_region *r = NULL;
	CHECK_RC(kvt_region_create(c, N * BLK, &r), 0);
	put_range(c, r, 100, N, BLK, N);
	put_range(c, r, 200, N, BLK, N);
	put_range(c, r, 300, N, BLK, N);
	CHECK_RC(save_range(c, "keep", 100, N, 0), 0);
	CHECK_RC(save_range(c, "gone", 200, N, 0), 0);
	CHECK_EQ(delete_status(c, 200), KVT_EREFERENCED);
	kvt_region_destroy(r);
	kvt_conn_close(c);

	/* Deleted, then killed before the references went. */
	crash_at(&d, "ctx_unref", delete_gone, NULL);
	c = kvtd_connect(&d, 60000);
	kvt_conn_set_timeout(c, 20000);
	CHECK(strstr(kvtd_log_text(&d), "leaked references dropped") != NULL);
	CHECK_EQ(kvtd_stat(c, "meta.refs_dropped"), N);
	CHECK_EQ(kvtd_stat(c, "meta.refs_restored"), 0);
	CHECK_EQ(check_range(c, "gone", 200, N, BLK, true), KVT_ENOENT);
	CHECK_EQ(check_range(c, "keep", 100, N, BLK, false), 0);
	for (uint64_t i = 0; i < N; i++) {
		CHECK_MSG(delete_status(c, 200 + i) == 0, "block %llu of the deleted context: %s",
			  (unsigned long long)(200 + i), kvt_errname(delete_status(c, 200 + i)));
		CHECK_EQ(delete_status(c, 100 + i), KVT_EREFERENCED);
	}
	kvt_conn_close(c);

	/* References taken and durable, then killed before the manifest. */
	crash_at(&d, "ctx_commit", save_cut, NULL);
	c = kvtd_connect(&d, 60000);
	kvt_conn_set_timeout(c, 20000);
	CHECK_EQ(kvtd_stat(c, "meta.refs_dropped"), N);
	CHECK_EQ(check_range(c, "cut", 300, N, BLK, true), KVT_ENOENT);
	CHECK_EQ(check_range(c, "keep", 100, N, BLK, false), 0);
	for (uint64_t i = 0; i < N; i++) {
		CHECK_EQ(delete_status(c, 300 + i), 0);
		CHECK_EQ(delete_status(c, 100 + i), KVT_EREFERENCED);
	}
	kvt_conn_close(c);

	/* A clean restart changes nothing. */
	kvtd_stop_clean(&d);
	kvtd_restart(&d);
	c = kvtd_connect(&d, 60000);
	CHECK_EQ(kvtd_stat(c, "meta.refs_dropped"), 0);
	CHECK_EQ(kvtd_stat(c, "meta.refs_restored"), 0);
	CHECK_EQ(delete_status(c, 100), KVT_EREFERENCED);
	kvt_conn_close(c);

	/* The metadata store gone (moved away, a volume not mounted): a new empty one
	 * is made, and the references are kept, not dropped; with the store back,
	 * "keep" is whole and still protected. */
	kvtd_stop_clean(&d);
	char meta[512], aside[512], cmd[1100 + 2 * 512];
	snprintf(meta, sizeof(meta), "%s/data/meta", d.dir);
	snprintf(aside, sizeof(aside), "%s/meta.aside", d.dir);
	CHECK_RC(rename(meta, aside), 0);
	kvtd_restart(&d);
	c = kvtd_connect(&d, 60000);
	CHECK_MSG(strstr(kvtd_log_text(&d), "was created at this start"), "log:\n%s",
		  kvtd_log_text(&d));
	CHECK_EQ(kvtd_stat(c, "meta.refs_dropped"), 0);
	CHECK_EQ(delete_status(c, 101), KVT_EREFERENCED);
	kvt_conn_close(c);
	kvtd_stop_clean(&d);
	snprintf(cmd, sizeof(cmd), "rm -rf '%s' && mv '%s' '%s'", meta, aside, meta);
	CHECK_RC(system(cmd), 0);
	kvtd_restart(&d);
	c = kvtd_connect(&d, 60000);
	CHECK_EQ(kvtd_stat(c, "meta.refs_dropped"), 0);
	CHECK_EQ(check_range(c, "keep", 100, N, BLK, false), 0);
	CHECK_EQ(delete_status(c, 100), KVT_EREFERENCED);

	/* A manifest that fails its checksum while another left references behind:
	 * nothing is dropped, since the unreadable one may be what holds them. */
	CHECK_RC(kvt_region_create(c, N * BLK, &r), 0);
	put_range(c, r, 400, N, BLK, N);
	put_range(c, r, 500, N, BLK, N);
	kvt_region_destroy(r);
	CHECK_RC(save_range(c, PROBE_NAME, 400, N, 0), 0);
	CHECK_RC(save_range(c, "gone2", 500, N, 0), 0);
	kvt_conn_close(c);
	crash_at(&d, "ctx_unref", delete_gone2, corrupt_probe);
	c = kvtd_connect(&d, 60000);
	CHECK_MSG(strstr(kvtd_log_text(&d), "fail their checksum"), "log:\n%s",
		  kvtd_log_text(&d));
	CHECK_EQ(kvtd_stat(c, "meta.refs_dropped"), 0);
	CHECK_EQ(delete_status(c, 500), KVT_EREFERENCED);
	CHECK_EQ(delete_status(c, 400), KVT_EREFERENCED);
	{
		kvt_ctx_info *in = NULL;
		CHECK_RC(kvt_ctx_load(c, PROBE_NAME, KVT_TIER_HOST, 0, &in), KVT_EIO);
	}

	CHECK_RC(kvt_ctx_delete(c, "keep"), 0);
	CHECK_EQ(delete_status(c, 100), 0);
	kvt_conn_close(c);
	d.keep_dir = false;
	kvtd_stop_clean(&d);
}

/* ---- a power cut (tests/tools/pcfs) ----------------------------------------------- */

/*
 * pcfs mounts a backing directory through FUSE and, when unmounted after --cut,
 * rolls every file back to its last fsync/fdatasync: what a power cut leaves of
 * the data. Skipped where FUSE cannot be mounted.
 */
struct pcut {
	char base[256], backing[320], mnt[320], log[320];
	pid_t pid;
};

static const char *pcfs_bin(void)
{
	static char path[512];
	snprintf(path, sizeof(path), "%s/../tests/tools/pcfs", kvtd_bin(""));
	return path;
}

static bool is_mounted(const char *mnt)
{
	struct stat a, b;
	char parent[400];
	snprintf(parent, sizeof(parent), "%s/..", mnt);
	return stat(mnt, &a) == 0 && stat(parent, &b) == 0 && a.st_dev != b.st_dev;
}

/* Mount; false if pcfs exits at once (FUSE not usable here: the case is skipped).
 * A mount that does not appear in time fails the case. */
static bool pcut_mount(struct pcut *p)
{
	pid_t parent = getpid();
	p->pid = fork();
	CHECK(p->pid >= 0);
	if (p->pid == 0) {
		/* Gone with the case, whatever ends it (it unmounts on SIGTERM); and
		 * holding none of the case's descriptors (its output pipe above all). */
		prctl(PR_SET_PDEATHSIG, SIGTERM);
		if (getppid() != parent)
			_exit(127);
		int fd = open(p->log, O_WRONLY | O_CREAT | O_APPEND, 0644);
		if (fd >= 0) {
			dup2(fd, 1);
			dup2(fd, 2);
		}
		close_range(3, ~0u, 0);
		execl(pcfs_bin(), "pcfs", "--cut", p->backing, p->mnt, "-f", (char *)NULL);
		_exit(127);
	}
	for (int i = 0; i < 3000; i++) {
		if (is_mounted(p->mnt))
			return true;
		int st;
		if (waitpid(p->pid, &st, WNOHANG) == p->pid) {
			p->pid = -1;
			return false;
		}
		test_sleep_ms(10);
	}
	kill(p->pid, SIGKILL);
	waitpid(p->pid, NULL, 0);
	p->pid = -1;
	CHECK_MSG(false, "pcfs did not mount %s within 30 s (log %s)", p->mnt, p->log);
	return false;
}

/* The cut: unmount, and pcfs rolls back what was never synced. Detached, since a
 * process killed with I/O in flight (io_uring) can keep files open a moment after
 * it is gone: the file system goes, and pcfs rolls back, once those writes have
 * landed, as they may on a real disk before the power fails. */
static void pcut_cut(struct pcut *p)
{
	int st = 0;
	CHECK_MSG(umount2(p->mnt, MNT_DETACH) == 0, "umount %s: %s", p->mnt, strerror(errno));
	pid_t r = 0;
	for (int i = 0; i < 6000 && (r = waitpid(p->pid, &st, WNOHANG)) == 0; i++)
		test_sleep_ms(10);
	CHECK_MSG(r == p->pid, "pcfs did not exit within 60 s of the unmount");
	CHECK_MSG(WIFEXITED(st) && WEXITSTATUS(st) == 0, "pcfs ended with status %#x", st);
	p->pid = -1;
}

/* Memory record k of a round whose blocks start at first: names the context. */
static void pcut_value(char *out, size_t cap, uint64_t first, uint64_t k)
{
	snprintf(out, cap, "context pc/%llu of blocks from %llu", (unsigned long long)k,
		 (unsigned long long)(first + k * 8));
}

static void *pcut_saver(void *arg)
{
	struct saver *s = arg;
	kvt_conn *c = NULL;
	s->rc = kvt_conn_open(s->sock, &c);
	if (s->rc)
		return NULL;
	kvt_conn_set_timeout(c, 60000);
	kvt_region *r = NULL;
	s->rc = kvt_region_create(c, 8 * BLK, &r);
	/* Contexts of 8 fresh blocks each, then a memory record naming it, until the
	 * daemon is gone; s->n counts the acknowledged ones. */
	for (uint64_t k = 0; s->rc == 0; k++) {
		uint64_t first = s->first + k * 8;
		char name[32], val[96];
		for (uint64_t i = 0; i < 8 && s->rc == 0; i++) {
			kvt_put_item it = { .key = blk_key(first + i), .region = r,
					    .offset = i * BLK, .length = BLK, .desc = blk_desc };
			if (i)
				it.parent = blk_key(first + i - 1);
			id_fill((uint8_t *)kvt_region_base(r) + i * BLK, BLK, first + i);
			s->rc = kvt_block_put(c, &it, 1);
		}
		snprintf(name, sizeof(name), "pc/%llu", (unsigned long long)k);
		if (s->rc == 0)
			s->rc = save_range(c, name, first, 8, 0);
		pcut_value(val, sizeof(val), s->first, k);
		char ns[32];
		snprintf(ns, sizeof(ns), "pc%llu", (unsigned long long)s->first);
		kvt_mem_record rec = { .ns = ns, .key = name, .value = val,
				       .value_len = strlen(val) };
		if (s->rc == 0)
			s->rc = kvt_mem_put(c, &rec);
		if (s->rc == 0)
			s->n = (size_t)k + 1;
	}
	if (r)
		kvt_region_destroy(r);
	kvt_conn_close(c);
	return NULL;
}

/*
 * Power cut: while contexts and memory records are being saved, the daemon is
 * killed and the file system loses everything not yet synced. After a restart
 * every acknowledged context loads whole and byte-identical with its record,
 * and the one cut mid-save is whole or absent. KVT_POWERCUT_LOOPS=N cycles
 * (default 3).
 */
TEST(acknowledged_saves_survive_a_power_cut)
{
	unsigned loops = env_loops("KVT_POWERCUT_LOOPS", 3);
	struct pcut p = { .pid = -1 };
	if (access("/dev/fuse", R_OK | W_OK) != 0 || access(pcfs_bin(), X_OK) != 0) {
		test_skip("no /dev/fuse or no %s: cannot simulate a power cut", pcfs_bin());
		return;
	}
	snprintf(p.base, sizeof(p.base), "/var/tmp/kvt-pcut-XXXXXX");
	CHECK(mkdtemp(p.base) != NULL);
	snprintf(p.backing, sizeof(p.backing), "%s/backing", p.base);
	snprintf(p.mnt, sizeof(p.mnt), "%s/mnt", p.base);
	snprintf(p.log, sizeof(p.log), "%s/pcfs.log", p.base);
	CHECK_RC(mkdir(p.backing, 0755), 0);
	CHECK_RC(mkdir(p.mnt, 0755), 0);
	if (!pcut_mount(&p)) {
		char cmd[700];
		snprintf(cmd, sizeof(cmd), "rm -rf '%s'", p.base);
		CHECK_RC(system(cmd), 0);
		test_skip("pcfs could not mount (FUSE not usable here)");
		return;
	}
	char conf[900];
	snprintf(conf, sizeof(conf), "data_dir = %s/data\nhost_capacity = 128MiB\n" NVME_CONF
		 "nvme_write = back\n", p.mnt);
	struct kvtd d;
	kvtd_start(&d, conf);
	d.keep_dir = true;
	uint64_t seed = (uint64_t)time(NULL);
	test_log("seed %llu", (unsigned long long)seed);
	size_t acked_total = 0;
	for (unsigned loop = 0; loop < loops; loop++) {
		struct saver sv = { d.sock, NULL, 1000000 + (uint64_t)loop * 100000, 0, 0 };
		pthread_t th;
		CHECK(pthread_create(&th, NULL, pcut_saver, &sv) == 0);
		test_sleep_ms(300 + (int)(mix64(seed + loop) % 1200));
		kvtd_kill(&d);
		pthread_join(th, NULL);
		pcut_cut(&p);
		CHECK(pcut_mount(&p));
		kvtd_restart(&d);
		kvt_conn *c = kvtd_connect(&d, 60000);
		kvt_conn_set_timeout(c, 60000);
		/* Every acknowledged one, and the one that may have been cut. */
		for (size_t k = 0; k <= sv.n; k++) {
			char name[32];
			snprintf(name, sizeof(name), "pc/%zu", k);
			int rc = check_range(c, name, sv.first + k * 8, 8, BLK, k == sv.n);
			char ns[32], want[96];
			snprintf(ns, sizeof(ns), "pc%llu", (unsigned long long)sv.first);
			pcut_value(want, sizeof(want), sv.first, k);
			kvt_mem_item *it = NULL;
			int mrc = kvt_mem_get(c, ns, name, &it);
			if (k < sv.n)
				CHECK_MSG(rc == 0 && mrc == 0, "loop %u: acknowledged %s lost after the "
					  "cut (context %s, record %s)", loop, name, kvt_errname(rc),
					  kvt_errname(mrc));
			if (mrc == 0) {
				CHECK_MSG(it->value_len == strlen(want) &&
						  memcmp(it->value, want, it->value_len) == 0,
					  "loop %u: record %s/%s holds '%.*s'", loop, ns, name,
					  (int)it->value_len, (const char *)it->value);
				CHECK_RC(kvt_mem_delete(c, ns, name), 0);
			}
			kvt_mem_item_free(it);
			if (rc == 0)
				CHECK_RC(kvt_ctx_delete(c, name), 0);
		}
		test_log("loop %u: %zu contexts acknowledged before the cut, all whole after it",
			 loop, sv.n);
		acked_total += sv.n;
		kvt_conn_close(c);
	}
	CHECK_MSG(acked_total > 0, "no save was acknowledged in %u loops", loops);
	d.keep_dir = false;
	kvtd_stop_clean(&d);
	pcut_cut(&p);
	char cmd[700];
	snprintf(cmd, sizeof(cmd), "rm -rf '%s'", p.base);
	CHECK_RC(system(cmd), 0);
}

/* ---- a context larger than the host tier ---------------------------------------------- */

/* GET blocks first..first+n of len bytes in chain order, 4 per request as an engine
 * pages them in, checking every byte. */
static void get_in_batches(kvt_conn *c, uint64_t first, size_t n, size_t len)
{
	enum { B = 4 };
	kvt_region *r = NULL;
	CHECK_RC(kvt_region_create(c, B * len, &r), 0);
	uint8_t *want = malloc(len);
	CHECK(want != NULL);
	for (size_t b = 0; b < n; b += B) {
		size_t m = n - b < B ? n - b : B;
		kvt_get_item g[B];
		memset(kvt_region_base(r), 0, B * len);
		for (size_t j = 0; j < m; j++)
			g[j] = (kvt_get_item){ .key = blk_key(first + b + j), .region = r,
					       .offset = j * len, .capacity = len };
		int rc = kvt_block_get(c, g, m);
		CHECK_MSG(rc == 0, "GET of blocks %zu..%zu: %s (first item %s)", b, b + m - 1,
			  kvt_errname(rc), kvt_errname(g[0].status));
		for (size_t j = 0; j < m; j++) {
			CHECK_EQ(g[j].length, len);
			id_fill(want, len, first + b + j);
			CHECK_MSG(memcmp((uint8_t *)kvt_region_base(r) + j * len, want, len) == 0,
				  "block %zu differs", b + j);
		}
	}
	free(want);
	kvt_region_destroy(r);
}

/*
 * The point of saving to NVMe: a context larger than the host tier is saved, the
 * daemon restarts, and the whole context is restored - CTX_LOAD brings up what
 * fits, and GETs in chain order, 4 blocks a request, read the rest from NVMe
 * (read-ahead making room by evicting blocks already on NVMe). The host tier holds
 * 4k + 1 blocks, so when the GETs reach the end of what was loaded, the last
 * loaded block is the only one not yet read: the one read-ahead must not lose
 * while it brings up that block's child.
 */
TEST(a_context_larger_than_the_host_tier_restores_after_a_restart)
{
	enum { N = 256, RESIDENT = 193 }; /* blocks of 256 KiB */
	char conf[512];
	snprintf(conf, sizeof(conf),
		 "host_capacity = %lluKiB\nnvme_capacity = 512MiB\nnvme_segment_size = 64MiB\n"
		 "nvme_write = back\nnvme_admission = always\n",
		 (unsigned long long)(RESIDENT * BLK / KiB));
	struct kvtd d;
	kvtd_start(&d, conf);
	d.keep_dir = true;
	kvt_conn *c = kvtd_connect(&d, 60000);
	kvt_conn_set_timeout(c, 20000); /* a daemon that stops answering fails fast */
	kvt_region *r = NULL;
	CHECK_RC(kvt_region_create(c, 8 * BLK, &r), 0);
	put_range(c, r, 70000, N, BLK, 8);
	CHECK_RC(save_range(c, "big", 70000, N, 0), 0);
	kvt_region_destroy(r);
	kvt_conn_close(c);
	kvtd_stop_clean(&d);
	kvtd_restart(&d);
	c = kvtd_connect(&d, 60000);
	kvt_conn_set_timeout(c, 20000);
	kvt_ctx_info *in = NULL;
	CHECK_RC(kvt_ctx_load(c, "big", KVT_TIER_HOST, 20000, &in), 0);
	test_log("CTX_LOAD: %zu of %zu blocks resident", in->resident, in->nkeys);
	CHECK_EQ(in->nkeys, N);
	CHECK_MSG(in->resident >= RESIDENT - 8 && in->resident < N,
		  "%zu blocks resident in a host tier of %d", in->resident, RESIDENT);
	kvt_ctx_free(in);
	get_in_batches(c, 70000, N, BLK);
	/* Once more, through the manifest and one GET at a time. */
	CHECK_EQ(check_range(c, "big", 70000, N, BLK, false), 0);
	kvt_conn_close(c);
	d.keep_dir = false;
	kvtd_stop_clean(&d);
}

/* ---- the example engine ------------------------------------------------------------ */


/* kvtier-engine --save, a restart, --restore: every byte verified by the engine,
 * which also refuses a shape that disagrees with the saved one. */
TEST(example_engine_restores_a_saved_context_after_a_restart)
{
	const char *engine = kvtd_bin("kvtier-engine");
	if (access(engine, X_OK) < 0)
		test_skip("no %s (the sanitizer build makes only the daemon)", engine);
	char bin[512];
	snprintf(bin, sizeof(bin), "%s", engine);
	struct kvtd d;
	kvtd_start(&d, NVME_CONF);
	d.keep_dir = true;
	static char out[16384];
	char cmd[1024];
	/* 2100 tokens of a small shape: 8 blocks of 128 KiB and 52 tokens not cached. */
	const char *shape = "--tokens 2100 --layers 2 --kv-heads 2 --head-dim 32 --seed 7";
	snprintf(cmd, sizeof(cmd), "%s -s %s %s --save engine/ctx 2>&1", bin, d.sock, shape);
	CHECK_EQ(run_capture(cmd, out, sizeof(out)), 0);
	CHECK(strstr(out, "SAVE    'engine/ctx': 8 blocks") != NULL);
	kvtd_stop_clean(&d);
	kvtd_restart(&d);
	snprintf(cmd, sizeof(cmd), "%s -s %s --restore engine/ctx 2>&1", bin, d.sock);
	CHECK_EQ(run_capture(cmd, out, sizeof(out)), 0);
	CHECK(strstr(out, "manifest and token ids match the generator") != NULL);
	CHECK(strstr(out, "OK: every byte of the 8 blocks read back matched") != NULL);
	CHECK(strstr(out, "the restore took") != NULL);
	snprintf(cmd, sizeof(cmd), "%s -s %s --restore engine/ctx --seed 8 2>&1", bin, d.sock);
	CHECK_EQ(run_capture(cmd, out, sizeof(out)), 1);
	CHECK(strstr(out, "saved with seed 7, not 8") != NULL);
	snprintf(cmd, sizeof(cmd), "%s -s %s --restore engine/other 2>&1", bin, d.sock);
	CHECK_EQ(run_capture(cmd, out, sizeof(out)), 1);
	CHECK(strstr(out, "(ENOENT)") != NULL);
	d.keep_dir = false;
	kvtd_stop_clean(&d);
}

TEST_MAIN(saved_contexts_survive_sigterm_and_kill9_restarts, acknowledged_saves_survive_a_kill9_loop,
	  a_save_cut_by_kill9_is_all_or_nothing, referenced_blocks_outlive_nvme_pressure_until_deleted,
	  references_left_by_a_crash_between_the_stores_are_reconciled,
	  acknowledged_saves_survive_a_power_cut,
	  a_context_larger_than_the_host_tier_restores_after_a_restart,
	  example_engine_restores_a_saved_context_after_a_restart)
