"""Manifests and indexes as the distribution API serves them: parsed and checked.

:meth:`Manifest.parse` accepts OCI and Docker schema 2 image manifests and
indexes (manifest lists) and refuses the rest with a reason a user can act
on: schema 1 is deprecated, and an artifact whose config is not an image
config is not something a container can run. The raw bytes are kept
because a manifest's digest covers exactly those bytes, not a
re-serialization of the parsed document.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any, Mapping

from crio_fast.image.reference import InvalidReference, parse_digest
from crio_fast.image.registry_errors import InvalidManifest, UnsupportedManifest

MEDIA_TYPE_OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MEDIA_TYPE_OCI_INDEX = "application/vnd.oci.image.index.v1+json"
MEDIA_TYPE_DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
MEDIA_TYPE_DOCKER_MANIFEST_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
MEDIA_TYPE_DOCKER_SCHEMA1 = "application/vnd.docker.distribution.manifest.v1+json"
MEDIA_TYPE_DOCKER_SCHEMA1_SIGNED = "application/vnd.docker.distribution.manifest.v1+prettyjws"
MEDIA_TYPE_OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
MEDIA_TYPE_DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"

IMAGE_MANIFEST_TYPES = (MEDIA_TYPE_OCI_MANIFEST, MEDIA_TYPE_DOCKER_MANIFEST)
INDEX_TYPES = (MEDIA_TYPE_OCI_INDEX, MEDIA_TYPE_DOCKER_MANIFEST_LIST)
SCHEMA1_TYPES = (MEDIA_TYPE_DOCKER_SCHEMA1, MEDIA_TYPE_DOCKER_SCHEMA1_SIGNED)
CONFIG_TYPES = (MEDIA_TYPE_OCI_CONFIG, MEDIA_TYPE_DOCKER_CONFIG)
MANIFEST_ACCEPT = ", ".join(IMAGE_MANIFEST_TYPES + INDEX_TYPES)

MAX_MANIFEST_SIZE = 4 << 20  # what containers/image accepts too


@dataclass(frozen=True)
class Platform:
    os: str
    architecture: str
    variant: str | None = None

    def __str__(self) -> str:
        return "/".join(p for p in (self.os, self.architecture, self.variant) if p)


@dataclass(frozen=True)
class Descriptor:
    media_type: str
    digest: str
    size: int
    urls: tuple[str, ...] = ()
    platform: Platform | None = None
    annotations: Mapping[str, str] = field(default_factory=dict, compare=False, hash=False)


def _parse_descriptor(value: Any, where: str, host: str, repository: str) -> Descriptor:
    if not isinstance(value, dict):
        raise InvalidManifest(f"{where} is not a JSON object", host=host, repository=repository)
    media_type = value.get("mediaType", "")
    digest = value.get("digest")
    size = value.get("size")
    if not isinstance(media_type, str) or not isinstance(digest, str):
        raise InvalidManifest(f"{where}: mediaType and digest must be strings", host=host, repository=repository)
    try:
        parse_digest(digest)
    except InvalidReference as exc:
        raise InvalidManifest(f"{where}: {exc}", host=host, repository=repository) from exc
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise InvalidManifest(f"{where}: size must be a non-negative integer", host=host, repository=repository)
    urls = value.get("urls") or []
    if not isinstance(urls, list) or not all(isinstance(u, str) for u in urls):
        raise InvalidManifest(f"{where}: urls must be a list of strings", host=host, repository=repository)
    platform = None
    raw_platform = value.get("platform")
    if isinstance(raw_platform, dict):
        platform = Platform(
            str(raw_platform.get("os", "")), str(raw_platform.get("architecture", "")), raw_platform.get("variant") or None
        )
    annotations = value.get("annotations") or {}
    if not isinstance(annotations, dict):
        annotations = {}
    return Descriptor(media_type, digest, size, tuple(urls), platform, annotations)


def compute_digest(data: bytes, algorithm: str = "sha256") -> str:
    return f"{algorithm}:{hashlib.new(algorithm, data).hexdigest()}"


@dataclass(frozen=True)
class Manifest:
    """A fetched manifest or index: exact bytes, their digest, and the parsed document."""

    media_type: str
    digest: str
    raw: bytes
    document: Mapping[str, Any] = field(compare=False, hash=False)
    config: Descriptor | None = None  # image manifests only
    layers: tuple[Descriptor, ...] = ()  # image manifests only
    manifests: tuple[Descriptor, ...] = ()  # indexes only

    @property
    def is_index(self) -> bool:
        return self.media_type in INDEX_TYPES

    @classmethod
    def parse(
        cls, raw: bytes, content_type: str = "", digest: str = "", *, host: str = "", repository: str = ""
    ) -> "Manifest":
        """Parse and check ``raw``; ``content_type`` is the response's Content-Type."""
        header_type = content_type.split(";", 1)[0].strip().lower()
        if header_type in SCHEMA1_TYPES:
            raise _schema1_error(host, repository)
        try:
            document = json.loads(raw)
        except ValueError as exc:
            raise InvalidManifest(f"manifest is not valid JSON: {exc}", host=host, repository=repository) from exc
        if not isinstance(document, dict):
            raise InvalidManifest("manifest is not a JSON object", host=host, repository=repository)
        if document.get("schemaVersion") == 1 or document.get("mediaType") in SCHEMA1_TYPES:
            raise _schema1_error(host, repository)
        if document.get("schemaVersion") != 2:
            raise UnsupportedManifest(
                f"manifest schemaVersion {document.get('schemaVersion')!r} is not supported (only 2)",
                host=host,
                repository=repository,
            )
        media_type = _manifest_media_type(header_type, document)
        if media_type is None:
            shown = document.get("mediaType") or header_type or "none"
            raise UnsupportedManifest(
                f"manifest media type {shown!r} is not an image manifest or index "
                f"(supported: {', '.join(IMAGE_MANIFEST_TYPES + INDEX_TYPES)})",
                host=host,
                repository=repository,
            )
        digest = digest or compute_digest(raw)
        if media_type in INDEX_TYPES:
            entries = document.get("manifests")
            if not isinstance(entries, list):
                raise InvalidManifest("index has no 'manifests' list", host=host, repository=repository)
            manifests = tuple(
                _parse_descriptor(d, f"index entry {i}", host, repository) for i, d in enumerate(entries)
            )
            return cls(media_type, digest, raw, document, manifests=manifests)
        config = _parse_descriptor(document.get("config"), "config descriptor", host, repository)
        if config.media_type not in CONFIG_TYPES:
            raise UnsupportedManifest(
                f"manifest's config media type {config.media_type!r} is not a container image config "
                "(an OCI artifact, not an image?)",
                host=host,
                repository=repository,
            )
        raw_layers = document.get("layers")
        if not isinstance(raw_layers, list):
            raise InvalidManifest("image manifest has no 'layers' list", host=host, repository=repository)
        layers = tuple(_parse_descriptor(d, f"layer {i}", host, repository) for i, d in enumerate(raw_layers))
        return cls(media_type, digest, raw, document, config=config, layers=layers)


def _schema1_error(host: str, repository: str) -> UnsupportedManifest:
    return UnsupportedManifest(
        "the image uses a Docker schema 1 manifest, which is deprecated and not supported; "
        "push it again with a current client (Docker schema 2 or OCI)",
        host=host,
        repository=repository,
    )


def _manifest_media_type(header_type: str, document: Mapping[str, Any]) -> str | None:
    known = IMAGE_MANIFEST_TYPES + INDEX_TYPES
    declared = document.get("mediaType")
    if isinstance(declared, str) and declared in known:
        return declared
    if header_type in known:
        return header_type
    if declared:
        return None  # declares a type we do not pull
    # OCI allows omitting mediaType; the structure tells which it is.
    if "manifests" in document:
        return MEDIA_TYPE_OCI_INDEX
    if "config" in document and "layers" in document:
        return MEDIA_TYPE_OCI_MANIFEST
    return None


__all__ = [
    "CONFIG_TYPES",
    "IMAGE_MANIFEST_TYPES",
    "INDEX_TYPES",
    "MANIFEST_ACCEPT",
    "MAX_MANIFEST_SIZE",
    "MEDIA_TYPE_DOCKER_CONFIG",
    "MEDIA_TYPE_DOCKER_MANIFEST",
    "MEDIA_TYPE_DOCKER_MANIFEST_LIST",
    "MEDIA_TYPE_DOCKER_SCHEMA1",
    "MEDIA_TYPE_DOCKER_SCHEMA1_SIGNED",
    "MEDIA_TYPE_OCI_CONFIG",
    "MEDIA_TYPE_OCI_INDEX",
    "MEDIA_TYPE_OCI_MANIFEST",
    "SCHEMA1_TYPES",
    "Descriptor",
    "Manifest",
    "Platform",
    "compute_digest",
]
