"""The container event bus behind GetContainerEvents.

Managers publish from worker threads; subscribers consume on the daemon's
event loop. Each subscriber has its own bounded queue: every event reaches
every subscriber in publication order while it keeps up, and one that falls
``queue_size`` events behind is dropped with an error (its stream ends with
RESOURCE_EXHAUSTED) instead of making publishers wait or memory grow.
Synchronous listeners (the metrics counters) are called in the publishing
thread.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from typing import AsyncIterator, Callable

from crio_fast.api import api_pb2 as pb

log = logging.getLogger("crio_fast.events")

DEFAULT_QUEUE_SIZE = 1024


class SubscriberOverflow(Exception):
    """The subscriber fell too far behind and was dropped."""


class Subscription:
    def __init__(self, bus: "EventBus", queue_size: int) -> None:
        self._bus = bus
        self._queue: asyncio.Queue[pb.ContainerEventResponse | None] = asyncio.Queue(queue_size + 1)
        self._limit = queue_size
        self.overflowed = False

    def _offer(self, event: pb.ContainerEventResponse) -> None:
        """On the loop: enqueue, or mark the subscriber dropped (one slot is kept for the end marker)."""
        if self.overflowed:
            return
        if self._queue.qsize() >= self._limit:
            self.overflowed = True
            self._queue.put_nowait(None)
            self._bus.unsubscribe(self)
            log.warning("a container event subscriber fell %d events behind and was dropped", self._limit)
            return
        self._queue.put_nowait(event)

    async def events(self) -> AsyncIterator[pb.ContainerEventResponse]:
        try:
            while True:
                event = await self._queue.get()
                if event is None:
                    raise SubscriberOverflow(f"the subscriber fell more than {self._limit} events behind")
                yield event
        finally:
            self._bus.unsubscribe(self)


class EventBus:
    def __init__(self, queue_size: int = DEFAULT_QUEUE_SIZE) -> None:
        self.queue_size = queue_size
        self._lock = threading.Lock()
        self._subscribers: set[Subscription] = set()
        self._listeners: list[Callable[[pb.ContainerEventResponse], None]] = []
        self._loop: asyncio.AbstractEventLoop | None = None

    def subscribe(self) -> Subscription:
        """Called on the event loop; events published after this reach the subscription."""
        self._loop = asyncio.get_running_loop()
        subscription = Subscription(self, self.queue_size)
        with self._lock:
            self._subscribers.add(subscription)
        return subscription

    def unsubscribe(self, subscription: Subscription) -> None:
        with self._lock:
            self._subscribers.discard(subscription)

    def add_listener(self, listener: Callable[[pb.ContainerEventResponse], None]) -> None:
        self._listeners.append(listener)

    @property
    def wanted(self) -> bool:
        """Whether anyone takes events now: publishers skip building one nobody reads."""
        return bool(self._listeners) or bool(self._subscribers)

    @property
    def subscriber_count(self) -> int:
        with self._lock:
            return len(self._subscribers)

    def publish(self, event: pb.ContainerEventResponse) -> None:
        """From any thread. Callers hold whatever lock orders their events, so
        call_soon_threadsafe (FIFO) keeps that order on the loop."""
        for listener in self._listeners:
            try:
                listener(event)
            except Exception:  # a listener's bug must not break the container operation
                log.exception("container event listener failed")
        with self._lock:
            subscribers = list(self._subscribers)
        loop = self._loop
        if not subscribers or loop is None or loop.is_closed():
            return
        for subscription in subscribers:
            # Even on the loop's own thread: one FIFO for all publishers keeps the order.
            loop.call_soon_threadsafe(subscription._offer, event)
