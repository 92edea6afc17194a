"""Which pid namespace a container's init gets, from the CRI pid mode.

CONTAINER: a new one (the init is its pid 1). NODE: the node's (no namespace in
the plan). POD (shareProcessNamespace): the pod's, pinned by the pod monitor on
``<pod dir>/ns/pid`` with the monitor's pod init as its pid 1 (docs/monitor.md);
a pod made without one (its own pid mode was not POD) gives the container a new
one, as before. TARGET (ephemeral containers, ``kubectl debug --target``): the
namespace of another running container of the same pod, through its init's
``/proc/<pid>/ns/pid``.
"""

from __future__ import annotations

import os
from typing import Callable

from crio_fast.api import api_pb2 as pb
from crio_fast.errors import FailedPrecondition, InvalidArgument, shown
from crio_fast.runtime.plan import Namespace
from crio_fast.state.records import CTR_RUNNING, ContainerRecord, PodRecord


def container_pid_namespace(options: pb.NamespaceOption, pod: PodRecord,
                            find_container: Callable[[str], ContainerRecord]) -> Namespace | None:
    """The plan's pid namespace, or None for the node's.

    ``find_container`` looks a container up by id and raises NotFound for an unknown one."""
    mode = options.pid
    if mode == pb.NamespaceMode.NODE:
        return None
    if mode == pb.NamespaceMode.POD and pod.ns_paths.get("pid"):
        return Namespace("pid", path=pod.ns_paths["pid"])
    if mode == pb.NamespaceMode.TARGET:
        return Namespace("pid", path=_target_pid_namespace(options.target_id, pod, find_container))
    return Namespace("pid")


def _target_pid_namespace(target_id: str, pod: PodRecord,
                          find_container: Callable[[str], ContainerRecord]) -> str:
    if not target_id:
        raise InvalidArgument("pid namespace mode TARGET needs namespace_options.target_id")
    target = find_container(target_id)
    if target.pod_id != pod.id:
        raise InvalidArgument(f"pid namespace target {shown(target_id)} is a container of another pod sandbox")
    if target.state != CTR_RUNNING or target.pid <= 0:
        raise FailedPrecondition(f"pid namespace target {target.id} is {target.state}, not running")
    path = f"/proc/{target.pid}/ns/pid"
    if not os.path.exists(path):
        raise FailedPrecondition(f"pid namespace target {target.id} has exited (no {path})")
    return path
