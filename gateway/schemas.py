"""Shared pieces of the request and response schemas.

The same pydantic models validate requests and generate ``openapi.json``, so
the documented API cannot drift from the one that runs.
"""

from __future__ import annotations

import re
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StringConstraints

METADATA_KEY_RE = re.compile(r"^[a-z0-9_.-]{1,64}$")


class StrictModel(BaseModel):
    """Request bodies: unknown fields are a 422, never silently applied."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=False)


class QueryModel(BaseModel):
    model_config = ConfigDict(extra="forbid")


def _normalise_tag(value: str) -> str:
    tag = "-".join(value.strip().lower().split())
    if not tag:
        raise ValueError("a tag cannot be empty")
    if len(tag) > 64:
        raise ValueError("a tag is at most 64 characters")
    if any(ch in tag for ch in ",/\\?#%"):
        raise ValueError("a tag cannot contain , / \\ ? # or %")
    return tag


Tag = Annotated[str, AfterValidator(_normalise_tag)]
MetadataKey = Annotated[str, StringConstraints(pattern=r"^[a-z0-9_.-]{1,64}$")]
MetadataValue = Annotated[str, StringConstraints(max_length=4096)]
Body = Annotated[str, StringConstraints(max_length=200_000)]


class ProblemFieldError(BaseModel):
    field: str
    message: str


class Problem(BaseModel):
    """RFC 9457 problem details."""

    type: str
    title: str
    status: int
    detail: str
    errors: list[ProblemFieldError] = Field(default_factory=list)
    request_id: str | None = None


class UserRef(BaseModel):
    id: str
    email: str
    name: str


class AuthorRef(UserRef):
    role: str


def field_path(loc: tuple[Any, ...]) -> str:
    return ".".join(str(part) for part in loc if part not in ("body", "query"))
