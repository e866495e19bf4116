/*
 * stats.c - libkvtier STATS: fetch the daemon's named counters into a snapshot
 * the caller owns (one allocation: entry table followed by NUL-terminated copies
 * of the names and texts), and look entries up in it.
 */
#include <stdlib.h>
#include <string.h>

#include "client.h"
#include "export.h"

struct kvt_stat {
	const char *name;
	const char *text; /* NULL for numeric entries */
	uint64_t value;
};

struct kvt_stats {
	size_t count;
	struct kvt_stat e[];
	/* followed by the string pool */
};

static int stats_encode(struct kvt_conn *c, struct kvt_op *op, size_t first, size_t count,
			uint8_t *out, size_t cap)
{
	(void)c;
	(void)op;
	(void)first;
	(void)count;
	if (cap < KVT_STATS_REQ_SIZE)
		return KVT_EMSGSIZE;
	kvt_put32(out, 0); /* flags: none defined */
	return KVT_STATS_REQ_SIZE;
}

static char *pool_copy(char **pool, const char *s, size_t len)
{
	char *p = *pool;

	memcpy(p, s, len);
	p[len] = '\0';
	*pool += len + 1;
	return p;
}

static int stats_reply(struct kvt_conn *c, struct kvt_op *op, const struct kvt_req *rq,
		       const uint8_t *body, size_t len)
{
	struct kvt_stats **out = op->ctx;
	struct kvt_stat_entry e;
	struct kvt_stats *s;
	uint32_t count;
	size_t pos = 0, i = 0;
	char *pool;
	int rc;

	(void)c;
	(void)rq;
	rc = kvt_stats_rep_count(body, len, &count);
	if (rc)
		return rc;
	/* Every entry takes at least its 8-byte head: bound before allocating. */
	if (count > len / 8)
		return KVT_EBADMSG;
	/* Strings are at most the body's bytes, plus a NUL for each name and text. */
	s = malloc(sizeof(*s) + count * sizeof(s->e[0]) + len + 2 * (size_t)count);
	if (!s)
		return KVT_ENOMEM;
	pool = (char *)&s->e[count];

	while ((rc = kvt_stats_rep_next(body, len, &pos, &e)) == 1) {
		if (i == count) {
			rc = KVT_EBADMSG;
			break;
		}
		s->e[i].name = pool_copy(&pool, e.name, e.name_len);
		if (e.kind == KVT_STAT_TEXT) {
			s->e[i].text = pool_copy(&pool, e.text, e.text_len);
			s->e[i].value = 0;
		} else {
			s->e[i].text = NULL;
			s->e[i].value = e.value;
		}
		i++;
	}
	if (rc == 0 && i != count)
		rc = KVT_EBADMSG;
	if (rc) {
		free(s);
		return rc;
	}
	s->count = count;
	*out = s;
	return 0;
}

KVT_EXPORT int kvt_stats_get(kvt_conn *c, kvt_stats **out)
{
	struct kvt_stats *s = NULL;
	struct kvt_op op;
	int rc;

	if (!c || !out)
		return KVT_EINVAL;
	kvt_op_init_single(&op, KVT_OP_STATS, KVT_STATS_REQ_SIZE, stats_encode, stats_reply, &s);
	rc = kvt_op_run(c, &op);
	if (rc) {
		free(s);
		return rc;
	}
	*out = s;
	return 0;
}

KVT_EXPORT size_t kvt_stats_count(const kvt_stats *s)
{
	return s ? s->count : 0;
}

KVT_EXPORT int kvt_stats_entry(const kvt_stats *s, size_t i, const char **name, uint64_t *value,
			       const char **text)
{
	if (!s || i >= s->count)
		return KVT_ERANGE;
	if (name)
		*name = s->e[i].name;
	if (value)
		*value = s->e[i].value;
	if (text)
		*text = s->e[i].text;
	return 0;
}

KVT_EXPORT bool kvt_stats_find(const kvt_stats *s, const char *name, uint64_t *value)
{
	if (!s || !name)
		return false;
	for (size_t i = 0; i < s->count; i++) {
		if (!s->e[i].text && strcmp(s->e[i].name, name) == 0) {
			if (value)
				*value = s->e[i].value;
			return true;
		}
	}
	return false;
}

KVT_EXPORT void kvt_stats_free(kvt_stats *s)
{
	free(s);
}
