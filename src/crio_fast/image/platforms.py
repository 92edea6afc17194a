"""Which platform this node is, and which entry of an index it should run.

Kernel machine names (``uname -m``) are not the names OCI uses, and an
index may offer several variants of one architecture, so picking "the
image for this node" needs a translation table and a rule for variants;
both live here so that the pull and the tests agree on them.
"""

from __future__ import annotations

import platform as _platform

from crio_fast.image.manifest import Descriptor, Manifest, Platform
from crio_fast.image.registry_errors import NoMatchingPlatform

_MACHINE_TO_PLATFORM = {
    "x86_64": ("amd64", None),
    "amd64": ("amd64", None),
    "aarch64": ("arm64", "v8"),
    "arm64": ("arm64", "v8"),
    "armv8l": ("arm", "v7"),  # a 32-bit userland on a 64-bit core
    "armv7l": ("arm", "v7"),
    "armv7": ("arm", "v7"),
    "armv6l": ("arm", "v6"),
    "armv5tel": ("arm", "v5"),
    "armv5l": ("arm", "v5"),
    "i386": ("386", None),
    "i686": ("386", None),
    "ppc64le": ("ppc64le", None),
    "s390x": ("s390x", None),
    "riscv64": ("riscv64", None),
    "mips64": ("mips64le", None),
    "loongarch64": ("loong64", None),
}

# Variants an architecture's CPUs can run, oldest first; a node runs its own and older ones.
_VARIANT_ORDER = {"arm": ["v5", "v6", "v7", "v8"], "arm64": ["v8", "v9"], "amd64": ["v1", "v2", "v3", "v4"]}
# What a descriptor without a variant means for those architectures.
_DEFAULT_VARIANT = {"arm": "v7", "arm64": "v8", "amd64": "v1"}


def node_platform(machine: str | None = None) -> Platform:
    """This node's platform in OCI terms (from ``platform.machine()`` by default)."""
    machine = machine or _platform.machine()
    architecture, variant = _MACHINE_TO_PLATFORM.get(machine, (machine, None))
    return Platform("linux", architecture, variant)

def _variant_rank(architecture: str, variant: str | None) -> int | None:
    order = _VARIANT_ORDER.get(architecture)
    if order is None:
        return None
    variant = variant or _DEFAULT_VARIANT[architecture]
    return order.index(variant) if variant in order else None


def select_platform(
    index: Manifest,
    os: str = "linux",
    architecture: str | None = None,
    variant: str | None = None,
    *,
    host: str = "",
    repository: str = "",
) -> Descriptor:
    """The index entry for os/architecture[/variant]; this node's architecture by default.

    For architectures with ordered variants (arm, arm64, amd64) a node runs
    its own variant and older ones, and the newest it can run is preferred;
    an entry without a variant means the architecture's baseline (arm v7,
    arm64 v8, amd64 v1). Elsewhere the variant must match when both name one.
    """
    if architecture is None:
        node = node_platform()
        architecture = node.architecture
        variant = variant or node.variant
    best: tuple[int, int, Descriptor] | None = None  # (variant rank, -position, entry)
    for position, entry in enumerate(index.manifests):
        p = entry.platform
        if p is None or p.os != os or p.architecture != architecture:
            continue
        wanted_rank = _variant_rank(architecture, variant)
        if wanted_rank is not None:
            rank = _variant_rank(architecture, p.variant)
            if rank is None or rank > wanted_rank:
                continue
        elif variant and p.variant and p.variant != variant:
            continue
        else:
            rank = 0
        candidate = (rank, -position, entry)
        if best is None or candidate[:2] > best[:2]:
            best = candidate
    if best is not None:
        return best[2]
    available = ", ".join(str(e.platform) for e in index.manifests if e.platform) or "none declared"
    wanted = str(Platform(os, architecture, variant))
    raise NoMatchingPlatform(
        f"index {index.digest} has no manifest for {wanted} (available: {available})", host=host, repository=repository
    )


__all__ = ["node_platform", "select_platform"]
