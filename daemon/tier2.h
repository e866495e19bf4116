/*
 * tier2.h - the daemon's use of the NVMe tier (store/t2.h): write-back demotion
 * of cold host blocks (with an admission rule), promotion on GET and PREFETCH,
 * read-ahead along a chain, and the I/O engine's and committer's event sources.
 *
 * Like everything in the daemon it runs on the loop thread; compression and
 * decompression run on the workers, one codec context per worker.
 */
#ifndef KVTD_TIER2_H
#define KVTD_TIER2_H

#include <stdbool.h>
#include <stdint.h>

#include "t2.h"

struct server;
struct kvt_stats_writer;

enum nvme_admission {
	ADMIT_ALWAYS = 0, /* every block evicted from RAM is written first */
	ADMIT_CHAIN = 1,  /* read since it was written, or a later block of its chain exists */
	ADMIT_REUSED = 2, /* only blocks read since they were written */
};

/* Host-block flags (t1_block_flags) owned by this module. */
#define T1F_IN_T2 T1_FLAG_BACKED /* a durable, indexed copy is on NVMe: eviction loses nothing */
#define T1F_DEMOTING 2u /* being written to NVMe now */
/* Its parent is in no tier any more (deleted, or dropped by NVMe cleaning): no
 * LOOKUP can reach it, so it is evicted without being written to NVMe. */
#define T1F_ORPHAN 8u
/* b was reached through its chain (a LOOKUP found it after its parent) or stored
 * again: it is no orphan now, whatever write-back found before. */
void tier2_block_reached(struct t1_block *b);

/* Open the I/O engine and the NVMe store if nvme_capacity > 0, and register their
 * event sources with the loop. Returns 0 (also when the tier is off) or -errno. */
int tier2_open(struct server *s);
/* Finish in-flight work and close. NULL-safe on a server without the tier. */
void tier2_close(struct server *s);
bool tier2_active(const struct server *s);
/* Anything in flight (fetches, demotions, I/O, commits)? */
bool tier2_busy(const struct server *s);
/* The store failed in a way only a restart can fix (LMDB panic). */
bool tier2_failed(const struct server *s);

/* Event-source handlers, called by the loop for the tags tier2_open registered. */
bool tier2_is_tag(const struct server *s, const void *tag);
void tier2_handle(struct server *s, const void *tag);

/* Shutdown begins: write every admitted block that is only in RAM to NVMe (the
 * loop keeps running while tier2_busy), so a restart is warm. */
void tier2_begin_stop(struct server *s);

/* Periodic work: demotion towards the free target, t2_tick. */
void tier2_tick(struct server *s);
/* A PUT committed b (write-through writes it now). */
void tier2_after_put(struct server *s, struct t1_block *b);
/* t1's eviction hook (struct t1_config.on_evict). */
void tier2_on_evict(const struct t1_block *b, void *arg);
/* t1's droppable hook: with the NVMe tier on, a block its admission rule turns
 * away may be evicted as freely as one NVMe already has. */
bool tier2_droppable(const struct t1_block *b, void *arg);

/*
 * The host tier has no room for a block being stored because what would have to
 * go is not on NVMe yet. Start writing cold blocks now; if any write is in flight,
 * cb(arg) runs after the next one completes (room may exist then: retry) and this
 * returns true. false: nothing is being written, waiting would not help.
 */
typedef void (*tier2_room_cb)(void *arg);
bool tier2_wait_room(struct server *s, tier2_room_cb cb, void *arg);
/* Is anything waiting in tier2_wait_room now? */
bool tier2_room_waiting(const struct server *s);

/* Is key on NVMe? Fills *info. -ENOENT when absent or the tier is off. */
int tier2_lookup(struct server *s, const struct t1_key *key, struct t2_info *info);
/* Can a prefix lookup reach key, in RAM or on NVMe? A block whose parent is not
 * reachable is an orphan: useless until the parent comes back. */
bool tier2_reachable(struct server *s, const struct t1_key *key);
/* Drop key from NVMe (DELETE). 0 or -ENOENT. */
int tier2_delete(struct server *s, const struct t1_key *key);

/*
 * Bring key from NVMe into the host tier. cb(arg, 0, b) runs later with b
 * committed in the host tier and referenced for the caller (who unrefs it), or
 * cb(arg, 0, NULL) when the host tier had no room and the block was decoded into
 * *direct instead (only if direct was given; direct->len must be the block's
 * length), or cb(arg, error, NULL): KVT-style negative errno, -ENOENT for a block
 * that turned out missing or corrupt (a miss, never wrong bytes). Requests for a
 * key already being fetched join that fetch. Returns 0 if cb will run, -ENOENT if
 * the key is not on NVMe, or another -errno (then cb will not run).
 */
typedef void (*tier2_fetch_cb)(void *arg, int status, struct t1_block *b);
int tier2_fetch(struct server *s, const struct t1_key *key, const struct t2_span *direct,
		tier2_fetch_cb cb, void *arg);

/* Start fetching up to n blocks that follow key in its chain (as written), in the
 * background. */
void tier2_readahead(struct server *s, const struct t1_key *key, unsigned n);

/* A GET was answered from NVMe (for the t2.hits counter). */
void tier2_count_hit(struct server *s);

/*
 * Make key durable on NVMe for a saved context: if it is only in the host tier it
 * is written now (whatever the admission rule says). cb(arg, 0) runs once it is
 * indexed on NVMe (possibly before this returns), or cb(arg, error): -ENOENT
 * (stored in no tier), -ENOSPC, -EIO, -EOPNOTSUPP (no NVMe tier).
 */
typedef void (*tier2_persist_cb)(void *arg, int status);
void tier2_persist(struct server *s, const struct t1_key *key, tier2_persist_cb cb, void *arg);
/* Context references on NVMe blocks (see t2_ref); flush makes them durable. */
int tier2_ref(struct server *s, const struct t1_key *key);
int tier2_unref(struct server *s, const struct t1_key *key);
void tier2_flush(struct server *s, t2_done_fn done, void *arg);
/* t2_foreach_ref on the NVMe tier; -EOPNOTSUPP when it is off. */
int tier2_foreach_ref(struct server *s,
		      int (*fn)(void *arg, const struct t1_key *key, uint32_t refs), void *arg);

/* Admin STATS entries for the tier. */
void tier2_stats(struct server *s, struct kvt_stats_writer *w);

#endif /* KVTD_TIER2_H */
