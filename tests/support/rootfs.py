"""A minimal container rootfs built from Debian's busybox-static.

The rootfs holds /bin/busybox plus one symlink per applet, /etc/passwd and
/etc/group with a root, an unprivileged user and a few groups, a sticky /tmp
and the empty mount points a container needs (/proc, /sys, /dev). It has no
shared libraries, so the busybox binary must be statically linked.
"""

from __future__ import annotations

import os
import shutil
import struct
import subprocess
from pathlib import Path

PASSWD = """root:x:0:0:root:/root:/bin/sh
user:x:1000:1000:user:/home/user:/bin/sh
nobody:x:65534:65534:nobody:/nonexistent:/bin/false
"""

GROUP = """root:x:0:
tty:x:5:
user:x:1000:
extra:x:2000:user
nogroup:x:65534:
"""

PT_INTERP = 3


def is_static_elf(path: str) -> bool:
    """True for a 64-bit little-endian ELF without a program interpreter."""
    with open(path, "rb") as f:
        header = f.read(64)
        if header[:4] != b"\x7fELF" or header[4] != 2 or header[5] != 1:
            return False
        program_offset = struct.unpack_from("<Q", header, 32)[0]
        entry_size, entry_count = struct.unpack_from("<HH", header, 54)
        f.seek(program_offset)
        table = f.read(entry_size * entry_count)
    return all(struct.unpack_from("<I", table, i * entry_size)[0] != PT_INTERP for i in range(entry_count))


def find_static_busybox() -> str | None:
    """The host's busybox if it is the static build, else None."""
    for candidate in (shutil.which("busybox"), "/bin/busybox"):
        if candidate and os.path.isfile(candidate) and is_static_elf(candidate):
            return candidate
    return None


def build_busybox_rootfs(target: Path, busybox: str | None = None) -> Path:
    """Populate `target` (created if needed) and return it."""
    busybox = busybox or find_static_busybox()
    if busybox is None:
        raise FileNotFoundError("a statically linked busybox (Debian's busybox-static) is required")
    target.mkdir(parents=True, exist_ok=True)
    bin_dir = target / "bin"
    bin_dir.mkdir(exist_ok=True)
    shutil.copy2(busybox, bin_dir / "busybox")
    applets = subprocess.run([busybox, "--list"], check=True, capture_output=True, text=True).stdout.split()
    for applet in applets:
        if applet != "busybox" and "/" not in applet:
            (bin_dir / applet).symlink_to("busybox")
    for name in ("proc", "sys", "dev", "root", "etc", "home/user", "usr", "var"):
        (target / name).mkdir(parents=True, exist_ok=True)
    (target / "usr" / "bin").symlink_to("../bin")
    (target / "sbin").symlink_to("bin")
    tmp = target / "tmp"
    tmp.mkdir(exist_ok=True)
    tmp.chmod(0o1777)
    (target / "etc" / "passwd").write_text(PASSWD)
    (target / "etc" / "group").write_text(GROUP)
    os.chown(target / "home" / "user", 1000, 1000)
    return target
