"""Stream grants: a short-lived, URL-safe credential for one event stream.

``GET /api/v1/events`` on the API answers 307 to the events server (its own
process and port, see docs/architecture.md). HTTP clients drop the
``Authorization`` header when a redirect changes the port, so the redirect
carries a grant instead: ``<token id>.<expiry>.<mac>``, where the MAC is an
HMAC-SHA256 keyed with the token's stored hash. No new secret is needed,
only the database can mint or check one, it dies with its token (revoked,
user deactivated) and after ``GRANT_TTL`` seconds, and it allows nothing but
opening an event stream.
"""

from __future__ import annotations

import base64
import hmac
import time
import uuid

from sqlalchemy import select
from sqlalchemy.orm import Session

from gateway.errors import Unauthorized
from gateway.users.models import ApiToken, User
from gateway.users.services import hash_token

GRANT_TTL = 60


def _mac(token_hash: str, token_id: uuid.UUID, expires: int) -> str:
    digest = hmac.new(
        token_hash.encode(), f"sse-grant:{token_id}:{expires}".encode(), "sha256"
    ).digest()
    return base64.urlsafe_b64encode(digest).decode().rstrip("=")


def issue_grant(session: Session, bearer: str, *, now: float | None = None) -> str:
    """A grant for the (already authenticated) bearer token."""
    token = session.scalar(select(ApiToken).where(ApiToken.token_hash == hash_token(bearer)))
    if token is None:
        raise Unauthorized("invalid token")
    return _grant(token, now)


def issue_grant_for_token(
    session: Session, token_id: uuid.UUID, *, now: float | None = None
) -> str:
    """A grant for the token a console session was opened with (already checked)."""
    token = session.get(ApiToken, token_id)
    if token is None:
        raise Unauthorized("invalid token")
    return _grant(token, now)


def _grant(token: ApiToken, now: float | None) -> str:
    expires = int(now if now is not None else time.time()) + GRANT_TTL
    return f"{token.id.hex}.{expires}.{_mac(token.token_hash, token.id, expires)}"


def check_grant(session: Session, grant: str, *, now: float | None = None) -> User:
    """The user a grant speaks for; Unauthorized when forged, expired or revoked."""
    try:
        raw_id, raw_expires, mac = grant.split(".")
        token_id, expires = uuid.UUID(hex=raw_id), int(raw_expires)
    except ValueError:
        raise Unauthorized("invalid stream grant") from None
    if expires < (now if now is not None else time.time()):
        raise Unauthorized("stream grant expired; ask GET /api/v1/events for a new one")
    row = session.execute(
        select(ApiToken, User)
        .join(User, User.id == ApiToken.user_id)
        .where(ApiToken.id == token_id)
    ).first()
    if row is None:
        raise Unauthorized("invalid stream grant")
    token, user = row
    if not hmac.compare_digest(_mac(token.token_hash, token.id, expires), mac):
        raise Unauthorized("invalid stream grant")
    if token.revoked_at is not None or not user.active:
        raise Unauthorized("token revoked or user inactive")
    return user
