"""The image store: blobs by digest, layers by chain ID, image records.

Layout under ``<root>/images``::

    blobs/sha256/<hex>        manifests, indexes and configs, verbatim
    layers/<chain-hex>/diff/  an extracted layer; overlay lower dir
    layers/<chain-hex>/layer.json
    records/<id-hex>.json     one image: names, repo digests, layer chain
    tmp/                      work in progress; emptied at start

Every write lands atomically: files are written to a temporary name, fsynced
and renamed; a layer is extracted under tmp/ and its directory renamed into
layers/ only after its digests verified. A crash therefore leaves either the
old state or the new one plus debris under tmp/, which :meth:`ImageStore.open`
removes. Layers are shared: an image references the chain IDs of its layers,
and a layer is deleted only when no image record references it.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import threading
import time
import uuid
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterator

from crio_fast.files import atomic_write

SHA256_PREFIX = "sha256:"


def chain_ids(diff_ids: list[str]) -> list[str]:
    """OCI chain IDs: ChainID(L0) = DiffID(L0); ChainID(Ln) = sha256(ChainID(Ln-1) + " " + DiffID(Ln))."""
    out: list[str] = []
    for diff_id in diff_ids:
        if not out:
            out.append(diff_id)
        else:
            out.append(SHA256_PREFIX + hashlib.sha256(f"{out[-1]} {diff_id}".encode()).hexdigest())
    return out


def digest_hex(digest: str) -> str:
    algo, _, hexpart = digest.partition(":")
    if algo != "sha256" or len(hexpart) != 64 or any(c not in "0123456789abcdef" for c in hexpart):
        raise ValueError(f"not a sha256 digest: {digest!r}")
    return hexpart


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@dataclass
class LayerRecord:
    chain_id: str
    diff_id: str
    parent: str  # chain ID of the layer below, "" for the base layer
    blob_digest: str  # compressed digest it came from ("" when imported uncompressed)
    compressed_size: int
    uncompressed_size: int
    entries: int  # inodes the layer holds, for ImageFsInfo
    media_type: str
    created_at: float


@dataclass
class ImageRecord:
    id: str  # config digest, as CRI reports image IDs
    repo_tags: list[str] = field(default_factory=list)
    repo_digests: list[str] = field(default_factory=list)
    manifest_digest: str = ""
    layers: list[str] = field(default_factory=list)  # chain IDs, base first
    diff_ids: list[str] = field(default_factory=list)
    size: int = 0  # uncompressed bytes of all layers + config
    pinned: bool = False
    created_at: float = field(default_factory=time.time)

    def to_json(self) -> bytes:
        return json.dumps(asdict(self), sort_keys=True, indent=1).encode()

    @classmethod
    def from_json(cls, data: bytes) -> "ImageRecord":
        raw = json.loads(data)
        known = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in raw.items() if k in known})


class StoreCorrupt(Exception):
    pass


class ImageStore:
    """Thread-safe and process-safe (flock) access to the on-disk store."""

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root) / "images"
        self.blobs = self.root / "blobs" / "sha256"
        self.layers = self.root / "layers"
        self.records = self.root / "records"
        self.tmp = self.root / "tmp"
        self._lock = threading.RLock()
        self._lock_path = self.root / "store.lock"
        self._cache: dict[str, ImageRecord] = {}
        self._cache_stamp: tuple[int, int] | None = None

    # -- setup -------------------------------------------------------------

    @classmethod
    def open(cls, root: str | os.PathLike, *, collect_garbage: bool = True) -> "ImageStore":
        """Open (creating) the store. Only the daemon, at start, collects garbage:
        another process (an import) must not take a running pull's work for debris."""
        store = cls(root)
        for d in (store.blobs, store.layers, store.records, store.tmp):
            d.mkdir(parents=True, exist_ok=True)
        if collect_garbage:
            store.collect_garbage()
        return store

    def collect_garbage(self) -> list[str]:
        """Remove debris a crash left: tmp/ entries, temp files, layers no record names."""
        removed: list[str] = []
        with self.locked():
            for entry in os.scandir(self.tmp):
                _remove_tree(Path(entry.path))
                removed.append(entry.path)
            for directory in (self.blobs, self.records):
                for entry in os.scandir(directory):
                    if entry.name.startswith(".") and entry.name.endswith(".tmp"):
                        os.unlink(entry.path)
                        removed.append(entry.path)
            referenced = {c for rec in self._load_records().values() for c in rec.layers}
            for entry in os.scandir(self.layers):
                if entry.name.startswith(".") or not (Path(entry.path) / "layer.json").exists():
                    _remove_tree(Path(entry.path))
                    removed.append(entry.path)
                elif SHA256_PREFIX + entry.name not in referenced:
                    _remove_tree(Path(entry.path))
                    removed.append(entry.path)
        return removed

    @contextmanager
    def locked(self) -> Iterator[None]:
        """Exclusive access across threads and processes (e.g. `crio-fast image import`)."""
        with self._lock:
            fd = os.open(self._lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                yield
            finally:
                os.close(fd)

    # -- blobs ---------------------------------------------------------------

    def blob_path(self, digest: str) -> Path:
        return self.blobs / digest_hex(digest)

    def put_blob(self, digest: str, data: bytes) -> None:
        actual = SHA256_PREFIX + hashlib.sha256(data).hexdigest()
        if actual != digest:
            raise ValueError(f"blob digest mismatch: expected {digest}, got {actual}")
        path = self.blob_path(digest)
        if not path.exists():
            atomic_write(path, data)

    def get_blob(self, digest: str) -> bytes:
        return self.blob_path(digest).read_bytes()

    def has_blob(self, digest: str) -> bool:
        return self.blob_path(digest).exists()

    # -- layers --------------------------------------------------------------

    def layer_dir(self, chain_id: str) -> Path:
        return self.layers / digest_hex(chain_id)

    def layer_diff(self, chain_id: str) -> Path:
        return self.layer_dir(chain_id) / "diff"

    def has_layer(self, chain_id: str) -> bool:
        return (self.layer_dir(chain_id) / "layer.json").exists()

    def get_layer(self, chain_id: str) -> LayerRecord:
        raw = json.loads((self.layer_dir(chain_id) / "layer.json").read_bytes())
        return LayerRecord(**raw)

    def new_layer_workdir(self) -> Path:
        """A fresh directory under tmp/ to extract a layer into (its ``diff`` subdir)."""
        work = self.tmp / uuid.uuid4().hex
        (work / "diff").mkdir(parents=True)
        return work

    def commit_layer(self, work: Path, record: LayerRecord) -> bool:
        """Move an extracted, verified layer into place. False if it was already there."""
        atomic_write(work / "layer.json", json.dumps(asdict(record), sort_keys=True).encode())
        target = self.layer_dir(record.chain_id)
        with self.locked():
            if self.has_layer(record.chain_id):
                _remove_tree(work)
                return False
            if target.exists():  # debris of an interrupted commit
                _remove_tree(target)
            os.rename(work, target)
            fsync_dir(self.layers)
        return True

    def discard(self, work: Path) -> None:
        _remove_tree(work)

    # -- image records -------------------------------------------------------

    def _record_path(self, image_id: str) -> Path:
        return self.records / f"{digest_hex(image_id)}.json"

    def _load_records(self) -> dict[str, ImageRecord]:
        st = os.stat(self.records)
        stamp = (st.st_mtime_ns, st.st_ino)
        if stamp == self._cache_stamp:
            return self._cache
        records: dict[str, ImageRecord] = {}
        for entry in os.scandir(self.records):
            if not entry.name.endswith(".json") or entry.name.startswith("."):
                continue
            try:
                rec = ImageRecord.from_json(Path(entry.path).read_bytes())
            except (OSError, ValueError, TypeError):
                continue  # a damaged record hides one image, never the store
            records[rec.id] = rec
        self._cache, self._cache_stamp = records, stamp
        return records

    def list_images(self) -> list[ImageRecord]:
        with self._lock:
            return sorted(self._load_records().values(), key=lambda r: r.created_at)

    def get_image(self, image_id: str) -> ImageRecord | None:
        with self._lock:
            return self._load_records().get(image_id)

    def find_image(self, name_or_id: str) -> ImageRecord | None:
        """By full ID, unique ID prefix (>= 3 hex chars), repo tag or repo digest."""
        with self._lock:
            records = self._load_records()
            if name_or_id in records:
                return records[name_or_id]
            for rec in records.values():
                if name_or_id in rec.repo_tags or name_or_id in rec.repo_digests:
                    return rec
            hexpart = name_or_id.removeprefix(SHA256_PREFIX)
            if len(hexpart) >= 3 and all(c in "0123456789abcdef" for c in hexpart):
                matches = [r for r in records.values() if digest_hex(r.id).startswith(hexpart)]
                if len(matches) == 1:
                    return matches[0]
        return None

    def save_image(self, record: ImageRecord) -> ImageRecord:
        """Store or merge an image record; its tags move away from any other image."""
        with self.locked():
            records = self._load_records()
            existing = records.get(record.id)
            if (
                existing is not None
                and set(record.repo_tags) <= set(existing.repo_tags)
                and set(record.repo_digests) <= set(existing.repo_digests)
            ):
                return existing  # nothing new: a warm pull writes nothing
            if existing is not None:
                record.repo_tags = _merge(existing.repo_tags, record.repo_tags)
                record.repo_digests = _merge(existing.repo_digests, record.repo_digests)
                record.created_at = existing.created_at
                record.pinned = existing.pinned or record.pinned
            for other in list(records.values()):
                if other.id == record.id:
                    continue
                stolen = [t for t in other.repo_tags if t in record.repo_tags]
                if stolen:
                    other.repo_tags = [t for t in other.repo_tags if t not in stolen]
                    atomic_write(self._record_path(other.id), other.to_json())
            atomic_write(self._record_path(record.id), record.to_json())
            fsync_dir(self.records)
            self._cache_stamp = None
        return record

    def remove_image(self, image_id: str) -> list[str]:
        """Delete an image record, then the layers and blobs nothing else uses. Returns removed chain IDs."""
        with self.locked():
            records = self._load_records()
            record = records.get(image_id)
            if record is None:
                return []
            os.unlink(self._record_path(image_id))
            fsync_dir(self.records)
            self._cache_stamp = None
            remaining = [r for r in records.values() if r.id != image_id]
            still_used = {c for r in remaining for c in r.layers}
            removed = []
            for chain_id in record.layers:
                if chain_id not in still_used and self.layer_dir(chain_id).exists():
                    # Rename first so a crash mid-delete leaves debris, not a half layer.
                    doomed = self.tmp / f"rm-{uuid.uuid4().hex}"
                    os.rename(self.layer_dir(chain_id), doomed)
                    _remove_tree(doomed)
                    removed.append(chain_id)
            blobs_used = {d for r in remaining for d in (r.id, r.manifest_digest)}
            for digest in (record.id, record.manifest_digest):
                if digest and digest not in blobs_used:
                    try:
                        os.unlink(self.blob_path(digest))
                    except FileNotFoundError:
                        pass
            return removed

    def untag(self, image_id: str, name: str) -> None:
        with self.locked():
            record = self._load_records().get(image_id)
            if record is None:
                return
            record.repo_tags = [t for t in record.repo_tags if t != name]
            atomic_write(self._record_path(record.id), record.to_json())
            self._cache_stamp = None

    # -- usage ---------------------------------------------------------------

    def usage(self) -> tuple[int, int]:
        """(bytes, inodes) the store holds: layer contents as extracted plus blobs."""
        used_bytes = 0
        inodes = 0
        for entry in os.scandir(self.layers):
            try:
                rec = LayerRecord(**json.loads((Path(entry.path) / "layer.json").read_bytes()))
            except (OSError, ValueError, TypeError):
                continue
            used_bytes += rec.uncompressed_size
            inodes += rec.entries + 2  # plus the layer dir and its diff dir
        for entry in os.scandir(self.blobs):
            try:
                used_bytes += entry.stat(follow_symlinks=False).st_size
                inodes += 1
            except FileNotFoundError:
                continue
        return used_bytes, inodes


def _merge(a: list[str], b: list[str]) -> list[str]:
    return list(dict.fromkeys([*a, *b]))


def _remove_tree(path: Path) -> None:
    """Remove a tree even where an extracted layer left read-only dirs."""

    def make_writable(func, p, exc_info):
        try:
            os.chmod(os.path.dirname(p), 0o700)
            func(p)
        except OSError:
            pass

    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, onerror=make_writable)
    else:
        try:
            path.unlink()
        except FileNotFoundError:
            pass
