"""Store outages: training goes on, rows wait in memory and in the local spool, each is written once."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time

import pytest

import trainprov as tp
from conftest import run_python, spawn_python, training_flow
from trainprov.capture.spool import Spool
from trainprov.capture.writer import Writer
from trainprov.store import open_backend
from trainprov.store.catalog import element_item, element_target


class Outage:
    """Wraps a backend: writes fail (as a lost connection does) while `down` is set."""

    def __init__(self, backend):
        self.inner, self.url, self.down, self.attempts = backend, backend.url, True, 0
        self.written: list[int] = []  # element_seq of each element written, in the order written

    def write(self, groups, retry=False):
        self.attempts += 1
        if self.down:
            raise sqlite3.OperationalError("unable to open database file (simulated outage)")
        self.inner.write(groups, retry=retry)
        self.written += [item[3] for target, batch in groups if target.prefix for item in batch]  # the element's seq

    def maintain(self):
        self.inner.maintain()

    def is_permanent(self, exc):
        return self.inner.is_permanent(exc)

    def close(self):
        self.inner.close()


def items(flow, n, run="r"):
    target = element_target(flow.datasets["epoch_metrics"])
    return [element_item(target, (run, f"{run}.1", i, time.time()), {"epoch": i, "loss": 1.0 / i})
            for i in range(1, n + 1)]


def test_rows_spill_to_disk_during_an_outage_and_come_back_in_order_once_each(tmp_path, monkeypatch):
    monkeypatch.setenv("TRAINPROV_SPOOL", str(tmp_path / "spool"))
    store, flow = str(tmp_path / "store.db"), training_flow()
    open_backend(store).declare(flow)
    outage = Outage(open_backend(store))
    writer = Writer(outage, interval=0.02, batch_rows=50, max_rows=400)
    most_in_memory, most_spooled = 0, 0
    with pytest.warns(RuntimeWarning) as warned:
        for item in items(flow, 5000):
            writer.put(item)  # never blocks for long: the writer spills the oldest rows
            most_in_memory = max(most_in_memory, len(writer._queue))
            most_spooled = max(most_spooled, writer.spool.rows)
        assert writer.flush(timeout=30) is False  # down: the caller is not held
        assert len(os.listdir(tmp_path / "spool")) >= 2  # segments on disk
        outage.down = False
        assert writer.flush(timeout=60) is True
    writer.close()
    messages = [str(w.message) for w in warned]
    assert any("simulated outage" in m and "training goes on" in m for m in messages)
    assert any("answers again" in m for m in messages)
    assert most_in_memory <= 401 and most_spooled >= 4000
    assert outage.written == list(range(1, 5001))  # all, once each, in the order captured
    rows = tp.query("SELECT element_seq, epoch, loss FROM epoch_metrics ORDER BY element_seq", store=store)
    assert [r["element_seq"] for r in rows] == list(range(1, 5001))
    assert all(r["loss"] == 1.0 / r["epoch"] for r in rows)
    assert os.listdir(tmp_path / "spool") == []  # written segments are removed


def test_spool_segments_an_older_version_left_are_written_as_rows(tmp_path, monkeypatch):
    """Older versions queued an element's values nested in the item (a dict, later a tuple): such segments still load."""
    monkeypatch.setenv("TRAINPROV_SPOOL", str(tmp_path / "spool"))
    store, flow = str(tmp_path / "store.db"), training_flow()
    open_backend(store).declare(flow)
    target = element_target(flow.datasets["epoch_metrics"])
    values = [{"epoch": 1, "loss": 0.5}, {"epoch": 2, "loss": 0.25}]
    old = [(target, ("r", "r.1", 1, time.time()), values[0]),
           (target, ("r", "r.1", 2, time.time()), tuple(map(values[1].get, target.columns[target.prefix:])))]
    writer = Writer(open_backend(store), interval=0.02)
    writer.spool.put(old)
    assert writer.flush(timeout=30) is True
    writer.close()
    assert tp.query("SELECT task_id, element_seq, epoch, loss FROM epoch_metrics ORDER BY element_seq", store=store) == [
        {"task_id": "r.1", "element_seq": 1, "epoch": 1, "loss": 0.5},
        {"task_id": "r.1", "element_seq": 2, "epoch": 2, "loss": 0.25}]


def test_a_retried_batch_whose_commit_went_through_is_not_written_twice(tmp_path):
    store, flow = str(tmp_path / "store.db"), training_flow()
    backend = open_backend(store)
    backend.declare(flow)

    class LostAnswer(Outage):
        """The first write commits, then reports a lost connection (the answer never arrived)."""

        def write(self, groups, retry=False):
            self.attempts += 1
            self.inner.write(groups, retry=retry)
            if self.attempts == 1:
                raise sqlite3.OperationalError("server closed the connection unexpectedly (simulated)")

    writer = Writer(LostAnswer(backend), interval=0.02)
    with pytest.warns(RuntimeWarning, match="closed the connection"):
        for item in items(flow, 300):
            writer.put(item)
        writer.flush(timeout=30)
        writer.flush(timeout=30)
    writer.close()
    assert tp.query("SELECT count(*) AS n, count(DISTINCT element_seq) AS d FROM epoch_metrics", store=store) == [
        {"n": 300, "d": 300}]


def test_when_the_spool_gives_up_the_error_says_what_was_not_written(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("TRAINPROV_SPOOL", str(tmp_path / "spool"))
    store, flow = str(tmp_path / "store.db"), training_flow()
    open_backend(store).declare(flow)
    writer = Writer(Outage(open_backend(store)), interval=0.02, batch_rows=50, max_rows=400)
    writer.spool = Spool(writer.backend.url, limit_mb=0.02)  # room for a few hundred rows only
    accepted = 0
    with pytest.warns(RuntimeWarning, match="limit is 0 MB"), pytest.raises(tp.CaptureError) as refused:
        for item in items(flow, 100_000):
            writer.put(item)
            accepted += 1
    message = str(refused.value)
    assert "gives up recording" in message and "TRAINPROV_SPOOL_LIMIT_MB" in message
    assert "This row (table epoch_metrics) and later ones are not recorded" in message
    assert f"the {accepted} rows accepted before it are kept" in message
    writer.close(timeout=1)
    report = capsys.readouterr().err
    assert f"{accepted} captured rows could not be written" in report and "epoch_metrics" in report
    saved = report.rsplit("saved in ", 1)[1].strip()
    assert sum(1 for _ in open(saved)) == accepted  # every accepted row is in the file, none lost


TRAINING = """
import sys, time, warnings, trainprov as tp
warnings.simplefilter("always")
flow = tp.Dataflow("training", [tp.Transformation("train",
    uses=[tp.Dataset("hyperparameters", lr=float)],
    generates=[tp.Dataset("epoch_metrics", epoch=int, loss=float), tp.Dataset("step_metrics", epoch=int, step=int, loss=float)])])
with tp.start_run(flow, sys.argv[1]) as run, run.task("train") as train:
    print("run", run.id, flush=True)
    for epoch in range(1, 61):
        for step in range(1, 101):
            train.generated("step_metrics", epoch=epoch, step=step, loss=epoch + step / 1000)
        train.generated("epoch_metrics", epoch=epoch, loss=1.0 / epoch)
        written = run.flush()
        print("epoch", epoch, "written" if written else "waiting", flush=True)
        time.sleep(0.1)
print("done", flush=True)
"""


def test_a_server_stopped_mid_training_and_started_again_loses_and_duplicates_nothing(pg_store, postgres, tmp_path):
    """The fault test: a real PostgreSQL server goes away while a training process writes, then comes back."""
    env = dict(os.environ, TRAINPROV_SPOOL=str(tmp_path / "spool"), TRAINPROV_QUEUE_ROWS="1500")
    child = spawn_python(TRAINING, pg_store, env=env)
    lines: list[str] = []

    def until(prefix: str, timeout: float = 60) -> str:
        deadline = time.time() + timeout
        while time.time() < deadline:
            line = child.stdout.readline()
            if not line:
                break
            lines.append(line.strip())
            if line.startswith(prefix):
                return line
        raise AssertionError(f"no {prefix!r} from the training: {lines}\n{child.stderr.read() if child.poll() is not None else ''}")

    until("epoch 5 ")
    postgres.server.stop()
    try:
        down_at = len(lines)
        time.sleep(3)  # the training goes on meanwhile, and spills to disk past 1,500 rows
        until("epoch")
        spooled = os.listdir(tmp_path / "spool")
    finally:
        postgres.server.start()
    until("done", timeout=120)
    assert child.wait(60) == 0
    errors = child.stderr.read()
    during = [line for line in lines[down_at:] if line.startswith("epoch")]
    assert len(during) >= 10 and any(line.endswith("waiting") for line in during), lines  # training went on
    assert spooled, "no spool segment was written while the server was down"
    assert "could not write to" in errors and "answers again" in errors and "Traceback" not in errors, errors
    rows = tp.query("SELECT count(*) AS n, count(DISTINCT epoch) AS d, min(epoch) AS lo, max(epoch) AS hi FROM epoch_metrics",
                    store=pg_store)
    assert rows == [{"n": 60, "d": 60, "lo": 1, "hi": 60}]
    steps = tp.query("SELECT count(*) AS n, count(DISTINCT (epoch, step)) AS d FROM step_metrics", store=pg_store)
    assert steps == [{"n": 6000, "d": 6000}]
    assert tp.query("SELECT count(*) AS n FROM step_metrics WHERE loss <> epoch + step / 1000.0", store=pg_store) == [{"n": 0}]
    assert tp.query("SELECT status FROM runs", store=pg_store) == [{"status": "finished"}]
    assert os.listdir(tmp_path / "spool") == []


# ---- the store down at the start, a new column during an outage, SIGKILL, replay ----------------


class Child:
    """A training process whose stdout lines the test waits for."""

    def __init__(self, code: str, *args: str, env: dict | None = None):
        self.proc = spawn_python(code, *args, env=env)
        self.lines: list[str] = []

    def until(self, prefix: str, timeout: float = 120) -> str:
        deadline = time.time() + timeout
        while time.time() < deadline:
            line = self.proc.stdout.readline()
            if not line:
                self.proc.wait(30)  # it ended: say how
                break
            self.lines.append(line.strip())
            if line.startswith(prefix):
                return line.strip()
        stderr = self.proc.stderr.read() if self.proc.poll() is not None else ""
        raise AssertionError(f"no {prefix!r} from the child: {self.lines}\n{stderr}")

    def finish(self, timeout: float = 120) -> tuple[int, str]:
        out, err = self.proc.communicate(timeout=timeout)
        self.lines += out.splitlines()
        return self.proc.returncode, err


#: child code: block until the test creates a file (a step the test controls)
WAIT_FOR = """
import os, time
def wait_for(path):
    while not os.path.exists(path):
        time.sleep(0.02)
"""


def replay_cli(store: str, *args: str, env: dict | None = None) -> str:
    done = subprocess.run([sys.executable, "-m", "trainprov.cli", "--store", store, "replay", *args],
                          capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


STARTS_DOWN = WAIT_FOR + """
import os, sys, time, trainprov as tp
flow = tp.Dataflow("training", [tp.Transformation("train",
    generates=[tp.Dataset("epoch_metrics", epoch=int, loss=float)])])
with tp.start_run(flow, sys.argv[1]) as run, run.task("train") as train:
    print("run", run.id, run.dataflow_version, flush=True)
    for epoch in range(1, 9):
        train.generated("epoch_metrics", epoch=epoch, loss=1.0 / epoch)
        print("epoch", epoch, "written" if run.flush() else "waiting", flush=True)
        if epoch == 4:
            wait_for("{back}")
print("done", run.dataflow_version, flush=True)
"""


def test_a_run_starts_while_the_server_is_down_and_arrives_when_it_is_back(pg_store, postgres, tmp_path):
    """Issue 18.7: start_run must not need the store; the run, its declaration and rows arrive later."""
    env = dict(os.environ, TRAINPROV_SPOOL=str(tmp_path / "spool"))
    back = str(tmp_path / "back")
    postgres.server.stop()
    try:
        child = Child(STARTS_DOWN.replace("{back}", back), pg_store, env=env)
        started = child.until("run ")
        child.until("epoch 4 ")
        assert started.endswith("None")  # the store has not answered: no version yet
    finally:
        postgres.server.start()
    open(back, "w").close()
    code, errors = child.finish()
    assert code == 0 and "Traceback" not in errors, errors
    assert [line for line in child.lines if line.startswith("epoch")][:4] == [f"epoch {e} waiting" for e in range(1, 5)]
    assert child.lines[-1] == "done 1"
    run_id = started.split()[1]
    assert tp.query("SELECT run_id, status, dataflow_version FROM runs", store=pg_store) == [
        {"run_id": run_id, "status": "finished", "dataflow_version": 1}]
    assert tp.query("SELECT epoch, loss FROM epoch_metrics ORDER BY epoch", store=pg_store) == [
        {"epoch": e, "loss": 1.0 / e} for e in range(1, 9)]
    assert os.listdir(tmp_path / "spool") == []


NEW_COLUMN = WAIT_FOR + """
import os, sys, time, torch, trainprov as tp
from trainprov.torch import Tracker
model = torch.nn.Linear(2, 1)
optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
with Tracker(model, optimizer, sys.argv[1], epochs=6) as tracker:
    for epoch in range(1, 7):
        if epoch == 3:
            print("ready", flush=True)
            wait_for("{down}")
        metrics = {"loss": 1.0 / epoch}
        if epoch >= 3:
            metrics["val_acc"] = epoch / 10  # a new column, first met while the server is down
        tracker.epoch(**metrics)
        print("epoch", epoch, flush=True)
        if epoch == 5:
            wait_for("{back}")
print("done", flush=True)
"""


def test_a_new_column_during_an_outage_waits_with_the_rows_instead_of_failing(pg_store, postgres, tmp_path):
    """Issue 18.6: the first value of a new metric during an outage must not call the store on the training thread."""
    env = dict(os.environ, TRAINPROV_SPOOL=str(tmp_path / "spool"))
    down, back = str(tmp_path / "down"), str(tmp_path / "back")
    child = Child(NEW_COLUMN.replace("{down}", down).replace("{back}", back), pg_store, env=env)
    child.until("ready")
    postgres.server.stop()
    try:
        open(down, "w").close()
        child.until("epoch 5")
    finally:
        postgres.server.start()
    open(back, "w").close()
    code, errors = child.finish()
    assert code == 0 and "Traceback" not in errors and "StoreError" not in errors, errors
    assert child.lines[-1] == "done"
    assert tp.query("SELECT status FROM runs", store=pg_store) == [{"status": "finished"}]
    rows = tp.query("SELECT epoch, val_acc FROM epoch_metrics ORDER BY epoch", store=pg_store)
    assert rows == [{"epoch": e, "val_acc": e / 10 if e >= 3 else None} for e in range(1, 7)]
    versions = tp.query("SELECT r.dataflow_version AS run_v, max(d.version) AS last_v FROM runs r "
                        "JOIN dataflows d ON d.name = r.dataflow GROUP BY r.dataflow_version", store=pg_store)
    assert versions[0]["run_v"] == versions[0]["last_v"] >= 2  # the run is of the grown dataflow


KILLED = WAIT_FOR + """
import os, sys, time, trainprov as tp
flow = tp.Dataflow("training", [tp.Transformation("train",
    generates=[tp.Dataset("epoch_metrics", epoch=int, loss=float), tp.Dataset("step_metrics", epoch=int, step=int)])])
run = tp.start_run(flow, sys.argv[1])
train = run.task("train")
print("run", run.id, flush=True)
for epoch in range(1, 9):
    if epoch == 3:
        print("ready", flush=True)
        wait_for("{down}")
    for step in range(1, 201):
        train.generated("step_metrics", epoch=epoch, step=step)
    train.generated("epoch_metrics", epoch=epoch, loss=1.0 / epoch)
    if epoch == 6:  # a new column while the server is down: its declaration is spooled too
        flow = flow.with_attributes("epoch_metrics", accuracy=float)
        run.evolve(flow)
    if epoch >= 6:
        train.generated("epoch_metrics", epoch=100 + epoch, loss=0.0, accuracy=epoch / 10)
    print("epoch", epoch, "written" if run.flush() else "waiting", flush=True)
print("killme", flush=True)
time.sleep(600)
"""


def kill_during_outage(pg_store, postgres, tmp_path) -> tuple[str, dict]:
    """A training killed with SIGKILL while the server is down, after flushes that returned False."""
    env = dict(os.environ, TRAINPROV_SPOOL=str(tmp_path / "spool"), TRAINPROV_QUEUE_ROWS="400")
    down = str(tmp_path / "down")
    child = Child(KILLED.replace("{down}", down), pg_store, env=env)
    run_id = child.until("run ").split()[1]
    child.until("ready")
    postgres.server.stop()
    try:
        open(down, "w").close()
        child.until("killme")
        child.proc.kill()  # SIGKILL: no exit handler, nothing saved at exit
        child.proc.wait(30)
        assert [line for line in child.lines if line.startswith("epoch")][2:] == [f"epoch {e} waiting" for e in range(3, 9)]
        assert os.listdir(tmp_path / "spool"), "nothing was spooled"
    finally:
        postgres.server.start()
    return run_id, env


def assert_killed_run_complete(store: str, run_id: str) -> None:
    epochs = tp.query("SELECT epoch, accuracy FROM epoch_metrics WHERE run_id = ? ORDER BY epoch", [run_id], store=store)
    assert epochs == [{"epoch": e, "accuracy": None} for e in range(1, 9)] + [
        {"epoch": 100 + e, "accuracy": e / 10} for e in (6, 7, 8)]
    steps = tp.query("SELECT count(*) AS n, count(DISTINCT (epoch, step)) AS d FROM step_metrics WHERE run_id = ?",
                     [run_id], store=store)
    assert steps == [{"n": 1600, "d": 1600}]  # 0 lost, 0 duplicated
    assert tp.query("SELECT status, dataflow_version FROM runs WHERE run_id = ?", [run_id], store=store) == [
        {"status": "interrupted", "dataflow_version": 2}]


def test_sigkill_during_an_outage_then_replay_loses_and_duplicates_nothing(pg_store, postgres, tmp_path):
    """Issue 18.8: the spool of a killed process is replayed, exactly once, also when replayed twice."""
    run_id, env = kill_during_outage(pg_store, postgres, tmp_path)
    assert tp.query("SELECT count(*) AS n FROM epoch_metrics", store=pg_store) == [{"n": 2}]  # before the outage
    out = replay_cli(pg_store, env=env)
    assert "replayed" in out
    assert_killed_run_complete(pg_store, run_id)
    assert os.listdir(tmp_path / "spool") == []
    assert "nothing to replay" in replay_cli(pg_store, env=env)
    assert_killed_run_complete(pg_store, run_id)


def test_a_later_process_on_the_same_store_adopts_the_spool_of_a_killed_one(pg_store, postgres, tmp_path):
    """Issue 18.8: orphaned spool segments are written by the next process that writes to the store."""
    run_id, env = kill_during_outage(pg_store, postgres, tmp_path)
    later = run_python("""
        import sys, trainprov as tp
        flow = tp.Dataflow("other", [tp.Transformation("t", generates=[tp.Dataset("other_rows", x=int)])])
        with tp.start_run(flow, sys.argv[1]) as run, run.task("t") as t:
            t.generated("other_rows", x=1)
    """, pg_store, env=env)
    assert "written now" in later.stderr
    assert_killed_run_complete(pg_store, run_id)
    assert os.listdir(tmp_path / "spool") == []


def test_rows_saved_at_exit_are_replayed_exactly_once(sqlite_store, tmp_path):
    """Issue 18.8: the file of unwritten rows goes to the store with `trainprov replay`, once, and is removed."""
    env = dict(os.environ, TRAINPROV_SPOOL=str(tmp_path / "spool"))
    done = run_python("""
        import sqlite3, sys, trainprov as tp
        from trainprov.capture.writer import Writer
        from trainprov.store.sqlite import SQLiteBackend
        Writer.close.__defaults__ = (1.0,)  # do not wait 30 s for a store that stays down
        real = SQLiteBackend.write
        def down(self, groups, retry=False):  # the run row arrives, then the store stops answering
            if any(t.table == "epoch_metrics" for t, _ in groups):
                raise sqlite3.OperationalError("disk I/O error (simulated)")
            real(self, groups, retry=retry)
        SQLiteBackend.write = down
        flow = tp.Dataflow("training", [tp.Transformation("train", generates=[
            tp.Dataset("epoch_metrics", epoch=int, loss=float, at="datetime", info="json")])])
        import datetime
        with tp.start_run(flow, sys.argv[1]) as run, run.task("train") as train:
            for epoch in range(1, 301):
                train.generated("epoch_metrics", epoch=epoch, loss=float("nan") if epoch == 7 else 1.0 / epoch,
                                at=datetime.datetime(2026, 1, 1, tzinfo=datetime.timezone.utc), info={"e": epoch})
    """, sqlite_store, env=env)
    saved = [p for p in os.listdir(tmp_path) if ".unwritten-" in p]
    assert len(saved) == 1 and "trainprov replay" in done.stderr
    assert tp.query("SELECT count(*) AS n FROM epoch_metrics", store=sqlite_store) == [{"n": 0}]
    assert "replayed" in replay_cli(sqlite_store, env=env)
    rows = tp.query("SELECT epoch, loss, at, info FROM epoch_metrics ORDER BY epoch", store=sqlite_store)
    assert [r["epoch"] for r in rows] == list(range(1, 301))
    assert rows[6]["loss"] != rows[6]["loss"] and rows[7]["loss"] == 1.0 / 8  # NaN stays NaN
    assert str(rows[0]["at"]).startswith("2026-01-01") and json.loads(rows[0]["info"]) == {"e": 1}
    assert tp.query("SELECT status FROM runs", store=sqlite_store) == [{"status": "finished"}]
    assert not [p for p in os.listdir(tmp_path) if ".unwritten-" in p]
    assert "nothing to replay" in replay_cli(sqlite_store, env=env)
    assert tp.query("SELECT count(*) AS n FROM epoch_metrics", store=sqlite_store) == [{"n": 300}]


# ---- shutdown: a full disk, a second SIGTERM ---------------------------------------------------

DISK_FULL = """
import errno, os, sqlite3, sys, builtins, trainprov as tp
from trainprov.capture.writer import Writer
from trainprov.store.sqlite import SQLiteBackend
Writer.close.__defaults__ = (1.0,)  # do not wait 30 s for a store that stays full
full = os.path.dirname(os.path.abspath(sys.argv[1])) + os.sep

def no_space(*args):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

# The store's disk is full: its writes fail, and so does any new file on that disk.
real_write = SQLiteBackend.write
def store_write(self, groups, retry=False):
    if any(t.table == "step_metrics" for t, _ in groups):
        raise sqlite3.OperationalError("database or disk is full")
    real_write(self, groups, retry=retry)
SQLiteBackend.write = store_write
real_open, real_os_write = builtins.open, os.write
def open_(file, mode="r", *args, **kwargs):
    if isinstance(file, str) and os.path.abspath(file).startswith(full) and set(mode) & set("wax+"):
        no_space()
    return real_open(file, mode, *args, **kwargs)
def os_write(fd, data):
    try:
        path = os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        path = ""
    if path.startswith(full):
        no_space()
    return real_os_write(fd, data)
builtins.open, os.write = open_, os_write

flow = tp.Dataflow("training", [tp.Transformation("train", generates=[tp.Dataset("step_metrics", step=int, loss=float)])])
with tp.start_run(flow, sys.argv[1]) as run, run.task("train") as train:
    for step in range(1, 1501):
        train.generated("step_metrics", step=step, loss=1.0 / step)
    run.flush()
print("recorded", flush=True)
"""


def test_a_full_disk_at_exit_loses_no_row(tmp_path):
    """Issue 20.4: the fallback file cannot go next to the store: it goes to the spool's disk, and the spool stays until then."""
    (tmp_path / "full").mkdir()
    store = str(tmp_path / "full" / "store.db")
    env = dict(os.environ, TRAINPROV_SPOOL=str(tmp_path / "spool"), TRAINPROV_QUEUE_ROWS="400")
    done = run_python(DISK_FULL, store, env=env, check=False)
    assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr
    assert not [p for p in os.listdir(tmp_path / "full") if "unwritten" in p]  # no half file on the full disk
    assert f"they are saved in {tmp_path / 'spool'}" in done.stderr, done.stderr
    out = replay_cli(store, env=env)
    assert "replayed" in out
    steps = tp.query("SELECT count(*) AS n, count(DISTINCT step) AS d FROM step_metrics", store=store)
    assert steps == [{"n": 1500, "d": 1500}]
    assert tp.query("SELECT status FROM runs", store=store) == [{"status": "finished"}]


SIGTERM_TWICE = WAIT_FOR + """
import os, sys, time, trainprov as tp
from trainprov.store.sqlite import SQLiteBackend
real_write = SQLiteBackend.write
def slow_write(self, groups, retry=False):  # a slow store: the step rows wait until the test says
    if any(t.table == "step_metrics" for t, _ in groups):
        sys.stdout.write("writing\\n")  # one write: the main thread prints at the same time
        wait_for("{release}")
    real_write(self, groups, retry=retry)
SQLiteBackend.write = slow_write
flow = tp.Dataflow("training", [tp.Transformation("train", generates=[tp.Dataset("step_metrics", step=int, loss=float)])])
with tp.start_run(flow, sys.argv[1]) as run, run.task("train") as train:
    for step in range(1, 12001):
        train.generated("step_metrics", step=step, loss=1.0 / step)
    try:
        sys.stdout.write("recorded\\n")
        time.sleep(600)
    finally:
        sys.stdout.write("stopping\\n")
"""


def test_a_second_sigterm_during_shutdown_does_not_lose_the_rows_being_written(sqlite_store, tmp_path):
    """Issue 20.5: SIGTERM, then SIGTERM again while the last rows are written: all of them arrive."""
    release = str(tmp_path / "release")
    child = Child(SIGTERM_TWICE.replace("{release}", release), sqlite_store)
    while not all(any(word in line for line in child.lines) for word in ("recorded", "writing")):  # either order
        child.until("")
    child.proc.send_signal(signal.SIGTERM)
    child.until("stopping")  # the run ends: its rows are being written
    child.proc.send_signal(signal.SIGTERM)
    noticed = ""
    for line in child.proc.stderr:  # until the child says it goes on, or dies
        if "again" in line:
            noticed = line
            break
    open(release, "w").close()
    code, errors = child.finish()
    assert noticed and "SIGKILL" in noticed, errors
    assert code == 128 + signal.SIGTERM
    steps = tp.query("SELECT count(*) AS n, count(DISTINCT step) AS d FROM step_metrics", store=sqlite_store)
    assert steps == [{"n": 12000, "d": 12000}]
    assert tp.query("SELECT status, error FROM runs", store=sqlite_store) == [{"status": "interrupted", "error": "signal SIGTERM"}]
