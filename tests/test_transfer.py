"""`trainprov copy`: runs move between a SQLite file and a PostgreSQL database, either way, with
their identifiers, values, catalog and exports unchanged; copying again adds only what is new."""

from __future__ import annotations

import datetime as dt
import json
import math
import os
import re
import shlex
import sqlite3

import pytest
from click.testing import CliRunner

import trainprov as tp
from conftest import ROOT, training_flow
from trainprov import transfer
from trainprov.cli import main
from trainprov.export import export
from trainprov.spec import CATALOG_TABLES
from trainprov.store import Result, open_backend
from trainprov.store.catalog import TABLES
from trainprov.transfer import copy_runs

UTC = dt.timezone.utc
#: the first version of the dataflow: epoch metrics of every type; the run grows it by `acc`
FLOW = training_flow(note=str, config="json", measured_at=dt.datetime, improved=bool, steps=int)
GROWN = FLOW.with_attributes("epoch_metrics", acc=float)
#: another dataflow that shares the hyperparameters dataset
FINETUNE = tp.Dataflow("finetune", [
    tp.Transformation(
        "tune",
        uses=[tp.Dataset("hyperparameters", lr=float, optimizer=str, batch_size=int)],
        generates=[tp.Dataset("step_metrics", step=int, loss=float)],
    ),
])
LOSSES = [math.nan, math.inf, -math.inf, 0.125]


def cli(*args: str):
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def record_source(store: str, folder) -> dict[str, str]:
    """A store with a run that grew its dataflow mid-run (NaN, infinities, JSON, times, files, usages),
    a failed run, and a run of another dataflow with per-step rows."""
    data = folder / "data.csv"
    data.write_text("x,y\n1,2\n")
    with tp.start_run(FLOW, store, name="grows") as grows:
        with grows.task("train") as train:
            train.used("hyperparameters", lr=0.1, optimizer="adam", batch_size=2**62 + 7)
            source = train.file(data, role="raw_data")
            saved = None
            for epoch, loss in enumerate(LOSSES, 1):
                if epoch == 3:
                    grows.evolve(GROWN)
                extra = {"acc": 0.5 + epoch / 10} if epoch >= 3 else {}
                ckpt = folder / f"ckpt{epoch}.bin"
                ckpt.write_bytes(b"w" * epoch)
                train.generated(
                    "epoch_metrics", epoch=epoch, loss=loss, val_loss=None if epoch == 1 else 1.0 / epoch,
                    note="NaN" if epoch == 2 else f"épоch {epoch}", config={"layers": [64, epoch], "dropout": 0.25, "name": "net"},
                    measured_at=dt.datetime(2026, 11, 27, 21, 42, epoch, 123456, tzinfo=UTC), improved=epoch % 2 == 0,
                    steps=-(2**63) + epoch, **extra,
                )
                saved = train.generated("checkpoints", epoch=epoch, path=ckpt)
                train.derive(saved.files[0], [source])
        with grows.task("evaluate", depends_on=[train]) as evaluate:
            evaluate.used(saved)
            evaluate.generated("test_results", loss=math.nan)
    with pytest.raises(RuntimeError):
        with tp.start_run(GROWN, store, name="fails") as fails, fails.task("train") as train:
            train.used("hyperparameters", lr=1e-3, optimizer="sgd", batch_size=4)
            train.generated("epoch_metrics", epoch=1, loss=2.0, acc=0.1)
            raise RuntimeError("out of memory")
    with tp.start_run(FINETUNE, store, name="tune") as tune, tune.task("tune") as task:
        task.used("hyperparameters", lr=1e-4, optimizer="adamw", batch_size=16)
        for step in range(1, 41):
            task.generated("step_metrics", step=step, loss=1.0 / step)
    return {"grows": grows.id, "fails": fails.id, "tune": tune.id}


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    """The path of the source store and the ids of its three runs (read it; copy it before changing it)."""
    folder = tmp_path_factory.mktemp("source")
    store = str(folder / "laptop.db")
    return store, record_source(store, folder)


@pytest.fixture
def src(source, tmp_path):
    """A private copy of the source store, for tests that record more into it."""
    path = str(tmp_path / "src.db")
    with sqlite3.connect(source[0]) as a, sqlite3.connect(path) as b:
        a.backup(b)
    return path


def tables(store: str) -> list[str]:
    names = [r[0] for r in tp.connect(store).result("SELECT name FROM datasets ORDER BY name").rows]
    return [*CATALOG_TABLES, *names]


def raw_rows(path: str, table: str) -> list[tuple]:
    """Every row of a table of a SQLite store as stored (NaN is the text 'NaN'), sorted."""
    with sqlite3.connect(path) as conn:
        return sorted(conn.execute(f"SELECT * FROM {table}").fetchall(), key=repr)


def json_columns(store: str) -> dict[str, set[str]]:
    out = {name: {c for c, kind in t.columns if kind == "json"} for name, t in TABLES.items()}
    for ds, name, kind in tp.connect(store).result("SELECT dataset, name, type FROM attributes").rows:
        if kind == "json":
            out.setdefault(ds, set()).add(name)
    return out


def rows_as_read(store: str, table: str) -> list[dict]:
    """A table's rows as a user reads them from any store: NaN marked, JSON parsed, sorted."""
    json_cols = json_columns(store).get(table, set())

    def value(column, v):
        if isinstance(v, float) and math.isnan(v):
            return "<NaN>"
        if column in json_cols and v is not None:
            return json.loads(v)
        return v

    result = tp.connect(store).result(f"SELECT * FROM {table}")
    return sorted(({c: value(c, v) for c, v in zip(result.columns, row)} for row in result.rows), key=repr)


# ---- a round trip ---------------------------------------------------------------------------


def test_sqlite_to_postgresql_to_a_new_sqlite_keeps_every_row_value_and_export(source, pg_store, tmp_path):
    store, ids = source
    back = str(tmp_path / "back.db")
    first = copy_runs(store, pg_store)
    second = copy_runs(pg_store, back)

    assert first.copied == second.copied == [ids["grows"], ids["fails"], ids["tune"]]
    assert first.declared == second.declared == [("training", 1), ("training", 2), ("finetune", 1)]
    assert first.versions == second.versions == {("training", 1): 1, ("training", 2): 2, ("finetune", 1): 1}
    assert first.rows == second.rows and first.rows["step_metrics"] == 40 and first.rows["runs"] == 3

    # the new SQLite file holds exactly the bytes of the original, table by table
    assert tables(back) == tables(store)
    for table in tables(store):
        assert raw_rows(back, table) == raw_rows(store, table), table
    # and PostgreSQL the same values, in its own types
    for table in tables(store):
        assert rows_as_read(pg_store, table) == rows_as_read(store, table), table

    pg = tp.connect(pg_store)
    metrics = pg.result("SELECT epoch, loss, note, config, measured_at, improved, steps, acc FROM epoch_metrics "
                        "WHERE run_id = ? ORDER BY epoch", [ids["grows"]]).rows
    assert math.isnan(metrics[0][1]) and metrics[1][1] == math.inf and metrics[2][1] == -math.inf
    assert metrics[1][2] == "NaN"  # a text 'NaN' stays text
    assert json.loads(metrics[0][3]) == {"layers": [64, 1], "dropout": 0.25, "name": "net"}
    assert metrics[0][4] == dt.datetime(2026, 11, 27, 21, 42, 1, 123456, tzinfo=UTC)
    assert [m[5] for m in metrics] == [False, True, False, True]
    assert [m[6] for m in metrics][0] == -(2**63) + 1
    assert [m[7] for m in metrics] == [None, None, 0.8, 0.9]
    assert pg.result("SELECT batch_size FROM hyperparameters WHERE run_id = ?", [ids["grows"]]).rows == [(2**62 + 7,)]
    assert pg.result("SELECT status, error FROM runs WHERE run_id = ?", [ids["fails"]]).rows == [
        ("failed", "RuntimeError: out of memory")]

    for run_id in ids.values():
        original = export(run_id, store=store)
        assert export(run_id, store=back) == original  # byte for byte
        assert export(run_id, store=pg_store) == original  # from PostgreSQL too


# ---- copying again --------------------------------------------------------------------------


def test_copying_again_writes_nothing_and_says_so(source, any_store):
    store, ids = source
    copy_runs(store, any_store)
    again = CliRunner().invoke(main, ["copy", store, any_store], catch_exceptions=False)
    assert again.exit_code == 0, again.output
    assert "copied 0 runs" in again.stdout and "3 already there" in again.stdout
    assert "nothing to copy: the destination already has everything" in again.stdout
    assert again.stderr.count("already there, nothing to copy") == 3

    summary = copy_runs(store, any_store)
    assert summary.total_rows == 0 and summary.copied == [] and summary.declared == []
    assert summary.skipped == list(ids.values())
    for table in ("runs", "tasks", "epoch_metrics", "usages", "file_derivations"):
        assert rows_as_read(any_store, table) == rows_as_read(store, table)


def test_a_subset_of_runs_by_id_prefix_latest_and_start_time(source, tmp_path):
    store, ids = source
    dst = str(tmp_path / "subset.db")
    summary = copy_runs(store, dst, [ids["grows"][:-1], "latest"])
    assert summary.copied == [ids["grows"], ids["tune"]]
    reader = tp.connect(dst)
    assert {r[0] for r in reader.result("SELECT run_id FROM runs").rows} == {ids["grows"], ids["tune"]}
    assert reader.result("SELECT count(*) FROM epoch_metrics").rows == [(4,)]  # none of the failed run's
    assert reader.result("SELECT count(*) FROM tasks WHERE run_id = ?", [ids["fails"]]).rows == [(0,)]

    started = tp.connect(store).result("SELECT started_at FROM runs WHERE run_id = ?", [ids["fails"]]).rows[0][0]
    result = cli("copy", store, dst, "--since", started.isoformat())
    assert result.exit_code == 0
    assert "copied 1 run " in result.stdout and "1 already there" in result.stdout
    assert {r[0] for r in reader.result("SELECT run_id FROM runs").rows} == set(ids.values())
    nothing_after = copy_runs(store, dst, since=dt.date(2999, 1, 1))
    assert nothing_after.copied == nothing_after.skipped == []


def test_a_running_run_is_copied_as_far_as_it_got_and_completed_by_the_next_copy(src, any_store, monkeypatch):
    monkeypatch.setattr(transfer, "BATCH_ROWS", 7)  # several pages and write batches per table
    run = tp.start_run(GROWN, src, name="live")
    train = run.task("train")
    for epoch in range(1, 11):
        train.generated("epoch_metrics", epoch=epoch, loss=1.0 / epoch)
    run.flush()

    lines: list[str] = []
    first = copy_runs(src, any_store, [run.id], progress=lines.append)
    assert first.running == [run.id]
    assert any(run.id in line and "still running" in line for line in lines)
    reader = tp.connect(any_store)
    assert reader.result("SELECT status FROM runs WHERE run_id = ?", [run.id]).rows == [("running",)]
    assert reader.result("SELECT count(*) FROM epoch_metrics WHERE run_id = ?", [run.id]).rows == [(10,)]

    for epoch in range(11, 26):
        train.generated("epoch_metrics", epoch=epoch, loss=1.0 / epoch, acc=epoch / 100)
    train.end()
    with run.task("evaluate", depends_on=[train]) as evaluate:
        evaluate.generated("test_results", loss=0.2)
    run.end()

    second = copy_runs(src, any_store, [run.id])
    assert second.running == [] and second.copied == [run.id]
    assert second.rows == {"tasks": 1, "task_dependencies": 1, "epoch_metrics": 15, "test_results": 1}
    assert second.updated == {"tasks": 1, "runs": 1}
    def of_run(store, table):
        return [r for r in rows_as_read(store, table) if r.get("run_id", r.get("task_id", "")[: len(run.id)]) == run.id]

    for table in ("runs", "tasks", "task_dependencies", "epoch_metrics", "test_results", "agents"):
        assert of_run(any_store, table) == of_run(src, table), table
    assert reader.result("SELECT status FROM runs WHERE run_id = ?", [run.id]).rows == [("finished",)]
    assert copy_runs(src, any_store, [run.id]).total_rows == 0


def test_two_copies_of_one_run_at_once_write_each_row_once(source, any_store):
    """A copy that counted the destination's rows before another copy wrote them writes each row once."""
    store, ids = source
    copy_runs(store, any_store, [ids["tune"]])
    late = open_backend(any_store)
    real = late.query

    def counted_before_the_other_copy(sql, params=()):
        if "count(*) FROM step_metrics" in sql:
            return Result(["task_id", "count"], [])
        return real(sql, params)

    late.query = counted_before_the_other_copy
    copy_runs(store, late, [ids["tune"]])
    late.close()
    assert tp.connect(any_store).result("SELECT count(*), count(DISTINCT step) FROM step_metrics").rows == [(40, 40)]


# ---- the catalog ----------------------------------------------------------------------------


def test_a_dataset_with_more_columns_in_the_source_grows_the_destination(source, pg_store):
    store, ids = source
    with tp.start_run(training_flow(), pg_store) as earlier, earlier.task("train") as train:
        train.generated("epoch_metrics", epoch=1, loss=0.5)  # the group's store: epoch, loss, val_loss only
    summary = copy_runs(store, pg_store, [ids["grows"]])
    assert summary.versions == {("training", 1): 2, ("training", 2): 3}  # numbered after the group's own v1

    reader = tp.connect(pg_store)
    columns = [r[0] for r in reader.result(
        "SELECT name FROM attributes WHERE dataset = 'epoch_metrics' ORDER BY position").rows]
    assert columns == ["epoch", "loss", "val_loss", "note", "config", "measured_at", "improved", "steps", "acc"]
    assert reader.result("SELECT acc FROM epoch_metrics WHERE run_id = ?", [earlier.id]).rows == [(None,)]
    assert reader.result("SELECT epoch, acc FROM epoch_metrics WHERE run_id = ? ORDER BY epoch", [ids["grows"]]).rows == [
        (1, None), (2, None), (3, 0.8), (4, 0.9)]
    assert reader.result("SELECT dataflow_version FROM runs WHERE run_id = ?", [ids["grows"]]).rows == [(3,)]
    spec = reader.result("SELECT spec FROM dataflows WHERE name = 'training' AND version = 3").rows[0][0]
    assert json.loads(spec) == GROWN.to_dict()


def test_an_attribute_of_another_type_in_the_destination_is_refused_before_anything_is_written(source, tmp_path):
    store, ids = source
    dst = str(tmp_path / "other.db")
    with tp.start_run(training_flow(acc=str), dst) as other, other.task("train") as train:
        train.generated("epoch_metrics", epoch=1, loss=0.5, acc="high")
    result = cli("copy", store, dst)
    assert result.exit_code == 1
    message = result.output
    assert "dataset 'epoch_metrics' attribute 'acc' is float in" in message and "but str in" in message
    assert store in message and dst in message
    assert {r[0] for r in tp.connect(dst).result("SELECT run_id FROM runs").rows} == {other.id}
    assert tp.connect(dst).result("SELECT count(*) FROM dataflows").rows == [(1,)]


# ---- the command line -----------------------------------------------------------------------


def test_the_command_prints_progress_per_run_and_a_summary_and_a_dry_run_writes_nothing(source, tmp_path):
    store, ids = source
    dst = str(tmp_path / "group.db")
    dry = cli("copy", store, dst, "--dry-run")
    assert dry.exit_code == 0
    assert "would copy 3 runs" in dry.stdout and "nothing was written" in dry.stdout
    assert "dataflow training v2: would be declared" in dry.stderr
    assert not os.path.exists(dst)

    done = cli("copy", store, dst)
    assert done.exit_code == 0
    assert done.stderr.splitlines()[0] == f"copying 3 runs from {store} to {dst}"
    for run_id, label in ((ids["grows"], "training v2, finished"), (ids["fails"], "training v2, failed"),
                          (ids["tune"], "finetune v1, finished")):
        assert f"run {run_id} ({label}): copied " in done.stderr
    assert "step_metrics 40" in done.stderr
    assert done.stdout.splitlines()[0] == f"copied 3 runs from {store} to {dst}; 0 already there"
    assert "dataflow versions declared: training v1, training v2, finetune v1" in done.stdout
    assert "new rows: " in done.stdout and "epoch_metrics 5" in done.stdout and "runs 3" in done.stdout

    partial = str(tmp_path / "partial.db")
    copy_runs(store, partial, [ids["tune"]])
    dry = cli("copy", store, partial, "--dry-run")  # epoch_metrics and others are not there yet
    assert dry.exit_code == 0
    assert "would copy 2 runs" in dry.stdout and "1 already there" in dry.stdout
    assert "epoch_metrics 5" in dry.stdout and "step_metrics" not in dry.stdout
    assert tp.connect(partial).result("SELECT count(*) FROM runs").rows == [(1,)]


def test_the_commands_of_the_docs_work(source, pg_store, tmp_path):
    store, ids = source
    with open(os.path.join(ROOT, "docs", "postgresql.md"), encoding="utf-8") as f:
        section = f.read().split("## Moving runs between stores")[1].split("\n## ")[0]
    commands = [line for line in section.splitlines() if line.startswith("trainprov copy ")]
    assert len(commands) == 5
    prefixes = iter([ids["grows"][:-1], ids["grows"][:-1], ids["fails"][:-1]])  # unique prefixes
    bob = str(tmp_path / "bob.db")
    for command in commands:
        command = command.replace("postgresql://alice@db.example.org/trainprov", pg_store)
        command = command.replace("trainprov.db", store).replace("bob.db", bob)
        command = re.sub(r"\b\d{8}-\d{4}\b", lambda m: next(prefixes), command)
        result = cli(*shlex.split(command)[1:])
        assert result.exit_code == 0, (command, result.output)
    assert {r[0] for r in tp.connect(bob).result("SELECT run_id FROM runs").rows} == {ids["grows"], ids["fails"]}


def test_errors_name_the_problem(source, postgres, tmp_path):
    store, _ = source
    missing = cli("copy", str(tmp_path / "nope.db"), str(tmp_path / "dst.db"))
    assert missing.exit_code == 1 and f"no store at {tmp_path / 'nope.db'} to copy from" in missing.output

    same = cli("copy", store, os.path.join(os.path.dirname(store), ".", os.path.basename(store)))
    assert same.exit_code == 1 and "the source and the destination are the same store" in same.output

    nowhere = cli("copy", store, str(tmp_path / "no-folder" / "dst.db"))
    assert nowhere.exit_code == 1 and "the folder" in nowhere.output and "does not exist" in nowhere.output

    unreachable = cli("copy", store, postgres.url("no_such_database"))
    assert unreachable.exit_code == 1
    assert "cannot copy to the destination store: cannot connect to the PostgreSQL store" in unreachable.output
    assert "no_such_database" in unreachable.output and "s3cret" not in unreachable.output

    unknown = cli("copy", store, str(tmp_path / "dst.db"), "--run", "1999")
    assert unknown.exit_code == 1 and "no run '1999'" in unknown.output
    bad_date = cli("copy", store, str(tmp_path / "dst.db"), "--since", "last week")
    assert bad_date.exit_code == 1 and "since must be a date or a time" in bad_date.output
    assert not os.path.exists(tmp_path / "dst.db")


def test_every_store_table_is_copied():
    """A new store table must say how its rows belong to a run, or `copy` would leave them behind."""
    covered = set(transfer.DECLARATION_TABLES) | {"runs"} | set(transfer._run_tables())
    assert covered == set(TABLES)
