"""The hub's ordering rules, with a fake store and fake channels (no I/O)."""

from __future__ import annotations

import asyncio

import pytest

from adapters.live.hub import Hub
from gateway.stream import EventFilter, StreamEvent


def ev(position: int, *, customer: str = "c1", internal: bool = False) -> StreamEvent:
    return StreamEvent(
        position=position,
        type="ticket.updated",
        ticket_id="t-" + customer,
        customer_id=customer,
        internal=internal,
        data={"type": "ticket.updated", "n": position},
    )


class FakeStore:
    def __init__(self, events: list[StreamEvent]) -> None:
        self.events = {e.position: e for e in events}
        self.reads: list[tuple[int, int | None]] = []

    async def latest(self) -> int:
        return max(self.events, default=0)

    async def read(self, after, *, upto, limit, where=None):
        self.reads.append((after, upto))
        found = [
            e
            for p, e in sorted(self.events.items())
            if p > after and (upto is None or p <= upto) and (where is None or where.matches(e))
        ]
        return found[:limit]


class FakeChannel:
    def __init__(self) -> None:
        self.data = b""

    async def send(self, data: bytes) -> None:
        self.data += data

    def write(self, payload) -> None:
        self.data += payload.data

    def buffered(self) -> int:
        return 0

    def ids(self) -> list[int]:
        return [int(line[4:]) for line in self.data.decode().split("\n") if line.startswith("id: ")]


async def settle(hub: Hub) -> None:
    for _ in range(50):
        await asyncio.sleep(0)


def run(coro):
    return asyncio.run(coro)


def make_hub(store: FakeStore) -> Hub:
    return Hub(store, linger=0, heartbeat=3600, catch_up_interval=3600)


def test_out_of_order_arrivals_are_delivered_in_order_once():
    async def main() -> list[int]:
        store = FakeStore([ev(p) for p in range(1, 6)])
        store.events = {}  # the hub starts at 0
        hub = make_hub(store)
        await hub.start()
        store.events = {p: ev(p) for p in range(1, 6)}
        channel = FakeChannel()
        sub = hub.subscribe(EventFilter(), channel)
        await hub.replay_and_go_live(sub, None)
        hub.submit([ev(1), ev(2)])
        await settle(hub)
        hub.submit([ev(2), ev(4), ev(5)])  # 2 again, 3 lost on the way
        await settle(hub)
        hub.submit([ev(3)])  # late duplicate of what the database filled
        await settle(hub)
        await hub.stop()
        return channel.ids()

    assert run(main()) == [1, 2, 3, 4, 5]


def test_erased_positions_are_skipped_and_foreign_ones_dropped():
    async def main() -> tuple[list[int], int]:
        store = FakeStore([])
        hub = make_hub(store)
        await hub.start()
        store.events = {1: ev(1), 3: ev(3)}  # 2 was erased
        channel = FakeChannel()
        sub = hub.subscribe(EventFilter(), channel)
        await hub.replay_and_go_live(sub, None)
        hub.submit([ev(3)])
        await settle(hub)
        hub.submit([ev(90)])  # another installation's position on a shared channel
        await settle(hub)
        await hub.stop()
        return channel.ids(), hub.position

    ids, position = run(main())
    assert ids == [1, 3]
    assert position == 3


def test_replay_then_pending_then_live_without_gap_or_duplicate():
    async def main() -> list[int]:
        store = FakeStore([ev(p) for p in range(1, 4)])
        hub = make_hub(store)
        await hub.start()  # position 3
        channel = FakeChannel()
        sub = hub.subscribe(EventFilter(), channel)
        # Delivered while the subscriber is still replaying: waits in pending.
        store.events[4] = ev(4)
        hub.submit([ev(4)])
        await settle(hub)
        assert channel.ids() == [] and sub.pending
        await hub.replay_and_go_live(sub, 1)
        store.events[5] = ev(5)
        hub.submit([ev(5)])
        await settle(hub)
        await hub.stop()
        return channel.ids()

    assert run(main()) == [2, 3, 4, 5]


def test_a_client_ahead_of_this_process_gets_nothing_twice():
    async def main() -> list[int]:
        store = FakeStore([ev(p) for p in range(1, 3)])
        hub = make_hub(store)
        await hub.start()  # position 2; the database is at 4 already
        store.events.update({3: ev(3), 4: ev(4), 5: ev(5)})
        channel = FakeChannel()
        sub = hub.subscribe(EventFilter(), channel, last_event_id=4)
        await hub.replay_and_go_live(sub, 4)
        hub.submit([ev(3), ev(4), ev(5)])
        await settle(hub)
        await hub.stop()
        return channel.ids()

    assert run(main()) == [5]


@pytest.mark.parametrize(
    ("where", "expected"),
    [
        (EventFilter(), [1, 2, 3, 4]),
        (EventFilter(customer_id="c1", internal=False), [1]),
        (EventFilter(customer_id="c2", internal=False), [4]),
        (EventFilter(ticket_id="t-c1"), [1, 2]),
    ],
)
def test_filters(where, expected):
    async def main() -> list[int]:
        events = [ev(1), ev(2, internal=True), ev(3, customer="c3"), ev(4, customer="c2")]
        store = FakeStore([])
        hub = make_hub(store)
        await hub.start()
        store.events = {e.position: e for e in events}
        channel = FakeChannel()
        sub = hub.subscribe(where, channel)
        await hub.replay_and_go_live(sub, None)
        hub.submit(events)
        await settle(hub)
        await hub.stop()
        return channel.ids()

    assert run(main()) == expected


def test_slow_subscribers_are_let_go():
    class Stuck(FakeChannel):
        def buffered(self) -> int:
            return 10 << 20

    async def main() -> str:
        store = FakeStore([])
        hub = make_hub(store)
        await hub.start()
        store.events = {1: ev(1)}
        sub = hub.subscribe(EventFilter(), Stuck())
        await hub.replay_and_go_live(sub, None)
        hub.submit([ev(1)])
        await settle(hub)
        reason = await asyncio.wait_for(sub.done, 1)
        await hub.stop()
        return reason

    assert run(main()) == "slow"
