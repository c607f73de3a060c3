"""Mail attachments go through the same checks as uploads, and are never lost.

A customer's mail with an executable, an inline image and a PDF: every part is
stored byte for byte; the executable (refused as an upload) is kept
quarantined: listed, never previewed, downloadable by staff only and only as
application/octet-stream. Thumbnails of images are made by the preview task.
"""

from __future__ import annotations

import hashlib
import io

from PIL import Image
from sqlalchemy import select

from gateway.attachments.models import Attachment
from gateway.users.services import add_user_cli
from tests.integration.conftest import make_mail
from web.app import create_app


def _png() -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (400, 300), "green").save(out, "PNG")
    return out.getvalue()


def test_mail_parts_are_checked_and_quarantined_not_dropped(mail_server, db):
    exe = b"MZ" + b"\0" * 4000
    png = _png()
    pdf = b"%PDF-1.4\n" + b"0" * 500
    msg = make_mail(subject="Invoice attached")
    msg.add_attachment(exe, maintype="application", subtype="pdf", filename="invoice.pdf")
    msg.add_attachment(png, maintype="image", subtype="png", filename="screenshot.png")
    msg.add_attachment(pdf, maintype="application", subtype="pdf", filename="real.pdf")
    assert mail_server.send(msg) == {}
    mail_server.process()
    mail_server.process()  # the preview tasks queued by the ingest

    with db.transaction() as session:
        rows = {a.filename: a for a in session.scalars(select(Attachment))}
    assert set(rows) == {"invoice.pdf", "screenshot.png", "real.pdf"}
    for name, data in (("invoice.pdf", exe), ("screenshot.png", png), ("real.pdf", pdf)):
        assert rows[name].sha256 == hashlib.sha256(data).hexdigest()
        assert rows[name].size == len(data)
    assert rows["invoice.pdf"].content_type == "application/x-dosexec"
    assert "not accepted" in (rows["invoice.pdf"].quarantine_reason or "")
    assert rows["screenshot.png"].quarantine_reason is None
    assert rows["real.pdf"].content_type == "application/pdf"

    app = create_app(mail_server.settings, database=db)
    files = app.extensions["supportgate"].files
    assert files.previews.get(rows["screenshot.png"].sha256) is not None  # made by the task
    client = app.test_client()
    with db.transaction() as session:
        _, agent = add_user_cli(session, "agent@example.com", "agent", "Agent", None)
        _, alice = add_user_cli(session, "alice@example.org", "customer", None, None)
    ticket_id = str(rows["invoice.pdf"].ticket_id)
    listed = client.get(
        f"/api/v1/tickets/{ticket_id}/attachments", headers={"Authorization": f"Bearer {alice}"}
    ).get_json()["items"]
    by_name = {a["filename"]: a for a in listed}
    assert by_name["invoice.pdf"]["quarantined"] is True
    assert by_name["invoice.pdf"]["preview_url"] is None
    assert by_name["screenshot.png"]["quarantined"] is False
    url = by_name["invoice.pdf"]["download_url"]
    assert client.get(url, headers={"Authorization": f"Bearer {alice}"}).status_code == 403
    staff = client.get(url, headers={"Authorization": f"Bearer {agent}"})
    assert staff.status_code == 200
    assert staff.data == exe
    assert staff.headers["Content-Type"] == "application/octet-stream"
