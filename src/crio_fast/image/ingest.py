"""Bringing one layer into the store: stream, verify, commit or leave nothing.

Both registry pulls and `crio-fast image import` feed layers through here, so
digest checks and atomic commit are written once. A layer is extracted into a
fresh directory under the store's tmp/; only when its compressed digest and
diffID both match does it move into layers/ under its chain ID.
"""

from __future__ import annotations

import time
from pathlib import Path

from crio_fast.image.store import ImageStore, LayerRecord
from crio_fast.image.unpack import LayerUnpacker, UnpackError


class LayerVerificationError(Exception):
    """The bytes received are not the layer the manifest and config promised."""


class LayerIngest:
    """Feed one layer's blob bytes; ``commit`` verifies and stores it.

    Not thread-safe: one feeder at a time (calls may come from any one thread
    at a time, e.g. a pool worker per chunk).
    """

    def __init__(
        self,
        store: ImageStore,
        *,
        chain_id: str,
        parent_chain_id: str,
        diff_id: str,
        blob_digest: str,
        media_type: str,
        source: str,
    ) -> None:
        self.store = store
        self.chain_id = chain_id
        self.parent_chain_id = parent_chain_id
        self.diff_id = diff_id
        self.blob_digest = blob_digest
        self.media_type = media_type
        self.source = source  # for messages: "registry/repo@digest" or an archive member
        self.work: Path = store.new_layer_workdir()
        try:
            self.unpacker = LayerUnpacker(self.work / "diff", media_type)
        except BaseException:
            store.discard(self.work)
            raise
        self._done = False

    def feed(self, chunk: bytes | memoryview) -> None:
        try:
            self.unpacker.feed(chunk)
        except UnpackError as exc:
            raise LayerVerificationError(f"layer {self.blob_digest} from {self.source}: {exc}") from exc

    def commit(self) -> LayerRecord:
        """Finish extraction, verify both digests, move into the store."""
        try:
            result = self.unpacker.finish()
        except UnpackError as exc:
            self.abort()
            raise LayerVerificationError(f"layer {self.blob_digest} from {self.source}: {exc}") from exc
        if self.blob_digest and result.blob_digest != self.blob_digest:
            self.abort()
            raise LayerVerificationError(
                f"layer from {self.source}: digest mismatch: manifest says {self.blob_digest}, received {result.blob_digest}"
            )
        if result.diff_id != self.diff_id:
            self.abort()
            raise LayerVerificationError(
                f"layer {self.blob_digest} from {self.source}: uncompressed digest {result.diff_id} "
                f"does not match the image config's diff_id {self.diff_id}"
            )
        record = LayerRecord(
            chain_id=self.chain_id,
            diff_id=self.diff_id,
            parent=self.parent_chain_id,
            blob_digest=self.blob_digest or result.blob_digest,
            compressed_size=result.compressed_size,
            uncompressed_size=result.uncompressed_size,
            entries=int(result.stats.get("entries", 0)),
            media_type=self.media_type,
            created_at=time.time(),
        )
        try:
            self.store.commit_layer(self.work, record)
        except BaseException:
            self.abort()
            raise
        self._done = True
        return record

    def abort(self) -> None:
        if self._done:
            return
        self._done = True
        try:
            self.unpacker.abort()
        finally:
            self.store.discard(self.work)
