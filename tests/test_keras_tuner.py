"""Keras Tuner: a random search is one run group, each trial one run (its Keras training run) with the
values the oracle chose, and the best trial in SQL is the tuner's best."""

from __future__ import annotations

import json

import keras
import keras_tuner as kt
import numpy as np

import trainprov as tp
from trainprov.keras_tuner import TunerRecorder


def build(hp: kt.HyperParameters) -> keras.Model:
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(hp.Int("units", 2, 8, step=2), activation="relu"),
                              keras.layers.Dense(1)])
    model.compile(optimizer=keras.optimizers.SGD(hp.Float("lr", 1e-3, 1e-1, sampling="log")), loss="mse")
    return model


def test_a_random_search_is_a_group_and_each_trial_its_training_run(store, tmp_path):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(48, 4)).astype("float32")
    y = x[:, :1] * 2
    tuner = kt.RandomSearch(build, objective="val_loss", max_trials=3, seed=1, directory=str(tmp_path), project_name="toy")
    TunerRecorder(tuner, store)
    tuner.search(x, y, validation_split=0.25, epochs=2, verbose=0)

    group = tp.query("SELECT kind, details FROM run_groups WHERE group_name = 'toy'", store=store)[0]
    details = json.loads(group["details"])
    assert group["kind"] == "keras_tuner" and details["objective"] == "val_loss" and details["directions"] == ["minimize"]
    assert details["oracle"]["class"] == "RandomSearchOracle" and details["oracle"]["max_trials"] == 3
    assert {hp["config"]["name"] for hp in details["search_space"]["space"]} == {"units", "lr"}

    rows = tp.query("SELECT r.run_id, r.dataflow, r.status, t.state, t.value, t.params, h.units, h.lr, "
                    "json_extract(t.user_attrs, '$.trial_id') AS trial_id FROM runs r "
                    "JOIN trials t ON t.run_id = r.run_id JOIN hyperparameters h ON h.run_id = r.run_id "
                    "WHERE r.group_name = 'toy'", store=store)
    trials = {t.trial_id: t for t in tuner.oracle.trials.values()}
    assert len(rows) == len(trials) == 3 == len(tp.query("SELECT run_id FROM runs", store=store))
    for row in rows:
        trial = trials[row["trial_id"]]
        assert row["dataflow"] == "keras_training" and row["status"] == "finished" and row["state"] == "COMPLETE"
        assert json.loads(row["params"]) == trial.hyperparameters.values
        assert (row["units"], row["lr"]) == (trial.hyperparameters.get("units"), trial.hyperparameters.get("lr"))
        assert row["value"] == trial.score
        epochs = tp.query("SELECT count(*) AS n FROM epoch_metrics WHERE run_id = ?", [row["run_id"]], store=store)[0]["n"]
        assert epochs == 2
    best = min(rows, key=lambda r: r["value"])
    assert best["trial_id"] == tuner.oracle.get_best_trials(1)[0].trial_id
