"""How much slower than this machine the tests run: CRIO_FAST_TEST_SLOWDOWN (default 1).

scripts/vm sets it in an emulated guest, where everything takes ten times longer or more.
Deadlines for the daemon's start-up and for RPCs to it are stretched by it; what a test
asserts stays the same.
"""

from __future__ import annotations

import collections
import os

import grpc

SLOWDOWN = max(1.0, float(os.environ.get("CRIO_FAST_TEST_SLOWDOWN") or 1))


def scaled(seconds: float) -> float:
    return seconds * SLOWDOWN


def command_limit(timeout: int | None, default: int) -> int:
    """ExecSync's own timeout: what the test gives, when that is its subject; else ``default`` stretched."""
    return timeout if timeout is not None else round(scaled(default))


class _CallDetails(collections.namedtuple("_CallDetails", ("method", "timeout", "metadata", "credentials",
                                                            "wait_for_ready", "compression")),
                   grpc.ClientCallDetails):
    pass


class StretchedDeadlines(grpc.UnaryUnaryClientInterceptor, grpc.UnaryStreamClientInterceptor,
                         grpc.StreamUnaryClientInterceptor, grpc.StreamStreamClientInterceptor):
    """Multiplies the timeout of every call on a channel by SLOWDOWN."""

    def _stretch(self, details: grpc.ClientCallDetails) -> grpc.ClientCallDetails:
        if details.timeout is None:
            return details
        return _CallDetails(details.method, scaled(details.timeout), details.metadata, details.credentials,
                            getattr(details, "wait_for_ready", None), getattr(details, "compression", None))

    def intercept_unary_unary(self, continuation, details, request):
        return continuation(self._stretch(details), request)

    def intercept_unary_stream(self, continuation, details, request):
        return continuation(self._stretch(details), request)

    def intercept_stream_unary(self, continuation, details, request_iterator):
        return continuation(self._stretch(details), request_iterator)

    def intercept_stream_stream(self, continuation, details, request_iterator):
        return continuation(self._stretch(details), request_iterator)
