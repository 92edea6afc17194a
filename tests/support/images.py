"""Test images built in Python from Debian's busybox-static, pushed over the registry API.

The base layer holds /bin/busybox with symlinks for common applets,
/etc/passwd and /etc/group (root, uid/gid 1000 "tester" with the
supplementary group 1001 "testextra", nobody), /tmp (1777), /root, /home/tester
and empty mount points (/proc, /sys, /dev). Everything is deterministic (fixed
mtimes, sorted entries, gzip without timestamps), so the same options give the
same digests in every run.

Typical use::

    pushed = push_image(registry, "test/busybox", "latest", compression="zstd",
                        extra_layers=[LayerBuilder().file("/etc/motd", b"hi").whiteout("/etc/issue")],
                        cmd=["sh", "-c", "echo hello"])
    pushed.reference        # "127.0.0.1:PORT/test/busybox:latest"
    pushed.manifest_digest  # what the registry stored
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import subprocess
import tarfile
import urllib.error
import urllib.parse
import urllib.request
from base64 import b64encode
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Iterable

import zstandard

from crio_fast.image.platforms import node_platform
from crio_fast.image.registry_auth import parse_www_authenticate

BUSYBOX_PATH = Path("/bin/busybox")
FIXED_MTIME = 1_700_000_000  # deterministic layers: the same bytes, hence digests, every run
TESTER_UID = 1000
TESTER_GID = 1000
TESTER_EXTRA_GID = 1001
PLATFORM_MARKER = "/etc/test-platform"

# Applets linked into /bin (kept only if this busybox build has them).
APPLETS = (
    "sh ash ls cat echo sleep id env nc httpd true false printf head tail wc sha256sum md5sum dd "
    "hostname mount umount ps grep sed awk touch mkdir rmdir rm cp mv ln chmod chown stat test [ sort "
    "uniq cut tr date find xargs kill wget ip ifconfig netstat nslookup uname whoami groups readlink "
    "realpath tee yes seq timeout nproc pwd basename dirname sync mkfifo which ping tar gzip gunzip "
    "base64 hexdump od expr usleep pidof df du free top su nsenter unshare cmp diff vi less more"
).split()

PASSWD = (
    "root:x:0:0:root:/root:/bin/sh\n"
    f"tester:x:{TESTER_UID}:{TESTER_GID}:tester:/home/tester:/bin/sh\n"
    "nobody:x:65534:65534:nobody:/nonexistent:/bin/false\n"
)
GROUP = (
    "root:x:0:\n"
    f"tester:x:{TESTER_GID}:\n"
    f"testextra:x:{TESTER_EXTRA_GID}:tester\n"
    "nogroup:x:65534:\n"
)

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"

LAYER_MEDIA_TYPES = {
    ("oci", "none"): "application/vnd.oci.image.layer.v1.tar",
    ("oci", "gzip"): "application/vnd.oci.image.layer.v1.tar+gzip",
    ("oci", "zstd"): "application/vnd.oci.image.layer.v1.tar+zstd",
    ("docker", "none"): "application/vnd.docker.image.rootfs.diff.tar",
    ("docker", "gzip"): "application/vnd.docker.image.rootfs.diff.tar.gzip",
}


def sha256_digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


# -- layers -----------------------------------------------------------------------------


class LayerBuilder:
    """An uncompressed layer tar assembled in memory; paths are written relative ("etc/x")."""

    def __init__(self) -> None:
        self._entries: dict[str, tuple[tarfile.TarInfo, bytes | None]] = {}

    @staticmethod
    def _name(path: str) -> str:
        name = path.strip("/")
        if not name:
            raise ValueError(f"layer path {path!r} is empty")
        return name

    def _add(self, info: tarfile.TarInfo, data: bytes | None = None) -> "LayerBuilder":
        info.mtime = FIXED_MTIME
        info.uname = info.gname = ""
        self._entries[info.name] = (info, data)
        return self

    def dir(self, path: str, mode: int = 0o755, uid: int = 0, gid: int = 0) -> "LayerBuilder":
        info = tarfile.TarInfo(self._name(path))
        info.type, info.mode, info.uid, info.gid = tarfile.DIRTYPE, mode, uid, gid
        return self._add(info)

    def file(self, path: str, data: bytes | str, mode: int = 0o644, uid: int = 0, gid: int = 0) -> "LayerBuilder":
        payload = data.encode() if isinstance(data, str) else data
        info = tarfile.TarInfo(self._name(path))
        info.type, info.mode, info.uid, info.gid, info.size = tarfile.REGTYPE, mode, uid, gid, len(payload)
        return self._add(info, payload)

    def symlink(self, path: str, target: str) -> "LayerBuilder":
        info = tarfile.TarInfo(self._name(path))
        info.type, info.mode, info.linkname = tarfile.SYMTYPE, 0o777, target
        return self._add(info)

    def hardlink(self, path: str, target: str) -> "LayerBuilder":
        info = tarfile.TarInfo(self._name(path))
        info.type, info.mode, info.linkname = tarfile.LNKTYPE, 0o644, self._name(target)
        return self._add(info)

    def whiteout(self, path: str) -> "LayerBuilder":
        """Delete ``path`` from lower layers (an empty ".wh.NAME" file)."""
        parent, _, name = self._name(path).rpartition("/")
        return self.file(f"{parent}/.wh.{name}" if parent else f".wh.{name}", b"")

    def opaque(self, directory: str) -> "LayerBuilder":
        """Hide everything lower layers have in ``directory``."""
        return self.file(f"{self._name(directory)}/.wh..wh..opq", b"")

    def tar(self) -> bytes:
        out = io.BytesIO()
        with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as archive:
            for name in sorted(self._entries):
                info, data = self._entries[name]
                archive.addfile(info, io.BytesIO(data) if data is not None else None)
        return out.getvalue()


@lru_cache(maxsize=1)
def available_applets() -> tuple[str, ...]:
    result = subprocess.run([str(BUSYBOX_PATH), "--list"], capture_output=True, text=True, check=True, timeout=30)
    present = set(result.stdout.split())
    return tuple(a for a in APPLETS if a in present)


def busybox_layer(marker: str | None = None) -> LayerBuilder:
    """The base root filesystem: busybox, applet links, users and groups, /tmp."""
    if not BUSYBOX_PATH.is_file():
        raise RuntimeError(f"{BUSYBOX_PATH} not found: install the Debian package busybox-static")
    layer = LayerBuilder()
    for directory in ("bin", "etc", "home", "var", "usr", "proc", "sys", "dev", "run"):
        layer.dir(directory)
    layer.dir("tmp", mode=0o1777).dir("var/tmp", mode=0o1777).dir("root", mode=0o700)
    layer.dir("home/tester", mode=0o755, uid=TESTER_UID, gid=TESTER_GID)
    layer.file("bin/busybox", BUSYBOX_PATH.read_bytes(), mode=0o755)
    for applet in available_applets():
        layer.symlink(f"bin/{applet}", "busybox")
    layer.file("etc/passwd", PASSWD).file("etc/group", GROUP)
    if marker is not None:
        layer.file(PLATFORM_MARKER, marker + "\n")
    return layer


@dataclass(frozen=True)
class Layer:
    """A layer ready to push: its compressed blob and both digests."""

    blob: bytes
    media_type: str
    digest: str  # of the blob as pushed
    diff_id: str  # of the uncompressed tar

    @property
    def size(self) -> int:
        return len(self.blob)


def compress(data: bytes, compression: str) -> bytes:
    if compression == "gzip":
        return gzip.compress(data, compresslevel=6, mtime=0)
    if compression == "zstd":
        return zstandard.ZstdCompressor(level=3).compress(data)
    if compression == "none":
        return data
    raise ValueError(f"unknown compression {compression!r} (gzip, zstd, none)")


def make_layer(builder: LayerBuilder | bytes, compression: str = "gzip", media: str = "oci") -> Layer:
    tar = builder.tar() if isinstance(builder, LayerBuilder) else builder
    media_type = LAYER_MEDIA_TYPES.get((media, compression))
    if media_type is None:
        raise ValueError(f"no {media} layer media type for compression {compression!r}")
    blob = compress(tar, compression)
    return Layer(blob, media_type, sha256_digest(blob), sha256_digest(tar))


@lru_cache(maxsize=8)
def _cached_busybox_layer(compression: str, media: str, marker: str | None) -> Layer:
    return make_layer(busybox_layer(marker), compression, media)


# -- images -----------------------------------------------------------------------------


@dataclass(frozen=True)
class BuiltImage:
    manifest: bytes
    manifest_media_type: str
    config: bytes
    layers: tuple[Layer, ...]

    @property
    def digest(self) -> str:
        return sha256_digest(self.manifest)

    @property
    def config_digest(self) -> str:
        return sha256_digest(self.config)


def image_config(
    diff_ids: Iterable[str],
    *,
    architecture: str,
    os: str = "linux",
    variant: str | None = None,
    entrypoint: list[str] | None = None,
    cmd: list[str] | None = None,
    env: list[str] | None = None,
    working_dir: str | None = None,
    user: str | None = None,
    exposed_ports: Iterable[str] | None = None,
    volumes: Iterable[str] | None = None,
    stop_signal: str | None = None,
    labels: dict[str, str] | None = None,
) -> dict[str, Any]:
    config: dict[str, Any] = {"Env": env if env is not None else ["PATH=/bin:/usr/bin:/sbin:/usr/sbin"]}
    if entrypoint is not None:
        config["Entrypoint"] = entrypoint
    config["Cmd"] = cmd if cmd is not None else ["sh"]
    if working_dir is not None:
        config["WorkingDir"] = working_dir
    if user is not None:
        config["User"] = user
    if exposed_ports:
        config["ExposedPorts"] = {port: {} for port in exposed_ports}
    if volumes:
        config["Volumes"] = {volume: {} for volume in volumes}
    if stop_signal is not None:
        config["StopSignal"] = stop_signal
    if labels:
        config["Labels"] = dict(labels)
    document: dict[str, Any] = {
        "created": "2023-11-14T22:13:20Z",
        "architecture": architecture,
        "os": os,
        "config": config,
        "rootfs": {"type": "layers", "diff_ids": list(diff_ids)},
        "history": [{"created": "2023-11-14T22:13:20Z", "created_by": "crio-fast tests"}],
    }
    if variant:
        document["variant"] = variant
    return document


def build_image(layers: Iterable[Layer], *, media: str = "oci", architecture: str | None = None, variant: str | None = None, **config: Any) -> BuiltImage:
    """Config and manifest for ``layers``; config options as in :func:`image_config`."""
    layers = tuple(layers)
    if architecture is None:
        native = node_platform()
        architecture, variant = native.architecture, variant or native.variant
    config_bytes = json.dumps(
        image_config([l.diff_id for l in layers], architecture=architecture, variant=variant, **config),
        sort_keys=True,
        separators=(",", ":"),
    ).encode()
    manifest_type, config_type = (OCI_MANIFEST, OCI_CONFIG) if media == "oci" else (DOCKER_MANIFEST, DOCKER_CONFIG)
    manifest = {
        "schemaVersion": 2,
        "mediaType": manifest_type,
        "config": {"mediaType": config_type, "digest": sha256_digest(config_bytes), "size": len(config_bytes)},
        "layers": [{"mediaType": l.media_type, "digest": l.digest, "size": l.size} for l in layers],
    }
    return BuiltImage(json.dumps(manifest, indent=2).encode(), manifest_type, config_bytes, layers)


# -- pushing ----------------------------------------------------------------------------


class PushError(RuntimeError):
    pass


class RegistryPusher:
    """Just enough of the push side of the registry API, over urllib."""

    def __init__(self, base_url: str, auth: tuple[str, str] | None = None) -> None:
        self.base_url = base_url.rstrip("/")
        self.auth = auth
        self._bearer: str | None = None

    def _authorization(self) -> dict[str, str]:
        if self._bearer:
            return {"Authorization": f"Bearer {self._bearer}"}
        if self.auth:
            return {"Authorization": "Basic " + b64encode(f"{self.auth[0]}:{self.auth[1]}".encode()).decode()}
        return {}

    def _fetch_bearer(self, header: str, repository: str) -> bool:
        """Token dance for registries that answer with a Bearer challenge; False when there is none."""
        challenge = next((c for c in parse_www_authenticate(header) if c.scheme == "bearer"), None)
        if challenge is None or "realm" not in challenge.params:
            return False
        query = {"scope": f"repository:{repository}:pull,push"}
        if "service" in challenge.params:
            query["service"] = challenge.params["service"]
        request = urllib.request.Request(challenge.params["realm"] + "?" + urllib.parse.urlencode(query))
        if self.auth:
            request.add_header("Authorization", "Basic " + b64encode(f"{self.auth[0]}:{self.auth[1]}".encode()).decode())
        with urllib.request.urlopen(request, timeout=30) as response:
            document = json.load(response)
        self._bearer = document.get("token") or document.get("access_token")
        return bool(self._bearer)

    def request(
        self, method: str, url: str, repository: str, data: bytes | None = None, headers: dict[str, str] | None = None
    ) -> tuple[int, dict[str, str], bytes]:
        if url.startswith("/"):
            url = self.base_url + url
        for attempt in range(2):
            request = urllib.request.Request(url, data=data, method=method, headers={**(headers or {}), **self._authorization()})
            try:
                with urllib.request.urlopen(request, timeout=60) as response:
                    return response.status, dict(response.headers), response.read()
            except urllib.error.HTTPError as exc:
                body = exc.read()
                if exc.code == 401 and attempt == 0 and self._fetch_bearer(exc.headers.get("WWW-Authenticate", ""), repository):
                    continue
                if exc.code == 404 and method == "HEAD":
                    return 404, dict(exc.headers), b""
                raise PushError(f"{method} {url}: HTTP {exc.code}: {body.decode(errors='replace')[:500]}") from exc
        raise PushError(f"{method} {url}: still unauthorized after fetching a token")

    def push_blob(self, repository: str, data: bytes, digest: str | None = None) -> str:
        digest = digest or sha256_digest(data)
        status, _, _ = self.request("HEAD", f"/v2/{repository}/blobs/{digest}", repository)
        if status == 200:
            return digest
        status, headers, _ = self.request("POST", f"/v2/{repository}/blobs/uploads/", repository, data=b"")
        location = headers.get("Location")
        if status != 202 or not location:
            raise PushError(f"starting upload to {repository}: HTTP {status}, Location {location!r}")
        upload_url = urllib.parse.urljoin(self.base_url + "/", location)
        separator = "&" if "?" in upload_url else "?"
        status, _, _ = self.request(
            "PUT",
            f"{upload_url}{separator}digest={urllib.parse.quote(digest)}",
            repository,
            data=data,
            headers={"Content-Type": "application/octet-stream", "Content-Length": str(len(data))},
        )
        if status != 201:
            raise PushError(f"finishing upload of {digest} to {repository}: HTTP {status}")
        return digest

    def push_manifest(self, repository: str, reference: str, body: bytes, media_type: str) -> str:
        status, headers, _ = self.request(
            "PUT", f"/v2/{repository}/manifests/{reference}", repository, data=body, headers={"Content-Type": media_type}
        )
        if status != 201:
            raise PushError(f"PUT manifest {repository}:{reference}: HTTP {status}")
        digest = headers.get("Docker-Content-Digest") or sha256_digest(body)
        if digest != sha256_digest(body):
            raise PushError(f"registry stored manifest {repository}:{reference} as {digest}, expected {sha256_digest(body)}")
        return digest

    def push_built(self, repository: str, reference: str, image: BuiltImage) -> str:
        for layer in image.layers:
            self.push_blob(repository, layer.blob, layer.digest)
        self.push_blob(repository, image.config, image.config_digest)
        return self.push_manifest(repository, reference, image.manifest, image.manifest_media_type)


@dataclass
class PushedImage:
    registry: str  # host:port
    repository: str
    tag: str
    manifest_digest: str  # the image manifest for this node's platform
    manifest_media_type: str
    config_digest: str
    layer_digests: list[str]
    diff_ids: list[str]
    index_digest: str | None = None
    platforms: dict[str, str] = field(default_factory=dict)  # "linux/arm64/v8" -> manifest digest
    config: dict[str, Any] = field(default_factory=dict)

    @property
    def reference(self) -> str:
        return f"{self.registry}/{self.repository}:{self.tag}"

    @property
    def repo_digest(self) -> str:
        """What the tag points to: the index when multi-arch, else the manifest."""
        return self.index_digest or self.manifest_digest

    @property
    def digest_reference(self) -> str:
        return f"{self.registry}/{self.repository}@{self.repo_digest}"


def _platform_string(architecture: str, variant: str | None) -> str:
    return "/".join(p for p in ("linux", architecture, variant) if p)


def push_image(
    registry: Any,
    repository: str,
    tag: str = "latest",
    *,
    compression: str = "gzip",
    media: str = "oci",
    base: bool = True,
    extra_layers: Iterable[LayerBuilder | Layer] = (),
    multi_arch: bool = False,
    auth: tuple[str, str] | None = None,
    **config: Any,
) -> PushedImage:
    """Build and push an image to ``registry`` (a RegistryServer, or a base URL string).

    ``base`` adds the busybox layer first; ``extra_layers`` follow (builders
    are compressed like the base). ``multi_arch`` pushes an index (OCI index
    or Docker manifest list per ``media``) with this node's image plus one for
    a foreign architecture whose only content is a marker file, listed first.
    Config options (entrypoint, cmd, env, working_dir, user, exposed_ports,
    volumes, stop_signal, labels) go to :func:`image_config`.
    """
    base_url = registry if isinstance(registry, str) else registry.url
    if auth is None and not isinstance(registry, str):
        auth = registry.auth
    host = urllib.parse.urlsplit(base_url).netloc
    pusher = RegistryPusher(base_url, auth)
    native = node_platform()

    def layers_for(marker: str | None, with_base: bool) -> list[Layer]:
        out = [_cached_busybox_layer(compression, media, marker)] if with_base else []
        for extra in extra_layers:
            out.append(extra if isinstance(extra, Layer) else make_layer(extra, compression, media))
        return out

    marker = _platform_string(native.architecture, native.variant) if multi_arch else None
    image = build_image(layers_for(marker, base), media=media, architecture=native.architecture, variant=native.variant, **config)
    if not multi_arch:
        digest = pusher.push_built(repository, tag, image)
        return PushedImage(
            host, repository, tag, digest, image.manifest_media_type, image.config_digest,
            [l.digest for l in image.layers], [l.diff_id for l in image.layers], config=json.loads(image.config),
        )

    foreign_arch, foreign_variant = ("amd64", None) if native.architecture != "amd64" else ("arm64", "v8")
    foreign_marker = _platform_string(foreign_arch, foreign_variant)
    foreign_layer = make_layer(LayerBuilder().dir("etc").file(PLATFORM_MARKER, foreign_marker + "\n"), compression, media)
    foreign = build_image([foreign_layer], media=media, architecture=foreign_arch, variant=foreign_variant, **config)
    native_digest = pusher.push_built(repository, image.digest, image)
    foreign_digest = pusher.push_built(repository, foreign.digest, foreign)

    def entry(built: BuiltImage, architecture: str, variant: str | None) -> dict[str, Any]:
        platform = {"architecture": architecture, "os": "linux"}
        if variant:
            platform["variant"] = variant
        return {"mediaType": built.manifest_media_type, "digest": built.digest, "size": len(built.manifest), "platform": platform}

    index_type = OCI_INDEX if media == "oci" else DOCKER_LIST
    index = {
        "schemaVersion": 2,
        "mediaType": index_type,
        "manifests": [entry(foreign, foreign_arch, foreign_variant), entry(image, native.architecture, native.variant)],
    }
    index_digest = pusher.push_manifest(repository, tag, json.dumps(index, indent=2).encode(), index_type)
    return PushedImage(
        host, repository, tag, native_digest, image.manifest_media_type, image.config_digest,
        [l.digest for l in image.layers], [l.diff_id for l in image.layers],
        index_digest=index_digest,
        platforms={
            _platform_string(native.architecture, native.variant): native_digest,
            foreign_marker: foreign_digest,
        },
        config=json.loads(image.config),
    )


__all__ = [
    "BuiltImage",
    "Layer",
    "LayerBuilder",
    "PushedImage",
    "RegistryPusher",
    "busybox_layer",
    "build_image",
    "image_config",
    "make_layer",
    "push_image",
]
