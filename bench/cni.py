#!/usr/bin/env python3
"""How much of RunPodSandbox is CNI, and how much of CNI is crio-fast's own code.

Runs pods one after another (no containers) on a private bridge network
(bridge + host-local, optionally portmap with one hostPort) and, as a
baseline, without any CNI configuration (the pod gets only ``lo``) and on the
host network. For each pod it takes the RunPodSandbox latency seen by the
client and, from the daemon's log, the time of the whole network set-up
(loopback + ADD through the conflist) and the part spent in plugin processes
(from spawning each to reaping it). What is left is crio-fast's own overhead
around the plugin calls: reading the configuration, building each plugin's
stdin, parsing results, writing the result cache.

    sudo python3 bench/cni.py [--pods 20]

Nothing leaves the machine: the bridge has no masquerading and pods no
default route; the bridge and the plugins' iptables rules are removed at exit.
"""

from __future__ import annotations

import argparse
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import bench_node  # noqa: E402
from tests.support.pods import kubelet_pod_linux  # noqa: E402

from crio_fast.api import api_pb2 as api  # noqa: E402
from tests.support.daemon import Daemon  # noqa: E402
from tests.support.network import (  # noqa: E402
    PLUGIN_DIR, existing_hostport_chains, free_port, remove_hostport_chains, remove_network, write_network,
)

ADD_LINE = re.compile(
    r"pod (?P<pod>[0-9a-f]{12}) joined CNI network \S+ as \S+ in (?P<total>[0-9.]+) ms "
    r"\((?P<plugins>[0-9.]+) ms in (?P<count>\d+) plugin processes\)"
)
DEL_LINE = re.compile(
    r"pod (?P<pod>[0-9a-f]{12}) left CNI network \S+ in (?P<total>[0-9.]+) ms \((?P<plugins>[0-9.]+) ms in plugin"
)


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def run_scenario(d: Daemon, pods: int, host_network: bool = False, host_port: bool = False) -> dict[str, float]:
    rt = d.client.runtime
    run_ms, stop_ms, ids = [], [], []
    for n in range(pods):
        config = api.PodSandboxConfig(
            metadata=api.PodSandboxMetadata(name=f"bench{n}", namespace="bench", uid=f"bench-{n}-{time.time_ns()}"),
            log_directory=str(d.dirs.log_dir / f"bench{n}"), linux=kubelet_pod_linux(),
        )
        if host_network:
            config.linux.security_context.namespace_options.network = api.NamespaceMode.NODE
        if host_port:
            config.port_mappings.append(api.PortMapping(container_port=80, host_port=free_port()))
        started = time.perf_counter()
        pod_id = rt.RunPodSandbox(api.RunPodSandboxRequest(config=config), timeout=60).pod_sandbox_id
        run_ms.append((time.perf_counter() - started) * 1000)
        ids.append(pod_id)
    for pod_id in ids:
        started = time.perf_counter()
        rt.StopPodSandbox(api.StopPodSandboxRequest(pod_sandbox_id=pod_id), timeout=60)
        stop_ms.append((time.perf_counter() - started) * 1000)
        rt.RemovePodSandbox(api.RemovePodSandboxRequest(pod_sandbox_id=pod_id), timeout=60)

    prefixes = {pod_id[:12] for pod_id in ids}
    log = d.log()
    adds = [m for m in ADD_LINE.finditer(log) if m["pod"] in prefixes]
    dels = [m for m in DEL_LINE.finditer(log) if m["pod"] in prefixes]
    add_total = [float(m["total"]) for m in adds]
    add_plugins = [float(m["plugins"]) for m in adds]
    return {
        "run": median(run_ms),
        "stop": median(stop_ms),
        "add": median(add_total),
        "add_plugins": median(add_plugins),
        "add_overhead": median([t - p for t, p in zip(add_total, add_plugins)]),
        "processes": median([float(m["count"]) for m in adds]),
        "del": median([float(m["total"]) for m in dels]),
        "del_overhead": median([float(m["total"]) - float(m["plugins"]) for m in dels]),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pods", type=int, default=20, help="pods per scenario (default 20)")
    args = parser.parse_args()

    chains_before = existing_hostport_chains()
    rows = []
    with tempfile.TemporaryDirectory(prefix="cf-bench-cni-") as tmp, bench_node(
        pull=False, daemon_args=("--log-level", "info", "--cni-plugin-dir", PLUGIN_DIR)
    ) as (d, _image):
        rows.append(("host network (no CNI)", run_scenario(d, args.pods, host_network=True)))
        rows.append(("no CNI config (lo only)", run_scenario(d, args.pods)))
        network = write_network(d.dirs.network_dir, Path(tmp), with_portmap=False)
        try:
            rows.append(("bridge + host-local", run_scenario(d, args.pods)))
        finally:
            remove_network(network)
        network = write_network(d.dirs.network_dir, Path(tmp))
        try:
            rows.append(("bridge + host-local + portmap (1 hostPort)", run_scenario(d, args.pods, host_port=True)))
        finally:
            remove_network(network)
            if not chains_before:
                remove_hostport_chains()

    print(f"Pods run one at a time, {args.pods} per scenario; medians in ms. CNI set-up = loopback + ADD;")
    print("overhead = CNI set-up minus the wall time of the plugin processes (spawn to reap).\n")
    print("| scenario | RunPodSandbox | CNI set-up | CNI share | plugin processes | in plugins | crio-fast overhead "
          "| StopPodSandbox | DEL | DEL overhead |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for name, r in rows:
        has_cni = r["add"] == r["add"]  # NaN when no ADD happened
        share = f"{100 * r['add'] / r['run']:.0f} %" if has_cni else "-"

        def cell(value: float, fmt: str = "{:.1f}") -> str:
            return fmt.format(value) if value == value else "-"

        print(f"| {name} | {r['run']:.1f} | {cell(r['add'])} | {share} | {cell(r['processes'], '{:.0f}')} "
              f"| {cell(r['add_plugins'])} | {cell(r['add_overhead'], '{:.2f}')} | {r['stop']:.1f} "
              f"| {cell(r['del'])} | {cell(r['del_overhead'], '{:.2f}')} |")


if __name__ == "__main__":
    main()
