"""Pod sandbox lifecycle without a pause container.

RunPodSandbox makes the pod's files (hostname, resolv.conf, hosts) under its
pod dir in the run root, its cgroup, and spawns the pod's native monitor,
which creates and holds the pod's network, IPC and UTS namespaces (unless the
pod asks for the node's) and its /dev/shm, then attaches the network namespace
through CNI (network/pod.py). Stopping a pod runs CNI DEL and shuts the monitor
down (namespaces and shm go with it); removing it removes what is left. Both are
idempotent. The engine orders a pod's teardown: its containers first, under the
pod's lock (server/engine.py stop_pod, remove_pod).
"""

from __future__ import annotations

import base64
import logging
import os
import re
import secrets
import shutil
import socket
import threading
import time
from concurrent import futures
from pathlib import Path
from typing import Callable, Mapping

from crio_fast.api import api_pb2 as pb
from crio_fast.cgroups import CgroupError, CgroupManager, CgroupPaths, CgroupRefusedError
from crio_fast.config import Config
from crio_fast.crashpoints import crash_point
from crio_fast.sandbox.sysctls import pod_sysctls
from crio_fast.sandbox.userns import pod_user_namespace
from crio_fast.errors import AlreadyExists, FailedPrecondition, Internal, InvalidArgument, NotFound, shown
from crio_fast.logs import make_log_directory
from crio_fast.network.netns_pool import NetnsPool
from crio_fast.network.pod import PodNetwork
from crio_fast.runtime.monitor import MonitorError, PodMonitor
from crio_fast.runtime.idmap_support import IdmapSupport, first_closed_directory, idmapped_overlay_support
from crio_fast.runtime.reaper import reap_adopted, reap_dead_pod_inits
from crio_fast.runtime.spawn import PodMonitorSpec, cleanup_pod_dir, spawn_monitor
from crio_fast.runtime.wire import feature_names
from crio_fast.state.records import (
    POD_NOTREADY,
    POD_READY,
    PodRecord,
    StateStore,
    decode_pod_config,
    labels_match,
)
from crio_fast.validation import check_pod_config

log = logging.getLogger("crio_fast.sandbox")

# OCI runtimes whose containers join the pod's user namespace (by path, the rootfs ID-mapped on the host by
# the daemon), as tests/integration/test_user_namespaces.py shows for Debian's builds.
OCI_RUNTIMES_WITH_USERNS = frozenset({"crun", "runc"})
HOSTNAME_RE = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$", re.IGNORECASE)
DEFAULT_SHM_SIZE = 64 * 1024 * 1024


def pod_name(meta: pb.PodSandboxMetadata) -> str:
    return f"k8s_{meta.name}_{meta.namespace}_{meta.uid}_{meta.attempt}"


def encode_config(message) -> str:
    return base64.b64encode(message.SerializeToString()).decode()


def resolv_conf(dns: pb.DNSConfig) -> bytes:
    """The pod's resolv.conf: from DNSConfig when given, else the node's."""
    if not (dns.servers or dns.searches or dns.options):
        try:
            return Path("/etc/resolv.conf").read_bytes()
        except OSError:
            return b""
    lines = [f"nameserver {s}" for s in dns.servers]
    if dns.searches:
        lines.append("search " + " ".join(dns.searches))
    if dns.options:
        lines.append("options " + " ".join(dns.options))
    return ("\n".join(lines) + "\n").encode()


def hosts_file(hostname: str) -> bytes:
    lines = [
        "127.0.0.1\tlocalhost",
        "::1\tlocalhost ip6-localhost ip6-loopback",
        "fe00::0\tip6-localnet",
        "fe00::0\tip6-mcastprefix",
        "fe00::1\tip6-allnodes",
        "fe00::2\tip6-allrouters",
    ]
    if hostname:
        lines.append(f"127.0.1.1\t{hostname}")
    return ("\n".join(lines) + "\n").encode()


class SandboxManager:
    def __init__(self, config: Config, state: StateStore, cgroups: CgroupManager, monitor_path: str,
                 netns_pool: NetnsPool | None = None) -> None:
        self.config = config
        self.netns_pool = netns_pool
        self.state = state
        self.cgroups = cgroups
        self.monitor_path = monitor_path
        self.pods_dir = Path(config.crio.runroot) / "pods"
        self.exits_dir = Path(config.runtime.container_exits_dir)
        self.pods_dir.mkdir(parents=True, exist_ok=True)
        self.exits_dir.mkdir(parents=True, exist_ok=True)
        self._monitors: dict[str, PodMonitor] = {}
        self._lock = threading.RLock()
        self._pod_locks: dict[str, threading.RLock] = {}
        self.network = PodNetwork(config.crio.runroot)
        # CNI ADDs run beside a pod's start when its network namespace was made ahead.
        self._beside = futures.ThreadPoolExecutor(max_workers=8, thread_name_prefix="cni-add")
        # Told (pod id, pid) of every monitor this manager starts or reconnects to; the engine watches
        # for its exit (server/recovery.py).
        self.watch_monitor: Callable[[str, int], None] | None = None

    def pod_lock(self, pod_id: str) -> threading.RLock:
        with self._lock:
            return self._pod_locks.setdefault(pod_id, threading.RLock())

    # -- lookups -------------------------------------------------------------

    def get(self, pod_id: str) -> PodRecord:
        record = self.state.pods.find(pod_id)
        if record is None:
            raise NotFound(f"pod sandbox {shown(pod_id)} not found")
        return record

    def monitor(self, record: PodRecord, needs: int = 0) -> PodMonitor:
        """The live monitor of a ready pod (reconnecting after a daemon restart).

        ``needs``: the MONITOR_FEATURE_ bits the caller's request relies on. A monitor outlives the
        daemon, so one started by another build may lack some; the request is then refused here
        rather than sent to a monitor that would misread it (docs/monitor.md, "Compatibility")."""
        with self._lock:
            mon = self._monitors.get(record.id)
            if mon is None or not mon.alive():
                if record.state != POD_READY:
                    raise FailedPrecondition(f"pod sandbox {record.id} is not ready")
                try:
                    mon = PodMonitor.attach(record.pod_dir)
                except MonitorError as exc:
                    raise FailedPrecondition(f"pod sandbox {record.id}: its monitor is gone: {exc}") from exc
                self._monitors[record.id] = mon
                if self.watch_monitor is not None:
                    self.watch_monitor(record.id, mon.pid)
        if missing := needs & ~mon.features:
            raise FailedPrecondition(f"pod sandbox {record.id}: its monitor (pid {mon.pid}) lacks "
                                     f"{', '.join(feature_names(missing))}, which this crio-fast needs; "
                                     "recreate the pod")
        return mon

    # -- user namespaces -------------------------------------------------------

    def user_namespace_support(self, handler_name: str) -> IdmapSupport:
        """Whether pods of this handler can have a user namespace (hostUsers: false): where the kernel mounts
        overlays over ID-mapped layers of the image store (asked once). The native handler's containers join
        the pod's user namespace in the monitor; runc's and crun's join it by path (config.json), over a rootfs
        the daemon mounts ID-mapped on the host, and need the way to it open to the pod's root."""
        handler = self.config.runtime.runtimes.get(handler_name)
        if handler is None:
            return IdmapSupport(False, f"runtime handler {handler_name!r} is not configured")
        if handler.runtime_type == "oci":
            if os.path.basename(handler.runtime_path) not in OCI_RUNTIMES_WITH_USERNS:
                return IdmapSupport(False, f"runtime handler {handler_name!r} ({handler.runtime_path}) is not known "
                                           "to join a pod's user namespace over an ID-mapped rootfs")
            closed = first_closed_directory(Path(self.config.crio.runroot) / "containers")
            if closed is not None:
                return IdmapSupport(False, f"runtime handler {handler_name!r} sets containers up as the pod's root, "
                                           f"who cannot reach their rootfs: {closed} is not searchable by others "
                                           "(chmod o+x)")
        layers = Path(self.config.crio.root) / "images" / "layers"
        return idmapped_overlay_support(self.monitor_path, str(layers if layers.is_dir() else self.config.crio.root))

    # -- RunPodSandbox ---------------------------------------------------------

    def validate(self, config: pb.PodSandboxConfig, handler: str) -> str:
        check_pod_config(config)
        meta = config.metadata
        missing = [f for f in ("name", "namespace", "uid") if not getattr(meta, f)]
        if missing:
            raise InvalidArgument(f"pod sandbox metadata is missing {', '.join(missing)}")
        handler = handler or self.config.runtime.default_runtime
        if handler not in self.config.runtime.runtimes:
            raise InvalidArgument(
                f"runtime handler {shown(handler)} is not configured; configured: {', '.join(self.config.runtime_handler_names())}"
            )
        if config.hostname and not HOSTNAME_RE.match(config.hostname):
            raise InvalidArgument(f"hostname {shown(config.hostname)} is not a valid DNS name")
        if config.linux.cgroup_parent.strip("/"):
            try:
                self.cgroups.check_cgroup_parent(config.linux.cgroup_parent)
            except CgroupError as exc:
                raise InvalidArgument(f"pod cgroup: {exc}") from exc
        # Namespaced sysctls are applied in every container of the pod; others are refused here.
        pod_sysctls(config)
        if pod_user_namespace(config) is not None:
            support = self.user_namespace_support(handler)
            if not support.supported:
                if self.config.runtime.runtimes[handler].runtime_type == "oci":
                    raise InvalidArgument(f"user namespaces: {support.detail}")
                raise FailedPrecondition(f"user namespaces are not supported on this node: {support.detail}")
        return handler

    def run(self, config: pb.PodSandboxConfig, handler: str) -> str:
        handler = self.validate(config, handler)
        name = pod_name(config.metadata)
        pod_id = secrets.token_hex(32)
        try:
            pod_cg = self.cgroups.pod_cgroup_paths(config.linux.cgroup_parent, pod_id)
        except CgroupError as exc:
            raise InvalidArgument(f"pod cgroup: {exc}") from exc
        # What a teardown needs (pod dir, cgroup and whether it is ours) is saved before anything exists.
        record = PodRecord(
            id=pod_id, name=name, config=encode_config(config), runtime_handler=handler, state=POD_NOTREADY,
            created_at=time.time_ns(), pod_dir=str(self.pods_dir / pod_id), cgroup_path=pod_cg.path,
            cgroup_created=not config.linux.cgroup_parent.strip("/") or not all(
                os.path.isdir(d) for d in pod_cg.hierarchy_dirs.values()),
            log_directory=config.log_directory,
        )
        with self._lock:
            for other in self.state.pods.values():
                if other.name == name:
                    raise AlreadyExists(f"pod sandbox {name} already exists as {other.id}")
            # Reserve the name before the slow part so a concurrent duplicate fails.
            self.state.pods.reserve(record)
        crash_point("runpod", 1)
        # Under the pod's lock: a stop of the pod while it starts (it is listed already) waits, then stops it.
        with self.pod_lock(record.id):
            try:
                return self._run(record, config, pod_cg)
            except BaseException:
                self._undo_run(record)
                with self._lock:
                    self._pod_locks.pop(record.id, None)
                raise

    def _run(self, record: PodRecord, config: pb.PodSandboxConfig, pod_cg: CgroupPaths) -> str:
        pod_dir = Path(record.pod_dir)
        pod_dir.mkdir(mode=0o711)
        crash_point("runpod", 2)
        ns_opts = config.linux.security_context.namespace_options
        host_net = ns_opts.network == pb.NamespaceMode.NODE
        host_ipc = ns_opts.ipc == pb.NamespaceMode.NODE
        hostname = config.hostname or (socket.gethostname() if host_net else config.metadata.name[:63])
        if not host_net and not HOSTNAME_RE.match(hostname):
            hostname = re.sub(r"[^a-z0-9-]", "-", hostname.lower()).strip("-")[:63] or "pod"
        monitor_cg = self.cgroups.monitor_cgroup_paths(pod_cg, record.id)

        record.namespaces = {
            "net": "host" if host_net else "new",
            "ipc": "host" if host_ipc else "new",
            # A pod on the node's network keeps the node's hostname, as the kubelet expects.
            "uts": "host" if host_net else "new",
            # POD (shareProcessNamespace): one pid namespace for the pod, whose pid 1 is the monitor's pod init.
            # POD is also proto3's zero value, so a config without namespace_options (crictl's, critest's) gets
            # one too, as with containerd and CRI-O; the kubelet always says CONTAINER unless it wants POD.
            "pid": "new" if ns_opts.pid == pb.NamespaceMode.POD else "host",
        }
        userns = pod_user_namespace(config)
        # The pod's own user namespace owns its new net, ipc and uts namespaces (the monitor makes it first).
        record.namespaces["user"] = "new" if userns is not None else "host"
        # A pod's own network namespace, made ahead, unless a user namespace of the pod must own it.
        pooled_net = (self.netns_pool.take() if self.netns_pool is not None and not host_net and userns is None
                      else None)
        spec = PodMonitorSpec(
            pod_id=record.id,
            pod_dir=record.pod_dir,
            exits_dir=str(self.exits_dir),
            namespaces=record.namespaces,
            pid=record.namespaces["pid"],
            hostname=None if host_net else hostname,
            cgroup_procs=monitor_cg.procs_files,
            shm_size=0 if host_ipc else DEFAULT_SHM_SIZE,
            stderr_path=str(pod_dir / "monitor.log"),
            userns_uid_map=userns.uids.line() if userns is not None else None,
            userns_gid_map=userns.gids.line() if userns is not None else None,
            net_path=pooled_net,
        )

        def make_cgroups(spawned_pid: int) -> None:
            # Runs on this CPU while the monitor makes the namespaces on the other; it joins the
            # cgroups made here once this returns.
            crash_point("runpod", 3)
            try:
                self.cgroups.create_pod_and_monitor_cgroups(pod_cg, monitor_cg, spawned_pid)
                record.cgroup_path, record.cgroup_created = pod_cg.path, pod_cg.created
                record.cgroup_parents_made = self._cgroup_parents_made(record, pod_cg)
            except CgroupRefusedError as exc:  # the node's cgroup manager will not, as it is set up
                raise FailedPrecondition(f"pod cgroup: {exc}") from exc
            except CgroupError as exc:  # the parent asked for cannot be made
                raise InvalidArgument(f"pod cgroup: {exc}") from exc
            crash_point("runpod", 4)

        def write_pod_files() -> None:
            # The monitor needs none of these: they are written while it joins its cgroups and forks.
            (pod_dir / "hostname").write_text(hostname + "\n")
            (pod_dir / "resolv.conf").write_bytes(resolv_conf(config.dns_config))
            (pod_dir / "hosts").write_bytes(Path("/etc/hosts").read_bytes() if host_net else hosts_file(hostname))
            if userns is not None:
                # Bound into every container: the pod's root owns them, as it would without a user namespace.
                for name in ("hostname", "resolv.conf", "hosts"):
                    os.chown(pod_dir / name, *userns.root_owner)
            if record.log_directory:
                make_log_directory(record.log_directory)
            crash_point("runpod", 5)

        # A namespace made ahead exists already: its ADD need not wait for the monitor and runs beside the
        # monitor's start, the cgroups and the pod files. A failed ADD has undone itself.
        adding = (self._beside.submit(self.network.attach, self.config, record.id, pooled_net, config)
                  if pooled_net is not None else None)
        try:
            try:
                mon = spawn_monitor(self.monitor_path, spec, meanwhile=make_cgroups, after_gate=write_pod_files)
            except MonitorError as exc:
                raise Internal(f"starting the pod monitor: {exc}") from exc
            with self._lock:
                self._monitors[record.id] = mon
            crash_point("runpod", 6)
            record.monitor_pid = mon.pid
            record.ns_paths = dict(mon.ns_paths)
            if not host_net:
                # run()'s cleanup shuts the monitor down after a failure.
                attached = (adding.result() if adding is not None
                            else self.network.attach(self.config, record.id, record.ns_paths["net"], config))
                record.ips = attached.ips() if attached is not None else []
                crash_point("runpod", 9)
        except BaseException:
            if adding is not None:
                self._undo_add_beside(record, adding, pooled_net, config)
            raise
        finally:
            if pooled_net is not None:  # pinned in the pod dir by now, or not wanted any more; ADD done
                if adding is not None:
                    futures.wait([adding])
                self.netns_pool.used(pooled_net)
        record.state, record.creating = POD_READY, False
        self.state.pods.save(record)
        if self.watch_monitor is not None:
            self.watch_monitor(record.id, mon.pid)
        crash_point("runpod", 10)
        log.info("pod %s (%s) ready, monitor pid %d", record.id[:12], record.name, mon.pid)
        return record.id

    def _undo_add_beside(self, record: PodRecord, adding: futures.Future, netns: str,
                         config: pb.PodSandboxConfig) -> None:
        """The start failed while (or after) an ADD ran beside it: once it is over, DEL what it did (in the
        namespace, still pinned by the pool) — a failed ADD has undone itself."""
        try:
            if adding.result() is None:
                return  # no network configured: nothing was added
        except BaseException:  # noqa: BLE001 - undone by attach itself; the start's own error is reported
            return
        try:
            self.network.detach(self.config, record.id, netns, config)
        except Exception as exc:  # noqa: BLE001 - the start's error is the one to report; recovery DELs later
            log.warning("pod %s: DEL after a failed start: %s", record.id[:12], exc)

    def _cgroup_parents_made(self, record: PodRecord, pod_cg: CgroupPaths) -> list[str]:
        """The ancestors of the pod's cgroup that crio-fast made: by this creation, or for another pod
        still here. Each pod that shares one removes it when it goes; the last one succeeds."""
        made = set(pod_cg.parents_made)
        for other in self.state.pods.values():
            if other.id != record.id:
                made.update(p for p in other.cgroup_parents_made if pod_cg.path.startswith(p + "/"))
        return sorted(made)

    def _undo_run(self, record: PodRecord) -> None:
        with self._lock:
            mon = self._monitors.pop(record.id, None)
        if mon is not None:
            try:
                mon.shutdown()
            except MonitorError as exc:
                log.warning("pod %s: monitor shutdown after failed start: %s", record.id[:12], exc)
        self.remove_leftovers(record)
        self.state.pods.delete(record.id)

    # -- Stop / Remove ---------------------------------------------------------

    def stop(self, pod_id: str) -> None:
        record = self.state.pods.find(pod_id)
        if record is None:
            return  # CRI: stopping what is gone succeeds
        with self.pod_lock(record.id):
            if record.stopped:
                # CRI: stopping what is stopped succeeds, and changes nothing; the kubelet repeats it.
                # Its monitor's pid, long reaped, may be another process's now.
                return
            if record.namespaces.get("net") == "new":
                # While the monitor still holds the namespace, so plugins can clean inside it.
                self.network.detach(
                    self.config, record.id, record.ns_paths.get("net", ""), decode_pod_config(record.config)
                )
                record.ips = []
                crash_point("stoppod", 3)
            with self._lock:
                mon = self._monitors.pop(record.id, None)
            if mon is None and record.state == POD_READY:
                try:
                    mon = PodMonitor.attach(record.pod_dir)
                except MonitorError:
                    mon = None
            killed = mon is None or not mon.alive()
            if mon is not None:
                try:
                    mon.shutdown()
                except MonitorError as exc:
                    log.warning("pod %s: monitor shutdown: %s", record.id[:12], exc)
            if killed:
                reap_adopted(record.monitor_pid)  # a killed monitor is this subreaper's zombie
                if record.namespaces.get("pid") == "new":
                    reap_dead_pod_inits()  # and so is its pod init, which died with it
            crash_point("stoppod", 4)
            cleanup_pod_dir(record.pod_dir)  # mounts a dead monitor could not undo
            crash_point("stoppod", 5)
            record.state, record.stopped = POD_NOTREADY, True
            self.state.pods.save(record)

    def remove(self, pod_id: str) -> None:
        """Remove a stopped pod (``stop``) whose containers are gone."""
        record = self.state.pods.find(pod_id)
        if record is None:
            return
        with self.pod_lock(record.id):
            self.remove_leftovers(record)
            crash_point("removepod", 5)
            self.state.pods.delete(record.id)
        with self._lock:
            self._pod_locks.pop(record.id, None)
        log.info("pod %s (%s) removed", record.id[:12], record.name)

    def remove_leftovers(self, record: PodRecord) -> None:
        """What a pod leaves on the node once its monitor is gone: the pod dir's mounts, its cgroup
        (the monitor's only when the pod cgroup is not ours), the pod dir."""
        cleanup_pod_dir(record.pod_dir)
        crash_point("removepod", 4)
        if record.cgroup_path:
            paths = self.cgroups.paths(record.cgroup_path)
            try:
                # Not always inside the pod's cgroup (the systemd driver's monitor_cgroup).
                self.cgroups.remove_monitor_cgroup(paths, record.id)
                if record.cgroup_created:  # else the kubelet owns it: only what we made in it goes
                    self.cgroups.remove(paths)
                    self.cgroups.remove_parents(record.cgroup_parents_made)
            except CgroupError as exc:
                log.warning("pod %s: removing cgroup %s: %s", record.id[:12], record.cgroup_path, exc)
        shutil.rmtree(record.pod_dir, ignore_errors=True)

    def close(self) -> None:
        """At daemon shutdown: drop the default pod parent if no pod is left in it.

        Pods without a cgroup_parent live under /crio-fast. It stays while the daemon runs, even
        empty: making it again in ten v1 hierarchies cost the next lone pod's RunPodSandbox about
        0.9 ms. Other daemons on the node may share it; rmdir of a cgroup that still has children
        fails, and a concurrent pod start makes it again.
        """
        self.cgroups.release_default_parent()
        self._beside.shutdown(wait=True)

    # -- List --------------------------------------------------------------

    def list(self, id_prefix: str = "", state: str | None = None,
             label_selector: Mapping[str, str] | None = None) -> list[PodRecord]:
        """The pods that match every filter given (ID prefix, state, labels)."""
        out = []
        for record in self.state.pods.values():
            if id_prefix and not record.id.startswith(id_prefix):
                continue
            if state is not None and record.state != state:
                continue
            if label_selector and not labels_match(decode_pod_config(record.config).labels, label_selector):
                continue
            out.append(record)
        return out

    # -- recovery ------------------------------------------------------------

    def monitor_exited(self, record: PodRecord) -> None:
        """A ready pod's monitor is gone (killed): the pod is not ready any more. The monitor's
        zombie, and its pod init's, are this subreaper's to reap."""
        with self._lock:
            mon = self._monitors.pop(record.id, None)
        if mon is not None:
            mon.close()
        reap_adopted(record.monitor_pid)
        if record.namespaces.get("pid") == "new":
            reap_dead_pod_inits()
        # Reaped: from now on its pid may be another process's, which the pod's stop must not reap.
        record.state, record.monitor_pid = POD_NOTREADY, 0
        self.state.pods.save(record)

    def recover(self) -> None:
        """After a restart: pods whose monitor died are not ready any more."""
        for record in self.state.pods.values():
            if record.state != POD_READY:
                continue
            try:
                self.monitor(record)
            except FailedPrecondition as exc:
                log.warning("%s; marking it not ready", exc)
                record.state = POD_NOTREADY
                self.state.pods.save(record)
