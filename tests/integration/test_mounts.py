"""runtime/mounts.py on real mounts: finding mount points by mount id, detaching them, and the
mountinfo fallback giving the same answer."""

from __future__ import annotations

import subprocess
import tempfile
from pathlib import Path
from typing import Iterator

import pytest

from crio_fast.runtime import mounts


def mounted_under(base: Path) -> list[str]:
    """Independent of the code under test: mount points at or under ``base`` per mountinfo."""
    prefix = str(base)
    points = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        point = line.split()[4]
        if point == prefix or point.startswith(prefix + "/"):
            points.append(point)
    return points


@pytest.fixture
def base() -> Iterator[Path]:
    directory = Path(tempfile.mkdtemp(prefix="cf-mounts-", dir="/tmp"))
    try:
        yield directory
    finally:
        for _ in range(20):
            left = mounted_under(directory)
            if not left:
                break
            for point in sorted(left, key=len, reverse=True):
                subprocess.run(["umount", "--lazy", point], check=False, capture_output=True)
        subprocess.run(["rm", "-rf", "--one-file-system", str(directory)], check=False)


def mount(*args: str) -> None:
    subprocess.run(["mount", *args], check=True, capture_output=True)


@pytest.fixture
def pod_like(base: Path) -> tuple[Path, set[str]]:
    """A pod dir as a monitor leaves it: a private self-bind, an nsfs pin, a tmpfs (twice, stacked)
    with a file in it, and a same-filesystem bind deeper down."""
    root = base / "pod"
    (root / "ns").mkdir(parents=True)
    (root / "ns" / "net").touch()
    (root / "shm").mkdir()
    (root / "deep" / "a").mkdir(parents=True)
    (root / "deep" / "b").mkdir()
    (root / "hostname").write_text("pod\n")
    mount("--bind", str(root), str(root))
    mount("--make-private", str(root))
    mount("--bind", "/proc/self/ns/net", str(root / "ns" / "net"))
    mount("-t", "tmpfs", "-o", "size=64k", "shm", str(root / "shm"))
    mount("-t", "tmpfs", "-o", "size=64k", "shm", str(root / "shm"))
    (root / "shm" / "segment").write_text("x")
    mount("--bind", str(root / "deep" / "a"), str(root / "deep" / "b"))
    expected = {str(root), str(root / "ns" / "net"), str(root / "shm"), str(root / "deep" / "b")}
    assert set(mounted_under(root)) == expected
    return root, expected


def test_mount_ids_find_every_mount_point_under_a_pod_dir(pod_like: tuple[Path, set[str]]) -> None:
    root, expected = pod_like
    if mounts.mount_id(str(root)) is None:
        pytest.fail("this kernel has no STATX_MNT_ID (Linux 5.8+); the fallback test covers it")
    points = mounts.mount_points_under(str(root))
    assert points is not None
    assert set(points) == expected
    assert points[0] == str(root)  # parents before children


def test_detach_all_under_leaves_nothing_mounted(pod_like: tuple[Path, set[str]]) -> None:
    root, expected = pod_like
    detached = mounts.detach_all_under(str(root))
    assert set(detached) == expected
    assert detached[-1] == str(root)  # deepest first: the self-bind last
    assert mounted_under(root) == []
    assert (root / "hostname").read_text() == "pod\n"  # the directory underneath is untouched
    assert mounts.detach_all_under(str(root)) == []  # idempotent


def test_mountinfo_fallback_finds_the_same(pod_like: tuple[Path, set[str]],
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    root, expected = pod_like
    monkeypatch.setattr(mounts, "mount_id", lambda path: None)  # a kernel before STATX_MNT_ID
    assert mounts.mount_points_under(str(root)) is None
    assert set(mounts.detach_all_under(str(root))) >= expected
    assert mounted_under(root) == []


def test_a_self_bind_of_the_same_filesystem_is_found(base: Path) -> None:
    target = base / "target"
    (target / "sub").mkdir(parents=True)
    assert mounts.mount_points_under(str(target)) == []
    mount("--bind", str(target), str(target))  # same st_dev as its parent: stat alone cannot tell
    assert mounts.mount_points_under(str(target)) == [str(target)]
    assert mounts.mount_points_under(str(base / "missing")) == []
    assert mounts.detach_stacked(str(target)) == 1
    assert mounted_under(target) == []


def test_detach_stacked_takes_every_layer_and_no_submount_elsewhere(base: Path) -> None:
    target = base / "rootfs"
    other = base / "other"
    target.mkdir()
    other.mkdir()
    for _ in range(3):
        mount("-t", "tmpfs", "-o", "size=64k", "layer", str(target))
    mount("-t", "tmpfs", "-o", "size=64k", "other", str(other))
    assert mounts.detach_stacked(str(target)) == 3
    assert mounted_under(target) == []
    assert mounted_under(other) == [str(other)]
    assert mounts.detach_stacked(str(target)) == 0
    assert mounts.detach_stacked(str(base / "missing")) == 0
