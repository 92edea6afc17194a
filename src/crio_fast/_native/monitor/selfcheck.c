/*
 * `crio-fast-monitor --check`: the kernel features the monitor depends on
 * are usable here. Each probe calls the syscall with arguments it must
 * reject; only ENOSYS (or EPERM from a sandbox filter) means "missing".
 * Prints "ok" or one line per missing feature.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/prctl.h>
#include <unistd.h>

#include "monitor.h"

static int probe(const char *feature, int rc, int *failures)
{
    if (rc < 0 && (errno == ENOSYS || errno == EPERM)) {
        /* ENOSYS: the kernel predates the call; EPERM: something (a seccomp
         * filter, a missing capability) refuses it here. */
        printf("missing: %s: %s (%s)\n", feature,
               errno == ENOSYS ? "the kernel is too old for it" : "refused here (a seccomp filter? not root?)",
               strerror(errno));
        (*failures)++;
    }
    return rc;
}

int monitor_self_check(void)
{
    int failures = 0;
    /* The monitor reaps its containers itself, also orphans they leave. */
    if (prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) < 0) {
        printf("missing: prctl(PR_SET_CHILD_SUBREAPER): %s\n", strerror(errno));
        failures++;
    }
    /* openat2 RESOLVE_IN_ROOT keeps mount destinations inside the rootfs. */
    int fd = probe("openat2 (Linux 5.6)", sys_openat2(-1, "", O_PATH, 0, 0), &failures);
    if (fd >= 0)
        close(fd);
    /* Bind mounts and read-only remounts use the new mount API. */
    probe("open_tree (Linux 5.2)", sys_open_tree(-1, "", 0), &failures);
    probe("move_mount (Linux 5.2)", sys_move_mount(-1, "", -1, "", 0), &failures);
    probe("mount_setattr (Linux 5.12)", sys_mount_setattr(-1, "", 0, &(struct mount_attr_v0){0}), &failures);
    /* Not fsopen: overlays go through mount(2) where fsopen or lowerdir+ is
     * missing (overlay_mount_decide); `--probe-fs-param` tells which. */
    probe("pidfd_open (Linux 5.3)", sys_pidfd_open(0, 0), &failures);
    if (failures)
        return 1;
    printf("ok\n");
    return 0;
}
