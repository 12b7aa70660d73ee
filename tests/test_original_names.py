"""Framework keys that sanitize to the same column name (issue 18, item 11).

`acc/top1` and `acc_top1` both make the column name acc_top1: each gets a column of its
own, the same one in every run, and the catalog keeps the key each column was made from,
which `trainprov schema` and the dashboard's schema listing show.
"""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

import trainprov as tp
from conftest import store_execute
from test_ui import get, start_dashboard, stop
from trainprov.capture.training import TrainingRecorder, training_dataflow
from trainprov.cli import main


@pytest.fixture
def store(any_store):
    """Each test below runs once per backend."""
    return any_store


def train(store: str, *epochs: dict) -> str:
    recorder = TrainingRecorder("test", store, record_agents=False)
    recorder.begin_training({"batch_size": 8})
    for number, metrics in enumerate(epochs, 1):
        recorder.epoch(number, metrics)
    recorder.end()
    return recorder.run.id


def columns(store: str) -> dict[str, str | None]:
    rows = tp.query("SELECT name, original_name FROM attributes WHERE dataset = 'epoch_metrics' "
                    "AND name LIKE 'acc%' ORDER BY name", store=store)
    return {r["name"]: r["original_name"] for r in rows}


def test_keys_that_sanitize_alike_keep_their_own_columns_and_names_in_every_run(store):
    first = train(store, {"acc/top1": 0.5, "acc_top1": 0.7})
    assert columns(store) == {"acc_top1": "acc/top1", "acc_top1_": "acc_top1"}
    # later runs find each key's column in the catalog, whatever the order or company of keys
    second = train(store, {"acc_top1": 0.9})
    third = train(store, {"acc_top1": 0.2, "acc/top1": 0.1})
    rows = tp.query("SELECT run_id, acc_top1, acc_top1_ FROM epoch_metrics ORDER BY recorded_at", store=store)
    assert [(r["acc_top1"], r["acc_top1_"]) for r in rows] == [(0.5, 0.7), (None, 0.9), (0.1, 0.2)]
    assert [r["run_id"] for r in rows] == [first, second, third]
    assert columns(store) == {"acc_top1": "acc/top1", "acc_top1_": "acc_top1"}

    schema = {e["column"]: e for e in tp.connect(store).schema() if e["table"] == "epoch_metrics"}
    assert schema["acc_top1"]["original_name"] == "acc/top1" and schema["acc_top1_"]["original_name"] == "acc_top1"
    assert schema["loss"]["original_name"] is None  # a name the column already has is not repeated
    shown = CliRunner().invoke(main, ["--store", store, "schema", "--dataset", "epoch_metrics"])
    assert shown.exit_code == 0, shown.output
    line = next(ln for ln in shown.output.splitlines() if ln.split()[:1] == ["acc_top1"])
    assert "acc/top1" in line
    as_json = CliRunner().invoke(main, ["--store", store, "schema", "--format", "json"])
    assert {"column": "acc_top1", "original_name": "acc/top1"}.items() <= next(
        e for e in json.loads(as_json.output) if e["column"] == "acc_top1").items()


def test_a_store_made_before_original_names_gets_the_column_and_keeps_its_columns(store):
    # as an earlier trainprov left it: the column val_acc made from the key val/acc with no
    # record of the key, and no original_name column in the catalog
    flow = training_dataflow("test_training").with_attributes("epoch_metrics", val_acc=float)
    with tp.start_run(flow, store, record_agents=False) as run, run.task("train") as task:
        task.generated("epoch_metrics", epoch=1, val_acc=0.5)
    store_execute(store, "ALTER TABLE attributes DROP COLUMN original_name")
    listed = {e["column"]: e for e in tp.connect(store).schema() if e["table"] == "epoch_metrics"}
    assert listed["val_acc"]["original_name"] is None  # still listed by a reader, which changes nothing
    train(store, {"val/acc": 0.6})
    rows = tp.query("SELECT val_acc FROM epoch_metrics ORDER BY recorded_at", store=store)
    assert [r["val_acc"] for r in rows] == [0.5, 0.6]  # the same column as before
    assert tp.query("SELECT original_name FROM attributes WHERE name = 'val_acc'", store=store) == [
        {"original_name": "val/acc"}]


def test_the_dashboard_schema_lists_original_names(tmp_path):
    store = str(tmp_path / "store.db")
    train(store, {"acc/top1": 0.5, "acc_top1": 0.7})
    proc, url = start_dashboard(store)
    try:
        status, _, body = get(url.rstrip("/") + "/api/schema")
        assert status == 200
        table = next(t for t in json.loads(body) if t["table"] == "epoch_metrics")
        originals = {c["column"]: c["original_name"] for c in table["columns"]}
        assert originals["acc_top1"] == "acc/top1" and originals["acc_top1_"] == "acc_top1"
        status, _, page = get(url.rstrip("/") + "/sql")
        assert status == 200 and "captured as acc/top1" in page.decode()
    finally:
        stop(proc)
