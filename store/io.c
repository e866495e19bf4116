/*
 * io.c - the I/O engine's core, shared by both backends: choosing the backend,
 * the queue beyond the queue depth, deciding after each attempt whether a request
 * is done, failed or goes out again, fault injection, callbacks and statistics.
 *
 * Every decision about a request is taken here, on the owner thread, from the raw
 * result of an attempt (a CQE's res, or a worker's pread/pwrite outcome), so the
 * two backends cannot drift apart in what they retry, how they fail, or how an
 * injected fault plays out.
 */
#include <errno.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include "io.h"
#include "io_internal.h"

#define IO_DEFAULT_QUEUE_DEPTH 64u
#define IO_DEFAULT_THREADS 4u

/* A short transfer injected by io_fault_set keeps the remainder 4 KiB aligned. */
#define IO_FAULT_SHORT_ALIGN 4096u

void io_core_kick(const struct io_engine *e)
{
	uint64_t one = 1;

	/* EAGAIN means the counter is already non-zero: the owner will wake anyway. */
	while (write(e->efd, &one, sizeof(one)) < 0 && errno == EINTR)
		;
}

/* The request ends with rc; its callback runs at the next io_reap. */
static void request_complete(struct io_engine *e, struct io_req *r, int rc)
{
	r->result = rc;
	if (r->write)
		e->stats.writes++;
	else
		e->stats.reads++;
	if (rc == 0) {
		if (r->write)
			e->stats.write_bytes += r->len;
		else
			e->stats.read_bytes += r->len;
	} else {
		e->stats.errors++;
	}
	r->next = NULL;
	*e->done_tail = r;
	e->done_tail = &r->next;
}

static void slot_finish(struct io_engine *e, struct io_slot *s, int rc)
{
	request_complete(e, s->req, rc);
	s->req = NULL;
	s->next = e->free_slots;
	e->free_slots = s;
}

void io_core_fail(struct io_engine *e, struct io_slot *s, int err)
{
	slot_finish(e, s, err);
}

/* Give free slots to waiting requests, oldest first. */
static void admit_waiting(struct io_engine *e)
{
	while (e->free_slots && e->waiting) {
		struct io_slot *s = e->free_slots;
		struct io_req *r = e->waiting;

		e->free_slots = s->next;
		e->waiting = r->next;
		if (!e->waiting)
			e->waiting_tail = &e->waiting;
		r->next = NULL;
		s->req = r;
		s->done = 0;
		s->transient = 0;
		io_fifo_push(&e->ready, s);
	}
}

/* Rewrite an attempt's result as io_fault_set asked (see io.h). */
static int fault_apply(struct io_engine *e, const struct io_req *r, int res)
{
	const struct io_fault *f = &e->fault;
	size_t shortened;

	if (!e->fault_armed || !(r->write ? f->on_write : f->on_read))
		return res;
	if (e->fault_skip > 0) {
		e->fault_skip--;
		return res;
	}
	if (!f->always)
		e->fault_armed = false;
	if (f->err)
		return f->err;
	/* short_io: claim half of what moved; the engine must fetch the rest. */
	if (res <= (int)IO_FAULT_SHORT_ALIGN)
		return res;
	shortened = ((size_t)res / 2) & ~(size_t)(IO_FAULT_SHORT_ALIGN - 1);
	return shortened ? (int)shortened : res;
}

void io_core_attempt_done(struct io_engine *e, struct io_slot *s, int res,
			  unsigned worker_retries)
{
	const struct io_req *r = s->req;
	size_t attempt = io_slot_attempt_len(s);

	e->stats.retries += worker_retries;
	res = fault_apply(e, r, res);

	if (res == -EAGAIN || res == -EINTR) {
		if (s->transient >= IO_TRANSIENT_RETRY_MAX) {
			slot_finish(e, s, res);
			return;
		}
		s->transient++;
		e->stats.retries++;
		io_fifo_push(&e->ready, s);
		return;
	}
	if (res < 0) {
		slot_finish(e, s, res);
		return;
	}
	if (res == 0) {
		/* End of file for a read; a write that cannot progress. Retrying would spin. */
		slot_finish(e, s, -EIO);
		return;
	}
	if ((size_t)res > attempt)
		res = (int)attempt; /* never trust a count beyond what was asked */
	s->done += (size_t)res;
	s->transient = 0;
	if (s->done == r->len) {
		slot_finish(e, s, 0);
		return;
	}
	/* Only a transfer shorter than asked is a retry; a request over
	 * IO_ATTEMPT_MAX continuing in its next piece is not. */
	if ((size_t)res < attempt)
		e->stats.retries++;
	io_fifo_push(&e->ready, s);
}

int io_open(const struct io_config *cfg, struct io_engine **out, char *why, size_t whycap)
{
	struct io_config c = { IO_BACKEND_AUTO, 0, 0 };
	char uring_why[256] = "", threads_why[128] = "";
	struct io_engine *e;
	int rc;

	if (cfg)
		c = *cfg;
	if (why && whycap)
		why[0] = '\0';
	if (!out)
		return -EINVAL;
	if (c.queue_depth == 0)
		c.queue_depth = IO_DEFAULT_QUEUE_DEPTH;
	if (c.threads == 0)
		c.threads = IO_DEFAULT_THREADS;
	if (c.queue_depth > IO_QUEUE_DEPTH_MAX || c.threads > IO_THREADS_MAX)
		return -EINVAL;
	if (c.backend != IO_BACKEND_AUTO && c.backend != IO_BACKEND_URING &&
	    c.backend != IO_BACKEND_THREADS)
		return -EINVAL;

	e = calloc(1, sizeof(*e));
	if (!e)
		return -ENOMEM;
	e->slots = calloc(c.queue_depth, sizeof(*e->slots));
	if (!e->slots) {
		rc = -ENOMEM;
		goto out_engine;
	}
	e->efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
	if (e->efd < 0) {
		rc = -errno;
		goto out_slots;
	}
	e->queue_depth = c.queue_depth;
	for (unsigned i = c.queue_depth; i-- > 0;) {
		e->slots[i].next = e->free_slots;
		e->free_slots = &e->slots[i];
	}
	io_fifo_init(&e->ready);
	e->waiting_tail = &e->waiting;
	e->done_tail = &e->done;
	e->stats.queue_depth = c.queue_depth;

	if (c.backend != IO_BACKEND_THREADS) {
		rc = io_backend_uring_open(e, uring_why, sizeof(uring_why));
		if (rc == 0) {
			e->backend = IO_BACKEND_URING;
			if (why && whycap)
				snprintf(why, whycap, "%s", uring_why);
			goto out_ok;
		}
		if (c.backend == IO_BACKEND_URING) {
			if (why && whycap)
				snprintf(why, whycap, "io_uring refused: %s", uring_why);
			goto out_efd;
		}
	}
	rc = io_backend_threads_open(e, c.threads, threads_why, sizeof(threads_why));
	if (rc < 0) {
		if (why && whycap)
			snprintf(why, whycap, "thread pool failed: %s", threads_why);
		goto out_efd;
	}
	e->backend = IO_BACKEND_THREADS;
	if (why && whycap) {
		if (c.backend == IO_BACKEND_THREADS)
			snprintf(why, whycap, "%s: chosen in the configuration", threads_why);
		else
			snprintf(why, whycap, "%s: io_uring refused: %s", threads_why, uring_why);
	}
out_ok:
	*out = e;
	return 0;

out_efd:
	close(e->efd);
out_slots:
	free(e->slots);
out_engine:
	free(e);
	return rc;
}

void io_close(struct io_engine *e)
{
	if (!e)
		return;
	/* From inside a callback the requests still listed could never be called
	 * back; waiting would hang the owner for good. */
	if (e->reaping)
		abort();
	while (e->nreq > 0) {
		struct pollfd p = { .fd = e->efd, .events = POLLIN };

		if (io_reap(e) > 0)
			continue;
		/* A bounded wait: a submission the kernel refused for a moment is
		 * retried by io_reap even if nothing signals. */
		(void)poll(&p, 1, 100);
	}
	e->ops->destroy(e);
	close(e->efd);
	free(e->slots);
	free(e);
}

enum io_backend io_backend(const struct io_engine *e)
{
	return e->backend;
}

int io_eventfd(const struct io_engine *e)
{
	return e->efd;
}

int io_buffers_register(struct io_engine *e, void *base, size_t len)
{
	if (!e || !base || len == 0)
		return -EINVAL;
	return e->ops->buffers_register(e, base, len);
}

void io_submit(struct io_engine *e, struct io_req **reqs, size_t n)
{
	bool kick = false;

	for (size_t i = 0; i < n; i++) {
		struct io_req *r = reqs[i];

		r->next = NULL;
		r->result = 0;
		e->nreq++;
		if (r->len == 0) {
			request_complete(e, r, 0);
			kick = true;
			continue;
		}
		*e->waiting_tail = r;
		e->waiting_tail = &r->next;
	}
	admit_waiting(e);
	e->ops->flush(e);
	if (kick)
		io_core_kick(e);
}

size_t io_reap(struct io_engine *e)
{
	uint64_t ignored;
	size_t n = 0;
	struct io_req *r;

	if (e->reaping)
		return 0;
	e->reaping = true;
	/* Clear the eventfd before looking: a completion landing after this read
	 * signals it again, so none is missed. */
	while (read(e->efd, &ignored, sizeof(ignored)) < 0 && errno == EINTR)
		;
	e->ops->reap(e);
	admit_waiting(e);
	e->ops->flush(e);
	/* Callbacks last: they may submit, and what they submit queues behind the
	 * requests that were already waiting. */
	while ((r = e->done) != NULL) {
		e->done = r->next;
		if (!e->done)
			e->done_tail = &e->done;
		r->next = NULL;
		e->nreq--;
		n++;
		if (r->done)
			r->done(r);
	}
	e->reaping = false;
	return n;
}

size_t io_inflight(const struct io_engine *e)
{
	return e->nreq;
}

void io_fault_set(struct io_engine *e, const struct io_fault *f)
{
	if (!f) {
		io_fault_clear(e);
		return;
	}
	e->fault = *f;
	if (e->fault.err > 0)
		e->fault.err = -e->fault.err;
	e->fault_skip = f->skip;
	e->fault_armed = (f->on_read || f->on_write) && (f->err != 0 || f->short_io);
}

void io_fault_clear(struct io_engine *e)
{
	memset(&e->fault, 0, sizeof(e->fault));
	e->fault_armed = false;
	e->fault_skip = 0;
}

void io_get_stats(const struct io_engine *e, struct io_stats *s)
{
	*s = e->stats;
	s->queue_depth = e->queue_depth;
	s->inflight = e->nreq > UINT32_MAX ? UINT32_MAX : (unsigned)e->nreq;
}
