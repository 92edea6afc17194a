/* Overlay whiteouts: the OCI layer form (.wh. names) turned into the form
 * overlayfs reads from an upper or lower directory.
 *
 *   .wh.NAME      -> character device 0:0 named NAME ("NAME was deleted")
 *   .wh..wh..opq  -> xattr trusted.overlay.opaque=y on the containing
 *                    directory ("hide everything below from lower layers")
 *   .wh..wh.*     -> other aufs bookkeeping (e.g. .wh..wh.plnk): ignored */
#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/xattr.h>
#include <unistd.h>

#include "extractor_internal.h"

static const char WHITEOUT_PREFIX[] = ".wh.";
static const char WHITEOUT_META_PREFIX[] = ".wh..wh.";
static const char OPAQUE_MARKER[] = ".wh..wh..opq";
static const char OPAQUE_XATTR[] = "trusted.overlay.opaque";

static const char *last_component(const char *path, size_t len)
{
    size_t parent_len = safe_path_parent_len(path, len);
    return path + (parent_len > 0 ? parent_len + 1 : 0);
}

enum whiteout_kind whiteout_classify(const char *path, size_t len)
{
    const char *leaf = last_component(path, len);
    if (strncmp(leaf, WHITEOUT_PREFIX, sizeof WHITEOUT_PREFIX - 1) != 0)
        return WHITEOUT_NONE;
    if (strcmp(leaf, OPAQUE_MARKER) == 0)
        return WHITEOUT_OPAQUE;
    if (strncmp(leaf, WHITEOUT_META_PREFIX, sizeof WHITEOUT_META_PREFIX - 1) == 0)
        return WHITEOUT_IGNORED;
    return WHITEOUT_FILE;
}

static int write_opaque_marker(struct tar_extractor *ex, const struct tar_entry *entry)
{
    int parent_fd;
    const char *leaf;
    if (entry_resolve_parent(ex, entry, &parent_fd, &leaf) < 0)
        return -1;
    /* The cached parent fd is O_PATH, which fsetxattr refuses. */
    int dir_fd = openat(parent_fd, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dir_fd < 0)
        return extract_error_set(&ex->error, errno, entry->name, "cannot open directory to mark it opaque");
    /* Not skippable like other xattrs: without it lower layers would show
     * through a directory the image says is replaced. */
    int rc = fsetxattr(dir_fd, OPAQUE_XATTR, "y", 1, 0);
    int saved_errno = errno;
    close_quietly(dir_fd);
    if (rc < 0)
        return extract_error_set(&ex->error, saved_errno, entry->name, "cannot set %s on the directory", OPAQUE_XATTR);
    return 0;
}

static int write_whiteout_device(struct tar_extractor *ex, const struct tar_entry *entry)
{
    int parent_fd;
    const char *leaf;
    if (entry_resolve_parent(ex, entry, &parent_fd, &leaf) < 0)
        return -1;
    const char *deleted_name = leaf + sizeof WHITEOUT_PREFIX - 1;
    if (deleted_name[0] == '\0' || strcmp(deleted_name, ".") == 0 || strcmp(deleted_name, "..") == 0)
        return extract_error_set(&ex->error, EINVAL, entry->name, "whiteout of '%s' is not a valid name", deleted_name);
    if (mknodat(parent_fd, deleted_name, S_IFCHR, makedev(0, 0)) < 0) {
        if (errno != EEXIST)
            return extract_error_set(&ex->error, errno, entry->name, "cannot create whiteout device '%s'", deleted_name);
        if (entry_remove_in_the_way(ex, entry, deleted_name, &parent_fd) < 0)
            return -1;
        if (mknodat(parent_fd, deleted_name, S_IFCHR, makedev(0, 0)) < 0)
            return extract_error_set(&ex->error, errno, entry->name, "cannot create whiteout device '%s'", deleted_name);
    }
    if (entry_set_owner_at(ex, entry, parent_fd, deleted_name) < 0)
        return -1;
    /* The entry's mtime, so extracting the same layer twice gives the same tree. */
    struct timespec times[2] = {{0, UTIME_OMIT}, entry->mtime};
    if (utimensat(parent_fd, deleted_name, times, AT_SYMLINK_NOFOLLOW) < 0)
        return extract_error_set(&ex->error, errno, entry->name, "cannot set modification time of whiteout '%s'",
                                 deleted_name);
    return 0;
}

int whiteout_write(struct tar_extractor *ex, const struct tar_entry *entry, enum whiteout_kind kind)
{
    switch (kind) {
    case WHITEOUT_OPAQUE:
        if (write_opaque_marker(ex, entry) < 0)
            return -1;
        ex->stats.whiteouts++;
        return 0;
    case WHITEOUT_FILE:
        if (write_whiteout_device(ex, entry) < 0)
            return -1;
        ex->stats.whiteouts++;
        return 0;
    case WHITEOUT_IGNORED:
        ex->stats.skipped++;
        return 0;
    case WHITEOUT_NONE:
        break;
    }
    return extract_error_set(&ex->error, EINVAL, entry->name, "not a whiteout entry");
}
