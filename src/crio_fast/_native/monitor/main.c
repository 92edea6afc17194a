/*
 * crio-fast-monitor: the per-pod native monitor.
 *
 * One process per pod. It anchors the pod's namespaces, starts and reaps the
 * pod's containers, and holds their stdio. It is written in plain C against
 * libc only so that its resident cost per pod stays in the tens of kilobytes.
 *
 * Modes:
 *   pod     the per-pod monitor (pod.c), started by the daemon
 *   make-netns network namespaces made ahead for the daemon's pool (netns.c)
 *   exec    a short-lived helper running one command in a container (exec.c)
 *   runtime runs an OCI runtime command, optionally without the cgroup2 mount (oci.c)
 *   --check the kernel features the monitor needs are usable (selfcheck.c)
 *   --probe-fs-param whether a filesystem takes a mount parameter (fsprobe.c)
 *   --probe-idmap-overlay whether overlays take ID-mapped lower layers here (idmapprobe.c)
 * Each concern lives in its own file next to this one; docs/monitor.md
 * describes the protocol and the plan format.
 */
#include <stdio.h>
#include <string.h>

#include "monitor.h"

static void usage(FILE *out)
{
    fprintf(out,
            "usage: crio-fast-monitor pod --pod-id ID --pod-dir DIR --exits-dir DIR --ready-fd FD [...]\n"
            "       crio-fast-monitor make-netns PATH...\n"
            "       crio-fast-monitor exec --plan-fd FD --status-fd FD\n"
            "       crio-fast-monitor runtime [--hide-cgroup2-mount] -- RUNTIME ARGS...\n"
            "       crio-fast-monitor --version\n"
            "       crio-fast-monitor --check\n"
            "       crio-fast-monitor --probe-fs-param FSTYPE KEY [VALUE]\n"
            "       crio-fast-monitor --probe-idmap-overlay DIR\n"
            "The monitor is started by the crio-fast daemon, not by hand.\n");
}

int main(int argc, char **argv)
{
    if (argc >= 2 && strcmp(argv[1], "pod") == 0)
        return pod_main(argc, argv);
    if (argc >= 2 && strcmp(argv[1], "make-netns") == 0)
        return make_netns_main(argc, argv);
    if (argc >= 2 && strcmp(argv[1], "exec") == 0)
        return exec_main(argc, argv);
    if (argc >= 2 && strcmp(argv[1], "runtime") == 0)
        return runtime_main(argc, argv);
    if (argc == 2 && strcmp(argv[1], "--version") == 0) {
        printf("crio-fast-monitor %s (protocol %d, plan format %d)\n", MONITOR_VERSION, MONITOR_PROTOCOL,
               PLAN_FORMAT_VERSION);
        return 0;
    }
    if (argc == 2 && strcmp(argv[1], "--check") == 0) {
        /* The daemon runs this at start to prove the binary executes here. */
        return monitor_self_check();
    }
    if (argc >= 2 && strcmp(argv[1], "--probe-fs-param") == 0)
        return probe_fs_param_main(argc, argv);
    if (argc >= 2 && strcmp(argv[1], "--probe-idmap-overlay") == 0)
        return probe_idmap_overlay_main(argc, argv);
    usage(stderr);
    return 2;
}
