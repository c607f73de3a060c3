"""Attachment throughput and memory through the real API, against a plain file copy.

What it does, in one run on one disk:

1. makes a 25 MiB file of random bytes in the output directory;
2. times a plain copy of it on the same filesystem (``shutil.copyfile``, and
   the same followed by ``fsync``, which is what the store does) — the anchor;
3. starts ``supportgate api`` under gunicorn (embedded SQLite, local storage in
   the same output directory, the product's default workers and threads) and
   times uploads (``POST /api/v1/tickets/{id}/attachments``, multipart) and
   downloads (``GET /api/v1/attachments/{id}``) of the same file over
   127.0.0.1, checking every download's sha256;
4. measures the peak RSS of the API worker processes during one 25 MiB
   upload and one download against their idle RSS (the kernel's high-water
   mark ``VmHWM``, reset through ``/proc/PID/clear_refs`` before each
   measurement; where that cannot be written, ``/proc`` is polled every 2 ms).

Targets (issue 8): upload and download at least 50% of the copy's MB/s;
peak RSS during the upload under 2x the file size above idle.

    .venv/bin/python bench/attachments.py                # 25 MiB, 7 rounds
    .venv/bin/python bench/attachments.py --rounds 3 --size-mib 10
    .venv/bin/python bench/attachments.py --results bench/RESULTS.md --date 2026-11-26

``--results`` adds the run as a dated subsection (``--date``, ``--label``) at
the top of this benchmark's section of that file (between its markers),
keeping the earlier runs and leaving every other section as it was. Nothing is sent to any
address but 127.0.0.1.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import statistics
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(1, str(Path(__file__).resolve().parents[1]))  # gateway.config

from _harness import (
    BenchError,
    Proc,
    Procs,
    free_port,
    log,
    raise_on_term,
    venv_bin,
    wait_port,
)

from gateway.config import Settings

MIB = 1024 * 1024
REPO = Path(__file__).resolve().parents[1]
START = "<!-- bench/attachments.py: start -->"
END = "<!-- bench/attachments.py: end -->"


# --- /proc -----------------------------------------------------------------------


def _status(pid: int) -> dict[str, int]:
    out: dict[str, int] = {}
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            name, _, value = line.partition(":")
            if name in ("VmRSS", "VmHWM"):
                out[name] = int(value.split()[0]) * 1024
    return out


def _children(pid: int) -> list[int]:
    found: list[int] = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as fh:
                fields = fh.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(entry))
    return found


def _reset_hwm(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


class PeakRss:
    """Peak RSS of some processes while a block runs (VmHWM, else polling)."""

    def __init__(self, pids: list[int]) -> None:
        self.pids = pids
        self.idle = {pid: _status(pid)["VmRSS"] for pid in pids}
        self.peak = dict(self.idle)
        self._stop = threading.Event()
        self.method = "VmHWM after clear_refs"

    def __enter__(self) -> PeakRss:
        if not all(_reset_hwm(pid) for pid in self.pids):
            self.method = "polling VmRSS every 2 ms"
            self._thread = threading.Thread(target=self._poll, daemon=True)
            self._thread.start()
        return self

    def _poll(self) -> None:
        while not self._stop.is_set():
            for pid in self.pids:
                self.peak[pid] = max(self.peak[pid], _status(pid)["VmRSS"])
            time.sleep(0.002)

    def __exit__(self, *exc: object) -> None:
        if self.method.startswith("polling"):
            self._stop.set()
            self._thread.join()
        else:
            for pid in self.pids:
                self.peak[pid] = max(self.peak[pid], _status(pid)["VmHWM"])

    def worst(self) -> tuple[int, int, int]:
        """(idle, peak, peak - idle) of the process that grew most."""
        pid = max(self.pids, key=lambda p: self.peak[p] - self.idle[p])
        return self.idle[pid], self.peak[pid], self.peak[pid] - self.idle[pid]


# --- measurements -------------------------------------------------------------------


def timed(
    fn: Callable[[], Any], rounds: int, check: Callable[[Any], None] | None = None
) -> list[float]:
    """Seconds of each round of ``fn``; ``check`` looks at its result, untimed."""
    seconds = []
    for _ in range(rounds):
        started = time.perf_counter()
        result = fn()
        seconds.append(time.perf_counter() - started)
        if check is not None:
            check(result)
    return seconds


def mbps(size: int, seconds: list[float]) -> dict[str, float]:
    rates = sorted(size / MIB / s for s in seconds)
    return {"median": statistics.median(rates), "min": rates[0], "max": rates[-1]}


def copy_plain(src: Path, dst: Path) -> None:
    shutil.copyfile(src, dst)


def copy_fsync(src: Path, dst: Path) -> None:
    shutil.copyfile(src, dst)
    with open(dst, "rb+") as fh:
        os.fsync(fh.fileno())


def multipart_body(path: Path, boundary: str) -> bytes:
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; '
        f'filename="{path.name}"\r\nContent-Type: application/octet-stream\r\n\r\n'
    ).encode()
    return head + path.read_bytes() + f"\r\n--{boundary}--\r\n".encode()


def run(args: argparse.Namespace) -> dict[str, Any]:
    import requests

    load_before = os.getloadavg()[0]
    out = Path(args.out).resolve()
    if out.exists():
        shutil.rmtree(out)
    (out / "data").mkdir(parents=True)
    size = args.size_mib * MIB
    source = out / "source.bin"
    with open(source, "wb") as fh:
        for _ in range(args.size_mib):
            fh.write(os.urandom(MIB))
    digest = hashlib.sha256(source.read_bytes()).hexdigest()

    log(f"plain copy of {args.size_mib} MiB on {out} x{args.rounds}")
    copy_dst = out / "copy.bin"
    copy = mbps(size, timed(lambda: copy_plain(source, copy_dst), args.rounds))
    copy_synced = mbps(size, timed(lambda: copy_fsync(source, copy_dst), args.rounds))
    copy_dst.unlink()

    port = free_port()
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("SUPPORTGATE_")},
        "SUPPORTGATE_DATA_DIR": str(out / "data"),
        "SUPPORTGATE_API_HOST": "127.0.0.1",
        "SUPPORTGATE_API_PORT": str(port),
        "SUPPORTGATE_API_WORKERS": str(args.workers),
        "SUPPORTGATE_API_THREADS": str(args.threads),
        "SUPPORTGATE_RATE_LIMIT_PER_MINUTE": "0",
        "SUPPORTGATE_LOG_LEVEL": "WARNING",
    }
    cli = venv_bin("supportgate")
    import subprocess

    subprocess.run([cli, "db", "upgrade"], env=env, check=True, capture_output=True, timeout=120)
    added = subprocess.run(
        [cli, "user", "add", "bench@example.com", "--role", "agent"],
        env=env,
        check=True,
        capture_output=True,
        text=True,
        timeout=60,
    )
    token = added.stdout.strip().splitlines()[-1]
    procs = Procs()
    try:
        api = procs.start(Proc("api", [cli, "api"], env, out / "api.log"))
        wait_port(port, 60, api)
        base = f"http://127.0.0.1:{port}/api/v1"
        session = requests.Session()
        session.headers["Authorization"] = f"Bearer {token}"
        ticket = session.post(
            f"{base}/tickets", json={"title": "bench", "customer_email": "c@example.org"}
        ).json()
        boundary = "benchboundary" + os.urandom(8).hex()
        body = multipart_body(source, boundary)
        headers = {"Content-Type": f"multipart/form-data; boundary={boundary}"}
        url = f"{base}/tickets/{ticket['id']}/attachments"
        created: list[dict[str, Any]] = []

        def upload() -> None:
            response = session.post(url, data=body, headers=headers)
            if response.status_code != 201:
                raise BenchError(f"upload answered {response.status_code}: {response.text[:300]}")
            created.append(response.json())

        def download() -> list[bytes]:
            response = session.get(f"{base}/attachments/{created[0]['id']}", stream=True)
            if response.status_code != 200:
                raise BenchError(f"download answered {response.status_code}")
            return list(response.iter_content(MIB))

        def same_bytes(chunks: list[bytes]) -> None:
            check = hashlib.sha256()
            for chunk in chunks:
                check.update(chunk)
            if check.hexdigest() != digest:
                raise BenchError("download was not the uploaded bytes")

        upload()  # warm-up: imports, first connection, libmagic's database
        same_bytes(download())
        workers = _children(api.pid)
        # gunicorn: the master's children are the workers.
        if not workers:
            raise BenchError("found no gunicorn workers")
        time.sleep(1)
        with PeakRss(workers) as upload_rss:
            upload()
        with PeakRss(workers) as download_rss:
            download()
        log(f"API upload/download of {args.size_mib} MiB x{args.rounds}")
        uploads = mbps(size, timed(upload, args.rounds))
        downloads = mbps(size, timed(download, args.rounds, same_bytes))
        if any(c["sha256"] != digest for c in created):
            raise BenchError("an upload's sha256 differs from the file's")
    finally:
        procs.stop_all()
    idle, peak, grown = upload_rss.worst()
    d_idle, d_peak, d_grown = download_rss.worst()
    return {
        "size_mib": args.size_mib,
        "rounds": args.rounds,
        "workers": args.workers,
        "threads": args.threads,
        "copy_mbps": copy,
        "copy_fsync_mbps": copy_synced,
        "upload_mbps": uploads,
        "download_mbps": downloads,
        "upload_rss": {"idle": idle, "peak": peak, "grown": grown, "method": upload_rss.method},
        "download_rss": {"idle": d_idle, "peak": d_peak, "grown": d_grown},
        "filesystem": _run_quiet(["df", "-hT", str(out)]).splitlines()[-1:],
        "load_before": load_before,
        "load_after": os.getloadavg()[0],
    }


def _run_quiet(argv: list[str]) -> str:
    import subprocess

    try:
        return subprocess.run(argv, capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "n/a"


# --- report --------------------------------------------------------------------------


def _commit() -> str:
    """HEAD's short hash, read from .git directly (no git process)."""
    try:
        head = (REPO / ".git" / "HEAD").read_text().strip()
        if head.startswith("ref: "):
            ref = head[5:]
            loose = REPO / ".git" / ref
            if loose.exists():
                head = loose.read_text().strip()
            else:
                packed = (REPO / ".git" / "packed-refs").read_text().splitlines()
                head = next(line.split()[0] for line in packed if line.endswith(" " + ref))
        return head[:7]
    except (OSError, StopIteration):
        return "n/a"


def machine() -> dict[str, str]:
    lscpu = _run_quiet(["lscpu"])
    model = re.search(r"Model name:\s*(.+)", lscpu)
    mem = re.search(r"Mem:\s+(\S+)", _run_quiet(["free", "-h"]))
    return {
        "nproc": _run_quiet(["nproc"]),
        "cpu": model.group(1).strip() if model else "n/a",
        "memory": mem.group(1) if mem else "n/a",
        "python": sys.version.split()[0],
        "commit": _commit(),
    }


HEADING = "## Attachments: 25 MiB through the API vs a plain file copy (`bench/attachments.py`)"


def report(result: dict[str, Any], facts: dict[str, str], date: str, label: str = "") -> str:
    """One dated subsection (``### date``) of this benchmark's section."""
    size = result["size_mib"]
    copy = result["copy_mbps"]["median"]
    synced = result["copy_fsync_mbps"]["median"]
    up = result["upload_mbps"]
    down = result["download_mbps"]
    rss = result["upload_rss"]
    drss = result["download_rss"]
    limit = 2 * size * MIB

    def row(name: str, m: dict[str, float], note: str) -> str:
        return f"| {name} | {m['median']:,.0f} | {m['min']:,.0f} to {m['max']:,.0f} | {note} |"

    ok_up = up["median"] >= 0.5 * synced
    ok_down = down["median"] >= 0.5 * copy
    ok_rss = rss["grown"] < limit
    return "\n".join(
        [
            f"### {date}{': ' + label if label else ''}",
            "",
            f"Machine: {facts['nproc']} cores ({facts['cpu']}), "
            f"{facts['memory']} RAM, Python {facts['python']}, commit {facts['commit']} "
            "plus work not yet committed. "
            f"`supportgate api` under gunicorn ({result['workers']} workers x "
            f"{result['threads']} threads, gthread), embedded SQLite, local storage; "
            f"client `requests` over 127.0.0.1; {result['rounds']} rounds each after a "
            f"warm-up, a {size} MiB file of random bytes, every download checked by sha256. "
            f"Filesystem: `{' '.join(result['filesystem'])}`. Machine load (1-minute "
            f"average) {result['load_before']:.1f} before and {result['load_after']:.1f} after "
            "the run: other work shared the cores, so absolute figures are noisy; "
            "the ratios compare runs made side by side.",
            "",
            "| what | MB/s (median) | range | compared with |",
            "|---|---:|---:|---|",
            row("plain copy (`shutil.copyfile`)", result["copy_mbps"], "—"),
            row("plain copy + fsync", result["copy_fsync_mbps"], "— (what the store does)"),
            row(
                "API upload (multipart → sniff, hash, fsync, rename)",
                up,
                f"{up['median'] / synced:.0%} of copy+fsync, {up['median'] / copy:.0%} of copy "
                f"— target ≥ 50% of copy+fsync: {'PASS' if ok_up else 'FAIL'}",
            ),
            row(
                "API download (`wsgi.file_wrapper` → sendfile)",
                down,
                f"{down['median'] / copy:.0%} of copy — target ≥ 50%: "
                f"{'PASS' if ok_down else 'FAIL'}",
            ),
            "",
            "| API worker RSS | idle | peak | above idle |",
            "|---|---:|---:|---:|",
            f"| during a {size} MiB upload | {rss['idle'] / MIB:,.1f} MiB | "
            f"{rss['peak'] / MIB:,.1f} MiB | {rss['grown'] / MIB:,.1f} MiB |",
            f"| during a {size} MiB download | {drss['idle'] / MIB:,.1f} MiB | "
            f"{drss['peak'] / MIB:,.1f} MiB | {drss['grown'] / MIB:,.1f} MiB |",
            "",
            f"Memory target: under 2x the file size ({2 * size} MiB) above idle during the "
            f"upload: {'PASS' if ok_rss else 'FAIL'} (measured as {rss['method']}).",
        ]
    )


def write_results(path: Path, subsection: str) -> None:
    """Add ``subsection`` to this benchmark's section of ``path``, newest first,
    keeping the earlier subsections and every other section as they were."""
    text = path.read_text() if path.exists() else "# Benchmark results\n"
    if START in text and END in text:
        before, rest = text.split(START, 1)
        body, after = rest.split(END, 1)
        heading, _, earlier = body.strip("\n").partition("\n")
        if not heading.startswith("## "):
            heading, earlier = HEADING, body.strip("\n")
        section = f"{heading}\n\n{subsection}\n\n{earlier.strip()}".rstrip()
        text = f"{before}{START}\n{section}\n{END}{after}"
    else:
        text = f"{text.rstrip()}\n\n{START}\n{HEADING}\n\n{subsection}\n{END}\n"
    path.write_text(text)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-mib", type=int, default=25)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--workers", type=int, default=2, help="gunicorn workers (default 2)")
    parser.add_argument(
        "--threads",
        type=int,
        default=Settings.model_fields["api_threads"].default,
        help="threads per worker (default: the product's)",
    )
    parser.add_argument("--out", default=str(Path(__file__).parent / "out" / "attachments"))
    parser.add_argument("--results", help="update this markdown file's section (RESULTS.md)")
    parser.add_argument("--date", default=time.strftime("%Y-%m-%d"))
    parser.add_argument("--label", default="", help="title of the dated subsection")
    args = parser.parse_args()
    raise_on_term()
    try:
        result = run(args)
    except BenchError as exc:
        print(f"bench: {exc}", file=sys.stderr)
        return 2
    facts = machine()
    Path(args.out, "result.json").write_text(json.dumps({**result, "machine": facts}, indent=2))
    section = report(result, facts, args.date, args.label)
    print(section)
    if args.results:
        write_results(Path(args.results), section)
    return 0


if __name__ == "__main__":
    sys.exit(main())
