"""The web console: a small server-rendered UI over the same domain services as the API.

    /console/login     GET form, POST an API token (from `supportgate user add` or
                       POST /api/v1/users/{id}/tokens) → a signed session cookie
    /console/logout    POST
    /console/          the tickets the user may see (status filter, pages)
    /console/tickets/N one ticket: its conversation and a reply (or note) form

The session cookie (``supportgate_session``: signed, HttpOnly, SameSite=Lax, 12 h)
names the API token the user signed in with, never its secret; it is checked
against the database on every request, so revoking the token or deactivating
the user ends the session. The same cookie authenticates the JSON API
(web/auth.py): safe methods as is, others only with the session's CSRF token
in ``X-CSRF-Token``. Console forms carry that token in a hidden field.
"""

from __future__ import annotations

import hmac
import secrets
from typing import Any
from urllib.parse import urlencode

from flask import (
    Blueprint,
    Response,
    current_app,
    redirect,
    render_template,
    request,
    session,
    url_for,
)
from pydantic import ValidationError
from sqlalchemy import select

from gateway.conversations import services as conversations
from gateway.conversations.schemas import MessageCreate
from gateway.errors import GatewayError, Unauthorized
from gateway.permissions import Principal
from gateway.tickets import services as tickets
from gateway.tickets.listing import list_tickets
from gateway.tickets.schemas import TicketListQuery
from gateway.tickets.workflow import STATUSES
from gateway.users.models import ApiToken
from gateway.users.services import authenticate, hash_token
from web.auth import session_principal

bp = Blueprint("console", __name__, template_folder="templates")

CSRF_FIELD = "csrf_token"


def _ctx() -> Any:
    return current_app.extensions["supportgate"]


def csrf_token() -> str:
    token = session.get("csrf")
    if not isinstance(token, str):
        token = secrets.token_urlsafe(24)
        session["csrf"] = token
    return token


def _check_csrf() -> None:
    sent = request.form.get(CSRF_FIELD, "")
    expected = session.get("csrf")
    if not isinstance(expected, str) or not hmac.compare_digest(sent, expected):
        raise _FormError("the form expired; reload the page and try again", 400)


class _FormError(Exception):
    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.message, self.status = message, status


def _page(template: str, code: int = 200, **values: Any) -> Response:
    html = render_template(template, csrf_token=csrf_token(), **values)
    response = Response(html, status=code, mimetype="text/html")
    response.headers["Content-Security-Policy"] = (
        "default-src 'none'; style-src 'self' 'unsafe-inline'; form-action 'self'; "
        "frame-ancestors 'none'; base-uri 'none'"
    )
    response.headers["X-Frame-Options"] = "DENY"
    response.headers["Referrer-Policy"] = "same-origin"
    return response


def _signed_in(db_session: Any) -> Principal | None:
    try:
        return session_principal(db_session)
    except Unauthorized:
        session.clear()
        return None


@bp.get("/login")
def login_form() -> Response:
    return _page("console/login.html", next=request.args.get("next", ""))


@bp.post("/login")
def login() -> Response:
    secret = request.form.get("token", "").strip()
    target = _safe_next(request.form.get("next", ""))
    try:
        _check_csrf()
        if not secret:
            raise _FormError("paste an API token to sign in", 422)
        with _ctx().db.transaction() as db_session:
            try:
                user = authenticate(db_session, secret)
            except Unauthorized as exc:
                raise _FormError(f"{exc.detail}: check the token", 401) from None
            token_id = db_session.scalar(
                select(ApiToken.id).where(ApiToken.token_hash == hash_token(secret))
            )
            name = user.name or user.email
    except _FormError as exc:
        return _page("console/login.html", exc.status, error=exc.message, next=target)
    session.clear()
    session.permanent = True
    session["tid"] = str(token_id)
    session["csrf"] = secrets.token_urlsafe(24)
    session["name"] = name
    return redirect(target or url_for("console.ticket_list"), 303)


def _safe_next(value: str) -> str:
    """Only a path of the console itself, never another site."""
    if value.startswith("/console/") and not value.startswith("//") and "\\" not in value:
        return value
    return ""


@bp.post("/logout")
def logout() -> Response:
    try:
        _check_csrf()
    except _FormError as exc:
        return _page("console/login.html", exc.status, error=exc.message, next="")
    session.clear()
    return redirect(url_for("console.login_form"), 303)


@bp.get("/")
def ticket_list() -> Response:
    status = request.args.get("status", "")
    cursor = request.args.get("cursor") or None
    with _ctx().db.transaction() as db_session:
        principal = _signed_in(db_session)
        if principal is None:
            return _to_login()
        try:
            query = TicketListQuery(status=status or None, cursor=cursor, limit=50)
            rows, next_cursor = list_tickets(db_session, principal, query)
        except ValidationError:
            return _page("console/error.html", 422, message="that filter is not valid")
        except GatewayError as exc:
            return _page("console/error.html", exc.status, message=exc.detail)
        items = tickets.tickets_out(db_session, rows, principal)
    more = (
        url_for("console.ticket_list") + "?" + urlencode({"status": status, "cursor": next_cursor})
        if next_cursor
        else None
    )
    return _page(
        "console/tickets.html",
        tickets=items,
        statuses=STATUSES,
        current_status=status,
        more=more,
        user=session.get("name", ""),
    )


@bp.get("/tickets/<int:number>")
def ticket(number: int) -> Response:
    return _ticket_page(number)


def _ticket_page(number: int, code: int = 200, **extra: Any) -> Response:
    with _ctx().db.transaction() as db_session:
        principal = _signed_in(db_session)
        if principal is None:
            return _to_login()
        try:
            row = tickets.get_ticket(db_session, principal, str(number))
        except GatewayError as exc:
            return _page("console/error.html", exc.status, message=exc.detail)
        messages: list[dict[str, Any]] = []
        cursor: str | None = None
        while True:  # the whole conversation, oldest first
            rows, cursor = conversations.list_messages(db_session, principal, row, 100, cursor)
            messages += conversations.messages_out(db_session, rows)
            if not cursor:
                break
        item = tickets.tickets_out(db_session, [row], principal)[0]
    return _page(
        "console/ticket.html",
        code,
        ticket=item,
        messages=messages,
        staff=principal.is_staff,
        user=session.get("name", ""),
        **extra,
    )


@bp.post("/tickets/<int:number>/messages")
def reply(number: int) -> Response:
    body = request.form.get("body", "")
    internal = request.form.get("internal") == "1"
    try:
        _check_csrf()
        with _ctx().db.transaction() as db_session:
            principal = _signed_in(db_session)
            if principal is None:
                return _to_login()
            row = tickets.get_ticket(db_session, principal, str(number))
            try:
                data = MessageCreate(body=body, internal=internal)
            except ValidationError as exc:
                first = exc.errors()[0]
                raise _FormError(f"{first['loc'][0]}: {first['msg']}", 422) from None
            conversations.add_message(db_session, principal, row, data, channel="web")
    except _FormError as exc:
        return _ticket_page(number, exc.status, error=exc.message, draft=body)
    except GatewayError as exc:
        return _ticket_page(number, exc.status, error=exc.detail, draft=body)
    return redirect(url_for("console.ticket", number=number), 303)


def _to_login() -> Response:
    return redirect(url_for("console.login_form", next=request.full_path.rstrip("?")), 303)
