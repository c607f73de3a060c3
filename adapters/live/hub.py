"""One hub per events process: every subscriber of the process hangs off it.

Published events arrive in batches (from Redis, or straight from the relay in
the embedded default) and are delivered in position order, each position
once:

* ``position <= hub.position``: already delivered, dropped (a duplicate, or a
  batch that arrived after the database filled its hole);
* a hole before the lowest arrival: read from the database — positions are
  dense and committed before they are announced (gateway/stream.py), so what
  a hole hides is there; a hole that the database does not fill either was
  erased and is skipped;
* once a second (``catch_up_interval``) the hub compares its position with
  the database's, so an announcement lost with nothing after it (Redis down,
  a relay that died between commit and publish) is still delivered.

A new subscriber is registered *before* its replay is read: its replay is
``(last_event_id, hub.position at registration]`` from the database, and
whatever the hub delivers meanwhile waits in ``pending`` — all positions
above that bound — to be written after the replay. Hence no gap and no
duplicate across a reconnect.

Coalescing: fan-outs start at most once per ``linger`` seconds, so under
load a subscriber gets one write per ``linger`` with every event since, and
an event after a quiet spell goes out at once.

Slow subscribers: a subscriber whose unsent data exceeds ``max_buffer`` bytes
(or whose pending replay grows past ``max_pending``) is disconnected; its
client reconnects with ``Last-Event-ID`` and catches up from the database.
The fan-out never waits for one client.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

from adapters.live.sse import HEARTBEAT, frame
from gateway.db import Database
from gateway.stream import EventFilter, StreamEvent, latest_position, read_after

log = logging.getLogger("supportgate.events.hub")
T = TypeVar("T")

MAX_BATCH = 5000


class Payload:
    """Bytes for many subscribers, HTTP/1.1-chunk framed once for all of them."""

    __slots__ = ("_chunk", "data")

    def __init__(self, data: bytes) -> None:
        self.data = data
        self._chunk: bytes | None = None

    def chunk(self) -> bytes:
        if self._chunk is None:
            self._chunk = b"%x\r\n%b\r\n" % (len(self.data), self.data)
        return self._chunk


HEARTBEAT_PAYLOAD = Payload(HEARTBEAT)


class Channel(Protocol):
    """Where one subscriber's bytes go (an HTTP response)."""

    async def send(self, data: bytes) -> None:
        """Write with backpressure (preamble, replay, what waited)."""

    def write(self, payload: Payload) -> None:
        """Write now, never waiting (live fan-out); ConnectionError when gone."""

    def buffered(self) -> int: ...


class Store(Protocol):
    """The database side the hub needs (blocking work runs off the loop)."""

    async def latest(self) -> int: ...

    async def read(
        self, after: int, *, upto: int | None, limit: int, where: EventFilter | None = None
    ) -> list[StreamEvent]: ...


@dataclass(eq=False)
class Subscriber:
    where: EventFilter
    channel: Channel
    start: int  # the hub's position when it registered
    # Set when the client has seen positions the hub has not delivered yet
    # (it came from a process that is ahead): nothing up to here is sent again.
    floor: int | None = None
    pending: list[bytes] = field(default_factory=list)
    pending_bytes: int = 0
    live: bool = False
    done: asyncio.Future[str] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )

    def end(self, reason: str) -> None:
        if not self.done.done():
            self.done.set_result(reason)


class Hub:
    def __init__(
        self,
        store: Store,
        *,
        linger: float = 0.075,
        heartbeat: float = 10.0,
        catch_up_interval: float = 1.0,
        max_buffer: int = 1 << 20,
        max_pending: int = 8 << 20,
        replay_page: int = 500,
    ) -> None:
        self.store = store
        self.linger = linger
        self.heartbeat = heartbeat
        self.catch_up_interval = catch_up_interval
        self.max_buffer = max_buffer
        self.max_pending = max_pending
        self.replay_page = replay_page
        self.position = 0
        self.subscribers: set[Subscriber] = set()
        self._incoming: list[StreamEvent] = []
        self._ahead: dict[int, StreamEvent] = {}
        self._hint = 0
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self.delivered = 0  # events fanned out (metrics, tests)

    # --- lifecycle -------------------------------------------------------------

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self.position = await self.store.latest()
        self._tasks = [
            asyncio.create_task(self._pump(), name="hub-pump"),
            asyncio.create_task(self._heartbeats(), name="hub-heartbeat"),
            asyncio.create_task(self._catch_up(), name="hub-catch-up"),
        ]

    async def stop(self) -> None:
        for sub in list(self.subscribers):
            sub.end("shutdown")
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    # --- input -----------------------------------------------------------------

    def submit(self, events: list[StreamEvent]) -> None:
        """Hand over a published batch (on the hub's loop)."""
        self._incoming.extend(events)
        self._wake.set()

    def submit_threadsafe(self, events: list[StreamEvent]) -> None:
        """The relay's sink in the embedded default (called from the relay thread)."""
        assert self._loop is not None, "hub not started"
        self._loop.call_soon_threadsafe(self.submit, events)

    def hint(self, latest: int) -> None:
        """The database has reached ``latest``: deliver up to it even if nothing arrives."""
        if latest > self._hint:
            self._hint = latest
            self._wake.set()

    # --- subscribers -------------------------------------------------------------

    def subscribe(
        self, where: EventFilter, channel: Channel, last_event_id: int | None = None
    ) -> Subscriber:
        """Register a subscriber; call :meth:`replay_and_go_live` next."""
        sub = Subscriber(where=where, channel=channel, start=self.position)
        if last_event_id is not None and last_event_id > self.position:
            sub.floor = last_event_id
        self.subscribers.add(sub)
        return sub

    def unsubscribe(self, sub: Subscriber) -> None:
        sub.end("closed")
        self.subscribers.discard(sub)

    async def replay_and_go_live(self, sub: Subscriber, last_event_id: int | None) -> None:
        """Replay ``(last_event_id, sub.start]`` from the database, then what waited; go live."""
        if last_event_id is not None:
            after = last_event_id
            while after < sub.start and not sub.done.done():
                page = await self.store.read(
                    after, upto=sub.start, limit=self.replay_page, where=sub.where
                )
                if not page:
                    break
                await sub.channel.send(b"".join(frame(e) for e in page))
                after = page[-1].position
        # No await between finding ``pending`` empty and going live: the pump
        # runs on this loop, so nothing can slip in between.
        while sub.pending and not sub.done.done():
            chunk, sub.pending, sub.pending_bytes = b"".join(sub.pending), [], 0
            await sub.channel.send(chunk)
        sub.live = True

    # --- the pump --------------------------------------------------------------

    async def _pump(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self._wake.wait()
            self._wake.clear()
            try:
                events = await self._collect()
            except Exception:
                log.exception("reading events from the database failed")
                await asyncio.sleep(1.0)
                self._wake.set()
                continue
            if events:
                started = loop.time()
                await self._fan_out(events)
                if self._ahead or self._hint > self.position:
                    self._wake.set()
                # Fan-outs start at most once per ``linger``: what arrives in
                # the meantime goes out together with the next one.
                rest = self.linger - (loop.time() - started)
                if rest > 0:
                    await asyncio.sleep(rest)

    async def _collect(self) -> list[StreamEvent]:
        """The next events in position order, holes filled from the database."""
        incoming, self._incoming = self._incoming, []
        for event in incoming:
            if event.position > self.position:
                self._ahead.setdefault(event.position, event)
        target = max(self._hint, max(self._ahead, default=0))
        out: list[StreamEvent] = []
        while self.position < target and len(out) < MAX_BATCH:
            following = self.position + 1
            event = self._ahead.pop(following, None)
            if event is not None:
                out.append(event)
                self.position = following
                continue
            known = [p for p in self._ahead if p > following]
            upto = min(min(known, default=target + 1) - 1, target)
            fetched = await self.store.read(self.position, upto=upto, limit=MAX_BATCH)
            for found in fetched:
                if found.position > self.position:
                    self._ahead.setdefault(found.position, found)
            if following in self._ahead:
                continue
            latest = await self.store.latest()
            if latest < upto:
                # Announced positions this database never handed out: not ours
                # (another installation on the same channel). Drop them.
                log.error("ignoring events beyond the database's stream position")
                self._ahead = {p: e for p, e in self._ahead.items() if p <= latest}
                target = min(target, latest)
                if self.position >= target:
                    break
                continue
            # Not in the database either: erased. Skip to what is there.
            self.position = (fetched[0].position if fetched else upto + 1) - 1
        return out

    async def _fan_out(self, events: list[StreamEvent]) -> None:
        # Synchronous on purpose: one pass over the subscribers, no waiting on
        # any of them, each distinct payload built (and chunk-framed) once.
        frames = [frame(e) for e in events]
        everything = Payload(b"".join(frames))
        by_filter: dict[EventFilter, Payload] = {}
        for sub in list(self.subscribers):
            if sub.done.done():
                continue
            if sub.floor is not None:
                floor, sub.floor = sub.floor, None
                if events[-1].position <= floor:
                    sub.floor = floor
                    continue
                payload = Payload(
                    b"".join(
                        f
                        for e, f in zip(events, frames, strict=True)
                        if e.position > floor and sub.where.matches(e)
                    )
                )
            elif sub.where.everything:
                payload = everything
            else:
                found = by_filter.get(sub.where)
                if found is None:
                    found = by_filter[sub.where] = Payload(
                        b"".join(
                            f for e, f in zip(events, frames, strict=True) if sub.where.matches(e)
                        )
                    )
                payload = found
            if not payload.data:
                continue
            if not sub.live:
                sub.pending.append(payload.data)
                sub.pending_bytes += len(payload.data)
                if sub.pending_bytes > self.max_pending:
                    sub.end("slow")
                continue
            self._write(sub, payload)
        self.delivered += len(events)

    def _write(self, sub: Subscriber, payload: Payload) -> None:
        if sub.channel.buffered() > self.max_buffer:
            sub.end("slow")
            return
        try:
            sub.channel.write(payload)
        except (ConnectionError, RuntimeError):
            sub.end("gone")

    # --- timers ------------------------------------------------------------------

    async def _heartbeats(self) -> None:
        while True:
            await asyncio.sleep(self.heartbeat)
            for sub in list(self.subscribers):
                if sub.live and not sub.done.done():
                    self._write(sub, HEARTBEAT_PAYLOAD)

    async def _catch_up(self) -> None:
        while True:
            await asyncio.sleep(self.catch_up_interval)
            try:
                self.hint(await self.store.latest())
            except Exception:
                log.warning("cannot read the stream position", exc_info=True)


class DatabaseStore:
    """:class:`Store` over a :class:`~gateway.db.Database`, in worker threads.

    Each call is one short read that returns its connection at once: no
    subscriber holds a connection or a transaction while it streams. The
    threads are the store's own, so that :meth:`close` can wait for reads in
    flight before the engine is disposed.
    """

    def __init__(self, db: Database, threads: int = 8) -> None:
        self.db = db
        self.executor = ThreadPoolExecutor(threads, thread_name_prefix="events-db")

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        """Run blocking ``fn(*args)`` on the store's threads."""
        return await asyncio.get_running_loop().run_in_executor(self.executor, fn, *args)

    def close(self) -> None:
        self.executor.shutdown(wait=True, cancel_futures=True)

    def _latest(self) -> int:
        with self.db.engine.connect() as conn:
            return latest_position(conn)

    def _read(
        self, after: int, upto: int | None, limit: int, where: EventFilter | None
    ) -> list[StreamEvent]:
        with self.db.engine.connect() as conn:
            return read_after(conn, after, upto=upto, limit=limit, where=where)

    async def latest(self) -> int:
        return await self.run(self._latest)

    async def read(
        self, after: int, *, upto: int | None, limit: int, where: EventFilter | None = None
    ) -> list[StreamEvent]:
        return await self.run(self._read, after, upto, limit, where)
