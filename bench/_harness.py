"""Shared plumbing of bench/ingest.py and bench/workers.py.

Processes in their own sessions (stopped by process group, also on Ctrl-C),
a private Redis, a PostgreSQL database the benchmark created itself (marked
with ``COMMENT ON DATABASE`` and never any other dropped), CPU accounting
from /proc, percentiles and the machine's description.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent


def log(message: str) -> None:
    print(f"[{datetime.now().strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


class BenchError(Exception):
    """The run cannot go on; the message says why (exit status 2)."""


def raise_on_term() -> None:
    """SIGTERM and SIGHUP end the run like Ctrl-C does: through the cleanup."""

    def on_term(signum: int, _frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGHUP, on_term)


# --- ports and processes ----------------------------------------------------------------------


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, timeout: float, proc: Proc | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and not proc.alive():
            raise BenchError(f"{proc.name} exited ({proc.returncode()}):\n{proc.tail()}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.5):
            return
        time.sleep(0.1)
    raise BenchError(f"nothing listens on 127.0.0.1:{port} after {timeout:.0f} s")


def venv_bin(name: str) -> str:
    candidate = Path(sys.executable).parent / name
    found = str(candidate) if candidate.exists() else shutil.which(name)
    if not found:
        raise BenchError(f"`{name}` not found next to {sys.executable} nor on PATH")
    return found


class Proc:
    """A process (tree) in its own session; ``stop`` ends its whole process group."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str], log_path: Path) -> None:
        self.name, self.argv, self.env, self.log_path = name, argv, env, log_path
        self.popen: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        assert self.popen is not None
        return self.popen.pid

    def start(self, stdin: int | None = subprocess.DEVNULL) -> Proc:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as sink:
            self.popen = subprocess.Popen(
                self.argv,
                env=self.env,
                cwd=self.log_path.parent,
                stdin=stdin,
                stdout=sink,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        return self

    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def returncode(self) -> int | None:
        return None if self.popen is None else self.popen.poll()

    def tail(self, chars: int = 3000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def wait(self, timeout: float) -> int:
        assert self.popen is not None
        return self.popen.wait(timeout)

    def stop(self, timeout: float = 15.0) -> None:
        popen, self.popen = self.popen, None
        if popen is None:
            return
        if popen.poll() is None:
            for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 5.0)):
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(popen.pid, sig)
                try:
                    popen.wait(wait)
                    break
                except subprocess.TimeoutExpired:
                    continue
        # Children of a leader that is gone could linger in its group: sweep it.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(popen.pid, signal.SIGKILL)


class Procs:
    """Every process the run started; ``stop_all`` stops them newest first."""

    def __init__(self) -> None:
        self.items: list[Proc] = []

    def start(self, proc: Proc, **kwargs: Any) -> Proc:
        self.items.append(proc)
        return proc.start(**kwargs)

    def stop(self, proc: Proc) -> None:
        proc.stop()
        if proc in self.items:
            self.items.remove(proc)

    def stop_all(self) -> None:
        for proc in reversed(self.items):
            with contextlib.suppress(Exception):
                proc.stop()
        self.items.clear()


def start_redis(procs: Procs, workdir: Path) -> tuple[Proc, int]:
    """A private Redis (no persistence) on a free loopback port."""
    server = shutil.which("redis-server")
    if server is None:
        raise BenchError("redis-server not found (Debian: apt-get install -y redis-server)")
    port = free_port()
    workdir.mkdir(parents=True, exist_ok=True)
    argv = [
        server, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
        "--appendonly", "no", "--dir", str(workdir), "--protected-mode", "yes",
    ]  # fmt: skip
    proc = procs.start(Proc("redis", argv, dict(os.environ), workdir / "redis.log"))
    wait_port(port, 15, proc)
    return proc, port


# --- the benchmark's own database ---------------------------------------------------------------


def conninfo(url: str, database: str | None = None) -> str:
    """A libpq URL for psycopg from the SQLAlchemy URL (``postgresql+psycopg://``)."""
    from sqlalchemy.engine import make_url

    parsed = make_url(url).set(drivername="postgresql")
    if database is not None:
        parsed = parsed.set(database=database)
    return parsed.render_as_string(hide_password=False)


def db_name(url: str) -> str:
    from sqlalchemy.engine import make_url

    name = make_url(url).database or ""
    if not name or name in ("postgres", "template0", "template1"):
        raise BenchError(f"refusing to use database {name!r}: give the benchmark its own")
    return name


def _marker(conn: Any, name: str, marker: str) -> str | None:
    """'ours', 'foreign' or None (no such database)."""
    row = conn.execute(
        "SELECT shobj_description(oid, 'pg_database') FROM pg_database WHERE datname = %s",
        [name],
    ).fetchone()
    if row is None:
        return None
    try:
        found = json.loads(row[0] or "")
    except ValueError:
        return "foreign"
    return "ours" if isinstance(found, dict) and marker in found else "foreign"


def create_database(url: str, marker: str) -> None:
    """A fresh, empty database; an older one is dropped only if this benchmark made it."""
    import psycopg

    name = db_name(url)
    try:
        admin = psycopg.connect(conninfo(url, "postgres"), autocommit=True)
    except psycopg.Error as exc:
        raise BenchError(f"PostgreSQL unreachable at {conninfo(url, 'postgres')}: {exc}") from exc
    with admin:
        found = _marker(admin, name, marker)
        if found == "foreign":
            raise BenchError(
                f"database {name!r} exists and was not created by this benchmark; "
                "pick another name with --database-url"
            )
        if found == "ours":
            admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
        admin.execute(f'CREATE DATABASE "{name}"')
        comment = json.dumps({marker: {"created": datetime.now().isoformat()}})
        admin.execute(f"COMMENT ON DATABASE \"{name}\" IS '{comment}'")


def drop_database(url: str, marker: str) -> None:
    import psycopg

    name = db_name(url)
    with psycopg.connect(conninfo(url, "postgres"), autocommit=True) as admin:
        if _marker(admin, name, marker) == "ours":
            admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')


# --- CPU accounting -------------------------------------------------------------------------------

_CLK = os.sysconf("SC_CLK_TCK")
# A backend ("postgres: 15/main: USER DB HOST(PORT) STATE") or an autovacuum worker names its
# database; background processes (checkpointer, walwriter, ...) name none.
_PG_TITLE = re.compile(
    r"postgres: [^:]+: (?:autovacuum worker (\S+)|\S+ (\S+) (?:\S+\(\d+\)|\[local\]))"
)


def _machine_ticks() -> int:
    """Ticks all CPUs ran anything (user nice system irq softirq), idle/iowait/steal excluded."""
    return _stat()[0]


def _stat() -> tuple[int, int]:
    """(busy, steal) ticks of all CPUs: user nice system idle iowait irq softirq steal."""
    with open("/proc/stat") as fh:
        cpu = [int(x) for x in fh.readline().split()[1:9]]
    return sum(cpu) - cpu[3] - cpu[4] - cpu[7], cpu[7]


@dataclass
class CpuSnapshot:
    groups: dict[str, dict[int, int]]
    machine: int
    at: float
    steal: int = 0  # ticks the hypervisor gave to other guests: a noisy host


def cpu_snapshot(groups: dict[str, Iterable[int]], dbname: str) -> CpuSnapshot:
    """CPU ticks per pid for named process groups (by pgid), plus ``postgres``: the backends of
    ``dbname`` and PostgreSQL's background processes (not other databases' backends)."""
    by_pgid = {pgid: name for name, pgids in groups.items() for pgid in pgids}
    out: dict[str, dict[int, int]] = {name: {} for name in [*groups, "postgres"]}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            raw = Path(entry.path, "stat").read_text()
            comm = raw[raw.find("(") + 1 : raw.rfind(")")]
            fields = raw[raw.rfind(")") + 2 :].split()
            ticks = int(fields[11]) + int(fields[12])
            pgid = int(fields[2])
            if pgid in by_pgid:
                out[by_pgid[pgid]][int(entry.name)] = ticks
            elif comm == "postgres":
                title = Path(entry.path, "cmdline").read_bytes().replace(b"\0", b" ").decode()
                found = _PG_TITLE.match(title)
                if found is None or dbname in found.groups():
                    out["postgres"][int(entry.name)] = ticks
        except (OSError, ValueError, IndexError):
            continue
    busy, steal = _stat()
    return CpuSnapshot(out, busy, time.monotonic(), steal)


def cpu_cores(before: CpuSnapshot, after: CpuSnapshot) -> dict[str, float]:
    """Cores used per group between two snapshots, and ``other``: the rest of the machine."""
    seconds = max(after.at - before.at, 1e-6)
    cores: dict[str, float] = {}
    for name, pids in after.groups.items():
        prev = before.groups.get(name, {})
        cores[name] = sum(t - prev.get(pid, 0) for pid, t in pids.items()) / _CLK / seconds
    machine = (after.machine - before.machine) / _CLK / seconds
    cores["other"] = max(0.0, machine - sum(cores.values()))
    cores["steal"] = (after.steal - before.steal) / _CLK / seconds
    return cores


def busy_cores(seconds: float = 1.0) -> float:
    b0, t0 = _machine_ticks(), time.monotonic()
    time.sleep(seconds)
    return (_machine_ticks() - b0) / _CLK / (time.monotonic() - t0)


def wait_quiet(limit: float, timeout: float) -> float:
    """Wait (bounded) until the machine uses fewer than ``limit`` cores; returns the last load."""
    deadline = time.monotonic() + timeout
    while True:
        load = busy_cores()
        if load <= limit or time.monotonic() >= deadline:
            if load > limit:
                log(f"warning: the machine is busy ({load:.2f} cores) before a run; going on")
            return load


# --- numbers --------------------------------------------------------------------------------------


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100); NaN for no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


def fmt(value: float, digits: int = 1) -> str:
    return "n/a" if value is None or math.isnan(value) else f"{value:,.{digits}f}"


# --- the machine ---------------------------------------------------------------------------------


def _run(argv: list[str]) -> str:
    try:
        return subprocess.run(argv, capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "n/a"


def machine_facts(url: str) -> dict[str, Any]:
    import psycopg

    facts: dict[str, Any] = {
        "nproc": _run(["nproc"]),
        "free_h": _run(["free", "-h"]),
        "lscpu": "\n".join(_run(["lscpu"]).splitlines()[:20]),
        "python": sys.version.split()[0],
        "redis": _run(["redis-server", "--version"]),
    }
    try:
        with psycopg.connect(conninfo(url, "postgres"), autocommit=True) as conn:
            row = conn.execute("SELECT version()").fetchone()
            facts["postgresql"] = row[0] if row else "n/a"
            settings = conn.execute(
                "SELECT name, setting FROM pg_settings WHERE name IN "
                "('synchronous_commit', 'fsync', 'wal_sync_method', 'shared_buffers', "
                "'max_connections')"
            ).fetchall()
            facts["postgresql_settings"] = dict(settings)
    except psycopg.Error as exc:
        facts["postgresql"] = f"n/a ({exc})"
    commit = _run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"])
    dirty = _run(["git", "-C", str(REPO), "status", "--porcelain", "--", "gateway", "web",
                  "workers", "adapters"])  # fmt: skip
    facts["commit"] = commit + (" + uncommitted product changes" if dirty else "")
    return facts


# --- profiles ----------------------------------------------------------------------------------


def profile_summary(path: Path, within: str | None = None, top: int = 25) -> str:
    """The hottest functions of a py-spy ``--format raw`` (collapsed stacks) file.

    ``within`` keeps only the stacks that pass through a frame containing that text (e.g.
    ``run_outbox`` for the task bodies of a Celery pool process). Inclusive share: samples
    with the function anywhere on the stack; self share: samples with it on top.
    """
    inclusive: dict[str, int] = {}
    own: dict[str, int] = {}
    total = 0
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return f"(no profile at {path})"
    for line in lines:
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        frames = [re.sub(r":\d+\)$", ")", f) for f in stack.split(";")]
        if within is not None:
            at = next((i for i, f in enumerate(frames) if within in f), None)
            if at is None:
                continue
            frames = frames[at:]  # the frames above are the same for every sample
        n = int(count)
        total += n
        for name in set(frames):
            if not name.startswith("process "):
                inclusive[name] = inclusive.get(name, 0) + n
        own[frames[-1]] = own.get(frames[-1], 0) + n
    if not total:
        return f"(no samples{' within ' + within if within else ''} in {path})"
    out = [f"{total} samples{' within ' + within if within else ''} ({path.name})", "inclusive:"]
    for name, n in sorted(inclusive.items(), key=lambda kv: -kv[1])[:top]:
        out.append(f"  {100 * n / total:5.1f}%  {name}")
    out.append("self:")
    for name, n in sorted(own.items(), key=lambda kv: -kv[1])[: max(10, top // 2)]:
        out.append(f"  {100 * n / total:5.1f}%  {name}")
    return "\n".join(out)
