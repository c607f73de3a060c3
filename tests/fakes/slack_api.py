"""A local Slack Web API: the methods Supportgate calls, recording every call.

    auth.test  chat.postMessage  chat.update  chat.postEphemeral  users.info
    files.info  conversations.list  conversations.history  conversations.replies
    apps.connections.open (answers SOCKET_URL, for Socket Mode tests)
    GET /files/<id>/<name>   a file's bytes (url_private_download), bearer token required

Faults, per method: ``rate_limit(method, times, retry_after)`` answers 429
with ``Retry-After``; ``drop_answer(method)`` performs the call and then
closes the connection without answering (the post reached Slack, the answer
was lost).
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, urlsplit

BOT_TOKEN = "xoxb-test-token"
APP_TOKEN = "xapp-1-test"
BOT_USER = "UBOT0001"
BOT_ID = "BBOT0001"
TEAM = "T0TEAM01"
CHANNEL_ID = "C0SUPPORT"


@dataclass
class Call:
    method: str
    params: dict[str, Any]
    token: str | None
    at: float


@dataclass
class Posted:
    channel: str
    ts: str
    text: str
    blocks: list[dict[str, Any]] | None
    thread_ts: str | None
    metadata: dict[str, Any] | None
    updates: int = 0


@dataclass
class FakeSlack:
    port: int = 0
    calls: list[Call] = field(default_factory=list)
    messages: list[Posted] = field(default_factory=list)
    users: dict[str, dict[str, Any]] = field(default_factory=dict)
    files: dict[str, tuple[str, str, bytes]] = field(default_factory=dict)
    socket_url: str = ""
    _limits: dict[str, list[int]] = field(default_factory=dict)
    _drops: dict[str, int] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _clock: float = 1_800_000_000.0

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/api/"

    # --- configuration ---------------------------------------------------------

    def add_user(self, user_id: str, email: str | None, *, is_bot: bool = False) -> None:
        profile = {"email": email} if email else {}
        self.users[user_id] = {"id": user_id, "is_bot": is_bot, "profile": profile}

    def add_file(self, file_id: str, name: str, mimetype: str, data: bytes) -> dict[str, Any]:
        self.files[file_id] = (name, mimetype, data)
        return self.file_object(file_id)

    def file_object(self, file_id: str) -> dict[str, Any]:
        name, mimetype, data = self.files[file_id]
        url = f"http://127.0.0.1:{self.port}/files/{file_id}/{name}"
        return {
            "id": file_id,
            "name": name,
            "mimetype": mimetype,
            "size": len(data),
            "url_private": url,
            "url_private_download": url + "?download=1",
        }

    def rate_limit(self, method: str, times: int = 1, retry_after: int = 1) -> None:
        self._limits[method] = [times, retry_after]

    def drop_answer(self, method: str, times: int = 1) -> None:
        self._drops[method] = times

    # --- reading ---------------------------------------------------------------

    def of(self, method: str) -> list[Call]:
        return [c for c in self.calls if c.method == method]

    def parents(self) -> list[Posted]:
        return [m for m in self.messages if m.thread_ts is None]

    def thread(self, parent_ts: str) -> list[Posted]:
        return [m for m in self.messages if m.thread_ts == parent_ts]

    def message(self, ts: str) -> Posted:
        return next(m for m in self.messages if m.ts == ts)

    # --- the API ---------------------------------------------------------------

    def _next_ts(self) -> str:
        self._clock += 1.0
        return f"{self._clock:.6f}"

    def answer(self, method: str, params: dict[str, Any], token: str | None) -> tuple[int, Any]:
        with self._lock:
            self.calls.append(Call(method, params, token, time.time()))
            limit = self._limits.get(method)
            if limit and limit[0] > 0:
                limit[0] -= 1
                return 429, {"ok": False, "error": "ratelimited", "_retry_after": limit[1]}
            wanted = APP_TOKEN if method == "apps.connections.open" else BOT_TOKEN
            if token != wanted:
                return 200, {"ok": False, "error": "invalid_auth"}
            handler = getattr(self, "_" + method.replace(".", "_"), None)
            if handler is None:
                return 404, {"ok": False, "error": "unknown_method"}
            return 200, handler(params)

    def _auth_test(self, _: dict[str, Any]) -> dict[str, Any]:
        return {"ok": True, "user_id": BOT_USER, "bot_id": BOT_ID, "team_id": TEAM}

    def _channel(self, name: str) -> str | None:
        if name in (CHANNEL_ID, "support", "#support"):
            return CHANNEL_ID
        return None

    def _chat_postMessage(self, p: dict[str, Any]) -> dict[str, Any]:
        channel = self._channel(str(p.get("channel")))
        if channel is None:
            return {"ok": False, "error": "channel_not_found"}
        posted = Posted(
            channel,
            self._next_ts(),
            str(p.get("text", "")),
            p.get("blocks"),
            p.get("thread_ts"),
            p.get("metadata"),
        )
        self.messages.append(posted)
        return {"ok": True, "channel": channel, "ts": posted.ts, "message": {"text": posted.text}}

    def _chat_update(self, p: dict[str, Any]) -> dict[str, Any]:
        for posted in self.messages:
            if posted.channel == p.get("channel") and posted.ts == p.get("ts"):
                posted.text, posted.blocks = str(p.get("text", "")), p.get("blocks")
                posted.updates += 1
                return {"ok": True, "channel": posted.channel, "ts": posted.ts}
        return {"ok": False, "error": "message_not_found"}

    def _chat_postEphemeral(self, p: dict[str, Any]) -> dict[str, Any]:
        if self._channel(str(p.get("channel"))) is None:
            return {"ok": False, "error": "channel_not_found"}
        return {"ok": True, "message_ts": self._next_ts()}

    def _users_info(self, p: dict[str, Any]) -> dict[str, Any]:
        user = self.users.get(str(p.get("user")))
        if user is None:
            return {"ok": False, "error": "user_not_found"}
        return {"ok": True, "user": user}

    def _files_info(self, p: dict[str, Any]) -> dict[str, Any]:
        if str(p.get("file")) not in self.files:
            return {"ok": False, "error": "file_not_found"}
        return {"ok": True, "file": self.file_object(str(p["file"]))}

    def _history(self, p: dict[str, Any], thread_ts: str | None) -> dict[str, Any]:
        oldest = float(p.get("oldest") or 0)
        found = [
            {"ts": m.ts, "text": m.text, "metadata": m.metadata}
            for m in self.messages
            if m.channel == p.get("channel")
            and float(m.ts) >= oldest
            and (m.thread_ts == thread_ts if thread_ts else m.thread_ts is None)
        ]
        return {"ok": True, "messages": list(reversed(found)), "has_more": False}

    def _conversations_history(self, p: dict[str, Any]) -> dict[str, Any]:
        if self._channel(str(p.get("channel"))) != p.get("channel"):
            return {"ok": False, "error": "channel_not_found"}
        return self._history(p, None)

    def _conversations_replies(self, p: dict[str, Any]) -> dict[str, Any]:
        return self._history(p, str(p.get("ts")))

    def _conversations_list(self, p: dict[str, Any]) -> dict[str, Any]:
        channels = [
            {"id": "C0GENERAL", "name": "general"},
            {"id": CHANNEL_ID, "name": "support"},
        ]
        # Two pages, as Slack paginates.
        if p.get("cursor") == "page2":
            return {"ok": True, "channels": channels[1:], "response_metadata": {"next_cursor": ""}}
        return {"ok": True, "channels": channels[:1], "response_metadata": {"next_cursor": "page2"}}

    def _apps_connections_open(self, _: dict[str, Any]) -> dict[str, Any]:
        return {"ok": True, "url": self.socket_url}

    # --- serving ---------------------------------------------------------------

    def serve(self) -> Iterator[FakeSlack]:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def _token(self) -> str | None:
                auth = self.headers.get("Authorization", "")
                return auth[7:] if auth.startswith("Bearer ") else None

            def _params(self) -> dict[str, Any]:
                parts = urlsplit(self.path)
                params: dict[str, Any] = dict(parse_qsl(parts.query))
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                if raw:
                    if self.headers.get("Content-Type", "").startswith("application/json"):
                        params.update(json.loads(raw))
                    else:
                        params.update(parse_qsl(raw.decode()))
                for key in ("blocks", "metadata"):
                    if isinstance(params.get(key), str):
                        params[key] = json.loads(params[key])
                return params

            def _api(self) -> None:
                path = urlsplit(self.path).path
                method = path.removeprefix("/api/")
                params = self._params()
                status, body = fake.answer(method, params, self._token())
                with fake._lock:
                    drop = fake._drops.get(method, 0)
                    if drop:
                        fake._drops[method] = drop - 1
                if drop:
                    self.close_connection = True
                    return
                retry_after = body.pop("_retry_after", None)
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json; charset=utf-8")
                self.send_header("Content-Length", str(len(data)))
                if retry_after is not None:
                    self.send_header("Retry-After", str(retry_after))
                self.end_headers()
                self.wfile.write(data)

            def do_POST(self) -> None:
                self._api()

            def do_GET(self) -> None:
                path = urlsplit(self.path).path
                if path.startswith("/api/"):
                    self._api()
                    return
                parts = path.split("/")
                with fake._lock:
                    fake.calls.append(Call("file.download", {"path": path}, self._token(), 0.0))
                if len(parts) >= 3 and parts[1] == "files" and parts[2] in fake.files:
                    if self._token() != BOT_TOKEN:
                        self.send_response(403)
                        self.send_header("Content-Length", "0")
                        self.end_headers()
                        return
                    _, mimetype, data = fake.files[parts[2]]
                    self.send_response(200)
                    self.send_header("Content-Type", mimetype)
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                    return
                self.send_response(404)
                self.send_header("Content-Length", "0")
                self.end_headers()

        server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        server.daemon_threads = True
        self.port = server.server_address[1]
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        try:
            yield self
        finally:
            server.shutdown()
            server.server_close()
            thread.join(5)
