/*
 * itest_badinput.c - hostile and broken clients on raw sockets: stream-level
 * errors (NOTICE + close), frame-level errors (an error reply, connection kept),
 * file descriptor passing mistakes, region and range abuse, every configured
 * limit and timeout, and random bodies. After each case the daemon must be alive,
 * serve a fresh client, and hold exactly the file descriptors it held before.
 */
#include <fcntl.h>
#include <stdint.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "harness.h"
#include "kvtier.h"
#include "proto.h"
#include "test.h"

#define KiB (1024ull)
#define MiB (1024ull * 1024)
#define WAIT_MS 10000 /* bound on any single wait for the daemon */

/* ---- per-case environment ---------------------------------------------------- */

struct env {
	struct kvtd d;
	kvt_conn *mon; /* a well-behaved client kept open for the whole case */
	int fds;       /* the daemon's fd count with only mon connected */
};

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

static void env_start(struct env *e, const char *conf)
{
	kvtd_start(&e->d, conf);
	CHECK_RC(kvt_conn_open(e->d.sock, &e->mon), 0);
	kvt_conn_set_timeout(e->mon, 30000);
	/* The harness's readiness probes may still be open: wait for them to go. */
	for (int i = 0; i < 1000 && kvtd_stat(e->mon, "conn.current") != 1; i++)
		test_sleep_ms(10);
	CHECK_EQ(kvtd_stat(e->mon, "conn.current"), 1);
	e->fds = proc_fd_count(e->d.pid);
	CHECK(e->fds > 0);
}

/* The daemon is alive and a new client gets through HELLO and PING. */
static void daemon_ok(struct env *e)
{
	fail_if_daemon_died(&e->d, 0);
	kvt_conn *c = NULL;
	int rc = kvt_conn_open(e->d.sock, &c);
	if (rc == 0) {
		kvt_conn_set_timeout(c, 30000);
		rc = kvt_ping(c);
		kvt_conn_close(c);
	}
	if (rc == 0)
		rc = kvt_ping(e->mon);
	if (rc != 0)
		fail_if_daemon_died(&e->d, 1000);
	CHECK_RC(rc, 0);
}

/* Back to the starting fd count once every hostile connection is gone. */
static void env_finish(struct env *e)
{
	daemon_ok(e);
	uint64_t cur = 0;
	int fds = 0;
	for (int i = 0; i < 1000; i++) {
		cur = kvtd_stat(e->mon, "conn.current");
		fds = proc_fd_count(e->d.pid);
		if (cur == 1 && fds == e->fds)
			break;
		test_sleep_ms(10);
	}
	CHECK_EQ(cur, 1);
	CHECK_MSG(fds == e->fds, "kvtierd holds %d fds, %d before the case", fds, e->fds);
	kvt_conn_close(e->mon);
	int st = kvtd_stop(&e->d);
	CHECK_MSG(WIFEXITED(st) && WEXITSTATUS(st) == 0, "kvtierd ended with wait status %#x",
		  st);
}

/* ---- raw frame helpers ------------------------------------------------------- */

static void hdr_raw(uint8_t *out, uint32_t magic, uint16_t version, uint16_t op, uint32_t flags,
		    uint32_t body_len, uint64_t id, uint32_t reserved)
{
	kvt_put32(out, magic);
	kvt_put16(out + 4, version);
	kvt_put16(out + 6, op);
	kvt_put32(out + 8, flags);
	kvt_put32(out + 12, body_len);
	kvt_put64(out + 16, id);
	kvt_put32(out + 24, 0);
	kvt_put32(out + 28, reserved);
}

static int connect_hello(struct env *e)
{
	int s = raw_connect(e->d.sock);
	raw_hello(s);
	return s;
}

static void send_frame(int s, uint16_t op, uint32_t flags, uint64_t id, const void *body,
		       uint32_t len)
{
	int rc = raw_send_frame(s, op, flags, id, body, len);
	CHECK_MSG(rc == 0, "send: %s", strerror(-rc));
}

/* Receive the reply to id: checks opcode, REPLY flag and status; returns body length. */
static uint32_t expect_reply(int s, uint64_t id, uint16_t op, int status, uint8_t *body,
			     size_t cap)
{
	struct kvt_hdr h;
	uint8_t scratch[64];
	if (!body) {
		body = scratch;
		cap = sizeof(scratch);
	}
	int rc = raw_recv_frame(s, &h, body, cap, WAIT_MS);
	CHECK_MSG(rc == 0, "no reply to request %llu: %d (%s)", (unsigned long long)id, rc,
		  rc > -1000 ? strerror(-rc) : test_errname(rc));
	/* A NOTICE has id 0; a reply to a request with opcode 255 has that request's id. */
	CHECK_MSG(h.opcode != KVT_OP_NOTICE || h.request_id != 0,
		  "got NOTICE %s instead of the reply to request %llu", test_errname(h.status),
		  (unsigned long long)id);
	CHECK_EQ(h.request_id, id);
	CHECK_EQ(h.opcode, op);
	CHECK_MSG(h.flags & KVT_F_REPLY, "reply without the REPLY flag");
	CHECK_MSG(h.status == status, "request %llu (%s): status %d (%s), expected %d (%s)",
		  (unsigned long long)id, kvt_op_name(op), h.status, test_errname(h.status),
		  status, test_errname(status));
	if (status != 0)
		CHECK_MSG(h.body_len == 0, "error reply with a %u-byte body", h.body_len);
	return h.body_len;
}

/* The next frame is a NOTICE with status, and then the daemon closes. */
static void expect_notice_close(int s, int status)
{
	struct kvt_hdr h;
	uint8_t body[512];
	int rc = raw_recv_frame(s, &h, body, sizeof(body), WAIT_MS);
	CHECK_MSG(rc == 0, "no NOTICE %s: %d (%s)", test_errname(status), rc,
		  rc > -1000 ? strerror(-rc) : test_errname(rc));
	CHECK_MSG(h.opcode == KVT_OP_NOTICE, "got %s (id %llu, status %s) instead of NOTICE %s",
		  kvt_op_name(h.opcode), (unsigned long long)h.request_id,
		  test_errname(h.status), test_errname(status));
	CHECK_EQ(h.version, 1);
	CHECK_EQ(h.request_id, 0);
	CHECK(h.flags & KVT_F_REPLY);
	CHECK_MSG(h.status == status, "NOTICE status %d (%s), expected %d (%s)", h.status,
		  test_errname(h.status), status, test_errname(status));
	const char *msg = NULL;
	uint16_t mlen = 0;
	CHECK_RC(kvt_notice_decode(body, h.body_len < sizeof(body) ? h.body_len : sizeof(body),
				   &msg, &mlen),
		 0);
	CHECK_MSG(mlen > 0, "NOTICE without a message");
	test_log("NOTICE %s: %.*s", test_errname(h.status), (int)mlen, msg);
	CHECK_MSG(raw_wait_closed(s, WAIT_MS, NULL), "connection not closed after the NOTICE");
	close(s);
}

static void expect_closed(int s)
{
	int notice = 0;
	CHECK_MSG(raw_wait_closed(s, WAIT_MS, &notice), "connection not closed");
	if (notice)
		test_log("closed with NOTICE %s", test_errname(notice));
	close(s);
}

static void ping_ok(int s, uint64_t id)
{
	send_frame(s, KVT_OP_PING, 0, id, NULL, 0);
	expect_reply(s, id, KVT_OP_PING, 0, NULL, 0);
}

/* sendmsg the bytes with nfds fds attached. */
static void send_fds(int s, const void *buf, size_t len, const int *fds, int nfds)
{
	struct iovec iov = { .iov_base = (void *)buf, .iov_len = len };
	size_t space = CMSG_SPACE(sizeof(int) * (size_t)nfds);
	char *ctl = calloc(1, space);
	CHECK(ctl != NULL);
	struct msghdr m = { .msg_iov = &iov, .msg_iovlen = 1 };
	if (nfds > 0) {
		m.msg_control = ctl;
		m.msg_controllen = space;
		struct cmsghdr *cm = CMSG_FIRSTHDR(&m);
		cm->cmsg_level = SOL_SOCKET;
		cm->cmsg_type = SCM_RIGHTS;
		cm->cmsg_len = CMSG_LEN(sizeof(int) * (size_t)nfds);
		memcpy(CMSG_DATA(cm), fds, sizeof(int) * (size_t)nfds);
	}
	ssize_t w = sendmsg(s, &m, MSG_NOSIGNAL);
	free(ctl);
	CHECK_MSG(w == (ssize_t)len, "sendmsg: %zd of %zu", w, len);
}

/* Encode a frame into out; returns its length. */
static size_t frame(uint8_t *out, uint16_t op, uint64_t id, const void *body, uint32_t len)
{
	struct kvt_hdr h = { .magic = KVT_MAGIC, .version = 1, .opcode = op, .body_len = len,
			     .request_id = id };
	kvt_hdr_encode(&h, out);
	if (len)
		memcpy(out + KVT_HDR_SIZE, body, len);
	return KVT_HDR_SIZE + len;
}

static size_t register_frame(uint8_t *out, uint64_t id, uint64_t size, uint32_t flags)
{
	uint8_t body[KVT_REGISTER_REQ_SIZE];
	struct kvt_register_req rq = { .size = size, .flags = flags };
	CHECK_EQ(kvt_register_req_encode(&rq, body, sizeof(body)), KVT_REGISTER_REQ_SIZE);
	if (flags) /* the encoder may refuse reserved bits: set them by hand */
		kvt_put32(body + 8, flags);
	return frame(out, KVT_OP_REGISTER, id, body, sizeof(body));
}

/* REGISTER with fd (or none if fd < 0); returns the reply status, *rid on success. */
static int do_register(int s, uint64_t id, uint64_t size, int fd, uint32_t *rid)
{
	uint8_t buf[KVT_HDR_SIZE + KVT_REGISTER_REQ_SIZE];
	size_t len = register_frame(buf, id, size, 0);
	send_fds(s, buf, len, &fd, fd >= 0 ? 1 : 0);
	struct kvt_hdr h;
	uint8_t rep[64];
	int rc = raw_recv_frame(s, &h, rep, sizeof(rep), WAIT_MS);
	CHECK_MSG(rc == 0, "no REGISTER reply: %d", rc);
	CHECK_MSG(h.opcode == KVT_OP_REGISTER && h.request_id == id,
		  "got %s id %llu status %s instead of the REGISTER reply", kvt_op_name(h.opcode),
		  (unsigned long long)h.request_id, test_errname(h.status));
	if (h.status == 0 && rid) {
		struct kvt_register_rep rr;
		CHECK_RC(kvt_register_rep_decode(rep, h.body_len, &rr), 0);
		*rid = rr.region_id;
	}
	return h.status;
}

static int sealed_memfd(size_t size)
{
	int fd = memfd_create("itest", MFD_CLOEXEC | MFD_ALLOW_SEALING);
	CHECK(fd >= 0);
	CHECK(ftruncate(fd, (off_t)size) == 0);
	CHECK(fcntl(fd, F_ADD_SEALS, F_SEAL_SHRINK) == 0);
	return fd;
}

static uint32_t key_batch(uint8_t *body, uint32_t count, uint32_t present)
{
	CHECK_EQ(kvt_batch_prefix_encode(count, body, 8), 8);
	for (uint32_t i = 0; i < present; i++) {
		kvt_key k;
		memset(&k, 0, sizeof(k));
		k.b[0] = 0x42;
		k.b[1] = (uint8_t)i;
		kvt_key_encode(&k, body + 8 + i * KVT_KEY_SIZE);
	}
	return 8 + present * KVT_KEY_SIZE;
}

static kvt_key key_of(uint64_t n)
{
	kvt_key k;
	memset(&k, 0, sizeof(k));
	k.b[0] = 0x62;
	memcpy(k.b + 8, &n, sizeof(n));
	return k;
}

static uint32_t put_body(uint8_t *body, kvt_key key, uint32_t region, uint64_t off, uint64_t len)
{
	CHECK_EQ(kvt_batch_prefix_encode(1, body, 8), 8);
	struct kvt_put_wire w = { .key = key, .region_id = region, .offset = off, .length = len };
	kvt_put_item_encode(&w, body + 8);
	return 8 + KVT_PUT_ITEM_SIZE;
}

static uint32_t get_body(uint8_t *body, kvt_key key, uint32_t region, uint64_t off, uint64_t cap)
{
	CHECK_EQ(kvt_batch_prefix_encode(1, body, 8), 8);
	struct kvt_get_wire w = { .key = key, .region_id = region, .offset = off, .capacity = cap };
	kvt_get_item_encode(&w, body + 8);
	return 8 + KVT_GET_ITEM_SIZE;
}

/* One-item PUT on the raw socket: returns the item's status. */
static int raw_put1(int s, uint64_t id, kvt_key key, uint32_t region, uint64_t off, uint64_t len)
{
	uint8_t body[128], rep[64];
	send_frame(s, KVT_OP_PUT, 0, id, body, put_body(body, key, region, off, len));
	uint32_t bl = expect_reply(s, id, KVT_OP_PUT, 0, rep, sizeof(rep));
	int32_t st = 1;
	CHECK_RC(kvt_status_rep_decode(rep, bl, 1, &st), 0);
	return st;
}

static int raw_get1(int s, uint64_t id, kvt_key key, uint32_t region, uint64_t off, uint64_t cap)
{
	uint8_t body[128], rep[64];
	send_frame(s, KVT_OP_GET, 0, id, body, get_body(body, key, region, off, cap));
	uint32_t bl = expect_reply(s, id, KVT_OP_GET, 0, rep, sizeof(rep));
	struct kvt_get_result r;
	CHECK_RC(kvt_get_rep_decode(rep, bl, 1, &r), 0);
	return r.status;
}

static uint64_t vm_peak_kib(pid_t pid)
{
	char path[64], line[256];
	snprintf(path, sizeof(path), "/proc/%d/status", (int)pid);
	FILE *f = fopen(path, "re");
	CHECK(f != NULL);
	unsigned long long v = 0;
	while (fgets(line, sizeof(line), f))
		if (sscanf(line, "VmPeak: %llu", &v) == 1)
			break;
	fclose(f);
	return v;
}

/* ---- stream-level errors ----------------------------------------------------- */

TEST(truncated_frames_then_close)
{
	struct env e;
	env_start(&e, NULL);
	uint8_t buf[KVT_HDR_SIZE + 100];
	/* Half a header, before and after HELLO. */
	int s = raw_connect(e.d.sock);
	frame(buf, KVT_OP_PING, 1, NULL, 0);
	CHECK_RC(raw_send(s, buf, 20), 0);
	close(s);
	s = connect_hello(&e);
	CHECK_RC(raw_send(s, buf, 31), 0);
	close(s);
	/* A whole header announcing a body that never comes in full. */
	s = connect_hello(&e);
	uint8_t zeros[100] = { 0 };
	frame(buf, KVT_OP_LOOKUP, 2, zeros, sizeof(zeros));
	CHECK_RC(raw_send(s, buf, KVT_HDR_SIZE + 50), 0);
	close(s);
	env_finish(&e);
}

TEST(garbage_bytes_are_ebadmagic)
{
	struct env e;
	env_start(&e, NULL);
	uint8_t junk[256];
	uint64_t x = 88172645463325252ull;
	for (size_t i = 0; i < sizeof(junk); i++) {
		x ^= x << 13;
		x ^= x >> 7;
		x ^= x << 17;
		junk[i] = (uint8_t)x;
	}
	junk[0] = 'G';
	/* As the first bytes of a connection... */
	int s = raw_connect(e.d.sock);
	CHECK_RC(raw_send(s, junk, sizeof(junk)), 0);
	expect_notice_close(s, KVT_EBADMAGIC);
	/* ...and after a good frame. */
	s = connect_hello(&e);
	ping_ok(s, 5);
	CHECK_RC(raw_send(s, junk, 40), 0);
	expect_notice_close(s, KVT_EBADMAGIC);
	env_finish(&e);
}

TEST(wrong_magic_is_ebadmagic)
{
	struct env e;
	env_start(&e, NULL);
	int s = connect_hello(&e);
	uint8_t h[KVT_HDR_SIZE];
	hdr_raw(h, KVT_MAGIC ^ 0x01000000u, 1, KVT_OP_PING, 0, 0, 9, 0);
	CHECK_RC(raw_send(s, h, sizeof(h)), 0);
	expect_notice_close(s, KVT_EBADMAGIC);
	/* Byte-swapped magic: a big-endian client. */
	s = raw_connect(e.d.sock);
	hdr_raw(h, __builtin_bswap32(KVT_MAGIC), 1, KVT_OP_HELLO, 0, 0, 1, 0);
	CHECK_RC(raw_send(s, h, sizeof(h)), 0);
	expect_notice_close(s, KVT_EBADMAGIC);
	env_finish(&e);
}

TEST(other_header_versions_are_eversion)
{
	struct env e;
	env_start(&e, NULL);
	uint8_t h[KVT_HDR_SIZE];
	static const uint16_t versions[] = { 2, 0, 0xffff };
	for (size_t i = 0; i < 3; i++) {
		int s = connect_hello(&e);
		hdr_raw(h, KVT_MAGIC, versions[i], KVT_OP_PING, 0, 0, 9, 0);
		CHECK_RC(raw_send(s, h, sizeof(h)), 0);
		/* raw_recv_frame only decodes version 1: the NOTICE must be v1. */
		expect_notice_close(s, KVT_EVERSION);
	}
	/* Also as the very first frame. */
	int s = raw_connect(e.d.sock);
	hdr_raw(h, KVT_MAGIC, 2, KVT_OP_HELLO, 0, 0, 1, 0);
	CHECK_RC(raw_send(s, h, sizeof(h)), 0);
	expect_notice_close(s, KVT_EVERSION);
	env_finish(&e);
}

TEST(body_over_max_frame_is_emsgsize_without_allocating)
{
	struct env e;
	env_start(&e, "max_frame = 64KiB\n");
	uint8_t h[KVT_HDR_SIZE];
	/* One byte over the limit. */
	int s = connect_hello(&e);
	hdr_raw(h, KVT_MAGIC, 1, KVT_OP_PUT, 0, 64 * 1024 - KVT_HDR_SIZE + 1, 3, 0);
	CHECK_RC(raw_send(s, h, sizeof(h)), 0);
	expect_notice_close(s, KVT_EMSGSIZE);
	/* 4 GiB: refused from the header alone, nothing reserved for it. */
	uint64_t peak0 = vm_peak_kib(e.d.pid);
	s = connect_hello(&e);
	hdr_raw(h, KVT_MAGIC, 1, KVT_OP_PUT, 0, 0xffffffffu, 4, 0);
	CHECK_RC(raw_send(s, h, sizeof(h)), 0);
	expect_notice_close(s, KVT_EMSGSIZE);
	s = raw_connect(e.d.sock); /* before HELLO too */
	hdr_raw(h, KVT_MAGIC, 1, KVT_OP_HELLO, 0, 0x7fffffffu, 1, 0);
	CHECK_RC(raw_send(s, h, sizeof(h)), 0);
	expect_notice_close(s, KVT_EMSGSIZE);
	uint64_t peak1 = vm_peak_kib(e.d.pid);
	test_log("VmPeak %llu -> %llu KiB", (unsigned long long)peak0, (unsigned long long)peak1);
	CHECK_MSG(peak1 < peak0 + 1024 * 1024, "VmPeak grew by %llu KiB for a refused frame",
		  (unsigned long long)(peak1 - peak0));
	/* Exactly the limit is a frame like any other (unknown opcode here). */
	s = connect_hello(&e);
	size_t body_len = 64 * 1024 - KVT_HDR_SIZE;
	uint8_t *body = calloc(1, body_len);
	CHECK(body != NULL);
	send_frame(s, 200, 0, 6, body, (uint32_t)body_len);
	free(body);
	expect_reply(s, 6, 200, KVT_EOPCODE, NULL, 0);
	ping_ok(s, 7);
	close(s);
	env_finish(&e);
}

TEST(reserved_header_field_closes_the_stream)
{
	struct env e;
	env_start(&e, NULL);
	int s = connect_hello(&e);
	uint8_t h[KVT_HDR_SIZE];
	hdr_raw(h, KVT_MAGIC, 1, KVT_OP_PING, 0, 0, 9, 1);
	CHECK_RC(raw_send(s, h, sizeof(h)), 0);
	expect_notice_close(s, KVT_ERESERVED);
	s = connect_hello(&e);
	hdr_raw(h, KVT_MAGIC, 1, KVT_OP_PING, 0, 0, 9, 0x80000000u);
	CHECK_RC(raw_send(s, h, sizeof(h)), 0);
	expect_notice_close(s, KVT_ERESERVED);
	env_finish(&e);
}

TEST(fd_without_register_is_estrayfd)
{
	struct env e;
	env_start(&e, NULL);
	int s = connect_hello(&e);
	uint8_t buf[KVT_HDR_SIZE];
	size_t len = frame(buf, KVT_OP_PING, 11, NULL, 0);
	int mfd = sealed_memfd(4096);
	send_fds(s, buf, len, &mfd, 1);
	close(mfd);
	/* The PING itself may be answered before the daemon judges the fd stray. */
	struct kvt_hdr h;
	uint8_t body[512];
	CHECK_RC(raw_recv_frame(s, &h, body, sizeof(body), WAIT_MS), 0);
	if (h.opcode == KVT_OP_PING) {
		CHECK_EQ(h.request_id, 11);
		expect_notice_close(s, KVT_ESTRAYFD);
	} else {
		CHECK_EQ(h.opcode, KVT_OP_NOTICE);
		CHECK_RC(h.status, KVT_ESTRAYFD);
		CHECK(raw_wait_closed(s, WAIT_MS, NULL));
		close(s);
	}
	env_finish(&e);
}

TEST(truncated_fd_array_closes_without_leaking)
{
	struct env e;
	env_start(&e, NULL);
	int s = connect_hello(&e);
	enum { NFD = 250 };
	int fds[NFD];
	for (int i = 0; i < NFD; i++) {
		fds[i] = open("/dev/null", O_RDONLY | O_CLOEXEC);
		CHECK(fds[i] >= 0);
	}
	uint8_t buf[KVT_HDR_SIZE + KVT_REGISTER_REQ_SIZE];
	size_t len = register_frame(buf, 12, 4096, 0);
	send_fds(s, buf, len, fds, NFD);
	for (int i = 0; i < NFD; i++)
		close(fds[i]);
	/* Too many fds for the daemon's control buffer (MSG_CTRUNC) or stray ones:
	 * either way the stream cannot be trusted. */
	expect_closed(s);
	env_finish(&e);
}

/* ---- frame-level errors ------------------------------------------------------ */

TEST(unknown_opcode_is_eopcode_and_connection_stays)
{
	struct env e;
	env_start(&e, NULL);
	int s = connect_hello(&e);
	uint64_t errors0 = kvtd_stat(e.mon, "requests.errors");
	uint8_t body[10] = { 1, 2, 3 };
	send_frame(s, 200, 0, 21, body, sizeof(body));
	expect_reply(s, 21, 200, KVT_EOPCODE, NULL, 0);
	send_frame(s, 0, 0, 22, NULL, 0);
	expect_reply(s, 22, 0, KVT_EOPCODE, NULL, 0);
	send_frame(s, KVT_OP_NOTICE, 0, 23, NULL, 0); /* the daemon's opcode, not a request */
	expect_reply(s, 23, KVT_OP_NOTICE, KVT_EOPCODE, NULL, 0);
	ping_ok(s, 24);
	CHECK_MSG(kvtd_stat(e.mon, "requests.errors") >= errors0 + 3,
		  "requests.errors did not count the refused requests");
	close(s);
	env_finish(&e);
}

TEST(unknown_must_understand_flag_is_eflags)
{
	struct env e;
	env_start(&e, NULL);
	int s = connect_hello(&e);
	send_frame(s, KVT_OP_PING, 1u << 1, 31, NULL, 0);
	expect_reply(s, 31, KVT_OP_PING, KVT_EFLAGS, NULL, 0);
	send_frame(s, KVT_OP_PING, 1u << 15, 32, NULL, 0);
	expect_reply(s, 32, KVT_OP_PING, KVT_EFLAGS, NULL, 0);
	uint8_t body[64];
	send_frame(s, KVT_OP_LOOKUP, 1u << 7, 33, body, key_batch(body, 1, 1));
	expect_reply(s, 33, KVT_OP_LOOKUP, KVT_EFLAGS, NULL, 0);
	ping_ok(s, 34);
	close(s);
	env_finish(&e);
}

TEST(unknown_ignorable_flags_are_accepted)
{
	struct env e;
	env_start(&e, NULL);
	int s = connect_hello(&e);
	send_frame(s, KVT_OP_PING, 1u << 16, 41, NULL, 0);
	expect_reply(s, 41, KVT_OP_PING, 0, NULL, 0);
	send_frame(s, KVT_OP_PING, 0xffff0000u, 42, NULL, 0);
	expect_reply(s, 42, KVT_OP_PING, 0, NULL, 0);
	uint8_t body[64], rep[64];
	send_frame(s, KVT_OP_LOOKUP, 1u << 31, 43, body, key_batch(body, 1, 1));
	uint32_t bl = expect_reply(s, 43, KVT_OP_LOOKUP, 0, rep, sizeof(rep));
	uint32_t found = 9;
	uint8_t tiers[1];
	CHECK_RC(kvt_lookup_rep_decode(rep, bl, 1, &found, tiers), 0);
	CHECK_EQ(found, 0);
	close(s);
	env_finish(&e);
}

TEST(requests_before_hello_are_enohello)
{
	struct env e;
	env_start(&e, NULL);
	int s = raw_connect(e.d.sock);
	send_frame(s, KVT_OP_PING, 0, 51, NULL, 0);
	expect_reply(s, 51, KVT_OP_PING, KVT_ENOHELLO, NULL, 0);
	uint8_t body[64];
	send_frame(s, KVT_OP_LOOKUP, 0, 52, body, key_batch(body, 1, 1));
	expect_reply(s, 52, KVT_OP_LOOKUP, KVT_ENOHELLO, NULL, 0);
	uint8_t st[4] = { 0 };
	send_frame(s, KVT_OP_STATS, 0, 53, st, sizeof(st));
	expect_reply(s, 53, KVT_OP_STATS, KVT_ENOHELLO, NULL, 0);
	raw_hello(s);
	ping_ok(s, 54);
	close(s);
	env_finish(&e);
}

static uint32_t hello_body(uint8_t *body, uint16_t minv, uint16_t maxv)
{
	struct kvt_hello_req rq = { .min_version = minv, .max_version = maxv, .name = "x",
				    .name_len = 1 };
	int n = kvt_hello_req_encode(&rq, body, 128);
	CHECK(n > 0);
	return (uint32_t)n;
}

TEST(second_hello_is_eproto)
{
	struct env e;
	env_start(&e, NULL);
	int s = connect_hello(&e);
	uint8_t body[128];
	send_frame(s, KVT_OP_HELLO, 0, 61, body, hello_body(body, 1, 1));
	expect_reply(s, 61, KVT_OP_HELLO, KVT_EPROTO, NULL, 0);
	ping_ok(s, 62);
	close(s);
	env_finish(&e);
}

TEST(hello_without_a_common_version_is_eversion_then_close)
{
	struct env e;
	env_start(&e, NULL);
	int s = raw_connect(e.d.sock);
	uint8_t body[128];
	send_frame(s, KVT_OP_HELLO, 0, 71, body, hello_body(body, 2, 5));
	expect_reply(s, 71, KVT_OP_HELLO, KVT_EVERSION, NULL, 0);
	expect_closed(s);
	env_finish(&e);
}

TEST(malformed_hello_is_rejected_and_hello_can_follow)
{
	struct env e;
	env_start(&e, NULL);
	int s = raw_connect(e.d.sock);
	uint8_t body[128];
	send_frame(s, KVT_OP_HELLO, 0, 81, body, 3); /* too short */
	expect_reply(s, 81, KVT_OP_HELLO, KVT_EBADMSG, NULL, 0);
	uint32_t n = hello_body(body, 1, 1);
	kvt_put32(body + 4, 1); /* reserved flags */
	send_frame(s, KVT_OP_HELLO, 0, 82, body, n);
	expect_reply(s, 82, KVT_OP_HELLO, KVT_ERESERVED, NULL, 0);
	n = hello_body(body, 1, 1);
	send_frame(s, KVT_OP_HELLO, 0, 83, body, n + 5); /* name_len disagrees with the body */
	expect_reply(s, 83, KVT_OP_HELLO, KVT_EBADMSG, NULL, 0);
	/* A name longer than KVT_NAME_MAX, consistently encoded. */
	n = hello_body(body, 1, 1);
	kvt_put16(body + 8, KVT_NAME_MAX + 1);
	memset(body + 10, 'n', KVT_NAME_MAX + 1);
	send_frame(s, KVT_OP_HELLO, 0, 85, body, 10 + KVT_NAME_MAX + 1);
	expect_reply(s, 85, KVT_OP_HELLO, KVT_EBADMSG, NULL, 0);
	raw_hello(s);
	ping_ok(s, 84);
	close(s);
	env_finish(&e);
}

TEST(batch_over_max_batch_is_e2big)
{
	struct env e;
	env_start(&e, "max_batch = 8\n");
	int s = connect_hello(&e);
	uint8_t body[1024];
	send_frame(s, KVT_OP_LOOKUP, 0, 91, body, key_batch(body, 9, 9));
	expect_reply(s, 91, KVT_OP_LOOKUP, KVT_E2BIG, NULL, 0);
	send_frame(s, KVT_OP_DELETE, 0, 92, body, key_batch(body, 9, 9));
	expect_reply(s, 92, KVT_OP_DELETE, KVT_E2BIG, NULL, 0);
	/* A count whose byte size wraps 32 bits must not pass for a short body. */
	send_frame(s, KVT_OP_PIN, 0, 93, body, key_batch(body, 0x10000001u, 1));
	struct kvt_hdr h;
	CHECK_RC(raw_recv_frame(s, &h, NULL, 0, WAIT_MS), 0);
	CHECK_EQ(h.request_id, 93);
	CHECK_MSG(h.status == KVT_E2BIG || h.status == KVT_EBADMSG,
		  "PIN with a huge count: %s", test_errname(h.status));
	CHECK_EQ(kvt_batch_prefix_encode(9, body, 8), 8);
	memset(body + 8, 0, 9 * KVT_PUT_ITEM_SIZE);
	send_frame(s, KVT_OP_PUT, 0, 94, body, 8 + 9 * KVT_PUT_ITEM_SIZE);
	expect_reply(s, 94, KVT_OP_PUT, KVT_E2BIG, NULL, 0);
	send_frame(s, KVT_OP_LOOKUP, 0, 95, body, key_batch(body, 8, 8));
	expect_reply(s, 95, KVT_OP_LOOKUP, 0, NULL, 0);
	close(s);
	env_finish(&e);
}

TEST(body_length_mismatch_is_ebadmsg)
{
	struct env e;
	env_start(&e, NULL);
	int s = connect_hello(&e);
	uint8_t body[1024];
	key_batch(body, 3, 3);
	send_frame(s, KVT_OP_LOOKUP, 0, 101, body, 8 + 2 * KVT_KEY_SIZE); /* one key short */
	expect_reply(s, 101, KVT_OP_LOOKUP, KVT_EBADMSG, NULL, 0);
	send_frame(s, KVT_OP_LOOKUP, 0, 102, body, 8 + 3 * KVT_KEY_SIZE + 1); /* a byte extra */
	expect_reply(s, 102, KVT_OP_LOOKUP, KVT_EBADMSG, NULL, 0);
	send_frame(s, KVT_OP_UNPIN, 0, 103, body, 5); /* shorter than the prefix */
	expect_reply(s, 103, KVT_OP_UNPIN, KVT_EBADMSG, NULL, 0);
	send_frame(s, KVT_OP_PUT, 0, 104, body, 8 + 20);
	expect_reply(s, 104, KVT_OP_PUT, KVT_EBADMSG, NULL, 0);
	send_frame(s, KVT_OP_UNREGISTER, 0, 105, body, 4);
	expect_reply(s, 105, KVT_OP_UNREGISTER, KVT_EBADMSG, NULL, 0);
	send_frame(s, KVT_OP_STATS, 0, 106, body, 0);
	expect_reply(s, 106, KVT_OP_STATS, KVT_EBADMSG, NULL, 0);
	send_frame(s, KVT_OP_REGISTER, 0, 107, body, 8);
	expect_reply(s, 107, KVT_OP_REGISTER, KVT_EBADMSG, NULL, 0);
	ping_ok(s, 108);
	close(s);
	env_finish(&e);
}

TEST(reserved_body_fields_are_ereserved)
{
	struct env e;
	env_start(&e, NULL);
	int s = connect_hello(&e);
	uint8_t body[256];
	key_batch(body, 1, 1);
	kvt_put32(body + 4, 1); /* batch flags */
	send_frame(s, KVT_OP_LOOKUP, 0, 111, body, 8 + KVT_KEY_SIZE);
	expect_reply(s, 111, KVT_OP_LOOKUP, KVT_ERESERVED, NULL, 0);
	uint8_t un[KVT_UNREGISTER_REQ_SIZE] = { 1, 0, 0, 0, 0, 0, 0, 1 };
	send_frame(s, KVT_OP_UNREGISTER, 0, 112, un, sizeof(un));
	expect_reply(s, 112, KVT_OP_UNREGISTER, KVT_ERESERVED, NULL, 0);
	uint8_t sf[4] = { 0, 0, 0, 1 };
	send_frame(s, KVT_OP_STATS, 0, 113, sf, sizeof(sf));
	expect_reply(s, 113, KVT_OP_STATS, KVT_ERESERVED, NULL, 0);
	/* REGISTER with reserved flags: refused, and its fd not kept. */
	uint8_t buf[KVT_HDR_SIZE + KVT_REGISTER_REQ_SIZE];
	size_t len = register_frame(buf, 115, 4096, 1);
	int mfd = sealed_memfd(4096);
	send_fds(s, buf, len, &mfd, 1);
	close(mfd);
	expect_reply(s, 115, KVT_OP_REGISTER, KVT_ERESERVED, NULL, 0);
	ping_ok(s, 116);
	/* A PUT item whose descriptor, or the item itself, has a reserved field set:
	 * a reserved body field is a frame-level error (request status, empty body). */
	mfd = sealed_memfd(4096);
	uint32_t rid = 0;
	CHECK_RC(do_register(s, 117, 4096, mfd, &rid), 0);
	close(mfd);
	static const size_t where[] = {
		8 + KVT_PUT_ITEM_SIZE - KVT_DESC_SIZE + 6, /* desc.reserved0 */
		8 + KVT_PUT_ITEM_SIZE - 4,		   /* desc.reserved1 */
		8 + 2 * KVT_KEY_SIZE + 4,		   /* item reserved after region */
	};
	for (size_t i = 0; i < 3; i++) {
		uint32_t n = put_body(body, key_of(1 + i), rid, 0, 1);
		body[where[i]] = 1;
		send_frame(s, KVT_OP_PUT, 0, 120 + i, body, n);
		struct kvt_hdr h;
		uint8_t rep[64];
		CHECK_RC(raw_recv_frame(s, &h, rep, sizeof(rep), WAIT_MS), 0);
		CHECK_EQ(h.request_id, 120 + i);
		int32_t st = 0;
		if (h.status == 0)
			kvt_status_rep_decode(rep, h.body_len, 1, &st);
		CHECK_MSG(h.status == KVT_ERESERVED && h.body_len == 0,
			  "PUT with reserved byte %zu set: request status %s, item status %s",
			  where[i], test_errname(h.status), test_errname(st));
	}
	ping_ok(s, 130);
	close(s);
	env_finish(&e);
}

/* ---- file descriptors and regions -------------------------------------------- */

TEST(register_without_fd_is_enofd)
{
	struct env e;
	env_start(&e, NULL);
	int s = connect_hello(&e);
	CHECK_RC(do_register(s, 121, 4096, -1, NULL), KVT_ENOFD);
	ping_ok(s, 122);
	/* The next REGISTER with an fd still works. */
	int mfd = sealed_memfd(4096);
	uint32_t rid = 0;
	CHECK_RC(do_register(s, 123, 4096, mfd, &rid), 0);
	close(mfd);
	CHECK(rid != 0);
	close(s);
	env_finish(&e);
}

TEST(register_of_non_memfd_is_eseals)
{
	struct env e;
	env_start(&e, NULL);
	int s = connect_hello(&e);
	int p[2];
	CHECK(pipe(p) == 0);
	CHECK_RC(do_register(s, 131, 4096, p[0], NULL), KVT_ESEALS);
	close(p[0]);
	close(p[1]);
	char path[400];
	snprintf(path, sizeof(path), "%s/plainfile", e.d.dir);
	int f = open(path, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
	CHECK(f >= 0);
	CHECK(ftruncate(f, 1 * MiB) == 0);
	CHECK_RC(do_register(s, 132, 4096, f, NULL), KVT_ESEALS);
	close(f);
	unlink(path);
	int sv[2]; /* a socket */
	CHECK(socketpair(AF_UNIX, SOCK_STREAM, 0, sv) == 0);
	CHECK_RC(do_register(s, 133, 4096, sv[0], NULL), KVT_ESEALS);
	close(sv[0]);
	close(sv[1]);
	ping_ok(s, 134);
	close(s);
	env_finish(&e);
}

TEST(register_of_unsealed_memfd_is_eseals)
{
	struct env e;
	env_start(&e, NULL);
	int s = connect_hello(&e);
	int m1 = memfd_create("nosealing", MFD_CLOEXEC);
	CHECK(m1 >= 0 && ftruncate(m1, 65536) == 0);
	CHECK_RC(do_register(s, 141, 65536, m1, NULL), KVT_ESEALS);
	close(m1);
	int m2 = memfd_create("sealable", MFD_CLOEXEC | MFD_ALLOW_SEALING);
	CHECK(m2 >= 0 && ftruncate(m2, 65536) == 0);
	CHECK_RC(do_register(s, 142, 65536, m2, NULL), KVT_ESEALS);
	CHECK(fcntl(m2, F_ADD_SEALS, F_SEAL_GROW) == 0); /* the wrong seal */
	CHECK_RC(do_register(s, 143, 65536, m2, NULL), KVT_ESEALS);
	CHECK(fcntl(m2, F_ADD_SEALS, F_SEAL_SHRINK) == 0);
	uint32_t rid = 0;
	CHECK_RC(do_register(s, 144, 65536, m2, &rid), 0);
	CHECK(rid != 0);
	close(m2);
	close(s);
	env_finish(&e);
}

TEST(register_size_checks)
{
	struct env e;
	env_start(&e, "max_region_size = 4MiB\n");
	int s = connect_hello(&e);
	int m = sealed_memfd(2 * MiB);
	int big = sealed_memfd(8 * MiB);
	CHECK_RC(do_register(s, 151, 2 * MiB + 1, m, NULL), KVT_ERANGE); /* file too small */
	CHECK_RC(do_register(s, 152, 4 * MiB + 1, big, NULL), KVT_EMSGSIZE); /* over the limit */
	CHECK_RC(do_register(s, 153, 0, m, NULL), KVT_EINVAL);
	uint32_t rid = 0;
	CHECK_RC(do_register(s, 154, 1 * MiB, m, &rid), 0); /* a prefix of the file is fine */
	CHECK(rid != 0);
	close(m);
	close(big);
	/* The region is usable up to its registered size only. */
	CHECK_RC(raw_put1(s, 155, key_of(1), rid, 1 * MiB - 1, 1), 0);
	CHECK_RC(raw_put1(s, 156, key_of(2), rid, 1 * MiB - 1, 2), KVT_ERANGE);
	close(s);
	env_finish(&e);
}

TEST(too_many_regions_is_emfile)
{
	struct env e;
	env_start(&e, "max_regions = 2\n");
	int s = connect_hello(&e);
	int m = sealed_memfd(65536);
	uint32_t r1 = 0, r2 = 0, r3 = 0;
	CHECK_RC(do_register(s, 161, 65536, m, &r1), 0);
	CHECK_RC(do_register(s, 162, 65536, m, &r2), 0);
	CHECK(r1 != 0 && r2 != 0 && r1 != r2);
	CHECK_RC(do_register(s, 163, 65536, m, NULL), KVT_EMFILE);
	CHECK_RC(do_register(s, 164, 65536, m, NULL), KVT_EMFILE);
	uint8_t un[KVT_UNREGISTER_REQ_SIZE];
	struct kvt_unregister_req ur = { .region_id = r1 };
	CHECK_EQ(kvt_unregister_req_encode(&ur, un, sizeof(un)), KVT_UNREGISTER_REQ_SIZE);
	send_frame(s, KVT_OP_UNREGISTER, 0, 165, un, sizeof(un));
	expect_reply(s, 165, KVT_OP_UNREGISTER, 0, NULL, 0);
	CHECK_RC(do_register(s, 166, 65536, m, &r3), 0);
	CHECK_MSG(r3 != r1 && r3 != r2, "region id %u reused", r3); /* never reused */
	/* The old id stays dead even though its slot is taken again. */
	CHECK_RC(raw_put1(s, 168, key_of(1), r1, 0, 1), KVT_EREGION);
	close(m);
	/* The limit is per connection. */
	int s2 = connect_hello(&e);
	int m2 = sealed_memfd(65536);
	uint32_t rid = 0;
	CHECK_RC(do_register(s2, 167, 65536, m2, &rid), 0);
	CHECK(rid != 0);
	close(m2);
	close(s2);
	close(s);
	env_finish(&e);
}

TEST(fd_travels_with_the_register_frame_it_arrived_with)
{
	struct env e;
	env_start(&e, NULL);
	int s = connect_hello(&e);
	/* PING then REGISTER in one sendmsg, the fd attached: the REGISTER takes it. */
	uint8_t buf[2 * KVT_HDR_SIZE + 2 * KVT_REGISTER_REQ_SIZE];
	size_t len = frame(buf, KVT_OP_PING, 171, NULL, 0);
	len += register_frame(buf + len, 172, 4096, 0);
	int m = sealed_memfd(4096);
	send_fds(s, buf, len, &m, 1);
	close(m);
	uint8_t rep[16];
	struct kvt_register_rep rr;
	expect_reply(s, 171, KVT_OP_PING, 0, NULL, 0);
	uint32_t bl = expect_reply(s, 172, KVT_OP_REGISTER, 0, rep, sizeof(rep));
	CHECK_RC(kvt_register_rep_decode(rep, bl, &rr), 0);
	uint32_t first = rr.region_id;
	/* Two REGISTERs and two fds in one sendmsg: one each, in order. */
	len = register_frame(buf, 173, 4096, 0);
	len += register_frame(buf + len, 174, 8192, 0);
	int fds[2] = { sealed_memfd(4096), sealed_memfd(8192) };
	send_fds(s, buf, len, fds, 2);
	close(fds[0]);
	close(fds[1]);
	bl = expect_reply(s, 173, KVT_OP_REGISTER, 0, rep, sizeof(rep));
	CHECK_RC(kvt_register_rep_decode(rep, bl, &rr), 0);
	uint32_t small = rr.region_id;
	bl = expect_reply(s, 174, KVT_OP_REGISTER, 0, rep, sizeof(rep));
	CHECK_RC(kvt_register_rep_decode(rep, bl, &rr), 0);
	uint32_t large = rr.region_id;
	CHECK(first != small && small != large && first != large);
	/* The second fd (8 KiB) went with the second REGISTER. */
	CHECK_RC(raw_put1(s, 175, key_of(3), large, 4096, 4096), 0);
	CHECK_RC(raw_put1(s, 176, key_of(4), small, 4096, 1), KVT_ERANGE);
	CHECK_RC(raw_put1(s, 177, key_of(5), first, 0, 4096), 0);
	close(s);
	env_finish(&e);
}

TEST(unknown_region_ids_are_eregion)
{
	struct env e;
	env_start(&e, NULL);
	int s = connect_hello(&e);
	uint8_t un[KVT_UNREGISTER_REQ_SIZE];
	static const uint32_t bad[] = { 0, 1, 99, 0xffffffffu };
	for (size_t i = 0; i < 4; i++) {
		struct kvt_unregister_req ur = { .region_id = bad[i] };
		CHECK_EQ(kvt_unregister_req_encode(&ur, un, sizeof(un)), KVT_UNREGISTER_REQ_SIZE);
		send_frame(s, KVT_OP_UNREGISTER, 0, 180 + i, un, sizeof(un));
		expect_reply(s, 180 + i, KVT_OP_UNREGISTER, KVT_EREGION, NULL, 0);
		CHECK_RC(raw_put1(s, 190 + i, key_of(1), bad[i], 0, 1), KVT_EREGION);
		CHECK_RC(raw_get1(s, 200 + i, key_of(1), bad[i], 0, 1), KVT_EREGION);
	}
	int m = sealed_memfd(65536);
	uint32_t rid = 0;
	CHECK_RC(do_register(s, 210, 65536, m, &rid), 0);
	close(m);
	CHECK_RC(raw_put1(s, 211, key_of(5), rid, 0, 100), 0);
	struct kvt_unregister_req ur = { .region_id = rid };
	kvt_unregister_req_encode(&ur, un, sizeof(un));
	send_frame(s, KVT_OP_UNREGISTER, 0, 212, un, sizeof(un));
	expect_reply(s, 212, KVT_OP_UNREGISTER, 0, NULL, 0);
	send_frame(s, KVT_OP_UNREGISTER, 0, 213, un, sizeof(un));
	expect_reply(s, 213, KVT_OP_UNREGISTER, KVT_EREGION, NULL, 0);
	CHECK_RC(raw_put1(s, 214, key_of(6), rid, 0, 100), KVT_EREGION);
	CHECK_RC(raw_get1(s, 215, key_of(5), rid, 0, 100), KVT_EREGION);
	/* Another connection's region is not ours. */
	m = sealed_memfd(65536);
	CHECK_RC(do_register(s, 216, 65536, m, &rid), 0);
	close(m);
	int s2 = connect_hello(&e);
	CHECK_RC(raw_get1(s2, 217, key_of(5), rid, 0, 100), KVT_EREGION);
	CHECK_RC(raw_put1(s2, 218, key_of(7), rid, 0, 100), KVT_EREGION);
	close(s2);
	close(s);
	env_finish(&e);
}

TEST(offsets_out_of_range_including_overflow_are_erange)
{
	struct env e;
	env_start(&e, NULL);
	int s = connect_hello(&e);
	const uint64_t sz = 65536;
	int m = sealed_memfd(sz);
	uint32_t rid = 0;
	CHECK_RC(do_register(s, 221, sz, m, &rid), 0);
	close(m);
	CHECK_RC(raw_put1(s, 222, key_of(1), rid, sz, 1), KVT_ERANGE);
	CHECK_RC(raw_put1(s, 223, key_of(2), rid, sz - 1, 2), KVT_ERANGE);
	CHECK_RC(raw_put1(s, 224, key_of(3), rid, UINT64_MAX, 2), KVT_ERANGE);
	CHECK_RC(raw_put1(s, 225, key_of(4), rid, UINT64_MAX - 100, 200), KVT_ERANGE);
	CHECK_RC(raw_put1(s, 226, key_of(5), rid, 1ull << 63, 1ull << 20), KVT_ERANGE);
	CHECK_RC(raw_put1(s, 227, key_of(6), rid, 0, 1000), 0);
	CHECK_RC(raw_get1(s, 228, key_of(6), rid, sz - 999, 1000), KVT_ERANGE);
	CHECK_RC(raw_get1(s, 229, key_of(6), rid, UINT64_MAX - 8, 1000), KVT_ERANGE);
	CHECK_RC(raw_get1(s, 230, key_of(6), rid, sz - 1000, 1000), 0);
	close(s);
	env_finish(&e);
}

/* ---- limits ----------------------------------------------------------------- */

TEST(connections_over_the_limit_get_econnlimit)
{
	struct env e;
	env_start(&e, "max_connections = 4\n"); /* e.mon is one of the four */
	int s[3];
	for (int i = 0; i < 3; i++)
		s[i] = connect_hello(&e);
	uint64_t rejected0 = kvtd_stat(e.mon, "conn.rejected");
	int extra = raw_connect(e.d.sock);
	expect_notice_close(extra, KVT_ECONNLIMIT);
	kvt_conn *c = NULL;
	CHECK_RC(kvt_conn_open(e.d.sock, &c), KVT_ECONNLIMIT);
	for (int i = 0; i < 3; i++)
		ping_ok(s[i], 240 + (uint64_t)i);
	CHECK_RC(kvt_ping(e.mon), 0);
	CHECK(kvtd_stat(e.mon, "conn.rejected") >= rejected0 + 2);
	/* A freed slot is usable again (the daemon sees the close asynchronously). */
	close(s[0]);
	int rc = -1;
	for (int i = 0; i < 500 && rc != 0; i++) {
		rc = kvt_conn_open(e.d.sock, &c);
		if (rc != 0)
			test_sleep_ms(10);
	}
	CHECK_RC(rc, 0);
	CHECK_RC(kvt_ping(c), 0);
	kvt_conn_close(c);
	close(s[1]);
	close(s[2]);
	env_finish(&e);
}

TEST(requests_over_max_inflight_get_einflight)
{
	enum { N = 16, ITEMS = 4, BLK = 4 * 1024 * 1024 };
	struct env e;
	env_start(&e, "max_inflight = 2\nhost_capacity = 256MiB\n");
	int s = connect_hello(&e);
	int m = sealed_memfd(ITEMS * BLK);
	uint8_t *map = mmap(NULL, ITEMS * BLK, PROT_READ | PROT_WRITE, MAP_SHARED, m, 0);
	CHECK(map != MAP_FAILED);
	memset(map, 0x3c, ITEMS * BLK);
	uint32_t rid = 0;
	CHECK_RC(do_register(s, 250, ITEMS * BLK, m, &rid), 0);
	close(m);
	/* N PUTs of 16 MiB each in one write: the daemon sees them all at once. */
	static uint8_t buf[N * (KVT_HDR_SIZE + 8 + ITEMS * KVT_PUT_ITEM_SIZE)];
	size_t len = 0;
	for (int i = 0; i < N; i++) {
		uint8_t body[8 + ITEMS * KVT_PUT_ITEM_SIZE];
		CHECK_EQ(kvt_batch_prefix_encode(ITEMS, body, 8), 8);
		for (int j = 0; j < ITEMS; j++) {
			struct kvt_put_wire w = { .key = key_of((uint64_t)(i * ITEMS + j) + 1),
						  .region_id = rid,
						  .offset = (uint64_t)j * BLK,
						  .length = BLK };
			kvt_put_item_encode(&w, body + 8 + j * KVT_PUT_ITEM_SIZE);
		}
		len += frame(buf + len, KVT_OP_PUT, 300 + (uint64_t)i, body, sizeof(body));
	}
	CHECK_RC(raw_send(s, buf, len), 0);
	bool seen[N] = { false };
	int ok = 0, refused = 0;
	for (int n = 0; n < N; n++) {
		struct kvt_hdr h;
		uint8_t rep[128];
		CHECK_RC(raw_recv_frame(s, &h, rep, sizeof(rep), WAIT_MS), 0);
		CHECK_EQ(h.opcode, KVT_OP_PUT);
		int i = (int)h.request_id - 300;
		CHECK_MSG(i >= 0 && i < N && !seen[i], "unexpected reply id %llu",
			  (unsigned long long)h.request_id);
		seen[i] = true;
		if (h.status == KVT_EINFLIGHT) {
			CHECK_EQ(h.body_len, 0);
			refused++;
			continue;
		}
		CHECK_RC(h.status, 0);
		int32_t st[ITEMS];
		CHECK_RC(kvt_status_rep_decode(rep, h.body_len, ITEMS, st), 0);
		for (int j = 0; j < ITEMS; j++)
			CHECK_RC(st[j], 0);
		ok++;
	}
	test_log("%d PUTs accepted, %d refused with EINFLIGHT", ok, refused);
	CHECK_MSG(refused > 0, "no request was refused with max_inflight = 2");
	CHECK(ok >= 2);
	ping_ok(s, 400);
	munmap(map, ITEMS * BLK);
	close(s);
	env_finish(&e);
}

/* ---- timeouts --------------------------------------------------------------- */

TEST(partial_frame_times_out_with_etimedout)
{
	struct env e;
	env_start(&e, "frame_timeout = 1s\n");
	int s = connect_hello(&e);
	uint8_t buf[KVT_HDR_SIZE];
	frame(buf, KVT_OP_PING, 1, NULL, 0);
	CHECK_RC(raw_send(s, buf, 10), 0);
	/* Meanwhile other clients are served. */
	CHECK_RC(kvt_ping(e.mon), 0);
	expect_notice_close(s, KVT_ETIMEDOUT);
	env_finish(&e);
}

TEST(no_hello_times_out)
{
	struct env e;
	env_start(&e, "handshake_timeout = 1s\n");
	int s = raw_connect(e.d.sock);
	expect_notice_close(s, KVT_ETIMEDOUT);
	/* A HELLO in time keeps the connection past the handshake timeout. */
	s = connect_hello(&e);
	test_sleep_ms(1500);
	ping_ok(s, 2);
	close(s);
	env_finish(&e);
}

TEST(idle_connection_is_closed_with_eidle)
{
	struct env e;
	env_start(&e, "idle_timeout = 1s\n");
	int s = connect_hello(&e);
	expect_notice_close(s, KVT_EIDLE);
	/* The monitor connection went idle too: reopen it, and keep it talking. */
	kvt_conn_close(e.mon);
	CHECK_RC(kvt_conn_open(e.d.sock, &e.mon), 0);
	kvt_conn_set_timeout(e.mon, 30000);
	/* A connection that keeps talking is not idle. */
	s = connect_hello(&e);
	for (int i = 0; i < 25; i++) {
		ping_ok(s, 500 + (uint64_t)i);
		CHECK_RC(kvt_ping(e.mon), 0);
		test_sleep_ms(100);
	}
	close(s);
	env_finish(&e);
}

/* ---- random bodies ---------------------------------------------------------- */

TEST(random_bodies_get_answers_not_crashes)
{
	struct env e;
	env_start(&e, NULL);
	int s = connect_hello(&e);
	uint64_t x = 0x2545f4914f6cdd1dull;
	uint8_t body[512];
	for (uint64_t n = 1; n <= 3000; n++) {
		x ^= x << 13;
		x ^= x >> 7;
		x ^= x << 17;
		/* Every request opcode but HELLO (whose version rules may close). */
		uint16_t op = (uint16_t)(2 + x % 10);
		uint32_t len = (uint32_t)((x >> 8) % sizeof(body));
		for (uint32_t i = 0; i < len; i++) {
			x ^= x << 13;
			x ^= x >> 7;
			x ^= x << 17;
			body[i] = (uint8_t)x;
		}
		/* Half the time, make the batch prefix plausible to get past it. */
		if (len >= 8 && (n & 1) && op >= KVT_OP_PUT && op <= KVT_OP_UNPIN) {
			size_t isz = op == KVT_OP_PUT ? KVT_PUT_ITEM_SIZE :
				     op == KVT_OP_GET ? KVT_GET_ITEM_SIZE : KVT_KEY_SIZE;
			uint32_t cnt = (uint32_t)((len - 8) / isz);
			len = 8 + cnt * (uint32_t)isz;
			kvt_batch_prefix_encode(cnt, body, 8);
		}
		send_frame(s, op, 0, n, body, len);
		struct kvt_hdr h;
		uint8_t rep[64];
		int rc = raw_recv_frame(s, &h, rep, sizeof(rep), WAIT_MS);
		CHECK_MSG(rc == 0, "no reply to random request %llu (%s, %u bytes): %d",
			  (unsigned long long)n, kvt_op_name(op), len, rc);
		CHECK_MSG(h.request_id == n && h.opcode == op,
			  "request %llu (%s): got %s id %llu status %s", (unsigned long long)n,
			  kvt_op_name(op), kvt_op_name(h.opcode), (unsigned long long)h.request_id,
			  test_errname(h.status));
	}
	ping_ok(s, 9999);
	close(s);
	env_finish(&e);
}

TEST_MAIN(truncated_frames_then_close, garbage_bytes_are_ebadmagic, wrong_magic_is_ebadmagic,
	  other_header_versions_are_eversion, body_over_max_frame_is_emsgsize_without_allocating,
	  reserved_header_field_closes_the_stream, fd_without_register_is_estrayfd,
	  truncated_fd_array_closes_without_leaking, unknown_opcode_is_eopcode_and_connection_stays,
	  unknown_must_understand_flag_is_eflags, unknown_ignorable_flags_are_accepted,
	  requests_before_hello_are_enohello, second_hello_is_eproto,
	  hello_without_a_common_version_is_eversion_then_close,
	  malformed_hello_is_rejected_and_hello_can_follow, batch_over_max_batch_is_e2big,
	  body_length_mismatch_is_ebadmsg, reserved_body_fields_are_ereserved,
	  register_without_fd_is_enofd, register_of_non_memfd_is_eseals,
	  register_of_unsealed_memfd_is_eseals, register_size_checks, too_many_regions_is_emfile,
	  fd_travels_with_the_register_frame_it_arrived_with, unknown_region_ids_are_eregion,
	  offsets_out_of_range_including_overflow_are_erange,
	  connections_over_the_limit_get_econnlimit, requests_over_max_inflight_get_einflight,
	  partial_frame_times_out_with_etimedout, no_hello_times_out,
	  idle_connection_is_closed_with_eidle, random_bodies_get_answers_not_crashes)
