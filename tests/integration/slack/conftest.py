"""Slack on: a local Slack Web API, a relay sink, signed requests, the task runner."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from email import message_from_bytes, policy
from email.message import EmailMessage
from typing import Any

import pytest
from flask.testing import FlaskClient
from sqlalchemy import select

from gateway.config import Settings
from gateway.db import Database
from gateway.events import OutboxTask
from gateway.slack.models import SlackEvent, SlackThread
from gateway.users.services import add_user_cli
from tests.fakes.slack_api import BOT_TOKEN, CHANNEL_ID, FakeSlack
from tests.fakes.slack_requests import (
    SIGNING_SECRET,
    action_body,
    command_body,
    event_body,
    signed_headers,
    thread_reply,
)
from tests.integration.conftest import SUPPORT, Sink
from workers.handlers import TaskContext, handlers
from workers.inprocess import TaskRunner

AGENT_SLACK = "U0AGENT01"


@pytest.fixture
def fake_slack() -> Iterator[FakeSlack]:
    yield from FakeSlack().serve()


@pytest.fixture
def settings(
    db: Database, tmp_path: Any, fake_slack: FakeSlack, relay: tuple[Sink, int]
) -> Settings:
    return Settings(
        database_url=db.url,
        data_dir=tmp_path / "data",
        rate_limit_per_minute=0,
        auth_failures_per_minute=0,
        support_address=SUPPORT,
        outbound_smtp_url=f"smtp://127.0.0.1:{relay[1]}",
        slack_bot_token=BOT_TOKEN,
        slack_signing_secret=SIGNING_SECRET,
        slack_channel="support",
        slack_api_url=fake_slack.base_url,
        _env_file=None,  # type: ignore[call-arg]
    )


@dataclass
class SlackWorld:
    settings: Settings
    db: Database
    client: FlaskClient
    fake: FakeSlack
    sink: Sink
    runner: TaskRunner

    def post(self, body: str, headers: dict[str, str]) -> Any:
        return self.client.post("/slack/events", data=body, headers=headers)

    def event(
        self, event: dict[str, Any], event_id: str | None = None, retry_num: int | None = None
    ) -> Any:
        body = event_body(event, event_id)
        return self.post(body, signed_headers(body, retry_num=retry_num))

    def reply(self, user: str, text: str, thread_ts: str, **extra: Any) -> Any:
        return self.event(thread_reply(user, text, thread_ts, **extra))

    def command(self, text: str, user: str = AGENT_SLACK) -> Any:
        body = command_body(text, user)
        return self.post(
            body, signed_headers(body, content_type="application/x-www-form-urlencoded")
        )

    def action(self, action: dict[str, Any], message_ts: str, user: str = AGENT_SLACK) -> Any:
        body = action_body(action, user, message_ts)
        return self.post(
            body, signed_headers(body, content_type="application/x-www-form-urlencoded")
        )

    def drain(self) -> None:
        self.runner.drain()

    def parent_ts(self, ticket_id: str) -> str:
        with self.db.transaction() as session:
            thread = session.get(SlackThread, __import__("uuid").UUID(ticket_id))
            assert thread is not None and thread.ts, "the ticket was not posted"
            return thread.ts

    def events(self) -> list[SlackEvent]:
        with self.db.transaction() as session:
            return list(session.scalars(select(SlackEvent).order_by(SlackEvent.id)))

    def tasks(self, kind_prefix: str = "slack.") -> list[OutboxTask]:
        with self.db.transaction() as session:
            return [
                t
                for t in session.scalars(select(OutboxTask).order_by(OutboxTask.created_at))
                if t.kind.startswith(kind_prefix)
            ]

    def mails(self) -> list[EmailMessage]:
        return [message_from_bytes(m["raw"], policy=policy.default) for m in self.sink.messages]


@pytest.fixture
def slack(
    settings: Settings, db: Database, client: FlaskClient, fake_slack: FakeSlack, relay: Any
) -> SlackWorld:
    runner = TaskRunner(db, handlers(TaskContext.create(settings, db)), max_attempts=3)
    return SlackWorld(settings, db, client, fake_slack, relay[0], runner)


@pytest.fixture
def slack_agent(db: Database, fake_slack: FakeSlack) -> dict[str, str]:
    """An agent whose Slack id is on their user (mapped directly)."""
    with db.transaction() as session:
        user, token = add_user_cli(session, "sam@example.com", "agent", "Sam Slack", AGENT_SLACK)
        uid = str(user.id)
    return {"id": uid, "email": "sam@example.com", "slack": AGENT_SLACK, "token": token}


def blocks_text(blocks: list[dict[str, Any]] | None) -> str:
    return json.dumps(blocks or [], ensure_ascii=False)


__all__ = ["AGENT_SLACK", "CHANNEL_ID", "SlackWorld", "blocks_text"]
