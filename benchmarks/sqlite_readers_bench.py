"""Writers and readers on one SQLite store: writer rows/s and WAL size with 0, 1 and 4 readers.

Run:  .venv/bin/python benchmarks/sqlite_readers_bench.py                    # 1 writer, 0/1/4 readers
      .venv/bin/python benchmarks/sqlite_readers_bench.py --writers 4 --rows 50000
      PYTHONPATH=/path/to/other/src .venv/bin/python benchmarks/sqlite_readers_bench.py   # another version

Each writer is a process that starts a run and records `--rows` rows of a 4-attribute dataset
as fast as it can, with `run.flush()` every `--flush-every` rows (a training that flushes
often), into a store whose WAL limit is `--wal-limit-mb` (4 MB, as in issue 20). Each reader
is a process that runs `SELECT count(*), max(step) FROM steps` with `trainprov.connect` in a
loop over a table that already holds `--prefill` rows (a run recorded before; 1,000,000 by
default, so that a statement takes a while, as an analysis over many runs does), with `--reader-pause` seconds between queries (0: back to back, the hardest case: a
reader statement is always running). Readers start before the writers and run until they
end. The writers report their rows/s (first capture to last flush) and the biggest WAL size
they saw after a flush, and the time they spent in WAL upkeep (the checkpoints after their
batches, where a writer may wait for readers); the table prints the total rows/s, the
biggest WAL and the share of the writers' time spent in upkeep.

The machine's other load moves these numbers: run each configuration several times and
compare rows/s of the same run (0 readers is the baseline of its row).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time

WRITER = r"""
import os, sys, time, trainprov as tp
from trainprov.store.sqlite import SQLiteBackend
upkeep = [0.0]  # seconds the writer spent in WAL upkeep (checkpoints) after its batches
_maintain = SQLiteBackend.maintain
def timed_maintain(self):
    start = time.perf_counter()
    try:
        _maintain(self)
    finally:
        upkeep[0] += time.perf_counter() - start
SQLiteBackend.maintain = timed_maintain
flow = tp.Dataflow("bench", [tp.Transformation("train", generates=[
    tp.Dataset("steps", step=int, loss=float, accuracy=float, lr=float)])])
url, rows, every, wal, go = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], sys.argv[5]
biggest = 0
with tp.start_run(flow, url, record_agents=False) as run, run.task("train") as task:
    print("ready", flush=True)
    while not os.path.exists(go):
        time.sleep(0.01)
    start = time.perf_counter()
    for i in range(1, rows + 1):
        task.generated("steps", step=i, loss=1.0 / i, accuracy=0.5, lr=0.001)
        if i % every == 0:
            run.flush()
            biggest = max(biggest, os.path.getsize(wal) if os.path.exists(wal) else 0)
    run.flush()
    elapsed = time.perf_counter() - start
print("result", rows / elapsed, elapsed, biggest, upkeep[0], flush=True)
"""

READER = r"""
import sys, time, trainprov as tp
store, pause = sys.argv[1], float(sys.argv[2])
reader = tp.connect(store)
print("ready", flush=True)
while True:
    reader.rows("SELECT count(*) AS n, max(step) AS last FROM steps")
    if pause:
        time.sleep(pause)
"""


def prefilled_store(rows: int) -> str:
    """A store whose `steps` table already holds `rows` rows (a run recorded earlier), checkpointed."""
    folder = tempfile.mkdtemp(prefix="trainprov-readers-bench-")
    path = os.path.join(folder, "template.db")
    subprocess.run([sys.executable, "-c", WRITER, path, str(max(rows, 10)), "5000", path + "-wal", folder],
                   check=True, capture_output=True)
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    return path


def measure(template: str, readers: int, writers: int, rows: int, flush_every: int, wal_limit_mb: float,
            pause: float) -> tuple[float, float, float, float]:
    """Run one configuration; return (total rows/s, slowest writer's seconds, biggest WAL in MB, share of time in upkeep)."""
    folder = tempfile.mkdtemp(prefix="trainprov-readers-bench-")
    path = os.path.join(folder, "store.db")
    shutil.copyfile(template, path)
    url = f"sqlite://{path}?wal_limit_mb={wal_limit_mb:g}"
    go = os.path.join(folder, "go")
    py = sys.executable
    started = []
    try:
        for _ in range(readers):
            started.append(subprocess.Popen([py, "-c", READER, path, str(pause)], stdout=subprocess.PIPE, text=True))
        for proc in started:
            proc.stdout.readline()
        procs = [
            subprocess.Popen([py, "-c", WRITER, url, str(rows), str(flush_every), path + "-wal", go], stdout=subprocess.PIPE, text=True)
            for _ in range(writers)
        ]
        for proc in procs:
            assert proc.stdout.readline().strip() == "ready"
        time.sleep(0.5)  # readers at work before the writers go
        open(go, "w").close()
        results = []
        for proc in procs:
            out, _ = proc.communicate(timeout=900)
            line = [x for x in out.splitlines() if x.startswith("result")]
            if proc.returncode or not line:
                raise SystemExit(f"a writer failed ({proc.returncode}): {out}")
            results.append(tuple(map(float, line[0].split()[1:])))
    finally:
        for proc in started:
            proc.kill()
            proc.wait()
        shutil.rmtree(folder, ignore_errors=True)
    total = writers * rows / max(r[1] for r in results)
    upkeep = sum(r[3] for r in results) / sum(r[1] for r in results)
    return total, max(r[1] for r in results), max(r[2] for r in results) / 2**20, upkeep


def main() -> None:
    """Parse the options, run each configuration, print a table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--readers", default="0,1,4", help="reader counts to measure (comma-separated)")
    parser.add_argument("--writers", type=int, default=1)
    parser.add_argument("--rows", type=int, default=200_000, help="rows per writer")
    parser.add_argument("--flush-every", type=int, default=1000)
    parser.add_argument("--wal-limit-mb", type=float, default=4.0)
    parser.add_argument("--reader-pause", type=float, default=0.0)
    parser.add_argument("--prefill", type=int, default=1_000_000,
                        help="rows already in the table when the writers start (what the readers count)")
    parser.add_argument("--repeat", type=int, default=1)
    args = parser.parse_args()
    import trainprov

    print(f"trainprov from {os.path.dirname(trainprov.__file__)}; {args.writers} writer(s) x {args.rows} rows, "
          f"flush every {args.flush_every}, WAL limit {args.wal_limit_mb:g} MB, reader pause {args.reader_pause:g} s, "
          f"{args.prefill} rows in the table before")
    template = prefilled_store(args.prefill)
    print(f"{'readers':>7}  {'rows/s (total)':>14}  {'seconds':>8}  {'max WAL MB':>10}  {'time in WAL upkeep':>18}")
    for _ in range(args.repeat):
        for readers in (int(x) for x in args.readers.split(",")):
            rate, seconds, wal, upkeep = measure(template, readers, args.writers, args.rows, args.flush_every, args.wal_limit_mb, args.reader_pause)
            print(f"{readers:>7}  {rate:>14,.0f}  {seconds:>8.2f}  {wal:>10.1f}  {upkeep:>17.0%}", flush=True)
    shutil.rmtree(os.path.dirname(template), ignore_errors=True)


if __name__ == "__main__":
    main()
