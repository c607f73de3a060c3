"""Files an agent shares in a thread: fetched from Slack into our storage.

The bot token is only ever sent to Slack's own hosts (``*.slack.com``) or
the host of ``SUPPORTGATE_SLACK_API_URL``; a redirect elsewhere is refused.
"""

from __future__ import annotations

import logging
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from adapters.slack.client import SlackApi
from gateway.attachments.services import Files, accept_file, clean_filename
from gateway.errors import PayloadTooLarge, UnsupportedMediaType

log = logging.getLogger("supportgate.slack")

MAX_FILES = 10
CHUNK = 1 << 16


@dataclass(frozen=True)
class Fetched:
    filename: str
    content_type: str
    sha256: str
    size: int


@dataclass(frozen=True)
class Refused:
    filename: str
    reason: str


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None  # a 3xx surfaces as an HTTPError and is followed (or not) by fetch()


class FileFetcher:
    def __init__(self, api: SlackApi, token: str, files: Files, api_url: str) -> None:
        self.api = api
        self.token = token
        self.files = files
        self.api_host = urlsplit(api_url).hostname or ""
        self.opener = urllib.request.build_opener(_NoRedirect)

    def allowed(self, url: str) -> bool:
        parts = urlsplit(url)
        host = parts.hostname or ""
        if host == self.api_host:
            return parts.scheme in ("http", "https")
        return parts.scheme == "https" and (host == "slack.com" or host.endswith(".slack.com"))

    def fetch_all(self, shared: list[dict[str, Any]]) -> list[Fetched | Refused]:
        out: list[Fetched | Refused] = []
        for index, item in enumerate(shared):
            name = clean_filename(str(item.get("name") or item.get("title") or "file"))
            if index >= MAX_FILES:
                out.append(Refused(name, f"at most {MAX_FILES} files per message"))
                continue
            out.append(self.fetch(item, name))
        return out

    def fetch(self, item: dict[str, Any], name: str) -> Fetched | Refused:
        """Download one shared file, check it like an upload, store it.

        Refusals by policy (size, type) come back as Refused; network and
        Slack errors raise, so the task is retried."""
        if item.get("mode") in ("tombstone", "hidden_by_limit") or item.get("file_access") == (
            "access_denied"
        ):
            return Refused(name, "Slack does not let us read this file")
        url = item.get("url_private_download") or item.get("url_private")
        if not url and item.get("id"):
            info = self.api.file_info(str(item["id"]))
            url = info.get("url_private_download") or info.get("url_private")
        if not url:
            return Refused(name, "Slack gave no download address for this file")
        with self.files.stage(inline=False) as staged:
            try:
                self._download(str(url), staged)
                content_type = accept_file(self.files.policies, staged, inline=False)
            except (PayloadTooLarge, UnsupportedMediaType) as exc:
                return Refused(name, exc.detail)
            except PermissionError as exc:
                log.warning("Slack file not fetched", extra={"file": name, "reason": str(exc)})
                return Refused(name, str(exc))
            sha, size = self.files.storage.commit(staged)
        return Fetched(name, content_type, sha, size)

    def _download(self, url: str, sink: Any, hops: int = 3) -> None:
        if not self.allowed(url):
            raise PermissionError(f"refusing to send the Slack token to {urlsplit(url).hostname}")
        request = urllib.request.Request(  # noqa: S310 (scheme and host checked by allowed())
            url, headers={"Authorization": f"Bearer {self.token}"}
        )
        try:
            with self.opener.open(request, timeout=30) as response:
                while chunk := response.read(CHUNK):
                    sink.write(chunk)
        except urllib.error.HTTPError as exc:
            location = (
                exc.headers.get("Location") if exc.code in (301, 302, 303, 307, 308) else None
            )
            if location and hops > 0:
                self._download(urllib.request.urljoin(url, location), sink, hops - 1)
                return
            raise
