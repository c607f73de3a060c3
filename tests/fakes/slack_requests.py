"""Requests to ``/slack/events`` signed exactly as Slack signs them.

Slack's signature: ``v0=`` + hex HMAC-SHA256, keyed with the signing secret,
over ``v0:{X-Slack-Request-Timestamp}:{raw body}``.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import time
import uuid
from typing import Any
from urllib.parse import urlencode

from tests.fakes.slack_api import CHANNEL_ID, TEAM

SIGNING_SECRET = "8f742231b10e8888abcd99yyyzzz85a5"


def signature(secret: str, timestamp: int, body: str) -> str:
    base = f"v0:{timestamp}:{body}".encode()
    return "v0=" + hmac.new(secret.encode(), base, hashlib.sha256).hexdigest()


def signed_headers(
    body: str,
    *,
    secret: str = SIGNING_SECRET,
    timestamp: int | None = None,
    content_type: str = "application/json",
    retry_num: int | None = None,
) -> dict[str, str]:
    timestamp = int(time.time()) if timestamp is None else timestamp
    headers = {
        "Content-Type": content_type,
        "X-Slack-Request-Timestamp": str(timestamp),
        "X-Slack-Signature": signature(secret, timestamp, body),
    }
    if retry_num is not None:
        headers["X-Slack-Retry-Num"] = str(retry_num)
        headers["X-Slack-Retry-Reason"] = "http_timeout"
    return headers


def event_body(event: dict[str, Any], event_id: str | None = None) -> str:
    return json.dumps(
        {
            "token": "legacy-verification-token",
            "team_id": TEAM,
            "api_app_id": "A0APP0001",
            "event": event,
            "type": "event_callback",
            "event_id": event_id or "Ev" + uuid.uuid4().hex[:12].upper(),
            "event_time": int(time.time()),
        }
    )


def thread_reply(
    user: str, text: str, thread_ts: str, *, channel: str = CHANNEL_ID, **extra: Any
) -> dict[str, Any]:
    ts = f"{time.time():.6f}"
    event = {
        "type": "message",
        "channel": channel,
        "user": user,
        "text": text,
        "ts": ts,
        "thread_ts": thread_ts,
        "event_ts": ts,
        "channel_type": "channel",
    }
    event.update(extra)
    return event


def command_body(text: str, user_id: str, channel_id: str = CHANNEL_ID) -> str:
    return urlencode(
        {
            "token": "legacy",
            "team_id": TEAM,
            "channel_id": channel_id,
            "channel_name": "support",
            "user_id": user_id,
            "user_name": "someone",
            "command": "/ticket",
            "text": text,
            "api_app_id": "A0APP0001",
            "response_url": "https://hooks.slack.com/commands/T0TEAM01/1/x",
            "trigger_id": "1.2.3",
        }
    )


def action_body(
    action: dict[str, Any], user_id: str, message_ts: str, channel_id: str = CHANNEL_ID
) -> str:
    payload = {
        "type": "block_actions",
        "team": {"id": TEAM},
        "user": {"id": user_id},
        "api_app_id": "A0APP0001",
        "container": {"type": "message", "message_ts": message_ts, "channel_id": channel_id},
        "channel": {"id": channel_id, "name": "support"},
        "trigger_id": "1.2.3",
        "response_url": "https://hooks.slack.com/actions/T0TEAM01/1/x",
        "actions": [{**action, "block_id": action.get("block_id", "b"), "action_ts": "1.2"}],
    }
    return urlencode({"payload": json.dumps(payload)})
