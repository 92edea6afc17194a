"""GetContainerEvents: every subscriber sees each container's whole life, in order."""

from __future__ import annotations

import threading

import grpc
import pytest

from crio_fast.api import api_pb2 as api
from tests.support.pods import create, daemon_with_busybox, run_pod, start, wait_for

pytestmark = pytest.mark.integration

CREATED = api.ContainerEventType.CONTAINER_CREATED_EVENT
STARTED = api.ContainerEventType.CONTAINER_STARTED_EVENT
STOPPED = api.ContainerEventType.CONTAINER_STOPPED_EVENT
DELETED = api.ContainerEventType.CONTAINER_DELETED_EVENT


@pytest.fixture(scope="module")
def cri(registry, busybox_image, tmp_path_factory):
    with daemon_with_busybox(registry, busybox_image, tmp_path_factory.mktemp("events")) as d:
        yield d


class Subscriber:
    """Reads a GetContainerEvents stream on a thread until cancelled."""

    def __init__(self, d) -> None:
        self.call = d.client.runtime.GetContainerEvents(api.GetEventsRequest())
        self.events: list[api.ContainerEventResponse] = []
        self.error: grpc.RpcError | None = None
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        try:
            for event in self.call:
                self.events.append(event)
        except grpc.RpcError as exc:
            self.error = exc

    def of(self, container_id: str) -> list[api.ContainerEventResponse]:
        return [e for e in list(self.events) if e.container_id == container_id]

    def close(self) -> None:
        self.call.cancel()
        self.thread.join(timeout=10)


@pytest.fixture
def subscribers(cri):
    """Two subscribers, both known to be registered (each has seen a warm-up container's creation)."""
    subs = [Subscriber(cri), Subscriber(cri)]
    try:
        pod_id, pod = run_pod(cri)
        warm_up = create(cri, pod_id, pod, ["/bin/true"])
        for sub in subs:
            wait_for(lambda: sub.of(warm_up), timeout=10, what="the warm-up CREATED event")
        yield subs
    finally:
        for sub in subs:
            sub.close()


def types(events) -> list[int]:
    return [e.container_event_type for e in events]


def test_whole_life_in_order_for_every_subscriber(cri, subscribers):
    pod_id, pod = run_pod(cri)
    ctr = create(cri, pod_id, pod, ["/bin/sleep", "1000"], name="lived")
    start(cri, ctr)
    cri.client.runtime.StopContainer(api.StopContainerRequest(container_id=ctr, timeout=0), timeout=30)
    cri.client.runtime.RemoveContainer(api.RemoveContainerRequest(container_id=ctr), timeout=30)
    for sub in subscribers:
        wait_for(lambda: len(sub.of(ctr)) >= 4, timeout=10, what="four events")
        events = sub.of(ctr)
        assert types(events) == [CREATED, STARTED, STOPPED, DELETED]
        assert [e.created_at for e in events] == sorted(e.created_at for e in events)
        created, started, stopped, deleted = events
        assert created.pod_sandbox_status.id == pod_id
        assert created.pod_sandbox_status.state == api.PodSandboxState.SANDBOX_READY
        own = {s.id: s for s in started.containers_statuses}
        assert own[ctr].state == api.ContainerState.CONTAINER_RUNNING
        assert own[ctr].metadata.name == "lived"
        own = {s.id: s for s in stopped.containers_statuses}
        assert own[ctr].state == api.ContainerState.CONTAINER_EXITED
        assert ctr not in {s.id for s in deleted.containers_statuses}
        assert sub.error is None


def test_exit_on_its_own_is_reported_promptly(cri, subscribers):
    """Nobody asks for status: the exit watcher turns the monitor's exit file into STOPPED."""
    pod_id, pod = run_pod(cri)
    ctr = create(cri, pod_id, pod, ["/bin/sh", "-c", "exit 7"])
    start(cri, ctr)
    for sub in subscribers:
        wait_for(lambda: len(sub.of(ctr)) >= 3, timeout=5, what="STOPPED without a status call")
        assert types(sub.of(ctr)) == [CREATED, STARTED, STOPPED]
        [final] = [s for s in sub.of(ctr)[-1].containers_statuses if s.id == ctr]
        assert (final.exit_code, final.reason) == (7, "Error")


def test_many_containers_nothing_lost(cri, subscribers):
    pod_id, pod = run_pod(cri)
    ids = [create(cri, pod_id, pod, ["/bin/true"]) for _ in range(6)]
    for ctr in ids:
        start(cri, ctr)
    cri.client.runtime.StopPodSandbox(api.StopPodSandboxRequest(pod_sandbox_id=pod_id), timeout=60)
    cri.client.runtime.RemovePodSandbox(api.RemovePodSandboxRequest(pod_sandbox_id=pod_id), timeout=60)
    for sub in subscribers:
        for ctr in ids:
            wait_for(lambda: len(sub.of(ctr)) >= 4, timeout=10, what=f"all events of {ctr[:12]}")
            assert types(sub.of(ctr)) == [CREATED, STARTED, STOPPED, DELETED]

