"""The one error tree of the domain.

Every edge translates these in exactly one place: problem+json for HTTP
(``web/errors.py``), reply codes for SMTP, an ephemeral message for Slack,
retry-or-dead-letter for tasks.

    GatewayError                     code            status  retryable
    ├── ConfigurationError           configuration   500     no
    ├── ValidationFailed             validation-error 422    no
    ├── NotFound                     not-found       404     no
    ├── Unauthorized                 unauthorized    401     no
    ├── Forbidden                    forbidden       403     no
    ├── Conflict                     conflict        409     no
    │   └── InvalidTransition        invalid-transition 409  no
    ├── PreconditionFailed           precondition-failed 412 no
    ├── PayloadTooLarge              payload-too-large 413   no
    ├── UnsupportedMediaType         unsupported-media-type 415 no
    ├── RateLimited                  rate-limited    429     yes
    └── ServiceUnavailable           service-unavailable 503 yes
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar


@dataclass(frozen=True)
class FieldError:
    field: str
    message: str


class GatewayError(Exception):
    code: ClassVar[str] = "internal-error"
    title: ClassVar[str] = "Internal error"
    status: ClassVar[int] = 500
    retryable: ClassVar[bool] = False

    def __init__(
        self,
        detail: str | None = None,
        *,
        errors: list[FieldError] | None = None,
        data: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(detail or self.title)
        self.detail = detail or self.title
        self.errors = errors or []
        self.data = data or {}


class ConfigurationError(GatewayError):
    code = "configuration"
    title = "Invalid configuration"


class ValidationFailed(GatewayError):
    code = "validation-error"
    title = "Validation failed"
    status = 422

    @classmethod
    def on(cls, field_name: str, message: str) -> ValidationFailed:
        return cls(f"{field_name}: {message}", errors=[FieldError(field_name, message)])


class NotFound(GatewayError):
    code = "not-found"
    title = "Not found"
    status = 404


class Unauthorized(GatewayError):
    code = "unauthorized"
    title = "Authentication required"
    status = 401


class Forbidden(GatewayError):
    code = "forbidden"
    title = "Forbidden"
    status = 403


class Conflict(GatewayError):
    code = "conflict"
    title = "Conflict"
    status = 409


class InvalidTransition(Conflict):
    code = "invalid-transition"
    title = "Invalid status transition"


class PreconditionFailed(GatewayError):
    code = "precondition-failed"
    title = "Precondition failed"
    status = 412


class PayloadTooLarge(GatewayError):
    code = "payload-too-large"
    title = "Payload too large"
    status = 413


class UnsupportedMediaType(GatewayError):
    code = "unsupported-media-type"
    title = "Unsupported media type"
    status = 415


class RateLimited(GatewayError):
    code = "rate-limited"
    title = "Too many requests"
    status = 429
    retryable = True


class ServiceUnavailable(GatewayError):
    code = "service-unavailable"
    title = "Service unavailable"
    status = 503
    retryable = True
