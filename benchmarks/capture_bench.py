"""Benchmark of the write path: capture call cost, sustained ingest, visibility delay.

Run:  .venv/bin/python benchmarks/capture_bench.py  (or `make bench`)

Prints
  1. the median (and p90, p99) cost of one capture call on the caller's thread,
  2. sustained rows per second through trainprov into SQLite next to a raw sqlite3
     `executemany` of the same rows into the same table in the same run,
  3. the delay from a capture call to the row being visible to another process, with the
     writer's timer alone and right after an explicit flush().
"""

from __future__ import annotations

import argparse
import os
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time

import trainprov as tp
from trainprov.spec import ELEMENT_COLUMNS
from trainprov.store.base import iso_utc
from trainprov.store.sqlite import SQLiteBackend

FLOW = tp.Dataflow(
    "bench",
    [
        tp.Transformation(
            "train",
            generates=[
                tp.Dataset(
                    "step_metrics", step=int, epoch=int, loss=float, accuracy=float, lr=float, grad_norm=float
                )
            ],
        )
    ],
)


def row_values(i: int) -> dict:
    return dict(step=i, epoch=i // 1000, loss=1.0 / (i + 1), accuracy=0.5 + i * 1e-7, lr=1e-3, grad_norm=0.25)


def call_cost(folder: str, calls: int) -> list[float]:
    """Nanoseconds per capture call, measured call by call in a steady state."""
    samples = []
    clock = time.perf_counter_ns
    with tp.start_run(FLOW, os.path.join(folder, "calls.db"), record_agents=False) as run:
        with run.task("train") as task:
            record = task.generated
            for i in range(calls):
                values = row_values(i)
                start = clock()
                record("step_metrics", **values)
                samples.append(clock() - start)
            run.flush()
    overhead = min(_clock_overhead() for _ in range(5))
    return [max(0.0, s - overhead) for s in samples]


def _clock_overhead() -> float:
    clock = time.perf_counter_ns
    samples = []
    for _ in range(10000):
        a = clock()
        samples.append(clock() - a)
    return statistics.median(samples)


def ingest(folder: str, rows: int) -> tuple[float, float, float]:
    """Rows per second: end to end (capture calls until flushed); the writer alone (rows
    queued while it is held, then written: the store side without a caller beside it); raw executemany."""
    values = [row_values(i) for i in range(rows)]
    start = time.perf_counter()
    with tp.start_run(FLOW, os.path.join(folder, "ingest.db"), record_agents=False) as run:
        with run.task("train") as task:
            record = task.generated
            for row in values:
                record("step_metrics", **row)
            run.flush()
            end_to_end = rows / (time.perf_counter() - start)

    os.environ["TRAINPROV_QUEUE_ROWS"] = str(rows + 1000)  # the queue holds them all: the caller never waits
    with tp.start_run(FLOW, os.path.join(folder, "alone.db"), record_agents=False) as run:
        writer = run._writer
        with run.task("train") as task:
            run.flush()
            with writer._write_lock:  # the writer thread waits for this lock to write
                for row in values:
                    task.generated("step_metrics", **row)
                queued = time.perf_counter()
            run.flush()
            writer_alone = rows / (time.perf_counter() - queued)
    del os.environ["TRAINPROV_QUEUE_ROWS"]

    # The same rows (same values, same timestamps format) into the same table, by hand.
    raw_path = os.path.join(folder, "raw.db")
    backend = SQLiteBackend(raw_path)
    backend.declare(FLOW)
    backend.close()
    names = FLOW.datasets["step_metrics"].attribute_names
    columns = ", ".join((*ELEMENT_COLUMNS, *names))
    marks = ", ".join("?" * (len(ELEMENT_COLUMNS) + len(names)))
    conn = sqlite3.connect(raw_path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    now = time.time()
    prepared = [
        ("r1", "r1.1", i + 1, iso_utc(now + i * 1e-6), *row_values(i).values()) for i in range(rows)
    ]
    start = time.perf_counter()
    for lo in range(0, rows, 5000):
        conn.execute("BEGIN IMMEDIATE")
        conn.executemany(f"INSERT INTO step_metrics ({columns}) VALUES ({marks})", prepared[lo : lo + 5000])
        conn.execute("COMMIT")
    raw = rows / (time.perf_counter() - start)
    conn.close()
    return end_to_end, writer_alone, raw


READER = r"""
import sqlite3, sys, time
conn = sqlite3.connect(f"file:{sys.argv[1]}?mode=ro", uri=True, isolation_level=None)
seen = 0
deadline = time.time() + float(sys.argv[2])
while time.time() < deadline:
    try:
        n = conn.execute("SELECT count(*) FROM step_metrics").fetchone()[0]
    except sqlite3.OperationalError:
        n = 0
    now = time.time()
    while seen < n:
        seen += 1
        print(seen, now, flush=True)
    time.sleep(0.002)
"""


def visibility(folder: str, count: int, use_flush: bool) -> list[float]:
    """Seconds from a capture call to the row being visible in another process."""
    path = os.path.join(folder, f"visible-{use_flush}.db")
    backend = SQLiteBackend(path)
    backend.declare(FLOW)
    backend.close()
    reader = subprocess.Popen(
        [sys.executable, "-c", READER, path, str(count * 0.25 + 5)], stdout=subprocess.PIPE, text=True
    )
    time.sleep(0.5)
    called = []
    with tp.start_run(FLOW, path, record_agents=False) as run:
        with run.task("train") as task:
            for i in range(count):
                called.append(time.time())
                task.generated("step_metrics", **row_values(i))
                if use_flush:
                    run.flush()
                time.sleep(0.25)
    out, _ = reader.communicate()
    seen = {int(n): float(t) for n, t in (line.split() for line in out.split("\n") if line)}
    return [seen[i + 1] - called[i] for i in range(count) if i + 1 in seen]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=200_000, help="capture calls timed one by one")
    parser.add_argument("--rows", type=int, default=300_000, help="rows for the ingest comparison")
    parser.add_argument("--visible", type=int, default=20, help="rows for the visibility delay")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        costs = sorted(call_cost(folder, args.calls))
        q = lambda f: costs[min(len(costs) - 1, int(len(costs) * f))] / 1000  # noqa: E731
        print(f"capture call on the caller's thread ({args.calls} calls, 6 attributes):")
        print(f"  median {q(0.5):.2f} us   p90 {q(0.9):.2f} us   p99 {q(0.99):.2f} us")
        end_to_end, writer_alone, raw = ingest(folder, args.rows)
        print(f"sustained ingest into SQLite ({args.rows} rows, 10 columns):")
        print(f"  raw sqlite3 executemany (same rows, same table):  {raw:,.0f} rows/s")
        print(f"  trainprov writer alone (rows queued beforehand):    {writer_alone:,.0f} rows/s   "
              f"ratio {writer_alone / raw:.2f}")
        print(f"  end to end, capture loop and writer on one GIL:   {end_to_end:,.0f} rows/s   "
              f"ratio {end_to_end / raw:.2f}")
        timer = visibility(folder, args.visible, use_flush=False)
        flushed = visibility(folder, args.visible, use_flush=True)
        print("delay from capture call to row visible in another process:")
        print(f"  writer timer:    median {statistics.median(timer):.3f} s   max {max(timer):.3f} s")
        print(f"  after flush():   median {statistics.median(flushed):.3f} s   max {max(flushed):.3f} s")


if __name__ == "__main__":
    main()
