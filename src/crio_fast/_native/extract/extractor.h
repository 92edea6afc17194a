/* Streaming tar extractor: the public C interface.
 *
 * Bytes are pushed in with tar_extractor_feed() in chunks of any size; each
 * entry is written as soon as its bytes arrive, regular file content straight
 * from the caller's buffer. Nothing is ever created, changed or followed
 * outside the root directory (see safe_path.h). None of these functions touch
 * Python objects, so the binding calls feed() without the GIL. */
#ifndef CRIO_FAST_EXTRACTOR_H
#define CRIO_FAST_EXTRACTOR_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "extract_error.h"

struct tar_extractor;

struct tar_extractor_options {
    bool preserve_owner;    /* chown entries to the archive's uid/gid */
    bool overlay_whiteouts; /* turn .wh. entries into overlayfs whiteouts */
    bool allow_devices;     /* create char/block devices (else skip them) */
    unsigned writer_threads; /* helper threads for file content; 0 writes inline */
};

struct tar_extract_stats {
    uint64_t entries;        /* every archive member except metadata headers */
    uint64_t files;
    uint64_t dirs;
    uint64_t symlinks;
    uint64_t hardlinks;
    uint64_t devices;        /* char and block devices */
    uint64_t fifos;
    uint64_t whiteouts;      /* whiteout devices and opaque markers */
    uint64_t skipped;        /* devices not allowed, other .wh..wh. markers */
    uint64_t xattrs_skipped; /* refused by the filesystem as unsupported */
    uint64_t bytes;          /* regular file content written */
};

/* Opens `root` (an existing directory). Returns NULL with `err` set. */
struct tar_extractor *tar_extractor_new(const char *root, const struct tar_extractor_options *options,
                                        struct extract_error *err);

/* Consumes `len` bytes. Returns 0, or -1 after which the extractor is failed
 * for good and tar_extractor_error() says why. */
int tar_extractor_feed(struct tar_extractor *ex, const unsigned char *data, size_t len);

/* Checks that the archive ended at an entry boundary, sets the deferred
 * directory modes and mtimes, and fills `stats`. Returns 0 or -1. */
int tar_extractor_finish(struct tar_extractor *ex, struct tar_extract_stats *stats);

const struct extract_error *tar_extractor_error(const struct tar_extractor *ex);

/* Closes every fd and frees everything; valid in any state. */
void tar_extractor_free(struct tar_extractor *ex);

#endif
