"""Inbound mail benchmark: Supportgate's SMTP edge and ingest against two aiosmtpd baselines.

One run, on loopback, each load with ``--clients`` concurrent SMTP connections (default 16)
sending distinct messages (distinct senders, Message-IDs and bodies) through a lean
asyncio SMTP client of this file (one command at a time, no pipelining):

1. **bare sink**: an aiosmtpd server (built as the product builds its own) whose handler
   answers ``250`` at once;
2. **fsync sink**: the same, but the handler writes each message to its own file and
   fsyncs it (in a pool of 8 threads, as the product stores in 8) before the ``250``:
   the durable-accept limit of this machine;
3. **Supportgate**: ``supportgate smtp`` and ``supportgate worker --concurrency N`` on a
   fresh PostgreSQL database and a private Redis. End to end is timed from the first
   byte of the first message until every accepted message is a ticket (the ``tickets``
   table is polled every 20 ms).

It reports 250s per second of each, Supportgate's tickets per second end to end, p50 and
p99 time to 250 at full load and at half of Supportgate's measured maximum (rate-limited
clients), and 1 MiB messages' end-to-end MiB/s; then the issue's targets with PASS/FAIL.
Last, a ceiling that is not a target: the tickets per second end to end this machine would
allow if every stage but two were free, the two being durable accept (the fsync sink's CPU
a message, server and client) and the workers' parser (timed in this process on 1,000
messages made as the runs make them), on every core.

Exit status: 0 all targets met, 1 a target missed, 2 the run could not be made, 130 on
Ctrl-C. Every process it starts is stopped on any exit. See bench/README.md.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import json
import math
import os
import random
import shutil
import signal
import subprocess
import sys
import time
import traceback
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
sys.path[:0] = [str(BENCH_DIR), str(REPO)]  # runnable as `python bench/ingest.py` from anywhere

from _harness import (  # noqa: E402
    BenchError,
    CpuSnapshot,
    Proc,
    Procs,
    conninfo,
    cpu_cores,
    cpu_snapshot,
    create_database,
    db_name,
    drop_database,
    fmt,
    free_port,
    log,
    machine_facts,
    percentile,
    profile_summary,
    raise_on_term,
    start_redis,
    venv_bin,
    wait_port,
    wait_quiet,
)

DEFAULT_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/sg_bench_ingest"
MARKER = "supportgate_bench_ingest"
SUPPORT = "support@bench.example.com"
MIB = 1024 * 1024

# Targets of issue 4.
MIN_ACCEPT_RATIO = 0.80  # Supportgate 250/s over the fsync sink's
MIN_E2E_RATIO = 0.50  # Supportgate tickets/s end to end over the bare sink's 250/s
MAX_HALF_LOAD_P99_MS = 50.0
MIN_BIG_MIB_S = 8.0


# --- messages ------------------------------------------------------------------------------------

SUBJECTS = (
    "Cannot log in after password reset",
    "Invoice shows the wrong VAT number",
    "App crashes when uploading a photo",
    "Refund for duplicate charge",
    "How do I export my data?",
    "SSO login loops back to the start page",
    "Webhook deliveries are delayed",
    "Two-factor code never arrives",
    "Order stuck in processing",
    "Question about the enterprise plan",
)
SENTENCES = (
    "Since this morning the page only shows a spinner.",
    "We tried another browser and cleared the cache, with the same result.",
    "This blocks three people on our team from working.",
    "The error message says something about an expired session.",
    "It worked fine last week before the update.",
    "Please find the order number in the subject line.",
    "Could you tell us whether this is a known problem?",
    "We are on the annual plan and were charged twice this month.",
    "Steps: open the settings, click save, nothing happens.",
    "Our admin already reset the permissions once.",
    "The mobile app shows the same thing on Android and iOS.",
    "Thanks in advance for looking into it.",
)


def make_message(tag: str, i: int, size: int, rng: random.Random) -> tuple[str, bytes]:
    """(sender, raw bytes with CRLF) of one distinct, Gmail-like message of about ``size`` bytes.

    Up to 64 KiB: multipart/alternative (text and HTML). Bigger: multipart/mixed with a short
    text and a PDF-like attachment of random (incompressible, distinct) bytes, base64.
    """
    from email.message import EmailMessage
    from email.policy import SMTP
    from email.utils import format_datetime

    sender = f"customer.{tag}.{i}@example.org"
    msg = EmailMessage()
    msg["Received"] = (
        f"from mail-{i % 7}.client.example.org (mail-{i % 7}.client.example.org "
        f"[192.0.2.{i % 250 + 1}]) by mx.bench.example.com with ESMTPS id {rng.getrandbits(48):x}; "
        f"{format_datetime(datetime.now(UTC))}"
    )
    msg["From"] = f'"Customer {tag} {i}" <{sender}>'
    msg["To"] = f"Support <{SUPPORT}>"
    msg["Subject"] = f"{SUBJECTS[i % len(SUBJECTS)]} ({tag}-{i})"
    msg["Date"] = format_datetime(datetime.now(UTC))
    msg["Message-ID"] = f"<{tag}.{i}.{rng.getrandbits(64):x}@client.example.org>"
    msg["X-Mailer"] = "bench/ingest.py"
    big = size > 65536
    budget = 400 if big else max(200, int((size - 1100) * 0.42))
    words: list[str] = [f"Hello, this is request {i} of run {tag}."]
    while sum(len(w) + 1 for w in words) < budget:
        words.append(SENTENCES[rng.randrange(len(SENTENCES))])
    lines, line = [], ""
    for sentence in words:
        if len(line) + len(sentence) > 70:
            lines.append(line)
            line = ""
        line = f"{line} {sentence}".strip()
    lines.append(line)
    text = "\n".join(lines) + "\n\n-- \nCustomer\n"
    msg.set_content(text)
    if big:
        payload = b"%PDF-1.7\n" + rng.randbytes(max(1024, int((size - 2500) / 1.3684)))
        msg.add_attachment(
            payload, maintype="application", subtype="pdf", filename=f"report-{tag}-{i}.pdf"
        )
    else:
        html = "\n".join(f"<div>{ln}</div>" for ln in lines)
        msg.add_alternative(f'<div dir="ltr">\n{html}\n</div>\n', subtype="html")
    raw = msg.as_bytes(policy=SMTP)
    # DATA transparency (RFC 5321 4.5.2): a line starting with "." gets one more.
    if raw.startswith(b"."):
        raw = b"." + raw
    raw = raw.replace(b"\r\n.", b"\r\n..")
    if not raw.endswith(b"\r\n"):
        raw += b"\r\n"
    return sender, raw


# --- the SMTP client (runs as `ingest.py _client`, in its own process) --------------------------


class SmtpClient(asyncio.Protocol):
    """One SMTP connection; ``command`` writes and returns a future of the reply's code."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.buf = bytearray()
        self.waiting: collections.deque[asyncio.Future[int]] = collections.deque(
            [loop.create_future()]  # the greeting
        )
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.buf += data
        while True:
            end = self.buf.find(b"\r\n")
            if end < 0:
                return
            line = bytes(self.buf[:end])
            del self.buf[: end + 2]
            if line[3:4] == b"-":  # a continuation line of a multi-line reply
                continue
            if self.waiting:
                fut = self.waiting.popleft()
                if not fut.done():
                    try:
                        fut.set_result(int(line[:3]))
                    except ValueError:
                        fut.set_exception(ConnectionError(f"bad reply {line[:80]!r}"))

    def connection_lost(self, exc: Exception | None) -> None:
        while self.waiting:
            fut = self.waiting.popleft()
            if not fut.done():
                fut.set_exception(ConnectionError(f"connection lost: {exc}"))

    def greeting(self) -> asyncio.Future[int]:
        return self.waiting[0]

    def command(self, data: bytes) -> asyncio.Future[int]:
        fut = self.loop.create_future()
        self.waiting.append(fut)
        assert self.transport is not None
        self.transport.write(data)
        return fut


async def _client_run(spec: dict[str, Any]) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    rng = random.Random(spec["seed"])
    count, size, tag = spec["count"], spec["size"], spec["tag"]
    messages = [make_message(tag, i, size, rng) for i in range(count)]
    rcpt = f"RCPT TO:<{SUPPORT}>\r\n".encode()
    rate = float(spec.get("rate") or 0)
    clients = spec["clients"]
    next_index = 0
    samples: list[tuple[int, float, float, float, float]] = []  # i, ref, start, data, end
    errors: collections.Counter[str] = collections.Counter()
    t0 = 0.0

    async def connect() -> SmtpClient:
        _, proto = await loop.create_connection(lambda: SmtpClient(loop), "127.0.0.1", spec["port"])
        if await proto.greeting() != 220:
            raise ConnectionError("no 220 greeting")
        if await proto.command(b"EHLO client.bench.example.org\r\n") != 250:
            raise ConnectionError("EHLO refused")
        return proto

    async def one(proto: SmtpClient, i: int, ref: float) -> None:
        sender, data = messages[i]
        start = time.time()
        code = await proto.command(f"MAIL FROM:<{sender}> SIZE={len(data)}\r\n".encode())
        if code == 250:
            code = await proto.command(rcpt)
        if code == 250:
            code = await proto.command(b"DATA\r\n")
        if code != 354:
            errors[f"{code} before DATA"] += 1
            await proto.command(b"RSET\r\n")
            return
        at_data = time.time()
        code = await proto.command(data + b".\r\n")
        end = time.time()
        if code == 250:
            samples.append((i, ref or start, start, at_data, end))
        else:
            errors[f"{code} after DATA"] += 1

    async def closed_loop(proto: SmtpClient) -> None:
        nonlocal next_index
        while next_index < count:
            i = next_index
            next_index += 1
            await one(proto, i, 0.0)

    async def paced(proto: SmtpClient, lane: int) -> None:
        # Message k is due at t0 + k / rate, on connection k mod clients. Latency counts from
        # the due time, so a connection that falls behind shows it (no coordinated omission).
        for i in range(lane, count, clients):
            due = t0 + i / rate
            delay = due - time.time()
            if delay > 0:
                await asyncio.sleep(delay)
            await one(proto, i, due)

    protos = await asyncio.gather(*(connect() for _ in range(clients)))
    # Messages built, connections open: tell the runner, and start when it says so.
    ready, go = Path(spec["ready"]), Path(spec["go"])
    ready.touch()
    while not go.exists():
        await asyncio.sleep(0.002)
    cpu0 = time.process_time()
    t0 = time.time() + 0.01
    if rate:
        runs = [paced(p, lane) for lane, p in enumerate(protos)]
    else:
        runs = [closed_loop(p) for p in protos]
    await asyncio.wait_for(asyncio.gather(*runs), spec["timeout"])
    cpu_seconds = time.process_time() - cpu0
    for proto in protos:
        proto.command(b"QUIT\r\n")
        if proto.transport is not None:
            proto.transport.close()
    accepted_bytes = sum(len(messages[s[0]][1]) for s in samples)
    return {
        "count": count,
        "accepted": len(samples),
        "errors": dict(errors),
        "first_byte": min((s[2] for s in samples), default=math.nan),
        "last_250": max((s[4] for s in samples), default=math.nan),
        "accepted_bytes": accepted_bytes,
        "cpu_seconds": cpu_seconds,
        "mean_size": sum(len(m[1]) for m in messages) / max(1, count),
        "latency_ms": [round((s[4] - s[1]) * 1000, 3) for s in samples],
        "after_data_ms": [round((s[4] - s[3]) * 1000, 3) for s in samples],
        "late_ms": [round(max(0.0, s[2] - s[1]) * 1000, 3) for s in samples],
        # When each message was due (or started), in ms from the run's start: for timelines.
        "at_ms": [round((s[1] - t0) * 1000, 1) for s in samples],
        "t0": t0,
    }


def client_main(argv: list[str]) -> int:
    spec_path, result_path = Path(argv[0]), Path(argv[1])
    spec = json.loads(spec_path.read_text())
    result = asyncio.run(_client_run(spec))
    result_path.write_text(json.dumps(result))
    return 0


# --- the baselines (run as `ingest.py _sink`, in their own process) -----------------------------


def sink_main(argv: list[str]) -> int:
    """A bare aiosmtpd sink (``bare``) or one that fsyncs a file per message (``fsync``)."""
    from concurrent.futures import ThreadPoolExecutor

    from aiosmtpd.smtp import SMTP

    port, mode, spool = int(argv[0]), argv[1], Path(argv[2])
    max_bytes = int(argv[3]) if len(argv) > 3 else 26214400
    pool = ThreadPoolExecutor(max_workers=8, thread_name_prefix="sink-store")
    counter = [0]

    def store(raw: bytes, n: int) -> None:
        fd = os.open(spool / f"{os.getpid()}-{n}.eml", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            view = memoryview(raw)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)

    class Handler:
        async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
            counter[0] += 1
            if mode == "fsync":
                raw = bytes(envelope.original_content or b"")
                await asyncio.get_running_loop().run_in_executor(pool, store, raw, counter[0])
            return "250 2.0.0 OK"

    async def serve() -> None:
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        handler = Handler()

        def factory() -> SMTP:
            # The keyword arguments adapters/email/smtp_server.py gives the product's server.
            return SMTP(
                handler,
                data_size_limit=max_bytes,
                enable_SMTPUTF8=True,
                hostname="bench.example.com",
                ident="bench sink",
                timeout=300,
                loop=loop,
            )

        server = await loop.create_server(factory, host="127.0.0.1", port=port)
        try:
            await stop.wait()
        finally:
            server.close()
            pool.shutdown(wait=True)
            print(f"sink {mode}: {counter[0]} messages", flush=True)

    if mode == "fsync":
        spool.mkdir(parents=True, exist_ok=True)
    asyncio.run(serve())
    return 0


# --- orchestration -------------------------------------------------------------------------------


@dataclass
class Phase:
    name: str
    server: str  # bare | fsync | supportgate
    size: int
    count: int
    rate: float = 0.0  # 0: closed loop (full load)
    accepted: int = 0
    errors: dict[str, int] = field(default_factory=dict)
    mean_size: float = 0.0
    accept_seconds: float = math.nan
    accept_per_s: float = math.nan
    accept_mib_s: float = math.nan
    p50_ms: float = math.nan
    p90_ms: float = math.nan
    p99_ms: float = math.nan
    max_ms: float = math.nan
    after_data_p50_ms: float = math.nan
    after_data_p99_ms: float = math.nan
    max_late_ms: float = math.nan
    e2e_seconds: float = math.nan
    e2e_per_s: float = math.nan
    e2e_mib_s: float = math.nan
    settled_seconds: float = math.nan
    cpu_accept: dict[str, float] = field(default_factory=dict)
    cpu_e2e: dict[str, float] = field(default_factory=dict)
    other_before: float = math.nan
    timeline: list[dict[str, Any]] = field(default_factory=list)


def timeline(
    result: dict[str, Any], probes: list[tuple[float, float]], seconds: float
) -> list[dict[str, Any]]:
    """Per second of the run: messages, p50/max time to 250, and the longest probe commit."""
    t0 = result["t0"]
    buckets: dict[int, list[float]] = {}
    for at, ms in zip(result["at_ms"], result["latency_ms"], strict=True):
        buckets.setdefault(int(at // 1000), []).append(ms)
    out = []
    for second in range(int(seconds) + 1):
        lat = buckets.get(second, [])
        commits = [ms for at, ms in probes if second <= at - t0 < second + 1]
        out.append(
            {
                "second": second,
                "messages": len(lat),
                "p50_ms": round(percentile(lat, 50), 1) if lat else None,
                "max_ms": round(max(lat), 1) if lat else 0.0,
                "probe_commit_max_ms": round(max(commits), 1) if commits else None,
            }
        )
    return out


def with_client(
    cores: dict[str, float], result: dict[str, Any], seconds: float
) -> dict[str, float]:
    client = result["cpu_seconds"] / max(seconds, 1e-6)
    return cores | {"client": client, "other": max(0.0, cores["other"] - client)}


class Bench:
    def __init__(self, args: argparse.Namespace, procs: Procs) -> None:
        self.args = args
        self.procs = procs
        self.out: Path = args.out
        self.dbname = db_name(args.database_url)
        self.groups: dict[str, list[int]] = {}
        self.pg: Any = None
        self.seq = 0

    # -- plumbing
    def python_argv(self, *rest: str) -> list[str]:
        return [sys.executable, str(Path(__file__).resolve()), *rest]

    def start_sink(self, mode: str, name: str) -> tuple[Proc, int]:
        port = free_port()
        spool = self.out / f"spool-{name}"
        argv = self.python_argv("_sink", str(port), mode, str(spool), str(self.args.max_bytes))
        proc = self.procs.start(Proc(name, argv, dict(os.environ), self.out / f"{name}.log"))
        wait_port(port, 30, proc)
        return proc, port

    def tickets(self) -> int:
        return int(self.pg.execute("SELECT count(*) FROM tickets").fetchone()[0])

    def unsettled(self) -> int:
        row = self.pg.execute(
            "SELECT count(*) FROM outbox_tasks WHERE state NOT IN ('done', 'dead')"
        ).fetchone()
        return int(row[0])

    def run_client(
        self, phase: Phase, port: int, poll_tickets: bool, measure: bool = True
    ) -> dict[str, Any]:
        self.seq += 1
        tag = f"{phase.name[:6]}{self.seq}{os.getpid() % 1000}"
        spec = {
            "port": port,
            "clients": self.args.clients,
            "count": phase.count,
            "size": phase.size,
            "rate": phase.rate,
            "tag": tag,
            "seed": self.args.seed * 1000 + self.seq,
            "timeout": self.args.phase_timeout,
        }
        spec_path = self.out / f"client-{self.seq}.json"
        result_path = self.out / f"client-{self.seq}.result.json"
        ready, go = result_path.with_suffix(".ready"), result_path.with_suffix(".go")
        spec |= {"ready": str(ready), "go": str(go)}
        spec_path.write_text(json.dumps(spec))
        for path in (result_path, ready, go):
            path.unlink(missing_ok=True)
        client = Proc(
            f"client-{self.seq}",
            self.python_argv("_client", str(spec_path), str(result_path)),
            dict(os.environ),
            self.out / "client.log",
        )
        self.procs.start(client)
        deadline = time.monotonic() + 120
        while not ready.exists():  # building the messages and connecting
            if not client.alive() or time.monotonic() > deadline:
                raise BenchError(f"the SMTP client did not get ready:\n{client.tail()}")
            time.sleep(0.02)
        if measure:
            phase.other_before = wait_quiet(self.args.quiet_cores, self.args.quiet_timeout)
        base = self.tickets() if poll_tickets else 0
        groups = dict(self.groups) | {"client": [client.pid]}
        snap0 = cpu_snapshot(groups, self.dbname)
        go.touch()
        series: list[tuple[float, int]] = []
        probes: list[tuple[float, float]] = []
        deadline = time.monotonic() + self.args.phase_timeout
        snap1: CpuSnapshot | None = None
        target = base + phase.count
        while True:
            now = time.time()
            if poll_tickets:
                series.append((now, self.tickets()))
                if len(series) % 5 == 1:  # every ~100 ms: how long does a tiny commit take?
                    started = time.perf_counter()
                    self.pg.execute("INSERT INTO bench_probe VALUES (now())")
                    probes.append((now, (time.perf_counter() - started) * 1000))
            if snap1 is None and not client.alive():
                snap1 = cpu_snapshot(groups, self.dbname)
                if client.returncode() != 0 or not result_path.exists():
                    raise BenchError(
                        f"the SMTP client failed ({client.returncode()}):\n{client.tail()}"
                    )
                target = base + json.loads(result_path.read_text())["accepted"]
            if snap1 is not None and (not poll_tickets or series[-1][1] >= target):
                break
            if time.monotonic() > deadline:
                raise BenchError(
                    f"{phase.name}: not done within --phase-timeout {self.args.phase_timeout} s"
                    + (f" ({series[-1][1] - base} of {target - base} tickets)" if series else "")
                )
            time.sleep(0.02)
        snap2 = cpu_snapshot(groups, self.dbname)
        self.procs.stop(client)
        result: dict[str, Any] = json.loads(result_path.read_text())
        if not measure:
            return result
        phase.accepted = result["accepted"]
        phase.errors = result["errors"]
        phase.mean_size = result["mean_size"]
        phase.accept_seconds = result["last_250"] - result["first_byte"]
        phase.accept_per_s = phase.accepted / phase.accept_seconds
        phase.accept_mib_s = result["accepted_bytes"] / MIB / phase.accept_seconds
        lat, after = result["latency_ms"], result["after_data_ms"]
        phase.p50_ms, phase.p90_ms = percentile(lat, 50), percentile(lat, 90)
        phase.p99_ms, phase.max_ms = percentile(lat, 99), max(lat, default=math.nan)
        phase.after_data_p50_ms = percentile(after, 50)
        phase.after_data_p99_ms = percentile(after, 99)
        phase.max_late_ms = max(result["late_ms"], default=math.nan)
        assert snap1 is not None
        # The client has exited (and is reaped) by the later snapshots: it reports its own CPU.
        phase.cpu_accept = with_client(cpu_cores(snap0, snap1), result, snap1.at - snap0.at)
        if poll_tickets:
            done_at = next(t for t, n in series if n >= target)
            phase.e2e_seconds = done_at - result["first_byte"]
            phase.e2e_per_s = phase.accepted / phase.e2e_seconds
            phase.e2e_mib_s = result["accepted_bytes"] / MIB / phase.e2e_seconds
            phase.cpu_e2e = with_client(cpu_cores(snap0, snap2), result, snap2.at - snap0.at)
            phase.timeline = timeline(result, probes, phase.accept_seconds)
            worst = max(phase.timeline, key=lambda b: b["max_ms"], default=None)
            if worst is not None:
                log(
                    f"  worst second: {worst['second']} s in, {worst['messages']} messages, max "
                    f"{worst['max_ms']} ms to 250; a probe commit took at most "
                    f"{worst['probe_commit_max_ms']} ms then "
                    f"(at most {max(ms for _, ms in probes):.1f} ms in the run)"
                )
        return result

    def settle(self, first_byte: float | None = None) -> float:
        """Wait until no outbox row is pending/queued/running (acknowledgments sent)."""
        deadline = time.monotonic() + self.args.phase_timeout
        while self.unsettled():
            if time.monotonic() > deadline:
                raise BenchError("the outbox did not settle within --phase-timeout")
            time.sleep(0.05)
        return time.time() - first_byte if first_byte else math.nan

    # -- phases
    def baseline(self, mode: str, phases: list[Phase]) -> None:
        proc, port = self.start_sink(mode, f"sink-{mode}")
        self.groups = {"server": [proc.pid]}
        try:
            warm = Phase("warmup", mode, self.args.size, self.args.warmup)
            self.run_client(warm, port, poll_tickets=False, measure=False)
            for phase in phases:
                load = f" at {phase.rate:.1f}/s" if phase.rate else ""
                log(
                    f"{phase.name}: {phase.count} x {phase.size:,} B, {self.args.clients} "
                    f"clients{load}"
                )
                self.run_client(phase, port, poll_tickets=False)
                log(
                    f"  {fmt(phase.accept_per_s)} 250/s, p50 {fmt(phase.p50_ms, 2)} ms, "
                    f"p99 {fmt(phase.p99_ms, 2)} ms"
                    + (f", errors {phase.errors}" if phase.errors else "")
                )
        finally:
            self.procs.stop(proc)
            shutil.rmtree(self.out / f"spool-{mode}", ignore_errors=True)
            self.groups = {}

    def product_env(
        self, redis_port: int, smtp_port: int, relay_port: int | None
    ) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("SUPPORTGATE_")}
        env.update(
            SUPPORTGATE_DATABASE_URL=self.args.database_url,
            SUPPORTGATE_REDIS_URL=f"redis://127.0.0.1:{redis_port}/0",
            SUPPORTGATE_SMTP_HOST="127.0.0.1",
            SUPPORTGATE_SMTP_PORT=str(smtp_port),
            SUPPORTGATE_SUPPORT_ADDRESS=SUPPORT,
            SUPPORTGATE_DATA_DIR=str(self.out / "data"),
            SUPPORTGATE_MAINTENANCE_INTERVAL="0",
        )
        if relay_port:
            env["SUPPORTGATE_OUTBOUND_SMTP_URL"] = f"smtp://127.0.0.1:{relay_port}"
        return env

    def product(self, full: Phase, half: Phase, big: Phase | None) -> dict[str, Any]:
        import psycopg

        args = self.args
        redis, redis_port = start_redis(self.procs, self.out / "redis")
        create_database(args.database_url, MARKER)
        relay_port = None
        relay_group: dict[str, list[int]] = {}
        if args.relay == "sink":
            relay, relay_port = self.start_sink("bare", "relay-sink")
            relay_group = {"relay": [relay.pid]}
        smtp_port = free_port()
        env = self.product_env(redis_port, smtp_port, relay_port)
        shutil.rmtree(self.out / "data", ignore_errors=True)
        cli = venv_bin("supportgate")
        subprocess.run(
            [cli, "db", "upgrade"],
            env=env,
            cwd=self.out,
            check=True,
            capture_output=True,
            timeout=120,
        )
        smtp = self.procs.start(Proc("smtp", [cli, "smtp"], env, self.out / "smtp.log"))
        worker_argv = [cli, "worker", "--concurrency", str(args.worker_concurrency)]
        if args.worker_nice:
            worker_argv = ["nice", "-n", str(args.worker_nice), *worker_argv]
        worker = self.procs.start(Proc("worker", worker_argv, env, self.out / "worker.log"))
        wait_port(smtp_port, 60, smtp)
        deadline = time.monotonic() + 60
        while "ready." not in worker.tail(20000):
            if not worker.alive() or time.monotonic() > deadline:
                raise BenchError(f"the worker did not start:\n{worker.tail()}")
            time.sleep(0.2)
        log(
            f"supportgate up: smtp pid {smtp.pid} on {smtp_port}, worker pid {worker.pid} "
            f"(--concurrency {args.worker_concurrency}), redis {redis_port}, "
            f"database {self.dbname}, relay {'sink ' + str(relay_port) if relay_port else 'none'}"
        )
        self.groups = {
            "server": [smtp.pid],
            "workers": [worker.pid],
            "redis": [redis.pid],
            **relay_group,
        }
        self.pg = psycopg.connect(conninfo(args.database_url), autocommit=True)
        self.pg.execute("CREATE TABLE IF NOT EXISTS bench_probe (at timestamptz)")
        try:
            warm = Phase("warmup", "supportgate", args.size, args.warmup)
            self.run_client(warm, smtp_port, poll_tickets=True, measure=False)
            self.settle()
            log(f"{full.name}: {full.count} x {full.size:,} B, {args.clients} clients, full load")
            result = self.run_client(full, smtp_port, poll_tickets=True)
            full.settled_seconds = self.settle(result["first_byte"])
            log(
                f"  {fmt(full.accept_per_s)} 250/s, {fmt(full.e2e_per_s)} tickets/s end to end, "
                f"p50 {fmt(full.p50_ms, 2)} ms, p99 {fmt(full.p99_ms, 2)} ms"
            )
            half.rate = full.accept_per_s / 2
            half.count = max(args.clients, int(half.rate * args.half_seconds))
            log(f"{half.name}: {half.count} x {half.size:,} B at {half.rate:.1f}/s (half load)")
            result = self.run_client(half, smtp_port, poll_tickets=True)
            half.settled_seconds = self.settle(result["first_byte"])
            log(
                f"  {fmt(half.accept_per_s)} 250/s, p50 {fmt(half.p50_ms, 2)} ms, "
                f"p99 {fmt(half.p99_ms, 2)} ms, max late start {fmt(half.max_late_ms, 1)} ms"
            )
            if big is not None:
                log(f"{big.name}: {big.count} x {big.size:,} B, {args.clients} clients")
                result = self.run_client(big, smtp_port, poll_tickets=True)
                big.settled_seconds = self.settle(result["first_byte"])
                log(f"  {fmt(big.accept_mib_s)} MiB/s to 250, {fmt(big.e2e_mib_s)} MiB/s e2e")
            if args.profile:
                self.profile(smtp, worker, smtp_port)
            return self.product_checks()
        finally:
            self.pg.close()
            self.pg = None
            self.groups = {}

    def product_checks(self) -> dict[str, Any]:
        rows = self.pg.execute("SELECT state, count(*) FROM inbound_mail GROUP BY 1").fetchall()
        tasks = self.pg.execute(
            "SELECT kind, state, count(*) FROM outbox_tasks GROUP BY 1, 2 ORDER BY 1, 2"
        ).fetchall()
        mails = self.pg.execute("SELECT state, count(*) FROM outbound_mail GROUP BY 1").fetchall()
        tickets = self.tickets()
        messages = self.pg.execute("SELECT count(*) FROM messages").fetchone()[0]
        return {
            "inbound_mail": dict(rows),
            "outbox_tasks": [f"{k} {s}: {n}" for k, s, n in tasks],
            "outbound_mail": dict(mails),
            "tickets": tickets,
            "messages": messages,
        }

    def profile(self, smtp: Proc, worker: Proc, smtp_port: int) -> None:
        """An extra run (not in the figures) with py-spy on the SMTP server and workers."""
        spy = (
            self.args.py_spy
            or shutil.which("py-spy")
            or str(Path(sys.executable).parent / "py-spy")
        )
        if not Path(spy).exists():
            log("no py-spy (pip install py-spy, or --py-spy PATH): skipping the profile")
            return
        spies = []
        for name, proc, extra in (("smtp", smtp, []), ("worker", worker, ["--subprocesses"])):
            argv = [
                spy,
                "record",
                "--pid",
                str(proc.pid),
                "--rate",
                "200",
                "--nonblocking",
                "--gil",  # only threads holding the GIL: where the Python CPU goes
                "--format",
                "raw",
                "-o",
                str(self.out / f"profile-{name}.txt"),
                *extra,
            ]
            spies.append(
                self.procs.start(
                    Proc(f"py-spy-{name}", argv, dict(os.environ), self.out / f"py-spy-{name}.log")
                )
            )
        time.sleep(1.0)
        log("profiling: an extra full-load run with py-spy attached (not in the figures)")
        extra_phase = Phase("profile", "supportgate", self.args.size, self.args.messages)
        result = self.run_client(extra_phase, smtp_port, poll_tickets=True, measure=True)
        self.settle(result["first_byte"])
        for spy_proc in spies:
            if spy_proc.alive():
                os.killpg(spy_proc.pid, signal.SIGINT)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    spy_proc.wait(60)
            self.procs.stop(spy_proc)
        for name, within in (("smtp", None), ("worker", "run_outbox")):
            summary = profile_summary(self.out / f"profile-{name}.txt", within)
            (self.out / f"profile-{name}.summary.txt").write_text(summary + "\n")
            print(f"\nprofile of the {name} process(es):\n{summary}", flush=True)
        log(f"profiles in {self.out}/profile-*.txt (collapsed stacks) and *.summary.txt")


# --- report --------------------------------------------------------------------------------------


def _cpu(c: dict[str, float]) -> str:
    keys = ("client", "server", "workers", "postgres", "redis", "relay", "other", "steal")
    return " / ".join(fmt(c[k], 2) if k in c else "-" for k in keys)


def render(phases: list[Phase], checks: list[tuple[str, bool, str]]) -> str:
    lines = [
        "| run | messages | mean size | 250/s | MiB/s to 250 | p50 ms | p99 ms | max ms "
        "| tickets/s e2e | MiB/s e2e | all acks sent (s) "
        "| CPU cores until the last 250: client / server / workers / PG / redis / relay sink "
        "/ other / steal | CPU cores until the last ticket (same order) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---|",
    ]
    for p in phases:
        load = f" at {p.rate:.0f}/s" if p.rate else ""
        lines.append(
            f"| {p.name}{load} | {p.accepted:,}/{p.count:,} | {p.mean_size / 1024:,.1f} KiB "
            f"| {fmt(p.accept_per_s)} | {fmt(p.accept_mib_s, 2)} | {fmt(p.p50_ms, 2)} "
            f"| {fmt(p.p99_ms, 2)} | {fmt(p.max_ms, 1)} | {fmt(p.e2e_per_s)} "
            f"| {fmt(p.e2e_mib_s, 2)} | {fmt(p.settled_seconds, 1)} "
            f"| {_cpu(p.cpu_accept)} | {_cpu(p.cpu_e2e) if p.cpu_e2e else 'n/a'} |"
        )
    lines += ["", "| target | measured | result |", "|---|---|---|"]
    lines += [f"| {name} | {got} | {'PASS' if ok else 'FAIL'} |" for name, ok, got in checks]
    return "\n".join(lines) + "\n"


def parse_cpu_ms(size: int, count: int, seed: int) -> float:
    """CPU ms a message of the workers' parser (``adapters.email.parsing.parse_message``),
    in this process, over ``count`` messages made as the runs make them."""
    from adapters.email.parsing import parse_message

    rng = random.Random(seed)
    raws = [make_message("ceiling", i, size, rng)[1] for i in range(count)]
    for raw in raws[: min(50, count)]:  # imports and caches
        parse_message(raw)
    started = time.process_time()
    for raw in raws:
        parse_message(raw)
    return (time.process_time() - started) * 1000 / count


def cpu_ms_per_message(p: Phase, *roles: str) -> float:
    """CPU ms a message of ``roles`` (keys of ``cpu_accept``) until ``p``'s last 250."""
    return sum(p.cpu_accept.get(r, 0.0) for r in roles) * 1000 / p.accept_per_s


def e2e_ceiling(fsync: Phase, parse_ms: float, cores: int) -> float:
    """Tickets/s end to end if every stage were free but two: accepting durably, at the
    fsync sink's CPU a message (server and client), and parsing. Every core on both."""
    return cores * 1000 / (cpu_ms_per_message(fsync, "server", "client") + parse_ms)


def evaluate(by: dict[str, Phase]) -> list[tuple[str, bool, str]]:
    full, half = by["supportgate 4K"], by["half"]
    checks = []
    if "fsync 4K" in by:
        fsync = by["fsync 4K"]
        ratio = full.accept_per_s / fsync.accept_per_s
        checks.append(
            (
                f"Supportgate 250/s >= {MIN_ACCEPT_RATIO:.0%} of the fsync sink's",
                ratio >= MIN_ACCEPT_RATIO,
                f"{fmt(full.accept_per_s)} / {fmt(fsync.accept_per_s)} = {ratio:.0%}",
            )
        )
    if "bare 4K" in by:
        bare = by["bare 4K"]
        ratio = full.e2e_per_s / bare.accept_per_s
        checks.append(
            (
                f"Supportgate tickets/s end to end >= {MIN_E2E_RATIO:.0%} of the bare sink's 250/s",
                ratio >= MIN_E2E_RATIO,
                f"{fmt(full.e2e_per_s)} / {fmt(bare.accept_per_s)} = {ratio:.1%}",
            )
        )
    checks.append(
        (
            f"p99 time to 250 at half load < {MAX_HALF_LOAD_P99_MS:.0f} ms",
            half.p99_ms < MAX_HALF_LOAD_P99_MS,
            f"{fmt(half.p99_ms, 2)} ms at {half.rate:.0f}/s (p50 {fmt(half.p50_ms, 2)} ms)"
            + (
                f"; fsync sink at that rate: p99 {fmt(by['fsync 4K half load'].p99_ms, 2)} ms"
                if "fsync 4K half load" in by
                else ""
            ),
        )
    )
    big = by.get("supportgate 1M")
    if big is not None:
        checks.append(
            (
                f"1 MiB messages end to end >= {MIN_BIG_MIB_S:.0f} MiB/s",
                big.e2e_mib_s >= MIN_BIG_MIB_S,
                f"{fmt(big.e2e_mib_s, 2)} MiB/s ({fmt(big.e2e_per_s, 2)} messages/s)",
            )
        )
    return checks


# --- command line --------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="Supportgate's SMTP accept and ingest end to end, against a bare aiosmtpd "
        "sink and an fsync sink, in one run (loopback only).",
        epilog="Exit status: 0 all targets met, 1 a target missed, 2 the run could not be made, "
        "130 interrupted. See bench/README.md.",
    )
    p.add_argument(
        "--database-url",
        default=DEFAULT_URL,
        help="a database this benchmark may create and drop (default %(default)s); "
        "an existing database it did not create is refused",
    )
    p.add_argument("--clients", type=int, default=16, help="concurrent SMTP connections (16)")
    p.add_argument(
        "--messages", type=int, default=3000, help="~4 KB messages per full-load run (3000)"
    )
    p.add_argument("--size", type=int, default=4096, help="size of the small messages (4096)")
    p.add_argument(
        "--big-messages",
        type=int,
        default=64,
        help="1 MiB messages in the big run (64); 0 skips it",
    )
    p.add_argument("--big-size", type=int, default=MIB, help="size of the big messages (1 MiB)")
    p.add_argument(
        "--half-seconds", type=float, default=20.0, help="length of the half-load run (20 s)"
    )
    p.add_argument("--warmup", type=int, default=200, help="warm-up messages per server (200)")
    p.add_argument(
        "--worker-concurrency", type=int, default=2, help="supportgate worker --concurrency (2)"
    )
    p.add_argument(
        "--skip-baselines",
        action="store_true",
        help="only Supportgate (for quick iterations; the ratio targets are then not checked)",
    )
    p.add_argument(
        "--worker-nice",
        type=int,
        default=0,
        help="start the worker under `nice -n N` (an experiment: the SMTP edge first); default 0",
    )
    p.add_argument(
        "--relay",
        choices=("sink", "none"),
        default="sink",
        help="sink: acknowledgments go to a local aiosmtpd sink through "
        "SUPPORTGATE_OUTBOUND_SMTP_URL (default); none: they are stored, not sent",
    )
    p.add_argument(
        "--max-bytes",
        type=int,
        default=26214400,
        help="SIZE limit of the sinks (the product's default, 25 MiB)",
    )
    p.add_argument(
        "--phase-timeout", type=float, default=600.0, help="longest a single run may take (600 s)"
    )
    p.add_argument(
        "--quiet-cores",
        type=float,
        default=0.3,
        help="before each run, wait until the machine uses fewer cores than this",
    )
    p.add_argument(
        "--quiet-timeout", type=float, default=20.0, help="…but at most this long (20 s)"
    )
    p.add_argument("--seed", type=int, default=1, help="seed of the generated messages")
    p.add_argument(
        "--profile",
        action="store_true",
        help="after the measured runs, one more full-load run with py-spy attached "
        "to the SMTP server and the workers (py-spy --gil; collapsed stacks, summary in --out)",
    )
    p.add_argument(
        "--py-spy", default=None, help="path of py-spy (default: on PATH or in the venv)"
    )
    p.add_argument(
        "--keep", action="store_true", help="keep the database and the data directory afterwards"
    )
    p.add_argument(
        "--out",
        type=Path,
        default=BENCH_DIR / "out" / "ingest",
        help="logs and results (default bench/out/ingest, ignored by git)",
    )
    args = p.parse_args(argv)
    if args.clients < 1 or args.messages < args.clients:
        p.error("--messages must be at least --clients, and --clients at least 1")
    return args


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["_client"]:
        return client_main(argv[1:])
    if argv[:1] == ["_sink"]:
        return sink_main(argv[1:])
    args = parse_args(argv)
    args.out = args.out.resolve()
    args.out.mkdir(parents=True, exist_ok=True)
    procs = Procs()
    raise_on_term()
    created = False
    try:
        db_name(args.database_url)
        created = True
        return _main(args, procs)
    except BenchError as exc:
        log(f"error: {exc}")
        return 2
    except KeyboardInterrupt:
        log("interrupted")
        return 130
    except Exception:
        log(f"error: the run failed:\n{traceback.format_exc()}")
        return 2
    finally:
        procs.stop_all()
        if created and not args.keep:
            try:
                drop_database(args.database_url, MARKER)
            except Exception as exc:  # cleanup must not hide the result
                log(f"could not drop the benchmark database: {exc}")
            shutil.rmtree(args.out / "data", ignore_errors=True)
        log("stopped every process this run started")


def _main(args: argparse.Namespace, procs: Procs) -> int:
    facts = machine_facts(args.database_url)
    bench = Bench(args, procs)
    phases: dict[str, Phase] = {}

    def phase(name: str, server: str, size: int, count: int) -> Phase:
        phases[name] = Phase(name, server, size, count)
        return phases[name]

    big_on = args.big_messages > 0
    started = time.time()
    for mode in () if args.skip_baselines else ("bare", "fsync"):
        runs = [phase(f"{mode} 4K", mode, args.size, args.messages)]
        if big_on:
            runs.append(phase(f"{mode} 1M", mode, args.big_size, args.big_messages))
        bench.baseline(mode, runs)
    full = phase("supportgate 4K", "supportgate", args.size, args.messages)
    half = phase("half", "supportgate", args.size, 0)
    big = (
        phase("supportgate 1M", "supportgate", args.big_size, args.big_messages) if big_on else None
    )
    checks_db = bench.product(full, half, big)
    half.name = "supportgate 4K half load"
    if not args.skip_baselines:
        # The durable-accept floor of this disk at the same offered load: the fsync sink,
        # rate-limited at Supportgate's half-load rate for as long.
        same = phase("fsync 4K half load", "fsync", args.size, half.count)
        same.rate = half.rate
        bench.baseline("fsync", [same])
    by_name = {p.name: p for p in phases.values()}
    by_name["half"] = half
    checks = evaluate(by_name)
    consistent = checks_db["tickets"] >= sum(
        p.accepted for p in phases.values() if p.server == "supportgate"
    )
    table = render(list(phases.values()), checks)
    ceiling: dict[str, float] = {}
    if "fsync 4K" in by_name and "bare 4K" in by_name:
        # Not a target: how close the end-to-end target can come on this machine at all.
        fsync, bare = by_name["fsync 4K"], by_name["bare 4K"]
        parse_ms = parse_cpu_ms(args.size, 1000, args.seed)
        top = e2e_ceiling(fsync, parse_ms, int(facts["nproc"]))
        ceiling = {
            "parse_cpu_ms": parse_ms,
            "tickets_per_s": top,
            "of_bare": top / bare.accept_per_s,
        }
        table += (
            f"\nCeiling, not a target: durable accept at the fsync sink's CPU "
            f"({fmt(cpu_ms_per_message(fsync, 'server', 'client'), 3)} ms a message, server and "
            f"client) and the workers' parser alone ({fmt(parse_ms, 3)} ms), every other stage "
            f"free, on all {facts['nproc']} cores: {fmt(top)} tickets/s = "
            f"{ceiling['of_bare']:.1%} of the bare sink's 250/s "
            f"(target {MIN_E2E_RATIO:.0%}; Supportgate {fmt(full.e2e_per_s)}).\n"
        )
    header = (
        f"\nSupportgate ingest benchmark of {facts['commit']}, {datetime.now(UTC):%Y-%m-%d %H:%M} "
        f"UTC, {facts['nproc']} cores: {args.clients} SMTP clients, supportgate worker "
        f"--concurrency {args.worker_concurrency}"
        f"{f' under nice -n {args.worker_nice}' if args.worker_nice else ''}, acknowledgments "
        f"{'sent to a local sink' if args.relay == 'sink' else 'stored (no relay)'}; "
        f"{time.time() - started:.0f} s\n"
        "time to 250 = from the client writing MAIL FROM (or, rate-limited, from the message's "
        "due time if later) to reading the 250 after the data; CPU = cores used during the run "
        "(for Supportgate until every message was a ticket)\n"
    )
    print(header)
    print(table)
    print(f"database after the runs: {json.dumps(checks_db)}")
    if not consistent:
        print("WARNING: fewer tickets than accepted messages")
    result = {
        "at": datetime.now(UTC).isoformat(),
        "machine": facts,
        "args": {k: str(v) for k, v in vars(args).items()},
        "phases": [asdict(p) for p in phases.values()],
        "checks": [{"target": n, "pass": ok, "measured": got} for n, ok, got in checks],
        "database": checks_db,
        "ceiling": ceiling,
    }
    (args.out / "results.json").write_text(json.dumps(result, indent=1, default=str))
    (args.out / "results.md").write_text(header + "\n" + table)
    return 0 if all(ok for _, ok, _ in checks) and consistent else 1


if __name__ == "__main__":
    sys.exit(main())
