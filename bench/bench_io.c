/*
 * bench_io.c - the NVMe tier's I/O engine (store/io.h): sequential O_DIRECT write
 * then read of a large file through the io_uring backend and the thread pool,
 * beside fio (ioengine=io_uring, direct=1) run by this program in the same run,
 * on the same directory, file size, block size and queue depth.
 *
 * Like fio's jobs, every pass gets a fresh engine and fresh buffers (anonymous
 * 4 KiB pages, touched only by the pass), and each contender a fresh file,
 * preallocated as fio's default fallocate=native does and removed afterwards.
 * Nothing is fsynced (fio's end_fsync=0 default). One more row runs io_uring on
 * 2 MiB-aligned MADV_HUGEPAGE buffers, the kind the daemon's host arena uses: on
 * a virtual disk the destination pages' physical layout moves the read figure by
 * tens of per cent, which would otherwise pass for a difference between engines.
 * Contenders run in interleaved rounds, in a rotating order; figures are medians.
 * Reads check a stamp at both ends of every block, so a misplaced block fails the
 * run. GB/s is 10^9 bytes per second of wall time for the whole pass; CPU is
 * user+system time of the process (workers included) over wall time, and fio's
 * own usr_cpu+sys_cpu for its job.
 */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <poll.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <unistd.h>

#include "bench_daemon.h"
#include "bench_util.h"
#include "io.h"

#define STAMP_MAGIC 0x6b76746965722d69ull /* "kvtier-i" */

struct opts {
	const char *dir;
	const char *out;
	uint64_t size;
	size_t block;
	unsigned qd;
	unsigned threads;
	bool register_buffers;
};

/* What one pass measured. */
struct result {
	bool ok;
	double gbps;
	double cpu_pct;
	uint64_t retries;
};

static void usage(FILE *f)
{
	fprintf(f,
		"usage: bench_io [-d DIR] [-s SIZE] [-b BLOCK] [-q DEPTH] [-t THREADS] [-r ROUNDS] [-R] [-o FILE]\n"
		"  -d DIR     directory for the test files (default: $TMPDIR, else /var/tmp);\n"
		"             it must accept O_DIRECT\n"
		"  -s SIZE    file size, K/M/G suffixes (default 2G)\n"
		"  -b BLOCK   block size, a multiple of 4K (default 1M)\n"
		"  -q DEPTH   queue depth (default 32)\n"
		"  -t THREADS thread-pool size (default 4)\n"
		"  -r ROUNDS  rounds of all three contenders, interleaved (default 3, at most 16)\n"
		"  -R         do not register the buffers (and run fio without fixedbufs)\n"
		"  -o FILE    also write the results to FILE\n");
}

/* A size with K/M/G suffixes; 0 is refused. */
static int parse_bytes(const char *s, uint64_t *out)
{
	return bench_parse_size(s, out) == 0 && *out > 0 ? 0 : -EINVAL;
}

static double cpu_seconds(const struct rusage *ru)
{
	return (double)ru->ru_utime.tv_sec + (double)ru->ru_utime.tv_usec / 1e6 +
	       (double)ru->ru_stime.tv_sec + (double)ru->ru_stime.tv_usec / 1e6;
}

/* ---- the engine's passes ----------------------------------------------------- */

struct pass {
	struct io_engine *e;
	bool write;
	uint64_t next, size;
	size_t block;
	size_t active;
	int err;
	uint64_t bad_blocks;
	struct io_req **again;
	size_t nagain;
};

static void stamp(struct io_req *r)
{
	uint64_t v = r->off ^ STAMP_MAGIC;

	memcpy(r->buf, &v, sizeof(v));
	memcpy((char *)r->buf + r->len - sizeof(v), &v, sizeof(v));
}

static bool stamp_ok(const struct io_req *r)
{
	uint64_t a, b, v = r->off ^ STAMP_MAGIC;

	memcpy(&a, r->buf, sizeof(a));
	memcpy(&b, (const char *)r->buf + r->len - sizeof(b), sizeof(b));
	return a == v && b == v;
}

/* Runs in io_reap: check, then queue the block's next job; the main loop submits
 * everything queued in one call after each reap. */
static void pass_done(struct io_req *r)
{
	struct pass *p = r->arg;

	if (r->result < 0 && p->err == 0)
		p->err = r->result;
	if (r->result == 0 && !r->write && !stamp_ok(r))
		p->bad_blocks++;
	if (p->err || p->next >= p->size) {
		p->active--;
		return;
	}
	r->off = p->next;
	p->next += p->block;
	if (r->write)
		stamp(r);
	p->again[p->nagain++] = r;
}

static int run_pass(struct io_engine *e, int fd, bool write, const struct opts *o,
		    struct io_req *reqs, char *bufs, struct result *res)
{
	struct io_req *batch[IO_QUEUE_DEPTH_MAX];
	struct pass p = { .e = e, .write = write, .size = o->size, .block = o->block,
			  .again = batch };
	struct rusage r0, r1;
	struct io_stats s0, s1;
	uint64_t t0, t1;
	size_t n = 0;

	io_get_stats(e, &s0);
	getrusage(RUSAGE_SELF, &r0);
	t0 = bench_now_ns();
	for (; n < o->qd && p.next < o->size; n++) {
		struct io_req *r = &reqs[n];

		memset(r, 0, sizeof(*r));
		r->fd = fd;
		r->write = write;
		r->buf = bufs + n * o->block;
		r->len = o->block;
		r->off = p.next;
		r->done = pass_done;
		r->arg = &p;
		p.next += o->block;
		if (write)
			stamp(r);
		batch[n] = r;
	}
	p.active = n;
	io_submit(e, batch, n);
	while (p.active > 0) {
		struct pollfd pf = { .fd = io_eventfd(e), .events = POLLIN };
		int rc = poll(&pf, 1, 30000);

		if (rc == 0) {
			fprintf(stderr, "bench_io: no completion for 30 s\n");
			return -ETIMEDOUT;
		}
		if (rc < 0 && errno != EINTR)
			return -errno;
		io_reap(e);
		if (p.nagain > 0) {
			io_submit(e, batch, p.nagain);
			p.nagain = 0;
		}
	}
	t1 = bench_now_ns();
	getrusage(RUSAGE_SELF, &r1);
	io_get_stats(e, &s1);
	res->retries = s1.retries - s0.retries;
	if (p.err) {
		fprintf(stderr, "bench_io: %s failed: %s\n", write ? "write" : "read",
			strerror(-p.err));
		return p.err;
	}
	if (p.bad_blocks) {
		fprintf(stderr, "bench_io: %llu blocks read back wrong\n",
			(unsigned long long)p.bad_blocks);
		return -EIO;
	}
	res->ok = true;
	res->gbps = (double)o->size / ((double)(t1 - t0));
	res->cpu_pct = 100.0 * (cpu_seconds(&r1) - cpu_seconds(&r0)) / ((double)(t1 - t0) / 1e9);
	return 0;
}

/*
 * Buffers for one pass, fresh each time as a fio job's are: plain anonymous pages
 * that only the pass itself touches (fio's --mem=malloc), or 2 MiB-aligned memory
 * advised for transparent huge pages (the kind the daemon's host arena uses).
 * Which one matters more than it seems: on a virtual disk the read figure depends
 * on how physically scattered the destination pages are.
 */
static char *buffers_map(size_t len, bool huge)
{
	size_t align = huge ? (size_t)2 << 20 : 4096;
	size_t total = len + align, head;
	char *p = mmap(NULL, total, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);

	if (p == MAP_FAILED)
		return NULL;
	/* Trim the mapping to an aligned [p + head, p + head + len). */
	head = (align - (uintptr_t)p % align) % align;
	if (head)
		munmap(p, head);
	munmap(p + head + len, total - head - len);
	if (huge)
		(void)madvise(p + head, len, MADV_HUGEPAGE);
	return p + head;
}

/* One pass over path through a fresh engine of backend b, as fio runs each job
 * with a fresh ring and fresh buffers. */
static int run_engine_pass(enum io_backend b, const struct opts *o, const char *path, bool write,
			   bool huge, struct result *res, char *why, size_t whycap, int *reg_rc)
{
	struct io_config cfg = { .backend = b, .queue_depth = o->qd, .threads = o->threads };
	size_t len = (size_t)o->qd * o->block;
	struct io_engine *e = NULL;
	struct io_req *reqs = NULL;
	char *bufs = NULL;
	int fd = -1, rc;

	rc = io_open(&cfg, &e, why, whycap);
	if (rc < 0) {
		fprintf(stderr, "bench_io: %s\n", why);
		return rc;
	}
	reqs = calloc(o->qd, sizeof(*reqs));
	bufs = buffers_map(len, huge);
	if (!reqs || !bufs) {
		rc = -ENOMEM;
		goto out;
	}
	/* Like fio, which fills its write buffers once; read buffers stay untouched. */
	if (write)
		memset(bufs, 0x6b, len);
	*reg_rc = o->register_buffers ? io_buffers_register(e, bufs, len) : -ECANCELED;
	fd = write ? open(path, O_RDWR | O_CREAT | O_TRUNC | O_DIRECT | O_CLOEXEC, 0600)
		   : open(path, O_RDONLY | O_DIRECT | O_CLOEXEC);
	if (fd < 0) {
		rc = -errno;
		fprintf(stderr, "bench_io: %s: %s\n", path, strerror(errno));
		goto out;
	}
	/* Like fio's default fallocate=native; where unsupported, write into holes. */
	if (write)
		(void)fallocate(fd, 0, 0, (off_t)o->size);
	rc = run_pass(e, fd, write, o, reqs, bufs, res);
out:
	if (fd >= 0)
		close(fd);
	io_close(e);
	if (bufs)
		munmap(bufs, len);
	free(reqs);
	return rc;
}

/* Write then read a fresh file through one backend, like fio's two jobs. */
static int run_engine(enum io_backend b, const struct opts *o, bool huge, struct result *wr,
		      struct result *rd, char *why, size_t whycap, int *reg_rc)
{
	char path[4200];
	int rc;

	snprintf(path, sizeof(path), "%s/kvtier-bench-io.%d.dat", o->dir, (int)getpid());
	rc = run_engine_pass(b, o, path, true, huge, wr, why, whycap, reg_rc);
	if (rc == 0)
		rc = run_engine_pass(b, o, path, false, huge, rd, why, whycap, reg_rc);
	unlink(path);
	return rc;
}

/* ---- the fio baseline -------------------------------------------------------- */

/* jobs[0].<key> (a number at the job's top level, after its read/write/trim
 * sections, e.g. usr_cpu), or -1. */
static double fio_job_number(const char *json, const char *key)
{
	char k[40];
	const char *p = strstr(json, "\"jobs\"");

	snprintf(k, sizeof(k), "\"%s\" :", key);
	if (!p || !(p = strstr(p, k)))
		return -1;
	return strtod(p + strlen(k), NULL);
}

static int run_fio(const struct opts *o, bool write, struct result *res, char *cmd, size_t cmdcap)
{
	char file[4200], size[64], bs[64], qd[32];
	const char *argv[16];
	size_t n = 0;
	const char *json;
	double cpu = 0;
	uint64_t t0, t1;
	int rc;

	snprintf(file, sizeof(file), "--filename=%s/kvtier-bench-fio.%d.dat", o->dir, (int)getpid());
	snprintf(size, sizeof(size), "--size=%llu", (unsigned long long)o->size);
	snprintf(bs, sizeof(bs), "--bs=%zu", o->block);
	snprintf(qd, sizeof(qd), "--iodepth=%u", o->qd);
	argv[n++] = "fio";
	argv[n++] = "--name=kvtier-bench-io";
	argv[n++] = file;
	argv[n++] = size;
	argv[n++] = bs;
	argv[n++] = qd;
	argv[n++] = "--ioengine=io_uring";
	argv[n++] = "--direct=1";
	argv[n++] = "--fallocate=native";
	argv[n++] = write ? "--rw=write" : "--rw=read";
	if (o->register_buffers)
		argv[n++] = "--fixedbufs=1";
	argv[n++] = "--output-format=json";
	argv[n] = NULL;
	t0 = bench_now_ns();
	rc = bench_fio_run("bench_io", argv, write, cmd, cmdcap, &res->gbps, &json, &cpu);
	t1 = bench_now_ns();
	if (rc != 0)
		return rc;
	res->ok = true;
	/* fio's own figure for the job (its set-up excluded), like ours for the pass;
	 * failing that, the whole fio process over its whole run. */
	res->cpu_pct = fio_job_number(json, "usr_cpu") + fio_job_number(json, "sys_cpu");
	if (fio_job_number(json, "usr_cpu") < 0 || fio_job_number(json, "sys_cpu") < 0)
		res->cpu_pct = 100.0 * cpu / ((double)(t1 - t0) / 1e9);
	return 0;
}

/* ---- report ---------------------------------------------------------------------- */

#define MAX_ROUNDS 16

/* One contender's passes over all rounds. */
struct series {
	const char *name;
	struct result w[MAX_ROUNDS], r[MAX_ROUNDS];
	unsigned n;
	bool failed;
};

static int cmp_double(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;

	return x < y ? -1 : x > y;
}

/* Median of what field picks from res[0..n) (all ok), with min and max. */
static double median(const struct result *res, unsigned n, bool cpu, double *lo, double *hi)
{
	double v[MAX_ROUNDS];

	for (unsigned i = 0; i < n; i++)
		v[i] = cpu ? res[i].cpu_pct : res[i].gbps;
	qsort(v, n, sizeof(v[0]), cmp_double);
	*lo = v[0];
	*hi = v[n - 1];
	return n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

static void print_row(struct bench_out *out, const struct series *s, const struct series *base)
{
	double w = 0, r = 0, wc = 0, rc = 0, wlo, whi, rlo, rhi, lo, hi;
	double bw = 0, br = 0;
	char wx[16] = "    -", rx[16] = "    -";

	if (s->failed || s->n == 0) {
		bench_printf(out, "%-24s %s\n", s->name, "failed (see above)");
		return;
	}
	w = median(s->w, s->n, false, &wlo, &whi);
	r = median(s->r, s->n, false, &rlo, &rhi);
	wc = median(s->w, s->n, true, &lo, &hi);
	rc = median(s->r, s->n, true, &lo, &hi);
	if (!base->failed && base->n > 0) {
		bw = median(base->w, base->n, false, &lo, &hi);
		br = median(base->r, base->n, false, &lo, &hi);
		snprintf(wx, sizeof(wx), "%4.2fx", w / bw);
		snprintf(rx, sizeof(rx), "%4.2fx", r / br);
	}
	bench_printf(out, "%-24s %6.2f (%4.2f-%4.2f) %6s %4.0f%%   %6.2f (%4.2f-%4.2f) %6s %4.0f%%\n",
		     s->name, w, wlo, whi, wx, wc, r, rlo, rhi, rx, rc);
}

int main(int argc, char **argv)
{
	struct opts o = { .size = 2ull << 30, .block = 1u << 20, .qd = 32, .threads = 4,
			  .register_buffers = true };
	static struct series fio = { .name = "fio io_uring (baseline)" },
			     uring = { .name = "kvtier io_uring" },
			     pool = { .name = "kvtier thread pool" },
			     uring_thp = { .name = "kvtier io_uring, THP" };
	struct series *all[] = { &fio, &uring, &pool, &uring_thp };
	const unsigned ncontenders = sizeof(all) / sizeof(all[0]);
	char fiover[128], fiocmd[1024] = "", uwhy[256] = "", twhy[256] = "";
	struct bench_out out;
	unsigned rounds = 3;
	int opt, ureg = 0, treg = 0, ret = 0;
	uint64_t v;

	o.dir = getenv("TMPDIR") && *getenv("TMPDIR") ? getenv("TMPDIR") : "/var/tmp";
	while ((opt = getopt(argc, argv, "d:s:b:q:t:r:Ro:h")) != -1) {
		switch (opt) {
		case 'd': o.dir = optarg; break;
		case 'o': o.out = optarg; break;
		case 'R': o.register_buffers = false; break;
		case 's':
			if (parse_bytes(optarg, &o.size))
				goto bad_arg;
			break;
		case 'b':
			if (parse_bytes(optarg, &v) || v % 4096 || v > (1u << 30))
				goto bad_arg;
			o.block = (size_t)v;
			break;
		case 'q':
			if (parse_bytes(optarg, &v) || v > IO_QUEUE_DEPTH_MAX)
				goto bad_arg;
			o.qd = (unsigned)v;
			break;
		case 't':
			if (parse_bytes(optarg, &v) || v > IO_THREADS_MAX)
				goto bad_arg;
			o.threads = (unsigned)v;
			break;
		case 'r':
			if (parse_bytes(optarg, &v) || v > MAX_ROUNDS)
				goto bad_arg;
			rounds = (unsigned)v;
			break;
		case 'h':
			usage(stdout);
			return 0;
		default:
			usage(stderr);
			return 2;
		}
	}
	if (optind != argc)
		goto bad_arg;
	o.size -= o.size % o.block;
	if (o.size == 0)
		goto bad_arg;
	if (bench_out_open(&out, o.out) != 0) {
		fprintf(stderr, "bench_io: cannot write %s: %s\n", o.out, strerror(errno));
		return 1;
	}
	bench_fio_version(fiover, sizeof(fiover));

	bench_print_machine(&out, "bench_io: sequential O_DIRECT write then read, kvtier I/O "
				  "engine beside fio");
	bench_printf(&out, "files:   %s (%s), %.2f GiB each, fresh, preallocated, no fsync\n",
		     o.dir, bench_fs_name(o.dir), (double)o.size / (1u << 30));
	bench_printf(&out, "blocks:  %zu KiB, queue depth %u, thread pool of %u, buffers %s\n",
		     o.block >> 10, o.qd, o.threads,
		     o.register_buffers ? "registered (fio: fixedbufs=1)" : "not registered");
	bench_printf(&out, "memory:  fresh anonymous 4 KiB pages per pass, as fio's; the THP row "
			   "uses 2 MiB-aligned MADV_HUGEPAGE buffers (the host arena's kind)\n");
	bench_printf(&out, "rounds:  %u; each runs every contender, in a rotating order; figures "
			   "are medians (min-max)\n", rounds);

	/* Interleaved rounds with a rotating order, so drift in the device (or the
	 * host behind a virtual disk) falls on every contender alike. */
	for (unsigned round = 0; round < rounds; round++) {
		for (unsigned k = 0; k < ncontenders; k++) {
			struct series *s = all[(round + k) % ncontenders];
			int rc;

			if (s->failed)
				continue;
			if (s == &fio) {
				char path[4200], readcmd[1024];

				rc = run_fio(&o, true, &s->w[s->n], fiocmd, sizeof(fiocmd));
				if (rc == 0)
					rc = run_fio(&o, false, &s->r[s->n], readcmd, sizeof(readcmd));
				snprintf(path, sizeof(path), "%s/kvtier-bench-fio.%d.dat", o.dir,
					 (int)getpid());
				unlink(path);
			} else if (s == &pool) {
				rc = run_engine(IO_BACKEND_THREADS, &o, false, &s->w[s->n], &s->r[s->n],
						twhy, sizeof(twhy), &treg);
			} else {
				rc = run_engine(IO_BACKEND_URING, &o, s == &uring_thp, &s->w[s->n],
						&s->r[s->n], uwhy, sizeof(uwhy), &ureg);
			}
			if (rc != 0)
				s->failed = true;
			else
				s->n++;
		}
	}

	bench_printf(&out, "fio:     %s: %s%s\n", fiover, fiocmd[0] ? fiocmd : "did not run",
		     fiocmd[0] ? ", then the same with --rw=read" : "");
	bench_printf(&out, "uring:   %s%s%s\n", uwhy,
		     o.register_buffers ? (ureg == 0 ? "; buffers registered" : "; registration failed: ") : "",
		     o.register_buffers && ureg ? strerror(-ureg) : "");
	bench_printf(&out, "threads: %s\n", twhy);
	bench_printf(&out, "\n%-24s %-19s %6s %5s   %-19s %6s %5s\n", "", "write GB/s", "vs fio", "CPU",
		     "read GB/s", "vs fio", "CPU");
	for (unsigned i = 0; i < ncontenders; i++)
		print_row(&out, all[i], &fio);
	bench_printf(&out, "\nengine retries (short transfers, -EAGAIN), write/read, all rounds:");
	for (unsigned i = 1; i < ncontenders; i++) {
		uint64_t w = 0, r = 0;

		for (unsigned k = 0; k < all[i]->n; k++) {
			w += all[i]->w[k].retries;
			r += all[i]->r[k].retries;
		}
		bench_printf(&out, "%s %s %llu/%llu", i > 1 ? ";" : "", all[i]->name,
			     (unsigned long long)w, (unsigned long long)r);
	}
	bench_printf(&out, "\n");
	for (unsigned i = 0; i < ncontenders; i++)
		if (all[i]->failed)
			ret = 1;
	if (fio.failed)
		bench_printf(&out, "(no fio baseline: see the error above)\n");
	if (bench_out_close(&out) != 0)
		ret = 1;
	return ret;

bad_arg:
	usage(stderr);
	return 2;
}
