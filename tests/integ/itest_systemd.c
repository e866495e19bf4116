/*
 * itest_systemd.c - kvtierd's side of running under systemd, checked without
 * systemd: this program binds the $NOTIFY_SOCKET datagram socket itself and reads
 * what the daemon sends. READY=1 comes only once the socket accepts; WATCHDOG=1
 * comes while the event loop runs and stops while it is wedged (test hook
 * $KVT_TEST_WEDGE_FILE); STOPPING=1 on SIGTERM; systemd-socket-activate hands the
 * daemon a socket it serves on and leaves in place; SIGHUP reloads the
 * configuration (a limit changes live, a bad file is refused and the old
 * configuration stays); log lines carry journal fields when stderr is the journal
 * (a fake journald socket in a private mount namespace).
 */
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <stdint.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "harness.h"
#include "kvtier.h"
#include "test.h"

#define MiB (1024ull * 1024)

/* Generous bounds: these only decide how long a broken daemon makes us wait. */
#define WAIT_MS 10000

static const kvt_block_desc test_desc = { .dtype = KVT_DTYPE_BF16, .tokens = 16 };

/* One daemon under test, with the notify socket it reports to. */
struct sdd {
	struct kvtd d;     /* dir, sock, conf, log, pid: usable with kvtd_stop & co */
	char notify[320];  /* $NOTIFY_SOCKET path */
	int nfd;           /* bound datagram socket at notify */
};

static int64_t mono_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void sleep_ms(int ms)
{
	struct timespec ts = { ms / 1000, (long)(ms % 1000) * 1000000L };
	while (nanosleep(&ts, &ts) < 0 && errno == EINTR)
		;
}

static void write_text(const char *path, const char *text)
{
	int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
	CHECK_MSG(fd >= 0, "create %s: %s", path, strerror(errno));
	CHECK_MSG(raw_send(fd, text, strlen(text)) == 0, "write %s", path);
	close(fd);
}

/* A datagram socket bound at path, as systemd's notify (or journal) socket. */
static int bind_dgram(const char *path)
{
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	CHECK(strlen(path) < sizeof(sa.sun_path));
	strcpy(sa.sun_path, path);
	int fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
	CHECK(fd >= 0);
	unlink(path);
	CHECK_MSG(bind(fd, (struct sockaddr *)&sa, sizeof(sa)) == 0, "bind %s: %s", path,
		  strerror(errno));
	/* Many small datagrams (pings) may queue while a test looks elsewhere. */
	int big = 1 << 20;
	setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &big, sizeof(big));
	return fd;
}

/* Every test's configuration starts so (socket, data_dir, then the test's lines,
 * which win). The NVMe tier is off unless a test turns it on. */
#define BASE_CONFIG                                                                     \
	"socket = %s\ndata_dir = %s/data\nhost_capacity = 64MiB\nsocket_mode = 0666\n"   \
	"workers = 2\nlog_level = debug\nnvme_capacity = 0\n"

/* A temporary directory with a notify socket and a configuration file. */
static void sdd_setup(struct sdd *x, const char *extra_config)
{
	memset(x, 0, sizeof(*x));
	x->d.pid = -1;
	snprintf(x->d.dir, sizeof(x->d.dir), "/tmp/kvtd-sd.XXXXXX");
	CHECK_MSG(mkdtemp(x->d.dir) != NULL, "mkdtemp: %s", strerror(errno));
	chmod(x->d.dir, 0755);
	snprintf(x->d.sock, sizeof(x->d.sock), "%s/kvtierd.sock", x->d.dir);
	snprintf(x->d.conf, sizeof(x->d.conf), "%s/kvtierd.conf", x->d.dir);
	snprintf(x->d.log, sizeof(x->d.log), "%s/kvtierd.log", x->d.dir);
	snprintf(x->notify, sizeof(x->notify), "%s/notify", x->d.dir);
	x->nfd = bind_dgram(x->notify);
	char conf[4096];
	snprintf(conf, sizeof(conf), BASE_CONFIG "%s\n", x->d.sock, x->d.dir,
		 extra_config ? extra_config : "");
	write_text(x->d.conf, conf);
}

/* Rewrite the configuration with the base lines and new extras (for reloads). */
static void sdd_rewrite(struct sdd *x, const char *extra_config)
{
	char conf[4096];
	snprintf(conf, sizeof(conf), BASE_CONFIG "%s\n", x->d.sock, x->d.dir, extra_config);
	/* Write a new file and rename it, as editors do, so a reload never reads
	 * half a file. */
	char tmp[400];
	snprintf(tmp, sizeof(tmp), "%s.new", x->d.conf);
	write_text(tmp, conf);
	CHECK(rename(tmp, x->d.conf) == 0);
}

/*
 * Start argv (argv[0] a path) with stdin /dev/null, stdout+stderr to the log, and
 * the systemd variables cleared except NOTIFY_SOCKET (to x->notify) and env[]
 * ("NAME=value", NULL-terminated, may be NULL).
 */
static void sdd_spawn(struct sdd *x, char *const argv[], const char *const env[])
{
	pid_t parent = getpid();
	fflush(NULL);
	pid_t pid = fork();
	CHECK(pid >= 0);
	if (pid == 0) {
		prctl(PR_SET_PDEATHSIG, SIGKILL);
		if (getppid() != parent)
			_exit(127);
		int in = open("/dev/null", O_RDONLY);
		int lfd = open(x->d.log, O_WRONLY | O_CREAT | O_APPEND, 0644);
		if (in < 0 || lfd < 0)
			_exit(127);
		dup2(in, 0);
		dup2(lfd, 1);
		dup2(lfd, 2);
		signal(SIGPIPE, SIG_DFL);
		sigset_t none;
		sigemptyset(&none);
		sigprocmask(SIG_SETMASK, &none, NULL);
		static const char *const clear[] = { "NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID",
						     "LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES",
						     "JOURNAL_STREAM", "KVT_TEST_WEDGE_FILE" };
		for (size_t i = 0; i < sizeof(clear) / sizeof(clear[0]); i++)
			unsetenv(clear[i]);
		setenv("NOTIFY_SOCKET", x->notify, 1);
		for (size_t i = 0; env && env[i]; i++)
			putenv((char *)env[i]);
		execv(argv[0], argv);
		dprintf(2, "itest_systemd: exec %s: %s\n", argv[0], strerror(errno));
		_exit(127);
	}
	x->d.pid = pid;
}

static void sdd_start(struct sdd *x, const char *const env[])
{
	char *argv[] = { (char *)kvtd_bin("kvtierd"), (char *)"-c", x->d.conf, NULL };
	CHECK_MSG(access(argv[0], X_OK) == 0, "%s: %s", argv[0], strerror(errno));
	sdd_spawn(x, argv, env);
}

/* Show the daemon's log in the failure report. */
static void show_log(struct sdd *x)
{
	const char *log = kvtd_log_text(&x->d);
	size_t n = strlen(log);
	const char *from = n > 6000 ? log + n - 6000 : log;
	char line[512];
	while (*from) {
		size_t l = strcspn(from, "\n");
		snprintf(line, sizeof(line), "%.*s", (int)l, from);
		test_log("| %s", line);
		from += l + (from[l] ? 1 : 0);
	}
}

/* The next notification, NUL-terminated in buf; 0 or -ETIMEDOUT. */
static int notify_recv(struct sdd *x, char *buf, size_t cap, int timeout_ms)
{
	int64_t deadline = mono_ms() + timeout_ms;
	for (;;) {
		int64_t left = deadline - mono_ms();
		if (left < 0)
			left = 0;
		struct pollfd p = { .fd = x->nfd, .events = POLLIN };
		int pr = poll(&p, 1, (int)left);
		if (pr < 0 && errno == EINTR)
			continue;
		CHECK(pr >= 0);
		if (pr == 0)
			return -ETIMEDOUT;
		ssize_t r = recv(x->nfd, buf, cap - 1, MSG_DONTWAIT);
		if (r < 0 && (errno == EAGAIN || errno == EINTR))
			continue;
		CHECK_MSG(r >= 0, "recv notify: %s", strerror(errno));
		buf[r] = 0;
		test_log("notify: %s", buf);
		return 0;
	}
}

/* true if the message has the line exactly (e.g. "READY=1"), or a line starting
 * with it when it ends in '=' (e.g. "STATUS="). */
static bool has_line(const char *msg, const char *line)
{
	size_t n = strlen(line);
	bool prefix = n && line[n - 1] == '=';
	for (const char *p = msg; *p;) {
		size_t l = strcspn(p, "\n");
		if (prefix ? (l >= n && strncmp(p, line, n) == 0) : (l == n && strncmp(p, line, n) == 0))
			return true;
		p += l + (p[l] ? 1 : 0);
	}
	return false;
}

/* Read notifications until one has line; it is left in buf. Fails the test if
 * none comes within timeout_ms or the daemon exits first. */
static void expect_notify(struct sdd *x, const char *line, char *buf, size_t cap, int timeout_ms)
{
	int64_t deadline = mono_ms() + timeout_ms;
	for (;;) {
		int64_t left = deadline - mono_ms();
		if (left <= 0 || notify_recv(x, buf, cap, (int)(left < 200 ? left : 200)) < 0) {
			if (!kvtd_alive(&x->d)) {
				show_log(x);
				test_fail(__FILE__, __LINE__, "kvtierd exited before sending %s", line);
			}
			if (mono_ms() >= deadline) {
				show_log(x);
				test_fail(__FILE__, __LINE__, "no %s within %d ms", line, timeout_ms);
			}
			continue;
		}
		if (!*line || has_line(buf, line)) /* "" takes any message */
			return;
	}
}

/* Count notifications with line arriving within window_ms. */
static int count_notify(struct sdd *x, const char *line, int window_ms)
{
	char buf[1024];
	int n = 0;
	int64_t end = mono_ms() + window_ms;
	for (int64_t left; (left = end - mono_ms()) > 0;)
		if (notify_recv(x, buf, sizeof(buf), (int)left) == 0 && has_line(buf, line))
			n++;
	return n;
}

/* Discard every notification already queued. */
static void drain_notify(struct sdd *x)
{
	char buf[1024];
	while (recv(x->nfd, buf, sizeof(buf), MSG_DONTWAIT) > 0)
		;
}

/* A connection through which the daemon answers HELLO; the limits it reports. */
static struct kvt_hello_rep hello_limits(const char *sock)
{
	int fd = raw_connect(sock);
	static const char name[] = "itest-systemd";
	struct kvt_hello_req req = { .min_version = 1, .max_version = 1, .name = name,
				     .name_len = (uint16_t)strlen(name) };
	uint8_t body[128], rep[512];
	int len = kvt_hello_req_encode(&req, body, sizeof(body));
	CHECK(len > 0);
	CHECK_RC(raw_send_frame(fd, KVT_OP_HELLO, 0, 1, body, (uint32_t)len), 0);
	struct kvt_hdr h;
	CHECK_RC(raw_recv_frame(fd, &h, rep, sizeof(rep), WAIT_MS), 0);
	CHECK_EQ(h.opcode, KVT_OP_HELLO);
	CHECK_RC(h.status, 0);
	struct kvt_hello_rep hr;
	CHECK_RC(kvt_hello_rep_decode(rep, h.body_len < sizeof(rep) ? h.body_len : sizeof(rep), &hr),
		 0);
	hr.server = NULL; /* points into rep */
	close(fd);
	return hr;
}

static kvt_key test_key(uint64_t n)
{
	kvt_key k;
	memset(&k, 0, sizeof(k));
	k.b[0] = 0x5d;
	memcpy(k.b + 8, &n, sizeof(n));
	return k;
}

/* PING, then PUT a block and GET it back, through libkvtier on sock. */
static void ping_put_get(const char *sock, uint64_t n)
{
	kvt_conn *c = NULL;
	CHECK_RC(kvt_conn_open(sock, &c), 0);
	kvt_conn_set_timeout(c, WAIT_MS);
	CHECK_RC(kvt_ping(c), 0);
	kvt_region *r = NULL;
	CHECK_RC(kvt_region_create(c, 2 * MiB, &r), 0);
	uint8_t *base = kvt_region_base(r);
	for (size_t i = 0; i < MiB; i++)
		base[i] = (uint8_t)(i * 31 + n);
	kvt_put_item put = { .key = test_key(n), .region = r, .offset = 0, .length = MiB,
			     .desc = test_desc };
	CHECK_RC(kvt_block_put(c, &put, 1), 0);
	kvt_get_item get = { .key = test_key(n), .region = r, .offset = MiB, .capacity = MiB };
	CHECK_RC(kvt_block_get(c, &get, 1), 0);
	CHECK_EQ(get.length, MiB);
	CHECK(memcmp(base, base + MiB, MiB) == 0);
	CHECK_RC(kvt_region_destroy(r), 0);
	kvt_conn_close(c);
}

static bool log_has(struct sdd *x, const char *text)
{
	return strstr(kvtd_log_text(&x->d), text) != NULL;
}

/* Wait (bounded) for text to appear in the daemon's log. */
static void expect_log(struct sdd *x, const char *text)
{
	for (int64_t end = mono_ms() + WAIT_MS; !log_has(x, text); sleep_ms(10)) {
		if (mono_ms() > end || !kvtd_alive(&x->d)) {
			show_log(x);
			test_fail(__FILE__, __LINE__, "the log never said \"%s\"", text);
		}
	}
}

static int rm_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
	(void)st;
	(void)flag;
	(void)ftw;
	remove(path);
	return 0;
}

/* For a case whose daemon was expected to fail (kvtd_stop keeps the directory). */
static void remove_dir(struct sdd *x)
{
	close(x->nfd);
	nftw(x->d.dir, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
}

static void stop_clean(struct sdd *x)
{
	int st = kvtd_stop(&x->d);
	CHECK_MSG(WIFEXITED(st) && WEXITSTATUS(st) == 0, "kvtierd ended with wait status %#x", st);
	close(x->nfd);
}

/* ---- readiness, watchdog, stopping ------------------------------------------ */

TEST(ready_arrives_only_once_the_socket_accepts)
{
	struct sdd x;
	/* With a (small) NVMe tier, so "the tiers are open" includes its store. */
	sdd_setup(&x, "nvme_capacity = 128MiB\nnvme_segment_size = 64MiB");
	sdd_start(&x, NULL);
	char buf[1024];
	bool status_before = false;
	for (;;) {
		expect_notify(&x, "", buf, sizeof(buf), WAIT_MS); /* any message */
		if (has_line(buf, "READY=1"))
			break;
		status_before |= has_line(buf, "STATUS=");
	}
	/* Right now, without retrying: a READY=1 sent before listen() would fail here. */
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	strcpy(sa.sun_path, x.d.sock);
	int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	CHECK(fd >= 0);
	CHECK_MSG(connect(fd, (struct sockaddr *)&sa, sizeof(sa)) == 0,
		  "connect right after READY=1: %s", strerror(errno));
	raw_hello(fd);
	close(fd);
	CHECK_MSG(status_before, "no STATUS= while starting");
	CHECK_MSG(has_line(buf, "STATUS="), "READY=1 came without a STATUS= summary: %s", buf);
	CHECK_MSG(strstr(buf, "connection") && strstr(buf, "host RAM"),
		  "the summary does not say connections and host RAM: %s", buf);
	/* Without WATCHDOG_USEC there is no watchdog, so no pings. */
	ping_put_get(x.d.sock, 1);
	CHECK_EQ(count_notify(&x, "WATCHDOG=1", 1000), 0);
	stop_clean(&x);
}

/* The deterministic half of "READY=1 only once the socket accepts": a daemon that
 * cannot bind never says READY=1 (one that said it before binding would). */
TEST(ready_never_arrives_when_the_socket_cannot_be_bound)
{
	struct sdd x;
	char buf[1024];
	sdd_setup(&x, NULL);
	write_text(x.d.sock, "not a socket\n");
	sdd_start(&x, NULL);
	int st = 0;
	pid_t r = 0;
	for (int64_t end = mono_ms() + WAIT_MS; (r = waitpid(x.d.pid, &st, WNOHANG)) == 0;) {
		CHECK_MSG(mono_ms() < end, "kvtierd kept running without its socket");
		sleep_ms(10);
	}
	x.d.pid = -1;
	CHECK_MSG(WIFEXITED(st) && WEXITSTATUS(st) == 1, "wait status %#x, expected exit 1", st);
	bool ready = false;
	while (notify_recv(&x, buf, sizeof(buf), 0) == 0)
		ready |= has_line(buf, "READY=1");
	CHECK_MSG(!ready, "READY=1 was sent by a daemon that never accepted a connection");
	remove_dir(&x);
}

TEST(stopping_arrives_on_sigterm)
{
	struct sdd x;
	char buf[1024];
	sdd_setup(&x, NULL);
	sdd_start(&x, NULL);
	expect_notify(&x, "READY=1", buf, sizeof(buf), WAIT_MS);
	CHECK(kill(x.d.pid, SIGTERM) == 0);
	expect_notify(&x, "STOPPING=1", buf, sizeof(buf), WAIT_MS);
	stop_clean(&x);
}

TEST(watchdog_pings_arrive_while_the_loop_runs)
{
	struct sdd x;
	char buf[1024];
	static const char *const env[] = { "WATCHDOG_USEC=400000", NULL };
	sdd_setup(&x, NULL);
	sdd_start(&x, env);
	expect_notify(&x, "READY=1", buf, sizeof(buf), WAIT_MS);
	/* Every 200 ms is expected; ask only for several within a generous bound. */
	int n = 0;
	for (int64_t end = mono_ms() + WAIT_MS; n < 3 && mono_ms() < end;)
		if (notify_recv(&x, buf, sizeof(buf), 500) == 0 && has_line(buf, "WATCHDOG=1"))
			n++;
	CHECK_MSG(n >= 3, "%d WATCHDOG=1 in %d ms with WATCHDOG_USEC=400000", n, WAIT_MS);
	CHECK(log_has(&x, "systemd watchdog: 400 ms"));
	stop_clean(&x);
}

TEST(watchdog_pid_of_another_process_means_no_pings)
{
	struct sdd x;
	char buf[1024], pidenv[64];
	/* sd_watchdog_enabled(3): WATCHDOG_PID names who is watched; not us here. */
	snprintf(pidenv, sizeof(pidenv), "WATCHDOG_PID=%d", (int)getpid());
	const char *const env[] = { "WATCHDOG_USEC=200000", pidenv, NULL };
	sdd_setup(&x, NULL);
	sdd_start(&x, env);
	expect_notify(&x, "READY=1", buf, sizeof(buf), WAIT_MS);
	CHECK_EQ(count_notify(&x, "WATCHDOG=1", 1000), 0);
	stop_clean(&x);
}

TEST(wedged_event_loop_stops_the_pings)
{
	struct sdd x;
	char buf[1024], wedge[400], wedge_env[420];
	sdd_setup(&x, NULL);
	snprintf(wedge, sizeof(wedge), "%s/wedge", x.d.dir);
	snprintf(wedge_env, sizeof(wedge_env), "KVT_TEST_WEDGE_FILE=%s", wedge);
	const char *const env[] = { "WATCHDOG_USEC=400000", wedge_env, NULL };
	sdd_start(&x, env);
	expect_notify(&x, "READY=1", buf, sizeof(buf), WAIT_MS);
	expect_notify(&x, "WATCHDOG=1", buf, sizeof(buf), WAIT_MS);
	int fd = raw_connect(x.d.sock);
	raw_hello(fd);

	write_text(wedge, "");
	expect_log(&x, "event loop wedged");
	drain_notify(&x); /* pings sent before the loop stopped */
	/* A stuck loop neither answers nor pings: a pinging thread would send ~7 here. */
	CHECK_RC(raw_send_frame(fd, KVT_OP_PING, 0, 7, NULL, 0), 0);
	struct kvt_hdr h;
	int rc = raw_recv_frame(fd, &h, NULL, 0, 1500);
	CHECK_MSG(rc == -ETIMEDOUT, "a wedged daemon answered PING (%d)", rc);
	CHECK_EQ(count_notify(&x, "WATCHDOG=1", 1500), 0);

	CHECK(unlink(wedge) == 0);
	expect_notify(&x, "WATCHDOG=1", buf, sizeof(buf), WAIT_MS);
	CHECK_RC(raw_recv_frame(fd, &h, NULL, 0, WAIT_MS), 0);
	CHECK_EQ(h.opcode, KVT_OP_PING);
	CHECK_EQ(h.request_id, 7);
	close(fd);
	stop_clean(&x);
}

/* ---- socket activation -------------------------------------------------------- */

static const char *socket_activate_bin(void)
{
	static const char *const where[] = { "/usr/bin/systemd-socket-activate",
					     "/bin/systemd-socket-activate",
					     "/usr/local/bin/systemd-socket-activate" };
	for (size_t i = 0; i < sizeof(where) / sizeof(where[0]); i++)
		if (access(where[i], X_OK) == 0)
			return where[i];
	test_skip("systemd-socket-activate not installed (Debian: package systemd)");
}

/* Wait until path exists (systemd-socket-activate binds it before anything runs). */
static void wait_for_path(struct sdd *x, const char *path)
{
	struct stat sb;
	for (int64_t end = mono_ms() + WAIT_MS; stat(path, &sb) < 0; sleep_ms(10)) {
		if (mono_ms() > end || !kvtd_alive(&x->d)) {
			show_log(x);
			test_fail(__FILE__, __LINE__, "%s never appeared", path);
		}
	}
}

/* systemd-socket-activate -l PATH -E NOTIFY_SOCKET=... kvtierd -c CONF */
static void spawn_activated(struct sdd *x, const char *path)
{
	static char notify_arg[400];
	const char *ssa = socket_activate_bin();
	/* systemd-socket-activate does not pass NOTIFY_SOCKET through by itself. */
	snprintf(notify_arg, sizeof(notify_arg), "NOTIFY_SOCKET=%s", x->notify);
	char *argv[] = { (char *)ssa, (char *)"-l", (char *)path, (char *)"-E", notify_arg,
			 (char *)kvtd_bin("kvtierd"), (char *)"-c", x->d.conf, NULL };
	sdd_spawn(x, argv, NULL);
	wait_for_path(x, path);
}

TEST(socket_activation_serves_on_the_inherited_socket)
{
	struct sdd x;
	char buf[1024];
	struct stat before, after;
	/* As installed: the configured socket is the socket unit's ListenStream=. */
	sdd_setup(&x, NULL);
	spawn_activated(&x, x.d.sock);
	CHECK(stat(x.d.sock, &before) == 0);
	/* Like systemd, it starts the daemon at the first connection; this one. */
	ping_put_get(x.d.sock, 2);
	expect_notify(&x, "READY=1", buf, sizeof(buf), WAIT_MS);
	ping_put_get(x.d.sock, 3);
	CHECK(log_has(&x, "using the listening socket passed by systemd"));
	CHECK(log_has(&x, "listening on the socket passed by systemd"));

	CHECK(kill(x.d.pid, SIGTERM) == 0);
	expect_notify(&x, "STOPPING=1", buf, sizeof(buf), WAIT_MS);
	for (int i = 0; i < 1000 && kvtd_alive(&x.d); i++)
		sleep_ms(10);
	CHECK_MSG(!kvtd_alive(&x.d), "kvtierd still running 10 s after SIGTERM");
	/* The path belongs to whoever passed the socket (kvtierd.socket): still
	 * there, the same socket, never unlinked and bound again. */
	CHECK_MSG(stat(x.d.sock, &after) == 0 && S_ISSOCK(after.st_mode), "%s was removed",
		  x.d.sock);
	CHECK_MSG(after.st_ino == before.st_ino, "%s was replaced by another socket", x.d.sock);
	stop_clean(&x);
}

TEST(socket_activation_leaves_the_configured_path_alone)
{
	struct sdd x;
	char buf[1024], act[400], unused[280];
	sdd_setup(&x, NULL);
	/* A configured socket in a directory that does not exist: neither is made. */
	snprintf(unused, sizeof(unused), "%s/unused", x.d.dir);
	snprintf(x.d.sock, sizeof(x.d.sock), "%.*s/kvtierd.sock", 280, unused);
	sdd_rewrite(&x, "");
	snprintf(act, sizeof(act), "%s/activated.sock", x.d.dir);
	spawn_activated(&x, act);
	ping_put_get(act, 4);
	expect_notify(&x, "READY=1", buf, sizeof(buf), WAIT_MS);
	struct stat sb;
	CHECK_MSG(stat(unused, &sb) < 0 && errno == ENOENT,
		  "the configured socket's directory %s was created", unused);
	CHECK_MSG(log_has(&x, "the configured socket") && log_has(&x, "is not used"),
		  "no warning that the configured socket is not used");
	stop_clean(&x);
}

TEST(socket_activation_refuses_a_datagram_socket)
{
	struct sdd x;
	char act[400];
	const char *ssa = socket_activate_bin();
	sdd_setup(&x, NULL);
	snprintf(act, sizeof(act), "%s/dgram.sock", x.d.dir);
	char *argv[] = { (char *)ssa, (char *)"--datagram", (char *)"-l", act,
			 (char *)kvtd_bin("kvtierd"), (char *)"-c", x.d.conf, NULL };
	sdd_spawn(&x, argv, NULL);
	wait_for_path(&x, act);
	/* A datagram is what starts the daemon on a datagram socket. */
	int fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	strcpy(sa.sun_path, act);
	CHECK(sendto(fd, "x", 1, 0, (struct sockaddr *)&sa, sizeof(sa)) == 1);
	close(fd);
	int st = 0;
	pid_t r = 0;
	for (int64_t end = mono_ms() + WAIT_MS; (r = waitpid(x.d.pid, &st, WNOHANG)) == 0;) {
		if (mono_ms() > end) {
			show_log(&x);
			test_fail(__FILE__, __LINE__, "kvtierd kept running on a datagram socket");
		}
		sleep_ms(10);
	}
	x.d.pid = -1;
	CHECK_MSG(WIFEXITED(st) && WEXITSTATUS(st) == 1, "wait status %#x, expected exit 1", st);
	CHECK_MSG(log_has(&x, "not a listening Unix stream socket"), "the log does not say why");
	struct stat sb;
	CHECK_MSG(stat(x.d.sock, &sb) < 0, "kvtierd bound %s instead", x.d.sock);
	remove_dir(&x);
}

/* ---- reload ------------------------------------------------------------------------ */

/* SIGHUP, then the RELOADING=1 ... READY=1 pair that brackets the reload. */
static void reload(struct sdd *x)
{
	char buf[1024];
	drain_notify(x);
	CHECK(kill(x->d.pid, SIGHUP) == 0);
	expect_notify(x, "RELOADING=1", buf, sizeof(buf), WAIT_MS);
	CHECK_MSG(has_line(buf, "MONOTONIC_USEC="), "RELOADING=1 without MONOTONIC_USEC=: %s", buf);
	expect_notify(x, "READY=1", buf, sizeof(buf), WAIT_MS);
}

static uint64_t stat_num(const char *sock, const char *name)
{
	kvt_conn *c = NULL;
	kvt_stats *s = NULL;
	uint64_t v = 0;
	CHECK_RC(kvt_conn_open(sock, &c), 0);
	CHECK_RC(kvt_stats_get(c, &s), 0);
	bool ok = kvt_stats_find(s, name, &v);
	kvt_stats_free(s);
	kvt_conn_close(c);
	CHECK_MSG(ok, "STATS has no %s", name);
	return v;
}

TEST(reload_changes_limits_live)
{
	struct sdd x;
	char buf[1024];
	sdd_setup(&x, "max_inflight = 64\nmax_batch = 4096");
	sdd_start(&x, NULL);
	expect_notify(&x, "READY=1", buf, sizeof(buf), WAIT_MS);
	struct kvt_hello_rep h = hello_limits(x.d.sock);
	CHECK_EQ(h.max_inflight, 64);
	CHECK_EQ(h.max_batch, 4096);
	kvt_conn *old = NULL; /* a connection from before the reload */
	CHECK_RC(kvt_conn_open(x.d.sock, &old), 0);
	kvt_conn_set_timeout(old, WAIT_MS);

	sdd_rewrite(&x, "max_inflight = 7\nmax_batch = 100\nquota = 4242:1MiB\n"
			"quota = 4243:2MiB\nhost_capacity = 128MiB\nidle_timeout = 20m");
	reload(&x);
	h = hello_limits(x.d.sock);
	CHECK_EQ(h.max_inflight, 7);
	CHECK_EQ(h.max_batch, 100);
	CHECK(log_has(&x, "reload: max_inflight: 64 -> 7"));
	CHECK(log_has(&x, "reload: max_batch: 4096 -> 100"));
	CHECK(log_has(&x, "reload: idle_timeout: 10m -> 20m"));
	CHECK_EQ(stat_num(x.d.sock, "tenant.4242.quota_bytes"), MiB);
	CHECK_EQ(stat_num(x.d.sock, "tenant.4243.quota_bytes"), 2 * MiB);
	/* The host tier's size is not live: reported, and the old size stays. */
	CHECK(log_has(&x, "reload: host_capacity: 64MiB -> 128MiB: needs a restart"));
	CHECK_EQ(stat_num(x.d.sock, "t1.capacity_bytes"), 64 * MiB);
	CHECK(log_has(&x, "4 changes applied, 1 needs a restart"));
	CHECK_RC(kvt_ping(old), 0);
	kvt_conn_close(old);
	ping_put_get(x.d.sock, 4);

	/* The same settings again, quota lines in another order: nothing to do. */
	sdd_rewrite(&x, "max_inflight = 7\nmax_batch = 100\nquota = 4243:2MiB\n"
			"quota = 4242:1MiB\nhost_capacity = 128MiB\nidle_timeout = 20m");
	reload(&x);
	expect_log(&x, "0 changes applied, 1 needs a restart");
	stop_clean(&x);
}

TEST(bad_config_on_reload_is_refused_and_the_old_one_stays)
{
	struct sdd x;
	char buf[1024];
	sdd_setup(&x, "max_inflight = 9");
	sdd_start(&x, NULL);
	expect_notify(&x, "READY=1", buf, sizeof(buf), WAIT_MS);
	CHECK_EQ(hello_limits(x.d.sock).max_inflight, 9);

	/* A value that does not parse. */
	sdd_rewrite(&x, "max_inflight = lots\nmax_batch = 5");
	reload(&x);
	expect_log(&x, "reload refused: ");
	CHECK(log_has(&x, "max_inflight: bad value 'lots'"));
	CHECK(log_has(&x, "the running configuration stays in force"));
	struct kvt_hello_rep h = hello_limits(x.d.sock);
	CHECK_EQ(h.max_inflight, 9);
	CHECK_EQ(h.max_batch, 4096); /* the good line of the bad file was not applied */
	ping_put_get(x.d.sock, 5);

	/* Values that parse but do not fit together. */
	sdd_rewrite(&x, "max_inflight = 11\nhost_capacity = 1MiB\nhost_chunk = 2MiB");
	reload(&x);
	expect_log(&x, "is smaller than host_chunk");
	CHECK_EQ(hello_limits(x.d.sock).max_inflight, 9);

	/* No file at all. */
	CHECK(unlink(x.d.conf) == 0);
	reload(&x);
	expect_log(&x, "No such file or directory; the running configuration stays in force");
	CHECK_EQ(hello_limits(x.d.sock).max_inflight, 9);
	CHECK(kvtd_alive(&x.d));

	/* And a good file afterwards is taken. */
	sdd_rewrite(&x, "max_inflight = 10");
	reload(&x);
	CHECK_EQ(hello_limits(x.d.sock).max_inflight, 10);
	ping_put_get(x.d.sock, 6);
	stop_clean(&x);
}

TEST(reload_keeps_command_line_overrides)
{
	struct sdd x;
	char buf[1024];
	sdd_setup(&x, "max_batch = 50");
	char *argv[] = { (char *)kvtd_bin("kvtierd"), (char *)"-c", x.d.conf,
			 (char *)"-o", (char *)"max_batch=60", NULL };
	sdd_spawn(&x, argv, NULL);
	expect_notify(&x, "READY=1", buf, sizeof(buf), WAIT_MS);
	CHECK_EQ(hello_limits(x.d.sock).max_batch, 60);
	sdd_rewrite(&x, "max_batch = 70\nmax_inflight = 12");
	reload(&x);
	struct kvt_hello_rep h = hello_limits(x.d.sock);
	CHECK_EQ(h.max_batch, 60); /* -o still wins over the file */
	CHECK_EQ(h.max_inflight, 12);
	stop_clean(&x);
}

/* ---- journal ----------------------------------------------------------------------- */

/* The value of field name in a native-protocol journal datagram, or NULL. */
static const char *journal_field(const char *msg, const char *name, char *val, size_t cap)
{
	size_t n = strlen(name);
	for (const char *p = msg; *p;) {
		size_t l = strcspn(p, "\n");
		if (l > n && strncmp(p, name, n) == 0 && p[n] == '=') {
			snprintf(val, cap, "%.*s", (int)(l - n - 1), p + n + 1);
			return val;
		}
		p += l + (p[l] ? 1 : 0);
	}
	return NULL;
}

/* Journal datagrams until one's MESSAGE contains text; it is left in buf. */
static void expect_journal(int jfd, const char *text, char *buf, size_t cap)
{
	char msg[1024];
	for (int64_t end = mono_ms() + WAIT_MS;;) {
		int64_t left = end - mono_ms();
		CHECK_MSG(left > 0, "no journal entry with \"%s\"", text);
		struct pollfd p = { .fd = jfd, .events = POLLIN };
		if (poll(&p, 1, (int)left) <= 0)
			continue;
		ssize_t r = recv(jfd, buf, cap - 1, MSG_DONTWAIT);
		if (r <= 0)
			continue;
		buf[r] = 0;
		test_log("journal: %s", buf);
		if (journal_field(buf, "MESSAGE", msg, sizeof(msg)) && strstr(msg, text))
			return;
	}
}

TEST(log_lines_carry_journal_fields_when_stderr_is_the_journal)
{
	/* A fake journald: a private mount namespace where /run/systemd is ours. */
	if (unshare(CLONE_NEWNS) < 0)
		test_skip("unshare(CLONE_NEWNS): %s (needs CAP_SYS_ADMIN)", strerror(errno));
	CHECK(mount(NULL, "/", NULL, MS_REC | MS_PRIVATE, NULL) == 0);
	struct stat sb;
	const char *top = stat("/run/systemd", &sb) == 0 ? "/run/systemd" : "/run";
	if (mount("tmpfs", top, "tmpfs", 0, "mode=0755") < 0)
		test_skip("mount tmpfs on %s: %s", top, strerror(errno));
	mkdir("/run/systemd", 0755);
	CHECK(mkdir("/run/systemd/journal", 0755) == 0);
	int jfd = bind_dgram("/run/systemd/journal/socket");

	struct sdd x;
	char buf[4096], val[256], js[96];
	sdd_setup(&x, NULL);
	/* systemd.exec(5): JOURNAL_STREAM is the device:inode of the stream stderr is. */
	write_text(x.d.log, "");
	CHECK(stat(x.d.log, &sb) == 0);
	snprintf(js, sizeof(js), "JOURNAL_STREAM=%llu:%llu", (unsigned long long)sb.st_dev,
		 (unsigned long long)sb.st_ino);
	const char *const env[] = { js, NULL };
	sdd_start(&x, env);
	expect_journal(jfd, "starting (pid", buf, sizeof(buf));
	CHECK_MSG(journal_field(buf, "PRIORITY", val, sizeof(val)) && strcmp(val, "6") == 0,
		  "PRIORITY of an info line: %s", buf);
	CHECK(journal_field(buf, "SYSLOG_IDENTIFIER", val, sizeof(val)) &&
	      strcmp(val, "kvtierd") == 0);
	CHECK_MSG(journal_field(buf, "MESSAGE", val, sizeof(val)) &&
			  strncmp(val, "kvtierd 0.", 10) == 0,
		  "MESSAGE should be the bare text: %s", buf);
	expect_notify(&x, "READY=1", buf, sizeof(buf), WAIT_MS);

	/* A stream error names the tenant (root: 0) and the error. */
	int fd = raw_connect(x.d.sock);
	static const uint8_t junk[64] = { 'n', 'o', 't', ' ', 'k', 'v', 't' };
	CHECK_RC(raw_send(fd, junk, sizeof(junk)), 0);
	expect_journal(jfd, "bad frame magic", buf, sizeof(buf));
	CHECK_MSG(journal_field(buf, "TENANT", val, sizeof(val)) && strcmp(val, "0") == 0,
		  "no TENANT=0: %s", buf);
	CHECK_MSG(journal_field(buf, "ERROR", val, sizeof(val)) && strcmp(val, "EBADMAGIC") == 0,
		  "no ERROR=EBADMAGIC: %s", buf);
	close(fd);

	/* A refused request names its operation too. */
	fd = raw_connect(x.d.sock);
	struct kvt_hello_req req = { .min_version = 99, .max_version = 99, .name = "x",
				     .name_len = 1 };
	uint8_t body[64];
	int len = kvt_hello_req_encode(&req, body, sizeof(body));
	CHECK(len > 0);
	CHECK_RC(raw_send_frame(fd, KVT_OP_HELLO, 0, 1, body, (uint32_t)len), 0);
	expect_journal(jfd, "no common protocol version", buf, sizeof(buf));
	CHECK_MSG(journal_field(buf, "OP", val, sizeof(val)) && strcmp(val, "HELLO") == 0,
		  "no OP=HELLO: %s", buf);
	CHECK_MSG(journal_field(buf, "ERROR", val, sizeof(val)) && strcmp(val, "EVERSION") == 0,
		  "no ERROR=EVERSION: %s", buf);
	CHECK(journal_field(buf, "TENANT", val, sizeof(val)) && strcmp(val, "0") == 0);
	close(fd);
	CHECK_MSG(!log_has(&x, "starting (pid"), "lines sent to the journal went to stderr too");

	stop_clean(&x);

	/* No journald: the lines stay on stderr rather than vanish. */
	close(jfd);
	CHECK(unlink("/run/systemd/journal/socket") == 0);
	sdd_setup(&x, NULL);
	write_text(x.d.log, "");
	CHECK(stat(x.d.log, &sb) == 0);
	snprintf(js, sizeof(js), "JOURNAL_STREAM=%llu:%llu", (unsigned long long)sb.st_dev,
		 (unsigned long long)sb.st_ino);
	sdd_start(&x, env);
	expect_notify(&x, "READY=1", buf, sizeof(buf), WAIT_MS);
	CHECK(log_has(&x, "starting (pid"));
	stop_clean(&x);
}

TEST_MAIN(ready_arrives_only_once_the_socket_accepts,
	  ready_never_arrives_when_the_socket_cannot_be_bound, stopping_arrives_on_sigterm,
	  watchdog_pings_arrive_while_the_loop_runs, watchdog_pid_of_another_process_means_no_pings,
	  wedged_event_loop_stops_the_pings, socket_activation_serves_on_the_inherited_socket,
	  socket_activation_leaves_the_configured_path_alone,
	  socket_activation_refuses_a_datagram_socket, reload_changes_limits_live,
	  bad_config_on_reload_is_refused_and_the_old_one_stays, reload_keeps_command_line_overrides,
	  log_lines_carry_journal_fields_when_stderr_is_the_journal)
