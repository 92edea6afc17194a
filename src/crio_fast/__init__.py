"""crio-fast: a Kubernetes CRI v1 container engine with native hot paths."""

from __future__ import annotations

from crio_fast.version import __version__, version_string

__all__ = ["__version__", "version_string"]
