/*
 * benchlib.c - the process plumbing of bench_daemon.h, shared by the benchmarks.
 */
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "bench_daemon.h"
#include "bench_util.h"

volatile pid_t bench_child_pid = -1;
char bench_tmp_dir[256];

void bench_on_signal(int sig)
{
	pid_t p = bench_child_pid;

	if (p > 0)
		kill(p, SIGKILL);
	if (bench_tmp_dir[0]) {
		pid_t rm = fork();

		if (rm == 0) {
			execl("/bin/rm", "rm", "-rf", bench_tmp_dir, (char *)NULL);
			_exit(127);
		}
		if (rm > 0)
			waitpid(rm, NULL, 0);
	}
	signal(sig, SIG_DFL);
	raise(sig);
}

static int rm_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
	(void)st;
	(void)flag;
	(void)ftw;
	remove(path);
	return 0;
}

void bench_rm_tree(const char *path)
{
	nftw(path, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
}

int bench_daemon_init(struct bench_daemon *d, const char *dir)
{
	memset(d, 0, sizeof(*d));
	d->pid = -1;
	snprintf(d->dir, sizeof(d->dir), "%s", dir);
	snprintf(d->sock, sizeof(d->sock), "%s/kvtierd.sock", d->dir);
	snprintf(d->data, sizeof(d->data), "%s/data", d->dir);
	snprintf(d->log, sizeof(d->log), "%s/kvtierd.log", d->dir);
	if (mkdir(d->dir, 0700) != 0 && errno != EEXIST)
		return -errno;
	return 0;
}

void bench_daemon_log_tail(const char *log)
{
	char buf[4096];
	int fd = log[0] ? open(log, O_RDONLY | O_CLOEXEC) : -1;
	off_t end;
	ssize_t r;

	if (fd < 0)
		return;
	end = lseek(fd, 0, SEEK_END);
	r = pread(fd, buf, sizeof(buf) - 1,
		  end > (off_t)sizeof(buf) - 1 ? end - (off_t)sizeof(buf) + 1 : 0);
	close(fd);
	if (r <= 0)
		return;
	buf[r] = '\0';
	fprintf(stderr, "---- kvtierd log (%s, last %zd bytes) ----\n%s%s---- end ----\n", log, r,
		buf, buf[r - 1] == '\n' ? "" : "\n");
}

int bench_daemon_spawn(const char *prog, struct bench_daemon *d, const char *bin,
		       const char *const *argv, const char *const *env, size_t nenv)
{
	pid_t parent = getpid(), pid;

	fflush(NULL);
	pid = fork();
	if (pid < 0)
		return -errno;
	if (pid == 0) {
		sigset_t none;
		int in, lfd;

		/* Never outlive the benchmark, even if it is killed. */
		prctl(PR_SET_PDEATHSIG, SIGKILL);
		if (getppid() != parent)
			_exit(127);
		in = open("/dev/null", O_RDONLY);
		lfd = open(d->log, O_WRONLY | O_CREAT | O_APPEND, 0644);
		if (in < 0 || lfd < 0)
			_exit(127);
		dup2(in, STDIN_FILENO);
		dup2(lfd, STDOUT_FILENO);
		dup2(lfd, STDERR_FILENO);
		signal(SIGINT, SIG_DFL);
		signal(SIGTERM, SIG_DFL);
		signal(SIGPIPE, SIG_DFL);
		signal(SIGALRM, SIG_DFL);
		signal(SIGHUP, SIG_DFL);
		sigemptyset(&none);
		sigprocmask(SIG_SETMASK, &none, NULL);
		for (size_t i = 0; i < nenv; i++)
			putenv((char *)(uintptr_t)env[i]); /* the child's own copy */
		/* execv's prototype predates const; it does not modify the strings. */
		execv(bin, (char *const *)(uintptr_t)argv);
		dprintf(STDERR_FILENO, "%s: exec %s: %s\n", prog, bin, strerror(errno));
		_exit(127);
	}
	d->pid = pid;
	bench_child_pid = pid;
	return 0;
}

int bench_daemon_connect(struct bench_daemon *d, int start_ms, int call_ms,
			 volatile sig_atomic_t *stop, kvt_conn **out, char *why, size_t cap)
{
	uint64_t deadline = bench_now_ns() + (uint64_t)start_ms * 1000000u;

	for (;;) {
		kvt_conn *conn = NULL;
		int st, rc;

		if (waitpid(d->pid, &st, WNOHANG) == d->pid) {
			d->pid = -1;
			bench_child_pid = -1;
			snprintf(why, cap, "kvtierd exited during start-up (%s %d)",
				 WIFEXITED(st) ? "status" : "signal",
				 WIFEXITED(st) ? WEXITSTATUS(st) : WTERMSIG(st));
			return -ECHILD;
		}
		rc = kvt_conn_open(d->sock, &conn);
		if (rc == 0) {
			kvt_conn_set_timeout(conn, call_ms);
			*out = conn;
			return 0;
		}
		if (stop && *stop) {
			snprintf(why, cap, "interrupted while kvtierd started");
			return -EINTR;
		}
		if (bench_now_ns() > deadline) {
			snprintf(why, cap, "kvtierd did not accept on %s within %d ms: %s", d->sock,
				 start_ms, kvt_strerror(rc));
			return -ETIMEDOUT;
		}
		bench_sleep_us(20000);
	}
}

int bench_daemon_stop(const char *prog, struct bench_daemon *d, int stop_ms)
{
	uint64_t deadline = bench_now_ns() + (uint64_t)stop_ms * 1000000u;
	int st = 0, ret;
	pid_t r;

	if (d->pid <= 0)
		return 0;
	kill(d->pid, SIGTERM);
	while ((r = waitpid(d->pid, &st, WNOHANG)) == 0 && bench_now_ns() < deadline)
		bench_sleep_us(10000);
	if (r == 0) {
		fprintf(stderr, "%s: kvtierd did not exit within %d ms of SIGTERM; killing it\n",
			prog, stop_ms);
		kill(d->pid, SIGKILL);
		waitpid(d->pid, &st, 0);
		ret = -1;
	} else {
		ret = WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
	}
	if (ret != 0) {
		fprintf(stderr, "%s: kvtierd exit status %d after SIGTERM\n", prog, ret);
		bench_daemon_log_tail(d->log);
	}
	d->pid = -1;
	bench_child_pid = -1;
	return ret;
}

int bench_run_capture(const char *const argv[], char *out, size_t cap, double *cpu)
{
	int pfd[2], st = 0;
	size_t len = 0;
	struct rusage ru;
	pid_t pid;

	if (pipe(pfd) != 0)
		return -errno;
	fflush(NULL);
	pid = fork();
	if (pid < 0) {
		close(pfd[0]);
		close(pfd[1]);
		return -errno;
	}
	if (pid == 0) {
		prctl(PR_SET_PDEATHSIG, SIGKILL);
		dup2(pfd[1], STDOUT_FILENO);
		close(pfd[0]);
		close(pfd[1]);
		/* execvp's prototype predates const; it does not modify the strings. */
		execvp(argv[0], (char *const *)(uintptr_t)argv);
		_exit(127);
	}
	bench_child_pid = pid;
	close(pfd[1]);
	for (;;) {
		ssize_t n = read(pfd[0], out + len, cap - 1 - len);

		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			break;
		len += (size_t)n;
		if (len == cap - 1) {
			char sink[4096]; /* too long: drain the rest so the child can exit */

			while (read(pfd[0], sink, sizeof(sink)) > 0)
				;
			break;
		}
	}
	out[len] = '\0';
	close(pfd[0]);
	while (wait4(pid, &st, 0, &ru) < 0) {
		if (errno != EINTR) {
			bench_child_pid = -1;
			return -errno;
		}
	}
	bench_child_pid = -1;
	if (cpu)
		*cpu = (double)ru.ru_utime.tv_sec + (double)ru.ru_utime.tv_usec / 1e6 +
		       (double)ru.ru_stime.tv_sec + (double)ru.ru_stime.tv_usec / 1e6;
	return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
}

double bench_fio_bw_bytes(const char *json, const char *dir)
{
	char key[32];
	const char *p = strstr(json, "\"jobs\"");

	snprintf(key, sizeof(key), "\"%s\" : {", dir);
	if (!p || !(p = strstr(p, key)) || !(p = strstr(p, "\"bw_bytes\"")))
		return -1;
	p = strchr(p, ':');
	return p ? strtod(p + 1, NULL) : -1;
}

void bench_fio_version(char *buf, size_t cap)
{
	const char *const argv[] = { "fio", "--version", NULL };

	if (bench_run_capture(argv, buf, cap, NULL) != 0) {
		snprintf(buf, cap, "fio (version unknown)");
		return;
	}
	buf[strcspn(buf, "\n")] = '\0';
}

int bench_fio_run(const char *prog, const char *const argv[], bool write, char *cmd,
		  size_t cmdcap, double *gbps, const char **json, double *cpu)
{
	static char out[1 << 20];
	double bw;
	int rc;

	if (cmd) {
		cmd[0] = '\0';
		for (size_t i = 0, len = 0; argv[i] && len < cmdcap; i++)
			len += (size_t)snprintf(cmd + len, cmdcap - len, "%s%s", i ? " " : "",
						argv[i]);
	}
	rc = bench_run_capture(argv, out, sizeof(out), cpu);
	if (json)
		*json = out;
	if (rc != 0) {
		fprintf(stderr, "%s: fio exited with status %d%s\n", prog, rc,
			rc == 127 ? " (not installed? Debian package fio)" : "");
		return -EIO;
	}
	bw = bench_fio_bw_bytes(out, write ? "write" : "read");
	if (bw <= 0) {
		fprintf(stderr, "%s: no bandwidth in fio's JSON output\n", prog);
		return -EPROTO;
	}
	*gbps = bw / 1e9;
	return 0;
}
