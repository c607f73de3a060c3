"""Attachments through the API: upload, list, download, preview, delete.

Round trips are checked by sha256, types by what the bytes are (never the
name), limits by 413/415, previews by decoding what comes back, visibility by
another customer's 404, and removal by the storage itself.
"""

from __future__ import annotations

import hashlib
import io
import os
import threading
import zipfile
from typing import Any

import pytest
from PIL import Image
from sqlalchemy import select
from werkzeug.datastructures import FileStorage, MultiDict
from werkzeug.test import encode_multipart

from gateway.attachments.models import Attachment
from gateway.events import Event, OutboxTask
from gateway.storage import LocalStorage
from tests.blobs import opaque_bytes

LIMIT = 25 * 1024 * 1024


def png_bytes(size=(40, 30), mode="RGB", color=(200, 30, 30)) -> bytes:
    out = io.BytesIO()
    Image.new(mode, size, color).save(out, "PNG")
    return out.getvalue()


def image_bytes(fmt: str, size=(64, 48)) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, (10, 120, 200)).save(out, fmt)
    return out.getvalue()


def bomb_png(side: int = 60_000) -> bytes:
    """A tiny PNG declaring side x side pixels (3.6 billion): inflating it would
    take gigabytes, so it must be refused from its header."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    header = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)  # 1-bit greyscale
    row = b"\x00" + b"\x00" * ((side + 7) // 8)
    data = zlib.compress(row * 64, 9)  # only a few rows: the header is what matters
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", data) + chunk(b"IEND", b"")
    )


def multipart(data: bytes, name: str, **fields: Any) -> tuple[bytes, str]:
    """The encoded body and its content type. (Encoded here: the test client
    spools large bodies to a temp file that it never closes.)"""
    form = MultiDict(
        [("file", FileStorage(io.BytesIO(data), name, content_type="application/x-whatever"))]
    )
    for key, value in fields.items():
        form.add(key, value)
    boundary, body = encode_multipart(form)
    return body, f"multipart/form-data; boundary={boundary}"


def upload(caller, ticket_id: str, data: bytes, name: str = "file.bin", client=None, **fields):
    body, content_type = multipart(data, name, **fields)
    return (client or caller.client).post(
        f"/api/v1/tickets/{ticket_id}/attachments",
        data=body,
        content_type=content_type,
        headers={"Authorization": f"Bearer {caller.token}"},
    )


def storage_of(app) -> LocalStorage:
    return app.extensions["supportgate"].files.storage


@pytest.fixture
def ticket(make_ticket, customer_a) -> dict[str, Any]:
    return make_ticket(customer_email=customer_a.email)


# --- round trips ------------------------------------------------------------------


@pytest.mark.parametrize(
    "size",
    [
        0,
        1,
        pytest.param(10 * 1024 * 1024, id="10MB"),
        pytest.param(LIMIT, id="25MB-at-the-limit"),
    ],
)
def test_round_trip_is_byte_exact(agent, ticket, size):
    data = opaque_bytes(size, "round-trip")
    digest = hashlib.sha256(data).hexdigest()
    response = upload(agent, ticket["id"], data, "blob.dat")
    assert response.status_code == 201, response.get_json()
    body = response.get_json()
    assert body["size"] == size and body["sha256"] == digest
    assert body["download_url"] == f"/api/v1/attachments/{body['id']}"
    got = agent.get(body["download_url"])
    assert got.status_code == 200
    assert hashlib.sha256(got.data).hexdigest() == digest
    assert int(got.headers["Content-Length"]) == size
    assert got.headers["Content-Disposition"].startswith("attachment;")
    assert got.headers["X-Content-Type-Options"] == "nosniff"
    assert got.headers["Content-Security-Policy"] == "sandbox"


def test_limit_plus_one_is_413_and_leaves_nothing(app, agent, ticket):
    response = upload(agent, ticket["id"], b"\0" * (LIMIT + 1))
    assert response.status_code == 413
    problem = response.get_json()
    assert problem["type"].endswith("/problems/payload-too-large")
    assert list(storage_of(app).iter_hashes()) == []
    assert not list(storage_of(app).root.glob(".upload-*"))
    assert agent.get(f"/api/v1/tickets/{ticket['id']}/attachments").get_json()["items"] == []


def test_body_over_the_request_cap_is_413(agent, ticket, client):
    response = client.post(
        f"/api/v1/tickets/{ticket['id']}/attachments",
        data=b"x" * 16,
        headers={
            "Authorization": f"Bearer {agent.token}",
            "Content-Type": "multipart/form-data; boundary=b",
        },
        environ_overrides={"CONTENT_LENGTH": str(LIMIT * 2)},
    )
    assert response.status_code == 413
    assert response.mimetype == "application/problem+json"


# --- types come from the bytes ----------------------------------------------------------


def test_png_named_txt_is_a_png(agent, ticket):
    data = png_bytes()
    body = upload(agent, ticket["id"], data, "notes.txt").get_json()
    assert body["content_type"] == "image/png"
    assert body["filename"] == "notes.txt"
    assert body["preview_url"] == f"/api/v1/attachments/{body['id']}/preview"
    got = agent.get(body["download_url"])
    assert got.headers["Content-Type"] == "image/png"
    assert got.data == data


@pytest.mark.parametrize(
    ("data", "sniffed"),
    [
        (b"<!DOCTYPE html><html><script>alert(1)</script></html>", "text/html"),
        (
            b'<svg xmlns="http://www.w3.org/2000/svg"><script>alert(1)</script></svg>',
            "image/svg+xml",
        ),
    ],
)
def test_html_and_svg_named_png_are_never_served_as_what_they_are(agent, ticket, data, sniffed):
    body = upload(agent, ticket["id"], data, "cat.png").get_json()
    assert body["content_type"] == sniffed
    got = agent.get(body["download_url"])
    assert got.data == data
    assert got.headers["Content-Type"] == "application/octet-stream"
    assert got.headers["Content-Disposition"].startswith("attachment;")
    assert got.headers["X-Content-Type-Options"] == "nosniff"
    assert got.headers["Content-Security-Policy"] == "sandbox"


def test_client_content_type_is_ignored(agent, ticket, client):
    response = client.post(
        f"/api/v1/tickets/{ticket['id']}/attachments",
        data={"file": (io.BytesIO(b"just words\n"), "a.html", "text/html")},
        content_type="multipart/form-data",
        headers={"Authorization": f"Bearer {agent.token}"},
    )
    assert response.get_json()["content_type"] == "text/plain"


def test_executable_is_415(app, agent, ticket):
    pe = b"MZ" + b"\x00" * 200  # a DOS executable's header
    response = upload(agent, ticket["id"], pe, "invoice.pdf")
    assert response.status_code == 415
    problem = response.get_json()
    assert problem["type"].endswith("/problems/unsupported-media-type")
    assert problem["content_type"] == "application/x-dosexec"
    assert list(storage_of(app).iter_hashes()) == []


def test_zip_bomb_is_refused(agent, ticket):
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("zeros.bin", b"\0" * (20 * 1024 * 1024))
    data = out.getvalue()
    assert len(data) * 100 < 20 * 1024 * 1024
    response = upload(agent, ticket["id"], data, "photos.zip")
    assert response.status_code == 415
    assert "100:1" in response.get_json()["detail"]
    small = io.BytesIO()
    with zipfile.ZipFile(small, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("a.txt", os.urandom(2000).hex())
    assert upload(agent, ticket["id"], small.getvalue(), "ok.zip").status_code == 201


def test_request_shape_errors(agent, ticket, client):
    auth = {"Authorization": f"Bearer {agent.token}"}
    url = f"/api/v1/tickets/{ticket['id']}/attachments"
    json_body = client.post(url, json={"file": "x"}, headers=auth)
    assert json_body.status_code == 415
    no_file = client.post(
        url, data={"message_id": ""}, content_type="multipart/form-data", headers=auth
    )
    assert no_file.status_code == 422
    assert no_file.get_json()["errors"][0]["field"] == "file"
    two = client.post(
        url,
        data={"file": [(io.BytesIO(b"a"), "a"), (io.BytesIO(b"b"), "b")]},
        content_type="multipart/form-data",
        headers=auth,
    )
    assert two.status_code == 422
    broken = client.post(
        url,
        data=b'--b\r\nContent-Disposition: form-data; name="file"; filename="x"\r\n\r\nabc',
        headers={**auth, "Content-Type": "multipart/form-data; boundary=b"},
    )
    assert broken.status_code == 422
    bad_message = upload(agent, ticket["id"], b"x", message_id="not-a-uuid")
    assert bad_message.status_code == 422


def test_filenames_are_kept_and_served_rfc6266(agent, ticket):
    body = upload(agent, ticket["id"], b"x", "Ünïcødé résumé; 100%.txt").get_json()
    assert body["filename"] == "Ünïcødé résumé; 100%.txt"
    disposition = agent.get(body["download_url"]).headers["Content-Disposition"]
    assert disposition == (
        'attachment; filename="Unicde resume; 100_.txt"; '
        "filename*=UTF-8''%C3%9Cn%C3%AFc%C3%B8d%C3%A9%20r%C3%A9sum%C3%A9%3B%20100%25.txt"
    )


# --- previews ----------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "GIF"])
def test_image_preview_is_a_small_png(agent, ticket, fmt):
    data = image_bytes(fmt, size=(1200, 900))
    body = upload(agent, ticket["id"], data, f"photo.{fmt.lower()}").get_json()
    assert body["content_type"] == f"image/{fmt.lower()}"
    response = agent.get(body["preview_url"])
    assert response.status_code == 200
    assert response.headers["Content-Type"] == "image/png"
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    thumb = Image.open(io.BytesIO(response.data))
    assert thumb.format == "PNG"
    assert max(thumb.size) <= 320
    assert thumb.size[0] > thumb.size[1]  # aspect kept
    again = agent.get(body["preview_url"])  # from the cache now
    assert again.data == response.data


def test_decompression_bomb_preview_is_refused_not_a_crash(agent, ticket):
    body = upload(agent, ticket["id"], bomb_png(), "huge.png").get_json()
    assert body["content_type"] == "image/png"
    response = agent.get(body["preview_url"])
    assert response.status_code == 404
    assert "preview" in response.get_json()["detail"]
    # The bytes themselves are still there, exactly.
    assert agent.get(body["download_url"]).data == bomb_png()


def test_damaged_image_preview_is_404(agent, ticket):
    data = png_bytes()[:60]
    body = upload(agent, ticket["id"], data, "cut.png").get_json()
    assert agent.get(body["preview_url"]).status_code == 404


def test_text_preview_is_an_excerpt(agent, ticket):
    text = "Zeile eins: ÄÖÜ\n" + "x" * 10_000
    body = upload(agent, ticket["id"], text.encode(), "log.txt").get_json()
    response = agent.get(body["preview_url"])
    assert response.status_code == 200
    assert response.headers["Content-Type"] == "text/plain; charset=utf-8"
    excerpt = response.data.decode()
    assert excerpt.startswith("Zeile eins: ÄÖÜ\n") and len(excerpt) <= 4096


def test_no_preview_for_other_types(agent, ticket):
    body = upload(agent, ticket["id"], b"%PDF-1.4\n%...", "a.pdf").get_json()
    assert body["content_type"] == "application/pdf"
    assert body["preview_url"] is None
    assert agent.get(f"/api/v1/attachments/{body['id']}/preview").status_code == 404


def test_preview_task_is_queued_for_images(db, agent, ticket):
    body = upload(agent, ticket["id"], png_bytes(), "a.png").get_json()
    with db.transaction() as session:
        kinds = session.scalars(select(OutboxTask.kind)).all()
    assert "attachment.preview" in kinds
    assert body["id"]


# --- who sees what -------------------------------------------------------------------


def test_customer_isolation(agent, customer_a, customer_b, ticket):
    mine = upload(customer_a, ticket["id"], b"alice's secret").get_json()
    assert upload(customer_b, ticket["id"], b"x").status_code == 404
    for path in (
        f"/api/v1/attachments/{mine['id']}",
        f"/api/v1/attachments/{mine['id']}/preview",
        f"/api/v1/tickets/{ticket['id']}/attachments",
    ):
        response = customer_b.get(path)
        assert response.status_code == 404, path
        assert b"secret" not in response.data
    assert customer_b.delete(f"/api/v1/attachments/{mine['id']}").status_code == 404
    assert customer_a.get(f"/api/v1/attachments/{mine['id']}").data == b"alice's secret"
    assert agent.get(f"/api/v1/attachments/{mine['id']}").status_code == 200


def test_files_of_notes_are_staff_only(db, agent, customer_a, ticket):
    note = agent.post(
        f"/api/v1/tickets/{ticket['id']}/messages", json={"body": "internal", "internal": True}
    ).get_json()
    on_note = upload(agent, ticket["id"], b"internal file", message_id=note["id"]).get_json()
    public = upload(agent, ticket["id"], b"public file").get_json()
    assert on_note["message_id"] == note["id"]
    listed = customer_a.get(f"/api/v1/tickets/{ticket['id']}/attachments").get_json()["items"]
    assert [a["id"] for a in listed] == [public["id"]]
    assert customer_a.get(on_note["download_url"]).status_code == 404
    staff = agent.get(f"/api/v1/tickets/{ticket['id']}/attachments").get_json()["items"]
    assert {a["id"] for a in staff} == {on_note["id"], public["id"]}
    with db.transaction() as session:
        events = session.scalars(select(Event).where(Event.type == "attachment.created")).all()
        internal = {e.data["attachment_id"]: e.internal for e in events}
    assert internal == {on_note["id"]: True, public["id"]: False}


def test_customers_attach_to_their_own_messages_only(agent, customer_a, ticket):
    own = customer_a.post(f"/api/v1/tickets/{ticket['id']}/messages", json={"body": "hi"})
    reply = agent.post(f"/api/v1/tickets/{ticket['id']}/messages", json={"body": "hello"})
    ok = upload(customer_a, ticket["id"], b"x", message_id=own.get_json()["id"])
    assert ok.status_code == 201
    refused = upload(customer_a, ticket["id"], b"x", message_id=reply.get_json()["id"])
    assert refused.status_code == 422
    listed = customer_a.get(f"/api/v1/tickets/{ticket['id']}/messages").get_json()["items"]
    assert [len(m["attachments"]) for m in listed] == [1, 0]


def test_archived_and_deleted_tickets_are_read_only(admin, agent, ticket):
    first = upload(agent, ticket["id"], b"before").get_json()
    assert admin.post(f"/api/v1/tickets/{ticket['id']}/archive").status_code == 200
    refused = upload(agent, ticket["id"], b"after")
    assert refused.status_code == 409
    assert agent.delete(first["download_url"]).status_code == 409
    assert agent.get(first["download_url"]).status_code == 200
    assert admin.post(f"/api/v1/tickets/{ticket['id']}/unarchive").status_code == 200
    assert admin.delete(f"/api/v1/tickets/{ticket['id']}").status_code == 204
    assert upload(agent, ticket["id"], b"after").status_code == 409


def test_list_is_paginated(agent, ticket):
    ids = [upload(agent, ticket["id"], bytes([i])).get_json()["id"] for i in range(5)]
    seen, url = [], f"/api/v1/tickets/{ticket['id']}/attachments?limit=2"
    while url:
        page = agent.get(url).get_json()
        seen += [a["id"] for a in page["items"]]
        cursor = page["next_cursor"]
        url = (
            f"/api/v1/tickets/{ticket['id']}/attachments?limit=2&cursor={cursor}" if cursor else ""
        )
    assert seen == ids


# --- deleting -----------------------------------------------------------------------


def run_collect(app, db, grace: float = 0) -> None:
    from gateway.attachments.services import collect_files

    files = app.extensions["supportgate"].files
    files.grace_seconds = grace
    with db.transaction() as session:
        tasks = session.scalars(
            select(OutboxTask).where(
                OutboxTask.kind == "storage.collect", OutboxTask.state == "pending"
            )
        ).all()
        payloads = [dict(t.payload) for t in tasks]
        for t in tasks:
            t.state = "done"
    for payload in payloads:
        collect_files(db, files, payload)


def test_delete_removes_the_file_once_unreferenced(app, db, agent, customer_a, ticket):
    storage = storage_of(app)
    one = upload(agent, ticket["id"], b"same bytes").get_json()
    two = upload(agent, ticket["id"], b"same bytes").get_json()
    assert one["sha256"] == two["sha256"]
    assert customer_a.delete(one["download_url"]).status_code == 403
    assert agent.delete(one["download_url"]).status_code == 204
    assert agent.get(one["download_url"]).status_code == 404
    run_collect(app, db)
    assert storage.exists(two["sha256"])  # still referenced
    assert agent.get(two["download_url"]).data == b"same bytes"
    assert agent.delete(two["download_url"]).status_code == 204
    run_collect(app, db)
    assert not storage.exists(two["sha256"])


def test_delete_leaves_a_young_file_to_the_grace_period(app, db, agent, ticket):
    storage = storage_of(app)
    one = upload(agent, ticket["id"], b"fresh").get_json()
    assert agent.delete(one["download_url"]).status_code == 204
    run_collect(app, db, grace=600)
    assert storage.exists(one["sha256"])  # could be someone's upload in flight


def test_concurrent_upload_and_delete_of_the_same_bytes_keep_the_survivor(app, db, agent, ticket):
    """Delete (and collect at once, grace 1 s) races uploads of the same bytes;
    every attachment left must still have its file."""
    storage = storage_of(app)
    data = b"the same bytes, again and again"
    rounds = 12
    for _ in range(rounds):
        old = upload(agent, ticket["id"], data).get_json()
        past = os.path.getmtime(storage.path_for(old["sha256"])) - 3600
        os.utime(storage.path_for(old["sha256"]), (past, past))  # old: collectable
        barrier = threading.Barrier(2)
        results: dict[str, Any] = {}

        def delete(old=old, barrier=barrier, results=results):
            client = app.test_client()
            barrier.wait()
            results["delete"] = client.delete(
                old["download_url"], headers={"Authorization": f"Bearer {agent.token}"}
            ).status_code
            run_collect(app, db, grace=1)

        def add(barrier=barrier, results=results):
            client = app.test_client()
            barrier.wait()
            results["upload"] = upload(agent, ticket["id"], data, "again.txt", client).get_json()

        threads = [threading.Thread(target=delete), threading.Thread(target=add)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert results["delete"] == 204
        survivor = results["upload"]
        assert agent.get(survivor["download_url"]).data == data
    with db.transaction() as session:
        for sha in set(session.scalars(select(Attachment.sha256))):
            assert storage.exists(sha)


# --- CORS ------------------------------------------------------------------------------


@pytest.fixture
def cors_app(settings, db):
    from web.app import create_app

    return create_app(
        settings.model_copy(update={"cors_origins": "https://help.example.com"}), database=db
    )


def test_cors_for_configured_origins_only(cors_app, ticket):
    client = cors_app.test_client()
    url = f"/api/v1/tickets/{ticket['id']}/attachments"
    preflight = client.options(
        url,
        headers={
            "Origin": "https://help.example.com",
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization",
        },
    )
    assert preflight.status_code == 200
    assert preflight.headers["Access-Control-Allow-Origin"] == "https://help.example.com"
    assert "POST" in preflight.headers["Access-Control-Allow-Methods"]
    assert "Authorization" in preflight.headers["Access-Control-Allow-Headers"]
    assert "Origin" in preflight.headers["Vary"]
    other = client.options(url, headers={"Origin": "https://evil.example.net"})
    assert "Access-Control-Allow-Origin" not in other.headers
    # Other routes never answer cross-origin.
    tickets = client.options("/api/v1/tickets", headers={"Origin": "https://help.example.com"})
    assert "Access-Control-Allow-Origin" not in tickets.headers


def test_no_cors_headers_by_default(client, ticket):
    response = client.options(
        f"/api/v1/tickets/{ticket['id']}/attachments", headers={"Origin": "https://x.example"}
    )
    assert "Access-Control-Allow-Origin" not in response.headers


def test_policy_job_drops_files_and_thumbnails_of_deleted_attachments(app, db, agent, ticket):
    from gateway.policies.jobs import apply_deletion_policy

    files = app.extensions["supportgate"].files
    body = upload(agent, ticket["id"], png_bytes(), "a.png").get_json()
    assert agent.get(body["preview_url"]).status_code == 200
    assert files.previews.get(body["sha256"]) is not None
    assert agent.delete(body["download_url"]).status_code == 204
    apply_deletion_policy(db, files.storage, grace_seconds=0, previews=files.previews)
    assert not files.storage.exists(body["sha256"])
    assert files.previews.get(body["sha256"]) is None
