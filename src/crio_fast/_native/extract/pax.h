/* PAX extended headers ('x' per entry, 'g' global): the records this
 * extractor honours and the extended attributes they carry. */
#ifndef CRIO_FAST_PAX_H
#define CRIO_FAST_PAX_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <time.h>

#include "byte_buffer.h"
#include "extract_error.h"

struct xattr_item {
    char *name;           /* NUL-terminated attribute name, e.g. "security.capability" */
    unsigned char *value; /* raw bytes; may contain NULs */
    size_t value_len;
};

struct xattr_list {
    struct xattr_item *items;
    size_t count;
    size_t cap;
};

struct pax_attrs {
    bool has_path;
    struct byte_buffer path;
    bool has_linkpath;
    struct byte_buffer linkpath;
    bool has_size;
    uint64_t size;
    bool has_uid;
    uint32_t uid;
    bool has_gid;
    uint32_t gid;
    bool has_mtime;
    struct timespec mtime;
    struct xattr_list xattrs;
};

/* Parses the records of one extended header into `attrs` (adding to what is
 * there; a record with an empty value unsets that keyword). For a global
 * header path, linkpath and size are ignored: they cannot sensibly apply to
 * every later entry. Returns -1 with `err` set on malformed records or on
 * keywords that cannot be honoured (sparse files). */
int pax_parse(const char *data, size_t len, bool global, struct pax_attrs *attrs, struct extract_error *err);

/* Forgets all values, keeping allocations for reuse. */
void pax_attrs_reset(struct pax_attrs *attrs);

void pax_attrs_free(struct pax_attrs *attrs);

void xattr_list_clear(struct xattr_list *list);
void xattr_list_free(struct xattr_list *list);

#endif
