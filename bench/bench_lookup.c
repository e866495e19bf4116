/*
 * bench_lookup.c - control-path benchmark: one-key LOOKUP round-trip latency and
 * batched LOOKUP throughput against a running kvtierd, beside a plain Unix
 * socketpair ping-pong measured in the same run.
 *
 * It starts nothing itself: point it at a daemon with -s or $KVTIER_SOCKET
 * (bench/run.sh starts one). It stores a chain of small blocks under a salt of
 * its own, so it does not disturb other users' keys, and leaves them there
 * (they are ordinary cache entries the daemon may evict).
 */
#include <errno.h>
#include <getopt.h>
#include <pthread.h>
#include <sched.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "kvtier.h"
#include "bench_util.h"

#define ECHO_MSG 32
#define BLOCK_TOKENS 16

struct opts {
	const char *socket;
	const char *out;
	size_t blocks;
	size_t calls;
	size_t block_bytes;
	double seconds;
};

static void usage(FILE *f)
{
	fprintf(f,
		"usage: bench_lookup [-s SOCKET] [-n BLOCKS] [-c CALLS] [-b BYTES] [-t SECONDS] [-o FILE]\n"
		"  -s SOCKET  daemon socket (default: $KVTIER_SOCKET, else %s)\n"
		"  -n BLOCKS  length of the stored chain (default 8192)\n"
		"  -c CALLS   one-key round trips timed for the latency table (default 100000)\n"
		"  -b BYTES   size of each stored block (default 4096)\n"
		"  -t SECONDS time per batched-throughput point (default 1.0)\n"
		"  -o FILE    also write the results table to FILE\n",
		KVT_DEFAULT_SOCKET);
}

static int parse_size(const char *s, size_t *out)
{
	char *end;
	unsigned long long v;

	errno = 0;
	v = strtoull(s, &end, 10);
	if (errno || end == s || *end != '\0' || v == 0)
		return -EINVAL;
	*out = (size_t)v;
	return 0;
}

/* ---- baseline: a socketpair echo thread --------------------------------------- */

static int full_io(int fd, void *buf, size_t len, bool writing)
{
	uint8_t *p = buf;

	while (len > 0) {
		ssize_t n = writing ? write(fd, p, len) : read(fd, p, len);

		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			return n == 0 ? -EPIPE : -errno;
		p += n;
		len -= (size_t)n;
	}
	return 0;
}

static void *echo_main(void *arg)
{
	int fd = *(int *)arg;
	uint8_t buf[ECHO_MSG];

	/* Stops when the benchmark closes its end (read returns 0). */
	while (full_io(fd, buf, sizeof(buf), false) == 0)
		if (full_io(fd, buf, sizeof(buf), true) != 0)
			break;
	return NULL;
}

static int pin_attr(pthread_attr_t *attr, int cpu)
{
	cpu_set_t set;

	CPU_ZERO(&set);
	CPU_SET(cpu, &set);
	return pthread_attr_setaffinity_np(attr, sizeof(set), &set);
}

/*
 * Time n echo round trips of ECHO_MSG bytes, one at a time, into lat[], with this
 * thread on CPU cpu_main and the echo thread on CPU cpu_echo. Placement matters:
 * on one CPU a round trip is two context switches; across two CPUs each direction
 * is a cross-CPU wake-up, which in a virtual machine with idle vCPUs can cost tens
 * of microseconds. Both are shown, since the scheduler places the daemon.
 */
static int bench_socketpair(uint64_t *lat, size_t n, size_t warmup, int cpu_main, int cpu_echo)
{
	int sv[2], rc = 0;
	pthread_t th;
	pthread_attr_t attr;
	cpu_set_t saved, set;
	uint8_t msg[ECHO_MSG];

	if (pthread_getaffinity_np(pthread_self(), sizeof(saved), &saved) != 0)
		return -EINVAL;
	CPU_ZERO(&set);
	CPU_SET(cpu_main, &set);
	if (pthread_setaffinity_np(pthread_self(), sizeof(set), &set) != 0)
		return -EINVAL;
	if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) != 0) {
		rc = -errno;
		goto out_affinity;
	}
	rc = pthread_attr_init(&attr);
	if (rc == 0) {
		rc = pin_attr(&attr, cpu_echo);
		if (rc == 0)
			rc = pthread_create(&th, &attr, echo_main, &sv[1]);
		pthread_attr_destroy(&attr);
	}
	if (rc != 0) {
		rc = -rc;
		goto out_close;
	}
	memset(msg, 0xa5, sizeof(msg));
	for (size_t i = 0; i < warmup + n; i++) {
		uint64_t t0 = bench_now_ns();

		rc = full_io(sv[0], msg, sizeof(msg), true);
		if (rc == 0)
			rc = full_io(sv[0], msg, sizeof(msg), false);
		if (rc != 0)
			break;
		if (i >= warmup)
			lat[i - warmup] = bench_now_ns() - t0;
	}
	shutdown(sv[0], SHUT_RDWR);
	pthread_join(th, NULL);
out_close:
	close(sv[0]);
	close(sv[1]);
out_affinity:
	pthread_setaffinity_np(pthread_self(), sizeof(saved), &saved);
	return rc;
}

/* The first two CPUs this process may run on (*second = -1 if there is one). */
static void pick_cpus(int *first, int *second)
{
	cpu_set_t set;

	*first = 0;
	*second = -1;
	if (sched_getaffinity(0, sizeof(set), &set) != 0)
		return;
	*first = -1;
	for (int i = 0; i < CPU_SETSIZE; i++) {
		if (!CPU_ISSET(i, &set))
			continue;
		if (*first < 0) {
			*first = i;
		} else {
			*second = i;
			break;
		}
	}
	if (*first < 0)
		*first = 0;
}

/* ---- the daemon ---------------------------------------------------------------- */

static int store_chain(kvt_conn *c, const kvt_region *r, const kvt_key *keys, size_t n,
		       size_t block_bytes, size_t max_batch)
{
	kvt_put_item *items = calloc(max_batch, sizeof(*items));
	int rc = 0;

	if (!items)
		return -ENOMEM;
	for (size_t i = 0; i < n && rc == 0; i += max_batch) {
		size_t m = n - i < max_batch ? n - i : max_batch;

		memset(items, 0, m * sizeof(*items));
		for (size_t j = 0; j < m; j++) {
			items[j].key = keys[i + j];
			if (i + j > 0)
				items[j].parent = keys[i + j - 1];
			items[j].region = r;
			items[j].offset = 0;
			items[j].length = block_bytes;
			items[j].desc.dtype = KVT_DTYPE_BF16;
			items[j].desc.layers = 1;
			items[j].desc.tokens = BLOCK_TOKENS;
		}
		rc = kvt_block_put(c, items, m);
		if (rc == KVT_EPARTIAL) {
			for (size_t j = 0; j < m; j++) {
				if (items[j].status != 0) {
					fprintf(stderr, "bench_lookup: PUT of block %zu: %s\n", i + j,
						kvt_strerror(items[j].status));
					break;
				}
			}
		}
	}
	free(items);
	return rc;
}

struct lat_row {
	const char *what;
	uint64_t p50, p90, p99, p999, max;
	double mean;
};

static void summarize(struct lat_row *row, const char *what, uint64_t *lat, size_t n)
{
	double sum = 0;

	qsort(lat, n, sizeof(*lat), bench_cmp_u64);
	for (size_t i = 0; i < n; i++)
		sum += (double)lat[i];
	row->what = what;
	row->p50 = bench_quantile(lat, n, 0.50);
	row->p90 = bench_quantile(lat, n, 0.90);
	row->p99 = bench_quantile(lat, n, 0.99);
	row->p999 = bench_quantile(lat, n, 0.999);
	row->max = n ? lat[n - 1] : 0;
	row->mean = n ? sum / (double)n : 0;
}

static double us(uint64_t ns)
{
	return (double)ns / 1000.0;
}

int main(int argc, char **argv)
{
	struct opts o = {
		.blocks = 8192, .calls = 100000, .block_bytes = 4096, .seconds = 1.0,
	};
	static const size_t batches[] = { 1, 16, 256, 4096 };
	kvt_salt_params sp = {
		.model_id = "kvtier-bench/lookup",
		.weights_version = "bench",
		.kv_dtype = "bf16",
		.layout = "bench",
		.block_tokens = BLOCK_TOKENS,
	};
	struct bench_out out;
	struct bench_cpu cpu0;
	struct lat_row rows[4];
	int cpu_a, cpu_b;
	const kvt_server_info *si;
	kvt_conn *c = NULL;
	kvt_region *r = NULL;
	kvt_key salt, *keys = NULL;
	uint64_t *lat = NULL;
	uint8_t *tiers = NULL;
	size_t warmup, max_batch, found;
	double best_kps = 0, kps1 = 0;
	int opt, rc, ret = 1;

	while ((opt = getopt(argc, argv, "s:n:c:b:t:o:h")) != -1) {
		switch (opt) {
		case 's': o.socket = optarg; break;
		case 'o': o.out = optarg; break;
		case 'n':
			if (parse_size(optarg, &o.blocks))
				goto bad_arg;
			break;
		case 'c':
			if (parse_size(optarg, &o.calls))
				goto bad_arg;
			break;
		case 'b':
			if (parse_size(optarg, &o.block_bytes))
				goto bad_arg;
			break;
		case 't':
			o.seconds = strtod(optarg, NULL);
			if (!(o.seconds > 0))
				goto bad_arg;
			break;
		case 'h':
			usage(stdout);
			return 0;
		default:
			usage(stderr);
			return 2;
		}
	}
	if (optind != argc)
		goto bad_arg;
	warmup = o.calls / 10 < 1000 ? o.calls / 10 : 1000;

	rc = kvt_conn_open(o.socket, &c);
	if (rc) {
		fprintf(stderr, "bench_lookup: cannot connect to %s: %s\n",
			o.socket ? o.socket : "$KVTIER_SOCKET/default socket", kvt_strerror(rc));
		return 1;
	}
	si = kvt_conn_server(c);
	max_batch = si->max_batch;

	keys = calloc(o.blocks, sizeof(*keys));
	lat = calloc(o.calls, sizeof(*lat));
	tiers = calloc(max_batch > o.blocks ? max_batch : o.blocks, 1);
	if (!keys || !lat || !tiers) {
		fprintf(stderr, "bench_lookup: out of memory\n");
		goto out;
	}
	if (bench_out_open(&out, o.out) != 0) {
		fprintf(stderr, "bench_lookup: cannot write %s: %s\n", o.out, strerror(errno));
		goto out;
	}

	/* The chain: key(i) = H(salt, key(i-1), tokens of block i), as an engine does. */
	rc = kvt_key_salt(&sp, &salt);
	if (rc) {
		fprintf(stderr, "bench_lookup: kvt_key_salt: %s\n", kvt_strerror(rc));
		goto out_file;
	}
	for (size_t i = 0; i < o.blocks; i++) {
		uint32_t tok[BLOCK_TOKENS];

		for (size_t j = 0; j < BLOCK_TOKENS; j++)
			tok[j] = (uint32_t)(i * BLOCK_TOKENS + j);
		kvt_key_chain(&salt, i ? &keys[i - 1] : NULL, tok, BLOCK_TOKENS, &keys[i]);
	}

	rc = kvt_region_create(c, o.block_bytes, &r);
	if (rc) {
		fprintf(stderr, "bench_lookup: region of %zu bytes: %s\n", o.block_bytes,
			kvt_strerror(rc));
		goto out_file;
	}
	memset(kvt_region_base(r), 0x5a, o.block_bytes);
	rc = store_chain(c, r, keys, o.blocks, o.block_bytes, max_batch);
	if (rc) {
		fprintf(stderr, "bench_lookup: storing the chain: %s\n", kvt_strerror(rc));
		goto out_file;
	}
	/* The whole chain must be there, or every figure below measures misses. */
	for (size_t i = 0; i < o.blocks; i += max_batch) {
		size_t m = o.blocks - i < max_batch ? o.blocks - i : max_batch;

		rc = kvt_block_lookup(c, keys + i, m, &found, tiers);
		if (rc || found != m) {
			fprintf(stderr, "bench_lookup: chain not resident after PUT (%s, %zu of %zu)\n",
				rc ? kvt_strerror(rc) : "partial", rc ? 0 : found, m);
			goto out_file;
		}
	}

	bench_print_machine(&out, "bench_lookup: LOOKUP round trip and batched throughput");
	bench_printf(&out, "daemon:  %s (protocol %u, max_batch %u, tenant %u)\n", si->server,
		     si->version, si->max_batch, si->tenant);
	bench_printf(&out, "params:  chain of %zu blocks x %zu B, %zu timed calls per latency row "
		     "(+%zu warm-up), %.1f s per throughput point, clock_gettime(MONOTONIC)\n\n",
		     o.blocks, o.block_bytes, o.calls, warmup, o.seconds);

	bench_cpu_snapshot(&cpu0);
	/* Baselines first: what a round trip over a Unix socket costs by itself. */
	pick_cpus(&cpu_a, &cpu_b);
	rc = bench_socketpair(lat, o.calls, warmup, cpu_a, cpu_a);
	if (rc) {
		fprintf(stderr, "bench_lookup: socketpair baseline: %s\n", strerror(-rc));
		goto out_file;
	}
	summarize(&rows[0], "socketpair echo 32 B, 1 CPU", lat, o.calls);
	if (cpu_b >= 0) {
		rc = bench_socketpair(lat, o.calls, warmup, cpu_a, cpu_b);
		if (rc) {
			fprintf(stderr, "bench_lookup: socketpair baseline: %s\n", strerror(-rc));
			goto out_file;
		}
		summarize(&rows[1], "socketpair echo 32 B, 2 CPUs", lat, o.calls);
	} else {
		memset(&rows[1], 0, sizeof(rows[1]));
	}

	for (size_t i = 0; i < warmup + o.calls; i++) {
		uint64_t t0 = bench_now_ns();

		rc = kvt_ping(c);
		if (rc) {
			fprintf(stderr, "bench_lookup: PING: %s\n", kvt_strerror(rc));
			goto out_file;
		}
		if (i >= warmup)
			lat[i - warmup] = bench_now_ns() - t0;
	}
	summarize(&rows[2], "kvtierd PING", lat, o.calls);

	for (size_t i = 0; i < warmup + o.calls; i++) {
		const kvt_key *k = &keys[(i * 7919) % o.blocks]; /* wander over the index */
		uint64_t t0 = bench_now_ns();

		rc = kvt_block_lookup(c, k, 1, &found, tiers);
		if (rc || found != 1) {
			fprintf(stderr, "bench_lookup: LOOKUP of a stored key: %s\n",
				rc ? kvt_strerror(rc) : "miss");
			goto out_file;
		}
		if (i >= warmup)
			lat[i - warmup] = bench_now_ns() - t0;
	}
	summarize(&rows[3], "kvtierd LOOKUP, 1 key (hit)", lat, o.calls);

	bench_printf(&out, "## one request at a time: round-trip latency (microseconds)\n");
	bench_printf(&out, "%-34s %9s %9s %9s %9s %9s %9s\n", "what", "p50", "p90", "p99",
		     "p99.9", "max", "mean");
	for (size_t i = 0; i < 4; i++) {
		if (!rows[i].what) {
			bench_printf(&out, "%-34s %9s   (only one CPU available)\n",
				     "socketpair echo 32 B, 2 CPUs", "-");
			continue;
		}
		bench_printf(&out, "%-34s %9.2f %9.2f %9.2f %9.2f %9.1f %9.2f\n", rows[i].what,
			     us(rows[i].p50), us(rows[i].p90), us(rows[i].p99), us(rows[i].p999),
			     us(rows[i].max), rows[i].mean / 1000.0);
	}
	bench_printf(&out, "LOOKUP p50 / echo p50: %.2fx (1 CPU), ",
		     (double)rows[3].p50 / (double)(rows[0].p50 ? rows[0].p50 : 1));
	if (rows[1].what)
		bench_printf(&out, "%.2fx (2 CPUs); ",
			     (double)rows[3].p50 / (double)(rows[1].p50 ? rows[1].p50 : 1));
	bench_printf(&out, "LOOKUP p50 / PING p50: %.2fx\n",
		     (double)rows[3].p50 / (double)(rows[2].p50 ? rows[2].p50 : 1));
	bench_printf(&out, "(the echo rows are both placements of a plain Unix-socket round trip; "
		     "the scheduler places kvtierd,\n so its round trips land near one or the "
		     "other, and PING is the daemon's round trip with no work)\n\n");

	bench_printf(&out, "## batched LOOKUP of a resident chain prefix (one request at a time)\n");
	bench_printf(&out, "%6s %10s %14s %12s %16s\n", "batch", "calls", "keys/s", "us/call",
		     "keys/s vs 1 key");
	for (size_t b = 0; b < sizeof(batches) / sizeof(batches[0]); b++) {
		size_t bs = batches[b], calls = 0, span;
		uint64_t t0, dt, limit = (uint64_t)(o.seconds * 1e9);
		double kps;

		if (bs > max_batch || bs > o.blocks) {
			bench_printf(&out, "%6zu   skipped: above %s (%zu)\n", bs,
				     bs > max_batch ? "the daemon's max_batch" : "the chain length",
				     bs > max_batch ? max_batch : o.blocks);
			continue;
		}
		span = o.blocks - bs + 1;
		for (size_t i = 0; i < 50; i++) { /* warm up */
			rc = kvt_block_lookup(c, keys + (i * 131) % span, bs, &found, tiers);
			if (rc || found != bs)
				goto lookup_failed;
		}
		t0 = bench_now_ns();
		do {
			for (size_t i = 0; i < 16; i++, calls++) {
				rc = kvt_block_lookup(c, keys + (calls * 131) % span, bs, &found,
						      tiers);
				if (rc || found != bs)
					goto lookup_failed;
			}
			dt = bench_now_ns() - t0;
		} while (dt < limit);
		kps = (double)(calls * bs) / ((double)dt / 1e9);
		if (kps > best_kps)
			best_kps = kps;
		if (bs == 1)
			kps1 = kps;
		bench_printf(&out, "%6zu %10zu %14.0f %12.2f %15.1fx\n", bs, calls, kps,
			     (double)dt / 1000.0 / (double)calls, kps1 > 0 ? kps / kps1 : 0);
		continue;
lookup_failed:
		fprintf(stderr, "bench_lookup: batched LOOKUP of %zu keys: %s (found %zu)\n", bs,
			rc ? kvt_strerror(rc) : "short", rc ? 0 : found);
		goto out_file;
	}

	bench_printf(&out, "\ngoals (DESIGN.md): one-key LOOKUP round trip in microseconds (< 100 us): "
		     "p50 %.1f us -> %s\n"
		     "                   batched LOOKUP at millions of keys/s: best %.2f M keys/s "
		     "-> %s\n",
		     us(rows[3].p50), rows[3].p50 < 100000 ? "met" : "NOT met", best_kps / 1e6,
		     best_kps >= 1e6 ? "met" : "NOT met");
	bench_print_cpu_use(&out, &cpu0);
	ret = 0;

out_file:
	if (bench_out_close(&out) != 0 && ret == 0) {
		fprintf(stderr, "bench_lookup: writing %s failed\n", o.out);
		ret = 1;
	}
out:
	kvt_region_destroy(r);
	kvt_conn_close(c);
	free(tiers);
	free(lat);
	free(keys);
	return ret;

bad_arg:
	usage(stderr);
	return 2;
}
