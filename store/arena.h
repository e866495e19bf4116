/*
 * arena.h - the host tier's memory: one anonymous mapping, backed by explicit huge
 * pages, transparent huge pages or plain pages, and optionally locked in RAM, as
 * the configuration asks and the machine allows.
 */
#ifndef KVT_STORE_ARENA_H
#define KVT_STORE_ARENA_H

#include <stddef.h>
#include <stdint.h>

#include "t1.h"

struct arena {
	uint8_t *base;  /* first usable byte */
	size_t len;     /* usable bytes, as asked */
	void *map;      /* the whole mapping, for munmap */
	size_t map_len;
};

/*
 * Map len bytes (len > 0).
 *  huge: ON  - MAP_HUGETLB or fail with its -errno;
 *        AUTO - MAP_HUGETLB, else anonymous memory advised MADV_HUGEPAGE;
 *        OFF - plain anonymous memory.
 *  lock: ON  - mlock or fail with its -errno;
 *        AUTO - mlock only if RLIMIT_MEMLOCK covers the mapping (or is unlimited),
 *               else lock_error = -ENOMEM (what mlock would say) and go on unlocked;
 *               a failed mlock is reported, not fatal;
 *        OFF - no locking.
 * rep (not NULL) is zeroed and filled, also when the call fails.
 * Returns 0 or a negative errno; on failure nothing stays mapped.
 */
int arena_map(struct arena *a, size_t len, enum t1_mode huge, enum t1_mode lock,
	      struct t1_report *rep);

/* Unmap (and so unlock). NULL-safe on a zeroed struct. */
void arena_unmap(struct arena *a);

#endif /* KVT_STORE_ARENA_H */
