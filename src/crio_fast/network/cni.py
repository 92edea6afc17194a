"""A CNI client: run a network's plugins with the CNI protocol.

The protocol (CNI spec 0.4.0 and 1.x): each plugin of a conflist is an
executable found by its ``type`` in the plugin directories, run with the
``CNI_*`` variables in its environment and its own configuration on stdin.
ADD runs the plugins in order, each getting the previous one's result as
``prevResult``; DEL runs them in reverse with the result ADD produced; CHECK
(0.4.0 and later) like ADD with that result; STATUS and GC (1.1.0 and later)
once per network. A plugin that fails prints an error object
(``code``/``msg``/``details``) and exits non-zero.

The result of every ADD is cached as a file under ``<runroot>/cni/results``
together with the configuration and arguments it was made with, so that a DEL
after a daemon restart, or after the configuration changed, undoes exactly
what was done. The entry is written before the first plugin runs, without a
result (pending), so that what an ADD cut short by a crash or a failure did is
undone by a DEL with that same configuration.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping

from crio_fast.crashpoints import crash_point
from crio_fast.errors import CrioError, DeadlineExceeded, FailedPrecondition
from crio_fast.files import atomic_write
from crio_fast.network.config import NetworkConfigFile

log = logging.getLogger("crio_fast.network")

DEFAULT_IFNAME = "eth0"
CACHE_KIND = "crio-fast/cni-result/v1"
# Keys a conflist sets once for all its plugins, copied into each plugin's config.
_INHERITED_KEYS = ("cniVersion", "name")
_UNSAFE_FILE_CHARS = re.compile(r"[^A-Za-z0-9_.-]")


class CniError(CrioError):
    """A CNI plugin failed; the message names the plugin and the operation."""

    def __init__(self, message: str, *, plugin: str = "", cni_code: int = 0, details: str = "") -> None:
        super().__init__(message)
        self.plugin = plugin
        self.cni_code = cni_code
        self.details = details


def version_tuple(version: str) -> tuple[int, ...]:
    """``"0.4.0"`` → ``(0, 4, 0)``; an empty or malformed version counts as 0.1.0 (the spec's default)."""
    try:
        parts = tuple(int(p) for p in version.split("."))
    except ValueError:
        return (0, 1, 0)
    return parts if parts else (0, 1, 0)


@dataclass(frozen=True)
class NetworkList:
    """A network as a list of plugin configurations, whether it came from a .conflist or a single .conf."""

    name: str
    cni_version: str
    plugins: tuple[dict[str, Any], ...]
    disable_check: bool = False
    disable_gc: bool = False
    source: str = ""

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: str = "") -> "NetworkList":
        name = data.get("name")
        if not isinstance(name, str) or not name:
            raise FailedPrecondition(f"CNI network {source}: missing name")
        version = str(data.get("cniVersion", ""))
        if "plugins" in data:
            plugins = data["plugins"]
            if not isinstance(plugins, list) or not plugins or not all(isinstance(p, dict) for p in plugins):
                raise FailedPrecondition(f"CNI network {name!r}: 'plugins' must be a non-empty list of objects")
        else:
            # A single-plugin .conf is a list of one (the plugin sees its own keys as they are).
            plugins = [dict(data)]
        for index, plugin in enumerate(plugins):
            if not isinstance(plugin.get("type"), str) or not plugin["type"]:
                raise FailedPrecondition(f"CNI network {name!r}: plugin {index} has no 'type'")
        return cls(
            name=name,
            cni_version=version,
            plugins=tuple(dict(p) for p in plugins),
            disable_check=bool(data.get("disableCheck", False)),
            disable_gc=bool(data.get("disableGC", False)),
            source=source,
        )

    @classmethod
    def from_config_file(cls, config: NetworkConfigFile) -> "NetworkList":
        return cls.from_dict(config.raw, str(config.path))

    def to_dict(self) -> dict[str, Any]:
        return {
            "cniVersion": self.cni_version,
            "name": self.name,
            "disableCheck": self.disable_check,
            "disableGC": self.disable_gc,
            "plugins": list(self.plugins),
        }

    @property
    def version(self) -> tuple[int, ...]:
        return version_tuple(self.cni_version)

    def capabilities(self) -> set[str]:
        """Capability names any plugin of the list declares (``"capabilities": {"portMappings": true}``)."""
        caps: set[str] = set()
        for plugin in self.plugins:
            declared = plugin.get("capabilities")
            if isinstance(declared, dict):
                caps.update(name for name, enabled in declared.items() if enabled)
        return caps


@dataclass(frozen=True)
class Attachment:
    """One pod's interface on one network: what CNI_CONTAINERID/CNI_IFNAME/CNI_ARGS say."""

    container_id: str
    netns: str
    pod_name: str = ""
    pod_namespace: str = ""
    pod_uid: str = ""
    ifname: str = DEFAULT_IFNAME

    def cni_args(self) -> str:
        # IgnoreUnknown lets plugins that do not know the K8S_* keys accept them, as libcni's callers do.
        pairs = [
            ("IgnoreUnknown", "1"),
            ("K8S_POD_NAMESPACE", self.pod_namespace),
            ("K8S_POD_NAME", self.pod_name),
            ("K8S_POD_INFRA_CONTAINER_ID", self.container_id),
            ("K8S_POD_UID", self.pod_uid),
        ]
        return ";".join(f"{key}={value}" for key, value in pairs)


@dataclass
class PluginCall:
    """Timing of one plugin process, for logs and benchmarks."""

    plugin: str
    command: str
    seconds: float


@dataclass
class AttachResult:
    network: str
    result: dict[str, Any]
    calls: list[PluginCall] = field(default_factory=list)
    seconds: float = 0.0  # the whole operation, plugin processes included

    @property
    def plugin_seconds(self) -> float:
        return sum(call.seconds for call in self.calls)

    def ips(self) -> list[str]:
        return result_ips(self.result)


def result_ips(result: Mapping[str, Any]) -> list[str]:
    """The addresses (without prefix length) a CNI result assigns, IPv4 first."""
    addresses: list[str] = []
    for entry in result.get("ips") or []:
        if isinstance(entry, dict) and isinstance(entry.get("address"), str):
            addresses.append(entry["address"].split("/", 1)[0])
    # Results before 0.3.0 name the two families separately.
    for key in ("ip4", "ip6"):
        entry = result.get(key)
        if isinstance(entry, dict) and isinstance(entry.get("ip"), str):
            addresses.append(entry["ip"].split("/", 1)[0])
    return sorted(dict.fromkeys(addresses), key=lambda address: ":" in address)


class CniClient:
    """Runs CNI operations; stateless apart from the result cache directory."""

    def __init__(self, plugin_dirs: Iterable[str], timeout: float, cache_dir: str | os.PathLike[str]) -> None:
        self.plugin_dirs = [str(d) for d in plugin_dirs]
        self.timeout = timeout
        self.results_dir = Path(cache_dir) / "results"

    # -- plugins -----------------------------------------------------------------

    def find_plugin(self, plugin_type: str) -> str:
        if "/" in plugin_type or plugin_type in ("", ".", ".."):
            raise FailedPrecondition(f"CNI plugin type {plugin_type!r} is not a plain name")
        for directory in self.plugin_dirs:
            candidate = os.path.join(directory, plugin_type)
            if os.path.isfile(candidate) and os.access(candidate, os.X_OK):
                return candidate
        raise FailedPrecondition(
            f"CNI plugin {plugin_type!r} not found in {', '.join(self.plugin_dirs) or 'no plugin directory'}"
        )

    def _exec(
        self, plugin_type: str, command: str, stdin: dict[str, Any], attachment: Attachment | None,
        calls: list[PluginCall],
    ) -> dict[str, Any]:
        path = self.find_plugin(plugin_type)
        env = dict(os.environ)
        env.update(CNI_COMMAND=command, CNI_PATH=os.pathsep.join(self.plugin_dirs))
        if attachment is not None:
            env.update(
                CNI_CONTAINERID=attachment.container_id,
                CNI_NETNS=attachment.netns,
                CNI_IFNAME=attachment.ifname,
                CNI_ARGS=attachment.cni_args(),
            )
        started = time.monotonic()
        try:
            proc = subprocess.run(
                [path], input=json.dumps(stdin).encode(), env=env, capture_output=True, timeout=self.timeout,
                check=False, close_fds=True,
            )
        except subprocess.TimeoutExpired:
            raise DeadlineExceeded(
                f"CNI plugin {plugin_type} ({command}) did not finish within {self.timeout:g}s and was killed"
            ) from None
        except OSError as exc:
            raise CniError(f"CNI plugin {plugin_type} ({command}): cannot run {path}: {exc.strerror}",
                           plugin=plugin_type) from None
        finally:
            calls.append(PluginCall(plugin_type, command, time.monotonic() - started))
        if proc.returncode != 0:
            raise plugin_failure(plugin_type, command, proc.returncode, proc.stdout, proc.stderr)
        if command not in ("ADD", "VERSION") or not proc.stdout.strip():
            return {}
        try:
            result = json.loads(proc.stdout)
        except ValueError as exc:
            raise CniError(f"CNI plugin {plugin_type} ({command}) printed a result that is not JSON: {exc}",
                           plugin=plugin_type) from None
        if not isinstance(result, dict):
            raise CniError(f"CNI plugin {plugin_type} ({command}) printed a result that is not an object",
                           plugin=plugin_type)
        return result

    @staticmethod
    def plugin_config(
        network: NetworkList, plugin: Mapping[str, Any], prev_result: Mapping[str, Any] | None,
        capability_args: Mapping[str, Any],
    ) -> dict[str, Any]:
        """What one plugin reads on stdin: its own keys plus the list's name/version, prevResult, runtimeConfig."""
        config = dict(plugin)
        config["name"] = network.name
        config["cniVersion"] = network.cni_version
        if prev_result is not None:
            config["prevResult"] = prev_result
        else:
            config.pop("prevResult", None)
        declared = plugin.get("capabilities")
        if isinstance(declared, dict):
            runtime_config = dict(config.get("runtimeConfig") or {})
            for name, enabled in declared.items():
                if enabled and name in capability_args:
                    runtime_config[name] = capability_args[name]
            if runtime_config:
                config["runtimeConfig"] = runtime_config
        return config

    # -- operations --------------------------------------------------------------

    def add(
        self, network: NetworkList, attachment: Attachment, capability_args: Mapping[str, Any], *, cache: bool = True
    ) -> AttachResult:
        """ADD through the whole list; the result is cached (unless ``cache`` is false) before returning.

        The cache entry is written first, pending (no result), and stays when a plugin fails: the
        caller is expected to call :meth:`delete` so plugins that did run undo their part.
        """
        started = time.monotonic()
        calls: list[PluginCall] = []
        result: dict[str, Any] | None = None
        if cache:
            self._write_cache(network, attachment, capability_args, None)
        crash_point("runpod", 7)
        for plugin in network.plugins:
            stdin = self.plugin_config(network, plugin, result, capability_args)
            result = self._exec(plugin["type"], "ADD", stdin, attachment, calls)
            crash_point("runpod", 8)
        final = result or {}
        if cache:
            self._write_cache(network, attachment, capability_args, final)
        return AttachResult(network.name, final, calls, time.monotonic() - started)

    def delete(
        self, attachment: Attachment, network: NetworkList | None = None,
        capability_args: Mapping[str, Any] | None = None,
    ) -> AttachResult | None:
        """DEL through the list in reverse, with the cached configuration and result when there is one.

        Without a cache entry the given network is used; with neither there is
        nothing to undo and None is returned. A pending entry (an ADD cut short)
        gives the configuration and no result. The cache entry is removed only
        once every plugin succeeded, so a failed DEL can be retried.
        """
        started = time.monotonic()
        cached = self._read_cache(attachment)
        prev_result: dict[str, Any] | None = None
        if cached is not None:
            network = NetworkList.from_dict(cached["config"], "cache")
            capability_args = cached.get("capabilityArgs") or {}
            prev_result = cached.get("result")
            attachment = Attachment(
                container_id=attachment.container_id, netns=attachment.netns, ifname=attachment.ifname,
                **{key: cached.get("args", {}).get(key, getattr(attachment, key))
                   for key in ("pod_name", "pod_namespace", "pod_uid")},
            )
        if network is None:
            return None
        calls: list[PluginCall] = []
        for plugin in reversed(network.plugins):
            stdin = self.plugin_config(network, plugin, prev_result, capability_args or {})
            self._exec(plugin["type"], "DEL", stdin, attachment, calls)
            crash_point("stoppod", 2)
        self._remove_cache(attachment)
        return AttachResult(network.name, prev_result or {}, calls, time.monotonic() - started)

    def check(self, attachment: Attachment) -> None:
        """CHECK an attachment against its cached ADD result (0.4.0 and later; a no-op before or when disabled)."""
        cached = self._read_cache(attachment)
        if cached is None or cached.get("result") is None:
            raise FailedPrecondition(f"no cached CNI result for {attachment.container_id}/{attachment.ifname}")
        network = NetworkList.from_dict(cached["config"], "cache")
        if network.version < (0, 4, 0) or network.disable_check:
            return
        calls: list[PluginCall] = []
        for plugin in network.plugins:
            stdin = self.plugin_config(network, plugin, cached.get("result"), cached.get("capabilityArgs") or {})
            self._exec(plugin["type"], "CHECK", stdin, attachment, calls)

    def status(self, network: NetworkList) -> None:
        """STATUS (1.1.0 and later): raises when a plugin says the network cannot take new attachments."""
        if network.version < (1, 1, 0):
            return
        calls: list[PluginCall] = []
        for plugin in network.plugins:
            self._exec(plugin["type"], "STATUS", self.plugin_config(network, plugin, None, {}), None, calls)

    def gc(self, network: NetworkList, valid: Iterable[Attachment]) -> None:
        """GC (1.1.0 and later): plugins drop whatever belongs to attachments not in ``valid``."""
        if network.version < (1, 1, 0) or network.disable_gc:
            return
        attachments = [{"containerID": a.container_id, "ifname": a.ifname} for a in valid]
        calls: list[PluginCall] = []
        for plugin in network.plugins:
            config = self.plugin_config(network, plugin, None, {})
            config["cni.dev/valid-attachments"] = attachments
            self._exec(plugin["type"], "GC", config, None, calls)

    # -- result cache -------------------------------------------------------------

    def _cache_path(self, container_id: str, ifname: str) -> Path:
        # One attachment per pod and interface: the network name is inside the file.
        return self.results_dir / _UNSAFE_FILE_CHARS.sub("_", f"{container_id}-{ifname}")

    def _write_cache(
        self, network: NetworkList, attachment: Attachment, capability_args: Mapping[str, Any],
        result: Mapping[str, Any] | None,
    ) -> None:
        """The entry DEL reads; ``result`` None: pending, the ADD has not finished."""
        entry = {
            "kind": CACHE_KIND,
            "containerId": attachment.container_id,
            "ifName": attachment.ifname,
            "networkName": network.name,
            "config": network.to_dict(),
            "capabilityArgs": dict(capability_args),
            "args": {"pod_name": attachment.pod_name, "pod_namespace": attachment.pod_namespace,
                     "pod_uid": attachment.pod_uid},
            "result": dict(result) if result is not None else None,
        }
        self.results_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        atomic_write(self._cache_path(attachment.container_id, attachment.ifname),
                     json.dumps(entry).encode(), durable=False)

    def _read_cache(self, attachment: Attachment) -> dict[str, Any] | None:
        path = self._cache_path(attachment.container_id, attachment.ifname)
        try:
            entry = json.loads(path.read_bytes())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            log.warning("ignoring unreadable CNI result cache %s: %s", path, exc)
            return None
        if not isinstance(entry, dict) or entry.get("kind") != CACHE_KIND or not isinstance(entry.get("config"), dict):
            log.warning("ignoring CNI result cache %s of an unknown form", path)
            return None
        return entry

    def cached_result(self, attachment: Attachment) -> dict[str, Any] | None:
        entry = self._read_cache(attachment)
        return entry.get("result") if entry is not None else None

    def cached_attachments(self) -> list[tuple[str, str]]:
        """(container ID, interface) of every cache entry: the attachments no DEL has undone yet."""
        found = []
        try:
            names = os.listdir(self.results_dir)
        except FileNotFoundError:
            return []
        for name in names:
            if name.startswith("."):
                continue  # a write in progress, or one a crash cut short
            try:
                entry = json.loads((self.results_dir / name).read_bytes())
            except (OSError, ValueError):
                continue
            if isinstance(entry, dict) and entry.get("kind") == CACHE_KIND:
                found.append((str(entry.get("containerId", "")), str(entry.get("ifName", DEFAULT_IFNAME))))
        return found

    def discard_partial_writes(self) -> None:
        """Remove the temporary files of cache writes a crash cut short. Only while no ADD or DEL runs (at
        start): the entry each was to replace is there, or the ADD it began ran no plugin."""
        try:
            names = os.listdir(self.results_dir)
        except FileNotFoundError:
            return
        for name in names:
            if name.startswith("."):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(self.results_dir / name)

    def _remove_cache(self, attachment: Attachment) -> None:
        try:
            os.unlink(self._cache_path(attachment.container_id, attachment.ifname))
        except FileNotFoundError:
            pass


def plugin_failure(plugin_type: str, command: str, returncode: int, stdout: bytes, stderr: bytes) -> CniError:
    """The CRI error for a plugin that exited non-zero: its error object's msg and details when it printed one."""
    cni_code, msg, details = 0, "", ""
    try:
        error = json.loads(stdout)
    except ValueError:
        error = None
    if isinstance(error, dict):
        cni_code = error.get("code") if isinstance(error.get("code"), int) else 0
        msg = str(error.get("msg") or "")
        details = str(error.get("details") or "")
    if not msg:
        text = (stderr or stdout).decode(errors="replace").strip()
        msg = text.splitlines()[-1] if text else f"exited with status {returncode}"
    text = f"CNI plugin {plugin_type} failed ({command}): {msg}"
    if details:
        text += f": {details}"
    if cni_code:
        text += f" (CNI error code {cni_code})"
    return CniError(text, plugin=plugin_type, cni_code=cni_code, details=details)
