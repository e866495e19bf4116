/*
 * t2_index.c - the NVMe tier's index in LMDB: opening and checking the store's
 * meta (version, layout signature), the row layouts, the owner's reads, and the
 * committer's write transactions (one per group commit), including growing the
 * map on MDB_MAP_FULL. The LMDB mechanics it shares with the metadata store are
 * in lmdb_env.c. Tables and field offsets: docs/STORAGE.md.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "t2_internal.h"

/* ---- row layouts --------------------------------------------------------------------- */

void t2_key_encode(uint8_t out[T2_KEY_BYTES], const struct t1_key *k)
{
	t2_put32be(out, k->tenant);
	memcpy(out + 4, k->key.b, 16);
}

void t2_key_decode(struct t1_key *k, const uint8_t in[T2_KEY_BYTES])
{
	k->tenant = t2_get32be(in);
	memcpy(k->key.b, in + 4, 16);
}

void t2_loc_encode(uint8_t out[T2_LOC_BYTES], uint32_t seg, uint64_t off)
{
	t2_put32be(out, seg);
	t2_put64be(out + 4, off);
}

void t2_entry_encode(uint8_t out[T2_ENTRY_BYTES], const struct t2_entry *e)
{
	memset(out, 0, T2_ENTRY_BYTES);
	t2_put32(out + 0, e->loc.seg);
	t2_put32(out + 4, e->has_parent ? 1u : 0u); /* flags: bit 0 = has parent */
	t2_put64(out + 8, e->loc.off);
	t2_put64(out + 16, e->loc.rec_len);
	t2_put64(out + 24, e->len);
	t2_desc_encode(out + 32, &e->desc);
	out[48] = e->codec;
	t2_put32(out + 52, e->refs);
	t2_put64(out + 56, e->created_ms);
	t2_put64(out + 64, e->last_access_ms);
	t2_put64(out + 72, e->access_count);
	memcpy(out + 80, e->parent.b, 16);
}

int t2_entry_decode(struct t2_entry *e, const void *data, size_t len)
{
	const uint8_t *p = data;

	if (len < T2_ENTRY_BYTES)
		return -EBADMSG;
	memset(e, 0, sizeof(*e));
	e->loc.seg = t2_get32(p + 0);
	e->has_parent = t2_get32(p + 4) & 1u;
	e->loc.off = t2_get64(p + 8);
	e->loc.rec_len = t2_get64(p + 16);
	e->len = t2_get64(p + 24);
	t2_desc_decode(&e->desc, p + 32);
	e->codec = p[48];
	e->refs = t2_get32(p + 52);
	e->created_ms = t2_get64(p + 56);
	e->last_access_ms = t2_get64(p + 64);
	e->access_count = t2_get64(p + 72);
	memcpy(e->parent.b, p + 80, 16);
	if (e->loc.rec_len == 0 || e->loc.rec_len % T2_ALIGN || e->loc.off % T2_ALIGN)
		return -EBADMSG;
	return 0;
}

void t2_segrow_encode(uint8_t out[T2_SEGROW_BYTES], const struct t2_segrow *r)
{
	t2_put64(out + 0, r->live_bytes);
	t2_put64(out + 8, r->write_off);
	t2_put64(out + 16, r->nblocks);
	t2_put64(out + 24, r->ref_blocks);
	t2_put64(out + 32, r->logical_bytes);
}

int t2_segrow_decode(struct t2_segrow *r, const void *data, size_t len)
{
	const uint8_t *p = data;

	if (len < T2_SEGROW_BYTES)
		return -EBADMSG;
	r->live_bytes = t2_get64(p + 0);
	r->write_off = t2_get64(p + 8);
	r->nblocks = t2_get64(p + 16);
	r->ref_blocks = t2_get64(p + 24);
	r->logical_bytes = t2_get64(p + 32);
	return 0;
}

/* ---- errors -------------------------------------------------------------------------- */

int t2_index_err(struct t2_index *ix, int rc)
{
	switch (rc) {
	case 0:
		return 0;
	case MDB_NOTFOUND:
		return -ENOENT;
	case MDB_MAP_FULL:
		return -ENOSPC;
	case MDB_PANIC:
	case MDB_CORRUPTED:
	case MDB_PAGE_NOTFOUND:
	case MDB_INVALID:
		/* LMDB cannot go on (a failed meta write leaves the environment
		 * unusable until reopened) or the index is damaged: stop cleanly. */
		atomic_store(&ix->fatal, 1);
		return T2_EFATAL;
	default:
		return rc > 0 ? -rc : -EIO;
	}
}

/* ---- opening ------------------------------------------------------------------------- */

static struct lmdb_format t2_format(void)
{
	return (struct lmdb_format){ T2_META_MAGIC, T2_FORMAT_VERSION, t2_layout_signature(),
				     t2_layout_string(), T2_INCOMPAT_KNOWN };
}

static int open_dbis(struct t2_index *ix, MDB_txn *txn, unsigned flags)
{
	int rc;

	if ((rc = mdb_dbi_open(txn, "blocks", flags, &ix->blocks)) ||
	    (rc = mdb_dbi_open(txn, "byloc", flags, &ix->byloc)) ||
	    (rc = mdb_dbi_open(txn, "children", flags | MDB_DUPSORT, &ix->children)) ||
	    (rc = mdb_dbi_open(txn, "segments", flags, &ix->segments)))
		return rc;
	return 0;
}

struct open_arg {
	struct t2_index *ix;
	uint64_t *segment_size;
	char *err;
	size_t errcap;
};

/* A new store: every table and the meta, in one transaction. */
static int create_store(void *arg, MDB_txn *txn, MDB_dbi meta)
{
	struct open_arg *a = arg;
	const struct lmdb_format f = t2_format();
	int rc;

	if ((rc = open_dbis(a->ix, txn, MDB_CREATE)))
		return rc;
	if ((rc = lmdb_format_write(txn, meta, &f)) ||
	    (rc = lmdb_meta_put64(txn, meta, "segment_size", *a->segment_size)) ||
	    (rc = lmdb_meta_put64(txn, meta, "created_ms", t2_now_ms())) ||
	    (rc = lmdb_meta_put64(txn, meta, "incompat", 0)))
		return rc;
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
			 "%s: index/ is not a kvtier NVMe-tier index (its meta has no kvtier "
			 "magic); point the data directory elsewhere or move this one away",
			 a->ix->dir);
		break;
	case LMDB_FORMAT_NO_VERSION:
		snprintf(a->err, a->errcap, "%s: index meta has no readable format version; "
			 "the store is damaged: move the directory away to start an empty "
			 "cache", a->ix->dir);
		break;
	case LMDB_FORMAT_NEWER:
		snprintf(a->err, a->errcap,
			 "%s: written by a newer kvtierd (store format %llu, this build reads "
			 "formats 1 to %u); run that kvtierd version or newer, or move the "
			 "directory away to start an empty cache",
			 a->ix->dir, (unsigned long long)f->version, T2_FORMAT_VERSION);
		break;
	case LMDB_FORMAT_UNKNOWN:
		snprintf(a->err, a->errcap, "%s: unknown store format %llu; move the directory "
			 "away to start an empty cache", a->ix->dir,
			 (unsigned long long)f->version);
		break;
	case LMDB_FORMAT_LAYOUT:
		snprintf(a->err, a->errcap,
			 "%s: store format %llu but layout signature %016llx, this build has "
			 "%016llx: the store was written by an incompatible build of the same "
			 "format version; run the kvtierd that wrote it, or move the directory "
			 "away to start an empty cache",
			 a->ix->dir, (unsigned long long)f->version,
			 (unsigned long long)f->layout,
			 (unsigned long long)t2_layout_signature());
		break;
	case LMDB_FORMAT_INCOMPAT:
		snprintf(a->err, a->errcap,
			 "%s: the store uses features this build does not know (incompat "
			 "%#llx); run a newer kvtierd, or move the directory away",
			 a->ix->dir, (unsigned long long)f->incompat);
		break;
	}
	return -EPROTO;
}

/* An existing store of this format: its segment size and tables. */
static int check_store(void *arg, MDB_txn *txn, MDB_dbi meta)
{
	struct open_arg *a = arg;
	struct t2_index *ix = a->ix;
	char *err = a->err;
	size_t errcap = a->errcap;
	uint64_t segsz = 0;
	int rc;

	if (lmdb_meta_get64(txn, meta, "segment_size", &segsz) != 0 || segsz < (1u << 20) ||
	    segsz % T2_ALIGN || segsz > LMDB_MAP_MAX) {
		snprintf(err, errcap, "%s: index meta has an invalid segment size; the store is "
			 "damaged: move the directory away", ix->dir);
		return -EPROTO;
	}
	rc = open_dbis(ix, txn, 0);
	if (rc == MDB_NOTFOUND) {
		snprintf(err, errcap, "%s: index is incomplete (a table is missing); move the "
			 "directory away to start an empty cache", ix->dir);
		return -EPROTO;
	}
	if (rc)
		return t2_index_err(ix, rc);
	*a->segment_size = segsz;
	return 0;
}

static int open_txn(struct t2_index *ix, uint64_t *segment_size, bool *created, char *err,
		    size_t errcap)
{
	static const struct lmdb_store_ops ops = { create_store, refuse_store, check_store };
	const struct lmdb_format f = t2_format();
	struct open_arg a = { ix, segment_size, err, errcap };
	enum lmdb_open_stage stage;
	int rc = lmdb_store_open(&ix->db, &ix->meta, &f, &ops, &a, created, &stage);

	if (rc == 0)
		return 0;
	switch (stage) {
	case LMDB_OPEN_BEGIN:
	case LMDB_OPEN_READ:
		break;
	case LMDB_OPEN_FOREIGN:
		snprintf(err, errcap,
			 "%s: index/ holds an LMDB environment that is not a "
			 "kvtier index; point the data directory elsewhere",
			 ix->dir);
		return -EPROTO;
	case LMDB_OPEN_REFUSED:
		return rc;
	case LMDB_OPEN_FAILED:
		snprintf(err, errcap, "%s: cannot open the index: %s", ix->dir,
			 mdb_strerror(rc));
		break;
	}
	return t2_index_err(ix, rc);
}

int t2_index_open(struct t2_index *ix, const char *dir, uint64_t map_size,
		  uint64_t *segment_size, bool *created, char *err, size_t errcap)
{
	char path[4096];
	int rc;

	memset(ix, 0, sizeof(*ix));
	ix->dir = dir;
	if (snprintf(path, sizeof(path), "%s/index", dir) >= (int)sizeof(path))
		return -ENAMETOOLONG;
	rc = lmdb_env_create(&ix->db, map_size);
	if (rc < 0)
		return rc;
	if (rc) {
		snprintf(err, errcap, "%s: cannot set up the index: %s", dir, mdb_strerror(rc));
		return rc > 0 ? -rc : -EIO;
	}
	rc = lmdb_env_open(&ix->db, path);
	if (rc) {
		if (rc == MDB_INVALID || rc == MDB_VERSION_MISMATCH) {
			snprintf(err, errcap, "%s: index/ is not a usable LMDB environment (%s); "
				 "move the directory away to start an empty cache", dir,
				 mdb_strerror(rc));
			rc = -EPROTO;
		} else {
			snprintf(err, errcap, "%s: cannot open the index: %s", dir,
				 mdb_strerror(rc));
			rc = rc > 0 ? -rc : -EIO;
		}
		lmdb_env_close(&ix->db);
		return rc;
	}
	rc = open_txn(ix, segment_size, created, err, errcap);
	if (rc)
		lmdb_env_close(&ix->db);
	return rc;
}

void t2_index_close(struct t2_index *ix)
{
	lmdb_env_close(&ix->db);
}

/* ---- the owner's reads --------------------------------------------------------------- */

/* Start the owner's read transaction with the map lock held shared; end with
 * read_end. */
static int read_begin(struct t2_index *ix)
{
	int rc;

	if (atomic_load(&ix->fatal))
		return T2_EFATAL;
	rc = lmdb_read_begin(&ix->db);
	return rc ? t2_index_err(ix, rc) : 0;
}

static void read_end(struct t2_index *ix)
{
	lmdb_read_end(&ix->db);
}

int t2_index_get(struct t2_index *ix, const struct t1_key *key, struct t2_entry *e)
{
	uint8_t kb[T2_KEY_BYTES];
	MDB_val k = { sizeof(kb), kb }, v;
	int rc = read_begin(ix);

	if (rc)
		return rc;
	t2_key_encode(kb, key);
	rc = mdb_get(ix->db.rtxn, ix->blocks, &k, &v);
	if (rc == 0)
		rc = t2_entry_decode(e, v.mv_data, v.mv_size) ? -ENOENT : 0;
	else
		rc = t2_index_err(ix, rc);
	read_end(ix);
	return rc;
}

size_t t2_index_children(struct t2_index *ix, const struct t1_key *parent, struct t1_key *out,
			 size_t cap)
{
	uint8_t kb[T2_KEY_BYTES];
	MDB_val k = { sizeof(kb), kb }, v;
	MDB_cursor *cur;
	size_t n = 0;
	int rc;

	if (cap == 0 || read_begin(ix) != 0)
		return 0;
	t2_key_encode(kb, parent);
	if (mdb_cursor_open(ix->db.rtxn, ix->children, &cur) == 0) {
		for (rc = mdb_cursor_get(cur, &k, &v, MDB_SET); rc == 0 && n < cap;
		     rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT_DUP)) {
			if (v.mv_size != T2_KEY_BYTES)
				continue;
			t2_key_decode(&out[n++], v.mv_data);
		}
		mdb_cursor_close(cur);
	}
	read_end(ix);
	return n;
}

int t2_index_load_segments(struct t2_index *ix, struct t2_segrow *rows, size_t n,
			   uint32_t *max_id)
{
	MDB_cursor *cur;
	MDB_val k, v;
	int rc = read_begin(ix);

	*max_id = 0;
	if (rc)
		return rc;
	rc = mdb_cursor_open(ix->db.rtxn, ix->segments, &cur);
	if (rc == 0) {
		while ((rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT)) == 0) {
			uint32_t id;

			if (k.mv_size != T2_SEG_KEY_BYTES)
				continue;
			id = t2_get32be(k.mv_data);
			if (id + 1 > *max_id)
				*max_id = id + 1;
			if (id < n && t2_segrow_decode(&rows[id], v.mv_data, v.mv_size) != 0)
				memset(&rows[id], 0, sizeof(rows[id]));
		}
		mdb_cursor_close(cur);
		if (rc == MDB_NOTFOUND)
			rc = 0;
	}
	read_end(ix);
	return t2_index_err(ix, rc);
}

int t2_index_foreach(struct t2_index *ix,
		     int (*fn)(void *arg, const struct t1_key *key, const struct t2_entry *e),
		     void *arg)
{
	MDB_cursor *cur;
	MDB_val k, v;
	int rc = read_begin(ix), stop = 0;

	if (rc)
		return rc;
	rc = mdb_cursor_open(ix->db.rtxn, ix->blocks, &cur);
	if (rc == 0) {
		while (!stop && (rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT)) == 0) {
			struct t1_key key;
			struct t2_entry e;

			if (k.mv_size != T2_KEY_BYTES || t2_entry_decode(&e, v.mv_data, v.mv_size))
				continue;
			t2_key_decode(&key, k.mv_data);
			stop = fn(arg, &key, &e);
		}
		mdb_cursor_close(cur);
		if (rc == MDB_NOTFOUND)
			rc = 0;
	}
	read_end(ix);
	return stop ? stop : t2_index_err(ix, rc);
}

uint64_t t2_index_count(struct t2_index *ix)
{
	MDB_stat st;
	uint64_t n = 0;

	if (read_begin(ix) != 0)
		return 0;
	if (mdb_stat(ix->db.rtxn, ix->blocks, &st) == 0)
		n = st.ms_entries;
	read_end(ix);
	return n;
}

/* ---- the committer's write transactions ---------------------------------------------- */

struct apply_ctx {
	struct t2_index *ix;
	MDB_txn *txn;
	struct t2_segrow *rows;
	bool *dirty;
	size_t nrows;
};

static struct t2_segrow *row(struct apply_ctx *a, uint32_t seg)
{
	if (seg >= a->nrows)
		return NULL;
	a->dirty[seg] = true;
	return &a->rows[seg];
}

static uint64_t sub_floor(uint64_t a, uint64_t b)
{
	return a > b ? a - b : 0;
}

static void account_remove(struct apply_ctx *a, const struct t2_entry *e)
{
	struct t2_segrow *r = row(a, e->loc.seg);

	if (!r)
		return;
	r->live_bytes = sub_floor(r->live_bytes, e->loc.rec_len);
	r->logical_bytes = sub_floor(r->logical_bytes, e->len);
	r->nblocks = sub_floor(r->nblocks, 1);
	if (e->refs)
		r->ref_blocks = sub_floor(r->ref_blocks, 1);
}

static void account_add(struct apply_ctx *a, const struct t2_entry *e)
{
	struct t2_segrow *r = row(a, e->loc.seg);

	if (!r)
		return;
	r->live_bytes += e->loc.rec_len;
	r->logical_bytes += e->len;
	r->nblocks++;
	if (e->refs)
		r->ref_blocks++;
	if (e->loc.off + e->loc.rec_len > r->write_off)
		r->write_off = e->loc.off + e->loc.rec_len;
}

/* Absent keys are fine: a delete of something already gone is a no-op. */
static int del_ok(int rc)
{
	return rc == MDB_NOTFOUND ? 0 : rc;
}

static int get_entry(struct apply_ctx *a, const uint8_t kb[T2_KEY_BYTES], struct t2_entry *e,
		     bool *found)
{
	MDB_val k = { T2_KEY_BYTES, (void *)kb }, v;
	int rc = mdb_get(a->txn, a->ix->blocks, &k, &v);

	*found = false;
	if (rc == MDB_NOTFOUND)
		return 0;
	if (rc)
		return rc;
	/* A row this build cannot decode is treated as absent and overwritten. */
	*found = t2_entry_decode(e, v.mv_data, v.mv_size) == 0;
	return 0;
}

static int put_entry(struct apply_ctx *a, const uint8_t kb[T2_KEY_BYTES], const struct t2_entry *e)
{
	uint8_t vb[T2_ENTRY_BYTES];
	MDB_val k = { T2_KEY_BYTES, (void *)kb }, v = { sizeof(vb), vb };

	t2_entry_encode(vb, e);
	return mdb_put(a->txn, a->ix->blocks, &k, &v, 0);
}

/* Remove a block's rows: blocks, byloc, its children link; and its accounting. */
static int remove_entry(struct apply_ctx *a, const uint8_t kb[T2_KEY_BYTES],
			const struct t2_entry *e)
{
	uint8_t lb[T2_LOC_BYTES], pb[T2_KEY_BYTES];
	MDB_val k = { T2_KEY_BYTES, (void *)kb }, lk = { sizeof(lb), lb };
	int rc;

	if ((rc = del_ok(mdb_del(a->txn, a->ix->blocks, &k, NULL))))
		return rc;
	t2_loc_encode(lb, e->loc.seg, e->loc.off);
	if ((rc = del_ok(mdb_del(a->txn, a->ix->byloc, &lk, NULL))))
		return rc;
	if (e->has_parent) {
		MDB_val pk = { sizeof(pb), pb }, cv = { T2_KEY_BYTES, (void *)kb };

		memcpy(pb, kb, 4); /* the parent is of the same tenant */
		memcpy(pb + 4, e->parent.b, 16);
		if ((rc = del_ok(mdb_del(a->txn, a->ix->children, &pk, &cv))))
			return rc;
	}
	account_remove(a, e);
	return 0;
}

static int apply_insert(struct apply_ctx *a, struct t2_op *op)
{
	uint8_t kb[T2_KEY_BYTES], lb[T2_LOC_BYTES], pb[T2_KEY_BYTES];
	struct t2_entry old, e = op->e;
	bool found;
	int rc;

	t2_key_encode(kb, &op->key);
	if ((rc = get_entry(a, kb, &old, &found)))
		return rc;
	e.refs = 0;
	e.last_access_ms = e.created_ms;
	e.access_count = 0;
	if (found) {
		/* A replaced block keeps its context references and its history. */
		e.refs = old.refs;
		e.last_access_ms = old.last_access_ms;
		e.access_count = old.access_count;
		if ((rc = remove_entry(a, kb, &old)))
			return rc;
	}
	if ((rc = put_entry(a, kb, &e)))
		return rc;
	t2_loc_encode(lb, e.loc.seg, e.loc.off);
	{
		MDB_val lk = { sizeof(lb), lb }, kv = { sizeof(kb), kb };

		if ((rc = mdb_put(a->txn, a->ix->byloc, &lk, &kv, 0)))
			return rc;
	}
	if (e.has_parent) {
		MDB_val pk = { sizeof(pb), pb }, cv = { sizeof(kb), kb };

		memcpy(pb, kb, 4);
		memcpy(pb + 4, e.parent.b, 16);
		rc = mdb_put(a->txn, a->ix->children, &pk, &cv, MDB_NODUPDATA);
		if (rc && rc != MDB_KEYEXIST)
			return rc;
	}
	account_add(a, &e);
	return 0;
}

static int apply_delete(struct apply_ctx *a, struct t2_op *op)
{
	uint8_t kb[T2_KEY_BYTES];
	struct t2_entry e;
	bool found;
	int rc;

	t2_key_encode(kb, &op->key);
	if ((rc = get_entry(a, kb, &e, &found)))
		return rc;
	if (!found) {
		op->status = -ENOENT;
		return 0;
	}
	if (e.refs && !op->force) {
		op->status = -EBUSY;
		return 0;
	}
	return remove_entry(a, kb, &e);
}

static int apply_ref(struct apply_ctx *a, struct t2_op *op, int delta)
{
	uint8_t kb[T2_KEY_BYTES];
	struct t2_entry e;
	struct t2_segrow *r;
	bool found;
	int rc;

	t2_key_encode(kb, &op->key);
	if ((rc = get_entry(a, kb, &e, &found)))
		return rc;
	if (!found || (delta < 0 && e.refs == 0)) {
		op->status = -ENOENT;
		return 0;
	}
	if (delta > 0 && e.refs == UINT32_MAX) {
		op->status = -EOVERFLOW;
		return 0;
	}
	r = row(a, e.loc.seg);
	if (delta > 0) {
		if (e.refs++ == 0 && r)
			r->ref_blocks++;
	} else {
		if (--e.refs == 0 && r)
			r->ref_blocks = sub_floor(r->ref_blocks, 1);
	}
	return put_entry(a, kb, &e);
}

static int apply_touch(struct apply_ctx *a, struct t2_op *op)
{
	uint8_t kb[T2_KEY_BYTES];
	struct t2_entry e;
	bool found;
	int rc;

	t2_key_encode(kb, &op->key);
	if ((rc = get_entry(a, kb, &e, &found)) || !found)
		return rc;
	if (op->touch_ms > e.last_access_ms)
		e.last_access_ms = op->touch_ms;
	e.access_count += op->touch_count;
	return put_entry(a, kb, &e);
}

/* Blocks one drop removes in a transaction: keeps it well under LMDB's dirty-page
 * limit (MDB_TXN_FULL) however small the blocks of a segment are. */
unsigned t2_drop_chunk = 16384;

struct drop_item {
	uint8_t kb[T2_KEY_BYTES];
	uint64_t off;
};

/* Drop the blocks of a segment, unless one is referenced (then nothing more:
 * -EBUSY), at most t2_drop_chunk of them: -EAGAIN says there are more, and the
 * owner queues the drop again. */
static int apply_drop(struct apply_ctx *a, struct t2_op *op)
{
	uint8_t lb[T2_LOC_BYTES];
	MDB_val k = { sizeof(lb), lb }, v;
	struct drop_item *items = NULL;
	size_t n = 0, cap = 0;
	MDB_cursor *cur;
	struct t2_segrow *r;
	int rc;

	t2_loc_encode(lb, op->seg, 0);
	if ((rc = mdb_cursor_open(a->txn, a->ix->byloc, &cur)))
		return rc;
	for (rc = mdb_cursor_get(cur, &k, &v, MDB_SET_RANGE); rc == 0;
	     rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT)) {
		if (k.mv_size != T2_LOC_BYTES || t2_get32be(k.mv_data) != op->seg)
			break;
		if (n >= t2_drop_chunk) {
			op->status = -EAGAIN;
			break;
		}
		if (n == cap) {
			size_t ncap = cap ? cap * 2 : 256;
			struct drop_item *ni = realloc(items, ncap * sizeof(*ni));

			if (!ni) {
				rc = ENOMEM;
				break;
			}
			items = ni;
			cap = ncap;
		}
		/* A malformed row names no block: it is just removed below. */
		if (v.mv_size == T2_KEY_BYTES)
			memcpy(items[n].kb, v.mv_data, T2_KEY_BYTES);
		else
			memset(items[n].kb, 0xff, T2_KEY_BYTES);
		items[n].off = t2_get64be((const uint8_t *)k.mv_data + 4);
		n++;
	}
	mdb_cursor_close(cur);
	if (rc == MDB_NOTFOUND)
		rc = 0;
	/* First pass: a referenced block vetoes the drop (the owner should never ask,
	 * but the index is the authority). */
	for (size_t i = 0; rc == 0 && i < n; i++) {
		struct t2_entry e;
		bool found;

		if ((rc = get_entry(a, items[i].kb, &e, &found)))
			break;
		if (found && e.loc.seg == op->seg && e.loc.off == items[i].off && e.refs) {
			op->status = -EBUSY;
			free(items);
			return 0;
		}
	}
	/* Second pass: every removal accounts for itself in the segment's row; the
	 * row is reset once the last chunk is gone. */
	for (size_t i = 0; rc == 0 && i < n; i++) {
		struct t2_entry e;
		bool found;

		if ((rc = get_entry(a, items[i].kb, &e, &found)))
			break;
		if (found && e.loc.seg == op->seg && e.loc.off == items[i].off) {
			rc = remove_entry(a, items[i].kb, &e);
			op->dropped++;
		} else {
			/* A location row whose block moved on: just remove it. */
			uint8_t ob[T2_LOC_BYTES];
			MDB_val ok = { sizeof(ob), ob };

			t2_loc_encode(ob, op->seg, items[i].off);
			rc = del_ok(mdb_del(a->txn, a->ix->byloc, &ok, NULL));
		}
	}
	free(items);
	if (rc)
		return rc;
	if (op->status == -EAGAIN)
		return 0;
	r = row(a, op->seg);
	if (r)
		memset(r, 0, sizeof(*r));
	return 0;
}

/* A block relocated by cleaning: point it at its copy, if the index still has it
 * where the copy was read from (otherwise it was deleted or replaced meanwhile and
 * the copy is dead space: -ESTALE). Its references, parent and history stay. */
static int apply_move(struct apply_ctx *a, struct t2_op *op)
{
	uint8_t kb[T2_KEY_BYTES], lb[T2_LOC_BYTES];
	MDB_val lk = { sizeof(lb), lb }, kv = { sizeof(kb), kb };
	struct t2_entry e, n;
	bool found;
	int rc;

	t2_key_encode(kb, &op->key);
	if ((rc = get_entry(a, kb, &e, &found)))
		return rc;
	if (!found || e.loc.seg != op->from.seg || e.loc.off != op->from.off ||
	    e.loc.rec_len != op->e.loc.rec_len) {
		op->status = -ESTALE;
		return 0;
	}
	t2_loc_encode(lb, e.loc.seg, e.loc.off);
	if ((rc = del_ok(mdb_del(a->txn, a->ix->byloc, &lk, NULL))))
		return rc;
	account_remove(a, &e);
	n = e;
	n.loc = op->e.loc;
	if ((rc = put_entry(a, kb, &n)))
		return rc;
	t2_loc_encode(lb, n.loc.seg, n.loc.off);
	if ((rc = mdb_put(a->txn, a->ix->byloc, &lk, &kv, 0)))
		return rc;
	account_add(a, &n);
	return 0;
}

/* A cleaning plan reads the index only; running out of memory for it fails the
 * plan, not the group. */
static int apply_plan(struct apply_ctx *a, struct t2_op *op)
{
	int rc;

	if (!op->plan) {
		op->status = -EINVAL;
		return 0;
	}
	rc = t2_plan_build(a->ix, a->txn, op->plan);
	if (rc == ENOMEM) {
		op->status = -ENOMEM;
		return 0;
	}
	return rc;
}

static int apply_one(struct apply_ctx *a, struct t2_op *op)
{
	switch (op->kind) {
	case T2_OP_INSERT:
		return apply_insert(a, op);
	case T2_OP_DELETE:
		return apply_delete(a, op);
	case T2_OP_REF:
		return apply_ref(a, op, 1);
	case T2_OP_UNREF:
		return apply_ref(a, op, -1);
	case T2_OP_DROP_SEG:
		return apply_drop(a, op);
	case T2_OP_TOUCH:
		return apply_touch(a, op);
	case T2_OP_MOVE:
		return apply_move(a, op);
	case T2_OP_PLAN:
		return apply_plan(a, op);
	case T2_OP_FLUSH:
		return 0;
	}
	return 0;
}

static int put_rows(struct apply_ctx *a)
{
	for (size_t i = 0; i < a->nrows; i++) {
		uint8_t kb[T2_SEG_KEY_BYTES], vb[T2_SEGROW_BYTES];
		MDB_val k = { sizeof(kb), kb }, v = { sizeof(vb), vb };
		int rc;

		if (!a->dirty[i])
			continue;
		t2_put32be(kb, (uint32_t)i);
		t2_segrow_encode(vb, &a->rows[i]);
		if ((rc = mdb_put(a->txn, a->ix->segments, &k, &v, 0)))
			return rc;
	}
	return 0;
}

int t2_index_apply(struct t2_index *ix, struct t2_op *ops, struct t2_segrow *rows,
		   bool *dirty, size_t nrows)
{
	struct apply_ctx a = { ix, NULL, NULL, NULL, nrows };
	int rc;

	if (atomic_load(&ix->fatal))
		return T2_EFATAL;
	a.rows = malloc((nrows ? nrows : 1) * sizeof(*a.rows));
	a.dirty = calloc(nrows ? nrows : 1, sizeof(*a.dirty));
	if (!a.rows || !a.dirty) {
		free(a.rows);
		free(a.dirty);
		return -ENOMEM;
	}
	for (;;) {
		memcpy(a.rows, rows, nrows * sizeof(*rows));
		memset(a.dirty, 0, nrows * sizeof(*a.dirty));
		for (struct t2_op *op = ops; op; op = op->next) {
			op->status = 0;
			op->dropped = 0;
			if (op->plan)
				t2_plan_reset(op->plan);
		}
		rc = mdb_txn_begin(ix->db.env, NULL, 0, &a.txn);
		if (rc)
			break;
		for (struct t2_op *op = ops; op && rc == 0; op = op->next) {
			if (op->unsynced)
				continue; /* its data did not become durable */
			rc = apply_one(&a, op);
		}
		if (rc == 0)
			rc = put_rows(&a);
		if (rc == 0) {
			rc = mdb_txn_commit(a.txn);
		} else {
			mdb_txn_abort(a.txn);
		}
		a.txn = NULL;
		if (rc == MDB_MAP_FULL && lmdb_env_grow(&ix->db) == 0)
			continue;
		break;
	}
	if (rc == 0) {
		memcpy(rows, a.rows, nrows * sizeof(*rows));
		for (size_t i = 0; i < nrows; i++)
			dirty[i] = dirty[i] || a.dirty[i];
	}
	free(a.rows);
	free(a.dirty);
	return rc ? t2_index_err(ix, rc) : 0;
}
