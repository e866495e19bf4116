/*
 * gpu.c - GPU regions on the daemon side: GPU_REGION_REGISTER/DESTROY, GPU_PUT
 * (engine pages gathered into a host-tier block) and GPU_GET (a block scattered
 * into pages), on whichever backend gpu_probe chose (gpu.h). Metadata work is on
 * the loop thread like every other request; each request's copies are one job
 * for the copy workers, one task per item, and the reply goes out from the job's
 * completion, so a GPU_PUT block is visible and a GPU_GET answered only once its
 * bytes are in place.
 *
 * GPU regions belong to the connection exactly like host regions: per-connection
 * ids from 1, never reused; closing the connection destroys them; a region in use
 * by a copy is closed (IPC handles, host-region references) at the last
 * reference.
 *
 * The GPU tier (T0, gpu_pool_size): a pool of the backend's memory (store/t0.c)
 * with copies of the hottest blocks. A block GPU_GET reads while it is in the
 * host tier is marked (T1F_GPU_READ); the next GPU_GET of it, once answered,
 * copies it into T0 (a worker job: H2D into the pool with CUDA, memcpy when
 * emulated), evicting by the policy when the pool is full. A GPU_GET of a T0
 * block scatters from the pool (device to device). T0 holds only blocks the
 * host tier holds: the host tier's copy stays (a T0 hit touches it, so the host
 * policy sees the block as hot), and when the host tier evicts or DELETE removes
 * a block its T0 copy goes too; evicting from T0 therefore never loses data.
 * GPU_PUT and plain GET never fill T0.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "gpu.h"
#include "kvcopy.h"
#include "log.h"
#include "server.h"
#include "tier2.h"

struct gpu_region {
	uint32_t id;
	uint32_t slot;
	unsigned refs;        /* the registration plus copies in flight */
	struct gpu_state *g;
	struct kvl_layout layout;
	uint16_t dtype, layout_id;
	void *priv;           /* the backend's */
	struct region **host; /* emulated: the host regions standing in for buffers */
	uint32_t nhost;
};

struct gpu_conn {
	struct gpu_region **r;
	uint32_t nslots, nlive, next_id;
};

struct gpu_state {
	struct gpu_backend *b;  /* NULL: GPU transfers are off */
	char why[256];          /* why they are off */
	uint64_t regions;       /* open (registered, or destroyed but still in use) */
	uint64_t h2d_bytes, d2h_bytes, d2d_bytes;
	uint64_t copies_inflight;
	struct t0 *t0;          /* the GPU tier; NULL when not active */
	char t0_why[384];       /* t0.reason */
	uint64_t t0_hits, t0_promotions, t0_promote_failures;
	uint64_t t0_promoting; /* promotion copies running */
};

/* ---- backend choice --------------------------------------------------------------- */

int gpu_probe(const struct kvtd_config *cfg, struct gpu_backend **out, char *why,
	      size_t whycap)
{
	int rc;

	*out = NULL;
	switch (cfg->gpu_backend) {
	case GPU_BACKEND_OFF:
		snprintf(why, whycap, "off in the configuration (gpu_backend = off)");
		return 0;
	case GPU_BACKEND_EMULATED:
		rc = gpu_emu_create(out);
		if (rc)
			snprintf(why, whycap, "emulated backend: %s", strerror(-rc));
		return rc;
	case GPU_BACKEND_CUDA:
		return gpu_cuda_create(out, why, whycap) == 0 ? 0 : -ENODEV;
	default: /* auto: CUDA when compiled in and a device answers */
		rc = gpu_cuda_create(out, why, whycap);
		return rc == -ENOMEM ? rc : 0;
	}
}

void gpu_backend_destroy(struct gpu_backend *b)
{
	if (b)
		b->ops->destroy(b);
}

static void size_text(uint64_t v, char *out, size_t cap)
{
	if (v >= (1ull << 30) && v % (1ull << 30) == 0)
		snprintf(out, cap, "%llu GiB", (unsigned long long)(v >> 30));
	else if (v >= (1ull << 20) && v % (1ull << 20) == 0)
		snprintf(out, cap, "%llu MiB", (unsigned long long)(v >> 20));
	else
		snprintf(out, cap, "%llu bytes", (unsigned long long)v);
}

/* The GPU tier, once the backend runs: a pool of gpu_pool_size bytes, cut into
 * host_chunk chunks, evicted by host_policy. A pool that cannot be had leaves
 * T0 off (the reason says why), not the daemon. */
/*
 * A tenant's share of T0 mirrors its share of the host tier: its host quota
 * scaled by pool size / host capacity (at least one chunk), none without one.
 */
static uint64_t t0_quota(void *arg, uint32_t tenant)
{
	struct server *s = arg;
	uint64_t q = t1_tenant_quota(s->t1, tenant);
	if (!q)
		return 0;
	/* Asked at every T0 reserve: t1_capacity, not t1_get_stats (which scans the
	 * allocator for its largest free run). */
	uint64_t host = t1_capacity(s->t1);
	uint64_t pool = s->cfg->gpu_pool_size, chunk = s->cfg->host_chunk;
	if (!host || q >= host)
		return pool;
	uint64_t share = (uint64_t)((long double)q * (long double)pool / (long double)host);
	return share < chunk ? chunk : share;
}

static void t0_start(struct server *s)
{
	struct gpu_state *g = s->gpu;
	const struct kvtd_config *cfg = s->cfg;
	char sz[32];
	if (cfg->gpu_pool_size == 0) {
		snprintf(g->t0_why, sizeof(g->t0_why), "no pool (gpu_pool_size = 0)");
		return;
	}
	size_text(cfg->gpu_pool_size, sz, sizeof(sz));
	if (!g->b->pool) {
		snprintf(g->t0_why, sizeof(g->t0_why),
			 "not active: backend %s has no pool for gpu_pool_size = %s", g->b->name, sz);
		return;
	}
	if (cfg->gpu_pool_size < cfg->host_chunk) {
		snprintf(g->t0_why, sizeof(g->t0_why),
			 "not active: gpu_pool_size = %s is below one host_chunk", sz);
		return;
	}
	struct t0_config tc = {
		.capacity = cfg->gpu_pool_size,
		.chunk_size = cfg->host_chunk,
		.policy = (enum t1_policy)cfg->host_policy,
		.evict_scan = 64,
		.ops = g->b->pool,
		.arg = g->b,
		.quota = t0_quota,
		.quota_arg = s,
	};
	int rc = t0_open(&tc, &g->t0);
	if (rc) {
		g->t0 = NULL;
		snprintf(g->t0_why, sizeof(g->t0_why),
			 "not active: a pool of %s in %s could not be allocated: %s", sz,
			 g->b->pool_memory, strerror(-rc));
		log_warn("GPU tier (T0): %s", g->t0_why);
		return;
	}
	snprintf(g->t0_why, sizeof(g->t0_why), "active: %s pool in %s, policy %s", sz,
		 g->b->pool_memory, t0_policy_name(g->t0));
}

int gpu_open(struct server *s)
{
	struct gpu_state *g = calloc(1, sizeof(*g));
	if (!g)
		return -ENOMEM;
	s->gpu = g;
	int rc = gpu_probe(s->cfg, &g->b, g->why, sizeof(g->why));
	if (rc) {
		log_error("GPU transfers: gpu_backend = %s cannot start: %s",
			  s->cfg->gpu_backend == GPU_BACKEND_CUDA ? "cuda" : "emulated", g->why);
		return rc;
	}
	if (!g->b) {
		if (s->cfg->gpu_pool_size)
			snprintf(g->t0_why, sizeof(g->t0_why),
				 "not active: gpu_pool_size = %llu needs a GPU backend, and GPU "
				 "transfers are off: %s",
				 (unsigned long long)s->cfg->gpu_pool_size, g->why);
		else
			snprintf(g->t0_why, sizeof(g->t0_why), "no pool (gpu_pool_size = 0)");
		if (s->cfg->gpu_pool_size)
			log_warn("GPU transfers: off: %s; GPU tier (T0): %s", g->why, g->t0_why);
		else
			log_info("GPU transfers: off: %s; GPU tier (T0): not active", g->why);
		return 0;
	}
	if (g->b->kind == KVT_GPU_KIND_CUDA_IPC) {
		void *base;
		size_t len;
		t1_arena(s->t1, &base, &len);
		gpu_cuda_pin_host(g->b, base, len);
	}
	t0_start(s);
	log_info("GPU transfers: active: backend %s; device %s; %s; GPU tier (T0): %s",
		 g->b->name, g->b->device, g->b->pinned, g->t0_why);
	return 0;
}

void gpu_close(struct server *s)
{
	if (!s->gpu)
		return;
	t0_close(s->gpu->t0); /* every copy is done: nothing references it */
	gpu_backend_destroy(s->gpu->b);
	free(s->gpu);
	s->gpu = NULL;
}

void gpu_stats(struct server *s, struct kvt_stats_writer *w)
{
	struct gpu_state *g = s->gpu;
	char reason[768];

	if (!g)
		return;
	struct t0_stats zs = { 0 };
	if (g->t0)
		t0_get_stats(g->t0, &zs);
	(void)kvt_stats_writer_u64(w, "t0.active", g->t0 != NULL);
	snprintf(reason, sizeof(reason), "%s; GPU transfers into engine memory: %s", g->t0_why,
		 g->b ? "active" : g->why);
	(void)kvt_stats_writer_text(w, "t0.reason", reason);
	(void)kvt_stats_writer_text(w, "t0.memory",
				    g->t0 ? g->b->pool_memory : "none (T0 not active)");
	(void)kvt_stats_writer_u64(w, "t0.capacity_bytes", zs.capacity);
	(void)kvt_stats_writer_u64(w, "t0.used_bytes", zs.used);
	(void)kvt_stats_writer_u64(w, "t0.blocks", zs.blocks);
	(void)kvt_stats_writer_u64(w, "t0.hits", g->t0_hits);
	(void)kvt_stats_writer_u64(w, "t0.promotions", g->t0_promotions);
	(void)kvt_stats_writer_u64(w, "t0.promotions_inflight", g->t0_promoting);
	(void)kvt_stats_writer_u64(w, "t0.evictions", zs.evictions);
	(void)kvt_stats_writer_u64(w, "t0.quota_evictions", zs.quota_evictions);
	(void)kvt_stats_writer_u64(w, "t0.quota_refusals", zs.quota_refusals);
	(void)kvt_stats_writer_u64(w, "gpu.d2d_bytes", g->d2d_bytes);
	(void)kvt_stats_writer_text(w, "gpu.backend", g->b ? g->b->name : "off");
	(void)kvt_stats_writer_text(w, "gpu.device", g->b ? g->b->device : g->why);
	(void)kvt_stats_writer_u64(w, "gpu.regions", g->regions);
	(void)kvt_stats_writer_u64(w, "gpu.h2d_bytes", g->h2d_bytes);
	(void)kvt_stats_writer_u64(w, "gpu.d2h_bytes", g->d2h_bytes);
	(void)kvt_stats_writer_u64(w, "gpu.copies_inflight", g->copies_inflight);
}

bool gpu_handles(uint16_t opcode)
{
	return opcode >= KVT_OP_GPU_REGION_REGISTER && opcode <= KVT_OP_GPU_GET;
}

/* ---- regions ------------------------------------------------------------------------ */

static void gpu_region_put(struct gpu_region *r)
{
	if (--r->refs)
		return;
	struct gpu_state *g = r->g;
	if (r->priv)
		g->b->ops->close_region(g->b, r->priv);
	for (uint32_t i = 0; i < r->nhost; i++)
		if (r->host[i])
			region_put(r->host[i]);
	free(r->host);
	free(r);
	g->regions--;
}

static struct gpu_region *gpu_region_find(struct conn *c, uint32_t id)
{
	struct gpu_conn *gc = c->gpu;
	if (!gc || id == 0)
		return NULL;
	for (uint32_t i = 0; i < gc->nslots; i++)
		if (gc->r[i] && gc->r[i]->id == id)
			return gc->r[i];
	return NULL;
}

static int gpu_region_add(struct conn *c, struct gpu_region *r)
{
	struct gpu_conn *gc = c->gpu;
	if (!gc) {
		gc = calloc(1, sizeof(*gc));
		if (!gc)
			return KVT_ENOMEM;
		c->gpu = gc;
	}
	if (gc->next_id == UINT32_MAX)
		return KVT_EMFILE;
	uint32_t slot = gc->nslots;
	for (uint32_t i = 0; i < gc->nslots; i++)
		if (!gc->r[i]) {
			slot = i;
			break;
		}
	if (slot == gc->nslots) {
		uint32_t n = gc->nslots ? gc->nslots * 2 : 4;
		struct gpu_region **nr = realloc(gc->r, n * sizeof(*nr));
		if (!nr)
			return KVT_ENOMEM;
		memset(nr + gc->nslots, 0, (n - gc->nslots) * sizeof(*nr));
		gc->r = nr;
		gc->nslots = n;
	}
	r->id = ++gc->next_id;
	r->slot = slot;
	gc->r[slot] = r;
	gc->nlive++;
	return 0;
}

static void gpu_region_remove(struct conn *c, struct gpu_region *r)
{
	c->gpu->r[r->slot] = NULL;
	c->gpu->nlive--;
	gpu_region_put(r);
}

void gpu_conn_release(struct conn *c)
{
	struct gpu_conn *gc = c->gpu;
	if (!gc)
		return;
	for (uint32_t i = 0; i < gc->nslots; i++)
		if (gc->r[i])
			gpu_region_remove(c, gc->r[i]);
	free(gc->r);
	free(gc);
	c->gpu = NULL;
}

/* The element size each dtype needs; 0 for an unknown dtype. */
static uint32_t dtype_size(uint16_t dtype)
{
	switch (dtype) {
	case KVT_DTYPE_F32: return 4;
	case KVT_DTYPE_F16:
	case KVT_DTYPE_BF16: return 2;
	case KVT_DTYPE_FP8_E4M3:
	case KVT_DTYPE_FP8_E5M2:
	case KVT_DTYPE_INT8: return 1;
	default: return 0;
	}
}

static int kvl_err(int rc)
{
	return rc == -ERANGE ? KVT_ERANGE : KVT_EINVAL;
}

static int gpu_register(struct conn *c, const struct kvt_hdr *h, const uint8_t *body,
			uint32_t *id)
{
	struct server *s = c->srv;
	struct gpu_state *g = s->gpu;
	struct kvt_gpu_register_req req;
	struct kvt_gpu_buf_wire *bufs = NULL;
	uint32_t lbuf[KVL_MAX_LAYERS];
	uint64_t loff[KVL_MAX_LAYERS];
	uint8_t **host_base = NULL;
	struct gpu_region *r = NULL;
	int rc = kvt_gpu_register_req_decode(body, h->body_len, &req);
	if (rc)
		return rc;
	if (req.kind != g->b->kind)
		return KVT_EOPNOTSUPP;
	if (c->gpu && c->gpu->nlive >= s->cfg->gpu_max_regions)
		return KVT_EMFILE;
	const struct kvt_gpu_layout_wire *w = &req.layout;
	struct kvl_layout L = {
		.layers = w->layers, .planes = w->planes, .heads = w->heads,
		.head_dim = w->head_dim, .elem_size = w->elem_size, .page_tokens = w->page_tokens,
		.num_pages = w->num_pages, .plane_stride = w->plane_stride,
		.page_stride = w->page_stride, .token_stride = w->token_stride,
		.head_stride = w->head_stride, .dim_stride = w->dim_stride,
	};
	uint16_t dtype = w->dtype;
	if (dtype == KVT_DTYPE_UNSPEC && w->elem_size == 4)
		dtype = KVT_DTYPE_F32;
	if (dtype != KVT_DTYPE_UNSPEC && dtype_size(dtype) != w->elem_size)
		return KVT_EINVAL;
	/* Fields first (no region size can make a bad layout good)... */
	rc = kvl_layout_check(&L, UINT64_MAX);
	if (rc)
		return kvl_err(rc);
	bufs = calloc(req.nbuffers, sizeof(*bufs));
	if (!bufs)
		return KVT_ENOMEM;
	for (uint32_t i = 0; i < req.nbuffers; i++)
		kvt_gpu_buf_get(&req, i, &bufs[i]);
	/* ...then every layer against what its buffer holds past its offset. */
	for (uint32_t l = 0; l < L.layers; l++) {
		struct kvt_gpu_layer_wire lw;
		kvt_gpu_layer_get(&req, l, &lw);
		lbuf[l] = lw.buffer;
		loff[l] = lw.offset;
		uint64_t size = bufs[lw.buffer].size;
		if (lw.offset >= size) {
			rc = KVT_ERANGE;
			goto out;
		}
		rc = kvl_layout_check(&L, size - lw.offset);
		if (rc) {
			rc = kvl_err(rc);
			goto out;
		}
	}
	r = calloc(1, sizeof(*r));
	if (!r) {
		rc = KVT_ENOMEM;
		goto out;
	}
	r->g = g;
	r->refs = 1;
	r->layout = L;
	r->dtype = dtype;
	r->layout_id = w->layout_id;
	if (req.kind == KVT_GPU_KIND_EMULATED) {
		r->host = calloc(req.nbuffers, sizeof(*r->host));
		host_base = calloc(req.nbuffers, sizeof(*host_base));
		if (!r->host || !host_base) {
			rc = KVT_ENOMEM;
			goto out_region;
		}
		r->nhost = req.nbuffers;
		for (uint32_t i = 0; i < req.nbuffers; i++) {
			struct region *hr = region_lookup(c, bufs[i].region_id);
			if (!hr) {
				rc = KVT_EREGION;
				goto out_region;
			}
			if (bufs[i].size > hr->size) {
				rc = KVT_ERANGE;
				goto out_region;
			}
			hr->refs++;
			r->host[i] = hr;
			host_base[i] = hr->base;
		}
	}
	struct gpu_region_spec spec = {
		.layout = &r->layout, .nbuffers = req.nbuffers, .bufs = bufs,
		.host_base = host_base, .uuid = req.uuid, .layer_buffer = lbuf,
		.layer_offset = loff,
	};
	rc = g->b->ops->open_region(g->b, &spec, &r->priv);
	if (rc)
		goto out_region;
	g->regions++; /* from here gpu_region_put closes and uncounts it */
	rc = gpu_region_add(c, r);
	if (rc) {
		gpu_region_put(r);
		r = NULL;
		goto out;
	}
	*id = r->id;
	r = NULL;
	goto out;

out_region:
	for (uint32_t i = 0; i < r->nhost; i++)
		if (r->host[i])
			region_put(r->host[i]);
	free(r->host);
	free(r);
out:
	free(host_base);
	free(bufs);
	return rc;
}

static void do_gpu_register(struct conn *c, const struct kvt_hdr *h, const uint8_t *body)
{
	uint32_t id = 0;
	int rc = gpu_register(c, h, body, &id);
	reply_registered(c, h, rc, id, "GPU region");
}

static int gpu_region_destroy(struct conn *c, uint32_t region_id)
{
	struct gpu_region *r = gpu_region_find(c, region_id);
	if (!r)
		return KVT_EREGION;
	gpu_region_remove(c, r);
	return 0;
}

static void do_gpu_destroy(struct conn *c, const struct kvt_hdr *h, const uint8_t *body)
{
	reply_unregister(c, h, body, gpu_region_destroy);
}

/* ---- GPU_PUT, GPU_GET ---------------------------------------------------------------- */

struct gpu_task {
	struct gpu_xreq *x;
	uint32_t item;
	struct gpu_region *r;
	struct t1_block *b;  /* the host-tier block copied (NULL for a T0 hit) */
	struct t0_block *z;  /* GPU_GET of a T0 block: scattered from the pool */
	bool promote;        /* GPU_GET: copy b into T0 once answered */
	struct gpu_copy cp;
	int rc;
};

struct gpu_xreq {
	struct job job;
	struct conn *c;
	uint16_t op;
	uint64_t id;
	uint32_t count;
	int32_t *status;            /* GPU_PUT */
	struct kvt_get_result *res; /* GPU_GET */
	struct gpu_task *tasks;     /* per item; tasks with b set are run */
	uint32_t *run;              /* indexes of the tasks the job runs */
	uint32_t nrun;
	uint32_t *pages;            /* the request's page ids, host order */
	unsigned pending;           /* NVMe fetches not back yet, plus one while parsing */
};

static void gpu_xreq_free(struct gpu_xreq *x)
{
	free(x->status);
	free(x->res);
	free(x->tasks);
	free(x->run);
	free(x->pages);
	free(x);
}

static void gpu_run(struct job *j, size_t i, struct codec_ctx *ctx)
{
	struct gpu_xreq *x = j->arg;
	struct gpu_task *t = &x->tasks[x->run[i]];
	struct gpu_backend *b = t->r->g->b;

	(void)ctx;
	t->rc = x->op == KVT_OP_GPU_PUT ? b->ops->put(b, t->r->priv, &t->cp)
					: b->ops->get(b, t->r->priv, &t->cp);
}

/* ---- T0: promotion and the other tiers ----------------------------------------------- */

struct t0_promo {
	struct job job;
	struct server *s;
	struct t1_block *b; /* referenced for the copy */
	struct t0_block *z; /* pending */
	int rc;
	void (*done)(void *arg, bool in_t0); /* a waiting PREFETCH or CTX_LOAD, or NULL */
	void *arg;
};

static void t0_promo_run(struct job *j, size_t i, struct codec_ctx *ctx)
{
	struct t0_promo *p = j->arg;
	size_t n;
	const struct t1_extent *ext = t1_block_extents(p->b, &n);
	(void)i;
	(void)ctx;
	p->rc = t0_fill(p->s->gpu->t0, p->z, ext, n);
}

static void t0_promo_done(struct job *j)
{
	struct t0_promo *p = j->arg;
	struct server *s = p->s;
	struct gpu_state *g = s->gpu;
	/* Deleted or evicted from the host tier meanwhile: the T0 copy was
	 * removed with it (gpu_t0_forget, gpu_t0_host_evict), so commit says so. */
	bool in_t0 = false;
	if (p->rc == 0 && t1_block_is_committed(p->b)) {
		if (t0_commit(g->t0, p->z) == 0) {
			g->t0_promotions++;
			in_t0 = true;
		}
	} else {
		if (p->rc)
			g->t0_promote_failures++;
		t0_abort(g->t0, p->z);
	}
	t1_block_unref(s->t1, p->b);
	g->t0_promoting--;
	if (p->done)
		p->done(p->arg, in_t0);
	free(p);
}

/* Copy host block b into T0 in the background (loop thread; b is referenced by
 * the caller); done(arg, in_t0), if given, runs once the copy ends. Best effort:
 * no room (everything in T0 is being read), already there or being copied, or no
 * memory just leaves it in the host tier: then -errno and done is not called. */
static int t0_promote(struct server *s, struct t1_block *b,
		      void (*done)(void *arg, bool in_t0), void *arg)
{
	struct gpu_state *g = s->gpu;
	if (!g || !g->t0)
		return -EOPNOTSUPP;
	if (s->stopping || !t1_block_is_committed(b))
		return -ECANCELED;
	struct t0_promo *p = calloc(1, sizeof(*p));
	if (!p)
		return -ENOMEM;
	int rc = t0_reserve(g->t0, t1_block_key(b), t1_block_len(b), &p->z);
	if (rc) {
		free(p);
		return rc;
	}
	p->s = s;
	p->b = b;
	p->done = done;
	p->arg = arg;
	t1_block_ref(s->t1, b);
	p->job.segs = NULL;
	p->job.nsegs = 1;
	p->job.run = t0_promo_run;
	p->job.done = t0_promo_done;
	p->job.arg = p;
	g->t0_promoting++;
	workers_submit(s->workers, &p->job);
	return 0;
}

bool gpu_t0_active(const struct server *s)
{
	return s->gpu && s->gpu->t0;
}

uint64_t gpu_t0_tenant_bytes(const struct server *s, uint32_t tenant)
{
	return gpu_t0_active(s) ? t0_tenant_bytes(s->gpu->t0, tenant) : 0;
}

bool gpu_t0_holds(struct server *s, const struct t1_key *key)
{
	return s->gpu && s->gpu->t0 && t0_find(s->gpu->t0, key);
}

bool gpu_t0_touch(struct server *s, const struct t1_key *key)
{
	struct t0_block *z = s->gpu && s->gpu->t0 ? t0_find(s->gpu->t0, key) : NULL;
	if (z)
		t0_touch(s->gpu->t0, z);
	return z != NULL;
}

int gpu_t0_promote(struct server *s, struct t1_block *b, void (*done)(void *arg, bool in_t0),
		   void *arg)
{
	return t0_promote(s, b, done, arg);
}

void gpu_t0_forget(struct server *s, const struct t1_key *key)
{
	if (s->gpu && s->gpu->t0)
		(void)t0_delete(s->gpu->t0, key);
}

void gpu_t0_host_evict(struct server *s, const struct t1_block *b)
{
	gpu_t0_forget(s, t1_block_key(b));
}

static void gpu_xreq_done(struct job *j)
{
	struct gpu_xreq *x = j->arg;
	struct conn *c = x->c;
	struct server *s = c->srv;
	struct gpu_state *g = s->gpu;
	struct tenant_counters *tc = tenant_counters(s, c->tenant);

	g->copies_inflight -= x->nrun;
	for (uint32_t k = 0; k < x->nrun; k++) {
		struct gpu_task *t = &x->tasks[x->run[k]];
		uint64_t len = t->z ? t0_block_len(t->z) : t1_block_len(t->b);
		if (x->op == KVT_OP_GPU_PUT) {
			/* A writer that died before its answer gets no block, as with PUT. */
			if (t->rc == 0 && !c->dead) {
				t1_commit(s->t1, t->b);
				tier2_after_put(s, t->b);
				g->d2h_bytes += len;
				s->bytes_in += len;
				if (tc)
					tc->bytes_in += len;
			} else {
				t1_abort(s->t1, t->b);
			}
			x->status[t->item] = t->rc;
		} else {
			if (t->rc == 0) {
				if (t->z) {
					g->d2d_bytes += len;
					g->t0_hits++;
				} else {
					g->h2d_bytes += len;
				}
				s->bytes_out += len;
				if (tc)
					tc->bytes_out += len;
			}
			if (t->z) {
				t0_block_unref(g->t0, t->z);
			} else {
				if (t->rc == 0 && t->promote)
					(void)t0_promote(s, t->b, NULL, NULL);
				t1_block_unref(s->t1, t->b);
			}
			x->res[t->item].status = t->rc;
			if (t->rc)
				memset(&x->res[t->item].desc, 0, sizeof(x->res[t->item].desc));
		}
		gpu_region_put(t->r);
	}
	c->inflight--;
	if (!c->dead) {
		if (x->op == KVT_OP_GPU_PUT)
			reply_item_status(c, x->op, x->id, x->status, x->count);
		else
			reply_get_results(c, x->op, x->id, x->res, x->count);
		conn_update_events(c);
	}
	gpu_xreq_free(x);
	conn_put(c);
}

static void gpu_xreq_submit(struct gpu_xreq *x)
{
	for (uint32_t i = 0; i < x->count; i++)
		if (x->tasks[i].b || x->tasks[i].z)
			x->run[x->nrun++] = i;
	x->c->srv->gpu->copies_inflight += x->nrun;
	x->job.segs = NULL;
	x->job.nsegs = x->nrun;
	x->job.run = gpu_run;
	x->job.done = gpu_xreq_done;
	x->job.arg = x;
	workers_submit(x->c->srv->workers, &x->job);
}

static void gpu_xreq_pending_put(struct gpu_xreq *x)
{
	if (--x->pending == 0)
		gpu_xreq_submit(x);
}

/* Checks common to both directions: region, token count, page table. */
static int item_check(struct gpu_xreq *x, const struct kvt_gpu_item_wire *it,
		      struct gpu_region **rp)
{
	struct gpu_region *r = x->c->dead ? NULL : gpu_region_find(x->c, it->region_id);
	if (!r)
		return KVT_EREGION;
	const struct kvl_layout *L = &r->layout;
	if (it->ntokens == 0)
		return KVT_EINVAL;
	uint64_t span = (uint64_t)it->first_token % L->page_tokens + it->ntokens;
	if (it->npages != (span + L->page_tokens - 1) / L->page_tokens)
		return KVT_EINVAL;
	/* Every page id before anything is read or written. */
	for (uint32_t j = 0; j < it->npages; j++)
		if (x->pages[it->pages_offset + j] >= L->num_pages)
			return KVT_ERANGE;
	*rp = r;
	return 0;
}

static void task_set(struct gpu_task *t, struct gpu_xreq *x, uint32_t i, struct gpu_region *r,
		     struct t1_block *b, const struct kvt_gpu_item_wire *it)
{
	size_t n;
	const struct t1_extent *ext = t1_block_extents(b, &n);
	*t = (struct gpu_task){
		.x = x, .item = i, .r = r, .b = b,
		.cp = { .layout = &r->layout, .pages = x->pages + it->pages_offset,
			.npages = it->npages, .first_slot = it->first_token % r->layout.page_tokens,
			.ntokens = it->ntokens, .ext = ext, .next = n, .blen = t1_block_len(b) },
	};
	r->refs++;
}

/* A GPU_GET served from T0: the pool's copy is the scatter's source. */
static void task_set_t0(struct gpu_task *t, struct gpu_xreq *x, uint32_t i, struct gpu_region *r,
			struct t0_block *z, const struct kvt_gpu_item_wire *it)
{
	size_t n;
	const struct t1_extent *ext = t0_block_extents(z, &n);
	*t = (struct gpu_task){
		.x = x, .item = i, .r = r, .z = z,
		.cp = { .layout = &r->layout, .pages = x->pages + it->pages_offset,
			.npages = it->npages, .first_slot = it->first_token % r->layout.page_tokens,
			.ntokens = it->ntokens, .ext = ext, .next = n, .blen = t0_block_len(z),
			.src_pool = true },
	};
	r->refs++;
}

/* A GPU_GET of host-tier block b: the first one marks it, the next one (while it
 * is still in the host tier) promotes it into T0 once answered. */
static bool t0_wants(struct server *s, struct t1_block *b)
{
	if (!s->gpu->t0)
		return false;
	uint32_t fl = t1_block_flags(b);
	if (fl & T1F_GPU_READ)
		return true;
	t1_block_set_flags(b, fl | T1F_GPU_READ);
	return false;
}

static int gpu_put_item(struct gpu_xreq *x, uint32_t i, const struct kvt_gpu_item_wire *it)
{
	struct conn *c = x->c;
	struct server *s = c->srv;
	struct gpu_region *r;
	int rc = item_check(x, it, &r);
	if (rc)
		return rc;
	if (kvt_key_is_zero(&it->key))
		return KVT_EINVAL;
	size_t blen = kvl_block_bytes(&r->layout, it->ntokens);
	if (blen == 0 || blen > s->cfg->max_block_size)
		return KVT_EFBIG;
	if (put_already_stored(c, &it->key))
		return 0;
	struct t1_key tk = { .tenant = c->tenant, .key = it->key };
	struct t1_block *b = NULL;
	kvt_block_desc desc = { .dtype = r->dtype, .layout = r->layout_id,
				.layers = (uint16_t)r->layout.layers, .tokens = it->ntokens };
	/* The same room rules as PUT, except that a GPU_PUT never waits for write-back:
	 * an orphan takes free room only; with NVMe, clean room first. */
	if (put_is_orphan(c, &it->parent)) {
		rc = t1_reserve_free(s->t1, &tk, &it->parent, blen, &desc, &b);
	} else {
		rc = tier2_active(s) ? t1_reserve_clean(s->t1, &tk, &it->parent, blen, &desc, &b)
				     : -ENOSPC;
		if (rc == -ENOSPC || rc == -EDQUOT)
			rc = t1_reserve(s->t1, &tk, &it->parent, blen, &desc, &b);
	}
	if (rc)
		return map_reserve_error(rc);
	task_set(&x->tasks[i], x, i, r, b, it);
	return 0;
}

/* A block's length must be what the layout gives for the item's tokens. */
static int get_block_check(struct gpu_xreq *x, uint32_t i, const struct gpu_region *r,
			   uint64_t len, uint32_t ntokens)
{
	x->res[i].length = len;
	return len == kvl_block_bytes(&r->layout, ntokens) ? 0 : KVT_EINVAL;
}

struct gpu_fetch_ref {
	struct gpu_xreq *x;
	uint32_t i;
	struct kvt_gpu_item_wire it;
	struct gpu_region *r;
};

static void gpu_fetch_done(void *arg, int status, struct t1_block *b)
{
	struct gpu_fetch_ref *fr = arg;
	struct gpu_xreq *x = fr->x;
	struct server *s = x->c->srv;
	if (status || !b) {
		x->res[fr->i].status = status == -ENOMEM ? KVT_ENOMEM : KVT_ENOENT;
		x->res[fr->i].length = 0;
		memset(&x->res[fr->i].desc, 0, sizeof(x->res[fr->i].desc));
		if (b)
			t1_block_unref(s->t1, b);
	} else {
		tier2_count_hit(s);
		int rc = x->c->dead ? KVT_EREGION
				    : get_block_check(x, fr->i, fr->r, t1_block_len(b), fr->it.ntokens);
		if (rc) {
			x->res[fr->i].status = rc;
			t1_block_unref(s->t1, b);
		} else {
			x->res[fr->i].desc = *t1_block_desc(b);
			task_set(&x->tasks[fr->i], x, fr->i, fr->r, b, &fr->it);
			x->tasks[fr->i].promote = t0_wants(s, b);
		}
	}
	gpu_region_put(fr->r); /* the fetch's own reference */
	free(fr);
	gpu_xreq_pending_put(x);
}

/*
 * Bring the item's block up from NVMe. With no room in the host tier that costs
 * nothing (every block there is dirty), wait for write-backs to make some, as a
 * PUT does, rather than failing a block that exists: the scatter reads from the
 * host tier. 0 (fetching or parked) or -errno.
 */
static void gpu_room_cb(void *arg);

static int gpu_fetch_start(struct gpu_fetch_ref *fr)
{
	struct server *s = fr->x->c->srv;
	struct t1_key tk = { .tenant = fr->x->c->tenant, .key = fr->it.key };
	int rc = tier2_fetch(s, &tk, NULL, gpu_fetch_done, fr);
	if ((rc == -ENOSPC || rc == -EDQUOT) && !s->stopping &&
	    tier2_wait_room(s, gpu_room_cb, fr))
		return 0;
	return rc;
}

static void gpu_room_cb(void *arg)
{
	struct gpu_fetch_ref *fr = arg;
	int rc = fr->x->c->dead ? -ENOENT : gpu_fetch_start(fr);
	if (rc)
		gpu_fetch_done(fr, rc == -ENOMEM ? -ENOMEM : -ENOENT, NULL);
}

static int gpu_get_item(struct gpu_xreq *x, uint32_t i, const struct kvt_gpu_item_wire *it)
{
	struct conn *c = x->c;
	struct server *s = c->srv;
	struct gpu_region *r;
	int rc = item_check(x, it, &r);
	if (rc)
		return rc;
	struct tenant_counters *tc = tenant_counters(s, c->tenant);
	struct t1_key tk = { .tenant = c->tenant, .key = it->key };
	struct t1_block *b = t1_find(s->t1, &tk);
	struct t0_block *z = b && s->gpu->t0 ? t0_find(s->gpu->t0, &tk) : NULL;
	if (z) {
		/* In T0 (and, as always, in the host tier): from the pool. The host
		 * block is touched too, so the host policy keeps seeing it as hot. */
		s->hits++;
		if (tc)
			tc->hits++;
		rc = get_block_check(x, i, r, t0_block_len(z), it->ntokens);
		if (rc)
			return rc;
		x->res[i].desc = *t1_block_desc(b);
		t0_block_ref(s->gpu->t0, z);
		t0_touch(s->gpu->t0, z);
		t1_touch(s->t1, b);
		task_set_t0(&x->tasks[i], x, i, r, z, it);
		return 0;
	}
	if (b) {
		s->hits++;
		if (tc)
			tc->hits++;
		rc = get_block_check(x, i, r, t1_block_len(b), it->ntokens);
		if (rc)
			return rc;
		x->res[i].desc = *t1_block_desc(b);
		t1_block_ref(s->t1, b);
		t1_touch(s->t1, b);
		task_set(&x->tasks[i], x, i, r, b, it);
		x->tasks[i].promote = t0_wants(s, b);
		return 0;
	}
	s->misses++;
	/* Only on NVMe: brought up into the host tier by the fetch path, then
	 * scattered from there like a hit. */
	struct t2_info info;
	if (tier2_lookup(s, &tk, &info) < 0) {
		if (tc)
			tc->misses++;
		return KVT_ENOENT;
	}
	rc = get_block_check(x, i, r, info.len, it->ntokens);
	if (rc)
		return rc;
	struct gpu_fetch_ref *fr = malloc(sizeof(*fr));
	if (!fr)
		return KVT_ENOMEM;
	*fr = (struct gpu_fetch_ref){ .x = x, .i = i, .it = *it, .r = r };
	r->refs++;
	x->pending++;
	rc = gpu_fetch_start(fr);
	if (rc) {
		x->pending--;
		gpu_region_put(r);
		free(fr);
		return rc == -ENOMEM ? KVT_ENOMEM : KVT_ENOENT;
	}
	if (tc)
		tc->hits++;
	return 0;
}

static void do_gpu_xfer(struct conn *c, const struct kvt_hdr *h, const uint8_t *body)
{
	bool put = h->opcode == KVT_OP_GPU_PUT;
	struct kvt_gpu_xfer xf;
	int rc = kvt_gpu_xfer_decode(body, h->body_len, put, c->srv->cfg->max_batch,
				     c->srv->cfg->gpu_max_pages, &xf);
	if (rc) {
		reply_status(c, h, rc);
		return;
	}
	struct gpu_xreq *x = calloc(1, sizeof(*x));
	size_t n = xf.count ? xf.count : 1;
	if (x) {
		x->tasks = calloc(n, sizeof(*x->tasks));
		x->run = calloc(n, sizeof(*x->run));
		x->pages = malloc((xf.npage_ids ? xf.npage_ids : 1) * sizeof(*x->pages));
		if (put)
			x->status = calloc(n, sizeof(*x->status));
		else
			x->res = calloc(n, sizeof(*x->res));
	}
	if (!x || !x->tasks || !x->run || !x->pages || (!x->status && !x->res)) {
		if (x)
			gpu_xreq_free(x);
		reply_status(c, h, KVT_ENOMEM);
		return;
	}
	x->c = c;
	x->op = h->opcode;
	x->id = h->request_id;
	x->count = xf.count;
	for (uint32_t j = 0; j < xf.npage_ids; j++)
		x->pages[j] = kvt_gpu_xfer_page(&xf, j);
	c->refs++;
	c->inflight++;
	x->pending = 1;
	for (uint32_t i = 0; i < xf.count; i++) {
		struct kvt_gpu_item_wire it;
		/* Checked by the decode already. */
		(void)kvt_gpu_item_decode(xf.items + (size_t)i * KVT_GPU_ITEM_SIZE, put,
					  xf.npage_ids, &it);
		if (put) {
			x->status[i] = gpu_put_item(x, i, &it);
		} else {
			x->res[i].status = gpu_get_item(x, i, &it);
			if (x->res[i].status && x->res[i].status != KVT_EINVAL)
				x->res[i].length = 0;
		}
	}
	gpu_xreq_pending_put(x);
}

void gpu_dispatch(struct conn *c, const struct kvt_hdr *h, const uint8_t *body)
{
	if (!c->srv->gpu || !c->srv->gpu->b) {
		reply_status(c, h, KVT_ENOGPU);
		return;
	}
	switch (h->opcode) {
	case KVT_OP_GPU_REGION_REGISTER: do_gpu_register(c, h, body); break;
	case KVT_OP_GPU_REGION_DESTROY: do_gpu_destroy(c, h, body); break;
	default: do_gpu_xfer(c, h, body); break;
	}
}
