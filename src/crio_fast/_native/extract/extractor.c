/* The stream engine: splits the pushed bytes into headers, metadata and
 * content, merges PAX/GNU overrides into each entry and dispatches it to the
 * writers. Headers are parsed in place when a whole block is in the caller's
 * buffer and copied only when one is split across feed() calls. */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "extractor_internal.h"

/* Bound on PAX and GNU long-name data: real ones are a few KiB; this stops a
 * hostile size field from making us allocate gigabytes. */
#define META_DATA_MAX (16u << 20)

/* Files queued for the writer threads; each holds an open fd, so this also
 * bounds the extra fds one extraction uses. */
#define WRITER_QUEUE_CAPACITY 32

static uint64_t padding_after(uint64_t size)
{
    return (TAR_BLOCK_SIZE - size % TAR_BLOCK_SIZE) % TAR_BLOCK_SIZE;
}

/* The process umask without changing it (umask(2) can only set it, which
 * would race with other threads): read from /proc. When unknown, assume
 * everything is masked so modes are always set explicitly. */
static mode_t read_process_umask(void)
{
    mode_t mask = 0777;
    FILE *status = fopen("/proc/self/status", "re");
    if (status == NULL)
        return mask;
    char line[256];
    while (fgets(line, sizeof line, status) != NULL) {
        unsigned int value;
        if (sscanf(line, "Umask: %o", &value) == 1) {
            mask = (mode_t)(value & 0777);
            break;
        }
    }
    (void)fclose(status); /* read-only: nothing to lose */
    return mask;
}

struct tar_extractor *tar_extractor_new(const char *root, const struct tar_extractor_options *options,
                                        struct extract_error *err)
{
    struct tar_extractor *ex = calloc(1, sizeof *ex);
    if (ex == NULL) {
        extract_error_set(err, errno, NULL, "cannot allocate the extractor");
        return NULL;
    }
    ex->root_fd = open(root, O_PATH | O_DIRECTORY | O_CLOEXEC);
    if (ex->root_fd < 0) {
        extract_error_set(err, errno, NULL, "cannot open extraction root '%s'", root);
        free(ex);
        return NULL;
    }
    ex->options = *options;
    ex->umask = read_process_umask();
    content_writer_init(&ex->writers, options->writer_threads, WRITER_QUEUE_CAPACITY);
    ex->file_fd = -1;
    ex->state = STATE_HEADER;
    dir_cache_init(&ex->parent_cache);
    dir_cache_init(&ex->link_target_cache);
    return ex;
}

void tar_extractor_free(struct tar_extractor *ex)
{
    if (ex == NULL)
        return;
    content_writer_destroy(&ex->writers);
    if (ex->file_fd >= 0)
        close_quietly(ex->file_fd); /* abandoned: the extraction failed or was aborted */
    dir_cache_invalidate(&ex->parent_cache);
    dir_cache_invalidate(&ex->link_target_cache);
    byte_buffer_free(&ex->parent_cache.path);
    byte_buffer_free(&ex->link_target_cache.path);
    if (ex->root_fd >= 0)
        close_quietly(ex->root_fd);
    byte_buffer_free(&ex->meta);
    byte_buffer_free(&ex->entry_name);
    byte_buffer_free(&ex->entry_path);
    byte_buffer_free(&ex->link_path);
    byte_buffer_free(&ex->long_name);
    byte_buffer_free(&ex->long_link);
    pax_attrs_free(&ex->pax_local);
    pax_attrs_free(&ex->pax_global);
    for (size_t i = 0; i < ex->dir_count; i++)
        free(ex->dirs[i].path);
    free(ex->dirs);
    extract_error_clear(&ex->error);
    free(ex);
}


const struct extract_error *tar_extractor_error(const struct tar_extractor *ex)
{
    return &ex->error;
}

/* Per-entry overrides (PAX 'x', GNU 'L'/'K') apply to one entry only. */
static void forget_entry_overrides(struct tar_extractor *ex)
{
    pax_attrs_reset(&ex->pax_local);
    ex->has_long_name = false;
    ex->has_long_link = false;
}

static bool has_pending_overrides(const struct tar_extractor *ex)
{
    const struct pax_attrs *p = &ex->pax_local;
    return ex->has_long_name || ex->has_long_link || p->has_path || p->has_linkpath || p->has_size || p->has_uid ||
           p->has_gid || p->has_mtime || p->xattrs.count > 0;
}

static int fail_at_header(struct tar_extractor *ex, const char *what)
{
    return extract_error_set(&ex->error, 0, NULL, "%s (header at archive offset %llu)", what,
                             (unsigned long long)ex->header_offset);
}

/* Fills ex->entry from the current header and the pending overrides. */
static int build_entry(struct tar_extractor *ex)
{
    const struct tar_header *h = &ex->header;
    const struct pax_attrs *local = &ex->pax_local;
    const struct pax_attrs *global = &ex->pax_global;
    struct tar_entry *e = &ex->entry;
    size_t name_len;

    if (local->has_path) {
        e->name = local->path.data;
        name_len = local->path.len;
    } else if (ex->has_long_name) {
        e->name = ex->long_name.data;
        name_len = ex->long_name.len;
    } else {
        e->name = h->name;
        name_len = h->name_len;
    }
    if (local->has_linkpath) {
        e->link = local->linkpath.data;
        e->link_len = local->linkpath.len;
    } else if (ex->has_long_link) {
        e->link = ex->long_link.data;
        e->link_len = ex->long_link.len;
    } else {
        e->link = h->linkname;
        e->link_len = h->linkname_len;
    }

    e->type = h->type;
    if (e->type == TAR_TYPE_REGULAR_OLD || e->type == TAR_TYPE_CONTIGUOUS)
        e->type = TAR_TYPE_REGULAR;
    /* Pre-POSIX tars marked directories only by a trailing slash. */
    if (e->type == TAR_TYPE_REGULAR && name_len > 0 && e->name[name_len - 1] == '/')
        e->type = TAR_TYPE_DIRECTORY;

    if (safe_path_clean(e->name, name_len, &ex->entry_path) < 0)
        return extract_error_set(&ex->error, errno, e->name, "invalid entry name");
    e->path = ex->entry_path.data;
    e->path_len = ex->entry_path.len;

    e->size = local->has_size ? local->size : (uint64_t)h->size;
    e->mode = h->mode;

    if (local->has_uid)
        e->uid = local->uid;
    else if (global->has_uid)
        e->uid = global->uid;
    else if (h->uid < UINT32_MAX)
        e->uid = (uint32_t)h->uid;
    else
        return extract_error_set(&ex->error, 0, e->name, "uid %lld is out of range", (long long)h->uid);
    if (local->has_gid)
        e->gid = local->gid;
    else if (global->has_gid)
        e->gid = global->gid;
    else if (h->gid < UINT32_MAX)
        e->gid = (uint32_t)h->gid;
    else
        return extract_error_set(&ex->error, 0, e->name, "gid %lld is out of range", (long long)h->gid);

    if (local->has_mtime)
        e->mtime = local->mtime;
    else if (global->has_mtime)
        e->mtime = global->mtime;
    else
        e->mtime = (struct timespec){.tv_sec = (time_t)h->mtime, .tv_nsec = 0};

    if (h->dev_major > UINT32_MAX || h->dev_minor > UINT32_MAX)
        return extract_error_set(&ex->error, 0, e->name, "device number %lld:%lld is out of range",
                                 (long long)h->dev_major, (long long)h->dev_minor);
    e->dev_major = (uint32_t)h->dev_major;
    e->dev_minor = (uint32_t)h->dev_minor;
    e->global_xattrs = &global->xattrs;
    e->local_xattrs = &local->xattrs;
    return 0;
}

static void start_skip(struct tar_extractor *ex, uint64_t bytes)
{
    ex->skip_remaining = bytes;
    ex->state = bytes > 0 ? STATE_SKIP : STATE_HEADER;
}

/* Writes one real member; regular files continue in STATE_FILE_DATA. */
static int dispatch_entry(struct tar_extractor *ex)
{
    struct tar_entry *e = &ex->entry;
    int rc;

    if (build_entry(ex) < 0)
        return -1;
    ex->stats.entries++;

    if (ex->options.overlay_whiteouts) {
        enum whiteout_kind kind = whiteout_classify(e->path, e->path_len);
        if (kind != WHITEOUT_NONE) {
            rc = whiteout_write(ex, e, kind);
            if (rc == 0 && e->type == TAR_TYPE_REGULAR)
                start_skip(ex, e->size + padding_after(e->size));
            forget_entry_overrides(ex);
            return rc;
        }
    }

    switch (e->type) {
    case TAR_TYPE_REGULAR:
        if (entry_open_regular_file(ex, e) < 0)
            return -1;
        if (e->size == 0) {
            rc = entry_close_regular_file(ex, e);
            forget_entry_overrides(ex);
            return rc;
        }
        ex->data_remaining = e->size;
        ex->pad_remaining = padding_after(e->size);
        ex->state = STATE_FILE_DATA;
        return 0; /* overrides are forgotten once the content is written */
    case TAR_TYPE_DIRECTORY:
        rc = entry_write_directory(ex, e);
        break;
    case TAR_TYPE_SYMLINK:
        rc = entry_write_symlink(ex, e);
        break;
    case TAR_TYPE_HARDLINK:
        rc = entry_write_hardlink(ex, e);
        break;
    default: /* char/block device, FIFO */
        rc = entry_write_special(ex, e);
        break;
    }
    /* Only regular files carry content; the size field of other types is
     * ignored, as POSIX and the common readers do. */
    forget_entry_overrides(ex);
    return rc;
}

static int start_meta_data(struct tar_extractor *ex)
{
    uint64_t size = (uint64_t)ex->header.size;
    if (size > META_DATA_MAX) {
        char what[128];
        snprintf(what, sizeof what, "'%c' header data of %llu bytes exceeds the limit of %u bytes", ex->header.type,
                 (unsigned long long)size, META_DATA_MAX);
        return fail_at_header(ex, what);
    }
    ex->meta_type = ex->header.type;
    ex->meta.len = 0;
    if (byte_buffer_reserve(&ex->meta, (size_t)size) < 0)
        return extract_error_set(&ex->error, errno, NULL, "cannot allocate %llu bytes for a '%c' header",
                                 (unsigned long long)size, ex->header.type);
    ex->data_remaining = size;
    ex->pad_remaining = padding_after(size);
    ex->state = STATE_META_DATA;
    return 0;
}

static int finish_meta_data(struct tar_extractor *ex)
{
    struct byte_buffer *meta = &ex->meta;
    switch (ex->meta_type) {
    case TAR_TYPE_PAX_LOCAL:
        return pax_parse(meta->data, meta->len, false, &ex->pax_local, &ex->error);
    case TAR_TYPE_PAX_GLOBAL:
        return pax_parse(meta->data, meta->len, true, &ex->pax_global, &ex->error);
    default: {
        /* GNU long names are NUL-terminated inside their data. */
        bool is_name = ex->meta_type == TAR_TYPE_GNU_LONGNAME;
        struct byte_buffer *target = is_name ? &ex->long_name : &ex->long_link;
        if (byte_buffer_set(target, meta->data, strnlen(meta->data, meta->len)) < 0)
            return extract_error_set(&ex->error, errno, NULL, "cannot store a GNU long %s", is_name ? "name" : "link");
        *(is_name ? &ex->has_long_name : &ex->has_long_link) = true;
        return 0;
    }
    }
}

static int process_header(struct tar_extractor *ex, const unsigned char *block)
{
    if (tar_block_is_zero(block)) {
        /* Two zero blocks end the archive; a lone one is tolerated, as GNU
         * tar does. */
        if (++ex->zero_blocks == 2) {
            if (has_pending_overrides(ex))
                return fail_at_header(ex, "archive ends after an extended header without its entry");
            ex->state = STATE_END;
        }
        return 0;
    }
    ex->zero_blocks = 0;
    if (!tar_checksum_matches(block))
        return fail_at_header(ex, "tar header checksum mismatch");
    const char *bad_field = NULL;
    if (tar_parse_header(block, &ex->header, &bad_field) < 0) {
        char what[64];
        snprintf(what, sizeof what, "invalid %s field in tar header", bad_field);
        return fail_at_header(ex, what);
    }
    switch (ex->header.type) {
    case TAR_TYPE_PAX_LOCAL:
    case TAR_TYPE_PAX_GLOBAL:
    case TAR_TYPE_GNU_LONGNAME:
    case TAR_TYPE_GNU_LONGLINK:
        if (start_meta_data(ex) < 0)
            return -1;
        if (ex->data_remaining == 0) {
            ex->state = STATE_HEADER;
            return finish_meta_data(ex);
        }
        return 0;
    case TAR_TYPE_GNU_VOLUME_LABEL:
        start_skip(ex, (uint64_t)ex->header.size + padding_after((uint64_t)ex->header.size));
        return 0;
    case TAR_TYPE_REGULAR:
    case TAR_TYPE_REGULAR_OLD:
    case TAR_TYPE_CONTIGUOUS:
    case TAR_TYPE_HARDLINK:
    case TAR_TYPE_SYMLINK:
    case TAR_TYPE_CHAR_DEVICE:
    case TAR_TYPE_BLOCK_DEVICE:
    case TAR_TYPE_DIRECTORY:
    case TAR_TYPE_FIFO:
        return dispatch_entry(ex);
    default: {
        unsigned char type = (unsigned char)ex->header.type;
        return extract_error_set(&ex->error, 0, ex->header.name,
                                 "unsupported tar entry type 0x%02x%s%c%s (header at archive offset %llu)", type,
                                 type >= 0x20 && type < 0x7f ? " ('" : "", type >= 0x20 && type < 0x7f ? type : ' ',
                                 type >= 0x20 && type < 0x7f ? "')" : "", (unsigned long long)ex->header_offset);
    }
    }
}

static size_t min_size(uint64_t a, size_t b)
{
    return a < (uint64_t)b ? (size_t)a : b;
}

static int feed_some(struct tar_extractor *ex, const unsigned char *data, size_t len, size_t *consumed)
{
    size_t n;
    switch (ex->state) {
    case STATE_HEADER:
        if (ex->header_fill == 0 && len >= TAR_BLOCK_SIZE) {
            ex->header_offset = ex->offset;
            *consumed = TAR_BLOCK_SIZE;
            return process_header(ex, data);
        }
        if (ex->header_fill == 0)
            ex->header_offset = ex->offset;
        n = min_size(TAR_BLOCK_SIZE - ex->header_fill, len);
        memcpy(ex->header_block + ex->header_fill, data, n);
        ex->header_fill += n;
        *consumed = n;
        if (ex->header_fill < TAR_BLOCK_SIZE)
            return 0;
        ex->header_fill = 0;
        return process_header(ex, ex->header_block);

    case STATE_FILE_DATA: {
        n = min_size(ex->data_remaining, len);
        int rc = 0;
        if (n == ex->data_remaining)
            rc = entry_hand_off_content(ex, &ex->entry, data, n);
        if (rc < 0)
            return -1;
        *consumed = n;
        ex->data_remaining -= n;
        if (rc == 0) {
            if (entry_write_content(ex, &ex->entry, data, n) < 0)
                return -1;
            if (ex->data_remaining > 0)
                return 0;
            rc = entry_close_regular_file(ex, &ex->entry);
        } else {
            rc = 0; /* the writer pool closes it */
        }
        start_skip(ex, ex->pad_remaining);
        forget_entry_overrides(ex);
        return rc;
    }

    case STATE_META_DATA:
        n = min_size(ex->data_remaining, len);
        *consumed = n;
        if (byte_buffer_append(&ex->meta, data, n) < 0)
            return extract_error_set(&ex->error, errno, NULL, "cannot store '%c' header data", ex->meta_type);
        ex->data_remaining -= n;
        if (ex->data_remaining > 0)
            return 0;
        start_skip(ex, ex->pad_remaining);
        return finish_meta_data(ex);

    case STATE_SKIP:
        n = min_size(ex->skip_remaining, len);
        *consumed = n;
        ex->skip_remaining -= n;
        if (ex->skip_remaining == 0)
            ex->state = STATE_HEADER;
        return 0;

    case STATE_END:
        /* Whatever follows the end marker is record padding. */
        *consumed = len;
        return 0;
    }
    return extract_error_set(&ex->error, 0, NULL, "extractor in an unknown state %d", (int)ex->state);
}

int tar_extractor_feed(struct tar_extractor *ex, const unsigned char *data, size_t len)
{
    if (ex->failed)
        return -1;
    if (ex->finished) {
        ex->failed = true;
        return extract_error_set(&ex->error, 0, NULL, "data fed after finish");
    }
    int rc = 0;
    while (len > 0 && rc == 0) {
        size_t consumed = 0;
        rc = feed_some(ex, data, len, &consumed);
        ex->offset += consumed;
        data += consumed;
        len -= consumed;
    }
    /* Queued content points into the caller's buffer: finish it before
     * returning, even after a failure. */
    struct extract_error writer_error = {0};
    if (content_writer_drain(&ex->writers, &writer_error) < 0 && rc == 0) {
        extract_error_clear(&ex->error);
        ex->error = writer_error;
        writer_error = (struct extract_error){0};
        rc = -1;
    }
    extract_error_clear(&writer_error);
    if (rc < 0)
        ex->failed = true;
    return rc;
}

int tar_extractor_finish(struct tar_extractor *ex, struct tar_extract_stats *stats)
{
    if (ex->failed)
        return -1;
    if (ex->finished) {
        ex->failed = true;
        return extract_error_set(&ex->error, 0, NULL, "finish called twice");
    }
    ex->finished = true;
    int rc = 0;
    switch (ex->state) {
    case STATE_HEADER:
        if (ex->header_fill > 0)
            rc = extract_error_set(&ex->error, 0, NULL,
                                   "archive is truncated: it ends %zu bytes into a header at archive offset %llu",
                                   ex->header_fill, (unsigned long long)ex->header_offset);
        else if (has_pending_overrides(ex))
            rc = extract_error_set(&ex->error, 0, NULL, "archive ends after an extended header without its entry");
        break;
    case STATE_END:
        break;
    case STATE_FILE_DATA:
        rc = extract_error_set(&ex->error, 0, ex->entry.name,
                               "archive is truncated: %llu bytes of file content are missing",
                               (unsigned long long)ex->data_remaining);
        break;
    case STATE_META_DATA:
        rc = extract_error_set(&ex->error, 0, NULL, "archive is truncated inside a '%c' header's data", ex->meta_type);
        break;
    case STATE_SKIP:
        rc = extract_error_set(&ex->error, 0, NULL,
                               "archive is truncated: %llu bytes of data or block padding are missing",
                               (unsigned long long)ex->skip_remaining);
        break;
    }
    if (rc == 0)
        rc = entry_apply_deferred_dirs(ex);
    if (rc < 0) {
        ex->failed = true;
        return -1;
    }
    *stats = ex->stats;
    return 0;
}
