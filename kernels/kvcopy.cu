/*
 * kvcopy.cu - CUDA gather (engine pages -> packed blocks) and scatter (packed
 * blocks -> engine pages), one kernel launch per batch of items. The semantics are
 * those of the CPU references in kvcopy_ref.c, which the GPU tests compare against
 * byte for byte; kvcopy.h documents the entry points.
 *
 * Work split. The launch covers every (item, layer, plane, chunk of tokens) as one
 * "unit"; a CTA takes units in a grid-stride loop, so any batch size and any
 * ntokens fit in one launch. Units of one (item, layer, plane) are consecutive, so
 * neighbouring CTAs write neighbouring block bytes.
 *
 * Two copy paths, chosen on the host from the layout:
 *
 *  - segments (dim_stride == elem_size): each head of a token row is a contiguous
 *    run of head_dim * elem_size bytes, and the whole row is one run when
 *    head_stride == head_dim * elem_size (vLLM, SGLang, TensorRT-LLM, llama.cpp's
 *    K). A group of threads (a power of two, up to the whole CTA) copies one run,
 *    consecutive threads on consecutive words, so a warp reads and writes
 *    consecutive bytes. The word is 16 bytes (uint4) when the layer base, the
 *    block and every stride that varies within the unit are 16-byte aligned, else
 *    8, 4, 2 or 1 bytes: the alignment is decided per unit, in the kernel,
 *    because the base and block pointers live in device memory. Each thread
 *    issues four rows' loads before their stores to keep memory busy.
 *
 *  - tiles (anything else, e.g. llama.cpp's transposed V, where consecutive
 *    tokens of one element are adjacent and the elements of a row are n_ctx
 *    apart): 32 tokens x 32 elements go through shared memory, so the engine side
 *    is read or written along whichever of its axes is closer to contiguous and
 *    the block side along its rows. Elements move as whole elem_size words when
 *    aligned, else byte by byte.
 *
 * A token whose page id is >= num_pages is skipped and flagged (kvcopy.h).
 */
#include <cuda_runtime.h>
#include <stdint.h>

extern "C" {
#include "kvcopy.h"
}

namespace {

constexpr unsigned kThreads = 256;
constexpr unsigned kUnroll = 4;              /* rows in flight per thread, segment path */
constexpr uint32_t kSegUnitBytes = 32768;    /* block bytes per unit, segment path */
constexpr uint32_t kTile = 32;               /* tile side, tiled path */
constexpr uint32_t kTileUnitTokens = 2 * kTile;
constexpr uint32_t kMaxGrid = 0x7fffffff;

/* Everything a kernel needs, passed by value (under 200 bytes of parameters). */
struct Params {
	void *const *layer_base; /* device array [layers] */
	const kvl_item *items;   /* device array [n] */
	uint32_t *bad_page;      /* device flag or NULL */

	int64_t plane_stride, page_stride, token_stride, head_stride, dim_stride;
	uint64_t num_pages;
	uint32_t planes, page_tokens, head_dim, elem_size;
	uint32_t row_bytes, row_elems;

	uint32_t lp;           /* layers * planes */
	uint32_t chunk_tokens; /* tokens per unit */
	uint64_t chunks;       /* units per (item, layer, plane) */
	uint64_t units;        /* n * lp * chunks */

	/* Segment path: nseg runs of seg_bytes per token row, seg_stride apart in the
	 * engine, adjacent in the block. */
	uint32_t seg_bytes, nseg;
	int64_t seg_stride;
	/* Tiled path: the engine side's fast axis is the token (not the element). */
	bool token_fast;
	/* OR of the byte steps between the unit's engine words and block words other
	 * than the two base pointers: its low bits bound the usable alignment. */
	uint64_t step_bits;
};

/* Engine address of token t of the item (block-relative) in the plane at base, or
 * NULL (and the flag set) when its page id is out of range. */
__device__ __forceinline__ char *engine_row(const Params &P, const kvl_item &it, char *base,
					    uint64_t t)
{
	uint64_t pos = (uint64_t)it.first_token + t;
	/* 64-bit division is a long subroutine on the GPU; positions fit 32 bits */
	uint64_t idx = pos <= UINT32_MAX ? (uint32_t)pos / P.page_tokens : pos / P.page_tokens;
	uint64_t g = it.pages[idx];
	uint64_t s = pos - idx * P.page_tokens;

	if (g >= P.num_pages) {
		if (P.bad_page)
			*P.bad_page = 1;
		return nullptr;
	}
	return base + (int64_t)g * P.page_stride + (int64_t)s * P.token_stride;
}

/* Segment path for tokens [t_begin, t_end) of one unit, in words of type V. */
template <typename V, bool kGather>
__device__ void seg_copy(const Params &P, const kvl_item &it, char *base, char *blk,
			 uint64_t t_begin, uint64_t t_end)
{
	const uint32_t vpr = P.seg_bytes / (uint32_t)sizeof(V); /* words per run */
	const uint32_t lanes =
		vpr >= kThreads ? kThreads : vpr <= 1 ? 1u : 1u << (32 - __clz(vpr - 1));
	const uint32_t groups = kThreads / lanes;
	const uint32_t group = threadIdx.x / lanes, lane = threadIdx.x % lanes;
	/* At most chunk_tokens * nseg <= max(kSegUnitBytes, row_bytes) runs. */
	const uint32_t runs = (uint32_t)(t_end - t_begin) * P.nseg;

	for (uint64_t r0 = group; r0 < runs; r0 += (uint64_t)kUnroll * groups) {
		const V *src[kUnroll];
		V *dst[kUnroll];

#pragma unroll
		for (unsigned u = 0; u < kUnroll; u++) {
			uint64_t r = r0 + (uint64_t)u * groups;
			char *e = nullptr, *b = nullptr;

			if (r < runs) {
				uint32_t t = (uint32_t)r / P.nseg, h = (uint32_t)r % P.nseg;
				char *row = engine_row(P, it, base, t_begin + t);

				if (row) {
					e = row + (int64_t)h * P.seg_stride;
					b = blk + (t_begin + t) * P.row_bytes + (uint64_t)h * P.seg_bytes;
				}
			}
			src[u] = (const V *)(kGather ? e : b);
			dst[u] = (V *)(kGather ? b : e);
		}
		for (uint64_t k = lane; k < vpr; k += lanes) {
			V v[kUnroll];
#pragma unroll
			for (unsigned u = 0; u < kUnroll; u++)
				if (src[u])
					v[u] = src[u][k];
#pragma unroll
			for (unsigned u = 0; u < kUnroll; u++)
				if (src[u])
					dst[u][k] = v[u];
		}
	}
}

/* The unit's coordinates, or false when there is nothing to copy. */
struct Unit {
	kvl_item it;
	char *base; /* engine plane base */
	char *blk;  /* this layer and plane's part of the block */
	uint64_t chunk;
};

__device__ __forceinline__ bool unit_decode(const Params &P, uint64_t u, Unit &U)
{
	uint64_t q = u / P.chunks;
	uint32_t lp = (uint32_t)(q % P.lp);
	uint64_t i = q / P.lp;
	char *layer;

	U.chunk = u - q * P.chunks;
	U.it = P.items[i];
	if (U.it.ntokens == 0 || !U.it.block || !U.it.pages)
		return false;
	layer = (char *)P.layer_base[lp / P.planes];
	if (!layer)
		return false;
	U.base = layer + (int64_t)(lp % P.planes) * P.plane_stride;
	U.blk = (char *)U.it.block + (uint64_t)lp * U.it.ntokens * P.row_bytes;
	return U.chunk * P.chunk_tokens < U.it.ntokens;
}

template <bool kGather>
__global__ void __launch_bounds__(kThreads) seg_kernel(const Params P)
{
	for (uint64_t u = blockIdx.x; u < P.units; u += gridDim.x) {
		Unit U;

		if (!unit_decode(P, u, U))
			continue;
		uint64_t bits = P.step_bits | (uint64_t)(uintptr_t)U.base | (uint64_t)(uintptr_t)U.blk;
		uint64_t step = P.chunks * P.chunk_tokens;
		for (uint64_t t0 = U.chunk * P.chunk_tokens; t0 < U.it.ntokens; t0 += step) {
			uint64_t t1 = t0 + P.chunk_tokens;

			if (t1 > U.it.ntokens)
				t1 = U.it.ntokens;
			if ((bits & 15) == 0)
				seg_copy<uint4, kGather>(P, U.it, U.base, U.blk, t0, t1);
			else if ((bits & 7) == 0)
				seg_copy<uint2, kGather>(P, U.it, U.base, U.blk, t0, t1);
			else if ((bits & 3) == 0)
				seg_copy<uint32_t, kGather>(P, U.it, U.base, U.blk, t0, t1);
			else if ((bits & 1) == 0)
				seg_copy<uint16_t, kGather>(P, U.it, U.base, U.blk, t0, t1);
			else
				seg_copy<uint8_t, kGather>(P, U.it, U.base, U.blk, t0, t1);
		}
	}
}

/* An element moved byte by byte, for engines whose elements are not aligned. */
template <int N> struct Bytes {
	unsigned char b[N];
};

struct TileSmem {
	/* [kTile][kTile + 1] words of up to 4 bytes; the +1 keeps a column's words in
	 * different banks. */
	alignas(16) unsigned char tile[kTile * (kTile + 1) * 4];
	char *row[kTile];     /* engine address of each token of the tile, or NULL */
	int64_t eoff[kTile];  /* engine offset of each element of the tile */
};

/* Tiled path for tokens [t_begin, t_end) of one unit, elements of type T. Every
 * thread of the CTA must call it (it synchronises). */
template <typename T, bool kGather>
__device__ void tile_copy(const Params &P, const kvl_item &it, char *base, char *blk,
			  uint64_t t_begin, uint64_t t_end, TileSmem &sm)
{
	T(*tile)[kTile + 1] = reinterpret_cast<T(*)[kTile + 1]>(sm.tile);
	const uint32_t tx = threadIdx.x % kTile, ty = threadIdx.x / kTile;
	const uint32_t ty_step = kThreads / kTile;

	for (uint64_t tt = t_begin; tt < t_end; tt += kTile) {
		const uint32_t nt = (uint32_t)min((uint64_t)kTile, t_end - tt);

		for (uint32_t e0 = 0; e0 < P.row_elems; e0 += kTile) {
			const uint32_t ne = min(kTile, P.row_elems - e0);

			__syncthreads(); /* the previous round is done with tile, row, eoff */
			if (threadIdx.x < kTile) {
				if (e0 == 0)
					sm.row[tx] = tx < nt ? engine_row(P, it, base, tt + tx) : nullptr;
			} else if (threadIdx.x < 2 * kTile) {
				uint32_t e = e0 + tx;
				uint32_t h = e / P.head_dim, d = e - h * P.head_dim;

				sm.eoff[tx] = (int64_t)h * P.head_stride + (int64_t)d * P.dim_stride;
			}
			__syncthreads();

			if (kGather) {
				if (P.token_fast) {
					if (tx < nt && sm.row[tx])
						for (uint32_t j = ty; j < ne; j += ty_step)
							tile[tx][j] = *(const T *)(sm.row[tx] + sm.eoff[j]);
				} else if (tx < ne) {
					for (uint32_t j = ty; j < nt; j += ty_step)
						if (sm.row[j])
							tile[j][tx] = *(const T *)(sm.row[j] + sm.eoff[tx]);
				}
				__syncthreads();
				if (tx < ne)
					for (uint32_t j = ty; j < nt; j += ty_step)
						if (sm.row[j])
							((T *)(blk + (tt + j) * P.row_bytes))[e0 + tx] = tile[j][tx];
			} else {
				if (tx < ne)
					for (uint32_t j = ty; j < nt; j += ty_step)
						if (sm.row[j])
							tile[j][tx] = ((const T *)(blk + (tt + j) * P.row_bytes))[e0 + tx];
				__syncthreads();
				if (P.token_fast) {
					if (tx < nt && sm.row[tx])
						for (uint32_t j = ty; j < ne; j += ty_step)
							*(T *)(sm.row[tx] + sm.eoff[j]) = tile[tx][j];
				} else if (tx < ne) {
					for (uint32_t j = ty; j < nt; j += ty_step)
						if (sm.row[j])
							*(T *)(sm.row[j] + sm.eoff[tx]) = tile[j][tx];
				}
			}
		}
	}
}

template <bool kGather>
__global__ void __launch_bounds__(kThreads) tile_kernel(const Params P)
{
	__shared__ TileSmem sm;

	for (uint64_t u = blockIdx.x; u < P.units; u += gridDim.x) {
		Unit U;

		/* Uniform across the CTA, so no thread skips a barrier the others reach. */
		if (!unit_decode(P, u, U))
			continue;
		uint64_t bits = P.step_bits | (uint64_t)(uintptr_t)U.base | (uint64_t)(uintptr_t)U.blk;
		bool aligned = (bits & (P.elem_size - 1)) == 0;
		uint64_t step = P.chunks * P.chunk_tokens;
		for (uint64_t t0 = U.chunk * P.chunk_tokens; t0 < U.it.ntokens; t0 += step) {
			uint64_t t1 = t0 + P.chunk_tokens;

			if (t1 > U.it.ntokens)
				t1 = U.it.ntokens;
			switch (P.elem_size) {
			case 1:
				tile_copy<uint8_t, kGather>(P, U.it, U.base, U.blk, t0, t1, sm);
				break;
			case 2:
				if (aligned)
					tile_copy<uint16_t, kGather>(P, U.it, U.base, U.blk, t0, t1, sm);
				else
					tile_copy<Bytes<2>, kGather>(P, U.it, U.base, U.blk, t0, t1, sm);
				break;
			default:
				if (aligned)
					tile_copy<uint32_t, kGather>(P, U.it, U.base, U.blk, t0, t1, sm);
				else
					tile_copy<Bytes<4>, kGather>(P, U.it, U.base, U.blk, t0, t1, sm);
				break;
			}
		}
	}
}

uint64_t abs64(int64_t x)
{
	return x < 0 ? (uint64_t)0 - (uint64_t)x : (uint64_t)x;
}

/* Fill P from the host-side arguments; false when they are unusable. */
bool params_init(Params &P, const kvl_layout *l, void *const *layer_base,
		 const kvl_item *items, size_t n, uint32_t max_ntokens, uint32_t *bad_page)
{
	/* No region is known here: this checks the fields, the row's nesting and that
	 * no offset overflows or goes negative. */
	if (!l || !layer_base || !items || kvl_layout_check(l, UINT64_MAX) != 0)
		return false;

	P = Params{};
	P.layer_base = layer_base;
	P.items = items;
	P.bad_page = bad_page;
	P.plane_stride = l->plane_stride;
	P.page_stride = l->page_stride;
	P.token_stride = l->token_stride;
	P.head_stride = l->head_stride;
	P.dim_stride = l->dim_stride;
	P.num_pages = l->num_pages;
	P.planes = l->planes;
	P.page_tokens = l->page_tokens;
	P.head_dim = l->head_dim;
	P.elem_size = l->elem_size;
	P.row_elems = l->heads * l->head_dim;    /* kvl_layout_check: row_bytes fits */
	P.row_bytes = P.row_elems * l->elem_size;
	P.lp = l->layers * l->planes;

	const uint32_t head_bytes = l->head_dim * l->elem_size;
	const bool head_runs = l->head_dim == 1 || l->dim_stride == (int64_t)l->elem_size;
	uint64_t bits = 0;
	if (l->num_pages > 1)
		bits |= (uint64_t)l->page_stride;
	if (l->page_tokens > 1)
		bits |= (uint64_t)l->token_stride;

	if (head_runs) {
		if (l->heads == 1 || l->head_stride == (int64_t)head_bytes) {
			P.seg_bytes = P.row_bytes;
			P.nseg = 1;
		} else {
			P.seg_bytes = head_bytes;
			P.nseg = l->heads;
			P.seg_stride = l->head_stride;
			bits |= (uint64_t)l->head_stride;
		}
		bits |= P.seg_bytes; /* runs follow each other in the block */
		/* Enough tokens that a unit moves about kSegUnitBytes: then a unit has
		 * at most max(kSegUnitBytes, row_bytes) / seg_bytes runs, which fits
		 * 32 bits. */
		P.chunk_tokens = P.row_bytes >= kSegUnitBytes ? 1 : kSegUnitBytes / P.row_bytes;
	} else {
		uint64_t elem_step = l->head_dim > 1 ? abs64(l->dim_stride) : abs64(l->head_stride);

		if (l->heads > 1)
			bits |= (uint64_t)l->head_stride;
		if (l->head_dim > 1)
			bits |= (uint64_t)l->dim_stride;
		P.token_fast = l->page_tokens > 1 && abs64(l->token_stride) < elem_step;
		P.chunk_tokens = kTileUnitTokens;
	}
	P.step_bits = bits;

	if (max_ntokens == 0)
		max_ntokens = 1;
	P.chunks = (max_ntokens + (uint64_t)P.chunk_tokens - 1) / P.chunk_tokens;
	return !__builtin_mul_overflow((uint64_t)n, (uint64_t)P.lp * P.chunks, &P.units);
}

int launch(bool gather, const kvl_layout *l, void *const *layer_base, const kvl_item *items,
	   size_t n, uint32_t max_ntokens, uint32_t *bad_page, void *stream)
{
	Params P;

	if (n == 0)
		return cudaSuccess;
	if (!params_init(P, l, layer_base, items, n, max_ntokens, bad_page))
		return cudaErrorInvalidValue;

	dim3 grid((unsigned)(P.units < kMaxGrid ? P.units : kMaxGrid));
	cudaStream_t s = (cudaStream_t)stream;
	if (P.nseg) {
		if (gather)
			seg_kernel<true><<<grid, kThreads, 0, s>>>(P);
		else
			seg_kernel<false><<<grid, kThreads, 0, s>>>(P);
	} else {
		if (gather)
			tile_kernel<true><<<grid, kThreads, 0, s>>>(P);
		else
			tile_kernel<false><<<grid, kThreads, 0, s>>>(P);
	}
	return (int)cudaGetLastError();
}

} /* namespace */

extern "C" int kvl_gather_cuda(const struct kvl_layout *l, void *const *layer_base,
			       const struct kvl_item *items, size_t n, uint32_t max_ntokens,
			       uint32_t *bad_page, void *stream)
{
	return launch(true, l, layer_base, items, n, max_ntokens, bad_page, stream);
}

extern "C" int kvl_scatter_cuda(const struct kvl_layout *l, void *const *layer_base,
				const struct kvl_item *items, size_t n, uint32_t max_ntokens,
				uint32_t *bad_page, void *stream)
{
	return launch(false, l, layer_base, items, n, max_ntokens, bad_page, stream);
}
