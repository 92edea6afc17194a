"""Container lifecycle: create, start, stop, remove, exec, resource updates, and the exits.

CreateContainer reserves the name, has container/translate.py turn the request into a launch
plan (the native runtime runs it, an OCI runtime gets it as config.json through container/oci.py),
makes the cgroup and the writable layer's directories, and hands the plan to the pod's monitor,
which prepares the container up to its exec. StartContainer releases it. Exits are read from the
exit files the monitor writes, so they survive a daemon restart.
"""

from __future__ import annotations

import base64
import logging
import os
import secrets
import signal
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, NoReturn

from crio_fast.api import api_pb2 as pb
from crio_fast.cgroups import CgroupError, CgroupManager
from crio_fast.config import Config
from crio_fast.config.schema import RuntimeHandler
from crio_fast.container import exec_sync, oci, security, translate
from crio_fast.container.apparmor import AppArmor
from crio_fast.container.image_claims import ImageClaims
from crio_fast.container.pidns import container_pid_namespace
from crio_fast.container.reports import KILL_WAIT_SECONDS, ContainerReports
from crio_fast.container.storage import ContainerStorage
from crio_fast.crashpoints import crash_point
from crio_fast.errors import AlreadyExists, FailedPrecondition, Internal, InvalidArgument, NotFound, shown
from crio_fast.image.manager import ImageInfo, ImageManager
from crio_fast.logs import prepare_log_file
from crio_fast.runtime.call_end import CallEnd
from crio_fast.runtime.monitor import MonitorError
from crio_fast.runtime.plan import ExecPlan, LaunchPlan, Overlay, encode_rootfs
from crio_fast.runtime.wire import MONITOR_FEATURE_REPORT_PID, MONITOR_FEATURE_USERNS, MONITOR_FEATURES
from crio_fast.sandbox.manager import SandboxManager
from crio_fast.sandbox.userns import pod_user_namespace
from crio_fast.state.records import (
    CTR_CREATED,
    CTR_EXITED,
    CTR_RUNNING,
    CTR_UNKNOWN,
    POD_READY,
    ContainerRecord,
    PodRecord,
    StateStore,
    decode_pod_config,
    matches_filter,
)
from crio_fast.validation import check_container_config, check_exec_sync

log = logging.getLogger("crio_fast.container")


class ContainerManager:
    def __init__(
        self,
        config: Config,
        state: StateStore,
        sandboxes: SandboxManager,
        images: ImageManager,
        cgroups: CgroupManager,
        monitor_path: str,
        events: Callable[[ContainerRecord, int], None] | None = None,
        apparmor: AppArmor | None = None,
    ) -> None:
        self.config = config
        # The node's AppArmor: the one place that decides a container's profile (container/apparmor.py).
        self.apparmor = apparmor if apparmor is not None else AppArmor(config.runtime.apparmor_profile)
        # Told (record, pb.ContainerEventType) at each lifecycle step; the engine's event bus.
        self.events = events
        self.state = state
        self.sandboxes = sandboxes
        self.images = images
        self.cgroups = cgroups
        self.monitor_path = monitor_path
        self.files = ContainerStorage(config)
        self.exits_dir = Path(config.runtime.container_exits_dir)
        self._lock = threading.RLock()
        self.image_claims = ImageClaims(images, state, self.files)
        self.reports = ContainerReports(state, self.exits_dir, cgroups, self._emit, self._lock)

    # -- lookups -------------------------------------------------------------

    def get(self, container_id: str) -> ContainerRecord:
        record = self.state.containers.find(container_id)
        if record is None:
            raise NotFound(f"container {shown(container_id)} not found")
        return self.refresh(record)

    def _emit(self, record: ContainerRecord, event_type: int) -> None:
        if self.events is not None:
            try:
                self.events(record, event_type)
            except Exception:  # a broken subscriber must not fail the container operation
                log.exception("container %s: publishing event %d", record.id[:12], event_type)

    def refresh(self, record: ContainerRecord, exit_files: set[str] | None = None) -> ContainerRecord:
        """Fold in what the monitor reported since we last looked (ContainerReports.refresh)."""
        return self.reports.refresh(record, exit_files)

    # -- CreateContainer -------------------------------------------------------

    def create(self, pod_id: str, config: pb.ContainerConfig, sandbox_config: pb.PodSandboxConfig) -> str:
        check_container_config(config)
        pod = self.sandboxes.get(pod_id)
        if pod.state != POD_READY:
            raise FailedPrecondition(f"pod sandbox {pod.id} is not ready")
        if not config.metadata.name:
            raise InvalidArgument("container metadata.name is empty")
        if not config.image.image:
            raise InvalidArgument("container image is empty")
        pod_config = decode_pod_config(pod.config)
        translate.check_user_namespace(config, pod_user_namespace(pod_config))
        name = translate.container_name(config.metadata, pod_config.metadata)
        with self.image_claims.claiming(config) as (image, volume_images):
            with self._lock:
                for other in self.state.containers.values():
                    if other.name == name:
                        raise AlreadyExists(f"container {name} already exists as {other.id}")
                container_id = secrets.token_hex(32)
                record = ContainerRecord(
                    id=container_id, pod_id=pod.id, name=name,
                    config=base64.b64encode(config.SerializeToString()).decode(), image_id=image.record.id,
                    image_ref=config.image.image, state=CTR_CREATED, created_at=time.time_ns(),
                    volume_image_ids=sorted({info.record.id for info in volume_images.values()}),
                )
                self.state.containers.reserve(record)  # takes the name; saved before anything is made
        crash_point("createctr", 1)
        try:
            with self.sandboxes.pod_lock(pod.id):
                self._create(record, pod, pod_config, config, image, volume_images)
        except BaseException:
            self.remove_leftovers(record)
            self.state.containers.delete(record.id)
            raise
        self._emit(record, pb.ContainerEventType.CONTAINER_CREATED_EVENT)
        return container_id

    def _create(self, record: ContainerRecord, pod: PodRecord, pod_config: pb.PodSandboxConfig,
                config: pb.ContainerConfig, image: ImageInfo, volume_images: Mapping[int, ImageInfo]) -> None:
        """Natively the plan goes to the monitor in parts (PodMonitor.begin_create). The head comes
        first: what the monitor needs to clone the child (namespaces, stdio, the cgroup's paths, the
        writable layer's directories) takes no more than the pod and the container's id. The
        request's checks, the rootfs and the rest (mounts, identity, capabilities, seccomp, argv...)
        follow while the monitor clones the child and the child makes the writable layer; a request
        that fails its checks then cancels the child, which leaves nothing."""
        image_config: dict[str, Any] = image.config.get("config") or {}
        layer_dirs = self.image_claims.layer_dirs(image)
        sc = config.linux.security_context
        layout_v2 = self.cgroups.layout.version == "v2"
        try:
            cg = self.cgroups.paths(self.cgroups.container_path(pod.cgroup_path, record.id))
        except CgroupError as exc:
            raise InvalidArgument(f"container cgroup: {exc}") from exc
        record.cgroup_path = cg.path
        handler = self._oci_handler(pod.id)
        external_runtime = handler is not None
        userns = pod_user_namespace(pod_config)
        # USERNS only where the plan joins a user namespace, REPORT_PID only under the systemd driver: a
        # monitor of an earlier build (its pod has no user namespace, its node the cgroupfs driver) still
        # takes every other pod's containers.
        needs = MONITOR_FEATURES & ~MONITOR_FEATURE_USERNS & ~MONITOR_FEATURE_REPORT_PID
        if userns is not None:
            needs |= MONITOR_FEATURE_USERNS
        if self.cgroups.needs_pid:  # the systemd driver: REPORT_PID, and OCI_GLOBAL_ARG for runc and crun
            needs |= MONITOR_FEATURE_REPORT_PID
        monitor = self.sandboxes.monitor(pod, needs=needs)
        # Before the monitor clones a native child on the head: the child's copy of the host's mounts has them.
        volumes = self.image_claims.mount_volumes(record, config, volume_images)
        # CONTAINER: its own pid namespace; POD: the pod's; TARGET: another container's; NODE: none.
        pid_namespace = container_pid_namespace(sc.namespace_options, pod, self.get)
        user_namespace = translate.user_namespace_to_join(
            userns, pod.ns_paths, external_runtime=external_runtime, mounts=config.mounts,
            supported=userns is not None and self.sandboxes.user_namespace_support(pod.runtime_handler).supported)
        # Natively, the child makes the writable layer while the rest is decided here.
        head = translate.launch_head(config, pid_namespace, cg, layout_v2,
                                     () if external_runtime else self.files.writable_layer_dirs(record.id),
                                     user_namespace=user_namespace,
                                     report_pid=self.cgroups.needs_pid and not external_runtime)
        log_file = prepare_log_file(pod.log_directory, config.log_path)
        if log_file is not None:
            record.log_path = log_file.path
        # The monitor opens the file beneath the pod's log directory.
        log_path, log_dir = (log_file.relative, log_file.directory) if log_file is not None else (os.devnull, None)

        def check() -> translate.CheckedRequest:
            return translate.check_request(config, image_config, pod_config, runtime=self.config.runtime,
                                           cgroups=self.cgroups, cg=cg, apparmor=self.apparmor,
                                           external_runtime=external_runtime,
                                           recursive_readonly_supported=oci.recursive_readonly_supported(handler))

        def whole_plan(checked: translate.CheckedRequest, overlay: Overlay) -> LaunchPlan:
            launch = translate.plan_rest(pod, pod_config, config, image_config, layer_dirs, head, overlay, checked,
                                         cg, layout_v2, self.config.runtime, volumes,
                                         external_runtime=external_runtime)
            self._keep_launch(record, launch)
            return launch.plan

        try:
            if handler is not None:
                checked = check()
                runtime_makes_cgroup = self.cgroups.oci_runtime_makes_cgroup
                if not runtime_makes_cgroup:
                    self._make_cgroup(checked.cgroup)  # the runtime's create joins it
                record.bundle = str(self.files.bundle(record.id))
                plan = whole_plan(checked, translate.mapped_rootfs(
                    self.files.rootfs_overlay(record.id, image.record.id, layer_dirs, bundle=True), userns))
                plan, oci_call = oci.prepare_bundle(
                    plan, Path(record.bundle), handler, cgroups_path=self.cgroups.oci_cgroups_path(cg, record.id),
                    pod_namespaces=pod.ns_paths, privileged=sc.privileged, seccomp=checked.seccomp,
                    device_rules=[d.cgroup_rule() for d in checked.devices], userns=userns,
                    global_args=self.cgroups.oci_global_args(), annotations=self.cgroups.oci_annotations())
                pending = monitor.begin_create(record.id, plan, log_path, oci=oci_call, log_dir=log_dir)
                if runtime_makes_cgroup:
                    # Its cgroup exists once create has returned, the command not yet started: the
                    # limits go in then (the spec carries only the devices).
                    pending.result()
                    try:
                        self.cgroups.apply_writes(cg, checked.cgroup.writes)
                    except CgroupError as exc:
                        raise InvalidArgument(f"container cgroup: {exc}") from exc
            else:
                # The monitor clones the child on the head while the rest is decided here; the cgroup is
                # made while the child mounts the rootfs (on the other CPU), and the child joins it
                # before the mounts under /sys/fs/cgroup, which bind it in. The reply is not awaited:
                # the child's set-up overlaps this call's answer and the next call's arrival; reports.settle
                # takes the outcome in.
                checked: translate.CheckedRequest | None = None

                def rest_in_chunks() -> Iterator[bytes]:
                    nonlocal checked
                    crash_point("createctr", 2)
                    # The rootfs first: the child mounts it while the request is checked and the rest decided.
                    overlay = translate.mapped_rootfs(self.files.rootfs_overlay(
                        record.id, image.record.id, layer_dirs, bundle=False, make_dirs=False), userns)
                    yield encode_rootfs(overlay=overlay)
                    crash_point("createctr", 3)
                    checked = check()
                    yield whole_plan(checked, overlay).encode_rest()

                def make_cgroup(child_pid: int | None) -> None:  # after the whole rest is out, so after the checks
                    assert checked is not None
                    self._make_cgroup(checked.cgroup, child_pid)
                    crash_point("createctr", 4)

                pending = monitor.begin_create(record.id, head, log_path, rest=rest_in_chunks, meanwhile=make_cgroup,
                                               log_dir=log_dir)
        except MonitorError as exc:
            raise FailedPrecondition(f"creating container {config.metadata.name}: {exc}") from exc
        self.reports.expect_setup(record.id, pending)
        crash_point("createctr", 5)
        record.creating = False
        self.state.containers.save(record)
        crash_point("createctr", 6)
        log.info("container %s (%s) created", record.id[:12], record.name)

    def _keep_launch(self, record: ContainerRecord, launch: translate.ContainerLaunch) -> None:
        """What the record keeps of the plan: the stop signal, the CRI mounts, and how its processes run,
        with the seccomp program stored once per distinct program (exec runs under it too)."""
        record.stop_signal = launch.stop_signal
        record.mounts = launch.mounts
        seccomp = launch.plan.seccomp
        record.process = {**launch.process, "seccomp_digest": self.state.seccomp.add(seccomp) if seccomp else None}

    def _make_cgroup(self, step: translate.CgroupStep, pid: int | None = None) -> None:
        try:
            self.cgroups.make_container_cgroup(step.paths, step.writes, pid)
        except CgroupError as exc:
            raise InvalidArgument(f"container cgroup: {exc}") from exc
        if step.v1_devices_dir is not None:
            security.write_device_rules(step.v1_devices_dir, step.v1_device_rules)
        if step.v2_device_filter is not None:
            self.cgroups.restrict_devices(step.paths, step.v2_device_filter)

    def _oci_handler(self, pod_id: str) -> RuntimeHandler | None:
        """The pod's RuntimeHandler when it is an external OCI runtime, else None."""
        pod = self.state.pods.get(pod_id)
        handler = self.config.runtime.runtimes.get(pod.runtime_handler) if pod is not None else None
        return handler if handler is not None and handler.runtime_type == "oci" else None

    # -- Start / Stop / Remove -------------------------------------------------

    def start(self, container_id: str) -> None:
        # Not get(): its refresh would take in a CREATE reply that is already there and save the record
        # for its pid, and _mark_started saves it again right after. A set-up that failed is taken in
        # when the monitor refuses the START.
        record = self.state.containers.find(container_id)
        if record is None:
            raise NotFound(f"container {shown(container_id)} not found")
        self._check_startable(record)
        pod = self.sandboxes.get(record.pod_id)
        monitor = self.sandboxes.monitor(pod)
        with self._lock:  # checked again and claimed at once: a second start's failure would mark the container
            if record.id in self.reports.starting:
                raise FailedPrecondition(f"container {record.id} is being started by another call")
            self._check_startable(record)
            self.reports.starting.add(record.id)
        crash_point("startctr", 1)
        try:
            try:
                # Sent without waiting for the CREATE reply: the monitor holds a START that comes
                # while the child is still setting up and releases the child the moment it is ready.
                monitor.start(record.id)
            except MonitorError as exc:
                self.reports.settle(record)
                if record.state == CTR_EXITED:  # the set-up failed: its own message says why
                    raise FailedPrecondition(f"starting container {record.id}: {record.message}") from exc
                self._fail_start(record, exc)
            else:
                self._mark_started(record, monitor)
        finally:
            with self._lock:
                self.reports.starting.discard(record.id)
        self.refresh(record)  # an exit the watcher saw while this start was under way

    @staticmethod
    def _check_startable(record: ContainerRecord) -> None:
        if record.state == CTR_EXITED and record.reason == "StartError":
            raise FailedPrecondition(f"starting container {record.id}: {record.message}")
        if record.state != CTR_CREATED:
            raise FailedPrecondition(f"container {record.id} is {record.state}, not created")

    def _fail_start(self, record: ContainerRecord, exc: MonitorError) -> NoReturn:
        record.state, record.reason, record.message = CTR_EXITED, "StartError", str(exc)
        record.exit_code, record.finished_at = 128, time.time_ns()
        self.state.containers.save(record)
        self._emit(record, pb.ContainerEventType.CONTAINER_STOPPED_EVENT)
        raise FailedPrecondition(f"starting container {record.id}: {exc}") from exc

    def _mark_started(self, record: ContainerRecord, monitor) -> None:
        crash_point("startctr", 2)
        self.reports.settle(record, save_pid=False)  # the CREATE reply came before the START reply: the pid
        if not record.pid:
            # Created before a daemon restart, its CREATE reply unread: the monitor knows the pid.
            try:
                record.pid = monitor.state(record.id).pid
            except MonitorError as exc:
                log.info("container %s: pid from the monitor: %s", record.id[:12], exc)
        with self.reports.lock:
            # A quick command may have exited already, its exit folded in by the watcher (with the
            # monitor's own start time): it stays exited, and started before it finished.
            started = record.state == CTR_CREATED
            if started:
                record.state, record.started_at = CTR_RUNNING, time.time_ns()
        self.state.containers.save(record)
        crash_point("startctr", 3)
        if started:
            self._emit(record, pb.ContainerEventType.CONTAINER_STARTED_EVENT)

    def stop(self, container_id: str, timeout: int) -> None:
        try:
            record = self.get(container_id)
        except NotFound:
            return  # idempotent, as the CRI conformance suite checks: nothing left to stop
        self.reports.settle(record)
        if record.state not in (CTR_CREATED, CTR_RUNNING, CTR_UNKNOWN):
            return
        pod = self.state.pods.get(record.pod_id)
        try:
            monitor = self.sandboxes.monitor(pod) if pod is not None else None
        except FailedPrecondition:
            monitor = None
        if monitor is None or record.state == CTR_UNKNOWN:
            # UNKNOWN: its monitor died. Its processes may live on (adopted by the node's init when
            # no daemon ran): killed through its cgroup.
            self.reports.stop_orphaned(record)
            return
        if record.state == CTR_RUNNING and timeout > 0:
            try:
                monitor.kill(record.id, record.stop_signal)
            except MonitorError as exc:
                log.info("container %s: stop signal: %s", record.id[:12], exc)
            if self.reports.wait_exit_of(record, monitor, timeout):
                return
        try:
            monitor.kill(record.id, signal.SIGKILL, all=True)
        except MonitorError as exc:
            log.info("container %s: SIGKILL: %s", record.id[:12], exc)
        if not self.reports.wait_exit_of(record, monitor, KILL_WAIT_SECONDS):
            raise Internal(f"container {record.id} did not exit after SIGKILL")

    def stop_all_in_pod(self, pod_id: str) -> None:
        for record in self.state.containers.values():
            if record.pod_id == pod_id:
                try:
                    self.stop(record.id, 0)
                except (NotFound, Internal) as exc:
                    log.warning("stopping container %s of pod %s: %s", record.id[:12], pod_id[:12], exc)

    def remove(self, container_id: str) -> None:
        record = self.state.containers.find(container_id)
        if record is None:
            return  # CRI: removing what is gone succeeds
        self.stop(record.id, 0)
        pod = self.state.pods.get(record.pod_id)
        if pod is not None and pod.state == POD_READY:
            try:
                self.sandboxes.monitor(pod).remove(record.id)
            except (MonitorError, FailedPrecondition) as exc:
                log.info("container %s: monitor remove: %s", record.id[:12], exc)
        self.remove_leftovers(record)
        crash_point("removepod", 2)
        self.state.containers.delete(record.id)
        self._emit(record, pb.ContainerEventType.CONTAINER_DELETED_EVENT)

    def remove_all_in_pod(self, pod_id: str) -> None:
        for record in self.state.containers.values():
            if record.pod_id == pod_id:
                self.remove(record.id)

    def remove_leftovers(self, record: ContainerRecord) -> None:
        """What a container leaves on the node once its monitor has let it go: the OCI runtime's state,
        its cgroup, its bundle and writable layer, its exit file."""
        handler = self._oci_handler(record.pod_id)
        if handler is not None:
            # Normally the monitor's REMOVE or shutdown deleted it; not when the monitor was killed.
            oci.delete_leftover_state(handler, self.monitor_path, record.id)
        if record.cgroup_path:
            try:
                self.cgroups.remove(self.cgroups.paths(record.cgroup_path))
            except CgroupError as exc:
                log.warning("container %s: removing cgroup: %s", record.id[:12], exc)
        self.files.remove(record.id)
        try:
            os.unlink(self.exits_dir / record.id)
        except FileNotFoundError:
            pass

    # -- ExecSync / logs -----------------------------------------------------

    def exec_sync(self, container_id: str, cmd: list[str], timeout: int,
                  call: CallEnd | None = None) -> tuple[int, bytes, bytes]:
        """Run ``cmd`` in the container, bounded (container/exec_sync.py): ``timeout`` seconds, 0 for as
        long as ``call`` lasts."""
        check_exec_sync(cmd, timeout)
        record = self.get(container_id)
        if record.state != CTR_RUNNING:
            raise FailedPrecondition(f"container {record.id} is {record.state}, not running")
        return exec_sync.run(record, cmd, timeout, call, handler=self._oci_handler(record.pod_id),
                             monitor_path=self.monitor_path, native_plan=lambda: self._exec_plan(record, cmd),
                             output_limit=self.config.runtime.exec_sync_output_max)

    def _exec_plan(self, record: ContainerRecord, cmd: list[str]) -> ExecPlan:
        digest = record.process.get("seccomp_digest")
        seccomp = None
        if digest:
            seccomp = self.state.seccomp.get(digest)
            if seccomp is None:  # never dropped while a record names it: the database was damaged
                raise FailedPrecondition(f"container {record.id}: its seccomp program is missing from the state")
        return translate.exec_plan(record, cmd, seccomp, self.config.runtime)

    def streaming_exec_plan(self, container_id: str, cmd: list[str]) -> ExecPlan:
        """The plan for a streaming Exec into a running container (any handler:
        the exec helper joins the container's namespaces and cgroups directly)."""
        record = self.get(container_id)
        if not cmd:
            raise InvalidArgument("Exec: empty command")
        self.refresh(record)
        if record.state != CTR_RUNNING:
            raise FailedPrecondition(f"container {record.id} is {record.state}, not running")
        return self._exec_plan(record, cmd)

    def update_resources(self, container_id: str, resources: pb.LinuxContainerResources) -> None:
        """UpdateContainerResources: new cgroup limits (and oom_score_adj) for a live container."""
        record = self.get(container_id)
        self.reports.settle(record)
        if record.state not in (CTR_CREATED, CTR_RUNNING):
            raise FailedPrecondition(f"container {record.id} is {record.state}: its resources cannot change")
        limits = translate.resources_from_cri(resources, self.config.runtime)
        try:
            self.cgroups.update(self.cgroups.paths(record.cgroup_path), limits)
        except CgroupError as exc:
            raise InvalidArgument(f"updating resources of {record.id}: {exc}") from exc
        if resources.oom_score_adj and record.pid:
            adj = max(-1000, min(1000, resources.oom_score_adj))
            if adj != resources.oom_score_adj:
                log.warning("container %s: oom_score_adj %d clamped to %d", record.id[:12],
                            resources.oom_score_adj, adj)
            try:
                Path(f"/proc/{record.pid}/oom_score_adj").write_text(str(adj))
            except OSError as exc:
                log.warning("container %s: oom_score_adj %d not applied: %s", record.id[:12], adj,
                            os.strerror(exc.errno or 0))

    def reopen_log(self, container_id: str) -> None:
        record = self.get(container_id)
        if record.state != CTR_RUNNING:
            raise FailedPrecondition(f"container {record.id} is not running")
        pod = self.sandboxes.get(record.pod_id)
        try:
            self.sandboxes.monitor(pod).reopen_log(record.id)
        except MonitorError as exc:
            raise FailedPrecondition(f"reopening the log of {record.id}: {exc}") from exc

    def list(self, id_prefix: str = "", pod_prefix: str = "", state: str | None = None,
             label_selector: Mapping[str, str] | None = None) -> list[ContainerRecord]:
        """The containers that match every filter given (ID and pod ID prefixes, state, labels)."""
        out = []
        try:
            exit_files: set[str] | None = set(os.listdir(self.exits_dir))
        except OSError:
            exit_files = None
        for record in self.state.containers.values():
            if not matches_filter(record, id_prefix, pod_prefix, {}):
                continue
            record = self.refresh(record, exit_files)
            if state is not None and record.state != state:
                continue
            if label_selector and not matches_filter(record, "", "", label_selector):
                continue
            out.append(record)
        return out
