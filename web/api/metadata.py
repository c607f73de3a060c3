"""Metadata, tags and custom field definitions."""

from __future__ import annotations

from flask import Blueprint
from pydantic import TypeAdapter, ValidationError
from sqlalchemy.orm import Session

from gateway.errors import ValidationFailed
from gateway.metadata import services
from gateway.metadata.schemas import (
    CustomFieldCreate,
    CustomFieldList,
    CustomFieldOut,
    CustomFieldUpdate,
    MetadataMap,
    MetadataValueIn,
    TagList,
    definition_out,
)
from gateway.metadata.services import metadata_for
from gateway.permissions import Principal, require_staff
from gateway.schemas import Tag
from gateway.tickets.schemas import TicketOut
from gateway.tickets.services import get_ticket
from web.api.tickets import ticket_response
from web.spec import endpoint

bp = Blueprint("metadata", __name__)
_tag = TypeAdapter(Tag)


def normalise_tag(raw: str) -> str:
    try:
        return _tag.validate_python(raw)
    except ValidationError as exc:
        raise ValidationFailed.on("tag", exc.errors()[0]["msg"]) from None


@bp.get("/tickets/<ref>/metadata")
@endpoint(summary="A ticket's metadata", tag="metadata", response=MetadataMap)
def show(session: Session, principal: Principal, ref: str):
    ticket = get_ticket(session, principal, ref)
    return metadata_for(session, [ticket.id]).get(ticket.id, {})


@bp.put("/tickets/<ref>/metadata/<key>")
@endpoint(
    summary="Set one metadata key (keys match [a-z0-9_.-]{1,64}, values ≤ 4 KiB)",
    tag="metadata",
    body=MetadataValueIn,
    response=MetadataMap,
    errors=(409,),
)
def put(session: Session, principal: Principal, ref: str, key: str, body: MetadataValueIn):
    ticket = get_ticket(session, principal, ref)
    return services.put_metadata(session, principal, ticket, key, body.value)


@bp.delete("/tickets/<ref>/metadata/<key>")
@endpoint(summary="Remove one metadata key", tag="metadata", status=204, errors=(409,))
def delete(session: Session, principal: Principal, ref: str, key: str):
    ticket = get_ticket(session, principal, ref)
    services.delete_metadata(session, principal, ticket, key)
    return None, 204


@bp.put("/tickets/<ref>/tags/<tag>")
@endpoint(
    summary="Add a tag (normalised: lower case, spaces to dashes)",
    tag="metadata",
    response=TicketOut,
    etag=True,
    errors=(409,),
)
def add_tag(session: Session, principal: Principal, ref: str, tag: str):
    ticket = get_ticket(session, principal, ref)
    services.add_tag(session, principal, ticket, normalise_tag(tag))
    return ticket_response(session, ticket, principal)


@bp.delete("/tickets/<ref>/tags/<tag>")
@endpoint(summary="Remove a tag", tag="metadata", response=TicketOut, etag=True, errors=(409,))
def remove_tag(session: Session, principal: Principal, ref: str, tag: str):
    ticket = get_ticket(session, principal, ref)
    services.remove_tag(session, principal, ticket, normalise_tag(tag))
    return ticket_response(session, ticket, principal)


@bp.get("/tags")
@endpoint(summary="Tags in use with counts", tag="metadata", response=TagList)
def tags(session: Session, principal: Principal):
    return {"items": services.tags_in_use(session, principal)}


@bp.get("/custom-fields")
@endpoint(summary="Custom field definitions", tag="custom fields", response=CustomFieldList)
def fields(session: Session, principal: Principal):
    require_staff(principal)
    return {"items": [definition_out(d) for d in services.live_definitions(session).values()]}


@bp.post("/custom-fields")
@endpoint(
    summary="Define a custom field (admin)",
    tag="custom fields",
    body=CustomFieldCreate,
    response=CustomFieldOut,
    status=201,
    errors=(409,),
)
def create_field(session: Session, principal: Principal, body: CustomFieldCreate):
    return definition_out(services.create_definition(session, principal, body)), 201


@bp.patch("/custom-fields/<key>")
@endpoint(
    summary="Change a custom field's label, options or required flag (admin)",
    tag="custom fields",
    body=CustomFieldUpdate,
    response=CustomFieldOut,
)
def update_field(session: Session, principal: Principal, key: str, body: CustomFieldUpdate):
    return definition_out(services.update_definition(session, principal, key, body))


@bp.delete("/custom-fields/<key>")
@endpoint(
    summary="Remove a custom field (admin); stored values and history stay readable",
    tag="custom fields",
    status=204,
)
def delete_field(session: Session, principal: Principal, key: str):
    services.delete_definition(session, principal, key)
    return None, 204
