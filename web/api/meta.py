"""Self-description: the OpenAPI document and the workflow as data."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Response, current_app, json
from pydantic import BaseModel
from sqlalchemy.orm import Session

from gateway.permissions import Principal
from gateway.tickets.workflow import PRIORITIES, STATUSES, TRANSITIONS
from web.spec import build_openapi, documented, endpoint

bp = Blueprint("meta", __name__)


class StatusInfo(BaseModel):
    name: str
    transitions: list[str]
    initial: bool


class StatusList(BaseModel):
    items: list[StatusInfo]


class PriorityInfo(BaseModel):
    name: str
    rank: int
    default: bool


class PriorityList(BaseModel):
    items: list[PriorityInfo]


@bp.get("/openapi.json")
@documented(summary="This API as OpenAPI 3.1", tag="meta")
def openapi() -> Response:
    cache = current_app.extensions.setdefault("supportgate.openapi", {})
    if "doc" not in cache:
        cache["doc"] = json.dumps(build_openapi(current_app))
    return Response(cache["doc"], mimetype="application/json")


@bp.get("/meta/statuses")
@endpoint(summary="Ticket statuses and their allowed transitions", tag="meta", response=StatusList)
def statuses(session: Session, principal: Principal) -> dict[str, Any]:
    return {
        "items": [
            {"name": s, "transitions": sorted(TRANSITIONS[s]), "initial": s == "new"}
            for s in STATUSES
        ]
    }


@bp.get("/meta/priorities")
@endpoint(summary="Ticket priorities in order of severity", tag="meta", response=PriorityList)
def priorities(session: Session, principal: Principal) -> dict[str, Any]:
    return {
        "items": [
            {"name": p, "rank": rank, "default": p == "normal"} for rank, p in enumerate(PRIORITIES)
        ]
    }
