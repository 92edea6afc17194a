"""Container runtimes: the built-in native launcher driven through the per-pod
monitor (``monitor``, ``plan``, ``wire``), and later external OCI runtimes."""

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
