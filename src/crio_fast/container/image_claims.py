"""The images a container is made from, its own and those of its image volumes: looked up for
CreateContainer, mounted as volumes, and claimed against RemoveImage.

A container's record names its images from its reservation on (``image_id``, ``volume_image_ids``);
CreateContainer looks them up and reserves the record under the lock RemoveImage holds while it
checks for users and removes (``unused``), so neither sees the other half done.
"""

from __future__ import annotations

import contextlib
import threading
from pathlib import Path
from typing import Iterator, Mapping

from crio_fast.api import api_pb2 as pb
from crio_fast.container import image_volumes
from crio_fast.container.storage import ContainerStorage
from crio_fast.errors import FailedPrecondition, NotFound
from crio_fast.image.manager import ImageInfo, ImageManager
from crio_fast.state.records import ContainerRecord, StateStore


class ImageClaims:
    def __init__(self, images: ImageManager, state: StateStore, files: ContainerStorage) -> None:
        self.images = images
        self.state = state
        self.files = files
        self.lock = threading.Lock()  # held while looking up and reserving (CreateContainer), and by ``unused``

    def look_up(self, config: pb.ContainerConfig) -> tuple[ImageInfo, dict[int, ImageInfo]]:
        """The container's image and its image volumes' images, by their index in its mounts (NotFound for
        one not pulled). The caller holds ``lock`` until the record that names them is reserved."""
        image = self.images.info(config.image.image)
        if image is None:
            raise NotFound(f"image {config.image.image!r} not found: pull it first")
        return image, {index: self._volume_image(config.mounts[index])
                       for index in image_volumes.requested(config.mounts)}

    def _volume_image(self, m: pb.Mount) -> ImageInfo:
        info = self.images.info(m.image.image)
        if info is None:
            raise NotFound(f"image {m.image.image!r} of the image volume at {m.container_path} not found: pull it first")
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
                raise FailedPrecondition(f"image volume {m.container_path} of image {m.image.image}: {exc}") from exc
            volumes[index] = image_volumes.volume(m, info.record.id, root)
        return volumes

    @contextlib.contextmanager
    def unused(self, image_id: str, name: str) -> Iterator[None]:
        """Hold off CreateContainer's claims on images while the caller removes ``image_id`` (asked for as
        ``name``); FailedPrecondition naming a container that runs the image or mounts it as a volume,
        whatever its state: its files need the layers until it is removed."""
        with self.lock:
            for record in self.state.containers.values():
                if record.image_id == image_id or image_id in record.volume_image_ids:
                    use = "runs it" if record.image_id == image_id else "mounts it as an image volume"
                    raise FailedPrecondition(f"image {name} ({image_id}) is in use: container {record.id} "
                                             f"({record.name}) {use}")
            yield
