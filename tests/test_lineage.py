"""Lineage from the store: what a checkpoint, a metrics row or a test result was derived from."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from click.testing import CliRunner

import trainprov as tp
from trainprov import export as ex
from trainprov.cli import main
from trainprov.lineage import format_lineage, lineage
from conftest import ROOT


@pytest.fixture(scope="module")
def example(tmp_path_factory):
    """examples/numpy_regression.py for 14 epochs: the learning rate drops before epoch 11."""
    store = str(tmp_path_factory.mktemp("example") / "example.db")
    done = subprocess.run(
        [sys.executable, os.path.join(ROOT, "examples", "numpy_regression.py"), "--epochs", "14", "--store", store],
        capture_output=True, text=True, timeout=180,
    )
    assert done.returncode == 0, done.stderr
    return store, done.stdout.split()[1]


def by_dataset(result) -> dict[str, list]:
    out: dict[str, list] = {}
    for node in result.ancestors:
        out.setdefault(node.dataset or "file", []).append(node)
    return out


def test_the_lineage_of_a_checkpoint_goes_back_to_the_data_and_the_hyperparameters(example):
    store, run_id = example
    reader = tp.connect(store)
    last = reader.rows("SELECT f.file_id, f.path, c.epoch FROM files f JOIN checkpoints c ON c.task_id = f.task_id "
                       "AND c.element_seq = f.element_seq WHERE f.run_id = ? ORDER BY c.epoch DESC LIMIT 1", [run_id])[0]
    result = lineage(last["file_id"], store=store)
    assert result.start.dataset == "checkpoints" and result.start.values["epoch"] == 14
    assert result.start.files[0]["file_id"] == last["file_id"]
    found = by_dataset(result)
    assert set(found) == {"checkpoints", "data_files", "hyperparameters", "adaptations", "data_params"}
    # the data it was trained and validated on, not the test split; how those were made
    assert sorted(n.values["split"] for n in found["data_files"]) == ["train", "val"]
    assert all(n.depth == 1 and n.relation == "used" for n in found["data_files"] + found["hyperparameters"])
    assert found["data_params"][0].depth == 2 and found["data_params"][0].values["seed"] == 7
    assert 0.05 in found["hyperparameters"][0].values.values()  # the initial learning rate
    # the learning-rate drop before it, and every earlier checkpoint, nearest first
    assert [(n.values["epoch"], n.values["new_value"]) for n in found["adaptations"]] == [(11, 0.025)]
    assert found["adaptations"][0].relation == "adapted by"
    assert [n.values["epoch"] for n in found["checkpoints"]] == list(range(13, 0, -1))
    assert [n.depth for n in found["checkpoints"]] == list(range(1, 14))
    assert all(n.relation == "previous checkpoint" for n in found["checkpoints"])
    assert not [n for n in result.ancestors if n.dataset in ("epoch_metrics", "test_results")]
    # the same entity, named five ways
    element = ex.element_identifier("checkpoints", result.start.task_id, result.start.seq)
    sha = result.start.files[0]["sha256"]
    for name in (element, "tpid:" + element, ex.TPID_NS + ex.file_identifier(last["file_id"]), sha[:16], "checkpoints"):
        assert lineage(name, store=store).start.identifier == element, name


def test_an_earlier_checkpoint_has_no_later_adaptation_in_its_lineage(example):
    store, run_id = example
    result = lineage("checkpoints", store=store, where="epoch = 5")
    found = by_dataset(result)
    assert "adaptations" not in found
    assert [n.values["epoch"] for n in found["checkpoints"]] == [4, 3, 2, 1]


def test_the_lineage_of_a_test_result_and_of_a_metrics_row(example):
    store, run_id = example
    result = lineage("test_results", store=store, run=run_id)
    assert result.start.transformation == "evaluate"
    nearest = [n for n in result.ancestors if n.depth == 1]
    assert [(n.dataset, n.values["epoch"]) for n in nearest] == [("checkpoints", 14)]
    assert {"data_files", "hyperparameters", "data_params"} <= set(by_dataset(result))

    row = lineage("epoch_metrics", store=store, where="epoch = 12")
    found = by_dataset(row)
    assert set(found) == {"data_files", "hyperparameters", "adaptations", "data_params"}
    assert lineage("epoch_metrics", store=store, where="epoch = 3").ancestors[-1].dataset == "data_params"
    inputs = lineage("hyperparameters", store=store)
    assert inputs.ancestors == [] and "recorded as an input" in format_lineage(inputs)


def test_lineage_agrees_with_the_exported_derivations(example):
    store, run_id = example
    result = lineage("checkpoints", store=store)
    doc = ex.build_document(run_id, store=store)
    derived = {
        rec.formal_attributes[1][1].uri
        for rec in doc.get_records()
        if rec.get_type().localpart == "Derivation"
        and rec.formal_attributes[0][1].uri == ex.TPID_NS + ex.file_identifier(result.start.files[0]["file_id"])
    }
    nearest = set()
    for node in result.ancestors:
        if node.depth == 1:
            # an element that stands for files is exported as those files
            nearest |= {ex.TPID_NS + ex.file_identifier(f["file_id"]) for f in node.files} or {ex.TPID_NS + node.identifier}
    adaptation = [u for u in derived if u.startswith(ex.TPID_NS + "value.")]
    assert derived - set(adaptation) == nearest - {ex.TPID_NS + n.identifier for n in result.ancestors if n.dataset == "adaptations"}
    assert len(adaptation) == 1


FLOW = tp.Dataflow("fine_tune", [
    tp.Transformation("train", uses=[tp.Dataset("hyperparameters", lr=float), tp.Dataset("extra_data", name=str)],
                      generates=[tp.Dataset("checkpoints", epoch=int, path="file")]),
    tp.Transformation("adapt", generates=[tp.Dataset("adaptations", epoch=int, parameter=str, old_value=float,
                                                      new_value=float, cause=str)]),
])


def test_time_order_separate_adapt_tasks_and_derivations_across_runs(tmp_path):
    store = str(tmp_path / "s.db")
    def ckpt(name: str):
        (tmp_path / name).write_bytes(name.encode())
        return tmp_path / name

    with tp.start_run(FLOW, store) as first:
        with first.task("train") as train:
            train.used("hyperparameters", lr=0.1)
            early = train.generated("checkpoints", epoch=1, path=ckpt("a.bin"))
            train.used("extra_data", name="late arrival")  # used after the first checkpoint
            with first.task("adapt", depends_on=[train]) as adapt:  # as integrations record adaptations
                adapt.generated("adaptations", epoch=2, parameter="lr", old_value=0.1, new_value=0.01, cause="plateau")
            late = train.generated("checkpoints", epoch=2, path=ckpt("b.bin"))
    a = lineage(early.files[0].file_id, store=store)
    assert {n.dataset for n in a.ancestors} == {"hyperparameters"}
    b = lineage(late.files[0].file_id, store=store)
    assert {n.dataset for n in b.ancestors} == {"hyperparameters", "extra_data", "adaptations", "checkpoints"}
    assert [n.relation for n in b.ancestors if n.dataset == "adaptations"] == ["adapted by"]

    # a second run fine-tunes the first run's checkpoint: a file recorded with its source
    with tp.start_run(FLOW, store) as second, second.task("train") as train:
        train.used("hyperparameters", lr=0.001)
        tuned = train.file(ckpt("tuned.bin"), role="checkpoint", derived_from=[late.files[0]])
    c = lineage(str(tmp_path / "tuned.bin"), store=store)
    assert c.start.kind == "file" and c.start.run_id == second.id
    runs = {n.run_id for n in c.ancestors}
    assert runs == {first.id, second.id}
    assert [n.relation for n in c.ancestors if n.depth == 1 and n.run_id == first.id] == ["derived from"]
    assert {n.values.get("lr") for n in c.ancestors if n.dataset == "hyperparameters"} == {0.1, 0.001}
    assert c.start.files[0]["file_id"] == tuned.file_id


def test_the_lineage_command(example):
    store, run_id = example
    runner = CliRunner()
    result = runner.invoke(main, ["--store", store, "lineage", "checkpoints"])
    assert result.exit_code == 0, result.output
    out = result.output
    assert "lineage of el.checkpoints." in out and "ancestors, nearest first" in out
    for words in ("previous checkpoint", "adapted by", "hyperparameters of train #1", "split=train", "seed=7",
                  "more checkpoints of train #1", "--all shows them"):
        assert words in out, words
    full = runner.invoke(main, ["--store", store, "lineage", "checkpoints", "--all"]).output
    assert "more checkpoints" not in full and full.count("previous checkpoint") == 13
    data = json.loads(runner.invoke(main, ["--store", store, "lineage", "checkpoints", "--format", "json"]).output)
    assert data["start"]["values"]["epoch"] == 14 and len(data["ancestors"]) == 18
    result = runner.invoke(main, ["--store", store, "lineage", "no_such_thing"])
    assert result.exit_code == 1 and "unknown entity 'no_such_thing'" in result.output and "datasets: adaptations" in result.output
    result = runner.invoke(main, ["--store", store, "lineage", "epoch_metrics", "--where", "epoch > 99"])
    assert result.exit_code == 1 and "has no element where epoch > 99" in result.output


def test_a_checkpoint_derives_from_the_adaptations_in_force_in_its_epoch(any_store, tmp_path):
    """Keras and the schedulers record an LR change for epoch N+1 before the epoch-N checkpoint is written."""
    store = any_store
    with tp.start_run(FLOW, store) as run:
        with run.task("train") as train:
            train.used("hyperparameters", lr=0.1)
            files = {}
            for epoch in (1, 2, 3):
                if epoch == 2:
                    with run.task("adapt", depends_on=[train]) as adapt:
                        adapt.generated("adaptations", epoch=3, parameter="lr", old_value=0.1, new_value=0.01,
                                        cause="schedule")
                (tmp_path / f"c{epoch}.bin").write_bytes(bytes([epoch]))
                files[epoch] = train.generated("checkpoints", epoch=epoch, path=tmp_path / f"c{epoch}.bin").files[0].file_id
    second = lineage(files[2], store=store)
    assert "adaptations" not in {n.dataset for n in second.ancestors}, "computed with the old learning rate"
    third = lineage(files[3], store=store)
    assert [(n.values["epoch"], n.relation) for n in third.ancestors if n.dataset == "adaptations"] == [(3, "adapted by")]
    # the export draws the same edges
    doc = ex.build_document(run.id, store=store)
    derived = {(r.formal_attributes[0][1].uri, r.formal_attributes[1][1].uri) for r in doc.get_records()
               if r.get_type().localpart == "Derivation"}
    from_value = {n for n, o in derived if o.startswith(ex.TPID_NS + "value.") and n.startswith(ex.TPID_NS + "file.")}
    assert from_value == {ex.TPID_NS + ex.file_identifier(files[3])}
