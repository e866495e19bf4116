/*
 * region.c - libkvtier shared-memory regions: sealed memfds mapped into this
 * process and handed to the daemon with REGISTER (the fd travels as SCM_RIGHTS),
 * UNREGISTER, and what happens to region handles when their connection closes.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "client.h"
#include "export.h"

static int register_encode(struct kvt_conn *c, struct kvt_op *op, size_t first, size_t count,
			   uint8_t *out, size_t cap)
{
	const struct kvt_region *r = op->ctx;
	struct kvt_register_req m = { .size = r->size, .flags = 0 };

	(void)c;
	(void)first;
	(void)count;
	return kvt_register_req_encode(&m, out, cap);
}

static int register_reply(struct kvt_conn *c, struct kvt_op *op, const struct kvt_req *rq,
			  const uint8_t *body, size_t len)
{
	struct kvt_region *r = op->ctx;

	(void)c;
	(void)rq;
	return kvt_register_rep_id(body, len, &r->id);
}

int kvt_register_rep_id(const uint8_t *body, size_t len, uint32_t *id)
{
	struct kvt_register_rep m;
	int rc = kvt_register_rep_decode(body, len, &m);

	if (rc)
		return rc;
	if (m.region_id == 0)
		return KVT_EPROTO; /* 0 is the id we use for "no region" */
	*id = m.region_id;
	return 0;
}

int kvt_unregister_body(uint32_t id, uint8_t *out, size_t cap)
{
	struct kvt_unregister_req m = { .region_id = id };

	return kvt_unregister_req_encode(&m, out, cap);
}

static int unregister_encode(struct kvt_conn *c, struct kvt_op *op, size_t first, size_t count,
			     uint8_t *out, size_t cap)
{
	const struct kvt_region *r = op->ctx;

	(void)c;
	(void)first;
	(void)count;
	return kvt_unregister_body(r->id, out, cap);
}

static void regions_link(struct kvt_conn *c, struct kvt_region *r)
{
	r->conn = c;
	r->prev = NULL;
	r->next = c->regions;
	if (c->regions)
		c->regions->prev = r;
	c->regions = r;
}

static void regions_unlink(struct kvt_region *r)
{
	struct kvt_conn *c = r->conn;

	if (r->prev)
		r->prev->next = r->next;
	else
		c->regions = r->next;
	if (r->next)
		r->next->prev = r->prev;
	r->next = r->prev = NULL;
	r->conn = NULL;
}

/*
 * Map fd (which the caller keeps and closes) and register it. The mapping is made
 * first so a daemon refusal costs only an munmap, and so the handle never exists
 * without memory behind it.
 */
static int region_attach(struct kvt_conn *c, int fd, size_t size, kvt_region **out)
{
	struct kvt_region *r;
	struct kvt_op op;
	int rc;

	r = calloc(1, sizeof(*r));
	if (!r)
		return KVT_ENOMEM;
	r->size = size;
	r->base = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
	if (r->base == MAP_FAILED) {
		/* EACCES/ENODEV: the fd cannot be mapped shared and writable. */
		rc = errno == ENOMEM ? KVT_ENOMEM : KVT_EBADF;
		goto out_free;
	}

	kvt_op_init_single(&op, KVT_OP_REGISTER, KVT_REGISTER_REQ_SIZE, register_encode,
			   register_reply, r);
	op.send_fd = fd;
	rc = kvt_op_run(c, &op);
	if (rc)
		goto out_unmap;

	regions_link(c, r);
	*out = r;
	return 0;

out_unmap:
	munmap(r->base, size);
out_free:
	free(r);
	return rc;
}

/* Checks shared by both ways of making a region. */
static int region_check(struct kvt_conn *c, size_t size, kvt_region **out)
{
	if (!c || !out || size == 0)
		return KVT_EINVAL;
	if ((uint64_t)size > c->info.max_region_size)
		return KVT_EMSGSIZE;
	return kvt_conn_usable(c);
}

KVT_EXPORT int kvt_region_create(kvt_conn *c, size_t size, kvt_region **out)
{
	int fd, rc;

	rc = region_check(c, size, out);
	if (rc)
		return rc;
	fd = memfd_create("kvtier-region", MFD_CLOEXEC | MFD_ALLOW_SEALING);
	if (fd < 0)
		return kvt_from_errno(errno);
	if (ftruncate(fd, (off_t)size) < 0) {
		rc = kvt_from_errno(errno);
		goto out_close;
	}
	/* The daemon maps this memory too: it must never shrink under it. */
	if (fcntl(fd, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL) < 0) {
		rc = kvt_from_errno(errno);
		goto out_close;
	}
	rc = region_attach(c, fd, size, out);

out_close:
	/* The mapping and the daemon's copy keep the memory; the fd is not needed. */
	close(fd);
	return rc;
}

KVT_EXPORT int kvt_region_register(kvt_conn *c, int fd, size_t size, kvt_region **out)
{
	struct stat st;
	int dfd, rc;

	rc = region_check(c, size, out);
	if (rc)
		return rc;
	if (fd < 0)
		return KVT_EBADF;
	/* Our own descriptor, so the caller may close theirs whenever it likes. */
	dfd = fcntl(fd, F_DUPFD_CLOEXEC, 0);
	if (dfd < 0)
		return errno == EBADF ? KVT_EBADF : kvt_from_errno(errno);
	if (fstat(dfd, &st) < 0) {
		rc = kvt_from_errno(errno);
		goto out_close;
	}
	/* Touching a mapping past the end of the file would be SIGBUS. */
	if (st.st_size < 0 || (uint64_t)st.st_size < (uint64_t)size) {
		rc = KVT_ERANGE;
		goto out_close;
	}
	rc = region_attach(c, dfd, size, out);

out_close:
	close(dfd);
	return rc;
}

KVT_EXPORT void *kvt_region_base(const kvt_region *r)
{
	return r ? r->base : NULL;
}

KVT_EXPORT size_t kvt_region_size(const kvt_region *r)
{
	return r ? r->size : 0;
}

KVT_EXPORT uint32_t kvt_region_id(const kvt_region *r)
{
	return r ? r->id : 0;
}

KVT_EXPORT int kvt_region_destroy(kvt_region *r)
{
	struct kvt_conn *c;
	int rc = 0;

	if (!r)
		return 0;
	c = r->conn;
	if (c) {
		/* A broken connection took the daemon's side with it already. */
		if (!kvt_conn_usable(c)) {
			struct kvt_op op;

			kvt_op_init_single(&op, KVT_OP_UNREGISTER, KVT_UNREGISTER_REQ_SIZE,
					   unregister_encode, NULL, r);
			rc = kvt_op_run(c, &op);
		}
		regions_unlink(r);
		munmap(r->base, r->size);
	}
	free(r);
	return rc;
}

uint32_t kvt_region_wire_id(const struct kvt_conn *c, const kvt_region *r)
{
	return r && r->conn == c ? r->id : 0;
}

void kvt_regions_release(struct kvt_conn *c)
{
	while (c->regions) {
		struct kvt_region *r = c->regions;

		regions_unlink(r);
		munmap(r->base, r->size);
		r->base = NULL;
	}
}
