/*
 * meta.h - durable metadata: saved contexts (manifests) and long-term memory
 * records, in an LMDB environment of their own (DIR/meta), separate from the NVMe
 * block index so each can evolve and be checked on its own.
 *
 * Durability: a write is acknowledged (its done callback runs with 0) only after
 * its LMDB transaction is committed with fsync. A committer thread takes every
 * write queued since its last commit into one transaction (group commit), so many
 * small writers share one fsync instead of each paying for one.
 *
 * Threads: the owner (the daemon's loop) calls every function; reads run on the
 * owner in read transactions; writes are queued to the committer and completed
 * through meta_eventfd / meta_reap. Expired entries are never returned by reads and
 * are removed by meta_tick in bounded steps.
 *
 * Vector search keeps, per (tenant, namespace), the embeddings in one contiguous
 * float array in RAM (loaded lazily from LMDB on first search, kept in step by
 * writes) and scores them exactly: O(N*d) multiply-adds vectorised by the compiler,
 * plus O(N log k) for a bounded heap of the best k.
 */
#ifndef KVT_META_H
#define KVT_META_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "kvtier.h"

struct meta_config {
	const char *dir;          /* data directory; meta uses DIR/meta */
	uint64_t map_size;        /* initial LMDB map size (0: 64 MiB); grown when full */
	uint32_t value_max;       /* largest record value accepted (0: 1 MiB) */
	unsigned commit_interval_ms; /* longest a write waits for its group (0: asap) */
};

struct meta;

/* Open or create. An existing store's format version and layout signature are
 * checked; a newer or unknown one is refused (-EPROTO, message in err). */
int meta_open(const struct meta_config *cfg, struct meta **out, char *err, size_t errcap);
/* Finish queued writes (their callbacks run) and close. NULL-safe. */
void meta_close(struct meta *m);
int meta_eventfd(const struct meta *m);
void meta_reap(struct meta *m);
/* Remove expired entries, a bounded number per call (and their context block
 * references through the callback given to meta_set_expire_hook). */
void meta_tick(struct meta *m);
/* Writes queued and not yet reported. */
size_t meta_inflight(const struct meta *m);
/* The store failed in a way only a restart can fix (MDB_PANIC). */
bool meta_failed(const struct meta *m);

typedef void (*meta_done_fn)(void *arg, int status);

/* ---- contexts -------------------------------------------------------------- */

struct meta_ctx {
	uint32_t tenant;
	char name[KVT_NAME_LEN_MAX + 1];
	uint16_t name_len;
	kvt_key salt;
	uint64_t token_count;
	kvt_key *keys;
	uint32_t nkeys;
	uint32_t *tokens;         /* NULL if none */
	uint32_t ntokens;
	uint8_t *metadata;
	uint32_t metadata_len;
	uint64_t bytes;           /* logical bytes of the blocks */
	uint64_t created_ms;      /* CLOCK_REALTIME */
	uint64_t expires_ms;      /* 0 = never */
};
/* Free what a meta_ctx_get/list/put callback handed out (arrays and the struct). */
void meta_ctx_free(struct meta_ctx *c);

/*
 * Save (insert or atomically replace) a manifest; the input is copied (created_ms 0:
 * now; tokens NULL: saved without token ids). done(arg, 0)
 * runs once it is durable; replaced (may be NULL) then receives the manifest it
 * replaced (the caller drops that one's block references and frees it), else NULL.
 * Errors: -ENOSPC, -EIO, -EINVAL.
 */
void meta_ctx_put(struct meta *m, const struct meta_ctx *c,
		  void (*done)(void *arg, int status, struct meta_ctx *replaced), void *arg);
/* A copy of (tenant, name)'s manifest, or -ENOENT (absent or expired). */
int meta_ctx_get(struct meta *m, uint32_t tenant, const char *name, size_t name_len,
		 struct meta_ctx **out);
/* Delete; done gets 0 and the deleted manifest (for its block references), or
 * -ENOENT. */
void meta_ctx_delete(struct meta *m, uint32_t tenant, const char *name, size_t name_len,
		     void (*done)(void *arg, int status, struct meta_ctx *deleted), void *arg);
/* Up to limit manifests (keys/tokens/metadata left NULL) of tenant whose names start
 * with prefix, after the name after (len 0: from the start), in name order.
 * *out: array of *n pointers, each freed with meta_ctx_free, the array with free().
 * *more: more follow. */
int meta_ctx_list(struct meta *m, uint32_t tenant, const char *prefix, size_t prefix_len,
		  const char *after, size_t after_len, uint32_t limit, struct meta_ctx ***out,
		  size_t *n, bool *more);
/* Call fn with every manifest (whole, expired ones included: they hold references
 * until the sweeper hands them to the expire hook), in (tenant, name) order, inside
 * one read transaction: fn must not call into meta, and a nonzero return stops the
 * walk and is returned. Rows that fail their checksum are skipped and counted in
 * *corrupt. Returns 0, the value fn stopped with, -ENOMEM or -EIO. */
int meta_ctx_foreach(struct meta *m, int (*fn)(void *arg, const struct meta_ctx *c), void *arg,
		     size_t *corrupt);
/* true if meta_open created the store (there was none in the directory). */
bool meta_was_created(const struct meta *m);
/* Called by meta_tick for each context that expired and was removed: the owner
 * drops its block references. The manifest is freed after the call. */
void meta_set_expire_hook(struct meta *m, void (*fn)(void *arg, const struct meta_ctx *c),
			  void *arg);

/* ---- memory records ---------------------------------------------------------- */

struct meta_rec {
	uint32_t tenant;
	char ns[KVT_NAME_LEN_MAX + 1];
	uint16_t ns_len;
	char key[KVT_NAME_LEN_MAX + 1];
	uint16_t key_len;
	uint8_t *value;
	uint32_t value_len;
	char *metadata;           /* NUL-terminated; metadata_len bytes before the NUL */
	uint32_t metadata_len;
	float *embedding;         /* NULL if none */
	uint32_t dim;
	uint64_t created_ms, updated_ms, expires_ms;
	float score;              /* search results */
};
void meta_rec_free(struct meta_rec *r);

/* Insert or replace; the input is copied; created_ms is kept from an existing record
 * (a new one takes r->created_ms, or now if 0; updated_ms is r->updated_ms, or now).
 * Validation before queueing: -EINVAL (names, NaN/Inf), -EMSGSIZE (value > value_max),
 * -ERANGE (dim differs from the namespace's fixed dimension), -EIO (the store has
 * failed; done is not called). done runs when durable, or with -EIO when the commit
 * fails. */
int meta_rec_put(struct meta *m, const struct meta_rec *r, meta_done_fn done, void *arg);
int meta_rec_get(struct meta *m, uint32_t tenant, const char *ns, size_t ns_len,
		 const char *key, size_t key_len, struct meta_rec **out);
/* 0 (queued; done reports 0 when durable) or -ENOENT. */
int meta_rec_delete(struct meta *m, uint32_t tenant, const char *ns, size_t ns_len,
		    const char *key, size_t key_len, meta_done_fn done, void *arg);
int meta_rec_list(struct meta *m, uint32_t tenant, const char *ns_prefix, size_t prefix_len,
		  const char *after_ns, size_t after_ns_len, const char *after_key,
		  size_t after_key_len, uint32_t limit, struct meta_rec ***out, size_t *n,
		  bool *more);
/* Top k by cosine similarity, best first. -ENOENT (no namespace matches the prefix),
 * -ERANGE (dim differs from a matching namespace's), -EINVAL.
 * Namespaces under the prefix with another dimension are skipped; -ERANGE only when
 * none of those with embeddings has dim. A zero vector scores 0. */
int meta_rec_search(struct meta *m, uint32_t tenant, const char *ns_prefix, size_t prefix_len,
		    const float *query, uint32_t dim, uint32_t k, struct meta_rec ***out,
		    size_t *n);

struct meta_tenant_stats {
	uint32_t tenant;
	uint64_t contexts, context_bytes;   /* bytes: logical bytes of their blocks */
	uint64_t records, record_bytes;     /* bytes: values + metadata + embeddings */
};
/* Per-tenant counts (kept in RAM, rebuilt at open from one scan of the metadata —
 * not of any block data). */
void meta_foreach_tenant(const struct meta *m,
			 void (*fn)(const struct meta_tenant_stats *, void *), void *arg);

struct meta_stats {
	uint64_t commits, writes, expired, fsyncs;
	uint64_t map_resizes;     /* times the LMDB map was doubled */
	uint64_t corrupt;         /* rows that failed their checks (skipped or -EIO) */
};
void meta_get_stats(const struct meta *m, struct meta_stats *s);

#endif /* KVT_META_H */
