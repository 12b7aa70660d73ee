"""The load test of issue 6: sixteen trainings write to one PostgreSQL server while two
analysts query it, and every row arrives exactly once.

The workload, the checks and the baseline live in benchmarks/load_bench.py, so that the
benchmark and this test run the same thing; here it runs at the issue's size against the
server the test session starts (a Unix socket: nothing leaves the machine), within a time
limit. The test asserts correctness only; it prints the rows per second of trainprov next to
a raw psycopg COPY of the same rows into tables LIKE trainprov's, from as many processes,
measured in the same session (see docs/benchmarks.md, "Load test", for how to read them).
"""

from __future__ import annotations

import os
import sys

from conftest import ROOT

sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
import load_bench  # noqa: E402  (the benchmark is a script, not a package)

#: the issue's size: 16 processes x 2,000 epochs x 10 metrics, and a step row every 10 of
#: 100 steps (10 per epoch: 320,000 step rows, which keeps the test near a minute on 2 cores)
WORKLOAD = load_bench.Workload(processes=16, epochs=2000, steps_per_epoch=100, step_every=10)
#: the whole test gives up (and kills every process it started) after this many seconds
TIME_LIMIT = 600.0


def test_sixteen_trainings_and_two_readers_on_one_server_keep_every_row_exactly_once(postgres, capsys):
    store = postgres.create_database("load")

    report = load_bench.run_load(store, WORKLOAD, readers=2, pause=0.5, timeout=TIME_LIMIT)

    with capsys.disabled():  # the numbers are the point of running it: show them without -s too
        print("\n" + load_bench.format_report(report))
    # Each problem names what went wrong: a row missing, twice or with another value, a
    # run or task not finished, a reader that saw a gap or got an error, a warning from
    # trainprov, a process that failed, the time limit.
    assert report.problems == []
    assert [c.kind for c in report.comparisons] == ["epoch", "batched"]
    for comparison in report.comparisons:
        assert len(comparison.trainprov.writers) == WORKLOAD.processes
        assert len(comparison.baseline.writers) == WORKLOAD.processes
        # the readers really read while the trainings wrote
        assert [r["complete_rounds"] > 0 for r in comparison.trainprov.readers] == [True, True]
