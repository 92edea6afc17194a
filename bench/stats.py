"""Cost of ListContainerStats / ListPodSandboxStats work for many containers (run as root).

Usage::

    python bench/stats.py [--containers N] [--pods P] [--rounds R]

Makes N container cgroups spread over P pod cgroups under a private
/crio-fast-bench-stats-<random> cgroup and an upper dir with a few files per
container in a temporary storage dir, then times ``StatsCollector.collect``
(one ``read_files`` pass over every cgroup file, rates, layer cache) and the
proto building of the stats service: the first call (every writable layer
walked) and the steady state (layer walks cached). Everything is removed at
the end. Reported: the median of R rounds in milliseconds.
"""

from __future__ import annotations

import argparse
import base64
import os
import shutil
import statistics
import sys
import tempfile
import time
import uuid

from crio_fast.api import api_pb2 as pb
from crio_fast.cgroups import CgroupManager, read_files, write_files
from crio_fast.state.records import POD_READY, ContainerRecord, PodRecord
from crio_fast.stats.collector import StatsCollector
from crio_fast.stats.service import StatsService


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--containers", type=int, default=250)
    parser.add_argument("--pods", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("needs root (it creates cgroups)", file=sys.stderr)
        return 2
    manager = CgroupManager()
    root = manager.paths(f"/crio-fast-bench-stats-{uuid.uuid4().hex[:8]}")
    storage = tempfile.mkdtemp(prefix="cf-bench-stats-")
    v2_root_control = (
        os.path.join(manager.layout.unified.mount_point, "cgroup.subtree_control") if manager.layout.unified else None
    )
    enabled_before = set(read_files([v2_root_control])[0].split()) if v2_root_control else set()
    try:
        pods, containers = [], []
        config = pb.ContainerConfig(metadata=pb.ContainerMetadata(name="c")).SerializeToString()
        pod_config = pb.PodSandboxConfig(metadata=pb.PodSandboxMetadata(name="p", namespace="n", uid="u"))
        for p in range(args.pods):
            pod_cg = manager.pod_cgroup(f"{root.path}/pod{p}", f"p{p}")
            pods.append(PodRecord(id=f"p{p}", name=f"p{p}", config=base64.b64encode(pod_config.SerializeToString()).decode(),
                                  runtime_handler="", state=POD_READY, created_at=time.time_ns() - 10**9, pod_dir="",
                                  cgroup_path=pod_cg.path, cgroup_created=True))
        for i in range(args.containers):
            pod = pods[i % args.pods]
            cid = f"{i:064x}"
            cg = manager.container_cgroup(pod.cgroup_path, cid, None)
            upper = os.path.join(storage, cid, "upper", "etc")
            os.makedirs(upper)
            for n in range(5):
                with open(os.path.join(upper, f"f{n}"), "wb") as f:
                    f.write(b"x" * 4096)
            containers.append(ContainerRecord(id=cid, pod_id=pod.id, name=cid, config=base64.b64encode(config).decode(),
                                              image_id="", image_ref="busybox", state="running",
                                              created_at=time.time_ns() - 10**9, cgroup_path=cg.path))

        class Store:  # the StateStore's tables as the service reads them
            class _T:
                def __init__(self, items):
                    self.items = items

                def values(self):
                    return list(self.items)

            def __init__(self):
                self.pods, self.containers = self._T(pods), self._T(containers)

        collector = StatsCollector(manager, storage, layer_refresh_seconds=3600)
        service = StatsService(Store(), None, None, collector)  # type: ignore[arg-type]

        start = time.perf_counter()
        service.list_container_stats(None)
        first = (time.perf_counter() - start) * 1000

        def median(action) -> float:
            times = []
            for _ in range(args.rounds):
                t = time.perf_counter()
                action()
                times.append((time.perf_counter() - t) * 1000)
            return statistics.median(times)

        collect = median(lambda: collector.collect(pods, containers))
        list_containers = median(lambda: service.list_container_stats(None))
        list_pods = median(lambda: service.list_pod_stats(None))
        metrics = median(service.pod_metrics)
        print(f"| what ({args.containers} containers, {args.pods} pods, {manager.layout.version}) | ms |")
        print("| --- | ---: |")
        print(f"| ListContainerStats, first call (walks every writable layer) | {first:.1f} |")
        print(f"| collect (cgroup files of containers and pods, one read_files pass) | {collect:.1f} |")
        print(f"| ListContainerStats (cached layers) | {list_containers:.1f} |")
        print(f"| ListPodSandboxStats (cached layers) | {list_pods:.1f} |")
        print(f"| ListPodSandboxMetrics | {metrics:.1f} |")
    finally:
        manager.remove(root, timeout=30)
        shutil.rmtree(storage, ignore_errors=True)
        if v2_root_control:
            for controller in set(read_files([v2_root_control])[0].split()) - enabled_before:
                write_files([(v2_root_control, b"-" + controller)])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
