/*
 * meta_db.c - the metadata store's LMDB environment (DIR/meta): opening it, checking
 * or creating its format (magic, version, layout signature), the owner's read
 * transactions, and rebuilding the per-tenant counts at open. The LMDB mechanics
 * it shares with the NVMe tier's index (the environment, map growth, the read
 * transaction, the meta table's format checks) are in lmdb_env.c.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include "meta_internal.h"

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

/* ---- reads ---------------------------------------------------------------------------- */

int meta_read_begin(struct meta *m)
{
	int rc;

	if (atomic_load(&m->failed))
		return -EIO;
	rc = lmdb_read_begin(&m->db);
	return rc ? meta_db_err(m, rc) : 0;
}

void meta_read_end(struct meta *m)
{
	lmdb_read_end(&m->db);
}

/* ---- format ----------------------------------------------------------------------------- */

static struct lmdb_format meta_format(void)
{
	return (struct lmdb_format){ META_MAGIC, META_FORMAT_VERSION, meta_layout_signature(),
				     meta_layout_string(), META_INCOMPAT_KNOWN };
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

struct open_arg {
	struct meta *m;
	char *err;
	size_t errcap;
};

/* A new store: every table and the meta, in one transaction. */
static int create_store(void *arg, MDB_txn *txn, MDB_dbi meta)
{
	struct meta *m = ((struct open_arg *)arg)->m;
	const struct lmdb_format f = meta_format();
	int rc;

	if ((rc = open_tables(m, txn, MDB_CREATE)))
		return rc;
	if ((rc = lmdb_format_write(txn, meta, &f)) ||
	    (rc = lmdb_meta_put64(txn, meta, "created_ms", meta_now_ms())) ||
	    (rc = lmdb_meta_put64(txn, meta, "incompat", 0)) ||
	    (rc = lmdb_meta_put64(txn, meta, "next_ns", 1)))
		return rc;
	m->next_ns_id = 1;
	return 0;
}

/* An existing store this build cannot read: say what to do. */
static int refuse_store(void *arg, enum lmdb_format_verdict verdict,
			const struct lmdb_format_found *f)
{
	struct open_arg *a = arg;

	switch (verdict) {
	case LMDB_FORMAT_OK:
		break;
	case LMDB_FORMAT_NO_MAGIC:
		snprintf(a->err, a->errcap,
			 "%s is not a kvtier metadata store (no kvtier magic in its meta "
			 "table); point the data directory elsewhere or move meta/ away",
			 a->m->path);
		break;
	case LMDB_FORMAT_NO_VERSION:
		snprintf(a->err, a->errcap, "%s: no readable format version; the store is "
			 "damaged: restore it from a backup or move meta/ away (saved "
			 "contexts and memory records are then lost)", a->m->path);
		break;
	case LMDB_FORMAT_NEWER:
		snprintf(a->err, a->errcap,
			 "%s: written by a newer kvtierd (metadata format %llu, this build "
			 "reads formats 1 to %u); run that kvtierd version or newer",
			 a->m->path, (unsigned long long)f->version, META_FORMAT_VERSION);
		break;
	case LMDB_FORMAT_UNKNOWN:
		snprintf(a->err, a->errcap, "%s: unknown metadata format %llu; run the kvtierd "
			 "that wrote it", a->m->path, (unsigned long long)f->version);
		break;
	case LMDB_FORMAT_LAYOUT:
		snprintf(a->err, a->errcap,
			 "%s: metadata format %llu but layout signature %016llx, this build "
			 "has %016llx: written by an incompatible build of the same format "
			 "version; run the kvtierd that wrote it",
			 a->m->path, (unsigned long long)f->version,
			 (unsigned long long)f->layout,
			 (unsigned long long)meta_layout_signature());
		break;
	case LMDB_FORMAT_INCOMPAT:
		snprintf(a->err, a->errcap, "%s: the store uses features this build does not "
			 "know (incompat %#llx); run a newer kvtierd", a->m->path,
			 (unsigned long long)f->incompat);
		break;
	}
	return -EPROTO;
}

/* An existing store of this format: its own meta values and tables. */
static int check_store(void *arg, MDB_txn *txn, MDB_dbi meta)
{
	struct open_arg *a = arg;
	struct meta *m = a->m;
	char *err = a->err;
	size_t errcap = a->errcap;
	uint64_t next_ns = 0;
	int rc;

	if (lmdb_meta_get64(txn, meta, "next_ns", &next_ns) != 0 || next_ns == 0) {
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
	static const struct lmdb_store_ops ops = { create_store, refuse_store, check_store };
	const struct lmdb_format f = meta_format();
	struct open_arg a = { m, err, errcap };
	enum lmdb_open_stage stage;
	bool created = false;
	int rc = lmdb_store_open(&m->db, &m->dbi_meta, &f, &ops, &a, &created, &stage);

	if (rc == 0) {
		m->created = created;
		return 0;
	}
	switch (stage) {
	case LMDB_OPEN_FOREIGN:
		snprintf(err, errcap, "%s holds an LMDB environment that is not "
			 "a kvtier metadata store; point the data directory "
			 "elsewhere", m->path);
		return -EPROTO;
	case LMDB_OPEN_REFUSED:
		return rc;
	case LMDB_OPEN_READ:
		return meta_db_err(m, rc);
	case LMDB_OPEN_BEGIN:
	case LMDB_OPEN_FAILED:
		break;
	}
	snprintf(err, errcap, "%s: cannot open: %s", m->path, mdb_strerror(rc));
	return meta_db_err(m, rc);
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
	int rc;

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
	rc = lmdb_env_create(&m->db, cfg->map_size);
	if (rc < 0)
		goto out_lock;
	if (rc) {
		snprintf(err, errcap, "%s: %s", m->path, mdb_strerror(rc));
		rc = meta_db_err(m, rc);
		goto out_lock;
	}
	if ((size_t)mdb_env_get_maxkeysize(m->db.env) < META_EXP_KEY_MAX) {
		snprintf(err, errcap, "liblmdb allows keys of %d bytes, the metadata store "
			 "needs %u; use a liblmdb built with the default MDB_MAXKEYSIZE",
			 mdb_env_get_maxkeysize(m->db.env), META_EXP_KEY_MAX);
		rc = -EPROTO;
		goto out_env;
	}
	rc = lmdb_env_open(&m->db, m->path);
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
	rc = open_txn(m, err, errcap);
	if (rc)
		goto out_env;
	return 0;

out_env:
	lmdb_env_close(&m->db);
out_lock:
	close(m->lockfd);
	m->lockfd = -1;
	return rc;
}

void meta_db_close(struct meta *m)
{
	if (!m->db.env)
		return;
	lmdb_env_close(&m->db);
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
	rc = mdb_cursor_open(m->db.rtxn, m->dbi_ns, &cur);
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
		rc = mdb_cursor_open(m->db.rtxn, m->dbi_ctx, &cur);
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
