"""The daemon: configuration in, a gRPC server on a unix socket out.

Lifecycle: take the instance lock, prepare directories and the socket, serve
both CRI services on one socket (then tell systemd READY=1 where it asks, via
$NOTIFY_SOCKET), and on SIGTERM/SIGINT (STOPPING=1) stop accepting calls,
let in-flight calls finish for a grace period (then cancel them), remove the
socket. SIGHUP re-reads the configuration and applies what is safe to change
while running.
"""

from __future__ import annotations

import asyncio
import logging
import os
import resource
import signal
from concurrent import futures
from typing import Callable

import grpc

from crio_fast.api import api_pb2_grpc
from crio_fast.config import Config, ConfigError
from crio_fast.server.engine import Engine
from crio_fast.server.image_service import ImageServicer
from crio_fast.server.listener import InstanceLock, finish_socket, prepare_socket_path, remove_socket
from crio_fast.runtime.exitwatch import ExitWatcher, ExitWatchError
from crio_fast.server.runtime_service import RuntimeServicer
from crio_fast.systemd import notify

log = logging.getLogger("crio_fast.daemon")

SHUTDOWN_GRACE_SECONDS = 10.0
# Worker threads of the gRPC server: one per call in progress, made on
# demand. An event stream holds one for its life, a stop one for the grace
# period: enough that a node draining many pods at once still answers Status
# and the kubelet's relists; calls beyond this wait for a free thread.
GRPC_WORKER_THREADS = 256

LOG_LEVELS = {
    "trace": logging.DEBUG,
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warn": logging.WARNING,
    "warning": logging.WARNING,
    "error": logging.ERROR,
    "fatal": logging.CRITICAL,
    "panic": logging.CRITICAL,
}


PR_SET_CHILD_SUBREAPER = 36


def become_subreaper() -> None:
    """Pod monitors detach by double fork; as a subreaper the daemon, not PID 1
    (which on some hosts reaps late or never), inherits them, and reaps each
    when its pod shuts down."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        err = ctypes.get_errno()
        log.warning("prctl(PR_SET_CHILD_SUBREAPER): %s", os.strerror(err))


def raise_open_files_limit() -> None:
    """The soft RLIMIT_NOFILE up to the hard one: the daemon holds about two descriptors per pod (its
    monitor's pidfd and socket), so the usual soft 1024 would cap a node at a few hundred pods. The
    monitors, and containers without a configured nofile ulimit, inherit it, as under CRI-O's unit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == hard:
        return
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    except (OSError, ValueError) as exc:
        log.warning("raising the open files limit from %d to %d: %s", soft, hard, exc)


M_MMAP_THRESHOLD = -3
# Allocations at least this large get a mapping of their own, unmapped when freed.
MMAP_THRESHOLD = 1 << 20


def keep_large_blocks_off_the_heap() -> None:
    """A block of a MiB or more (an ExecSync reply of up to 2 x 16 MiB, its serialized message) gets a
    mapping of its own, given back to the system when freed. By default glibc raises its threshold to the
    largest such block freed (up to 32 MiB), after which blocks that size come from the heap and stay
    with the daemon: each large ExecSync reply left the daemon's RSS 30 MiB higher. A fixed threshold
    also keeps it from moving."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    mallopt = getattr(libc, "mallopt", None)  # glibc's; other C libraries manage their heaps otherwise
    if mallopt is not None and mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD) != 1:
        log.warning("mallopt(M_MMAP_THRESHOLD, %d) failed", MMAP_THRESHOLD)


def apply_log_level(level: str) -> None:
    logging.getLogger("crio_fast").setLevel(LOG_LEVELS.get(level, logging.INFO))


class Daemon:
    def __init__(self, config: Config, reload_config: Callable[[], tuple[Config, list[str]]] | None = None) -> None:
        self.config = config
        self.reload_config = reload_config
        self.engine = Engine(config)
        self.lock = InstanceLock(config.crio.runroot)
        self.server: grpc.Server | None = None
        self._stopping: asyncio.Event | None = None
        self.exit_watcher: ExitWatcher | None = None
        self.metrics = None  # crio_fast.server.metrics.Metrics when [crio.metrics] enable_metrics

    def _prepare_dirs(self) -> None:
        for path in (self.config.crio.root, self.config.crio.runroot):
            os.makedirs(path, mode=0o711, exist_ok=True)

    async def start(self) -> None:
        become_subreaper()
        raise_open_files_limit()
        keep_large_blocks_off_the_heap()
        self._prepare_dirs()
        self.lock.acquire()
        listen = self.config.api.listen
        try:
            prepare_socket_path(listen)
            server = self._bind_grpc_server(listen)
        except BaseException:
            self.lock.release()
            raise
        self.server = server
        try:
            # What calls rely on is up before the first call is taken: its worker threads do not wait
            # for this coroutine.
            self._start_exit_watcher()
            self.engine.netns_pool.start()
            await self._start_stream_server()
            if self.config.metrics.enable_metrics:
                self._start_metrics()
            server.start()
            finish_socket(listen)
        except BaseException:
            await self.stop(grace=0)
            raise
        log.info("crio-fast %s serving CRI v1 on %s", self.engine.version, listen)
        # Under Type=notify systemd holds back units ordered after this one (the kubelet) until now.
        notify(f"READY=1\nSTATUS=serving CRI v1 on {listen}")
        # apparmor_parser is a CPU-bound process of its own (0.1-0.3 s, seconds on a slow machine): it runs
        # once the daemon serves, not in the way of its start; what needs the profile waits for it.
        self.engine.apparmor.start_loading()

    def _bind_grpc_server(self, listen: str) -> grpc.Server:
        """Both services on the unix socket, not yet serving.

        The thread-pool server: handlers that block run in its worker threads, coroutine handlers
        on this loop (server/base.py).
        """
        options = [
            ("grpc.max_send_message_length", self.config.api.grpc_max_send_msg_size),
            ("grpc.max_receive_message_length", self.config.api.grpc_max_recv_msg_size),
        ]
        server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=GRPC_WORKER_THREADS, thread_name_prefix="cri"),
            options=options,
        )
        loop = asyncio.get_running_loop()
        for servicer, add in ((RuntimeServicer(self.engine), api_pb2_grpc.add_RuntimeServiceServicer_to_server),
                              (ImageServicer(self.engine), api_pb2_grpc.add_ImageServiceServicer_to_server)):
            servicer.loop = loop
            add(servicer, server)
        if server.add_insecure_port(f"unix:{listen}") == 0:
            raise OSError(f"cannot bind {listen}")
        return server

    def _start_exit_watcher(self) -> None:
        """Exit files turn into container status and STOPPED events as they appear."""
        loop = asyncio.get_running_loop()
        containers = self.engine.containers

        def refresh(container_id: str | None) -> None:
            if container_id is None:  # the kernel queue overflowed: look at every live container
                for record in containers.state.containers.values():
                    containers.refresh(record)
                return
            record = containers.state.containers.get(container_id)
            if record is not None:
                containers.refresh(record)

        def on_exit(container_id: str | None) -> None:
            loop.run_in_executor(None, refresh, container_id)

        watcher = ExitWatcher(str(containers.exits_dir), on_exit)
        try:
            watcher.start(loop)
        except ExitWatchError as exc:
            log.error("%s; container exits are noticed on the next status call only", exc)
            return
        self.exit_watcher = watcher

    async def _start_stream_server(self) -> None:
        """The HTTP server that Exec, Attach and PortForward URLs point to."""
        from crio_fast.streaming.server import build_stream_server

        server = build_stream_server(self.config.api, self.engine.streams)
        await server.start()
        self.engine.stream_server = server
        log.info("streaming server on %s", server.url)

    def _start_metrics(self) -> None:
        from crio_fast.server.metrics import Metrics  # prometheus_client only when enabled

        settings = self.config.metrics
        if settings.metrics_socket:
            log.warning("metrics_socket is not supported yet; serving metrics on %s:%d",
                        settings.metrics_host, settings.metrics_port)
        metrics = Metrics(self.engine)
        metrics.install()
        metrics.start(settings.metrics_host, settings.metrics_port)
        self.metrics = metrics

    async def stop(self, grace: float = SHUTDOWN_GRACE_SECONDS) -> None:
        if self.server is not None:
            notify("STOPPING=1")
            log.info("shutting down: finishing in-flight calls (up to %.0fs)", grace)
            # Calls still running on this loop need it while the server waits for them.
            await asyncio.to_thread(self.server.stop(grace).wait)
            self.server = None
        if self.exit_watcher is not None:
            self.exit_watcher.stop()
            self.exit_watcher = None
        if self.engine.stream_server is not None:
            await self.engine.stream_server.stop()
            self.engine.stream_server = None
        if self.metrics is not None:
            self.metrics.stop()
            self.metrics = None
        await self.engine.close()
        remove_socket(self.config.api.listen)
        self.lock.release()

    def reload(self) -> None:
        if self.reload_config is None:
            return
        try:
            new, warnings = self.reload_config()
        except ConfigError as exc:
            log.error("configuration reload refused, keeping the running configuration: %s", exc)
            return
        for warning in warnings:
            log.warning("%s", warning)
        self.engine.reload(new)
        self.config = self.engine.config
        apply_log_level(self.config.runtime.log_level)

    async def run(self) -> None:
        """Serve until SIGTERM or SIGINT."""
        loop = asyncio.get_running_loop()
        self._stopping = asyncio.Event()
        await self.start()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, self._stopping.set)
        loop.add_signal_handler(signal.SIGHUP, self.reload)
        try:
            await self._stopping.wait()
        finally:
            for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                loop.remove_signal_handler(signum)
            await self.stop()
