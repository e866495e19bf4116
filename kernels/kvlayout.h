/*
 * kvlayout.h - how an inference engine lays out its paged KV cache, and the
 * engine-independent block format kvtier stores. Plain C: the CUDA kernels
 * (kvcopy.cu), their CPU references (kvcopy_ref.c) and the daemon all include it,
 * and no C++ type crosses it.
 *
 * Engine side. For layer l, plane p (0 = K, 1 = V; one plane for MLA-style caches),
 * page g, token slot s within the page, head h and element d of the head, the element
 * lives at
 *
 *     layer_base[l] + p*plane_stride + g*page_stride + s*token_stride
 *                   + h*head_stride + d*dim_stride            (byte offsets)
 *
 * This covers vLLM's per-layer [2, num_blocks, block_size, heads, head_dim] tensors
 * (and the [num_blocks, 2, ...] variant: swap the strides), SGLang's and TensorRT-LLM's
 * page pools, and llama.cpp's per-layer K [n_ctx, heads*head_dim] (one page of n_ctx
 * tokens) and transposed V (token_stride = elem_size, dim_stride = n_ctx*elem_size,
 * kept in its own layer_base as a second "layer" pair or with plane_stride).
 * Strides are signed 64-bit so a negative or zero stride is representable; the
 * validator (kvl_layout_check) refuses layouts whose elements overlap within a
 * token row or that do not fit inside the region size given.
 *
 * Block side. A block holds ntokens consecutive tokens of one sequence, as
 *
 *     [layer][plane][token][head][dim]      elements, densely packed
 *
 * so block bytes = layers * planes * ntokens * heads * head_dim * elem_size. Token i
 * of the block (counting from the sequence position `first_token`) lives in engine
 * page pages[(first_token + i) / page_tokens] at slot (first_token + i) % page_tokens.
 */
#ifndef KVT_KERNELS_KVLAYOUT_H
#define KVT_KERNELS_KVLAYOUT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define KVL_MAX_LAYERS 256

struct kvl_layout {
	uint32_t layers;      /* 1..KVL_MAX_LAYERS */
	uint32_t planes;      /* 1 or 2 */
	uint32_t heads;       /* KV heads, >= 1 */
	uint32_t head_dim;    /* elements per head, >= 1 */
	uint32_t elem_size;   /* bytes per element: 1, 2 or 4 */
	uint32_t page_tokens; /* token slots per engine page, >= 1 */
	uint64_t num_pages;   /* pages per layer: page ids must be < num_pages */
	int64_t plane_stride; /* byte strides, see above */
	int64_t page_stride;
	int64_t token_stride;
	int64_t head_stride;
	int64_t dim_stride;
};

/* One block <-> pages transfer. */
struct kvl_item {
	void *block;            /* the packed block (host or device memory, per the call) */
	const uint32_t *pages;  /* page table of the sequence (same memory kind as block) */
	uint32_t first_token;   /* sequence position of the block's first token */
	uint32_t ntokens;       /* tokens in this block, >= 1 */
};

#endif /* KVT_KERNELS_KVLAYOUT_H */
