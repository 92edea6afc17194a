/*
 * The container init, from clone to exec.
 *
 * The monitor clones this child into the namespaces the plan asks to create
 * (see server.c); the child then does everything else in a fixed order:
 *
 *   stdio, cgroups (it writes "0" to each cgroup.procs: itself), setns into
 *   joined namespaces, new cgroup namespace (after the cgroup move so its root
 *   is the container's cgroup), hostname, sysctls and oom_score_adj (through
 *   the host /proc, which still resolves to this process's namespaces),
 *   rootfs and mounts, pivot_root, rlimits, the AppArmor profile of the
 *   exec, capabilities and ids, no_new_privs; then it reports "ready" and
 *   blocks until START. After
 *   START: chdir, PATH lookup, seccomp (last), execve.
 *
 * Every failure is sent to the monitor as one 'E' packet on the sync socket,
 * naming what failed and the errno text, and the child exits.
 */
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <linux/capability.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <unistd.h>

#include "monitor.h"

#define CAP_SYS_ADMIN_BIT 21
#define DEFAULT_PATH "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

static void child_send(int sync_fd, char type, const char *text)
{
    char packet[ERROR_MESSAGE_MAX + 1];
    size_t length = text ? strlen(text) : 0;
    if (length > ERROR_MESSAGE_MAX)
        length = ERROR_MESSAGE_MAX;
    packet[0] = type;
    if (length)
        memcpy(packet + 1, text, length);
    /* Nothing more to do if the monitor is gone; the exit code tells. */
    (void)send(sync_fd, packet, length + 1, MSG_NOSIGNAL);
}

__attribute__((noreturn)) static void child_fail(int sync_fd, const struct error *err, int exit_code)
{
    child_send(sync_fd, SYNC_ERROR, err->message);
    _exit(exit_code);
}

int reset_signals_for_exec(struct error *err)
{
    /* Ignored dispositions and the blocked mask survive execve; the monitor
     * ignores SIGPIPE/SIGHUP, blocks what its signalfd reads, and the exec
     * helper catches SIGTERM/SIGINT. */
    static const int changed[] = {SIGPIPE, SIGHUP, SIGTERM, SIGINT};
    for (size_t i = 0; i < sizeof(changed) / sizeof(changed[0]); i++)
        if (signal(changed[i], SIG_DFL) == SIG_ERR)
            return error_errno(err, errno, "reset the disposition of signal %d", changed[i]);
    sigset_t empty;
    sigemptyset(&empty);
    if (sigprocmask(SIG_SETMASK, &empty, NULL) < 0)
        return error_errno(err, errno, "clear the signal mask");
    return 0;
}

int write_cgroup_files(const struct launch_plan *plan, struct error *err)
{
    for (size_t i = 0; i < plan->cgroup_write_count; i++)
        if (write_file(plan->cgroup_writes[i].key, plan->cgroup_writes[i].value, err) < 0)
            return error_context(err, "cgroup setting");
    /* "0" means "the writing process" in both cgroup v1 and v2. */
    for (size_t i = 0; i < plan->cgroup_procs_count; i++)
        if (write_file(plan->cgroup_procs[i], "0", err) < 0)
            return error_context(err, "join cgroup");
    return 0;
}

int apply_rlimits(const struct launch_plan *plan, struct error *err)
{
    for (size_t i = 0; i < plan->rlimit_count; i++) {
        const struct plan_rlimit *limit = &plan->rlimits[i];
        struct rlimit value = {.rlim_cur = limit->soft, .rlim_max = limit->hard};
        if (setrlimit((int)limit->resource, &value) < 0)
            return error_errno(err, errno, "setrlimit(%u, soft=%llu, hard=%llu)", limit->resource,
                               (unsigned long long)limit->soft, (unsigned long long)limit->hard);
    }
    return 0;
}

static int last_capability(void)
{
    /* Probe rather than read /proc, which may not be mounted any more:
     * PR_CAPBSET_READ fails with EINVAL past the kernel's last capability.
     * A binary search takes 6 calls where a walk up from 0 took 41. */
    int known = 0, unknown = 64; /* capability 0 always exists; bit 64 never */
    while (unknown - known > 1) {
        int probe = known + (unknown - known) / 2;
        if (prctl(PR_CAPBSET_READ, probe, 0, 0, 0) >= 0)
            known = probe;
        else
            unknown = probe;
    }
    return known;
}

static int drop_bounding_set(uint64_t keep, struct error *err)
{
    int last = last_capability();
    for (int cap = 0; cap <= last; cap++) {
        if (keep & (1ull << cap))
            continue;
        if (prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) < 0)
            return error_errno(err, errno, "drop capability %d from the bounding set", cap);
    }
    return 0;
}

static int set_capabilities(const struct launch_plan *plan, struct error *err)
{
    struct __user_cap_header_struct header = {.version = _LINUX_CAPABILITY_VERSION_3, .pid = 0};
    struct __user_cap_data_struct data[2];
    if (syscall(SYS_capget, &header, data) < 0)
        return error_errno(err, errno, "capget");
    uint64_t effective = (uint64_t)data[0].effective | ((uint64_t)data[1].effective << 32);
    uint64_t permitted = (uint64_t)data[0].permitted | ((uint64_t)data[1].permitted << 32);
    uint64_t inheritable = (uint64_t)data[0].inheritable | ((uint64_t)data[1].inheritable << 32);
    if (plan->has_caps[CAP_SET_EFFECTIVE])
        effective = plan->caps[CAP_SET_EFFECTIVE];
    if (plan->has_caps[CAP_SET_PERMITTED])
        permitted = plan->caps[CAP_SET_PERMITTED];
    if (plan->has_caps[CAP_SET_INHERITABLE])
        inheritable = plan->caps[CAP_SET_INHERITABLE];
    data[0].effective = (uint32_t)effective;
    data[1].effective = (uint32_t)(effective >> 32);
    data[0].permitted = (uint32_t)permitted;
    data[1].permitted = (uint32_t)(permitted >> 32);
    data[0].inheritable = (uint32_t)inheritable;
    data[1].inheritable = (uint32_t)(inheritable >> 32);
    if (syscall(SYS_capset, &header, data) < 0)
        return error_errno(err, errno, "capset(effective=%#llx, permitted=%#llx, inheritable=%#llx)",
                           (unsigned long long)effective, (unsigned long long)permitted,
                           (unsigned long long)inheritable);
    return 0;
}

static int set_ambient(uint64_t ambient, struct error *err)
{
    if (prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0) < 0)
        return error_errno(err, errno, "clear ambient capabilities");
    for (int cap = 0; cap < 64; cap++) {
        if (!(ambient & (1ull << cap)))
            continue;
        if (prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_RAISE, cap, 0, 0) < 0)
            return error_errno(err, errno, "raise ambient capability %d", cap);
    }
    return 0;
}

int apply_credentials(const struct launch_plan *plan, struct error *err)
{
    /* The bounding set can only be changed while CAP_SETPCAP is effective. */
    if (plan->has_caps[CAP_SET_BOUNDING] && drop_bounding_set(plan->caps[CAP_SET_BOUNDING], err) < 0)
        return -1;
    /* Keep the permitted set across the uid change; capset trims it below. */
    if (prctl(PR_SET_KEEPCAPS, 1, 0, 0, 0) < 0)
        return error_errno(err, errno, "prctl(PR_SET_KEEPCAPS)");
    if (plan->has_additional_gids && setgroups(plan->additional_gid_count, plan->additional_gids) < 0)
        return error_errno(err, errno, "setgroups (%zu groups)", plan->additional_gid_count);
    if (plan->has_gid && setresgid(plan->gid, plan->gid, plan->gid) < 0)
        return error_errno(err, errno, "setresgid(%u)", plan->gid);
    if (plan->has_uid && setresuid(plan->uid, plan->uid, plan->uid) < 0)
        return error_errno(err, errno, "setresuid(%u)", plan->uid);
    if (prctl(PR_SET_KEEPCAPS, 0, 0, 0, 0) < 0)
        return error_errno(err, errno, "prctl(PR_SET_KEEPCAPS, 0)");
    if ((plan->has_caps[CAP_SET_EFFECTIVE] || plan->has_caps[CAP_SET_PERMITTED] ||
         plan->has_caps[CAP_SET_INHERITABLE]) &&
        set_capabilities(plan, err) < 0)
        return -1;
    if (plan->has_caps[CAP_SET_AMBIENT] && set_ambient(plan->caps[CAP_SET_AMBIENT], err) < 0)
        return -1;
    if (plan->no_new_privs && prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) < 0)
        return error_errno(err, errno, "prctl(PR_SET_NO_NEW_PRIVS)");
    return 0;
}

bool seccomp_needs_early_install(const struct launch_plan *plan)
{
    /* Without no_new_privs the kernel wants CAP_SYS_ADMIN to install a
     * filter; if the process will not have it after the credential change,
     * the filter goes in before that change (it must then allow the setuid
     * family, capset, prctl and the sync socket calls). */
    if (!plan->seccomp || plan->no_new_privs)
        return false;
    bool keeps_sys_admin;
    if (plan->has_caps[CAP_SET_EFFECTIVE])
        keeps_sys_admin = plan->caps[CAP_SET_EFFECTIVE] & (1ull << CAP_SYS_ADMIN_BIT);
    else
        keeps_sys_admin = !plan->has_uid || plan->uid == 0;
    return !keeps_sys_admin;
}

int install_seccomp(const struct launch_plan *plan, struct error *err)
{
    if (!plan->seccomp)
        return 0;
    struct sock_fprog program = {
        .len = (unsigned short)plan->seccomp_instructions,
        .filter = (struct sock_filter *)(uintptr_t)plan->seccomp,
    };
    if (syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER, plan->seccomp_flags, &program) < 0)
        return error_errno(err, errno, "install seccomp filter (%zu instructions, flags %#x)",
                           plan->seccomp_instructions, plan->seccomp_flags);
    return 0;
}

static const char *plan_env_value(const struct launch_plan *plan, const char *name)
{
    size_t name_length = strlen(name);
    for (size_t i = 0; i < plan->env_count; i++)
        if (strncmp(plan->env[i], name, name_length) == 0 && plan->env[i][name_length] == '=')
            return plan->env[i] + name_length + 1;
    return NULL;
}

int resolve_executable(const struct launch_plan *plan, char *out, size_t out_size, struct error *err)
{
    const char *name = plan->argv[0];
    if (name[0] == '\0')
        return error_plain(err, ENOENT, "exec: empty command name");
    if (strchr(name, '/')) {
        if ((size_t)snprintf(out, out_size, "%s", name) >= out_size)
            return error_plain(err, ENAMETOOLONG, "exec: %s: path too long", name);
        return 0;
    }
    /* As runc does: look the name up in the container's own PATH. */
    const char *path = plan_env_value(plan, "PATH");
    if (!path)
        path = DEFAULT_PATH;
    int last_error = ENOENT;
    const char *dir = path;
    for (;;) {
        const char *end = strchr(dir, ':');
        size_t dir_length = end ? (size_t)(end - dir) : strlen(dir);
        int used = dir_length == 0 ? snprintf(out, out_size, "%s", name)
                                   : snprintf(out, out_size, "%.*s/%s", (int)dir_length, dir, name);
        if (used > 0 && (size_t)used < out_size) {
            struct stat st;
            if (stat(out, &st) == 0 && S_ISREG(st.st_mode)) {
                if (access(out, X_OK) == 0)
                    return 0;
                last_error = EACCES;
            }
        }
        if (!end)
            break;
        dir = end + 1;
    }
    if (last_error == EACCES)
        return error_plain(err, EACCES, "exec: \"%s\": found in $PATH but not executable: %s", name,
                           strerror(EACCES));
    return error_plain(err, ENOENT, "exec: \"%s\": executable file not found in $PATH: %s", name, strerror(ENOENT));
}

static int exit_code_for_exec_error(int code)
{
    return code == ENOENT ? 127 : 126;
}

/* Whether execve of a resolved path can be expected to get as far as the
 * binary: a regular file this process may execute. */
static bool executable_runnable(const char *path)
{
    struct stat st;
    return stat(path, &st) == 0 && S_ISREG(st.st_mode) && access(path, X_OK) == 0;
}

/* A failure after GO: START may have been answered already, so the reason
 * also goes to the container's stderr, that is its log. */
__attribute__((noreturn)) static void exec_fail(int sync_fd, const struct error *err, int exit_code)
{
    dprintf(STDERR_FILENO, "%s\n", err->message);
    child_fail(sync_fd, err, exit_code);
}

/* `owner`: with a user namespace, the mapped root's ids (the overlay's
 * upper owner), given to each directory made, as the container's root would
 * own what it made; NULL: left to the node's root. */
static int mkdir_all(const char *path, mode_t mode, const struct launch_plan *owner, struct error *err)
{
    char buffer[4096];
    if ((size_t)snprintf(buffer, sizeof(buffer), "%s", path) >= sizeof(buffer))
        return error_plain(err, ENAMETOOLONG, "mkdir %s: path too long", path);
    for (char *p = buffer + 1;; p++) {
        if (*p == '/' || *p == '\0') {
            char saved = *p;
            *p = '\0';
            if (mkdir(buffer, mode) == 0) {
                if (owner && lchown(buffer, owner->overlay_upper_uid, owner->overlay_upper_gid) < 0)
                    return error_errno(err, errno, "chown %s to %u:%u", buffer, owner->overlay_upper_uid,
                                       owner->overlay_upper_gid);
            } else if (errno != EEXIST) {
                return error_errno(err, errno, "mkdir %s", buffer);
            }
            *p = saved;
            if (saved == '\0')
                break;
        }
    }
    return 0;
}

static bool plan_creates(const struct launch_plan *plan, int clone_flag)
{
    for (size_t i = 0; i < plan->namespace_count; i++)
        if (plan->namespaces[i].clone_flag == clone_flag && !plan->namespaces[i].join_path)
            return true;
    return false;
}

static int join_namespaces(struct child_context *context, struct error *err)
{
    const struct launch_plan *plan = context->plan;
    /* The mount namespace last: after it, host paths no longer resolve
     * (the fds were opened by the monitor beforehand anyway). */
    for (int pass = 0; pass < 2; pass++) {
        for (size_t i = 0; i < plan->namespace_count; i++) {
            const struct plan_namespace *ns = &plan->namespaces[i];
            /* A pid namespace is entered by the monitor before clone; the
             * user namespace last of all, before the credentials. */
            if (!ns->join_path || ns->clone_flag == CLONE_NEWPID || ns->clone_flag == CLONE_NEWUSER)
                continue;
            if ((ns->clone_flag == CLONE_NEWNS) != (pass == 1))
                continue;
            if (setns(context->namespace_fds[i], ns->clone_flag) < 0)
                return error_errno(err, errno, "join %s namespace %s", namespace_name(ns->clone_flag),
                                   ns->join_path);
        }
    }
    return 0;
}

static int write_sysctls(const struct launch_plan *plan, struct error *err)
{
    for (size_t i = 0; i < plan->sysctl_count; i++) {
        char path[512];
        int used = snprintf(path, sizeof(path), "/proc/sys/%s", plan->sysctls[i].key);
        if (used < 0 || (size_t)used >= sizeof(path))
            return error_plain(err, ENAMETOOLONG, "sysctl %s: name too long", plan->sysctls[i].key);
        for (char *p = path + 10; *p; p++)
            if (*p == '.')
                *p = '/';
        if (write_file(path, plan->sysctls[i].value, err) < 0)
            return error_context(err, "sysctl %s", plan->sysctls[i].key);
    }
    return 0;
}

/* A lower oom_score_adj needs CAP_SYS_RESOURCE; without it keep the current
 * value and say so (a warning in the CREATE reply). */
static int set_oom_score_adj(int sync_fd, int value, struct error *err)
{
    char text[16];
    snprintf(text, sizeof(text), "%d", value);
    if (write_file("/proc/self/oom_score_adj", text, err) == 0)
        return 0;
    if (err->code != EACCES && err->code != EPERM)
        return -1;
    char *current = NULL;
    struct error read_err;
    if (read_small_file("/proc/self/oom_score_adj", 64, &current, NULL, &read_err) < 0) {
        *err = read_err;
        return -1;
    }
    char *newline = strchr(current, '\n');
    if (newline)
        *newline = '\0';
    char warning[256];
    snprintf(warning, sizeof(warning), "oom_score_adj %d refused (%s); kept %s", value, strerror(err->code), current);
    free(current);
    child_send(sync_fd, SYNC_WARNING, warning);
    return 0;
}

static int setup_stdio(struct child_context *context, struct error *err)
{
    if (dup2(context->stdin_fd, 0) < 0 || dup2(context->stdout_fd, 1) < 0 || dup2(context->stderr_fd, 2) < 0)
        return error_errno(err, errno, "set up stdio");
    return 0;
}

/* The terminal comes from the container's own devpts instance (mounted by
 * the plan), so that ttyname() and /dev/pts/N make sense inside; the master
 * goes to the monitor over the sync socket. */
static int setup_terminal(int sync_fd, struct error *err)
{
    int master, terminal;
    if (open_pseudo_terminal(&master, &terminal, err) < 0)
        return -1;
    int rc = make_controlling_terminal(terminal, err);
    close(terminal);
    if (rc == 0 && (rc = send_fd(sync_fd, SYNC_TERMINAL, master, err)) < 0)
        error_context(err, "send the terminal to the monitor");
    close(master);
    return rc;
}

static int sorted_insert(int *keep, size_t *count, int fd)
{
    size_t i = *count;
    while (i > 0 && keep[i - 1] > fd) {
        keep[i] = keep[i - 1];
        i--;
    }
    keep[i] = fd;
    (*count)++;
    return 0;
}

static int make_host_dirs(const struct launch_plan *plan, struct error *err)
{
    for (size_t i = 0; i < plan->host_dir_count; i++)
        if (mkdir(plan->host_dirs[i], 0755) < 0)
            return error_errno(err, errno, "mkdir %s", plan->host_dirs[i]);
    return 0;
}

static int read_exactly(int fd, uint8_t *buffer, size_t length, struct error *err)
{
    size_t done = 0;
    while (done < length) {
        ssize_t got = read(fd, buffer + done, length - done);
        if (got < 0 && errno == EINTR)
            continue;
        if (got < 0)
            return error_errno(err, errno, "read the rest of the plan");
        if (got == 0)
            return error_plain(err, ECANCELED, "the daemon gave up before sending the rest of the plan");
        done += (size_t)got;
    }
    return 0;
}

/* One chunk of the rest of a plan sent in two parts, from the gate: a u32
 * length (little endian) and that many bytes of plan fields, added to the
 * plan. The bytes stay allocated: the plan's strings point into them until
 * the exec. *last is set by the chunk of length 0 that ends the rest. */
static int read_plan_chunk(int gate_fd, struct launch_plan *plan, bool *last, struct error *err)
{
    uint8_t header[4];
    if (read_exactly(gate_fd, header, sizeof(header), err) < 0)
        return -1;
    uint32_t length = (uint32_t)header[0] | (uint32_t)header[1] << 8 | (uint32_t)header[2] << 16 |
                      (uint32_t)header[3] << 24;
    *last = length == 0;
    if (*last)
        return plan_decode_complete(plan, err);
    if (length > MESSAGE_MAX_SIZE)
        return error_plain(err, E2BIG, "a chunk of the plan is %u bytes, over %u", length, MESSAGE_MAX_SIZE);
    uint8_t *data = malloc(length);
    if (!data)
        return error_errno(err, ENOMEM, "a chunk of the plan (%u bytes)", length);
    if (read_exactly(gate_fd, data, length, err) < 0)
        return -1;
    return plan_decode_more(data, length, plan, err);
}

/* Tell the daemon this child's pid: one byte through the gate, whose reader
 * gets the pid from the kernel (SO_PASSCRED), translated into its own pid
 * namespace. It makes the container's cgroup around the process before it
 * opens the gate (the systemd driver's scope). */
static int report_pid(const struct child_context *context, struct error *err)
{
    if (context->cgroup_gate_fd < 0)
        return error_plain(err, EINVAL, "PLAN_REPORT_PID needs the gate");
    ssize_t sent;
    do {
        sent = send(context->cgroup_gate_fd, "p", 1, MSG_NOSIGNAL);
    } while (sent < 0 && errno == EINTR);
    if (sent < 0)
        return error_errno(err, errno, "report the child's pid through the gate");
    return 0;
}

/* The cgroup half of the set-up: limits, joining, and a cgroup namespace
 * rooted there. With a gate, first wait for the daemon to have made the
 * cgroups (one byte; EOF means it gave up). */
static int enter_cgroups(const struct child_context *context, struct error *err)
{
    const struct launch_plan *plan = context->plan;
    if (context->cgroup_gate_fd >= 0) {
        char go;
        ssize_t got;
        do {
            got = read(context->cgroup_gate_fd, &go, 1);
        } while (got < 0 && errno == EINTR);
        int saved = errno;
        close(context->cgroup_gate_fd);
        if (got < 0)
            return error_errno(err, saved, "read the cgroup gate");
        if (got == 0)
            return error_plain(err, ECANCELED, "the daemon gave up before the container's cgroup was made");
    }
    if (write_cgroup_files(plan, err) < 0)
        return -1;
    if (plan_creates(plan, CLONE_NEWCGROUP) && unshare(CLONE_NEWCGROUP) < 0)
        return error_errno(err, errno, "create cgroup namespace");
    return 0;
}

void container_child_main(struct child_context *context)
{
    const struct launch_plan *plan = context->plan;
    int sync_fd = context->sync_fd;
    struct error err = {0};

    if (reset_signals_for_exec(&err) < 0)
        child_fail(sync_fd, &err, 1);
    /* A session of its own: job control and signals stay inside the container. */
    if (setsid() < 0) {
        error_errno(&err, errno, "setsid");
        child_fail(sync_fd, &err, 1);
    }
    if (setup_stdio(context, &err) < 0)
        child_fail(sync_fd, &err, 1);
    /* Drop every monitor fd (listening socket, other containers' pipes). */
    int keep[16];
    size_t keep_count = 0;
    sorted_insert(keep, &keep_count, sync_fd);
    if (context->cgroup_gate_fd >= 0)
        sorted_insert(keep, &keep_count, context->cgroup_gate_fd);
    for (size_t i = 0; i < plan->namespace_count; i++)
        if (context->namespace_fds[i] >= 0)
            sorted_insert(keep, &keep_count, context->namespace_fds[i]);
    if (close_fds_except(keep, keep_count, &err) < 0)
        child_fail(sync_fd, &err, 1);
    umask(0);
    /* The pod's user namespace, for the ID-mapped mounts made before it is joined. */
    for (size_t i = 0; i < plan->namespace_count; i++)
        if (plan->namespaces[i].clone_flag == CLONE_NEWUSER)
            context->plan->userns_fd = context->namespace_fds[i];

    /* Without a gate the cgroups exist already: join them first, so that
     * everything below is accounted to the container. With one, the daemon
     * is making them meanwhile; nothing before the first mount under
     * /sys/fs/cgroup (which binds them in) needs them. */
    bool gated = context->cgroup_gate_fd >= 0;
    if (plan->report_pid && report_pid(context, &err) < 0)
        child_fail(sync_fd, &err, 1);
    if (!gated && enter_cgroups(context, &err) < 0)
        child_fail(sync_fd, &err, 1);
    if (join_namespaces(context, &err) < 0)
        child_fail(sync_fd, &err, 1);
    /* With a plan in two parts, the child got here on the head alone while
     * the daemon was still deciding the rest: it makes the directories the
     * head names (the writable layer) meanwhile. */
    if (make_host_dirs(plan, &err) < 0)
        child_fail(sync_fd, &err, 1);
    /* The rootfs is mounted as soon as a chunk has brought it, while the
     * daemon is still sending the chunks after it. */
    bool rest_read = !context->plan_follows, rootfs_ready = false;
    for (;;) {
        if (plan->rootfs && !rootfs_ready) {
            if (!plan_creates(plan, CLONE_NEWNS)) {
                error_plain(&err, EINVAL, "a rootfs needs a new mount namespace");
                child_fail(sync_fd, &err, 1);
            }
            if (prepare_rootfs(plan, &err) < 0)
                child_fail(sync_fd, &err, 1);
            rootfs_ready = true;
        }
        if (rest_read)
            break;
        if (read_plan_chunk(context->cgroup_gate_fd, context->plan, &rest_read, &err) < 0)
            child_fail(sync_fd, &err, 1);
    }
    if (plan->hostname && sethostname(plan->hostname, strlen(plan->hostname)) < 0) {
        error_errno(&err, errno, "sethostname %s", plan->hostname);
        child_fail(sync_fd, &err, 1);
    }
    if (write_sysctls(plan, &err) < 0)
        child_fail(sync_fd, &err, 1);
    if (plan->has_oom_score_adj && set_oom_score_adj(sync_fd, plan->oom_score_adj, &err) < 0)
        child_fail(sync_fd, &err, 1);
    if (plan->rootfs) {
        /* Gated, the mounts that do not need the cgroups (proc, dev, sys...)
         * are done before the gate too: more of the child's work overlaps
         * the daemon's. The order of the operations is kept. */
        size_t split = gated ? first_cgroup_mount(plan) : 0;
        if (apply_mounts(plan, 0, split, &err) < 0 || (gated && enter_cgroups(context, &err) < 0) ||
            finish_rootfs(plan, split, &err) < 0)
            child_fail(sync_fd, &err, 1);
    } else if (gated && enter_cgroups(context, &err) < 0) {
        child_fail(sync_fd, &err, 1);
    }
    if (plan->tty && setup_terminal(sync_fd, &err) < 0)
        child_fail(sync_fd, &err, 1);
    if (plan->cwd && mkdir_all(plan->cwd, 0755, plan->has_overlay_upper_owner ? plan : NULL, &err) < 0) {
        error_context(&err, "create working directory");
        child_fail(sync_fd, &err, 1);
    }
    umask(plan->has_umask ? plan->umask : 022);
    if (apply_rlimits(plan, &err) < 0)
        child_fail(sync_fd, &err, 1);
    /* After pivot_root (the container's /proc), before the credentials and
     * the filter; it takes effect at the execve (apparmor.c). A profile that
     * cannot be applied fails the set-up, never runs the command unconfined. */
    if (apparmor_change_onexec(plan, &err) < 0)
        child_fail(sync_fd, &err, 1);
    /* Everything that needs the node's privileges is done: the mounts, the
     * cgroups, the sysctls, rlimits above the hard limit. From here on the
     * container's root is root in the pod's user namespace alone. Before
     * the credentials: joining resets the capability sets to full (the
     * bounding set too) within the namespace, and before an early seccomp
     * filter, which need not allow setns. */
    if (plan->userns_fd >= 0 && join_user_namespace(plan->userns_fd, &err) < 0)
        child_fail(sync_fd, &err, 1);
    bool early_seccomp = seccomp_needs_early_install(plan);
    if (early_seccomp && install_seccomp(plan, &err) < 0)
        child_fail(sync_fd, &err, 1);
    if (apply_credentials(plan, &err) < 0)
        child_fail(sync_fd, &err, 1);

    /* The working directory and the executable are looked at before READY:
     * when both are fine, the monitor answers START as soon as GO is out (as
     * runc's start returns once its init is released) instead of waiting out
     * the execve. Otherwise START waits and fails with the exec's own error. */
    if (plan->cwd && chdir(plan->cwd) < 0) {
        error_errno(&err, errno, "chdir %s", plan->cwd);
        child_fail(sync_fd, &err, 1);
    }
    char executable[4096];
    struct error exec_err = {0};
    bool resolved = resolve_executable(plan, executable, sizeof(executable), &exec_err) == 0;
    static const char exec_checked[] = {SYNC_READY_EXEC_CHECKED, '\0'};
    child_send(sync_fd, SYNC_READY, resolved && executable_runnable(executable) ? exec_checked : NULL);
    char go;
    ssize_t got;
    do {
        got = recv(sync_fd, &go, 1, 0);
    } while (got < 0 && errno == EINTR);
    if (got != 1 || go != SYNC_GO)
        _exit(1); /* the monitor went away or changed its mind */

    if (!resolved)
        exec_fail(sync_fd, &exec_err, exit_code_for_exec_error(exec_err.code));
    if (!early_seccomp && install_seccomp(plan, &err) < 0)
        exec_fail(sync_fd, &err, 1);
    execve(executable, (char *const *)plan->argv, (char *const *)plan->env);
    error_errno(&err, errno, "exec: %s", executable);
    exec_fail(sync_fd, &err, exit_code_for_exec_error(err.code));
}
