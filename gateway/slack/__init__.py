"""Slack's side of the domain: what is mirrored where, and what came from Slack.

No Slack library is imported here (adapters/slack/ speaks the protocol); this
package only keeps the state that makes the mirror exactly-once:

    models.py    slack_events (stored before Slack is acknowledged; unique
                 event_id), slack_threads (a ticket's parent message: channel,
                 ts), slack_posts (each message mirrored into, or taken from, a
                 thread), slack_users (Slack user → agent, cached)
    mirror.py    the event hook: domain events → ``slack.*`` outbox rows, in
                 the transaction of the change
    services.py  storing events, per-thread leases, the post state machine,
                 user mapping, and the agent actions taken from Slack
"""
