"""Socket Mode: Slack's events, commands and actions over a WebSocket.

Used when ``SUPPORTGATE_SLACK_APP_TOKEN`` (``xapp-…``, scope
``connections:write``) is set: Slack needs no public URL to reach us. The
same bolt app and listeners as HTTP mode run here; an envelope is
acknowledged only after its listener returned, so an event is stored before
Slack hears that it arrived (and Slack redelivers one that never was).
"""

from __future__ import annotations

import logging
import threading

from slack_bolt.adapter.socket_mode import SocketModeHandler

from adapters.slack.app import build_bolt_app
from gateway.config import Settings
from gateway.db import Database
from gateway.slack.mirror import install_mirror

log = logging.getLogger("supportgate.slack")


def run_socket_mode(settings: Settings, db: Database, stop: threading.Event) -> None:
    """Hold the Socket Mode connection until ``stop`` is set (reconnecting as needed).

    Raises whatever the first connection attempt raises (a bad app token:
    SlackApiError ``invalid_auth``), so that a misconfiguration stops the
    command at once instead of retrying for ever."""
    if settings.slack_app_token is None:
        raise ValueError("Socket Mode needs SUPPORTGATE_SLACK_APP_TOKEN")
    install_mirror(db.sessions, settings.slack_channel)
    app = build_bolt_app(settings, db, socket_mode=True)
    handler = SocketModeHandler(app, app_token=settings.slack_app_token.get_secret_value())
    handler.connect()
    log.info("Slack Socket Mode connected")
    try:
        stop.wait()
    finally:
        handler.close()
        log.info("Slack Socket Mode closed")
