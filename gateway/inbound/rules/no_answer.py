from __future__ import annotations

import re

from gateway.inbound.message import InboundMessage

name = "no_answer"
description = "Senders that must never get automatic mail: lists, no-reply and daemon addresses"

NO_REPLY_LOCAL = re.compile(
    r"^(no[-_.]?reply|do[-_.]?not[-_.]?reply|mailer[-_.]?daemon|postmaster|bounces?)([+-].*)?$",
    re.IGNORECASE,
)


def check(message: InboundMessage, envelope_from: str, support_address: str) -> bool:
    if envelope_from.strip("<> ") == "":
        return True
    if "list-id" in message.headers or "list-unsubscribe" in message.headers:
        return True
    if message.headers.get("precedence", "").strip().lower() in ("bulk", "junk", "list"):
        return True
    sender = message.sender.email if message.sender else ""
    local, _, domain = sender.rpartition("@")
    support_local, _, support_domain = support_address.rpartition("@")
    if domain == support_domain and local.split("+")[0] == support_local:
        return True
    return bool(NO_REPLY_LOCAL.match(local))
