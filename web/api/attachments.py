"""/api/v1/tickets/{id}/attachments and /api/v1/attachments/{id}: files.

Downloads never let the browser decide what a file is: the type sent is the
stored, sniffed type when it is on the policy's SERVED_AS_IS list, else
``application/octet-stream``; always ``Content-Disposition: attachment``,
``X-Content-Type-Options: nosniff`` and ``Content-Security-Policy: sandbox``.
Werkzeug's ``send_file`` is not used: it guesses the type from the name.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable, Iterator
from typing import Any
from urllib.parse import quote

from flask import Blueprint, Response, current_app, request
from sqlalchemy.orm import Session
from werkzeug.wsgi import wrap_file

from gateway.attachments import services
from gateway.attachments.policy import served_type
from gateway.attachments.previews import PreviewUnavailable, preview_kind, text_excerpt
from gateway.attachments.schemas import AttachmentForm, AttachmentListQuery, AttachmentPage
from gateway.conversations.schemas import AttachmentOut
from gateway.conversations.services import attachment_out
from gateway.errors import Forbidden, NotFound
from gateway.permissions import Principal
from gateway.tickets.services import get_ticket
from web.cors import add_cors_headers
from web.spec import AfterCommit, Received, Upload, endpoint

bp = Blueprint("attachments", __name__)
bp.after_request(add_cors_headers)

SAFE_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "Content-Security-Policy": "sandbox",
}
DOWNLOAD_HEADERS = ("Content-Disposition", "X-Content-Type-Options", "Content-Security-Policy")
_FALLBACK_UNSAFE = re.compile(r'[^\x20-\x7e]|["\\%/]')


def content_disposition(filename: str, disposition: str = "attachment") -> str:
    """RFC 6266: a quoted ASCII fallback, and the exact name as RFC 8187 ``filename*``."""
    ascii_name = unicodedata.normalize("NFKD", filename).encode("ascii", "ignore").decode()
    fallback = _FALLBACK_UNSAFE.sub("_", ascii_name).strip() or "attachment"
    exact = quote(filename, safe="!#$&+-.^_`|~")
    return f"{disposition}; filename=\"{fallback}\"; filename*=UTF-8''{exact}"


def _chunks(stream: Any, size: int = 256 * 1024) -> Iterator[bytes]:
    try:
        while chunk := stream.read(size):
            yield chunk
    finally:
        stream.close()


def stream_body(stream: Any) -> Iterable[bytes]:
    """The server's ``wsgi.file_wrapper`` where there is one (gunicorn: sendfile
    for a local file), else chunks that close the file once sent."""
    if "wsgi.file_wrapper" in request.environ:
        return wrap_file(request.environ, stream, buffer_size=256 * 1024)
    return _chunks(stream)


def _files() -> services.Files:
    return current_app.extensions["supportgate"].files  # type: ignore[no-any-return]


def _check_upload(session: Session, principal: Principal, ref: str) -> None:
    ticket = get_ticket(session, principal, ref)
    services.check_upload_allowed(session, principal, ticket, None)


@bp.post("/tickets/<ref>/attachments")
@endpoint(
    summary="Upload a file to a ticket (multipart/form-data, field `file`)",
    tag="attachments",
    upload=Upload(
        form=AttachmentForm,
        stage=lambda ctx: ctx.files.stage(inline=False),
        check=_check_upload,
        description="The file; its type is sniffed from its bytes.",
    ),
    response=AttachmentOut,
    status=201,
    errors=(409,),
    description="413 above SUPPORTGATE_MAX_ATTACHMENT_BYTES; 415 for a type the policy "
    "refuses; 409 on an archived or deleted ticket.",
)
def create(
    session: Session, principal: Principal, ref: str, form: AttachmentForm, upload: Received
):
    files = _files()
    ticket = get_ticket(session, principal, ref)
    services.check_upload_allowed(session, principal, ticket, form.message_id)
    content_type = services.accept_file(files.policies, upload.staged, inline=False)
    files.storage.commit(upload.staged)
    attachment = services.add_attachment(
        session,
        principal,
        ticket,
        upload.staged,
        filename=upload.filename,
        message_id=form.message_id,
        content_type=content_type,
    )
    return attachment_out(attachment), 201


@bp.get("/tickets/<ref>/attachments")
@endpoint(
    summary="Attachments of a ticket, oldest first",
    tag="attachments",
    query=AttachmentListQuery,
    response=AttachmentPage,
)
def index(session: Session, principal: Principal, ref: str, query: AttachmentListQuery):
    ticket = get_ticket(session, principal, ref)
    rows, cursor = services.list_attachments(session, principal, ticket, query.limit, query.cursor)
    return {"items": [attachment_out(a) for a in rows], "next_cursor": cursor}


@bp.get("/attachments/<attachment_id>")
@endpoint(
    summary="The exact bytes of an attachment (always a download, never rendered)",
    tag="attachments",
    media_type="application/octet-stream",
    media_types=("*/*",),
    headers=DOWNLOAD_HEADERS,
    errors=(403,),
)
def download(session: Session, principal: Principal, attachment_id: str):
    attachment, _ = services.get_attachment(session, principal, attachment_id)
    if attachment.quarantine_reason is not None and not principal.is_staff:
        raise Forbidden("this file is quarantined; an agent can look at it")
    files = _files()
    quarantined = attachment.quarantine_reason is not None
    sha, size, name = attachment.sha256, attachment.size, attachment.filename
    mimetype = served_type(attachment.content_type, quarantined)

    def send() -> Response:
        stream = services.open_bytes(files, attachment)
        response = Response(
            stream_body(stream),
            status=200,
            content_type=mimetype,
            direct_passthrough=True,
        )
        response.content_length = size
        response.headers["Content-Disposition"] = content_disposition(name)
        response.headers["ETag"] = f'"{sha}"'
        response.headers.update(SAFE_HEADERS)
        return response

    return AfterCommit(send)


@bp.get("/attachments/<attachment_id>/preview")
@endpoint(
    summary="A safe preview: a PNG thumbnail of an image, a text excerpt of text",
    tag="attachments",
    media_type="image/png",
    media_types=("text/plain",),
    headers=DOWNLOAD_HEADERS,
    description="404 when the file has no preview (not an image or text, quarantined, "
    "damaged, or more pixels than SUPPORTGATE_PREVIEW_MAX_PIXELS).",
)
def preview(session: Session, principal: Principal, attachment_id: str):
    attachment, _ = services.get_attachment(session, principal, attachment_id)
    kind = preview_kind(attachment.content_type, attachment.quarantine_reason is not None)
    if kind is None:
        raise NotFound("this attachment has no preview")
    files = _files()
    sha, content_type = attachment.sha256, attachment.content_type

    def make() -> Response:
        headers: dict[str, Any] = dict(SAFE_HEADERS)
        if kind == "text":
            with services.open_bytes(files, attachment) as stream:
                text = text_excerpt(stream)
            headers["Content-Disposition"] = content_disposition("preview.txt", "inline")
            return Response(text, content_type="text/plain; charset=utf-8", headers=headers)
        png = files.previews.get(sha)
        if png is None:
            try:
                with services.open_bytes(files, attachment) as stream:
                    png = files.previews.make(sha, stream, content_type)
            except PreviewUnavailable as exc:
                raise NotFound(f"this attachment has no preview: {exc}") from None
        headers["Content-Disposition"] = content_disposition("preview.png", "inline")
        return Response(png, content_type="image/png", headers=headers)

    return AfterCommit(make)


@bp.delete("/attachments/<attachment_id>")
@endpoint(
    summary="Remove an attachment (staff); its file goes once nothing references it",
    tag="attachments",
    status=204,
    errors=(409,),
)
def delete(session: Session, principal: Principal, attachment_id: str):
    attachment, ticket = services.get_attachment(session, principal, attachment_id)
    services.delete_attachment(session, principal, attachment, ticket)
    return None
