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
			struct t1_key k;
			kvt_block_desc d;
			uint64_t len;
			size_t rl;

			if (sl->busy)
				continue;
			/* A new key, or now and then a replacement of an earlier one. */
			sl->idx = next > base && t2t_rand(&s) % 7 == 0 ? base + t2t_rand(&s) % (next - base)
								  : next++;
			k = t2t_key(20, sl->idx);
			len = len_for(&s);
			d = t2t_desc(len);
			sl->rec = t2t_record(ctx, (enum codec_id)(t2t_rand(&s) % CODEC_COUNT), &k, len, &rl);
			sl->busy = true;
			sl->dn.done = false;
			t2_append(t, &k, NULL, sl->rec, rl, len, &d, 0, t2t_done_cb, &sl->dn);
		}
		t2t_pump(io, t, 1);
		for (int i = 0; i < INFLIGHT; i++) {
			struct slot *sl = &slots[i];

			if (!sl->busy || !sl->dn.done)
				continue;
			put_u64(fd, sl->dn.status == 0 ? sl->idx : MARK_FAIL);
			free(sl->rec);
			sl->busy = false;
		}
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

TEST_MAIN(kill_loop_uring, kill_loop_threads)
