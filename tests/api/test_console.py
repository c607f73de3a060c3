"""The web console and its session cookie (which the JSON API accepts too)."""

from __future__ import annotations

import re
from urllib.parse import parse_qs, urlsplit

import pytest
from flask.testing import FlaskClient

from gateway.config import Settings
from gateway.stream_grants import check_grant
from web.app import _secret_key, create_app

CSRF_RE = re.compile(r'name="csrf_token" value="([^"]+)"')


def csrf(page: str) -> str:
    found = CSRF_RE.search(page)
    assert found, page
    return found.group(1)


@pytest.fixture
def browser(app) -> FlaskClient:
    """A client of its own: its cookies never reach the bearer-token callers."""
    return app.test_client()


def sign_in(browser: FlaskClient, token: str) -> str:
    """Signs in; returns the session's CSRF token (from the next page)."""
    page = browser.get("/console/login").get_data(as_text=True)
    response = browser.post("/console/login", data={"token": token, "csrf_token": csrf(page)})
    assert response.status_code == 303, response.get_data(as_text=True)
    return csrf(browser.get("/console/").get_data(as_text=True))


def test_login_sets_a_safe_cookie_and_lists_what_the_user_may_see(
    browser, admin, customer_a, customer_b, make_ticket
):
    mine = make_ticket(customer_email=customer_a.email, title="Alice's printer")
    make_ticket(customer_email=customer_b.email, title="Bob's scanner")
    page = browser.get("/console/login").get_data(as_text=True)
    response = browser.post(
        "/console/login", data={"token": customer_a.token, "csrf_token": csrf(page)}
    )
    assert response.status_code == 303
    assert response.headers["Location"].endswith("/console/")
    cookie = response.headers["Set-Cookie"]
    assert cookie.startswith("supportgate_session=")
    assert "HttpOnly" in cookie and "SameSite=Lax" in cookie
    assert customer_a.token not in cookie
    listing = browser.get("/console/")
    assert listing.status_code == 200
    html = listing.get_data(as_text=True)
    assert "Alice&#39;s printer" in html and "Bob&#39;s scanner" not in html
    assert f"/console/tickets/{mine['number']}" in html
    assert "default-src 'none'" in listing.headers["Content-Security-Policy"]


def test_login_refusals(browser, agent):
    page = browser.get("/console/login").get_data(as_text=True)
    token = csrf(page)
    bad = browser.post("/console/login", data={"token": "sg_nope", "csrf_token": token})
    assert bad.status_code == 401
    assert "invalid token" in bad.get_data(as_text=True)
    empty = browser.post("/console/login", data={"token": "", "csrf_token": token})
    assert empty.status_code == 422
    forged = browser.post("/console/login", data={"token": agent.token, "csrf_token": "x"})
    assert forged.status_code == 400
    assert "supportgate_session=" not in forged.headers.get("Set-Cookie", "") or (
        browser.get("/console/").status_code == 303
    )
    # Only paths of the console are followed after signing in.
    away = browser.post(
        "/console/login",
        data={"token": agent.token, "csrf_token": token, "next": "//evil.example/"},
    )
    assert away.headers["Location"].endswith("/console/")


def test_pages_need_a_session(browser):
    response = browser.get("/console/tickets/1")
    assert response.status_code == 303
    target = urlsplit(response.headers["Location"])
    assert target.path == "/console/login"
    assert parse_qs(target.query)["next"] == ["/console/tickets/1"]


def test_agent_replies_and_writes_notes_customer_never_sees_notes(
    app, browser, agent, customer_a, make_ticket
):
    ticket = make_ticket(customer_email=customer_a.email, title="<script>alert(1)</script>")
    number = ticket["number"]
    token = sign_in(browser, agent.token)
    page = browser.get(f"/console/tickets/{number}").get_data(as_text=True)
    assert "<script>alert(1)</script>" not in page and "&lt;script&gt;" in page
    reply = browser.post(
        f"/console/tickets/{number}/messages",
        data={"body": "We are on it.", "csrf_token": token},
    )
    assert reply.status_code == 303
    note = browser.post(
        f"/console/tickets/{number}/messages",
        data={"body": "Customer sounds upset.", "internal": "1", "csrf_token": token},
    )
    assert note.status_code == 303
    empty = browser.post(
        f"/console/tickets/{number}/messages", data={"body": "   ", "csrf_token": token}
    )
    assert empty.status_code == 422
    assert "must not be empty" in empty.get_data(as_text=True)
    forged = browser.post(
        f"/console/tickets/{number}/messages", data={"body": "hi", "csrf_token": "nope"}
    )
    assert forged.status_code == 400

    messages = agent.get(f"/api/v1/tickets/{number}/messages").get_json()["items"]
    assert [(m["kind"], m["channel"], m["body_text"]) for m in messages] == [
        ("reply", "web", "We are on it."),
        ("note", "web", "Customer sounds upset."),
    ]
    other = app.test_client()
    sign_in(other, customer_a.token)
    seen = other.get(f"/console/tickets/{number}").get_data(as_text=True)
    assert "We are on it." in seen and "Customer sounds upset." not in seen
    assert "Internal note" not in seen


def test_a_ticket_the_user_may_not_see_is_404(browser, customer_b, customer_a, make_ticket):
    ticket = make_ticket(customer_email=customer_a.email)
    sign_in(browser, customer_b.token)
    response = browser.get(f"/console/tickets/{ticket['number']}")
    assert response.status_code == 404
    post = browser.post(
        f"/console/tickets/{ticket['number']}/messages",
        data={"body": "hello", "csrf_token": csrf(browser.get("/console/").get_data(as_text=True))},
    )
    assert post.status_code == 404


def test_the_api_takes_the_session_cookie_with_csrf_for_changes(browser, agent):
    token = sign_in(browser, agent.token)
    assert browser.get("/api/v1/tickets").status_code == 200
    assert browser.get("/api/v1/me").get_json()["email"] == agent.email
    refused = browser.post("/api/v1/tickets", json={"title": "From the console"})
    assert refused.status_code == 403
    assert refused.get_json()["type"].endswith("/forbidden")
    made = browser.post(
        "/api/v1/tickets", json={"title": "From the console"}, headers={"X-CSRF-Token": token}
    )
    assert made.status_code == 201


def test_events_redirect_carries_a_grant_for_the_session(app, browser, agent, db):
    sign_in(browser, agent.token)
    response = browser.get("/api/v1/events")
    assert response.status_code == 307
    grant = parse_qs(urlsplit(response.headers["Location"]).query)["grant"][0]
    with db.transaction() as session:
        assert check_grant(session, grant).email == agent.email


def test_revoking_the_token_or_signing_out_ends_the_session(browser, admin, agent):
    token = sign_in(browser, agent.token)
    out = browser.post("/console/logout", data={"csrf_token": token})
    assert out.status_code == 303
    assert browser.get("/console/").status_code == 303
    assert browser.get("/api/v1/tickets").status_code == 401

    sign_in(browser, agent.token)
    tokens = admin.get(f"/api/v1/users/{agent.id}/tokens").get_json()["items"]
    for t in tokens:
        assert admin.delete(f"/api/v1/users/{agent.id}/tokens/{t['id']}").status_code in (200, 204)
    assert browser.get("/api/v1/tickets").status_code == 401
    assert browser.get("/console/").status_code == 303


def test_secret_key_is_made_once_per_data_dir(tmp_path):
    settings = Settings(data_dir=tmp_path / "d", _env_file=None)  # type: ignore[call-arg]
    first = _secret_key(settings)
    assert len(first) > 40
    assert _secret_key(settings) == first
    assert oct((tmp_path / "d" / "secret_key").stat().st_mode & 0o777) == "0o600"
    given = Settings(data_dir=tmp_path / "d", secret_key="k" * 40, _env_file=None)  # type: ignore[call-arg]
    assert _secret_key(given) == "k" * 40


def test_cookie_from_another_installation_is_ignored(settings, db, agent, tmp_path):
    app_a = create_app(settings, database=db)
    other = settings.model_copy(update={"secret_key": "another-installation-key-0123456789"})
    app_b = create_app(other, database=db)
    a = app_a.test_client()
    sign_in(a, agent.token)
    cookie = a.get_cookie("supportgate_session")
    assert cookie is not None
    b = app_b.test_client()
    b.set_cookie("supportgate_session", cookie.value)
    assert b.get("/api/v1/tickets").status_code == 401
