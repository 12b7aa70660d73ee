"""`trainprov analyze search GROUP` and trainprov.searches: best trials, importance, pruned trials;
the queries of docs/queries/search/ answer on a real study as docs/search.md shows them."""

from __future__ import annotations

import glob
import json
import os

import optuna
import pandas as pd
from click.testing import CliRunner

import trainprov as tp
import trainprov.optuna as tpo
from conftest import ROOT
from trainprov import searches
from trainprov.cli import main

optuna.logging.set_verbosity(optuna.logging.WARNING)


def _objective(trial: optuna.Trial) -> float:
    x = trial.suggest_float("x", -4, 4)
    y = trial.suggest_int("y", 0, 3)
    c = trial.suggest_categorical("c", ["a", "b"])
    for step in range(1, 4):
        trial.report(-((x - 1) ** 2) - 0.01 * y + step, step)
        if trial.should_prune():
            raise optuna.TrialPruned()
    return -((x - 1) ** 2) - 0.01 * y + (0.001 if c == "a" else 0.0)


def _study(store: str) -> optuna.Study:
    study = optuna.create_study(study_name="search", direction="maximize", sampler=optuna.samplers.RandomSampler(seed=7),
                                pruner=optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=0))
    tpo.optimize(study, _objective, n_trials=16, store=store)
    return study


def test_summary_best_trials_importance_and_pruning(store):
    study = _study(store)
    summary = searches.search_summary("search", store, top=3)
    complete = sorted((t for t in study.trials if t.state.name == "COMPLETE"), key=lambda t: (-t.value, t.number))
    assert list(summary.best["trial_number"]) == [t.number for t in complete[:3]]
    assert summary.best["trial_number"][0] == study.best_trial.number
    assert summary.best["value"][0] == study.best_value
    assert summary.parameters == ["c", "x", "y"]
    assert summary.importance_method.startswith("Optuna")
    assert max(summary.importance, key=summary.importance.get) == "x"
    pruned = [t for t in study.trials if t.state.name == "PRUNED"]
    assert summary.pruned["pruned"] == len(pruned) > 0
    assert summary.pruned["pruned_at_step"] == pd.Series([t.last_step for t in pruned]).value_counts().sort_index().to_dict()
    assert list(summary.trials["param_x"]) == [t.params["x"] for t in study.trials]


def test_rank_importance_without_optuna(store):
    _study(store)
    trials = searches.search_trials("search", store)
    ranked = searches.rank_importance(trials[trials["state"] == "COMPLETE"], ["c", "x", "y"])
    assert list(ranked)[0] == "x" and abs(sum(ranked.values()) - 1) < 1e-9


def test_the_command_and_its_errors(store):
    study = _study(store)
    cli = CliRunner()
    out = cli.invoke(main, ["analyze", "search", "search", "--store", store])
    assert out.exit_code == 0, out.output
    assert "16 trials" in out.output and "importance (Optuna fANOVA" in out.output and "pruned at step" in out.output
    data = json.loads(cli.invoke(main, ["analyze", "search", "search", "--format", "json", "--store", store]).output)
    assert data["best"][0]["trial_number"] == study.best_trial.number
    missing = cli.invoke(main, ["analyze", "search", "nope", "--store", store])
    assert missing.exit_code == 1 and "no run group 'nope'" in missing.output
    tp.start_run(tp.Dataflow("x", [tp.Transformation("t")]), store, group="plain").end()
    plain = cli.invoke(main, ["analyze", "search", "plain", "--store", store])
    assert plain.exit_code == 1 and "has no trials" in plain.output


def test_the_search_queries_are_in_the_guide_and_answer(store):
    study = _study(store)
    guide = open(os.path.join(ROOT, "docs", "search.md"), encoding="utf-8").read()
    answers = {}
    for path in sorted(glob.glob(os.path.join(ROOT, "docs", "queries", "search", "*.sql"))):
        sql = open(path, encoding="utf-8").read().strip()
        assert sql in guide, f"{os.path.basename(path)} is not in docs/search.md as it is"
        answers[os.path.basename(path)] = tp.query(sql, store=store)
    assert [r["trial_number"] for r in answers["trials.sql"]] == [t.number for t in study.trials]
    assert answers["best_trials.sql"][0]["trial_number"] == study.best_trial.number and len(answers["best_trials.sql"]) == 5
    pruned = [t for t in study.trials if t.state.name == "PRUNED"]
    assert [(r["trial_number"], r["pruned_at_step"], r["value_at_pruning"]) for r in answers["pruned_trials.sql"]] == [
        (t.number, t.last_step, t.intermediate_values[t.last_step]) for t in pruned]
    assert answers["pruning_summary.sql"][0]["pruned"] == len(pruned)
