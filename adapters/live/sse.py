"""``text/event-stream`` framing (WHATWG HTML, "Server-sent events")."""

from __future__ import annotations

import json

from gateway.stream import StreamEvent

# Sent first: how long a client waits before reconnecting (ms).
PREAMBLE = b"retry: 2000\n: connected\n\n"
HEARTBEAT = b": keep-alive\n\n"


def frame(event: StreamEvent) -> bytes:
    """One event: ``id:`` its position, ``event:`` its type, ``data:`` one JSON line."""
    # Compact JSON never contains a raw newline, so one data: line is enough.
    data = json.dumps(event.data, separators=(",", ":"), ensure_ascii=False)
    return f"id: {event.position}\nevent: {event.type}\ndata: {data}\n\n".encode()
