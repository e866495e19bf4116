/*
 * lmdb_env.h - what the two LMDB stores share: the NVMe tier's index (t2_index.c,
 * DIR/index) and the metadata store (meta_db.c, DIR/meta). Each keeps its own
 * tables, format constants, error mapping and messages; this file holds the
 * mechanics that are the same for both:
 *
 *   - the environment: created and opened with MDB_NOTLS | MDB_NORDAHEAD and
 *     LMDB's default, fully synchronous commits; stale reader slots cleared;
 *   - the map: grown by doubling under the map lock taken exclusively;
 *   - the owner's read transaction: one handle, reset and renewed, with the map
 *     lock held shared around it;
 *   - the "meta" table: named values (u64s little-endian), and the store-format
 *     checks every store makes (magic, version, layout signature, incompat bits);
 *   - the transaction that creates or checks a store at open;
 *   - the committer threads' plumbing (clocks, timed waits, the eventfd).
 *
 * LMDB codes are returned as they are (the caller maps them: meta_db_err,
 * t2_index_err). docs/STORAGE.md describes both stores.
 */
#ifndef KVT_LMDB_ENV_H
#define KVT_LMDB_ENV_H

#include <lmdb.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* The map: its size when none is configured, the least and the most it may be. */
#define LMDB_MAP_DEFAULT ((uint64_t)64 << 20)
#define LMDB_MAP_MIN ((uint64_t)64 << 10)
#define LMDB_MAP_MAX ((uint64_t)1 << 40)

struct lmdb_env {
	MDB_env *env;
	/* Readers hold it shared around each read transaction; the committer holds
	 * it exclusively while it resizes the map (LMDB requires that no
	 * transaction be active in the process then). */
	pthread_rwlock_t maplock;
	MDB_txn *rtxn;            /* the owner's read transaction, reset between uses */
	uint64_t map_size;        /* committer (and open) only */
	atomic_uint_fast64_t map_resizes;
};

/*
 * Step 1 of opening: the map lock, mdb_env_create, 8 named tables, the map size
 * (map_size, or LMDB_MAP_DEFAULT when 0; at least LMDB_MAP_MIN). Returns 0, a
 * negative errno when the map lock could not be set up (nothing else was), or
 * the LMDB/errno code (positive or an MDB_* code) that failed after it; on
 * failure nothing is left to undo.
 */
int lmdb_env_create(struct lmdb_env *e, uint64_t map_size);
/*
 * Step 2: mdb_env_open(path) with MDB_NOTLS (read transactions belong to the
 * owner, not to a thread's slot) and MDB_NORDAHEAD (lookups are random), mode
 * 0600, synchronous commits; then clear reader slots a killed process left and
 * adopt a map already larger than asked. Returns 0 or mdb_env_open's code; on
 * failure call lmdb_env_close.
 */
int lmdb_env_open(struct lmdb_env *e, const char *path);
/* Undo lmdb_env_create (and lmdb_env_open): the read transaction, the
 * environment, the map lock. e->env is NULL after. */
void lmdb_env_close(struct lmdb_env *e);

/* Double the map. No transaction of this process may be active: readers are held
 * off by the map lock; the caller has ended its own write transaction. Returns 0,
 * MDB_MAP_FULL when it would exceed LMDB_MAP_MAX, or mdb_env_set_mapsize's code. */
int lmdb_env_grow(struct lmdb_env *e);

/* Start the owner's read transaction (e->rtxn) with the map lock held shared;
 * adopts a map another process grew. Returns 0 (end it with lmdb_read_end) or an
 * LMDB code (the lock is released). */
int lmdb_read_begin(struct lmdb_env *e);
void lmdb_read_end(struct lmdb_env *e);

/* ---- the "meta" table: named values ---------------------------------------------------- */

int lmdb_meta_get(MDB_txn *txn, MDB_dbi dbi, const char *name, MDB_val *v);
int lmdb_meta_put(MDB_txn *txn, MDB_dbi dbi, const char *name, const void *data, size_t len);
/* u64 values, little-endian; a value that is not 8 bytes reads as MDB_CORRUPTED. */
int lmdb_meta_put64(MDB_txn *txn, MDB_dbi dbi, const char *name, uint64_t x);
int lmdb_meta_get64(MDB_txn *txn, MDB_dbi dbi, const char *name, uint64_t *x);

/* What identifies a store's format. */
struct lmdb_format {
	const char *magic;        /* "magic" */
	unsigned version;         /* "version": the newest format this build reads */
	uint64_t layout;          /* "layout": this build's layout signature */
	const char *layout_text;  /* "layout_text": the text the signature hashes */
	uint64_t incompat_known;  /* "incompat" bits this build knows */
};

/* A new store: magic, version, layout and layout_text, in that order. */
int lmdb_format_write(MDB_txn *txn, MDB_dbi dbi, const struct lmdb_format *f);

enum lmdb_format_verdict {
	LMDB_FORMAT_OK,
	LMDB_FORMAT_NO_MAGIC,     /* no magic, or another one */
	LMDB_FORMAT_NO_VERSION,   /* no readable version */
	LMDB_FORMAT_NEWER,        /* version > f->version */
	LMDB_FORMAT_UNKNOWN,      /* version < 1 */
	LMDB_FORMAT_LAYOUT,       /* no readable layout, or not f->layout */
	LMDB_FORMAT_INCOMPAT,     /* no readable incompat, or an unknown bit */
};

struct lmdb_format_found {
	uint64_t version, layout, incompat;
};

/*
 * An existing store: check magic, version, layout signature and incompat bits, in
 * that order, stopping at the first that fails (*verdict; *found holds what was
 * read so far, for the caller's message). Returns 0, or the LMDB code that kept
 * the magic from being read (other than MDB_NOTFOUND).
 */
int lmdb_format_check(MDB_txn *txn, MDB_dbi dbi, const struct lmdb_format *f,
		      enum lmdb_format_verdict *verdict, struct lmdb_format_found *found);

/* ---- the transaction that opens a store ------------------------------------------------ */

/* How lmdb_store_open failed. */
enum lmdb_open_stage {
	LMDB_OPEN_BEGIN,          /* mdb_txn_begin (the returned code) */
	LMDB_OPEN_FOREIGN,        /* no "meta" table, and the environment is not empty */
	LMDB_OPEN_READ,           /* the magic could not be read (the returned code) */
	LMDB_OPEN_REFUSED,        /* refuse or check refused the store (its return) */
	LMDB_OPEN_FAILED,         /* anything else: create, a table, the commit */
};

struct lmdb_store_ops {
	/* A new store in an empty environment: the "meta" table (already opened
	 * with MDB_CREATE; lmdb_format_write is the caller's) and every other
	 * table. Returns an LMDB code. */
	int (*create)(void *arg, MDB_txn *txn, MDB_dbi meta);
	/* An existing store that lmdb_format_check refused: write the message and
	 * return the negative errno. */
	int (*refuse)(void *arg, enum lmdb_format_verdict verdict,
		      const struct lmdb_format_found *found);
	/* An existing store whose format passed: the store's own meta values and
	 * tables. 0, or a negative errno (with the caller's message). */
	int (*check)(void *arg, MDB_txn *txn, MDB_dbi meta);
};

/*
 * One write transaction: open the "meta" table; an empty environment becomes a
 * new store (ops->create, *created true), an existing store is checked
 * (lmdb_format_check against fmt, then ops->refuse or ops->check); commit,
 * doubling the map and starting again on MDB_MAP_FULL. Returns 0, or a code with
 * *stage saying where it failed.
 */
int lmdb_store_open(struct lmdb_env *e, MDB_dbi *meta, const struct lmdb_format *fmt,
		    const struct lmdb_store_ops *ops, void *arg, bool *created,
		    enum lmdb_open_stage *stage);

/* ---- committer threads ----------------------------------------------------------------- */

uint64_t lmdb_now_ms(void);   /* CLOCK_REALTIME, ms */
uint64_t lmdb_mono_ms(void);  /* CLOCK_MONOTONIC, ms */

/* A mutex and a condition variable on CLOCK_MONOTONIC. Returns 0 or the pthread
 * error (positive); on failure nothing is left to undo. */
int lmdb_committer_sync_init(pthread_mutex_t *mu, pthread_cond_t *cv);
/* With mu held: if the monotonic clock is before deadline_ms, wait on cv until
 * then (or a signal) and return true; else return false at once. */
bool lmdb_committer_wait(pthread_cond_t *cv, pthread_mutex_t *mu, uint64_t deadline_ms);
/* Ask a committer thread to stop (*stop set under mu, cv signalled) and wait for
 * it to finish what it has. */
void lmdb_committer_join(pthread_mutex_t *mu, pthread_cond_t *cv, bool *stop, pthread_t thread);
/* Wake the owner: add 1 to the eventfd (retried on EINTR). */
void lmdb_notify(int efd);

#endif /* KVT_LMDB_ENV_H */
