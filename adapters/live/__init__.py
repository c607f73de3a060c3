"""Live events: from the outbox to every subscriber.

relay.py      positions committed events (gateway/stream.py) whenever some
              may be waiting (PostgreSQL LISTEN, SQLite polling) and hands
              them to a sink: Redis pub/sub, or the in-process hub
redis_feed.py the hub's side of Redis: one subscription per process
hub.py        per process: puts what arrives in position order (filling
              holes from the database), coalesces, fans out to subscribers
sse.py        the text/event-stream framing
"""
