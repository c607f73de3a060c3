"""Slack's Web API, through slack-sdk's WebClient, and how its failures map.

Every call goes to ``SUPPORTGATE_SLACK_API_URL``. The client retries only a
429, once, and only when Slack asks for a short wait (slack-sdk's
RateLimitErrorRetryHandler); a longer wait raises :class:`RateLimited` with
``retry_after`` and the outbox task is retried at that time. Connection
errors are never retried here: a post may have reached Slack, and the poster
finds out before posting again (see adapters/slack/poster.py).

    Slack answered 429 ("ratelimited")      → gateway RateLimited (retry_after s)
    Slack answered an error that a retry    → SlackPermanentError (dead letter; an
      cannot fix (bad token, no channel …)    admin fixes the cause and retries it)
    any other Slack error, 5xx, no answer   → the exception as is (retried with backoff)
"""

from __future__ import annotations

import logging
import re
import threading
from dataclasses import dataclass
from typing import Any

from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError
from slack_sdk.http_retry.builtin_handlers import RateLimitErrorRetryHandler
from slack_sdk.http_retry.request import HttpRequest
from slack_sdk.http_retry.response import HttpResponse
from slack_sdk.http_retry.state import RetryState

from gateway.config import Settings
from gateway.errors import RateLimited

log = logging.getLogger("supportgate.slack")

# Errors a retry cannot fix: configuration, permissions, or a message Slack refuses.
PERMANENT_ERRORS = frozenset(
    {
        "account_inactive",
        "cannot_reply_to_message",
        "cant_update_message",
        "channel_not_found",
        "edit_window_closed",
        "invalid_auth",
        "invalid_blocks",
        "invalid_metadata_format",
        "is_archived",
        "message_not_found",
        "missing_scope",
        "msg_too_long",
        "no_permission",
        "not_authed",
        "not_in_channel",
        "restricted_action",
        "token_revoked",
        "user_not_found",
        "user_not_in_channel",
    }
)
DEFAULT_RETRY_AFTER = 30
CHANNEL_ID = re.compile(r"^[CGD][A-Z0-9]{6,}$")


class SlackPermanentError(Exception):
    """Slack refused a call for a reason a retry cannot fix."""

    def __init__(self, method: str, error: str) -> None:
        super().__init__(f"Slack refused {method}: {error}")
        self.method = method
        self.error = error


def retry_after_of(headers: Any) -> int | None:
    """The Retry-After of a response's headers (values may be lists), in seconds."""
    for name, value in dict(headers or {}).items():
        if name.lower() == "retry-after":
            raw = value[0] if isinstance(value, list | tuple) else value
            try:
                return max(0, int(str(raw).strip()))
            except ValueError:
                return None
    return None


class ShortRateLimitRetry(RateLimitErrorRetryHandler):
    """slack-sdk's 429 handler, retrying in place only when Slack asks for at
    most ``max_wait`` seconds; a longer wait goes back to the outbox."""

    def __init__(self, max_wait: int = 2) -> None:
        super().__init__(max_retry_count=1)
        self.max_wait = max_wait

    def _can_retry(
        self,
        *,
        state: RetryState,
        request: HttpRequest,
        response: HttpResponse | None = None,
        error: Exception | None = None,
    ) -> bool:
        if not super()._can_retry(state=state, request=request, response=response, error=error):
            return False
        assert response is not None
        wait = retry_after_of(response.headers)
        return wait is not None and wait <= self.max_wait


def make_web_client(settings: Settings, *, timeout: int = 10, retry: bool = True) -> WebClient:
    """The WebClient for ``settings``: our base URL, the bot token, no blind retries."""
    token = settings.slack_bot_token.get_secret_value() if settings.slack_bot_token else None
    return WebClient(
        token=token,
        base_url=settings.slack_api_url,
        timeout=timeout,
        retry_handlers=[ShortRateLimitRetry()] if retry else [],
    )


@dataclass(frozen=True)
class BotIdentity:
    user_id: str
    bot_id: str | None
    team_id: str | None


class SlackApi:
    """The Web API methods Supportgate uses, with errors mapped (module docstring)."""

    def __init__(self, client: WebClient) -> None:
        self.client = client
        self._identity: BotIdentity | None = None
        self._channels: dict[str, str] = {}
        self._lock = threading.Lock()

    @classmethod
    def from_settings(
        cls, settings: Settings, *, timeout: int = 10, retry: bool = True
    ) -> SlackApi:
        return cls(make_web_client(settings, timeout=timeout, retry=retry))

    def call(self, method: str, **params: Any) -> dict[str, Any]:
        """Call a Web API method (JSON body); the answer's data, or a mapped error."""
        try:
            response = self.client.api_call(method, json=params)
        except SlackApiError as exc:
            raise self._mapped(method, exc) from exc
        return dict(response.data) if isinstance(response.data, dict) else {}

    def call_form(self, method: str, **params: Any) -> dict[str, Any]:
        """A method that takes its arguments as a query/form (users.info, files.info …)."""
        try:
            response = self.client.api_call(
                method, http_verb="GET", params={k: v for k, v in params.items() if v is not None}
            )
        except SlackApiError as exc:
            raise self._mapped(method, exc) from exc
        return dict(response.data) if isinstance(response.data, dict) else {}

    @staticmethod
    def _mapped(method: str, exc: SlackApiError) -> Exception:
        response = exc.response
        status = getattr(response, "status_code", None)
        error = str(response.get("error", "")) if hasattr(response, "get") else ""
        if status == 429 or error == "ratelimited":
            wait = retry_after_of(getattr(response, "headers", None)) or DEFAULT_RETRY_AFTER
            return RateLimited(f"Slack rate-limited {method}", data={"retry_after": wait})
        if error in PERMANENT_ERRORS:
            return SlackPermanentError(method, error)
        return exc

    # --- the methods -----------------------------------------------------------

    def identity(self) -> BotIdentity:
        """Who we are on Slack (auth.test, asked once per process)."""
        with self._lock:
            if self._identity is None:
                data = self.call("auth.test")
                self._identity = BotIdentity(
                    user_id=str(data.get("user_id", "")),
                    bot_id=data.get("bot_id"),
                    team_id=data.get("team_id"),
                )
            return self._identity

    def channel_id(self, channel: str) -> str:
        """The id of a channel configured by name (conversations.list, cached); an
        id is returned as it is. Ids are what events carry and what the
        conversations.* methods take."""
        if CHANNEL_ID.match(channel):
            return channel
        name = channel.lstrip("#").lower()
        with self._lock:
            if name in self._channels:
                return self._channels[name]
        cursor: str | None = None
        for _ in range(100):
            data = self.call_form(
                "conversations.list",
                types="public_channel,private_channel",
                exclude_archived="true",
                limit=1000,
                cursor=cursor,
            )
            for item in data.get("channels") or []:
                if str(item.get("name", "")).lower() == name:
                    with self._lock:
                        self._channels[name] = str(item["id"])
                    return str(item["id"])
            cursor = (data.get("response_metadata") or {}).get("next_cursor") or None
            if not cursor:
                break
        raise SlackPermanentError("conversations.list", f"channel_not_found: no channel #{name}")

    def post_message(
        self,
        channel: str,
        text: str,
        *,
        blocks: list[dict[str, Any]] | None = None,
        thread_ts: str | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> tuple[str, str]:
        """chat.postMessage; returns (channel id, ts)."""
        params: dict[str, Any] = {"channel": channel, "text": text, "unfurl_links": False}
        if blocks is not None:
            params["blocks"] = blocks
        if thread_ts is not None:
            params["thread_ts"] = thread_ts
        if metadata is not None:
            params["metadata"] = metadata
        data = self.call("chat.postMessage", **params)
        return str(data["channel"]), str(data["ts"])

    def update_message(
        self, channel: str, ts: str, text: str, blocks: list[dict[str, Any]] | None = None
    ) -> None:
        params: dict[str, Any] = {"channel": channel, "ts": ts, "text": text}
        if blocks is not None:
            params["blocks"] = blocks
        self.call("chat.update", **params)

    def post_ephemeral(
        self, channel: str, user: str, text: str, thread_ts: str | None = None
    ) -> None:
        params: dict[str, Any] = {"channel": channel, "user": user, "text": text}
        if thread_ts:
            params["thread_ts"] = thread_ts
        self.call("chat.postEphemeral", **params)

    def find_by_metadata(
        self,
        channel: str,
        key: str,
        value: str,
        *,
        oldest: float,
        thread_ts: str | None = None,
    ) -> str | None:
        """The ts of a message of ours whose metadata payload has ``key == value``,
        posted since ``oldest`` (in the channel, or in one thread)."""
        params: dict[str, Any] = {
            "channel": channel,
            "oldest": f"{oldest:.6f}",
            "include_all_metadata": True,
            "limit": 200,
        }
        if thread_ts is not None:
            data = self.call_form("conversations.replies", ts=thread_ts, **params)
        else:
            data = self.call_form("conversations.history", **params)
        for message in data.get("messages") or []:
            payload = (message.get("metadata") or {}).get("event_payload") or {}
            if str(payload.get(key, "")) == value:
                return str(message["ts"])
        return None

    def user_profile(self, user: str) -> tuple[str | None, bool]:
        """(profile email or None, is a bot) of a Slack user (users.info)."""
        try:
            data = self.call_form("users.info", user=user)
        except SlackPermanentError as exc:
            if exc.error == "user_not_found":
                return None, False
            raise
        info = data.get("user") or {}
        email = (info.get("profile") or {}).get("email")
        return (str(email) if email else None), bool(info.get("is_bot") or info.get("is_app_user"))

    def file_info(self, file_id: str) -> dict[str, Any]:
        return dict(self.call_form("files.info", file=file_id).get("file") or {})
