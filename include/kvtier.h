/*
 * kvtier.h - the public interface of libkvtier, the client library of kvtierd.
 *
 * An inference engine links libkvtier to page attention KV blocks in and out of
 * the kvtier daemon. Bulk bytes never cross the socket: the engine registers
 * shared memory regions once, then asks the daemon to copy blocks between its
 * tiers and those regions.
 *
 * Conventions, for every function below unless its comment says otherwise:
 *  - Functions that act return 0 on success and a negative KVT_E* code on failure.
 *    errno is never used to report errors and is left unspecified.
 *  - Predicates return bool.
 *  - A kvt_conn and everything made from it (regions, tickets) may be used by one
 *    thread at a time. Different connections are independent and may be used from
 *    different threads concurrently. The key, error and version helpers are pure
 *    and thread-safe.
 *  - Pointers passed in are borrowed for the duration of the call, except where a
 *    function says it keeps them (the *_start functions keep their item arrays
 *    until kvt_wait returns for that ticket).
 *  - Ownership of anything returned through an out-parameter passes to the caller
 *    only on success; on failure the out-parameter is left untouched.
 */
#ifndef KVTIER_H
#define KVTIER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define KVT_VERSION_MAJOR 0
#define KVT_VERSION_MINOR 1
#define KVT_VERSION_PATCH 0
#define KVT_VERSION_STRING "0.1.0"

/* Highest wire-protocol version this library speaks (see docs/PROTOCOL.md). */
#define KVT_PROTOCOL_VERSION 1

/* Where clients look for the daemon when no path is given and $KVTIER_SOCKET is unset. */
#define KVT_DEFAULT_SOCKET "/run/kvtier/kvtierd.sock"

/* ------------------------------------------------------------------------ */
/* Errors                                                                     */
/* ------------------------------------------------------------------------ */

/*
 * Every error code, once: X(name, value, message).
 * Codes that mean what an errno means carry Linux's generic errno value, negated.
 * Codes specific to kvtier live in their own band, -1000 and below. The same
 * numbers travel in the protocol's status field and print in memstat.
 */
#define KVT_ERRNO_MAP(X)                                                            \
	X(OK, 0, "success")                                                         \
	X(EPERM, -1, "operation not permitted")                                     \
	X(ENOENT, -2, "no such block")                                              \
	X(EINTR, -4, "interrupted")                                                 \
	X(EIO, -5, "input/output error")                                            \
	X(E2BIG, -7, "batch has too many items")                                    \
	X(EBADF, -9, "bad file descriptor")                                         \
	X(EAGAIN, -11, "resource temporarily unavailable")                          \
	X(ENOMEM, -12, "out of memory")                                             \
	X(EACCES, -13, "permission denied")                                         \
	X(EBUSY, -16, "resource busy")                                              \
	X(EEXIST, -17, "already exists")                                            \
	X(EINVAL, -22, "invalid argument")                                          \
	X(EMFILE, -24, "too many open files")                                       \
	X(ENODEV, -19, "no such device")                                            \
	X(EFBIG, -27, "block larger than the tier can hold")                        \
	X(ENOSPC, -28, "no space left in the tier")                                 \
	X(ERANGE, -34, "offset or length outside the region")                       \
	X(ENOSYS, -38, "function not implemented")                                  \
	X(EPROTO, -71, "protocol error")                                            \
	X(EBADMSG, -74, "malformed message")                                        \
	X(EMSGSIZE, -90, "message too long")                                        \
	X(EOPNOTSUPP, -95, "operation not supported")                               \
	X(ECONNRESET, -104, "connection reset by peer")                             \
	X(ENOBUFS, -105, "destination buffer too small")                            \
	X(ETIMEDOUT, -110, "timed out")                                             \
	X(ECONNREFUSED, -111, "connection refused")                                 \
	X(EDQUOT, -122, "tenant quota exceeded")                                    \
	X(ECANCELED, -125, "operation canceled")                                    \
	X(EBADMAGIC, -1001, "bad frame magic")                                      \
	X(EVERSION, -1002, "unsupported protocol version")                          \
	X(EOPCODE, -1003, "unknown opcode")                                         \
	X(EFLAGS, -1004, "unknown must-understand flag")                            \
	X(ENOHELLO, -1005, "HELLO must be the first request")                       \
	X(EREGION, -1006, "unknown region id")                                      \
	X(ENOFD, -1007, "REGISTER arrived without a file descriptor")              \
	X(ESTRAYFD, -1008, "file descriptor arrived without a REGISTER")            \
	X(ESEALS, -1009, "region memfd is not sealed against shrinking")            \
	X(EINFLIGHT, -1010, "too many requests in flight on this connection")       \
	X(EPINNED, -1011, "block is pinned")                                        \
	X(ESHUTDOWN, -1012, "daemon is shutting down")                              \
	X(ECONNLIMIT, -1013, "too many connections")                                \
	X(ERESERVED, -1014, "reserved field is not zero")                           \
	X(EPARTIAL, -1015, "some items of the batch failed; see per-item status")   \
	X(ECLOSED, -1016, "connection closed by the daemon")                        \
	X(EIDLE, -1017, "connection idle for too long")                             \
	X(ETICKET, -1018, "unknown or already completed ticket")                     \
	X(ENOGPU, -1019, "the daemon has no GPU backend (gpu_backend off or no device)") \
	X(EREFERENCED, -1020, "block is part of a saved context")

enum kvt_error {
#define KVT_ERR_ENUM_(name, value, msg) KVT_##name = (value),
	KVT_ERRNO_MAP(KVT_ERR_ENUM_)
#undef KVT_ERR_ENUM_
};

/* A static, human-readable message for an error code; never NULL
 * ("unknown error" for codes not in the table). Thread-safe. */
const char *kvt_strerror(int err);

/* The code's symbolic name without the KVT_ prefix ("ENOENT", "EBADMAGIC"),
 * or "UNKNOWN". Static; thread-safe. */
const char *kvt_errname(int err);

/* The library's version string, e.g. "0.1.0". Static. */
const char *kvt_version(void);

/* ------------------------------------------------------------------------ */
/* Keys                                                                       */
/* ------------------------------------------------------------------------ */

/* A 128-bit block key. All-zero means "no key" (e.g. no parent). */
typedef struct kvt_key {
	uint8_t b[16];
} kvt_key;

/*
 * Everything that makes KV bytes incompatible. Two engines must produce the same
 * salt if and only if their KV blocks are interchangeable. Strings are borrowed
 * for the call; NULL strings are treated as "". The tenant is not part of it:
 * the daemon salts every key with the caller's tenant itself.
 */
typedef struct kvt_salt_params {
	const char *model_id;        /* e.g. "meta-llama/Llama-3.1-8B-Instruct"; required */
	const char *weights_version; /* revision or checksum of the weights */
	const char *kv_dtype;        /* "bf16", "fp8_e4m3", ... incl. quantisation */
	const char *layout;          /* engine's KV layout name, e.g. "vllm-nhd" */
	const char *adapter;         /* LoRA/adapter id, "" for none */
	uint32_t tp_rank;            /* tensor-parallel rank of this shard */
	uint32_t tp_size;            /* tensor-parallel world size (0 treated as 1) */
	uint32_t block_tokens;       /* tokens per block; required, > 0 */
} kvt_salt_params;

/*
 * Derive the model salt from p into *salt. Deterministic across processes,
 * machines and library versions of the same KVT_KEY_SCHEME.
 * Returns 0, or KVT_EINVAL if p, salt or p->model_id is NULL, p->model_id is empty,
 * p->block_tokens is 0, or p->tp_rank >= p->tp_size (a tp_size of 0 counts as 1).
 */
int kvt_key_salt(const kvt_salt_params *p, kvt_key *salt);

/* Version of the key derivation; bumped only if kvt_key_salt/kvt_key_chain change. */
#define KVT_KEY_SCHEME 1

/*
 * Key of the next block of a chain: H(salt, parent, tokens). parent is NULL (or
 * the zero key) for the first block. tokens holds ntokens token ids (ntokens may
 * be 0; tokens may then be NULL). Writes *out; never fails. Thread-safe.
 */
void kvt_key_chain(const kvt_key *salt, const kvt_key *parent, const uint32_t *tokens,
		   size_t ntokens, kvt_key *out);

/* true if every byte of k is zero. */
bool kvt_key_is_zero(const kvt_key *k);

/* true if a and b are the same key. */
bool kvt_key_equal(const kvt_key *a, const kvt_key *b);

/* Format k as 32 lowercase hex digits plus NUL into buf (at least 33 bytes). Returns buf. */
char *kvt_key_format(const kvt_key *k, char *buf);

/* ------------------------------------------------------------------------ */
/* Block descriptor                                                           */
/* ------------------------------------------------------------------------ */

enum kvt_dtype {
	KVT_DTYPE_UNSPEC = 0,
	KVT_DTYPE_F32 = 1,
	KVT_DTYPE_F16 = 2,
	KVT_DTYPE_BF16 = 3,
	KVT_DTYPE_FP8_E4M3 = 4,
	KVT_DTYPE_FP8_E5M2 = 5,
	KVT_DTYPE_INT8 = 6,
};

/* What the bytes of a block are, so codecs and GPU copies can treat them right.
 * Stored with the block and returned by GET unchanged. Reserved fields must be 0. */
typedef struct kvt_block_desc {
	uint16_t dtype;   /* enum kvt_dtype */
	uint16_t layout;  /* engine-defined layout id */
	uint16_t layers;  /* number of layers in the block */
	uint16_t reserved0;
	uint32_t tokens;  /* tokens covered by the block */
	uint32_t reserved1;
} kvt_block_desc;

/* Tiers, as reported by LOOKUP and STATS. */
enum kvt_tier {
	KVT_TIER_HBM = 0,  /* daemon's GPU pool (T0) */
	KVT_TIER_GPU = 0,  /* the same tier, named for what it is whatever memory backs
			    * it: HBM with CUDA, host memory when emulated (STATS t0.memory) */
	KVT_TIER_HOST = 1, /* host RAM arena */
	KVT_TIER_NVME = 2, /* NVMe segment store */
	KVT_TIER_NONE = 255, /* not stored anywhere (PREFETCH) */
};

/* ------------------------------------------------------------------------ */
/* Connections                                                                */
/* ------------------------------------------------------------------------ */

typedef struct kvt_conn kvt_conn;

/* What the daemon said in its HELLO reply. */
typedef struct kvt_server_info {
	uint16_t version;         /* negotiated protocol version */
	uint32_t tenant;          /* the tenant this connection acts as */
	uint32_t max_frame;       /* largest frame (header + body) the daemon accepts */
	uint32_t max_inflight;    /* requests one connection may have outstanding */
	uint32_t max_batch;       /* items in one PUT/GET/LOOKUP/... batch */
	uint32_t max_regions;     /* regions one connection may register */
	uint64_t max_region_size; /* bytes in one region */
	uint64_t max_block_size;  /* bytes in one block */
	char server[64];          /* daemon name and version, NUL-terminated */
} kvt_server_info;

/*
 * Connect to the daemon at path (NULL: $KVTIER_SOCKET, else KVT_DEFAULT_SOCKET)
 * and negotiate the protocol with HELLO. On success *out owns the connection;
 * release it with kvt_conn_close.
 * Returns 0; KVT_EINVAL (path too long or out NULL); KVT_ECONNREFUSED/KVT_ENOENT/
 * KVT_EACCES (socket not reachable); KVT_EVERSION (no common protocol version);
 * KVT_ECONNLIMIT (daemon at its connection limit); KVT_ETIMEDOUT; KVT_ENOMEM;
 * KVT_EPROTO/KVT_EBADMSG (daemon answered nonsense).
 */
int kvt_conn_open(const char *path, kvt_conn **out);

/*
 * Close the connection. Regions registered through it are unregistered and
 * unmapped (the daemon reclaims them and any pins when the socket closes);
 * kvt_region handles made from it become invalid and must not be used, except
 * that kvt_region_destroy on them is still allowed and only frees the handle.
 * Outstanding tickets are abandoned. NULL-safe.
 */
void kvt_conn_close(kvt_conn *c);

/* The daemon's HELLO answer. Valid until kvt_conn_close(c). */
const kvt_server_info *kvt_conn_server(const kvt_conn *c);

/*
 * Limit how long any call on c waits for the daemon, in milliseconds (0 = wait
 * forever, the default). A call that times out returns KVT_ETIMEDOUT and the
 * connection is then broken (every later call returns KVT_ECLOSED), because the
 * stream position is no longer known.
 */
void kvt_conn_set_timeout(kvt_conn *c, int timeout_ms);

/* Round trip with the daemon. Returns 0 or a connection error. */
int kvt_ping(kvt_conn *c);

/* ------------------------------------------------------------------------ */
/* Regions                                                                    */
/* ------------------------------------------------------------------------ */

typedef struct kvt_region kvt_region;

/*
 * Create size bytes of shared memory (a sealed memfd), map it into this process
 * and register it with the daemon. The memory is zero-filled. *out owns it;
 * release with kvt_region_destroy before or after kvt_conn_close.
 * Returns 0; KVT_EINVAL (size 0); KVT_EMSGSIZE (size over max_region_size);
 * KVT_EMFILE (over max_regions); KVT_ENOMEM; a connection error.
 */
int kvt_region_create(kvt_conn *c, size_t size, kvt_region **out);

/*
 * Register memory the caller already has: fd must be a memfd of at least size
 * bytes sealed with F_SEAL_SHRINK (the daemon refuses others with KVT_ESEALS).
 * The library maps it itself; the caller keeps ownership of fd (the library
 * dups what it needs). Errors as kvt_region_create, plus KVT_EBADF.
 */
int kvt_region_register(kvt_conn *c, int fd, size_t size, kvt_region **out);

/* Start of the region's mapping in this process; valid until destroy. */
void *kvt_region_base(const kvt_region *r);

/* Size of the region in bytes. */
size_t kvt_region_size(const kvt_region *r);

/* The daemon's id for the region (as used on the wire). */
uint32_t kvt_region_id(const kvt_region *r);

/*
 * Unregister (if its connection is still open) and unmap the region, and free
 * the handle. Transfers into the region must have completed. NULL-safe.
 * Returns 0, or the daemon's error for UNREGISTER (the handle is freed anyway).
 */
int kvt_region_destroy(kvt_region *r);

/* ------------------------------------------------------------------------ */
/* Blocks                                                                     */
/* ------------------------------------------------------------------------ */

/* One block to store: bytes [offset, offset+length) of region. */
typedef struct kvt_put_item {
	kvt_key key;
	kvt_key parent;          /* previous block of the chain, or zero */
	const kvt_region *region;
	uint64_t offset;
	uint64_t length;         /* 1 .. max_block_size */
	kvt_block_desc desc;
	int status;              /* out: 0 stored (or already present), or KVT_E* */
} kvt_put_item;

/* One block to fetch into region at offset, at most capacity bytes. */
typedef struct kvt_get_item {
	kvt_key key;
	const kvt_region *region;
	uint64_t offset;
	uint64_t capacity;
	int status;              /* out: 0, KVT_ENOENT, KVT_ENOBUFS (length says how much is needed), ... */
	uint64_t length;         /* out: the block's length when known */
	kvt_block_desc desc;     /* out: the block's descriptor when status is 0 */
} kvt_get_item;

/*
 * Store n blocks (n <= max_batch). The bytes are copied by the daemon before it
 * answers; the region may be reused as soon as this returns. Blocks are
 * immutable: putting a key that is present succeeds without copying.
 * Returns 0 if every item's status is 0; KVT_EPARTIAL if some failed (see each
 * item's status: KVT_EREGION, KVT_ERANGE, KVT_EINVAL, KVT_EFBIG, KVT_ENOSPC,
 * KVT_EDQUOT, ...); or a request-level error (then item statuses are unspecified).
 */
int kvt_block_put(kvt_conn *c, kvt_put_item *items, size_t n);

/*
 * Fetch n blocks into the given regions. Every item with status 0 has all of its
 * bytes in place when this returns; no item is ever partially reported as done.
 * Returns 0 if every item's status is 0, KVT_EPARTIAL if some failed (a miss is
 * KVT_ENOENT), or a request-level error.
 */
int kvt_block_get(kvt_conn *c, kvt_get_item *items, size_t n);

/*
 * How many leading keys of the chain keys[0..n) are present. *found receives that
 * count; if tiers is not NULL, tiers[i] (i < *found) receives the enum kvt_tier
 * the block is in. Returns 0 or a request-level error.
 */
int kvt_block_lookup(kvt_conn *c, const kvt_key *keys, size_t n, size_t *found,
		     uint8_t *tiers);

/*
 * Delete, pin or unpin n blocks; status[i] receives each key's result (status may
 * be NULL). Pins belong to the connection: they are released by unpin or when the
 * connection closes. A pinned block is never evicted and cannot be deleted
 * (KVT_EPINNED). Pinning twice from one connection counts twice.
 * Returns 0, KVT_EPARTIAL (see status), or a request-level error.
 */
int kvt_block_delete(kvt_conn *c, const kvt_key *keys, size_t n, int *status);
int kvt_block_pin(kvt_conn *c, const kvt_key *keys, size_t n, int *status);
int kvt_block_unpin(kvt_conn *c, const kvt_key *keys, size_t n, int *status);

/*
 * Ask for n blocks to be brought to tier (KVT_TIER_HOST; KVT_TIER_GPU, the
 * daemon's GPU pool, when it has one; KVT_TIER_NVME is a no-op that only reports)
 * and wait at most deadline_ms for it (0: do not wait). Blocks on NVMe are read,
 * verified and decoded into the host tier in the background; for KVT_TIER_GPU they
 * are then copied into the pool, so a later kvt_gpu_get of them is a device-to-
 * device copy. The reply comes when all are there or at the deadline, whichever is
 * first, and the rest keeps going after it. tiers (n entries, may be NULL) receives
 * where each block is when the daemon answers: KVT_TIER_GPU, KVT_TIER_HOST,
 * KVT_TIER_NVME (not brought up yet, or no room), or KVT_TIER_NONE (not stored).
 * Returns 0, KVT_EOPNOTSUPP (tier not available: KVT_TIER_GPU without a GPU pool),
 * KVT_EINVAL, KVT_E2BIG, or a request-level error.
 */
int kvt_block_prefetch(kvt_conn *c, const kvt_key *keys, size_t n, uint8_t tier,
		       uint32_t deadline_ms, uint8_t *tiers);

/* Eviction hints: what an engine knows and no eviction rule can see. */
enum kvt_hint {
	KVT_HINT_NONE = 0,    /* back to the ordinary eviction order */
	KVT_HINT_RETAIN = 1,  /* will be read again soon (a tool call in flight):
			       * evict only after every block without a hint, for
			       * duration_ms */
	KVT_HINT_RELEASE = 2, /* finished with (the session ended): evict before
			       * every block without a hint; reading it again ends this */
};

/*
 * Give n host-tier blocks an eviction hint. The hint is about host RAM: a block
 * only on NVMe is answered KVT_ENOENT (PREFETCH it first). A retained block is
 * still evicted when nothing else can go, and at most host_retain_share percent of
 * the tier (kvtierd.conf) holds RETAIN at once: past that the nearest deadlines
 * lose it first. A new hint replaces the old one; RETAIN with duration_ms 0 is
 * KVT_HINT_NONE; pinning a block ends its hint, and a pinned block takes none.
 * status (may be NULL) gets, per key, 0, KVT_ENOENT or KVT_EPINNED. Returns 0, KVT_EPARTIAL (see status), KVT_EINVAL (no such hint),
 * or a request-level error; a daemon older than this call answers KVT_EOPCODE.
 */
int kvt_block_hint(kvt_conn *c, const kvt_key *keys, size_t n, int hint, uint32_t duration_ms,
		   int *status);

/* ------------------------------------------------------------------------ */
/* Contexts: named, persistent sessions                                      */
/* ------------------------------------------------------------------------ */

#define KVT_NAME_LEN_MAX 255     /* context names, namespaces, record keys: 1..255 bytes */
#define KVT_CTX_META_MAX 65536   /* bytes of context metadata */

/* A context to save. Everything is borrowed for the call. */
typedef struct kvt_context {
	const char *name;          /* 1..KVT_NAME_LEN_MAX bytes, no NUL inside; per tenant */
	kvt_key model_salt;        /* from kvt_key_salt: what the blocks were made with */
	uint64_t token_count;
	const kvt_key *keys;       /* the context's blocks, in chain order (head first) */
	size_t nkeys;              /* 1 .. max_batch */
	const uint32_t *tokens;    /* optional token ids (NULL or token_count of them) */
	const void *metadata;      /* optional, up to KVT_CTX_META_MAX bytes */
	size_t metadata_len;
	uint32_t ttl_s;            /* expires this many seconds after the save; 0 = never */
} kvt_context;

/*
 * Save a context: returns 0 only once every block it names is durable on NVMe
 * (blocks still only in RAM are written first) and the manifest is committed.
 * Saving again under the same name replaces the context atomically. Blocks a saved
 * context names are never dropped from NVMe while it lives.
 * Returns 0; KVT_ENOENT (a block is stored in no tier; *missing, if not NULL,
 * receives its index); KVT_EOPNOTSUPP (the daemon has no NVMe tier); KVT_ENOSPC (no
 * room on NVMe); KVT_EINVAL (name, sizes); KVT_EMSGSIZE (the request is larger than
 * max_frame); KVT_EIO; a connection error.
 */
int kvt_ctx_save(kvt_conn *c, const kvt_context *ctx, size_t *missing);

/* A loaded (or listed) context; owned by the library. */
typedef struct kvt_ctx_info {
	char name[KVT_NAME_LEN_MAX + 1];
	kvt_key model_salt;
	uint64_t token_count;
	size_t nkeys;
	kvt_key *keys;             /* nkeys (NULL in kvt_ctx_list entries) */
	uint8_t *tiers;            /* load: nkeys, where each block is at the reply */
	size_t resident;           /* load: leading blocks in the asked tier at the reply */
	uint32_t *tokens;          /* NULL if saved without them */
	size_t ntokens;
	uint8_t *metadata;
	size_t metadata_len;
	uint64_t bytes;            /* logical bytes of its blocks */
	uint64_t created_ms;       /* CLOCK_REALTIME milliseconds */
	uint64_t expires_ms;       /* 0 = never */
} kvt_ctx_info;

/*
 * Load a context saved by this tenant: returns its manifest and pages its blocks
 * up to tier (KVT_TIER_HOST, or KVT_TIER_GPU as for kvt_block_prefetch) in chain
 * order, waiting at most deadline_ms; the reply
 * says which blocks are resident (info->tiers, info->resident). Works after daemon
 * restarts without the engine re-sending anything. *out owns the result; free it
 * with kvt_ctx_free. Returns 0, KVT_ENOENT (no such context, or it expired),
 * KVT_EINVAL, KVT_EOPNOTSUPP, or a connection error.
 */
int kvt_ctx_load(kvt_conn *c, const char *name, uint8_t tier, uint32_t deadline_ms,
		 kvt_ctx_info **out);
void kvt_ctx_free(kvt_ctx_info *info); /* NULL-safe */

/*
 * One page of this tenant's contexts whose names start with prefix (NULL or "" for
 * all), in name order, after the name after (NULL: from the start), at most cap
 * entries. *list owns an array of *n entries (keys, tiers, tokens and metadata are
 * NULL in them); free it with kvt_ctx_list_free. *more says whether another page
 * follows (ask again with after = the last name). Returns 0 or an error.
 */
int kvt_ctx_list(kvt_conn *c, const char *prefix, const char *after, size_t cap,
		 kvt_ctx_info **list, size_t *n, bool *more);
void kvt_ctx_list_free(kvt_ctx_info *list, size_t n);

/* Delete a context: its blocks lose this reference and become evictable.
 * Returns 0, KVT_ENOENT, or an error. */
int kvt_ctx_delete(kvt_conn *c, const char *name);

/* ------------------------------------------------------------------------ */
/* Memory records: cross-session long-term memory                            */
/* ------------------------------------------------------------------------ */

#define KVT_MEM_META_MAX 65536   /* bytes of record metadata (text) */
#define KVT_MEM_DIM_MAX 4096     /* embedding dimension */
/* The largest value is a daemon limit: mem_value_max in kvtierd.conf(5). */

/* A record to store. Everything is borrowed for the call. */
typedef struct kvt_mem_record {
	const char *ns;            /* namespace, 1..KVT_NAME_LEN_MAX bytes; per tenant */
	const char *key;           /* 1..KVT_NAME_LEN_MAX bytes */
	const void *value;
	size_t value_len;          /* 0 .. the daemon's mem_value_max */
	const char *metadata;      /* optional text */
	size_t metadata_len;
	const float *embedding;    /* optional; NULL or dim floats */
	uint32_t dim;              /* 0 = none; a namespace's dimension is fixed by its first
				    * record with an embedding */
	uint32_t ttl_s;            /* 0 = never expires */
} kvt_mem_record;

/* A record read back; owned by the library. */
typedef struct kvt_mem_item {
	char ns[KVT_NAME_LEN_MAX + 1];
	char key[KVT_NAME_LEN_MAX + 1];
	uint8_t *value;
	size_t value_len;
	char *metadata;            /* NUL-terminated copy (metadata_len bytes before it) */
	size_t metadata_len;
	float *embedding;          /* NULL if none */
	uint32_t dim;
	uint64_t created_ms, updated_ms, expires_ms; /* CLOCK_REALTIME ms; expires 0 = never */
	float score;               /* search: cosine similarity to the query */
} kvt_mem_item;

/*
 * Insert or replace (ns, key): durable (fsync'd, group-committed with other
 * writers) when this returns 0. Putting the same record again is harmless.
 * Returns 0; KVT_EINVAL (empty or long names, metadata too long, dim > KVT_MEM_DIM_MAX,
 * NaN/Inf in the embedding); KVT_EMSGSIZE (value over mem_value_max, or the request
 * over max_frame); KVT_ERANGE (embedding dimension differs from the namespace's);
 * KVT_ENOSPC; KVT_EIO; a connection error.
 */
int kvt_mem_put(kvt_conn *c, const kvt_mem_record *rec);

/* Read one record; KVT_ENOENT if absent or expired. *out: free with kvt_mem_item_free. */
int kvt_mem_get(kvt_conn *c, const char *ns, const char *key, kvt_mem_item **out);
void kvt_mem_item_free(kvt_mem_item *item); /* NULL-safe */

/* Delete one record (durable when it returns). Returns 0 or KVT_ENOENT. */
int kvt_mem_delete(kvt_conn *c, const char *ns, const char *key);

/* Several records (list or search results); owned by the library. */
typedef struct kvt_mem_items {
	size_t n;
	kvt_mem_item *items;
	bool more;                 /* list: another page follows */
} kvt_mem_items;
void kvt_mem_items_free(kvt_mem_items *items); /* NULL-safe */

/*
 * Records whose namespace starts with ns_prefix (NULL or "" for all of this
 * tenant's), in (namespace, key) order, after (after_ns, after_key) (NULLs: from
 * the start), at most limit (1..1000). Values and embeddings are included.
 * *out: free with kvt_mem_items_free.
 */
int kvt_mem_list(kvt_conn *c, const char *ns_prefix, const char *after_ns, const char *after_key,
		 size_t limit, kvt_mem_items **out);

/*
 * The k (1..1000) records most similar to query (cosine similarity) among those
 * with an embedding in namespaces starting with ns_prefix, best first; exact, not
 * approximate. Returns 0, KVT_ENOENT (no namespace matches ns_prefix), KVT_ERANGE
 * (dim differs from a matching namespace's), KVT_EINVAL, or a connection error.
 */
int kvt_mem_search(kvt_conn *c, const char *ns_prefix, const float *query, uint32_t dim,
		   uint32_t k, kvt_mem_items **out);

/* ------------------------------------------------------------------------ */
/* Pipelining                                                                 */
/* ------------------------------------------------------------------------ */

typedef uint64_t kvt_ticket;

/*
 * Send a PUT or GET and return at once with a ticket; the daemon answers
 * requests in any order. The items array is kept by the library and must stay
 * valid and unchanged until kvt_wait returns for the ticket (which fills the
 * items' out fields) or, for a ticket never waited for, until kvt_conn_close:
 * replies that arrive during other calls are decoded into their items. At most max_inflight tickets may be outstanding.
 * Returns 0 (and *ticket), KVT_EAGAIN (max_inflight outstanding), KVT_E2BIG, or a
 * connection error.
 */
int kvt_block_put_start(kvt_conn *c, kvt_put_item *items, size_t n, kvt_ticket *ticket);
int kvt_block_get_start(kvt_conn *c, kvt_get_item *items, size_t n, kvt_ticket *ticket);

/*
 * Wait for ticket to complete; returns what the synchronous call would have
 * returned. KVT_ETICKET if the ticket is unknown or was already waited for.
 */
int kvt_wait(kvt_conn *c, kvt_ticket ticket);

/* ------------------------------------------------------------------------ */
/* GPU regions: the engine's paged KV cache as a transfer target             */
/* ------------------------------------------------------------------------ */

/*
 * An engine registers the GPU memory of its paged KV cache once, together with
 * how the cache is laid out; the daemon then gathers pages into stored blocks
 * (kvt_gpu_put) and scatters stored blocks into pages (kvt_gpu_get) itself, with
 * CUDA copies on its side. The memory is shared with CUDA IPC: the engine calls
 * cudaIpcGetMemHandle on each of its allocations (vLLM: one per layer) and passes
 * the 64 handle bytes. libkvtier does not link CUDA; it only carries the bytes.
 *
 * Layout, for layer l, plane p (0 = K, 1 = V; planes = 1 for MLA-style caches),
 * page g, token slot s, head h, element d: the element's first byte is at
 *
 *   buffer[layer[l].buffer] + layer[l].offset + p*plane_stride + g*page_stride
 *     + s*token_stride + h*head_stride + d*dim_stride
 *
 * and a stored block is [layer][plane][token][head][dim], densely packed:
 * layers * planes * ntokens * heads * head_dim * elem_size bytes. The daemon
 * refuses a layout whose row elements overlap, or whose elements do not all lie
 * inside their buffer (from layer[l].offset to the buffer's size).
 */
#define KVT_GPU_IPC_HANDLE_SIZE 64 /* sizeof(cudaIpcMemHandle_t) */
#define KVT_GPU_UUID_SIZE 16       /* sizeof(cudaUUID_t) */
#define KVT_GPU_MAX_BUFFERS 512    /* allocations in one registration */
#define KVT_GPU_MAX_LAYERS 256     /* layers in one registration */

/* One CUDA allocation of the engine. */
typedef struct kvt_gpu_buffer {
	uint8_t ipc_handle[KVT_GPU_IPC_HANDLE_SIZE]; /* from cudaIpcGetMemHandle(ptr) */
	uint64_t size; /* bytes usable from ptr (the allocation's base) */
} kvt_gpu_buffer;

/* Where one layer's cache starts: a buffer index and a byte offset into it. */
typedef struct kvt_kv_layer {
	uint32_t buffer;
	uint64_t offset;
} kvt_kv_layer;

typedef struct kvt_kv_layout {
	uint32_t layers;      /* 1..KVT_GPU_MAX_LAYERS */
	uint32_t planes;      /* 1 or 2 */
	uint32_t heads;       /* KV heads (of this tensor-parallel shard), >= 1 */
	uint32_t head_dim;    /* elements per head, >= 1 */
	uint32_t elem_size;   /* 1, 2 or 4 bytes */
	uint32_t page_tokens; /* token slots per page, >= 1 */
	uint64_t num_pages;   /* pages per layer; page ids must be below it */
	int64_t plane_stride; /* byte strides, see above */
	int64_t page_stride;
	int64_t token_stride;
	int64_t head_stride;
	int64_t dim_stride;
	uint16_t dtype;       /* enum kvt_dtype of stored blocks; must fit elem_size;
			       * 0: F32 when elem_size is 4, else unspecified */
	uint16_t layout_id;   /* stored as the blocks' kvt_block_desc.layout */
	const kvt_kv_layer *layer; /* layers entries; borrowed for the call */
} kvt_kv_layout;

/*
 * Register n CUDA allocations (bufs[0..n), 1..KVT_GPU_MAX_BUFFERS) laid out as
 * layout, on the GPU whose cudaDeviceProp.uuid is dev_uuid. On success
 * *region_id is the GPU region's id on this connection (its own numbering,
 * separate from host regions). The daemon opens the handles and keeps them open
 * until kvt_gpu_region_destroy or the connection closes; the engine must keep the
 * allocations alive until then. Everything passed is borrowed for the call.
 * Returns 0; KVT_EINVAL (NULL arguments, n or layers out of range, a layout the
 * daemon refuses: bad fields, overlapping row elements, dtype not matching
 * elem_size, a layer naming a buffer >= n); KVT_ERANGE (a layer's elements reach
 * outside its buffer); KVT_ENODEV (the daemon has no GPU with that UUID);
 * KVT_ENOGPU (the daemon's GPU backend is off); KVT_EOPNOTSUPP (the backend is
 * the emulated one, which takes only kvt_gpu_region_register_emulated);
 * KVT_EMFILE (over gpu_max_regions); KVT_EACCES/KVT_EIO (CUDA refused a handle);
 * KVT_EMSGSIZE (the registration does not fit max_frame); KVT_ENOMEM; a
 * connection error.
 */
int kvt_gpu_region_register(kvt_conn *c, const kvt_gpu_buffer *bufs, size_t n,
			    const kvt_kv_layout *layout, const uint8_t dev_uuid[KVT_GPU_UUID_SIZE],
			    uint32_t *region_id);

/*
 * The same with host regions of c standing in for the device allocations (buffer
 * i is regions[i], its whole size), for daemons running gpu_backend = emulated:
 * tests and CPU-only development of the GPU path. The regions must stay
 * registered while the GPU region is (the daemon keeps their memory mapped until
 * the GPU region is gone in any case). Returns as kvt_gpu_region_register, plus
 * KVT_EREGION (a region not registered on c); KVT_EOPNOTSUPP if the daemon's
 * backend is not the emulated one.
 */
int kvt_gpu_region_register_emulated(kvt_conn *c, kvt_region *const *regions, size_t n,
				     const kvt_kv_layout *layout, uint32_t *region_id);

/*
 * Release a GPU region. Transfers still running on it finish first; the daemon
 * closes its IPC mappings once none uses them. Returns 0, KVT_EREGION (not a GPU
 * region of this connection), KVT_ENOGPU, or a connection error.
 */
int kvt_gpu_region_destroy(kvt_conn *c, uint32_t region_id);

/*
 * One block <-> pages transfer. The block holds ntokens tokens starting at
 * sequence position first_token. pages[0..npages) are the page ids holding them:
 * pages[0] is the page of token first_token, at slot first_token % page_tokens,
 * and each next page continues where the previous one ends, so npages must be
 * exactly ceil((first_token % page_tokens + ntokens) / page_tokens).
 */
typedef struct kvt_gpu_item {
	kvt_key key;
	kvt_key parent;         /* put: previous block of the chain, or zero; get: zero */
	uint32_t region_id;     /* a GPU region of this connection */
	uint32_t first_token;
	uint32_t ntokens;       /* >= 1 */
	const uint32_t *pages;  /* borrowed for the call */
	uint32_t npages;
	int status;             /* out: 0 or a KVT_E* code, per item */
	uint64_t length;        /* out (get): the block's length when known */
	kvt_block_desc desc;    /* out (get): the block's descriptor when status is 0 */
} kvt_gpu_item;

/*
 * Store n blocks gathered from GPU pages (n <= max_batch; all items and their
 * page ids go in one request, which must fit max_frame, else KVT_EMSGSIZE, and
 * hold at most gpu_max_pages page ids, else KVT_E2BIG). A stored block is like
 * one kvt_block_put stored: readable with kvt_block_get, with descriptor
 * {dtype, layout_id, layers, ntokens} from the registration. The pages have been
 * read when this returns. Item statuses: 0 (stored, or already present);
 * KVT_EREGION (unknown GPU region); KVT_EINVAL (zero key, ntokens 0, npages not
 * as defined above); KVT_ERANGE (a page id >= num_pages: nothing is read);
 * KVT_EFBIG, KVT_ENOSPC, KVT_EDQUOT (as for kvt_block_put); KVT_EIO (the copy
 * failed). Returns 0, KVT_EPARTIAL (see the statuses), KVT_ENOGPU, or a
 * request-level error. Thread-safety as every call on c.
 */
int kvt_gpu_put(kvt_conn *c, kvt_gpu_item *items, size_t n);

/*
 * Fetch n stored blocks into GPU pages (same limits as kvt_gpu_put). A block of
 * the host tier, or of NVMe (brought up into the host tier first), is scattered
 * into the pages; status 0 means every byte is in device memory when this
 * returns. Item statuses: 0; KVT_ENOENT (miss); KVT_EREGION; KVT_EINVAL (ntokens,
 * npages; or the block's length differs from what the layout gives for ntokens:
 * length says what it is, nothing written); KVT_ERANGE (a page id >= num_pages:
 * nothing written); KVT_EIO. Returns 0, KVT_EPARTIAL, KVT_ENOGPU, or a
 * request-level error.
 */
int kvt_gpu_get(kvt_conn *c, kvt_gpu_item *items, size_t n);

/* ------------------------------------------------------------------------ */
/* Statistics                                                                 */
/* ------------------------------------------------------------------------ */

typedef struct kvt_stats kvt_stats;

/*
 * Fetch the daemon's statistics: a list of named values, numeric or text, named
 * like "t1.used_bytes" or "tenant.1000.bytes" (docs/PROTOCOL.md lists them).
 * A connection sees its own tenant's figures; the daemon's own uid and root see
 * every tenant. *out owns the snapshot; free with kvt_stats_free.
 */
int kvt_stats_get(kvt_conn *c, kvt_stats **out);

/* Number of entries in the snapshot. */
size_t kvt_stats_count(const kvt_stats *s);

/*
 * Entry i (< count): *name, and either *value (numeric entry; *text = NULL) or
 * *text (text entry; *value = 0). Pointers stay valid until kvt_stats_free.
 * Returns 0 or KVT_ERANGE.
 */
int kvt_stats_entry(const kvt_stats *s, size_t i, const char **name, uint64_t *value,
		    const char **text);

/* true and *value if a numeric entry called name exists. */
bool kvt_stats_find(const kvt_stats *s, const char *name, uint64_t *value);

/* Free a snapshot. NULL-safe. */
void kvt_stats_free(kvt_stats *s);

#ifdef __cplusplus
}
#endif

#endif /* KVTIER_H */
