"""Finding the default CNI network configuration.

A node's network is ready when network_dir holds a valid configuration: the
one named by ``cni_default_network`` or else the lexically first valid
``.conflist``/``.conf``/``.json`` file, as CRI-O and containerd choose it.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

CONFIG_SUFFIXES = (".conflist", ".conf", ".json")


@dataclass(frozen=True)
class NetworkConfigFile:
    path: Path
    name: str
    cni_version: str
    raw: dict


class NoNetworkConfig(Exception):
    """No usable CNI configuration; the message says why, for NetworkReady's reason."""


def _parse(path: Path) -> NetworkConfigFile:
    try:
        data = json.loads(path.read_bytes())
    except (OSError, ValueError) as exc:
        raise ValueError(f"{path}: {exc}") from exc
    if not isinstance(data, dict):
        raise ValueError(f"{path}: not a JSON object")
    name = data.get("name")
    if not isinstance(name, str) or not name:
        raise ValueError(f"{path}: missing network name")
    if path.suffix == ".conflist":
        plugins = data.get("plugins")
        if not isinstance(plugins, list) or not plugins:
            raise ValueError(f"{path}: a .conflist needs a non-empty 'plugins' list")
    elif not isinstance(data.get("type"), str):
        raise ValueError(f"{path}: a single-plugin .conf needs a 'type'")
    return NetworkConfigFile(path=path, name=name, cni_version=str(data.get("cniVersion", "")), raw=data)


def find_default_network(network_dir: str, default_name: str = "") -> NetworkConfigFile:
    """The network pods join, or NoNetworkConfig explaining what is missing."""
    directory = Path(network_dir)
    try:
        names = sorted(n for n in os.listdir(directory) if n.endswith(CONFIG_SUFFIXES))
    except FileNotFoundError:
        raise NoNetworkConfig(f"CNI configuration directory {directory} does not exist") from None
    except OSError as exc:
        raise NoNetworkConfig(f"cannot read CNI configuration directory {directory}: {exc.strerror}") from None
    problems = []
    for name in names:
        try:
            config = _parse(directory / name)
        except ValueError as exc:
            problems.append(str(exc))
            continue
        if not default_name or config.name == default_name:
            return config
    if default_name:
        raise NoNetworkConfig(f"no CNI network named {default_name!r} in {directory}")
    detail = f" ({'; '.join(problems)})" if problems else ""
    raise NoNetworkConfig(f"no valid CNI configuration in {directory}{detail}")
