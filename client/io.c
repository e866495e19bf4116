/*
 * io.c - libkvtier's transport: framing over the non-blocking Unix socket, sends
 * with optional SCM_RIGHTS, poll-based deadlines, the receive buffer, and breaking
 * a connection when the stream can no longer be trusted.
 *
 * The socket is non-blocking and every wait is a poll() bounded by the call's
 * deadline, so kvt_conn_set_timeout holds for sends as well as receives. While a
 * send waits for room, replies are read and dispatched too: the daemon may be
 * blocked writing replies to us, and not reading would deadlock both ends.
 */
#include <errno.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#include "client.h"

#define RBUF_INITIAL (64u << 10)
#define RBUF_MIN_READ 4096u

int kvt_from_errno(int e)
{
	switch (e) {
	case ENOENT:
	case ENOTDIR:
		return KVT_ENOENT;
	case EPERM:
		return KVT_EPERM;
	case EACCES:
		return KVT_EACCES;
	case ECONNREFUSED:
		return KVT_ECONNREFUSED;
	case ENOMEM:
	case ENOSPC: /* memfd pages come from shmem: "no space" is "no memory" here */
		return KVT_ENOMEM;
	case EMFILE:
	case ENFILE:
		return KVT_EMFILE;
	case EBADF:
		return KVT_EBADF;
	case EINVAL:
		return KVT_EINVAL;
	case EAGAIN:
		return KVT_EAGAIN;
	case ETIMEDOUT:
		return KVT_ETIMEDOUT;
	case EFBIG:
		return KVT_EMSGSIZE;
	case EPIPE:
	case ECONNRESET:
		return KVT_ECLOSED;
	default:
		return KVT_EIO;
	}
}

static int64_t now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

int64_t kvt_deadline(int timeout_ms)
{
	if (timeout_ms <= 0)
		return -1;
	return now_ms() + timeout_ms;
}

/* poll() timeout for what is left of deadline; 0 when it has passed. */
static int remaining_ms(int64_t deadline)
{
	int64_t left;

	if (deadline < 0)
		return -1;
	left = deadline - now_ms();
	if (left <= 0)
		return 0;
	return left > 1000000000 ? 1000000000 : (int)left;
}

void kvt_conn_break(struct kvt_conn *c, int why)
{
	if (c->broken)
		return;
	if (why >= 0)
		why = KVT_ECLOSED;
	c->broken = why;
	if (c->fd >= 0) {
		/* Closing releases the daemon's side at once: pins, regions, copies. */
		close(c->fd);
		c->fd = -1;
	}
	c->rpos = c->rlen = 0;

	for (uint32_t i = 0; c->reqs && i <= c->reqs_mask; i++) {
		struct kvt_req *rq = &c->reqs[i];

		if (!rq->id)
			continue;
		if (rq->op->fail)
			rq->op->fail(rq->op, rq, KVT_ECLOSED);
		rq->op->inflight--;
		rq->op->cut = true;
		if (!rq->op->err)
			rq->op->err = KVT_ECLOSED;
		rq->id = 0;
	}
	c->nreqs = 0;

	/* Items not sent yet will never be. */
	for (struct kvt_op *op = c->ops; op; op = op->next) {
		if (op->sent < op->n) {
			op->sent = op->n;
			op->cut = true;
			if (!op->err)
				op->err = KVT_ECLOSED;
		}
	}
}

/* Make room for at least want more bytes after rlen (want <= total frame size). */
static int rbuf_reserve(struct kvt_conn *c, size_t want)
{
	size_t need;
	uint8_t *nb;
	size_t ncap;

	if (c->rcap - c->rlen >= want)
		return 0;
	if (c->rpos > 0) {
		memmove(c->rbuf, c->rbuf + c->rpos, c->rlen - c->rpos);
		c->rlen -= c->rpos;
		c->rpos = 0;
		if (c->rcap - c->rlen >= want)
			return 0;
	}
	need = c->rlen + want;
	ncap = c->rcap ? c->rcap : RBUF_INITIAL;
	while (ncap < need)
		ncap *= 2;
	nb = realloc(c->rbuf, ncap);
	if (!nb)
		return KVT_ENOMEM;
	c->rbuf = nb;
	c->rcap = ncap;
	return 0;
}

/* Dispatch every complete frame in the receive buffer; *count += frames handled. */
static void parse_frames(struct kvt_conn *c, unsigned *count)
{
	while (c->fd >= 0 && c->rlen - c->rpos >= KVT_HDR_SIZE) {
		const uint8_t *p = c->rbuf + c->rpos;
		struct kvt_hdr h;
		size_t frame;
		int rc;

		rc = kvt_hdr_decode(p, KVT_MAX_REPLY_BODY, &h);
		if (rc) {
			/* A header we cannot parse means we lost the stream. */
			kvt_conn_break(c, KVT_EPROTO);
			return;
		}
		frame = KVT_HDR_SIZE + (size_t)h.body_len;
		if (c->rlen - c->rpos < frame) {
			rc = rbuf_reserve(c, frame - (c->rlen - c->rpos));
			if (rc)
				kvt_conn_break(c, rc);
			return;
		}
		/* Consume before dispatching: a NOTICE breaks the connection, which
		 * resets the buffer; the body stays readable until the next recv. */
		c->rpos += frame;
		(*count)++;
		rc = kvt_dispatch(c, &h, p + KVT_HDR_SIZE);
		if (rc)
			kvt_conn_break(c, rc);
	}
	if (c->rpos == c->rlen)
		c->rpos = c->rlen = 0;
}

/*
 * One recv into the buffer, then dispatch what is complete. Returns 1 if bytes
 * came, 0 if none were ready (EAGAIN), or a negative error after breaking the
 * connection (EOF breaks it with KVT_ECLOSED unless a NOTICE already did).
 */
static int read_once(struct kvt_conn *c, unsigned *count)
{
	ssize_t n;
	int rc;

	rc = rbuf_reserve(c, RBUF_MIN_READ);
	if (rc) {
		kvt_conn_break(c, rc);
		return rc;
	}
	do {
		n = recv(c->fd, c->rbuf + c->rlen, c->rcap - c->rlen, MSG_DONTWAIT);
	} while (n < 0 && errno == EINTR);
	if (n < 0) {
		if (errno == EAGAIN || errno == EWOULDBLOCK)
			return 0;
		kvt_conn_break(c, kvt_from_errno(errno));
		return c->broken;
	}
	if (n == 0) {
		kvt_conn_break(c, KVT_ECLOSED);
		return c->broken;
	}
	c->rlen += (size_t)n;
	parse_frames(c, count);
	return c->fd >= 0 ? 1 : c->broken;
}

/* Read and dispatch whatever is already there without waiting. */
static int read_available(struct kvt_conn *c)
{
	unsigned count = 0;
	int rc;

	do {
		rc = read_once(c, &count);
	} while (rc == 1);
	return rc;
}

int kvt_io_pump(struct kvt_conn *c, int64_t deadline)
{
	unsigned count = 0;

	if (c->fd < 0)
		return c->broken ? c->broken : KVT_ECLOSED;
	parse_frames(c, &count);
	while (!count && c->fd >= 0) {
		struct pollfd pfd = { .fd = c->fd, .events = POLLIN };
		int rc = poll(&pfd, 1, remaining_ms(deadline));

		if (rc < 0) {
			if (errno == EINTR)
				continue;
			kvt_conn_break(c, kvt_from_errno(errno));
			break;
		}
		if (rc == 0) {
			kvt_conn_break(c, KVT_ETIMEDOUT);
			break;
		}
		rc = read_once(c, &count);
		if (rc < 0)
			break;
	}
	return c->fd >= 0 ? 0 : c->broken;
}

uint8_t *kvt_io_frame_buf(struct kvt_conn *c, size_t body_len)
{
	size_t need = KVT_HDR_SIZE + body_len;

	if (c->scap < need) {
		size_t ncap = c->scap ? c->scap : 4096;
		uint8_t *nb;

		while (ncap < need)
			ncap *= 2;
		nb = realloc(c->sbuf, ncap);
		if (!nb)
			return NULL;
		c->sbuf = nb;
		c->scap = ncap;
	}
	return c->sbuf + KVT_HDR_SIZE;
}

/* sendmsg with fd as SCM_RIGHTS. */
static ssize_t send_with_fd(int sock, const uint8_t *buf, size_t len, int fd)
{
	union {
		struct cmsghdr align;
		char buf[CMSG_SPACE(sizeof(int))];
	} ctl;
	struct iovec iov = { .iov_base = (void *)buf, .iov_len = len };
	struct msghdr msg = {
		.msg_iov = &iov,
		.msg_iovlen = 1,
		.msg_control = ctl.buf,
		.msg_controllen = sizeof(ctl.buf),
	};
	struct cmsghdr *cm;

	memset(&ctl, 0, sizeof(ctl));
	cm = CMSG_FIRSTHDR(&msg);
	cm->cmsg_level = SOL_SOCKET;
	cm->cmsg_type = SCM_RIGHTS;
	cm->cmsg_len = CMSG_LEN(sizeof(int));
	memcpy(CMSG_DATA(cm), &fd, sizeof(int));
	return sendmsg(sock, &msg, MSG_NOSIGNAL | MSG_DONTWAIT);
}

int kvt_io_send_frame(struct kvt_conn *c, uint16_t opcode, uint64_t id, size_t body_len, int fd,
		      int64_t deadline)
{
	struct kvt_hdr h = {
		.magic = KVT_MAGIC,
		.version = KVT_PROTOCOL_VERSION,
		.opcode = opcode,
		.flags = 0,
		.body_len = (uint32_t)body_len,
		.request_id = id,
	};
	size_t total = KVT_HDR_SIZE + body_len;
	size_t off = 0;

	if (c->fd < 0)
		return c->broken ? c->broken : KVT_ECLOSED;
	kvt_hdr_encode(&h, c->sbuf);

	while (off < total) {
		ssize_t n;

		/* The fd rides on the sendmsg carrying the frame's first byte: that is
		 * how the daemon ties it to this REGISTER. */
		if (off == 0 && fd >= 0)
			n = send_with_fd(c->fd, c->sbuf, total, fd);
		else
			n = send(c->fd, c->sbuf + off, total - off, MSG_NOSIGNAL | MSG_DONTWAIT);
		if (n > 0) {
			off += (size_t)n;
			continue;
		}
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
			struct pollfd pfd = { .fd = c->fd, .events = POLLIN | POLLOUT };
			int rc = poll(&pfd, 1, remaining_ms(deadline));

			if (rc < 0 && errno == EINTR)
				continue;
			if (rc < 0) {
				kvt_conn_break(c, kvt_from_errno(errno));
				break;
			}
			if (rc == 0) {
				kvt_conn_break(c, KVT_ETIMEDOUT);
				break;
			}
			if (pfd.revents & (POLLIN | POLLHUP | POLLERR)) {
				if (read_available(c) < 0)
					break;
			}
			continue;
		}
		if (n < 0 && (errno == EPIPE || errno == ECONNRESET)) {
			/* The daemon closed. It may have said why first: a NOTICE can
			 * still be waiting in our receive queue. */
			read_available(c);
			kvt_conn_break(c, KVT_ECLOSED);
			break;
		}
		kvt_conn_break(c, n < 0 ? kvt_from_errno(errno) : KVT_EIO);
		break;
	}
	return c->fd >= 0 ? 0 : c->broken;
}
