/*
 * ATTACH: a container's stdio streamed to clients of the control socket.
 *
 * After a successful ATTACH reply the connection is an *attach stream*: one
 * packet per message, a byte of `enum attach_packet_kind`, then the payload.
 * The monitor copies every chunk it reads from the container's stdout and
 * stderr (after writing it to the CRI log, which is unchanged) to every
 * attacher of that container, and writes what attachers send to the
 * container's stdin (a pipe, or the pty master). When the init has been
 * reaped and its pipes drained, each attacher gets an EXIT packet and the
 * monitor closes the stream once that packet is on its way.
 *
 * The loop never blocks on an attacher:
 *   - output: sent with MSG_DONTWAIT; what the socket (its send buffer is
 *     raised to ATTACH_SOCKET_BUFFER) does not take is queued per attacher
 *     and flushed on EPOLLOUT. When an attacher has ATTACH_QUEUE_HIGH bytes
 *     queued, the monitor stops reading that container's output (its pipe
 *     fills and its writes block, as on a slow terminal; nothing is lost,
 *     neither in the log nor for the attachers) until the queue is down to
 *     ATTACH_QUEUE_LOW. An attacher that takes no packet at all for
 *     ATTACH_STALL_MS while holding output back is detached (its stream is
 *     closed, with a line on the monitor's stderr) and the output flows
 *     again: a reader slower than the container slows it down, a reader
 *     that stopped costs it one second once.
 *   - input: written with O_NONBLOCK. What the stdin pipe does not take is
 *     kept (one packet per attacher at most), that attacher's socket is not
 *     read any more, and the stdin fd is watched for EPOLLOUT; the socket is
 *     read again once the kept bytes are written. A client that keeps writing
 *     therefore blocks in its own send, not the monitor.
 * Detaching (the client closes) never touches the container or its stdin.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <termios.h>
#include <time.h>
#include <unistd.h>

#include "server.h"

/* Output queued for one attacher (beyond what its socket holds) above which
 * the container's output is held back until the attacher catches up. */
#define ATTACH_QUEUE_HIGH (1u << 20)
#define ATTACH_QUEUE_LOW (ATTACH_QUEUE_HIGH / 2)
/* Hard cap (only reachable while the pipes are drained at exit): detach. */
#define ATTACH_QUEUE_LIMIT (8u << 20)
/* An attacher holding output back without taking a single packet for this
 * long is detached, and the container's output flows again. */
#define ATTACH_STALL_MS 1000
/* SO_SNDBUF of an attach stream: fewer wake-ups for a fast reader. */
#define ATTACH_SOCKET_BUFFER (1 << 20)
/* Largest payload of a client packet (the Python client sends 16 KiB). */
#define ATTACH_INPUT_MAX 65536
/* Client packets handled per wake-up, so one attacher cannot starve the loop. */
#define ATTACH_INPUT_BATCH 16

struct attach_packet {
    struct attach_packet *next;
    size_t length;
    uint8_t data[]; /* kind byte, then the payload */
};

struct attacher {
    struct attacher *next;       /* monitor->attachers, or the dead list */
    struct container *container; /* NULL once the container has exited */
    struct watch watch;          /* WATCH_ATTACHER: the stream socket */
    bool sends_input;
    bool closing;    /* EXIT queued: close once the queue is flushed */
    bool hung_up;    /* the client is gone; its input sent before is still written */
    bool registered; /* in the epoll set (dropped while hung up and waiting) */
    bool lagging;    /* above ATTACH_QUEUE_HIGH (until below ATTACH_QUEUE_LOW): output held back */
    uint64_t progress_at_ms; /* while lagging: when it last took a packet */
    uint32_t events; /* registered epoll events */
    struct attach_packet *queue_head;
    struct attach_packet *queue_tail;
    size_t queued_bytes;
    uint8_t *pending_input; /* stdin bytes the pipe has not taken yet; reading paused */
    size_t pending_length;
    size_t pending_offset;
};

static uint8_t input_buffer[1 + ATTACH_INPUT_MAX + 1];

static uint64_t monotonic_ms(void)
{
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    return (uint64_t)now.tv_sec * 1000u + (uint64_t)now.tv_nsec / 1000000u;
}

/* ------------------------------------------------------------ throttling */

/* Hold back (or let flow again) the container's output: its pipes fill and
 * its writes block, as on a slow terminal. The CRI log waits as well. */
static void set_output_paused(struct monitor *monitor, struct container *container, bool paused)
{
    if (container->output_paused == paused)
        return;
    container->output_paused = paused;
    struct watch *watches[] = {&container->stdout_watch, &container->stderr_watch};
    for (size_t i = 0; i < 2; i++) {
        if (watches[i]->fd < 0)
            continue;
        struct epoll_event event = {.events = paused ? 0 : EPOLLIN, .data.ptr = watches[i]};
        if (epoll_ctl(monitor->epoll_fd, EPOLL_CTL_MOD, watches[i]->fd, &event) < 0)
            fprintf(stderr, "container %s: epoll_ctl(MOD) output: %s\n", container->id, strerror(errno));
    }
}

static void update_output_pause(struct monitor *monitor, struct container *container)
{
    bool paused = false;
    for (struct attacher *a = monitor->attachers; a && !paused; a = a->next)
        paused = a->container == container && a->lagging;
    set_output_paused(monitor, container, paused);
}

/* ----------------------------------------------------------- life cycle */

static void discard_pending_input(struct attacher *attacher)
{
    free(attacher->pending_input);
    attacher->pending_input = NULL;
    attacher->pending_length = attacher->pending_offset = 0;
}

static void free_queue(struct attacher *attacher)
{
    while (attacher->queue_head) {
        struct attach_packet *next = attacher->queue_head->next;
        free(attacher->queue_head);
        attacher->queue_head = next;
    }
    attacher->queue_tail = NULL;
    attacher->queued_bytes = 0;
}

static void attacher_drop(struct monitor *monitor, struct attacher *attacher, const char *why)
{
    struct container *container = attacher->container;
    if (why)
        fprintf(stderr, "container %s: attach client detached: %s\n", container ? container->id : "(exited)", why);
    for (struct attacher **link = &monitor->attachers; *link; link = &(*link)->next) {
        if (*link == attacher) {
            *link = attacher->next;
            break;
        }
    }
    if (container && attacher->lagging)
        update_output_pause(monitor, container);
    watch_close(monitor, &attacher->watch); /* also leaves the epoll set */
    free_queue(attacher);
    discard_pending_input(attacher);
    attacher->container = NULL;
    /* Freed after this batch of epoll events, which may still point at it. */
    attacher->next = monitor->dead_attachers;
    monitor->dead_attachers = attacher;
}

void attachers_free_dead(struct monitor *monitor)
{
    while (monitor->dead_attachers) {
        struct attacher *next = monitor->dead_attachers->next;
        free(monitor->dead_attachers);
        monitor->dead_attachers = next;
    }
}

/* Register what the attacher waits for: input unless paused, EPOLLOUT while
 * output is queued. A hung-up client with input still waiting leaves the
 * epoll set (EPOLLHUP cannot be masked and would spin) until it resumes. */
static int attacher_update_events(struct monitor *monitor, struct attacher *attacher)
{
    bool want_registered = !(attacher->hung_up && attacher->pending_input);
    uint32_t events = (attacher->pending_input ? 0 : EPOLLIN) | (attacher->queue_head ? EPOLLOUT : 0);
    if (attacher->registered && !want_registered) {
        if (epoll_ctl(monitor->epoll_fd, EPOLL_CTL_DEL, attacher->watch.fd, NULL) < 0)
            return -1;
        attacher->registered = false;
        return 0;
    }
    if (!want_registered)
        return 0;
    if (attacher->registered && events == attacher->events)
        return 0;
    struct epoll_event event = {.events = events, .data.ptr = &attacher->watch};
    if (epoll_ctl(monitor->epoll_fd, attacher->registered ? EPOLL_CTL_MOD : EPOLL_CTL_ADD, attacher->watch.fd,
                  &event) < 0)
        return -1;
    attacher->registered = true;
    attacher->events = events;
    return 0;
}

/* Returns false when the attacher was dropped. */
static bool attacher_refresh(struct monitor *monitor, struct attacher *attacher)
{
    if (attacher_update_events(monitor, attacher) == 0)
        return true;
    char why[128];
    snprintf(why, sizeof(why), "epoll_ctl on the attach stream: %s", strerror(errno));
    attacher_drop(monitor, attacher, why);
    return false;
}

/* The client is gone (a send failed, or it reset the connection). Input it
 * sent before may still be unread or waiting for the pipe: keep reading
 * until EOF instead of dropping it now. False when dropped. */
static bool attacher_hung_up(struct monitor *monitor, struct attacher *attacher)
{
    attacher->hung_up = true;
    free_queue(attacher);
    if (attacher->lagging) {
        attacher->lagging = false;
        if (attacher->container)
            update_output_pause(monitor, attacher->container);
    }
    return attacher_refresh(monitor, attacher);
}

/* ---------------------------------------------------------------- output */

/* Returns 1 sent, 0 the socket is full, -1 the client is gone. */
static int send_packet(int fd, uint8_t kind, const void *data, size_t length)
{
    struct iovec iov[2] = {{&kind, 1}, {(void *)data, length}};
    struct msghdr message = {.msg_iov = iov, .msg_iovlen = length ? 2 : 1};
    for (;;) {
        ssize_t sent = sendmsg(fd, &message, MSG_DONTWAIT | MSG_NOSIGNAL);
        if (sent >= 0)
            return 1; /* SOCK_SEQPACKET: all or nothing */
        if (errno == EINTR)
            continue;
        return errno == EAGAIN || errno == ENOBUFS ? 0 : -1;
    }
}

/* Send queued packets; returns false when the attacher was dropped. */
static bool attacher_flush(struct monitor *monitor, struct attacher *attacher)
{
    while (attacher->queue_head) {
        struct attach_packet *packet = attacher->queue_head;
        int rc = send_packet(attacher->watch.fd, packet->data[0], packet->data + 1, packet->length - 1);
        if (rc < 0)
            return attacher_hung_up(monitor, attacher);
        if (rc == 0)
            break;
        attacher->queue_head = packet->next;
        if (!attacher->queue_head)
            attacher->queue_tail = NULL;
        attacher->queued_bytes -= packet->length;
        free(packet);
        attacher->progress_at_ms = monotonic_ms();
        if (attacher->lagging && attacher->queued_bytes <= ATTACH_QUEUE_LOW) {
            attacher->lagging = false;
            if (attacher->container)
                update_output_pause(monitor, attacher->container);
        }
    }
    if (!attacher->queue_head && attacher->closing) {
        attacher_drop(monitor, attacher, NULL); /* EXIT delivered to the socket */
        return false;
    }
    return attacher_refresh(monitor, attacher);
}

/* Send now if nothing is queued, else queue (bounded). False when dropped. */
static bool attacher_output(struct monitor *monitor, struct attacher *attacher, uint8_t kind, const void *data,
                            size_t length)
{
    if (attacher->hung_up)
        return true; /* nobody reads; only its waiting input still matters */
    if (!attacher->queue_head) {
        int rc = send_packet(attacher->watch.fd, kind, data, length);
        if (rc > 0)
            return true;
        if (rc < 0)
            return attacher_hung_up(monitor, attacher);
    }
    if (attacher->queued_bytes + length + 1 > ATTACH_QUEUE_LIMIT) {
        char why[128];
        snprintf(why, sizeof(why), "too slow, %zu bytes of output were waiting", attacher->queued_bytes);
        attacher_drop(monitor, attacher, why);
        return false;
    }
    struct attach_packet *packet = malloc(sizeof(*packet) + 1 + length);
    if (!packet) {
        attacher_drop(monitor, attacher, "out of memory queueing output");
        return false;
    }
    packet->next = NULL;
    packet->length = 1 + length;
    packet->data[0] = kind;
    if (length)
        memcpy(packet->data + 1, data, length);
    if (attacher->queue_tail)
        attacher->queue_tail->next = packet;
    else
        attacher->queue_head = packet;
    attacher->queue_tail = packet;
    attacher->queued_bytes += packet->length;
    if (!attacher->lagging && attacher->queued_bytes >= ATTACH_QUEUE_HIGH && attacher->container) {
        attacher->lagging = true;
        attacher->progress_at_ms = monotonic_ms();
        set_output_paused(monitor, attacher->container, true);
    }
    return attacher_refresh(monitor, attacher);
}

void attach_broadcast(struct monitor *monitor, struct container *container, enum log_stream stream,
                      const char *data, size_t length)
{
    uint8_t kind = stream == LOG_STDERR ? ATTACH_STDERR : ATTACH_STDOUT;
    struct attacher *next;
    for (struct attacher *a = monitor->attachers; a; a = next) {
        next = a->next; /* a may be dropped */
        if (a->container == container)
            attacher_output(monitor, a, kind, data, length);
    }
}

/* ----------------------------------------------------------------- stdin */

static void stdin_watch_stop(struct monitor *monitor, struct container *container)
{
    if (container->stdin_watch.fd < 0)
        return;
    if (epoll_ctl(monitor->epoll_fd, EPOLL_CTL_DEL, container->stdin_watch.fd, NULL) < 0)
        fprintf(stderr, "container %s: epoll_ctl(DEL) stdin: %s\n", container->id, strerror(errno));
    container->stdin_watch.fd = -1; /* the fd itself is container->stdin_fd and stays open */
}

static void stdin_watch_start(struct monitor *monitor, struct container *container)
{
    if (container->stdin_watch.fd >= 0)
        return;
    container->stdin_watch.fd = container->stdin_fd;
    if (watch_add(monitor, &container->stdin_watch, EPOLLOUT) < 0) {
        /* Without the watch the paused attachers would never resume. */
        fprintf(stderr, "container %s: watch stdin: %s\n", container->id, strerror(errno));
        container->stdin_watch.fd = -1;
    }
}

/* Unpause an attacher whose input is written or discarded. False when dropped. */
static bool attacher_resume(struct monitor *monitor, struct attacher *attacher)
{
    discard_pending_input(attacher);
    return attacher_refresh(monitor, attacher);
}

/* Write to the container's stdin what it takes. 1 all written, 0 the pipe is
 * full, -1 the input is discarded (stdin gone, or the reader closed it). */
static int write_stdin(struct container *container, const uint8_t *data, size_t length, size_t *written_out)
{
    size_t written = 0;
    int rc = 1;
    while (written < length) {
        ssize_t n = write(container->stdin_fd, data + written, length - written);
        if (n > 0) {
            written += (size_t)n;
            continue;
        }
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && errno == EAGAIN) {
            rc = 0;
            break;
        }
        /* EPIPE: the container closed its stdin; EIO: the terminal hung up. */
        rc = -1;
        break;
    }
    *written_out = written;
    return rc;
}

void attach_on_stdin_writable(struct monitor *monitor, struct container *container)
{
    struct attacher *next;
    for (struct attacher *a = monitor->attachers; a; a = next) {
        next = a->next;
        if (a->container != container || !a->pending_input)
            continue;
        size_t written;
        int rc = write_stdin(container, a->pending_input + a->pending_offset,
                             a->pending_length - a->pending_offset, &written);
        a->pending_offset += written;
        if (rc == 0)
            return; /* still full: wait for the next EPOLLOUT */
        attacher_resume(monitor, a);
    }
    stdin_watch_stop(monitor, container);
}

static void close_stdin(struct monitor *monitor, struct container *container)
{
    stdin_watch_stop(monitor, container);
    if (container->tty) {
        /* The terminal stays (it is also the output): send its end-of-file
         * character, as a user typing ^D at the start of a line would. */
        struct termios settings;
        if (tcgetattr(container->stdin_fd, &settings) == 0) {
            uint8_t eof = settings.c_cc[VEOF];
            if (write(container->stdin_fd, &eof, 1) < 0 && errno != EAGAIN)
                fprintf(stderr, "container %s: write end-of-file to the terminal: %s\n", container->id,
                        strerror(errno));
        }
    }
    close(container->stdin_fd);
    container->stdin_fd = -1;
    struct attacher *next;
    for (struct attacher *a = monitor->attachers; a; a = next) {
        next = a->next;
        if (a->container == container && a->pending_input)
            attacher_resume(monitor, a); /* their input has nowhere to go now */
    }
}

/* ----------------------------------------------------------------- input */

static void resize_terminal(struct container *container, const uint8_t *payload)
{
    int terminal = container->stdout_watch.fd; /* the pty master */
    if (!container->tty || terminal < 0)
        return; /* no terminal (or it is gone): nothing to resize */
    struct winsize size = {
        .ws_col = (unsigned short)(payload[0] | (payload[1] << 8)),
        .ws_row = (unsigned short)(payload[2] | (payload[3] << 8)),
    };
    if (ioctl(terminal, TIOCSWINSZ, &size) < 0)
        fprintf(stderr, "container %s: resize terminal to %ux%u: %s\n", container->id, size.ws_col, size.ws_row,
                strerror(errno));
}

/* One client packet. False when the attacher was dropped. */
static bool handle_input(struct monitor *monitor, struct attacher *attacher, const uint8_t *packet, size_t length)
{
    struct container *container = attacher->container;
    char why[96];
    if (length == 0) {
        attacher_drop(monitor, attacher, "empty packet on the attach stream");
        return false;
    }
    switch (packet[0]) {
    case ATTACH_STDIN: {
        /* Input after the exit, to a container without stdin, or from an
         * attacher that did not ask to send any, is dropped. */
        if (!container || container->stdin_fd < 0 || !attacher->sends_input || length == 1)
            return true;
        size_t written;
        int rc = write_stdin(container, packet + 1, length - 1, &written);
        if (rc != 0)
            return true;
        attacher->pending_length = length - 1 - written;
        attacher->pending_offset = 0;
        attacher->pending_input = malloc(attacher->pending_length);
        if (!attacher->pending_input) {
            attacher_drop(monitor, attacher, "out of memory keeping input");
            return false;
        }
        memcpy(attacher->pending_input, packet + 1 + written, attacher->pending_length);
        stdin_watch_start(monitor, container);
        return attacher_refresh(monitor, attacher); /* stop reading until the pipe takes it */
    }
    case ATTACH_CLOSE_STDIN:
        if (container && container->stdin_fd >= 0 && attacher->sends_input)
            close_stdin(monitor, container);
        return true;
    case ATTACH_RESIZE:
        if (length != 5) {
            snprintf(why, sizeof(why), "resize packet of %zu bytes, expected 5", length);
            attacher_drop(monitor, attacher, why);
            return false;
        }
        if (container)
            resize_terminal(container, packet + 1);
        return true;
    default:
        snprintf(why, sizeof(why), "unknown packet kind %u", packet[0]);
        attacher_drop(monitor, attacher, why);
        return false;
    }
}

/* Read client packets until the socket is empty, input is paused, or the batch is done. */
static void read_input(struct monitor *monitor, struct attacher *attacher)
{
    for (int round = 0; round < ATTACH_INPUT_BATCH && !attacher->pending_input; round++) {
        ssize_t got = recv(attacher->watch.fd, input_buffer, sizeof(input_buffer), MSG_DONTWAIT | MSG_TRUNC);
        if (got < 0 && errno == EINTR)
            continue;
        if (got < 0 && errno == EAGAIN)
            return;
        if (got < 0 && errno == ECONNRESET) {
            /* Reported once when the client closed with output unread; its
             * packets sent before are still queued here. */
            if (!attacher_hung_up(monitor, attacher))
                return;
            continue;
        }
        if (got < 0) {
            char why[96];
            snprintf(why, sizeof(why), "receive: %s", strerror(errno));
            attacher_drop(monitor, attacher, why);
            return;
        }
        if (got == 0) {
            attacher_drop(monitor, attacher, NULL); /* the client detached */
            return;
        }
        if ((size_t)got > sizeof(input_buffer) - 1) {
            char why[96];
            snprintf(why, sizeof(why), "packet of %zd bytes exceeds %d", got, 1 + ATTACH_INPUT_MAX);
            attacher_drop(monitor, attacher, why);
            return;
        }
        if (!handle_input(monitor, attacher, input_buffer, (size_t)got))
            return;
    }
}

void attach_on_event(struct monitor *monitor, struct attacher *attacher, uint32_t events)
{
    if ((events & EPOLLOUT) && !attacher_flush(monitor, attacher))
        return;
    if (!(events & (EPOLLIN | EPOLLHUP | EPOLLERR)))
        return;
    /* `events` may be stale: an earlier event of this batch may have paused
     * or resumed the attacher. Decide on its state now. */
    if (attacher->pending_input) {
        if (events & (EPOLLHUP | EPOLLERR)) {
            /* Gone, but what it sent is still to be written: keep it until
             * then (its unread packets stay readable after the hang-up). */
            attacher->hung_up = true;
            attacher_refresh(monitor, attacher);
        }
        return;
    }
    /* A hang-up, too, is read: packets sent before it come first, then EOF. */
    read_input(monitor, attacher);
}

/* ------------------------------------------------------------------ exit */

void attach_container_exited(struct monitor *monitor, struct container *container)
{
    stdin_watch_stop(monitor, container);
    char code[16];
    int code_length = snprintf(code, sizeof(code), "%d", container->exit_code);
    struct attacher *next;
    for (struct attacher *a = monitor->attachers; a; a = next) {
        next = a->next;
        if (a->container != container)
            continue;
        discard_pending_input(a);
        if (a->hung_up) {
            attacher_drop(monitor, a, NULL);
            continue;
        }
        if (!attacher_output(monitor, a, ATTACH_EXIT, code, (size_t)code_length))
            continue;
        a->container = NULL; /* the container may be removed while the EXIT waits */
        a->lagging = false;
        a->closing = true;
        if (!a->queue_head)
            attacher_drop(monitor, a, NULL);
        else
            attacher_refresh(monitor, a);
    }
    update_output_pause(monitor, container); /* whatever still holds the pipes is read freely */
}

int attach_timeout_ms(struct monitor *monitor)
{
    int64_t timeout = -1;
    uint64_t now = 0;
    for (struct attacher *a = monitor->attachers; a; a = a->next) {
        if (!a->lagging)
            continue;
        if (!now)
            now = monotonic_ms();
        int64_t left = (int64_t)(a->progress_at_ms + ATTACH_STALL_MS) - (int64_t)now;
        if (left < 0)
            left = 0;
        if (timeout < 0 || left < timeout)
            timeout = left;
    }
    return (int)timeout;
}

void attach_check_stalls(struct monitor *monitor)
{
    uint64_t now = 0;
    struct attacher *next;
    for (struct attacher *a = monitor->attachers; a; a = next) {
        next = a->next;
        if (!a->lagging)
            continue;
        if (!now)
            now = monotonic_ms();
        if (now - a->progress_at_ms >= ATTACH_STALL_MS) {
            char why[160];
            snprintf(why, sizeof(why), "too slow: took nothing for %d ms while %zu bytes of output waited",
                     ATTACH_STALL_MS, a->queued_bytes);
            attacher_drop(monitor, a, why);
        }
    }
}

/* ---------------------------------------------------------------- ATTACH */

void attach_begin(struct monitor *monitor, struct connection *connection, uint32_t request_id,
                  const char *container_id, bool sends_input)
{
    struct buffer reply = {0};
    struct error err;
    struct attacher *attacher = NULL;
    struct container *container = container_id ? container_find(monitor, container_id) : NULL;
    if (!container_id) {
        reply_start(&reply, REQUEST_ATTACH, request_id, EINVAL, "ATTACH needs a container id");
    } else if (!container) {
        error_plain(&err, ENOENT, "container %s not found in pod %s", container_id, monitor->pod_id);
        reply_start(&reply, REQUEST_ATTACH, request_id, err.code, err.message);
    } else if (container->status == CONTAINER_EXITED) {
        error_plain(&err, ESRCH, "container %s has exited (exit code %d): nothing to attach to", container->id,
                    container->exit_code);
        reply_start(&reply, REQUEST_ATTACH, request_id, err.code, err.message);
    } else if (!(attacher = calloc(1, sizeof(*attacher)))) {
        reply_start(&reply, REQUEST_ATTACH, request_id, ENOMEM, "attach: out of memory");
    } else {
        reply_start(&reply, REQUEST_ATTACH, request_id, 0, NULL);
        /* A native tty container's terminal arrives at the end of its set-up:
         * the plan says whether there will be a stdin. */
        buffer_put_u32(&reply, FIELD_STDIN, container->stdin_wanted ? 1 : 0);
        buffer_put_u32(&reply, FIELD_TTY, container->tty ? 1 : 0);
    }
    reply_send(monitor, connection, &reply);
    buffer_free(&reply);
    if (!attacher)
        return;
    if (connection->watch.fd < 0) {
        free(attacher); /* the reply could not be sent: the connection is closed */
        return;
    }
    int fd = connection_take_fd(monitor, connection);
    int size = ATTACH_SOCKET_BUFFER;
    /* SO_SNDBUFFORCE passes net.core.wmem_max when privileged; else the capped SO_SNDBUF. */
    if (setsockopt(fd, SOL_SOCKET, SO_SNDBUFFORCE, &size, sizeof(size)) < 0 &&
        setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &size, sizeof(size)) < 0)
        fprintf(stderr, "container %s: attach stream SO_SNDBUF: %s\n", container->id, strerror(errno));
    attacher->container = container;
    attacher->sends_input = sends_input;
    attacher->watch = (struct watch){WATCH_ATTACHER, fd, attacher, LOG_STDOUT};
    /* Still registered for the connection: point the registration at the attacher. */
    struct epoll_event event = {.events = EPOLLIN, .data.ptr = &attacher->watch};
    if (epoll_ctl(monitor->epoll_fd, EPOLL_CTL_MOD, fd, &event) < 0) {
        fprintf(stderr, "container %s: epoll_ctl(MOD) attach stream: %s\n", container->id, strerror(errno));
        epoll_ctl(monitor->epoll_fd, EPOLL_CTL_DEL, fd, NULL);
        close(fd);
        free(attacher);
        return;
    }
    attacher->registered = true;
    attacher->events = EPOLLIN;
    attacher->next = monitor->attachers;
    monitor->attachers = attacher;
}
