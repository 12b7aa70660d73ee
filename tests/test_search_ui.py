"""The dashboard's group page and the runs list's group filter, on a recorded Optuna study, in chromium."""

from __future__ import annotations

import os
import re

import optuna
import pytest

import trainprov as tp
import trainprov.optuna as tpo
from test_ui import browser, get, page, shots, start_dashboard, stop  # noqa: F401 - fixtures and helpers

optuna.logging.set_verbosity(optuna.logging.WARNING)
SLOW = 30_000


def _objective(trial: optuna.Trial) -> float:
    x = trial.suggest_float("x", -4, 4)
    kind = trial.suggest_categorical("kind", ["a", "b"])
    for step in range(1, 5):
        trial.report(-((x - 1) ** 2) + step / 10, step)
        if trial.should_prune():
            raise optuna.TrialPruned()
    return -((x - 1) ** 2) + (0.1 if kind == "a" else 0.0)


@pytest.fixture(scope="module")
def study_store(tmp_path_factory):
    store = str(tmp_path_factory.mktemp("search-ui") / "store.db")
    study = optuna.create_study(study_name="toy study", direction="maximize", sampler=optuna.samplers.RandomSampler(seed=1),
                                pruner=optuna.pruners.MedianPruner(n_startup_trials=3))
    tpo.optimize(study, _objective, n_trials=12, store=store)
    tp.start_run(tp.Dataflow("other", [tp.Transformation("t")]), store).end()  # a run outside the group
    return store, study


@pytest.fixture(scope="module")
def board(study_store):
    proc, url = start_dashboard(study_store[0])
    yield url.rstrip("/")
    stop(proc)


def test_the_group_page_shows_the_study_its_best_trials_and_charts(board, study_store, page, shots):
    from playwright.sync_api import expect

    store, study = study_store
    page.goto(board + "/")
    page.select_option("select[name=group]", "toy study")
    page.wait_for_url(re.compile(r"group=toy"))
    expect(page.locator("table.runs tbody tr")).to_have_count(12)
    page.locator("table.runs tbody tr").first.locator("a", has_text="toy study").click()
    page.wait_for_url(re.compile(r"/groups/toy"))
    expect(page.locator("h1")).to_contain_text("toy study")
    expect(page.locator("#group-facts")).to_contain_text("MedianPruner")
    first = page.locator("#best-trials tbody tr").first
    expect(first).to_contain_text(str(study.best_trial.number))
    expect(page.locator("#importance tbody tr")).to_have_count(2)
    page.wait_for_function("() => document.querySelectorAll('#chart-param-x .scatterlayer .trace').length >= 1", timeout=SLOW)
    page.wait_for_function("() => document.querySelectorAll('#chart-intermediate .scatterlayer .trace').length === 12",
                           timeout=SLOW)
    expect(page.locator("#chart-param-kind")).to_be_visible()
    pruned = sum(t.state.name == "PRUNED" for t in study.trials)
    if pruned:
        expect(page.locator("#pruning")).to_contain_text("Pruned at step")
    page.screenshot(path=os.path.join(shots, "group-page.png"), full_page=True)


def test_an_unknown_group_is_a_page_that_names_the_groups(board):
    status, _, body = get(board + "/groups/nope")
    assert status == 404 and b"toy study" in body
