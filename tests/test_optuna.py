"""Optuna: a study is one run group, each trial one run (the training run itself when the objective
trains through an integration), pruned trials carry their pruning, and two processes sharing an
Optuna RDB storage record one group."""

from __future__ import annotations

import json
import os

import optuna
import pytest
import torch
from sklearn.datasets import load_digits

import trainprov as tp
import trainprov.optuna as tpo
from conftest import run_python
from trainprov.torch import Tracker

optuna.logging.set_verbosity(optuna.logging.WARNING)

DIGITS = load_digits()
X = torch.tensor(DIGITS.data[:600] / 16.0, dtype=torch.float32)
Y = torch.tensor(DIGITS.target[:600])


def objective_for(store: str):
    """A tiny MLP on digits, trained a few full-batch epochs; val accuracy reported per epoch."""

    def objective(trial: optuna.Trial) -> float:
        lr = trial.suggest_float("lr", 1e-4, 1.0, log=True)
        units = trial.suggest_int("units", 4, 32)
        activation = trial.suggest_categorical("activation", ["relu", "tanh"])
        torch.manual_seed(trial.number)
        model = torch.nn.Sequential(torch.nn.Linear(64, units), torch.nn.ReLU() if activation == "relu" else torch.nn.Tanh(),
                                    torch.nn.Linear(units, 10))
        opt = torch.optim.SGD(model.parameters(), lr=lr)
        with Tracker(model, opt, store, epochs=4, loss="cross_entropy") as tracker:
            for epoch in range(1, 5):
                opt.zero_grad()
                loss = torch.nn.functional.cross_entropy(model(X[:400]), Y[:400])
                loss.backward()
                opt.step()
                with torch.no_grad():
                    acc = (model(X[400:]).argmax(1) == Y[400:]).float().mean().item()
                tracker.epoch(loss=loss.item(), val_accuracy=acc)
                trial.report(acc, epoch)
                if trial.should_prune():
                    raise optuna.TrialPruned()
        return acc

    return objective


def _study(storage=None, name="digits"):
    return optuna.create_study(study_name=name, storage=storage, direction="maximize", load_if_exists=True,
                               sampler=optuna.samplers.RandomSampler(seed=3),
                               pruner=optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=1))


def test_a_study_is_a_group_and_each_trial_is_its_training_run(store):
    study = _study()
    recorder = tpo.optimize(study, objective_for(store), n_trials=10, store=store, fixed={"batch": "full"})
    runs = tp.query("SELECT run_id, dataflow, status FROM runs WHERE group_name = 'digits'", store=store)
    assert len(runs) == 10 == len(tp.query("SELECT run_id FROM runs", store=store)), "one run per trial, no second run"
    assert {r["dataflow"] for r in runs} == {"pytorch_training"}
    group = tp.query("SELECT kind, details FROM run_groups WHERE group_name = 'digits'", store=store)[0]
    details = json.loads(group["details"])
    assert group["kind"] == "optuna_study" and details["directions"] == ["maximize"]
    assert details["sampler"]["class"] == "RandomSampler"
    assert details["pruner"] == {"class": "MedianPruner", "interval_steps": 1, "n_min_trials": 1, "n_startup_trials": 3,
                                 "n_warmup_steps": 1, "percentile": 50.0}
    assert details["search_space"]["lr"] == {"name": "FloatDistribution",
                                             "attributes": {"low": 1e-4, "high": 1.0, "log": True, "step": None}}
    assert set(details["search_space"]) == {"lr", "units", "activation"}

    trials = tp.query("SELECT t.run_id, t.trial_number, t.state, t.value, t.params, t.distributions, "
                      "h.lr, h.units, h.activation, h.batch FROM trials t JOIN hyperparameters h ON h.run_id = t.run_id "
                      "ORDER BY t.trial_number", store=store)
    assert [t["trial_number"] for t in trials] == list(range(10))
    for row, trial in zip(trials, study.trials):
        assert row["state"] == trial.state.name
        assert json.loads(row["params"]) == trial.params
        assert (row["lr"], row["units"], row["activation"], row["batch"]) == (
            trial.params["lr"], trial.params["units"], trial.params["activation"], "full")
        assert json.loads(row["distributions"])["units"]["name"] == "IntDistribution"
        if trial.state == optuna.trial.TrialState.COMPLETE:
            assert row["value"] == trial.value

    pruned = [t for t in study.trials if t.state == optuna.trial.TrialState.PRUNED]
    assert pruned, "the median pruner pruned some trial"
    for trial in pruned:
        run_id = trials[trial.number]["run_id"]
        adaptation = tp.query("SELECT epoch, kind, cause, monitor_value FROM adaptations WHERE run_id = ?", [run_id], store=store)
        assert adaptation == [{"epoch": trial.last_step, "kind": "pruning", "cause": adaptation[0]["cause"],
                               "monitor_value": trial.intermediate_values[trial.last_step]}]
        assert adaptation[0]["cause"].startswith("MedianPruner(") and "n_startup_trials=3" in adaptation[0]["cause"]
        epochs = tp.query("SELECT epoch, val_accuracy FROM epoch_metrics WHERE run_id = ? ORDER BY epoch", [run_id], store=store)
        assert {e["epoch"]: e["val_accuracy"] for e in epochs} == trial.intermediate_values
    assert all(r["status"] == "finished" for r in runs)

    best = tp.query("SELECT trial_number, value FROM trials WHERE state = 'COMPLETE' ORDER BY value DESC, trial_number LIMIT 1",
                    store=store)[0]
    assert (best["trial_number"], best["value"]) == (study.best_trial.number, study.best_trial.value)
    assert recorder.group == "digits"


def test_the_callback_alone_records_trials_as_runs_of_their_own_with_their_times(store):
    study = _study(name="plain")

    def objective(trial):
        x = trial.suggest_float("x", -3, 3)
        for step in range(1, 4):
            trial.report((x - 1) ** 2 + 1 / step, step)
            if trial.should_prune():
                raise optuna.TrialPruned()
        return (x - 1) ** 2

    recorder = tpo.StudyRecorder(study, store)
    study.optimize(objective, n_trials=10, callbacks=[recorder])
    rows = tp.query("SELECT r.run_id, r.started_at, t.trial_number, t.state FROM runs r JOIN trials t ON t.run_id = r.run_id "
                    "WHERE r.group_name = 'plain' ORDER BY t.trial_number", store=store)
    assert [r["trial_number"] for r in rows] == list(range(10))
    for row, trial in zip(rows, study.trials):
        assert row["state"] == trial.state.name
        assert abs(row["started_at"].timestamp() - trial.datetime_start.timestamp()) < 1e-3
        epochs = tp.query("SELECT epoch, intermediate_value FROM epoch_metrics WHERE run_id = ? ORDER BY epoch",
                          [row["run_id"]], store=store)
        assert {e["epoch"]: e["intermediate_value"] for e in epochs} == trial.intermediate_values
    assert recorder.record_study() == [], "recording the study again adds nothing"


def test_two_processes_share_an_optuna_storage_and_one_store(store, tmp_path):
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    _study(storage)
    code = f"""
import sys, optuna
sys.path.insert(0, {os.path.dirname(__file__)!r})
from test_optuna import objective_for, _study
import trainprov.optuna as tpo
tpo.optimize(_study({storage!r}), objective_for({store!r}), n_trials=5, store={store!r})
"""
    from conftest import spawn_python
    procs = [spawn_python(code) for _ in range(2)]
    for p in procs:
        out, err = p.communicate(timeout=300)
        assert p.returncode == 0, err
    study = optuna.load_study(study_name="digits", storage=storage)
    assert len(study.trials) == 10
    rows = tp.query("SELECT t.trial_number, t.state FROM runs r JOIN trials t ON t.run_id = r.run_id "
                    "WHERE r.group_name = 'digits' ORDER BY t.trial_number", store=store)
    assert [(r["trial_number"], r["state"]) for r in rows] == [(t.number, t.state.name) for t in study.trials]
    best = tp.query("SELECT trial_number FROM trials WHERE state = 'COMPLETE' ORDER BY value DESC, trial_number LIMIT 1",
                    store=store)[0]
    assert best["trial_number"] == study.best_trial.number


def test_a_trial_that_raises_is_one_failed_run(store):
    study = _study(name="failing")

    def objective(trial):
        with Tracker(torch.nn.Linear(2, 1), torch.optim.SGD(torch.nn.Linear(2, 1).parameters(), lr=0.1), store) as tracker:
            tracker.epoch(loss=float(trial.suggest_float("x", 0, 1)))
            raise ValueError("diverged")

    tpo.optimize(study, objective, n_trials=2, store=store, catch=(ValueError,))
    runs = tp.query("SELECT status, error FROM runs WHERE group_name = 'failing'", store=store)
    assert [r["status"] for r in runs] == ["failed", "failed"] and all("diverged" in r["error"] for r in runs)
    states = tp.query("SELECT value FROM run_tags WHERE tag = 'optuna.state'", store=store)
    assert [s["value"] for s in states] == ["FAIL", "FAIL"]
