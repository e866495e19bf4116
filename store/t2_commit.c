/*
 * t2_commit.c - the NVMe tier's committer thread: group commit. It takes every
 * operation the owner queued (waiting up to commit_interval_ms for more to join),
 * makes the segments written by the group durable (fdatasync), then applies the
 * whole group in one LMDB write transaction, and hands the finished group back to
 * the owner through the eventfd. Data first, then the index: an indexed record is
 * always on stable storage, and a record whose write never finished is never
 * indexed.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "t2_internal.h"

/* Most ops in one transaction: keeps LMDB's dirty-page list (MDB_TXN_FULL) and
 * the owner's latency per batch bounded. */
#define T2_BATCH_MAX 8192u

int (*t2_fdatasync_fn)(int fd) = fdatasync;

void t2_batch_free(struct t2_batch *b)
{
	if (!b)
		return;
	free(b->upd_seg);
	free(b->upd_row);
	free(b);
}

/* fdatasync each segment file the group wrote, once; ops whose file failed are
 * marked unsynced (they will not be indexed). */
static void sync_segments(struct t2_op *ops, struct t2_batch *b)
{
	int fds_small[32], *fds = fds_small;
	size_t nfds = 0, cap = sizeof(fds_small) / sizeof(fds_small[0]);

	for (struct t2_op *op = ops; op; op = op->next) {
		bool seen = false;

		if (op->kind != T2_OP_INSERT && op->kind != T2_OP_MOVE)
			continue;
		for (size_t i = 0; i < nfds && !seen; i++)
			seen = fds[i] == op->fd;
		if (seen)
			continue;
		if (nfds == cap) {
			int *n = malloc(cap * 2 * sizeof(*n));

			if (!n) {
				/* Cannot even list them: nothing of this group is
				 * known durable, so nothing of it is indexed. */
				for (struct t2_op *o = ops; o; o = o->next)
					o->unsynced = o->kind == T2_OP_INSERT ||
						      o->kind == T2_OP_MOVE;
				goto out;
			}
			memcpy(n, fds, nfds * sizeof(*n));
			if (fds != fds_small)
				free(fds);
			fds = n;
			cap *= 2;
		}
		fds[nfds++] = op->fd;
	}
	for (size_t i = 0; i < nfds; i++) {
		int rc;

		do {
			rc = t2_fdatasync_fn(fds[i]);
		} while (rc < 0 && errno == EINTR);
		if (rc == 0)
			continue;
		/* Never retried-and-trusted: after a failed fdatasync the kernel may
		 * have dropped the dirty state, so a second success proves nothing. */
		for (struct t2_op *op = ops; op; op = op->next) {
			if ((op->kind == T2_OP_INSERT || op->kind == T2_OP_MOVE) &&
			    op->fd == fds[i]) {
				op->unsynced = true;
				b->sync_failed_seg = (int)op->e.loc.seg;
			}
		}
	}
out:
	if (fds != fds_small)
		free(fds);
}

static struct t2_batch *process(struct t2_committer *c, struct t2_op *ops)
{
	struct t2_batch *b = calloc(1, sizeof(*b));
	int rc;

	/* Out of memory for a few bytes here would lose track of what the index
	 * holds; failing loudly is better than serving from a state we cannot know. */
	if (!b)
		abort();
	b->ops = ops;
	b->sync_failed_seg = -1;
	sync_segments(ops, b);
	rc = t2_index_apply(c->ix, ops, c->rows, c->dirty, c->nrows);
	for (struct t2_op *op = ops; op; op = op->next) {
		if (rc)
			op->status = rc;
		else if (op->unsynced)
			op->status = -EIO;
	}
	if (rc == 0) {
		size_t n = 0;

		for (size_t i = 0; i < c->nrows; i++)
			n += c->dirty[i];
		if (n) {
			b->upd_seg = malloc(n * sizeof(*b->upd_seg));
			b->upd_row = malloc(n * sizeof(*b->upd_row));
			if (!b->upd_seg || !b->upd_row)
				abort();
			for (size_t i = 0; i < c->nrows; i++) {
				if (!c->dirty[i])
					continue;
				b->upd_seg[b->nupd] = (uint32_t)i;
				b->upd_row[b->nupd++] = c->rows[i];
				c->dirty[i] = false;
			}
		}
	}
	atomic_fetch_add(&c->commits, 1);
	return b;
}

static void *committer_main(void *arg)
{
	struct t2_committer *c = arg;

	pthread_mutex_lock(&c->mu);
	for (;;) {
		struct t2_op *ops, **tail;
		struct t2_batch *b;
		size_t n = 0;

		while (!c->q_head && !c->stop)
			pthread_cond_wait(&c->cv, &c->mu);
		if (!c->q_head)
			break;
		/* Group commit: let the group grow until the oldest op has waited
		 * the interval, unless someone needs it now. */
		while (!c->urgent && !c->stop && c->q_len < T2_BATCH_MAX &&
		       lmdb_committer_wait(&c->cv, &c->mu, c->q_first_ms + c->interval_ms))
			;
		ops = c->q_head;
		tail = &c->q_head;
		while (*tail && n < T2_BATCH_MAX) {
			tail = &(*tail)->next;
			n++;
		}
		c->q_head = *tail;
		*tail = NULL;
		c->q_len -= n;
		if (!c->q_head) {
			c->q_tail = &c->q_head;
			c->urgent = false;
		} else {
			c->q_first_ms = t2_mono_ms();
		}
		pthread_mutex_unlock(&c->mu);

		b = process(c, ops);

		pthread_mutex_lock(&c->mu);
		*c->done_tail = b;
		c->done_tail = &b->next;
		lmdb_notify(c->efd);
	}
	pthread_mutex_unlock(&c->mu);
	return NULL;
}

int t2_commit_start(struct t2_committer *c, struct t2_index *ix, int efd, unsigned interval_ms,
		    const struct t2_segrow *rows, size_t nrows)
{
	int rc;

	memset(c, 0, sizeof(*c));
	c->ix = ix;
	c->efd = efd;
	c->interval_ms = interval_ms;
	c->nrows = nrows;
	c->q_tail = &c->q_head;
	c->done_tail = &c->done_head;
	c->rows = malloc((nrows ? nrows : 1) * sizeof(*c->rows));
	c->dirty = calloc(nrows ? nrows : 1, sizeof(*c->dirty));
	if (!c->rows || !c->dirty) {
		rc = -ENOMEM;
		goto out_free;
	}
	memcpy(c->rows, rows, nrows * sizeof(*rows));
	if ((rc = lmdb_committer_sync_init(&c->mu, &c->cv))) {
		rc = -rc;
		goto out_free;
	}
	if ((rc = pthread_create(&c->thread, NULL, committer_main, c))) {
		rc = -rc;
		goto out_sync;
	}
	c->started = true;
	return 0;

out_sync:
	pthread_cond_destroy(&c->cv);
	pthread_mutex_destroy(&c->mu);
out_free:
	free(c->rows);
	free(c->dirty);
	c->rows = NULL;
	c->dirty = NULL;
	return rc;
}

void t2_commit_stop(struct t2_committer *c)
{
	if (!c->started)
		return;
	lmdb_committer_join(&c->mu, &c->cv, &c->stop, c->thread);
	c->started = false;
	/* Batches not taken yet stay for t2_commit_take. */
}

void t2_commit_push(struct t2_committer *c, struct t2_op *head, struct t2_op *tail, size_t n,
		    bool urgent)
{
	if (!head)
		return;
	tail->next = NULL;
	pthread_mutex_lock(&c->mu);
	if (!c->q_head)
		c->q_first_ms = t2_mono_ms();
	*c->q_tail = head;
	c->q_tail = &tail->next;
	c->q_len += n;
	c->urgent = c->urgent || urgent || c->interval_ms == 0;
	pthread_cond_signal(&c->cv);
	pthread_mutex_unlock(&c->mu);
}

struct t2_batch *t2_commit_take(struct t2_committer *c)
{
	struct t2_batch *b;

	pthread_mutex_lock(&c->mu);
	b = c->done_head;
	c->done_head = NULL;
	c->done_tail = &c->done_head;
	pthread_mutex_unlock(&c->mu);
	return b;
}

void t2_commit_destroy(struct t2_committer *c)
{
	if (!c->rows)
		return;
	pthread_cond_destroy(&c->cv);
	pthread_mutex_destroy(&c->mu);
	free(c->rows);
	free(c->dirty);
	c->rows = NULL;
	c->dirty = NULL;
}
