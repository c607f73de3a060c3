"""bench/ingest.py's ceiling: the end-to-end rate if only durable accept and parsing cost CPU."""

from __future__ import annotations

import random
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
import ingest

from adapters.email.parsing import parse_message


def test_the_ceiling_divides_every_core_by_accept_and_parse_cpu_a_message() -> None:
    fsync = ingest.Phase("fsync 4K", "fsync", 4096, 1000, accepted=1000, accept_per_s=500.0)
    # 0.4 + 0.1 cores at 500/s: 1.0 ms a message; parsing 1.5 ms more: 2 cores / 2.5 ms.
    fsync.cpu_accept = {"server": 0.4, "client": 0.1, "workers": 9.0, "postgres": 9.0}
    assert ingest.cpu_ms_per_message(fsync, "server", "client") == pytest.approx(1.0)
    assert ingest.e2e_ceiling(fsync, 1.5, 2) == pytest.approx(800.0)


def test_the_parser_is_timed_on_the_bench_s_own_messages() -> None:
    _, raw = ingest.make_message("t", 3, 4096, random.Random(1))
    parsed = parse_message(raw)
    assert parsed.quarantined is None
    assert "(t-3)" in parsed.subject
    assert parsed.text.strip()
    assert ingest.parse_cpu_ms(4096, 20, 1) > 0
