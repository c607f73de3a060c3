"""Loop and abuse rules, one per module, applied in this order:

    rule          when it matches                              effect
    bounce        a DSN (multipart/report delivery-status),     system message on the ticket
                  or a null sender with a report                whose mail bounced; never a ticket
    auto_reply    Auto-Submitted ≠ no, X-Autoreply,              system message on a known
                  X-Autorespond, Precedence bulk/junk/list      ticket; never a ticket, never
                  with an auto-reply subject                     an answer
    no_answer     mailing lists (List-Id, Precedence list/bulk), opens/threads as usual, but
                  noreply / mailer-daemon / postmaster senders,  never gets automatic mail
                  our own address

Each rule module has ``name``, ``description`` and ``check(message, envelope_from) -> bool``.
"""

from __future__ import annotations

from dataclasses import dataclass

from gateway.inbound.message import InboundMessage
from gateway.inbound.rules import auto_reply, bounce, no_answer


@dataclass(frozen=True)
class Verdict:
    bounce: bool
    auto_reply: bool
    no_automatic_answer: bool

    @property
    def may_open_ticket(self) -> bool:
        return not (self.bounce or self.auto_reply)


def judge(message: InboundMessage, envelope_from: str, support_address: str) -> Verdict:
    is_bounce = bounce.check(message, envelope_from)
    is_auto = not is_bounce and auto_reply.check(message, envelope_from)
    quiet = is_bounce or is_auto or no_answer.check(message, envelope_from, support_address)
    return Verdict(bounce=is_bounce, auto_reply=is_auto, no_automatic_answer=quiet)
