/*
 * arena.h - the host tier's memory: one anonymous mapping, backed by explicit huge
 * pages, transparent huge pages or plain pages, and optionally locked in RAM, as
 * the configuration asks and the machine allows.
 */
#ifndef KVT_STORE_ARENA_H
#define KVT_STORE_ARENA_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "t1.h"

struct arena {
	uint8_t *base;  /* first usable byte */
	size_t len;     /* usable bytes, as asked */
	void *map;      /* the whole mapping, for munmap */
	size_t map_len;
	/* Background prefault of an unlocked arena (see arena.c). */
	pthread_t prefault_thread;
	bool prefaulting;
	atomic_bool prefault_stop;
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

/* An arena that is not locked (mlock faults every page in) is faulted in by a
 * background thread with MADV_POPULATE_WRITE, 64 MiB at a time, so that stores do
 * not pay for the first touch of each page; contents are never changed, so it may
 * race with stores. rep->prefault says whether it started (kernels before 5.14
 * refuse the advice: the arena is then faulted in by use, as before). */

/* Unmap (and so unlock), stopping and joining the prefault thread first. NULL-safe
 * on a zeroed struct. */
void arena_unmap(struct arena *a);

#endif /* KVT_STORE_ARENA_H */
