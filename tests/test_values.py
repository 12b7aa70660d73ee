"""Values at the edges: refused at the capture call with a trainprov error, or stored and read back unchanged.

Runs on both backends (a SQLite file, a database on the session's PostgreSQL server): what
one store refuses only at write time must be refused at the call on both.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import warnings
from pathlib import Path

import pytest
import torch

import trainprov as tp
from conftest import dialect
from trainprov.errors import TrainprovError
from trainprov.export import export
from trainprov.torch import Tracker

UTC = dt.timezone.utc
MINUS_5 = dt.timezone(dt.timedelta(hours=-5))
PLUS_5 = dt.timezone(dt.timedelta(hours=5))


@pytest.fixture
def store(any_store):
    """Each test below runs once per backend."""
    return any_store


def value_flow() -> tp.Dataflow:
    return tp.Dataflow("edge_values", [tp.Transformation("t", generates=[
        tp.Dataset("vals", i=int, s=str, x=float, at="datetime", config="json", path="file")])])


def deep(levels: int, leaf: object = None) -> list:
    value: list = [] if leaf is None else [leaf]
    for _ in range(levels):
        value = [value]
    return value


BAD_VALUES = [
    ("s", "lone \ud800 surrogate", "lone surrogate"),
    ("s", "nul \x00 inside", "NUL character"),
    ("x", 10**400, "too large for a 64-bit float"),
    ("config", deep(100_000), "nested too deeply"),
    ("config", {"name": "lone \udc80 surrogate"}, "lone surrogate"),
    ("config", {"name": "nul \x00 inside"}, "NUL character"),
    ("at", dt.datetime.max.replace(tzinfo=MINUS_5), "outside the range"),
    ("at", dt.datetime.min.replace(tzinfo=PLUS_5), "outside the range"),
    ("path", Path("/tmp/not-utf8-\udcff"), "lone surrogate"),
]


@pytest.mark.parametrize("attr, value, problem", BAD_VALUES, ids=[f"{a}-{p}" for a, _, p in BAD_VALUES])
def test_a_value_no_store_can_hold_is_refused_at_the_call(store, attr, value, problem):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing may be set aside by the writer later
        with tp.start_run(value_flow(), store, record_agents=False) as run, run.task("t") as task:
            with pytest.raises(TrainprovError) as refused:
                task.generated("vals", i=1, **{attr: value})
            message = str(refused.value)
            assert "'vals'" in message and f"'{attr}'" in message and problem in message
            task.generated("vals", i=2, s="kept")
    assert tp.query("SELECT i, s FROM vals", store=store) == [{"i": 2, "s": "kept"}]
    assert tp.query("SELECT status FROM runs", store=store) == [{"status": "finished"}]


@pytest.mark.parametrize("name", [Path("runs/exp1"), {"lr": 0.1}, "bad \ud800 name"], ids=["path", "dict", "surrogate"])
def test_a_run_name_the_store_cannot_hold_is_refused_at_start(store, name):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(TrainprovError, match="run name"):
            tp.start_run(value_flow(), store, name=name, record_agents=False)
        with tp.start_run(value_flow(), store, name="exp1", record_agents=False):
            pass
    assert tp.query("SELECT name, status FROM runs", store=store) == [{"name": "exp1", "status": "finished"}]


def test_values_at_the_edges_are_stored_and_read_back_unchanged(store, tmp_path):
    edges = [
        dict(at=dt.datetime.max.replace(tzinfo=UTC), x=float(2**1023), s="emoji 😀 and é", config={"e": "😀"}),
        dict(at=dt.datetime.min.replace(tzinfo=UTC), x=-1e308, s="\\u0000 is only text", config={"s": "\\u0000"}),
        dict(at=dt.datetime(9999, 12, 31, 23, 0, tzinfo=PLUS_5), x=5e-324, s="tab\tnew\nline", config=deep(50)),
    ]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with tp.start_run(value_flow(), store, record_agents=False) as run, run.task("t") as task:
            for i, values in enumerate(edges):
                task.generated("vals", i=i, **values)
    rows = tp.query("SELECT i, s, x, at, config FROM vals ORDER BY i", store=store)
    assert len(rows) == len(edges)
    for row, values in zip(rows, edges):
        assert row["at"] == values["at"] and row["x"] == values["x"] and row["s"] == values["s"]
        assert json.loads(row["config"]) == values["config"]


# ---- JSON with NaN and infinities (issue 18, item 10) ---------------------------------------------

SQL = {  # a number inside a stored JSON value, read by the database's own JSON functions
    "sqlite": "json_extract(config, '$.{}')",
    "postgresql": "config->>'{}'",
}


def test_json_with_nan_and_infinity_is_valid_json_in_the_store_and_reads_back_the_same(store):
    config = {"d": math.nan, "up": math.inf, "down": -math.inf, "lr": 0.1,
              "words": ["NaN", "Infinity", "-Infinity", "~NaN", "~~Infinity", "plain"], "nested": [{"x": math.nan}]}
    with tp.start_run(value_flow(), store, record_agents=False) as run, run.task("t") as task:
        task.generated("vals", i=1, config=config)
        task.generated("vals", i=2, config=math.inf)
        task.generated("vals", i=3, config="NaN")  # a JSON string, not a number
        task.generated("vals", i=4, config=deep(300, math.nan))
    extract = SQL[dialect(store)]
    # the database's JSON functions read it (they fail on the bare word NaN)
    got = tp.query(f"SELECT {extract.format('lr')} AS lr, {extract.format('up')} AS up, "
                   f"{extract.format('d')} AS d FROM vals WHERE i = 1", store=store)
    assert float(got[0]["lr"]) == 0.1 and got[0]["up"] == "Infinity" and got[0]["d"] == "NaN"
    # trainprov's readers give back the value captured
    rows = tp.query("SELECT i, config FROM vals ORDER BY i", store=store)
    back = json.loads(rows[0]["config"])
    assert math.isnan(back["d"]) and back["up"] == math.inf and back["down"] == -math.inf and back["lr"] == 0.1
    assert back["words"] == config["words"] and math.isnan(back["nested"][0]["x"])
    assert json.loads(rows[1]["config"]) == math.inf and json.loads(rows[2]["config"]) == "NaN"
    leaf = json.loads(rows[3]["config"])
    for _ in range(300):
        leaf = leaf[0]
    assert math.isnan(leaf[0])
    frame = tp.connect(store).dataset("vals", run.id)
    assert json.loads(frame["config"][0])["up"] == math.inf
    literals = export(run.id, store=store, format="json").decode()
    assert "Infinity" in literals and "~NaN" in literals  # the values as captured, "~NaN" a real string


def test_plateau_scheduler_settings_are_queryable_with_json_functions(store):
    model = torch.nn.Linear(2, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(opt)  # mode_worse is inf
    with Tracker(model, opt, store, scheduler=scheduler) as tracker:
        tracker.epoch(loss=1.0)
    column = SQL[dialect(store)].replace("config", "lr_schedule")
    rows = tp.query(f"SELECT {column.format('mode_worse')} AS worse, {column.format('class')} AS cls, lr_schedule "
                    "FROM hyperparameters", store=store)
    assert rows[0]["worse"] == "Infinity" and rows[0]["cls"] == "ReduceLROnPlateau"
    assert json.loads(rows[0]["lr_schedule"])["mode_worse"] == math.inf
