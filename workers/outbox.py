"""Running one outbox task, whoever runs it (the in-process runner or Celery).

The ``outbox_tasks`` row is the source of truth; a Celery message only says
"look at row X". Running a row:

    pending/queued ──claim (row lock, attempts+1)──► running ──ok──► done
                                                        │
                          error, attempts < max ──► pending (available_at = now + backoff)
                          error, attempts ≥ max ──► dead (listed by
                                                    GET /api/v1/admin/failed-tasks)
                          "wait" (a retryable GatewayError with data retry_after,
                          e.g. Slack's 429) ──► pending at now + retry_after,
                                                the attempt not counted

A row that is ``running`` or ``done`` when a message for it arrives is left
alone, so a duplicate message, a redelivery after ``kill -9`` or two workers
at once have the effect of one run. A worker that dies mid-task leaves the
row ``running``; the sweeper hands it back after ``STALE_AFTER``.

The claim commits on its own (so an attempt that kills its worker is still
counted, and a message that always does is dead-lettered, not retried for
ever). A handler wrapped in :class:`Settling` is given the claimed
:class:`Job` and marks the row ``done`` inside its own last transaction
(``job.settle()``): the work and its settlement commit together, one
transaction fewer, and a crash between them cannot exist.

Several rows (one Celery message names up to 16, the SMTP edge's batch) are
claimed by one UPDATE (:func:`run_tasks`). Consecutive rows of a kind whose
handler is :class:`Batching` then run together, in one transaction that also
settles them all. If that transaction fails, none of it commits and each row
runs again alone, so one bad row fails alone and its neighbours are not lost.
"""

from __future__ import annotations

import logging
import random
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from sqlalchemy import case, or_, select, update
from sqlalchemy.orm import Session

from gateway.db import Database, utcnow
from gateway.errors import GatewayError
from gateway.events import OutboxTask

log = logging.getLogger("supportgate.tasks")

MAX_ATTEMPTS = 8
STALE_AFTER = timedelta(seconds=360)
QUEUED_GRACE = timedelta(seconds=5)


class PermanentTaskError(Exception):
    """Retrying would not help (or would do harm): dead-letter the task at once."""


class RunAlone(Exception):
    """Raised by a batch handler that cannot take one of its rows: each runs alone."""


def backoff(attempt: int, base: float = 2.0, cap: float = 600.0) -> float:
    """Exponential backoff with jitter, in seconds."""
    return min(cap, base * 2 ** (attempt - 1)) * random.uniform(0.5, 1.0)  # noqa: S311


def claim(db: Database, task_id: uuid.UUID) -> tuple[str, dict[str, Any], int] | None:
    """Take one row for running; None when it is not (or no longer) runnable.

    One conditional UPDATE: two workers claiming at once serialise on the
    row, and the second finds it ``running`` and gets None.
    """
    with db.transaction() as session:
        row = session.execute(
            update(OutboxTask)
            .where(OutboxTask.id == task_id, OutboxTask.state.in_(("pending", "queued")))
            .values(state="running", attempts=OutboxTask.attempts + 1, updated_at=utcnow())
            .returning(OutboxTask.kind, OutboxTask.payload, OutboxTask.attempts)
            .execution_options(synchronize_session=False)
        ).first()
        if row is None:
            return None
        return row.kind, dict(row.payload), row.attempts


@dataclass(frozen=True)
class Claimed:
    """A row taken for running."""

    task_id: uuid.UUID
    kind: str
    payload: dict[str, Any]
    attempts: int


def claim_many(db: Database, task_ids: Sequence[uuid.UUID]) -> dict[uuid.UUID, Claimed]:
    """Take several rows for running in one UPDATE; the ones that were runnable, by id.

    On PostgreSQL the rows are locked in id order first, so two workers
    claiming overlapping sets wait for each other instead of deadlocking.
    """
    with db.transaction() as session:
        wanted = (
            select(OutboxTask.id)
            .where(OutboxTask.id.in_(list(task_ids)), OutboxTask.state.in_(("pending", "queued")))
            .order_by(OutboxTask.id)
        )
        if session.get_bind().dialect.name == "postgresql":
            wanted = wanted.with_for_update()
        rows = session.execute(
            update(OutboxTask)
            .where(OutboxTask.id.in_(wanted.scalar_subquery()))
            .values(state="running", attempts=OutboxTask.attempts + 1, updated_at=utcnow())
            .returning(OutboxTask.id, OutboxTask.kind, OutboxTask.payload, OutboxTask.attempts)
            .execution_options(synchronize_session=False)
        )
        return {row.id: Claimed(row.id, row.kind, dict(row.payload), row.attempts) for row in rows}


def _settle_values(
    error: str | None, attempts: int, max_attempts: int, wait: float | None
) -> dict[str, Any]:
    now = utcnow()
    if wait is not None:
        # Asked to come back later (rate limit, a busy resource): not a failure.
        return {
            "state": "pending",
            "last_error": error,
            "attempts": case((OutboxTask.attempts > 0, OutboxTask.attempts - 1), else_=0),
            "available_at": now + timedelta(seconds=wait),
            "updated_at": now,
        }
    if error is None:
        return {"state": "done", "last_error": None, "updated_at": now}
    if attempts >= max_attempts:
        return {"state": "dead", "last_error": error, "updated_at": now}
    return {
        "state": "pending",
        "last_error": error,
        "available_at": now + timedelta(seconds=backoff(attempts)),
        "updated_at": now,
    }


def settle(
    session: Session,
    task_id: uuid.UUID,
    error: str | None,
    attempts: int,
    max_attempts: int = MAX_ATTEMPTS,
    *,
    wait: float | None = None,
) -> str:
    """Write a claimed row's outcome in ``session``; returns the new state (or 'gone')."""
    values = _settle_values(error, attempts, max_attempts, wait)
    row = session.execute(
        update(OutboxTask)
        .where(OutboxTask.id == task_id)
        .values(**values)
        .returning(OutboxTask.kind)
        .execution_options(synchronize_session=False)
    ).first()
    if row is None:
        return "gone"
    if values["state"] == "dead":
        log.error(
            "task dead-lettered",
            extra={"task_id": str(task_id), "kind": row.kind, "error": error},
        )
    return str(values["state"])


def finish(
    db: Database,
    task_id: uuid.UUID,
    error: str | None,
    attempts: int,
    max_attempts: int = MAX_ATTEMPTS,
    *,
    wait: float | None = None,
) -> str:
    with db.transaction() as session:
        return settle(session, task_id, error, attempts, max_attempts, wait=wait)


class Job:
    """A claimed row, as a :class:`Settling` handler sees it."""

    def __init__(self, db: Database, task_id: uuid.UUID, attempts: int) -> None:
        self.db = db
        self.task_id = task_id
        self.attempts = attempts
        self.settled = False
        self.state = "done"  # what settling made of the row

    @contextmanager
    def settle(self) -> Iterator[Session]:
        """The handler's last transaction: the row is marked ``done`` in it.

        Use it for the transaction whose commit completes the task; if the
        block raises, nothing of it commits and the row is settled as a failure.
        """
        with self.db.transaction() as session:
            yield session
            settle(session, self.task_id, None, self.attempts)
        self.settled = True

    @staticmethod
    @contextmanager
    def settle_all(db: Database, jobs: Sequence[Job]) -> Iterator[Session]:
        """:meth:`settle` for several jobs: one transaction marks them all ``done``."""
        with db.transaction() as session:
            yield session
            if jobs:
                session.execute(
                    update(OutboxTask)
                    .where(OutboxTask.id.in_([job.task_id for job in jobs]))
                    .values(**_settle_values(None, 0, MAX_ATTEMPTS, None))
                    .execution_options(synchronize_session=False)
                )
        for job in jobs:
            job.settled = True

    def fail_in(self, session: Session, error: str) -> None:
        """Settle the row as a failed attempt in ``session`` (a batch's last transaction).

        Retried with backoff, or dead-lettered after the last attempt; the
        caller sets ``settled`` once ``session`` has committed.
        """
        self.state = settle(session, self.task_id, error[:2000], self.attempts)


@dataclass(frozen=True)
class Settling:
    """A handler that takes the :class:`Job` and settles the row in its own transaction.

    Returning without ``job.settle()`` (nothing to do, say) is fine: the row
    is then settled in a transaction of its own, as for a plain handler.
    """

    run: Callable[[dict[str, Any], Job], None]


@dataclass(frozen=True)
class Batching(Settling):
    """A :class:`Settling` handler that can also run several rows in one transaction.

    ``run_many`` gets the (payload, job) pairs of consecutive claimed rows of
    its kind and settles them all in its last transaction
    (:meth:`Job.settle_all`). If it raises, each row then runs alone through
    ``run``, so what it committed before must be safe for ``run`` to find
    (``email.send`` commits its mails as ``sending`` before the relay is
    spoken to; ``run`` dead-letters such a mail as uncertain, never resends it).
    """

    run_many: Callable[[list[tuple[dict[str, Any], Job]]], None]


PlainHandler = Callable[[dict[str, Any]], None]
Handler = PlainHandler | Settling


def run_task(
    db: Database,
    handlers: dict[str, Handler],
    task_id: uuid.UUID,
    max_attempts: int = MAX_ATTEMPTS,
) -> str:
    """Claim, run and settle one row; returns its new state (or 'skipped')."""
    claimed = claim(db, task_id)
    if claimed is None:
        return "skipped"
    kind, payload, attempts = claimed
    return run_claimed(db, handlers, Claimed(task_id, kind, payload, attempts), max_attempts)


def run_tasks(
    db: Database,
    handlers: dict[str, Handler],
    task_ids: Sequence[uuid.UUID],
    max_attempts: int = MAX_ATTEMPTS,
) -> list[str]:
    """Claim several rows together and run them in order; their new states.

    Consecutive rows of one :class:`Batching` kind run in one transaction;
    when it fails, each of them runs alone (see the module docstring).
    """
    ids = list(dict.fromkeys(task_ids))
    if not ids:
        return []
    if len(ids) == 1:
        return [run_task(db, handlers, ids[0], max_attempts)]
    claimed = claim_many(db, ids)
    states = {task_id: "skipped" for task_id in ids}
    groups: list[list[Claimed]] = []
    for task_id in ids:
        row = claimed.get(task_id)
        if row is None:
            continue
        batching = isinstance(handlers.get(row.kind), Batching)
        if batching and groups and groups[-1][0].kind == row.kind:
            groups[-1].append(row)
        else:
            groups.append([row])
    for group in groups:
        handler = handlers.get(group[0].kind)
        if isinstance(handler, Batching) and len(group) > 1:
            settled = _run_batch(db, handler, group)
            if settled is not None:
                states.update(settled)
                continue
        for row in group:
            states[row.task_id] = run_claimed(db, handlers, row, max_attempts)
    return [states[task_id] for task_id in task_ids]


def _run_batch(
    db: Database, handler: Batching, group: list[Claimed]
) -> dict[uuid.UUID, str] | None:
    """Run ``group`` in one transaction; the rows' new states, None if it failed."""
    jobs = [Job(db, row.task_id, row.attempts) for row in group]
    try:
        handler.run_many([(row.payload, job) for row, job in zip(group, jobs, strict=True)])
    except RunAlone as exc:
        log.info(
            "running a batch's rows one by one",
            extra={"kind": group[0].kind, "rows": len(group), "why": str(exc)},
        )
        return None
    except Exception:
        log.warning(
            "a batch of tasks failed; running its rows one by one",
            exc_info=True,
            extra={"kind": group[0].kind, "rows": len(group)},
        )
        return None
    # Rows the handler had nothing to do for are left to us.
    return {
        job.task_id: job.state if job.settled else finish(db, job.task_id, None, job.attempts)
        for job in jobs
    }


def run_claimed(
    db: Database,
    handlers: dict[str, Handler],
    claimed: Claimed,
    max_attempts: int = MAX_ATTEMPTS,
) -> str:
    """Run and settle a row already claimed; returns its new state."""
    task_id, kind, payload, attempts = (
        claimed.task_id,
        claimed.kind,
        claimed.payload,
        claimed.attempts,
    )
    handler = handlers.get(kind)
    if handler is None:
        return finish(db, task_id, f"no handler for {kind}", max_attempts, max_attempts)
    job: Job | None = None
    try:
        if isinstance(handler, Settling):
            job = Job(db, task_id, attempts)
            handler.run(payload, job)
        else:
            handler(payload)
    except PermanentTaskError as exc:
        return finish(db, task_id, f"{exc}"[:2000], max_attempts, max_attempts)
    except Exception as exc:
        wait = exc.data.get("retry_after") if isinstance(exc, GatewayError) else None
        if wait is not None and isinstance(exc, GatewayError) and exc.retryable:
            log.info(
                "task deferred",
                extra={"task_id": str(task_id), "kind": kind, "seconds": wait, "why": exc.detail},
            )
            return finish(
                db,
                task_id,
                f"{exc.detail}; retrying in {wait} s"[:2000],
                attempts,
                max_attempts,
                wait=float(wait),
            )
        log.exception(
            "task failed", extra={"task_id": str(task_id), "kind": kind, "attempt": attempts}
        )
        return finish(db, task_id, f"{type(exc).__name__}: {exc}"[:2000], attempts, max_attempts)
    if job is not None and job.settled:
        return "done"
    return finish(db, task_id, None, attempts, max_attempts)


def sweep(db: Database, stale_after: timedelta = STALE_AFTER) -> int:
    """Hand back rows a dead worker left ``running`` or a lost message left ``queued``."""
    now = utcnow()
    with db.transaction() as session:
        result = session.execute(
            update(OutboxTask)
            .where(
                or_(
                    (OutboxTask.state == "running") & (OutboxTask.updated_at < now - stale_after),
                    (OutboxTask.state == "queued") & (OutboxTask.updated_at < now - stale_after),
                )
            )
            .values(state="pending", updated_at=utcnow())
        )
        count = int(result.rowcount or 0)  # type: ignore[attr-defined]
    if count:
        log.warning("re-queued stale tasks", extra={"count": count})
    return count


def due(
    db: Database,
    kinds: list[str],
    limit: int = 100,
    *,
    grace: timedelta = QUEUED_GRACE,
    retried_only: bool = False,
) -> list[tuple[uuid.UUID, str]]:
    """Pending rows that are due and were not just published by their producer
    (not changed for ``grace``); with ``retried_only``, only rows that ran
    before (retries, rows handed back by the sweeper), which no queue holds.

    They are marked ``queued`` in the same transaction, so two relays never
    publish the same row; the caller publishes them after this commits.
    """
    if not kinds:
        return []
    now = utcnow()
    with db.transaction() as session:
        stmt = (
            select(OutboxTask)
            .where(
                OutboxTask.state == "pending",
                OutboxTask.kind.in_(kinds),
                OutboxTask.available_at <= now,
                OutboxTask.updated_at <= now - grace,
                *((OutboxTask.attempts > 0,) if retried_only else ()),
            )
            .order_by(OutboxTask.available_at)
            .limit(limit)
        )
        if session.get_bind().dialect.name == "postgresql":
            stmt = stmt.with_for_update(skip_locked=True)
        rows = session.scalars(stmt).all()
        for row in rows:
            row.state, row.updated_at = "queued", now
        return [(row.id, row.kind) for row in rows]
