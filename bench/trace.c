/*
 * trace.c - loading a Mooncake KV-cache trace (JSONL) for the benchmarks; see
 * trace.h. Moved here from bench_replay.c unchanged, so that bench_replay and
 * bench_policy read traces with the same parser.
 */
#include "trace.h"

#include <errno.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>

#include "bench_util.h"

#define JSON_MAX_DEPTH 64

struct jp {
	const char *p, *end;
	const char *err;
};

static void jp_ws(struct jp *j)
{
	while (j->p < j->end && (*j->p == ' ' || *j->p == '\t' || *j->p == '\r' || *j->p == '\n'))
		j->p++;
}

static bool jp_eat(struct jp *j, char c)
{
	jp_ws(j);
	if (j->p < j->end && *j->p == c) {
		j->p++;
		return true;
	}
	return false;
}

static bool is_digit(char c)
{
	return c >= '0' && c <= '9';
}

/*
 * A JSON number. *v gets its value; *is_uint says whether it was written as a
 * plain non-negative integer that fits in 64 bits, then in *u. The grammar is
 * checked here, so strtod never sees (or accepts) what JSON does not allow.
 */
static bool jp_number(struct jp *j, double *v, uint64_t *u, bool *is_uint)
{
	const char *s, *p;
	bool neg = false, frac = false, overflow = false;
	uint64_t x = 0;

	jp_ws(j);
	s = p = j->p;
	if (p < j->end && *p == '-') {
		neg = true;
		p++;
	}
	if (p >= j->end || !is_digit(*p)) {
		j->err = "expected a number";
		return false;
	}
	if (*p == '0') {
		p++;
	} else {
		while (p < j->end && is_digit(*p)) {
			unsigned d = (unsigned)(*p - '0');

			if (x > (UINT64_MAX - d) / 10)
				overflow = true;
			else
				x = x * 10 + d;
			p++;
		}
	}
	if (p < j->end && *p == '.') {
		frac = true;
		p++;
		if (p >= j->end || !is_digit(*p)) {
			j->err = "bad number";
			return false;
		}
		while (p < j->end && is_digit(*p))
			p++;
	}
	if (p < j->end && (*p == 'e' || *p == 'E')) {
		frac = true;
		p++;
		if (p < j->end && (*p == '+' || *p == '-'))
			p++;
		if (p >= j->end || !is_digit(*p)) {
			j->err = "bad number";
			return false;
		}
		while (p < j->end && is_digit(*p))
			p++;
	}
	*is_uint = !neg && !frac && !overflow;
	*u = x;
	*v = *is_uint ? (double)x : strtod(s, NULL);
	j->p = p;
	return true;
}

/* A string: *s and *len get its raw contents (escapes left as written). */
static bool jp_string(struct jp *j, const char **s, size_t *len)
{
	jp_ws(j);
	if (j->p >= j->end || *j->p != '"') {
		j->err = "expected a string";
		return false;
	}
	j->p++;
	*s = j->p;
	while (j->p < j->end && *j->p != '"') {
		if ((unsigned char)*j->p < 0x20) {
			j->err = "control character in a string";
			return false;
		}
		if (*j->p == '\\') {
			j->p++;
			if (j->p >= j->end)
				break;
		}
		j->p++;
	}
	if (j->p >= j->end) {
		j->err = "unterminated string";
		return false;
	}
	*len = (size_t)(j->p - *s);
	j->p++;
	return true;
}

static bool jp_skip_value(struct jp *j, int depth);

/* The rest of an array or object after its opening bracket. */
static bool jp_skip_container(struct jp *j, char close, bool object, int depth)
{
	if (jp_eat(j, close))
		return true;
	for (;;) {
		if (object) {
			const char *s;
			size_t len;

			if (!jp_string(j, &s, &len))
				return false;
			if (!jp_eat(j, ':')) {
				j->err = "expected ':'";
				return false;
			}
		}
		if (!jp_skip_value(j, depth + 1))
			return false;
		if (jp_eat(j, close))
			return true;
		if (!jp_eat(j, ',')) {
			j->err = object ? "expected ',' or '}'" : "expected ',' or ']'";
			return false;
		}
	}
}

static bool jp_skip_value(struct jp *j, int depth)
{
	static const char *const lits[] = { "true", "false", "null" };
	const char *s;
	size_t len;
	double v;
	uint64_t u;
	bool is_uint;

	if (depth > JSON_MAX_DEPTH) {
		j->err = "nested too deep";
		return false;
	}
	jp_ws(j);
	if (j->p >= j->end) {
		j->err = "expected a value";
		return false;
	}
	switch (*j->p) {
	case '"':
		return jp_string(j, &s, &len);
	case '[':
		j->p++;
		return jp_skip_container(j, ']', false, depth);
	case '{':
		j->p++;
		return jp_skip_container(j, '}', true, depth);
	default:
		break;
	}
	for (size_t i = 0; i < sizeof(lits) / sizeof(lits[0]); i++) {
		size_t n = strlen(lits[i]);

		if ((size_t)(j->end - j->p) >= n && memcmp(j->p, lits[i], n) == 0) {
			j->p += n;
			return true;
		}
	}
	return jp_number(j, &v, &u, &is_uint);
}

static bool key_is(const char *s, size_t len, const char *name)
{
	return len == strlen(name) && memcmp(s, name, len) == 0;
}

/* Append one hash id to the trace's flat array. */
static int trace_push_hash(struct trace *t, uint64_t h)
{
	if (t->nblocks == t->hash_cap) {
		size_t cap = t->hash_cap ? 2 * t->hash_cap : 65536;
		uint64_t *p = realloc(t->hash, cap * sizeof(*p));

		if (!p)
			return -ENOMEM;
		t->hash = p;
		t->hash_cap = cap;
	}
	t->hash[t->nblocks++] = h;
	return 0;
}

/*
 * One line: {"timestamp": ms, "input_length": n, "output_length": n, "hash_ids": [..]}.
 * Other keys are skipped; hash_ids and input_length are required.
 */
static int parse_request(struct trace *t, const char *line, size_t len, const char **err)
{
	struct jp j = { .p = line, .end = line + len };
	struct req r = { .first = t->nblocks };
	bool have_hash = false, have_in = false;

	if (!jp_eat(&j, '{')) {
		*err = "expected '{'";
		return -EINVAL;
	}
	if (!jp_eat(&j, '}')) {
		for (;;) {
			const char *k;
			size_t klen;
			double v;
			uint64_t u;
			bool is_uint;

			if (!jp_string(&j, &k, &klen))
				goto bad;
			if (!jp_eat(&j, ':')) {
				j.err = "expected ':'";
				goto bad;
			}
			if (key_is(k, klen, "hash_ids")) {
				if (have_hash) {
					j.err = "hash_ids given twice";
					goto bad;
				}
				have_hash = true;
				if (!jp_eat(&j, '[')) {
					j.err = "hash_ids: expected an array";
					goto bad;
				}
				if (!jp_eat(&j, ']')) {
					for (;;) {
						if (!jp_number(&j, &v, &u, &is_uint))
							goto bad;
						if (!is_uint || u > UINT32_MAX) {
							j.err = "hash_ids: expected integers from 0 to 2^32-1";
							goto bad;
						}
						if (trace_push_hash(t, u) != 0) {
							*err = "out of memory";
							return -ENOMEM;
						}
						if (jp_eat(&j, ']'))
							break;
						if (!jp_eat(&j, ',')) {
							j.err = "hash_ids: expected ',' or ']'";
							goto bad;
						}
					}
				}
			} else if (key_is(k, klen, "timestamp")) {
				if (!jp_number(&j, &v, &u, &is_uint))
					goto bad;
				r.ts_ms = v;
			} else if (key_is(k, klen, "input_length") ||
				   key_is(k, klen, "output_length")) {
				bool in = klen == strlen("input_length");

				if (!jp_number(&j, &v, &u, &is_uint))
					goto bad;
				if (!is_uint) {
					j.err = "lengths must be non-negative integers";
					goto bad;
				}
				if (in) {
					r.in_len = u;
					have_in = true;
				} else {
					r.out_len = u;
				}
			} else if (!jp_skip_value(&j, 1)) {
				goto bad;
			}
			if (jp_eat(&j, '}'))
				break;
			if (!jp_eat(&j, ',')) {
				j.err = "expected ',' or '}'";
				goto bad;
			}
		}
	}
	jp_ws(&j);
	if (j.p != j.end) {
		j.err = "text after the object";
		goto bad;
	}
	if (!have_hash || !have_in) {
		*err = !have_hash ? "no hash_ids" : "no input_length";
		return -EINVAL;
	}
	if (t->nblocks - r.first > UINT32_MAX) {
		*err = "too many hash_ids";
		return -EINVAL;
	}
	r.n = (uint32_t)(t->nblocks - r.first);
	if (r.n != (r.in_len + TRACE_BLOCK_TOKENS - 1) / TRACE_BLOCK_TOKENS)
		t->len_mismatch++;
	if (r.n > t->max_n)
		t->max_n = r.n;
	if (t->nreq == t->req_cap) {
		size_t cap = t->req_cap ? 2 * t->req_cap : 4096;
		struct req *p = realloc(t->req, cap * sizeof(*p));

		if (!p) {
			*err = "out of memory";
			return -ENOMEM;
		}
		t->req = p;
		t->req_cap = cap;
	}
	t->req[t->nreq++] = r;
	return 0;
bad:
	*err = j.err ? j.err : "syntax error";
	return -EINVAL;
}

void trace_free(struct trace *t)
{
	free(t->req);
	free(t->hash);
	free(t->key);
	free(t->id);
	memset(t, 0, sizeof(*t));
}

static int cmp_u64_asc(const void *a, const void *b)
{
	return bench_cmp_u64(a, b);
}

static uint64_t key_hash64(const kvt_key *k)
{
	uint64_t h;

	memcpy(&h, k->b, 8); /* keys are hashes already */
	return h;
}

/*
 * Chain keys (salt, parent, hash_id) for every block, and a dense id per distinct
 * key (open addressing over the keys), so the LRU simulation and the daemon see
 * the same block identities.
 */
int trace_index(struct trace *t, const kvt_key *salt)
{
	size_t cap = 1, mask;
	uint32_t *table;
	kvt_key *uniq;
	uint64_t *sorted;

	t->key = malloc((t->nblocks ? t->nblocks : 1) * sizeof(*t->key));
	t->id = malloc((t->nblocks ? t->nblocks : 1) * sizeof(*t->id));
	while (cap < 2 * t->nblocks + 2)
		cap <<= 1;
	mask = cap - 1;
	table = calloc(cap, sizeof(*table));
	uniq = malloc((t->nblocks ? t->nblocks : 1) * sizeof(*uniq));
	sorted = malloc((t->nblocks ? t->nblocks : 1) * sizeof(*sorted));
	if (!t->key || !t->id || !table || !uniq || !sorted) {
		free(table);
		free(uniq);
		free(sorted);
		return -ENOMEM;
	}
	t->nunique = 0;
	for (size_t r = 0; r < t->nreq; r++) {
		const struct req *q = &t->req[r];

		for (uint32_t i = 0; i < q->n; i++) {
			size_t b = q->first + i;
			uint32_t tok = (uint32_t)t->hash[b];
			kvt_key *k = &t->key[b];
			size_t s;

			kvt_key_chain(salt, i ? &t->key[b - 1] : NULL, &tok, 1, k);
			for (s = key_hash64(k) & mask; table[s]; s = (s + 1) & mask)
				if (kvt_key_equal(&uniq[table[s] - 1], k))
					break;
			if (!table[s]) {
				uniq[t->nunique] = *k;
				table[s] = (uint32_t)++t->nunique;
			}
			t->id[b] = table[s] - 1;
		}
	}
	memcpy(sorted, t->hash, t->nblocks * sizeof(*sorted));
	qsort(sorted, t->nblocks, sizeof(*sorted), cmp_u64_asc);
	t->nunique_hash = 0;
	for (size_t i = 0; i < t->nblocks; i++)
		if (i == 0 || sorted[i] != sorted[i - 1])
			t->nunique_hash++;
	free(table);
	free(uniq);
	free(sorted);
	return 0;
}

int trace_load(const char *who, const char *path, struct trace *t)
{
	FILE *f = fopen(path, "r");
	char *line = NULL;
	size_t cap = 0, lineno = 0;
	ssize_t len;
	int rc = 0;

	memset(t, 0, sizeof(*t));
	if (!f) {
		rc = -errno;
		fprintf(stderr, "%s: %s: %s\n", who, path, strerror(errno));
		return rc;
	}
	while ((len = getline(&line, &cap, f)) >= 0) {
		const char *err = NULL;
		struct jp j = { .p = line, .end = line + len };

		lineno++;
		jp_ws(&j);
		if (j.p == j.end)
			continue;
		rc = parse_request(t, line, (size_t)len, &err);
		if (rc) {
			fprintf(stderr, "%s: %s:%zu: %s\n", who, path, lineno, err);
			goto out;
		}
	}
	if (ferror(f)) {
		rc = -EIO;
		fprintf(stderr, "%s: reading %s failed\n", who, path);
		goto out;
	}
	if (t->nreq == 0 || t->nblocks == 0) {
		rc = -EINVAL;
		fprintf(stderr, "%s: %s holds no requests with blocks\n", who, path);
	}
out:
	free(line);
	fclose(f);
	if (rc)
		trace_free(t);
	return rc;
}
