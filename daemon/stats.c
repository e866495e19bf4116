/*
 * stats.c - per-tenant counters and the STATS reply. A connection sees the
 * daemon-wide figures only if it is an administrator (root or the daemon's own
 * uid); every other tenant sees the server identity, the tier's capacity and its
 * own tenant's figures, so STATS cannot be used to learn about other tenants.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "server.h"
#include "ctxmem.h"
#include "gpu.h"
#include "tier2.h"

struct tenant_counters *tenant_counters(struct server *s, uint32_t tenant)
{
	for (size_t i = 0; i < s->ntenants; i++)
		if (s->tenants[i].tenant == tenant)
			return &s->tenants[i];
	if (s->ntenants == s->tenants_cap) {
		size_t ncap = s->tenants_cap ? s->tenants_cap * 2 : 8;
		struct tenant_counters *n = realloc(s->tenants, ncap * sizeof(*n));
		if (!n)
			return NULL; /* counters are best effort; the request goes on */
		s->tenants = n;
		s->tenants_cap = ncap;
	}
	struct tenant_counters *tc = &s->tenants[s->ntenants++];
	memset(tc, 0, sizeof(*tc));
	tc->tenant = tenant;
	return tc;
}

struct tenant_walk {
	struct kvt_stats_writer *w;
	struct server *s;
	bool all;
	uint32_t only;
	bool seen_only;
};

static void add_u64(struct kvt_stats_writer *w, const char *name, uint64_t v)
{
	/* A full reply drops the rest; the buffer is sized for thousands of tenants. */
	(void)kvt_stats_writer_u64(w, name, v);
}

static void add_tenant(struct tenant_walk *tw, uint32_t tenant, uint64_t bytes, uint64_t blocks,
		       uint64_t quota)
{
	char name[KVT_STAT_NAME_MAX];
	struct tenant_counters zero = { .tenant = tenant };
	struct tenant_counters *tc = NULL;
	for (size_t i = 0; i < tw->s->ntenants; i++)
		if (tw->s->tenants[i].tenant == tenant)
			tc = &tw->s->tenants[i];
	if (!tc)
		tc = &zero;
#define T(field, v)                                                                 \
	do {                                                                        \
		snprintf(name, sizeof(name), "tenant.%u." field, tenant);          \
		add_u64(tw->w, name, v);                                            \
	} while (0)
	T("bytes", bytes);
	T("blocks", blocks);
	T("quota_bytes", quota);
	T("hits", tc->hits);
	T("misses", tc->misses);
	T("bytes_in", tc->bytes_in);
	T("bytes_out", tc->bytes_out);
	if (gpu_t0_active(tw->s))
		T("t0_bytes", gpu_t0_tenant_bytes(tw->s, tenant));
#undef T
}

static void tenant_cb(const struct t1_tenant_stats *ts, void *arg)
{
	struct tenant_walk *tw = arg;
	if (!tw->all && ts->tenant != tw->only)
		return;
	if (ts->tenant == tw->only)
		tw->seen_only = true;
	add_tenant(tw, ts->tenant, ts->bytes, ts->blocks, ts->quota);
}

size_t stats_build(struct conn *c, uint8_t *buf, size_t cap)
{
	struct server *s = c->srv;
	struct kvt_stats_writer w;
	kvt_stats_writer_init(&w, buf, cap);

	kvt_stats_writer_text(&w, "server.version", "kvtierd " KVT_VERSION_STRING);
	add_u64(&w, "server.pid", (uint64_t)getpid());
	add_u64(&w, "server.uptime_s", (now_ms() - s->start_ms) / 1000);
	add_u64(&w, "server.workers", s->cfg->workers);
	struct t1_stats ts;
	t1_get_stats(s->t1, &ts);
	add_u64(&w, "t1.capacity_bytes", ts.capacity);
	if (c->admin) {
		gpu_stats(s, &w); /* t0.* and gpu.* */
		add_u64(&w, "conn.current", s->nconns);
		add_u64(&w, "conn.total", s->conn_total);
		add_u64(&w, "conn.rejected", s->conn_rejected);
		add_u64(&w, "requests.total", s->requests);
		add_u64(&w, "requests.errors", s->request_errors);
		add_u64(&w, "t1.used_bytes", ts.used);
		add_u64(&w, "t1.free_bytes", ts.capacity > ts.used ? ts.capacity - ts.used : 0);
		add_u64(&w, "t1.blocks", ts.blocks);
		add_u64(&w, "t1.pending", ts.pending);
		add_u64(&w, "t1.pinned_blocks", ts.pinned);
		add_u64(&w, "t1.hits", s->hits);
		add_u64(&w, "t1.misses", s->misses);
		add_u64(&w, "t1.bytes_in", s->bytes_in);
		add_u64(&w, "t1.bytes_out", s->bytes_out);
		add_u64(&w, "t1.evictions", ts.evictions);
		add_u64(&w, "t1.evicted_bytes", ts.evicted_bytes);
		add_u64(&w, "t1.evictions_nontail", ts.evict_nontail);
		add_u64(&w, "t1.retained_blocks", ts.retained_blocks);
		add_u64(&w, "t1.retained_bytes", ts.retained_bytes);
		add_u64(&w, "t1.released_blocks", ts.released_blocks);
		add_u64(&w, "t1.retain_expired", ts.retain_expired);
		add_u64(&w, "t1.retain_capped", ts.retain_capped);
		add_u64(&w, "t1.retain_evicted", ts.retain_evicted);
		add_u64(&w, "t1.alloc_failures", ts.alloc_failures);
		add_u64(&w, "t1.chunk_size", ts.chunk_size);
		add_u64(&w, "t1.extents", ts.extents);
		add_u64(&w, "t1.largest_free_run_bytes", ts.largest_free_run * ts.chunk_size);
		kvt_stats_writer_text(&w, "t1.hugepages",
				      s->t1_report.hugetlb ? "hugetlb"
				      : s->t1_report.thp   ? "thp"
							   : "none");
		add_u64(&w, "t1.mlocked", s->t1_report.locked);
		kvt_stats_writer_text(&w, "t1.policy", t1_policy_name(s->t1));
		tier2_stats(s, &w);
	}

	ctxmem_stats(c, &w);
	struct tenant_walk tw = { .w = &w, .s = s, .all = c->admin, .only = c->tenant };
	t1_foreach_tenant(s->t1, tenant_cb, &tw);
	/* A tenant with nothing stored still sees its own (zero) line. */
	if (!tw.seen_only)
		add_tenant(&tw, c->tenant, 0, 0, s->cfg->tenant_quota);
	return kvt_stats_writer_finish(&w);
}
