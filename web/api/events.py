"""``GET /api/v1/events`` on the API: a redirect to the events server.

Streams are served by their own asyncio process (web/events.py), which is
where a reverse proxy routes this path in production. A client that reaches
the API with it anyway — ``supportgate serve`` on its own, a browser's
``EventSource`` — is authenticated here and sent on with ``307`` and a
short-lived stream grant (gateway/stream_grants.py) in place of the
``Authorization`` header, which clients drop when the port changes.
``ticket_id`` is checked here as on every ticket route (404 when not
visible), and ``Last-Event-ID`` is carried over as ``last_event_id``.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlencode

from flask import Blueprint, Response, current_app, g, json, request
from pydantic import Field
from sqlalchemy.orm import Session

from gateway.errors import ValidationFailed
from gateway.permissions import Principal
from gateway.schemas import QueryModel
from gateway.stream_grants import issue_grant, issue_grant_for_token
from gateway.tickets.services import get_ticket
from web.auth import bearer_token
from web.spec import endpoint

bp = Blueprint("events", __name__)


class EventsQuery(QueryModel):
    ticket_id: str | None = Field(
        None, max_length=64, description="only this ticket's events (UUID or number)"
    )
    last_event_id: int | None = Field(
        None, ge=0, lt=10**18, description="resume after this id (or the Last-Event-ID header)"
    )


def _last_event_id(query: EventsQuery) -> int | None:
    header = request.headers.get("Last-Event-ID", "").strip()
    if not header:
        return query.last_event_id
    if not header.isdigit() or len(header) > 18:
        raise ValidationFailed.on("Last-Event-ID", "must be a non-negative integer")
    return int(header)


def events_base_url() -> str:
    settings = current_app.extensions["supportgate"].settings
    if settings.events_url:
        return settings.events_url.rstrip("/")
    host = request.host.rsplit(":", 1)[0] if not request.host.endswith("]") else request.host
    return f"{request.scheme}://{host}:{settings.events_port}"


@bp.get("/events")
@endpoint(
    summary="Live events (Server-Sent Events): redirects to the events server",
    tag="events",
    query=EventsQuery,
    status=307,
    errors=(404,),
    description=(
        "The stream itself (`text/event-stream`: `id:`, `event:`, `data:`; heartbeat "
        "comments) is served by the events server. This answers 307 with its URL and a "
        "60-second stream grant that stands in for the bearer token."
    ),
)
def events(session: Session, principal: Principal, query: EventsQuery) -> Any:
    params: dict[str, Any] = {}
    if query.ticket_id:
        params["ticket_id"] = str(get_ticket(session, principal, query.ticket_id.strip()).id)
    last = _last_event_id(query)
    if last is not None:
        params["last_event_id"] = last
    bearer = bearer_token()
    params["grant"] = (
        issue_grant(session, bearer) if bearer else issue_grant_for_token(session, g.token_id)
    )
    location = f"{events_base_url()}/api/v1/events?{urlencode(params)}"
    return Response(
        json.dumps({"location": location}),
        status=307,
        mimetype="application/json",
        headers={"Location": location},
    )
