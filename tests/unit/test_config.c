/*
 * test_config.c - kvtierd's configuration (daemon/config.c): the size and duration
 * parsers, every key and its range, error messages that name origin:line and key,
 * repeatable keys, the embedded default, print/parse round trips, config_finish's
 * "auto" and path resolution, and reading files.
 */
#include "test.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <sys/stat.h>
#include <unistd.h>

#include "config.h"

#define KIB (UINT64_C(1) << 10)
#define MIB (UINT64_C(1) << 20)
#define GIB (UINT64_C(1) << 30)
#define TIB (UINT64_C(1) << 40)

/* Every key of kvtierd.conf(5), written out here so that a key dropped from the
 * implementation's table fails the tests that use this list. */
static const char *const all_keys[] = {
	"socket", "socket_mode", "data_dir", "host_capacity", "host_chunk",
	"host_hugepages", "host_mlock", "host_policy", "host_retain_share", "tenant_quota", "quota", "uid_map",
	"max_connections", "max_frame", "max_inflight", "max_batch", "max_regions",
	"max_region_size", "max_block_size", "idle_timeout", "handshake_timeout",
	"frame_timeout", "workers", "log_level", "nvme_capacity", "nvme_segment_size",
	"nvme_codec", "nvme_zstd_level", "nvme_admission", "nvme_write", "nvme_free_target",
	"nvme_staging", "nvme_write_window", "nvme_commit_interval", "readahead", "io_backend",
	"io_queue_depth", "mem_value_max", "gpu_backend", "gpu_max_regions", "gpu_max_pages",
	"gpu_pool_size",
};
#define NKEYS (sizeof(all_keys) / sizeof(all_keys[0]))

/* Every byte set, so a key the parser never writes shows up as a difference. */
static void garbage_config(struct kvtd_config *c)
{
	memset(c, 0x5a, sizeof(*c));
	c->quotas = NULL;
	c->nquotas = 0;
	c->uid_maps = NULL;
	c->nuid_maps = 0;
}

/* Name of the first field where a and b differ, or NULL if they are the same. */
static const char *config_diff(const struct kvtd_config *a, const struct kvtd_config *b)
{
#define SAME_(f)                     \
	do {                         \
		if (a->f != b->f)    \
			return #f;   \
	} while (0)
	if (strcmp(a->socket_path, b->socket_path) != 0)
		return "socket_path";
	if (strcmp(a->data_dir, b->data_dir) != 0)
		return "data_dir";
	SAME_(socket_mode);
	SAME_(host_capacity);
	SAME_(host_chunk);
	SAME_(host_hugepages);
	SAME_(host_mlock);
	SAME_(host_policy);
	SAME_(host_retain_share);
	SAME_(tenant_quota);
	SAME_(max_connections);
	SAME_(max_frame);
	SAME_(max_inflight);
	SAME_(max_batch);
	SAME_(max_regions);
	SAME_(max_region_size);
	SAME_(max_block_size);
	SAME_(idle_timeout_ms);
	SAME_(handshake_timeout_ms);
	SAME_(frame_timeout_ms);
	SAME_(workers);
	SAME_(log_level);
	SAME_(nvme_capacity);
	SAME_(nvme_segment_size);
	SAME_(nvme_codec);
	SAME_(nvme_zstd_level);
	SAME_(nvme_admission);
	SAME_(nvme_write);
	SAME_(nvme_free_target);
	SAME_(nvme_staging);
	SAME_(nvme_write_window);
	SAME_(nvme_commit_interval_ms);
	SAME_(readahead);
	SAME_(io_backend);
	SAME_(io_queue_depth);
	SAME_(mem_value_max);
	SAME_(gpu_backend);
	SAME_(gpu_max_regions);
	SAME_(gpu_max_pages);
	SAME_(gpu_pool_size);
	SAME_(nquotas);
	SAME_(nuid_maps);
	for (size_t i = 0; i < a->nquotas; i++)
		if (a->quotas[i].tenant != b->quotas[i].tenant ||
		    a->quotas[i].bytes != b->quotas[i].bytes)
			return "quotas[]";
	for (size_t i = 0; i < a->nuid_maps; i++)
		if (a->uid_maps[i].uid != b->uid_maps[i].uid ||
		    a->uid_maps[i].tenant != b->uid_maps[i].tenant)
			return "uid_maps[]";
	return NULL;
#undef SAME_
}

#define CHECK_SAME_CONFIG(a, b)                                                        \
	do {                                                                           \
		const char *d_ = config_diff((a), (b));                                \
		CHECK_MSG(!d_, "configs differ in %s", d_);                            \
	} while (0)

/* Parse text that must be valid. */
static void parse_ok(struct kvtd_config *c, const char *text)
{
	char err[512] = "";
	int rc = config_parse_text(c, text, "test.conf", err, sizeof(err));
	CHECK_MSG(rc == 0, "parsing \"%s\" failed (%d): %s", text, rc, err);
}

/* Parse text that must fail; err gets the message. */
static void parse_bad(const char *text, char *err, size_t cap)
{
	struct kvtd_config c;
	config_defaults(&c);
	err[0] = 0;
	int rc = config_parse_text(&c, text, "test.conf", err, cap);
	CHECK_MSG(rc == -EINVAL, "parsing \"%s\" returned %d, expected -EINVAL", text, rc);
	CHECK_MSG(err[0], "no error message for \"%s\"", text);
	config_free(&c);
}

static char *print_to_string(const struct kvtd_config *c)
{
	char *buf = NULL;
	size_t len = 0;
	FILE *f = open_memstream(&buf, &len);
	CHECK(f);
	config_print(c, f);
	CHECK(fclose(f) == 0);
	CHECK(buf);
	return buf;
}

/* ---- sizes and durations ------------------------------------------------- */

TEST(size_accepts_binary_suffixes)
{
	static const struct {
		const char *s;
		uint64_t v;
	} ok[] = {
		{ "0", 0 },
		{ "1", 1 },
		{ "4096", 4096 },
		{ "007", 7 },
		{ "64KiB", 64 * KIB },
		{ "64K", 64 * KIB },
		{ "64k", 64 * KIB },
		{ "64kiB", 64 * KIB },
		{ "1MiB", MIB },
		{ "1M", MIB },
		{ "3m", 3 * MIB },
		{ "8GiB", 8 * GIB },
		{ "8g", 8 * GIB },
		{ "1TiB", TIB },
		{ "1T", TIB },
		{ "2t", 2 * TIB },
		{ "0KiB", 0 },
		{ "18446744073709551615", UINT64_MAX },
		{ "16777215TiB", UINT64_C(16777215) << 40 },
		{ "17179869183GiB", UINT64_C(17179869183) << 30 },
	};
	for (size_t i = 0; i < sizeof(ok) / sizeof(ok[0]); i++) {
		uint64_t v = 12345;
		int rc = config_parse_size(ok[i].s, &v);
		CHECK_MSG(rc == 0, "\"%s\" rejected (%d)", ok[i].s, rc);
		CHECK_MSG(v == ok[i].v, "\"%s\" -> %" PRIu64 ", expected %" PRIu64, ok[i].s, v,
			  ok[i].v);
	}
}

TEST(size_rejects_decimal_units_garbage_and_overflow)
{
	static const char *const bad[] = {
		"", "K", "KiB", "-1", "+1", " 1", "1 ", "1 KiB", "1KB", "1kb", "1MB", "1GB",
		"1TB", "1KIB", "1Kib", "1Ki", "1B", "1b", "1.5K", "1e3", "0x10", "1KiBx",
		"1KiB ", "1P", "1PiB", "1E", "12abc", "auto", "1,000",
	};
	static const char *const overflow[] = {
		"18446744073709551616", "99999999999999999999999", "16777216TiB",
		"17179869184GiB", "17179869184G", "18014398509481984KiB",
	};
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		uint64_t v = 12345;
		int rc = config_parse_size(bad[i], &v);
		CHECK_MSG(rc < 0, "\"%s\" accepted as %" PRIu64, bad[i], v);
		CHECK_MSG(v == 12345, "\"%s\" wrote the output on failure", bad[i]);
	}
	for (size_t i = 0; i < sizeof(overflow) / sizeof(overflow[0]); i++) {
		uint64_t v = 12345;
		int rc = config_parse_size(overflow[i], &v);
		CHECK_MSG(rc == -ERANGE, "\"%s\" returned %d, expected -ERANGE", overflow[i], rc);
		CHECK(v == 12345);
	}
}

TEST(duration_accepts_units_and_plain_seconds)
{
	static const struct {
		const char *s;
		uint64_t ms;
	} ok[] = {
		{ "0", 0 },
		{ "0ms", 0 },
		{ "10", 10000 },
		{ "10s", 10000 },
		{ "500ms", 500 },
		{ "1ms", 1 },
		{ "5m", 300000 },
		{ "1h", 3600000 },
		{ "576h", UINT64_C(576) * 3600000 },
		{ "18446744073709551615ms", UINT64_MAX },
		{ "5124095576030h", UINT64_C(5124095576030) * 3600000 },
		{ "307445734561825m", UINT64_C(307445734561825) * 60000 },
	};
	for (size_t i = 0; i < sizeof(ok) / sizeof(ok[0]); i++) {
		uint64_t v = 12345;
		int rc = config_parse_duration_ms(ok[i].s, &v);
		CHECK_MSG(rc == 0, "\"%s\" rejected (%d)", ok[i].s, rc);
		CHECK_MSG(v == ok[i].ms, "\"%s\" -> %" PRIu64 " ms, expected %" PRIu64, ok[i].s, v,
			  ok[i].ms);
	}
}

TEST(duration_rejects_garbage_and_overflow)
{
	static const char *const bad[] = {
		"", "s", "ms", "-1", "+1", " 1", "1 ", "1 s", "1.5s", "1d", "1S", "1M", "1H",
		"1MS", "1sec", "1min", "1msx", "1hs", "10s5", "auto", "1us",
	};
	static const char *const overflow[] = {
		"18446744073709551615",   /* seconds: x1000 overflows */
		"18446744073709551616ms", /* the digits themselves */
		"5124095576031h",
		"307445734561826m",
		"18446744073709552s",
	};
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		uint64_t v = 12345;
		int rc = config_parse_duration_ms(bad[i], &v);
		CHECK_MSG(rc < 0, "\"%s\" accepted as %" PRIu64 " ms", bad[i], v);
		CHECK(v == 12345);
	}
	for (size_t i = 0; i < sizeof(overflow) / sizeof(overflow[0]); i++) {
		uint64_t v = 12345;
		int rc = config_parse_duration_ms(overflow[i], &v);
		CHECK_MSG(rc == -ERANGE, "\"%s\" returned %d, expected -ERANGE", overflow[i], rc);
		CHECK(v == 12345);
	}
}

/* ---- defaults --------------------------------------------------------------- */

TEST(defaults_match_the_spec)
{
	struct kvtd_config c;
	garbage_config(&c);
	config_defaults(&c);
	CHECK(strcmp(c.socket_path, "run/kvtierd.sock") == 0);
	CHECK_EQ(c.socket_mode, 0660);
	CHECK(strcmp(c.data_dir, "run/data") == 0);
	CHECK_EQ(c.host_capacity, 0); /* auto */
	CHECK_EQ(c.host_chunk, 64 * KIB);
	CHECK_EQ(c.host_hugepages, T1_AUTO);
	CHECK_EQ(c.host_mlock, T1_AUTO);
	CHECK_EQ(c.host_policy, T1_POLICY_2Q);
	CHECK_EQ(c.tenant_quota, 0);
	CHECK(c.quotas == NULL && c.nquotas == 0);
	CHECK(c.uid_maps == NULL && c.nuid_maps == 0);
	CHECK_EQ(c.max_connections, 256);
	CHECK_EQ(c.max_frame, 4 * MIB);
	CHECK_EQ(c.max_inflight, 64);
	CHECK_EQ(c.max_batch, 4096);
	CHECK_EQ(c.max_regions, 64);
	CHECK_EQ(c.max_region_size, 64 * GIB);
	CHECK_EQ(c.max_block_size, GIB);
	CHECK_EQ(c.idle_timeout_ms, 600000);
	CHECK_EQ(c.handshake_timeout_ms, 5000);
	CHECK_EQ(c.frame_timeout_ms, 10000);
	CHECK_EQ(c.workers, 0); /* auto */
	CHECK_EQ(c.log_level, LOG_INFO);
}

TEST(embedded_default_equals_config_defaults)
{
	struct kvtd_config parsed, def;
	char err[512] = "";

	/* Starting from garbage, every field must be set by the text itself. */
	garbage_config(&parsed);
	int rc = config_parse_text(&parsed, config_embedded_default, "embedded", err, sizeof(err));
	CHECK_MSG(rc == 0, "embedded default does not parse: %s", err);
	config_defaults(&def);
	CHECK_SAME_CONFIG(&parsed, &def);
	config_free(&parsed);
}

TEST(embedded_default_documents_every_key)
{
	const char *t = config_embedded_default;
	for (size_t i = 0; i < NKEYS; i++) {
		char needle[64];
		snprintf(needle, sizeof(needle), "\n%s = ", all_keys[i]);
		const char *hit = strstr(t, needle);
		if (!hit) { /* the repeatable keys appear as commented-out examples */
			snprintf(needle, sizeof(needle), "\n# %s = ", all_keys[i]);
			hit = strstr(t, needle);
		}
		CHECK_MSG(hit, "embedded default has no line for %s", all_keys[i]);
		/* ... right after a one-line comment: find the start of the line before */
		const char *p = hit;
		while (p > t && p[-1] != '\n')
			p--;
		CHECK_MSG(p > t && p[0] == '#' && p[1] == ' ' && p + 2 < hit,
			  "line before %s is not a comment", all_keys[i]);
	}
}

/* ---- keys -------------------------------------------------------------------- */

TEST(every_key_parses)
{
	struct kvtd_config c;
	config_defaults(&c);
	parse_ok(&c, "socket = /tmp/kvt test.sock\n"
		     "socket_mode = 0600\n"
		     "data_dir = /var/lib/kvt#1\n"
		     "host_capacity = 3GiB\n"
		     "host_chunk = 2MiB\n"
		     "host_hugepages = on\n"
		     "host_mlock = off\n"
		     "host_policy = lru\n"
		     "tenant_quota = 512MiB\n"
		     "quota = 7:1GiB\n"
		     "uid_map = 1000:7\n"
		     "max_connections = 17\n"
		     "max_frame = 256KiB\n"
		     "max_inflight = 3\n"
		     "max_batch = 99\n"
		     "max_regions = 5\n"
		     "max_region_size = 2TiB\n"
		     "max_block_size = 4MiB\n"
		     "idle_timeout = 90s\n"
		     "handshake_timeout = 250ms\n"
		     "frame_timeout = 2m\n"
		     "workers = 6\n"
		     "log_level = debug\n");
	CHECK(strcmp(c.socket_path, "/tmp/kvt test.sock") == 0);
	CHECK_EQ(c.socket_mode, 0600);
	CHECK(strcmp(c.data_dir, "/var/lib/kvt#1") == 0);
	CHECK_EQ(c.host_capacity, 3 * GIB);
	CHECK_EQ(c.host_chunk, 2 * MIB);
	CHECK_EQ(c.host_hugepages, T1_ON);
	CHECK_EQ(c.host_mlock, T1_OFF);
	CHECK_EQ(c.host_policy, T1_POLICY_LRU);
	CHECK_EQ(c.tenant_quota, 512 * MIB);
	CHECK_EQ(c.nquotas, 1);
	CHECK_EQ(c.quotas[0].tenant, 7);
	CHECK_EQ(c.quotas[0].bytes, GIB);
	CHECK_EQ(c.nuid_maps, 1);
	CHECK_EQ(c.uid_maps[0].uid, 1000);
	CHECK_EQ(c.uid_maps[0].tenant, 7);
	CHECK_EQ(c.max_connections, 17);
	CHECK_EQ(c.max_frame, 256 * KIB);
	CHECK_EQ(c.max_inflight, 3);
	CHECK_EQ(c.max_batch, 99);
	CHECK_EQ(c.max_regions, 5);
	CHECK_EQ(c.max_region_size, 2 * TIB);
	CHECK_EQ(c.max_block_size, 4 * MIB);
	CHECK_EQ(c.idle_timeout_ms, 90000);
	CHECK_EQ(c.handshake_timeout_ms, 250);
	CHECK_EQ(c.frame_timeout_ms, 120000);
	CHECK_EQ(c.workers, 6);
	CHECK_EQ(c.log_level, LOG_DEBUG);
	config_free(&c);
}

TEST(enum_and_auto_values)
{
	static const struct {
		const char *name;
		enum log_level l;
	} levels[] = {
		{ "error", LOG_ERROR },
		{ "warn", LOG_WARN },
		{ "info", LOG_INFO },
		{ "debug", LOG_DEBUG },
	};
	static const struct {
		const char *name;
		enum t1_mode m;
	} modes[] = { { "auto", T1_AUTO }, { "on", T1_ON }, { "off", T1_OFF } };
	struct kvtd_config c;
	char text[128];

	config_defaults(&c);
	for (size_t i = 0; i < sizeof(levels) / sizeof(levels[0]); i++) {
		c.log_level = levels[i].l == LOG_ERROR ? LOG_DEBUG : LOG_ERROR;
		snprintf(text, sizeof(text), "log_level = %s", levels[i].name);
		parse_ok(&c, text);
		CHECK_EQ(c.log_level, levels[i].l);
	}
	for (size_t i = 0; i < sizeof(modes) / sizeof(modes[0]); i++) {
		c.host_hugepages = c.host_mlock = modes[i].m == T1_ON ? T1_OFF : T1_ON;
		snprintf(text, sizeof(text), "host_hugepages = %s\nhost_mlock = %s", modes[i].name,
			 modes[i].name);
		parse_ok(&c, text);
		CHECK_EQ(c.host_hugepages, modes[i].m);
		CHECK_EQ(c.host_mlock, modes[i].m);
	}
	c.host_capacity = 5 * GIB;
	c.workers = 9;
	parse_ok(&c, "host_capacity = auto\nworkers = auto\n");
	CHECK_EQ(c.host_capacity, 0);
	CHECK_EQ(c.workers, 0);
	/* socket_mode without the leading 0 is still octal */
	parse_ok(&c, "socket_mode = 640");
	CHECK_EQ(c.socket_mode, 0640);
	parse_ok(&c, "socket_mode = 0");
	CHECK_EQ(c.socket_mode, 0);
	parse_ok(&c, "socket_mode = 0777");
	CHECK_EQ(c.socket_mode, 0777);
}

/* Each numeric key at both ends of its range, and just outside them. */
TEST(ranges_accept_bounds_and_reject_beyond)
{
	static const struct {
		const char *key;
		const char *ok[4];
		const char *bad[4];
	} r[] = {
		{ "max_frame", { "4096", "4KiB", "64MiB", "67108864" },
		  { "4095", "67108865", "128MiB", "0" } },
		{ "max_inflight", { "1", "65536" }, { "0", "65537" } },
		{ "max_batch", { "1", "1048576" }, { "0", "1048577" } },
		{ "max_connections", { "1", "1048576" }, { "0", "1048577" } },
		{ "max_regions", { "1", "65536" }, { "0", "65537" } },
		{ "workers", { "1", "256", "auto" }, { "0", "257" } },
		{ "host_chunk", { "4KiB", "64MiB", "8192", "1MiB" },
		  { "2KiB", "128MiB", "96KiB", "0" } },
		{ "host_capacity", { "1MiB", "1048577", "auto", "16TiB" },
		  { "1048575", "0", "1KiB" } },
		{ "max_region_size", { "1", "1TiB" }, { "0" } },
		{ "max_block_size", { "1", "64GiB" }, { "0" } },
		{ "tenant_quota", { "0", "1", "1TiB" }, { "-1" } },
		{ "idle_timeout", { "0", "576h", "1ms" }, { "577h", "2073600001ms" } },
		{ "handshake_timeout", { "0", "576h" }, { "577h" } },
		{ "frame_timeout", { "0", "576h" }, { "577h" } },
		{ "socket_mode", { "0", "0777", "777" }, { "01000", "1000", "0778", "8" } },
		{ "nvme_segment_size", { "64MiB", "64GiB" }, { "63MiB", "65GiB", "0" } },
		{ "nvme_zstd_level", { "1", "19" }, { "0", "20" } },
		{ "nvme_free_target", { "1", "90" }, { "0", "91" } },
		{ "nvme_staging", { "1MiB", "1TiB" }, { "1048575", "0" } },
		{ "nvme_write_window", { "64MiB", "1TiB" }, { "67108863", "1MiB", "0" } },
		{ "readahead", { "0", "1024" }, { "1025", "-1" } },
		{ "io_queue_depth", { "1", "4096" }, { "0", "4097" } },
		{ "mem_value_max", { "1", "64MiB" }, { "0", "65MiB" } },
		{ "gpu_max_regions", { "1", "65536" }, { "0", "65537" } },
		{ "gpu_max_pages", { "1", "16777216" }, { "0", "16777217" } },
	};
	char text[160], err[512];

	for (size_t i = 0; i < sizeof(r) / sizeof(r[0]); i++) {
		for (size_t j = 0; j < 4 && r[i].ok[j]; j++) {
			struct kvtd_config c;
			config_defaults(&c);
			snprintf(text, sizeof(text), "%s = %s\n", r[i].key, r[i].ok[j]);
			parse_ok(&c, text);
			config_free(&c);
		}
		for (size_t j = 0; j < 4 && r[i].bad[j]; j++) {
			snprintf(text, sizeof(text), "%s = %s\n", r[i].key, r[i].bad[j]);
			parse_bad(text, err, sizeof(err));
			CHECK_MSG(strstr(err, r[i].key), "message for \"%s\" lacks the key: %s",
				  text, err);
		}
	}
}

/* A bad value on line N: the message starts "test.conf:N: key:" and says what is expected. */
TEST(bad_values_name_line_key_and_expectation)
{
	static const struct {
		const char *key, *val;
	} bad[] = {
		{ "socket", "" },
		{ "socket_mode", "0778" },
		{ "socket_mode", "rw-rw----" },
		{ "socket_mode", "0x1ff" },
		{ "data_dir", "" },
		{ "host_capacity", "lots" },
		{ "host_capacity", "1GB" },
		{ "host_capacity", "Auto" },
		{ "host_chunk", "96KiB" },
		{ "host_chunk", "64kB" },
		{ "host_hugepages", "yes" },
		{ "host_hugepages", "ON" },
		{ "host_hugepages", "" },
		{ "host_mlock", "1" },
		{ "host_policy", "LRU" },
		{ "host_policy", "arc" },
		{ "nvme_codec", "lz4" },
		{ "nvme_admission", "never" },
		{ "nvme_write", "around" },
		{ "nvme_write_window", "1GB" },
		{ "io_backend", "aio" },
		{ "gpu_backend", "rocm" },
		{ "gpu_pool_size", "8GB" },
		{ "tenant_quota", "1MB" },
		{ "tenant_quota", "none" },
		{ "quota", "1000" },
		{ "quota", "1000:" },
		{ "quota", ":1GiB" },
		{ "quota", "x:1GiB" },
		{ "quota", "-1:1GiB" },
		{ "quota", "4294967296:1GiB" },
		{ "quota", "1000:1GB" },
		{ "quota", "1000:1GiB:2" },
		{ "uid_map", "1000" },
		{ "uid_map", "1000:x" },
		{ "uid_map", "-1:2" },
		{ "uid_map", "4294967296:1" },
		{ "uid_map", "1:4294967296" },
		{ "uid_map", "1:2:3" },
		{ "max_connections", "auto" },
		{ "max_connections", "1K" },
		{ "max_connections", "ten" },
		{ "max_frame", "1MB" },
		{ "max_inflight", "-5" },
		{ "max_batch", "4096.0" },
		{ "max_regions", "" },
		{ "max_region_size", "big" },
		{ "max_block_size", "1GB" },
		{ "idle_timeout", "1d" },
		{ "idle_timeout", "-1" },
		{ "idle_timeout", "10 s" },
		{ "handshake_timeout", "soon" },
		{ "frame_timeout", "1.5s" },
		{ "workers", "-1" },
		{ "workers", "Auto" },
		{ "workers", "four" },
		{ "log_level", "verbose" },
		{ "log_level", "warning" },
		{ "log_level", "INFO" },
		{ "log_level", "" },
	};
	char text[512], err[512], want[128];

	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		unsigned line = 2 + (unsigned)(i % 5) * 2; /* vary where it sits */
		size_t n = 0;
		text[0] = 0;
		/* valid lines, comments and blank lines before the bad one */
		for (unsigned l = 1; l < line; l++) {
			static const char *const filler[] = { "", "# comment", "max_batch = 8" };
			n += (size_t)snprintf(text + n, sizeof(text) - n, "%s\n", filler[l % 3]);
		}
		snprintf(text + n, sizeof(text) - n, "%s = %s\nmax_inflight = 9\n", bad[i].key,
			 bad[i].val);
		parse_bad(text, err, sizeof(err));
		snprintf(want, sizeof(want), "test.conf:%u: %s: ", line, bad[i].key);
		CHECK_MSG(strncmp(err, want, strlen(want)) == 0,
			  "%s = %s on line %u: message \"%s\", expected it to start \"%s\"",
			  bad[i].key, bad[i].val, line, err, want);
		CHECK_MSG(strstr(err, "expected"), "message says nothing of what is expected: %s",
			  err);
	}
}

TEST(long_paths_are_rejected)
{
	char text[5000], err[512];
	char path[4200];

	/* sun_path holds 107 bytes and a NUL */
	memset(path, 'a', sizeof(path));
	path[0] = '/';
	path[107] = 0;
	snprintf(text, sizeof(text), "socket = %s\n", path);
	struct kvtd_config c;
	config_defaults(&c);
	parse_ok(&c, text);
	CHECK_EQ(strlen(c.socket_path), 107);
	path[107] = 'a';
	path[108] = 0;
	snprintf(text, sizeof(text), "\nsocket = %s\n", path);
	parse_bad(text, err, sizeof(err));
	CHECK_MSG(strncmp(err, "test.conf:2: socket: ", 21) == 0, "%s", err);

	memset(path, 'a', sizeof(path));
	path[0] = '/';
	path[4095] = 0;
	snprintf(text, sizeof(text), "data_dir = %s\n", path);
	parse_ok(&c, text);
	CHECK_EQ(strlen(c.data_dir), 4095);
	path[4095] = 'a';
	path[4096] = 0;
	snprintf(text, sizeof(text), "data_dir = %s\n", path);
	parse_bad(text, err, sizeof(err));
	CHECK_MSG(strncmp(err, "test.conf:1: data_dir: ", 23) == 0, "%s", err);
}

TEST(unknown_keys_and_malformed_lines_name_the_line)
{
	static const struct {
		const char *text;
		const char *want; /* message prefix */
		const char *also; /* and somewhere in it */
	} cases[] = {
		{ "max_batch = 8\n\n# x\nfoo = 1\n", "test.conf:4: unknown key 'foo'", NULL },
		{ "Socket = /tmp/x\n", "test.conf:1: unknown key 'Socket'", NULL },
		{ "max_batch = 8\nmax-batch = 8\n", "test.conf:2: unknown key 'max-batch'", NULL },
		{ "\n\nsocket_path = /tmp/x\n", "test.conf:3: unknown key 'socket_path'", NULL },
		{ "max_batch 8\n", "test.conf:1: ", "key = value" },
		{ "# ok\n= 5\n", "test.conf:2: ", "missing key" },
		{ "max_batch = 8 # eight\n", "test.conf:1: max_batch: ",
		  "comments must be on a line of their own" },
		{ "max_batch = 8\r\nfoo=1\r\n", "test.conf:2: unknown key 'foo'", NULL },
	};
	char err[512];

	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		parse_bad(cases[i].text, err, sizeof(err));
		CHECK_MSG(strncmp(err, cases[i].want, strlen(cases[i].want)) == 0,
			  "message \"%s\", expected it to start \"%s\"", err, cases[i].want);
		CHECK_MSG(!cases[i].also || strstr(err, cases[i].also),
			  "message \"%s\" lacks \"%s\"", err, cases[i].also);
	}
}

TEST(parsing_stops_at_the_first_error)
{
	struct kvtd_config c;
	char err[256];

	config_defaults(&c);
	int rc = config_parse_text(&c, "max_batch = 8\nmax_batch = 0\nmax_inflight = 9\n", "f",
				   err, sizeof(err));
	CHECK_RC(rc, -EINVAL);
	CHECK_EQ(c.max_batch, 8);
	CHECK_EQ(c.max_inflight, 64);
}

TEST(comments_blank_lines_and_whitespace)
{
	struct kvtd_config c;
	config_defaults(&c);
	parse_ok(&c, "# a comment\n"
		     "   # an indented comment\n"
		     "\n"
		     "\t \n"
		     "#max_batch = 1\n"
		     "  max_batch\t=\t 77  \n"
		     "max_inflight=5\r\n"
		     "socket =   /tmp/with #hash and spaces.sock   \n"
		     "log_level = warn"); /* no final newline */
	CHECK_EQ(c.max_batch, 77);
	CHECK_EQ(c.max_inflight, 5);
	CHECK(strcmp(c.socket_path, "/tmp/with #hash and spaces.sock") == 0);
	CHECK_EQ(c.log_level, LOG_WARN);

	/* empty and comment-only texts change nothing */
	struct kvtd_config d;
	config_defaults(&d);
	struct kvtd_config e = d;
	parse_ok(&d, "");
	parse_ok(&d, "\n\n# nothing\n");
	CHECK_SAME_CONFIG(&d, &e);
}

TEST(later_value_wins)
{
	struct kvtd_config c;
	config_defaults(&c);
	parse_ok(&c, "max_batch = 10\nsocket = /a\nmax_batch = 20\nsocket = /b\n");
	CHECK_EQ(c.max_batch, 20);
	CHECK(strcmp(c.socket_path, "/b") == 0);
}

TEST(quota_repeats_append_and_replace_per_tenant)
{
	struct kvtd_config c;
	config_defaults(&c);
	parse_ok(&c, "quota = 1000:8GiB\n"
		     "quota = 1001 : 1MiB\n"
		     "quota=0:0\n"
		     "quota = 4294967295:1TiB\n");
	CHECK_EQ(c.nquotas, 4);
	CHECK_EQ(c.quotas[0].tenant, 1000);
	CHECK_EQ(c.quotas[0].bytes, 8 * GIB);
	CHECK_EQ(c.quotas[1].tenant, 1001);
	CHECK_EQ(c.quotas[1].bytes, MIB);
	CHECK_EQ(c.quotas[2].tenant, 0);
	CHECK_EQ(c.quotas[2].bytes, 0);
	CHECK_EQ(c.quotas[3].tenant, UINT32_MAX);
	CHECK_EQ(c.quotas[3].bytes, TIB);
	/* the same tenant again: its entry changes, no new one */
	parse_ok(&c, "quota = 1001:2MiB\n");
	CHECK_EQ(c.nquotas, 4);
	CHECK_EQ(c.quotas[1].bytes, 2 * MIB);
	config_free(&c);
	CHECK(c.quotas == NULL && c.nquotas == 0);
	config_free(&c); /* twice is harmless */
	config_free(NULL);
}

TEST(uid_map_repeats_append_and_replace_per_uid)
{
	struct kvtd_config c;
	config_defaults(&c);
	parse_ok(&c, "uid_map = 1000:1\nuid_map = 1001:1\nuid_map = 0 : 7\n");
	CHECK_EQ(c.nuid_maps, 3);
	CHECK_EQ(c.uid_maps[0].uid, 1000);
	CHECK_EQ(c.uid_maps[0].tenant, 1);
	CHECK_EQ(c.uid_maps[1].uid, 1001);
	CHECK_EQ(c.uid_maps[1].tenant, 1);
	CHECK_EQ(c.uid_maps[2].uid, 0);
	CHECK_EQ(c.uid_maps[2].tenant, 7);
	parse_ok(&c, "uid_map = 1000:5\n");
	CHECK_EQ(c.nuid_maps, 3);
	CHECK_EQ(c.uid_maps[0].uid, 1000);
	CHECK_EQ(c.uid_maps[0].tenant, 5);
	/* many entries: the arrays grow */
	char text[64];
	for (unsigned i = 0; i < 300; i++) {
		snprintf(text, sizeof(text), "uid_map = %u:%u\nquota = %u:%uKiB", 5000 + i, i, i,
			 i);
		parse_ok(&c, text);
	}
	CHECK_EQ(c.nuid_maps, 303);
	CHECK_EQ(c.uid_maps[302].uid, 5299);
	CHECK_EQ(c.uid_maps[302].tenant, 299);
	CHECK_EQ(c.nquotas, 300);
	CHECK_EQ(c.quotas[299].bytes, 299 * KIB);
	config_free(&c);
	CHECK(c.uid_maps == NULL && c.nuid_maps == 0);
}

TEST(config_set_applies_one_override)
{
	struct kvtd_config c;
	char err[256];

	config_defaults(&c);
	CHECK_RC(config_set(&c, "max_batch=8", err, sizeof(err)), 0);
	CHECK_EQ(c.max_batch, 8);
	CHECK_RC(config_set(&c, "  max_batch =  9 ", err, sizeof(err)), 0);
	CHECK_EQ(c.max_batch, 9);
	CHECK_RC(config_set(&c, "socket=/tmp/x=y.sock", err, sizeof(err)), 0);
	CHECK(strcmp(c.socket_path, "/tmp/x=y.sock") == 0);
	CHECK_RC(config_set(&c, "quota=5:1GiB", err, sizeof(err)), 0);
	CHECK_RC(config_set(&c, "quota=6:2GiB", err, sizeof(err)), 0);
	CHECK_EQ(c.nquotas, 2);
	CHECK_EQ(c.quotas[1].bytes, 2 * GIB);

	static const struct {
		const char *kv, *want;
	} bad[] = {
		{ "nokey=1", "command line: unknown key 'nokey'" },
		{ "max_batch=0", "command line: max_batch: bad value '0'" },
		{ "max_batch", "command line: expected" },
		{ "=8", "command line: missing key" },
		{ "", "command line: expected" },
		{ "# max_batch=1", "command line: expected" },
		{ "socket=/tmp/a\nmax_batch=1", "command line: " },
	};
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		err[0] = 0;
		int rc = config_set(&c, bad[i].kv, err, sizeof(err));
		CHECK_MSG(rc == -EINVAL, "\"%s\" returned %d", bad[i].kv, rc);
		CHECK_MSG(strncmp(err, bad[i].want, strlen(bad[i].want)) == 0,
			  "\"%s\": message \"%s\", expected it to start \"%s\"", bad[i].kv, err,
			  bad[i].want);
	}
	/* the newline case must not have applied either half */
	CHECK(strcmp(c.socket_path, "/tmp/x=y.sock") == 0);
	CHECK_EQ(c.max_batch, 9);
	config_free(&c);
}

TEST(small_or_missing_error_buffers_are_safe)
{
	struct kvtd_config c;
	char err[8];

	config_defaults(&c);
	memset(err, 'x', sizeof(err));
	CHECK_RC(config_parse_text(&c, "a_rather_long_unknown_key = 1", "file", err, sizeof(err)),
		 -EINVAL);
	CHECK(memchr(err, 0, sizeof(err)) != NULL);
	CHECK(strncmp(err, "file:1:", 7) == 0);
	CHECK_RC(config_parse_text(&c, "nope = 1", "file", NULL, 0), -EINVAL);
	CHECK_RC(config_set(&c, "nope=1", NULL, 0), -EINVAL);
	CHECK_RC(config_parse_file(&c, "/nonexistent/kvtierd.conf", NULL, 0), -ENOENT);
}

TEST(log_level_names)
{
	CHECK(strcmp(log_level_name(LOG_ERROR), "error") == 0);
	CHECK(strcmp(log_level_name(LOG_WARN), "warn") == 0);
	CHECK(strcmp(log_level_name(LOG_INFO), "info") == 0);
	CHECK(strcmp(log_level_name(LOG_DEBUG), "debug") == 0);
	CHECK(log_level_name((enum log_level)42) != NULL);
	CHECK(strcmp(log_level_name((enum log_level)42), "debug") != 0);
}

/* ---- printing ----------------------------------------------------------------- */

static void roundtrip(const struct kvtd_config *c)
{
	struct kvtd_config back;
	char err[512] = "";
	char *text = print_to_string(c);

	garbage_config(&back);
	int rc = config_parse_text(&back, text, "printed", err, sizeof(err));
	CHECK_MSG(rc == 0, "printed config does not parse: %s\n%s", err, text);
	const char *d = config_diff(c, &back);
	CHECK_MSG(!d, "printed config reads back different in %s:\n%s", d, text);
	config_free(&back);
	free(text);
}

TEST(print_roundtrips_defaults)
{
	struct kvtd_config c;
	config_defaults(&c);
	roundtrip(&c);
	/* auto stays auto before config_finish */
	char *text = print_to_string(&c);
	CHECK(strstr(text, "\nhost_capacity = auto\n"));
	CHECK(strstr(text, "\nworkers = auto\n"));
	CHECK(strstr(text, "\nsocket_mode = 0660\n"));
	CHECK(strstr(text, "\nmax_frame = 4MiB\n"));
	CHECK(strstr(text, "\nidle_timeout = 10m\n"));
	free(text);
}

TEST(print_roundtrips_every_key_and_odd_values)
{
	struct kvtd_config c;
	config_defaults(&c);
	parse_ok(&c, "socket = /tmp/odd #name.sock\n"
		     "socket_mode = 0\n"
		     "data_dir = relative/dir\n"
		     "host_capacity = 1048577\n"
		     "host_chunk = 4KiB\n"
		     "host_hugepages = off\n"
		     "host_mlock = on\n"
		     "tenant_quota = 1536KiB\n"
		     "quota = 3:0\nquota = 1:4097\nquota = 2:18446744073709551615\n"
		     "uid_map = 4294967295:0\nuid_map = 0:4294967295\n"
		     "max_connections = 1048576\n"
		     "max_frame = 4097\n"
		     "max_inflight = 65536\n"
		     "max_batch = 1\n"
		     "max_regions = 65536\n"
		     "max_region_size = 18446744073709551615\n"
		     "max_block_size = 1\n"
		     "idle_timeout = 1500ms\n"
		     "handshake_timeout = 0\n"
		     "frame_timeout = 90s\n"
		     "workers = 256\n"
		     "log_level = error\n");
	roundtrip(&c);
	char *text = print_to_string(&c);
	CHECK(strstr(text, "\nsocket_mode = 0000\n"));
	CHECK(strstr(text, "\ntenant_quota = 1536KiB\n"));
	CHECK(strstr(text, "\nquota = 1:4097\n"));
	CHECK(strstr(text, "\nidle_timeout = 1500ms\n"));
	CHECK(strstr(text, "\nframe_timeout = 90s\n"));
	free(text);
	config_free(&c);
}

TEST(print_roundtrips_after_finish)
{
	struct kvtd_config c, back;
	char err[512] = "";

	config_defaults(&c);
	parse_ok(&c, "quota = 9:1GiB\nuid_map = 1000:9\n");
	CHECK_MSG(config_finish(&c, err, sizeof(err)) == 0, "%s", err);
	roundtrip(&c);
	/* and finishing the printed config changes nothing */
	char *text = print_to_string(&c);
	config_defaults(&back);
	parse_ok(&back, text);
	CHECK_MSG(config_finish(&back, err, sizeof(err)) == 0, "%s", err);
	CHECK_SAME_CONFIG(&c, &back);
	CHECK(!strstr(text, "host_capacity = auto"));
	CHECK(!strstr(text, "workers = auto"));
	free(text);
	config_free(&c);
	config_free(&back);
}

/* ---- config_finish ------------------------------------------------------------- */

static uint64_t expected_auto_capacity(uint64_t chunk)
{
	uint64_t ram = (uint64_t)sysconf(_SC_PHYS_PAGES) * (uint64_t)sysconf(_SC_PAGE_SIZE);
	uint64_t cap = ram / 8;
	if (cap < 64 * MIB)
		cap = 64 * MIB;
	if (cap > 8 * GIB)
		cap = 8 * GIB;
	return cap / chunk * chunk;
}

TEST(finish_resolves_auto_host_capacity)
{
	static const uint32_t chunks[] = { 4096, 64 << 10, 2u << 20, 64u << 20 };
	char err[512] = "";

	CHECK(sysconf(_SC_PHYS_PAGES) > 0);
	for (size_t i = 0; i < sizeof(chunks) / sizeof(chunks[0]); i++) {
		struct kvtd_config c;
		config_defaults(&c);
		c.host_chunk = chunks[i];
		CHECK_MSG(config_finish(&c, err, sizeof(err)) == 0, "%s", err);
		CHECK_EQ(c.host_capacity, expected_auto_capacity(c.host_chunk));
		CHECK(c.host_capacity >= 64 * MIB);
		CHECK(c.host_capacity <= 8 * GIB);
		CHECK_EQ(c.host_capacity % c.host_chunk, 0);
	}
}

TEST(finish_rounds_explicit_capacity_to_chunks)
{
	struct kvtd_config c;
	char err[512] = "";

	config_defaults(&c);
	parse_ok(&c, "host_capacity = 1048577\nhost_chunk = 4KiB\n");
	CHECK_MSG(config_finish(&c, err, sizeof(err)) == 0, "%s", err);
	CHECK_EQ(c.host_capacity, MIB);

	config_defaults(&c);
	parse_ok(&c, "host_capacity = 100MiB\nhost_chunk = 64MiB\n");
	CHECK_MSG(config_finish(&c, err, sizeof(err)) == 0, "%s", err);
	CHECK_EQ(c.host_capacity, 64 * MIB);

	/* max_block_size above the tier is allowed (PUTs of such blocks get EFBIG) */
	config_defaults(&c);
	parse_ok(&c, "host_capacity = 16MiB\nmax_block_size = 1GiB\n");
	CHECK_MSG(config_finish(&c, err, sizeof(err)) == 0, "%s", err);
	CHECK_EQ(c.host_capacity, 16 * MIB);

	config_defaults(&c);
	parse_ok(&c, "host_capacity = 1MiB\nhost_chunk = 64MiB\n");
	CHECK_RC(config_finish(&c, err, sizeof(err)), -EINVAL);
	CHECK_MSG(strstr(err, "host_capacity") && strstr(err, "host_chunk"), "%s", err);
}

TEST(finish_resolves_auto_workers)
{
	struct kvtd_config c;
	char err[512] = "";
	long n = sysconf(_SC_NPROCESSORS_ONLN);
	uint32_t want = n < 2 ? 2 : n > 16 ? 16 : (uint32_t)n;

	config_defaults(&c);
	CHECK_MSG(config_finish(&c, err, sizeof(err)) == 0, "%s", err);
	CHECK_EQ(c.workers, want);
	CHECK(c.workers >= 2 && c.workers <= 16);

	config_defaults(&c);
	c.workers = 1; /* explicit values are kept, even below the auto minimum */
	CHECK_MSG(config_finish(&c, err, sizeof(err)) == 0, "%s", err);
	CHECK_EQ(c.workers, 1);
}

/* Run the rest of a case in a fresh temporary directory; buf gets its path. */
static void enter_tmpdir(char *buf, size_t cap)
{
	snprintf(buf, cap, "/tmp/kvt_cfg_XXXXXX");
	CHECK(mkdtemp(buf));
	CHECK(chdir(buf) == 0);
	/* getcwd, not buf: /tmp may be a symlink */
	CHECK(getcwd(buf, cap));
}

TEST(finish_makes_relative_paths_absolute)
{
	char dir[PATH_MAX], want[PATH_MAX + 64], err[512] = "";
	struct kvtd_config c;

	enter_tmpdir(dir, sizeof(dir));
	config_defaults(&c);
	CHECK_MSG(config_finish(&c, err, sizeof(err)) == 0, "%s", err);
	snprintf(want, sizeof(want), "%s/run/kvtierd.sock", dir);
	CHECK_MSG(strcmp(c.socket_path, want) == 0, "%s != %s", c.socket_path, want);
	snprintf(want, sizeof(want), "%s/run/data", dir);
	CHECK_MSG(strcmp(c.data_dir, want) == 0, "%s != %s", c.data_dir, want);

	/* finishing again is a no-op */
	struct kvtd_config again = c;
	CHECK_MSG(config_finish(&again, err, sizeof(err)) == 0, "%s", err);
	CHECK_SAME_CONFIG(&c, &again);

	config_defaults(&c);
	parse_ok(&c, "socket = ./x.sock\ndata_dir = /abs/data\n");
	CHECK_MSG(config_finish(&c, err, sizeof(err)) == 0, "%s", err);
	snprintf(want, sizeof(want), "%s/x.sock", dir);
	CHECK_MSG(strcmp(c.socket_path, want) == 0, "%s != %s", c.socket_path, want);
	CHECK(strcmp(c.data_dir, "/abs/data") == 0);

	/* from the root directory there is no doubled slash */
	CHECK(chdir("/") == 0);
	config_defaults(&c);
	CHECK_MSG(config_finish(&c, err, sizeof(err)) == 0, "%s", err);
	CHECK(strcmp(c.socket_path, "/run/kvtierd.sock") == 0);
	CHECK(strcmp(c.data_dir, "/run/data") == 0);
	rmdir(dir);
}

TEST(finish_reports_a_vanished_working_directory)
{
	char dir[PATH_MAX], err[512] = "";
	struct kvtd_config c;

	enter_tmpdir(dir, sizeof(dir));
	CHECK(rmdir(dir) == 0); /* getcwd now fails with ENOENT */
	config_defaults(&c);
	parse_ok(&c, "socket = /abs.sock\n");
	CHECK_RC(config_finish(&c, err, sizeof(err)), -EINVAL);
	CHECK_MSG(strncmp(err, "data_dir: ", 10) == 0 && strstr(err, strerror(ENOENT)), "%s",
		  err);
	/* absolute paths need no working directory */
	config_defaults(&c);
	parse_ok(&c, "socket = /abs.sock\ndata_dir = /abs\n");
	CHECK_MSG(config_finish(&c, err, sizeof(err)) == 0, "%s", err);
}

TEST(finish_rejects_a_newline_from_the_working_directory)
{
	char dir[PATH_MAX], err[512] = "";
	struct kvtd_config c;

	/* config_print writes a path on one line, so it must not hold a newline */
	snprintf(dir, sizeof(dir), "/tmp/kvt_cfg\nXXXXXX");
	CHECK(mkdtemp(dir));
	CHECK(chdir(dir) == 0);
	config_defaults(&c);
	CHECK_RC(config_finish(&c, err, sizeof(err)), -EINVAL);
	CHECK_MSG(strncmp(err, "socket: ", 8) == 0 && strstr(err, "newline"), "%s", err);
	rmdir(dir);
}

TEST(finish_rejects_socket_path_beyond_sun_path)
{
	char dir[PATH_MAX], rel[128], text[256], err[512] = "";
	struct kvtd_config c;

	enter_tmpdir(dir, sizeof(dir));
	size_t dl = strlen(dir);
	CHECK(dl + 1 < 107);
	/* exactly 107 bytes once absolute: fits */
	size_t fit = 107 - dl - 1;
	memset(rel, 's', fit);
	rel[fit] = 0;
	config_defaults(&c);
	snprintf(text, sizeof(text), "socket = %s\n", rel);
	parse_ok(&c, text);
	CHECK_MSG(config_finish(&c, err, sizeof(err)) == 0, "%s", err);
	CHECK_EQ(strlen(c.socket_path), 107);

	/* one more byte: an error that names the key and the limit */
	rel[fit] = 's';
	rel[fit + 1] = 0;
	config_defaults(&c);
	snprintf(text, sizeof(text), "socket = %s\n", rel);
	parse_ok(&c, text);
	CHECK_RC(config_finish(&c, err, sizeof(err)), -EINVAL);
	CHECK_MSG(strncmp(err, "socket:", 7) == 0 && strstr(err, "107"), "%s", err);
	rmdir(dir);
}

TEST(finish_validates_values_set_by_code)
{
	static const char *const want[] = {
		"max_frame", "host_chunk", "host_chunk", "log_level", "socket", "host_hugepages",
		"max_batch", "idle_timeout", "socket_mode", "quota",
	};
	char err[512];

	for (size_t i = 0; i < sizeof(want) / sizeof(want[0]); i++) {
		struct kvtd_config c;
		config_defaults(&c);
		switch (i) {
		case 0: c.max_frame = 100; break;
		case 1: c.host_chunk = 3000; break;
		case 2: c.host_chunk = 96 << 10; break;
		case 3: c.log_level = (enum log_level)9; break;
		case 4: c.socket_path[0] = 0; break;
		case 5: c.host_hugepages = (enum t1_mode)7; break;
		case 6: c.max_batch = 0; break;
		case 7: c.idle_timeout_ms = UINT64_MAX; break;
		case 8: c.socket_mode = 01777; break;
		case 9: c.nquotas = 2; break; /* count without an array */
		}
		err[0] = 0;
		CHECK_MSG(config_finish(&c, err, sizeof(err)) == -EINVAL, "case %zu accepted", i);
		CHECK_MSG(strncmp(err, want[i], strlen(want[i])) == 0,
			  "case %zu: message \"%s\" should name %s", i, err, want[i]);
	}
}

/* ---- files ------------------------------------------------------------------------ */

static void write_file(const char *path, const char *data, size_t len)
{
	int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
	CHECK(fd >= 0);
	CHECK(write(fd, data, len) == (ssize_t)len);
	CHECK(close(fd) == 0);
}

TEST(parse_file_reads_and_names_the_file)
{
	char dir[PATH_MAX], path[PATH_MAX + 32], err[PATH_MAX + 256];
	struct kvtd_config c;
	const char *ok = "# test\nmax_batch = 12\nquota = 4:1MiB\n";
	const char *bad = "max_batch = 12\n\nmax_inflight = lots\n";

	enter_tmpdir(dir, sizeof(dir));
	snprintf(path, sizeof(path), "%s/kvtierd.conf", dir);
	write_file(path, ok, strlen(ok));
	config_defaults(&c);
	CHECK_RC(config_parse_file(&c, path, err, sizeof(err)), 0);
	CHECK_EQ(c.max_batch, 12);
	CHECK_EQ(c.nquotas, 1);
	config_free(&c);

	write_file(path, bad, strlen(bad));
	config_defaults(&c);
	CHECK_RC(config_parse_file(&c, path, err, sizeof(err)), -EINVAL);
	char want[PATH_MAX + 64];
	snprintf(want, sizeof(want), "%s:3: max_inflight: ", path);
	CHECK_MSG(strncmp(err, want, strlen(want)) == 0, "message \"%s\"", err);

	/* an empty file is a valid, empty configuration */
	write_file(path, "", 0);
	config_defaults(&c);
	CHECK_RC(config_parse_file(&c, path, err, sizeof(err)), 0);
	CHECK_EQ(c.max_batch, 4096);

	/* a NUL byte would silently cut the text short */
	write_file(path, "max_batch = 1\0\nmax_inflight = 2\n", 32);
	CHECK_RC(config_parse_file(&c, path, err, sizeof(err)), -EINVAL);
	CHECK_MSG(strstr(err, path) && strstr(err, "NUL"), "%s", err);
	unlink(path);
	rmdir(dir);
}

TEST(parse_file_missing_or_directory)
{
	char err[512];
	struct kvtd_config c;

	config_defaults(&c);
	CHECK_RC(config_parse_file(&c, "/nonexistent-kvtier/kvtierd.conf", err, sizeof(err)),
		 -ENOENT);
	CHECK_MSG(strstr(err, "/nonexistent-kvtier/kvtierd.conf") && strstr(err, strerror(ENOENT)),
		  "%s", err);
	CHECK_RC(config_parse_file(&c, "/", err, sizeof(err)), -EISDIR);
	CHECK_MSG(strstr(err, strerror(EISDIR)), "%s", err);
}

TEST(parse_file_size_limit_is_one_mib)
{
	char dir[PATH_MAX], path[PATH_MAX + 32], err[PATH_MAX + 256];
	struct kvtd_config c;
	size_t max = 1u << 20;
	char *big = malloc(max + 1);

	CHECK(big);
	enter_tmpdir(dir, sizeof(dir));
	snprintf(path, sizeof(path), "%s/big.conf", dir);
	/* exactly 1 MiB of comment lines, then the setting: accepted */
	memset(big, '#', max);
	for (size_t i = 63; i < max; i += 64)
		big[i] = '\n';
	memcpy(big + max - 15, "\nmax_batch = 3\n", 15);
	write_file(path, big, max);
	config_defaults(&c);
	CHECK_MSG(config_parse_file(&c, path, err, sizeof(err)) == 0, "%s", err);
	CHECK_EQ(c.max_batch, 3);

	/* one byte more: refused, and nothing applied */
	big[max] = '\n';
	write_file(path, big, max + 1);
	config_defaults(&c);
	CHECK_RC(config_parse_file(&c, path, err, sizeof(err)), -EFBIG);
	CHECK_MSG(strstr(err, path) && strstr(err, strerror(EFBIG)), "%s", err);
	CHECK_EQ(c.max_batch, 4096);
	free(big);
	unlink(path);
	rmdir(dir);
}

/* A file of the source tree, found from the working directory or, failing that,
 * above the build's bin directory (the build lives inside the tree). */
static bool find_tree_file(const char *rel, char *buf, size_t cap)
{
	const char *bin = getenv("KVT_BIN_DIR");
	char dir[PATH_MAX];

	snprintf(buf, cap, "%s", rel);
	if (access(buf, R_OK) == 0)
		return true;
#ifdef KVT_BIN_DIR
	if (!bin)
		bin = KVT_BIN_DIR;
#endif
	if (!bin)
		return false;
	snprintf(dir, sizeof(dir), "%s", bin);
	for (char *slash; (slash = strrchr(dir, '/')) && slash > dir;) {
		*slash = 0;
		snprintf(buf, cap, "%s/%s", dir, rel);
		if (access(buf, R_OK) == 0)
			return true;
	}
	return false;
}

/* The example installed as /etc/kvtier/kvtierd.conf: valid, sets only the paths,
 * and every commented-out "#key = value" states the real default. */
TEST(installed_example_config_is_valid_and_states_the_defaults)
{
	char path[PATH_MAX + 64], err[PATH_MAX + 256];
	struct kvtd_config c, def;

	if (!find_tree_file("systemd/kvtierd.conf", path, sizeof(path)))
		test_skip("systemd/kvtierd.conf not found from the working directory "
			  "or the build directory");
	config_defaults(&c);
	CHECK_MSG(config_parse_file(&c, path, err, sizeof(err)) == 0, "%s", err);
	config_defaults(&def);
	strcpy(def.socket_path, "/run/kvtier/kvtierd.sock");
	strcpy(def.data_dir, "/var/lib/kvtier");
	CHECK_SAME_CONFIG(&c, &def);

	/* Read the text and uncomment every "#key = value" (not the repeatable
	 * keys' examples): the result must still be the defaults. */
	FILE *f = fopen(path, "r");
	CHECK(f);
	char *text = NULL;
	size_t cap = 0, len = 0;
	FILE *out = open_memstream(&text, &len);
	CHECK(out);
	char *line = NULL;
	while (getline(&line, &cap, f) > 0) {
		bool example = strncmp(line, "#quota = ", 9) == 0 ||
			       strncmp(line, "#uid_map = ", 11) == 0;
		if (line[0] == '#' && line[1] >= 'a' && line[1] <= 'z' && !example)
			fputs(line + 1, out);
		else
			fputs(line, out);
	}
	free(line);
	fclose(f);
	CHECK(fclose(out) == 0);
	for (size_t i = 0; i < NKEYS; i++) {
		const char *k = all_keys[i];
		char needle[64];
		snprintf(needle, sizeof(needle), "\n%s%s = ",
			 strcmp(k, "quota") && strcmp(k, "uid_map") ? "" : "#", k);
		CHECK_MSG(strstr(text, needle), "the example does not list %s", k);
	}
	struct kvtd_config u;
	config_defaults(&u);
	CHECK_MSG(config_parse_text(&u, text, path, err, sizeof(err)) == 0, "%s", err);
	CHECK_SAME_CONFIG(&u, &def);
	free(text);
	config_free(&c);
}

/* kvtierd.conf(5) has an entry for every key, and names no key that does not exist. */
TEST(man_page_documents_every_key)
{
	char path[PATH_MAX + 64];
	struct stat st;

	if (!find_tree_file("docs/man/kvtierd.conf.5", path, sizeof(path)))
		test_skip("docs/man/kvtierd.conf.5 not found from the working directory "
			  "or the build directory");
	FILE *f = fopen(path, "r");
	CHECK(f);
	CHECK(fstat(fileno(f), &st) == 0);
	char *man = calloc(1, (size_t)st.st_size + 1);
	CHECK(man);
	CHECK(fread(man, 1, (size_t)st.st_size, f) == (size_t)st.st_size);
	fclose(f);
	for (size_t i = 0; i < NKEYS; i++) {
		char needle[64];
		snprintf(needle, sizeof(needle), "\n.TP\n.BR %s ", all_keys[i]);
		CHECK_MSG(strstr(man, needle), "kvtierd.conf(5) has no entry for %s", all_keys[i]);
	}
	/* Each entry names a real key, and the default it states is the real one:
	 * setting the key to it must leave a default configuration unchanged. */
	for (const char *p = man; (p = strstr(p, "\n.TP\n.BR ")) != NULL;) {
		char key[64], def[64], text[160], err[256];
		p += 9;
		size_t n = strcspn(p, " \n");
		CHECK(n < sizeof(key));
		memcpy(key, p, n);
		key[n] = 0;
		struct kvtd_config c, d;
		config_defaults(&c);
		snprintf(text, sizeof(text), "%s =", key); /* no value is never valid */
		err[0] = 0;
		CHECK_RC(config_parse_text(&c, text, "man", err, sizeof(err)), -EINVAL);
		CHECK_MSG(!strstr(err, "unknown key"), "kvtierd.conf(5) documents %s: %s", key,
			  err);
		const char *eol = strchr(p, '\n');
		const char *dp = strstr(p, ", default \" ");
		if (!dp || (eol && dp > eol))
			continue; /* the repeatable keys have none */
		dp += 11;
		while (*dp == ' ')
			dp++;
		n = strcspn(dp, " \"\n");
		CHECK(n > 0 && n < sizeof(def));
		memcpy(def, dp, n);
		def[n] = 0;
		config_defaults(&d);
		snprintf(text, sizeof(text), "%s = %s", key, def);
		CHECK_MSG(config_parse_text(&d, text, "man", err, sizeof(err)) == 0, "%s", err);
		const char *diff = config_diff(&c, &d);
		CHECK_MSG(!diff, "kvtierd.conf(5) gives %s's default as %s, which is not the "
				 "default", key, def);
	}
	free(man);
}

TEST_MAIN(size_accepts_binary_suffixes, size_rejects_decimal_units_garbage_and_overflow,
	  duration_accepts_units_and_plain_seconds, duration_rejects_garbage_and_overflow,
	  defaults_match_the_spec, embedded_default_equals_config_defaults,
	  embedded_default_documents_every_key, every_key_parses, enum_and_auto_values,
	  ranges_accept_bounds_and_reject_beyond, bad_values_name_line_key_and_expectation,
	  long_paths_are_rejected, unknown_keys_and_malformed_lines_name_the_line,
	  parsing_stops_at_the_first_error, comments_blank_lines_and_whitespace, later_value_wins,
	  quota_repeats_append_and_replace_per_tenant, uid_map_repeats_append_and_replace_per_uid,
	  config_set_applies_one_override, small_or_missing_error_buffers_are_safe,
	  log_level_names, print_roundtrips_defaults, print_roundtrips_every_key_and_odd_values,
	  print_roundtrips_after_finish, finish_resolves_auto_host_capacity,
	  finish_rounds_explicit_capacity_to_chunks, finish_resolves_auto_workers,
	  finish_makes_relative_paths_absolute, finish_reports_a_vanished_working_directory,
	  finish_rejects_a_newline_from_the_working_directory,
	  finish_rejects_socket_path_beyond_sun_path,
	  finish_validates_values_set_by_code, parse_file_reads_and_names_the_file,
	  parse_file_missing_or_directory, parse_file_size_limit_is_one_mib,
	  installed_example_config_is_valid_and_states_the_defaults, man_page_documents_every_key)
