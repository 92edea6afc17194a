/*
 * `crio-fast-monitor exec --plan-fd N --status-fd M`: run one command inside
 * an existing container (ExecSync, Exec). Not the pod monitor: a short-lived
 * helper the daemon starts per exec, with the command's stdin/stdout/stderr
 * as its own fds 0-2.
 *
 * The helper reads the plan, joins the container's cgroups and namespaces
 * (the pid namespace applies to children, hence the fork), forks the command
 * (which takes the container's AppArmor profile for its exec, drops
 * privileges, applies seccomp and execs), waits for it, and
 * reports on the status fd exactly one line:
 *
 *     exit <code>                the command exited
 *     signal <number>            the command was killed by a signal
 *     error <errno> <message>    the helper failed; the command never ran
 *
 * Its own exit status mirrors the line (code, 128+signal, 126/127/1 for an
 * error), but the status line is what tells the two apart.
 *
 * With TTY in the plan (`--console-fd FD` is then required, an AF_UNIX
 * socket), the helper opens a pseudo terminal on the container's devpts once
 * it is in the container's mount namespace; the command gets a new session
 * with the peer as controlling terminal and fds 0-2, and the master goes to
 * the daemon as one byte 'T' with SCM_RIGHTS on the console fd, right after
 * the fork. The helper keeps no copy of either end.
 */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "monitor.h"

#define EXEC_PLAN_MAX (4u << 20)
#define EXEC_USAGE "crio-fast-monitor exec --plan-fd FD --status-fd FD [--console-fd FD]"

static int status_fd = -1;
static int console_fd = -1;
static void report_status(const char *line)
{
    if (status_fd >= 0 && write_all(status_fd, line, strlen(line)) < 0)
        fprintf(stderr, "crio-fast-monitor exec: write status: %s\n", strerror(errno));
}

static int exit_code_for_error(int code)
{
    return code == ENOENT ? 127 : code == EACCES || code == ENOEXEC || code == EPERM ? 126 : 1;
}

__attribute__((noreturn)) static void fail(const struct error *err)
{
    char line[ERROR_MESSAGE_MAX + 32];
    snprintf(line, sizeof(line), "error %d %s\n", err->code, err->message);
    report_status(line);
    fprintf(stderr, "crio-fast-monitor exec: %s\n", err->message);
    _exit(exit_code_for_error(err->code));
}

static int parse_fd_option(const char *value, int *out)
{
    uint64_t number;
    if (parse_u64(value, &number) < 0 || number < 3 || number > INT_MAX)
        return -1;
    *out = (int)number;
    return 0;
}

/* In the forked child: become the command. Errors go to `error_fd`.
 * `terminal` (or -1) becomes the controlling terminal and fds 0-2. */
__attribute__((noreturn)) static void run_command(const struct launch_plan *plan, pid_t helper, int error_fd,
                                                  int terminal)
{
    struct error err = {0};
    if (reset_signals_for_exec(&err) < 0)
        goto failed;
    /* If the helper is killed (timeout), the command goes with it. */
    if (prctl(PR_SET_PDEATHSIG, SIGKILL, 0, 0, 0) < 0) {
        error_errno(&err, errno, "prctl(PR_SET_PDEATHSIG)");
        goto failed;
    }
    /* The helper may already be gone (then we were reparented). Seen from
     * a joined pid namespace the living helper's pid reads as 0. */
    pid_t parent = getppid();
    if (parent != helper && parent != 0)
        _exit(1);
    if (terminal >= 0) {
        if (setsid() < 0) {
            error_errno(&err, errno, "setsid");
            goto failed;
        }
        if (make_controlling_terminal(terminal, &err) < 0)
            goto failed;
        close(terminal);
    } else if (setpgid(0, 0) < 0) {
        /* A process group of its own: a kill reaches what the command starts, too. */
        error_errno(&err, errno, "setpgid");
        goto failed;
    }
    umask(plan->has_umask ? plan->umask : 022);
    if (apply_rlimits(plan, &err) < 0)
        goto failed;
    /* The container's profile, through its /proc (we are in its mount and
     * pid namespaces), before the credentials and the filter. */
    if (apparmor_change_onexec(plan, &err) < 0)
        goto failed;
    bool early_seccomp = seccomp_needs_early_install(plan);
    if (early_seccomp && install_seccomp(plan, &err) < 0)
        goto failed;
    if (apply_credentials(plan, &err) < 0)
        goto failed;
    if (plan->cwd && chdir(plan->cwd) < 0) {
        error_errno(&err, errno, "chdir %s", plan->cwd);
        goto failed;
    }
    char executable[4096];
    if (resolve_executable(plan, executable, sizeof(executable), &err) < 0)
        goto failed;
    if (!early_seccomp && install_seccomp(plan, &err) < 0)
        goto failed;
    execve(executable, (char *const *)plan->argv, (char *const *)plan->env);
    error_errno(&err, errno, "exec: %s", executable);
failed:;
    char packet[ERROR_MESSAGE_MAX + 16];
    int length = snprintf(packet, sizeof(packet), "%d %s", err.code, err.message);
    if (length > 0)
        (void)write_all(error_fd, packet, (size_t)length);
    _exit(exit_code_for_error(err.code));
}

/* SIGKILL the command and what it started: its process group (its session with a terminal), or the
 * command alone before it has one. */
static void kill_command(pid_t child)
{
    if (kill(-child, SIGKILL) == 0)
        return;
    if (errno != ESRCH)
        fprintf(stderr, "crio-fast-monitor exec: kill process group %d: %s\n", (int)child, strerror(errno));
    if (kill(child, SIGKILL) < 0 && errno != ESRCH)
        fprintf(stderr, "crio-fast-monitor exec: kill %d: %s\n", (int)child, strerror(errno));
}

static int enter_container(const struct launch_plan *plan, struct error *err)
{
    int fds[8];
    for (size_t i = 0; i < plan->namespace_count; i++) {
        if (!plan->namespaces[i].join_path)
            return error_plain(err, EINVAL, "exec plans only join namespaces (%s has no path)",
                               namespace_name(plan->namespaces[i].clone_flag));
        fds[i] = open(plan->namespaces[i].join_path, O_RDONLY | O_CLOEXEC);
        if (fds[i] < 0) {
            int saved = errno;
            for (size_t j = 0; j < i; j++)
                close(fds[j]);
            return error_errno(err, saved, "open %s", plan->namespaces[i].join_path);
        }
    }
    /* Cgroups by host path first; the children inherit them. */
    int rc = write_cgroup_files(plan, err);
    /* The mount namespace after the others: setns into it also moves our
     * root. The user namespace last: once in it, the helper has no
     * privilege over the namespaces the node's user namespace owns (the
     * container's mount namespace among them). */
    for (int pass = 0; rc == 0 && pass < 3; pass++) {
        for (size_t i = 0; i < plan->namespace_count; i++) {
            int flag = plan->namespaces[i].clone_flag;
            int wanted_pass = flag == CLONE_NEWUSER ? 2 : flag == CLONE_NEWNS ? 1 : 0;
            if (wanted_pass != pass)
                continue;
            if (setns(fds[i], plan->namespaces[i].clone_flag) < 0) {
                rc = error_errno(err, errno, "join %s namespace %s", namespace_name(plan->namespaces[i].clone_flag),
                                 plan->namespaces[i].join_path);
                break;
            }
        }
    }
    for (size_t i = 0; i < plan->namespace_count; i++)
        close(fds[i]);
    return rc;
}

int exec_main(int argc, char **argv)
{
    struct error err = {0};
    int plan_fd = -1;
    for (int i = 2; i < argc; i += 2) {
        if (i + 1 >= argc) {
            fprintf(stderr, "crio-fast-monitor exec: option %s needs a value\n", argv[i]);
            return 2;
        }
        int *target = strcmp(argv[i], "--plan-fd") == 0     ? &plan_fd
                      : strcmp(argv[i], "--status-fd") == 0  ? &status_fd
                      : strcmp(argv[i], "--console-fd") == 0 ? &console_fd
                                                             : NULL;
        if (!target || parse_fd_option(argv[i + 1], target) < 0) {
            fprintf(stderr, "usage: %s\n", EXEC_USAGE);
            return 2;
        }
    }
    if (plan_fd < 0 || status_fd < 0) {
        fprintf(stderr, "usage: %s\n", EXEC_USAGE);
        return 2;
    }
    if (fcntl(status_fd, F_SETFD, FD_CLOEXEC) < 0 || fcntl(plan_fd, F_SETFD, FD_CLOEXEC) < 0 ||
        (console_fd >= 0 && fcntl(console_fd, F_SETFD, FD_CLOEXEC) < 0)) {
        error_errno(&err, errno, "status, plan or console fd");
        fail(&err);
    }
    uint8_t *plan_data;
    size_t plan_length;
    if (read_fd_to_end(plan_fd, EXEC_PLAN_MAX, &plan_data, &plan_length, &err) < 0) {
        error_context(&err, "read exec plan");
        fail(&err);
    }
    close(plan_fd);
    struct launch_plan plan;
    if (plan_decode(plan_data, plan_length, &plan, &err) < 0)
        fail(&err);
    if (plan.rootfs || plan.mount_count) {
        error_plain(&err, EINVAL, "an exec plan has no rootfs or mounts");
        fail(&err);
    }
    if (plan.tty != (console_fd >= 0)) {
        error_plain(&err, EINVAL, plan.tty ? "a TTY exec needs --console-fd" : "--console-fd without TTY in the plan");
        fail(&err);
    }
    if (enter_container(&plan, &err) < 0)
        fail(&err);
    /* Now in the container's mount namespace: its /dev/ptmx. */
    int master = -1, terminal = -1;
    if (plan.tty) {
        if (open_pseudo_terminal(&master, &terminal, &err) < 0)
            fail(&err);
        /* Sized before the command can ask (stty size right at its start). */
        if (plan.tty_size && set_terminal_size(master, plan.tty_size, &err) < 0)
            fail(&err);
        /* The command may not be root: its terminal should be its own. */
        if (plan.has_uid && fchown(terminal, plan.uid, (gid_t)-1) < 0) {
            error_errno(&err, errno, "chown the pseudo terminal to uid %u", plan.uid);
            fail(&err);
        }
    }

    int error_pipe[2];
    if (pipe2(error_pipe, O_CLOEXEC) < 0) {
        error_errno(&err, errno, "pipe");
        fail(&err);
    }
    /* SIGTERM (the daemon's timeout, or its caller gone) kills the command
     * and still reaps it here: a command orphaned into the container's pid
     * namespace would keep that namespace's init from finishing its exit
     * until someone outside reaps it. Blocked from before the fork on, and
     * taken with SIGCHLD by sigwaitinfo, so none is lost between a check and
     * a wait. */
    sigset_t awaited;
    sigemptyset(&awaited);
    sigaddset(&awaited, SIGTERM);
    sigaddset(&awaited, SIGINT);
    sigaddset(&awaited, SIGCHLD);
    if (sigprocmask(SIG_BLOCK, &awaited, NULL) < 0) {
        error_errno(&err, errno, "sigprocmask");
        fail(&err);
    }
    pid_t helper = getpid();
    pid_t child = fork();
    if (child < 0) {
        error_errno(&err, errno, "fork");
        fail(&err);
    }
    if (child == 0) {
        close(error_pipe[0]);
        if (master >= 0)
            close(master);
        run_command(&plan, helper, error_pipe[1], terminal);
    }
    close(error_pipe[1]);
    /* The child makes its group too; whichever comes first, a kill of the group finds it. EACCES: the
     * child has exec'd already, in its group. With a terminal its session is its group. */
    if (!plan.tty && setpgid(child, child) < 0 && errno != EACCES && errno != ESRCH)
        fprintf(stderr, "crio-fast-monitor exec: setpgid %d: %s\n", (int)child, strerror(errno));
    if (plan.tty) {
        /* Before anything can fail below: whatever happens next, the daemon
         * gets the terminal, and EIO on it once the command is gone. */
        close(terminal);
        int sent = send_fd(console_fd, 'T', master, &err);
        close(master);
        close(console_fd);
        if (sent < 0) {
            error_context(&err, "send the terminal on the console fd");
            kill(child, SIGKILL);
            while (waitpid(child, NULL, 0) < 0 && errno == EINTR)
                ;
            fail(&err);
        }
    }
    /* EOF without data: the command is running (execve closed the pipe). */
    uint8_t *child_error;
    size_t child_error_length;
    if (read_fd_to_end(error_pipe[0], ERROR_MESSAGE_MAX + 16, &child_error, &child_error_length, &err) < 0) {
        error_context(&err, "read the command's start-up result");
        fail(&err);
    }
    close(error_pipe[0]);
    int status;
    pid_t waited;
    if (child_error_length > 0) {
        do {
            waited = waitpid(child, &status, 0);
        } while (waited < 0 && errno == EINTR);
        char *space = strchr((char *)child_error, ' ');
        int code = atoi((char *)child_error);
        error_plain(&err, code > 0 ? code : EIO, "%s", space ? space + 1 : (char *)child_error);
        free(child_error);
        fail(&err);
    }
    free(child_error);

    /* The command's streams must reach EOF when the command is done, not
     * when this helper is: let go of our copies. */
    int null_fd = open("/dev/null", O_RDWR | O_CLOEXEC);
    if (null_fd >= 0) {
        for (int fd = 0; fd < 3; fd++)
            if (dup2(null_fd, fd) < 0)
                fprintf(stderr, "crio-fast-monitor exec: dup2 /dev/null to %d: %s\n", fd, strerror(errno));
        close(null_fd);
    } else {
        fprintf(stderr, "crio-fast-monitor exec: open /dev/null: %s\n", strerror(errno));
    }
    bool killed = false;
    for (;;) {
        waited = waitpid(child, &status, WNOHANG);
        if (waited != 0)
            break;
        int received = sigwaitinfo(&awaited, NULL);
        if (received < 0 && errno != EINTR) {
            fprintf(stderr, "crio-fast-monitor exec: sigwaitinfo: %s; killing the command\n", strerror(errno));
            kill_command(child);
            killed = true;
            while ((waited = waitpid(child, &status, 0)) < 0 && errno == EINTR)
                ;
            break;
        }
        if ((received == SIGTERM || received == SIGINT) && !killed) {
            kill_command(child);
            killed = true;
        }
    }
    if (waited < 0) {
        error_errno(&err, errno, "waitpid %d", (int)child);
        fail(&err);
    }
    char line[64];
    if (WIFSIGNALED(status)) {
        snprintf(line, sizeof(line), "signal %d\n", WTERMSIG(status));
        report_status(line);
        return 128 + WTERMSIG(status);
    }
    snprintf(line, sizeof(line), "exit %d\n", WEXITSTATUS(status));
    report_status(line);
    return WEXITSTATUS(status);
}
