/*
 * Network namespaces made ahead of the pods that will use them
 * (`crio-fast-monitor make-netns PATH...`, for the daemon's pool,
 * network/netns_pool.py), and `lo` set up in a new one.
 *
 * For each PATH, in order: a new network namespace (unshare), `lo` up, an
 * empty file created at PATH and the namespace bind-mounted on it. A pod's
 * monitor later joins it (`pod --net PATH`), and the daemon can start the
 * pod's CNI ADD in it before the monitor is up. On a failure, what was made for that PATH is undone, the reason
 * (with errno) goes to stderr and the exit status is 1; namespaces made for
 * earlier PATHs stay (the daemon destroys whatever it asked for).
 */
#include <errno.h>
#include <fcntl.h>
#include <net/if.h>
#include <sched.h>
#include <stdio.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/socket.h>
#include <unistd.h>

#include "monitor.h"

int bring_loopback_up(struct error *err)
{
    int fd = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return error_errno(err, errno, "socket for setting lo up");
    struct ifreq request;
    memset(&request, 0, sizeof(request));
    memcpy(request.ifr_name, "lo", sizeof("lo"));
    int rc = ioctl(fd, SIOCGIFFLAGS, &request);
    if (rc == 0 && !(request.ifr_flags & IFF_UP)) {
        request.ifr_flags |= IFF_UP;
        rc = ioctl(fd, SIOCSIFFLAGS, &request);
    }
    int saved = errno;
    close(fd);
    if (rc < 0)
        return error_errno(err, saved, "set lo up");
    return 0;
}

static int make_one(const char *path, struct error *err)
{
    if (unshare(CLONE_NEWNET) < 0)
        return error_errno(err, errno, "unshare(CLONE_NEWNET)");
    if (bring_loopback_up(err) < 0)
        return -1;
    int fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, 0444);
    if (fd < 0)
        return error_errno(err, errno, "create %s", path);
    close(fd);
    if (mount("/proc/self/ns/net", path, NULL, MS_BIND, NULL) < 0) {
        int saved = errno;
        if (unlink(path) < 0)
            fprintf(stderr, "unlink %s: %s\n", path, strerror(errno));
        return error_errno(err, saved, "bind /proc/self/ns/net on %s", path);
    }
    return 0;
}

int make_netns_main(int argc, char **argv)
{
    if (argc < 3) {
        fprintf(stderr, "usage: crio-fast-monitor make-netns /ABSOLUTE/PATH...\n");
        return 2;
    }
    for (int i = 2; i < argc; i++) {
        if (argv[i][0] != '/') {
            fprintf(stderr, "make-netns: %s is not an absolute path\n", argv[i]);
            return 2;
        }
    }
    for (int i = 2; i < argc; i++) {
        struct error err = {0};
        if (make_one(argv[i], &err) < 0) {
            fprintf(stderr, "make-netns %s: %s (errno %d)\n", argv[i], err.message, err.code);
            return 1;
        }
    }
    return 0;
}
