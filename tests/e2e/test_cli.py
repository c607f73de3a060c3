"""The real ``supportgate`` command, run as a subprocess.

Every test works in its own temporary directory with a clean environment (no
``SUPPORTGATE_*`` from the caller, ``SUPPORTGATE_DATA_DIR`` in the tmp dir, the
tmp dir as working directory so no stray ``.env`` is read) and its own free
port, so the module runs under pytest-xdist. A started server is always
stopped in a ``finally``: SIGTERM first, then SIGKILL of its process group.
"""

from __future__ import annotations

import http.client
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import closing, contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest
import requests

from tests.ports import free_port

COMMAND_TIMEOUT = 60  # seconds for a one-shot command (migrations included)
START_TIMEOUT = 60  # seconds for `serve` to answer /healthz
STOP_TIMEOUT = 10  # seconds SIGTERM may take, per the contract
PG_SERVER = os.environ.get("SUPPORTGATE_TEST_PG", "postgresql+psycopg://postgres@127.0.0.1:5432")
IN_CI = os.environ.get("CI", "").lower() == "true"


def supportgate_command() -> list[str]:
    """The installed console script next to this interpreter, else ``python -m web.cli``."""
    script = Path(sys.executable).with_name("supportgate")
    if script.exists():
        return [str(script)]
    return [sys.executable, "-m", "web.cli"]


def clean_env(tmp_path: Path, **settings: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SUPPORTGATE_")}
    env["SUPPORTGATE_DATA_DIR"] = str(tmp_path / "data")
    env["PYTHONUNBUFFERED"] = "1"
    env.update({f"SUPPORTGATE_{k.upper()}": v for k, v in settings.items()})
    return env


def run(tmp_path: Path, *args: str, **settings: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*supportgate_command(), *args],
        cwd=tmp_path,
        env=clean_env(tmp_path, **settings),
        capture_output=True,
        text=True,
        timeout=COMMAND_TIMEOUT,
        check=False,
    )


def add_user(tmp_path: Path, email: str, role: str, **settings: str) -> str:
    done = run(tmp_path, "user", "add", email, "--role", role, **settings)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip().splitlines()[-1]


def assert_one_line_failure(done: subprocess.CompletedProcess[str], *names: str) -> str:
    """Exit status 2 and exactly one actionable line on stderr naming ``names``."""
    assert done.returncode == 2, (done.returncode, done.stdout, done.stderr)
    lines = done.stderr.splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("supportgate: "), lines[0]
    for name in names:
        assert name in lines[0], lines[0]
    assert "Traceback" not in done.stdout
    return lines[0]


# --- a running server -------------------------------------------------------


@dataclass
class Server:
    process: subprocess.Popen[bytes]
    base: str
    log: Path

    def output(self) -> str:
        return self.log.read_text(errors="replace")[-4000:]

    def stop(self, sig: int = signal.SIGTERM) -> int:
        """Send ``sig`` and return the exit status; fails when it takes over STOP_TIMEOUT."""
        self.process.send_signal(sig)
        started = time.monotonic()
        code = self.process.wait(timeout=STOP_TIMEOUT)
        assert time.monotonic() - started < STOP_TIMEOUT
        return code


def _kill_group(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is not None:
        return
    try:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=STOP_TIMEOUT)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        pass
    if process.poll() is None:
        with suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=STOP_TIMEOUT)


@contextmanager
def serving(tmp_path: Path, command: str = "serve", **settings: str) -> Iterator[Server]:
    """Start ``supportgate <command>`` on a free port and wait until /healthz answers."""
    port = free_port()
    settings.setdefault("smtp_port", str(free_port()))
    settings.setdefault("events_port", str(free_port()))
    env = clean_env(tmp_path, api_port=str(port), **settings)
    log = tmp_path / f"{command}-{port}.log"
    with log.open("wb") as sink:
        process = subprocess.Popen(
            [*supportgate_command(), command],
            cwd=tmp_path,
            env=env,
            stdout=sink,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: gunicorn's workers die with it
        )
    server = Server(process, f"http://127.0.0.1:{port}", log)
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            if process.poll() is not None:
                pytest.fail(
                    f"`supportgate {command}` exited {process.returncode}:\n{server.output()}"
                )
            try:
                if requests.get(f"{server.base}/healthz", timeout=2).status_code == 200:
                    break
            # Not up yet: refused, or the socket is bound and no worker has answered in
            # time (a loaded machine while the workers boot); START_TIMEOUT bounds both.
            except (requests.ConnectionError, requests.Timeout):
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"`supportgate {command}` did not come up:\n{server.output()}")
            time.sleep(0.2)
        yield server
    finally:
        _kill_group(process)


def walk_through(base: str, token: str) -> None:
    """Create, list, patch, converse and read the history over real HTTP."""
    api = f"{base}/api/v1"
    with requests.Session() as http:
        http.headers["Authorization"] = f"Bearer {token}"

        def call(method: str, path: str, **kw: Any) -> requests.Response:
            return http.request(method, f"{api}{path}", timeout=10, **kw)

        assert call("GET", "/me").json()["role"] == "admin"
        created = call(
            "POST",
            "/tickets",
            json={
                "title": "Printer on fire",
                "description": "Smoke from tray 2.",
                "priority": "high",
                "tags": ["hardware"],
                "metadata": {"order": "A-1001"},
                "customer_email": "alice@example.org",
            },
        )
        assert created.status_code == 201, created.text
        ticket = created.json()
        assert created.headers["ETag"] == '"1"'
        assert ticket["customer"]["email"] == "alice@example.org"
        assert ticket["status"] == "new"

        listed = call(
            "GET",
            "/tickets",
            params={"status": "new,open", "tag": "hardware", "metadata.order": "A-1001"},
        )
        assert listed.status_code == 200, listed.text
        assert [t["id"] for t in listed.json()["items"]] == [ticket["id"]]

        stale = call(
            "PATCH",
            f"/tickets/{ticket['number']}",
            json={"status": "open"},
            headers={"If-Match": '"99"'},
        )
        assert stale.status_code == 412
        assert stale.headers["Content-Type"] == "application/problem+json"
        assert stale.json()["type"].endswith("/precondition-failed")

        patched = call(
            "PATCH",
            f"/tickets/{ticket['id']}",
            json={"status": "open", "priority": "urgent"},
            headers={"If-Match": created.headers["ETag"]},
        )
        assert patched.status_code == 200, patched.text
        assert patched.headers["ETag"] == '"2"'
        assert (patched.json()["status"], patched.json()["priority"]) == ("open", "urgent")

        reply = call("POST", f"/tickets/{ticket['id']}/messages", json={"body": "On our way."})
        note = call(
            "POST", f"/tickets/{ticket['id']}/messages", json={"body": "Again?", "internal": True}
        )
        assert (reply.status_code, note.status_code) == (201, 201)
        assert (reply.json()["kind"], note.json()["kind"]) == ("reply", "note")
        messages = call("GET", f"/tickets/{ticket['id']}/messages").json()["items"]
        assert [m["kind"] for m in messages] == ["reply", "note"]

        history = call("GET", f"/tickets/{ticket['id']}/history").json()["items"]
        changed = {(h["field"], h["old_value"], h["new_value"]) for h in history}
        assert {("status", "new", "open"), ("priority", "high", "urgent")} <= changed
        assert history[0]["action"] == "created"


# --- one-shot commands ------------------------------------------------------


@pytest.mark.parametrize("args", [["--help"], ["user", "add", "--help"], ["db", "--help"]])
def test_help_exits_zero(tmp_path: Path, args: list[str]) -> None:
    done = run(tmp_path, *args)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("Usage: ")


def test_user_add_prints_token_last_and_reissues(tmp_path: Path) -> None:
    first = run(tmp_path, "user", "add", "Ada@Example.com", "--role", "admin", "--name", "Ada")
    second = run(tmp_path, "user", "add", "ada@example.com", "--role", "admin")
    assert (first.returncode, second.returncode) == (0, 0), (first.stderr, second.stderr)
    first_lines, second_lines = first.stdout.splitlines(), second.stdout.splitlines()
    assert first_lines[0] == second_lines[0]  # same user, same id
    assert "ada@example.com" in first_lines[0]
    tokens = [first_lines[-1], second_lines[-1]]
    assert tokens[0] != tokens[1]
    assert all(t.startswith("sg_") and len(t) > 30 and " " not in t for t in tokens)


def test_user_add_rejects_a_bad_email_in_one_line(tmp_path: Path) -> None:
    done = run(tmp_path, "user", "add", "not-an-address", "--role", "agent")
    assert_one_line_failure(done, "email")


@pytest.mark.parametrize(
    ("args", "settings", "variable"),
    [
        (["serve"], {"api_port": "notaport"}, "SUPPORTGATE_API_PORT"),
        (["serve"], {"api_port": "70000"}, "SUPPORTGATE_API_PORT"),
        (["serve"], {"database_url": "mysql://x"}, "SUPPORTGATE_DATABASE_URL"),
        (["db", "upgrade"], {"database_url": "mysql://x"}, "SUPPORTGATE_DATABASE_URL"),
        (
            ["db", "upgrade"],
            {"database_url": "postgresql://postgres@127.0.0.1:notaport/x"},
            "SUPPORTGATE_DATABASE_URL",
        ),
        (["api"], {"api_workers": "0"}, "SUPPORTGATE_API_WORKERS"),
        (["serve"], {"log_level": "loud"}, "SUPPORTGATE_LOG_LEVEL"),
        (["serve"], {"redis_url": "http://localhost"}, "SUPPORTGATE_REDIS_URL"),
        (
            ["user", "add", "a@example.com", "--role", "admin"],
            {"support_address": "nobody"},
            "SUPPORTGATE_SUPPORT_ADDRESS",
        ),
    ],
)
def test_invalid_configuration_is_one_line_and_exit_2(
    tmp_path: Path, args: list[str], settings: dict[str, str], variable: str
) -> None:
    assert_one_line_failure(run(tmp_path, *args, **settings), variable)


@pytest.mark.parametrize(
    "args",
    [["serve"], ["api"], ["db", "upgrade"], ["user", "add", "a@example.com", "--role", "admin"]],
)
def test_unreachable_database_is_one_line_and_exit_2(tmp_path: Path, args: list[str]) -> None:
    done = run(tmp_path, *args, database_url="postgresql+psycopg://postgres@127.0.0.1:1/x")
    assert_one_line_failure(done, "SUPPORTGATE_DATABASE_URL", "unreachable")


def test_unreachable_redis_is_one_line_and_exit_2(tmp_path: Path) -> None:
    done = run(tmp_path, "serve", redis_url="redis://127.0.0.1:1/0")
    assert_one_line_failure(done, "SUPPORTGATE_REDIS_URL", "unreachable")


def test_port_in_use_is_one_line_and_exit_2(tmp_path: Path) -> None:
    with closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        done = run(tmp_path, "serve", api_port=str(port))
    assert_one_line_failure(done, "SUPPORTGATE_API_PORT", str(port))


def test_db_upgrade_twice_is_idempotent(tmp_path: Path) -> None:
    for _ in range(2):
        done = run(tmp_path, "db", "upgrade")
        assert done.returncode == 0, done.stderr
        assert "up to date" in done.stderr
    database = tmp_path / "data" / "supportgate.db"
    with closing(sqlite3.connect(database)) as conn:
        versions = conn.execute("SELECT version_num FROM alembic_version").fetchall()
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert len(versions) == 1
    assert {"tickets", "messages", "users", "events", "outbox_tasks"} <= tables


# --- the server -------------------------------------------------------------


@pytest.mark.slow
def test_serve_on_the_embedded_default(tmp_path: Path) -> None:
    add_user(tmp_path, "admin@example.com", "admin")
    token = add_user(tmp_path, "admin@example.com", "admin")  # the re-issued token works
    with serving(tmp_path) as server:
        ready = requests.get(f"{server.base}/readyz", timeout=10)
        assert ready.status_code == 200, ready.text
        assert ready.json()["checks"] == {"database": "ok", "storage": "ok"}
        unauthorised = requests.get(f"{server.base}/api/v1/tickets", timeout=10)
        assert unauthorised.status_code == 401
        assert unauthorised.headers["Content-Type"] == "application/problem+json"
        assert unauthorised.headers["X-Request-Id"]
        walk_through(server.base, token)
        # The background part runs at a lower CPU priority than the API and SMTP parts.
        niceness = {part: _nice(pid) for part, pid in _children(server.process.pid).items()}
        assert niceness["tasks"] == os.getpriority(os.PRIO_PROCESS, 0) + 10, niceness
        assert niceness["api"] == niceness["smtp"] == os.getpriority(os.PRIO_PROCESS, 0)
        assert server.stop(signal.SIGTERM) == 0, server.output()
    assert (tmp_path / "data" / "supportgate.db").exists()


def _children(parent: int) -> dict[str, int]:
    """``serve``'s parts by name (``python -m web.cli <part>``) and their pids."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        if ppid == parent and b"web.cli" in argv:
            found[argv[argv.index(b"web.cli") + 1].decode()] = int(entry.name)
    return found


def _nice(pid: int) -> int:
    return int((Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[16])


@pytest.mark.slow
def test_serve_stops_on_sigint(tmp_path: Path) -> None:
    with serving(tmp_path) as server:
        assert server.stop(signal.SIGINT) == 0, server.output()


@pytest.mark.slow
def test_api_serves_a_migrated_database(tmp_path: Path) -> None:
    token = add_user(tmp_path, "admin@example.com", "admin")  # migrates on the way
    with serving(tmp_path, "api") as server:
        me = requests.get(
            f"{server.base}/api/v1/me", headers={"Authorization": f"Bearer {token}"}, timeout=10
        )
        assert me.status_code == 200, me.text
        assert server.stop() == 0, server.output()


def _answers_on_one_connection(base: str, count: int) -> list[tuple[int, str | None]]:
    """(status, Connection header) of ``count`` GET /healthz sent on one connection, until
    the server closes it."""
    host, port = base.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    answers: list[tuple[int, str | None]] = []
    try:
        conn.connect()
        sock = conn.sock
        for _ in range(count):
            if conn.sock is not sock:  # http.client reconnects after a close: stop there
                break
            conn.request("GET", "/healthz")
            answer = conn.getresponse()
            answer.read()
            answers.append((answer.status, answer.getheader("Connection")))
            if answer.will_close:
                break
    finally:
        conn.close()
    return answers


@pytest.mark.slow
def test_api_closes_a_keep_alive_connection_after_the_configured_requests(
    tmp_path: Path,
) -> None:
    add_user(tmp_path, "admin@example.com", "admin")  # migrates on the way
    with serving(tmp_path, "api", api_keepalive_requests="3") as server:
        answers = _answers_on_one_connection(server.base, 10)
        assert [status for status, _ in answers] == [200, 200, 200]
        assert [h.lower() if h else h for _, h in answers] == ["keep-alive", "keep-alive", "close"]
    with serving(tmp_path, "api", api_keepalive_requests="0") as server:
        assert len(_answers_on_one_connection(server.base, 150)) == 150  # never closed


@pytest.fixture
def pg_database() -> Iterator[str]:
    """A fresh, empty PostgreSQL database, dropped afterwards."""
    name = f"sg_e2e_{uuid.uuid4().hex[:12]}"
    admin_dsn = PG_SERVER.replace("postgresql+psycopg://", "postgresql://") + "/postgres"
    try:
        with psycopg.connect(admin_dsn, autocommit=True, connect_timeout=5) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
    except psycopg.OperationalError as exc:
        if IN_CI:
            pytest.fail(f"PostgreSQL is required in CI and unreachable: {exc}")
        pytest.skip(f"PostgreSQL unreachable: {exc}")
    try:
        yield f"{PG_SERVER}/{name}"
    finally:
        with psycopg.connect(admin_dsn, autocommit=True, connect_timeout=5) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.mark.slow
def test_serve_on_postgresql(tmp_path: Path, pg_database: str) -> None:
    with serving(tmp_path, database_url=pg_database) as server:  # serve migrates first
        token = add_user(tmp_path, "admin@example.com", "admin", database_url=pg_database)
        assert requests.get(f"{server.base}/readyz", timeout=10).status_code == 200
        walk_through(server.base, token)
        assert server.stop() == 0, server.output()
    again = run(tmp_path, "db", "upgrade", database_url=pg_database)
    assert again.returncode == 0, again.stderr


@pytest.mark.slow
def test_serve_turns_mail_into_tickets_and_answers_through_the_relay(tmp_path: Path) -> None:
    """The whole product as a user runs it: SMTP in, task processing, API, mail out."""
    import smtplib
    from email.message import EmailMessage

    from aiosmtpd.controller import Controller

    received: list[bytes] = []

    class Sink:
        async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
            received.append(envelope.original_content)
            return "250 OK"

    relay_port, smtp_port = free_port(), free_port()
    relay = Controller(Sink(), hostname="127.0.0.1", port=relay_port)
    relay.start()
    settings = {
        "smtp_port": str(smtp_port),
        "support_address": "help@support.example.com",
        "outbound_smtp_url": f"smtp://127.0.0.1:{relay_port}",
    }
    try:
        token = add_user(tmp_path, "admin@example.com", "admin", **settings)
        with serving(tmp_path, **settings) as server:
            msg = EmailMessage()
            msg["From"] = "Carol <carol@example.org>"
            msg["To"] = "help@support.example.com"
            msg["Subject"] = "Cannot log in"
            msg["Message-ID"] = "<e2e-1@example.org>"
            msg.set_content("My password does not work.")
            deadline = time.monotonic() + 20
            while True:  # the SMTP part may still be starting
                try:
                    with smtplib.SMTP("127.0.0.1", smtp_port, timeout=10) as client:
                        client.send_message(msg)
                    break
                except OSError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.2)
            headers = {"Authorization": f"Bearer {token}"}
            deadline = time.monotonic() + 20
            items: list[dict[str, Any]] = []
            while not items and time.monotonic() < deadline:
                items = requests.get(
                    f"{server.base}/api/v1/tickets", headers=headers, timeout=10
                ).json()["items"]
                time.sleep(0.2)
            assert [t["title"] for t in items] == ["Cannot log in"], server.output()
            assert items[0]["channel"] == "email"
            assert items[0]["customer"]["email"] == "carol@example.org"
            r = requests.post(
                f"{server.base}/api/v1/tickets/{items[0]['id']}/messages",
                headers=headers,
                json={"body": "Reset it here."},
                timeout=10,
            )
            assert r.status_code == 201
            deadline = time.monotonic() + 20
            while len(received) < 2 and time.monotonic() < deadline:
                time.sleep(0.2)
            assert len(received) == 2, server.output()  # the acknowledgment and the reply
            assert b"Auto-Submitted: auto-replied" in received[0]
            assert b"Reset it here." in received[1]
            assert server.stop(signal.SIGTERM) == 0, server.output()
    finally:
        relay.stop()


@pytest.mark.parametrize(
    ("imap_url", "needle"),
    [
        ("ftp://u:secret@127.0.0.1/INBOX", "SUPPORTGATE_IMAP_URL"),
        ("imap://u:secret@127.0.0.1:1/INBOX", "unreachable"),
    ],
)
def test_imap_refuses_bad_configuration_in_one_line(
    tmp_path: Path, imap_url: str, needle: str
) -> None:
    done = run(tmp_path, "imap", imap_url=imap_url)
    line = assert_one_line_failure(done, needle)
    assert "secret" not in line


def test_worker_needs_redis(tmp_path: Path) -> None:
    done = run(tmp_path, "worker")
    assert_one_line_failure(done, "SUPPORTGATE_REDIS_URL")
