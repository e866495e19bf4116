/*
 * test_t2_fault.c - the NVMe tier under failure: injected I/O errors at the
 * completion level (EIO once and always, ENOSPC, short transfers, EAGAIN, and the
 * N-th completion for every N), damaged segment files (bit flips, a zeroed page,
 * truncation), and a store filled beyond its capacity (cleaning, referenced blocks
 * surviving, -ENOSPC when everything is referenced). Nothing wrong is ever served,
 * nothing failed is indexed, and the store stays usable.
 */
#include <fcntl.h>
#include <lmdb.h>
#include <sys/stat.h>

#include "t2_internal.h"
#include "test_t2_util.h"

static int append_async(struct t2 *t, struct codec_ctx *ctx, const struct t1_key *k, uint64_t len,
			uint8_t **rec, struct t2t_done *dn)
{
	kvt_block_desc d = t2t_desc(len);
	size_t rl;

	*rec = t2t_record(ctx, CODEC_ZSTD, k, len, &rl);
	dn->done = false;
	t2_append(t, k, NULL, *rec, rl, len, &d, CODEC_ZSTD, t2t_done_cb, dn);
	return 0;
}

static void fault(struct io_engine *io, bool w, bool r, unsigned skip, bool always, int err,
		  bool short_io)
{
	struct io_fault f = { w, r, skip, always, err, short_io };

	io_fault_set(io, &f);
}

/* Every key the test appended reads back identical, or is a clean miss if its
 * append failed. */
static void check_all(struct io_engine *io, struct t2 *t, struct codec_ctx *ctx, uint32_t tenant,
		      const int *status, int n, uint64_t len)
{
	for (int i = 0; i < n; i++) {
		struct t1_key k = t2t_key(tenant, (uint64_t)i);
		int rc = t2t_verify(io, t, ctx, &k, len);

		if (status[i] == 0)
			CHECK_MSG(rc == 0, "key %d appended fine but reads %d", i, rc);
		else
			CHECK_MSG(rc == -ENOENT, "key %d failed (%d) but reads %d", i, status[i], rc);
	}
}

static void write_faults(const char *dir, enum io_backend b)
{
	struct io_engine *io = t2t_io(b);
	struct t2_config c = t2t_config(dir, io, 4);
	struct t2_open_report rep;
	struct codec_ctx *ctx;
	struct t2 *t = t2t_open(&c, &rep);
	struct t2_stats st;
	int status[64];
	int n = 0;
	const uint64_t len = 300000;

	CHECK_RC(codec_ctx_new(1, &ctx), 0);
#define APPEND_EXPECT(want)                                                                \
	do {                                                                               \
		struct t1_key k_ = t2t_key(11, (uint64_t)n);                              \
		status[n] = t2t_append(io, t, ctx, CODEC_ZSTD, &k_, NULL, len);           \
		CHECK_MSG(status[n] == (want), "append %d: %d, expected %d", n, status[n], \
			  (want));                                                         \
		n++;                                                                       \
	} while (0)

	APPEND_EXPECT(0);
	fault(io, true, false, 0, false, -EIO, false);
	APPEND_EXPECT(-EIO);
	APPEND_EXPECT(0);
	fault(io, true, false, 0, false, -ENOSPC, false);
	APPEND_EXPECT(-ENOSPC);
	APPEND_EXPECT(0);
	fault(io, true, false, 0, true, -EIO, false);
	for (int i = 0; i < 5; i++)
		APPEND_EXPECT(-EIO);
	io_fault_clear(io);
	APPEND_EXPECT(0);
	/* Short writes and -EAGAIN are finished by the engine: the record lands whole. */
	fault(io, true, false, 0, true, 0, true);
	APPEND_EXPECT(0);
	APPEND_EXPECT(0);
	io_fault_clear(io);
	fault(io, true, false, 0, false, -EAGAIN, false);
	APPEND_EXPECT(0);
	/* A transient error that never ends gives up after the engine's retries. */
	fault(io, true, false, 0, true, -EAGAIN, false);
	APPEND_EXPECT(-EIO);
	io_fault_clear(io);
	APPEND_EXPECT(0);

	/* One failure among many appends in flight: exactly that one fails. */
	{
		uint8_t *recs[10];
		struct t2t_done dn[10];
		int failed = 0;

		fault(io, true, false, 3, false, -EIO, false);
		for (int i = 0; i < 10; i++) {
			struct t1_key k = t2t_key(11, (uint64_t)(n + i));

			append_async(t, ctx, &k, len, &recs[i], &dn[i]);
		}
		t2t_drain(io, t);
		for (int i = 0; i < 10; i++) {
			CHECK(dn[i].done);
			CHECK(dn[i].status == 0 || dn[i].status == -EIO);
			failed += dn[i].status != 0;
			status[n + i] = dn[i].status;
			free(recs[i]);
		}
		CHECK_EQ(failed, 1);
		n += 10;
		io_fault_clear(io);
	}
	check_all(io, t, ctx, 11, status, n, len);
	t2_get_stats(t, &st);
	CHECK(st.io_errors >= 9);
	CHECK(st.enospc >= 1);
	CHECK_EQ(t2_inflight(t), 0);
	CHECK_EQ(io_inflight(io), 0);
	/* And all of it holds after a reopen. */
	t2_close(t);
	t = t2t_open(&c, &rep);
	check_all(io, t, ctx, 11, status, n, len);
	t2_close(t);
	codec_ctx_free(ctx);
	io_close(io);
#undef APPEND_EXPECT
}
T2T_BOTH(write_faults)

static void read_faults(const char *dir, enum io_backend b)
{
	struct io_engine *io = t2t_io(b);
	struct t2_config c = t2t_config(dir, io, 4);
	struct t2_open_report rep;
	struct codec_ctx *ctx;
	struct t2 *t = t2t_open(&c, &rep);
	struct t1_key k = t2t_key(12, 1);
	struct t2_stats st;

	CHECK_RC(codec_ctx_new(1, &ctx), 0);
	CHECK_RC(t2t_append(io, t, ctx, CODEC_BF16, &k, NULL, 5 * MIB / 2), 0);

	fault(io, false, true, 0, false, -EIO, false);
	CHECK_RC(t2t_verify(io, t, ctx, &k, 5 * MIB / 2), -EIO);
	CHECK_RC(t2t_verify(io, t, ctx, &k, 5 * MIB / 2), 0); /* it was the read, not the data */
	fault(io, false, true, 0, true, 0, true);
	CHECK_RC(t2t_verify(io, t, ctx, &k, 5 * MIB / 2), 0);
	io_fault_clear(io);
	fault(io, false, true, 0, false, -EAGAIN, false);
	CHECK_RC(t2t_verify(io, t, ctx, &k, 5 * MIB / 2), 0);
	fault(io, false, true, 0, true, -EIO, false);
	for (int i = 0; i < 3; i++)
		CHECK_RC(t2t_verify(io, t, ctx, &k, 5 * MIB / 2), -EIO);
	io_fault_clear(io);
	CHECK_RC(t2t_verify(io, t, ctx, &k, 5 * MIB / 2), 0);
	t2_get_stats(t, &st);
	CHECK(st.io_errors >= 4);
	CHECK_EQ(st.checksum_failures, 0);
	CHECK_EQ(t2_inflight(t), 0);
	t2_close(t);
	codec_ctx_free(ctx);
	io_close(io);
}
T2T_BOTH(read_faults)

/*
 * SQLite's loop: fail the N-th completion (read or write) for every N over a small
 * workload of appends and reads; after each, everything acknowledged reads back
 * and nothing failed is indexed.
 */
static void nth_completion(const char *dir, enum io_backend b)
{
	struct io_engine *io = t2t_io(b);
	struct t2_config c = t2t_config(dir, io, 4);
	struct t2_open_report rep;
	struct codec_ctx *ctx;
	struct t2 *t = t2t_open(&c, &rep);
	struct t1_key base = t2t_key(13, 1000);
	int status[16];

	CHECK_RC(codec_ctx_new(1, &ctx), 0);
	CHECK_RC(t2t_append(io, t, ctx, CODEC_ZSTD, &base, NULL, 200000), 0);
	for (unsigned nth = 0; nth < 12; nth++) {
		uint8_t *recs[4];
		struct t2t_done dn[4];
		struct t2t_done rd = { false, 0 };
		uint8_t *buf = t2t_alloc(t2_record_bound(200000));

		fault(io, true, true, nth, false, nth % 2 ? -EIO : -ENOSPC, false);
		for (int i = 0; i < 4; i++) {
			struct t1_key k = t2t_key(13, nth * 4 + (uint64_t)i);

			append_async(t, ctx, &k, 100000 + (uint64_t)i * 4096, &recs[i], &dn[i]);
		}
		t2_read(t, &base, buf, t2_record_bound(200000), t2t_done_cb, &rd);
		t2t_drain(io, t);
		io_fault_clear(io);
		CHECK(rd.done && (rd.status == 0 || rd.status == -EIO));
		for (int i = 0; i < 4; i++) {
			struct t1_key k = t2t_key(13, nth * 4 + (uint64_t)i);
			int rc;

			CHECK(dn[i].done);
			status[i] = dn[i].status;
			CHECK(status[i] == 0 || status[i] == -EIO || status[i] == -ENOSPC);
			rc = t2t_verify(io, t, ctx, &k, 100000 + (uint64_t)i * 4096);
			CHECK_MSG(status[i] == 0 ? rc == 0 : rc == -ENOENT,
				  "nth %u key %d: append %d, read %d", nth, i, status[i], rc);
			free(recs[i]);
		}
		CHECK_RC(t2t_verify(io, t, ctx, &base, 200000), 0);
		free(buf);
	}
	CHECK_EQ(t2_inflight(t), 0);
	t2_close(t);
	codec_ctx_free(ctx);
	io_close(io);
}
T2T_BOTH(nth_completion)

/* ---- fdatasync failure --------------------------------------------------------------- */

static atomic_int sync_fail;

static int failing_fdatasync(int fd)
{
	if (atomic_load(&sync_fail)) {
		errno = EIO;
		return -1;
	}
	return fdatasync(fd);
}

/* A segment whose fdatasync fails: what was written to it since the last good sync
 * is not indexed (its appends fail -EIO), nothing more is appended to it, and the
 * store goes on in another segment. */
static void sync_failure(const char *dir, enum io_backend b)
{
	struct io_engine *io = t2t_io(b);
	struct t2_config c = t2t_config(dir, io, 4);
	struct t2_open_report rep;
	struct codec_ctx *ctx;
	struct t2 *t;
	struct t2_stats s0, s1;
	struct t1_key k0 = t2t_key(16, 0), k1 = t2t_key(16, 1), k2 = t2t_key(16, 2);

	t2_fdatasync_fn = failing_fdatasync;
	t = t2t_open(&c, &rep);
	CHECK_RC(codec_ctx_new(1, &ctx), 0);
	CHECK_RC(t2t_append(io, t, ctx, CODEC_ZSTD, &k0, NULL, 400000), 0);
	t2_get_stats(t, &s0);
	atomic_store(&sync_fail, 1);
	CHECK_RC(t2t_append(io, t, ctx, CODEC_ZSTD, &k1, NULL, 400000), -EIO);
	atomic_store(&sync_fail, 0);
	CHECK_RC(t2_lookup(t, &k1, NULL), -ENOENT);
	CHECK_RC(t2t_append(io, t, ctx, CODEC_ZSTD, &k2, NULL, 400000), 0);
	t2_get_stats(t, &s1);
	CHECK(s1.io_errors > s0.io_errors);
	CHECK_EQ(s1.segments_total, s0.segments_total + 1); /* moved on to a new segment */
	CHECK_RC(t2t_verify(io, t, ctx, &k0, 400000), 0);
	CHECK_RC(t2t_verify(io, t, ctx, &k2, 400000), 0);
	t2_close(t);
	t = t2t_open(&c, &rep);
	CHECK_EQ(rep.blocks, 2);
	CHECK_RC(t2t_verify(io, t, ctx, &k0, 400000), 0);
	CHECK_RC(t2t_verify(io, t, ctx, &k1, 400000), -ENOENT);
	CHECK_RC(t2t_verify(io, t, ctx, &k2, 400000), 0);
	t2_close(t);
	codec_ctx_free(ctx);
	io_close(io);
}
T2T_BOTH(sync_failure)

/* ---- damaged segment files ----------------------------------------------------------- */

/* Where the index says key's record is (store closed). */
static void locate(const char *dir, const struct t1_key *k, struct t2_loc *loc)
{
	char path[512];
	MDB_env *env;
	MDB_txn *txn;
	MDB_dbi dbi;
	uint8_t kb[T2_KEY_BYTES];
	MDB_val key = { sizeof(kb), kb }, v;
	struct t2_entry e;

	snprintf(path, sizeof(path), "%s/index", dir);
	CHECK_RC(mdb_env_create(&env), 0);
	mdb_env_set_maxdbs(env, 8);
	CHECK_RC(mdb_env_open(env, path, MDB_RDONLY, 0600), 0);
	CHECK_RC(mdb_txn_begin(env, NULL, MDB_RDONLY, &txn), 0);
	CHECK_RC(mdb_dbi_open(txn, "blocks", 0, &dbi), 0);
	t2_key_encode(kb, k);
	CHECK_RC(mdb_get(txn, dbi, &key, &v), 0);
	CHECK_RC(t2_entry_decode(&e, v.mv_data, v.mv_size), 0);
	*loc = e.loc;
	mdb_txn_abort(txn);
	mdb_env_close(env);
}

static int open_seg(const char *dir, uint32_t seg)
{
	char path[512];
	int fd;

	snprintf(path, sizeof(path), "%s/segments/seg-%08u.kvs", dir, seg);
	fd = open(path, O_RDWR);
	CHECK_MSG(fd >= 0, "open %s: %s", path, strerror(errno));
	return fd;
}

static void poke(const char *dir, const struct t2_loc *loc, uint64_t off, uint8_t xor_mask)
{
	int fd = open_seg(dir, loc->seg);
	uint8_t b;

	CHECK(pread(fd, &b, 1, (off_t)(loc->off + off)) == 1);
	b ^= xor_mask;
	CHECK(pwrite(fd, &b, 1, (off_t)(loc->off + off)) == 1);
	CHECK(fsync(fd) == 0);
	close(fd);
}

static void corruption(const char *dir, enum io_backend b)
{
	struct io_engine *io = t2t_io(b);
	struct t2_config c = t2t_config(dir, io, 4);
	struct t2_open_report rep;
	struct codec_ctx *ctx;
	struct t2 *t = t2t_open(&c, &rep);
	const uint64_t len = 2 * MIB + 5000;
	struct t1_key k[7];
	struct t2_loc loc[7];
	struct t2_stats st;

	CHECK_RC(codec_ctx_new(1, &ctx), 0);
	for (int i = 0; i < 7; i++) {
		k[i] = t2t_key(14, (uint64_t)i);
		CHECK_RC(t2t_append(io, t, ctx, i % 2 ? CODEC_RAW : CODEC_ZSTD, &k[i], NULL, len), 0);
	}
	t2_close(t);
	for (int i = 0; i < 7; i++)
		locate(dir, &k[i], &loc[i]);
	/* All in the first segment, in order; the last one ends the written part. */
	for (int i = 1; i < 7; i++)
		CHECK(loc[i].seg == loc[0].seg && loc[i].off > loc[i - 1].off);

	poke(dir, &loc[0], T2_ALIGN + 1000, 0x01);    /* a bit in frame data */
	poke(dir, &loc[1], 20, 0x80);                 /* a bit in the header */
	{                                             /* a zeroed page among the frames */
		int fd = open_seg(dir, loc[2].seg);
		uint8_t zero[4096] = { 0 };

		CHECK(pwrite(fd, zero, sizeof(zero), (off_t)(loc[2].off + 3 * T2_ALIGN)) == 4096);
		CHECK(fsync(fd) == 0);
		close(fd);
	}
	{                                             /* the file cut inside the last record */
		int fd = open_seg(dir, loc[6].seg);

		CHECK(ftruncate(fd, (off_t)(loc[6].off + loc[6].rec_len / 2)) == 0);
		close(fd);
	}

	t = t2t_open(&c, &rep);
	CHECK_EQ(rep.blocks, 7);
	CHECK_RC(t2t_verify(io, t, ctx, &k[0], len), -EBADMSG);  /* frame checksum */
	CHECK_RC(t2t_verify(io, t, ctx, &k[1], len), -EBADMSG);  /* header checksum */
	CHECK_RC(t2t_verify(io, t, ctx, &k[2], len), -EBADMSG);  /* frame checksum */
	/* The cut segment is the one appends resume in: opening preallocated it
	 * again, so the lost half of the record reads as zeros and is refused. */
	CHECK_RC(t2t_verify(io, t, ctx, &k[6], len), -EBADMSG);
	/* Detected ones are gone: misses from now on, and counted. */
	for (int i = 0; i < 3; i++)
		CHECK_RC(t2_lookup(t, &k[i], NULL), -ENOENT);
	CHECK_RC(t2_lookup(t, &k[6], NULL), -ENOENT);
	t2_get_stats(t, &st);
	CHECK_EQ(st.checksum_failures, 4);
	for (int i = 3; i < 6; i++)
		CHECK_RC(t2t_verify(io, t, ctx, &k[i], len), 0);
	/* Cut while the store is open: the read runs past the end of the file. */
	{
		int fd = open_seg(dir, loc[5].seg);

		CHECK(ftruncate(fd, (off_t)(loc[5].off + loc[5].rec_len / 2)) == 0);
		CHECK_RC(t2t_verify(io, t, ctx, &k[5], len), -EIO);
		CHECK(ftruncate(fd, (off_t)SEG64) == 0);
		close(fd);
	}
	CHECK_RC(t2t_verify(io, t, ctx, &k[5], len), -EBADMSG);
	CHECK_RC(t2_lookup(t, &k[5], NULL), -ENOENT);
	t2_get_stats(t, &st);
	CHECK_EQ(st.checksum_failures, 5);
	CHECK(st.io_errors >= 1);
	t2_close(t);

	/* The drops were durable. */
	t = t2t_open(&c, &rep);
	CHECK_EQ(rep.blocks, 2);
	for (int i = 0; i < 7; i++)
		CHECK_RC(t2t_verify(io, t, ctx, &k[i], len), i == 3 || i == 4 ? 0 : -ENOENT);
	/* Still usable: new blocks go in and come back. */
	for (int i = 10; i < 14; i++) {
		struct t1_key kk = t2t_key(14, (uint64_t)i);

		CHECK_RC(t2t_append(io, t, ctx, CODEC_ZSTD, &kk, NULL, len), 0);
		CHECK_RC(t2t_verify(io, t, ctx, &kk, len), 0);
	}
	t2_close(t);
	codec_ctx_free(ctx);
	io_close(io);
}
T2T_BOTH(corruption)

/* ---- capacity ------------------------------------------------------------------------ */

static void capacity(const char *dir, enum io_backend b)
{
	struct io_engine *io = t2t_io(b);
	struct t2_config c = t2t_config(dir, io, 4);
	struct t2_open_report rep;
	struct codec_ctx *ctx;
	struct t2 *t = t2t_open(&c, &rep);
	struct t2_stats st;
	const uint64_t len = 8 * MIB;
	const int n = 48;
	int present = 0, refd = 0, i, enospc_at = -1;

	CHECK_RC(codec_ctx_new(1, &ctx), 0);
	/* Segments are dropped a few blocks per transaction, as huge ones would be. */
	t2_drop_chunk = 3;
	/* 384 MiB into 256: cleaning must make room; the two referenced blocks stay. */
	for (i = 0; i < n; i++) {
		struct t1_key k = t2t_key(15, (uint64_t)i);

		CHECK_RC(t2t_append(io, t, ctx, CODEC_RAW, &k, NULL, len), 0);
		if (i < 2)
			CHECK_RC(t2_ref(t, &k), 0);
	}
	t2_get_stats(t, &st);
	test_log("cleaned %llu segments, dropped %llu blocks, %llu blocks left",
		 (unsigned long long)st.cleaned_segments, (unsigned long long)st.dropped_blocks,
		 (unsigned long long)st.blocks);
	CHECK(st.cleaned_segments >= 2);
	CHECK(st.dropped_blocks >= 10);
	CHECK(st.segments_total <= 4);
	CHECK(st.stored_bytes <= st.capacity);
	for (i = 0; i < n; i++) {
		struct t1_key k = t2t_key(15, (uint64_t)i);
		int rc = t2t_verify(io, t, ctx, &k, len);

		CHECK_MSG(rc == 0 || rc == -ENOENT, "key %d: %d", i, rc);
		CHECK_MSG(i >= 2 || rc == 0, "referenced key %d was dropped", i);
		present += rc == 0;
	}
	CHECK_EQ(present, st.blocks);
	CHECK(present < n);
	/* The newest blocks are there (cleaning took the least live, older ones). */
	for (i = n - 5; i < n; i++) {
		struct t1_key k = t2t_key(15, (uint64_t)i);

		CHECK_RC(t2_lookup(t, &k, NULL), 0);
	}

	/* Reference everything: cleaning cannot take anything, appends run out. */
	for (i = 2; i < n; i++) {
		struct t1_key k = t2t_key(15, (uint64_t)i);

		if (t2_ref(t, &k) == 0)
			refd++;
	}
	for (i = n; i < n + 40 && enospc_at < 0; i++) {
		struct t1_key k = t2t_key(15, (uint64_t)i);
		int rc = t2t_append(io, t, ctx, CODEC_RAW, &k, NULL, len);

		CHECK_MSG(rc == 0 || rc == -ENOSPC, "append %d: %d", i, rc);
		if (rc == -ENOSPC)
			enospc_at = i;
		else
			CHECK_RC(t2_ref(t, &k), 0);
	}
	CHECK_MSG(enospc_at >= 0, "never ran out of space with everything referenced");
	test_log("%d more references; out of space at append %d", refd, enospc_at);
	t2_get_stats(t, &st);
	CHECK(st.enospc >= 1);
	for (i = 0; i < enospc_at; i++) {
		struct t1_key k = t2t_key(15, (uint64_t)i);
		int rc = t2t_verify(io, t, ctx, &k, len);

		CHECK(rc == 0 || rc == -ENOENT);
	}
	CHECK_RC(t2t_verify(io, t, ctx, &(struct t1_key){ 15, { { 0 } } }, len), -ENOENT);
	/* Let go of the references: space comes back. */
	for (i = 0; i < enospc_at; i++) {
		struct t1_key k = t2t_key(15, (uint64_t)i);

		(void)t2_unref(t, &k);
		(void)t2_unref(t, &k);
	}
	for (i = 1000; i < 1010; i++) {
		struct t1_key k = t2t_key(15, (uint64_t)i);

		CHECK_RC(t2t_append(io, t, ctx, CODEC_RAW, &k, NULL, len), 0);
	}
	CHECK_EQ(t2_inflight(t), 0);
	t2_close(t);

	/* Cleaning was durable: a reopened store agrees about what is there. */
	t = t2t_open(&c, &rep);
	present = 0;
	for (i = 0; i < 1010; i++) {
		struct t1_key k = t2t_key(15, (uint64_t)i);
		int rc = t2_lookup(t, &k, NULL);

		if (rc == 0) {
			CHECK_RC(t2t_verify(io, t, ctx, &k, len), 0);
			present++;
		}
	}
	CHECK_EQ(present, rep.blocks);
	t2_close(t);
	codec_ctx_free(ctx);
	io_close(io);
}
T2T_BOTH(capacity)

/* ---- relocation under read faults ---------------------------------------------------- */

/* Chains of 2-4 blocks of 4-8 MiB (keys tenant 16, chain * 8 + position) from chain
 * *next on, until total bytes are written; *next ends past the last one. */
static void write_chains(struct io_engine *io, struct t2 *t, struct codec_ctx *ctx, uint32_t *next,
			 uint64_t total, uint64_t *s)
{
	for (uint64_t written = 0; written < total; (*next)++) {
		uint32_t L = 2 + (uint32_t)(t2t_rand(s) % 3);

		for (uint32_t i = 0; i < L; i++) {
			struct t1_key k = t2t_key(16, (uint64_t)*next * 8 + i);
			struct t1_key p = t2t_key(16, (uint64_t)*next * 8 + (i ? i - 1 : 0));
			uint64_t len = 4 * MIB + t2t_rand(s) % (4 * MIB);

			if (i && t2_lookup(t, &p, NULL) != 0)
				break;
			CHECK_RC(t2t_append(io, t, ctx, CODEC_RAW, &k, i ? &p.key : NULL, len), 0);
			written += len;
		}
	}
}

/* Chain blocks present, looked up without running the loop (so no cleaning
 * runs meanwhile). */
static unsigned count_chains(struct t2 *t, uint32_t n)
{
	unsigned present = 0;

	for (uint64_t i = 0; i < (uint64_t)n * 8; i++) {
		struct t1_key k = t2t_key(16, i);

		present += t2_lookup(t, &k, NULL) == 0;
	}
	return present;
}

/* Every chain block present reads back identical (a full store may clean while
 * this runs: a block seen present is read before its segment can be reused). */
static void verify_chains(struct io_engine *io, struct t2 *t, struct codec_ctx *ctx, uint32_t n)
{
	for (uint64_t i = 0; i < (uint64_t)n * 8; i++) {
		struct t1_key k = t2t_key(16, i);

		if (t2_lookup(t, &k, NULL) == 0)
			CHECK_RC(t2t_verify(io, t, ctx, &k, UINT64_MAX), 0);
	}
}

/*
 * Cleaning relocates while reads come back short (the engine finishes them) and
 * then while every read fails: relocation gives up on each block cleanly (it is
 * dropped with its segment instead), appends go on, nothing wrong is served, and
 * nothing is left in flight or leaked.
 */
static void relocation_faults(const char *dir, enum io_backend b)
{
	struct io_engine *io = t2t_io(b);
	struct t2_config c = t2t_config(dir, io, 4);
	struct t2_open_report rep;
	struct codec_ctx *ctx;
	struct t2 *t = t2t_open(&c, &rep);
	struct t2_stats st0, st1, st2;
	uint64_t s = 0xfa17;
	uint32_t n = 0;

	CHECK_RC(codec_ctx_new(1, &ctx), 0);
	write_chains(io, t, ctx, &n, 256 * MIB, &s);
	t2t_drain(io, t);
	t2_get_stats(t, &st0);
	/* The store is full: each phase below cleans two or three segments. */
	fault(io, false, true, 0, true, 0, true);
	write_chains(io, t, ctx, &n, 160 * MIB, &s);
	t2t_drain(io, t);
	io_fault_clear(io);
	t2_get_stats(t, &st1);
	test_log("short reads: relocated %llu more blocks",
		 (unsigned long long)(st1.relocated_blocks - st0.relocated_blocks));
	CHECK(st1.relocated_blocks > st0.relocated_blocks);
	CHECK_EQ(st1.io_errors, st0.io_errors);
	CHECK_EQ(count_chains(t, n), st1.blocks);
	verify_chains(io, t, ctx, n);

	fault(io, false, true, 0, true, -EIO, false);
	write_chains(io, t, ctx, &n, 160 * MIB, &s);
	t2t_drain(io, t);
	io_fault_clear(io);
	t2_get_stats(t, &st2);
	test_log("failed reads: cleaned %llu segments, %llu read errors",
		 (unsigned long long)(st2.cleaned_segments - st1.cleaned_segments),
		 (unsigned long long)(st2.io_errors - st1.io_errors));
	CHECK(st2.cleaned_segments >= st1.cleaned_segments + 2);
	CHECK_EQ(st2.relocated_blocks, st1.relocated_blocks);
	CHECK(st2.io_errors > st1.io_errors);
	CHECK_EQ(st2.checksum_failures, 0);
	CHECK_EQ(t2_inflight(t), 0);
	t2_close(t);
	/* What the index says after all that is what a reopened store finds. */
	t = t2t_open(&c, &rep);
	CHECK_EQ(count_chains(t, n), rep.blocks);
	verify_chains(io, t, ctx, n);
	t2_close(t);
	codec_ctx_free(ctx);
	io_close(io);
}
T2T_BOTH(relocation_faults)

TEST_MAIN(write_faults_uring, write_faults_threads, read_faults_uring, read_faults_threads,
	  nth_completion_uring, nth_completion_threads, sync_failure_uring, sync_failure_threads,
	  corruption_uring, corruption_threads,
	  capacity_uring, capacity_threads, relocation_faults_uring, relocation_faults_threads)
