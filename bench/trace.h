/*
 * trace.h - a Mooncake KV-cache trace in memory, shared by the benchmarks that
 * replay one (bench_replay, bench_policy).
 *
 * The trace is JSONL, one request a line:
 *   {"timestamp": ms, "input_length": n, "output_length": n, "hash_ids": [..]}
 * where hash_ids name the request's 512-token prefix blocks in order (other keys
 * are skipped; hash_ids and input_length are required). trace_load reads it with
 * a small strict JSON parser; trace_index adds kvtier chain keys and dense ids.
 */
#ifndef KVT_BENCH_TRACE_H
#define KVT_BENCH_TRACE_H

#include <stddef.h>
#include <stdint.h>

#include "kvtier.h"

#define TRACE_BLOCK_TOKENS 512u /* Mooncake's hash_ids cover 512 tokens each */

struct req {
	double ts_ms;
	uint64_t in_len, out_len;
	size_t first; /* index of its first block in the trace's flat arrays */
	uint32_t n;   /* blocks */
};

struct trace {
	struct req *req;
	size_t nreq, req_cap;
	uint64_t *hash;   /* hash_ids of every request, back to back */
	kvt_key *key;     /* chain key of each of those blocks */
	uint32_t *id;     /* dense id of each block's chain key, 0 .. nunique-1 */
	size_t nblocks, hash_cap;
	size_t nunique, nunique_hash;
	uint32_t max_n;
	size_t len_mismatch; /* requests where len(hash_ids) != ceil(input_length / 512) */
};

/* Read the JSONL trace at path into *t. Errors go to stderr, prefixed "who: ".
 * Returns 0, or -errno / -EINVAL / -EIO / -ENOMEM (then *t is empty). */
int trace_load(const char *who, const char *path, struct trace *t);

/*
 * Chain keys (salt, parent, hash_id) for every block, and a dense id per distinct
 * key, so simulations and the daemon see the same block identities; also counts
 * the distinct hash ids. Returns 0 or -ENOMEM.
 */
int trace_index(struct trace *t, const kvt_key *salt);

/* Free what trace_load and trace_index allocated; *t becomes empty. */
void trace_free(struct trace *t);

#endif /* KVT_BENCH_TRACE_H */
