/*
 * User namespaces: the pod's (hostUsers: false), joining it, and ID-mapped
 * mounts made with it.
 *
 * The pod's user namespace owns the pod's net, IPC and UTS namespaces, so
 * that the container's root has its capabilities there (and only there).
 * The monitor itself stays in the node's user namespace, with its
 * privileges over everything else: it joins the pod's other namespaces, it
 * does not enter the user namespace. A helper cloned with CLONE_NEWUSER and
 * the other namespaces in one call (the kernel makes the user namespace
 * first, so it owns the rest) holds them while the monitor writes its
 * uid_map and gid_map and opens what it needs, then exits.
 *
 * A container's child does everything that needs the node's privileges
 * (cgroups, the overlay with ID-mapped lower layers, proc, sysfs, mqueue,
 * pivot_root) in the node's user namespace, and joins the pod's right
 * before its credentials: the mount namespace it made stays owned by the
 * node's, so the container's root cannot change its mounts.
 */
#include <errno.h>
#include <fcntl.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/wait.h>
#include <unistd.h>

#include "monitor.h"

#ifndef MOUNT_ATTR_IDMAP
#define MOUNT_ATTR_IDMAP 0x00100000
#endif

static const struct {
    int flag;
    const char *name;
} owned_namespaces[] = {{CLONE_NEWNET, "net"}, {CLONE_NEWIPC, "ipc"}, {CLONE_NEWUTS, "uts"}};

static int write_id_map(pid_t pid, const char *file, const char *map, struct error *err)
{
    char path[64];
    char line[128];
    snprintf(path, sizeof(path), "/proc/%d/%s", (int)pid, file);
    if ((size_t)snprintf(line, sizeof(line), "%s\n", map) >= sizeof(line))
        return error_plain(err, EINVAL, "%s line %s is too long", file, map);
    if (write_file(path, line, err) < 0)
        return error_context(err, "write the pod's user namespace %s", file);
    return 0;
}

/* Move this process into the helper's namespace of each `other_flags` kind. */
static int join_owned_namespaces(pid_t pid, int other_flags, struct error *err)
{
    for (size_t i = 0; i < sizeof(owned_namespaces) / sizeof(owned_namespaces[0]); i++) {
        if (!(other_flags & owned_namespaces[i].flag))
            continue;
        char path[64];
        snprintf(path, sizeof(path), "/proc/%d/ns/%s", (int)pid, owned_namespaces[i].name);
        int fd = open(path, O_RDONLY | O_CLOEXEC);
        if (fd < 0)
            return error_errno(err, errno, "open %s", path);
        int rc = setns(fd, owned_namespaces[i].flag);
        int saved = errno;
        close(fd);
        if (rc < 0)
            return error_errno(err, saved, "join the pod's %s namespace %s", owned_namespaces[i].name, path);
    }
    return 0;
}

int pod_userns_create(const char *uid_map, const char *gid_map, int other_flags, int *userns_fd,
                      struct error *err)
{
    *userns_fd = -1;
    /* The helper waits for EOF on `hold` and exits: it need only live while
     * its namespaces are set up and opened. */
    int hold[2];
    if (pipe2(hold, O_CLOEXEC) < 0)
        return error_errno(err, errno, "pipe for the user namespace helper");
    int pidfd = -1;
    pid_t pid = clone_process(CLONE_NEWUSER | (uint64_t)other_flags, &pidfd);
    if (pid == 0) {
        char byte;
        close(hold[1]);
        while (read(hold[0], &byte, 1) < 0 && errno == EINTR)
            ;
        _exit(0);
    }
    int saved = errno;
    close(hold[0]);
    if (pid < 0) {
        close(hold[1]);
        return error_errno(err, saved, "clone the pod's user namespace (CLONE_NEWUSER|%#x)", other_flags);
    }
    if (pidfd >= 0)
        close(pidfd);
    /* Written by a process privileged in the parent namespace, setgroups
     * stays "allow": the containers' supplementary groups need it. */
    int rc = write_id_map(pid, "uid_map", uid_map, err);
    if (rc == 0)
        rc = write_id_map(pid, "gid_map", gid_map, err);
    if (rc == 0) {
        char path[64];
        snprintf(path, sizeof(path), "/proc/%d/ns/user", (int)pid);
        *userns_fd = open(path, O_RDONLY | O_CLOEXEC);
        if (*userns_fd < 0)
            rc = error_errno(err, errno, "open %s", path);
    }
    if (rc == 0)
        rc = join_owned_namespaces(pid, other_flags, err);
    close(hold[1]);
    while (waitpid(pid, NULL, 0) < 0 && errno == EINTR)
        ;
    if (rc < 0 && *userns_fd >= 0) {
        close(*userns_fd);
        *userns_fd = -1;
    }
    return rc;
}

int join_user_namespace(int userns_fd, struct error *err)
{
    if (setns(userns_fd, CLONE_NEWUSER) < 0)
        return error_errno(err, errno, "join the pod's user namespace");
    return 0;
}

int idmap_tree(int tree, int userns_fd, const char *what, struct error *err)
{
    struct mount_attr_v0 attr = {.attr_set = MOUNT_ATTR_IDMAP, .userns_fd = (uint64_t)userns_fd};
    if (sys_mount_setattr(tree, "", AT_EMPTY_PATH, &attr) < 0)
        return error_errno(err, errno, "ID-map %s (Linux 5.12, and a filesystem that allows ID-mapped mounts)",
                           what);
    return 0;
}

int idmapped_tree(const char *path, int userns_fd, struct error *err)
{
    int tree = sys_open_tree(AT_FDCWD, path, OPEN_TREE_CLONE | OPEN_TREE_CLOEXEC);
    if (tree < 0)
        return error_errno(err, errno, "open_tree %s", path);
    if (idmap_tree(tree, userns_fd, path, err) < 0) {
        close(tree);
        return -1;
    }
    return tree;
}
