from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Annotated, Any, ClassVar, Literal

from pydantic import BaseModel, EmailStr, Field, StringConstraints, field_validator

from gateway.schemas import (
    Body,
    MetadataKey,
    MetadataValue,
    QueryModel,
    StrictModel,
    Tag,
    UserRef,
)

Status = Literal["new", "open", "pending", "on_hold", "solved", "closed"]
Priority = Literal["low", "normal", "high", "urgent"]
Channel = Literal["email", "slack", "api", "web"]
Title = Annotated[str, StringConstraints(min_length=1, max_length=300, strip_whitespace=True)]
SortKey = Literal[
    "created_at",
    "-created_at",
    "updated_at",
    "-updated_at",
    "priority",
    "-priority",
    "status",
    "-status",
    "number",
    "-number",
]


class CustomerTicketCreate(StrictModel):
    """What a customer may send when opening a ticket for themselves."""

    title: Title
    description: Body = ""
    priority: Priority = "normal"


class TicketCreate(CustomerTicketCreate):
    """What an agent or admin may send; ``customer_email`` defaults to the caller."""

    tags: list[Tag] = Field(default_factory=list, max_length=50)
    metadata: dict[MetadataKey, MetadataValue] = Field(default_factory=dict, max_length=100)
    custom_fields: dict[MetadataKey, Any] = Field(default_factory=dict, max_length=100)
    assignee_id: uuid.UUID | None = None
    customer_email: EmailStr | None = None
    customer_name: Annotated[str, StringConstraints(max_length=200)] | None = None


class TicketUpdate(StrictModel):
    """Fields an agent or admin may change; absent fields stay as they are.

    ``custom_fields`` is merged key by key; a ``null`` value removes a key.
    ``tags`` replaces the whole set.
    """

    title: Title | None = None
    description: Body | None = None
    status: Status | None = None
    priority: Priority | None = None
    assignee_id: uuid.UUID | None = None
    tags: list[Tag] | None = Field(default=None, max_length=50)
    custom_fields: dict[MetadataKey, Any] | None = Field(default=None, max_length=100)


class CustomerTicketUpdate(StrictModel):
    """A customer may only mark their own ticket solved."""

    status: Literal["solved"]


class TicketOut(BaseModel):
    id: str
    number: int
    title: str
    description: str
    status: Status
    priority: Priority
    channel: Channel
    customer: UserRef
    assignee: UserRef | None
    tags: list[str]
    metadata: dict[str, str]
    custom_fields: dict[str, Any]
    message_count: int
    created_at: datetime
    updated_at: datetime
    archived_at: datetime | None
    deleted_at: datetime | None
    version: int


class TicketPage(BaseModel):
    items: list[TicketOut]
    next_cursor: str | None


class TicketListQuery(QueryModel):
    """List filters. ``metadata.<key>=<value>`` and ``cf.<key>=<value>`` are
    accepted as well (any number, all must match)."""

    extra_prefixes: ClassVar[tuple[str, ...]] = ("metadata.", "cf.")

    status: str | None = Field(None, description="comma list of statuses")
    priority: str | None = Field(None, description="comma list of priorities")
    assignee: str | None = Field(None, description="`me`, `none` or a user id")
    customer: str | None = Field(None, description="the customer's email")
    tag: list[Tag] = Field(default_factory=list, description="repeatable; all must match")
    q: Annotated[str, StringConstraints(max_length=200)] | None = None
    created_after: datetime | None = None
    created_before: datetime | None = None
    updated_after: datetime | None = None
    sort: SortKey = "-updated_at"
    limit: int = Field(25, ge=1, le=100)
    cursor: Annotated[str, StringConstraints(max_length=512)] | None = None
    include_archived: bool = False
    include_deleted: bool = False

    @field_validator("created_after", "created_before", "updated_after")
    @classmethod
    def _utc_when_naive(cls, value: datetime | None) -> datetime | None:
        """A time without a zone, or a bare date, is taken as UTC."""
        if value is not None and value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value


class HistoryEntry(BaseModel):
    id: int
    at: datetime
    actor: UserRef | None
    action: str
    field: str | None
    old_value: Any = None
    new_value: Any = None


class HistoryPage(BaseModel):
    items: list[HistoryEntry]
    next_cursor: str | None


class PurgeQuery(QueryModel):
    purge: bool = False
