/*
 * main.c - kvtierd: command line, start-up (configuration, host tier, workers,
 * socket), the epoll event loop, signals and clean shutdown.
 */
#include <errno.h>
#include <getopt.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/signalfd.h>
#include <sys/stat.h>
#include <unistd.h>

#include "log.h"
#include "reload.h"
#include "ctxmem.h"
#include "gpu.h"
#include "tier2.h"
#include "sd.h"
#include "server.h"

/* Timeouts are checked this often; they are configured in seconds. */
#define TICK_MS 100
/* How long shutdown waits for replies to drain to slow readers. */
#define SHUTDOWN_FLUSH_MS 2000

/* Tags for epoll entries that are not connections. */
static char tag_listen, tag_signal, tag_workers;

static void usage(FILE *out)
{
	fprintf(out,
		"usage: kvtierd [-c FILE] [-o KEY=VALUE]... [-l LEVEL] [--print-config]\n"
		"\n"
		"  -c, --config FILE     read the configuration from FILE\n"
		"                        (default: the embedded configuration; see kvtierd.conf(5))\n"
		"  -o, --set KEY=VALUE   override one key after the file (repeatable)\n"
		"  -l, --log-level LEVEL error, warn, info or debug\n"
		"      --print-config    print the effective configuration and exit\n"
		"  -h, --help            this help\n"
		"  -V, --version         print the version\n");
}

static int mkdir_p(const char *path, mode_t mode)
{
	char buf[4096];
	if (snprintf(buf, sizeof(buf), "%s", path) >= (int)sizeof(buf))
		return -ENAMETOOLONG;
	for (char *p = buf + 1; *p; p++) {
		if (*p != '/')
			continue;
		*p = 0;
		if (mkdir(buf, mode) < 0 && errno != EEXIST)
			return -errno;
		*p = '/';
	}
	if (mkdir(buf, mode) < 0 && errno != EEXIST)
		return -errno;
	return 0;
}

static int socket_dir_create(const char *sock)
{
	char dir[sizeof(((struct kvtd_config *)0)->socket_path)];
	snprintf(dir, sizeof(dir), "%s", sock);
	char *slash = strrchr(dir, '/');
	if (!slash || slash == dir)
		return 0;
	*slash = 0;
	return mkdir_p(dir, 0755);
}

static int parse_args(int argc, char **argv, struct kvtd_config *cfg, bool *print_only)
{
	static const struct option opts[] = {
		{ "config", required_argument, NULL, 'c' },
		{ "set", required_argument, NULL, 'o' },
		{ "log-level", required_argument, NULL, 'l' },
		{ "print-config", no_argument, NULL, 'P' },
		{ "help", no_argument, NULL, 'h' },
		{ "version", no_argument, NULL, 'V' },
		{ NULL, 0, NULL, 0 },
	};
	char err[512];
	const char *file = NULL;
	/* First pass: the file, so that -o and -l override it whatever their order. */
	int ch;
	while ((ch = getopt_long(argc, argv, "c:o:l:hV", opts, NULL)) != -1) {
		switch (ch) {
		case 'c': file = optarg; break;
		case 'o':
		case 'l':
		case 'P': break;
		case 'h': usage(stdout); exit(0);
		case 'V': printf("kvtierd %s\n", KVT_VERSION_STRING); exit(0);
		default: usage(stderr); return -EINVAL;
		}
	}
	if (optind < argc) {
		fprintf(stderr, "kvtierd: unexpected argument '%s'\n", argv[optind]);
		usage(stderr);
		return -EINVAL;
	}
	if (file && config_parse_file(cfg, file, err, sizeof(err)) < 0) {
		fprintf(stderr, "kvtierd: %s\n", err);
		return -EINVAL;
	}
	reload_set_file(file); /* SIGHUP repeats the file and the overrides (reload.c) */
	optind = 1;
	while ((ch = getopt_long(argc, argv, "c:o:l:hV", opts, NULL)) != -1) {
		char kv[512];
		switch (ch) {
		case 'o':
			if (config_set(cfg, optarg, err, sizeof(err)) < 0) {
				fprintf(stderr, "kvtierd: %s\n", err);
				return -EINVAL;
			}
			if (reload_add_override(optarg) < 0)
				return -ENOMEM;
			break;
		case 'l':
			snprintf(kv, sizeof(kv), "log_level=%s", optarg);
			if (config_set(cfg, kv, err, sizeof(err)) < 0) {
				fprintf(stderr, "kvtierd: %s\n", err);
				return -EINVAL;
			}
			if (reload_add_override(kv) < 0)
				return -ENOMEM;
			break;
		case 'P': *print_only = true; break;
		default: break;
		}
	}
	if (config_finish(cfg, err, sizeof(err)) < 0) {
		fprintf(stderr, "kvtierd: %s\n", err);
		return -EINVAL;
	}
	return 0;
}

static int epoll_add(int epfd, int fd, void *tag)
{
	struct epoll_event e = { .events = EPOLLIN, .data.ptr = tag };
	return epoll_ctl(epfd, EPOLL_CTL_ADD, fd, &e) < 0 ? -errno : 0;
}

/* The host tier evicts a block: the NVMe tier counts what it never got, and the
 * GPU tier drops its copy (T0 holds only blocks the host tier holds). */
static void host_on_evict(const struct t1_block *b, void *arg)
{
	tier2_on_evict(b, arg);
	gpu_t0_host_evict(arg, b);
}

static int open_host_tier(struct server *s)
{
	const struct kvtd_config *cfg = s->cfg;
	struct t1_config tc = {
		.capacity = cfg->host_capacity,
		.chunk_size = cfg->host_chunk,
		.hugepages = cfg->host_hugepages,
		.mlock = cfg->host_mlock,
		.default_quota = cfg->tenant_quota,
		.evict_scan = 64,
		.policy = (enum t1_policy)cfg->host_policy,
		.retain_max_pct = cfg->host_retain_share,
		.on_evict = host_on_evict,
		.evict_arg = s,
		.droppable = tier2_droppable,
	};
	int rc = t1_open(&tc, &s->t1, &s->t1_report);
	if (rc) {
		log_error("host tier of %llu bytes could not be set up: %s",
			  (unsigned long long)cfg->host_capacity, strerror(-rc));
		return rc;
	}
	for (size_t i = 0; i < cfg->nquotas; i++) {
		rc = t1_set_quota(s->t1, cfg->quotas[i].tenant, cfg->quotas[i].bytes);
		if (rc)
			return rc;
	}
	const struct t1_report *r = &s->t1_report;
	log_info("host tier: %llu MiB in %u KiB chunks; pages: %s; locked: %s",
		 (unsigned long long)(cfg->host_capacity >> 20), cfg->host_chunk >> 10,
		 r->hugetlb ? "explicit huge pages"
		 : r->thp   ? (r->huge_error ? "transparent huge pages (no explicit huge pages reserved)"
					  : "transparent huge pages")
			    : "normal pages",
		 r->locked ? "yes (mlock)"
		 : r->lock_error ? (r->lock_error == -EPERM || r->lock_error == -ENOMEM
					    ? "no (RLIMIT_MEMLOCK is below the arena size: raise it, e.g. LimitMEMLOCK=infinity, or set host_mlock = on)"
					    : strerror(-r->lock_error))
				 : "no (host_mlock = off)");
	if (r->prefault)
		log_info("host tier: not locked, so its pages are being faulted in by a background thread");
	return 0;
}

static void handle_signal(struct server *s)
{
	struct signalfd_siginfo si;
	while (read(s->sigfd, &si, sizeof(si)) == sizeof(si)) {
		switch (si.ssi_signo) {
		case SIGTERM:
		case SIGINT:
			if (!s->stopping) {
				log_info("%s: shutting down", strsignal((int)si.ssi_signo));
				kvtd_sd_stopping(s); /* STOPPING=1 (sd.c) */
			}
			server_begin_shutdown(s);
			break;
		case SIGHUP:
			if (!s->stopping)
				reload_config(s); /* logs what changed, or why not (reload.c) */
			break;
		default: break;
		}
	}
}

static void event_loop(struct server *s)
{
	struct epoll_event evs[64];
	uint64_t last_sweep = now_ms(), stop_at = 0;
	for (;;) {
		if (s->stopping) {
			/* Done when every copy is answered and every reply flushed. */
			bool pending = workers_busy(s->workers) > 0 || tier2_busy(s) ||
				       ctxmem_busy(s);
			for (struct conn *c = s->conns; c && !pending; c = c->next)
				pending = c->wlen > c->woff;
			if (!pending)
				break;
			if (!workers_busy(s->workers) && !tier2_busy(s) && !ctxmem_busy(s)) {
				if (!stop_at)
					stop_at = now_ms() + SHUTDOWN_FLUSH_MS;
				else if (now_ms() >= stop_at)
					break;
			}
		}
		/* Wake for the next PREFETCH deadline if it comes before the tick. */
		uint64_t due = prefetch_tick(s), now = now_ms();
		int wait_ms = due <= now ? 0 : due - now < TICK_MS ? (int)(due - now) : TICK_MS;
		int n = epoll_wait(s->epfd, evs, 64, wait_ms);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			log_error("epoll_wait: %s", strerror(errno));
			break;
		}
		for (int i = 0; i < n; i++) {
			void *tag = evs[i].data.ptr;
			if (tag == &tag_listen)
				server_accept(s);
			else if (tag == &tag_signal)
				handle_signal(s);
			else if (tag == &tag_workers)
				workers_reap(s->workers);
			else if (tier2_is_tag(s, tag))
				tier2_handle(s, tag);
			else if (ctxmem_is_tag(tag))
				ctxmem_handle(s);
			else
				conn_handle_io(tag, evs[i].events);
		}
		server_free_dead(s);
		/* The watchdog ping comes from here, so a stuck loop stops it (sd.c). */
		kvtd_sd_loop_tick(s);
		uint64_t t = now_ms();
		if (t - last_sweep >= TICK_MS) {
			conn_sweep(s);
			tier2_tick(s);
			ctxmem_tick(s);
			last_sweep = t;
		}
		/* An NVMe index that LMDB declared unusable: stop cleanly and let the
		 * service manager restart us on the store as it was last committed. */
		if (!s->stopping && (tier2_failed(s) || ctxmem_failed(s))) {
			log_error("%s failed; shutting down for a restart",
				  tier2_failed(s) ? "NVMe index" : "metadata store");
			s->failed = true;
			server_begin_shutdown(s);
		}
	}
}

int main(int argc, char **argv)
{
	struct kvtd_config cfg;
	config_defaults(&cfg);
	bool print_only = false;
	if (parse_args(argc, argv, &cfg, &print_only) < 0) {
		config_free(&cfg);
		return 2;
	}
	if (print_only) {
		config_print(&cfg, stdout);
		config_free(&cfg);
		return 0;
	}
	log_set_level(cfg.log_level);
	signal(SIGPIPE, SIG_IGN);
	kvtd_sd_init(); /* systemd notify/watchdog environment (sd.c) */

	struct server s = { .cfg = &cfg, .epfd = -1, .lfd = -1, .sigfd = -1 };
	s.self_uid = getuid();
	s.start_ms = now_ms();
	int rc, exit_code = 1;

	sigset_t mask;
	sigemptyset(&mask);
	sigaddset(&mask, SIGTERM);
	sigaddset(&mask, SIGINT);
	sigaddset(&mask, SIGHUP);
	/* Blocked before the workers start, so they inherit the mask and every
	 * signal goes to the signalfd. */
	sigprocmask(SIG_BLOCK, &mask, NULL);

	log_info("kvtierd %s starting (pid %d)", KVT_VERSION_STRING, (int)getpid());
	if ((rc = mkdir_p(cfg.data_dir, 0750)) < 0) {
		log_error("data directory %s: %s", cfg.data_dir, strerror(-rc));
		goto out;
	}
	/* A socket passed by systemd needs no directory of ours (sd.c). */
	if (!kvtd_sd_socket_passed() && (rc = socket_dir_create(cfg.socket_path)) < 0) {
		log_error("socket directory for %s: %s", cfg.socket_path, strerror(-rc));
		goto out;
	}
	kvtd_sd_status("Starting: opening the host tier (%llu MiB)",
		       (unsigned long long)(cfg.host_capacity >> 20));
	if (open_host_tier(&s) < 0)
		goto out;
	if ((rc = workers_start(cfg.workers, (int)cfg.nvme_zstd_level, &s.workers)) < 0) {
		log_error("starting %u workers: %s", cfg.workers, strerror(-rc));
		goto out;
	}
	s.epfd = epoll_create1(EPOLL_CLOEXEC);
	s.sigfd = signalfd(-1, &mask, SFD_NONBLOCK | SFD_CLOEXEC);
	if (s.epfd < 0 || s.sigfd < 0) {
		log_error("epoll/signalfd: %s", strerror(errno));
		goto out;
	}
	kvtd_sd_status("Starting: GPU transfers");
	if (gpu_open(&s) < 0)
		goto out;
	kvtd_sd_status("Starting: opening the NVMe tier");
	if (tier2_open(&s) < 0)
		goto out;
	kvtd_sd_status("Starting: opening contexts and memory records");
	if (ctxmem_open(&s) < 0)
		goto out;
	kvtd_sd_status("Starting: opening the socket");
	if (server_listen(&s) < 0)
		goto out;
	if (epoll_add(s.epfd, s.lfd, &tag_listen) < 0 ||
	    epoll_add(s.epfd, s.sigfd, &tag_signal) < 0 ||
	    epoll_add(s.epfd, workers_eventfd(s.workers), &tag_workers) < 0) {
		log_error("epoll_ctl: %s", strerror(errno));
		goto out;
	}
	if (kvtd_sd_socket_inherited()) /* path and mode are kvtierd.socket's (sd.c logged them) */
		log_info("listening on the socket passed by systemd, %u workers, data in %s",
			 cfg.workers, cfg.data_dir);
	else
		log_info("listening on %s (mode %04o), %u workers, data in %s", cfg.socket_path,
			 cfg.socket_mode, cfg.workers, cfg.data_dir);

	/* The socket accepts (listen() is done) and the tiers are open. */
	kvtd_sd_ready(&s);
	event_loop(&s);
	exit_code = s.failed ? 1 : 0;
	log_info("stopped");
out:
	if (s.lfd >= 0) {
		close(s.lfd);
		if (!kvtd_sd_socket_inherited()) /* else kvtierd.socket owns the path */
			unlink(cfg.socket_path);
	}
	while (s.conns)
		conn_close(s.conns, "shutdown");
	/* Jobs still queued (only on an early error exit) finish before teardown. */
	while (s.workers && workers_busy(s.workers) > 0) {
		usleep(1000);
		workers_reap(s.workers);
	}
	/* Commits and I/O still in flight finish; their callbacks need the workers'
	 * results reaped and the host tier alive. */
	ctxmem_close(&s);
	tier2_close(&s);
	workers_stop(s.workers);
	server_free_dead(&s);
	gpu_close(&s);
	t1_close(s.t1);
	if (s.sigfd >= 0)
		close(s.sigfd);
	if (s.epfd >= 0)
		close(s.epfd);
	free(s.tenants);
	config_free(&cfg);
	reload_forget();
	return exit_code;
}
