/*
 * sd.h - kvtierd as a systemd service: the sd_notify(3) protocol (STATUS=,
 * READY=1, RELOADING=1, STOPPING=1, and WATCHDOG=1 sent from the event loop
 * itself) and socket activation (sd_listen_fds(3)). Outside systemd (no
 * $NOTIFY_SOCKET, no $LISTEN_FDS) every function does nothing, so the daemon runs
 * the same from a terminal. Event-loop thread only.
 */
#ifndef KVTD_SD_H
#define KVTD_SD_H

#include <stdbool.h>

struct server;

/* Read $NOTIFY_SOCKET, $WATCHDOG_USEC and the test hook's $KVT_TEST_WEDGE_FILE,
 * once, at start-up (before any other function here). */
void kvtd_sd_init(void);

/* STATUS=<text> while starting (printf-style): what `systemctl status` shows. */
void kvtd_sd_status(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* READY=1 with the first one-line summary as STATUS=. Call it only once the
 * listening socket accepts connections and the tiers are open. */
void kvtd_sd_ready(struct server *s);

/* Call on every event-loop iteration (at least every TICK_MS): sends WATCHDOG=1
 * at half the interval systemd asked for, so a loop that stops iterating stops
 * the pings and systemd restarts the daemon; refreshes the STATUS= summary every
 * few seconds. Also where the wedge test hook sleeps (see sd.c). */
void kvtd_sd_loop_tick(struct server *s);

/* STOPPING=1 (shutdown has begun; SIGTERM/SIGINT). */
void kvtd_sd_stopping(struct server *s);

/* RELOADING=1 with MONOTONIC_USEC= before a reload, and READY=1 with a STATUS=
 * saying how it went afterwards (outcome: a short phrase, borrowed). */
void kvtd_sd_reloading(void);
void kvtd_sd_reloaded(struct server *s, const char *outcome);

/*
 * Socket activation. If systemd passed exactly one file descriptor and it is a
 * listening Unix stream socket, make it non-blocking and close-on-exec, store it
 * in *fd and return 0. Returns -ENOENT when no socket was passed (the caller binds
 * configured_path itself), or another negative errno, logged, when what was passed
 * cannot be used (the daemon must then refuse to start rather than bind a second
 * socket). configured_path is only compared, for a warning when they differ.
 */
int kvtd_sd_listen_fd(const char *configured_path, int *fd);

/* true if the listening socket came from systemd: the socket unit owns the path,
 * so the daemon must not unlink it at shutdown. */
bool kvtd_sd_socket_inherited(void);

/* true if systemd passed this process sockets ($LISTEN_PID is our pid and
 * $LISTEN_FDS is set), before kvtd_sd_listen_fd has taken them: the socket's
 * directory is then systemd's to create, not ours. */
bool kvtd_sd_socket_passed(void);

#endif /* KVTD_SD_H */
