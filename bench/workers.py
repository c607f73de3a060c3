"""Celery worker benchmark: the ingest task against a no-op task, same broker settings.

For each worker size (``--concurrency``, default 1 and 2 pool processes of one worker):

1. **no-op**: a tiny Celery app built by the product's own ``make_celery`` (so the same
   broker settings: JSON, ``task_acks_late``, ``task_reject_on_worker_lost``,
   ``worker_prefetch_multiplier=1``, time limits, visibility timeout, Redis transport) on
   its own Redis database, with one task that does nothing, run by a worker with the
   product's command-line options (prefork, ``--without-gossip --without-mingle``, four
   queues as the product consumes four);
2. **ingest**: ``supportgate worker --concurrency N`` (the real command, with its relay
   thread and embedded beat) on a fresh PostgreSQL database. The bench stores distinct
   ~4 KB messages with ``gateway.inbound.store.accept_raw`` (which writes their
   ``inbound.ingest`` outbox rows), marks those rows ``queued`` in the same transaction
   (what the relay does before it publishes, so the relay leaves them alone) and
   publishes them itself with ``workers.queue.CeleryPublisher``. Every new ticket also
   queues its acknowledgment (an ``email.send`` task on the same workers), sent to a
   local SMTP sink.

Each is measured twice: a **burst** (``--noop-tasks`` / ``--ingest-tasks`` published as
fast as possible to a warm worker: tasks per second = tasks / (first start → last end);
no-op tasks one a message, stored mail in messages of ``--rows-per-message`` rows, 16 as
the SMTP edge publishes a group commit, so an ingest "task" is one stored message and its
service time is that of the message naming it)
and a **paced** run, rows published one a message, at ``--paced-load`` (default 50 %) of
the throughput of one row a message (for ingest with ``--rows-per-message`` > 1, a second,
smaller burst measures it: at low load the SMTP edge commits mail by mail) for
``--paced-seconds``: enqueue-to-start latency p50/p99 = (task start) - (enqueue), where
enqueue is ``time.time()`` just before the bench's ``send_task`` and start is
``time.time()`` in Celery's ``task_prerun`` signal, in the pool process, just before the
task function runs (a one-line hook the bench connects in both workers; it pushes the
stamp to Redis). In a burst the wait is queueing behind the backlog, so latency is only
reported for the paced run.

Exit status: 0 target met, 1 target missed, 2 the run could not be made, 130 on Ctrl-C.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import shutil
import subprocess
import sys
import time
import traceback
import uuid
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
# The repository first: this file must not shadow the `workers` package.
sys.path[:0] = [str(REPO), str(BENCH_DIR)]  # runnable as `python bench/workers.py` from anywhere

from _harness import (  # noqa: E402
    BenchError,
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

DEFAULT_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/sg_bench_workers"
MARKER = "supportgate_bench_workers"
SUPPORT = "support@bench.example.com"
NOOP_DB = 12  # the no-op app's Redis database (the product's is 11)
RECORD_DB = 13  # where the task_prerun / task_postrun hook pushes its stamps
NOOP_QUEUES = ["bench.noop", "bench.noop-b", "bench.noop-c", "bench.noop-d"]
MIN_RATIO = 0.30  # issue 5: ingest throughput at least 30 % of the no-op rate


# --- inside the workers (`workers.py _worker noop|ingest N`) -----------------------------------


def _install_stamps() -> None:
    """task_prerun/postrun push "<arg> <time> <task name> <pid>" to Redis for each argument
    (a message may name several rows: each gets the message's start and end)."""
    import redis
    from celery.signals import task_postrun, task_prerun

    url = os.environ["BENCH_RECORD_URL"]
    clients: dict[int, Any] = {}

    def push(key: str, task: Any, args: Any) -> None:
        now = time.time()
        pid = os.getpid()
        if pid not in clients:
            clients[pid] = redis.Redis.from_url(url)
        clients[pid].rpush(key, *[f"{arg} {now:.6f} {task.name} {pid}" for arg in args or ["-"]])

    def on_pre(task: Any = None, args: Any = None, **_: Any) -> None:
        push("bench:pre", task, args)

    def on_post(task: Any = None, args: Any = None, **_: Any) -> None:
        push("bench:post", task, args)

    task_prerun.connect(on_pre, weak=False)
    task_postrun.connect(on_post, weak=False)


def worker_main(argv: list[str]) -> int:
    kind, concurrency = argv[0], int(argv[1])
    _install_stamps()
    if kind == "ingest":
        from web.cli import main as cli

        cli(["worker", "--concurrency", str(concurrency)], prog_name="supportgate")
        return 0
    from gateway.config import Settings
    from workers.celery_app import make_celery

    settings = Settings(
        redis_url=os.environ["SUPPORTGATE_REDIS_URL"],
        celery_redis_db=NOOP_DB,
        log_level=os.environ.get("SUPPORTGATE_LOG_LEVEL", "INFO"),
    )
    app = make_celery(settings, with_tasks=False)  # the product's broker settings

    @app.task(name="bench.noop")
    def noop(key: str) -> None:
        return None

    # The options `supportgate worker` gives Celery (web/cli.py), minus beat.
    app.worker_main(
        [
            "worker",
            f"--loglevel={settings.log_level}",
            f"--concurrency={concurrency}",
            f"--queues={','.join(NOOP_QUEUES)}",
            "--hostname=bench-noop@%h",
            "--without-gossip",
            "--without-mingle",
        ]
    )
    return 0


# --- the run ----------------------------------------------------------------------------------


@dataclass
class Result:
    task: str  # noop | ingest
    processes: int
    burst_tasks: int = 0
    publish_per_s: float = math.nan
    burst_seconds: float = math.nan
    tasks_per_s: float = math.nan
    all_tasks_per_s: float = math.nan  # ingest: ingest + acknowledgment tasks, until all done
    service_p50_ms: float = math.nan
    service_p99_ms: float = math.nan
    duplicates: int = 0  # task runs for a row that had already run (a second publish)
    burst_cpu: dict[str, float] = field(default_factory=dict)
    # ingest with --rows-per-message > 1: a second burst, one row a message (the pace
    # of the paced run: at low load the SMTP edge commits, and publishes, mail by mail)
    single_tasks_per_s: float = math.nan
    paced_rate: float = math.nan
    paced_tasks: int = 0
    latency_p50_ms: float = math.nan
    latency_p90_ms: float = math.nan
    latency_p99_ms: float = math.nan
    latency_max_ms: float = math.nan
    paced_cpu: dict[str, float] = field(default_factory=dict)
    other_before: float = math.nan


class Bench:
    def __init__(self, args: argparse.Namespace, procs: Procs) -> None:
        self.args = args
        self.procs = procs
        self.out: Path = args.out
        self.dbname = db_name(args.database_url)
        self.redis_port = 0
        self.redis_pid = 0
        self.relay_port = 0
        self.relay_pid = 0
        self.rec: Any = None
        self.pg: Any = None
        self.db: Any = None
        self.seq = 0
        self.messages = 0
        self.rng = random.Random(args.seed)

    # -- setup
    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("SUPPORTGATE_")}
        env.update(
            SUPPORTGATE_DATABASE_URL=self.args.database_url,
            SUPPORTGATE_REDIS_URL=f"redis://127.0.0.1:{self.redis_port}/0",
            SUPPORTGATE_SUPPORT_ADDRESS=SUPPORT,
            SUPPORTGATE_DATA_DIR=str(self.out / "data"),
            SUPPORTGATE_MAINTENANCE_INTERVAL="0",
            BENCH_RECORD_URL=f"redis://127.0.0.1:{self.redis_port}/{RECORD_DB}",
        )
        if self.relay_port:
            env["SUPPORTGATE_OUTBOUND_SMTP_URL"] = f"smtp://127.0.0.1:{self.relay_port}"
        return env

    def setup(self) -> None:
        import psycopg
        import redis

        from gateway.db import Database

        redis_proc, self.redis_port = start_redis(self.procs, self.out / "redis")
        self.redis_pid = redis_proc.pid
        self.rec = redis.Redis(port=self.redis_port, db=RECORD_DB, decode_responses=True)
        if self.args.relay == "sink":
            self.relay_port = free_port()
            argv = [sys.executable, str(BENCH_DIR / "ingest.py"), "_sink", str(self.relay_port),
                    "bare", str(self.out / "spool")]  # fmt: skip
            relay = self.procs.start(Proc("relay-sink", argv, dict(os.environ),
                                          self.out / "relay-sink.log"))  # fmt: skip
            self.relay_pid = relay.pid
            wait_port(self.relay_port, 30, relay)
        create_database(self.args.database_url, MARKER)
        shutil.rmtree(self.out / "data", ignore_errors=True)
        subprocess.run(
            [venv_bin("supportgate"), "db", "upgrade"], env=self.env(), cwd=self.out,
            check=True, capture_output=True, timeout=120,
        )  # fmt: skip
        self.pg = psycopg.connect(conninfo(self.args.database_url), autocommit=True)
        self.db = Database(self.args.database_url, pool_size=2)

    def start_worker(self, kind: str, processes: int) -> Proc:
        self.seq += 1
        name = f"worker-{kind}-{processes}"
        argv = [sys.executable, str(Path(__file__).resolve()), "_worker", kind, str(processes)]
        proc = self.procs.start(Proc(name, argv, self.env(), self.out / f"{name}.log"))
        deadline = time.monotonic() + 60
        while " ready." not in proc.tail(20000):
            if not proc.alive() or time.monotonic() > deadline:
                raise BenchError(f"the {kind} worker did not start:\n{proc.tail()}")
            time.sleep(0.2)
        return proc

    # -- publishing
    def noop_publisher(self) -> Any:
        from gateway.config import Settings
        from workers.celery_app import make_celery

        settings = Settings(
            redis_url=f"redis://127.0.0.1:{self.redis_port}/0", celery_redis_db=NOOP_DB
        )
        app = make_celery(settings, with_tasks=False)

        def publish(*keys: str) -> None:  # one message a task
            for key in keys:
                app.send_task("bench.noop", args=[key], queue=NOOP_QUEUES[0])

        return publish

    def ingest_publisher(self) -> Any:
        from gateway.config import Settings
        from workers.queue import CeleryPublisher, make_publisher_app

        settings = Settings(redis_url=f"redis://127.0.0.1:{self.redis_port}/0")
        # As the SMTP edge publishes (web/cli.py): up to 16 rows of a batch a message.
        publisher = CeleryPublisher(
            make_publisher_app(settings), rows_per_message=self.args.rows_per_message
        )

        def publish(*keys: str) -> None:  # up to --rows-per-message rows a message
            publisher.publish([(uuid.UUID(key), "inbound.ingest") for key in keys])

        return publish

    def store(self, count: int) -> list[str]:
        """Store ``count`` distinct messages as the SMTP edge does; their rows marked queued."""
        from ingest import make_message
        from sqlalchemy import update

        from gateway.db import utcnow
        from gateway.events import OutboxTask
        from gateway.inbound.store import accept_raw

        ids: list[str] = []
        batch = 50
        for start in range(0, count, batch):
            with self.db.transaction() as session:
                keys = []
                for _ in range(start, min(count, start + batch)):
                    self.messages += 1  # distinct senders: acknowledgments are not rate-limited
                    sender, raw = make_message("w", self.messages, self.args.size, self.rng)
                    raw = raw.replace(b"\r\n..", b"\r\n.")  # undo the SMTP dot-stuffing
                    mail_id = accept_raw(
                        session, raw, source="smtp", envelope_from=sender, recipients=[SUPPORT]
                    )
                    keys.append(f"inbound.ingest:{mail_id}")
                queued = session.scalars(
                    update(OutboxTask)
                    .where(OutboxTask.idempotency_key.in_(keys))
                    .values(state="queued", updated_at=utcnow())
                    .returning(OutboxTask.id)
                    .execution_options(synchronize_session=False)
                )
                ids += [str(i) for i in queued]
        return ids

    # -- stamps
    def stamps(self, key: str, name: str) -> dict[str, float]:
        out: dict[str, float] = {}
        for line in self.rec.lrange(key, 0, -1):
            first, at, task, _pid = line.split(" ")
            if task == name:
                out.setdefault(first, float(at))
        return out

    def wait_done(self, keys: set[str], name: str, timeout: float) -> dict[str, float]:
        deadline = time.monotonic() + timeout
        while True:
            post = self.stamps("bench:post", name)
            if keys <= post.keys():
                return post
            if time.monotonic() > deadline:
                raise BenchError(
                    f"{len(keys - post.keys())} of {len(keys)} {name} tasks not done "
                    f"within --phase-timeout"
                )
            time.sleep(0.05)

    def unsettled(self) -> int:
        row = self.pg.execute(
            "SELECT count(*) FROM outbox_tasks WHERE state NOT IN ('done', 'dead')"
        ).fetchone()
        return int(row[0])

    # -- one worker size, one task
    def measure(self, kind: str, processes: int) -> Result:
        args = self.args
        result = Result(kind, processes)
        name = "bench.noop" if kind == "noop" else "supportgate.ingest"
        publish = self.noop_publisher() if kind == "noop" else self.ingest_publisher()
        worker = self.start_worker(kind, processes)
        groups = {"workers": [worker.pid], "redis": [self.redis_pid], "bench": [os.getpgrp()]}
        if self.relay_pid:
            groups["relay"] = [self.relay_pid]

        def keys(count: int) -> list[str]:
            if kind == "noop":
                return [uuid.uuid4().hex for _ in range(count)]
            return self.store(count)

        try:
            # Warm-up: every pool process has built its state and run some tasks.
            warm = keys(args.warmup)
            publish(*warm)
            self.wait_done(set(warm), name, args.phase_timeout)
            self.settle()

            # Burst.
            burst = keys(args.noop_tasks if kind == "noop" else args.ingest_tasks)
            self.rec.delete("bench:pre", "bench:post")
            result.other_before = wait_quiet(args.quiet_cores, args.quiet_timeout)
            snap0 = cpu_snapshot(groups, self.dbname)
            t0 = time.time()
            publish(*burst)  # ingest: in messages of a batch, as the SMTP edge publishes
            result.publish_per_s = len(burst) / (time.time() - t0)
            post = self.wait_done(set(burst), name, args.phase_timeout)
            snap1 = cpu_snapshot(groups, self.dbname)
            pre = self.stamps("bench:pre", name)
            first, last = min(pre[k] for k in burst), max(post[k] for k in burst)
            result.burst_tasks = len(burst)
            result.burst_seconds = last - first
            result.tasks_per_s = len(burst) / result.burst_seconds
            service = [(post[k] - pre[k]) * 1000 for k in burst]
            result.service_p50_ms = percentile(service, 50)
            result.service_p99_ms = percentile(service, 99)
            result.burst_cpu = cpu_cores(snap0, snap1)
            if kind == "ingest":
                self.settle()
            lines = [x.split(" ") for x in self.rec.lrange("bench:post", 0, -1)]
            distinct = {(x[0], x[2]) for x in lines}
            result.all_tasks_per_s = len(distinct) / (max(float(x[1]) for x in lines) - first)
            result.duplicates = len(lines) - len(distinct)
            log(
                f"{kind} x{processes}: burst {len(burst)} tasks, {fmt(result.tasks_per_s)}/s "
                f"(published at {fmt(result.publish_per_s)}/s), service p50 "
                f"{fmt(result.service_p50_ms, 2)} ms"
            )

            if kind == "ingest" and args.rows_per_message > 1:
                single = keys(args.ingest_tasks // 2)
                self.rec.delete("bench:pre", "bench:post")
                wait_quiet(args.quiet_cores, args.quiet_timeout)
                for key in single:
                    publish(key)
                post = self.wait_done(set(single), name, args.phase_timeout)
                pre = self.stamps("bench:pre", name)
                seconds = max(post[k] for k in single) - min(pre[k] for k in single)
                result.single_tasks_per_s = len(single) / seconds
                self.settle()
                log(f"{kind} x{processes}: one row a message, {fmt(result.single_tasks_per_s)}/s")

            # Paced: enqueue-to-start latency at a fraction of the throughput (of rows
            # published one a message, as they are paced).
            capacity = result.tasks_per_s
            if not math.isnan(result.single_tasks_per_s):
                capacity = result.single_tasks_per_s
            rate = capacity * args.paced_load
            count = max(10, int(rate * args.paced_seconds))
            paced = keys(count)
            self.rec.delete("bench:pre", "bench:post")
            wait_quiet(args.quiet_cores, args.quiet_timeout)
            enqueued: dict[str, float] = {}
            snap0 = cpu_snapshot(groups, self.dbname)
            t0 = time.time() + 0.05
            for i, key in enumerate(paced):
                delay = t0 + i / rate - time.time()
                if delay > 0:
                    time.sleep(delay)
                enqueued[key] = time.time()
                publish(key)
            self.wait_done(set(paced), name, args.phase_timeout)
            snap1 = cpu_snapshot(groups, self.dbname)
            pre = self.stamps("bench:pre", name)
            waits = [(pre[k] - enqueued[k]) * 1000 for k in paced]
            result.paced_rate, result.paced_tasks = rate, len(paced)
            result.latency_p50_ms = percentile(waits, 50)
            result.latency_p90_ms = percentile(waits, 90)
            result.latency_p99_ms = percentile(waits, 99)
            result.latency_max_ms = max(waits)
            result.paced_cpu = cpu_cores(snap0, snap1)
            self.settle()
            log(
                f"{kind} x{processes}: paced {len(paced)} tasks at {rate:.1f}/s, enqueue-to-start "
                f"p50 {fmt(result.latency_p50_ms, 2)} ms, p99 {fmt(result.latency_p99_ms, 2)} ms"
            )
            if args.profile and kind == "ingest":
                self.profile(worker, keys, publish, name, processes)
        finally:
            self.procs.stop(worker)
        return result

    def settle(self) -> None:
        deadline = time.monotonic() + self.args.phase_timeout
        while self.unsettled():
            if time.monotonic() > deadline:
                raise BenchError("the outbox did not settle within --phase-timeout")
            time.sleep(0.05)

    def profile(self, worker: Proc, keys: Any, publish: Any, name: str, processes: int) -> None:
        spy = (
            self.args.py_spy
            or shutil.which("py-spy")
            or str(Path(sys.executable).parent / "py-spy")
        )
        if not Path(spy).exists():
            log("no py-spy (pip install py-spy, or --py-spy PATH): skipping the profile")
            return
        import signal

        out = self.out / f"profile-ingest-x{processes}.txt"
        argv = [spy, "record", "--pid", str(worker.pid), "--subprocesses", "--rate", "200",
                "--nonblocking", "--gil", "--format", "raw", "-o", str(out)]  # fmt: skip
        spy_proc = self.procs.start(Proc("py-spy", argv, dict(os.environ), self.out / "py-spy.log"))
        time.sleep(1.0)
        burst = keys(self.args.ingest_tasks)
        log(f"profiling an extra ingest burst of {len(burst)} (not in the figures)")
        publish(*burst)
        self.wait_done(set(burst), name, self.args.phase_timeout)
        self.settle()
        if spy_proc.alive():
            os.killpg(spy_proc.pid, signal.SIGINT)
            try:
                spy_proc.wait(60)
            except subprocess.TimeoutExpired:
                log("py-spy did not finish writing its profile")
        self.procs.stop(spy_proc)
        summary = profile_summary(out, "run_outbox")
        out.with_suffix(".summary.txt").write_text(summary + "\n")
        print(f"\nprofile of the ingest worker x{processes}:\n{summary}", flush=True)
        log(f"profile (collapsed stacks) in {out}, summary in {out.with_suffix('.summary.txt')}")


# --- report -------------------------------------------------------------------------------------


def _cpu(c: dict[str, float]) -> str:
    keys = ("workers", "postgres", "redis", "relay", "bench", "other", "steal")
    return " / ".join(fmt(c[k], 2) if k in c else "-" for k in keys)


def render(results: list[Result], checks: list[tuple[str, bool, str]]) -> str:
    lines = [
        "| task | worker processes | burst tasks | tasks/s | all tasks/s (with acks) "
        "| tasks/s, one row a message "
        "| service p50 / p99 ms | paced at /s | enqueue→start p50 ms | p90 ms | p99 ms | max ms "
        "| duplicate runs | burst CPU cores: workers / PG / redis / relay sink / bench / other "
        "/ steal |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in results:
        lines.append(
            f"| {r.task} | {r.processes} | {r.burst_tasks:,} | {fmt(r.tasks_per_s)} "
            f"| {fmt(r.all_tasks_per_s)} "
            f"| {'-' if math.isnan(r.single_tasks_per_s) else fmt(r.single_tasks_per_s)} "
            f"| {fmt(r.service_p50_ms, 2)} / {fmt(r.service_p99_ms, 2)} "
            f"| {fmt(r.paced_rate)} | {fmt(r.latency_p50_ms, 2)} | {fmt(r.latency_p90_ms, 2)} "
            f"| {fmt(r.latency_p99_ms, 2)} | {fmt(r.latency_max_ms, 1)} | {r.duplicates} "
            f"| {_cpu(r.burst_cpu)} |"
        )
    lines += ["", "| target | measured | result |", "|---|---|---|"]
    lines += [f"| {name} | {got} | {'PASS' if ok else 'FAIL'} |" for name, ok, got in checks]
    return "\n".join(lines) + "\n"


def evaluate(results: list[Result]) -> list[tuple[str, bool, str]]:
    checks = []
    by = {(r.task, r.processes): r for r in results}
    for (task, processes), r in sorted(by.items()):
        if task != "ingest" or ("noop", processes) not in by:
            continue
        noop = by[("noop", processes)]
        ratio = r.tasks_per_s / noop.tasks_per_s
        checks.append((
            f"ingest tasks/s >= {MIN_RATIO:.0%} of no-op, {processes} worker process(es)",
            ratio >= MIN_RATIO,
            f"{fmt(r.tasks_per_s)} / {fmt(noop.tasks_per_s)} = {ratio:.1%}",
        ))  # fmt: skip
    return checks


# --- command line -------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="Tasks per second and enqueue-to-start latency of Supportgate's ingest task "
        "against a no-op Celery task with the same broker settings (loopback only).",
        epilog="Exit status: 0 target met, 1 target missed, 2 the run could not be made, "
        "130 interrupted. See bench/README.md.",
    )
    p.add_argument(
        "--database-url",
        default=DEFAULT_URL,
        help="a database this benchmark may create and drop (default %(default)s); an "
        "existing database it did not create is refused",
    )
    p.add_argument(
        "--concurrency",
        default="1,2",
        help="worker pool sizes to measure, comma-separated (default 1,2)",
    )
    p.add_argument("--noop-tasks", type=int, default=4000, help="no-op tasks per burst (4000)")
    p.add_argument(
        "--ingest-tasks", type=int, default=600, help="ingest tasks (stored messages) per burst"
    )
    p.add_argument("--size", type=int, default=4096, help="size of the stored messages (4096)")
    p.add_argument(
        "--rows-per-message",
        type=int,
        default=16,
        help="stored messages one Celery message names in a burst (16, as the SMTP edge "
        "publishes a group commit; 1: one message a row, as before 2026-11-27)",
    )
    p.add_argument("--warmup", type=int, default=40, help="warm-up tasks per worker (40)")
    p.add_argument(
        "--paced-load",
        type=float,
        default=0.5,
        help="paced run at this fraction of the measured throughput (0.5)",
    )
    p.add_argument("--paced-seconds", type=float, default=15.0, help="paced run length (15 s)")
    p.add_argument(
        "--relay",
        choices=("sink", "none"),
        default="sink",
        help="sink: acknowledgments are sent to a local aiosmtpd sink (default); "
        "none: stored, not sent",
    )
    p.add_argument(
        "--phase-timeout", type=float, default=600.0, help="longest a run may take (600 s)"
    )
    p.add_argument(
        "--quiet-cores",
        type=float,
        default=0.3,
        help="before each run, wait until the machine uses fewer cores than this",
    )
    p.add_argument("--quiet-timeout", type=float, default=20.0, help="…but at most this long")
    p.add_argument("--seed", type=int, default=1, help="seed of the generated messages")
    p.add_argument(
        "--profile",
        action="store_true",
        help="after each ingest measurement, an extra burst with py-spy --gil on the worker "
        "(collapsed stacks and a summary in --out)",
    )
    p.add_argument("--py-spy", default=None, help="path of py-spy (default: PATH or the venv)")
    p.add_argument("--keep", action="store_true", help="keep the database afterwards")
    p.add_argument(
        "--out",
        type=Path,
        default=BENCH_DIR / "out" / "workers",
        help="logs and results (default bench/out/workers, ignored by git)",
    )
    args = p.parse_args(argv)
    try:
        args.sizes = [int(x) for x in args.concurrency.split(",") if x.strip()]
    except ValueError:
        p.error("--concurrency takes numbers like 1,2")
    if not args.sizes or min(args.sizes) < 1:
        p.error("--concurrency takes numbers like 1,2")
    return args


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["_worker"]:
        return worker_main(argv[1:])
    args = parse_args(argv)
    args.out = args.out.resolve()
    args.out.mkdir(parents=True, exist_ok=True)
    procs = Procs()
    raise_on_term()
    bench: Bench | None = None
    try:
        bench = Bench(args, procs)
        return _main(args, bench)
    except BenchError as exc:
        log(f"error: {exc}")
        return 2
    except subprocess.CalledProcessError as exc:
        log(f"error: {exc}: {exc.stderr!r}")
        return 2
    except KeyboardInterrupt:
        log("interrupted")
        return 130
    except Exception:
        log(f"error: the run failed:\n{traceback.format_exc()}")
        return 2
    finally:
        if bench is not None:
            if bench.pg is not None:
                bench.pg.close()
            if bench.db is not None:
                bench.db.dispose()
        procs.stop_all()
        if bench is not None and not args.keep:
            try:
                drop_database(args.database_url, MARKER)
            except Exception as exc:  # cleanup must not hide the result
                log(f"could not drop the benchmark database: {exc}")
            shutil.rmtree(args.out / "data", ignore_errors=True)
            shutil.rmtree(args.out / "spool", ignore_errors=True)
        log("stopped every process this run started")


def _main(args: argparse.Namespace, bench: Bench) -> int:
    facts = machine_facts(args.database_url)
    started = time.time()
    bench.setup()
    results: list[Result] = []
    for processes in args.sizes:
        for kind in ("noop", "ingest"):
            results.append(bench.measure(kind, processes))
    checks = evaluate(results)
    table = render(results, checks)
    header = (
        f"\nSupportgate worker benchmark of {facts['commit']}, {datetime.now(UTC):%Y-%m-%d %H:%M} "
        f"UTC, {facts['nproc']} cores, {time.time() - started:.0f} s: one worker with N pool "
        "processes (prefork); same broker settings for both tasks (make_celery: JSON, acks_late, "
        "reject_on_worker_lost, prefetch 1, Redis); acknowledgments "
        f"{'sent to a local SMTP sink' if args.relay == 'sink' else 'stored (no relay)'}\n"
        "tasks/s = burst tasks / (first task_prerun -> last task_postrun); all tasks/s counts the "
        "acknowledgment tasks too, until every outbox row is done; enqueue->start = task_prerun "
        "time - time just before send_task, in the paced run\n"
    )
    print(header)
    print(table)
    result = {
        "at": datetime.now(UTC).isoformat(),
        "machine": facts,
        "args": {k: str(v) for k, v in vars(args).items()},
        "results": [asdict(r) for r in results],
        "checks": [{"target": n, "pass": ok, "measured": got} for n, ok, got in checks],
    }
    (args.out / "results.json").write_text(json.dumps(result, indent=1, default=str))
    (args.out / "results.md").write_text(header + "\n" + table)
    return 0 if checks and all(ok for _, ok, _ in checks) else 1


if __name__ == "__main__":
    sys.exit(main())
