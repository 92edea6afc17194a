"""OCI runtime-spec bundles for containers of external runtimes (runc, crun).

The same resolved LaunchPlan that the native launcher carries out is
translated into an OCI ``config.json`` here, so both handlers run a
container the same way:

- root: the overlay of the image's layers is mounted by the daemon on the
  host at ``<bundle>/rootfs`` (runc and crun expect a ready rootfs) and
  unmounted when the container is removed;
- mounts: the plan's mount operations, translated (devices become
  ``linux.devices``, masked and read-only paths become ``maskedPaths`` and
  ``readonlyPaths``, the cgroup tmpfs and its binds one ``cgroup`` mount);
- namespaces: network, IPC and UTS joined by path (the pod's pinned nsfs
  files), mount and pid new, cgroup new where the plan has one (v2);
- cgroups: ``cgroupsPath`` is the container cgroup the daemon created and
  wrote the limits to. The spec carries no limits of its own
  (``linux.resources`` has only device rules): runc and crun write only the
  values a spec sets, so the daemon stays the one place that writes limits
  (at creation and in UpdateContainerResources), as for native containers;
- seccomp: the JSON profile itself (the plan's compiled BPF program cannot be
  expressed in OCI JSON), chosen with the same rules as for native containers;
- AppArmor: ``process.apparmorProfile`` is the plan's profile (none: the key is
  left out, and the runtime leaves the process unconfined);
- sysctls: IPC ones in ``linux.sysctl``; network ones are written into the
  pod's network namespace by the daemon before the runtime runs
  (``apply_network_sysctls``). The pod monitor, which runs ``runc create``,
  lives in the pod's network namespace, so runc takes the pod's namespace for
  the host's one and refuses every ``net.*`` sysctl of the spec.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import dataclasses
import errno
import functools
import json
import logging
import os
import resource
import secrets
import selectors
import signal
import subprocess
import threading
import time
from pathlib import Path
from typing import Any, Mapping, Sequence

from crio_fast.config.schema import RuntimeHandler
from crio_fast.container import security
from crio_fast import sysctls as sysctl_names
from crio_fast.errors import FailedPrecondition, cut
from crio_fast.runtime import mounts
from crio_fast.runtime import wire
from crio_fast.runtime.call_end import CallEnd
from crio_fast.runtime.capture import CappedOutput
from crio_fast.runtime.exec_helper import DEFAULT_OUTPUT_LIMIT, ExecResult
from crio_fast.runtime.monitor import OciRuntimeCall
from crio_fast.sandbox.userns import PodUserNamespace
from crio_fast.runtime.plan import (
    CAPABILITIES,
    DEFAULT_DEVICES,
    MS_NOATIME,
    MS_NODEV,
    MS_NODIRATIME,
    MS_NOEXEC,
    MS_NOSUID,
    MS_PRIVATE,
    MS_RDONLY,
    MS_REC,
    MS_RELATIME,
    MS_SHARED,
    MS_SLAVE,
    MS_STRICTATIME,
    MS_UNBINDABLE,
    LaunchPlan,
    MountKind,
    MountOp,
    Overlay,
)

log = logging.getLogger("crio_fast.container.oci")

OCI_VERSION = "1.0.2"
CONFIG_NAME = "config.json"
CGROUP_ROOT = "/sys/fs/cgroup"

_FLAG_OPTIONS = (
    (MS_RDONLY, "ro"), (MS_NOSUID, "nosuid"), (MS_NODEV, "nodev"), (MS_NOEXEC, "noexec"),
    (MS_NOATIME, "noatime"), (MS_NODIRATIME, "nodiratime"), (MS_RELATIME, "relatime"),
    (MS_STRICTATIME, "strictatime"),
)
_PROPAGATION_OPTIONS = {MS_PRIVATE: "private", MS_SLAVE: "slave", MS_SHARED: "shared", MS_UNBINDABLE: "unbindable"}
_CAPABILITY_NAMES = {number: name for name, number in CAPABILITIES.items()}
# The OCI names; Python's resource module also has aliases (RLIMIT_OFILE) that runtimes do not know.
_RLIMIT_NAMES = {getattr(resource, name): name for name in (
    "RLIMIT_CPU", "RLIMIT_FSIZE", "RLIMIT_DATA", "RLIMIT_STACK", "RLIMIT_CORE", "RLIMIT_RSS", "RLIMIT_NPROC",
    "RLIMIT_NOFILE", "RLIMIT_MEMLOCK", "RLIMIT_AS", "RLIMIT_LOCKS", "RLIMIT_SIGPENDING", "RLIMIT_MSGQUEUE",
    "RLIMIT_NICE", "RLIMIT_RTPRIO", "RLIMIT_RTTIME") if hasattr(resource, name)}
_NAMESPACE_TYPES = {"mnt": "mount", "pid": "pid", "cgroup": "cgroup", "net": "network", "ipc": "ipc", "uts": "uts",
                    "user": "user"}
_DEFAULT_DEVICE_PATHS = {f"/dev/{name}" for name, _, _ in DEFAULT_DEVICES}
_SECCOMP_KEYS = ("defaultAction", "defaultErrnoRet", "architectures", "flags", "syscalls")


# crun, under systemd, runs the container in a cgroup "container" below its scope by default; the
# container's cgroup is the scope itself for the daemon (exec joins it, limits and stats are read
# there), as for runc and the native runtime. Other runtimes ignore the annotation.
RUNTIME_ANNOTATIONS = {"run.oci.systemd.subgroup": ""}


def _capability_names(mask: int) -> list[str]:
    return [_CAPABILITY_NAMES[bit] for bit in sorted(_CAPABILITY_NAMES) if mask >> bit & 1]


def _mount_options(op: MountOp) -> list[str]:
    options = [name for flag, name in _FLAG_OPTIONS if op.flags & flag]
    if op.data:
        options += [part for part in op.data.split(",") if part]
    return options


# Flags of a mount that a user namespace may not clear (the kernel locks them): a read-only remount of a
# bind from such a mount must repeat them, and runc before 1.2 does not look them up itself.
_LOCKED_FLAGS = ((os.ST_NOSUID, MS_NOSUID), (os.ST_NODEV, MS_NODEV), (os.ST_NOEXEC, MS_NOEXEC))


def _source_locked_flags(source: str) -> int:
    try:
        flags = os.statvfs(source).f_flag
    except OSError:
        return 0  # the runtime reports a missing source itself
    return sum(ms for st, ms in _LOCKED_FLAGS if flags & st)


def _bind_mount(op: MountOp) -> dict[str, Any]:
    if op.flags & MS_RDONLY:
        # A bind has its source mount's flags already: saying them keeps them through the remount.
        op = dataclasses.replace(op, flags=op.flags | _source_locked_flags(op.source))
    options = ["rbind" if op.flags & MS_REC else "bind", *_mount_options(op)]
    if op.flags & wire.MOUNT_FLAG_RECURSIVE_ATTRIBUTES:
        options.append("rro")  # runc >= 1.1, crun >= 1.9: mount_setattr(AT_RECURSIVE)
    if op.propagation:
        name = _PROPAGATION_OPTIONS.get(op.propagation)
        if name is None:
            raise ValueError(f"bind {op.destination}: unknown propagation {op.propagation:#x}")
        options.append(("r" if op.flags & MS_REC else "") + name)
    return {"destination": op.destination, "type": "bind", "source": op.source, "options": options}


def translate_mounts(ops: Sequence[MountOp], privileged: bool) -> tuple[list[dict], list[dict], list[str], list[str]]:
    """(mounts, devices, maskedPaths, readonlyPaths) for a plan's mount operations, in their order."""
    mounts: list[dict] = []
    devices: list[dict] = []
    masked: list[str] = []
    readonly: list[str] = []
    for op in ops:
        dest = op.destination
        if op.kind == MountKind.MOUNT:
            if dest == CGROUP_ROOT:
                # runc and crun mount the container's own cgroups there (v1: a tmpfs with one bind per
                # hierarchy, v2: cgroup2), read-only unless privileged.
                options = ["nosuid", "noexec", "nodev", "relatime"] + ([] if privileged else ["ro"])
                mounts.append({"destination": dest, "type": "cgroup", "source": "cgroup", "options": options})
                continue
            mounts.append({"destination": dest, "type": op.fstype, "source": op.source or op.fstype,
                           "options": _mount_options(op)})
        elif op.kind == MountKind.BIND:
            if dest.startswith(CGROUP_ROOT + "/"):
                continue  # part of the cgroup mount above
            mounts.append(_bind_mount(op))
        elif op.kind == MountKind.MKNOD:
            if dest in _DEFAULT_DEVICE_PATHS:
                continue  # every OCI runtime creates the default devices itself
            kind = "b" if (op.mode & 0o170000) == 0o060000 else "c"
            devices.append({"path": dest, "type": kind, "major": op.major, "minor": op.minor,
                            "fileMode": op.mode & 0o7777, "uid": op.uid, "gid": op.gid})
        elif op.kind == MountKind.MASK:
            masked.append(dest)
        elif op.kind == MountKind.READONLY:
            if dest != CGROUP_ROOT:
                readonly.append(dest)
        # SYMLINK and MKDIR: the runtime makes /dev's symlinks and every mount point itself.
    return mounts, devices, masked, readonly


def _device_rule(rule: str) -> dict[str, Any]:
    """A devices cgroup v1 rule ("c 1:11 rw", "*" for any number) as an allowing OCI device rule."""
    kind, numbers, access = rule.split()
    major, minor = numbers.split(":")
    entry: dict[str, Any] = {"allow": True, "type": kind, "access": access}
    if major != "*":
        entry["major"] = int(major)
    if minor != "*":
        entry["minor"] = int(minor)
    return entry


def seccomp_profile(choice: str | None) -> dict[str, Any] | None:
    """The profile security.seccomp_choice picked, as config.json's ``linux.seccomp`` (None: unconfined)."""
    profile = security.seccomp_profile_json(choice)
    if profile is None:
        return None
    return {key: profile[key] for key in _SECCOMP_KEYS if key in profile}


def build_spec(
    plan: LaunchPlan,
    *,
    rootfs: str,
    cgroups_path: str,
    pod_namespaces: dict[str, str],
    privileged: bool = False,
    seccomp: dict[str, Any] | None = None,
    device_rules: Sequence[str] | None = None,
    userns: PodUserNamespace | None = None,
    annotations: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """The OCI config.json for ``plan`` (already resolved by the container manager).

    ``pod_namespaces`` maps "net"/"ipc"/"uts" to the pod's pinned nsfs files; a
    type missing there is the host's (hostNetwork and friends). ``device_rules``
    are the devices cgroup rules ("c 1:11 r") of the container's own devices, as
    the daemon writes them for native containers; None allows every device the
    plan creates "rwm". ``userns``: the pod's user namespace, which the plan joins by path; its mappings
    go along (a runtime checks them against the namespace, or needs them to know the container's root).
    ``annotations``: the cgroup driver's, added to the runtime annotations every spec carries.
    """
    caps = plan.capabilities
    mounts, devices, masked, readonly = translate_mounts(plan.mounts, privileged)
    user: dict[str, Any] = {"uid": plan.uid or 0, "gid": plan.gid or 0}
    if plan.additional_gids:
        user["additionalGids"] = list(plan.additional_gids)
    if plan.umask is not None:
        user["umask"] = plan.umask
    process: dict[str, Any] = {
        "terminal": plan.tty,
        "user": user,
        "args": list(plan.argv),
        "env": list(plan.env),
        "cwd": plan.cwd or "/",
        "noNewPrivileges": plan.no_new_privs,
        "rlimits": [{"type": _RLIMIT_NAMES[r.resource], "hard": r.hard, "soft": r.soft} for r in plan.rlimits],
    }
    if caps is not None:
        process["capabilities"] = {
            "bounding": _capability_names(caps.bounding), "effective": _capability_names(caps.effective),
            "permitted": _capability_names(caps.permitted), "inheritable": _capability_names(caps.inheritable),
            "ambient": _capability_names(caps.ambient),
        }
    if plan.oom_score_adj is not None:
        process["oomScoreAdj"] = plan.oom_score_adj
    if plan.apparmor_profile is not None:
        # The plan's, decided by container/apparmor.py; ExecSync's `exec --process` copies it.
        process["apparmorProfile"] = plan.apparmor_profile

    namespaces: list[dict[str, str]] = []
    for ns in plan.namespaces:
        entry = {"type": _NAMESPACE_TYPES[ns.type]}
        if ns.path:
            entry["path"] = ns.path
        namespaces.append(entry)
    for kind in ("net", "ipc", "uts"):
        if kind in pod_namespaces and not any(ns.type == kind for ns in plan.namespaces):
            namespaces.append({"type": _NAMESPACE_TYPES[kind], "path": pod_namespaces[kind]})

    # runc and crun deny every device not listed, then allow their defaults: list what the plan creates.
    cgroup_device_rules: list[dict[str, Any]] = [{"allow": False, "access": "rwm"}]
    if privileged:
        cgroup_device_rules = [{"allow": True, "access": "rwm"}]
    elif device_rules is not None:
        cgroup_device_rules += [_device_rule(rule) for rule in device_rules]
    else:
        cgroup_device_rules += [{"allow": True, "type": d["type"], "major": d["major"], "minor": d["minor"],
                                 "access": "rwm"} for d in devices]
    linux: dict[str, Any] = {
        "namespaces": namespaces,
        "cgroupsPath": cgroups_path,
        "resources": {"devices": cgroup_device_rules},
        "devices": devices,
        "maskedPaths": masked,
        "readonlyPaths": readonly,
        "rootfsPropagation": ("r" if plan.root_propagation & MS_REC else "")
        + _PROPAGATION_OPTIONS[plan.root_propagation & ~MS_REC],
    }
    sysctls = {key: value for key, value in plan.sysctls.items()
               if not ("net" in pod_namespaces and sysctl_names.namespace_of(key) == sysctl_names.NET)}
    if sysctls:
        linux["sysctl"] = sysctls  # the network ones of a joined namespace: apply_network_sysctls
    if seccomp is not None:
        linux["seccomp"] = seccomp
    if userns is not None:
        linux["uidMappings"] = [{"containerID": userns.uids.container_id, "hostID": userns.uids.host_id,
                                 "size": userns.uids.length}]
        linux["gidMappings"] = [{"containerID": userns.gids.container_id, "hostID": userns.gids.host_id,
                                 "size": userns.gids.length}]
    return {
        "ociVersion": OCI_VERSION,
        "process": process,
        "root": {"path": rootfs, "readonly": plan.rootfs_readonly},
        "mounts": mounts,
        "linux": linux,
        "annotations": {**RUNTIME_ANNOTATIONS, **(annotations or {})},
    }


def write_bundle(bundle: Path, spec: dict[str, Any]) -> Path:
    """Write config.json atomically (a runtime must never read half a spec)."""
    path = bundle / CONFIG_NAME
    tmp = bundle / f".{CONFIG_NAME}.tmp"
    tmp.write_text(json.dumps(spec, indent=1))
    os.replace(tmp, path)
    return path


# -- network sysctls of the pod ------------------------------------------------------

_CLONE_NEWNET = 0x40000000


def prepare_bundle(plan: LaunchPlan, bundle: Path, handler: RuntimeHandler, *, cgroups_path: str,
                   pod_namespaces: dict[str, str], privileged: bool, seccomp: str | None,
                   device_rules: list[str],
                   userns: PodUserNamespace | None = None,
                   global_args: Sequence[str] = (),
                   annotations: Mapping[str, str] | None = None) -> tuple[LaunchPlan, OciRuntimeCall]:
    """For a container of an OCI runtime: its rootfs mounted on the host (over ID-mapped layers in a pod with
    a user namespace), its network sysctls written into the pod's namespace, config.json written; the plan
    the monitor runs it with, and the runtime call."""
    rootfs = str(bundle / "rootfs")
    try:
        mount_rootfs(plan.overlay, pod_namespaces.get("user") if userns is not None else None)
    except OSError as exc:
        raise FailedPrecondition(f"container rootfs: {exc}") from exc
    plan = dataclasses.replace(plan, overlay=None, rootfs=rootfs)
    spec = build_spec(plan, rootfs=rootfs, cgroups_path=cgroups_path, pod_namespaces=pod_namespaces,
                      privileged=privileged, seccomp=seccomp_profile(seccomp), device_rules=device_rules,
                      userns=userns, annotations=annotations)
    apply_network_sysctls(plan.sysctls, pod_namespaces)
    write_bundle(bundle, spec)
    os.makedirs(handler.runtime_root, mode=0o700, exist_ok=True)
    # The runtime applies the profile (process.apparmorProfile); the monitor only decodes this plan, and
    # one started by a crio-fast without AppArmor would refuse the field.
    plan = dataclasses.replace(plan, apparmor_profile=None)
    return plan, OciRuntimeCall(runtime_path=handler.runtime_path, root=handler.runtime_root, bundle=str(bundle),
                                hide_cgroup2_mount=handler.hide_cgroup2_mount, global_args=tuple(global_args))


def apply_network_sysctls(sysctls: dict[str, str], pod_namespaces: dict[str, str]) -> None:
    """Write the ``net.*`` sysctls into the pod's network namespace (the one ``build_spec`` leaves out).

    /proc/sys/net shows the network namespace of the task that looks, and setns(2) moves only the calling
    thread: a short-lived thread joins the pod's namespace, writes, and exits, so no daemon thread ever
    runs in the pod's namespace afterwards."""
    netns = pod_namespaces.get("net")
    network = {key: value for key, value in sysctls.items() if sysctl_names.namespace_of(key) == sysctl_names.NET}
    if not netns or not network:
        return
    failure: list[str] = []

    def write_in_pod_namespace() -> None:
        try:
            fd = os.open(netns, os.O_RDONLY | os.O_CLOEXEC)
        except OSError as exc:
            failure.append(f"open {netns}: {exc.strerror}")
            return
        try:
            if _libc.setns(fd, _CLONE_NEWNET) != 0:
                err = ctypes.get_errno()
                failure.append(f"setns {netns}: {os.strerror(err)}")
                return
        finally:
            os.close(fd)
        for key, value in network.items():
            path = "/proc/sys/" + key.replace(".", "/")
            try:
                with open(path, "w") as f:
                    f.write(value)
            except OSError as exc:
                failure.append(f"sysctl {key}={value!r}: write {path}: {exc.strerror}")
                return

    worker = threading.Thread(target=write_in_pod_namespace, name="pod-netns-sysctls")
    worker.start()
    worker.join()
    if failure:
        raise FailedPrecondition(failure[0])


# -- the host-side rootfs mount (container/storage.py detaches it with the bundle) ------------

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
_libc.setns.argtypes = [ctypes.c_int, ctypes.c_int]


def mount_rootfs(overlay: Overlay, userns_path: str | None = None) -> None:
    """Mount the plan's overlay on the host at its target (the bundle's rootfs); with ``userns_path`` (the
    pod's pinned user namespace) its lower layers ID-mapped with it and its upper dir given to its root,
    as the monitor mounts a native container's."""
    if overlay.upper_owner is not None and overlay.upper is not None:
        os.chown(overlay.upper, *overlay.upper_owner)
    if not overlay.idmap:
        mounts.mount_overlay(overlay.lower, overlay.target, upper=overlay.upper, work=overlay.work,
                             options=overlay.options)
        return
    if userns_path is None:
        raise OSError(errno.EINVAL, "ID-mapped layers need the pod's user namespace")
    userns_fd = os.open(userns_path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        mounts.mount_overlay(overlay.lower, overlay.target, upper=overlay.upper, work=overlay.work,
                             options=overlay.options, idmap_userns_fd=userns_fd)
    finally:
        os.close(userns_fd)


# -- ExecSync through the runtime ---------------------------------------------------


def runtime_command(handler: RuntimeHandler, monitor_path: str, *args: str) -> list[str]:
    """``RUNTIME --root ROOT ARGS...`` through ``crio-fast-monitor runtime``: it reaps what the runtime leaves
    behind (the daemon is a subreaper, orphans would become its zombies) and, for hide_cgroup2_mount,
    runs the runtime without the cgroup2 mount, as the pod monitor does."""
    hide = ["--hide-cgroup2-mount"] if handler.hide_cgroup2_mount else []
    return [monitor_path, "runtime", *hide, "--", handler.runtime_path, "--root", handler.runtime_root, *args]


@functools.cache
def mount_options(runtime_path: str) -> frozenset[str]:
    """The mount options an OCI runtime says it knows (``RUNTIME features``: runc >= 1.1, crun >= 1.9);
    empty when it cannot say, so that nothing is advertised that it may not do."""
    try:
        done = subprocess.run([runtime_path, "features"], capture_output=True, timeout=10, check=False)
        return frozenset(json.loads(done.stdout).get("mountOptions") or ()) if done.returncode == 0 else frozenset()
    except (OSError, subprocess.TimeoutExpired, ValueError, AttributeError):
        return frozenset()


def recursive_readonly_supported(handler: RuntimeHandler | None) -> bool:
    """Whether a handler's containers can have recursively read-only mounts: the native runtime's always
    (mount_setattr with AT_RECURSIVE), an OCI runtime's when it lists the "rro" mount option."""
    return handler is None or handler.runtime_type != "oci" or "rro" in mount_options(handler.runtime_path)


def exec_sync(handler: RuntimeHandler, monitor_path: str, bundle: Path, container_id: str, argv: Sequence[str],
              timeout: float | None, *, call: CallEnd | None = None,
              output_limit: int = DEFAULT_OUTPUT_LIMIT) -> ExecResult:
    """Run ``argv`` in the container with ``RUNTIME exec --process``: the container's own process settings
    (user, capabilities, env, cwd, rlimits) with other args. Of stdout and stderr the first ``output_limit``
    bytes each are kept, the rest read and dropped. When ``timeout`` seconds pass (None: never) or ``call``
    ends first, the command and what it started are killed, and TimeoutError or the call's end is raised."""
    spec = json.loads((bundle / CONFIG_NAME).read_text())
    process = dict(spec["process"], args=list(argv), terminal=False)
    token = secrets.token_hex(8)
    process_file = bundle / f"exec-{token}.json"
    pid_file = bundle / f"exec-{token}.pid"
    process_file.write_text(json.dumps(process))
    command = runtime_command(handler, monitor_path, "exec", "--process", str(process_file),
                              "--pid-file", str(pid_file), container_id)
    deadline = call.limit(timeout) if call is not None else (
        None if timeout is None else time.monotonic() + timeout)
    try:
        proc = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        stdout = CappedOutput(proc.stdout.fileno(), output_limit)
        stderr = CappedOutput(proc.stderr.fileno(), output_limit)
        try:
            if not _output_until_exit(proc, (stdout, stderr), deadline, call):
                # Killing the runtime would leave the command running in the container: kill the command.
                _kill_exec_command(proc, pid_file)
                try:
                    proc.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
                if call is not None and call.ended:
                    call.raise_ended(f"exec {cut(' '.join(argv))}")
                raise TimeoutError(f"{cut(argv[0])!r} did not finish within {timeout:g}s")
            return ExecResult(exit_code=proc.returncode, stdout=stdout.take(), stderr=stderr.take(),
                              stdout_dropped=stdout.dropped, stderr_dropped=stderr.dropped)
        finally:
            stdout.close()
            stderr.close()
            proc.stdout.close()  # a background process of the command may still hold the other ends
            proc.stderr.close()
    finally:
        for leftover in (process_file, pid_file):
            try:
                leftover.unlink()
            except FileNotFoundError:
                pass


def _kill_exec_command(runtime: subprocess.Popen, pid_file: Path, patience: float = 5.0) -> None:
    """SIGKILL the command of ``RUNTIME exec``, named by its pid file, and its process group (the runtime
    starts it in a session of its own: what it starts goes too). The runtime writes that file once the
    command runs, which on a slow node can come after a short timeout: wait for it while the runtime lives."""
    deadline = time.monotonic() + patience
    while True:
        try:
            pid = int(pid_file.read_text().strip())
        except (FileNotFoundError, ValueError):  # not written yet, or half written
            if runtime.poll() is not None or time.monotonic() > deadline:
                return
            time.sleep(0.01)
            continue
        for target in (-pid, pid):
            try:
                os.kill(target, signal.SIGKILL)
            except OSError:
                pass  # no such group (not a session of its own), or it ended by itself
        return


def _output_until_exit(proc: subprocess.Popen, outputs: tuple[CappedOutput, ...], deadline: float | None,
                       call: CallEnd | None) -> bool:
    """Read ``outputs`` of ``proc`` up to its exit, as the native ExecSync does; False, with ``proc`` still
    running, once ``deadline`` (time.monotonic(); None: none) has passed or ``call`` has ended.

    Not up to end of file: a command that leaves a background process behind (``sleep 100 &``) leaves it
    holding the pipes, and ExecSync must still return when the command itself is done. What is in the
    pipes when it exits is drained."""
    pidfd = os.pidfd_open(proc.pid)
    try:
        with selectors.DefaultSelector() as selector:
            for output in outputs:
                os.set_blocking(output.fd, False)
                selector.register(output.fd, selectors.EVENT_READ, output)
            selector.register(pidfd, selectors.EVENT_READ)
            if call is not None:
                selector.register(call.fileno(), selectors.EVENT_READ)
            exited = False
            while not exited:
                remaining = None if deadline is None else deadline - time.monotonic()
                if (remaining is not None and remaining <= 0) or (call is not None and call.ended):
                    return False
                for key, _ in selector.select(remaining):
                    if key.fd == pidfd:
                        exited = True
                    elif key.data is not None and not key.data.read_available():
                        selector.unregister(key.fd)
            for output in outputs:  # what the command wrote before it exited
                output.read_available()
    finally:
        os.close(pidfd)
    proc.wait()
    return True


def delete_leftover_state(handler: RuntimeHandler, monitor_path: str, container_id: str) -> None:
    """``RUNTIME delete --force`` for a container whose runtime state is still there (its monitor died)."""
    if not os.path.exists(os.path.join(handler.runtime_root, container_id)):
        return
    command = runtime_command(handler, monitor_path, "delete", "--force", container_id)
    try:
        done = subprocess.run(command, stdin=subprocess.DEVNULL, capture_output=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as exc:
        log.warning("container %s: %s delete: %s", container_id[:12], handler.runtime_path, exc)
        return
    if done.returncode != 0:
        log.warning("container %s: %s delete failed: %s", container_id[:12], handler.runtime_path,
                    done.stderr.decode(errors="replace").strip())
