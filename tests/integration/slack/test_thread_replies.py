"""Agents answering in a ticket's thread: replies, notes, files, strangers, echoes."""

from __future__ import annotations

import uuid

from sqlalchemy import select

from gateway.attachments.models import Attachment
from gateway.conversations.models import Message
from gateway.slack.models import SlackUser
from tests.fakes.slack_api import BOT_ID, BOT_USER
from tests.fakes.slack_requests import event_body, signed_headers, thread_reply
from tests.integration.slack.conftest import AGENT_SLACK


def _messages(db, ticket_id: str) -> list[Message]:
    with db.transaction() as session:
        return list(
            session.scalars(
                select(Message)
                .where(Message.ticket_id == uuid.UUID(ticket_id))
                .order_by(Message.created_at)
            ).unique()
        )


def _posted_ticket(slack, make_ticket, **fields):
    ticket = make_ticket(customer_email="gus@example.org", title="Broken sink", **fields)
    slack.drain()
    return ticket, slack.parent_ts(ticket["id"])


def test_agent_reply_is_emailed_to_the_customer_once(slack, make_ticket, slack_agent):
    ticket, ts = _posted_ticket(slack, make_ticket)
    posts_before = len(slack.fake.of("chat.postMessage"))
    body = event_body(
        thread_reply(AGENT_SLACK, "Hi Gus, *fixed* &amp; done <https://x.example|docs>", ts)
    )
    assert slack.post(body, signed_headers(body)).status_code == 200
    assert slack.post(body, signed_headers(body, retry_num=1)).status_code == 200  # a retry
    slack.drain()
    [message] = _messages(slack.db, ticket["id"])
    assert (message.kind, message.channel) == ("reply", "slack")
    assert message.body_text == "Hi Gus, *fixed* & done docs (https://x.example)"
    assert message.author_id == uuid.UUID(slack_agent["id"])
    [mail] = slack.mails()
    assert mail["To"].addresses[0].addr_spec == "gus@example.org"
    assert f"[#{ticket['number']}]" in mail["Subject"]
    assert "fixed* & done" in mail.get_body(("plain",)).get_content()
    # It is in the thread already: not posted back (no echo).
    assert len(slack.fake.of("chat.postMessage")) == posts_before
    [event] = slack.events()
    assert event.state == "processed"


def test_note_prefix_makes_an_internal_note_that_is_not_emailed(slack, make_ticket, slack_agent):
    ticket, ts = _posted_ticket(slack, make_ticket)
    slack.reply(AGENT_SLACK, "Note:  customer is on the old plan", ts)
    slack.drain()
    [message] = _messages(slack.db, ticket["id"])
    assert (message.kind, message.body_text) == ("note", "customer is on the old plan")
    assert slack.mails() == []


def test_unknown_slack_user_is_told_and_nothing_is_sent(slack, make_ticket):
    ticket, ts = _posted_ticket(slack, make_ticket)
    slack.fake.add_user("U0STRANGER", "stranger@example.net")
    slack.reply("U0STRANGER", "I can answer that", ts)
    slack.drain()
    assert _messages(slack.db, ticket["id"]) == []
    assert slack.mails() == []
    [ephemeral] = slack.fake.of("chat.postEphemeral")
    assert ephemeral.params["user"] == "U0STRANGER"
    assert ephemeral.params["thread_ts"] == ts
    assert "not linked to a Supportgate agent" in ephemeral.params["text"]
    assert "--slack-id U0STRANGER" in ephemeral.params["text"]
    [event] = slack.events()
    assert (event.state, event.outcome) == ("ignored", "unknown Slack user")
    # Asked once; the answer is cached for the next message.
    slack.reply("U0STRANGER", "hello?", ts)
    slack.drain()
    assert len(slack.fake.of("users.info")) == 1
    assert len(slack.fake.of("chat.postEphemeral")) == 2


def test_customers_on_slack_are_not_agents(slack, make_ticket, make_caller, db):
    ticket, ts = _posted_ticket(slack, make_ticket)
    make_caller("customer", "cust@example.org")
    slack.fake.add_user("U0CUSTOMER", "cust@example.org")
    slack.reply("U0CUSTOMER", "answering myself", ts)
    slack.drain()
    assert _messages(db, ticket["id"]) == []
    assert len(slack.fake.of("chat.postEphemeral")) == 1


def test_agent_found_by_profile_email_and_cached(slack, make_ticket, agent, db):
    ticket, ts = _posted_ticket(slack, make_ticket)
    slack.fake.add_user("U0BYEMAIL", agent.email.upper())
    slack.reply("U0BYEMAIL", "first", ts)
    slack.reply("U0BYEMAIL", "second", ts)
    slack.drain()
    assert [m.body_text for m in _messages(db, ticket["id"])] == ["first", "second"]
    assert len(slack.fake.of("users.info")) == 1
    with db.transaction() as session:
        cached = session.get(SlackUser, "U0BYEMAIL")
        assert str(cached.user_id) == agent.id and cached.email == agent.email
    assert len(slack.mails()) == 2


def test_our_own_posts_coming_back_change_nothing(slack, make_ticket, make_caller, slack_agent):
    customer = make_caller("customer", "hal@example.org")
    ticket = make_ticket(customer_email=customer.email, title="Echo")
    customer.post(f"/api/v1/tickets/{ticket['id']}/messages", json={"body": "are you there"})
    slack.drain()
    calls = len(slack.fake.calls)
    # Slack sends every message we posted back as an event (bot_id set): all dropped.
    for posted in list(slack.fake.messages):
        event = thread_reply(BOT_USER, posted.text, posted.thread_ts or posted.ts)
        event.update(bot_id=BOT_ID, ts=posted.ts)
        assert slack.event(event).status_code == 200
    # ... and one without bot_id but from our bot user: stored, then ignored.
    slack.event(thread_reply(BOT_USER, "from our user", slack.parent_ts(ticket["id"])))
    slack.drain()
    [event] = slack.events()
    assert (event.state, event.outcome) == ("ignored", "our own message")
    assert len(_messages(slack.db, ticket["id"])) == 1
    assert slack.mails() == []
    assert {c.method for c in slack.fake.calls[calls:]} <= {"auth.test"}


def test_replies_in_unknown_threads_are_ignored(slack, slack_agent):
    slack.reply(AGENT_SLACK, "chatting", "1700000000.000100")
    slack.drain()
    [event] = slack.events()
    assert event.state == "ignored"
    assert slack.fake.of("chat.postEphemeral") == []


def test_archived_ticket_refuses_the_reply(slack, make_ticket, admin, slack_agent):
    ticket, ts = _posted_ticket(slack, make_ticket)
    assert admin.post(f"/api/v1/tickets/{ticket['id']}/archive").status_code == 200
    slack.reply(AGENT_SLACK, "too late", ts)
    slack.drain()
    assert _messages(slack.db, ticket["id"]) == []
    [ephemeral] = slack.fake.of("chat.postEphemeral")
    assert "archived" in ephemeral.params["text"]
    assert slack.mails() == []


def test_files_shared_in_the_thread_become_attachments(slack, make_ticket, slack_agent, db):
    ticket, ts = _posted_ticket(slack, make_ticket)
    report = slack.fake.add_file("F0REPORT", "report.txt", "text/plain", b"all fixed\n")
    exe = slack.fake.add_file("F0EXE", "setup.exe", "application/octet-stream", b"MZ" + b"\0" * 200)
    bare = {"id": "F0REPORT2", "name": "again.txt"}  # no URL in the event: files.info
    slack.fake.add_file("F0REPORT2", "again.txt", "text/plain", b"second file\n")
    slack.reply(AGENT_SLACK, "See attached", ts, subtype="file_share", files=[report, exe, bare])
    slack.drain()
    [message] = _messages(db, ticket["id"])
    with db.transaction() as session:
        names = sorted(
            a.filename
            for a in session.scalars(select(Attachment).where(Attachment.message_id == message.id))
        )
    assert names == ["again.txt", "report.txt"]
    assert slack.fake.of("files.info")
    downloads = slack.fake.of("file.download")
    assert all(d.token == "xoxb-test-token" for d in downloads)
    [mail] = slack.mails()
    attached = {part.get_filename(): part.get_content() for part in mail.iter_attachments()}
    assert attached == {"report.txt": "all fixed\n", "again.txt": "second file\n"}
    [ephemeral] = slack.fake.of("chat.postEphemeral")
    assert "setup.exe" in ephemeral.params["text"]


def test_file_only_message_is_a_reply_with_the_files(slack, make_ticket, slack_agent, db):
    ticket, ts = _posted_ticket(slack, make_ticket)
    photo = slack.fake.add_file("F0PIC", "notes.txt", "text/plain", b"hello\n")
    slack.reply(AGENT_SLACK, "", ts, subtype="file_share", files=[photo])
    slack.drain()
    [message] = _messages(db, ticket["id"])
    assert message.body_text == "Attached: notes.txt"
    assert len(slack.mails()) == 1


def test_the_token_never_leaves_for_other_hosts(slack, make_ticket, slack_agent, db):
    ticket, ts = _posted_ticket(slack, make_ticket)
    evil = {"id": "F0EVIL", "name": "x.txt", "url_private_download": "https://evil.example/x"}
    slack.reply(AGENT_SLACK, "look", ts, subtype="file_share", files=[evil])
    slack.drain()
    [message] = _messages(db, ticket["id"])
    assert message.body_text == "look"
    [ephemeral] = slack.fake.of("chat.postEphemeral")
    assert "x.txt: refusing to send the Slack token to evil.example" in ephemeral.params["text"]
    [mail] = slack.mails()
    assert list(mail.iter_attachments()) == []
