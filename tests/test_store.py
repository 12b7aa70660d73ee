"""The store: one typed table per dataset, catalog, versions, schema evolution, values.

Every test that holds for any store runs on both backends: a SQLite file and a database
on the PostgreSQL server the session started (see conftest.py).
"""

from __future__ import annotations

import datetime as dt
import math
import sqlite3

import pytest

import trainprov as tp
from conftest import dialect, store_execute, training_flow

# The few statements that differ between the dialects: the schema and type introspection.
SQL = {
    "sqlite": {
        "columns": "SELECT name, type FROM pragma_table_info('epoch_metrics') ORDER BY cid",
        "tables": "SELECT name FROM sqlite_master WHERE type = 'table'",
        "typeof": "typeof({})",
        "json_first": "json_extract(config, '$.layers[0]')",
        "year": "strftime('%Y', at)",
    },
    "postgresql": {
        "columns": "SELECT column_name AS name, upper(data_type) AS type FROM information_schema.columns "
        "WHERE table_schema = current_schema() AND table_name = 'epoch_metrics' ORDER BY ordinal_position",
        "tables": "SELECT table_name AS name FROM information_schema.tables WHERE table_schema = current_schema()",
        "typeof": "pg_typeof({})::text",
        "json_first": "(config->'layers'->>0)::int",
        "year": "to_char(at, 'YYYY')",
    },
}
TYPES = {
    "sqlite": {"str": "TEXT", "int": "INTEGER", "datetime": "TIMESTAMPTZ", "float": "REAL"},
    "postgresql": {"str": "TEXT", "int": "BIGINT", "datetime": "TIMESTAMP WITH TIME ZONE", "float": "DOUBLE PRECISION"},
}
VALUE_TYPES = {  # what the database says a stored timestamp and a float are
    "sqlite": ("text", "real"),
    "postgresql": ("timestamp with time zone", "double precision"),
}


@pytest.fixture
def store(any_store):
    """Each test below runs once per backend."""
    return any_store


def record_epochs(flow, store, epochs, **fixed):
    with tp.start_run(flow, store) as run:
        with run.task("train") as train:
            for epoch in range(1, epochs + 1):
                train.generated("epoch_metrics", epoch=epoch, loss=1.0 / epoch, **fixed)
    return run


def test_each_dataset_is_a_typed_table_and_the_natural_query_works(store, flow):
    run = record_epochs(flow, store, 3, val_loss=0.5)
    sql, types = SQL[dialect(store)], TYPES[dialect(store)]
    reader = tp.connect(store)
    columns = reader.rows(sql["columns"])
    assert [(c["name"], c["type"]) for c in columns] == [
        ("run_id", types["str"]), ("task_id", types["str"]), ("element_seq", types["int"]),
        ("recorded_at", types["datetime"]), ("epoch", types["int"]), ("loss", types["float"]),
        ("val_loss", types["float"]),
    ]
    rows = reader.rows("SELECT epoch, loss, val_loss FROM epoch_metrics WHERE run_id = ?", [run.id])
    assert rows == [{"epoch": e, "loss": 1.0 / e, "val_loss": 0.5} for e in (1, 2, 3)]
    tables = {r["name"] for r in reader.rows(sql["tables"])}
    assert {"runs", "tasks", "dataflows", "datasets", "attributes", "files", "agents", "usages",
            "epoch_metrics", "hyperparameters", "checkpoints", "test_results"} <= tables
    typeof = sql["typeof"]
    assert reader.rows(
        f"SELECT {typeof.format('recorded_at')} AS t, {typeof.format('duration_s')} AS d "
        "FROM runs JOIN epoch_metrics USING (run_id) LIMIT 1"
    ) == [{"t": VALUE_TYPES[dialect(store)][0], "d": VALUE_TYPES[dialect(store)][1]}]


def test_sqlite_store_is_in_wal_mode(tmp_path, flow):
    store = str(tmp_path / "store.db")
    record_epochs(flow, store, 1)
    assert sqlite3.connect(store).execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_same_dataflow_keeps_its_version_a_changed_one_gets_a_new_version(store):
    first = record_epochs(training_flow(), store, 1)
    again = record_epochs(training_flow(), store, 1)
    grown = record_epochs(training_flow(accuracy=float), store, 1)
    back = record_epochs(training_flow(), store, 1)  # an older specification keeps its version
    assert (first.dataflow_version, again.dataflow_version, grown.dataflow_version, back.dataflow_version) == (1, 1, 2, 1)
    versions = tp.query("SELECT name, version, spec FROM dataflows ORDER BY version", store=store)
    assert [v["version"] for v in versions] == [1, 2]
    assert '"accuracy"' in versions[1]["spec"] and '"accuracy"' not in versions[0]["spec"]
    runs = tp.query("SELECT dataflow_version FROM runs ORDER BY started_at", store=store)
    assert [r["dataflow_version"] for r in runs] == [1, 1, 2, 1]


def test_schema_evolution_adds_a_column_and_keeps_every_row(store):
    old = record_epochs(training_flow(), store, 4, val_loss=0.3)
    new = record_epochs(training_flow(accuracy=float), store, 2, val_loss=0.2, accuracy=0.9)
    rows = tp.query("SELECT run_id, epoch, val_loss, accuracy FROM epoch_metrics ORDER BY run_id, epoch", store=store)
    assert len(rows) == 6
    assert [r["accuracy"] for r in rows if r["run_id"] == old.id] == [None] * 4
    assert [r["val_loss"] for r in rows if r["run_id"] == old.id] == [0.3] * 4
    assert [r["accuracy"] for r in rows if r["run_id"] == new.id] == [0.9, 0.9]
    attrs = tp.query("SELECT name, type, position FROM attributes WHERE dataset = 'epoch_metrics' ORDER BY position", store=store)
    assert [(a["name"], a["type"]) for a in attrs] == [("epoch", "int"), ("loss", "float"), ("val_loss", "float"), ("accuracy", "float")]
    # the old declaration still works: its rows get NULL in the new column
    record_epochs(training_flow(), store, 1, val_loss=0.1)
    assert tp.query("SELECT count(*) AS n FROM epoch_metrics WHERE accuracy IS NULL", store=store) == [{"n": 5}]


def test_incompatible_type_is_a_clear_error_and_nothing_is_lost(store):
    record_epochs(training_flow(), store, 3)
    with pytest.raises(tp.SpecError) as info:
        record_epochs(training_flow(val_loss=str), store, 1)
    message = str(info.value)
    for part in ("'epoch_metrics'", "'val_loss'", "str", "float"):
        assert part in message
    assert tp.query("SELECT count(*) AS n FROM epoch_metrics", store=store) == [{"n": 3}]
    assert tp.query("SELECT count(*) AS n FROM dataflows", store=store) == [{"n": 1}]


def test_a_table_trainprov_did_not_create_is_not_taken_over(store, flow):
    other = tp.Dataflow("other", [tp.Transformation("t", generates=[tp.Dataset("notes", text=str)])])
    tp.start_run(other, store, record_agents=False).end()  # a trainprov store ...
    store_execute(store, "CREATE TABLE epoch_metrics (x TEXT)")  # ... where another program added a table
    with pytest.raises(tp.SpecError, match="already has a table of that name"):
        tp.start_run(flow, store)


def test_nan_and_infinities_round_trip_distinct_from_null(store):
    flow = tp.Dataflow("value_check", [tp.Transformation("t", generates=[tp.Dataset("vals", i=int, x=float)])])
    inputs = [math.nan, math.inf, -math.inf, None, 0.1 + 0.2, 1 / 3, -0.0, 5e-324, 1.7976931348623157e308]
    with tp.start_run(flow, store) as run, run.task("t") as task:
        for i, x in enumerate(inputs):
            task.generated("vals", i=i, x=x)
    rows = tp.query("SELECT i, x FROM vals ORDER BY i", store=store)
    got = [r["x"] for r in rows]
    assert math.isnan(got[0]) and got[1] == math.inf and got[2] == -math.inf and got[3] is None
    assert got[4:] == inputs[4:]  # exact: no rounding on the way
    assert tp.query("SELECT count(*) AS n FROM vals WHERE x = 'NaN'", store=store) == [{"n": 1}]
    assert tp.query("SELECT count(*) AS n FROM vals WHERE x IS NULL", store=store) == [{"n": 1}]
    frame = tp.query_df("SELECT i, x FROM vals ORDER BY i", store=store)
    assert frame["x"][3] is None and math.isnan(frame["x"][0])
    dataset = tp.connect(store).dataset("vals", run.id)
    assert math.isnan(dataset["x"][0]) and dataset["x"][3] is None
    # an aggregate that meets a NaN keeps saying so
    assert math.isnan(tp.query("SELECT max(x) AS worst FROM vals", store=store)[0]["worst"])
    assert tp.query("SELECT s FROM (SELECT 'NaN' AS s)", store=store) == [{"s": "NaN"}]


def test_a_text_nan_is_text_even_where_another_dataset_has_a_float_of_that_name(store):
    """The reader decodes a NaN by the column's type in the catalog, not by the column's name alone."""
    flow = tp.Dataflow("names", [tp.Transformation("t", generates=[tp.Dataset("scores", i=int, x=float),
                                                                    tp.Dataset("notes", i=int, x=str)])])
    with tp.start_run(flow, store) as run, run.task("t") as task:
        for i, x in enumerate([math.nan, 1.0, None, math.inf]):
            task.generated("scores", i=i, x=x)
        task.generated("notes", i=0, x="NaN")
    assert tp.query("SELECT x FROM notes", store=store) == [{"x": "NaN"}]
    assert tp.query("SELECT i, x FROM notes", store=store) == [{"i": 0, "x": "NaN"}]
    assert math.isnan(tp.query("SELECT x FROM scores WHERE i = 0", store=store)[0]["x"])
    # the store's one NaN filter: numbers (infinities too) pass, NaN and NULL do not
    with tp.connect(store) as reader:
        kept = reader.rows(f"SELECT i FROM scores WHERE {reader.backend.not_nan('x')} ORDER BY i")
    assert kept == [{"i": 1}, {"i": 3}]


def test_other_types_round_trip(store):
    flow = tp.Dataflow("types", [tp.Transformation("t", generates=[
        tp.Dataset("typed", n=int, s=str, b=bool, at="datetime", config="json")])])
    when = dt.datetime(2026, 3, 4, 5, 6, 7, 891011, tzinfo=dt.timezone.utc)
    with tp.start_run(flow, store) as run, run.task("t") as task:
        task.generated("typed", n=2**62, s="héllo 'quoted'; DROP TABLE runs", b=True, at=when, config={"layers": [64, 32]})
        task.generated("typed", b=False)
    rows = tp.query("SELECT n, s, b, at, config FROM typed ORDER BY element_seq", store=store)
    assert rows[0] == {"n": 2**62, "s": "héllo 'quoted'; DROP TABLE runs", "b": True, "at": when, "config": '{"layers": [64, 32]}'}
    assert rows[1] == {"n": None, "s": None, "b": False, "at": None, "config": None}
    sql = SQL[dialect(store)]
    assert tp.query(f"SELECT {sql['json_first']} AS first FROM typed WHERE n IS NOT NULL", store=store) == [{"first": 64}]
    # timestamps are real timestamps: the database's date functions read them
    assert tp.query(f"SELECT {sql['year']} AS y FROM typed WHERE at IS NOT NULL", store=store) == [{"y": "2026"}]
    assert "runs" in {r["name"] for r in tp.query(sql["tables"], store=store)}


def test_durations_are_numbers_of_seconds(store, flow):
    run = record_epochs(flow, store, 2)
    typeof = SQL[dialect(store)]["typeof"].format("duration_s")
    row = tp.query(f"SELECT duration_s, {typeof} AS t, started_at, ended_at FROM runs WHERE run_id = ?", [run.id], store=store)[0]
    assert row["t"] == VALUE_TYPES[dialect(store)][1]
    assert row["duration_s"] == pytest.approx((row["ended_at"] - row["started_at"]).total_seconds(), abs=1e-3)
    assert tp.query("SELECT sum(duration_s) > 0 AS ok FROM tasks", store=store) == [{"ok": 1}]


def test_sqlite_store_from_environment_variable(tmp_path, monkeypatch, flow):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("TRAINPROV_STORE", str(tmp_path / "env.db"))
    record_epochs(flow, None, 1)
    assert (tmp_path / "env.db").exists() and not (tmp_path / "trainprov.db").exists()
    monkeypatch.delenv("TRAINPROV_STORE")
    record_epochs(flow, None, 1)
    assert (tmp_path / "trainprov.db").exists()
    url_store = tmp_path / "url.db"
    record_epochs(flow, f"sqlite://{url_store}", 1)
    assert url_store.exists()


def test_names_next_to_the_reserved_ones_work_on_both_stores(store):
    """What the name check lets through, the store takes: the check refuses the rest with its own error."""
    flow = tp.Dataflow("edge_names", [tp.Transformation("t", generates=[
        tp.Dataset("nothing_", oid=int, rowid=int, xmin_=int, first=int, range=int),
        tp.Dataset("sqlite", x=int),
        tp.Dataset("stats_sqlite", x=int),
        tp.Dataset("runs_status", x=int),
        tp.Dataset("pg_stats_copy", x=int),
    ])])
    with tp.start_run(flow, store, record_agents=False) as run, run.task("t") as task:
        task.generated("nothing_", oid=1, rowid=2, xmin_=3, first=4, range=5)
        for name in ("sqlite", "stats_sqlite", "runs_status", "pg_stats_copy"):
            task.generated(name, x=6)
    assert tp.query("SELECT oid, rowid, xmin_, first, range FROM nothing_", store=store) == [
        {"oid": 1, "rowid": 2, "xmin_": 3, "first": 4, "range": 5}
    ]
    for name in ("sqlite", "stats_sqlite", "runs_status", "pg_stats_copy"):
        assert tp.query(f"SELECT x FROM {name}", store=store) == [{"x": 6}]


def test_another_programs_sqlite_database_is_refused_and_left_unchanged(tmp_path, flow):
    path = tmp_path / "mlflow.db"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE experiments (experiment_id INTEGER PRIMARY KEY, name TEXT)")
    conn.execute("CREATE TABLE runs (run_uuid TEXT PRIMARY KEY, experiment_id INTEGER)")  # a `runs` of its own
    conn.execute("INSERT INTO experiments VALUES (1, 'baseline')")
    conn.commit()
    conn.close()
    before = path.read_bytes()
    with pytest.raises(tp.StoreError) as info:
        tp.start_run(flow, path)
    message = str(info.value)
    assert str(path) in message and "another program's SQLite database" in message
    assert "experiments" in message and "runs" in message
    assert path.read_bytes() == before  # no trainprov table added, not switched to WAL
    check = sqlite3.connect(path)
    assert check.execute("PRAGMA journal_mode").fetchone()[0] == "delete"
    check.close()


def test_missing_unreadable_and_foreign_sqlite_stores_are_clear_errors(tmp_path, flow):
    with pytest.raises(tp.StoreError, match="no trainprov store at"):
        tp.connect(tmp_path / "missing.db")
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"this is not a database at all" * 100)
    with pytest.raises(tp.StoreError, match="not a trainprov store"):
        tp.connect(junk)
    plain = tmp_path / "plain.db"
    sqlite3.connect(plain).execute("CREATE TABLE t (x)")
    with pytest.raises(tp.StoreError, match="no trainprov catalog"):
        tp.connect(plain)
    with pytest.raises(tp.StoreError, match="folder .* does not exist"):
        tp.start_run(flow, tmp_path / "no" / "such" / "folder.db")
    with pytest.raises(tp.StoreError, match="unknown store URL scheme") as info:
        tp.start_run(flow, "mysql://user:secret@localhost/db")
    assert "secret" not in str(info.value)
