"""A pod's sysctls: which it may set (namespaced ones, in namespaces it does not share with the host),
combined with the node's default_sysctls. The rules themselves are crio_fast/sysctls.py's."""

from __future__ import annotations

from typing import Sequence

from crio_fast import sysctls as sysctl_names
from crio_fast.api import api_pb2 as pb
from crio_fast.errors import InvalidArgument, shown


def classify_sysctl(name: str, own_network: bool, own_ipc: bool = True) -> str:
    """"ipc" or "net" for a sysctl the pod may set; raise InvalidArgument otherwise.

    Only namespaced sysctls (kept per IPC or network namespace) may be set: others would change the node."""
    namespace = sysctl_names.namespace_of(name)
    if namespace == sysctl_names.IPC:
        if not own_ipc:
            raise InvalidArgument(f"sysctl {shown(name)}: the pod shares the host IPC namespace")
        return namespace
    if namespace == sysctl_names.NET:
        if not own_network:
            raise InvalidArgument(f"sysctl {shown(name)}: the pod uses the host network namespace")
        return namespace
    raise InvalidArgument(f"sysctl {shown(name)} is not namespaced: it would change the whole node")


def pod_sysctls(config: pb.PodSandboxConfig, defaults: Sequence[str] = ()) -> dict[str, str]:
    """The pod's sysctls (validated), in the dotted form /proc/sys paths are made from.

    ``defaults`` are the node's ``default_sysctls`` ("key=value"): added unless the pod sets the same key,
    skipped for a pod that shares their namespace with the host (see crio_fast/sysctls.py)."""
    ns = config.linux.security_context.namespace_options
    own_net = ns.network != pb.NamespaceMode.NODE
    own_ipc = ns.ipc != pb.NamespaceMode.NODE
    result = {}
    for name, value in config.linux.sysctls.items():
        classify_sysctl(name, own_net, own_ipc)
        if "\0" in value or "\n" in value:
            raise InvalidArgument(f"sysctl {shown(name)}: value contains a NUL or newline")
        result[sysctl_names.dotted(name)] = value
    if not defaults:
        return result
    try:
        return sysctl_names.with_defaults(result, defaults, own_net, own_ipc)
    except ValueError as exc:  # the config loader refuses these already; a config built in code may not have
        raise InvalidArgument(f"default_sysctls: {exc}") from None
