"""The container event bus: order, fan-out, and dropping a subscriber that falls behind."""

from __future__ import annotations

import asyncio
import contextlib
import threading

import pytest

from crio_fast.api import api_pb2 as pb
from crio_fast.server.events import EventBus, SubscriberOverflow


def event(n: int) -> pb.ContainerEventResponse:
    return pb.ContainerEventResponse(container_id=f"c{n}", created_at=n)


async def take(subscription, count: int) -> list[str]:
    out = []
    # Closed on the way out: a generator left by `break` is closed later by the loop, when it gets to it.
    async with contextlib.aclosing(subscription.events()) as events:
        async for e in events:
            out.append(e.container_id)
            if len(out) == count:
                break
    return out


def test_every_subscriber_gets_everything_in_order_from_threads():
    async def main():
        bus = EventBus(queue_size=1000)
        a, b = bus.subscribe(), bus.subscribe()
        publisher = threading.Thread(target=lambda: [bus.publish(event(n)) for n in range(500)])
        publisher.start()
        got_a, got_b = await asyncio.wait_for(asyncio.gather(take(a, 500), take(b, 500)), 10)
        publisher.join()
        assert got_a == got_b == [f"c{n}" for n in range(500)]
        assert bus.subscriber_count == 0  # both streams ended and unsubscribed

    asyncio.run(main())


def test_a_slow_subscriber_is_dropped_without_blocking_the_publisher():
    async def main():
        bus = EventBus(queue_size=4)
        slow, fast = bus.subscribe(), bus.subscribe()
        fast_task = asyncio.ensure_future(take(fast, 10))
        for n in range(10):
            bus.publish(event(n))  # never blocks
            await asyncio.sleep(0)  # let the fast one keep up
        assert await asyncio.wait_for(fast_task, 5) == [f"c{n}" for n in range(10)]
        received = []
        with pytest.raises(SubscriberOverflow):
            async for e in slow.events():
                received.append(e.container_id)
        assert received == ["c0", "c1", "c2", "c3"]  # what fitted, in order, then the error
        assert slow.overflowed and bus.subscriber_count == 0

    asyncio.run(main())


def test_listeners_see_every_event_synchronously():
    bus = EventBus()
    seen = []
    bus.add_listener(lambda e: seen.append(e.container_id))
    bus.publish(event(1))  # no subscriber, no loop: listeners still run
    assert seen == ["c1"]
