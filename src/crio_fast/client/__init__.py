"""A Python client for a CRI v1 runtime over its unix socket.

Used by the tests and the benchmarks; works against any CRI v1 server.

    with CRIClient("/run/crio-fast/crio.sock") as cri:
        print(cri.version().runtime_name)
        cri.runtime.RunPodSandbox(api.RunPodSandboxRequest(...))
"""

from __future__ import annotations

import time
from types import TracebackType

import grpc

from crio_fast.api import api_pb2 as api
from crio_fast.api import api_pb2_grpc

__all__ = ["CRIClient", "api"]

DEFAULT_TIMEOUT = 60.0


class CRIClient:
    """Synchronous stubs for both CRI services on one channel."""

    def __init__(self, socket_path: str, *, timeout: float = DEFAULT_TIMEOUT, max_message_size: int = 80 * 1024 * 1024) -> None:
        self.socket_path = socket_path
        self.timeout = timeout
        self.channel = grpc.insecure_channel(
            f"unix://{socket_path}",
            options=[
                ("grpc.max_receive_message_length", max_message_size),
                ("grpc.max_send_message_length", max_message_size),
            ],
        )
        self.runtime = api_pb2_grpc.RuntimeServiceStub(self.channel)
        self.image = api_pb2_grpc.ImageServiceStub(self.channel)

    def wait_ready(self, timeout: float = 10.0) -> None:
        """Block until the server accepts connections (grpc.FutureTimeoutError on timeout)."""
        grpc.channel_ready_future(self.channel).result(timeout=timeout)

    def close(self) -> None:
        self.channel.close()

    def __enter__(self) -> "CRIClient":
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

    # Convenience wrappers for the calls that take no interesting arguments.

    def version(self) -> api.VersionResponse:
        return self.runtime.Version(api.VersionRequest(version="v1"), timeout=self.timeout)

    def status(self, verbose: bool = False) -> api.StatusResponse:
        return self.runtime.Status(api.StatusRequest(verbose=verbose), timeout=self.timeout)

    def runtime_config(self) -> api.RuntimeConfigResponse:
        return self.runtime.RuntimeConfig(api.RuntimeConfigRequest(), timeout=self.timeout)


def wait_for_socket(path: str, timeout: float = 10.0) -> None:
    """Poll until a CRI server answers Version on ``path``."""
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            with CRIClient(path, timeout=1.0) as client:
                client.version()
                return
        except grpc.RpcError as exc:
            last = exc
            time.sleep(0.05)
    raise TimeoutError(f"no CRI server answered on {path} within {timeout}s: {last}")
