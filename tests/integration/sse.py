"""Test helpers for live events: an events server in a thread, an SSE client."""

from __future__ import annotations

import asyncio
import http.client
import json
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from gateway.config import Settings
from gateway.db import Database
from web.events import serve_events


@contextmanager
def events_server(
    settings: Settings, database: Database | None = None, *, channel: str | None = None
) -> Iterator[str]:
    """``serve_events`` on its own loop in a thread; yields the base URL."""
    loop = asyncio.new_event_loop()
    stop = asyncio.Event()
    failure: list[BaseException] = []

    def run() -> None:
        asyncio.set_event_loop(loop)
        try:
            loop.run_until_complete(serve_events(settings, stop, database, channel=channel))
        except BaseException as exc:  # surfaced to the test below
            failure.append(exc)
        finally:
            loop.run_until_complete(loop.shutdown_default_executor())
            loop.close()

    thread = threading.Thread(target=run, name="events-server", daemon=True)
    thread.start()
    base = f"http://{settings.events_host}:{settings.events_port}"
    deadline = time.monotonic() + 20
    while True:
        if failure:
            raise failure[0]
        conn = http.client.HTTPConnection(settings.events_host, settings.events_port, timeout=2)
        try:
            conn.request("GET", "/healthz")
            if conn.getresponse().status == 200:
                break
        except OSError:
            pass
        finally:
            conn.close()
        if time.monotonic() > deadline:
            raise AssertionError("events server did not come up")
        time.sleep(0.05)
    try:
        yield base
    finally:
        loop.call_soon_threadsafe(stop.set)
        thread.join(15)
        assert not thread.is_alive(), "events server did not stop"


def wait_settled(base: str, db: Database, timeout: float = 10.0) -> None:
    """Until every committed event is positioned and the server's hub has delivered it,
    so that a subscriber connecting now starts after all of them."""
    from sqlalchemy import text

    parts = urlsplit(base)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with db.engine.connect() as conn:
            pending = conn.execute(
                text("SELECT count(*) FROM events WHERE position IS NULL")
            ).scalar_one()
            latest = conn.execute(
                text("SELECT coalesce(max(position), 0) FROM events")
            ).scalar_one()
        conn_http = http.client.HTTPConnection(parts.hostname, parts.port, timeout=5)
        conn_http.request("GET", "/healthz")
        position = json.loads(conn_http.getresponse().read())["position"]
        conn_http.close()
        if pending == 0 and position == latest:
            return
        time.sleep(0.02)
    raise AssertionError("events did not settle")


@dataclass
class Message:
    id: int | None
    event: str | None
    data: dict[str, Any] | None
    comment: str | None = None


class SseClient:
    """A plain ``text/event-stream`` reader on a raw socket (HTTP/1.1, chunked)."""

    def __init__(
        self,
        base: str,
        token: str | None,
        query: str = "",
        headers: dict[str, str] | None = None,
        timeout: float = 10.0,
    ) -> None:
        parts = urlsplit(base)
        assert parts.hostname and parts.port
        self.sock = socket.create_connection((parts.hostname, parts.port), timeout=timeout)
        sent = {"Host": parts.netloc, "Accept": "text/event-stream", **(headers or {})}
        if token:
            sent["Authorization"] = f"Bearer {token}"
        path = "/api/v1/events" + (f"?{query}" if query else "")
        head = f"GET {path} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in sent.items())
        self.sock.sendall((head + "\r\n").encode())
        raw = b""
        while b"\r\n\r\n" not in raw:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise EOFError("no response")
            raw += chunk
        head_bytes, self._raw = raw.split(b"\r\n\r\n", 1)
        lines = head_bytes.decode("latin-1").split("\r\n")
        self.status = int(lines[0].split()[1])
        self.headers = {
            name.strip().lower(): value.strip()
            for name, _, value in (line.partition(":") for line in lines[1:])
        }
        self.chunked = self.headers.get("transfer-encoding", "").lower() == "chunked"
        self.buffer = b""  # decoded body not yet parsed into events

    def getheader(self, name: str) -> str | None:
        return self.headers.get(name.lower())

    def json(self) -> Any:
        length = int(self.headers.get("content-length", "0"))
        while len(self._raw) < length:
            chunk = self.sock.recv(65536)
            if not chunk:
                break
            self._raw += chunk
        return json.loads(self._raw[:length])

    def _decode(self) -> None:
        """Move whole chunks from the raw buffer to the decoded one."""
        if not self.chunked:
            self.buffer += self._raw
            self._raw = b""
            return
        while True:
            line_end = self._raw.find(b"\r\n")
            if line_end < 0:
                return
            size = int(self._raw[:line_end].split(b";")[0], 16)
            if size == 0:
                raise EOFError("stream ended")
            if len(self._raw) < line_end + 2 + size + 2:
                return
            start = line_end + 2
            self.buffer += self._raw[start : start + size]
            self._raw = self._raw[start + size + 2 :]

    def _block(self, timeout: float) -> bytes | None:
        deadline = time.monotonic() + timeout
        self._decode()
        while b"\n\n" not in self.buffer:
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            self.sock.settimeout(left)
            try:
                chunk = self.sock.recv(65536)
            except TimeoutError:
                return None
            if not chunk:
                raise EOFError("stream closed")
            self._raw += chunk
            self._decode()
        block, self.buffer = self.buffer.split(b"\n\n", 1)
        return block

    def next(self, timeout: float = 5.0, *, comments: bool = False) -> Message | None:
        """The next event (or comment, if asked for), None on timeout."""
        deadline = time.monotonic() + timeout
        while True:
            block = self._block(max(0.0, deadline - time.monotonic()))
            if block is None:
                return None
            fields: dict[str, str] = {}
            comment = None
            for line in block.decode().split("\n"):
                if line.startswith(":"):
                    comment = line[1:].strip()
                    continue
                name, _, value = line.partition(":")
                fields[name] = value[1:] if value.startswith(" ") else value
            if "data" in fields:
                return Message(
                    id=int(fields["id"]) if "id" in fields else None,
                    event=fields.get("event"),
                    data=json.loads(fields["data"]),
                )
            if comments and comment is not None:
                return Message(None, None, None, comment=comment)

    def take(self, count: int, timeout: float = 10.0) -> list[Message]:
        """Exactly ``count`` events (fails on timeout)."""
        deadline = time.monotonic() + timeout
        out: list[Message] = []
        while len(out) < count:
            msg = self.next(max(0.0, deadline - time.monotonic()))
            if msg is None:
                raise AssertionError(f"got {len(out)} of {count} events: {out}")
            out.append(msg)
        return out

    def quiet(self, seconds: float = 1.0) -> list[Message]:
        """Whatever events arrive within ``seconds`` (expected: none)."""
        out = []
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            msg = self.next(left)
            if msg is None:
                break
            out.append(msg)
        return out

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> SseClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
