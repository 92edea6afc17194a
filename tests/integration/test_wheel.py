"""The release wheel installs and runs on a node without a compiler.

scripts/build-wheel builds the sdist, a wheel from it with `pip wheel` and the
manylinux wheel with auditwheel; the wheel then goes into a fresh venv from
local files only (its dependencies are downloaded once into build/), and the
daemon runs from that venv with PATH holding nothing but the venv: it pulls
busybox from the test registry, runs a pod with a container and answers an
ExecSync. Nothing here is skipped: a wheel that cannot be built fails the test.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from importlib import metadata
from pathlib import Path

import psutil
import pytest

from crio_fast.api import api_pb2 as api
from tests.support.daemon import Daemon, make_dirs, remove_dirs
from tests.support.registries_conf import write_registries_conf
from tests.support.timing import scaled

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
# Dependency wheels are kept between runs in the repository's ignored build/.
DEPENDENCY_CACHE = REPO / "build" / "wheel-deps" / f"cp{sys.version_info.major}{sys.version_info.minor}"


def run(argv: list[str], timeout: float, **kw) -> subprocess.CompletedProcess:
    result = subprocess.run(argv, capture_output=True, text=True, timeout=scaled(timeout), stdin=subprocess.DEVNULL,
                            **kw)
    assert result.returncode == 0, f"{argv} exited {result.returncode}:\n{result.stdout}\n{result.stderr}"
    return result


def checkout_commit() -> str:
    result = subprocess.run(
        ["git", "-C", str(REPO), "rev-parse", "--short=12", "HEAD"], capture_output=True, text=True, check=False
    )
    return result.stdout.strip() if result.returncode == 0 else ""


@pytest.fixture(scope="module")
def release_wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("release")
    result = run([str(REPO / "scripts" / "build-wheel"), "--out", str(out)], timeout=600,
                 env={**os.environ, "PYTHON": sys.executable})
    wheel = Path(result.stdout.strip().splitlines()[-1])
    assert wheel.is_file(), result.stdout
    return wheel


def fetch_dependency_wheels(wheel: Path) -> Path:
    """Binary wheels of everything ``wheel`` depends on, from the cache if it
    has them all, else from the package index (once)."""
    DEPENDENCY_CACHE.mkdir(parents=True, exist_ok=True)
    download = [sys.executable, "-m", "pip", "download", "--only-binary", ":all:", "--dest", str(DEPENDENCY_CACHE),
                str(wheel)]
    offline = subprocess.run(download + ["--no-index", "--find-links", str(DEPENDENCY_CACHE)],
                             capture_output=True, text=True, timeout=scaled(120), stdin=subprocess.DEVNULL)
    if offline.returncode != 0:
        run(download, timeout=300)
    # pip download copies the wheel itself too; the cache is for dependencies only.
    for stale in DEPENDENCY_CACHE.glob("crio_fast-*.whl"):
        stale.unlink()
    return DEPENDENCY_CACHE


def test_release_wheel_is_manylinux_and_self_contained(release_wheel: Path) -> None:
    assert "-manylinux_" in release_wheel.name and release_wheel.name.endswith("_x86_64.whl"), release_wheel.name
    sdists = list(release_wheel.parent.glob("crio_fast-*.tar.gz"))
    assert len(sdists) == 1, sdists
    with zipfile.ZipFile(release_wheel) as wheel:
        names = set(wheel.namelist())
        monitor = wheel.getinfo("crio_fast/_native/bin/crio-fast-monitor")
        assert (monitor.external_attr >> 16) & 0o111, "the monitor lost its executable bits"
        build_info = wheel.read("crio_fast/_build_info.py").decode()
    assert any(n.startswith("crio_fast/_native/_extract.") and n.endswith(".so") for n in names), names
    assert any(n.startswith("crio_fast/_native/_cgroupfs.") and n.endswith(".so") for n in names), names
    assert "crio_fast/api/api_pb2.py" in names and "crio_fast/api/api_pb2_grpc.py" in names
    assert "crio_fast/data/crio-fast.service" in names  # what `crio-fast install-service` writes
    # The wheel carries what runs, not the sources it was compiled from.
    assert not [n for n in names if n.endswith((".c", ".h", ".pyx"))]
    assert f'GIT_COMMIT = "{checkout_commit()}"' in build_info


def test_wheel_runs_a_pod_without_a_compiler(release_wheel: Path, registry, busybox_image, tmp_path: Path) -> None:
    wheels = fetch_dependency_wheels(release_wheel)
    venv = tmp_path / "venv"
    run([sys.executable, "-m", "venv", str(venv)], timeout=120)
    bin_dir = venv / "bin"
    # Nothing but the venv on PATH: no cc/gcc, no Cython. (cffi may be there: cryptography's wheels use it
    # at run time, and it compiles nothing for them.)
    env = {"PATH": str(bin_dir), "HOME": str(tmp_path), "LANG": "C.UTF-8", "PIP_NO_CACHE_DIR": "1"}
    run([str(bin_dir / "python"), "-m", "pip", "install", "--quiet", "--no-index",
         "--find-links", str(release_wheel.parent), "--find-links", str(wheels), "crio-fast"],
        timeout=300, env=env, cwd=tmp_path)

    probe = run([str(bin_dir / "python"), "-c",
                 "import shutil, importlib.util, crio_fast, crio_fast._native as n;"
                 "print(shutil.which('cc'), shutil.which('gcc'), importlib.util.find_spec('Cython'));"
                 "print(crio_fast.__file__); print(n.monitor_path())"],
                timeout=60, env=env, cwd=tmp_path).stdout.splitlines()
    assert probe[0] == "None None None", probe
    assert probe[1].startswith(str(venv)), f"crio_fast imported from outside the venv: {probe[1]}"
    assert probe[2].startswith(str(venv)) and probe[2].endswith("/_native/bin/crio-fast-monitor"), probe[2]

    commit = checkout_commit()
    version = metadata.version("crio-fast")
    printed = run([str(bin_dir / "crio-fast"), "version"], timeout=60, env=env, cwd=tmp_path).stdout
    assert f"Version:        {version}" in printed, printed
    assert f"GitCommit:      {commit or 'unknown'}" in printed, printed

    dirs = make_dirs()
    conf = write_registries_conf(tmp_path / "registries.conf", [registry.host])
    daemon = Daemon(dirs, "--registries-conf", str(conf), program=[str(bin_dir / "crio-fast")], env=env)
    try:
        daemon.start()
        cri = daemon.client
        reported = cri.runtime.Version(api.VersionRequest(), timeout=10)
        assert reported.runtime_version == (f"{version}+git.{commit}" if commit else version)

        cri.image.PullImage(api.PullImageRequest(image=api.ImageSpec(image=busybox_image.reference)), timeout=60)
        pod = api.PodSandboxConfig(
            metadata=api.PodSandboxMetadata(name="wheel", namespace="test", uid="wheel-pod", attempt=0),
            hostname="wheel",
            log_directory=str(dirs.log_dir / "wheel"),
        )
        pod_id = cri.runtime.RunPodSandbox(api.RunPodSandboxRequest(config=pod), timeout=30).pod_sandbox_id
        container = api.ContainerConfig(
            metadata=api.ContainerMetadata(name="sleeper"),
            image=api.ImageSpec(image=busybox_image.reference),
            command=["sleep", "300"],
            log_path="sleeper.log",
        )
        ctr = cri.runtime.CreateContainer(
            api.CreateContainerRequest(pod_sandbox_id=pod_id, config=container, sandbox_config=pod), timeout=30
        ).container_id
        cri.runtime.StartContainer(api.StartContainerRequest(container_id=ctr), timeout=30)

        # The pod's monitor is the executable inside the installed package.
        monitors = [p for p in psutil.process_iter(["exe"]) if (p.info["exe"] or "").startswith(str(venv))]
        assert monitors, "no process runs the monitor shipped in the venv"

        out = cri.runtime.ExecSync(
            api.ExecSyncRequest(container_id=ctr, cmd=["sh", "-c", "echo from-the-wheel; hostname"], timeout=10),
            timeout=20,
        )
        assert out.exit_code == 0, out.stderr
        assert out.stdout == b"from-the-wheel\nwheel\n"

        cri.runtime.StopPodSandbox(api.StopPodSandboxRequest(pod_sandbox_id=pod_id), timeout=60)
        cri.runtime.RemovePodSandbox(api.RemovePodSandboxRequest(pod_sandbox_id=pod_id), timeout=60)
        assert not cri.runtime.ListPodSandbox(api.ListPodSandboxRequest(), timeout=10).items
        assert daemon.stop() == 0, daemon.log()
    finally:
        try:
            if daemon.proc is not None and daemon.proc.poll() is None:
                for leftover in daemon.client.runtime.ListPodSandbox(api.ListPodSandboxRequest(), timeout=10).items:
                    daemon.client.runtime.RemovePodSandbox(
                        api.RemovePodSandboxRequest(pod_sandbox_id=leftover.id), timeout=60
                    )
        finally:
            daemon.kill()
            # Monitors outlive the daemon by design: end any left from this venv, by pid.
            for proc in psutil.process_iter(["exe"]):
                if (proc.info["exe"] or "").startswith(str(venv)):
                    proc.kill()
            remove_dirs(dirs)
            shutil.rmtree(venv, ignore_errors=True)
