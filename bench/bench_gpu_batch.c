/*
 * bench_gpu_batch.c - whether cudaMemcpyBatchAsync pays for the daemon's copies.
 * A host-tier block is a list of extents (runs of host_chunk chunks, 64 KiB by
 * default), so moving one to or from the GPU today is one cudaMemcpyAsync per
 * extent. This measures, for one pinned block split into extents of several
 * sizes, host->device and device->host:
 *   - loop:  one cudaMemcpyAsync per extent on one stream (what gpu_cuda.c does);
 *   - batch: one cudaMemcpyBatchAsync for all of them (source access in stream
 *            order, the flag that asks for overlap with compute);
 *   - whole: one cudaMemcpyAsync of the block (the ceiling: one extent).
 * GB/s is 10^9 bytes per second, the median of -r timed passes (CUDA events) after
 * a warm-up; batch/loop is the figure that decides. Each extent size's batched
 * copies are checked byte for byte once (a round trip through a second pinned
 * buffer) before anything is timed.
 *
 *   build/bench/bench_gpu_batch [-b MiB] [-r REPS] [-d DEVICE] [-o FILE]
 *
 * Needs a CUDA device (exit 77 without one) and a toolkit with cudaMemcpyBatchAsync
 * (CUDA 12.8 or later; with an older one it says so and exits 77).
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

#define CU(call)                                                                        \
	do {                                                                            \
		cudaError_t e_ = (call);                                                \
		if (e_ != cudaSuccess) {                                                \
			fprintf(stderr, "bench_gpu_batch: %s: %s (line %d)\n", #call,    \
				cudaGetErrorString(e_), __LINE__);                      \
			exit(1);                                                        \
		}                                                                       \
	} while (0)

#define MIB (1024ull * 1024)
#define MAX_REPS 1000

static const uint64_t extents[] = { 64 * 1024, 256 * 1024, MIB, 4 * MIB };
#define NEXT (sizeof(extents) / sizeof(extents[0]))

enum how { LOOP, BATCH, WHOLE };

struct buffers {
	uint8_t *host, *back; /* pinned */
	uint8_t *dev;
	uint64_t len;
	void **dsts;
	const void **srcs;
	size_t *sizes;
};

static int cmp_double(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;
	return x < y ? -1 : x > y;
}

/* Queue one pass: the block in pieces of ext bytes, h2d or back. */
static void pass(struct buffers *b, uint64_t ext, bool h2d, enum how how, cudaStream_t st)
{
	size_t n = (size_t)((b->len + ext - 1) / ext);
	enum cudaMemcpyKind kind = h2d ? cudaMemcpyHostToDevice : cudaMemcpyDeviceToHost;
	uint8_t *dst = h2d ? b->dev : b->host, *src = h2d ? b->host : b->dev;

	if (how == WHOLE) {
		CU(cudaMemcpyAsync(dst, src, b->len, kind, st));
		return;
	}
	for (size_t i = 0; i < n; i++) {
		uint64_t off = i * ext, len = b->len - off < ext ? b->len - off : ext;
		if (how == LOOP) {
			CU(cudaMemcpyAsync(dst + off, src + off, len, kind, st));
			continue;
		}
		b->dsts[i] = dst + off;
		b->srcs[i] = src + off;
		b->sizes[i] = len;
	}
	if (how == BATCH) {
#if CUDART_VERSION >= 12080
		struct cudaMemcpyAttributes attr;
		size_t idx = 0;
		memset(&attr, 0, sizeof(attr));
		attr.srcAccessOrder = cudaMemcpySrcAccessOrderStream;
		attr.flags = cudaMemcpyFlagPreferOverlapWithCompute;
#if CUDART_VERSION >= 13000
		CU(cudaMemcpyBatchAsync(b->dsts, b->srcs, b->sizes, n, &attr, &idx, 1, st));
#else
		size_t fail = 0;
		CU(cudaMemcpyBatchAsync(b->dsts, (void **)b->srcs, b->sizes, n, &attr, &idx, 1,
					&fail, st));
#endif
#endif
	}
}

static double timed(struct buffers *b, uint64_t ext, bool h2d, enum how how, unsigned reps,
		    cudaStream_t st)
{
	static double s[MAX_REPS];
	cudaEvent_t e0, e1;
	CU(cudaEventCreate(&e0));
	CU(cudaEventCreate(&e1));
	pass(b, ext, h2d, how, st); /* warm-up */
	CU(cudaStreamSynchronize(st));
	for (unsigned r = 0; r < reps; r++) {
		float ms = 0;
		CU(cudaEventRecord(e0, st));
		pass(b, ext, h2d, how, st);
		CU(cudaEventRecord(e1, st));
		CU(cudaEventSynchronize(e1));
		CU(cudaEventElapsedTime(&ms, e0, e1));
		s[r] = (double)b->len / (ms / 1e3) / 1e9;
	}
	CU(cudaEventDestroy(e0));
	CU(cudaEventDestroy(e1));
	qsort(s, reps, sizeof(s[0]), cmp_double);
	return s[reps / 2];
}

static void usage(FILE *f)
{
	fprintf(f, "usage: bench_gpu_batch [-b MiB] [-r REPS] [-d DEVICE] [-o FILE]\n"
		   "  -b MiB     block size (default 64, a 512-token Llama-3-8B block)\n"
		   "  -r REPS    timed passes per figure, median reported (default 20, at most %d)\n"
		   "  -d DEVICE  CUDA device (default 0)\n"
		   "  -o FILE    also write the report to FILE\n",
		MAX_REPS);
}

int main(int argc, char **argv)
{
	unsigned mib = 64, reps = 20;
	int dev = 0, ndev = 0, opt;
	const char *out_path = NULL;
	struct bench_out out = { 0 };
	struct cudaDeviceProp prop;
	cudaStream_t st;

	while ((opt = getopt(argc, argv, "b:r:d:o:h")) != -1) {
		switch (opt) {
		case 'b': mib = (unsigned)strtoul(optarg, NULL, 0); break;
		case 'r': reps = (unsigned)strtoul(optarg, NULL, 0); break;
		case 'd': dev = atoi(optarg); break;
		case 'o': out_path = optarg; break;
		case 'h': usage(stdout); return 0;
		default: usage(stderr); return 2;
		}
	}
	if (mib == 0 || mib > 4096 || reps == 0 || reps > MAX_REPS || optind != argc) {
		usage(stderr);
		return 2;
	}
#if CUDART_VERSION < 12080
	fprintf(stderr, "bench_gpu_batch: this CUDA toolkit (%d) has no cudaMemcpyBatchAsync "
			"(12.8 or later); nothing measured\n", CUDART_VERSION);
	return 77;
#endif
	cudaError_t err = cudaGetDeviceCount(&ndev);
	if (err != cudaSuccess || ndev == 0) {
		fprintf(stderr, "bench_gpu_batch: no CUDA device (cudaGetDeviceCount: %s); "
				"nothing measured\n",
			err == cudaSuccess ? "0 devices" : cudaGetErrorString(err));
		return 77;
	}
	if (dev < 0 || dev >= ndev) {
		fprintf(stderr, "bench_gpu_batch: no device %d (%d present)\n", dev, ndev);
		return 2;
	}
	CU(cudaSetDevice(dev));
	CU(cudaGetDeviceProperties(&prop, dev));
	CU(cudaStreamCreateWithFlags(&st, cudaStreamNonBlocking));

	struct buffers b = { .len = (uint64_t)mib * MIB };
	size_t maxn = (size_t)(b.len / extents[0] + 1);
	CU(cudaHostAlloc((void **)&b.host, b.len, cudaHostAllocDefault));
	CU(cudaHostAlloc((void **)&b.back, b.len, cudaHostAllocDefault));
	CU(cudaMalloc((void **)&b.dev, b.len));
	b.dsts = calloc(maxn, sizeof(*b.dsts));
	b.srcs = calloc(maxn, sizeof(*b.srcs));
	b.sizes = calloc(maxn, sizeof(*b.sizes));
	if (!b.dsts || !b.srcs || !b.sizes) {
		fprintf(stderr, "bench_gpu_batch: out of memory\n");
		return 1;
	}

	/* Each extent size's batched copies, checked once both ways. */
	for (size_t e = 0; e < NEXT; e++) {
		for (uint64_t i = 0; i < b.len; i++)
			b.host[i] = (uint8_t)(i * 131 + e * 7 + (i >> 13));
		CU(cudaMemset(b.dev, 0, b.len));
		pass(&b, extents[e], true, BATCH, st);
		CU(cudaStreamSynchronize(st));
		CU(cudaMemcpy(b.back, b.dev, b.len, cudaMemcpyDeviceToHost));
		if (memcmp(b.back, b.host, b.len) != 0) {
			fprintf(stderr, "bench_gpu_batch: batched host->device copy of %llu-byte "
					"extents put wrong bytes on the device\n",
				(unsigned long long)extents[e]);
			return 1;
		}
		memset(b.host, 0, b.len);
		pass(&b, extents[e], false, BATCH, st);
		CU(cudaStreamSynchronize(st));
		if (memcmp(b.back, b.host, b.len) != 0) {
			fprintf(stderr, "bench_gpu_batch: batched device->host copy of %llu-byte "
					"extents brought back wrong bytes\n",
				(unsigned long long)extents[e]);
			return 1;
		}
	}

	if (bench_out_open(&out, out_path) != 0) {
		fprintf(stderr, "bench_gpu_batch: cannot write %s: %s\n", out_path, strerror(errno));
		return 1;
	}
	bench_print_machine(&out, "bench_gpu_batch: one block in extents, cudaMemcpyAsync per "
				  "extent vs one cudaMemcpyBatchAsync");
	bench_printf(&out, "gpu:     %s, sm_%d%d; CUDA runtime %d\n", prop.name, prop.major,
		     prop.minor, CUDART_VERSION);
	bench_printf(&out, "block:   %u MiB, pinned (cudaHostAlloc) <-> cudaMalloc, one non-blocking "
			   "stream; medians of %u passes after a warm-up, CUDA events\n",
		     mib, reps);
	bench_printf(&out, "batch:   srcAccessOrder stream, flag PreferOverlapWithCompute, one "
			   "attribute for all copies\n\n");
	bench_printf(&out, "%-10s %-4s %8s %10s %10s %10s %12s\n", "extent", "dir", "copies",
		     "loop GB/s", "batch GB/s", "whole GB/s", "batch/loop");
	for (size_t e = 0; e < NEXT; e++) {
		for (int d = 0; d < 2; d++) {
			bool h2d = d == 0;
			double lo = timed(&b, extents[e], h2d, LOOP, reps, st);
			double ba = timed(&b, extents[e], h2d, BATCH, reps, st);
			double wh = timed(&b, extents[e], h2d, WHOLE, reps, st);
			bench_printf(&out, "%-10llu %-4s %8llu %10.2f %10.2f %10.2f %11.2fx\n",
				     (unsigned long long)extents[e], h2d ? "H2D" : "D2H",
				     (unsigned long long)((b.len + extents[e] - 1) / extents[e]), lo,
				     ba, wh, ba / lo);
		}
	}
	bench_printf(&out, "\nbatch/loop > 1 where the daemon's extent copies (daemon/gpu_cuda.c "
			   "copy_range) would gain from one batched call.\n");
	int rc = bench_out_close(&out) != 0;
	cudaFree(b.dev);
	cudaFreeHost(b.host);
	cudaFreeHost(b.back);
	free(b.dsts);
	free(b.srcs);
	free(b.sizes);
	cudaStreamDestroy(st);
	return rc;
}
