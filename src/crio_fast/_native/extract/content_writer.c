#include "content_writer.h"
#include "safe_path.h"

#include <errno.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* Largest single write(2) Linux performs; bigger requests are split anyway. */
#define MAX_WRITE_CHUNK 0x7ffff000UL

int write_fully(int fd, const unsigned char *data, size_t len)
{
    while (len > 0) {
        ssize_t n = write(fd, data, len > MAX_WRITE_CHUNK ? MAX_WRITE_CHUNK : len);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            return -1;
        }
        if (n == 0) {
            errno = EIO; /* a regular file write never returns 0 for len > 0 */
            return -1;
        }
        data += n;
        len -= (size_t)n;
    }
    return 0;
}

int content_job_run(struct content_job *job, struct extract_error *err)
{
    struct timespec times[2] = {{0, UTIME_OMIT}, job->mtime};
    int rc = 0;

    /* Owner before mode: chown(2) clears setuid/setgid. mtime last: write
     * would update it. */
    if (write_fully(job->fd, job->data, job->len) < 0)
        rc = extract_error_set(err, errno, job->name, "cannot write file content");
    else if (job->set_owner && fchown(job->fd, job->uid, job->gid) < 0)
        rc = extract_error_set(err, errno, job->name, "cannot change owner to %u:%u", job->uid, job->gid);
    else if (job->set_mode && fchmod(job->fd, job->mode) < 0)
        rc = extract_error_set(err, errno, job->name, "cannot set mode %04o", job->mode);
    else if (futimens(job->fd, times) < 0)
        rc = extract_error_set(err, errno, job->name, "cannot set modification time");
    if (close(job->fd) < 0 && rc == 0)
        rc = extract_error_set(err, errno, job->name, "cannot close file");
    job->fd = -1;
    free(job->name);
    job->name = NULL;
    return rc;
}

/* Runs or cancels one job taken from the queue; called without the lock. */
static void run_taken_job(struct content_writer *w, struct content_job *job, bool cancelled)
{
    struct extract_error job_error = {0};
    int rc = 0;
    if (cancelled) {
        close_quietly(job->fd);
        free(job->name);
    } else {
        rc = content_job_run(job, &job_error);
    }
    pthread_mutex_lock(&w->lock);
    if (rc < 0 && !w->failed) {
        w->failed = true;
        w->error = job_error; /* moves ownership of the message */
        job_error = (struct extract_error){0};
    }
    w->in_flight--;
    pthread_cond_broadcast(&w->job_finished);
    pthread_mutex_unlock(&w->lock);
    extract_error_clear(&job_error);
}

/* With the lock held: takes the oldest job. */
static struct content_job take_job(struct content_writer *w)
{
    struct content_job job = w->ring[w->head];
    w->head = (w->head + 1) % w->capacity;
    w->queued--;
    w->in_flight++;
    return job;
}

static void *writer_thread(void *arg)
{
    struct content_writer *w = arg;
    pthread_mutex_lock(&w->lock);
    for (;;) {
        while (w->queued == 0 && !w->shutting_down)
            pthread_cond_wait(&w->job_queued, &w->lock);
        if (w->queued == 0)
            break; /* shutting down with nothing left */
        struct content_job job = take_job(w);
        bool cancelled = w->failed;
        pthread_mutex_unlock(&w->lock);
        run_taken_job(w, &job, cancelled);
        pthread_mutex_lock(&w->lock);
    }
    pthread_mutex_unlock(&w->lock);
    return NULL;
}

void content_writer_init(struct content_writer *w, size_t thread_count, size_t capacity)
{
    memset(w, 0, sizeof *w);
    w->thread_count = thread_count;
    w->capacity = capacity;
}

static int start_threads(struct content_writer *w, struct extract_error *err)
{
    sigset_t all, previous;
    size_t created = 0;
    int restore_rc;
    int rc = pthread_mutex_init(&w->lock, NULL);
    if (rc != 0)
        return extract_error_set(err, rc, NULL, "cannot create the content writer lock");
    if ((rc = pthread_cond_init(&w->job_queued, NULL)) != 0 ||
        (rc = pthread_cond_init(&w->job_finished, NULL)) != 0) {
        pthread_mutex_destroy(&w->lock);
        return extract_error_set(err, rc, NULL, "cannot create the content writer condition variables");
    }
    w->ring = calloc(w->capacity, sizeof *w->ring);
    w->threads = calloc(w->thread_count, sizeof *w->threads);
    if (w->ring == NULL || w->threads == NULL) {
        rc = errno;
        goto fail;
    }
    w->started = true;
    /* Signals belong to the interpreter's main thread, not to helpers. */
    sigfillset(&all);
    rc = pthread_sigmask(SIG_SETMASK, &all, &previous);
    if (rc != 0)
        goto fail_started;
    for (; created < w->thread_count; created++) {
        rc = pthread_create(&w->threads[created], NULL, writer_thread, w);
        if (rc != 0)
            break;
    }
    restore_rc = pthread_sigmask(SIG_SETMASK, &previous, NULL);
    if (restore_rc != 0 && created > 0) {
        /* The caller's thread would stay deaf to signals: refuse the pool. */
        w->thread_count = created;
        content_writer_destroy(w);
        return extract_error_set(err, restore_rc, NULL, "cannot restore the signal mask after starting writer threads");
    }
    w->thread_count = created;
    if (created == 0)
        goto fail_started;
    return 0;

fail_started:
    w->started = false;
fail:
    free(w->ring);
    free(w->threads);
    w->ring = NULL;
    w->threads = NULL;
    pthread_cond_destroy(&w->job_queued);
    pthread_cond_destroy(&w->job_finished);
    pthread_mutex_destroy(&w->lock);
    return extract_error_set(err, rc, NULL, "cannot start content writer threads");
}

int content_writer_submit(struct content_writer *w, const struct content_job *job, struct extract_error *err)
{
    if (w->thread_count == 0 || w->capacity == 0)
        return 0;
    if (!w->started && start_threads(w, err) < 0)
        return -1;
    pthread_mutex_lock(&w->lock);
    if (w->queued == w->capacity || w->failed) {
        pthread_mutex_unlock(&w->lock);
        return 0;
    }
    w->ring[(w->head + w->queued) % w->capacity] = *job;
    w->queued++;
    pthread_cond_signal(&w->job_queued);
    pthread_mutex_unlock(&w->lock);
    return 1;
}

int content_writer_drain(struct content_writer *w, struct extract_error *err)
{
    if (!w->started)
        return 0;
    pthread_mutex_lock(&w->lock);
    for (;;) {
        if (w->queued > 0) {
            /* Help instead of waiting. */
            struct content_job job = take_job(w);
            bool cancelled = w->failed;
            pthread_mutex_unlock(&w->lock);
            run_taken_job(w, &job, cancelled);
            pthread_mutex_lock(&w->lock);
            continue;
        }
        if (w->in_flight == 0)
            break;
        pthread_cond_wait(&w->job_finished, &w->lock);
    }
    int rc = 0;
    if (w->failed) {
        extract_error_clear(err);
        *err = w->error;
        w->error = (struct extract_error){0};
        rc = -1;
    }
    pthread_mutex_unlock(&w->lock);
    return rc;
}

void content_writer_destroy(struct content_writer *w)
{
    if (!w->started)
        return;
    pthread_mutex_lock(&w->lock);
    w->shutting_down = true;
    w->failed = true; /* anything still queued is only closed */
    pthread_cond_broadcast(&w->job_queued);
    pthread_mutex_unlock(&w->lock);
    for (size_t i = 0; i < w->thread_count; i++)
        pthread_join(w->threads[i], NULL);
    free(w->ring);
    free(w->threads);
    extract_error_clear(&w->error);
    pthread_cond_destroy(&w->job_queued);
    pthread_cond_destroy(&w->job_finished);
    pthread_mutex_destroy(&w->lock);
    w->started = false;
}
