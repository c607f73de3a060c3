"""Slack events under load: signed thread replies at a fixed rate against /slack/events.

What it measures:

* **ack time** of ``POST /slack/events`` for agents' thread replies sent at a
  fixed rate (default 200/s, open loop: a request is due at its slot whether
  or not earlier ones were answered; its time is counted from its slot, so a
  stall shows up in the figures instead of slowing the load down). Slack's
  limit is 3 s; the target here is p99 < 300 ms. Each request stores the event
  (unique event_id) and its task in one PostgreSQL transaction before the 200.
* **every reply emailed once**: each reply carries a unique token; after the
  load, the run waits until the local SMTP sink holds every token exactly once.

What runs (all on this machine, loopback only):

    load generator (this process, threads) ──► supportgate api (gunicorn) ──► PostgreSQL
    local Slack Web API (tests/fakes, this process)                              ▲
    local SMTP sink (aiosmtpd, this process) ◄── supportgate worker (Celery) ─────┘
                                                 or supportgate tasks (--tasks embedded)

Usage::

    .venv/bin/python bench/slack.py                 # 200/s for 10 s, Celery workers
    .venv/bin/python bench/slack.py --rate 100 --duration 5 --tasks embedded
    .venv/bin/python bench/slack.py --help

Prints the figures and writes them to bench/out/slack.json.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import sys
import threading
import time
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from email import message_from_bytes, policy
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._harness import (
    BENCH_DIR,
    BenchError,
    Proc,
    Procs,
    create_database,
    drop_database,
    free_port,
    log,
    machine_facts,
    percentile,
    raise_on_term,
    start_redis,
    venv_bin,
    wait_port,
)
from gateway.config import Settings

MARKER = "supportgate-bench-slack"
SUPPORT = "help@bench.example.com"
AGENT_SLACK = "U0BENCHAGT"


@dataclass
class Sink:
    """The SMTP relay: counts each reply token it sees."""

    tokens: Counter[str] = field(default_factory=Counter)
    mails: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        mail = message_from_bytes(envelope.original_content, policy=policy.default)
        body = mail.get_body(("plain",))
        text = body.get_content() if body is not None else ""
        with self.lock:
            self.mails += 1
            for word in text.split():
                if word.startswith("bench-reply-"):
                    self.tokens[word] += 1
        return "250 OK"


def signed(secret: str, body: str) -> dict[str, str]:
    import hashlib
    import hmac

    ts = str(int(time.time()))
    digest = hmac.new(secret.encode(), f"v0:{ts}:{body}".encode(), hashlib.sha256).hexdigest()
    return {
        "Content-Type": "application/json",
        "X-Slack-Request-Timestamp": ts,
        "X-Slack-Signature": "v0=" + digest,
    }


def event_body(index: int, channel: str, thread_ts: str) -> str:
    ts = f"{time.time():.6f}"
    return json.dumps(
        {
            "team_id": "T0BENCH",
            "api_app_id": "A0BENCH",
            "type": "event_callback",
            "event_id": f"Ev{uuid.uuid4().hex[:14].upper()}",
            "event_time": int(time.time()),
            "event": {
                "type": "message",
                "channel": channel,
                "user": AGENT_SLACK,
                "text": f"Thanks for waiting. bench-reply-{index} Regards.",
                "ts": ts,
                "thread_ts": thread_ts,
                "event_ts": ts,
                "channel_type": "channel",
            },
        }
    )


class Client:
    """One keep-alive HTTP connection per load thread."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.local = threading.local()

    def post(self, path: str, body: bytes, headers: dict[str, str]) -> int:
        conn = getattr(self.local, "conn", None)
        for attempt in (1, 2):
            if conn is None:
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
                self.local.conn = conn
            try:
                conn.request("POST", path, body=body, headers=headers)
                response = conn.getresponse()
                response.read()
                return response.status
            except (ConnectionError, http.client.HTTPException):
                conn.close()
                conn = self.local.conn = None
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")


def api_json(port: int, method: str, path: str, token: str, body: Any = None) -> Any:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request(
            method,
            path,
            body=json.dumps(body) if body is not None else None,
            headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
        )
        response = conn.getresponse()
        data = response.read()
        if response.status >= 300:
            raise BenchError(f"{method} {path}: {response.status} {data[:300]!r}")
        return json.loads(data) if data else None
    finally:
        conn.close()


def run(args: argparse.Namespace) -> dict[str, Any]:
    from aiosmtpd.controller import Controller

    from tests.fakes.slack_api import BOT_TOKEN, FakeSlack

    out = BENCH_DIR / "out"
    work = out / "slack-run"
    work.mkdir(parents=True, exist_ok=True)
    procs = Procs()
    sink = Sink()
    smtp_port, api_port = free_port(), free_port()
    controller = Controller(sink, hostname="127.0.0.1", port=smtp_port)
    controller.start()
    fake_cm = FakeSlack().serve()
    fake = next(fake_cm)
    secret = uuid.uuid4().hex
    create_database(args.database_url, MARKER)
    try:
        env = {k: v for k, v in os.environ.items() if not k.startswith("SUPPORTGATE_")}
        env.update(
            SUPPORTGATE_DATA_DIR=str(work / "data"),
            SUPPORTGATE_DATABASE_URL=args.database_url,
            SUPPORTGATE_API_PORT=str(api_port),
            SUPPORTGATE_API_WORKERS=str(args.api_workers),
            SUPPORTGATE_API_THREADS=str(args.api_threads),
            SUPPORTGATE_SUPPORT_ADDRESS=SUPPORT,
            SUPPORTGATE_OUTBOUND_SMTP_URL=f"smtp://127.0.0.1:{smtp_port}",
            SUPPORTGATE_SLACK_BOT_TOKEN=BOT_TOKEN,
            SUPPORTGATE_SLACK_SIGNING_SECRET=secret,
            SUPPORTGATE_SLACK_CHANNEL="support",
            SUPPORTGATE_SLACK_API_URL=fake.base_url,
            SUPPORTGATE_RATE_LIMIT_PER_MINUTE="0",
            SUPPORTGATE_LOG_LEVEL="WARNING",
            SUPPORTGATE_MAINTENANCE_INTERVAL="0",
        )
        if args.tasks == "celery":
            _, redis_port = start_redis(procs, work / "redis")
            env["SUPPORTGATE_REDIS_URL"] = f"redis://127.0.0.1:{redis_port}/0"
        cli = venv_bin("supportgate")
        import subprocess

        subprocess.run([cli, "db", "upgrade"], env=env, check=True, capture_output=True)
        added = subprocess.run(
            [cli, "user", "add", "agent@bench.example.com", "--role", "agent",
             "--name", "Bench Agent", "--slack-id", AGENT_SLACK],
            env=env, check=True, capture_output=True, text=True,
        )  # fmt: skip
        token = added.stdout.strip().splitlines()[-1]
        api = procs.start(Proc("api", [cli, "api"], env, work / "api.log"))
        wait_port(api_port, 60, api)
        if args.tasks == "celery":
            worker = [cli, "worker", f"--concurrency={args.worker_concurrency}", "--no-beat"]
            procs.start(Proc("worker", worker, env, work / "worker.log"))
        else:
            procs.start(Proc("tasks", [cli, "tasks"], env, work / "tasks.log"))

        log(f"creating {args.tickets} tickets and waiting for their Slack posts")
        tickets = [
            api_json(api_port, "POST", "/api/v1/tickets", token,
                     {"title": f"Bench ticket {i}", "customer_email": f"c{i}@bench.example.org"})
            for i in range(args.tickets)
        ]  # fmt: skip
        deadline = time.monotonic() + 120
        while len(fake.parents()) < len(tickets):
            if time.monotonic() > deadline:
                raise BenchError(f"only {len(fake.parents())} of {len(tickets)} tickets posted")
            time.sleep(0.2)
        threads = [(m.channel, m.ts) for m in fake.parents()]

        total = int(args.rate * args.duration)
        log(f"sending {total} signed thread replies at {args.rate}/s")
        bodies = [event_body(i, *threads[i % len(threads)]).encode() for i in range(total)]
        client = Client(api_port)
        latencies: list[float] = [0.0] * total
        service: list[float] = [0.0] * total
        statuses: list[int] = [0] * total
        interval = 1.0 / args.rate
        pool = ThreadPoolExecutor(max_workers=args.connections)

        def fire(i: int, due: float) -> None:
            headers = signed(secret, bodies[i].decode())
            started = time.perf_counter()
            try:
                statuses[i] = client.post("/slack/events", bodies[i], headers)
            except OSError:
                statuses[i] = -1
            done = time.perf_counter()
            latencies[i] = done - due
            service[i] = done - started

        start = time.perf_counter() + 0.2
        for i in range(total):
            due = start + i * interval
            pause = due - time.perf_counter()
            if pause > 0:
                time.sleep(pause)
            pool.submit(fire, i, due)
        pool.shutdown(wait=True)
        sent_for = time.perf_counter() - start
        log(f"load done in {sent_for:.1f} s; waiting for every reply at the SMTP sink")

        wanted = {f"bench-reply-{i}" for i in range(total)}
        drain_started = time.perf_counter()
        deadline = time.monotonic() + args.drain_timeout
        while True:
            with sink.lock:
                seen = set(sink.tokens) & wanted
            if len(seen) == len(wanted) or time.monotonic() > deadline:
                break
            time.sleep(0.25)
        drained_after = time.perf_counter() - drain_started
        time.sleep(2.0)  # anything sent twice would arrive now
        with sink.lock:
            counts = dict(sink.tokens)
        missing = sorted(wanted - set(counts), key=lambda t: int(t.rsplit("-", 1)[1]))
        doubled = {t: n for t, n in counts.items() if n > 1}
        ms = [x * 1000 for x in latencies]
        service_ms = [x * 1000 for x in service]
        return {
            "rate": args.rate,
            "duration_s": args.duration,
            "requests": total,
            "sent_for_s": round(sent_for, 2),
            "achieved_rate": round(total / sent_for, 1),
            "status_counts": dict(Counter(statuses)),
            "ack_ms": {
                "p50": round(percentile(ms, 50), 1),
                "p90": round(percentile(ms, 90), 1),
                "p99": round(percentile(ms, 99), 1),
                "max": round(max(ms), 1),
            },
            "service_ms_p99": round(percentile(service_ms, 99), 1),
            "replies_emailed": len(set(counts) & wanted),
            "missing": len(missing),
            "missing_first": missing[:10],
            "emailed_twice": len(doubled),
            "drained_after_load_s": round(drained_after, 1),
            "tasks": args.tasks,
            "api": f"gunicorn gthread {args.api_workers} workers x {args.api_threads} threads",
            "tickets": args.tickets,
            "machine": machine_facts(args.database_url),
        }
    finally:
        procs.stop_all()
        controller.stop()
        with contextlib.suppress(StopIteration):
            next(fake_cm)
        if not args.keep_database:
            drop_database(args.database_url, MARKER)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rate", type=float, default=200.0, help="requests per second")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds of load")
    parser.add_argument("--tickets", type=int, default=20, help="threads the replies go to")
    parser.add_argument("--tasks", choices=("celery", "embedded"), default="celery")
    parser.add_argument("--worker-concurrency", type=int, default=2)
    parser.add_argument("--api-workers", type=int, default=2)
    parser.add_argument(
        "--api-threads", type=int, default=Settings.model_fields["api_threads"].default
    )
    parser.add_argument("--connections", type=int, default=32, help="load threads")
    parser.add_argument("--drain-timeout", type=float, default=300.0)
    parser.add_argument(
        "--database-url",
        default="postgresql+psycopg://postgres@127.0.0.1:5432/sg_bench_slack",
        help="a database of the benchmark's own (created and dropped by it)",
    )
    parser.add_argument("--keep-database", action="store_true")
    args = parser.parse_args()
    raise_on_term()
    try:
        result = run(args)
    except BenchError as exc:
        print(f"bench/slack.py: {exc}", file=sys.stderr)
        return 2
    out = BENCH_DIR / "out" / "slack.json"
    out.write_text(json.dumps(result, indent=2))
    ack = result["ack_ms"]
    print(
        f"requests            {result['requests']} at {result['rate']:.0f}/s "
        f"(achieved {result['achieved_rate']}/s), statuses {result['status_counts']}"
    )
    print(
        f"ack time (ms)       p50 {ack['p50']}  p90 {ack['p90']}  p99 {ack['p99']}  "
        f"max {ack['max']}   (target p99 < 300)"
    )
    print(
        f"replies emailed     {result['replies_emailed']} of {result['requests']}, "
        f"missing {result['missing']}, emailed twice {result['emailed_twice']}, "
        f"all in {result['drained_after_load_s']} s after the load"
    )
    print(f"tasks               {result['tasks']}; api {result['api']}")
    print(f"written to          {out}")
    ok = (
        ack["p99"] < 300
        and result["missing"] == 0
        and result["emailed_twice"] == 0
        and set(result["status_counts"]) == {200}
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
