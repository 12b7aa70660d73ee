"""The analysis API (trainprov.analysis) and `trainprov analyze`, on runs with known values.

Three runs are recorded through TrainingRecorder (what every integration uses), so they land
in the shared training datasets, once in SQLite and once in PostgreSQL: the same analyses
must give the same answers on both. Expected values are computed here from the recorded
lists, not copied from a previous output.
"""

from __future__ import annotations

import json
import math

import pandas as pd
import pytest
from click.testing import CliRunner

import trainprov as tp
from trainprov import analysis
from trainprov.capture.training import TrainingRecorder
from trainprov.cli import main

NAN = math.nan
# name -> what the run recorded; "sgd" equals "adam" on val_loss at epochs 1 and 3, apart
# by 10 % at epoch 2 (a blip) and for good from epoch 4
RUNS = {
    "adam": dict(
        hp={"optimizer": "adam", "learning_rate": 0.01, "batch_size": 32},
        loss=[1.0, 0.8, 0.6, 0.5, 0.45, 0.44], val_loss=[1.1, 0.9, 0.7, 0.65, 0.66, 0.67],
        accuracy=[0.5, 0.6, 0.7, 0.75, 0.8, 0.82], seconds=2.0,
        layers=[dict(layer_index=0, name="d1", class_name="Dense", units=8),
                dict(layer_index=1, name="drop", class_name="Dropout", dropout_rate=0.2),
                dict(layer_index=2, name="d2", class_name="Dense", units=1)],
        lr_changes=[(4, 0.005, "ReduceLROnPlateau")], early_stop=(6, 10.0),
        test={"loss": 0.7, "accuracy": 0.78}, status="finished"),
    "sgd": dict(
        hp={"optimizer": "sgd", "learning_rate": 0.1, "batch_size": 32},
        loss=[1.0, 0.8, 0.6, 0.4, 0.3, 0.25], val_loss=[1.1, 0.99, 0.7, 0.5, 0.4, 0.35],
        accuracy=[0.5, 0.6, 0.7, 0.8, 0.85, 0.9], seconds=1.0,
        layers=[dict(layer_index=0, name="c", class_name="Conv2D", filters=4),
                dict(layer_index=1, name="bn", class_name="BatchNormalization"),
                dict(layer_index=2, name="f", class_name="Flatten"),
                dict(layer_index=3, name="d", class_name="Dense", units=1)],
        lr_changes=[(5, 0.01, "LearningRateScheduler")], early_stop=None,
        test={"loss": 0.4, "accuracy": 0.88}, status="finished"),
    "diverged": dict(
        hp={"optimizer": "sgd", "learning_rate": 1.0, "batch_size": 64},
        loss=[1.0, 5.0, NAN], val_loss=[1.2, 6.0, NAN], accuracy=[0.4, 0.1, NAN], seconds=3.0,
        layers=[], lr_changes=[], early_stop=None, test=None, status="failed"),
}


def record(store: str) -> dict[str, str]:
    """Record RUNS in a store, in order; returns name -> run id."""
    ids = {}
    for name, r in RUNS.items():
        rec = TrainingRecorder("test", store, name=name, record_agents=False)
        rec.begin_training(r["hp"], r["layers"])
        lr = r["hp"]["learning_rate"]
        changes = {epoch: (new, cause) for epoch, new, cause in r["lr_changes"]}
        for epoch, (loss, val_loss, acc) in enumerate(zip(r["loss"], r["val_loss"], r["accuracy"]), start=1):
            if epoch in changes:
                new, cause = changes[epoch]
                rec.adaptation(epoch, "learning_rate", cause, parameter="learning_rate", old_value=lr, new_value=new)
                lr = new
            rec.epoch(epoch, {"loss": loss, "val_loss": val_loss, "accuracy": acc}, learning_rate=lr, seconds=r["seconds"])
        if r["early_stop"]:
            epoch, planned = r["early_stop"]
            rec.adaptation(epoch, "early_stopping", "EarlyStopping", parameter="epochs", old_value=planned, new_value=float(epoch))
        ok = r["status"] == "finished"
        rec.end_training("finished" if ok else "failed", None if ok else "diverged")
        if r["test"]:
            rec.evaluation(r["test"], seconds=0.5)
        rec.end(r["status"], None if ok else "diverged")
        ids[name] = rec.run.id
    return ids


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def recorded(request, tmp_path_factory):
    """(store, {name: run id}) of RUNS recorded in a SQLite file, then in a PostgreSQL database."""
    if request.param == "sqlite":
        store = str(tmp_path_factory.mktemp("analysis") / "store.db")
    else:
        store = request.getfixturevalue("postgres").create_database("analysis")
    return store, record(store)


def numbers(values):
    return [v for v in values if not math.isnan(v)]


def test_best_runs_by_minimum_maximum_last_and_at_an_epoch(recorded):
    store, ids = recorded
    best = analysis.best_runs("val_loss", store=store)
    expected = sorted(RUNS, key=lambda n: min(numbers(RUNS[n]["val_loss"])))
    assert list(best["name"]) == expected and list(best["rank"]) == [1, 2, 3]
    for row in best.itertuples():
        values = RUNS[row.name]["val_loss"]
        assert row.val_loss == min(numbers(values))
        assert row.epoch == values.index(min(numbers(values))) + 1  # where the minimum was first reached
        assert row.epochs_run == len(values)
        assert (row.optimizer, row.learning_rate, row.batch_size) == tuple(RUNS[row.name]["hp"].values())
        assert row.status == RUNS[row.name]["status"] and row.run_id == ids[row.name]

    top = analysis.best_runs("accuracy", "max", hyperparameters=False, store=store)
    assert list(top["name"]) == sorted(RUNS, key=lambda n: -max(numbers(RUNS[n]["accuracy"])))
    assert "optimizer" not in top.columns
    assert top.set_index("name")["accuracy"].to_dict() == {n: max(numbers(r["accuracy"])) for n, r in RUNS.items()}
    assert analysis.best_runs("accuracy", hyperparameters=False, store=store).equals(top)  # higher is better: max by default

    last = analysis.best_runs("val_loss", "last", hyperparameters=["optimizer"], store=store)
    assert list(last["name"][:2]) == ["sgd", "adam"] and last["val_loss"][0] == RUNS["sgd"]["val_loss"][-1]
    assert last["name"].iloc[-1] == "diverged" and math.isnan(last["val_loss"].iloc[-1])  # NaN is a value, ranked last
    assert list(last.columns[-1:]) == ["optimizer"]

    at2 = analysis.best_runs("val_loss", "at", epoch=2, store=store)
    assert at2.set_index("name")["val_loss"].to_dict() == {n: r["val_loss"][1] for n, r in RUNS.items()}
    assert list(at2["name"]) == ["adam", "sgd", "diverged"] and set(at2["epoch"]) == {2}
    assert list(analysis.best_runs("val_loss", epoch=5, store=store)["name"]) == ["sgd", "adam"]  # the diverged run has 3 epochs

    worst_first = analysis.best_runs("val_loss", ascending=False, limit=1, status="finished", store=store)
    assert list(worst_first["name"]) == ["adam"]
    assert list(analysis.best_runs("val_loss", status="failed", store=store)["name"]) == ["diverged"]


def test_best_runs_refuses_unknown_columns_and_incomplete_requests(recorded):
    store, _ = recorded
    with pytest.raises(tp.QueryError, match="no metric 'val_los'.*val_loss"):
        analysis.best_runs("val_los", store=store)
    with pytest.raises(tp.QueryError, match="needs an epoch"):
        analysis.best_runs("val_loss", "at", store=store)
    with pytest.raises(tp.QueryError, match="no dataset 'nope'"):
        analysis.best_runs("loss", dataset="nope", store=store)
    with pytest.raises(tp.QueryError, match="no hyperparameter 'dropout'"):
        analysis.best_runs("loss", hyperparameters=["dropout"], store=store)


def test_progress_shows_the_last_epochs_of_the_latest_run_with_nan_as_nan(recorded):
    store, ids = recorded
    last = analysis.progress(last=2, store=store)
    assert list(last["run_id"]) == [ids["diverged"]] * 2 and list(last["epoch"]) == [2, 3]
    assert last["loss"][0] == RUNS["diverged"]["loss"][1] and math.isnan(last["loss"][1])
    assert set(last["status"]) == {"failed"}
    whole = analysis.progress(ids["adam"][:-1], last=10, store=store)  # a unique prefix names a run
    assert list(whole["epoch"]) == [1, 2, 3, 4, 5, 6] and list(whole["val_loss"]) == RUNS["adam"]["val_loss"]


def test_adaptation_effect_compares_the_windows_around_each_learning_rate_change(recorded):
    store, ids = recorded
    effect = analysis.adaptation_effect("val_loss", window=2, store=store)
    assert sorted(effect["run_id"]) == sorted([ids["adam"], ids["sgd"]])  # early stopping is not a learning-rate change
    for row in effect.itertuples():
        name = next(n for n, i in ids.items() if i == row.run_id)
        values, (epoch, new, cause) = RUNS[name]["val_loss"], RUNS[name]["lr_changes"][0]
        before = sum(values[epoch - 3 : epoch - 1]) / 2  # epochs epoch-2 and epoch-1
        after = sum(values[epoch - 1 : epoch + 1]) / 2  # epochs epoch and epoch+1
        assert (row.epoch, row.new_value, row.cause) == (epoch, new, cause)
        assert row.val_loss_before == pytest.approx(before) and row.val_loss_after == pytest.approx(after)
        assert row.change == pytest.approx(after - before)
        assert row.relative_change == pytest.approx((after - before) / before)
    stops = analysis.adaptation_effect("loss", window=1, parameter="epochs", store=store)
    assert list(stops["run_id"]) == [ids["adam"]] and stops["loss_before"][0] == RUNS["adam"]["loss"][4]
    with pytest.raises(tp.QueryError, match="window"):
        analysis.adaptation_effect(window=0, store=store)


def test_convergence_finds_the_first_epoch_near_the_best(recorded):
    store, ids = recorded
    frame = analysis.convergence("val_loss", tolerance=0.01, store=store).set_index("run_id")
    for name, r in RUNS.items():
        values = r["val_loss"]
        best = min(numbers(values))
        first = next(i for i, v in enumerate(values, start=1) if v <= best + 0.01 * abs(best))
        row = frame.loc[ids[name]]
        assert (row["best_val_loss"], row["converged_at_epoch"], row["epochs_run"]) == (best, first, len(values))
        assert row["epochs_after_convergence"] == len(values) - first
    # a wider tolerance converges earlier: adam's 0.7 at epoch 3 is within 10 % of 0.65
    assert analysis.convergence(tolerance=0.1, store=store).set_index("run_id").loc[ids["adam"], "converged_at_epoch"] == 3
    highest = analysis.convergence("accuracy", statistic="max", store=store).set_index("run_id")
    assert highest.loc[ids["sgd"], "best_accuracy"] == 0.9 and highest.loc[ids["sgd"], "converged_at_epoch"] == 6
    assert analysis.convergence("accuracy", store=store).set_index("run_id").equals(highest)  # max by default


def test_epoch_time_groups_configurations_fastest_first(recorded):
    store, _ = recorded
    frame = analysis.epoch_time(["optimizer", "batch_size"], store=store)
    expected = sorted(RUNS.values(), key=lambda r: r["seconds"])
    assert [(row.optimizer, row.batch_size) for row in frame.itertuples()] == \
        [(r["hp"]["optimizer"], r["hp"]["batch_size"]) for r in expected]
    assert list(frame["mean_epoch_s"]) == [r["seconds"] for r in expected]
    assert list(frame["epochs"]) == [len(r["loss"]) for r in expected] and set(frame["runs"]) == {1}
    by_default = analysis.epoch_time(store=store)  # optimizer, batch size, learning rate (and model size)
    assert {"optimizer", "batch_size", "learning_rate"} <= set(by_default.columns) and len(by_default) == 3


def test_architecture_facts_next_to_test_results(recorded):
    store, ids = recorded
    frame = analysis.architecture_vs_test("loss", store=store)
    evaluated = sorted((n for n in RUNS if RUNS[n]["test"]), key=lambda n: RUNS[n]["test"]["loss"])
    assert list(frame["run_id"]) == [ids[n] for n in evaluated]
    for row in frame.itertuples():
        r = RUNS[row.name]
        assert row.n_layers == len(r["layers"])
        assert row.conv_layers == sum(1 for layer in r["layers"] if layer.get("filters"))
        assert row.norm_layers == sum(1 for layer in r["layers"] if "Normalization" in layer["class_name"])
        dropouts = [layer["dropout_rate"] for layer in r["layers"] if "dropout_rate" in layer]
        assert (row.max_dropout == max(dropouts)) if dropouts else math.isnan(row.max_dropout)
        assert (row.loss, row.accuracy) == (r["test"]["loss"], r["test"]["accuracy"])
    assert list(analysis.architecture_vs_test("accuracy", store=store)["name"]) == ["sgd", "adam"]  # higher is better


def test_comparison_shows_differing_hyperparameters_and_curves_side_by_side(recorded):
    store, ids = recorded
    pair = [ids["adam"], ids["sgd"]]
    every = analysis.hyperparameters(pair, store=store)
    assert list(every.index) == pair and every.loc[ids["sgd"], "optimizer"] == "sgd"
    differ = analysis.differing_hyperparameters(pair, store=store)
    assert list(differ.index) == ["optimizer", "learning_rate"]  # batch size and framework are the same
    assert list(differ.columns) == pair and differ.loc["learning_rate"].tolist() == [0.01, 0.1]
    assert list(analysis.differing_hyperparameters([ids["sgd"], ids["diverged"]], store=store).index) == \
        ["learning_rate", "batch_size"]

    long = analysis.curves(pair, ["val_loss", "accuracy"], store=store)
    assert list(long.columns) == ["run_id", "epoch", "val_loss", "accuracy"]
    assert long[long["run_id"] == ids["sgd"]]["accuracy"].tolist() == RUNS["sgd"]["accuracy"]
    wide = analysis.side_by_side([ids["diverged"], ids["adam"]], "loss", store=store)
    assert list(wide.columns) == [ids["diverged"], ids["adam"]] and list(wide.index) == [1, 2, 3, 4, 5, 6]
    assert wide[ids["adam"]].tolist() == RUNS["adam"]["loss"]
    assert wide[ids["diverged"]][:2].tolist() == RUNS["diverged"]["loss"][:2] and wide[ids["diverged"]].isna().sum() == 4


def test_divergence_is_the_first_epoch_from_which_the_gap_stays_above_the_tolerance(recorded):
    store, ids = recorded
    frame = analysis.divergence([ids["adam"], ids["sgd"], ids["diverged"]], "val_loss", store=store)
    pairs = {(r.run_a, r.run_b): r for r in frame.itertuples()}
    assert len(pairs) == 3
    a, b = RUNS["adam"]["val_loss"], RUNS["sgd"]["val_loss"]
    gaps = [abs(x - y) / max(abs(x), abs(y)) for x, y in zip(a, b)]
    # the 10 % blip at epoch 2 does not last 3 epochs; from epoch 4 the runs stay apart
    assert gaps[1] > 0.05 and gaps[2] == 0 and all(g > 0.05 for g in gaps[3:])
    row = pairs[(ids["adam"], ids["sgd"])]
    assert (row.common_epochs, row.diverged_at_epoch, row.last_common_epoch) == (6, 4, 6)
    assert row.gap_at_divergence == pytest.approx(gaps[3]) and row.gap_at_last == pytest.approx(gaps[5])
    # with patience 1 the blip counts; with a tolerance above every gap they never diverge
    assert analysis.divergence([ids["adam"], ids["sgd"]], patience=1, store=store)["diverged_at_epoch"][0] == 2
    never = analysis.divergence([ids["adam"], ids["sgd"]], tolerance=0.9, store=store)
    assert pd.isna(never["diverged_at_epoch"][0]) and never["common_epochs"][0] == 6
    # a NaN against a number is apart (infinitely); the diverged run has 3 epochs in common with the others
    row = pairs[(ids["adam"], ids["diverged"])]
    assert (row.common_epochs, row.diverged_at_epoch, row.gap_at_last) == (3, 1, math.inf)


def test_runs_overview_lists_every_run_with_its_best_metrics_and_hyperparameters(recorded):
    store, ids = recorded
    frame = analysis.runs_overview(store=store).set_index("name")
    assert list(frame.index) == list(reversed(list(RUNS)))  # newest first
    for name, r in RUNS.items():
        row = frame.loc[name]
        assert (row["run_id"], row["status"], row["epochs_run"]) == (ids[name], r["status"], len(r["loss"]))
        assert row["best_val_loss"] == min(numbers(r["val_loss"]))
        assert row["best_accuracy"] == max(numbers(r["accuracy"]))  # higher is better for accuracy
        assert row["optimizer"] == r["hp"]["optimizer"] and row["duration_s"] >= 0
    assert "best_learning_rate" not in frame.columns and "best_epoch_time_s" not in frame.columns
    assert "epochs" not in frame.columns  # no run recorded the planned epochs: the column is left out
    light = analysis.runs_overview(summary=False, hyperparameters=False, store=store)
    assert "best_loss" not in light.columns and len(light) == 3
    some = analysis.runs_overview(runs=[ids["sgd"]], metrics=["loss"], store=store)
    assert list(some["name"]) == ["sgd"] and some["best_loss"][0] == min(RUNS["sgd"]["loss"])


def test_higher_is_better_reads_metric_names():
    assert analysis.higher_is_better("val_accuracy") and analysis.higher_is_better("f1_score")
    assert analysis.higher_is_better("auc") and analysis.higher_is_better("r2")
    assert not analysis.higher_is_better("val_loss") and not analysis.higher_is_better("mae")
    assert not analysis.higher_is_better("relative_l2_error")


# ---- the command line ---------------------------------------------------------------------


def cli(store, *args):
    return CliRunner().invoke(main, ["--store", store, *args], catch_exceptions=False)


def test_analyze_best_prints_a_table_csv_and_json(recorded):
    store, ids = recorded
    table = cli(store, "analyze", "best", "val_loss", "--no-hp")
    assert table.exit_code == 0, table.output
    lines = table.output.splitlines()
    assert lines[0].split() == ["rank", "run_id", "name", "dataflow", "status", "val_loss", "epoch", "epochs_run"]
    assert [line.split()[2] for line in lines[2:]] == ["sgd", "adam", "diverged"]
    csv = cli(store, "analyze", "best", "accuracy", "--hp", "learning_rate", "--format", "csv").output.splitlines()
    assert csv[0] == "rank,run_id,name,dataflow,status,accuracy,epoch,epochs_run,learning_rate"
    assert csv[1].split(",")[1:3] == [ids["sgd"], "sgd"] and csv[1].endswith(",0.1")  # accuracy: highest first
    records = json.loads(cli(store, "analyze", "best", "val_loss", "--by", "last", "--format", "json").output)
    assert [r["name"] for r in records] == ["sgd", "adam", "diverged"] and records[2]["val_loss"] == "NaN"
    at = json.loads(cli(store, "analyze", "best", "val_loss", "--at", "2", "--no-hp", "--format", "json").output)
    assert [(r["name"], r["val_loss"]) for r in at] == [("adam", 0.9), ("sgd", 0.99), ("diverged", 6.0)]


def test_analyze_commands_answer_each_analysis(recorded):
    store, ids = recorded
    progress = json.loads(cli(store, "analyze", "progress", ids["adam"], "--last", "2", "--format", "json").output)
    assert [r["epoch"] for r in progress] == [5, 6]
    effect = json.loads(cli(store, "analyze", "adaptations", "--window", "2", "--run", ids["sgd"], "--format", "json").output)
    assert len(effect) == 1 and effect[0]["epoch"] == 5 and effect[0]["val_loss_after"] == pytest.approx((0.4 + 0.35) / 2)
    converged = cli(store, "analyze", "convergence", "--format", "csv").output.splitlines()
    assert converged[0].startswith("run_id,best_val_loss,best_epoch,converged_at_epoch") and len(converged) == 4
    times = json.loads(cli(store, "analyze", "epoch-time", "--by", "optimizer", "--format", "json").output)
    assert [(t["optimizer"], t["runs"]) for t in times] == [("sgd", 2), ("adam", 1)]  # 1 s and 3 s epochs average 1.67
    arch = json.loads(cli(store, "analyze", "architecture", "--format", "json").output)
    assert [(a["name"], a["n_layers"], a["conv_layers"]) for a in arch] == [("sgd", 4, 1), ("adam", 3, 0)]
    runs = json.loads(cli(store, "analyze", "runs", "--no-hp", "--format", "json").output)
    assert {r["name"]: r["status"] for r in runs} == {n: r["status"] for n, r in RUNS.items()}


def test_analyze_compare_shows_hyperparameters_divergence_and_curves(recorded):
    store, ids = recorded
    done = cli(store, "analyze", "compare", ids["adam"], ids["sgd"])
    assert done.exit_code == 0, done.output
    out = done.output
    hp = out.split("== hyperparameters that differ")[1].split("==")[0]
    assert "optimizer" in hp and "learning_rate" in hp and "batch_size" not in hp
    divergence = out.split("== divergence of val_loss")[1].split("==")[0].splitlines()
    header, row = divergence[1].split(), divergence[3].split()
    assert row[header.index("diverged_at_epoch")] == "4"
    curves = out.split("== val_loss side by side")[1].splitlines()
    assert curves[1].split() == ["epoch", ids["adam"], ids["sgd"]] and curves[3].split() == ["1", "1.1", "1.1"]
    data = json.loads(cli(store, "analyze", "compare", ids["adam"], ids["sgd"], "--metric", "loss", "--format", "json").output)
    assert data["divergence"][0]["diverged_at_epoch"] == 4 and len(data["curves"]) == 6
    side = json.loads(cli(store, "analyze", "curves", ids["adam"], ids["diverged"], "--metric", "accuracy", "--format", "json").output)
    assert [r[ids["diverged"]] for r in side[:2]] == RUNS["diverged"]["accuracy"][:2]
    assert all(r[ids["diverged"]] == "NaN" for r in side[2:])  # a NaN value, then epochs it never ran (NaN in pandas)
    hps = cli(store, "analyze", "hyperparameters", ids["adam"], ids["sgd"], "--all", "--format", "csv").output
    assert hps.splitlines()[0] == f"hyperparameter,{ids['adam']},{ids['sgd']}" and "batch_size,32,32" in hps


def test_analyze_reports_mistakes_in_one_line(recorded):
    store, _ = recorded
    done = CliRunner().invoke(main, ["--store", store, "analyze", "best", "val_los"])
    assert done.exit_code == 1 and "has no metric 'val_los'" in done.output and "Traceback" not in done.output
    done = CliRunner().invoke(main, ["--store", store, "analyze", "best", "--by", "min", "--at", "3"])
    assert done.exit_code == 2 and "--by or --at" in done.output
    done = CliRunner().invoke(main, ["--store", store, "analyze", "compare", "latest"])
    assert done.exit_code == 2 and "two runs or more" in done.output
