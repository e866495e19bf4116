/*
 * itest_lifecycle.c - clients and the daemon going away: a client SIGKILLed in
 * the middle of transfers leaves no file descriptor, mapping, pin or connection
 * behind; SIGTERM and SIGINT shut the daemon down cleanly (socket removed,
 * in-flight work answered, exit 0); a bad configuration is refused at start.
 */
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdint.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "harness.h"
#include "kvtier.h"
#include "test.h"

#define KiB (1024ull)
#define MiB (1024ull * 1024)

static const kvt_block_desc test_desc = { .dtype = KVT_DTYPE_BF16, .tokens = 16 };

static kvt_key test_key(uint32_t ns, uint64_t n)
{
	kvt_key k;
	memset(&k, 0, sizeof(k));
	k.b[0] = 0x6c;
	memcpy(k.b + 4, &ns, sizeof(ns));
	memcpy(k.b + 8, &n, sizeof(n));
	return k;
}

/* If the daemon died (or dies within wait_ms), fail showing the end of its log:
 * called when a request unexpectedly fails, to tell a crash from a refusal. */
static void fail_if_daemon_died(struct kvtd *d, int wait_ms)
{
	for (int i = 0; i < wait_ms / 10 && kvtd_alive(d); i++)
		test_sleep_ms(10);
	if (kvtd_alive(d))
		return;
	const char *log = kvtd_log_text(d);
	size_t n = strlen(log);
	const char *from = n > 6000 ? log + n - 6000 : log;
	char line[512];
	while (*from) {
		size_t l = strcspn(from, "\n");
		snprintf(line, sizeof(line), "%.*s", (int)l, from);
		test_log("| %s", line);
		from += l + (from[l] ? 1 : 0);
	}
	test_fail(__FILE__, __LINE__, "kvtierd died (log above)");
}

static void ping_ok_or_died(struct kvtd *d, kvt_conn *c)
{
	int rc = kvt_ping(c);
	if (rc != 0)
		fail_if_daemon_died(d, 1000);
	CHECK_RC(rc, 0);
}

/* Mappings of memfds in the daemon: the regions it still has mapped. */
static int memfd_mappings(pid_t pid)
{
	char path[64], line[1024];
	snprintf(path, sizeof(path), "/proc/%d/maps", (int)pid);
	FILE *f = fopen(path, "re");
	CHECK(f != NULL);
	int n = 0;
	while (fgets(line, sizeof(line), f))
		if (strstr(line, "/memfd:"))
			n++;
	fclose(f);
	return n;
}

struct baseline {
	int fds;
	int maps;
};

/* The daemon's resources with exactly one client (c) connected: waits until the
 * harness's start-up probes are gone (conn.current == 1) first. */
static struct baseline measure(struct kvtd *d, kvt_conn *c)
{
	for (int i = 0; i < 1000 && kvtd_stat(c, "conn.current") != 1; i++)
		test_sleep_ms(10);
	CHECK_EQ(kvtd_stat(c, "conn.current"), 1);
	struct baseline b = { proc_fd_count(d->pid), memfd_mappings(d->pid) };
	CHECK(b.fds > 0);
	return b;
}

/* Wait (bounded) until the daemon is back to b with only c connected. */
static void expect_baseline(struct kvtd *d, kvt_conn *c, struct baseline b)
{
	uint64_t cur = 0;
	int fds = 0, maps = 0;
	for (int i = 0; i < 1000; i++) {
		cur = kvtd_stat(c, "conn.current");
		fds = proc_fd_count(d->pid);
		maps = memfd_mappings(d->pid);
		if (cur == 1 && fds == b.fds && maps == b.maps)
			return;
		test_sleep_ms(10);
	}
	CHECK_EQ(cur, 1);
	CHECK_EQ(fds, b.fds);
	CHECK_EQ(maps, b.maps);
}

/*
 * Child: register regions, pin a block, put a pipeline of large PUTs and GETs on
 * the wire, tell the parent (one byte on ready_fd) and wait to be killed.
 */
static void doomed_client(const struct kvtd *d, int ready_fd, uint32_t ns)
{
	enum { N = 24, BLK = 1024 * 1024 };
	kvt_conn *c = kvtd_connect(d, 30000);
	kvt_region *r = kvtd_region(c, N * BLK);
	kvt_region *r2 = kvtd_region(c, N * BLK); /* GET destinations */
	fill_pattern(kvt_region_base(r), N * BLK, ns);
	kvt_key pk = test_key(ns, 1000);
	kvt_put_item pin_it = { .key = pk, .region = r, .offset = 0, .length = 4096,
				.desc = test_desc };
	CHECK_RC(kvt_block_put(c, &pin_it, 1), 0);
	CHECK_RC(kvt_block_pin(c, &pk, 1, NULL), 0);
	static kvt_put_item put[N];
	static kvt_get_item get[N];
	kvt_ticket tk;
	for (int i = 0; i < N; i++) {
		put[i] = (kvt_put_item){ .key = test_key(ns, (uint64_t)i), .region = r,
					 .offset = (uint64_t)i * BLK, .length = BLK,
					 .desc = test_desc };
		CHECK_RC(kvt_block_put_start(c, &put[i], 1, &tk), 0);
	}
	for (int i = 0; i < N; i++) {
		get[i] = (kvt_get_item){ .key = test_key(ns, (uint64_t)(N - 1 - i)), .region = r2,
					 .offset = (uint64_t)i * BLK, .capacity = BLK };
		CHECK_RC(kvt_block_get_start(c, &get[i], 1, &tk), 0);
	}
	char b = 1;
	CHECK(write(ready_fd, &b, 1) == 1);
	for (;;)
		pause();
}

#define ROUNDS 6

TEST(client_killed_mid_transfer_leaves_nothing_behind)
{
	struct kvtd d;
	kvtd_start(&d, NULL);
	kvt_conn *c = kvtd_connect(&d, 30000);
	struct baseline b = measure(&d, c);
	test_log("baseline: %d fds, %d memfd mappings", b.fds, b.maps);

	/* Several rounds: the daemon's cleanup races with its workers finishing the
	 * dead client's copies, and one round may not hit the bad interleaving. */
	for (uint32_t round = 1; round <= ROUNDS; round++) {
		int p[2];
		CHECK(pipe(p) == 0);
		fflush(NULL);
		pid_t pid = fork();
		CHECK(pid >= 0);
		if (pid == 0) {
			close(p[0]);
			doomed_client(&d, p[1], round);
			_exit(0);
		}
		close(p[1]);
		char x;
		CHECK_MSG(read(p[0], &x, 1) == 1, "client %u died before it was ready", round);
		close(p[0]);
		CHECK_EQ(kvtd_stat(c, "t1.pinned_blocks"), 1);
		kill(pid, SIGKILL);
		int st;
		CHECK(waitpid(pid, &st, 0) == pid);
		CHECK(WIFSIGNALED(st) && WTERMSIG(st) == SIGKILL);

		ping_ok_or_died(&d, c);
		expect_baseline(&d, c, b);
		/* The dead client's pin is gone: the block can be deleted. */
		CHECK_EQ(kvtd_stat(c, "t1.pinned_blocks"), 0);
		kvt_key pk = test_key(round, 1000);
		int ds = 1;
		CHECK_RC(kvt_block_delete(c, &pk, 1, &ds), 0);
		CHECK_RC(ds, 0);
	}
	/* Whatever the dead clients managed to store is whole: a block is visible
	 * only once all of its bytes were copied. */
	kvt_region *r = kvtd_region(c, 1 * MiB);
	uint8_t *want = malloc(24 * MiB);
	CHECK(want != NULL);
	int stored = 0;
	for (uint32_t round = 1; round <= ROUNDS; round++) {
		fill_pattern(want, 24 * MiB, round);
		for (int i = 0; i < 24; i++) {
			kvt_get_item g = { .key = test_key(round, (uint64_t)i), .region = r,
					   .capacity = 1 * MiB };
			int rc = kvt_block_get(c, &g, 1);
			CHECK(rc == 0 || rc == KVT_EPARTIAL);
			if (g.status == KVT_ENOENT)
				continue;
			CHECK_RC(g.status, 0);
			CHECK_EQ(g.length, 1 * MiB);
			CHECK_MSG(memcmp(kvt_region_base(r), want + (size_t)i * MiB, 1 * MiB) == 0,
				  "round %u block %d has wrong bytes", round, i);
			stored++;
		}
	}
	test_log("%d blocks of the killed clients were stored", stored);
	free(want);
	CHECK_RC(kvt_region_destroy(r), 0);
	kvt_conn_close(c);
	kvtd_stop_clean(&d);
}

/* Child of many_clients_killed_at_once: keep the daemon's workers busy with
 * small copies for this connection, then report ready and wait to die. */
static void busy_client(const struct kvtd *d, int ready_fd, uint32_t ns)
{
	enum { N = 60, BLK = 128 * 1024 };
	kvt_conn *c = kvtd_connect(d, 30000);
	kvt_region *r = kvtd_region(c, N * BLK);
	fill_pattern(kvt_region_base(r), N * BLK, ns);
	static kvt_put_item put[N];
	kvt_ticket tk[N];
	for (uint64_t round = 0;; round++) {
		for (int i = 0; i < N; i++) {
			put[i] = (kvt_put_item){ .key = test_key(ns, round * N + (uint64_t)i),
						 .region = r, .offset = (uint64_t)i * BLK,
						 .length = BLK, .desc = test_desc };
			CHECK_RC(kvt_block_put_start(c, &put[i], 1, &tk[i]), 0);
		}
		if (round == 0) {
			char b = 1;
			CHECK(write(ready_fd, &b, 1) == 1);
		}
		/* Keep copies flowing until the parent kills us. */
		for (int i = 0; i < N; i++)
			kvt_wait(c, tk[i]);
	}
}

TEST(many_clients_killed_at_once)
{
	enum { CLIENTS = 8, ROUNDS_ALL = 4 };
	struct kvtd d;
	kvtd_start(&d, NULL);
	kvt_conn *c = kvtd_connect(&d, 30000);
	struct baseline b = measure(&d, c);
	for (uint32_t round = 0; round < ROUNDS_ALL; round++) {
		pid_t pids[CLIENTS];
		int p[2];
		CHECK(pipe(p) == 0);
		for (int i = 0; i < CLIENTS; i++) {
			fflush(NULL);
			pids[i] = fork();
			CHECK(pids[i] >= 0);
			if (pids[i] == 0) {
				close(p[0]);
				busy_client(&d, p[1], 100 + round * CLIENTS + (uint32_t)i);
				_exit(0);
			}
		}
		close(p[1]);
		for (int i = 0; i < CLIENTS; i++) {
			char x;
			CHECK_MSG(read(p[0], &x, 1) == 1, "a client died before it was ready");
		}
		close(p[0]);
		for (int i = 0; i < CLIENTS; i++)
			kill(pids[i], SIGKILL);
		for (int i = 0; i < CLIENTS; i++) {
			int st;
			CHECK(waitpid(pids[i], &st, 0) == pids[i]);
		}
		ping_ok_or_died(&d, c);
		expect_baseline(&d, c, b);
	}
	kvt_conn_close(c);
	kvtd_stop_clean(&d);
}

TEST(many_short_connections_do_not_leak)
{
	struct kvtd d;
	kvtd_start(&d, NULL);
	kvt_conn *c = kvtd_connect(&d, 30000);
	struct baseline b = measure(&d, c);
	uint64_t total0 = kvtd_stat(c, "conn.total");
	for (int i = 0; i < 50; i++) {
		kvt_conn *x = kvtd_connect(&d, 30000);
		kvt_region *r = kvtd_region(x, 64 * KiB);
		if (i % 2)
			CHECK_RC(kvt_region_destroy(r), 0);
		kvt_conn_close(x);
		if (i % 2 == 0)
			CHECK_RC(kvt_region_destroy(r), 0);
	}
	expect_baseline(&d, c, b);
	CHECK(kvtd_stat(c, "conn.total") >= total0 + 50);
	kvt_conn_close(c);
	kvtd_stop_clean(&d);
}

TEST(sigterm_removes_the_socket_and_exits_zero)
{
	struct kvtd d;
	kvtd_start(&d, NULL);
	const char *log = kvtd_log_text(&d);
	CHECK_MSG(strstr(log, "listening on ") && strstr(log, d.sock),
		  "the log does not say it is listening on %s", d.sock);
	kvt_conn *c = kvtd_connect(&d, 30000);
	kvt_region *r = kvtd_region(c, 1 * MiB);
	kvt_put_item it = { .key = test_key(20, 1), .region = r, .length = 1000,
			    .desc = test_desc };
	CHECK_RC(kvt_block_put(c, &it, 1), 0);
	CHECK_RC(kvt_region_destroy(r), 0);
	kvt_conn_close(c);

	CHECK(kill(d.pid, SIGTERM) == 0);
	/* The socket goes away before (or as) the daemon exits. */
	struct stat sb;
	for (int i = 0; i < 1000 && kvtd_alive(&d); i++)
		test_sleep_ms(10);
	CHECK_MSG(!kvtd_alive(&d), "kvtierd still running 10 s after SIGTERM");
	CHECK_MSG(stat(d.sock, &sb) < 0 && errno == ENOENT, "socket %s left behind", d.sock);
	kvt_conn *late = NULL;
	int rc = kvt_conn_open(d.sock, &late);
	CHECK_MSG(rc == KVT_ENOENT || rc == KVT_ECONNREFUSED, "connect after exit: %s",
		  test_errname(rc));
	kvtd_stop_clean(&d);
}

TEST(sigint_shuts_down_like_sigterm)
{
	struct kvtd d;
	kvtd_start(&d, NULL);
	CHECK(kill(d.pid, SIGINT) == 0);
	for (int i = 0; i < 1000 && kvtd_alive(&d); i++)
		test_sleep_ms(10);
	CHECK_MSG(!kvtd_alive(&d), "kvtierd still running 10 s after SIGINT");
	struct stat sb;
	CHECK_MSG(stat(d.sock, &sb) < 0 && errno == ENOENT, "socket %s left behind", d.sock);
	kvtd_stop_clean(&d);
}

TEST(sigterm_with_idle_clients_closes_them)
{
	struct kvtd d;
	kvtd_start(&d, NULL);
	kvt_conn *a = kvtd_connect(&d, 30000);
	kvt_conn *b = kvtd_connect(&d, 30000);
	kvt_region *r = kvtd_region(b, 1 * MiB);
	CHECK_RC(kvt_ping(a), 0);
	kvtd_stop_clean(&d); /* bounded: fails if idle clients keep it alive */
	int rc = kvt_ping(a);
	CHECK_MSG(rc != 0, "ping after the daemon exited succeeded");
	test_log("ping after shutdown: %s", test_errname(rc));
	kvt_region_destroy(r);
	kvt_conn_close(a);
	kvt_conn_close(b);
}

TEST(sigterm_during_transfers_answers_or_refuses_each)
{
	/* 48 MiB of copies in flight leaves room in the 64 MiB tier for the late
	 * requests, so none of them can fail for space. */
	enum { N = 24, BLK = 2 * 1024 * 1024 };
	struct kvtd d;
	kvtd_start(&d, NULL);
	kvt_conn *c = kvtd_connect(&d, 30000);
	kvt_region *r = kvtd_region(c, N * BLK);
	fill_pattern(kvt_region_base(r), N * BLK, 9);
	static kvt_put_item put[N];
	kvt_ticket tk[N];
	for (int i = 0; i < N; i++) {
		put[i] = (kvt_put_item){ .key = test_key(21, (uint64_t)i), .region = r,
					 .offset = (uint64_t)i * BLK, .length = BLK,
					 .desc = test_desc, .status = 12345 };
		CHECK_RC(kvt_block_put_start(c, &put[i], 1, &tk[i]), 0);
	}
	CHECK(kill(d.pid, SIGTERM) == 0);
	/* Requests sent after the signal: refused (ESHUTDOWN) if the daemon still
	 * reads them, lost with the connection if it already closed it. */
	static kvt_put_item late[N];
	kvt_ticket ltk[N];
	int nlate = 0;
	for (int i = 0; i < N; i++) {
		late[i] = put[i];
		late[i].key = test_key(22, (uint64_t)i);
		late[i].length = 4096;
		if (kvt_block_put_start(c, &late[i], 1, &ltk[nlate]) == 0)
			nlate++;
		else
			break;
	}
	int ok = 0, refused = 0, lost = 0;
	for (int i = 0; i < N + nlate; i++) {
		int rc = kvt_wait(c, i < N ? tk[i] : ltk[i - N]);
		if (rc == 0)
			ok++;
		else if (rc == KVT_ESHUTDOWN)
			refused++;
		else if (rc == KVT_ECLOSED || rc == KVT_ECONNRESET)
			lost++;
		else
			test_fail(__FILE__, __LINE__, "ticket %d: %s (item status %s)", i,
				  test_errname(rc),
				  test_errname(i < N ? put[i].status : late[i - N].status));
	}
	test_log("after SIGTERM: %d stored, %d refused, %d lost with the connection (%d sent late)",
		 ok, refused, lost, nlate);
	kvtd_stop_clean(&d);
	kvt_region_destroy(r);
	kvt_conn_close(c);
}

TEST(clients_see_a_crashed_daemon_as_an_error)
{
	struct kvtd d;
	kvtd_start(&d, NULL);
	kvt_conn *c = kvtd_connect(&d, 30000);
	kvt_region *r = kvtd_region(c, 1 * MiB);
	char sock[sizeof(d.sock)];
	memcpy(sock, d.sock, sizeof(sock));
	kvtd_kill(&d);
	int rc = kvt_ping(c);
	test_log("ping after SIGKILL: %s", test_errname(rc));
	CHECK_MSG(rc == KVT_ECLOSED || rc == KVT_ECONNRESET, "ping to a dead daemon: %s",
		  test_errname(rc));
	CHECK_RC(kvt_ping(c), KVT_ECLOSED);
	kvt_put_item it = { .key = test_key(30, 1), .region = r, .length = 10,
			    .desc = test_desc };
	CHECK_RC(kvt_block_put(c, &it, 1), KVT_ECLOSED);
	kvt_region_destroy(r);
	kvt_conn_close(c);
	kvt_conn *late = NULL;
	rc = kvt_conn_open(sock, &late);
	CHECK_MSG(rc == KVT_ECONNREFUSED || rc == KVT_ENOENT, "connect to a dead daemon: %s",
		  test_errname(rc));
}

TEST(unresponsive_daemon_times_the_call_out)
{
	struct kvtd d;
	kvtd_start(&d, NULL);
	kvt_conn *c = kvtd_connect(&d, 30000);
	kvt_conn_set_timeout(c, 300);
	CHECK_RC(kvt_ping(c), 0);
	CHECK(kill(d.pid, SIGSTOP) == 0);
	int rc = kvt_ping(c);
	CHECK(kill(d.pid, SIGCONT) == 0);
	CHECK_RC(rc, KVT_ETIMEDOUT);
	/* The stream position is lost: the connection is broken for good. */
	CHECK_RC(kvt_ping(c), KVT_ECLOSED);
	kvt_region *r = NULL;
	CHECK_RC(kvt_region_create(c, 4096, &r), KVT_ECLOSED);
	kvt_conn_close(c);
	/* The daemon itself is fine once it runs again. */
	c = kvtd_connect(&d, 30000);
	ping_ok_or_died(&d, c);
	kvt_conn_close(c);
	kvtd_stop_clean(&d);
}

TEST(bad_configuration_is_refused_with_file_and_line)
{
	char dir[] = "/tmp/kvtd-badconf.XXXXXX";
	CHECK(mkdtemp(dir) != NULL);
	char conf[128], out[160];
	snprintf(conf, sizeof(conf), "%s/bad.conf", dir);
	snprintf(out, sizeof(out), "%s/err", dir);
	FILE *f = fopen(conf, "we");
	CHECK(f != NULL);
	fprintf(f, "# fine\nsocket = %s/s.sock\nno_such_key = 1\n", dir);
	fclose(f);
	fflush(NULL);
	pid_t pid = fork();
	CHECK(pid >= 0);
	if (pid == 0) {
		int fd = open(out, O_WRONLY | O_CREAT | O_TRUNC, 0644);
		if (fd < 0)
			_exit(126);
		dup2(fd, 1);
		dup2(fd, 2);
		execl(kvtd_bin("kvtierd"), "kvtierd", "-c", conf, (char *)NULL);
		_exit(127);
	}
	int st = 0;
	bool exited = false;
	for (int i = 0; i < 1000 && !exited; i++) {
		exited = waitpid(pid, &st, WNOHANG) == pid;
		if (!exited)
			test_sleep_ms(10);
	}
	if (!exited) {
		kill(pid, SIGKILL);
		waitpid(pid, &st, 0);
		test_fail(__FILE__, __LINE__, "kvtierd kept running with an unknown key");
	}
	CHECK_MSG(WIFEXITED(st) && WEXITSTATUS(st) != 0 && WEXITSTATUS(st) < 126,
		  "kvtierd wait status %#x", st);
	char msg[4096] = "";
	FILE *e = fopen(out, "re");
	CHECK(e != NULL);
	size_t n = fread(msg, 1, sizeof(msg) - 1, e);
	msg[n] = 0;
	fclose(e);
	char where[160];
	snprintf(where, sizeof(where), "bad.conf:3");
	CHECK_MSG(strstr(msg, where) != NULL, "error does not name %s: %s", where, msg);
	struct stat sb;
	char sock[160];
	snprintf(sock, sizeof(sock), "%s/s.sock", dir);
	CHECK(stat(sock, &sb) < 0);
	unlink(conf);
	unlink(out);
	rmdir(dir);
}

TEST_MAIN(client_killed_mid_transfer_leaves_nothing_behind, many_clients_killed_at_once,
	  many_short_connections_do_not_leak,
	  sigterm_removes_the_socket_and_exits_zero, sigint_shuts_down_like_sigterm,
	  sigterm_with_idle_clients_closes_them, sigterm_during_transfers_answers_or_refuses_each,
	  clients_see_a_crashed_daemon_as_an_error, unresponsive_daemon_times_the_call_out,
	  bad_configuration_is_refused_with_file_and_line)
