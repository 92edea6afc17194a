/*
 * `crio-fast-monitor pod`: start-up, namespace anchoring and teardown.
 *
 * The daemon spawns this with a pipe on --ready-fd. The spawned process
 * starts a new session and does all of the set-up below; only then does it
 * fork the monitor, write <pod-dir>/monitor.pid with the monitor's pid, and
 * report "ok <pid>\n" on the ready fd and exit (the daemon reaps it). The
 * monitor's parent is then gone: the daemon is never its parent and it
 * outlives the daemon. The set-up:
 *
 *   1. (the monitor, after the fork) becomes a child subreaper,
 *   2. bind-mounts the pod dir onto itself as a private mount, so that the
 *      mounts below (nsfs, shm) never propagate to other mount namespaces
 *      (a propagated nsfs copy would pin the namespace after the pod is gone),
 *   3. unshares the requested net/ipc/uts namespaces, sets the hostname and,
 *      in a new network namespace, sets `lo` up (with --net PATH it joins
 *      that network namespace instead, made ahead with `lo` up by
 *      `make-netns`, netns.c); with --userns-uid-map and
 *      --userns-gid-map, the pod's user namespace is made first, with those
 *      mappings, and owns the new net/ipc/uts namespaces, which the monitor
 *      joins without entering the user namespace (userns.c),
 *   4. bind-mounts /proc/self/ns/{net,ipc,uts} onto <pod-dir>/ns/{net,ipc,uts}
 *      (and the user namespace onto <pod-dir>/ns/user),
 *   5. mounts a tmpfs for the pod's /dev/shm on <pod-dir>/shm,
 *   6. joins the cgroups it was given (the fork inherits them); with
 *      --cgroup-gate-fd it first waits for one byte on that fd, so that the
 *      daemon can make the cgroups while the namespaces above are being made
 *      (EOF instead means the daemon gave up: undo and report an error),
 *   7. listens on <pod-dir>/monitor.sock,
 *   8. with --pid new (after the fork, in the monitor, which reports back to
 *      the spawned process over a pipe): clones the pod's pid-namespace init
 *      (pid 1 of a new pid namespace, a tiny forked child that only reaps)
 *      and bind-mounts its /proc/<pid>/ns/pid onto <pod-dir>/ns/pid,
 *   9. (the monitor) decides how its containers' overlays are mounted
 *      (overlay_mount_decide: fsconfig lowerdir+ where the kernel has it).
 * On any failure it undoes every step and writes "error <errno> <message>\n"
 * instead; no monitor process is left.
 */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <poll.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include "server.h"

#define SHUTDOWN_KILL_TIMEOUT_MS 10000
#define MAX_CGROUPS 16

struct pod_options {
    const char *pod_id;
    const char *pod_dir;
    const char *exits_dir;
    const char *hostname;
    const char *cgroup_procs[MAX_CGROUPS];
    size_t cgroup_count;
    uint64_t shm_size;
    int ready_fd;
    int cgroup_gate_fd; /* -1: the cgroups exist already */
    int new_namespaces; /* CLONE_NEWNET | CLONE_NEWIPC | CLONE_NEWUTS subset */
    bool new_pid_namespace;
    bool overlay_legacy; /* --overlay-mount legacy: mount(2) even where lowerdir+ works */
    const char *userns_uid_map; /* "CONTAINER HOST LENGTH": the pod gets a user namespace of its own */
    const char *userns_gid_map;
    const char *net_join_path; /* --net PATH: join this network namespace (made with lo up) instead of a new one */
};

/* The name the pod's pid-namespace init shows in /proc/<pid>/cmdline (and,
 * cut to 15 bytes, in comm): what `ps` in a container of the pod sees as 1. */
#define POD_INIT_NAME "crio-fast-pod-init"

static const struct {
    int flag;
    const char *name;
} pod_namespaces[] = {{CLONE_NEWNET, "net"}, {CLONE_NEWIPC, "ipc"}, {CLONE_NEWUTS, "uts"}};
#define POD_NAMESPACE_COUNT 3

/* What the monitor made, so that a failure or a shutdown undoes exactly that. */
struct pod_anchor {
    char *ns_dir;
    char *ns_files[POD_NAMESPACE_COUNT];
    char *shm_dir;
    char *socket_path;
    char *pid_path;
    char *pid_ns_file; /* --pid new: the pinned pid namespace of the pod init */
    char *user_ns_file; /* --userns-*-map: the pinned user namespace of the pod */
    int userns_fd;      /* until it is pinned */
    bool pod_dir_bound;
    bool ns_dir_created;
    bool user_ns_file_created;
    bool user_ns_bound;
    bool ns_file_created[POD_NAMESPACE_COUNT];
    bool ns_bound[POD_NAMESPACE_COUNT];
    bool shm_dir_created;
    bool shm_mounted;
    bool socket_bound;
    bool pid_written;
    /* --pid new: the init of the pod's pid namespace and its ns file. */
    bool pid_ns_file_created;
    bool pid_ns_bound;
    pid_t init_pid;
    int init_pidfd;
};

/* The monitor's argv, which the pod init overwrites with its own name. */
static char **process_argv;
static int process_argc;

static void pod_usage(FILE *out)
{
    fprintf(out, "usage: crio-fast-monitor pod --pod-id ID --pod-dir DIR --exits-dir DIR --ready-fd FD\n"
                 "           [--net new|host] [--ipc new|host] [--uts new|host] [--pid new|host]\n"
                 "           [--hostname NAME] [--cgroup-procs PATH]... [--cgroup-gate-fd FD]\n"
                 "           [--shm-size BYTES] [--overlay-mount auto|legacy]\n"
                 "           [--userns-uid-map 'CONTAINER HOST LENGTH' --userns-gid-map 'CONTAINER HOST LENGTH']\n");
}

static int parse_options(int argc, char **argv, struct pod_options *options, struct error *err)
{
    memset(options, 0, sizeof(*options));
    options->ready_fd = -1;
    options->cgroup_gate_fd = -1;
    for (int i = 2; i < argc; i++) {
        const char *name = argv[i];
        if (i + 1 >= argc)
            return error_plain(err, EINVAL, "option %s needs a value", name);
        const char *value = argv[++i];
        uint64_t number;
        if (strcmp(name, "--pod-id") == 0) {
            options->pod_id = value;
        } else if (strcmp(name, "--pod-dir") == 0) {
            options->pod_dir = value;
        } else if (strcmp(name, "--exits-dir") == 0) {
            options->exits_dir = value;
        } else if (strcmp(name, "--hostname") == 0) {
            options->hostname = value;
        } else if (strcmp(name, "--cgroup-procs") == 0) {
            if (options->cgroup_count >= MAX_CGROUPS)
                return error_plain(err, EINVAL, "more than %d --cgroup-procs", MAX_CGROUPS);
            options->cgroup_procs[options->cgroup_count++] = value;
        } else if (strcmp(name, "--shm-size") == 0) {
            if (parse_u64(value, &number) < 0)
                return error_plain(err, EINVAL, "--shm-size %s is not a byte count", value);
            options->shm_size = number;
        } else if (strcmp(name, "--ready-fd") == 0) {
            if (parse_u64(value, &number) < 0 || number < 3 || number > INT_MAX)
                return error_plain(err, EINVAL, "--ready-fd %s is not a descriptor >= 3", value);
            options->ready_fd = (int)number;
        } else if (strcmp(name, "--cgroup-gate-fd") == 0) {
            if (parse_u64(value, &number) < 0 || number < 3 || number > INT_MAX)
                return error_plain(err, EINVAL, "--cgroup-gate-fd %s is not a descriptor >= 3", value);
            options->cgroup_gate_fd = (int)number;
        } else if (strcmp(name, "--userns-uid-map") == 0 || strcmp(name, "--userns-gid-map") == 0) {
            unsigned int container_id, host_id, length;
            char extra;
            if (sscanf(value, "%u %u %u %c", &container_id, &host_id, &length, &extra) != 3 || length == 0)
                return error_plain(err, EINVAL, "%s %s: expected 'CONTAINER HOST LENGTH'", name, value);
            if (name[9] == 'u')
                options->userns_uid_map = value;
            else
                options->userns_gid_map = value;
        } else if (strcmp(name, "--overlay-mount") == 0) {
            if (strcmp(value, "auto") != 0 && strcmp(value, "legacy") != 0)
                return error_plain(err, EINVAL, "--overlay-mount %s: expected auto or legacy", value);
            options->overlay_legacy = strcmp(value, "legacy") == 0;
        } else if (strcmp(name, "--pid") == 0) {
            if (strcmp(value, "new") != 0 && strcmp(value, "host") != 0)
                return error_plain(err, EINVAL, "--pid %s: expected new or host", value);
            options->new_pid_namespace = strcmp(value, "new") == 0;
        } else if (strcmp(name, "--net") == 0 || strcmp(name, "--ipc") == 0 || strcmp(name, "--uts") == 0) {
            int flag = name[2] == 'n' ? CLONE_NEWNET : name[2] == 'i' ? CLONE_NEWIPC : CLONE_NEWUTS;
            if (flag == CLONE_NEWNET)
                options->net_join_path = NULL;
            if (strcmp(value, "new") == 0) {
                options->new_namespaces |= flag;
            } else if (strcmp(value, "host") == 0) {
                options->new_namespaces &= ~flag;
            } else if (flag == CLONE_NEWNET && value[0] == '/') {
                /* The pod's own network namespace, made ahead: anchored like a new one. */
                options->new_namespaces |= flag;
                options->net_join_path = value;
            } else {
                return error_plain(err, EINVAL, "%s %s: expected new or host%s", name, value,
                                   flag == CLONE_NEWNET ? " or an absolute path" : "");
            }
        } else {
            return error_plain(err, EINVAL, "unknown option %s", name);
        }
    }
    if (!options->pod_id || !container_id_valid(options->pod_id))
        return error_plain(err, EINVAL, "--pod-id is missing or not a valid id");
    if (!options->pod_dir || options->pod_dir[0] != '/')
        return error_plain(err, EINVAL, "--pod-dir must be an absolute path");
    if (!options->exits_dir || options->exits_dir[0] != '/')
        return error_plain(err, EINVAL, "--exits-dir must be an absolute path");
    if (options->ready_fd < 0)
        return error_plain(err, EINVAL, "--ready-fd is required");
    if (options->cgroup_gate_fd >= 0 && options->cgroup_gate_fd == options->ready_fd)
        return error_plain(err, EINVAL, "--cgroup-gate-fd and --ready-fd must differ");
    if (options->hostname && !(options->new_namespaces & CLONE_NEWUTS))
        return error_plain(err, EINVAL, "--hostname needs --uts new");
    if (!options->userns_uid_map != !options->userns_gid_map)
        return error_plain(err, EINVAL, "--userns-uid-map and --userns-gid-map go together");
    /* A network namespace belongs to the user namespace that made it: the pod's must make its own. */
    if (options->userns_uid_map && options->net_join_path)
        return error_plain(err, EINVAL, "--net %s: a pod with its own user namespace makes its network namespace",
                           options->net_join_path);
    return 0;
}

static int create_file(const char *path, mode_t mode, struct error *err)
{
    int fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, mode);
    if (fd < 0)
        return error_errno(err, errno, "create %s", path);
    close(fd);
    return 0;
}

/* ------------------------------------------------------------- pod init */

/* Overwrite the inherited argv area with POD_INIT_NAME, so that `ps` and
 * /proc/1/cmdline in the pod show the init for what it is rather than a copy
 * of the monitor's command line. Best effort: a name is cosmetic. */
static void name_pod_init(void)
{
    prctl(PR_SET_NAME, POD_INIT_NAME, 0, 0, 0); /* comm: cut to 15 bytes by the kernel */
    if (!process_argv || process_argc < 1)
        return;
    char *start = process_argv[0];
    char *end = start + strlen(start) + 1;
    /* The kernel lays the arguments out back to back; use only that run. */
    for (int i = 1; i < process_argc && process_argv[i] == end; i++)
        end += strlen(process_argv[i]) + 1;
    if ((size_t)(end - start) < sizeof(POD_INIT_NAME))
        return;
    memset(start, 0, (size_t)(end - start));
    memcpy(start, POD_INIT_NAME, sizeof(POD_INIT_NAME));
    /* A non-NUL last byte is the kernel's sign of a rewritten title
     * (setproctitle): /proc/<pid>/cmdline then stops at the first NUL, the
     * name alone, instead of showing the whole area with its tail of NULs.
     * (PR_SET_MM_ARG_END would need CAP_SYS_RESOURCE.) */
    if ((size_t)(end - start) > sizeof(POD_INIT_NAME))
        end[-1] = ' ';
}

/* Pid 1 of the pod's pid namespace: anchors the namespace and reaps. It is a
 * forked (not exec'd) child of the static monitor, so it costs only the pages
 * it dirties. It never returns. */
/* `watch_monitor`: the init is not the monitor's child (it is the child of
 * a helper that exits, then the monitor's as its subreaper), so a parent
 * death signal would come with the helper's exit: it watches the monitor's
 * pidfd instead of pausing, and exits when the monitor has. */
static void pod_init_main(int monitor_pidfd, bool watch_monitor) __attribute__((noreturn));
static void pod_init_main(int monitor_pidfd, bool watch_monitor)
{
    /* It exists for the monitor only: die with it. The monitor may already
     * have died before the prctl; its pidfd is readable once it has exited
     * (getppid() cannot tell: the parent is outside this pid namespace). */
    if (!watch_monitor && prctl(PR_SET_PDEATHSIG, SIGKILL, 0, 0, 0) < 0)
        _exit(1);
    if (watch_monitor && monitor_pidfd < 0)
        _exit(1);
    struct pollfd exited = {.fd = monitor_pidfd, .events = POLLIN};
    if (monitor_pidfd >= 0 && poll(&exited, 1, 0) != 0)
        _exit(1);
    name_pod_init();
    /* Hold nothing of the monitor's: sockets, pipes, the epoll set (but the
     * pidfd it watches). Closing the write end of the monitor's start pipe
     * tells it the init is named. */
    int kept = watch_monitor ? monitor_pidfd : -1;
    if ((kept > 0 && close_range(0, (unsigned)kept - 1, 0) < 0) || close_range((unsigned)kept + 1, ~0U, 0) < 0)
        for (int fd = 0; fd < 1024; fd++)
            if (fd != kept)
                close(fd);
    /* SIGCHLD ignored makes the kernel reap every child of the init at once,
     * including orphans re-parented to it and already zombies then: nothing
     * in the pod's namespace stays a zombie. Every other signal is ignored
     * too: the pod's processes must not end the namespace (the kernel already
     * drops their signals to an init without handlers) nor may a stray
     * signal from the host; the monitor ends it with SIGKILL. Ignored
     * signals are discarded only when not blocked: unblock them all. */
    struct sigaction ignore = {.sa_handler = SIG_IGN};
    for (int sig = 1; sig < _NSIG; sig++)
        if (sig != SIGKILL && sig != SIGSTOP)
            sigaction(sig, &ignore, NULL); /* EINVAL for libc-reserved numbers: nothing to do */
    sigset_t none;
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, NULL);
    for (;;) {
        if (!watch_monitor) {
            pause();
        } else if (poll(&exited, 1, -1) > 0) {
            _exit(0); /* the monitor is gone: the namespace goes with its init */
        }
    }
}

/* With a pod user namespace the pod's pid namespace must be that user
 * namespace's too: an OCI runtime's init, already in the user namespace,
 * joins the pid namespace next, which needs CAP_SYS_ADMIN over its owner.
 * A short-lived helper joins the user namespace and clones the init into a
 * new pid namespace (which the user namespace then owns), reports its pid
 * and exits: the init is re-parented to the monitor, a child subreaper
 * (CLONE_PARENT cannot cross pid namespaces). The init's pid, or -1. */
static pid_t clone_pod_init_in_userns(const char *userns_file, int monitor_pidfd, struct error *err)
{
    int userns_fd = open(userns_file, O_RDONLY | O_CLOEXEC);
    if (userns_fd < 0)
        return error_errno(err, errno, "open the pod's user namespace %s", userns_file);
    int report[2];
    if (pipe2(report, O_CLOEXEC) < 0) {
        int saved = errno;
        close(userns_fd);
        return error_errno(err, saved, "pipe for the pod init's helper");
    }
    pid_t helper = fork();
    if (helper == 0) {
        close(report[0]);
        int said[2] = {0, -1}; /* errno, the init's pid */
        if (setns(userns_fd, CLONE_NEWUSER) < 0) {
            said[0] = errno;
        } else {
            int pidfd = -1;
            said[1] = clone_process(CLONE_NEWPID, &pidfd);
            if (said[1] == 0) {
                close(report[1]);
                pod_init_main(monitor_pidfd, true);
            }
            if (said[1] < 0)
                said[0] = errno;
        }
        _exit(write_all(report[1], said, sizeof(said)) == 0 ? 0 : 1);
    }
    int saved = errno;
    close(userns_fd);
    close(report[1]);
    if (helper < 0) {
        close(report[0]);
        return error_errno(err, saved, "fork the pod init's helper");
    }
    int said[2] = {EIO, -1};
    size_t got = 0;
    while (got < sizeof(said)) {
        ssize_t n = read(report[0], (char *)said + got, sizeof(said) - got);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            break;
        got += (size_t)n;
    }
    close(report[0]);
    /* Once the helper is reaped, its child, the init, is the monitor's. */
    while (waitpid(helper, NULL, 0) < 0 && errno == EINTR)
        ;
    if (got != sizeof(said))
        return error_plain(err, EIO, "the pod init's helper exited without a report");
    if (said[0] != 0)
        return error_errno(err, said[0], "clone the pod's pid namespace init in its user namespace");
    return said[1];
}

/* In the monitor: clone the pod init as pid 1 of a new pid namespace (the
 * monitor's own pid_for_children is untouched) and pin that namespace on
 * <pod-dir>/ns/pid for the containers that join it and for recovery. */
static int start_pod_init(struct pod_anchor *anchor, struct error *err)
{
    /* EOF on `started` once the init has named itself (or died): then
     * /proc/<pid>/cmdline already says what it is when the pod is reported
     * ready. */
    int started[2];
    if (pipe2(started, O_CLOEXEC) < 0)
        return error_errno(err, errno, "pipe for the pod init");
    int monitor_pidfd = sys_pidfd_open(getpid(), 0); /* -1 on old kernels: no early-death check */
    int init_pidfd = -1;
    pid_t pid;
    int saved = 0;
    if (anchor->user_ns_bound) {
        pid = clone_pod_init_in_userns(anchor->user_ns_file, monitor_pidfd, err);
        if (pid > 0)
            init_pidfd = sys_pidfd_open(pid, 0);
    } else {
        pid = clone_process(CLONE_NEWPID, &init_pidfd);
        if (pid == 0)
            pod_init_main(monitor_pidfd, false);
        saved = errno;
    }
    if (monitor_pidfd >= 0)
        close(monitor_pidfd);
    close(started[1]);
    if (pid >= 0) {
        char byte;
        while (read(started[0], &byte, 1) < 0 && errno == EINTR)
            ;
    }
    close(started[0]);
    if (pid < 0 && anchor->user_ns_bound)
        return -1; /* err says why */
    if (pid < 0)
        return error_errno(err, saved, "clone the pod's pid namespace init (CLONE_NEWPID)");
    anchor->init_pid = pid;
    anchor->init_pidfd = init_pidfd;
    if (create_file(anchor->pid_ns_file, 0444, err) < 0)
        return -1;
    anchor->pid_ns_file_created = true;
    char source[64];
    snprintf(source, sizeof(source), "/proc/%d/ns/pid", (int)pid);
    if (mount(source, anchor->pid_ns_file, NULL, MS_BIND, NULL) < 0)
        return error_errno(err, errno, "bind %s on %s", source, anchor->pid_ns_file);
    anchor->pid_ns_bound = true;
    return 0;
}

/* Unpin the pod's pid namespace and end its init (which kills whatever is
 * left in the namespace). The init may have been reaped already by the
 * event loop or the shutdown's kill of all children: the pidfd tells. */
static void stop_pod_init(struct pod_anchor *anchor)
{
    if (anchor->pid_ns_bound && umount2(anchor->pid_ns_file, MNT_DETACH) < 0)
        fprintf(stderr, "unmount %s: %s\n", anchor->pid_ns_file, strerror(errno));
    if (anchor->pid_ns_file_created && unlink(anchor->pid_ns_file) < 0)
        fprintf(stderr, "unlink %s: %s\n", anchor->pid_ns_file, strerror(errno));
    anchor->pid_ns_bound = anchor->pid_ns_file_created = false;
    if (anchor->init_pid <= 0)
        return;
    int rc = anchor->init_pidfd >= 0 ? sys_pidfd_send_signal(anchor->init_pidfd, SIGKILL)
                                     : kill(anchor->init_pid, SIGKILL);
    /* Signalled (a zombie counts) means not reaped yet, and this
     * single-threaded monitor is its only reaper: waiting is safe. */
    if (rc == 0 && waitpid(anchor->init_pid, NULL, 0) < 0)
        fprintf(stderr, "wait for the pod init %d: %s\n", (int)anchor->init_pid, strerror(errno));
    else if (rc < 0 && errno != ESRCH)
        fprintf(stderr, "kill the pod init %d: %s\n", (int)anchor->init_pid, strerror(errno));
    if (anchor->init_pidfd >= 0)
        close(anchor->init_pidfd);
    anchor->init_pid = 0;
    anchor->init_pidfd = -1;
}

/* --------------------------------------------------------------- anchor */

static void teardown(struct pod_anchor *anchor, const struct pod_options *options)
{
    /* Reverse order of setup; each step only if this monitor did it. */
    if (anchor->pid_written && unlink(anchor->pid_path) < 0)
        fprintf(stderr, "unlink %s: %s\n", anchor->pid_path, strerror(errno));
    if (anchor->socket_bound && unlink(anchor->socket_path) < 0)
        fprintf(stderr, "unlink %s: %s\n", anchor->socket_path, strerror(errno));
    if (anchor->shm_mounted && umount2(anchor->shm_dir, MNT_DETACH) < 0)
        fprintf(stderr, "unmount %s: %s\n", anchor->shm_dir, strerror(errno));
    if (anchor->shm_dir_created && rmdir(anchor->shm_dir) < 0)
        fprintf(stderr, "rmdir %s: %s\n", anchor->shm_dir, strerror(errno));
    for (int i = POD_NAMESPACE_COUNT - 1; i >= 0; i--) {
        if (anchor->ns_bound[i] && umount2(anchor->ns_files[i], MNT_DETACH) < 0)
            fprintf(stderr, "unmount %s: %s\n", anchor->ns_files[i], strerror(errno));
        if (anchor->ns_file_created[i] && unlink(anchor->ns_files[i]) < 0)
            fprintf(stderr, "unlink %s: %s\n", anchor->ns_files[i], strerror(errno));
    }
    stop_pod_init(anchor);
    if (anchor->user_ns_bound && umount2(anchor->user_ns_file, MNT_DETACH) < 0)
        fprintf(stderr, "unmount %s: %s\n", anchor->user_ns_file, strerror(errno));
    if (anchor->user_ns_file_created && unlink(anchor->user_ns_file) < 0)
        fprintf(stderr, "unlink %s: %s\n", anchor->user_ns_file, strerror(errno));
    if (anchor->userns_fd >= 0)
        close(anchor->userns_fd);
    anchor->userns_fd = -1;
    if (anchor->ns_dir_created && rmdir(anchor->ns_dir) < 0)
        fprintf(stderr, "rmdir %s: %s\n", anchor->ns_dir, strerror(errno));
    if (anchor->pod_dir_bound && umount2(options->pod_dir, MNT_DETACH) < 0)
        fprintf(stderr, "unmount %s: %s\n", options->pod_dir, strerror(errno));
    memset(&anchor->pod_dir_bound, 0, sizeof(*anchor) - offsetof(struct pod_anchor, pod_dir_bound));
}

static int join_network_namespace(const char *path, struct error *err)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return error_errno(err, errno, "open the network namespace %s", path);
    int rc = setns(fd, CLONE_NEWNET);
    int saved = errno;
    close(fd);
    if (rc < 0)
        return error_errno(err, saved, "join the network namespace %s", path);
    return 0;
}

static int anchor_namespaces(struct pod_anchor *anchor, const struct pod_options *options, struct error *err)
{
    if (mkdir(anchor->ns_dir, 0755) == 0)
        anchor->ns_dir_created = true;
    else if (errno != EEXIST)
        return error_errno(err, errno, "mkdir %s", anchor->ns_dir);
    for (int i = 0; i < POD_NAMESPACE_COUNT; i++) {
        if (!(options->new_namespaces & pod_namespaces[i].flag))
            continue;
        if (create_file(anchor->ns_files[i], 0444, err) < 0)
            return -1;
        anchor->ns_file_created[i] = true;
        char source[64];
        snprintf(source, sizeof(source), "/proc/self/ns/%s", pod_namespaces[i].name);
        if (mount(source, anchor->ns_files[i], NULL, MS_BIND, NULL) < 0)
            return error_errno(err, errno, "bind %s on %s", source, anchor->ns_files[i]);
        anchor->ns_bound[i] = true;
    }
    if (anchor->userns_fd >= 0) {
        if (create_file(anchor->user_ns_file, 0444, err) < 0)
            return -1;
        anchor->user_ns_file_created = true;
        char source[64];
        snprintf(source, sizeof(source), "/proc/self/fd/%d", anchor->userns_fd);
        if (mount(source, anchor->user_ns_file, NULL, MS_BIND, NULL) < 0)
            return error_errno(err, errno, "bind the pod's user namespace on %s", anchor->user_ns_file);
        anchor->user_ns_bound = true;
        close(anchor->userns_fd); /* pinned now */
        anchor->userns_fd = -1;
    }
    return 0;
}

static int mount_shm(struct pod_anchor *anchor, const struct pod_options *options, struct error *err)
{
    if (mkdir(anchor->shm_dir, 01777) < 0)
        return error_errno(err, errno, "mkdir %s", anchor->shm_dir);
    anchor->shm_dir_created = true;
    char data[64];
    snprintf(data, sizeof(data), "mode=1777,size=%llu", (unsigned long long)options->shm_size);
    if (mount("shm", anchor->shm_dir, "tmpfs", MS_NOSUID | MS_NODEV | MS_NOEXEC, data) < 0)
        return error_errno(err, errno, "mount tmpfs (%s) on %s", data, anchor->shm_dir);
    anchor->shm_mounted = true;
    return 0;
}

/* Block until the daemon has made the cgroups: one byte means go, EOF that
 * it gave up (its own error is the one it reports). */
static int await_cgroup_gate(int gate_fd, struct error *err)
{
    char go;
    ssize_t got;
    do {
        got = read(gate_fd, &go, 1);
    } while (got < 0 && errno == EINTR);
    close(gate_fd);
    if (got < 0)
        return error_errno(err, errno, "read the cgroup gate");
    if (got == 0)
        return error_plain(err, ECANCELED, "the daemon cancelled the pod's start before its cgroups were made");
    return 0;
}

static int join_cgroups(const struct pod_options *options, struct error *err)
{
    char pid[24];
    snprintf(pid, sizeof(pid), "%d", (int)getpid());
    for (size_t i = 0; i < options->cgroup_count; i++)
        if (write_file(options->cgroup_procs[i], pid, err) < 0)
            return error_context(err, "join cgroup");
    return 0;
}

static int listen_control_socket(struct pod_anchor *anchor, int *listen_fd, struct error *err)
{
    struct sockaddr_un address = {.sun_family = AF_UNIX};
    if (strlen(anchor->socket_path) >= sizeof(address.sun_path))
        return error_plain(err, ENAMETOOLONG, "control socket path %s is longer than %zu bytes", anchor->socket_path,
                           sizeof(address.sun_path) - 1);
    strcpy(address.sun_path, anchor->socket_path);
    int fd = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return error_errno(err, errno, "socket");
    /* Born 0600: no window in which another user could connect. */
    mode_t previous = umask(0177);
    int rc = bind(fd, (struct sockaddr *)&address, sizeof(address));
    int saved = errno;
    umask(previous);
    if (rc < 0) {
        close(fd);
        return error_errno(err, saved, "bind %s", anchor->socket_path);
    }
    anchor->socket_bound = true;
    if (listen(fd, 64) < 0) {
        saved = errno;
        close(fd);
        return error_errno(err, saved, "listen on %s", anchor->socket_path);
    }
    *listen_fd = fd;
    return 0;
}

static int write_pid_file(struct pod_anchor *anchor, pid_t pid, struct error *err)
{
    char *temp = format_string("%s.tmp", anchor->pid_path);
    if (!temp)
        return error_errno(err, ENOMEM, "pid file");
    char text[24];
    int length = snprintf(text, sizeof(text), "%d\n", (int)pid);
    int fd = open(temp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW, 0644);
    int rc = -1;
    if (fd < 0) {
        error_errno(err, errno, "create %s", temp);
    } else {
        int write_rc = write_all(fd, text, (size_t)length);
        if (close(fd) < 0 && write_rc == 0)
            write_rc = -errno;
        if (write_rc < 0)
            error_errno(err, -write_rc, "write %s", temp);
        else if (rename(temp, anchor->pid_path) < 0)
            error_errno(err, errno, "rename %s to %s", temp, anchor->pid_path);
        else
            rc = 0;
        if (rc < 0)
            unlink(temp);
    }
    free(temp);
    if (rc == 0)
        anchor->pid_written = true;
    return rc;
}

static int anchor_paths(struct pod_anchor *anchor, const struct pod_options *options, struct error *err)
{
    anchor->ns_dir = format_string("%s/ns", options->pod_dir);
    anchor->shm_dir = format_string("%s/shm", options->pod_dir);
    anchor->socket_path = format_string("%s/monitor.sock", options->pod_dir);
    anchor->pid_path = format_string("%s/monitor.pid", options->pod_dir);
    anchor->pid_ns_file = format_string("%s/ns/pid", options->pod_dir);
    anchor->user_ns_file = format_string("%s/ns/user", options->pod_dir);
    if (!anchor->ns_dir || !anchor->shm_dir || !anchor->socket_path || !anchor->pid_path || !anchor->pid_ns_file ||
        !anchor->user_ns_file)
        return error_errno(err, ENOMEM, "paths");
    for (int i = 0; i < POD_NAMESPACE_COUNT; i++)
        if (!(anchor->ns_files[i] = format_string("%s/ns/%s", options->pod_dir, pod_namespaces[i].name)))
            return error_errno(err, ENOMEM, "paths");
    return 0;
}

static int setup_pod(struct pod_anchor *anchor, const struct pod_options *options, int *listen_fd,
                     struct error *err)
{
    if (anchor_paths(anchor, options, err) < 0)
        return -1;
    struct stat st;
    if (stat(options->pod_dir, &st) < 0)
        return error_errno(err, errno, "pod dir %s", options->pod_dir);
    if (stat(options->exits_dir, &st) < 0)
        return error_errno(err, errno, "exits dir %s", options->exits_dir);
    if (!S_ISDIR(st.st_mode))
        return error_errno(err, ENOTDIR, "exits dir %s", options->exits_dir);
    if (mount(options->pod_dir, options->pod_dir, NULL, MS_BIND, NULL) < 0)
        return error_errno(err, errno, "bind %s on itself", options->pod_dir);
    anchor->pod_dir_bound = true;
    if (mount(NULL, options->pod_dir, NULL, MS_PRIVATE, NULL) < 0)
        return error_errno(err, errno, "make %s a private mount", options->pod_dir);
    if (options->userns_uid_map) {
        if (pod_userns_create(options->userns_uid_map, options->userns_gid_map, options->new_namespaces,
                              &anchor->userns_fd, err) < 0)
            return -1;
    } else {
        int to_make = options->net_join_path ? options->new_namespaces & ~CLONE_NEWNET : options->new_namespaces;
        if (to_make && unshare(to_make) < 0)
            return error_errno(err, errno, "unshare(%#x)", to_make);
        if (options->net_join_path && join_network_namespace(options->net_join_path, err) < 0)
            return -1;
    }
    if (options->hostname && sethostname(options->hostname, strlen(options->hostname)) < 0)
        return error_errno(err, errno, "sethostname %s", options->hostname);
    /* A namespace made ahead has lo up already. */
    if ((options->new_namespaces & CLONE_NEWNET) && !options->net_join_path && bring_loopback_up(err) < 0)
        return -1;
    if (anchor_namespaces(anchor, options, err) < 0)
        return -1;
    if (options->shm_size > 0 && mount_shm(anchor, options, err) < 0)
        return -1;
    if (options->cgroup_gate_fd >= 0 && await_cgroup_gate(options->cgroup_gate_fd, err) < 0)
        return -1;
    if (join_cgroups(options, err) < 0)
        return -1;
    return listen_control_socket(anchor, listen_fd, err);
}

/* In the spawned process: wait for the forked monitor's word on the pod init
 * (a struct error, code 0 for success) over the set-up pipe. */
static int await_pod_init(struct pod_anchor *anchor, pid_t monitor_pid, int setup_fd, struct error *err)
{
    struct error reported;
    size_t got = 0;
    while (got < sizeof(reported)) {
        ssize_t n = read(setup_fd, (char *)&reported + got, sizeof(reported) - got);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0)
            error_errno(err, errno, "read the monitor's set-up report");
        if (n <= 0)
            break;
        got += (size_t)n;
    }
    close(setup_fd);
    if (got == sizeof(reported) && reported.code == 0) {
        /* Made by the monitor; a later failure here must undo them too. */
        anchor->pid_ns_file_created = anchor->pid_ns_bound = true;
        return 0;
    }
    if (got == sizeof(reported)) {
        *err = reported;
        /* The monitor has undone its own part and exits. */
        while (waitpid(monitor_pid, NULL, 0) < 0 && errno == EINTR)
            ;
        return -1;
    }
    if (err->code == 0)
        error_plain(err, EIO, "the monitor exited while starting the pod's pid namespace init");
    kill(monitor_pid, SIGKILL);
    while (waitpid(monitor_pid, NULL, 0) < 0 && errno == EINTR)
        ;
    /* Whatever it may have left of the pid namespace file. */
    anchor->pid_ns_file_created = anchor->pid_ns_bound = access(anchor->pid_ns_file, F_OK) == 0;
    return -1;
}

static void report_ready(int ready_fd, pid_t monitor_pid, const struct error *err)
{
    char line[ERROR_MESSAGE_MAX + 32];
    int length;
    if (err)
        length = snprintf(line, sizeof(line), "error %d %s\n", err->code, err->message);
    else
        length = snprintf(line, sizeof(line), "ok %d\n", (int)monitor_pid);
    if (length > 0 && write_all(ready_fd, line, (size_t)length) < 0)
        fprintf(stderr, "write ready fd: %s\n", strerror(errno));
    close(ready_fd);
}

static int open_event_fds(struct monitor *monitor, struct error *err)
{
    sigset_t handled;
    sigemptyset(&handled);
    sigaddset(&handled, SIGCHLD);
    sigaddset(&handled, SIGTERM);
    sigaddset(&handled, SIGINT);
    if (sigprocmask(SIG_BLOCK, &handled, NULL) < 0)
        return error_errno(err, errno, "sigprocmask");
    monitor->signal_fd = signalfd(-1, &handled, SFD_NONBLOCK | SFD_CLOEXEC);
    if (monitor->signal_fd < 0)
        return error_errno(err, errno, "signalfd");
    monitor->epoll_fd = epoll_create1(EPOLL_CLOEXEC);
    if (monitor->epoll_fd < 0)
        return error_errno(err, errno, "epoll_create1");
    return 0;
}

/* fds 0-2 become /dev/null: the monitor must never write into, or hold
 * open, a pipe of the daemon that spawned it. A regular file on stderr (a
 * log the daemon opened for the monitor's diagnostics) is kept. */
static int detach_stdio(struct error *err)
{
    int null_fd = open("/dev/null", O_RDWR | O_CLOEXEC);
    if (null_fd < 0)
        return error_errno(err, errno, "open /dev/null");
    struct stat st;
    bool keep_stderr = fstat(2, &st) == 0 && S_ISREG(st.st_mode);
    for (int fd = 0; fd < (keep_stderr ? 2 : 3); fd++) {
        if (dup2(null_fd, fd) < 0)
            return error_errno(err, errno, "dup2 /dev/null to %d", fd);
    }
    if (null_fd > 2)
        close(null_fd);
    return 0;
}

int pod_main(int argc, char **argv)
{
    struct pod_options options;
    struct error err = {0};
    if (parse_options(argc, argv, &options, &err) < 0) {
        fprintf(stderr, "crio-fast-monitor pod: %s\n", err.message);
        pod_usage(stderr);
        return 2;
    }
    if (fcntl(options.ready_fd, F_SETFD, FD_CLOEXEC) < 0) {
        fprintf(stderr, "crio-fast-monitor pod: ready fd %d: %s\n", options.ready_fd, strerror(errno));
        return 2;
    }
    if (options.cgroup_gate_fd >= 0 && fcntl(options.cgroup_gate_fd, F_SETFD, FD_CLOEXEC) < 0) {
        fprintf(stderr, "crio-fast-monitor pod: cgroup gate fd %d: %s\n", options.cgroup_gate_fd, strerror(errno));
        return 2;
    }
    struct monitor monitor = {
        .pod_id = options.pod_id,
        .pod_dir = options.pod_dir,
        .exits_dir = options.exits_dir,
        .epoll_fd = -1,
        .signal_fd = -1,
        .listen_fd = -1,
        .oom_watch = {WATCH_OOM, -1, NULL, LOG_STDOUT},
    };
    struct pod_anchor anchor = {.init_pidfd = -1, .userns_fd = -1};
    int setup_pipe[2] = {-1, -1}; /* --pid new: the monitor reports its pod init here */
    process_argv = argv;
    process_argc = argc;
    /* Everything that can fail happens before the fork, in the process the
     * daemon spawned (and reaps): a failed start leaves no orphan behind.
     * Namespaces, mounts, cgroups, the listening socket, the epoll set and
     * the signalfd all carry over to the forked monitor. A new session
     * first, so that the monitor is no session leader (it can never acquire
     * a controlling terminal). Ignoring SIGPIPE makes writes to a vanished
     * reader fail with EPIPE; SIGHUP from the daemon's terminal is not ours. */
    if ((setsid() < 0 && errno != EPERM && error_errno(&err, errno, "setsid")) ||
        ((signal(SIGPIPE, SIG_IGN) == SIG_ERR || signal(SIGHUP, SIG_IGN) == SIG_ERR) &&
         error_errno(&err, errno, "ignore SIGPIPE and SIGHUP")) ||
        detach_stdio(&err) < 0 || open_event_fds(&monitor, &err) < 0 ||
        setup_pod(&anchor, &options, &monitor.listen_fd, &err) < 0 ||
        (options.new_pid_namespace && pipe2(setup_pipe, O_CLOEXEC) < 0 &&
         error_errno(&err, errno, "pipe for the monitor's set-up report"))) {
        teardown(&anchor, &options);
        report_ready(options.ready_fd, 0, &err);
        return 1;
    }
    pid_t pid = fork();
    if (pid < 0) {
        error_errno(&err, errno, "fork");
        teardown(&anchor, &options);
        report_ready(options.ready_fd, 0, &err);
        return 1;
    }
    if (pid > 0) {
        /* The spawned process: record the monitor and report; the monitor is
         * orphaned (adopted by init) as soon as this returns. */
        if (options.new_pid_namespace) {
            close(setup_pipe[1]);
            if (await_pod_init(&anchor, pid, setup_pipe[0], &err) < 0) {
                teardown(&anchor, &options);
                report_ready(options.ready_fd, 0, &err);
                return 1;
            }
        }
        if (write_pid_file(&anchor, pid, &err) < 0) {
            kill(pid, SIGKILL);
            waitpid(pid, NULL, 0);
            teardown(&anchor, &options);
            report_ready(options.ready_fd, 0, &err);
            return 1;
        }
        report_ready(options.ready_fd, pid, NULL);
        return 0;
    }

    close(options.ready_fd);
    anchor.pid_written = true; /* by the parent, before it reported ready */
    /* Containers and the orphans they leave are ours to reap. */
    if (prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) < 0)
        fprintf(stderr, "prctl(PR_SET_CHILD_SUBREAPER): %s\n", strerror(errno));
    if (options.new_pid_namespace) {
        /* The init must be the monitor's own child (it dies with the monitor
         * and the monitor reaps it), so it is made here, after the fork; the
         * spawned process waits for this report before it reports ready. */
        close(setup_pipe[0]);
        struct error init_err = {0};
        int init_rc = start_pod_init(&anchor, &init_err);
        int report_rc = write_all(setup_pipe[1], &init_err, sizeof(init_err));
        close(setup_pipe[1]);
        if (init_rc < 0 || report_rc < 0) {
            stop_pod_init(&anchor); /* the spawned process undoes the rest */
            return 1;
        }
    }
    /* How overlays are mounted, decided once for every container this
     * monitor clones (they inherit it). Here, with the set-up reported: the
     * daemon takes the ready line and decides a container's plan before a
     * CREATE can come, so the probe runs meanwhile. */
    struct error probe_err = {0};
    if (overlay_mount_decide(options.overlay_legacy, &probe_err) < 0)
        fprintf(stderr, "%s; each container probes for itself\n", probe_err.message);
    int rc = server_run(&monitor);
    monitor.stopping = true;
    containers_kill_all(&monitor, SHUTDOWN_KILL_TIMEOUT_MS);
    if (monitor.listen_fd >= 0)
        close(monitor.listen_fd);
    teardown(&anchor, &options);
    server_answer_shutdown(&monitor, rc == 0 ? 0 : EIO, rc == 0 ? NULL : "the monitor's event loop failed");
    return rc == 0 ? 0 : 1;
}
