"""CPU, memory and process counts of one cgroup, from its control files.

A sample needs three to six small files per cgroup. ``StatFiles`` names
them for a cgroup (v1 or v2 per controller, as the host has them) and turns
their contents back into a ``CgroupSample``; the collector concatenates the
files of every cgroup it wants into one ``read_files`` call, so a stats RPC
for hundreds of containers is one native pass without the GIL.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from crio_fast.cgroups import CgroupLayout, CgroupPaths

# v1 writes "no limit" as PAGE_COUNTER_MAX pages (9223372036854771712 on
# 4 KiB pages); anything this large is no limit in practice.
UNLIMITED_THRESHOLD = 1 << 62


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


def _int(content: bytes | None) -> int | None:
    if content is None:
        return None
    try:
        return int(content)
    except ValueError:
        return None


class StatFiles:
    """The control files one sample of a cgroup reads, and how to parse them."""

    __slots__ = ("paths", "_cpu_v2", "_memory_v2")

    def __init__(self, layout: CgroupLayout, cgroup: CgroupPaths) -> None:
        cpuacct = layout.hierarchy_of("cpuacct")  # v1 only; v2 has cpu.stat instead
        self._cpu_v2 = cpuacct is None or cpuacct.version == 2
        self._memory_v2 = layout.is_v2("memory")
        dirs = cgroup.dirs
        # cpu.stat exists on every v2 cgroup even without the cpu controller enabled.
        cpu_dir = dirs.get("cpuacct") if not self._cpu_v2 else dirs.get("cpu", dirs.get("unified"))
        memory_dir = dirs.get("memory")
        pids_dir = dirs.get("pids")
        if self._cpu_v2:
            cpu_file = os.path.join(cpu_dir, "cpu.stat") if cpu_dir else None
        else:
            cpu_file = os.path.join(cpu_dir, "cpuacct.usage") if cpu_dir else None
        if memory_dir is None:
            memory_files: list[str | None] = [None, None, None]
        elif self._memory_v2:
            memory_files = [os.path.join(memory_dir, name) for name in ("memory.current", "memory.stat", "memory.max")]
        else:
            memory_files = [
                os.path.join(memory_dir, name)
                for name in ("memory.usage_in_bytes", "memory.stat", "memory.limit_in_bytes")
            ]
        pids_file = os.path.join(pids_dir, "pids.current") if pids_dir else None
        # A missing controller reads as an absent file: "/dev/null" would read
        # as empty, so a path that cannot exist stands in.
        self.paths = [p or "/proc/self/.crio-fast-no-such-file" for p in [cpu_file, *memory_files, pids_file]]

    def parse(self, contents: list[bytes | None]) -> CgroupSample:
        cpu, usage, stat_raw, limit_raw, pids = contents
        sample = CgroupSample(processes=_int(pids))
        if cpu is not None:
            if self._cpu_v2:
                usec = parse_flat_keyed(cpu).get(b"usage_usec")
                sample.cpu_usage_ns = usec * 1000 if usec is not None else None
            else:
                sample.cpu_usage_ns = _int(cpu)
        sample.memory_usage = _int(usage)
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
        if limit_raw is not None and limit_raw.strip() != b"max":
            limit = _int(limit_raw)
            if limit is not None and limit < UNLIMITED_THRESHOLD:
                sample.memory_limit = limit
        return sample
