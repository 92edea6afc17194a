"""The container's mount set-up as the daemon plans it: the order of the standard mount sequence
(runtime/plan.py default_linux_mounts) and the layer holding the /etc paths the pod's files are bound on.

The monitor's child carries out everything before the first operation under /sys/fs/cgroup while the
daemon is still making the container's cgroups, so the sequence puts as much as it safely can there.
"""

from __future__ import annotations

import os
import stat

from crio_fast.container.image_files import make_mount_targets_layer
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
    assert destinations(before, MountKind.MASK) == ["/proc/kcore", "/sys/firmware", "/etc/secret"]
    assert destinations(before, MountKind.READONLY) == ["/proc/sys"]
    # After /proc and /sys are mounted, never before.
    mounted = [op.destination for op in before if op.kind == MountKind.MOUNT]
    assert mounted.index("/sys") < [op.destination for op in before].index("/sys/firmware")
    assert [op.destination for op in before].index("/proc") < [op.destination for op in before].index("/proc/kcore")
    # What is elsewhere still comes after the volumes that could uncover it.
    order = [op.destination for op in ops]
    assert order.index("/etc/hosts") < order.index("/etc/secret")


def test_the_cgroup_mounts_come_last_where_they_commute():
    """The child waits for the daemon's cgroups at the first mount under /sys/fs/cgroup: everything
    that commutes with the cgroup mounts (volumes, the pod's files, hiding elsewhere) comes before."""
    binds = {"cpu": "/h/cpu", "memory": "/h/memory"}
    volumes = [MountOp.bind("/pod/hosts", "/etc/hosts"), MountOp.bind("/data", "/var/data")]
    ops = default_linux_mounts(cgroup="v1", cgroup_v1_binds=binds, extra=volumes, masked_paths=["/etc/secret"])
    split = first_cgroup_index(ops)
    assert [op.destination for op in ops[split:]] == [
        "/sys/fs/cgroup", "/sys/fs/cgroup/cpu", "/sys/fs/cgroup/memory", "/sys/fs/cgroup"]
    assert destinations(ops[:split], MountKind.BIND)[-2:] == ["/etc/hosts", "/var/data"]
    v2 = default_linux_mounts(cgroup="v2", extra=volumes)
    assert v2[-1].fstype == "cgroup2" and v2[-1].destination == "/sys/fs/cgroup"
    # A volume under the cgroup tmpfs, or above it, must come after it: the old order stays.
    for destination in ("/sys/fs/cgroup/extra", "/sys/fs"):
        ops = default_linux_mounts(cgroup="v1", cgroup_v1_binds=binds,
                                   extra=[*volumes, MountOp.bind("/host", destination)], masked_paths=[],
                                   readonly_paths=[])
        order = [op.destination for op in ops]
        assert first_cgroup_index(ops) < order.index("/etc/hosts"), destination
        assert order[-1] == destination


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
        order = [op.destination for op in ops]
        at = ops.index(MountOp.bind("/host", volume))
        assert at < order.index("/proc/kcore") < order.index("/proc/sys"), volume
        assert [op.kind for op in ops if op.destination in ("/proc/kcore", "/proc/sys")] == [
            MountKind.MASK, MountKind.READONLY]
        # Above the cgroup mount: it stays before the volume; elsewhere it goes last.
        assert (first_cgroup_index(ops) < at) == (volume == "/sys"), volume


def test_mount_targets_layer_copies_the_images_etc_attributes(tmp_path):
    top, base = tmp_path / "top", tmp_path / "base"
    (top / "bin").mkdir(parents=True)
    (base / "etc").mkdir(parents=True)
    (base / "etc" / "hosts").write_text("the image's own\n")
    os.chmod(base / "etc", 0o750)
    os.chown(base / "etc", 12, 34)
    os.utime(base / "etc", ns=(1_000_000_000, 2_000_000_000))
    layer = make_mount_targets_layer([top, base], tmp_path / "targets" / "img")
    assert layer == tmp_path / "targets" / "img"
    st = (layer / "etc").stat()
    assert (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid, st.st_mtime_ns) == (0o750, 12, 34, 2_000_000_000)
    assert sorted(p.name for p in (layer / "etc").iterdir()) == ["hostname", "hosts", "resolv.conf"]
    assert all((layer / "etc" / name).stat().st_size == 0 for name in ("hostname", "hosts", "resolv.conf"))
    # Made once: a second container of the image reuses it, and nothing half-made is left beside it.
    assert make_mount_targets_layer([top, base], layer) == layer
    assert os.listdir(tmp_path / "targets") == ["img"]


def test_no_mount_targets_layer_over_an_etc_that_is_not_a_directory(tmp_path):
    layer_dir = tmp_path / "layer"
    layer_dir.mkdir()
    (layer_dir / "etc").symlink_to("usr/etc")
    assert make_mount_targets_layer([layer_dir], tmp_path / "targets" / "a") is None
    empty = tmp_path / "empty"
    empty.mkdir()
    assert make_mount_targets_layer([empty], tmp_path / "targets" / "b") is None
    assert not (tmp_path / "targets").exists()
