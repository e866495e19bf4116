/*
 * test_t2_chain.c - what NVMe-tier cleaning keeps of prefix chains. A small store
 * (4 segments of 64 MiB) takes chains of 4-8 MiB blocks written in order, well
 * beyond its capacity, so that cleaning runs many times. Afterwards every chain
 * must still be a prefix of itself (no block indexed without its parent), chains
 * must have lost tails rather than heads, and blocks that cleaning relocated must
 * read back byte-identical, before and after a reopen. A control run with
 * chain-aware cleaning switched off shows the prefix check failing, and a single
 * chain larger than the store shows cleaning still making room at a bounded cost.
 */
#include "t2_internal.h"
#include "test_t2_util.h"

#define CH_TENANT 31u
#define MAX_CHAINS 512u
#define MAX_LEN 4u

static struct t1_key ckey(uint32_t c, uint32_t i)
{
	return t2t_key(CH_TENANT, (uint64_t)c * 8 + i);
}

struct chains {
	uint32_t n;                      /* chains started */
	uint8_t len[MAX_CHAINS];         /* blocks written (and kept by the writer) */
	uint64_t blen[MAX_CHAINS][MAX_LEN];
	unsigned raced;                  /* a parent went while its child was written */
	/* Looked at after every chain written: */
	bool was_shortened[MAX_CHAINS];  /* seen with its head but not its tail */
	unsigned most_broken;            /* most chains broken at one time */
	unsigned censuses;
};

/* Keys that cleaning relocated (from the test hook), to read back. */
struct moved {
	struct t1_key k[4096];
	size_t n;
};

static void on_clean(const struct t1_key *key, bool dropped, void *arg)
{
	struct moved *m = arg;

	if (!dropped && m->n < sizeof(m->k) / sizeof(m->k[0]))
		m->k[m->n++] = *key;
}

struct census {
	unsigned broken;      /* chains with a block indexed after a missing one */
	unsigned whole, shortened, gone;
	unsigned heads, tails; /* of chains of 2 or more: first / last block present */
	unsigned present;
	int first_broken;
};

static struct census count(struct t2 *t, struct chains *cs)
{
	struct census c;

	memset(&c, 0, sizeof(c));
	c.first_broken = -1;
	for (uint32_t i = 0; i < cs->n; i++) {
		unsigned have = 0, prefix = 0;
		bool gap = false;

		for (uint32_t j = 0; j < cs->len[i]; j++) {
			struct t1_key k = ckey(i, j);
			bool here = t2_lookup(t, &k, NULL) == 0;

			if (here) {
				have++;
				if (gap && c.first_broken < 0)
					c.first_broken = (int)i;
				prefix += !gap;
			} else {
				gap = true;
			}
		}
		c.present += have;
		if (cs->len[i] == 0)
			continue;
		c.broken += have != prefix;
		if (have == cs->len[i])
			c.whole++;
		else if (have == 0)
			c.gone++;
		else if (prefix > 0)
			c.shortened++;
		if (have && have == prefix && have < cs->len[i])
			cs->was_shortened[i] = true;
		if (cs->len[i] >= 2) {
			struct t1_key h = ckey(i, 0), l = ckey(i, cs->len[i] - 1u);

			c.heads += t2_lookup(t, &h, NULL) == 0;
			c.tails += t2_lookup(t, &l, NULL) == 0;
		}
	}
	return c;
}

/*
 * Chains of 2-4 blocks of 4-8 MiB, one after the other, parent before child, until
 * total bytes were written; after each chain, a census of all of them. A child
 * whose parent was dropped by cleaning while it was being written (the one case
 * cleaning cannot see coming) is deleted again, as an orphan is worth nothing, and
 * counted.
 */
static void write_chains(struct io_engine *io, struct t2 *t, struct codec_ctx *ctx,
			 struct chains *cs, uint64_t total, uint64_t seed)
{
	uint64_t s = seed | 1, written = 0;

	while (written < total && cs->n < MAX_CHAINS) {
		uint32_t c = cs->n++, L = 2 + (uint32_t)(t2t_rand(&s) % 3);

		for (uint32_t i = 0; i < L; i++) {
			struct t1_key k = ckey(c, i), p = ckey(c, i ? i - 1 : 0);
			uint64_t len = 4 * MIB + t2t_rand(&s) % (4 * MIB);

			if (i && t2_lookup(t, &p, NULL) != 0) {
				cs->raced++;
				break;
			}
			CHECK_RC(t2t_append(io, t, ctx, CODEC_RAW, &k, i ? &p.key : NULL, len), 0);
			if (i && t2_lookup(t, &p, NULL) != 0) {
				cs->raced++;
				CHECK_RC(t2_delete(t, &k), 0);
				break;
			}
			cs->len[c] = (uint8_t)(i + 1);
			cs->blen[c][i] = len;
			written += len;
		}
		{
			struct census now = count(t, cs);

			if (now.broken > cs->most_broken)
				cs->most_broken = now.broken;
			cs->censuses++;
		}
	}
}

static unsigned ever_shortened(const struct chains *cs)
{
	unsigned n = 0;

	for (uint32_t i = 0; i < cs->n; i++)
		n += cs->was_shortened[i];
	return n;
}

static void log_census(const char *what, const struct census *c, const struct chains *cs,
		       const struct t2_stats *st)
{
	test_log("%s: %u chains: %u whole, %u shortened, %u gone, %u broken; heads %u, tails %u; "
		 "%u blocks present; over the run: %u chains shortened from their end, at most "
		 "%u broken at once, %u writes raced; cleaned %llu, dropped %llu, relocated %llu "
		 "(%llu MiB)",
		 what, cs->n, c->whole, c->shortened, c->gone, c->broken, c->heads, c->tails,
		 c->present, ever_shortened(cs), cs->most_broken, cs->raced,
		 (unsigned long long)st->cleaned_segments,
		 (unsigned long long)st->dropped_blocks, (unsigned long long)st->relocated_blocks,
		 (unsigned long long)(st->relocated_bytes / MIB));
}

/* Every block present reads back byte-identical. */
static void verify_present(struct io_engine *io, struct t2 *t, struct codec_ctx *ctx,
			   const struct chains *cs)
{
	for (uint32_t i = 0; i < cs->n; i++)
		for (uint32_t j = 0; j < cs->len[i]; j++) {
			struct t1_key k = ckey(i, j);
			int rc;

			if (t2_lookup(t, &k, NULL) != 0)
				continue;
			rc = t2t_verify(io, t, ctx, &k, cs->blen[i][j]);
			CHECK_MSG(rc == 0, "chain %u block %u reads %d (%s)", i, j, rc,
				  test_errname(rc));
		}
}

static void chains_keep_heads(const char *dir, enum io_backend b)
{
	struct io_engine *io = t2t_io(b);
	struct t2_config c = t2t_config(dir, io, 4);
	struct t2_open_report rep;
	struct codec_ctx *ctx;
	struct chains *cs = calloc(1, sizeof(*cs));
	struct moved *mv = calloc(1, sizeof(*mv));
	struct t2_stats st;
	struct census cn, again;
	size_t moved_present = 0;
	struct t2 *t;

	CHECK(cs && mv);
	CHECK_RC(codec_ctx_new(1, &ctx), 0);
	t2_clean_notify = on_clean;
	t2_clean_notify_arg = mv;
	t = t2t_open(&c, &rep);
	/* 1.75 times the capacity. */
	write_chains(io, t, ctx, cs, 448 * MIB, 0x5eed);
	t2t_drain(io, t);
	t2_get_stats(t, &st);
	cn = count(t, cs);
	log_census("relocation on", &cn, cs, &st);
	CHECK(st.cleaned_segments >= 5);
	CHECK(st.relocated_blocks >= 5);
	CHECK(st.dropped_blocks >= 10);
	CHECK(st.segments_total <= 4);
	/* No chain ever lost a block before its end: what is indexed is a prefix,
	 * after every chain written. */
	CHECK(cs->censuses >= 20);
	CHECK_MSG(cs->most_broken == 0, "up to %u chains broken at once", cs->most_broken);
	CHECK_MSG(cn.broken == 0, "%u chains broken, first chain %d", cn.broken, cn.first_broken);
	/* Pressure took tails, not heads: many chains were seen shortened. */
	CHECK_MSG(ever_shortened(cs) >= cs->n / 4, "only %u of %u chains were ever shortened",
		  ever_shortened(cs), cs->n);
	CHECK_MSG(cn.heads >= cn.tails, "heads %u, tails %u", cn.heads, cn.tails);
	CHECK_MSG(cs->raced <= 2, "%u chains lost a parent while being written", cs->raced);
	CHECK_EQ(cn.present, st.blocks);
	/* Relocated blocks are served from their new place, byte for byte. */
	verify_present(io, t, ctx, cs);
	for (size_t i = 0; i < mv->n; i++)
		moved_present += t2_lookup(t, &mv->k[i], NULL) == 0;
	CHECK_MSG(moved_present >= 3, "%zu relocated blocks still present", moved_present);
	t2_close(t);

	/* Moves and drops were durable: a reopened store agrees, byte for byte. */
	t = t2t_open(&c, &rep);
	again = count(t, cs);
	CHECK_EQ(again.present, cn.present);
	CHECK_EQ(rep.blocks, cn.present);
	CHECK_EQ(again.broken, 0);
	CHECK_EQ(again.whole, cn.whole);
	verify_present(io, t, ctx, cs);
	t2_close(t);
	t2_clean_notify = NULL;
	codec_ctx_free(ctx);
	io_close(io);
	free(cs);
	free(mv);
}
T2T_BOTH(chains_keep_heads)

/* The same workload with cleaning as it was before it knew about chains (the
 * least-live, oldest segment goes whole): the prefix check sees chains that kept
 * a tail after losing their head. (This is what the check above guards against;
 * if it passed here, it would test nothing.) */
static void whole_segment_cleaning_breaks_chains(const char *dir, enum io_backend b)
{
	struct io_engine *io = t2t_io(b);
	struct t2_config c = t2t_config(dir, io, 4);
	struct t2_open_report rep;
	struct codec_ctx *ctx;
	struct chains *cs = calloc(1, sizeof(*cs));
	struct t2_stats st;
	struct census cn;
	struct t2 *t;

	CHECK(cs);
	CHECK_RC(codec_ctx_new(1, &ctx), 0);
	t2_keep_chains = false;
	t = t2t_open(&c, &rep);
	write_chains(io, t, ctx, cs, 448 * MIB, 0x5eed);
	t2t_drain(io, t);
	t2_get_stats(t, &st);
	cn = count(t, cs);
	log_census("chains ignored", &cn, cs, &st);
	CHECK_EQ(st.relocated_blocks, 0);
	CHECK(st.cleaned_segments >= 5);
	CHECK_MSG(cs->most_broken > 0, "no chain was broken with chains ignored: the check is blind");
	t2_close(t);
	codec_ctx_free(ctx);
	io_close(io);
	free(cs);
}

TEST(whole_segment_cleaning_breaks_chains_threads)
{
	t2t_run(whole_segment_cleaning_breaks_chains, IO_BACKEND_THREADS);
}

/*
 * One chain longer than the store: every segment is chain interior, so no cleaning
 * can avoid cutting it. Cleaning must still make room (no -ENOSPC, no stall), move
 * at most half of what it cleans, and cut as deep as it can: the chain's head
 * stays, and what is indexed from the head on reads back intact.
 */
static void long_chain(const char *dir, enum io_backend b)
{
	struct io_engine *io = t2t_io(b);
	struct t2_config c = t2t_config(dir, io, 4);
	struct t2_open_report rep;
	struct codec_ctx *ctx;
	struct t2_stats st;
	const uint32_t n = 100;
	const uint64_t len = 4 * MIB;
	uint32_t run = 0, present = 0;
	struct t2 *t;

	CHECK_RC(codec_ctx_new(1, &ctx), 0);
	t = t2t_open(&c, &rep);
	for (uint32_t i = 0; i < n; i++) {
		struct t1_key k = t2t_key(CH_TENANT + 1, i), p = t2t_key(CH_TENANT + 1, i ? i - 1 : 0);

		CHECK_RC(t2t_append(io, t, ctx, CODEC_RAW, &k, i ? &p.key : NULL, len), 0);
	}
	t2t_drain(io, t);
	t2_get_stats(t, &st);
	for (uint32_t i = 0; i < n; i++) {
		struct t1_key k = t2t_key(CH_TENANT + 1, i);
		bool here = t2_lookup(t, &k, NULL) == 0;

		present += here;
		if (here && run == i)
			run++;
	}
	test_log("long chain: %u of %u blocks present, %u from the head; cleaned %llu, "
		 "relocated %llu MiB", present, n, run, (unsigned long long)st.cleaned_segments,
		 (unsigned long long)(st.relocated_bytes / MIB));
	CHECK(st.cleaned_segments >= 4);
	CHECK_MSG(st.relocated_bytes <= st.cleaned_segments * SEG64 / 2,
		  "relocated %llu MiB for %llu segments cleaned",
		  (unsigned long long)(st.relocated_bytes / MIB),
		  (unsigned long long)st.cleaned_segments);
	CHECK_MSG(run >= 1, "the chain's head was dropped (%u blocks present)", present);
	for (uint32_t i = 0; i < run; i++) {
		struct t1_key k = t2t_key(CH_TENANT + 1, i);

		CHECK_RC(t2t_verify(io, t, ctx, &k, len), 0);
	}
	t2_close(t);
	codec_ctx_free(ctx);
	io_close(io);
}
T2T_BOTH(long_chain)

TEST_MAIN(chains_keep_heads_uring, chains_keep_heads_threads, whole_segment_cleaning_breaks_chains_threads,
	  long_chain_uring, long_chain_threads)
