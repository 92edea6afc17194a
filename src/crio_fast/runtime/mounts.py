"""The host mounts the engine makes (overlays of image layers) and how they are found and detached.

A pod's monitor mounts a handful of things under its pod dir (the pod dir's
private self-bind, the nsfs pins, the pod's /dev/shm); an external runtime's
bundle has its rootfs mounted. Tearing them down must not cost in proportion
to the node: /proc/self/mountinfo lists every mount of the host, five per pod
of ours plus the kubelet's volumes, and reading it means the kernel prints
(and Python parses) thousands of lines per call. Instead each candidate path
is asked for the id of the mount it lives on (statx STATX_MNT_ID, Linux 5.8);
a path whose mount differs from its parent directory's is a mount point, same
filesystem or not (a bind of a directory onto itself included). Kernels
without STATX_MNT_ID fall back to mountinfo.
"""

from __future__ import annotations

import ctypes
import errno
import os
import struct
import tempfile
from typing import Sequence

from crio_fast.cgroups.layout import parse_mountinfo

_libc = ctypes.CDLL(None, use_errno=True)
_statx = getattr(_libc, "statx", None)
if _statx is not None:
    _statx.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_uint, ctypes.c_void_p]
    _statx.restype = ctypes.c_int
_libc.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]
_libc.umount2.restype = ctypes.c_int
_libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p]
_libc.mount.restype = ctypes.c_int

_AT_FDCWD = -100
_AT_SYMLINK_NOFOLLOW = 0x100
_AT_NO_AUTOMOUNT = 0x800
_STATX_MNT_ID = 0x1000
_STATX_SIZE = 256  # struct statx, padded by the kernel ABI to 0x100
_STATX_MNT_ID_OFFSET = 0x90
_MNT_DETACH = 2
_MS_BIND = 0x1000
_MS_PRIVATE = 1 << 18
# Mounts stacked on one path are detached one at a time; more than this is someone else's loop.
_MAX_STACKED = 64


def mount_id(path: str) -> int | None:
    """The id of the mount ``path`` is on (not following a final symlink); None where the kernel
    cannot tell (no statx, or a kernel before STATX_MNT_ID). OSError if the path cannot be reached."""
    if _statx is None:
        return None
    buffer = ctypes.create_string_buffer(_STATX_SIZE)
    if _statx(_AT_FDCWD, os.fsencode(path), _AT_SYMLINK_NOFOLLOW | _AT_NO_AUTOMOUNT, _STATX_MNT_ID, buffer) != 0:
        err = ctypes.get_errno()
        if err == errno.ENOSYS:
            return None
        raise OSError(err, f"statx {path}: {os.strerror(err)}", path)
    mask = int.from_bytes(buffer.raw[0:4], "little")
    if not mask & _STATX_MNT_ID:
        return None
    return int.from_bytes(buffer.raw[_STATX_MNT_ID_OFFSET:_STATX_MNT_ID_OFFSET + 8], "little")


# open_tree(2) and mount_setattr(2) (Linux 5.2, 5.12), which glibc 2.36 does not wrap; calls this new have
# one number on every architecture.
_SYS_OPEN_TREE = 428
_SYS_MOVE_MOUNT = 429
_SYS_MOUNT_SETATTR = 442
_MOVE_MOUNT_F_EMPTY_PATH = 0x4
_AT_FDCWD = -100
_AT_EMPTY_PATH = 0x1000
_OPEN_TREE_CLONE = 1
_MOUNT_ATTR_IDMAP = 0x00100000
_MOUNT_ATTR = struct.Struct("QQQQ")  # struct mount_attr: attr_set, attr_clr, propagation, userns_fd
_libc.syscall.restype = ctypes.c_long


def idmapped_clone(path: str, userns_fd: int) -> int:
    """A detached clone of the mount at ``path`` (open_tree OPEN_TREE_CLONE), ID-mapped with the user namespace
    ``userns_fd`` (MOUNT_ATTR_IDMAP): an fd the caller closes. Files the node's root owns show, through it,
    as that namespace's root."""
    fd = _libc.syscall(ctypes.c_long(_SYS_OPEN_TREE), ctypes.c_int(_AT_FDCWD), os.fsencode(path),
                       ctypes.c_uint(_OPEN_TREE_CLONE | os.O_CLOEXEC))
    if fd < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"open_tree {path}: {os.strerror(err)}", path)
    attr = ctypes.create_string_buffer(_MOUNT_ATTR.pack(_MOUNT_ATTR_IDMAP, 0, 0, userns_fd), _MOUNT_ATTR.size)
    if _libc.syscall(ctypes.c_long(_SYS_MOUNT_SETATTR), ctypes.c_int(fd), b"", ctypes.c_uint(_AT_EMPTY_PATH), attr,
                     ctypes.c_size_t(_MOUNT_ATTR.size)) != 0:
        err = ctypes.get_errno()
        os.close(fd)
        raise OSError(err, f"ID-map {path}: {os.strerror(err)}", path)
    return fd


def _attach(tree_fd: int, point: str) -> None:
    if _libc.syscall(ctypes.c_long(_SYS_MOVE_MOUNT), ctypes.c_int(tree_fd), b"", ctypes.c_int(_AT_FDCWD),
                     os.fsencode(point), ctypes.c_uint(_MOVE_MOUNT_F_EMPTY_PATH)) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"attach an ID-mapped layer on {point}: {os.strerror(err)}", point)


def mount_overlay(lower: Sequence[str], target: str, *, upper: str | None = None, work: str | None = None,
                  options: Sequence[str] = (), flags: int = 0, idmap_userns_fd: int | None = None) -> None:
    """Mount an overlay on ``target`` on the host: ``lower`` top-most first, read-only without ``upper``.

    One mount(2) with the joined options, so they must fit in a page (E2BIG naming the target when
    they do not); the monitor passes lower dirs one by one where the kernel can (docs/monitor.md).
    ``idmap_userns_fd``: the lower dirs ID-mapped with that user namespace (Linux 5.19). Overlayfs keeps
    private clones of its layers, which older kernels (6.1; not 6.18) make only of attached mounts: each ID-mapped
    clone is attached on a directory next to ``target`` for the mount, and detached again after it."""
    if idmap_userns_fd is None:
        _mount_overlay(lower, target, upper=upper, work=work, options=options, flags=flags)
        return
    holder = tempfile.mkdtemp(prefix=".idmapped-layers-", dir=os.path.dirname(target))
    attached: list[str] = []
    try:
        for index, path in enumerate(lower):
            point = os.path.join(holder, str(index))
            os.mkdir(point, 0o700)
            fd = idmapped_clone(path, idmap_userns_fd)
            try:
                _attach(fd, point)
            finally:
                os.close(fd)
            attached.append(point)
        _mount_overlay(attached, target, upper=upper, work=work, options=options, flags=flags)
    finally:
        # Never a recursive removal: a layer that would not detach is the image's own files.
        for point in reversed(attached):
            try:
                detach(point)
            except OSError:
                pass
        for index in range(len(lower)):
            try:
                os.rmdir(os.path.join(holder, str(index)))
            except OSError:
                pass
        try:
            os.rmdir(holder)
        except OSError:
            pass


def _mount_overlay(lower: Sequence[str], target: str, *, upper: str | None, work: str | None,
                   options: Sequence[str], flags: int) -> None:
    parts = [f"lowerdir={':'.join(lower)}"]
    if upper:
        parts += [f"upperdir={upper}", f"workdir={work}"]
    parts += list(options)
    data = ",".join(parts).encode()
    if len(data) >= os.sysconf("SC_PAGE_SIZE"):
        raise OSError(errno.E2BIG, f"overlay options for {target} exceed one page ({len(data)} bytes)", target)
    if _libc.mount(b"overlay", os.fsencode(target), b"overlay", flags, data) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"mount overlay on {target}: {os.strerror(err)}", target)


def bind_private_self(path: str) -> None:
    """Bind the directory ``path`` onto itself and make that mount private, as a monitor does its pod
    dir: nsfs pins made below it then never propagate into other mount namespaces (a propagated copy
    would keep its namespace alive after the pin is gone)."""
    target = os.fsencode(path)
    if _libc.mount(target, target, None, _MS_BIND, None) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"bind {path} on itself: {os.strerror(err)}", path)
    if _libc.mount(None, target, None, _MS_PRIVATE, None) != 0:
        err = ctypes.get_errno()
        detach(path)
        raise OSError(err, f"make {path} a private mount: {os.strerror(err)}", path)


def detach(path: str) -> None:
    """umount2(MNT_DETACH): the mount leaves the tree now, its filesystem goes once unused."""
    if _libc.umount2(os.fsencode(path), _MNT_DETACH) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"umount {path}: {os.strerror(err)}", path)


def mount_points_under(root: str) -> list[str] | None:
    """Every mount point at or under ``root`` (a realpath), parents before children, without
    descending into a mounted filesystem other than at ``root`` itself (a detach takes what is
    mounted inside it along). Every directory on root's own mount is visited: meant for small
    trees such as a pod dir. None where the kernel cannot tell mounts by id."""
    try:
        root_id, parent_id = mount_id(root), mount_id(os.path.dirname(root))
    except FileNotFoundError:
        return []
    if root_id is None or parent_id is None:
        return None
    points = [root] if root_id != parent_id else []
    pending = [(root, root_id)]
    while pending:
        directory, directory_id = pending.pop()
        try:
            entries = list(os.scandir(directory))
        except (FileNotFoundError, NotADirectoryError):
            continue
        for entry in entries:
            try:
                entry_id = mount_id(entry.path)
            except FileNotFoundError:
                continue
            if entry_id != directory_id:
                points.append(entry.path)
            elif entry.is_dir(follow_symlinks=False):
                pending.append((entry.path, entry_id))
    return points


def detach_stacked(path: str) -> int:
    """Detach whatever is mounted on ``path`` itself, stacked mounts included (not mounts below it
    on other paths); returns how many were detached."""
    for count in range(_MAX_STACKED):
        try:
            detach(path)
        except OSError as e:
            if e.errno in (errno.EINVAL, errno.ENOENT):  # not (or no longer) a mount point
                return count
            raise
    raise OSError(errno.ELOOP, f"umount {path}: still mounted after {_MAX_STACKED} detaches", path)


def detach_all_under(root: str) -> list[str]:
    """Detach every mount at or under ``root`` (stacked ones too), deepest first; returns the mount
    points detached. Idempotent: nothing mounted, nothing done."""
    root = os.path.realpath(root)
    points = mount_points_under(root)
    if points is None:
        points = _mountinfo_points(root)
    return [point for point in sorted(set(points), key=len, reverse=True) if detach_stacked(point)]


def _mountinfo_points(root: str) -> list[str]:
    """The slow way, for kernels before STATX_MNT_ID: mount points at or under ``root`` from
    /proc/self/mountinfo."""
    with open("/proc/self/mountinfo") as f:
        entries = parse_mountinfo(f.read())
    return [e.mount_point for e in entries if e.mount_point == root or e.mount_point.startswith(root + "/")]
