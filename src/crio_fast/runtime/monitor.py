"""The daemon's side of the per-pod monitor (``crio-fast-monitor``).

``PodMonitor.spawn`` starts one monitor per pod and waits for its ready line;
the returned object talks to the monitor's control socket (``monitor.sock``
in the pod dir, SOCK_SEQPACKET, one request/reply per packet, see
docs/monitor.md). The monitor outlives the daemon: after a restart,
``PodMonitor.attach`` reconnects through the pod dir. Exit files written by
the monitor are read with ``read_exit_file``; ``exec_sync`` runs a command in a
container through the monitor binary's exec mode.

All calls are synchronous and thread-safe: a call uses the monitor's idle
connection or, while another call has it, a new one (the lock guards only
that); the daemon calls them from worker threads. ``begin_create`` sends a
CREATE whose reply is read later.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import re
import select
import signal as signal_module
import socket
import struct
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

from crio_fast.runtime import mounts, wire
from crio_fast.runtime.plan import ExecPlan, LaunchHead, LaunchPlan
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


SOCKET_NAME = "monitor.sock"
# Below the default AF_UNIX send buffer (net.core.wmem_default, 208 KiB);
# larger requests raise SO_SNDBUF (up to net.core.wmem_max).
_DEFAULT_SEND_LIMIT = 128 * 1024
PID_FILE_NAME = "monitor.pid"
POD_NAMESPACES = ("net", "ipc", "uts")
# Files under DIR/ns a monitor may pin: the three above and, with --pid new, the pod's pid namespace.
PINNED_NAMESPACES = (*POD_NAMESPACES, "pid")


class MonitorError(Exception):
    """A failure reported by (or about) a pod monitor; `code` is an errno value."""

    def __init__(self, message: str, code: int = errno.EIO) -> None:
        super().__init__(message)
        self.message = message
        self.code = code


class _ConnectionLost(MonitorError):
    """The connection broke or was closed before the reply came."""


@dataclass
class PodMonitorSpec:
    """What the pod monitor anchors: namespaces, hostname, cgroups, /dev/shm."""

    pod_id: str
    pod_dir: str
    exits_dir: str
    namespaces: dict[str, str] = field(default_factory=lambda: {"net": "new", "ipc": "new", "uts": "new"})
    pid: str = "host"  # "new": a pod pid namespace whose pid 1 is the monitor's pod init (shareProcessNamespace)
    hostname: str | None = None
    cgroup_procs: list[str] = field(default_factory=list)
    shm_size: int = 64 * 1024 * 1024  # 0: no shm mount
    stderr_path: str | None = None  # a file for the monitor's own diagnostics
    # "legacy": mount overlays with mount(2) and one page of options even where the kernel has
    # fsconfig lowerdir+ (tests; a kernel whose lowerdir+ misbehaves). "auto": the monitor probes.
    overlay_mount: str = "auto"

    def argv(self, monitor_path: str, ready_fd: int, cgroup_gate_fd: int | None = None) -> list[str]:
        args = [monitor_path, "pod", "--pod-id", self.pod_id, "--pod-dir", self.pod_dir,
                "--exits-dir", self.exits_dir, "--ready-fd", str(ready_fd)]
        if cgroup_gate_fd is not None:
            args += ["--cgroup-gate-fd", str(cgroup_gate_fd)]
        for name in POD_NAMESPACES:
            mode = self.namespaces.get(name, "host")
            if mode not in ("new", "host"):
                raise ValueError(f"namespace {name}: {mode!r} is neither 'new' nor 'host'")
            args += [f"--{name}", mode]
        if self.pid not in ("new", "host"):
            raise ValueError(f"pid namespace: {self.pid!r} is neither 'new' nor 'host'")
        args += ["--pid", self.pid]
        if self.hostname is not None:
            args += ["--hostname", self.hostname]
        for path in self.cgroup_procs:
            args += ["--cgroup-procs", path]
        args += ["--shm-size", str(self.shm_size)]
        if self.overlay_mount not in ("auto", "legacy"):
            raise ValueError(f"overlay_mount: {self.overlay_mount!r} is neither 'auto' nor 'legacy'")
        if self.overlay_mount != "auto":
            args += ["--overlay-mount", self.overlay_mount]
        return args


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


@dataclass
class ExitInfo:
    exit_code: int
    signal: int
    pid: int
    started_at: int
    finished_at: int
    oom_killed: bool


@dataclass
class ExecResult:
    exit_code: int
    stdout: bytes
    stderr: bytes
    signal: int = 0
    # Set when the command never ran (not found, cannot execute, container
    # gone; exit_code is then 126/127/1) or the helper did not say how it ended.
    error: str | None = None


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
    def spawn(cls, monitor_path: str, spec: PodMonitorSpec, timeout: float = 10.0,
              meanwhile: Callable[[], None] | None = None,
              after_gate: Callable[[], None] | None = None) -> "PodMonitor":
        """Start a pod monitor and wait until it is ready (namespaces anchored, socket listening).

        ``meanwhile`` runs while the monitor makes the pod's namespaces, and
        the monitor joins ``spec.cgroup_procs`` only once it has returned: the
        daemon makes the cgroups there, on the other CPU, instead of before
        the spawn. If it raises, the monitor is told to give up (it undoes its
        set-up) and the exception propagates. ``after_gate`` (with
        ``meanwhile`` only) runs once the monitor may go on, while it joins
        its cgroups and forks: for work the monitor does not need. If it
        raises, the monitor, once ready, is shut down again.

        Raises MonitorError with the monitor's message and errno on failure;
        the monitor has then undone its own work (after a timeout, call
        cleanup_pod_dir).
        """
        ready_read, ready_write = os.pipe()
        gate_read = gate_write = -1
        stderr_fd = -1
        try:
            if meanwhile is not None:
                gate_read, gate_write = os.pipe()
            # posix_spawn's dup2 onto the same number would keep close-on-exec
            # set: move the fds handed over out of the way of 3 and 4 first.
            ready_write = _above(ready_write, 4)
            if gate_read >= 0:
                gate_read = _above(gate_read, 4)
            stderr_fd = (os.open(spec.stderr_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
                         if spec.stderr_path else os.open(os.devnull, os.O_WRONLY | os.O_CLOEXEC))
            actions = [
                (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
                (os.POSIX_SPAWN_OPEN, 1, os.devnull, os.O_WRONLY, 0),
                (os.POSIX_SPAWN_DUP2, stderr_fd, 2),
                (os.POSIX_SPAWN_DUP2, ready_write, 3),
            ]
            if gate_read >= 0:
                actions.append((os.POSIX_SPAWN_DUP2, gate_read, 4))
            # The spawned process sets the pod up, forks the monitor, writes
            # the ready line and exits; the monitor is not our child.
            child = os.posix_spawn(
                monitor_path,
                spec.argv(monitor_path, 3, 4 if gate_read >= 0 else None),
                {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"},
                file_actions=actions,
            )
        except BaseException:
            os.close(ready_read)
            if gate_write >= 0:
                os.close(gate_write)
            raise
        finally:
            for fd in (ready_write, gate_read, stderr_fd):
                if fd >= 0:
                    os.close(fd)
        meanwhile_error: BaseException | None = None
        if meanwhile is not None:
            meanwhile_error = _run_then_open_gate(meanwhile, gate_write)
            if meanwhile_error is None and after_gate is not None:
                try:
                    after_gate()
                except BaseException as exc:
                    meanwhile_error = exc
        try:
            line = _read_ready_line(ready_read, timeout)
        except BaseException:
            # Stuck in set-up: stop it (what it mounted is left for cleanup_pod_dir).
            with contextlib.suppress(ProcessLookupError):
                os.kill(child, signal_module.SIGKILL)
            raise
        finally:
            os.close(ready_read)
            _, status = os.waitpid(child, 0)
        if meanwhile_error is not None:
            if line.startswith("ok "):  # after_gate failed: stop the monitor cleanly (it undoes its set-up)
                with contextlib.suppress(MonitorError, ValueError, OSError):
                    pid = int(line.split()[1])
                    cls(spec.pod_dir, pid, os.pidfd_open(pid)).shutdown()
            raise meanwhile_error
        if line.startswith("ok "):
            pid = int(line.split()[1])
            try:
                pidfd = os.pidfd_open(pid)
            except ProcessLookupError:
                raise MonitorError(f"pod monitor {pid} for {spec.pod_id} died right after starting") from None
            return cls(spec.pod_dir, pid, pidfd)
        match = re.match(r"error (\d+) (.*)", line, re.S)
        if match:
            raise MonitorError(f"pod monitor for {spec.pod_id}: {match.group(2).strip()}", int(match.group(1)))
        raise MonitorError(f"pod monitor for {spec.pod_id} exited without reporting "
                           f"(wait status {status:#x}, said {line!r})")

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
        readable, _, _ = select.select([self._pidfd], [], [], 0)
        if not readable:
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
        readable, _, _ = select.select([self._pidfd], [], [], timeout)
        if not readable:
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
               oci: OciRuntimeCall | None = None, meanwhile: Callable[[], None] | None = None) -> CreateResult:
        """CREATE a container; with ``oci`` the monitor runs ``RUNTIME create`` on the bundle instead of
        carrying out the plan itself (it then uses only the plan's stdio, log and cgroup fields).

        ``meanwhile`` (native plans only) runs once the request is sent, while the monitor's child
        clones, joins the pod's namespaces and mounts the rootfs; the child joins the plan's cgroups
        only after it returns (a pipe passed with the request is the gate), so that is where the
        daemon makes them. If it raises, the child gives up, the reply is awaited and the exception
        propagates.
        """
        return self.begin_create(container_id, plan, log_path, oci=oci, meanwhile=meanwhile).result()

    def begin_create(self, container_id: str, plan: LaunchPlan | LaunchHead, log_path: str,
                     oci: OciRuntimeCall | None = None,
                     meanwhile: Callable[[], None] | None = None,
                     rest: Callable[[], Iterable[bytes]] | None = None) -> "PendingCreate":
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
        if rest is not None:
            w.boolean(wire.FIELD_PLAN_FOLLOWS, True)
        if meanwhile is None:
            sock, request_id, _ = self._send(wire.REQUEST_CREATE, w)
            return PendingCreate(self, sock, request_id)
        gate_read, gate_write = os.pipe()
        try:
            sock, request_id, _ = self._send(wire.REQUEST_CREATE, w, fd=gate_read)
        except BaseException:
            os.close(gate_write)
            raise
        finally:
            os.close(gate_read)  # the monitor has its copy now (or the request never went out)
        pending = PendingCreate(self, sock, request_id)
        failure = _run_then_open_gate(meanwhile, gate_write, rest)
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
            readable, _, _ = select.select([self._sock], [], [], 0)
            return bool(readable)
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


def _run_then_open_gate(step: Callable[[], None], gate_write: int,
                        rest: Callable[[], Iterable[bytes]] | None = None) -> BaseException | None:
    """Send the rest of the plan when there is one (each chunk as its length, u32 little endian, and
    its bytes; a length of 0 ends it), run ``step``, then write the gate's one byte; close the gate
    either way (unwritten: EOF, and the waiting monitor or child gives up and undoes its set-up).
    Returns what ``rest`` or ``step`` raised."""
    try:
        if rest is not None:
            child_gone = False  # it closed its end: its reply says why
            for chunk in rest():
                if chunk and not child_gone:
                    child_gone = not _write_to_child(gate_write, wire.encode_plan_chunk(chunk))
            if not child_gone:
                _write_to_child(gate_write, wire.END_OF_PLAN_CHUNKS)
        step()
        _write_to_child(gate_write, b"1")
    except BaseException as exc:
        return exc
    finally:
        os.close(gate_write)
    return None


def _write_to_child(fd: int, data: bytes) -> bool:
    """Write all of ``data``; False when the reader is gone (its reply says why)."""
    view = memoryview(data)
    try:
        while view:
            view = view[os.write(fd, view):]
    except BrokenPipeError:
        return False
    return True


def _above(fd: int, highest_reserved: int) -> int:
    """``fd``, or a close-on-exec duplicate above ``highest_reserved`` (closing ``fd``)."""
    if fd > highest_reserved:
        return fd
    moved = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, highest_reserved + 1)
    os.close(fd)
    return moved


def _read_ready_line(fd: int, timeout: float) -> str:
    deadline = time.monotonic() + timeout
    chunks = []
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise MonitorError(f"pod monitor not ready within {timeout}s", errno.ETIMEDOUT)
        readable, _, _ = select.select([fd], [], [], remaining)
        if not readable:
            continue
        chunk = os.read(fd, 4096)
        if not chunk:
            break
        chunks.append(chunk)
        if chunk.endswith(b"\n"):
            break
    return b"".join(chunks).decode(errors="replace").strip()


def read_exit_file(path: str | os.PathLike[str]) -> ExitInfo | None:
    """Parse an exit file written by a monitor; None if there is none (yet)."""
    try:
        text = Path(path).read_text()
    except FileNotFoundError:
        return None
    values: dict[str, int] = {}
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep:
            values[key] = int(value)
    try:
        return ExitInfo(exit_code=values["exit_code"], signal=values["signal"], pid=values["pid"],
                        started_at=values["started_at"], finished_at=values["finished_at"],
                        oom_killed=bool(values["oom_killed"]))
    except KeyError as e:
        raise MonitorError(f"exit file {path} lacks {e.args[0]}", errno.EINVAL) from None


def write_exit_file(path: str | os.PathLike[str], info: ExitInfo) -> None:
    """Write an exit file in the monitor's format, atomically (for an exit the
    daemon observed itself because the pod's monitor was gone)."""
    target = Path(path)
    temporary = target.with_name(f".{target.name}.tmp")
    temporary.write_text(
        f"exit_code={info.exit_code}\nsignal={info.signal}\npid={info.pid}\nstarted_at={info.started_at}\n"
        f"finished_at={info.finished_at}\noom_killed={int(info.oom_killed)}\n"
    )
    os.replace(temporary, target)


def cleanup_pod_dir(pod_dir: str) -> list[str]:
    """Undo what a dead monitor left in its pod dir: lazy-unmount every mount at
    or under it (nsfs, shm, the private self-bind) and remove the files the
    monitor made. Returns the mount points it unmounted. Runs at every pod stop
    and removal, so it finds the mounts without reading the host's mount table
    (see runtime/mounts.py)."""
    root = os.path.realpath(pod_dir)
    unmounted = mounts.detach_all_under(root)
    for name in (SOCKET_NAME, PID_FILE_NAME, PID_FILE_NAME + ".tmp"):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(os.path.join(root, name))
    for name in PINNED_NAMESPACES:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(os.path.join(root, "ns", name))
    for name in ("ns", "shm"):
        try:
            os.rmdir(os.path.join(root, name))
        except FileNotFoundError:
            pass
        except OSError as e:
            if e.errno != errno.ENOTEMPTY:  # someone else's files: leave them
                raise
    return unmounted


def exec_sync(monitor_path: str, plan: ExecPlan, timeout: float, stdin: bytes = b"") -> ExecResult:
    """Run `plan` inside a container and collect its output.

    The helper (`crio-fast-monitor exec`) reports on a status pipe whether the
    command ran ("exit N" / "signal N") or never could ("error ERRNO MSG"),
    which is how its own failure is told apart from the command's exit code.
    On timeout the helper is sent SIGTERM, on which it SIGKILLs the command
    and reaps it (its process group is SIGKILLed if it does not exit within
    two seconds), and TimeoutError is raised.
    """
    plan_bytes = plan.encode()
    plan_read, plan_write = os.pipe()
    status_read, status_write = os.pipe()
    try:
        process = subprocess.Popen(
            [monitor_path, "exec", "--plan-fd", str(plan_read), "--status-fd", str(status_write)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            pass_fds=(plan_read, status_write), start_new_session=True,
        )
    except BaseException:
        for fd in (plan_read, plan_write, status_read, status_write):
            os.close(fd)
        raise
    os.close(plan_read)
    os.close(status_write)
    try:
        return _run_exec(process, plan_bytes, plan_write, status_read, timeout, stdin)
    finally:
        os.close(status_read)
        for stream in (process.stdin, process.stdout, process.stderr):
            if stream is not None and not stream.closed:
                stream.close()
        if process.poll() is None:
            _stop_helper(process)


def _stop_helper(process: subprocess.Popen, grace: float = 2.0) -> None:
    # SIGTERM: the helper kills the command and reaps it itself (see exec.c);
    # the group SIGKILL is the fallback for a helper that does not react.
    process.send_signal(signal_module.SIGTERM)
    try:
        process.wait(grace)
    except subprocess.TimeoutExpired:
        _kill_group(process.pid)
        process.wait()


def _kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal_module.SIGKILL)
    except ProcessLookupError:
        pass


def _run_exec(process: subprocess.Popen, plan_bytes: bytes, plan_write: int, status_read: int, timeout: float,
              stdin: bytes) -> ExecResult:
    assert process.stdin and process.stdout and process.stderr
    deadline = time.monotonic() + timeout
    pidfd = os.pidfd_open(process.pid)
    # Pending input per fd (closed once written, so the reader sees EOF) and
    # output per fd (dropped from the poll set at EOF).
    pending_input = {plan_write: memoryview(plan_bytes), process.stdin.fileno(): memoryview(stdin)}
    closers = {plan_write: lambda: os.close(plan_write), process.stdin.fileno(): process.stdin.close}
    output = {process.stdout.fileno(): bytearray(), process.stderr.fileno(): bytearray(), status_read: bytearray()}
    open_outputs = set(output)
    for fd in (*pending_input, *output):
        os.set_blocking(fd, False)
    try:
        helper_exited = False
        while not helper_exited:
            for fd in [fd for fd, data in pending_input.items() if not data]:
                closers.pop(fd)()
                del pending_input[fd]
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                _stop_helper(process)
                raise TimeoutError(f"exec {plan_argv_for_message(plan_bytes)} timed out after {timeout}s")
            readable, writable, _ = select.select([*open_outputs, pidfd], list(pending_input), [], remaining)
            for fd in writable:
                try:
                    written = os.write(fd, pending_input[fd][:65536])
                    pending_input[fd] = pending_input[fd][written:]
                except BrokenPipeError:
                    pending_input[fd] = memoryview(b"")  # the reader is gone; stop feeding it
            for fd in readable:
                if fd == pidfd:
                    helper_exited = True
                elif not _read_available(fd, output[fd]):
                    open_outputs.discard(fd)
        # The helper has exited, so the command has too: what it wrote is in
        # the pipes. Do not wait for EOF (a background child may hold them).
        for fd in open_outputs:
            _read_available(fd, output[fd])
        process.wait()
    finally:
        os.close(pidfd)
        for close in closers.values():
            close()
    outcome = wire.parse_exec_status(bytes(output[status_read]).decode(errors="replace"), process.returncode)
    return ExecResult(exit_code=outcome.exit_code, stdout=bytes(output[process.stdout.fileno()]),
                      stderr=bytes(output[process.stderr.fileno()]), signal=outcome.signal, error=outcome.error)


def plan_argv_for_message(plan_bytes: bytes) -> str:
    """The command of an encoded plan, for error messages."""
    args = [wire.decode_string(value) for tag, value in wire.parse_tlv(plan_bytes) if tag == wire.PLAN_ARGV]
    return " ".join(args) if args else "(no command)"


def _read_available(fd: int, into: bytearray) -> bool:
    """Read what is there without blocking; False at EOF."""
    while True:
        try:
            chunk = os.read(fd, 65536)
        except BlockingIOError:
            return True
        if not chunk:
            return False
        into += chunk
