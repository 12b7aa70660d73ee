"""Several processes on one store: readers during writes, a killed writer, a bounded WAL."""

from __future__ import annotations

import os
import signal
import time

import pytest

import trainprov as tp
from conftest import ROOT, spawn_python

TESTS = os.path.join(ROOT, "tests")


@pytest.fixture
def store(any_store):
    """The reader and killed-writer tests run on a SQLite file and on a PostgreSQL database."""
    return any_store

WRITER = """
import sys, time, trainprov as tp
sys.path.insert(0, sys.argv[2])
from conftest import training_flow
store, epochs, flush_every, pause = sys.argv[1], int(sys.argv[3]), int(sys.argv[4]), float(sys.argv[5])
with tp.start_run(training_flow(), store) as run, run.task("train") as train:
    print("run", run.id, flush=True)
    for epoch in range(1, epochs + 1):
        train.generated("epoch_metrics", epoch=epoch, loss=1.0 / epoch, val_loss=2.0 / epoch)
        if epoch % flush_every == 0:
            run.flush()
            print("flushed", epoch, flush=True)
            time.sleep(pause)
"""

READER = """
import sys, time, trainprov as tp
store, run_id = sys.argv[1], sys.argv[2]
deadline = time.time() + 120
while time.time() < deadline:
    try:
        # the status first: once it says the run ended, the count read after it is the last one
        status = tp.query("SELECT status FROM runs WHERE run_id = ?", [run_id], store=store)[0]["status"]
        n = tp.query("SELECT count(*) AS n FROM epoch_metrics WHERE run_id = ?", [run_id], store=store)[0]["n"]
        print("count", n, flush=True)
    except Exception as exc:
        print("ERROR", type(exc).__name__, exc, flush=True)
        status = "running"
    if status != "running":
        break
    time.sleep(0.01)
"""


def test_another_process_queries_while_a_writer_emits(store):
    writer = spawn_python(WRITER, store, TESTS, "3000", "10", "0.005")
    run_id = writer.stdout.readline().split()[1]
    reader = spawn_python(READER, store, run_id)
    reader_out, reader_err = reader.communicate(timeout=180)
    writer.communicate(timeout=60)
    assert writer.returncode == 0 and reader.returncode == 0, reader_err
    lines = reader_out.splitlines()
    assert not [line for line in lines if line.startswith("ERROR")], reader_out[:2000]
    counts = [int(line.split()[1]) for line in lines]
    assert len(set(counts)) > 10, "the reader should have seen the table grow step by step"
    assert counts == sorted(counts), "the row count must never go down"
    assert counts[-1] == 3000


def test_a_killed_writer_keeps_every_flushed_row_and_is_reported_interrupted(store):
    writer = spawn_python(WRITER, store, TESTS, "100000", "10", "0.002")
    run_id = writer.stdout.readline().split()[1]
    flushed = 0
    while flushed < 300:
        flushed = int(writer.stdout.readline().split()[1])
    writer.send_signal(signal.SIGKILL)
    writer.wait(timeout=30)
    reader = tp.connect(store)
    epochs = [r["epoch"] for r in reader.rows("SELECT epoch FROM epoch_metrics WHERE run_id = ? ORDER BY epoch", [run_id])]
    assert len(epochs) >= flushed, "a row flushed before the kill is missing"
    assert epochs == list(range(1, len(epochs) + 1)), "rows must be whole batches, in order, without holes"
    run = reader.runs().set_index("run_id").loc[run_id]
    assert run["status"] == "interrupted"
    assert "ended without ending the run" in reader.rows("SELECT error FROM runs WHERE run_id = ?", [run_id])[0]["error"]
    assert reader.rows("SELECT status FROM tasks WHERE run_id = ?", [run_id]) == [{"status": "interrupted"}]


PAYLOAD_WRITER = """
import os, sys, time, trainprov as tp
flow = tp.Dataflow("wal", [tp.Transformation("log", generates=[tp.Dataset("notes", step=int, text=str)])])
store, rows, hold_file, pause = sys.argv[1], int(sys.argv[2]), sys.argv[3], float(sys.argv[4])
wal = store.split("?")[0].replace("sqlite://", "") + "-wal"
biggest = 0
with tp.start_run(flow, store, record_agents=False) as run, run.task("log") as task:
    for step in range(1, rows + 1):
        task.generated("notes", step=step, text="x" * 400)
        if step % 500 == 0:
            run.flush()
            size = os.path.getsize(wal) if os.path.exists(wal) else 0
            biggest = max(biggest, size)
            print("wal", step, size, int(os.path.exists(hold_file)), flush=True)
            time.sleep(pause)
print("max", biggest, flush=True)
"""

BUSY_READERS = """
import sqlite3, sys, threading, time
path, seconds = sys.argv[1], float(sys.argv[2])
def read():
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, isolation_level=None)
    deadline = time.time() + seconds
    while time.time() < deadline:
        try:
            conn.execute("SELECT count(*), max(step) FROM notes").fetchone()
        except sqlite3.OperationalError:
            pass
threads = [threading.Thread(target=read) for _ in range(3)]
for t in threads: t.start()
for t in threads: t.join()
"""


def test_the_wal_stays_bounded_while_readers_never_stop(tmp_path):
    path = str(tmp_path / "wal.db")
    url = f"sqlite://{path}?wal_limit_mb=1"
    writer = spawn_python(PAYLOAD_WRITER, url, "40000", str(tmp_path / "unused"), "0.01")
    time.sleep(0.5)
    readers = spawn_python(BUSY_READERS, path, "120")
    out, err = writer.communicate(timeout=300)
    readers.kill()
    assert writer.returncode == 0, err
    sizes = [int(line.split()[2]) for line in out.splitlines() if line.startswith("wal")]
    # 40,000 rows of 400 bytes is about 17 MB written; the WAL is truncated back whenever
    # it passes 1 MB, so it stays within the limit plus what one batch adds.
    assert len(sizes) == 80
    assert max(sizes) < 4 * (1 << 20), sizes
    assert os.path.getsize(path) > 15 * (1 << 20)


LONG_READER = """
import sqlite3, sys, time
path, hold_file, seconds = sys.argv[1], sys.argv[2], float(sys.argv[3])
conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, isolation_level=None)
while True:
    try:
        conn.execute("BEGIN")
        conn.execute("SELECT count(*) FROM notes").fetchone()
        break
    except sqlite3.OperationalError:
        conn.execute("ROLLBACK")
        time.sleep(0.05)
open(hold_file, "w").close()
time.sleep(seconds)
conn.execute("COMMIT")
import os; os.remove(hold_file)
"""


def test_the_wal_shrinks_back_as_soon_as_a_long_reader_lets_go(tmp_path):
    path = str(tmp_path / "wal.db")
    hold = str(tmp_path / "holding")
    writer = spawn_python(PAYLOAD_WRITER, f"sqlite://{path}?wal_limit_mb=1", "40000", hold, "0.08")
    time.sleep(1.0)
    reader = spawn_python(LONG_READER, path, hold, "2")
    out, err = writer.communicate(timeout=300)
    reader.communicate(timeout=60)
    assert writer.returncode == 0, err
    samples = [tuple(map(int, line.split()[1:])) for line in out.splitlines() if line.startswith("wal")]
    held = [i for i, (_, _, holding) in enumerate(samples) if holding]
    assert held, "the reader should have held its transaction while the writer wrote"
    # while the reader pins the log it grows with what is written ...
    assert max(samples[i][1] for i in held) > 2 * (1 << 20)
    # ... and within a few batches after it lets go the WAL is back under the limit plus one batch
    after = [size for _, size, _ in samples[held[-1] + 1 :]]
    assert after and min(after[:5]) < 2 * (1 << 20), after[:10]
    assert after[-1] < 2 * (1 << 20)
