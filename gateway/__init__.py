"""Supportgate's domain core.

Customers' mail, agents' Slack threads and API calls all end up here as the
same few operations on tickets and their conversation. This package knows
nothing of HTTP, SMTP or Slack: adapters translate their protocols into calls
to the services below, and the services describe what must happen outside the
database (events, outgoing mail) by writing outbox rows in the same
transaction.

    config.py          Settings (pydantic-settings, ``SUPPORTGATE_*`` and ``.env``)
    errors.py          the GatewayError tree every edge translates in one place
    db.py              engine/session factory, declarative base, UTC timestamps
    permissions.py     Principal and every "may X do Y" decision
    events.py          outbox rows for live events and side effects
    stream.py          the live event stream: positions in commit order, replay reads
    stream_grants.py   short-lived credentials for the API's redirect to the stream
    users/             users and API tokens
    tickets/           tickets, workflow, listing, audit history
    conversations/     messages, rendering (markdown, sanitised HTML)
    attachments/       attachment rows (files arrive with the storage work)
    metadata/          ticket metadata, tags, custom field definitions
    policies/          the deletion policy
    migrations/        Alembic

Services never commit; the edge (a request, a task, a CLI command) owns the
transaction, so an event or task only leaves once its data is committed.
"""
