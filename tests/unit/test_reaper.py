"""reap_all_adopted: children reaped with their statuses; what is not ours is left to its parent."""

from __future__ import annotations

import os
import time

from crio_fast.runtime.reaper import reap_all_adopted


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
