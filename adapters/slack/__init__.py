"""Slack: agents work tickets from threads in the support channel.

    app.py           the bolt app (HTTP mode behind POST /slack/events, or Socket Mode)
    listeners.py     thin bolt listeners: store events, answer /ticket, apply actions
    events.py        which Events API callbacks are worth storing (pure)
    interactions.py  /ticket and the buttons, in the request's own transaction
    commands.py      the /ticket grammar (pure)
    inbound.py       ``slack.event`` task: a stored thread message → reply or note
    files.py         files shared in a thread → attachments
    poster.py        ``slack.post`` / ``thread`` / ``update`` / ``ephemeral`` tasks
    blocks.py        Block Kit for tickets and messages (pure); cards.py feeds it
    mrkdwn.py        Slack markup → plain text (pure)
    client.py        the Web API (slack-sdk WebClient) and how its errors map
    socket_mode.py   Socket Mode (``supportgate slack``)

Request path (HTTP): bolt checks the signature → the event is stored with its
task in one transaction (unique event_id) → 200. Everything that talks to
Slack's Web API runs as an outbox task; the domain side is gateway/slack/.
"""
