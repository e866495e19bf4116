/*
 * config.c - kvtierd's configuration: one table of keys drives the embedded
 * default text, the key = value parser, validation in config_finish and
 * config_print, so a key cannot be known to one of them and missing from another.
 */
#include "config.h"

#include <assert.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/un.h>
#include <unistd.h>

#define SZ_KIB (UINT64_C(1) << 10)
#define SZ_MIB (UINT64_C(1) << 20)
#define SZ_GIB (UINT64_C(1) << 30)

#define MS_PER_S UINT64_C(1000)
#define MS_PER_M (60 * MS_PER_S)
#define MS_PER_H (60 * MS_PER_M)

/* Timeouts stay below 2^31 ms so the daemon can hand any of them to poll-style
 * APIs that take an int; 576h (24 days) is the largest whole number of hours. */
#define DURATION_MAX_MS (576 * MS_PER_H)

/* A configuration file is a handful of lines; anything this big is a mistake
 * (the wrong file), and reading it whole must not cost unbounded memory. */
#define CONFIG_FILE_MAX (1u << 20)

/* Auto host_capacity: 1/8 of RAM within these bounds. */
#define AUTO_CAPACITY_MIN (64 * SZ_MIB)
#define AUTO_CAPACITY_MAX (8 * SZ_GIB)
#define AUTO_WORKERS_MIN 2
#define AUTO_WORKERS_MAX 16

static_assert(sizeof(((struct kvtd_config *)0)->socket_path) ==
		      sizeof(((struct sockaddr_un *)0)->sun_path),
	      "socket_path must be exactly as large as sun_path");

enum key_kind {
	KK_PATH,     /* char array, NUL-terminated, non-empty */
	KK_MODE,     /* uint32_t, octal permission bits */
	KK_SIZE,     /* uint32_t/uint64_t, bytes with binary suffixes */
	KK_COUNT,    /* uint32_t, plain decimal */
	KK_DURATION, /* uint64_t, milliseconds */
	KK_TRISTATE, /* enum t1_mode */
	KK_LOGLEVEL, /* enum log_level */
	KK_ENUM,     /* uint32_t; names in enum_tables[key min] */
	KK_QUOTA,    /* repeatable TENANT:SIZE */
	KK_UIDMAP,   /* repeatable UID:TENANT */
};

/* KK_ENUM keys name their table of value names with these (in the key's min). */
enum { ENUM_CODEC, ENUM_ADMISSION, ENUM_WRITE, ENUM_IO, ENUM_POLICY, ENUM_GPU };

#define KF_AUTO 1u /* "auto" is accepted and stored as 0 until config_finish */
#define KF_POW2 2u

struct key_def {
	const char *name;
	enum key_kind kind;
	size_t off, size; /* the field in struct kvtd_config */
	uint64_t min, max;
	unsigned flags;
	const char *help;
};

/*
 * X(name, kind, field, min, max, flags, prefix, default, help).
 * prefix is "" for a key with a default, "# " for the repeatable keys, whose
 * default line is a commented-out example. config_defaults() repeats the
 * defaults as C values on purpose: the test that both agree then means something.
 */
#define CONFIG_KEYS(X)                                                                            \
	X(socket, KK_PATH, socket_path, 0, 0, 0, "", "run/kvtierd.sock",                          \
	  "Unix socket clients connect to; relative to the working directory if not absolute.")   \
	X(socket_mode, KK_MODE, socket_mode, 0, 0777, 0, "", "0660",                              \
	  "Permission bits of the socket (octal); a client needs write permission.")              \
	X(data_dir, KK_PATH, data_dir, 0, 0, 0, "", "run/data",                                   \
	  "Directory for on-disk data, created at start; relative like socket.")                  \
	X(host_capacity, KK_SIZE, host_capacity, SZ_MIB, UINT64_MAX, KF_AUTO, "", "auto",         \
	  "Size of the host-RAM tier; auto = 1/8 of physical RAM, within 64MiB..8GiB.")           \
	X(host_chunk, KK_SIZE, host_chunk, 4 * SZ_KIB, 64 * SZ_MIB, KF_POW2, "", "64KiB",         \
	  "Allocation unit of the host tier: a power of two from 4KiB to 64MiB.")                 \
	X(host_hugepages, KK_TRISTATE, host_hugepages, 0, 0, 0, "", "auto",                       \
	  "Huge pages for the host tier: on (required), off, auto (try, else fall back).")        \
	X(host_mlock, KK_TRISTATE, host_mlock, 0, 0, 0, "", "auto",                               \
	  "Lock the host tier in RAM: on (required), off, auto (if RLIMIT_MEMLOCK allows).")      \
	X(host_policy, KK_ENUM, host_policy, ENUM_POLICY, 0, 0, "", "2q",                          \
	  "Host-tier eviction: 2q (blocks seen once go before blocks seen again) or lru.")        \
	X(host_retain_share, KK_COUNT, host_retain_share, 0, 100, 0, "", "90",                    \
	  "Most of the host tier, in percent, that blocks a client retains (HINT) may hold.")     \
	X(tenant_quota, KK_SIZE, tenant_quota, 0, UINT64_MAX, 0, "", "0",                         \
	  "Most bytes one tenant may hold in the host tier; 0 = no limit.")                       \
	X(quota, KK_QUOTA, quotas, 0, 0, 0, "# ", "1000:8GiB",                                    \
	  "Per-tenant override of tenant_quota, TENANT:SIZE; repeat for more tenants.")           \
	X(uid_map, KK_UIDMAP, uid_maps, 0, 0, 0, "# ", "1000:1",                                  \
	  "Serve client uid UID as tenant TENANT (else tenant = uid); repeatable.")               \
	X(max_connections, KK_COUNT, max_connections, 1, 1048576, 0, "", "256",                   \
	  "Most client connections at once; more are refused (ECONNLIMIT).")                      \
	X(max_frame, KK_SIZE, max_frame, 4 * SZ_KIB, 64 * SZ_MIB, 0, "", "4MiB",                  \
	  "Largest frame, header included, a client may send; larger ends the connection.")       \
	X(max_inflight, KK_COUNT, max_inflight, 1, 65536, 0, "", "64",                            \
	  "Most unanswered requests per connection; more are answered EINFLIGHT.")                \
	X(max_batch, KK_COUNT, max_batch, 1, 1048576, 0, "", "4096",                              \
	  "Most items in one batch request (PUT, GET, LOOKUP, ...); more: E2BIG.")                \
	X(max_regions, KK_COUNT, max_regions, 1, 65536, 0, "", "64",                              \
	  "Most shared-memory regions registered per connection; more: EMFILE.")                  \
	X(max_region_size, KK_SIZE, max_region_size, 1, UINT64_MAX, 0, "", "64GiB",               \
	  "Largest shared-memory region a client may register; larger: EMSGSIZE.")                \
	X(max_block_size, KK_SIZE, max_block_size, 1, UINT64_MAX, 0, "", "1GiB",                  \
	  "Largest block a client may PUT; larger: EFBIG.")                                       \
	X(idle_timeout, KK_DURATION, idle_timeout_ms, 0, DURATION_MAX_MS, 0, "", "10m",           \
	  "Close a connection idle this long with nothing in flight; 0 = never.")                 \
	X(handshake_timeout, KK_DURATION, handshake_timeout_ms, 0, DURATION_MAX_MS, 0, "", "5s",  \
	  "Close a connection that has not sent HELLO after this long; 0 = never.")               \
	X(frame_timeout, KK_DURATION, frame_timeout_ms, 0, DURATION_MAX_MS, 0, "", "10s",         \
	  "Close a connection whose partly received frame is this old; 0 = never.")               \
	X(workers, KK_COUNT, workers, 1, 256, KF_AUTO, "", "auto",                                \
	  "Copy threads, 1 to 256; auto = online CPUs, at least 2, at most 16.")                  \
	X(log_level, KK_LOGLEVEL, log_level, 0, 0, 0, "", "info",                                 \
	  "Least severe messages logged to stderr: error, warn, info or debug.")                  \
	X(nvme_capacity, KK_SIZE, nvme_capacity, 0, UINT64_MAX, 0, "", "8GiB",                    \
	  "Size of the NVMe tier (segment files under data_dir); 0 = no NVMe tier.")               \
	X(nvme_segment_size, KK_SIZE, nvme_segment_size, 64 * SZ_MIB, 64 * SZ_GIB, 0, "", "1GiB",  \
	  "Size of one segment file; space is reclaimed a segment at a time.")                    \
	X(nvme_codec, KK_ENUM, nvme_codec, ENUM_CODEC, 0, 0, "", "bf16",                           \
	  "Compression on NVMe: raw, zstd, or bf16 (byte split + zstd for bf16 blocks, zstd else).") \
	X(nvme_zstd_level, KK_COUNT, nvme_zstd_level, 1, 19, 0, "", "1",                          \
	  "zstd level for the NVMe tier, 1 to 19 (1 measures best for bf16 KV).")                 \
	X(nvme_admission, KK_ENUM, nvme_admission, ENUM_ADMISSION, 0, 0, "", "chain",            \
	  "Which evicted blocks go to NVMe: always, chain (read since written, or followed by a " \
	  "later block of its chain), reused (read since written).")                              \
	X(nvme_write, KK_ENUM, nvme_write, ENUM_WRITE, 0, 0, "", "back",                          \
	  "back: write cold blocks ahead of eviction; through: write every block once stored.")  \
	X(nvme_free_target, KK_COUNT, nvme_free_target, 1, 90, 0, "", "10",                       \
	  "Percent of the host tier kept free or already on NVMe by writing cold blocks early.")  \
	X(nvme_staging, KK_SIZE, nvme_staging, SZ_MIB, UINT64_MAX, 0, "", "256MiB",               \
	  "Buffer memory for NVMe reads and writes in flight; more wait their turn.")             \
	X(nvme_write_window, KK_SIZE, nvme_write_window, 64 * SZ_MIB, UINT64_MAX, 0, "", "1GiB",  \
	  "NVMe writes in flight that need no buffer (raw records straight from RAM).")         \
	X(nvme_commit_interval, KK_DURATION, nvme_commit_interval_ms, 0, DURATION_MAX_MS, 0, "",  \
	  "0", "Longest a written block waits for its group commit; 0 = as soon as possible.")    \
	X(readahead, KK_COUNT, readahead, 0, 1024, 0, "", "4",                                    \
	  "Blocks fetched ahead from NVMe when a chain is read in order; 0 = none.")              \
	X(io_backend, KK_ENUM, io_backend, ENUM_IO, 0, 0, "", "auto",                             \
	  "NVMe I/O: auto (io_uring, else a thread pool), uring, or threads.")                    \
	X(io_queue_depth, KK_COUNT, io_queue_depth, 1, 4096, 0, "", "64",                         \
	  "NVMe requests in flight at once.")                                                     \
	X(mem_value_max, KK_SIZE, mem_value_max, 1, 64 * SZ_MIB, 0, "", "1MiB",                    \
	  "Largest value of a memory record (MEM_PUT); larger: EMSGSIZE.")                        \
	X(gpu_backend, KK_ENUM, gpu_backend, ENUM_GPU, 0, 0, "", "auto",                          \
	  "GPU transfers into engine memory: auto (cuda if built in and a device answers, else " \
	  "off), cuda, emulated (host memory, for tests), off.")                                  \
	X(gpu_max_regions, KK_COUNT, gpu_max_regions, 1, 65536, 0, "", "16",                      \
	  "Most GPU regions registered per connection; more: EMFILE.")                            \
	X(gpu_max_pages, KK_COUNT, gpu_max_pages, 1, 16777216, 0, "", "262144",                   \
	  "Most page ids in one GPU_PUT or GPU_GET request; more: E2BIG.")                        \
	X(gpu_pool_size, KK_SIZE, gpu_pool_size, 0, UINT64_MAX, 0, "", "0",                       \
	  "GPU tier (T0): GPU memory the daemon keeps for the hottest blocks; 0 = no T0. "       \
	  "Needs a GPU backend (gpu_backend).")

#define EMBED_LINE_(name, kind, field, lo, hi, fl, prefix, def, help) \
	"\n# " help "\n" prefix #name " = " def "\n"

const char config_embedded_default[] =
	"# kvtierd configuration: one \"key = value\" per line; '#' starts a comment line.\n"
	"# Sizes: 4096, 64KiB, 1MiB, 8GiB, 1TiB (K, M, G, T mean the same powers of 1024).\n"
	"# Durations: 500ms, 10s, 5m, 1h; a plain number is seconds. See kvtierd.conf(5).\n"
	CONFIG_KEYS(EMBED_LINE_);

#define FIELD_SIZE_(field) sizeof(((struct kvtd_config *)0)->field)
#define KEY_ROW_(name_, kind_, field, lo, hi, fl, prefix, def, help_)                     \
	{ .name = #name_, .kind = kind_, .off = offsetof(struct kvtd_config, field),       \
	  .size = FIELD_SIZE_(field), .min = lo, .max = hi, .flags = fl, .help = help_ },

static const struct key_def keys[] = { CONFIG_KEYS(KEY_ROW_) };
#define NKEYS (sizeof(keys) / sizeof(keys[0]))

/* Names of the KK_ENUM keys' values, indexed by the value; a key's min selects its
 * table. The orders match enum codec_id, enum nvme_admission, enum io_backend. */
static const char *const enum_codec[] = { "raw", "zstd", "bf16" };
static const char *const enum_admission[] = { "always", "chain", "reused" };
static const char *const enum_write[] = { "back", "through" };
static const char *const enum_io[] = { "auto", "uring", "threads" };
static const char *const enum_policy[] = { "2q", "lru" }; /* enum t1_policy */
static const char *const enum_gpu[] = { "auto", "cuda", "emulated", "off" }; /* gpu.h */
static const struct {
	const char *const *names;
	size_t n;
	const char *list;
} enum_tables[] = {
	[ENUM_CODEC] = { enum_codec, 3, "raw, zstd or bf16" },
	[ENUM_ADMISSION] = { enum_admission, 3, "always, chain or reused" },
	[ENUM_WRITE] = { enum_write, 2, "back or through" },
	[ENUM_IO] = { enum_io, 3, "auto, uring or threads" },
	[ENUM_POLICY] = { enum_policy, 2, "2q or lru" },
	[ENUM_GPU] = { enum_gpu, 4, "auto, cuda, emulated or off" },
};

static const char *enum_name(const struct key_def *k, uint64_t v)
{
	return v < enum_tables[k->min].n ? enum_tables[k->min].names[v] : "invalid";
}

/* Indexed by enum t1_mode / enum log_level. */
static const char *const tristate_names[] = { [T1_OFF] = "off", [T1_ON] = "on",
					       [T1_AUTO] = "auto" };
static const char *const level_names[] = { [LOG_ERROR] = "error", [LOG_WARN] = "warn",
					    [LOG_INFO] = "info", [LOG_DEBUG] = "debug" };

void config_defaults(struct kvtd_config *c)
{
	memset(c, 0, sizeof(*c));
	strcpy(c->socket_path, "run/kvtierd.sock");
	c->socket_mode = 0660;
	strcpy(c->data_dir, "run/data");
	c->host_capacity = 0; /* auto */
	c->host_chunk = 64 << 10;
	c->host_hugepages = T1_AUTO;
	c->host_mlock = T1_AUTO;
	c->host_policy = T1_POLICY_2Q;
	c->host_retain_share = 90;
	c->tenant_quota = 0;
	c->max_connections = 256;
	c->max_frame = 4 << 20; /* a 256K-token context manifest with token ids fits */
	c->max_inflight = 64;
	c->max_batch = 4096;
	c->max_regions = 64;
	c->max_region_size = 64 * SZ_GIB;
	c->max_block_size = SZ_GIB;
	c->idle_timeout_ms = 10 * MS_PER_M;
	c->handshake_timeout_ms = 5 * MS_PER_S;
	c->frame_timeout_ms = 10 * MS_PER_S;
	c->workers = 0; /* auto */
	c->log_level = LOG_INFO;
	c->nvme_capacity = 8 * SZ_GIB;
	c->nvme_segment_size = SZ_GIB;
	c->nvme_codec = 2;     /* bf16 */
	c->nvme_zstd_level = 1;
	c->nvme_admission = 1; /* chain */
	c->nvme_write = 0;     /* back */
	c->nvme_free_target = 10;
	c->nvme_staging = 256 * SZ_MIB;
	c->nvme_write_window = SZ_GIB;
	c->nvme_commit_interval_ms = 0;
	c->readahead = 4;
	c->io_backend = 0;     /* auto */
	c->io_queue_depth = 64;
	c->mem_value_max = SZ_MIB;
	c->gpu_backend = 0; /* auto */
	c->gpu_max_regions = 16;
	c->gpu_max_pages = 262144;
	c->gpu_pool_size = 0; /* no T0 */
}

void config_free(struct kvtd_config *c)
{
	if (!c)
		return;
	free(c->quotas);
	c->quotas = NULL;
	c->nquotas = 0;
	free(c->uid_maps);
	c->uid_maps = NULL;
	c->nuid_maps = 0;
}

const char *log_level_name(enum log_level l)
{
	if ((unsigned)l < sizeof(level_names) / sizeof(level_names[0]))
		return level_names[l];
	return "unknown";
}

/* ---- number parsing ------------------------------------------------------ */

/* Leading decimal digits of s. No sign, no blanks: strtoull would take both. */
static int parse_digits(const char *s, uint64_t *v, const char **end)
{
	uint64_t n = 0;
	const char *p = s;

	if (*p < '0' || *p > '9')
		return -EINVAL;
	for (; *p >= '0' && *p <= '9'; p++) {
		unsigned d = (unsigned)(*p - '0');
		if (n > (UINT64_MAX - d) / 10)
			return -ERANGE;
		n = n * 10 + d;
	}
	*v = n;
	*end = p;
	return 0;
}

static int parse_dec(const char *s, uint64_t *out)
{
	const char *end;
	uint64_t v;
	int rc = parse_digits(s, &v, &end);

	if (rc)
		return rc;
	if (*end)
		return -EINVAL;
	*out = v;
	return 0;
}

static int parse_octal(const char *s, uint64_t *out)
{
	uint64_t v = 0;
	const char *p = s;

	if (!*p)
		return -EINVAL;
	for (; *p; p++) {
		if (*p < '0' || *p > '7')
			return -EINVAL;
		v = v * 8 + (uint64_t)(*p - '0');
		if (v > 07777) /* far past any mode; stops overflow */
			return -ERANGE;
	}
	*out = v;
	return 0;
}

int config_parse_size(const char *s, uint64_t *out)
{
	const char *p;
	uint64_t v;
	unsigned shift;
	int rc;

	if (!s || !out)
		return -EINVAL;
	rc = parse_digits(s, &v, &p);
	if (rc)
		return rc;
	switch (*p) {
	case '\0': shift = 0; break;
	case 'k': case 'K': shift = 10; break;
	case 'm': case 'M': shift = 20; break;
	case 'g': case 'G': shift = 30; break;
	case 't': case 'T': shift = 40; break;
	default: return -EINVAL;
	}
	if (shift) {
		p++;
		/* "KiB" or bare "K"; "KB" would read as 1000 to many people. */
		if (p[0] == 'i' && p[1] == 'B')
			p += 2;
		if (*p)
			return -EINVAL;
		if (v > UINT64_MAX >> shift)
			return -ERANGE;
	}
	*out = v << shift;
	return 0;
}

int config_parse_duration_ms(const char *s, uint64_t *out)
{
	const char *p;
	uint64_t v, mul;
	int rc;

	if (!s || !out)
		return -EINVAL;
	rc = parse_digits(s, &v, &p);
	if (rc)
		return rc;
	if (strcmp(p, "ms") == 0)
		mul = 1;
	else if (*p == '\0' || strcmp(p, "s") == 0)
		mul = MS_PER_S;
	else if (strcmp(p, "m") == 0)
		mul = MS_PER_M;
	else if (strcmp(p, "h") == 0)
		mul = MS_PER_H;
	else
		return -EINVAL;
	if (v > UINT64_MAX / mul)
		return -ERANGE;
	*out = v * mul;
	return 0;
}

/* The largest binary unit that divides v exactly, so printing loses nothing. */
static void format_size(char *buf, size_t cap, uint64_t v)
{
	static const struct { unsigned shift; const char *sfx; } units[] = {
		{ 40, "TiB" }, { 30, "GiB" }, { 20, "MiB" }, { 10, "KiB" },
	};

	for (size_t i = 0; v && i < sizeof(units) / sizeof(units[0]); i++) {
		if ((v & ((UINT64_C(1) << units[i].shift) - 1)) == 0) {
			snprintf(buf, cap, "%" PRIu64 "%s", v >> units[i].shift, units[i].sfx);
			return;
		}
	}
	snprintf(buf, cap, "%" PRIu64, v);
}

static void format_duration(char *buf, size_t cap, uint64_t ms)
{
	if (ms == 0)
		snprintf(buf, cap, "0");
	else if (ms % MS_PER_H == 0)
		snprintf(buf, cap, "%" PRIu64 "h", ms / MS_PER_H);
	else if (ms % MS_PER_M == 0)
		snprintf(buf, cap, "%" PRIu64 "m", ms / MS_PER_M);
	else if (ms % MS_PER_S == 0)
		snprintf(buf, cap, "%" PRIu64 "s", ms / MS_PER_S);
	else
		snprintf(buf, cap, "%" PRIu64 "ms", ms);
}

/* ---- the table's fields -------------------------------------------------- */

static void *field(struct kvtd_config *c, const struct key_def *k)
{
	return (char *)c + k->off;
}

static const void *cfield(const struct kvtd_config *c, const struct key_def *k)
{
	return (const char *)c + k->off;
}

static uint64_t get_uint(const struct kvtd_config *c, const struct key_def *k)
{
	const void *p = cfield(c, k);

	return k->size == sizeof(uint64_t) ? *(const uint64_t *)p : *(const uint32_t *)p;
}

static void put_uint(struct kvtd_config *c, const struct key_def *k, uint64_t v)
{
	void *p = field(c, k);

	if (k->size == sizeof(uint64_t))
		*(uint64_t *)p = v;
	else
		*(uint32_t *)p = (uint32_t)v; /* callers range-checked v against k->max */
}

static bool in_range(const struct key_def *k, uint64_t v)
{
	if (v < k->min || v > k->max)
		return false;
	return !(k->flags & KF_POW2) || (v & (v - 1)) == 0;
}

/* In range, or 0 standing for a not yet resolved "auto". */
static bool uint_ok(const struct key_def *k, uint64_t v)
{
	return ((k->flags & KF_AUTO) && v == 0) || in_range(k, v);
}

#define SIZE_HINT " (suffixes K/KiB, M/MiB, G/GiB, T/TiB)"

/* What a valid value of k looks like, for error messages. */
static void describe(const struct key_def *k, char *buf, size_t cap)
{
	char lo[32], hi[32];
	const char *aut = (k->flags & KF_AUTO) ? "auto or " : "";

	switch (k->kind) {
	case KK_PATH:
		snprintf(buf, cap, "a non-empty path of at most %zu bytes", k->size - 1);
		return;
	case KK_MODE:
		snprintf(buf, cap, "octal permission bits from 0 to 0777, e.g. 0660");
		return;
	case KK_SIZE:
		format_size(lo, sizeof(lo), k->min);
		format_size(hi, sizeof(hi), k->max);
		if (k->max == UINT64_MAX && k->min == 0)
			snprintf(buf, cap, "%sa size in bytes" SIZE_HINT, aut);
		else if (k->max == UINT64_MAX)
			snprintf(buf, cap, "%sa size of at least %s" SIZE_HINT, aut, lo);
		else
			snprintf(buf, cap, "%sa %ssize from %s to %s" SIZE_HINT, aut,
				 (k->flags & KF_POW2) ? "power-of-two " : "", lo, hi);
		return;
	case KK_COUNT:
		snprintf(buf, cap, "%san integer from %" PRIu64 " to %" PRIu64, aut, k->min,
			 k->max);
		return;
	case KK_DURATION:
		format_duration(hi, sizeof(hi), k->max);
		snprintf(buf, cap, "a duration from 0 to %s (500ms, 10s, 5m, 1h; a plain number is "
				   "seconds; 0 = never)", hi);
		return;
	case KK_TRISTATE:
		snprintf(buf, cap, "auto, on or off");
		return;
	case KK_LOGLEVEL:
		snprintf(buf, cap, "error, warn, info or debug");
		return;
	case KK_ENUM:
		snprintf(buf, cap, "%s", enum_tables[k->min].list);
		return;
	case KK_QUOTA:
		snprintf(buf, cap, "TENANT:SIZE, e.g. 1000:8GiB (TENANT from 0 to 4294967295)");
		return;
	case KK_UIDMAP:
		snprintf(buf, cap, "UID:TENANT, e.g. 1000:1 (each from 0 to 4294967295)");
		return;
	}
	snprintf(buf, cap, "a valid value");
}

static int lookup_name(const char *const *names, size_t n, const char *s)
{
	for (size_t i = 0; i < n; i++)
		if (names[i] && strcmp(names[i], s) == 0)
			return (int)i;
	return -1;
}

/* "A:B" -> two trimmed halves in buf (NUL-terminated), or -EINVAL. */
static int split_pair(const char *s, char *buf, size_t cap, const char **a, const char **b);

static int parse_u32(const char *s, uint32_t *out)
{
	uint64_t v;

	if (parse_dec(s, &v) < 0 || v > UINT32_MAX)
		return -EINVAL;
	*out = (uint32_t)v;
	return 0;
}

static int add_quota(struct kvtd_config *c, const char *val)
{
	char buf[128];
	const char *ts, *ss;
	uint32_t tenant;
	uint64_t bytes;
	struct quota_entry *q;

	if (split_pair(val, buf, sizeof(buf), &ts, &ss) < 0 || parse_u32(ts, &tenant) < 0 ||
	    config_parse_size(ss, &bytes) < 0)
		return -EINVAL;
	/* The last word on a tenant wins, so -o can override a file's line. */
	for (size_t i = 0; i < c->nquotas; i++) {
		if (c->quotas[i].tenant == tenant) {
			c->quotas[i].bytes = bytes;
			return 0;
		}
	}
	q = reallocarray(c->quotas, c->nquotas + 1, sizeof(*q));
	if (!q)
		return -ENOMEM;
	c->quotas = q;
	c->quotas[c->nquotas++] = (struct quota_entry){ .tenant = tenant, .bytes = bytes };
	return 0;
}

static int add_uid_map(struct kvtd_config *c, const char *val)
{
	char buf[128];
	const char *us, *ts;
	uint32_t uid, tenant;
	struct uid_map_entry *m;

	if (split_pair(val, buf, sizeof(buf), &us, &ts) < 0 || parse_u32(us, &uid) < 0 ||
	    parse_u32(ts, &tenant) < 0)
		return -EINVAL;
	/* Lookups take the first match, so a repeated uid must replace, not append. */
	for (size_t i = 0; i < c->nuid_maps; i++) {
		if (c->uid_maps[i].uid == uid) {
			c->uid_maps[i].tenant = tenant;
			return 0;
		}
	}
	m = reallocarray(c->uid_maps, c->nuid_maps + 1, sizeof(*m));
	if (!m)
		return -ENOMEM;
	c->uid_maps = m;
	c->uid_maps[c->nuid_maps++] = (struct uid_map_entry){ .uid = uid, .tenant = tenant };
	return 0;
}

/* Store val (already trimmed) into k's field. 0, -EINVAL (bad value) or -ENOMEM. */
static int set_value(struct kvtd_config *c, const struct key_def *k, const char *val)
{
	uint64_t v;
	int i, rc;

	switch (k->kind) {
	case KK_PATH: {
		size_t n = strlen(val);
		if (n == 0 || n >= k->size)
			return -EINVAL;
		memcpy(field(c, k), val, n + 1);
		return 0;
	}
	case KK_MODE:
		if (parse_octal(val, &v) < 0 || v > k->max)
			return -EINVAL;
		put_uint(c, k, v);
		return 0;
	case KK_SIZE:
	case KK_COUNT:
	case KK_DURATION:
		if ((k->flags & KF_AUTO) && strcmp(val, "auto") == 0) {
			put_uint(c, k, 0);
			return 0;
		}
		if (k->kind == KK_SIZE)
			rc = config_parse_size(val, &v);
		else if (k->kind == KK_DURATION)
			rc = config_parse_duration_ms(val, &v);
		else
			rc = parse_dec(val, &v);
		/* Every auto key has min >= 1, so a literal 0 cannot pose as "auto". */
		if (rc < 0 || !in_range(k, v))
			return -EINVAL;
		put_uint(c, k, v);
		return 0;
	case KK_TRISTATE:
		i = lookup_name(tristate_names, sizeof(tristate_names) / sizeof(tristate_names[0]),
				val);
		if (i < 0)
			return -EINVAL;
		*(enum t1_mode *)field(c, k) = (enum t1_mode)i;
		return 0;
	case KK_LOGLEVEL:
		i = lookup_name(level_names, sizeof(level_names) / sizeof(level_names[0]), val);
		if (i < 0)
			return -EINVAL;
		*(enum log_level *)field(c, k) = (enum log_level)i;
		return 0;
	case KK_ENUM:
		i = lookup_name(enum_tables[k->min].names, enum_tables[k->min].n, val);
		if (i < 0)
			return -EINVAL;
		put_uint(c, k, (uint64_t)i);
		return 0;
	case KK_QUOTA:
		return add_quota(c, val);
	case KK_UIDMAP:
		return add_uid_map(c, val);
	}
	return -EINVAL;
}

/* ---- text parsing --------------------------------------------------------- */

static bool is_blank(char ch)
{
	return ch == ' ' || ch == '\t' || ch == '\r' || ch == '\v' || ch == '\f';
}

/* Trim blanks at both ends, in place; returns the new start. */
static char *trim(char *s)
{
	size_t n;

	while (is_blank(*s))
		s++;
	n = strlen(s);
	while (n > 0 && is_blank(s[n - 1]))
		n--;
	s[n] = '\0';
	return s;
}

static int split_pair(const char *s, char *buf, size_t cap, const char **a, const char **b)
{
	size_t n = strlen(s);
	char *colon;

	if (n >= cap)
		return -EINVAL;
	memcpy(buf, s, n + 1);
	colon = strchr(buf, ':');
	if (!colon)
		return -EINVAL;
	*colon = '\0';
	*a = trim(buf);
	*b = trim(colon + 1);
	return 0;
}

static const struct key_def *find_key(const char *name)
{
	for (size_t i = 0; i < NKEYS; i++)
		if (strcmp(keys[i].name, name) == 0)
			return &keys[i];
	return NULL;
}

static void write_err(char *err, size_t errcap, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));
static void write_err(char *err, size_t errcap, const char *fmt, ...)
{
	va_list ap;

	if (!err || errcap == 0)
		return;
	va_start(ap, fmt);
	vsnprintf(err, errcap, fmt, ap);
	va_end(ap);
}

/* "origin:line: message", or "origin: message" for line 0 (the command line). */
static void where_err(char *err, size_t errcap, const char *origin, unsigned line,
		      const char *fmt, ...) __attribute__((format(printf, 5, 6)));
static void where_err(char *err, size_t errcap, const char *origin, unsigned line,
		      const char *fmt, ...)
{
	va_list ap;
	int n;

	if (!err || errcap == 0)
		return;
	if (line)
		n = snprintf(err, errcap, "%s:%u: ", origin, line);
	else
		n = snprintf(err, errcap, "%s: ", origin);
	if (n < 0 || (size_t)n >= errcap)
		return;
	va_start(ap, fmt);
	vsnprintf(err + n, errcap - (size_t)n, fmt, ap);
	va_end(ap);
}

/* Longest piece of user text quoted back in a message. */
#define QUOTE_MAX 80

/*
 * Apply one line (len bytes at p, no newline). single: it came alone from the
 * command line, where a blank or comment is a mistake rather than filler.
 */
static int parse_line(struct kvtd_config *c, const char *p, size_t len, const char *origin,
		      unsigned line, bool single, char *err, size_t errcap)
{
	const struct key_def *k;
	char *buf, *s, *eq, *key, *val;
	char what[192];
	int rc = 0;

	buf = strndup(p, len);
	if (!buf) {
		where_err(err, errcap, origin, line, "out of memory");
		return -ENOMEM;
	}
	s = trim(buf);
	if (*s == '\0' || *s == '#') {
		if (single) {
			where_err(err, errcap, origin, line, "expected key=value, got '%.*s'",
				  QUOTE_MAX, s);
			rc = -EINVAL;
		}
		goto out_free;
	}
	eq = strchr(s, '=');
	if (!eq) {
		where_err(err, errcap, origin, line, "expected 'key = value', got '%.*s'",
			  QUOTE_MAX, s);
		rc = -EINVAL;
		goto out_free;
	}
	*eq = '\0';
	key = trim(s);
	val = trim(eq + 1);
	if (*key == '\0') {
		where_err(err, errcap, origin, line, "missing key before '='");
		rc = -EINVAL;
		goto out_free;
	}
	k = find_key(key);
	if (!k) {
		where_err(err, errcap, origin, line, "unknown key '%.*s'", QUOTE_MAX, key);
		rc = -EINVAL;
		goto out_free;
	}
	rc = set_value(c, k, val);
	if (rc == -ENOMEM) {
		where_err(err, errcap, origin, line, "%s: out of memory", k->name);
	} else if (rc < 0) {
		describe(k, what, sizeof(what));
		/* Paths may contain '#', so only whole-line comments exist; say so,
		 * since "max_batch = 8 # more" is a natural thing to write. */
		where_err(err, errcap, origin, line, "%s: bad value '%.*s': expected %s%s", k->name,
			  QUOTE_MAX, val, what,
			  strchr(val, '#') ? " (comments must be on a line of their own)" : "");
		rc = -EINVAL;
	}
out_free:
	free(buf);
	return rc;
}

int config_parse_text(struct kvtd_config *c, const char *text, const char *origin, char *err,
		      size_t errcap)
{
	unsigned line = 0;
	const char *p = text;

	if (!origin)
		origin = "configuration";
	if (!c || !text) {
		write_err(err, errcap, "%s: no configuration text", origin);
		return -EINVAL;
	}
	while (*p) {
		const char *nl = strchr(p, '\n');
		size_t len = nl ? (size_t)(nl - p) : strlen(p);
		int rc = parse_line(c, p, len, origin, ++line, false, err, errcap);

		if (rc < 0)
			return rc;
		if (!nl)
			break;
		p = nl + 1;
	}
	return 0;
}

int config_set(struct kvtd_config *c, const char *kv, char *err, size_t errcap)
{
	static const char origin[] = "command line";

	if (!c || !kv) {
		write_err(err, errcap, "%s: no key=value", origin);
		return -EINVAL;
	}
	/* One override is one line; a newline would smuggle in a second key. */
	if (strchr(kv, '\n')) {
		write_err(err, errcap, "%s: '%.*s': a value cannot contain a newline", origin,
			  QUOTE_MAX, kv);
		return -EINVAL;
	}
	return parse_line(c, kv, strlen(kv), origin, 0, true, err, errcap);
}

int config_parse_file(struct kvtd_config *c, const char *path, char *err, size_t errcap)
{
	char *buf = NULL, *nbuf;
	size_t len = 0, cap = 0;
	int fd, rc;

	if (!c || !path) {
		write_err(err, errcap, "no configuration file named");
		return -EINVAL;
	}
	fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0) {
		rc = -errno;
		write_err(err, errcap, "%s: %s", path, strerror(-rc));
		return rc;
	}
	/* Read until EOF or one byte past the limit: st_size is no guide for pipes
	 * and /proc files, and the file may grow while we read it. */
	for (;;) {
		ssize_t r;

		if (len == cap) {
			if (cap > CONFIG_FILE_MAX)
				break;
			cap = cap ? cap * 2 : 16384;
			if (cap > CONFIG_FILE_MAX + 1)
				cap = CONFIG_FILE_MAX + 1;
			nbuf = realloc(buf, cap + 1);
			if (!nbuf) {
				rc = -ENOMEM;
				write_err(err, errcap, "%s: out of memory", path);
				goto out_free;
			}
			buf = nbuf;
		}
		r = read(fd, buf + len, cap - len);
		if (r < 0) {
			if (errno == EINTR)
				continue;
			rc = -errno;
			write_err(err, errcap, "%s: %s", path, strerror(-rc));
			goto out_free;
		}
		if (r == 0)
			break;
		len += (size_t)r;
	}
	if (len > CONFIG_FILE_MAX) {
		rc = -EFBIG;
		write_err(err, errcap, "%s: larger than %u bytes (1 MiB): %s", path,
			  CONFIG_FILE_MAX, strerror(EFBIG));
		goto out_free;
	}
	if (len && memchr(buf, '\0', len)) {
		rc = -EINVAL;
		write_err(err, errcap, "%s: contains a NUL byte (not a text file?)", path);
		goto out_free;
	}
	buf[len] = '\0'; /* the loop allocated at least once, even for an empty file */
	rc = config_parse_text(c, buf, path, err, errcap);
out_free:
	free(buf);
	close(fd);
	return rc;
}

/* ---- finishing ------------------------------------------------------------- */

/* Check what config_parse_text guarantees, for configs filled in by code. */
static int check_key(const struct kvtd_config *c, const struct key_def *k, char *err,
		     size_t errcap)
{
	char what[192];
	uint64_t v;
	int m;

	switch (k->kind) {
	case KK_PATH: {
		const char *p = cfield(c, k);
		if (p[0] != '\0' && memchr(p, '\0', k->size))
			return 0;
		break;
	}
	case KK_MODE:
	case KK_SIZE:
	case KK_COUNT:
	case KK_DURATION:
		v = get_uint(c, k);
		if (k->kind == KK_MODE ? v <= k->max : uint_ok(k, v))
			return 0;
		break;
	case KK_TRISTATE:
		m = (int)*(const enum t1_mode *)cfield(c, k);
		if (m >= 0 && (size_t)m < sizeof(tristate_names) / sizeof(tristate_names[0]))
			return 0;
		break;
	case KK_LOGLEVEL:
		m = (int)*(const enum log_level *)cfield(c, k);
		if (m >= 0 && (size_t)m < sizeof(level_names) / sizeof(level_names[0]))
			return 0;
		break;
	case KK_ENUM:
		if (get_uint(c, k) < enum_tables[k->min].n)
			return 0;
		break;
	case KK_QUOTA:
		if (c->nquotas == 0 || c->quotas)
			return 0;
		break;
	case KK_UIDMAP:
		if (c->nuid_maps == 0 || c->uid_maps)
			return 0;
		break;
	}
	describe(k, what, sizeof(what));
	write_err(err, errcap, "%s: invalid value: expected %s", k->name, what);
	return -EINVAL;
}

/* 1/8 of RAM within bounds; config_finish rounds it down to whole chunks. */
static uint64_t auto_host_capacity(void)
{
	long pages = sysconf(_SC_PHYS_PAGES);
	long psz = sysconf(_SC_PAGE_SIZE);
	uint64_t cap;

	if (pages <= 0 || psz <= 0)
		return 0;
	cap = (uint64_t)pages * (uint64_t)psz / 8;
	if (cap < AUTO_CAPACITY_MIN)
		cap = AUTO_CAPACITY_MIN;
	if (cap > AUTO_CAPACITY_MAX)
		cap = AUTO_CAPACITY_MAX;
	return cap;
}

static uint32_t auto_workers(void)
{
	long n = sysconf(_SC_NPROCESSORS_ONLN);

	if (n < AUTO_WORKERS_MIN)
		return AUTO_WORKERS_MIN;
	if (n > AUTO_WORKERS_MAX)
		return AUTO_WORKERS_MAX;
	return (uint32_t)n;
}

/* Prefix a relative path with the working directory, so the daemon's files do
 * not move if it (or a later reload) changes directory. */
static int make_absolute(char *path, size_t cap, const char *key, const char *limit,
			 char *err, size_t errcap)
{
	char cwd[PATH_MAX];
	const char *rel = path;
	size_t cl, rl, need;
	bool slash;

	if (path[0] != '/') {
		if (!getcwd(cwd, sizeof(cwd))) {
			int e = errno;
			write_err(err, errcap, "%s: cannot resolve relative path '%.*s': %s", key,
				  QUOTE_MAX, path, strerror(e));
			return -EINVAL;
		}
		while (rel[0] == '.' && rel[1] == '/') {
			rel += 2;
			while (*rel == '/')
				rel++;
		}
		cl = strlen(cwd);
		rl = strlen(rel);
		slash = rl > 0 && cl > 0 && cwd[cl - 1] != '/';
		need = cl + slash + rl + 1;
		if (need > cap) {
			write_err(err, errcap,
				  "%s: '%s%s%.*s' is %zu bytes long; %s holds at most %zu", key,
				  cwd, slash ? "/" : "", QUOTE_MAX, rel, need - 1, limit, cap - 1);
			return -EINVAL;
		}
		memmove(path + cl + slash, rel, rl + 1);
		memcpy(path, cwd, cl);
		if (slash)
			path[cl] = '/';
	}
	/* config_print writes one key per line; a newline (from the cwd) would break it. */
	if (strchr(path, '\n')) {
		write_err(err, errcap, "%s: path contains a newline", key);
		return -EINVAL;
	}
	return 0;
}

int config_finish(struct kvtd_config *c, char *err, size_t errcap)
{
	char a[32], b[32];
	int rc;

	for (size_t i = 0; i < NKEYS; i++) {
		rc = check_key(c, &keys[i], err, errcap);
		if (rc < 0)
			return rc;
	}
	if (c->host_capacity == 0) {
		c->host_capacity = auto_host_capacity();
		if (c->host_capacity == 0) {
			write_err(err, errcap, "host_capacity: cannot determine physical memory "
					       "for auto; set a size");
			return -EINVAL;
		}
	}
	if (c->host_capacity < c->host_chunk) {
		format_size(a, sizeof(a), c->host_capacity);
		format_size(b, sizeof(b), c->host_chunk);
		write_err(err, errcap, "host_capacity (%s) is smaller than host_chunk (%s)", a, b);
		return -EINVAL;
	}
	/* The tier uses whole chunks; say so in the effective config rather than
	 * print a size the daemon does not use. */
	c->host_capacity -= c->host_capacity % c->host_chunk;
	if (c->workers == 0)
		c->workers = auto_workers();
	rc = make_absolute(c->socket_path, sizeof(c->socket_path), "socket",
			   "a Unix socket address", err, errcap);
	if (rc < 0)
		return rc;
	return make_absolute(c->data_dir, sizeof(c->data_dir), "data_dir", "data_dir", err,
			     errcap);
}

/* ---- printing -------------------------------------------------------------- */

void config_print(const struct kvtd_config *c, FILE *out)
{
	char buf[32];

	fputs("# kvtierd configuration (effective values); see kvtierd.conf(5).\n", out);
	for (size_t i = 0; i < NKEYS; i++) {
		const struct key_def *k = &keys[i];
		uint64_t v;

		fprintf(out, "\n# %s\n", k->help);
		switch (k->kind) {
		case KK_PATH:
			fprintf(out, "%s = %s\n", k->name, (const char *)cfield(c, k));
			break;
		case KK_MODE:
			fprintf(out, "%s = %04" PRIo64 "\n", k->name, get_uint(c, k));
			break;
		case KK_SIZE:
		case KK_COUNT:
		case KK_DURATION:
			v = get_uint(c, k);
			if ((k->flags & KF_AUTO) && v == 0)
				snprintf(buf, sizeof(buf), "auto");
			else if (k->kind == KK_SIZE)
				format_size(buf, sizeof(buf), v);
			else if (k->kind == KK_DURATION)
				format_duration(buf, sizeof(buf), v);
			else
				snprintf(buf, sizeof(buf), "%" PRIu64, v);
			fprintf(out, "%s = %s\n", k->name, buf);
			break;
		case KK_TRISTATE: {
			unsigned m = (unsigned)*(const enum t1_mode *)cfield(c, k);
			fprintf(out, "%s = %s\n", k->name,
				m < sizeof(tristate_names) / sizeof(tristate_names[0])
					? tristate_names[m] : "invalid");
			break;
		}
		case KK_LOGLEVEL:
			fprintf(out, "%s = %s\n", k->name,
				log_level_name(*(const enum log_level *)cfield(c, k)));
			break;
		case KK_ENUM:
			fprintf(out, "%s = %s\n", k->name, enum_name(k, get_uint(c, k)));
			break;
		case KK_QUOTA:
			for (size_t j = 0; j < c->nquotas; j++) {
				format_size(buf, sizeof(buf), c->quotas[j].bytes);
				fprintf(out, "%s = %" PRIu32 ":%s\n", k->name, c->quotas[j].tenant,
					buf);
			}
			break;
		case KK_UIDMAP:
			for (size_t j = 0; j < c->nuid_maps; j++)
				fprintf(out, "%s = %" PRIu32 ":%" PRIu32 "\n", k->name,
					c->uid_maps[j].uid, c->uid_maps[j].tenant);
			break;
		}
	}
}

/* ---- walking the keys (for reload) ----------------------------------------- */

size_t config_key_count(void)
{
	return NKEYS;
}

const char *config_key_name(size_t i)
{
	return i < NKEYS ? keys[i].name : NULL;
}

static int cmp_quota(const void *a, const void *b)
{
	const struct quota_entry *x = a, *y = b;

	return x->tenant < y->tenant ? -1 : x->tenant > y->tenant;
}

static int cmp_uid_map(const void *a, const void *b)
{
	const struct uid_map_entry *x = a, *y = b;

	return x->uid < y->uid ? -1 : x->uid > y->uid;
}

/* Append to buf at *len, keeping it NUL-terminated and within cap. */
static void append(char *buf, size_t cap, size_t *len, const char *fmt, ...)
	__attribute__((format(printf, 4, 5)));
static void append(char *buf, size_t cap, size_t *len, const char *fmt, ...)
{
	va_list ap;
	int n;

	if (*len + 1 >= cap)
		return;
	va_start(ap, fmt);
	n = vsnprintf(buf + *len, cap - *len, fmt, ap);
	va_end(ap);
	if (n > 0)
		*len = *len + (size_t)n < cap ? *len + (size_t)n : cap - 1;
}

/* A repeatable key's entries, sorted, so that reordering lines is no change. */
static void format_list(const struct kvtd_config *c, const struct key_def *k, char *buf,
			size_t cap)
{
	size_t len = 0, n = k->kind == KK_QUOTA ? c->nquotas : c->nuid_maps;
	char sz[32];

	buf[0] = '\0';
	if (n == 0) {
		append(buf, cap, &len, "(none)");
		return;
	}
	if (k->kind == KK_QUOTA) {
		struct quota_entry *q = malloc(n * sizeof(*q));
		if (!q) {
			append(buf, cap, &len, "(out of memory)");
			return;
		}
		memcpy(q, c->quotas, n * sizeof(*q));
		qsort(q, n, sizeof(*q), cmp_quota);
		for (size_t j = 0; j < n; j++) {
			format_size(sz, sizeof(sz), q[j].bytes);
			append(buf, cap, &len, "%s%" PRIu32 ":%s", j ? ", " : "", q[j].tenant, sz);
		}
		free(q);
		return;
	}
	struct uid_map_entry *m = malloc(n * sizeof(*m));
	if (!m) {
		append(buf, cap, &len, "(out of memory)");
		return;
	}
	memcpy(m, c->uid_maps, n * sizeof(*m));
	qsort(m, n, sizeof(*m), cmp_uid_map);
	for (size_t j = 0; j < n; j++)
		append(buf, cap, &len, "%s%" PRIu32 ":%" PRIu32, j ? ", " : "", m[j].uid,
		       m[j].tenant);
	free(m);
}

const char *config_key_format(const struct kvtd_config *c, size_t i, char *buf, size_t cap)
{
	const struct key_def *k;
	uint64_t v;
	unsigned m;

	if (!buf || cap == 0)
		return buf;
	buf[0] = '\0';
	if (i >= NKEYS)
		return buf;
	k = &keys[i];
	switch (k->kind) {
	case KK_PATH:
		snprintf(buf, cap, "%s", (const char *)cfield(c, k));
		break;
	case KK_MODE:
		snprintf(buf, cap, "%04" PRIo64, get_uint(c, k));
		break;
	case KK_SIZE:
	case KK_COUNT:
	case KK_DURATION:
		v = get_uint(c, k);
		if ((k->flags & KF_AUTO) && v == 0)
			snprintf(buf, cap, "auto");
		else if (k->kind == KK_SIZE)
			format_size(buf, cap, v);
		else if (k->kind == KK_DURATION)
			format_duration(buf, cap, v);
		else
			snprintf(buf, cap, "%" PRIu64, v);
		break;
	case KK_TRISTATE:
		m = (unsigned)*(const enum t1_mode *)cfield(c, k);
		snprintf(buf, cap, "%s",
			 m < sizeof(tristate_names) / sizeof(tristate_names[0]) ? tristate_names[m]
										 : "invalid");
		break;
	case KK_LOGLEVEL:
		snprintf(buf, cap, "%s", log_level_name(*(const enum log_level *)cfield(c, k)));
		break;
	case KK_ENUM:
		snprintf(buf, cap, "%s", enum_name(k, get_uint(c, k)));
		break;
	case KK_QUOTA:
	case KK_UIDMAP:
		format_list(c, k, buf, cap);
		break;
	}
	return buf;
}
