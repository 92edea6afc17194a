/*
 * crio-fast-monitor: the per-pod native monitor.
 *
 * One process per pod. It anchors the pod's namespaces, starts and reaps the
 * pod's containers, and holds their stdio. It is written in plain C against
 * libc only so that its resident cost per pod stays in the tens of kilobytes.
 *
 * This file holds the entry point and argument handling; each concern lives
 * in its own file next to it.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "monitor.h"

static void usage(FILE *out)
{
    fprintf(out,
            "usage: crio-fast-monitor --version\n"
            "       crio-fast-monitor --check\n"
            "The monitor is started by the crio-fast daemon, not by hand.\n");
}

int main(int argc, char **argv)
{
    if (argc == 2 && strcmp(argv[1], "--version") == 0) {
        printf("crio-fast-monitor %s (protocol %d)\n", MONITOR_VERSION, MONITOR_PROTOCOL);
        return 0;
    }
    if (argc == 2 && strcmp(argv[1], "--check") == 0) {
        /* The daemon runs this at start to prove the binary executes here. */
        return monitor_self_check();
    }
    usage(stderr);
    return 2;
}
