"""Settings, read from ``SUPPORTGATE_*`` environment variables and ``.env``.

Nothing reads the environment at import time: entry points call
:func:`load_settings` and pass the result down.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from gateway.errors import ConfigurationError

Port = Annotated[int, Field(ge=1, le=65535)]

# A media type pattern of the allow/deny lists: "*", "image/*" or "image/png".
_TYPE_PATTERN = re.compile(r"^(\*|[a-z0-9][a-z0-9!#$&^_.+-]*/(\*|[a-z0-9][a-z0-9!#$&^_.+-]*))$")

# Executables and installers: refused as attachments unless an operator says otherwise.
DEFAULT_ATTACHMENT_DENY = (
    "application/x-dosexec,application/vnd.microsoft.portable-executable,"
    "application/x-msdownload,application/x-msi,application/x-ms-installer,"
    "application/x-executable,application/x-pie-executable,application/x-sharedlib,"
    "application/x-mach-binary,application/x-elf"
)


def split_list(value: str) -> tuple[str, ...]:
    """A comma-separated setting as a tuple of its non-empty, trimmed items."""
    return tuple(item.strip() for item in value.split(",") if item.strip())


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
    # Threads per API worker. A worker runs Python on one core (the GIL); its threads
    # overlap waits on the database. 4, not 8: with 8 connections per worker, 8 threads
    # spent ~15 % more CPU per request handing the GIL to one another (twice the futex
    # calls per request), and served fewer requests (bench/RESULTS.md, 2026-11-28).
    api_threads: Annotated[int, Field(ge=1, le=256)] = 4
    # Requests on one keep-alive connection before the API answers `Connection: close`
    # (0: no limit). A gunicorn worker keeps every connection it accepted; the client's
    # next connection is placed again, on the worker holding fewest (web/balance.py).
    api_keepalive_requests: Annotated[int, Field(ge=0, le=1_000_000)] = 100
    # The live events server (`supportgate events`, a part of `serve`).
    events_host: str = "127.0.0.1"
    events_port: Port = 8001
    # Public base URL of the events server, for the API's redirect of
    # GET /api/v1/events (default: the request's host, SUPPORTGATE_EVENTS_PORT).
    events_url: str | None = None
    # Under load a subscriber gets at most one write per this many ms, with
    # every event since; an event after a quiet spell goes out at once.
    events_linger_ms: Annotated[int, Field(ge=0, le=1000)] = 75
    # Events server processes sharing the port (SO_REUSEPORT); more than one
    # needs Redis, through which every worker hears every event.
    events_workers: Annotated[int, Field(ge=1, le=64)] = 1
    # Seconds between comment heartbeats on an idle stream (contract: <= 15).
    events_heartbeat: Annotated[int, Field(ge=1, le=15)] = 10
    smtp_host: str = "127.0.0.1"
    smtp_port: Port = 2525
    # PEM files; both set = STARTTLS offered on the inbound SMTP server.
    smtp_tls_cert: str | None = None
    smtp_tls_key: str | None = None
    support_address: str = "support@example.com"
    max_message_bytes: Annotated[int, Field(ge=1024)] = 26214400
    max_attachment_bytes: Annotated[int, Field(ge=1)] = 26214400
    max_json_bytes: Annotated[int, Field(ge=1024)] = 1048576
    # Attachments, per kind: "attachment" files and "inline" (cid:) images.
    # Allow/deny lists are comma-separated media types or patterns (image/*);
    # the type is sniffed from the bytes; deny wins over allow.
    max_inline_bytes: Annotated[int, Field(ge=1)] = 10485760
    attachment_allow: str = "*"
    attachment_deny: str = DEFAULT_ATTACHMENT_DENY
    inline_allow: str = "image/*"
    inline_deny: str = ""
    # Archives (zip, gzip): refused above this expansion ratio or expanded size.
    archive_max_ratio: Annotated[int, Field(ge=1)] = 100
    archive_max_expanded_bytes: Annotated[int, Field(ge=1)] = 1073741824
    # Previews: thumbnails at most this many pixels a side, of images of at
    # most this many pixels (decompression-bomb limit).
    preview_size: Annotated[int, Field(ge=16, le=2048)] = 320
    preview_max_pixels: Annotated[int, Field(ge=1)] = 50_000_000
    # Browser origins allowed to call the attachment routes (comma-separated,
    # scheme://host[:port]); empty = no CORS headers at all.
    cors_origins: str = ""
    # Where attachment files live: "local" (under data_dir/attachments) or "s3".
    storage_backend: Literal["local", "s3"] = "local"
    s3_bucket: str | None = None
    s3_prefix: str = "attachments/"
    s3_endpoint_url: str | None = None
    s3_region: str | None = None
    s3_access_key_id: str | None = None
    s3_secret_access_key: SecretStr | None = None
    # An unreferenced file younger than this is never removed: it may belong
    # to an upload whose row is not committed yet.
    storage_grace_seconds: Annotated[int, Field(ge=0)] = 900
    outbound_smtp_url: str | None = None
    imap_url: str | None = None
    # Slack (docs/slack.md): the bot token and the channel turn it on; HTTP mode
    # also needs the signing secret, Socket Mode the app-level token instead.
    slack_bot_token: SecretStr | None = None
    slack_signing_secret: SecretStr | None = None
    slack_channel: str | None = None
    slack_api_url: str = "https://slack.com/api/"
    slack_app_token: SecretStr | None = None
    # Requests per minute per API token, and failed authentications per minute
    # per client address; 0 turns a limit off.
    rate_limit_per_minute: Annotated[int, Field(ge=0)] = 1200
    auth_failures_per_minute: Annotated[int, Field(ge=0)] = 30
    # Redis database of Celery's queues (kept apart from anything else on that Redis).
    celery_redis_db: Annotated[int, Field(ge=0, le=15)] = 11
    worker_concurrency: Annotated[int, Field(ge=1, le=64)] = 2
    # A task still "running" after this long is taken to have lost its worker and
    # is queued again (longer than the 300 s hard time limit of a task).
    task_stale_seconds: Annotated[int, Field(ge=1)] = 360
    # Seconds between runs of the deletion policy job in ``serve``; 0 = never.
    maintenance_interval: Annotated[int, Field(ge=0)] = 3600
    log_level: str = "INFO"
    # Signs the web console's session cookie; unset = a key made once in the data dir.
    secret_key: str | None = None
    # Send the console's cookie only over HTTPS (set it behind a TLS proxy).
    session_cookie_secure: bool = False

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

    @field_validator("attachment_allow", "attachment_deny", "inline_allow", "inline_deny")
    @classmethod
    def _check_type_list(cls, value: str) -> str:
        items = [item.lower() for item in split_list(value)]
        for item in items:
            if not _TYPE_PATTERN.match(item):
                raise ValueError(f"{item!r} is not a media type like image/png or image/*")
        return ",".join(items)

    @field_validator("cors_origins")
    @classmethod
    def _check_origins(cls, value: str) -> str:
        items = [item.rstrip("/") for item in split_list(value)]
        for item in items:
            if not re.match(r"^https?://[A-Za-z0-9.-]+(:[0-9]{1,5})?$", item):
                raise ValueError(f"{item!r} is not an origin like https://support.example.com")
        return ",".join(items)

    @field_validator("s3_bucket", "s3_endpoint_url", "s3_region", "s3_access_key_id")
    @classmethod
    def _empty_is_unset(cls, value: str | None) -> str | None:
        return value or None

    @field_validator("slack_bot_token", "slack_signing_secret", "slack_app_token", mode="before")
    @classmethod
    def _empty_secret_is_unset(cls, value: object) -> object:
        return value or None

    @field_validator("slack_channel")
    @classmethod
    def _check_slack_channel(cls, value: str | None) -> str | None:
        value = (value or "").strip().lstrip("#")
        if not value:
            return None
        if not re.match(r"^[A-Za-z0-9._-]{1,80}$", value):
            raise ValueError("must be a channel id like C0123456789 or a name like support")
        return value

    @field_validator("slack_api_url")
    @classmethod
    def _check_slack_api_url(cls, value: str) -> str:
        if not re.match(r"^https?://[^/\s]+(/[^\s]*)?$", value):
            raise ValueError("must be an http(s) URL like https://slack.com/api/")
        # slack-sdk joins method names onto the base URL: it must end with "/".
        return value if value.endswith("/") else value + "/"

    @model_validator(mode="after")
    def _check_slack(self) -> Settings:
        token, channel = self.slack_bot_token, self.slack_channel
        if token and not channel:
            raise ValueError(
                "SUPPORTGATE_SLACK_CHANNEL is required when SUPPORTGATE_SLACK_BOT_TOKEN is set"
            )
        if (channel or self.slack_signing_secret or self.slack_app_token) and not token:
            raise ValueError(
                "SUPPORTGATE_SLACK_BOT_TOKEN (xoxb-…) is required when other "
                "SUPPORTGATE_SLACK_* settings are set"
            )
        if token and not self.slack_signing_secret and not self.slack_app_token:
            raise ValueError(
                "SUPPORTGATE_SLACK_SIGNING_SECRET is required for Slack's HTTP events "
                "(or set SUPPORTGATE_SLACK_APP_TOKEN for Socket Mode)"
            )
        return self

    @model_validator(mode="after")
    def _check_s3(self) -> Settings:
        if self.storage_backend == "s3" and not self.s3_bucket:
            raise ValueError(
                "SUPPORTGATE_S3_BUCKET is required when SUPPORTGATE_STORAGE_BACKEND=s3"
            )
        return self

    @property
    def effective_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.data_dir / 'supportgate.db').resolve()}"

    @property
    def slack_enabled(self) -> bool:
        """True when Slack is configured (a bot token and a channel; see _check_slack)."""
        return self.slack_bot_token is not None and self.slack_channel is not None

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
