"""Memory per pod: daemon + monitor PSS as pods are added.

    sudo python bench/density.py [--sizes 10,50,100]

Starts a private registry and daemon, then grows the node to each size in
turn (each pod: its monitor plus one busybox `sleep` container), and at each
size reads the proportional set size (smaps_rollup) of the daemon and of all
pod monitors, times ListPodSandbox and ListContainers, and times the start-up
(RunPodSandbox + CreateContainer + StartContainer) and the teardown
(StopPodSandbox + RemovePodSandbox) of ten more pods, one at a time, to show
what the node's size does to them. The per-pod cost is
the slope between the smallest and the largest size. Container processes
themselves (the workload) are not counted: they are the same whatever engine
runs them.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

from harness import bench_node

from crio_fast.api import api_pb2 as api
from tests.support.daemon import Daemon
from tests.support.pods import kubelet_container_linux, kubelet_pod_linux


def pss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            if line.startswith("Pss:"):
                return int(line.split()[1])
    return 0


def monitor_pids(d: Daemon) -> list[int]:
    pids = []
    for pid_file in (d.dirs.runroot / "pods").glob("*/monitor.pid"):
        try:
            pids.append(int(pid_file.read_text()))
        except (OSError, ValueError):
            continue
    return pids


def timed(fn, repeat: int = 5) -> float:
    samples = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - t) * 1000)
    return statistics.median(samples)


def start_pod(rt, image: str, name: str, log_dir: Path) -> str:
    pod = api.PodSandboxConfig(
        metadata=api.PodSandboxMetadata(name=name, namespace="density", uid=f"uid-{name}"),
        hostname=name, log_directory=str(log_dir / name), linux=kubelet_pod_linux(),
    )
    pod_id = rt.RunPodSandbox(api.RunPodSandboxRequest(config=pod), timeout=30).pod_sandbox_id
    ctr = api.ContainerConfig(
        metadata=api.ContainerMetadata(name="sleep"), image=api.ImageSpec(image=image),
        command=["/bin/sleep", "3600"], log_path="sleep.log", linux=kubelet_container_linux(),
    )
    cid = rt.CreateContainer(
        api.CreateContainerRequest(pod_sandbox_id=pod_id, config=ctr, sandbox_config=pod), timeout=30
    ).container_id
    rt.StartContainer(api.StartContainerRequest(container_id=cid), timeout=30)
    return pod_id


def probe_pods(d: Daemon, image: str, size: int, count: int = 10) -> tuple[float, float]:
    """Median start-up and median teardown (StopPodSandbox + RemovePodSandbox) of ``count`` more
    pods on a node of ``size`` pods, each removed before the next starts."""
    rt = d.client.runtime
    start_ups, teardowns = [], []
    for n in range(count):
        t = time.perf_counter()
        pod_id = start_pod(rt, image, f"probe{size}-{n}", d.dirs.log_dir)
        t_started = time.perf_counter()
        rt.StopPodSandbox(api.StopPodSandboxRequest(pod_sandbox_id=pod_id), timeout=30)
        rt.RemovePodSandbox(api.RemovePodSandboxRequest(pod_sandbox_id=pod_id), timeout=30)
        start_ups.append((t_started - t) * 1000)
        teardowns.append((time.perf_counter() - t_started) * 1000)
    return statistics.median(start_ups), statistics.median(teardowns)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="10,50,100")
    parser.add_argument("--dir", default="/var/tmp",
                        help="where the daemon's root goes (its run root is always a private tmpfs)")
    parser.add_argument("--json", help="also write the rows to this file")
    args = parser.parse_args()
    sizes = sorted(int(s) for s in args.sizes.split(","))

    rows = []
    with bench_node(args.dir) as (d, pushed):
        rt = d.client.runtime
        count = 0
        for size in sizes:
            while count < size:
                start_pod(rt, pushed.reference, f"d{count}", d.dirs.log_dir)
                count += 1
            time.sleep(1.0)  # let lazily touched pages settle
            monitors = [pss_kib(p) for p in monitor_pids(d)]
            start_up, teardown = probe_pods(d, pushed.reference, size)
            rows.append({
                "pods": size,
                "daemon": pss_kib(d.proc.pid),
                "monitors": sum(monitors),
                "per_monitor": sum(monitors) / max(1, len(monitors)),
                "list_pods": timed(lambda: rt.ListPodSandbox(api.ListPodSandboxRequest(), timeout=30)),
                "list_ctrs": timed(lambda: rt.ListContainers(api.ListContainersRequest(), timeout=30)),
                "start_up": start_up,
                "teardown": teardown,
            })

    if args.json:
        Path(args.json).write_text(json.dumps(rows))
    print("| pods | daemon PSS KiB | monitors PSS KiB | per monitor KiB | ListPodSandbox ms | ListContainers ms "
          "| start-up p50 ms | stop+remove p50 ms |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['pods']} | {r['daemon']} | {r['monitors']} | {r['per_monitor']:.0f} | "
              f"{r['list_pods']:.2f} | {r['list_ctrs']:.2f} | {r['start_up']:.2f} | {r['teardown']:.2f} |")
    if len(rows) > 1:
        first, last = rows[0], rows[-1]
        slope = ((last["daemon"] + last["monitors"]) - (first["daemon"] + first["monitors"])) / (last["pods"] - first["pods"])
        print(f"\nPer-pod cost (slope {first['pods']}..{last['pods']} pods, daemon + monitors): {slope:.0f} KiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
