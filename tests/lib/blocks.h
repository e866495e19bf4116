/*
 * blocks.h - blocks for the NVMe-tier integration tests (itest_nvme*.c): block n
 * of namespace ns has a key, a length, a descriptor and bf16-like bytes that are
 * all functions of (ns, n), so a test can check a block it wrote in another life
 * of the daemon; PUT/GET/LOOKUP of such blocks, and bounded STATS polling.
 */
#ifndef KVT_TEST_BLOCKS_H
#define KVT_TEST_BLOCKS_H

#include <stddef.h>
#include <stdint.h>

#include "kvtier.h"

/* A 64 MiB host tier over a 1 GiB NVMe tier of 64 MiB segments. */
#define T2_CONF                                                                        \
	"host_capacity = 64MiB\nnvme_capacity = 1GiB\nnvme_segment_size = 64MiB\n"
/* Longest a test waits for a STATS figure to reach a value. */
#define POLL_MS 30000

/* Block n of namespace ns: its key, length in [lo, hi], descriptor and bytes. */
kvt_key blk_key(uint32_t ns, uint64_t n);
size_t blk_len(uint32_t ns, uint64_t n, size_t lo, size_t hi);
kvt_block_desc blk_desc(uint32_t ns, uint64_t n);
void blk_fill(uint8_t *p, uint32_t ns, uint64_t n, size_t len);

/*
 * bf16-like KV bytes: values of either sign with exponents in a narrow band (as
 * attention keys and values have) and random mantissas, little-endian. zstd
 * shrinks such data a little, the bf16 byte split more, and raw not at all.
 */
void fill_bf16(uint8_t *p, size_t len, uint64_t seed);

/* PUT block (ns, n) of len bytes from r at off (the bytes are written there
 * first). Returns the item's status. */
int put_blk(kvt_conn *c, kvt_region *r, uint64_t off, uint32_t ns, uint64_t n, size_t len,
	    const kvt_key *parent);

/*
 * GET block (ns, n) into dst (at offset 0) and return its status. A block that is
 * returned must be exactly the one written: its length, descriptor and every byte
 * (want: scratch of at least len bytes). Wrong bytes fail the test at once.
 */
int get_blk(kvt_conn *c, kvt_region *dst, uint32_t ns, uint64_t n, size_t len, uint8_t *want);

/* PUT blocks (ns, from..to-1) of blk_len(ns, i, lo, hi) bytes each through r at
 * offset 0; each must succeed. */
void put_blks(kvt_conn *c, kvt_region *r, uint32_t ns, uint64_t from, uint64_t to, size_t lo,
	      size_t hi);

/* PUT blocks (ns, 0..n-1) of len bytes as one chain (each the parent of the next)
 * through r at offset 0; each must succeed. keys (n entries, may be NULL) receives
 * their keys, head first. */
void put_chain(kvt_conn *c, kvt_region *r, uint32_t ns, uint64_t n, size_t len, kvt_key *keys);

/* GET blocks (ns, from..to-1) as get_blk does (lengths as put_blks); each must
 * come back, exactly. */
void get_blks(kvt_conn *c, kvt_region *dst, uint32_t ns, uint64_t from, uint64_t to, size_t lo,
	      size_t hi, uint8_t *want);

/* The end of a case: free want, destroy dst, close c, and stop the daemon cleanly
 * (removing its directory). */
struct kvtd;
void finish(struct kvtd *d, kvt_conn *c, kvt_region *dst, uint8_t *want);

/* The tier LOOKUP reports for one key, or -1 if it is not found. */
int lookup_tier(kvt_conn *c, kvt_key k);

/* Poll STATS until name == want (or >= want) for at most POLL_MS; fails with the
 * last value seen. */
void wait_stat_eq(kvt_conn *c, const char *name, uint64_t want);
void wait_stat_ge(kvt_conn *c, const char *name, uint64_t want);

/* T2_CONF, "io_backend = <backend>" and extra into buf. */
void conf_for(char *buf, size_t cap, const char *backend, const char *extra);

#endif /* KVT_TEST_BLOCKS_H */
