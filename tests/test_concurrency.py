"""Several processes on one store: readers during writes, a killed writer, a bounded WAL."""

from __future__ import annotations

import os
import signal
import time

import pytest

import trainprov as tp
from conftest import ROOT, spawn_python, training_flow

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
    first = writer.stdout.readline()  # the store exists: read-only connections can open it
    readers = spawn_python(BUSY_READERS, path, "120")
    out, err = writer.communicate(timeout=300)
    out = first + out
    readers.kill()
    assert writer.returncode == 0, err
    sizes = [int(line.split()[2]) for line in out.splitlines() if line.startswith("wal")]
    # 40,000 rows of 400 bytes is about 17 MB written. Readers that never stop keep the WAL
    # pinned; the writer empties it by holding writes back until their statements end, for
    # a bounded share of its time (so that readers do not slow it down sharply): the WAL
    # passes its 1 MB limit for a while, and is truncated back again and again.
    assert len(sizes) == 80
    resets = sum(1 for before, after in zip(sizes, sizes[1:]) if after < before and after < (1 << 20))
    assert resets >= 3, sizes
    assert max(sizes) < 12 * (1 << 20), sizes
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
    first = writer.stdout.readline()  # the store exists: read-only connections can open it
    reader = spawn_python(LONG_READER, path, hold, "2")
    out, err = writer.communicate(timeout=300)
    out = first + out
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


PINNING_READER = """
import os, sqlite3, sys, time
path, hold_file, release_file = sys.argv[1], sys.argv[2], sys.argv[3]
conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, isolation_level=None)
conn.execute("BEGIN")
conn.execute("SELECT count(*) FROM notes").fetchone()  # a snapshot the WAL must keep until COMMIT
open(hold_file, "w").close()
deadline = time.time() + 30
while not os.path.exists(release_file) and time.time() < deadline:
    time.sleep(0.02)
os.remove(hold_file)
conn.execute("COMMIT")
"""

PINNED_WRITER = """
import os, sys, time, trainprov as tp
flow = tp.Dataflow("wal", [tp.Transformation("log", generates=[tp.Dataset("notes", step=int, text=str)])])
store, hold_file, release_file, batches = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
with tp.start_run(flow, store, record_agents=False) as run, run.task("log") as task:
    task.generated("notes", step=0, text="")
    run.flush()
    print("ready", flush=True)
    while not os.path.exists(hold_file):
        time.sleep(0.02)
    step = 0
    for batch in range(batches):
        for _ in range(500):
            step += 1
            task.generated("notes", step=step, text="x" * 200)
        run.flush()
    print("written while held", int(os.path.exists(hold_file)), step, flush=True)
    open(release_file, "w").close()
"""


def test_a_reader_that_pins_the_wal_does_not_hold_the_writer_back(tmp_path):
    # A reader always inside a read transaction keeps SQLite from emptying the WAL. The writer
    # used to wait up to 0.2 s for it after every batch once the WAL passed its limit (200
    # batches: 40 s); now such waits take a bounded share of its time, so it writes all 200
    # batches (100,000 rows) while the reader still holds its snapshot (30 s at most).
    path = str(tmp_path / "pinned.db")
    hold, release = str(tmp_path / "holding"), str(tmp_path / "release")
    writer = spawn_python(PINNED_WRITER, f"sqlite://{path}?wal_limit_mb=1", hold, release, "200")
    assert writer.stdout.readline().strip() == "ready"
    reader = spawn_python(PINNING_READER, path, hold, release)
    out, err = writer.communicate(timeout=300)
    reader.communicate(timeout=60)
    assert writer.returncode == 0 and reader.returncode == 0, err
    assert out.split() == ["written", "while", "held", "1", "100000"], out
    counts = tp.query("SELECT count(*) AS n, count(DISTINCT step) AS steps FROM notes", store=path)
    assert counts == [{"n": 100001, "steps": 100001}]


LOCK_HOLDER = """
import os, sqlite3, sys, time
path, release_file = sys.argv[1], sys.argv[2]
conn = sqlite3.connect(path, isolation_level=None)
conn.execute("BEGIN IMMEDIATE")  # another program's write transaction: it holds the write lock
print("locked", flush=True)
deadline = time.time() + 120
while not os.path.exists(release_file) and time.time() < deadline:
    time.sleep(0.02)
conn.execute("ROLLBACK")
"""

LOCKED_WRITER = """
import os, sys, time, trainprov as tp
sys.path.insert(0, sys.argv[2])
from conftest import training_flow
store, locked_file, released_file = sys.argv[1], sys.argv[3], sys.argv[4]
with tp.start_run(training_flow(), store, record_agents=False) as run, run.task("train") as train:
    print("started", run.id, flush=True)
    while not os.path.exists(locked_file):
        time.sleep(0.02)
    for epoch in range(1, 101):
        train.generated("epoch_metrics", epoch=epoch, loss=1.0 / epoch, val_loss=None)
    print("flush while locked", run.flush(timeout=30), flush=True)
    while not os.path.exists(released_file):
        time.sleep(0.02)
    print("flush after", run.flush(timeout=60), flush=True)
"""


def test_a_foreign_write_lock_is_named_waits_are_bounded_and_no_row_is_lost(tmp_path):
    path = str(tmp_path / "store.db")
    locked, released = str(tmp_path / "locked"), str(tmp_path / "released")
    writer = spawn_python(LOCKED_WRITER, path, TESTS, locked, released)
    run_id = writer.stdout.readline().split()[1]
    holder = spawn_python(LOCK_HOLDER, path, released)
    assert holder.stdout.readline().strip() == "locked"
    # a run that starts now is told, after the documented wait, who holds the store
    with pytest.raises(tp.StoreError) as info:
        tp.start_run(tp.Dataflow("other", [tp.Transformation("t", generates=[tp.Dataset("d", x=int)])]), path)
    message = str(info.value)
    assert path in message and f"locked by process {holder.pid}" in message and "waited 5 s" in message
    # a run of a dataflow declared before starts all the same: its rows wait for the lock
    with pytest.warns(RuntimeWarning, match=f"locked by process {holder.pid}"):
        second = tp.start_run(training_flow(), path, record_agents=False)
    with second.task("train") as train:
        train.generated("epoch_metrics", epoch=1, loss=0.5, val_loss=None)
    # the running training's flush gives up within its timeout instead of waiting for the lock ...
    open(locked, "w").close()
    assert writer.stdout.readline().split() == ["flush", "while", "locked", "False"]
    # ... and its rows are written once the other program lets go
    open(released, "w").close()
    assert writer.stdout.readline().split() == ["flush", "after", "True"]
    second.end()
    out, err = writer.communicate(timeout=60)
    holder.communicate(timeout=30)
    assert writer.returncode == 0, err
    assert f"is locked by process {holder.pid}" in err  # the writer's warning names the holder
    rows = tp.query("SELECT count(*) AS n FROM epoch_metrics WHERE run_id = ?", [run_id], store=path)
    assert rows == [{"n": 100}]
    assert tp.query("SELECT status FROM runs WHERE run_id = ?", [run_id], store=path) == [{"status": "finished"}]
    assert tp.query("SELECT status FROM runs WHERE run_id = ?", [second.id], store=path) == [{"status": "finished"}]
    assert tp.query("SELECT loss FROM epoch_metrics WHERE run_id = ?", [second.id], store=path) == [{"loss": 0.5}]
