"""A pod monitor lacking a feature a request relies on: the one check (SandboxManager.monitor) refuses
the request and says to recreate the pod (docs/monitor.md, "Compatibility")."""

from __future__ import annotations

from pathlib import Path

import pytest

from crio_fast.config.schema import Config, CrioSection, RuntimeSection
from crio_fast.errors import FailedPrecondition
from crio_fast.runtime import wire
from crio_fast.sandbox.manager import SandboxManager
from crio_fast.state.records import POD_READY, PodRecord, StateStore


class _Monitor:
    """What SandboxManager.monitor looks at of a live monitor."""

    def __init__(self, features: int) -> None:
        self.features = features
        self.pid = 4321

    def alive(self) -> bool:
        return True


@pytest.fixture
def sandboxes(tmp_path: Path):
    config = Config(crio=CrioSection(root=str(tmp_path / "root"), runroot=str(tmp_path / "run")),
                    runtime=RuntimeSection(container_exits_dir=str(tmp_path / "exits")))
    state = StateStore(str(tmp_path / "root"))
    yield SandboxManager(config, state, cgroups=None, monitor_path="/nonexistent")  # type: ignore[arg-type]
    state.close()


def pod(pod_id: str) -> PodRecord:
    return PodRecord(id=pod_id, name=f"k8s_{pod_id}", config="", runtime_handler="native", state=POD_READY,
                     created_at=1, pod_dir=f"/nonexistent/{pod_id}", cgroup_path="", cgroup_created=False)


def test_a_monitor_without_a_needed_feature_is_refused_with_the_way_out(sandboxes) -> None:
    record = pod("p1")
    sandboxes._monitors[record.id] = _Monitor(features=wire.MONITOR_FEATURE_PLAN_FOLLOWS)
    with pytest.raises(FailedPrecondition) as refused:
        sandboxes.monitor(record, needs=wire.MONITOR_FEATURES)
    message = str(refused.value)
    assert "pod sandbox p1" in message and "APPARMOR" in message and "PLAN_FOLLOWS" not in message
    assert message.endswith("recreate the pod")


def test_requests_that_need_nothing_more_still_reach_that_monitor(sandboxes) -> None:
    record = pod("p1")
    old = sandboxes._monitors[record.id] = _Monitor(features=0)
    assert sandboxes.monitor(record) is old  # stop, kill, status...
    current = sandboxes._monitors[record.id] = _Monitor(features=wire.MONITOR_FEATURES)
    assert sandboxes.monitor(record, needs=wire.MONITOR_FEATURES) is current


def test_feature_names() -> None:
    assert wire.feature_names(wire.MONITOR_FEATURES) == ["PLAN_FOLLOWS", "APPARMOR", "LOG_DIR", "USERNS", "REPORT_PID"]
    assert wire.feature_names(0) == []



def test_a_monitor_before_user_namespaces_still_serves_pods_without_one(sandboxes) -> None:
    # What ContainerManager._create asks of a pod without a user namespace, under the cgroupfs driver:
    # every bit but USERNS and REPORT_PID.
    before = wire.MONITOR_FEATURES & ~wire.MONITOR_FEATURE_USERNS & ~wire.MONITOR_FEATURE_REPORT_PID
    record = pod("old")
    sandboxes._monitors[record.id] = current = _Monitor(before)
    assert sandboxes.monitor(record, needs=before) is current
    with pytest.raises(FailedPrecondition, match="lacks USERNS"):
        sandboxes.monitor(record, needs=wire.MONITOR_FEATURES)
