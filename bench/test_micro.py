"""Micro-benchmarks of the native pieces, with pytest-benchmark.

    sudo python -m pytest bench/test_micro.py --benchmark-only

Not part of the test suite (the suite collects tests/ only). Each benchmark
works in its own temporary cgroup or directory and removes it afterwards.
"""

from __future__ import annotations

import io
import os
import shutil
import tarfile
import tempfile
import uuid
from pathlib import Path

import pytest

from crio_fast._native import monitor_path
from crio_fast._native._cgroupfs import read_files, write_files
from crio_fast.cgroups import CgroupManager, Resources
from crio_fast.image.unpack import LayerUnpacker
from crio_fast.runtime.spawn import PodMonitorSpec, spawn_monitor


@pytest.fixture(scope="module")
def cgroup():
    manager = CgroupManager()
    paths = manager.container_cgroup(f"/crio-fast-bench-{uuid.uuid4().hex[:8]}", "micro", Resources())
    try:
        yield manager, paths
    finally:
        manager.remove(paths)
        parent = os.path.dirname(paths.path)
        for directory in manager.paths(parent).hierarchy_dirs.values():
            try:
                os.rmdir(directory)
            except OSError:
                pass


def test_cgroup_limits_write(benchmark, cgroup):
    """The writes CreateContainer makes for cpu and memory limits, in one native batch."""
    _, paths = cgroup
    writes = [
        (os.path.join(paths.dirs["cpu"], "cpu.shares"), "512"),
        (os.path.join(paths.dirs["cpu"], "cpu.cfs_period_us"), "100000"),
        (os.path.join(paths.dirs["cpu"], "cpu.cfs_quota_us"), "50000"),
        (os.path.join(paths.dirs["memory"], "memory.limit_in_bytes"), str(256 << 20)),
        (os.path.join(paths.dirs["pids"], "pids.max"), "1024"),
    ]
    benchmark(write_files, writes)


def test_cgroup_stats_read(benchmark, cgroup):
    """One container's stats files read in one native pass."""
    _, paths = cgroup
    files = [
        os.path.join(paths.dirs["cpuacct"], "cpuacct.usage"),
        os.path.join(paths.dirs["memory"], "memory.usage_in_bytes"),
        os.path.join(paths.dirs["memory"], "memory.stat"),
        os.path.join(paths.dirs["pids"], "pids.current"),
    ]
    benchmark(read_files, files)


def test_pod_namespaces_spawn(benchmark, tmp_path):
    """A pod monitor creating net, IPC and UTS namespaces, until ready, then shut down."""
    counter = iter(range(1_000_000))

    def cycle() -> None:
        n = next(counter)
        pod_dir = tmp_path / f"pod{n}"
        pod_dir.mkdir()
        spec = PodMonitorSpec(pod_id=f"{n:064d}", pod_dir=str(pod_dir), exits_dir=str(tmp_path), hostname="bench")
        spawn_monitor(str(monitor_path()), spec).shutdown()

    benchmark.pedantic(cycle, rounds=20, iterations=1)


@pytest.fixture(scope="module")
def layer_tar() -> bytes:
    """About 16 MB of files of mixed sizes, uncompressed."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for i in range(400):
            data = os.urandom(512) * ((i % 64) + 1) * 2
            info = tarfile.TarInfo(f"dir{i % 20}/file{i}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def test_extract_per_mb(benchmark, layer_tar):
    """Native extraction of an uncompressed layer into a fresh directory (tmpfs when /dev/shm is one)."""
    base = Path(tempfile.mkdtemp(dir="/dev/shm" if os.path.isdir("/dev/shm") else None))
    counter = iter(range(1_000_000))

    def extract() -> None:
        root = base / str(next(counter))
        root.mkdir()
        unpacker = LayerUnpacker(root, "application/vnd.oci.image.layer.v1.tar")
        for start in range(0, len(layer_tar), 1 << 20):
            unpacker.feed(layer_tar[start:start + (1 << 20)])
        unpacker.finish()

    try:
        benchmark.pedantic(extract, rounds=10, iterations=1)
        benchmark.extra_info["MB"] = round(len(layer_tar) / 1e6, 1)
    finally:
        shutil.rmtree(base)
