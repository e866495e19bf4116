/*
 * io_threads.c - the I/O engine's fallback backend: a pool of threads doing
 * pread/pwrite, for kernels or sandboxes where io_uring is refused.
 *
 * A worker takes one attempt at a time, continues short transfers itself (they are
 * counted as retries), and hands the raw outcome back to the owner through a
 * finished list and the engine's eventfd; io.c then decides exactly as it does for
 * a CQE. -EAGAIN and -EINTR go back to io.c too, so both backends retry them the
 * same way and under the same limit.
 */
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "io.h"
#include "io_internal.h"

struct pool {
	pthread_mutex_t lock;
	pthread_cond_t work;
	struct io_slot_fifo jobs;     /* attempts to make */
	struct io_slot_fifo finished; /* attempts made, for the owner to reap */
	bool stopping;
	unsigned nthreads;
	pthread_t *threads;
	const struct io_engine *e;    /* for its eventfd only */
};

/* One attempt: the slot's remaining bytes (up to IO_ATTEMPT_MAX). The owner does not
 * touch the slot while a worker holds it; the pool's lock orders the hand-overs. */
static void run_attempt(struct io_slot *s)
{
	const struct io_req *r = s->req;
	char *buf = io_slot_attempt_buf(s);
	size_t len = io_slot_attempt_len(s);
	uint64_t off = io_slot_attempt_off(s);
	size_t did = 0;
	unsigned retries = 0;
	int err = 0;

	while (did < len) {
		ssize_t n = r->write ? pwrite(r->fd, buf + did, len - did, (off_t)(off + did))
				     : pread(r->fd, buf + did, len - did, (off_t)(off + did));

		if (n <= 0) {
			err = n < 0 ? -errno : 0;
			break;
		}
		/* A continuation that moved bytes is what io_uring counts as a retry of a
		 * short CQE; one that failed is left for io.c to see. */
		if (did > 0)
			retries++;
		did += (size_t)n;
	}
	/* Bytes moved win over a later error: io.c retries the rest and meets the
	 * error itself, as it would after a short CQE. */
	s->res = did > 0 ? (int)did : err;
	s->worker_retries = retries;
}

static void *worker_main(void *arg)
{
	struct pool *p = arg;

	pthread_mutex_lock(&p->lock);
	for (;;) {
		struct io_slot *s = io_fifo_pop(&p->jobs);
		bool was_empty;

		if (!s) {
			if (p->stopping)
				break;
			pthread_cond_wait(&p->work, &p->lock);
			continue;
		}
		pthread_mutex_unlock(&p->lock);
		run_attempt(s);
		pthread_mutex_lock(&p->lock);
		/* Signal only the first of a batch: until the owner takes the list, the
		 * eventfd is already readable for it. */
		was_empty = p->finished.head == NULL;
		io_fifo_push(&p->finished, s);
		if (was_empty) {
			pthread_mutex_unlock(&p->lock);
			io_core_kick(p->e);
			pthread_mutex_lock(&p->lock);
		}
	}
	pthread_mutex_unlock(&p->lock);
	return NULL;
}

static void threads_flush(struct io_engine *e)
{
	struct pool *p = e->impl;

	bool one;

	if (!e->ready.head)
		return;
	one = e->ready.head->next == NULL;
	pthread_mutex_lock(&p->lock);
	io_fifo_splice(&p->jobs, &e->ready);
	/* One job needs one worker; waking them all would only have the rest find
	 * nothing and sleep again. */
	if (one)
		pthread_cond_signal(&p->work);
	else
		pthread_cond_broadcast(&p->work);
	pthread_mutex_unlock(&p->lock);
}

static void threads_reap(struct io_engine *e)
{
	struct pool *p = e->impl;
	struct io_slot_fifo got;
	struct io_slot *s, *next;

	io_fifo_init(&got);
	pthread_mutex_lock(&p->lock);
	io_fifo_splice(&got, &p->finished);
	pthread_mutex_unlock(&p->lock);
	for (s = got.head; s; s = next) {
		next = s->next; /* attempt_done may queue s again */
		io_core_attempt_done(e, s, s->res, s->worker_retries);
	}
}

static int threads_buffers_register(struct io_engine *e, void *base, size_t len)
{
	(void)e;
	(void)base;
	(void)len;
	return 0; /* pread/pwrite have nothing to register */
}

/* Stop and join the first n workers, then free the pool. */
static void pool_free(struct pool *p, unsigned n)
{
	pthread_mutex_lock(&p->lock);
	p->stopping = true;
	pthread_cond_broadcast(&p->work);
	pthread_mutex_unlock(&p->lock);
	for (unsigned i = 0; i < n; i++)
		pthread_join(p->threads[i], NULL);
	pthread_cond_destroy(&p->work);
	pthread_mutex_destroy(&p->lock);
	free(p->threads);
	free(p);
}

static void threads_destroy(struct io_engine *e)
{
	struct pool *p = e->impl;

	pool_free(p, p->nthreads);
	e->impl = NULL;
}

static const struct io_backend_ops threads_ops = {
	.flush = threads_flush,
	.reap = threads_reap,
	.buffers_register = threads_buffers_register,
	.destroy = threads_destroy,
};

int io_backend_threads_open(struct io_engine *e, unsigned nthreads, char *why, size_t whycap)
{
	sigset_t all, old;
	struct pool *p;
	unsigned started = 0;
	int rc = 0;

	/* More workers than requests in flight would only sleep. */
	if (nthreads > e->queue_depth)
		nthreads = e->queue_depth;
	p = calloc(1, sizeof(*p));
	if (!p)
		goto out_nomem;
	p->threads = calloc(nthreads, sizeof(*p->threads));
	if (!p->threads) {
		free(p);
		goto out_nomem;
	}
	pthread_mutex_init(&p->lock, NULL);
	pthread_cond_init(&p->work, NULL);
	io_fifo_init(&p->jobs);
	io_fifo_init(&p->finished);
	p->e = e;
	p->nthreads = nthreads;

	/* Workers take no signals: the daemon's handlers run on its own threads. */
	sigfillset(&all);
	pthread_sigmask(SIG_SETMASK, &all, &old);
	for (; started < nthreads; started++) {
		rc = pthread_create(&p->threads[started], NULL, worker_main, p);
		if (rc != 0)
			break;
		pthread_setname_np(p->threads[started], "kvt-io");
	}
	pthread_sigmask(SIG_SETMASK, &old, NULL);
	if (rc != 0) {
		snprintf(why, whycap, "pthread_create: %s", strerror(rc));
		pool_free(p, started);
		return -rc;
	}
	snprintf(why, whycap, "thread pool (%u threads, queue depth %u)", nthreads,
		 e->queue_depth);
	e->impl = p;
	e->ops = &threads_ops;
	return 0;

out_nomem:
	snprintf(why, whycap, "%s", strerror(ENOMEM));
	return -ENOMEM;
}
