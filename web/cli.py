"""The ``supportgate`` command.

Entry points are the only place that reads settings and picks concrete
implementations. A bad configuration or an unreachable service stops a
command with one actionable line on stderr and exit status 2.
"""

from __future__ import annotations

import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable
from datetime import timedelta
from typing import Any, NoReturn

import click

from gateway.config import Settings, load_settings
from gateway.errors import ConfigurationError, GatewayError
from web.logging import configure_logging


def _fail(message: str) -> NoReturn:
    click.echo(f"supportgate: {message}", err=True)
    sys.exit(2)


def _settings() -> Settings:
    try:
        return load_settings()
    except ConfigurationError as exc:
        _fail(str(exc))
        raise  # unreachable; keeps type checkers content


def _prepare_storage(settings: Settings) -> None:
    try:
        settings.data_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        _fail(f"cannot create SUPPORTGATE_DATA_DIR {settings.data_dir}: {exc.strerror}")


def _check_database(settings: Settings) -> None:
    from sqlalchemy import text
    from sqlalchemy.exc import SQLAlchemyError

    from gateway.db import make_engine

    try:
        engine = make_engine(settings.effective_database_url, null_pool=True)
    except (SQLAlchemyError, ValueError, ImportError) as exc:
        # A malformed URL (bad port, unknown dialect, a driver we do not ship).
        _fail(f"invalid configuration: SUPPORTGATE_DATABASE_URL: {_first_line(exc)}")
    try:
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
    except SQLAlchemyError as exc:
        _fail(f"database unreachable at SUPPORTGATE_DATABASE_URL: {_first_line(exc)}")
    finally:
        engine.dispose()


def _first_line(exc: BaseException) -> str:
    reason = str(getattr(exc, "orig", None) or exc).strip()
    return reason.splitlines()[0] if reason else type(exc).__name__


def _check_redis(settings: Settings) -> None:
    if not settings.redis_url:
        return
    import redis

    try:
        redis.Redis.from_url(settings.redis_url, socket_connect_timeout=3).ping()
    except redis.RedisError as exc:
        _fail(f"Redis unreachable at SUPPORTGATE_REDIS_URL: {exc}")


def _migrate(settings: Settings) -> None:
    from sqlalchemy.exc import SQLAlchemyError

    from gateway.migrations import upgrade

    try:
        upgrade(settings.effective_database_url)
    except SQLAlchemyError as exc:
        # Reachable but not migratable: missing privileges, a foreign schema.
        _fail(f"cannot migrate the database at SUPPORTGATE_DATABASE_URL: {_first_line(exc)}")


def _check_listen_address(settings: Settings) -> None:
    """Fail fast when the API address cannot be bound (gunicorn would retry, then log a trace)."""
    _check_port(settings.api_host, settings.api_port, "SUPPORTGATE_API_HOST/SUPPORTGATE_API_PORT")


def _check_events_address(settings: Settings) -> None:
    _check_port(
        settings.events_host,
        settings.events_port,
        "SUPPORTGATE_EVENTS_HOST/SUPPORTGATE_EVENTS_PORT",
    )


def _check_imap(settings: Settings) -> None:
    if not settings.imap_url:
        return
    from adapters.email.imap_url import parse_imap_url

    try:
        parse_imap_url(settings.imap_url)
    except ValueError as exc:
        _fail(str(exc))  # names the variable, never the password


def _check_port(host: str, port: int, names: str) -> None:
    where = f"{host}:{port}"
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        family, kind, proto, _, address = infos[0]
        with socket.socket(family, kind, proto) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind(address)
    except OSError as exc:
        _fail(f"cannot listen on {where} ({names}): {exc.strerror or exc}")


def close_after(requests: int) -> Callable[[Any, Any], None]:
    """gunicorn's ``pre_request`` hook: the ``requests``-th request on a connection is
    answered with ``Connection: close``, and gunicorn closes the connection after it.

    A gthread worker serves every keep-alive connection it ever accepted, and which worker
    accepts is luck, so one worker can hold all of a client pool's connections while the
    others idle. A client opens the next connection at once; the worker that accepts it is
    the first whose main thread wakes, the least busy one. Clients see a normal close of a
    keep-alive connection after a complete answer."""

    def pre_request(worker: Any, req: Any) -> None:
        if req.req_number >= requests:
            req.force_close()

    return pre_request


def _run_gunicorn(
    settings: Settings, extra_hooks: dict[str, Callable[..., Any]] | None = None
) -> None:
    from gunicorn.app.base import BaseApplication

    from web.app import create_app
    from web.balance import balanced_worker

    # gthread, with new connections spread evenly over the workers (web/balance.py).
    worker_class, balance_hooks = balanced_worker(settings.api_workers)

    class Server(BaseApplication):  # type: ignore[misc]
        def load_config(self) -> None:
            self.cfg.set("bind", f"{settings.api_host}:{settings.api_port}")
            self.cfg.set("workers", settings.api_workers)
            self.cfg.set("worker_class", worker_class)
            self.cfg.set("threads", settings.api_threads)
            self.cfg.set("graceful_timeout", 20)
            self.cfg.set("accesslog", None)
            self.cfg.set("proc_name", "supportgate-api")
            if settings.api_keepalive_requests:
                self.cfg.set("pre_request", close_after(settings.api_keepalive_requests))
            for name, hook in {**balance_hooks, **(extra_hooks or {})}.items():
                self.cfg.set(name, hook)

        def load(self) -> Any:
            import gc

            app = create_app(settings)
            # Everything built so far lives as long as the worker: keeping it out of
            # the collector's full passes cut ~100 ms pauses to under 1 ms (bench/).
            gc.freeze()
            return app

    Server().run()


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """Supportgate: customers' mail, agents' Slack threads and a JSON API, one ticket store."""


@main.command()
def serve() -> None:
    """Everything in one process tree: API, live events, SMTP, tasks (IMAP, Slack if configured)."""
    from web.supervisor import supervise

    settings = _settings()
    _prepare_storage(settings)
    _check_database(settings)
    _check_redis(settings)
    _check_listen_address(settings)
    _check_port(
        settings.smtp_host, settings.smtp_port, "SUPPORTGATE_SMTP_HOST/SUPPORTGATE_SMTP_PORT"
    )
    _check_events_address(settings)
    _check_imap(settings)
    _migrate(settings)
    parts = ["api", "events", "smtp", "worker" if settings.redis_url else "tasks"]
    parts += ["imap"] if settings.imap_url else []
    parts += ["slack"] if settings.slack_enabled and settings.slack_app_token else []
    click.echo(
        f"supportgate: API on http://{settings.api_host}:{settings.api_port}, "
        f"live events on http://{settings.events_host}:{settings.events_port}/api/v1/events, "
        f"SMTP on {settings.smtp_host}:{settings.smtp_port} "
        f"(database {settings.effective_database_url.split('@')[-1]}; parts: {', '.join(parts)})",
        err=True,
    )
    sys.exit(supervise(parts))


@main.command()
def api() -> None:
    """The HTTP API alone (run `supportgate db upgrade` first)."""
    settings = _settings()
    _prepare_storage(settings)
    _check_database(settings)
    _check_redis(settings)
    _check_listen_address(settings)
    _run_gunicorn(settings)


@main.command()
def events() -> None:
    """The live events server alone: GET /api/v1/events (Server-Sent Events) and the relay."""
    from web.events import run_events_server

    settings = _settings()
    _prepare_storage(settings)
    _check_database(settings)
    _check_redis(settings)
    _check_events_address(settings)
    configure_logging(settings.log_level)
    run_events_server(settings)


def _serve_until_signal(run: Callable[[threading.Event], None]) -> None:
    """Run ``run(stop)`` until SIGTERM/SIGINT sets ``stop``."""
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    run(stop)


@main.command()
def smtp() -> None:
    """The inbound SMTP server alone."""
    import asyncio

    from adapters.email.smtp_server import serve_smtp, tls_context
    from gateway.db import Database
    from gateway.inbound.addresses import SupportAddress

    settings = _settings()
    _prepare_storage(settings)
    _check_database(settings)
    _check_port(
        settings.smtp_host, settings.smtp_port, "SUPPORTGATE_SMTP_HOST/SUPPORTGATE_SMTP_PORT"
    )
    try:
        tls = tls_context(settings.smtp_tls_cert, settings.smtp_tls_key)
    except (OSError, ValueError) as exc:
        _fail(f"invalid configuration: SUPPORTGATE_SMTP_TLS_CERT/_KEY: {exc}")
    database = Database(settings.effective_database_url, pool_size=8)
    if settings.redis_url:
        from gateway.events import watch_outbox
        from workers.queue import CeleryPublisher, make_publisher_app

        # One Celery message per committed batch of up to 16 mails (the workers run them in
        # turn): building a message per mail was a quarter of this process's CPU.
        publisher = CeleryPublisher(make_publisher_app(settings), rows_per_message=16)
        watch_outbox(database.sessions, publisher.after_commit)

    async def main_loop() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await serve_smtp(
            database,
            SupportAddress.parse(settings.support_address),
            settings.smtp_host,
            settings.smtp_port,
            max_message_bytes=settings.max_message_bytes,
            stop=stop,
            tls=tls,
        )

    configure_logging(settings.log_level)
    try:
        asyncio.run(main_loop())
    finally:
        database.dispose()


@main.command()
def tasks() -> None:
    """Process queued tasks in-process (the embedded default's worker) and run maintenance."""
    from gateway.db import Database
    from workers.handlers import TaskContext, handlers
    from workers.inprocess import TaskRunner
    from workers.scheduler import PeriodicRunner, run_maintenance

    settings = _settings()
    _prepare_storage(settings)
    _check_database(settings)
    configure_logging(settings.log_level)
    database = Database(settings.effective_database_url, pool_size=4)
    runner = TaskRunner(
        database,
        handlers(TaskContext.create(settings, database)),
        stale_after=timedelta(seconds=settings.task_stale_seconds),
    )
    maintenance = (
        PeriodicRunner(settings.maintenance_interval, lambda: run_maintenance(settings, database))
        if settings.maintenance_interval
        else None
    )

    def run(stop: threading.Event) -> None:
        if maintenance is not None:
            maintenance.start()
        try:
            runner.run(stop)
        finally:
            if maintenance is not None:
                maintenance.stop()

    try:
        _serve_until_signal(run)
    finally:
        database.dispose()


@main.command()
@click.option(
    "--concurrency", type=int, default=None, help="worker processes (default from settings)"
)
@click.option("--beat/--no-beat", default=True, help="also run the schedule (sweeper, maintenance)")
def worker(concurrency: int | None, beat: bool) -> None:
    """A Celery worker on SUPPORTGATE_REDIS_URL, with the outbox relay (and the schedule)."""
    from celery.signals import worker_process_init, worker_shutting_down

    from gateway.db import Database
    from workers.celery_app import ALL_QUEUES, make_celery
    from workers.queue import CeleryPublisher, Relay

    settings = _settings()
    if not settings.redis_url:
        _fail("SUPPORTGATE_REDIS_URL is not set: the worker needs Redis (serve works without it)")
    _prepare_storage(settings)
    _check_database(settings)
    _check_redis(settings)
    configure_logging(settings.log_level)
    app = make_celery(settings)
    relay_db = Database(settings.effective_database_url, pool_size=2)

    @worker_process_init.connect(weak=False)
    def _drop_parent_connections(**_: Any) -> None:
        # A forked pool process must never touch the relay's sockets.
        relay_db.engine.dispose(close=False)

    stop = threading.Event()
    relay = threading.Thread(
        target=Relay(
            relay_db,
            CeleryPublisher(app),
            stale_after=timedelta(seconds=settings.task_stale_seconds),
        ).run,
        args=(stop,),
        name="relay",
        daemon=True,
    )
    relay.start()
    argv = [
        "worker",
        f"--loglevel={settings.log_level}",
        f"--concurrency={concurrency or settings.worker_concurrency}",
        f"--queues={','.join(ALL_QUEUES)}",
        "--hostname=supportgate@%h",
        "--without-gossip",
        "--without-mingle",
    ]
    if beat:
        argv += ["--beat", f"--schedule={settings.data_dir / 'celerybeat-schedule'}"]
    own_argv, started = list(sys.argv[1:]), time.monotonic()
    asked_to_stop = threading.Event()

    @worker_shutting_down.connect(weak=False)
    def _on_signal(**_: Any) -> None:
        asked_to_stop.set()

    try:
        app.start(argv)
    finally:
        stop.set()
        relay.join(10)
        relay_db.dispose()
    if not asked_to_stop.is_set():
        # Celery gave up by itself: some broker faults end in "Unrecoverable error"
        # (Redis going away while a message is unacknowledged). Our queue is the
        # outbox, so nothing is lost; start afresh in the same process (same pid for
        # a supervisor), ever more slowly if it keeps happening.
        stable = time.monotonic() - started > 60
        restarts = 1 if stable else int(os.environ.get("SUPPORTGATE_WORKER_RESTARTS", "0")) + 1
        delay = min(30.0, 0.5 * 2 ** min(restarts, 6))
        click.echo(f"supportgate: the Celery worker stopped; restarting in {delay:.1f} s", err=True)
        time.sleep(delay)
        os.environ["SUPPORTGATE_WORKER_RESTARTS"] = str(restarts)
        os.execv(sys.executable, [sys.executable, "-m", "web.cli", *own_argv])  # noqa: S606


@main.command()
def imap() -> None:
    """The IMAP poller alone (needs SUPPORTGATE_IMAP_URL)."""
    from adapters.email.imap_poller import check_connection
    from adapters.email.imap_poller import run as run_poller

    settings = _settings()
    if not settings.imap_url:
        _fail("SUPPORTGATE_IMAP_URL is not set: imap://user:pass@host:port/MAILBOX")
    _check_imap(settings)
    _prepare_storage(settings)
    _check_database(settings)
    try:
        check_connection(settings)
    except GatewayError as exc:
        _fail(exc.detail)
    configure_logging(settings.log_level)
    _serve_until_signal(lambda stop: run_poller(settings, stop))


def _check_slack_tokens(settings: Settings) -> None:
    """Socket Mode cannot do anything without Slack: check both tokens up front."""
    from slack_sdk import WebClient
    from slack_sdk.errors import SlackApiError

    assert settings.slack_bot_token is not None and settings.slack_app_token is not None
    client = WebClient(base_url=settings.slack_api_url, timeout=10, retry_handlers=[])
    checks = (
        ("SUPPORTGATE_SLACK_BOT_TOKEN", "auth.test", settings.slack_bot_token),
        ("SUPPORTGATE_SLACK_APP_TOKEN", "apps.connections.open", settings.slack_app_token),
    )
    for name, method, secret in checks:
        try:
            token = secret.get_secret_value()
            client.api_call(method, headers={"Authorization": f"Bearer {token}"})
        except SlackApiError as exc:
            _fail(f"Slack refused {name} ({method}: {exc.response.get('error')})")
        except OSError as exc:
            _fail(f"cannot reach Slack at SUPPORTGATE_SLACK_API_URL: {exc}")


@main.command()
def slack() -> None:
    """Slack over Socket Mode (needs SUPPORTGATE_SLACK_APP_TOKEN; HTTP mode is part of `api`)."""
    from gateway.db import Database

    settings = _settings()
    if not settings.slack_enabled:
        _fail(
            "Slack is not configured: set SUPPORTGATE_SLACK_BOT_TOKEN and "
            "SUPPORTGATE_SLACK_CHANNEL (see docs/slack.md)"
        )
    if settings.slack_app_token is None:
        _fail(
            "SUPPORTGATE_SLACK_APP_TOKEN is not set: Socket Mode needs an app-level token "
            "(xapp-…); without it Slack posts to POST /slack/events of `supportgate api`"
        )
    _prepare_storage(settings)
    _check_database(settings)
    _check_redis(settings)
    _check_slack_tokens(settings)
    configure_logging(settings.log_level)
    database = Database(settings.effective_database_url, pool_size=4)
    if settings.redis_url:
        from gateway.events import watch_outbox
        from workers.queue import CeleryPublisher, make_publisher_app

        watch_outbox(database.sessions, CeleryPublisher(make_publisher_app(settings)).after_commit)

    def run(stop: threading.Event) -> None:
        from slack_sdk.errors import SlackApiError

        from adapters.slack.socket_mode import run_socket_mode

        try:
            run_socket_mode(settings, database, stop)
        except SlackApiError as exc:
            _fail(f"Slack refused the Socket Mode connection: {exc.response.get('error')}")
        except OSError as exc:
            _fail(f"cannot reach Slack at SUPPORTGATE_SLACK_API_URL: {exc}")

    try:
        _serve_until_signal(run)
    finally:
        database.dispose()


@main.command()
def maintenance() -> None:
    """Apply the deletion policy and collect unreferenced files once (cron-friendly)."""
    import json

    from workers.scheduler import run_maintenance

    settings = _settings()
    _prepare_storage(settings)
    _check_database(settings)
    _migrate(settings)
    result = run_maintenance(settings)
    click.echo(json.dumps(result.__dict__))


@main.group()
def db() -> None:
    """Database schema."""


@db.command("upgrade")
def db_upgrade() -> None:
    """Apply migrations (Alembic) up to the newest schema."""
    settings = _settings()
    _prepare_storage(settings)
    _check_database(settings)
    _migrate(settings)
    click.echo("supportgate: database schema is up to date", err=True)


@main.group()
def user() -> None:
    """Users and API tokens."""


@user.command("add")
@click.argument("email")
@click.option("--role", type=click.Choice(["admin", "agent", "customer"]), required=True)
@click.option("--name", default=None, help="display name")
@click.option("--slack-id", default=None, help="Slack user id (U…) of an agent")
def user_add(email: str, role: str, name: str | None, slack_id: str | None) -> None:
    """Create a user (or a new token for an existing one); prints the token last."""
    from pydantic import ValidationError

    from gateway.db import Database
    from gateway.users.services import add_user_cli

    settings = _settings()
    _prepare_storage(settings)
    _check_database(settings)
    _migrate(settings)
    database = Database(settings.effective_database_url, null_pool=True)
    try:
        with database.transaction() as session:
            created, secret = add_user_cli(session, email, role, name, slack_id)
    except ValidationError as exc:
        err = exc.errors()[0]
        _fail(f"invalid {'.'.join(map(str, err['loc']))}: {err['msg']}")
    except GatewayError as exc:
        _fail(exc.detail)
    finally:
        database.dispose()
    click.echo(f"user {created.email} ({created.role}) id {created.id}")
    click.echo(secret)


if __name__ == "__main__":
    main()
