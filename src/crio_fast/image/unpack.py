"""One layer blob in, one extracted layer directory out.

Compressed bytes arrive in chunks (from the registry response or an image
archive). Each chunk is hashed (sha256: the blob digest), decompressed (gzip
through ISA-L, zstd through libzstd), the output hashed again (sha256: the
diff ID) and pushed into the native tar extractor, which writes the entries
at once. Nothing is buffered beyond one chunk's output and nothing is written
twice.

Compressed streams are checked strictly: gzip may have several members and
zstd several frames (both are legal and produced by parallel compressors),
but a stream that stops inside a member/frame, or continues with bytes that
are not another member/frame, is an error. Uncompressed data after the tar
end-of-archive marker is record padding and is ignored, as tar does.

The work is spread over threads, as ``tar | gzip`` uses two processes: the
caller's thread hashes and decompresses, a worker thread per layer runs the
extractor, whose own helper thread shares the file writes (all without the
GIL). The queue to the worker is bounded, so a slow disk slows the feeder
rather than filling memory.

zstd input is decompressed in slices of ``ZSTD_INPUT_SLICE`` bytes
(python-zstandard's decompressobj has no output bound, so this bounds it for
ordinary data and keeps pieces cache-sized); gzip output comes in pieces of
at most ``MAX_OUTPUT_PIECE`` bytes.
"""

from __future__ import annotations

import hashlib
import os
import queue
import threading
from dataclasses import dataclass, field
from typing import Callable

import zstandard
from isal import igzip_lib

from crio_fast._native._extract import ExtractError, LayerExtractor

GZIP = "gzip"
ZSTD = "zstd"
NONE = "none"

GZIP_MAGIC = b"\x1f\x8b"
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
# Skippable zstd frames (magic 0x184D2A50..0x184D2A5F, little endian) may
# open a stream too, e.g. zstd:chunked metadata.
_ZSTD_SKIPPABLE_TAIL = b"\x2a\x4d\x18"
_SNIFF_BYTES = 4

# Upper bound on one piece of gzip output handed to the extractor.
MAX_OUTPUT_PIECE = 1 << 20
ZSTD_INPUT_SLICE = 128 << 10
# Pieces waiting for the extraction thread.
_QUEUE_DEPTH = 16

_MEDIA_TYPE_COMPRESSION = {
    "application/vnd.oci.image.layer.v1.tar": NONE,
    "application/vnd.oci.image.layer.v1.tar+gzip": GZIP,
    "application/vnd.oci.image.layer.v1.tar+zstd": ZSTD,
    "application/vnd.oci.image.layer.nondistributable.v1.tar": NONE,
    "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip": GZIP,
    "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd": ZSTD,
    "application/vnd.docker.image.rootfs.diff.tar.gzip": GZIP,
    "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip": GZIP,
}


class UnpackError(Exception):
    """The layer could not be unpacked: corrupt or truncated compression,
    a malformed tar stream, a failed write, or a digest that does not match."""


@dataclass(frozen=True)
class UnpackResult:
    blob_digest: str  # "sha256:<hex>" of the bytes as received
    diff_id: str  # "sha256:<hex>" of the uncompressed tar stream
    compressed_size: int
    uncompressed_size: int
    stats: dict[str, int] = field(default_factory=dict)  # from LayerExtractor.finish()


def sniff_compression(first_bytes: bytes) -> str | None:
    """The compression the magic bytes show, or None if they show none (yet)."""
    if first_bytes.startswith(GZIP_MAGIC):
        return GZIP
    if first_bytes.startswith(ZSTD_MAGIC):
        return ZSTD
    if len(first_bytes) >= 4 and first_bytes[1:4] == _ZSTD_SKIPPABLE_TAIL and first_bytes[0] & 0xF0 == 0x50:
        return ZSTD
    return None


def _declared_compression(media_type: str) -> str | None:
    """The compression a layer media type names, or None for a generic type."""
    return _MEDIA_TYPE_COMPRESSION.get(media_type.split(";", 1)[0].strip().lower())


def detect_compression(media_type: str, first_bytes: bytes) -> str:
    """"gzip", "zstd" or "none" for a layer.

    A layer media type that names its compression decides; for any other
    (generic) type, such as "application/octet-stream" or an empty string,
    the magic bytes decide, and data with neither magic is a plain tar.
    """
    declared = _declared_compression(media_type)
    if declared is not None:
        return declared
    return sniff_compression(bytes(first_bytes[:_SNIFF_BYTES])) or NONE


class _GzipDecoder:
    """Multi-member gzip through ISA-L, output in bounded pieces."""

    name = GZIP

    def __init__(self, emit: Callable[[bytes], None]) -> None:
        self._emit = emit
        self._decompressor = igzip_lib.IgzipDecompressor(flag=igzip_lib.DECOMP_GZIP)
        self._member_open = False  # input was given to the current member
        self.members = 0

    def feed(self, data: bytes | memoryview) -> None:
        decompressor = self._decompressor
        emit = self._emit
        while True:
            if data:
                self._member_open = True
            out = decompressor.decompress(data, MAX_OUTPUT_PIECE)
            if out:
                emit(out)
            data = b""
            if decompressor.eof:
                self.members += 1
                data = decompressor.unused_data
                decompressor = self._decompressor = igzip_lib.IgzipDecompressor(flag=igzip_lib.DECOMP_GZIP)
                self._member_open = False
                if not data:
                    return
            elif decompressor.needs_input:
                return

    def finish(self) -> None:
        if self._member_open:
            raise UnpackError(f"gzip stream is truncated (inside member {self.members + 1})")
        if self.members == 0:
            raise UnpackError("gzip stream is empty")


class _ZstdDecoder:
    """Multi-frame zstd (skippable frames included) through libzstd."""

    name = ZSTD

    def __init__(self, emit: Callable[[bytes], None]) -> None:
        self._emit = emit
        self._context = zstandard.ZstdDecompressor()
        self._decompressor = self._context.decompressobj()
        self._frame_open = False
        self.frames = 0

    def feed(self, data: bytes | memoryview) -> None:
        view = memoryview(data)
        for start in range(0, len(view), ZSTD_INPUT_SLICE):
            self._feed_slice(view[start : start + ZSTD_INPUT_SLICE])

    def _feed_slice(self, data: bytes | memoryview) -> None:
        decompressor = self._decompressor
        while data:
            self._frame_open = True
            out = decompressor.decompress(data)
            if out:
                self._emit(out)
            if not decompressor.eof:
                return
            self.frames += 1
            self._frame_open = False
            data = decompressor.unused_data
            decompressor = self._decompressor = self._context.decompressobj()

    def finish(self) -> None:
        if self._frame_open:
            raise UnpackError(f"zstd stream is truncated (inside frame {self.frames + 1})")
        if self.frames == 0:
            raise UnpackError("zstd stream is empty")


class _ExtractionThread:
    """Runs ``LayerExtractor.feed`` on its own thread, in arrival order.

    After a failure it keeps draining the queue (discarding) so the feeder
    never blocks; the failure is raised to the feeder on its next ``put`` and
    by ``close``.
    """

    _STOP = None

    def __init__(self, extractor: LayerExtractor) -> None:
        self._extractor = extractor
        self._queue: queue.Queue[bytes | None] = queue.Queue(maxsize=_QUEUE_DEPTH)
        self.error: BaseException | None = None
        self._discard = False
        self._thread = threading.Thread(target=self._run, name="layer-extract", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        get = self._queue.get
        feed = self._extractor.feed
        while (data := get()) is not self._STOP:
            if self.error is None and not self._discard:
                try:
                    feed(data)
                except BaseException as exc:  # handed to the feeder thread
                    self.error = exc

    def put(self, data: bytes) -> None:
        if self.error is not None:
            raise self.error
        self._queue.put(data)

    def close(self, *, discard: bool = False) -> None:
        """Wait until everything queued was extracted (or, with ``discard``, dropped)."""
        if discard:
            self._discard = True
        if self._thread.is_alive():
            self._queue.put(self._STOP)
            self._thread.join()
        if self.error is not None and not discard:
            raise self.error


class LayerUnpacker:
    """Feed a layer blob's bytes; ``finish`` returns its digests and stats.

    ``root`` is the layer directory (created if missing; normally fresh and
    empty). One thread at a time; after any error the unpacker is failed and
    the caller removes ``root``. ``expected_blob_digest`` and
    ``expected_diff_id``, when given, are checked in ``finish``.
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        media_type: str,
        *,
        preserve_owner: bool = True,
        expected_blob_digest: str | None = None,
        expected_diff_id: str | None = None,
    ) -> None:
        self.root = os.fspath(root)
        self.media_type = media_type
        self._expected_blob_digest = expected_blob_digest
        self._expected_diff_id = expected_diff_id
        self._blob_hash = hashlib.sha256()
        self._diff_hash = hashlib.sha256()
        self._compressed_size = 0
        self._uncompressed_size = 0
        self._sniff_buffer = b""
        self._decoder: _GzipDecoder | _ZstdDecoder | None = None
        self._compression: str | None = None
        self._failure: str | None = None
        self._closed = False
        self._worker: _ExtractionThread | None = None
        os.makedirs(self.root, exist_ok=True)
        try:
            self._extractor = LayerExtractor(self.root, preserve_owner=preserve_owner)
        except ExtractError as exc:
            raise UnpackError(str(exc)) from exc
        declared = _declared_compression(media_type)
        if declared is not None:
            self._choose(declared)

    @property
    def compression(self) -> str | None:
        """"gzip", "zstd" or "none" once known (at once for a specific media type)."""
        return self._compression

    def _choose(self, compression: str) -> None:
        self._compression = compression
        if compression == GZIP:
            self._decoder = _GzipDecoder(self._emit)
        elif compression == ZSTD:
            self._decoder = _ZstdDecoder(self._emit)

    def _emit(self, data: bytes) -> None:
        self._diff_hash.update(data)
        self._uncompressed_size += len(data)
        worker = self._worker
        if worker is None:
            worker = self._worker = _ExtractionThread(self._extractor)
        worker.put(data)

    def _check_usable(self) -> None:
        if self._failure is not None:
            raise UnpackError(f"unpacker already failed: {self._failure}")
        if self._closed:
            raise UnpackError("unpacker is already finished or aborted")

    def _fail(self, message: str) -> UnpackError:
        self._failure = message
        return UnpackError(message)

    def feed(self, compressed: bytes | bytearray | memoryview) -> None:
        """Hash, decompress and extract the next chunk of the blob."""
        self._check_usable()
        if not compressed:
            return
        self._blob_hash.update(compressed)
        self._compressed_size += len(compressed)
        if self._compression is None:
            # Generic media type: hold the first bytes until the magic can be read.
            self._sniff_buffer += bytes(compressed)
            if len(self._sniff_buffer) < _SNIFF_BYTES:
                return
            compressed = self._sniff_buffer
            self._sniff_buffer = b""
            self._choose(sniff_compression(compressed) or NONE)
        self._process(compressed)

    def _process(self, compressed: bytes | bytearray | memoryview) -> None:
        decoder = self._decoder
        try:
            if decoder is None:
                # The caller may reuse its buffer once feed returns.
                self._emit(compressed if type(compressed) is bytes else bytes(compressed))
            else:
                decoder.feed(compressed)
        except ExtractError as exc:
            raise self._fail(f"malformed or unwritable layer tarball: {exc}") from exc
        except (igzip_lib.IsalError, zstandard.ZstdError) as exc:
            raise self._fail(f"{self._compression} stream is corrupt: {exc}") from exc

    def finish(self) -> UnpackResult:
        """Check the stream ended properly, finish extraction and the digests."""
        self._check_usable()
        try:
            if self._compression is None:
                data, self._sniff_buffer = self._sniff_buffer, b""
                self._choose(sniff_compression(data) or NONE)
                if data:
                    self._process(data)
            if self._decoder is not None:
                try:
                    self._decoder.finish()
                except UnpackError as exc:
                    raise self._fail(str(exc)) from None
            try:
                if self._worker is not None:
                    self._worker.close()
                stats = self._extractor.finish()
            except ExtractError as exc:
                raise self._fail(f"malformed or unwritable layer tarball: {exc}") from exc
        finally:
            self._closed = True
            self._stop_worker()
            self._extractor.abort()
        blob_digest = "sha256:" + self._blob_hash.hexdigest()
        diff_id = "sha256:" + self._diff_hash.hexdigest()
        if self._expected_blob_digest is not None and blob_digest != self._expected_blob_digest:
            raise self._fail(f"blob digest mismatch: expected {self._expected_blob_digest}, received {blob_digest}")
        if self._expected_diff_id is not None and diff_id != self._expected_diff_id:
            raise self._fail(f"diff ID mismatch: expected {self._expected_diff_id}, extracted {diff_id}")
        return UnpackResult(
            blob_digest=blob_digest,
            diff_id=diff_id,
            compressed_size=self._compressed_size,
            uncompressed_size=self._uncompressed_size,
            stats=stats,
        )

    def _stop_worker(self) -> None:
        if self._worker is not None:
            self._worker.close(discard=True)
            self._worker = None

    def abort(self) -> None:
        """Stop extracting and release the extractor's fds; idempotent.

        Returns once nothing writes below ``root`` any more; the caller removes it.
        """
        self._closed = True
        self._stop_worker()
        self._extractor.abort()

    def __del__(self) -> None:
        # An unpacker dropped without finish/abort must not leave its thread
        # and the extractor's fds behind.
        if getattr(self, "_worker", None) is not None:
            self._stop_worker()

    def __repr__(self) -> str:
        state = self._failure or ("closed" if self._closed else "open")
        return f"LayerUnpacker(root={self.root!r}, compression={self._compression!r}, state={state!r})"
