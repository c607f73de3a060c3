"""Buttons, selects and the /ticket command."""

from __future__ import annotations

from tests.fakes.slack_requests import command_body, signed_headers
from tests.integration.slack.conftest import AGENT_SLACK, blocks_text


def _ticket(slack, make_ticket, **fields):
    ticket = make_ticket(customer_email="ivy@example.org", title="Cannot log in", **fields)
    slack.drain()
    return ticket, slack.parent_ts(ticket["id"])


def _buttons(slack, ts: str) -> dict[str, dict]:
    blocks = slack.fake.message(ts).blocks
    return {e["action_id"]: e for b in blocks if b["type"] == "actions" for e in b["elements"]}


def _select(element: dict, value: str) -> dict:
    option = next(o for o in element["options"] if o["value"].endswith(":" + value))
    return {"action_id": element["action_id"], "type": "static_select", "selected_option": option}


def test_buttons_and_selects_change_the_ticket_and_the_parent(
    slack, make_ticket, admin, slack_agent
):
    ticket, ts = _ticket(slack, make_ticket)
    url = f"/api/v1/tickets/{ticket['id']}"
    buttons = _buttons(slack, ts)
    assert slack.action(buttons["assign_self"], ts).status_code == 200
    assert admin.get(url).get_json()["assignee"]["email"] == slack_agent["email"]
    assert slack.action(_select(buttons["set_priority"], "urgent"), ts).status_code == 200
    assert slack.action(_select(buttons["set_status"], "pending"), ts).status_code == 200
    now = admin.get(url).get_json()
    assert (now["priority"], now["status"]) == ("urgent", "pending")
    slack.drain()
    shown = blocks_text(slack.fake.message(ts).blocks)
    assert "Urgent" in shown and "Pending" in shown and "Sam Slack" in shown
    buttons = _buttons(slack, ts)
    assert slack.action(buttons["resolve"], ts).status_code == 200
    assert admin.get(url).get_json()["status"] == "solved"
    slack.drain()
    assert "resolve" not in _buttons(slack, ts)  # a solved ticket offers no Resolve
    history = admin.get(url + "/history").get_json()["items"]
    actors = {h["actor"]["email"] for h in history if h["action"] == "updated"}
    assert actors == {slack_agent["email"]}
    assert slack.fake.of("chat.postEphemeral") == []


def test_refused_actions_are_explained_to_the_user(slack, make_ticket, admin, slack_agent):
    ticket, ts = _ticket(slack, make_ticket)
    stale = _buttons(slack, ts)
    assert (
        admin.patch(f"/api/v1/tickets/{ticket['id']}", json={"status": "closed"}).status_code == 200
    )
    # The buttons shown before the close: reopening a closed ticket is not allowed.
    assert slack.action(_select(stale["set_status"], "open"), ts).status_code == 200
    # Someone Supportgate does not know.
    slack.fake.add_user("U0NOBODY", None)
    assert slack.action(stale["assign_self"], ts, user="U0NOBODY").status_code == 200
    slack.drain()
    first, second = slack.fake.of("chat.postEphemeral")
    assert (
        first.params["user"] == AGENT_SLACK
        and "cannot go from closed to open" in first.params["text"]
    )
    assert second.params["user"] == "U0NOBODY" and "not linked" in second.params["text"]
    assert admin.get(f"/api/v1/tickets/{ticket['id']}").get_json()["assignee"] is None


def test_ticket_command_shows_one(slack, make_ticket, slack_agent):
    ticket, _ = _ticket(slack, make_ticket, priority="high")
    response = slack.command(str(ticket["number"]))
    assert response.status_code == 200
    answer = response.get_json()
    assert answer["response_type"] == "ephemeral"
    shown = blocks_text(answer["blocks"])
    assert f"[#{ticket['number']}] Cannot log in" in shown and "ivy@example.org" in shown
    assert "no such ticket" in slack.command("#999").get_json()["text"]


def test_ticket_command_lists(slack, make_ticket, admin, slack_agent):
    one, _ = _ticket(slack, make_ticket)
    two = make_ticket(title="Second one", customer_email="jo@example.org")
    admin.patch(f"/api/v1/tickets/{two['id']}", json={"status": "pending"})
    text = slack.command("list").get_json()["text"]
    assert f"#{one['number']}" in text and f"#{two['number']}" in text
    pending = slack.command("list pending").get_json()["text"]
    assert f"#{two['number']}" in pending and f"#{one['number']}`" not in pending
    assert slack.command("list on-hold").get_json()["text"] == "No on hold tickets."
    bad = slack.command("list nonsense").get_json()["text"]
    assert "'nonsense' is not a status" in bad and "*Usage*" in bad


def test_ticket_command_assigns_and_resolves(slack, make_ticket, admin, agent, slack_agent):
    ticket, ts = _ticket(slack, make_ticket)
    url = f"/api/v1/tickets/{ticket['id']}"
    n = ticket["number"]
    slack.fake.add_user("U0AGENT02", agent.email)
    answer = slack.command(f"assign {n} <@U0AGENT02|agent>").get_json()["text"]
    assert answer == f"Assigned #{n} to Alan Agent."
    assert admin.get(url).get_json()["assignee"]["id"] == agent.id
    assert slack.command(f"assign {n} me").get_json()["text"] == f"Assigned #{n} to Sam Slack."
    assert slack.command(f"assign {n} {agent.email}").get_json()["text"].startswith("Assigned")
    refused = slack.command(f"assign {n} <@U0NOBODY>").get_json()["text"]
    assert "not a Supportgate agent" in refused
    assert slack.command(f"resolve {n}").get_json()["text"] == f"Resolved #{n}."
    assert admin.get(url).get_json()["status"] == "solved"
    admin.patch(url, json={"status": "closed"})
    assert "cannot go from closed to solved" in slack.command(f"resolve {n}").get_json()["text"]
    slack.drain()
    assert "*Status*\\nClosed" in blocks_text(slack.fake.message(ts).blocks)


def test_ticket_command_usage_on_bad_input(slack, slack_agent):
    for text in ("", "frobnicate 1", "assign 1", "assign x @y", "resolve", "12 13", "assign 1 bob"):
        answer = slack.command(text).get_json()
        assert answer["response_type"] == "ephemeral"
        assert answer["text"].startswith(":warning:") and "*Usage*" in answer["text"], text


def test_ticket_command_needs_an_agent_and_a_signature(slack, make_ticket):
    ticket, _ = _ticket(slack, make_ticket)
    slack.fake.add_user("U0RANDOM", "random@example.net")
    answer = slack.command(str(ticket["number"]), user="U0RANDOM").get_json()
    assert "not linked to a Supportgate agent" in answer["text"]
    assert "blocks" not in answer
    body = command_body(str(ticket["number"]), AGENT_SLACK)
    unsigned = slack.post(body, {"Content-Type": "application/x-www-form-urlencoded"})
    assert unsigned.status_code == 401
    forged = signed_headers(body, secret="guess", content_type="application/x-www-form-urlencoded")
    assert slack.post(body, forged).status_code == 401
