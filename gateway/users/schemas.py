from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from pydantic import BaseModel, EmailStr, Field, StringConstraints

from gateway.schemas import QueryModel, StrictModel

Role = Literal["admin", "agent", "customer"]
Name = Annotated[str, StringConstraints(max_length=200, strip_whitespace=True)]
SlackId = Annotated[str, StringConstraints(pattern=r"^[UW][A-Z0-9]{2,31}$")]


class UserCreate(StrictModel):
    email: EmailStr
    role: Role
    name: Name = ""
    slack_user_id: SlackId | None = None


class UserUpdate(StrictModel):
    role: Role | None = None
    name: Name | None = None
    slack_user_id: SlackId | None = None
    active: bool | None = None


class UserOut(BaseModel):
    id: str
    email: str
    name: str
    role: Role
    slack_user_id: str | None
    active: bool
    created_at: datetime


class UserPage(BaseModel):
    items: list[UserOut]
    next_cursor: str | None


class UserListQuery(QueryModel):
    role: Role | None = None
    q: Annotated[str, StringConstraints(max_length=200)] | None = None
    limit: int = Field(25, ge=1, le=100)
    cursor: str | None = Field(None, max_length=512)


class TokenOut(BaseModel):
    id: str
    prefix: str
    created_at: datetime
    last_used_at: datetime | None
    revoked_at: datetime | None


class NewToken(TokenOut):
    token: str = Field(description="the secret; shown once, stored only as a hash")


class TokenList(BaseModel):
    items: list[TokenOut]


class ErasureOut(BaseModel):
    user_id: str
    tickets_purged: int
    messages_redacted: int
    files_queued: int
