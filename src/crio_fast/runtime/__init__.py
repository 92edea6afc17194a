"""Container runtimes: the built-in native launcher driven through the per-pod
monitor (``monitor``, ``plan``, ``wire``), and later external OCI runtimes."""

from __future__ import annotations

from crio_fast.runtime.monitor import (
    ContainerState,
    CreateResult,
    ExecResult,
    ExitInfo,
    MonitorError,
    PodMonitor,
    PodMonitorSpec,
    cleanup_pod_dir,
    exec_sync,
    read_exit_file,
)
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

__all__ = [
    "Capabilities", "ContainerState", "CreateResult", "ExecPlan", "ExecResult", "ExitInfo", "LaunchHead",
    "LaunchPlan",
    "MonitorError", "MountKind", "MountOp", "Namespace", "Overlay", "PodMonitor", "PodMonitorSpec", "Rlimit",
    "cleanup_pod_dir", "default_linux_mounts", "exec_sync", "read_exit_file",
]
