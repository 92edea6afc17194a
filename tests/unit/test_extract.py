"""The native tar extractor on real files: formats, metadata, whiteouts and
hostile archives that try to reach outside the extraction root."""

from __future__ import annotations

import errno
import io
import os
import stat
import sys
import tarfile
import threading
import time
from pathlib import Path

import pytest

from crio_fast._native._extract import ExtractError, LayerExtractor
from tests.unit.tar_builders import (
    GNU_MAGIC,
    archive,
    base256,
    directory,
    end_of_archive,
    gnu_long_name,
    hardlink,
    header,
    member,
    pax_header,
    symlink,
)

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="extraction tests chown and mknod: they need root")


def extract(data: bytes, root: Path, *, chunk: int | None = None, **options) -> dict:
    """Extract ``data`` into ``root`` (created), feeding ``chunk`` bytes at a time."""
    root.mkdir(exist_ok=True)
    extractor = LayerExtractor(str(root), **options)
    try:
        step = chunk or max(len(data), 1)
        view = memoryview(data)
        for start in range(0, len(data), step):
            extractor.feed(view[start : start + step])
        return extractor.finish()
    finally:
        extractor.abort()


def tar_bytes(build, fmt=tarfile.PAX_FORMAT) -> bytes:
    """An archive written by Python's tarfile; ``build(add)`` adds members."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=fmt) as archive_file:

        def add(name: str, data: bytes = b"", **attrs) -> None:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            for key, value in attrs.items():
                setattr(info, key, value)
            archive_file.addfile(info, io.BytesIO(data) if info.isreg() else None)

        build(add)
    return buffer.getvalue()


def snapshot(top: Path, skip: Path) -> dict[str, tuple]:
    """Everything under ``top`` except ``skip``: type, mode, owner, times, content, xattrs."""
    state: dict[str, tuple] = {}
    for dirpath, dirnames, filenames in os.walk(top):
        here = Path(dirpath)
        dirnames[:] = [d for d in dirnames if here / d != skip]
        for name in [*dirnames, *filenames, "."]:
            path = here / name
            st = os.lstat(path)
            content = path.read_bytes() if stat.S_ISREG(st.st_mode) else None
            target = os.readlink(path) if stat.S_ISLNK(st.st_mode) else None
            xattrs = {} if stat.S_ISLNK(st.st_mode) else {k: os.getxattr(path, k) for k in os.listxattr(path)}
            state[str(path.relative_to(top))] = (
                st.st_mode,
                st.st_uid,
                st.st_gid,
                st.st_nlink,
                st.st_mtime_ns,
                content,
                target,
                xattrs,
            )
    return state


@pytest.fixture
def sandbox(tmp_path: Path):
    """A root to extract into and, beside it, a sentinel tree that must never change."""
    root = tmp_path / "root"
    root.mkdir()
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret").write_bytes(b"do not touch")
    (outside / "subdir").mkdir()
    before = snapshot(tmp_path, skip=root)

    class Sandbox:
        def __init__(self) -> None:
            self.root = root
            self.outside = outside

        def assert_outside_untouched(self) -> None:
            assert snapshot(tmp_path, skip=root) == before

    box = Sandbox()
    yield box
    box.assert_outside_untouched()


def tree(root: Path) -> dict[str, tuple]:
    """Comparable description of an extracted tree (the root's own times vary)."""
    state = snapshot(root, skip=root / "\0none")
    del state["."]
    return state


def long_symlink(name: str, target: str) -> bytes:
    """A symlink whose target may exceed the 100-byte linkname field."""
    return pax_header([("linkpath", target)]) + symlink(name, "placeholder")


# -- entry types and metadata ------------------------------------------------


def test_all_entry_types(tmp_path: Path) -> None:
    def build(add):
        add("dir", type=tarfile.DIRTYPE, mode=0o755)
        add("dir/file", b"content", mode=0o644)
        add("dir/contiguous", b"c7", type=tarfile.CONTTYPE)
        add("dir/link", type=tarfile.SYMTYPE, linkname="file")
        add("dir/hard", type=tarfile.LNKTYPE, linkname="dir/file")
        add("dir/chr", type=tarfile.CHRTYPE, devmajor=1, devminor=3, mode=0o666)
        add("dir/blk", type=tarfile.BLKTYPE, devmajor=7, devminor=0, mode=0o660)
        add("dir/fifo", type=tarfile.FIFOTYPE, mode=0o600)

    root = tmp_path / "root"
    stats = extract(tar_bytes(build), root)

    assert (root / "dir/file").read_bytes() == b"content"
    assert (root / "dir/contiguous").read_bytes() == b"c7"
    assert os.readlink(root / "dir/link") == "file"
    assert os.stat(root / "dir/hard").st_ino == os.stat(root / "dir/file").st_ino
    chr_stat = os.lstat(root / "dir/chr")
    assert stat.S_ISCHR(chr_stat.st_mode) and chr_stat.st_rdev == os.makedev(1, 3)
    assert stat.S_IMODE(chr_stat.st_mode) == 0o666  # beyond the umask: set explicitly
    blk_stat = os.lstat(root / "dir/blk")
    assert stat.S_ISBLK(blk_stat.st_mode) and blk_stat.st_rdev == os.makedev(7, 0)
    assert stat.S_ISFIFO(os.lstat(root / "dir/fifo").st_mode)
    assert stats == {
        "entries": 8,
        "files": 2,
        "dirs": 1,
        "symlinks": 1,
        "hardlinks": 1,
        "devices": 2,
        "fifos": 1,
        "whiteouts": 0,
        "skipped": 0,
        "xattrs_skipped": 0,
        "bytes": 9,
    }


def test_ownership_modes_and_mtimes(tmp_path: Path) -> None:
    def build(add):
        add("d", type=tarfile.DIRTYPE, mode=0o1777, uid=1000, gid=1001, mtime=1_000_000)
        add("d/suid", b"#!/bin/sh\n", mode=0o4755, uid=1234, gid=5678, mtime=2_000_000)
        add("d/sgid", b"x", mode=0o2711, uid=1, gid=2, mtime=3_000_000)
        add("d/private", b"y", mode=0o600, uid=65534, gid=65534, mtime=4_000_000)
        add("d/link", type=tarfile.SYMTYPE, linkname="private", uid=42, gid=43, mtime=5_000_000)
        add("d/fifo", type=tarfile.FIFOTYPE, mode=0o640, uid=7, gid=8, mtime=6_000_000)
        add("ro", type=tarfile.DIRTYPE, mode=0o555, mtime=7_000_000)
        add("ro/inside", b"written after ro/", mode=0o444)

    root = tmp_path / "root"
    extract(tar_bytes(build), root)

    def meta(rel: str) -> tuple[int, int, int, int]:
        st = os.lstat(root / rel)
        return stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid, int(st.st_mtime)

    # Directory modes and mtimes hold although entries were written into them.
    assert meta("d") == (0o1777, 1000, 1001, 1_000_000)
    assert meta("d/suid") == (0o4755, 1234, 5678, 2_000_000)
    assert meta("d/sgid") == (0o2711, 1, 2, 3_000_000)
    assert meta("d/private") == (0o600, 65534, 65534, 4_000_000)
    link = os.lstat(root / "d/link")
    assert (link.st_uid, link.st_gid, int(link.st_mtime)) == (42, 43, 5_000_000)
    assert meta("d/fifo") == (0o640, 7, 8, 6_000_000)
    assert meta("ro")[0] == 0o555 and meta("ro")[3] == 7_000_000
    assert (root / "ro/inside").read_bytes() == b"written after ro/"


def test_preserve_owner_false_keeps_extracting_user(tmp_path: Path) -> None:
    data = tar_bytes(lambda add: add("f", b"x", uid=1234, gid=5678, mode=0o4750))
    extract(data, tmp_path / "root", preserve_owner=False)
    st = os.stat(tmp_path / "root/f")
    assert (st.st_uid, st.st_gid) == (os.geteuid(), os.getegid())
    assert stat.S_IMODE(st.st_mode) == 0o4750


def test_pax_fractional_and_negative_mtime(tmp_path: Path) -> None:
    data = archive(
        pax_header([("mtime", "1234567890.123456789")]),
        member("fraction", b"x"),
        pax_header([("mtime", "-1.25")]),
        member("before_epoch", b"y"),
    )
    extract(data, tmp_path / "root")
    assert os.stat(tmp_path / "root/fraction").st_mtime_ns == 1234567890_123456789
    assert os.stat(tmp_path / "root/before_epoch").st_mtime_ns == -1_250_000_000


def test_pax_xattrs_on_files_dirs_and_symlinks(tmp_path: Path) -> None:
    capability = bytes.fromhex("0100000200200000000000000000000000000000")  # cap_net_bind_service
    data = archive(
        pax_header([("SCHILY.xattr.trusted.dir", b"on-dir")]),
        directory("d/"),
        pax_header([("SCHILY.xattr.trusted.bin", b"\x00\x01binary\xff"), ("SCHILY.xattr.user.note", b"hello")]),
        member("d/f", b"data", mode=0o755),
        pax_header([("SCHILY.xattr.security.capability", capability)]),
        member("d/ping", b"elf", mode=0o755, uid=1000),
        pax_header([("SCHILY.xattr.user.on_symlink", b"refused by linux")]),
        symlink("d/l", "f"),
    )
    root = tmp_path / "root"
    stats = extract(data, root)
    assert os.getxattr(root / "d", "trusted.dir") == b"on-dir"
    assert os.getxattr(root / "d/f", "trusted.bin") == b"\x00\x01binary\xff"
    assert os.getxattr(root / "d/f", "user.note") == b"hello"
    # Set after chown, which would otherwise have dropped it.
    assert os.getxattr(root / "d/ping", "security.capability") == capability
    assert stats["xattrs_skipped"] == 1  # user.* on a symlink
    assert stats["symlinks"] == 1


def test_global_pax_header_applies_to_later_entries(tmp_path: Path) -> None:
    data = archive(
        member("before", b"0", uid=1),
        pax_header([("uid", "4242"), ("path", "ignored-in-global"), ("comment", "git archive")], global_header=True),
        member("after1", b"1", uid=1),
        pax_header([("uid", "7")]),
        member("after2", b"2", uid=1),
    )
    root = tmp_path / "root"
    extract(data, root)
    assert os.stat(root / "before").st_uid == 1
    assert os.stat(root / "after1").st_uid == 4242
    assert os.stat(root / "after2").st_uid == 7  # per-entry header wins
    assert sorted(os.listdir(root)) == ["after1", "after2", "before"]


def test_gnu_long_names_and_links(tmp_path: Path) -> None:
    long_dir = "d" * 120
    long_name = f"{long_dir}/{'f' * 150}"
    long_target = "../" + "t" * 200

    def build(add):
        add(long_name, b"long")
        add(f"{long_dir}/symlink", type=tarfile.SYMTYPE, linkname=long_target)
        add(f"{long_dir}/hard", type=tarfile.LNKTYPE, linkname=long_name)

    data = tar_bytes(build, fmt=tarfile.GNU_FORMAT)
    assert b"././@LongLink" in data
    root = tmp_path / "root"
    extract(data, root)
    assert (root / long_name).read_bytes() == b"long"
    assert os.readlink(root / long_dir / "symlink") == long_target
    assert os.stat(root / long_dir / "hard").st_ino == os.stat(root / long_name).st_ino


def test_hand_made_gnu_long_name(tmp_path: Path) -> None:
    name = "g" * 200
    data = archive(gnu_long_name(name), member("truncated-in-header", b"x", magic=GNU_MAGIC))
    extract(data, tmp_path / "root")
    assert (tmp_path / "root" / name).read_bytes() == b"x"
    assert not (tmp_path / "root/truncated-in-header").exists()


def test_pax_long_path_and_ustar_prefix(tmp_path: Path) -> None:
    pax_path = "/".join(["p" * 60] * 5) + "/file"
    ustar_path = "u" * 120 + "/" + "n" * 90
    data = tar_bytes(lambda add: add(pax_path, b"pax"))
    extract(data, tmp_path / "pax")
    assert (tmp_path / "pax" / pax_path).read_bytes() == b"pax"

    ustar = tar_bytes(lambda add: add(ustar_path, b"ustar"), fmt=tarfile.USTAR_FORMAT)
    assert ustar[345:345 + 120] == b"u" * 120  # really split into prefix + name
    extract(ustar, tmp_path / "ustar")
    assert (tmp_path / "ustar" / ustar_path).read_bytes() == b"ustar"


def test_base256_numeric_fields(tmp_path: Path) -> None:
    data = archive(
        member("big_ids", b"12345", size=base256(5, 12), uid=base256(10_000_000, 8), gid=base256(3_000_000, 8)),
        member("old", b"x", mtime=base256(-1000, 12)),
    )
    root = tmp_path / "root"
    stats = extract(data, root)
    st = os.stat(root / "big_ids")
    assert (st.st_uid, st.st_gid, st.st_size) == (10_000_000, 3_000_000, 5)
    assert os.stat(root / "old").st_mtime == -1000
    assert stats["bytes"] == 6


def test_old_style_entries(tmp_path: Path) -> None:
    data = archive(
        member("olddir/", typeflag=b"0", mode=0o750),  # pre-POSIX: a trailing slash marks a directory
        member("olddir/file", b"v7", typeflag=b"\0", magic=b"\0" * 8),  # v7 header, NUL type
        member("label", b"volume label data", typeflag=b"V", magic=GNU_MAGIC),
    )
    root = tmp_path / "root"
    stats = extract(data, root)
    assert stat.S_IMODE(os.stat(root / "olddir").st_mode) == 0o750
    assert (root / "olddir/file").read_bytes() == b"v7"
    assert not (root / "label").exists()
    assert stats["entries"] == 2


def test_root_entry_sets_root_metadata(tmp_path: Path) -> None:
    data = archive(directory("./", mode=0o711, uid=3, gid=4, mtime=123), member("./x", b"x"))
    root = tmp_path / "root"
    extract(data, root)
    st = os.stat(root)
    assert (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid, int(st.st_mtime)) == (0o711, 3, 4, 123)


def test_missing_parents_are_created(tmp_path: Path) -> None:
    root = tmp_path / "root"
    extract(archive(member("a/b/c/file", b"deep")), root)
    assert (root / "a/b/c/file").read_bytes() == b"deep"
    assert stat.S_IMODE(os.stat(root / "a/b").st_mode) == 0o755 & ~current_umask()


def current_umask() -> int:
    mask = os.umask(0o22)
    os.umask(mask)
    return mask


def test_existing_entries_are_replaced(tmp_path: Path) -> None:
    data = archive(
        member("f", b"first"),
        member("f", b"second"),  # file over file
        directory("d/", mode=0o700),
        member("d/keep", b"kept"),
        directory("d/", mode=0o755, uid=9),  # dir over dir: kept, metadata updated
        member("x", b"file"),
        directory("x/"),  # dir over file
        directory("y/"),
        member("y/inner/deep", b"z"),
        member("y", b"file over a whole tree"),
        symlink("s", "f"),
        member("s", b"file over symlink"),
    )
    root = tmp_path / "root"
    extract(data, root)
    assert (root / "f").read_bytes() == b"second"
    assert (root / "d/keep").read_bytes() == b"kept"
    st = os.stat(root / "d")
    assert (stat.S_IMODE(st.st_mode), st.st_uid) == (0o755, 9)
    assert (root / "x").is_dir()
    assert (root / "y").read_bytes() == b"file over a whole tree"
    assert not (root / "s").is_symlink() and (root / "s").read_bytes() == b"file over symlink"


def test_hardlink_edge_cases(tmp_path: Path) -> None:
    root = tmp_path / "root"
    stats = extract(archive(member("f", b"x"), hardlink("f", "f"), hardlink("./g", "/f")), root)
    assert (root / "f").read_bytes() == b"x"
    assert os.stat(root / "g").st_nlink == 2
    assert stats["hardlinks"] == 2

    with pytest.raises(ExtractError) as info:
        extract(archive(hardlink("early", "not-yet")), tmp_path / "root2")
    assert info.value.errno == errno.ENOENT
    assert info.value.entry == "early"
    assert "not-yet" in str(info.value) and "No such file or directory" in str(info.value)


# -- whiteouts -------------------------------------------------------------------


def test_overlay_whiteouts(tmp_path: Path) -> None:
    data = archive(
        directory("etc/"),
        member("etc/.wh.passwd"),
        directory("opaque/"),
        member("opaque/.wh..wh..opq"),
        member("opaque/new", b"n"),
        member("implicit/.wh..wh..opq"),  # marker before (without) its directory entry
        member(".wh..wh.plnk"),
        member("top/.wh.gone-dir", b"whiteouts carry no data but this one does"),
    )
    root = tmp_path / "root"
    stats = extract(data, root)
    whiteout = os.lstat(root / "etc/passwd")
    assert stat.S_ISCHR(whiteout.st_mode) and whiteout.st_rdev == 0
    assert not (root / "etc/.wh.passwd").exists()
    assert stat.S_ISCHR(os.lstat(root / "top/gone-dir").st_mode)
    assert os.getxattr(root / "opaque", "trusted.overlay.opaque") == b"y"
    assert os.getxattr(root / "implicit", "trusted.overlay.opaque") == b"y"
    assert not (root / "opaque/.wh..wh..opq").exists()
    assert (root / "opaque/new").read_bytes() == b"n"
    assert not (root / ".wh..wh.plnk").exists() and not (root / "plnk").exists()
    assert stats["whiteouts"] == 4 and stats["skipped"] == 1


def test_whiteouts_kept_as_files_when_disabled(tmp_path: Path) -> None:
    root = tmp_path / "root"
    stats = extract(archive(member(".wh.gone"), member("d/.wh..wh..opq")), root, overlay_whiteouts=False)
    assert (root / ".wh.gone").is_file()
    assert (root / "d/.wh..wh..opq").is_file()
    assert stats["whiteouts"] == 0 and stats["files"] == 2


def test_whiteout_of_dot_is_rejected(tmp_path: Path) -> None:
    with pytest.raises(ExtractError, match="not a valid name"):
        extract(archive(member("d/.wh..")), tmp_path / "root")


# -- hostile archives --------------------------------------------------------------


def test_dotdot_components_stay_inside(sandbox) -> None:
    data = archive(
        member("../outside/secret", b"overwritten?"),
        member("a/../../../../outside/evil", b"evil"),
        directory("../../outside/subdir/", mode=0o777),
    )
    extract(data, sandbox.root)
    assert (sandbox.root / "outside/secret").read_bytes() == b"overwritten?"
    assert (sandbox.root / "outside/evil").read_bytes() == b"evil"


def test_absolute_paths_are_resolved_inside(sandbox) -> None:
    absolute = str(sandbox.outside / "secret")
    data = archive(pax_header([("path", absolute)]), member("x", b"absolute"), member("//double/slash", b"d"))
    extract(data, sandbox.root)
    assert (sandbox.root / absolute.lstrip("/")).read_bytes() == b"absolute"
    assert (sandbox.root / "double/slash").read_bytes() == b"d"


@pytest.mark.parametrize("target_kind", ["absolute", "relative"])
def test_symlink_out_then_write_through_it(sandbox, target_kind: str) -> None:
    target = str(sandbox.outside) if target_kind == "absolute" else "../outside"
    data = archive(long_symlink("escape", target), member("escape/secret", b"pwned"), member("escape/new", b"pwned"))
    with pytest.raises(ExtractError) as info:
        extract(data, sandbox.root)
    # The symlink resolves inside the root, where nothing exists at its target.
    assert info.value.errno == errno.ENOENT
    assert "escape/secret" == info.value.entry


def test_symlink_to_root_then_write_through_lands_in_root(sandbox) -> None:
    data = archive(symlink("up", "/"), symlink("dots", "../../../.."), member("up/a", b"1"), member("dots/b", b"2"))
    extract(data, sandbox.root)
    assert (sandbox.root / "a").read_bytes() == b"1"
    assert (sandbox.root / "b").read_bytes() == b"2"


def test_directory_replaced_by_symlink_then_written_through(sandbox) -> None:
    data = archive(
        directory("d/"),
        member("d/a", b"a"),  # caches d/ as the parent directory
        long_symlink("d", str(sandbox.outside)),
        member("d/secret", b"pwned"),
    )
    with pytest.raises(ExtractError):
        extract(data, sandbox.root)
    assert os.readlink(sandbox.root / "d") == str(sandbox.outside)


def test_directory_replaced_by_symlink_to_root_invalidates_cache(sandbox) -> None:
    data = archive(directory("d/", mode=0o700), member("d/a", b"a"), symlink("d", "/"), member("d/b", b"b"))
    extract(data, sandbox.root)
    assert (sandbox.root / "d").is_symlink()
    assert (sandbox.root / "b").read_bytes() == b"b"  # through the new symlink, not the removed directory


@pytest.mark.parametrize(
    "link_target",
    ["../outside/secret", "/../outside/secret", "escape/secret"],
)
def test_hardlink_out_of_root_fails(sandbox, link_target: str) -> None:
    data = archive(long_symlink("escape", str(sandbox.outside)), hardlink("stolen", link_target))
    with pytest.raises(ExtractError) as info:
        extract(data, sandbox.root)
    assert info.value.errno == errno.ENOENT
    assert not (sandbox.root / "stolen").exists()


def test_hardlink_to_symlink_links_the_symlink_itself(sandbox) -> None:
    data = archive(long_symlink("pointer", str(sandbox.outside / "secret")), hardlink("hard", "pointer"))
    extract(data, sandbox.root)
    assert (sandbox.root / "hard").is_symlink()
    assert os.lstat(sandbox.root / "hard").st_ino == os.lstat(sandbox.root / "pointer").st_ino


def test_file_over_symlink_pointing_out_replaces_the_symlink(sandbox) -> None:
    data = archive(
        long_symlink("f", str(sandbox.outside / "secret")),
        member("f", b"replaced", mode=0o777, uid=4242),
        long_symlink("dir", str(sandbox.outside / "subdir")),
        directory("dir/", mode=0o777, uid=4242),
        long_symlink("fifo", str(sandbox.outside / "secret")),
        member("fifo", typeflag=b"6", mode=0o666),
    )
    extract(data, sandbox.root)
    assert not (sandbox.root / "f").is_symlink() and (sandbox.root / "f").read_bytes() == b"replaced"
    assert (sandbox.root / "dir").is_dir() and not (sandbox.root / "dir").is_symlink()
    fifo = os.lstat(sandbox.root / "fifo")
    assert stat.S_ISFIFO(fifo.st_mode) and stat.S_IMODE(fifo.st_mode) == 0o666


def test_deferred_directory_metadata_not_applied_through_symlink(sandbox) -> None:
    data = archive(directory("x/", mode=0o777, mtime=1), long_symlink("x", str(sandbox.outside / "subdir")))
    extract(data, sandbox.root)
    assert (sandbox.root / "x").is_symlink()


def test_whiteouts_through_symlink_pointing_out(sandbox) -> None:
    data = archive(long_symlink("w", str(sandbox.outside)), member("w/.wh.secret"))
    with pytest.raises(ExtractError):
        extract(data, sandbox.root)
    opaque = archive(long_symlink("o", str(sandbox.outside)), member("o/.wh..wh..opq"))
    with pytest.raises(ExtractError):
        extract(opaque, sandbox.root)


def test_devices_skipped_when_not_allowed(sandbox) -> None:
    data = archive(
        member("dev/sda", typeflag=b"4", devmajor=8, devminor=0),
        member("dev/mem", typeflag=b"3", devmajor=1, devminor=1),
        member("dev/fifo", typeflag=b"6"),
        member(".wh.whiteout-still-made"),
    )
    stats = extract(data, sandbox.root, allow_devices=False)
    assert not (sandbox.root / "dev/sda").exists() and not (sandbox.root / "dev/mem").exists()
    assert stat.S_ISFIFO(os.lstat(sandbox.root / "dev/fifo").st_mode)
    assert stat.S_ISCHR(os.lstat(sandbox.root / "whiteout-still-made").st_mode)
    assert stats["skipped"] == 2 and stats["devices"] == 0


def test_very_long_names_fail_cleanly(sandbox) -> None:
    long_component = "c" * 300
    with pytest.raises(ExtractError) as info:
        extract(archive(pax_header([("path", long_component)]), member("x", b"x")), sandbox.root)
    assert info.value.errno == errno.ENAMETOOLONG

    too_deep = "/".join(["d"] * 3000) + "/file"
    with pytest.raises(ExtractError) as info:
        extract(archive(pax_header([("path", too_deep)]), member("x", b"x")), sandbox.root)
    assert info.value.errno == errno.ENAMETOOLONG

    huge = "h" * 1_000_000
    with pytest.raises(ExtractError) as info:
        extract(archive(gnu_long_name(huge), member("x", b"x")), sandbox.root)
    assert info.value.entry == huge
    assert len(str(info.value)) < 2000, "the message abbreviates the name"
    assert "1000000 bytes" in str(info.value)


def test_oversized_extended_header_is_refused_before_allocating(sandbox) -> None:
    data = header("PaxHeader", typeflag=b"x", size=1 << 32)
    extractor = LayerExtractor(str(sandbox.root))
    with pytest.raises(ExtractError, match="exceeds the limit"):
        extractor.feed(data)


def test_nul_byte_in_pax_path_is_rejected(sandbox) -> None:
    with pytest.raises(ExtractError, match="NUL"):
        extract(archive(pax_header([("path", b"ok\0../../outside/secret")]), member("x", b"x")), sandbox.root)


# -- stream handling ------------------------------------------------------------------


def rich_archive() -> bytes:
    """Many formats and entry kinds in one stream."""

    def build(add):
        add("top", type=tarfile.DIRTYPE, mode=0o755, mtime=10)
        for i in range(40):
            add(f"top/file{i:02d}", bytes([i]) * (i * 97), mode=0o600 + i % 8, uid=i, gid=2 * i, mtime=1000 + i)
        add("top/" + "long" * 40, b"long name", mtime=5)
        add("top/big", os.urandom(300_000), mtime=6)
        add("top/sym", type=tarfile.SYMTYPE, linkname="big")
        add("top/hard", type=tarfile.LNKTYPE, linkname="top/big")
        add("top/fifo", type=tarfile.FIFOTYPE)
        add("top/.wh.deleted")

    pax = tar_bytes(build)
    # A hand-made tail: xattrs and base-256 fields, before the end marker.
    pax = pax.rstrip(b"\0")
    pax += b"\0" * (-len(pax) % 512)
    return pax + archive(
        pax_header([("SCHILY.xattr.trusted.k", b"v"), ("mtime", "77.5")]),
        member("tail", b"tail", uid=base256(5_000_000, 8)),
    )


@pytest.mark.parametrize("writer_threads", [0, 1, 2])
def test_one_byte_at_a_time_equals_all_at_once(tmp_path: Path, writer_threads: int) -> None:
    data = rich_archive()
    whole = extract(data, tmp_path / "whole", writer_threads=writer_threads)
    bytewise = extract(data, tmp_path / "bytewise", chunk=1, writer_threads=writer_threads)
    odd = extract(data, tmp_path / "odd", chunk=4099, writer_threads=writer_threads)
    assert whole == bytewise == odd
    assert whole["files"] == 43 and whole["whiteouts"] == 1
    reference = tree(tmp_path / "whole")
    assert tree(tmp_path / "bytewise") == reference
    assert tree(tmp_path / "odd") == reference
    assert os.getxattr(tmp_path / "bytewise/tail", "trusted.k") == b"v"
    assert os.stat(tmp_path / "bytewise/tail").st_uid == 5_000_000


@pytest.mark.parametrize(
    "cut, message",
    [
        (512 + 100, "file content are missing"),  # inside the first file's content
        (300, "ends 300 bytes into a header"),
        (512 + 1024 + 200, "ends 200 bytes into a header"),
        (512 + 1024 - 10, "padding are missing"),
    ],
)
def test_truncated_archive_fails_at_finish(tmp_path: Path, cut: int, message: str) -> None:
    data = archive(member("first", b"x" * 1000), member("second", b"y"))
    root = tmp_path / "root"
    root.mkdir()
    extractor = LayerExtractor(str(root))
    extractor.feed(data[:cut])
    with pytest.raises(ExtractError, match=message):
        extractor.finish()


def test_truncated_after_extended_header_fails(tmp_path: Path) -> None:
    with pytest.raises(ExtractError, match="extended header without its entry"):
        extract(pax_header([("path", "x")]), tmp_path / "root")


def test_clean_end_without_end_blocks_and_trailing_padding(tmp_path: Path) -> None:
    entries = member("a", b"1") + member("b", b"2")
    assert extract(entries, tmp_path / "no_end")["files"] == 2
    # A lone zero block is tolerated; after the end marker anything is record padding.
    padded = member("a", b"1") + b"\0" * 512 + member("b", b"2") + end_of_archive() + b"junk" * 1000
    assert extract(padded, tmp_path / "padded")["files"] == 2


def test_bad_checksum_fails_at_once(tmp_path: Path) -> None:
    bad = header("f", size=0, checksum=12345)
    with pytest.raises(ExtractError, match="checksum mismatch.*offset 512"):
        extract(member("ok", b"") + bad + end_of_archive(), tmp_path / "root")
    assert (tmp_path / "root/ok").exists() and not (tmp_path / "root/f").exists()


def test_signed_checksum_is_accepted(tmp_path: Path) -> None:
    block = bytearray(header("caf\xe9".encode("latin-1")))
    block[148:156] = b" " * 8
    signed_sum = sum(b - 256 if b > 127 else b for b in block)
    block[148:156] = format(signed_sum, "06o").encode() + b"\0 "
    assert extract(bytes(block) + end_of_archive(), tmp_path / "root")["files"] == 1


@pytest.mark.parametrize(
    "data, message",
    [
        (archive(member("sparse", b"", typeflag=b"S", magic=GNU_MAGIC)), "unsupported tar entry type 0x53 \\('S'\\)"),
        (archive(pax_header([("GNU.sparse.major", "1")]), member("s", b"")), "sparse files"),
        (archive(member("bad", b"", size=b"12x4")), "invalid size field"),
        (archive(member("PaxHeader", b"3 a\n", typeflag=b"x"), member("x")), "malformed record"),
        (archive(pax_header([("uid", "-1")]), member("x")), "invalid uid"),
    ],
)
def test_malformed_archives(tmp_path: Path, data: bytes, message: str) -> None:
    with pytest.raises(ExtractError, match=message) as info:
        extract(data, tmp_path / "root")
    assert info.value.errno is None


# -- the Python object -----------------------------------------------------------------


def test_lifecycle_errors(tmp_path: Path) -> None:
    with pytest.raises(ExtractError) as info:
        LayerExtractor(str(tmp_path / "missing"))
    assert info.value.errno == errno.ENOENT and "cannot open extraction root" in str(info.value)

    extractor = LayerExtractor(tmp_path)  # PathLike accepted
    extractor.feed(b"")
    extractor.feed(bytearray(end_of_archive()))
    assert extractor.finish()["entries"] == 0
    with pytest.raises(ValueError, match="finished"):
        extractor.feed(b"x")
    extractor.abort()
    extractor.abort()

    failed = LayerExtractor(str(tmp_path))
    with pytest.raises(ExtractError):
        failed.feed(header("f", checksum=1))
    with pytest.raises(ExtractError, match="checksum"):  # stays failed, same reason
        failed.feed(b"more")
    failed.abort()
    with pytest.raises(ValueError, match="aborted"):
        failed.finish()


def python_time_during_one_feed(root: Path, data: bytes) -> tuple[float, float]:
    """(seconds this thread ran Python while another was inside feed, feed seconds)."""
    root.mkdir()
    extractor = LayerExtractor(str(root), writer_threads=0)
    inside_feed = [False]
    elapsed: list[float] = []

    def run() -> None:
        inside_feed[0] = True
        t0 = time.perf_counter()
        extractor.feed(data)  # one call for the whole archive
        elapsed.append(time.perf_counter() - t0)
        inside_feed[0] = False

    worker = threading.Thread(target=run)
    worker.start()
    running = 0.0
    last = time.perf_counter()
    while worker.is_alive():
        now = time.perf_counter()
        if inside_feed[0] and now - last < 0.002:  # longer gaps: waiting for the GIL or the CPU
            running += now - last
        last = now
    worker.join()
    extractor.finish()
    return running, elapsed[0]


def test_feed_releases_the_gil(tmp_path: Path) -> None:
    payload = os.urandom(1 << 20) * 16
    data = archive(*(member(f"f{i}", payload) for i in range(4)))
    # Were the GIL held, this thread could run only in one switch interval
    # before the call and one after. Other load on the machine can starve
    # it too, hence a few attempts.
    held_gil_bound = 2 * sys.getswitchinterval()
    measured = []
    for attempt in range(3):
        running, elapsed = python_time_during_one_feed(tmp_path / f"attempt{attempt}", data)
        measured.append(f"ran {running:.3f}s of a {elapsed:.3f}s feed")
        if running > 3 * held_gil_bound:
            break
    else:
        pytest.fail("; ".join(measured))


def test_concurrent_extractors_in_threads(tmp_path: Path) -> None:
    data = rich_archive()
    results: dict[int, dict] = {}
    errors: list[BaseException] = []

    def run(index: int) -> None:
        try:
            results[index] = extract(data, tmp_path / f"r{index}", chunk=65536)
        except BaseException as exc:  # reported by the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    reference = tree(tmp_path / "r0")
    for index in range(1, 4):
        assert results[index] == results[0]
        assert tree(tmp_path / f"r{index}") == reference
