/*
 * io.h - the NVMe tier's I/O engine: batched asynchronous reads and writes on
 * O_DIRECT files, through io_uring (liburing) when the kernel allows it and a
 * pread/pwrite thread pool otherwise, with identical results.
 *
 * Threading: one owner thread (the daemon's loop) submits and reaps; completion
 * callbacks run on that thread inside io_reap. Every function below must be called
 * from the owner thread, except io_open, which may run on another thread before
 * the owner takes over (with io_uring the ring binds to the thread of the first
 * io_submit). The engine signals completions on an eventfd the owner polls.
 * Short transfers and -EAGAIN/-EINTR are retried inside the engine; a request
 * completes with its whole length done or with an error.
 *
 * Environment: KVT_IO_URING_DISABLE=1 makes io_uring set-up fail as if the
 * kernel had refused it with -EPERM (what kernel.io_uring_disabled=2 or a
 * container's seccomp profile does), so the fallback path can be tested honestly
 * on a machine where io_uring works: IO_BACKEND_AUTO then picks the thread pool
 * and says why, IO_BACKEND_URING fails with -EPERM.
 *
 * Fault injection (for tests): io_fault_set makes chosen completions fail, at the
 * completion level, identically for both backends.
 */
#ifndef KVT_IO_H
#define KVT_IO_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

enum io_backend { IO_BACKEND_AUTO = 0, IO_BACKEND_URING = 1, IO_BACKEND_THREADS = 2 };

#define IO_QUEUE_DEPTH_MAX 4096u
#define IO_THREADS_MAX 256u
/* A request that keeps failing with -EAGAIN or -EINTR is resubmitted this many
 * times in a row, then completes with that error (so a persistent "transient"
 * error cannot spin the owner forever). */
#define IO_TRANSIENT_RETRY_MAX 1000u

struct io_config {
	enum io_backend backend; /* AUTO: io_uring, else threads (reason recorded) */
	unsigned queue_depth;    /* ring entries / max requests in flight (default 64) */
	unsigned threads;        /* thread-pool size for the fallback (default 4) */
};

struct io_req {
	struct io_req *next;     /* free for the owner's lists while not submitted */
	int fd;                  /* an open file descriptor (O_DIRECT or not) */
	bool write;
	void *buf;               /* 4 KiB aligned for O_DIRECT files */
	size_t len;              /* multiple of 4096 for O_DIRECT files */
	uint64_t off;
	int result;              /* out: 0 (all len bytes done) or -errno; a read that
				  * meets end of file before len bytes gives -EIO */
	void (*done)(struct io_req *r); /* runs on the owner thread in io_reap */
	void *arg;
};

struct io_engine;

/*
 * Open an engine (cfg NULL: all defaults). *why receives a human sentence saying
 * which backend runs and why (e.g. "io_uring (queue depth 64; SINGLE_ISSUER,
 * COOP_TASKRUN)" or "thread pool (4 threads, queue depth 64): io_uring refused:
 * Operation not permitted"); why may be NULL. AUTO falls back to the thread pool
 * whatever the reason io_uring could not be set up; URING fails instead. Returns 0
 * and sets *out, or -EINVAL (queue depth over IO_QUEUE_DEPTH_MAX, threads over
 * IO_THREADS_MAX), -ENOMEM, or the set-up error of the backend asked for.
 */
int io_open(const struct io_config *cfg, struct io_engine **out, char *why, size_t whycap);
/* Wait for every request submitted, running the callbacks (requests they submit
 * are waited for too), then free the engine. NULL-safe; never from a callback. */
void io_close(struct io_engine *e);

enum io_backend io_backend(const struct io_engine *e); /* URING or THREADS, never AUTO */
/* Readable when io_reap has something to do; owned by the engine (do not close). */
int io_eventfd(const struct io_engine *e);

/* Register memory for fixed-buffer I/O (io_uring) — an optimisation only; buffers not
 * registered still work, and a request whose buffer lies inside a registered range
 * uses READ_FIXED/WRITE_FIXED by itself. May be called again for more ranges (up
 * to 256 GiB in all, cut into 1 GiB pieces). The memory must stay mapped until
 * io_close. Returns 0 or -errno (the caller may ignore failures): -ENOMEM when
 * RLIMIT_MEMLOCK is too small (without CAP_IPC_LOCK), -ENOSPC when the table is
 * full, -EINVAL for an empty range. The thread pool has nothing to register and
 * returns 0. */
int io_buffers_register(struct io_engine *e, void *base, size_t len);

/* Queue requests; they are submitted together (one io_uring_submit per call).
 * Requests beyond the queue depth wait in the engine, in order, and go out as
 * earlier ones complete. The engine owns each request (and uses its next field)
 * until its callback runs; the buffer must stay valid until then. May be called
 * from a completion callback. A request with len 0 completes with result 0. */
void io_submit(struct io_engine *e, struct io_req **reqs, size_t n);

/* Run the callbacks of completed requests, after resubmitting what must be retried
 * and submitting waiting requests into freed slots. Never blocks. Returns how many
 * completed; 0 when called from inside a callback (it does nothing there). */
size_t io_reap(struct io_engine *e);

/* Requests submitted and not yet reaped. */
size_t io_inflight(const struct io_engine *e);

/* Make completions fail: after skip more completions of the given kind pass
 * (write, read or both), the next one (or every one, if always) completes with
 * err (-EIO, -ENOSPC, ...), or, if err is 0 and short_io is set, as a short
 * transfer the engine must finish by retrying, or if err is -EAGAIN, as a
 * transient failure the engine must retry. io_fault_clear stops it.
 * A completion here is one attempt (one CQE, one worker pass): retries count too.
 * A short transfer reports half of what the attempt moved, rounded down to 4 KiB
 * so the remainder stays O_DIRECT-aligned; an attempt of 4 KiB or less, or one
 * that failed, passes unchanged (and still uses up a "once" fault). A positive
 * err is taken as its negative. f NULL clears. Faults act at the completion
 * level (a CQE's result, a worker's outcome), so real kernel I/O still happens. */
struct io_fault {
	bool on_write, on_read;
	unsigned skip;
	bool always;
	int err;
	bool short_io;
};
void io_fault_set(struct io_engine *e, const struct io_fault *f);
void io_fault_clear(struct io_engine *e);

/* reads/writes: requests completed (with or without error); *_bytes: bytes of those
 * that succeeded; errors: requests completed with an error; retries: attempts made
 * again after a short transfer, -EAGAIN or -EINTR; fixed_ios: attempts that used a
 * registered buffer (io_uring only). */
struct io_stats {
	uint64_t reads, writes, read_bytes, write_bytes, errors, retries, fixed_ios;
	unsigned queue_depth, inflight;
};
void io_get_stats(const struct io_engine *e, struct io_stats *s);

#endif /* KVT_IO_H */
