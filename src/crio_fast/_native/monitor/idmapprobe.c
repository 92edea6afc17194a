/*
 * `crio-fast-monitor --probe-idmap-overlay DIR`: whether this node can run
 * pods in user namespaces the way the monitor does, by mounting an overlay
 * whose lower layer is an ID-mapped mount of DIR (the image store's
 * filesystem). Needs MOUNT_ATTR_IDMAP (Linux 5.12) on a filesystem that
 * allows it (ext4, xfs, btrfs: 5.12-5.15; tmpfs: 6.3) and an overlayfs that
 * takes ID-mapped layers (Linux 5.19).
 *
 * The probe works in a mount namespace of its own, private, which goes away
 * with the process: it leaves nothing on DIR. Prints `ok: ...` (exit 0),
 * `refused: ...` (exit 1, the kernel or the filesystem cannot) or
 * `error: ...` (exit 2, the probe itself failed).
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sched.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <unistd.h>

#include "monitor.h"

/* An arbitrary mapping: the probe maps, it never runs anything as it. */
#define PROBE_ID_MAP "0 1000000000 65536"

static int probe(const char *dir, bool *refused, struct error *err)
{
    *refused = false;
    int userns_fd;
    if (pod_userns_create(PROBE_ID_MAP, PROBE_ID_MAP, 0, &userns_fd, err) < 0)
        return -1;
    if (unshare(CLONE_NEWNS) < 0)
        return error_errno(err, errno, "unshare a mount namespace");
    if (mount(NULL, "/", NULL, MS_REC | MS_PRIVATE, NULL) < 0)
        return error_errno(err, errno, "make / private");
    int tree = idmapped_tree(dir, userns_fd, err);
    if (tree < 0) {
        *refused = true;
        return -1;
    }
    /* The writable layer on a tmpfs over DIR, seen by this namespace alone. */
    if (mount("tmpfs", dir, "tmpfs", 0, "mode=0700") < 0)
        return error_errno(err, errno, "mount a tmpfs on %s", dir);
    char lower[4096], upper[4096], work[4096], target[4096], data[4096 * 4 + 64];
    snprintf(lower, sizeof(lower), "%s/lower", dir);
    snprintf(upper, sizeof(upper), "%s/upper", dir);
    snprintf(work, sizeof(work), "%s/work", dir);
    snprintf(target, sizeof(target), "%s/merged", dir);
    const char *dirs[] = {lower, upper, work, target};
    for (size_t i = 0; i < 4; i++)
        if (mkdir(dirs[i], 0700) < 0)
            return error_errno(err, errno, "mkdir %s", dirs[i]);
    /* Attached, as the monitor attaches a container's layers (rootfs.c): older kernels (6.1) take no
     * detached layer. */
    if (sys_move_mount(tree, "", AT_FDCWD, lower, MOVE_MOUNT_F_EMPTY_PATH) < 0)
        return error_errno(err, errno, "attach the ID-mapped %s on %s", dir, lower);
    snprintf(data, sizeof(data), "lowerdir=%s,upperdir=%s,workdir=%s", lower, upper, work);
    if (mount("overlay", target, "overlay", 0, data) < 0) {
        *refused = true;
        return error_errno(err, errno, "mount an overlay over an ID-mapped lower layer (Linux 5.19)");
    }
    return 0;
}

int probe_idmap_overlay_main(int argc, char **argv)
{
    if (argc != 3 || argv[2][0] != '/') {
        fprintf(stderr, "usage: crio-fast-monitor --probe-idmap-overlay /ABSOLUTE/DIR\n");
        return 2;
    }
    struct error err = {0};
    bool refused;
    if (probe(argv[2], &refused, &err) == 0) {
        printf("ok: an overlay takes an ID-mapped lower layer on %s\n", argv[2]);
        return 0;
    }
    printf("%s: %s\n", refused ? "refused" : "error", err.message);
    return refused ? 1 : 2;
}
