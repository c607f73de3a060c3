"""Slack tables (migration 0007).

A post's ``state`` makes a retry after a crash detectable (as outgoing mail
does): ``pending`` → ``posting`` (committed before the Web API call) →
``posted`` (``ts`` known). A row found ``posting`` means the last attempt may
have reached Slack; the poster looks for the message (its metadata names the
row) before posting again, so a connection reset never posts twice.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import JSON, BigInteger, ForeignKey, Index, Integer, String
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Mapped, mapped_column

from gateway.db import Base, UTCDateTime, utcnow

JSONType = JSON().with_variant(JSONB(), "postgresql")
BigId = BigInteger().with_variant(Integer, "sqlite")

POST_STATES = ("pending", "posting", "posted")
EVENT_STATES = ("received", "processed", "ignored")


class SlackEvent(Base):
    """An Events API callback, stored before Slack gets its 200."""

    __tablename__ = "slack_events"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    event_id: Mapped[str] = mapped_column(String(64), unique=True)
    event_type: Mapped[str] = mapped_column(String(64))
    team_id: Mapped[str | None] = mapped_column(String(32))
    payload: Mapped[dict[str, Any]] = mapped_column(JSONType)
    state: Mapped[str] = mapped_column(String(16), default="received")
    outcome: Mapped[str | None] = mapped_column(String(300))
    received_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    processed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class SlackThread(Base):
    """A ticket's parent message in the support channel."""

    __tablename__ = "slack_threads"
    __table_args__ = (Index("ix_slack_threads_channel_ts", "channel", "ts", unique=True),)

    ticket_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("tickets.id", ondelete="CASCADE"), primary_key=True
    )
    # The configured channel until posted; then the id Slack answered with.
    channel: Mapped[str] = mapped_column(String(80))
    ts: Mapped[str | None] = mapped_column(String(32))
    state: Mapped[str] = mapped_column(String(16), default="pending")
    posting_since: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # sha256 of the blocks Slack shows, so an update that changes nothing is skipped.
    rendered: Mapped[str | None] = mapped_column(String(64))
    # One poster per thread at a time (keeps thread posts in order).
    lease_until: Mapped[datetime | None] = mapped_column(UTCDateTime)
    lease_owner: Mapped[str | None] = mapped_column(String(32))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)


class SlackPost(Base):
    """A message of a ticket as it appears in the thread: posted by us
    (``origin`` ``gateway``) or written there by an agent (``slack``)."""

    __tablename__ = "slack_posts"
    __table_args__ = (
        Index("ix_slack_posts_ticket", "ticket_id", "state", "created_at"),
        Index("ix_slack_posts_channel_ts", "channel", "ts", unique=True),
    )

    message_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("messages.id", ondelete="CASCADE"), primary_key=True
    )
    ticket_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("tickets.id", ondelete="CASCADE"))
    origin: Mapped[str] = mapped_column(String(8))
    channel: Mapped[str | None] = mapped_column(String(80))
    ts: Mapped[str | None] = mapped_column(String(32))
    state: Mapped[str] = mapped_column(String(16), default="pending")
    posting_since: Mapped[datetime | None] = mapped_column(UTCDateTime)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class SlackUser(Base):
    """Cache of Slack users looked up by ``users.info`` (profile email → agent)."""

    __tablename__ = "slack_users"

    slack_user_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    email: Mapped[str | None] = mapped_column(String(320))
    user_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"))
    is_bot: Mapped[bool] = mapped_column(default=False)
    fetched_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
