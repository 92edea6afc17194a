"""The Prometheus endpoint: parses as Prometheus text, counts what the test did."""

from __future__ import annotations

import json
import os
import signal
import urllib.request

import grpc
import psutil
import pytest
from prometheus_client.parser import text_string_to_metric_families

from crio_fast.api import api_pb2 as api
from tests.support.pods import create, daemon_with_busybox, free_port, run_container, run_pod, start, wait_for

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def cri(registry, busybox_image, tmp_path_factory):
    port = free_port()
    with daemon_with_busybox(registry, busybox_image, tmp_path_factory.mktemp("metrics"),
                             "--enable-metrics", "--metrics-port", str(port)) as d:
        d.metrics_url = f"http://127.0.0.1:{port}/metrics"
        yield d


def scrape(d) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample as {(name, sorted labels): value}."""
    with urllib.request.urlopen(d.metrics_url, timeout=10) as response:
        assert response.status == 200
        text = response.read().decode()
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def value(samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def test_rpc_counters_match_the_calls(cri):
    before = scrape(cri)
    for _ in range(5):
        cri.client.runtime.Version(api.VersionRequest(), timeout=10)
    for _ in range(2):
        with pytest.raises(grpc.RpcError) as err:
            cri.client.runtime.ContainerStatus(api.ContainerStatusRequest(container_id="f" * 64), timeout=10)
        assert err.value.code() == grpc.StatusCode.NOT_FOUND
    after = scrape(cri)

    def delta(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert delta("crio_fast_operations_total", operation="Version", code="OK") == 5
    assert delta("crio_fast_operations_latency_seconds_count", operation="Version", code="OK") == 5
    assert delta("crio_fast_operations_total", operation="ContainerStatus", code="NOT_FOUND") == 2
    assert delta("crio_fast_errors_total", kind="NotFound") == 2
    assert value(after, "crio_fast_operations_latency_seconds_bucket", operation="Version", code="OK", le="+Inf") \
        == value(after, "crio_fast_operations_total", operation="Version", code="OK")


def test_image_pull_metrics(cri):
    samples = scrape(cri)
    assert value(samples, "crio_fast_image_pulls_total", outcome="OK") >= 1  # the fixture's pull
    assert value(samples, "crio_fast_image_pulled_bytes_total") > 0
    assert value(samples, "crio_fast_image_layer_pull_seconds_count") >= 1


def test_containers_by_state_and_events(cri):
    before = scrape(cri)
    _, ctr = run_container(cri, ["/bin/sleep", "1000"])
    pod_id, pod = run_pod(cri)
    create(cri, pod_id, pod, ["/bin/true"])
    after = scrape(cri)
    assert value(after, "crio_fast_containers", state="running") == value(before, "crio_fast_containers",
                                                                          state="running") + 1
    assert value(after, "crio_fast_containers", state="created") == value(before, "crio_fast_containers",
                                                                          state="created") + 1
    assert value(after, "crio_fast_pods", state="ready") == value(before, "crio_fast_pods", state="ready") + 2
    assert value(after, "crio_fast_container_events_total", type="created") - \
        value(before, "crio_fast_container_events_total", type="created") == 2


def test_oom_kill_is_counted(cri):
    before = value(scrape(cri), "crio_fast_container_oom_kills_total")
    pod_id, pod = run_pod(cri)
    config = api.ContainerConfig(
        metadata=api.ContainerMetadata(name="hog"), image=api.ImageSpec(image=cri.image),
        command=["/bin/tail", "/dev/zero"],  # keeps one endless line: grows until the limit kills it
    )
    config.linux.resources.memory_limit_in_bytes = 32 * 1024 * 1024
    ctr = cri.client.runtime.CreateContainer(
        api.CreateContainerRequest(pod_sandbox_id=pod_id, config=config, sandbox_config=pod), timeout=30).container_id
    start(cri, ctr)
    # Nobody asks for the container's status: the exit watcher folds the exit in.
    wait_for(lambda: value(scrape(cri), "crio_fast_container_oom_kills_total") == before + 1, timeout=20,
             what="the OOM kill to be counted")
    status = cri.client.runtime.ContainerStatus(api.ContainerStatusRequest(container_id=ctr), timeout=10).status
    assert (status.reason, status.exit_code) == ("OOMKilled", 128 + signal.SIGKILL)


def test_dead_monitor_found_at_restart_is_counted(registry, busybox_image, tmp_path_factory):
    port = free_port()
    with daemon_with_busybox(registry, busybox_image, tmp_path_factory.mktemp("restart"),
                             "--enable-metrics", "--metrics-port", str(port)) as d:
        d.metrics_url = f"http://127.0.0.1:{port}/metrics"
        pod_id, _ = run_pod(d)
        response = d.client.runtime.PodSandboxStatus(api.PodSandboxStatusRequest(pod_sandbox_id=pod_id, verbose=True),
                                                     timeout=10)
        monitor_pid = json.loads(response.info["info"])["pid"]
        assert value(scrape(d), "crio_fast_monitor_gone_total") == 0
        d.stop()  # pods outlive the daemon; their monitors keep running
        os.kill(monitor_pid, signal.SIGKILL)
        def monitor_dead() -> bool:
            try:
                return psutil.Process(monitor_pid).status() == psutil.STATUS_ZOMBIE
            except psutil.NoSuchProcess:  # reaped (the daemon that would have is down; init may)
                return True

        wait_for(monitor_dead, timeout=10, what="the monitor to die")
        d.start()
        assert value(scrape(d), "crio_fast_monitor_gone_total") == 1
        status = d.client.runtime.PodSandboxStatus(api.PodSandboxStatusRequest(pod_sandbox_id=pod_id), timeout=10)
        assert status.status.state == api.PodSandboxState.SANDBOX_NOTREADY


def test_cancelled_event_streams_end_their_subscriptions_and_free_their_threads(cri):
    """A GetContainerEvents stream holds a server worker thread while it waits on the loop for an
    event. Streams are opened until the daemon counts them all, then cancelled while no event is
    published: each must end its subscription at once (nothing else would wake it), and so give
    its thread back; over more rounds than the server has threads, later streams still start."""
    from crio_fast.server.app import GRPC_WORKER_THREADS

    batch = 40
    for _ in range(GRPC_WORKER_THREADS // batch + 2):
        calls = [cri.client.runtime.GetContainerEvents(api.GetEventsRequest()) for _ in range(batch)]
        try:
            wait_for(lambda: value(scrape(cri), "crio_fast_event_subscribers") == batch, timeout=20,
                     what=f"{batch} subscribed streams")
        finally:
            for call in calls:
                call.cancel()
        wait_for(lambda: value(scrape(cri), "crio_fast_event_subscribers") == 0, timeout=10,
                 what="the cancelled streams to unsubscribe")
    assert cri.client.runtime.Version(api.VersionRequest(), timeout=10).runtime_name == "crio-fast"
