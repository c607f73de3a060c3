"""The bolt app: one per process, for HTTP (``POST /slack/events``) or Socket Mode.

bolt verifies the signature (``v0`` HMAC-SHA256 over ``v0:{timestamp}:{body}``
with the signing secret, timestamps within 5 minutes; 401 otherwise) and
answers Slack's ``url_verification``. The listeners (listeners.py) run before
the response (``process_before_response``), which is what lets an event be
stored before Slack is told it arrived.

Authorisation needs no Web API call: the bot token is the one configured
(single workspace), so a request is never held up by Slack itself.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from slack_bolt import App
from slack_bolt.authorization import AuthorizeResult
from slack_sdk import WebClient

from adapters.slack.client import SlackApi
from adapters.slack.inbound import EventProcessor
from adapters.slack.interactions import Interactions
from adapters.slack.listeners import register
from gateway.config import Settings
from gateway.db import Database

# How long a user lookup (users.info) may hold up an interactive request.
INTERACTIVE_TIMEOUT = 2


@dataclass
class SlackEdge:
    """What the listeners work with."""

    db: Database
    interactions: Interactions


def build_bolt_app(settings: Settings, db: Database, *, socket_mode: bool = False) -> App:
    """The bolt app for ``settings`` (Slack must be enabled).

    HTTP mode verifies every request's signature; Socket Mode has none to
    verify (the app-level token authenticates the connection)."""
    if not settings.slack_enabled or settings.slack_bot_token is None:
        raise ValueError("Slack is not configured")
    token = settings.slack_bot_token.get_secret_value()
    secret = settings.slack_signing_secret
    if not socket_mode and secret is None:
        raise ValueError("HTTP mode needs SUPPORTGATE_SLACK_SIGNING_SECRET")

    def authorize(enterprise_id: str | None, team_id: str | None) -> AuthorizeResult:
        return AuthorizeResult(enterprise_id=enterprise_id, team_id=team_id, bot_token=token)

    app = App(
        # bolt's own client (Socket Mode's apps.connections.open) on our base URL;
        # our calls go through SlackApi.
        client=WebClient(base_url=settings.slack_api_url, retry_handlers=[]),
        signing_secret=secret.get_secret_value() if secret else "",
        request_verification_enabled=not socket_mode,
        authorize=authorize,
        process_before_response=True,
        token_verification_enabled=False,
        # Our own filter (adapters/slack/events.py) drops every bot, us included.
        ignoring_self_events_enabled=False,
        logger=logging.getLogger("supportgate.slack.bolt"),
    )
    quick = SlackApi.from_settings(settings, timeout=INTERACTIVE_TIMEOUT, retry=False)
    register(app, SlackEdge(db, Interactions(db, EventProcessor(db, quick, None))))
    return app
