"""Launch plans: Python's complete decision of how to start a process.

The native launcher (``crio-fast-monitor``) executes a plan without policy of
its own: every namespace, cgroup file, mount, id, capability and seccomp
instruction is decided here. ``LaunchPlan.encode()`` produces the binary form
(TLV fields of runtime/wire.py, see docs/monitor.md) sent in a CREATE request;
``ExecPlan`` is the same format for the exec helper.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from crio_fast.runtime import wire
from crio_fast.runtime.wire import MountKind, TLVWriter

# Namespace types, by the clone(2) flag the kernel uses for them.
NAMESPACE_FLAGS: dict[str, int] = {
    "mnt": 0x00020000,  # CLONE_NEWNS
    "pid": 0x20000000,  # CLONE_NEWPID
    "net": 0x40000000,  # CLONE_NEWNET
    "ipc": 0x08000000,  # CLONE_NEWIPC
    "uts": 0x04000000,  # CLONE_NEWUTS
    "cgroup": 0x02000000,  # CLONE_NEWCGROUP
    "user": 0x10000000,  # CLONE_NEWUSER: only ever joined (the pod's), last, before the credentials
}

# mount(2) flags (linux/mount.h), for MountOp.flags and propagation.
MS_RDONLY = 0x1
MS_NOSUID = 0x2
MS_NODEV = 0x4
MS_NOEXEC = 0x8
MS_NOATIME = 0x400
MS_NODIRATIME = 0x800
MS_REMOUNT = 0x20
MS_BIND = 0x1000
MS_REC = 0x4000
MS_UNBINDABLE = 1 << 17
MS_PRIVATE = 1 << 18
MS_SLAVE = 1 << 19
MS_SHARED = 1 << 20
MS_RELATIME = 1 << 21
MS_STRICTATIME = 1 << 24

S_IFCHR = 0o020000

CAPABILITIES: dict[str, int] = {
    name: number
    for number, name in enumerate(
        [
            "CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_DAC_READ_SEARCH", "CAP_FOWNER", "CAP_FSETID", "CAP_KILL",
            "CAP_SETGID", "CAP_SETUID", "CAP_SETPCAP", "CAP_LINUX_IMMUTABLE", "CAP_NET_BIND_SERVICE",
            "CAP_NET_BROADCAST", "CAP_NET_ADMIN", "CAP_NET_RAW", "CAP_IPC_LOCK", "CAP_IPC_OWNER", "CAP_SYS_MODULE",
            "CAP_SYS_RAWIO", "CAP_SYS_CHROOT", "CAP_SYS_PTRACE", "CAP_SYS_PACCT", "CAP_SYS_ADMIN", "CAP_SYS_BOOT",
            "CAP_SYS_NICE", "CAP_SYS_RESOURCE", "CAP_SYS_TIME", "CAP_SYS_TTY_CONFIG", "CAP_MKNOD", "CAP_LEASE",
            "CAP_AUDIT_WRITE", "CAP_AUDIT_CONTROL", "CAP_SETFCAP", "CAP_MAC_OVERRIDE", "CAP_MAC_ADMIN",
            "CAP_SYSLOG", "CAP_WAKE_ALARM", "CAP_BLOCK_SUSPEND", "CAP_AUDIT_READ", "CAP_PERFMON", "CAP_BPF",
            "CAP_CHECKPOINT_RESTORE",
        ]
    )
}

@dataclass(frozen=True)
class MountOp:
    """One step of the container's mount setup; destinations are inside the rootfs."""

    kind: MountKind
    destination: str
    source: str | None = None
    fstype: str | None = None
    flags: int = 0
    data: str | None = None
    mode: int = 0
    major: int = 0
    minor: int = 0
    uid: int = 0
    gid: int = 0
    propagation: int = 0

    @classmethod
    def mount(cls, fstype: str, destination: str, flags: int = 0, data: str | None = None,
              source: str | None = None) -> "MountOp":
        return cls(MountKind.MOUNT, destination, source=source or fstype, fstype=fstype, flags=flags, data=data)

    @classmethod
    def bind(cls, source: str, destination: str, readonly: bool = False, recursive: bool = True,
             flags: int = 0, propagation: int = MS_PRIVATE, recursive_readonly: bool = False) -> "MountOp":
        """``recursive``: the mounts under ``source`` come along (rbind); their attributes stay as they are
        unless ``recursive_readonly``, which makes every one of them read-only."""
        flags |= (MS_RDONLY if readonly else 0) | (MS_REC if recursive else 0)
        if recursive_readonly:
            flags |= MS_RDONLY | MS_REC | wire.MOUNT_FLAG_RECURSIVE_ATTRIBUTES
        return cls(MountKind.BIND, destination, source=source, flags=flags, propagation=propagation)

    @classmethod
    def char_device(cls, destination: str, major: int, minor: int, mode: int = 0o666,
                    host_path: str | None = None, uid: int = 0, gid: int = 0) -> "MountOp":
        return cls(MountKind.MKNOD, destination, source=host_path, mode=S_IFCHR | mode, major=major, minor=minor,
                   uid=uid, gid=gid)

    @classmethod
    def symlink(cls, target: str, destination: str) -> "MountOp":
        return cls(MountKind.SYMLINK, destination, source=target)

    @classmethod
    def mkdir(cls, destination: str, mode: int = 0o755) -> "MountOp":
        return cls(MountKind.MKDIR, destination, mode=mode)

    @classmethod
    def mask(cls, destination: str) -> "MountOp":
        return cls(MountKind.MASK, destination)

    @classmethod
    def readonly(cls, destination: str, recursive: bool = True) -> "MountOp":
        return cls(MountKind.READONLY, destination, flags=MS_REC if recursive else 0)

    def encode(self) -> TLVWriter:
        w = TLVWriter()
        w.u32(wire.MOUNT_KIND, int(self.kind))
        if self.source is not None:
            w.string(wire.MOUNT_SOURCE, self.source)
        w.string(wire.MOUNT_DESTINATION, self.destination)
        if self.fstype is not None:
            w.string(wire.MOUNT_FSTYPE, self.fstype)
        if self.flags:
            w.u64(wire.MOUNT_FLAGS, self.flags)
        if self.data is not None:
            w.string(wire.MOUNT_DATA, self.data)
        if self.mode:
            w.u32(wire.MOUNT_MODE, self.mode)
        if self.major or self.minor:
            w.u32(wire.MOUNT_MAJOR, self.major)
            w.u32(wire.MOUNT_MINOR, self.minor)
        if self.uid or self.gid:
            w.u32(wire.MOUNT_UID, self.uid)
            w.u32(wire.MOUNT_GID, self.gid)
        if self.propagation:
            w.u32(wire.MOUNT_PROPAGATION, self.propagation)
        return w


@functools.lru_cache(maxsize=128)
def _encoded_mount(op: MountOp) -> bytes:
    # Most of a plan's mount operations (proc, dev, masks, the pod's files) repeat from container to
    # container; encoding them is a third of a plan's encoding time. Small: every plan touches the
    # repeated ones again, so the container's own (its cgroup binds) are the ones that fall out.
    return op.encode().getvalue()


@dataclass(frozen=True)
class Namespace:
    """A namespace of the process: created new (path None) or joined (path of an nsfs file)."""

    type: str
    path: str | None = None

    def __post_init__(self) -> None:
        if self.type not in NAMESPACE_FLAGS:
            raise ValueError(f"unknown namespace type {self.type!r}")


@dataclass(frozen=True)
class Overlay:
    """An overlay rootfs mounted inside the container's own mount namespace.

    `lower` is top-most first, as overlayfs orders it. Without upper/work the
    overlay is read-only.
    """

    lower: Sequence[str]
    target: str
    upper: str | None = None
    work: str | None = None
    options: Sequence[str] = ()
    # A pod with a user namespace: the lower dirs ID-mapped with it (nothing chowned on the shared layers),
    # and the upper dir given to its root, (uid, gid) on the host.
    idmap: bool = False
    upper_owner: tuple[int, int] | None = None


@dataclass(frozen=True)
class Rlimit:
    resource: int  # resource.RLIMIT_*
    soft: int
    hard: int


@dataclass(frozen=True)
class Capabilities:
    """Capability sets as bitmasks (bit n = capability number n)."""

    bounding: int = 0
    effective: int = 0
    permitted: int = 0
    inheritable: int = 0
    ambient: int = 0

    @staticmethod
    def mask(names: Iterable[str]) -> int:
        bits = 0
        for name in names:
            key = name.upper()
            if not key.startswith("CAP_"):
                key = "CAP_" + key
            if key not in CAPABILITIES:
                raise ValueError(f"unknown capability {name!r}")
            bits |= 1 << CAPABILITIES[key]
        return bits

    @classmethod
    def from_names(cls, names: Iterable[str], ambient: bool = False) -> "Capabilities":
        """The usual container form: one list for bounding, effective and permitted."""
        bits = cls.mask(names)
        return cls(bounding=bits, effective=bits, permitted=bits, inheritable=0, ambient=bits if ambient else 0)

    def encode_into(self, w: TLVWriter) -> None:
        w.u64(wire.PLAN_CAP_BOUNDING, self.bounding)
        w.u64(wire.PLAN_CAP_EFFECTIVE, self.effective)
        w.u64(wire.PLAN_CAP_PERMITTED, self.permitted)
        w.u64(wire.PLAN_CAP_INHERITABLE, self.inheritable)
        w.u64(wire.PLAN_CAP_AMBIENT, self.ambient)


def _encode_namespaces_and_cgroups(w: TLVWriter, namespaces: Sequence[Namespace], cgroup_procs: Sequence[str]) -> None:
    for ns in namespaces:
        inner = TLVWriter()
        inner.u32(wire.NS_TYPE, NAMESPACE_FLAGS[ns.type])
        if ns.path is not None:
            inner.string(wire.NS_PATH, ns.path)
        w.nested(wire.PLAN_NAMESPACE, inner)
    for path in cgroup_procs:
        w.string(wire.PLAN_CGROUP_PROCS, path)


def _encode_process(w: TLVWriter, *, argv: Sequence[str], env: Sequence[str], cwd: str | None,
                    uid: int | None, gid: int | None, additional_gids: Sequence[int] | None,
                    capabilities: Capabilities | None, no_new_privs: bool, seccomp: bytes | None,
                    seccomp_flags: int, rlimits: Sequence[Rlimit], umask: int | None,
                    apparmor_profile: str | None) -> None:
    """The process fields shared by launch and exec plans."""
    if not argv:
        raise ValueError("a plan needs a command (argv)")
    if apparmor_profile is not None:
        if not apparmor_profile:
            raise ValueError("an AppArmor profile name cannot be empty (None means no profile)")
        w.string(wire.PLAN_APPARMOR_PROFILE, apparmor_profile)
    for limit in rlimits:
        inner = TLVWriter()
        inner.u32(wire.RLIMIT_RESOURCE, limit.resource)
        inner.u64(wire.RLIMIT_SOFT, limit.soft)
        inner.u64(wire.RLIMIT_HARD, limit.hard)
        w.nested(wire.PLAN_RLIMIT, inner)
    if uid is not None:
        w.u32(wire.PLAN_UID, uid)
    if gid is not None:
        w.u32(wire.PLAN_GID, gid)
    if additional_gids is not None:
        w.u32_array(wire.PLAN_ADDITIONAL_GIDS, additional_gids)
    if capabilities is not None:
        capabilities.encode_into(w)
    if no_new_privs:
        w.boolean(wire.PLAN_NO_NEW_PRIVS, True)
    if seccomp is not None:
        if len(seccomp) == 0 or len(seccomp) % 8:
            raise ValueError("a seccomp program is a non-empty array of 8-byte sock_filter instructions")
        w.raw(wire.PLAN_SECCOMP, seccomp)
        if seccomp_flags:
            w.u32(wire.PLAN_SECCOMP_FLAGS, seccomp_flags)
    if cwd is not None:
        w.string(wire.PLAN_CWD, cwd)
    for entry in env:
        w.string(wire.PLAN_ENV, entry)
    for arg in argv:
        w.string(wire.PLAN_ARGV, arg)
    if umask is not None:
        w.u32(wire.PLAN_UMASK, umask)


@dataclass
class LaunchPlan:
    """Everything the native launcher needs to create a container's init process."""

    argv: list[str]
    env: list[str] = field(default_factory=list)
    cwd: str | None = "/"
    namespaces: list[Namespace] = field(default_factory=lambda: [Namespace("mnt"), Namespace("pid")])
    cgroup_procs: list[str] = field(default_factory=list)
    cgroup_writes: list[tuple[str, str]] = field(default_factory=list)
    oom_counter_path: str | None = None
    rootfs: str | None = None
    overlay: Overlay | None = None
    mounts: list[MountOp] = field(default_factory=list)
    rootfs_readonly: bool = False
    no_pivot: bool = False
    root_propagation: int = MS_REC | MS_SLAVE
    hostname: str | None = None
    sysctls: dict[str, str] = field(default_factory=dict)
    rlimits: list[Rlimit] = field(default_factory=list)
    oom_score_adj: int | None = None
    uid: int | None = 0
    gid: int | None = 0
    additional_gids: list[int] | None = None
    capabilities: Capabilities | None = None
    no_new_privs: bool = False
    seccomp: bytes | None = None
    seccomp_flags: int = 0
    stdin: bool = False
    tty: bool = False
    log_line_max: int | None = None
    umask: int | None = None
    # The AppArmor profile the command is confined by from its execve on; None: none (unconfined).
    # Decided by crio_fast.container.apparmor, never here.
    apparmor_profile: str | None = None

    def head(self) -> "LaunchHead":
        """The plan's head: what the monitor needs before it clones the child."""
        return LaunchHead(namespaces=self.namespaces, cgroup_procs=self.cgroup_procs,
                          oom_counter_path=self.oom_counter_path, root_propagation=self.root_propagation,
                          stdin=self.stdin, tty=self.tty, log_line_max=self.log_line_max)

    def encode(self) -> bytes:
        """The whole plan in one message."""
        return self.head().encode() + self.encode_rootfs() + self.encode_rest()

    def encode_rootfs(self) -> bytes:
        return encode_rootfs(self.rootfs, self.overlay)

    def encode_rest(self) -> bytes:
        """Everything but the head and the rootfs: the last chunk of a plan sent in parts
        (``PodMonitor.begin_create``)."""
        w = TLVWriter()
        for path, value in self.cgroup_writes:
            inner = TLVWriter()
            inner.string(wire.KV_KEY, path)
            inner.string(wire.KV_VALUE, value)
            w.nested(wire.PLAN_CGROUP_WRITE, inner)
        for op in self.mounts:
            w.raw(wire.PLAN_MOUNT, _encoded_mount(op))
        if self.rootfs_readonly:
            w.boolean(wire.PLAN_ROOTFS_READONLY, True)
        if self.no_pivot:
            w.boolean(wire.PLAN_NO_PIVOT, True)
        if self.hostname is not None:
            w.string(wire.PLAN_HOSTNAME, self.hostname)
        for name, value in self.sysctls.items():
            inner = TLVWriter()
            inner.string(wire.KV_KEY, name)
            inner.string(wire.KV_VALUE, value)
            w.nested(wire.PLAN_SYSCTL, inner)
        if self.oom_score_adj is not None:
            w.i32(wire.PLAN_OOM_SCORE_ADJ, self.oom_score_adj)
        _encode_process(
            w, argv=self.argv, env=self.env, cwd=self.cwd, uid=self.uid, gid=self.gid,
            additional_gids=self.additional_gids, capabilities=self.capabilities, no_new_privs=self.no_new_privs,
            seccomp=self.seccomp, seccomp_flags=self.seccomp_flags, rlimits=self.rlimits, umask=self.umask,
            apparmor_profile=self.apparmor_profile,
        )
        return w.getvalue()


def encode_rootfs(rootfs: str | None = None, overlay: Overlay | None = None) -> bytes:
    """The plan's rootfs fields: a ready path, or an overlay to mount. A chunk of its own in a plan
    sent in parts, so that the child mounts it while the rest is decided."""
    if rootfs is not None and overlay is not None:
        raise ValueError("give either a ready rootfs path or an overlay, not both")
    w = TLVWriter()
    if rootfs is not None:
        w.string(wire.PLAN_ROOTFS, rootfs)
    if overlay is not None:
        inner = TLVWriter()
        for lower in overlay.lower:
            inner.string(wire.OVERLAY_LOWER, lower)
        if overlay.upper is not None:
            inner.string(wire.OVERLAY_UPPER, overlay.upper)
        if overlay.work is not None:
            inner.string(wire.OVERLAY_WORK, overlay.work)
        inner.string(wire.OVERLAY_TARGET, overlay.target)
        for option in overlay.options:
            inner.string(wire.OVERLAY_OPTION, option)
        if overlay.idmap:
            inner.boolean(wire.OVERLAY_IDMAP, True)
        if overlay.upper_owner is not None:
            inner.u32(wire.OVERLAY_UPPER_UID, overlay.upper_owner[0])
            inner.u32(wire.OVERLAY_UPPER_GID, overlay.upper_owner[1])
        w.nested(wire.PLAN_OVERLAY, inner)
    return w.getvalue()


@dataclass
class LaunchHead:
    """The head of a launch plan: what the monitor needs to clone the child (its namespaces, stdio,
    cgroups). The daemon sends it as soon as it knows these, and the rest of the plan follows through
    the gate in chunks (the rootfs first, then the mounts and the process) while the monitor clones
    the child and the child joins its namespaces (docs/monitor.md, "A plan in two parts")."""

    namespaces: Sequence[Namespace]
    cgroup_procs: Sequence[str] = ()
    oom_counter_path: str | None = None
    root_propagation: int = MS_REC | MS_SLAVE
    stdin: bool = False
    tty: bool = False
    log_line_max: int | None = None
    # Host directories the child makes (0755, in order) while the rest is on its way: the writable
    # layer, whose creation on the node's disk would otherwise hold the rest back.
    host_dirs: Sequence[str] = ()
    # The child reports its pid through the gate before anything else (a cgroup driver that makes
    # the container's cgroup around its process: systemd's scopes).
    report_pid: bool = False

    def encode(self) -> bytes:
        w = TLVWriter()
        w.u32(wire.PLAN_VERSION, wire.PLAN_FORMAT_VERSION)
        _encode_namespaces_and_cgroups(w, self.namespaces, self.cgroup_procs)
        for path in self.host_dirs:
            w.string(wire.PLAN_HOST_DIR, path)
        if self.oom_counter_path:
            w.string(wire.PLAN_OOM_COUNTER, self.oom_counter_path)
        w.u32(wire.PLAN_ROOT_PROPAGATION, self.root_propagation)
        if self.stdin:
            w.boolean(wire.PLAN_STDIN, True)
        if self.tty:
            w.boolean(wire.PLAN_TTY, True)
        if self.log_line_max is not None:
            w.u32(wire.PLAN_LOG_LINE_MAX, self.log_line_max)
        if self.report_pid:
            w.boolean(wire.PLAN_REPORT_PID, True)
        return w.getvalue()


EXEC_NAMESPACES = ("cgroup", "ipc", "uts", "net", "pid", "mnt", "user")


@dataclass
class ExecPlan:
    """A command to run inside an existing container (no mounts: it joins the container's)."""

    target_pid: int
    argv: list[str]
    env: list[str] = field(default_factory=list)
    cwd: str | None = None
    namespaces: list[Namespace] | None = None  # None: all of the target's (see for_pid)
    cgroup_procs: list[str] = field(default_factory=list)
    uid: int | None = 0
    gid: int | None = 0
    additional_gids: list[int] | None = None
    capabilities: Capabilities | None = None
    no_new_privs: bool = False
    seccomp: bytes | None = None
    seccomp_flags: int = 0
    rlimits: list[Rlimit] = field(default_factory=list)
    umask: int | None = None
    apparmor_profile: str | None = None  # the container's own (ContainerRecord.process)
    # A pseudo terminal on the container's devpts instead of the helper's fds
    # 0-2; the helper then needs --console-fd to hand the master over.
    tty: bool = False
    tty_size: tuple[int, int] | None = None  # (columns, rows), set before the command runs

    def resolved_namespaces(self) -> list[Namespace]:
        if self.namespaces is not None:
            return self.namespaces
        # Join the target's namespaces only where they differ from ours: setns
        # into one's own namespace is pointless, and for some types refused.
        import os

        joined = []
        for name in EXEC_NAMESPACES:
            theirs = f"/proc/{self.target_pid}/ns/{name}"
            try:
                if os.stat(theirs).st_ino == os.stat(f"/proc/self/ns/{name}").st_ino:
                    continue
            except FileNotFoundError:
                continue
            joined.append(Namespace(name, theirs))
        return joined

    def encode(self) -> bytes:
        w = TLVWriter()
        w.u32(wire.PLAN_VERSION, wire.PLAN_FORMAT_VERSION)
        w.u32(wire.PLAN_TARGET_PID, self.target_pid)
        _encode_namespaces_and_cgroups(w, self.resolved_namespaces(), self.cgroup_procs)
        _encode_process(
            w, argv=self.argv, env=self.env, cwd=self.cwd, uid=self.uid, gid=self.gid,
            additional_gids=self.additional_gids, capabilities=self.capabilities, no_new_privs=self.no_new_privs,
            seccomp=self.seccomp, seccomp_flags=self.seccomp_flags, rlimits=self.rlimits, umask=self.umask,
            apparmor_profile=self.apparmor_profile,
        )
        if self.tty:
            w.boolean(wire.PLAN_TTY, True)
            if self.tty_size is not None:
                w.u32(wire.PLAN_TTY_SIZE, wire.tty_size(*self.tty_size))
        return w.getvalue()


# What CRI-O hides from containers by default.
DEFAULT_MASKED_PATHS = (
    "/proc/acpi", "/proc/asound", "/proc/kcore", "/proc/keys", "/proc/latency_stats", "/proc/timer_list",
    "/proc/timer_stats", "/proc/sched_debug", "/proc/scsi", "/sys/firmware", "/sys/devices/virtual/powercap",
)
DEFAULT_READONLY_PATHS = ("/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger")

# (name, major, minor): the devices every container gets.
DEFAULT_DEVICES = (("null", 1, 3), ("zero", 1, 5), ("full", 1, 7), ("random", 1, 8), ("urandom", 1, 9),
                   ("tty", 5, 0))


def default_linux_mounts(
    *,
    shm_source: str | None = None,
    cgroup: str = "v2",
    cgroup_v1_binds: dict[str, str] | None = None,
    extra: Sequence[MountOp] = (),
    masked_paths: Sequence[str] = DEFAULT_MASKED_PATHS,
    readonly_paths: Sequence[str] = DEFAULT_READONLY_PATHS,
    devices: Sequence[tuple[str, int, int]] = DEFAULT_DEVICES,
    dev_size: str = "65536k",
    dev_owner: DevOwner | None = None,
) -> list[MountOp]:
    """The standard Linux container mount sequence, in order.

    proc, a tmpfs /dev with the standard devices and symlinks, devpts, /dev/shm
    (the pod's shm dir bound in when `shm_source` is given, else a private
    tmpfs), mqueue, a read-only sysfs; the masked and read-only paths in /proc
    and /sys (see _hiding_before_cgroups); `extra` (volumes, /etc/hosts, ...);
    the other masked and read-only paths, after anything mounted that could
    uncover them; then the cgroup filesystem.

    The monitor's child carries out every operation before the first one under
    /sys/fs/cgroup while the daemon is still making the container's cgroups, so
    the cgroup mounts go last where they commute with what would follow them:
    when neither `extra` nor the late hiding is at, under or above
    /sys/fs/cgroup. Otherwise they come right after /proc and /sys, as runc
    orders a spec's mounts.

    `dev_owner`: in a pod with a user namespace, the host ids of the container's root and tty group:
    /dev, its devices and the terminals' group are theirs, as they are the node's root's without one.

    `cgroup`: "v2" mounts cgroup2 (pair it with a cgroup namespace); "v1" makes
    /sys/fs/cgroup a tmpfs with one read-only bind per entry of
    `cgroup_v1_binds` (name -> host directory); "none" mounts nothing there.

    The operations are immutable and the parts that repeat from container to
    container are built once (building 45 of them cost about 0.2 ms per
    CreateContainer).
    """
    ops = list(_system_mounts(shm_source, tuple(devices), dev_size, dev_owner))
    hiding = _hiding_mounts(tuple(masked_paths), tuple(readonly_paths))
    early_hiding, hiding = _hiding_before_cgroups(hiding, tuple(op.destination for op in extra))
    ops += early_hiding
    cgroup_ops: list[MountOp] = []
    if cgroup == "v2":
        cgroup_ops.append(_CGROUP2_MOUNT)
    elif cgroup == "v1":
        cgroup_ops.append(_CGROUP_V1_TMPFS)
        for name, host_dir in sorted((cgroup_v1_binds or {}).items()):
            # Read-only, private and nosuid/noexec/nodev by _CGROUP_V1_READONLY, all at once.
            cgroup_ops.append(MountOp.bind(host_dir, f"/sys/fs/cgroup/{name}", recursive=False, propagation=0))
        cgroup_ops.append(_CGROUP_V1_READONLY)
    elif cgroup != "none":
        raise ValueError(f"cgroup must be 'v2', 'v1' or 'none', not {cgroup!r}")
    rest = [*extra, *hiding]
    if any(_at_or_under(op.destination, _CGROUP_ROOT) or _at_or_under(_CGROUP_ROOT, op.destination) for op in rest):
        return ops + cgroup_ops + rest
    return ops + rest + cgroup_ops


_KERNEL_FS_ROOTS = ("/proc", "/sys")
_CGROUP_ROOT = "/sys/fs/cgroup"


def _at_or_under(path: str, root: str) -> bool:
    return path == root or path.startswith(root + "/")


@functools.lru_cache(maxsize=64)
def _hiding_before_cgroups(hiding: tuple[MountOp, ...], extra_destinations: tuple[str, ...],
                           ) -> tuple[tuple[MountOp, ...], tuple[MountOp, ...]]:
    """Split the masked and read-only paths into those that can go right after /proc and /sys are
    mounted, ahead of the cgroup mounts, and those that stay last.

    The monitor's child carries out every operation before the first one under /sys/fs/cgroup while
    the daemon is still making the container's cgroups; the rest waits for them. Hiding a path in
    /proc or /sys away from /sys/fs/cgroup commutes with the cgroup mounts (those paths resolve inside
    proc and sysfs, out of the image's reach), so it moves ahead. Nothing moves when a volume mounts
    into /proc or /sys: hiding must stay after anything that could uncover it.
    """
    if any(_at_or_under(destination, root) for destination in extra_destinations for root in _KERNEL_FS_ROOTS):
        return (), hiding
    early, late = [], []
    for op in hiding:
        movable = (any(_at_or_under(op.destination, root) for root in _KERNEL_FS_ROOTS)
                   and not _at_or_under(op.destination, _CGROUP_ROOT)
                   and not _at_or_under(_CGROUP_ROOT, op.destination))
        (early if movable else late).append(op)
    return tuple(early), tuple(late)


_CGROUP2_MOUNT = MountOp.mount("cgroup2", "/sys/fs/cgroup",
                               flags=MS_NOSUID | MS_NOEXEC | MS_NODEV | MS_RELATIME | MS_RDONLY)
_CGROUP_V1_TMPFS = MountOp.mount("tmpfs", "/sys/fs/cgroup", flags=MS_NOSUID | MS_NOEXEC | MS_NODEV, data="mode=755",
                                 source="cgroup")
# The tmpfs and its binds made read-only, private, nosuid, noexec and nodev where they are, in one
# call (MS_REMOUNT: in place). A read-only bind of the tmpfs stacked over itself would hide the binds,
# which belong to the mount underneath.
_CGROUP_V1_READONLY = MountOp(MountKind.READONLY, "/sys/fs/cgroup",
                              flags=MS_REMOUNT | MS_REC | MS_NOSUID | MS_NOEXEC | MS_NODEV, propagation=MS_PRIVATE)


@dataclass(frozen=True)
class DevOwner:
    """Host ids that own /dev in a pod with a user namespace: its root's, and its tty group's."""

    uid: int
    gid: int
    tty_gid: int


# The group of the terminals devpts makes (gid=5: "tty" in every distribution's /etc/group).
TTY_GID = 5


@functools.lru_cache(maxsize=64)
def _system_mounts(shm_source: str | None, devices: tuple[tuple[str, int, int], ...],
                   dev_size: str, dev_owner: DevOwner | None = None) -> tuple[MountOp, ...]:
    """proc, /dev and its devices, links and devpts, /dev/shm, mqueue, sysfs."""
    nosuid_noexec_nodev = MS_NOSUID | MS_NOEXEC | MS_NODEV
    owner = f",uid={dev_owner.uid},gid={dev_owner.gid}" if dev_owner is not None else ""
    uid, gid = (dev_owner.uid, dev_owner.gid) if dev_owner is not None else (0, 0)
    ops = [
        MountOp.mount("proc", "/proc", flags=nosuid_noexec_nodev),
        MountOp.mount("tmpfs", "/dev", flags=MS_NOSUID | MS_STRICTATIME, data=f"mode=755,size={dev_size}{owner}"),
    ]
    for name, major, minor in devices:
        ops.append(MountOp.char_device(f"/dev/{name}", major, minor, host_path=f"/dev/{name}", uid=uid, gid=gid))
    ops += [
        MountOp.symlink("/proc/self/fd", "/dev/fd"),
        MountOp.symlink("/proc/self/fd/0", "/dev/stdin"),
        MountOp.symlink("/proc/self/fd/1", "/dev/stdout"),
        MountOp.symlink("/proc/self/fd/2", "/dev/stderr"),
        MountOp.symlink("pts/ptmx", "/dev/ptmx"),
        MountOp.mount("devpts", "/dev/pts", flags=MS_NOSUID | MS_NOEXEC,
                      data="newinstance,ptmxmode=0666,mode=0620,"
                           # A terminal the child opens before it joins the user namespace is the
                           # container's root's, as it is the node's root's without one.
                           + (f"uid={dev_owner.uid},gid={dev_owner.tty_gid}" if dev_owner is not None
                              else f"gid={TTY_GID}")),
    ]
    if shm_source:
        ops.append(MountOp.bind(shm_source, "/dev/shm", recursive=False, flags=nosuid_noexec_nodev))
    else:
        ops.append(MountOp.mount("tmpfs", "/dev/shm", flags=nosuid_noexec_nodev, data="mode=1777,size=65536k",
                                 source="shm"))
    ops += [
        MountOp.mount("mqueue", "/dev/mqueue", flags=nosuid_noexec_nodev),
        MountOp.mount("sysfs", "/sys", flags=nosuid_noexec_nodev | MS_RDONLY),
    ]
    return tuple(ops)


@functools.lru_cache(maxsize=64)
def _hiding_mounts(masked_paths: tuple[str, ...], readonly_paths: tuple[str, ...]) -> tuple[MountOp, ...]:
    return tuple([MountOp.mask(path) for path in masked_paths] + [MountOp.readonly(path) for path in readonly_paths])
