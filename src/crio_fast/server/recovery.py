"""Making the records and the node agree: at start, and when a pod monitor dies.

The daemon may die (SIGKILL, a crash) at any point of any call. Records are saved before anything
is made for a pod or a container, marked ``creating`` until the call's last save
(state/records.py), so a restarted daemon knows everything it had begun. ``Recovery.at_start``
runs before the daemon serves:

1. pods whose RunPodSandbox never finished are torn down in RemovePodSandbox's order: CNI DEL with
   the cached configuration (written before the first plugin ran, so whatever the conflist says
   now), the monitor (shut down if it is up, waited for if it is still setting the pod up), the
   pod dir's mounts (namespace pins, shm, self-bind), the cgroups, the pod dir; then the record.
   Containers of pods that have no record are removed too;
2. containers whose CreateContainer never finished: their child in the monitor (killed and
   removed), their cgroup, writable layer, bundle and exit file; then the record;
3. ready pods get their monitors back (SandboxManager.recover); a pod whose monitor died is not
   ready, and its containers are killed;
4. each live monitor's containers are compared with the records: one that runs where its record
   says created (StartContainer died before its save) is running; one the monitor holds without a
   record is killed and removed; a created one the monitor no longer holds failed its set-up;
5. what the run root and the root hold of no record is removed (left by crashes of builds that
   saved records last): pod dirs with their monitors, mounts and cgroups, CNI attachments, writable
   layers, bundles, exit files; and the temporary files of writes a crash cut short (CNI cache
   entries, mount-targets layers).

A teardown that fails leaves the pod listed, not ready, so that RemovePodSandbox can finish it.

While the daemon runs, ``monitor_exited`` is told of every monitor that exits
(runtime/monitor_watch.py): a ready pod whose monitor died is not ready any more and its
containers, which outlive the monitor, are killed and reaped at once.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import shutil
import signal
import time
from pathlib import Path
from typing import Callable

from crio_fast.api import api_pb2 as pb
from crio_fast.cgroups import CgroupError, CgroupManager
from crio_fast.cgroups.tree import process_cgroups
from crio_fast.config import Config
from crio_fast.container.manager import ContainerManager
from crio_fast.errors import FailedPrecondition
from crio_fast.runtime.monitor import PINNED_NAMESPACES, MonitorError, PodMonitor
from crio_fast.runtime.spawn import cleanup_pod_dir, stop_pod_processes
from crio_fast.sandbox.manager import SandboxManager
from crio_fast.state.records import (
    CTR_CREATED,
    CTR_EXITED,
    CTR_RUNNING,
    CTR_UNKNOWN,
    POD_NOTREADY,
    POD_READY,
    ContainerRecord,
    PodRecord,
    StateStore,
    decode_pod_config,
)

log = logging.getLogger("crio_fast.recovery")

RELEASE_TIMEOUT_SECONDS = 10.0


class Recovery:
    def __init__(self, config: Config, state: StateStore, sandboxes: SandboxManager,
                 containers: ContainerManager, cgroups: CgroupManager) -> None:
        self.config = config
        self.state = state
        self.sandboxes = sandboxes
        self.containers = containers
        self.cgroups = cgroups
        # Told the id of each ready pod found with its monitor dead (metrics count them).
        self.monitor_gone_listeners: list[Callable[[str], None]] = []

    # -- at start ------------------------------------------------------------

    def at_start(self) -> list[str]:
        """Steps 1-5 of the module's docstring; returns the ids of the ready pods whose monitor was
        found dead."""
        for pod in [p for p in self.state.pods.values() if p.creating]:
            self._tear_down_half_made_pod(pod)
        for record in self.state.containers.values():
            if self.state.pods.get(record.pod_id) is None:
                log.warning("container %s: its pod %s has no record; removing it", record.id[:12], record.pod_id[:12])
                self._remove_container(record, None)
        for record in [c for c in self.state.containers.values() if c.creating]:
            self._tear_down_half_made_container(record)
        ready_before = {p.id for p in self.state.pods.values() if p.state == POD_READY}
        self.sandboxes.recover()
        gone = sorted(p.id for p in self.state.pods.values() if p.id in ready_before and p.state != POD_READY)
        for pod in self.state.pods.values():
            if pod.state == POD_READY:
                self._compare_with_monitor(pod)
            else:
                self._stop_containers_of(pod)
        self._sweep()
        return gone

    def _tear_down_half_made_pod(self, pod: PodRecord) -> None:
        log.warning("pod %s (%s): its RunPodSandbox did not finish; tearing it down", pod.id[:12], pod.name)
        with self.sandboxes.pod_lock(pod.id):
            failures = []
            pod.ns_paths = _pinned_namespaces(pod.pod_dir)
            try:
                self.sandboxes.network.detach(self.config, pod.id, pod.ns_paths.get("net", ""),
                                              decode_pod_config(pod.config))
            except Exception as exc:  # noqa: BLE001 - the rest is torn down anyway; Stop retries DEL
                failures.append(f"CNI DEL: {exc}")
            try:
                stop_pod_processes(pod.pod_dir)
                for record in [c for c in self.state.containers.values() if c.pod_id == pod.id]:
                    self._remove_container(record, None)
                self.sandboxes.remove_leftovers(pod)
            except Exception as exc:  # noqa: BLE001
                failures.append(str(exc))
            if failures:
                self._keep_listed(pod, failures)
            else:
                self.state.pods.delete(pod.id)

    def _keep_listed(self, pod: PodRecord, failures: list[str]) -> None:
        log.error("pod %s: tearing down its unfinished start failed (%s); it stays listed, not ready, "
                  "for RemovePodSandbox", pod.id[:12], "; ".join(failures))
        pod.state, pod.creating = POD_NOTREADY, False
        self.state.pods.save(pod)

    def _tear_down_half_made_container(self, record: ContainerRecord) -> None:
        log.warning("container %s (%s): its CreateContainer did not finish; removing it", record.id[:12],
                    record.name)
        pod = self.state.pods.get(record.pod_id)
        assert pod is not None  # containers of no pod are gone by now
        with self.sandboxes.pod_lock(pod.id):
            self._remove_container(record, self._live_monitor(pod))

    def _live_monitor(self, pod: PodRecord) -> PodMonitor | None:
        if pod.state != POD_READY or pod.creating:
            return None
        try:
            return self.sandboxes.monitor(pod)
        except FailedPrecondition:
            return None

    def _remove_container(self, record: ContainerRecord, monitor: PodMonitor | None) -> None:
        """A container the records must forget: let go by its monitor, its files and cgroup removed."""
        pod = self.state.pods.get(record.pod_id)
        if not record.cgroup_path and pod is not None and pod.cgroup_path:
            with contextlib.suppress(CgroupError):
                record.cgroup_path = self.cgroups.container_path(pod.cgroup_path, record.id)
        if monitor is not None:
            release_from_monitor(monitor, record.id)
        self.containers.remove_leftovers(record)
        self.state.containers.delete(record.id)

    def _stop_containers_of(self, pod: PodRecord) -> None:
        """A pod that is not ready has no monitor: what of its containers still runs is killed."""
        for record in self.state.containers.values():
            if record.pod_id == pod.id and record.state in (CTR_CREATED, CTR_RUNNING, CTR_UNKNOWN):
                with self.sandboxes.pod_lock(pod.id):
                    self.containers.reports.settle(record)
                    self.containers.reports.stop_orphaned(record)

    def _compare_with_monitor(self, pod: PodRecord) -> None:
        monitor = self._live_monitor(pod)
        if monitor is None:
            return
        try:
            held = {state.id: state for state in monitor.list_containers()}
        except MonitorError as exc:
            log.warning("pod %s: listing its monitor's containers: %s", pod.id[:12], exc)
            return
        with self.sandboxes.pod_lock(pod.id):
            records = {c.id: c for c in self.state.containers.values() if c.pod_id == pod.id}
            for container_id, held_state in held.items():
                record = records.get(container_id)
                if record is None:
                    log.warning("pod %s: its monitor holds container %s, of no record; removing it",
                                pod.id[:12], container_id[:12])
                    self._remove_container(_unrecorded_container(container_id, pod.id), monitor)
                elif record.state == CTR_CREATED and held_state.status in ("running", "exited") \
                        and held_state.started_at:
                    # StartContainer died between the START and its save.
                    record.state, record.pid = CTR_RUNNING, held_state.pid
                    record.started_at = held_state.started_at
                    self.state.containers.save(record)
                    self.containers.refresh(record)
            exits_dir = self.containers.exits_dir
            for record in records.values():
                if (record.id not in held and record.state == CTR_CREATED
                        and not (exits_dir / record.id).exists()):
                    # Its set-up failed after CreateContainer answered, and the daemon died before it read why.
                    record.state, record.reason, record.exit_code = CTR_EXITED, "StartError", 128
                    record.message = "container set-up failed while the daemon was down (its monitor does not hold it)"
                    record.finished_at = time.time_ns()
                    self.state.containers.save(record)

    # -- what only the run root and the root know of --------------------------

    def _sweep(self) -> None:
        pods = {p.id for p in self.state.pods.values()}
        pods_dir = self.sandboxes.pods_dir
        network = self.sandboxes.network
        cni = network.client(self.config)
        cni.discard_partial_writes()
        for pod_id, _ifname in cni.cached_attachments():
            if pod_id and pod_id not in pods:
                log.warning("CNI attachment of pod %s, of no record: DEL", pod_id[:12])
                netns = os.path.join(pods_dir, pod_id, "ns", "net")
                try:
                    network.detach(self.config, pod_id, netns, pb.PodSandboxConfig())
                except Exception as exc:  # noqa: BLE001 - the next start tries again
                    log.error("pod %s: CNI DEL: %s", pod_id[:12], exc)
        for name in _listdir(pods_dir):
            if name not in pods:
                self._tear_down_unrecorded_pod(pods_dir / name)
        containers = {c.id for c in self.state.containers.values()}
        files = self.containers.files
        for directory in (files.layers, files.bundles):
            for name in _listdir(directory):
                if not name.startswith(".") and name not in containers:
                    log.warning("files of container %s, of no record: removing them", name[:12])
                    files.remove(name)
        for name in _listdir(self.containers.exits_dir):
            if name not in containers:  # a write a crash cut short (".<id>.tmp") included
                with contextlib.suppress(OSError):
                    os.unlink(self.containers.exits_dir / name)
        for name in _listdir(files.mount_targets):
            if name.startswith("."):  # a mount-targets layer a crash cut short before its rename
                shutil.rmtree(files.mount_targets / name, ignore_errors=True)

    def _pod_cgroup_of_monitor(self, pod_dir: Path) -> str | None:
        """The pod cgroup of the live monitor of ``pod_dir``, found from the monitor's own cgroup."""
        for path in _monitor_cgroups(pod_dir):
            pod_cgroup = self.cgroups.pod_path_of_monitor(path, pod_dir.name)
            if pod_cgroup is not None:
                return pod_cgroup
        return None

    def _tear_down_unrecorded_pod(self, pod_dir: Path) -> None:
        log.warning("pod dir %s has no record: tearing the pod down", pod_dir)
        pod_cgroup = self._pod_cgroup_of_monitor(pod_dir)
        try:
            stop_pod_processes(str(pod_dir))
            cleanup_pod_dir(str(pod_dir))
        except OSError as exc:
            log.error("pod dir %s: %s", pod_dir, exc)
            return
        default_path = self.cgroups.default_pod_path(pod_dir.name)
        try:
            self.cgroups.remove_monitor_cgroup(self.cgroups.paths(pod_cgroup or default_path), pod_dir.name)
            if pod_cgroup is None or pod_cgroup == default_path:
                self.cgroups.remove(self.cgroups.paths(default_path))
            else:
                # Another's pod cgroup (the kubelet's): only what crio-fast made in it.
                names = {name for directory in self.cgroups.paths(pod_cgroup).hierarchy_dirs.values()
                         for name in _listdir(Path(directory))}
                for name in sorted(names):
                    if self.cgroups.made_by_us(name):
                        self.cgroups.remove(self.cgroups.paths(f"{pod_cgroup}/{name}"))
        except CgroupError as exc:
            log.error("pod dir %s: removing its cgroups: %s", pod_dir, exc)
        shutil.rmtree(pod_dir, ignore_errors=True)

    # -- while the daemon runs -------------------------------------------------

    def monitor_exited(self, pod_id: str) -> None:
        """A pod's monitor process has exited. A stop or a failed start did that and says so in the
        record; otherwise the monitor died, and so the pod is not ready and its containers are killed."""
        record = self.state.pods.get(pod_id)
        if record is None or record.creating or record.state != POD_READY:
            return
        with self.sandboxes.pod_lock(pod_id):
            if self.state.pods.get(pod_id) is not record or record.state != POD_READY:
                return
            log.warning("pod %s (%s): its monitor (pid %d) died; the pod is not ready, its containers are killed",
                        pod_id[:12], record.name, record.monitor_pid)
            self.sandboxes.monitor_exited(record)
            self._stop_containers_of(record)
        for listener in self.monitor_gone_listeners:
            listener(pod_id)


def release_from_monitor(monitor: PodMonitor, container_id: str, timeout: float = RELEASE_TIMEOUT_SECONDS) -> None:
    """Have a monitor forget a container: killed if it is up, removed once it has exited. A child still
    setting up when the daemon died gives up by itself (its cgroup gate closed unopened)."""
    deadline = time.monotonic() + timeout
    delay = 0.005
    killed = False
    while True:
        try:
            held = monitor.state(container_id)
        except MonitorError as exc:
            if exc.code != errno.ENOENT:
                log.warning("container %s: its state in the monitor: %s", container_id[:12], exc)
            return
        if held.status == "exited":
            with contextlib.suppress(MonitorError):
                monitor.remove(container_id)
            return
        if held.status in ("created", "running") and not killed:
            with contextlib.suppress(MonitorError):
                monitor.kill(container_id, signal.SIGKILL, all=True)
            killed = True
        if time.monotonic() >= deadline:
            log.warning("container %s: its monitor still holds it (%s) after %.0fs", container_id[:12],
                        held.status, timeout)
            return
        time.sleep(delay)
        delay = min(delay * 2, 0.1)


def _pinned_namespaces(pod_dir: str) -> dict[str, str]:
    return {name: path for name in PINNED_NAMESPACES
            if os.path.exists(path := os.path.join(pod_dir, "ns", name))}


def _unrecorded_container(container_id: str, pod_id: str) -> ContainerRecord:
    """What remove_leftovers needs of a container the records do not know."""
    return ContainerRecord(id=container_id, pod_id=pod_id, name="", config="", image_id="", image_ref="",
                           state=CTR_EXITED, created_at=0)


def _monitor_cgroups(pod_dir: Path) -> list[str]:
    """The cgroup paths of the live monitor of ``pod_dir``, one per hierarchy."""
    try:
        pid = int(Path(pod_dir, "monitor.pid").read_text().strip())
    except (OSError, ValueError):
        return []
    return process_cgroups(pid)


def _listdir(directory: Path) -> list[str]:
    try:
        return os.listdir(directory)
    except FileNotFoundError:
        return []
