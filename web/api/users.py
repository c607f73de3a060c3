"""/api/v1/me and /api/v1/users: who is calling, and user administration."""

from __future__ import annotations

from flask import Blueprint
from sqlalchemy import select
from sqlalchemy.orm import Session

from gateway.permissions import Principal, require_admin
from gateway.users import services
from gateway.users.erasure import erase_customer
from gateway.users.models import ApiToken
from gateway.users.schemas import (
    ErasureOut,
    NewToken,
    TokenList,
    UserCreate,
    UserListQuery,
    UserOut,
    UserPage,
    UserUpdate,
)
from web.spec import endpoint

bp = Blueprint("users", __name__)


@bp.get("/me")
@endpoint(summary="The caller", tag="users", response=UserOut)
def me(session: Session, principal: Principal):
    return services.user_out(services.get_user(session, principal.user_id))  # type: ignore[arg-type]


@bp.get("/users")
@endpoint(summary="List users (admin)", tag="users", query=UserListQuery, response=UserPage)
def index(session: Session, principal: Principal, query: UserListQuery):
    require_admin(principal)
    rows, cursor = services.list_users(session, query)
    return {"items": [services.user_out(u) for u in rows], "next_cursor": cursor}


@bp.post("/users")
@endpoint(
    summary="Create a user (admin)",
    tag="users",
    body=UserCreate,
    response=UserOut,
    status=201,
    errors=(409,),
)
def create(session: Session, principal: Principal, body: UserCreate):
    require_admin(principal)
    return services.user_out(services.create_user(session, body)), 201


@bp.get("/users/<user_id>")
@endpoint(summary="One user (admin)", tag="users", response=UserOut)
def show(session: Session, principal: Principal, user_id: str):
    require_admin(principal)
    return services.user_out(services.get_user(session, user_id))


@bp.patch("/users/<user_id>")
@endpoint(
    summary="Change a user's role, name, Slack id or active flag (admin)",
    tag="users",
    body=UserUpdate,
    response=UserOut,
    errors=(409,),
)
def update(session: Session, principal: Principal, user_id: str, body: UserUpdate):
    require_admin(principal)
    user = services.get_user(session, user_id)
    return services.user_out(services.update_user(session, principal, user, body))


@bp.post("/users/<user_id>/erase")
@endpoint(
    summary="Erase a customer's personal data and tickets (admin, audited)",
    tag="users",
    response=ErasureOut,
    errors=(409,),
)
def erase(session: Session, principal: Principal, user_id: str):
    require_admin(principal)
    return erase_customer(session, principal, services.get_user(session, user_id))


@bp.get("/users/<user_id>/tokens")
@endpoint(summary="A user's API tokens, without secrets (admin)", tag="users", response=TokenList)
def tokens(session: Session, principal: Principal, user_id: str):
    require_admin(principal)
    user = services.get_user(session, user_id)
    rows = session.scalars(
        select(ApiToken).where(ApiToken.user_id == user.id).order_by(ApiToken.created_at)
    )
    return {"items": [services.token_out(t) for t in rows]}


@bp.post("/users/<user_id>/tokens")
@endpoint(
    summary="Issue a new token, shown once (admin)", tag="users", response=NewToken, status=201
)
def new_token(session: Session, principal: Principal, user_id: str):
    require_admin(principal)
    token, secret = services.issue_token(session, services.get_user(session, user_id))
    return {**services.token_out(token), "token": secret}, 201


@bp.delete("/users/<user_id>/tokens/<token_id>")
@endpoint(summary="Revoke a token (admin)", tag="users", status=204)
def revoke_token(session: Session, principal: Principal, user_id: str, token_id: str):
    require_admin(principal)
    services.revoke_token(session, services.get_user(session, user_id), token_id)
    return None, 204
