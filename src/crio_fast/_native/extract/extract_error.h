/* Errors carried out of the extractor: errno, the entry involved and a full
 * message. Messages are heap-allocated so nothing is cut at a fixed size. */
#ifndef CRIO_FAST_EXTRACT_ERROR_H
#define CRIO_FAST_EXTRACT_ERROR_H

#include <stddef.h>

struct extract_error {
    int errnum;    /* errno of the failing call; 0 for archive format errors */
    char *entry;   /* archive name of the entry being processed, or NULL */
    char *message; /* complete human-readable message, or NULL when unset */
    int message_is_static; /* set when allocation failed and message is a literal */
};

/* Records an error (replacing any earlier one) and returns -1 so callers can
 * write `return extract_error_set(...)`. `entry` may be NULL. When errnum is
 * non-zero its strerror text is appended to the message. */
int extract_error_set(struct extract_error *err, int errnum, const char *entry, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

int extract_error_is_set(const struct extract_error *err);

void extract_error_clear(struct extract_error *err);

#endif
