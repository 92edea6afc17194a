/*
 * The pod monitor's event loop and control socket.
 *
 * One epoll set holds the listening socket, a signalfd (SIGCHLD, SIGTERM,
 * SIGINT), every daemon connection and every container's stdout/stderr and
 * sync socket. Everything is non-blocking: the monitor never waits for the
 * daemon. A reply that cannot be sent at once (the daemon is not reading)
 * closes that connection instead of blocking; the daemon reconnects.
 */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

#include "server.h"

#define EVENT_BATCH 32
/* A request carries at most one descriptor; room for one more detects a violation. */
#define MAX_PASSED_FDS 2

int watch_add(struct monitor *monitor, struct watch *watch, uint32_t events)
{
    struct epoll_event event = {.events = events, .data.ptr = watch};
    return epoll_ctl(monitor->epoll_fd, EPOLL_CTL_ADD, watch->fd, &event);
}

void watch_close(struct monitor *monitor, struct watch *watch)
{
    if (watch->fd < 0)
        return;
    /* Explicitly: a forked child may still hold a copy of the file, which
     * would keep the registration (and stale pointers) alive. */
    epoll_ctl(monitor->epoll_fd, EPOLL_CTL_DEL, watch->fd, NULL);
    close(watch->fd);
    watch->fd = -1;
}

struct connection *connection_by_serial(struct monitor *monitor, uint64_t serial)
{
    for (struct connection *c = monitor->connections; c; c = c->next)
        if (c->serial == serial)
            return c;
    return NULL;
}

static void connection_close(struct monitor *monitor, struct connection *connection)
{
    for (struct connection **link = &monitor->connections; *link; link = &(*link)->next) {
        if (*link == connection) {
            *link = connection->next;
            break;
        }
    }
    watch_close(monitor, &connection->watch);
    connection->next = monitor->dead_connections;
    monitor->dead_connections = connection;
}

int connection_take_fd(struct monitor *monitor, struct connection *connection)
{
    int fd = connection->watch.fd;
    connection->watch.fd = -1; /* events of this batch for the connection are skipped */
    connection_close(monitor, connection);
    return fd;
}

void connection_set_busy(struct monitor *monitor, struct connection *connection, bool busy)
{
    connection->busy = busy;
    if (connection->watch.fd < 0)
        return;
    /* Level-triggered EPOLLIN would spin while a request waits for the child. */
    struct epoll_event event = {.events = busy ? 0 : EPOLLIN, .data.ptr = &connection->watch};
    if (epoll_ctl(monitor->epoll_fd, EPOLL_CTL_MOD, connection->watch.fd, &event) < 0)
        fprintf(stderr, "epoll_ctl(MOD) on a connection: %s\n", strerror(errno));
}

/* ------------------------------------------------------------- messages */

static void put_header(uint8_t *p, uint16_t type, uint32_t request_id, uint32_t length)
{
    uint16_t version = MONITOR_PROTOCOL;
    p[0] = (uint8_t)version;
    p[1] = (uint8_t)(version >> 8);
    p[2] = (uint8_t)type;
    p[3] = (uint8_t)(type >> 8);
    for (int i = 0; i < 4; i++) {
        p[4 + i] = (uint8_t)(request_id >> (8 * i));
        p[8 + i] = (uint8_t)(length >> (8 * i));
    }
}

void reply_start(struct buffer *reply, uint16_t request_type, uint32_t request_id, int status, const char *message)
{
    reply->length = 0;
    uint8_t header[MESSAGE_HEADER_SIZE];
    put_header(header, (uint16_t)(request_type | MESSAGE_REPLY_FLAG), request_id, 0);
    buffer_append(reply, header, sizeof(header));
    buffer_put_u32(reply, FIELD_STATUS, (uint32_t)status);
    if (message && *message)
        buffer_put_string(reply, FIELD_MESSAGE, message);
}

void reply_send(struct monitor *monitor, struct connection *connection, struct buffer *reply)
{
    uint8_t fallback[64];
    const uint8_t *data = reply->data;
    size_t length = reply->length;
    if (reply->failed || length < MESSAGE_HEADER_SIZE) {
        /* Out of memory building the reply: still answer, with ENOMEM. */
        struct buffer small = {fallback, 0, sizeof(fallback), false};
        uint16_t type = length >= 4 ? (uint16_t)(reply->data[2] | (reply->data[3] << 8)) : MESSAGE_REPLY_FLAG;
        uint32_t id = 0;
        if (length >= 8)
            for (int i = 0; i < 4; i++)
                id |= (uint32_t)reply->data[4 + i] << (8 * i);
        reply_start(&small, (uint16_t)(type & ~MESSAGE_REPLY_FLAG), id, ENOMEM, NULL);
        data = small.data;
        length = small.length;
    }
    put_header((uint8_t *)data, (uint16_t)(data[2] | (data[3] << 8)),
               (uint32_t)data[4] | ((uint32_t)data[5] << 8) | ((uint32_t)data[6] << 16) | ((uint32_t)data[7] << 24),
               (uint32_t)length);
    ssize_t sent;
    do {
        sent = send(connection->watch.fd, data, length, MSG_DONTWAIT | MSG_NOSIGNAL);
    } while (sent < 0 && errno == EINTR);
    if (sent != (ssize_t)length)
        connection_close(monitor, connection); /* not reading, or gone */
}

struct request {
    uint16_t type;
    uint32_t id;
    const char *container_id;
    const uint8_t *plan;
    size_t plan_length;
    const char *log_path;
    const char *log_dir;
    uint32_t signal;
    bool has_signal;
    bool all;
    const char *oci_runtime;
    const char *oci_root;
    const char *oci_bundle;
    bool oci_hide_cgroup2;
    const char *oci_global_args[OCI_GLOBAL_ARGS_MAX + 1]; /* NULL-terminated */
    size_t oci_global_arg_count;
    bool stdin;
    bool plan_follows;
    /* A descriptor passed with the request (SCM_RIGHTS), -1 if none; the
     * handler that uses it sets it to -1, handle_message closes the rest. */
    int passed_fd;
};

static int parse_request(const uint8_t *data, size_t length, struct request *request, struct error *err)
{
    struct tlv_reader reader;
    struct tlv_field field;
    int rc;
    tlv_reader_init(&reader, data + MESSAGE_HEADER_SIZE, length - MESSAGE_HEADER_SIZE);
    while ((rc = tlv_next(&reader, &field, err)) > 0) {
        switch (field.tag) {
        case FIELD_CONTAINER_ID: rc = tlv_string(&field, &request->container_id, err); break;
        case FIELD_PLAN:
            request->plan = field.value;
            request->plan_length = field.length;
            break;
        case FIELD_LOG_PATH: rc = tlv_string(&field, &request->log_path, err); break;
        case FIELD_LOG_DIR: rc = tlv_string(&field, &request->log_dir, err); break;
        case FIELD_SIGNAL:
            request->has_signal = true;
            rc = tlv_u32(&field, &request->signal, err);
            break;
        case FIELD_ALL: rc = tlv_bool(&field, &request->all, err); break;
        case FIELD_OCI_RUNTIME: rc = tlv_string(&field, &request->oci_runtime, err); break;
        case FIELD_OCI_ROOT: rc = tlv_string(&field, &request->oci_root, err); break;
        case FIELD_OCI_BUNDLE: rc = tlv_string(&field, &request->oci_bundle, err); break;
        case FIELD_OCI_HIDE_CGROUP2: rc = tlv_bool(&field, &request->oci_hide_cgroup2, err); break;
        case FIELD_OCI_GLOBAL_ARG:
            if (request->oci_global_arg_count == OCI_GLOBAL_ARGS_MAX)
                return error_plain(err, E2BIG, "more than %d runtime options", OCI_GLOBAL_ARGS_MAX);
            rc = tlv_string(&field, &request->oci_global_args[request->oci_global_arg_count++], err);
            break;
        case FIELD_STDIN: rc = tlv_bool(&field, &request->stdin, err); break;
        case FIELD_PLAN_FOLLOWS: rc = tlv_bool(&field, &request->plan_follows, err); break;
        default: return error_plain(err, EINVAL, "unknown request field %u", field.tag);
        }
        if (rc < 0)
            return -1;
    }
    return rc;
}

static struct container *require_container(struct monitor *monitor, const struct request *request,
                                           struct buffer *reply)
{
    struct error err;
    if (!request->container_id) {
        reply_start(reply, request->type, request->id, EINVAL, "request needs a container id");
        return NULL;
    }
    struct container *c = container_find(monitor, request->container_id);
    if (!c) {
        error_plain(&err, ENOENT, "container %s not found in pod %s", request->container_id, monitor->pod_id);
        reply_start(reply, request->type, request->id, err.code, err.message);
    }
    return c;
}

/* Returns 1 if the reply is deferred. */
static int dispatch(struct monitor *monitor, struct connection *connection, struct request *request,
                    struct buffer *reply)
{
    struct error err;
    struct container *c;
    const struct log_target log = {request->log_dir, request->log_path};
    switch (request->type) {
    case REQUEST_PING:
        reply_start(reply, request->type, request->id, 0, NULL);
        buffer_put_string(reply, FIELD_POD_ID, monitor->pod_id);
        buffer_put_string(reply, FIELD_VERSION, MONITOR_VERSION);
        buffer_put_u32(reply, FIELD_PID, (uint32_t)getpid());
        buffer_put_u32(reply, FIELD_FEATURES, MONITOR_FEATURES);
        return 0;
    case REQUEST_CREATE:
        if (!request->container_id || !request->plan || !request->log_path) {
            reply_start(reply, request->type, request->id, EINVAL, "CREATE needs a container id, a plan and a log path");
            return 0;
        }
        if (request->log_dir && (request->log_dir[0] != '/' || request->log_path[0] == '/')) {
            reply_start(reply, request->type, request->id, EINVAL,
                        "LOG_DIR must be absolute, and the log path relative to it");
            return 0;
        }
        if (request->oci_runtime || request->oci_root || request->oci_bundle) {
            if (!request->oci_runtime || !request->oci_root || !request->oci_bundle) {
                reply_start(reply, request->type, request->id, EINVAL,
                            "an oci CREATE needs the runtime, its root and the bundle");
                return 0;
            }
            return container_create_oci(monitor, request->id, request->container_id, request->plan,
                                        request->plan_length, &log, request->oci_runtime,
                                        request->oci_root, request->oci_bundle, request->oci_hide_cgroup2,
                                        request->oci_global_args, reply);
        }
        /* A passed fd is the cgroup gate: the daemon makes the container's
         * cgroup while the child sets up, and says go on it. With
         * PLAN_FOLLOWS the rest of the plan comes through it first. */
        if (request->plan_follows && request->passed_fd < 0) {
            reply_start(reply, request->type, request->id, EINVAL, "PLAN_FOLLOWS needs the gate descriptor");
            return 0;
        }
        return container_create(monitor, connection, request->id, request->container_id, request->plan,
                                request->plan_length, &log, &request->passed_fd,
                                request->plan_follows, reply);
    case REQUEST_START:
        if (!(c = require_container(monitor, request, reply)))
            return 0;
        return container_start(monitor, connection, request->id, c, reply);
    case REQUEST_KILL:
        if (!(c = require_container(monitor, request, reply)))
            return 0;
        if (container_kill(c, request->has_signal ? (int)request->signal : SIGKILL, request->all, &err) < 0)
            reply_start(reply, request->type, request->id, err.code, err.message);
        else
            reply_start(reply, request->type, request->id, 0, NULL);
        return 0;
    case REQUEST_REOPEN_LOG:
        if (!(c = require_container(monitor, request, reply)))
            return 0;
        if (container_reopen_log(c, &err) < 0)
            reply_start(reply, request->type, request->id, err.code, err.message);
        else
            reply_start(reply, request->type, request->id, 0, NULL);
        return 0;
    case REQUEST_STATE:
        if (!(c = require_container(monitor, request, reply)))
            return 0;
        reply_start(reply, request->type, request->id, 0, NULL);
        container_put_state(c, reply);
        return 0;
    case REQUEST_LIST:
        reply_start(reply, request->type, request->id, 0, NULL);
        for (c = monitor->containers; c; c = c->next) {
            if (c->failed_create)
                continue;
            size_t nested = buffer_begin_nested(reply, FIELD_CONTAINER);
            container_put_state(c, reply);
            buffer_end_nested(reply, nested);
        }
        return 0;
    case REQUEST_REMOVE:
        if (!(c = require_container(monitor, request, reply)))
            return 0;
        if (c->status != CONTAINER_EXITED) {
            error_plain(&err, EBUSY, "container %s has not exited", c->id);
            reply_start(reply, request->type, request->id, err.code, err.message);
            return 0;
        }
        if (c->oci && oci_delete(c->oci, c->id, &err) < 0) {
            /* Forgotten all the same: the daemon removes the container either way. */
            container_remove(monitor, c);
            reply_start(reply, request->type, request->id, err.code, err.message);
            return 0;
        }
        container_remove(monitor, c);
        reply_start(reply, request->type, request->id, 0, NULL);
        return 0;
    case REQUEST_SHUTDOWN:
        /* Answered by pod.c after everything is killed and unmounted. */
        monitor->stopping = true;
        monitor->shutdown_requested = true;
        monitor->shutdown_connection = connection->serial;
        monitor->shutdown_request_id = request->id;
        connection_set_busy(monitor, connection, true);
        return 1;
    case REQUEST_ATTACH:
        attach_begin(monitor, connection, request->id, request->container_id, request->stdin);
        return 1; /* answered by attach_begin */
    default:
        error_plain(&err, EINVAL, "unknown request type %u", request->type);
        reply_start(reply, request->type, request->id, err.code, err.message);
        return 0;
    }
}

void server_answer_shutdown(struct monitor *monitor, int status, const char *message)
{
    if (!monitor->shutdown_requested)
        return;
    struct connection *connection = connection_by_serial(monitor, monitor->shutdown_connection);
    if (!connection)
        return;
    struct buffer reply = {0};
    reply_start(&reply, REQUEST_SHUTDOWN, monitor->shutdown_request_id, status, message);
    reply_send(monitor, connection, &reply);
    buffer_free(&reply);
}

static void handle_message(struct monitor *monitor, struct connection *connection, const uint8_t *data,
                           size_t length, int passed_fd)
{
    struct request request = {.passed_fd = passed_fd};
    struct buffer reply = {0};
    struct error err;
    if (length < MESSAGE_HEADER_SIZE) {
        connection_close(monitor, connection); /* not our protocol */
        return;
    }
    uint16_t version = (uint16_t)(data[0] | (data[1] << 8));
    request.type = (uint16_t)(data[2] | (data[3] << 8));
    request.id = (uint32_t)data[4] | ((uint32_t)data[5] << 8) | ((uint32_t)data[6] << 16) | ((uint32_t)data[7] << 24);
    uint32_t declared = (uint32_t)data[8] | ((uint32_t)data[9] << 8) | ((uint32_t)data[10] << 16) |
                        ((uint32_t)data[11] << 24);
    if (version != MONITOR_PROTOCOL) {
        error_plain(&err, EPROTO, "protocol version %u, this monitor speaks %d", version, MONITOR_PROTOCOL);
        reply_start(&reply, request.type, request.id, err.code, err.message);
    } else if (declared != length) {
        error_plain(&err, EPROTO, "message declares %u bytes but has %zu", declared, length);
        reply_start(&reply, request.type, request.id, err.code, err.message);
    } else if (parse_request(data, length, &request, &err) < 0) {
        reply_start(&reply, request.type, request.id, err.code, err.message);
    } else if (dispatch(monitor, connection, &request, &reply) == 1) {
        buffer_free(&reply);
        if (request.passed_fd >= 0)
            close(request.passed_fd);
        return;
    }
    if (request.passed_fd >= 0)
        close(request.passed_fd);
    reply_send(monitor, connection, &reply);
    buffer_free(&reply);
}

static void on_connection(struct monitor *monitor, struct connection *connection, uint32_t events)
{
    if (!(events & EPOLLIN)) {
        if (events & (EPOLLHUP | EPOLLERR))
            connection_close(monitor, connection);
        return;
    }
    /* One request per wakeup; level-triggered epoll brings us back. */
    ssize_t size;
    do {
        size = recv(connection->watch.fd, NULL, 0, MSG_PEEK | MSG_TRUNC | MSG_DONTWAIT);
    } while (size < 0 && errno == EINTR);
    if (size < 0 && errno == EAGAIN)
        return;
    if (size <= 0) {
        connection_close(monitor, connection);
        return;
    }
    if ((size_t)size > MESSAGE_MAX_SIZE) {
        uint8_t header[MESSAGE_HEADER_SIZE] = {0};
        (void)recv(connection->watch.fd, header, sizeof(header), MSG_DONTWAIT | MSG_TRUNC);
        struct buffer reply = {0};
        struct error err;
        error_plain(&err, EMSGSIZE, "message of %zd bytes exceeds %u", size, MESSAGE_MAX_SIZE);
        reply_start(&reply, (uint16_t)(header[2] | (header[3] << 8)),
                    (uint32_t)header[4] | ((uint32_t)header[5] << 8) | ((uint32_t)header[6] << 16) |
                        ((uint32_t)header[7] << 24),
                    err.code, err.message);
        reply_send(monitor, connection, &reply);
        buffer_free(&reply);
        return;
    }
    uint8_t *data = malloc((size_t)size);
    if (!data) {
        connection_close(monitor, connection);
        return;
    }
    union {
        struct cmsghdr header;
        char space[CMSG_SPACE(sizeof(int) * MAX_PASSED_FDS)];
    } control;
    struct iovec iov = {.iov_base = data, .iov_len = (size_t)size};
    struct msghdr message = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = &control, .msg_controllen = sizeof(control)};
    ssize_t got;
    do {
        got = recvmsg(connection->watch.fd, &message, MSG_DONTWAIT | MSG_CMSG_CLOEXEC);
    } while (got < 0 && errno == EINTR);
    int passed[MAX_PASSED_FDS];
    size_t passed_count = 0;
    if (got >= 0)
        for (struct cmsghdr *cmsg = CMSG_FIRSTHDR(&message); cmsg; cmsg = CMSG_NXTHDR(&message, cmsg))
            if (cmsg->cmsg_level == SOL_SOCKET && cmsg->cmsg_type == SCM_RIGHTS)
                for (size_t i = 0; i < (cmsg->cmsg_len - CMSG_LEN(0)) / sizeof(int); i++) {
                    int fd;
                    memcpy(&fd, CMSG_DATA(cmsg) + i * sizeof(int), sizeof(int));
                    if (passed_count < MAX_PASSED_FDS)
                        passed[passed_count++] = fd;
                    else
                        close(fd);
                }
    if (got != size || (message.msg_flags & MSG_CTRUNC) || passed_count > 1) {
        for (size_t i = 0; i < passed_count; i++)
            close(passed[i]);
        free(data);
        connection_close(monitor, connection);
        return;
    }
    handle_message(monitor, connection, data, (size_t)got, passed_count ? passed[0] : -1);
    free(data);
}

static void on_listen(struct monitor *monitor)
{
    for (;;) {
        int fd = accept4(monitor->listen_fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0) {
            if (errno == EINTR || errno == ECONNABORTED)
                continue;
            if (errno != EAGAIN)
                fprintf(stderr, "accept: %s\n", strerror(errno));
            return;
        }
        /* The socket is 0600 already; also refuse other users explicitly. */
        struct ucred peer;
        socklen_t peer_length = sizeof(peer);
        if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &peer, &peer_length) < 0 || peer.uid != geteuid()) {
            close(fd);
            continue;
        }
        struct connection *connection = calloc(1, sizeof(*connection));
        if (!connection) {
            close(fd);
            continue;
        }
        connection->watch = (struct watch){WATCH_CONNECTION, fd, connection, LOG_STDOUT};
        connection->serial = ++monitor->next_serial;
        if (watch_add(monitor, &connection->watch, EPOLLIN) < 0) {
            fprintf(stderr, "watch connection: %s\n", strerror(errno));
            close(fd);
            free(connection);
            continue;
        }
        connection->next = monitor->connections;
        monitor->connections = connection;
    }
}

static void on_signal(struct monitor *monitor)
{
    for (;;) {
        struct signalfd_siginfo info;
        ssize_t got = read(monitor->signal_fd, &info, sizeof(info));
        if (got < 0 && errno == EINTR)
            continue;
        if (got != sizeof(info))
            break;
        if (info.ssi_signo == SIGTERM || info.ssi_signo == SIGINT)
            monitor->stopping = true; /* same teardown as SHUTDOWN */
    }
    /* SIGCHLD coalesces: always reap everything that is ready. */
    containers_reap(monitor);
}

static void free_dead(struct monitor *monitor)
{
    while (monitor->dead_connections) {
        struct connection *next = monitor->dead_connections->next;
        free(monitor->dead_connections);
        monitor->dead_connections = next;
    }
    while (monitor->dead_containers) {
        struct container *next = monitor->dead_containers->next;
        container_free(monitor->dead_containers);
        monitor->dead_containers = next;
    }
    attachers_free_dead(monitor);
}

int server_run(struct monitor *monitor)
{
    monitor->listen_watch = (struct watch){WATCH_LISTEN, monitor->listen_fd, NULL, LOG_STDOUT};
    monitor->signal_watch = (struct watch){WATCH_SIGNAL, monitor->signal_fd, NULL, LOG_STDOUT};
    if (watch_add(monitor, &monitor->listen_watch, EPOLLIN) < 0 || watch_add(monitor, &monitor->signal_watch, EPOLLIN) < 0) {
        fprintf(stderr, "epoll_ctl: %s\n", strerror(errno));
        return -1;
    }
    struct epoll_event events[EVENT_BATCH];
    while (!monitor->stopping) {
        int count = epoll_wait(monitor->epoll_fd, events, EVENT_BATCH, attach_timeout_ms(monitor));
        if (count < 0) {
            if (errno == EINTR)
                continue;
            fprintf(stderr, "epoll_wait: %s\n", strerror(errno));
            return -1;
        }
        for (int i = 0; i < count; i++) {
            struct watch *watch = events[i].data.ptr;
            if (watch->fd < 0)
                continue; /* closed earlier in this batch */
            switch (watch->kind) {
            case WATCH_LISTEN: on_listen(monitor); break;
            case WATCH_SIGNAL: on_signal(monitor); break;
            case WATCH_CONNECTION: on_connection(monitor, watch->owner, events[i].events); break;
            case WATCH_OUTPUT: container_on_output(monitor, watch->owner, watch); break;
            case WATCH_SYNC: container_on_sync(monitor, watch->owner); break;
            case WATCH_ATTACHER: attach_on_event(monitor, watch->owner, events[i].events); break;
            case WATCH_STDIN: attach_on_stdin_writable(monitor, watch->owner); break;
            case WATCH_OOM: oom_watch_on_event(monitor); break;
            }
        }
        attach_check_stalls(monitor);
        free_dead(monitor);
    }
    free_dead(monitor);
    return 0;
}
