/*
 * test_client_fields.c - libkvtier's contexts and memory records against a fake
 * daemon: a thread on a Unix socket of its own that answers HELLO and PING and
 * gives every other request a canned reply. Checks what the library sends (field
 * by field), what it makes of good replies, that every malformed reply is
 * KVT_EBADMSG (or KVT_ERESERVED) with nothing handed out, and that bad arguments
 * are refused before anything is sent. No kvtierd needed.
 */
#include <errno.h>
#include <math.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "harness.h"
#include "kvtier.h"
#include "proto.h"
#include "test.h"

#define FAKE_MAX_FRAME (64u << 10)
#define FAKE_MAX_BATCH 64u
#define FAKE_BODY_CAP (256u << 10)

/* ---- the fake daemon ------------------------------------------------------------- */

struct fake {
	char dir[64];
	char path[128];
	int lfd;
	pthread_t thread;
	pthread_mutex_t lock;
	/* The reply to the next request other than HELLO and PING. */
	int32_t status;
	uint8_t *reply;
	size_t reply_len;
	/* What came: requests other than HELLO, and the last one of them. */
	unsigned requests;
	uint16_t last_op;
	uint8_t *last;
	size_t last_len;
};

static struct fake g_fake;

static int send_reply(int fd, const struct kvt_hdr *req, int32_t status, const uint8_t *body,
		      size_t len)
{
	struct kvt_hdr h = {
		.magic = KVT_MAGIC,
		.version = 1,
		.opcode = req->opcode,
		.flags = KVT_F_REPLY,
		.body_len = (uint32_t)len,
		.request_id = req->request_id,
		.status = status,
	};
	uint8_t *buf = malloc(KVT_HDR_SIZE + len);
	int rc;

	if (!buf)
		return -ENOMEM;
	kvt_hdr_encode(&h, buf);
	if (len)
		memcpy(buf + KVT_HDR_SIZE, body, len);
	rc = raw_send(fd, buf, KVT_HDR_SIZE + len);
	free(buf);
	return rc;
}

static void *fake_main(void *arg)
{
	struct fake *fs = arg;
	uint8_t *body = malloc(FAKE_BODY_CAP);
	int fd = accept(fs->lfd, NULL, NULL);

	while (fd >= 0 && body) {
		struct kvt_hdr h;
		uint8_t rep[256];

		if (raw_recv_frame(fd, &h, body, FAKE_BODY_CAP, 30000) < 0)
			break;
		if (h.opcode == KVT_OP_HELLO) {
			struct kvt_hello_rep m = {
				.version = 1, .tenant = 1000, .max_frame = FAKE_MAX_FRAME,
				.max_inflight = 8, .max_batch = FAKE_MAX_BATCH, .max_regions = 4,
				.max_region_size = 1 << 20, .max_block_size = 1 << 16,
				.server = "fake", .server_len = 4,
			};
			int n = kvt_hello_rep_encode(&m, rep, sizeof(rep));
			if (n < 0 || send_reply(fd, &h, 0, rep, (size_t)n) < 0)
				break;
			continue;
		}
		size_t len = h.body_len < FAKE_BODY_CAP ? h.body_len : FAKE_BODY_CAP;
		pthread_mutex_lock(&fs->lock);
		fs->requests++;
		fs->last_op = h.opcode;
		free(fs->last);
		fs->last = malloc(len ? len : 1);
		if (fs->last)
			memcpy(fs->last, body, len);
		fs->last_len = len;
		int rc = h.opcode == KVT_OP_PING ?
				 send_reply(fd, &h, 0, NULL, 0) :
				 send_reply(fd, &h, fs->status, fs->reply, fs->reply_len);
		pthread_mutex_unlock(&fs->lock);
		if (rc < 0)
			break;
	}
	free(body);
	if (fd >= 0)
		close(fd);
	return NULL;
}

/* Start the fake and connect to it. */
static kvt_conn *fake_start(void)
{
	struct fake *fs = &g_fake;
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	kvt_conn *c;

	memset(fs, 0, sizeof(*fs));
	pthread_mutex_init(&fs->lock, NULL);
	strcpy(fs->dir, "/tmp/kvt-fake.XXXXXX");
	CHECK(mkdtemp(fs->dir) != NULL);
	size_t dl = strlen(fs->dir);
	CHECK(dl + sizeof("/s.sock") <= sizeof(fs->path));
	memcpy(fs->path, fs->dir, dl);
	memcpy(fs->path + dl, "/s.sock", sizeof("/s.sock"));
	memcpy(sa.sun_path, fs->path, strlen(fs->path) + 1);
	fs->lfd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	CHECK(fs->lfd >= 0);
	CHECK(bind(fs->lfd, (struct sockaddr *)&sa, sizeof(sa)) == 0);
	CHECK(listen(fs->lfd, 4) == 0);
	CHECK(pthread_create(&fs->thread, NULL, fake_main, fs) == 0);
	CHECK_RC(kvt_conn_open(fs->path, &c), 0);
	CHECK_EQ(kvt_conn_server(c)->max_frame, FAKE_MAX_FRAME);
	kvt_conn_set_timeout(c, 10000);
	return c;
}

static void fake_stop(kvt_conn *c)
{
	struct fake *fs = &g_fake;

	kvt_conn_close(c);
	pthread_join(fs->thread, NULL);
	close(fs->lfd);
	unlink(fs->path);
	rmdir(fs->dir);
	free(fs->reply);
	free(fs->last);
	pthread_mutex_destroy(&fs->lock);
}

/* What the fake answers next: status and the body a writer made (w NULL: empty). */
static void fake_reply(int32_t status, const struct kvt_fields_writer *w)
{
	struct fake *fs = &g_fake;

	CHECK(!w || w->err == 0);
	pthread_mutex_lock(&fs->lock);
	free(fs->reply);
	fs->reply = NULL;
	fs->reply_len = w ? w->len : 0;
	if (fs->reply_len) {
		fs->reply = malloc(fs->reply_len);
		CHECK(fs->reply != NULL);
		memcpy(fs->reply, w->buf, w->len);
	}
	fs->status = status;
	pthread_mutex_unlock(&fs->lock);
}

/* Replace the canned body with its first len bytes, or flip byte at. */
static void fake_reply_cut(size_t len)
{
	pthread_mutex_lock(&g_fake.lock);
	if (len < g_fake.reply_len)
		g_fake.reply_len = len;
	pthread_mutex_unlock(&g_fake.lock);
}

static void fake_reply_poke(size_t at, uint8_t v)
{
	pthread_mutex_lock(&g_fake.lock);
	CHECK(at < g_fake.reply_len);
	g_fake.reply[at] = v;
	pthread_mutex_unlock(&g_fake.lock);
}

static unsigned fake_requests(void)
{
	pthread_mutex_lock(&g_fake.lock);
	unsigned n = g_fake.requests;
	pthread_mutex_unlock(&g_fake.lock);
	return n;
}

/* The last request: its opcode must be op; *f indexes a copy that stays valid until
 * the next fake_last (the body must be a valid field list). */
static void fake_last(uint16_t op, struct kvt_fields *f)
{
	static uint8_t *copy;

	pthread_mutex_lock(&g_fake.lock);
	CHECK_EQ(g_fake.last_op, op);
	free(copy);
	copy = malloc(g_fake.last_len ? g_fake.last_len : 1);
	CHECK(copy != NULL);
	memcpy(copy, g_fake.last, g_fake.last_len);
	size_t len = g_fake.last_len;
	pthread_mutex_unlock(&g_fake.lock);
	CHECK_RC(kvt_fields_decode(copy, len, f), 0);
}

/* Field tag of f holds exactly the n bytes at p. */
static bool field_is(const struct kvt_fields *f, unsigned tag, const void *p, size_t n)
{
	return f->val[tag] && f->len[tag] == n && (n == 0 || memcmp(f->val[tag], p, n) == 0);
}

static uint64_t field_u64(const struct kvt_fields *f, unsigned tag)
{
	uint64_t v = 0;
	CHECK_RC(kvt_fields_u64(f, tag, &v), 0);
	return v;
}

static uint32_t field_u32(const struct kvt_fields *f, unsigned tag)
{
	uint32_t v = 0;
	CHECK_RC(kvt_fields_u32(f, tag, &v), 0);
	return v;
}

/* Nothing was sent since before was read: a PING goes through next, as the only
 * request (the stream is ordered, so anything sent before it arrived first). */
static void check_nothing_sent(kvt_conn *c, unsigned before)
{
	CHECK_RC(kvt_ping(c), 0);
	CHECK_EQ(fake_requests(), before + 1);
	pthread_mutex_lock(&g_fake.lock);
	uint16_t op = g_fake.last_op;
	pthread_mutex_unlock(&g_fake.lock);
	CHECK_EQ(op, KVT_OP_PING);
}

static void put_f32s(uint8_t *out, const float *v, size_t n)
{
	for (size_t i = 0; i < n; i++) {
		uint32_t u;
		memcpy(&u, &v[i], 4);
		kvt_put32(out + 4 * i, u);
	}
}

/* ---- canned replies ----------------------------------------------------------------- */

static uint8_t g_body[FAKE_BODY_CAP];

/* Ways to spoil a record or a manifest. */
enum spoil {
	S_NONE,
	S_NO_NS, S_NO_KEY, S_NO_VALUE, S_NO_CREATED, S_NO_UPDATED, S_NO_EXPIRES,
	S_NS_OTHER, S_KEY_OTHER, S_NS_NUL, S_CREATED_4, S_EMB_5, S_EMB_NAN, S_EMB_BIG,
	S_META_BIG, S_TWICE, S_UNKNOWN_TAG, S_NS_LONG,
	S_REC_LAST, /* records above, manifests below */
	S_NO_NAME, S_NAME_OTHER, S_NO_SALT, S_SALT_15, S_KEYS_17, S_TIERS_SHORT, S_TIER_7,
	S_RESIDENT_BIG, S_TOKENS_SHORT, S_NO_BYTES, S_NO_EXPIRES_MS, S_META_TOO_BIG,
	S_NO_TIERS,
};

static const float g_emb[3] = { 0.5f, -1.25f, 3.0f };

/* One record's fields (the MEM_GET reply body, or a list/search entry). */
static void write_rec(struct kvt_fields_writer *w, const char *ns, const char *key, int spoil,
		      bool with_extras, const float *score)
{
	uint8_t emb[4 * 4097] = { 0 };
	static uint8_t big[KVT_MEM_META_MAX + 1];

	if (spoil != S_NO_NS) {
		if (spoil == S_NS_OTHER)
			kvt_fw_bytes(w, KVT_TAG_NS, "other", 5);
		else if (spoil == S_NS_NUL)
			kvt_fw_bytes(w, KVT_TAG_NS, "ag\0nt", 5);
		else if (spoil == S_NS_LONG)
			kvt_fw_bytes(w, KVT_TAG_NS, big, KVT_NAME_LEN_MAX + 1);
		else
			kvt_fw_bytes(w, KVT_TAG_NS, ns, strlen(ns));
	}
	if (spoil != S_NO_KEY)
		kvt_fw_bytes(w, KVT_TAG_KEY, spoil == S_KEY_OTHER ? "zz" : key,
			     spoil == S_KEY_OTHER ? 2 : strlen(key));
	if (spoil != S_NO_VALUE)
		kvt_fw_bytes(w, KVT_TAG_VALUE, "hello", 5);
	if (with_extras) {
		kvt_fw_bytes(w, KVT_TAG_METADATA, "{\"k\":1}", 7);
		put_f32s(emb, g_emb, 3);
		kvt_fw_bytes(w, KVT_TAG_EMBEDDING, emb, 12);
	}
	if (spoil == S_EMB_5)
		kvt_fw_bytes(w, KVT_TAG_EMBEDDING, emb, 5);
	if (spoil == S_EMB_NAN) {
		float nan = NAN;
		put_f32s(emb, &nan, 1);
		kvt_fw_bytes(w, KVT_TAG_EMBEDDING, emb, 4);
	}
	if (spoil == S_EMB_BIG) {
		memset(emb, 0, sizeof(emb));
		kvt_fw_bytes(w, KVT_TAG_EMBEDDING, emb, 4 * 4097);
	}
	if (spoil == S_META_BIG) {
		memset(big, 'x', sizeof(big));
		kvt_fw_bytes(w, KVT_TAG_METADATA, big, sizeof(big));
	}
	if (spoil == S_CREATED_4)
		kvt_fw_u32(w, KVT_TAG_CREATED_MS, 1);
	else if (spoil != S_NO_CREATED)
		kvt_fw_u64(w, KVT_TAG_CREATED_MS, 1700000000001ull);
	if (spoil != S_NO_UPDATED)
		kvt_fw_u64(w, KVT_TAG_UPDATED_MS, 1700000000002ull);
	if (spoil != S_NO_EXPIRES)
		kvt_fw_u64(w, KVT_TAG_EXPIRES_MS, 0);
	if (spoil == S_TWICE)
		kvt_fw_u64(w, KVT_TAG_UPDATED_MS, 3);
	if (spoil == S_UNKNOWN_TAG)
		kvt_fw_u8(w, 0x7ffe, 1);
	/* A hint from a later daemon is always fine. */
	kvt_fw_bytes(w, 0x8042, "later", 5);
	if (score) {
		uint32_t u;
		memcpy(&u, score, 4);
		kvt_fw_u32(w, KVT_TAG_SCORE, u);
	}
}

static const kvt_key g_keys[3] = { { { 1, 2, 3 } }, { { 4, 5, 6 } }, { { 7, 8, 9 } } };
static const uint32_t g_tokens[5] = { 11, 22, 33, 0x01020304u, 0xffffffffu };

/* A CTX_LOAD reply for "chat" with 3 blocks and 5 tokens. */
static void write_manifest(struct kvt_fields_writer *w, int spoil)
{
	static const uint8_t tiers[3] = { KVT_TIER_HOST, KVT_TIER_NVME, KVT_TIER_NONE };
	static uint8_t big[KVT_CTX_META_MAX + 1];
	uint8_t toks[sizeof(g_tokens)];
	kvt_key salt = { { 0xaa, 0xbb } };

	for (size_t i = 0; i < 5; i++)
		kvt_put32(toks + 4 * i, g_tokens[i]);
	if (spoil != S_NO_NAME)
		kvt_fw_bytes(w, KVT_TAG_NAME, spoil == S_NAME_OTHER ? "chaT" : "chat", 4);
	if (spoil != S_NO_SALT)
		kvt_fw_bytes(w, KVT_TAG_SALT, salt.b, spoil == S_SALT_15 ? 15 : 16);
	kvt_fw_u64(w, KVT_TAG_TOKEN_COUNT, 5);
	kvt_fw_bytes(w, KVT_TAG_KEYS, g_keys, spoil == S_KEYS_17 ? 17 : sizeof(g_keys));
	if (spoil == S_TIER_7)
		kvt_fw_bytes(w, KVT_TAG_TIERS, "\x01\x07\x02", 3);
	else if (spoil != S_NO_TIERS)
		kvt_fw_bytes(w, KVT_TAG_TIERS, tiers, spoil == S_TIERS_SHORT ? 2 : 3);
	kvt_fw_u32(w, KVT_TAG_RESIDENT, spoil == S_RESIDENT_BIG ? 4 : 1);
	kvt_fw_bytes(w, KVT_TAG_TOKENS, toks, spoil == S_TOKENS_SHORT ? 16 : 20);
	if (spoil == S_META_TOO_BIG)
		kvt_fw_bytes(w, KVT_TAG_METADATA, big, sizeof(big));
	else
		kvt_fw_bytes(w, KVT_TAG_METADATA, "sys", 3);
	if (spoil != S_NO_BYTES)
		kvt_fw_u64(w, KVT_TAG_BYTES, 3 << 20);
	kvt_fw_u64(w, KVT_TAG_CREATED_MS, 1700000000000ull);
	if (spoil != S_NO_EXPIRES_MS)
		kvt_fw_u64(w, KVT_TAG_EXPIRES_MS, 1800000000000ull);
}

/* ---- memory records --------------------------------------------------------------- */

TEST(mem_get_decodes_reply)
{
	kvt_conn *c = fake_start();
	struct kvt_fields_writer w;
	struct kvt_fields f;
	kvt_mem_item *it = NULL;

	kvt_fw_init(&w, g_body, sizeof(g_body));
	write_rec(&w, "agent", "fact-1", S_NONE, true, NULL);
	fake_reply(0, &w);
	CHECK_RC(kvt_mem_get(c, "agent", "fact-1", &it), 0);
	fake_last(KVT_OP_MEM_GET, &f);
	CHECK(field_is(&f, KVT_TAG_NS, "agent", 5) && field_is(&f, KVT_TAG_KEY, "fact-1", 6));
	CHECK(strcmp(it->ns, "agent") == 0 && strcmp(it->key, "fact-1") == 0);
	CHECK(it->value_len == 5 && memcmp(it->value, "hello", 5) == 0);
	CHECK(it->metadata_len == 7 && strcmp(it->metadata, "{\"k\":1}") == 0);
	CHECK(it->dim == 3 && it->embedding != NULL);
	for (int i = 0; i < 3; i++)
		CHECK(it->embedding[i] == g_emb[i]);
	CHECK(it->created_ms == 1700000000001ull && it->updated_ms == 1700000000002ull);
	CHECK(it->expires_ms == 0 && it->score == 0.0f);
	kvt_mem_item_free(it);

	/* Without metadata and embedding: "" and NULL. */
	kvt_fw_init(&w, g_body, sizeof(g_body));
	write_rec(&w, "agent", "fact-1", S_NONE, false, NULL);
	fake_reply(0, &w);
	CHECK_RC(kvt_mem_get(c, "agent", "fact-1", &it), 0);
	CHECK(it->metadata != NULL && it->metadata[0] == '\0' && it->metadata_len == 0);
	CHECK(it->embedding == NULL && it->dim == 0);
	kvt_mem_item_free(it);
	kvt_mem_item_free(NULL);

	/* The daemon's status comes back as it is, nothing handed out. */
	it = NULL;
	fake_reply(KVT_ENOENT, NULL);
	CHECK_RC(kvt_mem_get(c, "agent", "gone", &it), KVT_ENOENT);
	CHECK(it == NULL);
	fake_stop(c);
}

TEST(mem_get_refuses_malformed_replies)
{
	kvt_conn *c = fake_start();
	struct kvt_fields_writer w;
	kvt_mem_item *it = NULL;

	for (int s = S_NO_NS; s < S_REC_LAST; s++) {
		kvt_fw_init(&w, g_body, sizeof(g_body));
		write_rec(&w, "agent", "k", s, false, NULL);
		fake_reply(0, &w);
		int rc = kvt_mem_get(c, "agent", "k", &it);
		CHECK_MSG(rc == KVT_EBADMSG, "spoil %d: %s", s, kvt_errname(rc));
		CHECK(it == NULL);
	}
	/* Framing: cut short, a reserved byte set. */
	kvt_fw_init(&w, g_body, sizeof(g_body));
	write_rec(&w, "agent", "k", S_NONE, true, NULL);
	fake_reply(0, &w);
	fake_reply_cut(w.len - 1);
	CHECK_RC(kvt_mem_get(c, "agent", "k", &it), KVT_EBADMSG);
	fake_reply(0, &w);
	fake_reply_poke(3, 1);
	CHECK_RC(kvt_mem_get(c, "agent", "k", &it), KVT_ERESERVED);
	CHECK(it == NULL);
	/* A malformed body costs that call only: the stream is fine. */
	fake_reply(0, &w);
	CHECK_RC(kvt_mem_get(c, "agent", "k", &it), 0);
	kvt_mem_item_free(it);
	fake_stop(c);
}

TEST(mem_put_and_delete_encode)
{
	kvt_conn *c = fake_start();
	struct kvt_fields f;
	uint8_t emb[12];
	kvt_mem_record r = {
		.ns = "agent", .key = "k1", .value = "v\0v", .value_len = 3,
		.metadata = "note", .metadata_len = 4, .embedding = g_emb, .dim = 3, .ttl_s = 60,
	};

	fake_reply(0, NULL);
	CHECK_RC(kvt_mem_put(c, &r), 0);
	fake_last(KVT_OP_MEM_PUT, &f);
	put_f32s(emb, g_emb, 3);
	CHECK(field_is(&f, KVT_TAG_NS, "agent", 5) && field_is(&f, KVT_TAG_KEY, "k1", 2));
	CHECK(field_is(&f, KVT_TAG_VALUE, "v\0v", 3) && field_is(&f, KVT_TAG_METADATA, "note", 4));
	CHECK(field_is(&f, KVT_TAG_EMBEDDING, emb, 12));
	CHECK_EQ(field_u32(&f, KVT_TAG_TTL_S), 60);

	/* An empty value is still sent; what is absent is not. */
	kvt_mem_record bare = { .ns = "agent", .key = "k2" };
	CHECK_RC(kvt_mem_put(c, &bare), 0);
	fake_last(KVT_OP_MEM_PUT, &f);
	CHECK(field_is(&f, KVT_TAG_VALUE, "", 0));
	CHECK(!f.val[KVT_TAG_METADATA] && !f.val[KVT_TAG_EMBEDDING] && !f.val[KVT_TAG_TTL_S]);

	fake_reply(KVT_ERANGE, NULL);
	CHECK_RC(kvt_mem_put(c, &r), KVT_ERANGE);
	fake_reply(0, NULL);
	CHECK_RC(kvt_mem_delete(c, "agent", "k1"), 0);
	fake_last(KVT_OP_MEM_DELETE, &f);
	CHECK(field_is(&f, KVT_TAG_NS, "agent", 5) && field_is(&f, KVT_TAG_KEY, "k1", 2));
	fake_reply(KVT_ENOENT, NULL);
	CHECK_RC(kvt_mem_delete(c, "agent", "k1"), KVT_ENOENT);
	fake_stop(c);
}

/* A MEM_LIST/MEM_SEARCH reply of n records (ns[i], key[i], optional scores). */
static void write_items(struct kvt_fields_writer *w, size_t n, const char *const *ns,
			const char *const *key, const float *scores, int more)
{
	kvt_fw_init(w, g_body, sizeof(g_body));
	for (size_t i = 0; i < n; i++) {
		size_t m = kvt_fw_begin(w, KVT_TAG_ENTRY);
		write_rec(w, ns[i], key[i], S_NONE, true, scores ? &scores[i] : NULL);
		kvt_fw_end(w, m);
	}
	if (more >= 0)
		kvt_fw_u8(w, KVT_TAG_MORE, (uint8_t)more);
}

TEST(mem_list_and_search)
{
	kvt_conn *c = fake_start();
	struct kvt_fields_writer w;
	struct kvt_fields f;
	kvt_mem_items *items = NULL;
	static const char *const ns[] = { "agent", "agent", "agent2" };
	static const char *const key[] = { "a", "b", "a" };

	write_items(&w, 3, ns, key, NULL, 1);
	fake_reply(0, &w);
	CHECK_RC(kvt_mem_list(c, "agent", "agent", "0", 3, &items), 0);
	fake_last(KVT_OP_MEM_LIST, &f);
	CHECK(field_is(&f, KVT_TAG_PREFIX, "agent", 5) && field_is(&f, KVT_TAG_AFTER_NS, "agent", 5));
	CHECK(field_is(&f, KVT_TAG_AFTER, "0", 1));
	CHECK_EQ(field_u32(&f, KVT_TAG_LIMIT), 3);
	CHECK(items->n == 3 && items->more);
	for (size_t i = 0; i < 3; i++) {
		const kvt_mem_item *it = &items->items[i];
		CHECK(strcmp(it->ns, ns[i]) == 0 && strcmp(it->key, key[i]) == 0);
		CHECK(it->value_len == 5 && memcmp(it->value, "hello", 5) == 0);
		CHECK(it->dim == 3 && it->embedding[2] == 3.0f);
		CHECK(((uintptr_t)it->embedding & 3) == 0);
		CHECK(strcmp(it->metadata, "{\"k\":1}") == 0);
	}
	kvt_mem_items_free(items);
	kvt_mem_items_free(NULL);

	/* No cursor, no prefix: neither is sent; an empty page is an empty result. */
	items = NULL;
	write_items(&w, 0, ns, key, NULL, 0);
	fake_reply(0, &w);
	CHECK_RC(kvt_mem_list(c, NULL, NULL, NULL, 1000, &items), 0);
	fake_last(KVT_OP_MEM_LIST, &f);
	CHECK(!f.val[KVT_TAG_PREFIX] && !f.val[KVT_TAG_AFTER_NS] && !f.val[KVT_TAG_AFTER]);
	CHECK(items->n == 0 && !items->more);
	kvt_mem_items_free(items);

	/* Refused: out of order, at or before the cursor, outside the prefix, more
	 * entries than asked for, MORE missing or not 0/1. */
	static const char *const rev_ns[] = { "agent", "agent" }, *const rev_key[] = { "b", "a" };
	static const char *const dup_key[] = { "a", "a" };
	static const char *const out_ns[] = { "agenda", "agent" };
	items = NULL;
	write_items(&w, 2, rev_ns, rev_key, NULL, 0);
	fake_reply(0, &w);
	CHECK_RC(kvt_mem_list(c, NULL, NULL, NULL, 10, &items), KVT_EBADMSG);
	write_items(&w, 2, rev_ns, dup_key, NULL, 0);
	fake_reply(0, &w);
	CHECK_RC(kvt_mem_list(c, NULL, NULL, NULL, 10, &items), KVT_EBADMSG);
	write_items(&w, 1, ns, key, NULL, 0);
	fake_reply(0, &w);
	CHECK_RC(kvt_mem_list(c, NULL, "agent", "a", 10, &items), KVT_EBADMSG);
	CHECK_RC(kvt_mem_list(c, NULL, "agent", NULL, 10, &items), 0); /* ("agent", "") */
	kvt_mem_items_free(items);
	items = NULL;
	write_items(&w, 2, out_ns, key, NULL, 0);
	fake_reply(0, &w);
	CHECK_RC(kvt_mem_list(c, "agent", NULL, NULL, 10, &items), KVT_EBADMSG);
	write_items(&w, 3, ns, key, NULL, 0);
	fake_reply(0, &w);
	CHECK_RC(kvt_mem_list(c, NULL, NULL, NULL, 2, &items), KVT_EBADMSG);
	write_items(&w, 1, ns, key, NULL, -1);
	fake_reply(0, &w);
	CHECK_RC(kvt_mem_list(c, NULL, NULL, NULL, 2, &items), KVT_EBADMSG);
	write_items(&w, 1, ns, key, NULL, 2);
	fake_reply(0, &w);
	CHECK_RC(kvt_mem_list(c, NULL, NULL, NULL, 2, &items), KVT_EBADMSG);
	/* A bad record at the end of a page spoils the whole page. */
	write_items(&w, 2, ns, key, NULL, -1);
	size_t m = kvt_fw_begin(&w, KVT_TAG_ENTRY);
	write_rec(&w, "zzz", "k", S_NO_UPDATED, false, NULL);
	kvt_fw_end(&w, m);
	kvt_fw_u8(&w, KVT_TAG_MORE, 0);
	fake_reply(0, &w);
	CHECK_RC(kvt_mem_list(c, NULL, NULL, NULL, 10, &items), KVT_EBADMSG);
	/* A NUL inside a namespace would cut the C string the caller gets. */
	kvt_fw_init(&w, g_body, sizeof(g_body));
	m = kvt_fw_begin(&w, KVT_TAG_ENTRY);
	write_rec(&w, "ag", "k", S_NS_NUL, false, NULL);
	kvt_fw_end(&w, m);
	kvt_fw_u8(&w, KVT_TAG_MORE, 0);
	fake_reply(0, &w);
	CHECK_RC(kvt_mem_list(c, "ag", NULL, NULL, 10, &items), KVT_EBADMSG);
	CHECK(items == NULL);

	/* Search: the query goes out little-endian, results come best first. */
	static const float good[] = { 0.9f, 0.9f, -0.5f }, bad[] = { 0.1f, 0.2f, 0.0f };
	uint8_t q[12];
	write_items(&w, 3, ns, key, good, 0);
	fake_reply(0, &w);
	CHECK_RC(kvt_mem_search(c, "age", g_emb, 3, 5, &items), 0);
	fake_last(KVT_OP_MEM_SEARCH, &f);
	put_f32s(q, g_emb, 3);
	CHECK(field_is(&f, KVT_TAG_EMBEDDING, q, 12) && field_is(&f, KVT_TAG_PREFIX, "age", 3));
	CHECK_EQ(field_u32(&f, KVT_TAG_K), 5);
	CHECK(items->n == 3 && items->items[0].score == 0.9f && items->items[2].score == -0.5f);
	kvt_mem_items_free(items);
	items = NULL;
	write_items(&w, 3, ns, key, bad, 0);
	fake_reply(0, &w);
	CHECK_RC(kvt_mem_search(c, "age", g_emb, 3, 5, &items), KVT_EBADMSG);
	write_items(&w, 3, ns, key, NULL, 0); /* no scores */
	fake_reply(0, &w);
	CHECK_RC(kvt_mem_search(c, "age", g_emb, 3, 5, &items), KVT_EBADMSG);
	write_items(&w, 3, ns, key, good, 0);
	fake_reply(0, &w);
	CHECK_RC(kvt_mem_search(c, "age", g_emb, 2, 5, &items), KVT_EBADMSG); /* dim 3 back */
	CHECK_RC(kvt_mem_search(c, "age", g_emb, 3, 2, &items), KVT_EBADMSG); /* 3 > k */
	CHECK(items == NULL);
	fake_reply(KVT_ENOENT, NULL);
	CHECK_RC(kvt_mem_search(c, "nothing", g_emb, 3, 5, &items), KVT_ENOENT);
	fake_stop(c);
}

/* ---- contexts ------------------------------------------------------------------ */

TEST(ctx_save_encodes_and_reports_missing)
{
	kvt_conn *c = fake_start();
	struct kvt_fields_writer w;
	struct kvt_fields f;
	uint8_t toks[sizeof(g_tokens)], buf[64];
	kvt_context x = {
		.name = "chat", .model_salt = { { 0xaa } }, .token_count = 5, .keys = g_keys,
		.nkeys = 3, .tokens = g_tokens, .metadata = "sys", .metadata_len = 3,
		.ttl_s = 86400,
	};
	size_t missing = 99;

	fake_reply(0, NULL);
	CHECK_RC(kvt_ctx_save(c, &x, &missing), 0);
	CHECK_EQ(missing, 99);
	fake_last(KVT_OP_CTX_SAVE, &f);
	for (size_t i = 0; i < 5; i++)
		kvt_put32(toks + 4 * i, g_tokens[i]);
	CHECK(field_is(&f, KVT_TAG_NAME, "chat", 4) && field_is(&f, KVT_TAG_SALT, x.model_salt.b, 16));
	CHECK_EQ(field_u64(&f, KVT_TAG_TOKEN_COUNT), 5);
	CHECK(field_is(&f, KVT_TAG_KEYS, g_keys, sizeof(g_keys)));
	CHECK(field_is(&f, KVT_TAG_TOKENS, toks, sizeof(toks)));
	CHECK(field_is(&f, KVT_TAG_METADATA, "sys", 3));
	CHECK_EQ(field_u32(&f, KVT_TAG_TTL_S), 86400);

	/* Optional parts left out are not sent. */
	kvt_context bare = { .name = "c2", .token_count = 48, .keys = g_keys, .nkeys = 3 };
	CHECK_RC(kvt_ctx_save(c, &bare, NULL), 0);
	fake_last(KVT_OP_CTX_SAVE, &f);
	CHECK(!f.val[KVT_TAG_TOKENS] && !f.val[KVT_TAG_METADATA] && !f.val[KVT_TAG_TTL_S]);

	/* KVT_ENOENT carries the first block stored nowhere - and must. */
	kvt_fw_init(&w, buf, sizeof(buf));
	kvt_fw_u32(&w, KVT_TAG_MISSING, 2);
	fake_reply(KVT_ENOENT, &w);
	CHECK_RC(kvt_ctx_save(c, &x, &missing), KVT_ENOENT);
	CHECK_EQ(missing, 2);
	CHECK_RC(kvt_ctx_save(c, &x, NULL), KVT_ENOENT);
	missing = 99;
	kvt_fw_init(&w, buf, sizeof(buf));
	kvt_fw_u32(&w, KVT_TAG_MISSING, 3); /* not an index of keys[] */
	fake_reply(KVT_ENOENT, &w);
	CHECK_RC(kvt_ctx_save(c, &x, &missing), KVT_EBADMSG);
	kvt_fw_init(&w, buf, sizeof(buf));
	kvt_fw_u64(&w, KVT_TAG_MISSING, 1); /* wrong size */
	fake_reply(KVT_ENOENT, &w);
	CHECK_RC(kvt_ctx_save(c, &x, &missing), KVT_EBADMSG);
	fake_reply(KVT_ENOENT, NULL);
	CHECK_RC(kvt_ctx_save(c, &x, &missing), KVT_EBADMSG);
	CHECK_EQ(missing, 99);
	/* Other errors are the daemon's word, body or not. */
	fake_reply(KVT_ENOSPC, NULL);
	CHECK_RC(kvt_ctx_save(c, &x, &missing), KVT_ENOSPC);
	fake_reply(KVT_EOPNOTSUPP, NULL);
	CHECK_RC(kvt_ctx_save(c, &x, &missing), KVT_EOPNOTSUPP);
	CHECK_EQ(missing, 99);
	/* A success body with a field nobody knows is malformed. */
	kvt_fw_init(&w, buf, sizeof(buf));
	kvt_fw_u8(&w, 0x7000, 1);
	fake_reply(0, &w);
	CHECK_RC(kvt_ctx_save(c, &x, &missing), KVT_EBADMSG);
	fake_stop(c);
}

TEST(ctx_load_decodes_and_checks)
{
	kvt_conn *c = fake_start();
	struct kvt_fields_writer w;
	struct kvt_fields f;
	kvt_ctx_info *info = NULL;

	kvt_fw_init(&w, g_body, sizeof(g_body));
	write_manifest(&w, S_NONE);
	fake_reply(0, &w);
	CHECK_RC(kvt_ctx_load(c, "chat", KVT_TIER_HOST, 250, &info), 0);
	fake_last(KVT_OP_CTX_LOAD, &f);
	CHECK(field_is(&f, KVT_TAG_NAME, "chat", 4));
	uint8_t tier = 0;
	CHECK_RC(kvt_fields_u8(&f, KVT_TAG_TIER, &tier), 0);
	CHECK_EQ(tier, KVT_TIER_HOST);
	CHECK_EQ(field_u32(&f, KVT_TAG_DEADLINE_MS), 250);
	CHECK(strcmp(info->name, "chat") == 0 && info->model_salt.b[1] == 0xbb);
	CHECK(info->token_count == 5 && info->nkeys == 3 && info->resident == 1);
	for (size_t i = 0; i < 3; i++)
		CHECK(kvt_key_equal(&info->keys[i], &g_keys[i]));
	CHECK(info->tiers[0] == KVT_TIER_HOST && info->tiers[1] == KVT_TIER_NVME &&
	      info->tiers[2] == KVT_TIER_NONE);
	CHECK(info->ntokens == 5 && ((uintptr_t)info->tokens & 3) == 0);
	CHECK(memcmp(info->tokens, g_tokens, sizeof(g_tokens)) == 0);
	CHECK(info->metadata_len == 3 && memcmp(info->metadata, "sys", 3) == 0);
	CHECK(info->bytes == 3 << 20 && info->created_ms == 1700000000000ull &&
	      info->expires_ms == 1800000000000ull);
	kvt_ctx_free(info);
	kvt_ctx_free(NULL);

	info = NULL;
	for (int s = S_NO_NAME; s <= S_NO_TIERS; s++) {
		kvt_fw_init(&w, g_body, sizeof(g_body));
		write_manifest(&w, s);
		fake_reply(0, &w);
		int rc = kvt_ctx_load(c, "chat", KVT_TIER_HOST, 0, &info);
		CHECK_MSG(rc == KVT_EBADMSG, "spoil %d: %s", s, kvt_errname(rc));
		CHECK(info == NULL);
	}
	fake_reply(KVT_ENOENT, NULL);
	CHECK_RC(kvt_ctx_load(c, "chat", KVT_TIER_HOST, 0, &info), KVT_ENOENT);
	fake_reply(KVT_EOPNOTSUPP, NULL);
	CHECK_RC(kvt_ctx_load(c, "chat", KVT_TIER_HBM, 0, &info), KVT_EOPNOTSUPP);
	CHECK(info == NULL);
	fake_stop(c);
}

/* A CTX_LIST reply of n contexts. */
static void write_ctx_list(struct kvt_fields_writer *w, size_t n, const char *const *names,
			   int more)
{
	kvt_fw_init(w, g_body, sizeof(g_body));
	for (size_t i = 0; i < n; i++) {
		size_t m = kvt_fw_begin(w, KVT_TAG_ENTRY);
		kvt_fw_bytes(w, KVT_TAG_NAME, names[i], strlen(names[i]));
		kvt_fw_u64(w, KVT_TAG_TOKEN_COUNT, 100 + i);
		kvt_fw_u32(w, KVT_TAG_NKEYS, (uint32_t)(7 + i));
		kvt_fw_u64(w, KVT_TAG_BYTES, 1000);
		kvt_fw_u64(w, KVT_TAG_CREATED_MS, 5);
		kvt_fw_u64(w, KVT_TAG_EXPIRES_MS, 0);
		kvt_fw_end(w, m);
	}
	if (more >= 0)
		kvt_fw_u8(w, KVT_TAG_MORE, (uint8_t)more);
}

TEST(ctx_list_and_delete)
{
	kvt_conn *c = fake_start();
	struct kvt_fields_writer w;
	struct kvt_fields f;
	kvt_ctx_info *list = NULL;
	size_t n = 99;
	bool more = false;
	static const char *const names[] = { "chat-1", "chat-10", "chat-2" };

	write_ctx_list(&w, 3, names, 1);
	fake_reply(0, &w);
	CHECK_RC(kvt_ctx_list(c, "chat-", "chat-0", 5000, &list, &n, &more), 0);
	fake_last(KVT_OP_CTX_LIST, &f);
	CHECK(field_is(&f, KVT_TAG_PREFIX, "chat-", 5) && field_is(&f, KVT_TAG_AFTER, "chat-0", 6));
	CHECK_EQ(field_u32(&f, KVT_TAG_LIMIT), 1000); /* a page holds at most 1000 */
	CHECK(n == 3 && more);
	for (size_t i = 0; i < 3; i++) {
		CHECK(strcmp(list[i].name, names[i]) == 0);
		CHECK(list[i].token_count == 100 + i && list[i].nkeys == 7 + i);
		CHECK(!list[i].keys && !list[i].tiers && !list[i].tokens && !list[i].metadata);
	}
	kvt_ctx_list_free(list, n);

	write_ctx_list(&w, 0, names, 0);
	fake_reply(0, &w);
	CHECK_RC(kvt_ctx_list(c, NULL, NULL, 10, &list, &n, NULL), 0);
	fake_last(KVT_OP_CTX_LIST, &f);
	CHECK(!f.val[KVT_TAG_PREFIX] && !f.val[KVT_TAG_AFTER]);
	CHECK(n == 0 && list == NULL);

	static const char *const rev[] = { "b", "a" }, *const dup[] = { "a", "a" };
	static const char *const nul_name[] = { "a\0b" };
	list = NULL;
	n = 99;
	write_ctx_list(&w, 2, rev, 0);
	fake_reply(0, &w);
	CHECK_RC(kvt_ctx_list(c, NULL, NULL, 10, &list, &n, &more), KVT_EBADMSG);
	write_ctx_list(&w, 2, dup, 0);
	fake_reply(0, &w);
	CHECK_RC(kvt_ctx_list(c, NULL, NULL, 10, &list, &n, &more), KVT_EBADMSG);
	write_ctx_list(&w, 2, names, 0);
	fake_reply(0, &w);
	CHECK_RC(kvt_ctx_list(c, NULL, NULL, 1, &list, &n, &more), KVT_EBADMSG); /* > cap */
	CHECK_RC(kvt_ctx_list(c, "x", NULL, 10, &list, &n, &more), KVT_EBADMSG); /* prefix */
	CHECK_RC(kvt_ctx_list(c, NULL, "chat-10", 10, &list, &n, &more), KVT_EBADMSG); /* cursor */
	write_ctx_list(&w, 2, names, -1);
	fake_reply(0, &w);
	CHECK_RC(kvt_ctx_list(c, NULL, NULL, 10, &list, &n, &more), KVT_EBADMSG); /* no MORE */
	kvt_fw_init(&w, g_body, sizeof(g_body));
	size_t m = kvt_fw_begin(&w, KVT_TAG_ENTRY);
	kvt_fw_bytes(&w, KVT_TAG_NAME, nul_name[0], 3);
	kvt_fw_end(&w, m);
	kvt_fw_u8(&w, KVT_TAG_MORE, 0);
	fake_reply(0, &w);
	CHECK_RC(kvt_ctx_list(c, NULL, NULL, 10, &list, &n, &more), KVT_EBADMSG);
	CHECK(list == NULL && n == 99);

	fake_reply(0, NULL);
	CHECK_RC(kvt_ctx_delete(c, "chat-1"), 0);
	fake_last(KVT_OP_CTX_DELETE, &f);
	CHECK(field_is(&f, KVT_TAG_NAME, "chat-1", 6));
	fake_reply(KVT_ENOENT, NULL);
	CHECK_RC(kvt_ctx_delete(c, "chat-1"), KVT_ENOENT);
	fake_stop(c);
}

/* ---- arguments ------------------------------------------------------------------ */

TEST(arguments_checked_before_sending)
{
	kvt_conn *c = fake_start();
	unsigned before = fake_requests();
	char long_name[KVT_NAME_LEN_MAX + 2];
	float emb[KVT_MEM_DIM_MAX + 1] = { 0 };
	kvt_mem_item *it = NULL;
	kvt_mem_items *items = NULL;
	kvt_ctx_info *info = NULL, *list = NULL;
	size_t n = 0, missing = 7;
	bool more;

	memset(long_name, 'n', sizeof(long_name) - 1);
	long_name[sizeof(long_name) - 1] = '\0';

	/* Names: empty, NULL, one byte too long. */
	CHECK_RC(kvt_mem_get(c, "", "k", &it), KVT_EINVAL);
	CHECK_RC(kvt_mem_get(c, "ns", NULL, &it), KVT_EINVAL);
	CHECK_RC(kvt_mem_get(c, long_name, "k", &it), KVT_EINVAL);
	CHECK_RC(kvt_mem_delete(c, "ns", long_name), KVT_EINVAL);
	CHECK_RC(kvt_ctx_delete(c, ""), KVT_EINVAL);
	CHECK_RC(kvt_ctx_load(c, long_name, KVT_TIER_HOST, 0, &info), KVT_EINVAL);
	CHECK_RC(kvt_ctx_load(c, "chat", 3, 0, &info), KVT_EINVAL);
	CHECK_RC(kvt_ctx_list(c, long_name, NULL, 10, &list, &n, &more), KVT_EINVAL);
	CHECK_RC(kvt_ctx_list(c, NULL, long_name, 10, &list, &n, &more), KVT_EINVAL);
	CHECK_RC(kvt_ctx_list(c, NULL, NULL, 0, &list, &n, &more), KVT_EINVAL);
	CHECK_RC(kvt_mem_get(NULL, "ns", "k", &it), KVT_EINVAL);
	CHECK_RC(kvt_mem_get(c, "ns", "k", NULL), KVT_EINVAL);
	long_name[KVT_NAME_LEN_MAX] = '\0'; /* exactly 255: fine, checked below */

	/* Records: sizes, dimension, non-finite floats. */
	kvt_mem_record r = { .ns = "ns", .key = "k", .value_len = 1 };
	CHECK_RC(kvt_mem_put(c, &r), KVT_EINVAL); /* value NULL */
	r.value = "v";
	r.metadata = "m";
	r.metadata_len = KVT_MEM_META_MAX + 1;
	CHECK_RC(kvt_mem_put(c, &r), KVT_EINVAL);
	r.metadata_len = 1;
	r.embedding = emb;
	r.dim = KVT_MEM_DIM_MAX + 1;
	CHECK_RC(kvt_mem_put(c, &r), KVT_EINVAL);
	r.dim = 4;
	emb[2] = NAN;
	CHECK_RC(kvt_mem_put(c, &r), KVT_EINVAL);
	emb[2] = INFINITY;
	CHECK_RC(kvt_mem_put(c, &r), KVT_EINVAL);
	CHECK_RC(kvt_mem_search(c, NULL, emb, 4, 5, &items), KVT_EINVAL);
	emb[2] = 0;
	r.embedding = NULL;
	CHECK_RC(kvt_mem_put(c, &r), KVT_EINVAL);
	CHECK_RC(kvt_mem_put(c, NULL), KVT_EINVAL);

	/* Limits and k: 1..1000; a key cursor needs its namespace. */
	CHECK_RC(kvt_mem_list(c, NULL, NULL, NULL, 0, &items), KVT_EINVAL);
	CHECK_RC(kvt_mem_list(c, NULL, NULL, NULL, 1001, &items), KVT_EINVAL);
	CHECK_RC(kvt_mem_list(c, NULL, NULL, "k", 10, &items), KVT_EINVAL);
	CHECK_RC(kvt_mem_search(c, NULL, emb, 4, 0, &items), KVT_EINVAL);
	CHECK_RC(kvt_mem_search(c, NULL, emb, 4, 1001, &items), KVT_EINVAL);
	CHECK_RC(kvt_mem_search(c, NULL, emb, 0, 5, &items), KVT_EINVAL);
	CHECK_RC(kvt_mem_search(c, NULL, emb, KVT_MEM_DIM_MAX + 1, 5, &items), KVT_EINVAL);
	CHECK_RC(kvt_mem_search(c, NULL, NULL, 4, 5, &items), KVT_EINVAL);

	/* Contexts: 1..max_batch keys, metadata size. */
	kvt_context x = { .name = "chat", .keys = g_keys, .nkeys = 0 };
	CHECK_RC(kvt_ctx_save(c, &x, &missing), KVT_EINVAL);
	x.nkeys = FAKE_MAX_BATCH + 1;
	CHECK_RC(kvt_ctx_save(c, &x, &missing), KVT_EINVAL);
	x.nkeys = 3;
	x.metadata_len = KVT_CTX_META_MAX + 1;
	x.metadata = emb;
	CHECK_RC(kvt_ctx_save(c, &x, &missing), KVT_EINVAL);
	x.metadata_len = 0;
	x.name = long_name;
	long_name[KVT_NAME_LEN_MAX] = 'n';
	CHECK_RC(kvt_ctx_save(c, &x, &missing), KVT_EINVAL);

	/* Requests over max_frame: KVT_EMSGSIZE, nothing sent (token ids are bounded
	 * before anything is copied). */
	x.name = "chat";
	x.tokens = g_tokens;
	x.token_count = FAKE_MAX_FRAME;
	CHECK_RC(kvt_ctx_save(c, &x, &missing), KVT_EMSGSIZE);
	x.token_count = UINT64_MAX;
	CHECK_RC(kvt_ctx_save(c, &x, &missing), KVT_EMSGSIZE);
	CHECK_EQ(missing, 7);
	uint8_t *big = calloc(1, FAKE_MAX_FRAME);
	CHECK(big != NULL);
	kvt_mem_record v = { .ns = "ns", .key = "k", .value = big };
	/* NS 10 + KEY 9 + VALUE 8 + n: n = max_frame - 32 - 27 is the largest that fits. */
	v.value_len = FAKE_MAX_FRAME - KVT_HDR_SIZE - 27 + 1;
	CHECK_RC(kvt_mem_put(c, &v), KVT_EMSGSIZE);
	CHECK(it == NULL && items == NULL && info == NULL && list == NULL);
	check_nothing_sent(c, before);

	v.value_len--;
	fake_reply(0, NULL);
	CHECK_RC(kvt_mem_put(c, &v), 0);
	CHECK_EQ(fake_requests(), before + 2);
	free(big);
	/* Exactly 255 bytes is a good name. */
	long_name[KVT_NAME_LEN_MAX] = '\0';
	CHECK_RC(kvt_ctx_delete(c, long_name), 0);
	fake_stop(c);
}

TEST_MAIN(mem_get_decodes_reply, mem_get_refuses_malformed_replies, mem_put_and_delete_encode,
	  mem_list_and_search, ctx_save_encodes_and_reports_missing, ctx_load_decodes_and_checks,
	  ctx_list_and_delete, arguments_checked_before_sending)
