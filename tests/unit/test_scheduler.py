from __future__ import annotations

import threading

from workers.scheduler import PeriodicRunner


def test_runner_ticks_survives_failures_and_stops():
    calls: list[int] = []
    ticked = threading.Event()

    def job():
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("first run fails")
        if len(calls) >= 3:
            ticked.set()

    runner = PeriodicRunner(0.01, job, first_delay=0.0)
    runner.start()
    assert ticked.wait(5)
    runner.stop(5)
    seen = len(calls)
    assert seen >= 3
    assert not runner._thread.is_alive()
