/*
 * kvcopy_ref.c - the layout validator and the CPU reference gather/scatter: plain
 * loops, one element at a time, written to be obviously right rather than fast.
 * The CUDA kernels (kvcopy.cu) are tested byte for byte against these.
 */
#include "kvcopy.h"

#include <errno.h>
#include <string.h>

/* The checks every entry point makes; -EINVAL on failure. */
static int layout_fields_check(const struct kvl_layout *l)
{
	if (!l)
		return -EINVAL;
	if (l->layers < 1 || l->layers > KVL_MAX_LAYERS)
		return -EINVAL;
	if (l->planes != 1 && l->planes != 2)
		return -EINVAL;
	if (l->heads < 1 || l->head_dim < 1 || l->page_tokens < 1 || l->num_pages < 1)
		return -EINVAL;
	if (l->elem_size != 1 && l->elem_size != 2 && l->elem_size != 4)
		return -EINVAL;
	return 0;
}

/* |x| as unsigned, INT64_MIN included. */
static uint64_t abs_u64(int64_t x)
{
	return x < 0 ? (uint64_t)0 - (uint64_t)x : (uint64_t)x;
}

/*
 * The row's elements nest: taking the dimensions with more than one index in
 * order of |stride|, each stride is at least the span of everything smaller, so
 * no two elements share a byte. Returns 0, -EINVAL (overlap) or -ERANGE (overflow).
 */
static int row_nest_check(const struct kvl_layout *l)
{
	struct {
		uint64_t stride, count;
	} d[2];
	int nd = 0;
	uint64_t span = l->elem_size;

	if (l->heads > 1)
		d[nd].stride = abs_u64(l->head_stride), d[nd++].count = l->heads;
	if (l->head_dim > 1)
		d[nd].stride = abs_u64(l->dim_stride), d[nd++].count = l->head_dim;
	if (nd == 2 && d[1].stride < d[0].stride) {
		uint64_t s = d[0].stride, c = d[0].count;

		d[0] = d[1];
		d[1].stride = s;
		d[1].count = c;
	}
	for (int i = 0; i < nd; i++) {
		uint64_t ext;

		if (d[i].stride < span)
			return -EINVAL;
		if (__builtin_mul_overflow(d[i].stride, d[i].count - 1, &ext) ||
		    __builtin_add_overflow(ext, span, &span))
			return -ERANGE;
	}
	return 0;
}

int kvl_layout_check(const struct kvl_layout *l, uint64_t region_bytes_per_layer)
{
	int rc = layout_fields_check(l);
	if (rc)
		return rc;
	rc = row_nest_check(l);
	if (rc)
		return rc;

	uint64_t row_bytes = (uint64_t)l->heads * l->head_dim * l->elem_size;
	if (row_bytes > UINT32_MAX)
		return -ERANGE;

	/* Lowest and highest byte offset any element of any valid index reaches:
	 * each dimension contributes stride * (count - 1) to one end or the other. */
	const struct {
		int64_t stride;
		uint64_t count;
	} dims[5] = {
		{ l->plane_stride, l->planes }, { l->page_stride, l->num_pages },
		{ l->token_stride, l->page_tokens }, { l->head_stride, l->heads },
		{ l->dim_stride, l->head_dim },
	};
	int64_t lo = 0, hi = (int64_t)l->elem_size - 1;
	for (int i = 0; i < 5; i++) {
		int64_t ext;

		if (dims[i].count <= 1)
			continue;
		if (dims[i].count - 1 > (uint64_t)INT64_MAX ||
		    __builtin_mul_overflow(dims[i].stride, (int64_t)(dims[i].count - 1), &ext))
			return -ERANGE;
		if (ext < 0 ? __builtin_add_overflow(lo, ext, &lo) : __builtin_add_overflow(hi, ext, &hi))
			return -ERANGE;
	}
	if (lo < 0 || (uint64_t)hi >= region_bytes_per_layer)
		return -ERANGE;
	return 0;
}

size_t kvl_block_bytes(const struct kvl_layout *l, uint32_t ntokens)
{
	size_t v = 1;

	if (!l)
		return 0;
	if (__builtin_mul_overflow(v, (size_t)l->layers, &v) ||
	    __builtin_mul_overflow(v, (size_t)l->planes, &v) ||
	    __builtin_mul_overflow(v, (size_t)ntokens, &v) ||
	    __builtin_mul_overflow(v, (size_t)l->heads, &v) ||
	    __builtin_mul_overflow(v, (size_t)l->head_dim, &v) ||
	    __builtin_mul_overflow(v, (size_t)l->elem_size, &v))
		return 0;
	return v;
}

/* Every argument, and every page id any token uses, before anything is copied. */
static int args_check(const struct kvl_layout *l, void *const layer_base[],
		      const struct kvl_item *items, size_t n)
{
	int rc = layout_fields_check(l);
	if (rc)
		return rc;
	if (!layer_base || (n > 0 && !items))
		return -EINVAL;
	for (uint32_t li = 0; li < l->layers; li++)
		if (!layer_base[li])
			return -EINVAL;
	for (size_t i = 0; i < n; i++) {
		const struct kvl_item *it = &items[i];

		if (!it->block || !it->pages || it->ntokens == 0 ||
		    kvl_block_bytes(l, it->ntokens) == 0)
			return -EINVAL;
	}
	for (size_t i = 0; i < n; i++) {
		const struct kvl_item *it = &items[i];
		uint64_t first = it->first_token / l->page_tokens;
		uint64_t last = ((uint64_t)it->first_token + it->ntokens - 1) / l->page_tokens;

		for (uint64_t k = first; k <= last; k++)
			if (it->pages[k] >= l->num_pages)
				return -ERANGE;
	}
	return 0;
}

/* Byte offset of element (p, g, s, h, d) from its layer's base. Unsigned arithmetic
 * wraps instead of overflowing; a validated layout never gets there. */
static uint64_t elem_offset(const struct kvl_layout *l, uint64_t p, uint64_t g, uint64_t s,
			    uint64_t h, uint64_t d)
{
	return p * (uint64_t)l->plane_stride + g * (uint64_t)l->page_stride +
	       s * (uint64_t)l->token_stride + h * (uint64_t)l->head_stride +
	       d * (uint64_t)l->dim_stride;
}

/* The block is walked in its own order, [layer][plane][token][head][dim]. */
static int copy_ref(const struct kvl_layout *l, void *const layer_base[],
		    const struct kvl_item *items, size_t n, bool to_block)
{
	int rc = args_check(l, layer_base, items, n);
	if (rc)
		return rc;
	for (size_t i = 0; i < n; i++) {
		const struct kvl_item *it = &items[i];
		unsigned char *blk = it->block;

		for (uint32_t li = 0; li < l->layers; li++) {
			unsigned char *base = layer_base[li];

			for (uint32_t p = 0; p < l->planes; p++) {
				for (uint32_t t = 0; t < it->ntokens; t++) {
					uint64_t pos = (uint64_t)it->first_token + t;
					uint64_t g = it->pages[pos / l->page_tokens];
					uint64_t s = pos % l->page_tokens;

					for (uint32_t h = 0; h < l->heads; h++) {
						for (uint32_t d = 0; d < l->head_dim; d++) {
							unsigned char *e =
								base + (int64_t)elem_offset(l, p, g, s, h, d);

							if (to_block)
								memcpy(blk, e, l->elem_size);
							else
								memcpy(e, blk, l->elem_size);
							blk += l->elem_size;
						}
					}
				}
			}
		}
	}
	return 0;
}

int kvl_gather_ref(const struct kvl_layout *l, void *const layer_base[],
		   const struct kvl_item *items, size_t n)
{
	return copy_ref(l, layer_base, items, n, true);
}

int kvl_scatter_ref(const struct kvl_layout *l, void *const layer_base[],
		    const struct kvl_item *items, size_t n)
{
	return copy_ref(l, layer_base, items, n, false);
}
