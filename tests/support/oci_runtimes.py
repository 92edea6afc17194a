"""External OCI runtime handlers (Debian's runc and crun) for a test daemon.

One place that knows how to configure both handlers next to the native one, so every module that compares
handlers runs them configured the same way.
"""

from __future__ import annotations

import os
import subprocess

from tests.support.daemon import DaemonDirs

RUNC = "/usr/sbin/runc"
CRUN = "/usr/bin/crun"
HANDLERS = ["native", "runc", "crun"]


def crun_problem() -> str | None:
    """Why crun cannot run here, or None. Run with the unified mount hidden, as the handler is configured."""
    if not os.access(CRUN, os.X_OK):
        return f"{CRUN} is not installed"
    probe = subprocess.run(["unshare", "-m", "sh", "-c",
                            "mount --make-rslave / && { umount -l /sys/fs/cgroup/unified 2>/dev/null; true; }"
                            f" && {CRUN} --version"], capture_output=True, text=True)
    if probe.returncode != 0:
        return f"crun does not start here: {probe.stderr.strip()}"
    return None


def runc_problem() -> str | None:
    """Why runc cannot run here, or None."""
    return None if os.access(RUNC, os.X_OK) else f"{RUNC} is not installed"


def configure_oci_runtimes(dirs: DaemonDirs) -> list[str]:
    """Configure runc and crun for a daemon in ``dirs``; returns the extra daemon arguments to pass.

    crun is configured in a drop-in file because Debian's crun 1.8 refuses hybrid cgroup layouts unless
    the cgroup2 mount is hidden from it (hide_cgroup2_mount has no flag); runc through --runtimes.
    """
    (dirs.config_dir / "10-crun.conf").write_text(
        f'[crio.runtime.runtimes.crun]\nruntime_type = "oci"\nruntime_path = "{CRUN}"\nhide_cgroup2_mount = true\n')
    return ["--runtimes", f"runc:{RUNC}"]


def handler_problem(handler: str) -> str | None:
    """Why ``handler`` cannot run here, or None (native always runs)."""
    return {"runc": runc_problem, "crun": crun_problem}.get(handler, lambda: None)()
