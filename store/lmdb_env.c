/*
 * lmdb_env.c - the LMDB mechanics the NVMe tier's index (t2_index.c) and the
 * metadata store (meta_db.c) share: opening the environment, growing the map, the
 * owner's read transaction, the "meta" table and its format checks, the
 * transaction that creates or checks a store, and the committer threads'
 * plumbing. See lmdb_env.h.
 */
#include <errno.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "lmdb_env.h"

/* ---- the environment ------------------------------------------------------------------- */

int lmdb_env_create(struct lmdb_env *e, uint64_t map_size)
{
	int rc;

	e->map_size = map_size ? map_size : LMDB_MAP_DEFAULT;
	if (e->map_size < LMDB_MAP_MIN)
		e->map_size = LMDB_MAP_MIN;
	rc = pthread_rwlock_init(&e->maplock, NULL);
	if (rc)
		return -rc;
	rc = mdb_env_create(&e->env);
	if (rc)
		goto out_lock;
	if ((rc = mdb_env_set_maxdbs(e->env, 8)) ||
	    (rc = mdb_env_set_mapsize(e->env, (size_t)e->map_size)))
		goto out_env;
	return 0;

out_env:
	mdb_env_close(e->env);
out_lock:
	e->env = NULL;
	pthread_rwlock_destroy(&e->maplock);
	return rc;
}

int lmdb_env_open(struct lmdb_env *e, const char *path)
{
	MDB_envinfo info;
	int rc, dead = 0;

	/* NOTLS: read transactions belong to the owner, not to a thread's slot;
	 * NORDAHEAD: lookups are random, read-ahead only evicts useful pages.
	 * Synchronous commits (no NOSYNC/NOMETASYNC): an acknowledged write must
	 * survive power loss, and group commit makes one commit serve many. */
	rc = mdb_env_open(e->env, path, MDB_NOTLS | MDB_NORDAHEAD, 0600);
	if (rc)
		return rc;
	/* Reader slots left by a process that died (kill -9) would hold old pages
	 * forever; LMDB clears them only on a first open. */
	(void)mdb_reader_check(e->env, &dead);
	/* LMDB keeps the larger of what we asked and what the file needs. */
	if (mdb_env_info(e->env, &info) == 0 && info.me_mapsize > e->map_size)
		e->map_size = info.me_mapsize;
	return 0;
}

void lmdb_env_close(struct lmdb_env *e)
{
	if (!e->env)
		return;
	if (e->rtxn)
		mdb_txn_abort(e->rtxn);
	e->rtxn = NULL;
	mdb_env_close(e->env);
	e->env = NULL;
	pthread_rwlock_destroy(&e->maplock);
}

int lmdb_env_grow(struct lmdb_env *e)
{
	uint64_t want = e->map_size * 2;
	int rc;

	if (want > LMDB_MAP_MAX)
		return MDB_MAP_FULL;
	pthread_rwlock_wrlock(&e->maplock);
	rc = mdb_env_set_mapsize(e->env, (size_t)want);
	pthread_rwlock_unlock(&e->maplock);
	if (rc == 0) {
		e->map_size = want;
		atomic_fetch_add(&e->map_resizes, 1);
	}
	return rc;
}

/* ---- the owner's read transaction ------------------------------------------------------ */

static int read_txn(struct lmdb_env *e)
{
	return e->rtxn ? mdb_txn_renew(e->rtxn) : mdb_txn_begin(e->env, NULL, MDB_RDONLY, &e->rtxn);
}

int lmdb_read_begin(struct lmdb_env *e)
{
	int rc;

	pthread_rwlock_rdlock(&e->maplock);
	rc = read_txn(e);
	if (rc == MDB_MAP_RESIZED) {
		/* Another process grew the map (never in normal use; only tools do):
		 * adopt its size. */
		pthread_rwlock_unlock(&e->maplock);
		pthread_rwlock_wrlock(&e->maplock);
		mdb_env_set_mapsize(e->env, 0);
		pthread_rwlock_unlock(&e->maplock);
		pthread_rwlock_rdlock(&e->maplock);
		rc = read_txn(e);
	}
	if (rc)
		pthread_rwlock_unlock(&e->maplock);
	return rc;
}

void lmdb_read_end(struct lmdb_env *e)
{
	mdb_txn_reset(e->rtxn);
	pthread_rwlock_unlock(&e->maplock);
}

/* ---- the "meta" table ------------------------------------------------------------------ */

static void put64le(uint8_t *p, uint64_t v)
{
	for (int i = 0; i < 8; i++)
		p[i] = (uint8_t)(v >> (8 * i));
}

static uint64_t get64le(const uint8_t *p)
{
	uint64_t v = 0;

	for (int i = 7; i >= 0; i--)
		v = (v << 8) | p[i];
	return v;
}

int lmdb_meta_get(MDB_txn *txn, MDB_dbi dbi, const char *name, MDB_val *v)
{
	MDB_val k = { strlen(name), (void *)name };

	return mdb_get(txn, dbi, &k, v);
}

int lmdb_meta_put(MDB_txn *txn, MDB_dbi dbi, const char *name, const void *data, size_t len)
{
	MDB_val k = { strlen(name), (void *)name }, v = { len, (void *)data };

	return mdb_put(txn, dbi, &k, &v, 0);
}

int lmdb_meta_put64(MDB_txn *txn, MDB_dbi dbi, const char *name, uint64_t x)
{
	uint8_t b[8];

	put64le(b, x);
	return lmdb_meta_put(txn, dbi, name, b, sizeof(b));
}

int lmdb_meta_get64(MDB_txn *txn, MDB_dbi dbi, const char *name, uint64_t *x)
{
	MDB_val v;
	int rc = lmdb_meta_get(txn, dbi, name, &v);

	if (rc)
		return rc;
	if (v.mv_size != 8)
		return MDB_CORRUPTED;
	*x = get64le(v.mv_data);
	return 0;
}

int lmdb_format_write(MDB_txn *txn, MDB_dbi dbi, const struct lmdb_format *f)
{
	int rc;

	if ((rc = lmdb_meta_put(txn, dbi, "magic", f->magic, strlen(f->magic))) ||
	    (rc = lmdb_meta_put64(txn, dbi, "version", f->version)) ||
	    (rc = lmdb_meta_put64(txn, dbi, "layout", f->layout)) ||
	    (rc = lmdb_meta_put(txn, dbi, "layout_text", f->layout_text, strlen(f->layout_text))))
		return rc;
	return 0;
}

int lmdb_format_check(MDB_txn *txn, MDB_dbi dbi, const struct lmdb_format *f,
		      enum lmdb_format_verdict *verdict, struct lmdb_format_found *found)
{
	MDB_val v;
	int rc;

	memset(found, 0, sizeof(*found));
	*verdict = LMDB_FORMAT_OK;
	rc = lmdb_meta_get(txn, dbi, "magic", &v);
	if (rc == MDB_NOTFOUND || (rc == 0 && (v.mv_size != strlen(f->magic) ||
					       memcmp(v.mv_data, f->magic, v.mv_size) != 0))) {
		*verdict = LMDB_FORMAT_NO_MAGIC;
		return 0;
	}
	if (rc)
		return rc;
	if (lmdb_meta_get64(txn, dbi, "version", &found->version) != 0)
		*verdict = LMDB_FORMAT_NO_VERSION;
	else if (found->version > f->version)
		*verdict = LMDB_FORMAT_NEWER;
	else if (found->version < 1)
		*verdict = LMDB_FORMAT_UNKNOWN;
	/* Format 1 is the only one so far; a later build maps each older version to
	 * the layout signature it had and reads (or migrates) it. */
	else if (lmdb_meta_get64(txn, dbi, "layout", &found->layout) != 0 ||
		 found->layout != f->layout)
		*verdict = LMDB_FORMAT_LAYOUT;
	else if (lmdb_meta_get64(txn, dbi, "incompat", &found->incompat) != 0 ||
		 (found->incompat & ~f->incompat_known))
		*verdict = LMDB_FORMAT_INCOMPAT;
	return 0;
}

/* ---- the transaction that opens a store ------------------------------------------------ */

int lmdb_store_open(struct lmdb_env *e, MDB_dbi *meta, const struct lmdb_format *fmt,
		    const struct lmdb_store_ops *ops, void *arg, bool *created,
		    enum lmdb_open_stage *stage)
{
	for (;;) {
		MDB_txn *txn;
		MDB_dbi main_dbi;
		MDB_stat st;
		int rc = mdb_txn_begin(e->env, NULL, 0, &txn);

		if (rc) {
			*stage = LMDB_OPEN_BEGIN;
			return rc;
		}
		*created = false;
		rc = mdb_dbi_open(txn, "meta", 0, meta);
		if (rc == MDB_NOTFOUND) {
			/* Only an empty environment becomes a new store. */
			rc = mdb_dbi_open(txn, NULL, 0, &main_dbi);
			if (!rc)
				rc = mdb_stat(txn, main_dbi, &st);
			if (!rc && st.ms_entries != 0) {
				mdb_txn_abort(txn);
				*stage = LMDB_OPEN_FOREIGN;
				return MDB_INCOMPATIBLE;
			}
			if (!rc && !(rc = mdb_dbi_open(txn, "meta", MDB_CREATE, meta)))
				rc = ops->create(arg, txn, *meta);
			*created = true;
		} else if (rc == 0) {
			enum lmdb_format_verdict verdict;
			struct lmdb_format_found found;

			rc = lmdb_format_check(txn, *meta, fmt, &verdict, &found);
			if (rc) {
				mdb_txn_abort(txn);
				*stage = LMDB_OPEN_READ;
				return rc;
			}
			rc = verdict != LMDB_FORMAT_OK ? ops->refuse(arg, verdict, &found)
						       : ops->check(arg, txn, *meta);
			if (rc) {
				mdb_txn_abort(txn);
				*stage = LMDB_OPEN_REFUSED;
				return rc;
			}
		}
		if (rc == 0)
			rc = mdb_txn_commit(txn);
		else
			mdb_txn_abort(txn);
		if (rc == MDB_MAP_FULL && lmdb_env_grow(e) == 0)
			continue;
		*stage = LMDB_OPEN_FAILED;
		return rc;
	}
}

/* ---- committer threads ----------------------------------------------------------------- */

static uint64_t clock_ms(clockid_t id)
{
	struct timespec ts;

	clock_gettime(id, &ts);
	return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

uint64_t lmdb_now_ms(void)
{
	return clock_ms(CLOCK_REALTIME);
}

uint64_t lmdb_mono_ms(void)
{
	return clock_ms(CLOCK_MONOTONIC);
}

int lmdb_committer_sync_init(pthread_mutex_t *mu, pthread_cond_t *cv)
{
	pthread_condattr_t ca;
	int rc;

	if ((rc = pthread_mutex_init(mu, NULL)))
		return rc;
	pthread_condattr_init(&ca);
	pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
	rc = pthread_cond_init(cv, &ca);
	pthread_condattr_destroy(&ca);
	if (rc)
		pthread_mutex_destroy(mu);
	return rc;
}

bool lmdb_committer_wait(pthread_cond_t *cv, pthread_mutex_t *mu, uint64_t deadline_ms)
{
	uint64_t now = lmdb_mono_ms();
	struct timespec ts;

	if (now >= deadline_ms)
		return false;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	ts.tv_sec += (time_t)((deadline_ms - now) / 1000u);
	ts.tv_nsec += (long)((deadline_ms - now) % 1000u) * 1000000L;
	if (ts.tv_nsec >= 1000000000L) {
		ts.tv_sec++;
		ts.tv_nsec -= 1000000000L;
	}
	pthread_cond_timedwait(cv, mu, &ts);
	return true;
}

void lmdb_committer_join(pthread_mutex_t *mu, pthread_cond_t *cv, bool *stop, pthread_t thread)
{
	pthread_mutex_lock(mu);
	*stop = true;
	pthread_cond_signal(cv);
	pthread_mutex_unlock(mu);
	pthread_join(thread, NULL);
}

void lmdb_notify(int efd)
{
	uint64_t one = 1;

	while (write(efd, &one, sizeof(one)) < 0 && errno == EINTR)
		;
}
