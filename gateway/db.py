"""Database plumbing: engine, sessions, the declarative base, UTC timestamps.

SQLite (the embedded default) and PostgreSQL (production) run the same models
and migrations. Services receive a :class:`~sqlalchemy.orm.Session` and never
commit; whoever opened the session (a request, a task, a CLI command) does.
"""

from __future__ import annotations

import functools
import select
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar, cast

from psycopg.rows import namedtuple_row, tuple_row
from sqlalchemy import DateTime, MetaData, create_engine, event
from sqlalchemy import inspect as sa_inspect
from sqlalchemy.engine import Connection, Dialect, Engine
from sqlalchemy.exc import DisconnectionError
from sqlalchemy.orm import DeclarativeBase, Session, sessionmaker
from sqlalchemy.pool import NullPool
from sqlalchemy.types import TypeDecorator

from gateway import jsoncodec

NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC datetimes on every backend (SQLite drops the zone)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def utcnow() -> datetime:
    return datetime.now(UTC)


def new_id() -> uuid.UUID:
    return uuid.uuid4()


T = TypeVar("T")

DEFERRED_FLUSH = "supportgate.deferred_flush"


def flush(session: Session) -> None:
    """``session.flush()``, unless ``session`` is inside :func:`deferred_flush`."""
    if not session.info.get(DEFERRED_FLUSH):
        session.flush()


@contextmanager
def deferred_flush(session: Session) -> Iterator[None]:
    """Write what the block adds in one flush at its end, not piece by piece.

    Services flush as they go (ids, errors surfacing where they happen); in
    here they do not, and queries do not autoflush, so the ORM writes the rows
    of many objects of one table in one statement. The block must not read
    back what it added: the caller makes sure its units of work are
    independent of each other (workers/handlers.py, ``ingest_many``).
    """
    session.info[DEFERRED_FLUSH] = True
    try:
        with session.no_autoflush:
            yield
        _flush_in_table_order(session)
    finally:
        session.info.pop(DEFERRED_FLUSH, None)


PREFETCHED = "supportgate.prefetched"


@contextmanager
def prefetched(session: Session, **answers: dict[Any, Any]) -> Iterator[None]:
    """Answers to lookups the block would make one by one, fetched together before it.

    Each keyword names a lookup (see :func:`lookup`) and maps every key the
    block may ask about to its answer. Only for a block whose lookups cannot
    see its own writes (gateway.db.deferred_flush), so that the answers stay true.
    """
    session.info[PREFETCHED] = answers
    try:
        yield
    finally:
        session.info.pop(PREFETCHED, None)


def lookup(session: Session, name: str, key: Any, fetch: Callable[[], T]) -> T:
    """The prefetched answer of lookup ``name`` for ``key``; else ``fetch()``."""
    answers = session.info.get(PREFETCHED, {}).get(name, {})
    return cast(T, answers[key]) if key in answers else fetch()


def _table_rank() -> dict[Any, int]:
    """Each table's place in a parents-first order, sorted again only when a model
    module imported since has added tables."""
    return _rank_of(len(Base.metadata.tables))


@functools.cache
def _rank_of(table_count: int) -> dict[Any, int]:
    return {table: n for n, table in enumerate(Base.metadata.sorted_tables)}


def _flush_in_table_order(session: Session) -> None:
    """Flush table by table, parents first.

    The unit of work orders mappers by their relationship()s; rows that only
    reference another table by foreign key (participants, events, outbox
    rows) could otherwise come before the ticket they belong to.
    """
    rank = _table_rank()
    groups: dict[int, list[Any]] = {}
    for obj in [*session.new, *session.dirty]:
        table = sa_inspect(obj).mapper.local_table
        groups.setdefault(rank.get(table, len(rank)), []).append(obj)
    for _, objects in sorted(groups.items()):
        session.flush(objects)
    session.flush()


# PostgreSQL connections are not pinged on every checkout (``pool_pre_ping``
# cost a round trip and ~0.25 ms of CPU per request, 9 % of a GET by id).
# A restart or ``pg_terminate_backend`` stays harmless without it:
# - the server closes the socket of each backend it ends, so a dead pooled
#   connection has bytes (the FATAL notice) or EOF waiting on an otherwise
#   idle socket. The checkout hook below polls the socket without blocking
#   (a system call, no round trip) and pings only then, or when the connection
#   sat idle longer than IDLE_PING_SECONDS (a peer that vanished without
#   closing: host crash, NAT/firewall drop). A failed ping raises
#   DisconnectionError, on which the pool connects afresh and the request
#   never sees the dead connection;
# - ``pool_recycle`` replaces connections older than POOL_RECYCLE_SECONDS;
# - a statement that still hits a dead connection (the server went away
#   during the request) invalidates every connection of the pool made before
#   it (SQLAlchemy's default), so one failure cannot become a burst.
# tests/api/test_pool_reconnect.py terminates the pool's backends under requests.
IDLE_PING_SECONDS = 30.0
POOL_RECYCLE_SECONDS = 1800


def make_engine(url: str, *, pool_size: int = 5, null_pool: bool = False) -> Engine:
    """Create an engine with the settings each backend needs."""
    # JSON columns decoded by orjson, exactly as json.loads would (gateway/jsoncodec.py);
    # on PostgreSQL this is psycopg's loader, so the driver-level reads use it too.
    kwargs: dict[str, Any] = {"future": True, "json_deserializer": jsoncodec.loads}
    if url.startswith("sqlite"):
        kwargs["connect_args"] = {"check_same_thread": False, "timeout": 30}
        if null_pool:
            kwargs["poolclass"] = NullPool
    elif null_pool:
        kwargs["poolclass"] = NullPool
    else:
        kwargs["pool_size"] = pool_size
        kwargs["max_overflow"] = pool_size
        kwargs["pool_recycle"] = POOL_RECYCLE_SECONDS
    engine = create_engine(url, **kwargs)
    if engine.dialect.name == "sqlite":
        event.listen(engine, "connect", _sqlite_pragmas)
        event.listen(engine, "begin", _sqlite_begin_immediate)
    elif not null_pool:
        event.listen(engine.pool, "checkin", _mark_idle)
        event.listen(engine.pool, "checkout", _checkout_check(engine.dialect))
    return engine


def _mark_idle(_dbapi_conn: Any, record: Any) -> None:
    if record is not None:
        record.info["idle_since"] = time.monotonic()


def _socket_has_input(dbapi_conn: Any) -> bool:
    """Whether an idle connection has input waiting: EOF or a message it did not ask for."""
    try:
        poller = select.poll()  # not select.select: descriptors above 1023 are fine
        poller.register(dbapi_conn.fileno(), select.POLLIN | select.POLLERR | select.POLLHUP)
        return bool(poller.poll(0))
    except Exception:  # closed: psycopg raises instead of giving a descriptor
        return True


def _checkout_check(dialect: Dialect) -> Any:
    def check(dbapi_conn: Any, record: Any, _proxy: Any) -> None:
        idle_since = record.info.get("idle_since")
        stale = idle_since is not None and time.monotonic() - idle_since > IDLE_PING_SECONDS
        if not stale and not _socket_has_input(dbapi_conn):
            return
        try:
            dialect.do_ping(dbapi_conn)
        except Exception as exc:
            # Whatever broke, this connection is not worth keeping: the pool
            # discards it and connects afresh (a down server raises there).
            raise DisconnectionError(f"pooled connection failed its ping: {exc}") from exc

    return check


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    # The driver's own transaction handling is off so that every transaction
    # starts with BEGIN IMMEDIATE (below): writers queue on busy_timeout instead
    # of failing with "database is locked" halfway through a unit of work.
    dbapi_conn.isolation_level = None
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute("PRAGMA busy_timeout=30000")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.close()


def _sqlite_begin_immediate(conn: Any) -> None:
    conn.exec_driver_sql("BEGIN IMMEDIATE")


class DriverQuery:
    """A fixed SELECT, compiled once, run on the driver's own cursor on PostgreSQL.

    For the hottest reads only (the token lookup and a ticket by id, on every
    request). SQLAlchemy's per-execution work (cache key, result metadata,
    psycopg's ``description`` objects, row processing) is about a tenth of a
    millisecond a statement; here the statement text and its constant
    parameters are computed once, and rows come back as psycopg's tuples
    (named tuples with ``named=True``, like SQLAlchemy's rows by attribute),
    UUIDs, JSON and arrays decoded by psycopg, timestamps as aware datetimes
    in the session's time zone (callers that format them use :func:`as_utc`).
    On other databases, or for any statement but the fixed one, it is plain
    ``Connection.execute``.
    """

    def __init__(self, stmt: Any, *, named: bool = False, prepare: bool | None = None) -> None:
        """``prepare``: psycopg's (None: prepared after five executions; False: never, so
        PostgreSQL plans each execution for its values)."""
        self.stmt = stmt
        self.row_factory = namedtuple_row if named else tuple_row
        self.prepare = prepare
        self._compiled: tuple[str, dict[str, Any]] | None = None

    def rows(self, session: Session, params: dict[str, Any], stmt: Any = None) -> list[Any]:
        """Rows of ``stmt`` (default: the fixed one); only the fixed one takes the fast way."""
        conn = session.connection()
        if (stmt is not None and stmt is not self.stmt) or conn.dialect.name != "postgresql":
            return list(conn.execute(self.stmt if stmt is None else stmt, params).all())
        if self._compiled is None:
            compiled = self.stmt.compile(dialect=conn.dialect)
            self._compiled = (str(compiled), dict(compiled.params))
        sql, constants = self._compiled
        driver = conn.connection.driver_connection
        assert driver is not None
        with driver.cursor(row_factory=self.row_factory) as cursor:
            cursor.execute(sql, {**constants, **params}, prepare=self.prepare)
            return cursor.fetchall()


def as_utc(value: datetime) -> datetime:
    """An aware datetime in UTC (a no-op for one already at offset zero)."""
    return value if value.utcoffset() == _ZERO else value.astimezone(UTC)


_ZERO = timedelta(0)


class Database:
    """An engine and its session factory."""

    def __init__(self, url: str, *, pool_size: int = 5, null_pool: bool = False) -> None:
        self.url = url
        self.engine = make_engine(url, pool_size=pool_size, null_pool=null_pool)
        self.sessions = sessionmaker(self.engine, expire_on_commit=False, future=True)

    @property
    def dialect(self) -> str:
        return self.engine.dialect.name

    @contextmanager
    def transaction(self) -> Iterator[Session]:
        """One unit of work: commit on success, roll back on any exception."""
        session = self.sessions()
        try:
            yield session
            session.commit()
        except BaseException:
            session.rollback()
            raise
        finally:
            session.close()

    @contextmanager
    def read_transaction(self) -> Iterator[Session]:
        """A unit of work for a read request: a :class:`ReadSession` (see there).

        Committed on success like :meth:`transaction` (a read may still write:
        the token's ``last_used_at``), rolled back on any exception.
        """
        with self.engine.connect() as conn:
            reader = ReadSession(self, conn)
            try:
                conn.begin()
                yield cast(Session, reader)
                reader.commit_all()
            except BaseException:
                reader.rollback_all()
                raise
            finally:
                reader.close_all()

    def dispose(self) -> None:
        self.engine.dispose()


class ReadSession:
    """What a read request (GET) gets for a ``session``: a connection first, a Session if asked.

    Most reads need nothing but ``session.connection()`` (Core statements and
    :class:`DriverQuery`) and ``session.get_bind().dialect``; for them an ORM
    Session's own bookkeeping (its transaction object, identity map, flush
    check, events at commit and close) was 6-10 % of the CPU time of a ticket
    read on the bench host (bench/RESULTS.md). So this hands out the pooled
    connection, in its transaction, directly; any other attribute
    (``execute``, ``get``, ``scalars``, ``add``, ``info``...) opens a real
    Session from the same factory (its event listeners included) on that
    connection and transaction at first use.

    ``get_bind()`` answers the connection, not the engine: callers read its
    ``dialect``. At the end the Session's changes are flushed, the connection
    committed, and only then the Session's own commit runs (it does not
    commit the connection it joined: ``join_transaction_mode``
    ``rollback_only``), so ``after_commit`` listeners such as the outbox's
    hand-over still run after the data is committed.
    """

    def __init__(self, database: Database, conn: Connection) -> None:
        self._database = database
        self._conn = conn
        self._orm: Session | None = None

    def connection(self) -> Connection:
        return self._conn

    def get_bind(self) -> Connection:
        return self._conn

    @property
    def orm_session(self) -> Session | None:
        """The real Session, if something asked for one (None otherwise)."""
        return self._orm

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        if self._orm is None:
            self._orm = self._database.sessions(
                bind=self._conn, join_transaction_mode="rollback_only"
            )
        return getattr(self._orm, name)

    def commit_all(self) -> None:
        if self._orm is not None:
            self._orm.flush()
        self._conn.commit()
        if self._orm is not None:
            self._orm.commit()

    def rollback_all(self) -> None:
        if self._orm is not None:
            self._orm.rollback()
        if self._conn.in_transaction():
            self._conn.rollback()

    def close_all(self) -> None:
        if self._orm is not None:
            self._orm.close()
