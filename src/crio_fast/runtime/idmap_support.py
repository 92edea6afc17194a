"""Whether this node can run pods in user namespaces the way the monitor does: an overlay whose lower
layers are ID-mapped mounts (MOUNT_ATTR_IDMAP; overlayfs takes such layers from Linux 5.19) on the
filesystem of the image store. Asked of the monitor binary (``--probe-idmap-overlay``), which tries it
in a throwaway mount namespace, so a kernel that backported it (or a filesystem that refuses it) is
answered by what it does, not by its version number. The answer does not change while the node runs:
asked once per (monitor, directory).
"""

from __future__ import annotations

import stat
import subprocess
import threading
from dataclasses import dataclass
from pathlib import Path

PROBE_TIMEOUT_SECONDS = 10


@dataclass(frozen=True)
class IdmapSupport:
    supported: bool
    detail: str  # the monitor's answer, or why it could not be asked


_answers: dict[tuple[str, str], IdmapSupport] = {}
_lock = threading.Lock()


def idmapped_overlay_support(monitor_path: str, directory: str) -> IdmapSupport:
    """Whether an overlay takes an ID-mapped lower layer on ``directory``'s filesystem (root only).

    Only the kernel's own answers are kept (yes, or refused); a probe that could not run or failed in
    itself (EMFILE, a timeout) is asked again next time."""
    key = (monitor_path, directory)
    with _lock:
        if key in _answers:
            return _answers[key]
    try:
        result = subprocess.run([monitor_path, "--probe-idmap-overlay", directory], capture_output=True,
                                text=True, timeout=PROBE_TIMEOUT_SECONDS, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return IdmapSupport(False, f"cannot ask {monitor_path}: {exc}")
    answer = IdmapSupport(result.returncode == 0, " ".join((result.stdout + result.stderr).split()))
    if result.returncode in (0, 1):
        with _lock:
            _answers[key] = answer
    return answer


def first_closed_directory(path: Path) -> str | None:
    """The first directory from / down to ``path`` (or its nearest existing ancestor) that others may not
    search, or None. An OCI runtime sets a user-namespaced container up as the pod's root, who walks it to
    the container's rootfs under the run root."""
    path = path.resolve()
    for directory in [*reversed(path.parents), path]:
        try:
            mode = directory.stat().st_mode
        except FileNotFoundError:
            break  # made later by the daemon, searchable (0755)
        if not mode & stat.S_IXOTH:
            return str(directory)
    return None
