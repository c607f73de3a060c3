"""Ticket metadata, tags and custom fields.

Every change to a ticket here goes through ``record_change`` of the ticket
services: the version bumps, the audit trail gets a row per field, and a
``ticket.updated`` event is written in the same transaction.
"""

from __future__ import annotations

import math
import uuid
from collections import defaultdict
from collections.abc import Iterable
from datetime import date
from typing import TYPE_CHECKING, Any, cast

from sqlalchemy import Table, bindparam, func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from gateway.audit import log_action
from gateway.db import DriverQuery, utcnow
from gateway.errors import Conflict, FieldError, NotFound, ValidationFailed
from gateway.metadata.models import CustomFieldDefinition, TicketMetadata
from gateway.metadata.schemas import CustomFieldCreate, CustomFieldUpdate, definition_out
from gateway.permissions import Principal, require_admin, require_staff
from gateway.schemas import METADATA_KEY_RE

if TYPE_CHECKING:
    from gateway.tickets.models import Ticket

MAX_METADATA_KEYS = 100
MAX_TAGS = 50


_metadata_rows = cast(Table, TicketMetadata.__table__)
_METADATA_FOR = (
    select(_metadata_rows.c.ticket_id, _metadata_rows.c.key, _metadata_rows.c.value)
    .where(_metadata_rows.c.ticket_id.in_(bindparam("ids", expanding=True)))
    .order_by(_metadata_rows.c.key)
)


def metadata_for(
    session: Session, ticket_ids: Iterable[uuid.UUID]
) -> dict[uuid.UUID, dict[str, str]]:
    """Each ticket's metadata, keys in order; a Core read of three columns.

    The ticket reads (GET /tickets, GET /tickets/{ref}) aggregate metadata in
    their own statement instead; see ``tickets.services.ticket_read_select``.
    """
    ids = list(ticket_ids)
    result: dict[uuid.UUID, dict[str, str]] = defaultdict(dict)
    if not ids:
        return result
    if session.autoflush:
        session.flush()  # as the ORM's autoflush did: a caller's pending rows count
    for ticket_id, key, value in session.connection().execute(_METADATA_FOR, {"ids": ids}):
        result[ticket_id][key] = value
    return result


def check_metadata_key(key: str) -> None:
    if not METADATA_KEY_RE.match(key):
        raise ValidationFailed.on("key", "keys match [a-z0-9_.-]{1,64}")


# --- metadata --------------------------------------------------------------


def put_metadata(
    session: Session, principal: Principal, ticket: Ticket, key: str, value: str
) -> dict[str, str]:
    """Set one key (create or replace); returns the ticket's whole metadata."""
    from gateway.tickets.services import check_writable, record_change

    require_staff(principal)
    check_writable(ticket)
    check_metadata_key(key)
    row = session.scalar(
        select(TicketMetadata).where(
            TicketMetadata.ticket_id == ticket.id, TicketMetadata.key == key
        )
    )
    if row is None:
        count = session.scalar(select(func.count()).where(TicketMetadata.ticket_id == ticket.id))
        if (count or 0) >= MAX_METADATA_KEYS:
            raise ValidationFailed.on("key", f"a ticket has at most {MAX_METADATA_KEYS} keys")
        session.add(TicketMetadata(ticket_id=ticket.id, key=key, value=value))
        record_change(session, principal, ticket, {f"metadata.{key}": [None, value]})
    elif row.value != value:
        old, row.value, row.updated_at = row.value, value, utcnow()
        record_change(session, principal, ticket, {f"metadata.{key}": [old, value]})
    session.flush()
    return metadata_for(session, [ticket.id]).get(ticket.id, {})


def delete_metadata(session: Session, principal: Principal, ticket: Ticket, key: str) -> None:
    from gateway.tickets.services import check_writable, record_change

    require_staff(principal)
    check_writable(ticket)
    check_metadata_key(key)
    row = session.scalar(
        select(TicketMetadata).where(
            TicketMetadata.ticket_id == ticket.id, TicketMetadata.key == key
        )
    )
    if row is None:
        raise NotFound(f"the ticket has no metadata key {key}")
    old = row.value
    session.delete(row)
    record_change(session, principal, ticket, {f"metadata.{key}": [old, None]})


# --- tags ------------------------------------------------------------------


def add_tag(session: Session, principal: Principal, ticket: Ticket, tag: str) -> list[str]:
    from gateway.tickets.models import TicketTag
    from gateway.tickets.services import check_writable, record_change

    require_staff(principal)
    check_writable(ticket)
    before = ticket.tags
    if tag in before:
        return before
    if len(before) >= MAX_TAGS:
        raise ValidationFailed.on("tag", f"a ticket has at most {MAX_TAGS} tags")
    ticket.tag_rows.append(TicketTag(ticket_id=ticket.id, tag=tag))
    ticket.tag_rows.sort(key=lambda row: row.tag)
    record_change(session, principal, ticket, {"tags": [before, ticket.tags]})
    return ticket.tags


def remove_tag(session: Session, principal: Principal, ticket: Ticket, tag: str) -> list[str]:
    from gateway.tickets.services import check_writable, record_change

    require_staff(principal)
    check_writable(ticket)
    before = ticket.tags
    if tag not in before:
        raise NotFound(f"the ticket has no tag {tag}")
    ticket.tag_rows = [row for row in ticket.tag_rows if row.tag != tag]
    record_change(session, principal, ticket, {"tags": [before, ticket.tags]})
    return ticket.tags


def tags_in_use(session: Session, principal: Principal) -> list[dict[str, Any]]:
    """Every tag on a live ticket, with how many carry it (staff only)."""
    from gateway.tickets.models import Ticket, TicketTag

    require_staff(principal)
    rows = session.execute(
        select(TicketTag.tag, func.count())
        .join(Ticket, Ticket.id == TicketTag.ticket_id)
        .where(Ticket.deleted_at.is_(None))
        .group_by(TicketTag.tag)
        .order_by(func.count().desc(), TicketTag.tag)
    )
    return [{"tag": tag, "count": count} for tag, count in rows]


# --- custom field definitions ---------------------------------------------


def live_definitions(session: Session) -> dict[str, CustomFieldDefinition]:
    return {
        d.key: d
        for d in session.scalars(
            select(CustomFieldDefinition)
            .where(CustomFieldDefinition.deleted_at.is_(None))
            .order_by(CustomFieldDefinition.key)
        )
    }


_FIELD_KINDS = DriverQuery(
    select(CustomFieldDefinition.key, CustomFieldDefinition.type).where(
        CustomFieldDefinition.deleted_at.is_(None)
    )
)


def live_field_kinds(session: Session) -> dict[str, str]:
    """Each live definition's key and type, for the ``cf.<key>`` list filters.

    One fixed Core statement on the request's connection (a read never builds an
    ORM Session for it): loading the definitions as ORM objects was a quarter of
    the CPU of a list request with a ``cf.`` filter.
    """
    return dict(_FIELD_KINDS.rows(session, {}))


def get_definition(session: Session, key: str) -> CustomFieldDefinition:
    defn = session.get(CustomFieldDefinition, key)
    if defn is None or defn.deleted_at is not None:
        raise NotFound(f"no custom field {key}")
    return defn


def create_definition(
    session: Session, principal: Principal, data: CustomFieldCreate
) -> CustomFieldDefinition:
    require_admin(principal)
    existing = session.get(CustomFieldDefinition, data.key)
    if existing is not None and existing.deleted_at is None:
        raise Conflict(f"a custom field {data.key} exists already")
    if existing is not None:
        # Re-creating a removed key: the old values on tickets must still fit.
        session.delete(existing)
        session.flush()
    defn = CustomFieldDefinition(
        key=data.key,
        label=data.label,
        type=data.type,
        options=data.options,
        required=data.required,
        created_at=utcnow(),
    )
    session.add(defn)
    try:
        session.flush()
    except IntegrityError:
        raise Conflict(f"a custom field {data.key} exists already") from None
    log_action(
        session, principal, "custom_field.created", "custom_field", defn.key, **definition_out(defn)
    )
    return defn


def update_definition(
    session: Session, principal: Principal, key: str, data: CustomFieldUpdate
) -> CustomFieldDefinition:
    require_admin(principal)
    defn = get_definition(session, key)
    fields = data.model_dump(exclude_unset=True)
    if "options" in fields:
        if defn.type != "enum":
            raise ValidationFailed.on("options", "only enum fields take options")
        if not fields["options"] or len(set(fields["options"])) != len(fields["options"]):
            raise ValidationFailed.on("options", "an enum needs distinct options")
        defn.options = fields["options"]
    if fields.get("label") is not None:
        defn.label = fields["label"]
    if fields.get("required") is not None:
        defn.required = fields["required"]
    defn.updated_at = utcnow()
    log_action(session, principal, "custom_field.updated", "custom_field", key, **fields)
    session.flush()
    return defn


def delete_definition(session: Session, principal: Principal, key: str) -> None:
    """Soft removal: new values are refused, stored values and history stay readable."""
    require_admin(principal)
    defn = get_definition(session, key)
    defn.deleted_at = utcnow()
    log_action(session, principal, "custom_field.removed", "custom_field", key)


def _coerce(defn: CustomFieldDefinition, value: Any) -> Any:
    kind = defn.type
    if kind == "text":
        if not isinstance(value, str) or len(value) > 4096:
            raise ValueError("must be text of at most 4096 characters")
        return value
    if kind == "number":
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ValueError("must be a number")
        if not math.isfinite(value):
            raise ValueError("must be a finite number")
        return value
    if kind == "boolean":
        if not isinstance(value, bool):
            raise ValueError("must be true or false")
        return value
    if kind == "date":
        if not isinstance(value, str):
            raise ValueError("must be a date (YYYY-MM-DD)")
        try:
            return date.fromisoformat(value).isoformat()
        except ValueError:
            raise ValueError("must be a date (YYYY-MM-DD)") from None
    if kind == "enum":
        if value not in (defn.options or []):
            raise ValueError(f"must be one of {', '.join(map(str, defn.options or []))}")
        return value
    raise ValueError(f"field has an unknown type {kind}")


def parse_filter_value(key: str, kind: str | None, raw: str) -> Any:
    """Turn a ``cf.<key>=<raw>`` query value into the stored JSON value, by the type
    (``kind``) of the field's live definition; ``None``: no such field, matched as text."""
    if kind is None:
        return raw
    try:
        if kind == "number":
            number = float(raw)
            if not math.isfinite(number):
                raise ValueError
            return int(number) if number.is_integer() and "." not in raw else number
        if kind == "boolean":
            if raw.lower() not in ("true", "false"):
                raise ValueError
            return raw.lower() == "true"
        if kind == "date":
            return date.fromisoformat(raw).isoformat()
    except ValueError:
        raise ValidationFailed.on(f"cf.{key}", f"not a valid {kind}") from None
    return raw


def validate_custom_fields(
    session: Session, current: dict[str, Any], changes: dict[str, Any], *, creating: bool
) -> dict[str, Any]:
    """Merge ``changes`` into ``current`` and check the result against the definitions.

    A ``None`` value removes the key. Raises ValidationFailed naming each bad field.
    """
    definitions = live_definitions(session)
    merged = dict(current)
    errors: list[FieldError] = []
    for key, value in changes.items():
        field = f"custom_fields.{key}"
        if value is None:
            merged.pop(key, None)
            continue
        defn = definitions.get(key)
        if defn is None:
            errors.append(FieldError(field, "no custom field with this key is defined"))
            continue
        try:
            merged[key] = _coerce(defn, value)
        except ValueError as exc:
            errors.append(FieldError(field, str(exc)))
    if creating or changes:
        for key, defn in definitions.items():
            if defn.required and key not in merged:
                errors.append(FieldError(f"custom_fields.{key}", "is required"))
    if errors:
        raise ValidationFailed("some custom fields are invalid", errors=errors)
    return merged
