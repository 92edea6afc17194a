"""Container lifecycle on the native runtime.

CreateContainer turns the CRI ContainerConfig plus the image config into a
resolved launch plan (argv, env, user, capabilities, the overlay rootfs of the
image's layers plus a private upper dir, the mount sequence, the cgroup) and
hands it to the pod's monitor, which prepares the container up to its exec.
StartContainer releases it. Exits are read from the exit files the monitor
writes, so they survive a daemon restart.
"""

from __future__ import annotations

import base64
import dataclasses
import errno
import functools
import logging
import os
import secrets
import shutil
import signal
import stat
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterator, NoReturn

from crio_fast.api import api_pb2 as pb
from crio_fast.cgroups import CgroupError, CgroupManager, Resources
from crio_fast.config import Config
from crio_fast.config.schema import RuntimeHandler
from crio_fast.errors import AlreadyExists, DeadlineExceeded, FailedPrecondition, Internal, InvalidArgument, NotFound
from crio_fast.image.manager import ImageManager
from crio_fast.runtime.monitor import (
    ExitInfo,
    MonitorError,
    OciRuntimeCall,
    PendingCreate,
    exec_sync,
    read_exit_file,
    write_exit_file,
)
from crio_fast.runtime.reaper import exit_code_of, reap_adopted, wait_adopted
from crio_fast.runtime.wire import (
    MONITOR_FEATURE_APPARMOR as FEATURE_APPARMOR,
    MONITOR_FEATURE_PLAN_FOLLOWS as FEATURE_PLAN_FOLLOWS,
)
from crio_fast.runtime.plan import (
    DEFAULT_MASKED_PATHS,
    DEFAULT_READONLY_PATHS,
    MS_NODEV,
    MS_NOEXEC,
    MS_NOSUID,
    MS_PRIVATE,
    MS_REC,
    MS_SHARED,
    MS_SLAVE,
    Capabilities,
    ExecPlan,
    LaunchHead,
    LaunchPlan,
    MountOp,
    Namespace,
    Overlay,
    default_linux_mounts,
    encode_rootfs,
)
from crio_fast.sandbox.manager import SandboxManager, decode_pod_config
from crio_fast.container import oci, security
from crio_fast.container.apparmor import AppArmor
from crio_fast.container.pidns import container_pid_namespace
from crio_fast.state.records import (
    CTR_CREATED,
    CTR_EXITED,
    CTR_RUNNING,
    CTR_UNKNOWN,
    POD_READY,
    ContainerRecord,
    StateStore,
    labels_match,
    list_entry,
)

log = logging.getLogger("crio_fast.container")

STATE_TO_PROTO = {
    CTR_CREATED: pb.ContainerState.CONTAINER_CREATED,
    CTR_RUNNING: pb.ContainerState.CONTAINER_RUNNING,
    CTR_EXITED: pb.ContainerState.CONTAINER_EXITED,
    CTR_UNKNOWN: pb.ContainerState.CONTAINER_UNKNOWN,
}
# Bind mounts are recursive, and so is the propagation change applied to them.
PROPAGATION = {
    pb.MountPropagation.PROPAGATION_PRIVATE: MS_PRIVATE,
    pb.MountPropagation.PROPAGATION_HOST_TO_CONTAINER: MS_SLAVE,
    pb.MountPropagation.PROPAGATION_BIDIRECTIONAL: MS_SHARED,
}
DEFAULT_PATH = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
KILL_WAIT_SECONDS = 10.0


def container_name(meta: pb.ContainerMetadata, pod: pb.PodSandboxMetadata) -> str:
    return f"k8s_{meta.name}_{pod.name}_{pod.namespace}_{pod.uid}_{meta.attempt}"


def root_propagation_for(mounts) -> int:
    """Propagation of the container's ``/``: rshared when a mount is bidirectional.

    A bind only propagates back to the host while its source, as the new
    mount namespace sees it, is still in the host's peer group; the default
    rslave of ``/`` would turn it into a receiver only. (runc and CRI-O
    switch the rootfs propagation the same way.)
    """
    if any(m.propagation == pb.MountPropagation.PROPAGATION_BIDIRECTIONAL for m in mounts):
        return MS_REC | MS_SHARED
    return MS_REC | MS_SLAVE


def decode_container_config(data: str) -> pb.ContainerConfig:
    config = pb.ContainerConfig()
    config.ParseFromString(base64.b64decode(data))
    return config


def matches_filter(record: ContainerRecord, id_prefix: str, pod_prefix: str, selector) -> bool:
    """The CRI container filters shared by ListContainers and the stats calls: ID and
    pod ID prefixes, label selector (empty values match everything)."""
    if id_prefix and not record.id.startswith(id_prefix):
        return False
    if pod_prefix and not record.pod_id.startswith(pod_prefix):
        return False
    return not selector or labels_match(decode_container_config(record.config).labels, selector)


def parse_signal(name: str) -> int:
    """An image's StopSignal ("SIGQUIT", "QUIT", "3") as a number; SIGTERM if empty."""
    if not name:
        return signal.SIGTERM
    if name.isdigit():
        return int(name)
    key = name.upper()
    if not key.startswith("SIG"):
        key = "SIG" + key
    try:
        return int(signal.Signals[key])
    except KeyError:
        raise InvalidArgument(f"image stop signal {name!r} is not a signal") from None


def _find_in_layers(layer_dirs: list[Path], relative: str) -> Path | None:
    """The file a container would see at ``relative``: the top-most layer that has it."""
    for layer in layer_dirs:
        candidate = layer / relative
        try:
            st = candidate.lstat()
        except OSError:
            continue
        if st.st_rdev == 0 and (st.st_mode & 0o170000) == 0o020000:
            return None  # whited out
        return candidate
    return None


@functools.lru_cache(maxsize=128)
def _image_accounts(layer_dirs: tuple[Path, ...]) -> tuple[
        tuple[tuple[str, int, int], ...], tuple[tuple[str, int, tuple[str, ...]], ...]]:
    """The (name, uid, gid) entries of the image's /etc/passwd and (name, gid, members) of its /etc/group.

    Cached per layer stack: layers are content-addressed and never change in place, and reading both
    files through the layers is most of what CreateContainer spends on users.
    """
    passwd = _find_in_layers(list(layer_dirs), "etc/passwd")
    groups_file = _find_in_layers(list(layer_dirs), "etc/group")
    entries = []
    if passwd is not None:
        for line in passwd.read_text(errors="replace").splitlines():
            parts = line.split(":")
            if len(parts) >= 4 and parts[2].isdigit() and parts[3].isdigit():
                entries.append((parts[0], int(parts[2]), int(parts[3])))
    group_entries = []
    if groups_file is not None:
        for line in groups_file.read_text(errors="replace").splitlines():
            parts = line.split(":")
            if len(parts) >= 3 and parts[2].isdigit():
                members = tuple(parts[3].split(",")) if len(parts) > 3 and parts[3] else ()
                group_entries.append((parts[0], int(parts[2]), members))
    return tuple(entries), tuple(group_entries)


POD_FILE_TARGETS = ("hostname", "hosts", "resolv.conf")  # in /etc, bound from the pod dir


def make_mount_targets_layer(layer_dirs: list[Path], directory: Path) -> Path | None:
    """A read-only top layer for the image with empty /etc/hostname, /etc/hosts and /etc/resolv.conf.

    The pod's files are bound onto those paths in every container. Without this layer the monitor's
    child creates them in the container's upper dir, which copies /etc up and writes three inodes on
    the node's disk: about a millisecond of every CreateContainer. The layer's /etc takes the
    image's own /etc attributes (owner, mode, times), since the top-most layer's are the ones a
    container sees. Made once per image (atomically: a rename); None when the image's /etc is not a
    directory, as a directory over it would hide what it holds.
    """
    if directory.is_dir():
        return directory
    etc = _find_in_layers(layer_dirs, "etc")
    try:
        st = etc.lstat() if etc is not None else None
    except OSError:
        return None
    if st is None or not stat.S_ISDIR(st.st_mode):
        return None
    building = directory.with_name(f".{directory.name}.{secrets.token_hex(4)}")
    try:
        (building / "etc").mkdir(parents=True)
        for name in POD_FILE_TARGETS:
            (building / "etc" / name).touch(mode=0o644)
        os.chown(building / "etc", st.st_uid, st.st_gid)
        os.chmod(building / "etc", stat.S_IMODE(st.st_mode))
        os.utime(building / "etc", ns=(st.st_atime_ns, st.st_mtime_ns))
        os.rename(building, directory)
    except OSError:
        shutil.rmtree(building, ignore_errors=True)
        if not directory.is_dir():  # not merely made by another CreateContainer meanwhile
            raise
    return directory


def resolve_user(spec: str, layer_dirs: list[Path]) -> tuple[int, int, list[int], str]:
    """uid, gid, extra gids and name for an image/CRI user ("name", "uid", "uid:gid", "name:group")."""
    user, _, group = spec.partition(":")
    entries, group_entries = _image_accounts(tuple(layer_dirs))
    if user.isdigit():
        uid = int(user)
        match = next((e for e in entries if e[1] == uid), None)
        name, gid = (match[0], match[2]) if match else ("", 0)
    else:
        match = next((e for e in entries if e[0] == user), None)
        if match is None:
            raise InvalidArgument(f"user {user!r} is not in the image's /etc/passwd")
        name, uid, gid = match
    if group:
        if group.isdigit():
            gid = int(group)
        else:
            g = next((e for e in group_entries if e[0] == group), None)
            if g is None:
                raise InvalidArgument(f"group {group!r} is not in the image's /etc/group")
            gid = g[1]
    extra = sorted({g[1] for g in group_entries if name and name in g[2] and g[1] != gid})
    return uid, gid, extra, name


@dataclasses.dataclass
class _CheckedRequest:
    """What the checks of a CreateContainer request yield (ContainerManager._check_request)."""

    argv: list[str]
    devices: list[security.DeviceNode]
    make_cgroup: Callable[[], None]
    apparmor_profile: str | None  # None: none (unconfined)


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
        self._starting: set[str] = set()  # ids inside start(): their exits are folded in by start()
        # CREATEs whose reply has not been read: the child is still setting up (see _settle).
        self._pending: dict[str, PendingCreate] = {}
        self.state = state
        self.sandboxes = sandboxes
        self.images = images
        self.cgroups = cgroups
        self.monitor_path = monitor_path
        self.bundles = Path(config.crio.runroot) / "containers"  # per container, for external runtimes
        # Where the native child mounts a container's rootfs, in its own mount namespace (then pivots
        # into it): one empty directory serves every container, so a create makes no bundle dir.
        self.native_rootfs_target = self.bundles / ".rootfs"
        self.mount_targets = Path(config.crio.runroot) / "mount-targets"  # per image, make_mount_targets_layer
        self.storage = Path(config.crio.root) / "containers"
        self.exits_dir = Path(config.runtime.container_exits_dir)
        self.bundles.mkdir(parents=True, exist_ok=True)
        self.native_rootfs_target.mkdir(exist_ok=True)
        self.storage.mkdir(parents=True, exist_ok=True)
        self.mount_targets.mkdir(parents=True, exist_ok=True)
        self._lock = threading.RLock()

    # -- lookups -------------------------------------------------------------

    def get(self, container_id: str) -> ContainerRecord:
        record = self.state.containers.find(container_id)
        if record is None:
            raise NotFound(f"container {container_id!r} not found")
        return self.refresh(record)

    def _emit(self, record: ContainerRecord, event_type: int) -> None:
        if self.events is not None:
            try:
                self.events(record, event_type)
            except Exception:  # a broken subscriber must not fail the container operation
                log.exception("container %s: publishing event %d", record.id[:12], event_type)

    def refresh(self, record: ContainerRecord, exit_files: set[str] | None = None) -> ContainerRecord:
        """Fold in an exit the monitor recorded since we last looked (and a set-up that has ended).

        ``exit_files``: the names in the exits dir, listed once by a caller refreshing many records,
        so that only the exit files that exist are opened.
        """
        if record.id in self._pending:
            self._settle(record, wait=False)
        if record.state not in (CTR_CREATED, CTR_RUNNING) or record.id in self._starting:
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
                        self._record_orphan_exit(record, status)
                        return self.refresh(record)
                    # The pod's monitor is gone and left no exit: nothing runs any more.
                    with self._lock:
                        if record.state == CTR_RUNNING:
                            record.state, record.reason = CTR_UNKNOWN, "MonitorGone"
                            self.state.containers.save(record)
                            self._emit(record, pb.ContainerEventType.CONTAINER_STOPPED_EVENT)
            return record
        with self._lock:
            # Another thread (the exit watcher, a stop) may have folded it in meanwhile: one STOPPED.
            if record.state not in (CTR_CREATED, CTR_RUNNING):
                return record
            self._fold_exit(record, info)
        return record

    def _fold_exit(self, record: ContainerRecord, info) -> None:
        record.state = CTR_EXITED
        record.exit_code = info.exit_code
        record.finished_at = info.finished_at
        if info.oom_killed:
            record.reason = "OOMKilled"
        elif info.exit_code == 0:
            record.reason = "Completed"
        else:
            record.reason = "Error"
        self.state.containers.save(record)
        self._emit(record, pb.ContainerEventType.CONTAINER_STOPPED_EVENT)

    # -- CreateContainer -------------------------------------------------------

    def _settle(self, record: ContainerRecord, wait: bool = True, save_pid: bool = True) -> None:
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
        with self._lock:
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
        with self._lock:
            pending, self._pending = list(self._pending.values()), {}
        for p in pending:
            p.abandon()

    def create(self, pod_id: str, config: pb.ContainerConfig, sandbox_config: pb.PodSandboxConfig) -> str:
        pod = self.sandboxes.get(pod_id)
        if pod.state != POD_READY:
            raise FailedPrecondition(f"pod sandbox {pod.id} is not ready")
        if not config.metadata.name:
            raise InvalidArgument("container metadata.name is empty")
        if not config.image.image:
            raise InvalidArgument("container image is empty")
        pod_config = decode_pod_config(pod.config)
        name = container_name(config.metadata, pod_config.metadata)
        image = self.images.info(config.image.image)
        if image is None:
            raise NotFound(f"image {config.image.image!r} not found: pull it first")
        with self._lock:
            for other in self.state.containers.values():
                if other.name == name:
                    raise AlreadyExists(f"container {name} already exists as {other.id}")
            container_id = secrets.token_hex(32)
            record = ContainerRecord(
                id=container_id, pod_id=pod.id, name=name, config=base64.b64encode(config.SerializeToString()).decode(),
                image_id=image.record.id, image_ref=config.image.image, state=CTR_CREATED, created_at=time.time_ns(),
            )
            self.state.containers.reserve(record)  # takes the name
        try:
            with self.sandboxes.pod_lock(pod.id):
                self._create(record, pod, pod_config, config, image)
        except BaseException:
            self._remove_leftovers(record)
            self.state.containers.delete(record.id)
            raise
        self._emit(record, pb.ContainerEventType.CONTAINER_CREATED_EVENT)
        return container_id

    def _create(self, record, pod, pod_config: pb.PodSandboxConfig, config: pb.ContainerConfig, image) -> None:
        """Natively the plan goes to the monitor in parts (PodMonitor.begin_create). The head comes
        first: what the monitor needs to clone the child (namespaces, stdio, the cgroup's paths, the
        writable layer's directories) takes no more than the pod and the container's id. The
        request's checks, the rootfs and the rest (mounts, identity, capabilities, seccomp, argv...)
        follow while the monitor clones the child and the child makes the writable layer; a request
        that fails its checks then cancels the child, which leaves nothing."""
        image_config: dict[str, Any] = image.config.get("config") or {}
        layer_dirs = [self.images.store.layer_diff(c) for c in reversed(image.record.layers)]  # top-most first
        sc = config.linux.security_context
        layout_v2 = self.cgroups.layout.version == "v2"
        # CONTAINER: its own pid namespace; POD: the pod's; TARGET: another container's; NODE: none.
        pid_namespace = container_pid_namespace(sc.namespace_options, pod, self.get)
        namespaces = [Namespace("mnt")]
        if pid_namespace is not None:
            namespaces.append(pid_namespace)
        if layout_v2:
            namespaces.append(Namespace("cgroup"))
        try:
            cg = self.cgroups.paths(self.cgroups.container_path(pod.cgroup_path, record.id))
        except CgroupError as exc:
            raise InvalidArgument(f"container cgroup: {exc}") from exc
        record.cgroup_path = cg.path
        external_runtime = self._oci_handler(pod.id) is not None
        monitor = self.sandboxes.monitor(pod)
        split = not external_runtime and bool(monitor.features & FEATURE_PLAN_FOLLOWS)
        storage = self.storage / record.id
        head = LaunchHead(
            namespaces=namespaces,
            cgroup_procs=cg.procs_files,
            oom_counter_path=cg.oom_counter_file,
            root_propagation=root_propagation_for(config.mounts),
            stdin=config.stdin,
            tty=config.tty,
            # Split, the child makes the writable layer while the rest is decided here.
            host_dirs=[str(storage), str(storage / "upper"), str(storage / "work")] if split else (),
        )
        if pod.log_directory and config.log_path:
            record.log_path = os.path.join(pod.log_directory, config.log_path)
            os.makedirs(os.path.dirname(record.log_path), exist_ok=True)
        log_path = record.log_path or os.devnull

        def whole_plan(request: _CheckedRequest) -> LaunchPlan:
            overlay = self._rootfs_overlay(record, image.record.id, layer_dirs, external_runtime)
            return self._plan_rest(record, pod, pod_config, config, image_config, layer_dirs, head, overlay,
                                   request.argv, request.devices, cg, layout_v2, request.apparmor_profile)

        try:
            if external_runtime:
                checked = self._check_request(config, image_config, cg, external_runtime, monitor.features)
                checked.make_cgroup()  # the runtime's create joins it
                plan, oci_call = self._oci_bundle(record, pod, whole_plan(checked), sc,
                                                  pod_config.linux.security_context, checked.devices)
                pending = monitor.begin_create(record.id, plan, log_path, oci=oci_call)
            elif split:
                # The monitor clones the child on the head while the rest is decided here; the cgroup is
                # made while the child mounts the rootfs (on the other CPU), and the child joins it
                # before the mounts under /sys/fs/cgroup, which bind it in. The reply is not awaited:
                # the child's set-up overlaps this call's answer and the next call's arrival; _settle
                # takes the outcome in.
                checked: _CheckedRequest | None = None

                def rest_in_chunks() -> Iterator[bytes]:
                    nonlocal checked
                    # The rootfs first: the child mounts it while the request is checked and the rest decided.
                    overlay = self._rootfs_overlay(record, image.record.id, layer_dirs, external_runtime,
                                                   make_dirs=False)
                    yield encode_rootfs(overlay=overlay)
                    checked = self._check_request(config, image_config, cg, external_runtime, monitor.features)
                    yield self._plan_rest(record, pod, pod_config, config, image_config, layer_dirs, head, overlay,
                                          checked.argv, checked.devices, cg, layout_v2,
                                          checked.apparmor_profile).encode_rest()

                def make_cgroup() -> None:  # after the whole rest is out, so after the checks
                    assert checked is not None
                    checked.make_cgroup()

                pending = monitor.begin_create(record.id, head, log_path, rest=rest_in_chunks, meanwhile=make_cgroup)
            else:  # a monitor from before plans in parts
                checked = self._check_request(config, image_config, cg, external_runtime, monitor.features)
                pending = monitor.begin_create(record.id, whole_plan(checked), log_path,
                                               meanwhile=checked.make_cgroup)
        except MonitorError as exc:
            raise FailedPrecondition(f"creating container {config.metadata.name}: {exc}") from exc
        with self._lock:
            self._pending[record.id] = pending
        self.state.containers.save(record)
        log.info("container %s (%s) created", record.id[:12], record.name)

    def _check_request(self, config: pb.ContainerConfig, image_config: dict[str, Any], cg,
                       external_runtime: bool, monitor_features: int) -> "_CheckedRequest":
        """The checks of a CreateContainer request, and what they yield: the command, the devices, the
        AppArmor profile, and the step that makes the container's cgroup with its limits and device rules."""
        sc = config.linux.security_context
        entrypoint = list(config.command) or list(image_config.get("Entrypoint") or [])
        cmd = list(config.args) if config.args else ([] if config.command else list(image_config.get("Cmd") or []))
        argv = entrypoint + cmd
        if not argv:
            raise InvalidArgument("no command: neither the container config nor the image gives one")
        for kv in config.envs:
            # CRI carries env values as bytes (they may be binary); NUL cannot be in an environment.
            if b"\0" in kv.value:
                raise InvalidArgument(f"env {kv.key!r}: value contains a NUL byte")
        for m in config.mounts:
            if not m.container_path or not os.path.isabs(m.container_path):
                raise InvalidArgument(f"mount container_path {m.container_path!r} must be absolute")
            if not os.path.exists(m.host_path):
                raise InvalidArgument(f"mount host_path {m.host_path!r} does not exist")
        security.check_mac(sc)
        apparmor_profile = self.apparmor.profile_for(sc)
        if apparmor_profile is not None and not external_runtime and not monitor_features & FEATURE_APPARMOR:
            # Its plan decoder would refuse the field; never run the container without its profile.
            raise FailedPrecondition(f"apparmor profile {apparmor_profile!r}: this pod's monitor was started by a "
                                     "crio-fast without AppArmor support; recreate the pod")
        devices = security.host_devices() if sc.privileged else security.requested_devices(config.devices)

        resources = self._resources(config.linux.resources)
        if self.config.runtime.pids_limit > 0:
            resources = dataclasses.replace(resources, pids_limit=self.config.runtime.pids_limit)
        try:
            cgroup_writes = self.cgroups.limit_writes(cg, resources)
        except CgroupError as exc:
            raise InvalidArgument(f"container cgroup: {exc}") from exc
        device_rules = [d.cgroup_rule() for d in devices]
        devices_dir = cg.dirs.get("devices")
        v1_restricted = not sc.privileged and bool(devices_dir) and not self.cgroups.layout.is_v2("devices")
        # cgroup2 (pure v2, or the unified mount of a hybrid host): an eBPF device filter, attached
        # before the container's init may run. runc/crun attach their own from config.json.
        v2_restricted = not sc.privileged and not external_runtime and "unified" in cg.dirs
        if not sc.privileged and devices and not (v1_restricted or v2_restricted or external_runtime):
            raise FailedPrecondition("devices in the request need a devices cgroup (v1) or a cgroup2 "
                                     "hierarchy for the eBPF device filter; this host has neither")

        def make_cgroup() -> None:
            try:
                self.cgroups.make_container_cgroup(cg, cgroup_writes)
            except CgroupError as exc:
                raise InvalidArgument(f"container cgroup: {exc}") from exc
            if v1_restricted:
                security.write_device_rules(devices_dir, device_rules)
            if v2_restricted:
                self.cgroups.restrict_devices(cg, [*security.DEFAULT_DEVICE_RULES, *device_rules])

        return _CheckedRequest(argv=argv, devices=devices, make_cgroup=make_cgroup, apparmor_profile=apparmor_profile)

    def _rootfs_overlay(self, record: ContainerRecord, image_id: str, layer_dirs: list[Path],
                        external_runtime: bool, make_dirs: bool = True) -> Overlay:
        """The container's writable layer over the image's layers; its directories made here unless
        the head has the child make them."""
        storage = self.storage / record.id
        if make_dirs:
            for directory in (storage, storage / "upper", storage / "work"):
                os.mkdir(directory)
        if external_runtime:  # the runtime's bundle, with the rootfs mounted on the host
            target = self.bundles / record.id / "rootfs"
            os.makedirs(target)
            record.bundle = str(target.parent)
        else:
            target = self.native_rootfs_target
        return Overlay(lower=[str(d) for d in self._lower_dirs(image_id, layer_dirs)], target=str(target),
                       upper=str(storage / "upper"), work=str(storage / "work"))

    def _plan_rest(self, record, pod, pod_config: pb.PodSandboxConfig, config: pb.ContainerConfig,
                   image_config: dict[str, Any], layer_dirs: list[Path], head: LaunchHead, overlay: Overlay,
                   argv: list[str], devices: list[security.DeviceNode], cg, layout_v2: bool,
                   apparmor_profile: str | None) -> LaunchPlan:
        """The whole plan, from the head on: the rootfs, who the process runs as, with which
        capabilities and seccomp filter, its environment and mounts. Also fills the record's process,
        mounts and stop signal."""
        record.stop_signal = parse_signal(image_config.get("StopSignal") or "")
        sc = config.linux.security_context
        env: dict[str, str] = {}
        for entry in image_config.get("Env") or []:
            key, _, value = entry.partition("=")
            env[key] = value
        for kv in config.envs:
            env[kv.key] = kv.value.decode("utf-8", "surrogateescape")
        env.setdefault("PATH", DEFAULT_PATH.split("=", 1)[1])
        env.setdefault("HOSTNAME", Path(pod.pod_dir, "hostname").read_text().strip())
        env_list = [f"{k}={v}" for k, v in env.items()]

        identity = security.resolve_identity(sc, image_config.get("User") or "", layer_dirs)
        uid, gid, gids = identity.uid, identity.gid, identity.additional_gids
        caps = security.resolve_capabilities(
            list(self.config.runtime.default_capabilities), sc.capabilities, sc.privileged, uid)
        pod_sc = pod_config.linux.security_context
        seccomp = security.seccomp_for(security.requested_seccomp(sc), security.requested_seccomp(pod_sc),
                                       sc.privileged,
                                       self.config.runtime.seccomp_profile,
                                       self.config.runtime.seccomp_use_default_when_empty)
        sysctls = security.pod_sysctls(pod_config, self.config.runtime.default_sysctls)

        extra_mounts = [
            MountOp.bind(str(Path(pod.pod_dir, "hostname")), "/etc/hostname", recursive=False),
            MountOp.bind(str(Path(pod.pod_dir, "hosts")), "/etc/hosts", recursive=False),
            MountOp.bind(str(Path(pod.pod_dir, "resolv.conf")), "/etc/resolv.conf", recursive=False),
        ]
        record.mounts = []
        for m in config.mounts:
            extra_mounts.append(
                MountOp.bind(m.host_path, m.container_path, readonly=m.readonly,
                             propagation=PROPAGATION.get(m.propagation, MS_PRIVATE))
            )
            record.mounts.append({"container_path": m.container_path, "host_path": m.host_path,
                                  "readonly": m.readonly, "propagation": int(m.propagation)})
        shm = str(Path(pod.pod_dir, "shm")) if pod.namespaces.get("ipc") == "new" else None
        mounts = default_linux_mounts(
            shm_source=shm,
            cgroup="v2" if layout_v2 else "v1",
            # Made by make_cgroup in every hierarchy; bound in after the child has joined them.
            cgroup_v1_binds=None if layout_v2 else {
                key.removeprefix("name="): d for key, d in cg.hierarchy_dirs.items()
            },
            extra=[*security.device_mount_ops(devices), *extra_mounts],
            masked_paths=[] if sc.privileged else list(sc.masked_paths) or DEFAULT_MASKED_PATHS,
            readonly_paths=[] if sc.privileged else list(sc.readonly_paths) or DEFAULT_READONLY_PATHS,
        )
        if sc.privileged:
            # Privileged containers get a writable /sys, as with runc.
            mounts = [MountOp.mount("sysfs", "/sys", flags=MS_NOSUID | MS_NOEXEC | MS_NODEV)
                      if op.destination == "/sys" and op.fstype == "sysfs" else op for op in mounts]

        cwd = config.working_dir or image_config.get("WorkingDir") or "/"
        plan = LaunchPlan(
            argv=argv,
            env=env_list,
            cwd=cwd,
            namespaces=list(head.namespaces),
            cgroup_procs=list(head.cgroup_procs),
            oom_counter_path=head.oom_counter_path,
            overlay=overlay,
            mounts=mounts,
            rootfs_readonly=sc.readonly_rootfs,
            oom_score_adj=config.linux.resources.oom_score_adj if config.linux.HasField("resources") else None,
            uid=uid,
            gid=gid,
            additional_gids=gids,
            capabilities=caps,
            no_new_privs=sc.no_new_privs,
            seccomp=seccomp,
            sysctls=sysctls,
            rlimits=security.parse_ulimits(self.config.runtime.default_ulimits),
            stdin=head.stdin,
            tty=head.tty,
            root_propagation=head.root_propagation,
            apparmor_profile=apparmor_profile,
        )
        record.process = {
            "env": env_list, "cwd": cwd, "uid": uid, "gid": gid, "gids": gids, "no_new_privs": sc.no_new_privs,
            "caps": [caps.bounding, caps.effective, caps.permitted, caps.inheritable, caps.ambient],
            "cgroup_procs": list(head.cgroup_procs),
            "seccomp_digest": self.state.seccomp.add(seccomp) if seccomp else None,
            # ExecSync and Exec run under it too; absent in records from before AppArmor: none.
            "apparmor_profile": apparmor_profile,
        }
        return plan

    def _lower_dirs(self, image_id: str, layer_dirs: list[Path]) -> list[Path]:
        """The overlay's lower dirs, top-most first: the image's layers under its mount-targets layer."""
        try:
            targets = make_mount_targets_layer(layer_dirs, self.mount_targets / image_id.removeprefix("sha256:"))
        except OSError as exc:
            log.warning("image %s: mount-targets layer: %s", image_id[:19], exc)
            targets = None
        return [targets, *layer_dirs] if targets is not None else layer_dirs

    def _oci_bundle(self, record: ContainerRecord, pod, plan: LaunchPlan, sc, pod_sc,
                    devices: list[security.DeviceNode]) -> tuple[LaunchPlan, OciRuntimeCall | None]:
        """For a pod of an oci handler: mount the rootfs on the host and write config.json (container/oci.py)."""
        handler = self._oci_handler(pod.id)
        if handler is None:
            return plan, None
        rootfs = str(Path(record.bundle) / "rootfs")
        try:
            oci.mount_rootfs(plan.overlay)
        except OSError as exc:
            raise FailedPrecondition(f"container rootfs: {exc}") from exc
        plan = dataclasses.replace(plan, overlay=None, rootfs=rootfs)
        seccomp = oci.seccomp_profile(security.requested_seccomp(sc), security.requested_seccomp(pod_sc),
                                      sc.privileged, self.config.runtime.seccomp_profile,
                                      self.config.runtime.seccomp_use_default_when_empty)
        spec = oci.build_spec(plan, rootfs=rootfs, cgroups_path=record.cgroup_path, pod_namespaces=pod.ns_paths,
                              privileged=sc.privileged, seccomp=seccomp,
                              device_rules=[d.cgroup_rule() for d in devices])
        oci.apply_network_sysctls(plan.sysctls, pod.ns_paths)
        oci.write_bundle(Path(record.bundle), spec)
        os.makedirs(handler.runtime_root, mode=0o700, exist_ok=True)
        # The runtime applies the profile (process.apparmorProfile); the monitor only decodes this plan, and
        # one started by a crio-fast without AppArmor would refuse the field.
        plan = dataclasses.replace(plan, apparmor_profile=None)
        return plan, OciRuntimeCall(runtime_path=handler.runtime_path, root=handler.runtime_root,
                                    bundle=record.bundle, hide_cgroup2_mount=handler.hide_cgroup2_mount)

    def _oci_handler(self, pod_id: str) -> RuntimeHandler | None:
        """The pod's RuntimeHandler when it is an external OCI runtime, else None."""
        pod = self.state.pods.get(pod_id)
        handler = self.config.runtime.runtimes.get(pod.runtime_handler) if pod is not None else None
        return handler if handler is not None and handler.runtime_type == "oci" else None

    def _oci_exec_sync(self, handler: RuntimeHandler, record: ContainerRecord, cmd: list[str], timeout: int,
                       ) -> tuple[int, bytes, bytes]:
        try:
            return oci.exec_sync(handler, self.monitor_path, Path(record.bundle), record.id, cmd,
                                 float(timeout) if timeout > 0 else 3600.0 * 24)
        except TimeoutError as exc:
            raise DeadlineExceeded(f"command {cmd[0]!r} timed out after {timeout}s") from exc
        except OSError as exc:
            raise FailedPrecondition(f"exec in {record.id} with {handler.runtime_path}: {exc}") from exc

    @staticmethod
    def _resources(r: pb.LinuxContainerResources) -> Resources:
        return Resources(
            cpu_period=r.cpu_period, cpu_quota=r.cpu_quota, cpu_shares=r.cpu_shares,
            memory_limit_in_bytes=r.memory_limit_in_bytes, memory_swap_limit_in_bytes=r.memory_swap_limit_in_bytes,
            oom_score_adj=r.oom_score_adj, cpuset_cpus=r.cpuset_cpus, cpuset_mems=r.cpuset_mems,
            hugepage_limits=[(h.page_size, h.limit) for h in r.hugepage_limits], unified=dict(r.unified),
        )

    # -- Start / Stop / Remove -------------------------------------------------

    def start(self, container_id: str) -> None:
        # Not get(): its refresh would take in a CREATE reply that is already there and save the record
        # for its pid, and _mark_started saves it again right after. A set-up that failed is taken in
        # when the monitor refuses the START.
        record = self.state.containers.find(container_id)
        if record is None:
            raise NotFound(f"container {container_id!r} not found")
        self._check_startable(record)
        pod = self.sandboxes.get(record.pod_id)
        monitor = self.sandboxes.monitor(pod)
        with self._lock:  # checked again and claimed at once: a second start's failure would mark the container
            if record.id in self._starting:
                raise FailedPrecondition(f"container {record.id} is being started by another call")
            self._check_startable(record)
            self._starting.add(record.id)
        try:
            try:
                # Sent without waiting for the CREATE reply: the monitor holds a START that comes
                # while the child is still setting up and releases the child the moment it is ready.
                monitor.start(record.id)
            except MonitorError as exc:
                self._settle(record)
                if record.state == CTR_EXITED:  # the set-up failed: its own message says why
                    raise FailedPrecondition(f"starting container {record.id}: {record.message}") from exc
                if exc.code != errno.EINVAL or "still being created" not in exc.message:
                    self._fail_start(record, exc)
                # A monitor from before queued STARTs, and the set-up has ended meanwhile.
                self._start_created(record, monitor)
            else:
                self._mark_started(record, monitor)
        finally:
            with self._lock:
                self._starting.discard(record.id)
        self.refresh(record)  # an exit the watcher saw while this start was under way

    @staticmethod
    def _check_startable(record: ContainerRecord) -> None:
        if record.state == CTR_EXITED and record.reason == "StartError":
            raise FailedPrecondition(f"starting container {record.id}: {record.message}")
        if record.state != CTR_CREATED:
            raise FailedPrecondition(f"container {record.id} is {record.state}, not created")

    def _start_created(self, record: ContainerRecord, monitor) -> None:
        try:
            monitor.start(record.id)
        except MonitorError as exc:
            self._fail_start(record, exc)
        self._mark_started(record, monitor)

    def _fail_start(self, record: ContainerRecord, exc: MonitorError) -> NoReturn:
        record.state, record.reason, record.message = CTR_EXITED, "StartError", str(exc)
        record.exit_code, record.finished_at = 128, time.time_ns()
        self.state.containers.save(record)
        self._emit(record, pb.ContainerEventType.CONTAINER_STOPPED_EVENT)
        raise FailedPrecondition(f"starting container {record.id}: {exc}") from exc

    def _mark_started(self, record: ContainerRecord, monitor) -> None:
        self._settle(record, save_pid=False)  # the CREATE reply came before the START reply: the pid
        if not record.pid:
            # Created before a daemon restart, its CREATE reply unread: the monitor knows the pid.
            try:
                record.pid = monitor.state(record.id).pid
            except MonitorError as exc:
                log.info("container %s: pid from the monitor: %s", record.id[:12], exc)
        record.state, record.started_at = CTR_RUNNING, time.time_ns()
        self.state.containers.save(record)
        self._emit(record, pb.ContainerEventType.CONTAINER_STARTED_EVENT)

    def _wait_exit(self, record: ContainerRecord, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        delay = 0.002
        while True:
            self.refresh(record)
            if record.state not in (CTR_CREATED, CTR_RUNNING):
                return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(delay)
            delay = min(delay * 2, 0.05)

    def stop(self, container_id: str, timeout: int) -> None:
        try:
            record = self.get(container_id)
        except NotFound:
            return  # idempotent, as the CRI conformance suite checks: nothing left to stop
        self._settle(record)
        if record.state not in (CTR_CREATED, CTR_RUNNING):
            return
        pod = self.state.pods.get(record.pod_id)
        try:
            monitor = self.sandboxes.monitor(pod) if pod is not None else None
        except FailedPrecondition:
            monitor = None
        if monitor is None:
            self._stop_orphaned(record)
            return
        if record.state == CTR_RUNNING and timeout > 0:
            try:
                monitor.kill(record.id, record.stop_signal)
            except MonitorError as exc:
                log.info("container %s: stop signal: %s", record.id[:12], exc)
            if self._wait_exit(record, timeout):
                return
        try:
            monitor.kill(record.id, signal.SIGKILL, all=True)
        except MonitorError as exc:
            log.info("container %s: SIGKILL: %s", record.id[:12], exc)
        if not self._wait_exit(record, KILL_WAIT_SECONDS):
            raise Internal(f"container {record.id} did not exit after SIGKILL")

    def _stop_orphaned(self, record: ContainerRecord) -> None:
        """Stop a container whose pod monitor is gone (killed): its processes are
        killed through its cgroup, and its init, re-parented to this daemon (a
        child subreaper), is reaped here so its real exit status is recorded."""
        if record.pid and record.cgroup_path and record.state in (CTR_CREATED, CTR_RUNNING):
            try:
                self.cgroups.kill(self.cgroups.paths(record.cgroup_path))
            except CgroupError as exc:
                log.warning("container %s: killing its cgroup: %s", record.id[:12], exc)
            self._record_orphan_exit(record, wait_adopted(record.pid, KILL_WAIT_SECONDS))
        self.refresh(record)

    def _record_orphan_exit(self, record: ContainerRecord, status: int | None) -> None:
        if status is None or (self.exits_dir / record.id).exists():
            return
        exit_code, signal_number = exit_code_of(status)
        write_exit_file(self.exits_dir / record.id, ExitInfo(
            exit_code=exit_code, signal=signal_number, pid=record.pid, started_at=record.started_at,
            finished_at=time.time_ns(), oom_killed=False))

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
        self._remove_leftovers(record)
        self.state.containers.delete(record.id)
        self._emit(record, pb.ContainerEventType.CONTAINER_DELETED_EVENT)

    def remove_all_in_pod(self, pod_id: str) -> None:
        for record in self.state.containers.values():
            if record.pod_id == pod_id:
                self.remove(record.id)

    def _remove_leftovers(self, record: ContainerRecord) -> None:
        handler = self._oci_handler(record.pod_id)
        if handler is not None:
            # Normally the monitor's REMOVE or shutdown deleted it; not when the monitor was killed.
            oci.delete_leftover_state(handler, self.monitor_path, record.id)
        if record.cgroup_path:
            try:
                self.cgroups.remove(self.cgroups.paths(record.cgroup_path))
            except CgroupError as exc:
                log.warning("container %s: removing cgroup: %s", record.id[:12], exc)
        try:
            oci.unmount_rootfs(str(self.bundles / record.id / "rootfs"))  # oci handlers mount it on the host
        except OSError as exc:
            log.warning("container %s: %s", record.id[:12], exc)
        shutil.rmtree(self.bundles / record.id, ignore_errors=True)
        shutil.rmtree(self.storage / record.id, ignore_errors=True)
        try:
            os.unlink(self.exits_dir / record.id)
        except FileNotFoundError:
            pass

    # -- ExecSync / logs -----------------------------------------------------

    def exec_sync(self, container_id: str, cmd: list[str], timeout: int) -> tuple[int, bytes, bytes]:
        record = self.get(container_id)
        if record.state != CTR_RUNNING:
            raise FailedPrecondition(f"container {record.id} is {record.state}, not running")
        if not cmd:
            raise InvalidArgument("ExecSync: empty command")
        handler = self._oci_handler(record.pod_id)
        if handler is not None:
            return self._oci_exec_sync(handler, record, cmd, timeout)
        plan = self._exec_plan(record, cmd)
        try:
            result = exec_sync(self.monitor_path, plan, float(timeout) if timeout > 0 else 3600.0 * 24)
        except TimeoutError as exc:
            raise DeadlineExceeded(f"command {cmd[0]!r} timed out after {timeout}s") from exc
        except MonitorError as exc:
            raise FailedPrecondition(f"exec in {record.id}: {exc}") from exc
        stderr = result.stderr
        if result.error:
            stderr = stderr + (result.error + "\n").encode()
        return result.exit_code, result.stdout, stderr

    def _exec_plan(self, record: ContainerRecord, cmd: list[str]) -> ExecPlan:
        """How to run ``cmd`` as the container's own process runs: its namespaces,
        cgroups, credentials, capabilities, seccomp, environment and cwd."""
        p = record.process
        bounding, effective, permitted, inheritable, ambient = p["caps"]
        seccomp = None
        if p.get("seccomp_digest"):
            seccomp = self.state.seccomp.get(p["seccomp_digest"])
            if seccomp is None:  # never dropped while a record names it: the database was damaged
                raise FailedPrecondition(f"container {record.id}: its seccomp program is missing from the state")
        elif p.get("seccomp"):  # a record from a build that kept the program inline
            seccomp = base64.b64decode(p["seccomp"])
        return ExecPlan(
            target_pid=record.pid, argv=list(cmd), env=list(p["env"]), cwd=p["cwd"],
            cgroup_procs=list(p["cgroup_procs"]), uid=p["uid"], gid=p["gid"], additional_gids=list(p["gids"]),
            capabilities=Capabilities(bounding, effective, permitted, inheritable, ambient),
            no_new_privs=p["no_new_privs"],
            seccomp=seccomp,
            rlimits=security.parse_ulimits(self.config.runtime.default_ulimits),
            apparmor_profile=p.get("apparmor_profile"),
        )

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
        self._settle(record)
        if record.state not in (CTR_CREATED, CTR_RUNNING):
            raise FailedPrecondition(f"container {record.id} is {record.state}: its resources cannot change")
        limits = self._resources(resources)
        if self.config.runtime.pids_limit > 0:
            limits = dataclasses.replace(limits, pids_limit=self.config.runtime.pids_limit)
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

    # -- Status / List -------------------------------------------------------

    def status_proto(self, record: ContainerRecord) -> pb.ContainerStatus:
        config = decode_container_config(record.config)
        status = pb.ContainerStatus(
            id=record.id, metadata=config.metadata, state=STATE_TO_PROTO[record.state],
            created_at=record.created_at, started_at=record.started_at, finished_at=record.finished_at,
            exit_code=record.exit_code, image=pb.ImageSpec(image=record.image_ref), image_ref=record.image_id,
            image_id=record.image_id, reason=record.reason, message=record.message, labels=config.labels,
            annotations=config.annotations, log_path=record.log_path,
        )
        for m in record.mounts:
            status.mounts.add(container_path=m["container_path"], host_path=m["host_path"], readonly=m["readonly"],
                              propagation=m["propagation"])
        return status

    def container_proto(self, record: ContainerRecord) -> pb.Container:
        """The record as ListContainers returns it; built once per state (callers must not change it)."""
        def build() -> pb.Container:
            config = decode_container_config(record.config)
            return pb.Container(
                id=record.id, pod_sandbox_id=record.pod_id, metadata=config.metadata,
                image=pb.ImageSpec(image=record.image_ref), image_ref=record.image_id, image_id=record.image_id,
                state=STATE_TO_PROTO[record.state], created_at=record.created_at, labels=config.labels,
                annotations=config.annotations,
            )

        return list_entry(record, build)

    def list(self, flt: pb.ContainerFilter | None) -> list[ContainerRecord]:
        out = []
        try:
            exit_files: set[str] | None = set(os.listdir(self.exits_dir))
        except OSError:
            exit_files = None
        for record in self.state.containers.values():
            if flt is not None and not matches_filter(record, flt.id, flt.pod_sandbox_id, {}):
                continue
            record = self.refresh(record, exit_files)
            if flt is not None:
                if flt.HasField("state") and STATE_TO_PROTO[record.state] != flt.state.state:
                    continue
                if not matches_filter(record, "", "", flt.label_selector):
                    continue
            out.append(record)
        return out
