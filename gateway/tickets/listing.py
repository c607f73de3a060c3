"""Ticket lists: every filter and sort of the API, keyset pagination.

The cursor carries the sort key and id of the last row returned, so a page
is ``WHERE (key, id) > (last_key, last_id)`` over an index: stable under
concurrent inserts and as fast on page 10,000 as on page 1.
"""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, TypeVar

from sqlalchemy import (
    ColumnElement,
    Integer,
    Select,
    String,
    and_,
    any_,
    bindparam,
    case,
    cast,
    exists,
    func,
    or_,
    select,
    tuple_,
    type_coerce,
)
from sqlalchemy.dialects.postgresql import ARRAY, JSONB
from sqlalchemy.orm import Session

from gateway.conversations.models import Message
from gateway.db import DriverQuery
from gateway.errors import Forbidden, ValidationFailed
from gateway.metadata.models import TicketMetadata
from gateway.metadata.services import live_field_kinds, parse_filter_value
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


# Filters whose selectivity hardly depends on their values: a statement made of these
# only may run as a prepared statement, whose generic plan PostgreSQL picks after five
# executions. Any other filter (metadata, custom fields, tags, text, customer, dates)
# matches one ticket for one value and a fifth of them for another; a generic plan,
# blind to the values, then walked the sort index probing every ticket (two metadata
# filters: 290 ms against 40 ms planned for the values; bench/metadata_query.py), so
# such statements are planned for their values on every execution.
_PLAN_ONCE = frozenset(
    {"status", "priority", "assignee", "unassigned", "live", "undeleted", "after"}
)


def _plan_once(token: Any) -> bool:
    """Whether a filter's token (a name, or a name and a variant) is one of ``_PLAN_ONCE``."""
    return (token[0] if isinstance(token, tuple) else token) in _PLAN_ONCE


class _Plan:
    """A list request as a statement shape and its bound values.

    Each filter adds a token to the shape, a builder of its condition (which
    refers to bind parameters by name) and the values of those parameters.
    Requests of one shape share one statement, built and compiled once (see
    :func:`_statement`); only the values change. The shape holds everything
    that changes the SQL: the dialect, the caller's kind, the sort, which
    filters are present and how many of the repeatable ones.
    """

    __slots__ = ("builders", "dialect", "params", "principal", "shape")

    def __init__(self, dialect: str, principal: Principal, sort: str) -> None:
        self.dialect = dialect
        self.principal = principal
        self.shape: list[Any] = [dialect, principal.is_staff, sort]
        self.params: dict[str, Any] = {}
        self.builders: list[Callable[[], ColumnElement[bool]]] = []

    def add(self, token: Any, build: Callable[[], ColumnElement[bool]], **params: Any) -> None:
        self.shape.append(token)
        self.builders.append(build)
        self.params.update(params)

    def one_of(self, name: str, column: Any, values: list[Any], item_type: Any) -> None:
        """``column IN values``.

        One value is an equality (so PostgreSQL can walk a ``(column, sort)``
        index in order); several are an array bound once on PostgreSQL, an
        expanding IN elsewhere."""
        if len(values) == 1:
            self.add((name, 1), lambda: column == bindparam(name), **{name: values[0]})
        elif self.dialect == "postgresql":
            self.add(
                (name, "any"),
                lambda: column == any_(bindparam(name, type_=ARRAY(item_type))),
                **{name: values},
            )
        else:
            self.add(
                (name, "in"), lambda: column.in_(bindparam(name, expanding=True)), **{name: values}
            )


def _metadata_filter(plan: _Plan, postgres: bool, i: int, key: str, value: str) -> None:
    """One ``metadata.<key>=<value>``: a matching ``ticket_metadata`` row exists."""

    def metadata_match(k: str = f"meta_key_{i}", v: str = f"meta_value_{i}") -> Any:
        match = [TicketMetadata.key == bindparam(k), TicketMetadata.value == bindparam(v)]
        if postgres:
            # Lets PostgreSQL use the (key, md5(value)) index of the migration.
            match.append(func.md5(TicketMetadata.value) == func.md5(bindparam(v, type_=String)))
        return exists().where(TicketMetadata.ticket_id == Ticket.id, *match)

    plan.add("metadata", metadata_match, **{f"meta_key_{i}": key, f"meta_value_{i}": value})


def _filters(
    session: Session, principal: Principal, q: TicketListQuery, extra: ExtraFilters, plan: _Plan
) -> None:
    """Add every filter of ``q`` and ``extra`` to ``plan``."""
    postgres = plan.dialect == "postgresql"
    if q.status:
        plan.one_of("status", Ticket.status, _comma_list("status", q.status, STATUSES), String)
    if q.priority:
        names = _comma_list("priority", q.priority, PRIORITY_RANK)
        plan.one_of("priority", Ticket.priority, [PRIORITY_RANK[n] for n in names], Integer)
    if q.assignee:
        if q.assignee == "none":
            plan.add("unassigned", lambda: Ticket.assignee_id.is_(None))
        else:
            if q.assignee == "me":
                assignee = principal.user_id
            else:
                try:
                    assignee = uuid.UUID(q.assignee)
                except ValueError:
                    raise ValidationFailed.on("assignee", "must be me, none or a user id") from None
            plan.add(
                "assignee", lambda: Ticket.assignee_id == bindparam("assignee"), assignee=assignee
            )
    if q.customer:
        plan.add(
            "customer",
            lambda: (
                Ticket.customer_id
                == select(User.id).where(User.email == bindparam("customer")).scalar_subquery()
            ),
            customer=q.customer.strip().lower(),
        )
    for i, tag in enumerate(dict.fromkeys(q.tag)):
        plan.add(
            "tag",
            lambda name=f"tag_{i}": exists().where(
                TicketTag.ticket_id == Ticket.id, TicketTag.tag == bindparam(name)
            ),
            **{f"tag_{i}": tag},
        )
    if postgres and (len(extra.metadata) > 1 or (extra.metadata and extra.custom_fields)):
        # Several filters: all at once in the GIN index of the ticket's metadata
        # document (migration 0010), which a bitmap AND can also combine with the
        # custom fields' index; per-key lookups in ticket_metadata could only probe
        # ticket by ticket along the sort index. (One filter alone stays on the
        # (key, md5(value)) index, whose statistics know each value's frequency.)
        plan.add(
            "metadata_doc",
            lambda: type_coerce(Ticket.metadata_doc, JSONB).contains(
                cast(bindparam("meta_doc", type_=String), JSONB)
            ),
            meta_doc=json.dumps(extra.metadata),
        )
    else:
        for i, (key, value) in enumerate(extra.metadata.items()):
            _metadata_filter(plan, postgres, i, key, value)
    if extra.custom_fields:
        kinds = live_field_kinds(session)
        for i, (key, raw) in enumerate(extra.custom_fields.items()):
            value = parse_filter_value(key, kinds.get(key), raw)
            name = f"cf_{i}"
            if postgres:
                # jsonb @> uses the GIN (jsonb_path_ops) index of the migration. The
                # value is bound as JSON text (the driver's way needs no JSON adapter).
                plan.add(
                    "cf",
                    lambda name=name: type_coerce(Ticket.custom_fields, JSONB).contains(
                        cast(bindparam(name, type_=String), JSONB)
                    ),
                    **{name: json.dumps({key: value})},
                )
            else:
                plan.add(
                    ("cf", type(value).__name__),
                    lambda name=name: (
                        func.json_extract(
                            Ticket.custom_fields, bindparam(f"{name}_path", type_=String)
                        )
                        == bindparam(name)
                    ),
                    **{name: value, f"{name}_path": f'$."{key}"'},
                )
    if q.q:
        staff = principal.is_staff

        def text_match() -> Any:
            like = bindparam("q", type_=String)
            message_match = exists().where(
                Message.ticket_id == Ticket.id,
                Message.body_text.ilike(like, escape="\\"),
                *(() if staff else (Message.kind != "note",)),
            )
            return or_(
                Ticket.title.ilike(like, escape="\\"),
                Ticket.description.ilike(like, escape="\\"),
                message_match,
            )

        plan.add("q", text_match, q=_like(q.q.lower()))
    if q.created_after:
        plan.add(
            "created_after",
            lambda: Ticket.created_at > bindparam("created_after"),
            created_after=q.created_after,
        )
    if q.created_before:
        plan.add(
            "created_before",
            lambda: Ticket.created_at < bindparam("created_before"),
            created_before=q.created_before,
        )
    if q.updated_after:
        plan.add(
            "updated_after",
            lambda: Ticket.updated_at > bindparam("updated_after"),
            updated_after=q.updated_after,
        )
    if not q.include_archived:
        plan.add("live", lambda: Ticket.archived_at.is_(None))
    if q.include_deleted:
        if not principal.is_admin:
            raise Forbidden("include_deleted is for admins")
    else:
        plan.add("undeleted", lambda: Ticket.deleted_at.is_(None))


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


def _list_plan(
    session: Session, principal: Principal, q: TicketListQuery, extra: ExtraFilters | None
) -> _Plan:
    """``q`` narrowed to the caller, the filters and the cursor; ordered, limit + 1 rows."""
    extra = extra or ExtraFilters()
    plan = _Plan(session.get_bind().dialect.name, principal, q.sort)
    if not principal.is_staff:
        plan.params["scope_customer"] = principal.user_id
    _filters(session, principal, q, extra, plan)
    if q.cursor:
        descending = q.sort.startswith("-")
        sort_name = q.sort.lstrip("-")
        column = SORT_COLUMNS[sort_name]
        values = decode_cursor(q.cursor, kinds=(f"tickets:{q.sort}",))
        if sort_name == "number":
            if len(values) != 2:
                raise ValidationFailed.on("cursor", "not a cursor this API issued")
            plan.add(
                "after",
                lambda: (
                    Ticket.number < bindparam("after_key")
                    if descending
                    else Ticket.number > bindparam("after_key")
                ),
                after_key=_decode_key(sort_name, values[1]),
            )
        else:
            if len(values) != 3:
                raise ValidationFailed.on("cursor", "not a cursor this API issued")
            last_key = _decode_key(sort_name, values[1])
            try:
                last_id = uuid.UUID(str(values[2]))
            except ValueError:
                raise ValidationFailed.on("cursor", "not a cursor this API issued") from None

            def after() -> Any:
                pair = tuple_(column, Ticket.id)
                last = tuple_(
                    bindparam("after_key", type_=column.type),
                    bindparam("after_id", type_=Ticket.id.type),
                )
                return pair < last if descending else pair > last

            plan.add("after", after, after_key=last_key, after_id=last_id)
    plan.params["limit"] = q.limit + 1
    return plan


_STATEMENT_CACHE_SIZE = 512
_STATEMENTS: dict[tuple[Any, ...], DriverQuery] = {}
_STATEMENTS_LOCK = threading.Lock()  # for adding and evicting; lookups need none


def _statement(plan: _Plan, base_name: str, base: Callable[[], Select[Any]]) -> DriverQuery:
    """The statement of ``plan``'s shape over ``base``: built once, then looked up.

    SQLAlchemy memoizes a statement's cache key, so reusing the statement
    object also skips keying it on every request; on PostgreSQL the read
    select runs on the driver's cursor (:class:`gateway.db.DriverQuery`).
    """
    key = (base_name, *plan.shape)
    found = _STATEMENTS.get(key)
    if found is not None:
        return found
    descending = plan.shape[2].startswith("-")
    sort_name = plan.shape[2].lstrip("-")
    column = SORT_COLUMNS[sort_name]
    # The caller's kind is in the shape; a customer's id is a value.
    stmt = scope_tickets(base(), plan.principal, bindparam("scope_customer"))
    conds = [build() for build in plan.builders]
    stmt = stmt.where(and_(*conds)) if conds else stmt
    order: list[Any]
    if sort_name == "number":
        order = [Ticket.number.desc() if descending else Ticket.number.asc()]
    else:
        order = [column.desc(), Ticket.id.desc()] if descending else [column.asc(), Ticket.id.asc()]
    found = DriverQuery(
        stmt.order_by(*order).limit(bindparam("limit", type_=Integer)),
        named=True,
        # plan.shape[3:]: the filters (after the dialect, the caller's kind and the sort)
        prepare=None if all(_plan_once(token) for token in plan.shape[3:]) else False,
    )
    with _STATEMENTS_LOCK:
        if len(_STATEMENTS) >= _STATEMENT_CACHE_SIZE:
            _STATEMENTS.pop(next(iter(_STATEMENTS)), None)  # oldest first: shapes are few
        _STATEMENTS[key] = found
    return found


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
    plan = _list_plan(session, principal, q, extra)
    stmt = _statement(plan, "orm", lambda: select(Ticket)).stmt
    return _page(q, list(session.scalars(stmt, plan.params).unique()))


def list_tickets_out(
    session: Session, principal: Principal, q: TicketListQuery, extra: ExtraFilters | None = None
) -> tuple[list[dict[str, Any]], str | None]:
    """A page of ``ticket_out`` dicts and the next cursor, in one statement (GET /tickets).

    Same filters, scope, order and cursors as :func:`list_tickets`; the rows
    are columns, not ORM objects (see ``services.ticket_read_select``).
    """
    plan = _list_plan(session, principal, q, extra)
    query = _statement(plan, "read", lambda: ticket_read_select(plan.dialect))
    rows, cursor = _page(q, query.rows(session, plan.params))
    return ticket_rows_out(rows, plan.dialect, principal), cursor
