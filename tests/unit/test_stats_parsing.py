"""Stats parsing: cgroup v1 and v2 control files, /proc/net/dev, inotify records."""

from __future__ import annotations

import struct

from crio_fast.cgroups import CgroupManager, build_layout
from crio_fast.runtime.exitwatch import IN_MOVED_TO, IN_Q_OVERFLOW, parse_events
from crio_fast.stats.cgroup import StatFiles
from crio_fast.stats.collector import parse_net_dev
from tests.unit.test_cgroups_layout import (
    HUGEPAGE_DIRS, V1_MOUNTINFO, V1_PROC_CGROUPS, V1_SELF_CGROUP, V2_CONTROLLERS, V2_MOUNTINFO, V2_PROC_CGROUPS,
    V2_SELF_CGROUP,
)

V1_MEMORY_STAT = b"""cache 100
rss 5
total_cache 4096000
total_rss 2000000
total_pgfault 321
total_pgmajfault 7
total_inactive_file 1000000
"""
V2_MEMORY_STAT = b"""anon 3000000
file 500000
inactive_file 200000
pgfault 1234
pgmajfault 5
"""


def files_for(layout) -> StatFiles:
    manager = CgroupManager(layout=layout)
    return StatFiles(layout, manager.paths("/kubepods/pod1/crio-fast-abc"))


def test_v1_files_and_parse():
    layout = build_layout(V1_MOUNTINFO, V1_PROC_CGROUPS, V1_SELF_CGROUP, None, HUGEPAGE_DIRS, True)
    files = files_for(layout)
    names = [p.rsplit("/", 1)[1] for p in files.paths]
    assert names == ["cpuacct.usage", "memory.usage_in_bytes", "memory.stat", "memory.limit_in_bytes", "pids.current"]
    sample = files.parse([b"123456789\n", b"5000000\n", V1_MEMORY_STAT, b"9223372036854771712\n", b"3\n"])
    assert sample.cpu_usage_ns == 123456789
    assert (sample.memory_usage, sample.working_set, sample.rss) == (5000000, 4000000, 2000000)
    assert (sample.page_faults, sample.major_page_faults, sample.processes) == (321, 7, 3)
    assert sample.memory_limit is None  # PAGE_COUNTER_MAX is "unlimited"
    limited = files.parse([None, b"5000000\n", V1_MEMORY_STAT, b"67108864\n", None])
    assert limited.memory_limit == 64 << 20
    assert limited.cpu_usage_ns is None and limited.processes is None


def test_v2_files_and_parse():
    layout = build_layout(V2_MOUNTINFO, V2_PROC_CGROUPS, V2_SELF_CGROUP, V2_CONTROLLERS, HUGEPAGE_DIRS, True)
    files = files_for(layout)
    names = [p.rsplit("/", 1)[1] for p in files.paths]
    assert names == ["cpu.stat", "memory.current", "memory.stat", "memory.max", "pids.current"]
    cpu_stat = b"usage_usec 2500\nuser_usec 2000\nsystem_usec 500\n"
    sample = files.parse([cpu_stat, b"1000000\n", V2_MEMORY_STAT, b"max\n", b"1\n"])
    assert sample.cpu_usage_ns == 2_500_000
    assert (sample.memory_usage, sample.working_set, sample.rss) == (1000000, 800000, 3000000)
    assert (sample.page_faults, sample.major_page_faults) == (1234, 5)
    assert sample.memory_limit is None
    assert files.parse([cpu_stat, b"1000000\n", V2_MEMORY_STAT, b"2097152\n", b"1\n"]).memory_limit == 2 << 20


def test_net_dev_skips_lo_and_headers():
    content = (
        b"Inter-|   Receive                                                |  Transmit\n"
        b" face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed\n"
        b"    lo:    1000      10    0    0    0     0          0         0     1000      10    0    0    0     0       0          0\n"
        b"  eth0: 5000 50 2 0 0 0 0 0 7000 70 3 0 0 0 0 0\n"
    )
    [eth0] = parse_net_dev(content)
    assert (eth0.name, eth0.rx_bytes, eth0.rx_errors, eth0.tx_bytes, eth0.tx_errors) == ("eth0", 5000, 2, 7000, 3)


def test_inotify_records():
    def record(mask: int, name: bytes) -> bytes:
        padded = name + b"\0" * (16 - len(name)) if name else b""
        return struct.pack("iIII", 1, mask, 0, len(padded)) + padded

    buffer = record(IN_MOVED_TO, b"abc") + record(IN_MOVED_TO, b".abc.tmp") + record(IN_Q_OVERFLOW, b"")
    assert parse_events(buffer) == (["abc"], True)
    assert parse_events(record(IN_MOVED_TO, b"def")) == (["def"], False)
