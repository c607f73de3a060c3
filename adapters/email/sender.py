"""Sending composed mail through the relay of ``SUPPORTGATE_OUTBOUND_SMTP_URL``.

``smtp://[user:pass@]host:port`` (STARTTLS when the relay offers it),
``smtps://…`` (implicit TLS). A refusal with a 5xx code is permanent
(:class:`PermanentFailure`); anything else is transient and raised as is,
for the task to retry.
"""

from __future__ import annotations

import smtplib
import ssl
import time
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit


class PermanentFailure(Exception):
    pass


@dataclass(frozen=True)
class Relay:
    host: str
    port: int
    user: str | None
    password: str | None
    implicit_tls: bool

    @classmethod
    def from_url(cls, url: str) -> Relay:
        parts = urlsplit(url)
        if parts.scheme not in ("smtp", "smtps") or not parts.hostname:
            raise ValueError(
                "SUPPORTGATE_OUTBOUND_SMTP_URL must look like smtp://[user:pass@]host:port"
            )
        return cls(
            host=parts.hostname,
            port=parts.port or (465 if parts.scheme == "smtps" else 25),
            user=unquote(parts.username) if parts.username else None,
            password=unquote(parts.password) if parts.password else None,
            implicit_tls=parts.scheme == "smtps",
        )

    def send(self, envelope_from: str, recipient: str, raw: bytes, timeout: float = 30) -> None:
        outcome = self.send_many(envelope_from, [(recipient, raw)], timeout)[0]
        if outcome is not None:
            raise outcome

    def send_many(
        self,
        envelope_from: str,
        mails: list[tuple[str, bytes]],
        timeout: float = 30,
        budget: float = 60,
    ) -> list[Exception | None]:
        """Send each (recipient, raw) in order over one connection; an outcome per mail.

        ``None``: sent. :class:`PermanentFailure`: refused for good (5xx).
        Any other exception is transient: a connection that fails takes the
        mails not yet sent with it (each gets that exception; none was sent).
        No mail is started once ``budget`` seconds have passed (a slow relay
        must not hold a batch past the task's time limit): the rest get a
        transient ``TimeoutError`` and are sent by their retry.
        """
        deadline = time.monotonic() + budget
        outcomes: list[Exception | None] = []
        try:
            client = self._connect(timeout)
        except Exception as exc:
            return [exc] * len(mails)
        try:
            for recipient, raw in mails:
                if outcomes and time.monotonic() > deadline:
                    late = TimeoutError(f"not sent: the batch took over {budget:g} s")
                    outcomes += [late] * (len(mails) - len(outcomes))
                    break
                try:
                    client.sendmail(envelope_from, [recipient], raw)
                    outcomes.append(None)
                except smtplib.SMTPRecipientsRefused as exc:
                    code = next(iter(exc.recipients.values()))[0]
                    outcomes.append(
                        PermanentFailure(f"relay refused {recipient}: {code}")
                        if 500 <= code < 600
                        else exc
                    )
                except smtplib.SMTPResponseException as exc:
                    outcomes.append(
                        PermanentFailure(f"relay answered {exc.smtp_code}")
                        if 500 <= exc.smtp_code < 600
                        else exc
                    )
                except Exception as exc:
                    # The connection is gone (or in a state we do not know):
                    # this mail and the rest are not sent.
                    outcomes += [exc] * (len(mails) - len(outcomes))
                    break
        finally:
            try:
                client.quit()
            except (smtplib.SMTPException, OSError):
                client.close()
        return outcomes

    def _connect(self, timeout: float) -> smtplib.SMTP:
        """A connection ready for MAIL FROM (TLS and login done as configured)."""
        client: smtplib.SMTP
        if self.implicit_tls:
            client = smtplib.SMTP_SSL(
                self.host, self.port, timeout=timeout, context=ssl.create_default_context()
            )
        else:
            client = smtplib.SMTP(self.host, self.port, timeout=timeout)
        try:
            client.ehlo()
            if not self.implicit_tls and client.has_extn("starttls"):
                client.starttls(context=ssl.create_default_context())
                client.ehlo()
            if self.user:
                client.login(self.user, self.password or "")
        except smtplib.SMTPResponseException as exc:
            client.close()
            if 500 <= exc.smtp_code < 600:
                raise PermanentFailure(f"relay answered {exc.smtp_code}") from exc
            raise
        except BaseException:
            client.close()
            raise
        return client
