/*
 * AppArmor: confine a command from its execve on.
 *
 * The daemon decides the profile (crio_fast/container/apparmor.py) and the
 * plan carries its name; here it is only applied, the way libapparmor's
 * aa_change_onexec and runc do it: "exec <profile>" written to this thread's
 * /proc/thread-self/attr/apparmor/exec (Linux 5.1, where AppArmor got its
 * own attr directory), or /proc/thread-self/attr/exec on older kernels. The
 * kernel checks that the profile is loaded and that the transition is
 * allowed, and applies it at the next execve of this thread.
 *
 * Callers write it after pivot_root, through the container's own /proc, and
 * before the credential change and the seccomp filter (either could stand in
 * the way of the write; the profile changes nothing until the execve). A
 * volume mounted over /proc, or over a path in it, could send the write
 * elsewhere: the file is checked to be on a procfs before anything is
 * written (runc's CVE-2019-16884).
 */
#include <errno.h>
#include <fcntl.h>
#include <linux/magic.h>
#include <stdio.h>
#include <string.h>
#include <sys/statfs.h>
#include <unistd.h>

#include "monitor.h"

static const char *const exec_attr_paths[] = {
    "/proc/thread-self/attr/apparmor/exec", /* Linux 5.1 and later */
    "/proc/thread-self/attr/exec",          /* before: the major LSM's attr, AppArmor's on such nodes */
};

int apparmor_change_onexec(const struct launch_plan *plan, struct error *err)
{
    const char *profile = plan->apparmor_profile;
    if (!profile)
        return 0;
    const char *path = NULL;
    int fd = -1;
    for (size_t i = 0; i < sizeof(exec_attr_paths) / sizeof(exec_attr_paths[0]); i++) {
        path = exec_attr_paths[i];
        fd = open(path, O_WRONLY | O_CLOEXEC | O_NOFOLLOW);
        if (fd >= 0 || errno != ENOENT)
            break;
    }
    if (fd < 0 && errno == ENOENT)
        return error_plain(err, ENOENT, "apparmor profile %s: open %s: %s (no procfs on the container's /proc?)",
                           profile, path, strerror(ENOENT));
    if (fd < 0)
        return error_errno(err, errno, "apparmor profile %s: open %s", profile, path);
    struct statfs fs;
    if (fstatfs(fd, &fs) < 0) {
        int saved = errno;
        close(fd);
        return error_errno(err, saved, "apparmor profile %s: fstatfs %s", profile, path);
    }
    if (fs.f_type != PROC_SUPER_MAGIC) {
        close(fd);
        return error_plain(err, EPERM, "apparmor profile %s: %s is not on a procfs (filesystem type %#lx): "
                                       "something is mounted over the container's /proc",
                           profile, path, (unsigned long)fs.f_type);
    }
    char command[4096];
    int length = snprintf(command, sizeof(command), "exec %s", profile);
    if (length < 0 || (size_t)length >= sizeof(command)) {
        close(fd);
        return error_plain(err, ENAMETOOLONG, "apparmor profile %.64s...: name too long", profile);
    }
    ssize_t written;
    do {
        written = write(fd, command, (size_t)length);
    } while (written < 0 && errno == EINTR);
    if (written < 0) {
        int saved = errno;
        close(fd);
        /* ENOENT: the kernel knows no profile of that name (unloaded since the daemon checked). */
        if (saved == ENOENT)
            return error_plain(err, ENOENT, "apparmor profile %s: write \"%s\" to %s: %s (the profile is not loaded)",
                               profile, command, path, strerror(ENOENT));
        return error_errno(err, saved, "apparmor profile %s: write \"%s\" to %s", profile, command, path);
    }
    if (written != length) {
        close(fd);
        return error_plain(err, EIO, "apparmor profile %s: write to %s took %zd of %d bytes", profile, path,
                           written, length);
    }
    if (close(fd) < 0)
        return error_errno(err, errno, "apparmor profile %s: close %s", profile, path);
    return 0;
}
