"""Import every model so that ``Base.metadata`` is complete (Alembic, tests)."""

from gateway.attachments.models import Attachment
from gateway.audit import AuditEntry
from gateway.conversations.models import Message
from gateway.db import Base
from gateway.events import Event, OutboxTask
from gateway.inbound.models import ImapCheckpoint, InboundMail, TicketParticipant
from gateway.metadata.models import CustomFieldDefinition, TicketMetadata
from gateway.outbound.models import OutboundMail
from gateway.policies.models import DeletionPolicy
from gateway.slack.models import SlackEvent, SlackPost, SlackThread, SlackUser
from gateway.tickets.models import Ticket, TicketHistory, TicketTag
from gateway.users.models import ApiToken, User

__all__ = [
    "ApiToken",
    "Attachment",
    "AuditEntry",
    "Base",
    "CustomFieldDefinition",
    "DeletionPolicy",
    "Event",
    "ImapCheckpoint",
    "InboundMail",
    "Message",
    "OutboundMail",
    "OutboxTask",
    "SlackEvent",
    "SlackPost",
    "SlackThread",
    "SlackUser",
    "Ticket",
    "TicketHistory",
    "TicketMetadata",
    "TicketParticipant",
    "TicketTag",
    "User",
]
