"""CreateContainer as a translation: the CRI request, the image, the pod and the node's settings in;
the launch plan's head, its rest and the cgroup step out.

Nothing here changes the node: the lifecycle manager (container/manager.py) runs the cgroup step,
makes the directories and hands the plan to the pod's monitor. Both kinds of runtime handler take
every decision from here: the native runtime runs the plan, an OCI runtime gets it rendered as
config.json (container/oci.py), so a request means the same container on either.
"""

from __future__ import annotations

import dataclasses
import os
import signal
from pathlib import Path
from typing import Any, Mapping, Sequence

from crio_fast.api import api_pb2 as pb
from crio_fast.cgroups import CgroupError, CgroupManager, Resources
from crio_fast.cgroups.manager import CgroupPaths
from crio_fast.cgroups.resources import DEFAULT_CFS_PERIOD_US
from crio_fast.config.schema import RuntimeSection
from crio_fast.container import security
from crio_fast.container.apparmor import AppArmor
from crio_fast.container.image_volumes import BIND_FLAGS as IMAGE_VOLUME_FLAGS, ImageVolume
from crio_fast.errors import FailedPrecondition, InvalidArgument, shown
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
    TTY_GID,
    Capabilities,
    DevOwner,
    ExecPlan,
    LaunchHead,
    LaunchPlan,
    MountOp,
    Namespace,
    Overlay,
    default_linux_mounts,
)
from crio_fast.runtime import wire
from crio_fast.sandbox.sysctls import pod_sysctls
from crio_fast.sandbox.userns import IdRange, PodUserNamespace, pod_user_namespace
from crio_fast.validation import user_namespace_wanted
from crio_fast.state.records import ContainerRecord, PodRecord

# A CRI mount's propagation; binds are recursive, and so is the propagation change applied to them.
PROPAGATION = {
    pb.MountPropagation.PROPAGATION_PRIVATE: MS_PRIVATE,
    pb.MountPropagation.PROPAGATION_HOST_TO_CONTAINER: MS_SLAVE,
    pb.MountPropagation.PROPAGATION_BIDIRECTIONAL: MS_SHARED,
}
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def container_name(meta: pb.ContainerMetadata, pod: pb.PodSandboxMetadata) -> str:
    return f"k8s_{meta.name}_{pod.name}_{pod.namespace}_{pod.uid}_{meta.attempt}"


def root_propagation_for(mounts: Sequence[pb.Mount]) -> int:
    """Propagation of the container's ``/``: rshared when a mount is bidirectional.

    A bind only propagates back to the host while its source, as the new
    mount namespace sees it, is still in the host's peer group; the default
    rslave of ``/`` would turn it into a receiver only. (runc and CRI-O
    switch the rootfs propagation the same way.)
    """
    if any(m.propagation == pb.MountPropagation.PROPAGATION_BIDIRECTIONAL for m in mounts):
        return MS_REC | MS_SHARED
    return MS_REC | MS_SLAVE


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


def resources_from_cri(r: pb.LinuxContainerResources, runtime: RuntimeSection) -> Resources:
    """The cgroup limits of a container: what the request asks, with the node's pids_limit."""
    resources = Resources(
        cpu_period=r.cpu_period, cpu_quota=r.cpu_quota, cpu_shares=r.cpu_shares,
        memory_limit_in_bytes=r.memory_limit_in_bytes, memory_swap_limit_in_bytes=r.memory_swap_limit_in_bytes,
        oom_score_adj=r.oom_score_adj, cpuset_cpus=r.cpuset_cpus, cpuset_mems=r.cpuset_mems,
        hugepage_limits=[(h.page_size, h.limit) for h in r.hugepage_limits], unified=dict(r.unified),
    )
    if runtime.pids_limit > 0:
        resources = dataclasses.replace(resources, pids_limit=runtime.pids_limit)
    return resources


def pod_resources(resources: pb.LinuxContainerResources, overhead: pb.LinuxContainerResources) -> Resources:
    """The pod cgroup's limits for UpdatePodSandboxResources, sized as the kubelet sizes it: the sum of
    its containers' (``resources``) plus the pod's overhead, and no limit where the containers set none."""
    period = resources.cpu_period or overhead.cpu_period or DEFAULT_CFS_PERIOD_US
    quota = 0
    if resources.cpu_quota > 0:
        quota = resources.cpu_quota
        if overhead.cpu_quota > 0:
            # The overhead's CPU time in the containers' period.
            quota += overhead.cpu_quota * period // (overhead.cpu_period or DEFAULT_CFS_PERIOD_US)
    hugepages: dict[str, int] = {h.page_size: h.limit for h in resources.hugepage_limits}
    for h in overhead.hugepage_limits:
        if hugepages.get(h.page_size, 0) > 0:
            hugepages[h.page_size] += h.limit
    return Resources(
        cpu_period=period if quota else 0, cpu_quota=quota,
        cpu_shares=resources.cpu_shares + overhead.cpu_shares if resources.cpu_shares else 0,
        memory_limit_in_bytes=(resources.memory_limit_in_bytes + overhead.memory_limit_in_bytes
                               if resources.memory_limit_in_bytes > 0 else 0),
        cpuset_cpus=resources.cpuset_cpus, cpuset_mems=resources.cpuset_mems,
        hugepage_limits=sorted(hugepages.items()), unified=dict(resources.unified),
    )


@dataclasses.dataclass(frozen=True)
class CgroupStep:
    """How the container's cgroup is made: the limits written at creation, and the device rules, into
    the v1 devices cgroup or as cgroup2's eBPF filter (runc and crun attach their own from config.json)."""

    paths: CgroupPaths
    writes: list[tuple[str, str]]
    v1_devices_dir: str | None  # write v1_device_rules there (v1 devices controller)
    v1_device_rules: list[str]
    v2_device_filter: list[str] | None  # attach a filter allowing these rules (cgroup2)


@dataclasses.dataclass(frozen=True)
class CheckedRequest:
    """What the checks of a CreateContainer request yield."""

    argv: list[str]
    devices: list[security.DeviceNode]
    apparmor_profile: str | None  # None: none (unconfined)
    seccomp: str | None  # security.seccomp_choice: None unconfined, else which profile
    cgroup: CgroupStep


def check_user_namespace(config: pb.ContainerConfig, pod_userns: PodUserNamespace | None) -> None:
    """A container is in its pod's user namespace, or in none of its own: what its request says of user
    namespaces must agree with the pod's, and ID-mapped volumes (a mount's uidMappings and gidMappings) are
    mapped as the pod is, with the pod's user namespace."""
    options = config.linux.security_context.namespace_options
    if options.HasField("userns_options"):
        wants = user_namespace_wanted(options)
        if wants and pod_userns is None:
            raise InvalidArgument("the container asks for a user namespace (mode POD) in a pod that has none")
        if not wants and pod_userns is not None:
            raise InvalidArgument("the container asks for the node's user namespace in a pod that has one of its "
                                  "own: a container is in its pod's user namespace")
        if wants and pod_userns is not None:
            mapped = PodUserNamespace(IdRange.of(options.userns_options.uids[0]),
                                      IdRange.of(options.userns_options.gids[0]))
            if mapped != pod_userns:
                raise InvalidArgument("the container's user namespace mappings differ from its pod's")
    for m in config.mounts:
        if not (m.uidMappings or m.gidMappings):
            continue
        where = f"mount {shown(m.container_path)}"
        if pod_userns is None:
            raise InvalidArgument(f"{where}: ID-mapped mounts (uidMappings, gidMappings) need a pod with a user "
                                  "namespace")
        if m.image.image:
            raise InvalidArgument(f"{where}: an image volume cannot be ID-mapped")
        if (len(m.uidMappings), len(m.gidMappings)) != (1, 1) or \
                (IdRange.of(m.uidMappings[0]), IdRange.of(m.gidMappings[0])) != (pod_userns.uids, pod_userns.gids):
            raise InvalidArgument(f"{where}: uidMappings and gidMappings must be the pod's user namespace "
                                  f"mappings ({pod_userns.uids.line()} and {pod_userns.gids.line()})")


def user_namespace_to_join(pod_userns: PodUserNamespace | None, pod_namespaces: Mapping[str, str], *,
                           supported: bool, external_runtime: bool, mounts: Sequence[pb.Mount]) -> Namespace | None:
    """The pod's user namespace, which the child joins last, or None for a pod without one;
    FailedPrecondition where the pod's runtime cannot give its containers that namespace."""
    if pod_userns is None:
        return None
    path = pod_namespaces.get("user")
    if path is None or not supported:
        raise FailedPrecondition("the pod has a user namespace its runtime cannot give containers")
    if external_runtime and any(m.uidMappings or m.gidMappings for m in mounts):
        raise FailedPrecondition("ID-mapped volumes (uidMappings, gidMappings) need the native runtime handler")
    return Namespace("user", path=path)


def mapped_rootfs(overlay: Overlay, pod_userns: PodUserNamespace | None) -> Overlay:
    """In a user namespace the image's layers are ID-mapped, so its files owned by the node's root show as
    the container's root, who owns the writable layer's root too."""
    if pod_userns is None:
        return overlay
    return dataclasses.replace(overlay, idmap=True, upper_owner=pod_userns.root_owner)


def check_request(config: pb.ContainerConfig, image_config: dict[str, Any], pod_config: pb.PodSandboxConfig, *,
                  runtime: RuntimeSection, cgroups: CgroupManager, cg: CgroupPaths, apparmor: AppArmor,
                  external_runtime: bool, recursive_readonly_supported: bool = True) -> CheckedRequest:
    """The checks of a CreateContainer request, and what they yield: the command, the devices, the
    AppArmor and seccomp profiles, and the cgroup step with its limits and device rules."""
    sc = config.linux.security_context
    entrypoint = list(config.command) or list(image_config.get("Entrypoint") or [])
    cmd = list(config.args) if config.args else ([] if config.command else list(image_config.get("Cmd") or []))
    argv = entrypoint + cmd
    if not argv:
        raise InvalidArgument("no command: neither the container config nor the image gives one")
    for kv in config.envs:
        # CRI carries env values as bytes (they may be binary); NUL cannot be in an environment.
        if b"\0" in kv.value:
            raise InvalidArgument(f"env {shown(kv.key)}: value contains a NUL byte")
    for m in config.mounts:
        if not m.container_path or not os.path.isabs(m.container_path):
            raise InvalidArgument(f"mount container_path {shown(m.container_path)} must be absolute")
        if not m.image.image and not os.path.exists(m.host_path):  # an image volume has none (image_volumes)
            raise InvalidArgument(f"mount host_path {shown(m.host_path)} does not exist")
        if m.recursive_read_only:
            if not (m.readonly or m.image.image):  # an image volume is read-only whatever the request says
                raise InvalidArgument(f"mount {m.container_path}: recursive_read_only needs readonly")
            if m.propagation != pb.MountPropagation.PROPAGATION_PRIVATE:
                raise InvalidArgument(f"mount {m.container_path}: recursive_read_only needs propagation "
                                      "PROPAGATION_PRIVATE (mounts arriving later could not be made read-only)")
            if not recursive_readonly_supported:
                raise FailedPrecondition(f"mount {m.container_path}: this runtime handler cannot make mounts "
                                         "recursively read-only (its RuntimeHandlerFeatures say so)")
    security.check_mac(sc)
    apparmor_profile = apparmor.profile_for(sc)
    seccomp = security.seccomp_choice(
        security.requested_seccomp(sc), security.requested_seccomp(pod_config.linux.security_context),
        sc.privileged, runtime.seccomp_profile, runtime.seccomp_use_default_when_empty)
    devices = security.host_devices() if sc.privileged else security.requested_devices(config.devices)

    try:
        writes = cgroups.limit_writes(cg, resources_from_cri(config.linux.resources, runtime))
    except CgroupError as exc:
        raise InvalidArgument(f"container cgroup: {exc}") from exc
    device_rules = [d.cgroup_rule() for d in devices]
    devices_dir = cg.dirs.get("devices")
    v1_restricted = not sc.privileged and bool(devices_dir) and not cgroups.layout.is_v2("devices")
    # cgroup2 (pure v2, or the unified mount of a hybrid host): an eBPF device filter, attached
    # before the container's init may run.
    v2_restricted = not sc.privileged and not external_runtime and "unified" in cg.dirs
    if not sc.privileged and devices and not (v1_restricted or v2_restricted or external_runtime):
        raise FailedPrecondition("devices in the request need a devices cgroup (v1) or a cgroup2 "
                                 "hierarchy for the eBPF device filter; this host has neither")
    step = CgroupStep(
        paths=cg, writes=writes,
        v1_devices_dir=devices_dir if v1_restricted else None, v1_device_rules=device_rules,
        v2_device_filter=[*security.DEFAULT_DEVICE_RULES, *device_rules] if v2_restricted else None,
    )
    return CheckedRequest(argv=argv, devices=devices, apparmor_profile=apparmor_profile, seccomp=seccomp,
                          cgroup=step)


def launch_head(config: pb.ContainerConfig, pid_namespace: Namespace | None, cg: CgroupPaths, layout_v2: bool,
                host_dirs: Sequence[str] = (), user_namespace: Namespace | None = None,
                report_pid: bool = False) -> LaunchHead:
    """What the monitor needs to clone the container's child: its namespaces, stdio and cgroup.
    ``host_dirs``: directories the child makes (the writable layer's) while the rest is decided.
    ``user_namespace``: the pod's, which the child joins last, right before its credentials."""
    namespaces = [Namespace("mnt")]
    if pid_namespace is not None:
        namespaces.append(pid_namespace)
    if layout_v2:
        namespaces.append(Namespace("cgroup"))
    if user_namespace is not None:
        namespaces.append(user_namespace)
    return LaunchHead(
        namespaces=namespaces,
        cgroup_procs=cg.procs_files,
        oom_counter_path=cg.oom_counter_file,
        root_propagation=root_propagation_for(config.mounts),
        stdin=config.stdin,
        tty=config.tty,
        host_dirs=list(host_dirs),
        report_pid=report_pid,
    )


@dataclasses.dataclass(frozen=True)
class ContainerLaunch:
    """The whole plan and what the container's record keeps of it (for exec, status and stop)."""

    plan: LaunchPlan
    stop_signal: int
    mounts: list[dict[str, Any]]  # the CRI mounts, as ContainerStatus reports them
    process: dict[str, Any]  # how its processes run: exec runs the same way (exec_plan)


def plan_rest(pod: PodRecord, pod_config: pb.PodSandboxConfig, config: pb.ContainerConfig,
              image_config: dict[str, Any], layer_dirs: list[Path], head: LaunchHead, overlay: Overlay,
              checked: CheckedRequest, cg: CgroupPaths, layout_v2: bool, runtime: RuntimeSection,
              image_volumes: Mapping[int, ImageVolume], external_runtime: bool = False) -> ContainerLaunch:
    """The whole plan, from the head on: the rootfs, who the process runs as, with which capabilities and
    seccomp filter, its environment and mounts. ``image_volumes``: the request's image volumes, mounted
    on the host, by their index in its mounts. ``external_runtime``: an OCI runtime sets /dev up inside
    the user namespace itself, where its root already owns what it makes."""
    stop_signal = parse_signal(image_config.get("StopSignal") or "")
    sc = config.linux.security_context
    env: dict[str, str] = {}
    for entry in image_config.get("Env") or []:
        key, _, value = entry.partition("=")
        env[key] = value
    for kv in config.envs:
        env[kv.key] = kv.value.decode("utf-8", "surrogateescape")
    env.setdefault("PATH", DEFAULT_PATH)
    env.setdefault("HOSTNAME", Path(pod.pod_dir, "hostname").read_text().strip())
    env_list = [f"{k}={v}" for k, v in env.items()]

    identity = security.resolve_identity(sc, image_config.get("User") or "", layer_dirs)
    uid, gid, gids = identity.uid, identity.gid, identity.additional_gids
    caps = security.resolve_capabilities(list(runtime.default_capabilities), sc.capabilities, sc.privileged, uid)
    seccomp = security.seccomp_program(checked.seccomp)
    sysctls = pod_sysctls(pod_config, runtime.default_sysctls)

    extra_mounts = [
        MountOp.bind(str(Path(pod.pod_dir, "hostname")), "/etc/hostname", recursive=False),
        MountOp.bind(str(Path(pod.pod_dir, "hosts")), "/etc/hosts", recursive=False),
        MountOp.bind(str(Path(pod.pod_dir, "resolv.conf")), "/etc/resolv.conf", recursive=False),
    ]
    record_mounts = []
    for index, m in enumerate(config.mounts):
        propagation = PROPAGATION.get(m.propagation, MS_PRIVATE)
        if m.image.image:
            volume = image_volumes[index]
            extra_mounts.append(MountOp.bind(volume.source, m.container_path, readonly=True, recursive=False,
                                             flags=IMAGE_VOLUME_FLAGS, propagation=propagation,
                                             recursive_readonly=m.recursive_read_only))
            record_mounts.append({"container_path": m.container_path, "host_path": "", "readonly": True,
                                  "propagation": int(m.propagation), "recursive_read_only": m.recursive_read_only,
                                  "image": volume.image, "image_id": volume.image_id,
                                  "image_sub_path": volume.sub_path})
            continue
        # uidMappings/gidMappings (checked by check_user_namespace to be the pod's): an ID-mapped bind.
        extra_mounts.append(MountOp.bind(m.host_path, m.container_path, readonly=m.readonly,
                                         flags=wire.MOUNT_FLAG_IDMAP if m.uidMappings else 0,
                                         propagation=propagation, recursive_readonly=m.recursive_read_only))
        record_mounts.append({"container_path": m.container_path, "host_path": m.host_path,
                              "readonly": m.readonly, "propagation": int(m.propagation),
                              "recursive_read_only": m.recursive_read_only})
    shm = str(Path(pod.pod_dir, "shm")) if pod.namespaces.get("ipc") == "new" else None
    userns = pod_user_namespace(pod_config)
    dev_owner = None
    if userns is not None and not external_runtime:
        tty_gid = userns.gids.to_host(TTY_GID)
        dev_owner = DevOwner(*userns.root_owner, tty_gid=tty_gid if tty_gid is not None else userns.root_owner[1])
    mounts = default_linux_mounts(
        shm_source=shm,
        cgroup="v2" if layout_v2 else "v1",
        # Made by the cgroup step in every hierarchy; bound in after the child has joined them.
        cgroup_v1_binds=None if layout_v2 else {key.removeprefix("name="): d for key, d in cg.hierarchy_dirs.items()},
        extra=[*security.device_mount_ops(checked.devices), *extra_mounts],
        masked_paths=[] if sc.privileged else list(sc.masked_paths) or DEFAULT_MASKED_PATHS,
        readonly_paths=[] if sc.privileged else list(sc.readonly_paths) or DEFAULT_READONLY_PATHS,
        dev_owner=dev_owner,
    )
    if sc.privileged:
        # Privileged containers get a writable /sys, as with runc.
        mounts = [MountOp.mount("sysfs", "/sys", flags=MS_NOSUID | MS_NOEXEC | MS_NODEV)
                  if op.destination == "/sys" and op.fstype == "sysfs" else op for op in mounts]

    cwd = config.working_dir or image_config.get("WorkingDir") or "/"
    plan = LaunchPlan(
        argv=checked.argv,
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
        rlimits=security.parse_ulimits(runtime.default_ulimits),
        stdin=head.stdin,
        tty=head.tty,
        root_propagation=head.root_propagation,
        apparmor_profile=checked.apparmor_profile,
    )
    process = {
        "env": env_list, "cwd": cwd, "uid": uid, "gid": gid, "gids": gids, "no_new_privs": sc.no_new_privs,
        "caps": [caps.bounding, caps.effective, caps.permitted, caps.inheritable, caps.ambient],
        "cgroup_procs": list(head.cgroup_procs),
        "apparmor_profile": checked.apparmor_profile,
    }
    return ContainerLaunch(plan=plan, stop_signal=stop_signal, mounts=record_mounts, process=process)


def exec_plan(record: ContainerRecord, cmd: list[str], seccomp: bytes | None, runtime: RuntimeSection) -> ExecPlan:
    """How to run ``cmd`` as the container's own process runs: its namespaces, cgroups, credentials,
    capabilities, seccomp filter (``seccomp``, the program its record names), environment and cwd."""
    p = record.process
    bounding, effective, permitted, inheritable, ambient = p["caps"]
    return ExecPlan(
        target_pid=record.pid, argv=list(cmd), env=list(p["env"]), cwd=p["cwd"],
        cgroup_procs=list(p["cgroup_procs"]), uid=p["uid"], gid=p["gid"], additional_gids=list(p["gids"]),
        capabilities=Capabilities(bounding, effective, permitted, inheritable, ambient),
        no_new_privs=p["no_new_privs"],
        seccomp=seccomp,
        rlimits=security.parse_ulimits(runtime.default_ulimits),
        apparmor_profile=p["apparmor_profile"],
    )
