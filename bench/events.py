"""Live events under load: N SSE subscribers, a writer at R changes/s.

For each N in ``--subscribers`` (default 1,000 and 5,000), on 127.0.0.1:

* a real ``supportgate events`` process (PostgreSQL + Redis, product defaults)
  and N subscribers on ``GET /api/v1/events`` (an admin token: every event),
  spread over ``--client-procs`` client processes (uvloop, raw sockets);
* a writer process that changes tickets through the domain services at
  ``--rate`` changes/s for ``--duration`` s, noting each commit's wall time;
* in the same run, a bare Redis pub/sub subscriber: the writer also publishes
  its commit time on a channel of its own right after each commit, so its
  latency is the floor that Redis itself sets on this machine.

Reported: commit-to-receipt latency p50/p99/max over every (event, subscriber)
pair; missed and duplicated events per subscriber (each must receive every
position of the run exactly once, in order); the events process's RSS (peak)
and CPU; the bare Redis subscriber's p50/p99. ``--results`` appends a section
to bench/RESULTS.md.

    .venv/bin/python bench/events.py                      # 1,000 and 5,000
    .venv/bin/python bench/events.py --subscribers 200 --duration 5   # smoke

The benchmark creates (and drops) its own database ``sg_bench_events`` and
uses Redis database 15; it refuses to drop a database it did not create.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import os
import re
import resource
import socket
import subprocess
import sys
import time
from array import array
from datetime import date
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

MARKER = "created by bench/events.py"
ID_RE = re.compile(rb"\nid: (\d+)\n")


# --- helpers ---------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def raise_nofile(want: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = min(max(soft, want), hard)
    resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    if target < want:
        print(f"warning: open files limited to {target} (< {want})", file=sys.stderr)


def percentile(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return float("nan")
    return sorted_values[min(len(sorted_values) - 1, int(q * len(sorted_values)))]


def tree_stats(pid: int) -> tuple[int, float]:
    """(RSS bytes, CPU seconds) of a process and its children (forked workers)."""
    rss, cpu = proc_stats(pid)
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as children:
            for child in children.read().split():
                child_rss, child_cpu = proc_stats(int(child))
                rss, cpu = rss + child_rss, cpu + child_cpu
    except OSError:
        pass
    return rss, cpu


def proc_stats(pid: int) -> tuple[int, float]:
    """(RSS bytes, CPU seconds) of a process."""
    rss = 0
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                rss = int(line.split()[1]) * 1024
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return rss, (int(fields[11]) + int(fields[12])) / ticks


def create_database(server: str, name: str) -> str:
    import psycopg

    admin = server.replace("postgresql+psycopg://", "postgresql://") + "/postgres"
    with psycopg.connect(admin, autocommit=True) as conn:
        row = conn.execute(
            "SELECT shobj_description(oid, 'pg_database') FROM pg_database WHERE datname = %s",
            (name,),
        ).fetchone()
        if row is not None:
            if row[0] != MARKER:
                raise SystemExit(f"database {name} exists and was not created by this benchmark")
            conn.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{name}"')
        conn.execute(f"COMMENT ON DATABASE \"{name}\" IS '{MARKER}'")
    return f"{server}/{name}"


def drop_database(server: str, name: str) -> None:
    import psycopg

    admin = server.replace("postgresql+psycopg://", "postgresql://") + "/postgres"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


# --- subscribers (client processes) ----------------------------------------------------


def client_main(port: int, token: str, count: int, pipe: Any) -> None:
    """Open ``count`` SSE connections; report when all are live; on "stop", report results."""
    import uvloop

    raise_nofile(count + 256)
    request = (
        f"GET /api/v1/events HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
        f"Authorization: Bearer {token}\r\nAccept: text/event-stream\r\n\r\n"
    ).encode()
    # One record per read, not per event: (receipt time, first id, last id).
    # A staff subscriber's ids are contiguous, which ``count`` checks per read.
    reads_t: array[float] = array("d")
    reads_first: array[int] = array("q")
    reads_last: array[int] = array("q")
    conns: list[Sub] = []

    class Sub(asyncio.Protocol):
        def __init__(self) -> None:
            self.carry = b""
            self.ready = False
            self.first: int | None = None
            self.last: int | None = None
            self.count = self.gaps = self.dups = 0
            self.closed = False

        def connection_made(self, transport: Any) -> None:
            transport.write(request)

        def data_received(self, data: bytes) -> None:
            now = time.time()
            buf = self.carry + data
            cut = buf.rfind(b"\n\n")
            if cut < 0:
                self.carry = buf
                return
            self.carry = buf[cut + 2 :]
            if not self.ready and b": connected" in buf:
                self.ready = True
            start = buf.find(b"\nid: ", 0, cut + 2)
            if start < 0:
                return
            end = buf.rfind(b"\nid: ", 0, cut + 2)
            low = int(buf[start + 5 : buf.index(b"\n", start + 5)])
            high = int(buf[end + 5 : buf.index(b"\n", end + 5)])
            seen = buf.count(b"\nid: ", 0, cut + 2)
            if seen != high - low + 1:  # not contiguous within the read: count it as missed
                self.gaps += high - low + 1 - seen
            if self.last is not None:
                if low <= self.last:
                    self.dups += self.last - low + 1
                    low = self.last + 1
                    if low > high:
                        return
                else:
                    self.gaps += low - self.last - 1
            else:
                self.first = low
            self.last = high
            self.count += high - low + 1
            reads_t.append(now)
            reads_first.append(low)
            reads_last.append(high)

        def connection_lost(self, exc: Exception | None) -> None:
            self.closed = True

    async def main() -> None:
        loop = asyncio.get_running_loop()
        for i in range(count):
            for attempt in range(20):
                try:
                    _, sub = await loop.create_connection(Sub, "127.0.0.1", port)
                    break
                except OSError:
                    await asyncio.sleep(0.05 * (attempt + 1))
            else:
                raise SystemExit("cannot connect")
            conns.append(sub)
            if i % 200 == 199:
                await asyncio.sleep(0.05)  # let the server authenticate the last batch
        deadline = time.monotonic() + 120
        while not all(c.ready for c in conns) and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        pipe.send(("ready", sum(c.ready for c in conns)))
        cpu_before = time.process_time()
        await loop.run_in_executor(None, pipe.recv)  # "stop"
        pipe.send(
            (
                "result",
                {
                    "conns": [(c.first, c.last, c.count, c.gaps, c.dups, c.closed) for c in conns],
                    "reads": (reads_t.tobytes(), reads_first.tobytes(), reads_last.tobytes()),
                    "cpu": time.process_time() - cpu_before,
                },
            )
        )

    uvloop.run(main())


# --- the writer and the bare Redis subscriber ---------------------------------------------


def writer_main(url: str, redis_url: str, rate: float, duration: float, pipe: Any) -> None:
    import redis
    from sqlalchemy import select

    from gateway.db import Database
    from gateway.permissions import Principal
    from gateway.tickets.models import Ticket
    from gateway.tickets.schemas import TicketUpdate
    from gateway.tickets.services import update_ticket

    db = Database(url, pool_size=2)
    bare = redis.Redis.from_url(redis_url)
    system = Principal.system()
    with db.transaction() as session:
        ids = list(session.scalars(select(Ticket.id).order_by(Ticket.number)))
    commits: dict[int, float] = {}
    total = int(rate * duration)
    start = time.monotonic() + 0.2
    for k in range(total):
        wait = start + k / rate - time.monotonic()
        if wait > 0:
            time.sleep(wait)
        with db.transaction() as session:
            ticket = session.get(Ticket, ids[k % len(ids)])
            update_ticket(session, system, ticket, TicketUpdate(title=f"bench {k}"))
        committed = time.time()
        commits[k] = committed
        bare.publish("bench:bare", f"{k} {committed!r}")
    bare.publish("bench:bare", "end 0")
    db.dispose()
    pipe.send(commits)


def bare_main(redis_url: str, pipe: Any) -> None:
    """The bare subscriber; it also notes when each position appears on the product's
    channel, which splits the product's latency into relay (commit -> Redis) and the rest."""
    import redis

    from adapters.live.relay import channel_for

    product = channel_for(redis_url)
    client = redis.Redis.from_url(redis_url)
    pubsub = client.pubsub(ignore_subscribe_messages=True)
    pubsub.subscribe("bench:bare", product)
    pipe.send("ready")
    latencies = []
    published: dict[int, float] = {}
    for message in pubsub.listen():
        now = time.time()
        if message["channel"] == product.encode():
            for item in json.loads(message["data"]):
                published[int(item["position"])] = now
            continue
        key, sent = message["data"].split()
        if key == b"end":
            break
        latencies.append(now - float(sent))
    pipe.send((latencies, published))


# --- one run --------------------------------------------------------------------------


def seed(url: str, tickets: int) -> str:
    from gateway.db import Database
    from gateway.migrations import upgrade
    from gateway.permissions import Principal
    from gateway.tickets.schemas import TicketCreate
    from gateway.tickets.services import create_ticket
    from gateway.users.services import add_user_cli

    upgrade(url)
    db = Database(url, null_pool=True)
    with db.transaction() as session:
        _, token = add_user_cli(session, "bench@example.com", "admin", "Bench", None)
        for i in range(tickets):
            create_ticket(
                session,
                Principal.system(),
                TicketCreate(title=f"bench ticket {i}", customer_email=f"c{i}@example.org"),
                channel="api",
            )
    db.dispose()
    return token


def run_once(args: argparse.Namespace, subscribers: int) -> dict[str, Any]:
    server = args.pg_server
    name = "sg_bench_events"
    url = create_database(server, name)
    token = seed(url, 10)
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("SUPPORTGATE_")}
    env.update(
        SUPPORTGATE_DATABASE_URL=url,
        SUPPORTGATE_REDIS_URL=args.redis_url,
        SUPPORTGATE_EVENTS_PORT=str(port),
        SUPPORTGATE_RATE_LIMIT_PER_MINUTE="0",
        SUPPORTGATE_AUTH_FAILURES_PER_MINUTE="0",
        SUPPORTGATE_LOG_LEVEL="WARNING",
        SUPPORTGATE_EVENTS_WORKERS=str(args.events_workers),
        SUPPORTGATE_EVENTS_LINGER_MS=str(args.linger_ms),
        SUPPORTGATE_DATA_DIR=str(args.out / "data"),
    )
    raise_nofile(subscribers + 1024)
    log = (args.out / f"events-{subscribers}.log").open("wb")
    server_proc = subprocess.Popen(
        [sys.executable, "-m", "web.cli", "events"], cwd=ROOT, env=env, stdout=log, stderr=log
    )
    ctx = mp.get_context("spawn")
    clients: list[tuple[Any, Any]] = []
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline or server_proc.poll() is not None:
                    raise SystemExit("events server did not start; see " + log.name) from None
                time.sleep(0.1)
        # The relay positions the seed events first; subscribers start after them.
        time.sleep(1.0)
        per = [subscribers // args.client_procs] * args.client_procs
        per[0] += subscribers - sum(per)
        for count in per:
            parent, child = ctx.Pipe()
            proc = ctx.Process(target=client_main, args=(port, token, count, child))
            proc.start()
            clients.append((proc, parent))
        connect_started = time.monotonic()
        ready = sum(parent.recv()[1] for _, parent in clients)
        connect_seconds = time.monotonic() - connect_started
        if ready != subscribers:
            raise SystemExit(f"only {ready} of {subscribers} subscribers connected")
        bare_parent, bare_child = ctx.Pipe()
        bare = ctx.Process(target=bare_main, args=(args.redis_url, bare_child))
        bare.start()
        bare_parent.recv()
        time.sleep(args.warmup)
        rss_idle, cpu_before = tree_stats(server_proc.pid)
        load = os.getloadavg()[0]
        writer_parent, writer_child = ctx.Pipe()
        writer = ctx.Process(
            target=writer_main,
            args=(url, args.redis_url, args.rate, args.duration, writer_child),
        )
        writer.start()
        rss_peak = rss_idle
        while not writer_parent.poll(0.5):
            rss_peak = max(rss_peak, tree_stats(server_proc.pid)[0])
        commits: dict[int, float] = writer_parent.recv()
        writer.join()
        time.sleep(args.drain)
        rss_end, cpu_after = tree_stats(server_proc.pid)
        rss_peak = max(rss_peak, rss_end)
        bare_latencies, published = bare_parent.recv()
        bare.join()
        results = []
        for _, parent in clients:
            parent.send("stop")
            results.append(parent.recv()[1])
        for proc, _ in clients:
            proc.join(30)
    finally:
        for proc, _ in clients:
            if proc.is_alive():
                proc.kill()
        server_proc.terminate()
        try:
            server_proc.wait(15)
        except subprocess.TimeoutExpired:
            server_proc.kill()
        log.close()

    # Positions of the writer's changes, and the commit time of each.
    import psycopg

    with psycopg.connect(url.replace("postgresql+psycopg://", "postgresql://")) as conn:
        rows = conn.execute(
            "SELECT position, data->'changes'->'title'->>1 FROM events "
            "WHERE type = 'ticket.updated' ORDER BY position"
        ).fetchall()
    drop_database(server, name)
    commit_of = {int(p): commits[int(t.split()[1])] for p, t in rows}
    first, last = min(commit_of), max(commit_of)
    latencies: list[float] = []
    for result in results:
        raw_t, raw_first, raw_last = result["reads"]
        times, firsts, lasts = array("d", raw_t), array("q", raw_first), array("q", raw_last)
        for received, low, high in zip(times, firsts, lasts, strict=True):
            for position in range(low, high + 1):
                committed = commit_of.get(position)
                if committed is not None:
                    latencies.append(received - committed)
    latencies.sort()
    missed = duplicated = incomplete = 0
    for result in results:
        for c_first, c_last, _count, gaps, dups, _closed in result["conns"]:
            missed += gaps
            duplicated += dups
            if c_first is None or c_first > first or c_last is None or c_last < last:
                incomplete += 1
                missed += (
                    (c_first - first if c_first is not None and c_first > first else 0)
                    + (last - c_last if c_last is not None and c_last < last else 0)
                    + (last - first + 1 if c_first is None else 0)
                )
    bare_latencies.sort()
    relay = sorted(published[p] - c for p, c in commit_of.items() if p in published)
    return {
        "subscribers": subscribers,
        "events": len(commit_of),
        "deliveries": len(latencies),
        "expected_deliveries": len(commit_of) * subscribers,
        "connect_s": connect_seconds,
        "p50_ms": percentile(latencies, 0.50) * 1000,
        "p99_ms": percentile(latencies, 0.99) * 1000,
        "max_ms": (latencies[-1] if latencies else float("nan")) * 1000,
        "missed": missed,
        "duplicated": duplicated,
        "incomplete_subscribers": incomplete,
        "load": load,
        "rss_idle_mb": rss_idle / 2**20,
        "rss_peak_mb": rss_peak / 2**20,
        "cpu_pct": 100 * (cpu_after - cpu_before) / (args.duration + args.drain),
        "bare_p50_ms": percentile(bare_latencies, 0.50) * 1000,
        "bare_p99_ms": percentile(bare_latencies, 0.99) * 1000,
        "bare_received": len(bare_latencies),
        "relay_p50_ms": percentile(relay, 0.50) * 1000,
        "relay_p99_ms": percentile(relay, 0.99) * 1000,
        "client_cpu_pct": [
            100 * r["cpu"] / (args.warmup + args.duration + args.drain) for r in results
        ],
    }


# --- report -----------------------------------------------------------------------------


def machine() -> str:
    def sh(cmd: str) -> str:
        return subprocess.run(cmd, shell=True, capture_output=True, text=True).stdout.strip()  # noqa: S602

    model = sh("lscpu | sed -n 's/^Model name: *//p'")
    mem = sh("free -g | awk '/^Mem:/ {print $2}'")
    python = sys.version.split()[0]
    return f"{sh('nproc')} CPUs ({model}), {mem} GiB RAM, {sh('uname -sr')}, Python {python}"


def report(args: argparse.Namespace, runs: list[dict[str, Any]]) -> str:
    lines = [
        "## Live events: SSE fan-out (`bench/events.py`)",
        "",
        f"Date: {args.date}. Machine: {machine()}. Shared with other work while it ran: "
        f'"load" is the 1-minute load average when each run\'s writer started.',
        "",
        f"`supportgate events` with {args.events_workers} worker process(es) "
        f"(PostgreSQL + Redis; linger {args.linger_ms} ms, heartbeat 10 s; RSS and CPU are "
        f"summed over the relay process and the workers); N SSE subscribers on 127.0.0.1 over "
        f"{args.client_procs} client processes; a writer making {args.rate:g} ticket changes/s "
        f"for {args.duration:g} s through the domain services. Latency is from the writer's "
        f"commit to a subscriber reading the event, over every (event, subscriber) pair. "
        f'"bare Redis" is a plain redis-py subscriber to a message the writer publishes right '
        f"after each commit, in the same run.",
        "",
        "| subscribers | load | events | deliveries | p50 ms | p99 ms | max ms | missed | dup. "
        "| RSS peak MB | events CPU % | clients CPU % | relay p50 / p99 ms "
        "| bare Redis p50 / p99 ms |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in runs:
        lines.append(
            f"| {r['subscribers']:,} | {r['load']:.1f} | {r['events']:,} | {r['deliveries']:,} "
            f"| {r['p50_ms']:.1f} | {r['p99_ms']:.1f} | {r['max_ms']:.1f} "
            f"| {r['missed']} | {r['duplicated']} | {r['rss_peak_mb']:.0f} "
            f"| {r['cpu_pct']:.0f} | {' + '.join(f'{c:.0f}' for c in r['client_cpu_pct'])} "
            f"| {r['relay_p50_ms']:.1f} / {r['relay_p99_ms']:.1f} "
            f"| {r['bare_p50_ms']:.2f} / {r['bare_p99_ms']:.2f} |"
        )
    lines += [
        "",
        "Targets at 5,000 subscribers: p99 under 250 ms, RSS under 500 MB, zero missed.",
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--subscribers", default="1000,5000")
    parser.add_argument("--rate", type=float, default=50.0)
    parser.add_argument("--duration", type=float, default=30.0)
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--drain", type=float, default=3.0)
    parser.add_argument("--client-procs", type=int, default=2)
    parser.add_argument("--events-workers", type=int, default=1, help="SUPPORTGATE_EVENTS_WORKERS")
    parser.add_argument(
        "--linger-ms", type=int, default=75, help="SUPPORTGATE_EVENTS_LINGER_MS (the default 75)"
    )
    parser.add_argument("--pg-server", default="postgresql+psycopg://postgres@127.0.0.1:5432")
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/15")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "out")
    parser.add_argument("--results", type=Path, default=None, help="append a section here")
    parser.add_argument("--date", default=date.today().isoformat())
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    runs = []
    for n in (int(x) for x in args.subscribers.split(",")):
        print(f"--- {n} subscribers", file=sys.stderr)
        result = run_once(args, n)
        print(json.dumps(result, indent=1), file=sys.stderr)
        runs.append(result)
    (args.out / "events.json").write_text(json.dumps(runs, indent=1))
    text = report(args, runs)
    print(text)
    if args.results:
        with args.results.open("a") as results:
            results.write("\n" + text)


if __name__ == "__main__":
    main()
