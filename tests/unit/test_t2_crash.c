/*
 * test_t2_crash.c - kill -9 at a random moment: a child process appends blocks with
 * known contents (new keys and replacements, several in flight, random sizes and
 * codecs) and reports each acknowledged key on a pipe; the parent SIGKILLs it at a
 * random point (sometimes while it is still opening the store), reopens the store
 * and checks that every acknowledged key reads back byte-identical and every other
 * key is a clean miss or identical: never garbage, never an error.
 *
 * KVT_KILL_LOOPS sets the number of kills per backend (default 20); for thousands,
 * raise the case time limit too: KVT_KILL_LOOPS=5000 KVT_TEST_TIMEOUT=14400.
 * KVT_KILL_SEED replays a run (the seed is logged).
 */
#include <signal.h>

#include "t2_internal.h"
#include "test_t2_util.h"

#define INFLIGHT 8
#define MARK_OPEN UINT64_MAX        /* the child has opened the store */
#define MARK_FAIL (UINT64_MAX - 1)  /* an append failed: the parent fails the case */
#define MAX_LEN (600 * 1024)

static uint64_t len_for(uint64_t *s)
{
	/* Mostly small blocks (many records, many commits), some large ones. */
	return t2t_rand(s) % 4 ? 1 + t2t_rand(s) % 65536 : 1 + t2t_rand(s) % MAX_LEN;
}

static void put_u64(int fd, uint64_t v)
{
	/* Eight bytes to a pipe: atomic, so a kill never leaves half a record. */
	while (write(fd, &v, sizeof(v)) < 0 && errno == EINTR)
		;
}

struct slot {
	bool busy;
	struct t2t_done dn;
	uint64_t idx;
	uint8_t *rec;
};

/* Append a block of random size and codec under key (tag, sl->idx) from slot sl;
 * returns the record's length. */
static size_t slot_append(struct t2 *t, struct codec_ctx *ctx, struct slot *sl, uint32_t tag,
			  uint64_t *s)
{
	struct t1_key k = t2t_key(tag, sl->idx);
	uint64_t len = len_for(s);
	kvt_block_desc d = t2t_desc(len);
	size_t rl;

	sl->rec = t2t_record(ctx, (enum codec_id)(t2t_rand(s) % CODEC_COUNT), &k, len, &rl);
	sl->busy = true;
	sl->dn.done = false;
	t2_append(t, &k, NULL, sl->rec, rl, len, &d, 0, t2t_done_cb, &sl->dn);
	return rl;
}

/* Report each finished append on fd (its index, or MARK_FAIL) and free its slot. */
static void slots_report(struct slot *slots, int fd)
{
	for (int i = 0; i < INFLIGHT; i++) {
		struct slot *sl = &slots[i];

		if (!sl->busy || !sl->dn.done)
			continue;
		put_u64(fd, sl->dn.status == 0 ? sl->idx : MARK_FAIL);
		free(sl->rec);
		sl->busy = false;
	}
}

/* The child: append until killed. Keys are base, base+1, ...; contents from the key. */
static void writer(const char *dir, enum io_backend b, uint64_t base, uint64_t seed, int fd)
{
	struct io_engine *io = t2t_io(b);
	struct t2_config c = t2t_config(dir, io, 6);
	struct t2_open_report rep;
	struct codec_ctx *ctx;
	struct slot slots[INFLIGHT];
	uint64_t next = base, s = seed;
	struct t2 *t;

	c.commit_interval_ms = (unsigned)(seed % 4);
	t = t2t_open(&c, &rep);
	put_u64(fd, MARK_OPEN);
	if (codec_ctx_new(1, &ctx) != 0)
		_exit(1);
	memset(slots, 0, sizeof(slots));
	for (;;) {
		for (int i = 0; i < INFLIGHT; i++) {
			struct slot *sl = &slots[i];

			if (sl->busy)
				continue;
			/* A new key, or now and then a replacement of an earlier one. */
			sl->idx = next > base && t2t_rand(&s) % 7 == 0 ? base + t2t_rand(&s) % (next - base)
								  : next++;
			slot_append(t, ctx, sl, 20, &s);
		}
		t2t_pump(io, t, 1);
		slots_report(slots, fd);
	}
}

static void sleep_ms(uint64_t ms)
{
	struct timespec ts = { (time_t)(ms / 1000), (long)(ms % 1000) * 1000000L };

	while (nanosleep(&ts, &ts) < 0 && errno == EINTR)
		;
}

/* Wait up to ms for the pipe to have data. */
static bool readable(int fd, int ms)
{
	struct pollfd p = { fd, POLLIN, 0 };

	return poll(&p, 1, ms) > 0;
}

static void kill_loop(const char *dir, enum io_backend b)
{
	const char *env = getenv("KVT_KILL_LOOPS"), *senv = getenv("KVT_KILL_SEED");
	unsigned loops = env && atoi(env) > 0 ? (unsigned)atoi(env) : 20;
	uint64_t seed = senv ? strtoull(senv, NULL, 0)
			     : (uint64_t)time(NULL) * 2654435761u + (uint64_t)getpid();
	uint64_t s = seed | 1, base = 0;
	uint64_t total_acked = 0, total_extra = 0, kills_in_open = 0;
	struct codec_ctx *ctx;

	test_log("seed %llu, %u kills (backend %s)", (unsigned long long)seed, loops,
		 b == IO_BACKEND_URING ? "io_uring" : "threads");
	CHECK_RC(codec_ctx_new(1, &ctx), 0);
	for (unsigned loop = 0; loop < loops; loop++) {
		int pfd[2];
		pid_t pid;
		bool *acked;
		size_t cap = 1 << 16, nacked = 0, present = 0;
		uint64_t v, range;
		struct io_engine *io;
		struct t2 *t;
		struct t2_config c;
		struct t2_open_report rep;
		bool opened = false;
		int st;

		v = 0;

		CHECK(pipe(pfd) == 0);
		pid = fork();
		CHECK(pid >= 0);
		if (pid == 0) {
			close(pfd[0]);
			writer(dir, b, base, t2t_rand(&s), pfd[1]);
			_exit(0);
		}
		close(pfd[1]);
		switch (t2t_rand(&s) % 8) {
		case 0:
			/* While the store is being opened or created. */
			sleep_ms(t2t_rand(&s) % 30);
			break;
		case 1:
		case 2:
		case 3:
			/* Once appends are acknowledged (however slow the machine). */
			CHECK_MSG(readable(pfd[0], 20000), "the writer never opened the store");
			CHECK(read(pfd[0], &v, sizeof(v)) == (ssize_t)sizeof(v) && v == MARK_OPEN);
			opened = true;
			CHECK_MSG(readable(pfd[0], 20000), "the writer never acknowledged an append");
			sleep_ms(t2t_rand(&s) % 100);
			break;
		default:
			CHECK_MSG(readable(pfd[0], 20000), "the writer never opened the store");
			sleep_ms(5 + t2t_rand(&s) % 150);
			break;
		}
		kill(pid, SIGKILL);
		while (waitpid(pid, &st, 0) < 0 && errno == EINTR)
			;
		CHECK_MSG(WIFSIGNALED(st) && WTERMSIG(st) == SIGKILL, "writer exited by itself (%d)", st);

		acked = calloc(cap, sizeof(*acked));
		while (read(pfd[0], &v, sizeof(v)) == (ssize_t)sizeof(v)) {
			if (v == MARK_OPEN) {
				opened = true;
				continue;
			}
			CHECK_MSG(v != MARK_FAIL, "an append failed in the writer");
			CHECK(v >= base && v - base < cap);
			if (!acked[v - base])
				nacked++;
			acked[v - base] = true;
		}
		close(pfd[0]);
		kills_in_open += !opened;

		/* At most INFLIGHT keys beyond the acknowledged ones were ever started. */
		range = nacked + 2 * INFLIGHT;
		io = t2t_io(b);
		c = t2t_config(dir, io, 6);
		t = t2t_open(&c, &rep);
		for (uint64_t i = 0; i < range; i++) {
			struct t1_key k = t2t_key(20, base + i);
			int rc = t2t_verify(io, t, ctx, &k, UINT64_MAX);

			if (acked[i])
				CHECK_MSG(rc == 0, "loop %u: acknowledged key %llu reads %d (%s)", loop,
					  (unsigned long long)(base + i), rc, test_errname(rc));
			else
				CHECK_MSG(rc == 0 || rc == -ENOENT,
					  "loop %u: unacknowledged key %llu reads %d (%s)", loop,
					  (unsigned long long)(base + i), rc, test_errname(rc));
			if (rc == 0) {
				present++;
				total_extra += !acked[i];
			}
		}
		/* Earlier loops' keys were deleted durably: the index holds exactly these. */
		CHECK_MSG(rep.blocks == present, "loop %u: open reports %llu blocks, %zu present", loop,
			  (unsigned long long)rep.blocks, present);
		for (uint64_t i = 0; i < range; i++) {
			struct t1_key k = t2t_key(20, base + i);

			if (t2_lookup(t, &k, NULL) == 0)
				CHECK_RC(t2_delete(t, &k), 0);
		}
		{
			struct t2t_done dn = { false, 0 };

			t2_flush(t, t2t_done_cb, &dn);
			t2t_wait(io, t, &dn);
			CHECK_RC(dn.status, 0);
		}
		t2_close(t);
		io_close(io);
		total_acked += nacked;
		base += range;
		free(acked);
	}
	test_log("%llu acknowledged keys checked, %llu more committed before the kill, %llu kills "
		 "during open",
		 (unsigned long long)total_acked, (unsigned long long)total_extra,
		 (unsigned long long)kills_in_open);
	CHECK(total_acked > 0);
	codec_ctx_free(ctx);
}
T2T_BOTH(kill_loop)

/* ---- writes that land after their writer was reaped ---------------------------------- */

/*
 * The kernel finishes the io_uring writes of a process killed with SIGKILL after
 * the process has been reaped (on a loaded machine, tens or hundreds of ms
 * later): they land in space the killed writer had reserved and never indexed,
 * which is exactly where the next opener appends first. Each such write keeps
 * the writer's open file description alive, as a process would. This case makes
 * it happen on purpose: the writer forks a "ghost" that keeps the writer's
 * segment file descriptions (and nothing else). After the writer is killed and
 * reaped, the ghost overwrites LATE_LEN bytes of unindexed space in each segment
 * it holds (from the committed write_off, or from 0 where nothing is indexed),
 * but not before the next opener has appended there and been acknowledged, or
 * LATE_MS have passed. t2_open must wait until the ghost is gone (it locks each segment
 * file), so every block the next opener acknowledged reads back, as does every
 * block the killed writer acknowledged. Without the locks the ghost overwrites
 * acknowledged blocks every time.
 *
 * KVT_LATE_LOOPS sets the number of kills (default 3).
 */

#define LATE_MS 300                 /* the ghost waits at most this long for the opener */
#define LATE_LEN (8 * MIB)          /* bytes of unindexed space it overwrites per segment */
#define LATE_WRITER_BYTES (16 * MIB) /* the writer stays within its first segment */
#define LATE_PARENT_KEYS 8
#define LATE_MAX_SEGS 64

struct late_region {
	uint32_t seg;
	uint64_t off, len;
};

/* The ghost: keep the segment descriptions, wait for the regions to hit (ended by
 * one of length 0; its off, if not 0, says to wait for a byte before starting the
 * clock), hit them once the opener says it has appended (or after LATE_MS), then
 * exit. */
static void late_ghost(int ctl, int done, uint8_t *junk)
{
	int segfd[LATE_MAX_SEGS];
	struct late_region rg[LATE_MAX_SEGS], end = { 0, 0, 0 };
	size_t nrg = 0;
	char path[64], link[4096];
	struct pollfd p = { ctl, POLLIN, 0 };
	uint8_t go;

	for (int i = 0; i < LATE_MAX_SEGS; i++)
		segfd[i] = -1;
	/* Keep only the segment files and the two pipes (not t2.lock, the index,
	 * the ring, nor the test's log pipe). */
	for (int fd = 3; fd < 1024; fd++) {
		ssize_t n;
		unsigned id;
		const char *s;

		if (fd == ctl || fd == done)
			continue;
		snprintf(path, sizeof(path), "/proc/self/fd/%d", fd);
		n = readlink(path, link, sizeof(link) - 1);
		if (n < 0)
			continue;
		link[n] = '\0';
		s = strstr(link, "/segments/seg-");
		if (s && sscanf(s, "/segments/seg-%8u.kvs", &id) == 1 && id < LATE_MAX_SEGS &&
		    segfd[id] < 0) {
			segfd[id] = fd;
			continue;
		}
		close(fd);
	}
	/* The regions, then the word to go (or the time limit). */
	while (read(ctl, &end, sizeof(end)) == sizeof(end) && end.len)
		if (nrg < LATE_MAX_SEGS)
			rg[nrg++] = end;
	if (end.off && poll(&p, 1, 20000) > 0)
		(void)!read(ctl, &go, 1);
	if (poll(&p, 1, LATE_MS) > 0)
		(void)!read(ctl, &go, 1);
	for (size_t i = 0; i < nrg; i++) {
		if (rg[i].seg >= LATE_MAX_SEGS || segfd[rg[i].seg] < 0)
			continue;
		for (uint64_t o = 0; o < rg[i].len; o += MIB)
			(void)!pwrite(segfd[rg[i].seg], junk, MIB, (off_t)(rg[i].off + o));
		(void)fdatasync(segfd[rg[i].seg]);
	}
	(void)!write(done, "x", 1);
	_exit(0);
}

static void late_writer(const char *dir, enum io_backend b, uint64_t seed, int fd, int ctl[2],
			int done[2])
{
	struct io_engine *io = t2t_io(b);
	struct t2_config c = t2t_config(dir, io, 6);
	struct t2_open_report rep;
	struct codec_ctx *ctx;
	struct slot slots[INFLIGHT];
	uint64_t next = 0, s = seed | 1, written = 0;
	uint8_t *junk;
	struct t2 *t;
	pid_t ghost;

	c.commit_interval_ms = (unsigned)(seed % 4);
	t = t2t_open(&c, &rep);
	junk = t2t_alloc(MIB);
	memset(junk, 0xa5, MIB);
	ghost = fork();
	if (ghost < 0)
		_exit(1);
	if (ghost == 0) {
		close(ctl[1]);
		close(done[0]);
		late_ghost(ctl[0], done[1], junk);
	}
	close(ctl[0]);
	close(ctl[1]);
	close(done[1]);
	put_u64(fd, MARK_OPEN);
	if (codec_ctx_new(1, &ctx) != 0)
		_exit(1);
	memset(slots, 0, sizeof(slots));
	for (;;) {
		for (int i = 0; i < INFLIGHT && written < LATE_WRITER_BYTES; i++) {
			struct slot *sl = &slots[i];

			if (sl->busy)
				continue;
			sl->idx = next++;
			written += slot_append(t, ctx, sl, 22, &s);
		}
		t2t_pump(io, t, 1);
		slots_report(slots, fd);
	}
}

/* Unindexed space of every segment file, as committed: where the killed writer's
 * unacknowledged appends were going, what a late write may hit. */
static size_t late_regions(const char *dir, struct late_region *rg)
{
	struct t2_index ix;
	struct t2_segrow rows[LATE_MAX_SEGS];
	uint64_t seg_size = SEG64;
	uint32_t max_id = 0;
	bool created = false;
	char err[512] = "";
	size_t n = 0;

	memset(rows, 0, sizeof(rows));
	CHECK_MSG(t2_index_open(&ix, dir, 0, &seg_size, &created, err, sizeof(err)) == 0, "%s", err);
	CHECK_RC(t2_index_load_segments(&ix, rows, LATE_MAX_SEGS, &max_id), 0);
	t2_index_close(&ix);
	for (uint32_t i = 0; i < LATE_MAX_SEGS; i++) {
		char path[512];
		uint64_t off = rows[i].nblocks ? t2_align_up(rows[i].write_off) : 0;

		CHECK(t2_segment_path(path, sizeof(path), dir, i) == 0);
		if (access(path, F_OK) != 0 || off >= seg_size)
			continue;
		rg[n].seg = i;
		rg[n].off = off;
		rg[n].len = seg_size - off < LATE_LEN ? seg_size - off : LATE_LEN;
		n++;
	}
	return n;
}

static void late_writes(const char *topdir, enum io_backend b)
{
	const char *env = getenv("KVT_LATE_LOOPS"), *senv = getenv("KVT_KILL_SEED");
	unsigned loops = env && atoi(env) > 0 ? (unsigned)atoi(env) : 3;
	uint64_t seed = senv ? strtoull(senv, NULL, 0)
			     : (uint64_t)time(NULL) * 2654435761u + (uint64_t)getpid();
	uint64_t s = seed | 1, total_acked = 0, waited_ms = 0;
	struct codec_ctx *ctx;

	test_log("seed %llu, %u kills (backend %s)", (unsigned long long)seed, loops,
		 b == IO_BACKEND_URING ? "io_uring" : "threads");
	CHECK_RC(codec_ctx_new(1, &ctx), 0);
	for (unsigned loop = 0; loop < loops; loop++) {
		int pfd[2], ctl[2], done[2], st;
		struct late_region rg[LATE_MAX_SEGS];
		struct late_region end = { 0, 0, 0 };
		size_t nrg, nacked = 0;
		bool acked[1 << 12];
		char dir[512], err[512];
		struct io_engine *io;
		struct t2_config c;
		struct t2_open_report rep;
		struct t2 *t = NULL;
		uint64_t v, t0, hi = 0;
		pid_t pid;
		int rc;

		/* A fresh store each time: the ghost holds the first segment. */
		snprintf(dir, sizeof(dir), "%s/%u", topdir, loop);
		CHECK(pipe(pfd) == 0 && pipe(ctl) == 0 && pipe(done) == 0);
		pid = fork();
		CHECK(pid >= 0);
		if (pid == 0) {
			close(pfd[0]);
			late_writer(dir, b, t2t_rand(&s), pfd[1], ctl, done);
			_exit(0);
		}
		close(pfd[1]);
		close(ctl[0]);
		close(done[1]);
		CHECK_MSG(readable(pfd[0], 20000), "the writer never opened the store");
		CHECK(read(pfd[0], &v, sizeof(v)) == (ssize_t)sizeof(v) && v == MARK_OPEN);
		CHECK_MSG(readable(pfd[0], 20000), "the writer never acknowledged an append");
		sleep_ms(t2t_rand(&s) % 60);
		kill(pid, SIGKILL);
		while (waitpid(pid, &st, 0) < 0 && errno == EINTR)
			;
		CHECK_MSG(WIFSIGNALED(st) && WTERMSIG(st) == SIGKILL, "writer exited by itself (%d)", st);
		memset(acked, 0, sizeof(acked));
		while (read(pfd[0], &v, sizeof(v)) == (ssize_t)sizeof(v)) {
			CHECK_MSG(v != MARK_FAIL, "an append failed in the writer");
			CHECK(v < sizeof(acked));
			nacked += !acked[v];
			acked[v] = true;
			hi = v + 1 > hi ? v + 1 : hi;
		}
		close(pfd[0]);

		/* The writer is gone; its "late writes" are not. */
		nrg = late_regions(dir, rg);
		CHECK(nrg > 0);
		for (size_t i = 0; i < nrg; i++)
			CHECK(write(ctl[1], &rg[i], sizeof(rg[i])) == (ssize_t)sizeof(rg[i]));
		end.off = loop == 0; /* hold on until the refused open below */
		CHECK(write(ctl[1], &end, sizeof(end)) == (ssize_t)sizeof(end));

		io = t2t_io(b);
		c = t2t_config(dir, io, 6);
		if (loop == 0) {
			/* While they may still land, the store does not open... */
			t2_segment_lock_wait_ms = 20;
			rc = t2_open(&c, &t, &rep, err, sizeof(err));
			t2_segment_lock_wait_ms = 60000;
			CHECK_MSG(rc == -EBUSY && strstr(err, "still locked"),
				  "open with writes in flight: %d (%s) %s", rc, test_errname(rc), err);
			CHECK(write(ctl[1], "s", 1) == 1);
		}
		/* ... it waits until they have landed. */
		t0 = t2_mono_ms();
		t = t2t_open(&c, &rep);
		waited_ms += t2_mono_ms() - t0;
		CHECK(rep.blocks >= nacked);
		/* Append where the killed writer's writes were going, and only then
		 * let them land (if they still can). */
		for (uint64_t i = 0; i < LATE_PARENT_KEYS; i++) {
			struct t1_key k = t2t_key(23, i);

			CHECK_RC(t2t_append(io, t, ctx, (enum codec_id)(i % CODEC_COUNT), &k, NULL,
					    1 + t2t_rand(&s) % (512 * 1024)), 0);
		}
		(void)!write(ctl[1], "g", 1);
		CHECK_MSG(readable(done[0], 20000), "the ghost never finished");
		close(ctl[1]);
		close(done[0]);
		for (uint64_t i = 0; i < LATE_PARENT_KEYS; i++) {
			struct t1_key k = t2t_key(23, i);

			rc = t2t_verify(io, t, ctx, &k, UINT64_MAX);
			CHECK_MSG(rc == 0, "loop %u: key %llu, acknowledged after the reopen, reads %d "
				  "(%s)", loop, (unsigned long long)i, rc, test_errname(rc));
		}
		for (uint64_t i = 0; i < hi + INFLIGHT; i++) {
			struct t1_key k = t2t_key(22, i);

			rc = t2t_verify(io, t, ctx, &k, UINT64_MAX);
			if (i < hi && acked[i])
				CHECK_MSG(rc == 0, "loop %u: acknowledged key %llu reads %d (%s)", loop,
					  (unsigned long long)i, rc, test_errname(rc));
			else
				CHECK_MSG(rc == 0 || rc == -ENOENT,
					  "loop %u: unacknowledged key %llu reads %d (%s)", loop,
					  (unsigned long long)i, rc, test_errname(rc));
		}
		t2_close(t);
		io_close(io);
		total_acked += nacked;
	}
	test_log("%llu acknowledged keys checked; opens waited %llu ms in all for late writes",
		 (unsigned long long)total_acked, (unsigned long long)waited_ms);
	codec_ctx_free(ctx);
}
T2T_BOTH(late_writes)

/* ---- kill -9 while cleaning relocates chain heads ------------------------------------ */

/*
 * A child keeps a small store (4 segments) full of chains, so that cleaning, and
 * with it relocation, runs all the time. On the pipe it reports each key as it
 * starts its append, when the append is acknowledged, when cleaning relocates it,
 * and just before a drop that may remove it (t2_clean_notify). The parent kills it
 * (half the time right after a relocation), reopens the store and checks: every
 * acknowledged key that no drop was announced for is there and reads back
 * byte-identical, wherever cleaning left it; any other key is identical or a clean
 * miss; the index holds exactly the keys found. Keys accumulate over the kills, so
 * earlier kills' keys are relocated and dropped by later children too.
 */

#define RK_TENANT 21u
#define RK_MAX (1u << 20)          /* keys over all kills: chain * 8 + position */
#define RK_CHAINS 4                /* chains written at once */
#define TAG_SHIFT 56
enum rk_tag { RK_OPEN = 1, RK_START, RK_ACK, RK_MOVED, RK_DROP, RK_FAIL };

static uint64_t rk_msg(enum rk_tag tag, uint64_t idx)
{
	return (uint64_t)tag << TAG_SHIFT | idx;
}

static uint64_t rk_idx(const struct t1_key *k)
{
	uint64_t v = 0;

	for (int i = 0; i < 8; i++)
		v |= (uint64_t)k->key.b[i] << (8 * i);
	return v;
}

static int rk_fd = -1;

static void rk_notify(const struct t1_key *key, bool dropped, void *arg)
{
	(void)arg;
	if (key->tenant == RK_TENANT)
		put_u64(rk_fd, rk_msg(dropped ? RK_DROP : RK_MOVED, rk_idx(key)));
}

struct rk_chain {
	uint64_t id;          /* keys id*8 .. id*8+len-1 */
	uint32_t pos, len;
	bool busy;
	struct t2t_done dn;
	uint8_t *rec;
};

static void rk_writer(const char *dir, enum io_backend b, uint64_t first_chain, uint64_t seed, int fd)
{
	struct io_engine *io = t2t_io(b);
	struct t2_config c = t2t_config(dir, io, 4);
	struct t2_open_report rep;
	struct codec_ctx *ctx;
	struct rk_chain ch[RK_CHAINS];
	uint64_t next = first_chain, s = seed | 1;
	struct t2 *t;

	rk_fd = fd;
	t2_clean_notify = rk_notify;
	c.commit_interval_ms = (unsigned)(seed % 3);
	t = t2t_open(&c, &rep);
	put_u64(fd, rk_msg(RK_OPEN, 0));
	if (codec_ctx_new(1, &ctx) != 0)
		_exit(1);
	memset(ch, 0, sizeof(ch));
	for (;;) {
		for (int i = 0; i < RK_CHAINS; i++) {
			struct rk_chain *h = &ch[i];
			struct t1_key k, p;
			kvt_block_desc d;
			uint64_t len;
			size_t rl;

			if (h->busy)
				continue;
			p = t2t_key(RK_TENANT, h->id * 8 + (h->pos ? h->pos - 1 : 0));
			/* A new chain when this one is done or lost its last block. */
			if (h->pos == h->len || (h->pos && t2_lookup(t, &p, NULL) != 0)) {
				h->id = next++;
				h->pos = 0;
				h->len = 2 + (uint32_t)(t2t_rand(&s) % 5);
				if ((h->id + 1) * 8 > RK_MAX)
					_exit(2);
			}
			k = t2t_key(RK_TENANT, h->id * 8 + h->pos);
			len = 1 + t2t_rand(&s) % (3 * MIB);
			d = t2t_desc(len);
			/* Mostly raw: the store must fill quickly, even under ASan. */
			h->rec = t2t_record(ctx, t2t_rand(&s) % 4 ? CODEC_RAW
						: (enum codec_id)(t2t_rand(&s) % CODEC_COUNT),
					    &k, len, &rl);
			h->busy = true;
			h->dn.done = false;
			put_u64(fd, rk_msg(RK_START, h->id * 8 + h->pos));
			t2_append(t, &k, h->pos ? &p.key : NULL, h->rec, rl, len, &d, 0, t2t_done_cb,
				  &h->dn);
		}
		t2t_pump(io, t, 1);
		for (int i = 0; i < RK_CHAINS; i++) {
			struct rk_chain *h = &ch[i];

			if (!h->busy || !h->dn.done)
				continue;
			put_u64(fd, h->dn.status == 0 ? rk_msg(RK_ACK, h->id * 8 + h->pos)
						      : rk_msg(RK_FAIL, h->id * 8 + h->pos));
			free(h->rec);
			h->busy = false;
			h->pos++;
		}
	}
}

struct rk_state {
	uint8_t started[RK_MAX], acked[RK_MAX], dropped[RK_MAX], moved[RK_MAX];
	uint64_t max_chain;      /* chains used so far */
	uint64_t moves, drops, kills_in_cleaning;
};

/* The parent's own store cleans too (it opens a full store): what it relocates
 * or drops is recorded the same way. */
static struct rk_state *rk_parent;

static void rk_parent_notify(const struct t1_key *key, bool dropped, void *arg)
{
	uint64_t idx = rk_idx(key);

	(void)arg;
	if (key->tenant != RK_TENANT || idx >= RK_MAX)
		return;
	if (dropped)
		rk_parent->dropped[idx] = 1;
	else
		rk_parent->moved[idx] = 1;
}

/* Take one message; returns its tag. *fresh (if not NULL) is set when it is one
 * of the kind waited for. */
static enum rk_tag rk_take(struct rk_state *st, uint64_t v, enum rk_tag want, bool *fresh)
{
	enum rk_tag tag = (enum rk_tag)(v >> TAG_SHIFT);
	uint64_t idx = v & (((uint64_t)1 << TAG_SHIFT) - 1);

	CHECK_MSG(tag >= RK_OPEN && tag <= RK_FAIL, "bad message %llx", (unsigned long long)v);
	CHECK_MSG(tag != RK_FAIL, "an append failed in the writer");
	if (tag == RK_OPEN)
		return tag;
	CHECK(idx < RK_MAX);
	switch (tag) {
	case RK_START:
		st->started[idx] = 1;
		if (idx / 8 + 1 > st->max_chain)
			st->max_chain = idx / 8 + 1;
		break;
	case RK_ACK:
		st->acked[idx] = 1;
		break;
	case RK_MOVED:
		st->moved[idx] = 1;
		st->moves++;
		break;
	case RK_DROP:
		st->dropped[idx] = 1;
		st->drops++;
		break;
	default:
		break;
	}
	if (fresh && tag == want)
		*fresh = true;
	return tag;
}

/* Read what the pipe holds for up to ms (the writer must never block on it), or
 * until a message of the kind wanted (if fresh is not NULL). */
static void rk_drain(struct rk_state *st, int fd, int ms, enum rk_tag want, bool *fresh)
{
	uint64_t until = t2_mono_ms() + (uint64_t)ms;

	for (;;) {
		uint64_t v, now = t2_mono_ms();

		if (!readable(fd, now >= until ? 0 : (int)(until - now)))
			return;
		if (read(fd, &v, sizeof(v)) != (ssize_t)sizeof(v))
			return;
		rk_take(st, v, want, fresh);
		if (fresh && *fresh)
			return;
	}
}

static void kill_relocation(const char *dir, enum io_backend b)
{
	const char *env = getenv("KVT_KILL_LOOPS"), *senv = getenv("KVT_KILL_SEED");
	unsigned loops = env && atoi(env) > 0 ? (unsigned)atoi(env) : 8;
	uint64_t seed = senv ? strtoull(senv, NULL, 0)
			     : (uint64_t)time(NULL) * 2654435761u + (uint64_t)getpid();
	uint64_t s = seed | 1, checked = 0, reads = 0;
	struct rk_state *st = calloc(1, sizeof(*st));
	struct codec_ctx *ctx;

	CHECK(st);
	test_log("seed %llu, %u kills (backend %s)", (unsigned long long)seed, loops,
		 b == IO_BACKEND_URING ? "io_uring" : "threads");
	CHECK_RC(codec_ctx_new(1, &ctx), 0);
	for (unsigned loop = 0; loop < loops; loop++) {
		int pfd[2], wst;
		pid_t pid;
		uint64_t v, present = 0;
		bool fresh = false, opened = false;
		struct io_engine *io;
		struct t2 *t;
		struct t2_config c;
		struct t2_open_report rep;

		CHECK(pipe(pfd) == 0);
		pid = fork();
		CHECK(pid >= 0);
		if (pid == 0) {
			close(pfd[0]);
			rk_writer(dir, b, st->max_chain, t2t_rand(&s), pfd[1]);
			_exit(0);
		}
		close(pfd[1]);
		while (!opened) {
			CHECK_MSG(readable(pfd[0], 20000), "the writer never opened the store");
			CHECK(read(pfd[0], &v, sizeof(v)) == (ssize_t)sizeof(v));
			opened = rk_take(st, v, RK_OPEN, NULL) == RK_OPEN;
		}
		if (st->moves == 0) {
			/* Until the store is full and cleaning relocates (however slow
			 * the machine): wait for the first relocation. */
			for (int w = 0; w < 600 && !fresh; w++)
				rk_drain(st, pfd[0], 100, RK_MOVED, &fresh);
			CHECK_MSG(fresh, "cleaning never relocated a block");
		}
		switch (loop == 0 ? 0 : t2t_rand(&s) % 3) {
		case 0:
		case 1: {
			/* In a relocation (0-3 ms after a block was moved) or in a drop
			 * (0-3 ms after one was announced). */
			enum rk_tag want = loop % 3 ? RK_MOVED : RK_DROP;

			fresh = false;
			for (int w = 0; w < 300 && !fresh; w++)
				rk_drain(st, pfd[0], 100, want, &fresh);
			CHECK_MSG(fresh, "loop %u: cleaning stopped", loop);
			sleep_ms(t2t_rand(&s) % 4);
			st->kills_in_cleaning++;
			break;
		}
		default:
			rk_drain(st, pfd[0], (int)(t2t_rand(&s) % 300), RK_OPEN, NULL);
			break;
		}
		kill(pid, SIGKILL);
		while (waitpid(pid, &wst, 0) < 0 && errno == EINTR)
			;
		CHECK_MSG(WIFSIGNALED(wst) && WTERMSIG(wst) == SIGKILL, "writer exited by itself (%d)", wst);
		while (read(pfd[0], &v, sizeof(v)) == (ssize_t)sizeof(v))
			rk_take(st, v, RK_OPEN, NULL);
		close(pfd[0]);

		io = t2t_io(b);
		c = t2t_config(dir, io, 4);
		rk_parent = st;
		t2_clean_notify = rk_parent_notify;
		t = t2t_open(&c, &rep);
		/* What the store holds as opened (nothing runs before the first pump). */
		for (uint64_t i = 0; i < st->max_chain * 8; i++) {
			struct t1_key k = t2t_key(RK_TENANT, i);
			bool here;

			if (!st->started[i])
				continue;
			here = t2_lookup(t, &k, NULL) == 0;
			present += here;
			if (st->acked[i] && !st->dropped[i])
				CHECK_MSG(here, "loop %u: acknowledged key %llu (%s) is gone, and no "
					  "drop was announced for it", loop, (unsigned long long)i,
					  st->moved[i] ? "relocated" : "never relocated");
		}
		CHECK_MSG(rep.blocks == present, "loop %u: open reports %llu blocks, %llu present",
			  loop, (unsigned long long)rep.blocks, (unsigned long long)present);
		/* Bytes: everything relocated or acknowledged since the last check, and a
		 * sixteenth of the rest. Reading runs the loop, so this store may clean too:
		 * a key may go, but only with its drop announced. */
		for (uint64_t i = 0; i < st->max_chain * 8; i++) {
			struct t1_key k = t2t_key(RK_TENANT, i);
			int rc;

			if (!st->started[i] || t2_lookup(t, &k, NULL) != 0 ||
			    !(st->moved[i] == 1 || st->acked[i] == 1 || t2t_rand(&s) % 16 == 0))
				continue;
			rc = t2t_verify(io, t, ctx, &k, UINT64_MAX);
			CHECK_MSG(rc == 0 || (rc == -ENOENT && st->dropped[i]),
				  "loop %u: key %llu reads %d (%s)", loop, (unsigned long long)i, rc,
				  test_errname(rc));
			reads += rc == 0;
			if (st->moved[i] == 1)
				st->moved[i] = 2;
			if (st->acked[i] == 1)
				st->acked[i] = 2;
		}
		checked += present;
		t2_close(t);
		t2_clean_notify = NULL;
		io_close(io);
	}
	test_log("%llu relocations and %llu drops announced by the writers, %llu kills in "
		 "cleaning; %llu keys found present over the kills, %llu read back",
		 (unsigned long long)st->moves, (unsigned long long)st->drops,
		 (unsigned long long)st->kills_in_cleaning, (unsigned long long)checked,
		 (unsigned long long)reads);
	CHECK(st->moves > 0 && st->drops > 0);
	codec_ctx_free(ctx);
	free(st);
}
T2T_BOTH(kill_relocation)

TEST_MAIN(kill_loop_uring, kill_loop_threads, late_writes_uring, late_writes_threads,
	  kill_relocation_uring, kill_relocation_threads)
