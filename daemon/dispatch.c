/*
 * dispatch.c - request handlers: HELLO, PING, REGISTER/UNREGISTER, PUT, GET,
 * LOOKUP, DELETE, PIN/UNPIN, STATS. Metadata work happens here on the loop
 * thread; byte copies go to the workers as one job per request, and the reply is
 * sent from the job's completion, so a request is answered only when every byte
 * of every successful item is in place.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "log.h"
#include "server.h"
#include "ctxmem.h"
#include "gpu.h"
#include "tier2.h"

/* ---- regions ------------------------------------------------------------- */

void region_put(struct region *r)
{
	if (--r->refs)
		return;
	munmap(r->base, r->size);
	free(r);
}

/* Ids count up from 1 per connection and are never reused, so a stale id never
 * finds a later region. Live regions are few (max_regions); the most recent hit is
 * remembered because batches name the same region item after item. */
static struct region *region_find(struct conn *c, uint32_t id)
{
	if (id == 0)
		return NULL;
	if (c->last_region && c->last_region->id == id)
		return c->last_region;
	for (uint32_t i = 0; i < c->nregion_slots; i++) {
		struct region *r = c->regions[i];
		if (r && r->id == id) {
			c->last_region = r;
			return r;
		}
	}
	return NULL;
}

struct region *region_lookup(struct conn *c, uint32_t id)
{
	return region_find(c, id);
}

static int region_add(struct conn *c, struct region *r)
{
	if (c->region_next == UINT32_MAX)
		return KVT_EMFILE;
	uint32_t slot = c->nregion_slots;
	for (uint32_t i = 0; i < c->nregion_slots; i++)
		if (!c->regions[i]) {
			slot = i;
			break;
		}
	if (slot == c->nregion_slots) {
		uint32_t n = c->nregion_slots ? c->nregion_slots * 2 : 4;
		struct region **nr = realloc(c->regions, n * sizeof(*nr));
		if (!nr)
			return KVT_ENOMEM;
		memset(nr + c->nregion_slots, 0, (n - c->nregion_slots) * sizeof(*nr));
		c->regions = nr;
		c->nregion_slots = n;
	}
	r->id = ++c->region_next;
	r->slot = slot;
	c->regions[slot] = r;
	c->nregions++;
	return 0;
}

static void region_remove(struct conn *c, struct region *r)
{
	c->regions[r->slot] = NULL;
	if (c->last_region == r)
		c->last_region = NULL;
	c->nregions--;
	r->unregistered = true;
	region_put(r);
}

/* Bytes [off, off+len) lie inside the region (no overflow). */
static bool region_contains(const struct region *r, uint64_t off, uint64_t len)
{
	return off <= r->size && len <= r->size - off;
}

/* ---- pins: open addressing on the block pointer, backward-shift delete --- */

static size_t pin_hash(const struct t1_block *b, size_t cap)
{
	uint64_t x = (uint64_t)(uintptr_t)b;
	x ^= x >> 33;
	x *= 0xff51afd7ed558ccdull;
	x ^= x >> 33;
	return (size_t)x & (cap - 1);
}

static struct pin_entry *pin_lookup(struct conn *c, const struct t1_block *b)
{
	if (!c->pins_cap)
		return NULL;
	for (size_t i = pin_hash(b, c->pins_cap);; i = (i + 1) & (c->pins_cap - 1)) {
		if (!c->pins[i].block)
			return NULL;
		if (c->pins[i].block == b)
			return &c->pins[i];
	}
}

static int pin_grow(struct conn *c)
{
	size_t ncap = c->pins_cap ? c->pins_cap * 2 : 16;
	struct pin_entry *np = calloc(ncap, sizeof(*np));
	if (!np)
		return KVT_ENOMEM;
	for (size_t i = 0; i < c->pins_cap; i++) {
		if (!c->pins[i].block)
			continue;
		size_t j = pin_hash(c->pins[i].block, ncap);
		while (np[j].block)
			j = (j + 1) & (ncap - 1);
		np[j] = c->pins[i];
	}
	free(c->pins);
	c->pins = np;
	c->pins_cap = ncap;
	return 0;
}

static int pin_add(struct conn *c, struct t1_block *b)
{
	struct pin_entry *e = pin_lookup(c, b);
	if (e) {
		e->count++;
		return 0;
	}
	if ((c->npins + 1) * 4 > c->pins_cap * 3) {
		int rc = pin_grow(c);
		if (rc)
			return rc;
	}
	size_t i = pin_hash(b, c->pins_cap);
	while (c->pins[i].block)
		i = (i + 1) & (c->pins_cap - 1);
	c->pins[i] = (struct pin_entry){ b, 1 };
	c->npins++;
	return 0;
}

static void pin_erase(struct conn *c, struct pin_entry *e)
{
	size_t mask = c->pins_cap - 1;
	size_t i = (size_t)(e - c->pins);
	c->pins[i].block = NULL;
	c->npins--;
	for (size_t j = (i + 1) & mask; c->pins[j].block; j = (j + 1) & mask) {
		size_t home = pin_hash(c->pins[j].block, c->pins_cap);
		/* Move j back into the hole if its home is not between the hole and j. */
		if (((j - home) & mask) >= ((j - i) & mask)) {
			c->pins[i] = c->pins[j];
			c->pins[j].block = NULL;
			i = j;
		}
	}
}

void conn_release_all(struct conn *c)
{
	struct t1 *t = c->srv->t1;
	for (size_t i = 0; i < c->pins_cap; i++) {
		if (!c->pins[i].block)
			continue;
		for (uint32_t k = 0; k < c->pins[i].count; k++)
			t1_unpin(t, c->pins[i].block);
	}
	free(c->pins);
	c->pins = NULL;
	c->pins_cap = c->npins = 0;
	for (uint32_t i = 0; i < c->nregion_slots; i++)
		if (c->regions[i])
			region_remove(c, c->regions[i]);
	gpu_conn_release(c);
}

/* ---- HELLO, PING ---------------------------------------------------------- */

static void do_hello(struct conn *c, const struct kvt_hdr *h, const uint8_t *body)
{
	struct kvtd_config *cfg = c->srv->cfg;
	struct kvt_hello_req req;
	int rc = kvt_hello_req_decode(body, h->body_len, &req);
	if (rc) {
		reply_status(c, h, rc);
		return;
	}
	if (c->hello_done) {
		reply_status(c, h, KVT_EPROTO);
		return;
	}
	if (req.min_version > KVT_PROTO_MAX_VERSION || req.max_version < KVT_PROTO_MIN_VERSION ||
	    req.min_version > req.max_version) {
		/* Journal fields TENANT=, OP=, ERROR= (journal.h). */
		struct log_fields lf = { .has_tenant = true, .tenant = c->tenant,
					 .op = kvt_op_name(h->opcode), .error = KVT_EVERSION };
		log_with(LOG_INFO, &lf,
			 "conn %llu: no common protocol version (client %u..%u, daemon %u..%u)",
			 (unsigned long long)c->serial, req.min_version, req.max_version,
			 KVT_PROTO_MIN_VERSION, KVT_PROTO_MAX_VERSION);
		c->closing = true;
		c->closing_since_ms = now_ms();
		reply_status(c, h, KVT_EVERSION);
		return;
	}
	const char *name = "kvtierd " KVT_VERSION_STRING;
	struct kvt_hello_rep rep = {
		.version = req.max_version < KVT_PROTO_MAX_VERSION ? req.max_version
								   : KVT_PROTO_MAX_VERSION,
		.tenant = c->tenant,
		.max_frame = cfg->max_frame,
		.max_inflight = cfg->max_inflight,
		.max_batch = cfg->max_batch,
		.max_regions = cfg->max_regions,
		.max_region_size = cfg->max_region_size,
		.max_block_size = cfg->max_block_size,
		.server = name,
		.server_len = (uint16_t)strlen(name),
	};
	uint8_t buf[256];
	rc = kvt_hello_rep_encode(&rep, buf, sizeof(buf));
	if (rc < 0) {
		reply_status(c, h, rc);
		return;
	}
	c->hello_done = true;
	log_debug("conn %llu: hello from \"%.*s\" (pid %d), protocol v%u",
		  (unsigned long long)c->serial, (int)req.name_len, req.name, (int)c->pid,
		  rep.version);
	conn_reply(c, h->opcode, h->request_id, 0, buf, (size_t)rc);
}

/* ---- REGISTER, UNREGISTER ------------------------------------------------- */

static int register_region(struct conn *c, const struct kvt_hdr *h, const uint8_t *body, int fd,
			   uint32_t *id)
{
	struct kvtd_config *cfg = c->srv->cfg;
	struct kvt_register_req req;
	int rc = kvt_register_req_decode(body, h->body_len, &req);
	if (rc)
		return rc;
	if (fd < 0)
		return KVT_ENOFD;
	if (req.size == 0)
		return KVT_EINVAL;
	if (req.size > cfg->max_region_size || req.size > SIZE_MAX)
		return KVT_EMSGSIZE;
	if (c->nregions >= cfg->max_regions)
		return KVT_EMFILE;
	/* Without F_SEAL_SHRINK the client could truncate the memfd under a copy and
	 * the daemon would take SIGBUS; regular files and pipes have no seals at all. */
	int seals = fcntl(fd, F_GET_SEALS);
	if (seals < 0 || !(seals & F_SEAL_SHRINK))
		return KVT_ESEALS;
	struct stat st;
	if (fstat(fd, &st) < 0)
		return KVT_EBADF;
	if ((uint64_t)st.st_size < req.size)
		return KVT_ERANGE;
	void *base = mmap(NULL, (size_t)req.size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
	if (base == MAP_FAILED)
		return errno == EPERM || errno == EACCES ? KVT_EACCES : KVT_ENOMEM;
	struct region *r = calloc(1, sizeof(*r));
	if (!r) {
		munmap(base, (size_t)req.size);
		return KVT_ENOMEM;
	}
	r->base = base;
	r->size = req.size;
	r->refs = 1; /* the registration itself */
	rc = region_add(c, r);
	if (rc) {
		munmap(base, (size_t)req.size);
		free(r);
		return rc;
	}
	*id = r->id;
	return 0;
}

static void do_register(struct conn *c, const struct kvt_hdr *h, const uint8_t *body, int fd)
{
	uint32_t id = 0;
	int rc = register_region(c, h, body, fd, &id);
	if (fd >= 0)
		close(fd);
	reply_registered(c, h, rc, id, "region");
}

static int unregister_region(struct conn *c, uint32_t region_id)
{
	struct region *r = region_find(c, region_id);
	if (!r)
		return KVT_EREGION;
	region_remove(c, r);
	return 0;
}

static void do_unregister(struct conn *c, const struct kvt_hdr *h, const uint8_t *body)
{
	reply_unregister(c, h, body, unregister_region);
}

/* ---- PUT and GET: one copy job per request -------------------------------- */

struct xfer {
	struct job job;
	struct conn *c;
	uint16_t op;
	uint64_t id;
	uint32_t count;
	int32_t *status;              /* PUT */
	struct kvt_put_wire *pw;      /* PUT items, kept for a retry after waiting for room */
	struct kvt_get_result *res;   /* GET */
	struct t1_block **blocks;     /* reserved (PUT) or referenced (GET) per item */
	struct region **regions;      /* region referenced per item */
	struct copy_seg *segs;
	size_t nsegs, segs_cap;
	unsigned pending;             /* NVMe fetches not yet back, plus one while items are parsed */
	uint32_t put_next;            /* PUT: first item not yet tried (items go in order) */
	struct item_ref *irefs;       /* per item, for fetch callbacks */
};

struct item_ref {
	struct xfer *x;
	uint32_t i;
	uint8_t *dst;
};

static void xfer_free(struct xfer *x)
{
	free(x->status);
	free(x->res);
	free(x->blocks);
	free(x->regions);
	free(x->segs);
	free(x->irefs);
	free(x->pw);
	free(x);
}

static struct xfer *xfer_new(struct conn *c, const struct kvt_hdr *h, uint32_t count)
{
	struct xfer *x = calloc(1, sizeof(*x));
	if (!x)
		return NULL;
	x->c = c;
	x->op = h->opcode;
	x->id = h->request_id;
	x->count = count;
	size_t n = count ? count : 1;
	x->blocks = calloc(n, sizeof(*x->blocks));
	x->regions = calloc(n, sizeof(*x->regions));
	x->irefs = calloc(n, sizeof(*x->irefs));
	if (h->opcode == KVT_OP_PUT) {
		x->status = calloc(n, sizeof(*x->status));
		x->pw = calloc(n, sizeof(*x->pw));
	} else {
		x->res = calloc(n, sizeof(*x->res));
	}
	if (!x->blocks || !x->regions || !x->irefs || (!x->status && !x->res) ||
	    (x->status && !x->pw)) {
		xfer_free(x);
		return NULL;
	}
	return x;
}

/* Copy segments from (or to) a block's extents, in order, to contiguous memory. */
static int add_block_segs(struct xfer *x, struct t1_block *b, uint8_t *mem, bool to_block)
{
	size_t n;
	const struct t1_extent *ext = t1_block_extents(b, &n);
	uint64_t left = t1_block_len(b);
	for (size_t i = 0; i < n && left; i++) {
		uint64_t len = ext[i].len < left ? ext[i].len : left;
		int rc = to_block ? copy_segs_add(&x->segs, &x->nsegs, &x->segs_cap, ext[i].ptr,
						  mem, (size_t)len)
				  : copy_segs_add(&x->segs, &x->nsegs, &x->segs_cap, mem,
						  ext[i].ptr, (size_t)len);
		if (rc)
			return KVT_ENOMEM;
		mem += len;
		left -= len;
	}
	return 0;
}

static void xfer_done(struct job *j)
{
	struct xfer *x = j->arg;
	struct conn *c = x->c;
	struct server *s = c->srv;
	struct t1 *t = s->t1;
	struct tenant_counters *tc = tenant_counters(s, c->tenant);
	for (uint32_t i = 0; i < x->count; i++) {
		struct t1_block *b = x->blocks[i];
		if (b && x->op == KVT_OP_PUT) {
			/* A writer that died before its answer gets no block: nothing it
			 * did not see acknowledged is kept. */
			if (c->dead) {
				t1_abort(t, b);
			} else {
				uint64_t len = t1_block_len(b);
				t1_commit(t, b);
				tier2_after_put(s, b);
				s->bytes_in += len;
				if (tc)
					tc->bytes_in += len;
			}
		} else if (b) {
			uint64_t len = t1_block_len(b);
			t1_block_unref(t, b);
			s->bytes_out += len;
			if (tc)
				tc->bytes_out += len;
		}
		if (x->regions[i])
			region_put(x->regions[i]);
	}
	c->inflight--;
	if (!c->dead) {
		if (x->op == KVT_OP_PUT)
			reply_item_status(c, x->op, x->id, x->status, x->count);
		else
			reply_get_results(c, x->op, x->id, x->res, x->count);
		conn_update_events(c);
	}
	xfer_free(x);
	conn_put(c);
}

/* A request that will be answered later holds its connection and an in-flight
 * slot from the moment it is accepted. */
static void xfer_begin(struct xfer *x)
{
	x->c->refs++;
	x->c->inflight++;
	x->pending = 1;
}

static void xfer_submit(struct xfer *x)
{
	x->job.segs = x->segs;
	x->job.nsegs = x->nsegs;
	x->job.done = xfer_done;
	x->job.arg = x;
	workers_submit(x->c->srv->workers, &x->job);
}

/* One less thing to wait for; when nothing is left the copies start. */
static void xfer_pending_put(struct xfer *x)
{
	if (--x->pending == 0)
		xfer_submit(x);
}

int map_reserve_error(int rc)
{
	switch (rc) {
	case -EEXIST: return KVT_EBUSY; /* another request is writing that block now */
	case -EFBIG: return KVT_EFBIG;
	case -EDQUOT: return KVT_EDQUOT;
	case -ENOSPC: return KVT_ENOSPC;
	case -ENOMEM: return KVT_ENOMEM;
	default: return KVT_EIO;
	}
}

bool put_already_stored(struct conn *c, const kvt_key *key)
{
	struct server *s = c->srv;
	struct t1_key tk = { .tenant = c->tenant, .key = *key };
	struct t1_block *b = t1_find(s->t1, &tk);
	if (!b)
		return false;
	t1_touch(s->t1, b);
	tier2_block_reached(b);
	return true;
}

/* A block whose parent is given but in neither tier is useless to a prefix
 * lookup until the parent comes back: it may use free space, never displace
 * blocks that are part of a usable prefix. A parent on NVMe counts: LOOKUP
 * follows the chain through both tiers. */
bool put_is_orphan(struct conn *c, const kvt_key *parent)
{
	struct t1_key pk = { .tenant = c->tenant, .key = *parent };
	return !kvt_key_is_zero(parent) && !tier2_reachable(c->srv, &pk);
}

/* A reserved field set in any item makes the whole request malformed: it is
 * refused before anything is reserved or copied. */
static int batch_check_items(const struct kvt_batch *bt, uint16_t op)
{
	for (uint32_t i = 0; i < bt->count; i++) {
		const uint8_t *raw = bt->items + (size_t)i * bt->item_size;
		int rc;
		if (op == KVT_OP_PUT) {
			struct kvt_put_wire it;
			rc = kvt_put_item_decode(raw, &it);
		} else {
			struct kvt_get_wire it;
			rc = kvt_get_item_decode(raw, &it);
		}
		if (rc)
			return rc;
	}
	return 0;
}

/* put_wire_item's answer when the item waits for room (it is retried later). */
#define PUT_PARKED 1

static void put_room_cb(void *arg);

/* Item i waits for the NVMe tier to make room (put_room_cb retries it); false if
 * nothing is being written, so waiting would not help. */
static bool park_for_room(struct xfer *x, uint32_t i)
{
	x->irefs[i] = (struct item_ref){ x, i, NULL };
	if (!tier2_wait_room(x->c->srv, put_room_cb, &x->irefs[i]))
		return false;
	x->pending++;
	return true;
}

static int put_wire_item(struct xfer *x, uint32_t i, const struct kvt_put_wire *it)
{
	struct conn *c = x->c;
	struct server *s = c->srv;
	struct region *r = c->dead ? NULL : region_find(c, it->region_id);
	if (!r)
		return KVT_EREGION;
	if (!region_contains(r, it->offset, it->length))
		return KVT_ERANGE;
	if (it->length == 0 || kvt_key_is_zero(&it->key))
		return KVT_EINVAL;
	if (it->length > s->cfg->max_block_size)
		return KVT_EFBIG;
	if (put_already_stored(c, &it->key))
		return 0;
	struct t1_key tk = { .tenant = c->tenant, .key = it->key };
	struct t1_block *b = NULL;
	bool orphan = put_is_orphan(c, &it->parent);
	int rc;
	if (orphan) {
		rc = t1_reserve_free(s->t1, &tk, &it->parent, it->length, &it->desc, &b);
		/* Its parent may be an item of an earlier PUT still waiting for room (an
		 * engine with two PUTs of one chain in flight): wait behind it, in order,
		 * and decide again when room comes. */
		if ((rc == -ENOSPC || rc == -EDQUOT) && !s->stopping && tier2_room_waiting(s) &&
		    park_for_room(x, i))
			return PUT_PARKED;
	} else if (tier2_active(s)) {
		/* With an NVMe tier, a store first takes room that costs nothing (blocks
		 * NVMe has too). If there is not enough, cold blocks are written back
		 * and the store waits for them rather than dropping them; only when no
		 * write-back can help does eviction drop what was never admitted. */
		rc = t1_reserve_clean(s->t1, &tk, &it->parent, it->length, &it->desc, &b);
		if ((rc == -ENOSPC || rc == -EDQUOT) && !s->stopping) {
			if (park_for_room(x, i))
				return PUT_PARKED;
			rc = t1_reserve(s->t1, &tk, &it->parent, it->length, &it->desc, &b);
		}
	} else {
		rc = t1_reserve(s->t1, &tk, &it->parent, it->length, &it->desc, &b);
	}
	if (rc)
		return map_reserve_error(rc);
	size_t nsegs = x->nsegs;
	if (add_block_segs(x, b, r->base + it->offset, true)) {
		x->nsegs = nsegs;
		t1_abort(s->t1, b);
		return KVT_ENOMEM;
	}
	x->blocks[i] = b;
	x->regions[i] = r;
	r->refs++;
	return 0;
}

/*
 * Try the items of a PUT from x->put_next on, in order, until one has to wait for
 * room. Order matters: a block's parent is usually the item before it, and a
 * child tried while its parent waits would find the parent in neither tier and be
 * refused as an orphan. The waiting item's callback resumes the walk.
 */
static void put_items_from(struct xfer *x)
{
	while (x->put_next < x->count) {
		uint32_t i = x->put_next++;
		if (x->status[i]) /* refused when decoded */
			continue;
		int st = put_wire_item(x, i, &x->pw[i]);
		if (st == PUT_PARKED)
			return;
		x->status[i] = st;
	}
}

static void put_room_cb(void *arg)
{
	struct item_ref *ir = arg;
	struct xfer *x = ir->x;
	int rc = put_wire_item(x, ir->i, &x->pw[ir->i]);
	if (rc != PUT_PARKED) {
		x->status[ir->i] = rc;
		put_items_from(x);
	}
	xfer_pending_put(x);
}

static void do_put(struct conn *c, const struct kvt_hdr *h, const uint8_t *body)
{
	struct kvt_batch bt;
	int rc = kvt_batch_decode(body, h->body_len, KVT_PUT_ITEM_SIZE, c->srv->cfg->max_batch,
				  &bt);
	if (!rc)
		rc = batch_check_items(&bt, h->opcode);
	if (rc) {
		reply_status(c, h, rc);
		return;
	}
	struct xfer *x = xfer_new(c, h, bt.count);
	if (!x) {
		reply_status(c, h, KVT_ENOMEM);
		return;
	}
	xfer_begin(x);
	/* Decode every item first: the request body is not kept past this call, and
	 * items after one that waits for room are tried later. */
	for (uint32_t i = 0; i < bt.count; i++) {
		int st = kvt_put_item_decode(bt.items + (size_t)i * KVT_PUT_ITEM_SIZE, &x->pw[i]);
		if (st) {
			x->status[i] = st;
			memset(&x->pw[i], 0, sizeof(x->pw[i]));
		}
	}
	put_items_from(x);
	xfer_pending_put(x);
}


static void get_fetch_done(void *arg, int status, struct t1_block *b)
{
	struct item_ref *ir = arg;
	struct xfer *x = ir->x;
	struct server *s = x->c->srv;
	struct tenant_counters *tc = tenant_counters(s, x->c->tenant);
	if (status) {
		x->res[ir->i].status = status == -ENOMEM ? KVT_ENOMEM : KVT_ENOENT;
		if (tc)
			tc->misses++;
	} else {
		tier2_count_hit(s);
		if (tc)
			tc->hits++;
		if (b) { /* promoted into RAM: copy from there like any hit */
			size_t nsegs = x->nsegs;
			if (add_block_segs(x, b, ir->dst, false)) {
				x->nsegs = nsegs;
				t1_block_unref(s->t1, b);
				x->res[ir->i].status = KVT_ENOMEM;
			} else {
				x->blocks[ir->i] = b;
			}
		} /* else decoded straight into the client's region */
	}
	xfer_pending_put(x);
}

/* Not in RAM: fetch from NVMe if it is there. */
static int get_item_nvme(struct xfer *x, uint32_t i, const struct t1_key *tk, struct region *r,
			 const struct kvt_get_wire *it, kvt_key *parent)
{
	struct server *s = x->c->srv;
	struct t2_info info;
	if (tier2_lookup(s, tk, &info) < 0)
		return KVT_ENOENT;
	x->res[i].length = info.len;
	if (info.len > it->capacity)
		return KVT_ENOBUFS;
	x->res[i].desc = info.desc;
	*parent = info.parent;
	x->irefs[i] = (struct item_ref){ x, i, r->base + it->offset };
	struct t2_span direct = { r->base + it->offset, info.len };
	x->pending++;
	int rc = tier2_fetch(s, tk, &direct, get_fetch_done, &x->irefs[i]);
	if (rc) {
		x->pending--;
		return rc == -ENOMEM ? KVT_ENOMEM : KVT_ENOENT;
	}
	x->regions[i] = r;
	r->refs++;
	return 0;
}

static int get_item(struct xfer *x, uint32_t i, const uint8_t *raw, kvt_key *parent)
{
	struct conn *c = x->c;
	struct server *s = c->srv;
	struct kvt_get_wire it;
	int rc = kvt_get_item_decode(raw, &it);
	if (rc)
		return rc;
	struct region *r = region_find(c, it.region_id);
	if (!r)
		return KVT_EREGION;
	if (!region_contains(r, it.offset, it.capacity))
		return KVT_ERANGE;
	struct t1_key tk = { .tenant = c->tenant, .key = it.key };
	struct t1_block *b = t1_find(s->t1, &tk);
	struct tenant_counters *tc = tenant_counters(s, c->tenant);
	if (!b) {
		s->misses++;
		rc = get_item_nvme(x, i, &tk, r, &it, parent);
		if (rc == KVT_ENOENT && tc)
			tc->misses++;
		return rc;
	}
	s->hits++;
	if (tc)
		tc->hits++;
	x->res[i].length = t1_block_len(b);
	if (t1_block_len(b) > it.capacity)
		return KVT_ENOBUFS;
	x->res[i].desc = *t1_block_desc(b);
	*parent = *t1_block_parent(b);
	size_t nsegs = x->nsegs;
	if (add_block_segs(x, b, r->base + it.offset, false)) {
		x->nsegs = nsegs;
		return KVT_ENOMEM;
	}
	t1_block_ref(s->t1, b);
	x->blocks[i] = b;
	x->regions[i] = r;
	r->refs++;
	return 0;
}

static void do_get(struct conn *c, const struct kvt_hdr *h, const uint8_t *body)
{
	struct kvt_batch bt;
	int rc = kvt_batch_decode(body, h->body_len, KVT_GET_ITEM_SIZE, c->srv->cfg->max_batch,
				  &bt);
	if (!rc)
		rc = batch_check_items(&bt, h->opcode);
	if (rc) {
		reply_status(c, h, rc);
		return;
	}
	struct xfer *x = xfer_new(c, h, bt.count);
	if (!x) {
		reply_status(c, h, KVT_ENOMEM);
		return;
	}
	xfer_begin(x);
	kvt_key first_parent = { { 0 } };
	int last_found = -1;
	for (uint32_t i = 0; i < bt.count; i++) {
		kvt_key parent = { { 0 } };
		x->res[i].status = get_item(x, i, bt.items + (size_t)i * KVT_GET_ITEM_SIZE, &parent);
		if (i == 0)
			first_parent = parent;
		if (x->res[i].status == 0)
			last_found = (int)i;
	}
	/* Engines read chains head first; touching them tail first leaves the head
	 * the most recently used, so pressure takes tails before heads. */
	for (uint32_t i = bt.count; i-- > 0;)
		if (x->blocks[i])
			t1_touch(c->srv->t1, x->blocks[i]);
	/* A chain read in order (a batch of several blocks, or one that continues the
	 * previous GET of this connection) gets its next blocks fetched ahead. */
	if (last_found >= 0 && tier2_active(c->srv) && c->srv->cfg->readahead) {
		bool seq = bt.count > 1 || (c->has_last_get && kvt_key_equal(&first_parent, &c->last_get));
		kvt_key_decode(bt.items + (size_t)last_found * KVT_GET_ITEM_SIZE, &c->last_get);
		c->has_last_get = true;
		if (seq) {
			struct t1_key lk = { .tenant = c->tenant, .key = c->last_get };
			tier2_readahead(c->srv, &lk, c->srv->cfg->readahead);
		}
	}
	xfer_pending_put(x);
}

/* ---- LOOKUP, DELETE, PIN, UNPIN ------------------------------------------ */

/* Where a block is now, as LOOKUP and PREFETCH report it: T0 (when t0 counts: a
 * T0 block is in the host tier too), the host tier, NVMe, or KVT_TIER_NONE. *hb,
 * if not NULL, receives its host-tier block (or NULL). */
static uint8_t block_tier(struct server *s, const struct t1_key *key, bool t0,
			  struct t1_block **hb)
{
	struct t1_block *b = t1_find(s->t1, key);
	if (hb)
		*hb = b;
	if (t0 && b && gpu_t0_holds(s, key))
		return KVT_TIER_GPU;
	if (b)
		return KVT_TIER_HOST;
	return tier2_lookup(s, key, NULL) == 0 ? KVT_TIER_NVME : KVT_TIER_NONE;
}

static void do_lookup(struct conn *c, const struct kvt_hdr *h, const uint8_t *body)
{
	struct kvt_batch bt;
	int rc = kvt_batch_decode(body, h->body_len, KVT_KEY_SIZE, c->srv->cfg->max_batch, &bt);
	if (rc) {
		reply_status(c, h, rc);
		return;
	}
	uint8_t *tiers = malloc(bt.count ? bt.count : 1);
	if (!tiers) {
		reply_status(c, h, KVT_ENOMEM);
		return;
	}
	uint32_t found = 0;
	while (found < bt.count) {
		struct t1_key tk = { .tenant = c->tenant };
		kvt_key_decode(bt.items + (size_t)found * KVT_KEY_SIZE, &tk.key);
		struct t1_block *b;
		uint8_t t = block_tier(c->srv, &tk, true, &b);
		if (t == KVT_TIER_NONE)
			break;
		/* Found right after its parent: reachable, so no orphan. */
		if (b && found > 0)
			tier2_block_reached(b);
		tiers[found++] = t;
	}
	size_t len = kvt_lookup_rep_size(found);
	uint8_t *buf = malloc(len);
	if (!buf) {
		free(tiers);
		reply_status(c, h, KVT_ENOMEM);
		return;
	}
	kvt_lookup_rep_encode(found, tiers, buf, len);
	conn_reply(c, h->opcode, h->request_id, 0, buf, len);
	free(buf);
	free(tiers);
}

static int key_op(struct conn *c, uint16_t op, const kvt_key *key)
{
	struct t1 *t = c->srv->t1;
	struct t1_key tk = { .tenant = c->tenant, .key = *key };
	if (op == KVT_OP_DELETE) {
		/* From every tier; a pinned block, or one a saved context references,
		 * stays everywhere (the context must stay loadable: CTX_DELETE first). */
		struct t2_info info;
		if (tier2_lookup(c->srv, &tk, &info) == 0 && info.refs)
			return KVT_EREFERENCED;
		int rc = t1_delete(t, &tk);
		if (rc == -EBUSY)
			return KVT_EPINNED;
		gpu_t0_forget(c->srv, &tk);
		int rc2 = tier2_delete(c->srv, &tk);
		if (rc == -ENOENT && rc2 == -ENOENT)
			return KVT_ENOENT;
		return (rc && rc != -ENOENT) || (rc2 && rc2 != -ENOENT) ? KVT_EIO : 0;
	}
	struct t1_block *b = t1_find(t, &tk);
	if (!b)
		return KVT_ENOENT;
	if (op == KVT_OP_PIN) {
		int rc = pin_add(c, b);
		if (rc)
			return rc;
		t1_pin(t, b);
		return 0;
	}
	struct pin_entry *e = pin_lookup(c, b);
	if (!e)
		return KVT_ENOENT; /* not pinned by this connection */
	t1_unpin(t, b);
	if (--e->count == 0)
		pin_erase(c, e);
	return 0;
}

/* Answer a batch of keys with one status each, as fn says. */
static void reply_per_key(struct conn *c, const struct kvt_hdr *h, const struct kvt_batch *bt,
			  int32_t (*fn)(struct conn *c, const kvt_key *key, const void *arg),
			  const void *arg)
{
	int32_t *st = malloc((bt->count ? bt->count : 1) * sizeof(*st));
	if (!st) {
		reply_status(c, h, KVT_ENOMEM);
		return;
	}
	for (uint32_t i = 0; i < bt->count; i++) {
		kvt_key k;
		kvt_key_decode(bt->items + (size_t)i * KVT_KEY_SIZE, &k);
		st[i] = fn(c, &k, arg);
	}
	reply_item_status(c, h->opcode, h->request_id, st, bt->count);
	free(st);
}

static int32_t key_batch_op(struct conn *c, const kvt_key *key, const void *arg)
{
	return key_op(c, *(const uint16_t *)arg, key);
}

static void do_key_batch(struct conn *c, const struct kvt_hdr *h, const uint8_t *body)
{
	struct kvt_batch bt;
	int rc = kvt_batch_decode(body, h->body_len, KVT_KEY_SIZE, c->srv->cfg->max_batch, &bt);
	if (rc)
		reply_status(c, h, rc);
	else
		reply_per_key(c, h, &bt, key_batch_op, &h->opcode);
}

/* ---- PREFETCH -------------------------------------------------------------------- */

/* A PREFETCH answered when every key is where it was asked to be, or at its
 * deadline; the fetches it started go on after the answer. */
struct prefetch {
	struct prefetch *next, *prev; /* server's list of unanswered ones */
	struct conn *c;
	uint64_t id;
	uint64_t deadline_ms;
	uint32_t count;
	unsigned pending;  /* fetches and T0 copies not back yet */
	bool answered;
	uint8_t tier;      /* the tier asked for */
	uint8_t *tiers;
	struct prefetch_item *items;
	struct t1_key *keys; /* the blocks asked for */
	pagein_answer_fn answer; /* builds and sends the reply */
	void *arg;
};

struct prefetch_item {
	struct prefetch *pf;
	uint32_t i;
};

static void prefetch_free_if_done(struct prefetch *pf)
{
	if (!pf->answered || pf->pending)
		return;
	struct conn *c = pf->c;
	free(pf->tiers);
	free(pf->items);
	free(pf->keys);
	free(pf);
	conn_put(c);
}

static void prefetch_answer(struct prefetch *pf)
{
	struct conn *c = pf->c;
	struct server *s = c->srv;
	if (pf->answered)
		return;
	pf->answered = true;
	if (pf->prev)
		pf->prev->next = pf->next;
	else if (s->prefetches == pf)
		s->prefetches = pf->next;
	if (pf->next)
		pf->next->prev = pf->prev;
	c->inflight--;
	/* Tier 0: say where each block is now. A copy another request made may have
	 * landed, and a small pool may already have evicted one of ours. */
	for (uint32_t i = 0; pf->tier == KVT_TIER_HBM && i < pf->count; i++)
		if (pf->tiers[i] == KVT_TIER_HBM || pf->tiers[i] == KVT_TIER_HOST)
			pf->tiers[i] = block_tier(s, &pf->keys[i], true, NULL);
	pf->answer(c, pf->id, pf->tier, pf->tiers, pf->count, pf->arg);
	if (!c->dead)
		conn_update_events(c);
}

static void prefetch_reply(struct conn *c, uint64_t id, uint8_t tier, const uint8_t *tiers,
			   uint32_t count, void *arg)
{
	(void)arg;
	(void)tier;
	if (c->dead)
		return;
	size_t len = kvt_prefetch_rep_size(count);
	uint8_t *buf = malloc(len);
	if (buf) {
		kvt_prefetch_rep_encode(tiers, count, buf, len);
		conn_reply(c, KVT_OP_PREFETCH, id, 0, buf, len);
		free(buf);
	} else {
		conn_reply(c, KVT_OP_PREFETCH, id, KVT_ENOMEM, NULL, 0);
	}
}

static void prefetch_item_done(struct prefetch *pf)
{
	pf->pending--;
	if (pf->pending == 0)
		prefetch_answer(pf);
	prefetch_free_if_done(pf);
}

/* A block copied into T0 for a PREFETCH or CTX_LOAD to tier 0 (or not). */
static void prefetch_t0_cb(void *arg, bool in_t0)
{
	struct prefetch_item *it = arg;
	struct prefetch *pf = it->pf;
	if (in_t0 && !pf->answered)
		pf->tiers[it->i] = KVT_TIER_HBM;
	prefetch_item_done(pf);
}

static void prefetch_cb(void *arg, int status, struct t1_block *b)
{
	struct prefetch_item *it = arg;
	struct prefetch *pf = it->pf;
	if (b) {
		struct server *s = pf->c->srv;
		if (!pf->answered)
			pf->tiers[it->i] = KVT_TIER_HOST;
		/* Up from NVMe; for tier 0, on into T0 (the item stays pending until
		 * the copy ends; after the answer the copy still goes ahead). */
		bool onward = false;
		if (pf->tier == KVT_TIER_HBM) {
			if (pf->answered)
				(void)gpu_t0_promote(s, b, NULL, NULL);
			else
				onward = gpu_t0_promote(s, b, prefetch_t0_cb, it) == 0;
		}
		t1_block_unref(s->t1, b);
		if (onward)
			return;
	} else if (status && !pf->answered) {
		/* Missing or corrupt after all, or still on NVMe (no memory, no room). */
		pf->tiers[it->i] = block_tier(pf->c->srv, &pf->keys[it->i], false, NULL);
	}
	prefetch_item_done(pf);
}

void prefetch_answer_all(struct server *s)
{
	while (s->prefetches) {
		struct prefetch *pf = s->prefetches;
		prefetch_answer(pf);
		prefetch_free_if_done(pf);
	}
}

uint64_t prefetch_tick(struct server *s)
{
	uint64_t t = now_ms(), next = UINT64_MAX;
	struct prefetch *pf = s->prefetches, *nx;
	for (; pf; pf = nx) {
		nx = pf->next;
		if (pf->deadline_ms <= t) {
			prefetch_answer(pf);
			prefetch_free_if_done(pf);
		} else if (pf->deadline_ms < next) {
			next = pf->deadline_ms;
		}
	}
	return next;
}

int pagein_start(struct conn *c, uint64_t id, const uint8_t *keys, uint32_t n, uint8_t tier,
		 uint32_t deadline_ms, pagein_answer_fn answer, void *arg)
{
	struct server *s = c->srv;
	bool to_t0 = tier == KVT_TIER_HBM;
	if (to_t0 && !gpu_t0_active(s))
		return KVT_EOPNOTSUPP; /* no GPU tier (gpu_pool_size, gpu_backend) */
	struct prefetch *pf = calloc(1, sizeof(*pf));
	if (pf) {
		pf->tiers = malloc(n ? n : 1);
		pf->items = calloc(n ? n : 1, sizeof(*pf->items));
		pf->keys = calloc(n ? n : 1, sizeof(*pf->keys));
	}
	if (!pf || !pf->tiers || !pf->items || !pf->keys) {
		if (pf) {
			free(pf->tiers);
			free(pf->items);
			free(pf->keys);
		}
		free(pf);
		return KVT_ENOMEM;
	}
	pf->c = c;
	pf->id = id;
	pf->tier = tier;
	pf->count = n;
	pf->answer = answer;
	pf->arg = arg;
	pf->deadline_ms = now_ms() + deadline_ms;
	c->refs++;
	c->inflight++;
	/* The loop's own hold: a fetch may complete inside tier2_fetch (no memory),
	 * and must not answer and free pf while the loop still uses it. */
	pf->pending = 1;
	for (uint32_t i = 0; i < n; i++) {
		struct t1_key tk = { .tenant = c->tenant };
		kvt_key_decode(keys + (size_t)i * KVT_KEY_SIZE, &tk.key);
		pf->keys[i] = tk;
		/* Already in T0: an access, so this request's own copies do not push
		 * it out as the coldest block. */
		if (to_t0 && gpu_t0_touch(s, &tk)) {
			pf->tiers[i] = KVT_TIER_HBM;
			continue;
		}
		pf->items[i] = (struct prefetch_item){ pf, i };
		struct t1_block *b = t1_find(s->t1, &tk);
		if (b) {
			pf->tiers[i] = KVT_TIER_HOST;
			/* For tier 0: copy it into T0 (no room, or a copy by another
			 * request under way: it is reported where it is at the answer). */
			if (to_t0 && gpu_t0_promote(s, b, prefetch_t0_cb, &pf->items[i]) == 0)
				pf->pending++;
			continue;
		}
		if (tier2_lookup(s, &tk, NULL) < 0) {
			pf->tiers[i] = KVT_TIER_NONE;
			continue;
		}
		pf->tiers[i] = KVT_TIER_NVME;
		if (tier == KVT_TIER_NVME)
			continue;
		pf->pending++;
		if (tier2_fetch(s, &tk, NULL, prefetch_cb, &pf->items[i]) < 0)
			pf->pending--; /* no room in the host tier now: it stays on NVMe */
	}
	pf->pending--;
	if (pf->pending == 0 || deadline_ms == 0) {
		prefetch_answer(pf);
		prefetch_free_if_done(pf);
		return 0;
	}
	pf->next = s->prefetches;
	if (s->prefetches)
		s->prefetches->prev = pf;
	s->prefetches = pf;
	return 0;
}

static void do_prefetch(struct conn *c, const struct kvt_hdr *h, const uint8_t *body)
{
	struct kvt_prefetch_params p;
	struct kvt_batch bt;
	int rc = kvt_prefetch_req_decode(body, h->body_len, c->srv->cfg->max_batch, &p, &bt);
	if (!rc)
		rc = pagein_start(c, h->request_id, bt.items, bt.count, p.tier, p.deadline_ms,
				  prefetch_reply, NULL);
	if (rc)
		reply_status(c, h, rc);
}

/* HINT: the engine's eviction hint for host-tier blocks (t1_set_hint). */
_Static_assert(KVT_HINT_NONE == (int)T1_HINT_NONE && KVT_HINT_RETAIN == (int)T1_HINT_RETAIN &&
		       KVT_HINT_RELEASE == (int)T1_HINT_RELEASE,
	       "wire hints are t1 hints");

static int32_t hint_op(struct conn *c, const kvt_key *key, const void *arg)
{
	const struct kvt_hint_params *p = arg;
	struct t1_key tk = { .tenant = c->tenant, .key = *key };
	struct t1_block *b = t1_find(c->srv->t1, &tk);
	if (!b)
		return KVT_ENOENT;
	int rc = t1_set_hint(c->srv->t1, b, (enum t1_hint)p->hint, p->duration_ms);
	return rc == 0 ? 0 : rc == -EBUSY ? KVT_EPINNED : KVT_ENOENT;
}

static void do_hint(struct conn *c, const struct kvt_hdr *h, const uint8_t *body)
{
	struct kvt_hint_params p;
	struct kvt_batch bt;
	int rc = kvt_hint_req_decode(body, h->body_len, c->srv->cfg->max_batch, &p, &bt);
	if (rc)
		reply_status(c, h, rc);
	else
		reply_per_key(c, h, &bt, hint_op, &p);
}

static void do_stats(struct conn *c, const struct kvt_hdr *h, const uint8_t *body)
{
	if (h->body_len != KVT_STATS_REQ_SIZE) {
		reply_status(c, h, KVT_EBADMSG);
		return;
	}
	if (kvt_get32(body) != 0) {
		reply_status(c, h, KVT_ERESERVED);
		return;
	}
	uint8_t *buf = malloc(STATS_BUF_SIZE);
	if (!buf) {
		reply_status(c, h, KVT_ENOMEM);
		return;
	}
	size_t len = stats_build(c, buf, STATS_BUF_SIZE);
	conn_reply(c, h->opcode, h->request_id, 0, buf, len);
	free(buf);
}

/* ---- dispatch ------------------------------------------------------------- */

void dispatch_frame(struct conn *c, const struct kvt_hdr *h, const uint8_t *body,
		    uint64_t frame_start)
{
	/* A REGISTER takes its fd first, whatever happens next, so it is never
	 * mistaken for a stray one and never leaks. */
	int fd = h->opcode == KVT_OP_REGISTER ? conn_take_fd(c, frame_start) : -1;
	int rc = kvt_hdr_check_flags(h, false);
	if (!rc && h->status != 0)
		rc = KVT_ERESERVED;
	if (!rc && !c->hello_done && h->opcode != KVT_OP_HELLO)
		rc = KVT_ENOHELLO;
	if (!rc && c->inflight >= c->srv->cfg->max_inflight)
		rc = KVT_EINFLIGHT;
	if (rc) {
		if (fd >= 0)
			close(fd);
		reply_status(c, h, rc);
		return;
	}
	switch (h->opcode) {
	case KVT_OP_HELLO: do_hello(c, h, body); break;
	case KVT_OP_PING:
		reply_status(c, h, h->body_len ? KVT_EBADMSG : 0);
		break;
	case KVT_OP_REGISTER: do_register(c, h, body, fd); break;
	case KVT_OP_UNREGISTER: do_unregister(c, h, body); break;
	case KVT_OP_PUT: do_put(c, h, body); break;
	case KVT_OP_GET: do_get(c, h, body); break;
	case KVT_OP_LOOKUP: do_lookup(c, h, body); break;
	case KVT_OP_DELETE:
	case KVT_OP_PIN:
	case KVT_OP_UNPIN: do_key_batch(c, h, body); break;
	case KVT_OP_STATS: do_stats(c, h, body); break;
	case KVT_OP_PREFETCH: do_prefetch(c, h, body); break;
	case KVT_OP_HINT: do_hint(c, h, body); break;
	default:
		if (ctxmem_handles(h->opcode))
			ctxmem_dispatch(c, h, body);
		else if (gpu_handles(h->opcode))
			gpu_dispatch(c, h, body);
		else
			reply_status(c, h, KVT_EOPCODE);
		break;
	}
}
