"""Security decisions for a container: pure functions from the CRI request to plan fields.

Everything here turns a CRI ``LinuxContainerSecurityContext`` (plus the pod's
``LinuxSandboxSecurityContext`` and the runtime config) into values the
launch plan carries: ids, capability sets, the seccomp BPF program, rlimits,
devices. Nothing here touches the container; the C monitor applies
the result. Bad requests raise InvalidArgument, requests this host cannot
honour raise FailedPrecondition, both naming the reason.

Capabilities of non-root users (the CRI-O/runc semantics): the bounding set
is the resolved set (defaults + add - drop). A root process gets it as
effective and permitted. A non-root process has no file capabilities to gain
from, so after exec it would keep nothing; the capabilities the request
*explicitly adds* are therefore also made inheritable and ambient (which
carries them across exec into effective/permitted). Default capabilities are
not granted to non-root users, as with runc when no ambient set is given.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import functools
import json
import os
import platform
import resource
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

from crio_fast.api import api_pb2 as pb
from crio_fast.container.image_files import resolve_user
from crio_fast.errors import FailedPrecondition, InvalidArgument
from crio_fast.runtime.plan import CAPABILITIES, DEFAULT_DEVICES, Capabilities, MountOp, Rlimit

# -- Capabilities ---------------------------------------------------------------

ALL_CAPABILITY_NAMES = tuple(c.removeprefix("CAP_") for c in CAPABILITIES)


def _normalise(names: Iterable[str]) -> list[str]:
    return [n.upper().removeprefix("CAP_") for n in names]


def capability_names(default: Sequence[str], caps: pb.Capability, privileged: bool) -> list[str]:
    """The bounding set: defaults + add - drop; "ALL" in add grants every capability, in drop removes
    every one not explicitly added. Privileged containers get all of them."""
    if privileged:
        return sorted(ALL_CAPABILITY_NAMES)
    adds = _normalise(caps.add_capabilities)
    drops = _normalise(caps.drop_capabilities)
    names = set(_normalise(default))
    names = set(ALL_CAPABILITY_NAMES) if "ALL" in adds else names | set(adds)
    if "ALL" in drops:
        names = set() if "ALL" in adds else set(adds)
    else:
        names -= set(drops)
    unknown = sorted(n for n in names | set(drops) - {"ALL"} if n not in ALL_CAPABILITY_NAMES)
    if unknown:
        raise InvalidArgument(f"unknown capabilities: {', '.join(unknown)}")
    return sorted(names)


def resolve_capabilities(default: Sequence[str], caps: pb.Capability, privileged: bool, uid: int) -> Capabilities:
    """Capability sets for a process running as ``uid`` (see the module docstring for non-root)."""
    bounding_names = capability_names(default, caps, privileged)
    # A capability the runtime itself cannot hold (newer than the kernel, or outside the bounding set
    # the runtime was started with, as in a container) cannot be granted: capset would fail.
    bounding = Capabilities.mask(bounding_names) & grantable_capabilities()
    if uid == 0:
        return Capabilities(bounding=bounding, effective=bounding, permitted=bounding)
    adds = _normalise(caps.add_capabilities)
    added = bounding if "ALL" in adds or privileged else Capabilities.mask(
        n for n in adds if n in bounding_names) & bounding
    return Capabilities(bounding=bounding, effective=added, permitted=added, inheritable=added, ambient=added)


@functools.cache
def grantable_capabilities() -> int:
    """The bounding set of this process: the most any container it starts can get.

    Read once: the daemon never drops from its bounding set, and the set cannot grow."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("CapBnd:"):
                return int(line.split()[1], 16)
    except (OSError, ValueError, IndexError):
        pass
    return (1 << (max(CAPABILITIES.values()) + 1)) - 1


# -- User and groups --------------------------------------------------------------


@dataclass(frozen=True)
class Identity:
    uid: int
    gid: int
    additional_gids: list[int]


def resolve_identity(sc: pb.LinuxContainerSecurityContext, image_user: str, layer_dirs: list[Path]) -> Identity:
    """uid/gid/groups from run_as_user/run_as_username/run_as_group, else the image's User.

    Supplemental groups: the primary gid first, then ``supplemental_groups`` and, with Merge (the
    default), the groups the image's /etc/group lists the user in; Strict adds none of the image's.
    The primary gid is among them as containerd and CRI-O have it: the kubelet and critest read it
    back in ContainerStatus.user, and the process keeps the group should its gid change.
    """
    if sc.HasField("run_as_group") and not sc.HasField("run_as_user") and not sc.run_as_username:
        # A group alone would combine with whatever user the image names; CRI-O refuses it too.
        raise InvalidArgument("run_as_group is set without run_as_user or run_as_username")
    if sc.HasField("run_as_user"):
        spec = str(sc.run_as_user.value)
    elif sc.run_as_username:
        spec = sc.run_as_username
    else:
        spec = image_user or "0"
    uid, gid, image_groups, _ = resolve_user(spec, layer_dirs)
    if sc.HasField("run_as_group"):
        gid = sc.run_as_group.value
    groups = set(sc.supplemental_groups)
    if sc.supplemental_groups_policy != pb.SupplementalGroupsPolicy.Strict:
        groups |= set(image_groups)
    groups.discard(gid)
    return Identity(uid=uid, gid=gid, additional_gids=[gid, *sorted(groups)])


# -- MAC: SELinux (AppArmor: crio_fast.container.apparmor) -------------------------------


def check_mac(sc: pb.LinuxContainerSecurityContext, selinux_enabled: bool | None = None) -> None:
    """Refuse SELinux options this host cannot apply instead of silently running unlabelled.

    AppArmor is decided (and applied) by crio_fast.container.apparmor.
    """
    if selinux_enabled is None:
        selinux_enabled = _selinux_enabled()
    opts = sc.selinux_options
    if any((opts.user, opts.role, opts.type, opts.level)) and not selinux_enabled:
        raise FailedPrecondition(
            f"selinux_options {opts.user}:{opts.role}:{opts.type}:{opts.level} requested "
            "but SELinux is not enabled on this host")


# Whether a MAC system is on is fixed at boot: probed once per daemon.
@functools.cache
def _selinux_enabled() -> bool:
    return os.path.exists("/sys/fs/selinux/enforce")


# -- Rlimits --------------------------------------------------------------------------

_RLIMIT_BY_NAME = {
    "as": "RLIMIT_AS", "core": "RLIMIT_CORE", "cpu": "RLIMIT_CPU", "data": "RLIMIT_DATA", "fsize": "RLIMIT_FSIZE",
    "locks": "RLIMIT_LOCKS", "memlock": "RLIMIT_MEMLOCK", "msgqueue": "RLIMIT_MSGQUEUE", "nice": "RLIMIT_NICE",
    "nofile": "RLIMIT_NOFILE", "nproc": "RLIMIT_NPROC", "rss": "RLIMIT_RSS", "rtprio": "RLIMIT_RTPRIO",
    "rttime": "RLIMIT_RTTIME", "sigpending": "RLIMIT_SIGPENDING", "stack": "RLIMIT_STACK",
}


def parse_ulimits(entries: Sequence[str]) -> list[Rlimit]:
    """Config ``default_ulimits`` ("nofile=1024:2048", -1 unlimited) as plan rlimits."""
    limits = []
    for entry in entries:
        name, _, values = entry.partition("=")
        soft_text, _, hard_text = values.partition(":")
        soft = int(soft_text)
        hard = int(hard_text) if hard_text else soft
        limits.append(Rlimit(
            getattr(resource, _RLIMIT_BY_NAME[name]),
            resource.RLIM_INFINITY if soft < 0 else soft,
            resource.RLIM_INFINITY if hard < 0 else hard,
        ))
    return limits


# -- Devices ----------------------------------------------------------------------------

# What the device cgroup lets every unprivileged container use: the standard
# /dev nodes, the pty multiplexer and its slaves, and mknod of anything (only
# creating a node, not opening it, as runc allows).
DEFAULT_DEVICE_RULES = (
    "c *:* m", "b *:* m", "c 1:3 rwm", "c 1:5 rwm", "c 1:7 rwm", "c 1:8 rwm", "c 1:9 rwm", "c 5:0 rwm",
    "c 5:1 rwm", "c 5:2 rwm", "c 136:* rwm", "c 10:200 rwm",
)
# Host /dev subtrees a privileged container does not copy: the container has its own.
_PRIVILEGED_SKIP = {"pts", "shm", "mqueue", "fd", "stdin", "stdout", "stderr", "ptmx", "console", "core"}


@dataclass(frozen=True)
class DeviceNode:
    container_path: str
    host_path: str
    kind: str  # "c" or "b"
    major: int
    minor: int
    mode: int
    permissions: str

    def mount_op(self) -> MountOp:
        op = MountOp.char_device(self.container_path, self.major, self.minor, mode=self.mode,
                                 host_path=self.host_path)
        if self.kind == "b":
            op = MountOp(op.kind, op.destination, source=op.source, mode=stat.S_IFBLK | self.mode,
                         major=self.major, minor=self.minor)
        return op

    def cgroup_rule(self) -> str:
        return f"{self.kind} {self.major}:{self.minor} {self.permissions}"


def _device_node(host_path: str, container_path: str, permissions: str) -> DeviceNode:
    try:
        st = os.stat(host_path)
    except OSError as exc:
        raise InvalidArgument(f"device {host_path!r}: {os.strerror(exc.errno or 0)}") from exc
    if stat.S_ISCHR(st.st_mode):
        kind = "c"
    elif stat.S_ISBLK(st.st_mode):
        kind = "b"
    else:
        raise InvalidArgument(f"device {host_path!r} is not a character or block device")
    return DeviceNode(container_path, host_path, kind, os.major(st.st_rdev), os.minor(st.st_rdev),
                      stat.S_IMODE(st.st_mode), permissions)


def requested_devices(devices: Sequence[pb.Device]) -> list[DeviceNode]:
    nodes = []
    for d in devices:
        permissions = d.permissions or "rwm"
        if not set(permissions) <= set("rwm"):
            raise InvalidArgument(f"device {d.host_path!r}: permissions {permissions!r} must be made of r, w, m")
        if not os.path.isabs(d.container_path or ""):
            raise InvalidArgument(f"device {d.host_path!r}: container_path {d.container_path!r} must be absolute")
        nodes.append(_device_node(d.host_path, d.container_path, permissions))
    return nodes


def host_devices(dev_dir: str = "/dev", skip: Iterable[str] = ()) -> list[DeviceNode]:
    """Every character and block device under the host's /dev (for privileged containers), except
    the standard ones every container already gets."""
    skipped = set(skip) | {name for name, _, _ in DEFAULT_DEVICES}
    nodes = []
    for root, dirs, files in os.walk(dev_dir):
        rel_root = os.path.relpath(root, dev_dir)
        if rel_root == ".":
            dirs[:] = [d for d in dirs if d not in _PRIVILEGED_SKIP]
        for name in files:
            rel = name if rel_root == "." else f"{rel_root}/{name}"
            if rel in _PRIVILEGED_SKIP or rel in skipped:
                continue
            path = os.path.join(root, name)
            try:
                st = os.lstat(path)
            except OSError:
                continue  # vanished while walking
            if stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode):
                nodes.append(_device_node(path, f"/dev/{rel}", "rwm"))
    return nodes


def device_mount_ops(devices: Sequence[DeviceNode]) -> list[MountOp]:
    """MKNOD ops for the devices, preceded by the directories they live in (/dev is a fresh tmpfs)."""
    ops: list[MountOp] = []
    made = {"/", "/dev"}
    for device in devices:
        parents = []
        parent = os.path.dirname(device.container_path)
        while parent not in made:
            parents.append(parent)
            made.add(parent)
            parent = os.path.dirname(parent)
        ops += [MountOp.mkdir(d) for d in reversed(parents)]
        ops.append(device.mount_op())
    return ops


def write_device_rules(devices_dir: str, extra_rules: Sequence[str]) -> None:
    """Restrict a v1 devices cgroup to the default set plus ``extra_rules`` (deny all, then allow).

    The kernel takes one rule per write(2); the allow file is opened once for all of them (this runs on
    every CreateContainer)."""
    def write_rules(name: str, rules: Sequence[str]) -> None:
        path = os.path.join(devices_dir, name)
        rule = ""
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
            try:
                for rule in rules:
                    os.write(fd, rule.encode())
            finally:
                os.close(fd)
        except OSError as exc:
            raise FailedPrecondition(f"writing {rule!r} to {path}: {os.strerror(exc.errno or 0)}") from exc

    write_rules("devices.deny", ["a"])
    write_rules("devices.allow", [*DEFAULT_DEVICE_RULES, *extra_rules])


# -- Seccomp ------------------------------------------------------------------------------

# Syscalls an unprivileged container may not make under RuntimeDefault: they
# create or enter namespaces, mount, reach the kernel keyring, load BPF or
# modules, trace other processes, reboot or replace the kernel, change the
# clock or swap, or poke at hardware. They fail with EPERM (what the
# runtimes' default profiles return, and what programs are written to expect).
RUNTIME_DEFAULT_BLOCKED = (
    "acct", "add_key", "bpf", "clock_adjtime", "clock_settime", "create_module", "delete_module",
    "finit_module", "fsconfig", "fsmount", "fsopen", "fspick", "get_kernel_syms", "init_module",
    "ioperm", "iopl", "kcmp", "kexec_file_load", "kexec_load", "keyctl", "lookup_dcookie", "mount",
    "mount_setattr", "move_mount", "name_to_handle_at", "nfsservctl", "open_by_handle_at",
    "open_tree", "perf_event_open", "pivot_root", "process_vm_readv", "process_vm_writev",
    "ptrace", "query_module", "quotactl", "reboot", "request_key", "setns", "settimeofday",
    "stime", "swapoff", "swapon", "sysfs", "_sysctl", "umount", "umount2", "unshare", "uselib", "userfaultfd",
    "ustat", "vm86", "vm86old",
)
# clone with any namespace flag is refused by argument: CLONE_NEWNS, NEWCGROUP, NEWUTS, NEWIPC, NEWUSER, NEWPID,
# NEWNET. clone3 passes its flags in memory a filter cannot read, so it fails with ENOSYS: libc then falls
# back to clone, which the filter can check (EPERM would be reported to the caller instead).
_CLONE_NAMESPACE_FLAGS = (0x00020000, 0x02000000, 0x04000000, 0x08000000, 0x10000000, 0x20000000, 0x40000000)

_SCMP_ACT_KILL_PROCESS = 0x80000000
_SCMP_ACT_KILL_THREAD = 0x00000000
_SCMP_ACT_TRAP = 0x00030000
_SCMP_ACT_ERRNO = 0x00050000
_SCMP_ACT_TRACE = 0x7FF00000
_SCMP_ACT_LOG = 0x7FFC0000
_SCMP_ACT_ALLOW = 0x7FFF0000
_SCMP_FLTATR_CTL_NNP = 3  # do not let libseccomp set no_new_privs itself: the plan decides
# 2: the syscall numbers in a binary tree instead of a list. The kernel's cost of installing a filter
# grows with how far its syscalls are from the top (it runs the filter for every syscall to cache the
# ones always allowed): the built-in profile went from 470 to 245 us, on every container's start-up.
_SCMP_FLTATR_CTL_OPTIMIZE = 8
_SCMP_CMP = {"SCMP_CMP_NE": 1, "SCMP_CMP_LT": 2, "SCMP_CMP_LE": 3, "SCMP_CMP_EQ": 4, "SCMP_CMP_GE": 5,
             "SCMP_CMP_GT": 6, "SCMP_CMP_MASKED_EQ": 7}
# OCI/docker profile architecture names -> libseccomp's names (for seccomp_arch_resolve_name).
_OCI_ARCH = {"SCMP_ARCH_X86_64": "x86_64", "SCMP_ARCH_X86": "x86", "SCMP_ARCH_X32": "x32",
             "SCMP_ARCH_AARCH64": "aarch64", "SCMP_ARCH_ARM": "arm"}
_NATIVE_ARCH_NAME = {"x86_64": "x86_64", "aarch64": "aarch64", "arm64": "aarch64"}


class _ArgCmp(ctypes.Structure):
    _fields_ = [("arg", ctypes.c_uint), ("op", ctypes.c_int), ("datum_a", ctypes.c_uint64),
                ("datum_b", ctypes.c_uint64)]


_libseccomp: Any = None


def _lib() -> Any:
    """libseccomp through ctypes: it emits the arch check and per-arch syscall numbers for us."""
    global _libseccomp
    if _libseccomp is None:
        name = ctypes.util.find_library("seccomp") or "libseccomp.so.2"
        lib = ctypes.CDLL(name, use_errno=True)
        lib.seccomp_init.restype = ctypes.c_void_p
        lib.seccomp_init.argtypes = [ctypes.c_uint32]
        lib.seccomp_release.argtypes = [ctypes.c_void_p]
        lib.seccomp_attr_set.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_uint32]
        lib.seccomp_syscall_resolve_name.argtypes = [ctypes.c_char_p]
        lib.seccomp_arch_resolve_name.argtypes = [ctypes.c_char_p]
        lib.seccomp_arch_resolve_name.restype = ctypes.c_uint32
        lib.seccomp_arch_add.argtypes = [ctypes.c_void_p, ctypes.c_uint32]
        lib.seccomp_arch_native.restype = ctypes.c_uint32
        lib.seccomp_rule_add_array.argtypes = [ctypes.c_void_p, ctypes.c_uint32, ctypes.c_int, ctypes.c_uint,
                                               ctypes.POINTER(_ArgCmp)]
        lib.seccomp_export_bpf.argtypes = [ctypes.c_void_p, ctypes.c_int]
        _libseccomp = lib
    return _libseccomp


def _action(name: str, errno_ret: int | None) -> int:
    if name == "SCMP_ACT_ERRNO":
        return _SCMP_ACT_ERRNO | ((errno.EPERM if errno_ret is None else errno_ret) & 0xFFFF)
    actions = {"SCMP_ACT_ALLOW": _SCMP_ACT_ALLOW, "SCMP_ACT_KILL": _SCMP_ACT_KILL_THREAD,
               "SCMP_ACT_KILL_THREAD": _SCMP_ACT_KILL_THREAD, "SCMP_ACT_KILL_PROCESS": _SCMP_ACT_KILL_PROCESS,
               "SCMP_ACT_TRAP": _SCMP_ACT_TRAP, "SCMP_ACT_LOG": _SCMP_ACT_LOG,
               "SCMP_ACT_TRACE": _SCMP_ACT_TRACE | ((errno_ret or 0) & 0xFFFF)}
    if name not in actions:
        raise InvalidArgument(f"seccomp profile: unknown action {name!r}")
    return actions[name]


def compile_profile(profile: dict[str, Any], tree: bool = True) -> bytes:
    """Compile an OCI/docker-format seccomp profile to a BPF program (struct sock_filter array).

    The filter checks the architecture first (libseccomp does: a syscall from
    an architecture not in the profile gets the default action, never a
    misread number), so a profile may list the x86 and x32 ABIs alongside
    x86_64. Syscall names this kernel's architectures do not know are skipped,
    as the runtimes do, so one profile serves several kernels. ``tree``: the
    syscall numbers as a binary tree (_SCMP_FLTATR_CTL_OPTIMIZE), else a list;
    the decisions are the same.
    """
    lib = _lib()
    if not isinstance(profile, dict) or "defaultAction" not in profile:
        raise InvalidArgument("seccomp profile: missing defaultAction")
    default = _action(profile["defaultAction"], profile.get("defaultErrnoRet"))
    ctx = lib.seccomp_init(default)
    if not ctx:
        raise InvalidArgument(f"seccomp profile: seccomp_init refused default action {profile['defaultAction']}")
    try:
        if lib.seccomp_attr_set(ctx, _SCMP_FLTATR_CTL_NNP, 0) < 0:
            raise InvalidArgument("seccomp: cannot turn off libseccomp's no_new_privs")
        if tree:
            lib.seccomp_attr_set(ctx, _SCMP_FLTATR_CTL_OPTIMIZE, 2)  # refused before libseccomp 2.5: a list then
        native = lib.seccomp_arch_native()
        for arch in profile.get("architectures") or []:
            token = lib.seccomp_arch_resolve_name(_OCI_ARCH.get(arch, arch.removeprefix("SCMP_ARCH_").lower()).encode())
            if token == 0:
                raise InvalidArgument(f"seccomp profile: unknown architecture {arch!r}")
            if token == native:
                continue
            # Errors are ignored on purpose: EEXIST (already in the filter) and an arch that cannot be
            # mixed with the native one (aarch64 listed on an x86_64 host) leave the filter as it is.
            lib.seccomp_arch_add(ctx, token)
        for rule in profile.get("syscalls") or []:
            names = list(rule.get("names") or ([rule["name"]] if rule.get("name") else []))
            action = _action(rule.get("action", ""), rule.get("errnoRet"))
            if action == default:
                continue  # libseccomp refuses rules that repeat the default action
            args = rule.get("args") or []
            array = (_ArgCmp * max(len(args), 1))()
            for i, arg in enumerate(args):
                op = _SCMP_CMP.get(arg.get("op", ""))
                if op is None:
                    raise InvalidArgument(f"seccomp profile: unknown argument operator {arg.get('op')!r}")
                array[i] = _ArgCmp(int(arg["index"]), op, int(arg.get("value", 0)), int(arg.get("valueTwo", 0)))
            for name in names:
                nr = lib.seccomp_syscall_resolve_name(name.encode())
                if nr == -1:  # __NR_SCMP_ERROR: a name no architecture knows
                    continue
                # Other negative numbers are libseccomp's pseudo-syscalls (absent on the native arch but
                # present on another in the filter): it maps them per architecture itself.
                rc = lib.seccomp_rule_add_array(ctx, action, nr, len(args), array)
                # EDOM/EFAULT: the rule cannot be expressed on one of the filter's architectures (e.g. a
                # multiplexed syscall on x86): the runtimes skip such rules too.
                if rc < 0 and rc not in (-errno.EDOM, -errno.EFAULT):
                    raise InvalidArgument(f"seccomp profile: rule for {name!r}: {os.strerror(-rc)}")
        return _export(lib, ctx)
    finally:
        lib.seccomp_release(ctx)


def _export(lib: Any, ctx: int) -> bytes:
    fd = os.memfd_create("seccomp-bpf", os.MFD_CLOEXEC)
    try:
        rc = lib.seccomp_export_bpf(ctx, fd)
        if rc < 0:
            raise InvalidArgument(f"seccomp: exporting the BPF program failed: {os.strerror(-rc)}")
        os.lseek(fd, 0, os.SEEK_SET)
        chunks = []
        while chunk := os.read(fd, 65536):
            chunks.append(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


def runtime_default_profile() -> dict[str, Any]:
    """The built-in RuntimeDefault profile: allow by default; EPERM for the blocked list and for
    clone with a namespace flag; ENOSYS for clone3."""
    machine = _NATIVE_ARCH_NAME.get(platform.machine(), platform.machine())
    arches = ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"] if machine == "x86_64" else ["SCMP_ARCH_AARCH64"]
    # clone's flags are argument 0 on x86_64 and aarch64 (argument 1 only on s390x, not supported here).
    clone_rules = [
        {"names": ["clone"], "action": "SCMP_ACT_ERRNO", "errnoRet": errno.EPERM,
         "args": [{"index": 0, "value": flag, "valueTwo": flag, "op": "SCMP_CMP_MASKED_EQ"}]}
        for flag in _CLONE_NAMESPACE_FLAGS
    ]
    return {
        "defaultAction": "SCMP_ACT_ALLOW",
        "architectures": arches,
        "syscalls": [
            {"names": list(RUNTIME_DEFAULT_BLOCKED), "action": "SCMP_ACT_ERRNO", "errnoRet": errno.EPERM},
            {"names": ["clone3"], "action": "SCMP_ACT_ERRNO", "errnoRet": errno.ENOSYS},
            *clone_rules,
        ],
    }


def requested_seccomp(context: Any) -> pb.SecurityProfile | None:
    """The seccomp profile a container or pod security context asks for, None when it names none.

    The ``seccomp`` message is checked for presence (RuntimeDefault is enum 0,
    so an empty message still means RuntimeDefault); the deprecated
    ``seccomp_profile_path`` ("runtime/default", "unconfined", "localhost/<path>") is the fallback.
    """
    if context.HasField("seccomp"):
        return context.seccomp
    legacy = context.seccomp_profile_path
    if not legacy:
        return None
    if legacy in ("runtime/default", "docker/default"):
        return pb.SecurityProfile(profile_type=pb.SecurityProfile.RuntimeDefault)
    if legacy == "unconfined":
        return pb.SecurityProfile(profile_type=pb.SecurityProfile.Unconfined)
    if legacy.startswith("localhost/"):
        return pb.SecurityProfile(profile_type=pb.SecurityProfile.Localhost,
                                  localhost_ref=legacy.removeprefix("localhost"))
    raise InvalidArgument(f"seccomp_profile_path {legacy!r}: expected runtime/default, unconfined or localhost/<path>")


BUILTIN_SECCOMP = "builtin"  # seccomp_choice: the built-in RuntimeDefault profile


def seccomp_choice(container: pb.SecurityProfile | None, pod: pb.SecurityProfile | None, privileged: bool,
                   default_profile_path: str = "", use_default_when_empty: bool = True) -> str | None:
    """Which seccomp profile a container runs with: None for unconfined, BUILTIN_SECCOMP, or the path of
    a JSON profile. Both launch paths take it from here (the native plan compiles it, an OCI spec embeds it).

    Privileged containers always run unconfined, whatever profile is named
    (as Kubernetes documents it). Otherwise the container's profile wins; when
    it names none, the pod's applies; when neither does, RuntimeDefault, or
    unconfined (the CRI's own default) with ``use_default_when_empty`` off
    (config ``seccomp_use_default_when_empty``, as CRI-O's). RuntimeDefault
    uses ``default_profile_path`` (config ``seccomp_profile``) when set, else
    the built-in profile.
    """
    if privileged:
        return None
    chosen = container if container is not None else pod
    if chosen is None:
        if not use_default_when_empty:
            return None
        chosen = pb.SecurityProfile(profile_type=pb.SecurityProfile.RuntimeDefault)
    if chosen.profile_type == pb.SecurityProfile.Unconfined:
        return None
    if chosen.profile_type == pb.SecurityProfile.Localhost:
        return chosen.localhost_ref
    return default_profile_path or BUILTIN_SECCOMP


def seccomp_profile_json(choice: str | None) -> dict[str, Any] | None:
    """The profile seccomp_choice chose, as JSON (None: unconfined)."""
    if choice is None:
        return None
    return runtime_default_profile() if choice == BUILTIN_SECCOMP else _load_profile(choice)


def seccomp_program(choice: str | None) -> bytes | None:
    """The BPF program of the profile seccomp_choice picked (None: unconfined)."""
    if choice is None:
        return None
    if choice == BUILTIN_SECCOMP:
        return _runtime_default_program()
    return compile_profile(_load_profile(choice))


def seccomp_for(container: pb.SecurityProfile | None, pod: pb.SecurityProfile | None, privileged: bool,
                default_profile_path: str = "", use_default_when_empty: bool = True) -> bytes | None:
    """The BPF program for a container (seccomp_choice decides which), or None for unconfined."""
    return seccomp_program(seccomp_choice(container, pod, privileged, default_profile_path, use_default_when_empty))


@functools.cache
def _runtime_default_program() -> bytes:
    """The built-in profile never changes while the daemon runs: compile it once, not per container
    (about 1 ms each time, on the CreateContainer path)."""
    return compile_profile(runtime_default_profile())


def _load_profile(path: str) -> dict[str, Any]:
    if not path or not os.path.isabs(path):
        raise InvalidArgument(f"seccomp localhost profile {path!r} must be an absolute path")
    try:
        with open(path) as f:
            return json.load(f)
    except OSError as exc:
        raise InvalidArgument(f"seccomp profile {path}: {os.strerror(exc.errno or 0)}") from exc
    except ValueError as exc:
        raise InvalidArgument(f"seccomp profile {path}: not JSON: {exc}") from exc
