"""LayerUnpacker: decompression, digests and error reporting on real layer blobs."""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import tarfile
import threading
from pathlib import Path

import pytest
import zstandard

from crio_fast._native._extract import ExtractError
from crio_fast.image.unpack import LayerUnpacker, UnpackError, UnpackResult, detect_compression
from tests.unit.tar_builders import archive, header, member

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="layer extraction chowns entries: it needs root")

OCI_TAR = "application/vnd.oci.image.layer.v1.tar"
OCI_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
OCI_ZSTD = "application/vnd.oci.image.layer.v1.tar+zstd"
DOCKER_GZIP = "application/vnd.docker.image.rootfs.diff.tar.gzip"


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def layer_tar() -> bytes:
    """A small but real layer: directories, files of several sizes, links, a whiteout."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:

        def add(name: str, data: bytes = b"", **attrs) -> None:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mtime = 1_700_000_000
            for key, value in attrs.items():
                setattr(info, key, value)
            tar.addfile(info, io.BytesIO(data) if info.isreg() else None)

        add("usr", type=tarfile.DIRTYPE, mode=0o755)
        add("usr/bin", type=tarfile.DIRTYPE, mode=0o755)
        add("usr/bin/tool", b"\x7fELF" + os.urandom(200_000), mode=0o755)
        add("usr/bin/alias", type=tarfile.SYMTYPE, linkname="tool")
        add("usr/bin/same", type=tarfile.LNKTYPE, linkname="usr/bin/tool")
        for i in range(50):
            add(f"usr/share/doc/file{i}.txt", f"document {i}\n".encode() * (i * 20), mode=0o644)
        add("etc/.wh.removed")
    return buffer.getvalue()


def compress(data: bytes, compression: str) -> bytes:
    if compression == "gzip":
        return gzip.compress(data, compresslevel=6, mtime=0)
    if compression == "zstd":
        return zstandard.ZstdCompressor(level=3).compress(data)
    return data


def unpack(blob: bytes, root: Path, media_type: str, *, chunk: int = 65536, **kwargs) -> UnpackResult:
    unpacker = LayerUnpacker(root, media_type, **kwargs)
    try:
        view = memoryview(blob)
        for start in range(0, len(blob), chunk):
            unpacker.feed(view[start : start + chunk])
        return unpacker.finish()
    except BaseException:
        unpacker.abort()
        raise


def assert_layer_extracted(root: Path) -> None:
    assert (root / "usr/bin/tool").read_bytes().startswith(b"\x7fELF")
    assert os.readlink(root / "usr/bin/alias") == "tool"
    assert os.stat(root / "usr/bin/same").st_ino == os.stat(root / "usr/bin/tool").st_ino
    assert (root / "usr/share/doc/file49.txt").read_bytes() == b"document 49\n" * 980
    assert os.lstat(root / "etc/removed").st_rdev == 0


@pytest.mark.parametrize(
    "media_type, compression",
    [
        (OCI_GZIP, "gzip"),
        (DOCKER_GZIP, "gzip"),
        (OCI_ZSTD, "zstd"),
        (OCI_TAR, "none"),
        ("application/octet-stream", "gzip"),  # generic: the magic bytes decide
        ("", "zstd"),
        ("application/x-tar", "none"),
    ],
)
@pytest.mark.parametrize("chunk", [1 << 20, 4093])
def test_layers_unpack_with_correct_digests(tmp_path: Path, media_type: str, compression: str, chunk: int) -> None:
    tar = layer_tar()
    blob = compress(tar, compression)
    root = tmp_path / "layer"  # created by the unpacker
    result = unpack(blob, root, media_type, chunk=chunk)
    assert result.blob_digest == sha256(blob)
    assert result.diff_id == sha256(tar)
    assert result.compressed_size == len(blob)
    assert result.uncompressed_size == len(tar)
    assert result.stats["files"] == 51 and result.stats["whiteouts"] == 1 and result.stats["hardlinks"] == 1
    assert_layer_extracted(root)


def test_expected_digests_are_checked(tmp_path: Path) -> None:
    tar = layer_tar()
    blob = compress(tar, "gzip")
    result = unpack(blob, tmp_path / "ok", OCI_GZIP, expected_blob_digest=sha256(blob), expected_diff_id=sha256(tar))
    assert result.diff_id == sha256(tar)

    wrong = "sha256:" + "0" * 64
    with pytest.raises(UnpackError, match=f"blob digest mismatch: expected {wrong}, received {sha256(blob)}"):
        unpack(blob, tmp_path / "bad_blob", OCI_GZIP, expected_blob_digest=wrong)
    with pytest.raises(UnpackError, match=f"diff ID mismatch: expected {wrong}, extracted {sha256(tar)}"):
        unpack(blob, tmp_path / "bad_diff", OCI_GZIP, expected_diff_id=wrong)


def test_multi_member_gzip_and_multi_frame_zstd(tmp_path: Path) -> None:
    tar = layer_tar()
    # Split inside a tar header on purpose: members/frames need not align with entries.
    cut = 3 * 512 + 100
    gz = gzip.compress(tar[:cut], mtime=0) + gzip.compress(tar[cut:], mtime=0) + gzip.compress(b"", mtime=0)
    result = unpack(gz, tmp_path / "gz", OCI_GZIP, chunk=777)
    assert result.diff_id == sha256(tar)
    assert_layer_extracted(tmp_path / "gz")

    compressor = zstandard.ZstdCompressor()
    skippable = (0x184D2A50).to_bytes(4, "little") + (5).to_bytes(4, "little") + b"notes"
    zst = skippable + compressor.compress(tar[:cut]) + skippable + compressor.compress(tar[cut:])
    result = unpack(zst, tmp_path / "zst", "application/octet-stream", chunk=999)
    assert result.diff_id == sha256(tar)
    assert_layer_extracted(tmp_path / "zst")


@pytest.mark.parametrize(
    "compression, mutate, message",
    [
        ("gzip", lambda b: b[: len(b) // 2], "gzip stream is truncated"),
        ("gzip", lambda b: b[:-4], "gzip stream is truncated"),  # missing the size trailer
        ("gzip", lambda b: b + b"trailing garbage", "gzip stream is corrupt"),
        ("gzip", lambda b: b[:200] + bytes(x ^ 0xFF for x in b[200:400]) + b[400:], "gzip stream is corrupt"),
        ("gzip", lambda b: b"", "gzip stream is empty"),
        ("zstd", lambda b: b[: len(b) // 2], "zstd stream is truncated"),
        ("zstd", lambda b: b + b"trailing garbage", "zstd stream is corrupt"),
        ("zstd", lambda b: b"", "zstd stream is empty"),
    ],
)
def test_broken_compressed_streams(tmp_path: Path, compression: str, mutate, message: str) -> None:
    blob = mutate(compress(layer_tar(), compression))
    media_type = OCI_GZIP if compression == "gzip" else OCI_ZSTD
    with pytest.raises(UnpackError, match=message):
        unpack(blob, tmp_path / "layer", media_type)


def test_malformed_tar_inside_valid_compression(tmp_path: Path) -> None:
    bad = member("ok", b"fine") + header("broken", checksum=1) + bytes(1024)
    with pytest.raises(UnpackError, match="malformed or unwritable layer tarball: .*checksum mismatch") as info:
        unpack(compress(bad, "zstd"), tmp_path / "layer", OCI_ZSTD)
    assert isinstance(info.value.__cause__, ExtractError)

    truncated_tar = layer_tar()[:5000]
    with pytest.raises(UnpackError, match="truncated"):
        unpack(compress(truncated_tar, "gzip"), tmp_path / "layer2", OCI_GZIP)


def test_failed_unpacker_stays_failed(tmp_path: Path) -> None:
    unpacker = LayerUnpacker(tmp_path / "layer", OCI_GZIP)
    with pytest.raises(UnpackError, match="corrupt"):
        unpacker.feed(b"this is not gzip at all")
    with pytest.raises(UnpackError, match="already failed: gzip stream is corrupt"):
        unpacker.feed(compress(layer_tar(), "gzip"))
    with pytest.raises(UnpackError, match="already failed"):
        unpacker.finish()
    unpacker.abort()
    unpacker.abort()


def test_extraction_error_surfaces_from_the_worker_thread(tmp_path: Path) -> None:
    bad = archive(member("fine", b"x" * 100_000), header("broken", checksum=1))
    unpacker = LayerUnpacker(tmp_path / "layer", OCI_TAR)
    with pytest.raises(UnpackError, match="checksum mismatch"):
        # The worker reports the failure on a later feed or at finish.
        unpacker.feed(bad)
        for _ in range(100):
            unpacker.feed(bytes(512))
        unpacker.finish()
    unpacker.abort()
    assert (tmp_path / "layer/fine").read_bytes() == b"x" * 100_000


def test_abort_stops_the_extraction_thread(tmp_path: Path) -> None:
    blob = compress(layer_tar(), "zstd")
    before = threading.active_count()
    unpacker = LayerUnpacker(tmp_path / "layer", OCI_ZSTD)
    unpacker.feed(blob[: len(blob) // 2])
    assert threading.active_count() == before + 1
    unpacker.abort()
    assert threading.active_count() == before
    with pytest.raises(UnpackError, match="finished or aborted"):
        unpacker.feed(blob[len(blob) // 2 :])


def test_finish_leaves_no_thread_behind(tmp_path: Path) -> None:
    before = threading.active_count()
    unpack(compress(layer_tar(), "gzip"), tmp_path / "layer", OCI_GZIP)
    assert threading.active_count() == before


def test_reused_caller_buffer_is_not_shared_with_the_worker(tmp_path: Path) -> None:
    tar = layer_tar()
    unpacker = LayerUnpacker(tmp_path / "layer", OCI_TAR)
    buffer = bytearray(8192)
    stream = io.BytesIO(tar)
    while count := stream.readinto(buffer):
        unpacker.feed(memoryview(buffer)[:count])
        buffer[:] = b"\xff" * len(buffer)  # scribble over it as a reusing reader would
    result = unpacker.finish()
    assert result.diff_id == sha256(tar)
    assert_layer_extracted(tmp_path / "layer")


def test_layers_unpack_concurrently(tmp_path: Path) -> None:
    tar = layer_tar()
    blobs = {"gzip": compress(tar, "gzip"), "zstd": compress(tar, "zstd"), "none": tar}
    media = {"gzip": OCI_GZIP, "zstd": OCI_ZSTD, "none": OCI_TAR}
    results: dict[str, UnpackResult] = {}
    errors: list[BaseException] = []

    def run(kind: str) -> None:
        try:
            results[kind] = unpack(blobs[kind], tmp_path / kind, media[kind], chunk=32768)
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(kind,)) for kind in blobs]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    for kind, result in results.items():
        assert result.diff_id == sha256(tar)
        assert_layer_extracted(tmp_path / kind)


def test_detect_compression() -> None:
    gz, zst = compress(b"x", "gzip"), compress(b"x", "zstd")
    assert detect_compression(OCI_GZIP, b"") == "gzip"
    assert detect_compression(DOCKER_GZIP, b"") == "gzip"
    assert detect_compression(OCI_ZSTD, b"") == "zstd"
    assert detect_compression(OCI_TAR, gz) == "none"  # a specific media type decides
    assert detect_compression("application/vnd.oci.image.layer.v1.tar+gzip; charset=binary", b"") == "gzip"
    assert detect_compression("application/octet-stream", gz) == "gzip"
    assert detect_compression("application/octet-stream", zst) == "zstd"
    assert detect_compression("", b"\x5e\x2a\x4d\x18") == "zstd"  # skippable frame
    assert detect_compression("", b"usr/bin") == "none"
    assert detect_compression("", b"") == "none"


def test_tiny_generic_blob_is_sniffed_at_finish(tmp_path: Path) -> None:
    # Fewer bytes than the magic: decided at finish (here an empty tar stream).
    unpacker = LayerUnpacker(tmp_path / "layer", "application/octet-stream")
    unpacker.feed(b"\0\0")
    with pytest.raises(UnpackError, match="truncated"):
        unpacker.finish()
    assert unpacker.compression == "none"

    result = unpack(archive(), tmp_path / "empty", "application/octet-stream", chunk=1)
    assert result.stats["entries"] == 0 and result.diff_id == sha256(archive())


def test_missing_parent_of_root_is_created(tmp_path: Path) -> None:
    result = unpack(compress(layer_tar(), "gzip"), tmp_path / "a/b/layer", OCI_GZIP)
    assert result.stats["entries"] > 0
    assert_layer_extracted(tmp_path / "a/b/layer")
