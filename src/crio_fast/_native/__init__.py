"""Native parts of crio-fast: C and Cython extension modules and executables.

Executables ship inside the package (``_native/bin``) and are found relative
to this file, never through PATH, so a wheel install is self-contained.
"""

from __future__ import annotations

from pathlib import Path

BIN_DIR = Path(__file__).resolve().parent / "bin"


def executable(name: str) -> Path:
    """Path of a native executable shipped with the package."""
    path = BIN_DIR / name
    if not path.is_file():
        raise FileNotFoundError(f"native executable {name!r} is missing from {BIN_DIR}: the package was not built")
    return path


def monitor_path() -> Path:
    return executable("crio-fast-monitor")
