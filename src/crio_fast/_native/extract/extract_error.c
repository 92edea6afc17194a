#include "extract_error.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Names longer than this are shown abbreviated, with their real length, so a
 * hostile 1 MiB name does not become a 1 MiB exception message. */
#define ENTRY_NAME_SHOWN_MAX 512

static const char OUT_OF_MEMORY_MESSAGE[] = "out of memory while reporting an extraction error";

void extract_error_clear(struct extract_error *err)
{
    free(err->entry);
    if (!err->message_is_static)
        free(err->message);
    err->entry = NULL;
    err->message = NULL;
    err->message_is_static = 0;
    err->errnum = 0;
}

int extract_error_is_set(const struct extract_error *err)
{
    return err->message != NULL;
}

static char *describe_entry(const char *entry)
{
    size_t len = strlen(entry);
    char *shown = NULL;
    if (len <= ENTRY_NAME_SHOWN_MAX) {
        if (asprintf(&shown, "entry '%s': ", entry) < 0)
            return NULL;
    } else if (asprintf(&shown, "entry '%.*s...' (name of %zu bytes): ", ENTRY_NAME_SHOWN_MAX / 2, entry, len) < 0) {
        return NULL;
    }
    return shown;
}

int extract_error_set(struct extract_error *err, int errnum, const char *entry, const char *fmt, ...)
{
    char errno_text[256];
    char *what = NULL;
    char *prefix = NULL;
    char *message = NULL;
    va_list ap;

    extract_error_clear(err);
    err->errnum = errnum;

    va_start(ap, fmt);
    int rc = vasprintf(&what, fmt, ap);
    va_end(ap);
    if (rc < 0)
        goto out_of_memory;
    if (entry != NULL) {
        err->entry = strdup(entry);
        prefix = describe_entry(entry);
        if (err->entry == NULL || prefix == NULL)
            goto out_of_memory;
    }
    if (errnum != 0)
        rc = asprintf(&message, "%s%s: %s", prefix ? prefix : "", what,
                      strerror_r(errnum, errno_text, sizeof errno_text));
    else
        rc = asprintf(&message, "%s%s", prefix ? prefix : "", what);
    if (rc < 0)
        goto out_of_memory;
    free(what);
    free(prefix);
    err->message = message;
    return -1;

out_of_memory:
    free(what);
    free(prefix);
    err->message = (char *)OUT_OF_MEMORY_MESSAGE;
    err->message_is_static = 1;
    return -1;
}
