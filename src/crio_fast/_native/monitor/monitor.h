/*
 * crio-fast-monitor: shared declarations.
 *
 * The executable has three modes (see main.c): `pod` (the per-pod monitor),
 * `exec` (a short-lived helper that runs one command inside a container)
 * and `--check`. The wire formats shared with Python (control protocol and
 * launch plan) are documented in docs/monitor.md; the tag numbers below are
 * that contract.
 */
#ifndef CRIO_FAST_MONITOR_H
#define CRIO_FAST_MONITOR_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#define MONITOR_VERSION "0.1.0"
/* Bumped whenever the daemon <-> monitor control protocol changes. */
#define MONITOR_PROTOCOL 1
/* Bumped whenever the launch plan encoding changes incompatibly. */
#define PLAN_FORMAT_VERSION 1

/* ------------------------------------------------------------------ errors */

#define ERROR_MESSAGE_MAX 1024

/* An error carried explicitly up the call chain: an errno-like code and a
 * message that already names what failed and why. */
struct error {
    int code;
    char message[ERROR_MESSAGE_MAX];
};

/* Set `err` to "<formatted>: <strerror(code)>"; returns -1. */
int error_errno(struct error *err, int code, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
/* Set `err` to "<formatted>" with `code`; returns -1. */
int error_plain(struct error *err, int code, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
/* Prepend "<formatted>: " to the message already in `err`; returns -1. */
int error_context(struct error *err, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* ------------------------------------------------------------------- util */

/* write(2) all of `data`, retrying on EINTR and short writes. 0 or -errno. */
int write_all(int fd, const void *data, size_t length);
/* Write `text` to an existing file (O_WRONLY|O_TRUNC-less, like echo >). */
int write_file(const char *path, const char *text, struct error *err);
/* Read a whole small file into a malloc'd NUL-terminated buffer. */
int read_small_file(const char *path, size_t limit, char **out, size_t *out_length, struct error *err);
/* Read all of `fd` until EOF into a malloc'd buffer (at most `limit` bytes). */
int read_fd_to_end(int fd, size_t limit, uint8_t **out, size_t *out_length, struct error *err);
/* malloc'd printf; NULL on allocation failure. */
char *format_string(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
/* Current CLOCK_REALTIME in nanoseconds since the epoch. */
uint64_t realtime_ns(void);
/* Parse a decimal unsigned integer that must fill the whole string. */
int parse_u64(const char *text, uint64_t *out);
/* Close every fd >= 3 except those in `keep` (which must be sorted). */
int close_fds_except(const int *keep, size_t keep_count, struct error *err);
/* Set or clear O_NONBLOCK. */
int set_nonblocking(int fd, bool nonblocking);
/* Grow-by-doubling append to an array whose capacity is implied by `count`. */
int array_append(void *array_pointer, size_t *count, size_t item_size, const void *item);
/* A container id is safe as a file name: [A-Za-z0-9_.-], no leading '.'. */
bool container_id_valid(const char *id);
/* Move `fd` to a number >= `minimum` (keeps CLOEXEC); closes the old fd. */
int move_fd_above(int fd, int minimum);

/* ------------------------------------------------------- raw syscalls */

struct clone_args_v2 {
    uint64_t flags;
    uint64_t pidfd;
    uint64_t child_tid;
    uint64_t parent_tid;
    uint64_t exit_signal;
    uint64_t stack;
    uint64_t stack_size;
    uint64_t tls;
    uint64_t set_tid;
    uint64_t set_tid_size;
    uint64_t cgroup;
};

struct mount_attr_v0 {
    uint64_t attr_set;
    uint64_t attr_clr;
    uint64_t propagation;
    uint64_t userns_fd;
};

struct open_how_v0 {
    uint64_t flags;
    uint64_t mode;
    uint64_t resolve;
};

/* fork-like clone: `pidfd_out` receives a pidfd when the kernel supports it
 * (-1 otherwise). Returns the pid in the parent, 0 in the child, -1+errno. */
pid_t clone_process(uint64_t flags, int *pidfd_out);
int sys_openat2(int dirfd, const char *path, uint64_t flags, uint64_t mode, uint64_t resolve);
int sys_open_tree(int dirfd, const char *path, unsigned int flags);
int sys_move_mount(int from_dirfd, const char *from_path, int to_dirfd, const char *to_path, unsigned int flags);
int sys_mount_setattr(int dirfd, const char *path, unsigned int flags, struct mount_attr_v0 *attr);
int sys_fsopen(const char *fstype, unsigned int flags);
int sys_fsconfig(int fd, unsigned int command, const char *key, const void *value, int aux);
int sys_fsmount(int fd, unsigned int flags, unsigned int attr_flags);
int sys_pidfd_open(pid_t pid, unsigned int flags);
int sys_pidfd_send_signal(int pidfd, int signal);
int sys_pivot_root(const char *new_root, const char *put_old);

/* ---------------------------------------------------------------- TLV */

/* Field: u16 tag, u32 length (little-endian), then `length` bytes. */
#define TLV_HEADER_SIZE 6

struct tlv_reader {
    const uint8_t *position;
    const uint8_t *end;
};

struct tlv_field {
    uint16_t tag;
    uint32_t length;
    const uint8_t *value;
};

void tlv_reader_init(struct tlv_reader *reader, const uint8_t *data, size_t length);
/* 1: a field was read; 0: end of data; -1: malformed (err set). */
int tlv_next(struct tlv_reader *reader, struct tlv_field *field, struct error *err);
/* Strings are sent with a trailing NUL so they can be used in place. */
int tlv_string(const struct tlv_field *field, const char **out, struct error *err);
int tlv_u32(const struct tlv_field *field, uint32_t *out, struct error *err);
int tlv_i32(const struct tlv_field *field, int32_t *out, struct error *err);
int tlv_u64(const struct tlv_field *field, uint64_t *out, struct error *err);
int tlv_bool(const struct tlv_field *field, bool *out, struct error *err);

/* A growable output buffer; any allocation failure sticks in `failed`. */
struct buffer {
    uint8_t *data;
    size_t length;
    size_t capacity;
    bool failed;
};

void buffer_reserve(struct buffer *buffer, size_t extra);
void buffer_append(struct buffer *buffer, const void *data, size_t length);
void buffer_put(struct buffer *buffer, uint16_t tag, const void *value, size_t length);
void buffer_put_string(struct buffer *buffer, uint16_t tag, const char *value);
void buffer_put_u32(struct buffer *buffer, uint16_t tag, uint32_t value);
void buffer_put_i32(struct buffer *buffer, uint16_t tag, int32_t value);
void buffer_put_u64(struct buffer *buffer, uint16_t tag, uint64_t value);
/* Open a nested field; returns its offset for buffer_end_nested. */
size_t buffer_begin_nested(struct buffer *buffer, uint16_t tag);
void buffer_end_nested(struct buffer *buffer, size_t offset);
void buffer_free(struct buffer *buffer);

/* ------------------------------------------------------ control protocol */

/* Message header: u16 protocol version, u16 type, u32 request id, u32 total
 * length (header included); little-endian; then TLV fields. One message per
 * SOCK_SEQPACKET packet. */
#define MESSAGE_HEADER_SIZE 12
#define MESSAGE_MAX_SIZE (4u << 20)
#define MESSAGE_REPLY_FLAG 0x8000u

enum request_type {
    REQUEST_PING = 1,
    REQUEST_CREATE = 2,
    REQUEST_START = 3,
    REQUEST_KILL = 4,
    REQUEST_REOPEN_LOG = 5,
    REQUEST_STATE = 6,
    REQUEST_LIST = 7,
    REQUEST_REMOVE = 8,
    REQUEST_SHUTDOWN = 9,
    REQUEST_ATTACH = 10, /* turns the connection into an attach stream (attach.c) */
};

enum message_field {
    FIELD_STATUS = 1,       /* u32: 0 or an errno value */
    FIELD_MESSAGE = 2,      /* string */
    FIELD_CONTAINER_ID = 3, /* string */
    FIELD_PLAN = 4,         /* bytes: an encoded launch plan */
    FIELD_LOG_PATH = 5,     /* string */
    FIELD_SIGNAL = 6,       /* u32 */
    FIELD_ALL = 7,          /* u32 bool: signal every process of the container */
    FIELD_PID = 8,          /* u32 */
    FIELD_WARNING = 9,      /* string, repeated */
    FIELD_CONTAINER = 10,   /* nested container state, repeated in LIST */
    FIELD_STATE = 11,       /* u32: enum container_status */
    FIELD_EXIT_CODE = 12,   /* i32 */
    FIELD_EXIT_SIGNAL = 13, /* u32 */
    FIELD_CREATED_AT = 14,  /* u64 unix ns */
    FIELD_STARTED_AT = 15,  /* u64 unix ns */
    FIELD_FINISHED_AT = 16, /* u64 unix ns */
    FIELD_OOM_KILLED = 17,  /* u32 bool */
    FIELD_POD_ID = 18,      /* string */
    FIELD_VERSION = 19,     /* string */
    /* CREATE of a container run by an external OCI runtime (oci.c). */
    FIELD_OCI_RUNTIME = 20,      /* string: runtime binary */
    FIELD_OCI_ROOT = 21,         /* string: its --root */
    FIELD_OCI_BUNDLE = 22,       /* string: bundle dir with config.json */
    FIELD_OCI_HIDE_CGROUP2 = 23, /* u32 bool */
    /* ATTACH: request: this attacher sends input; reply: the container has a stdin. */
    FIELD_STDIN = 24, /* u32 bool */
    FIELD_TTY = 25,   /* u32 bool, ATTACH reply: the container has a terminal */
    /* CREATE: the plan is only its head; the rest comes through the gate (see
     * plan_decode_head). PING reply: the MONITOR_FEATURE_ bits. */
    FIELD_PLAN_FOLLOWS = 26, /* u32 bool */
    FIELD_FEATURES = 27,     /* u32 bitmask */
    /* CREATE: the directory the log path is relative to and opened beneath (struct log_target). */
    FIELD_LOG_DIR = 28, /* string */
    /* CREATE of an oci container: an option of the runtime's own, before its command (repeated). */
    FIELD_OCI_GLOBAL_ARG = 29, /* string */
};

/* How many FIELD_OCI_GLOBAL_ARG a CREATE may carry. */
#define OCI_GLOBAL_ARGS_MAX 4

/* What this monitor can do beyond protocol 1 (FIELD_FEATURES of PING). A
 * monitor outlives the daemon that started it: a change to what a monitor
 * must understand adds a bit, and the daemon checks it before sending a
 * request that relies on it (docs/monitor.md, "Compatibility"). */
#define MONITOR_FEATURE_PLAN_FOLLOWS 1u /* CREATE may carry only the plan's head (PLAN_FOLLOWS) */
#define MONITOR_FEATURE_APPARMOR 2u     /* plans may carry PLAN_APPARMOR_PROFILE */
#define MONITOR_FEATURE_LOG_DIR 4u      /* CREATE may carry LOG_DIR */
/* Plans may join the pod's user namespace (a NAMESPACE of type user with a path), ID-map the overlay's
 * lower layers (OVERLAY_IDMAP, OVERLAY_UPPER_UID/GID) and binds (MOUNT_FLAG_IDMAP). */
#define MONITOR_FEATURE_USERNS 8u
#define MONITOR_FEATURE_REPORT_PID 16u /* plans may carry PLAN_REPORT_PID; an oci CREATE OCI_GLOBAL_ARG */
#define MONITOR_FEATURES                                                                                    \
    (MONITOR_FEATURE_PLAN_FOLLOWS | MONITOR_FEATURE_APPARMOR | MONITOR_FEATURE_LOG_DIR | MONITOR_FEATURE_USERNS | \
     MONITOR_FEATURE_REPORT_PID)

/* Packets of an attach stream: one byte kind, then the payload. The stream
 * numbers match the Kubernetes streaming channels (0 stdin, 1 stdout, ...). */
enum attach_packet_kind {
    ATTACH_STDIN = 0,       /* client -> monitor: bytes for the container's stdin */
    ATTACH_STDOUT = 1,      /* monitor -> client: output (everything, with a tty) */
    ATTACH_STDERR = 2,      /* monitor -> client */
    ATTACH_EXIT = 3,        /* monitor -> client: the exit code in decimal ASCII, last packet */
    ATTACH_RESIZE = 4,      /* client -> monitor: u16 width (columns), u16 height (rows), LE */
    ATTACH_CLOSE_STDIN = 5, /* client -> monitor: close the container's stdin */
};

/* ------------------------------------------------------------ launch plan */

enum plan_field {
    PLAN_VERSION = 1,
    PLAN_NAMESPACE = 2, /* nested: NS_TYPE, NS_PATH (absent: create) */
    PLAN_CGROUP_PROCS = 3,
    PLAN_CGROUP_WRITE = 4, /* nested: KV_KEY (path), KV_VALUE */
    PLAN_OOM_COUNTER = 5,
    PLAN_ROOTFS = 6,
    PLAN_OVERLAY = 7, /* nested: OVERLAY_* */
    PLAN_MOUNT = 8,   /* nested: MOUNT_* */
    PLAN_ROOTFS_READONLY = 9,
    PLAN_NO_PIVOT = 10,
    PLAN_ROOT_PROPAGATION = 11,
    PLAN_HOSTNAME = 12,
    PLAN_SYSCTL = 13, /* nested: KV_KEY (name), KV_VALUE */
    PLAN_RLIMIT = 14, /* nested: RLIMIT_* */
    PLAN_OOM_SCORE_ADJ = 15,
    PLAN_UID = 16,
    PLAN_GID = 17,
    PLAN_ADDITIONAL_GIDS = 18, /* u32 array */
    PLAN_CAP_BOUNDING = 19,
    PLAN_CAP_EFFECTIVE = 20,
    PLAN_CAP_PERMITTED = 21,
    PLAN_CAP_INHERITABLE = 22,
    PLAN_CAP_AMBIENT = 23,
    PLAN_NO_NEW_PRIVS = 24,
    PLAN_SECCOMP = 25, /* struct sock_filter array */
    PLAN_SECCOMP_FLAGS = 26,
    PLAN_CWD = 27,
    PLAN_ENV = 28,
    PLAN_ARGV = 29,
    PLAN_STDIN = 30,
    PLAN_TTY = 31,
    PLAN_LOG_LINE_MAX = 32,
    PLAN_TARGET_PID = 33,
    PLAN_UMASK = 34,
    PLAN_HOST_DIR = 35, /* string, repeated: a host directory the child makes (0755) once cloned */
    PLAN_APPARMOR_PROFILE = 36, /* string: the AppArmor profile the command is confined by from its execve */
    PLAN_TTY_SIZE = 37,         /* u32: columns | rows << 16, the terminal's size before the command runs */
    /* u32 bool, head: the child's first act is to write one byte to the gate, a unix socket whose
     * reader takes the child's pid from the byte's credentials (a cgroup made around the process). */
    PLAN_REPORT_PID = 38,
};

enum { NS_TYPE = 1, NS_PATH = 2 };
enum { KV_KEY = 1, KV_VALUE = 2 };
enum {
    OVERLAY_LOWER = 1,
    OVERLAY_UPPER = 2,
    OVERLAY_WORK = 3,
    OVERLAY_TARGET = 4,
    OVERLAY_OPTION = 5,
    OVERLAY_IDMAP = 6,     /* bool: the lower dirs are ID-mapped with the plan's user namespace */
    OVERLAY_UPPER_UID = 7, /* u32: the owner (host ids) the upper dir is given, the mapped root */
    OVERLAY_UPPER_GID = 8, /* u32 */
};
enum { RLIMIT_RESOURCE = 1, RLIMIT_SOFT = 2, RLIMIT_HARD = 3 };
enum {
    MOUNT_KIND = 1,
    MOUNT_SOURCE = 2,
    MOUNT_DESTINATION = 3,
    MOUNT_FSTYPE = 4,
    MOUNT_FLAGS = 5,
    MOUNT_DATA = 6,
    MOUNT_MODE = 7,
    MOUNT_MAJOR = 8,
    MOUNT_MINOR = 9,
    MOUNT_UID = 10,
    MOUNT_GID = 11,
    MOUNT_PROPAGATION = 12,
};

enum mount_kind {
    MOUNT_OP_MOUNT = 1,    /* mount(2) a filesystem: fstype, source, flags, data */
    MOUNT_OP_BIND = 2,     /* bind a host path; flags: MS_REC, MS_RDONLY, MS_NOSUID, ... */
    MOUNT_OP_MKNOD = 3,    /* device node; falls back to binding `source` */
    MOUNT_OP_SYMLINK = 4,  /* symlink at destination pointing to `source` */
    MOUNT_OP_MKDIR = 5,    /* directory (and parents) with `mode` */
    MOUNT_OP_MASK = 6,     /* /dev/null over a file, empty ro tmpfs over a dir */
    MOUNT_OP_READONLY = 7, /* make a path read-only (MS_REC: recursively) */
};
/* A BIND's attributes (read-only, nosuid, ...) on every mount under its source too, not on the top
 * one alone: CRI's recursive_read_only. Above the MS_* bits, which are 32. */
#define MOUNT_FLAG_RECURSIVE_ATTRIBUTES (1ull << 32)
/* A BIND ID-mapped with the user namespace the plan joins (MOUNT_ATTR_IDMAP on the detached clone). */
#define MOUNT_FLAG_IDMAP (1ull << 33)

#define PLAN_CAP_SETS 5
enum cap_set { CAP_SET_BOUNDING, CAP_SET_EFFECTIVE, CAP_SET_PERMITTED, CAP_SET_INHERITABLE, CAP_SET_AMBIENT };

struct plan_namespace {
    int clone_flag;        /* CLONE_NEWNS, CLONE_NEWPID, ... */
    const char *join_path; /* NULL: create a new one */
};

struct plan_key_value {
    const char *key;
    const char *value;
};

struct plan_rlimit {
    uint32_t resource;
    uint64_t soft;
    uint64_t hard;
};

struct plan_mount {
    uint32_t kind;
    const char *source;
    const char *destination;
    const char *fstype;
    const char *data;
    uint64_t flags;
    uint32_t mode;
    uint32_t major;
    uint32_t minor;
    uint32_t uid;
    uint32_t gid;
    uint32_t propagation;
};

/* A decoded plan. Strings point into the encoded buffer, which must outlive
 * the plan; arrays are malloc'd (plan_free). */
struct launch_plan {
    uint32_t version;
    struct plan_namespace *namespaces;
    size_t namespace_count;
    const char **cgroup_procs;
    size_t cgroup_procs_count;
    struct plan_key_value *cgroup_writes;
    size_t cgroup_write_count;
    const char *oom_counter_path;
    const char **host_dirs; /* made in order by the child, before it reads a rest that follows */
    size_t host_dir_count;
    const char *rootfs; /* ready path, or the overlay target */
    bool has_overlay;
    const char **overlay_lower;
    size_t overlay_lower_count;
    const char *overlay_upper;
    const char *overlay_work;
    const char **overlay_options;
    size_t overlay_option_count;
    bool overlay_idmap;
    bool has_overlay_upper_owner;
    uint32_t overlay_upper_uid;
    uint32_t overlay_upper_gid;
    /* Not in the encoding: the child sets it to its fd of the user namespace it joins (or -1), for the
     * ID-mapped mounts it makes before it joins it. */
    int userns_fd;
    struct plan_mount *mounts;
    size_t mount_count;
    bool rootfs_readonly;
    bool no_pivot;
    uint32_t root_propagation;
    const char *hostname;
    struct plan_key_value *sysctls;
    size_t sysctl_count;
    struct plan_rlimit *rlimits;
    size_t rlimit_count;
    bool has_oom_score_adj;
    int32_t oom_score_adj;
    bool has_uid;
    uint32_t uid;
    bool has_gid;
    uint32_t gid;
    bool has_additional_gids;
    gid_t *additional_gids;
    size_t additional_gid_count;
    bool has_caps[PLAN_CAP_SETS];
    uint64_t caps[PLAN_CAP_SETS];
    bool no_new_privs;
    const uint8_t *seccomp; /* sock_filter array, 8 bytes each */
    size_t seccomp_instructions;
    uint32_t seccomp_flags;
    const char *cwd;
    const char **env; /* NULL-terminated */
    size_t env_count;
    const char **argv; /* NULL-terminated */
    size_t argc;
    bool stdin_wanted;
    bool tty;
    uint32_t tty_size; /* PLAN_TTY_SIZE; 0: none given */
    bool report_pid;   /* PLAN_REPORT_PID */
    uint32_t log_line_max;
    uint32_t target_pid;
    bool has_umask;
    uint32_t umask;
    const char *apparmor_profile; /* NULL: no profile of ours (the process stays as it is) */
};

int plan_decode(const uint8_t *data, size_t length, struct launch_plan *plan, struct error *err);
/* A plan in two parts: the head, which the monitor needs to clone the child
 * (namespaces, stdio, cgroups), and the rest (the rootfs, the mounts, the
 * process), which the child reads from the gate in chunks once it has cloned
 * and joined (plan_decode_more adds each to the plan). The head is checked for
 * what it holds only; plan_decode_complete checks the whole once the last
 * chunk is in. */
int plan_decode_head(const uint8_t *data, size_t length, struct launch_plan *plan, struct error *err);
int plan_decode_more(const uint8_t *data, size_t length, struct launch_plan *plan, struct error *err);
int plan_decode_complete(struct launch_plan *plan, struct error *err);
void plan_free(struct launch_plan *plan);
const char *namespace_name(int clone_flag);

/* ------------------------------------------------------- process setup */

/* Fixed messages on the container's sync socket (one packet each):
 * child -> monitor: 'W'+text (warning), 'T' with the pty master as
 * SCM_RIGHTS (terminal), 'R' (prepared; 'R' 'X' when the working directory
 * and the executable were checked too, see SYNC_READY_EXEC_CHECKED),
 * 'E'+text (failed); monitor -> child: 'G' (exec now). */
#define SYNC_WARNING 'W'
#define SYNC_TERMINAL 'T'
#define SYNC_READY 'R'
#define SYNC_ERROR 'E'
#define SYNC_GO 'G'
/* The text of a READY whose exec can be expected to succeed: START is answered at GO. */
#define SYNC_READY_EXEC_CHECKED 'X'

/* Everything the child needs besides the plan, prepared by the monitor. */
struct child_context {
    struct launch_plan *plan; /* the child completes it when the rest follows */
    int sync_fd;
    int stdin_fd;  /* becomes fd 0 */
    int stdout_fd; /* becomes fd 1 */
    int stderr_fd; /* becomes fd 2 */
    int namespace_fds[8]; /* pre-opened join targets, -1 when unused */
    /* -1, or a pipe the daemon writes one byte to once the plan's cgroups
     * exist (EOF: it gave up). The child then joins them after the rootfs
     * base and before the mount sequence, which binds them in. */
    int cgroup_gate_fd;
    /* The gate first carries the rest of the plan, in chunks: each a u32
     * length (little endian) and that many bytes of plan fields; a length of
     * 0 ends it (plan_decode_more, plan_decode_complete). */
    bool plan_follows;
};

/* Runs in the cloned child; never returns. */
__attribute__((noreturn)) void container_child_main(struct child_context *context);

/* Credential, capability, seccomp and exec steps shared with exec mode. */
int apply_credentials(const struct launch_plan *plan, struct error *err);
int install_seccomp(const struct launch_plan *plan, struct error *err);
bool seccomp_needs_early_install(const struct launch_plan *plan);
int resolve_executable(const struct launch_plan *plan, char *out, size_t out_size, struct error *err);
int write_cgroup_files(const struct launch_plan *plan, struct error *err);
int apply_rlimits(const struct launch_plan *plan, struct error *err);
/* Empty signal mask, default dispositions for what the monitor changed. */
int reset_signals_for_exec(struct error *err);
/* AppArmor (apparmor.c): have the kernel confine this thread's next execve
 * with the plan's profile, through the /proc of the current mount namespace
 * (the container's, once it is the root). Nothing without a profile. */
int apparmor_change_onexec(const struct launch_plan *plan, struct error *err);

/* Mount namespace setup inside the child (rootfs.c), in parts so that a
 * step can come in between (the cgroup gate): the root mount (propagation,
 * overlay or bind); mount operations [from, to); the operations from
 * `first_mount` on, then pivot_root. */
int prepare_rootfs(const struct launch_plan *plan, struct error *err);
int apply_mounts(const struct launch_plan *plan, size_t from, size_t to, struct error *err);
int finish_rootfs(const struct launch_plan *plan, size_t first_mount, struct error *err);
/* The index of the first mount operation that needs the container's cgroups
 * (at or below /sys/fs/cgroup), or mount_count. */
size_t first_cgroup_mount(const struct launch_plan *plan);
int make_root_readonly(struct error *err);

/* User namespaces (userns.c). The pod's: a helper cloned into a new user namespace together with the
 * `other_flags` namespaces (net, ipc, uts: owned by it), its uid_map and gid_map written from here (one
 * line each, "CONTAINER HOST LENGTH"), the caller moved into the other namespaces (it stays in its own
 * user namespace, with its privileges); *userns_fd keeps the user namespace. */
int pod_userns_create(const char *uid_map, const char *gid_map, int other_flags, int *userns_fd,
                      struct error *err);
/* A container's: join it as the last namespace, right before the credentials (it resets the
 * capability sets, the bounding set included, to full within it). */
int join_user_namespace(int userns_fd, struct error *err);
/* A detached clone of `path` (open_tree OPEN_TREE_CLONE) ID-mapped with `userns_fd`: the fd, or -1. */
int idmapped_tree(const char *path, int userns_fd, struct error *err);
/* Make the detached mount `tree` ID-mapped with `userns_fd`. */
int idmap_tree(int tree, int userns_fd, const char *what, struct error *err);
/* `crio-fast-monitor --probe-idmap-overlay DIR`: whether an overlay takes an ID-mapped lower layer on
 * DIR's filesystem (Linux 5.19 and a filesystem that allows ID-mapped mounts). */
int probe_idmap_overlay_main(int argc, char **argv);

/* Filesystem parameters (fsprobe.c): whether a mount context takes one, asked
 * without mounting anything. */
enum fs_param_answer {
    FS_PARAM_TAKEN,     /* the filesystem's own parser took it */
    FS_PARAM_REFUSED,   /* its parser refused it (EINVAL): an unknown key or a bad value */
    FS_PARAM_NO_PARSER, /* the context takes any key (a legacy context): fsconfig tells nothing */
    FS_PARAM_NO_FSOPEN, /* fsopen refused: no new mount API, not allowed, or no such filesystem */
};
/* Whether `fstype` takes `key` (a string `value`, or a flag when NULL). 0 with
 * `*answer`, and `err` saying why for every answer but TAKEN; -1 with `err`
 * set when the probe itself failed (EMFILE, ENOMEM, ...). */
int fs_param_probe(const char *fstype, const char *key, const char *value, enum fs_param_answer *answer,
                   struct error *err);
const char *fs_param_answer_name(enum fs_param_answer answer);

/* How overlays are mounted (rootfs.c): fsconfig with one "lowerdir+" per
 * layer (Linux 6.8), or mount(2) with all options in one page. Decided once
 * per process, inherited by every child cloned afterwards; `legacy` forces
 * mount(2) without a probe. -1 with `err` set when the probe failed: still
 * undecided, and a child that mounts an overlay then probes for itself. */
int overlay_mount_decide(bool legacy, struct error *err);

/* Pseudo terminals (terminal.c): a new pty on /dev/ptmx of the current mount
 * namespace (enter the container's first), both ends O_CLOEXEC. */
int open_pseudo_terminal(int *master_out, int *peer_out, struct error *err);
/* In a new session: the terminal becomes the controlling tty and fds 0-2. */
int make_controlling_terminal(int terminal, struct error *err);
/* The terminal's size, PLAN_TTY_SIZE's columns | rows << 16. */
int set_terminal_size(int terminal, uint32_t size, struct error *err);
/* One byte `tag` carrying `fd` as SCM_RIGHTS. */
int send_fd(int socket_fd, char tag, int fd, struct error *err);

/* ------------------------------------------------------------- logging */

#define LOG_LINE_MAX_DEFAULT 16384u

enum log_stream { LOG_STDOUT = 0, LOG_STDERR = 1 };

/* Write `data` read from one stream as CRI log records to `fd`. */
int log_write_records(int fd, enum log_stream stream, const char *data, size_t length, size_t line_max,
                      uint64_t timestamp_ns, struct error *err);
/* RFC3339 UTC with nanoseconds, e.g. 2016-10-06T00:17:09.669794202Z. */
size_t format_log_timestamp(uint64_t timestamp_ns, char *out, size_t out_size);

/* ------------------------------------------------------------ exit files */

struct exit_record {
    int exit_code;   /* 128+signal when killed */
    int signal;      /* 0 unless killed by a signal */
    uint64_t finished_at_ns;
    uint64_t started_at_ns;
    bool oom_killed;
    pid_t pid;
};

int write_exit_file(const char *exits_dir, const char *container_id, const struct exit_record *record,
                    struct error *err);
/* The oom_kill counter from memory.events (v2) or memory.oom_control (v1). */
int read_oom_kill_counter(const char *path, uint64_t *out, struct error *err);

/* ---------------------------------------------------------------- modes */

int monitor_self_check(void);
/* `--probe-fs-param FSTYPE KEY [VALUE]` (fsprobe.c): prints fs_param_probe's answer. */
int probe_fs_param_main(int argc, char **argv);
int pod_main(int argc, char **argv);
/* `make-netns PATH...` (netns.c): network namespaces with lo up, each bind-mounted on its PATH. */
int make_netns_main(int argc, char **argv);
/* Set `lo` up in the calling thread's network namespace (netns.c). */
int bring_loopback_up(struct error *err);
int exec_main(int argc, char **argv);
/* `runtime [--hide-cgroup2-mount] -- RUNTIME ARGS...`: exec an OCI runtime command (oci.c). */
int runtime_main(int argc, char **argv);

#endif
