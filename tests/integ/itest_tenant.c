/*
 * itest_tenant.c - tenants: per-tenant quotas (EDQUOT, overrides, eviction within
 * the quota), isolation between two uids (another tenant's keys behave exactly
 * like misses, STATS shows only one's own tenant), and uid_map.
 *
 * The two-tenant cases need root: a forked child drops to uid 65534 before it
 * connects, because the daemon takes the identity from SO_PEERCRED at connect.
 */
#include <grp.h>
#include <stdint.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "harness.h"
#include "kvtier.h"
#include "test.h"

#define KiB (1024ull)
#define MiB (1024ull * 1024)

static const kvt_block_desc test_desc = { .dtype = KVT_DTYPE_FP8_E4M3, .tokens = 32 };

static kvt_key test_key(uint32_t ns, uint64_t n)
{
	kvt_key k;
	memset(&k, 0, sizeof(k));
	k.b[0] = 0x74;
	memcpy(k.b + 4, &ns, sizeof(ns));
	memcpy(k.b + 8, &n, sizeof(n));
	return k;
}

static int put_one(kvt_conn *c, const kvt_region *r, kvt_key key, uint64_t off, uint64_t len)
{
	kvt_put_item it = { .key = key, .region = r, .offset = off, .length = len,
			    .desc = test_desc, .status = 12345 };
	int rc = kvt_block_put(c, &it, 1);
	if (rc != 0 && rc != KVT_EPARTIAL)
		return rc;
	CHECK_EQ(rc, it.status ? KVT_EPARTIAL : 0);
	return it.status;
}

static int get_one(kvt_conn *c, const kvt_region *r, kvt_key key, uint64_t off, uint64_t cap,
		   uint64_t *len)
{
	kvt_get_item g = { .key = key, .region = r, .offset = off, .capacity = cap,
			   .status = 12345 };
	int rc = kvt_block_get(c, &g, 1);
	if (rc != 0 && rc != KVT_EPARTIAL)
		return rc;
	if (len)
		*len = g.length;
	return g.status;
}

static size_t lookup_one(kvt_conn *c, kvt_key k)
{
	size_t found = 99;
	CHECK_RC(kvt_block_lookup(c, &k, 1, &found, NULL), 0);
	return found;
}

static uint64_t tenant_stat(kvt_conn *c, uint32_t tenant, const char *what)
{
	char name[80];
	snprintf(name, sizeof(name), "tenant.%u.%s", tenant, what);
	return kvtd_stat(c, name);
}

/* Every STATS entry a non-admin sees is server.*, t1.capacity_bytes or its own
 * tenant.<id>.*; returns how many of its own tenant's entries it saw. */
static int check_stats_scope(kvt_conn *c, uint32_t own)
{
	kvt_stats *s = NULL;
	CHECK_RC(kvt_stats_get(c, &s), 0);
	char mine[32];
	snprintf(mine, sizeof(mine), "tenant.%u.", own);
	int own_entries = 0;
	char extra[1024] = "";
	for (size_t i = 0; i < kvt_stats_count(s); i++) {
		const char *name = NULL, *text = NULL;
		uint64_t v;
		CHECK_RC(kvt_stats_entry(s, i, &name, &v, &text), 0);
		bool ok = strncmp(name, "server.", 7) == 0 ||
			  strcmp(name, "t1.capacity_bytes") == 0;
		if (strncmp(name, mine, strlen(mine)) == 0) {
			ok = true;
			own_entries++;
		}
		if (!ok && strlen(extra) + strlen(name) + 2 < sizeof(extra)) {
			strcat(extra, " ");
			strcat(extra, name);
		}
	}
	kvt_stats_free(s);
	CHECK_MSG(!extra[0], "tenant %u sees STATS entries beyond its scope:%s", own, extra);
	return own_entries;
}

/* ------------------------------------------------------------------------ */

TEST(block_over_the_quota_is_edquot)
{
	struct kvtd d;
	kvtd_start(&d, "tenant_quota = 1MiB\n");
	kvt_conn *c = kvtd_connect(&d, 30000);
	uint32_t me = kvt_conn_server(c)->tenant;
	kvt_region *r = kvtd_region(c, 4 * MiB);
	CHECK_RC(put_one(c, r, test_key(1, 1), 0, 1 * MiB + 1), KVT_EDQUOT);
	CHECK_EQ(lookup_one(c, test_key(1, 1)), 0);
	CHECK_RC(put_one(c, r, test_key(1, 2), 0, 1 * MiB), 0);
	CHECK_EQ(tenant_stat(c, me, "quota_bytes"), 1 * MiB);
	CHECK_EQ(tenant_stat(c, me, "bytes"), 1 * MiB);
	CHECK_RC(kvt_region_destroy(r), 0);
	kvt_conn_close(c);
	kvtd_stop_clean(&d);
}

TEST(quota_evicts_the_tenants_own_blocks_first)
{
	enum { BLK = 64 * 1024, N = 64 };
	struct kvtd d;
	kvtd_start(&d, "tenant_quota = 1MiB\n");
	kvt_conn *c = kvtd_connect(&d, 30000);
	uint32_t me = kvt_conn_server(c)->tenant;
	kvt_region *r = kvtd_region(c, 1 * MiB);
	/* 4 MiB of blocks under a 1 MiB quota in a 64 MiB tier: all stored, the
	 * tenant never holds more than its quota. */
	for (int i = 0; i < N; i++) {
		CHECK_RC(put_one(c, r, test_key(2, (uint64_t)i), 0, BLK), 0);
		CHECK(tenant_stat(c, me, "bytes") <= 1 * MiB);
	}
	CHECK_EQ(lookup_one(c, test_key(2, N - 1)), 1);
	CHECK_EQ(lookup_one(c, test_key(2, 0)), 0);
	CHECK(kvtd_stat(c, "t1.evictions") >= N - 16);
	CHECK_RC(kvt_region_destroy(r), 0);
	kvt_conn_close(c);
	kvtd_stop_clean(&d);
}

TEST(quota_full_of_pinned_blocks_is_edquot)
{
	enum { BLK = 64 * 1024 };
	struct kvtd d;
	kvtd_start(&d, "tenant_quota = 512KiB\n");
	kvt_conn *c = kvtd_connect(&d, 30000);
	kvt_region *r = kvtd_region(c, 1 * MiB);
	for (int i = 0; i < 8; i++) {
		kvt_key k = test_key(3, (uint64_t)i);
		CHECK_RC(put_one(c, r, k, 0, BLK), 0);
		CHECK_RC(kvt_block_pin(c, &k, 1, NULL), 0);
	}
	CHECK_RC(put_one(c, r, test_key(3, 100), 0, BLK), KVT_EDQUOT);
	CHECK_RC(put_one(c, r, test_key(3, 101), 0, 1), KVT_EDQUOT);
	kvt_key k0 = test_key(3, 0);
	CHECK_RC(kvt_block_unpin(c, &k0, 1, NULL), 0);
	CHECK_RC(put_one(c, r, test_key(3, 102), 0, BLK), 0);
	CHECK_RC(kvt_region_destroy(r), 0);
	kvt_conn_close(c);
	kvtd_stop_clean(&d);
}

static char quota_conf[128];

TEST(quota_override_for_one_tenant)
{
	struct kvtd d;
	snprintf(quota_conf, sizeof(quota_conf), "tenant_quota = 4MiB\nquota = %u:256KiB\n",
		 (unsigned)geteuid());
	kvtd_start(&d, quota_conf);
	kvt_conn *c = kvtd_connect(&d, 30000);
	uint32_t me = kvt_conn_server(c)->tenant;
	CHECK_EQ(me, geteuid());
	CHECK_EQ(tenant_stat(c, me, "quota_bytes"), 256 * KiB);
	kvt_region *r = kvtd_region(c, 1 * MiB);
	CHECK_RC(put_one(c, r, test_key(4, 1), 0, 256 * KiB + 1), KVT_EDQUOT);
	CHECK_RC(put_one(c, r, test_key(4, 2), 0, 256 * KiB), 0);
	CHECK_RC(kvt_region_destroy(r), 0);
	kvt_conn_close(c);
	kvtd_stop_clean(&d);
}

/* ---- two tenants --------------------------------------------------------------- */

#define SHARED_KEY test_key(10, 1)
#define SHARED_LEN 3000u

/* Tenant NOBODY: the root tenant's key must look absent in every way. */
static void nobody_cannot_see_root(const struct kvtd *d)
{
	kvt_conn *c = kvtd_connect(d, 30000);
	CHECK_EQ(kvt_conn_server(c)->tenant, NOBODY);
	kvt_region *r = kvtd_region(c, 1 * MiB);
	uint8_t *base = kvt_region_base(r);
	kvt_key k = SHARED_KEY;
	CHECK_EQ(lookup_one(c, k), 0);
	uint64_t len = 0;
	memset(base, 0x11, 8192);
	CHECK_RC(get_one(c, r, k, 0, 8192, &len), KVT_ENOENT);
	for (int i = 0; i < 8192; i++)
		CHECK_MSG(base[i] == 0x11, "a refused GET wrote the destination");
	int st = 1;
	CHECK_RC(kvt_block_delete(c, &k, 1, &st), KVT_EPARTIAL);
	CHECK_RC(st, KVT_ENOENT);
	st = 1;
	CHECK_RC(kvt_block_pin(c, &k, 1, &st), KVT_EPARTIAL);
	CHECK_RC(st, KVT_ENOENT);
	st = 1;
	CHECK_RC(kvt_block_unpin(c, &k, 1, &st), KVT_EPARTIAL);
	CHECK_RC(st, KVT_ENOENT);

	/* The same key is a separate block for this tenant, really stored. */
	memset(base, 0x22, SHARED_LEN);
	CHECK_RC(put_one(c, r, k, 0, SHARED_LEN), 0);
	memset(base + 100000, 0, SHARED_LEN);
	CHECK_RC(get_one(c, r, k, 100000, SHARED_LEN, &len), 0);
	CHECK_EQ(len, SHARED_LEN);
	for (unsigned i = 0; i < SHARED_LEN; i++)
		CHECK_MSG(base[100000 + i] == 0x22, "tenant %u got another tenant's bytes",
			  NOBODY);
	CHECK_EQ(lookup_one(c, k), 1);

	uint64_t v;
	CHECK(!kvtd_stat_find(c, "tenant.0.bytes", &v));
	CHECK(kvtd_stat_find(c, "t1.capacity_bytes", &v));
	CHECK_EQ(tenant_stat(c, NOBODY, "blocks"), 1);
	/* Non-admin STATS: only server.*, t1.capacity_bytes and tenant.65534.*. */
	int own = check_stats_scope(c, NOBODY);
	CHECK_MSG(own >= 2, "tenant %u sees only %d of its own entries", NOBODY, own);
	CHECK_RC(kvt_region_destroy(r), 0);
	kvt_conn_close(c);
}

TEST(tenants_never_see_each_others_blocks)
{
	need_root();
	struct kvtd d;
	kvtd_start(&d, NULL);
	kvt_conn *c = kvtd_connect(&d, 30000);
	CHECK_EQ(kvt_conn_server(c)->tenant, 0);
	kvt_region *r = kvtd_region(c, 1 * MiB);
	uint8_t *base = kvt_region_base(r);
	memset(base, 0x99, SHARED_LEN);
	CHECK_RC(put_one(c, r, SHARED_KEY, 0, SHARED_LEN), 0);

	as_nobody(&d, nobody_cannot_see_root);

	/* Root's block is untouched by the other tenant's PUT/DELETE of the key. */
	uint64_t len = 0;
	memset(base + 200000, 0, SHARED_LEN);
	CHECK_RC(get_one(c, r, SHARED_KEY, 200000, SHARED_LEN, &len), 0);
	CHECK_EQ(len, SHARED_LEN);
	for (unsigned i = 0; i < SHARED_LEN; i++)
		CHECK_MSG(base[200000 + i] == 0x99, "root's block changed at byte %u", i);
	/* The admin sees both tenants. */
	CHECK_EQ(tenant_stat(c, 0, "blocks"), 1);
	CHECK_EQ(tenant_stat(c, NOBODY, "blocks"), 1);
	CHECK_EQ(kvtd_stat(c, "t1.blocks"), 2);
	CHECK_RC(kvt_region_destroy(r), 0);
	kvt_conn_close(c);
	kvtd_stop_clean(&d);
}

/* Tenant 4242 through uid_map: own entries only, and its own quota. */
static void mapped_client(const struct kvtd *d)
{
	kvt_conn *c = kvtd_connect(d, 30000);
	CHECK_EQ(kvt_conn_server(c)->tenant, 4242);
	kvt_region *r = kvtd_region(c, 1 * MiB);
	CHECK_RC(put_one(c, r, test_key(11, 1), 0, 100 * KiB), 0);
	CHECK_RC(put_one(c, r, test_key(11, 2), 0, 200 * KiB), KVT_EDQUOT);
	CHECK_EQ(lookup_one(c, SHARED_KEY), 0);
	CHECK_EQ(tenant_stat(c, 4242, "quota_bytes"), 128 * KiB);
	CHECK_EQ(tenant_stat(c, 4242, "blocks"), 1);
	uint64_t v;
	CHECK(!kvtd_stat_find(c, "tenant.65534.blocks", &v));
	CHECK(check_stats_scope(c, 4242) >= 2);
	CHECK_RC(kvt_region_destroy(r), 0);
	kvt_conn_close(c);
}

TEST(uid_map_assigns_the_tenant)
{
	need_root();
	struct kvtd d;
	kvtd_start(&d, "uid_map = 65534:4242\nquota = 4242:128KiB\n");
	kvt_conn *c = kvtd_connect(&d, 30000);
	kvt_region *r = kvtd_region(c, 1 * MiB);
	CHECK_RC(put_one(c, r, SHARED_KEY, 0, SHARED_LEN), 0);
	/* The quota is tenant 4242's, not root's. */
	CHECK_RC(put_one(c, r, test_key(12, 1), 0, 200 * KiB), 0);

	as_nobody(&d, mapped_client);

	CHECK_EQ(tenant_stat(c, 4242, "blocks"), 1);
	CHECK_EQ(tenant_stat(c, 4242, "bytes") >= 100 * KiB, 1);
	uint64_t v;
	CHECK(!kvtd_stat_find(c, "tenant.65534.blocks", &v));
	CHECK_EQ(lookup_one(c, test_key(11, 1)), 0);
	CHECK_RC(kvt_region_destroy(r), 0);
	kvt_conn_close(c);
	kvtd_stop_clean(&d);
}

TEST_MAIN(block_over_the_quota_is_edquot, quota_evicts_the_tenants_own_blocks_first,
	  quota_full_of_pinned_blocks_is_edquot, quota_override_for_one_tenant,
	  tenants_never_see_each_others_blocks, uid_map_assigns_the_tenant)
