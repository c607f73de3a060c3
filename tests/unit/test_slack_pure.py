"""Pure parts of the Slack adapter: parsing, markup, blocks, rules, settings."""

from __future__ import annotations

import pytest

from adapters.slack.blocks import (
    MessageCard,
    Person,
    TicketCard,
    digest,
    message_text,
    ticket_blocks,
)
from adapters.slack.client import retry_after_of
from adapters.slack.commands import Assign, ListTickets, Resolve, Show, UsageError, parse
from adapters.slack.events import skip_reason
from adapters.slack.mrkdwn import to_plain
from gateway.config import Settings
from gateway.errors import ConfigurationError
from gateway.slack.services import split_note


@pytest.mark.parametrize(
    ("text", "command"),
    [
        ("42", Show(42)),
        ("#42", Show(42)),
        ("list", ListTickets(None)),
        ("LIST On-Hold", ListTickets("on_hold")),
        ("assign 7 <@U0ABC123|ann>", Assign(7, slack_user="U0ABC123")),
        ("assign 7 <@U0ABC123>", Assign(7, slack_user="U0ABC123")),
        ("assign #7 me", Assign(7, me=True)),
        ("assign 7 Ann@Example.com", Assign(7, email="ann@example.com")),
        ("assign 7 <mailto:ann@example.com|ann@example.com>", Assign(7, email="ann@example.com")),
        ("resolve 9", Resolve(9)),
    ],
)
def test_ticket_command_grammar(text, command):
    assert parse(text) == command


@pytest.mark.parametrize(
    "text",
    [
        "",
        "   ",
        "list open closed",
        "list lost",
        "assign 7",
        "assign seven me",
        "assign 7 @ann",
        "resolve",
        "resolve 1 2",
        "show 1",
        "1 2",
        "12345678901",
    ],
)
def test_ticket_command_refuses_bad_input(text):
    with pytest.raises(UsageError):
        parse(text)


@pytest.mark.parametrize(
    ("slack", "plain"),
    [
        ("fixed &amp; done &lt;3", "fixed & done <3"),
        ("ask <@U123|ann> or <@U456>", "ask @ann or @U456"),
        ("in <#C1|support>", "in #support"),
        ("<!here> look", "@here look"),
        (
            "see <https://x.example/a?b=1&amp;c=2|the docs>",
            "see the docs (https://x.example/a?b=1&c=2)",
        ),
        ("<https://x.example>", "https://x.example"),
        ("mail <mailto:a@b.example|a@b.example>", "mail a@b.example"),
    ],
)
def test_slack_markup_to_plain_text(slack, plain):
    assert to_plain(slack) == plain


@pytest.mark.parametrize(
    ("text", "split"),
    [
        ("note: internal", ("note", "internal")),
        ("  NOTE:x", ("note", "x")),
        ("Notes are great", ("reply", "Notes are great")),
        ("a note: in the middle", ("reply", "a note: in the middle")),
    ],
)
def test_note_prefix(text, split):
    assert split_note(text) == split


def _event(**fields):
    base = {"type": "message", "user": "U1", "channel": "C1", "ts": "2.0", "thread_ts": "1.0"}
    return {**base, **fields}


def test_only_people_in_threads_are_stored():
    assert skip_reason(_event()) is None
    assert skip_reason(_event(subtype="file_share")) is None
    assert skip_reason(_event(subtype="thread_broadcast")) is None
    assert "bot" in skip_reason(_event(bot_id="B1"))
    assert "bot" in skip_reason(_event(subtype="bot_message"))
    assert "subtype" in skip_reason(_event(subtype="message_deleted"))
    assert "thread" in skip_reason(_event(thread_ts=None))
    assert "thread" in skip_reason(_event(thread_ts="2.0"))  # the parent itself
    assert "not handled" in skip_reason({"type": "reaction_added"})


def _card(**fields) -> TicketCard:
    base = dict(
        id="t-1",
        number=12,
        title="A <b> & c",
        customer=Person("Ann", "ann@example.org"),
        priority="high",
        status="open",
        assignee=None,
        description="",
    )
    return TicketCard(**{**base, **fields})


def test_ticket_blocks_escape_and_offer_only_allowed_moves():
    blocks = ticket_blocks(_card())
    assert blocks[0]["text"]["text"] == "*[#12] A &lt;b&gt; &amp; c*"
    actions = blocks[-1]
    assert actions["block_id"] == "ticket:t-1"
    status = next(e for e in actions["elements"] if e["action_id"] == "set_status")
    assert [o["value"] for o in status["options"]] == [
        "t-1:open",
        "t-1:closed",
        "t-1:on_hold",
        "t-1:pending",
        "t-1:solved",
    ]
    closed = ticket_blocks(_card(status="closed"))
    ids = [e["action_id"] for e in closed[-1]["elements"]]
    assert ids == ["assign_self", "set_priority"]
    assert all(b["type"] != "actions" for b in ticket_blocks(_card(archived=True)))
    assert digest("x", blocks) == digest("x", ticket_blocks(_card()))
    assert digest("x", blocks) != digest("x", closed)


def test_thread_post_text():
    text = message_text(
        MessageCard("m", "note", "api", "Ann", "secret <x>", attachments=("a.txt",))
    )
    assert (
        text == ":lock: *Ann* added an internal note by api:\nsecret &lt;x&gt;\n:paperclip: a.txt"
    )
    long = message_text(MessageCard("m", "customer", "email", "Bo", "x" * 50_000))
    assert len(long) < 40_000


def test_retry_after_header():
    assert retry_after_of({"Retry-After": "30"}) == 30
    assert retry_after_of({"retry-after": ["7"]}) == 7
    assert retry_after_of({"Retry-After": "soon"}) is None
    assert retry_after_of({}) is None


def _settings(**slack) -> Settings:
    return Settings(_env_file=None, **slack)  # type: ignore[call-arg]


def test_slack_settings_are_all_or_nothing():
    assert not _settings().slack_enabled
    on = _settings(slack_bot_token="xoxb-1", slack_signing_secret="s", slack_channel="#support")
    assert on.slack_enabled and on.slack_channel == "support"
    assert "xoxb-1" not in repr(on)
    socket = _settings(slack_bot_token="xoxb-1", slack_app_token="xapp-1", slack_channel="C0123")
    assert socket.slack_enabled
    assert _settings(slack_api_url="http://127.0.0.1:9/api").slack_api_url.endswith("/api/")
    from gateway.config import load_settings

    for bad, needle in (
        ({"slack_bot_token": "xoxb-1", "slack_signing_secret": "s"}, "SLACK_CHANNEL is required"),
        ({"slack_channel": "support"}, "SLACK_BOT_TOKEN"),
        ({"slack_bot_token": "xoxb-1", "slack_channel": "support"}, "SIGNING_SECRET is required"),
        ({"slack_api_url": "slack.com"}, "SLACK_API_URL"),
        ({"slack_channel": "not a channel!", "slack_bot_token": "x"}, "SLACK_CHANNEL"),
    ):
        with pytest.raises(ConfigurationError, match=needle):
            load_settings(_env_file=None, **bad)
