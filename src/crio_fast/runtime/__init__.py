"""The pod monitor as Python sees it: launch plans (``plan``), the wire protocol
(``wire``, the Python side of monitor.h), the connection to a pod's monitor and
the exec helper (``monitor``, ``interactive``, ``attach``), and the reaping of
processes a dead monitor left (``reaper``). The monitor runs native containers
itself and drives external OCI runtimes (runc, crun) like conmon does."""

from __future__ import annotations

from crio_fast.runtime.exec_helper import ExecResult, exec_sync
from crio_fast.runtime.exit_files import ExitInfo, read_exit_file
from crio_fast.runtime.monitor import ContainerState, CreateResult, MonitorError, PodMonitor
from crio_fast.runtime.plan import (
    Capabilities,
    ExecPlan,
    LaunchHead,
    LaunchPlan,
    MountKind,
    MountOp,
    Namespace,
    Overlay,
    Rlimit,
    default_linux_mounts,
)
from crio_fast.runtime.spawn import PodMonitorSpec, cleanup_pod_dir, spawn_monitor

__all__ = [
    "Capabilities", "ContainerState", "CreateResult", "ExecPlan", "ExecResult", "ExitInfo", "LaunchHead",
    "LaunchPlan",
    "MonitorError", "MountKind", "MountOp", "Namespace", "Overlay", "PodMonitor", "PodMonitorSpec", "Rlimit",
    "cleanup_pod_dir", "default_linux_mounts", "exec_sync", "read_exit_file", "spawn_monitor",
]
