"""reap_all_adopted: children reaped with their statuses; what is not ours is left to its parent."""

from __future__ import annotations

import os
import time
from pathlib import Path

from crio_fast.runtime.reaper import adopted_in_cgroup, reap_all_adopted


def test_exited_children_are_reaped_and_others_waited_for_until_the_deadline() -> None:
    children = []
    for code in (3, 4):
        pid = os.fork()
        if pid == 0:
            os._exit(code)
        children.append(pid)
    statuses = reap_all_adopted(children, 5)
    assert {pid: os.waitstatus_to_exitcode(status) for pid, status in statuses.items()} == dict(
        zip(children, (3, 4)))
    started = time.monotonic()
    assert reap_all_adopted([1], 0.2) == {}  # alive and not ours: given up at the deadline
    assert time.monotonic() - started < 2


def test_children_in_a_cgroup_are_found_exited_too() -> None:
    """An exited child has left cgroup.procs; its /proc/PID/cgroup still names the cgroup."""
    own = Path("/proc/self/cgroup").read_text().splitlines()[0].split(":", 2)[2]
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    try:
        while Path(f"/proc/{pid}/stat").read_bytes().rsplit(b")", 1)[1].split()[0] != b"Z":
            time.sleep(0.01)
        assert pid in adopted_in_cgroup(own)
        assert pid not in adopted_in_cgroup(own.rstrip("/") + "/no-such-cgroup")
    finally:
        os.waitpid(pid, 0)
