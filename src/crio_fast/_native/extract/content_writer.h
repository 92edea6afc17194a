/* Parallel writing of regular file content.
 *
 * Copying file content into the page cache is most of an extraction's CPU
 * time, and it scales across cores when different files are written. The
 * stream engine hands a file whose remaining content lies wholly in the
 * current feed buffer to this pool as a job (write, owner, mode, mtime,
 * close) and goes on parsing. At the end of every feed call it drains the
 * queue, running leftover jobs itself and waiting for those in flight, so no
 * job ever outlives the caller's buffer. */
#ifndef CRIO_FAST_CONTENT_WRITER_H
#define CRIO_FAST_CONTENT_WRITER_H

#include <pthread.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <time.h>

#include "extract_error.h"

struct content_job {
    int fd;                     /* open regular file; the job closes it */
    const unsigned char *data;  /* borrowed from the feed buffer */
    size_t len;
    bool set_owner;
    uint32_t uid;
    uint32_t gid;
    bool set_mode;
    uint32_t mode;
    struct timespec mtime;
    char *name;                 /* entry name for messages; the job frees it */
};

struct content_writer {
    pthread_mutex_t lock;
    pthread_cond_t job_queued;   /* a job was queued, or shutdown began */
    pthread_cond_t job_finished; /* in_flight dropped */
    struct content_job *ring;
    size_t capacity;
    size_t head;                 /* index of the oldest queued job */
    size_t queued;
    size_t in_flight;            /* taken by a thread, not finished yet */
    bool shutting_down;
    bool failed;                 /* a job failed: later jobs only close their fd */
    struct extract_error error;  /* the first failure */
    pthread_t *threads;
    size_t thread_count;
    bool started;
};

/* Prepares an idle pool; threads start on the first submit. */
void content_writer_init(struct content_writer *w, size_t thread_count, size_t capacity);

/* Queues a job, or returns 0 when the pool cannot take it now (queue full,
 * or no threads): the caller then runs content_job_run itself. Returns -1
 * with `err` set if the pool could not be started. Ownership of job->fd and
 * job->name passes to the pool when 1 is returned. */
int content_writer_submit(struct content_writer *w, const struct content_job *job, struct extract_error *err);

/* Runs queued jobs in the calling thread and waits for in-flight ones.
 * Returns -1 with `err` set when any job failed since the last drain. */
int content_writer_drain(struct content_writer *w, struct extract_error *err);

/* Stops and joins the threads; the queue must have been drained. */
void content_writer_destroy(struct content_writer *w);

/* Write, chown, chmod, set mtime, close; always closes job->fd and frees
 * job->name. Returns -1 with `err` set on failure. */
int content_job_run(struct content_job *job, struct extract_error *err);

/* Write all of data to fd; -1 with errno on failure. */
int write_fully(int fd, const unsigned char *data, size_t len);

#endif
