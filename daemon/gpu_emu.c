/*
 * gpu_emu.c - the emulated GPU backend: the "device memory" of a registration is
 * host regions the client registered, and the copies are the CPU reference
 * gather/scatter (kernels/kvcopy_ref.c). It exists so that the GPU_* protocol
 * path, its checks and its lifetimes run end to end on machines without a GPU;
 * it is never chosen unless gpu_backend = emulated, and says it is not HBM.
 * Its T0 pool (gpu_pool_size) is host memory too, filled with memcpy and read
 * by the same reference scatter; it is reported as emulated, never as HBM.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include "gpu.h"
#include "kvcopy.h"

struct emu_region {
	uint32_t layers;
	void *layer_base[KVL_MAX_LAYERS];
};

static int emu_open(struct gpu_backend *b, const struct gpu_region_spec *spec, void **priv)
{
	(void)b;
	if (!spec->host_base)
		return KVT_EINVAL;
	struct emu_region *r = calloc(1, sizeof(*r));
	if (!r)
		return KVT_ENOMEM;
	r->layers = spec->layout->layers;
	for (uint32_t l = 0; l < r->layers; l++)
		r->layer_base[l] = spec->host_base[spec->layer_buffer[l]] + spec->layer_offset[l];
	*priv = r;
	return 0;
}

static void emu_close(struct gpu_backend *b, void *priv)
{
	(void)b;
	free(priv);
}

/* The block is one extent when the arena had a run long enough (the common case):
 * the kernel works on it in place; otherwise through a bounce buffer. */
static int emu_copy(void *priv, const struct gpu_copy *cp, bool gather)
{
	struct emu_region *r = priv;
	uint8_t *blk = NULL, *tmp = NULL;
	int rc;

	if (cp->next == 1 && cp->ext[0].len >= cp->blen) {
		blk = cp->ext[0].ptr;
	} else {
		tmp = malloc(cp->blen);
		if (!tmp)
			return KVT_ENOMEM;
		blk = tmp;
		if (!gather) {
			uint64_t off = 0;
			for (size_t i = 0; i < cp->next && off < cp->blen; i++) {
				uint64_t n = cp->ext[i].len < cp->blen - off ? cp->ext[i].len
									     : cp->blen - off;
				memcpy(tmp + off, cp->ext[i].ptr, n);
				off += n;
			}
		}
	}
	struct kvl_item it = { .block = blk, .pages = cp->pages, .first_token = cp->first_slot,
			       .ntokens = cp->ntokens };
	rc = gather ? kvl_gather_ref(cp->layout, r->layer_base, &it, 1)
		    : kvl_scatter_ref(cp->layout, r->layer_base, &it, 1);
	if (rc == 0 && tmp && gather) {
		uint64_t off = 0;
		for (size_t i = 0; i < cp->next && off < cp->blen; i++) {
			uint64_t n = cp->ext[i].len < cp->blen - off ? cp->ext[i].len : cp->blen - off;
			memcpy(cp->ext[i].ptr, tmp + off, n);
			off += n;
		}
	}
	free(tmp);
	if (rc)
		return rc == -ERANGE ? KVT_ERANGE : KVT_EIO;
	return 0;
}

static int emu_put(struct gpu_backend *b, void *priv, const struct gpu_copy *cp)
{
	(void)b;
	return emu_copy(priv, cp, true);
}

static int emu_get(struct gpu_backend *b, void *priv, const struct gpu_copy *cp)
{
	(void)b;
	return emu_copy(priv, cp, false);
}

static void emu_destroy(struct gpu_backend *b)
{
	free(b);
}

/* ---- the T0 pool: anonymous host memory ---------------------------------------- */

static int emu_pool_alloc(void *arg, uint64_t bytes, void **base)
{
	(void)arg;
	void *p = mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (p == MAP_FAILED)
		return -errno;
	*base = p;
	return 0;
}

static void emu_pool_free(void *arg, void *base, uint64_t bytes)
{
	(void)arg;
	munmap(base, bytes);
}

static int emu_pool_copy(void *arg, void *dst, const void *src, uint64_t len)
{
	(void)arg;
	memcpy(dst, src, len);
	return 0;
}

static const struct t0_pool_ops emu_pool_ops = {
	.alloc = emu_pool_alloc,
	.free = emu_pool_free,
	.copy = emu_pool_copy,
};

static const struct gpu_ops emu_ops = {
	.open_region = emu_open,
	.close_region = emu_close,
	.put = emu_put,
	.get = emu_get,
	.destroy = emu_destroy,
};

int gpu_emu_create(struct gpu_backend **out)
{
	struct gpu_backend *b = calloc(1, sizeof(*b));
	if (!b)
		return -ENOMEM;
	b->ops = &emu_ops;
	b->kind = KVT_GPU_KIND_EMULATED;
	strcpy(b->name, "emulated (host memory), not HBM");
	strcpy(b->device, "none (emulated: registrations name host regions)");
	strcpy(b->pinned, "not needed (emulated)");
	b->pool = &emu_pool_ops;
	strcpy(b->pool_memory, "emulated (host memory), not HBM");
	*out = b;
	return 0;
}
