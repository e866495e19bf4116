/*
 * harness.c - runs a real kvtierd for integration tests (temporary directory,
 * configuration, start, stop, crash) and speaks the wire protocol by hand for
 * tests that need frames the client library would never send.
 */
#include "harness.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <ftw.h>
#include <poll.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "test.h"

#ifndef KVT_BIN_DIR
#define KVT_BIN_DIR "build/bin"
#endif

/* How long the daemon gets to come up, and to go down after SIGTERM. */
#define START_TIMEOUT_MS 10000
#define STOP_TIMEOUT_MS 10000

/* Largest frame body raw_recv_frame will read through (bodies are streamed, so
 * this only bounds what a broken daemon could make us wait for). */
#define RAW_MAX_BODY 0xffffffffu

static int64_t mono_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

void test_sleep_ms(int ms)
{
	struct timespec ts = { ms / 1000, (long)(ms % 1000) * 1000000L };
	while (nanosleep(&ts, &ts) < 0 && errno == EINTR)
		;
}

uint64_t realtime_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_REALTIME, &ts);
	return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

uint64_t mix64(uint64_t x)
{
	x += 0x9e3779b97f4a7c15ull;
	x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
	x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
	return x ^ (x >> 31);
}

unsigned env_loops(const char *name, unsigned dflt)
{
	const char *v = getenv(name);
	if (!v || !*v)
		return dflt;
	unsigned long n = strtoul(v, NULL, 10);
	return n ? (unsigned)n : dflt;
}

kvt_key id_key(uint64_t id, uint64_t tag)
{
	kvt_key k;
	uint64_t a = mix64(id ^ tag), b = mix64(a);
	memcpy(k.b, &a, 8);
	memcpy(k.b + 8, &b, 8);
	return k;
}

void id_fill(uint8_t *p, size_t len, uint64_t id)
{
	uint64_t x = mix64(id) | 1;
	for (size_t i = 0; i < len; i += 8) {
		x ^= x << 13;
		x ^= x >> 7;
		x ^= x << 17;
		memcpy(p + i, &x, len - i < 8 ? len - i : 8);
	}
}

const char *kvtd_bin(const char *name)
{
	static char path[4096];
	const char *dir = getenv("KVT_BIN_DIR");
	if (!dir || !*dir)
		dir = KVT_BIN_DIR;
	snprintf(path, sizeof(path), "%s/%s", dir, name);
	return path;
}

const char *kvtd_log_text(struct kvtd *d)
{
	/* Debug logging is chatty; the first megabyte holds the start-up lines, and a
	 * failing test shows the tail separately (log_tail). */
	static char buf[1 << 20];
	size_t len = 0;
	buf[0] = 0;
	int fd = open(d->log, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return buf;
	if (d->log_start > 0 && lseek(fd, (off_t)d->log_start, SEEK_SET) < 0) {
		close(fd);
		return buf;
	}
	for (;;) {
		ssize_t r = read(fd, buf + len, sizeof(buf) - 1 - len);
		if (r < 0 && errno == EINTR)
			continue;
		if (r <= 0)
			break;
		len += (size_t)r;
		if (len == sizeof(buf) - 1)
			break;
	}
	buf[len] = 0;
	close(fd);
	return buf;
}

/* The last lines of the daemon's log, as test_log lines (shown if the case fails). */
static void log_tail(struct kvtd *d, size_t max_bytes)
{
	char buf[8192];
	if (max_bytes > sizeof(buf) - 1)
		max_bytes = sizeof(buf) - 1;
	int fd = open(d->log, O_RDONLY | O_CLOEXEC);
	if (fd < 0) {
		test_log("daemon log %s: %s", d->log, strerror(errno));
		return;
	}
	off_t size = lseek(fd, 0, SEEK_END);
	off_t from = size > (off_t)max_bytes ? size - (off_t)max_bytes : 0;
	ssize_t r = pread(fd, buf, max_bytes, from);
	close(fd);
	if (r < 0)
		r = 0;
	buf[r] = 0;
	test_log("---- %s (last %zd bytes) ----", d->log, r);
	char *save = NULL;
	for (char *line = strtok_r(buf, "\n", &save); line; line = strtok_r(NULL, "\n", &save))
		test_log("| %s", line);
	test_log("---- end of daemon log ----");
}

static int rm_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
	(void)st;
	(void)flag;
	(void)ftw;
	remove(path);
	return 0;
}

static void remove_tree(const char *dir)
{
	if (dir[0])
		nftw(dir, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
}

static void write_file(const char *path, const char *text)
{
	int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
	if (fd < 0)
		test_fail(__FILE__, __LINE__, "create %s: %s", path, strerror(errno));
	if (raw_send(fd, text, strlen(text)) < 0) /* write loop; works on files too */
		test_fail(__FILE__, __LINE__, "write %s: %s", path, strerror(errno));
	close(fd);
}

/* true if a Unix stream connection to path is accepted right now. */
static bool try_connect(const char *path)
{
	int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return false;
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	size_t len = strlen(path);
	if (len >= sizeof(sa.sun_path)) {
		close(fd);
		return false;
	}
	memcpy(sa.sun_path, path, len + 1);
	bool ok = connect(fd, (struct sockaddr *)&sa, sizeof(sa)) == 0;
	close(fd);
	return ok;
}

static void spawn(struct kvtd *d);

void kvtd_start(struct kvtd *d, const char *extra_config)
{
	memset(d, 0, sizeof(*d));
	d->pid = -1;
	snprintf(d->dir, sizeof(d->dir), "/tmp/kvtd-test.XXXXXX");
	if (!mkdtemp(d->dir))
		test_fail(__FILE__, __LINE__, "mkdtemp: %s", strerror(errno));
	/* World-searchable, so tests that drop privileges can reach the socket. */
	chmod(d->dir, 0755);
	snprintf(d->sock, sizeof(d->sock), "%s/kvtierd.sock", d->dir);
	snprintf(d->conf, sizeof(d->conf), "%s/kvtierd.conf", d->dir);
	snprintf(d->log, sizeof(d->log), "%s/kvtierd.log", d->dir);

	/* Later lines overwrite earlier ones, so the caller's extras come last. */
	char conf[8192];
	int n = snprintf(conf, sizeof(conf),
			 "# written by tests/lib/harness.c\n"
			 "socket = %s\n"
			 "data_dir = %s/data\n"
			 "host_capacity = 64MiB\n"
			 "# host tier only unless a test turns the NVMe tier on\n"
			 "nvme_capacity = 0\n"
			 "socket_mode = 0666\n"
			 "workers = 2\n"
			 "log_level = debug\n"
			 "%s%s",
			 d->sock, d->dir, extra_config ? extra_config : "",
			 extra_config && *extra_config &&
					 extra_config[strlen(extra_config) - 1] != '\n'
				 ? "\n"
				 : "");
	if (n < 0 || (size_t)n >= sizeof(conf))
		test_fail(__FILE__, __LINE__, "configuration too long");
	write_file(d->conf, conf);
	/* One log line per config line, so each carries the log's indentation. */
	test_log("kvtierd config %s:", d->conf);
	char *save = NULL;
	for (char *line = strtok_r(conf, "\n", &save); line; line = strtok_r(NULL, "\n", &save))
		test_log("| %s", line);
	spawn(d);
}

/* Fork and exec the daemon on d's configuration, its output appended to d->log,
 * and wait until its socket accepts connections. */
static void spawn(struct kvtd *d)
{
	const char *bin = kvtd_bin("kvtierd");
	if (access(bin, X_OK) < 0)
		test_fail(__FILE__, __LINE__, "%s: %s (build it, or set KVT_BIN_DIR)", bin,
			  strerror(errno));

	pid_t parent = getpid();
	fflush(NULL);
	pid_t pid = fork();
	if (pid < 0)
		test_fail(__FILE__, __LINE__, "fork: %s", strerror(errno));
	if (pid == 0) {
		/* Never outlive the test case that started us, even if it is killed. */
		prctl(PR_SET_PDEATHSIG, SIGKILL);
		if (getppid() != parent)
			_exit(127);
		int in = open("/dev/null", O_RDONLY);
		int lfd = open(d->log, O_WRONLY | O_CREAT | O_APPEND, 0644);
		if (in < 0 || lfd < 0)
			_exit(127);
		dup2(in, 0);
		dup2(lfd, 1);
		dup2(lfd, 2);
		if (in > 2)
			close(in);
		if (lfd > 2)
			close(lfd);
		/* The test runner ignores SIGPIPE; the daemon must start with defaults. */
		signal(SIGPIPE, SIG_DFL);
		sigset_t none;
		sigemptyset(&none);
		sigprocmask(SIG_SETMASK, &none, NULL);
		execl(bin, "kvtierd", "-c", d->conf, (char *)NULL);
		dprintf(2, "harness: exec %s: %s\n", bin, strerror(errno));
		_exit(127);
	}
	d->pid = pid;

	int64_t deadline = mono_ms() + START_TIMEOUT_MS;
	for (;;) {
		int st;
		pid_t r = waitpid(pid, &st, WNOHANG);
		if (r == pid) {
			d->pid = -1;
			log_tail(d, 4096);
			if (WIFEXITED(st))
				test_fail(__FILE__, __LINE__, "kvtierd exited with %d during start-up",
					  WEXITSTATUS(st));
			test_fail(__FILE__, __LINE__, "kvtierd died of %s during start-up",
				  strsignal(WTERMSIG(st)));
		}
		if (try_connect(d->sock))
			break;
		if (mono_ms() > deadline) {
			log_tail(d, 4096);
			test_fail(__FILE__, __LINE__, "kvtierd did not accept on %s within %d ms",
				  d->sock, START_TIMEOUT_MS);
		}
		test_sleep_ms(10);
	}
	test_log("kvtierd pid %d up on %s, log in %s", (int)pid, d->sock, d->log);
}

void kvtd_restart(struct kvtd *d)
{
	if (d->pid > 0)
		test_fail(__FILE__, __LINE__, "kvtd_restart: the daemon is still running");
	if (access(d->conf, R_OK) < 0)
		test_fail(__FILE__, __LINE__, "kvtd_restart: %s: %s (set keep_dir before stopping)",
			  d->conf, strerror(errno));
	struct stat st;
	d->log_start = stat(d->log, &st) == 0 ? (long)st.st_size : 0;
	test_log("restarting kvtierd on %s", d->dir);
	spawn(d);
}

bool kvtd_alive(struct kvtd *d)
{
	if (d->pid <= 0)
		return false;
	/* WNOWAIT: leave the exit status for kvtd_stop to collect. */
	siginfo_t si;
	memset(&si, 0, sizeof(si));
	if (waitid(P_PID, (id_t)d->pid, &si, WEXITED | WNOHANG | WNOWAIT) < 0)
		return false;
	return si.si_pid == 0;
}

/* Wait up to ms for the daemon to exit; returns true and *status if it did. */
static bool reap(struct kvtd *d, int ms, int *status)
{
	int64_t deadline = mono_ms() + ms;
	for (;;) {
		pid_t r = waitpid(d->pid, status, WNOHANG);
		if (r == d->pid)
			return true;
		if (r < 0 && errno != EINTR)
			test_fail(__FILE__, __LINE__, "waitpid(%d): %s", (int)d->pid,
				  strerror(errno));
		if (mono_ms() > deadline)
			return false;
		test_sleep_ms(5);
	}
}

int kvtd_stop(struct kvtd *d)
{
	if (d->pid <= 0)
		test_fail(__FILE__, __LINE__, "kvtd_stop: no daemon running");
	int st = 0;
	kill(d->pid, SIGTERM);
	if (!reap(d, STOP_TIMEOUT_MS, &st)) {
		kill(d->pid, SIGKILL);
		reap(d, STOP_TIMEOUT_MS, &st);
		d->pid = -1;
		log_tail(d, 4096);
		test_fail(__FILE__, __LINE__, "kvtierd did not exit within %d ms of SIGTERM",
			  STOP_TIMEOUT_MS);
	}
	d->pid = -1;
	if (WIFEXITED(st) && WEXITSTATUS(st) == 0) {
		if (!d->keep_dir)
			remove_tree(d->dir);
	} else {
		/* Keep the directory and show how it ended, for the failure report. */
		if (WIFEXITED(st))
			test_log("kvtierd exited with %d", WEXITSTATUS(st));
		else if (WIFSIGNALED(st))
			test_log("kvtierd died of %s", strsignal(WTERMSIG(st)));
		log_tail(d, 6144);
	}
	return st;
}

void kvtd_kill(struct kvtd *d)
{
	if (d->pid <= 0)
		return;
	int st;
	kill(d->pid, SIGKILL);
	if (!reap(d, STOP_TIMEOUT_MS, &st))
		test_fail(__FILE__, __LINE__, "kvtierd survived SIGKILL");
	d->pid = -1;
	if (!d->keep_dir)
		remove_tree(d->dir);
}

/* ---- raw protocol ---------------------------------------------------------- */

int raw_connect(const char *path)
{
	int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0)
		test_fail(__FILE__, __LINE__, "socket: %s", strerror(errno));
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	if (strlen(path) >= sizeof(sa.sun_path))
		test_fail(__FILE__, __LINE__, "socket path too long: %s", path);
	memcpy(sa.sun_path, path, strlen(path) + 1);
	if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0)
		test_fail(__FILE__, __LINE__, "connect %s: %s", path, strerror(errno));
	return fd;
}

int raw_send(int fd, const void *buf, size_t len)
{
	const uint8_t *p = buf;
	while (len > 0) {
		ssize_t w = send(fd, p, len, MSG_NOSIGNAL);
		if (w < 0 && errno == ENOTSOCK)
			w = write(fd, p, len);
		if (w < 0) {
			if (errno == EINTR)
				continue;
			return -errno;
		}
		p += w;
		len -= (size_t)w;
	}
	return 0;
}

int raw_send_frame(int fd, uint16_t opcode, uint32_t flags, uint64_t id, const void *body,
		   uint32_t body_len)
{
	struct kvt_hdr h = {
		.magic = KVT_MAGIC,
		.version = 1,
		.opcode = opcode,
		.flags = flags,
		.body_len = body_len,
		.request_id = id,
	};
	uint8_t *buf = malloc(KVT_HDR_SIZE + (size_t)body_len);
	if (!buf)
		return -ENOMEM;
	kvt_hdr_encode(&h, buf);
	if (body_len)
		memcpy(buf + KVT_HDR_SIZE, body, body_len);
	/* One send, so the frame arrives as one piece whenever the socket allows. */
	int rc = raw_send(fd, buf, KVT_HDR_SIZE + (size_t)body_len);
	free(buf);
	return rc;
}

/* Read exactly len bytes (into buf, or discarded if buf is NULL) before deadline.
 * Returns 0, -ETIMEDOUT, -ECONNRESET (EOF or reset) or another -errno. */
static int read_full(int fd, uint8_t *buf, size_t len, int64_t deadline)
{
	uint8_t sink[4096];
	while (len > 0) {
		int64_t left = deadline - mono_ms();
		if (left <= 0)
			return -ETIMEDOUT;
		struct pollfd p = { .fd = fd, .events = POLLIN };
		int pr = poll(&p, 1, (int)(left > 1000000 ? 1000000 : left));
		if (pr < 0 && errno == EINTR)
			continue;
		if (pr < 0)
			return -errno;
		if (pr == 0)
			return -ETIMEDOUT;
		uint8_t *dst = buf ? buf : sink;
		size_t want = buf ? len : (len < sizeof(sink) ? len : sizeof(sink));
		ssize_t r = recv(fd, dst, want, MSG_DONTWAIT);
		if (r < 0 && (errno == EINTR || errno == EAGAIN))
			continue;
		if (r < 0)
			return errno == ECONNRESET || errno == EPIPE ? -ECONNRESET : -errno;
		if (r == 0)
			return -ECONNRESET;
		if (buf)
			buf += r;
		len -= (size_t)r;
	}
	return 0;
}

int raw_recv_frame(int fd, struct kvt_hdr *h, uint8_t *body, size_t cap, int timeout_ms)
{
	int64_t deadline = mono_ms() + timeout_ms;
	uint8_t hb[KVT_HDR_SIZE];
	int rc = read_full(fd, hb, sizeof(hb), deadline);
	if (rc < 0)
		return rc;
	memset(h, 0, sizeof(*h));
	rc = kvt_hdr_decode(hb, RAW_MAX_BODY, h);
	if (rc < 0)
		return rc;
	size_t keep = h->body_len < cap ? h->body_len : cap;
	if (keep > 0) {
		rc = read_full(fd, body, keep, deadline);
		if (rc < 0)
			return rc;
	}
	if (h->body_len > keep) {
		rc = read_full(fd, NULL, h->body_len - keep, deadline);
		if (rc < 0)
			return rc;
	}
	return 0;
}

void raw_hello(int fd)
{
	static const char name[] = "kvtier-itest";
	struct kvt_hello_req req = {
		.min_version = 1,
		.max_version = 1,
		.name = name,
		.name_len = (uint16_t)strlen(name),
	};
	uint8_t body[128];
	int len = kvt_hello_req_encode(&req, body, sizeof(body));
	if (len < 0)
		test_fail(__FILE__, __LINE__, "kvt_hello_req_encode: %d", len);
	/* Id chosen so that it is unlikely to collide with a test's own ids. */
	const uint64_t id = 0x48454c4cull;
	int rc = raw_send_frame(fd, KVT_OP_HELLO, 0, id, body, (uint32_t)len);
	if (rc < 0)
		test_fail(__FILE__, __LINE__, "send HELLO: %s", strerror(-rc));
	struct kvt_hdr h;
	uint8_t rep[512];
	rc = raw_recv_frame(fd, &h, rep, sizeof(rep), 10000);
	if (rc < 0)
		test_fail(__FILE__, __LINE__, "HELLO reply: %d (%s)", rc,
			  rc > -1000 ? strerror(-rc) : test_errname(rc));
	if (h.opcode != KVT_OP_HELLO || h.request_id != id || !(h.flags & KVT_F_REPLY))
		test_fail(__FILE__, __LINE__,
			  "HELLO reply: opcode %u id %llu flags %#x (status %d %s)", h.opcode,
			  (unsigned long long)h.request_id, h.flags, h.status,
			  test_errname(h.status));
	if (h.status != 0)
		test_fail(__FILE__, __LINE__, "HELLO refused: %d (%s)", h.status,
			  test_errname(h.status));
	struct kvt_hello_rep hr;
	rc = kvt_hello_rep_decode(rep, h.body_len < sizeof(rep) ? h.body_len : sizeof(rep), &hr);
	if (rc < 0)
		test_fail(__FILE__, __LINE__, "HELLO reply body: %d (%s)", rc, test_errname(rc));
	if (hr.version != 1)
		test_fail(__FILE__, __LINE__, "HELLO negotiated version %u", hr.version);
}

bool raw_wait_closed(int fd, int timeout_ms, int *notice_status)
{
	int64_t deadline = mono_ms() + timeout_ms;
	for (;;) {
		int64_t left = deadline - mono_ms();
		if (left <= 0)
			return false;
		struct kvt_hdr h;
		uint8_t body[512];
		int rc = raw_recv_frame(fd, &h, body, sizeof(body), (int)left);
		if (rc == -ECONNRESET)
			return true;
		if (rc == -ETIMEDOUT)
			return false;
		if (rc == 0) {
			if (h.opcode == KVT_OP_NOTICE && notice_status)
				*notice_status = h.status;
			continue;
		}
		if (rc > -1000) /* a socket error other than EOF */
			return true;
		/* Undecodable bytes: the stream is lost, just wait for EOF. */
		for (;;) {
			uint8_t sink[4096];
			rc = read_full(fd, sink, 1, deadline);
			if (rc == -ECONNRESET)
				return true;
			if (rc < 0)
				return rc != -ETIMEDOUT;
		}
	}
}

int proc_fd_count(pid_t pid)
{
	char path[64];
	snprintf(path, sizeof(path), "/proc/%d/fd", (int)pid);
	DIR *dir = opendir(path);
	if (!dir)
		return -errno;
	int n = 0;
	struct dirent *e;
	while ((e = readdir(dir)) != NULL)
		if (e->d_name[0] != '.')
			n++;
	closedir(dir);
	return n;
}

kvt_conn *kvtd_connect(const struct kvtd *d, int timeout_ms)
{
	kvt_conn *c = NULL;
	CHECK_RC(kvt_conn_open(d->sock, &c), 0);
	kvt_conn_set_timeout(c, timeout_ms);
	return c;
}

bool kvtd_stat_find(kvt_conn *c, const char *name, uint64_t *v)
{
	kvt_stats *s = NULL;
	CHECK_RC(kvt_stats_get(c, &s), 0);
	bool ok = kvt_stats_find(s, name, v);
	kvt_stats_free(s);
	return ok;
}

uint64_t kvtd_stat(kvt_conn *c, const char *name)
{
	uint64_t v = 0;
	CHECK_MSG(kvtd_stat_find(c, name, &v), "STATS has no numeric entry %s", name);
	return v;
}

uint64_t kvtd_stat_u64(kvt_conn *c, const char *name, bool *present)
{
	uint64_t v = 0;
	bool ok = kvtd_stat_find(c, name, &v);
	if (present)
		*present = ok;
	else
		CHECK_MSG(ok, "STATS has no %s", name);
	return v;
}

void kvtd_stop_clean(struct kvtd *d)
{
	int st = kvtd_stop(d);
	CHECK_MSG(WIFEXITED(st) && WEXITSTATUS(st) == 0, "kvtierd ended with wait status %#x",
		  st);
}

kvt_region *kvtd_region(kvt_conn *c, size_t size)
{
	kvt_region *r = NULL;
	CHECK_RC(kvt_region_create(c, size, &r), 0);
	CHECK(r != NULL);
	return r;
}

void kvtd_stat_text(kvt_conn *c, const char *name, char *out, size_t cap)
{
	kvt_stats *s = NULL;
	CHECK_RC(kvt_stats_get(c, &s), 0);
	out[0] = 0;
	for (size_t i = 0; i < kvt_stats_count(s); i++) {
		const char *n, *t;
		uint64_t v;
		CHECK_RC(kvt_stats_entry(s, i, &n, &v, &t), 0);
		if (strcmp(n, name) == 0 && t)
			snprintf(out, cap, "%s", t);
	}
	kvt_stats_free(s);
}

kvt_gpu_item gpu_item(kvt_key key, uint32_t region, uint32_t first, uint32_t ntok,
		      const uint32_t *pages, uint32_t npages)
{
	kvt_gpu_item it;
	memset(&it, 0, sizeof(it));
	it.key = key;
	it.region_id = region;
	it.first_token = first;
	it.ntokens = ntok;
	it.pages = pages;
	it.npages = npages;
	return it;
}

/* xorshift64: cheap, and any block's bytes follow from its seed alone, so a test
 * can check what it reads back without keeping a copy. */
void fill_pattern(uint8_t *p, size_t n, uint64_t seed)
{
	uint64_t x = seed * 0x9e3779b97f4a7c15ull + 7;
	for (size_t i = 0; i < n; i++) {
		x ^= x << 13;
		x ^= x >> 7;
		x ^= x << 17;
		p[i] = (uint8_t)(x >> 24);
	}
}

void need_root(void)
{
	if (geteuid() != 0)
		test_skip("needs root to connect as a second uid");
}

void as_nobody(const struct kvtd *d, void (*fn)(const struct kvtd *d))
{
	fflush(NULL);
	pid_t pid = fork();
	CHECK(pid >= 0);
	if (pid == 0) {
		if (setgroups(0, NULL) < 0 || setgid(NOBODY) < 0 || setuid(NOBODY) < 0)
			test_fail(__FILE__, __LINE__, "cannot drop to uid %u", NOBODY);
		CHECK_EQ(geteuid(), NOBODY);
		fn(d);
		_exit(0);
	}
	int st = 0;
	CHECK(waitpid(pid, &st, 0) == pid);
	CHECK_MSG(WIFEXITED(st) && WEXITSTATUS(st) == 0,
		  "the uid %u client failed (wait status %#x)", NOBODY, st);
}

int run_capture(const char *cmd, char *out, size_t cap)
{
	test_log("$ %s", cmd);
	FILE *p = popen(cmd, "r");
	CHECK(p != NULL);
	size_t len = 0, r;
	while (len < cap - 1 && (r = fread(out + len, 1, cap - 1 - len, p)) > 0)
		len += r;
	out[len] = 0;
	int st = pclose(p);
	for (char *l = out, *nl; *l; l = nl + 1) {
		nl = strchr(l, '\n');
		if (!nl) {
			test_log("| %s", l);
			break;
		}
		test_log("| %.*s", (int)(nl - l), l);
	}
	return WIFEXITED(st) ? WEXITSTATUS(st) : 128;
}
