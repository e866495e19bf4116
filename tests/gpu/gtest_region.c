/*
 * gtest_region.c - GPU regions through a real kvtierd with gpu_backend = cuda:
 * this process (the engine) cudaMallocs a vLLM-like paged KV cache, one
 * allocation per layer, exports CUDA IPC handles and registers them; GPU_PUT
 * gathers pages into a block, which a plain GET must return exactly as the CPU
 * reference (kvl_gather_ref) packs the same pages; GPU_GET scatters it into a
 * second cache, which must equal the CPU reference scatter byte for byte, whole
 * allocations compared. Exits 77 (skip) when no CUDA device is present.
 */
#include "test.h"

#include <cuda_runtime_api.h>
#include <errno.h>
#include <sys/wait.h>
#include <unistd.h>

#include "harness.h"
#include "kvcopy.h"
#include "kvtier.h"

#define CU(call)                                                                        \
	do {                                                                            \
		cudaError_t e_ = (call);                                                \
		CHECK_MSG(e_ == cudaSuccess, "%s: %s", #call, cudaGetErrorString(e_));  \
	} while (0)

#define LAYERS 4

struct gcache {
	struct kvl_layout L;
	size_t layer_bytes;
	void *dev[LAYERS];
	uint8_t *host[LAYERS]; /* the expected contents */
	kvt_gpu_buffer buf[LAYERS];
	kvt_kv_layer layer[LAYERS];
	uint32_t id;
};

static void fill(uint8_t *p, size_t n, uint64_t seed)
{
	uint64_t x = seed * 0x9e3779b97f4a7c15ull + 1;
	for (size_t i = 0; i < n; i++) {
		x ^= x << 13;
		x ^= x >> 7;
		x ^= x << 17;
		p[i] = (uint8_t)(x >> 24);
	}
}

static void gcache_make(kvt_conn *conn, struct gcache *c, uint64_t seed, const uint8_t uuid[16])
{
	struct kvl_layout *L = &c->L;
	memset(c, 0, sizeof(*c));
	*L = (struct kvl_layout){ .layers = LAYERS, .planes = 2, .heads = 8, .head_dim = 128,
				  .elem_size = 2, .page_tokens = 16, .num_pages = 64 };
	L->dim_stride = 2;
	L->head_stride = 128 * 2;
	L->token_stride = L->head_stride * 8;
	L->page_stride = L->token_stride * 16;
	L->plane_stride = L->page_stride * 64;
	c->layer_bytes = (size_t)L->plane_stride * 2;
	for (int l = 0; l < LAYERS; l++) {
		c->host[l] = malloc(c->layer_bytes);
		CHECK(c->host[l]);
		fill(c->host[l], c->layer_bytes, seed + (uint64_t)l);
		CU(cudaMalloc(&c->dev[l], c->layer_bytes));
		CU(cudaMemcpy(c->dev[l], c->host[l], c->layer_bytes, cudaMemcpyHostToDevice));
		cudaIpcMemHandle_t h;
		CU(cudaIpcGetMemHandle(&h, c->dev[l]));
		memcpy(c->buf[l].ipc_handle, &h, sizeof(h));
		c->buf[l].size = c->layer_bytes;
		c->layer[l] = (kvt_kv_layer){ .buffer = (uint32_t)l, .offset = 0 };
	}
	kvt_kv_layout pl = {
		.layers = L->layers, .planes = L->planes, .heads = L->heads,
		.head_dim = L->head_dim, .elem_size = L->elem_size, .page_tokens = L->page_tokens,
		.num_pages = L->num_pages, .plane_stride = L->plane_stride,
		.page_stride = L->page_stride, .token_stride = L->token_stride,
		.head_stride = L->head_stride, .dim_stride = L->dim_stride,
		.dtype = KVT_DTYPE_BF16, .layout_id = 3, .layer = c->layer,
	};
	CHECK_RC(kvt_gpu_region_register(conn, c->buf, LAYERS, &pl, uuid, &c->id), 0);
}

static void gcache_check(struct gcache *c)
{
	uint8_t *got = malloc(c->layer_bytes);
	CHECK(got);
	for (int l = 0; l < LAYERS; l++) {
		CU(cudaMemcpy(got, c->dev[l], c->layer_bytes, cudaMemcpyDeviceToHost));
		CHECK_MSG(memcmp(got, c->host[l], c->layer_bytes) == 0,
			  "layer %d differs from the CPU reference", l);
	}
	free(got);
}

static void gcache_free(struct gcache *c)
{
	for (int l = 0; l < LAYERS; l++) {
		cudaFree(c->dev[l]);
		free(c->host[l]);
	}
}

TEST(cuda_region_roundtrip_matches_cpu_reference)
{
	struct kvtd d;
	kvtd_start(&d, "gpu_backend = cuda\nhost_capacity = 256MiB\n");
	CHECK(strstr(kvtd_log_text(&d), "GPU transfers: active: backend cuda"));
	kvt_conn *conn = kvtd_connect(&d, 30000);

	struct cudaDeviceProp prop;
	CU(cudaGetDeviceProperties(&prop, 0));
	uint8_t uuid[16];
	memcpy(uuid, prop.uuid.bytes, 16);
	struct gcache a, b;
	gcache_make(conn, &a, 1, uuid);
	gcache_make(conn, &b, 2, uuid);

	/* A wrong device UUID is refused. */
	uint8_t nouuid[16];
	memset(nouuid, 0xee, sizeof(nouuid));
	uint32_t id = 0;
	kvt_kv_layout pl = { .layers = LAYERS, .planes = 2, .heads = 8, .head_dim = 128,
			     .elem_size = 2, .page_tokens = 16, .num_pages = 64,
			     .plane_stride = a.L.plane_stride, .page_stride = a.L.page_stride,
			     .token_stride = a.L.token_stride, .head_stride = a.L.head_stride,
			     .dim_stride = a.L.dim_stride, .layer = a.layer };
	CHECK_RC(kvt_gpu_region_register(conn, a.buf, LAYERS, &pl, nouuid, &id), KVT_ENODEV);

	/* 40 tokens from position 21 (slot 5): 3 pages */
	uint32_t sp[3] = { 9, 40, 2 }, dp[3] = { 63, 0, 17 };
	const uint32_t first = 21, ntok = 40;
	size_t blen = kvl_block_bytes(&a.L, ntok);
	uint8_t *want = malloc(blen);
	CHECK(want);
	void *hbase[LAYERS];
	for (int l = 0; l < LAYERS; l++)
		hbase[l] = a.host[l];
	struct kvl_item ref = { .block = want, .pages = sp, .first_token = first % 16,
				.ntokens = ntok };
	CHECK_RC(kvl_gather_ref(&a.L, hbase, &ref, 1), 0);

	kvt_gpu_item it = { .region_id = a.id, .first_token = first, .ntokens = ntok,
			    .pages = sp, .npages = 3 };
	memset(&it.key, 0x42, sizeof(it.key));
	CHECK_RC(kvt_gpu_put(conn, &it, 1), 0);

	kvt_region *r = NULL;
	CHECK_RC(kvt_region_create(conn, blen, &r), 0);
	kvt_get_item g = { .key = it.key, .region = r, .capacity = blen };
	CHECK_RC(kvt_block_get(conn, &g, 1), 0);
	CHECK_EQ(g.length, blen);
	CHECK_MSG(memcmp(kvt_region_base(r), want, blen) == 0,
		  "GPU_PUT's block differs from kvl_gather_ref");
	CHECK_EQ(g.desc.dtype, KVT_DTYPE_BF16);
	CHECK_EQ(g.desc.tokens, ntok);

	for (int l = 0; l < LAYERS; l++)
		hbase[l] = b.host[l];
	ref.pages = dp;
	CHECK_RC(kvl_scatter_ref(&b.L, hbase, &ref, 1), 0);
	kvt_gpu_item back = { .key = it.key, .region_id = b.id, .first_token = first,
			      .ntokens = ntok, .pages = dp, .npages = 3 };
	CHECK_RC(kvt_gpu_get(conn, &back, 1), 0);
	gcache_check(&b);
	gcache_check(&a); /* the source is untouched */
	CHECK_EQ(kvtd_stat(conn, "gpu.d2h_bytes"), blen);
	CHECK_EQ(kvtd_stat(conn, "gpu.h2d_bytes"), blen);
	CHECK_EQ(kvtd_stat(conn, "gpu.regions"), 2);

	kvt_region_destroy(r);
	free(want);
	kvt_conn_close(conn); /* releases the IPC mappings in the daemon */
	conn = kvtd_connect(&d, 30000);
	uint64_t left = 1;
	for (int i = 0; i < 100 && (left = kvtd_stat(conn, "gpu.regions")) != 0; i++)
		usleep(20000);
	CHECK_EQ(left, 0);
	kvt_conn_close(conn);
	gcache_free(&a);
	gcache_free(&b);
	int st = kvtd_stop(&d);
	CHECK(WIFEXITED(st) && WEXITSTATUS(st) == 0);
}

/* Ask in a child: a CUDA runtime initialised here would not survive the fork of
 * each test case. */
static bool device_present(char *why, size_t cap)
{
	int pfd[2], st = 0;
	snprintf(why, cap, "could not ask");
	if (pipe(pfd) < 0)
		return false;
	pid_t pid = fork();
	if (pid < 0)
		return false;
	if (pid == 0) {
		int n = 0;
		cudaError_t e = cudaGetDeviceCount(&n);
		char msg[256];
		close(pfd[0]);
		if (e == cudaSuccess && n > 0)
			snprintf(msg, sizeof(msg), "ok");
		else
			snprintf(msg, sizeof(msg), "%s",
				 e != cudaSuccess ? cudaGetErrorString(e) : "none found");
		ssize_t w = write(pfd[1], msg, strlen(msg));
		(void)w;
		_exit(0);
	}
	close(pfd[1]);
	ssize_t r = read(pfd[0], why, cap - 1);
	close(pfd[0]);
	waitpid(pid, &st, 0);
	why[r > 0 ? r : 0] = 0;
	return strcmp(why, "ok") == 0;
}

int main(int argc, char **argv)
{
	char why[256];
	if (!device_present(why, sizeof(why))) {
		printf("SKIP gtest_region: no CUDA device (%s)\n", why);
		return 77;
	}
	static const struct test_case cases[] = {
		{ "cuda_region_roundtrip_matches_cpu_reference",
		  cuda_region_roundtrip_matches_cpu_reference },
	};
	return test_run(argv[0], cases, 1, argc, argv);
}
