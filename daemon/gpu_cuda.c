/*
 * gpu_cuda.c - the CUDA GPU backend: opens an engine's allocations from their
 * CUDA IPC handles and moves blocks between them and the host tier with the
 * paged-KV kernels (kernels/kvcopy.cu). Compiled to a stub that reports "no CUDA
 * in this build" unless the Makefile found nvcc (KVT_HAVE_CUDA).
 *
 * Each copy worker gets, per device, its own non-blocking stream and a device
 * staging buffer (grown on demand, kept for the thread's life). A GPU_PUT item is
 * gather into staging, then D2H into the reserved block's extents; a GPU_GET item
 * is H2D of the block's extents into staging, then scatter. The worker waits for
 * its stream (cudaStreamSynchronize) before the job is reported done, so the loop
 * thread never blocks on the device. The host arena is registered with
 * cudaHostRegister at start-up so those copies are DMA from pinned memory.
 *
 * The T0 pool (gpu_pool_size) is one cudaMalloc on device 0. Promotion copies a
 * host block into it (H2D on the worker's stream); a GPU_GET of a T0 block
 * scatters with the pool as the kernel's source when the block is one extent on
 * the region's device, else after device-to-device copies into staging.
 */
#include "gpu.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#if defined(KVT_HAVE_CUDA) && KVT_HAVE_CUDA

#include <cuda_runtime_api.h>

#include "kvcopy.h"

#define CUDA_MAX_DEVICES 64

struct cuda_region {
	int dev;
	uint32_t nbuffers;
	void **mapped;     /* per buffer, from cudaIpcOpenMemHandle */
	void **dlayer_base; /* device array of layers pointers */
};

/* A worker's streams and staging on one device. Host<->device copies run on xfer,
 * kernels on stream; a copy and a kernel of different layers overlap (see
 * cuda_copy). */
struct cuda_lane {
	bool ready;
	cudaStream_t stream;
	cudaStream_t xfer;
	cudaEvent_t ev[2];
	uint8_t *stage;   /* device */
	size_t cap;
	uint32_t *dflag;  /* device: the kernels' bad-page flag */
};

static __thread struct cuda_lane lanes[CUDA_MAX_DEVICES];

static int cuda_err(cudaError_t e)
{
	switch (e) {
	case cudaSuccess: return 0;
	case cudaErrorMemoryAllocation: return KVT_ENOMEM;
	default: return KVT_EIO;
	}
}

static int find_device(const uint8_t *uuid, int *dev)
{
	int n = 0;
	if (cudaGetDeviceCount(&n) != cudaSuccess)
		return KVT_ENODEV;
	for (int d = 0; d < n; d++) {
		struct cudaDeviceProp p;
		if (cudaGetDeviceProperties(&p, d) != cudaSuccess)
			continue;
		if (memcmp(p.uuid.bytes, uuid, KVT_GPU_UUID_SIZE) == 0) {
			*dev = d;
			return 0;
		}
	}
	return KVT_ENODEV;
}

static void cuda_close(struct gpu_backend *b, void *priv)
{
	struct cuda_region *r = priv;
	(void)b;
	if (!r)
		return;
	cudaSetDevice(r->dev);
	for (uint32_t i = 0; i < r->nbuffers; i++)
		if (r->mapped[i])
			cudaIpcCloseMemHandle(r->mapped[i]);
	if (r->dlayer_base)
		cudaFree(r->dlayer_base);
	free(r->mapped);
	free(r);
}

static int cuda_open(struct gpu_backend *b, const struct gpu_region_spec *spec, void **priv)
{
	void *host_base[KVL_MAX_LAYERS];
	int dev, rc;

	if (!spec->bufs || !spec->uuid)
		return KVT_EINVAL;
	rc = find_device(spec->uuid, &dev);
	if (rc)
		return rc;
	struct cuda_region *r = calloc(1, sizeof(*r));
	if (!r)
		return KVT_ENOMEM;
	r->dev = dev;
	r->mapped = calloc(spec->nbuffers, sizeof(*r->mapped));
	if (!r->mapped) {
		free(r);
		return KVT_ENOMEM;
	}
	r->nbuffers = spec->nbuffers;
	if (cudaSetDevice(dev) != cudaSuccess) {
		rc = KVT_EIO;
		goto out_close;
	}
	for (uint32_t i = 0; i < spec->nbuffers; i++) {
		cudaIpcMemHandle_t h;
		memcpy(&h, spec->bufs[i].handle, sizeof(h));
		cudaError_t e = cudaIpcOpenMemHandle(&r->mapped[i], h,
						     cudaIpcMemLazyEnablePeerAccess);
		if (e != cudaSuccess) {
			r->mapped[i] = NULL;
			cudaGetLastError(); /* not sticky: clear it */
			rc = e == cudaErrorMemoryAllocation ? KVT_ENOMEM : KVT_EACCES;
			goto out_close;
		}
	}
	for (uint32_t l = 0; l < spec->layout->layers; l++)
		host_base[l] = (uint8_t *)r->mapped[spec->layer_buffer[l]] + spec->layer_offset[l];
	size_t bytes = spec->layout->layers * sizeof(void *);
	if (cudaMalloc((void **)&r->dlayer_base, bytes) != cudaSuccess) {
		r->dlayer_base = NULL;
		rc = KVT_ENOMEM;
		goto out_close;
	}
	if (cudaMemcpy(r->dlayer_base, host_base, bytes, cudaMemcpyHostToDevice) != cudaSuccess) {
		rc = KVT_EIO;
		goto out_close;
	}
	(void)b;
	*priv = r;
	return 0;

out_close:
	cuda_close(b, r);
	return rc;
}

/* The calling worker's lane on dev, with at least need bytes of staging. */
static int lane_get(int dev, size_t need, struct cuda_lane **out)
{
	if (dev < 0 || dev >= CUDA_MAX_DEVICES)
		return KVT_ENODEV;
	struct cuda_lane *ln = &lanes[dev];
	if (cudaSetDevice(dev) != cudaSuccess)
		return KVT_EIO;
	if (!ln->ready) {
		if (cudaStreamCreateWithFlags(&ln->stream, cudaStreamNonBlocking) != cudaSuccess)
			return KVT_EIO;
		if (cudaStreamCreateWithFlags(&ln->xfer, cudaStreamNonBlocking) != cudaSuccess) {
			cudaStreamDestroy(ln->stream);
			return KVT_EIO;
		}
		if (cudaEventCreateWithFlags(&ln->ev[0], cudaEventDisableTiming) != cudaSuccess ||
		    cudaEventCreateWithFlags(&ln->ev[1], cudaEventDisableTiming) != cudaSuccess ||
		    cudaMalloc((void **)&ln->dflag, sizeof(uint32_t)) != cudaSuccess) {
			cudaStreamDestroy(ln->stream);
			cudaStreamDestroy(ln->xfer);
			return KVT_ENOMEM;
		}
		ln->ready = true;
	}
	if (ln->cap < need) {
		size_t cap = ln->cap ? ln->cap : (4u << 20);
		while (cap < need)
			cap *= 2;
		if (ln->stage)
			cudaFree(ln->stage);
		ln->stage = NULL;
		ln->cap = 0;
		if (cudaMalloc((void **)&ln->stage, cap) != cudaSuccess) {
			ln->stage = NULL;
			return KVT_ENOMEM;
		}
		ln->cap = cap;
	}
	*out = ln;
	return 0;
}

static size_t align_up(size_t v, size_t a)
{
	return (v + a - 1) & ~(a - 1);
}

struct cuda_backend {
	void *arena;
	bool registered;
	int pool_dev; /* the T0 pool's device */
};

/* Copy [off, off + n) of the block between its host extents and dev (the staging
 * block), on stream st. */
static cudaError_t copy_range(const struct gpu_copy *cp, uint8_t *dev, uint64_t off, uint64_t n,
			      bool to_device, cudaStream_t st)
{
	enum cudaMemcpyKind kind = !to_device    ? cudaMemcpyDeviceToHost
				   : cp->src_pool ? cudaMemcpyDefault /* pool: device to device */
						  : cudaMemcpyHostToDevice;
	uint64_t at = 0;
	for (size_t i = 0; i < cp->next && n; i++) {
		uint64_t len = cp->ext[i].len;
		if (at + len > off) {
			uint64_t skip = off > at ? off - at : 0;
			uint64_t take = len - skip < n ? len - skip : n;
			cudaError_t e = to_device
						? cudaMemcpyAsync(dev + off, cp->ext[i].ptr + skip, take, kind, st)
						: cudaMemcpyAsync(cp->ext[i].ptr + skip, dev + off, take, kind, st);
			if (e != cudaSuccess)
				return e;
			off += take;
			n -= take;
		}
		at += len;
	}
	return cudaSuccess;
}

/*
 * Staging: [block bytes][kvl_item x chunks][page ids]. The block's layers are
 * contiguous in the block format, so a block moves a layer at a time: for a GET,
 * layer l's bytes go host -> device on the xfer stream while layer l-1 is being
 * scattered on the kernel stream (an event per layer hands each over); for a PUT,
 * layer l is gathered while layer l-1 goes device -> host. Copy engine and SMs
 * work at once, and a block's first pages land before its last bytes have crossed
 * PCIe. Two events alternate: a stream's wait takes the event's state when it is
 * queued, so re-recording one two layers later is safe. A scatter straight from
 * the T0 pool (one extent, same device) needs no copy: one launch for the block.
 */
static int cuda_copy(struct gpu_backend *b, void *priv, const struct gpu_copy *cp, bool gather)
{
	struct cuda_region *r = priv;
	struct cuda_backend *cb = b->priv;
	struct cuda_lane *ln;
	bool direct = !gather && cp->src_pool && cp->next == 1 && cp->ext[0].len >= cp->blen &&
		      r->dev == cb->pool_dev;
	uint32_t chunks = direct ? 1 : cp->layout->layers;
	uint64_t chunk_bytes = cp->blen / chunks;
	if (chunks < 1 || chunks > KVL_MAX_LAYERS || chunk_bytes * chunks != cp->blen)
		return KVT_EIO; /* the dispatcher checked the length against the layout */
	size_t item_off = direct ? 0 : align_up((size_t)cp->blen, 256);
	size_t pages_off = align_up(item_off + chunks * sizeof(struct kvl_item), 16);
	size_t need = pages_off + (size_t)cp->npages * sizeof(uint32_t);
	int rc = lane_get(r->dev, need, &ln);
	if (rc)
		return rc;
	uint8_t *blk = direct ? cp->ext[0].ptr : ln->stage;
	const uint32_t *dpages = (const uint32_t *)(ln->stage + pages_off);
	struct kvl_item items[KVL_MAX_LAYERS];
	for (uint32_t c = 0; c < chunks; c++)
		items[c] = (struct kvl_item){ .block = blk + c * chunk_bytes, .pages = dpages,
					      .first_token = cp->first_slot,
					      .ntokens = cp->ntokens };
	/* One layer of the layout, for the per-layer launches. */
	struct kvl_layout one = *cp->layout;
	if (!direct)
		one.layers = 1;
	const struct kvl_item *ditems = (const struct kvl_item *)(ln->stage + item_off);

	cudaError_t e = cudaMemsetAsync(ln->dflag, 0, sizeof(uint32_t), ln->stream);
	if (e == cudaSuccess)
		e = cudaMemcpyAsync(ln->stage + item_off, items, chunks * sizeof(struct kvl_item),
				    cudaMemcpyHostToDevice, ln->stream);
	if (e == cudaSuccess)
		e = cudaMemcpyAsync(ln->stage + pages_off, cp->pages,
				    (size_t)cp->npages * sizeof(uint32_t), cudaMemcpyHostToDevice,
				    ln->stream);
	for (uint32_t c = 0; e == cudaSuccess && c < chunks; c++) {
		void *const *bases = r->dlayer_base + (direct ? 0 : c);
		cudaEvent_t ev = ln->ev[c & 1];
		if (gather) {
			int k = kvl_gather_cuda(&one, bases, &ditems[c], 1, cp->ntokens, ln->dflag,
						ln->stream);
			e = (cudaError_t)k;
			if (e == cudaSuccess)
				e = cudaEventRecord(ev, ln->stream);
			if (e == cudaSuccess)
				e = cudaStreamWaitEvent(ln->xfer, ev, 0);
			if (e == cudaSuccess)
				e = copy_range(cp, blk, c * chunk_bytes, chunk_bytes, false, ln->xfer);
		} else {
			if (!direct) {
				e = copy_range(cp, blk, c * chunk_bytes, chunk_bytes, true, ln->xfer);
				if (e == cudaSuccess)
					e = cudaEventRecord(ev, ln->xfer);
				if (e == cudaSuccess)
					e = cudaStreamWaitEvent(ln->stream, ev, 0);
			}
			if (e == cudaSuccess)
				e = (cudaError_t)kvl_scatter_cuda(&one, bases, &ditems[c], 1,
								  cp->ntokens, ln->dflag, ln->stream);
		}
	}
	uint32_t bad = 0;
	if (e == cudaSuccess)
		e = cudaMemcpyAsync(&bad, ln->dflag, sizeof(bad), cudaMemcpyDeviceToHost, ln->stream);
	/* Always wait for both streams, even after an error: nothing queued may
	 * outlive this call (the host extents and the staging are reused). */
	cudaError_t se = cudaStreamSynchronize(ln->stream);
	cudaError_t sx = cudaStreamSynchronize(ln->xfer);
	if (e == cudaSuccess)
		e = se != cudaSuccess ? se : sx;
	if (e != cudaSuccess)
		return cuda_err(e);
	return bad ? KVT_ERANGE : 0;
}

static int cuda_put(struct gpu_backend *b, void *priv, const struct gpu_copy *cp)
{
	return cuda_copy(b, priv, cp, true);
}

static int cuda_get(struct gpu_backend *b, void *priv, const struct gpu_copy *cp)
{
	return cuda_copy(b, priv, cp, false);
}

/* ---- the T0 pool: device memory on pool_dev ------------------------------------- */

static int cuda_pool_alloc(void *arg, uint64_t bytes, void **base)
{
	struct gpu_backend *b = arg;
	struct cuda_backend *cb = b->priv;
	if (cudaSetDevice(cb->pool_dev) != cudaSuccess)
		return -EIO;
	cudaError_t e = cudaMalloc(base, bytes);
	if (e != cudaSuccess) {
		cudaGetLastError();
		*base = NULL;
		return e == cudaErrorMemoryAllocation ? -ENOMEM : -EIO;
	}
	return 0;
}

static void cuda_pool_free(void *arg, void *base, uint64_t bytes)
{
	struct gpu_backend *b = arg;
	struct cuda_backend *cb = b->priv;
	(void)bytes;
	cudaSetDevice(cb->pool_dev);
	cudaFree(base);
}

/* Host block -> pool, on the calling worker's stream for the pool's device. */
static int cuda_pool_copy(void *arg, void *dst, const void *src, uint64_t len)
{
	struct gpu_backend *b = arg;
	struct cuda_backend *cb = b->priv;
	struct cuda_lane *ln;
	int rc = lane_get(cb->pool_dev, 0, &ln);
	if (rc)
		return rc == KVT_ENOMEM ? -ENOMEM : -EIO;
	cudaError_t e = cudaMemcpyAsync(dst, src, len, cudaMemcpyHostToDevice, ln->stream);
	cudaError_t se = cudaStreamSynchronize(ln->stream);
	if (e == cudaSuccess)
		e = se;
	if (e != cudaSuccess) {
		cudaGetLastError();
		return e == cudaErrorMemoryAllocation ? -ENOMEM : -EIO;
	}
	return 0;
}

static const struct t0_pool_ops cuda_pool_ops = {
	.alloc = cuda_pool_alloc,
	.free = cuda_pool_free,
	.copy = cuda_pool_copy,
};

static void cuda_destroy(struct gpu_backend *b)
{
	struct cuda_backend *cb = b->priv;
	if (cb && cb->registered)
		cudaHostUnregister(cb->arena);
	free(cb);
	free(b);
}

static const struct gpu_ops cuda_ops = {
	.open_region = cuda_open,
	.close_region = cuda_close,
	.put = cuda_put,
	.get = cuda_get,
	.destroy = cuda_destroy,
};

static void uuid_format(const unsigned char *u, char *out, size_t cap)
{
	snprintf(out, cap,
		 "GPU-%02x%02x%02x%02x-%02x%02x-%02x%02x-%02x%02x-%02x%02x%02x%02x%02x%02x", u[0],
		 u[1], u[2], u[3], u[4], u[5], u[6], u[7], u[8], u[9], u[10], u[11], u[12], u[13],
		 u[14], u[15]);
}

void gpu_cuda_pin_host(struct gpu_backend *b, void *base, size_t len)
{
	if (b->ops != &cuda_ops)
		return;
	struct cuda_backend *cb = b->priv;
	cudaError_t e = cudaHostRegister(base, len, cudaHostRegisterPortable);
	if (e == cudaSuccess) {
		cb->arena = base;
		cb->registered = true;
		snprintf(b->pinned, sizeof(b->pinned),
			 "host tier pinned for DMA (cudaHostRegister, %zu MiB)", len >> 20);
	} else {
		cudaGetLastError();
		snprintf(b->pinned, sizeof(b->pinned),
			 "host tier not pinned (cudaHostRegister: %s); copies from and to it "
			 "are staged by the CUDA driver",
			 cudaGetErrorString(e));
	}
}

int gpu_cuda_create(struct gpu_backend **out, char *why, size_t whycap)
{
	int n = 0;
	cudaError_t e = cudaGetDeviceCount(&n);
	if (e != cudaSuccess || n == 0) {
		snprintf(why, whycap, "no device: %s",
			 e != cudaSuccess ? cudaGetErrorString(e) : "cudaGetDeviceCount found none");
		return -ENODEV;
	}
	struct gpu_backend *b = calloc(1, sizeof(*b));
	struct cuda_backend *cb = calloc(1, sizeof(*cb));
	if (!b || !cb) {
		free(b);
		free(cb);
		return -ENOMEM;
	}
	b->ops = &cuda_ops;
	b->kind = KVT_GPU_KIND_CUDA_IPC;
	b->priv = cb;
	int rtv = 0;
	cudaRuntimeGetVersion(&rtv);
	snprintf(b->name, sizeof(b->name), "cuda (runtime %d.%d, CUDA IPC)", rtv / 1000,
		 (rtv % 1000) / 10);
	size_t pos = 0;
	for (int d = 0; d < n && pos < sizeof(b->device); d++) {
		struct cudaDeviceProp p;
		char u[48];
		if (cudaGetDeviceProperties(&p, d) != cudaSuccess)
			continue;
		uuid_format((const unsigned char *)p.uuid.bytes, u, sizeof(u));
		int w = snprintf(b->device + pos, sizeof(b->device) - pos, "%s%d: %s %s",
				 pos ? "; " : "", d, p.name, u);
		if (w < 0)
			break;
		pos += (size_t)w;
	}
	snprintf(b->pinned, sizeof(b->pinned), "host tier not pinned");
	cb->pool_dev = 0;
	b->pool = &cuda_pool_ops;
	{
		struct cudaDeviceProp p;
		if (cudaGetDeviceProperties(&p, 0) == cudaSuccess)
			snprintf(b->pool_memory, sizeof(b->pool_memory), "HBM (device 0: %.100s)",
				 p.name);
		else
			snprintf(b->pool_memory, sizeof(b->pool_memory), "HBM (device 0)");
	}
	*out = b;
	return 0;
}

#else /* no CUDA in this build */

void gpu_cuda_pin_host(struct gpu_backend *b, void *base, size_t len)
{
	(void)b;
	(void)base;
	(void)len;
}

int gpu_cuda_create(struct gpu_backend **out, char *why, size_t whycap)
{
	(void)out;
	snprintf(why, whycap, "no CUDA in this build");
	return -ENOSYS;
}

#endif
