"""The events relay: runs relay passes (gateway/stream.py) in a thread.

It wakes when events may be waiting:

* PostgreSQL: ``LISTEN supportgate_events``; migration 0005's statement
  trigger notifies at the commit of every transaction that inserted events,
  whichever process made it (API, SMTP, workers). A notification can only be
  missed while the listening connection is down, so the relay also looks
  every ``fallback_interval`` seconds, and right after (re)connecting.
* SQLite: no notifications; it looks every ``poll_interval`` seconds with a
  read that takes no lock (``has_unpublished``).

Each wake-up runs passes until one comes back short. Several relays (one per
events process) may run against one database: they queue on the relay lock
and the later ones find nothing to do.

Sinks: :class:`RedisPublisher` (``SUPPORTGATE_REDIS_URL`` set) publishes each
pass as one message; in the embedded default the hub of the same process is
the sink.
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
from collections.abc import Callable
from typing import Any

from gateway.db import Database
from gateway.stream import StreamEvent, has_unpublished, relay_pass

log = logging.getLogger("supportgate.events.relay")

NOTIFY_CHANNEL = "supportgate_events"


def channel_for(redis_url: str) -> str:
    """The pub/sub channel of one installation.

    Pub/sub ignores Redis database numbers, but installations sharing a Redis
    already need one database each (queues, rate limits): the number goes
    into the channel name so that they do not hear each other's events.
    """
    from urllib.parse import parse_qs, urlsplit

    parts = urlsplit(redis_url)
    number = parts.path.strip("/") or parse_qs(parts.query).get("db", ["0"])[0]
    return f"supportgate:events:{number or 0}"


Sink = Callable[[list[StreamEvent]], None]


class RedisPublisher:
    """Publishes one relay pass as one JSON message on the installation's channel."""

    def __init__(self, url: str, channel: str | None = None) -> None:
        import redis

        self.channel = channel or channel_for(url)
        self.client = redis.Redis.from_url(url, socket_timeout=5, socket_connect_timeout=5)

    def __call__(self, events: list[StreamEvent]) -> None:
        payload = json.dumps([e.to_wire() for e in events], separators=(",", ":"))
        self.client.publish(self.channel, payload)

    def close(self) -> None:
        self.client.close()


class Relay:
    def __init__(
        self,
        db: Database,
        sink: Sink,
        *,
        poll_interval: float = 0.1,
        fallback_interval: float = 1.0,
        batch: int = 500,
    ) -> None:
        self.db = db
        self.sink = sink
        self.poll_interval = poll_interval
        self.fallback_interval = fallback_interval
        self.batch = batch
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._listener: Any = None

    # --- lifecycle -------------------------------------------------------------

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="events-relay", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                log.warning("events relay did not stop in time")

    # --- the loop ----------------------------------------------------------------

    def drain(self, *, look_first: bool = True) -> int:
        """Run passes until none is full; the number of events positioned.

        ``look_first``: check cheaply for waiting events before taking the
        lock (skipped when a notification just said there are some).
        """
        total = 0
        while not look_first or has_unpublished(self.db):
            look_first = True
            done = relay_pass(self.db, self.sink, limit=self.batch)
            total += done
            if done < self.batch:
                break
        return total

    def _run(self) -> None:
        try:
            self._loop()
        finally:
            # The listening connection belongs to this thread alone.
            self._close_listener()

    def _loop(self) -> None:
        failures = 0
        notified = False
        while not self._stop.is_set():
            try:
                if self.db.dialect == "postgresql" and self._listener is None:
                    self._listen()
                    notified = False
                self.drain(look_first=not notified)
                failures = 0
            except Exception:
                failures += 1
                log.exception("relay pass failed", extra={"failures": failures})
                self._close_listener()
                self._stop.wait(min(10.0, 0.2 * 2**failures))
                continue
            notified = self._wait()

    def _listen(self) -> None:
        import psycopg

        url = self.db.engine.url.set(drivername="postgresql")
        conn = psycopg.connect(url.render_as_string(hide_password=False), autocommit=True)
        conn.execute(f"LISTEN {NOTIFY_CHANNEL}")
        self._listener = conn

    def _wait(self) -> bool:
        """Sleep until events may be waiting; True when a notification said so."""
        if self._listener is None:
            self._stop.wait(self.poll_interval)
            return False
        try:
            got = list(self._listener.notifies(timeout=self.fallback_interval, stop_after=1))
        except Exception:
            log.warning("events listener lost; reconnecting", exc_info=True)
            self._close_listener()
            self._stop.wait(self.poll_interval)
            return False
        return bool(got)

    def _close_listener(self) -> None:
        conn, self._listener = self._listener, None
        if conn is not None:
            with contextlib.suppress(Exception):  # already broken; closing is best effort
                conn.close()
