/* A growable byte buffer, always kept NUL-terminated so it can be passed to
 * path syscalls directly. */
#ifndef CRIO_FAST_BYTE_BUFFER_H
#define CRIO_FAST_BYTE_BUFFER_H

#include <errno.h>
#include <stdlib.h>
#include <string.h>

struct byte_buffer {
    char *data;
    size_t len;
    size_t cap; /* allocated bytes, including room for the terminating NUL */
};

/* Makes room for `extra` more bytes plus the NUL; returns -1 with errno set. */
static inline int byte_buffer_reserve(struct byte_buffer *b, size_t extra)
{
    if (extra > (size_t)-1 - b->len - 1) {
        errno = ENOMEM;
        return -1;
    }
    size_t need = b->len + extra + 1;
    if (need <= b->cap)
        return 0;
    size_t cap = b->cap ? b->cap : 256;
    while (cap < need)
        cap = cap > ((size_t)-1) / 2 ? need : cap * 2;
    char *data = realloc(b->data, cap);
    if (data == NULL)
        return -1;
    b->data = data;
    b->cap = cap;
    return 0;
}

static inline int byte_buffer_append(struct byte_buffer *b, const void *src, size_t n)
{
    if (byte_buffer_reserve(b, n) < 0)
        return -1;
    if (n > 0)
        memcpy(b->data + b->len, src, n);
    b->len += n;
    b->data[b->len] = '\0';
    return 0;
}

static inline int byte_buffer_set(struct byte_buffer *b, const void *src, size_t n)
{
    b->len = 0;
    return byte_buffer_append(b, src, n);
}

static inline void byte_buffer_truncate(struct byte_buffer *b, size_t len)
{
    if (len < b->len) {
        b->len = len;
        b->data[len] = '\0';
    }
}

static inline void byte_buffer_free(struct byte_buffer *b)
{
    free(b->data);
    b->data = NULL;
    b->len = 0;
    b->cap = 0;
}

#endif
