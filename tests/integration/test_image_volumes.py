"""Image volumes (CRI Mount.image, Kubernetes' `image` volume source), end to end, on every runtime handler:
an image's files in a container, read-only and noexec, its sub path resolved inside the image, released
with the container, and the image kept from removal while a container mounts it."""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Callable

import grpc
import pytest

from crio_fast.api import api_pb2 as api
from tests.support.daemon import Daemon, DaemonDirs
from tests.support.images import LayerBuilder, PushedImage, push_image
from tests.support.oci_runtimes import HANDLERS, configure_oci_runtimes, handler_problem
from tests.support.pods import create, daemon_with_busybox, kubelet_pod_linux, start
from tests.support.timing import command_limit

pytestmark = pytest.mark.integration

TOOL = b"#!/bin/sh\necho tool ran\n"


def data_image(registry, repository: str) -> PushedImage:
    """An artifact image of two layers, no base: the second one deletes and adds files over the first,
    and holds symlinks that stay inside the image and one that climbs out of it."""
    bottom = (LayerBuilder().dir("data").file("data/hello.txt", "hello from the image\n")
              .file("data/gone.txt", "deleted by the layer above\n").file("data/tool", TOOL, mode=0o755)
              .dir("data/sub").file("data/sub/deep.txt", "deep\n"))
    top = (LayerBuilder().dir("data").whiteout("data/gone.txt").file("data/top.txt", "from the top layer\n")
           .symlink("data/absolute", "/data/sub").symlink("data/relative", "sub")
           .symlink("data/up", "../../..").symlink("data/dot-dot", "../.."))
    return push_image(registry, repository, base=False, extra_layers=[bottom, top])


@pytest.fixture(scope="module")
def images(registry) -> dict[str, PushedImage]:
    return {
        "data": data_image(registry, "test/imagevol-data"),
        # One layer: overlayfs takes no fewer than two lower dirs without an upper one.
        "single": push_image(registry, "test/imagevol-single", base=False,
                             extra_layers=[LayerBuilder().dir("only").file("only/one.txt", "single layer\n")]),
    }


@pytest.fixture(scope="module")
def env(registry, busybox_image, images, tmp_path_factory):
    """One daemon with runc and crun, busybox and the volume images pulled."""
    def configure(dirs: DaemonDirs) -> list[str]:
        return configure_oci_runtimes(dirs)

    with daemon_with_busybox(registry, busybox_image, tmp_path_factory.mktemp("regconf"), configure=configure) as d:
        d.image_ids = {key: pull(d, pushed.reference) for key, pushed in images.items()}
        yield d


@pytest.fixture(params=HANDLERS)
def handler(request) -> str:
    if problem := handler_problem(request.param):
        pytest.skip(problem)
    return request.param


_counter = iter(range(1_000_000))


@pytest.fixture
def pod(env, handler) -> Callable[[], tuple[str, api.PodSandboxConfig]]:
    """A factory of running pods on the test's handler; every pod made is removed after the test."""
    pods: list[str] = []

    def make_pod() -> tuple[str, api.PodSandboxConfig]:
        n = next(_counter)
        config = api.PodSandboxConfig(
            metadata=api.PodSandboxMetadata(name=f"iv{n}", namespace="test", uid=f"iv-{n}"),
            hostname=f"iv{n}", log_directory=str(env.dirs.log_dir / f"iv{n}"), linux=kubelet_pod_linux(),
        )
        request = api.RunPodSandboxRequest(config=config, runtime_handler=handler)
        pod_id = env.client.runtime.RunPodSandbox(request, timeout=30).pod_sandbox_id
        pods.append(pod_id)
        return pod_id, config

    try:
        yield make_pod
    finally:
        for pod_id in pods:
            env.client.runtime.StopPodSandbox(api.StopPodSandboxRequest(pod_sandbox_id=pod_id), timeout=60)
            env.client.runtime.RemovePodSandbox(api.RemovePodSandboxRequest(pod_sandbox_id=pod_id), timeout=60)


def pull(d: Daemon, reference: str) -> str:
    """PullImage, as the kubelet does before it names the image in a mount; the image's ID."""
    return d.client.image.PullImage(api.PullImageRequest(image=api.ImageSpec(image=reference)), timeout=60).image_ref


def image_mount(image: str, container_path: str = "/vol", sub_path: str = "") -> api.Mount:
    """What the kubelet sends for an `image` volume: the image, no host path."""
    return api.Mount(container_path=container_path, image=api.ImageSpec(image=image), image_sub_path=sub_path,
                     readonly=True)


def with_mounts(*mounts: api.Mount) -> Callable[[api.ContainerConfig], None]:
    def configure(config: api.ContainerConfig) -> None:
        config.mounts.extend(mounts)
    return configure


def run(d: Daemon, pod_id: str, pod_config: api.PodSandboxConfig, *mounts: api.Mount) -> str:
    ctr = create(d, pod_id, pod_config, ["sleep", "3600"], configure=with_mounts(*mounts))
    start(d, ctr)
    return ctr


def sh(d: Daemon, ctr: str, script: str) -> api.ExecSyncResponse:
    timeout = command_limit(None, 15)
    return d.client.runtime.ExecSync(api.ExecSyncRequest(container_id=ctr, cmd=["sh", "-c", script], timeout=timeout),
                                     timeout=timeout + 10)


def out(d: Daemon, ctr: str, script: str) -> str:
    result = sh(d, ctr, script)
    assert result.exit_code == 0, result.stderr
    return result.stdout.decode()


def remove_container(d: Daemon, ctr: str) -> None:
    d.client.runtime.StopContainer(api.StopContainerRequest(container_id=ctr, timeout=0), timeout=30)
    d.client.runtime.RemoveContainer(api.RemoveContainerRequest(container_id=ctr), timeout=30)


def image_volume_mounts(d: Daemon) -> list[str]:
    """The host's mounts of image volumes of ``d``'s containers, from /proc/self/mountinfo."""
    prefix = f"{d.dirs.runroot}/containers/"
    points = [line.split()[4] for line in Path("/proc/self/mountinfo").read_text().splitlines()]
    return [p for p in points if p.startswith(prefix) and "/image-volumes/" in p]


def refused(call: Callable[[], object]) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        call()
    return info.value


def test_image_content_is_visible_read_only_and_not_executable(env, pod):
    pod_id, pod_config = pod()
    ctr = run(env, pod_id, pod_config, image_mount(env.image_ids["data"]))
    assert out(env, ctr, "cat /vol/data/hello.txt /vol/data/top.txt /vol/data/sub/deep.txt") == (
        "hello from the image\nfrom the top layer\ndeep\n")
    assert out(env, ctr, "ls /vol/data").split() == ["absolute", "dot-dot", "hello.txt", "relative", "sub", "tool",
                                                      "top.txt", "up"]  # the whiteout applied
    write = sh(env, ctr, "echo x > /vol/data/new.txt")
    assert write.exit_code != 0 and b"Read-only file system" in write.stderr, write
    assert sh(env, ctr, "rm /vol/data/hello.txt").exit_code != 0
    # The tool's mode says executable; noexec says no. Read as a script it runs.
    executed = sh(env, ctr, "/vol/data/tool")
    assert executed.exit_code != 0 and b"Permission denied" in executed.stderr, executed
    assert out(env, ctr, "sh /vol/data/tool") == "tool ran\n"
    options = out(env, ctr, "grep ' /vol ' /proc/self/mountinfo").split()[5].split(",")
    assert {"ro", "nosuid", "nodev", "noexec"} <= set(options), options

    status = env.client.runtime.ContainerStatus(api.ContainerStatusRequest(container_id=ctr), timeout=10).status
    [mount] = [m for m in status.mounts if m.container_path == "/vol"]
    assert (mount.image.image, mount.image.image_ref, mount.host_path, mount.readonly) == (
        env.image_ids["data"], env.image_ids["data"], "", True)


def test_image_named_by_tag_and_a_single_layer(env, pod, images):
    pod_id, pod_config = pod()
    ctr = run(env, pod_id, pod_config, image_mount(images["single"].reference, "/single"),
              image_mount(env.image_ids["data"], "/also", "data/sub"))
    assert out(env, ctr, "cat /single/only/one.txt /also/deep.txt") == "single layer\ndeep\n"
    status = env.client.runtime.ContainerStatus(api.ContainerStatusRequest(container_id=ctr), timeout=10).status
    [single] = [m for m in status.mounts if m.container_path == "/single"]
    assert (single.image.image, single.image.image_ref) == (images["single"].reference, env.image_ids["single"])
    [also] = [m for m in status.mounts if m.container_path == "/also"]
    assert also.image_sub_path == "data/sub"


@pytest.mark.parametrize("sub_path", ["data/sub", "data/absolute", "data/relative", "./data/../data/sub/"])
def test_sub_path_is_resolved_inside_the_image(env, pod, sub_path):
    pod_id, pod_config = pod()
    ctr = run(env, pod_id, pod_config, image_mount(env.image_ids["data"], sub_path=sub_path))
    assert out(env, ctr, "ls /vol") == "deep.txt\n"
    assert out(env, ctr, "cat /vol/deep.txt") == "deep\n"


def test_sub_path_may_be_a_file(env, pod):
    pod_id, pod_config = pod()
    ctr = run(env, pod_id, pod_config, image_mount(env.image_ids["data"], "/etc/greeting", "data/hello.txt"))
    assert out(env, ctr, "cat /etc/greeting") == "hello from the image\n"


@pytest.mark.parametrize(("sub_path", "says"), [
    ("data/up/etc", "escapes the image"),  # a symlink out of the image's root
    ("data/dot-dot/..", "escapes the image"),
    ("..", "escapes the image"),
    ("data/nope", "'data/nope' does not exist"),
    ("data/hello.txt/x", "'data/hello.txt/x' does not exist"),
    ("/data", "must be relative"),
])
def test_escaping_or_missing_sub_path_is_refused_and_leaves_nothing_mounted(env, pod, sub_path, says):
    pod_id, pod_config = pod()
    error = refused(lambda: create(env, pod_id, pod_config, ["sleep", "3600"],
                                   configure=with_mounts(image_mount(env.image_ids["data"], sub_path=sub_path))))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error.details()
    assert says in error.details() and repr(sub_path) in error.details(), error.details()
    assert image_volume_mounts(env) == []
    listed = env.client.runtime.ListContainers(api.ListContainersRequest(), timeout=10).containers
    assert [c.id for c in listed if c.pod_sandbox_id == pod_id] == []


def test_create_failing_after_the_volume_is_mounted_leaves_nothing_mounted(env, pod):
    pod_id, pod_config = pod()
    error = refused(lambda: create(env, pod_id, pod_config, ["sleep", "3600"], configure=with_mounts(
        image_mount(env.image_ids["data"]), api.Mount(container_path="/host", host_path="/no/such/dir"))))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error.details()
    assert "/no/such/dir" in error.details()
    assert image_volume_mounts(env) == []


def test_missing_image_is_refused(env, pod):
    pod_id, pod_config = pod()
    missing = "127.0.0.1:1/test/never-pulled:1"
    error = refused(lambda: create(env, pod_id, pod_config, ["sleep", "3600"],
                                   configure=with_mounts(image_mount(missing))))
    assert error.code() == grpc.StatusCode.NOT_FOUND
    assert missing in error.details() and "/vol" in error.details()


def test_host_path_beside_an_image_is_refused(env, pod):
    pod_id, pod_config = pod()
    mount = image_mount(env.image_ids["data"])
    mount.host_path = "/tmp"
    error = refused(lambda: create(env, pod_id, pod_config, ["sleep", "3600"], configure=with_mounts(mount)))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "host_path" in error.details()


def test_removal_releases_the_mount_and_the_image(env, pod, registry):
    # An image of its own: the test removes it.
    reference = push_image(registry, "test/imagevol-removable", base=False,
                           extra_layers=[LayerBuilder().file("removable.txt", "soon gone\n")]).reference
    image_id = pull(env, reference)
    pod_id, pod_config = pod()
    ctr = run(env, pod_id, pod_config, image_mount(image_id))
    assert out(env, ctr, "cat /vol/removable.txt") == "soon gone\n"
    assert len(image_volume_mounts(env)) == 1

    remove_image = lambda: env.client.image.RemoveImage(  # noqa: E731
        api.RemoveImageRequest(image=api.ImageSpec(image=reference)), timeout=30)
    error = refused(remove_image)
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert ctr in error.details() and "image volume" in error.details(), error.details()
    assert out(env, ctr, "cat /vol/removable.txt") == "soon gone\n"

    remove_container(env, ctr)
    assert image_volume_mounts(env) == []
    assert not (env.dirs.runroot / "containers" / ctr).exists()
    remove_image()
    status = env.client.image.ImageStatus(api.ImageStatusRequest(image=api.ImageSpec(image=image_id)), timeout=10)
    assert not status.HasField("image")


def test_released_when_removed_after_a_daemon_restart(env, pod):
    pod_id, pod_config = pod()
    ctr = run(env, pod_id, pod_config, image_mount(env.image_ids["data"]))
    assert len(image_volume_mounts(env)) == 1
    env.proc.send_signal(signal.SIGKILL)
    env.proc.wait(10)
    env.start()
    assert out(env, ctr, "cat /vol/data/hello.txt") == "hello from the image\n"
    refused_removal = refused(lambda: env.client.image.RemoveImage(
        api.RemoveImageRequest(image=api.ImageSpec(image=env.image_ids["data"])), timeout=30))
    assert refused_removal.code() == grpc.StatusCode.FAILED_PRECONDITION
    remove_container(env, ctr)
    assert image_volume_mounts(env) == []

