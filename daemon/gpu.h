/*
 * gpu.h - engine GPU memory as a transfer target: the backend interface that
 * gathers an engine's KV pages into a host-tier block (GPU_PUT) and scatters a
 * block into pages (GPU_GET), and the request handlers built on it (gpu.c).
 *
 * Two backends: CUDA (gpu_cuda.c, only in builds with KVT_HAVE_CUDA: CUDA IPC
 * handles opened with cudaIpcOpenMemHandle, copies on per-worker streams) and an
 * emulated one (gpu_emu.c: the "device memory" is host regions the client
 * registered, copied with the CPU reference kernels), so the whole GPU_* path
 * runs in tests on machines without a GPU. Which one runs is gpu_backend
 * (auto | cuda | emulated | off).
 *
 * Threads: probe, open_region, close_region and stats run on the loop thread;
 * put and get run on a copy worker and return only when the copy has finished
 * (the CUDA backend synchronises its stream there), so the loop never waits for
 * a device.
 *
 * The GPU tier (T0, store/t0.h) is a pool the backend allocates (pool ops: device
 * memory with CUDA, host memory when emulated) holding copies of blocks the host
 * tier also holds; GPU_GET serves a T0 block straight from the pool.
 */
#ifndef KVTD_GPU_H
#define KVTD_GPU_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "kvlayout.h"
#include "proto.h"
#include "t0.h"
#include "t1.h"

struct server;
struct conn;
struct kvt_hdr;
struct kvt_stats_writer;
struct kvtd_config;

enum gpu_backend_kind { GPU_BACKEND_AUTO = 0, GPU_BACKEND_CUDA, GPU_BACKEND_EMULATED, GPU_BACKEND_OFF };

/* What a registration asks a backend to open. */
struct gpu_region_spec {
	const struct kvl_layout *layout;
	uint32_t nbuffers;
	const struct kvt_gpu_buf_wire *bufs; /* CUDA: the IPC handles and sizes */
	uint8_t *const *host_base;           /* emulated: each buffer's host mapping */
	const uint8_t *uuid;                 /* CUDA: the device, 16 bytes */
	const uint32_t *layer_buffer;        /* per layer */
	const uint64_t *layer_offset;        /* per layer */
};

/* One block <-> pages copy, run on a worker. The block is the host-tier block's
 * extents, in order, blen bytes in all (= kvl_block_bytes(layout, ntokens)). */
struct gpu_copy {
	const struct kvl_layout *layout;
	const uint32_t *pages;  /* the item's page ids, host memory, checked < num_pages */
	uint32_t npages;
	uint32_t first_slot;    /* first_token % page_tokens */
	uint32_t ntokens;
	const struct t1_extent *ext;
	size_t next;
	uint64_t blen;
	bool src_pool;          /* get: ext is T0 pool memory (device memory with CUDA) */
};

struct gpu_backend;

struct gpu_ops {
	/* Open the memory of a registration; *priv is the backend's handle.
	 * 0 or a KVT_E* code (KVT_ENODEV, KVT_EACCES, KVT_EIO, KVT_ENOMEM). */
	int (*open_region)(struct gpu_backend *b, const struct gpu_region_spec *spec, void **priv);
	void (*close_region)(struct gpu_backend *b, void *priv);
	/* pages -> block (gather) and block -> pages (scatter); worker thread; 0 or
	 * KVT_EIO / KVT_ENOMEM / KVT_ERANGE. */
	int (*put)(struct gpu_backend *b, void *priv, const struct gpu_copy *cp);
	int (*get)(struct gpu_backend *b, void *priv, const struct gpu_copy *cp);
	void (*destroy)(struct gpu_backend *b);
};

struct gpu_backend {
	const struct gpu_ops *ops;
	uint16_t kind;         /* KVT_GPU_KIND_* the backend accepts */
	char name[64];         /* gpu.backend */
	char device[256];      /* gpu.device */
	char pinned[256];      /* how the host arena is pinned for DMA */
	/* The T0 pool's memory (arg: the backend), and what it is, for t0.memory:
	 * never "HBM" unless it is device memory. */
	const struct t0_pool_ops *pool;
	char pool_memory[160];
	void *priv;
};

/* A host-tier block flag of the daemon's (tier2.h owns 0x80000000 and 2): the
 * block was read by GPU_GET since it came into the host tier; the next GPU_GET
 * promotes it into T0. */
#define T1F_GPU_READ 4u

/*
 * Pick and start the backend gpu_backend asks for. *out is NULL (and why says
 * why: "off in the configuration", "no CUDA in this build", "no device: <cuda
 * error string>") when GPU transfers are off; an explicit cuda that cannot start
 * is an error (-ENODEV, why says why).
 */
int gpu_probe(const struct kvtd_config *cfg, struct gpu_backend **out, char *why,
	      size_t whycap);
void gpu_backend_destroy(struct gpu_backend *b); /* NULL-safe */

/* The backends' constructors. gpu_cuda_create returns -ENOSYS in a build
 * without CUDA, -ENODEV with why filled when there is no device. */
int gpu_emu_create(struct gpu_backend **out);
int gpu_cuda_create(struct gpu_backend **out, char *why, size_t whycap);
/* Pin [base, base+len) (the host tier) for DMA with cudaHostRegister; the outcome,
 * success or why not, goes into b->pinned. A no-op for other backends. */
void gpu_cuda_pin_host(struct gpu_backend *b, void *base, size_t len);

/* ---- gpu.c: the protocol side -------------------------------------------------- */

/* Start-up: probe (logs what it found). -errno if an explicit gpu_backend = cuda
 * cannot start. */
int gpu_open(struct server *s);
void gpu_close(struct server *s);
bool gpu_handles(uint16_t opcode);
void gpu_dispatch(struct conn *c, const struct kvt_hdr *h, const uint8_t *body);
/* A connection closes: its GPU regions go (closed once no copy uses them). */
void gpu_conn_release(struct conn *c);
/* Admin STATS entries gpu.* and t0.*. */
void gpu_stats(struct server *s, struct kvt_stats_writer *w);
/* T0 and the other tiers (loop thread): whether T0 holds the block (LOOKUP);
 * DELETE removes it from T0 too; the host tier evicting a block drops its T0
 * copy (T0 holds only blocks the host tier holds). No-ops without T0. */
bool gpu_t0_holds(struct server *s, const struct t1_key *key);
bool gpu_t0_active(const struct server *s);
/* As gpu_t0_holds, and the block counts as accessed (PREFETCH to tier 0). */
bool gpu_t0_touch(struct server *s, const struct t1_key *key);
/* Bytes a tenant holds in T0 (0 without T0). */
uint64_t gpu_t0_tenant_bytes(const struct server *s, uint32_t tenant);
/* PREFETCH and CTX_LOAD to tier 0: copy host-tier block b (committed; the caller
 * holds a reference) into T0 in the background and call done(arg, in_t0) on the
 * loop thread when the copy ends. Returns 0 (done will be called), or -EEXIST
 * (already in T0 or being copied there), -ENOSPC / -EFBIG (no room: everything
 * in T0 is being read, or the block is larger than the pool), -ECANCELED
 * (stopping, or b is not committed), -EDQUOT (over the tenant's T0 share, none of
 * its own blocks free to go), -ENOMEM, -EOPNOTSUPP (no T0); then done is never
 * called. */
int gpu_t0_promote(struct server *s, struct t1_block *b, void (*done)(void *arg, bool in_t0),
		   void *arg);
void gpu_t0_forget(struct server *s, const struct t1_key *key);
void gpu_t0_host_evict(struct server *s, const struct t1_block *b);

#endif /* KVTD_GPU_H */
