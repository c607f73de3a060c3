from __future__ import annotations

from gateway.inbound.message import InboundMessage

name = "bounce"
description = "Delivery status notifications (RFC 3464) and other null-sender reports"


def check(message: InboundMessage, envelope_from: str) -> bool:
    if message.report is not None:
        return True
    content_type = message.headers.get("content-type", "").lower()
    if "multipart/report" in content_type and "delivery-status" in content_type:
        return True
    sender = message.sender.email if message.sender else ""
    null_sender = envelope_from.strip("<> ") == ""
    daemon = sender.split("@")[0] in ("mailer-daemon", "postmaster")
    return (null_sender or daemon) and "x-failed-recipients" in message.headers
