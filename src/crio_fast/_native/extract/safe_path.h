/* Path handling that never leaves the extraction root.
 *
 * Archive names are first cleaned lexically into a root-relative path
 * (leading '/' stripped, "." dropped, ".." clamped at the root). Parent
 * directories are then opened with openat2(RESOLVE_IN_ROOT), so symlinks met
 * on the way are resolved as if the root were "/" and can never lead out of
 * it. The final component is always operated on with *at() calls relative to
 * that parent fd, without following it. */
#ifndef CRIO_FAST_SAFE_PATH_H
#define CRIO_FAST_SAFE_PATH_H

#include <stdbool.h>
#include <stddef.h>

#include "byte_buffer.h"

/* Closes an fd used only for lookups or reads, or one being abandoned after
 * an earlier failure. close(2) can then fail only with EBADF (a bug) or EINTR
 * (the fd is closed anyway on Linux): no data is at stake, so the result is
 * deliberately not reported. Files that were written are closed with their
 * result checked instead. */
void close_quietly(int fd);

/* Cleans `name` (len bytes, may lack a NUL) into `out`: "" is the root
 * itself, otherwise components joined by single '/'. Returns -1 with errno
 * EINVAL when the name contains a NUL byte, ENOMEM on allocation failure. */
int safe_path_clean(const char *name, size_t len, struct byte_buffer *out);

/* Length of the parent part of a cleaned path ("a/b/c" -> 3, "c" -> 0). */
size_t safe_path_parent_len(const char *path, size_t len);

/* Opens `path` (cleaned, relative) inside root_fd with RESOLVE_IN_ROOT.
 * `flags` are open(2) flags. Returns an fd or -1 with errno. */
int safe_path_open_in_root(int root_fd, const char *path, int flags);

/* The parent-directory cache: the O_PATH fd of the directory most recently
 * resolved, so consecutive entries of one directory resolve it once. */
struct dir_cache {
    struct byte_buffer path;
    int fd; /* -1 when empty */
};

void dir_cache_init(struct dir_cache *cache);

/* Forgets the cached directory. Call after anything in the tree was removed
 * or replaced: the cached path may now resolve elsewhere. */
void dir_cache_invalidate(struct dir_cache *cache);

/* Returns an O_PATH fd for directory `path` (cleaned, relative; "" is the
 * root), owned by the cache (do not close). When `create_missing` is set,
 * missing directories are created (mode 0755, like tar does for entries
 * whose parents are absent from the archive). On failure returns -1 with
 * errno set and *failed_component pointing into `path` at the component
 * that could not be resolved or created (or NULL). */
int dir_cache_open(struct dir_cache *cache, int root_fd, const char *path, size_t len, bool create_missing,
                   const char **failed_component);

/* Removes whatever is at `name` inside directory `dir_fd` (a directory is
 * removed with its contents), never following symlinks. Returns -1 with errno
 * on failure; ENOENT counts as success. */
int safe_path_remove(int dir_fd, const char *name);

#endif
