/*
 * t2_plan.c - what cleaning keeps. Inside the committer's write transaction, the
 * planner evaluates the few candidate segments the owner offers, picks one, and
 * says which of its blocks to relocate before it is dropped: chain heads and
 * interiors, shallowest first, within a byte budget, never a child without its
 * parent. Tails go with the segment, so under pressure a chain shortens from its
 * end. docs/STORAGE.md ("What cleaning keeps") gives the policy and the reasons.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "t2_internal.h"

unsigned t2_keep_soft_pct = 25;
unsigned t2_keep_hard_pct = 50;
bool t2_keep_chains = true;

#define DEPTH_NONE UINT32_MAX
/* A fragment whose chain cannot be followed to a head in the index (its parent is
 * only in RAM, or was dropped) ranks after every fragment that can. */
#define DEPTH_UNROOTED (1u << 20)
/* Parent links followed up the index to place a fragment in its chain. */
#define DEPTH_WALK 64u
#define CUT_NONE UINT32_MAX

/* A block of the segment under evaluation. */
struct pblk {
	uint8_t kb[T2_KEY_BYTES];
	struct t2_entry e;
	int32_t vparent;     /* its parent's index among the segment's blocks, or -1 */
	uint32_t depth;      /* estimated position in its chain, 0 = head */
	bool has_child;      /* some indexed block names it as parent */
	bool ext_child;      /* ... and one of those lives in another segment */
	bool must;           /* dropping it would cut a chain that goes on elsewhere */
	bool keep;
};

struct eval {
	uint32_t seg;
	struct pblk *b;      /* sorted by key once scanned */
	size_t n, cap;
	size_t *order;       /* blocks with children, in order of priority */
	size_t norder, nkeep;
	uint64_t live, newest_ms, keep_bytes;
	uint32_t cut;        /* shallowest depth at which a chain is cut, CUT_NONE if none */
	bool refd;           /* holds a referenced block: cannot be cleaned */
	size_t walk_left;    /* parent links the depth walks may still follow */
};

static void eval_clear(struct eval *ev)
{
	free(ev->b);
	free(ev->order);
	memset(ev, 0, sizeof(*ev));
}

static int key_cmp(const void *a, const void *b)
{
	return memcmp(((const struct pblk *)a)->kb, ((const struct pblk *)b)->kb, T2_KEY_BYTES);
}

static int32_t find(const struct eval *ev, const uint8_t kb[T2_KEY_BYTES])
{
	size_t lo = 0, hi = ev->n;

	while (lo < hi) {
		size_t mid = lo + (hi - lo) / 2;
		int c = memcmp(ev->b[mid].kb, kb, T2_KEY_BYTES);

		if (c == 0)
			return (int32_t)mid;
		if (c < 0)
			lo = mid + 1;
		else
			hi = mid;
	}
	return -1;
}

/* The segment's indexed blocks, through byloc (rows whose block moved on are
 * skipped). */
static int scan(struct t2_index *ix, MDB_txn *txn, struct eval *ev)
{
	uint8_t lb[T2_LOC_BYTES];
	MDB_val k = { sizeof(lb), lb }, v;
	MDB_cursor *cur;
	int rc;

	t2_loc_encode(lb, ev->seg, 0);
	if ((rc = mdb_cursor_open(txn, ix->byloc, &cur)))
		return rc;
	for (rc = mdb_cursor_get(cur, &k, &v, MDB_SET_RANGE); rc == 0;
	     rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT)) {
		MDB_val bk, bv;
		struct pblk *p;
		uint64_t off;

		if (k.mv_size != T2_LOC_BYTES || t2_get32be(k.mv_data) != ev->seg)
			break;
		if (v.mv_size != T2_KEY_BYTES)
			continue;
		off = t2_get64be((const uint8_t *)k.mv_data + 4);
		if (ev->n == ev->cap) {
			size_t ncap = ev->cap ? ev->cap * 2 : 64;
			struct pblk *nb = realloc(ev->b, ncap * sizeof(*nb));

			if (!nb) {
				rc = ENOMEM;
				break;
			}
			ev->b = nb;
			ev->cap = ncap;
		}
		p = &ev->b[ev->n];
		memset(p, 0, sizeof(*p));
		memcpy(p->kb, v.mv_data, T2_KEY_BYTES);
		bk.mv_size = T2_KEY_BYTES;
		bk.mv_data = p->kb;
		rc = mdb_get(txn, ix->blocks, &bk, &bv);
		if (rc == MDB_NOTFOUND) {
			rc = 0;
			continue;
		}
		if (rc)
			break;
		if (t2_entry_decode(&p->e, bv.mv_data, bv.mv_size) != 0 || p->e.loc.seg != ev->seg ||
		    p->e.loc.off != off)
			continue;
		if (p->e.refs)
			ev->refd = true;
		p->vparent = -1;
		p->depth = DEPTH_NONE;
		ev->live += p->e.loc.rec_len;
		if (p->e.created_ms > ev->newest_ms)
			ev->newest_ms = p->e.created_ms;
		if (p->e.last_access_ms > ev->newest_ms)
			ev->newest_ms = p->e.last_access_ms;
		ev->n++;
	}
	mdb_cursor_close(cur);
	if (rc == MDB_NOTFOUND)
		rc = 0;
	if (rc == 0 && ev->n > 1)
		qsort(ev->b, ev->n, sizeof(*ev->b), key_cmp);
	return rc;
}

/* Children (from the children table) and parents within the segment. */
static int link(struct t2_index *ix, MDB_txn *txn, struct eval *ev)
{
	MDB_cursor *cur;
	int rc;

	if ((rc = mdb_cursor_open(txn, ix->children, &cur)))
		return rc;
	for (size_t i = 0; i < ev->n && rc == 0; i++) {
		struct pblk *p = &ev->b[i];
		MDB_val k = { T2_KEY_BYTES, p->kb }, v;

		for (rc = mdb_cursor_get(cur, &k, &v, MDB_SET); rc == 0;
		     rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT_DUP)) {
			int32_t j;

			if (v.mv_size != T2_KEY_BYTES)
				continue;
			j = find(ev, v.mv_data);
			if (j == (int32_t)i)
				continue;
			/* A children row exists exactly while its child is indexed. */
			p->has_child = true;
			if (j < 0)
				p->ext_child = true;
		}
		if (rc == MDB_NOTFOUND)
			rc = 0;
	}
	mdb_cursor_close(cur);
	for (size_t i = 0; i < ev->n && rc == 0; i++) {
		struct pblk *p = &ev->b[i];
		uint8_t pb[T2_KEY_BYTES];
		int32_t j;

		if (!p->e.has_parent)
			continue;
		memcpy(pb, p->kb, 4); /* the parent is of the same tenant */
		memcpy(pb + 4, p->e.parent.b, 16);
		j = find(ev, pb);
		p->vparent = j == (int32_t)i ? -1 : j;
	}
	return rc;
}

/* Blocks that must stay for no chain to be cut: those with a child elsewhere, and
 * their ancestors in the segment. */
static void mark_must(struct eval *ev)
{
	for (size_t i = 0; i < ev->n; i++) {
		size_t steps = 0;

		if (!ev->b[i].ext_child)
			continue;
		for (int32_t j = (int32_t)i; j >= 0 && !ev->b[j].must && steps <= ev->n;
		     j = ev->b[j].vparent, steps++)
			ev->b[j].must = true;
	}
}

/* Depth of a fragment's first block: how many parents up the index reach a head
 * (DEPTH_WALK at most; also when the evaluation's walking budget is spent). */
static uint32_t root_depth(struct t2_index *ix, MDB_txn *txn, struct eval *ev,
			   const struct pblk *p)
{
	uint8_t kb[T2_KEY_BYTES];

	if (!p->e.has_parent)
		return 0;
	memcpy(kb, p->kb, 4);
	memcpy(kb + 4, p->e.parent.b, 16);
	for (uint32_t steps = 1; steps <= DEPTH_WALK; steps++) {
		MDB_val k = { sizeof(kb), kb }, v;
		struct t2_entry e;

		if (ev->walk_left == 0)
			return DEPTH_WALK;
		ev->walk_left--;
		if (mdb_get(txn, ix->blocks, &k, &v) != 0 || t2_entry_decode(&e, v.mv_data, v.mv_size))
			return DEPTH_UNROOTED;
		if (!e.has_parent)
			return steps;
		memcpy(kb + 4, e.parent.b, 16);
	}
	return DEPTH_WALK;
}

static uint32_t depth_add(uint32_t d, size_t s)
{
	return (uint64_t)d + s >= DEPTH_NONE ? DEPTH_NONE - 1 : (uint32_t)(d + s);
}

/* Depth of every block with children (the others are never kept). Walks are
 * bounded: by the segment's size inside it (a cycle of parents ends there), by
 * DEPTH_WALK up the index per fragment, and by 8 links per block in all. */
static void depths(struct t2_index *ix, MDB_txn *txn, struct eval *ev)
{
	ev->walk_left = 8 * ev->n + DEPTH_WALK;
	for (size_t i = 0; i < ev->n; i++) {
		size_t j = i, steps = 0, x = i;
		uint32_t base;

		if (ev->b[i].depth != DEPTH_NONE || !ev->b[i].has_child)
			continue;
		while (ev->b[j].depth == DEPTH_NONE && ev->b[j].vparent >= 0 && steps < ev->n) {
			j = (size_t)ev->b[j].vparent;
			steps++;
		}
		if (ev->b[j].depth != DEPTH_NONE)
			base = ev->b[j].depth;
		else if (ev->b[j].vparent < 0)
			base = ev->b[j].depth = root_depth(ix, txn, ev, &ev->b[j]);
		else
			base = ev->b[j].depth = DEPTH_UNROOTED; /* a cycle of parents */
		for (size_t s = steps; s > 0 && x != j; s--) {
			ev->b[x].depth = depth_add(base, s);
			x = (size_t)ev->b[x].vparent;
		}
	}
}

static uint64_t newest(const struct t2_entry *e)
{
	return e->last_access_ms > e->created_ms ? e->last_access_ms : e->created_ms;
}

/* Priority of keeping. Blocks of fragments whose chain reaches a head in the index
 * come first; among them, those whose loss would cut a chain; then the shallowest,
 * the most recently used, the first written. Parents come before their children:
 * they share the first key, must is inherited upwards, and a parent is shallower. */
static int prio_cmp(const void *a, const void *b, void *arg)
{
	const struct eval *ev = arg;
	const struct pblk *x = &ev->b[*(const size_t *)a], *y = &ev->b[*(const size_t *)b];
	bool xr = x->depth < DEPTH_UNROOTED, yr = y->depth < DEPTH_UNROOTED;

	if (xr != yr)
		return xr ? -1 : 1;
	if (x->must != y->must)
		return x->must ? -1 : 1;
	if (x->depth != y->depth)
		return x->depth < y->depth ? -1 : 1;
	if (newest(&x->e) != newest(&y->e))
		return newest(&x->e) > newest(&y->e) ? -1 : 1;
	if (x->e.loc.off != y->e.loc.off)
		return x->e.loc.off < y->e.loc.off ? -1 : 1;
	return 0;
}

/* Choose what to keep: greedily in priority order, a block only with its parent,
 * within keep_hard for blocks that avoid a cut and keep_soft in all otherwise. */
static int choose(struct eval *ev, const struct t2_plan *p)
{
	ev->cut = CUT_NONE;
	ev->order = malloc((ev->n ? ev->n : 1) * sizeof(*ev->order));
	if (!ev->order)
		return ENOMEM;
	for (size_t i = 0; i < ev->n; i++)
		if (ev->b[i].has_child)
			ev->order[ev->norder++] = i;
	if (ev->norder > 1)
		qsort_r(ev->order, ev->norder, sizeof(*ev->order), prio_cmp, ev);
	for (size_t k = 0; k < ev->norder; k++) {
		struct pblk *b = &ev->b[ev->order[k]];
		uint64_t limit = b->must ? p->keep_hard : p->keep_soft;

		if ((b->vparent < 0 || ev->b[b->vparent].keep) &&
		    ev->keep_bytes + b->e.loc.rec_len <= limit) {
			b->keep = true;
			ev->keep_bytes += b->e.loc.rec_len;
			ev->nkeep++;
		} else if (b->must && b->depth < ev->cut) {
			ev->cut = b->depth;
		}
	}
	return 0;
}

static int evaluate(struct t2_index *ix, MDB_txn *txn, const struct t2_plan *p, struct eval *ev)
{
	int rc = scan(ix, txn, ev);

	if (rc || ev->refd)
		return rc;
	if (!t2_keep_chains) {
		ev->cut = CUT_NONE;
		return 0;
	}
	if ((rc = link(ix, txn, ev)))
		return rc;
	mark_must(ev);
	depths(ix, txn, ev);
	return choose(ev, p);
}

/* Is a a better segment to clean than b (which the owner preferred)? One that cuts
 * no chain, or cuts deepest; then fewer live bytes, in eighths of a segment; then
 * the colder one. */
static bool better(const struct eval *a, const struct eval *b, uint64_t seg_size)
{
	uint64_t qa = seg_size ? a->live * 8 / seg_size : 0, qb = seg_size ? b->live * 8 / seg_size : 0;

	qa = qa > 7 ? 7 : qa;
	qb = qb > 7 ? 7 : qb;

	if (a->cut != b->cut)
		return a->cut > b->cut;
	if (qa != qb)
		return qa < qb;
	return a->newest_ms < b->newest_ms;
}

static int answer(struct t2_plan *p, const struct eval *ev)
{
	size_t k = 0;

	p->items = malloc((ev->n ? ev->n : 1) * sizeof(*p->items));
	if (!p->items)
		return ENOMEM;
	for (size_t o = 0; o < ev->norder; o++) {
		const struct pblk *b = &ev->b[ev->order[o]];

		if (!b->keep)
			continue;
		t2_key_decode(&p->items[k].key, b->kb);
		p->items[k++].loc = b->e.loc;
	}
	p->nkeep = k;
	for (size_t i = 0; i < ev->n; i++) {
		const struct pblk *b = &ev->b[i];

		if (b->keep)
			continue;
		t2_key_decode(&p->items[k].key, b->kb);
		p->items[k++].loc = b->e.loc;
	}
	p->nitems = k;
	p->seg = (int)ev->seg;
	p->keep_bytes = ev->keep_bytes;
	p->cuts_chain = ev->cut != CUT_NONE;
	return 0;
}

int t2_plan_build(struct t2_index *ix, MDB_txn *txn, struct t2_plan *p)
{
	struct eval best, cur;
	bool have = false;
	int rc = 0;

	t2_plan_reset(p);
	memset(&best, 0, sizeof(best));
	for (size_t c = 0; c < p->ncand && c < T2_PLAN_CANDIDATES; c++) {
		memset(&cur, 0, sizeof(cur));
		cur.seg = p->cand[c];
		rc = evaluate(ix, txn, p, &cur);
		if (rc || cur.refd || (have && (!t2_keep_chains || !better(&cur, &best, p->seg_size)))) {
			eval_clear(&cur);
			if (rc)
				break;
			continue;
		}
		eval_clear(&best);
		best = cur;
		have = true;
	}
	if (rc == 0 && have)
		rc = answer(p, &best);
	eval_clear(&best);
	if (rc)
		t2_plan_reset(p);
	return rc;
}

void t2_plan_reset(struct t2_plan *p)
{
	free(p->items);
	p->items = NULL;
	p->nitems = p->nkeep = 0;
	p->keep_bytes = 0;
	p->cuts_chain = false;
	p->seg = -1;
}

void t2_plan_free(struct t2_plan *p)
{
	if (!p)
		return;
	free(p->items);
	free(p);
}
