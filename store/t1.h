/*
 * t1.h - the host-RAM tier: one arena, an extent allocator, an index of blocks
 * keyed by (tenant, key), eviction through a policy, pins, refs and quotas.
 *
 * Single-threaded by contract: every function is called from the daemon's event
 * loop thread. Worker threads only touch the bytes of blocks the loop has
 * referenced for them (t1_block_ref) and never the metadata.
 */
#ifndef KVT_T1_H
#define KVT_T1_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "kvtier.h"

enum t1_mode { T1_OFF = 0, T1_ON = 1, T1_AUTO = 2 };

struct t1;
struct t1_block;

/* Eviction policies (store/policy.h). */
enum t1_policy {
	T1_POLICY_2Q = 0,  /* once-seen blocks before reused ones, with a key history */
	T1_POLICY_LRU = 1, /* plain recency */
};

struct t1_config {
	uint64_t capacity;      /* arena bytes; rounded down to a whole number of chunks */
	uint32_t chunk_size;    /* allocation unit, power of two >= 4096 (default 64 KiB) */
	enum t1_mode hugepages; /* ON: MAP_HUGETLB or fail; AUTO: try it, then THP advice */
	enum t1_mode mlock;     /* ON: mlock or fail; AUTO: mlock if RLIMIT_MEMLOCK allows */
	uint64_t default_quota; /* per-tenant byte quota, 0 = none */
	uint32_t evict_scan;    /* LRU entries examined to find a chain tail (default 64) */
	enum t1_policy policy;  /* eviction policy (default T1_POLICY_2Q) */
	/* Told about each block just before eviction frees it (may be NULL). It must
	 * not call back into the t1. */
	void (*on_evict)(const struct t1_block *b, void *arg);
	void *evict_arg;
	/* Asked during a victim search about an evictable block with no lower-tier copy:
	 * may it go at no cost, because the lower tier would turn it away anyway (its
	 * admission rule)? Such blocks count as FREE, like backed ones, so a store that
	 * may only take free room drops them instead of waiting for write-backs. May be
	 * NULL (never). Same rules as on_evict; arg is evict_arg. */
	bool (*droppable)(const struct t1_block *b, void *arg);
	/* Eviction hints (t1_set_hint): the share of capacity, in percent, that
	 * retained blocks may hold at once (0: none; above 100 means 100). */
	uint32_t retain_max_pct;
	/* The clock retain deadlines are kept in, milliseconds (NULL: CLOCK_MONOTONIC;
	 * tests set their own). */
	uint64_t (*clock_ms)(void);
};

/* How the arena came out, for the daemon to log and report. */
struct t1_report {
	bool hugetlb;   /* explicit huge pages (MAP_HUGETLB) */
	bool thp;       /* transparent huge pages advised */
	bool locked;    /* mlock succeeded */
	int lock_error; /* -errno of the failed mlock, or 0 */
	int huge_error; /* -errno of the failed MAP_HUGETLB, or 0 */
	bool prefault;  /* not locked: being faulted in by a background thread */
};

/* A block's identity inside the daemon: the client's key salted with its tenant. */
struct t1_key {
	uint32_t tenant;
	kvt_key key;
};

/* One contiguous piece of a block's bytes in the arena. */
struct t1_extent {
	uint8_t *ptr;
	uint64_t len;
};


/* Open the arena. Returns 0, -EINVAL (bad config), -ENOMEM, or the mmap/mlock errno
 * when the config says ON and it failed. *rep may be NULL; when given it is filled
 * also on failure (huge_error / lock_error say why). chunk_size 0 = 64 KiB,
 * evict_scan 0 = 64. */
int t1_open(const struct t1_config *cfg, struct t1 **out, struct t1_report *rep);
/* Free everything. Blocks still referenced by workers must be done. NULL-safe. */
void t1_close(struct t1 *t);

/*
 * Two-phase insert. t1_reserve allocates len bytes for key (evicting unpinned,
 * unreferenced blocks through the policy, this tenant's first when it is over its
 * quota) and returns a pending block that lookups do not see yet. The caller fills
 * the extents, then t1_commit makes it visible, or t1_abort frees it.
 * parent (may be NULL or a zero key) lets eviction prefer chain tails: the block counts
 * as a child of the (same tenant's) block with that key if one is indexed, pending or
 * committed, at reserve time - so reserve a chain head first, commit in any order.
 * Making room never evicts the new block's own ancestors (its parent, the parent's
 * parent, ...): a block is useless without its prefix, so when only they could go the
 * reserve fails and the prefix stays.
 * Quota usage is chunk-rounded bytes of the tenant's pending, committed and
 * deleted-but-still-referenced blocks. Whether there is room is decided before
 * anything is evicted: a reserve that fails -EDQUOT or -ENOSPC evicts nothing.
 * Returns 0; -EEXIST (committed or pending block with that key); -EFBIG (len > capacity
 * or 0); -EDQUOT (the tenant's quota cannot be met); -ENOSPC (not enough evictable space);
 * -ENOMEM.
 */
int t1_reserve(struct t1 *t, const struct t1_key *key, const kvt_key *parent, uint64_t len,
	       const kvt_block_desc *desc, struct t1_block **out);
/* As t1_reserve, but never evicts anything: succeeds only into free space within the
 * tenant's quota (-ENOSPC / -EDQUOT otherwise). For blocks that are worth less than
 * what they would displace, e.g. a chain block whose parent is not resident. */
int t1_reserve_free(struct t1 *t, const struct t1_key *key, const kvt_key *parent, uint64_t len,
		    const kvt_block_desc *desc, struct t1_block **out);
/* As t1_reserve, but evicts only blocks with T1_FLAG_BACKED (their eviction loses
 * nothing). For copies of blocks that live in a lower tier anyway. */
int t1_reserve_clean(struct t1 *t, const struct t1_key *key, const kvt_key *parent, uint64_t len,
		     const kvt_block_desc *desc, struct t1_block **out);
void t1_commit(struct t1 *t, struct t1_block *b);
/* Abort a pending block: it leaves the index at once (drops its pins, if any); its
 * chunks are freed now, or at the last unref if a worker holds a ref. */
void t1_abort(struct t1 *t, struct t1_block *b);

/* The committed block with that key, or NULL. Does not count as an access. */
struct t1_block *t1_find(struct t1 *t, const struct t1_key *key);

/* true if a committed or pending block has that key. */
bool t1_contains(struct t1 *t, const struct t1_key *key);

/* Record an access (moves the block in the policy). */
void t1_touch(struct t1 *t, struct t1_block *b);

/* Readers: a referenced block is never evicted and its bytes stay valid, even if it is
 * deleted meanwhile (then it is freed at the last unref). */
void t1_block_ref(struct t1 *t, struct t1_block *b);
void t1_block_unref(struct t1 *t, struct t1_block *b);

/* Pins: counted; a pinned block is never evicted nor deleted. unpin of an unpinned block
 * returns -ENOENT. A pinned block is out of the eviction order; its last unpin puts it
 * back as the most recently used. t1 does not know who pinned: the daemon keeps each
 * connection's pins and unpins them when the connection closes. */
void t1_pin(struct t1 *t, struct t1_block *b);
int t1_unpin(struct t1 *t, struct t1_block *b);

/* Delete a committed block. Returns 0, -ENOENT, or -EBUSY (pinned; KVT_EPINNED on the wire). */
int t1_delete(struct t1 *t, const struct t1_key *key);

/*
 * Eviction hints, from an engine that knows what the policy cannot: whether a
 * session is finished or will be back shortly.
 *   T1_HINT_RETAIN: evicted only after every block without a RETAIN, for
 *     duration_ms (0: the same as T1_HINT_NONE); then back in the policy as a new
 *     block. Past retain_max_pct of capacity, the nearest deadlines lose it first.
 *   T1_HINT_RELEASE: evicted before every block without one, a released chain
 *     from its tail; a released block other (unreleased) blocks hang off goes as
 *     well, cutting them off: release only what nothing else builds on. An
 *     access (t1_touch) clears it.
 *   T1_HINT_NONE: back to the policy.
 * A pin ends either hint (the block is in use; its unpin puts it back in the
 * policy as the most recent). Among
 * retained or released blocks chain tails go first, as in the policy.
 * Returns 0, -ENOENT (b is not committed), -EBUSY (b is pinned: nothing changes)
 * or -EINVAL (no such hint).
 */
enum t1_hint { T1_HINT_NONE = 0, T1_HINT_RETAIN = 1, T1_HINT_RELEASE = 2 };
int t1_set_hint(struct t1 *t, struct t1_block *b, enum t1_hint hint, uint64_t duration_ms);
enum t1_hint t1_block_hint(const struct t1_block *b);

/* Block accessors. */
uint64_t t1_block_len(const struct t1_block *b);
const kvt_block_desc *t1_block_desc(const struct t1_block *b);
const struct t1_extent *t1_block_extents(const struct t1_block *b, size_t *n);
const struct t1_key *t1_block_key(const struct t1_block *b);

/* Walk the evictable committed blocks in eviction order (coldest first): the block
 * after `after` (NULL: the coldest), or NULL at the end. The walk is only valid
 * while nothing is inserted, touched or removed. */
struct t1_block *t1_cold_next(struct t1 *t, struct t1_block *after);

/* The parent key given at reserve (zero if none). */
const kvt_key *t1_block_parent(const struct t1_block *b);

/* Flags owned by the caller; 0 at reserve. One bit has a meaning to t1:
 * T1_FLAG_BACKED says a copy is in a lower tier, so evicting the block loses
 * nothing: it is never held back as a prefix of a block being stored, and it counts
 * as a chain tail for eviction. The caller must not change it during a t1 call. */
#define T1_FLAG_BACKED 0x80000000u
uint32_t t1_block_flags(const struct t1_block *b);
void t1_block_set_flags(struct t1_block *b, uint32_t flags);
/* t1_touch calls since the block was reserved. */
uint32_t t1_block_accesses(const struct t1_block *b);
/* true if resident blocks name this one as their parent. */
bool t1_block_has_children(const struct t1_block *b);
bool t1_block_is_committed(const struct t1_block *b);

/* Per-tenant quota override; 0 = no quota for this tenant, whatever default_quota says.
 * Applies to later reserves (a tenant already over it is brought back under it by the
 * next reserve's evictions). Returns 0 or -ENOMEM. */
int t1_set_quota(struct t1 *t, uint32_t tenant, uint64_t bytes);
/* The quota in force for a tenant: its override, else default_quota; 0 = none. */
uint64_t t1_tenant_quota(const struct t1 *t, uint32_t tenant);
/* The tier's capacity in bytes (whole chunks), and its free bytes (whole free
 * chunks); O(1), unlike t1_get_stats. */
uint64_t t1_capacity(const struct t1 *t);
uint64_t t1_free_bytes(const struct t1 *t);

struct t1_stats {
	uint64_t capacity;
	uint64_t used;         /* bytes in committed + pending blocks (rounded to chunks),
				* and in deleted blocks still referenced */
	uint64_t blocks;       /* committed blocks */
	uint64_t pending;      /* reserved, not yet committed */
	uint64_t pinned;       /* blocks with pins */
	uint64_t evictions;
	uint64_t evicted_bytes; /* chunk-rounded */
	uint64_t evict_nontail; /* evictions that had to take a block with resident children */
	uint64_t alloc_failures; /* reserves that failed -ENOSPC, -EDQUOT or -ENOMEM */
	uint64_t extents;      /* extents over all blocks (contiguity: extents / blocks) */
	uint64_t chunk_size;
	uint64_t free_chunks;
	uint64_t largest_free_run; /* chunks */
	uint64_t retained_blocks;  /* committed blocks holding T1_HINT_RETAIN */
	uint64_t retained_bytes;   /* their chunk-rounded bytes */
	uint64_t released_blocks;  /* committed blocks holding T1_HINT_RELEASE */
	uint64_t retain_expired;   /* RETAIN hints that ran out */
	uint64_t retain_capped;    /* RETAIN hints dropped to stay within retain_max_pct */
	uint64_t retain_evicted;   /* blocks evicted while retained (nothing else could go) */
};
/* The arena's whole mapping (for registering it with a DMA engine, e.g.
 * cudaHostRegister). Valid until t1_close. */
void t1_arena(const struct t1 *t, void **base, size_t *len);

/* The eviction policy's name ("2q", "lru"); static storage. */
const char *t1_policy_name(const struct t1 *t);
void t1_get_stats(const struct t1 *t, struct t1_stats *s);

struct t1_tenant_stats {
	uint32_t tenant;
	uint64_t bytes;  /* as counted against the quota (see t1_reserve) */
	uint64_t blocks; /* committed */
	uint64_t quota;  /* in force: the override, else default_quota; 0 = none */
};
/* Call fn for every tenant that holds space or has a quota override, in ascending
 * tenant order. fn must not change t. */
void t1_foreach_tenant(const struct t1 *t, void (*fn)(const struct t1_tenant_stats *, void *),
		       void *arg);

#endif /* KVT_T1_H */
