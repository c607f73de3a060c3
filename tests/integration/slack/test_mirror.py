"""Tickets into Slack: the parent post, updates, thread posts, rate limits, lost answers."""

from __future__ import annotations

import uuid

from sqlalchemy import update

from gateway.db import utcnow
from gateway.events import OutboxTask
from gateway.slack.models import SlackThread
from tests.fakes.slack_api import CHANNEL_ID
from tests.integration.slack.conftest import blocks_text


def _make_due(db) -> None:
    """Time passes: every deferred task is due now."""
    with db.transaction() as session:
        session.execute(
            update(OutboxTask).where(OutboxTask.state == "pending").values(available_at=utcnow())
        )


def _action_ids(blocks) -> list[str]:
    return [e["action_id"] for b in blocks if b["type"] == "actions" for e in b["elements"]]


def test_new_ticket_is_posted_once_with_its_card(slack, make_ticket, agent):
    ticket = make_ticket(
        title="Printer on fire",
        customer_email="carol@example.org",
        priority="high",
        assignee_id=agent.id,
    )
    slack.drain()
    [post] = slack.fake.of("chat.postMessage")
    assert post.params["channel"] == CHANNEL_ID  # "support", resolved by conversations.list
    assert len(slack.fake.of("conversations.list")) == 2
    assert post.params["metadata"]["event_payload"] == {"ticket_id": ticket["id"]}
    [parent] = slack.fake.parents()
    shown = blocks_text(parent.blocks)
    for part in (
        f"[#{ticket['number']}] Printer on fire",
        "carol@example.org",
        "High",
        "New",
        "Alan Agent",
    ):
        assert part in shown, part
    assert f"#{ticket['number']}" in parent.text
    assert _action_ids(parent.blocks) == ["assign_self", "set_priority", "set_status", "resolve"]
    assert slack.parent_ts(ticket["id"]) == parent.ts
    with slack.db.transaction() as session:
        thread = session.get(SlackThread, uuid.UUID(ticket["id"]))
        assert (thread.channel, thread.state) == (CHANNEL_ID, "posted")

    # The post task run again (a duplicate, a replay) posts nothing.
    with slack.db.transaction() as session:
        session.execute(
            update(OutboxTask).where(OutboxTask.kind == "slack.post").values(state="pending")
        )
    slack.drain()
    assert len(slack.fake.of("chat.postMessage")) == 1


def test_changes_from_the_api_update_the_parent(slack, make_ticket, admin, agent):
    ticket = make_ticket(title="Refund", customer_email="dan@example.org")
    slack.drain()
    ts = slack.parent_ts(ticket["id"])
    for change in ({"status": "open"}, {"priority": "urgent"}, {"assignee_id": agent.id}):
        assert admin.patch(f"/api/v1/tickets/{ticket['id']}", json=change).status_code == 200
    slack.drain()
    updates = slack.fake.of("chat.update")
    assert updates and all(u.params["ts"] == ts for u in updates)
    assert updates[-1].params["channel"] == CHANNEL_ID
    shown = blocks_text(slack.fake.message(ts).blocks)
    assert "Urgent" in shown and "Open" in shown and "Alan Agent" in shown
    # A change Slack does not show (a tag) calls nothing.
    before = len(slack.fake.of("chat.update"))
    assert admin.put(f"/api/v1/tickets/{ticket['id']}/tags/vip").status_code == 200
    slack.drain()
    assert len(slack.fake.of("chat.update")) == before
    # Deleting shows the ticket read-only.
    assert admin.delete(f"/api/v1/tickets/{ticket['id']}").status_code == 204
    slack.drain()
    parent = slack.fake.message(ts)
    assert "deleted" in blocks_text(parent.blocks)
    assert _action_ids(parent.blocks) == []
    assert len(slack.fake.parents()) == 1


def test_messages_are_posted_in_the_thread_in_order(slack, make_ticket, admin, make_caller):
    customer = make_caller("customer", "erin@example.org", "Erin")
    ticket = make_ticket(title="Login broken", customer_email=customer.email)
    tid = ticket["id"]
    bodies = ["first: it broke", "second: still broken", "third: please help"]
    for body in bodies:
        assert (
            customer.post(f"/api/v1/tickets/{tid}/messages", json={"body": body}).status_code == 201
        )
    assert (
        admin.post(
            f"/api/v1/tickets/{tid}/messages", json={"body": "looking", "internal": True}
        ).status_code
        == 201
    )
    # The first two tasks are rate-limited for a long while; the one after them
    # posts every pending message, in order, and the deferred ones find nothing left.
    slack.fake.rate_limit("chat.postMessage", times=2, retry_after=30)
    slack.drain()
    parent_ts = slack.parent_ts(tid)
    thread = slack.fake.thread(parent_ts)
    texts = [m.text for m in thread]
    assert [t.split("\n", 1)[1] for t in texts[:3]] == bodies
    assert texts[0].startswith("*Erin* wrote by api")
    assert texts[3].startswith(":lock: *Ada Admin* added an internal note")
    _make_due(slack.db)
    slack.drain()
    assert len(slack.fake.thread(parent_ts)) == 4
    assert len(slack.fake.parents()) == 1
    assert len(slack.fake.of("chat.postMessage")) == 2 + 1 + 4  # two 429s, the parent, four
    assert all(t.state == "done" for t in slack.tasks())


def test_rate_limit_defers_the_task_to_retry_after(slack, make_ticket):
    slack.fake.rate_limit("chat.postMessage", times=1, retry_after=45)
    ticket = make_ticket(title="Slow")
    slack.drain()
    [task] = [t for t in slack.tasks() if t.kind == "slack.post"]
    assert task.state == "pending"
    assert task.attempts == 0  # a rate limit is not a failed attempt
    wait = (task.available_at - utcnow()).total_seconds()
    assert 40 < wait <= 45
    assert "retrying in 45 s" in task.last_error
    assert slack.fake.parents() == []
    _make_due(slack.db)
    slack.drain()
    assert len(slack.fake.parents()) == 1
    assert slack.parent_ts(ticket["id"])


def test_short_retry_after_is_retried_in_place(slack, make_ticket):
    slack.fake.rate_limit("chat.postMessage", times=1, retry_after=1)
    make_ticket(title="Quick")
    slack.drain()
    assert len(slack.fake.of("chat.postMessage")) == 2
    assert len(slack.fake.parents()) == 1
    assert all(t.state == "done" for t in slack.tasks())


def test_a_lost_answer_never_posts_twice(slack, make_ticket, make_caller):
    customer = make_caller("customer", "fay@example.org", "Fay")
    slack.fake.drop_answer("chat.postMessage")  # the parent reaches Slack, its answer does not
    ticket = make_ticket(title="Lost answer", customer_email=customer.email)
    slack.drain()
    assert len(slack.fake.parents()) == 1
    [task] = [t for t in slack.tasks() if t.kind == "slack.post"]
    assert task.state == "pending" and task.attempts == 1
    _make_due(slack.db)
    slack.drain()
    assert len(slack.fake.parents()) == 1
    assert slack.fake.of("conversations.history")
    assert slack.parent_ts(ticket["id"]) == slack.fake.parents()[0].ts

    # The same for a thread post.
    slack.fake.drop_answer("chat.postMessage")
    customer.post(f"/api/v1/tickets/{ticket['id']}/messages", json={"body": "once"})
    slack.drain()
    _make_due(slack.db)
    slack.drain()
    thread = slack.fake.thread(slack.parent_ts(ticket["id"]))
    assert [m.text.split("\n", 1)[1] for m in thread] == ["once"]
    assert slack.fake.of("conversations.replies")


def test_mail_ticket_and_follow_up_reach_the_thread(slack, mail_server):
    from tests.integration.conftest import make_mail

    first = make_mail(subject="VPN down", body="Hello,\n\nthe VPN is down.\n")
    mail_server.send(first)
    mail_server.process()
    slack.drain()
    [parent] = slack.fake.parents()
    assert "VPN down" in blocks_text(parent.blocks)
    follow = make_mail(
        subject="Re: VPN down", body="Still down.\n", In_Reply_To=first["Message-ID"]
    )
    mail_server.send(follow)
    mail_server.process()
    slack.drain()
    thread = slack.fake.thread(parent.ts)
    assert [m.text.split("\n", 1)[1].strip() for m in thread] == [
        "Hello,\n\nthe VPN is down.",
        "Still down.",
    ]
    assert "wrote by email" in thread[0].text
