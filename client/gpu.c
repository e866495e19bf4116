/*
 * gpu.c - libkvtier GPU regions: registering an engine's paged KV cache (CUDA IPC
 * handles, or host regions standing in for them on an emulated daemon) with its
 * layout, and GPU_PUT / GPU_GET, whose items carry page tables. The library never
 * touches CUDA: the handle bytes come from the caller.
 */
#include <stdlib.h>
#include <string.h>

#include "client.h"
#include "export.h"

/* ---- registration ---------------------------------------------------------------- */

struct gpu_reg {
	struct kvt_gpu_register_req req;
	struct kvt_gpu_buf_wire *bufs;
	struct kvt_gpu_layer_wire *layers;
	uint32_t id; /* out */
};

static int gpu_register_encode(struct kvt_conn *c, struct kvt_op *op, size_t first, size_t count,
			       uint8_t *out, size_t cap)
{
	const struct gpu_reg *g = op->ctx;

	(void)c;
	(void)first;
	(void)count;
	return kvt_gpu_register_req_encode(&g->req, g->bufs, g->layers, out, cap);
}

static int gpu_register_reply(struct kvt_conn *c, struct kvt_op *op, const struct kvt_req *rq,
			      const uint8_t *body, size_t len)
{
	struct gpu_reg *g = op->ctx;

	(void)c;
	(void)rq;
	return kvt_register_rep_id(body, len, &g->id);
}

/* Common to both registrations: the layout, then the request. bufs is filled by
 * the caller; this owns neither array. */
static int gpu_register_run(struct kvt_conn *c, struct gpu_reg *g, size_t n,
			    const kvt_kv_layout *layout, uint32_t *region_id)
{
	struct kvt_gpu_layout_wire *l = &g->req.layout;
	struct kvt_op op;
	size_t len;
	int rc;

	l->layers = layout->layers;
	l->planes = layout->planes;
	l->heads = layout->heads;
	l->head_dim = layout->head_dim;
	l->elem_size = layout->elem_size;
	l->page_tokens = layout->page_tokens;
	l->num_pages = layout->num_pages;
	l->plane_stride = layout->plane_stride;
	l->page_stride = layout->page_stride;
	l->token_stride = layout->token_stride;
	l->head_stride = layout->head_stride;
	l->dim_stride = layout->dim_stride;
	l->dtype = layout->dtype;
	l->layout_id = layout->layout_id;
	g->req.nbuffers = (uint16_t)n;
	for (uint32_t i = 0; i < layout->layers; i++) {
		if (layout->layer[i].buffer >= n)
			return KVT_EINVAL;
		g->layers[i].buffer = layout->layer[i].buffer;
		g->layers[i].offset = layout->layer[i].offset;
	}
	len = kvt_gpu_register_req_size((uint32_t)n, layout->layers);
	if (len > c->info.max_frame - KVT_HDR_SIZE)
		return KVT_EMSGSIZE;
	kvt_op_init_single(&op, KVT_OP_GPU_REGION_REGISTER, len, gpu_register_encode,
			   gpu_register_reply, g);
	rc = kvt_op_run(c, &op);
	if (rc)
		return rc;
	*region_id = g->id;
	return 0;
}

static int gpu_register_check(const kvt_conn *c, const void *bufs, size_t n,
			      const kvt_kv_layout *layout, const uint32_t *region_id)
{
	if (!c || !bufs || !layout || !layout->layer || !region_id)
		return KVT_EINVAL;
	if (n < 1 || n > KVT_GPU_MAX_BUFFERS || layout->layers < 1 ||
	    layout->layers > KVT_GPU_MAX_LAYERS)
		return KVT_EINVAL;
	return kvt_conn_usable(c);
}

static int gpu_reg_alloc(struct gpu_reg *g, size_t n, uint32_t layers)
{
	memset(g, 0, sizeof(*g));
	g->bufs = calloc(n, sizeof(*g->bufs));
	g->layers = calloc(layers, sizeof(*g->layers));
	if (!g->bufs || !g->layers) {
		free(g->bufs);
		free(g->layers);
		return KVT_ENOMEM;
	}
	return 0;
}

KVT_EXPORT int kvt_gpu_region_register(kvt_conn *c, const kvt_gpu_buffer *bufs, size_t n,
				       const kvt_kv_layout *layout,
				       const uint8_t dev_uuid[KVT_GPU_UUID_SIZE],
				       uint32_t *region_id)
{
	struct gpu_reg g;
	int rc = gpu_register_check(c, bufs, n, layout, region_id);

	if (rc)
		return rc;
	if (!dev_uuid)
		return KVT_EINVAL;
	rc = gpu_reg_alloc(&g, n, layout->layers);
	if (rc)
		return rc;
	g.req.kind = KVT_GPU_KIND_CUDA_IPC;
	memcpy(g.req.uuid, dev_uuid, KVT_GPU_UUID_SIZE);
	for (size_t i = 0; i < n; i++) {
		memcpy(g.bufs[i].handle, bufs[i].ipc_handle, KVT_GPU_IPC_HANDLE_SIZE);
		g.bufs[i].size = bufs[i].size;
	}
	rc = gpu_register_run(c, &g, n, layout, region_id);
	free(g.bufs);
	free(g.layers);
	return rc;
}

KVT_EXPORT int kvt_gpu_region_register_emulated(kvt_conn *c, kvt_region *const *regions, size_t n,
						const kvt_kv_layout *layout, uint32_t *region_id)
{
	struct gpu_reg g;
	int rc = gpu_register_check(c, regions, n, layout, region_id);

	if (rc)
		return rc;
	rc = gpu_reg_alloc(&g, n, layout->layers);
	if (rc)
		return rc;
	g.req.kind = KVT_GPU_KIND_EMULATED;
	for (size_t i = 0; i < n; i++) {
		/* 0 for a region of another connection: the daemon says KVT_EREGION. */
		g.bufs[i].region_id = kvt_region_wire_id(c, regions[i]);
		g.bufs[i].size = regions[i] ? kvt_region_size(regions[i]) : 0;
	}
	rc = gpu_register_run(c, &g, n, layout, region_id);
	free(g.bufs);
	free(g.layers);
	return rc;
}

static int gpu_destroy_encode(struct kvt_conn *c, struct kvt_op *op, size_t first, size_t count,
			      uint8_t *out, size_t cap)
{
	const uint32_t *id = op->ctx;

	(void)c;
	(void)first;
	(void)count;
	return kvt_unregister_body(*id, out, cap);
}

KVT_EXPORT int kvt_gpu_region_destroy(kvt_conn *c, uint32_t region_id)
{
	struct kvt_op op;
	int rc;

	if (!c)
		return KVT_EINVAL;
	rc = kvt_conn_usable(c);
	if (rc)
		return rc;
	kvt_op_init_single(&op, KVT_OP_GPU_REGION_DESTROY, KVT_UNREGISTER_REQ_SIZE,
			   gpu_destroy_encode, NULL, &region_id);
	return kvt_op_run(c, &op);
}

/* ---- GPU_PUT, GPU_GET -------------------------------------------------------------- */

struct gpu_xfer_ctx {
	kvt_gpu_item *items;
	size_t n;
	uint32_t npage_ids;
};

static int gpu_xfer_encode(struct kvt_conn *c, struct kvt_op *op, size_t first, size_t count,
			   uint8_t *out, size_t cap)
{
	const struct gpu_xfer_ctx *x = op->ctx;
	uint8_t *items, *pages;
	uint32_t off = 0;
	int rc;

	(void)c;
	(void)first;
	(void)count;
	rc = kvt_gpu_xfer_prefix_encode((uint32_t)x->n, x->npage_ids, out, cap);
	if (rc < 0)
		return rc;
	if (cap < kvt_gpu_xfer_size((uint32_t)x->n, x->npage_ids))
		return KVT_EMSGSIZE;
	items = out + KVT_GPU_XFER_PREFIX;
	pages = items + x->n * KVT_GPU_ITEM_SIZE;
	for (size_t i = 0; i < x->n; i++) {
		const kvt_gpu_item *it = &x->items[i];
		struct kvt_gpu_item_wire w = {
			.key = it->key,
			.parent = op->opcode == KVT_OP_GPU_PUT ? it->parent : (kvt_key){ { 0 } },
			.region_id = it->region_id,
			.first_token = it->first_token,
			.ntokens = it->ntokens,
			.pages_offset = off,
			.npages = it->npages,
		};

		kvt_gpu_item_encode(&w, items + i * KVT_GPU_ITEM_SIZE);
		for (uint32_t j = 0; j < it->npages; j++)
			kvt_put32(pages + ((size_t)off + j) * 4, it->pages[j]);
		off += it->npages;
	}
	return (int)kvt_gpu_xfer_size((uint32_t)x->n, x->npage_ids);
}

static int gpu_put_reply(struct kvt_conn *c, struct kvt_op *op, const struct kvt_req *rq,
			 const uint8_t *body, size_t len)
{
	struct gpu_xfer_ctx *x = op->ctx;
	int32_t *st;
	int rc = kvt_status_results(c, body, len, x->n, &st);

	(void)rq;
	if (rc)
		return rc;
	for (size_t i = 0; i < x->n; i++) {
		x->items[i].status = st[i];
		if (st[i])
			op->partial = true;
	}
	return 0;
}

static int gpu_get_reply(struct kvt_conn *c, struct kvt_op *op, const struct kvt_req *rq,
			 const uint8_t *body, size_t len)
{
	struct gpu_xfer_ctx *x = op->ctx;
	struct kvt_get_result *res;
	int rc = kvt_get_results(c, body, len, x->n, &res);

	(void)rq;
	if (rc)
		return rc;
	for (size_t i = 0; i < x->n; i++) {
		kvt_gpu_item *it = &x->items[i];

		kvt_get_result_store(op, &res[i], &it->status, &it->length, &it->desc);
	}
	return 0;
}

static int gpu_xfer(kvt_conn *c, kvt_gpu_item *items, size_t n, uint16_t opcode)
{
	struct gpu_xfer_ctx x = { .items = items, .n = n };
	uint64_t npages = 0;
	struct kvt_op op;
	size_t len;
	int rc;

	rc = kvt_batch_args_check(c, items, n);
	if (rc)
		return rc;
	for (size_t i = 0; i < n; i++) {
		if (items[i].npages && !items[i].pages)
			return KVT_EINVAL;
		npages += items[i].npages;
	}
	if (npages > UINT32_MAX)
		return KVT_E2BIG;
	rc = kvt_conn_usable(c);
	if (rc)
		return rc;
	x.npage_ids = (uint32_t)npages;
	len = kvt_gpu_xfer_size((uint32_t)n, x.npage_ids);
	if (len == 0 || len > c->info.max_frame - KVT_HDR_SIZE)
		return KVT_EMSGSIZE;
	kvt_op_init_single(&op, opcode, len, gpu_xfer_encode,
			   opcode == KVT_OP_GPU_PUT ? gpu_put_reply : gpu_get_reply, &x);
	rc = kvt_op_run(c, &op);
	if (rc && rc != KVT_EPARTIAL) {
		/* The request failed as a whole: say so in every item too. */
		for (size_t i = 0; i < n; i++)
			items[i].status = rc;
	}
	return rc;
}

KVT_EXPORT int kvt_gpu_put(kvt_conn *c, kvt_gpu_item *items, size_t n)
{
	return gpu_xfer(c, items, n, KVT_OP_GPU_PUT);
}

KVT_EXPORT int kvt_gpu_get(kvt_conn *c, kvt_gpu_item *items, size_t n)
{
	return gpu_xfer(c, items, n, KVT_OP_GPU_GET);
}
