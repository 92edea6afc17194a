"""What the pod monitors report back about containers, folded into their records: the outcome of a
CREATE whose reply has not been read yet (the child sets up while CreateContainer has answered), and
exits, from the exit files the monitors write (so they survive a daemon restart) or, for a container
whose monitor was killed, from this daemon reaping its init (the daemon is a child subreaper).
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from pathlib import Path
from typing import Callable

from crio_fast.api import api_pb2 as pb
from crio_fast.cgroups import CgroupError, CgroupManager, CgroupPaths
from crio_fast.runtime.exit_files import ExitInfo, read_exit_file, write_exit_file
from crio_fast.runtime.monitor import MonitorError, PendingCreate, PodMonitor
from crio_fast.runtime.reaper import adopted_in_cgroup, exit_code_of, is_adopted_child, is_daemon_helper, reap_adopted, reap_all_adopted
from crio_fast.state.records import (
    CTR_CREATED,
    CTR_EXITED,
    CTR_RUNNING,
    CTR_UNKNOWN,
    POD_READY,
    ContainerRecord,
    StateStore,
)

log = logging.getLogger("crio_fast.container")

KILL_WAIT_SECONDS = 10.0


class ContainerReports:
    """The records' view of what their monitors report; every change under the manager's lock."""

    def __init__(self, state: StateStore, exits_dir: Path, cgroups: CgroupManager,
                 emit: Callable[[ContainerRecord, int], None], lock: threading.RLock) -> None:
        self.state = state
        self.exits_dir = exits_dir
        self.cgroups = cgroups
        self._emit = emit
        self.lock = lock  # the container manager's: one lock for every record change
        self.starting: set[str] = set()  # ids inside start(): their exits are folded in by start()
        # CREATEs whose reply has not been read: the child is still setting up (see settle).
        self._pending: dict[str, PendingCreate] = {}

    def expect_setup(self, container_id: str, pending: PendingCreate) -> None:
        with self.lock:
            self._pending[container_id] = pending

    def refresh(self, record: ContainerRecord, exit_files: set[str] | None = None) -> ContainerRecord:
        """Fold in an exit the monitor recorded since we last looked (and a set-up that has ended).

        ``exit_files``: the names in the exits dir, listed once by a caller refreshing many records,
        so that only the exit files that exist are opened.
        """
        if record.id in self._pending:
            self.settle(record, wait=False)
        # UNKNOWN too: a stop of a container whose monitor died leaves its exit file (stop_orphaned).
        if record.state not in (CTR_CREATED, CTR_RUNNING, CTR_UNKNOWN) or record.id in self.starting:
            return record
        try:
            info = (None if exit_files is not None and record.id not in exit_files
                    else read_exit_file(self.exits_dir / record.id))
        except MonitorError as exc:
            log.warning("container %s: %s", record.id[:12], exc)
            return record
        if info is None:
            if record.state == CTR_RUNNING:
                pod = self.state.pods.get(record.pod_id)
                if pod is None or pod.state != POD_READY:
                    # An init that outlived its monitor and has exited since is ours to reap.
                    status = reap_adopted(record.pid)
                    if status is not None:
                        self.record_orphan_exit(record, status)
                        return self.refresh(record)
                    # The pod's monitor is gone and left no exit: nothing runs any more.
                    with self.lock:
                        if record.state == CTR_RUNNING:
                            record.state, record.reason = CTR_UNKNOWN, "MonitorGone"
                            self.state.containers.save(record)
                            self._emit(record, pb.ContainerEventType.CONTAINER_STOPPED_EVENT)
            return record
        with self.lock:
            # Another thread (the exit watcher, a stop) may have folded it in meanwhile: one STOPPED.
            if record.state not in (CTR_CREATED, CTR_RUNNING, CTR_UNKNOWN):
                return record
            self._fold_exit(record, info)
        return record

    def _fold_exit(self, record: ContainerRecord, info) -> None:
        record.state = CTR_EXITED
        record.exit_code = info.exit_code
        record.finished_at = info.finished_at
        if info.started_at:  # the monitor's stamp at the start, on the clock of finished_at
            record.started_at = info.started_at
        if info.oom_killed:
            record.reason = "OOMKilled"
        elif info.exit_code == 0:
            record.reason = "Completed"
        else:
            record.reason = "Error"
        self.state.containers.save(record)
        self._emit(record, pb.ContainerEventType.CONTAINER_STOPPED_EVENT)

    def settle(self, record: ContainerRecord, wait: bool = True, save_pid: bool = True) -> None:
        """Take in the reply of the container's CREATE if it is still unread.

        CreateContainer answers once the request is out and the cgroup made; the monitor's child
        finishes its set-up meanwhile. StartContainer, a stop, a resource update wait for the
        outcome here (``wait``); a status or list takes it only when it is in. A set-up that failed
        ends the container as a failed start does: EXITED, reason StartError, with the child's
        message (as containerd reports a failed task creation). ``save_pid`` False: the caller
        saves the record next anyway.
        """
        pending = self._pending.get(record.id)
        if pending is None or (not wait and not pending.done()):
            return
        try:
            result, failure = pending.result(), None
        except MonitorError as exc:
            result, failure = None, exc
        with self.lock:
            if self._pending.get(record.id) is not pending:
                return  # another thread took it in
            del self._pending[record.id]
            if result is not None:
                record.pid = result.pid
                if save_pid:
                    self.state.containers.save(record)
            elif record.state == CTR_CREATED:
                record.state, record.reason = CTR_EXITED, "StartError"
                record.message = f"container set-up failed: {failure}"
                record.exit_code, record.finished_at = 128, time.time_ns()
                self.state.containers.save(record)
        if result is not None:
            for warning in result.warnings:
                log.warning("container %s: %s", record.id[:12], warning)
            log.info("container %s (%s) set up, pid %d", record.id[:12], record.name, result.pid)
        else:
            log.warning("container %s (%s): set-up failed: %s", record.id[:12], record.name, failure)
            self._emit(record, pb.ContainerEventType.CONTAINER_STOPPED_EVENT)

    def abandon_pending(self) -> None:
        """Drop the unread CREATE replies (the daemon is stopping; the monitors keep the state)."""
        with self.lock:
            pending, self._pending = list(self._pending.values()), {}
        for p in pending:
            p.abandon()

    def wait_exit(self, record: ContainerRecord, timeout: float, until: Callable[[], bool] | None = None) -> bool:
        """Whether the container exited within ``timeout``; ``until`` true ends the wait early."""
        deadline = time.monotonic() + timeout
        delay = 0.002
        while True:
            self.refresh(record)
            if record.state not in (CTR_CREATED, CTR_RUNNING, CTR_UNKNOWN):
                return True
            if time.monotonic() >= deadline or (until is not None and until()):
                return False
            time.sleep(delay)
            delay = min(delay * 2, 0.05)

    def wait_exit_of(self, record: ContainerRecord, monitor: PodMonitor, timeout: float) -> bool:
        """Wait up to ``timeout`` for the exit of a container ``monitor`` was told to stop. A monitor that
        dies meanwhile (or was dying when the stop began: its socket refused the kill) can report none:
        the container is then stopped as an orphan."""
        if self.wait_exit(record, timeout, until=lambda: not monitor.alive()):
            return True
        if monitor.alive():
            return False
        self.stop_orphaned(record)
        return record.state not in (CTR_CREATED, CTR_RUNNING, CTR_UNKNOWN)

    def stop_orphaned(self, record: ContainerRecord) -> None:
        """Stop a container whose pod monitor is gone (killed): its processes are killed through its
        cgroup, and its init, re-parented to this daemon (a child subreaper), is reaped here so its
        real exit status is recorded. An init whose monitor died while no daemon ran went to the
        node's init, which reaps it: once its cgroup is empty it is recorded as killed by SIGKILL."""
        if record.cgroup_path and record.state in (CTR_CREATED, CTR_RUNNING, CTR_UNKNOWN):
            cgroup = self.cgroups.paths(record.cgroup_path)
            # Every process of the container re-parented to this subreaper is reaped here: the init, and
            # a child still setting up whose pid the daemon never learnt.
            processes = {pid for pid in self.cgroups.processes(cgroup) | adopted_in_cgroup(cgroup.path)
                         if not is_daemon_helper(pid)}
            try:
                self.cgroups.kill(cgroup)
            except CgroupError as exc:
                log.warning("container %s: killing its cgroup: %s", record.id[:12], exc)
            if record.pid:
                processes.add(record.pid)
            statuses = reap_all_adopted(processes, KILL_WAIT_SECONDS)
            status = statuses.get(record.pid) if record.pid else None
            ours = record.pid and is_adopted_child(record.pid)
            if status is None and not ours and self._emptied(cgroup, KILL_WAIT_SECONDS):
                status = signal.SIGKILL  # the wait status of a process SIGKILL ended
            self.record_orphan_exit(record, status)
        self.refresh(record)

    def _emptied(self, cgroup: CgroupPaths, timeout: float) -> bool:
        """Whether every process has left ``cgroup`` within ``timeout``."""
        deadline = time.monotonic() + timeout
        delay = 0.002
        while self.cgroups.populated(cgroup):
            if time.monotonic() >= deadline:
                return False
            time.sleep(delay)
            delay = min(delay * 2, 0.05)
        return True

    def record_orphan_exit(self, record: ContainerRecord, status: int | None) -> None:
        if status is None or (self.exits_dir / record.id).exists():
            return
        exit_code, signal_number = exit_code_of(status)
        write_exit_file(self.exits_dir / record.id, ExitInfo(
            exit_code=exit_code, signal=signal_number, pid=record.pid, started_at=record.started_at,
            finished_at=time.time_ns(), oom_killed=False))
