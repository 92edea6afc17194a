/* A container's OOM kills, seen as they happen.
 *
 * The oom_kill counter (memory.events on cgroup v2, memory.oom_control on v1)
 * is read once as a baseline and again when the container exits. A cgroup its
 * manager removes as soon as it is empty (systemd stops a scope whose last
 * process is gone, and removes its cgroup) may be gone by then, so on v2 the
 * file is also watched: a change raises inotify's IN_MODIFY, and the counter
 * read then is kept for the exit. v1 files raise no events; their cgroups stay
 * until the daemon removes them.
 */

#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/inotify.h>
#include <unistd.h>

#include "server.h"

static int open_inotify(struct monitor *monitor, struct error *err)
{
    if (monitor->oom_watch.fd >= 0)
        return 0;
    int fd = inotify_init1(IN_NONBLOCK | IN_CLOEXEC);
    if (fd < 0)
        return error_errno(err, errno, "inotify_init1");
    monitor->oom_watch = (struct watch){WATCH_OOM, fd, NULL, LOG_STDOUT};
    if (watch_add(monitor, &monitor->oom_watch, EPOLLIN) < 0) {
        int saved = errno;
        close(fd);
        monitor->oom_watch.fd = -1;
        return error_errno(err, saved, "epoll_ctl (inotify)");
    }
    return 0;
}

int oom_watch_start(struct monitor *monitor, struct container *container, struct error *err)
{
    if (read_oom_kill_counter(container->oom_counter_path, &container->oom_baseline, err) < 0)
        return -1;
    container->has_oom_baseline = true;
    container->oom_seen = container->oom_baseline;
    /* Without a watch (inotify's per-user limits reached) the exit's read decides alone. */
    struct error watch_err = {0};
    if (open_inotify(monitor, &watch_err) < 0) {
        fprintf(stderr, "container %s: OOM kills read at exit only: %s\n", container->id, watch_err.message);
        return 0;
    }
    int wd = inotify_add_watch(monitor->oom_watch.fd, container->oom_counter_path, IN_MODIFY);
    if (wd < 0)
        fprintf(stderr, "container %s: OOM kills read at exit only: inotify_add_watch %s: %s\n", container->id,
                container->oom_counter_path, strerror(errno));
    else
        container->oom_wd = wd;
    return 0;
}

static struct container *container_of_wd(struct monitor *monitor, int wd)
{
    for (struct container *c = monitor->containers; c; c = c->next)
        if (c->oom_wd == wd)
            return c;
    return NULL;
}

void oom_watch_on_event(struct monitor *monitor)
{
    char buffer[4096] __attribute__((aligned(__alignof__(struct inotify_event))));
    for (;;) {
        ssize_t got = read(monitor->oom_watch.fd, buffer, sizeof(buffer));
        if (got < 0) {
            if (errno != EAGAIN && errno != EINTR)
                fprintf(stderr, "read inotify: %s\n", strerror(errno));
            if (errno != EINTR)
                return;
            continue;
        }
        for (char *at = buffer; at < buffer + got;) {
            const struct inotify_event *event = (const struct inotify_event *)at;
            at += sizeof(*event) + event->len;
            struct container *c = container_of_wd(monitor, event->wd);
            if (!c)
                continue;
            if (event->mask & IN_IGNORED) { /* the cgroup is gone: so is the watch */
                c->oom_wd = 0;
                continue;
            }
            uint64_t count;
            struct error err = {0};
            if (read_oom_kill_counter(c->oom_counter_path, &count, &err) == 0 && count > c->oom_seen)
                c->oom_seen = count;
        }
    }
}

bool oom_watch_finish(struct monitor *monitor, struct container *container)
{
    uint64_t count;
    struct error err = {0};
    if (read_oom_kill_counter(container->oom_counter_path, &count, &err) == 0) {
        if (count > container->oom_seen)
            container->oom_seen = count;
    } else if (container->oom_wd == 0 || (err.code != ENOENT && err.code != ENODEV)) {
        /* Gone without a watch to have seen it, or unreadable for another reason. */
        fprintf(stderr, "container %s: %s\n", container->id, err.message);
    }
    if (container->oom_wd > 0) {
        /* EINVAL: the kernel dropped the watch with the cgroup, and IN_IGNORED is still queued. */
        if (inotify_rm_watch(monitor->oom_watch.fd, container->oom_wd) < 0 && errno != EINVAL)
            fprintf(stderr, "container %s: inotify_rm_watch: %s\n", container->id, strerror(errno));
        container->oom_wd = 0;
    }
    return container->oom_seen > container->oom_baseline;
}
