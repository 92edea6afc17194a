"""Shared servicer plumbing: where handlers run, error mapping, UNIMPLEMENTED answers.

The gRPC server is grpcio's thread-pool server. A handler written as a plain
function runs in the server's worker thread: the pod and container calls
block on the monitor and the kernel, and a worker thread is where that
belongs. With grpc.aio each call also crossed from grpc's poller thread to
the event loop, and from the loop to a thread for the blocking work and
back; measured side by side (bench/podstart.py, two daemons with pods
interleaved), pod start-up's three calls take 7-11 % less time here. A
handler written as a coroutine (or an async generator, for a stream) runs
on the daemon's event loop, for work that lives there: image pulls, event
subscriptions.

Every RPC of a service gets a handler: the ones a servicer defines are wrapped
so that a :class:`~crio_fast.errors.CrioError` becomes the gRPC status
server/status.py gives its class and any other exception becomes INTERNAL
(logged with its traceback) instead of tearing down the call; the ones it
does not define answer UNIMPLEMENTED naming the RPC, so clients see a clear
status rather than a dropped connection.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import functools
import inspect
import logging
import time
from typing import Any, Callable, Coroutine, Iterator

import grpc

from crio_fast.api import api_pb2
from crio_fast.errors import STATUS_MESSAGE_LIMIT, CrioError, cut
from crio_fast.runtime.call_end import CallEnd
from crio_fast.server.status import status_of

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


@contextlib.contextmanager
def call_end(context: grpc.ServicerContext) -> Iterator[CallEnd]:
    """The end of this call for the work it starts: its deadline, and word when the client cancels."""
    end = CallEnd(context.time_remaining())
    try:
        if not context.add_callback(end.end):  # the call is over already
            end.end()
        yield end
    finally:
        end.close()


def status_message(error: BaseException, prefix: str = "") -> str:
    """The status message an error reaches the client with: cut, so that an error quoting a huge request
    field still fits in gRPC's metadata (past it the client sees RESOURCE_EXHAUSTED, not the error)."""
    return cut(prefix + str(error), STATUS_MESSAGE_LIMIT)


def _wrap_unary(service: str, name: str, fn: Callable, on_loop: bool) -> Callable:
    @functools.wraps(fn)
    def handler(self: "ServicerBase", request, context: grpc.ServicerContext):
        started = time.perf_counter()
        try:
            if on_loop:
                response = self._on_loop(fn(self, request, context), context)
            else:
                response = fn(self, request, context)
        except CrioError as exc:
            code, message = status_of(exc), status_message(exc)
            log.info("%s.%s: %s: %s", service, name, code.name, message)
            _observe(service, name, started, code, type(exc).__name__)
        except concurrent.futures.CancelledError:
            _observe(service, name, started, grpc.StatusCode.CANCELLED, "Cancelled")
            code, message = grpc.StatusCode.CANCELLED, f"{service}.{name}: cancelled"
        except Exception as exc:  # a bug: report it, keep serving
            log.exception("%s.%s failed", service, name)
            _observe(service, name, started, grpc.StatusCode.INTERNAL, "Internal")
            code, message = grpc.StatusCode.INTERNAL, status_message(exc, f"{service}.{name}: internal error: ")
        else:
            _observe(service, name, started, grpc.StatusCode.OK, None)
            return response
        context.abort(code, message)  # raises

    return handler


def _wrap_stream(service: str, name: str, fn: Callable) -> Callable:
    """A server stream from an async generator on the loop, item by item."""

    @functools.wraps(fn)
    def handler(self: "ServicerBase", request, context: grpc.ServicerContext) -> Iterator[Any]:
        items = fn(self, request, context)
        waiting: list[concurrent.futures.Future] = []  # the pending item, cancelled when the call ends
        context.add_callback(lambda: waiting and waiting[-1].cancel())
        try:
            while True:
                waiting[:] = [self._submit(items.__anext__())]
                try:
                    item = waiting[-1].result()
                except StopAsyncIteration:
                    return
                yield item
        except CrioError as exc:
            code, message = status_of(exc), status_message(exc)
        except concurrent.futures.CancelledError:
            return  # the client went away or the server is stopping
        except Exception as exc:
            log.exception("%s.%s failed", service, name)
            code, message = grpc.StatusCode.INTERNAL, status_message(exc, f"{service}.{name}: internal error: ")
        finally:
            # Runs the generator's own clean-up (its finally blocks) on the loop, if it still runs.
            with contextlib.suppress(RuntimeError):
                self._submit(items.aclose())
        context.abort(code, message)

    return handler


def _unimplemented(service: str, name: str, server_streaming: bool) -> Callable:
    message = f"{service}.{name} is not implemented by crio-fast yet"

    def handler(self, request, context: grpc.ServicerContext):
        context.abort(grpc.StatusCode.UNIMPLEMENTED, message)

    if server_streaming:
        def stream_handler(self, request, context: grpc.ServicerContext) -> Iterator[Any]:
            context.abort(grpc.StatusCode.UNIMPLEMENTED, message)
            yield  # pragma: no cover - makes this a generator

        return stream_handler
    return handler


class ServicerBase:
    """Base for servicers of one CRI service; subclasses set ``SERVICE``.

    Handlers are plain functions (run in a server worker thread), coroutines
    or, for streams, async generators (run on ``loop``, which the daemon sets
    before it starts serving).
    """

    SERVICE: str = ""
    loop: asyncio.AbstractEventLoop | None = None

    def _submit(self, coroutine: Coroutine[Any, Any, Any]) -> concurrent.futures.Future:
        loop = self.loop
        if loop is None or loop.is_closed():
            coroutine.close()
            raise RuntimeError("the daemon's event loop is not running")
        return asyncio.run_coroutine_threadsafe(coroutine, loop)

    def _on_loop(self, coroutine: Coroutine[Any, Any, Any], context: grpc.ServicerContext) -> Any:
        """Run ``coroutine`` on the daemon's loop and wait for it; a call that ends early cancels it."""
        future = self._submit(coroutine)
        context.add_callback(future.cancel)  # at the call's end; a no-op once the future is done
        return future.result()

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
                if inspect.isasyncgenfunction(fn) or inspect.isgeneratorfunction(fn):
                    raise TypeError(f"{cls.__name__}.{method.name} is unary: it must return, not yield")
                setattr(cls, method.name,
                        _wrap_unary(cls.SERVICE, method.name, fn, on_loop=inspect.iscoroutinefunction(fn)))
