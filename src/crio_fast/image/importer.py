"""Loading images from archives, for air-gapped nodes.

Two formats, told apart by their index file:

* an OCI image layout in a tar (``oci-layout`` + ``index.json`` + ``blobs/``),
  as `skopeo copy ... oci-archive:` or `podman save --format oci-archive` write;
* a docker-archive (``manifest.json`` listing Config, RepoTags and Layers),
  as `docker save` writes.

Layers go through the same :class:`~crio_fast.image.ingest.LayerIngest` as
pulls: streamed out of the archive into the extractor, verified, committed.
Before any layer, an ``admit`` callback (the CLI's signature policy check)
is given the names the image will have and its manifest, and may refuse.
"""

from __future__ import annotations

import hashlib
import json
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from crio_fast.image.ingest import LayerIngest
from crio_fast.image.reference import InvalidReference, parse_reference
from crio_fast.image.store import ImageRecord, ImageStore, chain_ids

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
REF_NAME_ANNOTATION = "org.opencontainers.image.ref.name"
CHUNK = 1 << 20


class ArchiveImportError(Exception):
    """The archive is not a loadable image (message says what is wrong)."""


# Called with the image's names and its manifest (None for a docker-archive, which has none) before any
# layer is stored; raises to refuse the image.
Admit = Callable[[list[str], "bytes | None"], None]


@dataclass
class ImportedImage:
    record: ImageRecord
    layers_added: int


def _find_member(archive: tarfile.TarFile, name: str) -> tarfile.TarInfo:
    """A member by name, whether the archive was written with or without a "./" prefix."""
    for candidate in (name, f"./{name}"):
        try:
            return archive.getmember(candidate)
        except KeyError:
            continue
    raise ArchiveImportError(f"archive has no {name}")


def _member_bytes(archive: tarfile.TarFile, name: str, limit: int = 64 << 20) -> bytes:
    member = _find_member(archive, name)
    if member.size > limit:
        raise ArchiveImportError(f"{name} is {member.size} bytes, larger than {limit}")
    f = archive.extractfile(member)
    if f is None:
        raise ArchiveImportError(f"{name} is not a regular file in the archive")
    return f.read()


def _ingest_member(store: ImageStore, archive: tarfile.TarFile, name: str, ingest_args: dict) -> int:
    """Stream one layer member into the store; returns 1 if a layer was added."""
    if store.has_layer(ingest_args["chain_id"]):
        return 0
    f = archive.extractfile(_find_member(archive, name))
    if f is None:
        raise ArchiveImportError(f"layer {name} is not a regular file in the archive")
    ingest = LayerIngest(store, source=name, **ingest_args)
    try:
        while chunk := f.read(CHUNK):
            ingest.feed(chunk)
    except BaseException:
        ingest.abort()
        raise
    ingest.commit()
    return 1


def _blob_name(digest: str) -> str:
    algo, _, hexpart = digest.partition(":")
    return f"blobs/{algo}/{hexpart}"


def _pick_manifest(archive: tarfile.TarFile, index: dict) -> tuple[dict, bytes, list[str]]:
    """From an OCI index, the first image manifest (descending into nested indexes)."""
    for desc in index.get("manifests", []):
        raw = _member_bytes(archive, _blob_name(desc["digest"]))
        _verify(raw, desc["digest"])
        media = desc.get("mediaType") or json.loads(raw).get("mediaType", "")
        names = [desc.get("annotations", {}).get(REF_NAME_ANNOTATION, "")]
        if media in (OCI_INDEX, DOCKER_LIST):
            nested, nested_raw, nested_names = _pick_manifest(archive, json.loads(raw))
            return nested, nested_raw, [n for n in names + nested_names if n]
        return json.loads(raw), raw, [n for n in names if n]
    raise ArchiveImportError("index.json lists no manifests")


def _verify(data: bytes, digest: str) -> None:
    actual = "sha256:" + hashlib.sha256(data).hexdigest()
    if actual != digest:
        raise ArchiveImportError(f"blob {digest} in the archive has digest {actual}")


def _normalize_names(names: list[str]) -> list[str]:
    tags = []
    for name in names:
        try:
            tags.append(str(parse_reference(name)))
        except InvalidReference:
            continue  # a bare tag annotation ("latest") carries no repository
    return tags


def import_archive(store: ImageStore, path: str | Path, extra_tags: list[str] | None = None,
                   admit: Admit | None = None) -> ImportedImage:
    path = Path(path)
    try:
        archive = tarfile.open(path, mode="r:*")
    except (OSError, tarfile.TarError) as exc:
        raise ArchiveImportError(f"{path}: not a readable tar archive: {exc}") from exc
    with archive:
        names = set(archive.getnames())
        if "index.json" in names or "./index.json" in names:
            return _import_oci(store, archive, extra_tags or [], admit)
        if "manifest.json" in names or "./manifest.json" in names:
            return _import_docker(store, archive, extra_tags or [], admit)
    raise ArchiveImportError(f"{path}: neither an OCI layout (index.json) nor a docker-archive (manifest.json)")


def _layers_from(
    store: ImageStore, archive: tarfile.TarFile, members: list[str], media_types: list[str], blob_digests: list[str], diff_ids: list[str]
) -> tuple[list[str], int]:
    if len(members) != len(diff_ids):
        raise ArchiveImportError(f"manifest lists {len(members)} layers but the config has {len(diff_ids)} diff_ids")
    chains = chain_ids(diff_ids)
    added = 0
    for i, member in enumerate(members):
        added += _ingest_member(
            store,
            archive,
            member,
            dict(
                chain_id=chains[i],
                parent_chain_id=chains[i - 1] if i else "",
                diff_id=diff_ids[i],
                blob_digest=blob_digests[i],
                media_type=media_types[i],
            ),
        )
    return chains, added


def _save(store: ImageStore, config_raw: bytes, manifest_digest: str, chains: list[str], diff_ids: list[str], tags: list[str], added: int) -> ImportedImage:
    config_digest = "sha256:" + hashlib.sha256(config_raw).hexdigest()
    store.put_blob(config_digest, config_raw)
    size = len(config_raw) + sum(store.get_layer(c).uncompressed_size for c in chains)
    record = ImageRecord(
        id=config_digest,
        repo_tags=tags,
        repo_digests=[],
        manifest_digest=manifest_digest,
        layers=chains,
        diff_ids=diff_ids,
        size=size,
    )
    return ImportedImage(record=store.save_image(record), layers_added=added)


def _import_oci(store: ImageStore, archive: tarfile.TarFile, extra_tags: list[str], admit: Admit | None,
                ) -> ImportedImage:
    index = json.loads(_member_bytes(archive, "index.json"))
    manifest, manifest_raw, names = _pick_manifest(archive, index)
    config_raw = _member_bytes(archive, _blob_name(manifest["config"]["digest"]))
    _verify(config_raw, manifest["config"]["digest"])
    diff_ids = json.loads(config_raw).get("rootfs", {}).get("diff_ids", [])
    tags = _normalize_names(names + extra_tags)
    if admit is not None:
        admit(tags, manifest_raw)
    layers = manifest.get("layers", [])
    chains, added = _layers_from(
        store,
        archive,
        [_blob_name(l["digest"]) for l in layers],
        [l.get("mediaType", "") for l in layers],
        [l["digest"] for l in layers],
        diff_ids,
    )
    manifest_digest = "sha256:" + hashlib.sha256(manifest_raw).hexdigest()
    store.put_blob(manifest_digest, manifest_raw)
    return _save(store, config_raw, manifest_digest, chains, diff_ids, tags, added)


def _import_docker(store: ImageStore, archive: tarfile.TarFile, extra_tags: list[str], admit: Admit | None,
                   ) -> ImportedImage:
    entries = json.loads(_member_bytes(archive, "manifest.json"))
    if not isinstance(entries, list) or not entries:
        raise ArchiveImportError("manifest.json lists no images")
    entry = entries[0]
    config_raw = _member_bytes(archive, entry["Config"])
    diff_ids = json.loads(config_raw).get("rootfs", {}).get("diff_ids", [])
    members = list(entry.get("Layers", []))
    tags = _normalize_names(list(entry.get("RepoTags") or []) + extra_tags)
    if admit is not None:
        admit(tags, None)
    # docker-archive layers carry no compressed digest: the diffID check is the verification.
    chains, added = _layers_from(store, archive, members, [""] * len(members), [""] * len(members), diff_ids)
    return _save(store, config_raw, "", chains, diff_ids, tags, added)
