/*
 * meta_db.c - the metadata store's LMDB environment (DIR/meta): opening it, checking
 * or creating its format (magic, version, layout signature), the owner's read
 * transactions, growing the map, and rebuilding the per-tenant counts at open.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "meta_internal.h"

#define MAP_DEFAULT ((uint64_t)64 << 20)
#define MAP_MIN ((uint64_t)64 << 10)
#define MAP_MAX ((uint64_t)1 << 40)

uint64_t meta_now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_REALTIME, &ts);
	return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

uint64_t meta_mono_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

int meta_db_err(struct meta *m, int rc)
{
	switch (rc) {
	case 0:
		return 0;
	case MDB_NOTFOUND:
		return -ENOENT;
	case MDB_MAP_FULL:
		return -ENOSPC;
	case MDB_PANIC:
		/* A failed meta-page write: LMDB refuses every transaction until the
		 * environment is reopened. Only a restart fixes it. */
		atomic_store(&m->failed, 1);
		return -EIO;
	case ENOMEM:
		return -ENOMEM;
	case ENOSPC:
	case EDQUOT:
		return -ENOSPC;
	default:
		return -EIO;
	}
}

int meta_grow_map(struct meta *m)
{
	uint64_t want = m->map_size * 2;
	int rc;

	if (want > MAP_MAX)
		return MDB_MAP_FULL;
	pthread_rwlock_wrlock(&m->maplock);
	rc = mdb_env_set_mapsize(m->env, (size_t)want);
	pthread_rwlock_unlock(&m->maplock);
	if (rc == 0) {
		m->map_size = want;
		atomic_fetch_add(&m->map_resizes, 1);
	}
	return rc;
}

/* ---- reads ---------------------------------------------------------------------------- */

int meta_read_begin(struct meta *m)
{
	int rc;

	if (atomic_load(&m->failed))
		return -EIO;
	pthread_rwlock_rdlock(&m->maplock);
	rc = m->rtxn ? mdb_txn_renew(m->rtxn) : mdb_txn_begin(m->env, NULL, MDB_RDONLY, &m->rtxn);
	if (rc == MDB_MAP_RESIZED) {
		/* Another process grew the map (only tools do): adopt its size. */
		pthread_rwlock_unlock(&m->maplock);
		pthread_rwlock_wrlock(&m->maplock);
		mdb_env_set_mapsize(m->env, 0);
		pthread_rwlock_unlock(&m->maplock);
		pthread_rwlock_rdlock(&m->maplock);
		rc = m->rtxn ? mdb_txn_renew(m->rtxn)
			     : mdb_txn_begin(m->env, NULL, MDB_RDONLY, &m->rtxn);
	}
	if (rc) {
		pthread_rwlock_unlock(&m->maplock);
		return meta_db_err(m, rc);
	}
	return 0;
}

void meta_read_end(struct meta *m)
{
	mdb_txn_reset(m->rtxn);
	pthread_rwlock_unlock(&m->maplock);
}

/* ---- format ----------------------------------------------------------------------------- */

static int kv_get(MDB_txn *txn, MDB_dbi dbi, const char *name, MDB_val *v)
{
	MDB_val k = { strlen(name), (void *)name };

	return mdb_get(txn, dbi, &k, v);
}

static int kv_put(MDB_txn *txn, MDB_dbi dbi, const char *name, const void *data, size_t len)
{
	MDB_val k = { strlen(name), (void *)name }, v = { len, (void *)data };

	return mdb_put(txn, dbi, &k, &v, 0);
}

static int kv_put64(MDB_txn *txn, MDB_dbi dbi, const char *name, uint64_t x)
{
	uint8_t b[8];

	meta_wr64(b, x);
	return kv_put(txn, dbi, name, b, sizeof(b));
}

static int kv_get64(MDB_txn *txn, MDB_dbi dbi, const char *name, uint64_t *x)
{
	MDB_val v;
	int rc = kv_get(txn, dbi, name, &v);

	if (rc)
		return rc;
	if (v.mv_size != 8)
		return MDB_CORRUPTED;
	*x = meta_rd64(v.mv_data);
	return 0;
}

static int open_tables(struct meta *m, MDB_txn *txn, unsigned flags)
{
	int rc;

	if ((rc = mdb_dbi_open(txn, "ctx", flags, &m->dbi_ctx)) ||
	    (rc = mdb_dbi_open(txn, "ctx_exp", flags, &m->dbi_ctx_exp)) ||
	    (rc = mdb_dbi_open(txn, "rec", flags, &m->dbi_rec)) ||
	    (rc = mdb_dbi_open(txn, "rec_exp", flags, &m->dbi_rec_exp)) ||
	    (rc = mdb_dbi_open(txn, "ns", flags, &m->dbi_ns)))
		return rc;
	return 0;
}

static int create_store(struct meta *m, MDB_txn *txn)
{
	const char *layout = meta_layout_string();
	int rc;

	if ((rc = mdb_dbi_open(txn, "meta", MDB_CREATE, &m->dbi_meta)) ||
	    (rc = open_tables(m, txn, MDB_CREATE)))
		return rc;
	if ((rc = kv_put(txn, m->dbi_meta, "magic", META_MAGIC, strlen(META_MAGIC))) ||
	    (rc = kv_put64(txn, m->dbi_meta, "version", META_FORMAT_VERSION)) ||
	    (rc = kv_put64(txn, m->dbi_meta, "layout", meta_layout_signature())) ||
	    (rc = kv_put(txn, m->dbi_meta, "layout_text", layout, strlen(layout))) ||
	    (rc = kv_put64(txn, m->dbi_meta, "created_ms", meta_now_ms())) ||
	    (rc = kv_put64(txn, m->dbi_meta, "incompat", 0)) ||
	    (rc = kv_put64(txn, m->dbi_meta, "next_ns", 1)))
		return rc;
	m->next_ns_id = 1;
	return 0;
}

/* An existing store: refuse anything this build cannot read, saying what to do. */
static int check_store(struct meta *m, MDB_txn *txn, char *err, size_t errcap)
{
	uint64_t version = 0, layout = 0, incompat = 0, next_ns = 0;
	MDB_val v;
	int rc;

	rc = kv_get(txn, m->dbi_meta, "magic", &v);
	if (rc == MDB_NOTFOUND || (rc == 0 && (v.mv_size != strlen(META_MAGIC) ||
					       memcmp(v.mv_data, META_MAGIC, v.mv_size) != 0))) {
		snprintf(err, errcap,
			 "%s is not a kvtier metadata store (no kvtier magic in its meta "
			 "table); point the data directory elsewhere or move meta/ away",
			 m->path);
		return -EPROTO;
	}
	if (rc)
		return meta_db_err(m, rc);
	if (kv_get64(txn, m->dbi_meta, "version", &version) != 0) {
		snprintf(err, errcap, "%s: no readable format version; the store is damaged: "
			 "restore it from a backup or move meta/ away (saved contexts and "
			 "memory records are then lost)", m->path);
		return -EPROTO;
	}
	if (version > META_FORMAT_VERSION) {
		snprintf(err, errcap,
			 "%s: written by a newer kvtierd (metadata format %llu, this build "
			 "reads formats 1 to %u); run that kvtierd version or newer",
			 m->path, (unsigned long long)version, META_FORMAT_VERSION);
		return -EPROTO;
	}
	if (version < 1) {
		snprintf(err, errcap, "%s: unknown metadata format %llu; run the kvtierd that "
			 "wrote it", m->path, (unsigned long long)version);
		return -EPROTO;
	}
	/* Format 1 is the only one so far; a later build maps each older version to
	 * the layout signature it had and reads (or migrates) it. */
	if (kv_get64(txn, m->dbi_meta, "layout", &layout) != 0 ||
	    layout != meta_layout_signature()) {
		snprintf(err, errcap,
			 "%s: metadata format %llu but layout signature %016llx, this build "
			 "has %016llx: written by an incompatible build of the same format "
			 "version; run the kvtierd that wrote it",
			 m->path, (unsigned long long)version, (unsigned long long)layout,
			 (unsigned long long)meta_layout_signature());
		return -EPROTO;
	}
	if (kv_get64(txn, m->dbi_meta, "incompat", &incompat) != 0 ||
	    (incompat & ~(uint64_t)META_INCOMPAT_KNOWN)) {
		snprintf(err, errcap, "%s: the store uses features this build does not know "
			 "(incompat %#llx); run a newer kvtierd", m->path,
			 (unsigned long long)incompat);
		return -EPROTO;
	}
	if (kv_get64(txn, m->dbi_meta, "next_ns", &next_ns) != 0 || next_ns == 0) {
		snprintf(err, errcap, "%s: the meta table has no valid next_ns; the store is "
			 "damaged", m->path);
		return -EPROTO;
	}
	rc = open_tables(m, txn, 0);
	if (rc == MDB_NOTFOUND) {
		snprintf(err, errcap, "%s: the store is incomplete (a table is missing); move "
			 "meta/ away", m->path);
		return -EPROTO;
	}
	if (rc)
		return meta_db_err(m, rc);
	m->next_ns_id = next_ns;
	return 0;
}

static int open_txn(struct meta *m, char *err, size_t errcap)
{
	for (;;) {
		MDB_txn *txn;
		MDB_dbi main_dbi;
		MDB_stat st;
		int rc = mdb_txn_begin(m->env, NULL, 0, &txn);

		if (rc) {
			snprintf(err, errcap, "%s: cannot open: %s", m->path, mdb_strerror(rc));
			return meta_db_err(m, rc);
		}
		rc = mdb_dbi_open(txn, "meta", 0, &m->dbi_meta);
		if (rc == MDB_NOTFOUND) {
			/* Only an empty environment becomes a new store. */
			rc = mdb_dbi_open(txn, NULL, 0, &main_dbi);
			if (!rc)
				rc = mdb_stat(txn, main_dbi, &st);
			if (!rc && st.ms_entries != 0) {
				mdb_txn_abort(txn);
				snprintf(err, errcap, "%s holds an LMDB environment that is not "
					 "a kvtier metadata store; point the data directory "
					 "elsewhere", m->path);
				return -EPROTO;
			}
			if (!rc)
				rc = create_store(m, txn);
		} else if (rc == 0) {
			rc = check_store(m, txn, err, errcap);
			if (rc) {
				mdb_txn_abort(txn);
				return rc;
			}
		}
		if (rc == 0)
			rc = mdb_txn_commit(txn);
		else
			mdb_txn_abort(txn);
		if (rc == MDB_MAP_FULL && meta_grow_map(m) == 0)
			continue;
		if (rc)
			snprintf(err, errcap, "%s: cannot open: %s", m->path, mdb_strerror(rc));
		return meta_db_err(m, rc);
	}
}

/* Take DIR/meta/meta.lock: two processes with one store would each keep counts
 * and vector indexes the other's writes never update. */
static int take_lock(struct meta *m, char *err, size_t errcap)
{
	char path[4200];
	int fd;

	snprintf(path, sizeof(path), "%s/meta.lock", m->path);
	fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
	if (fd < 0) {
		int e = errno;

		snprintf(err, errcap, "%s: cannot open meta.lock: %s", m->path, strerror(e));
		return -e;
	}
	if (flock(fd, LOCK_EX | LOCK_NB) < 0) {
		int e = errno;

		close(fd);
		if (e == EWOULDBLOCK) {
			snprintf(err, errcap, "%s is in use by another process (meta.lock is "
				 "held)", m->path);
			return -EBUSY;
		}
		snprintf(err, errcap, "%s: cannot lock meta.lock: %s", m->path, strerror(e));
		return -e;
	}
	m->lockfd = fd;
	return 0;
}

int meta_db_open(struct meta *m, const struct meta_config *cfg, char *err, size_t errcap)
{
	MDB_envinfo info;
	int rc, dead = 0;

	if (snprintf(m->path, sizeof(m->path), "%s/meta", cfg->dir) >= (int)sizeof(m->path)) {
		snprintf(err, errcap, "data directory path too long");
		return -ENAMETOOLONG;
	}
	if (mkdir(m->path, 0700) < 0 && errno != EEXIST) {
		rc = -errno;
		snprintf(err, errcap, "%s: cannot create: %s", m->path, strerror(-rc));
		return rc;
	}
	rc = take_lock(m, err, errcap);
	if (rc)
		return rc;
	m->map_size = cfg->map_size ? cfg->map_size : MAP_DEFAULT;
	if (m->map_size < MAP_MIN)
		m->map_size = MAP_MIN;
	rc = pthread_rwlock_init(&m->maplock, NULL);
	if (rc) {
		rc = -rc;
		goto out_lock;
	}
	rc = mdb_env_create(&m->env);
	if (rc) {
		snprintf(err, errcap, "%s: %s", m->path, mdb_strerror(rc));
		rc = meta_db_err(m, rc);
		goto out_rwlock;
	}
	if ((rc = mdb_env_set_maxdbs(m->env, 8)) ||
	    (rc = mdb_env_set_mapsize(m->env, (size_t)m->map_size))) {
		snprintf(err, errcap, "%s: %s", m->path, mdb_strerror(rc));
		rc = meta_db_err(m, rc);
		goto out_env;
	}
	if ((size_t)mdb_env_get_maxkeysize(m->env) < META_EXP_KEY_MAX) {
		snprintf(err, errcap, "liblmdb allows keys of %d bytes, the metadata store "
			 "needs %u; use a liblmdb built with the default MDB_MAXKEYSIZE",
			 mdb_env_get_maxkeysize(m->env), META_EXP_KEY_MAX);
		rc = -EPROTO;
		goto out_env;
	}
	/* NOTLS: read transactions belong to the owner, not to a thread's slot;
	 * NORDAHEAD: lookups are random. Synchronous commits (no NOSYNC/NOMETASYNC):
	 * an acknowledged write must survive power loss, and group commit makes one
	 * commit serve many writes. */
	rc = mdb_env_open(m->env, m->path, MDB_NOTLS | MDB_NORDAHEAD, 0600);
	if (rc) {
		if (rc == MDB_INVALID || rc == MDB_VERSION_MISMATCH) {
			snprintf(err, errcap, "%s is not a usable LMDB environment (%s)",
				 m->path, mdb_strerror(rc));
			rc = -EPROTO;
		} else {
			snprintf(err, errcap, "%s: cannot open: %s", m->path, mdb_strerror(rc));
			rc = rc > 0 ? -rc : -EIO;
		}
		goto out_env;
	}
	/* Reader slots left by a killed process would pin old pages forever. */
	(void)mdb_reader_check(m->env, &dead);
	if (mdb_env_info(m->env, &info) == 0 && info.me_mapsize > m->map_size)
		m->map_size = info.me_mapsize;
	rc = open_txn(m, err, errcap);
	if (rc)
		goto out_env;
	return 0;

out_env:
	mdb_env_close(m->env);
	m->env = NULL;
out_rwlock:
	pthread_rwlock_destroy(&m->maplock);
out_lock:
	close(m->lockfd);
	m->lockfd = -1;
	return rc;
}

void meta_db_close(struct meta *m)
{
	if (!m->env)
		return;
	if (m->rtxn)
		mdb_txn_abort(m->rtxn);
	m->rtxn = NULL;
	mdb_env_close(m->env);
	m->env = NULL;
	pthread_rwlock_destroy(&m->maplock);
	close(m->lockfd);
	m->lockfd = -1;
}

/* ---- counts at open ----------------------------------------------------------------------
 * Records: one pass over "ns" (each row carries its namespace's totals). Contexts:
 * one pass over "ctx" reading only each manifest's header. No block data. */

int meta_db_load_stats(struct meta *m)
{
	MDB_cursor *cur = NULL;
	MDB_val k, v;
	int rc = meta_read_begin(m);

	if (rc)
		return rc;
	rc = mdb_cursor_open(m->rtxn, m->dbi_ns, &cur);
	while (rc == 0 && (rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT)) == 0) {
		struct meta_ns_row r;
		struct meta_tenant_stats *t;

		if (k.mv_size < 5 || meta_ns_decode(&r, v.mv_data, v.mv_size) != 0) {
			atomic_fetch_add(&m->corrupt, 1);
			continue;
		}
		t = meta_tenant_get(&m->tenants, meta_rd32be(k.mv_data));
		if (!t) {
			rc = ENOMEM;
			break;
		}
		t->records += r.records;
		t->record_bytes += r.bytes;
	}
	if (cur)
		mdb_cursor_close(cur);
	cur = NULL;
	if (rc == MDB_NOTFOUND)
		rc = mdb_cursor_open(m->rtxn, m->dbi_ctx, &cur);
	while (rc == 0 && (rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT)) == 0) {
		struct meta_ctx c;
		struct meta_tenant_stats *t;

		if (meta_ctx_decode_head(k.mv_data, k.mv_size, v.mv_data, v.mv_size, &c) != 0) {
			atomic_fetch_add(&m->corrupt, 1);
			continue;
		}
		t = meta_tenant_get(&m->tenants, c.tenant);
		if (!t) {
			rc = ENOMEM;
			break;
		}
		t->contexts++;
		t->context_bytes += c.bytes;
	}
	if (cur)
		mdb_cursor_close(cur);
	meta_read_end(m);
	return rc == MDB_NOTFOUND ? 0 : meta_db_err(m, rc);
}
