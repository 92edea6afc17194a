"""CRI container resources -> the ordered control-file writes that apply them.

The input is a plain dataclass shaped like CRI's ``LinuxContainerResources``
(the protobuf message is mapped onto it by the caller), so this module stays
free of gRPC. The output is a list of ``(absolute path, value)`` to hand to the
native batch writer in order. Each controller is written in the form of the
hierarchy it lives in, so a hybrid host gets v1 files for v1 controllers and
v2 files for the controllers on its cgroup2 mount.

CRI conventions: a value of 0 means "not set" and writes nothing, except for
hugepage limits, where the kubelet sends 0 on purpose to forbid a page size.
-1 means "unlimited" for the CPU quota, the swap limit and the pids limit.

Choices, all documented where they are made below:

* v2 ``cpu.weight`` from CPU shares: the linear map of [2, 262144] onto
  [1, 10000] that runc and crun also use, ``1 + ((shares - 2) * 9999) // 262142``,
  so a pod gets the same weight whichever runtime created it.
* A memory limit without a swap limit forbids swap (swap limit = memory
  limit), which is what the kubelet asks for by default.
* v2 ``memory.swap.max`` counts swap only, while CRI's swap limit counts
  memory + swap: the v2 value is their difference.
* ``oom_score_adj`` is a property of the process, not of a cgroup: it is
  validated here and applied by the launcher.
* ``unified`` keys are written as given, last. The kubelet (1.32+, with
  ``singleProcessOOMKill`` false, its default on cgroup v2) sends
  ``memory.oom.group: "1"`` for every container, so an OOM kill takes all of
  the container's processes. Containers of runc and crun get it the same
  way: the daemon writes every limit into the cgroup before the runtime's
  ``create`` (container/oci.py), and their spec sets none.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field

from crio_fast.cgroups.errors import CgroupValidationError
from crio_fast.cgroups.layout import CgroupLayout

MIN_CPU_SHARES = 2
MAX_CPU_SHARES = 262144
MIN_CPU_WEIGHT = 1
MAX_CPU_WEIGHT = 10000
# The kernel's bounds for a CFS bandwidth period and the smallest quota (us).
MIN_CFS_PERIOD_US = 1000
MAX_CFS_PERIOD_US = 1_000_000
MIN_CFS_QUOTA_US = 1000
DEFAULT_CFS_PERIOD_US = 100_000  # a new cgroup's period
UNLIMITED = -1

_CPU_LIST = re.compile(r"\d+(-\d+)?(,\d+(-\d+)?)*")
_UNIFIED_KEY = re.compile(r"[a-z][a-z0-9_]*\.[A-Za-z0-9_.]+")
# Files that place processes or shape the tree: the manager owns those.
_UNIFIED_FORBIDDEN = frozenset(
    {"cgroup.procs", "cgroup.threads", "cgroup.subtree_control", "cgroup.kill", "cgroup.type"}
)


@dataclass
class Resources:
    """Limits of one container, in CRI units (us, bytes, shares)."""

    cpu_period: int = 0
    cpu_quota: int = 0
    cpu_shares: int = 0
    memory_limit_in_bytes: int = 0
    memory_swap_limit_in_bytes: int = 0
    oom_score_adj: int = 0
    cpuset_cpus: str = ""
    cpuset_mems: str = ""
    hugepage_limits: list[tuple[str, int]] = field(default_factory=list)  # ("2MB", bytes)
    unified: dict[str, str] = field(default_factory=dict)
    pids_limit: int = 0


def clamp_shares(shares: int) -> int:
    """The kernel clamps v1 cpu.shares to [2, 262144]; do it first so v1 and v2 agree."""
    return max(MIN_CPU_SHARES, min(MAX_CPU_SHARES, shares))


def shares_to_weight(shares: int) -> int:
    """v1 CPU shares -> v2 cpu.weight: [2, 262144] mapped linearly onto [1, 10000].

    The same formula as runc and crun, so weights match across runtimes.
    1024 shares (one CPU) becomes weight 39.
    """
    return MIN_CPU_WEIGHT + ((clamp_shares(shares) - MIN_CPU_SHARES) * (MAX_CPU_WEIGHT - 1)) // (
        MAX_CPU_SHARES - MIN_CPU_SHARES
    )


def effective_swap_limit(resources: Resources) -> int:
    """The memory+swap limit to apply: 0 (nothing), -1 (unlimited) or bytes."""
    memory = resources.memory_limit_in_bytes
    swap = resources.memory_swap_limit_in_bytes
    if memory > 0 and swap == 0:
        return memory  # no swap beyond the memory limit
    return swap


def v2_swap_max(memory_limit: int, swap_limit: int) -> str:
    """CRI's memory+swap limit -> v2 memory.swap.max, which counts swap alone."""
    if swap_limit == UNLIMITED:
        return "max"
    return str(swap_limit - memory_limit)


def cpu_max_value(quota: int, period: int) -> str:
    """v2 cpu.max is "$MAX $PERIOD"; the kernel keeps the period when only $MAX is given."""
    limit = "max" if quota in (0, UNLIMITED) else str(quota)
    return f"{limit} {period}" if period else limit


def validate(resources: Resources, layout: CgroupLayout) -> None:
    """Raise CgroupValidationError for a request that cannot be applied on this host."""

    def fail(message: str) -> None:
        raise CgroupValidationError(message)

    r = resources
    if r.cpu_shares < 0:
        fail(f"cpu shares must not be negative, got {r.cpu_shares}")
    if r.cpu_period < 0 or (r.cpu_period and not MIN_CFS_PERIOD_US <= r.cpu_period <= MAX_CFS_PERIOD_US):
        fail(f"cpu period must be {MIN_CFS_PERIOD_US}..{MAX_CFS_PERIOD_US}us, got {r.cpu_period}")
    if r.cpu_quota < UNLIMITED or 0 < r.cpu_quota < MIN_CFS_QUOTA_US:
        fail(f"cpu quota must be -1 (unlimited) or at least {MIN_CFS_QUOTA_US}us, got {r.cpu_quota}")
    if r.memory_limit_in_bytes < 0:
        fail(f"memory limit must not be negative, got {r.memory_limit_in_bytes}")
    if r.memory_swap_limit_in_bytes < UNLIMITED:
        fail(f"memory+swap limit must be -1 (unlimited) or bytes, got {r.memory_swap_limit_in_bytes}")
    if r.memory_swap_limit_in_bytes > 0:
        if r.memory_limit_in_bytes == 0:
            fail(f"memory+swap limit {r.memory_swap_limit_in_bytes} needs a memory limit as well")
        if r.memory_swap_limit_in_bytes < r.memory_limit_in_bytes:
            fail(
                f"memory+swap limit {r.memory_swap_limit_in_bytes} is below the memory limit "
                f"{r.memory_limit_in_bytes}; it counts memory plus swap and must be at least as large"
            )
    if not -1000 <= r.oom_score_adj <= 1000:
        fail(f"oom_score_adj must be -1000..1000, got {r.oom_score_adj}")
    for name, value in (("cpuset cpus", r.cpuset_cpus), ("cpuset mems", r.cpuset_mems)):
        if value and not _CPU_LIST.fullmatch(value):
            fail(f"{name} must be a list like 0-3,6, got {value!r}")
    if r.pids_limit < UNLIMITED:
        fail(f"pids limit must be -1 (unlimited) or a count, got {r.pids_limit}")
    seen_sizes: set[str] = set()
    for size, limit in r.hugepage_limits:
        if size not in layout.hugepage_sizes:
            have = ", ".join(layout.hugepage_sizes) or "none"
            fail(f"unknown hugepage size {size!r} (this host has: {have})")
        if size in seen_sizes:
            fail(f"hugepage size {size} is limited twice")
        seen_sizes.add(size)
        if limit < 0:
            fail(f"hugepage limit for {size} must not be negative, got {limit}")

    def need(controller: str, why: str) -> None:
        if layout.hierarchy_of(controller) is None:
            fail(f"{why} needs the {controller} cgroup controller, which this host does not provide")

    if r.cpu_shares or r.cpu_quota or r.cpu_period:
        need("cpu", "a cpu limit")
    if r.cpuset_cpus or r.cpuset_mems:
        need("cpuset", "a cpuset")
    if r.memory_limit_in_bytes or r.memory_swap_limit_in_bytes:
        need("memory", "a memory limit")
    if r.hugepage_limits:
        need("hugetlb", "a hugepage limit")
    if r.pids_limit:
        need("pids", "a pids limit")
    if r.unified:
        _validate_unified(r.unified, layout)


def _validate_unified(unified: Mapping[str, str], layout: CgroupLayout) -> None:
    if layout.unified is None:
        raise CgroupValidationError(
            f"unified cgroup resources ({', '.join(sorted(unified))}) need cgroup v2; this host has cgroup v1 only"
        )
    for key, value in unified.items():
        if not _UNIFIED_KEY.fullmatch(key) or key in _UNIFIED_FORBIDDEN:
            raise CgroupValidationError(f"unified cgroup key {key!r} is not a settable control file name")
        if "\0" in value:
            raise CgroupValidationError(f"unified cgroup value for {key} contains a NUL byte")
        controller = key.split(".", 1)[0]
        if controller == "cgroup":
            continue  # core files exist in every cgroup2 directory
        hierarchy = layout.hierarchy_of(controller)
        if hierarchy is None:
            raise CgroupValidationError(
                f"unified cgroup key {key}: controller {controller} is not available on this host's cgroup v2 mount"
            )
        if hierarchy.version != 2:
            raise CgroupValidationError(
                f"unified cgroup key {key}: controller {controller} is bound to cgroup v1 on this host "
                f"({hierarchy.mount_point}), not to the cgroup v2 mount"
            )


def plan_writes(
    layout: CgroupLayout,
    dirs: Mapping[str, str],
    resources: Resources,
    current_memory_limit: int | None = None,
) -> list[tuple[str, str]]:
    """The writes that apply ``resources`` to the cgroup whose directories are ``dirs``.

    ``dirs`` maps a controller name (and "unified" for the cgroup2 directory)
    to the cgroup's absolute directory, as in CgroupPaths.dirs.
    ``current_memory_limit`` is the cgroup's present v1 memory.limit_in_bytes
    when updating a live cgroup (None for a new one); it decides the order of
    the v1 memory and memory+swap writes.
    """
    validate(resources, layout)
    r = resources
    writes: list[tuple[str, str]] = []

    def put(controller: str, filename: str, value: str) -> None:
        writes.append((f"{dirs[controller]}/{filename}", value))

    if r.cpu_shares or r.cpu_quota or r.cpu_period:
        if layout.is_v2("cpu"):
            if r.cpu_shares:
                put("cpu", "cpu.weight", str(shares_to_weight(r.cpu_shares)))
            if r.cpu_quota or r.cpu_period:
                put("cpu", "cpu.max", cpu_max_value(r.cpu_quota, r.cpu_period))
        else:
            if r.cpu_shares:
                put("cpu", "cpu.shares", str(clamp_shares(r.cpu_shares)))
            if r.cpu_quota and r.cpu_period:
                # v1 checks quota/period against the parent after each write; lifting
                # the quota first makes every intermediate state valid.
                put("cpu", "cpu.cfs_quota_us", str(UNLIMITED))
                put("cpu", "cpu.cfs_period_us", str(r.cpu_period))
                put("cpu", "cpu.cfs_quota_us", str(r.cpu_quota))
            elif r.cpu_period:
                put("cpu", "cpu.cfs_period_us", str(r.cpu_period))
            elif r.cpu_quota:
                put("cpu", "cpu.cfs_quota_us", str(r.cpu_quota))

    # cpuset.cpus and cpuset.mems have the same names in v1 and v2.
    if r.cpuset_cpus:
        put("cpuset", "cpuset.cpus", r.cpuset_cpus)
    if r.cpuset_mems:
        put("cpuset", "cpuset.mems", r.cpuset_mems)

    if r.memory_limit_in_bytes or r.memory_swap_limit_in_bytes:
        swap = effective_swap_limit(r)
        memory = r.memory_limit_in_bytes
        if layout.is_v2("memory"):
            if memory:
                put("memory", "memory.max", str(memory))
            if swap and layout.swap_accounting:
                put("memory", "memory.swap.max", v2_swap_max(memory, swap))
        else:
            memory_writes = [("memory.limit_in_bytes", str(memory))] if memory else []
            swap_writes = [("memory.memsw.limit_in_bytes", str(swap))] if swap and layout.swap_accounting else []
            # The kernel keeps memory <= memory+swap after every write. Raising
            # memory+swap first works when the new memory+swap is not below the
            # present memory limit; otherwise lower memory first (a new cgroup's
            # limits are unlimited, so it takes memory first).
            current = current_memory_limit
            swap_first = swap == UNLIMITED or (current is not None and swap >= current)
            for filename, value in swap_writes + memory_writes if swap_first else memory_writes + swap_writes:
                put("memory", filename, value)

    if r.hugepage_limits:
        suffix = "max" if layout.is_v2("hugetlb") else "limit_in_bytes"
        for size, limit in r.hugepage_limits:
            put("hugetlb", f"hugetlb.{size}.{suffix}", str(limit))

    if r.pids_limit:
        put("pids", "pids.max", "max" if r.pids_limit == UNLIMITED else str(r.pids_limit))

    if r.unified:
        # Unified values are the caller's last word: they replace computed writes.
        overridden = {f"{dirs['unified']}/{key}" for key in r.unified}
        writes = [w for w in writes if w[0] not in overridden]
        for key, value in r.unified.items():
            put("unified", key, value)
    return writes
