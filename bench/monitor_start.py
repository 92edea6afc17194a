"""Pod monitor start-up path and memory cost on this host (run as root).

Usage::

    python bench/monitor_start.py [--rounds N] [--pods P]

Measures, in a fresh directory under /tmp removed at the end, with a
busybox-static rootfs and the standard container mounts:

* spawn: ``spawn_monitor`` until the monitor is ready (new net/ipc/uts
  namespaces anchored, /dev/shm mounted, socket listening);
* create+start: CREATE and START of a ``true`` container over an overlay of
  the rootfs (new mnt/pid/cgroup namespaces), until START has replied;
* run to exit file: from CREATE until the exit file has appeared;
* shutdown: ``PodMonitor.shutdown`` until the monitor has exited and every
  mount is gone;
* a STATE request/reply on the persistent connection (2000 times);

each N times (default 50), reported as median and p90 in milliseconds. Then
memory: the PSS and private dirty memory of one monitor (from
/proc/PID/smaps_rollup) with 0, 1 and 10 running containers, averaged over P
concurrent pods (default 20), since the shared libc pages are split between
them; and the daemon-side Python allocation per PodMonitor object.
"""

from __future__ import annotations

import argparse
import ctypes
import os
import shutil
import statistics
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from crio_fast._native import monitor_path  # noqa: E402
from crio_fast.runtime import (  # noqa: E402
    LaunchPlan,
    Namespace,
    Overlay,
    PodMonitor,
    PodMonitorSpec,
    cleanup_pod_dir,
    default_linux_mounts,
    read_exit_file,
    spawn_monitor,
)
from tests.support.rootfs import build_busybox_rootfs  # noqa: E402

PR_SET_CHILD_SUBREAPER = 36


class Bench:
    def __init__(self, base: Path) -> None:
        self.base = base
        self.rootfs = build_busybox_rootfs(base / "rootfs")
        self.exits = base / "exits"
        self.exits.mkdir()
        self.monitor_path = str(monitor_path())
        self.mounts = default_linux_mounts(cgroup="v2")
        self.counter = 0

    def spawn(self, name: str) -> PodMonitor:
        pod_dir = self.base / name
        pod_dir.mkdir()
        return spawn_monitor(self.monitor_path, PodMonitorSpec(name, str(pod_dir), str(self.exits)))

    def plan(self, argv: list[str]) -> tuple[str, LaunchPlan]:
        self.counter += 1
        name = f"c{self.counter}"
        directory = self.base / "containers" / name
        for sub in ("upper", "work", "rootfs"):
            (directory / sub).mkdir(parents=True)
        plan = LaunchPlan(
            argv=argv, env=["PATH=/bin"],
            namespaces=[Namespace("mnt"), Namespace("pid"), Namespace("cgroup")],
            overlay=Overlay(lower=[str(self.rootfs)], upper=str(directory / "upper"), work=str(directory / "work"),
                            target=str(directory / "rootfs")),
            mounts=self.mounts,
        )
        return name, plan

    def log(self, name: str) -> str:
        return str(self.base / "containers" / name / "ctr.log")

    def wait_exit(self, name: str, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while read_exit_file(self.exits / name) is None:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{name} did not exit")
            time.sleep(0.0002)


def summary(label: str, samples: list[float]) -> str:
    ordered = sorted(samples)
    p90 = ordered[min(len(ordered) - 1, int(round(0.9 * (len(ordered) - 1))))]
    return f"{label:<24} median {statistics.median(ordered) * 1000:7.2f} ms   p90 {p90 * 1000:7.2f} ms   (n={len(ordered)})"


def rollup(pid: int) -> dict[str, int]:
    values = {}
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()[1:]:
        key, _, rest = line.partition(":")
        values[key] = int(rest.split()[0])
    return values


def time_life_cycle(bench: Bench, rounds: int) -> None:
    spawn, create_start, to_exit, shutdown = [], [], [], []
    for index in range(rounds):
        t0 = time.perf_counter()
        monitor = bench.spawn(f"pod{index}")
        t1 = time.perf_counter()
        name, plan = bench.plan(["/bin/true"])
        t2 = time.perf_counter()
        monitor.create(name, plan, bench.log(name))
        monitor.start(name)
        t3 = time.perf_counter()
        bench.wait_exit(name)
        t4 = time.perf_counter()
        monitor.shutdown()
        t5 = time.perf_counter()
        spawn.append(t1 - t0)
        create_start.append(t3 - t2)
        to_exit.append(t4 - t2)
        shutdown.append(t5 - t4)
    print(summary("spawn pod monitor", spawn))
    print(summary("create+start true", create_start))
    print(summary("create to exit file", to_exit))
    print(summary("shutdown", shutdown))


def time_requests(bench: Bench, count: int = 2000) -> None:
    monitor = bench.spawn("requests")
    try:
        name, plan = bench.plan(["/bin/sleep", "1000"])
        monitor.create(name, plan, bench.log(name))
        monitor.start(name)
        samples = []
        for _ in range(count):
            t0 = time.perf_counter()
            monitor.state(name)
            samples.append(time.perf_counter() - t0)
        print(summary("STATE request/reply", samples))
    finally:
        monitor.shutdown()


def measure_memory(bench: Bench, pods: int) -> None:
    monitors = [bench.spawn(f"mem{index}") for index in range(pods)]
    try:
        for containers in (0, 1, 10):
            for monitor in monitors:
                while len(monitor.list_containers()) < containers:
                    name, plan = bench.plan(["/bin/sleep", "1000"])
                    monitor.create(name, plan, bench.log(name))
                    monitor.start(name)
            time.sleep(0.05)
            rollups = [rollup(m.pid) for m in monitors]
            pss = statistics.mean(r["Pss"] for r in rollups)
            dirty = statistics.mean(r["Private_Dirty"] for r in rollups)
            rss = statistics.mean(r["Rss"] for r in rollups)
            print(f"monitor with {containers:>2} containers: PSS {pss:6.1f} KiB   private dirty {dirty:6.1f} KiB   "
                  f"RSS {rss:6.1f} KiB   (mean of {pods} pods)")
    finally:
        for monitor in monitors:
            monitor.shutdown()
    # The daemon side: what a PodMonitor object costs in Python allocations.
    tracemalloc.start()
    before = tracemalloc.take_snapshot()
    monitors = [bench.spawn(f"py{index}") for index in range(pods)]
    for monitor in monitors:
        monitor.ping()  # opens the persistent connection
    after = tracemalloc.take_snapshot()
    tracemalloc.stop()
    grown = sum(stat.size_diff for stat in after.compare_to(before, "filename"))
    print(f"daemon side per pod: {grown / pods / 1024:5.1f} KiB of Python allocations, 2 fds (socket, pidfd)")
    for monitor in monitors:
        monitor.shutdown()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=50)
    parser.add_argument("--pods", type=int, default=20)
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("run as root: the monitor creates namespaces and mounts")
    # Exited monitors are orphans; be their reaper so none stays a zombie.
    ctypes.CDLL(None).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    base = Path(tempfile.mkdtemp(prefix="cfb-", dir="/tmp"))
    try:
        bench = Bench(base)
        time_life_cycle(bench, args.rounds)
        time_requests(bench)
        measure_memory(bench, args.pods)
    finally:
        cleanup_pod_dir(str(base))
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
