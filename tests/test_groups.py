"""Run groups, parent runs and tags: recorded by start_run and the integrations, queried with SQL,
listed by `trainprov runs --group`, exported as PROV, carried by `trainprov copy`."""

from __future__ import annotations

import json
import sqlite3

import pytest
from click.testing import CliRunner

import trainprov as tp
from conftest import training_flow
from prov_constraints import violations
from trainprov import export as ex
from trainprov.capture.groups import record_group
from trainprov.cli import main
from trainprov.transfer import copy_runs

PROV = "http://www.w3.org/ns/prov#"
TP_ID = "https://trainprov.org/id/"


def _sweep(store: str) -> tuple[tp.Run, list[tp.Run]]:
    flow = training_flow()
    record_group("lr-sweep", kind="sweep", description="three learning rates", details={"lr": [0.1, 0.01, 0.001]}, store=store)
    with tp.start_run(flow, store, name="driver") as driver:
        pass
    children = []
    for lr in (0.1, 0.01, 0.001):
        with tp.start_run(flow, store, group="lr-sweep", parent=driver, tags={"lr": lr, "owner": "ana", "final": True}) as run:
            with run.task("train") as t:
                t.used("hyperparameters", lr=lr, optimizer="sgd", batch_size=8)
                t.generated("epoch_metrics", epoch=1, loss=lr * 10, val_loss=lr * 11)
            run.tag(owner="bea")  # a tag set again takes the new value
        children.append(run)
    return driver, children


def test_a_group_its_runs_parent_and_tags_are_plain_sql(any_store):
    store = any_store
    driver, children = _sweep(store)
    rows = tp.query("SELECT r.run_id, r.parent_run_id, g.kind, g.details FROM runs r JOIN run_groups g "
                    "ON g.group_name = r.group_name WHERE r.group_name = 'lr-sweep' ORDER BY r.started_at", store=store)
    assert [r["run_id"] for r in rows] == [c.id for c in children]
    assert {r["parent_run_id"] for r in rows} == {driver.id}
    assert {r["kind"] for r in rows} == {"sweep"}
    details = rows[0]["details"]
    assert (json.loads(details) if isinstance(details, str) else details) == {"lr": [0.1, 0.01, 0.001]}
    tags = tp.query("SELECT tag, value FROM run_tags WHERE run_id = ? ORDER BY tag", [children[0].id], store=store)
    assert [(r["tag"], r["value"]) for r in tags] == [("final", "true"), ("lr", "0.1"), ("owner", "bea")]
    with tp.connect(store) as reader:
        assert list(reader.groups()["group_name"]) == ["lr-sweep"]
        assert int(reader.groups()["runs"][0]) == 3
        assert reader.show(children[1].id)["tags"] == {"final": "true", "lr": "0.01", "owner": "bea"}


def test_bad_groups_and_tags_are_named(store):
    with pytest.raises(tp.CaptureError, match="non-empty string"):
        tp.start_run(training_flow(), store, group="")
    with pytest.raises(tp.CaptureError, match="tag 'cfg'.*dict"):
        tp.start_run(training_flow(), store, tags={"cfg": {"a": 1}})
    with pytest.raises(tp.CaptureError, match="parent run"):
        tp.start_run(training_flow(), store, parent=3)


def test_runs_group_filter_on_the_command_line(store):
    driver, children = _sweep(store)
    cli = CliRunner()
    out = cli.invoke(main, ["runs", "--group", "lr-sweep", "--format", "csv", "--store", store])
    assert out.exit_code == 0, out.output
    listed = [line.split(",")[0] for line in out.output.strip().splitlines()[1:]]
    assert sorted(listed) == sorted(c.id for c in children) and driver.id not in listed
    table = cli.invoke(main, ["runs", "--store", store])
    assert "lr-sweep" in table.output
    shown = cli.invoke(main, ["show", children[0].id, "--store", store])
    assert "group lr-sweep" in shown.output and f"parent run {driver.id}" in shown.output and "owner=bea" in shown.output
    missing = cli.invoke(main, ["runs", "--group", "nope", "--store", store])
    assert missing.exit_code != 0 and "no run group 'nope'" in missing.output and "lr-sweep" in missing.output


def test_integrations_take_group_parent_and_tags(store):
    from trainprov.capture.training import TrainingRecorder

    recorder = TrainingRecorder("custom", store, group="g1", tags={"seed": 3})
    run = recorder.start()
    recorder.end()
    assert tp.query("SELECT group_name FROM runs WHERE run_id = ?", [run.id], store=store)[0]["group_name"] == "g1"
    assert tp.query("SELECT value FROM run_tags WHERE run_id = ? AND tag = 'seed'", [run.id], store=store)[0]["value"] == "3"


def test_prov_group_is_an_activity_that_informed_its_runs_and_the_parent_started_them(store):
    driver, children = _sweep(store)
    doc = ex.build_document([driver.id, *(c.id for c in children)], store=store)
    assert violations(doc) == []
    records = list(doc.get_records())
    group = [r for r in records if r.is_element() and str(r.identifier).endswith("group.lr-sweep")]
    assert len(group) == 1 and group[0].get_type().uri == PROV + "Activity"
    informed = {(str(r.formal_attributes[0][1]), str(r.formal_attributes[1][1])) for r in records
                if r.get_type().uri == PROV + "Communication"}
    for c in children:
        assert (f"tpid:{ex.run_identifier(c.id)}", "tpid:group.lr-sweep") in informed
    starts = {(str(r.formal_attributes[0][1]), str(r.formal_attributes[2][1])) for r in records
              if r.get_type().uri == PROV + "Start"}
    assert (f"tpid:{ex.run_identifier(children[0].id)}", f"tpid:{ex.run_identifier(driver.id)}") in starts
    run = [r for r in records if str(r.identifier) == f"tpid:{ex.run_identifier(children[0].id)}"][0]
    assert {str(v) for k, v in run.attributes if str(k) == "tp:tag"} == {"final=true", "lr=0.1", "owner=bea"}


def test_copy_carries_groups_and_tags_and_adds_nothing_the_second_time(store, tmp_path):
    driver, children = _sweep(store)
    dst = str(tmp_path / "copy.db")
    copy_runs(store, dst)
    again = copy_runs(store, dst)
    assert again.total_rows == 0
    with sqlite3.connect(dst) as conn:
        assert conn.execute("SELECT group_name, kind, description FROM run_groups").fetchall() == [
            ("lr-sweep", "sweep", "three learning rates")]
        assert conn.execute("SELECT count(*) FROM run_tags").fetchone()[0] == 9
        assert sorted(conn.execute("SELECT run_id FROM runs WHERE group_name = 'lr-sweep'").fetchall()) == sorted(
            (c.id,) for c in children)
        assert {r[0] for r in conn.execute("SELECT parent_run_id FROM runs WHERE group_name = 'lr-sweep'")} == {driver.id}


def test_a_store_made_before_run_groups_gets_them_on_first_use(store):
    tp.start_run(training_flow(), store).end()
    from trainprov.capture.writer import close_all

    close_all()
    with sqlite3.connect(store) as conn:  # the store as an earlier trainprov left it
        conn.execute("DROP INDEX runs_group_name_idx")
        conn.execute("ALTER TABLE runs DROP COLUMN group_name")
        conn.execute("ALTER TABLE runs DROP COLUMN parent_run_id")
        conn.execute("DROP TABLE run_groups")
        conn.execute("DROP TABLE run_tags")
    out = CliRunner().invoke(main, ["runs", "--store", store])
    assert out.exit_code == 0 and "finished" in out.output
    with tp.start_run(training_flow(), store, group="later", tags={"a": 1}) as run:
        pass
    assert tp.query("SELECT group_name FROM runs WHERE run_id = ?", [run.id], store=store)[0]["group_name"] == "later"
