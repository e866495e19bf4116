/*
 * t2.c - the NVMe tier on the owner thread: opening the store, appends and reads
 * through the I/O engine, space in segments (append-only, reclaimed by cleaning
 * whole segments after relocating the chain heads they hold), the view of keys
 * with operations not yet committed, and the completions the committer hands
 * back. docs/STORAGE.md explains the design.
 */
#include <errno.h>
#include <poll.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <fcntl.h>
#include <sys/eventfd.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include "t2.h"
#include "t2_internal.h"

#define T2_SEGMENT_MIN ((uint64_t)64 << 20)
/* Clean when fewer free segments than this remain (fewer for tiny stores). */
#define T2_RESERVE 2u
/* After the file system refused a new segment, wait this long before trying again. */
#define T2_CREATE_RETRY_MS 30000u
/* Access statistics are persisted at most this often (or when this many keys wait). */
#define T2_TOUCH_FLUSH_MS 1000u
#define T2_TOUCH_FLUSH_KEYS 65536u
/* Relocation during cleaning: records read or written at once, and the buffer
 * memory they may hold (one record at least, however large). */
#define T2_MOVE_INFLIGHT 4u
#define T2_MOVE_BYTES ((uint64_t)32 << 20)
/* No segment could be cleaned: ask the planner again after this long. */
#define T2_PLAN_RETRY_MS 50u

enum seg_state {
	SEG_ABSENT,   /* no file */
	SEG_FREE,     /* a file with nothing indexed in it */
	SEG_OPEN,     /* being appended to */
	SEG_SEALED,   /* full (or resumed read-only); may hold indexed records */
	SEG_MOVING,   /* chosen for cleaning: blocks worth keeping are being copied out;
		       * it still serves */
	SEG_CLEANING, /* its blocks are being dropped; nothing in it is served */
};

struct t2_seg {
	int fd;
	enum seg_state state;
	uint64_t append_off;  /* OPEN: where the next record goes */
	uint32_t pending;     /* writes in flight + queued ops on its blocks, not reaped */
	uint32_t readers;     /* reads in flight */
	bool drop_done;       /* CLEANING: the drop is committed; free once readers == 0 */
	bool sync_failed;     /* fdatasync failed: not appended to until cleaned */
	uint64_t sealed_seq;  /* when it was sealed, in seals since open (0: before) */
	struct t2_segrow row; /* as last committed */
};

enum req_kind { REQ_APPEND, REQ_READ, REQ_FLUSH, REQ_MOVE };

enum clean_phase {
	CLEAN_IDLE,
	CLEAN_PLANNING, /* a PLAN op is with the committer */
	CLEAN_MOVING,   /* relocating the plan's blocks out of t->cleaning */
	CLEAN_DROPPING, /* the DROP_SEG of t->cleaning is with the committer */
};

struct t2_req {
	struct io_req io;
	struct t2 *t;
	struct t2_req *next;
	enum req_kind kind;
	t2_done_fn done;
	void *arg;
	int status;
	struct t1_key key;
	kvt_key parent;
	bool has_parent;
	const uint8_t *rec;
	size_t rec_len;
	uint64_t len;
	kvt_block_desc desc;
	uint8_t codec;
	uint32_t seg;
	uint64_t off;
	uint8_t *buf;          /* MOVE: the record, read from seg/off, written to to_seg/to_off */
	uint32_t to_seg;
	uint64_t to_off;
	/* APPEND from pieces (t2_append_spans): one write each, at consecutive
	 * offsets; the record is written when the last is back. NULL: one write of rec. */
	struct t2_piece *pieces;
	struct io_req **piece_reqs;
	size_t npieces;
	size_t pieces_left;
	int piece_err;
};

struct t2_piece {
	struct io_req io;
	struct t2_req *r;
	const uint8_t *ptr;
	size_t len;
};

struct req_list {
	struct t2_req *head, **tail;
};

struct t2 {
	char *dir;
	int lock_fd;           /* DIR/t2.lock, held exclusively while open */
	struct io_engine *io;
	struct t2_index ix;
	struct t2_committer com;
	int efd;
	uint64_t seg_size, capacity;
	uint32_t nseg_max;     /* segments the capacity allows */
	uint32_t nseg;         /* size of segs (>= nseg_max; more if the store has more) */
	struct t2_seg *segs;
	int open_seg;          /* -1: none */
	int cleaning;          /* segment being cleaned (MOVING, DROPPING), -1: none */
	struct {
		enum clean_phase phase;
		struct t2_plan *plan;  /* MOVING: the planner's answer */
		size_t next;           /* MOVING: the next item to relocate */
		size_t inflight;       /* MOVING: relocations reading or writing */
		uint64_t inflight_bytes;
		uint64_t retry_ms;     /* nothing could be cleaned: not before this */
	} clean;
	uint64_t seal_clock;
	uint32_t reserve;
	bool direct;
	uint64_t create_retry_ms;
	struct t2_keymap pend;    /* keys with ops not yet reaped: their expected state */
	struct t2_keymap touches; /* accesses not yet persisted */
	uint64_t touch_flushed_ms;
	uint64_t seq;
	struct req_list ready;    /* completions for t2_reap */
	struct req_list waiting;  /* appends waiting for segment space */
	size_t appends, reads, flushes; /* requests not yet called back */
	size_t writes_in_io, reads_in_io;
	bool closing;
	struct t2_stats st;
};

/* ---- small helpers ------------------------------------------------------------------- */

static void list_init(struct req_list *l)
{
	l->head = NULL;
	l->tail = &l->head;
}

static void list_push(struct req_list *l, struct t2_req *r)
{
	r->next = NULL;
	*l->tail = r;
	l->tail = &r->next;
}

static struct t2_req *list_take(struct req_list *l)
{
	struct t2_req *r = l->head;

	list_init(l);
	return r;
}

static void kick(const struct t2 *t)
{
	uint64_t one = 1;

	while (write(t->efd, &one, sizeof(one)) < 0 && errno == EINTR)
		;
}

/* Finish a request at the next t2_reap (never inside the call that made it). */
static void complete_later(struct t2 *t, struct t2_req *r, int status)
{
	r->status = status;
	list_push(&t->ready, r);
	kick(t);
}

static bool key_is_zero(const kvt_key *k)
{
	for (size_t i = 0; i < sizeof(k->b); i++)
		if (k->b[i])
			return false;
	return true;
}

static bool seg_serves(const struct t2 *t, uint32_t seg)
{
	return seg < t->nseg &&
	       (t->segs[seg].state == SEG_OPEN || t->segs[seg].state == SEG_SEALED ||
		t->segs[seg].state == SEG_MOVING);
}

/*
 * The state key will have once every queued op is applied: the pending view
 * first, then the index. A block in a segment being cleaned is already gone.
 * No key: -EINVAL.
 */
static int expect(struct t2 *t, const struct t1_key *key, struct t2_entry *e)
{
	struct t2_kv *kv;
	int rc;

	if (!key)
		return -EINVAL;
	kv = t2_keymap_find(&t->pend, key);
	if (kv) {
		if (!kv->v.pend.present)
			return -ENOENT;
		*e = kv->v.pend.e;
	} else {
		rc = t2_index_get(&t->ix, key, e);
		if (rc)
			return rc;
	}
	return seg_serves(t, e->loc.seg) ? 0 : -ENOENT;
}

static struct t2_op *op_new(enum t2_op_kind kind, const struct t1_key *key)
{
	struct t2_op *op = calloc(1, sizeof(*op));

	if (op) {
		op->kind = kind;
		if (key)
			op->key = *key;
	}
	return op;
}

static void op_hold(struct t2 *t, struct t2_op *op, uint32_t seg)
{
	if (seg >= t->nseg || op->npend >= 2)
		return;
	op->pend_seg[op->npend++] = seg;
	t->segs[seg].pending++;
}

static void queue_op(struct t2 *t, struct t2_op *op, bool urgent)
{
	op->seq = ++t->seq;
	t2_commit_push(&t->com, op, op, 1, urgent);
}

/* Record the expected state of key after op (which is about to be queued). */
static int pend_set(struct t2 *t, const struct t1_key *key, bool present,
		    const struct t2_entry *e, uint64_t seq)
{
	struct t2_kv *kv = t2_keymap_get(&t->pend, key);

	if (!kv)
		return -ENOMEM;
	kv->v.pend.present = present;
	if (e)
		kv->v.pend.e = *e;
	kv->v.pend.seq = seq;
	return 0;
}

/* ---- segments ------------------------------------------------------------------------ */

static uint32_t segs_existing(const struct t2 *t)
{
	uint32_t n = 0;

	for (uint32_t i = 0; i < t->nseg; i++)
		n += t->segs[i].fd >= 0;
	return n;
}

static uint32_t segs_free(const struct t2 *t)
{
	uint32_t n = 0;

	for (uint32_t i = 0; i < t->nseg; i++)
		n += t->segs[i].state == SEG_FREE;
	return n;
}

/* Free segments plus those the capacity still allows creating. */
static uint32_t segs_available(const struct t2 *t)
{
	uint32_t n = segs_free(t), have = segs_existing(t);

	if (have < t->nseg_max && t2_mono_ms() >= t->create_retry_ms)
		n += t->nseg_max - have;
	return n;
}

static void seal_open(struct t2 *t)
{
	if (t->open_seg < 0)
		return;
	t->segs[t->open_seg].state = SEG_SEALED;
	t->segs[t->open_seg].sealed_seq = ++t->seal_clock;
	t->open_seg = -1;
}

static void seg_set_free(struct t2 *t, uint32_t id)
{
	struct t2_seg *s = &t->segs[id];

	s->state = s->fd >= 0 ? SEG_FREE : SEG_ABSENT;
	s->drop_done = false;
	s->sync_failed = false;
	s->append_off = 0;
}

/* Take a free segment (or make one) as the open segment. Returns 0, -ENOSPC, or
 * the error that kept a new segment file from being made. */
static int open_new_segment(struct t2 *t)
{
	for (uint32_t i = 0; i < t->nseg; i++) {
		struct t2_seg *s = &t->segs[i];

		if (s->state == SEG_FREE && s->readers == 0) {
			if (t2_segment_prepare(s->fd, t->seg_size) == -ENOSPC)
				t->st.enospc++;
			s->state = SEG_OPEN;
			s->append_off = 0;
			t->open_seg = (int)i;
			return 0;
		}
	}
	if (segs_existing(t) >= t->nseg_max || t2_mono_ms() < t->create_retry_ms)
		return -ENOSPC;
	for (uint32_t i = 0; i < t->nseg; i++) {
		struct t2_seg *s = &t->segs[i];
		int fd;

		if (s->state != SEG_ABSENT || s->fd >= 0 || s->pending || s->readers)
			continue;
		fd = t2_segment_create(t->dir, i, t->seg_size, &t->direct);
		if (fd < 0) {
			/* Work with what there is; try again later. */
			if (fd == -ENOSPC)
				t->st.enospc++;
			else
				t->st.io_errors++;
			t->create_retry_ms = t2_mono_ms() + T2_CREATE_RETRY_MS;
			return fd;
		}
		s->fd = fd;
		s->state = SEG_OPEN;
		s->append_off = 0;
		memset(&s->row, 0, sizeof(s->row));
		t->open_seg = (int)i;
		return 0;
	}
	return -ENOSPC;
}

/* Bytes that could be appended now without cleaning: the rest of the open
 * segment and every segment free or still allowed to be created. */
static uint64_t room_now(const struct t2 *t)
{
	uint64_t room = (uint64_t)segs_available(t) * t->seg_size;

	if (t->open_seg >= 0 && !t->segs[t->open_seg].sync_failed)
		room += t->seg_size - t->segs[t->open_seg].append_off;
	return room;
}

/* Order of preference among candidates: fewer live bytes (in eighths of a
 * segment: full segments count as equals), then sealed earlier. */
static bool cand_before(const struct t2 *t, uint32_t a, uint32_t b)
{
	uint64_t qa = t->segs[a].row.live_bytes * 8 / t->seg_size;
	uint64_t qb = t->segs[b].row.live_bytes * 8 / t->seg_size;

	qa = qa > 7 ? 7 : qa;
	qb = qb > 7 ? 7 : qb;

	if (qa != qb)
		return qa < qb;
	if (t->segs[a].sealed_seq != t->segs[b].sealed_seq)
		return t->segs[a].sealed_seq < t->segs[b].sealed_seq;
	return a < b;
}

/*
 * Start cleaning if free space runs low (or someone waits for space): offer the
 * planner the best few sealed segments with no referenced blocks and nothing
 * pending. It picks one and says which of its blocks to keep; those are relocated
 * (move_pump), then the segment's other blocks are dropped in the index, durably,
 * before it is reused.
 */
static void maybe_clean(struct t2 *t)
{
	struct t2_plan *plan;
	struct t2_op *op;
	uint64_t hard, soft, room;

	if (t->clean.phase != CLEAN_IDLE || t->closing || atomic_load(&t->ix.fatal))
		return;
	if (segs_available(t) >= t->reserve && !t->waiting.head)
		return;
	if (t2_mono_ms() < t->clean.retry_ms)
		return;
	plan = calloc(1, sizeof(*plan));
	if (!plan)
		return;
	for (uint32_t i = 0; i < t->nseg; i++) {
		const struct t2_seg *s = &t->segs[i];
		size_t at;

		if (s->state != SEG_SEALED || s->pending || s->row.ref_blocks)
			continue;
		/* Insertion into the short list, best first. */
		for (at = plan->ncand; at > 0 && cand_before(t, i, plan->cand[at - 1]); at--)
			if (at < T2_PLAN_CANDIDATES)
				plan->cand[at] = plan->cand[at - 1];
		if (at < T2_PLAN_CANDIDATES) {
			plan->cand[at] = i;
			if (plan->ncand < T2_PLAN_CANDIDATES)
				plan->ncand++;
		}
	}
	if (plan->ncand == 0) {
		free(plan);
		return;
	}
	/* Relocation must never wait for space (the space is what it makes), so
	 * its budget is also bounded by what is free now. */
	room = room_now(t);
	hard = t->seg_size / 100 * (t2_keep_hard_pct < 100 ? t2_keep_hard_pct : 99);
	soft = t->seg_size / 100 * (t2_keep_soft_pct < 100 ? t2_keep_soft_pct : 99);
	plan->keep_hard = hard < room ? hard : room;
	plan->keep_soft = soft < plan->keep_hard ? soft : plan->keep_hard;
	plan->seg_size = t->seg_size;
	plan->seg = -1;
	op = op_new(T2_OP_PLAN, NULL);
	if (!op) {
		free(plan);
		return;
	}
	op->plan = plan;
	t->clean.phase = CLEAN_PLANNING;
	queue_op(t, op, true);
}

/* Could waiting for space still help? (Otherwise appends fail with -ENOSPC.) */
static bool space_may_come(const struct t2 *t)
{
	if (t->cleaning >= 0 || t->clean.phase != CLEAN_IDLE)
		return true;
	for (uint32_t i = 0; i < t->nseg; i++) {
		const struct t2_seg *s = &t->segs[i];

		if (s->state == SEG_CLEANING || (s->state == SEG_FREE && s->readers))
			return true;
		/* Ops in flight may leave it cleanable (their commit reaps soon). */
		if (s->state == SEG_SEALED && s->pending)
			return true;
	}
	return false;
}

/* Room for rec_len bytes as things stand, without cleaning: 0 (*seg, *off set) or
 * -ENOSPC. */
static int reserve_now(struct t2 *t, size_t rec_len, uint32_t *seg, uint64_t *off)
{
	for (int attempt = 0; attempt < 2; attempt++) {
		if (t->open_seg >= 0) {
			struct t2_seg *s = &t->segs[t->open_seg];

			if (s->append_off + rec_len <= t->seg_size && !s->sync_failed) {
				*seg = (uint32_t)t->open_seg;
				*off = s->append_off;
				s->append_off += rec_len;
				return 0;
			}
			seal_open(t);
		}
		if (open_new_segment(t) != 0)
			break;
	}
	return -ENOSPC;
}

/* Room for rec_len bytes: 0 (*seg, *off set), -EAGAIN (wait: cleaning is on its
 * way), or -ENOSPC. */
static int reserve_space(struct t2 *t, size_t rec_len, uint32_t *seg, uint64_t *off)
{
	if (reserve_now(t, rec_len, seg, off) == 0)
		return 0;
	maybe_clean(t);
	return space_may_come(t) ? -EAGAIN : -ENOSPC;
}

/* ---- appends ------------------------------------------------------------------------- */

static void write_done(struct io_req *io);
static void piece_done(struct io_req *io);

/* One request for the engine: len bytes of buf at off in fd; done(io) runs from
 * io_reap with io->arg = arg. */
static void io_set(struct io_req *io, int fd, bool write, void *buf, size_t len, uint64_t off,
		   void (*done)(struct io_req *), void *arg)
{
	memset(io, 0, sizeof(*io));
	io->fd = fd;
	io->write = write;
	io->buf = buf;
	io->len = len;
	io->off = off;
	io->done = done;
	io->arg = arg;
}

static void submit_write(struct t2 *t, struct t2_req *r)
{
	struct t2_seg *s = &t->segs[r->seg];

	s->pending++;
	t->writes_in_io++;
	if (r->pieces) {
		uint64_t off = r->off;

		r->pieces_left = r->npieces;
		r->piece_err = 0;
		for (size_t i = 0; i < r->npieces; i++) {
			struct t2_piece *p = &r->pieces[i];

			io_set(&p->io, s->fd, true, (void *)p->ptr, p->len, off, piece_done, p);
			r->piece_reqs[i] = &p->io;
			off += p->len;
		}
		io_submit(t->io, r->piece_reqs, r->npieces);
		return;
	}
	io_set(&r->io, s->fd, true, (void *)r->rec, r->rec_len, r->off, write_done, r);
	struct io_req *one = &r->io;

	io_submit(t->io, &one, 1);
}

static void fail_append(struct t2 *t, struct t2_req *r, int status)
{
	if (status == -ENOSPC)
		t->st.enospc++;
	complete_later(t, r, status);
}

/* Give space to waiting appends, in order. */
static void run_waiting(struct t2 *t)
{
	while (t->waiting.head) {
		struct t2_req *r = t->waiting.head;
		int rc;

		if (t->closing || atomic_load(&t->ix.fatal)) {
			rc = t->closing ? -ECANCELED : T2_EFATAL;
		} else {
			rc = reserve_space(t, r->rec_len, &r->seg, &r->off);
			if (rc == -EAGAIN)
				return;
		}
		t->waiting.head = r->next;
		if (!t->waiting.head)
			t->waiting.tail = &t->waiting.head;
		if (rc == 0)
			submit_write(t, r);
		else
			fail_append(t, r, rc);
	}
}

static void write_finished(struct t2_req *r, int result);

static void write_done(struct io_req *io)
{
	write_finished(io->arg, io->result);
}

/* One piece of a record is back; the record is written when all are (the first
 * error, if any, is the record's). */
static void piece_done(struct io_req *io)
{
	struct t2_piece *p = io->arg;
	struct t2_req *r = p->r;

	if (io->result < 0 && !r->piece_err)
		r->piece_err = io->result;
	if (--r->pieces_left == 0)
		write_finished(r, r->piece_err);
}

static void write_finished(struct t2_req *r, int result)
{
	struct t2 *t = r->t;
	struct t2_entry old, e;
	struct t2_op *op;
	int rc;

	t->writes_in_io--;
	if (result < 0) {
		t->segs[r->seg].pending--;
		t->st.io_errors++;
		fail_append(t, r, result == -ENOSPC ? -ENOSPC : -EIO);
		return;
	}
	op = op_new(T2_OP_INSERT, &r->key);
	if (!op) {
		t->segs[r->seg].pending--;
		complete_later(t, r, -ENOMEM);
		return;
	}
	memset(&e, 0, sizeof(e));
	e.loc.seg = r->seg;
	e.loc.off = r->off;
	e.loc.rec_len = r->rec_len;
	e.len = r->len;
	e.desc = r->desc;
	e.codec = r->codec;
	e.created_ms = t2_now_ms();
	e.last_access_ms = e.created_ms;
	e.has_parent = r->has_parent;
	e.parent = r->parent;
	op->e = e;
	op->fd = t->segs[r->seg].fd;
	op->req = r;
	/* The write's hold on its segment passes to the op. */
	op->pend_seg[op->npend++] = r->seg;
	rc = expect(t, &r->key, &old);
	if (rc == 0) {
		e.refs = old.refs;
		op_hold(t, op, old.loc.seg);
	}
	queue_op(t, op, false);
	/* Readable at once (the bytes are written); durable and acknowledged at the
	 * commit. Without memory for the pending view it shows after the commit. */
	(void)pend_set(t, &r->key, true, &e, op->seq);
}

/* Everything t2_append and t2_append_spans share, once r holds the request: the
 * checks of the record (its first head_len bytes at head), then space. */
static void append_start(struct t2 *t, struct t2_req *r, const uint8_t *head, size_t head_len)
{
	kvt_block_desc rdesc;
	uint64_t rlen, reclen;
	int rc;

	t->appends++;
	if (t->closing) {
		complete_later(t, r, -ECANCELED);
		return;
	}
	if (atomic_load(&t->ix.fatal)) {
		complete_later(t, r, T2_EFATAL);
		return;
	}
	if (r->rec_len > t->seg_size) {
		complete_later(t, r, -EFBIG);
		return;
	}
	/* Never write a record under the wrong key or with a description that
	 * disagrees with it: the header is checked now, as a reader would. */
	rc = t2_record_check_head(head, head_len, r->rec_len, &r->key, &rlen, &rdesc, &reclen);
	if (rc || reclen != r->rec_len || rlen != r->len || rdesc.dtype != r->desc.dtype ||
	    rdesc.layout != r->desc.layout || rdesc.layers != r->desc.layers ||
	    rdesc.tokens != r->desc.tokens || rdesc.reserved0 != r->desc.reserved0 ||
	    rdesc.reserved1 != r->desc.reserved1) {
		complete_later(t, r, -EINVAL);
		return;
	}
	/* Appends keep their order: behind anyone already waiting for space. */
	if (t->waiting.head) {
		list_push(&t->waiting, r);
		return;
	}
	rc = reserve_space(t, r->rec_len, &r->seg, &r->off);
	if (rc == 0)
		submit_write(t, r);
	else if (rc == -EAGAIN)
		list_push(&t->waiting, r);
	else
		fail_append(t, r, rc);
}

static struct t2_req *req_alloc(struct t2 *t, enum req_kind kind, t2_done_fn done, void *arg)
{
	struct t2_req *r = calloc(1, sizeof(*r));

	if (!r)
		return NULL;
	r->t = t;
	r->kind = kind;
	r->done = done;
	r->arg = arg;
	return r;
}

/* A caller's read or flush, counted in *count until its done runs. NULL when it
 * is already answered: out of memory, done(-ENOMEM) at once (there is no request
 * to defer it with); closing, -ECANCELED from the next reap. */
static struct t2_req *caller_req(struct t2 *t, enum req_kind kind, t2_done_fn done, void *arg,
				 size_t *count)
{
	struct t2_req *r = req_alloc(t, kind, done, arg);

	if (!r) {
		if (done)
			done(arg, -ENOMEM);
		return NULL;
	}
	(*count)++;
	if (t->closing) {
		complete_later(t, r, -ECANCELED);
		return NULL;
	}
	return r;
}

static struct t2_req *append_req(struct t2 *t, const struct t1_key *key, const kvt_key *parent,
				 size_t rec_len, uint64_t len, const kvt_block_desc *desc,
				 uint8_t codec, t2_done_fn done, void *arg)
{
	struct t2_req *r = req_alloc(t, REQ_APPEND, done, arg);

	if (!r)
		return NULL;
	r->rec_len = rec_len;
	r->len = len;
	r->codec = codec;
	if (key)
		r->key = *key;
	if (desc)
		r->desc = *desc;
	if (parent && !key_is_zero(parent)) {
		r->parent = *parent;
		r->has_parent = true;
	}
	return r;
}

void t2_append(struct t2 *t, const struct t1_key *key, const kvt_key *parent, const uint8_t *rec,
	       size_t rec_len, uint64_t len, const kvt_block_desc *desc, uint8_t codec,
	       t2_done_fn done, void *arg)
{
	struct t2_req *r = append_req(t, key, parent, rec_len, len, desc, codec, done, arg);

	if (!r) {
		/* Nothing to queue the answer on: the one case answered inside the call. */
		if (done)
			done(arg, -ENOMEM);
		return;
	}
	r->rec = rec;
	if (!key || !desc || !rec || rec_len == 0 || rec_len % T2_ALIGN ||
	    ((uintptr_t)rec & (T2_ALIGN - 1))) {
		t->appends++;
		complete_later(t, r, -EINVAL);
		return;
	}
	append_start(t, r, rec, rec_len);
}

void t2_append_spans(struct t2 *t, const struct t1_key *key, const kvt_key *parent,
		     const struct t2_span *spans, size_t nspans, size_t rec_len, uint64_t len,
		     const kvt_block_desc *desc, uint8_t codec, t2_done_fn done, void *arg)
{
	struct t2_req *r = append_req(t, key, parent, rec_len, len, desc, codec, done, arg);
	uint64_t sum = 0;
	bool bad = !key || !desc || !spans || nspans == 0 || rec_len == 0;

	if (r && nspans) {
		r->pieces = calloc(nspans, sizeof(*r->pieces));
		r->piece_reqs = calloc(nspans, sizeof(*r->piece_reqs));
	}
	if (!r || (nspans && (!r->pieces || !r->piece_reqs))) {
		if (r) {
			free(r->pieces);
			free(r->piece_reqs);
			free(r);
		}
		if (done)
			done(arg, -ENOMEM);
		return;
	}
	r->npieces = nspans;
	for (size_t i = 0; i < nspans && !bad; i++) {
		bad = !spans[i].ptr || spans[i].len == 0 || spans[i].len % T2_ALIGN ||
		      ((uintptr_t)spans[i].ptr & (T2_ALIGN - 1));
		r->pieces[i] = (struct t2_piece){ .r = r, .ptr = spans[i].ptr,
						  .len = (size_t)spans[i].len };
		sum += spans[i].len;
	}
	if (bad || sum != rec_len) {
		t->appends++;
		complete_later(t, r, -EINVAL);
		return;
	}
	append_start(t, r, spans[0].ptr, (size_t)spans[0].len);
}

/* ---- reads --------------------------------------------------------------------------- */

static void seg_reader_done(struct t2 *t, uint32_t id)
{
	struct t2_seg *s = &t->segs[id];

	s->readers--;
	if (s->readers == 0 && s->state == SEG_CLEANING && s->drop_done)
		seg_set_free(t, id);
}

static void read_done(struct io_req *io)
{
	struct t2_req *r = io->arg;
	struct t2 *t = r->t;
	int status = 0;

	t->reads_in_io--;
	t->reads--;
	seg_reader_done(t, r->seg);
	t->st.reads++;
	if (io->result < 0) {
		t->st.io_errors++;
		status = -EIO;
	} else {
		t->st.read_bytes += r->rec_len;
	}
	if (r->done)
		r->done(r->arg, status);
	free(r);
	/* A segment may have become free for appends waiting on it. */
	if (t->waiting.head)
		kick(t);
}

void t2_read(struct t2 *t, const struct t1_key *key, uint8_t *buf, size_t cap, t2_done_fn done,
	     void *arg)
{
	struct t2_req *r = caller_req(t, REQ_READ, done, arg, &t->reads);
	struct t2_entry e;
	int rc;

	if (!r)
		return;
	if (!key || !buf || ((uintptr_t)buf & (T2_ALIGN - 1))) {
		complete_later(t, r, -EINVAL);
		return;
	}
	r->key = *key;
	rc = expect(t, key, &e);
	if (rc) {
		complete_later(t, r, rc);
		return;
	}
	if (cap < e.loc.rec_len) {
		complete_later(t, r, -ENOBUFS);
		return;
	}
	r->seg = e.loc.seg;
	r->off = e.loc.off;
	r->rec_len = e.loc.rec_len;
	t->segs[r->seg].readers++;
	t->reads_in_io++;
	io_set(&r->io, t->segs[r->seg].fd, false, buf, r->rec_len, r->off, read_done, r);
	struct io_req *one = &r->io;

	io_submit(t->io, &one, 1);
}

/* ---- cleaning: relocating what a segment should keep ----------------------------------- */

void (*t2_clean_notify)(const struct t1_key *key, bool dropped, void *arg);
void *t2_clean_notify_arg;

static void move_pump(struct t2 *t);

/* Back to serving from the segment: cleaning it is abandoned. */
static void clean_abandon(struct t2 *t)
{
	if (t->cleaning >= 0 && t->segs[t->cleaning].state == SEG_MOVING)
		t->segs[t->cleaning].state = SEG_SEALED;
	t->cleaning = -1;
	t->clean.phase = CLEAN_IDLE;
	t2_plan_free(t->clean.plan);
	t->clean.plan = NULL;
}

/* Every relocation has finished (or failed): drop what is left of the segment. */
static void move_finish(struct t2 *t)
{
	struct t2_plan *p = t->clean.plan;
	uint32_t seg = (uint32_t)t->cleaning;
	struct t2_op *op;

	if (t->closing || atomic_load(&t->ix.fatal)) {
		clean_abandon(t);
		return;
	}
	op = op_new(T2_OP_DROP_SEG, NULL);
	if (!op) {
		clean_abandon(t);
		return;
	}
	if (t2_clean_notify) {
		for (size_t i = 0; i < p->nitems; i++) {
			struct t2_entry e;

			if (expect(t, &p->items[i].key, &e) == 0 && e.loc.seg == seg &&
			    e.loc.off == p->items[i].loc.off)
				t2_clean_notify(&p->items[i].key, true, t2_clean_notify_arg);
		}
	}
	t2_plan_free(p);
	t->clean.plan = NULL;
	op->seg = seg;
	t->segs[seg].state = SEG_CLEANING;
	t->segs[seg].drop_done = false;
	t->clean.phase = CLEAN_DROPPING;
	queue_op(t, op, true);
}

/* A relocation is over; moved: its MOVE op took over the hold on the destination. */
static void move_end(struct t2 *t, struct t2_req *r, bool moved)
{
	if (!moved)
		t->segs[r->to_seg].pending--;
	t->clean.inflight--;
	t->clean.inflight_bytes -= r->rec_len;
	free(r->buf);
	free(r);
	move_pump(t);
}

static void move_write_done(struct io_req *io)
{
	struct t2_req *r = io->arg;
	struct t2 *t = r->t;
	struct t2_entry e, n;
	struct t2_op *op;

	t->writes_in_io--;
	if (io->result < 0) {
		t->st.io_errors++;
		move_end(t, r, false);
		return;
	}
	/* Deleted or replaced while it was being copied: the copy is dead space. */
	if (expect(t, &r->key, &e) != 0 || e.loc.seg != r->seg || e.loc.off != r->off ||
	    e.loc.rec_len != r->rec_len) {
		move_end(t, r, false);
		return;
	}
	op = op_new(T2_OP_MOVE, &r->key);
	if (!op) {
		move_end(t, r, false);
		return;
	}
	n = e;
	n.loc.seg = r->to_seg;
	n.loc.off = r->to_off;
	op->e = n;
	op->from = e.loc;
	op->fd = t->segs[r->to_seg].fd;
	op->pend_seg[op->npend++] = r->to_seg;
	op_hold(t, op, r->seg);
	queue_op(t, op, false);
	/* Served from the copy at once; without memory for the view, from the
	 * old place until the segment stops serving, then from the index. */
	(void)pend_set(t, &r->key, true, &n, op->seq);
	if (t2_clean_notify)
		t2_clean_notify(&r->key, false, t2_clean_notify_arg);
	move_end(t, r, true);
}

static void move_read_done(struct io_req *io)
{
	struct t2_req *r = io->arg;
	struct t2 *t = r->t;
	uint64_t reclen = 0;
	struct io_req *one = &r->io;

	t->reads_in_io--;
	seg_reader_done(t, r->seg);
	if (io->result < 0) {
		t->st.io_errors++;
		move_end(t, r, false);
		return;
	}
	if (t->closing || atomic_load(&t->ix.fatal)) {
		move_end(t, r, false);
		return;
	}
	/* The header says it is this key's record, whole: a damaged one is not
	 * carried forward (it goes with the segment). Frame checksums travel with
	 * the record and are verified by every reader, as for any record. */
	if (t2_record_check(r->buf, r->rec_len, &r->key, NULL, NULL, &reclen, NULL) != 0 ||
	    reclen != r->rec_len) {
		t->st.checksum_failures++;
		move_end(t, r, false);
		return;
	}
	t->writes_in_io++;
	io_set(&r->io, t->segs[r->to_seg].fd, true, r->buf, r->rec_len, r->to_off, move_write_done,
	       r);
	io_submit(t->io, &one, 1);
}

/* Start relocating item: false if it is not started (gone, or no memory). Stops
 * the relocation altogether when there is no room left without cleaning. */
static bool move_start(struct t2 *t, const struct t2_plan_item *item)
{
	uint32_t seg = (uint32_t)t->cleaning;
	struct t2_entry e;
	struct t2_req *r;
	struct io_req *one;
	void *buf = NULL;

	if (expect(t, &item->key, &e) != 0 || e.loc.seg != seg || e.loc.off != item->loc.off)
		return false;
	r = calloc(1, sizeof(*r));
	if (!r || posix_memalign(&buf, T2_ALIGN, e.loc.rec_len) != 0) {
		free(r);
		return false;
	}
	if (reserve_now(t, e.loc.rec_len, &r->to_seg, &r->to_off) != 0) {
		/* The plan is in order of priority: what is left is dropped. */
		t->clean.next = t->clean.plan->nkeep;
		free(buf);
		free(r);
		return false;
	}
	t->segs[r->to_seg].pending++; /* until the MOVE op is reaped */
	r->t = t;
	r->kind = REQ_MOVE;
	r->key = item->key;
	r->seg = seg;
	r->off = e.loc.off;
	r->rec_len = e.loc.rec_len;
	r->buf = buf;
	t->clean.inflight++;
	t->clean.inflight_bytes += r->rec_len;
	t->segs[seg].readers++;
	t->reads_in_io++;
	io_set(&r->io, t->segs[seg].fd, false, buf, r->rec_len, r->off, move_read_done, r);
	one = &r->io;
	io_submit(t->io, &one, 1);
	return true;
}

/* Keep a few relocations in flight; when all are done, drop the rest. */
static void move_pump(struct t2 *t)
{
	while (t->clean.phase == CLEAN_MOVING && t->clean.next < t->clean.plan->nkeep &&
	       t->clean.inflight < T2_MOVE_INFLIGHT &&
	       (t->clean.inflight == 0 || t->clean.inflight_bytes < T2_MOVE_BYTES)) {
		if (t->closing || atomic_load(&t->ix.fatal)) {
			t->clean.next = t->clean.plan->nkeep;
			break;
		}
		(void)move_start(t, &t->clean.plan->items[t->clean.next++]);
	}
	if (t->clean.phase == CLEAN_MOVING && t->clean.next >= t->clean.plan->nkeep &&
	    t->clean.inflight == 0)
		move_finish(t);
}

/* The planner answered: start relocating out of the segment it chose. */
static void plan_done(struct t2 *t, struct t2_op *op)
{
	struct t2_plan *p = op->plan;
	struct t2_seg *s;

	t->clean.phase = CLEAN_IDLE;
	if (!p || t->closing || atomic_load(&t->ix.fatal))
		return;
	if (op->status != 0 || p->seg < 0 || (uint32_t)p->seg >= t->nseg) {
		/* Nothing cleanable, or no memory to plan: not again at once. */
		t->clean.retry_ms = t2_mono_ms() + T2_PLAN_RETRY_MS;
		return;
	}
	s = &t->segs[p->seg];
	/* Something touched it since it was offered: plan again. */
	if (s->state != SEG_SEALED || s->pending || s->row.ref_blocks)
		return;
	op->plan = NULL;
	s->state = SEG_MOVING;
	t->cleaning = p->seg;
	t->clean.plan = p;
	t->clean.next = 0;
	t->clean.phase = CLEAN_MOVING;
	move_pump(t);
}

/* ---- index operations ---------------------------------------------------------------- */

int t2_lookup(struct t2 *t, const struct t1_key *key, struct t2_info *info)
{
	struct t2_entry e;
	int rc;

	rc = expect(t, key, &e);
	if (rc)
		return rc;
	if (info) {
		info->len = e.len;
		info->record_len = e.loc.rec_len;
		info->desc = e.desc;
		info->codec = e.codec;
		info->refs = e.refs;
		if (e.has_parent)
			info->parent = e.parent;
		else
			memset(&info->parent, 0, sizeof(info->parent));
	}
	return 0;
}

/* Queue a delete, ref or unref whose expected result is e (present or not). */
static int queue_key_op(struct t2 *t, enum t2_op_kind kind, const struct t1_key *key,
			const struct t2_entry *cur, const struct t2_entry *e, bool present)
{
	struct t2_op *op;

	if (t->closing)
		return -ECANCELED;
	op = op_new(kind, key);
	if (!op)
		return -ENOMEM;
	if (pend_set(t, key, present, e, t->seq + 1) < 0) {
		free(op);
		return -ENOMEM;
	}
	op_hold(t, op, cur->loc.seg);
	queue_op(t, op, false);
	return 0;
}

int t2_delete(struct t2 *t, const struct t1_key *key)
{
	struct t2_entry e;
	int rc;

	rc = expect(t, key, &e);
	if (rc)
		return rc;
	if (e.refs)
		return -EBUSY;
	return queue_key_op(t, T2_OP_DELETE, key, &e, NULL, false);
}

void t2_corrupt(struct t2 *t, const struct t1_key *key)
{
	struct t2_entry e;
	struct t2_op *op;

	t->st.checksum_failures++;
	if (!key || t->closing || expect(t, key, &e) != 0)
		return;
	/* Bad bytes help nobody, referenced or not: the entry goes (a context that
	 * needs the block sees a miss, never wrong data). */
	op = op_new(T2_OP_DELETE, key);
	if (!op)
		return;
	op->force = true;
	if (pend_set(t, key, false, NULL, t->seq + 1) < 0) {
		free(op);
		return;
	}
	op_hold(t, op, e.loc.seg);
	queue_op(t, op, false);
}

static int change_refs(struct t2 *t, const struct t1_key *key, int delta)
{
	struct t2_entry e, n;
	int rc;

	rc = expect(t, key, &e);
	if (rc)
		return rc;
	if (delta < 0 && e.refs == 0)
		return -ENOENT;
	if (delta > 0 && e.refs == UINT32_MAX)
		return -EOVERFLOW;
	n = e;
	n.refs = delta > 0 ? e.refs + 1 : e.refs - 1;
	return queue_key_op(t, delta > 0 ? T2_OP_REF : T2_OP_UNREF, key, &e, &n, true);
}

int t2_ref(struct t2 *t, const struct t1_key *key)
{
	return change_refs(t, key, 1);
}

int t2_unref(struct t2 *t, const struct t1_key *key)
{
	return change_refs(t, key, -1);
}

struct ref_walk {
	const struct t2 *t;
	int (*fn)(void *arg, const struct t1_key *key, uint32_t refs);
	void *arg;
};

static int ref_walk_entry(void *arg, const struct t1_key *key, const struct t2_entry *e)
{
	struct ref_walk *w = arg;

	if (!e->refs || !seg_serves(w->t, e->loc.seg))
		return 0;
	return w->fn(w->arg, key, e->refs);
}

int t2_foreach_ref(struct t2 *t, int (*fn)(void *arg, const struct t1_key *key, uint32_t refs),
		   void *arg)
{
	struct ref_walk w = { t, fn, arg };

	/* The index alone is the truth only while nothing is queued. */
	if (t->pend.count)
		return -EBUSY;
	return t2_index_foreach(&t->ix, ref_walk_entry, &w);
}

void t2_touch(struct t2 *t, const struct t1_key *key)
{
	struct t2_kv *kv;

	if (!key)
		return;
	kv = t2_keymap_get(&t->touches, key);
	if (!kv)
		return; /* statistics only: losing one access is fine */
	kv->v.touch.last_ms = t2_now_ms();
	kv->v.touch.count++;
}

size_t t2_children(struct t2 *t, const struct t1_key *key, struct t1_key *out, size_t cap)
{
	if (!key || !out)
		return 0;
	return t2_index_children(&t->ix, key, out, cap);
}

void t2_flush(struct t2 *t, t2_done_fn done, void *arg)
{
	struct t2_req *r = caller_req(t, REQ_FLUSH, done, arg, &t->flushes);
	struct t2_op *op;

	if (!r)
		return;
	op = op_new(T2_OP_FLUSH, NULL);
	if (!op) {
		complete_later(t, r, -ENOMEM);
		return;
	}
	op->req = r;
	queue_op(t, op, true);
}

bool t2_has_failed(const struct t2 *t)
{
	return atomic_load(&t->ix.fatal) != 0;
}

/* Persist the access statistics gathered since the last time. */
static void flush_touches(struct t2 *t)
{
	struct t2_keymap m = t->touches;

	memset(&t->touches, 0, sizeof(t->touches));
	t->touch_flushed_ms = t2_mono_ms();
	for (size_t i = 0; m.slots && i <= m.mask; i++) {
		struct t2_kv *kv = &m.slots[i];
		struct t2_op *op;

		if (!kv->used)
			continue;
		op = op_new(T2_OP_TOUCH, &kv->key);
		if (!op)
			break;
		op->touch_ms = kv->v.touch.last_ms;
		op->touch_count = kv->v.touch.count;
		queue_op(t, op, false);
	}
	t2_keymap_free(&m);
}

/* ---- completions --------------------------------------------------------------------- */

static void finish_req(struct t2 *t, struct t2_req *r)
{
	if (r->kind == REQ_APPEND)
		t->appends--;
	else if (r->kind == REQ_FLUSH)
		t->flushes--;
	else
		t->reads--;
	if (r->done)
		r->done(r->arg, r->status);
	free(r->pieces);
	free(r->piece_reqs);
	free(r);
}

static void reap_op(struct t2 *t, struct t2_op *op)
{
	struct t2_kv *kv;

	for (uint8_t i = 0; i < op->npend; i++)
		t->segs[op->pend_seg[i]].pending--;
	if (op->kind != T2_OP_DROP_SEG && op->kind != T2_OP_FLUSH && op->kind != T2_OP_TOUCH &&
	    op->kind != T2_OP_PLAN) {
		kv = t2_keymap_find(&t->pend, &op->key);
		/* The index now holds what the view expected (or, if the op failed,
		 * the truth): the view is no longer needed, unless a later op changed it. */
		if (kv && kv->v.pend.seq == op->seq)
			t2_keymap_remove(&t->pend, kv);
	}
	switch (op->kind) {
	case T2_OP_INSERT:
		if (op->status == 0) {
			t->st.writes++;
			t->st.write_bytes += op->e.loc.rec_len;
		} else if (op->status != T2_EFATAL) {
			t->st.io_errors++;
		}
		op->req->status = op->status ? (op->status == T2_EFATAL ? T2_EFATAL : -EIO) : 0;
		finish_req(t, op->req);
		break;
	case T2_OP_FLUSH:
		op->req->status = op->status;
		finish_req(t, op->req);
		break;
	case T2_OP_PLAN:
		plan_done(t, op);
		break;
	case T2_OP_MOVE:
		if (op->status == 0) {
			t->st.relocated_blocks++;
			t->st.relocated_bytes += op->e.loc.rec_len;
		} else if (op->status != -ESTALE && op->status != T2_EFATAL) {
			t->st.io_errors++;
		}
		break;
	case T2_OP_DROP_SEG: {
		struct t2_seg *s = &t->segs[op->seg];
		bool was_cleaning = (int)op->seg == t->cleaning;

		if (was_cleaning) {
			t->cleaning = -1;
			t->clean.phase = CLEAN_IDLE;
		}
		t->st.dropped_blocks += op->dropped;
		if (op->status == -EAGAIN) {
			/* A large segment goes in several transactions. */
			struct t2_op *more = op_new(T2_OP_DROP_SEG, NULL);

			if (more) {
				more->seg = op->seg;
				if (was_cleaning) {
					t->cleaning = (int)op->seg;
					t->clean.phase = CLEAN_DROPPING;
				}
				queue_op(t, more, true);
				break;
			}
		}
		if (op->status == 0) {
			t->st.cleaned_segments++;
			s->drop_done = true;
			if (s->readers == 0)
				seg_set_free(t, op->seg);
		} else {
			/* Not dropped (a reference appeared, or the commit failed):
			 * it serves again. */
			s->state = s->fd >= 0 ? SEG_SEALED : SEG_ABSENT;
		}
		break;
	}
	case T2_OP_DELETE:
	case T2_OP_REF:
	case T2_OP_UNREF:
	case T2_OP_TOUCH:
		break;
	}
	t2_plan_free(op->plan);
	free(op);
}

static void reap_batch(struct t2 *t, struct t2_batch *b)
{
	/* Rows first: completions see the committed accounting. */
	for (size_t i = 0; i < b->nupd; i++)
		if (b->upd_seg[i] < t->nseg)
			t->segs[b->upd_seg[i]].row = b->upd_row[i];
	if (b->sync_failed_seg >= 0 && (uint32_t)b->sync_failed_seg < t->nseg) {
		t->segs[b->sync_failed_seg].sync_failed = true;
		if (t->open_seg == b->sync_failed_seg)
			seal_open(t);
	}
	while (b->ops) {
		struct t2_op *op = b->ops;

		b->ops = op->next;
		reap_op(t, op);
	}
	t2_batch_free(b);
}

void t2_reap(struct t2 *t)
{
	uint64_t ignored;
	struct t2_batch *b;
	struct t2_req *r;

	if (!t)
		return;
	/* Clear first: anything signalled after this is seen by the next call. */
	while (read(t->efd, &ignored, sizeof(ignored)) < 0 && errno == EINTR)
		;
	b = t2_commit_take(&t->com);
	while (b) {
		struct t2_batch *next = b->next;

		reap_batch(t, b);
		b = next;
	}
	run_waiting(t);
	while ((r = list_take(&t->ready)) != NULL) {
		while (r) {
			struct t2_req *next = r->next;

			finish_req(t, r);
			r = next;
		}
	}
	maybe_clean(t);
}

void t2_tick(struct t2 *t)
{
	uint64_t now;

	if (!t)
		return;
	now = t2_mono_ms();
	if (t->touches.count &&
	    (now - t->touch_flushed_ms >= T2_TOUCH_FLUSH_MS || t->touches.count >= T2_TOUCH_FLUSH_KEYS))
		flush_touches(t);
	run_waiting(t);
	maybe_clean(t);
	if (t->ready.head)
		kick(t);
}

int t2_eventfd(const struct t2 *t)
{
	return t->efd;
}

size_t t2_inflight(const struct t2 *t)
{
	return t->appends + t->reads + t->flushes;
}

void t2_get_stats(const struct t2 *t, struct t2_stats *s)
{
	*s = t->st;
	s->capacity = t->capacity;
	s->segments_total = 0;
	s->segments_free = 0;
	s->blocks = s->logical_bytes = s->stored_bytes = 0;
	for (uint32_t i = 0; i < t->nseg; i++) {
		const struct t2_seg *g = &t->segs[i];

		if (g->fd < 0)
			continue;
		s->segments_total++;
		s->segments_free += g->state == SEG_FREE;
		if (g->state == SEG_CLEANING && g->drop_done)
			continue;
		s->blocks += g->row.nblocks;
		s->logical_bytes += g->row.logical_bytes;
		s->stored_bytes += g->row.live_bytes;
	}
	s->used = (s->segments_total - s->segments_free) * t->seg_size;
	s->commits = atomic_load(&t->com.commits);
	s->map_resizes = atomic_load(&t->ix.db.map_resizes);
}

/* ---- open and close ------------------------------------------------------------------ */

static int make_dir(const char *path)
{
	if (mkdir(path, 0700) == 0 || errno == EEXIST)
		return 0;
	return -errno;
}

static int make_dirs(const char *dir, char *err, size_t errcap)
{
	char path[4096];
	int rc = make_dir(dir);

	if (rc == 0 && snprintf(path, sizeof(path), "%s/segments", dir) < (int)sizeof(path))
		rc = make_dir(path);
	if (rc == 0 && snprintf(path, sizeof(path), "%s/index", dir) < (int)sizeof(path))
		rc = make_dir(path);
	if (rc)
		snprintf(err, errcap, "%s: cannot create the data directories: %s", dir,
			 strerror(-rc));
	return rc;
}

static void note(char *err, size_t errcap, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));

/* Append a sentence to the open report's note. */
static void note(char *err, size_t errcap, const char *fmt, ...)
{
	size_t len = strnlen(err, errcap);
	va_list ap;

	if (len + 2 >= errcap)
		return;
	if (len) {
		err[len++] = ' ';
		err[len] = '\0';
	}
	va_start(ap, fmt);
	vsnprintf(err + len, errcap - len, fmt, ap);
	va_end(ap);
}

/* One process appends to a store: a second kvtierd on the same directory would
 * write over the first one's records. The lock goes with the process (kill -9
 * included). */
static int lock_dir(const char *dir, char *err, size_t errcap)
{
	char path[4096];
	int fd;

	if (snprintf(path, sizeof(path), "%s/t2.lock", dir) >= (int)sizeof(path))
		return -ENAMETOOLONG;
	fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
	if (fd < 0) {
		int e = errno;

		snprintf(err, errcap, "%s: cannot open the lock file: %s", dir, strerror(e));
		return -e;
	}
	if (flock(fd, LOCK_EX | LOCK_NB) < 0) {
		int e = errno;

		close(fd);
		if (e == EWOULDBLOCK) {
			snprintf(err, errcap, "%s: in use by another process (t2.lock is held); "
				 "stop the other kvtierd or give this one its own data directory",
				 dir);
			return -EBUSY;
		}
		snprintf(err, errcap, "%s: cannot lock t2.lock: %s", dir, strerror(e));
		return -e;
	}
	return fd;
}

struct scan_ctx {
	bool *exists;
	uint32_t n;
	uint32_t max_id;
};

static void scan_one(uint32_t id, void *arg)
{
	struct scan_ctx *c = arg;

	if (id + 1 > c->max_id)
		c->max_id = id + 1;
	if (id < c->n)
		c->exists[id] = true;
}

static int check_config(const struct t2_config *cfg)
{
	if (!cfg || !cfg->dir || !cfg->dir[0] || !cfg->io)
		return -EINVAL;
	if (cfg->segment_size < T2_SEGMENT_MIN || cfg->segment_size % T2_ALIGN)
		return -EINVAL;
	if (cfg->capacity < cfg->segment_size)
		return -EINVAL;
	return 0;
}

/* Segment files and rows -> states; pick the segment appends resume in. */
static int load_segments(struct t2 *t, char *err, size_t errcap, uint32_t *missing)
{
	struct scan_ctx sc = { NULL, 0, 0 };
	struct t2_segrow *rows = NULL;
	uint32_t max_row = 0, n;
	int rc, best = -1;

	rc = t2_index_load_segments(&t->ix, NULL, 0, &max_row);
	if (rc)
		return rc;
	rc = t2_segment_scan(t->dir, scan_one, &sc);
	if (rc)
		return rc;
	n = t->nseg_max;
	if (max_row > n)
		n = max_row;
	if (sc.max_id > n)
		n = sc.max_id;
	rows = calloc(n, sizeof(*rows));
	sc.exists = calloc(n, sizeof(*sc.exists));
	t->segs = calloc(n, sizeof(*t->segs));
	if (!rows || !sc.exists || !t->segs) {
		rc = -ENOMEM;
		goto out;
	}
	t->nseg = n;
	for (uint32_t i = 0; i < n; i++)
		t->segs[i].fd = -1;
	sc.n = n;
	sc.max_id = 0;
	if ((rc = t2_index_load_segments(&t->ix, rows, n, &max_row)) ||
	    (rc = t2_segment_scan(t->dir, scan_one, &sc)))
		goto out;
	for (uint32_t i = 0; i < n; i++) {
		struct t2_seg *s = &t->segs[i];

		s->fd = -1;
		s->row = rows[i];
		s->state = SEG_ABSENT;
		if (sc.exists[i]) {
			/* Open and lock it: this waits until every write an earlier
			 * opener (killed, say) still had in flight on it has landed,
			 * which is what makes reusing its space below safe. */
			s->fd = t2_segment_open(t->dir, i, &t->direct);
			if (s->fd == -EBUSY || s->fd == -ENOLCK) {
				rc = s->fd;
				s->fd = -1;
				if (rc == -EBUSY)
					snprintf(err, errcap, "%s: segment file seg-%08u.kvs is still "
						 "locked after %u s: a process that had the store open "
						 "(and was killed) still has writes in flight to it, or "
						 "another process holds the file; try again later",
						 t->dir, i, t2_segment_lock_wait_ms / 1000u);
				else
					snprintf(err, errcap, "%s: cannot lock segment file "
						 "seg-%08u.kvs (flock)", t->dir, i);
				goto out;
			}
			if (s->fd < 0 && rows[i].nblocks == 0)
				continue;
		}
		if (s->fd < 0) {
			if (rows[i].nblocks) {
				/* Indexed records whose file is gone: drop them. */
				s->state = SEG_CLEANING;
				(*missing)++;
			}
			continue;
		}
		s->state = rows[i].nblocks ? SEG_SEALED : SEG_FREE;
		if (s->state == SEG_FREE)
			memset(&s->row, 0, sizeof(s->row));
		/* Resume appending where the most room is left: normally the
		 * segment that was open (anything past its committed end was never
		 * indexed and is overwritten). Overwriting it, or a free segment,
		 * is safe only because the segment is locked: no write of the
		 * previous opener can land there any more (t2_segment.c). */
		if (s->state == SEG_SEALED && s->row.write_off + T2_ALIGN <= t->seg_size &&
		    (best < 0 || s->row.write_off < t->segs[best].row.write_off))
			best = (int)i;
	}
	if (best >= 0) {
		(void)t2_segment_prepare(t->segs[best].fd, t->seg_size);
		t->segs[best].state = SEG_OPEN;
		t->segs[best].append_off = t2_align_up(t->segs[best].row.write_off);
		t->open_seg = best;
	}
	if (segs_existing(t) > t->nseg_max)
		note(err, errcap, "%s holds %u segments, more than the capacity allows (%u); "
		     "they stay in use.", t->dir, segs_existing(t), t->nseg_max);
	rc = 0;
out:
	if (rc && t->segs) {
		for (uint32_t i = 0; i < t->nseg; i++)
			if (t->segs[i].fd >= 0)
				close(t->segs[i].fd);
		free(t->segs);
		t->segs = NULL;
		t->nseg = 0;
		t->open_seg = -1;
	}
	free(rows);
	free(sc.exists);
	return rc;
}

int t2_open(const struct t2_config *cfg, struct t2 **out, struct t2_open_report *rep, char *err,
	    size_t errcap)
{
	char scratch[8];
	uint64_t t0 = t2_mono_ms(), seg_size;
	uint32_t missing = 0;
	bool created = false;
	struct t2 *t;
	int rc, lock_fd;

	if (!err || !errcap) {
		err = scratch;
		errcap = sizeof(scratch);
	}
	err[0] = '\0';
	if (!out)
		return -EINVAL;
	rc = check_config(cfg);
	if (rc) {
		snprintf(err, errcap, "t2: bad configuration (dir, io, segment_size >= %llu and "
			 "a multiple of %u, capacity >= segment_size)",
			 (unsigned long long)T2_SEGMENT_MIN, T2_ALIGN);
		return rc;
	}
	rc = make_dirs(cfg->dir, err, errcap);
	if (rc)
		return rc;
	lock_fd = lock_dir(cfg->dir, err, errcap);
	if (lock_fd < 0)
		return lock_fd;
	t = calloc(1, sizeof(*t));
	if (!t) {
		close(lock_fd);
		return -ENOMEM;
	}
	t->lock_fd = lock_fd;
	t->io = cfg->io;
	t->open_seg = -1;
	t->cleaning = -1;
	t->direct = true;
	t->touch_flushed_ms = t2_mono_ms();
	list_init(&t->ready);
	list_init(&t->waiting);
	t->dir = strdup(cfg->dir);
	if (!t->dir) {
		rc = -ENOMEM;
		goto out_free;
	}
	t->efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
	if (t->efd < 0) {
		rc = -errno;
		goto out_free;
	}
	seg_size = cfg->segment_size;
	rc = t2_index_open(&t->ix, t->dir, cfg->map_size, &seg_size, &created, err, errcap);
	if (rc)
		goto out_efd;
	t->seg_size = seg_size;
	t->nseg_max = (uint32_t)(cfg->capacity / seg_size);
	if (t->nseg_max == 0)
		t->nseg_max = 1;
	t->capacity = (uint64_t)t->nseg_max * seg_size;
	t->reserve = t->nseg_max > T2_RESERVE + 1 ? T2_RESERVE : (t->nseg_max > 1 ? 1 : 0);
	rc = load_segments(t, err, errcap, &missing);
	if (rc) {
		/* A segment lock that could not be taken has its own message. */
		if (rc != -EBUSY && rc != -ENOLCK)
			snprintf(err, errcap, "%s: cannot read the segment table: %s", cfg->dir,
				 strerror(-rc));
		goto out_index;
	}
	if (t->open_seg < 0 && segs_existing(t) == 0) {
		/* A store with no segment at all: make the first now, so a file
		 * system without room is reported here rather than at the first write. */
		rc = open_new_segment(t);
		if (rc) {
			snprintf(err, errcap, "%s: cannot create a %llu-byte segment file: %s",
				 cfg->dir, (unsigned long long)seg_size,
				 rc == -ENOSPC ? "no space on the file system" : strerror(-rc));
			goto out_segs;
		}
	}
	{
		struct t2_segrow *rows = calloc(t->nseg, sizeof(*rows));

		if (!rows) {
			rc = -ENOMEM;
			goto out_segs;
		}
		for (uint32_t i = 0; i < t->nseg; i++)
			rows[i] = t->segs[i].row;
		rc = t2_commit_start(&t->com, &t->ix, t->efd, cfg->commit_interval_ms, rows,
				     t->nseg);
		free(rows);
		if (rc)
			goto out_segs;
	}
	for (uint32_t i = 0; i < t->nseg; i++) {
		struct t2_op *op;

		if (t->segs[i].state != SEG_CLEANING)
			continue;
		op = op_new(T2_OP_DROP_SEG, NULL);
		if (!op) {
			t->segs[i].state = SEG_ABSENT;
			continue;
		}
		op->seg = i;
		queue_op(t, op, true);
	}
	if (missing)
		note(err, errcap, "%s: %u segment files with indexed blocks are missing; their "
		     "blocks are dropped from the index.", cfg->dir, missing);
	if (!t->direct)
		note(err, errcap, "%s: the file system refused O_DIRECT; segments use buffered "
		     "I/O with fdatasync.", cfg->dir);
	if (rep) {
		memset(rep, 0, sizeof(*rep));
		rep->blocks = t2_index_count(&t->ix);
		for (uint32_t i = 0; i < t->nseg; i++) {
			const struct t2_seg *g = &t->segs[i];

			rep->segments += g->fd >= 0 && g->row.nblocks > 0;
			/* Blocks of missing files are being dropped: not found. */
			if (g->state == SEG_CLEANING)
				rep->blocks -= g->row.nblocks < rep->blocks ? g->row.nblocks : rep->blocks;
		}
		rep->created = created;
		rep->direct_io = t->direct;
		rep->segment_size = seg_size;
		rep->open_ms = t2_mono_ms() - t0;
	}
	*out = t;
	return 0;

out_segs:
	for (uint32_t i = 0; i < t->nseg; i++)
		if (t->segs[i].fd >= 0)
			close(t->segs[i].fd);
	free(t->segs);
out_index:
	t2_index_close(&t->ix);
out_efd:
	close(t->efd);
out_free:
	free(t->dir);
	close(t->lock_fd);
	free(t);
	return rc;
}

void t2_close(struct t2 *t)
{
	if (!t)
		return;
	t->closing = true;
	run_waiting(t); /* fails them: -ECANCELED */
	/* Our I/O must finish before the buffers and fds go. */
	while (t->writes_in_io + t->reads_in_io > 0) {
		struct pollfd p = { .fd = io_eventfd(t->io), .events = POLLIN };

		if (io_reap(t->io) == 0)
			(void)poll(&p, 1, 100);
	}
	if (t->touches.count)
		flush_touches(t);
	t2_commit_stop(&t->com);
	/* Everything is committed: take every finished batch and run what is left
	 * (a callback may queue more answers; nothing new reaches the committer). */
	do {
		t2_reap(t);
	} while (t->ready.head || t->com.done_head);
	t2_commit_destroy(&t->com);
	t2_plan_free(t->clean.plan);
	t2_index_close(&t->ix);
	for (uint32_t i = 0; i < t->nseg; i++)
		if (t->segs[i].fd >= 0)
			close(t->segs[i].fd);
	free(t->segs);
	t2_keymap_free(&t->pend);
	t2_keymap_free(&t->touches);
	close(t->efd);
	close(t->lock_fd);
	free(t->dir);
	free(t);
}
