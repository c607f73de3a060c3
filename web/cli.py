"""The ``supportgate`` command.

Entry points are the only place that reads settings and picks concrete
implementations. A bad configuration or an unreachable service stops a
command with one actionable line on stderr and exit status 2.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

import click

from gateway.config import Settings, load_settings
from gateway.errors import ConfigurationError, GatewayError


def _fail(message: str) -> None:
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

    engine = make_engine(settings.effective_database_url, null_pool=True)
    try:
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
    except SQLAlchemyError as exc:
        reason = str(exc.orig if getattr(exc, "orig", None) else exc).strip().splitlines()[0]
        _fail(f"database unreachable at SUPPORTGATE_DATABASE_URL: {reason}")
    finally:
        engine.dispose()


def _check_redis(settings: Settings) -> None:
    if not settings.redis_url:
        return
    import redis

    try:
        redis.Redis.from_url(settings.redis_url, socket_connect_timeout=3).ping()
    except redis.RedisError as exc:
        _fail(f"Redis unreachable at SUPPORTGATE_REDIS_URL: {exc}")


def _migrate(settings: Settings) -> None:
    from gateway.migrations import upgrade

    upgrade(settings.effective_database_url)


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
