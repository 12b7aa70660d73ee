"""Store outages: training goes on, rows wait in memory and in the local spool, each is written once."""

from __future__ import annotations

import json
import os
import sqlite3
import time

import pytest

import trainprov as tp
from conftest import spawn_python, training_flow
from trainprov.capture.spool import Spool
from trainprov.capture.writer import Writer
from trainprov.store import open_backend
from trainprov.store.catalog import element_target


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
        self.written += [item[1][2] for _, batch in groups for item in batch if len(item) == 3]

    def maintain(self):
        self.inner.maintain()

    def is_permanent(self, exc):
        return self.inner.is_permanent(exc)

    def close(self):
        self.inner.close()


def items(flow, n, run="r"):
    target = element_target(flow.datasets["epoch_metrics"])
    return [(target, (run, f"{run}.1", i, time.time()), {"epoch": i, "loss": 1.0 / i}) for i in range(1, n + 1)]


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
