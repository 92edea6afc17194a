"""Layer extraction throughput: crio-fast against GNU tar and Python's tarfile.

Usage::

    python bench/extract.py [--source DIR ...] [--runs N] [--tmpfs] [--size-mb MB]

A layer of at least ``--size-mb`` MB (default 200) of regular file content is
built once from ``--source`` directories (default: this Python's stdlib and
site-packages, walked in sorted order, repeated under copyN/ prefixes if they
are too small), and written as .tar, .tar.gz (gzip -6, what docker and
buildkit use by default) and .tar.zst (level 3) into a temporary directory.

Each round runs every tool once, in a fixed interleaved order, each into a
FRESH directory: on ext4 without a journal, creating files right after mass
deletions is 10-30x slower, so nothing is deleted until all rounds are done.
``--tmpfs`` extracts into a private tmpfs instead (mounted for the run).

Every run starts after sync(2), so no run pays for the previous one's
writeback. Reported: median MB/s of regular-file content (MB = 10^6 bytes) over wall
time, and the ratio to GNU ``tar -xzf``. All tools run as the current user
with ownership and modes preserved (as root, GNU tar and tarfile chown too).
crio-fast reads the blob in 1 MiB chunks, as the registry client hands them
over. Defaults take about two to four minutes on 2 cores.
"""

from __future__ import annotations

import argparse
import gzip
import os
import shutil
import statistics
import subprocess
import sys
import sysconfig
import tarfile
import tempfile
import time
from pathlib import Path
from typing import Callable

import zstandard

from crio_fast.image.unpack import LayerUnpacker

CHUNK = 1 << 20
MEDIA_TAR = "application/vnd.oci.image.layer.v1.tar"
MEDIA_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
MEDIA_ZSTD = "application/vnd.oci.image.layer.v1.tar+zstd"


def default_sources() -> list[Path]:
    paths = sysconfig.get_paths()
    return [Path(paths["stdlib"]), Path(paths["purelib"])]


def iter_source_files(sources: list[Path]):
    """(path, archive-relative name) for every entry, each real path once."""
    seen: set[Path] = set()
    for source in sources:
        source = source.resolve()
        for dirpath, dirnames, filenames in os.walk(source):
            dirnames.sort()
            here = Path(dirpath)
            if here in seen:
                dirnames.clear()
                continue
            seen.add(here)
            # A later source nested in an earlier one is walked on its own turn.
            dirnames[:] = [d for d in dirnames if (here / d).resolve() not in {s.resolve() for s in sources}]
            yield here, f"{source.name}/{here.relative_to(source)}".rstrip("/.")
            for name in sorted(filenames):
                yield here / name, f"{source.name}/{(here / name).relative_to(source)}"


def build_layer(sources: list[Path], target_bytes: int, tar_path: Path) -> tuple[int, int]:
    """Write the layer tar; returns (regular-file content bytes, entries)."""
    content = 0
    entries = 0
    with tarfile.open(tar_path, "w", format=tarfile.PAX_FORMAT) as archive:
        copy = 0
        while content < target_bytes:
            added_this_pass = 0
            for path, name in iter_source_files(sources):
                if content >= target_bytes:
                    break
                try:
                    info = archive.gettarinfo(str(path), arcname=f"copy{copy}/{name}")
                except OSError:
                    continue
                if info.isreg():
                    try:
                        with open(path, "rb") as f:
                            archive.addfile(info, f)
                    except OSError:
                        continue
                    content += info.size
                    added_this_pass += info.size
                elif info.isdir() or info.issym() or info.islnk():
                    archive.addfile(info)
                else:
                    continue
                entries += 1
            if added_this_pass == 0:
                raise SystemExit(f"no regular files found in {', '.join(map(str, sources))}")
            copy += 1
    return content, entries


def compress_gzip(src: Path, dst: Path) -> None:
    with open(src, "rb") as fin, open(dst, "wb") as fout:
        if shutil.which("gzip"):
            subprocess.run(["gzip", "-6", "-n", "-c"], stdin=fin, stdout=fout, check=True)
        else:
            with gzip.GzipFile(fileobj=fout, mode="wb", compresslevel=6, mtime=0) as gz:
                shutil.copyfileobj(fin, gz, CHUNK)


def compress_zstd(src: Path, dst: Path) -> None:
    with open(src, "rb") as fin, open(dst, "wb") as fout:
        zstandard.ZstdCompressor(level=3, threads=-1).copy_stream(fin, fout)


def run_command(argv: list[str]) -> Callable[[Path], None]:
    def run(dest: Path) -> None:
        subprocess.run(argv + ["-C", str(dest)], check=True)

    return run


def run_tarfile(blob: Path) -> Callable[[Path], None]:
    def run(dest: Path) -> None:
        with tarfile.open(blob, "r:gz") as archive:
            archive.extractall(dest, filter="fully_trusted")

    return run


def run_unpacker(blob: Path, media_type: str) -> Callable[[Path], None]:
    def run(dest: Path) -> None:
        unpacker = LayerUnpacker(dest, media_type)
        try:
            with open(blob, "rb", buffering=0) as f:
                while chunk := f.read(CHUNK):
                    unpacker.feed(chunk)
            unpacker.finish()
        except BaseException:
            unpacker.abort()
            raise

    return run


def tar_supports_zstd() -> bool:
    if not shutil.which("tar") or not shutil.which("zstd"):
        return False
    probe = subprocess.run(["tar", "--zstd", "--version"], capture_output=True)
    return probe.returncode == 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--source", action="append", type=Path, help="directory to build the layer from (repeatable)")
    parser.add_argument("--runs", type=int, default=5, help="rounds; the median is reported (default 5)")
    parser.add_argument("--tmpfs", action="store_true", help="extract into a private tmpfs (needs root)")
    parser.add_argument("--size-mb", type=int, default=200, help="minimum regular-file content, MB (default 200)")
    args = parser.parse_args()
    sources = args.source or default_sources()

    work = Path(tempfile.mkdtemp(prefix="crio-fast-bench-"))
    mounted = False
    try:
        layer_tar, layer_gz, layer_zst = work / "layer.tar", work / "layer.tar.gz", work / "layer.tar.zst"
        started = time.monotonic()
        content, entries = build_layer(sources, args.size_mb * 10**6, layer_tar)
        compress_gzip(layer_tar, layer_gz)
        compress_zstd(layer_tar, layer_zst)
        print(
            f"layer: {entries} entries, {content / 1e6:.0f} MB of file content; tar {layer_tar.stat().st_size / 1e6:.0f} MB, "
            f"gzip {layer_gz.stat().st_size / 1e6:.0f} MB, zstd {layer_zst.stat().st_size / 1e6:.0f} MB "
            f"(built in {time.monotonic() - started:.0f} s)",
            file=sys.stderr,
        )

        targets = work / "out"
        targets.mkdir()
        if args.tmpfs:
            subprocess.run(["mount", "-t", "tmpfs", "-o", "size=90%,mode=0755", "tmpfs", str(targets)], check=True)
            mounted = True

        tools: list[tuple[str, Callable[[Path], None]]] = [
            ("GNU tar -xzf (gzip)", run_command(["tar", "-xzf", str(layer_gz)])),
        ]
        if tar_supports_zstd():
            tools.append(("GNU tar --zstd -xf (zstd)", run_command(["tar", "--zstd", "-xf", str(layer_zst)])))
        tools += [
            ("Python tarfile (gzip)", run_tarfile(layer_gz)),
            ("crio-fast LayerUnpacker (gzip)", run_unpacker(layer_gz, MEDIA_GZIP)),
            ("crio-fast LayerUnpacker (zstd)", run_unpacker(layer_zst, MEDIA_ZSTD)),
            ("crio-fast LayerUnpacker (uncompressed)", run_unpacker(layer_tar, MEDIA_TAR)),
        ]
        timings: dict[str, list[float]] = {name: [] for name, _ in tools}
        for round_no in range(args.runs):
            for index, (name, run) in enumerate(tools):
                dest = targets / f"r{round_no}-t{index}"
                dest.mkdir()
                # Start each run with no dirty pages: background writeback of the
                # previous run's files would otherwise be billed to this one.
                os.sync()
                t0 = time.perf_counter()
                run(dest)
                timings[name].append(time.perf_counter() - t0)
                print(f"round {round_no + 1}: {name}: {timings[name][-1]:.2f} s", file=sys.stderr)

        baseline = statistics.median(timings[tools[0][0]])
        fs = "tmpfs" if args.tmpfs else "the filesystem of " + tempfile.gettempdir()
        print(f"\n{content / 1e6:.0f} MB of file content in {entries} entries, {args.runs} runs, target: {fs}\n")
        print("| tool | median s | MB/s | vs GNU tar -xzf |")
        print("|---|---:|---:|---:|")
        for name, _ in tools:
            median = statistics.median(timings[name])
            print(f"| {name} | {median:.2f} | {content / 1e6 / median:.0f} | {baseline / median:.2f}x |")
        return 0
    finally:
        if mounted:
            subprocess.run(["umount", str(work / "out")], check=False)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
