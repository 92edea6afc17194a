"""Pod and container records, one JSON file each, written atomically.

Records live under ``<root>/state/{pods,containers}/<id>.json`` so that they
survive reboots as well as daemon restarts; what only lives as long as the
kernel objects do (pod dirs, exit files, monitor sockets) is under the run
root. A record is rewritten whole on every change; a damaged file hides that
one object and is reported, never the whole state.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Generic, Mapping, TypeVar

from crio_fast.image.store import atomic_write

log = logging.getLogger("crio_fast.state")

POD_READY = "ready"
POD_NOTREADY = "notready"

CTR_CREATED = "created"
CTR_RUNNING = "running"
CTR_EXITED = "exited"
CTR_UNKNOWN = "unknown"


@dataclass
class PodRecord:
    id: str
    name: str  # k8s_<name>_<namespace>_<uid>_<attempt>, unique among pods
    config: str  # the PodSandboxConfig, serialized (base64 protobuf)
    runtime_handler: str
    state: str
    created_at: int  # ns
    pod_dir: str
    cgroup_path: str
    cgroup_created: bool
    monitor_pid: int = 0
    namespaces: dict[str, str] = field(default_factory=dict)  # net/ipc/uts -> "new" | "host"
    ns_paths: dict[str, str] = field(default_factory=dict)
    log_directory: str = ""
    ips: list[str] = field(default_factory=list)  # from the CNI result, IPv4 first


@dataclass
class ContainerRecord:
    id: str
    pod_id: str
    name: str  # k8s_<ctr>_<pod>_<namespace>_<uid>_<attempt>
    config: str  # the ContainerConfig, serialized (base64 protobuf)
    image_id: str
    image_ref: str  # the name the image was asked for
    state: str
    created_at: int
    started_at: int = 0
    finished_at: int = 0
    exit_code: int = 0
    reason: str = ""
    message: str = ""
    pid: int = 0
    log_path: str = ""
    bundle: str = ""
    cgroup_path: str = ""
    stop_signal: int = 15
    mounts: list[dict[str, Any]] = field(default_factory=list)
    # What an exec into the container runs as: env, uid, gid, gids, capability masks, no_new_privs.
    process: dict[str, Any] = field(default_factory=dict)


R = TypeVar("R", PodRecord, ContainerRecord)


class RecordTable(Generic[R]):
    """An in-memory table of records backed by one file per record."""

    def __init__(self, directory: Path, kind: type[R]) -> None:
        self.directory = directory
        self.kind = kind
        self.directory.mkdir(parents=True, exist_ok=True)
        self._lock = threading.RLock()
        self._items: dict[str, R] = {}
        names = {f.name for f in fields(kind)}
        for entry in sorted(os.scandir(directory), key=lambda e: e.name):
            if not entry.name.endswith(".json") or entry.name.startswith("."):
                if entry.name.endswith(".tmp"):
                    os.unlink(entry.path)  # a write the daemon died in
                continue
            try:
                raw = json.loads(Path(entry.path).read_bytes())
                record = kind(**{k: v for k, v in raw.items() if k in names})
            except (OSError, ValueError, TypeError) as exc:
                log.error("ignoring damaged record %s: %s", entry.path, exc)
                continue
            self._items[record.id] = record

    def save(self, record: R) -> None:
        with self._lock:
            # No fsync: pods do not outlive a machine crash, and a daemon crash
            # cannot lose what the page cache holds. The rename keeps it atomic.
            atomic_write(
                self.directory / f"{record.id}.json", json.dumps(asdict(record), sort_keys=True).encode(), durable=False
            )
            self._items[record.id] = record

    def delete(self, record_id: str) -> None:
        with self._lock:
            try:
                os.unlink(self.directory / f"{record_id}.json")
            except FileNotFoundError:
                pass
            self._items.pop(record_id, None)

    def get(self, record_id: str) -> R | None:
        return self._items.get(record_id)

    def values(self) -> list[R]:
        with self._lock:
            return list(self._items.values())

    def find(self, id_or_prefix: str) -> R | None:
        """By full ID or a unique prefix, as crictl users type them."""
        item = self._items.get(id_or_prefix)
        if item is not None or not id_or_prefix:
            return item
        matches = [r for key, r in list(self._items.items()) if key.startswith(id_or_prefix)]
        return matches[0] if len(matches) == 1 else None


def labels_match(labels: Mapping[str, str], selector: Mapping[str, str]) -> bool:
    """CRI label selectors: every selector key present with an equal value."""
    return all(labels.get(key) == value for key, value in selector.items())


class StateStore:
    def __init__(self, root: str) -> None:
        base = Path(root) / "state"
        self.pods: RecordTable[PodRecord] = RecordTable(base / "pods", PodRecord)
        self.containers: RecordTable[ContainerRecord] = RecordTable(base / "containers", ContainerRecord)
