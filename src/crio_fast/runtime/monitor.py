"""The daemon's connection to a per-pod monitor (``crio-fast-monitor``).

``PodMonitor`` talks to the monitor's control socket (``monitor.sock`` in the
pod dir, SOCK_SEQPACKET, one request/reply per packet, see docs/monitor.md).
``spawn.spawn_monitor`` starts a monitor; it outlives the daemon, and after a
restart ``PodMonitor.attach`` reconnects through the pod dir. What else the
daemon has of a monitor lives beside this module: the exit files it writes
(``exit_files``) and the exec helper of its binary (``exec_helper``).

All calls are synchronous and thread-safe: a call uses the monitor's idle
connection or, while another call has it, a new one (the lock guards only
that); the daemon calls them from worker threads. ``begin_create`` sends a
CREATE whose reply is read later.
"""

from __future__ import annotations

import contextlib
import errno
import os
import socket
import struct
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

from crio_fast.runtime import fdwait, wire
from crio_fast.runtime.plan import LaunchHead, LaunchPlan
from crio_fast.runtime.wire import TLVWriter

_REQUEST_NAMES = {wire.REQUEST_PING: "PING", wire.REQUEST_CREATE: "CREATE", wire.REQUEST_START: "START",
                  wire.REQUEST_KILL: "KILL", wire.REQUEST_REOPEN_LOG: "REOPEN_LOG", wire.REQUEST_STATE: "STATE",
                  wire.REQUEST_LIST: "LIST", wire.REQUEST_REMOVE: "REMOVE", wire.REQUEST_SHUTDOWN: "SHUTDOWN"}

STATUS_NAMES = {wire.CONTAINER_CREATING: "creating", wire.CONTAINER_CREATED: "created",
                wire.CONTAINER_RUNNING: "running", wire.CONTAINER_EXITED: "exited"}


@dataclass(frozen=True)
class OciRuntimeCall:
    """How the monitor drives an external OCI runtime for one container."""

    runtime_path: str  # the runc/crun binary
    root: str  # its --root state directory
    bundle: str  # the directory holding config.json
    hide_cgroup2_mount: bool = False  # run it with /sys/fs/cgroup/unified unmounted (crun on hybrid hosts)
    # Options before its command (--systemd-cgroup). Its later commands (exec, delete) find what
    # they set in the runtime's own state.
    global_args: tuple[str, ...] = ()


SOCKET_NAME = "monitor.sock"
# Below the default AF_UNIX send buffer (net.core.wmem_default, 208 KiB);
# larger requests raise SO_SNDBUF (up to net.core.wmem_max).
_DEFAULT_SEND_LIMIT = 128 * 1024
PID_FILE_NAME = "monitor.pid"
POD_NAMESPACES = ("net", "ipc", "uts")
# Files under DIR/ns a monitor may pin: the three above, with --pid new the pod's pid namespace, and
# with --userns-*-map the pod's user namespace.
PINNED_NAMESPACES = (*POD_NAMESPACES, "pid", "user")


class MonitorError(Exception):
    """A failure reported by (or about) a pod monitor; `code` is an errno value."""

    def __init__(self, message: str, code: int = errno.EIO) -> None:
        super().__init__(message)
        self.message = message
        self.code = code


class _ConnectionLost(MonitorError):
    """The connection broke or was closed before the reply came."""


@dataclass
class CreateResult:
    pid: int
    warnings: list[str]


@dataclass
class ContainerState:
    id: str
    pid: int
    status: str  # creating | created | running | exited
    created_at: int  # unix ns
    started_at: int  # unix ns, 0 if never started
    finished_at: int | None = None
    exit_code: int | None = None
    signal: int | None = None
    oom_killed: bool = False
    message: str | None = None  # the container init's last error, if any


def _state_from_fields(fields: dict[int, list[bytes]]) -> ContainerState:
    def u32(tag: int, default: int = 0) -> int:
        return wire.decode_u32(fields[tag][0]) if tag in fields else default

    def u64(tag: int, default: int = 0) -> int:
        return wire.decode_u64(fields[tag][0]) if tag in fields else default

    status = STATUS_NAMES.get(u32(wire.FIELD_STATE), "unknown")
    state = ContainerState(
        id=wire.decode_string(fields[wire.FIELD_CONTAINER_ID][0]),
        pid=u32(wire.FIELD_PID),
        status=status,
        created_at=u64(wire.FIELD_CREATED_AT),
        started_at=u64(wire.FIELD_STARTED_AT),
        message=wire.decode_string(fields[wire.FIELD_MESSAGE][0]) if wire.FIELD_MESSAGE in fields else None,
    )
    if status == "exited":
        state.exit_code = wire.decode_i32(fields[wire.FIELD_EXIT_CODE][0])
        state.signal = u32(wire.FIELD_EXIT_SIGNAL)
        state.finished_at = u64(wire.FIELD_FINISHED_AT)
        state.oom_killed = bool(u32(wire.FIELD_OOM_KILLED))
    return state


def parse_reply(name: str, request_type: int, request_id: int, data: bytes) -> dict[int, list[bytes]]:
    """The fields of the reply ``data`` to request ``request_id`` of type ``request_type`` (``name`` for
    messages); raises MonitorError with the monitor's message and errno when it reports a failure."""
    if len(data) < wire.MESSAGE_HEADER_SIZE:
        raise MonitorError(f"{name}: short reply ({len(data)} bytes)", errno.EPROTO)
    header = wire.decode_message_header(data)
    if header != (wire.MONITOR_PROTOCOL, request_type | wire.MESSAGE_REPLY_FLAG, request_id, len(data)):
        raise MonitorError(f"{name}: unexpected reply header {tuple(header)}", errno.EPROTO)
    fields = wire.parse_tlv_by_tag(memoryview(data)[wire.MESSAGE_HEADER_SIZE:])
    status = wire.decode_u32(fields[wire.FIELD_STATUS][0]) if wire.FIELD_STATUS in fields else errno.EPROTO
    if status != 0:
        message = (wire.decode_string(fields[wire.FIELD_MESSAGE][0]) if wire.FIELD_MESSAGE in fields
                   else os.strerror(status))
        raise MonitorError(message, status)
    return fields


class PodMonitor:
    """A connection to one pod's monitor process."""

    def __init__(self, pod_dir: str, pid: int, pidfd: int, features: int = wire.MONITOR_FEATURES) -> None:
        self.pod_dir = pod_dir
        self.pid = pid
        self._pidfd = pidfd
        # The MONITOR_FEATURE_ bits of its PING reply (attach asks); a monitor spawned by this
        # daemon runs this build's binary, which has them all.
        self.features = features
        self._lock = threading.Lock()
        self._socket: socket.socket | None = None
        self._next_id = 0
        self.ns_paths: dict[str, str] = {
            name: os.path.join(pod_dir, "ns", name)
            for name in PINNED_NAMESPACES
            if os.path.exists(os.path.join(pod_dir, "ns", name))
        }

    # ----------------------------------------------------------- life cycle

    @classmethod
    def attach(cls, pod_dir: str) -> "PodMonitor":
        """Reconnect to a running monitor (after a daemon restart)."""
        pid_path = os.path.join(pod_dir, PID_FILE_NAME)
        try:
            pid = int(Path(pid_path).read_text().strip())
        except FileNotFoundError:
            raise MonitorError(f"no pod monitor in {pod_dir} ({pid_path} is missing)", errno.ENOENT) from None
        except ValueError:
            raise MonitorError(f"{pid_path} does not hold a pid", errno.EINVAL) from None
        try:
            pidfd = os.pidfd_open(pid)
        except ProcessLookupError:
            raise MonitorError(f"pod monitor {pid} of {pod_dir} is not running", errno.ESRCH) from None
        monitor = cls(pod_dir, pid, pidfd)
        try:
            reply = monitor._request(wire.REQUEST_PING, TLVWriter())
            reported = wire.decode_u32(reply[wire.FIELD_PID][0])
            if reported != pid:
                raise MonitorError(f"{pid_path} says {pid} but the socket's monitor is {reported}", errno.ESTALE)
            monitor.features = _features_of(reply)
        except BaseException:
            monitor.close()
            raise
        return monitor

    def alive(self) -> bool:
        """Whether the monitor process still runs (its pidfd turns readable when it exits)."""
        if self._pidfd < 0:
            return False
        if not fdwait.wait_readable(self._pidfd, 0):
            return True
        self._reap_if_ours()
        return False

    def shutdown(self, timeout: float = 10.0) -> None:
        """Kill every container, undo the pod's mounts, and wait for the monitor to exit."""
        deadline = time.monotonic() + timeout
        if self.alive():
            try:
                self._request(wire.REQUEST_SHUTDOWN, TLVWriter(), timeout=timeout)
            except (MonitorError, OSError):
                if self.alive():
                    raise
            self._wait_exit(max(0.0, deadline - time.monotonic()))
        self.close()

    def close(self) -> None:
        """Drop the connection (the monitor keeps running)."""
        with self._lock:
            if self._socket is not None:
                self._socket.close()
                self._socket = None
        if self._pidfd >= 0:
            os.close(self._pidfd)
            self._pidfd = -1

    def __enter__(self) -> "PodMonitor":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass

    def _wait_exit(self, timeout: float) -> None:
        if self._pidfd < 0:
            return
        if not fdwait.wait_readable(self._pidfd, timeout):
            raise MonitorError(f"pod monitor {self.pid} did not exit within {timeout:.1f}s", errno.ETIMEDOUT)
        self._reap_if_ours()

    def _reap_if_ours(self) -> None:
        # The monitor is normally reparented to init; when this process is a
        # child subreaper it is ours to reap.
        try:
            os.waitpid(self.pid, os.WNOHANG)
        except ChildProcessError:
            pass

    # ------------------------------------------------------------- requests

    def create(self, container_id: str, plan: LaunchPlan, log_path: str,
               oci: OciRuntimeCall | None = None, meanwhile: Callable[[int | None], None] | None = None,
               log_dir: str | None = None) -> CreateResult:
        """CREATE a container; with ``oci`` the monitor runs ``RUNTIME create`` on the bundle instead of
        carrying out the plan itself (it then uses only the plan's stdio, log and cgroup fields).

        ``meanwhile`` (native plans only) runs once the request is sent, while the monitor's child
        clones, joins the pod's namespaces and mounts the rootfs; the child joins the plan's cgroups
        only after it returns (a pipe passed with the request is the gate), so that is where the
        daemon makes them. It is given the child's pid when the plan's head asks the child to report
        it (``report_pid``: the gate is then a unix socket), else None. If it raises, the child gives up, the reply is awaited and the exception
        propagates. With ``log_dir``, ``log_path`` is relative to it and the monitor opens the file
        beneath it (openat2 RESOLVE_BENEATH), at CREATE and at every reopen_log.
        """
        return self.begin_create(container_id, plan, log_path, oci=oci, meanwhile=meanwhile, log_dir=log_dir).result()

    def begin_create(self, container_id: str, plan: LaunchPlan | LaunchHead, log_path: str,
                     oci: OciRuntimeCall | None = None,
                     meanwhile: Callable[[int | None], None] | None = None,
                     rest: Callable[[], Iterable[bytes]] | None = None,
                     log_dir: str | None = None) -> "PendingCreate":
        """``create`` without waiting for the reply: the request goes out on a connection of its own,
        ``meanwhile`` runs and the gate opens as in ``create``, and the reply (the child ready, or why
        its set-up failed) is read later through the returned ``PendingCreate``. If ``meanwhile``
        raises, the reply is awaited (the child gives up) and the exception propagates.

        A plan in two parts: ``plan`` is only its head (a ``LaunchHead``) and ``rest`` yields the rest,
        encoded, in chunks (``encode_rootfs``, ``LaunchPlan.encode_rest``). The monitor clones the child
        on the head; each chunk goes through the gate as soon as it is yielded, so the child works on
        one (mounts the rootfs) while the next is decided here; then ``meanwhile`` runs. Needs
        ``meanwhile``. If ``rest`` raises, the child gives up as when ``meanwhile`` does.
        """
        if meanwhile is not None and oci is not None:
            raise ValueError("an oci CREATE takes no meanwhile step: the runtime joins the cgroups itself")
        if rest is not None and meanwhile is None:
            raise ValueError("the rest of a plan follows through the gate: it needs a meanwhile step")
        w = self._create_fields(container_id, plan, log_path, oci)
        if log_dir is not None:
            w.string(wire.FIELD_LOG_DIR, log_dir)
        if rest is not None:
            w.boolean(wire.FIELD_PLAN_FOLLOWS, True)
        if meanwhile is None:
            sock, request_id, _ = self._send(wire.REQUEST_CREATE, w)
            return PendingCreate(self, sock, request_id)
        report_pid = isinstance(plan, LaunchHead) and plan.report_pid
        if report_pid:
            own_end, child_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
            # Set before the child can write: the kernel attaches the sender's credentials then.
            own_end.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
            gate_write, gate_read = own_end.detach(), child_end.detach()
        else:
            gate_read, gate_write = os.pipe()
        try:
            sock, request_id, _ = self._send(wire.REQUEST_CREATE, w, fd=gate_read)
        except BaseException:
            os.close(gate_write)
            raise
        finally:
            os.close(gate_read)  # the monitor has its copy now (or the request never went out)
        pending = PendingCreate(self, sock, request_id)
        failure = run_then_open_gate(meanwhile, gate_write, rest, child_pid=receive_pid if report_pid else None)
        if failure is not None:
            with contextlib.suppress(MonitorError):  # the child's "gave up" only follows from it
                pending.result()
            raise failure
        return pending

    @staticmethod
    def _create_fields(container_id: str, plan: LaunchPlan | LaunchHead, log_path: str,
                       oci: OciRuntimeCall | None) -> TLVWriter:
        w = TLVWriter()
        w.string(wire.FIELD_CONTAINER_ID, container_id)
        w.raw(wire.FIELD_PLAN, plan.encode())
        w.string(wire.FIELD_LOG_PATH, log_path)
        if oci is not None:
            w.string(wire.FIELD_OCI_RUNTIME, oci.runtime_path)
            w.string(wire.FIELD_OCI_ROOT, oci.root)
            w.string(wire.FIELD_OCI_BUNDLE, oci.bundle)
            if oci.hide_cgroup2_mount:
                w.boolean(wire.FIELD_OCI_HIDE_CGROUP2, True)
            if len(oci.global_args) > wire.OCI_GLOBAL_ARGS_MAX:
                raise ValueError(f"more than {wire.OCI_GLOBAL_ARGS_MAX} runtime options: {oci.global_args}")
            for arg in oci.global_args:
                w.string(wire.FIELD_OCI_GLOBAL_ARG, arg)
        return w

    def start(self, container_id: str) -> None:
        self._request(wire.REQUEST_START, self._id_fields(container_id))

    def kill(self, container_id: str, signal: int, all: bool = False) -> None:
        w = self._id_fields(container_id)
        w.u32(wire.FIELD_SIGNAL, int(signal))
        if all:
            w.boolean(wire.FIELD_ALL, True)
        self._request(wire.REQUEST_KILL, w)

    def state(self, container_id: str) -> ContainerState:
        return _state_from_fields(self._request(wire.REQUEST_STATE, self._id_fields(container_id)))

    def list_containers(self) -> list[ContainerState]:
        reply = self._request(wire.REQUEST_LIST, TLVWriter())
        return [_state_from_fields(wire.parse_tlv_by_tag(nested)) for nested in reply.get(wire.FIELD_CONTAINER, [])]

    def reopen_log(self, container_id: str) -> None:
        self._request(wire.REQUEST_REOPEN_LOG, self._id_fields(container_id))

    def remove(self, container_id: str) -> None:
        self._request(wire.REQUEST_REMOVE, self._id_fields(container_id))

    def ping(self) -> dict[str, object]:
        reply = self._request(wire.REQUEST_PING, TLVWriter())
        return {"pod_id": wire.decode_string(reply[wire.FIELD_POD_ID][0]),
                "version": wire.decode_string(reply[wire.FIELD_VERSION][0]),
                "pid": wire.decode_u32(reply[wire.FIELD_PID][0]), "features": _features_of(reply)}

    @staticmethod
    def _id_fields(container_id: str) -> TLVWriter:
        w = TLVWriter()
        w.string(wire.FIELD_CONTAINER_ID, container_id)
        return w

    def _connect(self, timeout: float) -> socket.socket:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
        sock.settimeout(timeout)
        try:
            sock.connect(os.path.join(self.pod_dir, SOCKET_NAME))
        except OSError as e:
            sock.close()
            raise MonitorError(f"connect to the pod monitor in {self.pod_dir}: {e.strerror}",
                               e.errno or errno.EIO) from None
        return sock

    def _send(self, request_type: int, fields: TLVWriter, timeout: float = 30.0, *,
              fd: int = -1) -> tuple[socket.socket, int, bool]:
        """Send one request on a connection nobody else uses until its reply is read: the idle one if
        there is one (it is not idle any more), else a new one. ``fd`` goes along (SCM_RIGHTS).
        Returns the connection, the request id and whether the connection was an idle one;
        ``_receive`` reads the reply."""
        name = _REQUEST_NAMES[request_type]
        with self._lock:
            self._next_id = (self._next_id + 1) & 0xFFFFFFFF
            request_id = self._next_id
            sock, self._socket = self._socket, None
        message = wire.encode_message(request_type, request_id, fields)
        for attempt in (0, 1):
            reused = sock is not None
            if sock is None:
                sock = self._connect(timeout)
            sock.settimeout(timeout)
            if len(message) > _DEFAULT_SEND_LIMIT:
                # A packet must fit the send buffer whole (else EMSGSIZE).
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, len(message) + 65536)
            try:
                if fd >= 0:
                    sock.sendmsg([message], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, struct.pack("i", fd))])
                else:
                    sock.send(message)
            except (BrokenPipeError, ConnectionResetError) as e:
                sock.close()
                sock = None
                if not reused or attempt == 1:  # an idle connection the monitor dropped gets one retry
                    raise MonitorError(f"{name}: pod monitor connection lost: {e.strerror}",
                                       e.errno or errno.EIO) from None
                continue
            return sock, request_id, reused
        raise AssertionError("unreachable")

    def _receive(self, request_type: int, request_id: int, sock: socket.socket,
                 timeout: float) -> dict[int, list[bytes]]:
        """Read the reply to a ``_send`` request; the connection becomes the idle one again (or is
        closed when there is one already, or when it failed: _ConnectionLost)."""
        name = _REQUEST_NAMES[request_type]
        sock.settimeout(timeout)
        try:
            size = sock.recv_into(bytearray(1), 1, socket.MSG_PEEK | socket.MSG_TRUNC)
            data = sock.recv(size) if size > 0 else b""
        except (BrokenPipeError, ConnectionResetError) as e:
            sock.close()
            raise _ConnectionLost(f"{name}: pod monitor connection lost: {e.strerror}", e.errno or errno.EIO) from None
        except TimeoutError:
            sock.close()
            raise MonitorError(f"{name}: no reply from the pod monitor within {timeout}s", errno.ETIMEDOUT) from None
        if not data:
            sock.close()
            raise _ConnectionLost(f"{name}: the pod monitor closed the connection", errno.ECONNRESET)
        with self._lock:
            if self._socket is None:
                self._socket, sock = sock, None
        if sock is not None:
            sock.close()
        return parse_reply(name, request_type, request_id, data)

    def _request(self, request_type: int, fields: TLVWriter, timeout: float = 30.0) -> dict[int, list[bytes]]:
        """Send one request and read its reply."""
        for attempt in (0, 1):
            sock, request_id, reused = self._send(request_type, fields, timeout)
            try:
                return self._receive(request_type, request_id, sock, timeout)
            except _ConnectionLost:
                # An idle connection the monitor had dropped: one retry on a new one, except for the
                # requests that may have been acted upon once sent; those are never sent twice.
                if (not reused or attempt == 1
                        or request_type in (wire.REQUEST_CREATE, wire.REQUEST_START, wire.REQUEST_SHUTDOWN)):
                    raise
        raise AssertionError("unreachable")


class PendingCreate:
    """A CREATE sent but not yet answered (``PodMonitor.begin_create``).

    The daemon answers CreateContainer once the request is out and the container's cgroup is made;
    the monitor's child finishes its mounts meanwhile, while the reply and the kubelet's
    StartContainer are on the wire. Whoever needs the outcome first (StartContainer, a stop, a
    status) calls ``result``; every caller gets the same outcome.
    """

    def __init__(self, monitor: PodMonitor, sock: socket.socket, request_id: int) -> None:
        self._monitor = monitor
        self._sock: socket.socket | None = sock
        self._request_id = request_id
        self._lock = threading.Lock()
        self._outcome: CreateResult | MonitorError | None = None

    def done(self) -> bool:
        """Whether ``result`` would return at once: the reply is in (or read already)."""
        if not self._lock.acquire(blocking=False):
            return False  # another thread is reading it
        try:
            if self._outcome is not None or self._sock is None:
                return True
            return fdwait.wait_readable(self._sock, 0)
        finally:
            self._lock.release()

    def result(self, timeout: float = 30.0) -> CreateResult:
        """The created container's pid and warnings; raises MonitorError with the child's own
        message when its set-up failed."""
        with self._lock:
            if self._outcome is None:
                sock, self._sock = self._sock, None
                try:
                    if sock is None:
                        raise MonitorError("CREATE: the reply was abandoned (the daemon is stopping)", errno.ECANCELED)
                    reply = self._monitor._receive(wire.REQUEST_CREATE, self._request_id, sock, timeout)
                    self._outcome = _create_result(reply)
                except MonitorError as exc:
                    self._outcome = exc
            outcome = self._outcome
        if isinstance(outcome, MonitorError):
            raise outcome
        return outcome

    def abandon(self) -> None:
        """Drop the connection unread (the monitor keeps the container's state)."""
        with self._lock:
            if self._sock is not None:
                self._sock.close()
                self._sock = None


def _features_of(ping_reply: dict[int, list[bytes]]) -> int:
    """The MONITOR_FEATURE_ bits of a PING reply (none when it carries no FEATURES)."""
    values = ping_reply.get(wire.FIELD_FEATURES)
    return wire.decode_u32(values[0]) if values else 0


def _create_result(reply: dict[int, list[bytes]]) -> CreateResult:
    return CreateResult(pid=wire.decode_u32(reply[wire.FIELD_PID][0]),
                        warnings=[wire.decode_string(v) for v in reply.get(wire.FIELD_WARNING, [])])


def run_then_open_gate(step: Callable[[int | None], None], gate_write: int,
                       rest: Callable[[], Iterable[bytes]] | None = None,
                       child_pid: Callable[[int], int] | int | None = None) -> BaseException | None:
    """Send the rest of the plan when there is one (each chunk as its length, u32 little endian, and
    its bytes; a length of 0 ends it), run ``step``, then write the gate's one byte; close the gate
    either way (unwritten: EOF, and the waiting monitor or child gives up and undoes its set-up).
    ``step`` is given the pid of the process that waits at the gate: ``child_pid`` itself, or what
    it reads from the gate (``receive_pid``), or None. Returns what ``rest`` or ``step`` raised."""
    try:
        if rest is not None:
            child_gone = False  # it closed its end: its reply says why
            for chunk in rest():
                if chunk and not child_gone:
                    child_gone = not _write_to_child(gate_write, wire.encode_plan_chunk(chunk))
            if not child_gone:
                _write_to_child(gate_write, wire.END_OF_PLAN_CHUNKS)
        step(child_pid(gate_write) if callable(child_pid) else child_pid)
        _write_to_child(gate_write, b"1")
    except BaseException as exc:
        return exc
    finally:
        os.close(gate_write)
    return None


# How long a child may take from its clone to its first act (reporting its pid).
REPORT_PID_TIMEOUT_SECONDS = 10.0


def receive_pid(gate: int, timeout: float = REPORT_PID_TIMEOUT_SECONDS) -> int:
    """The pid of the child that wrote its byte to the gate (PLAN_REPORT_PID), from the credentials
    the kernel attached to it, in this process's pid namespace."""
    with socket.socket(fileno=os.dup(gate)) as sock:
        if not fdwait.wait_readable(gate, timeout):
            raise MonitorError(f"the container's process did not report its pid within {timeout:g}s",
                               errno.ETIMEDOUT)
        data, ancillary, _, _ = sock.recvmsg(1, socket.CMSG_SPACE(struct.calcsize("3i")))
    for level, kind, payload in ancillary:
        if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS and data:
            pid, _, _ = struct.unpack("3i", payload[:struct.calcsize("3i")])
            return pid
    raise MonitorError("the container's process gave up before reporting its pid", errno.ECANCELED)


def _write_to_child(fd: int, data: bytes) -> bool:
    """Write all of ``data``; False when the reader is gone (its reply says why)."""
    view = memoryview(data)
    try:
        while view:
            view = view[os.write(fd, view):]
    except BrokenPipeError:
        return False
    return True
