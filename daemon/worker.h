/*
 * worker.h - the copy engine: worker threads that move bulk bytes between client
 * regions and tier memory, so the event loop never stalls on a large transfer.
 *
 * A job is a list of copy segments plus a completion callback. Segments are
 * claimed one at a time by any idle worker, so one large transfer spreads over
 * all workers while small ones from other clients still get a turn. When the last
 * segment of a job is done the job is handed back to the loop thread through an
 * eventfd; its callback runs there, never on a worker.
 */
#ifndef KVTD_WORKER_H
#define KVTD_WORKER_H

#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

/* Largest piece one worker copies before the next claim; keeps big jobs shareable. */
#define COPY_PIECE (2u << 20)

struct copy_seg {
	void *dst;
	const void *src;
	size_t len;
};

struct codec_ctx;

/*
 * A job is nsegs tasks. By default task i copies segs[i]; a job with run set
 * does run(j, i, ctx) instead (compression, checksums, decoding), where ctx is
 * the worker thread's own codec context.
 */
struct job {
	struct job *next;       /* queue link (pending or completed) */
	struct copy_seg *segs;  /* owned by whoever made the job */
	size_t nsegs;           /* number of tasks */
	void (*run)(struct job *j, size_t i, struct codec_ctx *ctx);
	size_t next_seg;        /* next unclaimed segment; under the pool lock */
	atomic_size_t remaining; /* segments not yet copied */
	void (*done)(struct job *j); /* runs on the loop thread */
	void *arg;
};

struct workers;

/* Start n threads, each with a codec context at zstd_level. Returns 0 or -errno. */
int workers_start(unsigned n, int zstd_level, struct workers **out);

/* The eventfd the loop polls for completions. */
int workers_eventfd(const struct workers *w);

/* Queue a job (loop thread). A job with no segments completes at once. */
void workers_submit(struct workers *w, struct job *j);

/* Run the callbacks of completed jobs (loop thread, when the eventfd is readable). */
void workers_reap(struct workers *w);

/* Jobs submitted and not yet reaped. */
size_t workers_busy(const struct workers *w);

/* Stop and join the threads; queued jobs must have been reaped. NULL-safe. */
void workers_stop(struct workers *w);

/* Append a copy of len bytes to a segment array, split into COPY_PIECE pieces.
 * *segs grows as needed (*cap tracks its size). Returns 0 or -ENOMEM. */
int copy_segs_add(struct copy_seg **segs, size_t *n, size_t *cap, void *dst, const void *src,
		  size_t len);

#endif /* KVTD_WORKER_H */
