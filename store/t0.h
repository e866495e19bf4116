/*
 * t0.h - the GPU tier (T0): a pool of GPU memory owned by the daemon, holding
 * copies of the hottest blocks. It composes the host tier's pieces: the chunk
 * allocator (alloc.h), the block index (index.h) and an eviction policy
 * (policy.h), over a pool that a backend allocates and fills through a small ops
 * table, so the CUDA backend (device memory) and the emulated one (host memory,
 * for tests) plug in the same way.
 *
 * T0 is an inclusive cache: every block it holds is also held by a lower tier
 * (the daemon keeps the host tier's copy, and drops the T0 copy when the host
 * tier evicts or deletes its block), so evicting from T0 never loses data and
 * every committed block is free to evict unless a copy is reading it.
 *
 * Single-threaded by contract like t1.h: every function is called from the
 * daemon's loop thread, except t0_fill, which a copy worker runs on a pending
 * block it holds (it touches only that block's bytes).
 */
#ifndef KVT_T0_H
#define KVT_T0_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "t1.h"

struct t0;
struct t0_block;

/* How a backend provides the pool's memory. arg is t0_config.arg. */
struct t0_pool_ops {
	/* Allocate bytes of pool memory; *base is its address as the copies see it
	 * (a device pointer for CUDA). Loop thread, at t0_open. 0 or -errno. */
	int (*alloc)(void *arg, uint64_t bytes, void **base);
	/* Give the pool back (t0_close). */
	void (*free)(void *arg, void *base, uint64_t bytes);
	/* Copy len bytes of host memory src into pool memory dst and return when the
	 * bytes are there. Any thread. 0 or -errno. */
	int (*copy)(void *arg, void *dst, const void *src, uint64_t len);
};

struct t0_config {
	uint64_t capacity;     /* pool bytes; rounded down to a whole number of chunks */
	uint32_t chunk_size;   /* allocation unit, power of two >= 4096 (0: 64 KiB) */
	enum t1_policy policy; /* eviction policy (store/policy.h) */
	uint32_t evict_scan;   /* 0: 64 */
	const struct t0_pool_ops *ops;
	void *arg;
	/* Per-tenant quota in bytes (0: none), asked at each reserve; NULL: no quotas.
	 * A tenant over its quota evicts its own blocks first; other tenants' blocks
	 * are never evicted to meet it. */
	uint64_t (*quota)(void *arg, uint32_t tenant);
	void *quota_arg;
};

/* Returns 0, -EINVAL (bad config, capacity below one chunk), -ENOMEM, or the
 * error of ops->alloc. */
int t0_open(const struct t0_config *cfg, struct t0 **out);
/* Free the index and give the pool back. No block may be referenced. NULL-safe. */
void t0_close(struct t0 *t);

/*
 * Two-phase insert, as in the host tier: t0_reserve takes room for len bytes
 * (evicting unreferenced committed blocks through the policy) and returns a
 * pending block, invisible to t0_find, that the caller fills (t0_fill, on a
 * worker) and then commits or aborts. Whether there is room is decided before
 * anything is evicted. Returns 0; -EEXIST (a pending or committed block has the
 * key); -EFBIG (len 0 or over the capacity); -ENOSPC (not enough evictable room);
 * -EDQUOT (the tenant's quota cannot be met: the block is larger than it, or too
 * little of the tenant's own room is evictable); -ENOMEM.
 */
int t0_reserve(struct t0 *t, const struct t1_key *key, uint64_t len, struct t0_block **out);
/* Copy the block's bytes from host memory given as extents (len bytes in all,
 * in order) through ops->copy. Worker thread. 0 or -errno. */
int t0_fill(struct t0 *t, struct t0_block *b, const struct t1_extent *src, size_t nsrc);
/* Make a pending block visible. Returns 0, or -ENOENT if it was deleted while
 * pending (then it is freed here). */
int t0_commit(struct t0 *t, struct t0_block *b);
/* Drop a pending block (also one deleted while pending). */
void t0_abort(struct t0 *t, struct t0_block *b);

/* The committed block with that key, or NULL. Not an access. */
struct t0_block *t0_find(struct t0 *t, const struct t1_key *key);
/* Record an access (moves the block in the policy). */
void t0_touch(struct t0 *t, struct t0_block *b);
/* Readers: a referenced block is never evicted, and stays valid when deleted
 * until the last unref. */
void t0_block_ref(struct t0 *t, struct t0_block *b);
void t0_block_unref(struct t0 *t, struct t0_block *b);
/* Remove the block with that key, committed or pending. Returns 0 or -ENOENT. */
int t0_delete(struct t0 *t, const struct t1_key *key);

uint64_t t0_block_len(const struct t0_block *b);
/* The block's pool memory (pool addresses, in order). */
const struct t1_extent *t0_block_extents(const struct t0_block *b, size_t *n);

struct t0_stats {
	uint64_t capacity;
	uint64_t used;      /* chunk-rounded bytes of pending, committed and dead blocks */
	uint64_t blocks;    /* committed */
	uint64_t pending;
	uint64_t evictions;
	uint64_t evicted_bytes;
	uint64_t chunk_size;
	uint64_t quota_evictions; /* evictions of a tenant's own blocks for its quota */
	uint64_t quota_refusals;  /* reserves refused with -EDQUOT */
};
void t0_get_stats(const struct t0 *t, struct t0_stats *s);
/* Chunk-rounded bytes a tenant holds in T0 (pending, committed, dead referenced). */
uint64_t t0_tenant_bytes(const struct t0 *t, uint32_t tenant);
const char *t0_policy_name(const struct t0 *t);

#endif /* KVT_T0_H */
