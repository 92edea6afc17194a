"""Burst start-up: N pods started at once, wall time until all run.

    sudo python bench/burst.py [--sizes 1,10,50]

For each size, N client threads each run RunPodSandbox → CreateContainer →
StartContainer of a busybox `sleep` at the same moment; reported: wall time
until every container runs, per-pod latency p50/p90, and errors. Pods are
removed between sizes.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import threading
import time

from harness import bench_node, remove_all_pods

from crio_fast.api import api_pb2 as api
from tests.support.daemon import Daemon
from tests.support.pods import kubelet_container_linux, kubelet_pod_linux


def start_pod(d: Daemon, image: str, name: str) -> float:
    rt = d.client.runtime
    pod = api.PodSandboxConfig(
        metadata=api.PodSandboxMetadata(name=name, namespace="burst", uid=f"burst-{name}"),
        hostname=name, log_directory=str(d.dirs.log_dir / name), linux=kubelet_pod_linux(),
    )
    ctr = api.ContainerConfig(
        metadata=api.ContainerMetadata(name="sleep"), image=api.ImageSpec(image=image),
        command=["/bin/sleep", "3600"], log_path="sleep.log", linux=kubelet_container_linux(),
    )
    t0 = time.perf_counter()
    pod_id = rt.RunPodSandbox(api.RunPodSandboxRequest(config=pod), timeout=120).pod_sandbox_id
    cid = rt.CreateContainer(
        api.CreateContainerRequest(pod_sandbox_id=pod_id, config=ctr, sandbox_config=pod), timeout=120
    ).container_id
    rt.StartContainer(api.StartContainerRequest(container_id=cid), timeout=120)
    return (time.perf_counter() - t0) * 1000


def burst(d: Daemon, image: str, size: int, round_no: int) -> dict:
    latencies: list[float] = []
    errors: list[str] = []
    barrier = threading.Barrier(size + 1)
    lock = threading.Lock()

    def worker(i: int) -> None:
        barrier.wait()
        try:
            ms = start_pod(d, image, f"b{round_no}-{i}")
            with lock:
                latencies.append(ms)
        except Exception as exc:  # counted, reported
            with lock:
                errors.append(str(exc)[:200])

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(size)]
    for t in threads:
        t.start()
    barrier.wait()
    t0 = time.perf_counter()
    for t in threads:
        t.join()
    wall = (time.perf_counter() - t0) * 1000
    return {"pods": size, "wall_ms": wall, "latencies": latencies, "errors": errors}


def run(sizes: list[int], state_dir: str = "/var/tmp") -> list[dict]:
    rows = []
    with bench_node(state_dir) as (d, pushed):
        for n, size in enumerate(sizes):
            rows.append(burst(d, pushed.reference, size, n))
            remove_all_pods(d)
    return rows


def table(rows: list[dict]) -> str:
    out = ["| pods | wall ms (all running) | per-pod p50 ms | per-pod p90 ms | errors |", "|---:|---:|---:|---:|---:|"]
    for r in rows:
        lat = sorted(r["latencies"]) or [float("nan")]
        p90 = lat[min(len(lat) - 1, round(0.9 * (len(lat) - 1)))]
        out.append(f"| {r['pods']} | {r['wall_ms']:.0f} | {statistics.median(lat):.1f} | {p90:.1f} | {len(r['errors'])} |")
    return "\n".join(out)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="1,10,50")
    parser.add_argument("--dir", default="/var/tmp",
                        help="where the daemon's root goes (its run root is always a private tmpfs)")
    args = parser.parse_args()
    rows = run([int(s) for s in args.sizes.split(",")], args.dir)
    print(table(rows))
    for r in rows:
        for e in r["errors"][:3]:
            print(f"error ({r['pods']} pods): {e}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
