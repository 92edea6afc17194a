/* Creating each kind of entry and applying its metadata.
 *
 * Every operation is relative to the entry's parent directory fd (resolved
 * inside the root) and never follows the last component: files are created
 * with O_EXCL|O_NOFOLLOW, metadata of non-files is set with
 * AT_SYMLINK_NOFOLLOW. Something already at the destination is removed and
 * the creation retried; an existing directory is kept when the new entry is
 * a directory too.
 *
 * Order of metadata: owner first, since chown(2) clears setuid/setgid bits
 * and security.capability; then mode; then extended attributes; mtime last.
 * Directory modes and mtimes are deferred to finish (writing entries into a
 * directory changes its mtime, and a read-only mode would block them).
 *
 * Extended attributes: a failure is fatal except when the filesystem refuses
 * the attribute as unsupported (ENOTSUP: e.g. no xattr support, or a
 * namespace it does not implement) and user.* on symlinks (EPERM: the kernel
 * allows user.* only on regular files and directories); those are counted in
 * stats.xattrs_skipped. */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/xattr.h>
#include <unistd.h>

#include "extractor_internal.h"

int entry_resolve_parent(struct tar_extractor *ex, const struct tar_entry *entry, int *parent_fd, const char **leaf)
{
    size_t parent_len = safe_path_parent_len(entry->path, entry->path_len);
    const char *failed_component = NULL;
    *leaf = entry->path + (parent_len > 0 ? parent_len + 1 : 0);
    int fd = dir_cache_open(&ex->parent_cache, ex->root_fd, entry->path, parent_len, true, &failed_component);
    if (fd < 0) {
        if (failed_component != NULL)
            return extract_error_set(&ex->error, errno, entry->name, "cannot open or create parent directory '%.*s'",
                                     (int)(failed_component - entry->path + strcspn(failed_component, "/")),
                                     entry->path);
        return extract_error_set(&ex->error, errno, entry->name, "cannot open parent directory '%.*s'",
                                 (int)parent_len, entry->path);
    }
    *parent_fd = fd;
    return 0;
}

int entry_remove_in_the_way(struct tar_extractor *ex, const struct tar_entry *entry, const char *name, int *parent_fd)
{
    if (safe_path_remove(*parent_fd, name) < 0)
        return extract_error_set(&ex->error, errno, entry->name, "cannot remove the existing '%s' in the way", name);
    /* What was removed may have been a directory or symlink that a cached
     * path went through. */
    dir_cache_invalidate(&ex->parent_cache);
    dir_cache_invalidate(&ex->link_target_cache);
    const char *leaf;
    return entry_resolve_parent(ex, entry, parent_fd, &leaf);
}

/* Whether the mode the entry asks for differs from what creating it with
 * (mode & 0777) under the process umask produced. */
static bool needs_chmod(const struct tar_extractor *ex, uint32_t mode)
{
    return (mode & 07000) != 0 || (mode & 0777 & ex->umask) != 0;
}

static struct timespec *entry_times(const struct tar_entry *entry, struct timespec times[2])
{
    times[0].tv_sec = 0;
    times[0].tv_nsec = UTIME_OMIT;
    times[1] = entry->mtime;
    return times;
}

static bool xattr_failure_is_skippable(int errnum, const char *name, bool on_symlink)
{
    if (errnum == ENOTSUP || errnum == EOPNOTSUPP)
        return true;
    return on_symlink && errnum == EPERM && strncmp(name, "user.", 5) == 0;
}

/* Applies the entry's xattrs through `fd` when it is >= 0, else by path
 * (without following the last component). */
static int apply_xattrs(struct tar_extractor *ex, const struct tar_entry *entry, int fd, const char *path,
                        bool on_symlink)
{
    const struct xattr_list *lists[2] = {entry->global_xattrs, entry->local_xattrs};
    for (int l = 0; l < 2; l++) {
        for (size_t i = 0; lists[l] != NULL && i < lists[l]->count; i++) {
            const struct xattr_item *item = &lists[l]->items[i];
            int rc = fd >= 0 ? fsetxattr(fd, item->name, item->value, item->value_len, 0)
                             : lsetxattr(path, item->name, item->value, item->value_len, 0);
            if (rc == 0)
                continue;
            if (xattr_failure_is_skippable(errno, item->name, on_symlink)) {
                ex->stats.xattrs_skipped++;
                continue;
            }
            return extract_error_set(&ex->error, errno, entry->name, "cannot set extended attribute '%s'", item->name);
        }
    }
    return 0;
}

static bool entry_has_xattrs(const struct tar_entry *entry)
{
    return (entry->global_xattrs && entry->global_xattrs->count) || (entry->local_xattrs && entry->local_xattrs->count);
}

/* xattrs of entries that cannot be opened (symlinks, devices, FIFOs) go
 * through /proc/self/fd/PARENT/LEAF: the parent is already held inside the
 * root, and l*xattr does not follow LEAF. */
static int apply_xattrs_at(struct tar_extractor *ex, const struct tar_entry *entry, int parent_fd, const char *leaf,
                           bool on_symlink)
{
    if (!entry_has_xattrs(entry))
        return 0;
    char path[64 + NAME_MAX + 1];
    int n = snprintf(path, sizeof path, "/proc/self/fd/%d/%s", parent_fd, leaf);
    if (n < 0 || (size_t)n >= sizeof path)
        return extract_error_set(&ex->error, ENAMETOOLONG, entry->name, "cannot build the path to set extended attributes");
    return apply_xattrs(ex, entry, -1, path, on_symlink);
}

int entry_set_owner_at(struct tar_extractor *ex, const struct tar_entry *entry, int parent_fd, const char *leaf)
{
    if (!ex->options.preserve_owner)
        return 0;
    if (fchownat(parent_fd, leaf, entry->uid, entry->gid, AT_SYMLINK_NOFOLLOW) < 0)
        return extract_error_set(&ex->error, errno, entry->name, "cannot change owner to %u:%u", entry->uid,
                                 entry->gid);
    return 0;
}

int entry_open_regular_file(struct tar_extractor *ex, const struct tar_entry *entry)
{
    int parent_fd;
    const char *leaf;
    if (entry->path_len == 0)
        return extract_error_set(&ex->error, EISDIR, entry->name, "a regular file cannot replace the extraction root");
    if (entry_resolve_parent(ex, entry, &parent_fd, &leaf) < 0)
        return -1;
    const int flags = O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC;
    int fd = openat(parent_fd, leaf, flags, entry->mode & 0777);
    if (fd < 0 && errno == EEXIST) {
        if (entry_remove_in_the_way(ex, entry, leaf, &parent_fd) < 0)
            return -1;
        fd = openat(parent_fd, leaf, flags, entry->mode & 0777);
    }
    if (fd < 0)
        return extract_error_set(&ex->error, errno, entry->name, "cannot create regular file");
    ex->file_fd = fd;
    return 0;
}

int entry_write_content(struct tar_extractor *ex, const struct tar_entry *entry, const unsigned char *data, size_t len)
{
    if (write_fully(ex->file_fd, data, len) < 0)
        return extract_error_set(&ex->error, errno, entry->name, "cannot write file content");
    ex->stats.bytes += len;
    return 0;
}

int entry_hand_off_content(struct tar_extractor *ex, const struct tar_entry *entry, const unsigned char *data,
                           size_t len)
{
    if (entry_has_xattrs(entry)) /* rare: written inline, see apply_xattrs */
        return 0;
    struct content_job job = {
        .fd = ex->file_fd,
        .data = data,
        .len = len,
        .set_owner = ex->options.preserve_owner,
        .uid = entry->uid,
        .gid = entry->gid,
        .set_mode = needs_chmod(ex, entry->mode),
        .mode = entry->mode,
        .mtime = entry->mtime,
        .name = strdup(entry->name),
    };
    if (job.name == NULL)
        return extract_error_set(&ex->error, errno, entry->name, "cannot queue file content");
    int rc = content_writer_submit(&ex->writers, &job, &ex->error);
    if (rc != 1) {
        free(job.name);
        return rc;
    }
    ex->file_fd = -1;
    ex->stats.bytes += len;
    ex->stats.files++;
    return 1;
}

int entry_close_regular_file(struct tar_extractor *ex, const struct tar_entry *entry)
{
    int fd = ex->file_fd;
    struct timespec times[2];
    int rc = -1;

    if (ex->options.preserve_owner && fchown(fd, entry->uid, entry->gid) < 0) {
        extract_error_set(&ex->error, errno, entry->name, "cannot change owner to %u:%u", entry->uid, entry->gid);
        goto out;
    }
    if (needs_chmod(ex, entry->mode) && fchmod(fd, entry->mode) < 0) {
        extract_error_set(&ex->error, errno, entry->name, "cannot set mode %04o", entry->mode);
        goto out;
    }
    if (apply_xattrs(ex, entry, fd, NULL, false) < 0)
        goto out;
    if (futimens(fd, entry_times(entry, times)) < 0) {
        extract_error_set(&ex->error, errno, entry->name, "cannot set modification time");
        goto out;
    }
    rc = 0;
out:
    ex->file_fd = -1;
    if (close(fd) < 0 && rc == 0)
        rc = extract_error_set(&ex->error, errno, entry->name, "cannot close file");
    if (rc == 0)
        ex->stats.files++;
    return rc;
}

static int defer_dir_metadata(struct tar_extractor *ex, const struct tar_entry *entry)
{
    if (ex->dir_count == ex->dir_cap) {
        size_t cap = ex->dir_cap ? ex->dir_cap * 2 : 64;
        struct deferred_dir *dirs = realloc(ex->dirs, cap * sizeof *dirs);
        if (dirs == NULL)
            return extract_error_set(&ex->error, errno, entry->name, "cannot remember directory metadata");
        ex->dirs = dirs;
        ex->dir_cap = cap;
    }
    char *path = strndup(entry->path, entry->path_len);
    if (path == NULL)
        return extract_error_set(&ex->error, errno, entry->name, "cannot remember directory metadata");
    ex->dirs[ex->dir_count++] = (struct deferred_dir){path, entry->mode, entry->mtime};
    return 0;
}

static int apply_dir_xattrs(struct tar_extractor *ex, const struct tar_entry *entry, int parent_fd, const char *leaf)
{
    if (!entry_has_xattrs(entry))
        return 0;
    int fd = openat(parent_fd, leaf, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    if (fd < 0)
        return extract_error_set(&ex->error, errno, entry->name, "cannot open directory to set extended attributes");
    int rc = apply_xattrs(ex, entry, fd, NULL, false);
    close_quietly(fd);
    return rc;
}

int entry_write_directory(struct tar_extractor *ex, const struct tar_entry *entry)
{
    int parent_fd;
    const char *leaf;

    if (entry->path_len == 0) {
        /* "./": the layer's root directory itself. */
        parent_fd = ex->root_fd;
        leaf = ".";
    } else {
        if (entry_resolve_parent(ex, entry, &parent_fd, &leaf) < 0)
            return -1;
        /* Owner-writable until finish, so the contents can be written. */
        if (mkdirat(parent_fd, leaf, 0700 | (entry->mode & 0777)) < 0) {
            if (errno != EEXIST)
                return extract_error_set(&ex->error, errno, entry->name, "cannot create directory");
            struct stat st;
            if (fstatat(parent_fd, leaf, &st, AT_SYMLINK_NOFOLLOW) < 0)
                return extract_error_set(&ex->error, errno, entry->name, "cannot inspect the existing entry");
            if (!S_ISDIR(st.st_mode)) {
                if (entry_remove_in_the_way(ex, entry, leaf, &parent_fd) < 0)
                    return -1;
                if (mkdirat(parent_fd, leaf, 0700 | (entry->mode & 0777)) < 0)
                    return extract_error_set(&ex->error, errno, entry->name, "cannot create directory");
            }
        }
    }
    if (entry_set_owner_at(ex, entry, parent_fd, leaf) < 0)
        return -1;
    if (apply_dir_xattrs(ex, entry, parent_fd, leaf) < 0)
        return -1;
    if (defer_dir_metadata(ex, entry) < 0)
        return -1;
    ex->stats.dirs++;
    return 0;
}

int entry_write_symlink(struct tar_extractor *ex, const struct tar_entry *entry)
{
    int parent_fd;
    const char *leaf;
    struct timespec times[2];

    if (entry->path_len == 0)
        return extract_error_set(&ex->error, EISDIR, entry->name, "a symlink cannot replace the extraction root");
    if (entry->link_len == 0)
        return extract_error_set(&ex->error, ENOENT, entry->name, "symlink has an empty target");
    if (entry_resolve_parent(ex, entry, &parent_fd, &leaf) < 0)
        return -1;
    /* The target is stored verbatim: it is only data until someone resolves
     * it, and every resolution here is held inside the root. */
    if (symlinkat(entry->link, parent_fd, leaf) < 0) {
        if (errno != EEXIST)
            return extract_error_set(&ex->error, errno, entry->name, "cannot create symlink");
        if (entry_remove_in_the_way(ex, entry, leaf, &parent_fd) < 0)
            return -1;
        if (symlinkat(entry->link, parent_fd, leaf) < 0)
            return extract_error_set(&ex->error, errno, entry->name, "cannot create symlink");
    }
    if (entry_set_owner_at(ex, entry, parent_fd, leaf) < 0)
        return -1;
    if (apply_xattrs_at(ex, entry, parent_fd, leaf, true) < 0)
        return -1;
    if (utimensat(parent_fd, leaf, entry_times(entry, times), AT_SYMLINK_NOFOLLOW) < 0)
        return extract_error_set(&ex->error, errno, entry->name, "cannot set modification time");
    ex->stats.symlinks++;
    return 0;
}

int entry_write_hardlink(struct tar_extractor *ex, const struct tar_entry *entry)
{
    int parent_fd;
    const char *leaf;

    if (entry->path_len == 0)
        return extract_error_set(&ex->error, EISDIR, entry->name, "a hardlink cannot replace the extraction root");
    if (safe_path_clean(entry->link, entry->link_len, &ex->link_path) < 0)
        return extract_error_set(&ex->error, errno, entry->name, "invalid hardlink target");
    const char *target = ex->link_path.data;
    size_t target_len = ex->link_path.len;
    if (target_len == 0)
        return extract_error_set(&ex->error, EPERM, entry->name, "hardlink to the extraction root");
    if (target_len == entry->path_len && memcmp(target, entry->path, target_len) == 0) {
        ex->stats.hardlinks++; /* a link to itself already exists */
        return 0;
    }
    size_t target_parent_len = safe_path_parent_len(target, target_len);
    const char *target_leaf = target + (target_parent_len > 0 ? target_parent_len + 1 : 0);

    if (entry_resolve_parent(ex, entry, &parent_fd, &leaf) < 0)
        return -1;
    for (int attempt = 0;; attempt++) {
        const char *failed_component;
        int target_parent_fd =
            dir_cache_open(&ex->link_target_cache, ex->root_fd, target, target_parent_len, false, &failed_component);
        if (target_parent_fd < 0)
            return extract_error_set(&ex->error, errno, entry->name, "cannot open directory of hardlink target '%s'",
                                     target);
        /* No AT_SYMLINK_FOLLOW: a target that is a symlink is linked itself,
         * never what it points to. */
        if (linkat(target_parent_fd, target_leaf, parent_fd, leaf, 0) == 0)
            break;
        if (errno != EEXIST || attempt > 0)
            return extract_error_set(&ex->error, errno, entry->name, "cannot create hardlink to '%s'", target);
        if (entry_remove_in_the_way(ex, entry, leaf, &parent_fd) < 0)
            return -1;
    }
    ex->stats.hardlinks++;
    return 0;
}

int entry_write_special(struct tar_extractor *ex, const struct tar_entry *entry)
{
    int parent_fd;
    const char *leaf;
    struct timespec times[2];
    mode_t type;
    dev_t dev = 0;

    switch (entry->type) {
    case TAR_TYPE_CHAR_DEVICE:
        type = S_IFCHR;
        break;
    case TAR_TYPE_BLOCK_DEVICE:
        type = S_IFBLK;
        break;
    default:
        type = S_IFIFO;
        break;
    }
    if (type != S_IFIFO) {
        if (!ex->options.allow_devices) {
            ex->stats.skipped++;
            return 0;
        }
        dev = makedev(entry->dev_major, entry->dev_minor);
    }
    if (entry->path_len == 0)
        return extract_error_set(&ex->error, EISDIR, entry->name, "a special file cannot replace the extraction root");
    if (entry_resolve_parent(ex, entry, &parent_fd, &leaf) < 0)
        return -1;
    if (mknodat(parent_fd, leaf, type | (entry->mode & 0777), dev) < 0) {
        if (errno != EEXIST)
            return extract_error_set(&ex->error, errno, entry->name, "cannot create special file");
        if (entry_remove_in_the_way(ex, entry, leaf, &parent_fd) < 0)
            return -1;
        if (mknodat(parent_fd, leaf, type | (entry->mode & 0777), dev) < 0)
            return extract_error_set(&ex->error, errno, entry->name, "cannot create special file");
    }
    if (entry_set_owner_at(ex, entry, parent_fd, leaf) < 0)
        return -1;
    if (needs_chmod(ex, entry->mode) && fchmodat(parent_fd, leaf, entry->mode, AT_SYMLINK_NOFOLLOW) < 0)
        return extract_error_set(&ex->error, errno, entry->name, "cannot set mode %04o", entry->mode);
    if (apply_xattrs_at(ex, entry, parent_fd, leaf, false) < 0)
        return -1;
    if (utimensat(parent_fd, leaf, entry_times(entry, times), AT_SYMLINK_NOFOLLOW) < 0)
        return extract_error_set(&ex->error, errno, entry->name, "cannot set modification time");
    if (type == S_IFIFO)
        ex->stats.fifos++;
    else
        ex->stats.devices++;
    return 0;
}

int entry_apply_deferred_dirs(struct tar_extractor *ex)
{
    for (size_t i = 0; i < ex->dir_count; i++) {
        const struct deferred_dir *dir = &ex->dirs[i];
        int fd = safe_path_open_in_root(ex->root_fd, dir->path, O_RDONLY | O_DIRECTORY | O_NOFOLLOW);
        if (fd < 0) {
            /* A later entry replaced the directory; its metadata went with it. */
            if (errno == ENOENT || errno == ENOTDIR || errno == ELOOP)
                continue;
            return extract_error_set(&ex->error, errno, dir->path[0] ? dir->path : ".",
                                     "cannot open directory to set its mode and mtime");
        }
        struct timespec times[2] = {{0, UTIME_OMIT}, dir->mtime};
        const char *failed = NULL;
        if (fchmod(fd, dir->mode) < 0)
            failed = "cannot set directory mode";
        else if (futimens(fd, times) < 0)
            failed = "cannot set directory modification time";
        int saved_errno = errno;
        close_quietly(fd); /* metadata only: nothing buffered to lose */
        if (failed != NULL)
            return extract_error_set(&ex->error, saved_errno, dir->path[0] ? dir->path : ".", "%s", failed);
    }
    return 0;
}
