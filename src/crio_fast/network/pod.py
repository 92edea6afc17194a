"""Pod networking: what RunPodSandbox and StopPodSandbox do with CNI.

A pod with its own network namespace gets ``lo`` up (by its monitor, when
it makes the namespace: what the loopback plugin would do, without a process)
and one interface, ``eth0``, on the node's default CNI network. The CRI
PodSandboxConfig becomes CNI arguments (K8S_POD_*) and capability arguments
(portMappings, dns, bandwidth) for the plugins that declare them.

Without any CNI configuration a pod still starts, with only ``lo``: the
kubelet does not create pods before NetworkReady, and crictl users get a pod
that works for everything but the network (``Status`` says why).
"""

from __future__ import annotations

import logging
import os
import re
import time
from pathlib import Path
from typing import Any

from crio_fast.api import api_pb2 as pb
from crio_fast.config import Config
from crio_fast.network.cni import AttachResult, Attachment, CniClient, NetworkList
from crio_fast.network.config import NoNetworkConfig, find_default_network

log = logging.getLogger("crio_fast.network")

PROTOCOL_NAMES = {pb.Protocol.TCP: "tcp", pb.Protocol.UDP: "udp", pb.Protocol.SCTP: "sctp"}
INGRESS_BANDWIDTH_ANNOTATION = "kubernetes.io/ingress-bandwidth"
EGRESS_BANDWIDTH_ANNOTATION = "kubernetes.io/egress-bandwidth"
_QUANTITY = re.compile(r"^([0-9]+(?:\.[0-9]+)?)(k|M|G|T|P|E|Ki|Mi|Gi|Ti|Pi|Ei)?$")
_SUFFIX_FACTORS = {
    None: 1, "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12, "P": 10**15, "E": 10**18,
    "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60,
}


def parse_bandwidth(value: str) -> int:
    """A Kubernetes quantity (``10M``, ``1Gi``) as bits per second."""
    match = _QUANTITY.match(value.strip())
    if not match:
        raise ValueError(f"bandwidth {value!r} is not a quantity such as 10M or 1Gi")
    return int(float(match.group(1)) * _SUFFIX_FACTORS[match.group(2)])


def capability_args(config: pb.PodSandboxConfig) -> dict[str, Any]:
    """runtimeConfig values the CRI config provides, by capability name."""
    args: dict[str, Any] = {}
    mappings = []
    for mapping in config.port_mappings:
        if mapping.host_port <= 0:
            continue  # only the pod IP is meant: nothing to forward
        entry: dict[str, Any] = {
            "hostPort": mapping.host_port,
            "containerPort": mapping.container_port,
            "protocol": PROTOCOL_NAMES.get(mapping.protocol, "tcp"),
        }
        if mapping.host_ip:
            entry["hostIP"] = mapping.host_ip
        mappings.append(entry)
    if mappings:
        args["portMappings"] = mappings
    dns = config.dns_config
    if dns.servers or dns.searches or dns.options:
        args["dns"] = {"servers": list(dns.servers), "searches": list(dns.searches), "options": list(dns.options)}
    bandwidth: dict[str, int] = {}
    for annotation, prefix in ((INGRESS_BANDWIDTH_ANNOTATION, "ingress"), (EGRESS_BANDWIDTH_ANNOTATION, "egress")):
        if annotation in config.annotations:
            try:
                rate = parse_bandwidth(config.annotations[annotation])
            except ValueError as exc:
                log.warning("pod %s: ignoring %s: %s", config.metadata.name, annotation, exc)
                continue
            bandwidth[f"{prefix}Rate"] = rate
            # A burst of one second's worth at the rate.
            bandwidth[f"{prefix}Burst"] = rate
    if bandwidth:
        args["bandwidth"] = bandwidth
    return args


class PodNetwork:
    """Attaches pods to the default network and detaches them, through :class:`CniClient`."""

    def __init__(self, runroot: str) -> None:
        self.cache_dir = Path(runroot) / "cni"

    def client(self, config: Config) -> CniClient:
        # Built per call from the current config, so that a SIGHUP reload of
        # plugin_dirs or plugin_timeout applies to the next pod.
        return CniClient(config.network.plugin_dirs, config.network.plugin_timeout, self.cache_dir)

    def attach(self, config: Config, pod_id: str, netns: str, pod: pb.PodSandboxConfig) -> AttachResult | None:
        """ADD on the default network; on failure whatever was done is undone.

        Returns None when no network is configured (the pod keeps only ``lo``).
        """
        started = time.monotonic()
        client = self.client(config)
        attachment = self.attachment(pod_id, netns, pod)
        # lo is up already: the pod monitor set it up when it made the namespace.
        try:
            found = find_default_network(config.network.network_dir, config.network.cni_default_network)
        except NoNetworkConfig as exc:
            log.warning("pod %s gets no network interface: %s", pod_id[:12], exc)
            return None
        network = NetworkList.from_config_file(found)
        caps = capability_args(pod)
        try:
            result = client.add(network, attachment, caps)
        except BaseException as add_error:
            try:
                client.delete(attachment, network, caps)
            except Exception as exc:  # noqa: BLE001 - the ADD error is the one to report
                log.warning("pod %s: DEL after a failed ADD: %s", pod_id[:12], exc)
            raise add_error
        # bench/cni.py reads this line: the whole network set-up and the part spent in plugin processes.
        result.seconds = time.monotonic() - started
        log.info(
            "pod %s joined CNI network %s as %s in %.1f ms (%.1f ms in %d plugin processes)", pod_id[:12],
            network.name, ",".join(result.ips()) or "no address", result.seconds * 1000, result.plugin_seconds * 1000,
            len(result.calls),
        )
        return result

    def detach(self, config: Config, pod_id: str, netns: str, pod: pb.PodSandboxConfig) -> AttachResult | None:
        """DEL with the cached ADD result; a pod already detached (or never attached) is not an error.

        When the network namespace is gone already, plugins are told so with an
        empty CNI_NETNS, as the spec asks, and still release addresses and rules.
        """
        client = self.client(config)
        if not netns or not os.path.exists(netns):
            netns = ""
        result = client.delete(self.attachment(pod_id, netns, pod))
        if result is not None:
            log.info("pod %s left CNI network %s in %.1f ms (%.1f ms in plugin processes)", pod_id[:12],
                     result.network, result.seconds * 1000, result.plugin_seconds * 1000)
        return result

    @staticmethod
    def attachment(pod_id: str, netns: str, pod: pb.PodSandboxConfig) -> Attachment:
        meta = pod.metadata
        return Attachment(
            container_id=pod_id, netns=netns, pod_name=meta.name, pod_namespace=meta.namespace, pod_uid=meta.uid,
        )
