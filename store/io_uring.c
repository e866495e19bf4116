/*
 * io_uring.c - the I/O engine's io_uring backend (liburing): one ring per engine,
 * sized to the queue depth, completions signalled on the engine's eventfd, fixed
 * buffers when a request's buffer lies in a registered range.
 *
 * The ring starts disabled (IORING_SETUP_R_DISABLED) and is enabled at the first
 * submission, so with IORING_SETUP_SINGLE_ISSUER it binds to the owner thread
 * that submits, not to whichever thread happened to call io_open.
 */
#include <errno.h>
#include <liburing.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <unistd.h>

#include "io.h"
#include "io_internal.h"

/* Registered-buffer table: this many entries of at most IO_FIXED_PIECE each (the
 * kernel refuses a single buffer over 1 GiB). */
#define IO_FIXED_MAX 256u
#define IO_FIXED_PIECE ((size_t)1 << 30)

enum fixed_mode {
	FIXED_NONE,   /* nothing registered yet */
	FIXED_SPARSE, /* a sparse table, filled piece by piece (kernel >= 5.19) */
	FIXED_ONCE,   /* one whole-table registration; no more can be added */
};

struct uring {
	struct io_uring ring;
	bool enabled;          /* R_DISABLED rings are enabled at the first submission */
	unsigned unsubmitted;  /* SQEs prepared but not yet taken by the kernel */
	unsigned in_kernel;    /* taken by the kernel, CQE not yet seen */
	enum fixed_mode fixed_mode;
	unsigned nfixed;
	struct iovec fixed[IO_FIXED_MAX];
};

/* Set-up flags tried in turn: each later set drops what an older kernel may reject
 * with EINVAL (SINGLE_ISSUER is 6.0, COOP_TASKRUN 5.19, SUBMIT_ALL 5.18). */
static const unsigned setup_flag_sets[] = {
	IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_R_DISABLED | IORING_SETUP_COOP_TASKRUN |
		IORING_SETUP_SUBMIT_ALL,
	IORING_SETUP_COOP_TASKRUN | IORING_SETUP_SUBMIT_ALL,
	0,
};

static bool uring_disabled_by_env(void)
{
	const char *v = getenv("KVT_IO_URING_DISABLE");

	return v && *v && strcmp(v, "0") != 0;
}

static void describe_flags(unsigned flags, char *buf, size_t cap)
{
	static const struct {
		unsigned flag;
		const char *name;
	} names[] = {
		{ IORING_SETUP_SINGLE_ISSUER, "SINGLE_ISSUER" },
		{ IORING_SETUP_COOP_TASKRUN, "COOP_TASKRUN" },
		{ IORING_SETUP_SUBMIT_ALL, "SUBMIT_ALL" },
	};
	size_t len = 0;

	buf[0] = '\0';
	for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++) {
		if (!(flags & names[i].flag) || len >= cap)
			continue;
		len += (size_t)snprintf(buf + len, cap - len, "%s%s", len ? ", " : "",
					names[i].name);
	}
	if (!buf[0])
		snprintf(buf, cap, "no optional set-up flags");
}

/* liburing 2.3 (Debian 12) declares io_uring_enable_rings but does not export it;
 * the register call is all it does. */
static int ring_enable(struct io_uring *ring)
{
	if (syscall(__NR_io_uring_register, ring->ring_fd, IORING_REGISTER_ENABLE_RINGS, NULL, 0) < 0)
		return -errno;
	return 0;
}

/* The index of the registered piece holding [buf, buf+len), or -1. */
static int fixed_index(const struct uring *u, const void *buf, size_t len)
{
	uintptr_t b = (uintptr_t)buf;

	for (unsigned i = 0; i < u->nfixed; i++) {
		uintptr_t base = (uintptr_t)u->fixed[i].iov_base;

		if (b >= base && b - base <= u->fixed[i].iov_len &&
		    len <= u->fixed[i].iov_len - (b - base))
			return (int)i;
	}
	return -1;
}

static void prep_attempt(struct io_engine *e, struct uring *u, struct io_uring_sqe *sqe,
			 struct io_slot *s)
{
	const struct io_req *r = s->req;
	void *buf = io_slot_attempt_buf(s);
	unsigned len = (unsigned)io_slot_attempt_len(s);
	uint64_t off = io_slot_attempt_off(s);
	int idx = fixed_index(u, buf, len);

	if (idx >= 0) {
		if (r->write)
			io_uring_prep_write_fixed(sqe, r->fd, buf, len, off, idx);
		else
			io_uring_prep_read_fixed(sqe, r->fd, buf, len, off, idx);
		e->stats.fixed_ios++;
	} else {
		if (r->write)
			io_uring_prep_write(sqe, r->fd, buf, len, off);
		else
			io_uring_prep_read(sqe, r->fd, buf, len, off);
	}
	io_uring_sqe_set_data(sqe, s);
}

/* Hand the prepared SQEs to the kernel. SQEs it does not take stay in the ring
 * and go with the next submit. */
static void submit_prepared(struct io_engine *e, struct uring *u)
{
	for (unsigned tries = 0; u->unsubmitted > 0 && tries < 4; tries++) {
		int rc = io_uring_submit(&u->ring);

		if (rc > 0) {
			unsigned taken = (unsigned)rc < u->unsubmitted ? (unsigned)rc : u->unsubmitted;

			u->unsubmitted -= taken;
			u->in_kernel += taken;
			continue;
		}
		if (rc == 0 || rc == -EINTR)
			continue;
		/* -EAGAIN, -EBUSY: the kernel wants completions reaped first. */
		break;
	}
	/* With nothing in the kernel no completion will wake the owner: wake it
	 * ourselves so io_reap tries again (liburing#281's deadlock otherwise). */
	if ((u->unsubmitted > 0 || e->ready.head) && u->in_kernel == 0)
		io_core_kick(e);
}

static void uring_flush(struct io_engine *e)
{
	struct uring *u = e->impl;
	struct io_slot *s;

	if (!e->ready.head && u->unsubmitted == 0)
		return;
	if (!u->enabled) {
		int rc = ring_enable(&u->ring);

		if (rc < 0) {
			while ((s = io_fifo_pop(&e->ready)) != NULL)
				io_core_fail(e, s, rc);
			io_core_kick(e);
			return;
		}
		u->enabled = true;
	}
	while ((s = io_fifo_pop(&e->ready)) != NULL) {
		/* The SQ has queue-depth entries and at most queue-depth slots exist,
		 * so this fails only while the kernel has not consumed earlier SQEs. */
		struct io_uring_sqe *sqe = io_uring_get_sqe(&u->ring);

		if (!sqe) {
			io_fifo_push_front(&e->ready, s);
			break;
		}
		prep_attempt(e, u, sqe, s);
		u->unsubmitted++;
	}
	submit_prepared(e, u);
}

static void uring_reap(struct io_engine *e)
{
	struct uring *u = e->impl;
	struct io_uring_cqe *cqe;
	unsigned head, seen = 0;

	io_uring_for_each_cqe(&u->ring, head, cqe)
	{
		struct io_slot *s = io_uring_cqe_get_data(cqe);

		seen++;
		if (!s)
			continue;
		u->in_kernel--;
		io_core_attempt_done(e, s, cqe->res, 0);
	}
	io_uring_cq_advance(&u->ring, seen);
}

/* Clear table entries [from, to) of a sparse table (undoing a failed call). */
static void fixed_unregister(struct uring *u, unsigned from, unsigned to)
{
	for (unsigned i = from; i < to; i++) {
		struct iovec empty = { NULL, 0 };

		(void)io_uring_register_buffers_update_tag(&u->ring, i, &empty, NULL, 1);
	}
}

static int uring_buffers_register(struct io_engine *e, void *base, size_t len)
{
	struct uring *u = e->impl;
	size_t pieces = (len + IO_FIXED_PIECE - 1) / IO_FIXED_PIECE;
	struct iovec iov[IO_FIXED_MAX];
	unsigned first = u->nfixed;
	int rc;

	if (u->fixed_mode == FIXED_ONCE)
		return -EBUSY;
	if (pieces > IO_FIXED_MAX - u->nfixed)
		return -ENOSPC;
	for (size_t i = 0; i < pieces; i++) {
		size_t off = i * IO_FIXED_PIECE;

		iov[i].iov_base = (char *)base + off;
		iov[i].iov_len = len - off < IO_FIXED_PIECE ? len - off : IO_FIXED_PIECE;
	}
	if (u->fixed_mode == FIXED_NONE) {
		rc = io_uring_register_buffers_sparse(&u->ring, IO_FIXED_MAX);
		if (rc == -EINVAL || rc == -EOPNOTSUPP) {
			/* No sparse tables: register this range alone, once. */
			rc = io_uring_register_buffers(&u->ring, iov, (unsigned)pieces);
			if (rc < 0)
				return rc;
			memcpy(u->fixed, iov, pieces * sizeof(iov[0]));
			u->nfixed = (unsigned)pieces;
			u->fixed_mode = FIXED_ONCE;
			return 0;
		}
		if (rc < 0)
			return rc;
		u->fixed_mode = FIXED_SPARSE;
	}
	for (size_t i = 0; i < pieces; i++) {
		rc = io_uring_register_buffers_update_tag(&u->ring, u->nfixed, &iov[i], NULL, 1);
		if (rc < 0) {
			/* All or nothing: the caller may free a range it was told failed, and
			 * a stale entry would send later I/O to the old pages. */
			fixed_unregister(u, first, u->nfixed);
			u->nfixed = first;
			return rc;
		}
		u->fixed[u->nfixed++] = iov[i];
	}
	return 0;
}

static void uring_destroy(struct io_engine *e)
{
	struct uring *u = e->impl;

	io_uring_queue_exit(&u->ring);
	free(u);
	e->impl = NULL;
}

static const struct io_backend_ops uring_ops = {
	.flush = uring_flush,
	.reap = uring_reap,
	.buffers_register = uring_buffers_register,
	.destroy = uring_destroy,
};

/* Every opcode the engine may use, or -EOPNOTSUPP naming the first one missing. */
static int probe_opcodes(struct io_uring *ring, char *why, size_t whycap)
{
	static const struct {
		int op;
		const char *name;
	} needed[] = {
		{ IORING_OP_READ, "IORING_OP_READ" },
		{ IORING_OP_WRITE, "IORING_OP_WRITE" },
		{ IORING_OP_READ_FIXED, "IORING_OP_READ_FIXED" },
		{ IORING_OP_WRITE_FIXED, "IORING_OP_WRITE_FIXED" },
	};
	struct io_uring_probe *p = io_uring_get_probe_ring(ring);
	int rc = 0;

	if (!p) {
		snprintf(why, whycap, "the kernel cannot list its io_uring opcodes (before 5.6)");
		return -EOPNOTSUPP;
	}
	for (size_t i = 0; i < sizeof(needed) / sizeof(needed[0]); i++) {
		if (!io_uring_opcode_supported(p, needed[i].op)) {
			snprintf(why, whycap, "the kernel lacks %s", needed[i].name);
			rc = -EOPNOTSUPP;
			break;
		}
	}
	io_uring_free_probe(p);
	return rc;
}

int io_backend_uring_open(struct io_engine *e, char *why, size_t whycap)
{
	struct io_uring_params p;
	struct uring *u;
	char flags[96];
	int rc = -EINVAL;

	if (uring_disabled_by_env()) {
		snprintf(why, whycap, "%s (simulated by KVT_IO_URING_DISABLE=1)", strerror(EPERM));
		return -EPERM;
	}
	u = calloc(1, sizeof(*u));
	if (!u) {
		snprintf(why, whycap, "%s", strerror(ENOMEM));
		return -ENOMEM;
	}
	for (size_t i = 0; i < sizeof(setup_flag_sets) / sizeof(setup_flag_sets[0]); i++) {
		memset(&p, 0, sizeof(p));
		p.flags = setup_flag_sets[i];
		rc = io_uring_queue_init_params(e->queue_depth, &u->ring, &p);
		if (rc != -EINVAL)
			break;
	}
	if (rc < 0) {
		snprintf(why, whycap, "io_uring_queue_init_params: %s", strerror(-rc));
		goto out_free;
	}
	u->enabled = !(p.flags & IORING_SETUP_R_DISABLED);
	rc = probe_opcodes(&u->ring, why, whycap);
	if (rc < 0)
		goto out_ring;
	rc = io_uring_register_eventfd(&u->ring, e->efd);
	if (rc < 0) {
		snprintf(why, whycap, "io_uring_register_eventfd: %s", strerror(-rc));
		goto out_ring;
	}
	describe_flags(p.flags, flags, sizeof(flags));
	snprintf(why, whycap, "io_uring (queue depth %u; %s)", e->queue_depth, flags);
	e->impl = u;
	e->ops = &uring_ops;
	return 0;

out_ring:
	io_uring_queue_exit(&u->ring);
out_free:
	free(u);
	return rc;
}
