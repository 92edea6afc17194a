"""What every daemon benchmark needs: a registry, an image, a daemon, cleanup.

    with bench_node(state_dir="/run", extra_layers=[...]) as (daemon, image):
        ...

starts Debian's docker-registry on 127.0.0.1 in a temporary dir, pushes a
busybox image (plus any extra layers), starts a private daemon and on exit
removes every pod, stops the daemon and the registry and deletes their
directories. The daemon's root (records, images, container upper dirs) goes
in a fresh directory under ``state_dir``; its run root is always a private
tmpfs mounted for the run, as /run is on a node (whatever the machine's own
/run is), so that pod dirs and bundles never meet ext4's slow file creation
after mass deletions.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from crio_fast.api import api_pb2 as api  # noqa: E402
from tests.support.daemon import Daemon, make_dirs, remove_dirs  # noqa: E402
from tests.support.registries_conf import write_registries_conf  # noqa: E402
from tests.support.images import PushedImage, push_image  # noqa: E402
from tests.support.registry import RegistryServer  # noqa: E402


def remove_all_pods(d: Daemon) -> None:
    rt = d.client.runtime
    for pod in rt.ListPodSandbox(api.ListPodSandboxRequest(), timeout=60).items:
        rt.StopPodSandbox(api.StopPodSandboxRequest(pod_sandbox_id=pod.id), timeout=60)
        rt.RemovePodSandbox(api.RemovePodSandboxRequest(pod_sandbox_id=pod.id), timeout=60)


@contextmanager
def bench_node(
    state_dir: str = "/run", pull: bool = True, daemon_args: tuple[str, ...] = (), runtimes: tuple[str, ...] = (),
    config_drop_in: str = "", daemon_env: dict[str, str] | None = None, **push_options: Any
) -> Iterator[tuple[Daemon, PushedImage]]:
    """``runtimes``: extra runtime handlers as ``NAME:PATH[:ROOT]`` (the daemon's --runtimes);
    ``config_drop_in``: TOML written into the daemon's drop-in dir (settings no flag reaches);
    ``daemon_env``: the daemon's whole environment (default: this process's), e.g. a PYTHONPATH
    that runs another build."""
    with tempfile.TemporaryDirectory(prefix="cf-bench-") as tmp:
        registry = RegistryServer(Path(tmp) / "registry")
        registry.start()
        dirs = make_dirs(state_dir)
        d = None
        runroot_mounted = False
        try:
            dirs.runroot.mkdir()
            subprocess.run(["mount", "-t", "tmpfs", "-o", "mode=0755,size=2g", "cf-bench-run", str(dirs.runroot)],
                           check=True)
            runroot_mounted = True
            pushed = push_image(registry, "bench/busybox", "latest", **push_options)
            conf = write_registries_conf(Path(tmp) / "registries.conf", [registry.host])
            # daemon_args come last so that they win (a later --log-level replaces "warn").
            if config_drop_in:
                (dirs.config_dir / "50-bench.conf").write_text(config_drop_in)
            runtime_args = [arg for spec in runtimes for arg in ("--runtimes", spec)]
            d = Daemon(dirs, "--registries-conf", str(conf), "--log-level", "warn", *runtime_args,
                       *daemon_args, env=daemon_env).start()
            if pull:
                d.client.image.PullImage(api.PullImageRequest(image=api.ImageSpec(image=pushed.reference)), timeout=600)
            yield d, pushed
        finally:
            try:
                if d is not None and d.proc is not None and d.proc.poll() is None:
                    remove_all_pods(d)
            finally:
                if d is not None:
                    d.stop()
                registry.stop()
                if runroot_mounted:
                    subprocess.run(["umount", "--lazy", str(dirs.runroot)], check=False)
                remove_dirs(dirs)
