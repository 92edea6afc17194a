"""The order of the standard mount sequence (runtime/plan.py default_linux_mounts).

The monitor's child carries out everything before the first operation under /sys/fs/cgroup while the
daemon is still making the container's cgroups, so the sequence puts as much as it safely can there.
"""

from __future__ import annotations

from crio_fast.runtime.plan import MountKind, MountOp, default_linux_mounts


def destinations(ops: list[MountOp], kind: MountKind) -> list[str]:
    return [op.destination for op in ops if op.kind == kind]


def first_cgroup_index(ops: list[MountOp]) -> int:
    return next(i for i, op in enumerate(ops) if op.destination.startswith("/sys/fs/cgroup"))


def test_hiding_in_proc_and_sys_comes_before_the_cgroup_mounts():
    ops = default_linux_mounts(cgroup="v1", cgroup_v1_binds={"cpu": "/h/cpu", "memory": "/h/memory"},
                               extra=[MountOp.bind("/pod/hosts", "/etc/hosts")],
                               masked_paths=["/proc/kcore", "/sys/firmware", "/etc/secret"],
                               readonly_paths=["/proc/sys"])
    split = first_cgroup_index(ops)
    before, after = ops[:split], ops[split:]
    assert destinations(before, MountKind.MASK) == ["/proc/kcore", "/sys/firmware"]
    assert destinations(before, MountKind.READONLY) == ["/proc/sys"]
    # After /proc and /sys are mounted, never before.
    mounted = [op.destination for op in before if op.kind == MountKind.MOUNT]
    assert mounted.index("/sys") < [op.destination for op in before].index("/sys/firmware")
    assert [op.destination for op in before].index("/proc") < [op.destination for op in before].index("/proc/kcore")
    # What is elsewhere still comes last, after the volumes that could uncover it.
    assert destinations(after, MountKind.MASK) == ["/etc/secret"]
    assert [op.destination for op in after][-1] == "/etc/secret"
    assert destinations(after, MountKind.BIND) == ["/sys/fs/cgroup/cpu", "/sys/fs/cgroup/memory", "/etc/hosts"]


def test_hiding_at_or_around_the_cgroup_mounts_stays_after_them():
    ops = default_linux_mounts(cgroup="v1", cgroup_v1_binds={"cpu": "/h/cpu"},
                               masked_paths=["/sys/fs/cgroup/cpu", "/proc/kcore"], readonly_paths=["/sys/fs"])
    split = first_cgroup_index(ops)
    assert destinations(ops[:split], MountKind.MASK) == ["/proc/kcore"]
    assert destinations(ops[split:], MountKind.MASK) == ["/sys/fs/cgroup/cpu"]
    assert ops[-1] == MountOp.readonly("/sys/fs")


def test_nothing_moves_when_a_volume_mounts_into_proc_or_sys():
    for volume in ("/proc/driver/x", "/sys/kernel/y", "/sys"):
        ops = default_linux_mounts(cgroup="v2", extra=[MountOp.bind("/host", volume)],
                                   masked_paths=["/proc/kcore"], readonly_paths=["/proc/sys"])
        assert [op.kind for op in ops[-2:]] == [MountKind.MASK, MountKind.READONLY], volume
        assert first_cgroup_index(ops) < [op.destination for op in ops].index("/proc/kcore")
