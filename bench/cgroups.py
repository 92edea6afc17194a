"""cgroup set-up and stats cost on this host's real cgroupfs (run as root).

Usage::

    python bench/cgroups.py [--containers N] [--rounds R]

Measures, under a private /crio-fast-bench-<random> cgroup removed at the end:

* container cgroup life cycle: ``container_cgroup`` with typical limits
  (cpu shares/quota, memory, pids) then ``remove``, per container;
* stats for N containers (default 250): reading the usual stats files of
  every container with one native ``read_files`` call, against a plain
  Python open/read loop over the same files;
* applying the limits of one container with ``write_files`` against Python.

Reported: the median of R rounds (default 5) in milliseconds. Takes a few
seconds.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
import uuid
from collections.abc import Callable

from crio_fast.cgroups import CgroupManager, CgroupPaths, Resources, read_files, write_files
from crio_fast.cgroups.resources import plan_writes

LIMITS = Resources(cpu_shares=512, cpu_quota=50000, cpu_period=100000, memory_limit_in_bytes=256 << 20, pids_limit=1024)

# What a stats call reads per container, by controller.
STATS_FILES_V1 = {
    "cpuacct": ["cpuacct.usage", "cpuacct.stat"],
    "cpu": ["cpu.stat"],
    "memory": ["memory.usage_in_bytes", "memory.stat", "memory.oom_control"],
    "pids": ["pids.current"],
}
STATS_FILES_V2 = {
    "cpu": ["cpu.stat"],
    "memory": ["memory.current", "memory.stat", "memory.events"],
    "pids": ["pids.current"],
}


def stats_paths(manager: CgroupManager, cgroup: CgroupPaths) -> list[str]:
    paths = []
    for controller in sorted(set(STATS_FILES_V1) | set(STATS_FILES_V2)):
        if controller not in cgroup.dirs:
            continue
        table = STATS_FILES_V2 if manager.layout.is_v2(controller) else STATS_FILES_V1
        paths.extend(os.path.join(cgroup.dirs[controller], name) for name in table.get(controller, []))
    return paths


def python_read(paths: list[str]) -> list[bytes | None]:
    out: list[bytes | None] = []
    for path in paths:
        try:
            with open(path, "rb", buffering=0) as f:
                out.append(f.read())
        except FileNotFoundError:
            out.append(None)
    return out


def python_write(writes: list[tuple[str, str]]) -> None:
    for path, value in writes:
        with open(path, "wb", buffering=0) as f:
            f.write(value.encode())


def median_ms(rounds: int, action: Callable[[], object]) -> float:
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        action()
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--containers", type=int, default=250)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("needs root (it creates cgroups)", file=sys.stderr)
        return 2

    manager = CgroupManager()
    print(manager.layout.describe())
    root = manager.paths(f"/crio-fast-bench-{uuid.uuid4().hex[:8]}")
    v2_root_control = (
        os.path.join(manager.layout.unified.mount_point, "cgroup.subtree_control") if manager.layout.unified else None
    )
    enabled_before = set(read_files([v2_root_control])[0].split()) if v2_root_control else set()
    try:
        pod = manager.pod_cgroup(f"{root.path}/pod", "bench")

        lifecycle = []
        for i in range(max(args.rounds, 20)):
            start = time.perf_counter()
            container = manager.container_cgroup(pod, f"life{i}", LIMITS)
            created = time.perf_counter()
            manager.remove(container)
            lifecycle.append(((created - start) * 1000, (time.perf_counter() - created) * 1000))
        print(
            f"container cgroup: create+limits {statistics.median(c for c, _ in lifecycle):.2f} ms, "
            f"remove {statistics.median(r for _, r in lifecycle):.2f} ms "
            f"({len(manager.paths('/').hierarchy_dirs)} hierarchies)"
        )

        start = time.perf_counter()
        containers = [manager.container_cgroup(pod, f"c{i}", None) for i in range(args.containers)]
        print(f"made {len(containers)} container cgroups in {(time.perf_counter() - start) * 1000:.0f} ms")
        paths = [p for c in containers for p in stats_paths(manager, c)]
        native = median_ms(args.rounds, lambda: read_files(paths))
        python = median_ms(args.rounds, lambda: python_read(paths))
        assert read_files(paths) == python_read(paths)
        print(
            f"stats of {len(containers)} containers ({len(paths)} files): read_files {native:.1f} ms, "
            f"Python open/read {python:.1f} ms"
        )

        writes = plan_writes(manager.layout, containers[0].dirs, LIMITS)
        native = median_ms(args.rounds * 20, lambda: write_files(writes))
        python = median_ms(args.rounds * 20, lambda: python_write(writes))
        print(f"limits of one container ({len(writes)} files): write_files {native:.3f} ms, Python {python:.3f} ms")
    finally:
        start = time.perf_counter()
        manager.remove(root, timeout=30)
        print(f"removed everything in {(time.perf_counter() - start) * 1000:.0f} ms")
        if v2_root_control:
            # Leave the host's cgroup2 root as found.
            for controller in set(read_files([v2_root_control])[0].split()) - enabled_before:
                write_files([(v2_root_control, b"-" + controller)])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
