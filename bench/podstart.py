"""Pod start-up latency through the daemon's real CRI socket.

    sudo python bench/podstart.py [--iterations 50] [--handlers native,runc,crun] [--runtimes NAME:PATH[:ROOT]]
    sudo python bench/podstart.py --handlers native,native+userns    # a user-namespaced pod against a plain one
    sudo python bench/podstart.py --cgroup-managers cgroupfs,systemd    # the two cgroup drivers (systemd: v2)

Handlers "runc" and "crun" are configured from Debian's binaries when no
--runtimes names them (crun with hide_cgroup2_mount, which it needs on
hybrid cgroup hosts).

Starts a private registry (Debian's docker-registry) and a private daemon,
pulls a busybox image built from busybox-static, then runs N iterations of

    RunPodSandbox -> CreateContainer -> StartContainer   (timed: "start-up")
    StopPodSandbox -> RemovePodSandbox                   (timed: "teardown")

with pods in their own namespaces (the monitor makes them) and no CNI,
and prints p50/p90/p99 per phase as a Markdown table ("create+start" is
CreateContainer + StartContainer of one container: the part a runtime handler
decides). A handler written NAME+userns runs its pods as the kubelet runs
hostUsers: false (a user namespace of the pod's own, with a range of 65536
ids per pod as the kubelet hands them out). With several handlers the iterations interleave them so that
machine noise hits all alike, and each handler's medians of start-up and
create+start are given as a ratio to the native handler's. With several
--cgroup-managers a daemon runs per driver (pods without a cgroup_parent: the
driver makes the pod's cgroup, a slice under systemd) and every handler runs
on each, interleaved; the ratios are to the first driver's native handler.
Nothing here is asserted: it reports.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import sys
import time
from pathlib import Path

from harness import bench_node

from crio_fast.api import api_pb2 as api
from tests.support.daemon import Daemon
from tests.support.pods import kubelet_container_linux, kubelet_pod_linux

KNOWN_RUNTIMES = {"runc": "/usr/sbin/runc", "crun": "/usr/bin/crun"}  # Debian's packages
PHASES = ("RunPodSandbox", "CreateContainer", "StartContainer", "create+start", "start-up", "StopPodSandbox",
          "RemovePodSandbox")


def handler_config(handlers: list[str], runtimes: list[str]) -> tuple[list[str], str]:
    """The daemon's --runtimes and config drop-in for ``handlers``: runc and crun from Debian's binaries
    unless ``runtimes`` names them (crun in a drop-in, with hide_cgroup2_mount for hybrid hosts)."""
    runtimes = list(runtimes)
    named = {spec.split(":", 1)[0] for spec in runtimes}
    drop_in = ""
    plain = {h.removesuffix(USERNS_SUFFIX) for h in handlers}
    if "runc" in plain and "runc" not in named:
        runtimes.append(f"runc:{KNOWN_RUNTIMES['runc']}")
    if "crun" in plain and "crun" not in named:
        drop_in = (f'[crio.runtime.runtimes.crun]\nruntime_type = "oci"\nruntime_path = "{KNOWN_RUNTIMES["crun"]}"\n'
                   "hide_cgroup2_mount = true\n")
    return runtimes, drop_in


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


USERNS_SUFFIX = "+userns"


def userns_options(n: int) -> api.UserNamespace:
    """What the kubelet sends for hostUsers: false: 65536 ids at a multiple of 65536, one range per pod."""
    ids = [api.IDMapping(container_id=0, host_id=65536 * (16 + n % 64), length=65536)]
    return api.UserNamespace(mode=api.NamespaceMode.POD, uids=ids, gids=ids)


def one_pod(d: Daemon, image: str, handler_spec: str, n: int, timings: dict[str, list[float]]) -> None:
    rt = d.client.runtime
    handler = handler_spec.removesuffix(USERNS_SUFFIX)
    pod = api.PodSandboxConfig(
        metadata=api.PodSandboxMetadata(name=f"bench{n}", namespace="bench", uid=f"bench-{handler_spec}-{n}"),
        hostname=f"bench{n}",
        log_directory=str(d.dirs.log_dir / f"bench{n}"), linux=kubelet_pod_linux(),
    )
    ctr = api.ContainerConfig(
        metadata=api.ContainerMetadata(name="sleep"), image=api.ImageSpec(image=image),
        command=["/bin/sleep", "3600"], log_path="sleep.log", linux=kubelet_container_linux(),
    )
    if handler_spec.endswith(USERNS_SUFFIX):
        userns = userns_options(n)
        pod.linux.security_context.namespace_options.userns_options.CopyFrom(userns)
        ctr.linux.security_context.namespace_options.userns_options.CopyFrom(userns)
    t0 = time.perf_counter()
    pod_id = rt.RunPodSandbox(api.RunPodSandboxRequest(config=pod, runtime_handler=handler), timeout=30).pod_sandbox_id
    t1 = time.perf_counter()
    ctr_id = rt.CreateContainer(
        api.CreateContainerRequest(pod_sandbox_id=pod_id, config=ctr, sandbox_config=pod), timeout=30
    ).container_id
    t2 = time.perf_counter()
    rt.StartContainer(api.StartContainerRequest(container_id=ctr_id), timeout=30)
    t3 = time.perf_counter()
    rt.StopPodSandbox(api.StopPodSandboxRequest(pod_sandbox_id=pod_id), timeout=30)
    t4 = time.perf_counter()
    rt.RemovePodSandbox(api.RemovePodSandboxRequest(pod_sandbox_id=pod_id), timeout=30)
    t5 = time.perf_counter()
    for phase, value in zip(PHASES, (t1 - t0, t2 - t1, t3 - t2, t3 - t1, t3 - t0, t4 - t3, t5 - t4)):
        timings[phase].append(value * 1000)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--iterations", type=int, default=50)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--handlers", default="native", help="comma-separated runtime handlers to compare")
    parser.add_argument(
        "--dir", default="/var/tmp",
        help="where the daemon's root goes (default /var/tmp: a disk, as /var/lib is on nodes); "
             "its run root is always a private tmpfs",
    )
    parser.add_argument("--json", help="also write the raw timings (ms per phase per handler) to this file")
    parser.add_argument("--runtimes", action="append", default=[], metavar="NAME:PATH[:ROOT]",
                        help="an OCI runtime handler for the daemon (its --runtimes); may be repeated")
    parser.add_argument("--cgroup-managers", default="cgroupfs",
                        help="comma-separated cgroup drivers to compare (a daemon each): cgroupfs, systemd")
    args = parser.parse_args()
    managers = [m for m in args.cgroup_managers.split(",") if m]
    handlers = [h for h in args.handlers.split(",") if h]
    runtimes, drop_in = handler_config(handlers, args.runtimes)

    runs = [(h if len(managers) == 1 else f"{h} ({m})", h, m) for m in managers for h in handlers]
    with contextlib.ExitStack() as stack:
        nodes = {m: stack.enter_context(bench_node(args.dir, runtimes=tuple(runtimes), config_drop_in=drop_in,
                                                   daemon_args=("--cgroup-manager", m)))
                 for m in managers}
        for d, _ in nodes.values():
            if any(h.endswith(USERNS_SUFFIX) for h in handlers):
                # runc and crun set a user-namespaced container up as the pod's root, who must reach its rootfs.
                os.chmod(d.dirs.base, 0o711)
        results = {label: {p: [] for p in PHASES} for label, _, _ in runs}
        for i in range(args.warmup):
            for _, h, m in runs:
                d, pushed = nodes[m]
                one_pod(d, pushed.reference, h, -1 - i, {p: [] for p in PHASES})
        for i in range(args.iterations):
            for label, h, m in runs:
                d, pushed = nodes[m]
                one_pod(d, pushed.reference, h, i, results[label])
    handlers = [label for label, _, _ in runs]

    if args.json:
        Path(args.json).write_text(json.dumps(results))
    print(f"Pod start-up, {args.iterations} iterations per handler, no CNI, root under {args.dir}, "
          "run root on tmpfs (milliseconds)\n")
    print("| handler | phase | p50 | p90 | p99 | mean |")
    print("|---|---|---:|---:|---:|---:|")
    for h in handlers:
        for phase in PHASES:
            v = results[h][phase]
            print(f"| {h} | {phase} | {statistics.median(v):.2f} | {percentile(v, 90):.2f} | "
                  f"{percentile(v, 99):.2f} | {statistics.fmean(v):.2f} |")
    base_label = "native" if len(managers) == 1 else f"native ({managers[0]})"
    if len(handlers) > 1 and base_label in handlers:
        compared = ("create+start", "start-up")
        base = {phase: statistics.median(results[base_label][phase]) for phase in compared}
        print(f"\n| handler | create+start p50 (ms) | / {base_label} | start-up p50 (ms) | / {base_label} |")
        print("|---|---:|---:|---:|---:|")
        for h in handlers:
            cells = []
            for phase in compared:
                median = statistics.median(results[h][phase])
                cells += [f"{median:.2f}", f"{median / base[phase]:.2f}x"]
            print(f"| {h} | {' | '.join(cells)} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
