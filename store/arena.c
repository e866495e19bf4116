/*
 * arena.c - maps the host tier's arena (see arena.h for the modes).
 *
 * Why each step:
 *  - Huge pages: a multi-GiB arena in 4 KiB pages costs a TLB miss every few
 *    kilobytes of a copy; 2 MiB pages take that off the data path. Explicit
 *    hugetlb pages are reserved at mmap time (no MAP_NORESERVE), so a shortage shows
 *    up here as an error rather than as SIGBUS in the middle of a copy.
 *  - THP fallback: the mapping is aligned to 2 MiB so the kernel can actually back
 *    it with huge pages once it is advised.
 *  - mlock: pinned, never-swapped memory is what DMA engines and a later
 *    cudaHostRegister want. In AUTO mode we only lock what RLIMIT_MEMLOCK allows,
 *    even when privileged, so that an unconfigured daemon does not quietly pin
 *    gigabytes; the operator raises LimitMEMLOCK or says host_mlock = on.
 *  - MADV_DONTDUMP: a core dump of the daemon should not carry every tenant's KV
 *    cache (size, and privacy).
 */
#include "arena.h"

#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/resource.h>

#define THP_SIZE (2u << 20)
#define DEFAULT_HUGE_SIZE (2u << 20)

/* The default huge page size MAP_HUGETLB uses (Hugepagesize in /proc/meminfo). */
static size_t huge_page_size(void)
{
	FILE *f = fopen("/proc/meminfo", "re");
	if (!f)
		return DEFAULT_HUGE_SIZE;
	char line[256];
	size_t size = DEFAULT_HUGE_SIZE;
	while (fgets(line, sizeof(line), f)) {
		unsigned long kb;
		if (sscanf(line, "Hugepagesize: %lu kB", &kb) == 1 && kb > 0) {
			size = (size_t)kb * 1024;
			break;
		}
	}
	fclose(f);
	return size;
}

static size_t round_up(size_t x, size_t to)
{
	return (x + to - 1) / to * to;
}

static int map_hugetlb(struct arena *a, size_t len)
{
	size_t hp = huge_page_size();
	if (len > SIZE_MAX - hp)
		return -ENOMEM;
	size_t map_len = round_up(len, hp);
	void *p = mmap(NULL, map_len, PROT_READ | PROT_WRITE,
		       MAP_PRIVATE | MAP_ANONYMOUS | MAP_HUGETLB, -1, 0);
	if (p == MAP_FAILED)
		return -errno;
	a->map = p;
	a->map_len = map_len;
	a->base = p;
	return 0;
}

/* Anonymous memory; aligned to THP_SIZE when align is set (over-map, then trim). */
static int map_plain(struct arena *a, size_t len, bool align)
{
	size_t extra = align ? THP_SIZE : 0;
	if (len > SIZE_MAX - extra)
		return -ENOMEM;
	void *p = mmap(NULL, len + extra, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS,
		       -1, 0);
	if (p == MAP_FAILED)
		return -errno;
	uint8_t *start = p;
	if (align) {
		uintptr_t u = (uintptr_t)p;
		uint8_t *aligned = start + (round_up(u, THP_SIZE) - u);
		size_t head = (size_t)(aligned - start);
		size_t tail = extra - head;
		if (head)
			munmap(start, head);
		if (tail)
			munmap(aligned + len, tail);
		start = aligned;
	}
	a->map = start;
	a->map_len = len;
	a->base = start;
	return 0;
}

static int lock_arena(struct arena *a, enum t1_mode lock, struct t1_report *rep)
{
	if (lock == T1_OFF)
		return 0;
	if (lock == T1_AUTO) {
		struct rlimit rl;
		if (getrlimit(RLIMIT_MEMLOCK, &rl) < 0) {
			rep->lock_error = -errno;
			return 0;
		}
		if (rl.rlim_cur != RLIM_INFINITY && rl.rlim_cur < a->map_len) {
			rep->lock_error = -ENOMEM;
			return 0;
		}
	}
	if (mlock(a->map, a->map_len) < 0) {
		rep->lock_error = -errno;
		return lock == T1_ON ? rep->lock_error : 0;
	}
	rep->locked = true;
	return 0;
}

#ifndef MADV_POPULATE_WRITE
#define MADV_POPULATE_WRITE 23 /* Linux 5.14 */
#endif
#define PREFAULT_STEP ((size_t)64 << 20)

/* Fault the mapping in, a step at a time, until done, refused or told to stop. */
static void *prefault_main(void *arg)
{
	struct arena *a = arg;
	for (size_t off = 0; off < a->map_len && !atomic_load(&a->prefault_stop);
	     off += PREFAULT_STEP) {
		size_t n = a->map_len - off < PREFAULT_STEP ? a->map_len - off : PREFAULT_STEP;
		if (madvise((uint8_t *)a->map + off, n, MADV_POPULATE_WRITE) != 0)
			break; /* EINVAL before 5.14; ENOMEM/EFAULT: leave it to use */
	}
	return NULL;
}

static void prefault_start(struct arena *a, struct t1_report *rep)
{
	/* Refused at once by kernels without the advice: try one page first. */
	if (madvise(a->map, 4096, MADV_POPULATE_WRITE) != 0)
		return;
	atomic_store(&a->prefault_stop, false);
	if (pthread_create(&a->prefault_thread, NULL, prefault_main, a) == 0) {
		a->prefaulting = true;
		rep->prefault = true;
	}
}

int arena_map(struct arena *a, size_t len, enum t1_mode huge, enum t1_mode lock,
	      struct t1_report *rep)
{
	memset(a, 0, sizeof(*a));
	memset(rep, 0, sizeof(*rep));
	if (len == 0)
		return -EINVAL;

	int rc = -EINVAL;
	if (huge != T1_OFF) {
		rc = map_hugetlb(a, len);
		if (rc == 0) {
			rep->hugetlb = true;
		} else {
			rep->huge_error = rc;
			if (huge == T1_ON)
				return rc;
		}
	}
	if (!rep->hugetlb) {
		rc = map_plain(a, len, huge == T1_AUTO);
		if (rc < 0)
			return rc;
		if (huge == T1_AUTO)
			rep->thp = madvise(a->map, a->map_len, MADV_HUGEPAGE) == 0;
	}
	a->len = len;
	(void)madvise(a->map, a->map_len, MADV_DONTDUMP);

	rc = lock_arena(a, lock, rep);
	if (rc < 0)
		goto out_unmap;
	if (!rep->locked)
		prefault_start(a, rep);
	return 0;

out_unmap:
	arena_unmap(a);
	rep->hugetlb = rep->thp = false;
	return rc;
}

void arena_unmap(struct arena *a)
{
	if (a->prefaulting) {
		atomic_store(&a->prefault_stop, true);
		pthread_join(a->prefault_thread, NULL);
		a->prefaulting = false;
	}
	if (a->map)
		munmap(a->map, a->map_len);
	memset(a, 0, sizeof(*a));
}
