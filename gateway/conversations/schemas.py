from __future__ import annotations

import uuid
from datetime import datetime
from typing import Literal

from pydantic import BaseModel, Field

from gateway.schemas import AuthorRef, Body, QueryModel, StrictModel


class MessageCreate(StrictModel):
    body: Body
    format: Literal["text", "markdown", "html"] = "text"
    internal: bool = False
    in_reply_to: uuid.UUID | None = None


class AttachmentOut(BaseModel):
    id: str
    ticket_id: str
    message_id: str | None
    filename: str
    content_type: str
    size: int
    sha256: str
    inline: bool
    created_at: datetime
    download_url: str
    preview_url: str | None
    quarantined: bool = Field(
        description="Came by mail although the policy refuses it: kept, never previewed, "
        "downloadable by staff only, always as application/octet-stream."
    )
    quarantine_reason: str | None


class MessageOut(BaseModel):
    id: str
    ticket_id: str
    author: AuthorRef | None
    kind: Literal["customer", "reply", "note", "system"]
    channel: Literal["email", "slack", "api", "web"]
    body_text: str
    body_html: str | None
    in_reply_to: str | None
    email_message_id: str | None
    attachments: list[AttachmentOut]
    created_at: datetime


class MessagePage(BaseModel):
    items: list[MessageOut]
    next_cursor: str | None


class MessageListQuery(QueryModel):
    limit: int = Field(25, ge=1, le=100)
    cursor: str | None = Field(None, max_length=512)
