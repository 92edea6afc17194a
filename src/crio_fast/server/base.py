"""Shared servicer plumbing: error mapping and UNIMPLEMENTED answers.

Every RPC of a service gets a handler: the ones a servicer defines are wrapped
so that a :class:`~crio_fast.errors.CrioError` becomes its gRPC status and any
other exception becomes INTERNAL (logged with its traceback) instead of
tearing down the call; the ones it does not define answer UNIMPLEMENTED naming
the RPC, so clients see a clear status rather than a dropped connection.
"""

from __future__ import annotations

import functools
import inspect
import logging
import time
from typing import Any, Callable

import grpc

from crio_fast.api import api_pb2
from crio_fast.errors import CrioError

log = logging.getLogger("crio_fast.server")

SERVICES = api_pb2.DESCRIPTOR.services_by_name

# (service, method, code name, seconds, error kind or None), called once per
# finished call; set by the metrics endpoint when it is enabled.
RpcObserver = Callable[[str, str, str, float, "str | None"], None]
_rpc_observer: RpcObserver | None = None


def set_rpc_observer(observer: RpcObserver | None) -> None:
    global _rpc_observer
    _rpc_observer = observer


def _observe(service: str, name: str, started: float, code: grpc.StatusCode, error_kind: str | None) -> None:
    observer = _rpc_observer
    if observer is not None:
        try:
            observer(service, name, code.name, time.perf_counter() - started, error_kind)
        except Exception:  # metrics must never fail a call
            log.exception("observing %s.%s", service, name)


def _wrap_unary(service: str, name: str, fn: Callable) -> Callable:
    @functools.wraps(fn)
    async def handler(self, request, context: grpc.aio.ServicerContext):
        started = time.perf_counter()
        try:
            response = await fn(self, request, context)
        except CrioError as exc:
            log.info("%s.%s: %s: %s", service, name, exc.code.name, exc)
            _observe(service, name, started, exc.code, type(exc).__name__)
            await context.abort(exc.code, str(exc))
        except grpc.aio.AbortError:
            raise
        except Exception as exc:  # a bug: report it, keep serving
            log.exception("%s.%s failed", service, name)
            _observe(service, name, started, grpc.StatusCode.INTERNAL, "Internal")
            await context.abort(grpc.StatusCode.INTERNAL, f"{service}.{name}: internal error: {exc}")
        _observe(service, name, started, grpc.StatusCode.OK, None)
        return response

    return handler


def _wrap_stream(service: str, name: str, fn: Callable) -> Callable:
    @functools.wraps(fn)
    async def handler(self, request, context: grpc.aio.ServicerContext):
        try:
            async for item in fn(self, request, context):
                yield item
        except CrioError as exc:
            await context.abort(exc.code, str(exc))
        except grpc.aio.AbortError:
            raise
        except Exception as exc:
            log.exception("%s.%s failed", service, name)
            await context.abort(grpc.StatusCode.INTERNAL, f"{service}.{name}: internal error: {exc}")

    return handler


def _unimplemented(service: str, name: str, server_streaming: bool) -> Callable:
    message = f"{service}.{name} is not implemented by crio-fast yet"

    if server_streaming:
        async def stream_handler(self, request, context: grpc.aio.ServicerContext):
            await context.abort(grpc.StatusCode.UNIMPLEMENTED, message)
            yield  # pragma: no cover - makes this an async generator

        return stream_handler

    async def handler(self, request, context: grpc.aio.ServicerContext):
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, message)

    return handler


class ServicerBase:
    """Base for servicers of one CRI service; subclasses set ``SERVICE``."""

    SERVICE: str = ""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        service = SERVICES[cls.SERVICE]
        for method in service.methods:
            fn = cls.__dict__.get(method.name)
            streaming = method.server_streaming
            if fn is None:
                setattr(cls, method.name, _unimplemented(cls.SERVICE, method.name, streaming))
            elif streaming:
                if not inspect.isasyncgenfunction(fn):
                    raise TypeError(f"{cls.__name__}.{method.name} must be an async generator")
                setattr(cls, method.name, _wrap_stream(cls.SERVICE, method.name, fn))
            else:
                if not inspect.iscoroutinefunction(fn):
                    raise TypeError(f"{cls.__name__}.{method.name} must be async")
                setattr(cls, method.name, _wrap_unary(cls.SERVICE, method.name, fn))
