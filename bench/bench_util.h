/*
 * bench_util.h - small helpers shared by the benchmarks: a monotonic clock,
 * percentiles, a description of the machine, and a text table that goes both
 * to stdout and to the -o file.
 *
 * Header-only (static inline); the process plumbing (daemon, fio) is in
 * bench_daemon.h / benchlib.c.
 */
#ifndef KVT_BENCH_UTIL_H
#define KVT_BENCH_UTIL_H

#include <errno.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/statfs.h>
#include <sys/utsname.h>
#include <time.h>
#include <unistd.h>

static inline uint64_t bench_now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static inline int bench_cmp_u64(const void *a, const void *b)
{
	uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;

	return x < y ? -1 : x > y;
}

/* q-quantile of sorted v[0..n) by the nearest-rank method (q in 0..1). */
static inline uint64_t bench_quantile(const uint64_t *v, size_t n, double q)
{
	size_t i;

	if (n == 0)
		return 0;
	i = (size_t)(q * (double)n + 0.999999);
	if (i == 0)
		i = 1;
	if (i > n)
		i = n;
	return v[i - 1];
}

/* "Intel(R) Xeon(R) ..." from /proc/cpuinfo, or "unknown". */
static inline void bench_cpu_model(char *buf, size_t cap)
{
	char line[512];
	FILE *f = fopen("/proc/cpuinfo", "r");

	snprintf(buf, cap, "unknown");
	if (!f)
		return;
	while (fgets(line, sizeof(line), f)) {
		char *colon;

		if (strncmp(line, "model name", 10) != 0)
			continue;
		colon = strchr(line, ':');
		if (!colon)
			break;
		colon++;
		while (*colon == ' ' || *colon == '\t')
			colon++;
		colon[strcspn(colon, "\n")] = '\0';
		snprintf(buf, cap, "%s", colon);
		break;
	}
	fclose(f);
}

/* Physical memory in GiB (rounded), 0 if unknown. */
static inline unsigned long bench_mem_gib(void)
{
	long pages = sysconf(_SC_PHYS_PAGES), psz = sysconf(_SC_PAGESIZE);

	if (pages <= 0 || psz <= 0)
		return 0;
	return (unsigned long)(((double)pages * (double)psz) / (1024.0 * 1024 * 1024) + 0.5);
}

/*
 * Output that goes to stdout and, when a file was given with -o, to that file
 * too, so the printed run and the saved table are the same text.
 */
struct bench_out {
	FILE *file;
};

__attribute__((format(printf, 2, 3)))
static inline void bench_printf(struct bench_out *o, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	vprintf(fmt, ap);
	va_end(ap);
	if (o->file) {
		va_start(ap, fmt);
		vfprintf(o->file, fmt, ap);
		va_end(ap);
	}
}

/* Open path for the table (NULL: stdout only). Returns 0 or -errno. */
static inline int bench_out_open(struct bench_out *o, const char *path)
{
	o->file = NULL;
	if (!path)
		return 0;
	o->file = fopen(path, "w");
	return o->file ? 0 : -errno;
}

/* Returns 0, or -EIO if the file could not be written completely. */
static inline int bench_out_close(struct bench_out *o)
{
	int rc = 0;

	fflush(stdout);
	if (o->file) {
		if (ferror(o->file))
			rc = -EIO;
		if (fclose(o->file) != 0)
			rc = -EIO;
		o->file = NULL;
	}
	return rc;
}

/* "L2 2048K, L3 491520K" from sysfs (data and unified caches of CPU 0): whether a
 * block fits in the last-level cache changes memcpy figures a lot. */
static inline void bench_print_caches(struct bench_out *o)
{
	char line[256] = "", path[128], buf[64];

	for (int i = 0; i < 8; i++) {
		const char *names[3] = { "level", "type", "size" };
		char v[3][64] = { "", "", "" }; /* level, type, size */
		size_t len;

		for (int j = 0; j < 3; j++) {
			FILE *f;

			snprintf(path, sizeof(path), "/sys/devices/system/cpu/cpu0/cache/index%d/%s",
				 i, names[j]);
			f = fopen(path, "r");
			if (!f)
				break;
			if (fgets(buf, sizeof(buf), f)) {
				buf[strcspn(buf, "\n")] = '\0';
				memcpy(v[j], buf, sizeof(v[j]));
			}
			fclose(f);
		}
		if (!v[0][0] || strcmp(v[1], "Instruction") == 0)
			continue;
		len = strlen(line);
		snprintf(line + len, sizeof(line) - len, "%sL%s %s", len ? ", " : "", v[0], v[2]);
	}
	bench_printf(o, "caches:  %s (per cache instance, CPU 0)\n", line[0] ? line : "unknown");
}

/* The load averages: other work on the machine skews every
 * figure, so the reader should know whether there was any. */
static inline void bench_print_load(struct bench_out *o)
{
	char buf[128] = "";
	FILE *f = fopen("/proc/loadavg", "r");

	if (f) {
		if (!fgets(buf, sizeof(buf), f))
			buf[0] = '\0';
		fclose(f);
	}
	buf[strcspn(buf, "\n")] = '\0';
	bench_printf(o, "load:    %s (/proc/loadavg: 1, 5, 15 min)\n", buf[0] ? buf : "unknown");
}

/* The machine block every result file starts with. */
static inline void bench_print_machine(struct bench_out *o, const char *title)
{
	char cpu[256], date[64];
	struct utsname u;
	time_t t = time(NULL);
	struct tm tm;

	bench_cpu_model(cpu, sizeof(cpu));
	if (uname(&u) != 0)
		memset(&u, 0, sizeof(u));
	gmtime_r(&t, &tm);
	strftime(date, sizeof(date), "%Y-%m-%d %H:%M:%S UTC", &tm);
	bench_printf(o, "# %s\n", title);
	bench_printf(o, "date:    %s\n", date);
	bench_printf(o, "cpu:     %s\n", cpu);
	bench_printf(o, "cores:   %ld online\n", sysconf(_SC_NPROCESSORS_ONLN));
	bench_printf(o, "memory:  %lu GiB\n", bench_mem_gib());
	bench_printf(o, "kernel:  %s %s %s\n", u.sysname, u.release, u.machine);
	bench_print_caches(o);
	bench_print_load(o);
}

/* CPU time of the whole machine from /proc/stat, to say afterwards how busy it was. */
struct bench_cpu {
	uint64_t total, idle, steal;
};

static inline void bench_cpu_snapshot(struct bench_cpu *c)
{
	unsigned long long v[8] = { 0 };
	FILE *f = fopen("/proc/stat", "r");

	memset(c, 0, sizeof(*c));
	if (!f)
		return;
	/* cpu  user nice system idle iowait irq softirq steal ... */
	if (fscanf(f, "cpu %llu %llu %llu %llu %llu %llu %llu %llu", &v[0], &v[1], &v[2], &v[3],
		   &v[4], &v[5], &v[6], &v[7]) == 8) {
		for (int i = 0; i < 8; i++)
			c->total += v[i];
		c->idle = v[3] + v[4];
		c->steal = v[7];
	}
	fclose(f);
}

/*
 * One line on what the machine did between start and now: how busy its CPUs were
 * (this benchmark and the daemon included) and how much time a hypervisor stole.
 * Latency and bandwidth figures only mean something next to it.
 */
static inline void bench_print_cpu_use(struct bench_out *o, const struct bench_cpu *start)
{
	struct bench_cpu now;
	uint64_t dt;

	bench_cpu_snapshot(&now);
	dt = now.total - start->total;
	if (!start->total || dt == 0)
		return;
	bench_printf(o, "cpu:     %.0f%% busy on average over all cores while measuring (this "
		     "benchmark and the daemon included), %.1f%% stolen by the hypervisor\n",
		     100.0 * (double)(dt - (now.idle - start->idle)) / (double)dt,
		     100.0 * (double)(now.steal - start->steal) / (double)dt);
}

/* splitmix64's mixer: a well-spread 64-bit hash of x (seeds, sketch rows, and
 * values derived from a block's hash id). */
static inline uint64_t bench_splitmix64(uint64_t x)
{
	x += 0x9e3779b97f4a7c15ull;
	x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
	x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
	return x ^ (x >> 31);
}

/* One fraction of an option such as -f "0.05,1/16": a decimal or "a/b", in (0, 1].
 * Returns 0 (the value in *v) or -EINVAL. */
static inline int bench_parse_frac(const char *tok, double *v)
{
	char *end, *slash = strchr(tok, '/');

	if (slash) {
		double a = strtod(tok, &end), b;

		if (end != slash || end == tok)
			return -EINVAL;
		b = strtod(slash + 1, &end);
		if (*end || !(b > 0))
			return -EINVAL;
		*v = a / b;
	} else {
		*v = strtod(tok, &end);
		if (*end || end == tok)
			return -EINVAL;
	}
	return *v > 0 && *v <= 1 ? 0 : -EINVAL;
}

/* xorshift64* - a fast, deterministic pattern generator for block contents. */
static inline uint64_t bench_rand64(uint64_t *s)
{
	uint64_t x = *s;

	x ^= x >> 12;
	x ^= x << 25;
	x ^= x >> 27;
	*s = x;
	return x * 0x2545f4914f6cdd1dull;
}

static inline void bench_sleep_us(unsigned us)
{
	struct timespec ts = { .tv_sec = us / 1000000, .tv_nsec = (long)(us % 1000000) * 1000 };

	while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
		;
}

/* A byte count with an optional K/M/G suffix (binary), then optionally "iB" or "B".
 * Returns 0 (the value in *out) or -EINVAL. */
static inline int bench_parse_size(const char *s, uint64_t *out)
{
	char *end;
	unsigned long long v;

	errno = 0;
	v = strtoull(s, &end, 10);
	if (errno || end == s || s[0] == '-')
		return -EINVAL;
	switch (*end) {
	case 'k': case 'K': v <<= 10; end++; break;
	case 'm': case 'M': v <<= 20; end++; break;
	case 'g': case 'G': v <<= 30; end++; break;
	default: break;
	}
	if (*end == 'i' && end[1] == 'B')
		end += 2;
	else if (*end == 'B')
		end++;
	if (*end != '\0')
		return -EINVAL;
	*out = v;
	return 0;
}

/* The filesystem dir is on, for the report. */
static inline const char *bench_fs_name(const char *dir)
{
	struct statfs s;

	if (statfs(dir, &s) != 0)
		return "unknown filesystem";
	switch ((unsigned long)s.f_type) {
	case 0xEF53: return "ext4";
	case 0x58465342: return "xfs";
	case 0x9123683E: return "btrfs";
	case 0x01021994: return "tmpfs";
	case 0x2FC12FC1: return "zfs";
	case 0x794c7630: return "overlayfs";
	default: return "other filesystem";
	}
}

/* ---- synthetic KV-like bf16 (bench_codec's generator, also bench_t2's) -------------- */

static inline float bench_unit(uint64_t *s)
{
	return (float)(bench_rand64(s) >> 40) * (1.0f / 16777216.0f);
}

/* N(0, 1) by Irwin-Hall (12 uniforms). */
static inline float bench_gauss(uint64_t *s)
{
	float a = 0;

	for (int i = 0; i < 12; i++)
		a += bench_unit(s);
	return a - 6.0f;
}

/* f rounded to nearest-even bf16. */
static inline uint16_t bench_to_bf16(float f)
{
	uint32_t u;

	memcpy(&u, &f, sizeof(u));
	u += 0x7fffu + ((u >> 16) & 1);
	return (uint16_t)(u >> 16);
}

#define BENCH_SYN_HEADS 8
#define BENCH_SYN_DIM 128

/*
 * len bytes of KV-like bf16, [tokens][8 heads][128 dims]: channel c ~ N(mu_c, sigma_c),
 * sigma_c = 0.02 * 2^U{0..5} * (1 + U[0,1)), every 16th channel an outlier x16,
 * mu_c = 0.5 sigma_c N(0,1); no token-to-token correlation. Deterministic.
 */
static inline void bench_fill_kv_bf16(uint8_t *p, size_t len)
{
	enum { CH = BENCH_SYN_HEADS * BENCH_SYN_DIM };
	static float mu[CH], sigma[CH];
	uint64_t s = 0x9e3779b97f4a7c15ull;

	for (int c = 0; c < CH; c++) {
		sigma[c] = 0.02f * (float)(1u << (bench_rand64(&s) % 6)) * (1.0f + bench_unit(&s));
		if (c % 16 == 5)
			sigma[c] *= 16.0f;
		mu[c] = 0.5f * sigma[c] * bench_gauss(&s);
	}
	for (size_t i = 0; i + 1 < len; i += 2) {
		size_t c = (i / 2) % CH;
		uint16_t v = bench_to_bf16(mu[c] + sigma[c] * bench_gauss(&s));

		p[i] = (uint8_t)v;
		p[i + 1] = (uint8_t)(v >> 8);
	}
	if (len & 1)
		p[len - 1] = 0;
}

#endif /* KVT_BENCH_UTIL_H */
