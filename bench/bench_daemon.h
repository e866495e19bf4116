/*
 * bench_daemon.h - process plumbing shared by the benchmarks that run a kvtierd
 * (or fio) of their own: the child and the temporary directory a signal cleans up,
 * starting kvtierd with its output in a log, waiting for its socket, stopping it,
 * and running a command with its stdout collected (fio).
 *
 * Implemented in bench/benchlib.c, which the Makefile links into every benchmark
 * (its name does not match bench/bench_*.c, so it is not a benchmark itself).
 */
#ifndef KVT_BENCH_DAEMON_H
#define KVT_BENCH_DAEMON_H

#include <signal.h>
#include <stdbool.h>
#include <stddef.h>
#include <sys/types.h>

#include "kvtier.h"

/* The child now running (a daemon or fio), killed by bench_on_signal. */
extern volatile pid_t bench_child_pid;
/* The run's temporary directory ("" for none), removed by bench_on_signal. */
extern char bench_tmp_dir[256];

/* A signal handler: only async-signal-safe calls. Kill bench_child_pid, remove
 * bench_tmp_dir (with rm, since nftw is not safe here), then die of the signal. */
void bench_on_signal(int sig);

/* rm -r path (no error reports). */
void bench_rm_tree(const char *path);

/* One kvtierd this program runs. */
struct bench_daemon {
	pid_t pid;      /* -1: not running */
	char dir[320];  /* its directory: data/, socket, log */
	char sock[384];
	char data[384];
	char log[384];
	char cmd[4096]; /* the settings, for the report (filled by the caller) */
};

/* d for a daemon in dir: dir/kvtierd.sock, dir/data, dir/kvtierd.log; makes dir
 * (mode 0700) unless it exists. Returns 0 or -errno. */
int bench_daemon_init(struct bench_daemon *d, const char *dir);

/* The last 4 KiB of log to stderr, framed (on failures). */
void bench_daemon_log_tail(const char *log);

/*
 * Fork and exec bin with argv (argv[0] included, NULL-terminated), stdin from
 * /dev/null, stdout and stderr appended to d->log, the NAME=VALUE strings env[0..nenv)
 * added to its environment; it dies with this program (PR_SET_PDEATHSIG). Sets
 * d->pid and bench_child_pid. Returns 0 or -errno. prog prefixes an exec failure
 * (written to the log).
 */
int bench_daemon_spawn(const char *prog, struct bench_daemon *d, const char *bin,
		       const char *const *argv, const char *const *env, size_t nenv);

/*
 * Connect to the daemon spawned on d, waiting up to start_ms for its socket, and
 * set call_ms as the connection's timeout. 0 with *out, or: -ECHILD (it exited;
 * d->pid and bench_child_pid cleared), -ETIMEDOUT, -EINTR (*stop became nonzero;
 * stop may be NULL). On failure why (cap bytes) says what happened, without the
 * log (see bench_daemon_log_tail).
 */
int bench_daemon_connect(struct bench_daemon *d, int start_ms, int call_ms,
			 volatile sig_atomic_t *stop, kvt_conn **out, char *why, size_t cap);

/*
 * SIGTERM and wait (SIGKILL after stop_ms). Returns the daemon's exit status
 * (0 = clean, 128 + signal) or -1 if it had to be killed; on anything but 0 says so
 * on stderr (prefixed prog) with the end of the log. 0 when it was not running.
 */
int bench_daemon_stop(const char *prog, struct bench_daemon *d, int stop_ms);

/*
 * Run argv (searched in $PATH) with its stdout collected into out (cap bytes, NUL
 * terminated; the rest is drained), stderr passing through; it is bench_child_pid
 * while it runs. Returns its exit status (128 + signal) or -errno; *cpu (may be
 * NULL) gets its user + system CPU seconds.
 */
int bench_run_capture(const char *const argv[], char *out, size_t cap, double *cpu);

/* jobs[0].<dir>.bw_bytes from fio's JSON output, or -1. */
double bench_fio_bw_bytes(const char *json, const char *dir);

/* "fio-3.33" (the first line of fio --version), or "fio (version unknown)". */
void bench_fio_version(char *buf, size_t cap);

/*
 * Run the fio job argv (argv[0] "fio", --output-format=json among them) and read
 * its bandwidth for "read" or "write": *gbps in 10^9 B/s; *json then points at
 * fio's output (a static buffer) and *cpu (may be NULL) is fio's CPU seconds. The
 * command line goes to cmd (may be NULL). 0, or -EIO (fio failed) / -EPROTO (no
 * figure), said on stderr prefixed prog.
 */
int bench_fio_run(const char *prog, const char *const argv[], bool write, char *cmd,
		  size_t cmdcap, double *gbps, const char **json, double *cpu);

#endif /* KVT_BENCH_DAEMON_H */
