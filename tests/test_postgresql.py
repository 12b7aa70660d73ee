"""The PostgreSQL store: a whole run on a real server, read-only queries, racing declarations,
bulk writes, connection errors and the team roles of docs/postgresql.md.

The server is the one the session starts (conftest.py `postgres`); every test gets its own
database. What holds for both backends is tested in test_store.py, on both.
"""

from __future__ import annotations

import getpass
import hashlib
import json
import math
import os
import re
import socket
import subprocess
import sys
import time

import psycopg
import pytest
from click.testing import CliRunner

import trainprov as tp
from conftest import ROOT, PG_PASSWORD, spawn_python, training_flow
from trainprov.cli import main
from trainprov.store import hide_password, open_backend
from trainprov.store.catalog import element_item, element_target, target
from trainprov.store.postgresql import to_dollar

TESTS = os.path.join(ROOT, "tests")


def cli(store, *args):
    return CliRunner().invoke(main, ["--store", store, *args], catch_exceptions=False)


def record(store, flow=None, epochs=3, **fixed):
    with tp.start_run(flow or training_flow(), store) as run, run.task("train") as train:
        train.used("hyperparameters", lr=0.1, optimizer="sgd", batch_size=8)
        for epoch in range(1, epochs + 1):
            train.generated("epoch_metrics", epoch=epoch, loss=1.0 / epoch, **fixed)
    return run


def test_a_whole_run_is_recorded_on_the_server_and_read_back_with_the_api_and_the_cli(pg_store, tmp_path):
    ckpt = tmp_path / "model.bin"
    ckpt.write_bytes(b"weights")
    with tp.start_run(training_flow(), pg_store, name="on-postgres") as run:
        with run.task("train") as train:
            train.used("hyperparameters", lr=0.01, optimizer="adam", batch_size=32)
            for epoch, val in ((1, 0.9), (2, math.nan), (3, None)):
                train.generated("epoch_metrics", epoch=epoch, loss=1.0 / epoch, val_loss=val)
            saved = train.generated("checkpoints", epoch=3, path=ckpt)
        with run.task("evaluate", depends_on=[train]) as evaluate:
            evaluate.used(saved)
            evaluate.generated("test_results", loss=0.4)
    assert PG_PASSWORD not in run.store and ":***@" in run.store

    reader = tp.connect(pg_store)
    assert reader.rows("SELECT name, status, dataflow, dataflow_version FROM runs") == [
        {"name": "on-postgres", "status": "finished", "dataflow": "training", "dataflow_version": 1}
    ]
    tasks = reader.rows("SELECT transformation, status, duration_s FROM tasks ORDER BY started_at")
    assert [(t["transformation"], t["status"]) for t in tasks] == [("train", "finished"), ("evaluate", "finished")]
    assert all(t["duration_s"] > 0 for t in tasks)
    assert reader.rows("SELECT source_task_id, dataset FROM usages") == [{"source_task_id": train.id, "dataset": "checkpoints"}]
    assert reader.rows("SELECT size_bytes, sha256 FROM files") == [
        {"size_bytes": 7, "sha256": hashlib.sha256(b"weights").hexdigest()}
    ]
    kinds = {r["kind"] for r in reader.rows("SELECT kind FROM agents WHERE run_id = ?", [run.id])}
    assert kinds == {"person", "machine", "software"}
    details = reader.rows("SELECT details FROM agents WHERE kind = 'machine'")[0]["details"]
    assert isinstance(json.loads(details), dict)  # JSON text, as from SQLite
    frame = tp.query_df("SELECT epoch, val_loss FROM epoch_metrics ORDER BY epoch", store=pg_store)
    assert frame["val_loss"][0] == 0.9 and math.isnan(frame["val_loss"][1]) and frame["val_loss"][2] is None
    info = reader.show("latest")
    assert info["run"]["run_id"] == run.id and info["datasets"]["epoch_metrics"]["rows"] == 3
    assert {e["sql_type"] for e in reader.schema() if e["table"] == "epoch_metrics"} == {
        "TEXT", "BIGINT", "TIMESTAMPTZ", "DOUBLE PRECISION"}

    # the command line, in this process and as the installed command
    out = cli(pg_store, "query", "SELECT epoch, val_loss FROM epoch_metrics WHERE run_id = ? ORDER BY epoch",
              "-p", run.id, "--format", "json")
    assert out.exit_code == 0, out.output
    assert [r["val_loss"] for r in json.loads(out.output)] == [0.9, "NaN", None]
    assert run.id in cli(pg_store, "runs").output
    assert "epoch_metrics" in cli(pg_store, "show", "latest").output
    done = subprocess.run([sys.executable, "-m", "trainprov.cli", "--store", pg_store, "query",
                           "SELECT count(*) AS n FROM epoch_metrics", "--format", "csv"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout == "n\n3\n"


def test_the_environment_variable_names_a_postgresql_store(pg_store, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("TRAINPROV_STORE", pg_store)
    run = record(None)
    assert tp.query("SELECT count(*) AS n FROM epoch_metrics WHERE run_id = ?", [run.id]) == [{"n": 3}]
    assert not (tmp_path / "trainprov.db").exists()
    assert run.id in CliRunner(env={"TRAINPROV_STORE": pg_store}).invoke(main, ["runs"]).output


# ---- read-only queries ------------------------------------------------------------------------

@pytest.mark.parametrize("sql, refused", [
    ("DELETE FROM runs", "cannot execute DELETE in a read-only transaction"),
    ("UPDATE runs SET status = 'x'", "cannot execute UPDATE in a read-only transaction"),
    ("INSERT INTO runs (run_id) VALUES ('x')", "cannot execute INSERT in a read-only transaction"),
    ("DROP TABLE epoch_metrics", "cannot execute DROP TABLE in a read-only transaction"),
    ("CREATE TABLE t (x int)", "cannot execute CREATE TABLE in a read-only transaction"),
    ("CREATE TEMP TABLE t (x int)", "cannot execute CREATE TABLE in a read-only transaction"),
    ("ALTER TABLE runs ADD COLUMN x int", "cannot execute ALTER TABLE in a read-only transaction"),
    ("TRUNCATE runs", "cannot execute TRUNCATE TABLE in a read-only transaction"),
    # the server names the outer statement here
    ("WITH gone AS (DELETE FROM runs RETURNING run_id) SELECT * FROM gone", "cannot execute SELECT in a read-only transaction"),
    ("VACUUM runs", "VACUUM cannot run inside a transaction block"),
    ("SELECT 1; COMMIT; DELETE FROM runs", "one statement at a time"),
])
def test_the_server_refuses_every_statement_that_would_modify_the_store(pg_store, sql, refused):
    record(pg_store)
    with pytest.raises(tp.QueryError) as info:
        tp.query(sql, store=pg_store)
    assert refused in str(info.value)
    if "one statement" not in refused:
        assert str(info.value).startswith("queries are read-only")
    out = cli(pg_store, "query", sql)
    assert out.exit_code == 1 and refused in out.output
    assert tp.query("SELECT count(*) AS n FROM runs", store=pg_store) == [{"n": 1}]
    assert tp.query("SELECT count(*) AS n FROM epoch_metrics", store=pg_store) == [{"n": 3}]


def test_a_query_cannot_make_the_next_one_writable(pg_store):
    record(pg_store)
    with tp.connect(pg_store) as reader:
        # each of these is allowed, and undone: every query runs in its own READ ONLY transaction
        for sql in ("SET default_transaction_read_only = off", "SET TRANSACTION READ WRITE",
                    "SELECT set_config('default_transaction_read_only', 'off', false)", "COMMIT",
                    "SET SESSION CHARACTERISTICS AS TRANSACTION READ WRITE"):
            reader.result(sql)
            with pytest.raises(tp.QueryError, match="read-only"):
                reader.rows("DELETE FROM runs")
        assert reader.rows("SELECT count(*) AS n FROM runs") == [{"n": 1}]


def test_placeholders_are_question_marks_and_only_outside_literals_and_comments(pg_store):
    assert to_dollar("SELECT '?', \"a?\", $$?$$, $q$ ? $q$, E'\\'?', x::text -- ?\n/* ? /* ? */ */ FROM t WHERE a = ? AND b = ?") == (
        "SELECT '?', \"a?\", $$?$$, $q$ ? $q$, E'\\'?', x::text -- ?\n/* ? /* ? */ */ FROM t WHERE a = $1 AND b = $2", ("?", "?"))
    assert to_dollar("SELECT :a, :b::int, :a, '::c' ", named=True) == ("SELECT $1, $2::int, $1, '::c' ", ("a", "b"))
    run = record(pg_store)
    reader = tp.connect(pg_store)
    assert reader.rows("SELECT '?' AS q, ? AS p, count(*) AS n FROM runs WHERE run_id LIKE ?", ["x", run.id[:4] + "%"]) == [
        {"q": "?", "p": "x", "n": 1}]
    assert reader.rows("SELECT count(*) AS n FROM epoch_metrics WHERE epoch >= :low AND epoch <= :low + 1", {"low": 2}) == [{"n": 2}]
    # without parameters, the JSONB operator ? is the operator
    assert reader.rows("SELECT count(*) AS n FROM agents WHERE details ? 'packages'") == [{"n": 1}]
    with pytest.raises(tp.QueryError, match="no value for the parameter"):
        reader.rows("SELECT :nope", {"other": 1})


def test_a_reader_sees_a_column_added_while_it_keeps_asking(pg_store):
    record(pg_store)
    reader = tp.connect(pg_store)
    for _ in range(8):  # often enough that a driver would prepare the statement
        assert "accuracy" not in reader.df("SELECT * FROM epoch_metrics").columns
    record(pg_store, training_flow(accuracy=float), accuracy=0.5)
    frame = reader.df("SELECT * FROM epoch_metrics ORDER BY recorded_at")
    assert list(frame["accuracy"].isna()) == [True] * 3 + [False] * 3


def test_errors_in_queries_name_the_problem(pg_store, postgres):
    record(pg_store)
    with pytest.raises(tp.QueryError, match='relation "epoch_metric" does not exist; datasets in this store: checkpoints, epoch_metrics'):
        tp.query("SELECT * FROM epoch_metric", store=pg_store)
    with pytest.raises(tp.QueryError, match='column "accuracy" does not exist'):
        tp.query("SELECT accuracy FROM epoch_metrics", store=pg_store)
    with pytest.raises(tp.QueryError, match="syntax error"):
        tp.query("SELEC 1", store=pg_store)
    with pytest.raises(tp.StoreError, match="not a trainprov store"):
        tp.connect(postgres.url("postgres"))  # a database without trainprov's tables


# ---- values and bulk writes -------------------------------------------------------------------

def test_a_big_batch_goes_in_with_copy_and_keeps_every_value(pg_store, monkeypatch):
    flow = tp.Dataflow("bulk", [tp.Transformation("t", generates=[
        tp.Dataset("steps", step=int, loss=float, note=str, ok=bool, at="datetime", extra="json")])])
    backend = open_backend(pg_store)
    backend.declare(flow)
    copies = []
    real_copy = psycopg.Cursor.copy
    monkeypatch.setattr(psycopg.Cursor, "copy", lambda self, sql, *a, **k: copies.append(sql) or real_copy(self, sql, *a, **k))
    elements = element_target(flow.datasets["steps"])
    specials = [math.nan, math.inf, -math.inf, None, -0.0, 5e-324, 1 / 3]
    now = time.time()
    items = [
        element_item(elements, ("r1", "r1.1", i + 1, now + i * 1e-3),
         {"step": i, "loss": specials[i % len(specials)], "note": "tab\there, new\nline \\ 'quote'" if i % 2 else None,
          "ok": i % 3 == 0, "at": now, "extra": {"i": i, "bad": math.nan} if i % 5 == 0 else None})
        for i in range(20_000)
    ]
    links = target("task_dependencies", mode="link")
    deps = [(links, ("r1.2", f"r1.{i % 300}")) for i in range(1200)]  # duplicates: inserted once each
    backend.write([(elements, items), (links, deps)])
    assert copies == ["COPY steps (run_id, task_id, element_seq, recorded_at, step, loss, note, ok, at, extra) FROM STDIN"]
    reader = tp.connect(pg_store)
    assert reader.rows("SELECT count(*) AS n, count(DISTINCT element_seq) AS d FROM steps") == [{"n": 20_000, "d": 20_000}]
    rows = reader.rows("SELECT step, loss, note, ok, at, extra FROM steps WHERE step < 14 ORDER BY step")
    for row in rows:
        want = specials[row["step"] % len(specials)]
        assert (math.isnan(row["loss"]) if isinstance(want, float) and math.isnan(want) else row["loss"] == want)
    assert rows[1]["note"] == "tab\there, new\nline \\ 'quote'" and rows[0]["note"] is None
    assert rows[3]["ok"] is True and rows[1]["ok"] is False
    assert abs(rows[0]["at"].timestamp() - now) < 1e-5
    extra = json.loads(rows[0]["extra"])  # stored as valid JSON ("NaN"), read back as the NaN captured
    assert extra["i"] == 0 and math.isnan(extra["bad"])
    assert reader.rows("SELECT count(*) AS n FROM steps WHERE loss = 'NaN'") == [{"n": 20_000 // 7 + 1}]
    assert reader.rows("SELECT count(*) AS n FROM task_dependencies") == [{"n": 300}]


def test_a_row_the_server_refuses_is_set_aside_and_the_others_are_written(pg_store):
    backend = open_backend(pg_store)
    flow = tp.Dataflow("f", [tp.Transformation("t", generates=[tp.Dataset("vals", s=str)])])
    backend.declare(flow)
    elements = element_target(flow.datasets["vals"])
    bad = element_item(elements, ("r", "r.1", 2, time.time()), {"s": "nul \x00 inside"})
    with pytest.raises(psycopg.DataError) as info:
        backend.write([(elements, [element_item(elements, ("r", "r.1", 1, time.time()), {"s": "fine"}), bad])])
    assert backend.is_permanent(info.value)


# ---- concurrency ------------------------------------------------------------------------------

RACER = """
import os, sys, time
sys.path.insert(0, sys.argv[2])
import trainprov as tp
from conftest import training_flow
store, me, go = sys.argv[1], int(sys.argv[3]), sys.argv[4]
print("ready", flush=True)
while not os.path.exists(go):
    time.sleep(0.001)
for round_ in range(4):
    # every process grows the dataflow by the same columns, in step; odd ones add their own too
    extra = {f"m{k}": float for k in range(round_)}
    if me % 2:
        extra[f"own{me}"] = int
    with tp.start_run(training_flow(**extra), store) as run, run.task("train") as train:
        train.generated("epoch_metrics", epoch=round_, loss=float(me), **{k: 1 for k in extra})
print("done", flush=True)
"""


def test_processes_racing_to_declare_and_grow_one_dataflow_all_succeed(pg_store, tmp_path):
    go = tmp_path / "go"
    racers = [spawn_python(RACER, pg_store, TESTS, str(i), str(go)) for i in range(6)]
    for proc in racers:
        assert proc.stdout.readline().strip() == "ready", proc.stderr.read()
    go.touch()  # all of them declare at once
    for proc in racers:
        out, err = proc.communicate(timeout=180)
        assert proc.returncode == 0 and "done" in out, err
    reader = tp.connect(pg_store)
    assert reader.rows("SELECT count(*) AS n, count(DISTINCT status) AS s FROM runs") == [{"n": 24, "s": 1}]
    assert reader.rows("SELECT count(*) AS n FROM epoch_metrics") == [{"n": 24}]
    # one version per distinct specification, numbered 1, 2, ... without gaps
    versions = reader.rows("SELECT version, fingerprint FROM dataflows ORDER BY version")
    assert [v["version"] for v in versions] == list(range(1, len(versions) + 1))
    assert len({v["fingerprint"] for v in versions}) == len(versions) == 4 + 3 * 4  # 4 shared, and 3 odd racers x 4 rounds
    columns = [r["name"] for r in reader.rows("SELECT name FROM attributes WHERE dataset = 'epoch_metrics' ORDER BY position")]
    assert columns[:3] == ["epoch", "loss", "val_loss"]
    assert sorted(columns[3:]) == sorted(["m0", "m1", "m2", "own1", "own3", "own5"])
    assert reader.rows("SELECT count(*) AS n FROM epoch_metrics WHERE m2 = 1") == [{"n": 6}]


def test_the_writer_and_readers_reconnect_after_the_server_drops_their_connections(pg_store, postgres):
    database = pg_store.split("@/", 1)[1].split("?", 1)[0]
    with tp.start_run(training_flow(), pg_store) as run, run.task("train") as train:
        train.generated("epoch_metrics", epoch=1, loss=1.0)
        run.flush()
        reader = tp.connect(pg_store)
        assert reader.rows("SELECT count(*) AS n FROM epoch_metrics") == [{"n": 1}]
        with postgres.admin() as admin:  # what a server restart does to every session
            admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()",
                          [database])
        with pytest.warns(RuntimeWarning, match="rows are kept .* and retried"):
            train.generated("epoch_metrics", epoch=2, loss=0.5)
            run.flush()
    assert reader.rows("SELECT count(*) AS n FROM epoch_metrics") == [{"n": 2}]
    assert reader.rows("SELECT status FROM runs") == [{"status": "finished"}]


# ---- connection errors ------------------------------------------------------------------------

def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_connection_errors_name_the_store_without_its_password(pg_store, postgres, tmp_path, monkeypatch):
    monkeypatch.setenv("TRAINPROV_SPOOL", str(tmp_path / "spool"))
    flow = training_flow()
    unreachable = f"postgresql://ada:topsecret@127.0.0.1:{_free_port()}/trainprov"
    wrong_password = postgres.url(pg_store.split("@/", 1)[1].split("?")[0], password="topsecret")
    missing_db = postgres.url("no_such_database", password=PG_PASSWORD)
    for url, cause in ((unreachable, "Connection refused"), (wrong_password, "password authentication failed"),
                       (missing_db, 'database "no_such_database" does not exist')):
        # a server that does not answer is an outage: the run starts and its rows wait (issue 18.7)
        attempts = (lambda: tp.connect(url),) if url == unreachable else (lambda: tp.start_run(flow, url), lambda: tp.connect(url))
        for attempt in attempts:
            with pytest.raises(tp.StoreError) as info:
                attempt()
            message = str(info.value)
            assert message.startswith("cannot connect to the PostgreSQL store postgresql://")
            assert cause in message and ":***@" in message
            assert "topsecret" not in message and PG_PASSWORD not in message
        assert "topsecret" not in cli(url, "runs").output
    with pytest.warns(RuntimeWarning, match="Connection refused") as warned:
        run = tp.start_run(flow, unreachable)
        assert run.dataflow_version is None  # the store has not answered
        run.end()
        run._writer.close(timeout=0.5)  # the rows go to a file in the spool folder
    assert all("topsecret" not in str(w.message) and ":***@" in str(w.message) for w in warned)
    out = cli(unreachable, "runs")
    assert out.exit_code == 1 and "is the server running" in out.output
    assert hide_password("postgresql://ada@db/x?sslmode=require&password=topsecret") == (
        "postgresql://ada@db/x?sslmode=require&password=***")


# ---- the team setup of docs/postgresql.md -----------------------------------------------------

def _doc_blocks(heading: str = "## Team setup") -> list[str]:
    text = open(os.path.join(ROOT, "docs", "postgresql.md"), encoding="utf-8").read()
    section = text.split(f"\n{heading}\n", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```sql\n(.*?)```", section, re.S)


def _run_server_statements(postgres, sql: str) -> None:
    for statement in sql.strip().rstrip(";").split(";\n"):
        postgres.execute(statement)  # CREATE DATABASE cannot run in a transaction: one at a time


def _team_setup(postgres) -> None:
    """The roles and database of the docs' team setup, made as written (once per session)."""
    with postgres.admin() as conn:
        if conn.execute("SELECT 1 FROM pg_roles WHERE rolname = 'trainprov_writer'").fetchone():
            return
    server_sql, database_sql, member_sql = _doc_blocks()
    _run_server_statements(postgres, server_sql)
    postgres.execute(database_sql, database="trainprov")
    postgres.execute(member_sql)


def test_the_team_roles_of_the_docs_write_and_read_as_documented(postgres):
    _team_setup(postgres)
    pw = {"trainprov_writer": "change-me-writer", "trainprov_analyst": "change-me-analyst", "alice": "change-me-alice"}
    writer = postgres.url("trainprov", "trainprov_writer", pw["trainprov_writer"])
    analyst = postgres.url("trainprov", "trainprov_analyst", pw["trainprov_analyst"])
    alice = postgres.url("trainprov", "alice", pw["alice"]) + "&options=-crole%3Dtrainprov_writer"

    first = record(writer)
    by_alice = record(alice, training_flow(accuracy=float), accuracy=0.5)  # alice adds a column to the writer's table
    grown = tp.Dataflow("other", [tp.Transformation("t", generates=[tp.Dataset("alice_table", x=float)])])
    with tp.start_run(grown, alice) as run, run.task("t") as task:
        task.generated("alice_table", x=1.0)
    later = record(writer, training_flow(accuracy=float, f1=float), accuracy=0.6, f1=0.1)  # and the writer to alice's
    owners = {r["tableowner"] for r in tp.query("SELECT tableowner FROM pg_tables WHERE schemaname = 'public'", store=writer)}
    assert owners == {"trainprov_writer"}

    # the analyst reads every table, also those created after the grants, and can change none
    reader = tp.connect(analyst)
    assert {r["run_id"] for r in reader.rows("SELECT run_id FROM epoch_metrics")} == {first.id, by_alice.id, later.id}
    assert reader.rows("SELECT x FROM alice_table") == [{"x": 1.0}]
    with psycopg.connect(analyst, autocommit=True) as raw:  # not even with a client of their own
        for sql in ("DELETE FROM runs", "CREATE TABLE mine (x int)"):
            with pytest.raises(psycopg.Error):
                raw.execute(sql)
        raw.execute("SET default_transaction_read_only = off")
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            raw.execute("DELETE FROM runs")
    with pytest.raises(tp.StoreError):
        open_backend(analyst).declare(tp.Dataflow("sneaky", [tp.Transformation("t", generates=[tp.Dataset("sneaky", x=int)])]))
    assert reader.rows("SELECT count(*) AS n FROM runs") == [{"n": 4}]


def test_the_steering_grants_of_the_docs_let_a_role_steer_and_a_read_only_role_cannot(postgres, tmp_path):
    from test_steering import finish, start_training

    _team_setup(postgres)
    writer = postgres.url("trainprov", "trainprov_writer", "change-me-writer")
    analyst = postgres.url("trainprov", "trainprov_analyst", "change-me-analyst")
    steerer = postgres.url("trainprov", "trainprov_steerer", "change-me-steerer")
    child, run_id = start_training(writer, tmp_path)  # a training as the team runs it: it creates steering_requests
    try:
        server_sql, database_sql = _doc_blocks("## Steering")
        _run_server_statements(postgres, server_sql)
        postgres.execute(database_sql, database="trainprov")
        # a role with only what tp.steer needs
        postgres.execute("CREATE ROLE least_steerer LOGIN PASSWORD 'change-me-least'; "
                         "GRANT CONNECT ON DATABASE trainprov TO least_steerer")
        postgres.execute("GRANT USAGE ON SCHEMA public TO least_steerer; GRANT SELECT ON runs TO least_steerer; "
                         "GRANT SELECT, INSERT ON steering_requests TO least_steerer", database="trainprov")
        # and one that reads everything, as the analyst does, but is not read-only by default
        postgres.execute("CREATE ROLE plain_reader LOGIN PASSWORD 'change-me-reader'; "
                         "GRANT CONNECT ON DATABASE trainprov TO plain_reader")
        postgres.execute("GRANT USAGE ON SCHEMA public TO plain_reader; "
                         "GRANT SELECT ON ALL TABLES IN SCHEMA public TO plain_reader", database="trainprov")
        reader = postgres.url("trainprov", "plain_reader", "change-me-reader")

        # the analyst (read-only by default) and a role that may only read cannot steer, and write nothing
        for url, role, cause in ((analyst, "trainprov_analyst", "cannot execute INSERT in a read-only transaction"),
                                 (reader, "plain_reader", "permission denied for table steering_requests")):
            with pytest.raises(tp.SteeringError) as refused:
                tp.steer(run_id, {"learning_rate": 0.01}, store=url)
            message = str(refused.value)
            assert f"refused the steering request ({cause}): steering needs a role granted INSERT and SELECT on " \
                   "steering_requests and SELECT on runs" in message, message
            assert f"GRANT SELECT, INSERT ON steering_requests TO {role}; GRANT SELECT ON runs TO {role}" in message
            assert "change-me" not in message
            shown = cli(url, "steer", run_id, "--stop")
            assert shown.exit_code == 1 and "a read-only role cannot steer" in shown.output, shown.output
        assert tp.query("SELECT count(*) AS n FROM steering_requests", store=writer) == [{"n": 0}]

        # the least grants steer with tp.steer, and read the answer
        [applied] = tp.steer(run_id, {"learning_rate": 0.01}, reason="from a small role", store=postgres.url(
            "trainprov", "least_steerer", "change-me-least"), wait=30)
        assert applied.status == "applied", applied.message
        # the documented steering role steers from the command line, which reads the store to find the run
        stopped = cli(steerer, "steer", "latest", "--stop", "--wait")
        assert stopped.exit_code == 0 and "applied: the training stopped at the end of epoch" in stopped.output, stopped.output
        # and can change nothing else
        with psycopg.connect(steerer, autocommit=True) as raw:
            for sql in ("UPDATE steering_requests SET status = 'refused'", "DELETE FROM steering_requests",
                        "INSERT INTO runs (run_id) VALUES ('x')"):
                with pytest.raises(psycopg.errors.InsufficientPrivilege):
                    raw.execute(sql)
    finally:
        lines = finish(child)
    assert lines[-1].startswith("ended ")
    rows = tp.query("SELECT action, status, requested_by FROM steering_requests ORDER BY requested_at", store=writer)
    assert [(r["action"], r["status"]) for r in rows] == [("set", "applied"), ("stop", "applied")]
    assert {r["requested_by"] for r in rows} == {f"{getpass.getuser()}@{socket.gethostname()}"}
