"""CRI idempotence: stopping or removing a pod or container that is gone or already stopped succeeds,
and so does removing an image that is gone, whatever came before (a second call, a concurrent one,
a killed monitor, a daemon restart). What is still there is never mistaken for gone."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from collections.abc import Callable

import grpc
import psutil
import pytest

from crio_fast.api import api_pb2 as api
from tests.support import cgroups
from tests.support.daemon import Daemon, make_dirs, remove_dirs
from tests.support.registries_conf import write_registries_conf
from tests.support.pods import create, daemon_with_busybox, remove_all_pods, run_pod, start, status, wait_exited

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def env(registry, busybox_image, tmp_path_factory):
    with daemon_with_busybox(registry, busybox_image, tmp_path_factory.mktemp("idempotence")) as d:
        yield d


def stop_container(d: Daemon, ctr: str, timeout: int = 0) -> None:
    d.client.runtime.StopContainer(api.StopContainerRequest(container_id=ctr, timeout=timeout), timeout=60)


def remove_container(d: Daemon, ctr: str) -> None:
    d.client.runtime.RemoveContainer(api.RemoveContainerRequest(container_id=ctr), timeout=60)


def stop_pod(d: Daemon, pod_id: str) -> None:
    d.client.runtime.StopPodSandbox(api.StopPodSandboxRequest(pod_sandbox_id=pod_id), timeout=60)


def remove_pod(d: Daemon, pod_id: str) -> None:
    d.client.runtime.RemovePodSandbox(api.RemovePodSandboxRequest(pod_sandbox_id=pod_id), timeout=60)


def pod_state(d: Daemon, pod_id: str) -> int:
    return d.client.runtime.PodSandboxStatus(api.PodSandboxStatusRequest(pod_sandbox_id=pod_id), timeout=10).status.state


def monitor_pid(d: Daemon, pod_id: str) -> int:
    info = d.client.runtime.PodSandboxStatus(api.PodSandboxStatusRequest(pod_sandbox_id=pod_id, verbose=True),
                                             timeout=10).info["info"]
    return json.loads(info)["pid"]


def code_of(call: Callable[[], object]) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as err:
        call()
    return err.value.code()


def gone(d: Daemon, pod_id: str, ctrs: list[str]) -> None:
    """Nothing of the pod or its containers is left: records, cgroups, mounts, pod dir."""
    assert code_of(lambda: pod_state(d, pod_id)) == grpc.StatusCode.NOT_FOUND
    for ctr in ctrs:
        assert code_of(lambda: status(d, ctr)) == grpc.StatusCode.NOT_FOUND
    listed = d.client.runtime.ListContainers(api.ListContainersRequest(), timeout=10).containers
    assert not [c.id for c in listed if c.pod_sandbox_id == pod_id]
    assert cgroups.find_cgroups(pod_id, *ctrs) == []
    assert pod_id not in open("/proc/self/mountinfo").read()
    assert not (d.dirs.runroot / "pods" / pod_id).exists()


def running_pod(d: Daemon, count: int = 1) -> tuple[str, list[str]]:
    pod_id, pod = run_pod(d)
    ctrs = [create(d, pod_id, pod, ["sleep", "1000"]) for _ in range(count)]
    for ctr in ctrs:
        start(d, ctr)
    return pod_id, ctrs


def test_a_second_stop_of_a_container_changes_nothing(cri):
    pod_id, [ctr] = running_pod(cri)
    stop_container(cri, ctr)
    first = status(cri, ctr)
    assert (first.state, first.exit_code) == (api.ContainerState.CONTAINER_EXITED, 128 + signal.SIGKILL)
    started = time.monotonic()
    stop_container(cri, ctr, timeout=30)  # nothing to wait out: it returns at once
    assert time.monotonic() - started < 5
    assert status(cri, ctr) == first


def test_stopping_a_container_that_exited_or_never_started_succeeds(cri):
    pod_id, pod = run_pod(cri)
    exited = create(cri, pod_id, pod, ["sh", "-c", "exit 3"])
    start(cri, exited)
    before = wait_exited(cri, exited)
    for _ in range(2):
        stop_container(cri, exited, timeout=10)
    assert status(cri, exited) == before and before.exit_code == 3
    created = create(cri, pod_id, pod, ["sleep", "1000"])
    for _ in range(2):
        stop_container(cri, created, timeout=10)
    assert status(cri, created).state != api.ContainerState.CONTAINER_RUNNING
    for ctr in (exited, created):
        for _ in range(2):
            remove_container(cri, ctr)
        assert code_of(lambda: status(cri, ctr)) == grpc.StatusCode.NOT_FOUND
    assert cgroups.find_cgroups(exited, created) == []
    assert pod_state(cri, pod_id) == api.PodSandboxState.SANDBOX_READY  # the pod itself is untouched


def test_a_running_container_removed_twice_then_stopped_is_gone(cri):
    pod_id, [ctr, sibling] = running_pod(cri, 2)
    init = init_pid(cri, ctr)
    remove_container(cri, ctr)  # not stopped first: removal stops it
    remove_container(cri, ctr)
    stop_container(cri, ctr, timeout=10)
    assert code_of(lambda: status(cri, ctr)) == grpc.StatusCode.NOT_FOUND
    assert not psutil.pid_exists(init) or psutil.Process(init).status() == psutil.STATUS_ZOMBIE
    assert cgroups.find_cgroups(ctr) == []
    assert status(cri, sibling).state == api.ContainerState.CONTAINER_RUNNING


def test_containers_of_a_stopped_pod_stop_and_remove_twice(cri):
    pod_id, ctrs = running_pod(cri, 2)
    stop_pod(cri, pod_id)
    for ctr in ctrs:
        before = status(cri, ctr)
        assert before.state == api.ContainerState.CONTAINER_EXITED
        for _ in range(2):
            stop_container(cri, ctr, timeout=10)
        assert status(cri, ctr) == before
        for _ in range(2):
            remove_container(cri, ctr)
    assert pod_state(cri, pod_id) == api.PodSandboxState.SANDBOX_NOTREADY
    for _ in range(2):
        remove_pod(cri, pod_id)
    gone(cri, pod_id, ctrs)


def test_a_second_stop_of_a_pod_changes_nothing(cri):
    pod_id, ctrs = running_pod(cri, 2)
    monitor = monitor_pid(cri, pod_id)
    stop_pod(cri, pod_id)
    after_first = [status(cri, c) for c in ctrs]
    assert pod_state(cri, pod_id) == api.PodSandboxState.SANDBOX_NOTREADY
    assert not psutil.pid_exists(monitor)
    stop_pod(cri, pod_id)
    assert [status(cri, c) for c in ctrs] == after_first
    assert pod_state(cri, pod_id) == api.PodSandboxState.SANDBOX_NOTREADY
    for _ in range(2):
        remove_pod(cri, pod_id)
    stop_pod(cri, pod_id)  # after its removal too
    gone(cri, pod_id, ctrs)


def test_a_running_pod_removed_twice_without_a_stop_is_gone(cri):
    pod_id, ctrs = running_pod(cri, 2)
    monitor = monitor_pid(cri, pod_id)
    for _ in range(2):
        remove_pod(cri, pod_id)
    assert not psutil.pid_exists(monitor)
    gone(cri, pod_id, ctrs)
    for ctr in ctrs:
        stop_container(cri, ctr)
        remove_container(cri, ctr)


def init_pid(d: Daemon, ctr: str) -> int:
    info = d.client.runtime.ContainerStatus(api.ContainerStatusRequest(container_id=ctr, verbose=True), timeout=10)
    return json.loads(info.info["info"])["pid"]


def test_a_pod_whose_monitor_was_killed_stops_and_removes_twice(cri):
    """Stopped at once, while the monitor may still be dying (its socket refuses, its pidfd is not yet
    readable): the stop does not wait for an exit the monitor can no longer report."""
    pod_id, ctrs = running_pod(cri)
    init = init_pid(cri, ctrs[0])
    os.kill(monitor_pid(cri, pod_id), signal.SIGKILL)
    started = time.monotonic()
    stop_pod(cri, pod_id)
    assert time.monotonic() - started < 5
    assert not psutil.pid_exists(init)  # killed and reaped
    stop_pod(cri, pod_id)
    assert pod_state(cri, pod_id) == api.PodSandboxState.SANDBOX_NOTREADY
    st = status(cri, ctrs[0])
    assert (st.state, st.exit_code) == (api.ContainerState.CONTAINER_EXITED, 128 + signal.SIGKILL)
    for _ in range(2):
        remove_pod(cri, pod_id)
    gone(cri, pod_id, ctrs)
    zombies = [c.pid for c in psutil.Process(cri.proc.pid).children() if c.status() == psutil.STATUS_ZOMBIE]
    assert zombies == []


def _all_at_once(calls: list[Callable[[], object]]) -> list[BaseException]:
    """Run every call on its own thread, released together; the exceptions raised."""
    barrier = threading.Barrier(len(calls))
    errors: list[BaseException] = []

    def run(call: Callable[[], object]) -> None:
        barrier.wait()
        try:
            call()
        except BaseException as exc:  # noqa: BLE001 - collected for the assertion
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(call,)) for call in calls]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return errors


def test_concurrent_stops_and_removes_all_succeed(cri):
    pod_id, [ctr, *others] = running_pod(cri, 3)
    assert _all_at_once([lambda: stop_container(cri, ctr, timeout=1)] * 3) == []
    assert status(cri, ctr).state == api.ContainerState.CONTAINER_EXITED
    assert _all_at_once([lambda: remove_container(cri, ctr)] * 3) == []
    assert code_of(lambda: status(cri, ctr)) == grpc.StatusCode.NOT_FOUND
    assert _all_at_once([lambda: stop_pod(cri, pod_id)] * 3) == []
    assert pod_state(cri, pod_id) == api.PodSandboxState.SANDBOX_NOTREADY
    assert _all_at_once([lambda: remove_pod(cri, pod_id)] * 3) == []
    gone(cri, pod_id, [ctr, *others])
    # A running pod removed by several calls at once, each stopping it first.
    pod_id, ctrs = running_pod(cri, 2)
    assert _all_at_once([lambda: remove_pod(cri, pod_id)] * 3 + [lambda: stop_pod(cri, pod_id)]) == []
    gone(cri, pod_id, ctrs)


def test_an_id_prefix_of_several_is_refused_not_taken_for_gone(cri):
    """A prefix that names more than one container is no container that is gone: stop and remove
    refuse it and leave them all as they were."""
    pod_id, pod = run_pod(cri)
    ctrs = [create(cri, pod_id, pod, ["sleep", "1000"]) for _ in range(17)]  # two share a first digit
    prefix = next(c[0] for c in ctrs if sum(o.startswith(c[0]) for o in ctrs) > 1)
    for call in (stop_container, remove_container):
        with pytest.raises(grpc.RpcError) as err:
            call(cri, prefix)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "ambiguous" in err.value.details()
    assert all(status(cri, c).state == api.ContainerState.CONTAINER_CREATED for c in ctrs)
    with pytest.raises(grpc.RpcError) as err:
        status(cri, prefix)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    unique = next(c for c in ctrs if sum(o.startswith(c[:12]) for o in ctrs) == 1)
    stop_container(cri, unique[:12])
    remove_container(cri, unique[:12])
    assert code_of(lambda: status(cri, unique)) == grpc.StatusCode.NOT_FOUND


def test_an_image_that_is_gone_removes_again(cri, push_image):
    pushed = push_image(labels={"test": "removed twice"})  # an image of its own, not busybox's with a new tag
    image = cri.client.image
    pulled = image.PullImage(api.PullImageRequest(image=api.ImageSpec(image=pushed.reference)), timeout=60).image_ref
    for name in (pushed.reference, pushed.reference, pulled, pulled[:19], pushed.digest_reference,
                 "example.test/never/pulled:1", "never-pulled", "sha256:" + "0" * 64):
        image.RemoveImage(api.RemoveImageRequest(image=api.ImageSpec(image=name)), timeout=30)
    assert not image.ImageStatus(api.ImageStatusRequest(image=api.ImageSpec(image=pulled)), timeout=10).HasField("image")
    assert pulled not in [i.id for i in image.ListImages(api.ListImagesRequest(), timeout=10).images]
    # The busybox image the other tests use is still there.
    assert image.ImageStatus(api.ImageStatusRequest(image=api.ImageSpec(image=cri.image)), timeout=10).HasField("image")


def ended(pid: int, timeout: float = 5.0) -> bool:
    """Whether ``pid`` is gone (or a zombie) within ``timeout``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                return True
        except psutil.NoSuchProcess:
            return True
        time.sleep(0.02)
    return False


def test_stop_and_remove_after_a_daemon_restart(registry, busybox_image, tmp_path):
    """Records reloaded by a new daemon: a pod stopped before, and one whose monitor was killed while no
    daemon ran, both stop and remove, twice."""
    dirs = make_dirs()
    conf = write_registries_conf(tmp_path / "registries.conf", [registry.host])
    d = Daemon(dirs, "--registries-conf", str(conf)).start()
    try:
        d.client.image.PullImage(api.PullImageRequest(image=api.ImageSpec(image=busybox_image.reference)), timeout=60)
        d.image = busybox_image.reference
        stopped, stopped_ctrs = running_pod(d)
        stop_pod(d, stopped)
        orphaned, orphaned_ctrs = running_pod(d)
        monitor = monitor_pid(d, orphaned)
        orphaned_init = init_pid(d, orphaned_ctrs[0])
        d.stop()
        os.kill(monitor, signal.SIGKILL)
        d = Daemon(dirs, "--registries-conf", str(conf)).start()
        # The container outlived its monitor (the node's init adopted it): the restarted daemon kills it
        # before it serves (server/recovery.py), and the stops after change nothing.
        assert ended(orphaned_init)
        st = status(d, orphaned_ctrs[0])
        assert (st.state, st.exit_code) == (api.ContainerState.CONTAINER_EXITED, 128 + signal.SIGKILL)
        for pod_id, ctrs in ((stopped, stopped_ctrs), (orphaned, orphaned_ctrs)):
            for _ in range(2):
                stop_pod(d, pod_id)
            assert pod_state(d, pod_id) == api.PodSandboxState.SANDBOX_NOTREADY
            for ctr in ctrs:
                for _ in range(2):
                    stop_container(d, ctr)
                st = status(d, ctr)
                assert (st.state, st.exit_code) == (api.ContainerState.CONTAINER_EXITED, 128 + signal.SIGKILL)
            for _ in range(2):
                remove_pod(d, pod_id)
            gone(d, pod_id, ctrs)
    finally:
        try:
            if d.proc and d.proc.poll() is None:
                remove_all_pods(d)
            d.stop()
        finally:
            d.kill()
            remove_dirs(dirs)
