"""Settings, read from ``SUPPORTGATE_*`` environment variables and ``.env``.

Nothing reads the environment at import time: entry points call
:func:`load_settings` and pass the result down.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from pydantic import Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from gateway.errors import ConfigurationError

Port = Annotated[int, Field(ge=1, le=65535)]


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="SUPPORTGATE_", env_file=".env", extra="ignore", frozen=True
    )

    data_dir: Path = Path("./supportgate-data")
    database_url: str | None = None
    redis_url: str | None = None
    api_host: str = "127.0.0.1"
    api_port: Port = 8000
    api_workers: Annotated[int, Field(ge=1, le=64)] = 2
    api_threads: Annotated[int, Field(ge=1, le=256)] = 8
    smtp_host: str = "127.0.0.1"
    smtp_port: Port = 2525
    # PEM files; both set = STARTTLS offered on the inbound SMTP server.
    smtp_tls_cert: str | None = None
    smtp_tls_key: str | None = None
    support_address: str = "support@example.com"
    max_message_bytes: Annotated[int, Field(ge=1024)] = 26214400
    max_attachment_bytes: Annotated[int, Field(ge=1)] = 26214400
    max_json_bytes: Annotated[int, Field(ge=1024)] = 1048576
    outbound_smtp_url: str | None = None
    imap_url: str | None = None
    slack_bot_token: str | None = None
    slack_signing_secret: str | None = None
    slack_channel: str | None = None
    slack_api_url: str = "https://slack.com/api/"
    slack_app_token: str | None = None
    # Requests per minute per API token, and failed authentications per minute
    # per client address; 0 turns a limit off.
    rate_limit_per_minute: Annotated[int, Field(ge=0)] = 1200
    auth_failures_per_minute: Annotated[int, Field(ge=0)] = 30
    # Seconds between runs of the deletion policy job in ``serve``; 0 = never.
    maintenance_interval: Annotated[int, Field(ge=0)] = 3600
    log_level: str = "INFO"
    secret_key: str | None = None

    @field_validator("database_url")
    @classmethod
    def _check_database_url(cls, value: str | None) -> str | None:
        if value is None or value == "":
            return None
        if not value.startswith(("sqlite", "postgresql")):
            raise ValueError("must be a sqlite:// or postgresql+psycopg:// URL")
        if value.startswith("sqlite") and value.rstrip("/") in ("sqlite:", "sqlite:/", "sqlite://"):
            raise ValueError("an in-memory SQLite database keeps nothing; name a file")
        if ":memory:" in value:
            raise ValueError("an in-memory SQLite database keeps nothing; name a file")
        if value.startswith("postgresql://") or value.startswith("postgres://"):
            # psycopg 3 is the driver we ship; a bare URL would pick psycopg2.
            value = "postgresql+psycopg://" + value.split("://", 1)[1]
        return value

    @field_validator("support_address")
    @classmethod
    def _check_support_address(cls, value: str) -> str:
        local, sep, domain = value.partition("@")
        if not sep or not local or not domain or "+" in local:
            raise ValueError("must be a plain address like support@example.com")
        return value.lower()

    @field_validator("redis_url")
    @classmethod
    def _check_redis_url(cls, value: str | None) -> str | None:
        if not value:
            return None
        if not value.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError("must be a redis:// or rediss:// URL")
        return value

    @field_validator("log_level")
    @classmethod
    def _check_log_level(cls, value: str) -> str:
        value = value.upper()
        if value not in {"DEBUG", "INFO", "WARNING", "ERROR"}:
            raise ValueError("must be DEBUG, INFO, WARNING or ERROR")
        return value

    @property
    def effective_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.data_dir / 'supportgate.db').resolve()}"

    @property
    def embedded(self) -> bool:
        """True when no Redis is configured: tasks and events stay in-process."""
        return self.redis_url is None


def load_settings(**overrides: object) -> Settings:
    """Read settings; raise ConfigurationError with one actionable line."""
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        first = exc.errors()[0]
        name = "SUPPORTGATE_" + str(first["loc"][0]).upper() if first["loc"] else "settings"
        raise ConfigurationError(
            f"invalid configuration: {name}: {first['msg']}"
            + (f" (got {first['input']!r})" if not isinstance(first["input"], dict) else "")
        ) from None
