"""Image volumes without a daemon: the request's checks, the sub path resolved inside an image tree, the
overlay's lower dirs, the bind in config.json and the mount in ContainerStatus (container/image_volumes.py)."""

from __future__ import annotations

import base64
import os
from pathlib import Path

import pytest

from crio_fast.api import api_pb2 as pb
from crio_fast.container import image_volumes, oci
from crio_fast.errors import InvalidArgument
from crio_fast.runtime.plan import MS_PRIVATE, MountOp
from crio_fast.server import render
from crio_fast.state.records import CTR_CREATED, ContainerRecord


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """An image's merged tree: directories, a file, symlinks that stay inside and ones that climb out."""
    root = tmp_path / "image"
    (root / "data" / "sub").mkdir(parents=True)
    (root / "data" / "sub" / "deep.txt").write_text("deep\n")
    (root / "data" / "file.txt").write_text("file\n")
    os.symlink("/data/sub", root / "data" / "absolute")
    os.symlink("sub", root / "data" / "relative")
    os.symlink("../data/sub", root / "data" / "around")
    os.symlink("../../..", root / "data" / "up")
    os.symlink("/../..", root / "data" / "absolute-up")
    os.symlink("loop-b", root / "data" / "loop-a")
    os.symlink("loop-a", root / "data" / "loop-b")
    (tmp_path / "outside").mkdir()
    return root


@pytest.mark.parametrize(("sub_path", "resolved"), [
    ("", ""),
    (".", ""),
    ("data/sub", "data/sub"),
    ("data/sub/", "data/sub"),
    ("data//sub/./deep.txt", "data/sub/deep.txt"),
    ("data/absolute", "data/sub"),  # an absolute target starts at the image's root
    ("data/relative/deep.txt", "data/sub/deep.txt"),
    ("data/around", "data/sub"),
    ("data/relative/..", "data"),  # .. of where the link led, as the kernel walks it
    ("data/../data/file.txt", "data/file.txt"),
])
def test_sub_path_resolves_inside_the_tree(tree: Path, sub_path: str, resolved: str):
    assert image_volumes.resolve_sub_path(str(tree), sub_path) == resolved


@pytest.mark.parametrize(("sub_path", "says"), [
    ("..", "escapes the image: '..' above its root"),
    ("data/../../outside", "escapes the image: '..' above its root"),
    ("data/up", "escapes the image: '..' above its root, following the symlink 'data/up' -> '../../..'"),
    ("data/absolute-up", "following the symlink 'data/absolute-up' -> '/../..'"),
    ("data/nope", "'data/nope' does not exist"),
    ("data/file.txt/x", "'data/file.txt/x' does not exist"),
    ("data/relative/nope", "'data/sub/nope' does not exist"),
    ("data/loop-a", "more than 40 symbolic links"),
])
def test_escapes_and_missing_paths_are_refused(tree: Path, sub_path: str, says: str):
    with pytest.raises(ValueError) as info:
        image_volumes.resolve_sub_path(str(tree), sub_path)
    assert says in str(info.value)


def test_volume_names_the_mount_the_sub_path_and_the_image(tree: Path):
    mount = pb.Mount(container_path="/vol", image=pb.ImageSpec(image="example.test/data:1"), image_sub_path="data/up")
    with pytest.raises(InvalidArgument) as info:
        image_volumes.volume(mount, "sha256:" + "a" * 64, tree)
    assert str(info.value).startswith("image volume /vol: image_sub_path 'data/up' of image example.test/data:1: "
                                      "escapes the image")
    mount.image_sub_path = "data/relative"
    volume = image_volumes.volume(mount, "sha256:" + "a" * 64, tree)
    assert volume.source == str(tree / "data" / "sub")
    mount.image_sub_path = ""
    assert image_volumes.volume(mount, "sha256:" + "a" * 64, tree).source == str(tree)


def test_requested_image_volumes_and_their_checks():
    image = pb.ImageSpec(image="sha256:" + "b" * 64)
    mounts = [pb.Mount(container_path="/h", host_path="/tmp"), pb.Mount(container_path="/i", image=image),
              pb.Mount(container_path="/j", image=image, image_sub_path="a/b")]
    assert image_volumes.requested(mounts) == [1, 2]
    for wrong, says in [
        (pb.Mount(container_path="/i", image=image, host_path="/tmp"), "an image volume has no host path"),
        (pb.Mount(container_path="/h", host_path="/tmp", image_sub_path="a"), "without an image"),
        (pb.Mount(container_path="/i", image=image, image_sub_path="/a"), "must be relative"),
    ]:
        with pytest.raises(InvalidArgument, match=says):
            image_volumes.requested([wrong])


def test_an_image_of_one_layer_gets_an_empty_lower_dir(tmp_path: Path, monkeypatch):
    made: list[tuple[list[str], str, int]] = []
    monkeypatch.setattr(image_volumes.mounts, "mount_overlay",
                        lambda lower, target, *, flags: made.append((list(lower), target, flags)))
    spares = [tmp_path / ".empty-0", tmp_path / ".empty-1"]
    image_volumes.mount_image_tree([Path("/layers/top"), Path("/layers/base")], tmp_path / "0", spares)
    image_volumes.mount_image_tree([Path("/layers/only")], tmp_path / "1", spares)
    image_volumes.mount_image_tree([], tmp_path / "2", spares)
    assert [lower for lower, _, _ in made] == [
        ["/layers/top", "/layers/base"], ["/layers/only", str(spares[0])], [str(spares[0]), str(spares[1])]]
    assert all(spare.is_dir() and not any(spare.iterdir()) for spare in spares)
    read_only = {"MS_RDONLY": 0x1, "MS_NOSUID": 0x2, "MS_NODEV": 0x4, "MS_NOEXEC": 0x8}
    assert all(flags == sum(read_only.values()) for _, _, flags in made)


def test_the_bind_runc_and_crun_get():
    op = MountOp.bind("/run/c/1/image-volumes/0/data", "/vol", readonly=True, recursive=False,
                      flags=image_volumes.BIND_FLAGS, propagation=MS_PRIVATE)
    mounts, _, _, _ = oci.translate_mounts([op], privileged=False)
    assert mounts == [{"destination": "/vol", "type": "bind", "source": "/run/c/1/image-volumes/0/data",
                       "options": ["bind", "ro", "nosuid", "nodev", "noexec", "private"]}]


def test_container_status_reports_the_image_of_an_image_volume():
    config = pb.ContainerConfig(metadata=pb.ContainerMetadata(name="c"))
    record = ContainerRecord(
        id="c" * 64, pod_id="p" * 64, name="k8s_c", config=base64.b64encode(config.SerializeToString()).decode(),
        image_id="sha256:" + "1" * 64, image_ref="busybox", state=CTR_CREATED, created_at=1,
        mounts=[{"container_path": "/h", "host_path": "/tmp", "readonly": False, "propagation": 0,
                 "recursive_read_only": False},
                {"container_path": "/vol", "host_path": "", "readonly": True, "propagation": 0,
                 "recursive_read_only": False, "image": "example.test/data:1", "image_id": "sha256:" + "2" * 64,
                 "image_sub_path": "data"}])
    host, volume = render.container_status(record).mounts
    assert not host.HasField("image") and host.image_sub_path == ""
    assert (volume.image.image, volume.image.image_ref, volume.image_sub_path, volume.readonly) == (
        "example.test/data:1", "sha256:" + "2" * 64, "data", True)
