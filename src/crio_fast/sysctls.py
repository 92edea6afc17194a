"""Which sysctls a pod may set, and how the node's default sysctls combine with a pod's own.

Only sysctls the kernel keeps per IPC or network namespace can be set for a
pod; any other would change the whole node. This module has no imports of its
own so the config schema can check ``default_sysctls`` with the same rule
when the configuration is loaded.

Default sysctls (``[crio.runtime] default_sysctls``), as CRI-O applies them:
every pod gets them, the pod's own ``sysctls`` win on conflicts. A default
that is not namespaced at all is refused when the configuration is loaded (it
could never apply to any pod). A namespaced default that a given pod cannot
take because it shares that namespace with the host (a ``net.*`` default and a
hostNetwork pod, an IPC default and a hostIPC pod) is skipped for that pod
and logged: refusing the pod would make every host-network pod unstartable
on a node with a network default, and applying it would change the node.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

log = logging.getLogger("crio_fast.sysctls")

IPC = "ipc"
NET = "net"

# The IPC-namespaced sysctls besides fs.mqueue.* (ipc/ipc_sysctl.c in the kernel).
IPC_SYSCTLS = frozenset({"kernel.shmall", "kernel.shmmax", "kernel.shmmni", "kernel.shm_rmid_forced",
                         "kernel.msgmax", "kernel.msgmnb", "kernel.msgmni", "kernel.sem"})


def dotted(name: str) -> str:
    """``net/ipv4/ip_forward`` and ``net.ipv4.ip_forward`` name the same sysctl; use the dotted form."""
    return name.replace("/", ".")


def namespace_of(name: str) -> str | None:
    """"ipc" or "net" for a namespaced sysctl, None for one that belongs to the whole node."""
    key = dotted(name)
    if key in IPC_SYSCTLS or key.startswith("fs.mqueue."):
        return IPC
    if key.startswith("net."):
        return NET
    return None


def parse_default(entry: str) -> tuple[str, str]:
    """A ``key=value`` default sysctl as (dotted key, value); ValueError names what is wrong."""
    key, sep, value = entry.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ValueError(f'expected "key=value", got {entry!r}')
    if namespace_of(key) is None:
        raise ValueError(f"sysctl {key!r} is not namespaced: it would change the whole node, not one pod")
    if "\0" in value or "\n" in value:
        raise ValueError(f"sysctl {key!r}: value contains a NUL or newline")
    return dotted(key), value


def with_defaults(pod_sysctls: dict[str, str], defaults: Iterable[str], own_network: bool,
                  own_ipc: bool) -> dict[str, str]:
    """The node's defaults that this pod can take, overridden by the pod's own (already validated) sysctls."""
    merged: dict[str, str] = {}
    for entry in defaults:
        key, value = parse_default(entry)
        namespace = namespace_of(key)
        if (namespace == NET and not own_network) or (namespace == IPC and not own_ipc):
            log.info("default sysctl %s skipped: the pod shares the host %s namespace", key, namespace)
            continue
        merged[key] = value
    merged.update(pod_sysctls)
    return merged
