/*
 * Asking a filesystem's mount context whether it takes a parameter, without
 * mounting anything: fsopen(2) a throwaway context and fsconfig(2) it.
 *
 * fsconfig's answer means something only when the filesystem parses its
 * parameters itself. A filesystem without a parser of its own gets the
 * kernel's legacy context, which takes any key and leaves the checking to
 * FSCONFIG_CMD_CREATE: overlayfs before Linux 6.5 takes "lowerdir+" and the
 * mount then fails (`unrecognized mount option "lowerdir+=..."`). A few
 * parsers (ramfs, debugfs) take unknown keys on purpose. So a key that no
 * filesystem knows goes first, and only a context that refuses it (EINVAL)
 * is believed about the key asked for.
 *
 * Also `crio-fast-monitor --probe-fs-param FSTYPE KEY [VALUE]`, which prints
 * the answer (`crio-fast check` asks it about overlay lowerdir+).
 */
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/mount.h>
#include <unistd.h>

#include "monitor.h"

/* No filesystem has a parameter of this name. */
#define FS_PROBE_UNKNOWN_KEY "crio-fast-no-such-parameter"

static int set_param(int fs_fd, const char *key, const char *value)
{
    return value ? sys_fsconfig(fs_fd, FSCONFIG_SET_STRING, key, value, 0)
                 : sys_fsconfig(fs_fd, FSCONFIG_SET_FLAG, key, NULL, 0);
}

int fs_param_probe(const char *fstype, const char *key, const char *value, enum fs_param_answer *answer,
                   struct error *err)
{
    int fs_fd = sys_fsopen(fstype, FSOPEN_CLOEXEC);
    if (fs_fd < 0) {
        int saved = errno;
        error_errno(err, saved, "fsopen %s", fstype);
        /* No new mount API (ENOSYS), not allowed to use it (EPERM: a seccomp
         * filter, no CAP_SYS_ADMIN), no such filesystem (ENODEV): a definite
         * no. Anything else (EMFILE, ENOMEM) says nothing about the kernel. */
        if (saved != ENOSYS && saved != EPERM && saved != ENODEV)
            return -1;
        *answer = FS_PARAM_NO_FSOPEN;
        return 0;
    }
    int rc = 0;
    if (set_param(fs_fd, FS_PROBE_UNKNOWN_KEY, NULL) == 0) {
        *answer = FS_PARAM_NO_PARSER;
        error_plain(err, EINVAL,
                    "%s takes even the unknown parameter %s (a legacy mount context, or a parser that ignores "
                    "what it does not know): fsconfig cannot tell whether it knows %s",
                    fstype, FS_PROBE_UNKNOWN_KEY, key);
    } else if (errno != EINVAL) {
        rc = error_errno(err, errno, "fsconfig %s %s", fstype, FS_PROBE_UNKNOWN_KEY);
    } else if (set_param(fs_fd, key, value) == 0) {
        *answer = FS_PARAM_TAKEN;
        err->code = 0;
        err->message[0] = '\0';
    } else if (errno == EINVAL) {
        *answer = FS_PARAM_REFUSED;
        error_errno(err, EINVAL, "%s refuses %s%s%s", fstype, key, value ? "=" : "", value ? value : "");
    } else {
        rc = error_errno(err, errno, "fsconfig %s %s%s%s", fstype, key, value ? "=" : "", value ? value : "");
    }
    close(fs_fd);
    return rc;
}

const char *fs_param_answer_name(enum fs_param_answer answer)
{
    switch (answer) {
    case FS_PARAM_TAKEN: return "taken";
    case FS_PARAM_REFUSED: return "refused";
    case FS_PARAM_NO_PARSER: return "no-parser";
    case FS_PARAM_NO_FSOPEN: return "no-fsopen";
    }
    return "unknown";
}

int probe_fs_param_main(int argc, char **argv)
{
    if (argc != 4 && argc != 5) {
        fprintf(stderr, "usage: crio-fast-monitor --probe-fs-param FSTYPE KEY [VALUE]\n");
        return 2;
    }
    struct error err = {0};
    enum fs_param_answer answer;
    if (fs_param_probe(argv[2], argv[3], argc == 5 ? argv[4] : NULL, &answer, &err) < 0) {
        printf("error: %s\n", err.message);
        return 2;
    }
    if (answer == FS_PARAM_TAKEN) {
        printf("taken: %s takes %s\n", argv[2], argv[3]);
        return 0;
    }
    printf("%s: %s\n", fs_param_answer_name(answer), err.message);
    return 1;
}
