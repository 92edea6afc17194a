"""The one place the version comes from: the installed package metadata."""

from __future__ import annotations

import subprocess
from functools import lru_cache
from importlib import metadata
from pathlib import Path

try:
    __version__ = metadata.version("crio-fast")
except metadata.PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+unknown"


@lru_cache(maxsize=1)
def git_commit() -> str:
    """The commit this was built from (stamped into wheels), else that of the
    checkout this module runs from, else ""."""
    try:
        from crio_fast._build_info import GIT_COMMIT  # written by setup.py; absent in a checkout
    except ImportError:
        GIT_COMMIT = ""
    if GIT_COMMIT:
        return GIT_COMMIT
    src = Path(__file__).resolve().parent
    try:
        out = subprocess.run(
            ["git", "-C", str(src), "rev-parse", "--short=12", "HEAD"],
            capture_output=True, text=True, timeout=2, check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return out.stdout.strip() if out.returncode == 0 else ""


def version_string() -> str:
    commit = git_commit()
    return f"{__version__}+git.{commit}" if commit else __version__
