from __future__ import annotations

import re

from gateway.inbound.message import InboundMessage

name = "auto_reply"
description = "Machine-generated answers: RFC 3834, X-Autoreply/X-Autorespond, vacation notices"

AUTO_SUBJECT = re.compile(
    r"(auto(matic)?[ -]?(reply|response|antwort)|out of (the )?office|vacation|"
    r"abwesenheit|absence|r[ée]ponse automatique|respuesta autom[áa]tica)",
    re.IGNORECASE,
)


def check(message: InboundMessage, envelope_from: str) -> bool:
    headers = message.headers
    auto_submitted = headers.get("auto-submitted", "").strip().lower()
    if auto_submitted and not auto_submitted.startswith("no"):
        return True
    if "x-autoreply" in headers or "x-autorespond" in headers:
        return True
    precedence = headers.get("precedence", "").strip().lower()
    return precedence in ("bulk", "junk", "list") and bool(AUTO_SUBJECT.search(message.subject))
