"""POST /slack/events: signatures, storing before the ack, retries, bots."""

from __future__ import annotations

import json
import time

from sqlalchemy import func, select

from gateway.events import OutboxTask
from gateway.slack.models import SlackEvent
from tests.fakes.slack_api import BOT_ID, BOT_USER
from tests.fakes.slack_requests import SIGNING_SECRET, event_body, signed_headers, thread_reply


def _count(db, model, *where) -> int:
    with db.transaction() as session:
        return int(session.scalar(select(func.count()).select_from(model).where(*where)) or 0)


def test_url_verification_is_answered(slack):
    body = json.dumps({"token": "t", "challenge": "c-123", "type": "url_verification"})
    response = slack.post(body, signed_headers(body))
    assert response.status_code == 200
    assert response.get_json() == {"challenge": "c-123"}


def test_bad_stale_and_missing_signatures_are_401_and_store_nothing(slack):
    body = event_body(thread_reply("U1", "hello", "1.000001"))
    cases = {
        "wrong secret": signed_headers(body, secret="not-the-secret"),
        "stale (6 minutes)": signed_headers(body, timestamp=int(time.time()) - 360),
        "from the future": signed_headers(body, timestamp=int(time.time()) + 360),
        "no headers": {"Content-Type": "application/json"},
    }
    tampered = signed_headers(body)
    cases["body changed after signing"] = tampered
    for name, headers in cases.items():
        sent = body.replace("hello", "HELLO") if name == "body changed after signing" else body
        response = slack.post(sent, headers)
        assert response.status_code == 401, name
        assert response.mimetype == "application/problem+json", name
        problem = response.get_json()
        assert problem["type"].endswith("/problems/unauthorized")
        assert "signature" in problem["detail"]
    assert slack.events() == []
    assert slack.tasks() == []


def test_a_bearer_token_is_no_slack_signature(slack, admin):
    body = event_body(thread_reply("U1", "hello", "1.000001"))
    response = slack.client.post(
        "/slack/events",
        data=body,
        headers={"Authorization": f"Bearer {admin.token}", "Content-Type": "application/json"},
    )
    assert response.status_code == 401


def test_event_is_stored_with_its_task_before_the_ack(slack, db):
    body = event_body(thread_reply("U1", "hello", "1.000001"), event_id="Ev0STORED1")
    response = slack.post(body, signed_headers(body))
    assert response.status_code == 200
    [row] = slack.events()
    assert (row.event_id, row.event_type, row.state) == ("Ev0STORED1", "message", "received")
    assert row.payload["event"]["text"] == "hello"
    [task] = slack.tasks()
    assert (task.kind, task.payload) == ("slack.event", {"event_id": "Ev0STORED1"})


def test_retries_are_stored_once_and_never_dropped(slack, db):
    first = event_body(thread_reply("U1", "hello", "1.000001"), event_id="Ev0RETRY01")
    assert slack.post(first, signed_headers(first)).status_code == 200
    for retry in (1, 2, 3):
        again = slack.post(first, signed_headers(first, retry_num=retry))
        assert again.status_code == 200
    assert _count(db, SlackEvent) == 1
    assert _count(db, OutboxTask, OutboxTask.kind == "slack.event") == 1
    # A retry may be the only delivery that reached us: it is stored like any other.
    only = event_body(thread_reply("U1", "second", "1.000001"), event_id="Ev0RETRY02")
    assert slack.post(only, signed_headers(only, retry_num=2)).status_code == 200
    assert [e.event_id for e in slack.events()] == ["Ev0RETRY01", "Ev0RETRY02"]


def test_bot_messages_and_our_own_posts_are_not_stored(slack):
    ours = thread_reply(BOT_USER, "[#1] our post", "1.000001", bot_id=BOT_ID, subtype="bot_message")
    other_bot = thread_reply("U9", "beep", "1.000001", bot_id="B0OTHER")
    not_threaded = {**thread_reply("U1", "chat", "1.000001"), "thread_ts": None}
    edited = thread_reply("U1", "x", "1.000001", subtype="message_changed")
    for event in (ours, other_bot, not_threaded, edited):
        assert slack.event(event).status_code == 200
    assert slack.events() == []
    assert slack.tasks() == []


def test_slack_off_answers_401(db, tmp_path):
    from gateway.config import Settings
    from web.app import create_app

    off = create_app(Settings(database_url=db.url, data_dir=tmp_path, _env_file=None), database=db)
    body = event_body(thread_reply("U1", "hello", "1.000001"))
    response = off.test_client().post("/slack/events", data=body, headers=signed_headers(body))
    assert response.status_code == 401
    assert "not configured" in response.get_json()["detail"]


def test_signature_is_checked_with_the_configured_secret(slack):
    assert slack.settings.slack_signing_secret.get_secret_value() == SIGNING_SECRET


def test_an_event_that_cannot_be_stored_is_not_acknowledged(settings, caplog):
    """Database away: 503, so that Slack delivers the event again later."""
    from gateway.db import Database
    from web.app import create_app

    dead = Database("postgresql+psycopg://postgres@127.0.0.1:1/nowhere", null_pool=True)
    try:
        app = create_app(settings, database=dead)
        body = event_body(thread_reply("U1", "hello", "1.000001"))
        response = app.test_client().post("/slack/events", data=body, headers=signed_headers(body))
        assert response.status_code == 503
        assert any(r.message == "Slack request failed" for r in caplog.records)
    finally:
        dead.dispose()
