"""Ticket services: create, read, change, delete, archive, purge.

Every change bumps ``version`` (optimistic concurrency: a stale ``If-Match``
or a concurrent writer is PreconditionFailed), writes an audit row per field
and an outbox event in the same transaction. Services never commit.
"""

from __future__ import annotations

import itertools
import secrets
import uuid
from collections.abc import Iterator, Sequence
from typing import Any

from sqlalchemy import JSON, ColumnElement, Row, Select, String, bindparam, func, select, text
from sqlalchemy.dialects.postgresql import ARRAY, aggregate_order_by
from sqlalchemy.orm import Session
from sqlalchemy.orm.exc import StaleDataError

from gateway.db import DriverQuery, as_utc, flush, lookup, new_id, utcnow
from gateway.errors import Conflict, NotFound, PreconditionFailed, ValidationFailed
from gateway.events import enqueue, record_event
from gateway.metadata.models import TicketMetadata
from gateway.metadata.services import metadata_for, validate_custom_fields
from gateway.permissions import (
    Principal,
    check_ticket_visible,
    require_admin,
    require_staff,
    scope_tickets,
)
from gateway.policies.services import get_deletion_policy
from gateway.tickets.history import audit
from gateway.tickets.models import Ticket, TicketTag
from gateway.tickets.schemas import CustomerTicketUpdate, TicketCreate, TicketUpdate
from gateway.tickets.workflow import PRIORITIES, PRIORITY_RANK, check_transition
from gateway.users.models import User
from gateway.users.services import get_or_create_customer


def user_ref(user: User | None) -> dict[str, Any] | None:
    if user is None:
        return None
    return _ref(user.id, user.email, user.name)


def _ref(user_id: Any, email: str | None, name: str | None) -> dict[str, Any] | None:
    """``user_ref`` from a read row's columns (None for an outer join that found no user)."""
    return None if email is None else {"id": str(user_id), "email": email, "name": name}


def _ticket_json(
    values: Any,
    customer: dict[str, Any] | None,
    assignee: dict[str, Any] | None,
    tags: list[str],
    metadata: dict[str, str],
    principal: Principal | None,
) -> dict[str, Any]:
    """The API's ticket document from ``values`` (an ORM ticket or a read row: same names)."""
    count = values.message_count
    if principal is not None and not principal.is_staff:
        count -= values.note_count
    return {
        "id": str(values.id),
        "number": values.number,
        "title": values.title,
        "description": values.description,
        "status": values.status,
        "priority": PRIORITIES[values.priority],
        "channel": values.channel,
        "customer": customer,
        "assignee": assignee,
        "tags": tags,
        "metadata": metadata,
        "custom_fields": values.custom_fields or {},
        "message_count": count,
        "created_at": as_utc(values.created_at).isoformat(),
        "updated_at": as_utc(values.updated_at).isoformat(),
        "archived_at": as_utc(values.archived_at).isoformat() if values.archived_at else None,
        "deleted_at": as_utc(values.deleted_at).isoformat() if values.deleted_at else None,
        "version": values.version,
    }


def ticket_out(
    ticket: Ticket, metadata: dict[str, str], principal: Principal | None = None
) -> dict[str, Any]:
    return _ticket_json(
        ticket,
        user_ref(ticket.customer),
        user_ref(ticket.assignee),
        ticket.tags,
        metadata,
        principal,
    )


def tickets_out(
    session: Session, tickets: list[Ticket], principal: Principal | None = None
) -> list[dict[str, Any]]:
    meta = metadata_for(session, (t.id for t in tickets))
    return [ticket_out(t, meta.get(t.id, {}), principal) for t in tickets]


def _parse_ref(ref: str | uuid.UUID) -> tuple[str, uuid.UUID | int] | None:
    """("id", UUID) or ("number", int) for a ticket reference; None when it names nothing."""
    if isinstance(ref, uuid.UUID):
        return "id", ref
    if ref.isdigit() and len(ref) < 10:
        return "number", int(ref)
    try:
        return "id", uuid.UUID(ref)
    except ValueError:
        return None


def get_ticket(session: Session, principal: Principal, ref: str | uuid.UUID) -> Ticket:
    """A ticket by UUID or by number; NotFound when absent or not visible.

    The ORM object, for changes; reads use :func:`read_ticket`.
    """
    ticket: Ticket | None = None
    parsed = _parse_ref(ref)
    if parsed is not None:
        kind, value = parsed
        if kind == "id":
            ticket = session.get(Ticket, value)
        else:
            ticket = session.scalar(select(Ticket).where(Ticket.number == value))
    return check_ticket_visible(principal, ticket)


# --- the read path: columns, not ORM objects -------------------------------
#
# GET /tickets and GET /tickets/{ref} run one statement that selects the
# ticket's columns, the customer and assignee by join, and the tags and
# metadata as correlated aggregates, and turn each row straight into the
# ``ticket_out`` dict. No identity map, no lazy or selectin loads, no cyclic
# garbage per request. The JSON is the same as ``ticket_out`` of the ORM
# object (tests/api/test_read_path.py compares them).

_tickets = Ticket.__table__
_customer = User.__table__.alias("customer")
_assignee = User.__table__.alias("assignee")
_tag_rows = TicketTag.__table__
_metadata_rows = TicketMetadata.__table__
_READ_SELECTS: dict[str, Select[Any]] = {}
_BY_REF_SELECTS: dict[tuple[str, str], Select[Any]] = {}
_BY_REF_QUERIES: dict[tuple[str, str], DriverQuery] = {}


def _aggregates(dialect: str) -> tuple[ColumnElement[Any], ColumnElement[Any]]:
    tag, key, value = _tag_rows.c.tag, _metadata_rows.c.key, _metadata_rows.c.value
    tags: ColumnElement[Any]
    metadata: ColumnElement[Any]
    if dialect == "postgresql":
        # ORDER BY inside the aggregate: the column's collation, as the ORM's ORDER BY.
        tags = func.array_agg(aggregate_order_by(tag, tag), type_=ARRAY(String))
        metadata = func.json_object_agg(key, aggregate_order_by(value, key), type_=JSON)
    else:
        # SQLite's group aggregates have no defined order: sorted in Python
        # (BINARY collation = code point order = Python's str order).
        tags = func.json_group_array(tag, type_=JSON)
        metadata = func.json_group_object(key, value, type_=JSON)
    return (
        select(tags).where(_tag_rows.c.ticket_id == _tickets.c.id).scalar_subquery(),
        select(metadata).where(_metadata_rows.c.ticket_id == _tickets.c.id).scalar_subquery(),
    )


def ticket_read_select(dialect: str) -> Select[Any]:
    """SELECT of everything :func:`ticket_rows_out` needs, FROM tickets and its users.

    Built once per dialect; callers add WHERE, ORDER BY and LIMIT. Row
    attributes are named like the ticket's (``status``, ``created_at``, …).
    """
    found = _READ_SELECTS.get(dialect)
    if found is None:
        t = _tickets.c
        tags, metadata = _aggregates(dialect)
        found = select(
            t.id,
            t.number,
            t.title,
            t.description,
            t.status,
            t.priority,
            t.channel,
            t.customer_id,
            _customer.c.email.label("customer_email"),
            _customer.c.name.label("customer_name"),
            t.assignee_id,
            _assignee.c.email.label("assignee_email"),
            _assignee.c.name.label("assignee_name"),
            tags.label("tags"),
            metadata.label("metadata"),
            t.custom_fields,
            t.message_count,
            t.note_count,
            t.created_at,
            t.updated_at,
            t.archived_at,
            t.deleted_at,
            t.version,
        ).select_from(
            _tickets.outerjoin(_customer, _customer.c.id == t.customer_id).outerjoin(
                _assignee, _assignee.c.id == t.assignee_id
            )
        )
        _READ_SELECTS[dialect] = found
    return found


def ticket_rows_out(
    rows: Sequence[Row[Any]], dialect: str, principal: Principal | None = None
) -> list[dict[str, Any]]:
    """``ticket_out`` of each row of :func:`ticket_read_select`, in the same key order."""
    unordered = dialect != "postgresql"
    out = []
    for row in rows:
        tags, metadata = row.tags, row.metadata
        if unordered:
            tags = sorted(tags) if tags else tags
            metadata = dict(sorted(metadata.items())) if metadata else metadata
        customer = _ref(row.customer_id, row.customer_email, row.customer_name)
        assignee = _ref(row.assignee_id, row.assignee_email, row.assignee_name)
        out.append(_ticket_json(row, customer, assignee, tags or [], metadata or {}, principal))
    return out


def _by_ref_select(dialect: str, kind: str) -> Select[Any]:
    # One statement object per dialect and kind, the value bound at execution:
    # SQLAlchemy memoizes its cache key, so a staff read (scope_tickets returns
    # the statement unchanged) skips building and keying the statement.
    found = _BY_REF_SELECTS.get((dialect, kind))
    if found is None:
        column = _tickets.c.id if kind == "id" else _tickets.c.number
        found = ticket_read_select(dialect).where(column == bindparam("ref"))
        _BY_REF_SELECTS[(dialect, kind)] = found
    return found


def read_ticket(session: Session, principal: Principal, ref: str | uuid.UUID) -> dict[str, Any]:
    """``ticket_out`` of a ticket by UUID or by number, in one statement.

    NotFound when absent or not visible (``scope_tickets``: the same rule as
    :func:`get_ticket`'s ``check_ticket_visible``).
    """
    parsed = _parse_ref(ref)
    if parsed is None:
        raise NotFound("no such ticket")
    kind, value = parsed
    dialect = session.get_bind().dialect.name
    base = _by_ref_select(dialect, kind)
    query = _BY_REF_QUERIES.get((dialect, kind))
    if query is None:
        query = _BY_REF_QUERIES[(dialect, kind)] = DriverQuery(base, named=True)
    # Staff see every ticket (scope_tickets returns ``base`` itself): the driver's
    # fast way. A customer's scoped statement goes through SQLAlchemy.
    rows = query.rows(session, {"ref": value}, scope_tickets(base, principal))
    if not rows:
        raise NotFound("no such ticket")
    return ticket_rows_out(rows, dialect, principal)[0]


def _next_number(session: Session) -> int:
    reserved = lookup(session, "ticket_numbers", "reserved", lambda: None)
    if reserved is not None:
        number = next(reserved, None)
        if number is not None:
            return int(number)
    if session.get_bind().dialect.name == "postgresql":
        return int(session.execute(text("SELECT nextval('ticket_number_seq')")).scalar_one())
    return _highest_number(session) + 1


def _highest_number(session: Session) -> int:
    # SQLite: every transaction is BEGIN IMMEDIATE, so writers are serialised.
    return int(session.scalar(select(func.coalesce(func.max(Ticket.number), 0))) or 0)


def reserve_numbers(session: Session, count: int) -> Iterator[int]:
    """Ticket numbers for a block that creates about ``count`` tickets before it flushes.

    For :func:`gateway.db.prefetched` as lookup ``ticket_numbers``: the
    tickets then take their numbers in order from here. On PostgreSQL,
    ``count`` numbers in one query; past them, one ``nextval`` a ticket as
    usual, and a number not used is a gap, as after a rollback. On SQLite,
    counting on from the highest number, as many as needed: the block's
    tickets are not flushed yet, so ``max(number)`` would not see them.
    """
    if session.get_bind().dialect.name != "postgresql":
        return itertools.count(_highest_number(session) + 1)
    if count <= 0:
        return iter(())
    numbers = session.scalars(
        text("SELECT nextval('ticket_number_seq') FROM generate_series(1, :count)"),
        {"count": count},
    )
    return iter(sorted(int(n) for n in numbers))


def _check_assignee(session: Session, assignee_id: uuid.UUID | None) -> User | None:
    if assignee_id is None:
        return None
    user = session.get(User, assignee_id)
    if user is None or not user.is_staff or not user.active:
        raise ValidationFailed.on("assignee_id", "must be an active agent or admin")
    return user


def create_ticket(
    session: Session,
    principal: Principal,
    data: TicketCreate,
    *,
    channel: str = "api",
    customer: User | None = None,
) -> Ticket:
    if customer is None:
        if principal.is_customer or data.customer_email is None:
            if principal.user_id is None:
                raise ValidationFailed.on("customer_email", "is required")
            customer = session.get(User, principal.user_id)
        else:
            customer = get_or_create_customer(session, str(data.customer_email), data.customer_name)
    assert customer is not None
    if not customer.active:
        raise ValidationFailed.on("customer_email", "that user is deactivated")
    assignee = _check_assignee(session, data.assignee_id)
    custom = (
        validate_custom_fields(session, {}, data.custom_fields, creating=True)
        if principal.is_staff
        else {}
    )
    now = utcnow()
    ticket = Ticket(
        id=new_id(),
        number=_next_number(session),
        title=data.title,
        description=data.description,
        status="new",
        priority=PRIORITY_RANK[data.priority],
        channel=channel,
        customer_id=customer.id,
        assignee_id=assignee.id if assignee else None,
        custom_fields=custom,
        reply_token=secrets.token_hex(16),  # 128 bits; see gateway/inbound/addresses.py
        created_at=now,
        updated_at=now,
        message_count=0,
        note_count=0,
    )
    ticket.customer = customer
    ticket.assignee = assignee
    ticket.tag_rows = [TicketTag(tag=tag) for tag in sorted(set(data.tags))]
    session.add(ticket)
    flush(session)
    for key, value in data.metadata.items():
        session.add(TicketMetadata(ticket_id=ticket.id, key=key, value=value))
    audit(session, ticket, principal, "created")
    record_event(session, "ticket.created", ticket=ticket, actor=principal.as_actor())
    flush(session)
    return ticket


def check_writable(ticket: Ticket) -> None:
    if ticket.deleted_at is not None:
        raise Conflict("the ticket is deleted; restore it first")
    if ticket.archived_at is not None:
        raise Conflict("the ticket is archived and read-only; unarchive it first")


def check_version(ticket: Ticket, if_match: int | None) -> None:
    if if_match is not None and if_match != ticket.version:
        raise PreconditionFailed(
            f"the ticket changed (version {ticket.version}, you sent {if_match})",
            data={"version": ticket.version},
        )


def flush_change(session: Session) -> None:
    """Flush, turning a concurrent writer's win into PreconditionFailed."""
    try:
        flush(session)
    except StaleDataError:
        raise PreconditionFailed("the ticket was changed by someone else; reload it") from None


def touch(ticket: Ticket) -> None:
    ticket.updated_at = utcnow()


def update_ticket(
    session: Session,
    principal: Principal,
    ticket: Ticket,
    data: TicketUpdate | CustomerTicketUpdate,
    *,
    if_match: int | None = None,
) -> dict[str, list[Any]]:
    """Apply a PATCH; returns ``changes`` {field: [old, new]} (empty when nothing changed)."""
    check_version(ticket, if_match)
    check_writable(ticket)
    fields = data.model_dump(exclude_unset=True)
    # One UPDATE (one version bump) for the whole PATCH: no flush midway.
    with session.no_autoflush:
        changes: dict[str, list[Any]] = {}
        for name in ("title", "description"):
            if (
                name in fields
                and fields[name] is not None
                and fields[name] != getattr(ticket, name)
            ):
                changes[name] = [getattr(ticket, name), fields[name]]
                setattr(ticket, name, fields[name])
        if fields.get("status") is not None and fields["status"] != ticket.status:
            check_transition(ticket.status, fields["status"])
            changes["status"] = [ticket.status, fields["status"]]
            ticket.status = fields["status"]
        if fields.get("priority") is not None:
            rank = PRIORITY_RANK[fields["priority"]]
            if rank != ticket.priority:
                changes["priority"] = [PRIORITIES[ticket.priority], fields["priority"]]
                ticket.priority = rank
        if "assignee_id" in fields and fields["assignee_id"] != ticket.assignee_id:
            assignee = _check_assignee(session, fields["assignee_id"])
            changes["assignee"] = [
                str(ticket.assignee_id) if ticket.assignee_id else None,
                str(assignee.id) if assignee else None,
            ]
            ticket.assignee_id = assignee.id if assignee else None
            ticket.assignee = assignee
        if fields.get("tags") is not None:
            new_tags = sorted(set(fields["tags"]))
            if new_tags != ticket.tags:
                changes["tags"] = [ticket.tags, new_tags]
                keep = {row.tag: row for row in ticket.tag_rows}
                ticket.tag_rows = [keep.get(tag) or TicketTag(tag=tag) for tag in new_tags]
        if fields.get("custom_fields") is not None:
            merged = validate_custom_fields(
                session, ticket.custom_fields or {}, fields["custom_fields"], creating=False
            )
            if merged != (ticket.custom_fields or {}):
                changes["custom_fields"] = [ticket.custom_fields or {}, merged]
                ticket.custom_fields = merged
        for key in ("title", "description"):
            if key in fields and fields[key] is None:
                raise ValidationFailed.on(key, "cannot be null")
    if changes:
        record_change(session, principal, ticket, changes)
    return changes


def record_change(
    session: Session, principal: Principal, ticket: Ticket, changes: dict[str, list[Any]]
) -> None:
    """Touch the ticket and write the audit rows and the ``ticket.updated`` event."""
    touch(ticket)
    flush_change(session)
    for name, (old, new) in changes.items():
        audit(session, ticket, principal, "updated", name, old, new)
    record_event(
        session, "ticket.updated", ticket=ticket, actor=principal.as_actor(), changes=changes
    )


def soft_delete(session: Session, principal: Principal, ticket: Ticket) -> None:
    require_staff(principal)
    if ticket.deleted_at is not None:
        return
    ticket.deleted_at = utcnow()
    touch(ticket)
    flush_change(session)
    audit(session, ticket, principal, "deleted")
    record_event(session, "ticket.deleted", ticket=ticket, actor=principal.as_actor())


def restore(session: Session, principal: Principal, ticket: Ticket) -> None:
    require_staff(principal)
    if ticket.deleted_at is None:
        return
    ticket.deleted_at = None
    touch(ticket)
    flush_change(session)
    audit(session, ticket, principal, "restored")
    record_event(session, "ticket.restored", ticket=ticket, actor=principal.as_actor())


def archive(session: Session, principal: Principal, ticket: Ticket) -> None:
    require_staff(principal)
    if ticket.deleted_at is not None:
        raise Conflict("the ticket is deleted; restore it first")
    if ticket.archived_at is not None:
        return
    ticket.archived_at = utcnow()
    touch(ticket)
    flush_change(session)
    audit(session, ticket, principal, "archived")
    record_event(session, "ticket.archived", ticket=ticket, actor=principal.as_actor())


def unarchive(session: Session, principal: Principal, ticket: Ticket) -> None:
    require_staff(principal)
    if ticket.archived_at is None:
        return
    old = ticket.archived_at.isoformat()
    ticket.archived_at = None
    audit(session, ticket, principal, "unarchived")
    record_change(session, principal, ticket, {"archived_at": [old, None]})


def purge(
    session: Session, principal: Principal, ticket: Ticket, *, force: bool = False
) -> list[str]:
    """Remove the ticket and everything of it for good, where the policy allows.

    ``force`` skips the soft-delete requirement (erasure of a customer).
    Returns the sha256 of attachment files that may now be unreferenced; a
    storage clean-up task is queued for them in the same transaction.
    """
    require_admin(principal)
    policy = get_deletion_policy(session)
    if not force and policy.require_soft_delete_before_purge and ticket.deleted_at is None:
        raise Conflict(
            "the deletion policy requires a soft delete before a purge: DELETE the ticket first"
        )
    from gateway.attachments.models import Attachment

    hashes = sorted(
        set(session.scalars(select(Attachment.sha256).where(Attachment.ticket_id == ticket.id)))
    )
    record_event(session, "ticket.deleted", ticket=ticket, actor=principal.as_actor(), purged=True)
    if hashes:
        enqueue(session, "storage.collect", f"purge:{ticket.id}", {"sha256": hashes})
    session.delete(ticket)
    session.flush()
    return hashes


def ensure_exists(session: Session, ticket_id: uuid.UUID) -> Ticket:
    ticket = session.get(Ticket, ticket_id)
    if ticket is None:
        raise NotFound("no such ticket")
    return ticket
