/*
 * io_internal.h - what the I/O engine's core (io.c) and its two backends
 * (io_uring.c, io_threads.c) share; nothing outside store/io*.c includes it.
 *
 * The core owns the requests: it keeps those beyond the queue depth waiting, gives
 * each admitted request a slot, decides after every attempt whether the request is
 * done, failed, or goes out again (short transfer, -EAGAIN, -EINTR, injected
 * faults), and runs the callbacks. A backend only carries attempts: it submits the
 * slots on e->ready and reports each attempt's raw result with io_core_attempt_done.
 */
#ifndef KVT_IO_INTERNAL_H
#define KVT_IO_INTERNAL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "io.h"

/* One attempt moves at most this much, so it fits an SQE's 32-bit length and the
 * int a CQE reports; longer requests continue in further attempts. */
#define IO_ATTEMPT_MAX ((size_t)1 << 30)

/* A request admitted to the backend (at most queue_depth at once). */
struct io_slot {
	struct io_slot *next;   /* free list, ready list, or a backend's queue */
	struct io_req *req;
	size_t done;            /* bytes of req finished by earlier attempts */
	unsigned transient;     /* -EAGAIN/-EINTR attempts in a row */
	int res;                /* thread pool: the attempt's result */
	unsigned worker_retries; /* thread pool: short transfers continued in the attempt */
};

struct io_slot_fifo {
	struct io_slot *head, **tail;
};

struct io_backend_ops {
	/* Submit every slot on e->ready (those it cannot take stay there). */
	void (*flush)(struct io_engine *e);
	/* Report every finished attempt through io_core_attempt_done. */
	void (*reap)(struct io_engine *e);
	int (*buffers_register)(struct io_engine *e, void *base, size_t len);
	/* Free the backend; nothing is in flight any more. */
	void (*destroy)(struct io_engine *e);
};

struct io_engine {
	enum io_backend backend;
	const struct io_backend_ops *ops;
	void *impl;                 /* the backend's state */
	int efd;                    /* completions (and kicks) are signalled here */
	unsigned queue_depth;

	struct io_slot *slots;      /* queue_depth of them */
	struct io_slot *free_slots;
	struct io_slot_fifo ready;  /* admitted, waiting for the backend to submit */

	struct io_req *waiting, **waiting_tail; /* beyond the queue depth, in order */
	struct io_req *done, **done_tail;       /* finished, callback not yet run */
	size_t nreq;                /* submitted and not yet called back */
	bool reaping;               /* inside io_reap: nested calls do nothing */

	bool fault_armed;
	unsigned fault_skip;
	struct io_fault fault;

	struct io_stats stats;
};

/* The attempt a slot stands for now: the part of the request not yet done. */
static inline size_t io_slot_attempt_len(const struct io_slot *s)
{
	size_t left = s->req->len - s->done;

	return left < IO_ATTEMPT_MAX ? left : IO_ATTEMPT_MAX;
}

static inline void *io_slot_attempt_buf(const struct io_slot *s)
{
	return (char *)s->req->buf + s->done;
}

static inline uint64_t io_slot_attempt_off(const struct io_slot *s)
{
	return s->req->off + s->done;
}

static inline void io_fifo_init(struct io_slot_fifo *f)
{
	f->head = NULL;
	f->tail = &f->head;
}

static inline void io_fifo_push(struct io_slot_fifo *f, struct io_slot *s)
{
	s->next = NULL;
	*f->tail = s;
	f->tail = &s->next;
}

static inline struct io_slot *io_fifo_pop(struct io_slot_fifo *f)
{
	struct io_slot *s = f->head;

	if (s) {
		f->head = s->next;
		if (!f->head)
			f->tail = &f->head;
		s->next = NULL;
	}
	return s;
}

/* Put a slot back at the head (a backend that could not take it). */
static inline void io_fifo_push_front(struct io_slot_fifo *f, struct io_slot *s)
{
	s->next = f->head;
	f->head = s;
	if (f->tail == &f->head)
		f->tail = &s->next;
}

/* Move all of src to the end of dst. */
static inline void io_fifo_splice(struct io_slot_fifo *dst, struct io_slot_fifo *src)
{
	if (!src->head)
		return;
	*dst->tail = src->head;
	dst->tail = src->tail;
	io_fifo_init(src);
}

/* Backends. Each fills e->ops and e->impl and writes its description into why.
 * Returns 0 or -errno (nothing left allocated). */
int io_backend_uring_open(struct io_engine *e, char *why, size_t whycap);
int io_backend_threads_open(struct io_engine *e, unsigned nthreads, char *why, size_t whycap);

/* An attempt of s finished with res (bytes moved or -errno); worker_retries counts
 * short transfers the backend continued by itself. Owner thread only. */
void io_core_attempt_done(struct io_engine *e, struct io_slot *s, int res,
			  unsigned worker_retries);

/* A slot's request ended without reaching the kernel (e.g. the ring could not be
 * enabled). */
void io_core_fail(struct io_engine *e, struct io_slot *s, int err);

/* Make the eventfd readable so the owner calls io_reap. Any thread. */
void io_core_kick(const struct io_engine *e);

#endif /* KVT_IO_INTERNAL_H */
