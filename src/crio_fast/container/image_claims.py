"""The images containers use: the one each runs and those it mounts as image volumes.

CreateContainer looks its images up and reserves the container (which records them) while
RemoveImage cannot check for users; RemoveImage checks and removes while no create can claim.
One lock for both, so neither sees the other half done.
"""

from __future__ import annotations

import contextlib
import threading
from pathlib import Path
from typing import Iterator, Mapping

from crio_fast.api import api_pb2 as pb
from crio_fast.container import image_volumes
from crio_fast.container.storage import ContainerStorage
from crio_fast.errors import FailedPrecondition, NotFound, shown
from crio_fast.image.manager import ImageInfo, ImageManager
from crio_fast.state.records import ContainerRecord, StateStore


class ImageClaims:
    def __init__(self, images: ImageManager, state: StateStore, files: ContainerStorage) -> None:
        self.images = images
        self.state = state
        self.files = files
        self._lock = threading.Lock()

    @contextlib.contextmanager
    def claiming(self, config: pb.ContainerConfig) -> Iterator[tuple[ImageInfo, dict[int, ImageInfo]]]:
        """The container's image and its image volumes' images (by index in its mounts), NotFound for one
        not pulled; the caller reserves the container inside the block."""
        volume_indexes = image_volumes.requested(config.mounts)
        with self._lock:
            image = self.images.info(config.image.image)
            if image is None:
                raise NotFound(f"image {shown(config.image.image)} not found: pull it first")
            yield image, {index: self._volume_image(config.mounts[index]) for index in volume_indexes}

    def _volume_image(self, m: pb.Mount) -> ImageInfo:
        info = self.images.info(m.image.image)
        if info is None:
            raise NotFound(f"image {shown(m.image.image)} of the image volume at {shown(m.container_path)} not found: "
                           "pull it first")
        return info

    def layer_dirs(self, image: ImageInfo) -> list[Path]:
        """The image's layers in the store, top-most first."""
        return [self.images.store.layer_diff(c) for c in reversed(image.record.layers)]

    def mount_volumes(self, record: ContainerRecord, config: pb.ContainerConfig,
                      volume_images: Mapping[int, ImageInfo]) -> dict[int, image_volumes.ImageVolume]:
        """The request's image volumes mounted on the host, by their index in its mounts; what is mounted
        goes with the container's files (storage.remove) if the create fails after this."""
        volumes = {}
        for index, info in volume_images.items():
            m = config.mounts[index]
            try:
                root = self.files.mount_image_volume(record.id, index, self.layer_dirs(info))
            except OSError as exc:
                raise FailedPrecondition(f"image volume {shown(m.container_path)} of image {shown(m.image.image)}: "
                                         f"{exc}") from exc
            volumes[index] = image_volumes.volume(m, info.record.id, root)
        return volumes

    @contextlib.contextmanager
    def unused(self, image_id: str, name: str) -> Iterator[None]:
        """Hold off claims while the caller removes ``image_id`` (asked for as ``name``); FailedPrecondition
        naming a container that runs the image or mounts it as a volume, whatever its state: its files
        need the layers until it is removed."""
        with self._lock:
            for record in self.state.containers.values():
                if record.image_id == image_id or image_id in record.volume_image_ids:
                    use = "runs it" if record.image_id == image_id else "mounts it as an image volume"
                    raise FailedPrecondition(f"image {name} ({image_id}) is in use: container {record.id} "
                                             f"({record.name}) {use}")
            yield
