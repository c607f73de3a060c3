"""``GET /api/v1/events``: the live events server (Server-Sent Events).

A dedicated asyncio process (``supportgate events``; a child of ``serve``),
not a gunicorn worker: an SSE connection lives for hours, and a sync worker
or thread per connection would let a few hundred browsers starve the API.
Here a connection costs a few kilobytes and no database connection:

1. authenticate (bearer token, or the stream grant of the API's redirect —
   gateway/stream_grants.py; the API's rate limits) and resolve ``ticket_id``
   in one short transaction, in a worker thread;
2. register with the process's hub, replay what the client missed
   (``Last-Event-ID`` header or ``last_event_id=``) in short reads, then
   stream live — adapters/live/hub.py explains why nothing is missed or
   repeated across that switch;
3. heartbeat comments every ``SUPPORTGATE_EVENTS_HEARTBEAT`` seconds.

The relay (adapters/live/relay.py) runs here too. With Redis, ``supportgate
events`` is a small process that relays (publishing to the channel every
server follows) and forks ``SUPPORTGATE_EVENTS_WORKERS`` servers; in the
embedded default the relay is a thread of the one server and feeds its hub
directly. See :func:`run_events_server`.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import os
import re
import signal
import uuid
from dataclasses import dataclass
from typing import Any

from aiohttp import HttpVersion11, web

from adapters.live.hub import DatabaseStore, Hub, Payload
from adapters.live.relay import RedisPublisher, Relay
from adapters.live.sse import PREAMBLE
from gateway.config import Settings
from gateway.db import Database
from gateway.errors import FieldError, GatewayError, Unauthorized, ValidationFailed
from gateway.permissions import Principal
from gateway.stream import EventFilter
from web.auth import RateLimits

log = logging.getLogger("supportgate.events")

PATH = "/api/v1/events"
PROBLEM_BASE = "https://supportgate.dev/problems/"
QUERY_PARAMS = frozenset({"ticket_id", "last_event_id", "grant"})
REQUEST_ID_RE = re.compile(r"^[A-Za-z0-9._-]{8,64}$")
# A transport buffers this much before the hub calls the subscriber slow.
WRITE_BUFFER_HIGH = 2 << 20


@dataclass
class EventsContext:
    settings: Settings
    db: Database
    limits: RateLimits
    store: DatabaseStore
    hub: Hub
    relay: Relay | None = None
    publisher: RedisPublisher | None = None
    feed: asyncio.Task[None] | None = None

    def authorize(
        self, token: str | None, grant: str | None, address: str, ticket_ref: str | None
    ) -> tuple[Principal, uuid.UUID | None]:
        """The caller (bearer token, else stream grant) and the ticket it narrowed to.

        Raises Unauthorized, RateLimited or NotFound.
        """
        from gateway.stream_grants import check_grant
        from gateway.tickets.services import get_ticket
        from gateway.users.services import authenticate

        self.limits.check_address(address)
        if token is None and grant is None:
            self.limits.failed(address)
            raise Unauthorized("send Authorization: Bearer <token> (from `supportgate user add`)")
        with self.db.transaction() as session:
            try:
                user = authenticate(session, token) if token else check_grant(session, grant or "")
            except Unauthorized:
                self.limits.failed(address)
                raise
            self.limits.hit_token(hashlib.sha256((token or grant or "").encode()).hexdigest())
            principal = Principal.of(user)
            ticket_id = get_ticket(session, principal, ticket_ref).id if ticket_ref else None
        return principal, ticket_id


CONTEXT = web.AppKey("supportgate", EventsContext)


class ResponseChannel:
    """A subscriber's side of one HTTP response.

    ``send`` goes through aiohttp (and waits when the client is slow); the
    hub's live fan-out uses ``write``, straight to the transport with the
    chunk framing shared by every subscriber of a batch — aiohttp has written
    the headers and the preamble by then, so the two interleave correctly.
    """

    __slots__ = ("chunked", "response", "transport")

    def __init__(self, response: web.StreamResponse, transport: Any, chunked: bool) -> None:
        self.response = response
        self.transport = transport
        self.chunked = chunked

    async def send(self, data: bytes) -> None:
        if self.transport is None or self.transport.is_closing():
            raise ConnectionResetError("client gone")
        await self.response.write(data)

    def write(self, payload: Payload) -> None:
        transport = self.transport
        if transport is None or transport.is_closing():
            raise ConnectionResetError("client gone")
        transport.write(payload.chunk() if self.chunked else payload.data)

    def buffered(self) -> int:
        if self.transport is None:
            return 0
        return int(self.transport.get_write_buffer_size())


# --- requests ------------------------------------------------------------------


def problem(exc: GatewayError, request_id: str) -> web.Response:
    headers = {}
    if exc.status == 401:
        headers["WWW-Authenticate"] = 'Bearer realm="supportgate"'
    if exc.status == 429 and "retry_after" in exc.data:
        headers["Retry-After"] = str(exc.data["retry_after"])
    errors = [{"field": e.field, "message": e.message} for e in exc.errors]
    return problem_response(
        exc.status, exc.code, exc.title, exc.detail, request_id, errors=errors, headers=headers
    )


def problem_response(
    status: int,
    slug: str,
    title: str,
    detail: str,
    request_id: str,
    *,
    errors: list[dict[str, str]] | None = None,
    headers: dict[str, str] | None = None,
) -> web.Response:
    body = {
        "type": PROBLEM_BASE + slug,
        "title": title,
        "status": status,
        "detail": detail,
        "errors": errors or [],
        "request_id": request_id,
    }
    return web.Response(
        body=json.dumps(body).encode(),
        status=status,
        content_type="application/problem+json",
        headers={"X-Request-Id": request_id, "Cache-Control": "no-store", **(headers or {})},
    )


def parse_last_event_id(request: web.Request) -> int | None:
    header = request.headers.get("Last-Event-ID", "").strip()
    query = request.query.get("last_event_id", "").strip()
    name, value = ("Last-Event-ID", header) if header else ("last_event_id", query)
    if not value:
        return None
    if not value.isdigit() or len(value) > 18:
        raise ValidationFailed(
            f"{name} must be the id: of an event (a non-negative integer)",
            errors=[FieldError(name, "must be a non-negative integer")],
        )
    return int(value)


def parse_query(request: web.Request) -> tuple[str | None, int | None, str | None]:
    """(ticket_id, last event id, stream grant) of the query string (and header)."""
    for name in request.query:
        if name not in QUERY_PARAMS:
            raise ValidationFailed.on(name, "unknown query parameter")
        if "\x00" in request.query[name]:
            raise ValidationFailed.on(name, "must not contain the NUL character")
    ticket_ref = request.query.get("ticket_id", "").strip() or None
    grant = request.query.get("grant", "").strip() or None
    return ticket_ref, parse_last_event_id(request), grant


def bearer_token(request: web.Request) -> str | None:
    scheme, _, value = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not value.strip():
        return None
    return value.strip()


async def stream(request: web.Request) -> web.StreamResponse:
    ctx = request.app[CONTEXT]
    incoming = request.headers.get("X-Request-Id", "")
    request_id = incoming if REQUEST_ID_RE.match(incoming) else uuid.uuid4().hex
    try:
        ticket_ref, last_event_id, grant = parse_query(request)
        principal, ticket_id = await ctx.store.run(
            ctx.authorize, bearer_token(request), grant, request.remote or "unknown", ticket_ref
        )
        if last_event_id is not None and last_event_id > await ctx.store.latest():
            # An id this stream never handed out (another installation, a
            # restored backup): there is nothing to resume from; start live.
            last_event_id = None
    except GatewayError as exc:
        return problem(exc, request_id)

    response = web.StreamResponse(
        headers={
            "Content-Type": "text/event-stream; charset=utf-8",
            "Cache-Control": "no-store",
            "X-Accel-Buffering": "no",  # proxies must not buffer the stream
            "X-Request-Id": request_id,
            # Browsers arrive here by the API's cross-port redirect; the stream
            # is authorised by bearer token or grant, never by cookies.
            "Access-Control-Allow-Origin": "*",
        }
    )
    chunked = request.version >= HttpVersion11
    if chunked:
        response.enable_chunked_encoding()
    await response.prepare(request)
    transport = request.transport
    if transport is not None:
        transport.set_write_buffer_limits(high=WRITE_BUFFER_HIGH)
    hub = ctx.hub
    sub = hub.subscribe(
        EventFilter.for_principal(principal, ticket_id),
        ResponseChannel(response, transport, chunked),
        last_event_id,
    )
    try:
        await sub.channel.send(PREAMBLE)
        await hub.replay_and_go_live(sub, last_event_id)
        reason = await sub.done
        if reason == "slow":
            log.info("slow subscriber disconnected", extra={"request_id": request_id})
    except ConnectionError:
        pass
    finally:
        hub.unsubscribe(sub)
    return response


async def healthz(request: web.Request) -> web.Response:
    hub = request.app[CONTEXT].hub
    return web.json_response(
        {"status": "ok", "subscribers": len(hub.subscribers), "position": hub.position}
    )


@web.middleware
async def problems(request: web.Request, handler: Any) -> web.StreamResponse:
    """Routing errors (404, 405) as problem+json, like the API's."""
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        slug = "not-found" if exc.status == 404 else "method-not-allowed"
        return problem_response(
            exc.status,
            slug,
            exc.reason,
            f"{request.method} {request.path}: {exc.reason}",
            uuid.uuid4().hex,
            headers={k: v for k, v in exc.headers.items() if k == "Allow"},
        )


# --- the application -------------------------------------------------------------


def create_events_app(
    settings: Settings,
    database: Database | None = None,
    *,
    channel: str | None = None,
    relay: bool = True,
) -> web.Application:
    """The events server; the hub, the Redis feed and (``relay``) a relay thread start with it.

    ``channel`` overrides the Redis channel (tests sharing one Redis).
    ``relay=False`` (only with Redis): another process relays.
    """
    db = database or Database(settings.effective_database_url, pool_size=8)
    store = DatabaseStore(db)
    hub = Hub(
        store,
        linger=settings.events_linger_ms / 1000.0,
        heartbeat=float(settings.events_heartbeat),
    )
    ctx = EventsContext(
        settings=settings,
        db=db,
        limits=RateLimits.create(
            settings.redis_url, settings.rate_limit_per_minute, settings.auth_failures_per_minute
        ),
        store=store,
        hub=hub,
    )
    app = web.Application(middlewares=[problems])
    app[CONTEXT] = ctx
    app.router.add_get(PATH, stream)
    app.router.add_get("/healthz", healthz)

    async def lifecycle(app: web.Application) -> Any:
        await hub.start()
        if settings.redis_url:
            from adapters.live import redis_feed

            ctx.feed = asyncio.create_task(redis_feed.follow(settings.redis_url, hub, channel))
            if relay:
                ctx.publisher = RedisPublisher(settings.redis_url, channel)
                ctx.relay = Relay(db, ctx.publisher)
        else:
            ctx.relay = Relay(db, hub.submit_threadsafe)
        if ctx.relay is not None:
            ctx.relay.start()
        yield
        if ctx.relay is not None:
            ctx.relay.stop()
        if ctx.feed is not None:
            ctx.feed.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await ctx.feed
        if ctx.publisher is not None:
            ctx.publisher.close()
        store.close()  # reads in flight finish before the engine goes
        if database is None:
            db.dispose()

    async def end_streams(app: web.Application) -> None:
        # Open streams end at once on shutdown; clients reconnect with Last-Event-ID.
        await hub.stop()

    app.cleanup_ctx.append(lifecycle)
    app.on_shutdown.append(end_streams)
    return app


async def serve_events(
    settings: Settings,
    stop: asyncio.Event,
    database: Database | None = None,
    *,
    channel: str | None = None,
    reuse_port: bool = False,
    relay: bool = True,
) -> None:
    """Serve on SUPPORTGATE_EVENTS_HOST/_PORT until ``stop`` is set."""
    runner = web.AppRunner(
        create_events_app(settings, database, channel=channel, relay=relay),
        handler_cancellation=True,  # a client that hangs up ends its handler
        access_log=None,
        shutdown_timeout=5.0,
    )
    await runner.setup()
    try:
        site = web.TCPSite(
            runner,
            settings.events_host,
            settings.events_port,
            backlog=4096,
            reuse_port=reuse_port or None,
        )
        await site.start()
        await stop.wait()
    finally:
        await runner.cleanup()


def _serve_one(settings: Settings, *, reuse_port: bool, relay: bool) -> None:
    try:
        import uvloop

        factory: Any = uvloop.new_event_loop
    except ImportError:  # pragma: no cover - uvloop is optional off Linux
        factory = None

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await serve_events(settings, stop, reuse_port=reuse_port, relay=relay)

    with asyncio.Runner(loop_factory=factory) as runner:
        runner.run(main())


def run_events_server(settings: Settings) -> None:
    """The CLI's ``supportgate events``: serve until SIGTERM/SIGINT (on uvloop where installed).

    Embedded default (no Redis): one process; the relay is a thread that
    feeds the hub directly.

    With Redis the process forks ``SUPPORTGATE_EVENTS_WORKERS`` servers
    (sharing the port with SO_REUSEPORT when more than one) and relays
    itself: a relay thread inside a busy server waits for the GIL behind
    every fan-out, which measurably delays each event (bench/events.py). A
    signal is passed on to the workers; a worker that dies takes the others
    down so that whoever supervises restarts the whole part.
    """
    if not settings.redis_url:
        _serve_one(settings, reuse_port=False, relay=True)
        return
    workers = settings.events_workers
    children: list[int] = []
    stopping = False

    def forward(signum: int, _frame: Any) -> None:
        nonlocal stopping
        stopping = True
        for child in children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(child, signum)

    # Before forking, so that a signal in between is not lost; children
    # reset them at once (their loop installs its own).
    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    for _ in range(workers):
        pid = os.fork()
        if pid == 0:  # pragma: no cover - runs in the child
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            code = 0
            try:
                _serve_one(settings, reuse_port=workers > 1, relay=False)
            except BaseException:
                log.exception("events worker failed")
                code = 1
            finally:
                os._exit(code)
        children.append(pid)
    if stopping:  # a signal came while forking: pass it on now
        forward(signal.SIGTERM, None)
    db = Database(settings.effective_database_url, pool_size=2)
    publisher = RedisPublisher(settings.redis_url)
    relay = Relay(db, publisher)
    relay.start()
    status = 0
    try:
        while children:
            pid, code = os.wait()
            children.remove(pid)
            if not stopping:
                log.error("events worker exited; stopping the others", extra={"pid": pid})
                forward(signal.SIGTERM, None)
                status = 1
            elif code:
                status = 1
    finally:
        relay.stop()
        publisher.close()
        db.dispose()
    if status:
        raise SystemExit(status)
