/*
 * harness.h - starts a real kvtierd for integration tests, on a socket and data
 * directory of its own under a fresh temporary directory, and raw-socket helpers
 * for tests that speak the protocol by hand.
 */
#ifndef KVT_HARNESS_H
#define KVT_HARNESS_H

#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>

#include "proto.h"

struct kvtd {
	pid_t pid;
	char dir[256];   /* temporary directory holding everything below */
	char sock[320];  /* socket path */
	char conf[320];  /* configuration file written for this daemon */
	char log[320];   /* the daemon's stderr */
	bool keep_dir;   /* set by the test: kvtd_stop/kvtd_kill keep dir (for restarts) */
	long log_start;  /* where the current run's lines start in log (kvtd_restart) */
};

/*
 * Write a configuration (socket and data_dir inside a new temporary directory, a
 * small host tier, then the caller's extra "key = value" lines, which win) and
 * start the daemon from $KVT_BIN_DIR (default: the build's bin directory). Waits
 * until the socket accepts connections. Fails the test on any error.
 */
void kvtd_start(struct kvtd *d, const char *extra_config);

/* SIGTERM and wait; returns the daemon's exit status (as from waitpid) and removes
 * the temporary directory unless the daemon failed or d->keep_dir is set. */
int kvtd_stop(struct kvtd *d);

/* SIGKILL and wait (for crash tests); removes the temporary directory unless
 * d->keep_dir is set. */
void kvtd_kill(struct kvtd *d);

/*
 * Start the daemon again, stopped or killed, on the same directory and
 * configuration (set d->keep_dir before stopping it), appending to the same log;
 * kvtd_log_text then shows this run's lines only. Waits until the socket accepts
 * connections; fails the test on any error.
 */
void kvtd_restart(struct kvtd *d);

/* true while the daemon process is alive. */
bool kvtd_alive(struct kvtd *d);

/* The daemon's stderr so far (since the last kvtd_restart), in a static buffer
 * (for checking log lines). */
const char *kvtd_log_text(struct kvtd *d);

/* Path of a program from the build's bin directory, in a static buffer. */
const char *kvtd_bin(const char *name);

/* A libkvtier connection to d with a call timeout of timeout_ms; fails the test on
 * error. */
kvt_conn *kvtd_connect(const struct kvtd *d, int timeout_ms);

/* A numeric STATS entry; fails the test if the daemon does not report it. */
uint64_t kvtd_stat(kvt_conn *c, const char *name);

/* A numeric STATS entry into *v; false (and *v untouched) when the daemon does not
 * report it. Fails the test if STATS itself fails. */
bool kvtd_stat_find(kvt_conn *c, const char *name, uint64_t *v);

/* A numeric STATS entry (0 when absent). With present, *present says whether the
 * daemon reports it; without, its absence fails the test. */
uint64_t kvtd_stat_u64(kvt_conn *c, const char *name, bool *present);

/* kvtd_stop, failing the test unless the daemon exited with status 0. */
void kvtd_stop_clean(struct kvtd *d);

/* A new region of size bytes on c; fails the test on error. */
kvt_region *kvtd_region(kvt_conn *c, size_t size);

/* A text STATS entry, copied into out (empty when absent). */
void kvtd_stat_text(kvt_conn *c, const char *name, char *out, size_t cap);

/* A GPU_PUT/GPU_GET item (parent zero; outputs cleared). */
kvt_gpu_item gpu_item(kvt_key key, uint32_t region, uint32_t first, uint32_t ntok,
		      const uint32_t *pages, uint32_t npages);

/* Fill p with n pseudo-random bytes that depend only on seed (the same seed gives
 * the same bytes, so expected contents can be recomputed). */
void fill_pattern(uint8_t *p, size_t n, uint64_t seed);

/* Sleep ms milliseconds (all of them, through signals). */
void test_sleep_ms(int ms);

/* Wall-clock time (CLOCK_REALTIME) in milliseconds. */
uint64_t realtime_ms(void);

/* splitmix64's finaliser: a well-mixed 64-bit function of x. */
uint64_t mix64(uint64_t x);

/* The value of environment variable name as a positive count; dflt when unset,
 * empty, zero or not a number. */
unsigned env_loops(const char *name, unsigned dflt);

/* Key of block id: two mixed words of id ^ tag (tag keeps test programs' keys
 * apart). */
kvt_key id_key(uint64_t id, uint64_t tag);

/* len bytes of block id (xorshift words from mix64(id)), so expected contents can
 * be recomputed from id alone. */
void id_fill(uint8_t *p, size_t len, uint64_t id);

/* A plain connected Unix stream socket to path; fails the test on error. */
int raw_connect(const char *path);

/* Send all bytes (blocking); returns 0 or -errno. */
int raw_send(int fd, const void *buf, size_t len);

/* Send a frame with the given header fields and body. */
int raw_send_frame(int fd, uint16_t opcode, uint32_t flags, uint64_t id, const void *body,
		   uint32_t body_len);

/* Receive one frame within timeout_ms: header into *h and up to cap body bytes into
 * body (rest discarded). Returns 0, -ETIMEDOUT, -ECONNRESET (peer closed), or a
 * decode error. */
int raw_recv_frame(int fd, struct kvt_hdr *h, uint8_t *body, size_t cap, int timeout_ms);

/* HELLO for version 1 on a raw socket; fails the test unless it succeeds. */
void raw_hello(int fd);

/* true if the peer closes the connection within timeout_ms (frames read meanwhile are
 * discarded; a NOTICE's status goes to *notice_status if not NULL). */
bool raw_wait_closed(int fd, int timeout_ms, int *notice_status);

/* The uid (and gid) a second tenant connects as. */
#define NOBODY 65534u

/* Skip the case unless it runs as root (needed to connect as a second uid). */
void need_root(void);

/* Fork a child that becomes uid/gid NOBODY and runs fn(d); returns when it exited
 * and fails the test unless it passed (the child's own failure message is in the
 * log, since it shares the case's log pipe). */
void as_nobody(const struct kvtd *d, void (*fn)(const struct kvtd *d));

/* Number of open file descriptors of process pid (for leak checks). */
int proc_fd_count(pid_t pid);

/* Run a shell command, capture its standard output (at most cap - 1 bytes, NUL
 * terminated) and log the command and each line; returns its exit status (128 if
 * it did not exit). */
int run_capture(const char *cmd, char *out, size_t cap);

#endif /* KVT_HARNESS_H */
