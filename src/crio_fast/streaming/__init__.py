"""Streaming server for CRI Exec, Attach and PortForward (SPDY/3.1 and WebSocket)."""

from crio_fast.streaming.backend import RemoteCommandIO, StreamingBackend, TerminalSize
from crio_fast.streaming.server import StreamServer, build_stream_server

__all__ = ["RemoteCommandIO", "StreamServer", "StreamingBackend", "TerminalSize", "build_stream_server"]
