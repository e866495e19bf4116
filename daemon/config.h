/*
 * config.h - kvtierd's configuration: defaults, the key = value file format,
 * command-line overrides, and the embedded default used when no file is given.
 * Every key is documented in docs/man/kvtierd.conf.5.
 */
#ifndef KVTD_CONFIG_H
#define KVTD_CONFIG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdio.h>
#include <stdint.h>

#include "t1.h"

enum log_level { LOG_ERROR = 0, LOG_WARN = 1, LOG_INFO = 2, LOG_DEBUG = 3 };

struct uid_map_entry {
	uint32_t uid;
	uint32_t tenant;
};

struct quota_entry {
	uint32_t tenant;
	uint64_t bytes;
};

struct kvtd_config {
	char socket_path[108];     /* sun_path limit; made absolute by config_finish */
	uint32_t socket_mode;
	char data_dir[4096];

	uint64_t host_capacity;    /* resolved from "auto" by config_finish */
	uint32_t host_chunk;
	enum t1_mode host_hugepages;
	enum t1_mode host_mlock;
	uint32_t host_policy;      /* enum t1_policy */
	uint32_t host_retain_share; /* percent of host_capacity retained blocks may hold */
	uint64_t tenant_quota;
	struct quota_entry *quotas;
	size_t nquotas;
	struct uid_map_entry *uid_maps;
	size_t nuid_maps;

	uint32_t max_connections;
	uint32_t max_frame;
	uint32_t max_inflight;
	uint32_t max_batch;
	uint32_t max_regions;
	uint64_t max_region_size;
	uint64_t max_block_size;
	uint64_t idle_timeout_ms;      /* 0 = never */
	uint64_t handshake_timeout_ms; /* 0 = never */
	uint64_t frame_timeout_ms;     /* 0 = never */
	uint32_t workers;              /* resolved from "auto" by config_finish */

	/* NVMe tier (daemon/tier2.c); nvme_capacity 0 = no NVMe tier. */
	uint64_t nvme_capacity;
	uint64_t nvme_segment_size;
	uint32_t nvme_codec;            /* enum codec_id */
	uint32_t nvme_zstd_level;
	uint32_t nvme_admission;        /* enum nvme_admission */
	uint32_t nvme_write;            /* 0 = write-back, 1 = write-through */
	uint32_t nvme_free_target;      /* percent of the host tier kept free or clean */
	uint64_t nvme_staging;          /* bytes of NVMe read/write buffers in flight */
	uint64_t nvme_write_window;     /* bytes of buffer-less (raw) NVMe writes in flight */
	uint64_t nvme_commit_interval_ms;
	uint32_t readahead;             /* blocks fetched ahead along a chain */
	uint32_t io_backend;            /* enum io_backend */
	uint32_t io_queue_depth;
	uint64_t mem_value_max;         /* largest memory-record value */
	uint32_t gpu_backend;           /* enum gpu_backend_kind (gpu.h) */
	uint32_t gpu_max_regions;       /* GPU regions per connection */
	uint32_t gpu_max_pages;         /* page ids in one GPU_PUT/GPU_GET */
	uint64_t gpu_pool_size;         /* T0 pool bytes; 0 = no T0 */
	enum log_level log_level;
};

/* The text of the embedded default configuration (used when kvtierd gets no -c). */
extern const char config_embedded_default[];

/* Fill c with the built-in defaults (the same values as config_embedded_default). */
void config_defaults(struct kvtd_config *c);

/*
 * Apply a configuration text. origin names it in error messages ("FILE" or
 * "command line"). On error returns -EINVAL and writes "origin:line: why" into
 * err (errcap bytes); c may be partly updated then.
 */
int config_parse_text(struct kvtd_config *c, const char *text, const char *origin, char *err,
		      size_t errcap);

/* Read and apply a file. -errno if it cannot be read (message in err). */
int config_parse_file(struct kvtd_config *c, const char *path, char *err, size_t errcap);

/* Apply one "key=value" override from the command line. */
int config_set(struct kvtd_config *c, const char *kv, char *err, size_t errcap);

/* Resolve "auto" values and relative paths, check cross-key constraints (e.g.
 * max_frame >= 4096, chunk a power of two, socket path fits). -EINVAL + err on error. */
int config_finish(struct kvtd_config *c, char *err, size_t errcap);

/* Write the effective configuration as a valid config file (for --print-config). */
void config_print(const struct kvtd_config *c, FILE *out);

/* Free the repeatable-key arrays. NULL-safe. */
void config_free(struct kvtd_config *c);

/* Parsers, exposed for tests and reuse: "64KiB" -> bytes; "10s"/"500ms" -> ms. */
int config_parse_size(const char *s, uint64_t *out);
int config_parse_duration_ms(const char *s, uint64_t *out);

const char *log_level_name(enum log_level l);

/* The key table, for code that walks every key (reload's diff, daemon/reload.c):
 * how many keys, the name of key i, and the value of key i in c as a file would
 * say it ("64MiB", "10s"; a repeatable key's entries sorted and joined with ", ",
 * or "(none)"), written into buf (truncated to cap), which is returned. */
size_t config_key_count(void);
const char *config_key_name(size_t i);
const char *config_key_format(const struct kvtd_config *c, size_t i, char *buf, size_t cap);

#endif /* KVTD_CONFIG_H */
