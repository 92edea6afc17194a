/* Pod-mode internals shared by pod.c, server.c and container.c. */
#ifndef CRIO_FAST_MONITOR_SERVER_H
#define CRIO_FAST_MONITOR_SERVER_H

#include "monitor.h"

struct attacher; /* an attach stream (attach.c) */

/* What an epoll event refers to; embedded in the owning object. */
enum watch_kind {
    WATCH_LISTEN,
    WATCH_SIGNAL,
    WATCH_CONNECTION,
    WATCH_OUTPUT,
    WATCH_SYNC,
    WATCH_ATTACHER, /* an attach stream socket (attach.c) */
    WATCH_STDIN,    /* a container's stdin, watched for EPOLLOUT while attach input waits */
    WATCH_OOM,      /* the inotify fd watching the containers' OOM counters (oomwatch.c) */
};

struct watch {
    enum watch_kind kind;
    int fd; /* -1 when closed */
    void *owner;
    enum log_stream stream; /* WATCH_OUTPUT only */
};

/* Values of FIELD_STATE. */
enum container_status {
    CONTAINER_CREATING = 0, /* cloned, preparing (reported to CREATE when done) */
    CONTAINER_CREATED = 1,  /* prepared, waiting for START */
    CONTAINER_RUNNING = 2,
    CONTAINER_EXITED = 3,
};

/* A request whose reply waits for the container child (CREATE, START). */
struct pending_reply {
    bool active;
    uint16_t type;
    uint32_t request_id;
    uint64_t connection_serial;
};

/* An external OCI runtime that runs a container (oci.c); NULL for native. */
struct oci_runtime {
    char *path;        /* the runtime binary */
    char *root;        /* its --root state directory */
    bool hide_cgroup2; /* run it where /sys/fs/cgroup/unified is unmounted */
    char *global_args[OCI_GLOBAL_ARGS_MAX + 1]; /* before its command, NULL-terminated */
};

struct container {
    struct container *next;
    struct oci_runtime *oci; /* NULL: started by the native launcher */
    char *id;
    char *log_path;
    char *log_dir; /* NULL, or the directory log_path is resolved beneath (struct log_target) */
    char *kill_cgroup_procs; /* first cgroup.procs of the plan: KILL --all */
    char *oom_counter_path;
    pid_t pid;
    int pidfd;
    enum container_status status;
    bool starting;      /* GO sent, exec outcome not known yet */
    bool exec_checked;  /* READY said the exec should succeed: START is answered at GO */
    bool failed_create; /* CREATE failed: forget it once reaped, no exit file */
    int log_fd;
    size_t log_line_max;
    struct watch stdout_watch; /* pipe, or the pty master */
    struct watch stderr_watch;
    struct watch sync_watch;
    int stdin_fd; /* write end held for attach; the pty master dup with a tty */
    bool tty;
    bool stdin_wanted; /* the plan's STDIN: attach input is accepted */
    bool output_paused; /* stdout/stderr not read while an attacher lags (attach.c) */
    struct watch stdin_watch; /* fd is stdin_fd while registered (attach.c), else -1; never closes it */
    bool has_oom_baseline;
    uint64_t oom_baseline;
    uint64_t oom_seen; /* the highest oom_kill count read (oomwatch.c) */
    int oom_wd;        /* inotify watch on oom_counter_path; 0: none */
    uint64_t created_at;
    uint64_t started_at;
    uint64_t finished_at;
    int exit_code;
    int exit_signal;
    bool oom_killed;
    struct pending_reply pending;
    /* A START that came while the native child was still setting up: GO goes
     * out the moment it reports ready, and the START becomes `pending`. */
    struct pending_reply queued_start;
    struct buffer warnings; /* FIELD_WARNING fields for the CREATE reply */
    char *child_error;      /* an 'E' message from the child */
};

struct connection {
    struct connection *next;
    struct watch watch;
    uint64_t serial;
    bool busy; /* a reply is pending: one request at a time */
};

struct monitor {
    const char *pod_id;
    const char *pod_dir;
    const char *exits_dir;
    int epoll_fd;
    int signal_fd;
    int listen_fd;
    struct watch listen_watch;
    struct watch signal_watch;
    struct watch oom_watch; /* fd -1 until a container's OOM counter is watched */
    struct container *containers;
    struct connection *connections;
    /* Freed after the current batch of epoll events, which may still point at them. */
    struct connection *dead_connections;
    struct container *dead_containers;
    struct attacher *attachers; /* attach streams (attach.c) */
    struct attacher *dead_attachers;
    uint64_t next_serial;
    bool stopping;
    /* The SHUTDOWN request to answer once the pod is torn down. */
    bool shutdown_requested;
    uint64_t shutdown_connection;
    uint32_t shutdown_request_id;
};

/* oomwatch.c: read the baseline and watch the counter; at exit, whether the
 * count grew (also when the cgroup went with the container's last process). */
int oom_watch_start(struct monitor *monitor, struct container *container, struct error *err);
void oom_watch_on_event(struct monitor *monitor);
bool oom_watch_finish(struct monitor *monitor, struct container *container);

/* server.c */
int server_run(struct monitor *monitor);
int watch_add(struct monitor *monitor, struct watch *watch, uint32_t events);
void watch_close(struct monitor *monitor, struct watch *watch);
struct connection *connection_by_serial(struct monitor *monitor, uint64_t serial);
/* A busy connection is not read from until its pending reply is sent. */
void connection_set_busy(struct monitor *monitor, struct connection *connection, bool busy);
/* Take over a connection's socket (it stays in the epoll set, pointing at the
 * connection until re-registered): the connection itself is forgotten. */
int connection_take_fd(struct monitor *monitor, struct connection *connection);
/* Answer the SHUTDOWN request (if any) after the teardown. */
void server_answer_shutdown(struct monitor *monitor, int status, const char *message);
void reply_start(struct buffer *reply, uint16_t request_type, uint32_t request_id, int status, const char *message);
void reply_send(struct monitor *monitor, struct connection *connection, struct buffer *reply);

/* attach.c */
/* ATTACH: sends the reply itself; on success the connection becomes an attach stream. */
void attach_begin(struct monitor *monitor, struct connection *connection, uint32_t request_id,
                  const char *container_id, bool sends_input);
void attach_on_event(struct monitor *monitor, struct attacher *attacher, uint32_t events);
void attach_on_stdin_writable(struct monitor *monitor, struct container *container);
/* Output read from a container stream: copied to every attacher of the container. */
void attach_broadcast(struct monitor *monitor, struct container *container, enum log_stream stream,
                      const char *data, size_t length);
/* The container's init was reaped and its output drained: exit packets, detach. */
void attach_container_exited(struct monitor *monitor, struct container *container);
void attachers_free_dead(struct monitor *monitor);
/* epoll_wait timeout until the next lagging attacher times out, or -1. */
int attach_timeout_ms(struct monitor *monitor);
/* Detach attachers that held their container's output back for too long. */
void attach_check_stalls(struct monitor *monitor);

/* container.c */
struct container *container_find(struct monitor *monitor, const char *id);
/* Where a container's CRI log goes: `path` as it is, or with `dir`, `path` relative to that directory and
 * opened beneath it (openat2 RESOLVE_BENEATH), so that neither ".." nor a symlink, there at CREATE or
 * planted before a REOPEN_LOG, leads out of it. */
struct log_target {
    const char *dir; /* NULL: none */
    const char *path;
};

/* Returns 1 when the reply is deferred (pending), 0 when `reply` is ready.
 * `*cgroup_gate`, when >= 0, is taken (set to -1): the child joins the plan's
 * cgroups only after a byte arrives there (see container_child_main). */
int container_create(struct monitor *monitor, struct connection *connection, uint32_t request_id,
                     const char *id, const uint8_t *plan_data, size_t plan_length, const struct log_target *log,
                     int *cgroup_gate, bool plan_follows, struct buffer *reply);
int container_start(struct monitor *monitor, struct connection *connection, uint32_t request_id,
                    struct container *container, struct buffer *reply);
int container_kill(struct container *container, int signal, bool all, struct error *err);
int container_reopen_log(struct container *container, struct error *err);
void container_put_state(const struct container *container, struct buffer *reply);
void container_remove(struct monitor *monitor, struct container *container);
void container_on_output(struct monitor *monitor, struct container *container, struct watch *watch);
void container_on_sync(struct monitor *monitor, struct container *container);
void containers_reap(struct monitor *monitor);
/* SIGKILL everything still running, wait (bounded), record exits. */
void containers_kill_all(struct monitor *monitor, int timeout_ms);
void container_free(struct container *container);
/* CREATE of an oci container: always answered at once (0). */
int container_create_oci(struct monitor *monitor, uint32_t request_id, const char *id, const uint8_t *plan_data,
                         size_t plan_length, const struct log_target *log, const char *runtime, const char *root,
                         const char *bundle, bool hide_cgroup2, const char *const *global_args,
                         struct buffer *reply);

/* oci.c: run `RUNTIME --root ROOT [--log LOG] ARGS...` and wait for it. stdio
 * as given; stderr_fd < 0 captures stderr itself; on failure the error text is
 * read from error_fd (or the capture). console_fd stays open in the runtime. */
int oci_run(const struct oci_runtime *oci, const char *log_path, const char *const *args, int stdin_fd,
            int stdout_fd, int stderr_fd, int error_fd, int console_fd, struct error *err);
int oci_create(const struct oci_runtime *oci, const char *id, const char *bundle, const char *pod_dir, bool tty,
               int stdin_fd, int stdout_fd, int stderr_fd, int error_fd, pid_t *pid_out, int *terminal_out,
               struct error *err);
int oci_start(const struct oci_runtime *oci, const char *id, struct error *err);
int oci_delete(const struct oci_runtime *oci, const char *id, struct error *err);
void oci_runtime_free(struct oci_runtime *oci);

#endif
