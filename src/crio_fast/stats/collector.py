"""Container and pod stats for the CRI stats RPCs and ListPodSandboxMetrics.

One ``collect`` call gathers everything for a set of pods and containers:

* cgroup files (cpu, memory, swap, pids, pressure stall information) of
  every container cgroup and every pod cgroup, plus
  ``/proc/<monitor pid>/net/dev`` of every pod, in one native
  ``read_files`` pass. The monitor holds the pod's network namespace, and
  /proc/<pid>/net/dev shows the namespace of that process, so no setns;
* the writable layer (``<root>/containers/<id>/upper``): bytes and inodes by
  walking the directory, cached per container and redone at most every
  ``layer_refresh_seconds``, since a walk costs far more than the cgroup reads;
* ``usage_nano_cores`` over the interval since the previous sample of the
  same cgroup (the first sample of a container averages over its lifetime).

Nothing here raises for a container or pod that vanished meanwhile: absent
files leave the corresponding fields unset.
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass, field

from crio_fast.cgroups import CgroupError, CgroupManager, read_files
from crio_fast.network.cni import DEFAULT_IFNAME
from crio_fast.stats.cgroup import CgroupSample, StatFiles
from crio_fast.state.records import POD_READY, ContainerRecord, PodRecord

# How old a cached writable-layer walk may get before the next stats call redoes it.
DEFAULT_LAYER_REFRESH_SECONDS = 3.0
# Two samples closer than this give a noisy rate; the previous rate is reported instead.
MIN_RATE_INTERVAL_NS = 100_000_000


@dataclass
class InterfaceSample:
    name: str
    rx_bytes: int
    rx_errors: int
    tx_bytes: int
    tx_errors: int


@dataclass
class LayerUsage:
    used_bytes: int
    inodes_used: int
    walked_at: float  # time.monotonic()


@dataclass
class ContainerSample:
    record: ContainerRecord
    timestamp: int  # unix ns
    cgroup: CgroupSample
    usage_nano_cores: int | None = None
    layer: LayerUsage | None = None


@dataclass
class PodSample:
    record: PodRecord
    timestamp: int
    cgroup: CgroupSample
    usage_nano_cores: int | None = None
    interfaces: list[InterfaceSample] | None = None  # None: no pod network namespace to report
    containers: list[ContainerSample] = field(default_factory=list)

    @property
    def default_interface(self) -> InterfaceSample | None:
        """The interface CNI gave the pod, else the first one; None without any."""
        interfaces = self.interfaces or []
        return next((i for i in interfaces if i.name == DEFAULT_IFNAME), interfaces[0] if interfaces else None)


def parse_net_dev(content: bytes) -> list[InterfaceSample]:
    """/proc/net/dev rows (two header lines, then ``name: 8 rx counters 8 tx counters``), ``lo`` skipped."""
    interfaces = []
    for line in content.split(b"\n")[2:]:
        name, sep, counters = line.partition(b":")
        if not sep:
            continue
        name = name.strip()
        values = counters.split()
        if name == b"lo" or len(values) < 11:
            continue
        try:
            interfaces.append(InterfaceSample(
                name=name.decode(errors="replace"), rx_bytes=int(values[0]), rx_errors=int(values[2]),
                tx_bytes=int(values[8]), tx_errors=int(values[10]),
            ))
        except ValueError:
            continue
    return interfaces


def walk_usage(top: str) -> tuple[int, int]:
    """(bytes on disk, inodes) below ``top``, each inode once, symlinks not followed."""
    used = 0
    inodes = 0
    seen: set[tuple[int, int]] = set()
    stack = [top]
    while stack:
        directory = stack.pop()
        try:
            entries = os.scandir(directory)
        except OSError:
            continue  # removed meanwhile, or unreadable: count what can be seen
        with entries:
            for entry in entries:
                try:
                    st = entry.stat(follow_symlinks=False)
                except OSError:
                    continue
                if st.st_nlink > 1:
                    key = (st.st_dev, st.st_ino)
                    if key in seen:
                        continue
                    seen.add(key)
                inodes += 1
                used += st.st_blocks * 512
                if entry.is_dir(follow_symlinks=False):
                    stack.append(entry.path)
    return used, inodes


class StatsCollector:
    """Samples cgroups, pod networks and writable layers; keeps the state rates need."""

    def __init__(
        self, cgroups: CgroupManager, storage_dir: str, layer_refresh_seconds: float = DEFAULT_LAYER_REFRESH_SECONDS
    ) -> None:
        self.cgroups = cgroups
        self.storage_dir = storage_dir
        self.layer_refresh_seconds = layer_refresh_seconds
        self._lock = threading.Lock()
        self._files: dict[str, StatFiles] = {}  # cgroup path -> its files
        self._previous: dict[str, tuple[int, int, int | None]] = {}  # key -> (ns, usage ns, rate)
        self._layers: dict[str, LayerUsage] = {}

    # -- public --------------------------------------------------------------

    def collect(
        self, pods: list[PodRecord], containers: list[ContainerRecord], with_layers: bool = True
    ) -> tuple[list[PodSample], list[ContainerSample]]:
        """Sample ``pods`` (each with its containers among ``containers``) and ``containers``.

        Returns the pod samples (their ``containers`` filled from the
        container samples of that pod) and the container samples, in the
        order given.
        """
        paths: list[str] = []
        plans: list[tuple[str, StatFiles | None, int, int]] = []  # (what, files, start, net index)
        for record in containers:
            files = self._stat_files(record.cgroup_path)
            plans.append(("c", files, len(paths), -1))
            if files is not None:
                paths.extend(files.paths)
        for record in pods:
            files = self._stat_files(record.cgroup_path)
            start = len(paths)
            if files is not None:
                paths.extend(files.paths)
            net_index = -1
            if record.state == POD_READY and record.namespaces.get("net") == "new" and record.monitor_pid > 0:
                net_index = len(paths)
                paths.append(f"/proc/{record.monitor_pid}/net/dev")
            plans.append(("p", files, start, net_index))
        contents = self._read(paths)
        now = time.time_ns()

        container_samples: list[ContainerSample] = []
        for record, (_, files, start, _) in zip(containers, plans):
            cgroup = files.parse(contents[start:start + len(files.paths)]) if files is not None else CgroupSample()
            sample = ContainerSample(record=record, timestamp=now, cgroup=cgroup)
            sample.usage_nano_cores = self._rate("c" + record.id, now, cgroup.cpu_usage_ns,
                                                 record.started_at or record.created_at)
            if with_layers:
                sample.layer = self._layer(record.id)
            container_samples.append(sample)
        by_pod: dict[str, list[ContainerSample]] = {}
        for sample in container_samples:
            by_pod.setdefault(sample.record.pod_id, []).append(sample)

        pod_samples: list[PodSample] = []
        for record, (_, files, start, net_index) in zip(pods, plans[len(containers):]):
            cgroup = files.parse(contents[start:start + len(files.paths)]) if files is not None else CgroupSample()
            sample = PodSample(record=record, timestamp=now, cgroup=cgroup, containers=by_pod.get(record.id, []))
            sample.usage_nano_cores = self._rate("p" + record.id, now, cgroup.cpu_usage_ns, record.created_at)
            if net_index >= 0 and contents[net_index] is not None:
                sample.interfaces = parse_net_dev(contents[net_index])
            pod_samples.append(sample)
        return pod_samples, container_samples

    def forget(self, live_container_ids: set[str], live_pod_ids: set[str]) -> None:
        """Drop the state kept for containers and pods that no longer exist."""
        keys = {"c" + i for i in live_container_ids} | {"p" + i for i in live_pod_ids}
        with self._lock:
            for key in [k for k in self._previous if k not in keys]:
                del self._previous[key]
            for container_id in [k for k in self._layers if k not in live_container_ids]:
                del self._layers[container_id]

    # -- internals -----------------------------------------------------------

    def _stat_files(self, cgroup_path: str) -> StatFiles | None:
        if not cgroup_path:
            return None
        files = self._files.get(cgroup_path)
        if files is None:
            try:
                files = StatFiles(self.cgroups.layout, self.cgroups.paths(cgroup_path))
            except CgroupError:
                return None
            with self._lock:
                if len(self._files) > 65536:  # ids never repeat; keep the cache from growing without end
                    self._files.clear()
                self._files[cgroup_path] = files
        return files

    @staticmethod
    def _read(paths: list[str]) -> list[bytes | None]:
        try:
            return read_files(paths)
        except OSError:
            # One unreadable file (a cgroup being removed can answer ENODEV)
            # must not hide everyone's stats: read one by one.
            out: list[bytes | None] = []
            for path in paths:
                try:
                    out.append(read_files([path])[0])
                except OSError:
                    out.append(None)
            return out

    def _rate(self, key: str, now: int, usage: int | None, baseline_ns: int) -> int | None:
        if usage is None:
            return None
        with self._lock:
            previous = self._previous.get(key)
            if previous is None:
                # First look: the average since the container started (usage was 0 then).
                elapsed = now - baseline_ns
                rate = usage * 1_000_000_000 // elapsed if baseline_ns > 0 and elapsed > 0 else None
                self._previous[key] = (now, usage, rate)
                return rate
            then, usage_then, rate_then = previous
            if now - then < MIN_RATE_INTERVAL_NS:
                return rate_then
            rate = max(0, usage - usage_then) * 1_000_000_000 // (now - then)
            self._previous[key] = (now, usage, rate)
            return rate

    def _layer(self, container_id: str) -> LayerUsage | None:
        cached = self._layers.get(container_id)
        now = time.monotonic()
        if cached is not None and now - cached.walked_at < self.layer_refresh_seconds:
            return cached
        upper = os.path.join(self.storage_dir, container_id, "upper")
        if not os.path.isdir(upper):
            return None
        used, inodes = walk_usage(upper)
        usage = LayerUsage(used_bytes=used, inodes_used=inodes + 1, walked_at=now)  # +1: upper itself
        with self._lock:
            self._layers[container_id] = usage
        return usage
