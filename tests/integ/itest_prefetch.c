/*
 * itest_prefetch.c - PREFETCH against a real kvtierd with an NVMe tier: blocks
 * that only NVMe has (after a restart the host tier is cold) are brought into the
 * host tier and reported as such, unknown keys are reported as stored nowhere, a
 * deadline of 0 answers at once, the GPU tier is refused, and bad parameters are
 * clear errors.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "harness.h"
#include "kvtier.h"
#include "proto.h"
#include "test.h"

#define MiB (1024ull * 1024)
#define BLK (2 * MiB)
#define NBLK 24

static const kvt_block_desc desc = { .dtype = KVT_DTYPE_BF16, .layers = 32, .tokens = 16 };

/* Host tier of 32 MiB (16 blocks), NVMe 512 MiB written through, on a data
 * directory that outlives one daemon. */
static void start(struct kvtd *d, const char *data_dir)
{
	char conf[1024];
	snprintf(conf, sizeof(conf),
		 "host_capacity = 32MiB\nnvme_capacity = 512MiB\nnvme_segment_size = 64MiB\n"
		 "nvme_write = through\nnvme_admission = always\nreadahead = 0\ndata_dir = %s\n",
		 data_dir);
	kvtd_start(d, conf);
}

static void fill(uint8_t *p, size_t n, uint64_t seed)
{
	uint64_t x = seed * 0x9e3779b97f4a7c15ull + 1;
	for (size_t i = 0; i < n; i++) {
		x ^= x << 13;
		x ^= x >> 7;
		x ^= x << 17;
		p[i] = (uint8_t)x;
	}
}

static void make_keys(kvt_key *keys, size_t n)
{
	kvt_salt_params sp = { .model_id = "itest-prefetch", .block_tokens = 16 };
	kvt_key salt;
	CHECK_RC(kvt_key_salt(&sp, &salt), 0);
	for (size_t i = 0; i < n; i++) {
		uint32_t tok = (uint32_t)i;
		kvt_key_chain(&salt, i ? &keys[i - 1] : NULL, &tok, 1, &keys[i]);
	}
}

/* Store the chain and wait until every block is durable on NVMe. */
static void store_chain(kvt_conn *c, const kvt_key *keys)
{
	kvt_region *r = NULL;
	CHECK_RC(kvt_region_create(c, BLK, &r), 0);
	for (size_t i = 0; i < NBLK; i++) {
		fill(kvt_region_base(r), BLK, i);
		kvt_put_item it = { .key = keys[i], .region = r, .length = BLK, .desc = desc };
		if (i)
			it.parent = keys[i - 1];
		CHECK_RC(kvt_block_put(c, &it, 1), 0);
	}
	for (int tries = 0; kvtd_stat(c, "t2.blocks") < NBLK; tries++) {
		CHECK_MSG(tries < 600, "only %llu of %d blocks reached NVMe",
			  (unsigned long long)kvtd_stat(c, "t2.blocks"), NBLK);
		usleep(50 * 1000);
	}
	kvt_region_destroy(r);
}

TEST(prefetch_brings_nvme_blocks_into_the_host_tier)
{
	struct kvtd d;
	kvt_key keys[NBLK + 1];
	make_keys(keys, NBLK + 1); /* the last one is never stored */
	char dd[400];
	snprintf(dd, sizeof(dd), "/var/tmp/kvt-itest-prefetch-%d", (int)getpid());
	CHECK(mkdir(dd, 0755) == 0);
	start(&d, dd);
	kvt_conn *c = kvtd_connect(&d, 30000);
	store_chain(c, keys);
	kvt_conn_close(c);
	CHECK_EQ(kvtd_stop(&d), 0);

	/* A new daemon: the host tier is empty, NVMe has everything. */
	start(&d, dd);
	c = kvtd_connect(&d, 30000);
	size_t found = 0;
	uint8_t lt[NBLK + 1];
	CHECK_RC(kvt_block_lookup(c, keys, NBLK + 1, &found, lt), 0);
	CHECK_EQ(found, NBLK);
	for (size_t i = 0; i < NBLK; i++)
		CHECK_EQ(lt[i], KVT_TIER_NVME);

	/* Deadline 0: answered at once, from where things are now. */
	uint8_t tiers[NBLK + 1];
	CHECK_RC(kvt_block_prefetch(c, &keys[NBLK], 1, KVT_TIER_HOST, 0, tiers), 0);
	CHECK_EQ(tiers[0], KVT_TIER_NONE);

	/* The first 8 (16 MiB, half the host tier): all brought up by the deadline. */
	CHECK_RC(kvt_block_prefetch(c, keys, 8, KVT_TIER_HOST, 20000, tiers), 0);
	for (size_t i = 0; i < 8; i++)
		CHECK_MSG(tiers[i] == KVT_TIER_HOST, "block %zu reported in tier %u", i, tiers[i]);
	CHECK_RC(kvt_block_lookup(c, keys, 8, &found, lt), 0);
	CHECK_EQ(found, 8);
	for (size_t i = 0; i < 8; i++)
		CHECK_EQ(lt[i], KVT_TIER_HOST);
	CHECK(kvtd_stat(c, "t2.promotions") >= 8);

	/* Everything plus an unknown key: each is reported somewhere sensible. */
	CHECK_RC(kvt_block_prefetch(c, keys, NBLK + 1, KVT_TIER_HOST, 20000, tiers), 0);
	for (size_t i = 0; i < NBLK; i++)
		CHECK_MSG(tiers[i] == KVT_TIER_HOST || tiers[i] == KVT_TIER_NVME,
			  "block %zu reported in tier %u", i, tiers[i]);
	CHECK_EQ(tiers[NBLK], KVT_TIER_NONE);

	/* The bytes that came up are the bytes that were stored. */
	kvt_region *r = NULL;
	CHECK_RC(kvt_region_create(c, BLK, &r), 0);
	uint8_t *want = malloc(BLK);
	CHECK(want != NULL);
	for (size_t i = 0; i < NBLK; i++) {
		kvt_get_item g = { .key = keys[i], .region = r, .capacity = BLK };
		CHECK_RC(kvt_block_get(c, &g, 1), 0);
		fill(want, BLK, i);
		CHECK_MSG(memcmp(kvt_region_base(r), want, BLK) == 0, "block %zu differs", i);
	}
	free(want);
	kvt_region_destroy(r);

	/* No GPU tier here; the NVMe tier as a target only reports. */
	CHECK_RC(kvt_block_prefetch(c, keys, 1, KVT_TIER_HBM, 100, tiers), KVT_EOPNOTSUPP);
	CHECK_RC(kvt_block_prefetch(c, keys, 1, KVT_TIER_NVME, 100, tiers), 0);
	CHECK_RC(kvt_block_prefetch(c, keys, 1, 7, 100, tiers), KVT_EINVAL);
	kvt_conn_close(c);
	CHECK_EQ(kvtd_stop(&d), 0);
	char cmd[512];
	snprintf(cmd, sizeof(cmd), "rm -rf '%s'", dd);
	CHECK(system(cmd) == 0);
}

/*
 * Paging a chain in with PREFETCH a few blocks ahead of the GETs, through a host
 * tier smaller than the chain: blocks prefetched but not yet read must outlast
 * blocks already consumed, so every block is read from NVMe exactly once. (A
 * block brought up from NVMe counts as re-referenced for the eviction policy;
 * otherwise 2Q would evict the prefetched blocks, seen once, before the consumed
 * ones, seen twice.)
 */
TEST(paging_in_with_prefetch_reads_each_block_once)
{
	enum { AHEAD = 6 };
	struct kvtd d;
	kvt_key keys[NBLK];
	make_keys(keys, NBLK);
	char dd[400];
	snprintf(dd, sizeof(dd), "/var/tmp/kvt-itest-prefetch2-%d", (int)getpid());
	CHECK(mkdir(dd, 0755) == 0);
	start(&d, dd);
	kvt_conn *c = kvtd_connect(&d, 30000);
	store_chain(c, keys);
	kvt_conn_close(c);
	CHECK_EQ(kvtd_stop(&d), 0);

	start(&d, dd);
	c = kvtd_connect(&d, 30000);
	uint64_t reads0 = kvtd_stat(c, "t2.reads");
	kvt_region *r = NULL;
	CHECK_RC(kvt_region_create(c, BLK, &r), 0);
	uint8_t *want = malloc(BLK);
	CHECK(want != NULL);
	uint8_t tiers[AHEAD];
	for (size_t i = 0; i < NBLK; i++) {
		size_t from = i + 1, n = from + AHEAD <= NBLK ? AHEAD : NBLK - from;
		if (n)
			CHECK_RC(kvt_block_prefetch(c, &keys[from], n, KVT_TIER_HOST, 20000, tiers), 0);
		kvt_get_item g = { .key = keys[i], .region = r, .capacity = BLK };
		CHECK_RC(kvt_block_get(c, &g, 1), 0);
		fill(want, BLK, i);
		CHECK_MSG(memcmp(kvt_region_base(r), want, BLK) == 0, "block %zu differs", i);
	}
	uint64_t reads = kvtd_stat(c, "t2.reads") - reads0;
	CHECK_MSG(reads == NBLK, "%llu NVMe reads for %d blocks: prefetched blocks were evicted "
		  "before they were read", (unsigned long long)reads, NBLK);
	free(want);
	kvt_region_destroy(r);
	kvt_conn_close(c);
	CHECK_EQ(kvtd_stop(&d), 0);
	char cmd[512];
	snprintf(cmd, sizeof(cmd), "rm -rf '%s'", dd);
	CHECK(system(cmd) == 0);
}

TEST(prefetch_with_bad_parameters_is_refused)
{
	struct kvtd d;
	kvtd_start(&d, NULL);
	int s = raw_connect(d.sock);
	raw_hello(s);
	uint8_t body[KVT_PREFETCH_PARAMS_SIZE + 8 + KVT_KEY_SIZE];
	memset(body, 0, sizeof(body));
	kvt_put32(body + KVT_PREFETCH_PARAMS_SIZE, 1); /* one key */
	body[5] = 1;                                   /* reserved byte set */
	CHECK_RC(raw_send_frame(s, KVT_OP_PREFETCH, 0, 7, body, sizeof(body)), 0);
	struct kvt_hdr h;
	uint8_t rep[64];
	CHECK_RC(raw_recv_frame(s, &h, rep, sizeof(rep), 10000), 0);
	CHECK_EQ(h.request_id, 7);
	CHECK_RC(h.status, KVT_ERESERVED);
	body[5] = 0;
	body[4] = 9; /* no such tier */
	CHECK_RC(raw_send_frame(s, KVT_OP_PREFETCH, 0, 8, body, sizeof(body)), 0);
	CHECK_RC(raw_recv_frame(s, &h, rep, sizeof(rep), 10000), 0);
	CHECK_RC(h.status, KVT_EBADMSG);
	/* Without an NVMe tier a stored-nowhere key is simply reported so. */
	body[4] = KVT_TIER_HOST;
	CHECK_RC(raw_send_frame(s, KVT_OP_PREFETCH, 0, 9, body, sizeof(body)), 0);
	CHECK_RC(raw_recv_frame(s, &h, rep, sizeof(rep), 10000), 0);
	CHECK_RC(h.status, 0);
	uint8_t t = 0;
	CHECK_RC(kvt_prefetch_rep_decode(rep, h.body_len, 1, &t), 0);
	CHECK_EQ(t, KVT_TIER_NONE);
	close(s);
	CHECK_EQ(kvtd_stop(&d), 0);
}

TEST_MAIN(prefetch_brings_nvme_blocks_into_the_host_tier, prefetch_with_bad_parameters_is_refused,
	  paging_in_with_prefetch_reads_each_block_once)
