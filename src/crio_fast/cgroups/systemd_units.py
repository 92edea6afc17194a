"""systemd's side of the systemd cgroup driver: unit names, slice paths, unit properties, and the
D-Bus calls that make and stop transient units.

systemd owns the cgroup tree under this driver: a pod is a slice (the kubelet's
``kubepods-burstable-pod<uid>.slice``), each container and each pod monitor a
transient scope in it. A scope is made around a process that exists
(``StartTransientUnit`` with ``PIDs``), so the caller passes the pid of the
process to place; systemd moves it into the scope's new cgroup.

The connection is one dbus-fast ``MessageBus`` (asyncio) on a thread of its
own, so callers in any thread (the daemon's gRPC workers, recovery at start,
tests) block on a future instead of sharing the daemon's event loop. A job's
end is the manager's ``JobRemoved`` signal, matched before the first call so
none is missed, even one that arrives before the call's reply.
"""

from __future__ import annotations

import asyncio
import collections
import os
import re
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

from crio_fast.cgroups.errors import CgroupError, CgroupValidationError
from crio_fast.errors import shown

SYSTEMD_BUS_NAME = "org.freedesktop.systemd1"
SYSTEMD_PATH = "/org/freedesktop/systemd1"
MANAGER_INTERFACE = "org.freedesktop.systemd1.Manager"
UNIT_EXISTS = "org.freedesktop.systemd1.UnitExists"
UNIT_MASKED = "org.freedesktop.systemd1.UnitMasked"
JOB_DEPENDENCY_FAILED = "dependency"  # a job's result: a unit it needs (a scope's slice) did not start
NO_SUCH_UNIT = "org.freedesktop.systemd1.NoSuchUnit"
JOB_REMOVED_MATCH = (f"type='signal',sender='{SYSTEMD_BUS_NAME}',path='{SYSTEMD_PATH}',"
                     f"interface='{MANAGER_INTERFACE}',member='JobRemoved'")
# A call and the job it queues (making a scope, stopping one) take milliseconds; a systemd busy
# with a boot or a reload, seconds.
CALL_TIMEOUT_SECONDS = 30.0
# "infinity" of a uint64 unit property (MemoryMax, TasksMax, ...).
UNLIMITED = 2**64 - 1
# systemd applies a CPU quota in steps of 10 ms per second (it rounds CPUQuotaPerSecUSec up); the
# exact value is then written to cpu.max as well.
CPU_QUOTA_STEP_USEC = 10_000
ROOT_SLICE = "-.slice"

_UNIT_CHARS = re.compile(r"[A-Za-z0-9:_.\\-]+")
# How many ended jobs to remember whose caller has not asked yet (other clients' jobs end too).
_ENDED_JOBS_KEPT = 512

T = TypeVar("T")


class SystemdError(CgroupError):
    """A call to systemd failed; ``name`` is the D-Bus error's name when systemd answered with one."""

    def __init__(self, message: str, name: str = "") -> None:
        super().__init__(message)
        self.name = name


# -- names and paths (no side effects) -------------------------------------------


def check_unit_name(name: str, suffix: str) -> None:
    """Raise CgroupValidationError unless ``name`` is a valid unit name ending in ``suffix``."""
    stem = name[: -len(suffix)] if name.endswith(suffix) else ""
    if not stem or len(name) > 255 or not _UNIT_CHARS.fullmatch(stem):
        raise CgroupValidationError(f"{shown(name)} is not a valid systemd {suffix[1:]} name")


def slice_path(name: str) -> str:
    """The cgroup path of slice ``name``, as systemd lays slices out: every "-" is a level
    (``a-b-c.slice`` is ``/a.slice/a-b.slice/a-b-c.slice``; ``-.slice`` is the root)."""
    if name == ROOT_SLICE:
        return "/"
    check_unit_name(name, ".slice")
    stem = name[: -len(".slice")]
    parts = stem.split("-")
    if any(not part for part in parts):  # leading, trailing or doubled dash
        raise CgroupValidationError(f"{shown(name)} is not a valid systemd slice name (an empty level between dashes)")
    return "".join("/" + "-".join(parts[: i + 1]) + ".slice" for i in range(len(parts)))


def unit_of(path: str) -> str | None:
    """The unit a cgroup path belongs to when it is a slice's or scope's own cgroup, else None."""
    name = path.rstrip("/").rsplit("/", 1)[-1]
    return name if name.endswith((".slice", ".scope")) else None


def parent_slice(path: str) -> str:
    """The slice a unit at cgroup ``path`` sits in (``-.slice`` at the top)."""
    parent = os.path.dirname(path.rstrip("/"))
    return unit_of(parent) or ROOT_SLICE


# -- unit properties from control-file writes ------------------------------------


def _u64(value: str) -> int:
    return UNLIMITED if value == "max" else int(value)


def _cpu_mask(cpus: str) -> bytes:
    """A cpuset list ("0-3,8") as systemd's AllowedCPUs/AllowedMemoryNodes byte mask (bit i of
    byte i // 8 is CPU i)."""
    mask = bytearray()
    for item in filter(None, cpus.split(",")):
        first, _, last = item.partition("-")
        for cpu in range(int(first), int(last or first) + 1):
            while len(mask) <= cpu // 8:
                mask.append(0)
            mask[cpu // 8] |= 1 << (cpu % 8)
    return bytes(mask)


def _cpu_max(value: str) -> list[tuple[str, str, Any]]:
    quota, _, period = value.partition(" ")
    properties: list[tuple[str, str, Any]] = []
    if period:
        properties.append(("CPUQuotaPeriodUSec", "t", int(period)))
    if quota == "max":
        properties.append(("CPUQuotaPerSecUSec", "t", UNLIMITED))
    else:
        per_second = int(quota) * 1_000_000 // int(period or 100_000)
        per_second = -(-per_second // CPU_QUOTA_STEP_USEC) * CPU_QUOTA_STEP_USEC
        properties.append(("CPUQuotaPerSecUSec", "t", per_second))
    return properties


# cgroup v2 file -> how its value becomes unit properties (name, D-Bus signature, value).
_PROPERTY_OF_FILE = {
    "memory.max": lambda v: [("MemoryMax", "t", _u64(v))],
    "memory.high": lambda v: [("MemoryHigh", "t", _u64(v))],
    "memory.low": lambda v: [("MemoryLow", "t", _u64(v))],
    "memory.min": lambda v: [("MemoryMin", "t", _u64(v))],
    "memory.swap.max": lambda v: [("MemorySwapMax", "t", _u64(v))],
    "cpu.weight": lambda v: [("CPUWeight", "t", int(v))],
    "cpu.max": _cpu_max,
    "pids.max": lambda v: [("TasksMax", "t", _u64(v))],
    "cpuset.cpus": lambda v: [("AllowedCPUs", "ay", _cpu_mask(v))],
    "cpuset.mems": lambda v: [("AllowedMemoryNodes", "ay", _cpu_mask(v))],
}


def unit_properties(writes: list[tuple[str, str]]) -> list[tuple[str, str, Any]]:
    """The unit properties that say what ``writes`` (control-file path, value) set, for the files
    systemd owns: systemd writes its own idea of those whenever it re-applies a unit (a
    ``daemon-reload``), so a limit only written to the file would be lost. Files systemd does not
    manage (hugetlb, memory.oom.group, ...) have no property; they are written directly, and
    Delegate=yes leaves them alone."""
    properties: dict[str, tuple[str, str, Any]] = {}
    for path, value in writes:
        convert = _PROPERTY_OF_FILE.get(os.path.basename(path))
        if convert is not None:
            for name, signature, converted in convert(value.strip()):
                properties[name] = (name, signature, converted)  # the last write of a file wins
    return list(properties.values())


SCOPE_COLLECT_MODE = "inactive-or-failed"


def oci_scope_annotations() -> dict[str, str]:
    """What runc and crun, making a container's scope themselves, are told to set on it (their
    ``org.systemd.property.NAME`` annotations, values in GVariant text form): the scope properties
    that are ours to choose."""
    return {"org.systemd.property.CollectMode": f"'{SCOPE_COLLECT_MODE}'"}


def scope_properties(slice_name: str, pid: int, description: str, delegate: bool,
                     limits: list[tuple[str, str, Any]] = ()) -> list[tuple[str, str, Any]]:
    """What a transient scope is made with: its slice, the process it starts around, and no default
    dependencies (it must not be stopped with the daemon's own unit, nor wait for the boot)."""
    properties: list[tuple[str, str, Any]] = [
        ("Description", "s", description),
        ("Slice", "s", slice_name),
        ("PIDs", "au", [pid]),
        ("DefaultDependencies", "b", False),
        # A scope whose processes were OOM-killed ends "failed"; it is collected all the same.
        ("CollectMode", "s", SCOPE_COLLECT_MODE),
    ]
    if delegate:
        properties.append(("Delegate", "b", True))
    properties.extend(limits)
    return properties


# -- the bus -----------------------------------------------------------------------


class SystemdBus:
    """A connection to systemd over the system bus, usable from any thread.

    Each method blocks until systemd has answered and, for a job, until the job ended.
    """

    def __init__(self, address: str | None = None, timeout: float = CALL_TIMEOUT_SECONDS) -> None:
        from dbus_fast import BusType  # imported with the driver only: cgroupfs nodes never load it
        self._bus_type = BusType.SYSTEM
        self._address = address
        self._timeout = timeout
        self._bus: Any = None
        self._waiting: dict[str, asyncio.Future[str]] = {}
        self._ended: collections.OrderedDict[str, str] = collections.OrderedDict()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="systemd-bus", daemon=True)
        self._thread.start()
        try:
            self._run(self._connect(), "connect to systemd")
        except BaseException:
            self.close()
            raise

    # ---- blocking API

    def start_transient_unit(self, name: str, properties: list[tuple[str, str, Any]]) -> None:
        """Make and start a transient unit; SystemdError with ``name`` UnitExists when it is loaded."""
        self._run(self._job("StartTransientUnit", "ssa(sv)a(sa(sv))",
                            [name, "fail", _variants(properties), []], name), f"start {name}")

    def stop_unit(self, name: str) -> bool:
        """Stop a unit and wait for it; False when no such unit is loaded (it is gone already)."""
        try:
            self._run(self._job("StopUnit", "ss", [name, "replace"], name), f"stop {name}")
        except SystemdError as exc:
            if exc.name == NO_SUCH_UNIT:
                return False
            raise
        return True

    def set_unit_properties(self, name: str, properties: list[tuple[str, str, Any]]) -> None:
        """Change properties of a running unit (runtime only: nothing is written under /etc)."""
        if properties:
            self._run(self._manager_call("SetUnitProperties", "sba(sv)", [name, True, _variants(properties)]),
                      f"set properties of {name}")

    def unit_loaded(self, name: str) -> bool:
        """Whether systemd has ``name`` loaded (a running slice or scope is)."""
        try:
            self._run(self._manager_call("GetUnit", "s", [name]), f"look up {name}")
        except SystemdError as exc:
            if exc.name == NO_SUCH_UNIT:
                return False
            raise
        return True

    def close(self) -> None:
        if self._loop.is_closed():
            return
        if self._bus is not None and self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._bus.disconnect)
        if self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=5)
        if not self._thread.is_alive():
            self._loop.close()

    # ---- on the bus thread

    def _run(self, coroutine: Coroutine[Any, Any, T], what: str) -> T:
        future = asyncio.run_coroutine_threadsafe(coroutine, self._loop)
        try:
            return future.result(self._timeout)
        except TimeoutError:
            future.cancel()
            raise SystemdError(f"systemd did not {what} within {self._timeout:g}s") from None
        except OSError as exc:
            raise SystemdError(f"cannot {what}: {exc}") from exc

    async def _connect(self) -> None:
        from dbus_fast.aio import MessageBus

        bus = MessageBus(bus_address=self._address, bus_type=self._bus_type)
        try:
            await bus.connect()
        except (OSError, Exception) as exc:  # dbus-fast raises its own errors for a failed handshake
            raise SystemdError(f"cannot connect to the system bus ({self._address or 'the default socket'}): "
                               f"{exc}; the systemd cgroup driver needs D-Bus (the dbus package)") from exc
        bus.add_message_handler(self._on_message)
        self._bus = bus
        await self._call("org.freedesktop.DBus", "/org/freedesktop/DBus", "org.freedesktop.DBus", "AddMatch", "s",
                         [JOB_REMOVED_MATCH])
        # systemd sends JobRemoved only while some client is subscribed.
        await self._manager_call("Subscribe", "", [])

    async def _ensure_connected(self) -> None:
        if self._bus is None or not self._bus.connected:
            self._bus = None
            await self._connect()

    async def _manager_call(self, member: str, signature: str, body: list[Any]) -> Any:
        await self._ensure_connected()
        return await self._call(SYSTEMD_BUS_NAME, SYSTEMD_PATH, MANAGER_INTERFACE, member, signature, body)

    async def _call(self, destination: str, path: str, interface: str, member: str, signature: str,
                    body: list[Any]) -> Any:
        from dbus_fast import Message, MessageType

        reply = await self._bus.call(Message(destination=destination, path=path, interface=interface, member=member,
                                             signature=signature, body=body))
        if reply.message_type == MessageType.ERROR:
            detail = reply.body[0] if reply.body and isinstance(reply.body[0], str) else reply.error_name
            raise SystemdError(f"{member}: {detail}", reply.error_name or "")
        return reply.body[0] if len(reply.body) == 1 else reply.body

    async def _job(self, member: str, signature: str, body: list[Any], unit: str) -> None:
        job = await self._manager_call(member, signature, body)
        result = self._ended.pop(job, None)
        if result is None:
            waiter = self._loop.create_future()
            self._waiting[job] = waiter
            try:
                result = await waiter
            finally:
                self._waiting.pop(job, None)
        if result != "done":
            raise SystemdError(f"{member} {unit}: the job ended {result!r}; see journalctl -u {unit}", result)

    def _on_message(self, message: Any) -> None:
        if message.member != "JobRemoved" or message.interface != MANAGER_INTERFACE or len(message.body) != 4:
            return
        _, job, _, result = message.body
        waiter = self._waiting.get(job)
        if waiter is not None and not waiter.done():
            waiter.set_result(result)
            return
        self._ended[job] = result  # its caller has not seen the reply yet
        while len(self._ended) > _ENDED_JOBS_KEPT:
            self._ended.popitem(last=False)


def _variants(properties: list[tuple[str, str, Any]]) -> list[list[Any]]:
    from dbus_fast import Variant

    return [[name, Variant(signature, value)] for name, signature, value in properties]
