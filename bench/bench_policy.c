/*
 * bench_policy.c - chooses the host tier's eviction policy by measurement: replays
 * a Mooncake KV-cache trace (JSONL; hash_ids are 512-token prefix blocks) through
 * simulated host tiers of several capacities, one per candidate policy, and
 * reports the prefix hit ratio of each beside Belady's clairvoyant policy.
 *
 *   build/bench/bench_policy [-t TRACE] [-f FRACTIONS] [-o FILE]
 *
 * No daemon is involved: only the eviction decision is measured, and "kvtier lru"
 * is the daemon's real policy (store/policy_lru.c, linked in and driven through
 * store/policy.h as t1.c drives it), so its figures are the host tier's own
 * eviction decisions under this request model (no pinned blocks, one block per
 * hash id). Runs in well under a second; deterministic (the one random policy,
 * BIP, uses a fixed seed).
 *
 * Blocks and requests. A hash id identifies a block; its parent is the hash id
 * before it in the request. Capacity = floor(fraction x unique blocks). Per
 * request, in trace order: hit = the leading run of resident blocks (a lookup
 * only counts the leading present blocks of a chain); the hit blocks are touched
 * tail first (so the head ends up most recent, as policy.h asks of the daemon);
 * then the missing blocks are inserted head to tail, evicting as needed (a
 * resident block past the first miss is touched instead).
 *
 * Policies (a block with no resident children is a chain tail):
 *   kvtier lru     store/policy_lru.c: LRU that takes the first chain tail among the
 *                  64 coldest blocks, else the coldest; classify says TAIL when
 *                  the block has no resident children, NONTAIL otherwise
 *   lru            plain LRU, no chain preference
 *   s3-fifo        small FIFO of 10%, main FIFO, ghost FIFO of 1x or 10x capacity,
 *                  2-bit frequencies; ghost hits enter the main FIFO
 *   arc            Megiddo and Modha's ARC (T1, T2, ghosts B1, B2, adaptive p)
 *   slru           probation + protected (80%), tail preference when evicting
 *   w-tinylfu      window LRU of 1%, main SLRU (80% protected), admission of the
 *                  window's victim over the main's when its estimated frequency
 *                  is higher; count-min sketch of 4 rows of 4 x capacity (a power
 *                  of 2) 4-bit counters, as Caffeine sizes it, all halved every
 *                  10 x capacity increments; every block of a request counts;
 *                  tail preference
 *   w-tinylfu exact  the same with exact 4-bit counters (halved likewise): the
 *                  sketch's estimation error alone changes the hit ratio a lot
 *                  here, because most admission decisions are ties between blocks
 *                  seen once or twice, and an admission that breaks a chain
 *                  costs the rest of it
 *   lru-2          evicts the block whose second most recent access is oldest
 *                  (never: first), ties by the most recent; history kept for
 *                  evicted blocks too
 *   lfu-da         GDSF-like LFU with dynamic aging: priority = L + frequency,
 *                  L = the last victim's priority; frequencies (4-bit, halved
 *                  every 10 x capacity accesses) kept for evicted blocks too
 *   bip            bimodal insertion: a request's new blocks enter at the LRU end
 *                  unless the request is picked (probability 1/8), tail preference
 *   fitted         ceilings, not policies (see "the ceilings" below): hit density
 *                  by feature class and age, with each class's statistics taken
 *                  from the whole trace; observable features, then with hints
 *                  only an engine could give (output length, request length)
 *   reuse < 4x     a ceiling: knows whether a block is used again within 4 x
 *                  capacity accesses (not when), LRU otherwise
 *   belady         evicts the resident block whose next use is furthest (ties:
 *                  the smallest hash id) and bypasses a block whose next use is
 *                  no nearer than every resident's: the clairvoyant reference.
 *                  Not optimal for prefix hits: it ignores chains, and as in the
 *                  prototype its ties (blocks next needed by the same request) go
 *                  to the smallest hash id, which in Mooncake traces is the one
 *                  nearest the chain head; taking the deepest instead raises it by
 *                  up to 0.009 on the synthetic trace
 *
 * Output: the machine, the trace and its statistics; a table of hit ratios
 * (rows: policies, columns: capacities) with, per capacity, the best online
 * policy and the share of the gap between kvtier lru and Belady that it closes,
 * (best - kvtier lru) / (belady - kvtier lru); then, for the two smallest
 * capacities, hits by how many times the block had been accessed before
 * (0, 1, ..., 5+) for kvtier lru, the best alternative and Belady, which shows
 * where Belady's advantage comes from. -o FILE writes the same text to FILE.
 *
 * The simulators other than kvtier lru follow the Python prototypes the policy
 * study started from statement by statement, quirks included (BIP inserts at the
 * LRU end and evicts with tail preference, so most of its victims, 85% at 0.05,
 * are the parent of the block being inserted; ARC falls back to T1 where the
 * prototype would have failed on an empty T2, which this trace never reaches).
 * Two deliberate differences: every tail search here looks at the 64 coldest
 * candidates, the daemon's POLICY_DEFAULT_SCAN, where the prototypes looked at 65;
 * and the prototype's W-TinyLFU counted exactly (that is "w-tinylfu exact").
 * With the window set to 65, every policy's hits, split by prior accesses, equal
 * the prototypes' block for block at all six default capacities; with 64 they
 * differ by at most 0.002 in hit ratio (0.0005 for kvtier lru).
 */
#include <errno.h>
#include <getopt.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kvtier.h"
#include "bench_util.h"
#include "policy.h"
#include "trace.h"

#define MAX_FRACS 16
#define NCLASS 6                       /* prior accesses 0, 1, 2, 3, 4, 5+ */
#define NONE UINT32_MAX                /* no parent */
#define NEVER UINT32_MAX               /* not used again */
#define SCAN_WINDOW POLICY_DEFAULT_SCAN /* candidates looked at for a chain tail */
#define NQ 4                           /* queues per simulated policy, at most */
#define SKETCH_ROWS 4
#define FREQ_MAX 15                    /* 4-bit counters */
#define SAMPLE_FACTOR 10               /* counters halve every 10 x capacity increments */
#define BIP_SEED 1

/* ---- the workload: the trace as dense block ids ------------------------------------ */

struct work {
	const struct trace *t;
	uint32_t nblk;       /* distinct hash ids */
	uint64_t *hash;      /* hash id of each dense id, ascending */
	uint32_t *blk;       /* dense id of every block of every request, back to back */
	uint32_t *parent;    /* dense id of each block's parent, NONE for a chain head */
	uint32_t *next_req;  /* per block of a request: the next request using it, or NEVER */
	uint64_t total;      /* block accesses */
	uint64_t by_class[NCLASS]; /* accesses by how many times the block was accessed before */
	size_t parent_conflicts;   /* hash ids seen with different parents */
	size_t dup_requests;       /* requests naming a hash id twice */

	/* For the ceilings (see "fitted" below): per block access, the accesses until
	 * the block's next access (NEVER: none) and its class under each feature set;
	 * per feature set, the gaps of each class sorted, with prefix sums. */
	uint32_t *gap;
	struct fit_table {
		uint32_t ncls;
		uint16_t *cls;    /* class of each block access */
		uint32_t *start;  /* ncls + 1 offsets into sgap */
		uint32_t *sgap;   /* gaps, class by class, ascending (NEVER last) */
		uint64_t *pre;    /* pre[i] = sum of the finite sgap[0 .. i-1] */
	} fit[2];
};

static int cmp_u64(const void *a, const void *b)
{
	return bench_cmp_u64(a, b);
}

static uint32_t dense_id(const struct work *w, uint64_t h)
{
	uint32_t lo = 0, hi = w->nblk;

	while (lo < hi) {
		uint32_t mid = lo + (hi - lo) / 2;

		if (w->hash[mid] < h)
			lo = mid + 1;
		else
			hi = mid;
	}
	return lo;
}

static void work_free(struct work *w)
{
	free(w->hash);
	free(w->blk);
	free(w->parent);
	free(w->next_req);
	free(w->gap);
	for (int k = 0; k < 2; k++) {
		free(w->fit[k].cls);
		free(w->fit[k].start);
		free(w->fit[k].sgap);
		free(w->fit[k].pre);
	}
	memset(w, 0, sizeof(*w));
}

/* Dense ids in hash-id order (so "smallest hash id" and "smallest id" agree). */
static int work_build(const struct trace *t, struct work *w)
{
	size_t nb = t->nblocks, u = 0;
	uint32_t *last = NULL, *nacc = NULL;
	bool *seen = NULL;
	int rc = -ENOMEM;

	memset(w, 0, sizeof(*w));
	w->t = t;
	w->total = nb;
	w->hash = malloc(nb * sizeof(*w->hash));
	w->blk = malloc(nb * sizeof(*w->blk));
	w->next_req = malloc(nb * sizeof(*w->next_req));
	if (!w->hash || !w->blk || !w->next_req)
		goto out;
	memcpy(w->hash, t->hash, nb * sizeof(*w->hash));
	qsort(w->hash, nb, sizeof(*w->hash), cmp_u64);
	for (size_t i = 0; i < nb; i++)
		if (i == 0 || w->hash[i] != w->hash[u - 1])
			w->hash[u++] = w->hash[i];
	if (u >= NONE) {
		rc = -E2BIG;
		goto out;
	}
	w->nblk = (uint32_t)u;
	for (size_t i = 0; i < nb; i++)
		w->blk[i] = dense_id(w, t->hash[i]);

	w->parent = malloc(u * sizeof(*w->parent));
	last = malloc(u * sizeof(*last));
	nacc = calloc(u, sizeof(*nacc));
	seen = calloc(u, sizeof(*seen));
	if (!w->parent || !last || !nacc || !seen)
		goto out;
	/* Parents (the last one seen wins, should a trace disagree with itself),
	 * duplicates within a request, accesses by prior-access class. */
	for (uint32_t i = 0; i < u; i++)
		last[i] = NEVER;
	for (size_t r = 0; r < t->nreq; r++) {
		const uint32_t *ids = w->blk + t->req[r].first;
		bool dup = false;

		for (uint32_t i = 0; i < t->req[r].n; i++) {
			uint32_t id = ids[i], p = i ? ids[i - 1] : NONE;
			uint32_t c = nacc[id] < NCLASS - 1 ? nacc[id] : NCLASS - 1;

			if (seen[id] && w->parent[id] != p)
				w->parent_conflicts++;
			seen[id] = true;
			w->parent[id] = p;
			if (last[id] == r)
				dup = true;
			last[id] = (uint32_t)r;
			w->by_class[c]++;
			nacc[id]++;
		}
		w->dup_requests += dup;
	}
	/* Next use: the next request (strictly after this one) naming the block. */
	for (uint32_t i = 0; i < u; i++)
		last[i] = NEVER;
	for (size_t r = t->nreq; r-- > 0;) {
		const struct req *q = &t->req[r];

		for (uint32_t i = 0; i < q->n; i++)
			w->next_req[q->first + i] = last[w->blk[q->first + i]];
		for (uint32_t i = 0; i < q->n; i++)
			last[w->blk[q->first + i]] = (uint32_t)r;
	}
	rc = 0;
out:
	free(last);
	free(nacc);
	free(seen);
	if (rc)
		work_free(w);
	return rc;
}

/* ---- the ceilings' statistics --------------------------------------------------------- */

/*
 * The fitted ceilings rank blocks by classes of features and learn, per class,
 * the distribution of the gap to the next access from the whole trace, future
 * included. Two feature sets:
 *   FIT_OBS   what the daemon can observe: the session's turn (how many earlier
 *             requests had reached the deepest block of this request seen before,
 *             0 for a request whose first block is new; capped at 7) and the
 *             block's own prior accesses (capped at 4)
 *   FIT_HINT  adds what only an engine could tell: the request's output length
 *             (< 50, < 150, more tokens), its length (16-block buckets up to 96)
 *             and the block's quarter of the request; turn capped at 10, prior
 *             accesses at 5
 */
enum { FIT_OBS, FIT_HINT };

#define FIT_OBS_NCLS (8u * 5u)
#define FIT_HINT_NCLS (11u * 6u * 3u * 7u * 4u)

static int cmp_u32(const void *a, const void *b)
{
	uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;

	return x < y ? -1 : x > y;
}

static int fit_sort(const struct work *w, struct fit_table *f)
{
	uint32_t *fill;

	f->start = calloc(f->ncls + 1, sizeof(*f->start));
	f->sgap = malloc(w->total * sizeof(*f->sgap));
	f->pre = malloc((w->total + 1) * sizeof(*f->pre));
	fill = malloc((f->ncls + 1) * sizeof(*fill));
	if (!f->start || !f->sgap || !f->pre || !fill) {
		free(fill);
		return -ENOMEM;
	}
	for (uint64_t p = 0; p < w->total; p++)
		f->start[f->cls[p] + 1]++;
	for (uint32_t c = 0; c < f->ncls; c++)
		f->start[c + 1] += f->start[c];
	memcpy(fill, f->start, (f->ncls + 1) * sizeof(*fill));
	for (uint64_t p = 0; p < w->total; p++)
		f->sgap[fill[f->cls[p]]++] = w->gap[p];
	free(fill);
	for (uint32_t c = 0; c < f->ncls; c++)
		qsort(f->sgap + f->start[c], f->start[c + 1] - f->start[c], sizeof(*f->sgap),
		      cmp_u32);
	f->pre[0] = 0;
	for (uint64_t i = 0; i < w->total; i++)
		f->pre[i + 1] = f->pre[i] + (f->sgap[i] == NEVER ? 0 : f->sgap[i]);
	return 0;
}

static int work_build_fit(const struct trace *t, struct work *w)
{
	uint32_t *nacc = calloc(w->nblk, sizeof(*nacc));
	uint32_t *lastpos = malloc(w->nblk * sizeof(*lastpos));
	int rc = -ENOMEM;

	w->gap = malloc(w->total * sizeof(*w->gap));
	w->fit[FIT_OBS].ncls = FIT_OBS_NCLS;
	w->fit[FIT_HINT].ncls = FIT_HINT_NCLS;
	for (int k = 0; k < 2; k++)
		w->fit[k].cls = malloc(w->total * sizeof(*w->fit[k].cls));
	if (!nacc || !lastpos || !w->gap || !w->fit[0].cls || !w->fit[1].cls)
		goto out;
	if (w->total >= NEVER) {
		rc = -E2BIG;
		goto out;
	}
	for (uint32_t i = 0; i < w->nblk; i++)
		lastpos[i] = NEVER;
	for (uint64_t p = w->total; p-- > 0;) {
		uint32_t id = w->blk[p];

		w->gap[p] = lastpos[id] == NEVER ? NEVER : lastpos[id] - (uint32_t)p;
		lastpos[id] = (uint32_t)p;
	}
	for (size_t r = 0; r < t->nreq; r++) {
		const struct req *q = &t->req[r];
		const uint32_t *ids = w->blk + q->first;
		uint32_t j = 0, turn, ob, lb;

		while (j < q->n && nacc[ids[j]])
			j++;
		turn = j ? nacc[ids[j - 1]] : 0;
		ob = q->out_len < 50 ? 0 : q->out_len < 150 ? 1 : 2;
		lb = q->n / 16 < 6 ? q->n / 16 : 6;
		for (uint32_t i = 0; i < q->n; i++) {
			uint32_t prior = nacc[ids[i]]++;
			uint32_t quarter = (uint32_t)((uint64_t)4 * i / q->n);
			uint32_t c;

			c = (turn < 7 ? turn : 7) * 5 + (prior < 4 ? prior : 4);
			w->fit[FIT_OBS].cls[q->first + i] = (uint16_t)c;
			c = (turn < 10 ? turn : 10) * 6 + (prior < 5 ? prior : 5);
			c = ((c * 3 + ob) * 7 + lb) * 4 + quarter;
			w->fit[FIT_HINT].cls[q->first + i] = (uint16_t)c;
		}
	}
	rc = fit_sort(w, &w->fit[FIT_OBS]);
	if (rc == 0)
		rc = fit_sort(w, &w->fit[FIT_HINT]);
out:
	free(nacc);
	free(lastpos);
	return rc;
}

/* ---- Python's random.Random(seed).random(), for BIP ---------------------------------- */

/* MT19937 seeded as CPython seeds it from a small integer (init_by_array), and
 * random() as CPython makes it of two draws, so BIP picks the same requests as
 * the prototype did. */
struct mt {
	uint32_t s[624];
	unsigned i;
};

static void mt_seed(struct mt *m, uint32_t seed)
{
	uint32_t *s = m->s;
	unsigned i = 1;

	s[0] = 19650218u;
	for (unsigned k = 1; k < 624; k++)
		s[k] = 1812433253u * (s[k - 1] ^ (s[k - 1] >> 30)) + k;
	for (unsigned k = 624; k; k--) { /* init_by_array with the key {seed} */
		s[i] = (s[i] ^ ((s[i - 1] ^ (s[i - 1] >> 30)) * 1664525u)) + seed; /* + key index 0 */
		i++;
		if (i >= 624) {
			s[0] = s[623];
			i = 1;
		}
	}
	for (unsigned k = 623; k; k--) {
		s[i] = (s[i] ^ ((s[i - 1] ^ (s[i - 1] >> 30)) * 1566083941u)) - i;
		i++;
		if (i >= 624) {
			s[0] = s[623];
			i = 1;
		}
	}
	s[0] = 0x80000000u;
	m->i = 624;
}

static uint32_t mt_next(struct mt *m)
{
	uint32_t y;

	if (m->i >= 624) {
		for (unsigned k = 0; k < 624; k++) {
			y = (m->s[k] & 0x80000000u) | (m->s[(k + 1) % 624] & 0x7fffffffu);
			m->s[k] = m->s[(k + 397) % 624] ^ (y >> 1) ^ ((y & 1u) ? 0x9908b0dfu : 0u);
		}
		m->i = 0;
	}
	y = m->s[m->i++];
	y ^= y >> 11;
	y ^= (y << 7) & 0x9d2c5680u;
	y ^= (y << 15) & 0xefc60000u;
	y ^= y >> 18;
	return y;
}

static double mt_random(struct mt *m)
{
	uint32_t a = mt_next(m) >> 5, b = mt_next(m) >> 6;

	return ((double)a * 67108864.0 + (double)b) * (1.0 / 9007199254740992.0);
}

/* ---- one simulated host tier ------------------------------------------------------ */

struct sim;

struct sim_ops {
	int (*setup)(struct sim *s);
	void (*teardown)(struct sim *s);
	/* Before the request's accesses: its blocks and their next uses. */
	void (*begin)(struct sim *s, const uint32_t *ids, uint32_t n, const uint32_t *next);
	void (*access)(struct sim *s, uint32_t id);
	void (*insert)(struct sim *s, uint32_t id);
};

struct polspec {
	const char *name;
	const char *tag; /* at most 9 characters, for the "best online" row */
	const struct sim_ops *ops;
	uint32_t ghost; /* S3-FIFO: ghost FIFO = ghost x capacity */
	bool exact;     /* W-TinyLFU: exact counters instead of the sketch; kvtier: 2q */
	bool online;    /* false: knows the future */
	int fitk;       /* fitted: 1 + FIT_OBS or 1 + FIT_HINT */
};

/*
 * Everything any policy needs; each uses its part. Queues are intrusive lists
 * over block ids with sentinels n+1 .. n+NQ: next of a sentinel is the cold end
 * (FIFO head), prev the most recent. The heap is an indexed min-heap over block
 * ids ordered by (ka, kb).
 */
struct sim {
	const struct work *w;
	const struct polspec *ps;
	uint32_t cap, n, nres;
	uint8_t *res;
	uint32_t *kids; /* resident children */

	uint32_t *prev, *next;
	uint8_t *where; /* queue of the block, 0: none */
	uint32_t qlen[NQ + 1];

	uint32_t *heap, *hpos; /* hpos: heap index + 1, 0 when not in the heap */
	int64_t *ka, *kb;
	uint32_t hlen;

	uint8_t *freq;   /* exact 4-bit frequencies (lfu-da), 2-bit ones (s3-fifo) */
	int64_t *h1, *h2; /* lru-2: last and second last access times, -1: none */
	uint32_t *nxt;   /* belady: next use of each block as of this request */

	uint8_t *cm;     /* count-min sketch: SKETCH_ROWS rows of cm_mask + 1 counters */
	uint32_t cm_mask;
	uint64_t sample, nsampled; /* halve every `sample` increments */

	uint32_t small_cap, prot_cap, win_cap, ghost_cap;
	double arc_p;
	int64_t clock, aging;
	bool mru;
	struct mt mt;

	uint32_t *bpos;  /* ceilings: each block's position in the flat arrays */
	uint64_t horizon;
	double *dens;    /* fitted: density by class and age bucket */
	uint16_t *bcls;
	uint32_t *lst, *lidx, fit_b;
	uint64_t rng;

	struct policy *kp; /* kvtier lru: the real policy */
	struct policy_node *nodes;
	uint64_t nontail;  /* its victims that had resident children */
};

static void res_add(struct sim *s, uint32_t id)
{
	uint32_t p = s->w->parent[id];

	s->res[id] = 1;
	s->nres++;
	if (p != NONE)
		s->kids[p]++;
}

static void res_drop(struct sim *s, uint32_t id)
{
	uint32_t p = s->w->parent[id];

	s->res[id] = 0;
	s->nres--;
	if (p != NONE)
		s->kids[p]--;
}

/* ---- queues ---- */

static uint32_t q_sent(const struct sim *s, int q)
{
	return s->n + (uint32_t)q;
}

static void q_push(struct sim *s, int q, uint32_t id) /* most recent end */
{
	uint32_t z = q_sent(s, q);

	s->prev[id] = s->prev[z];
	s->next[id] = z;
	s->next[s->prev[z]] = id;
	s->prev[z] = id;
	s->where[id] = (uint8_t)q;
	s->qlen[q]++;
}

static void q_push_cold(struct sim *s, int q, uint32_t id) /* cold end */
{
	uint32_t z = q_sent(s, q);

	s->next[id] = s->next[z];
	s->prev[id] = z;
	s->prev[s->next[z]] = id;
	s->next[z] = id;
	s->where[id] = (uint8_t)q;
	s->qlen[q]++;
}

static void q_del(struct sim *s, uint32_t id)
{
	s->next[s->prev[id]] = s->next[id];
	s->prev[s->next[id]] = s->prev[id];
	s->qlen[s->where[id]]--;
	s->where[id] = 0;
}

static uint32_t q_cold(const struct sim *s, int q)
{
	return s->next[q_sent(s, q)];
}

static void q_touch(struct sim *s, uint32_t id)
{
	int q = s->where[id];

	q_del(s, id);
	q_push(s, q, id);
}

/* From the cold end of q: the first chain tail among SCAN_WINDOW blocks, else the
 * coldest (what policy_lru.c does). */
static uint32_t q_pick(const struct sim *s, int q)
{
	uint32_t z = q_sent(s, q), x = s->next[z];

	for (unsigned seen = 0; x != z && seen < SCAN_WINDOW; x = s->next[x], seen++)
		if (!s->kids[x])
			return x;
	return s->next[z];
}

/* ---- indexed heap ---- */

static bool h_less(const struct sim *s, uint32_t x, uint32_t y)
{
	return s->ka[x] < s->ka[y] || (s->ka[x] == s->ka[y] && s->kb[x] < s->kb[y]);
}

static void h_place(struct sim *s, uint32_t i, uint32_t id)
{
	s->heap[i] = id;
	s->hpos[id] = i + 1;
}

static void h_up(struct sim *s, uint32_t i)
{
	uint32_t id = s->heap[i];

	while (i > 0) {
		uint32_t p = (i - 1) / 2;

		if (!h_less(s, id, s->heap[p]))
			break;
		h_place(s, i, s->heap[p]);
		i = p;
	}
	h_place(s, i, id);
}

static void h_down(struct sim *s, uint32_t i)
{
	uint32_t id = s->heap[i];

	for (;;) {
		uint32_t c = 2 * i + 1;

		if (c >= s->hlen)
			break;
		if (c + 1 < s->hlen && h_less(s, s->heap[c + 1], s->heap[c]))
			c++;
		if (!h_less(s, s->heap[c], id))
			break;
		h_place(s, i, s->heap[c]);
		i = c;
	}
	h_place(s, i, id);
}

static void h_set(struct sim *s, uint32_t id, int64_t a, int64_t b)
{
	s->ka[id] = a;
	s->kb[id] = b;
	if (s->hpos[id]) {
		h_up(s, s->hpos[id] - 1);
		h_down(s, s->hpos[id] - 1);
	} else {
		s->heap[s->hlen] = id;
		s->hpos[id] = ++s->hlen;
		h_up(s, s->hlen - 1);
	}
}

static uint32_t h_pop(struct sim *s)
{
	uint32_t id = s->heap[0];

	s->hpos[id] = 0;
	if (--s->hlen > 0) {
		h_place(s, 0, s->heap[s->hlen]);
		h_down(s, 0);
	}
	return id;
}

/* ---- frequencies: exact, and the count-min sketch ---- */

static void freq_inc(struct sim *s, uint32_t id)
{
	if (s->freq[id] < FREQ_MAX)
		s->freq[id]++;
	if (++s->nsampled >= s->sample) {
		s->nsampled = 0;
		for (uint32_t i = 0; i < s->n; i++)
			s->freq[i] /= 2;
	}
}

static uint8_t *cm_counter(struct sim *s, unsigned row, uint32_t id)
{
	uint64_t h = bench_splitmix64(s->w->hash[id] ^ (0x6b767469657200ull + row));

	return &s->cm[(size_t)row * (s->cm_mask + 1) + (h & s->cm_mask)];
}

static void cm_inc(struct sim *s, uint32_t id)
{
	for (unsigned r = 0; r < SKETCH_ROWS; r++) {
		uint8_t *c = cm_counter(s, r, id);

		if (*c < FREQ_MAX)
			(*c)++;
	}
	if (++s->nsampled >= s->sample) {
		s->nsampled = 0;
		for (size_t i = 0; i < (size_t)SKETCH_ROWS * (s->cm_mask + 1); i++)
			s->cm[i] /= 2;
	}
}

static unsigned cm_get(struct sim *s, uint32_t id)
{
	unsigned m = FREQ_MAX;

	for (unsigned r = 0; r < SKETCH_ROWS; r++) {
		unsigned c = *cm_counter(s, r, id);

		if (c < m)
			m = c;
	}
	return m;
}

/* ---- kvtier lru: store/policy_lru.c ---- */

static enum policy_class kvt_classify(const struct policy_node *pn, void *arg)
{
	const struct sim *s = arg;

	return s->kids[pn - s->nodes] ? POLICY_NONTAIL : POLICY_TAIL;
}

static int kvt_setup(struct sim *s)
{
	struct policy_config cfg = { .evict_scan = SCAN_WINDOW };

	s->nodes = calloc(s->n, sizeof(*s->nodes));
	if (!s->nodes)
		return -ENOMEM;
	/* The node's key: what t1 gives 2Q, a hash of the block's identity. */
	for (uint32_t id = 0; id < s->n; id++)
		s->nodes[id].key = (uint64_t)id * 0x9e3779b97f4a7c15ull + 1;
	return s->ps->exact ? policy_2q_create(&cfg, &s->kp) : policy_lru_create(&cfg, &s->kp);
}

static void kvt_teardown(struct sim *s)
{
	policy_destroy(s->kp);
	free(s->nodes);
}

static void kvt_access(struct sim *s, uint32_t id)
{
	policy_access(s->kp, &s->nodes[id]);
}

static void kvt_insert(struct sim *s, uint32_t id)
{
	while (s->nres >= s->cap) {
		bool nontail = false;
		struct policy_node *v = policy_victim(s->kp, kvt_classify, s, &nontail);

		if (!v)
			break;
		s->nontail += nontail;
		policy_remove(s->kp, v);
		res_drop(s, (uint32_t)(v - s->nodes));
	}
	policy_insert(s->kp, &s->nodes[id]);
	res_add(s, id);
}

/* ---- plain LRU ---- */

static void lru_access(struct sim *s, uint32_t id)
{
	q_touch(s, id);
}

static void lru_insert(struct sim *s, uint32_t id)
{
	while (s->nres >= s->cap) {
		uint32_t v = q_cold(s, 1);

		q_del(s, v);
		res_drop(s, v);
	}
	q_push(s, 1, id);
	res_add(s, id);
}

/* ---- S3-FIFO ---- */

enum { S3_SMALL = 1, S3_MAIN, S3_GHOST };

static int s3_setup(struct sim *s)
{
	uint32_t sc = (uint32_t)((double)s->cap * 0.1);

	s->small_cap = sc ? sc : 1;
	s->ghost_cap = s->ps->ghost * s->cap;
	return 0;
}

static void s3_access(struct sim *s, uint32_t id)
{
	if (s->freq[id] < 3)
		s->freq[id]++;
}

/* true when a block was evicted; false when one moved to the main FIFO */
static bool s3_evict_small(struct sim *s)
{
	while (s->qlen[S3_SMALL]) {
		uint32_t x = q_cold(s, S3_SMALL);

		q_del(s, x);
		if (s->freq[x] >= 1) {
			q_push(s, S3_MAIN, x);
			return false;
		}
		res_drop(s, x);
		q_push(s, S3_GHOST, x);
		if (s->qlen[S3_GHOST] > s->ghost_cap)
			q_del(s, q_cold(s, S3_GHOST));
		return true;
	}
	return false;
}

static bool s3_evict_main(struct sim *s)
{
	while (s->qlen[S3_MAIN]) {
		uint32_t x = q_cold(s, S3_MAIN);

		q_del(s, x);
		if (s->freq[x] > 0) {
			s->freq[x]--;
			q_push(s, S3_MAIN, x);
		} else {
			res_drop(s, x);
			return true;
		}
	}
	return false;
}

static void s3_insert(struct sim *s, uint32_t id)
{
	while (s->nres >= s->cap) {
		if (s->qlen[S3_SMALL] >= s->small_cap || !s->qlen[S3_MAIN]) {
			if (s3_evict_small(s))
				break;
		} else if (s3_evict_main(s)) {
			break;
		}
	}
	if (s->where[id] == S3_GHOST) {
		q_del(s, id);
		q_push(s, S3_MAIN, id);
	} else {
		q_push(s, S3_SMALL, id);
	}
	s->freq[id] = 0;
	res_add(s, id);
}

/* ---- ARC ---- */

enum { ARC_T1 = 1, ARC_T2, ARC_B1, ARC_B2 };

static void arc_access(struct sim *s, uint32_t id)
{
	if (s->where[id] == ARC_T1) {
		q_del(s, id);
		q_push(s, ARC_T2, id);
	} else {
		q_touch(s, id);
	}
}

static void arc_replace(struct sim *s, bool in_b2)
{
	uint32_t t1 = s->qlen[ARC_T1], x;

	if (t1 && ((double)t1 > s->arc_p || (in_b2 && (double)t1 == s->arc_p))) {
		x = q_cold(s, ARC_T1);
		q_del(s, x);
		q_push(s, ARC_B1, x);
	} else if (s->qlen[ARC_T2]) {
		x = q_cold(s, ARC_T2);
		q_del(s, x);
		q_push(s, ARC_B2, x);
	} else { /* T2 empty (the prototype would have failed here) */
		x = q_cold(s, ARC_T1);
		q_del(s, x);
		q_push(s, ARC_B1, x);
	}
	res_drop(s, x);
}

static double max_d(double a, double b)
{
	return a > b ? a : b;
}

static void arc_insert(struct sim *s, uint32_t id)
{
	double c = s->cap;
	uint32_t b1 = s->qlen[ARC_B1], b2 = s->qlen[ARC_B2], l1, all;

	if (s->where[id] == ARC_B1 || s->where[id] == ARC_B2) {
		bool in_b2 = s->where[id] == ARC_B2;

		if (!in_b2) {
			s->arc_p += max_d((double)b2 / (double)(b1 > 1 ? b1 : 1), 1);
			if (s->arc_p > c)
				s->arc_p = c;
		} else {
			s->arc_p -= max_d((double)b1 / (double)(b2 > 1 ? b2 : 1), 1);
			if (s->arc_p < 0)
				s->arc_p = 0;
		}
		if (s->nres >= s->cap)
			arc_replace(s, in_b2);
		q_del(s, id);
		q_push(s, ARC_T2, id);
		res_add(s, id);
		return;
	}
	l1 = s->qlen[ARC_T1] + b1;
	all = l1 + s->qlen[ARC_T2] + b2;
	if (l1 == s->cap) {
		if (s->qlen[ARC_T1] < s->cap) {
			q_del(s, q_cold(s, ARC_B1));
			arc_replace(s, false);
		} else {
			uint32_t x = q_cold(s, ARC_T1);

			q_del(s, x);
			res_drop(s, x);
		}
	} else if (l1 < s->cap && all >= s->cap) {
		if (all >= 2 * s->cap && b2)
			q_del(s, q_cold(s, ARC_B2));
		if (s->nres >= s->cap)
			arc_replace(s, false);
	}
	q_push(s, ARC_T1, id);
	res_add(s, id);
}

/* ---- SLRU ---- */

enum { SL_PROB = 1, SL_PROT };

static int slru_setup(struct sim *s)
{
	s->prot_cap = (uint32_t)((double)s->cap * 0.8);
	return 0;
}

static void slru_access(struct sim *s, uint32_t id)
{
	if (s->where[id] == SL_PROB) {
		q_del(s, id);
		q_push(s, SL_PROT, id);
	} else {
		q_touch(s, id);
	}
	while (s->qlen[SL_PROT] > s->prot_cap) {
		uint32_t x = q_cold(s, SL_PROT);

		q_del(s, x);
		q_push(s, SL_PROB, x);
	}
}

static void slru_insert(struct sim *s, uint32_t id)
{
	while (s->nres >= s->cap) {
		uint32_t v = q_pick(s, s->qlen[SL_PROB] ? SL_PROB : SL_PROT);

		q_del(s, v);
		res_drop(s, v);
	}
	q_push(s, SL_PROB, id);
	res_add(s, id);
}

/* ---- W-TinyLFU ---- */

enum { WT_WIN = 1, WT_PROB, WT_PROT };

static int wt_setup(struct sim *s)
{
	uint32_t wc = (uint32_t)((double)s->cap * 0.01), width = 1;

	s->win_cap = wc ? wc : 1;
	s->prot_cap = (uint32_t)((double)(s->cap - s->win_cap) * 0.8);
	/* 4 counters per row per block of capacity (rounded up to a power of two),
	 * as Caffeine sizes its sketch: 16 4-bit counters per entry in all. */
	while (width < 4 * (uint64_t)s->cap)
		width *= 2;
	s->cm_mask = width - 1;
	s->cm = calloc((size_t)SKETCH_ROWS * width, 1);
	return s->cm ? 0 : -ENOMEM;
}

static void wt_teardown(struct sim *s)
{
	free(s->cm);
}

static void wt_begin(struct sim *s, const uint32_t *ids, uint32_t n, const uint32_t *next)
{
	(void)next;
	for (uint32_t i = 0; i < n; i++) {
		if (s->ps->exact)
			freq_inc(s, ids[i]);
		else
			cm_inc(s, ids[i]);
	}
}

static unsigned wt_freq(struct sim *s, uint32_t id)
{
	return s->ps->exact ? s->freq[id] : cm_get(s, id);
}

static void wt_access(struct sim *s, uint32_t id)
{
	if (s->where[id] == WT_WIN) {
		q_touch(s, id);
		return;
	}
	if (s->where[id] == WT_PROB) {
		q_del(s, id);
		q_push(s, WT_PROT, id);
	} else {
		q_touch(s, id);
	}
	while (s->qlen[WT_PROT] > s->prot_cap) {
		uint32_t x = q_cold(s, WT_PROT);

		q_del(s, x);
		q_push(s, WT_PROB, x);
	}
}

static void wt_insert(struct sim *s, uint32_t id)
{
	q_push(s, WT_WIN, id);
	res_add(s, id);
	while (s->nres > s->cap || s->qlen[WT_WIN] > s->win_cap) {
		int q = s->qlen[WT_PROB] ? WT_PROB : WT_PROT;

		if (s->qlen[WT_WIN] > s->win_cap) {
			uint32_t c = q_pick(s, WT_WIN), v;

			q_del(s, c);
			if (s->nres <= s->cap) {
				q_push(s, WT_PROB, c);
				continue;
			}
			if (!s->qlen[q]) {
				res_drop(s, c);
				continue;
			}
			v = q_pick(s, q);
			if (wt_freq(s, c) > wt_freq(s, v)) {
				q_del(s, v);
				res_drop(s, v);
				q_push(s, WT_PROB, c);
			} else {
				res_drop(s, c);
			}
		} else {
			uint32_t v = q_pick(s, q);

			q_del(s, v);
			res_drop(s, v);
		}
	}
}

/* ---- LRU-2 with retained history ---- */

static void lru2_begin(struct sim *s, const uint32_t *ids, uint32_t n, const uint32_t *next)
{
	(void)next;
	for (uint32_t i = 0; i < n; i++) {
		uint32_t id = ids[i];

		s->h2[id] = s->h1[id];
		s->h1[id] = ++s->clock;
		if (s->res[id])
			h_set(s, id, s->h2[id], s->h1[id]);
	}
}

static void lru2_access(struct sim *s, uint32_t id)
{
	(void)s;
	(void)id;
}

static void lru2_insert(struct sim *s, uint32_t id)
{
	while (s->nres >= s->cap)
		res_drop(s, h_pop(s));
	res_add(s, id);
	h_set(s, id, s->h2[id], s->h1[id]);
}

/* ---- LFU with dynamic aging, retained history ---- */

static void lfu_begin(struct sim *s, const uint32_t *ids, uint32_t n, const uint32_t *next)
{
	(void)next;
	for (uint32_t i = 0; i < n; i++)
		freq_inc(s, ids[i]);
}

static void lfu_access(struct sim *s, uint32_t id)
{
	h_set(s, id, s->aging + s->freq[id], ++s->clock);
}

static void lfu_insert(struct sim *s, uint32_t id)
{
	while (s->nres >= s->cap) {
		uint32_t v = h_pop(s);

		s->aging = s->ka[v];
		res_drop(s, v);
	}
	res_add(s, id);
	h_set(s, id, s->aging + s->freq[id], ++s->clock);
}

/* ---- BIP ---- */

static int bip_setup(struct sim *s)
{
	mt_seed(&s->mt, BIP_SEED);
	return 0;
}

static void bip_begin(struct sim *s, const uint32_t *ids, uint32_t n, const uint32_t *next)
{
	(void)ids;
	(void)n;
	(void)next;
	s->mru = mt_random(&s->mt) < 1.0 / 8;
}

static void bip_insert(struct sim *s, uint32_t id)
{
	while (s->nres >= s->cap) {
		uint32_t v = q_pick(s, 1);

		q_del(s, v);
		res_drop(s, v);
	}
	if (s->mru)
		q_push(s, 1, id);
	else
		q_push_cold(s, 1, id);
	res_add(s, id);
}

/* ---- Belady with bypass ---- */

static void bel_begin(struct sim *s, const uint32_t *ids, uint32_t n, const uint32_t *next)
{
	for (uint32_t i = 0; i < n; i++)
		s->nxt[ids[i]] = next[i];
}

/* Furthest next use first; among equal ones the smallest hash id (= dense id). */
static void bel_set(struct sim *s, uint32_t id)
{
	h_set(s, id, -(int64_t)s->nxt[id], id);
}

static void bel_access(struct sim *s, uint32_t id)
{
	if (s->res[id])
		bel_set(s, id);
}

static void bel_insert(struct sim *s, uint32_t id)
{
	if (s->nres >= s->cap && s->hlen && s->nxt[id] >= s->nxt[s->heap[0]])
		return; /* bypass: needed no sooner than anything resident */
	while (s->nres >= s->cap)
		res_drop(s, h_pop(s));
	res_add(s, id);
	bel_set(s, id);
}

/* ---- the ceilings: fitted hit density, and knowing reuse within a horizon ---- */

/*
 * "fitted": hit density as LHD (Beckmann et al., NSDI'18) defines it, but with
 * the density of each (class, age) computed from the trace's own gap
 * distribution rather than learned online: for a block of class c at age a
 * (accesses since its last access), density = P(next access within (a, a + W]) /
 * E[time it would still occupy the cache, held until that access or age a + W].
 * W = FIT_HORIZON x capacity. The victim is the least dense chain tail among
 * FIT_ASSOC resident blocks drawn at random (fixed seed). No online policy that
 * ranks blocks by the same features could know these tables better, so the
 * result is a ceiling for that policy family, not a policy.
 *
 * "reuse < 4x": knows whether each block is accessed again within 4 x capacity
 * accesses (but not when); evicts such blocks only when no other is resident,
 * LRU with tail preference within each group. How much of Belady's lead comes
 * from knowing the time of reuse rather than its likelihood.
 */
#define FIT_NB 96        /* age buckets */
#define FIT_BUCKETS_PER_CAP 8u
#define FIT_HORIZON 4u   /* W, in capacities */
#define FIT_ASSOC 128
#define FIT_SEED 0x9e3779b97f4a7c15ull

static uint32_t upper_bound_u32(const uint32_t *a, uint32_t lo, uint32_t hi, uint64_t v)
{
	while (lo < hi) {
		uint32_t mid = lo + (hi - lo) / 2;

		if (a[mid] <= v)
			lo = mid + 1;
		else
			hi = mid;
	}
	return lo;
}

static int ceil_setup(struct sim *s)
{
	s->bpos = malloc(s->n * sizeof(*s->bpos));
	s->horizon = (uint64_t)s->cap * FIT_HORIZON;
	return s->bpos ? 0 : -ENOMEM;
}

static int fit_setup(struct sim *s)
{
	const struct fit_table *f = &s->w->fit[s->ps->fitk - 1];

	if (ceil_setup(s) != 0)
		return -ENOMEM;
	s->fit_b = s->cap / FIT_BUCKETS_PER_CAP ? s->cap / FIT_BUCKETS_PER_CAP : 1;
	s->dens = malloc((size_t)f->ncls * FIT_NB * sizeof(*s->dens));
	s->bcls = malloc(s->n * sizeof(*s->bcls));
	s->lst = malloc(s->n * sizeof(*s->lst));
	s->lidx = malloc(s->n * sizeof(*s->lidx));
	if (!s->dens || !s->bcls || !s->lst || !s->lidx)
		return -ENOMEM;
	s->rng = FIT_SEED;
	for (uint32_t c = 0; c < f->ncls; c++) {
		uint32_t b0 = f->start[c], end = f->start[c + 1];

		for (uint32_t b = 0; b < FIT_NB; b++) {
			uint64_t a = (uint64_t)b * s->fit_b;
			uint32_t lo = upper_bound_u32(f->sgap, b0, end, a);
			uint32_t hi = upper_bound_u32(f->sgap, lo, end, a + s->horizon);
			double hits = hi - lo, life;

			life = (double)(f->pre[hi] - f->pre[lo]) - (double)a * hits +
			       (double)(end - hi) * (double)s->horizon;
			s->dens[(size_t)c * FIT_NB + b] = life > 0 ? hits / life : 0;
		}
	}
	return 0;
}

static void fit_teardown(struct sim *s)
{
	free(s->bpos);
	free(s->dens);
	free(s->bcls);
	free(s->lst);
	free(s->lidx);
}

/* Where each block of the request sits in the trace's flat arrays. */
static void ceil_begin(struct sim *s, const uint32_t *ids, uint32_t n, const uint32_t *next)
{
	uint32_t first = (uint32_t)(next - s->w->next_req);

	for (uint32_t i = 0; i < n; i++)
		s->bpos[ids[i]] = first + i;
}

static void fit_note(struct sim *s, uint32_t id)
{
	uint32_t p = s->bpos[id];

	s->bcls[id] = s->w->fit[s->ps->fitk - 1].cls[p];
	s->h1[id] = p;
	if (p > s->clock)
		s->clock = p;
}

static double fit_density(const struct sim *s, uint32_t id)
{
	uint64_t b = (uint64_t)(s->clock - s->h1[id]) / s->fit_b;

	return s->dens[(size_t)s->bcls[id] * FIT_NB + (b < FIT_NB ? b : FIT_NB - 1)];
}

static uint32_t fit_rand(struct sim *s, uint32_t n) /* xorshift64* */
{
	s->rng ^= s->rng >> 12;
	s->rng ^= s->rng << 25;
	s->rng ^= s->rng >> 27;
	return (uint32_t)(((s->rng * 0x2545f4914f6cdd1dull) >> 32) % n);
}

static uint32_t fit_victim(struct sim *s)
{
	uint32_t best = NONE;
	double bd = 0;

	for (int i = 0; i < FIT_ASSOC; i++) {
		uint32_t id = s->lst[fit_rand(s, s->nres)];
		double d;

		if (s->kids[id])
			continue;
		d = fit_density(s, id);
		if (best == NONE || d < bd) {
			best = id;
			bd = d;
		}
	}
	for (uint32_t i = 0; best == NONE && i < s->nres; i++)
		if (!s->kids[s->lst[i]])
			best = s->lst[i];
	return best; /* a forest always has a leaf */
}

static void fit_access(struct sim *s, uint32_t id)
{
	fit_note(s, id);
}

static void fit_insert(struct sim *s, uint32_t id)
{
	if (s->bpos[id] > s->clock)
		s->clock = s->bpos[id];
	while (s->nres >= s->cap) {
		uint32_t v = fit_victim(s), last = s->lst[s->nres - 1];

		s->lst[s->lidx[v]] = last;
		s->lidx[last] = s->lidx[v];
		res_drop(s, v);
	}
	fit_note(s, id);
	s->lidx[id] = s->nres;
	s->lst[s->nres] = id;
	res_add(s, id);
}

static void reuse_place(struct sim *s, uint32_t id)
{
	if (s->where[id])
		q_del(s, id);
	q_push(s, s->w->gap[s->bpos[id]] <= s->horizon ? 1 : 2, id);
}

static void reuse_insert(struct sim *s, uint32_t id)
{
	while (s->nres >= s->cap) {
		uint32_t v = q_pick(s, s->qlen[2] ? 2 : 1);

		q_del(s, v);
		res_drop(s, v);
	}
	reuse_place(s, id);
	res_add(s, id);
}

static void reuse_teardown(struct sim *s)
{
	free(s->bpos);
}

static const struct sim_ops kvt_ops = {
	.setup = kvt_setup, .teardown = kvt_teardown, .access = kvt_access, .insert = kvt_insert,
};
static const struct sim_ops lru_ops = { .access = lru_access, .insert = lru_insert };
static const struct sim_ops s3_ops = { .setup = s3_setup, .access = s3_access,
				       .insert = s3_insert };
static const struct sim_ops arc_ops = { .access = arc_access, .insert = arc_insert };
static const struct sim_ops slru_ops = { .setup = slru_setup, .access = slru_access,
					 .insert = slru_insert };
static const struct sim_ops wt_ops = { .setup = wt_setup, .teardown = wt_teardown,
				       .begin = wt_begin, .access = wt_access,
				       .insert = wt_insert };
static const struct sim_ops lru2_ops = { .begin = lru2_begin, .access = lru2_access,
					 .insert = lru2_insert };
static const struct sim_ops lfu_ops = { .begin = lfu_begin, .access = lfu_access,
					.insert = lfu_insert };
static const struct sim_ops bip_ops = { .setup = bip_setup, .begin = bip_begin,
					.access = lru_access, .insert = bip_insert };
static const struct sim_ops bel_ops = { .begin = bel_begin, .access = bel_access,
					.insert = bel_insert };
static const struct sim_ops fit_ops = { .setup = fit_setup, .teardown = fit_teardown,
					.begin = ceil_begin, .access = fit_access,
					.insert = fit_insert };
static const struct sim_ops reuse_ops = { .setup = ceil_setup, .teardown = reuse_teardown,
					  .begin = ceil_begin, .access = reuse_place,
					  .insert = reuse_insert };

enum { P_KVT, P_KVT2Q, P_LRU, P_S3, P_S3G10, P_ARC, P_SLRU, P_WTLFU, P_WTLFU_EXACT, P_LRU2, P_LFU, P_BIP,
       P_FIT_OBS, P_FIT_HINT, P_REUSE, P_BELADY, NPOL };

static const struct polspec pols[NPOL] = {
	[P_KVT] = { "kvtier lru", "kvt-lru", &kvt_ops, 0, false, true },
	[P_KVT2Q] = { "kvtier 2q", "kvt-2q", &kvt_ops, 0, true, true },
	[P_LRU] = { "lru", "lru", &lru_ops, 0, false, true },
	[P_S3] = { "s3-fifo ghost 1x", "s3-g1x", &s3_ops, 1, false, true },
	[P_S3G10] = { "s3-fifo ghost 10x", "s3-g10x", &s3_ops, 10, false, true },
	[P_ARC] = { "arc", "arc", &arc_ops, 0, false, true },
	[P_SLRU] = { "slru", "slru", &slru_ops, 0, false, true },
	[P_WTLFU] = { "w-tinylfu", "w-tinylfu", &wt_ops, 0, false, true },
	[P_WTLFU_EXACT] = { "w-tinylfu exact", "w-tlfu-ex", &wt_ops, 0, true, true },
	[P_LRU2] = { "lru-2", "lru-2", &lru2_ops, 0, false, true },
	[P_LFU] = { "lfu-da", "lfu-da", &lfu_ops, 0, false, true },
	[P_BIP] = { "bip 1/8", "bip", &bip_ops, 0, false, true },
	[P_FIT_OBS] = { "fitted: observable", "fit-obs", &fit_ops, 0, false, false, 1 + FIT_OBS },
	[P_FIT_HINT] = { "fitted: + hints", "fit-hint", &fit_ops, 0, false, false, 1 + FIT_HINT },
	[P_REUSE] = { "knows reuse < 4x", "reuse-4x", &reuse_ops, 0, false, false },
	[P_BELADY] = { "belady (bypass)", "belady", &bel_ops, 0, false, false },
};

struct result {
	uint64_t hits;
	uint64_t hit_by[NCLASS];
	uint64_t nontail;
};

static void sim_free(struct sim *s)
{
	free(s->res);
	free(s->kids);
	free(s->prev);
	free(s->next);
	free(s->where);
	free(s->heap);
	free(s->hpos);
	free(s->ka);
	free(s->kb);
	free(s->freq);
	free(s->h1);
	free(s->h2);
	free(s->nxt);
}

/* Replay the whole trace through one policy at one capacity. */
static int sim_run(const struct work *w, const struct polspec *ps, uint32_t cap,
		   struct result *out)
{
	const struct trace *t = w->t;
	struct sim s = { .w = w, .ps = ps, .cap = cap ? cap : 1, .n = w->nblk };
	uint32_t *nacc = calloc(w->nblk, sizeof(*nacc));
	size_t links = (size_t)w->nblk + NQ + 1;
	int rc = -ENOMEM;

	memset(out, 0, sizeof(*out));
	s.sample = (uint64_t)s.cap * SAMPLE_FACTOR;
	s.res = calloc(w->nblk, 1);
	s.kids = calloc(w->nblk, sizeof(*s.kids));
	s.prev = malloc(links * sizeof(*s.prev));
	s.next = malloc(links * sizeof(*s.next));
	s.where = calloc(links, 1);
	s.heap = malloc(w->nblk * sizeof(*s.heap));
	s.hpos = calloc(w->nblk, sizeof(*s.hpos));
	s.ka = malloc(w->nblk * sizeof(*s.ka));
	s.kb = malloc(w->nblk * sizeof(*s.kb));
	s.freq = calloc(w->nblk, 1);
	s.h1 = malloc(w->nblk * sizeof(*s.h1));
	s.h2 = malloc(w->nblk * sizeof(*s.h2));
	s.nxt = malloc(w->nblk * sizeof(*s.nxt));
	if (!nacc || !s.res || !s.kids || !s.prev || !s.next || !s.where || !s.heap || !s.hpos ||
	    !s.ka || !s.kb || !s.freq || !s.h1 || !s.h2 || !s.nxt)
		goto out;
	for (int q = 1; q <= NQ; q++)
		s.prev[q_sent(&s, q)] = s.next[q_sent(&s, q)] = q_sent(&s, q);
	for (uint32_t i = 0; i < w->nblk; i++)
		s.h1[i] = s.h2[i] = -1;
	if (ps->ops->setup) {
		rc = ps->ops->setup(&s);
		if (rc)
			goto out_teardown;
	}

	for (size_t r = 0; r < t->nreq; r++) {
		const uint32_t *ids = w->blk + t->req[r].first;
		uint32_t n = t->req[r].n, k = 0;

		while (k < n && s.res[ids[k]])
			k++;
		out->hits += k;
		for (uint32_t i = 0; i < n; i++) {
			uint32_t c = nacc[ids[i]] < NCLASS - 1 ? nacc[ids[i]] : NCLASS - 1;

			if (i < k)
				out->hit_by[c]++;
			nacc[ids[i]]++;
		}
		if (ps->ops->begin)
			ps->ops->begin(&s, ids, n, w->next_req + t->req[r].first);
		for (uint32_t i = k; i-- > 0;)
			ps->ops->access(&s, ids[i]);
		for (uint32_t i = k; i < n; i++) {
			if (s.res[ids[i]])
				ps->ops->access(&s, ids[i]);
			else
				ps->ops->insert(&s, ids[i]);
		}
	}
	out->nontail = s.nontail;
	rc = 0;
out_teardown:
	if (ps->ops->teardown)
		ps->ops->teardown(&s);
out:
	sim_free(&s);
	free(nacc);
	return rc;
}

/* ---- options and output ---------------------------------------------------------- */

struct frac {
	double v;
	char label[16];
	uint32_t cap;
	struct result res[NPOL];
	int best_online; /* best online policy */
	int best_alt;    /* best online policy other than kvtier lru */
};

/* "0.05,1/16,0.25": each a fraction of the unique blocks in (0, 1]. */
static int parse_fracs(const char *text, struct frac *f, unsigned *nf)
{
	char buf[256], *save = NULL;

	if (strlen(text) >= sizeof(buf))
		return -EINVAL;
	snprintf(buf, sizeof(buf), "%s", text);
	*nf = 0;
	for (char *tok = strtok_r(buf, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
		double v;

		if (*nf == MAX_FRACS || strlen(tok) >= sizeof(f[0].label))
			return -EINVAL;
		if (bench_parse_frac(tok, &v))
			return -EINVAL;
		memset(&f[*nf], 0, sizeof(f[*nf]));
		f[*nf].v = v;
		snprintf(f[*nf].label, sizeof(f[0].label), "%s", tok);
		(*nf)++;
	}
	return *nf ? 0 : -EINVAL;
}

static int cmp_frac(const void *a, const void *b)
{
	const struct frac *x = a, *y = b;

	return x->v < y->v ? -1 : x->v > y->v;
}

static double ratio(uint64_t a, uint64_t b)
{
	return b ? (double)a / (double)b : 0;
}

static void usage(FILE *f)
{
	fprintf(f,
		"usage: bench_policy [-t TRACE] [-f FRACTIONS] [-o FILE]\n"
		"Replays a Mooncake trace (JSONL, 512-token hash_ids) through simulated host\n"
		"tiers, one per eviction policy (kvtier's own store/policy_lru.c among them),\n"
		"and prints their prefix hit ratios beside Belady's.\n"
		"  -t TRACE      the trace (default %s)\n"
		"  -f FRACTIONS  host-tier capacities as fractions of the unique blocks, comma-\n"
		"                separated, each a decimal or a/b in (0, 1]\n"
		"                (default 0.05,0.10,1/16,1/8,1/4,1/2)\n"
		"  -o FILE       also write the results to FILE\n"
		"  -h            this text\n",
		"/work/shared/traces/synthetic_trace.jsonl");
}

static void print_breakdown(struct bench_out *out, const struct work *w, const struct frac *f)
{
	const int rows[3] = { P_KVT, f->best_alt, P_BELADY };
	uint64_t adv[NCLASS], adv_all = 0;
	char title[64];

	snprintf(title, sizeof(title), "fraction %s (%u blocks), prior accesses:", f->label,
		 f->cap);
	bench_printf(out, "\n%-44s %8s %8s %8s %8s %8s %8s %8s\n", title, "0", "1", "2", "3", "4",
		     "5+", "all");
	bench_printf(out, "%-44s", "block accesses");
	for (int c = 0; c < NCLASS; c++)
		bench_printf(out, " %8llu", (unsigned long long)w->by_class[c]);
	bench_printf(out, " %8llu\n", (unsigned long long)w->total);
	for (int i = 0; i < 3; i++) {
		const struct result *r = &f->res[rows[i]];
		char name[64];

		snprintf(name, sizeof(name), "hits, %s%s", pols[rows[i]].name,
			 i == 1 ? " (best alternative)" : "");
		bench_printf(out, "%-44s", name);
		for (int c = 0; c < NCLASS; c++)
			bench_printf(out, " %8llu", (unsigned long long)r->hit_by[c]);
		bench_printf(out, " %8llu\n", (unsigned long long)r->hits);
	}
	for (int c = 0; c < NCLASS; c++) {
		int64_t d = (int64_t)f->res[P_BELADY].hit_by[c] - (int64_t)f->res[P_KVT].hit_by[c];

		adv[c] = d > 0 ? (uint64_t)d : 0;
		adv_all += adv[c];
	}
	bench_printf(out, "%-44s", "hit share of the class, kvtier lru");
	for (int c = 0; c < NCLASS; c++)
		bench_printf(out, " %8.3f", ratio(f->res[P_KVT].hit_by[c], w->by_class[c]));
	bench_printf(out, " %8.3f\n", ratio(f->res[P_KVT].hits, w->total));
	bench_printf(out, "%-44s", "hit share of the class, belady");
	for (int c = 0; c < NCLASS; c++)
		bench_printf(out, " %8.3f", ratio(f->res[P_BELADY].hit_by[c], w->by_class[c]));
	bench_printf(out, " %8.3f\n", ratio(f->res[P_BELADY].hits, w->total));
	bench_printf(out, "%-44s", "share of belady's extra hits over kvtier lru");
	for (int c = 0; c < NCLASS; c++)
		bench_printf(out, " %8.3f", ratio(adv[c], adv_all));
	bench_printf(out, " %8.3f\n", adv_all ? 1.0 : 0.0);
}

int main(int argc, char **argv)
{
	const char *trace_path = "/work/shared/traces/synthetic_trace.jsonl", *out_path = NULL;
	static struct frac fr[MAX_FRACS];
	unsigned nf = 0;
	struct trace t;
	struct work w;
	struct bench_out out = { 0 };
	struct result inf;
	kvt_key salt;
	kvt_salt_params sp = {
		.model_id = "kvtier-bench/replay", .kv_dtype = "bf16", .layout = "bench-replay",
		.block_tokens = TRACE_BLOCK_TOKENS,
	};
	uint64_t t0, t1;
	double best_gain = 0;
	int opt, rc, ret = 1, best_gain_pol = -1;
	unsigned best_gain_frac = 0;

	parse_fracs("0.05,0.10,1/16,1/8,1/4,1/2", fr, &nf);
	while ((opt = getopt(argc, argv, "t:f:o:h")) != -1) {
		switch (opt) {
		case 't': trace_path = optarg; break;
		case 'o': out_path = optarg; break;
		case 'f':
			if (parse_fracs(optarg, fr, &nf) != 0)
				goto bad_arg;
			break;
		case 'h':
			usage(stdout);
			return 0;
		default:
			goto bad_arg;
		}
	}
	if (optind != argc)
		goto bad_arg;
	/* Table columns in increasing capacity. */
	qsort(fr, nf, sizeof(fr[0]), cmp_frac);

	t0 = bench_now_ns();
	if (trace_load("bench_policy", trace_path, &t) != 0)
		return 1;
	/* Chain keys too, only to say whether they identify blocks as hash ids do. */
	rc = kvt_key_salt(&sp, &salt);
	if (rc == 0)
		rc = trace_index(&t, &salt);
	if (rc == 0)
		rc = work_build(&t, &w);
	if (rc == 0) {
		rc = work_build_fit(&t, &w);
		if (rc)
			work_free(&w);
	}
	if (rc) {
		fprintf(stderr, "bench_policy: indexing the trace: %s\n",
			rc == -ENOMEM ? "out of memory" : "failed");
		trace_free(&t);
		return 1;
	}
	/* The most any cache could hit, in this request model. */
	if (sim_run(&w, &pols[P_LRU], w.nblk, &inf) != 0)
		goto oom;
	for (unsigned i = 0; i < nf; i++) {
		struct frac *f = &fr[i];
		double cap = f->v * (double)w.nblk;

		f->cap = cap < 1 ? 1 : (uint32_t)cap;
		f->best_online = f->best_alt = -1;
		for (int p = 0; p < NPOL; p++) {
			if (sim_run(&w, &pols[p], f->cap, &f->res[p]) != 0)
				goto oom;
			if (!pols[p].online)
				continue;
			if (f->best_online < 0 || f->res[p].hits > f->res[f->best_online].hits)
				f->best_online = p;
			if (p != P_KVT &&
			    (f->best_alt < 0 || f->res[p].hits > f->res[f->best_alt].hits))
				f->best_alt = p;
		}
		if (f->best_alt >= 0) {
			double g = ratio(f->res[f->best_alt].hits, w.total) -
				   ratio(f->res[P_KVT].hits, w.total);

			if (best_gain_pol < 0 || g > best_gain) {
				best_gain = g;
				best_gain_pol = f->best_alt;
				best_gain_frac = i;
			}
		}
	}
	t1 = bench_now_ns();

	rc = bench_out_open(&out, out_path);
	if (rc) {
		fprintf(stderr, "bench_policy: cannot write %s: %s\n", out_path, strerror(-rc));
		goto out_work;
	}
	bench_print_machine(&out, "bench_policy: host-tier eviction policies on a Mooncake trace, "
			    "beside Belady (simulated; kvtier lru is store/policy_lru.c)");
	{
		uint32_t max_n = 0;

		for (size_t r = 0; r < t.nreq; r++)
			if (t.req[r].n > max_n)
				max_n = t.req[r].n;
		bench_printf(&out, "trace:   %s: %zu requests, %llu block accesses (512-token "
			     "blocks, at most %u per request)\n", trace_path, t.nreq,
			     (unsigned long long)w.total, max_n);
	}
	bench_printf(&out, "         %u unique blocks by hash id (%zu distinct kvtier chain keys); "
		     "hash ids with more than one parent: %zu; requests naming a hash id twice: "
		     "%zu\n", w.nblk, t.nunique, w.parent_conflicts, w.dup_requests);
	bench_printf(&out, "         infinite capacity would hit %.4f of the block accesses\n",
		     ratio(inf.hits, w.total));
	bench_printf(&out, "model:   a hash id is a block, its parent the hash id before it in the "
		     "request. Per request, in trace order: hit = the leading run of\n"
		     "         resident blocks; touch the hit blocks tail first; then insert the "
		     "missing blocks head to tail, evicting as needed (a resident\n"
		     "         block past the first miss is touched). Capacity = floor(fraction x "
		     "unique blocks). Chain tail = no resident children.\n");
	bench_printf(&out, "params:  kvtier lru: policy_lru_create(evict_scan %u), classify TAIL / "
		     "NONTAIL by resident children; lru: no chain preference;\n"
		     "         s3-fifo: small FIFO 10%%, ghost FIFO 1x or 10x capacity, 2-bit "
		     "frequencies; arc: T1/T2/B1/B2, adaptive p; slru: 80%% protected;\n"
		     "         w-tinylfu: window LRU 1%%, main SLRU 80%% protected, count-min sketch "
		     "%d rows x 4 x capacity (power of 2) 4-bit counters, halved every\n"
		     "         %d x capacity increments, window victim admitted if its estimate "
		     "beats the main victim's; w-tinylfu exact: exact 4-bit counters;\n"
		     "         lru-2: history kept for evicted blocks; lfu-da: priority = L + "
		     "frequency (4-bit, halved every %d x capacity accesses, kept for evicted\n"
		     "         blocks); bip: eps 1/8 per request, seed %d (Python's "
		     "random.Random(%d)); slru, w-tinylfu and bip prefer chain tails among the\n"
		     "         %u coldest of the queue they evict from; belady: furthest next use "
		     "(ties: smallest hash id), bypassing a block needed no sooner\n"
		     "         than every resident one.\n",
		     SCAN_WINDOW, SKETCH_ROWS, SAMPLE_FACTOR, SAMPLE_FACTOR, BIP_SEED, BIP_SEED,
		     SCAN_WINDOW);
	bench_printf(&out, "time:    %.2f s for the whole run (%u capacities x %d policies)\n\n",
		     (double)(t1 - t0) / 1e9, nf, NPOL);

	bench_printf(&out, "## prefix hit ratio (hit blocks / block accesses); * marks the best online "
		     "policy at each capacity\n");
	bench_printf(&out, "%-22s", "fraction");
	for (unsigned i = 0; i < nf; i++)
		bench_printf(&out, " %9s", fr[i].label);
	bench_printf(&out, "\n%-22s", "capacity (blocks)");
	for (unsigned i = 0; i < nf; i++)
		bench_printf(&out, " %9u", fr[i].cap);
	bench_printf(&out, "\n");
	for (int p = 0; p < NPOL; p++) {
		bench_printf(&out, "%-22s", pols[p].name);
		for (unsigned i = 0; i < nf; i++) {
			char cell[16];

			snprintf(cell, sizeof(cell), "%s%.4f", fr[i].best_online == p ? "*" : "",
				 ratio(fr[i].res[p].hits, w.total));
			bench_printf(&out, " %9s", cell);
		}
		bench_printf(&out, "\n");
	}
	bench_printf(&out, "%-22s", "best online");
	for (unsigned i = 0; i < nf; i++)
		bench_printf(&out, " %9s", pols[fr[i].best_online].tag);
	bench_printf(&out, "\n%-22s", "gap closed");
	for (unsigned i = 0; i < nf; i++) {
		double k = ratio(fr[i].res[P_KVT].hits, w.total);
		double b = ratio(fr[i].res[P_BELADY].hits, w.total);
		double o = ratio(fr[i].res[fr[i].best_online].hits, w.total);

		if (b > k)
			bench_printf(&out, " %9.3f", (o - k) / (b - k));
		else
			bench_printf(&out, " %9s", "-");
	}
	for (int p = P_FIT_OBS; p <= P_REUSE; p++) {
		char name[40];

		snprintf(name, sizeof(name), "gap closed, %s", pols[p].tag);
		bench_printf(&out, "\n%-22s", name);
		for (unsigned i = 0; i < nf; i++) {
			double k = ratio(fr[i].res[P_KVT].hits, w.total);
			double b = ratio(fr[i].res[P_BELADY].hits, w.total);
			double o = ratio(fr[i].res[p].hits, w.total);

			if (b > k)
				bench_printf(&out, " %9.3f", (o - k) / (b - k));
			else
				bench_printf(&out, " %9s", "-");
		}
	}
	bench_printf(&out, "\n%-22s", "kvtier lru nontail");
	for (unsigned i = 0; i < nf; i++)
		bench_printf(&out, " %9llu", (unsigned long long)fr[i].res[P_KVT].nontail);
	bench_printf(&out, "\n");
	bench_printf(&out, "gap closed = (best online - kvtier lru) / (belady - kvtier lru); kvtier "
		     "lru nontail = its victims that had resident children (no\n"
		     "chain tail among the %u coldest blocks)\n", SCAN_WINDOW);
	if (best_gain_pol >= 0) {
		double k = ratio(fr[best_gain_frac].res[P_KVT].hits, w.total);

		bench_printf(&out, "%s: %s at %s, %+.4f (%+.1f%% hits)\n",
			     best_gain > 0 ? "largest gain of an alternative over kvtier lru"
					   : "no alternative beats kvtier lru; the closest",
			     pols[best_gain_pol].name, fr[best_gain_frac].label, best_gain,
			     k > 0 ? 100.0 * best_gain / k : 0);
	}

	bench_printf(&out, "ceilings (not policies; they know the trace, so they are not online):\n"
		     "  fitted: hit density (LHD's, hits / expected cache time) by (class, age), "
		     "each class's next-access gap distribution measured over\n"
		     "  the whole trace, horizon %u x capacity, %u age buckets of capacity / %u, "
		     "victim = least dense chain tail of %d random resident blocks;\n"
		     "  observable classes: session turn (prior requests that reached the deepest "
		     "already-seen block of the request, <= 7) x prior accesses of\n"
		     "  the block (<= 4); + hints adds the request's output length (< 50, < 150, "
		     "more), its length (16-block buckets) and the block's quarter\n"
		     "  of it. knows reuse < 4x: knows whether each block is accessed again within "
		     "4 x capacity accesses, not when; keeps those, LRU within.\n",
		     FIT_HORIZON, FIT_NB, FIT_BUCKETS_PER_CAP, FIT_ASSOC);
	bench_printf(&out, "\n## hits by how many times the block had been accessed before "
		     "(the two smallest capacities)\n");
	for (unsigned i = 0; i < nf && i < 2; i++)
		if (fr[i].best_alt >= 0)
			print_breakdown(&out, &w, &fr[i]);
	ret = 0;
	if (bench_out_close(&out) != 0) {
		fprintf(stderr, "bench_policy: writing %s failed\n", out_path);
		ret = 1;
	}
	goto out_work;

oom:
	fprintf(stderr, "bench_policy: out of memory\n");
out_work:
	work_free(&w);
	trace_free(&t);
	return ret;

bad_arg:
	usage(stderr);
	return 2;
}
