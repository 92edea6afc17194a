/*
 * Containers of one pod, as the monitor sees them: CREATE clones the init
 * (launch.c runs in the child), START releases it, output goes to the CRI
 * log, and each exit is recorded in an exit file.
 *
 * CREATE and START do not block the monitor: their replies are sent when
 * the child reports on its sync socket ('R' ready, 'E' error, EOF after a
 * successful exec since the socket is close-on-exec).
 */
#include <errno.h>
#include <fcntl.h>
#include <linux/openat2.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "server.h"

/* openat2 retries of a log file open that met EAGAIN (a rename racing ".." resolution). */
#define LOG_OPEN_ATTEMPTS 16

/* One read buffer for every stream of the pod: output is written to the
 * log before the next read, so nothing needs to be kept per stream. */
static char output_buffer[16384];

struct container *container_find(struct monitor *monitor, const char *id)
{
    for (struct container *c = monitor->containers; c; c = c->next)
        if (!c->failed_create && strcmp(c->id, id) == 0)
            return c;
    return NULL;
}

static void answer_pending(struct monitor *monitor, struct container *container, struct pending_reply *pending,
                           int status, const char *message)
{
    if (!pending->active)
        return;
    pending->active = false;
    struct connection *connection = connection_by_serial(monitor, pending->connection_serial);
    if (!connection)
        return; /* the daemon hung up; the state is still queryable */
    connection_set_busy(monitor, connection, false);
    struct buffer reply = {0};
    reply_start(&reply, pending->type, pending->request_id, status, message);
    if (status == 0 && pending->type == REQUEST_CREATE) {
        buffer_put_u32(&reply, FIELD_PID, (uint32_t)container->pid);
        buffer_append(&reply, container->warnings.data, container->warnings.length);
    }
    reply_send(monitor, connection, &reply);
    buffer_free(&reply);
}

/* Answer the pending CREATE or START; a failure also answers a START queued
 * behind the CREATE, with the same message (the set-up failed). */
static void complete_pending(struct monitor *monitor, struct container *container, int status, const char *message)
{
    answer_pending(monitor, container, &container->pending, status, message);
    if (status != 0)
        answer_pending(monitor, container, &container->queued_start, status, message);
}

/* Release the child. Returns 1 when the container counts as running at once
 * (its READY said the exec was checked: START is answered now, and an exec
 * that fails all the same is the container's exit, as with runc), 0 when
 * START waits for the exec's outcome (on_sync_eof or the child's error), -1
 * when GO could not be sent. */
static int send_go(struct container *container, struct error *err)
{
    char go = SYNC_GO;
    if (send(container->sync_watch.fd, &go, 1, MSG_DONTWAIT | MSG_NOSIGNAL) != 1)
        return error_errno(err, errno, "start container %s", container->id);
    if (!container->exec_checked) {
        container->starting = true;
        return 0;
    }
    container->status = CONTAINER_RUNNING;
    container->started_at = realtime_ns();
    return 1;
}

/* The child is ready: a START that came early is carried out now. */
static void run_queued_start(struct monitor *monitor, struct container *container)
{
    if (!container->queued_start.active)
        return;
    struct error err;
    int released = send_go(container, &err);
    if (released != 0) {
        answer_pending(monitor, container, &container->queued_start, released < 0 ? err.code : 0,
                       released < 0 ? err.message : NULL);
        return;
    }
    container->pending = container->queued_start;
    container->queued_start.active = false;
}

static int signal_container(const struct container *container, int signal)
{
    return container->pidfd >= 0 ? sys_pidfd_send_signal(container->pidfd, signal) : kill(container->pid, signal);
}

static void close_fd(int *fd)
{
    if (*fd >= 0) {
        close(*fd);
        *fd = -1;
    }
}

void container_free(struct container *container)
{
    close_fd(&container->pidfd);
    close_fd(&container->log_fd);
    close_fd(&container->stdin_fd);
    buffer_free(&container->warnings);
    free(container->id);
    free(container->log_path);
    free(container->log_dir);
    free(container->kill_cgroup_procs);
    free(container->oom_counter_path);
    free(container->child_error);
    oci_runtime_free(container->oci);
    free(container);
}

static void unlink_container(struct monitor *monitor, struct container *container)
{
    for (struct container **link = &monitor->containers; *link; link = &(*link)->next) {
        if (*link == container) {
            *link = container->next;
            break;
        }
    }
    watch_close(monitor, &container->stdout_watch);
    watch_close(monitor, &container->stderr_watch);
    watch_close(monitor, &container->sync_watch);
    container->next = monitor->dead_containers;
    monitor->dead_containers = container;
}

void container_remove(struct monitor *monitor, struct container *container)
{
    unlink_container(monitor, container);
}

/* ---------------------------------------------------------------- output */

static void read_output(struct monitor *monitor, struct container *container, struct watch *watch, bool drain)
{
    for (int round = 0; drain || round < 8; round++) {
        if (watch->fd < 0)
            return;
        ssize_t got = read(watch->fd, output_buffer, sizeof(output_buffer));
        if (got > 0) {
            if (container->log_fd >= 0) {
                struct error err;
                if (log_write_records(container->log_fd, watch->stream, output_buffer, (size_t)got,
                                      container->log_line_max, realtime_ns(), &err) < 0)
                    fprintf(stderr, "container %s: %s\n", container->id, err.message);
            }
            if (monitor->attachers)
                attach_broadcast(monitor, container, watch->stream, output_buffer, (size_t)got);
            continue;
        }
        if (got < 0 && errno == EINTR)
            continue;
        if (got < 0 && errno == EAGAIN)
            return;
        /* EOF; EIO on a pty master once the last slave fd is closed. */
        watch_close(monitor, watch);
        return;
    }
}

void container_on_output(struct monitor *monitor, struct container *container, struct watch *watch)
{
    read_output(monitor, container, watch, false);
}

/* ------------------------------------------------------------------ sync */

static void on_sync_eof(struct monitor *monitor, struct container *container)
{
    watch_close(monitor, &container->sync_watch);
    if (container->status == CONTAINER_CREATING) {
        const char *why = container->child_error ? container->child_error : "container init exited during setup";
        container->failed_create = true;
        complete_pending(monitor, container, EIO, why);
    }
    if (container->starting) {
        /* Close-on-exec closed the child's end: execve succeeded. */
        container->starting = false;
        container->started_at = realtime_ns();
        if (container->status == CONTAINER_CREATED)
            container->status = CONTAINER_RUNNING;
        complete_pending(monitor, container, 0, NULL);
    }
}

/* One sync packet; a passed fd (the pty master) lands in *fd_out. */
static ssize_t receive_sync(int sync_fd, char *packet, size_t size, int *fd_out)
{
    union {
        struct cmsghdr header;
        char space[CMSG_SPACE(sizeof(int))];
    } control;
    struct iovec iov = {packet, size};
    struct msghdr message = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = control.space,
                             .msg_controllen = sizeof(control.space)};
    *fd_out = -1;
    ssize_t got = recvmsg(sync_fd, &message, MSG_DONTWAIT | MSG_CMSG_CLOEXEC);
    if (got < 0)
        return got;
    for (struct cmsghdr *cmsg = CMSG_FIRSTHDR(&message); cmsg; cmsg = CMSG_NXTHDR(&message, cmsg))
        if (cmsg->cmsg_level == SOL_SOCKET && cmsg->cmsg_type == SCM_RIGHTS &&
            cmsg->cmsg_len == CMSG_LEN(sizeof(int)))
            memcpy(fd_out, CMSG_DATA(cmsg), sizeof(int));
    return got;
}

static void adopt_terminal(struct monitor *monitor, struct container *container, int master)
{
    if (master < 0 || container->stdout_watch.fd >= 0) {
        fprintf(stderr, "container %s: unexpected terminal message\n", container->id);
        if (master >= 0)
            close(master);
        return;
    }
    container->stdout_watch.fd = master;
    if (set_nonblocking(master, true) < 0 || watch_add(monitor, &container->stdout_watch, EPOLLIN) < 0) {
        fprintf(stderr, "container %s: watch terminal: %s\n", container->id, strerror(errno));
        close_fd(&container->stdout_watch.fd);
        return;
    }
    /* Attach input goes to the master; a separate fd so CLOSE_STDIN can drop it alone. */
    if (container->stdin_wanted && (container->stdin_fd = fcntl(master, F_DUPFD_CLOEXEC, 3)) < 0)
        fprintf(stderr, "container %s: dup terminal for stdin: %s\n", container->id, strerror(errno));
}

void container_on_sync(struct monitor *monitor, struct container *container)
{
    char packet[ERROR_MESSAGE_MAX + 8];
    while (container->sync_watch.fd >= 0) {
        int passed_fd;
        ssize_t got = receive_sync(container->sync_watch.fd, packet, sizeof(packet) - 1, &passed_fd);
        if (got < 0 && errno == EINTR)
            continue;
        if (got < 0 && errno == EAGAIN)
            return;
        if (got <= 0) {
            on_sync_eof(monitor, container);
            return;
        }
        packet[got] = '\0';
        const char *text = packet + 1;
        if (packet[0] == SYNC_TERMINAL) {
            adopt_terminal(monitor, container, passed_fd);
            continue;
        }
        if (passed_fd >= 0)
            close(passed_fd);
        switch (packet[0]) {
        case SYNC_WARNING:
            buffer_put_string(&container->warnings, FIELD_WARNING, text);
            break;
        case SYNC_READY:
            if (container->status == CONTAINER_CREATING) {
                struct error err = {0};
                if (container->oom_counter_path && !container->has_oom_baseline) {
                    /* A gated create: the child is in its cgroup now. */
                    if (oom_watch_start(monitor, container, &err) < 0) {
                        signal_container(container, SIGKILL);
                        container->failed_create = true;
                        complete_pending(monitor, container, err.code, err.message);
                        break;
                    }
                }
                container->status = CONTAINER_CREATED;
                container->exec_checked = text[0] == SYNC_READY_EXEC_CHECKED;
                complete_pending(monitor, container, 0, NULL);
                run_queued_start(monitor, container);
            }
            break;
        case SYNC_ERROR:
            free(container->child_error);
            container->child_error = strdup(text);
            if (container->status == CONTAINER_CREATING)
                container->failed_create = true;
            container->starting = false;
            complete_pending(monitor, container, EIO, text);
            break;
        default:
            fprintf(stderr, "container %s: unexpected sync message %d\n", container->id, packet[0]);
            break;
        }
    }
}

/* ----------------------------------------------------------------- exits */

static void container_exited(struct monitor *monitor, struct container *container, int wait_status)
{
    /* Collect what the child said and wrote before it died. */
    container_on_sync(monitor, container);
    if (container->sync_watch.fd >= 0)
        on_sync_eof(monitor, container);
    read_output(monitor, container, &container->stdout_watch, true);
    read_output(monitor, container, &container->stderr_watch, true);

    container->finished_at = realtime_ns();
    if (WIFSIGNALED(wait_status)) {
        container->exit_signal = WTERMSIG(wait_status);
        container->exit_code = 128 + container->exit_signal;
    } else {
        container->exit_signal = 0;
        container->exit_code = WEXITSTATUS(wait_status);
    }
    if (container->oom_counter_path && container->has_oom_baseline)
        container->oom_killed = oom_watch_finish(monitor, container);
    container->status = CONTAINER_EXITED;
    container->starting = false;
    attach_container_exited(monitor, container); /* before its stdin goes */
    close_fd(&container->stdin_fd);
    close_fd(&container->pidfd);
    if (container->pending.active)
        complete_pending(monitor, container, EIO,
                         container->child_error ? container->child_error : "container init exited during setup");
    if (container->failed_create) {
        /* The daemon was told CREATE failed: it never knew this container. */
        unlink_container(monitor, container);
        return;
    }

    if (container->stdout_watch.fd < 0 && container->stderr_watch.fd < 0)
        close_fd(&container->log_fd);
    struct exit_record record = {
        .exit_code = container->exit_code,
        .signal = container->exit_signal,
        .finished_at_ns = container->finished_at,
        .started_at_ns = container->started_at,
        .oom_killed = container->oom_killed,
        .pid = container->pid,
    };
    struct error err;
    if (write_exit_file(monitor->exits_dir, container->id, &record, &err) < 0)
        fprintf(stderr, "container %s: %s\n", container->id, err.message);
}

/* Reap every exited child. Returns true while children remain. */
static bool reap_children(struct monitor *monitor)
{
    for (;;) {
        int status;
        pid_t pid = waitpid(-1, &status, WNOHANG);
        if (pid < 0 && errno == EINTR)
            continue;
        if (pid < 0)
            return false; /* ECHILD: nobody left */
        if (pid == 0)
            return true;
        for (struct container *c = monitor->containers; c; c = c->next) {
            if (c->pid == pid && c->status != CONTAINER_EXITED) {
                container_exited(monitor, c, status);
                break;
            }
        }
        /* Anything else was an orphan reparented to us (subreaper). */
    }
}

void containers_reap(struct monitor *monitor)
{
    reap_children(monitor);
}

/* Children of this process, from /proc (orphans adopted as subreaper). */
static void kill_all_children(void)
{
    char path[64];
    snprintf(path, sizeof(path), "/proc/self/task/%d/children", (int)getpid());
    char *text = NULL;
    struct error err;
    if (read_small_file(path, 1 << 20, &text, NULL, &err) < 0)
        return; /* no CONFIG_PROC_CHILDREN: container inits were killed already */
    for (char *p = text; *p;) {
        char *end;
        long pid = strtol(p, &end, 10);
        if (end == p)
            break;
        if (pid > 0 && kill((pid_t)pid, SIGKILL) < 0 && errno != ESRCH)
            fprintf(stderr, "kill %ld: %s\n", pid, strerror(errno));
        p = end;
        while (*p == ' ' || *p == '\n')
            p++;
    }
    free(text);
}

/* Drop the runtime's state of every oci container (its cgroup and state dir). */
static void delete_oci_containers(struct monitor *monitor)
{
    for (struct container *c = monitor->containers; c; c = c->next) {
        struct error err;
        if (c->oci && !c->failed_create && oci_delete(c->oci, c->id, &err) < 0)
            fprintf(stderr, "container %s: %s\n", c->id, err.message);
    }
}

static void reap_all(struct monitor *monitor, int timeout_ms);

void containers_kill_all(struct monitor *monitor, int timeout_ms)
{
    reap_all(monitor, timeout_ms);
    delete_oci_containers(monitor);
}

static void reap_all(struct monitor *monitor, int timeout_ms)
{
    for (struct container *c = monitor->containers; c; c = c->next) {
        if (c->status == CONTAINER_EXITED)
            continue;
        if (signal_container(c, SIGKILL) < 0 && errno != ESRCH)
                fprintf(stderr, "container %s: kill: %s\n", c->id, strerror(errno));
    }
    uint64_t deadline = realtime_ns() + (uint64_t)timeout_ms * 1000000ull;
    for (;;) {
        kill_all_children();
        if (!reap_children(monitor))
            return;
        if (realtime_ns() > deadline) {
            fprintf(stderr, "children still alive after %d ms\n", timeout_ms);
            return;
        }
        struct timespec pause = {0, 5 * 1000000};
        nanosleep(&pause, NULL);
    }
}

/* ----------------------------------------------------------------- create */

static int open_namespace_fds(const struct launch_plan *plan, int *fds, struct error *err)
{
    for (size_t i = 0; i < 8; i++)
        fds[i] = -1;
    for (size_t i = 0; i < plan->namespace_count; i++) {
        if (!plan->namespaces[i].join_path)
            continue;
        fds[i] = open(plan->namespaces[i].join_path, O_RDONLY | O_CLOEXEC);
        if (fds[i] < 0)
            return error_errno(err, errno, "open %s namespace %s", namespace_name(plan->namespaces[i].clone_flag),
                               plan->namespaces[i].join_path);
    }
    return 0;
}

static void close_namespace_fds(int *fds)
{
    for (size_t i = 0; i < 8; i++)
        close_fd(&fds[i]);
}

struct stdio_fds {
    int stdin_read, stdin_write;
    int stdout_read, stdout_write;
    int stderr_read, stderr_write;
};

static void close_stdio(struct stdio_fds *s)
{
    close_fd(&s->stdin_read);
    close_fd(&s->stdin_write);
    close_fd(&s->stdout_read);
    close_fd(&s->stdout_write);
    close_fd(&s->stderr_read);
    close_fd(&s->stderr_write);
}

/* Pipes for the three streams. With a terminal there are none: the child
 * sends the pty master once its devpts is mounted (SYNC_TERMINAL) and
 * starts out on the monitor's /dev/null. */
static int open_stdio(const struct launch_plan *plan, struct stdio_fds *s, struct error *err)
{
    int pair[2];
    if (plan->tty)
        return 0;
    if (pipe2(pair, O_CLOEXEC) < 0)
        return error_errno(err, errno, "stdout pipe");
    s->stdout_read = pair[0];
    s->stdout_write = pair[1];
    if (pipe2(pair, O_CLOEXEC) < 0)
        return error_errno(err, errno, "stderr pipe");
    s->stderr_read = pair[0];
    s->stderr_write = pair[1];
    if (plan->stdin_wanted) {
        if (pipe2(pair, O_CLOEXEC) < 0)
            return error_errno(err, errno, "stdin pipe");
        s->stdin_read = pair[0];
        s->stdin_write = pair[1];
    }
    return 0;
}

/* Clone the child, entering a pid namespace to join for the clone only
 * (setns(CLONE_NEWPID) affects children, not the caller). */
static pid_t clone_into(const struct launch_plan *plan, const int *namespace_fds, int *pidfd, struct error *err)
{
    uint64_t flags = 0;
    int join_pid_fd = -1;
    for (size_t i = 0; i < plan->namespace_count; i++) {
        const struct plan_namespace *ns = &plan->namespaces[i];
        if (!ns->join_path && ns->clone_flag != CLONE_NEWCGROUP)
            flags |= (uint64_t)ns->clone_flag; /* cgroup ns: the child unshares after joining its cgroups */
        if (ns->join_path && ns->clone_flag == CLONE_NEWPID)
            join_pid_fd = namespace_fds[i];
    }
    int own_pid_ns = -1;
    if (join_pid_fd >= 0) {
        own_pid_ns = open("/proc/self/ns/pid", O_RDONLY | O_CLOEXEC);
        if (own_pid_ns < 0)
            return error_errno(err, errno, "open /proc/self/ns/pid");
        if (setns(join_pid_fd, CLONE_NEWPID) < 0) {
            int saved = errno;
            close(own_pid_ns);
            return error_errno(err, saved, "enter the pid namespace to join");
        }
    }
    pid_t pid = clone_process(flags, pidfd);
    if (pid == 0)
        return 0;
    int saved = errno;
    if (own_pid_ns >= 0) {
        if (setns(own_pid_ns, CLONE_NEWPID) < 0) {
            /* Every later child would land in the wrong pid namespace. */
            fprintf(stderr, "fatal: cannot return to the monitor's pid namespace: %s\n", strerror(errno));
            abort();
        }
        close(own_pid_ns);
    }
    if (pid < 0)
        return error_errno(err, saved, "clone (flags %#llx)", (unsigned long long)flags);
    return pid;
}

static struct container *container_new(const char *id, const struct log_target *log)
{
    struct container *c = calloc(1, sizeof(*c));
    if (!c)
        return NULL;
    c->pidfd = c->log_fd = c->stdin_fd = -1;
    c->stdout_watch = (struct watch){WATCH_OUTPUT, -1, c, LOG_STDOUT};
    c->stderr_watch = (struct watch){WATCH_OUTPUT, -1, c, LOG_STDERR};
    c->sync_watch = (struct watch){WATCH_SYNC, -1, c, LOG_STDOUT};
    c->stdin_watch = (struct watch){WATCH_STDIN, -1, c, LOG_STDOUT};
    c->id = strdup(id);
    c->log_path = strdup(log->path);
    if (!c->id || !c->log_path || (log->dir && !(c->log_dir = strdup(log->dir)))) {
        container_free(c);
        return NULL;
    }
    return c;
}

/* What a container keeps of its plan, native or OCI alike: output and stdin
 * handling, where KILL with ALL looks, and the OOM counter's baseline. */
/* `cgroup_later`: the cgroup is being made while the child sets up (a
 * gate), so the OOM counter's baseline is read at SYNC_READY instead. */
static int container_take_plan(struct monitor *monitor, struct container *c, const struct launch_plan *plan,
                               bool cgroup_later, struct error *err)
{
    c->log_line_max = plan->log_line_max;
    c->tty = plan->tty;
    c->stdin_wanted = plan->stdin_wanted;
    if (plan->cgroup_procs_count && !(c->kill_cgroup_procs = strdup(plan->cgroup_procs[0])))
        return error_errno(err, ENOMEM, "create container %s", c->id);
    if (plan->oom_counter_path) {
        if (!(c->oom_counter_path = strdup(plan->oom_counter_path)))
            return error_errno(err, ENOMEM, "create container %s", c->id);
        if (!cgroup_later && oom_watch_start(monitor, c, err) < 0)
            return -1;
    }
    return 0;
}

/* The log file beneath its directory (struct log_target). O_NONBLOCK until it is known to be a regular
 * file: a FIFO there would block the monitor's loop on open, and then on every write. */
static int open_log_beneath(const struct container *c, struct error *err)
{
    int dir_fd = open(c->log_dir, O_PATH | O_DIRECTORY | O_CLOEXEC);
    if (dir_fd < 0)
        return error_errno(err, errno, "open log directory %s", c->log_dir);
    int fd = -1;
    for (int attempt = 0; attempt < LOG_OPEN_ATTEMPTS; attempt++) {
        /* EAGAIN: a concurrent rename might have let ".." race; the kernel asks for a retry. */
        fd = sys_openat2(dir_fd, c->log_path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC | O_NOCTTY | O_NONBLOCK,
                         0640, RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS);
        if (fd >= 0 || errno != EAGAIN)
            break;
    }
    int saved = errno;
    close(dir_fd);
    if (fd < 0)
        return error_errno(err, saved, "open log file %s beneath %s%s", c->log_path, c->log_dir,
                           saved == EXDEV || saved == ELOOP ? " (it leads out of the log directory)" : "");
    struct stat st;
    if (fstat(fd, &st) < 0) {
        saved = errno;
        close(fd);
        return error_errno(err, saved, "stat log file %s beneath %s", c->log_path, c->log_dir);
    }
    if (!S_ISREG(st.st_mode)) {
        close(fd);
        return error_plain(err, EINVAL, "log file %s beneath %s is not a regular file", c->log_path, c->log_dir);
    }
    int flags = fcntl(fd, F_GETFL);
    if (flags < 0 || fcntl(fd, F_SETFL, flags & ~O_NONBLOCK) < 0) {
        saved = errno;
        close(fd);
        return error_errno(err, saved, "clear O_NONBLOCK on log file %s", c->log_path);
    }
    return fd;
}

/* A new descriptor of the container's log file, created if missing. */
static int open_log_file(const struct container *c, struct error *err)
{
    if (c->log_dir)
        return open_log_beneath(c, err);
    int fd = open(c->log_path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC | O_NOCTTY, 0640);
    if (fd < 0)
        return error_errno(err, errno, "open log file %s", c->log_path);
    return fd;
}

/* The CRI log, opened (created) in its own step: natively after the clone. */
static int open_log(struct container *c, struct error *err)
{
    c->log_fd = open_log_file(c, err);
    return c->log_fd < 0 ? -1 : 0;
}

/* Make a created container known to the monitor (native and OCI alike). */
static void container_link(struct monitor *monitor, struct container *c)
{
    c->next = monitor->containers;
    monitor->containers = c;
    /* Never block on a full pipe: the container's stdin is the daemon's business. */
    if (c->stdin_fd >= 0 && set_nonblocking(c->stdin_fd, true) < 0)
        fprintf(stderr, "container %s: stdin O_NONBLOCK: %s\n", c->id, strerror(errno));
}

/* Checks every CREATE makes before doing anything: a valid, unused id, a
 * monitor that is not shutting down, and a plan that decodes. On failure the
 * error reply is written and false returned. */
static bool create_request_acceptable(struct monitor *monitor, uint32_t request_id, const char *id,
                                      const uint8_t *plan_data, size_t plan_length, bool head_only,
                                      struct launch_plan *plan, struct buffer *reply)
{
    struct error err = {0};
    if (!container_id_valid(id)) {
        reply_start(reply, REQUEST_CREATE, request_id, EINVAL, "invalid container id");
        return false;
    }
    if (container_find(monitor, id)) {
        error_plain(&err, EEXIST, "container %s already exists", id);
        reply_start(reply, REQUEST_CREATE, request_id, err.code, err.message);
        return false;
    }
    if (monitor->stopping) {
        reply_start(reply, REQUEST_CREATE, request_id, ESHUTDOWN, "the pod monitor is shutting down");
        return false;
    }
    if ((head_only ? plan_decode_head : plan_decode)(plan_data, plan_length, plan, &err) < 0) {
        reply_start(reply, REQUEST_CREATE, request_id, err.code, err.message);
        return false;
    }
    return true;
}

int container_create(struct monitor *monitor, struct connection *connection, uint32_t request_id, const char *id,
                     const uint8_t *plan_data, size_t plan_length, const struct log_target *log, int *cgroup_gate,
                     bool plan_follows, struct buffer *reply)
{
    int gate_fd = *cgroup_gate;
    *cgroup_gate = -1;
    struct error err = {0};
    struct launch_plan plan;
    struct stdio_fds stdio = {-1, -1, -1, -1, -1, -1};
    int namespace_fds[8];
    int sync_pair[2] = {-1, -1};
    struct container *c = NULL;
    for (size_t i = 0; i < 8; i++)
        namespace_fds[i] = -1;

    if (!create_request_acceptable(monitor, request_id, id, plan_data, plan_length, plan_follows, &plan, reply)) {
        close_fd(&gate_fd);
        return 0;
    }
    c = container_new(id, log);
    if (!c) {
        error_errno(&err, ENOMEM, "create container %s", id);
        goto fail;
    }
    if (container_take_plan(monitor, c, &plan, gate_fd >= 0, &err) < 0)
        goto fail;
    if (open_stdio(&plan, &stdio, &err) < 0 || open_namespace_fds(&plan, namespace_fds, &err) < 0)
        goto fail;
    if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sync_pair) < 0) {
        error_errno(&err, errno, "sync socketpair");
        goto fail;
    }

    int pidfd = -1;
    pid_t pid = clone_into(&plan, namespace_fds, &pidfd, &err);
    if (pid == 0) {
        struct child_context context = {
            .plan = &plan,
            .sync_fd = sync_pair[1],
            /* The monitor's fds 0 and 1 are /dev/null. */
            .stdin_fd = stdio.stdin_read >= 0 ? stdio.stdin_read : 0,
            .stdout_fd = stdio.stdout_write >= 0 ? stdio.stdout_write : 1,
            .stderr_fd = stdio.stderr_write >= 0 ? stdio.stderr_write : 1,
            .cgroup_gate_fd = gate_fd,
            .plan_follows = plan_follows,
        };
        memcpy(context.namespace_fds, namespace_fds, sizeof(namespace_fds));
        container_child_main(&context);
    }
    if (pid < 0)
        goto fail;

    close_fd(&gate_fd); /* the child holds it */
    c->pid = pid;
    c->pidfd = pidfd;
    c->status = CONTAINER_CREATING;
    c->created_at = realtime_ns();
    close_fd(&sync_pair[1]);
    close_fd(&stdio.stdin_read);
    close_fd(&stdio.stdout_write);
    close_fd(&stdio.stderr_write);
    close_namespace_fds(namespace_fds);
    c->sync_watch.fd = sync_pair[0];
    c->stdout_watch.fd = stdio.stdout_read;
    c->stderr_watch.fd = stdio.stderr_read;
    c->stdin_fd = stdio.stdin_write;
    stdio.stdout_read = stdio.stderr_read = stdio.stdin_write = -1;
    plan_free(&plan);
    container_link(monitor, c);
    /* The log after the clone: creating it on the node's disk need not hold the child back. */
    bool log_ready = open_log(c, &err) == 0;
    struct watch *watches[] = {&c->sync_watch, &c->stdout_watch, &c->stderr_watch};
    for (size_t i = 0; i < 3 && log_ready; i++) {
        if (watches[i]->fd < 0)
            continue;
        if (set_nonblocking(watches[i]->fd, true) < 0 || watch_add(monitor, watches[i], EPOLLIN) < 0) {
            error_errno(&err, errno, "watch container %s", id);
            log_ready = false;
        }
    }
    if (!log_ready) {
        signal_container(c, SIGKILL);
        c->failed_create = true;
        reply_start(reply, REQUEST_CREATE, request_id, err.code, err.message);
        return 0; /* reaped and forgotten, as any failed create */
    }
    c->pending = (struct pending_reply){true, REQUEST_CREATE, request_id, connection->serial};
    connection_set_busy(monitor, connection, true);
    return 1;

fail:
    close_fd(&gate_fd);
    close_fd(&sync_pair[0]);
    close_fd(&sync_pair[1]);
    close_stdio(&stdio);
    close_namespace_fds(namespace_fds);
    if (c)
        container_free(c);
    plan_free(&plan);
    reply_start(reply, REQUEST_CREATE, request_id, err.code ? err.code : EIO, err.message);
    return 0;
}

int container_start(struct monitor *monitor, struct connection *connection, uint32_t request_id,
                    struct container *container, struct buffer *reply)
{
    struct error err;
    if (container->status == CONTAINER_CREATING && !container->oci && !container->queued_start.active) {
        /* The daemon need not wait for the CREATE reply: GO goes out the
         * moment the child reports ready (run_queued_start). */
        container->queued_start = (struct pending_reply){true, REQUEST_START, request_id, connection->serial};
        connection_set_busy(monitor, connection, true);
        return 1;
    }
    if (container->status != CONTAINER_CREATED || container->starting) {
        error_plain(&err, EINVAL, "container %s cannot be started: it is %s", container->id,
                    container->starting                               ? "starting"
                    : container->status == CONTAINER_CREATING         ? "still being created"
                    : container->status == CONTAINER_RUNNING          ? "running"
                                                                      : "exited");
        reply_start(reply, REQUEST_START, request_id, err.code, err.message);
        return 0;
    }
    if (container->oci) {
        if (oci_start(container->oci, container->id, &err) < 0) {
            reply_start(reply, REQUEST_START, request_id, err.code, err.message);
            return 0;
        }
        container->started_at = realtime_ns();
        container->status = CONTAINER_RUNNING;
        reply_start(reply, REQUEST_START, request_id, 0, NULL);
        return 0;
    }
    int released = send_go(container, &err);
    if (released != 0) {
        reply_start(reply, REQUEST_START, request_id, released < 0 ? err.code : 0, released < 0 ? err.message : NULL);
        return 0;
    }
    container->pending = (struct pending_reply){true, REQUEST_START, request_id, connection->serial};
    connection_set_busy(monitor, connection, true);
    return 1;
}

/* ------------------------------------------------------- other requests */

int container_kill(struct container *container, int signal, bool all, struct error *err)
{
    if (container->status == CONTAINER_EXITED)
        return error_plain(err, ESRCH, "container %s is not running", container->id);
    if (signal <= 0 || signal >= NSIG)
        return error_plain(err, EINVAL, "invalid signal %d", signal);
    if (all && container->kill_cgroup_procs) {
        /* Everything in the container's cgroup, as runc kill --all does. */
        char *text;
        if (read_small_file(container->kill_cgroup_procs, 4 << 20, &text, NULL, err) < 0)
            return -1;
        for (char *p = text; *p;) {
            char *end;
            long pid = strtol(p, &end, 10);
            if (end == p)
                break;
            if (pid > 0 && kill((pid_t)pid, signal) < 0 && errno != ESRCH) {
                int saved = errno;
                free(text);
                return error_errno(err, saved, "kill %ld (signal %d)", pid, signal);
            }
            p = end;
            while (*p == '\n')
                p++;
        }
        free(text);
    }
    if (signal_container(container, signal) < 0 && errno != ESRCH)
        return error_errno(err, errno, "kill container %s (pid %d, signal %d)", container->id, (int)container->pid,
                           signal);
    return 0;
}

int container_reopen_log(struct container *container, struct error *err)
{
    int fd = open_log_file(container, err);
    if (fd < 0)
        return error_context(err, "reopen the log");
    close_fd(&container->log_fd);
    container->log_fd = fd;
    return 0;
}

void container_put_state(const struct container *c, struct buffer *reply)
{
    buffer_put_string(reply, FIELD_CONTAINER_ID, c->id);
    buffer_put_u32(reply, FIELD_PID, (uint32_t)c->pid);
    enum container_status reported = c->status;
    buffer_put_u32(reply, FIELD_STATE, (uint32_t)reported);
    buffer_put_u64(reply, FIELD_CREATED_AT, c->created_at);
    buffer_put_u64(reply, FIELD_STARTED_AT, c->started_at);
    if (c->status == CONTAINER_EXITED) {
        buffer_put_i32(reply, FIELD_EXIT_CODE, c->exit_code);
        buffer_put_u32(reply, FIELD_EXIT_SIGNAL, (uint32_t)c->exit_signal);
        buffer_put_u64(reply, FIELD_FINISHED_AT, c->finished_at);
        buffer_put_u32(reply, FIELD_OOM_KILLED, c->oom_killed ? 1 : 0);
    }
    if (c->child_error)
        buffer_put_string(reply, FIELD_MESSAGE, c->child_error);
}

/* --------------------------------------------------------- oci create */

void oci_runtime_free(struct oci_runtime *oci)
{
    if (!oci)
        return;
    free(oci->path);
    free(oci->root);
    for (size_t i = 0; oci->global_args[i]; i++)
        free(oci->global_args[i]);
    free(oci);
}

int container_create_oci(struct monitor *monitor, uint32_t request_id, const char *id, const uint8_t *plan_data,
                         size_t plan_length, const struct log_target *log, const char *runtime, const char *root,
                         const char *bundle, bool hide_cgroup2, const char *const *global_args,
                         struct buffer *reply)
{
    struct error err = {0};
    struct launch_plan plan;
    struct stdio_fds stdio = {-1, -1, -1, -1, -1, -1};
    struct container *c = NULL;
    bool runtime_created = false;

    /* The plan is the same as for the native launcher; the runtime reads the
     * bundle's config.json, so only stdio, log and cgroup fields are used here. */
    if (!create_request_acceptable(monitor, request_id, id, plan_data, plan_length, false, &plan, reply))
        return 0;
    c = container_new(id, log);
    if (!c || !(c->oci = calloc(1, sizeof(*c->oci))) || !(c->oci->path = strdup(runtime)) ||
        !(c->oci->root = strdup(root))) {
        error_errno(&err, ENOMEM, "create container %s", id);
        goto fail;
    }
    c->oci->hide_cgroup2 = hide_cgroup2;
    for (size_t i = 0; global_args[i] && i < OCI_GLOBAL_ARGS_MAX; i++) {
        if (!(c->oci->global_args[i] = strdup(global_args[i]))) {
            error_errno(&err, ENOMEM, "create container %s", id);
            goto fail;
        }
    }
    /* The OOM baseline is read once the runtime has made the container: under the systemd driver
     * its cgroup (a scope) exists only then. */
    if (container_take_plan(monitor, c, &plan, true, &err) < 0 || open_log(c, &err) < 0)
        goto fail;
    if (open_stdio(&plan, &stdio, &err) < 0)
        goto fail;
    if (stdio.stderr_read >= 0 && set_nonblocking(stdio.stderr_read, true) < 0) {
        error_errno(&err, errno, "stderr pipe O_NONBLOCK");
        goto fail;
    }
    /* Without a terminal the runtime hands its own stdio to the container, so
     * a failing runtime's complaint is what its stderr pipe holds. */
    pid_t pid;
    int terminal = -1;
    runtime_created = true;
    if (oci_create(c->oci, id, bundle, monitor->pod_dir, plan.tty, stdio.stdin_read >= 0 ? stdio.stdin_read : 0,
                   stdio.stdout_write >= 0 ? stdio.stdout_write : 1, stdio.stderr_write,
                   stdio.stderr_read, &pid, &terminal, &err) < 0)
        goto fail;
    c->pid = pid;
    if (c->oom_counter_path && oom_watch_start(monitor, c, &err) < 0) {
        if (terminal >= 0)
            close(terminal);
        goto fail;
    }
    /* The runtime has exited: the init is our child now (we are a subreaper). */
    c->pidfd = sys_pidfd_open(pid, 0);
    if (c->pidfd < 0) {
        error_errno(&err, errno, "pidfd_open %d (container %s)", (int)pid, id);
        if (terminal >= 0)
            close(terminal);
        goto fail;
    }
    c->status = CONTAINER_CREATED;
    c->created_at = realtime_ns();
    close_fd(&stdio.stdin_read);
    close_fd(&stdio.stdout_write);
    close_fd(&stdio.stderr_write);
    if (terminal >= 0) {
        c->stdout_watch.fd = terminal;
        if (plan.stdin_wanted && (c->stdin_fd = fcntl(terminal, F_DUPFD_CLOEXEC, 3)) < 0)
            fprintf(stderr, "container %s: dup terminal for stdin: %s\n", id, strerror(errno));
    } else {
        c->stdout_watch.fd = stdio.stdout_read;
        c->stderr_watch.fd = stdio.stderr_read;
        c->stdin_fd = stdio.stdin_write;
        stdio.stdout_read = stdio.stderr_read = stdio.stdin_write = -1;
    }
    plan_free(&plan);
    container_link(monitor, c);
    struct watch *watches[] = {&c->stdout_watch, &c->stderr_watch};
    for (size_t i = 0; i < 2; i++) {
        if (watches[i]->fd < 0)
            continue;
        if (set_nonblocking(watches[i]->fd, true) < 0 || watch_add(monitor, watches[i], EPOLLIN) < 0) {
            error_errno(&err, errno, "watch container %s", id);
            signal_container(c, SIGKILL);
            c->failed_create = true;
            struct error ignored;
            oci_delete(c->oci, id, &ignored);
            reply_start(reply, REQUEST_CREATE, request_id, err.code, err.message);
            return 0; /* reaped like any other death */
        }
    }
    reply_start(reply, REQUEST_CREATE, request_id, 0, NULL);
    buffer_put_u32(reply, FIELD_PID, (uint32_t)c->pid);
    return 0;

fail:
    close_stdio(&stdio);
    if (runtime_created && c && c->oci) {
        /* Whatever half of the container the runtime made (state dir, cgroup, init). */
        struct error ignored;
        if (c->pid > 0)
            kill(c->pid, SIGKILL);
        oci_delete(c->oci, id, &ignored);
    }
    if (c)
        container_free(c);
    plan_free(&plan);
    reply_start(reply, REQUEST_CREATE, request_id, err.code ? err.code : EIO, err.message);
    return 0;
}
