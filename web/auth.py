"""Authentication of API requests and the two rate limits.

* failed authentications per client address (``auth_failures_per_minute``):
  past the limit every attempt from that address is 429 until the window
  moves on, so tokens cannot be guessed at speed;
* requests per token (``rate_limit_per_minute``).

With Redis configured the counters are shared by every API process; in the
embedded default they live in the process.
"""

from __future__ import annotations

import hashlib
import hmac
import time
import uuid
from dataclasses import dataclass

from flask import g, request
from flask import session as cookie
from limits import RateLimitItem, RateLimitItemPerMinute
from limits.storage import MemoryStorage, Storage, storage_from_string
from limits.strategies import MovingWindowRateLimiter, RateLimiter
from sqlalchemy import select
from sqlalchemy.orm import Session

from gateway.errors import Forbidden, RateLimited, Unauthorized
from gateway.permissions import Principal
from gateway.users.models import ApiToken, User
from gateway.users.services import authenticate

SESSION_COOKIE = "supportgate_session"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


@dataclass
class RateLimits:
    limiter: RateLimiter
    per_token: RateLimitItem | None
    auth_failures: RateLimitItem | None

    @classmethod
    def create(cls, redis_url: str | None, per_minute: int, failures_per_minute: int) -> RateLimits:
        storage: Storage = storage_from_string(redis_url) if redis_url else MemoryStorage()
        return cls(
            limiter=MovingWindowRateLimiter(storage),
            per_token=RateLimitItemPerMinute(per_minute) if per_minute else None,
            auth_failures=(
                RateLimitItemPerMinute(failures_per_minute) if failures_per_minute else None
            ),
        )

    def _retry_after(self, item: RateLimitItem, *keys: str) -> int:
        reset, _ = self.limiter.get_window_stats(item, *keys)
        return max(1, int(reset - time.time()) + 1)

    def check_address(self, address: str) -> None:
        item = self.auth_failures
        if item is not None and not self.limiter.test(item, "authfail", address):
            raise RateLimited(
                "too many failed authentications from this address; wait a minute",
                data={"retry_after": self._retry_after(item, "authfail", address)},
            )

    def failed(self, address: str) -> None:
        if self.auth_failures is not None:
            self.limiter.hit(self.auth_failures, "authfail", address)

    def hit_token(self, token_hash: str) -> None:
        item = self.per_token
        if item is not None and not self.limiter.hit(item, "token", token_hash):
            raise RateLimited(
                f"more than {item.amount} requests a minute with this token",
                data={"retry_after": self._retry_after(item, "token", token_hash)},
            )


def bearer_token() -> str | None:
    header = request.headers.get("Authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "bearer" or not value.strip():
        return None
    return value.strip()


def session_principal(db: Session) -> Principal | None:
    """The console user of this request's session cookie; None without one.

    The cookie names the API token the user signed in with; Unauthorized when
    that token was revoked or its user deactivated since.
    """
    if SESSION_COOKIE not in request.cookies:
        return None
    raw = cookie.get("tid")
    if not isinstance(raw, str):
        return None
    try:
        token_id = uuid.UUID(raw)
    except ValueError:
        return None
    row = db.execute(
        select(ApiToken, User)
        .join(User, User.id == ApiToken.user_id)
        .where(ApiToken.id == token_id)
    ).first()
    if row is None or row[0].revoked_at is not None or not row[1].active:
        raise Unauthorized("the console session ended (token revoked or user inactive)")
    g.token_id = token_id
    return Principal.of(row[1])


def authenticate_request(ctx: object, session: Session) -> Principal:
    """The caller of this request; Unauthorized / Forbidden / RateLimited otherwise.

    A bearer token, else the console's session cookie; with the cookie, a
    request that changes something must also send the session's CSRF token in
    ``X-CSRF-Token`` (a cross-site form cannot).
    """
    limits: RateLimits = ctx.limits  # type: ignore[attr-defined]
    address = request.remote_addr or "unknown"
    limits.check_address(address)
    token = bearer_token()
    if token is None:
        try:
            principal = session_principal(session)
        except Unauthorized:
            limits.failed(address)
            raise
        if principal is None:
            limits.failed(address)
            raise Unauthorized("send Authorization: Bearer <token> (from `supportgate user add`)")
        if request.method not in SAFE_METHODS and not _csrf_ok():
            raise Forbidden("with the console's session cookie, send X-CSRF-Token as well")
        limits.hit_token(f"session:{g.token_id}")
        return principal
    try:
        user = authenticate(session, token)
    except Unauthorized:
        limits.failed(address)
        raise
    limits.hit_token(hashlib.sha256(token.encode()).hexdigest())
    return Principal.of(user)


def _csrf_ok() -> bool:
    expected = cookie.get("csrf")
    sent = request.headers.get("X-CSRF-Token", "")
    return isinstance(expected, str) and bool(sent) and hmac.compare_digest(sent, expected)
