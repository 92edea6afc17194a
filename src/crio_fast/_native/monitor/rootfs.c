/*
 * The container's mount namespace: rootfs, the plan's mount operations,
 * pivot_root.
 *
 * Every destination is resolved inside the rootfs with openat2(2)
 * RESOLVE_IN_ROOT on a dirfd of the rootfs, so a symlink in the image
 * (say /etc/evil -> /) resolves to the container's own root and never to the
 * host's. Missing mount points are created through the same resolution.
 * Filesystems are mounted onto /proc/self/fd/N of the resolved O_PATH fd (the
 * host /proc is still visible before pivot_root); bind mounts and read-only
 * remounts use the new mount API (open_tree + mount_setattr + move_mount),
 * which makes a read-only bind read-only from the moment it appears and can
 * apply it recursively.
 */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <linux/openat2.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <unistd.h>

#include "monitor.h"

#define OVERLAY_LEGACY_DATA_MAX 4095 /* mount(2) data is one page */
/* fsconfig copies a key or string value of at most 255 bytes (strndup_user(..., 256)). */
#define FSCONFIG_STRING_MAX 255

static int open_in_root(int root_fd, const char *path, int flags)
{
    return sys_openat2(root_fd, path, (uint64_t)(flags | O_CLOEXEC), 0,
                       RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS);
}

static void fd_path(int fd, char out[32])
{
    snprintf(out, 32, "/proc/self/fd/%d", fd);
}

/* Split "/a/b/c" into "/a/b" and "c" (trailing slashes ignored). */
static int split_path(const char *path, char *parent, size_t parent_size, const char **base_out, char *base,
                      size_t base_size)
{
    size_t length = strlen(path);
    while (length > 1 && path[length - 1] == '/')
        length--;
    const char *slash = NULL;
    for (size_t i = 0; i < length; i++)
        if (path[i] == '/')
            slash = path + i;
    if (!slash)
        return -1;
    size_t parent_length = slash == path ? 1 : (size_t)(slash - path);
    size_t base_length = length - (size_t)(slash - path) - 1;
    if (parent_length >= parent_size || base_length >= base_size || base_length == 0)
        return -1;
    memcpy(parent, path, parent_length);
    parent[parent_length] = '\0';
    memcpy(base, slash + 1, base_length);
    base[base_length] = '\0';
    *base_out = base;
    return 0;
}

/* Who owns the mount points made in the rootfs: the node's root, or with a
 * user namespace the mapped root (the container's root would have made them
 * in it). Set by apply_mounts from the plan; the child makes one rootfs. */
static struct {
    bool set;
    uid_t uid;
    gid_t gid;
} made_owner;

static int give_to_owner(int dir_fd, const char *name, const char *rootfs, const char *path, struct error *err)
{
    if (made_owner.set && fchownat(dir_fd, name, made_owner.uid, made_owner.gid, AT_SYMLINK_NOFOLLOW) < 0)
        return error_errno(err, errno, "chown %s%s to %u:%u", rootfs, path, (unsigned)made_owner.uid,
                           (unsigned)made_owner.gid);
    return 0;
}

/* An O_PATH fd of directory `path` inside the rootfs, created (with parents)
 * when missing. */
static int ensure_directory(int root_fd, const char *rootfs, const char *path, mode_t mode, struct error *err)
{
    int fd = open_in_root(root_fd, path, O_PATH | O_DIRECTORY);
    if (fd >= 0)
        return fd;
    if (errno != ENOENT)
        return error_errno(err, errno, "open %s%s", rootfs, path);
    char parent[PATH_MAX], base_buffer[NAME_MAX + 1];
    const char *base;
    if (split_path(path, parent, sizeof(parent), &base, base_buffer, sizeof(base_buffer)) < 0)
        return error_plain(err, EINVAL, "bad path %s%s", rootfs, path);
    int parent_fd = ensure_directory(root_fd, rootfs, parent, 0755, err);
    if (parent_fd < 0)
        return -1;
    int rc = mkdirat(parent_fd, base, mode);
    int saved = errno;
    if (rc == 0 && give_to_owner(parent_fd, base, rootfs, path, err) < 0) {
        close(parent_fd);
        return -1;
    }
    close(parent_fd);
    if (rc < 0 && saved != EEXIST)
        return error_errno(err, saved, "mkdir %s%s", rootfs, path);
    fd = open_in_root(root_fd, path, O_PATH | O_DIRECTORY);
    if (fd < 0)
        return error_errno(err, errno, "open %s%s", rootfs, path);
    return fd;
}

/* An O_PATH fd of file `path` inside the rootfs, created empty when missing. */
static int ensure_file(int root_fd, const char *rootfs, const char *path, struct error *err)
{
    int fd = open_in_root(root_fd, path, O_PATH);
    if (fd >= 0)
        return fd;
    if (errno != ENOENT)
        return error_errno(err, errno, "open %s%s", rootfs, path);
    char parent[PATH_MAX], base_buffer[NAME_MAX + 1];
    const char *base;
    if (split_path(path, parent, sizeof(parent), &base, base_buffer, sizeof(base_buffer)) < 0)
        return error_plain(err, EINVAL, "bad path %s%s", rootfs, path);
    int parent_fd = ensure_directory(root_fd, rootfs, parent, 0755, err);
    if (parent_fd < 0)
        return -1;
    /* O_EXCL never follows a symlink; an existing one resolves below. */
    int created = openat(parent_fd, base, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0644);
    int saved = errno;
    if (created >= 0 && give_to_owner(parent_fd, base, rootfs, path, err) < 0) {
        close(created);
        close(parent_fd);
        return -1;
    }
    close(parent_fd);
    if (created < 0 && saved != EEXIST)
        return error_errno(err, saved, "create %s%s", rootfs, path);
    if (created >= 0)
        close(created);
    fd = open_in_root(root_fd, path, O_PATH);
    if (fd < 0)
        return error_errno(err, errno, "open %s%s", rootfs, path);
    return fd;
}

static struct mount_attr_v0 mount_attr_from_flags(uint64_t flags, uint32_t propagation)
{
    uint64_t attributes = 0;
    if (flags & MS_RDONLY)
        attributes |= MOUNT_ATTR_RDONLY;
    if (flags & MS_NOSUID)
        attributes |= MOUNT_ATTR_NOSUID;
    if (flags & MS_NODEV)
        attributes |= MOUNT_ATTR_NODEV;
    if (flags & MS_NOEXEC)
        attributes |= MOUNT_ATTR_NOEXEC;
    if (flags & MS_NOATIME)
        attributes |= MOUNT_ATTR_NOATIME;
    if (flags & MS_NODIRATIME)
        attributes |= MOUNT_ATTR_NODIRATIME;
    struct mount_attr_v0 attr = {.attr_set = attributes, .propagation = propagation};
    /* The atime modes are a field, not bits: the kernel sets one only when
     * told to clear the whole field (EINVAL otherwise, on every kernel). */
    if (attributes & MOUNT_ATTR__ATIME)
        attr.attr_clr = MOUNT_ATTR__ATIME;
    return attr;
}

/* Attach a clone of `source_fd` (or of host path `source`) onto `target_fd`
 * with the attributes already applied to the detached clone. MS_REC clones the
 * mounts under the source too and sets the propagation on all of them; the
 * other attributes (read-only, nosuid, ...) go on the top mount alone unless
 * `attributes_recursive`, as an OCI runtime's "rbind,ro" leaves a tmpfs under
 * the source writable. */
static int attach_clone(int source_dirfd, const char *source, int target_fd, uint64_t flags, uint32_t propagation,
                        bool attributes_recursive, const char *what, const char *rootfs, const char *destination,
                        int idmap_userns_fd, struct error *err)
{
    bool recursive = flags & MS_REC;
    unsigned int tree_flags = OPEN_TREE_CLONE | OPEN_TREE_CLOEXEC | (recursive ? AT_RECURSIVE : 0);
    if (!*source)
        tree_flags |= AT_EMPTY_PATH;
    int tree = sys_open_tree(source_dirfd, source, tree_flags);
    if (tree < 0)
        return error_errno(err, errno, "%s %s on %s%s: open_tree", what, *source ? source : "(fd)", rootfs,
                           destination);
    /* The top mount alone: a submount's filesystem may not allow ID-mapping. */
    if (idmap_userns_fd >= 0 && idmap_tree(tree, idmap_userns_fd, source, err) < 0) {
        close(tree);
        return error_context(err, "%s on %s%s", what, rootfs, destination);
    }
    struct mount_attr_v0 attr = mount_attr_from_flags(flags, propagation);
    /* One call when both parts reach the same mounts, else the attributes and the propagation apart. */
    bool split = recursive && !attributes_recursive && attr.attr_set && attr.propagation;
    struct mount_attr_v0 first = attr;
    if (split)
        first.propagation = 0;
    unsigned int first_at = AT_EMPTY_PATH | (recursive && (attributes_recursive || !attr.attr_set) ? AT_RECURSIVE : 0);
    int rc = 0;
    if (first.attr_set || first.propagation)
        rc = sys_mount_setattr(tree, "", first_at, &first);
    if (rc == 0 && split) {
        struct mount_attr_v0 propagation_only = {.propagation = attr.propagation};
        rc = sys_mount_setattr(tree, "", AT_EMPTY_PATH | AT_RECURSIVE, &propagation_only);
    }
    if (rc < 0) {
        int saved = errno;
        close(tree);
        return error_errno(err, saved, "%s %s on %s%s: set attributes %#llx, propagation %#llx", what,
                           *source ? source : "(fd)", rootfs, destination, (unsigned long long)attr.attr_set,
                           (unsigned long long)attr.propagation);
    }
    rc = sys_move_mount(tree, "", target_fd, "", MOVE_MOUNT_F_EMPTY_PATH | MOVE_MOUNT_T_EMPTY_PATH);
    int saved = errno;
    close(tree);
    if (rc < 0)
        return error_errno(err, saved, "%s %s on %s%s", what, *source ? source : "(fd)", rootfs, destination);
    return 0;
}

static int set_propagation(int root_fd, const char *rootfs, const char *destination, uint32_t propagation,
                           bool recursive, struct error *err)
{
    /* Reopen: the path now resolves to the root of the new mount. */
    int fd = open_in_root(root_fd, destination, O_PATH);
    if (fd < 0)
        return error_errno(err, errno, "open %s%s", rootfs, destination);
    char target[32];
    fd_path(fd, target);
    int rc = mount(NULL, target, NULL, propagation | (recursive ? MS_REC : 0), NULL);
    int saved = errno;
    close(fd);
    if (rc < 0)
        return error_errno(err, saved, "set propagation %#x on %s%s", propagation, rootfs, destination);
    return 0;
}

static int do_mount(int root_fd, const char *rootfs, const struct plan_mount *m, struct error *err)
{
    int fd = ensure_directory(root_fd, rootfs, m->destination, 0755, err);
    if (fd < 0)
        return -1;
    char target[32];
    fd_path(fd, target);
    const char *source = m->source ? m->source : m->fstype;
    int rc = mount(source, target, m->fstype, (unsigned long)m->flags, m->data);
    int saved = errno;
    close(fd);
    if (rc < 0)
        return error_errno(err, saved, "mount %s on %s%s", m->fstype, rootfs, m->destination);
    if (m->propagation)
        return set_propagation(root_fd, rootfs, m->destination, m->propagation, m->flags & MS_REC, err);
    return 0;
}

static int do_bind(int root_fd, const char *rootfs, const struct plan_mount *m, int userns_fd, struct error *err)
{
    struct stat st;
    if (stat(m->source, &st) < 0)
        return error_errno(err, errno, "bind %s on %s%s: stat source", m->source, rootfs, m->destination);
    int fd = S_ISDIR(st.st_mode) ? ensure_directory(root_fd, rootfs, m->destination, 0755, err)
                                 : ensure_file(root_fd, rootfs, m->destination, err);
    if (fd < 0)
        return -1;
    int rc = attach_clone(AT_FDCWD, m->source, fd, m->flags, m->propagation,
                          (m->flags & MOUNT_FLAG_RECURSIVE_ATTRIBUTES) != 0, "bind", rootfs, m->destination,
                          (m->flags & MOUNT_FLAG_IDMAP) ? userns_fd : -1, err);
    close(fd);
    return rc;
}

/* The directory a run of device nodes and symlinks goes in (/dev), opened
 * once for the run. Any other operation may mount over it: it drops it. */
struct parent_cache {
    char path[PATH_MAX];
    int fd;
};

static void drop_parent(struct parent_cache *cache)
{
    if (cache->fd >= 0)
        close(cache->fd);
    cache->fd = -1;
}

static int cached_parent(struct parent_cache *cache, int root_fd, const char *rootfs, const char *parent,
                         struct error *err)
{
    if (cache->fd >= 0 && strcmp(cache->path, parent) == 0)
        return cache->fd;
    drop_parent(cache);
    int fd = ensure_directory(root_fd, rootfs, parent, 0755, err);
    if (fd < 0)
        return -1;
    snprintf(cache->path, sizeof(cache->path), "%s", parent); /* split_path kept it under PATH_MAX */
    cache->fd = fd;
    return fd;
}

static int do_mknod(int root_fd, const char *rootfs, const struct plan_mount *m, struct parent_cache *cache,
                    struct error *err)
{
    char parent[PATH_MAX], base_buffer[NAME_MAX + 1];
    const char *base;
    if (split_path(m->destination, parent, sizeof(parent), &base, base_buffer, sizeof(base_buffer)) < 0)
        return error_plain(err, EINVAL, "mknod: bad path %s%s", rootfs, m->destination);
    mode_t type = m->mode & S_IFMT;
    if (type != S_IFCHR && type != S_IFBLK && type != S_IFIFO)
        return error_plain(err, EINVAL, "mknod %s%s: mode %#o is not a device or fifo", rootfs, m->destination,
                           m->mode);
    int parent_fd = cached_parent(cache, root_fd, rootfs, parent, err);
    if (parent_fd < 0)
        return -1;
    int rc = mknodat(parent_fd, base, (mode_t)m->mode, makedev(m->major, m->minor));
    int saved = errno;
    /* The node is the creator's already when that is the owner asked for (root, before the
     * credentials change): no chown. */
    bool owned = m->uid == geteuid() && m->gid == getegid();
    if (rc == 0 && !owned && fchownat(parent_fd, base, m->uid, m->gid, AT_SYMLINK_NOFOLLOW) < 0)
        return error_errno(err, errno, "chown %s%s", rootfs, m->destination);
    if (rc == 0)
        return 0;
    if (saved != EPERM || !m->source)
        return error_errno(err, saved, "mknod %s%s", rootfs, m->destination);
    /* Not allowed to create devices here: bind the host's node instead. */
    struct plan_mount bind = *m;
    bind.kind = MOUNT_OP_BIND;
    bind.flags = MS_NOSUID | MS_NOEXEC;
    bind.propagation = 0;
    return do_bind(root_fd, rootfs, &bind, -1, err);
}

static int do_symlink(int root_fd, const char *rootfs, const struct plan_mount *m, struct parent_cache *cache,
                      struct error *err)
{
    char parent[PATH_MAX], base_buffer[NAME_MAX + 1];
    const char *base;
    if (split_path(m->destination, parent, sizeof(parent), &base, base_buffer, sizeof(base_buffer)) < 0)
        return error_plain(err, EINVAL, "symlink: bad path %s%s", rootfs, m->destination);
    int parent_fd = cached_parent(cache, root_fd, rootfs, parent, err);
    if (parent_fd < 0)
        return -1;
    int rc = symlinkat(m->source, parent_fd, base);
    int saved = errno;
    if (rc < 0 && saved != EEXIST)
        return error_errno(err, saved, "symlink %s%s -> %s", rootfs, m->destination, m->source);
    return 0;
}

static int do_mask(int root_fd, const char *rootfs, const struct plan_mount *m, struct error *err)
{
    int fd = open_in_root(root_fd, m->destination, O_PATH);
    if (fd < 0) {
        if (errno == ENOENT)
            return 0; /* nothing to hide */
        return error_errno(err, errno, "mask %s%s", rootfs, m->destination);
    }
    struct stat st;
    if (fstat(fd, &st) < 0) {
        int saved = errno;
        close(fd);
        return error_errno(err, saved, "mask %s%s: stat", rootfs, m->destination);
    }
    int rc;
    if (S_ISDIR(st.st_mode)) {
        char target[32];
        fd_path(fd, target);
        rc = mount("tmpfs", target, "tmpfs", MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC, "size=0");
        if (rc < 0)
            error_errno(err, errno, "mask %s%s with an empty tmpfs", rootfs, m->destination);
    } else {
        rc = attach_clone(AT_FDCWD, "/dev/null", fd, 0, 0, false, "mask with", rootfs, m->destination, -1, err);
    }
    close(fd);
    return rc;
}

static int do_readonly(int root_fd, const char *rootfs, const struct plan_mount *m, struct error *err)
{
    int fd = open_in_root(root_fd, m->destination, O_PATH);
    if (fd < 0) {
        if (errno == ENOENT)
            return 0;
        return error_errno(err, errno, "make %s%s read-only", rootfs, m->destination);
    }
    int rc;
    if (m->flags & MS_REMOUNT) {
        /* The plan says the path is a mount point: change it where it is (with MS_REC, the mounts
         * under it too, in one call) instead of stacking a read-only copy on it. */
        struct mount_attr_v0 attr = mount_attr_from_flags(m->flags | MS_RDONLY, m->propagation);
        rc = sys_mount_setattr(fd, "", AT_EMPTY_PATH | (m->flags & MS_REC ? AT_RECURSIVE : 0), &attr);
        if (rc < 0)
            error_errno(err, errno, "make %s%s read-only where it is mounted", rootfs, m->destination);
    } else {
        /* Bind the path over itself, read-only; works for mount points and for
         * plain directories such as /proc/sys alike. */
        rc = attach_clone(fd, "", fd, m->flags | MS_RDONLY, 0, true, "read-only bind of", rootfs, m->destination, -1,
                          err);
    }
    close(fd);
    return rc;
}

static int apply_mount(int root_fd, const char *rootfs, const struct plan_mount *m, struct parent_cache *cache,
                       int userns_fd, struct error *err)
{
    if (m->kind != MOUNT_OP_MKNOD && m->kind != MOUNT_OP_SYMLINK)
        drop_parent(cache);
    switch (m->kind) {
    case MOUNT_OP_MOUNT: return do_mount(root_fd, rootfs, m, err);
    case MOUNT_OP_BIND: return do_bind(root_fd, rootfs, m, userns_fd, err);
    case MOUNT_OP_MKNOD: return do_mknod(root_fd, rootfs, m, cache, err);
    case MOUNT_OP_SYMLINK: return do_symlink(root_fd, rootfs, m, cache, err);
    case MOUNT_OP_MKDIR: {
        int fd = ensure_directory(root_fd, rootfs, m->destination, m->mode ? m->mode : 0755, err);
        if (fd < 0)
            return -1;
        close(fd);
        return 0;
    }
    case MOUNT_OP_MASK: return do_mask(root_fd, rootfs, m, err);
    case MOUNT_OP_READONLY: return do_readonly(root_fd, rootfs, m, err);
    default: return error_plain(err, EINVAL, "unknown mount kind %u", m->kind);
    }
}

/* The kernel explains fsconfig failures in the fs context ("e ..." lines). */
static void append_fs_context_messages(int fs_fd, struct error *err)
{
    char line[512];
    size_t used = strlen(err->message);
    for (int i = 0; i < 8; i++) {
        ssize_t got = read(fs_fd, line, sizeof(line) - 1);
        if (got <= 0)
            break;
        line[got] = '\0';
        int added = snprintf(err->message + used, sizeof(err->message) - used, " (%s)", line);
        if (added < 0 || (size_t)added >= sizeof(err->message) - used)
            break;
        used += (size_t)added;
    }
}

/* `why`: why lowerdir+ is not used, for the one-page error. */
/* mount(2) answers EINVAL or ENOENT for the whole option string; name the
 * directory that is missing, as fsconfig does for each parameter. */
static void overlay_mount_error(const struct launch_plan *plan, int mount_errno, struct error *err)
{
    for (size_t i = 0; i < plan->overlay_lower_count; i++) {
        if (access(plan->overlay_lower[i], F_OK) < 0) {
            error_errno(err, errno, "overlay lower dir %s", plan->overlay_lower[i]);
            return;
        }
    }
    const char *writable[] = {plan->overlay_upper, plan->overlay_work};
    for (size_t i = 0; i < 2; i++) {
        if (writable[i] && access(writable[i], F_OK) < 0) {
            error_errno(err, errno, "overlay %s dir %s", i ? "work" : "upper", writable[i]);
            return;
        }
    }
    error_errno(err, mount_errno, "mount overlay on %s", plan->rootfs);
}

static int mount_overlay_legacy(const struct launch_plan *plan, const char *why, struct error *err)
{
    struct buffer data = {0};
    int rc = -1;
    buffer_append(&data, "lowerdir=", 9);
    for (size_t i = 0; i < plan->overlay_lower_count; i++) {
        if (strpbrk(plan->overlay_lower[i], ":,")) {
            error_plain(err, EINVAL, "overlay lower dir %s contains ':' or ','", plan->overlay_lower[i]);
            goto out;
        }
        if (i)
            buffer_append(&data, ":", 1);
        buffer_append(&data, plan->overlay_lower[i], strlen(plan->overlay_lower[i]));
    }
    if (plan->overlay_upper) {
        buffer_append(&data, ",upperdir=", 10);
        buffer_append(&data, plan->overlay_upper, strlen(plan->overlay_upper));
        buffer_append(&data, ",workdir=", 9);
        buffer_append(&data, plan->overlay_work, strlen(plan->overlay_work));
    }
    for (size_t i = 0; i < plan->overlay_option_count; i++) {
        buffer_append(&data, ",", 1);
        buffer_append(&data, plan->overlay_options[i], strlen(plan->overlay_options[i]));
    }
    buffer_append(&data, "", 1);
    if (data.failed) {
        error_errno(err, ENOMEM, "overlay options");
        goto out;
    }
    if (data.length - 1 > OVERLAY_LEGACY_DATA_MAX) {
        error_plain(err, E2BIG,
                    "mount overlay on %s: options are %zu bytes, over the one-page limit of mount(2), and "
                    "fsconfig lowerdir+ is not used: %s",
                    plan->rootfs, data.length - 1, why);
        goto out;
    }
    if (mount("overlay", plan->rootfs, "overlay", 0, data.data) < 0)
        overlay_mount_error(plan, errno, err);
    else
        rc = 0;
out:
    buffer_free(&data);
    return rc;
}

static int overlay_config(int fs_fd, const char *key, const char *value, struct error *err)
{
    int rc = value ? sys_fsconfig(fs_fd, FSCONFIG_SET_STRING, key, value, 0)
                   : sys_fsconfig(fs_fd, FSCONFIG_SET_FLAG, key, NULL, 0);
    if (rc < 0) {
        error_errno(err, errno, "overlay option %s%s%s", key, value ? "=" : "", value ? value : "");
        append_fs_context_messages(fs_fd, err);
        return -1;
    }
    return 0;
}

/* How this process, and every child cloned from it later, mounts overlays
 * (overlay_mount_decide). The pod monitor decides before it clones any
 * container: a child's own probe would not reach the monitor, and the next
 * child would pay for it again. */
static enum {
    OVERLAY_UNDECIDED,
    OVERLAY_FSCONFIG, /* fsopen + one fsconfig "lowerdir+" per layer: no limit on the layers */
    OVERLAY_LEGACY,   /* mount(2), every option in one string of at most a page */
} overlay_mount = OVERLAY_UNDECIDED;
static bool overlay_forced_legacy;
static enum fs_param_answer overlay_answer;
static int overlay_answer_errno;

int overlay_mount_decide(bool legacy, struct error *err)
{
    if (legacy) {
        overlay_forced_legacy = true;
        overlay_mount = OVERLAY_LEGACY;
        return 0;
    }
    /* The value must name a directory (6.8 resolves it at once); the context
     * is thrown away, and "/" is there in every mount namespace. */
    enum fs_param_answer answer;
    if (fs_param_probe("overlay", "lowerdir+", "/", &answer, err) < 0)
        return error_context(err, "probe overlayfs for lowerdir+");
    overlay_answer = answer;
    overlay_answer_errno = err->code;
    overlay_mount = answer == FS_PARAM_TAKEN ? OVERLAY_FSCONFIG : OVERLAY_LEGACY;
    return 0;
}

/* Why the decision went to mount(2), for its one-page error (fixed strings:
 * the full probe message is not kept, the monitor keeps no page for it). */
static const char *overlay_legacy_reason(char *buffer, size_t size)
{
    if (overlay_forced_legacy)
        return "the pod monitor was started with --overlay-mount legacy";
    switch (overlay_answer) {
    case FS_PARAM_NO_PARSER:
        return "this kernel's overlayfs has no parameter parser (Linux 6.5) and no lowerdir+ (Linux 6.8)";
    case FS_PARAM_REFUSED:
        return "this kernel's overlayfs refuses lowerdir+ (Linux 6.8)";
    case FS_PARAM_NO_FSOPEN:
        snprintf(buffer, size, "fsopen overlay: %s", strerror(overlay_answer_errno));
        return buffer;
    case FS_PARAM_TAKEN:
        break;
    }
    return "lowerdir+ is not usable here";
}

/* fsconfig takes no string longer than FSCONFIG_STRING_MAX: a path beyond
 * that must go the mount(2) way (which may still fit in a page). */
static const char *overlay_too_long_for_fsconfig(const struct launch_plan *plan)
{
    for (size_t i = 0; i < plan->overlay_lower_count; i++)
        if (strlen(plan->overlay_lower[i]) > FSCONFIG_STRING_MAX)
            return plan->overlay_lower[i];
    if (plan->overlay_upper && strlen(plan->overlay_upper) > FSCONFIG_STRING_MAX)
        return plan->overlay_upper;
    if (plan->overlay_work && strlen(plan->overlay_work) > FSCONFIG_STRING_MAX)
        return plan->overlay_work;
    for (size_t i = 0; i < plan->overlay_option_count; i++)
        if (strlen(plan->overlay_options[i]) > FSCONFIG_STRING_MAX)
            return plan->overlay_options[i];
    return NULL;
}

/* Overlay through fsopen/fsconfig: each lower dir is its own "lowerdir+"
 * parameter, so the one-page limit of mount(2) data does not apply. Only
 * where the probe found lowerdir+ (overlay_mount_decide): before Linux 6.5
 * fsconfig would take "lowerdir+" and only FSCONFIG_CMD_CREATE refuse it. */
static int mount_overlay(const struct launch_plan *plan, struct error *err)
{
    if (overlay_mount == OVERLAY_UNDECIDED && overlay_mount_decide(false, err) < 0)
        return error_context(err, "mount overlay on %s", plan->rootfs);
    char reason[ERROR_MESSAGE_MAX / 2];
    if (overlay_mount == OVERLAY_LEGACY)
        return mount_overlay_legacy(plan, overlay_legacy_reason(reason, sizeof(reason)), err);
    const char *too_long = overlay_too_long_for_fsconfig(plan);
    if (too_long) {
        snprintf(reason, sizeof(reason), "%.200s... is longer than the %d bytes fsconfig takes", too_long,
                 FSCONFIG_STRING_MAX);
        return mount_overlay_legacy(plan, reason, err);
    }
    int fs_fd = sys_fsopen("overlay", FSOPEN_CLOEXEC);
    if (fs_fd < 0)
        return error_errno(err, errno, "fsopen overlay");
    int rc = -1;
    for (size_t i = 0; i < plan->overlay_lower_count; i++)
        if (overlay_config(fs_fd, "lowerdir+", plan->overlay_lower[i], err) < 0)
            goto out;
    if (plan->overlay_upper && (overlay_config(fs_fd, "upperdir", plan->overlay_upper, err) < 0 ||
                                overlay_config(fs_fd, "workdir", plan->overlay_work, err) < 0))
        goto out;
    for (size_t i = 0; i < plan->overlay_option_count; i++) {
        char key[FSCONFIG_STRING_MAX + 1];
        const char *option = plan->overlay_options[i];
        const char *equals = strchr(option, '=');
        size_t key_length = equals ? (size_t)(equals - option) : strlen(option);
        memcpy(key, option, key_length); /* overlay_too_long_for_fsconfig: it fits */
        key[key_length] = '\0';
        if (overlay_config(fs_fd, key, equals ? equals + 1 : NULL, err) < 0)
            goto out;
    }
    if (sys_fsconfig(fs_fd, FSCONFIG_CMD_CREATE, NULL, NULL, 0) < 0) {
        error_errno(err, errno, "mount overlay on %s", plan->rootfs);
        append_fs_context_messages(fs_fd, err);
        goto out;
    }
    int mount_fd = sys_fsmount(fs_fd, FSMOUNT_CLOEXEC, 0);
    if (mount_fd < 0) {
        error_errno(err, errno, "fsmount overlay for %s", plan->rootfs);
        goto out;
    }
    if (sys_move_mount(mount_fd, "", AT_FDCWD, plan->rootfs, MOVE_MOUNT_F_EMPTY_PATH) < 0)
        error_errno(err, errno, "mount overlay on %s", plan->rootfs);
    else
        rc = 0;
    close(mount_fd);
out:
    close(fs_fd);
    return rc;
}

/* The overlay with each lower dir replaced by an ID-mapped clone of it
 * (Linux 5.19 takes ID-mapped layers): files owned by the node's root show
 * as the container's root, and nothing on the shared layers is chowned.
 * Overlayfs keeps private clones of its layers, which older kernels (6.1; not 6.18)
 * (clone_private_mount) make only of mounts in the caller's own mount
 * namespace, not of detached ones: each ID-mapped clone is attached first,
 * on a directory of a small tmpfs mounted on the target in this child's
 * mount namespace. The overlay goes on top of that tmpfs, which leaves with
 * the old root at pivot_root (the overlay holds its own clones). */
static int mount_overlay_idmapped(const struct launch_plan *plan, struct error *err)
{
    size_t count = plan->overlay_lower_count;
    int *trees = calloc(count, sizeof(*trees));
    char(*names)[PATH_MAX] = calloc(count, sizeof(*names));
    const char **lower = calloc(count, sizeof(*lower));
    int rc = -1;
    if (!trees || !names || !lower) {
        error_errno(err, ENOMEM, "ID-mapped overlay layers");
        goto out;
    }
    for (size_t i = 0; i < count; i++)
        trees[i] = -1;
    if (mount("tmpfs", plan->rootfs, "tmpfs", MS_NOSUID | MS_NODEV | MS_NOEXEC, "mode=0700,size=64k") < 0) {
        error_errno(err, errno, "mount a tmpfs for the ID-mapped layers on %s", plan->rootfs);
        goto out;
    }
    for (size_t i = 0; i < count; i++) {
        trees[i] = idmapped_tree(plan->overlay_lower[i], plan->userns_fd, err);
        if (trees[i] < 0) {
            error_context(err, "overlay lower dir for %s", plan->rootfs);
            goto out;
        }
        if ((size_t)snprintf(names[i], sizeof(names[i]), "%s/%zu", plan->rootfs, i) >= sizeof(names[i])) {
            error_plain(err, ENAMETOOLONG, "ID-mapped layer %zu under %s: path too long", i, plan->rootfs);
            goto out;
        }
        if (mkdir(names[i], 0700) < 0) {
            error_errno(err, errno, "mkdir %s", names[i]);
            goto out;
        }
        if (sys_move_mount(trees[i], "", AT_FDCWD, names[i], MOVE_MOUNT_F_EMPTY_PATH) < 0) {
            error_errno(err, errno, "attach the ID-mapped %s on %s", plan->overlay_lower[i], names[i]);
            goto out;
        }
        lower[i] = names[i];
    }
    struct launch_plan mapped = *plan;
    mapped.overlay_lower = lower;
    rc = mount_overlay(&mapped, err);
out:
    for (size_t i = 0; trees && i < count; i++)
        if (trees[i] >= 0)
            close(trees[i]);
    free(trees);
    free(names);
    free(lower);
    return rc;
}

static int enter_root(const struct launch_plan *plan, int root_fd, struct error *err)
{
    if (fchdir(root_fd) < 0)
        return error_errno(err, errno, "chdir %s", plan->rootfs);
    if (plan->no_pivot) {
        /* For ramdisk-rooted hosts where pivot_root is refused. */
        if (mount(".", "/", NULL, MS_MOVE, NULL) < 0)
            return error_errno(err, errno, "move %s to /", plan->rootfs);
        if (chroot(".") < 0)
            return error_errno(err, errno, "chroot %s", plan->rootfs);
    } else {
        /* pivot_root(".", ".") stacks the old root on the new one; detach it
         * without letting the unmount propagate anywhere. The propagation
         * change must name the old root through a directory of its own: a
         * lookup of "." from the new root does not cross the mount stacked
         * on it, and would turn every mount of the container (a
         * bidirectional volume too) into a slave. */
        int old_root = open("/", O_PATH | O_DIRECTORY | O_CLOEXEC);
        if (old_root < 0)
            return error_errno(err, errno, "open the old root");
        if (sys_pivot_root(".", ".") < 0) {
            int saved = errno;
            close(old_root);
            return error_errno(err, saved, "pivot_root %s", plan->rootfs);
        }
        int rc = fchdir(old_root);
        int saved = errno;
        close(old_root);
        if (rc < 0)
            return error_errno(err, saved, "chdir to the old root");
        /* Already so when prepare_rootfs made `/` a recursive slave (or private): the
         * mounts made since, under those, are private. */
        bool already = (plan->root_propagation & MS_REC) && (plan->root_propagation & (MS_SLAVE | MS_PRIVATE));
        if (!already && mount(NULL, ".", NULL, MS_SLAVE | MS_REC, NULL) < 0)
            return error_errno(err, errno, "make the old root a slave");
        if (umount2(".", MNT_DETACH) < 0)
            return error_errno(err, errno, "detach the old root");
    }
    if (chdir("/") < 0)
        return error_errno(err, errno, "chdir /");
    return 0;
}

/* With a shared `/` (a bidirectional volume), the mount the rootfs lives on
 * would send the container's root mount to the host, and pivot_root refuses
 * a new root whose parent mount is shared: make that one mount private. The
 * volume binds still join their sources' peer groups (see attach_clone). */
static int make_rootfs_parent_private(const char *rootfs, struct error *err)
{
    char path[PATH_MAX];
    if (snprintf(path, sizeof(path), "%s", rootfs) >= (int)sizeof(path))
        return error_plain(err, ENAMETOOLONG, "rootfs path too long: %s", rootfs);
    for (;;) {
        char *slash = strrchr(path, '/');
        if (slash == NULL)
            return error_plain(err, EINVAL, "rootfs %s is not an absolute path", rootfs);
        if (slash == path)
            slash[1] = '\0';
        else
            *slash = '\0';
        if (mount(NULL, path, NULL, MS_PRIVATE, NULL) == 0)
            return 0;
        if (errno != EINVAL)  /* EINVAL: not a mount point, try its parent */
            return error_errno(err, errno, "make the mount of %s private", path);
        if (strcmp(path, "/") == 0)
            return error_errno(err, errno, "make the mount of %s private", path);
    }
}

/* Mount operations at or below /sys/fs/cgroup bind the container's cgroups
 * in (v1) or mount cgroup2 as seen from its cgroup namespace (v2). */
size_t first_cgroup_mount(const struct launch_plan *plan)
{
    static const char prefix[] = "/sys/fs/cgroup";
    for (size_t i = 0; i < plan->mount_count; i++) {
        const char *destination = plan->mounts[i].destination;
        if (destination && strncmp(destination, prefix, sizeof(prefix) - 1) == 0 &&
            (destination[sizeof(prefix) - 1] == '\0' || destination[sizeof(prefix) - 1] == '/'))
            return i;
    }
    return plan->mount_count;
}

int apply_mounts(const struct launch_plan *plan, size_t from, size_t to, struct error *err)
{
    if (from >= to)
        return 0;
    made_owner.set = plan->has_overlay_upper_owner;
    made_owner.uid = plan->overlay_upper_uid;
    made_owner.gid = plan->overlay_upper_gid;
    int root_fd = open(plan->rootfs, O_PATH | O_DIRECTORY | O_CLOEXEC);
    if (root_fd < 0)
        return error_errno(err, errno, "open rootfs %s", plan->rootfs);
    struct parent_cache cache = {.fd = -1};
    int rc = 0;
    for (size_t i = from; i < to && rc == 0; i++)
        rc = apply_mount(root_fd, plan->rootfs, &plan->mounts[i], &cache, plan->userns_fd, err);
    drop_parent(&cache);
    close(root_fd);
    return rc;
}

int prepare_rootfs(const struct launch_plan *plan, struct error *err)
{
    /* Nothing done here may reach the host's mount namespace. */
    if (mount(NULL, "/", NULL, plan->root_propagation, NULL) < 0)
        return error_errno(err, errno, "set propagation %#x on /", plan->root_propagation);
    if ((plan->root_propagation & MS_SHARED) && make_rootfs_parent_private(plan->rootfs, err) < 0)
        return -1;
    if (plan->has_overlay) {
        /* The root of the merged tree is the upper dir's: the container's
         * root must own it to write in `/`. */
        if (plan->has_overlay_upper_owner && plan->overlay_upper &&
            chown(plan->overlay_upper, plan->overlay_upper_uid, plan->overlay_upper_gid) < 0)
            return error_errno(err, errno, "chown %s to %u:%u", plan->overlay_upper, plan->overlay_upper_uid,
                               plan->overlay_upper_gid);
        if (plan->overlay_idmap) {
            if (plan->userns_fd < 0)
                return error_plain(err, EINVAL, "ID-mapped overlay layers need a user namespace to join");
            if (mount_overlay_idmapped(plan, err) < 0)
                return -1;
        } else if (mount_overlay(plan, err) < 0) {
            return -1;
        }
    } else {
        /* pivot_root needs a mount point: bind the rootfs onto itself. */
        int target = open(plan->rootfs, O_PATH | O_DIRECTORY | O_CLOEXEC);
        if (target < 0)
            return error_errno(err, errno, "open rootfs %s", plan->rootfs);
        int rc = attach_clone(AT_FDCWD, plan->rootfs, target, MS_REC, 0, false, "bind rootfs", plan->rootfs, "", -1,
                              err);
        close(target);
        if (rc < 0)
            return -1;
    }
    return 0;
}

int finish_rootfs(const struct launch_plan *plan, size_t first_mount, struct error *err)
{
    if (apply_mounts(plan, first_mount, plan->mount_count, err) < 0)
        return -1;
    int root_fd = open(plan->rootfs, O_PATH | O_DIRECTORY | O_CLOEXEC);
    if (root_fd < 0)
        return error_errno(err, errno, "open rootfs %s", plan->rootfs);
    int rc = enter_root(plan, root_fd, err);
    close(root_fd);
    if (rc < 0)
        return -1;
    if (plan->rootfs_readonly)
        return make_root_readonly(err);
    return 0;
}

int make_root_readonly(struct error *err)
{
    struct mount_attr_v0 attr = {.attr_set = MOUNT_ATTR_RDONLY};
    if (sys_mount_setattr(AT_FDCWD, "/", 0, &attr) < 0)
        return error_errno(err, errno, "make the root filesystem read-only");
    return 0;
}
