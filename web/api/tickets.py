"""/api/v1/tickets: thin views over gateway.tickets."""

from __future__ import annotations

import re
from typing import Any

from flask import Blueprint, request
from sqlalchemy.orm import Session

from gateway.conversations.schemas import MessageListQuery
from gateway.errors import PreconditionFailed
from gateway.permissions import Principal, require_staff
from gateway.tickets import services
from gateway.tickets.history import history_out, history_page
from gateway.tickets.listing import ExtraFilters, list_tickets_out
from gateway.tickets.models import Ticket
from gateway.tickets.schemas import (
    CustomerTicketCreate,
    CustomerTicketUpdate,
    HistoryPage,
    PurgeQuery,
    TicketCreate,
    TicketListQuery,
    TicketOut,
    TicketPage,
    TicketUpdate,
)
from web.spec import endpoint

bp = Blueprint("tickets", __name__)

_ETAG_RE = re.compile(r'^\s*(?:W/)?"(\d{1,12})"\s*$')


def if_match_version() -> int | None:
    """The version named by ``If-Match`` (None when absent or ``*``)."""
    raw = request.headers.get("If-Match")
    if raw is None or raw.strip() == "*":
        return None
    found = _ETAG_RE.match(raw)
    if not found:
        raise PreconditionFailed('If-Match must be the ETag of the ticket, like "3"')
    return int(found.group(1))


def ticket_response(session: Session, ticket: Ticket, principal: Principal, status: int = 200):
    body = services.tickets_out(session, [ticket], principal)[0]
    return body, status, {"ETag": f'"{ticket.version}"'}


@bp.post("/tickets")
@endpoint(
    summary="Create a ticket",
    tag="tickets",
    body=TicketCreate,
    customer_body=CustomerTicketCreate,
    response=TicketOut,
    status=201,
    etag=True,
)
def create(session: Session, principal: Principal, body: Any):
    if isinstance(body, CustomerTicketCreate) and not isinstance(body, TicketCreate):
        body = TicketCreate(title=body.title, description=body.description, priority=body.priority)
    ticket = services.create_ticket(session, principal, body, channel="api")
    return ticket_response(session, ticket, principal, 201)


@bp.get("/tickets")
@endpoint(
    summary="List tickets",
    tag="tickets",
    query=TicketListQuery,
    response=TicketPage,
    description="Also accepts any number of `metadata.<key>=<value>` and "
    "`cf.<key>=<value>` filters; all must match.",
)
def index(session: Session, principal: Principal, query: TicketListQuery):
    items, cursor = list_tickets_out(
        session, principal, query, ExtraFilters.from_params(request.args.to_dict())
    )
    return {"items": items, "next_cursor": cursor}


@bp.get("/tickets/<ref>")
@endpoint(summary="One ticket, by id or number", tag="tickets", response=TicketOut, etag=True)
def show(session: Session, principal: Principal, ref: str):
    body = services.read_ticket(session, principal, ref)
    return body, 200, {"ETag": f'"{body["version"]}"'}


@bp.patch("/tickets/<ref>")
@endpoint(
    summary="Change a ticket",
    tag="tickets",
    body=TicketUpdate,
    customer_body=CustomerTicketUpdate,
    response=TicketOut,
    etag=True,
    errors=(409, 412),
    description='Optional `If-Match: "<version>"`; a stale version is 412.',
)
def update(session: Session, principal: Principal, ref: str, body: Any):
    ticket = services.get_ticket(session, principal, ref)
    services.update_ticket(session, principal, ticket, body, if_match=if_match_version())
    return ticket_response(session, ticket, principal)


@bp.delete("/tickets/<ref>")
@endpoint(
    summary="Soft-delete a ticket (or purge it with ?purge=true)",
    tag="tickets",
    query=PurgeQuery,
    status=204,
    errors=(409, 412),
)
def delete(session: Session, principal: Principal, ref: str, query: PurgeQuery):
    ticket = services.get_ticket(session, principal, ref)
    require_staff(principal)
    services.check_version(ticket, if_match_version())
    if query.purge:
        services.purge(session, principal, ticket)
    else:
        services.soft_delete(session, principal, ticket)
    return None, 204


@bp.post("/tickets/<ref>/restore")
@endpoint(summary="Undo a soft delete", tag="tickets", response=TicketOut, etag=True)
def restore(session: Session, principal: Principal, ref: str):
    ticket = services.get_ticket(session, principal, ref)
    services.restore(session, principal, ticket)
    return ticket_response(session, ticket, principal)


@bp.post("/tickets/<ref>/archive")
@endpoint(
    summary="Archive a ticket (read-only, out of default lists)",
    tag="tickets",
    response=TicketOut,
    etag=True,
    errors=(409,),
)
def archive(session: Session, principal: Principal, ref: str):
    ticket = services.get_ticket(session, principal, ref)
    services.archive(session, principal, ticket)
    return ticket_response(session, ticket, principal)


@bp.post("/tickets/<ref>/unarchive")
@endpoint(summary="Unarchive a ticket", tag="tickets", response=TicketOut, etag=True)
def unarchive(session: Session, principal: Principal, ref: str):
    ticket = services.get_ticket(session, principal, ref)
    services.unarchive(session, principal, ticket)
    return ticket_response(session, ticket, principal)


@bp.get("/tickets/<ref>/history")
@endpoint(
    summary="Audit trail of a ticket", tag="tickets", query=MessageListQuery, response=HistoryPage
)
def history(session: Session, principal: Principal, ref: str, query: MessageListQuery):
    ticket = services.get_ticket(session, principal, ref)
    require_staff(principal)
    rows, cursor = history_page(session, ticket, query.limit, query.cursor)
    return {"items": [history_out(r) for r in rows], "next_cursor": cursor}
