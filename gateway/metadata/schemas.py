from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field, RootModel, StringConstraints, model_validator

from gateway.schemas import MetadataKey, MetadataValue, StrictModel

FieldType = Literal["text", "number", "boolean", "date", "enum"]
Label = Annotated[str, StringConstraints(min_length=1, max_length=200, strip_whitespace=True)]
Option = Annotated[str, StringConstraints(min_length=1, max_length=200)]


class MetadataValueIn(StrictModel):
    value: MetadataValue


class MetadataMap(RootModel[dict[str, str]]):
    """A ticket's metadata, ``{key: value}``."""


class TagCount(BaseModel):
    tag: str
    count: int


class TagList(BaseModel):
    items: list[TagCount]


class CustomFieldCreate(StrictModel):
    key: MetadataKey
    label: Label
    type: FieldType
    options: list[Option] | None = Field(None, max_length=200)
    required: bool = False

    @model_validator(mode="after")
    def _options_for_enum(self) -> CustomFieldCreate:
        if self.type == "enum":
            if not self.options:
                raise ValueError("an enum field needs options")
            if len(set(self.options)) != len(self.options):
                raise ValueError("options must be distinct")
        elif self.options is not None:
            raise ValueError("only enum fields take options")
        return self


class CustomFieldUpdate(StrictModel):
    """``key`` and ``type`` are fixed once created (values depend on them)."""

    label: Label | None = None
    options: list[Option] | None = Field(None, max_length=200)
    required: bool | None = None


class CustomFieldOut(BaseModel):
    key: str
    label: str
    type: FieldType
    options: list[str] | None
    required: bool
    created_at: datetime
    updated_at: datetime | None


class CustomFieldList(BaseModel):
    items: list[CustomFieldOut]


def definition_out(defn: Any) -> dict[str, Any]:
    return {
        "key": defn.key,
        "label": defn.label,
        "type": defn.type,
        "options": defn.options,
        "required": defn.required,
        "created_at": defn.created_at.isoformat(),
        "updated_at": defn.updated_at.isoformat() if defn.updated_at else None,
    }
