"""Users and their API tokens.

Tokens are 256 random bits, handed out once and stored only as SHA-256; a
lookup is by hash (so the secret never reaches the database) and confirmed
with a constant-time comparison.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import uuid
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, cast

from sqlalchemy import Table, bindparam, func, or_, select, update
from sqlalchemy.orm import Session

from gateway.db import DriverQuery, flush, lookup, new_id, utcnow
from gateway.errors import Conflict, NotFound, Unauthorized, ValidationFailed
from gateway.pagination import decode_cursor, encode_cursor
from gateway.permissions import Principal, require_admin
from gateway.users.models import ROLES, ApiToken, User
from gateway.users.schemas import UserCreate, UserListQuery, UserUpdate

LAST_USED_RESOLUTION = timedelta(minutes=10)
TOKEN_PREFIX = "sg_"  # noqa: S105 -- a public prefix, not a secret


def normalise_email(email: str) -> str:
    return email.strip().lower()


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def user_out(user: User) -> dict[str, Any]:
    return {
        "id": str(user.id),
        "email": user.email,
        "name": user.name,
        "role": user.role,
        "slack_user_id": user.slack_user_id,
        "active": user.active,
        "created_at": user.created_at.isoformat(),
    }


def token_out(token: ApiToken) -> dict[str, Any]:
    return {
        "id": str(token.id),
        "prefix": token.prefix,
        "created_at": token.created_at.isoformat(),
        "last_used_at": token.last_used_at.isoformat() if token.last_used_at else None,
        "revoked_at": token.revoked_at.isoformat() if token.revoked_at else None,
    }


def get_user(session: Session, user_id: uuid.UUID | str) -> User:
    try:
        uid = user_id if isinstance(user_id, uuid.UUID) else uuid.UUID(str(user_id))
    except ValueError:
        raise NotFound("no such user") from None
    user = session.get(User, uid)
    if user is None:
        raise NotFound("no such user")
    return user


def find_user_by_email(session: Session, email: str) -> User | None:
    email = normalise_email(email)
    return lookup(
        session,
        "user_by_email",
        email,
        lambda: session.scalar(select(User).where(User.email == email)),
    )


def create_user(session: Session, data: UserCreate) -> User:
    email = normalise_email(str(data.email))
    if find_user_by_email(session, email) is not None:
        raise Conflict(f"a user with email {email} exists already")
    if data.slack_user_id and session.scalar(
        select(User.id).where(User.slack_user_id == data.slack_user_id)
    ):
        raise Conflict(f"slack user {data.slack_user_id} is mapped to another user already")
    user = User(email=email, role=data.role, name=data.name, slack_user_id=data.slack_user_id)
    session.add(user)
    session.flush()
    return user


def get_or_create_customer(session: Session, email: str, name: str | None = None) -> User:
    """The user for an address, created as a customer on first contact."""
    user = find_user_by_email(session, email)
    if user is None:
        # Every value set here: under deferred_flush nothing is flushed (no defaults yet).
        user = User(
            id=new_id(), email=normalise_email(email), role="customer", name=name or "", active=True
        )
        session.add(user)
        flush(session)
    return user


def update_user(session: Session, principal: Principal, user: User, data: UserUpdate) -> User:
    require_admin(principal)
    changes = data.model_dump(exclude_unset=True)
    if principal.user_id == user.id and (
        changes.get("role", "admin") != "admin" or changes.get("active", True) is False
    ):
        raise Conflict("an admin cannot demote or deactivate themselves")
    if changes.get("slack_user_id"):
        other = session.scalar(
            select(User.id).where(
                User.slack_user_id == changes["slack_user_id"], User.id != user.id
            )
        )
        if other:
            raise Conflict("that slack user is mapped to another user already")
    for key, value in changes.items():
        if key in ("role", "active") and value is None:
            raise ValidationFailed.on(key, "cannot be null")
        if key == "name" and value is None:
            value = ""
        setattr(user, key, value)
    session.flush()
    return user


def list_users(session: Session, query: UserListQuery) -> tuple[list[User], str | None]:
    stmt = select(User)
    if query.role:
        stmt = stmt.where(User.role == query.role)
    if query.q:
        like = f"%{query.q.lower()}%"
        stmt = stmt.where(or_(func.lower(User.email).like(like), func.lower(User.name).like(like)))
    if query.cursor:
        after = decode_cursor(query.cursor, kinds=("user",))
        stmt = stmt.where(User.email > after[1])
    rows = list(session.scalars(stmt.order_by(User.email).limit(query.limit + 1)))
    more = len(rows) > query.limit
    rows = rows[: query.limit]
    return rows, encode_cursor("user", rows[-1].email) if more and rows else None


def issue_token(session: Session, user: User) -> tuple[ApiToken, str]:
    """Create a token; returns the row and the secret (never stored)."""
    secret = TOKEN_PREFIX + secrets.token_urlsafe(32)
    token = ApiToken(user_id=user.id, token_hash=hash_token(secret), prefix=secret[:10])
    session.add(token)
    session.flush()
    return token, secret


def revoke_token(session: Session, user: User, token_id: uuid.UUID | str) -> ApiToken:
    try:
        tid = uuid.UUID(str(token_id))
    except ValueError:
        raise NotFound("no such token") from None
    token = session.get(ApiToken, tid)
    if token is None or token.user_id != user.id:
        raise NotFound("no such token")
    if token.revoked_at is None:
        token.revoked_at = utcnow()
    return token


@dataclass(frozen=True, slots=True)
class TokenOwner:
    """The user a valid token belongs to, as :func:`authenticate` read it.

    Plain columns, not a ``User`` object: it has what ``Principal.of`` and the
    sign-in page use (``id``, ``role``, ``email``, ``name``), and nothing to
    change. Load the ``User`` for that.
    """

    id: uuid.UUID
    role: str
    email: str
    name: str
    active: bool

    @property
    def is_staff(self) -> bool:
        return self.role in ("admin", "agent")


_api_tokens = cast(Table, ApiToken.__table__)
_users = cast(Table, User.__table__)
_TOKEN_LOOKUP = (
    select(
        _api_tokens.c.id,
        _api_tokens.c.token_hash,
        _api_tokens.c.revoked_at,
        _api_tokens.c.last_used_at,
        _users.c.id,
        _users.c.role,
        _users.c.email,
        _users.c.name,
        _users.c.active,
    )
    .select_from(_api_tokens.join(_users, _users.c.id == _api_tokens.c.user_id))
    .where(_api_tokens.c.token_hash == bindparam("digest"))
)
_TOKEN_QUERY = DriverQuery(_TOKEN_LOOKUP)
_TOUCH_TOKEN = (
    update(_api_tokens)
    .where(_api_tokens.c.id == bindparam("token_id"))
    .values(last_used_at=bindparam("now"))
)


def authenticate(session: Session, secret: str) -> TokenOwner:
    """The active user a bearer token belongs to; Unauthorized otherwise.

    One row by Core (token and user columns), and at most every
    ``LAST_USED_RESOLUTION`` a Core UPDATE of the token's ``last_used_at``,
    in the caller's transaction.
    """
    if not secret.startswith(TOKEN_PREFIX) or len(secret) > 128:
        raise Unauthorized("invalid token")
    digest = hash_token(secret)
    found = _TOKEN_QUERY.rows(session, {"digest": digest})
    if not found:
        raise Unauthorized("invalid token")
    row = found[0]
    token_id, token_hash, revoked_at, last_used_at, user_id, role, email, name, active = row
    if not hmac.compare_digest(token_hash, digest):
        raise Unauthorized("invalid token")
    if revoked_at is not None or not active:
        raise Unauthorized("token revoked or user inactive")
    now = utcnow()
    # Coarse on purpose: a write per request would cost every read its speed.
    if last_used_at is None or now - last_used_at > LAST_USED_RESOLUTION:
        session.connection().execute(_TOUCH_TOKEN, {"token_id": token_id, "now": now})
    return TokenOwner(id=user_id, role=role, email=email, name=name, active=active)


def add_user_cli(
    session: Session, email: str, role: str, name: str | None, slack_id: str | None
) -> tuple[User, str]:
    """``supportgate user add``: create the user, or a new token for an existing one."""
    if role not in ROLES:
        raise ValidationFailed.on("role", f"must be one of {', '.join(ROLES)}")
    user = find_user_by_email(session, email)
    if user is None:
        user = create_user(
            session,
            UserCreate(email=email, role=role, name=name or "", slack_user_id=slack_id),  # type: ignore[arg-type]
        )
    else:
        user.role = role
        if name is not None:
            user.name = name
        if slack_id is not None:
            user.slack_user_id = slack_id
        user.active = True
    _, secret = issue_token(session, user)
    return user, secret
