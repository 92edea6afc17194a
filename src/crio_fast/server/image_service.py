"""ImageService: the image store over CRI."""

from __future__ import annotations

import json

import grpc

from crio_fast.api import api_pb2 as pb
from crio_fast.errors import InvalidArgument
from crio_fast.image.auth import Credentials, credentials_from_cri
from crio_fast.image.manager import ImageInfo
from crio_fast.server.base import ServicerBase
from crio_fast.server.engine import Engine


def _image_proto(info: ImageInfo) -> pb.Image:
    image = pb.Image(
        id=info.record.id,
        repo_tags=info.record.repo_tags,
        repo_digests=info.record.repo_digests,
        size=info.record.size,
        username=info.username,
        pinned=info.record.pinned,
    )
    if info.uid is not None:
        image.uid.value = info.uid
    image.spec.image = info.record.id
    return image


def _credentials(auth: pb.AuthConfig) -> Credentials | None:
    if not (auth.username or auth.password or auth.auth or auth.identity_token or auth.registry_token):
        return None
    try:
        return credentials_from_cri(
            username=auth.username,
            password=auth.password,
            auth=auth.auth,
            server_address=auth.server_address,
            identity_token=auth.identity_token,
            registry_token=auth.registry_token,
        )
    except ValueError as exc:
        raise InvalidArgument(f"PullImage: bad auth config: {exc}") from exc


class ImageServicer(ServicerBase):
    SERVICE = "ImageService"

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    @property
    def images(self):
        return self.engine.images

    async def PullImage(self, request: pb.PullImageRequest, context: grpc.ServicerContext) -> pb.PullImageResponse:
        name = request.image.image
        if not name:
            raise InvalidArgument("PullImage: image name is empty")
        namespace = request.sandbox_config.metadata.namespace if request.HasField("sandbox_config") else ""
        record = await self.images.pull(name, _credentials(request.auth), namespace)
        return pb.PullImageResponse(image_ref=record.id)

    def ImageStatus(self, request: pb.ImageStatusRequest, context: grpc.ServicerContext) -> pb.ImageStatusResponse:
        name = request.image.image
        if not name:
            raise InvalidArgument("ImageStatus: image name is empty")
        info = self.images.info(name)
        if info is None:
            # CRI: an unknown image is an empty response, not an error.
            return pb.ImageStatusResponse()
        response = pb.ImageStatusResponse(image=_image_proto(info))
        if request.verbose:
            response.info["info"] = json.dumps(
                {"imageSpec": info.config, "manifestDigest": info.record.manifest_digest, "layers": info.record.layers}
            )
        return response

    def ListImages(self, request: pb.ListImagesRequest, context: grpc.ServicerContext) -> pb.ListImagesResponse:
        wanted = request.filter.image.image if request.HasField("filter") else ""
        infos = self.images.list(wanted)
        return pb.ListImagesResponse(images=[_image_proto(i) for i in infos])

    async def RemoveImage(self, request: pb.RemoveImageRequest, context: grpc.ServicerContext) -> pb.RemoveImageResponse:
        name = request.image.image
        if not name:
            raise InvalidArgument("RemoveImage: image name is empty")
        await self.engine.remove_image(name)
        return pb.RemoveImageResponse()

    async def ImageFsInfo(self, request: pb.ImageFsInfoRequest, context: grpc.ServicerContext) -> pb.ImageFsInfoResponse:
        usage = await self.images.fs_usage()
        fs = pb.FilesystemUsage(timestamp=usage.timestamp_ns, fs_id=pb.FilesystemIdentifier(mountpoint=usage.mountpoint))
        fs.used_bytes.value = usage.used_bytes
        fs.inodes_used.value = usage.inodes_used
        return pb.ImageFsInfoResponse(image_filesystems=[fs], container_filesystems=[])

