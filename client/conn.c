/*
 * conn.c - libkvtier connections: connecting to the daemon's socket, the HELLO
 * handshake, the limits it returns, timeouts, PING, and closing.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/un.h>
#include <unistd.h>

#include "client.h"
#include "export.h"

/* The name we give in HELLO: library version and program, for the daemon's logs. */
static uint16_t client_name(char *buf, size_t cap)
{
	int n = snprintf(buf, cap, "libkvtier/%s %s", KVT_VERSION_STRING,
			 program_invocation_short_name);

	if (n < 0)
		return 0;
	if ((size_t)n >= cap)
		n = (int)cap - 1;
	/* HELLO names must be printable; a program may be called anything. */
	for (int i = 0; i < n; i++) {
		if ((unsigned char)buf[i] < 0x20 || buf[i] == 0x7f)
			buf[i] = '?';
	}
	return (uint16_t)n;
}

static int hello_encode(struct kvt_conn *c, struct kvt_op *op, size_t first, size_t count,
			uint8_t *out, size_t cap)
{
	const struct kvt_hello_req *m = op->ctx;

	(void)c;
	(void)first;
	(void)count;
	return kvt_hello_req_encode(m, out, cap);
}

static int hello_reply(struct kvt_conn *c, struct kvt_op *op, const struct kvt_req *rq,
		       const uint8_t *body, size_t len)
{
	struct kvt_hello_rep m;
	size_t slen;
	int rc;

	(void)op;
	(void)rq;
	rc = kvt_hello_rep_decode(body, len, &m);
	if (rc)
		return rc;
	/* Limits we could not work with mean the daemon is talking nonsense. */
	if (m.version < KVT_PROTO_MIN_VERSION || m.version > KVT_PROTOCOL_VERSION ||
	    m.max_frame < KVT_HDR_SIZE + 8 + KVT_PUT_ITEM_SIZE || m.max_inflight == 0 ||
	    m.max_batch == 0)
		return KVT_EPROTO;
	c->info.version = m.version;
	c->info.tenant = m.tenant;
	c->info.max_frame = m.max_frame;
	c->info.max_inflight = m.max_inflight;
	c->info.max_batch = m.max_batch;
	c->info.max_regions = m.max_regions;
	c->info.max_region_size = m.max_region_size;
	c->info.max_block_size = m.max_block_size;
	slen = m.server_len < sizeof(c->info.server) - 1 ? m.server_len :
							    sizeof(c->info.server) - 1;
	memcpy(c->info.server, m.server, slen);
	c->info.server[slen] = '\0';
	return 0;
}

static int hello(struct kvt_conn *c)
{
	char name[KVT_NAME_MAX + 1];
	struct kvt_hello_req m = {
		.min_version = KVT_PROTO_MIN_VERSION,
		.max_version = KVT_PROTOCOL_VERSION,
		.flags = 0,
		.name = name,
	};
	struct kvt_op op;

	m.name_len = client_name(name, sizeof(name));
	kvt_op_init_single(&op, KVT_OP_HELLO, kvt_hello_req_size(m.name_len), hello_encode,
			   hello_reply, &m);
	return kvt_op_run(c, &op);
}

/* connect() with a bound on how long a full accept backlog may keep us waiting. */
static int connect_socket(const char *path, int timeout_ms, int *out)
{
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	struct timeval tv = { .tv_sec = timeout_ms / 1000, .tv_usec = (timeout_ms % 1000) * 1000 };
	int fd, rc;

	fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return kvt_from_errno(errno);
	memcpy(sa.sun_path, path, strlen(path) + 1);
	/* For AF_UNIX, a blocking connect waits for backlog room at most SO_SNDTIMEO. */
	setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
	do {
		rc = connect(fd, (struct sockaddr *)&sa, sizeof(sa));
	} while (rc < 0 && errno == EINTR);
	if (rc < 0) {
		rc = errno == EAGAIN ? KVT_ETIMEDOUT : kvt_from_errno(errno);
		goto out_close;
	}
	rc = fcntl(fd, F_GETFL);
	if (rc < 0 || fcntl(fd, F_SETFL, rc | O_NONBLOCK) < 0) {
		rc = kvt_from_errno(errno);
		goto out_close;
	}
	*out = fd;
	return 0;

out_close:
	close(fd);
	return rc;
}

KVT_EXPORT int kvt_conn_open(const char *path, kvt_conn **out)
{
	struct kvt_conn *c;
	int rc;

	if (!out)
		return KVT_EINVAL;
	if (!path) {
		path = getenv("KVTIER_SOCKET");
		if (!path || !*path)
			path = KVT_DEFAULT_SOCKET;
	}
	if (!*path || strlen(path) >= sizeof(((struct sockaddr_un *)0)->sun_path))
		return KVT_EINVAL;

	c = calloc(1, sizeof(*c));
	if (!c)
		return KVT_ENOMEM;
	c->fd = -1;
	c->next_id = 1;
	c->next_ticket = 1;
	/* Enough to carry HELLO until the daemon tells us its limits. */
	c->inflight_limit = 1;
	c->info.max_frame = 4096;
	c->info.max_batch = 1;
	rc = kvt_reqs_init(c);
	if (rc)
		goto out_free;

	rc = connect_socket(path, KVT_OPEN_TIMEOUT_MS, &c->fd);
	if (rc)
		goto out_free;

	c->timeout_ms = KVT_OPEN_TIMEOUT_MS;
	rc = hello(c);
	c->timeout_ms = 0;
	if (rc)
		goto out_free;

	c->inflight_limit = c->info.max_inflight < KVT_MAX_INFLIGHT_CAP ? c->info.max_inflight :
									    KVT_MAX_INFLIGHT_CAP;
	rc = kvt_reqs_init(c);
	if (rc)
		goto out_free;
	*out = c;
	return 0;

out_free:
	/* Nothing else was handed out yet: no regions, no tickets. */
	kvt_conn_close(c);
	return rc;
}

KVT_EXPORT void kvt_conn_close(kvt_conn *c)
{
	struct kvt_op *op, *next;

	if (!c)
		return;
	if (c->fd >= 0)
		close(c->fd);
	kvt_regions_release(c);
	for (op = c->ops; op; op = next) {
		next = op->next;
		if (op->heap)
			free(op);
	}
	free(c->reqs);
	free(c->sbuf);
	free(c->rbuf);
	free(c->scratch);
	free(c);
}

KVT_EXPORT const kvt_server_info *kvt_conn_server(const kvt_conn *c)
{
	return c ? &c->info : NULL;
}

KVT_EXPORT void kvt_conn_set_timeout(kvt_conn *c, int timeout_ms)
{
	if (c)
		c->timeout_ms = timeout_ms > 0 ? timeout_ms : 0;
}

static int empty_encode(struct kvt_conn *c, struct kvt_op *op, size_t first, size_t count,
			uint8_t *out, size_t cap)
{
	(void)c;
	(void)op;
	(void)first;
	(void)count;
	(void)out;
	(void)cap;
	return 0;
}

KVT_EXPORT int kvt_ping(kvt_conn *c)
{
	struct kvt_op op;

	if (!c)
		return KVT_EINVAL;
	/* PING's reply body carries nothing we need; it is ignored. */
	kvt_op_init_single(&op, KVT_OP_PING, 0, empty_encode, NULL, NULL);
	return kvt_op_run(c, &op);
}
