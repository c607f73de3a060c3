"""The ``supportgate`` command.

Entry points are the only place that reads settings and picks concrete
implementations. A bad configuration or an unreachable service stops a
command with one actionable line on stderr and exit status 2.
"""

from __future__ import annotations

import socket
import sys
from collections.abc import Callable
from typing import Any, NoReturn

import click

from gateway.config import Settings, load_settings
from gateway.errors import ConfigurationError, GatewayError


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
    where = f"{settings.api_host}:{settings.api_port}"
    try:
        infos = socket.getaddrinfo(settings.api_host, settings.api_port, type=socket.SOCK_STREAM)
        family, kind, proto, _, address = infos[0]
        with socket.socket(family, kind, proto) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind(address)
    except OSError as exc:
        _fail(
            f"cannot listen on {where} (SUPPORTGATE_API_HOST/SUPPORTGATE_API_PORT): "
            f"{exc.strerror or exc}"
        )


def _run_gunicorn(
    settings: Settings, extra_hooks: dict[str, Callable[..., Any]] | None = None
) -> None:
    from gunicorn.app.base import BaseApplication

    from web.app import create_app

    class Server(BaseApplication):  # type: ignore[misc]
        def load_config(self) -> None:
            self.cfg.set("bind", f"{settings.api_host}:{settings.api_port}")
            self.cfg.set("workers", settings.api_workers)
            self.cfg.set("worker_class", "gthread")
            self.cfg.set("threads", settings.api_threads)
            self.cfg.set("graceful_timeout", 20)
            self.cfg.set("accesslog", None)
            self.cfg.set("proc_name", "supportgate-api")
            for name, hook in (extra_hooks or {}).items():
                self.cfg.set(name, hook)

        def load(self) -> Any:
            return create_app(settings)

    Server().run()


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """Supportgate: customers' mail, agents' Slack threads and a JSON API, one ticket store."""


@main.command()
def serve() -> None:
    """Everything in one process tree: migrations, then the API (and what is configured)."""
    settings = _settings()
    _prepare_storage(settings)
    _check_database(settings)
    _check_redis(settings)
    _check_listen_address(settings)
    _migrate(settings)
    click.echo(
        f"supportgate: API on http://{settings.api_host}:{settings.api_port} "
        f"(database {settings.effective_database_url.split('@')[-1]})",
        err=True,
    )
    _run_gunicorn(settings)


@main.command()
def api() -> None:
    """The HTTP API alone (run `supportgate db upgrade` first)."""
    settings = _settings()
    _prepare_storage(settings)
    _check_database(settings)
    _check_redis(settings)
    _check_listen_address(settings)
    _run_gunicorn(settings)


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
