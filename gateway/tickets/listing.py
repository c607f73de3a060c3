"""Ticket lists: every filter and sort of the API, keyset pagination.

The cursor carries the sort key and id of the last row returned, so a page
is ``WHERE (key, id) > (last_key, last_id)`` over an index: stable under
concurrent inserts and as fast on page 10,000 as on page 1.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, TypeVar

from sqlalchemy import (
    ColumnElement,
    Select,
    and_,
    case,
    exists,
    func,
    literal,
    or_,
    select,
    tuple_,
    type_coerce,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Session

from gateway.conversations.models import Message
from gateway.errors import Forbidden, ValidationFailed
from gateway.metadata.models import TicketMetadata
from gateway.metadata.services import live_definitions, parse_filter_value
from gateway.pagination import decode_cursor, encode_cursor
from gateway.permissions import Principal, scope_tickets
from gateway.schemas import METADATA_KEY_RE
from gateway.tickets.models import Ticket, TicketTag
from gateway.tickets.schemas import TicketListQuery
from gateway.tickets.services import ticket_read_select, ticket_rows_out
from gateway.tickets.workflow import PRIORITY_RANK, STATUS_RANK, STATUSES
from gateway.users.models import User

_R = TypeVar("_R")

STATUS_ORDER = case(STATUS_RANK, value=Ticket.status, else_=len(STATUSES))

SORT_COLUMNS: dict[str, Any] = {
    "created_at": Ticket.created_at,
    "updated_at": Ticket.updated_at,
    "priority": Ticket.priority,
    "status": STATUS_ORDER,
    "number": Ticket.number,
}


@dataclass
class ExtraFilters:
    """``metadata.<key>`` and ``cf.<key>`` query parameters."""

    metadata: dict[str, str] = field(default_factory=dict)
    custom_fields: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_params(cls, params: dict[str, str]) -> ExtraFilters:
        found = cls()
        for name, value in params.items():
            prefix, _, key = name.partition(".")
            target = {"metadata": found.metadata, "cf": found.custom_fields}.get(prefix)
            if target is None:
                continue
            if not METADATA_KEY_RE.match(key):
                raise ValidationFailed.on(name, "keys match [a-z0-9_.-]{1,64}")
            target[key] = value
        return found


def _comma_list(name: str, raw: str, allowed: dict[str, int] | tuple[str, ...]) -> list[str]:
    values = [v.strip() for v in raw.split(",") if v.strip()]
    bad = [v for v in values if v not in allowed]
    if bad or not values:
        raise ValidationFailed.on(name, f"must be a comma list of {', '.join(allowed)}")
    return values


def _like(text: str) -> str:
    escaped = text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


def _filters(
    session: Session, principal: Principal, q: TicketListQuery, extra: ExtraFilters
) -> list[Any]:
    dialect = session.get_bind().dialect.name
    conds: list[ColumnElement[bool]] = []
    if q.status:
        conds.append(Ticket.status.in_(_comma_list("status", q.status, STATUSES)))
    if q.priority:
        names = _comma_list("priority", q.priority, PRIORITY_RANK)
        conds.append(Ticket.priority.in_([PRIORITY_RANK[n] for n in names]))
    if q.assignee:
        if q.assignee == "me":
            conds.append(Ticket.assignee_id == principal.user_id)
        elif q.assignee == "none":
            conds.append(Ticket.assignee_id.is_(None))
        else:
            try:
                conds.append(Ticket.assignee_id == uuid.UUID(q.assignee))
            except ValueError:
                raise ValidationFailed.on("assignee", "must be me, none or a user id") from None
    if q.customer:
        conds.append(
            Ticket.customer_id
            == select(User.id).where(User.email == q.customer.strip().lower()).scalar_subquery()
        )
    for tag in dict.fromkeys(q.tag):
        conds.append(exists().where(TicketTag.ticket_id == Ticket.id, TicketTag.tag == tag))
    for key, value in extra.metadata.items():
        match = [TicketMetadata.key == key, TicketMetadata.value == value]
        if dialect == "postgresql":
            # Lets PostgreSQL use the (key, md5(value)) index of the migration.
            match.append(func.md5(TicketMetadata.value) == func.md5(literal(value)))
        conds.append(exists().where(TicketMetadata.ticket_id == Ticket.id, *match))
    if extra.custom_fields:
        definitions = live_definitions(session)
        for key, raw in extra.custom_fields.items():
            value = parse_filter_value(definitions.get(key), raw)
            if dialect == "postgresql":
                # jsonb @> uses the GIN (jsonb_path_ops) index of the migration.
                conds.append(type_coerce(Ticket.custom_fields, JSONB).contains({key: value}))
            else:
                conds.append(func.json_extract(Ticket.custom_fields, f'$."{key}"') == value)
    if q.q:
        like = _like(q.q.lower())
        message_match = exists().where(
            Message.ticket_id == Ticket.id,
            Message.body_text.ilike(like, escape="\\"),
            *(() if principal.is_staff else (Message.kind != "note",)),
        )
        conds.append(
            or_(
                Ticket.title.ilike(like, escape="\\"),
                Ticket.description.ilike(like, escape="\\"),
                message_match,
            )
        )
    if q.created_after:
        conds.append(Ticket.created_at > q.created_after)
    if q.created_before:
        conds.append(Ticket.created_at < q.created_before)
    if q.updated_after:
        conds.append(Ticket.updated_at > q.updated_after)
    if not q.include_archived:
        conds.append(Ticket.archived_at.is_(None))
    if q.include_deleted:
        if not principal.is_admin:
            raise Forbidden("include_deleted is for admins")
    else:
        conds.append(Ticket.deleted_at.is_(None))
    return conds


def _decode_key(sort_name: str, raw: Any) -> Any:
    try:
        if sort_name in ("created_at", "updated_at"):
            value = datetime.fromisoformat(str(raw))
            if value.tzinfo is None:
                raise ValueError
            return value
        return int(raw)
    except (TypeError, ValueError):
        raise ValidationFailed.on("cursor", "not a cursor this API issued") from None


def _encode_key(sort_name: str, ticket: Any) -> Any:
    """The cursor key of a ticket or a row of ``ticket_read_select`` (same attribute names)."""
    if sort_name == "status":
        return STATUS_RANK.get(ticket.status, len(STATUSES))
    value = getattr(ticket, sort_name)
    return value.isoformat() if isinstance(value, datetime) else value


def _page_statement(
    session: Session,
    principal: Principal,
    q: TicketListQuery,
    extra: ExtraFilters | None,
    base: Select[Any],
) -> Select[Any]:
    """``base`` narrowed to the caller, the filters and the cursor; ordered, limit + 1 rows."""
    extra = extra or ExtraFilters()
    descending = q.sort.startswith("-")
    sort_name = q.sort.lstrip("-")
    column = SORT_COLUMNS[sort_name]
    cursor_kind = f"tickets:{q.sort}"

    stmt = scope_tickets(base, principal)
    conds = _filters(session, principal, q, extra)
    if q.cursor:
        values = decode_cursor(q.cursor, kinds=(cursor_kind,))
        if sort_name == "number":
            if len(values) != 2:
                raise ValidationFailed.on("cursor", "not a cursor this API issued")
            last = _decode_key(sort_name, values[1])
            conds.append(Ticket.number < last if descending else Ticket.number > last)
        else:
            if len(values) != 3:
                raise ValidationFailed.on("cursor", "not a cursor this API issued")
            last_key = _decode_key(sort_name, values[1])
            try:
                last_id = uuid.UUID(str(values[2]))
            except ValueError:
                raise ValidationFailed.on("cursor", "not a cursor this API issued") from None
            pair = tuple_(column, Ticket.id)
            conds.append(pair < (last_key, last_id) if descending else pair > (last_key, last_id))
    stmt = stmt.where(and_(*conds)) if conds else stmt
    order: list[Any]
    if sort_name == "number":
        order = [Ticket.number.desc() if descending else Ticket.number.asc()]
    else:
        order = [column.desc(), Ticket.id.desc()] if descending else [column.asc(), Ticket.id.asc()]
    return stmt.order_by(*order).limit(q.limit + 1)


def _page(q: TicketListQuery, found: Sequence[_R]) -> tuple[list[_R], str | None]:
    """The page of ``limit + 1`` rows and the cursor after it (None on the last page)."""
    sort_name = q.sort.lstrip("-")
    cursor_kind = f"tickets:{q.sort}"
    more = len(found) > q.limit
    rows = list(found[: q.limit])
    if not more or not rows:
        return rows, None
    last: Any = rows[-1]
    if sort_name == "number":
        return rows, encode_cursor(cursor_kind, last.number)
    return rows, encode_cursor(cursor_kind, _encode_key(sort_name, last), str(last.id))


def list_tickets(
    session: Session, principal: Principal, q: TicketListQuery, extra: ExtraFilters | None = None
) -> tuple[list[Ticket], str | None]:
    """A page of ORM tickets and the next cursor (for callers that change them)."""
    stmt = _page_statement(session, principal, q, extra, select(Ticket))
    return _page(q, list(session.scalars(stmt).unique()))


def list_tickets_out(
    session: Session, principal: Principal, q: TicketListQuery, extra: ExtraFilters | None = None
) -> tuple[list[dict[str, Any]], str | None]:
    """A page of ``ticket_out`` dicts and the next cursor, in one statement (GET /tickets).

    Same filters, scope, order and cursors as :func:`list_tickets`; the rows
    are columns, not ORM objects (see ``services.ticket_read_select``).
    """
    dialect = session.get_bind().dialect.name
    stmt = _page_statement(session, principal, q, extra, ticket_read_select(dialect))
    rows, cursor = _page(q, session.connection().execute(stmt).all())
    return ticket_rows_out(rows, dialect, principal), cursor
