/*
 * Launch plan decoding. The plan is Python's complete, resolved decision of
 * how to start a process; this file only checks that it is well formed
 * (bounds, types, duplicates, values the kernel would misread) and turns it
 * into a struct. Strings stay in the encoded buffer.
 */
#include <errno.h>
#include <sched.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/resource.h>

#include "monitor.h"

#define MAX_NAMESPACES 8

static const struct {
    int flag;
    const char *name;
} namespace_names[] = {
    {CLONE_NEWNS, "mnt"},   {CLONE_NEWPID, "pid"},       {CLONE_NEWNET, "net"},   {CLONE_NEWIPC, "ipc"},
    {CLONE_NEWUTS, "uts"},  {CLONE_NEWCGROUP, "cgroup"}, {CLONE_NEWUSER, "user"},
};

const char *namespace_name(int clone_flag)
{
    for (size_t i = 0; i < sizeof(namespace_names) / sizeof(namespace_names[0]); i++)
        if (namespace_names[i].flag == clone_flag)
            return namespace_names[i].name;
    return NULL;
}

static int push_string(const char ***array, size_t *count, const struct tlv_field *field, struct error *err)
{
    const char *value;
    if (tlv_string(field, &value, err) < 0)
        return -1;
    if (array_append(array, count, sizeof(*array[0]), &value) < 0)
        return error_errno(err, ENOMEM, "plan");
    return 0;
}

/* argv and env are handed to execve: keep them NULL-terminated. */
static int terminate_string_list(const char ***array, size_t count, struct error *err)
{
    const char **grown = realloc(*array, (count + 1) * sizeof(**array));
    if (!grown)
        return error_errno(err, ENOMEM, "plan");
    grown[count] = NULL;
    *array = grown;
    return 0;
}

static int decode_namespace(const struct tlv_field *outer, struct launch_plan *plan, struct error *err)
{
    struct tlv_reader reader;
    struct tlv_field field;
    struct plan_namespace ns = {0};
    uint32_t type = 0;
    int rc;
    tlv_reader_init(&reader, outer->value, outer->length);
    while ((rc = tlv_next(&reader, &field, err)) > 0) {
        if (field.tag == NS_TYPE) {
            if (tlv_u32(&field, &type, err) < 0)
                return -1;
        } else if (field.tag == NS_PATH) {
            if (tlv_string(&field, &ns.join_path, err) < 0)
                return -1;
        } else {
            return error_plain(err, EINVAL, "namespace: unknown field %u", field.tag);
        }
    }
    if (rc < 0)
        return error_context(err, "namespace");
    if (!namespace_name((int)type))
        return error_plain(err, EINVAL, "namespace: unsupported type 0x%x", type);
    /* A user namespace is the pod's, joined: the monitor makes none per container. */
    if (type == CLONE_NEWUSER && !ns.join_path)
        return error_plain(err, EINVAL, "namespace: a user namespace can only be joined (it needs a path)");
    ns.clone_flag = (int)type;
    for (size_t i = 0; i < plan->namespace_count; i++)
        if (plan->namespaces[i].clone_flag == ns.clone_flag)
            return error_plain(err, EINVAL, "namespace %s listed twice", namespace_name(ns.clone_flag));
    if (plan->namespace_count >= MAX_NAMESPACES)
        return error_plain(err, EINVAL, "too many namespaces");
    if (array_append(&plan->namespaces, &plan->namespace_count, sizeof(ns), &ns) < 0)
        return error_errno(err, ENOMEM, "plan");
    return 0;
}

static int decode_key_value(const struct tlv_field *outer, struct plan_key_value *out, const char *what,
                            struct error *err)
{
    struct tlv_reader reader;
    struct tlv_field field;
    int rc;
    out->key = out->value = NULL;
    tlv_reader_init(&reader, outer->value, outer->length);
    while ((rc = tlv_next(&reader, &field, err)) > 0) {
        if (field.tag == KV_KEY) {
            if (tlv_string(&field, &out->key, err) < 0)
                return -1;
        } else if (field.tag == KV_VALUE) {
            if (tlv_string(&field, &out->value, err) < 0)
                return -1;
        } else {
            return error_plain(err, EINVAL, "%s: unknown field %u", what, field.tag);
        }
    }
    if (rc < 0)
        return error_context(err, "%s", what);
    if (!out->key || !out->value)
        return error_plain(err, EINVAL, "%s: needs both a key and a value", what);
    return 0;
}

static int decode_overlay(const struct tlv_field *outer, struct launch_plan *plan, struct error *err)
{
    struct tlv_reader reader;
    struct tlv_field field;
    int rc;
    if (plan->has_overlay)
        return error_plain(err, EINVAL, "overlay listed twice");
    plan->has_overlay = true;
    tlv_reader_init(&reader, outer->value, outer->length);
    while ((rc = tlv_next(&reader, &field, err)) > 0) {
        switch (field.tag) {
        case OVERLAY_LOWER:
            if (push_string(&plan->overlay_lower, &plan->overlay_lower_count, &field, err) < 0)
                return -1;
            break;
        case OVERLAY_OPTION:
            if (push_string(&plan->overlay_options, &plan->overlay_option_count, &field, err) < 0)
                return -1;
            break;
        case OVERLAY_UPPER:
            if (tlv_string(&field, &plan->overlay_upper, err) < 0)
                return -1;
            break;
        case OVERLAY_WORK:
            if (tlv_string(&field, &plan->overlay_work, err) < 0)
                return -1;
            break;
        case OVERLAY_IDMAP:
            if (tlv_bool(&field, &plan->overlay_idmap, err) < 0)
                return -1;
            break;
        case OVERLAY_UPPER_UID:
            plan->has_overlay_upper_owner = true;
            if (tlv_u32(&field, &plan->overlay_upper_uid, err) < 0)
                return -1;
            break;
        case OVERLAY_UPPER_GID:
            plan->has_overlay_upper_owner = true;
            if (tlv_u32(&field, &plan->overlay_upper_gid, err) < 0)
                return -1;
            break;
        case OVERLAY_TARGET:
            if (plan->rootfs)
                return error_plain(err, EINVAL, "overlay target given together with a rootfs path");
            if (tlv_string(&field, &plan->rootfs, err) < 0)
                return -1;
            break;
        default:
            return error_plain(err, EINVAL, "overlay: unknown field %u", field.tag);
        }
    }
    if (rc < 0)
        return error_context(err, "overlay");
    if (plan->overlay_lower_count == 0 || !plan->rootfs)
        return error_plain(err, EINVAL, "overlay: needs at least one lower dir and a target");
    if (!plan->overlay_upper != !plan->overlay_work)
        return error_plain(err, EINVAL, "overlay: upper dir and work dir go together");
    return 0;
}

static int decode_mount(const struct tlv_field *outer, struct launch_plan *plan, struct error *err)
{
    struct tlv_reader reader;
    struct tlv_field field;
    struct plan_mount m = {0};
    int rc;
    tlv_reader_init(&reader, outer->value, outer->length);
    while ((rc = tlv_next(&reader, &field, err)) > 0) {
        switch (field.tag) {
        case MOUNT_KIND: rc = tlv_u32(&field, &m.kind, err); break;
        case MOUNT_SOURCE: rc = tlv_string(&field, &m.source, err); break;
        case MOUNT_DESTINATION: rc = tlv_string(&field, &m.destination, err); break;
        case MOUNT_FSTYPE: rc = tlv_string(&field, &m.fstype, err); break;
        case MOUNT_FLAGS: rc = tlv_u64(&field, &m.flags, err); break;
        case MOUNT_DATA: rc = tlv_string(&field, &m.data, err); break;
        case MOUNT_MODE: rc = tlv_u32(&field, &m.mode, err); break;
        case MOUNT_MAJOR: rc = tlv_u32(&field, &m.major, err); break;
        case MOUNT_MINOR: rc = tlv_u32(&field, &m.minor, err); break;
        case MOUNT_UID: rc = tlv_u32(&field, &m.uid, err); break;
        case MOUNT_GID: rc = tlv_u32(&field, &m.gid, err); break;
        case MOUNT_PROPAGATION: rc = tlv_u32(&field, &m.propagation, err); break;
        default: return error_plain(err, EINVAL, "mount #%zu: unknown field %u", plan->mount_count + 1, field.tag);
        }
        if (rc < 0)
            return error_context(err, "mount #%zu", plan->mount_count + 1);
    }
    if (rc < 0)
        return error_context(err, "mount #%zu", plan->mount_count + 1);
    if (!m.destination || m.destination[0] != '/')
        return error_plain(err, EINVAL, "mount #%zu: destination must be an absolute path", plan->mount_count + 1);
    bool needs_source = m.kind == MOUNT_OP_BIND || m.kind == MOUNT_OP_SYMLINK;
    switch (m.kind) {
    case MOUNT_OP_MOUNT:
        if (!m.fstype)
            return error_plain(err, EINVAL, "mount on %s: no filesystem type", m.destination);
        break;
    case MOUNT_OP_BIND:
    case MOUNT_OP_MKNOD:
    case MOUNT_OP_SYMLINK:
    case MOUNT_OP_MKDIR:
    case MOUNT_OP_MASK:
    case MOUNT_OP_READONLY:
        break;
    default:
        return error_plain(err, EINVAL, "mount on %s: unknown kind %u", m.destination, m.kind);
    }
    if (needs_source && !m.source)
        return error_plain(err, EINVAL, "mount on %s: no source", m.destination);
    if (m.propagation & ~(uint32_t)(MS_PRIVATE | MS_SLAVE | MS_SHARED | MS_UNBINDABLE))
        return error_plain(err, EINVAL, "mount on %s: bad propagation 0x%x", m.destination, m.propagation);
    if (array_append(&plan->mounts, &plan->mount_count, sizeof(m), &m) < 0)
        return error_errno(err, ENOMEM, "plan");
    return 0;
}

static int decode_rlimit(const struct tlv_field *outer, struct launch_plan *plan, struct error *err)
{
    struct tlv_reader reader;
    struct tlv_field field;
    struct plan_rlimit limit = {0};
    bool has_resource = false, has_soft = false, has_hard = false;
    int rc;
    tlv_reader_init(&reader, outer->value, outer->length);
    while ((rc = tlv_next(&reader, &field, err)) > 0) {
        if (field.tag == RLIMIT_RESOURCE) {
            rc = tlv_u32(&field, &limit.resource, err);
            has_resource = true;
        } else if (field.tag == RLIMIT_SOFT) {
            rc = tlv_u64(&field, &limit.soft, err);
            has_soft = true;
        } else if (field.tag == RLIMIT_HARD) {
            rc = tlv_u64(&field, &limit.hard, err);
            has_hard = true;
        } else {
            return error_plain(err, EINVAL, "rlimit: unknown field %u", field.tag);
        }
        if (rc < 0)
            return error_context(err, "rlimit");
    }
    if (rc < 0)
        return error_context(err, "rlimit");
    if (!has_resource || !has_soft || !has_hard || limit.resource >= RLIM_NLIMITS)
        return error_plain(err, EINVAL, "rlimit: needs a valid resource, soft and hard value");
    if (array_append(&plan->rlimits, &plan->rlimit_count, sizeof(limit), &limit) < 0)
        return error_errno(err, ENOMEM, "plan");
    return 0;
}

static int decode_gids(const struct tlv_field *field, struct launch_plan *plan, struct error *err)
{
    if (field->length % 4 != 0)
        return error_plain(err, EINVAL, "additional gids: length %u is not a multiple of 4", field->length);
    if (plan->has_additional_gids)
        return error_plain(err, EINVAL, "additional gids listed twice");
    size_t count = field->length / 4;
    if (count > 65536)
        return error_plain(err, EINVAL, "additional gids: %zu is more than NGROUPS_MAX", count);
    plan->has_additional_gids = true;
    plan->additional_gid_count = count;
    if (count == 0)
        return 0;
    plan->additional_gids = calloc(count, sizeof(gid_t));
    if (!plan->additional_gids)
        return error_errno(err, ENOMEM, "plan");
    for (size_t i = 0; i < count; i++) {
        const uint8_t *p = field->value + 4 * i;
        plan->additional_gids[i] = (gid_t)((uint32_t)p[0] | ((uint32_t)p[1] << 8) | ((uint32_t)p[2] << 16) |
                                           ((uint32_t)p[3] << 24));
    }
    return 0;
}

static int decode_top_field(const struct tlv_field *field, struct launch_plan *plan, struct error *err)
{
    struct plan_key_value kv;
    switch (field->tag) {
    case PLAN_VERSION:
        if (tlv_u32(field, &plan->version, err) < 0)
            return -1;
        if (plan->version != PLAN_FORMAT_VERSION)
            return error_plain(err, EPROTO, "plan format version %u, this monitor reads version %d", plan->version,
                               PLAN_FORMAT_VERSION);
        return 0;
    case PLAN_NAMESPACE: return decode_namespace(field, plan, err);
    case PLAN_CGROUP_PROCS: return push_string(&plan->cgroup_procs, &plan->cgroup_procs_count, field, err);
    case PLAN_CGROUP_WRITE:
        if (decode_key_value(field, &kv, "cgroup write", err) < 0)
            return -1;
        if (array_append(&plan->cgroup_writes, &plan->cgroup_write_count, sizeof(kv), &kv) < 0)
            return error_errno(err, ENOMEM, "plan");
        return 0;
    case PLAN_OOM_COUNTER: return tlv_string(field, &plan->oom_counter_path, err);
    case PLAN_ROOTFS:
        if (plan->rootfs)
            return error_plain(err, EINVAL, "rootfs given twice (or together with an overlay target)");
        return tlv_string(field, &plan->rootfs, err);
    case PLAN_OVERLAY: return decode_overlay(field, plan, err);
    case PLAN_MOUNT: return decode_mount(field, plan, err);
    case PLAN_ROOTFS_READONLY: return tlv_bool(field, &plan->rootfs_readonly, err);
    case PLAN_NO_PIVOT: return tlv_bool(field, &plan->no_pivot, err);
    case PLAN_ROOT_PROPAGATION:
        if (tlv_u32(field, &plan->root_propagation, err) < 0)
            return -1;
        if (plan->root_propagation & ~(uint32_t)(MS_REC | MS_PRIVATE | MS_SLAVE | MS_SHARED | MS_UNBINDABLE))
            return error_plain(err, EINVAL, "bad root propagation 0x%x", plan->root_propagation);
        return 0;
    case PLAN_HOSTNAME: return tlv_string(field, &plan->hostname, err);
    case PLAN_SYSCTL:
        if (decode_key_value(field, &kv, "sysctl", err) < 0)
            return -1;
        /* The name becomes a path under /proc/sys: keep it there. */
        if (kv.key[0] == '\0' || kv.key[0] == '/' || strstr(kv.key, ".."))
            return error_plain(err, EINVAL, "sysctl: bad name %s", kv.key);
        if (array_append(&plan->sysctls, &plan->sysctl_count, sizeof(kv), &kv) < 0)
            return error_errno(err, ENOMEM, "plan");
        return 0;
    case PLAN_RLIMIT: return decode_rlimit(field, plan, err);
    case PLAN_OOM_SCORE_ADJ:
        plan->has_oom_score_adj = true;
        if (tlv_i32(field, &plan->oom_score_adj, err) < 0)
            return -1;
        if (plan->oom_score_adj < -1000 || plan->oom_score_adj > 1000)
            return error_plain(err, EINVAL, "oom_score_adj %d outside [-1000, 1000]", plan->oom_score_adj);
        return 0;
    case PLAN_UID: plan->has_uid = true; return tlv_u32(field, &plan->uid, err);
    case PLAN_GID: plan->has_gid = true; return tlv_u32(field, &plan->gid, err);
    case PLAN_ADDITIONAL_GIDS: return decode_gids(field, plan, err);
    case PLAN_CAP_BOUNDING:
    case PLAN_CAP_EFFECTIVE:
    case PLAN_CAP_PERMITTED:
    case PLAN_CAP_INHERITABLE:
    case PLAN_CAP_AMBIENT: {
        int set = field->tag - PLAN_CAP_BOUNDING;
        plan->has_caps[set] = true;
        return tlv_u64(field, &plan->caps[set], err);
    }
    case PLAN_NO_NEW_PRIVS: return tlv_bool(field, &plan->no_new_privs, err);
    case PLAN_SECCOMP:
        /* struct sock_filter is 8 bytes; the kernel takes at most 4096. */
        if (field->length == 0 || field->length % 8 != 0 || field->length / 8 > 4096)
            return error_plain(err, EINVAL, "seccomp program: %u bytes is not 1..4096 instructions", field->length);
        plan->seccomp = field->value;
        plan->seccomp_instructions = field->length / 8;
        return 0;
    case PLAN_SECCOMP_FLAGS: return tlv_u32(field, &plan->seccomp_flags, err);
    case PLAN_CWD:
        if (tlv_string(field, &plan->cwd, err) < 0)
            return -1;
        if (plan->cwd[0] != '/')
            return error_plain(err, EINVAL, "cwd %s is not absolute", plan->cwd);
        return 0;
    case PLAN_ENV:
        if (push_string(&plan->env, &plan->env_count, field, err) < 0)
            return -1;
        if (!strchr(plan->env[plan->env_count - 1], '='))
            return error_plain(err, EINVAL, "env entry %s has no '='", plan->env[plan->env_count - 1]);
        return 0;
    case PLAN_ARGV: return push_string(&plan->argv, &plan->argc, field, err);
    case PLAN_STDIN: return tlv_bool(field, &plan->stdin_wanted, err);
    case PLAN_TTY: return tlv_bool(field, &plan->tty, err);
    case PLAN_TTY_SIZE: return tlv_u32(field, &plan->tty_size, err);
    case PLAN_REPORT_PID: return tlv_bool(field, &plan->report_pid, err);
    case PLAN_LOG_LINE_MAX:
        if (tlv_u32(field, &plan->log_line_max, err) < 0)
            return -1;
        if (plan->log_line_max < 64)
            return error_plain(err, EINVAL, "log line max %u is below 64 bytes", plan->log_line_max);
        return 0;
    case PLAN_TARGET_PID: return tlv_u32(field, &plan->target_pid, err);
    case PLAN_HOST_DIR:
        if (push_string(&plan->host_dirs, &plan->host_dir_count, field, err) < 0)
            return -1;
        if (plan->host_dirs[plan->host_dir_count - 1][0] != '/')
            return error_plain(err, EINVAL, "host directory %s is not an absolute path",
                               plan->host_dirs[plan->host_dir_count - 1]);
        return 0;
    case PLAN_APPARMOR_PROFILE:
        if (plan->apparmor_profile)
            return error_plain(err, EINVAL, "apparmor profile given twice");
        if (tlv_string(field, &plan->apparmor_profile, err) < 0)
            return -1;
        /* Written as "exec <name>": one word, no line break (the daemon checks names as well). */
        if (plan->apparmor_profile[0] == '\0' || strpbrk(plan->apparmor_profile, "\n\r\t "))
            return error_plain(err, EINVAL, "apparmor profile \"%s\" is empty or has white space",
                               plan->apparmor_profile);
        return 0;
    case PLAN_UMASK:
        plan->has_umask = true;
        if (tlv_u32(field, &plan->umask, err) < 0)
            return -1;
        if (plan->umask > 0777)
            return error_plain(err, EINVAL, "umask %o is not a permission mask", plan->umask);
        return 0;
    default:
        return error_plain(err, EINVAL, "unknown plan field %u", field->tag);
    }
}

static int plan_decode_fields(const uint8_t *data, size_t length, struct launch_plan *plan, struct error *err)
{
    struct tlv_reader reader;
    struct tlv_field field;
    int rc;
    tlv_reader_init(&reader, data, length);
    while ((rc = tlv_next(&reader, &field, err)) > 0) {
        if (plan->version == 0 && field.tag != PLAN_VERSION)
            return error_plain(err, EINVAL, "the plan must start with its format version");
        if (decode_top_field(&field, plan, err) < 0)
            return -1;
    }
    return rc;
}

/* The checks that need the whole plan. */
static int plan_complete(struct launch_plan *plan, struct error *err)
{
    if (plan->version == 0)
        return error_plain(err, EINVAL, "empty plan");
    if (plan->argc == 0)
        return error_plain(err, EINVAL, "no command (argv is empty)");
    if (plan->hostname) {
        /* Otherwise it would rename the pod's (or the host's) UTS namespace. */
        bool new_uts = false;
        for (size_t i = 0; i < plan->namespace_count; i++)
            if (plan->namespaces[i].clone_flag == CLONE_NEWUTS && !plan->namespaces[i].join_path)
                new_uts = true;
        if (!new_uts)
            return error_plain(err, EINVAL, "a hostname needs a new uts namespace");
    }
    bool joins_userns = false;
    for (size_t i = 0; i < plan->namespace_count; i++)
        joins_userns |= plan->namespaces[i].clone_flag == CLONE_NEWUSER;
    bool idmapped_bind = false;
    for (size_t i = 0; i < plan->mount_count; i++)
        idmapped_bind |= (plan->mounts[i].flags & MOUNT_FLAG_IDMAP) != 0;
    if ((plan->overlay_idmap || idmapped_bind) && !joins_userns)
        return error_plain(err, EINVAL, "ID-mapped mounts need a user namespace to join");
    if (terminate_string_list(&plan->argv, plan->argc, err) < 0 ||
        terminate_string_list(&plan->env, plan->env_count, err) < 0)
        return -1;
    return 0;
}

int plan_decode_head(const uint8_t *data, size_t length, struct launch_plan *plan, struct error *err)
{
    memset(plan, 0, sizeof(*plan));
    plan->userns_fd = -1;
    plan->log_line_max = LOG_LINE_MAX_DEFAULT;
    plan->root_propagation = MS_REC | MS_SLAVE;
    if (plan_decode_fields(data, length, plan, err) < 0)
        goto fail;
    if (plan->version == 0) {
        error_plain(err, EINVAL, "empty plan");
        goto fail;
    }
    return 0;
fail:
    error_context(err, "invalid launch plan");
    plan_free(plan);
    return -1;
}

int plan_decode_more(const uint8_t *data, size_t length, struct launch_plan *plan, struct error *err)
{
    if (plan_decode_fields(data, length, plan, err) < 0)
        return error_context(err, "invalid launch plan");
    return 0;
}

int plan_decode_complete(struct launch_plan *plan, struct error *err)
{
    if (plan_complete(plan, err) < 0)
        return error_context(err, "invalid launch plan");
    return 0;
}

int plan_decode(const uint8_t *data, size_t length, struct launch_plan *plan, struct error *err)
{
    if (plan_decode_head(data, length, plan, err) < 0)
        return -1;
    if (plan_complete(plan, err) < 0) {
        error_context(err, "invalid launch plan");
        plan_free(plan);
        return -1;
    }
    return 0;
}

void plan_free(struct launch_plan *plan)
{
    free(plan->namespaces);
    free(plan->cgroup_procs);
    free(plan->host_dirs);
    free(plan->cgroup_writes);
    free(plan->overlay_lower);
    free(plan->overlay_options);
    free(plan->mounts);
    free(plan->sysctls);
    free(plan->rlimits);
    free(plan->additional_gids);
    free(plan->env);
    free(plan->argv);
    memset(plan, 0, sizeof(*plan));
}
