/*
 * Containers of an external OCI runtime (runc, crun), driven by the pod
 * monitor as conmon drives them: CREATE runs `RUNTIME create` with the
 * container's stdio pipes, START runs `RUNTIME start`, REMOVE and the pod's
 * shutdown run `RUNTIME delete --force`. KILL signals the init through its
 * pidfd, like a native container (the runtime would only do the same).
 *
 * Once `RUNTIME create` has exited, the container init is a child of the
 * monitor (a child subreaper), so it is reaped, logged and given an exit
 * file exactly like a native container.
 *
 * The runtime commands run synchronously: the monitor waits for each one
 * (bounded by OCI_RUNTIME_TIMEOUT_MS) before it serves the next event. A
 * runtime command takes tens of milliseconds; native containers of the same
 * pod are not affected otherwise.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include "server.h"

#define OCI_RUNTIME_TIMEOUT_MS 60000
#define OCI_ERROR_TEXT_MAX 900

/* A private mount namespace of this process without the cgroup2 mount of a
 * hybrid host: crun 1.8 refuses hybrid layouts, but runs on the v1 part. */
static int hide_cgroup2_mount(const char *runtime, struct error *err)
{
    if (unshare(CLONE_NEWNS) < 0)
        return error_errno(err, errno, "unshare a mount namespace for %s", runtime);
    /* Slave, not private: the unmount below and the runtime's own mounts must not
     * reach the host, while the host's later mounts (new bundles) still reach us. */
    if (mount("none", "/", NULL, MS_REC | MS_SLAVE, NULL) < 0)
        return error_errno(err, errno, "make / a recursive slave for %s", runtime);
    /* EINVAL: not a mount point here (a pure v1 or pure v2 host), nothing to hide. */
    if (umount2("/sys/fs/cgroup/unified", MNT_DETACH) < 0 && errno != EINVAL && errno != ENOENT)
        return error_errno(err, errno, "unmount /sys/fs/cgroup/unified for %s", runtime);
    return 0;
}

enum child_program { CHILD_RUNS_OTHER, CHILD_RUNS_RUNTIME, CHILD_EXITING };

/* What child `pid` runs: the runtime's binary, something else, or nothing
 * any more (exiting, or a zombie: its exe link is gone). */
static enum child_program child_program(pid_t pid, const char *runtime_binary)
{
    char link[64], target[PATH_MAX];
    snprintf(link, sizeof(link), "/proc/%d/exe", (int)pid);
    ssize_t length = readlink(link, target, sizeof(target) - 1);
    if (length < 0)
        return errno == ENOENT || errno == ESRCH ? CHILD_EXITING : CHILD_RUNS_OTHER;
    target[length] = '\0';
    return strcmp(target, runtime_binary) == 0 ? CHILD_RUNS_RUNTIME : CHILD_RUNS_OTHER;
}

/* Wait for the helpers the runtime left running when it exited (crun's
 * process of a failed exec, already in the container's pid namespace).
 * Orphaned further they would go to the daemon, which reaps no strangers,
 * and a zombie in the container's pid namespace keeps the container's init
 * from ever finishing its exit. Other orphans (a background process of the
 * command, when the container shares the host's pid namespace) are not
 * waited for: ExecSync returns when the command is done. */
static void reap_runtime_leftovers(const char *runtime)
{
    char binary[PATH_MAX];
    if (!realpath(runtime, binary) && snprintf(binary, sizeof(binary), "%s", runtime) >= (int)sizeof(binary))
        return;
    char children_path[64];
    snprintf(children_path, sizeof(children_path), "/proc/self/task/%d/children", (int)getpid());
    /* Bounded: an exiting child is looked at again a millisecond later, for at most two seconds. */
    for (int round = 0; round < 2000; round++) {
        while (waitpid(-1, NULL, WNOHANG) > 0)
            ;
        char *text = NULL;
        struct error err;
        if (read_small_file(children_path, 1 << 16, &text, NULL, &err) < 0)
            return; /* no CONFIG_PROC_CHILDREN: only what had exited is reaped */
        pid_t helper = 0;
        bool exiting = false;
        for (char *p = text; *p && !helper;) {
            char *end;
            long pid = strtol(p, &end, 10);
            if (end == p)
                break;
            enum child_program program = child_program((pid_t)pid, binary);
            if (program == CHILD_RUNS_RUNTIME)
                helper = (pid_t)pid;
            exiting |= program == CHILD_EXITING;
            p = end + strspn(end, " \n");
        }
        free(text);
        if (helper) {
            while (waitpid(helper, NULL, 0) < 0 && errno == EINTR)
                ;
        } else if (exiting) {
            usleep(1000);
        } else {
            return;
        }
    }
}

int runtime_main(int argc, char **argv)
{
    bool hide = false;
    int i = 2;
    for (; i < argc; i++) {
        if (strcmp(argv[i], "--hide-cgroup2-mount") == 0) {
            hide = true;
        } else if (strcmp(argv[i], "--") == 0) {
            i++;
            break;
        } else {
            fprintf(stderr, "crio-fast-monitor runtime: unknown option %s\n", argv[i]);
            return 2;
        }
    }
    if (i >= argc || argv[i][0] != '/') {
        fprintf(stderr, "usage: crio-fast-monitor runtime [--hide-cgroup2-mount] -- /PATH/TO/RUNTIME ARGS...\n");
        return 2;
    }
    struct error err;
    if (hide && hide_cgroup2_mount(argv[i], &err) < 0) {
        fprintf(stderr, "crio-fast-monitor runtime: %s\n", err.message);
        return 125;
    }
    /* A subreaper: what the runtime leaves behind (crun's helper process of a
     * failed exec) is reaped here instead of piling up as zombies in the
     * caller, where a zombie would also keep the container's cgroup busy. */
    if (prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) < 0) {
        fprintf(stderr, "crio-fast-monitor runtime: PR_SET_CHILD_SUBREAPER: %s\n", strerror(errno));
        return 125;
    }
    pid_t child = fork();
    if (child < 0) {
        fprintf(stderr, "crio-fast-monitor runtime: fork: %s\n", strerror(errno));
        return 125;
    }
    if (child == 0) {
        execv(argv[i], argv + i);
        fprintf(stderr, "crio-fast-monitor runtime: exec %s: %s\n", argv[i], strerror(errno));
        _exit(127);
    }
    int status = 0;
    pid_t got;
    do {
        got = waitpid(child, &status, 0);
    } while (got < 0 && errno == EINTR);
    if (got < 0) {
        fprintf(stderr, "crio-fast-monitor runtime: waitpid %d: %s\n", (int)child, strerror(errno));
        return 125;
    }
    reap_runtime_leftovers(argv[i]);
    return WIFSIGNALED(status) ? 128 + WTERMSIG(status) : WEXITSTATUS(status);
}

/* In the forked child: make the cgroup2 mount of a hybrid host invisible
 * (crun refuses hybrid layouts), then exec the runtime. Never returns. */
__attribute__((noreturn)) static void runtime_child(const struct oci_runtime *oci, char *const *argv, int stdin_fd,
                                                    int stdout_fd, int stderr_fd, int console_fd)
{
    struct error err;
    if (reset_signals_for_exec(&err) < 0)
        goto fail;
    int fds[3] = {stdin_fd, stdout_fd, stderr_fd};
    for (int i = 0; i < 3; i++) {
        /* dup2 onto itself is a no-op that keeps O_CLOEXEC: clear the flag instead. */
        if (fds[i] == i) {
            int flags = fcntl(i, F_GETFD);
            if (flags < 0 || fcntl(i, F_SETFD, flags & ~FD_CLOEXEC) < 0) {
                error_errno(&err, errno, "clear close-on-exec on fd %d", i);
                goto fail;
            }
        } else if (dup2(fds[i], i) < 0) {
            error_errno(&err, errno, "dup2 %d to %d", fds[i], i);
            goto fail;
        }
    }
    int keep[1] = {console_fd};
    if (close_fds_except(keep, console_fd >= 0 ? 1 : 0, &err) < 0)
        goto fail;
    if (oci->hide_cgroup2 && hide_cgroup2_mount(oci->path, &err) < 0)
        goto fail;
    execv(oci->path, argv);
    error_errno(&err, errno, "exec %s", oci->path);
fail:
    dprintf(2, "%s\n", err.message);
    _exit(127);
}

/* Up to OCI_ERROR_TEXT_MAX bytes of what the runtime wrote, trailing
 * newlines and whitespace stripped, lines joined with "; ". */
static void read_error_text(int fd, char *out, size_t size)
{
    out[0] = '\0';
    if (fd < 0)
        return;
    char text[OCI_ERROR_TEXT_MAX + 1];
    ssize_t got = pread(fd, text, OCI_ERROR_TEXT_MAX, 0);
    if (got < 0 && errno == ESPIPE)
        got = read(fd, text, OCI_ERROR_TEXT_MAX);
    if (got <= 0)
        return;
    text[got] = '\0';
    while (got > 0 && (text[got - 1] == '\n' || text[got - 1] == ' ' || text[got - 1] == '\r'))
        text[--got] = '\0';
    size_t used = 0;
    for (char *line = strtok(text, "\n"); line && used + 3 < size; line = strtok(NULL, "\n"))
        used += (size_t)snprintf(out + used, size - used, "%s%s", used ? "; " : "", line);
}

/* Wait for `pid` (with its pidfd, when we have one) for at most `timeout_ms`. */
static int wait_runtime(pid_t pid, int pidfd, int timeout_ms, int *status, struct error *err)
{
    if (pidfd >= 0) {
        struct pollfd poll_fd = {pidfd, POLLIN, 0};
        int ready;
        do {
            ready = poll(&poll_fd, 1, timeout_ms);
        } while (ready < 0 && errno == EINTR);
        if (ready == 0) {
            if (kill(pid, SIGKILL) < 0 && errno != ESRCH)
                return error_errno(err, errno, "kill the runtime (pid %d) after %d ms", (int)pid, timeout_ms);
            while (waitpid(pid, status, 0) < 0 && errno == EINTR)
                ;
            return error_plain(err, ETIMEDOUT, "timed out after %d ms", timeout_ms);
        }
        /* poll failing otherwise: fall back to waiting without a bound. */
    }
    pid_t got;
    do {
        got = waitpid(pid, status, 0);
    } while (got < 0 && errno == EINTR);
    if (got < 0)
        return error_errno(err, errno, "waitpid %d", (int)pid);
    return 0;
}

int oci_run(const struct oci_runtime *oci, const char *log_path, const char *const *args, int stdin_fd,
            int stdout_fd, int stderr_fd, int error_fd, int console_fd, struct error *err)
{
    /* argv: RUNTIME --root ROOT [--log LOG] GLOBAL_ARGS... ARGS... */
    const char *argv[16 + OCI_GLOBAL_ARGS_MAX];
    size_t argc = 0;
    argv[argc++] = oci->path;
    argv[argc++] = "--root";
    argv[argc++] = oci->root;
    if (log_path) {
        argv[argc++] = "--log";
        argv[argc++] = log_path;
    }
    for (size_t i = 0; oci->global_args[i]; i++)
        argv[argc++] = oci->global_args[i];
    for (size_t i = 0; args[i]; i++) {
        if (argc + 1 >= sizeof(argv) / sizeof(argv[0]))
            return error_plain(err, E2BIG, "too many runtime arguments");
        argv[argc++] = args[i];
    }
    argv[argc] = NULL;

    /* Where the runtime's own complaints go, unless the caller routes stderr. */
    int capture_fd = -1;
    if (stderr_fd < 0) {
        capture_fd = memfd_create("oci-runtime-stderr", MFD_CLOEXEC);
        if (capture_fd < 0)
            return error_errno(err, errno, "memfd_create for %s %s", oci->path, args[0]);
        stderr_fd = error_fd = capture_fd;
    }
    int pidfd = -1;
    pid_t pid = clone_process(0, &pidfd);
    if (pid == 0)
        runtime_child(oci, (char *const *)argv, stdin_fd, stdout_fd, stderr_fd, console_fd);
    if (pid < 0) {
        int saved = errno;
        if (capture_fd >= 0)
            close(capture_fd);
        return error_errno(err, saved, "fork for %s %s", oci->path, args[0]);
    }
    int status = 0;
    int rc = wait_runtime(pid, pidfd, OCI_RUNTIME_TIMEOUT_MS, &status, err);
    if (pidfd >= 0)
        close(pidfd);
    if (rc < 0) {
        error_context(err, "%s %s", oci->path, args[0]);
        if (capture_fd >= 0)
            close(capture_fd);
        return -1;
    }
    if (WIFEXITED(status) && WEXITSTATUS(status) == 0) {
        if (capture_fd >= 0)
            close(capture_fd);
        return 0;
    }
    char text[OCI_ERROR_TEXT_MAX + 64];
    read_error_text(error_fd, text, sizeof(text));
    if (capture_fd >= 0)
        close(capture_fd);
    if (WIFSIGNALED(status))
        return error_plain(err, EIO, "%s %s: killed by signal %d%s%s", oci->path, args[0], WTERMSIG(status),
                           text[0] ? ": " : "", text);
    return error_plain(err, EIO, "%s %s failed (exit status %d)%s%s", oci->path, args[0], WEXITSTATUS(status),
                       text[0] ? ": " : "", text);
}

int oci_delete(const struct oci_runtime *oci, const char *id, struct error *err)
{
    const char *args[] = {"delete", "--force", id, NULL};
    return oci_run(oci, NULL, args, 0, 1, -1, -1, -1, err);
}

int oci_start(const struct oci_runtime *oci, const char *id, struct error *err)
{
    const char *args[] = {"start", id, NULL};
    return oci_run(oci, NULL, args, 0, 1, -1, -1, -1, err);
}

/* A listening socket for --console-socket in the bundle; the runtime
 * connects and passes the pty master (SCM_RIGHTS) during create. */
static int console_socket_listen(const char *path, struct error *err)
{
    struct sockaddr_un address = {.sun_family = AF_UNIX};
    if (strlen(path) >= sizeof(address.sun_path))
        return error_plain(err, ENAMETOOLONG, "console socket path %s is too long", path);
    strcpy(address.sun_path, path);
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return error_errno(err, errno, "console socket");
    unlink(path);
    if (bind(fd, (struct sockaddr *)&address, sizeof(address)) < 0 || listen(fd, 1) < 0) {
        int saved = errno;
        close(fd);
        return error_errno(err, saved, "listen on console socket %s", path);
    }
    return fd;
}

static int console_receive_master(int listen_fd, struct error *err)
{
    struct pollfd poll_fd = {listen_fd, POLLIN, 0};
    if (poll(&poll_fd, 1, 0) <= 0)
        return error_plain(err, EIO, "the runtime did not connect to the console socket");
    int connection = accept4(listen_fd, NULL, NULL, SOCK_CLOEXEC);
    if (connection < 0)
        return error_errno(err, errno, "accept on the console socket");
    char byte[256];
    union {
        struct cmsghdr header;
        char space[CMSG_SPACE(sizeof(int))];
    } control;
    struct iovec iov = {byte, sizeof(byte)};
    struct msghdr message = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = control.space,
                             .msg_controllen = sizeof(control.space)};
    ssize_t got = recvmsg(connection, &message, MSG_DONTWAIT | MSG_CMSG_CLOEXEC);
    int saved = errno;
    close(connection);
    if (got < 0)
        return error_errno(err, saved, "receive the terminal from the console socket");
    for (struct cmsghdr *cmsg = CMSG_FIRSTHDR(&message); cmsg; cmsg = CMSG_NXTHDR(&message, cmsg)) {
        if (cmsg->cmsg_level == SOL_SOCKET && cmsg->cmsg_type == SCM_RIGHTS &&
            cmsg->cmsg_len == CMSG_LEN(sizeof(int))) {
            int master;
            memcpy(&master, CMSG_DATA(cmsg), sizeof(int));
            return master;
        }
    }
    return error_plain(err, EIO, "the console socket carried no terminal");
}

static int read_pid_file(const char *path, pid_t *pid, struct error *err)
{
    char *text = NULL;
    if (read_small_file(path, 64, &text, NULL, err) < 0)
        return -1;
    uint64_t value;
    char *end = text + strcspn(text, "\n ");
    *end = '\0';
    int rc = parse_u64(text, &value);
    free(text);
    if (rc < 0 || value == 0 || value > 0x7fffffff)
        return error_plain(err, EINVAL, "pid file %s holds no pid", path);
    *pid = (pid_t)value;
    return 0;
}

/* What the runtime logged while it created the container: appended to the error
 * on failure, passed on to the monitor's own log otherwise. */
static void take_runtime_log(const struct oci_runtime *oci, const char *id, int log_fd, bool failed, struct error *err)
{
    char text[OCI_ERROR_TEXT_MAX + 64];
    read_error_text(log_fd, text, sizeof(text));
    if (!text[0])
        return;
    if (failed) {
        size_t used = strlen(err->message);
        snprintf(err->message + used, sizeof(err->message) - used, "; its log: %s", text);
    } else {
        fprintf(stderr, "container %s: %s create: %s\n", id, oci->path, text);
    }
}

int oci_create(const struct oci_runtime *oci, const char *id, const char *bundle, const char *pod_dir, bool tty,
               int stdin_fd, int stdout_fd, int stderr_fd, int error_fd, pid_t *pid_out, int *terminal_out,
               struct error *err)
{
    char *pid_file = format_string("%s/container.pid", bundle);
    /* In the pod dir, whose paths fit sun_path (monitor.sock does); one at a
     * time suffices since CREATE runs the runtime synchronously. */
    char *console_path = tty ? format_string("%s/console.sock", pod_dir) : NULL;
    /* The runtime shares the container's stdio while it creates it: its own
     * messages (runc's warnings, say) go to a log of ours instead, reached
     * through /proc without being inherited. */
    int log_fd = memfd_create("oci-runtime-log", MFD_CLOEXEC);
    char *log_path = log_fd >= 0 ? format_string("/proc/%d/fd/%d", (int)getpid(), log_fd) : NULL;
    int console_fd = -1;
    int rc = -1;
    *terminal_out = -1;
    if (log_fd < 0) {
        error_errno(err, errno, "memfd_create for %s create", oci->path);
        goto out;
    }
    if (!pid_file || !log_path || (tty && !console_path)) {
        error_errno(err, ENOMEM, "create %s", id);
        goto out;
    }
    unlink(pid_file);
    if (tty && (console_fd = console_socket_listen(console_path, err)) < 0)
        goto out;
    const char *args[] = {"create", "--bundle", bundle, "--pid-file", pid_file, NULL, NULL, NULL};
    size_t n = 5;
    if (tty) {
        args[n++] = "--console-socket";
        args[n++] = console_path;
    }
    const char *full[10];
    memcpy(full, args, sizeof(const char *) * n);
    full[n] = id;
    full[n + 1] = NULL;
    if (oci_run(oci, log_path, full, stdin_fd, stdout_fd, stderr_fd, error_fd, -1, err) < 0) {
        take_runtime_log(oci, id, log_fd, true, err);
        goto out;
    }
    take_runtime_log(oci, id, log_fd, false, err);
    if (read_pid_file(pid_file, pid_out, err) < 0)
        goto out;
    if (tty && (*terminal_out = console_receive_master(console_fd, err)) < 0)
        goto out;
    rc = 0;
out:
    if (console_fd >= 0)
        close(console_fd);
    if (console_path)
        unlink(console_path);
    if (log_fd >= 0)
        close(log_fd);
    free(log_path);
    free(pid_file);
    free(console_path);
    return rc;
}
