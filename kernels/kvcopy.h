/*
 * kvcopy.h - moving KV bytes between an engine's paged cache (kvlayout.h) and
 * kvtier's packed blocks: the layout validator, the CPU reference gather/scatter
 * (kvcopy_ref.c, always built) and the CUDA gather/scatter (kvcopy.cu, built when
 * the Makefile finds nvcc; KVT_HAVE_CUDA is then defined to 1).
 *
 * Plain C for every caller: the CUDA entry points take the stream as `void *`
 * (a cudaStream_t) and return a cudaError_t as an int, so including this header
 * needs neither nvcc nor the CUDA headers. C++ (kvcopy.cu) includes it inside
 * extern "C".
 */
#ifndef KVT_KERNELS_KVCOPY_H
#define KVT_KERNELS_KVCOPY_H

#include <stddef.h>
#include <stdint.h>

#include "kvlayout.h"

/*
 * Validate a layout against the bytes each layer's region holds (the memory that
 * layer_base[l] points to, e.g. one CUDA IPC allocation per layer).
 *
 * Checks: layers in 1..KVL_MAX_LAYERS, planes 1 or 2, heads, head_dim, page_tokens
 * and num_pages >= 1, elem_size 1, 2 or 4 (-EINVAL otherwise); the elements of one
 * token row (heads x head_dim, elem_size bytes each) nest without overlapping, that
 * is, ordered by stride, each stride is at least the span of the smaller ones
 * (-EINVAL otherwise: so a row that interleaves without overlapping is refused too,
 * and no engine lays rows out that way); a token row is at most UINT32_MAX bytes
 * and every byte of every element of every page id < num_pages lies in
 * [0, region_bytes_per_layer) from layer_base (-ERANGE otherwise, overflow
 * included). Strides of dimensions with a single index (planes = 1, num_pages = 1,
 * page_tokens = 1, heads = 1, head_dim = 1) are never used and not checked.
 * Overlap between different tokens, pages or planes is not checked.
 *
 * Pure; l is only read. Returns 0, -EINVAL (also for l == NULL) or -ERANGE.
 */
int kvl_layout_check(const struct kvl_layout *l, uint64_t region_bytes_per_layer);

/*
 * Bytes of a packed block of ntokens tokens:
 * layers * planes * ntokens * heads * head_dim * elem_size.
 * Returns 0 when l is NULL or the product does not fit in a size_t.
 */
size_t kvl_block_bytes(const struct kvl_layout *l, uint32_t ntokens);

/*
 * CPU reference copies, engine pages -> packed blocks (gather) and packed blocks ->
 * engine pages (scatter), for items[0..n). Everything is host memory:
 * layer_base[0..layers) point at each layer's region, items[i].block at
 * kvl_block_bytes(l, items[i].ntokens) bytes, items[i].pages at least
 * ceil((first_token + ntokens) / page_tokens) page ids.
 *
 * The layout's fields are sanity-checked (as kvl_layout_check does, without the
 * region and overlap checks: the caller validated the layout once against its
 * regions). Every page id a token uses is checked against num_pages before
 * anything is copied. Items are copied in order, so within a scatter a later item
 * wins where two write the same engine bytes.
 *
 * Returns 0; -EINVAL for a NULL or malformed argument (l, layer_base or one of
 * its entries, items when n > 0, an item's block or pages, ntokens == 0); -ERANGE
 * if a page id is >= num_pages. Nothing is written unless 0 is returned.
 * Thread-safe as far as the memory it writes is not shared.
 */
int kvl_gather_ref(const struct kvl_layout *l, void *const layer_base[],
		   const struct kvl_item *items, size_t n);
int kvl_scatter_ref(const struct kvl_layout *l, void *const layer_base[],
		    const struct kvl_item *items, size_t n);

/*
 * CUDA copies, same semantics as the references, as ONE kernel launch per call,
 * queued on `stream` (a cudaStream_t; NULL is the legacy default stream) and
 * asynchronous: the copy has happened once the stream reaches this point.
 *
 * Memory: l is a host pointer, read during the call only. layer_base is a DEVICE
 * array of l->layers device pointers; items is a DEVICE array of n kvl_item whose
 * block and pages are device pointers (or any memory the device can address:
 * managed or mapped host memory works, slowly). All of it must stay valid and
 * unchanged until the kernel has run. The layout must have passed
 * kvl_layout_check against the regions layer_base points to (the call repeats
 * the checks that need no region size).
 *
 * max_ntokens is the largest ntokens among the items, or an estimate: it sizes
 * the grid (how many CTAs share an item), and any item is still copied in full.
 *
 * Page ids cannot be checked before the launch (they are in device memory): a
 * token whose page id is >= num_pages is not copied (a gather leaves its block
 * bytes as they were) and, when bad_page is not NULL (a device pointer), 1 is
 * stored into *bad_page; nothing else is ever written there, so clear it first.
 * Check page tables on the host before uploading them when it matters. An item
 * with ntokens == 0 or a NULL block or pages is skipped. Where two
 * items of one scatter write the same engine bytes, which one lands is unspecified
 * (the reference's "later item wins" does not hold on the GPU).
 *
 * Returns 0 (cudaSuccess) when the kernel was queued, cudaErrorInvalidValue (1)
 * for a NULL or malformed argument (nothing is queued), or the error the launch
 * reported (cudaGetLastError, which can also be one left by an earlier call).
 * Errors while the kernel runs surface in the stream, as CUDA does. n == 0 queues
 * nothing and returns 0. Any thread may call them; calls on one stream run in
 * the order they were queued.
 */
int kvl_gather_cuda(const struct kvl_layout *l, void *const *layer_base,
		    const struct kvl_item *items, size_t n, uint32_t max_ntokens,
		    uint32_t *bad_page, void *stream);
int kvl_scatter_cuda(const struct kvl_layout *l, void *const *layer_base,
		     const struct kvl_item *items, size_t n, uint32_t max_ntokens,
		     uint32_t *bad_page, void *stream);

#endif /* KVT_KERNELS_KVCOPY_H */
