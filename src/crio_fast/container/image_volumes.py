"""Image volumes (CRI ``Mount.image``, Kubernetes' ``image`` volume source): an image's files in a
container, read-only, straight from the shared layer store.

A volume is a read-only overlay of the image's layers, lower dirs only (overlayfs then refuses every
write itself), mounted on the host under the container's run dir (container/storage.py) and bound in
at the mount's ``container_path`` like any volume; ``image_sub_path`` picks a path inside it, resolved
here against the merged tree. Why on the host rather than by the monitor inside the container: the sub
path has to be resolved in the merged tree before anything is bound, and runc and crun take a bind
source in config.json, so one mount serves both kinds of handler. It is made before the native child
is cloned, so the child's copy of the host's mounts has it whatever the host's propagation, and,
being a host mount under the container's own dir, it is released with the container's files by path:
after a failed create, a removal, or a daemon restart in between alike.

The bind is read-only, nosuid, nodev and noexec. The CRI says every image volume is read-only, and the
Kubernetes documentation of the ``image`` volume promises ``ro`` and ``noexec``; nosuid and nodev follow:
an image's set-user-ID files and device nodes mean nothing as data.
"""

from __future__ import annotations

import dataclasses
import os
import stat
from pathlib import Path
from typing import Sequence

from crio_fast.api import api_pb2 as pb
from crio_fast.errors import InvalidArgument
from crio_fast.runtime import mounts
from crio_fast.runtime.plan import MS_NODEV, MS_NOEXEC, MS_NOSUID, MS_RDONLY

# On the container's bind (MS_RDONLY comes with readonly=True) and on the host's overlay.
BIND_FLAGS = MS_NOSUID | MS_NODEV | MS_NOEXEC
# The kernel's own limit on symlinks followed in one path walk (ELOOP past it).
MAX_SYMLINKS = 40
# overlayfs without an upper dir wants at least this many lower dirs.
MIN_LOWER_DIRS = 2


@dataclasses.dataclass(frozen=True)
class ImageVolume:
    """One image volume of a container, mounted on the host."""

    container_path: str
    image: str  # as the request named it
    image_id: str
    sub_path: str  # as the request gave it
    source: str  # what the container's bind takes: the overlay's root, or the sub path inside it


def requested(mounts_: Sequence[pb.Mount]) -> list[int]:
    """The indexes of the image volumes among a request's mounts, after the checks that need no image:
    no host_path beside an image, no image_sub_path without one, a relative sub path."""
    wanted = []
    for index, m in enumerate(mounts_):
        if not m.image.image:
            if m.image_sub_path:
                raise InvalidArgument(f"mount {m.container_path}: image_sub_path {m.image_sub_path!r} "
                                      "without an image")
            continue
        if m.host_path:
            raise InvalidArgument(f"mount {m.container_path}: image {m.image.image!r} and host_path "
                                  f"{m.host_path!r} given; an image volume has no host path")
        if m.image_sub_path.startswith("/"):
            raise InvalidArgument(f"image volume {m.container_path}: image_sub_path {m.image_sub_path!r} "
                                  "must be relative to the image's root")
        wanted.append(index)
    return wanted


def mount_image_tree(layer_dirs: Sequence[Path], target: Path, spare_dirs: Sequence[Path]) -> None:
    """The image's layers (top-most first) as a read-only overlay on ``target``. An image of fewer layers
    than overlayfs takes without an upper dir gets empty ``spare_dirs`` (made here) under them."""
    lower = [str(d) for d in layer_dirs]
    for spare in spare_dirs[:max(0, MIN_LOWER_DIRS - len(lower))]:
        spare.mkdir(exist_ok=True)
        lower.append(str(spare))
    mounts.mount_overlay(lower, str(target), flags=MS_RDONLY | BIND_FLAGS)


def resolve_sub_path(root: str, sub_path: str) -> str:
    """``sub_path`` in the image tree at ``root``, as a path relative to it with no symlink left in it
    ("" for the root). The tree is a read-only overlay of our own, so what is resolved stays resolved.

    Symlinks are followed as a container running the image sees them: an absolute target starts at the
    image's root. A ``..`` above the root, in ``sub_path`` or in a link's target, is an escape. ValueError
    saying why for an escape and for a path that is not there."""
    pending = list(reversed(sub_path.split("/")))  # a stack: the next component last
    resolved: list[str] = []
    followed = ""  # the last symlink followed, for the message of an escape
    links = 0
    while pending:
        name = pending.pop()
        if name in ("", "."):
            continue
        if name == "..":
            if not resolved:
                raise ValueError("escapes the image: '..' above its root" + followed)
            resolved.pop()
            continue
        path = os.path.join(root, *resolved, name)
        try:
            mode = os.lstat(path).st_mode
        except (FileNotFoundError, NotADirectoryError):
            raise ValueError(f"{'/'.join([*resolved, name])!r} does not exist") from None
        if not stat.S_ISLNK(mode):
            resolved.append(name)
            continue
        links += 1
        if links > MAX_SYMLINKS:
            raise ValueError(f"more than {MAX_SYMLINKS} symbolic links to follow")
        target = os.readlink(path)
        followed = f", following the symlink {'/'.join([*resolved, name])!r} -> {target!r}"
        if target.startswith("/"):
            resolved = []
        pending.extend(reversed(target.split("/")))
    return "/".join(resolved)


def volume(m: pb.Mount, image_id: str, root: Path) -> ImageVolume:
    """The image volume of mount ``m``, its image mounted at ``root``: the sub path resolved in it."""
    try:
        inside = resolve_sub_path(str(root), m.image_sub_path)
    except ValueError as exc:
        raise InvalidArgument(f"image volume {m.container_path}: image_sub_path {m.image_sub_path!r} of image "
                              f"{m.image.image}: {exc}") from None
    return ImageVolume(container_path=m.container_path, image=m.image.image, image_id=image_id,
                       sub_path=m.image_sub_path, source=str(root / inside) if inside else str(root))
