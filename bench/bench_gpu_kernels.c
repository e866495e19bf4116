/*
 * bench_gpu_kernels.c - the CUDA gather/scatter (kernels/kvcopy.cu) on a
 * Llama-3-8B-like paged KV cache (32 layers, 8 KV heads of 128 bf16, 16-token
 * pages, vLLM's [2][pages][16][8][128] per layer, pages in random order), blocks of
 * 512 tokens, beside device-to-device cudaMemcpy of the same bytes in the same run:
 * one contiguous copy (the bandwidth ceiling) and one cudaMemcpyAsync per page and
 * plane (what moving the same pages costs without a kernel). Two more rows show the
 * fallbacks: a layer base 2 bytes off alignment (2-byte words instead of 16) and
 * llama.cpp's transposed V (the shared-memory tiled path).
 *
 * GB/s is 10^9 block bytes per second (each byte is read once and written once),
 * timed with CUDA events over -r launches after a warm-up; every kernel launch moves
 * a whole batch of -n blocks. The first block of the first gather is checked
 * against the CPU reference before anything is timed.
 *
 * Needs a CUDA device: without one it says so and exits 77 (skipped).
 */
#include <cuda_runtime_api.h>
#include <errno.h>
#include <getopt.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bench_util.h"
#include "kvcopy.h"

#define LAYERS 32
#define HEADS 8
#define HEAD_DIM 128
#define ELEM 2
#define PAGE_TOKENS 16
#define ROW_BYTES (HEADS * HEAD_DIM * ELEM)          /* 2 KiB per token and plane */
#define PAGE_BYTES (PAGE_TOKENS * ROW_BYTES)          /* 32 KiB per page and plane */

struct opts {
	const char *out;
	uint32_t tokens;  /* tokens per block */
	uint32_t items;   /* blocks per launch */
	unsigned reps;    /* timed launches per row */
	int device;
};

static void usage(FILE *f)
{
	fprintf(f,
		"usage: bench_gpu_kernels [-t TOKENS] [-n BLOCKS] [-r REPS] [-d DEVICE] [-o FILE]\n"
		"  -t  tokens per block, a multiple of 16 (default 512)\n"
		"  -n  blocks per kernel launch (default 4)\n"
		"  -r  timed launches per row (default 20)\n"
		"  -d  CUDA device (default 0)\n"
		"  -o  also write the table to FILE\n");
}

#define CU(call)                                                                        \
	do {                                                                            \
		cudaError_t e_ = (call);                                                \
		if (e_ != cudaSuccess) {                                                \
			fprintf(stderr, "bench_gpu_kernels: %s: %s (line %d)\n", #call,  \
				cudaGetErrorString(e_), __LINE__);                      \
			exit(1);                                                        \
		}                                                                       \
	} while (0)

/* Everything one layout's rows need, on the device. */
struct setup {
	struct kvl_layout L;
	unsigned char *engine;      /* all layers, one allocation */
	size_t layer_bytes;
	void **dbase;               /* device array of layer bases */
	void *hbase[LAYERS];        /* the same device pointers, host side */
	unsigned char *blocks;      /* items blocks, back to back */
	size_t block_bytes;
	struct kvl_item *ditems;    /* device items */
	struct kvl_item hitems[64]; /* host copy, device pointers */
	uint32_t *dpages;
	uint32_t *hpages;           /* host copy of the page ids */
	uint32_t pages_per_item;
};

static uint64_t rng = 0x2545f4914f6cdd1dULL;

static uint32_t rnd32(void)
{
	rng ^= rng >> 12;
	rng ^= rng << 25;
	rng ^= rng >> 27;
	return (uint32_t)((rng * 0x2545f4914f6cdd1dULL) >> 32);
}

/*
 * vLLM-like engine: per layer [2][pages][16][8][128] bf16 at `skew` bytes past a
 * 256-byte boundary; each item's 512 tokens on pages in random order. With
 * transposed, per layer one llama.cpp-style page of pages*16 tokens per plane, V
 * and K both transposed (token_stride = 2): the same bytes, the tiled path.
 */
static void setup_make(struct setup *s, const struct opts *o, size_t skew, bool transposed)
{
	const uint32_t ppi = o->tokens / PAGE_TOKENS, npages = ppi * o->items;
	const size_t plane = (size_t)npages * PAGE_BYTES;
	uint32_t *perm;

	memset(s, 0, sizeof(*s));
	s->pages_per_item = ppi;
	s->L = (struct kvl_layout){ .layers = LAYERS, .planes = 2, .heads = HEADS,
				    .head_dim = HEAD_DIM, .elem_size = ELEM,
				    .page_tokens = PAGE_TOKENS, .num_pages = npages };
	if (!transposed) {
		s->L.dim_stride = ELEM;
		s->L.head_stride = HEAD_DIM * ELEM;
		s->L.token_stride = ROW_BYTES;
		s->L.page_stride = PAGE_BYTES;
		s->L.plane_stride = (int64_t)plane;
	} else {
		const int64_t n_ctx = (int64_t)npages * PAGE_TOKENS;

		s->L.page_tokens = (uint32_t)n_ctx;
		s->L.num_pages = 1;
		s->L.token_stride = ELEM;
		s->L.dim_stride = n_ctx * ELEM;
		s->L.head_stride = HEAD_DIM * n_ctx * ELEM;
		s->L.plane_stride = (int64_t)plane;
		s->L.page_stride = 0;
	}
	s->layer_bytes = (2 * plane + skew + 255) / 256 * 256;
	if (kvl_layout_check(&s->L, s->layer_bytes - skew) != 0) {
		fprintf(stderr, "bench_gpu_kernels: internal error: layout refused\n");
		exit(1);
	}
	CU(cudaMalloc((void **)&s->engine, s->layer_bytes * LAYERS));
	CU(cudaMemset(s->engine, 0x5a, s->layer_bytes * LAYERS));
	for (int l = 0; l < LAYERS; l++)
		s->hbase[l] = s->engine + (size_t)l * s->layer_bytes + skew;
	CU(cudaMalloc((void **)&s->dbase, sizeof(s->hbase)));
	CU(cudaMemcpy(s->dbase, s->hbase, sizeof(s->hbase), cudaMemcpyHostToDevice));

	s->block_bytes = kvl_block_bytes(&s->L, o->tokens);
	CU(cudaMalloc((void **)&s->blocks, s->block_bytes * o->items));
	CU(cudaMemset(s->blocks, 0, s->block_bytes * o->items));

	/* a random permutation of the pages, handed out ppi per item */
	perm = malloc(npages * sizeof(*perm));
	s->hpages = malloc(npages * sizeof(*s->hpages));
	if (!perm || !s->hpages) {
		fprintf(stderr, "bench_gpu_kernels: out of memory\n");
		exit(1);
	}
	for (uint32_t i = 0; i < npages; i++)
		perm[i] = i;
	for (uint32_t i = npages; i > 1; i--) {
		uint32_t j = rnd32() % i, t = perm[i - 1];
		perm[i - 1] = perm[j];
		perm[j] = t;
	}
	for (uint32_t i = 0; i < npages; i++)
		s->hpages[i] = transposed ? 0 : perm[i];
	free(perm);
	CU(cudaMalloc((void **)&s->dpages, npages * sizeof(uint32_t)));
	CU(cudaMemcpy(s->dpages, s->hpages, npages * sizeof(uint32_t), cudaMemcpyHostToDevice));
	for (uint32_t i = 0; i < o->items; i++) {
		s->hitems[i].block = s->blocks + (size_t)i * s->block_bytes;
		/* transposed: one page, the items one after another in it */
		s->hitems[i].pages = s->dpages + (transposed ? 0 : (size_t)i * ppi);
		s->hitems[i].first_token = transposed ? i * o->tokens : 0;
		s->hitems[i].ntokens = o->tokens;
	}
	CU(cudaMalloc((void **)&s->ditems, o->items * sizeof(struct kvl_item)));
	CU(cudaMemcpy(s->ditems, s->hitems, o->items * sizeof(struct kvl_item),
		      cudaMemcpyHostToDevice));
}

static void setup_free(struct setup *s)
{
	cudaFree(s->engine);
	cudaFree(s->dbase);
	cudaFree(s->blocks);
	cudaFree(s->ditems);
	cudaFree(s->dpages);
	free(s->hpages);
}

/* The first block of a gather equals the CPU reference's, or the run stops. */
static void verify_first_block(struct setup *s, const struct opts *o)
{
	size_t engine_bytes = s->layer_bytes * LAYERS;
	unsigned char *heng = malloc(engine_bytes), *hblk = malloc(s->block_bytes),
		      *gblk = malloc(s->block_bytes);
	void *hbase[LAYERS];
	struct kvl_item it = s->hitems[0];

	if (!heng || !hblk || !gblk) {
		fprintf(stderr, "bench_gpu_kernels: out of memory for the check\n");
		exit(1);
	}
	for (size_t i = 0; i < engine_bytes; i++)
		heng[i] = (unsigned char)(rnd32() >> 24);
	CU(cudaMemcpy(s->engine, heng, engine_bytes, cudaMemcpyHostToDevice));
	CU(cudaMemset(s->blocks, 0, s->block_bytes));
	CU((cudaError_t)kvl_gather_cuda(&s->L, s->dbase, s->ditems, 1, o->tokens, NULL, NULL));
	CU(cudaDeviceSynchronize());
	CU(cudaMemcpy(gblk, s->blocks, s->block_bytes, cudaMemcpyDeviceToHost));
	for (int l = 0; l < LAYERS; l++)
		hbase[l] = heng + ((unsigned char *)s->hbase[l] - s->engine);
	it.block = hblk;
	it.pages = s->hpages;
	if (kvl_gather_ref(&s->L, hbase, &it, 1) != 0 || memcmp(hblk, gblk, s->block_bytes) != 0) {
		fprintf(stderr, "bench_gpu_kernels: the GPU gather differs from the CPU reference\n");
		exit(1);
	}
	free(heng);
	free(hblk);
	free(gblk);
}

/* Milliseconds per repetition of what run() queues, by CUDA events. */
typedef void (*run_fn)(struct setup *s, const struct opts *o, cudaStream_t st);

static double time_ms(run_fn run, struct setup *s, const struct opts *o, cudaStream_t st)
{
	cudaEvent_t a, b;
	float ms = 0;

	CU(cudaEventCreate(&a));
	CU(cudaEventCreate(&b));
	run(s, o, st); /* warm-up */
	run(s, o, st);
	CU(cudaStreamSynchronize(st));
	CU(cudaEventRecord(a, st));
	for (unsigned r = 0; r < o->reps; r++)
		run(s, o, st);
	CU(cudaEventRecord(b, st));
	CU(cudaEventSynchronize(b));
	CU(cudaEventElapsedTime(&ms, a, b));
	CU(cudaEventDestroy(a));
	CU(cudaEventDestroy(b));
	return ms / o->reps;
}

static void run_gather(struct setup *s, const struct opts *o, cudaStream_t st)
{
	CU((cudaError_t)kvl_gather_cuda(&s->L, s->dbase, s->ditems, o->items, o->tokens, NULL, st));
}

static void run_scatter(struct setup *s, const struct opts *o, cudaStream_t st)
{
	CU((cudaError_t)kvl_scatter_cuda(&s->L, s->dbase, s->ditems, o->items, o->tokens, NULL, st));
}

/* One contiguous device-to-device copy of the same number of bytes, engine to
 * blocks (the engine is at least as large as the blocks in every setup here). */
static void run_memcpy(struct setup *s, const struct opts *o, cudaStream_t st)
{
	CU(cudaMemcpyAsync(s->blocks, s->engine, s->block_bytes * o->items,
			   cudaMemcpyDeviceToDevice, st));
}

/* One cudaMemcpyAsync per (item, layer, plane, page): 32 KiB each. */
static void run_memcpy_pages(struct setup *s, const struct opts *o, cudaStream_t st)
{
	for (uint32_t i = 0; i < o->items; i++)
		for (int l = 0; l < LAYERS; l++)
			for (int p = 0; p < 2; p++)
				for (uint32_t k = 0; k < s->pages_per_item; k++) {
					uint32_t g = s->hpages[i * s->pages_per_item + k];
					unsigned char *src = (unsigned char *)s->hbase[l] +
							     (size_t)p * s->L.plane_stride +
							     (size_t)g * PAGE_BYTES;
					unsigned char *dst = s->blocks + (size_t)i * s->block_bytes +
							     ((size_t)(l * 2 + p) * o->tokens +
							      (size_t)k * PAGE_TOKENS) * ROW_BYTES;

					CU(cudaMemcpyAsync(dst, src, PAGE_BYTES, cudaMemcpyDeviceToDevice,
							   st));
				}
}

static void row(struct bench_out *out, const char *what, double ms, double bytes, double base_gbps)
{
	double gbps = bytes / (ms * 1e-3) / 1e9;

	bench_printf(out, "%-44s %10.3f %10.1f %9.2f\n", what, ms, gbps,
		     base_gbps > 0 ? gbps / base_gbps : 1.0);
}

int main(int argc, char **argv)
{
	struct opts o = { .tokens = 512, .items = 4, .reps = 20, .device = 0 };
	struct bench_out out;
	struct cudaDeviceProp prop;
	struct setup s;
	cudaStream_t st;
	int ndev = 0, opt, clock_khz = 0, bus_bits = 0;
	cudaError_t err;

	while ((opt = getopt(argc, argv, "t:n:r:d:o:h")) != -1) {
		switch (opt) {
		case 't':
			o.tokens = (uint32_t)strtoul(optarg, NULL, 0);
			break;
		case 'n':
			o.items = (uint32_t)strtoul(optarg, NULL, 0);
			break;
		case 'r':
			o.reps = (unsigned)strtoul(optarg, NULL, 0);
			break;
		case 'd':
			o.device = atoi(optarg);
			break;
		case 'o':
			o.out = optarg;
			break;
		case 'h':
			usage(stdout);
			return 0;
		default:
			usage(stderr);
			return 2;
		}
	}
	if (o.tokens == 0 || o.tokens % PAGE_TOKENS || o.items == 0 || o.items > 64 || o.reps == 0) {
		fprintf(stderr, "bench_gpu_kernels: -t must be a positive multiple of 16, -n 1..64, "
				"-r positive\n");
		return 2;
	}
	err = cudaGetDeviceCount(&ndev);
	if (err != cudaSuccess || ndev == 0) {
		fprintf(stderr, "bench_gpu_kernels: no CUDA device (cudaGetDeviceCount: %s); "
				"nothing measured\n",
			err == cudaSuccess ? "0 devices" : cudaGetErrorString(err));
		return 77;
	}
	if (o.device < 0 || o.device >= ndev) {
		fprintf(stderr, "bench_gpu_kernels: no device %d (%d present)\n", o.device, ndev);
		return 2;
	}
	CU(cudaSetDevice(o.device));
	CU(cudaGetDeviceProperties(&prop, o.device));
	cudaDeviceGetAttribute(&clock_khz, cudaDevAttrMemoryClockRate, o.device);
	cudaDeviceGetAttribute(&bus_bits, cudaDevAttrGlobalMemoryBusWidth, o.device);
	if (bench_out_open(&out, o.out) != 0) {
		fprintf(stderr, "bench_gpu_kernels: cannot write %s: %s\n", o.out, strerror(errno));
		return 1;
	}

	bench_print_machine(&out, "bench_gpu_kernels: paged KV gather/scatter vs cudaMemcpy");
	bench_printf(&out, "gpu:     %s, sm_%d%d, %d SMs, %.1f GiB, L2 %d MiB", prop.name,
		     prop.major, prop.minor, prop.multiProcessorCount,
		     (double)prop.totalGlobalMem / (1 << 30), prop.l2CacheSize >> 20);
	if (clock_khz > 0 && bus_bits > 0)
		bench_printf(&out, ", nominal memory bandwidth %.0f GB/s",
			     2.0 * clock_khz * 1e3 * (bus_bits / 8) / 1e9);
	bench_printf(&out, "\n");
	bench_printf(&out, "layout:  %d layers x K,V x %d heads x %d dims, bf16, %d-token pages "
			   "(vLLM [2][pages][16][8][128] per layer, pages in random order)\n",
		     LAYERS, HEADS, HEAD_DIM, PAGE_TOKENS);
	bench_printf(&out, "batch:   %u blocks of %u tokens per launch = %.1f MiB; %u timed "
			   "launches per row after 2 warm-up\n",
		     o.items, o.tokens,
		     (double)LAYERS * 2 * o.tokens * ROW_BYTES * o.items / (1 << 20), o.reps);
	bench_printf(&out, "GB/s:    10^9 block bytes per second (each read once, written once)\n\n");
	bench_printf(&out, "%-44s %10s %10s %9s\n", "copy", "ms/launch", "GB/s", "vs memcpy");

	CU(cudaStreamCreate(&st));
	setup_make(&s, &o, 0, false);
	verify_first_block(&s, &o);
	double bytes = (double)s.block_bytes * o.items;
	double mc_ms = time_ms(run_memcpy, &s, &o, st);
	double mc = bytes / (mc_ms * 1e-3) / 1e9;
	row(&out, "cudaMemcpyAsync D2D, one contiguous copy", mc_ms, bytes, mc);
	row(&out, "cudaMemcpyAsync D2D, one per 32 KiB page", time_ms(run_memcpy_pages, &s, &o, st),
	    bytes, mc);
	row(&out, "kvl_gather_cuda (16-byte words)", time_ms(run_gather, &s, &o, st), bytes, mc);
	row(&out, "kvl_scatter_cuda (16-byte words)", time_ms(run_scatter, &s, &o, st), bytes, mc);
	setup_free(&s);

	setup_make(&s, &o, 2, false);
	row(&out, "kvl_gather_cuda, base 2 bytes off (2-byte)", time_ms(run_gather, &s, &o, st),
	    bytes, mc);
	row(&out, "kvl_scatter_cuda, base 2 bytes off (2-byte)", time_ms(run_scatter, &s, &o, st),
	    bytes, mc);
	setup_free(&s);

	setup_make(&s, &o, 0, true);
	row(&out, "kvl_gather_cuda, transposed (tiled path)", time_ms(run_gather, &s, &o, st),
	    bytes, mc);
	row(&out, "kvl_scatter_cuda, transposed (tiled path)", time_ms(run_scatter, &s, &o, st),
	    bytes, mc);
	setup_free(&s);
	CU(cudaStreamDestroy(st));

	if (bench_out_close(&out) != 0) {
		fprintf(stderr, "bench_gpu_kernels: writing %s failed\n", o.out);
		return 1;
	}
	return 0;
}
