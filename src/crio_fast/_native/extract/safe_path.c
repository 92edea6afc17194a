#include "safe_path.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/openat2.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#ifndef SYS_openat2
#define SYS_openat2 437
#endif

/* openat2 answers EAGAIN when a concurrent rename might have let ".." race;
 * retrying a few times is what the man page recommends. */
#define OPENAT2_EAGAIN_RETRIES 8

void close_quietly(int fd)
{
    int saved_errno = errno;
    (void)close(fd);
    errno = saved_errno;
}

int safe_path_clean(const char *name, size_t len, struct byte_buffer *out)
{
    if (memchr(name, '\0', len) != NULL) {
        errno = EINVAL;
        return -1;
    }
    if (byte_buffer_reserve(out, len) < 0)
        return -1;
    out->len = 0;
    size_t pos = 0;
    while (pos < len) {
        while (pos < len && name[pos] == '/')
            pos++;
        size_t start = pos;
        while (pos < len && name[pos] != '/')
            pos++;
        size_t comp_len = pos - start;
        if (comp_len == 0 || (comp_len == 1 && name[start] == '.'))
            continue;
        if (comp_len == 2 && name[start] == '.' && name[start + 1] == '.') {
            /* Drop the last component; at the root ".." stays at the root. */
            out->len = safe_path_parent_len(out->data, out->len);
            continue;
        }
        if (out->len > 0)
            out->data[out->len++] = '/';
        memcpy(out->data + out->len, name + start, comp_len);
        out->len += comp_len;
    }
    out->data[out->len] = '\0';
    return 0;
}

size_t safe_path_parent_len(const char *path, size_t len)
{
    while (len > 0 && path[len - 1] != '/')
        len--;
    return len > 0 ? len - 1 : 0;
}

int safe_path_open_in_root(int root_fd, const char *path, int flags)
{
    struct open_how how = {
        .flags = (unsigned long long)(flags | O_CLOEXEC),
        .mode = 0,
        .resolve = RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS,
    };
    if (path[0] == '\0')
        path = ".";
    for (int attempt = 0;; attempt++) {
        long fd = syscall(SYS_openat2, root_fd, path, &how, sizeof how);
        if (fd >= 0)
            return (int)fd;
        if (errno != EAGAIN || attempt >= OPENAT2_EAGAIN_RETRIES)
            return -1;
    }
}

void dir_cache_init(struct dir_cache *cache)
{
    cache->path = (struct byte_buffer){0};
    cache->fd = -1;
}

void dir_cache_invalidate(struct dir_cache *cache)
{
    if (cache->fd >= 0)
        close_quietly(cache->fd);
    cache->fd = -1;
    cache->path.len = 0;
}

/* Opens the directory `path` (a prefix of a cleaned path, NUL-terminated),
 * creating its last component inside `parent_fd` when missing. */
static int open_or_create_dir(int root_fd, int parent_fd, const char *path, const char *last_component)
{
    int fd = safe_path_open_in_root(root_fd, path, O_PATH | O_DIRECTORY);
    if (fd >= 0 || errno != ENOENT)
        return fd;
    if (mkdirat(parent_fd, last_component, 0755) < 0 && errno != EEXIST)
        return -1;
    /* After EEXIST this fails again for a dangling symlink, which is then
     * reported rather than followed. */
    return safe_path_open_in_root(root_fd, path, O_PATH | O_DIRECTORY);
}

/* Creates every missing directory of `path` ("a/b/c" -> a, a/b, a/b/c),
 * resolving each prefix inside the root so symlinks are honoured but held
 * in. `path` is modified temporarily (a NUL at each component end). */
static int create_missing_dirs(int root_fd, char *path, size_t len, const char **failed_component)
{
    int parent_fd = root_fd;
    size_t start = 0;
    while (start < len) {
        size_t end = start;
        while (end < len && path[end] != '/')
            end++;
        char saved = path[end];
        path[end] = '\0';
        int fd = open_or_create_dir(root_fd, parent_fd, path, path + start);
        int saved_errno = errno;
        path[end] = saved;
        if (parent_fd != root_fd)
            close_quietly(parent_fd);
        if (fd < 0) {
            *failed_component = path + start;
            errno = saved_errno;
            return -1;
        }
        parent_fd = fd;
        start = end + 1;
    }
    return parent_fd;
}

int dir_cache_open(struct dir_cache *cache, int root_fd, const char *path, size_t len, bool create_missing,
                   const char **failed_component)
{
    *failed_component = NULL;
    if (len == 0)
        return root_fd;
    if (cache->fd >= 0 && cache->path.len == len && memcmp(cache->path.data, path, len) == 0)
        return cache->fd;

    dir_cache_invalidate(cache);
    if (byte_buffer_set(&cache->path, path, len) < 0)
        return -1;
    int fd = safe_path_open_in_root(root_fd, cache->path.data, O_PATH | O_DIRECTORY);
    if (fd < 0 && errno == ENOENT && create_missing)
        fd = create_missing_dirs(root_fd, cache->path.data, len, failed_component);
    if (fd < 0) {
        int saved_errno = errno;
        if (*failed_component != NULL)
            *failed_component = path + (*failed_component - cache->path.data);
        cache->path.len = 0;
        errno = saved_errno;
        return -1;
    }
    cache->fd = fd;
    return fd;
}

/* Empties directory `dir_fd` (which this function closes). Names removed
 * while reading may make readdir skip others, so passes repeat until one
 * finds nothing to remove. */
static int remove_dir_contents(int dir_fd)
{
    DIR *dir = fdopendir(dir_fd);
    if (dir == NULL) {
        close_quietly(dir_fd);
        return -1;
    }
    int rc = 0;
    bool removed_any = true;
    while (rc == 0 && removed_any) {
        removed_any = false;
        rewinddir(dir);
        for (;;) {
            errno = 0;
            struct dirent *ent = readdir(dir);
            if (ent == NULL) {
                if (errno != 0)
                    rc = -1;
                break;
            }
            if (strcmp(ent->d_name, ".") == 0 || strcmp(ent->d_name, "..") == 0)
                continue;
            if (safe_path_remove(dirfd(dir), ent->d_name) < 0) {
                rc = -1;
                break;
            }
            removed_any = true;
        }
    }
    int saved_errno = errno;
    (void)closedir(dir); /* read-only directory stream: see close_quietly */
    errno = saved_errno;
    return rc;
}

int safe_path_remove(int dir_fd, const char *name)
{
    if (unlinkat(dir_fd, name, 0) == 0 || errno == ENOENT)
        return 0;
    if (errno != EISDIR)
        return -1;
    if (unlinkat(dir_fd, name, AT_REMOVEDIR) == 0 || errno == ENOENT)
        return 0;
    if (errno != ENOTEMPTY && errno != EEXIST)
        return -1;
    int child_fd = openat(dir_fd, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    if (child_fd < 0)
        return -1;
    if (remove_dir_contents(child_fd) < 0)
        return -1;
    if (unlinkat(dir_fd, name, AT_REMOVEDIR) < 0 && errno != ENOENT)
        return -1;
    return 0;
}
