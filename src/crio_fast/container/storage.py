"""Where a container's files live on the node: its writable layer, the bundle an OCI runtime gets,
its image volumes, and the per-image layer that gives the pod's /etc files a place to be bound onto.

    <root>/containers/<id>/{upper,work}        the writable layer (kept across daemon restarts)
    <runroot>/containers/<id>/{config.json,rootfs}   the bundle of an OCI runtime's container
    <runroot>/containers/<id>/image-volumes/<n>      the image volume of the request's mount n, a
                                               read-only overlay (container/image_volumes.py)
    <runroot>/containers/.rootfs               where every native child mounts its rootfs (its own
                                               mount namespace), so a native create makes no bundle
    <runroot>/mount-targets/<image>            image_files.make_mount_targets_layer
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

from crio_fast.config import Config
from crio_fast.container import image_files, image_volumes
from crio_fast.runtime import mounts
from crio_fast.runtime.plan import Overlay

log = logging.getLogger("crio_fast.container")


class ContainerStorage:
    def __init__(self, config: Config) -> None:
        self.layers = Path(config.crio.root) / "containers"
        self.bundles = Path(config.crio.runroot) / "containers"
        self.native_rootfs_target = self.bundles / ".rootfs"
        self.mount_targets = Path(config.crio.runroot) / "mount-targets"
        for directory in (self.layers, self.bundles, self.native_rootfs_target, self.mount_targets):
            directory.mkdir(parents=True, exist_ok=True)

    def writable_layer_dirs(self, container_id: str) -> list[str]:
        """The writable layer's directories, parents first (made in this order)."""
        layer = self.layers / container_id
        return [str(layer), str(layer / "upper"), str(layer / "work")]

    def rootfs_overlay(self, container_id: str, image_id: str, layer_dirs: list[Path], *, bundle: bool,
                       make_dirs: bool = True) -> Overlay:
        """The container's writable layer over the image's layers, mounted on its bundle's rootfs
        (``bundle``: an OCI runtime's container) or on the native target; its directories made here
        unless the native child makes them (``make_dirs`` False)."""
        if make_dirs:
            for directory in self.writable_layer_dirs(container_id):
                os.mkdir(directory)
        if bundle:
            target = self.bundle(container_id) / "rootfs"
            os.makedirs(target)
        else:
            target = self.native_rootfs_target
        layer = self.layers / container_id
        return Overlay(lower=[str(d) for d in self._lower_dirs(image_id, layer_dirs)], target=str(target),
                       upper=str(layer / "upper"), work=str(layer / "work"))

    def bundle(self, container_id: str) -> Path:
        return self.bundles / container_id

    def mount_image_volume(self, container_id: str, index: int, layer_dirs: list[Path]) -> Path:
        """The image of the request's mount ``index`` (its layers top-most first) mounted read-only
        under the container's run dir, on either handler; returns the mount point."""
        volumes = self.bundle(container_id) / "image-volumes"
        target = volumes / str(index)
        os.makedirs(target)
        image_volumes.mount_image_tree(layer_dirs, target,
                                       [volumes / f".empty-{n}" for n in range(image_volumes.MIN_LOWER_DIRS)])
        return target

    def _lower_dirs(self, image_id: str, layer_dirs: list[Path]) -> list[Path]:
        """The overlay's lower dirs, top-most first: the image's layers under its mount-targets layer."""
        try:
            targets = image_files.make_mount_targets_layer(layer_dirs,
                                                           self.mount_targets / image_id.removeprefix("sha256:"))
        except OSError as exc:
            log.warning("image %s: mount-targets layer: %s", image_id[:19], exc)
            targets = None
        return [targets, *layer_dirs] if targets is not None else layer_dirs

    def remove(self, container_id: str) -> None:
        """The container's run dir (what is mounted in it, an OCI rootfs and image volumes, detached from
        the host first) and writable layer."""
        try:
            mounts.detach_all_under(str(self.bundle(container_id)))
        except OSError as exc:
            log.warning("container %s: %s", container_id[:12], exc)
        shutil.rmtree(self.bundle(container_id), ignore_errors=True)
        shutil.rmtree(self.layers / container_id, ignore_errors=True)
