"""CPU, memory, swap, pressure and process counts of one cgroup, from its control files.

A sample needs five to ten small files per cgroup. ``StatFiles`` names
them for a cgroup (v1 or v2 per controller, as the host has them) and turns
their contents back into a ``CgroupSample``; the collector concatenates the
files of every cgroup it wants into one ``read_files`` call, so a stats RPC
for hundreds of containers is one native pass without the GIL.

Pressure stall information (PSI: ``cpu.pressure``, ``memory.pressure``,
``io.pressure``) is read from the cgroup2 directory, for each resource whose
controller the host runs on cgroup v2, when the kernel has PSI on
(``/proc/pressure`` exists; ``psi=0`` or a kernel without ``CONFIG_PSI`` has
neither). A cgroup whose files are missing (``cgroup.pressure`` set to 0
hides them) gets no pressure at all, never zeros.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass

from crio_fast.cgroups import CgroupLayout, CgroupPaths

# v1 writes "no limit" as PAGE_COUNTER_MAX pages (9223372036854771712 on
# 4 KiB pages); anything this large is no limit in practice.
UNLIMITED_THRESHOLD = 1 << 62
# Where a file is wanted in a fixed position but the controller is missing:
# "/dev/null" would read as empty, so a path that cannot exist stands in.
NO_SUCH_FILE = "/proc/self/.crio-fast-no-such-file"


@dataclass(frozen=True)
class PressureData:
    """One line of a pressure file: the share of wall time stalled (%) and the total stall time."""

    total_us: int  # cumulative, microseconds as the kernel counts
    avg10: float
    avg60: float
    avg300: float


@dataclass(frozen=True)
class Pressure:
    """A pressure file: ``some`` (at least one task stalled) and ``full`` (all non-idle tasks stalled).

    ``full`` is None where the file has no such line: ``cpu.pressure`` before Linux 5.13.
    """

    some: PressureData | None
    full: PressureData | None


@dataclass
class CgroupSample:
    """What one read of a cgroup's files said; None where a file was absent."""

    cpu_usage_ns: int | None = None  # cumulative
    memory_usage: int | None = None
    working_set: int | None = None
    rss: int | None = None
    page_faults: int | None = None
    major_page_faults: int | None = None
    memory_limit: int | None = None  # None: unlimited
    processes: int | None = None
    swap_usage: int | None = None  # None: swap not accounted here
    swap_limit: int | None = None  # swap alone (v1: memory+swap limit minus the memory limit); None: unlimited
    cpu_pressure: Pressure | None = None
    memory_pressure: Pressure | None = None
    io_pressure: Pressure | None = None

    @property
    def memory_available(self) -> int | None:
        """What the memory limit leaves above the working set; None without a limit."""
        if self.memory_limit is None or self.working_set is None:
            return None
        return max(0, self.memory_limit - self.working_set)

    @property
    def swap_available(self) -> int | None:
        if self.swap_limit is None or self.swap_usage is None:
            return None
        return max(0, self.swap_limit - self.swap_usage)


def parse_flat_keyed(content: bytes) -> dict[bytes, int]:
    """``key value`` lines (memory.stat, cpu.stat) into a dict; malformed lines are skipped."""
    values: dict[bytes, int] = {}
    for line in content.split(b"\n"):
        key, _, value = line.partition(b" ")
        if value:
            try:
                values[key] = int(value)
            except ValueError:
                continue
    return values


def parse_pressure(content: bytes | None) -> Pressure | None:
    """A PSI file (``some avg10=0.12 avg60=0.05 avg300=0.01 total=123456`` and maybe a ``full`` line).

    None for an absent or unreadable file, or one with neither line; a malformed line counts as absent.
    """
    if not content:
        return None
    lines: dict[bytes, PressureData] = {}
    for line in content.split(b"\n"):
        kind, _, rest = line.partition(b" ")
        if kind not in (b"some", b"full"):
            continue
        fields = dict(item.partition(b"=")[::2] for item in rest.split())
        try:
            lines[kind] = PressureData(total_us=int(fields[b"total"]), avg10=float(fields[b"avg10"]),
                                       avg60=float(fields[b"avg60"]), avg300=float(fields[b"avg300"]))
        except (KeyError, ValueError):
            continue
    if not lines:
        return None
    return Pressure(some=lines.get(b"some"), full=lines.get(b"full"))


def _int(content: bytes | None) -> int | None:
    if content is None:
        return None
    try:
        return int(content)
    except ValueError:
        return None


def _limit(content: bytes | None) -> int | None:
    """A limit file's value; None for "max", v1's huge "unlimited", absent or malformed."""
    if content is None or content.strip() == b"max":
        return None
    value = _int(content)
    return value if value is not None and value < UNLIMITED_THRESHOLD else None


@functools.cache
def psi_enabled() -> bool:
    """Whether this kernel keeps pressure stall information (it makes /proc/pressure only then)."""
    return os.path.isdir("/proc/pressure")


# The named slots a StatFiles may read, in the order of its paths.
_CPU, _USAGE, _STAT, _LIMIT, _PIDS = "cpu", "usage", "stat", "limit", "pids"
_SWAP_USAGE, _SWAP_LIMIT = "swap_usage", "swap_limit"
_CPU_PRESSURE, _MEMORY_PRESSURE, _IO_PRESSURE = "cpu.pressure", "memory.pressure", "io.pressure"


class StatFiles:
    """The control files one sample of a cgroup reads, and how to parse them."""

    __slots__ = ("paths", "_slots", "_cpu_v2", "_memory_v2")

    def __init__(self, layout: CgroupLayout, cgroup: CgroupPaths, psi: bool | None = None) -> None:
        cpuacct = layout.hierarchy_of("cpuacct")  # v1 only; v2 has cpu.stat instead
        self._cpu_v2 = cpuacct is None or cpuacct.version == 2
        self._memory_v2 = layout.is_v2("memory")
        dirs = cgroup.dirs
        # cpu.stat exists on every v2 cgroup even without the cpu controller enabled.
        cpu_dir = dirs.get("cpuacct") if not self._cpu_v2 else dirs.get("cpu", dirs.get("unified"))
        memory_dir = dirs.get("memory")
        pids_dir = dirs.get("pids")
        unified_dir = dirs.get("unified")
        slots: list[tuple[str, str | None]] = []
        if self._cpu_v2:
            slots.append((_CPU, os.path.join(cpu_dir, "cpu.stat") if cpu_dir else None))
        else:
            slots.append((_CPU, os.path.join(cpu_dir, "cpuacct.usage") if cpu_dir else None))
        if memory_dir is None:
            slots += [(_USAGE, None), (_STAT, None), (_LIMIT, None)]
        elif self._memory_v2:
            slots += [(_USAGE, os.path.join(memory_dir, "memory.current")),
                      (_STAT, os.path.join(memory_dir, "memory.stat")),
                      (_LIMIT, os.path.join(memory_dir, "memory.max"))]
        else:
            slots += [(_USAGE, os.path.join(memory_dir, "memory.usage_in_bytes")),
                      (_STAT, os.path.join(memory_dir, "memory.stat")),
                      (_LIMIT, os.path.join(memory_dir, "memory.limit_in_bytes"))]
        slots.append((_PIDS, os.path.join(pids_dir, "pids.current") if pids_dir else None))
        # Swap only where the kernel accounts it (the files exist only then).
        if memory_dir is not None and layout.swap_accounting:
            if self._memory_v2:
                slots += [(_SWAP_USAGE, os.path.join(memory_dir, "memory.swap.current")),
                          (_SWAP_LIMIT, os.path.join(memory_dir, "memory.swap.max"))]
            else:  # memory+swap counters: swap is their difference with the memory ones
                slots += [(_SWAP_USAGE, os.path.join(memory_dir, "memory.memsw.usage_in_bytes")),
                          (_SWAP_LIMIT, os.path.join(memory_dir, "memory.memsw.limit_in_bytes"))]
        if unified_dir is not None and (psi_enabled() if psi is None else psi):
            # The pressure of a resource whose controller is on v1 (a hybrid host) would be the
            # pressure of the cgroup2 directory, which holds the processes only if the runtime put
            # them there: leave it out rather than report what may be someone else's.
            if self._cpu_v2:
                slots.append((_CPU_PRESSURE, os.path.join(unified_dir, "cpu.pressure")))
            if self._memory_v2:
                slots.append((_MEMORY_PRESSURE, os.path.join(unified_dir, "memory.pressure")))
            if layout.is_v2("io"):
                slots.append((_IO_PRESSURE, os.path.join(unified_dir, "io.pressure")))
        self._slots = tuple(name for name, _ in slots)
        self.paths = [path or NO_SUCH_FILE for _, path in slots]

    def parse(self, contents: list[bytes | None]) -> CgroupSample:
        raw = dict(zip(self._slots, contents))
        sample = CgroupSample(processes=_int(raw.get(_PIDS)))
        cpu = raw.get(_CPU)
        if cpu is not None:
            if self._cpu_v2:
                usec = parse_flat_keyed(cpu).get(b"usage_usec")
                sample.cpu_usage_ns = usec * 1000 if usec is not None else None
            else:
                sample.cpu_usage_ns = _int(cpu)
        sample.memory_usage = _int(raw.get(_USAGE))
        stat_raw = raw.get(_STAT)
        if stat_raw is not None:
            stat = parse_flat_keyed(stat_raw)
            if self._memory_v2:
                inactive_file = stat.get(b"inactive_file", 0)
                sample.rss = stat.get(b"anon")
                sample.page_faults = stat.get(b"pgfault")
                sample.major_page_faults = stat.get(b"pgmajfault")
            else:
                # total_* include the descendants, which is what a pod cgroup needs.
                inactive_file = stat.get(b"total_inactive_file", 0)
                sample.rss = stat.get(b"total_rss")
                sample.page_faults = stat.get(b"total_pgfault")
                sample.major_page_faults = stat.get(b"total_pgmajfault")
            if sample.memory_usage is not None:
                sample.working_set = max(0, sample.memory_usage - inactive_file)
        sample.memory_limit = _limit(raw.get(_LIMIT))
        swap_usage = _int(raw.get(_SWAP_USAGE))
        swap_limit = _limit(raw.get(_SWAP_LIMIT))
        if self._memory_v2:
            sample.swap_usage = swap_usage
            sample.swap_limit = swap_limit
        elif swap_usage is not None and sample.memory_usage is not None:
            # v1 counts memory+swap: swap is what memsw has beyond memory (both read at
            # nearly the same instant; a page charged in between must not make it negative).
            sample.swap_usage = max(0, swap_usage - sample.memory_usage)
            if swap_limit is not None and sample.memory_limit is not None:
                sample.swap_limit = max(0, swap_limit - sample.memory_limit)
        sample.cpu_pressure = parse_pressure(raw.get(_CPU_PRESSURE))
        sample.memory_pressure = parse_pressure(raw.get(_MEMORY_PRESSURE))
        sample.io_pressure = parse_pressure(raw.get(_IO_PRESSURE))
        return sample
