"""Pod and container records in one SQLite database, each saved atomically.

Records live in ``<root>/state/state.db`` so that they survive reboots as
well as daemon restarts; what only lives as long as the kernel objects do
(pod dirs, exit files, monitor sockets) is under the run root. A record is
rewritten whole on every change, as one JSON row in one transaction. A pod's
or container's record is first saved marked ``creating``, before anything is
made for it: a daemon that dies part-way finds at its next start everything
it had begun (``server/recovery.py`` tears down what was left half made).

Why SQLite and not a file per record: a save is on the start-up path three
times (RunPodSandbox, CreateContainer, StartContainer), and on ext4 creating
a temporary file and renaming it over the old one costs 0.3-0.6 ms, where an
``INSERT OR REPLACE`` into a write-ahead log costs about 60 us. The database
runs in WAL mode with ``synchronous=NORMAL``: a commit survives a daemon crash
at once and a machine crash once checkpointed, and a torn write can only lose
the newest transactions, never mix two records. A row that does not decode
hides that one object and is reported; a database that cannot be opened is
moved aside (``state.db.damaged-<time>``) and the daemon starts empty.
Compiled seccomp programs have a table of their own, one row per distinct
program, named by digest in the records (see SeccompPrograms).
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import os
import sqlite3
import threading
import time
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Callable, Generic, Mapping, TypeVar

from crio_fast.api import api_pb2 as pb
from crio_fast.errors import InvalidArgument

log = logging.getLogger("crio_fast.state")

POD_READY = "ready"
POD_NOTREADY = "notready"

CTR_CREATED = "created"
CTR_RUNNING = "running"
CTR_EXITED = "exited"
CTR_UNKNOWN = "unknown"


# A field kept in memory only: ``list_entry`` holds (state, the message ListPodSandbox or
# ListContainers returns for the record), built once per state; the kubelet lists every second.
NOT_PERSISTED = {"persisted": False}


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
    # Ancestors of the pod cgroup crio-fast made (a cgroup_parent's missing levels), removed with it when empty.
    cgroup_parents_made: list[str] = field(default_factory=list)
    namespaces: dict[str, str] = field(default_factory=dict)  # net/ipc/uts -> "new" | "host"
    ns_paths: dict[str, str] = field(default_factory=dict)
    log_directory: str = ""
    ips: list[str] = field(default_factory=list)  # from the CNI result, IPv4 first
    # Torn down by a StopPodSandbox: network detached, monitor gone, mounts undone. A pod found not
    # ready at start (its monitor died meanwhile) is not, until a stop does it.
    stopped: bool = False
    creating: bool = False  # RunPodSandbox has not finished: a record found so at start is torn down
    list_entry: Any = field(default=None, repr=False, compare=False, metadata=NOT_PERSISTED)


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
    # The images mounted as image volumes, by ID, from the reservation on: RemoveImage refuses them.
    volume_image_ids: list[str] = field(default_factory=list)
    # What an exec into the container runs as: env, uid, gid, gids, capability masks, no_new_privs.
    process: dict[str, Any] = field(default_factory=dict)
    creating: bool = False  # CreateContainer has not finished: a record found so at start is torn down
    list_entry: Any = field(default=None, repr=False, compare=False, metadata=NOT_PERSISTED)


R = TypeVar("R", PodRecord, ContainerRecord)
M = TypeVar("M")


def list_entry(record: PodRecord | ContainerRecord, build: Callable[[], M]) -> M:
    """The record's list entry, built by ``build`` when the record's state has changed since."""
    if record.list_entry is None or record.list_entry[0] != record.state:
        record.list_entry = (record.state, build())
    return record.list_entry[1]


class RecordTable(Generic[R]):
    """An in-memory table of records, each written through to its row in ``table``."""

    def __init__(self, db: "_Database", table: str, kind: type[R]) -> None:
        self.db = db
        self.table = table
        self.kind = kind
        self._lock = threading.RLock()
        self._items: dict[str, R] = {}
        self._field_names = tuple(f.name for f in fields(kind) if f.metadata.get("persisted", True))
        for record_id, body in db.rows(table):
            record = self._decode(record_id, body)
            if record is not None:
                self._items[record.id] = record

    def _decode(self, record_id: str, body: str) -> R | None:
        names = set(self._field_names)
        try:
            raw = json.loads(body)
            return self.kind(**{k: v for k, v in raw.items() if k in names})
        except (ValueError, TypeError, AttributeError) as exc:
            log.error("ignoring damaged %s record %s: %s", self.table, record_id, exc)
            return None

    def encode(self, record: R) -> str:
        # Every field holds JSON types already: a shallow dict is enough (dataclasses.asdict deep-copies,
        # which costs more than the write itself).
        return json.dumps({name: getattr(record, name) for name in self._field_names}, separators=(",", ":"))

    def reserve(self, record: R) -> None:
        """Take the record's name while its object is being made: saved, marked ``creating``, before the
        object's first side effect, so that a daemon dying part-way finds at its next start what it had
        begun (server/recovery.py tears it down). The maker clears ``creating`` in its last save."""
        record.creating = True
        self.save(record)

    def save(self, record: R) -> None:
        body = self.encode(record)
        with self._lock:
            self.db.put(self.table, record.id, body)
            self._items[record.id] = record

    def delete(self, record_id: str) -> None:
        with self._lock:
            self.db.delete(self.table, record_id)
            self._items.pop(record_id, None)

    def get(self, record_id: str) -> R | None:
        return self._items.get(record_id)

    def values(self) -> list[R]:
        with self._lock:
            return list(self._items.values())

    def find(self, id_or_prefix: str) -> R | None:
        """By full ID or a unique prefix, as crictl users type them; None when nothing matches.

        A prefix of several IDs is refused (InvalidArgument): taken for none, a stop or removal of
        it would succeed as for one that is gone while they all stay."""
        item = self._items.get(id_or_prefix)
        if item is not None or not id_or_prefix:
            return item
        matches = [r for key, r in list(self._items.items()) if key.startswith(id_or_prefix)]
        if len(matches) > 1:
            kind = "pod sandbox" if self.table == "pods" else "container"
            raise InvalidArgument(f"{kind} ID prefix {id_or_prefix!r} is ambiguous: it matches {len(matches)} "
                                  f"{kind}s")
        return matches[0] if matches else None


class SeccompPrograms:
    """Compiled seccomp programs, one row each, named by their digest in the records that use them.

    Nearly every container runs the same program (the built-in profile, about 2 KB compiled). Kept
    in each record, it made a container's row five times as large, and the row is written whole on
    every save (two on the start-up path) and held in memory for every container.
    """

    def __init__(self, db: "_Database") -> None:
        self.db = db
        self._lock = threading.Lock()
        self._programs: dict[str, bytes] = {}
        for digest, body in db.rows("seccomp"):
            try:
                self._programs[digest] = base64.b64decode(body, validate=True)
            except ValueError as exc:
                log.error("ignoring damaged seccomp program %s: %s", digest, exc)

    def add(self, program: bytes) -> str:
        """Keep ``program`` (written once per distinct program) and return its digest."""
        digest = hashlib.sha256(program).hexdigest()
        if digest not in self._programs:
            with self._lock:
                if digest not in self._programs:
                    self.db.put("seccomp", digest, base64.b64encode(program).decode())
                    self._programs[digest] = program
        return digest

    def get(self, digest: str) -> bytes | None:
        return self._programs.get(digest)

    def keep_only(self, referenced: set[str]) -> None:
        """Drop the programs no record names any more (at start, before any container is made)."""
        with self._lock:
            for digest in [d for d in self._programs if d not in referenced]:
                self.db.delete("seccomp", digest)
                del self._programs[digest]


def labels_match(labels: Mapping[str, str], selector: Mapping[str, str]) -> bool:
    """CRI label selectors: every selector key present with an equal value."""
    return all(labels.get(key) == value for key, value in selector.items())


def decode_pod_config(data: str) -> pb.PodSandboxConfig:
    """A PodRecord's ``config``: the PodSandboxConfig it was run with."""
    config = pb.PodSandboxConfig()
    config.ParseFromString(base64.b64decode(data))
    return config


def decode_container_config(data: str) -> pb.ContainerConfig:
    """A ContainerRecord's ``config``: the ContainerConfig it was created with."""
    config = pb.ContainerConfig()
    config.ParseFromString(base64.b64decode(data))
    return config


def matches_filter(record: ContainerRecord, id_prefix: str, pod_prefix: str, selector: Mapping[str, str]) -> bool:
    """The CRI container filters shared by ListContainers and the stats calls: ID and
    pod ID prefixes, label selector (empty values match everything)."""
    if id_prefix and not record.id.startswith(id_prefix):
        return False
    if pod_prefix and not record.pod_id.startswith(pod_prefix):
        return False
    return not selector or labels_match(decode_container_config(record.config).labels, selector)


class _Database:
    """The SQLite file behind the record tables: one connection, one writer at a time."""

    TABLES = ("pods", "containers", "seccomp")

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        try:
            self._conn = self._open()
        except sqlite3.DatabaseError as exc:
            aside = path.with_name(f"{path.name}.damaged-{time.strftime('%Y%m%dT%H%M%S')}")
            log.error("state database %s cannot be used (%s); moved to %s, starting without records",
                      path, exc, aside)
            for suffix in ("", "-wal", "-shm"):
                try:
                    os.rename(f"{path}{suffix}", f"{aside}{suffix}")
                except FileNotFoundError:
                    pass
            self._conn = self._open()

    def _open(self) -> sqlite3.Connection:
        # isolation_level=None: no implicit transactions; each put/delete is one statement, so one transaction.
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=30)
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            # Records are read once, at start; the daemon keeps them in memory. A page cache only
            # serves writes, and SQLite's default (up to 2 MiB) would grow with the pod count.
            conn.execute("PRAGMA cache_size=-256")
            for table in self.TABLES:
                conn.execute(f"CREATE TABLE IF NOT EXISTS {table} (id TEXT PRIMARY KEY, record TEXT NOT NULL)")
            conn.execute("PRAGMA quick_check").fetchall()
        except BaseException:
            conn.close()
            raise
        return conn

    def rows(self, table: str) -> list[tuple[str, str]]:
        with self._lock:
            return self._conn.execute(f"SELECT id, record FROM {table} ORDER BY id").fetchall()

    def put(self, table: str, record_id: str, body: str) -> None:
        with self._lock:
            self._conn.execute(f"INSERT OR REPLACE INTO {table} (id, record) VALUES (?, ?)", (record_id, body))

    def delete(self, table: str, record_id: str) -> None:
        with self._lock:
            self._conn.execute(f"DELETE FROM {table} WHERE id = ?", (record_id,))

    def close(self) -> None:
        with self._lock:
            self._conn.close()


class StateStore:
    def __init__(self, root: str) -> None:
        base = Path(root) / "state"
        base.mkdir(parents=True, exist_ok=True)
        self.db = _Database(base / "state.db")
        self.pods: RecordTable[PodRecord] = RecordTable(self.db, "pods", PodRecord)
        self.containers: RecordTable[ContainerRecord] = RecordTable(self.db, "containers", ContainerRecord)
        self.seccomp = SeccompPrograms(self.db)
        self.seccomp.keep_only({c.process["seccomp_digest"] for c in self.containers.values()
                                if c.process.get("seccomp_digest")})

    def close(self) -> None:
        self.db.close()
