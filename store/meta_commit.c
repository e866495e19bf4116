/*
 * meta_commit.c - the metadata store's committer thread: group commit. It takes every
 * write queued since its last commit (waiting up to commit_interval_ms for more to
 * join), applies the whole group in one LMDB write transaction, commits it with
 * LMDB's synchronous durability, and hands the group back to the owner through the
 * eventfd. Many writers therefore share one commit (one flush of the data file and
 * one synchronous meta-page write) instead of each paying for one.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "meta_internal.h"

/* Row bytes one transaction takes before the group is cut (a single larger write
 * still goes, alone). */
#define BATCH_BYTES ((size_t)64 << 20)

int (*meta_txn_commit_fn)(MDB_txn *txn) = mdb_txn_commit;

void meta_op_free(struct meta_op *op)
{
	if (!op)
		return;
	free(op->row);
	meta_ctx_free(op->ctx_out);
	free(op);
}

static void op_reset(struct meta_op *op)
{
	op->status = 0;
	meta_ctx_free(op->ctx_out);
	op->ctx_out = NULL;
	op->d_contexts = op->d_ctx_bytes = op->d_records = op->d_rec_bytes = 0;
}

/* ---- one transaction ---------------------------------------------------------------- */

struct tx {
	struct meta *m;
	MDB_txn *txn;
	uint64_t next_ns;
	bool next_ns_dirty;
};

/* Absent rows are fine: removing something already gone changes nothing. */
static int del_ok(int rc)
{
	return rc == MDB_NOTFOUND ? 0 : rc;
}

static int del_key(struct tx *t, MDB_dbi dbi, const uint8_t *kb, size_t kl)
{
	MDB_val k = { kl, (void *)kb };

	return del_ok(mdb_del(t->txn, dbi, &k, NULL));
}

static int put_exp(struct tx *t, MDB_dbi dbi, uint64_t expires_ms, const uint8_t *kb, size_t kl)
{
	uint8_t xb[META_EXP_KEY_MAX];
	MDB_val k = { meta_exp_key(xb, expires_ms, kb, kl), xb }, v = { 0, xb };

	return mdb_put(t->txn, dbi, &k, &v, 0);
}

static int del_exp(struct tx *t, MDB_dbi dbi, uint64_t expires_ms, const uint8_t *kb, size_t kl)
{
	uint8_t xb[META_EXP_KEY_MAX];

	return del_key(t, dbi, xb, meta_exp_key(xb, expires_ms, kb, kl));
}

static void corrupt(struct tx *t)
{
	atomic_fetch_add(&t->m->corrupt, 1);
}

/* The manifest under kb, decoded in full into *out (NULL if its row is damaged:
 * counted, and then nothing can be handed back). */
static int take_manifest(struct tx *t, const uint8_t *kb, size_t kl, const MDB_val *v,
			 struct meta_ctx **out)
{
	int rc = meta_ctx_decode(kb, kl, v->mv_data, v->mv_size, out);

	if (rc == -ENOMEM)
		return ENOMEM;
	if (rc)
		corrupt(t);
	return 0;
}

static int apply_ctx_put(struct tx *t, struct meta_op *op)
{
	struct meta *m = t->m;
	uint8_t kb[META_CTX_KEY_MAX];
	size_t kl = meta_ctx_key(kb, op->tenant, op->name, op->name_len);
	MDB_val k = { kl, kb }, v;
	uint64_t expires = meta_rd64(op->row + META_CTX_EXPIRES_OFF);
	int rc = mdb_get(t->txn, m->dbi_ctx, &k, &v);

	op->d_contexts = 1;
	if (rc == 0) {
		struct meta_ctx old;

		if (meta_ctx_decode_head(kb, kl, v.mv_data, v.mv_size, &old) == 0) {
			op->d_contexts = 0;
			op->d_ctx_bytes = -(int64_t)old.bytes;
			if (old.expires_ms &&
			    (rc = del_exp(t, m->dbi_ctx_exp, old.expires_ms, kb, kl)))
				return rc;
			/* Replaced even if it had expired unswept: its block references
			 * go back through the callback, never through the hook. */
			if ((rc = take_manifest(t, kb, kl, &v, &op->ctx_out)))
				return rc;
		} else {
			corrupt(t);
		}
	} else if (rc != MDB_NOTFOUND) {
		return rc;
	}
	v.mv_size = op->row_len;
	v.mv_data = op->row;
	if ((rc = mdb_put(t->txn, m->dbi_ctx, &k, &v, 0)))
		return rc;
	if (expires && (rc = put_exp(t, m->dbi_ctx_exp, expires, kb, kl)))
		return rc;
	op->d_ctx_bytes += (int64_t)meta_rd64(op->row + 24);
	return 0;
}

/* CTX_DEL and CTX_EXPIRE. A delete leaves an expired manifest to the sweeper, so its
 * block references are dropped exactly once, by the expire hook. */
static int apply_ctx_remove(struct tx *t, struct meta_op *op)
{
	struct meta *m = t->m;
	uint8_t kb[META_CTX_KEY_MAX];
	size_t kl = meta_ctx_key(kb, op->tenant, op->name, op->name_len);
	MDB_val k = { kl, kb }, v;
	struct meta_ctx old;
	bool expire = op->kind == META_OP_CTX_EXPIRE;
	int rc = mdb_get(t->txn, m->dbi_ctx, &k, &v);

	if (rc == MDB_NOTFOUND) {
		op->status = -ENOENT;
		return expire ? del_exp(t, m->dbi_ctx_exp, op->expires_ms, kb, kl) : 0;
	}
	if (rc)
		return rc;
	if (meta_ctx_decode_head(kb, kl, v.mv_data, v.mv_size, &old) != 0) {
		corrupt(t);
		if (expire) {
			op->status = -ENOENT;
			return del_exp(t, m->dbi_ctx_exp, op->expires_ms, kb, kl);
		}
		/* A damaged manifest can still be deleted; nothing to hand back. */
		return del_key(t, m->dbi_ctx, kb, kl);
	}
	if (expire ? old.expires_ms != op->expires_ms || old.expires_ms > op->now_ms
		   : old.expires_ms && old.expires_ms <= op->now_ms) {
		op->status = -ENOENT;
		/* An expiry entry that no longer matches its manifest is dropped. */
		return expire ? del_exp(t, m->dbi_ctx_exp, op->expires_ms, kb, kl) : 0;
	}
	if ((rc = take_manifest(t, kb, kl, &v, &op->ctx_out)))
		return rc;
	if ((rc = del_key(t, m->dbi_ctx, kb, kl)))
		return rc;
	if (old.expires_ms && (rc = del_exp(t, m->dbi_ctx_exp, old.expires_ms, kb, kl)))
		return rc;
	op->d_contexts = -1;
	op->d_ctx_bytes = -(int64_t)old.bytes;
	return 0;
}

/* The "ns" row of (tenant, ns): 0 and *found, or an LMDB error; a damaged row is
 * EIO for the op (MDB_CORRUPTED here). */
static int get_ns(struct tx *t, const uint8_t *nk, size_t nkl, struct meta_ns_row *r,
		  bool *found)
{
	MDB_val k = { nkl, (void *)nk }, v;
	int rc = mdb_get(t->txn, t->m->dbi_ns, &k, &v);

	*found = false;
	if (rc == MDB_NOTFOUND)
		return 0;
	if (rc)
		return rc;
	if (meta_ns_decode(r, v.mv_data, v.mv_size) != 0) {
		corrupt(t);
		return MDB_CORRUPTED;
	}
	*found = true;
	return 0;
}

static int put_ns(struct tx *t, const uint8_t *nk, size_t nkl, const struct meta_ns_row *r)
{
	uint8_t b[META_NS_ROW];
	MDB_val k = { nkl, (void *)nk }, v = { sizeof(b), b };

	if (r->records == 0)
		return del_key(t, t->m->dbi_ns, nk, nkl);
	meta_ns_encode(b, r);
	return mdb_put(t->txn, t->m->dbi_ns, &k, &v, 0);
}

static uint64_t sub_floor(uint64_t a, uint64_t b)
{
	return a > b ? a - b : 0;
}

/* Take a record out of its namespace's totals; the last embedded record going
 * releases the namespace's dimension. */
static void ns_sub(struct meta_ns_row *ns, const struct meta_rec_view *v)
{
	ns->records = sub_floor(ns->records, 1);
	ns->bytes = sub_floor(ns->bytes, meta_rec_bytes(v));
	if (v->dim)
		ns->embedded = sub_floor(ns->embedded, 1);
	if (ns->embedded == 0)
		ns->dim = 0;
}

static int apply_rec_put(struct tx *t, struct meta_op *op)
{
	struct meta *m = t->m;
	uint8_t nk[META_NS_KEY_MAX], rk[META_REC_KEY_MAX];
	size_t nkl = meta_ns_key(nk, op->tenant, op->name, op->name_len), rkl;
	struct meta_ns_row ns = { 0 };
	struct meta_rec_view nv, ov;
	MDB_val k, v;
	bool found;
	int rc;

	if ((rc = get_ns(t, nk, nkl, &ns, &found)))
		return rc;
	if (!found) {
		ns.id = t->next_ns++;
		t->next_ns_dirty = true;
	}
	/* The owner checked too, against what it knew then; this is the authority. */
	if (op->dim && ns.dim && ns.dim != op->dim) {
		op->status = -ERANGE;
		return 0;
	}
	rkl = meta_rec_key(rk, op->tenant, ns.id, op->key, op->key_len);
	k.mv_size = rkl;
	k.mv_data = rk;
	rc = mdb_get(t->txn, m->dbi_rec, &k, &v);
	if (rc == 0) {
		if (meta_rec_view(v.mv_data, v.mv_size, false, &ov) == 0) {
			ns_sub(&ns, &ov);
			op->d_records = -1;
			op->d_rec_bytes = -(int64_t)meta_rec_bytes(&ov);
			if (ov.expires_ms && (rc = del_exp(t, m->dbi_rec_exp, ov.expires_ms, rk, rkl)))
				return rc;
			meta_rec_set_created(op->row, op->row_len, ov.created_ms);
		} else {
			corrupt(t);
		}
	} else if (rc != MDB_NOTFOUND) {
		return rc;
	}
	if (meta_rec_view(op->row, op->row_len, false, &nv) != 0)
		return EINVAL; /* the owner encoded it: cannot happen */
	v.mv_size = op->row_len;
	v.mv_data = op->row;
	if ((rc = mdb_put(t->txn, m->dbi_rec, &k, &v, 0)))
		return rc;
	if (nv.expires_ms && (rc = put_exp(t, m->dbi_rec_exp, nv.expires_ms, rk, rkl)))
		return rc;
	ns.records++;
	ns.bytes += meta_rec_bytes(&nv);
	if (nv.dim) {
		ns.embedded++;
		ns.dim = nv.dim;
	}
	op->d_records += 1;
	op->d_rec_bytes += (int64_t)meta_rec_bytes(&nv);
	return put_ns(t, nk, nkl, &ns);
}

/* REC_DEL and REC_EXPIRE. */
static int apply_rec_remove(struct tx *t, struct meta_op *op)
{
	struct meta *m = t->m;
	bool expire = op->kind == META_OP_REC_EXPIRE;
	uint8_t nk[META_NS_KEY_MAX], rkb[META_REC_KEY_MAX];
	const uint8_t *rk = rkb;
	size_t nkl = 0, rkl;
	struct meta_ns_row ns = { 0 };
	struct meta_rec_view ov;
	MDB_val k, v;
	bool found = false;
	int rc;

	if (expire) {
		rk = op->xkey;
		rkl = op->xkey_len;
	} else {
		nkl = meta_ns_key(nk, op->tenant, op->name, op->name_len);
		if ((rc = get_ns(t, nk, nkl, &ns, &found)))
			return rc;
		if (!found) {
			op->status = -ENOENT;
			return 0;
		}
		rkl = meta_rec_key(rkb, op->tenant, ns.id, op->key, op->key_len);
	}
	k.mv_size = rkl;
	k.mv_data = (void *)rk;
	rc = mdb_get(t->txn, m->dbi_rec, &k, &v);
	if (rc == MDB_NOTFOUND) {
		op->status = -ENOENT;
		return expire ? del_exp(t, m->dbi_rec_exp, op->expires_ms, rk, rkl) : 0;
	}
	if (rc)
		return rc;
	if (meta_rec_view(v.mv_data, v.mv_size, false, &ov) != 0) {
		corrupt(t);
		if (expire) {
			op->status = -ENOENT;
			return del_exp(t, m->dbi_rec_exp, op->expires_ms, rk, rkl);
		}
		/* Deleted as asked; its share of the totals is unknown. */
		ns.records = sub_floor(ns.records, 1);
		if ((rc = del_key(t, m->dbi_rec, rk, rkl)))
			return rc;
		return put_ns(t, nk, nkl, &ns);
	}
	if (expire ? ov.expires_ms != op->expires_ms || ov.expires_ms > op->now_ms
		   : ov.expires_ms && ov.expires_ms <= op->now_ms) {
		op->status = -ENOENT;
		return expire ? del_exp(t, m->dbi_rec_exp, op->expires_ms, rk, rkl) : 0;
	}
	if (expire) {
		/* The owner learns which record went (for its vector index). */
		op->name_len = ov.ns_len;
		memcpy(op->name, ov.ns, ov.ns_len);
		op->name[ov.ns_len] = 0;
		op->key_len = ov.key_len;
		memcpy(op->key, ov.key, ov.key_len);
		op->key[ov.key_len] = 0;
		nkl = meta_ns_key(nk, op->tenant, op->name, op->name_len);
		if ((rc = get_ns(t, nk, nkl, &ns, &found)))
			return rc;
		if (!found || ns.id != meta_rd64be(rk + 4))
			corrupt(t); /* a record without its namespace row */
	}
	op->d_records = -1;
	op->d_rec_bytes = -(int64_t)meta_rec_bytes(&ov);
	ns_sub(&ns, &ov);
	if ((rc = del_key(t, m->dbi_rec, rk, rkl)))
		return rc;
	if (ov.expires_ms && (rc = del_exp(t, m->dbi_rec_exp, ov.expires_ms, rk, rkl)))
		return rc;
	if (expire && (!found || ns.id != meta_rd64be(rk + 4)))
		return 0;
	return put_ns(t, nk, nkl, &ns);
}

static int apply_one(struct tx *t, struct meta_op *op)
{
	switch (op->kind) {
	case META_OP_CTX_PUT:
		return apply_ctx_put(t, op);
	case META_OP_CTX_DEL:
	case META_OP_CTX_EXPIRE:
		return apply_ctx_remove(t, op);
	case META_OP_REC_PUT:
		return apply_rec_put(t, op);
	case META_OP_REC_DEL:
	case META_OP_REC_EXPIRE:
		return apply_rec_remove(t, op);
	}
	return EINVAL;
}

/* Apply ops[0..n) in one transaction and commit; grow the map and start again on
 * MDB_MAP_FULL. Returns 0 or the LMDB/errno code that failed the whole group. */
static int run_txn(struct meta *m, struct meta_op **ops, size_t n)
{
	for (;;) {
		struct tx t = { m, NULL, m->next_ns_id, false };
		int rc;

		for (size_t i = 0; i < n; i++)
			op_reset(ops[i]);
		rc = mdb_txn_begin(m->db.env, NULL, 0, &t.txn);
		if (rc)
			return rc;
		for (size_t i = 0; i < n && rc == 0; i++)
			rc = apply_one(&t, ops[i]);
		if (rc == 0 && t.next_ns_dirty) {
			uint8_t b[8];
			MDB_val k = { 7, (void *)"next_ns" }, v = { sizeof(b), b };

			meta_wr64(b, t.next_ns);
			rc = mdb_put(t.txn, m->dbi_meta, &k, &v, 0);
		}
		if (rc == 0)
			rc = meta_txn_commit_fn(t.txn);
		else
			mdb_txn_abort(t.txn);
		if (rc == 0) {
			m->next_ns_id = t.next_ns;
			return 0;
		}
		if (rc == MDB_MAP_FULL && lmdb_env_grow(&m->db) == 0)
			continue;
		return rc;
	}
}

static void fail_all(struct meta_op **ops, size_t n, int status)
{
	for (size_t i = 0; i < n; i++) {
		op_reset(ops[i]);
		ops[i]->status = status;
	}
}

/* Commit ops[0..n). A group that fails for another reason than a dead environment
 * is split in halves, so one bad write (or a group too large for one transaction,
 * MDB_TXN_FULL) fails alone and the others still commit. */
static void process(struct meta *m, struct meta_op **ops, size_t n)
{
	int rc;

	if (atomic_load(&m->failed)) {
		fail_all(ops, n, -EIO);
		return;
	}
	rc = run_txn(m, ops, n);
	if (rc == 0) {
		atomic_fetch_add(&m->commits, 1);
		atomic_fetch_add(&m->fsyncs, 1);
		atomic_fetch_add(&m->writes, n);
		return;
	}
	if (rc == MDB_PANIC) {
		atomic_store(&m->failed, 1);
		fail_all(ops, n, -EIO);
		return;
	}
	if (n > 1) {
		process(m, ops, n / 2);
		process(m, ops + n / 2, n - n / 2);
		return;
	}
	fail_all(ops, 1, meta_db_err(m, rc));
}

/* ---- the thread --------------------------------------------------------------------- */

static void wait_for_group(struct meta *m)
{
	while (!m->stop && m->q_len < META_BATCH_MAX &&
	       lmdb_committer_wait(&m->cv, &m->mu, m->q_first_ms + m->interval_ms))
		;
}

static void *committer_main(void *arg)
{
	struct meta *m = arg;

	pthread_mutex_lock(&m->mu);
	for (;;) {
		struct meta_op *first, *last;
		size_t n = 0, bytes = 0;

		while (!m->q_head && !m->stop)
			pthread_cond_wait(&m->cv, &m->mu);
		if (!m->q_head)
			break;
		/* Group commit: let the group grow until its oldest write has waited the
		 * interval (0: take what is there). */
		if (m->interval_ms)
			wait_for_group(m);
		first = last = m->q_head;
		bytes = first->row_len;
		m->batch[n++] = first;
		while (last->next && n < META_BATCH_MAX &&
		       bytes + last->next->row_len <= BATCH_BYTES) {
			last = last->next;
			bytes += last->row_len;
			m->batch[n++] = last;
		}
		m->q_head = last->next;
		last->next = NULL;
		m->q_len -= n;
		if (!m->q_head)
			m->q_tail = &m->q_head;
		else
			m->q_first_ms = meta_mono_ms();
		pthread_mutex_unlock(&m->mu);

		process(m, m->batch, n);

		pthread_mutex_lock(&m->mu);
		*m->done_tail = first;
		m->done_tail = &last->next;
		lmdb_notify(m->efd);
	}
	pthread_mutex_unlock(&m->mu);
	return NULL;
}

int meta_commit_start(struct meta *m)
{
	int rc;

	m->q_tail = &m->q_head;
	m->done_tail = &m->done_head;
	m->batch = malloc(META_BATCH_MAX * sizeof(*m->batch));
	if (!m->batch)
		return -ENOMEM;
	if ((rc = lmdb_committer_sync_init(&m->mu, &m->cv)))
		goto out_batch;
	if ((rc = pthread_create(&m->thread, NULL, committer_main, m)))
		goto out_sync;
	m->started = true;
	return 0;

out_sync:
	pthread_cond_destroy(&m->cv);
	pthread_mutex_destroy(&m->mu);
out_batch:
	free(m->batch);
	m->batch = NULL;
	return -rc;
}

void meta_commit_stop(struct meta *m)
{
	if (!m->started)
		return;
	lmdb_committer_join(&m->mu, &m->cv, &m->stop, m->thread);
	m->started = false;
	pthread_cond_destroy(&m->cv);
	pthread_mutex_destroy(&m->mu);
	free(m->batch);
	m->batch = NULL;
}

void meta_commit_push(struct meta *m, struct meta_op *head, struct meta_op *tail, size_t n)
{
	tail->next = NULL;
	pthread_mutex_lock(&m->mu);
	if (!m->q_head)
		m->q_first_ms = meta_mono_ms();
	*m->q_tail = head;
	m->q_tail = &tail->next;
	m->q_len += n;
	pthread_cond_signal(&m->cv);
	pthread_mutex_unlock(&m->mu);
}

void meta_commit_finish(struct meta *m, struct meta_op *op)
{
	op->next = NULL;
	pthread_mutex_lock(&m->mu);
	*m->done_tail = op;
	m->done_tail = &op->next;
	pthread_mutex_unlock(&m->mu);
	lmdb_notify(m->efd);
}

struct meta_op *meta_commit_take(struct meta *m)
{
	struct meta_op *head;

	pthread_mutex_lock(&m->mu);
	head = m->done_head;
	m->done_head = NULL;
	m->done_tail = &m->done_head;
	pthread_mutex_unlock(&m->mu);
	return head;
}
