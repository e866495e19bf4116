/*
 * tier2.c - the daemon's side of the NVMe tier.
 *
 * Demotion is write-back: the host tier keeps serving a block while a copy is
 * compressed (on a worker) and appended to a segment; once the copy is durable and
 * indexed the host block is marked clean (T1F_IN_T2) and eviction drops it at no
 * cost. The pump walks the host tier from its cold end and writes dirty blocks
 * until nvme_free_target percent of the tier is free or clean, so eviction nearly
 * always finds clean blocks. Blocks the admission rule turns away are simply
 * dropped when evicted: one-off blocks never reach the disk.
 *
 * Promotion reads a record (one O_DIRECT read through the I/O engine), checks its
 * header on the loop thread, decodes its frames in parallel on the workers into a
 * host block reserved for it, and commits that block; a checksum mismatch anywhere
 * makes it a miss and drops the record from the index. Concurrent requests for the
 * same key share one fetch. Staging memory for reads and writes in flight is
 * bounded (nvme_staging); fetches beyond it wait in FIFO order.
 */
#include <errno.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>

#include "log.h"
#include "server.h"
#include "tier2.h"

/* Host blocks the pump examines per call, so a huge cold list cannot stall the loop. */
#define PUMP_SCAN_MAX 512

struct waiter {
	struct waiter *next;
	tier2_fetch_cb cb;
	void *arg;
};

struct fetch {
	struct fetch *next;
	struct server *s;
	struct t1_key key;
	struct t2_info info;
	struct t1_block *blk;   /* host block being filled; NULL when decoding into direct */
	struct t2_span direct;
	struct t2_span *spans;  /* where the block's bytes go */
	size_t nspans;
	uint8_t *buf;
	size_t cap;
	struct t2_frame *frames;
	size_t nframes;
	struct job job;
	atomic_int bad;
	struct waiter *waiters;
};

struct persist_waiter {
	struct persist_waiter *next;
	tier2_persist_cb cb;
	void *arg;
};

struct demote {
	struct demote *next_active; /* tier2's list of demotions in flight */
	struct persist_waiter *waiters; /* saved contexts waiting for this block */
	struct server *s;
	struct t1_block *b;
	struct t1_key key;
	kvt_key parent;
	kvt_block_desc desc;
	uint64_t len;
	uint8_t codec;
	uint8_t *buf;
	size_t cap, rec_len;
	size_t flow;                /* bytes counted in staging_used while in flight */
	struct t2_span *spans;
	size_t nspans;
	/* Raw codec: the record is written from the block's memory (header and last
	 * page in buf, out[] the pieces): no copy of the block. */
	bool direct;
	struct t2_span *out;
	size_t nout;
	/* A compressed record of several frames: they are encoded in parallel, one
	 * task each (fo, frc: per frame), then packed by one more task. */
	struct t2_frame_out *fo;
	int *frc;
	int rc;
	struct job job;
};

struct room_waiter {
	struct room_waiter *next;
	tier2_room_cb cb;
	void *arg;
};

/* A staging buffer kept for reuse: fresh 32 MiB mappings for every record cost a
 * page fault per 4 KiB (measured: half the daemon's CPU on a cold page-in). */
struct sbuf {
	struct sbuf *next;
	uint8_t *p;
	size_t cap;
};

struct tier2 {
	struct sbuf *spare;     /* free staging buffers, most recent first */
	uint64_t spare_bytes;
	struct room_waiter *room, *room_tail; /* stores waiting for a demotion, FIFO */
	struct io_engine *io;
	struct t2 *t2;
	char backend[256];
	bool direct_io;
	struct fetch *active;               /* reading or decoding */
	struct fetch *queue, *queue_tail;   /* waiting for staging memory */
	size_t nactive, nqueued;
	uint64_t staging_used;
	uint64_t direct_used;   /* raw records being written from RAM (nvme_write_window) */
	size_t demoting;
	struct demote *active_demotes; /* in flight, for persist waiters to find */
	bool flushing; /* stopping: write every admitted dirty block before exit */
	/* counters */
	uint64_t promotions, demotions, demote_failures, fetch_failures, corrupt;
	uint64_t dropped_unwritten, readahead, hits;
	uint64_t orphans; /* host blocks found with their parent in no tier */
	char io_tag, t2_tag;
};

static size_t align_up(size_t n)
{
	return (n + T2_ALIGN - 1) & ~(size_t)(T2_ALIGN - 1);
}

/* A T2_ALIGN-aligned buffer of at least cap bytes (*got receives its real size):
 * a kept one of a close size if there is one, else a new one. */
static uint8_t *staging_get(struct tier2 *t, size_t cap, size_t *got)
{
	for (struct sbuf **pp = &t->spare; *pp; pp = &(*pp)->next) {
		struct sbuf *b = *pp;
		if (b->cap >= cap && b->cap <= cap + cap / 4) {
			*pp = b->next;
			t->spare_bytes -= b->cap;
			uint8_t *p = b->p;
			*got = b->cap;
			free(b);
			return p;
		}
	}
	*got = cap;
	return aligned_alloc(T2_ALIGN, cap);
}

/* Keep a buffer for reuse while the kept ones stay within nvme_staging. */
static void staging_put(struct server *s, uint8_t *p, size_t cap)
{
	struct tier2 *t = s->tier2;
	struct sbuf *b = NULL;
	if (p && t->spare_bytes + cap <= s->cfg->nvme_staging)
		b = malloc(sizeof(*b));
	if (!b) {
		free(p);
		return;
	}
	*b = (struct sbuf){ t->spare, p, cap };
	t->spare = b;
	t->spare_bytes += cap;
}

bool tier2_active(const struct server *s)
{
	return s->tier2 != NULL;
}

bool tier2_failed(const struct server *s)
{
	return s->tier2 && t2_has_failed(s->tier2->t2);
}

bool tier2_busy(const struct server *s)
{
	const struct tier2 *t = s->tier2;
	return t && (t->nactive || t->nqueued || t->demoting || t->room || io_inflight(t->io) ||
		     t2_inflight(t->t2));
}

bool tier2_is_tag(const struct server *s, const void *tag)
{
	return s->tier2 && (tag == &s->tier2->io_tag || tag == &s->tier2->t2_tag);
}

void tier2_handle(struct server *s, const void *tag)
{
	struct tier2 *t = s->tier2;
	if (tag == &t->io_tag)
		io_reap(t->io);
	else
		t2_reap(t->t2);
}

/* Spans covering a host block's extents, in order. */
static struct t2_span *block_spans(const struct t1_block *b, size_t *n)
{
	size_t ne;
	const struct t1_extent *ext = t1_block_extents(b, &ne);
	struct t2_span *sp = calloc(ne ? ne : 1, sizeof(*sp));
	if (!sp)
		return NULL;
	uint64_t left = t1_block_len(b);
	for (size_t i = 0; i < ne; i++) {
		sp[i].ptr = ext[i].ptr;
		sp[i].len = ext[i].len < left ? ext[i].len : left;
		left -= sp[i].len;
	}
	*n = ne;
	return sp;
}

/* ---- fetch (promotion) ------------------------------------------------------ */

static void fetch_start(struct fetch *f);
static void pump_ex(struct server *s, bool force);

static void fetch_unlink(struct tier2 *t, struct fetch *f)
{
	for (struct fetch **pp = &t->active; *pp; pp = &(*pp)->next)
		if (*pp == f) {
			*pp = f->next;
			t->nactive--;
			return;
		}
}

/* Start queued fetches while staging memory allows (always at least one). */
static void fetch_dequeue(struct server *s)
{
	struct tier2 *t = s->tier2;
	while (t->queue) {
		struct fetch *f = t->queue;
		if (t->staging_used && t->staging_used + f->cap > s->cfg->nvme_staging)
			return;
		t->queue = f->next;
		if (!t->queue)
			t->queue_tail = NULL;
		t->nqueued--;
		fetch_start(f);
	}
}

static void fetch_finish(struct fetch *f, int status)
{
	struct server *s = f->s;
	struct tier2 *t = s->tier2;
	if (f->buf) {
		staging_put(s, f->buf, f->cap);
		t->staging_used -= f->cap;
	}
	fetch_unlink(t, f);
	if (f->blk) {
		if (status == 0) {
			t1_commit(s->t1, f->blk);
			/* Brought back because someone asked for it (GET, PREFETCH, or
			 * read-ahead along a chain being read): a re-reference for the
			 * policy, so 2Q does not evict blocks prefetched for a page-in
			 * ahead of the ones already consumed. */
			t1_touch(s->t1, f->blk);
			t1_block_set_flags(f->blk, T1F_IN_T2);
			t->promotions++;
		} else {
			t1_abort(s->t1, f->blk);
		}
	}
	if (status)
		t->fetch_failures++;
	else
		t2_touch(t->t2, &f->key);
	struct waiter *w = f->waiters;
	while (w) {
		struct waiter *next = w->next;
		if (status == 0 && f->blk)
			t1_block_ref(s->t1, f->blk);
		w->cb(w->arg, status, status == 0 ? f->blk : NULL);
		free(w);
		w = next;
	}
	free(f->spans);
	free(f->frames);
	free(f);
	fetch_dequeue(s);
}

/* A record that fails verification is a miss, a counter and a log line. */
static void fetch_corrupt(struct fetch *f, const char *what)
{
	struct tier2 *t = f->s->tier2;
	char hex[33];
	t->corrupt++;
	log_warn("NVMe record of tenant %u key %s failed verification (%s): served as a miss "
		 "and dropped from the index",
		 f->key.tenant, kvt_key_format(&f->key.key, hex), what);
	t2_corrupt(t->t2, &f->key);
	fetch_finish(f, -ENOENT);
}

static void decode_task(struct job *j, size_t i, struct codec_ctx *ctx)
{
	struct fetch *f = j->arg;
	if (!ctx || t2_frame_decode(ctx, f->buf, &f->frames[i], f->spans, f->nspans) < 0)
		atomic_store(&f->bad, 1);
}

static void decode_done(struct job *j)
{
	struct fetch *f = j->arg;
	if (atomic_load(&f->bad))
		fetch_corrupt(f, "frame checksum or decoding");
	else
		fetch_finish(f, 0);
}

static void fetch_read_done(void *arg, int status)
{
	struct fetch *f = arg;
	struct server *s = f->s;
	if (status) {
		if (status != -ENOENT)
			log_warn("NVMe read of tenant %u failed: %s; served as a miss", f->key.tenant,
				 strerror(-status));
		fetch_finish(f, -ENOENT);
		return;
	}
	size_t max = (size_t)((f->info.len + CODEC_FRAME_SIZE - 1) / CODEC_FRAME_SIZE);
	f->frames = calloc(max ? max : 1, sizeof(*f->frames));
	if (!f->frames) {
		fetch_finish(f, -ENOMEM);
		return;
	}
	uint64_t len = 0;
	kvt_block_desc desc;
	int rc = t2_record_parse(f->buf, (size_t)f->info.record_len, &f->key, f->frames,
				 max ? max : 1, &f->nframes, &len, &desc);
	if (rc || len != f->info.len) {
		fetch_corrupt(f, "record header");
		return;
	}
	f->job = (struct job){ .nsegs = f->nframes, .run = decode_task, .done = decode_done,
			       .arg = f };
	workers_submit(s->workers, &f->job);
}

static void fetch_start(struct fetch *f)
{
	struct tier2 *t = f->s->tier2;
	f->next = t->active;
	t->active = f;
	t->nactive++;
	f->buf = staging_get(t, f->cap, &f->cap);
	if (!f->buf) {
		fetch_finish(f, -ENOMEM);
		return;
	}
	t->staging_used += f->cap;
	t2_read(t->t2, &f->key, f->buf, f->cap, fetch_read_done, f);
}

static struct fetch *fetch_find(struct tier2 *t, const struct t1_key *key)
{
	for (struct fetch *f = t->active; f; f = f->next)
		if (f->blk && f->key.tenant == key->tenant && kvt_key_equal(&f->key.key, &key->key))
			return f;
	for (struct fetch *f = t->queue; f; f = f->next)
		if (f->blk && f->key.tenant == key->tenant && kvt_key_equal(&f->key.key, &key->key))
			return f;
	return NULL;
}

static int add_waiter(struct fetch *f, tier2_fetch_cb cb, void *arg)
{
	struct waiter *w = malloc(sizeof(*w));
	if (!w)
		return -ENOMEM;
	w->cb = cb;
	w->arg = arg;
	w->next = f->waiters;
	f->waiters = w;
	return 0;
}

int tier2_fetch(struct server *s, const struct t1_key *key, const struct t2_span *direct,
		tier2_fetch_cb cb, void *arg)
{
	struct tier2 *t = s->tier2;
	if (!t)
		return -ENOENT;
	struct fetch *f = fetch_find(t, key);
	if (f)
		return add_waiter(f, cb, arg);

	f = calloc(1, sizeof(*f));
	if (!f)
		return -ENOMEM;
	f->s = s;
	f->key = *key;
	int rc = t2_lookup(t->t2, key, &f->info);
	if (rc)
		goto out_free;
	f->cap = align_up((size_t)f->info.record_len);
	/* Into the host tier when there is room; a block whose parent is in neither
	 * tier takes only free room, like a PUT of it would. */
	struct t1_key pk = { .tenant = key->tenant, .key = f->info.parent };
	bool orphan = !kvt_key_is_zero(&f->info.parent) && !tier2_reachable(s, &pk);
	/* A promoted copy may only displace blocks that are on NVMe too: it must never
	 * cost a block that exists nowhere else. */
	rc = orphan ? t1_reserve_free(s->t1, key, &f->info.parent, f->info.len, &f->info.desc,
				      &f->blk)
		    : t1_reserve_clean(s->t1, key, &f->info.parent, f->info.len, &f->info.desc,
				       &f->blk);
	if (rc == -ENOSPC || rc == -EDQUOT)
		pump_ex(s, true); /* make clean room for the next one */
	if (rc == 0) {
		f->spans = block_spans(f->blk, &f->nspans);
		if (!f->spans) {
			t1_abort(s->t1, f->blk);
			rc = -ENOMEM;
			goto out_free;
		}
	} else if (direct && direct->len == f->info.len) {
		f->blk = NULL;
		f->direct = *direct;
		f->spans = malloc(sizeof(*f->spans));
		if (!f->spans) {
			rc = -ENOMEM;
			goto out_free;
		}
		f->spans[0] = *direct;
		f->nspans = 1;
	} else {
		goto out_free;
	}
	rc = add_waiter(f, cb, arg);
	if (rc) {
		if (f->blk)
			t1_abort(s->t1, f->blk);
		free(f->spans);
		goto out_free;
	}
	if (t->staging_used && t->staging_used + f->cap > s->cfg->nvme_staging) {
		if (t->queue_tail)
			t->queue_tail->next = f;
		else
			t->queue = f;
		t->queue_tail = f;
		t->nqueued++;
	} else {
		fetch_start(f);
	}
	return 0;
out_free:
	free(f);
	return rc;
}

static void readahead_cb(void *arg, int status, struct t1_block *b)
{
	struct server *s = arg;
	(void)status;
	if (b)
		t1_block_unref(s->t1, b);
}

void tier2_readahead(struct server *s, const struct t1_key *key, unsigned n)
{
	struct tier2 *t = s->tier2;
	if (!t || s->stopping)
		return;
	struct t1_key cur = *key;
	for (unsigned i = 0; i < n; i++) {
		struct t1_key next;
		if (t2_children(t->t2, &cur, &next, 1) == 0)
			return;
		if (!t1_contains(s->t1, &next) && tier2_fetch(s, &next, NULL, readahead_cb, s) == 0)
			t->readahead++;
		cur = next;
	}
}

/* ---- demotion ------------------------------------------------------------------ */

static void demote_finish(struct demote *d, int status)
{
	struct server *s = d->s;
	struct tier2 *t = s->tier2;
	for (struct demote **pp = &t->active_demotes; *pp; pp = &(*pp)->next_active)
		if (*pp == d) {
			*pp = d->next_active;
			break;
		}
	staging_put(s, d->buf, d->cap);
	if (d->direct)
		t->direct_used -= d->flow;
	else
		t->staging_used -= d->flow;
	t->demoting--;
	uint32_t fl = t1_block_flags(d->b) & ~T1F_DEMOTING;
	if (status == 0) {
		t->demotions++;
		if (t1_block_is_committed(d->b))
			fl |= T1F_IN_T2;
		else /* deleted while it was being written: the copy must go too */
			t2_delete(t->t2, &d->key);
	} else {
		t->demote_failures++;
		if (status == T2_EFATAL)
			log_error("NVMe index failed (%s): the daemon must restart",
				  strerror(-status));
		else if (t->demote_failures < 10 || t->demote_failures % 1000 == 0)
			log_warn("writing a block to NVMe failed: %s (%llu failures so far); it "
				 "stays in RAM only",
				 strerror(-status), (unsigned long long)t->demote_failures);
	}
	t1_block_set_flags(d->b, fl);
	t1_block_unref(s->t1, d->b);
	struct persist_waiter *pw = d->waiters;
	while (pw) {
		struct persist_waiter *next = pw->next;
		pw->cb(pw->arg, status == T2_EFATAL ? -EIO : status);
		free(pw);
		pw = next;
	}
	free(d->spans);
	free(d->out);
	free(d->fo);
	free(d->frc);
	free(d);
	if (t->flushing)
		pump_ex(s, true);
	/* The block can leave RAM now: let stores that waited for room retry, oldest
	 * first (a retry that must wait again queues behind the rest). */
	struct room_waiter *w = t->room;
	t->room = t->room_tail = NULL;
	while (w) {
		struct room_waiter *next = w->next;
		w->cb(w->arg);
		free(w);
		w = next;
	}
}

static void append_done(void *arg, int status)
{
	demote_finish(arg, status);
}

static void encode_task(struct job *j, size_t i, struct codec_ctx *ctx)
{
	struct demote *d = j->arg;
	(void)i;
	if (d->direct)
		d->rc = t2_record_raw_plan(&d->key, &d->desc, d->spans, d->nspans, d->len, d->buf,
					   d->cap, d->out, d->nspans + 2, &d->nout, &d->rec_len);
	else
		d->rc = ctx ? t2_record_encode(ctx, (enum codec_id)d->codec, &d->key, &d->desc,
					       d->spans, d->nspans, d->len, d->buf, d->cap,
					       &d->rec_len)
			    : -ENOMEM;
}

/* One frame of a compressed record (the frames' tasks run on every worker). */
static void encode_frame_task(struct job *j, size_t i, struct codec_ctx *ctx)
{
	struct demote *d = j->arg;
	d->frc[i] = ctx ? t2_record_encode_frame(ctx, (enum codec_id)d->codec, d->spans, d->nspans,
						 d->len, i, d->buf, d->cap, &d->fo[i])
			: -ENOMEM;
}

static void encode_pack_task(struct job *j, size_t i, struct codec_ctx *ctx)
{
	struct demote *d = j->arg;
	(void)i;
	(void)ctx;
	d->rc = t2_record_encode_finish(&d->key, &d->desc, (enum codec_id)d->codec, d->len, d->buf,
					d->cap, d->fo, &d->rec_len);
}

static void encode_done(struct job *j);

/* Every frame encoded: pack them into the record on a worker (a memmove of up to
 * the block's size, kept off the loop thread). */
static void encode_frames_done(struct job *j)
{
	struct demote *d = j->arg;
	uint64_t n = t2_record_frames(d->len);
	for (uint64_t i = 0; i < n; i++)
		if (d->frc[i]) {
			demote_finish(d, d->frc[i]);
			return;
		}
	d->job = (struct job){ .nsegs = 1, .run = encode_pack_task, .done = encode_done, .arg = d };
	workers_submit(d->s->workers, &d->job);
}

static void encode_done(struct job *j)
{
	struct demote *d = j->arg;
	struct tier2 *t = d->s->tier2;
	if (d->rc) {
		demote_finish(d, d->rc);
		return;
	}
	const kvt_key *parent = kvt_key_is_zero(&d->parent) ? NULL : &d->parent;
	if (d->direct) {
		t2_append_spans(t->t2, &d->key, parent, d->out, d->nout, d->rec_len, d->len,
				&d->desc, d->codec, append_done, d);
		return;
	}
	t2_append(t->t2, &d->key, parent, d->buf,
		  d->rec_len, d->len, &d->desc, d->codec, append_done, d);
}

static bool admitted(const struct server *s, const struct t1_block *b)
{
	if (t1_block_flags(b) & T1F_ORPHAN)
		return false;
	if (s->cfg->nvme_write == 1) /* write-through writes every block */
		return true;
	switch (s->cfg->nvme_admission) {
	case ADMIT_REUSED: return t1_block_accesses(b) > 0;
	case ADMIT_CHAIN: return t1_block_accesses(b) > 0 || t1_block_has_children(b);
	default: return true;
	}
}

/* Can a raw record be written straight from these extents (O_DIRECT: each starts
 * on a page, all but the last are whole pages)? T1's always can. */
static bool spans_direct_ok(const struct t2_span *sp, size_t n)
{
	for (size_t i = 0; i < n; i++)
		if (((uintptr_t)sp[i].ptr & (T2_ALIGN - 1)) || (i + 1 < n && sp[i].len % T2_ALIGN))
			return false;
	return n > 0;
}

/* Start writing b to NVMe. NULL if staging memory is exhausted (unless force) or
 * allocation failed. */
static struct demote *demote_start_ex(struct server *s, struct t1_block *b, bool force)
{
	struct tier2 *t = s->tier2;
	uint64_t len = t1_block_len(b);
	/* Flow control: a record built in a buffer counts against nvme_staging (the
	 * buffer is real memory); a raw record written straight from RAM needs none,
	 * and counts against nvme_write_window, which only bounds the bytes queued
	 * for the disk (a deeper queue than the buffers allow is what keeps a fast
	 * device busy). */
	size_t flow = align_up(t2_record_bound(len));
	struct demote *d = calloc(1, sizeof(*d));
	if (!d)
		return NULL;
	d->desc = *t1_block_desc(b);
	d->codec = (uint8_t)codec_for_desc((enum codec_id)s->cfg->nvme_codec, &d->desc);
	d->spans = block_spans(b, &d->nspans);
	d->direct = d->spans && d->codec == CODEC_RAW && spans_direct_ok(d->spans, d->nspans);
	uint64_t used = d->direct ? t->direct_used : t->staging_used;
	uint64_t limit = d->direct ? s->cfg->nvme_write_window : s->cfg->nvme_staging;
	if (!force && used && used + flow > limit) {
		free(d->spans);
		free(d);
		return NULL;
	}
	size_t cap = d->direct ? align_up(t2_record_raw_head_bound(len)) : flow;
	d->buf = staging_get(t, cap, &cap);
	if (d->direct)
		d->out = calloc(d->nspans + 2, sizeof(*d->out));
	if (!d->buf || !d->spans || (d->direct && !d->out)) {
		free(d->buf);
		free(d->spans);
		free(d->out);
		free(d);
		return NULL;
	}
	d->s = s;
	d->b = b;
	d->key = *t1_block_key(b);
	d->parent = *t1_block_parent(b);
	d->len = len;
	d->cap = cap;
	d->flow = flow;
	if (d->direct)
		t->direct_used += flow;
	else
		t->staging_used += flow;
	t->demoting++;
	t1_block_ref(s->t1, b);
	t1_block_set_flags(b, t1_block_flags(b) | T1F_DEMOTING);
	d->next_active = t->active_demotes;
	t->active_demotes = d;
	d->job = (struct job){ .nsegs = 1, .run = encode_task, .done = encode_done, .arg = d };
	/* A compressed record of several frames: one task per frame, so a large
	 * block is compressed by every worker at once. */
	uint64_t nframes = t2_record_frames(len);
	if (!d->direct && d->codec != CODEC_RAW && nframes > 1) {
		d->fo = calloc(nframes, sizeof(*d->fo));
		d->frc = calloc(nframes, sizeof(*d->frc));
		if (d->fo && d->frc)
			d->job = (struct job){ .nsegs = nframes, .run = encode_frame_task,
					       .done = encode_frames_done, .arg = d };
	}
	workers_submit(s->workers, &d->job);
	return d;
}

static bool demote_start(struct server *s, struct t1_block *b)
{
	return demote_start_ex(s, b, false) != NULL;
}

/*
 * Whether b's parent is in no tier, or is in RAM marked as such itself: then no
 * LOOKUP reaches b (a lookup counts the leading present blocks of a chain), and
 * writing it to NVMe would spend the disk on a block nobody can find. Checked
 * once per block, when write-back gets to it (cheap next to the write it saves);
 * marked, it classifies as free to evict. Write-back meets a chain head first
 * (it is the coldest), so a whole cut-off chain is marked in one pass.
 */
void tier2_block_reached(struct t1_block *b)
{
	uint32_t fl = t1_block_flags(b);
	if (fl & T1F_ORPHAN)
		t1_block_set_flags(b, fl & ~T1F_ORPHAN);
}

static bool orphaned(struct server *s, struct t1_block *b)
{
	static const kvt_key zero;
	const kvt_key *p = t1_block_parent(b);
	if (!p || memcmp(p, &zero, sizeof(zero)) == 0)
		return false;
	struct t1_key pk = { .tenant = t1_block_key(b)->tenant, .key = *p };
	struct t1_block *pb = t1_find(s->t1, &pk);
	if (pb ? !(t1_block_flags(pb) & T1F_ORPHAN)
	       : t1_contains(s->t1, &pk) || t2_lookup(s->tier2->t2, &pk, NULL) != -ENOENT)
		return false; /* present, or not known to be absent (an index error) */
	t1_block_set_flags(b, t1_block_flags(b) | T1F_ORPHAN);
	s->tier2->orphans++;
	return true;
}

/* Write cold dirty blocks until the free target is met (force: as many as staging
 * memory allows, for a store that is waiting for room). */
static void pump_ex(struct server *s, bool force)
{
	struct tier2 *t = s->tier2;
	if (!t || (s->stopping && !t->flushing) || t2_has_failed(t->t2))
		return;
	/* write-through, or a store waiting: every admitted dirty block */
	bool all = force || s->cfg->nvme_write == 1;
	uint64_t want = t1_capacity(s->t1) / 100 * s->cfg->nvme_free_target;
	uint64_t ready = t1_free_bytes(s->t1);
	if (!all && ready >= want)
		return;
	struct t1_block *b = t1_cold_next(s->t1, NULL);
	for (unsigned n = 0; b && n < PUMP_SCAN_MAX && (all || ready < want); n++) {
		struct t1_block *next = t1_cold_next(s->t1, b);
		uint32_t fl = t1_block_flags(b);
		if (fl & (T1F_IN_T2 | T1F_DEMOTING)) {
			ready += t1_block_len(b);
		} else if (admitted(s, b)) {
			if (!orphaned(s, b) && !demote_start(s, b))
				return;
			ready += t1_block_len(b);
		}
		b = next;
	}
}

static void pump(struct server *s)
{
	pump_ex(s, false);
}

bool tier2_wait_room(struct server *s, tier2_room_cb cb, void *arg)
{
	struct tier2 *t = s->tier2;
	if (!t || s->stopping)
		return false;
	pump_ex(s, true);
	if (!t->demoting)
		return false;
	struct room_waiter *w = malloc(sizeof(*w));
	if (!w)
		return false;
	*w = (struct room_waiter){ NULL, cb, arg };
	if (t->room_tail)
		t->room_tail->next = w;
	else
		t->room = w;
	t->room_tail = w;
	return true;
}

bool tier2_room_waiting(const struct server *s)
{
	return s->tier2 && s->tier2->room;
}

void tier2_begin_stop(struct server *s)
{
	struct tier2 *t = s->tier2;
	if (!t || t->flushing)
		return;
	t->flushing = true;
	pump_ex(s, true);
	if (t->demoting)
		log_info("writing %zu+ blocks to NVMe before exit, so a restart finds them",
			 t->demoting);
}

void tier2_tick(struct server *s)
{
	if (!s->tier2)
		return;
	pump(s);
	t2_tick(s->tier2->t2);
}

void tier2_after_put(struct server *s, struct t1_block *b)
{
	if (!s->tier2 || s->stopping)
		return;
	if (s->cfg->nvme_write == 1 && !(t1_block_flags(b) & (T1F_IN_T2 | T1F_DEMOTING)))
		demote_start(s, b); /* if staging is full, the next pump catches up */
	else
		pump(s);
}

void tier2_persist(struct server *s, const struct t1_key *key, tier2_persist_cb cb, void *arg)
{
	struct tier2 *t = s->tier2;
	if (!t) {
		cb(arg, -EOPNOTSUPP);
		return;
	}
	struct t1_block *b = t1_find(s->t1, key);
	if (b && (t1_block_flags(b) & T1F_DEMOTING)) {
		for (struct demote *d = t->active_demotes; d; d = d->next_active) {
			if (d->b != b)
				continue;
			struct persist_waiter *w = malloc(sizeof(*w));
			if (!w) {
				cb(arg, -ENOMEM);
				return;
			}
			*w = (struct persist_waiter){ d->waiters, cb, arg };
			d->waiters = w;
			return;
		}
	}
	if (t2_lookup(t->t2, key, NULL) == 0) {
		cb(arg, 0);
		return;
	}
	if (!b) {
		cb(arg, -ENOENT);
		return;
	}
	/* Only in RAM: write it now, admitted or not; a saved context needs it. */
	struct persist_waiter *w = malloc(sizeof(*w));
	struct demote *d = w ? demote_start_ex(s, b, true) : NULL;
	if (!d) {
		free(w);
		cb(arg, -ENOMEM);
		return;
	}
	*w = (struct persist_waiter){ NULL, cb, arg };
	d->waiters = w;
}

int tier2_ref(struct server *s, const struct t1_key *key)
{
	return s->tier2 ? t2_ref(s->tier2->t2, key) : -EOPNOTSUPP;
}

int tier2_unref(struct server *s, const struct t1_key *key)
{
	return s->tier2 ? t2_unref(s->tier2->t2, key) : -EOPNOTSUPP;
}

int tier2_foreach_ref(struct server *s,
		      int (*fn)(void *arg, const struct t1_key *key, uint32_t refs), void *arg)
{
	return s->tier2 ? t2_foreach_ref(s->tier2->t2, fn, arg) : -EOPNOTSUPP;
}

void tier2_flush(struct server *s, t2_done_fn done, void *arg)
{
	if (!s->tier2) {
		done(arg, -EOPNOTSUPP);
		return;
	}
	t2_flush(s->tier2->t2, done, arg);
}

bool tier2_droppable(const struct t1_block *b, void *arg)
{
	struct server *s = arg;
	return s->tier2 && !(t1_block_flags(b) & T1F_DEMOTING) && !admitted(s, b);
}

void tier2_on_evict(const struct t1_block *b, void *arg)
{
	struct server *s = arg;
	if (s->tier2 && !(t1_block_flags(b) & T1F_IN_T2))
		s->tier2->dropped_unwritten++;
}

int tier2_lookup(struct server *s, const struct t1_key *key, struct t2_info *info)
{
	if (!s->tier2)
		return -ENOENT;
	return t2_lookup(s->tier2->t2, key, info);
}

bool tier2_reachable(struct server *s, const struct t1_key *key)
{
	return t1_contains(s->t1, key) || (s->tier2 && t2_lookup(s->tier2->t2, key, NULL) == 0);
}

int tier2_delete(struct server *s, const struct t1_key *key)
{
	if (!s->tier2)
		return -ENOENT;
	return t2_delete(s->tier2->t2, key);
}

/* ---- open, close, stats ------------------------------------------------------- */

int tier2_open(struct server *s)
{
	const struct kvtd_config *cfg = s->cfg;
	if (!cfg->nvme_capacity) {
		log_info("NVMe tier (T2): off (nvme_capacity = 0)");
		return 0;
	}
	struct tier2 *t = calloc(1, sizeof(*t));
	if (!t)
		return -ENOMEM;
	struct io_config ic = { .backend = (enum io_backend)cfg->io_backend,
				.queue_depth = cfg->io_queue_depth,
				.threads = 4 };
	int rc = io_open(&ic, &t->io, t->backend, sizeof(t->backend));
	if (rc) {
		log_error("NVMe I/O engine: %s", strerror(-rc));
		free(t);
		return rc;
	}
	log_info("NVMe I/O: %s", t->backend);
	struct t2_config tc = {
		.dir = cfg->data_dir,
		.capacity = cfg->nvme_capacity,
		.segment_size = cfg->nvme_segment_size,
		.commit_interval_ms = (unsigned)cfg->nvme_commit_interval_ms,
		.io = t->io,
	};
	struct t2_open_report rep;
	char err[512] = "";
	rc = t2_open(&tc, &t->t2, &rep, err, sizeof(err));
	if (rc) {
		log_error("NVMe tier in %s could not be opened: %s", cfg->data_dir,
			  err[0] ? err : strerror(-rc));
		io_close(t->io);
		free(t);
		return rc;
	}
	if (err[0])
		log_warn("NVMe tier: %s", err);
	t->direct_io = rep.direct_io;
	log_info("NVMe tier (T2): %llu MiB in %llu MiB segments under %s; %s: %llu blocks "
		 "indexed, opened in %llu ms without scanning data; %s",
		 (unsigned long long)(cfg->nvme_capacity >> 20),
		 (unsigned long long)(rep.segment_size >> 20), cfg->data_dir,
		 rep.created ? "new store" : "warm restart", (unsigned long long)rep.blocks,
		 (unsigned long long)rep.open_ms,
		 rep.direct_io ? "O_DIRECT" : "buffered I/O (the file system refused O_DIRECT)");
	struct epoll_event e = { .events = EPOLLIN, .data.ptr = &t->io_tag };
	if (epoll_ctl(s->epfd, EPOLL_CTL_ADD, io_eventfd(t->io), &e) < 0) {
		rc = -errno;
		goto out_close;
	}
	e.data.ptr = &t->t2_tag;
	if (epoll_ctl(s->epfd, EPOLL_CTL_ADD, t2_eventfd(t->t2), &e) < 0) {
		rc = -errno;
		goto out_close;
	}
	s->tier2 = t;
	return 0;
out_close:
	t2_close(t->t2);
	io_close(t->io);
	free(t);
	return rc;
}

void tier2_close(struct server *s)
{
	struct tier2 *t = s->tier2;
	if (!t)
		return;
	t2_close(t->t2);
	io_close(t->io);
	while (t->spare) {
		struct sbuf *b = t->spare;
		t->spare = b->next;
		free(b->p);
		free(b);
	}
	s->tier2 = NULL;
	free(t);
}

void tier2_stats(struct server *s, struct kvt_stats_writer *w)
{
	struct tier2 *t = s->tier2;
	kvt_stats_writer_u64(w, "t2.active", t != NULL);
	if (!t)
		return;
	struct t2_stats st;
	t2_get_stats(t->t2, &st);
	struct io_stats is;
	io_get_stats(t->io, &is);
	kvt_stats_writer_text(w, "t2.backend", t->backend);
	kvt_stats_writer_u64(w, "t2.direct_io", t->direct_io);
	kvt_stats_writer_u64(w, "t2.capacity_bytes", st.capacity);
	kvt_stats_writer_u64(w, "t2.used_bytes", st.used);
	kvt_stats_writer_u64(w, "t2.segments_total", st.segments_total);
	kvt_stats_writer_u64(w, "t2.segments_free", st.segments_free);
	kvt_stats_writer_u64(w, "t2.blocks", st.blocks);
	kvt_stats_writer_u64(w, "t2.logical_bytes", st.logical_bytes);
	kvt_stats_writer_u64(w, "t2.stored_bytes", st.stored_bytes);
	kvt_stats_writer_u64(w, "t2.read_bytes", st.read_bytes);
	kvt_stats_writer_u64(w, "t2.write_bytes", st.write_bytes);
	kvt_stats_writer_u64(w, "t2.reads", st.reads);
	kvt_stats_writer_u64(w, "t2.writes", st.writes);
	kvt_stats_writer_u64(w, "t2.checksum_failures", st.checksum_failures);
	kvt_stats_writer_u64(w, "t2.io_errors", st.io_errors);
	kvt_stats_writer_u64(w, "t2.enospc", st.enospc);
	kvt_stats_writer_u64(w, "t2.cleaned_segments", st.cleaned_segments);
	kvt_stats_writer_u64(w, "t2.dropped_blocks", st.dropped_blocks);
	kvt_stats_writer_u64(w, "t2.relocated_blocks", st.relocated_blocks);
	kvt_stats_writer_u64(w, "t2.relocated_bytes", st.relocated_bytes);
	kvt_stats_writer_u64(w, "t2.commits", st.commits);
	kvt_stats_writer_u64(w, "t2.queue_depth", is.queue_depth);
	kvt_stats_writer_u64(w, "t2.inflight", is.inflight);
	kvt_stats_writer_u64(w, "t2.hits", t->hits);
	kvt_stats_writer_u64(w, "t2.promotions", t->promotions);
	kvt_stats_writer_u64(w, "t2.demotions", t->demotions);
	kvt_stats_writer_u64(w, "t2.demote_failures", t->demote_failures);
	kvt_stats_writer_u64(w, "t2.fetch_failures", t->fetch_failures);
	kvt_stats_writer_u64(w, "t2.readahead", t->readahead);
	kvt_stats_writer_u64(w, "t2.staging_bytes", t->staging_used);
	kvt_stats_writer_u64(w, "t2.direct_write_bytes", t->direct_used);
	kvt_stats_writer_u64(w, "t1.dropped_unwritten", t->dropped_unwritten);
	kvt_stats_writer_u64(w, "t1.orphans", t->orphans);
}

void tier2_count_hit(struct server *s)
{
	if (s->tier2)
		s->tier2->hits++;
}
