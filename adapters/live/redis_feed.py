"""The hub's side of Redis: one pub/sub subscription per events process.

Redis pub/sub delivers at most once and nothing while disconnected; that is
enough because the hub fills every hole from the database (adapters/live/hub.py)
and looks at the database's position once a second anyway.
"""

from __future__ import annotations

import asyncio
import json
import logging

from adapters.live.hub import Hub
from adapters.live.relay import channel_for
from gateway.stream import StreamEvent

log = logging.getLogger("supportgate.events.redis")


async def follow(url: str, hub: Hub, channel: str | None = None) -> None:
    """Feed ``hub`` from ``channel`` until cancelled, reconnecting with backoff."""
    import redis.asyncio as aioredis

    channel = channel or channel_for(url)
    failures = 0
    while True:
        client = aioredis.Redis.from_url(url, socket_connect_timeout=5)
        pubsub = client.pubsub(ignore_subscribe_messages=True)
        try:
            await pubsub.subscribe(channel)
            failures = 0
            async for message in pubsub.listen():
                if message.get("type") != "message":
                    continue
                try:
                    items = json.loads(message["data"])
                    hub.submit([StreamEvent.from_wire(item) for item in items])
                except (ValueError, KeyError, TypeError):
                    log.error("malformed events message ignored", exc_info=True)
        except asyncio.CancelledError:
            raise
        except Exception:
            failures += 1
            log.warning("Redis subscription lost; reconnecting", exc_info=True)
            await asyncio.sleep(min(10.0, 0.2 * 2**failures))
        finally:
            try:
                await pubsub.aclose()
                await client.aclose()
            except Exception:  # noqa: S110 - the connection is gone already
                pass
