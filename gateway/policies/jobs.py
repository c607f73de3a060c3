"""The deletion policy, applied by a periodic job.

One run:

1. archives tickets closed (and untouched) for ``archive_closed_after_days``;
2. purges tickets soft-deleted for ``purge_deleted_after_days``;
3. removes attachment files that nothing references any more (queued by
   purges and deletions as ``storage.collect`` outbox tasks, plus a sweep),
   their cached thumbnails, and uploads a crash left half-staged.

Work goes in batches, each its own transaction. On PostgreSQL rows are taken
with ``FOR UPDATE SKIP LOCKED``, so two runs at once share the work and never
touch the same ticket; on SQLite every write transaction is serialised anyway.
Running it again changes nothing that the first run did not leave to do.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from gateway.db import Database, utcnow
from gateway.events import OutboxTask
from gateway.permissions import Principal
from gateway.policies.services import get_deletion_policy
from gateway.storage import GRACE_SECONDS, Storage, collect

if TYPE_CHECKING:
    from gateway.attachments.previews import PreviewCache
from gateway.tickets import services as tickets
from gateway.tickets.models import Ticket

log = logging.getLogger("supportgate.policies")

# A staged upload older than this is left over from a crash, not in progress.
STAGING_MAX_AGE = 6 * 3600


@dataclass
class PolicyRun:
    archived: int = 0
    purged: int = 0
    files_removed: int = 0


def _locked(session: Session, stmt: Any, of: Any) -> Any:
    if session.get_bind().dialect.name == "postgresql":
        # ``of``: lock the rows of that table only, not the eagerly joined users.
        return stmt.with_for_update(skip_locked=True, of=of)
    return stmt


def _archive_batch(db: Database, cutoff: datetime, batch: int) -> int:
    system = Principal.system()
    with db.transaction() as session:
        rows = (
            session.scalars(
                _locked(
                    session,
                    select(Ticket)
                    .where(
                        Ticket.status == "closed",
                        Ticket.archived_at.is_(None),
                        Ticket.deleted_at.is_(None),
                        Ticket.updated_at < cutoff,
                    )
                    .order_by(Ticket.updated_at)
                    .limit(batch),
                    Ticket,
                )
            )
            .unique()
            .all()
        )
        for ticket in rows:
            tickets.archive(session, system, ticket)
        return len(rows)


def _purge_batch(db: Database, cutoff: datetime, batch: int) -> int:
    system = Principal.system()
    with db.transaction() as session:
        rows = (
            session.scalars(
                _locked(
                    session,
                    select(Ticket)
                    .where(Ticket.deleted_at.is_not(None), Ticket.deleted_at < cutoff)
                    .order_by(Ticket.deleted_at)
                    .limit(batch),
                    Ticket,
                )
            )
            .unique()
            .all()
        )
        for ticket in rows:
            tickets.purge(session, system, ticket)
        return len(rows)


def _collect_batch(db: Database, storage: Storage, batch: int, grace: float) -> tuple[int, int]:
    with db.transaction() as session:
        tasks = session.scalars(
            _locked(
                session,
                select(OutboxTask)
                .where(OutboxTask.kind == "storage.collect", OutboxTask.state == "pending")
                .order_by(OutboxTask.created_at)
                .limit(batch),
                OutboxTask,
            )
        ).all()
        removed = 0
        for task in tasks:
            removed += collect(session, storage, list(task.payload.get("sha256", [])), grace)
            task.state = "done"
            task.attempts += 1
        return len(tasks), removed


def sweep_orphans(db: Database, storage: Storage, grace: float = GRACE_SECONDS) -> int:
    """Remove stored files no attachment references (old enough not to be mid-upload)."""
    removed = 0
    chunk: list[str] = []
    for sha in storage.iter_hashes():
        chunk.append(sha)
        if len(chunk) == 500:
            with db.transaction() as session:
                removed += collect(session, storage, chunk, grace)
            chunk = []
    if chunk:
        with db.transaction() as session:
            removed += collect(session, storage, chunk, grace)
    return removed


def sweep_previews(db: Database, previews: PreviewCache) -> int:
    """Forget the cached thumbnails of files no attachment references."""
    from gateway.attachments.models import Attachment

    cached = previews.cached_hashes()
    removed = 0
    for start in range(0, len(cached), 500):
        chunk = cached[start : start + 500]
        with db.transaction() as session:
            referenced = set(
                session.scalars(select(Attachment.sha256).where(Attachment.sha256.in_(chunk)))
            )
        for sha in chunk:
            if sha not in referenced:
                previews.forget(sha)
                removed += 1
    return removed


def apply_deletion_policy(
    db: Database,
    storage: Storage | None,
    *,
    now: datetime | None = None,
    batch: int = 200,
    grace_seconds: float = GRACE_SECONDS,
    sweep: bool = True,
    previews: PreviewCache | None = None,
) -> PolicyRun:
    now = now or utcnow()
    with db.transaction() as session:
        policy = get_deletion_policy(session)
        archive_days = policy.archive_closed_after_days
        purge_days = policy.purge_deleted_after_days
    run = PolicyRun()
    if archive_days is not None:
        cutoff = now - timedelta(days=archive_days)
        while (n := _archive_batch(db, cutoff, batch)) > 0:
            run.archived += n
    if purge_days is not None:
        cutoff = now - timedelta(days=purge_days)
        while (n := _purge_batch(db, cutoff, batch)) > 0:
            run.purged += n
    if storage is not None:
        while True:
            taken, removed = _collect_batch(db, storage, batch, grace_seconds)
            run.files_removed += removed
            if taken == 0:
                break
        if sweep:
            run.files_removed += sweep_orphans(db, storage, grace_seconds)
            storage.remove_stale_staging(STAGING_MAX_AGE)
    if previews is not None and sweep:
        sweep_previews(db, previews)
    if run.archived or run.purged or run.files_removed:
        log.info(
            "deletion policy applied",
            extra={
                "archived": run.archived,
                "purged": run.purged,
                "files_removed": run.files_removed,
            },
        )
    return run
