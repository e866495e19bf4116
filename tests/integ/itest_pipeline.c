/*
 * itest_pipeline.c - many requests in flight at once: tickets from the *_start
 * calls waited for in any order, synchronous calls while tickets are pending,
 * batches split over several frames, and raw frames sent in one write whose
 * replies must all come back matched by request id.
 */
#include <fcntl.h>
#include <stdint.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include "harness.h"
#include "kvtier.h"
#include "proto.h"
#include "test.h"

#define KiB (1024ull)
#define MiB (1024ull * 1024)

static const kvt_block_desc test_desc = { .dtype = KVT_DTYPE_F16, .layers = 2, .tokens = 8 };

static kvt_key test_key(uint32_t ns, uint64_t n)
{
	kvt_key k;
	memset(&k, 0, sizeof(k));
	k.b[0] = 0x70;
	memcpy(k.b + 4, &ns, sizeof(ns));
	memcpy(k.b + 8, &n, sizeof(n));
	return k;
}

static void pattern(uint8_t *p, size_t n, uint64_t seed)
{
	uint64_t x = seed * 0x9e3779b97f4a7c15ull + 0x5555;
	for (size_t i = 0; i < n; i++) {
		x ^= x << 13;
		x ^= x >> 7;
		x ^= x << 17;
		p[i] = (uint8_t)(x >> 24);
	}
}

static void check_same(const uint8_t *got, const uint8_t *want, size_t n, const char *what)
{
	if (memcmp(got, want, n) == 0)
		return;
	for (size_t i = 0; i < n; i++)
		if (got[i] != want[i])
			test_fail(__FILE__, __LINE__, "%s: byte %zu of %zu is %#x, expected %#x",
				  what, i, n, got[i], want[i]);
}

/* ------------------------------------------------------------------------ */

TEST(tickets_complete_when_waited_in_reverse_order)
{
	enum { N = 40, BLK = 256 * 1024 };
	struct kvtd d;
	kvtd_start(&d, NULL);
	kvt_conn *c = kvtd_connect(&d, 30000);
	kvt_region *src = kvtd_region(c, N * BLK);
	kvt_region *dst = kvtd_region(c, N * BLK);
	uint8_t *s = kvt_region_base(src), *t = kvt_region_base(dst);
	pattern(s, N * BLK, 1);

	static kvt_put_item put[N];
	static kvt_get_item get[N];
	kvt_ticket tk[N];
	for (int i = 0; i < N; i++) {
		put[i] = (kvt_put_item){ .key = test_key(1, (uint64_t)i), .region = src,
					 .offset = (uint64_t)i * BLK, .length = BLK - (uint64_t)i,
					 .desc = test_desc, .status = 12345 };
		CHECK_RC(kvt_block_put_start(c, &put[i], 1, &tk[i]), 0);
		for (int j = 0; j < i; j++)
			CHECK_MSG(tk[j] != tk[i], "tickets %d and %d are equal", j, i);
	}
	for (int i = N - 1; i >= 0; i--) {
		CHECK_RC(kvt_wait(c, tk[i]), 0);
		CHECK_RC(put[i].status, 0);
	}
	memset(t, 0xee, N * BLK);
	for (int i = 0; i < N; i++) {
		get[i] = (kvt_get_item){ .key = test_key(1, (uint64_t)i), .region = dst,
					 .offset = (uint64_t)i * BLK, .capacity = BLK,
					 .status = 12345 };
		CHECK_RC(kvt_block_get_start(c, &get[i], 1, &tk[i]), 0);
	}
	for (int i = N - 1; i >= 0; i--) {
		CHECK_RC(kvt_wait(c, tk[i]), 0);
		CHECK_RC(get[i].status, 0);
		CHECK_EQ(get[i].length, BLK - i);
		CHECK(memcmp(&get[i].desc, &test_desc, sizeof(test_desc)) == 0);
		check_same(t + (size_t)i * BLK, s + (size_t)i * BLK, BLK - (size_t)i, "GET bytes");
	}
	/* Everything was waited for: the tickets are gone. */
	CHECK_RC(kvt_wait(c, tk[0]), KVT_ETICKET);
	CHECK_RC(kvt_region_destroy(src), 0);
	CHECK_RC(kvt_region_destroy(dst), 0);
	kvt_conn_close(c);
	kvtd_stop_clean(&d);
}

TEST(tickets_interleave_with_synchronous_calls)
{
	enum { N = 16, BLK = 64 * 1024 };
	struct kvtd d;
	kvtd_start(&d, NULL);
	kvt_conn *c = kvtd_connect(&d, 30000);
	kvt_region *r = kvtd_region(c, 2 * N * BLK);
	uint8_t *base = kvt_region_base(r);
	pattern(base, N * BLK, 2);
	static kvt_put_item put[N];
	static kvt_get_item get[N];
	kvt_ticket tk[N];
	for (int i = 0; i < N; i++) {
		put[i] = (kvt_put_item){ .key = test_key(2, (uint64_t)i), .region = r,
					 .offset = (uint64_t)i * BLK, .length = BLK,
					 .desc = test_desc };
		CHECK_RC(kvt_block_put_start(c, &put[i], 1, &tk[i]), 0);
	}
	/* Synchronous calls must not lose or steal the tickets' replies. */
	CHECK_RC(kvt_ping(c), 0);
	kvt_stats *s = NULL;
	CHECK_RC(kvt_stats_get(c, &s), 0);
	kvt_stats_free(s);
	/* Waiting in an interleaved order: evens, then odds backwards. */
	for (int i = 0; i < N; i += 2)
		CHECK_RC(kvt_wait(c, tk[i]), 0);
	CHECK_RC(kvt_ping(c), 0);
	for (int i = N - 1; i > 0; i -= 2)
		CHECK_RC(kvt_wait(c, tk[i]), 0);
	kvt_key keys[N];
	for (int i = 0; i < N; i++)
		keys[i] = test_key(2, (uint64_t)i);
	size_t found = 0;
	CHECK_RC(kvt_block_lookup(c, keys, N, &found, NULL), 0);
	CHECK_EQ(found, N);

	for (int i = 0; i < N; i++) {
		get[i] = (kvt_get_item){ .key = keys[i], .region = r,
					 .offset = (uint64_t)(N + i) * BLK, .capacity = BLK };
		CHECK_RC(kvt_block_get_start(c, &get[i], 1, &tk[i]), 0);
	}
	/* A synchronous PUT in the middle, then the GETs. */
	kvt_put_item extra = { .key = test_key(2, 999), .region = r, .offset = 0, .length = 10,
			       .desc = test_desc };
	CHECK_RC(kvt_block_put(c, &extra, 1), 0);
	for (int i = N - 1; i >= 0; i--) {
		CHECK_RC(kvt_wait(c, tk[i]), 0);
		check_same(base + (size_t)(N + i) * BLK, base + (size_t)i * BLK, BLK, "GET");
	}
	CHECK_RC(kvt_region_destroy(r), 0);
	kvt_conn_close(c);
	kvtd_stop_clean(&d);
}

TEST(ticket_limit_and_unknown_tickets)
{
	struct kvtd d;
	kvtd_start(&d, "max_inflight = 4\nmax_batch = 100\n");
	kvt_conn *c = kvtd_connect(&d, 30000);
	CHECK_EQ(kvt_conn_server(c)->max_inflight, 4);
	kvt_region *r = kvtd_region(c, 1 * MiB);
	pattern(kvt_region_base(r), 1 * MiB, 3);
	static kvt_put_item put[8];
	kvt_ticket tk[8];
	for (int i = 0; i < 8; i++)
		put[i] = (kvt_put_item){ .key = test_key(3, (uint64_t)i), .region = r,
					 .offset = (uint64_t)i * 1000, .length = 1000,
					 .desc = test_desc };
	for (int i = 0; i < 4; i++)
		CHECK_RC(kvt_block_put_start(c, &put[i], 1, &tk[i]), 0);
	kvt_ticket none = 0xdead;
	CHECK_RC(kvt_block_put_start(c, &put[4], 1, &none), KVT_EAGAIN);
	CHECK_RC(kvt_wait(c, tk[1]), 0);
	CHECK_RC(kvt_block_put_start(c, &put[4], 1, &tk[4]), 0);
	CHECK_RC(kvt_wait(c, tk[1]), KVT_ETICKET); /* already waited for */
	CHECK_RC(kvt_wait(c, 0xfeedfaceull), KVT_ETICKET);
	for (int i = 0; i < 5; i++)
		if (i != 1)
			CHECK_RC(kvt_wait(c, tk[i]), 0);

	/* More items than max_batch in one ticket is refused up front. */
	static kvt_put_item many[101];
	for (int i = 0; i < 101; i++)
		many[i] = (kvt_put_item){ .key = test_key(4, (uint64_t)i), .region = r,
					  .offset = (uint64_t)i, .length = 1, .desc = test_desc };
	CHECK_RC(kvt_block_put_start(c, many, 101, &none), KVT_E2BIG);
	CHECK_RC(kvt_block_put_start(c, many, 100, &tk[0]), 0);
	CHECK_RC(kvt_wait(c, tk[0]), 0);
	CHECK_RC(kvt_ping(c), 0);
	CHECK_RC(kvt_region_destroy(r), 0);
	kvt_conn_close(c);
	kvtd_stop_clean(&d);
}

TEST(batches_larger_than_a_frame_are_split)
{
	enum { N = 1000, BLK = 24 };
	struct kvtd d;
	/* 1000 PUT items are 72 KB of frame body: at least five 16 KiB frames. */
	kvtd_start(&d, "max_frame = 16KiB\n");
	kvt_conn *c = kvtd_connect(&d, 30000);
	kvt_region *r = kvtd_region(c, 2 * N * BLK);
	uint8_t *base = kvt_region_base(r);
	pattern(base, N * BLK, 4);
	static kvt_put_item put[N];
	static kvt_get_item get[N];
	static kvt_key keys[N];
	for (int i = 0; i < N; i++) {
		keys[i] = test_key(5, (uint64_t)i);
		put[i] = (kvt_put_item){ .key = keys[i], .region = r, .offset = (uint64_t)i * BLK,
					 .length = BLK, .desc = test_desc, .status = 12345 };
	}
	/* Make one item fail, to see per-item status survive the split. */
	put[777].offset = 2 * N * BLK;
	CHECK_RC(kvt_block_put(c, put, N), KVT_EPARTIAL);
	for (int i = 0; i < N; i++)
		CHECK_MSG(put[i].status == (i == 777 ? KVT_ERANGE : 0), "item %d: %s", i,
			  test_errname(put[i].status));
	size_t found = 0;
	CHECK_RC(kvt_block_lookup(c, keys, N, &found, NULL), 0);
	CHECK_EQ(found, 777);
	CHECK_RC(kvt_block_lookup(c, keys + 778, N - 778, &found, NULL), 0);
	CHECK_EQ(found, N - 778);

	for (int i = 0; i < N; i++)
		get[i] = (kvt_get_item){ .key = keys[i], .region = r,
					 .offset = (uint64_t)(N + i) * BLK, .capacity = BLK,
					 .status = 12345 };
	kvt_ticket tk;
	CHECK_RC(kvt_block_get_start(c, get, N, &tk), 0);
	CHECK_RC(kvt_wait(c, tk), KVT_EPARTIAL);
	for (int i = 0; i < N; i++) {
		if (i == 777) {
			CHECK_RC(get[i].status, KVT_ENOENT);
			continue;
		}
		CHECK_MSG(get[i].status == 0, "GET item %d: %s", i, test_errname(get[i].status));
		check_same(base + (size_t)(N + i) * BLK, base + (size_t)i * BLK, BLK, "split GET");
	}
	CHECK_RC(kvt_region_destroy(r), 0);
	kvt_conn_close(c);
	kvtd_stop_clean(&d);
}

TEST(closing_with_tickets_outstanding_is_safe)
{
	enum { N = 8, BLK = 1024 * 1024 };
	struct kvtd d;
	kvtd_start(&d, NULL);
	kvt_conn *c = kvtd_connect(&d, 30000);
	kvt_region *r = kvtd_region(c, N * BLK);
	pattern(kvt_region_base(r), N * BLK, 5);
	static kvt_put_item put[N];
	kvt_ticket tk;
	for (int i = 0; i < N; i++) {
		put[i] = (kvt_put_item){ .key = test_key(6, (uint64_t)i), .region = r,
					 .offset = (uint64_t)i * BLK, .length = BLK,
					 .desc = test_desc };
		CHECK_RC(kvt_block_put_start(c, &put[i], 1, &tk), 0);
	}
	kvt_conn_close(c); /* abandons the tickets */
	CHECK_RC(kvt_region_destroy(r), 0);
	CHECK(kvtd_alive(&d));
	c = kvtd_connect(&d, 30000);
	CHECK_RC(kvt_ping(c), 0);
	kvt_conn_close(c);
	kvtd_stop_clean(&d);
}

/* ---- raw frames -------------------------------------------------------------- */

/* Send one frame with fds attached to its first bytes (SCM_RIGHTS). */
static void send_with_fd(int sock, uint16_t op, uint64_t id, const uint8_t *body, uint32_t len,
			 int fd)
{
	uint8_t buf[KVT_HDR_SIZE + 64];
	CHECK(len <= 64);
	struct kvt_hdr h = { .magic = KVT_MAGIC, .version = 1, .opcode = op, .body_len = len,
			     .request_id = id };
	kvt_hdr_encode(&h, buf);
	memcpy(buf + KVT_HDR_SIZE, body, len);
	struct iovec iov = { .iov_base = buf, .iov_len = KVT_HDR_SIZE + len };
	union {
		char b[CMSG_SPACE(sizeof(int))];
		struct cmsghdr align;
	} u;
	memset(&u, 0, sizeof(u));
	struct msghdr m = { .msg_iov = &iov, .msg_iovlen = 1, .msg_control = u.b,
			    .msg_controllen = sizeof(u.b) };
	struct cmsghdr *cm = CMSG_FIRSTHDR(&m);
	cm->cmsg_level = SOL_SOCKET;
	cm->cmsg_type = SCM_RIGHTS;
	cm->cmsg_len = CMSG_LEN(sizeof(int));
	memcpy(CMSG_DATA(cm), &fd, sizeof(int));
	CHECK_EQ(sendmsg(sock, &m, MSG_NOSIGNAL), (ssize_t)iov.iov_len);
}

/* A sealed memfd of size bytes, mapped at *map; returns the fd. */
static int sealed_memfd(size_t size, uint8_t **map)
{
	int fd = memfd_create("itest", MFD_CLOEXEC | MFD_ALLOW_SEALING);
	CHECK(fd >= 0);
	CHECK(ftruncate(fd, (off_t)size) == 0);
	CHECK(fcntl(fd, F_ADD_SEALS, F_SEAL_SHRINK) == 0);
	*map = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
	CHECK(*map != MAP_FAILED);
	return fd;
}

static uint32_t raw_register(int sock, int memfd, uint64_t size)
{
	uint8_t body[KVT_REGISTER_REQ_SIZE];
	struct kvt_register_req rq = { .size = size };
	CHECK_EQ(kvt_register_req_encode(&rq, body, sizeof(body)), KVT_REGISTER_REQ_SIZE);
	send_with_fd(sock, KVT_OP_REGISTER, 7, body, sizeof(body), memfd);
	struct kvt_hdr h;
	uint8_t rep[64];
	CHECK_RC(raw_recv_frame(sock, &h, rep, sizeof(rep), 10000), 0);
	CHECK_EQ(h.request_id, 7);
	CHECK_RC(h.status, 0);
	struct kvt_register_rep rr;
	CHECK_RC(kvt_register_rep_decode(rep, h.body_len, &rr), 0);
	return rr.region_id;
}

/* Append a frame to buf at *len. */
static void append_frame(uint8_t *buf, size_t *len, uint16_t op, uint64_t id, const uint8_t *body,
			 uint32_t body_len)
{
	struct kvt_hdr h = { .magic = KVT_MAGIC, .version = 1, .opcode = op, .body_len = body_len,
			     .request_id = id };
	kvt_hdr_encode(&h, buf + *len);
	if (body_len)
		memcpy(buf + *len + KVT_HDR_SIZE, body, body_len);
	*len += KVT_HDR_SIZE + body_len;
}

static uint32_t put_body(uint8_t *body, kvt_key key, uint32_t region, uint64_t off, uint64_t len)
{
	CHECK_EQ(kvt_batch_prefix_encode(1, body, 8), 8);
	struct kvt_put_wire w = { .key = key, .region_id = region, .offset = off, .length = len,
				  .desc = test_desc };
	kvt_put_item_encode(&w, body + 8);
	return 8 + KVT_PUT_ITEM_SIZE;
}

static uint32_t get_body(uint8_t *body, kvt_key key, uint32_t region, uint64_t off, uint64_t cap)
{
	CHECK_EQ(kvt_batch_prefix_encode(1, body, 8), 8);
	struct kvt_get_wire w = { .key = key, .region_id = region, .offset = off,
				  .capacity = cap };
	kvt_get_item_encode(&w, body + 8);
	return 8 + KVT_GET_ITEM_SIZE;
}

TEST(raw_pipelined_frames_are_all_answered_by_id)
{
	enum { K = 48, BIG = 2 * 1024 * 1024 };
	struct kvtd d;
	kvtd_start(&d, NULL);
	int s = raw_connect(d.sock);
	raw_hello(s);
	uint8_t *map;
	const size_t size = 48 * MiB;
	int mfd = sealed_memfd(size, &map);
	pattern(map, BIG, 6);
	uint32_t rid = raw_register(s, mfd, size);
	close(mfd);

	/* Big copies, one-byte copies and PINGs interleaved, all in one write, so a
	 * daemon that answers as work completes may answer out of order. */
	static uint8_t buf[K * (KVT_HDR_SIZE + 8 + KVT_PUT_ITEM_SIZE)];
	size_t len = 0;
	uint16_t want_op[K];
	for (int i = 0; i < K; i++) {
		uint8_t body[128];
		uint32_t bl = 0;
		if (i % 3 == 0) {
			bl = put_body(body, test_key(7, (uint64_t)i), rid, 0, BIG);
			want_op[i] = KVT_OP_PUT;
		} else if (i % 3 == 1) {
			want_op[i] = KVT_OP_PING;
		} else {
			bl = put_body(body, test_key(7, (uint64_t)i), rid, (uint64_t)i, 1);
			want_op[i] = KVT_OP_PUT;
		}
		append_frame(buf, &len, want_op[i], 1000 + (uint64_t)i, body, bl);
	}
	CHECK_RC(raw_send(s, buf, len), 0);
	bool seen[K] = { false };
	int order[K];
	for (int n = 0; n < K; n++) {
		struct kvt_hdr h;
		uint8_t rep[256];
		CHECK_RC(raw_recv_frame(s, &h, rep, sizeof(rep), 20000), 0);
		CHECK_MSG(h.request_id >= 1000 && h.request_id < 1000 + K, "reply with id %llu",
			  (unsigned long long)h.request_id);
		int i = (int)(h.request_id - 1000);
		CHECK_MSG(!seen[i], "two replies for id %d", 1000 + i);
		seen[i] = true;
		order[n] = i;
		CHECK_EQ(h.opcode, want_op[i]);
		CHECK(h.flags & KVT_F_REPLY);
		CHECK_RC(h.status, 0);
		if (want_op[i] == KVT_OP_PUT) {
			int32_t st = 1;
			CHECK_RC(kvt_status_rep_decode(rep, h.body_len, 1, &st), 0);
			CHECK_RC(st, 0);
		} else {
			CHECK_EQ(h.body_len, 0);
		}
	}
	int inversions = 0;
	for (int n = 1; n < K; n++)
		inversions += order[n] < order[n - 1];
	test_log("%d of %d replies came after a later request's reply", inversions, K);

	/* Now GET the big blocks back, pipelined, in reverse order of request. */
	len = 0;
	int ngets = 0;
	for (int i = K - 1; i >= 0; i -= 3) {
		int key = i - (i % 3); /* the big block of this group */
		uint8_t body[128];
		uint32_t bl = get_body(body, test_key(7, (uint64_t)key), rid,
				       BIG + (uint64_t)(key / 3) * BIG, BIG);
		append_frame(buf, &len, KVT_OP_GET, 5000 + (uint64_t)key, body, bl);
		ngets++;
	}
	CHECK_RC(raw_send(s, buf, len), 0);
	for (int n = 0; n < ngets; n++) {
		struct kvt_hdr h;
		uint8_t rep[256];
		CHECK_RC(raw_recv_frame(s, &h, rep, sizeof(rep), 20000), 0);
		CHECK_EQ(h.opcode, KVT_OP_GET);
		CHECK_RC(h.status, 0);
		int key = (int)(h.request_id - 5000);
		CHECK_MSG(key >= 0 && key < K && key % 3 == 0, "GET reply id %llu",
			  (unsigned long long)h.request_id);
		struct kvt_get_result gr;
		CHECK_RC(kvt_get_rep_decode(rep, h.body_len, 1, &gr), 0);
		CHECK_RC(gr.status, 0);
		CHECK_EQ(gr.length, BIG);
		check_same(map + BIG + (size_t)(key / 3) * BIG, map, BIG, "pipelined GET");
	}
	close(s);
	munmap(map, size);
	kvtd_stop_clean(&d);
}

static uint32_t unregister_body(uint8_t *body, uint32_t region)
{
	struct kvt_unregister_req ur = { .region_id = region };
	CHECK_EQ(kvt_unregister_req_encode(&ur, body, KVT_UNREGISTER_REQ_SIZE),
		 KVT_UNREGISTER_REQ_SIZE);
	return KVT_UNREGISTER_REQ_SIZE;
}

/* Receive the replies to a batch request (id) and an UNREGISTER (uid) sent together,
 * in either order; checks that both and every item succeeded. */
static void expect_batch_and_unregister(int s, uint64_t id, uint16_t op, uint32_t n, uint64_t uid)
{
	bool got_batch = false, got_unreg = false;
	while (!got_batch || !got_unreg) {
		struct kvt_hdr h;
		uint8_t rep[512];
		CHECK_RC(raw_recv_frame(s, &h, rep, sizeof(rep), 20000), 0);
		CHECK_RC(h.status, 0);
		if (h.request_id == uid) {
			CHECK(!got_unreg);
			CHECK_EQ(h.opcode, KVT_OP_UNREGISTER);
			got_unreg = true;
			continue;
		}
		CHECK_EQ(h.request_id, id);
		CHECK(!got_batch);
		CHECK_EQ(h.opcode, op);
		got_batch = true;
		if (op == KVT_OP_PUT) {
			int32_t st[16];
			CHECK(n <= 16);
			CHECK_RC(kvt_status_rep_decode(rep, h.body_len, n, st), 0);
			for (uint32_t i = 0; i < n; i++)
				CHECK_RC(st[i], 0);
		} else {
			struct kvt_get_result gr[8];
			CHECK(n <= 8);
			CHECK_RC(kvt_get_rep_decode(rep, h.body_len, n, gr), 0);
			for (uint32_t i = 0; i < n; i++)
				CHECK_RC(gr[i].status, 0);
		}
	}
}

TEST(unregister_waits_for_transfers_using_the_region)
{
	enum { N = 4, BLK = 4 * 1024 * 1024 };
	struct kvtd d;
	kvtd_start(&d, NULL);
	int s = raw_connect(d.sock);
	raw_hello(s);
	uint8_t *src, *dst;
	int mfd = sealed_memfd(N * BLK, &src);
	pattern(src, N * BLK, 8);
	uint32_t rsrc = raw_register(s, mfd, N * BLK);
	close(mfd);

	/* PUT N big blocks from the region and UNREGISTER it, in one write. */
	static uint8_t buf[2 * KVT_HDR_SIZE + 8 + N * KVT_PUT_ITEM_SIZE + KVT_UNREGISTER_REQ_SIZE];
	uint8_t body[8 + N * KVT_PUT_ITEM_SIZE];
	CHECK_EQ(kvt_batch_prefix_encode(N, body, 8), 8);
	for (int i = 0; i < N; i++) {
		struct kvt_put_wire w = { .key = test_key(8, (uint64_t)i), .region_id = rsrc,
					  .offset = (uint64_t)i * BLK, .length = BLK,
					  .desc = test_desc };
		kvt_put_item_encode(&w, body + 8 + i * KVT_PUT_ITEM_SIZE);
	}
	size_t len = 0;
	append_frame(buf, &len, KVT_OP_PUT, 1, body, sizeof(body));
	uint8_t ub[KVT_UNREGISTER_REQ_SIZE];
	append_frame(buf, &len, KVT_OP_UNREGISTER, 2, ub, unregister_body(ub, rsrc));
	CHECK_RC(raw_send(s, buf, len), 0);
	expect_batch_and_unregister(s, 1, KVT_OP_PUT, N, 2);

	/* GET them into a second region and UNREGISTER that one at once too. */
	mfd = sealed_memfd(N * BLK, &dst);
	uint32_t rdst = raw_register(s, mfd, N * BLK);
	close(mfd);
	CHECK(rdst != rsrc);
	uint8_t gbody[8 + N * KVT_GET_ITEM_SIZE];
	CHECK_EQ(kvt_batch_prefix_encode(N, gbody, 8), 8);
	for (int i = 0; i < N; i++) {
		struct kvt_get_wire w = { .key = test_key(8, (uint64_t)i), .region_id = rdst,
					  .offset = (uint64_t)(N - 1 - i) * BLK, .capacity = BLK };
		kvt_get_item_encode(&w, gbody + 8 + i * KVT_GET_ITEM_SIZE);
	}
	len = 0;
	append_frame(buf, &len, KVT_OP_GET, 3, gbody, sizeof(gbody));
	append_frame(buf, &len, KVT_OP_UNREGISTER, 4, ub, unregister_body(ub, rdst));
	CHECK_RC(raw_send(s, buf, len), 0);
	expect_batch_and_unregister(s, 3, KVT_OP_GET, N, 4);
	for (int i = 0; i < N; i++)
		check_same(dst + (size_t)(N - 1 - i) * BLK, src + (size_t)i * BLK, BLK,
			   "GET into a region unregistered behind it");
	close(s);
	munmap(src, N * BLK);
	munmap(dst, N * BLK);
	kvtd_stop_clean(&d);
}

TEST_MAIN(tickets_complete_when_waited_in_reverse_order, tickets_interleave_with_synchronous_calls,
	  ticket_limit_and_unknown_tickets, batches_larger_than_a_frame_are_split,
	  closing_with_tickets_outstanding_is_safe, raw_pipelined_frames_are_all_answered_by_id,
	  unregister_waits_for_transfers_using_the_region)
