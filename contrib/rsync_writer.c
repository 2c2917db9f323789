/*
 * The receiver's writer thread, for rsync_receiver.py: the system calls
 * that put a small received file in place, made on a thread of their own
 * so that they run beside the Python that parses the next file (as
 * rsync's generator and receiver processes run side by side).
 *
 * Python hands over a file whose data it holds whole and whose checksum
 * has already verified: the directory's descriptor (duplicated here, so
 * Python may close its own), the temp and final names, the data (copied
 * here), and the attributes to give it. The thread creates the temp file
 * (O_EXCL, O_NOFOLLOW; another suffix if the name is taken), writes the
 * data, sets owner (only where it differs), mode and times on the open
 * file, renames it into place and closes it, in the order jobs came.
 * Failures are kept with the job's tag, for Python to report:
 * WR_OPEN, WR_WRITE and WR_RENAME lose the file (its temp file removed),
 * WR_ATTRS only the attribute.
 */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#if defined(_WIN32)
#define WR_API __declspec(dllexport)
#else
#define WR_API __attribute__((visibility("default")))
#endif

#define WR_ABI_VERSION 1
#define WR_MAX_BYTES (32 << 20)	/* data queued at most */
#define WR_MAX_JOBS 4096

enum { WR_OPEN = 1, WR_WRITE = 2, WR_ATTRS = 3, WR_RENAME = 4 };

struct wr_failure {
	int64_t tag;
	int32_t stage;
	int32_t err;
};

struct wr_job {
	struct wr_job *next;
	int64_t tag;
	int dirfd;
	int32_t uid, gid, mode;		/* -1: leave */
	int32_t set_time;
	int64_t sec, nsec;
	size_t len;
	char *tmp;			/* ends in six hex digits */
	char *leaf;
	unsigned char data[];
};

struct wr_writer {
	pthread_mutex_t mu;
	pthread_cond_t work, room, idle;
	struct wr_job *head, *tail;
	size_t bytes;
	int jobs, busy, stop;
	struct wr_failure *failures;
	int nfailures, capfailures;
	unsigned seed;
	pthread_t thread;
};

WR_API int wr_abi_version(void)
{
	return WR_ABI_VERSION;
}

WR_API size_t wr_failure_size(void)
{
	return sizeof(struct wr_failure);
}

static void fail(struct wr_writer *w, const struct wr_job *j, int stage, int err)
{
	pthread_mutex_lock(&w->mu);
	if (w->nfailures == w->capfailures) {
		int cap = w->capfailures ? 2 * w->capfailures : 16;
		struct wr_failure *f = realloc(w->failures, cap * sizeof(*f));

		if (f == NULL) {
			pthread_mutex_unlock(&w->mu);
			return;
		}
		w->failures = f;
		w->capfailures = cap;
	}
	w->failures[w->nfailures].tag = j->tag;
	w->failures[w->nfailures].stage = stage;
	w->failures[w->nfailures].err = err;
	w->nfailures++;
	pthread_mutex_unlock(&w->mu);
}

static int create_tmp(struct wr_writer *w, struct wr_job *j)
{
	static const char hex[] = "0123456789abcdef";
	size_t n = strlen(j->tmp);
	int tries, fd, i;

	for (tries = 0; tries < 100; tries++) {
		fd = openat(j->dirfd, j->tmp, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600);
		if (fd >= 0 || errno != EEXIST || n < 6)
			return fd;
		for (i = 1; i <= 6; i++)
			j->tmp[n - i] = hex[rand_r(&w->seed) & 15];
	}
	errno = EEXIST;
	return -1;
}

static void put_in_place(struct wr_writer *w, struct wr_job *j)
{
	const unsigned char *p = j->data;
	size_t left = j->len;
	struct stat st;
	int fd = create_tmp(w, j);

	if (fd < 0) {
		fail(w, j, WR_OPEN, errno);
		return;
	}
	while (left > 0) {
		ssize_t n = write(fd, p, left);

		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0) {
			fail(w, j, WR_WRITE, n < 0 ? errno : ENOSPC);
			close(fd);
			unlinkat(j->dirfd, j->tmp, 0);
			return;
		}
		p += n;
		left -= (size_t)n;
	}
	if (j->uid != -1 || j->gid != -1) {
		if (fstat(fd, &st) < 0)
			fail(w, j, WR_ATTRS, errno);
		else if ((j->uid != -1 && st.st_uid != (uid_t)j->uid) || (j->gid != -1 && st.st_gid != (gid_t)j->gid))
			if (fchown(fd, (uid_t)j->uid, (gid_t)j->gid) < 0)
				fail(w, j, WR_ATTRS, errno);
	}
	if (j->mode != -1 && fchmod(fd, (mode_t)j->mode) < 0)
		fail(w, j, WR_ATTRS, errno);
	if (j->set_time) {
		struct timespec ts[2];

		ts[0].tv_sec = ts[1].tv_sec = (time_t)j->sec;
		ts[0].tv_nsec = ts[1].tv_nsec = (long)j->nsec;
		if (futimens(fd, ts) < 0)
			fail(w, j, WR_ATTRS, errno);
	}
	if (renameat(j->dirfd, j->tmp, j->dirfd, j->leaf) < 0) {
		fail(w, j, WR_RENAME, errno);
		unlinkat(j->dirfd, j->tmp, 0);
	}
	close(fd);
}

static void *run(void *arg)
{
	struct wr_writer *w = arg;
	struct wr_job *j;

	pthread_mutex_lock(&w->mu);
	for (;;) {
		while (w->head == NULL && !w->stop)
			pthread_cond_wait(&w->work, &w->mu);
		if (w->head == NULL)
			break;
		j = w->head;
		w->head = j->next;
		if (w->head == NULL)
			w->tail = NULL;
		w->busy = 1;
		pthread_mutex_unlock(&w->mu);
		put_in_place(w, j);
		close(j->dirfd);
		pthread_mutex_lock(&w->mu);
		w->bytes -= j->len;
		w->jobs--;
		w->busy = 0;
		free(j);
		pthread_cond_broadcast(&w->room);
		if (w->head == NULL)
			pthread_cond_broadcast(&w->idle);
	}
	pthread_mutex_unlock(&w->mu);
	return NULL;
}

WR_API struct wr_writer *wr_start(unsigned seed)
{
	struct wr_writer *w = calloc(1, sizeof(*w));

	if (w == NULL)
		return NULL;
	pthread_mutex_init(&w->mu, NULL);
	pthread_cond_init(&w->work, NULL);
	pthread_cond_init(&w->room, NULL);
	pthread_cond_init(&w->idle, NULL);
	w->seed = seed;
	if (pthread_create(&w->thread, NULL, run, w) != 0) {
		free(w);
		return NULL;
	}
	return w;
}

/* Queues a job (waiting while too much is queued): 0, or an errno when it
 * could not be queued (Python then puts the file in place itself). */
WR_API int wr_submit(struct wr_writer *w, int64_t tag, int dirfd, const char *tmp, const char *leaf,
		     const void *data, int64_t len, int32_t uid, int32_t gid, int32_t mode,
		     int32_t set_time, int64_t sec, int64_t nsec)
{
	size_t tlen = strlen(tmp) + 1, llen = strlen(leaf) + 1;
	struct wr_job *j;

	if (len < 0)
		return EINVAL;
	j = malloc(sizeof(*j) + (size_t)len + tlen + llen);
	if (j == NULL)
		return ENOMEM;
	j->dirfd = fcntl(dirfd, F_DUPFD_CLOEXEC, 0);
	if (j->dirfd < 0) {
		int err = errno;

		free(j);
		return err;
	}
	j->next = NULL;
	j->tag = tag;
	j->uid = uid;
	j->gid = gid;
	j->mode = mode;
	j->set_time = set_time;
	j->sec = sec;
	j->nsec = nsec;
	j->len = (size_t)len;
	memcpy(j->data, data, (size_t)len);
	j->tmp = (char *)j->data + len;
	memcpy(j->tmp, tmp, tlen);
	j->leaf = j->tmp + tlen;
	memcpy(j->leaf, leaf, llen);
	pthread_mutex_lock(&w->mu);
	while (w->jobs && (w->jobs >= WR_MAX_JOBS || w->bytes + j->len > WR_MAX_BYTES))
		pthread_cond_wait(&w->room, &w->mu);
	if (w->tail)
		w->tail->next = j;
	else
		w->head = j;
	w->tail = j;
	w->jobs++;
	w->bytes += j->len;
	pthread_cond_signal(&w->work);
	pthread_mutex_unlock(&w->mu);
	return 0;
}

/* Waits until every queued file is in place; then hands over (and
 * forgets) up to max failures: how many. */
WR_API int32_t wr_drain(struct wr_writer *w, struct wr_failure *out, int32_t max)
{
	int32_t n;

	pthread_mutex_lock(&w->mu);
	while (w->head != NULL || w->busy)
		pthread_cond_wait(&w->idle, &w->mu);
	n = w->nfailures < max ? w->nfailures : max;
	memcpy(out, w->failures, n * sizeof(*out));
	memmove(w->failures, w->failures + n, (w->nfailures - n) * sizeof(*out));
	w->nfailures -= n;
	pthread_mutex_unlock(&w->mu);
	return n;
}

/* Finishes the queue and ends the thread; failures not drained are lost. */
WR_API void wr_stop(struct wr_writer *w)
{
	pthread_mutex_lock(&w->mu);
	w->stop = 1;
	pthread_cond_signal(&w->work);
	pthread_mutex_unlock(&w->mu);
	pthread_join(w->thread, NULL);
	free(w->failures);
	pthread_mutex_destroy(&w->mu);
	pthread_cond_destroy(&w->work);
	pthread_cond_destroy(&w->room);
	pthread_cond_destroy(&w->idle);
	free(w);
}
