/*
 * The CRI log format (what the kubelet reads):
 *
 *     2016-10-06T00:17:09.669794202Z stdout F a whole line
 *     2016-10-06T00:17:09.669794202Z stderr P the first part of a long line
 *
 * Each chunk read from a container stream is split at newlines. A line that
 * ends inside the chunk is an F record; bytes after the last newline of the
 * chunk become a P record at once (as conmon does: nothing is buffered, so a
 * partial line at EOF is already on disk as P), and content longer than the
 * line cap is cut into P records of at most the cap. Timestamps are UTC.
 */
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/uio.h>
#include <time.h>

#include "monitor.h"

#define LOG_TIMESTAMP_MAX 40
#define LOG_IOV_BATCH 64

size_t format_log_timestamp(uint64_t timestamp_ns, char *out, size_t out_size)
{
    time_t seconds = (time_t)(timestamp_ns / 1000000000ull);
    unsigned long nanoseconds = (unsigned long)(timestamp_ns % 1000000000ull);
    struct tm utc;
    if (!gmtime_r(&seconds, &utc))
        memset(&utc, 0, sizeof(utc));
    int used = snprintf(out, out_size, "%04d-%02d-%02dT%02d:%02d:%02d.%09luZ", utc.tm_year + 1900, utc.tm_mon + 1,
                        utc.tm_mday, utc.tm_hour, utc.tm_min, utc.tm_sec, nanoseconds);
    return used < 0 ? 0 : (size_t)used;
}

/* writev everything, continuing after short writes. */
static int writev_all(int fd, struct iovec *iov, int count)
{
    while (count > 0) {
        ssize_t written = writev(fd, iov, count);
        if (written < 0) {
            if (errno == EINTR)
                continue;
            return -errno;
        }
        size_t left = (size_t)written;
        while (count > 0 && left >= iov->iov_len) {
            left -= iov->iov_len;
            iov++;
            count--;
        }
        if (count > 0) {
            iov->iov_base = (char *)iov->iov_base + left;
            iov->iov_len -= left;
        }
    }
    return 0;
}

int log_write_records(int fd, enum log_stream stream, const char *data, size_t length, size_t line_max,
                      uint64_t timestamp_ns, struct error *err)
{
    char prefix[LOG_TIMESTAMP_MAX + 16];
    size_t prefix_length = format_log_timestamp(timestamp_ns, prefix, LOG_TIMESTAMP_MAX);
    const char *stream_name = stream == LOG_STDERR ? " stderr " : " stdout ";
    memcpy(prefix + prefix_length, stream_name, 8);
    prefix_length += 8;
    static char full_tag[] = "F ", partial_tag[] = "P ", newline[] = "\n";

    struct iovec iov[LOG_IOV_BATCH];
    int used = 0;
    while (length > 0) {
        /* Look one byte past the cap: a line of exactly line_max bytes is still whole. */
        size_t window = length < line_max + 1 ? length : line_max + 1;
        const char *line_end = memchr(data, '\n', window);
        size_t content;
        bool partial;
        if (line_end) {
            content = (size_t)(line_end - data) + 1; /* the record keeps its newline */
            partial = false;
        } else {
            content = length < line_max ? length : line_max;
            partial = true;
        }
        if (used + 4 > LOG_IOV_BATCH) {
            int rc = writev_all(fd, iov, used);
            if (rc < 0)
                return error_errno(err, -rc, "write container log");
            used = 0;
        }
        iov[used++] = (struct iovec){prefix, prefix_length};
        iov[used++] = (struct iovec){partial ? partial_tag : full_tag, 2};
        iov[used++] = (struct iovec){(void *)data, content};
        if (partial)
            iov[used++] = (struct iovec){newline, 1};
        data += content;
        length -= content;
    }
    if (used > 0) {
        int rc = writev_all(fd, iov, used);
        if (rc < 0)
            return error_errno(err, -rc, "write container log");
    }
    return 0;
}
