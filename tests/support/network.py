"""CNI test networks: a private bridge per test, and removing what plugins leave behind.

Each network is a conflist with a bridge of a unique name, a /24 of its own
from 10.250.x.0/24, host-local IPAM with its data under a given temp dir, no
masquerading and no default route, so that nothing leaves the machine.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import secrets
import socket
import struct
import subprocess
from dataclasses import dataclass
from pathlib import Path

from crio_fast.network.netns import socket_in_netns

PLUGIN_DIR = "/usr/lib/cni"
SO_NETNS_COOKIE = 71  # Linux 5.14; not in Python's socket module
HOSTPORT_CHAINS = ("CNI-HOSTPORT-DNAT", "CNI-HOSTPORT-SETMARK", "CNI-HOSTPORT-MASQ")
# Subnets 10.250.<base + n>.0/24, a fresh one per test; the base varies per run
# so that a crashed earlier run's leftovers cannot collide.
_subnet_numbers = iter(range(secrets.randbelow(100) + 10, 256))


def iptables_nat() -> str:
    return subprocess.run(["iptables-save", "-t", "nat"], capture_output=True, text=True, check=True).stdout


def existing_hostport_chains() -> set[str]:
    nat = iptables_nat()
    return {chain for chain in HOSTPORT_CHAINS if f":{chain} " in nat}


def remove_iptables_rules_of(network: str) -> None:
    """Delete the portmap rules (and their per-pod chains) that name ``network`` in a comment."""
    nat = iptables_nat()
    for line in nat.splitlines():
        if line.startswith("-A ") and f'name: \\"{network}\\"' in line:
            rule = line[3:]
            target = re.search(r"-j (\S+)", rule)
            subprocess.run(f"iptables -w -t nat -D {rule}", shell=True, capture_output=True, check=False)
            if target and target.group(1).startswith("CNI-DN-"):
                subprocess.run(["iptables", "-w", "-t", "nat", "-F", target.group(1)], capture_output=True, check=False)
                subprocess.run(["iptables", "-w", "-t", "nat", "-X", target.group(1)], capture_output=True, check=False)


def remove_hostport_chains() -> None:
    """The shared chains portmap creates on first use (and never removes)."""
    for base, chain in (("PREROUTING", "CNI-HOSTPORT-DNAT"), ("OUTPUT", "CNI-HOSTPORT-DNAT")):
        subprocess.run(
            ["iptables", "-w", "-t", "nat", "-D", base, "-m", "addrtype", "--dst-type", "LOCAL", "-j", chain],
            capture_output=True, check=False,
        )
    subprocess.run(["iptables", "-w", "-t", "nat", "-D", "POSTROUTING", "-m", "comment", "--comment",
                    "CNI portfwd requiring masquerade", "-j", "CNI-HOSTPORT-MASQ"], capture_output=True, check=False)
    for chain in HOSTPORT_CHAINS:
        subprocess.run(["iptables", "-w", "-t", "nat", "-F", chain], capture_output=True, check=False)
    for chain in HOSTPORT_CHAINS:
        subprocess.run(["iptables", "-w", "-t", "nat", "-X", chain], capture_output=True, check=False)


def link_exists(name: str) -> bool:
    return subprocess.run(["ip", "link", "show", name], capture_output=True, check=False).returncode == 0


def bridge_ports(bridge: str) -> list[str]:
    out = subprocess.run(["ip", "-o", "link", "show", "master", bridge], capture_output=True, text=True, check=False)
    return [line.split(":")[1].strip().split("@")[0] for line in out.stdout.splitlines() if line.strip()]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class BridgeNetwork:
    name: str
    bridge: str
    subnet: ipaddress.IPv4Network
    ipam_dir: Path
    conflist: Path

    @property
    def gateway(self) -> str:
        return str(self.subnet.network_address + 1)

    def allocations(self) -> list[str]:
        """Addresses host-local has reserved (one file per address)."""
        directory = self.ipam_dir / self.name
        if not directory.exists():
            return []
        return [n for n in os.listdir(directory) if re.fullmatch(r"[0-9.]+", n)]


def write_network(directory: Path, tmp: Path, extra_plugins: list[dict] | None = None,
                  version: str = "1.0.0", with_portmap: bool = True) -> BridgeNetwork:
    """A conflist in ``directory``: bridge (+ portmap) (+ ``extra_plugins``), IPAM data under ``tmp``."""
    token = secrets.token_hex(3)
    name = f"cf-net-{token}"
    bridge = f"cf-br-{token}"  # 12 characters, under IFNAMSIZ
    subnet = ipaddress.IPv4Network(f"10.250.{next(_subnet_numbers)}.0/24")
    ipam_dir = tmp / "ipam"
    plugins = [
        {
            "type": "bridge",
            "bridge": bridge,
            # The bridge gets the .1 address so the host can reach pods; no
            # routes in IPAM means no default route in the pod, and no ipMasq.
            "isGateway": True,
            "ipam": {"type": "host-local", "ranges": [[{"subnet": str(subnet)}]], "dataDir": str(ipam_dir)},
        },
        *([{"type": "portmap", "capabilities": {"portMappings": True}}] if with_portmap else []),
        *(extra_plugins or []),
    ]
    conflist = directory / f"10-{name}.conflist"
    conflist.write_text(json.dumps({"cniVersion": version, "name": name, "plugins": plugins}))
    return BridgeNetwork(name, bridge, subnet, ipam_dir, conflist)


def remove_network(network: BridgeNetwork) -> None:
    """The conflist, the plugins' iptables rules for the network and the bridge; safe to call twice."""
    network.conflist.unlink(missing_ok=True)
    remove_iptables_rules_of(network.name)
    if link_exists(network.bridge):
        subprocess.run(["ip", "link", "del", network.bridge], capture_output=True, check=False)


def netns_pool_dir(runroot: Path) -> Path:
    """Where a daemon keeps its network namespaces made ahead (crio_fast.network.netns_pool)."""
    return runroot / "netns-pool"


def pool_entries(runroot: Path) -> list[str]:
    """The paths of the namespaces the daemon's pool holds now."""
    directory = netns_pool_dir(runroot)
    return sorted(str(directory / name) for name in os.listdir(directory)) if directory.is_dir() else []


def mounts_outside_pool(runroot: Path) -> list[str]:
    """Mount points under a live daemon's run root, but those of its network namespace pool (its own, kept
    while it runs)."""
    pool = str(netns_pool_dir(runroot))
    with open("/proc/self/mountinfo") as f:
        points = [line.split()[4] for line in f]
    return [p for p in points if p.startswith(str(runroot) + "/") and p != pool and not p.startswith(pool + "/")]


def netns_cookie(path: str) -> int | None:
    """A network namespace's cookie, which, unlike its inode number, no later namespace ever gets."""
    try:
        with socket_in_netns(path, socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            return struct.unpack("Q", sock.getsockopt(socket.SOL_SOCKET, SO_NETNS_COOKIE, 8))[0]
    except OSError:
        return None
