/* Small helpers: explicit errors, whole-file I/O, raw syscall wrappers. */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include "monitor.h"

#ifndef SYS_clone3
#define SYS_clone3 435
#endif
#ifndef SYS_openat2
#define SYS_openat2 437
#endif
#ifndef SYS_open_tree
#define SYS_open_tree 428
#endif
#ifndef SYS_move_mount
#define SYS_move_mount 429
#endif
#ifndef SYS_fsopen
#define SYS_fsopen 430
#endif
#ifndef SYS_fsconfig
#define SYS_fsconfig 431
#endif
#ifndef SYS_fsmount
#define SYS_fsmount 432
#endif
#ifndef SYS_pidfd_open
#define SYS_pidfd_open 434
#endif
#ifndef SYS_pidfd_send_signal
#define SYS_pidfd_send_signal 424
#endif
#ifndef SYS_close_range
#define SYS_close_range 436
#endif
#ifndef SYS_mount_setattr
#define SYS_mount_setattr 442
#endif
#ifndef CLONE_PIDFD
#define CLONE_PIDFD 0x00001000
#endif

/* ----------------------------------------------------------------- errors */

static void error_vformat(struct error *err, int code, const char *fmt, va_list args, bool with_errno)
{
    err->code = code;
    int used = vsnprintf(err->message, sizeof(err->message), fmt, args);
    if (used < 0) {
        snprintf(err->message, sizeof(err->message), "(unformattable error message)");
        used = (int)strlen(err->message);
    }
    if (with_errno && (size_t)used < sizeof(err->message))
        snprintf(err->message + used, sizeof(err->message) - (size_t)used, ": %s", strerror(code));
    /* Say so when a message had to be cut rather than cutting silently. */
    if (strlen(err->message) == sizeof(err->message) - 1)
        memcpy(err->message + sizeof(err->message) - 5, "...]", 5);
}

int error_errno(struct error *err, int code, const char *fmt, ...)
{
    va_list args;
    va_start(args, fmt);
    error_vformat(err, code, fmt, args, true);
    va_end(args);
    return -1;
}

int error_plain(struct error *err, int code, const char *fmt, ...)
{
    va_list args;
    va_start(args, fmt);
    error_vformat(err, code, fmt, args, false);
    va_end(args);
    return -1;
}

int error_context(struct error *err, const char *fmt, ...)
{
    char prefix[ERROR_MESSAGE_MAX];
    char previous[ERROR_MESSAGE_MAX];
    va_list args;
    va_start(args, fmt);
    vsnprintf(prefix, sizeof(prefix), fmt, args);
    va_end(args);
    memcpy(previous, err->message, sizeof(previous));
    int code = err->code;
    return error_plain(err, code, "%s: %s", prefix, previous);
}

/* -------------------------------------------------------------- file I/O */

int write_all(int fd, const void *data, size_t length)
{
    const char *position = data;
    while (length > 0) {
        ssize_t written = write(fd, position, length);
        if (written < 0) {
            if (errno == EINTR)
                continue;
            return -errno;
        }
        position += written;
        length -= (size_t)written;
    }
    return 0;
}

int write_file(const char *path, const char *text, struct error *err)
{
    int fd = open(path, O_WRONLY | O_CLOEXEC | O_NOCTTY);
    if (fd < 0)
        return error_errno(err, errno, "open %s", path);
    /* Kernel interface files (cgroup, /proc/sys) take one write per value. */
    size_t length = strlen(text);
    ssize_t written;
    do {
        written = write(fd, text, length);
    } while (written < 0 && errno == EINTR);
    int saved = errno;
    close(fd);
    if (written < 0)
        return error_errno(err, saved, "write %s to %s", text, path);
    if ((size_t)written != length)
        return error_plain(err, EIO, "write %s to %s: short write (%zd of %zu bytes)", text, path, written, length);
    return 0;
}

int read_fd_to_end(int fd, size_t limit, uint8_t **out, size_t *out_length, struct error *err)
{
    size_t capacity = 4096, length = 0;
    uint8_t *data = malloc(capacity + 1);
    if (!data)
        return error_errno(err, ENOMEM, "read");
    for (;;) {
        if (length == capacity) {
            if (capacity >= limit) {
                free(data);
                return error_plain(err, EFBIG, "input larger than %zu bytes", limit);
            }
            size_t grown = capacity * 2 > limit ? limit : capacity * 2;
            uint8_t *bigger = realloc(data, grown + 1);
            if (!bigger) {
                free(data);
                return error_errno(err, ENOMEM, "read");
            }
            data = bigger;
            capacity = grown;
        }
        ssize_t got = read(fd, data + length, capacity - length);
        if (got < 0) {
            if (errno == EINTR)
                continue;
            int saved = errno;
            free(data);
            return error_errno(err, saved, "read");
        }
        if (got == 0)
            break;
        length += (size_t)got;
    }
    data[length] = 0;
    *out = data;
    *out_length = length;
    return 0;
}

int read_small_file(const char *path, size_t limit, char **out, size_t *out_length, struct error *err)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY);
    if (fd < 0)
        return error_errno(err, errno, "open %s", path);
    uint8_t *data;
    size_t length;
    int rc = read_fd_to_end(fd, limit, &data, &length, err);
    close(fd);
    if (rc < 0)
        return error_context(err, "%s", path);
    *out = (char *)data;
    if (out_length)
        *out_length = length;
    return 0;
}

char *format_string(const char *fmt, ...)
{
    va_list args;
    char *out = NULL;
    va_start(args, fmt);
    int rc = vasprintf(&out, fmt, args);
    va_end(args);
    return rc < 0 ? NULL : out;
}

uint64_t realtime_ns(void)
{
    struct timespec now;
    /* CLOCK_REALTIME cannot fail with a valid clock id and pointer. */
    clock_gettime(CLOCK_REALTIME, &now);
    return (uint64_t)now.tv_sec * 1000000000ull + (uint64_t)now.tv_nsec;
}

int parse_u64(const char *text, uint64_t *out)
{
    if (!text || !*text)
        return -1;
    uint64_t value = 0;
    for (const char *p = text; *p; p++) {
        if (*p < '0' || *p > '9')
            return -1;
        unsigned digit = (unsigned)(*p - '0');
        if (value > (UINT64_MAX - digit) / 10)
            return -1;
        value = value * 10 + digit;
    }
    *out = value;
    return 0;
}

int set_nonblocking(int fd, bool nonblocking)
{
    int flags = fcntl(fd, F_GETFL);
    if (flags < 0)
        return -1;
    flags = nonblocking ? flags | O_NONBLOCK : flags & ~O_NONBLOCK;
    return fcntl(fd, F_SETFL, flags);
}

int move_fd_above(int fd, int minimum)
{
    if (fd >= minimum)
        return fd;
    int moved = fcntl(fd, F_DUPFD_CLOEXEC, minimum);
    if (moved < 0)
        return -1;
    close(fd);
    return moved;
}

int array_append(void *array_pointer, size_t *count, size_t item_size, const void *item)
{
    void **array = array_pointer;
    size_t n = *count;
    /* Capacity is the next power of two >= n (min 4): grow when n hits it. */
    if (n == 0 || (n >= 4 && (n & (n - 1)) == 0)) {
        size_t capacity = n == 0 ? 4 : n * 2;
        void *grown = realloc(*array, capacity * item_size);
        if (!grown)
            return -1;
        *array = grown;
    }
    memcpy((char *)*array + n * item_size, item, item_size);
    *count = n + 1;
    return 0;
}

bool container_id_valid(const char *id)
{
    size_t length = strlen(id);
    if (length == 0 || length > 128 || id[0] == '.')
        return false;
    for (const char *p = id; *p; p++) {
        char c = *p;
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_' || c == '-' ||
              c == '.'))
            return false;
    }
    return true;
}

static int close_fds_by_listing(const int *keep, size_t keep_count, struct error *err)
{
    /* Slow path for kernels without close_range(2). */
    for (int fd = 3; fd < 65536; fd++) {
        bool kept = false;
        for (size_t i = 0; i < keep_count; i++)
            if (keep[i] == fd)
                kept = true;
        if (!kept && close(fd) < 0 && errno != EBADF)
            return error_errno(err, errno, "close fd %d", fd);
    }
    return 0;
}

int close_fds_except(const int *keep, size_t keep_count, struct error *err)
{
    unsigned int first = 3;
    for (size_t i = 0; i <= keep_count; i++) {
        unsigned int last = i < keep_count ? (unsigned int)keep[i] - 1 : ~0u;
        if (i < keep_count && keep[i] < 3)
            continue;
        if (first <= last && syscall(SYS_close_range, first, last, 0) < 0) {
            if (errno == ENOSYS)
                return close_fds_by_listing(keep, keep_count, err);
            return error_errno(err, errno, "close_range %u-%u", first, last);
        }
        if (i < keep_count)
            first = (unsigned int)keep[i] + 1;
    }
    return 0;
}

/* ------------------------------------------------------------ syscalls */

pid_t clone_process(uint64_t flags, int *pidfd_out)
{
    int pidfd = -1;
    struct clone_args_v2 args = {
        .flags = flags | CLONE_PIDFD,
        .pidfd = (uint64_t)(uintptr_t)&pidfd,
        .exit_signal = SIGCHLD,
    };
    /* clone3 with no stack behaves like fork (the child gets a copy of ours). */
    long pid = syscall(SYS_clone3, &args, sizeof(args));
    if (pid < 0 && (errno == ENOSYS || errno == E2BIG)) {
        /* Older kernels: clone(2); pidfd comes back through parent_tid. */
        pid = syscall(SYS_clone, (unsigned long)(flags | CLONE_PIDFD | SIGCHLD), NULL, &pidfd, NULL, NULL);
        if (pid < 0 && errno == EINVAL) {
            pidfd = -1;
            pid = syscall(SYS_clone, (unsigned long)(flags | SIGCHLD), NULL, NULL, NULL, NULL);
        }
    }
    if (pid > 0 && pidfd_out)
        *pidfd_out = pidfd;
    return (pid_t)pid;
}

int sys_openat2(int dirfd, const char *path, uint64_t flags, uint64_t mode, uint64_t resolve)
{
    struct open_how_v0 how = {.flags = flags, .mode = mode, .resolve = resolve};
    return (int)syscall(SYS_openat2, dirfd, path, &how, sizeof(how));
}

int sys_open_tree(int dirfd, const char *path, unsigned int flags)
{
    return (int)syscall(SYS_open_tree, dirfd, path, flags);
}

int sys_move_mount(int from_dirfd, const char *from_path, int to_dirfd, const char *to_path, unsigned int flags)
{
    return (int)syscall(SYS_move_mount, from_dirfd, from_path, to_dirfd, to_path, flags);
}

int sys_mount_setattr(int dirfd, const char *path, unsigned int flags, struct mount_attr_v0 *attr)
{
    return (int)syscall(SYS_mount_setattr, dirfd, path, flags, attr, sizeof(*attr));
}

int sys_fsopen(const char *fstype, unsigned int flags)
{
    return (int)syscall(SYS_fsopen, fstype, flags);
}

int sys_fsconfig(int fd, unsigned int command, const char *key, const void *value, int aux)
{
    return (int)syscall(SYS_fsconfig, fd, command, key, value, aux);
}

int sys_fsmount(int fd, unsigned int flags, unsigned int attr_flags)
{
    return (int)syscall(SYS_fsmount, fd, flags, attr_flags);
}

int sys_pidfd_open(pid_t pid, unsigned int flags)
{
    return (int)syscall(SYS_pidfd_open, pid, flags);
}

int sys_pidfd_send_signal(int pidfd, int signal)
{
    return (int)syscall(SYS_pidfd_send_signal, pidfd, signal, NULL, 0);
}

int sys_pivot_root(const char *new_root, const char *put_old)
{
    return (int)syscall(SYS_pivot_root, new_root, put_old);
}
