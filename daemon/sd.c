/*
 * sd.c - kvtierd as a systemd service: readiness, status, watchdog, reload and
 * stop notifications (sd_notify(3)), and socket activation (sd_listen_fds(3)).
 * See sd.h for the contract and docs/OPERATIONS.md for the units that use it.
 */
#include "sd.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <systemd/sd-daemon.h>
#include <time.h>
#include <unistd.h>

#include "log.h"
#include "server.h"

/* How often the STATUS= summary is refreshed (only sent when it changed). */
#define STATUS_PERIOD_MS 5000
/* The wedge test hook looks for its file at most this often. */
#define WEDGE_CHECK_MS 20

static struct {
	bool notify;                  /* $NOTIFY_SOCKET is set */
	uint64_t watchdog_ms;         /* ping interval (half of WATCHDOG_USEC), 0 = off */
	uint64_t last_ping_ms;
	uint64_t last_status_ms;
	char last_status[256];
	bool inherited;               /* listening socket came from systemd */
	const char *wedge_file;       /* test hook, see kvtd_sd_loop_tick */
	uint64_t last_wedge_check_ms;
} sd;

void kvtd_sd_init(void)
{
	const char *ns = getenv("NOTIFY_SOCKET");
	uint64_t usec = 0;

	sd.notify = ns && *ns;
	/* > 0 only if WATCHDOG_USEC is set and WATCHDOG_PID, if set, is us. The
	 * variables stay set: nothing we start should inherit them, and we start
	 * nothing. */
	if (sd_watchdog_enabled(0, &usec) > 0 && usec > 0) {
		sd.watchdog_ms = usec / 2000;
		if (sd.watchdog_ms == 0)
			sd.watchdog_ms = 1;
		log_info("systemd watchdog: %" PRIu64 " ms; pinging from the event loop every %" PRIu64
			 " ms", usec / 1000, sd.watchdog_ms);
	}
	sd.wedge_file = getenv("KVT_TEST_WEDGE_FILE");
	if (sd.wedge_file && !*sd.wedge_file)
		sd.wedge_file = NULL;
	if (sd.wedge_file)
		log_warn("test hook: the event loop stops while %s exists (KVT_TEST_WEDGE_FILE)",
			 sd.wedge_file);
}

/* One datagram; failures are ignored (sd_notify(3): the service goes on, and the
 * manager will notice what it did not get, e.g. a missing READY=1 or ping). */
static void notify(const char *msg)
{
	if (sd.notify)
		(void)sd_notify(0, msg);
}

void kvtd_sd_status(const char *fmt, ...)
{
	char text[256], msg[300];
	va_list ap;

	if (!sd.notify)
		return;
	va_start(ap, fmt);
	vsnprintf(text, sizeof(text), fmt, ap);
	va_end(ap);
	snprintf(msg, sizeof(msg), "STATUS=%s", text);
	notify(msg);
}

static void format_bytes(char *buf, size_t cap, uint64_t v)
{
	if (v >= (UINT64_C(1) << 30))
		snprintf(buf, cap, "%.1f GiB", (double)v / (double)(UINT64_C(1) << 30));
	else
		snprintf(buf, cap, "%.1f MiB", (double)v / (double)(UINT64_C(1) << 20));
}

/* The one-line summary: what an operator wants from `systemctl status`. */
static void summary(struct server *s, char *buf, size_t cap)
{
	struct t1_stats ts;
	char used[32], capa[32];

	t1_get_stats(s->t1, &ts);
	format_bytes(used, sizeof(used), ts.used);
	format_bytes(capa, sizeof(capa), ts.capacity);
	snprintf(buf, cap, "Serving: %u connection%s, %" PRIu64 " block%s, %s of %s host RAM used",
		 s->nconns, s->nconns == 1 ? "" : "s", ts.blocks, ts.blocks == 1 ? "" : "s", used,
		 capa);
}

static void send_summary(struct server *s, const char *prefix)
{
	char text[sizeof(sd.last_status)], msg[sizeof(text) + 64];

	summary(s, text, sizeof(text));
	if (!prefix && strcmp(text, sd.last_status) == 0)
		return;
	snprintf(sd.last_status, sizeof(sd.last_status), "%s", text);
	snprintf(msg, sizeof(msg), "%sSTATUS=%s", prefix ? prefix : "", text);
	notify(msg);
}

void kvtd_sd_ready(struct server *s)
{
	if (!sd.notify)
		return;
	sd.last_status_ms = now_ms();
	send_summary(s, "READY=1\n");
	log_debug("systemd: READY=1 sent");
}

static void watchdog_ping(uint64_t t)
{
	sd.last_ping_ms = t;
	notify("WATCHDOG=1");
}

/*
 * Test hook. tests/integ/itest_systemd.c checks that a stuck event loop stops the
 * watchdog pings; stopping the process (SIGSTOP) would prove nothing, since a
 * pinging thread would stop too. With $KVT_TEST_WEDGE_FILE set at start-up, the
 * loop sleeps here, serving nothing and sending no ping, for as long as that file
 * exists. Not a wire feature: only whoever sets the daemon's environment (who can
 * stop it anyway) can use it, and without the variable it costs one branch.
 */
static void test_wedge_hook(uint64_t t)
{
	if (!sd.wedge_file || t - sd.last_wedge_check_ms < WEDGE_CHECK_MS)
		return;
	sd.last_wedge_check_ms = t;
	if (access(sd.wedge_file, F_OK) != 0)
		return;
	log_warn("test hook: %s exists: event loop wedged", sd.wedge_file);
	struct timespec nap = { 0, 10 * 1000 * 1000 };
	while (access(sd.wedge_file, F_OK) == 0)
		nanosleep(&nap, NULL);
	log_warn("test hook: %s removed: event loop running again", sd.wedge_file);
}

void kvtd_sd_loop_tick(struct server *s)
{
	uint64_t t = now_ms();

	test_wedge_hook(t);
	if (!sd.notify)
		return;
	t = now_ms();
	if (sd.watchdog_ms && t - sd.last_ping_ms >= sd.watchdog_ms)
		watchdog_ping(t);
	if (!s->stopping && t - sd.last_status_ms >= STATUS_PERIOD_MS) {
		sd.last_status_ms = t;
		send_summary(s, NULL);
	}
}

void kvtd_sd_stopping(struct server *s)
{
	char msg[128];

	snprintf(msg, sizeof(msg), "STOPPING=1\nSTATUS=Shutting down: %u connection%s to drain",
		 s->nconns, s->nconns == 1 ? "" : "s");
	notify(msg);
}

void kvtd_sd_reloading(void)
{
	struct timespec ts;
	char msg[96];

	/* MONOTONIC_USEC lets systemd >= 253 (Type=notify-reload) match this
	 * RELOADING=1 to the reload it asked for; 252 ignores the field. */
	clock_gettime(CLOCK_MONOTONIC, &ts);
	snprintf(msg, sizeof(msg), "RELOADING=1\nMONOTONIC_USEC=%" PRIu64 "\nSTATUS=Reloading",
		 (uint64_t)ts.tv_sec * 1000000 + (uint64_t)ts.tv_nsec / 1000);
	notify(msg);
}

void kvtd_sd_reloaded(struct server *s, const char *outcome)
{
	char text[sizeof(sd.last_status)], msg[sizeof(text) + 160];

	if (!sd.notify)
		return;
	summary(s, text, sizeof(text));
	snprintf(sd.last_status, sizeof(sd.last_status), "%s", text);
	snprintf(msg, sizeof(msg), "READY=1\nSTATUS=%s. %s", outcome, text);
	notify(msg);
}

/* ---- socket activation ---------------------------------------------------- */

int kvtd_sd_listen_fd(const char *configured_path, int *fd)
{
	/* unset_environment = 1: LISTEN_* describe this process only. */
	int n = sd_listen_fds(1);
	if (n < 0) {
		log_error("socket activation: invalid LISTEN_FDS/LISTEN_PID: %s", strerror(-n));
		return n;
	}
	if (n == 0)
		return -ENOENT;
	if (n != 1) {
		log_error("socket activation: systemd passed %d sockets; kvtierd serves exactly one "
			  "(one ListenStream= in kvtierd.socket)", n);
		return -EINVAL;
	}
	int lfd = SD_LISTEN_FDS_START;
	if (sd_is_socket_unix(lfd, SOCK_STREAM, 1, NULL, 0) <= 0) {
		log_error("socket activation: the socket passed by systemd is not a listening "
			  "Unix stream socket (kvtierd.socket needs ListenStream=/path)");
		return -EINVAL;
	}
	/* systemd passes a blocking descriptor; the accept loop runs until EAGAIN. */
	int fl = fcntl(lfd, F_GETFL);
	if (fl < 0 || fcntl(lfd, F_SETFL, fl | O_NONBLOCK) < 0 ||
	    fcntl(lfd, F_SETFD, FD_CLOEXEC) < 0) {
		int e = errno;
		log_error("socket activation: fcntl: %s", strerror(e));
		return -e;
	}
	struct sockaddr_un sa;
	socklen_t len = sizeof(sa);
	char path[sizeof(sa.sun_path) + 1] = "";
	memset(&sa, 0, sizeof(sa));
	if (getsockname(lfd, (struct sockaddr *)&sa, &len) == 0 &&
	    len > offsetof(struct sockaddr_un, sun_path) && sa.sun_path[0])
		snprintf(path, sizeof(path), "%.*s",
			 (int)(len - offsetof(struct sockaddr_un, sun_path)), sa.sun_path);
	if (path[0] && configured_path && strcmp(path, configured_path) != 0)
		log_warn("socket activation: serving on %s, passed by systemd; the configured "
			 "socket %s is not used", path, configured_path);
	log_info("socket activation: using the listening socket passed by systemd (%s)",
		 path[0] ? path : "unnamed");
	sd.inherited = true;
	*fd = lfd;
	return 0;
}

bool kvtd_sd_socket_inherited(void)
{
	return sd.inherited;
}

bool kvtd_sd_socket_passed(void)
{
	const char *pid = getenv("LISTEN_PID"), *fds = getenv("LISTEN_FDS");

	return pid && fds && *fds && strtol(pid, NULL, 10) == (long)getpid();
}
