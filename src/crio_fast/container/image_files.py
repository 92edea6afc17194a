"""What CreateContainer reads from an image's files: its users and groups, and the layer that gives
the pod's /etc files a place to be bound onto.

Layer directories are passed top-most first, as the overlay stacks them; a whiteout in an upper layer
hides a file of the layers under it.
"""

from __future__ import annotations

import functools
import os
import secrets
import shutil
import stat
from pathlib import Path

from crio_fast.errors import InvalidArgument, shown


def find_in_layers(layer_dirs: list[Path], relative: str) -> Path | None:
    """The file a container would see at ``relative``: the top-most layer that has it."""
    for layer in layer_dirs:
        candidate = layer / relative
        try:
            st = candidate.lstat()
        except OSError:
            continue
        if st.st_rdev == 0 and (st.st_mode & 0o170000) == 0o020000:
            return None  # whited out
        return candidate
    return None


@functools.lru_cache(maxsize=128)
def image_accounts(layer_dirs: tuple[Path, ...]) -> tuple[
        tuple[tuple[str, int, int], ...], tuple[tuple[str, int, tuple[str, ...]], ...]]:
    """The (name, uid, gid) entries of the image's /etc/passwd and (name, gid, members) of its /etc/group.

    Cached per layer stack: layers are content-addressed and never change in place, and reading both
    files through the layers is most of what CreateContainer spends on users.
    """
    passwd = find_in_layers(list(layer_dirs), "etc/passwd")
    groups_file = find_in_layers(list(layer_dirs), "etc/group")
    entries = []
    if passwd is not None:
        for line in passwd.read_text(errors="replace").splitlines():
            parts = line.split(":")
            if len(parts) >= 4 and parts[2].isdigit() and parts[3].isdigit():
                entries.append((parts[0], int(parts[2]), int(parts[3])))
    group_entries = []
    if groups_file is not None:
        for line in groups_file.read_text(errors="replace").splitlines():
            parts = line.split(":")
            if len(parts) >= 3 and parts[2].isdigit():
                members = tuple(parts[3].split(",")) if len(parts) > 3 and parts[3] else ()
                group_entries.append((parts[0], int(parts[2]), members))
    return tuple(entries), tuple(group_entries)


POD_FILE_TARGETS = ("hostname", "hosts", "resolv.conf")  # in /etc, bound from the pod dir


def make_mount_targets_layer(layer_dirs: list[Path], directory: Path) -> Path | None:
    """A read-only top layer for the image with empty /etc/hostname, /etc/hosts and /etc/resolv.conf.

    The pod's files are bound onto those paths in every container. Without this layer the monitor's
    child creates them in the container's upper dir, which copies /etc up and writes three inodes on
    the node's disk: about a millisecond of every CreateContainer. The layer's /etc takes the
    image's own /etc attributes (owner, mode, times), since the top-most layer's are the ones a
    container sees. Made once per image (atomically: a rename); None when the image's /etc is not a
    directory, as a directory over it would hide what it holds.
    """
    if directory.is_dir():
        return directory
    etc = find_in_layers(layer_dirs, "etc")
    try:
        st = etc.lstat() if etc is not None else None
    except OSError:
        return None
    if st is None or not stat.S_ISDIR(st.st_mode):
        return None
    building = directory.with_name(f".{directory.name}.{secrets.token_hex(4)}")
    try:
        (building / "etc").mkdir(parents=True)
        for name in POD_FILE_TARGETS:
            (building / "etc" / name).touch(mode=0o644)
        os.chown(building / "etc", st.st_uid, st.st_gid)
        os.chmod(building / "etc", stat.S_IMODE(st.st_mode))
        os.utime(building / "etc", ns=(st.st_atime_ns, st.st_mtime_ns))
        os.rename(building, directory)
    except OSError:
        shutil.rmtree(building, ignore_errors=True)
        if not directory.is_dir():  # not merely made by another CreateContainer meanwhile
            raise
    return directory


def resolve_user(spec: str, layer_dirs: list[Path]) -> tuple[int, int, list[int], str]:
    """uid, gid, extra gids and name for an image/CRI user ("name", "uid", "uid:gid", "name:group")."""
    user, _, group = spec.partition(":")
    entries, group_entries = image_accounts(tuple(layer_dirs))
    if user.isdigit():
        uid = int(user)
        match = next((e for e in entries if e[1] == uid), None)
        name, gid = (match[0], match[2]) if match else ("", 0)
    else:
        match = next((e for e in entries if e[0] == user), None)
        if match is None:
            raise InvalidArgument(f"user {shown(user)} is not in the image's /etc/passwd")
        name, uid, gid = match
    if group:
        if group.isdigit():
            gid = int(group)
        else:
            g = next((e for e in group_entries if e[0] == group), None)
            if g is None:
                raise InvalidArgument(f"group {shown(group)} is not in the image's /etc/group")
            gid = g[1]
    extra = sorted({g[1] for g in group_entries if name and name in g[2] and g[1] != gid})
    return uid, gid, extra, name
