"""Request and response models of the attachment routes."""

from __future__ import annotations

import uuid

from pydantic import BaseModel, Field

from gateway.conversations.schemas import AttachmentOut
from gateway.schemas import QueryModel


class AttachmentForm(BaseModel):
    """The non-file fields of an upload (``multipart/form-data``; the file is ``file``)."""

    message_id: uuid.UUID | None = Field(
        None, description="A message of the ticket to attach the file to."
    )


class AttachmentListQuery(QueryModel):
    limit: int = Field(25, ge=1, le=100)
    cursor: str | None = Field(None, max_length=512)


class AttachmentPage(BaseModel):
    items: list[AttachmentOut]
    next_cursor: str | None
