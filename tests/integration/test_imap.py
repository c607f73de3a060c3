"""The IMAP poller against a real Dovecot, started by these tests.

Each test worker (pytest-xdist) starts its own Dovecot from a minimal config in
its own temporary directory, on its own free port, plain IMAP with PLAIN/LOGIN
auth and one passwd-file user. Tests deliver mail by IMAP APPEND, each into a
mailbox of its own, and read the outcome from PostgreSQL (``db`` fixture) and
from the server. Without Dovecot the module is skipped, except with ``CI=true``
where that is a failure (``.ci/run`` installs ``dovecot-imapd``).
"""

from __future__ import annotations

import asyncio
import base64
import imaplib
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

import pytest
from sqlalchemy import select, text

from adapters.email.imap_poller import (
    PROCESSED_KEYWORD,
    Backoff,
    ImapPoller,
    check_connection,
    parse_imap_url,
    poll_once,
    run,
)
from gateway.config import Settings
from gateway.db import Database
from gateway.errors import ConfigurationError, ServiceUnavailable
from gateway.events import OutboxTask
from gateway.inbound.models import ImapCheckpoint, InboundMail
from gateway.inbound.store import accept_raw
from tests.ports import free_port

IN_CI = os.environ.get("CI", "").lower() == "true"
USER = "support"
PASSWORD = "s3cret p@ss:/word"  # needs percent-encoding in the URL
START_TIMEOUT = 15


@dataclass
class Dovecot:
    host: str
    port: int
    log: Path

    def url(self, mailbox: str, **options: Any) -> str:
        query = f"?{urlencode(options)}" if options else ""
        return (
            f"imap://{USER}:{quote(PASSWORD, safe='')}@{self.host}:{self.port}/"
            f"{quote(mailbox)}{query}"
        )

    @contextmanager
    def client(self) -> Iterator[imaplib.IMAP4]:
        conn = imaplib.IMAP4(self.host, self.port, timeout=10)
        try:
            conn.login(USER, PASSWORD)
            yield conn
        finally:
            conn.logout()


def _dovecot_binary() -> str | None:
    found = shutil.which("dovecot") or "/usr/sbin/dovecot"
    return found if os.access(found, os.X_OK) else None


def _accounts() -> tuple[str, str, str, int, int]:
    """(internal user, its group, login user, mail uid, mail gid) for this run."""
    if os.geteuid() != 0:
        me = pwd.getpwuid(os.geteuid())
        group = _group_name(me.pw_gid)
        return me.pw_name, group, me.pw_name, me.pw_uid, me.pw_gid
    try:
        internal, login = pwd.getpwnam("dovecot"), pwd.getpwnam("dovenull")
        mail = pwd.getpwnam("nobody")  # mail processes may not run as root
    except KeyError as exc:
        pytest.fail(f"Dovecot's system users are missing ({exc}); reinstall dovecot-core")
    return internal.pw_name, _group_name(internal.pw_gid), login.pw_name, mail.pw_uid, mail.pw_gid


def _group_name(gid: int) -> str:
    import grp

    return grp.getgrgid(gid).gr_name


CONFIG = """\
protocols = imap
listen = 127.0.0.1
base_dir = {root}/run
state_dir = {root}/state
log_path = {root}/dovecot.log
ssl = no
disable_plaintext_auth = no
auth_mechanisms = plain login
default_internal_user = {internal}
default_internal_group = {group}
default_login_user = {login}
first_valid_uid = 1
first_valid_gid = 1
mail_location = maildir:~/Maildir
# IDLE notices mail appended by other sessions within a second
mailbox_idle_check_interval = 1 secs
# Wrong-password tests must not slow down the logins that follow them.
auth_failure_delay = 0
passdb {{
  driver = passwd-file
  args = scheme=PLAIN username_format=%u {root}/users
}}
userdb {{
  driver = passwd-file
  args = username_format=%u {root}/users
}}
service imap-login {{
  chroot =
  inet_listener imap {{
    address = 127.0.0.1
    port = {port}
  }}
  inet_listener imaps {{
    port = 0
  }}
}}
service anvil {{
  chroot =
  # no auth penalty (growing delays for an address after failed logins)
  unix_listener anvil-auth-penalty {{
    mode = 0
  }}
}}
"""


@pytest.fixture(scope="session")
def dovecot() -> Iterator[Dovecot]:
    binary = _dovecot_binary()
    if binary is None:
        reason = "Dovecot is not installed (apt-get install dovecot-imapd)"
        if IN_CI:
            pytest.fail(f"{reason}; it is required in CI")
        pytest.skip(reason)
    internal, group, login, mail_uid, mail_gid = _accounts()
    # Under /tmp, not pytest's 0700 tmp dirs: the mail processes run as another user.
    root = Path(tempfile.mkdtemp(prefix="sg-dovecot-"))
    root.chmod(0o755)
    home = root / "home"
    home.mkdir()
    os.chown(home, mail_uid, mail_gid)
    # base64: the password holds ":", the passwd-file field separator.
    secret = base64.b64encode(PASSWORD.encode()).decode()
    (root / "users").write_text(f"{USER}:{{PLAIN.b64}}{secret}:{mail_uid}:{mail_gid}::{home}::\n")
    port = free_port()
    conf = root / "dovecot.conf"
    conf.write_text(
        CONFIG.format(root=root, port=port, internal=internal, group=group, login=login)
    )
    output = (root / "stdout.log").open("wb")
    process = subprocess.Popen(
        [binary, "-F", "-c", str(conf)], stdout=output, stderr=subprocess.STDOUT
    )
    server = Dovecot("127.0.0.1", port, root / "dovecot.log")
    try:
        _wait_for_port(server, process, root)
        yield server
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)
        output.close()
        shutil.rmtree(root, ignore_errors=True)


def _wait_for_port(server: Dovecot, process: subprocess.Popen[bytes], root: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            break
        try:
            with socket.create_connection((server.host, server.port), timeout=1) as sock:
                if sock.recv(100).startswith(b"* OK"):
                    return
        except OSError:
            time.sleep(0.1)
    logs = "".join(
        path.read_text(errors="replace")[-2000:]
        for path in (root / "stdout.log", root / "dovecot.log")
        if path.exists()
    )
    pytest.fail(f"Dovecot did not start on port {server.port}:\n{logs}")


# -- per-test helpers ---------------------------------------------------------


@pytest.fixture
def imap_db(db: Database) -> Database:
    # The shared reset leaves the inbound tables alone; this module owns them per test.
    with db.engine.begin() as conn:
        conn.execute(text("TRUNCATE inbound_mail, imap_checkpoints"))
    return db


@pytest.fixture
def mailbox(dovecot: Dovecot) -> str:
    name = f"Support-{uuid.uuid4().hex[:10]}"
    with dovecot.client() as conn:
        assert conn.create(name)[0] == "OK"
    return name


def message(n: int, *, sender: str = "alice@example.org") -> bytes:
    """A CRLF message with non-ASCII bytes: what we store must be byte-identical."""
    return (
        f"Return-Path: <{sender}>\r\n"
        f"Delivered-To: support@example.com\r\n"
        f"From: Alice =?utf-8?q?M=C3=BCller?= <{sender}>\r\n"
        f"To: support@example.com\r\n"
        f"Subject: Printer {n} is on fire\r\n"
        f"Message-ID: <{uuid.uuid4().hex}@example.org>\r\n"
        f"Date: Wed, 26 Nov 2025 10:00:{n % 60:02d} +0000\r\n"
        f"MIME-Version: 1.0\r\n"
        f"Content-Type: text/plain; charset=utf-8\r\n"
        f"Content-Transfer-Encoding: 8bit\r\n"
        f"\r\n"
        f"Grüße, message {n}. It smokes.\r\n"
    ).encode()


def append(dovecot: Dovecot, mailbox: str, *raws: bytes) -> None:
    with dovecot.client() as conn:
        for raw in raws:
            status, _ = conn.append(mailbox, None, None, raw)
            assert status == "OK"


def server_state(dovecot: Dovecot, mailbox: str) -> dict[int, set[str]]:
    """UID -> flags of every message in the mailbox."""
    with dovecot.client() as conn:
        assert conn.select(mailbox, readonly=True)[0] == "OK"
        _, data = conn.uid("FETCH", "1:*", "(UID FLAGS)")
    state: dict[int, set[str]] = {}
    for item in data:
        if isinstance(item, bytes) and b"FLAGS" in item:
            uid = re.search(rb"UID (\d+)", item)
            flags = re.search(rb"FLAGS \(([^)]*)\)", item)
            assert uid is not None and flags is not None, item
            state[int(uid.group(1))] = set(flags.group(1).decode().split())
    return state


def uidvalidity(dovecot: Dovecot, mailbox: str) -> int:
    with dovecot.client() as conn:
        _, data = conn.status(mailbox, "(UIDVALIDITY)")
    found = re.search(rb"UIDVALIDITY (\d+)", data[0])
    assert found is not None
    return int(found.group(1))


def stored(db: Database) -> list[InboundMail]:
    """Stored IMAP mail in (UIDVALIDITY, UID) order."""
    with db.transaction() as session:
        rows = list(session.scalars(select(InboundMail)))
    return sorted(rows, key=lambda row: [int(n) for n in str(row.source_ref).split(":")[-2:]])


def checkpoint(db: Database, key: str) -> ImapCheckpoint | None:
    with db.transaction() as session:
        return session.get(ImapCheckpoint, key)


def uid_of(mail: InboundMail) -> int:
    assert mail.source_ref is not None
    return int(mail.source_ref.rsplit(":", 1)[1])


def poller(dovecot: Dovecot, mailbox: str, db: Database, **options: Any) -> ImapPoller:
    return ImapPoller(parse_imap_url(dovecot.url(mailbox, **options)), db, timeout=10)


def wait_until(condition: Callable[[], Any], timeout: float = 10.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = condition()
        if result:
            return result
        time.sleep(0.05)
    raise AssertionError(f"condition not met within {timeout} s")


@contextmanager
def running(settings: Settings) -> Iterator[threading.Thread]:
    """``run(settings, stop_event)`` in a thread, stopped (and joined) on exit."""
    stop = threading.Event()
    errors: list[BaseException] = []

    def target() -> None:
        try:
            run(settings, stop)
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=target, name="imap-poller-under-test")
    thread.start()
    try:
        yield thread
    finally:
        stop.set()
        thread.join(15)
    assert not thread.is_alive(), "the poller did not stop within 15 s of its stop event"
    assert not errors, errors


# -- tests --------------------------------------------------------------------


def test_new_mail_is_stored_exactly_and_flagged(
    dovecot: Dovecot, mailbox: str, imap_db: Database, settings: Settings
) -> None:
    raws = [message(n) for n in range(3)]
    append(dovecot, mailbox, *raws)
    settings = settings.model_copy(update={"imap_url": dovecot.url(mailbox)})

    assert asyncio.run(poll_once(settings, imap_db)) == 3

    rows = stored(imap_db)
    key = parse_imap_url(settings.imap_url).key
    validity = uidvalidity(dovecot, mailbox)
    assert [row.raw for row in rows] == raws
    assert [row.source_ref for row in rows] == [f"imap:{key}:{validity}:{uid}" for uid in (1, 2, 3)]
    for row in rows:
        assert row.source == "imap"
        assert row.state == "received"
        assert row.size == len(row.raw)
        assert row.envelope_from == "alice@example.org"
        assert row.recipients == ["support@example.com"]
    with imap_db.transaction() as session:
        tasks = session.scalars(select(OutboxTask).where(OutboxTask.kind == "inbound.ingest"))
        assert {task.payload["inbound_id"] for task in tasks} == {str(row.id) for row in rows}
    # Flagged with our keyword; BODY.PEEK left \Seen alone for the humans.
    assert server_state(dovecot, mailbox) == {uid: {PROCESSED_KEYWORD} for uid in (1, 2, 3)}
    saved = checkpoint(imap_db, key)
    assert saved is not None
    assert (saved.uidvalidity, saved.last_uid) == (validity, 3)


def test_running_again_imports_nothing(dovecot: Dovecot, mailbox: str, imap_db: Database) -> None:
    append(dovecot, mailbox, message(1), message(2))
    first = poller(dovecot, mailbox, imap_db)
    assert asyncio.run(first.poll_once()) == 2
    assert asyncio.run(first.poll_once()) == 0
    assert asyncio.run(poller(dovecot, mailbox, imap_db).poll_once()) == 0
    assert len(stored(imap_db)) == 2


def test_restart_resumes_at_the_checkpoint(
    dovecot: Dovecot, mailbox: str, imap_db: Database
) -> None:
    append(dovecot, mailbox, message(1), message(2))
    assert asyncio.run(poller(dovecot, mailbox, imap_db).poll_once()) == 2
    # Take our flag away: only the checkpoint now stands between us and a re-import.
    with dovecot.client() as conn:
        conn.select(mailbox)
        conn.uid("STORE", "1:*", "-FLAGS.SILENT", f"({PROCESSED_KEYWORD})")
    append(dovecot, mailbox, message(3))

    restarted = poller(dovecot, mailbox, imap_db)
    assert asyncio.run(restarted.poll_once()) == 1

    rows = stored(imap_db)
    assert [uid_of(row) for row in rows] == [1, 2, 3]
    assert server_state(dovecot, mailbox)[3] == {PROCESSED_KEYWORD}
    saved = checkpoint(imap_db, restarted.config.key)
    assert saved is not None and saved.last_uid == 3


def test_crash_between_store_and_flag_does_not_duplicate(
    dovecot: Dovecot, mailbox: str, imap_db: Database
) -> None:
    raws = [message(1), message(2)]
    append(dovecot, mailbox, *raws)
    target = poller(dovecot, mailbox, imap_db)
    # As if a previous run stored UID 1 and died before flagging it.
    ref = f"imap:{target.config.key}:{uidvalidity(dovecot, mailbox)}:1"
    with imap_db.transaction() as session:
        accept_raw(session, raws[0], source="imap", source_ref=ref)

    assert asyncio.run(target.poll_once()) == 1

    assert [row.raw for row in stored(imap_db)] == raws
    assert server_state(dovecot, mailbox) == {1: {PROCESSED_KEYWORD}, 2: {PROCESSED_KEYWORD}}


def test_move_to_moves_processed_mail(dovecot: Dovecot, mailbox: str, imap_db: Database) -> None:
    done = f"{mailbox}-done"  # created by the poller
    raws = [message(1), message(2)]
    append(dovecot, mailbox, *raws)
    target = poller(dovecot, mailbox, imap_db, move_to=done)

    assert asyncio.run(target.poll_once()) == 2
    assert asyncio.run(target.poll_once()) == 0

    assert [row.raw for row in stored(imap_db)] == raws
    assert server_state(dovecot, mailbox) == {}
    moved = server_state(dovecot, done)
    assert len(moved) == 2
    assert all(flags - {"\\Recent"} == {PROCESSED_KEYWORD} for flags in moved.values()), moved


def test_uidvalidity_change_imports_nothing_twice(
    dovecot: Dovecot, mailbox: str, imap_db: Database
) -> None:
    append(dovecot, mailbox, message(1), message(2))
    target = poller(dovecot, mailbox, imap_db)
    assert asyncio.run(target.poll_once()) == 2
    before = uidvalidity(dovecot, mailbox)

    # Recreate the mailbox (new UIDVALIDITY) with the old, processed mail copied
    # back under new UIDs, plus one new message.
    with dovecot.client() as conn:
        assert conn.rename(mailbox, f"{mailbox}-old")[0] == "OK"
        assert conn.create(mailbox)[0] == "OK"
        conn.select(f"{mailbox}-old")
        assert conn.uid("COPY", "1:*", mailbox)[0] == "OK"
    fresh = message(3)
    append(dovecot, mailbox, fresh)
    after = uidvalidity(dovecot, mailbox)
    assert after != before

    assert asyncio.run(target.poll_once()) == 1
    assert asyncio.run(target.poll_once()) == 0

    rows = stored(imap_db)
    assert len(rows) == 3
    assert fresh in [row.raw for row in rows]
    assert len({row.sha256 for row in rows}) == 3
    saved = checkpoint(imap_db, target.config.key)
    assert saved is not None
    assert (saved.uidvalidity, saved.last_uid) == (after, 3)
    assert all(PROCESSED_KEYWORD in flags for flags in server_state(dovecot, mailbox).values())


def test_cancellation_finishes_the_message_in_hand(
    dovecot: Dovecot, mailbox: str, imap_db: Database
) -> None:
    append(dovecot, mailbox, *(message(n) for n in range(12)))
    target = poller(dovecot, mailbox, imap_db)

    async def cancel_midway() -> None:
        task = asyncio.ensure_future(target.poll_once())
        while target.stored < 3 and not task.done():
            await asyncio.sleep(0.001)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(cancel_midway())

    # Whatever got stored is flagged and checkpointed: nothing half-done.
    uids = [uid_of(row) for row in stored(imap_db)]
    assert 3 <= len(uids) < 12
    flagged = {uid for uid, flags in server_state(dovecot, mailbox).items() if flags}
    assert flagged == set(uids)
    saved = checkpoint(imap_db, target.config.key)
    assert saved is not None and saved.last_uid == max(uids)

    assert asyncio.run(target.poll_once()) == 12 - len(uids)
    assert sorted(uid_of(row) for row in stored(imap_db)) == list(range(1, 13))


def test_idle_picks_up_new_mail_within_seconds(
    dovecot: Dovecot, mailbox: str, imap_db: Database, settings: Settings
) -> None:
    # An hour between polls: only IDLE can be this quick.
    url = dovecot.url(mailbox, poll_interval=3600)
    settings = settings.model_copy(update={"imap_url": url})
    key = parse_imap_url(url).key
    append(dovecot, mailbox, message(1))
    with running(settings):
        wait_until(lambda: len(stored(imap_db)) == 1)
        wait_until(lambda: checkpoint(imap_db, key) is not None)
        time.sleep(0.3)  # let it enter IDLE
        fresh = message(2)
        started = time.monotonic()
        append(dovecot, mailbox, fresh)
        wait_until(lambda: len(stored(imap_db)) == 2, timeout=5)
        elapsed = time.monotonic() - started
    assert stored(imap_db)[1].raw == fresh
    assert elapsed < 5
    assert server_state(dovecot, mailbox) == {1: {PROCESSED_KEYWORD}, 2: {PROCESSED_KEYWORD}}


def test_mail_arriving_while_the_poller_works_is_not_missed(
    dovecot: Dovecot, mailbox: str, imap_db: Database, settings: Settings
) -> None:
    """The server announces new mail once; an announcement that lands during our
    SEARCH/FETCH/STORE must still lead to a fetch, not wait for the next IDLE wake-up."""
    url = dovecot.url(mailbox, poll_interval=3600)
    settings = settings.model_copy(update={"imap_url": url})
    total = 40
    with running(settings):
        for n in range(total):
            append(dovecot, mailbox, message(n))
            time.sleep(0.005 * (n % 7))
        wait_until(lambda: len(stored(imap_db)) == total, timeout=8)


def test_idle_is_renewed(dovecot: Dovecot, mailbox: str, imap_db: Database) -> None:
    target = ImapPoller(
        parse_imap_url(dovecot.url(mailbox, poll_interval=3600)), imap_db, idle_renew=0.2
    )

    async def scenario() -> None:
        stop = asyncio.Event()
        task = asyncio.ensure_future(target.run(stop))
        await asyncio.sleep(1.0)  # several IDLE / DONE rounds
        await asyncio.to_thread(append, dovecot, mailbox, message(1))
        deadline = asyncio.get_running_loop().time() + 5
        while target.stored < 1 and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.05)
        stop.set()
        await asyncio.wait_for(task, 5)

    asyncio.run(scenario())
    assert target.stored == 1
    assert target.failures == 0


def test_sigterm_stops_run_cleanly(
    dovecot: Dovecot, mailbox: str, imap_db: Database, tmp_path: Path
) -> None:
    """``run`` in a process's main thread, as ``supportgate imap`` will call it."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SUPPORTGATE_")}
    env.update(
        SUPPORTGATE_IMAP_URL=dovecot.url(mailbox),
        SUPPORTGATE_DATABASE_URL=imap_db.url,
        SUPPORTGATE_DATA_DIR=str(tmp_path),
    )
    script = (
        "from gateway.config import load_settings\n"
        "from adapters.email.imap_poller import run\n"
        "run(load_settings())\n"
        "print('stopped')\n"
    )
    append(dovecot, mailbox, message(1))
    process = subprocess.Popen(
        [sys.executable, "-c", script],
        cwd=tmp_path,
        env={**env, "PYTHONPATH": str(Path(__file__).resolve().parents[2])},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_until(lambda: len(stored(imap_db)) == 1 or process.poll() is not None, timeout=20)
        assert process.poll() is None, process.communicate()
        process.send_signal(signal.SIGTERM)
        out, err = process.communicate(timeout=10)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert process.returncode == 0, err
    assert out.strip() == "stopped"
    assert "Traceback" not in err


def test_polls_when_idle_is_off(
    dovecot: Dovecot, mailbox: str, imap_db: Database, settings: Settings
) -> None:
    url = dovecot.url(mailbox, idle="false", poll_interval=0.2)
    settings = settings.model_copy(update={"imap_url": url})
    with running(settings):
        time.sleep(0.5)
        append(dovecot, mailbox, message(1))
        wait_until(lambda: len(stored(imap_db)) == 1, timeout=5)
        append(dovecot, mailbox, message(2))
        wait_until(lambda: len(stored(imap_db)) == 2, timeout=5)


def test_unreachable_server_is_retried_with_backoff(imap_db: Database) -> None:
    port = free_port()  # nothing listens there
    config = parse_imap_url(f"imap://u:p@127.0.0.1:{port}/INBOX")
    target = ImapPoller(config, imap_db, timeout=2, backoff=Backoff(0.01, 0.08))

    async def scenario() -> None:
        stop = asyncio.Event()
        task = asyncio.ensure_future(target.run(stop))
        while target.failures < 5:
            assert not task.done(), "run() gave up"
            await asyncio.sleep(0.01)
        stop.set()
        await asyncio.wait_for(task, 2)  # returns, does not raise

    asyncio.run(scenario())
    assert target.failures >= 5
    assert target.backoff.attempt >= 5
    assert stored(imap_db) == []


@pytest.mark.parametrize("behaviour", ["hang-up", "silent"])
def test_misbehaving_server_is_retried(imap_db: Database, behaviour: str) -> None:
    """A server that greets, then hangs up or never answers: each session fails
    (connection lost / command timeout), run() carries on and still stops on request."""

    async def scenario() -> ImapPoller:
        writers: list[asyncio.StreamWriter] = []

        async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            writers.append(writer)
            writer.write(b"* OK fake IMAP ready\r\n")
            await writer.drain()
            await reader.readline()
            if behaviour == "hang-up":
                writer.close()

        server = await asyncio.start_server(serve, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        config = parse_imap_url(f"imap://u:p@127.0.0.1:{port}/INBOX")
        target = ImapPoller(config, imap_db, timeout=0.3, backoff=Backoff(0.01, 0.05))
        stop = asyncio.Event()
        task = asyncio.ensure_future(target.run(stop))
        try:
            while target.failures < 3:
                assert not task.done(), "run() gave up"
                await asyncio.sleep(0.01)
        finally:
            stop.set()
            await asyncio.wait_for(task, 5)
            server.close()
            for writer in writers:
                writer.close()
            await server.wait_closed()
        return target

    assert asyncio.run(scenario()).failures >= 3


def test_wrong_password_is_retried_not_fatal(dovecot: Dovecot, imap_db: Database) -> None:
    config = parse_imap_url(f"imap://{USER}:wrong@{dovecot.host}:{dovecot.port}/INBOX")
    target = ImapPoller(config, imap_db, timeout=5, backoff=Backoff(0.01, 0.05))

    async def scenario() -> None:
        stop = asyncio.Event()
        task = asyncio.ensure_future(target.run(stop))
        while target.failures < 2:
            assert not task.done()
            await asyncio.sleep(0.01)
        stop.set()
        await asyncio.wait_for(task, 5)

    asyncio.run(scenario())


def test_check_connection_reports_one_line(
    dovecot: Dovecot, mailbox: str, settings: Settings
) -> None:
    good = settings.model_copy(update={"imap_url": dovecot.url(mailbox)})
    check_connection(good)

    wrong = settings.model_copy(
        update={"imap_url": f"imap://{USER}:nope@{dovecot.host}:{dovecot.port}/INBOX"}
    )
    with pytest.raises(ConfigurationError, match="SUPPORTGATE_IMAP_URL: LOGIN refused") as exc:
        check_connection(wrong)
    assert "nope" not in str(exc.value)

    missing = settings.model_copy(update={"imap_url": dovecot.url(f"{mailbox}-missing")})
    with pytest.raises(ConfigurationError, match="SELECT refused"):
        check_connection(missing)

    port = free_port()
    closed = settings.model_copy(update={"imap_url": f"imap://u:hunter2@127.0.0.1:{port}/"})
    with pytest.raises(ServiceUnavailable, match="unreachable") as exc:
        check_connection(closed, timeout=2)
    assert "hunter2" not in str(exc.value)
