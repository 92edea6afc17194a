"""The engine: the daemon's shared state that the servicers use.

It owns the effective configuration (replaced on a SIGHUP reload), the
readiness checks behind ``Status``, the pod, container and image managers and
the services built on them (stats, streaming, events), and the work that spans
managers: a pod's teardown (its containers first, then the pod), the removal of
an image no container uses, and the events that carry a container's pod status
along.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import subprocess
import time
from typing import Any

from crio_fast import _native
from crio_fast.config import Config, ConfigError
from crio_fast.errors import FailedPrecondition, InvalidArgument
from crio_fast.cgroups import CgroupError, make_cgroup_manager
from crio_fast.container import oci, translate
from crio_fast.container.apparmor import AppArmor
from crio_fast.container.manager import ContainerManager
from crio_fast.crashpoints import crash_point
from crio_fast.image.manager import ImageManager
from crio_fast.image.policy import PolicyError
from crio_fast.image.signatures import SignaturePolicies
from crio_fast.runtime.monitor_watch import MonitorWatch
from crio_fast.network.netns_pool import NetnsPool
from crio_fast.sandbox.manager import SandboxManager
from crio_fast.state.records import POD_READY, ContainerRecord, StateStore
from crio_fast.image.store import ImageStore
from crio_fast.network.config import NoNetworkConfig, find_default_network
from crio_fast.api import api_pb2 as pb
from crio_fast.server import render
from crio_fast.server.events import EventBus
from crio_fast.server.recovery import Recovery
from crio_fast.server.streams import EngineStreamingBackend
from crio_fast.stats.collector import StatsCollector
from crio_fast.stats.service import StatsService
from crio_fast.version import version_string

log = logging.getLogger("crio_fast.engine")

# Keys that take effect on a SIGHUP reload. Everything else (socket paths,
# storage roots, runtimes already in use) needs a restart.
RELOADABLE_KEYS = frozenset(
    {
        "runtime.log_level",
        "runtime.default_capabilities",
        "runtime.default_sysctls",
        "runtime.default_ulimits",
        "runtime.seccomp_use_default_when_empty",
        "runtime.apparmor_profile",
        "runtime.pids_limit",
        "runtime.log_size_max",
        "runtime.ctr_stop_timeout",
        "runtime.exec_sync_output_max",
        "image.registries_conf",
        "image.global_auth_file",
        "image.signature_policy",
        "image.signature_policy_dir",
        "image.registries_d",
        "image.insecure_registries",
        "image.max_parallel_layer_pulls",
        "network.cni_default_network",
        "network.network_dir",
        "network.plugin_dirs",
        "network.plugin_timeout",
    }
)


def _flatten(config: Config) -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for section in ("crio", "api", "runtime", "image", "network", "metrics", "stats"):
        value = getattr(config, section, None)
        if value is None or not dataclasses.is_dataclass(value):
            continue
        for field in dataclasses.fields(value):
            flat[f"{section}.{field.name}"] = getattr(value, field.name)
    return flat


def check_monitor() -> tuple[bool, str]:
    """Run the shipped monitor's self check; (ok, message)."""
    try:
        path = _native.monitor_path()
        result = subprocess.run([str(path), "--check"], capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return False, f"monitor cannot run: {exc}"
    if result.returncode != 0:
        # The self check names what is missing on stdout, one line each.
        said = " ".join((result.stdout + result.stderr).split())
        return False, f"monitor self check failed ({result.returncode}): {said or 'no output'}"
    return True, ""


class Engine:
    def __init__(self, config: Config) -> None:
        self.config = config
        self.version = version_string()
        self.pod_cidr = ""
        self._monitor_ok, self._monitor_message = check_monitor()
        if not self._monitor_ok:
            log.error("%s", self._monitor_message)
        os.makedirs(config.crio.root, mode=0o711, exist_ok=True)
        try:
            signature_policies = SignaturePolicies.load(config.image.signature_policy,
                                                        config.image.signature_policy_dir)
        except PolicyError as exc:
            raise ConfigError(str(exc)) from exc
        self.images = ImageManager(
            ImageStore.open(config.crio.root),
            registries_conf=config.image.registries_conf,
            auth_file=config.image.global_auth_file,
            max_parallel_layers=config.image.max_parallel_layer_pulls,
            signature_policies=signature_policies,
            registries_d=config.image.registries_d,
            insecure_registries=config.image.insecure_registries,
        )
        monitor = config.runtime.monitor_path or str(_native.monitor_path())
        self.cgroups = make_cgroup_manager(config.runtime.cgroup_manager, monitor_cgroup=config.runtime.monitor_cgroup)
        self.state = StateStore(config.crio.root)
        # Started by the daemon once it holds the run root's lock (Daemon.start).
        self.netns_pool = NetnsPool(config.crio.runroot, config.network.netns_pool_size, monitor)
        self.sandboxes = SandboxManager(config, self.state, self.cgroups, monitor, self.netns_pool)
        self.events = EventBus()
        # The runtime default AppArmor profile: loaded by the daemon once it serves (Daemon.start), when
        # AppArmor is on and it is the built-in one; what stands in its way makes RuntimeReady false
        # rather than containers run unconfined.
        self.apparmor = AppArmor(config.runtime.apparmor_profile)
        self.containers = ContainerManager(config, self.state, self.sandboxes, self.images, self.cgroups, monitor,
                                           events=self.publish_container_event, apparmor=self.apparmor)
        self.recovery = Recovery(config, self.state, self.sandboxes, self.containers, self.cgroups)
        # A monitor that dies while the daemon runs makes its pod not ready at once.
        self.monitor_watch = MonitorWatch(self.recovery.monitor_exited)
        self.sandboxes.watch_monitor = self.monitor_watch.watch
        # Pods whose monitor died while the daemon was away (counted by the metrics endpoint, with
        # those that die later: recovery.monitor_gone_listeners).
        self.monitors_found_gone = self.recovery.at_start()
        self.stats = StatsService(self.state, self.sandboxes, self.containers,
                                  StatsCollector(self.cgroups, str(self.containers.files.layers)))
        self.streams = EngineStreamingBackend(self.containers, self.sandboxes, monitor)
        self.stream_server = None  # crio_fast.streaming.server.StreamServer, started by the daemon

    def handler_features(self, name: str) -> dict[str, bool]:
        """What a runtime handler can do of what the kubelet asks about (RuntimeHandlerFeatures)."""
        handler = self.config.runtime.runtimes.get(name)
        return {"recursive_read_only_mounts": oci.recursive_readonly_supported(handler),
                "user_namespaces": self.sandboxes.user_namespace_support(name).supported}

    def runtime_features(self) -> dict[str, bool]:
        """What the runtime as a whole can do of what the kubelet asks about (RuntimeFeatures)."""
        # Strict and Merge hold on every handler: the groups are decided here and carried in the plan.
        # A user-namespaced pod on the node's network is one whose user namespace owns no network
        # namespace: wherever user namespaces work, so does that (the default handler answers).
        default = self.config.runtime.default_runtime
        return {"supplemental_groups_policy": True,
                "user_namespaces_host_network": self.sandboxes.user_namespace_support(default).supported}

    def stop_pod(self, pod_id: str) -> None:
        """StopPodSandbox: the pod's containers, then the pod (its network, its monitor), under its lock."""
        record = self.state.pods.find(pod_id)
        if record is None:
            return  # CRI: stopping what is gone succeeds
        with self.sandboxes.pod_lock(record.id):
            self.containers.stop_all_in_pod(record.id)
            crash_point("stoppod", 1)
            self.sandboxes.stop(record.id)

    def remove_pod(self, pod_id: str) -> None:
        """RemovePodSandbox: stopped first, then its containers and the pod removed."""
        record = self.state.pods.find(pod_id)
        if record is None:
            return
        lock = self.sandboxes.pod_lock(record.id)  # remove drops the pod's lock: hold this one
        with lock:
            self.stop_pod(record.id)
            crash_point("removepod", 1)
            self.containers.remove_all_in_pod(record.id)
            crash_point("removepod", 3)
            self.sandboxes.remove(record.id)

    def update_pod_resources(self, pod_id: str, resources: pb.LinuxContainerResources,
                             overhead: pb.LinuxContainerResources) -> None:
        """UpdatePodSandboxResources (in-place pod resize): the pod cgroup's limits become its containers'
        sum plus the overhead, as the kubelet sizes it; the containers' own cgroups are resized by
        UpdateContainerResources."""
        record = self.sandboxes.get(pod_id)
        limits = translate.pod_resources(resources, overhead)
        with self.sandboxes.pod_lock(record.id):
            record = self.sandboxes.get(record.id)
            if record.state != POD_READY or not record.cgroup_path:
                raise FailedPrecondition(f"pod sandbox {record.id} is not ready: its resources cannot change")
            try:
                self.cgroups.update(self.cgroups.paths(record.cgroup_path), limits)
            except CgroupError as exc:
                raise InvalidArgument(f"updating resources of pod sandbox {record.id}: {exc}") from exc

    async def remove_image(self, name: str) -> None:
        """RemoveImage, refused while a container runs the image or mounts it as an image volume."""
        await self.images.remove(name, lambda record: self.containers.image_claims.unused(record.id, name))

    async def close(self) -> None:
        self.monitor_watch.close()
        self.containers.reports.abandon_pending()
        self.sandboxes.close()
        self.netns_pool.close()
        self.cgroups.close()
        await self.images.close()

    def publish_container_event(self, record: ContainerRecord, event_type: int) -> None:
        """A container lifecycle step, with its pod's status and the statuses of the pod's containers."""
        if not self.events.wanted:
            # Without the kubelet's evented PLEG (or metrics) nobody reads events: building one costs
            # about 0.2 ms on every CreateContainer and StartContainer.
            return
        event = pb.ContainerEventResponse(container_id=record.id, container_event_type=event_type,
                                          created_at=time.time_ns())
        pod = self.state.pods.get(record.pod_id)
        if pod is not None:
            event.pod_sandbox_status.CopyFrom(render.pod_status(pod))
        siblings = [c for c in self.state.containers.values() if c.pod_id == record.pod_id]
        if event_type != pb.ContainerEventType.CONTAINER_DELETED_EVENT and all(c.id != record.id for c in siblings):
            siblings.append(record)
        event.containers_statuses.extend(render.container_status(c) for c in siblings)
        self.events.publish(event)

    # -- readiness -----------------------------------------------------------

    def runtime_condition(self) -> tuple[bool, str, str]:
        if not self._monitor_ok:
            return False, "MonitorUnavailable", self._monitor_message
        for path in (self.config.crio.root, self.config.crio.runroot):
            if not os.access(path, os.W_OK | os.X_OK):
                return False, "StorageUnavailable", f"{path} is not writable"
        if problem := self.apparmor.problem():
            return False, "AppArmorDefaultProfileMissing", (
                f"{problem}; until it is loaded, containers that ask for the runtime default AppArmor profile "
                "(or name none) are refused")
        return True, "", ""

    def network_condition(self) -> tuple[bool, str, str]:
        try:
            find_default_network(self.config.network.network_dir, self.config.network.cni_default_network)
        except NoNetworkConfig as exc:
            return False, "NetworkPluginNotReady", f"Network plugin returns error: {exc}"
        return True, "", ""

    # -- configuration -------------------------------------------------------

    def config_info(self) -> dict[str, Any]:
        return {key: value for key, value in _flatten(self.config).items() if not key.startswith("_")}

    def set_pod_cidr(self, cidr: str) -> None:
        if cidr and cidr != self.pod_cidr:
            log.info("pod CIDR set to %s", cidr)
        self.pod_cidr = cidr

    def _reload_signature_policies(self) -> SignaturePolicies | None:
        """The policy file read again (it may have changed under the same name); None keeps the running
        one when the new one cannot be used."""
        image = self.config.image
        try:
            policies = SignaturePolicies.load(image.signature_policy, image.signature_policy_dir)
        except PolicyError as exc:
            log.error("signature policy not reloaded, keeping the running one: %s", exc)
            return None
        if policies.node is not None:
            log.info("signature policy %s loaded (%s)", policies.node.source, policies.node.digest)
        return policies

    def reload(self, new: Config) -> list[str]:
        """Apply the reloadable part of ``new``; return the changed keys that need a restart."""
        old_flat, new_flat = _flatten(self.config), _flatten(new)
        changed = sorted(k for k in new_flat if old_flat.get(k) != new_flat[k])
        needs_restart = [k for k in changed if k not in RELOADABLE_KEYS]
        applied = [k for k in changed if k in RELOADABLE_KEYS]
        if applied:
            merged = self.config
            for key in applied:
                section, name = key.split(".", 1)
                merged = dataclasses.replace(
                    merged, **{section: dataclasses.replace(getattr(merged, section), **{name: new_flat[key]})}
                )
            self.config = merged
        self.sandboxes.config = self.containers.config = self.config
        self.images.reconfigure(
            registries_conf=self.config.image.registries_conf,
            auth_file=self.config.image.global_auth_file,
            max_parallel_layers=self.config.image.max_parallel_layer_pulls,
            signature_policies=self._reload_signature_policies(),
            registries_d=self.config.image.registries_d,
            insecure_registries=self.config.image.insecure_registries,
        )
        if "runtime.apparmor_profile" in applied:
            self.apparmor.set_default_profile(self.config.runtime.apparmor_profile)
        for key in applied:
            log.info("reloaded %s = %r", key, new_flat[key])
        for key in needs_restart:
            log.warning("%s changed in the configuration; it takes effect after a restart", key)
        return needs_restart
