"""Declared endpoints: one decorator validates, authenticates and documents.

``@endpoint(...)`` wraps a view so that it

1. authenticates the caller (unless ``public``) and applies the rate limits,
2. validates the query string and JSON body with the given pydantic models
   (``customer_body`` for customers, where their writable fields differ),
3. runs the view inside one database transaction, committed before the
   response leaves,

and records the same models on the view, from which :func:`build_openapi`
writes ``openapi.json``. What validates a request is what documents it.

File uploads (``upload=Upload(...)``, ``multipart/form-data``) run in three
steps instead, so that no database transaction (on SQLite: the write lock)
stays open while a slow client sends megabytes: authenticate and run the
upload's ``check`` in a first transaction; stream the file into a staged file
(hashed, size-limited) with no transaction open; run the view in a second
transaction. A view may return :class:`AfterCommit` to do slow work (reading
a file, making a thumbnail) once its transaction is over.
"""

from __future__ import annotations

import types
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import wraps
from typing import Any

from flask import Flask, Response, current_app, g, json, request
from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from gateway.errors import PayloadTooLarge, UnsupportedMediaType, ValidationFailed
from gateway.permissions import Principal
from gateway.schemas import Problem
from web import multipart


@dataclass
class Upload:
    """A ``multipart/form-data`` body: one file (``file_field``) and form fields.

    ``stage(app_context)`` hands out the writable staged file the file streams
    into; ``check(session=, principal=, **path_args)`` refuses early (404,
    409 …), before any byte of the body is read.
    """

    form: type[BaseModel]
    stage: Callable[[Any], Any]
    file_field: str = "file"
    check: Callable[..., None] | None = None
    description: str = ""


@dataclass
class Received:
    """The uploaded file a view gets: the staged bytes and the client's name."""

    staged: Any
    filename: str


@dataclass
class AfterCommit:
    """Returned by a view: ``run()`` makes the response after the commit."""

    run: Callable[[], ViewResult]


@dataclass
class Spec:
    summary: str
    tag: str
    query: type[BaseModel] | None = None
    body: type[BaseModel] | None = None
    customer_body: type[BaseModel] | None = None
    response: type[BaseModel] | None = None
    status: int = 200
    public: bool = False
    media_type: str = "application/json"
    etag: bool = False
    description: str = ""
    errors: tuple[int, ...] = field(default_factory=tuple)
    upload: Upload | None = None
    # Success media types besides media_type (file downloads), and documented headers.
    media_types: tuple[str, ...] = ()
    headers: tuple[str, ...] = ()


ViewResult = Response | dict[str, Any] | tuple[Any, ...] | None


def _is_list(annotation: Any) -> bool:
    origin = typing.get_origin(annotation)
    if origin in (list, tuple):
        return True
    if origin in (typing.Union, types.UnionType):
        return any(_is_list(arg) for arg in typing.get_args(annotation))
    if origin is typing.Annotated:
        return _is_list(typing.get_args(annotation)[0])
    return False


def _reject_nul(where: str, value: Any) -> None:
    """U+0000 can be neither stored nor compared by PostgreSQL: refuse it up front."""
    if isinstance(value, str):
        if "\x00" in value:
            raise ValidationFailed.on(where, "must not contain the NUL character")
    elif isinstance(value, dict):
        for key, item in value.items():
            _reject_nul(f"{where}.{key}" if where else str(key), key)
            _reject_nul(f"{where}.{key}" if where else str(key), item)
    elif isinstance(value, list):
        for index, item in enumerate(value):
            _reject_nul(f"{where}.{index}" if where else str(index), item)


def _no_constants(token: str) -> Any:
    raise ValueError(f"{token} is not JSON")


def _finite_float(token: str) -> float:
    value = float(token)
    if value in (float("inf"), float("-inf")):
        raise ValueError(f"{token} is out of range")
    return value


def parse_query(model: type[BaseModel]) -> BaseModel:
    prefixes: tuple[str, ...] = getattr(model, "extra_prefixes", ())
    values: dict[str, Any] = {}
    unknown: list[str] = []
    for name, value in request.args.items(multi=True):
        _reject_nul(name, name)
        _reject_nul(name, value)
    for name in request.args:
        info = model.model_fields.get(name)
        if info is None:
            if not name.startswith(prefixes) or not prefixes:
                unknown.append(name)
            continue
        values[name] = (
            request.args.getlist(name) if _is_list(info.annotation) else request.args[name]
        )
    if unknown:
        raise ValidationFailed.on(unknown[0], "unknown query parameter")
    return model.model_validate(values)


def parse_body(model: type[BaseModel]) -> BaseModel:
    limit = current_app.extensions["supportgate"].settings.max_json_bytes
    if request.content_length is not None and request.content_length > limit:
        raise PayloadTooLarge(f"a JSON body is at most {limit} bytes")
    if not request.is_json:
        raise UnsupportedMediaType("send the body as application/json")
    raw = request.get_data(cache=True)
    if len(raw) > limit:
        raise PayloadTooLarge(f"a JSON body is at most {limit} bytes")
    try:
        # Strict JSON: NaN, Infinity and numbers that overflow to infinity are refused.
        data = json.loads(raw or b"null", parse_constant=_no_constants, parse_float=_finite_float)
    except ValueError as exc:
        raise ValidationFailed.on("body", f"not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ValidationFailed.on("body", "must be a JSON object")
    _reject_nul("", data)
    return model.model_validate(data)


MAX_FORM_FIELD_BYTES = 64 * 1024
MAX_FORM_PARTS = 16


def _body_reader() -> Callable[[int], bytes]:
    """The fastest way to read this request's body.

    gunicorn's ``wsgi.input`` re-buffers every read through a BytesIO, 1 KiB
    at a time; the reader beneath it (``LengthReader`` / ``ChunkedReader``)
    returns the same bytes, limited the same way, several times faster. It is
    used only while the outer buffer is untouched; anything else goes through
    Werkzeug's stream (which also enforces MAX_CONTENT_LENGTH, as touching
    ``request.stream`` here does for all three). Faster still, a Content-Length
    body on gunicorn's plain socket is read straight from it (``web/body.py``)."""
    from web.body import socket_reader

    stream = request.stream
    raw = request.environ.get("wsgi.input")
    direct = socket_reader(raw, request.content_length)
    if direct is not None:
        return direct
    inner = getattr(raw, "reader", None)
    buf = getattr(raw, "buf", None)
    if (
        type(raw).__module__.startswith("gunicorn.")
        and callable(getattr(inner, "read", None))
        and buf is not None
        and buf.tell() == 0
    ):
        return inner.read  # type: ignore[no-any-return,union-attr]
    return stream.read


def receive_upload(upload: Upload, ctx: Any) -> tuple[BaseModel, Received, list[Any]]:
    """Stream a multipart body into staged files; returns the form, the file and
    every staged file made (the caller discards them when done)."""
    if request.mimetype != "multipart/form-data":
        raise UnsupportedMediaType(
            f"send the file as multipart/form-data with the field {upload.file_field!r}"
        )
    boundary = request.mimetype_params.get("boundary", "")
    staged: list[Any] = []

    def stream_factory(**_: Any) -> Any:
        made = upload.stage(ctx)
        staged.append(made)
        return made

    try:
        form, files = multipart.parse(
            _body_reader(),
            boundary.encode("latin-1"),
            stream_factory,
            max_field_bytes=MAX_FORM_FIELD_BYTES,
            max_parts=MAX_FORM_PARTS,
            # 1 MiB: fewest recv calls from the socket reader (web/body.py).
            read_size=1 << 20,
        )
    except multipart.MultipartLimit as exc:
        for item in staged:
            item.discard()
        raise PayloadTooLarge(str(exc)) from None
    except (ValueError, UnicodeError) as exc:
        for item in staged:
            item.discard()
        raise ValidationFailed.on("body", f"not valid multipart/form-data: {exc}") from None
    except BaseException:
        for item in staged:
            item.discard()
        raise
    try:
        chosen = files.getlist(upload.file_field)
        if not chosen:
            raise ValidationFailed.on(upload.file_field, "a file is required")
        if len(chosen) > 1:
            raise ValidationFailed.on(upload.file_field, "send one file per request")
        values = {name: form.get(name) for name in form}
        _reject_nul("", values)
        _reject_nul(upload.file_field, chosen[0].filename or "")
        parsed = upload.form.model_validate(values)
    except BaseException:
        for item in staged:
            item.discard()
        raise
    return parsed, Received(chosen[0].stream, chosen[0].filename or ""), staged


def _run_upload(
    view: Callable[..., ViewResult], spec: Spec, ctx: Any, path_args: dict[str, Any]
) -> ViewResult:
    from web.auth import authenticate_request

    upload = spec.upload
    assert upload is not None
    with ctx.db.transaction() as session:
        principal = authenticate_request(ctx, session)
        g.principal = principal
        if upload.check is not None:
            upload.check(session=session, principal=principal, **path_args)
    form, received, staged = receive_upload(upload, ctx)
    try:
        with ctx.db.transaction() as session:
            return view(
                **path_args, session=session, principal=principal, form=form, upload=received
            )
    finally:
        for item in staged:
            item.discard()  # a no-op for the one the view committed


def to_response(result: ViewResult, spec: Spec) -> Response:
    if isinstance(result, AfterCommit):
        result = result.run()
    if isinstance(result, Response):
        return result
    status, headers = spec.status, {}
    if isinstance(result, tuple):
        payload, *rest = result
        if rest:
            status = rest[0]
        if len(rest) > 1:
            headers = rest[1]
    else:
        payload = result
    if payload is None:
        response = Response(status=status if status != 200 else 204)
    else:
        response = Response(json.dumps(payload), status=status, mimetype=spec.media_type)
    for name, value in headers.items():
        response.headers[name] = value
    return response


def endpoint(
    *,
    summary: str,
    tag: str,
    query: type[BaseModel] | None = None,
    body: type[BaseModel] | None = None,
    customer_body: type[BaseModel] | None = None,
    response: type[BaseModel] | None = None,
    status: int = 200,
    public: bool = False,
    etag: bool = False,
    description: str = "",
    errors: tuple[int, ...] = (),
    media_type: str = "application/json",
    upload: Upload | None = None,
    media_types: tuple[str, ...] = (),
    headers: tuple[str, ...] = (),
) -> Callable[[Callable[..., ViewResult]], Callable[..., Response]]:
    spec = Spec(
        upload=upload,
        media_types=media_types,
        headers=headers,
        media_type=media_type,
        summary=summary,
        tag=tag,
        query=query,
        body=body,
        customer_body=customer_body,
        response=response,
        status=status,
        public=public,
        etag=etag,
        description=description,
        errors=errors,
    )

    def decorator(view: Callable[..., ViewResult]) -> Callable[..., Response]:
        @wraps(view)
        def wrapper(**path_args: Any) -> Response:
            from web.auth import SAFE_METHODS, authenticate_request

            ctx = current_app.extensions["supportgate"]
            for name, value in path_args.items():
                _reject_nul(name, value)
            if upload is not None:
                return to_response(_run_upload(view, spec, ctx, path_args), spec)
            read = request.method in SAFE_METHODS
            unit = ctx.db.read_transaction() if read else ctx.db.transaction()
            with unit as session:
                kwargs: dict[str, Any] = {"session": session}
                principal: Principal | None = None
                if not public:
                    principal = authenticate_request(ctx, session)
                    g.principal = principal
                    kwargs["principal"] = principal
                if query is not None:
                    kwargs["query"] = parse_query(query)
                if body is not None:
                    model = body
                    if (
                        customer_body is not None
                        and principal is not None
                        and principal.is_customer
                    ):
                        model = customer_body
                    kwargs["body"] = parse_body(model)
                result = view(**path_args, **kwargs)
            return to_response(result, spec)

        wrapper.spec = spec  # type: ignore[attr-defined]
        return wrapper

    return decorator


def documented(
    *,
    summary: str,
    tag: str,
    response: type[BaseModel] | None = None,
    media_type: str = "application/json",
    errors: tuple[int, ...] = (),
) -> Callable[[Callable[..., Response]], Callable[..., Response]]:
    """Document a public view that needs neither the database session nor auth."""

    def decorator(view: Callable[..., Response]) -> Callable[..., Response]:
        view.spec = Spec(  # type: ignore[attr-defined]
            summary=summary,
            tag=tag,
            response=response,
            public=True,
            media_type=media_type,
            errors=errors,
        )
        return view

    return decorator


# --- OpenAPI ----------------------------------------------------------------

ERROR_STATUSES = {
    400: "Bad request",
    401: "Authentication required",
    403: "Forbidden",
    404: "Not found",
    405: "Method not allowed",
    409: "Conflict",
    412: "Precondition failed",
    413: "Payload too large",
    415: "Unsupported media type",
    422: "Validation failed",
    429: "Too many requests",
    503: "Service unavailable",
}


def _openapi_path(rule: str) -> tuple[str, list[str]]:
    names: list[str] = []
    out = []
    for part in rule.split("/"):
        if part.startswith("<") and part.endswith(">"):
            name = part[1:-1].split(":")[-1]
            names.append(name)
            out.append("{" + name + "}")
        else:
            out.append(part)
    return "/".join(out), names


def operation_id(method: str, path: str) -> str:
    cleaned = path.strip("/").replace("{", "").replace("}", "").replace("/", "_")
    return f"{method.lower()}_{cleaned.replace('-', '_').replace('.', '_')}"


def iter_specs(app: Flask) -> typing.Iterator[tuple[str, str, Spec]]:
    """(rule, method, spec) for every declared API route."""
    for rule in app.url_map.iter_rules():
        view = app.view_functions.get(rule.endpoint)
        spec: Spec | None = getattr(view, "spec", None)
        if spec is None:
            continue
        for method in sorted((rule.methods or set()) - {"HEAD", "OPTIONS"}):
            yield rule.rule, method, spec


def _without_null(schema: dict[str, Any]) -> dict[str, Any]:
    """A form field is absent or a string; JSON's null has no form encoding."""
    options = [o for o in schema.get("anyOf", []) if o.get("type") != "null"]
    if len(options) == 1:
        rest = {k: v for k, v in schema.items() if k not in ("anyOf", "default")}
        return {**rest, **options[0]}
    return {k: v for k, v in schema.items() if k != "default" or v is not None}


def _multipart_body(
    upload: Upload, schemas: dict[str, Any], ref: Callable[[type[BaseModel], str], Any]
) -> dict[str, Any]:
    form = schemas[ref(upload.form, "validation")["$ref"].rsplit("/", 1)[-1]]
    properties: dict[str, Any] = {
        upload.file_field: {
            "type": "string",
            "contentMediaType": "application/octet-stream",
            "description": upload.description or "the file",
        }
    }
    for name, prop in form.get("properties", {}).items():
        properties[name] = _without_null(prop)
    return {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "properties": properties,
                    "required": [upload.file_field, *form.get("required", [])],
                },
                "encoding": {upload.file_field: {"contentType": "application/octet-stream"}},
            }
        },
    }


def build_openapi(app: Flask) -> dict[str, Any]:
    models: list[tuple[type[BaseModel], Any]] = [(Problem, "serialization")]
    specs = list(iter_specs(app))
    for _, _, spec in specs:
        for m in (spec.body, spec.customer_body, spec.query, spec.upload and spec.upload.form):
            if m is not None:
                models.append((m, "validation"))
        if spec.response is not None:
            models.append((spec.response, "serialization"))
    keyed, defs = models_json_schema(
        list(dict.fromkeys(models)), ref_template="#/components/schemas/{model}"
    )
    schemas = defs.get("$defs", {})

    def ref(model: type[BaseModel], mode: str) -> dict[str, Any]:
        return keyed[(model, mode)]  # type: ignore[index]

    problem_ref = ref(Problem, "serialization")
    paths: dict[str, dict[str, Any]] = {}
    for rule, method, spec in specs:
        path, path_params = _openapi_path(rule)
        op: dict[str, Any] = {
            "summary": spec.summary,
            "tags": [spec.tag],
            "operationId": operation_id(method, path),
            "parameters": [
                {"name": n, "in": "path", "required": True, "schema": {"type": "string"}}
                for n in path_params
            ],
            "responses": {},
        }
        if spec.description:
            op["description"] = spec.description
        if spec.public:
            op["security"] = []
        if spec.query is not None:
            query_schema = schemas[ref(spec.query, "validation")["$ref"].rsplit("/", 1)[-1]]
            required = set(query_schema.get("required", []))
            for name, prop in query_schema.get("properties", {}).items():
                param: dict[str, Any] = {
                    "name": name,
                    "in": "query",
                    "required": name in required,
                    "schema": prop,
                }
                if "description" in prop:
                    param["description"] = prop["description"]
                if prop.get("type") == "array":
                    param["style"], param["explode"] = "form", True
                op["parameters"].append(param)
        if spec.upload is not None:
            op["requestBody"] = _multipart_body(spec.upload, schemas, ref)
        if spec.body is not None:
            body_schema = ref(spec.body, "validation")
            if spec.customer_body is not None:
                body_schema = {"anyOf": [body_schema, ref(spec.customer_body, "validation")]}
            op["requestBody"] = {
                "required": True,
                "content": {"application/json": {"schema": body_schema}},
            }
        ok: dict[str, Any] = {"description": "Success"}
        if spec.response is None and spec.status != 204:
            json_body = spec.media_type == "application/json"
            ok["content"] = {
                spec.media_type: {"schema": {"type": "object" if json_body else "string"}}
            }
        if spec.response is not None:
            ok["content"] = {spec.media_type: {"schema": ref(spec.response, "serialization")}}
        for extra in spec.media_types:
            ok.setdefault("content", {})[extra] = {
                "schema": {"type": "string", "contentMediaType": extra}
            }
        if spec.etag:
            ok["headers"] = {"ETag": {"schema": {"type": "string"}, "description": '"<version>"'}}
        for header in spec.headers:
            ok.setdefault("headers", {})[header] = {"schema": {"type": "string"}}
        op["responses"][str(spec.status)] = ok
        error_codes = set(spec.errors) | {422, 429}
        if not spec.public:
            error_codes |= {401, 403}
        if spec.body is not None or spec.upload is not None:
            error_codes |= {413, 415}
        if path_params:
            error_codes.add(404)
        for code in sorted(error_codes):
            op["responses"][str(code)] = {
                "description": ERROR_STATUSES[code],
                "content": {"application/problem+json": {"schema": problem_ref}},
            }
        paths.setdefault(path, {})[method.lower()] = op
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Supportgate API",
            "version": "1.0.0",
            "description": "Tickets, conversations and users of a Supportgate installation.",
        },
        "servers": [{"url": "/"}],
        "paths": dict(sorted(paths.items())),
        "components": {
            "schemas": schemas,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
        "security": [{"bearer": []}],
    }
