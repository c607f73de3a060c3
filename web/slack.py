"""``POST /slack/events``: Slack's Events API, interactivity and slash commands.

A Slack request authenticates with its signature, not a bearer token: bolt
checks it (adapters/slack/app.py) and anything unsigned, badly signed or
older than 5 minutes is 401 problem+json. With Slack off the route still
answers 401: there is no secret that any request could be signed with.
"""

from __future__ import annotations

from flask import Blueprint, Response, current_app, request
from slack_bolt import BoltRequest

from web.errors import problem

bp = Blueprint("slack", __name__)

# Slack's own payloads are a few kB; anything near this is not from Slack.
MAX_BODY = 1024 * 1024


@bp.post("/slack/events")
def events() -> Response:
    bolt = current_app.extensions["supportgate"].slack
    if bolt is None:
        return problem(
            401,
            "unauthorized",
            "Authentication required",
            "Slack is not configured on this server (SUPPORTGATE_SLACK_BOT_TOKEN, "
            "_SIGNING_SECRET and _CHANNEL), so no request can be verified",
        )
    if (request.content_length or 0) > MAX_BODY:
        return problem(413, "payload-too-large", "Payload too large", "not a Slack request")
    body = request.get_data(cache=False, as_text=True)
    answer = bolt.dispatch(
        BoltRequest(
            body=body,
            query=request.query_string.decode("latin-1"),
            headers={name.lower(): [value] for name, value in request.headers.items()},
        )
    )
    if answer.status == 401:
        return problem(
            401,
            "unauthorized",
            "Authentication required",
            "the request does not carry a valid Slack signature (X-Slack-Signature over "
            "X-Slack-Request-Timestamp and the body, at most 5 minutes old)",
        )
    response = Response(answer.body, status=answer.status)
    for name, value in answer.first_headers_without_set_cookie().items():
        response.headers[name] = value
    return response
