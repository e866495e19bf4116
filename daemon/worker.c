/* worker.c - the copy engine's threads, queues and completion eventfd. */
#include "worker.h"

#include "codec.h"

#include <errno.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <unistd.h>

struct workers {
	pthread_mutex_t lock;
	pthread_cond_t cond;
	struct job *head, *tail;   /* jobs with unclaimed segments */
	pthread_mutex_t done_lock;
	struct job *done_head, *done_tail;
	int efd;
	bool stopping;
	size_t busy;               /* loop thread only */
	unsigned nthreads;
	int zstd_level;
	pthread_t *threads;
};

static void complete(struct workers *w, struct job *j)
{
	pthread_mutex_lock(&w->done_lock);
	j->next = NULL;
	if (w->done_tail)
		w->done_tail->next = j;
	else
		w->done_head = j;
	w->done_tail = j;
	pthread_mutex_unlock(&w->done_lock);
	uint64_t one = 1;
	/* The counter cannot overflow in practice; a failed write only delays the reap
	 * until the next wake-up, and the loop wakes at least every tick. */
	ssize_t r = write(w->efd, &one, sizeof(one));
	(void)r;
}

static void *worker_main(void *arg)
{
	struct workers *w = arg;
	/* Without a codec context this worker still copies; codec tasks then fail
	 * cleanly inside their run function (it checks for NULL). */
	struct codec_ctx *ctx = NULL;
	if (codec_ctx_new(w->zstd_level, &ctx) < 0)
		ctx = NULL;
	for (;;) {
		pthread_mutex_lock(&w->lock);
		while (!w->head && !w->stopping)
			pthread_cond_wait(&w->cond, &w->lock);
		if (!w->head) {
			pthread_mutex_unlock(&w->lock);
			codec_ctx_free(ctx);
			return NULL;
		}
		struct job *j = w->head;
		size_t i = j->next_seg++;
		if (j->next_seg == j->nsegs) {
			w->head = j->next;
			if (!w->head)
				w->tail = NULL;
		}
		pthread_mutex_unlock(&w->lock);

		if (j->run)
			j->run(j, i, ctx);
		else
			memcpy(j->segs[i].dst, j->segs[i].src, j->segs[i].len);
		if (atomic_fetch_sub(&j->remaining, 1) == 1)
			complete(w, j);
	}
}

int workers_start(unsigned n, int zstd_level, struct workers **out)
{
	if (n == 0)
		return -EINVAL;
	struct workers *w = calloc(1, sizeof(*w));
	if (!w)
		return -ENOMEM;
	int err = -ENOMEM;
	w->zstd_level = zstd_level;
	w->threads = calloc(n, sizeof(*w->threads));
	if (!w->threads)
		goto out_free;
	w->efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
	if (w->efd < 0) {
		err = -errno;
		goto out_free;
	}
	pthread_mutex_init(&w->lock, NULL);
	pthread_mutex_init(&w->done_lock, NULL);
	pthread_cond_init(&w->cond, NULL);
	for (unsigned i = 0; i < n; i++) {
		int rc = pthread_create(&w->threads[i], NULL, worker_main, w);
		if (rc) {
			err = -rc;
			w->nthreads = i;
			workers_stop(w);
			return err;
		}
		w->nthreads = i + 1;
	}
	*out = w;
	return 0;
out_free:
	free(w->threads);
	free(w);
	return err;
}

int workers_eventfd(const struct workers *w)
{
	return w->efd;
}

void workers_submit(struct workers *w, struct job *j)
{
	w->busy++;
	j->next = NULL;
	j->next_seg = 0;
	atomic_store(&j->remaining, j->nsegs);
	if (j->nsegs == 0) {
		complete(w, j);
		return;
	}
	pthread_mutex_lock(&w->lock);
	if (w->tail)
		w->tail->next = j;
	else
		w->head = j;
	w->tail = j;
	pthread_cond_broadcast(&w->cond);
	pthread_mutex_unlock(&w->lock);
}

void workers_reap(struct workers *w)
{
	uint64_t v;
	ssize_t r = read(w->efd, &v, sizeof(v));
	(void)r;
	pthread_mutex_lock(&w->done_lock);
	struct job *list = w->done_head;
	w->done_head = w->done_tail = NULL;
	pthread_mutex_unlock(&w->done_lock);
	while (list) {
		struct job *j = list;
		list = j->next;
		w->busy--;
		j->done(j);
	}
}

size_t workers_busy(const struct workers *w)
{
	return w->busy;
}

void workers_stop(struct workers *w)
{
	if (!w)
		return;
	pthread_mutex_lock(&w->lock);
	w->stopping = true;
	pthread_cond_broadcast(&w->cond);
	pthread_mutex_unlock(&w->lock);
	for (unsigned i = 0; i < w->nthreads; i++)
		pthread_join(w->threads[i], NULL);
	close(w->efd);
	pthread_cond_destroy(&w->cond);
	pthread_mutex_destroy(&w->lock);
	pthread_mutex_destroy(&w->done_lock);
	free(w->threads);
	free(w);
}

int copy_segs_add(struct copy_seg **segs, size_t *n, size_t *cap, void *dst, const void *src,
		  size_t len)
{
	while (len) {
		if (*n == *cap) {
			size_t ncap = *cap ? *cap * 2 : 16;
			struct copy_seg *s = realloc(*segs, ncap * sizeof(*s));
			if (!s)
				return -ENOMEM;
			*segs = s;
			*cap = ncap;
		}
		size_t piece = len < COPY_PIECE ? len : COPY_PIECE;
		(*segs)[(*n)++] = (struct copy_seg){ dst, src, piece };
		dst = (uint8_t *)dst + piece;
		src = (const uint8_t *)src + piece;
		len -= piece;
	}
	return 0;
}
