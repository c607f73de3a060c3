"""Attachments: accepting files, listing, serving and removing them.

Every file, whatever its channel, goes through :func:`accept_file`: its type
is sniffed from the bytes and checked against the policy of its kind
(``policy.py``). The API refuses what fails (413/415); mail keeps it with a
``quarantine_reason`` (:func:`store_mail_file`), since a customer's mail is
never dropped.

Files are stored before their row commits; removing the last row of a file
queues a ``storage.collect`` task, and the collection leaves young files
alone (see gateway.storage.collect), so an upload of the same bytes running
at the same time keeps its file.

Visibility: a customer sees the attachments of their own tickets, except
those of internal notes; anything else is NotFound, like a missing id.
"""

from __future__ import annotations

import io
import logging
import re
import unicodedata
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import select, tuple_
from sqlalchemy.orm import Session

from gateway.attachments.models import Attachment
from gateway.attachments.policy import Policies, check_file
from gateway.attachments.previews import PreviewCache, preview_kind
from gateway.attachments.sniff import sniff
from gateway.conversations.models import Message
from gateway.db import Database
from gateway.errors import (
    NotFound,
    PayloadTooLarge,
    UnsupportedMediaType,
    ValidationFailed,
)
from gateway.events import enqueue, record_event
from gateway.pagination import decode_cursor, encode_cursor
from gateway.permissions import Principal, can_see_internal, check_ticket_visible, require_staff
from gateway.storage import GRACE_SECONDS, StagedFile, Storage, collect, storage_from_settings
from gateway.tickets.history import audit
from gateway.tickets.models import Ticket
from gateway.tickets.services import check_writable

if TYPE_CHECKING:
    from gateway.config import Settings

log = logging.getLogger("supportgate.attachments")

MAX_FILENAME = 255
_UNSAFE_NAME = re.compile(r"[\x00-\x1f\x7f]")


@dataclass
class Files:
    """What attachment work needs: the store, the policies, the preview cache."""

    storage: Storage
    policies: Policies
    previews: PreviewCache
    grace_seconds: float = GRACE_SECONDS

    @classmethod
    def from_settings(cls, settings: Settings) -> Files:
        """For entry points: the backend and limits the settings name."""
        return cls(
            storage=storage_from_settings(settings),
            policies=Policies.from_settings(settings),
            previews=PreviewCache(
                settings.data_dir / "previews",
                size=settings.preview_size,
                max_pixels=settings.preview_max_pixels,
            ),
            grace_seconds=settings.storage_grace_seconds,
        )

    def stage(self, inline: bool = False) -> StagedFile:
        """A staged upload limited to the size of its kind."""
        return self.storage.stage(self.policies.for_kind(inline).max_bytes)


def clean_filename(name: str | None) -> str:
    """A displayable file name: no directories, no control characters, at most
    255 characters; the name a client sent is otherwise kept as it was."""
    name = unicodedata.normalize("NFC", name or "")
    name = name.replace("\\", "/").rsplit("/", 1)[-1]
    name = _UNSAFE_NAME.sub("", name).strip().lstrip(".") or "attachment"
    if len(name) > MAX_FILENAME:
        stem, dot, ext = name.rpartition(".")
        if dot and 0 < len(ext) <= 16:
            name = stem[: MAX_FILENAME - len(ext) - 1] + "." + ext
        else:
            name = name[:MAX_FILENAME]
    return name


def accept_file(policies: Policies, staged: StagedFile, inline: bool = False) -> str:
    """Sniff a staged file and check it against the policy of its kind; returns
    its media type. Raises PayloadTooLarge (413) or UnsupportedMediaType (415)."""
    content_type = sniff(staged.head)
    staged.finish()
    check_file(policies, policies.for_kind(inline), content_type, staged.size, staged.path)
    return content_type


# --- adding ---------------------------------------------------------------------


def check_target_message(
    session: Session, principal: Principal, ticket: Ticket, message_id: uuid.UUID | None
) -> Message | None:
    """The message a file is attached to: one of the ticket's; for a customer,
    one of their own. ValidationFailed otherwise (the same for all reasons)."""
    if message_id is None:
        return None
    message = session.get(Message, message_id)
    if (
        message is None
        or message.ticket_id != ticket.id
        or (not can_see_internal(principal) and message.author_id != principal.user_id)
    ):
        raise ValidationFailed.on("message_id", "no such message of yours on this ticket")
    return message


def check_upload_allowed(
    session: Session, principal: Principal, ticket: Ticket, message_id: uuid.UUID | None
) -> None:
    """Everything about an upload that can be decided before its bytes arrive."""
    check_writable(ticket)
    check_target_message(session, principal, ticket, message_id)


def _record(
    session: Session,
    principal: Principal,
    ticket: Ticket,
    message: Message | None,
    *,
    filename: str,
    content_type: str,
    sha256: str,
    size: int,
    inline: bool,
    quarantine_reason: str | None = None,
) -> Attachment:
    attachment = Attachment(
        ticket_id=ticket.id,
        message_id=message.id if message else None,
        filename=clean_filename(filename),
        content_type=content_type[:127],
        size=size,
        sha256=sha256,
        inline=inline,
        quarantine_reason=quarantine_reason[:200] if quarantine_reason else None,
    )
    session.add(attachment)
    session.flush()
    record_event(
        session,
        "attachment.created",
        ticket=ticket,
        actor=principal.as_actor(),
        # Files of internal notes are as internal as the notes.
        internal=message is not None and message.kind == "note",
        message_id=str(message.id) if message else None,
        attachment_id=str(attachment.id),
    )
    if preview_kind(attachment.content_type, attachment.quarantine_reason is not None) == "image":
        enqueue(session, "attachment.preview", str(attachment.id), {"sha256": sha256})
    return attachment


def add_attachment(
    session: Session,
    principal: Principal,
    ticket: Ticket,
    staged: StagedFile,
    *,
    filename: str | None,
    message_id: uuid.UUID | None,
    content_type: str,
) -> Attachment:
    """Record an uploaded file, already accepted (see accept_file) and stored.

    Raises Conflict (archived or deleted ticket) and ValidationFailed (message)."""
    check_writable(ticket)
    message = check_target_message(session, principal, ticket, message_id)
    attachment = _record(
        session,
        principal,
        ticket,
        message,
        filename=filename or "attachment",
        content_type=content_type,
        sha256=staged.sha256,
        size=staged.size,
        inline=False,
    )
    return attachment


def add_stored_file(
    session: Session,
    principal: Principal,
    ticket: Ticket,
    message: Message,
    *,
    filename: str,
    content_type: str,
    sha256: str,
    size: int,
) -> Attachment:
    """Record a file of ``message`` that another channel (Slack) accepted (see
    accept_file) and committed to storage already."""
    return _record(
        session,
        principal,
        ticket,
        message,
        filename=filename,
        content_type=content_type,
        sha256=sha256,
        size=size,
        inline=False,
    )


def store_mail_file(
    session: Session,
    storage: Storage,
    policies: Policies,
    principal: Principal,
    ticket: Ticket,
    message: Message,
    *,
    data: bytes,
    filename: str,
    inline: bool,
) -> Attachment:
    """Keep a file that came by mail, byte for byte, whatever the policy says:
    a refused one is stored with its ``quarantine_reason``. Storage errors
    propagate (the ingest task is retried, the mail stays stored)."""
    with storage.stage() as staged:
        staged.write(data)
        reason: str | None = None
        try:
            content_type = accept_file(policies, staged, inline)
        except (PayloadTooLarge, UnsupportedMediaType) as exc:
            content_type = sniff(staged.head)
            reason = exc.detail
            log.info(
                "mail attachment quarantined",
                extra={"ticket": ticket.number, "reason": reason, "type": content_type},
            )
        sha, size = storage.commit(staged)
    return _record(
        session,
        principal,
        ticket,
        message,
        filename=filename,
        content_type=content_type,
        sha256=sha,
        size=size,
        inline=inline,
        quarantine_reason=reason,
    )


# --- reading --------------------------------------------------------------------


def _visible(stmt: Any, principal: Principal) -> Any:
    if can_see_internal(principal):
        return stmt
    notes = select(Message.id).where(Message.kind == "note")
    return stmt.where((Attachment.message_id.is_(None)) | (Attachment.message_id.not_in(notes)))


def list_attachments(
    session: Session, principal: Principal, ticket: Ticket, limit: int, cursor: str | None
) -> tuple[list[Attachment], str | None]:
    stmt = _visible(select(Attachment).where(Attachment.ticket_id == ticket.id), principal)
    if cursor:
        values = decode_cursor(cursor, kinds=("attachments",))
        try:
            after = (datetime.fromisoformat(values[1]), uuid.UUID(values[2]))
        except (IndexError, TypeError, ValueError):
            raise ValidationFailed.on("cursor", "not a cursor this API issued") from None
        stmt = stmt.where(tuple_(Attachment.created_at, Attachment.id) > after)
    rows = list(
        session.scalars(stmt.order_by(Attachment.created_at, Attachment.id).limit(limit + 1))
    )
    more = len(rows) > limit
    rows = rows[:limit]
    if not more or not rows:
        return rows, None
    last = rows[-1]
    return rows, encode_cursor("attachments", last.created_at.isoformat(), str(last.id))


def get_attachment(
    session: Session, principal: Principal, attachment_id: str
) -> tuple[Attachment, Ticket]:
    """An attachment the caller may see, with its ticket; NotFound otherwise."""
    missing = NotFound("no such attachment")
    try:
        key = uuid.UUID(attachment_id)
    except ValueError:
        raise missing from None
    attachment = session.scalar(_visible(select(Attachment).where(Attachment.id == key), principal))
    if attachment is None:
        raise missing
    ticket = session.get(Ticket, attachment.ticket_id)
    try:
        check_ticket_visible(principal, ticket)
    except NotFound:
        raise missing from None
    assert ticket is not None
    return attachment, ticket


def delete_attachment(
    session: Session, principal: Principal, attachment: Attachment, ticket: Ticket
) -> None:
    """Remove a file from its ticket (staff; not on an archived or deleted
    ticket). The stored file goes with the ``storage.collect`` task once no
    row references it."""
    require_staff(principal)
    check_writable(ticket)
    audit(session, ticket, principal, "attachment_deleted", "attachments", attachment.filename)
    enqueue(
        session,
        "storage.collect",
        f"attachment:{attachment.id}",
        {"sha256": [attachment.sha256]},
    )
    session.delete(attachment)
    session.flush()


# --- tasks (run by the task runner after commit) ------------------------------------


def collect_files(db: Database, files: Files, payload: dict[str, Any]) -> int:
    """``storage.collect``: remove the named files that nothing references."""
    hashes = list(payload.get("sha256", []))
    with db.transaction() as session:
        removed = collect(session, files.storage, hashes, files.grace_seconds)
    for sha in hashes:
        if removed and not files.storage.exists(sha):
            files.previews.forget(sha)
    return removed


def make_preview(db: Database, files: Files, payload: dict[str, Any]) -> bool:
    """``attachment.preview``: make the thumbnail of an image ahead of the first view."""
    from gateway.attachments.previews import PreviewUnavailable

    sha = str(payload.get("sha256", ""))
    with db.transaction() as session:
        row = session.scalar(
            select(Attachment).where(
                Attachment.sha256 == sha, Attachment.quarantine_reason.is_(None)
            )
        )
        content_type = row.content_type if row is not None else None
    if content_type is None or files.previews.get(sha) is not None:
        return False
    try:
        with files.storage.open(sha) as stream:
            files.previews.make(sha, stream, content_type)
    except (PreviewUnavailable, FileNotFoundError) as exc:
        log.info("no preview", extra={"sha256": sha, "reason": str(exc)})
        return False
    return True


def open_bytes(files: Files, attachment: Attachment) -> io.BufferedIOBase:
    """The stored bytes of an attachment; NotFound when the file is gone."""
    try:
        return files.storage.open(attachment.sha256)  # type: ignore[return-value]
    except FileNotFoundError:
        log.error("attachment file missing", extra={"sha256": attachment.sha256})
        raise NotFound("the file of this attachment is missing") from None
