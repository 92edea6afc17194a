/*
 * Exit files: one small text file per exited container in the exits dir,
 * written atomically (a dot-prefixed temp file, fsync-free, then rename) so
 * the daemon's inotify watch (IN_MOVED_TO) only ever sees complete files:
 *
 *     exit_code=137
 *     signal=9
 *     pid=12345
 *     started_at=1700000000000000000
 *     finished_at=1700000001000000000
 *     oom_killed=0
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "monitor.h"

int write_exit_file(const char *exits_dir, const char *container_id, const struct exit_record *record,
                    struct error *err)
{
    char text[256];
    int length = snprintf(text, sizeof(text),
                          "exit_code=%d\nsignal=%d\npid=%d\nstarted_at=%llu\nfinished_at=%llu\noom_killed=%d\n",
                          record->exit_code, record->signal, (int)record->pid,
                          (unsigned long long)record->started_at_ns, (unsigned long long)record->finished_at_ns,
                          record->oom_killed ? 1 : 0);
    if (length < 0 || (size_t)length >= sizeof(text))
        return error_plain(err, EOVERFLOW, "exit file for %s: record does not fit", container_id);

    char *final_path = format_string("%s/%s", exits_dir, container_id);
    char *temp_path = format_string("%s/.%s.tmp", exits_dir, container_id);
    if (!final_path || !temp_path) {
        free(final_path);
        free(temp_path);
        return error_errno(err, ENOMEM, "exit file for %s", container_id);
    }
    int rc = -1;
    int fd = open(temp_path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW, 0644);
    if (fd < 0) {
        error_errno(err, errno, "create %s", temp_path);
        goto out;
    }
    int write_rc = write_all(fd, text, (size_t)length);
    if (close(fd) < 0 && write_rc == 0)
        write_rc = -errno;
    if (write_rc < 0) {
        error_errno(err, -write_rc, "write %s", temp_path);
        unlink(temp_path);
        goto out;
    }
    if (rename(temp_path, final_path) < 0) {
        error_errno(err, errno, "rename %s to %s", temp_path, final_path);
        unlink(temp_path);
        goto out;
    }
    rc = 0;
out:
    free(final_path);
    free(temp_path);
    return rc;
}

int read_oom_kill_counter(const char *path, uint64_t *out, struct error *err)
{
    char *text;
    if (read_small_file(path, 64 * 1024, &text, NULL, err) < 0)
        return -1;
    /* Both memory.events (v2) and memory.oom_control (v1) have "oom_kill N". */
    int rc = error_plain(err, ENOENT, "%s has no oom_kill counter", path);
    for (char *line = text; line && *line;) {
        char *next = strchr(line, '\n');
        if (next)
            *next++ = 0;
        if (strncmp(line, "oom_kill ", 9) == 0) {
            if (parse_u64(line + 9, out) < 0)
                rc = error_plain(err, EINVAL, "%s: bad oom_kill value \"%s\"", path, line + 9);
            else
                rc = 0;
            break;
        }
        line = next;
    }
    free(text);
    return rc;
}
