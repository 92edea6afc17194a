#include "pax.h"

#include <errno.h>
#include <string.h>

static const char XATTR_PREFIX[] = "SCHILY.xattr.";
static const char GNU_SPARSE_PREFIX[] = "GNU.sparse.";

void xattr_list_clear(struct xattr_list *list)
{
    for (size_t i = 0; i < list->count; i++) {
        free(list->items[i].name);
        free(list->items[i].value);
    }
    list->count = 0;
}

void xattr_list_free(struct xattr_list *list)
{
    xattr_list_clear(list);
    free(list->items);
    list->items = NULL;
    list->cap = 0;
}

void pax_attrs_reset(struct pax_attrs *attrs)
{
    attrs->has_path = false;
    attrs->has_linkpath = false;
    attrs->has_size = false;
    attrs->has_uid = false;
    attrs->has_gid = false;
    attrs->has_mtime = false;
    xattr_list_clear(&attrs->xattrs);
}

void pax_attrs_free(struct pax_attrs *attrs)
{
    pax_attrs_reset(attrs);
    byte_buffer_free(&attrs->path);
    byte_buffer_free(&attrs->linkpath);
    xattr_list_free(&attrs->xattrs);
}

static void xattr_list_remove(struct xattr_list *list, const char *name, size_t name_len)
{
    for (size_t i = 0; i < list->count; i++) {
        struct xattr_item *item = &list->items[i];
        if (strlen(item->name) == name_len && memcmp(item->name, name, name_len) == 0) {
            free(item->name);
            free(item->value);
            list->items[i] = list->items[--list->count];
            return;
        }
    }
}

/* Sets (or replaces) one attribute; returns -1 with errno on allocation failure. */
static int xattr_list_put(struct xattr_list *list, const char *name, size_t name_len, const char *value,
                          size_t value_len)
{
    xattr_list_remove(list, name, name_len);
    if (list->count == list->cap) {
        size_t cap = list->cap ? list->cap * 2 : 4;
        struct xattr_item *items = realloc(list->items, cap * sizeof *items);
        if (items == NULL)
            return -1;
        list->items = items;
        list->cap = cap;
    }
    char *name_copy = strndup(name, name_len);
    unsigned char *value_copy = malloc(value_len ? value_len : 1);
    if (name_copy == NULL || value_copy == NULL) {
        free(name_copy);
        free(value_copy);
        return -1;
    }
    memcpy(value_copy, value, value_len);
    list->items[list->count++] = (struct xattr_item){name_copy, value_copy, value_len};
    return 0;
}

static int parse_decimal_u64(const char *s, size_t len, uint64_t *out)
{
    uint64_t value = 0;
    if (len == 0)
        return -1;
    for (size_t i = 0; i < len; i++) {
        if (s[i] < '0' || s[i] > '9')
            return -1;
        unsigned digit = (unsigned)(s[i] - '0');
        if (value > (UINT64_MAX - digit) / 10)
            return -1;
        value = value * 10 + digit;
    }
    *out = value;
    return 0;
}

/* "[-]SECONDS[.FRACTION]"; digits beyond nanoseconds are dropped (precision,
 * not data: the filesystem cannot store them). */
static int parse_pax_time(const char *s, size_t len, struct timespec *out)
{
    bool negative = len > 0 && s[0] == '-';
    if (negative) {
        s++;
        len--;
    }
    const char *dot = memchr(s, '.', len);
    size_t int_len = dot ? (size_t)(dot - s) : len;
    uint64_t seconds;
    if (parse_decimal_u64(s, int_len, &seconds) < 0 || seconds > (uint64_t)INT64_MAX)
        return -1;
    long nanoseconds = 0;
    if (dot != NULL) {
        const char *frac = dot + 1;
        size_t frac_len = len - int_len - 1;
        if (frac_len == 0)
            return -1;
        long scale = 100000000;
        for (size_t i = 0; i < frac_len; i++) {
            if (frac[i] < '0' || frac[i] > '9')
                return -1;
            nanoseconds += (frac[i] - '0') * scale;
            scale /= 10;
        }
    }
    if (negative) {
        /* -1.25 is 1.25 s before the epoch: tv_sec -2, tv_nsec 0.75e9. */
        out->tv_sec = -(time_t)seconds;
        if (nanoseconds > 0) {
            out->tv_sec -= 1;
            nanoseconds = 1000000000L - nanoseconds;
        }
    } else {
        out->tv_sec = (time_t)seconds;
    }
    out->tv_nsec = nanoseconds;
    return 0;
}

static bool key_is(const char *key, size_t key_len, const char *name)
{
    return strlen(name) == key_len && memcmp(key, name, key_len) == 0;
}

static int parse_id(const char *value, size_t len, uint32_t *out)
{
    uint64_t id;
    /* (uid_t)-1 means "leave unchanged" to chown(2), so it is not a usable id. */
    if (parse_decimal_u64(value, len, &id) < 0 || id >= UINT32_MAX)
        return -1;
    *out = (uint32_t)id;
    return 0;
}

static int apply_record(struct pax_attrs *attrs, bool global, const char *key, size_t key_len, const char *value,
                        size_t value_len, struct extract_error *err)
{
    bool unset = value_len == 0;
    size_t xattr_prefix_len = sizeof XATTR_PREFIX - 1;

    if (key_len > xattr_prefix_len && memcmp(key, XATTR_PREFIX, xattr_prefix_len) == 0) {
        const char *name = key + xattr_prefix_len;
        size_t name_len = key_len - xattr_prefix_len;
        if (memchr(name, '\0', name_len) != NULL)
            return extract_error_set(err, 0, NULL, "PAX header: extended attribute name contains a NUL byte");
        if (xattr_list_put(&attrs->xattrs, name, name_len, value, value_len) < 0)
            return extract_error_set(err, errno, NULL, "PAX header: cannot store extended attribute");
        return 0;
    }
    if (key_len >= sizeof GNU_SPARSE_PREFIX - 1 && memcmp(key, GNU_SPARSE_PREFIX, sizeof GNU_SPARSE_PREFIX - 1) == 0)
        return extract_error_set(err, 0, NULL, "PAX header: sparse files (%.*s) are not supported", (int)key_len, key);

    if (key_is(key, key_len, "path") || key_is(key, key_len, "linkpath")) {
        if (global)
            return 0;
        bool is_path = key[0] == 'p';
        if (unset) {
            *(is_path ? &attrs->has_path : &attrs->has_linkpath) = false;
            return 0;
        }
        if (memchr(value, '\0', value_len) != NULL)
            return extract_error_set(err, 0, NULL, "PAX header: %s contains a NUL byte", is_path ? "path" : "linkpath");
        if (byte_buffer_set(is_path ? &attrs->path : &attrs->linkpath, value, value_len) < 0)
            return extract_error_set(err, errno, NULL, "PAX header: cannot store %s", is_path ? "path" : "linkpath");
        *(is_path ? &attrs->has_path : &attrs->has_linkpath) = true;
        return 0;
    }
    if (key_is(key, key_len, "size")) {
        if (global)
            return 0;
        attrs->has_size = false;
        if (unset)
            return 0;
        if (parse_decimal_u64(value, value_len, &attrs->size) < 0 || attrs->size > (uint64_t)INT64_MAX)
            return extract_error_set(err, 0, NULL, "PAX header: invalid size '%.*s'", (int)value_len, value);
        attrs->has_size = true;
        return 0;
    }
    if (key_is(key, key_len, "uid") || key_is(key, key_len, "gid")) {
        bool is_uid = key[0] == 'u';
        bool *has = is_uid ? &attrs->has_uid : &attrs->has_gid;
        *has = false;
        if (unset)
            return 0;
        if (parse_id(value, value_len, is_uid ? &attrs->uid : &attrs->gid) < 0)
            return extract_error_set(err, 0, NULL, "PAX header: invalid %s '%.*s'", is_uid ? "uid" : "gid",
                                     (int)value_len, value);
        *has = true;
        return 0;
    }
    if (key_is(key, key_len, "mtime")) {
        attrs->has_mtime = false;
        if (unset)
            return 0;
        if (parse_pax_time(value, value_len, &attrs->mtime) < 0)
            return extract_error_set(err, 0, NULL, "PAX header: invalid mtime '%.*s'", (int)value_len, value);
        attrs->has_mtime = true;
        return 0;
    }
    /* Everything else (atime, ctime, uname, gname, comment, charset, ACLs,
     * vendor keywords) does not change what is written. */
    return 0;
}

int pax_parse(const char *data, size_t len, bool global, struct pax_attrs *attrs, struct extract_error *err)
{
    size_t pos = 0;
    while (pos < len) {
        /* Some writers pad the header data with NULs after the last record. */
        if (data[pos] == '\0') {
            for (size_t i = pos; i < len; i++) {
                if (data[i] != '\0')
                    return extract_error_set(err, 0, NULL, "PAX header: data after NUL padding at byte %zu", i);
            }
            return 0;
        }
        /* Record: "LENGTH KEY=VALUE\n", LENGTH counting the whole record. */
        const char *record = data + pos;
        size_t available = len - pos;
        const char *space = memchr(record, ' ', available < 21 ? available : 21);
        uint64_t record_len;
        if (space == NULL || parse_decimal_u64(record, (size_t)(space - record), &record_len) < 0 ||
            record_len > available || record_len < (uint64_t)(space - record) + 3 || record[record_len - 1] != '\n')
            return extract_error_set(err, 0, NULL, "PAX header: malformed record at byte %zu", pos);
        const char *key = space + 1;
        const char *end = record + record_len - 1; /* the newline */
        const char *equals = memchr(key, '=', (size_t)(end - key));
        if (equals == NULL || equals == key)
            return extract_error_set(err, 0, NULL, "PAX header: record without keyword at byte %zu", pos);
        if (apply_record(attrs, global, key, (size_t)(equals - key), equals + 1, (size_t)(end - equals - 1), err) < 0)
            return -1;
        pos += record_len;
    }
    return 0;
}
