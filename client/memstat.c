/*
 * memstat.c - the kvtier diagnostics CLI: asks kvtierd for its STATS and shows
 * the daemon, its tiers (host RAM, NVMe), connections, per-tenant usage and saved
 * contexts and memory records, once or every N seconds with rates, as text or
 * JSON. Uses only the public API (kvtier.h).
 */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <math.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "kvtier.h"

#define PROG "memstat"
/* How long one STATS round trip may take before we call the daemon stuck. */
#define STATS_TIMEOUT_MS 5000

static volatile sig_atomic_t stop;

static void on_signal(int sig)
{
	(void)sig;
	stop = 1;
}

static void usage(FILE *f)
{
	fprintf(f,
		"Usage: " PROG " [-s SOCKET] [-w SECONDS [-n COUNT]] [--json] [-h] [-V]\n"
		"Show what kvtierd holds: its tiers, connections, per-tenant usage, saved\n"
		"contexts and memory records.\n"
		"\n"
		"  -s, --socket SOCKET   daemon socket (default: $KVTIER_SOCKET, else %s)\n"
		"  -w, --watch SECONDS   refresh every SECONDS (fractions allowed) and show\n"
		"                        rates, until interrupted\n"
		"  -n, --count COUNT     with -w, stop after COUNT samples\n"
		"  -j, --json            one JSON object per sample instead of text\n"
		"  -h, --help            this help\n"
		"  -V, --version         version\n"
		"\n"
		"Exit status: 0 on success, 1 if the daemon cannot be reached or fails,\n"
		"2 on a usage error.\n",
		KVT_DEFAULT_SOCKET);
}

/* ---- snapshot access --------------------------------------------------------------- */

static bool num(const kvt_stats *s, const char *name, uint64_t *v)
{
	return kvt_stats_find(s, name, v);
}

static const char *text(const kvt_stats *s, const char *name)
{
	size_t n = kvt_stats_count(s);

	for (size_t i = 0; i < n; i++) {
		const char *en, *t;
		uint64_t v;

		if (kvt_stats_entry(s, i, &en, &v, &t) == 0 && t && strcmp(en, name) == 0)
			return t;
	}
	return NULL;
}

static bool tenant_num(const kvt_stats *s, uint32_t id, const char *field, uint64_t *v)
{
	char name[96];

	snprintf(name, sizeof(name), "tenant.%" PRIu32 ".%s", id, field);
	return num(s, name, v);
}

/* Distinct tenant ids named by tenant.<id>.* entries, sorted. Returns the count;
 * *ids is malloc'd (NULL when there are none). */
static size_t tenant_ids(const kvt_stats *s, uint32_t **ids)
{
	size_t n = kvt_stats_count(s), count = 0;
	uint32_t *out = NULL;

	for (size_t i = 0; i < n; i++) {
		const char *name, *t;
		unsigned long id;
		char *end;
		uint64_t v;
		size_t j;

		if (kvt_stats_entry(s, i, &name, &v, &t) || strncmp(name, "tenant.", 7) != 0)
			continue;
		errno = 0;
		id = strtoul(name + 7, &end, 10);
		if (errno || end == name + 7 || *end != '.' || id > UINT32_MAX)
			continue;
		for (j = 0; j < count && out[j] != id; j++)
			;
		if (j < count)
			continue;
		if (count % 16 == 0) {
			uint32_t *nb = realloc(out, (count + 16) * sizeof(*out));

			if (!nb)
				break;
			out = nb;
		}
		/* Insertion keeps them sorted; tenant lists are short. */
		for (j = count; j > 0 && out[j - 1] > id; j--)
			out[j] = out[j - 1];
		out[j] = (uint32_t)id;
		count++;
	}
	*ids = out;
	return count;
}

/* ---- formatting ---------------------------------------------------------------------- */

static const char *fmt_size(uint64_t v, char *buf, size_t cap)
{
	static const char *const unit[] = { "KiB", "MiB", "GiB", "TiB", "PiB" };
	double d = (double)v;
	int u = -1;

	if (v < 1024) {
		snprintf(buf, cap, "%" PRIu64 " B", v);
		return buf;
	}
	while (d >= 1024 && u < 4) {
		d /= 1024;
		u++;
	}
	snprintf(buf, cap, "%.1f %s", d, unit[u]);
	return buf;
}

/* Size of a named entry, or "-" when this connection cannot see it. */
static const char *size_of(const kvt_stats *s, const char *name, char *buf, size_t cap)
{
	uint64_t v;

	if (!num(s, name, &v))
		return "-";
	return fmt_size(v, buf, cap);
}

static const char *count_of(const kvt_stats *s, const char *name, char *buf, size_t cap)
{
	uint64_t v;

	if (!num(s, name, &v))
		return "-";
	snprintf(buf, cap, "%" PRIu64, v);
	return buf;
}

static const char *pct(uint64_t part, uint64_t whole, char *buf, size_t cap)
{
	if (!whole)
		return "-";
	snprintf(buf, cap, "%.1f%%", 100.0 * (double)part / (double)whole);
	return buf;
}

static const char *fmt_uptime(uint64_t s, char *buf, size_t cap)
{
	uint64_t d = s / 86400, h = s / 3600 % 24, m = s / 60 % 60, sec = s % 60;

	if (d)
		snprintf(buf, cap, "%" PRIu64 "d %02" PRIu64 "h %02" PRIu64 "m", d, h, m);
	else if (h)
		snprintf(buf, cap, "%" PRIu64 "h %02" PRIu64 "m %02" PRIu64 "s", h, m, sec);
	else
		snprintf(buf, cap, "%" PRIu64 "m %02" PRIu64 "s", m, sec);
	return buf;
}

/* ---- rates ------------------------------------------------------------------------------ */

/* Counters kept between samples for -w. */
struct sample {
	bool valid;
	double t;        /* CLOCK_MONOTONIC seconds */
	uint64_t pid;
	uint64_t in, out, hits, misses, requests;
	uint64_t t2_read, t2_write, t2_prom, t2_dem;
	bool have_in, have_out, have_hits, have_misses, have_requests;
	bool have_t2_read, have_t2_write, have_t2_prom, have_t2_dem;
};

struct rates {
	bool valid;
	double interval;
	double in_gbps, out_gbps, hits_ps, misses_ps, requests_ps;
	double t2_read_gbps, t2_write_gbps, t2_prom_ps, t2_dem_ps;
	bool have_in, have_out, have_hits, have_misses, have_requests;
	bool have_t2_read, have_t2_write, have_t2_prom, have_t2_dem;
};

static double mono_now(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

static void sample_take(const kvt_stats *s, struct sample *x)
{
	x->valid = true;
	x->t = mono_now();
	if (!num(s, "server.pid", &x->pid))
		x->pid = 0;
	x->have_in = num(s, "t1.bytes_in", &x->in);
	x->have_out = num(s, "t1.bytes_out", &x->out);
	x->have_hits = num(s, "t1.hits", &x->hits);
	x->have_misses = num(s, "t1.misses", &x->misses);
	x->have_requests = num(s, "requests.total", &x->requests);
	x->have_t2_read = num(s, "t2.read_bytes", &x->t2_read);
	x->have_t2_write = num(s, "t2.write_bytes", &x->t2_write);
	x->have_t2_prom = num(s, "t2.promotions", &x->t2_prom);
	x->have_t2_dem = num(s, "t2.demotions", &x->t2_dem);
}

/* Rates between two samples of the same daemon (a restart resets counters). */
static void rates_compute(const struct sample *a, const struct sample *b, struct rates *r)
{
	double dt = b->t - a->t;

	memset(r, 0, sizeof(*r));
	if (!a->valid || !b->valid || dt <= 0 || a->pid != b->pid)
		return;
	r->valid = true;
	r->interval = dt;
#define RATE(field, have, dst, scale)                                                   \
	do {                                                                              \
		if (a->have && b->have && b->field >= a->field) {                        \
			r->have = true;                                                  \
			r->dst = (double)(b->field - a->field) / dt / (scale);          \
		}                                                                         \
	} while (0)
	RATE(in, have_in, in_gbps, 1e9);
	RATE(out, have_out, out_gbps, 1e9);
	RATE(hits, have_hits, hits_ps, 1);
	RATE(misses, have_misses, misses_ps, 1);
	RATE(requests, have_requests, requests_ps, 1);
	RATE(t2_read, have_t2_read, t2_read_gbps, 1e9);
	RATE(t2_write, have_t2_write, t2_write_gbps, 1e9);
	RATE(t2_prom, have_t2_prom, t2_prom_ps, 1);
	RATE(t2_dem, have_t2_dem, t2_dem_ps, 1);
#undef RATE
}

/* logical / stored, or a negative number when nothing is stored. */
static double t2_ratio(const kvt_stats *s)
{
	uint64_t logical, stored;

	if (!num(s, "t2.logical_bytes", &logical) || !num(s, "t2.stored_bytes", &stored) ||
	    !stored)
		return -1;
	return (double)logical / (double)stored;
}

/* The NVMe tier's lines of the Tiers section. */
static void print_t2(const kvt_stats *s)
{
	char b1[32], b2[32], b3[32], b4[32], b5[32];
	uint64_t v, cap = 0, used = 0;
	double ratio;
	const char *t;

	if (!num(s, "t2.active", &v)) {
		printf("  T2 NVMe       not reported (visible to root and the daemon's user"
		       " only)\n");
		return;
	}
	if (!v) {
		printf("  NVMe (T2) off\n");
		return;
	}
	num(s, "t2.capacity_bytes", &cap);
	num(s, "t2.used_bytes", &used);
	printf("  T2 NVMe       capacity %s  used %s (%s)", fmt_size(cap, b1, sizeof(b1)),
	       fmt_size(used, b2, sizeof(b2)), pct(used, cap, b3, sizeof(b3)));
	if (cap >= used)
		printf("  free %s (%s)", fmt_size(cap - used, b4, sizeof(b4)),
		       pct(cap - used, cap, b5, sizeof(b5)));
	printf("\n");
	ratio = t2_ratio(s);
	if (ratio > 0)
		snprintf(b5, sizeof(b5), "%.2fx", ratio);
	else
		snprintf(b5, sizeof(b5), "-");
	printf("                blocks %s  data %s stored in %s  compression %s\n",
	       count_of(s, "t2.blocks", b1, sizeof(b1)),
	       size_of(s, "t2.logical_bytes", b2, sizeof(b2)),
	       size_of(s, "t2.stored_bytes", b3, sizeof(b3)), b5);
	printf("                segments %s (%s free, %s cleaned, %s blocks dropped)\n",
	       count_of(s, "t2.segments_total", b1, sizeof(b1)),
	       count_of(s, "t2.segments_free", b2, sizeof(b2)),
	       count_of(s, "t2.cleaned_segments", b3, sizeof(b3)),
	       count_of(s, "t2.dropped_blocks", b4, sizeof(b4)));
	printf("                read %s (%s reads)", size_of(s, "t2.read_bytes", b1, sizeof(b1)),
	       count_of(s, "t2.reads", b2, sizeof(b2)));
	printf("  written %s (%s writes)  hits %s\n",
	       size_of(s, "t2.write_bytes", b3, sizeof(b3)),
	       count_of(s, "t2.writes", b4, sizeof(b4)), count_of(s, "t2.hits", b5, sizeof(b5)));
	printf("                promotions %s  demotions %s  demote failures %s  readahead %s\n",
	       count_of(s, "t2.promotions", b1, sizeof(b1)),
	       count_of(s, "t2.demotions", b2, sizeof(b2)),
	       count_of(s, "t2.demote_failures", b3, sizeof(b3)),
	       count_of(s, "t2.readahead", b4, sizeof(b4)));
	/* Blocks the admission rule let go: evicted from RAM, never written. */
	printf("                dropped unwritten %s  fetch failures %s\n",
	       count_of(s, "t1.dropped_unwritten", b1, sizeof(b1)),
	       count_of(s, "t2.fetch_failures", b2, sizeof(b2)));
	printf("                checksum failures %s  I/O errors %s  ENOSPC %s\n",
	       count_of(s, "t2.checksum_failures", b1, sizeof(b1)),
	       count_of(s, "t2.io_errors", b2, sizeof(b2)),
	       count_of(s, "t2.enospc", b3, sizeof(b3)));
	t = text(s, "t2.backend");
	printf("                backend %s\n", t ? t : "-");
	printf("                queue depth %s  in flight %s  staging %s  %s\n",
	       count_of(s, "t2.queue_depth", b1, sizeof(b1)),
	       count_of(s, "t2.inflight", b2, sizeof(b2)),
	       size_of(s, "t2.staging_bytes", b3, sizeof(b3)),
	       !num(s, "t2.direct_io", &v) ? "" :
	       v ? "O_DIRECT" : "buffered I/O (O_DIRECT refused)");
}

/* Saved contexts and memory records per tenant, and the metadata store's group
 * commit (admins only); nothing when the daemon reports none of it. */
static void print_ctxmem(const kvt_stats *s, const uint32_t *ids, size_t nt)
{
	uint64_t commits, writes, v;
	bool any = false, store = num(s, "meta.commits", &commits) && num(s, "meta.writes", &writes);
	char b1[32], b2[32], b3[32], b4[32];

	for (size_t i = 0; i < nt && !any; i++)
		any = tenant_num(s, ids[i], "contexts", &v) || tenant_num(s, ids[i], "records", &v);
	if (!any && !store)
		return;
	printf("\nContexts and memory records\n");
	if (any) {
		printf("  %-10s %9s %14s %11s %14s\n", "TENANT", "CONTEXTS", "CONTEXT BYTES",
		       "RECORDS", "RECORD BYTES");
		for (size_t i = 0; i < nt; i++) {
			if (!tenant_num(s, ids[i], "contexts", &v) &&
			    !tenant_num(s, ids[i], "records", &v))
				continue;
			printf("  %-10" PRIu32 " %9s %14s %11s %14s\n", ids[i],
			       tenant_num(s, ids[i], "contexts", &v) ?
				       (snprintf(b1, sizeof(b1), "%" PRIu64, v), b1) : "-",
			       tenant_num(s, ids[i], "context_bytes", &v) ?
				       fmt_size(v, b2, sizeof(b2)) : "-",
			       tenant_num(s, ids[i], "records", &v) ?
				       (snprintf(b3, sizeof(b3), "%" PRIu64, v), b3) : "-",
			       tenant_num(s, ids[i], "record_bytes", &v) ?
				       fmt_size(v, b4, sizeof(b4)) : "-");
		}
	}
	if (store) {
		/* Group commit at work: many writes share one transaction and one fsync. */
		printf("  metadata store: %" PRIu64 " writes in %" PRIu64 " commits", writes, commits);
		if (commits)
			printf(" (%.1f writes per commit)", (double)writes / (double)commits);
		printf("  fsyncs %s  expired %s\n", count_of(s, "meta.fsyncs", b1, sizeof(b1)),
		       count_of(s, "meta.expired", b2, sizeof(b2)));
		uint64_t dropped = 0, restored = 0;
		if ((num(s, "meta.refs_dropped", &dropped) && dropped) ||
		    (num(s, "meta.refs_restored", &restored) && restored))
			printf("  at start-up, block references fixed to match the manifests: %" PRIu64
			       " dropped, %" PRIu64 " restored\n", dropped, restored);
	}
}

/* ---- text output ---------------------------------------------------------------------- */

/* The GPU section: engine memory registered as GPU regions (admin entries). */
static void print_gpu(const kvt_stats *s)
{
	char b1[32], b2[32], b3[32], b4[32];
	const char *t = text(s, "gpu.backend");

	if (!t)
		return; /* not visible to this connection, or an older daemon */
	printf("\nGPU transfers   backend %s\n", t);
	if ((t = text(s, "gpu.device")))
		printf("                device %s\n", t);
	printf("                regions %s  host->device %s  device->host %s  copies in flight %s\n",
	       count_of(s, "gpu.regions", b1, sizeof(b1)),
	       size_of(s, "gpu.h2d_bytes", b2, sizeof(b2)),
	       size_of(s, "gpu.d2h_bytes", b3, sizeof(b3)),
	       count_of(s, "gpu.copies_inflight", b4, sizeof(b4)));
	uint64_t v;
	if (num(s, "t0.active", &v) && v)
		printf("                T0 hits %s  device->device %s  promotions %s  evictions %s\n",
		       count_of(s, "t0.hits", b1, sizeof(b1)),
		       size_of(s, "gpu.d2d_bytes", b2, sizeof(b2)),
		       count_of(s, "t0.promotions", b3, sizeof(b3)),
		       count_of(s, "t0.evictions", b4, sizeof(b4)));
	uint64_t qe = 0, qr = 0;
	if ((num(s, "t0.quota_evictions", &qe) && qe) || (num(s, "t0.quota_refusals", &qr) && qr))
		printf("                T0 tenant shares: %" PRIu64 " evictions of a tenant's own "
		       "blocks, %" PRIu64 " copies refused\n", qe, qr);
}

static void print_text(const char *sock, kvt_conn *c, const kvt_stats *s, const struct rates *r)
{
	const kvt_server_info *si = kvt_conn_server(c);
	char b1[32], b2[32], b3[32], b4[32], b5[32], b6[32];
	uint64_t v, cap = 0, used = 0, freeb = 0, hits = 0, misses = 0;
	bool have_cap, have_used, have_free, have_hits, have_misses;
	const char *t;
	uint32_t *ids;
	size_t nt;

	/* Daemon */
	/* The daemon's version text may or may not name the program already. */
	t = text(s, "server.version");
	printf("%s%s", t && !strncmp(t, "kvtierd", 7) ? "" : "kvtierd ", t ? t : "(version unknown)");
	if (num(s, "server.pid", &v))
		printf("  pid %" PRIu64, v);
	if (num(s, "server.uptime_s", &v))
		printf("  up %s", fmt_uptime(v, b1, sizeof(b1)));
	if (num(s, "server.workers", &v))
		printf("  workers %" PRIu64, v);
	printf("\n  socket %s  (%s, protocol v%u, this connection is tenant %" PRIu32 ")\n", sock,
	       si->server, si->version, si->tenant);

	/* Tiers */
	printf("\nTiers\n");
	/* T0 is named for what backs it (t0.memory): HBM, or emulated host memory. */
	if (num(s, "t0.active", &v) && v) {
		uint64_t zcap = 0, zused = 0;
		bool zc = num(s, "t0.capacity_bytes", &zcap), zu = num(s, "t0.used_bytes", &zused);
		printf("  T0 GPU pool   %s  capacity %s",
		       (t = text(s, "t0.memory")) ? t : "memory not reported",
		       zc ? fmt_size(zcap, b1, sizeof(b1)) : "-");
		if (zu)
			printf("  used %s (%s)", fmt_size(zused, b2, sizeof(b2)),
			       pct(zused, zcap, b3, sizeof(b3)));
		printf("  blocks %s\n", count_of(s, "t0.blocks", b4, sizeof(b4)));
	} else if (num(s, "t0.active", &v)) {
		printf("  T0 GPU pool   inactive: %s\n",
		       (t = text(s, "t0.reason")) ? t : "no reason given");
	} else {
		printf("  T0 GPU pool   not reported\n");
	}

	have_cap = num(s, "t1.capacity_bytes", &cap);
	have_used = num(s, "t1.used_bytes", &used);
	have_free = num(s, "t1.free_bytes", &freeb);
	printf("  T1 host RAM   capacity %s", have_cap ? fmt_size(cap, b1, sizeof(b1)) : "-");
	if (have_used)
		printf("  used %s (%s)", fmt_size(used, b2, sizeof(b2)),
		       pct(used, cap, b3, sizeof(b3)));
	if (have_free)
		printf("  free %s (%s)", fmt_size(freeb, b4, sizeof(b4)),
		       pct(freeb, cap, b5, sizeof(b5)));
	printf("\n");
	if (!have_used) {
		printf("                (tier details are visible to root and the daemon's user"
		       " only)\n");
	} else {
		printf("                blocks %s  pending %s  pinned %s",
		       count_of(s, "t1.blocks", b1, sizeof(b1)),
		       count_of(s, "t1.pending", b2, sizeof(b2)),
		       count_of(s, "t1.pinned_blocks", b3, sizeof(b3)));
		printf("  chunk %s  extents %s  largest free run %s\n",
		       size_of(s, "t1.chunk_size", b4, sizeof(b4)),
		       count_of(s, "t1.extents", b5, sizeof(b5)),
		       size_of(s, "t1.largest_free_run_bytes", b1, sizeof(b1)));
		have_hits = num(s, "t1.hits", &hits);
		have_misses = num(s, "t1.misses", &misses);
		printf("                hits %s  misses %s  hit ratio %s\n",
		       count_of(s, "t1.hits", b1, sizeof(b1)),
		       count_of(s, "t1.misses", b2, sizeof(b2)),
		       have_hits && have_misses ? pct(hits, hits + misses, b3, sizeof(b3)) : "-");
		printf("                in %s  out %s  evictions %s (%s",
		       size_of(s, "t1.bytes_in", b1, sizeof(b1)),
		       size_of(s, "t1.bytes_out", b2, sizeof(b2)),
		       count_of(s, "t1.evictions", b3, sizeof(b3)),
		       size_of(s, "t1.evicted_bytes", b4, sizeof(b4)));
		/* Evicting a block other blocks hang off cuts chains short: worth seeing. */
		if (num(s, "t1.evictions_nontail", &v))
			printf(", %" PRIu64 " not a chain tail", v);
		printf(")\n");
		t = text(s, "t1.hugepages");
		const char *pol = text(s, "t1.policy");
		printf("                hugepages %s  mlock %s  eviction %s\n", t ? t : "-",
		       num(s, "t1.mlocked", &v) ? (v ? "yes" : "no") : "-", pol ? pol : "-");
		/* Engine hints (HINT): what is retained or released now, and how often
		 * a retain was cut short. */
		if (num(s, "t1.retained_blocks", &v))
			printf("                hints: retained %s (%s)  released %s  expired %s"
			       "  capped %s  evicted while retained %s\n",
			       count_of(s, "t1.retained_blocks", b1, sizeof(b1)),
			       size_of(s, "t1.retained_bytes", b2, sizeof(b2)),
			       count_of(s, "t1.released_blocks", b3, sizeof(b3)),
			       count_of(s, "t1.retain_expired", b4, sizeof(b4)),
			       count_of(s, "t1.retain_capped", b5, sizeof(b5)),
			       count_of(s, "t1.retain_evicted", b6, sizeof(b6)));
	}
	print_t2(s);

	/* Connections */
	print_gpu(s);

	printf("\nConnections     current %s  total %s  rejected %s  requests %s (errors %s)\n",
	       count_of(s, "conn.current", b1, sizeof(b1)),
	       count_of(s, "conn.total", b2, sizeof(b2)),
	       count_of(s, "conn.rejected", b3, sizeof(b3)),
	       count_of(s, "requests.total", b4, sizeof(b4)),
	       count_of(s, "requests.errors", b5, sizeof(b5)));

	if (r && r->valid) {
		printf("Rates (%.1f s)  ", r->interval);
		if (r->have_in)
			printf("in %.3f GB/s  ", r->in_gbps);
		if (r->have_out)
			printf("out %.3f GB/s  ", r->out_gbps);
		if (r->have_hits)
			printf("hits %.1f/s  ", r->hits_ps);
		if (r->have_misses)
			printf("misses %.1f/s  ", r->misses_ps);
		if (r->have_requests)
			printf("requests %.1f/s", r->requests_ps);
		printf("\n");
		if (r->have_t2_read || r->have_t2_write) {
			printf("T2 rates        read %.3f GB/s  write %.3f GB/s", r->t2_read_gbps,
			       r->t2_write_gbps);
			if (r->have_t2_prom)
				printf("  promotions %.1f/s", r->t2_prom_ps);
			if (r->have_t2_dem)
				printf("  demotions %.1f/s", r->t2_dem_ps);
			printf("\n");
		}
	}

	/* Tenants */
	nt = tenant_ids(s, &ids);
	printf("\nTenants\n");
	if (!nt) {
		printf("  (none visible)\n");
	} else {
		printf("  %-10s %11s %9s %11s %11s %11s %7s %11s %11s\n", "TENANT", "BYTES",
		       "BLOCKS", "QUOTA", "HITS", "MISSES", "HIT%", "IN", "OUT");
		for (size_t i = 0; i < nt; i++) {
			char q[32], bl[32], h[32], m[32], in[32], out[32], by[32], hr[32];
			uint64_t x, hv = 0, mv = 0;
			bool hh, hm;

			hh = tenant_num(s, ids[i], "hits", &hv);
			hm = tenant_num(s, ids[i], "misses", &mv);
			printf("  %-10" PRIu32 " %11s %9s %11s %11s %11s %7s %11s %11s\n", ids[i],
			       tenant_num(s, ids[i], "bytes", &x) ? fmt_size(x, by, sizeof(by)) : "-",
			       tenant_num(s, ids[i], "blocks", &x) ?
				       (snprintf(bl, sizeof(bl), "%" PRIu64, x), bl) : "-",
			       tenant_num(s, ids[i], "quota_bytes", &x) ?
				       (x ? fmt_size(x, q, sizeof(q)) : "none") : "-",
			       hh ? (snprintf(h, sizeof(h), "%" PRIu64, hv), h) : "-",
			       hm ? (snprintf(m, sizeof(m), "%" PRIu64, mv), m) : "-",
			       hh && hm ? pct(hv, hv + mv, hr, sizeof(hr)) : "-",
			       tenant_num(s, ids[i], "bytes_in", &x) ? fmt_size(x, in, sizeof(in)) : "-",
			       tenant_num(s, ids[i], "bytes_out", &x) ? fmt_size(x, out, sizeof(out)) :
									 "-");
		}
	}
	print_ctxmem(s, ids, nt);
	free(ids);
}

/* ---- JSON output ------------------------------------------------------------------------ */

static void json_str(const char *str)
{
	putchar('"');
	for (const unsigned char *p = (const unsigned char *)str; *p; p++) {
		if (*p == '"' || *p == '\\')
			printf("\\%c", *p);
		else if (*p < 0x20)
			printf("\\u%04x", *p);
		else
			putchar(*p);
	}
	putchar('"');
}

/* Print the entries whose name starts with prefix (prefix stripped) as JSON members. */
static void json_members(const kvt_stats *s, const char *prefix)
{
	size_t n = kvt_stats_count(s), plen = strlen(prefix);
	bool first = true;

	for (size_t i = 0; i < n; i++) {
		const char *name, *t;
		uint64_t v;

		if (kvt_stats_entry(s, i, &name, &v, &t) || strncmp(name, prefix, plen) != 0)
			continue;
		printf("%s", first ? "" : ",");
		first = false;
		json_str(name + plen);
		putchar(':');
		if (t)
			json_str(t);
		else
			printf("%" PRIu64, v);
	}
}

static void json_number(double d)
{
	/* JSON has no NaN or infinity. */
	printf(isfinite(d) ? "%.6g" : "null", d);
}

static void print_json(const char *sock, kvt_conn *c, const kvt_stats *s, const struct rates *r)
{
	static const char *const groups[] = { "server", "conn", "requests", "t0", "t1", "t2",
					      "meta", "gpu" };
	const kvt_server_info *si = kvt_conn_server(c);
	size_t n = kvt_stats_count(s);
	uint32_t *ids;
	size_t nt;

	printf("{\"time\":%lld,\"socket\":", (long long)time(NULL));
	json_str(sock);
	printf(",\"connection\":{\"server\":");
	json_str(si->server);
	printf(",\"protocol\":%u,\"tenant\":%" PRIu32 "}", si->version, si->tenant);
	for (size_t g = 0; g < sizeof(groups) / sizeof(groups[0]); g++) {
		char prefix[32];

		snprintf(prefix, sizeof(prefix), "%s.", groups[g]);
		printf(",\"%s\":{", groups[g]);
		json_members(s, prefix);
		/* Derived, so a JSON reader need not divide (absent if nothing is stored). */
		if (!strcmp(groups[g], "t2") && t2_ratio(s) > 0) {
			printf(",\"compression_ratio\":");
			json_number(t2_ratio(s));
		}
		putchar('}');
	}

	/* Anything else the daemon reports, so new counters are not lost. */
	printf(",\"other\":{");
	{
		bool first = true;

		for (size_t i = 0; i < n; i++) {
			const char *name, *t;
			bool known = false;
			uint64_t v;

			if (kvt_stats_entry(s, i, &name, &v, &t))
				continue;
			for (size_t g = 0; g < sizeof(groups) / sizeof(groups[0]); g++) {
				size_t l = strlen(groups[g]);

				if (!strncmp(name, groups[g], l) && name[l] == '.')
					known = true;
			}
			if (known || !strncmp(name, "tenant.", 7))
				continue;
			printf("%s", first ? "" : ",");
			first = false;
			json_str(name);
			putchar(':');
			if (t)
				json_str(t);
			else
				printf("%" PRIu64, v);
		}
	}
	putchar('}');

	nt = tenant_ids(s, &ids);
	printf(",\"tenants\":{");
	for (size_t i = 0; i < nt; i++) {
		char prefix[48];

		snprintf(prefix, sizeof(prefix), "tenant.%" PRIu32 ".", ids[i]);
		printf("%s\"%" PRIu32 "\":{", i ? "," : "", ids[i]);
		json_members(s, prefix);
		putchar('}');
	}
	putchar('}');
	free(ids);

	if (r && r->valid) {
		printf(",\"rates\":{\"interval_s\":");
		json_number(r->interval);
		if (r->have_in) {
			printf(",\"in_gbps\":");
			json_number(r->in_gbps);
		}
		if (r->have_out) {
			printf(",\"out_gbps\":");
			json_number(r->out_gbps);
		}
		if (r->have_hits) {
			printf(",\"hits_per_s\":");
			json_number(r->hits_ps);
		}
		if (r->have_misses) {
			printf(",\"misses_per_s\":");
			json_number(r->misses_ps);
		}
		if (r->have_requests) {
			printf(",\"requests_per_s\":");
			json_number(r->requests_ps);
		}
		if (r->have_t2_read) {
			printf(",\"t2_read_gbps\":");
			json_number(r->t2_read_gbps);
		}
		if (r->have_t2_write) {
			printf(",\"t2_write_gbps\":");
			json_number(r->t2_write_gbps);
		}
		if (r->have_t2_prom) {
			printf(",\"t2_promotions_per_s\":");
			json_number(r->t2_prom_ps);
		}
		if (r->have_t2_dem) {
			printf(",\"t2_demotions_per_s\":");
			json_number(r->t2_dem_ps);
		}
		putchar('}');
	}
	printf("}\n");
}

/* ---- main ------------------------------------------------------------------------------- */

static int connect_daemon(const char *sock, kvt_conn **c)
{
	int rc = kvt_conn_open(sock, c);

	if (rc) {
		/* The library's messages speak of blocks; here the socket is what failed. */
		const char *why = rc == KVT_ENOENT ? "no such socket (is kvtierd running?)" :
				  rc == KVT_ECONNREFUSED ? "connection refused (stale socket?)" :
				  rc == KVT_EACCES ? "permission denied (socket_mode / group?)" :
						     kvt_strerror(rc);

		fprintf(stderr, PROG ": cannot reach kvtierd at %s: %s (%s)\n", sock, why,
			kvt_errname(rc));
		return rc;
	}
	kvt_conn_set_timeout(*c, STATS_TIMEOUT_MS);
	return 0;
}

/* Sleep for seconds unless a signal asks us to stop. */
static void nap(double seconds)
{
	struct timespec ts = {
		.tv_sec = (time_t)seconds,
		.tv_nsec = (long)((seconds - (double)(time_t)seconds) * 1e9),
	};

	while (!stop && nanosleep(&ts, &ts) < 0 && errno == EINTR)
		;
}

int main(int argc, char **argv)
{
	static const struct option longopts[] = {
		{ "socket", required_argument, NULL, 's' },
		{ "watch", required_argument, NULL, 'w' },
		{ "count", required_argument, NULL, 'n' },
		{ "json", no_argument, NULL, 'j' },
		{ "help", no_argument, NULL, 'h' },
		{ "version", no_argument, NULL, 'V' },
		{ NULL, 0, NULL, 0 },
	};
	const char *sock = NULL;
	bool json = false, clear;
	double interval = 0;
	unsigned long count = 0, samples = 0;
	struct sample prev = { 0 }, cur;
	struct sigaction sa;
	kvt_conn *c = NULL;
	int opt, rc, status = 0;

	while ((opt = getopt_long(argc, argv, "s:w:n:jhV", longopts, NULL)) != -1) {
		switch (opt) {
		case 's':
			sock = optarg;
			break;
		case 'w': {
			char *end;

			errno = 0;
			interval = strtod(optarg, &end);
			if (errno || end == optarg || *end || !(interval > 0) || interval > 86400) {
				fprintf(stderr, PROG ": -w wants seconds between 0 and 86400, not '%s'\n",
					optarg);
				return 2;
			}
			break;
		}
		case 'n': {
			char *end;

			errno = 0;
			count = strtoul(optarg, &end, 10);
			if (errno || end == optarg || *end || optarg[0] == '-' || count == 0 ||
			    count > 1000000000) {
				fprintf(stderr,
					PROG ": -n wants a count from 1 to 1000000000, not '%s'\n",
					optarg);
				return 2;
			}
			break;
		}
		case 'j':
			json = true;
			break;
		case 'h':
			usage(stdout);
			return 0;
		case 'V':
			printf(PROG " (kvtier) %s, libkvtier %s\n", KVT_VERSION_STRING, kvt_version());
			return 0;
		default:
			usage(stderr);
			return 2;
		}
	}
	if (count && interval <= 0) {
		fprintf(stderr, PROG ": -n counts the samples of -w; give -w too\n");
		usage(stderr);
		return 2;
	}
	if (optind < argc) {
		fprintf(stderr, PROG ": unexpected argument '%s'\n", argv[optind]);
		usage(stderr);
		return 2;
	}
	if (!sock) {
		sock = getenv("KVTIER_SOCKET");
		if (!sock || !*sock)
			sock = KVT_DEFAULT_SOCKET;
	}

	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = on_signal; /* no SA_RESTART: the sleep should end at once */
	sigaction(SIGINT, &sa, NULL);
	sigaction(SIGTERM, &sa, NULL);

	if (connect_daemon(sock, &c))
		return 1;
	clear = interval > 0 && !json && isatty(STDOUT_FILENO);

	for (;;) {
		struct rates r;
		kvt_stats *s = NULL;

		rc = kvt_stats_get(c, &s);
		if (rc && interval > 0 && !stop) {
			/* Watching outlives idle timeouts and daemon restarts: reconnect once. */
			kvt_conn_close(c);
			c = NULL;
			prev.valid = false;
			if (connect_daemon(sock, &c)) {
				status = 1;
				break;
			}
			rc = kvt_stats_get(c, &s);
		}
		if (rc) {
			fprintf(stderr, PROG ": STATS from kvtierd at %s failed: %s (%s)\n", sock,
				kvt_strerror(rc), kvt_errname(rc));
			status = 1;
			break;
		}
		sample_take(s, &cur);
		rates_compute(&prev, &cur, &r);
		prev = cur;
		if (clear)
			printf("\033[H\033[2J");
		if (json)
			print_json(sock, c, s, &r);
		else
			print_text(sock, c, s, &r);
		kvt_stats_free(s);
		if (fflush(stdout) == EOF) {
			status = 1; /* e.g. the reader of a pipe went away */
			break;
		}
		if (interval <= 0 || stop || (count && ++samples >= count))
			break;
		if (!json && !clear)
			printf("\n");
		nap(interval);
		if (stop)
			break;
	}
	kvt_conn_close(c);
	return status;
}
