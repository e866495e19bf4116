/*
 * conn.c - connections: the listening socket, accept with SO_PEERCRED, framed
 * reads with file-descriptor passing, buffered writes with backpressure, stream
 * errors (NOTICE then close) and the idle/handshake/partial-frame timeouts.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "log.h"
#include "sd.h"
#include "server.h"
#include "tier2.h"

/* Stop reading from a client whose unread replies exceed this. */
#define OUTPUT_BACKLOG_MAX (4u << 20)
#define RBUF_MIN (16u << 10)
/* How long a connection being closed may take to read what it is owed. */
#define CLOSING_GRACE_MS 2000

uint64_t now_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

/* A socket file left by a daemon that died is removed; one that still answers
 * belongs to a running daemon and is left alone. */
static int clear_stale_socket(const struct sockaddr_un *addr)
{
	struct stat st;
	if (lstat(addr->sun_path, &st) < 0)
		return errno == ENOENT ? 0 : -errno;
	if (!S_ISSOCK(st.st_mode))
		return -EEXIST;
	int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return -errno;
	int rc = connect(fd, (const struct sockaddr *)addr, sizeof(*addr));
	close(fd);
	if (rc == 0)
		return -EADDRINUSE;
	if (unlink(addr->sun_path) < 0 && errno != ENOENT)
		return -errno;
	return 0;
}

int server_listen(struct server *s)
{
	/* Socket activation (sd.c): serve on the socket systemd passed, bind nothing. */
	int arc = kvtd_sd_listen_fd(s->cfg->socket_path, &s->lfd);
	if (arc != -ENOENT)
		return arc;

	struct sockaddr_un addr = { .sun_family = AF_UNIX };
	snprintf(addr.sun_path, sizeof(addr.sun_path), "%s", s->cfg->socket_path);

	int rc = clear_stale_socket(&addr);
	if (rc == -EADDRINUSE) {
		log_error("another kvtierd is already listening on %s", addr.sun_path);
		return rc;
	}
	if (rc < 0) {
		log_error("cannot reuse socket path %s: %s", addr.sun_path, strerror(-rc));
		return rc;
	}
	int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return -errno;
	/* Create the socket with no access, then open it up to socket_mode, so no
	 * client can connect in the window before the mode is applied. */
	mode_t old = umask(0777);
	rc = bind(fd, (struct sockaddr *)&addr, sizeof(addr));
	umask(old);
	if (rc < 0) {
		rc = -errno;
		log_error("bind %s: %s", addr.sun_path, strerror(errno));
		goto out_close;
	}
	if (chmod(addr.sun_path, s->cfg->socket_mode) < 0) {
		rc = -errno;
		log_error("chmod %s: %s", addr.sun_path, strerror(errno));
		goto out_unlink;
	}
	if (listen(fd, 128) < 0) {
		rc = -errno;
		log_error("listen %s: %s", addr.sun_path, strerror(errno));
		goto out_unlink;
	}
	s->lfd = fd;
	return 0;
out_unlink:
	unlink(addr.sun_path);
out_close:
	close(fd);
	return rc;
}

static void conn_set_events(struct conn *c, uint32_t ev)
{
	if (c->dead || ev == c->events)
		return;
	struct epoll_event e = { .events = ev, .data.ptr = c };
	if (epoll_ctl(c->srv->epfd, EPOLL_CTL_MOD, c->fd, &e) == 0)
		c->events = ev;
}

void conn_update_events(struct conn *c)
{
	uint32_t ev = 0;
	bool backlog = c->wlen - c->woff > OUTPUT_BACKLOG_MAX;
	c->paused = backlog;
	if (!c->closing && !backlog && !c->srv->stopping)
		ev |= EPOLLIN;
	if (c->wlen > c->woff)
		ev |= EPOLLOUT;
	conn_set_events(c, ev);
}

/* Send a NOTICE on a socket we will not keep (connection limit), best effort. */
static void notice_and_drop(int fd, int status, const char *msg)
{
	uint8_t frame[KVT_HDR_SIZE + 2 + KVT_NOTICE_MAX];
	int n = kvt_notice_encode(msg, frame + KVT_HDR_SIZE, sizeof(frame) - KVT_HDR_SIZE);
	if (n < 0)
		n = 0;
	struct kvt_hdr h = { .magic = KVT_MAGIC, .version = 1, .opcode = KVT_OP_NOTICE,
			     .flags = KVT_F_REPLY, .body_len = (uint32_t)n, .status = status };
	kvt_hdr_encode(&h, frame);
	ssize_t w = send(fd, frame, KVT_HDR_SIZE + (size_t)n, MSG_NOSIGNAL | MSG_DONTWAIT);
	(void)w;
	close(fd);
}

static uint32_t tenant_for_uid(const struct kvtd_config *cfg, uid_t uid)
{
	for (size_t i = 0; i < cfg->nuid_maps; i++)
		if (cfg->uid_maps[i].uid == uid)
			return cfg->uid_maps[i].tenant;
	return (uint32_t)uid;
}

void server_accept(struct server *s)
{
	for (;;) {
		int fd = accept4(s->lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
		if (fd < 0) {
			if (errno == EINTR || errno == ECONNABORTED)
				continue;
			if (errno != EAGAIN)
				log_warn("accept: %s", strerror(errno));
			return;
		}
		if (s->nconns >= s->cfg->max_connections) {
			s->conn_rejected++;
			struct log_fields lf = { .error = KVT_ECONNLIMIT };
			log_with(LOG_WARN, &lf, "connection refused: %u connections is the limit",
				 s->cfg->max_connections);
			notice_and_drop(fd, KVT_ECONNLIMIT, "too many connections");
			continue;
		}
		struct ucred cred;
		socklen_t cl = sizeof(cred);
		if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &cl) < 0) {
			log_warn("SO_PEERCRED: %s", strerror(errno));
			close(fd);
			continue;
		}
		struct conn *c = calloc(1, sizeof(*c));
		if (!c) {
			notice_and_drop(fd, KVT_ENOMEM, "out of memory");
			continue;
		}
		c->srv = s;
		c->fd = fd;
		c->serial = ++s->next_serial;
		c->uid = cred.uid;
		c->pid = cred.pid;
		c->tenant = tenant_for_uid(s->cfg, cred.uid);
		c->admin = cred.uid == 0 || cred.uid == s->self_uid;
		c->created_ms = c->last_frame_ms = now_ms();
		struct epoll_event e = { .events = EPOLLIN, .data.ptr = c };
		if (epoll_ctl(s->epfd, EPOLL_CTL_ADD, fd, &e) < 0) {
			log_warn("epoll_ctl: %s", strerror(errno));
			close(fd);
			free(c);
			continue;
		}
		c->events = EPOLLIN;
		c->next = s->conns;
		if (s->conns)
			s->conns->prev = c;
		s->conns = c;
		s->nconns++;
		s->conn_total++;
		log_debug("conn %llu: accepted pid %d uid %u as tenant %u",
			  (unsigned long long)c->serial, (int)cred.pid, (unsigned)cred.uid,
			  c->tenant);
	}
}

/* A dead connection may still be named by events later in the same epoll_wait
 * batch, so it is only queued here and freed after the batch (server_free_dead). */
static void conn_free(struct conn *c)
{
	if (c->queued_free)
		return;
	c->queued_free = true;
	c->next = c->srv->dead;
	c->srv->dead = c;
}

void server_free_dead(struct server *s)
{
	while (s->dead) {
		struct conn *c = s->dead;
		s->dead = c->next;
		free(c->rbuf);
		free(c->wbuf);
		free(c->regions);
		free(c->pins);
		free(c);
	}
}

void conn_put(struct conn *c)
{
	if (--c->refs == 0 && c->dead)
		conn_free(c);
}

void conn_close(struct conn *c, const char *why)
{
	if (c->dead)
		return;
	struct server *s = c->srv;
	log_debug("conn %llu: closed (%s)", (unsigned long long)c->serial, why);
	epoll_ctl(s->epfd, EPOLL_CTL_DEL, c->fd, NULL);
	close(c->fd);
	for (unsigned i = 0; i < c->nfds; i++)
		close(c->fds[i].fd);
	c->nfds = 0;
	c->dead = true;
	conn_release_all(c);
	if (c->prev)
		c->prev->next = c->next;
	else
		s->conns = c->next;
	if (c->next)
		c->next->prev = c->prev;
	s->nconns--;
	if (c->refs == 0)
		conn_free(c);
}

static int wbuf_reserve(struct conn *c, size_t more)
{
	if (c->woff && c->woff == c->wlen)
		c->woff = c->wlen = 0;
	if (c->wlen + more <= c->wcap)
		return 0;
	if (c->woff) {
		memmove(c->wbuf, c->wbuf + c->woff, c->wlen - c->woff);
		c->wlen -= c->woff;
		c->woff = 0;
		if (c->wlen + more <= c->wcap)
			return 0;
	}
	size_t ncap = c->wcap ? c->wcap : 4096;
	while (ncap < c->wlen + more)
		ncap *= 2;
	uint8_t *nb = realloc(c->wbuf, ncap);
	if (!nb)
		return -ENOMEM;
	c->wbuf = nb;
	c->wcap = ncap;
	return 0;
}

static void conn_flush(struct conn *c)
{
	while (c->woff < c->wlen) {
		ssize_t n = send(c->fd, c->wbuf + c->woff, c->wlen - c->woff,
				 MSG_NOSIGNAL | MSG_DONTWAIT);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			if (errno == EAGAIN)
				break;
			conn_close(c, "write error");
			return;
		}
		c->woff += (size_t)n;
	}
	if (c->woff == c->wlen) {
		c->woff = c->wlen = 0;
		if (c->closing) {
			conn_close(c, "closed after error");
			return;
		}
	}
	conn_update_events(c);
}

void conn_reply(struct conn *c, uint16_t opcode, uint64_t id, int32_t status, const uint8_t *body,
		size_t body_len)
{
	if (c->dead)
		return;
	if (status)
		c->srv->request_errors++;
	if (wbuf_reserve(c, KVT_HDR_SIZE + body_len) < 0) {
		log_error("conn %llu: out of memory for a reply; closing",
			  (unsigned long long)c->serial);
		conn_close(c, "out of memory");
		return;
	}
	struct kvt_hdr h = { .magic = KVT_MAGIC, .version = 1, .opcode = opcode,
			     .flags = KVT_F_REPLY, .body_len = (uint32_t)body_len,
			     .request_id = id, .status = status };
	kvt_hdr_encode(&h, c->wbuf + c->wlen);
	if (body_len)
		memcpy(c->wbuf + c->wlen + KVT_HDR_SIZE, body, body_len);
	c->wlen += KVT_HDR_SIZE + body_len;
	conn_flush(c);
}

/* ---- replies shared by the request handlers (dispatch.c, gpu.c, ctxmem.c) ---- */

void reply_status(struct conn *c, const struct kvt_hdr *h, int status)
{
	conn_reply(c, h->opcode, h->request_id, status, NULL, 0);
}

/* Answer a batch with its n per-item results: statuses (st) or GET results (res).
 * The body is built in a heap buffer, as a batch's can be large; without memory the
 * whole request is answered KVT_ENOMEM instead. */
static void reply_batch(struct conn *c, uint16_t op, uint64_t id, bool statuses,
			const int32_t *st, const struct kvt_get_result *res, uint32_t n)
{
	size_t len = statuses ? kvt_status_rep_size(n) : kvt_get_rep_size(n);
	uint8_t *buf = malloc(len);
	if (!buf) {
		conn_reply(c, op, id, KVT_ENOMEM, NULL, 0);
		return;
	}
	if (statuses)
		kvt_status_rep_encode(st, n, buf, len);
	else
		kvt_get_rep_encode(res, n, buf, len);
	conn_reply(c, op, id, 0, buf, len);
	free(buf);
}

void reply_item_status(struct conn *c, uint16_t op, uint64_t id, const int32_t *st, uint32_t n)
{
	reply_batch(c, op, id, true, st, NULL, n);
}

void reply_get_results(struct conn *c, uint16_t op, uint64_t id, const struct kvt_get_result *res,
		       uint32_t n)
{
	reply_batch(c, op, id, false, NULL, res, n);
}

void reply_registered(struct conn *c, const struct kvt_hdr *h, int rc, uint32_t id,
		      const char *what)
{
	if (rc) {
		reply_status(c, h, rc);
		return;
	}
	uint8_t buf[KVT_REGISTER_REP_SIZE];
	struct kvt_register_rep rep = { .region_id = id };
	kvt_register_rep_encode(&rep, buf, sizeof(buf));
	log_debug("conn %llu: %s %#x registered", (unsigned long long)c->serial, what, id);
	conn_reply(c, h->opcode, h->request_id, 0, buf, sizeof(buf));
}

void reply_unregister(struct conn *c, const struct kvt_hdr *h, const uint8_t *body,
		      int (*unregister)(struct conn *c, uint32_t region_id))
{
	struct kvt_unregister_req req;
	int rc = kvt_unregister_req_decode(body, h->body_len, &req);
	if (rc == 0)
		rc = unregister(c, req.region_id);
	reply_status(c, h, rc);
}

void conn_fatal(struct conn *c, int status, const char *msg)
{
	if (c->dead || c->closing)
		return;
	/* Journal fields (journal.h), so one tenant's troubles can be listed. */
	struct log_fields lf = { .has_tenant = true, .tenant = c->tenant, .error = status };
	log_with(LOG_INFO, &lf, "conn %llu (pid %d uid %u): %s (%s); closing",
		 (unsigned long long)c->serial, (int)c->pid, (unsigned)c->uid, msg,
		 kvt_errname(status));
	uint8_t body[2 + KVT_NOTICE_MAX];
	int n = kvt_notice_encode(msg, body, sizeof(body));
	c->closing = true;
	c->closing_since_ms = now_ms();
	conn_reply(c, KVT_OP_NOTICE, 0, status, body, n > 0 ? (size_t)n : 0);
}

int conn_take_fd(struct conn *c, uint64_t start)
{
	if (c->nfds == 0 || start < c->fds[0].start || start >= c->fds[0].end)
		return -1;
	int fd = c->fds[0].fd;
	memmove(&c->fds[0], &c->fds[1], (c->nfds - 1) * sizeof(c->fds[0]));
	c->nfds--;
	return fd;
}

/* An fd whose bytes are all behind the frame about to run was not taken by a
 * REGISTER: the peer is not speaking the protocol. */
static bool stray_fd_before(struct conn *c, uint64_t frame_start)
{
	return c->nfds > 0 && c->fds[0].end <= frame_start;
}

/* Parse and run every complete frame in the buffer. */
static void conn_process(struct conn *c)
{
	struct server *s = c->srv;
	size_t off = 0;
	uint32_t max_body = s->cfg->max_frame - KVT_HDR_SIZE;
	while (!c->dead && !c->closing && c->rlen - off >= KVT_HDR_SIZE) {
		struct kvt_hdr h;
		int rc = kvt_hdr_decode(c->rbuf + off, max_body, &h);
		if (rc == KVT_EBADMAGIC) {
			conn_fatal(c, rc, "bad frame magic");
			break;
		}
		if (rc == KVT_EVERSION) {
			conn_fatal(c, rc, "unsupported protocol version in frame header");
			break;
		}
		if (rc == KVT_EMSGSIZE) {
			conn_fatal(c, rc, "frame larger than max_frame");
			break;
		}
		if (rc < 0) {
			conn_fatal(c, rc, "malformed frame header");
			break;
		}
		size_t need = KVT_HDR_SIZE + (size_t)h.body_len;
		if (c->rlen - off < need)
			break;
		uint64_t start = c->rx_base + off;
		if (stray_fd_before(c, start)) {
			conn_fatal(c, KVT_ESTRAYFD, "file descriptor received without a REGISTER");
			break;
		}
		s->requests++;
		c->last_frame_ms = now_ms();
		if (s->stopping)
			conn_reply(c, h.opcode, h.request_id, KVT_ESHUTDOWN, NULL, 0);
		else
			dispatch_frame(c, &h, c->rbuf + off + KVT_HDR_SIZE, start);
		off += need;
	}
	if (c->dead)
		return;
	if (off) {
		memmove(c->rbuf, c->rbuf + off, c->rlen - off);
		c->rlen -= off;
		c->rx_base += off;
	}
	/* A frame has started but not finished: start (or keep) its clock. */
	if (c->rlen)
		c->partial_since_ms = c->partial_since_ms ? c->partial_since_ms : now_ms();
	else
		c->partial_since_ms = 0;
	/* fds that arrived with bytes already consumed and were not taken are stray. */
	if (!c->closing && stray_fd_before(c, c->rx_base))
		conn_fatal(c, KVT_ESTRAYFD, "file descriptor received without a REGISTER");
}

/* Make room for the rest of the frame at the front of the buffer, within max_frame. */
static int rbuf_grow(struct conn *c)
{
	size_t want = RBUF_MIN;
	if (c->rlen >= KVT_HDR_SIZE) {
		size_t need = KVT_HDR_SIZE + (size_t)kvt_get32(c->rbuf + 12);
		if (need > want)
			want = need; /* already checked against max_frame by the decoder */
	}
	if (want < c->rlen + 1)
		want = c->rlen + 1;
	if (want <= c->rcap)
		return 0;
	size_t ncap = c->rcap ? c->rcap : RBUF_MIN;
	while (ncap < want)
		ncap *= 2;
	uint8_t *nb = realloc(c->rbuf, ncap);
	if (!nb)
		return -ENOMEM;
	c->rbuf = nb;
	c->rcap = ncap;
	return 0;
}

static void conn_read(struct conn *c)
{
	/* Bounded per wake-up so one busy client cannot starve the others. */
	for (int round = 0; round < 16 && !c->dead && !c->closing && !c->paused; round++) {
		if (rbuf_grow(c) < 0) {
			conn_fatal(c, KVT_ENOMEM, "out of memory for the receive buffer");
			return;
		}
		size_t room = c->rcap - c->rlen;
		union {
			struct cmsghdr align;
			uint8_t buf[CMSG_SPACE(sizeof(int) * CONN_MAX_FDS)];
		} ctl;
		struct iovec iov = { c->rbuf + c->rlen, room };
		struct msghdr mh = { .msg_iov = &iov, .msg_iovlen = 1, .msg_control = ctl.buf,
				     .msg_controllen = sizeof(ctl.buf) };
		ssize_t n = recvmsg(c->fd, &mh, MSG_CMSG_CLOEXEC | MSG_DONTWAIT);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			if (errno == EAGAIN)
				return;
			conn_close(c, "read error");
			return;
		}
		uint64_t chunk_start = c->rx_base + c->rlen;
		/* Take every fd that arrived before judging anything, so none leaks. */
		bool overflow = false;
		for (struct cmsghdr *cm = CMSG_FIRSTHDR(&mh); cm; cm = CMSG_NXTHDR(&mh, cm)) {
			if (cm->cmsg_level != SOL_SOCKET || cm->cmsg_type != SCM_RIGHTS)
				continue;
			size_t nfd = (cm->cmsg_len - CMSG_LEN(0)) / sizeof(int);
			const uint8_t *data = CMSG_DATA(cm);
			for (size_t i = 0; i < nfd; i++) {
				int fd;
				memcpy(&fd, data + i * sizeof(int), sizeof(int));
				if (c->nfds == CONN_MAX_FDS) {
					close(fd);
					overflow = true;
					continue;
				}
				c->fds[c->nfds++] = (struct rx_fd){ fd, chunk_start,
								    chunk_start + (uint64_t)n };
			}
		}
		if (mh.msg_flags & MSG_CTRUNC) {
			conn_fatal(c, KVT_ESTRAYFD, "too many file descriptors in one message");
			return;
		}
		if (overflow) {
			conn_fatal(c, KVT_ESTRAYFD, "too many file descriptors pending");
			return;
		}
		if (n == 0) {
			conn_close(c, "peer closed");
			return;
		}
		c->rlen += (size_t)n;
		conn_process(c);
		if ((size_t)n < room)
			return;
	}
}

void conn_handle_io(struct conn *c, uint32_t events)
{
	if (c->dead) /* closed earlier in this event batch */
		return;
	c->refs++; /* keep c alive across callbacks that may close it */
	if (events & (EPOLLERR))
		conn_close(c, "socket error");
	if (!c->dead && (events & EPOLLOUT))
		conn_flush(c);
	if (!c->dead && (events & (EPOLLIN | EPOLLHUP)))
		conn_read(c);
	if (!c->dead)
		conn_update_events(c);
	conn_put(c);
}

void conn_sweep(struct server *s)
{
	const struct kvtd_config *cfg = s->cfg;
	uint64_t t = now_ms();
	struct conn *next;
	for (struct conn *c = s->conns; c; c = next) {
		next = c->next;
		if (c->closing) {
			/* A peer that will not read its NOTICE does not keep the slot. */
			if (t - c->closing_since_ms >= CLOSING_GRACE_MS)
				conn_close(c, "peer did not read the notice");
			continue;
		}
		if (!c->hello_done && cfg->handshake_timeout_ms &&
		    t - c->created_ms >= cfg->handshake_timeout_ms) {
			conn_fatal(c, KVT_ETIMEDOUT, "no HELLO within handshake_timeout");
			continue;
		}
		if (c->partial_since_ms && cfg->frame_timeout_ms &&
		    t - c->partial_since_ms >= cfg->frame_timeout_ms) {
			conn_fatal(c, KVT_ETIMEDOUT, "frame not completed within frame_timeout");
			continue;
		}
		if (cfg->idle_timeout_ms && c->inflight == 0 && c->rlen == 0 &&
		    t - c->last_frame_ms >= cfg->idle_timeout_ms) {
			conn_fatal(c, KVT_EIDLE, "idle for longer than idle_timeout");
			continue;
		}
	}
}

void server_begin_shutdown(struct server *s)
{
	if (s->stopping)
		return;
	s->stopping = true;
	prefetch_answer_all(s);
	tier2_begin_stop(s);
	if (s->lfd >= 0) {
		epoll_ctl(s->epfd, EPOLL_CTL_DEL, s->lfd, NULL);
		close(s->lfd);
		s->lfd = -1;
		/* An inherited socket's path belongs to kvtierd.socket: leave it. */
		if (!kvtd_sd_socket_inherited())
			unlink(s->cfg->socket_path);
	}
	/* Requests already received, in our buffer or still in the socket's, are
	 * failed explicitly with ESHUTDOWN rather than dropped with the connection. */
	struct conn *next;
	for (struct conn *c = s->conns; c; c = next) {
		next = c->next;
		c->refs++;
		conn_process(c);
		if (!c->dead && !c->closing)
			conn_read(c);
		if (!c->dead)
			conn_update_events(c);
		conn_put(c);
	}
}
