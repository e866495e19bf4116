/*
 * server.h - kvtierd's state shared by the event loop (conn.c), the request
 * handlers (dispatch.c) and statistics (stats.c). Everything here is owned by
 * the loop thread; worker threads only see copy segments (worker.h).
 */
#ifndef KVTD_SERVER_H
#define KVTD_SERVER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "config.h"
#include "proto.h"
#include "t1.h"
#include "worker.h"

/* A client's shared memory, mapped into the daemon. Reference-counted by the
 * copy jobs that use it, so UNREGISTER or a closed connection never unmaps memory
 * a worker is still copying. */
struct region {
	uint32_t id;
	uint32_t slot; /* index in the connection's region array */
	uint8_t *base;
	uint64_t size;
	unsigned refs;     /* jobs using it */
	bool unregistered; /* no longer findable; unmapped at refs == 0 */
};

/* A received file descriptor, tagged with the stream range it arrived with. */
struct rx_fd {
	int fd;
	uint64_t start, end;
};

#define CONN_MAX_FDS 8

/* Per-connection pin counts (block -> pins held by this connection). */
struct pin_entry {
	struct t1_block *block;
	uint32_t count;
};

struct tenant_counters {
	uint32_t tenant;
	uint64_t hits, misses, bytes_in, bytes_out;
};

struct conn {
	struct server *srv;
	struct conn *prev, *next; /* server's list of live connections */
	int fd;
	uint64_t serial;
	uid_t uid;
	pid_t pid;
	uint32_t tenant;
	bool admin;
	bool hello_done;
	bool closing;   /* stream-level error or shutdown: flush output, then close */
	bool dead;      /* socket closed; freed when no job refers to it */
	bool paused;    /* not reading: output backlog too large */
	bool queued_free; /* on the server's dead list */
	unsigned refs;  /* jobs in flight */
	unsigned inflight; /* requests accepted and not yet answered */

	uint8_t *rbuf;
	size_t rlen, rcap;
	uint64_t rx_base; /* stream offset of rbuf[0] */
	struct rx_fd fds[CONN_MAX_FDS];
	unsigned nfds;

	uint8_t *wbuf;
	size_t wlen, woff, wcap;
	uint32_t events; /* epoll interest currently registered */

	struct region **regions; /* index = id - 1 */
	uint32_t nregion_slots;
	uint32_t nregions;      /* live (registered) regions */
	uint32_t region_next;   /* last region id handed out */
	struct region *last_region; /* most recent lookup hit */

	struct pin_entry *pins;
	size_t npins, pins_cap;

	uint64_t created_ms, last_frame_ms, partial_since_ms, closing_since_ms;
	kvt_key last_get;  /* last key found by this connection's GETs (read-ahead) */
	bool has_last_get;

	struct gpu_conn *gpu; /* GPU regions (gpu.c); NULL until the first one */
};

struct tier2;
struct meta;
struct gpu_state;
struct gpu_conn;

struct server {
	struct kvtd_config *cfg;
	struct t1 *t1;
	struct tier2 *tier2; /* NULL when the NVMe tier is off */
	struct meta *meta;   /* contexts and memory records (ctxmem.c) */
	uint64_t ctx_refs_dropped;  /* start-up: leaked context references dropped */
	uint64_t ctx_refs_restored; /* start-up: missing context references taken */
	struct gpu_state *gpu; /* GPU transfers (gpu.c) */
	struct t1_report t1_report;
	struct workers *workers;
	int epfd, lfd, sigfd;
	bool stopping;
	bool failed; /* stopping because a store failed: exit non-zero */
	uid_t self_uid;
	uint64_t start_ms;

	struct conn *conns;
	struct conn *dead; /* closed, unreferenced, freed after the current event batch */
	uint32_t nconns;
	uint64_t next_serial;

	struct prefetch *prefetches; /* unanswered PREFETCH requests (dispatch.c) */

	struct tenant_counters *tenants;
	size_t ntenants, tenants_cap;

	/* counters */
	uint64_t conn_total, conn_rejected, requests, request_errors;
	uint64_t hits, misses, bytes_in, bytes_out;
};

uint64_t now_ms(void);

/* conn.c */
int server_listen(struct server *s);
void server_accept(struct server *s);
void conn_handle_io(struct conn *c, uint32_t events);
void conn_sweep(struct server *s);
void conn_close(struct conn *c, const char *why);
void server_free_dead(struct server *s);
/* Queue a reply frame; body may be NULL when body_len is 0. */
void conn_reply(struct conn *c, uint16_t opcode, uint64_t id, int32_t status, const uint8_t *body,
		size_t body_len);
/* Send a NOTICE and close once it is flushed. */
void conn_fatal(struct conn *c, int status, const char *msg);
/* Take the fd that arrived with the bytes at stream offset start, or -1. */
int conn_take_fd(struct conn *c, uint64_t start);
void conn_put(struct conn *c); /* drop a job's reference */
void conn_update_events(struct conn *c);
void server_begin_shutdown(struct server *s);
/* Answer request h with status alone (no body). */
void reply_status(struct conn *c, const struct kvt_hdr *h, int status);
/* Answer a batch with one status per item (PUT, GPU_PUT, DELETE, ...). */
void reply_item_status(struct conn *c, uint16_t op, uint64_t id, const int32_t *st, uint32_t n);
/* Answer a GET or GPU_GET with its n per-item results. */
void reply_get_results(struct conn *c, uint16_t op, uint64_t id, const struct kvt_get_result *res,
		       uint32_t n);
/* Answer a REGISTER or GPU_REGISTER: rc when it failed, else the new region id
 * (what names the kind of region in the debug log). */
void reply_registered(struct conn *c, const struct kvt_hdr *h, int rc, uint32_t id,
		      const char *what);
/* Handle an UNREGISTER or GPU_DESTROY: decode the region id, call unregister
 * (0, or KVT_EREGION when c has no such region) and answer with its status. */
void reply_unregister(struct conn *c, const struct kvt_hdr *h, const uint8_t *body,
		      int (*unregister)(struct conn *c, uint32_t region_id));

/* dispatch.c */
void dispatch_frame(struct conn *c, const struct kvt_hdr *h, const uint8_t *body,
		    uint64_t frame_start);
void conn_release_all(struct conn *c); /* pins and regions, at close */
/* Answer PREFETCH requests whose deadline passed; returns the next deadline (ms on
 * the now_ms clock) or UINT64_MAX. */
uint64_t prefetch_tick(struct server *s);
/*
 * Bring n blocks (keys: n wire-encoded keys of c's tenant) up to tier, and call
 * answer once: when all are there or at the deadline, with where each one is then
 * (the work goes on after it). Tier 0 (T0, the GPU pool): blocks are brought to
 * the host tier first, then copied into T0; a block T0 holds is reported as 0, one
 * only in the host tier as 1. Holds an in-flight slot of c until the answer.
 * Returns 0, KVT_EOPNOTSUPP (tier 0 without T0) or KVT_ENOMEM (then answer is
 * never called).
 */
typedef void (*pagein_answer_fn)(struct conn *c, uint64_t id, uint8_t tier, const uint8_t *tiers,
				 uint32_t n, void *arg);
int pagein_start(struct conn *c, uint64_t id, const uint8_t *keys, uint32_t n, uint8_t tier,
		 uint32_t deadline_ms, pagein_answer_fn answer, void *arg);
/* Answer every waiting PREFETCH now (shutdown). */
void prefetch_answer_all(struct server *s);
void region_put(struct region *r);
/* c's registered host region id, or NULL (GPU regions emulated on host memory). */
struct region *region_lookup(struct conn *c, uint32_t id);
/* The KVT_ status for a failed t1_reserve* (a negative errno). */
int map_reserve_error(int rc);
/* A PUT or GPU_PUT item whose key c's tenant already has: blocks are immutable,
 * so that is success; the block is touched as if written again. */
bool put_already_stored(struct conn *c, const kvt_key *key);
/* An item whose parent is given but in neither tier (it may take free room only). */
bool put_is_orphan(struct conn *c, const kvt_key *parent);

/* stats.c */
struct tenant_counters *tenant_counters(struct server *s, uint32_t tenant);
/* Build the STATS reply body for c into buf; returns its length. */
size_t stats_build(struct conn *c, uint8_t *buf, size_t cap);
#define STATS_BUF_SIZE (64u << 10)

#endif /* KVTD_SERVER_H */
