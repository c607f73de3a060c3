"""bolt listeners: thin, each hands its request to one function.

Events API callbacks   store (unique event_id) and commit, then ack;
                       processed later by the ``slack.event`` task
/ticket                answered in the ack (interactions.py)
block actions          applied, then ack (interactions.py)
any error              one handler: logged with its request; an event gets a
                       503 so that Slack retries it, a person a message
"""

from __future__ import annotations

import logging
import re
from typing import TYPE_CHECKING, Any

from slack_bolt import Ack, App, BoltResponse

from adapters.slack.events import skip_reason
from adapters.slack.interactions import ACTION_IDS
from gateway.slack.services import store_event

if TYPE_CHECKING:
    from adapters.slack.app import SlackEdge

log = logging.getLogger("supportgate.slack")


def register(app: App, edge: SlackEdge) -> None:
    @app.event(re.compile(r".+"))
    def on_event(body: dict[str, Any], ack: Ack) -> None:
        event = body.get("event") or {}
        reason = skip_reason(event)
        if reason is None and not body.get("event_id"):
            reason = "no event_id"
        if reason is None:
            with edge.db.transaction() as session:
                stored = store_event(session, body)
            if not stored:
                log.info("Slack event delivered again; stored before", extra=_about(body))
        else:
            log.debug("Slack event not stored", extra={**_about(body), "reason": reason})
        ack()

    @app.command("/ticket")
    def on_ticket(command: dict[str, Any], ack: Ack) -> None:
        ack(**edge.interactions.command(command))

    def on_action(body: dict[str, Any], action: dict[str, Any], ack: Ack) -> None:
        edge.interactions.action(body, action)
        ack()

    for action_id in ACTION_IDS:
        app.action(action_id)(on_action)

    @app.error
    def on_error(error: Exception, body: dict[str, Any]) -> BoltResponse:
        log.error("Slack request failed", exc_info=error, extra=_about(body))
        if body.get("type") == "event_callback":
            # Not stored: Slack must send it again.
            return BoltResponse(status=503, body="")
        return BoltResponse(
            status=200,
            body={
                "response_type": "ephemeral",
                "text": ":x: Something went wrong on our side; it is logged. Try again shortly.",
            },
        )


def _about(body: dict[str, Any]) -> dict[str, Any]:
    event = body.get("event") or {}
    return {
        "event_id": body.get("event_id"),
        "type": body.get("type") or ("command" if body.get("command") else None),
        "event_type": event.get("type"),
    }
