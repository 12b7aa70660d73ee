"""The README's tour and the examples run as written."""

from __future__ import annotations

import glob
import hashlib
import os
import re
import subprocess
import sys

import trainprov as tp
from conftest import ROOT


def clean_env(**extra):
    env = {k: v for k, v in os.environ.items() if k != "TRAINPROV_STORE"}
    env.update(extra)
    return env


def test_the_first_python_block_of_the_readme_runs_in_an_empty_folder(tmp_path):
    readme = open(os.path.join(ROOT, "README.md"), encoding="utf-8").read()
    code = re.search(r"```python\n(.*?)```", readme, re.S).group(1)
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=clean_env(), capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "trainprov.db").exists()
    assert tp.query("SELECT count(*) AS n FROM epoch_metrics", store=tmp_path / "trainprov.db") == [{"n": 5}]
    assert "val_loss" in done.stdout


def test_the_numpy_example_records_data_training_adaptations_and_evaluation(tmp_path):
    store = str(tmp_path / "ex.db")
    done = subprocess.run(
        [sys.executable, os.path.join(ROOT, "examples", "numpy_regression.py"), "--epochs", "12", "--store", store],
        capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 0, done.stderr
    reader = tp.connect(store)
    assert reader.rows("SELECT count(*) AS n, max(epoch) AS last FROM epoch_metrics") == [{"n": 12, "last": 12}]
    assert reader.rows("SELECT epoch, old_value, new_value FROM adaptations") == [{"epoch": 11, "old_value": 0.05, "new_value": 0.025}]
    assert reader.rows("SELECT count(*) AS n FROM test_results WHERE loss < 0.1") == [{"n": 1}]
    assert reader.rows("SELECT count(*) AS n FROM files WHERE role = 'data_files'") == [{"n": 3}]
    assert reader.rows("SELECT count(*) AS n FROM usages") == [{"n": 3}]  # train used 2 data files, evaluate a checkpoint


def test_the_surrogate_example_records_data_training_and_evaluation(tmp_path):
    store = str(tmp_path / "darcy.db")
    done = subprocess.run(
        [sys.executable, os.path.join(ROOT, "examples", "surrogate_darcy.py"), "--samples", "160", "--epochs", "3", "--store", store],
        capture_output=True, text=True, timeout=600, env=clean_env(KERAS_BACKEND="torch"),
    )
    assert done.returncode == 0, done.stderr
    reader = tp.connect(store)
    assert reader.rows("SELECT status, dataflow FROM runs") == [{"status": "finished", "dataflow": "darcy_surrogate"}]
    assert reader.rows("SELECT n_samples, grid FROM darcy_params") == [{"n_samples": 160, "grid": 32}]
    assert [r["split"] for r in reader.rows("SELECT split FROM data_files ORDER BY element_seq")] == ["train", "val", "test"]
    # the training used the train and validation files the data generation wrote
    assert reader.rows("SELECT count(*) AS n FROM usages u JOIN tasks t ON t.task_id = u.task_id WHERE t.transformation = 'train' AND u.dataset = 'data_files'") == [{"n": 2}]
    assert reader.rows("SELECT count(*) AS n FROM epoch_metrics WHERE val_loss IS NOT NULL AND mae IS NOT NULL") == [{"n": 3}]
    assert reader.rows("SELECT count(*) AS n FROM layers WHERE class_name = 'Conv2D'")[0]["n"] > 5
    results = reader.rows("SELECT loss, relative_l2_error FROM test_results ORDER BY recorded_at")
    assert results[0]["loss"] > 0 and 0 < results[1]["relative_l2_error"] < 10
    assert reader.rows("SELECT count(*) AS n FROM checkpoints")[0]["n"] >= 1


def test_the_digits_example_trains_a_classifier_with_capture(tmp_path):
    store = str(tmp_path / "digits.db")
    done = subprocess.run(
        [sys.executable, os.path.join(ROOT, "examples", "digits_keras.py"), "--epochs", "12", "--store", store],
        capture_output=True, text=True, timeout=600, env=clean_env(KERAS_BACKEND="torch"),
    )
    assert done.returncode == 0, done.stderr
    accuracy = float(re.search(r"test accuracy (\d\.\d+)", done.stdout).group(1))
    reader = tp.connect(store)
    assert reader.rows("SELECT name, status FROM runs") == [{"name": "digits", "status": "finished"}]
    assert reader.rows("SELECT round(accuracy, 3) AS a FROM test_results") == [{"a": round(accuracy, 3)}] and accuracy > 0.8
    assert reader.rows("SELECT epoch, cause FROM adaptations WHERE kind = 'learning_rate'") == [{"epoch": 11, "cause": "LearningRateScheduler"}]
    assert reader.rows("SELECT class_name FROM layers ORDER BY layer_index")[0] == {"class_name": "Conv2D"}


def test_the_pytorch_example_records_its_loop(tmp_path):
    store = str(tmp_path / "torch.db")
    done = subprocess.run(
        [sys.executable, os.path.join(ROOT, "examples", "regression_torch.py"), "--epochs", "40", "--steps", "--store", store,
         "--checkpoints", str(tmp_path)],
        capture_output=True, text=True, timeout=300, env=clean_env(),
    )
    assert done.returncode == 0, done.stderr
    test_loss = float(re.search(r"test_loss (\d\.\d+)", done.stdout).group(1))
    reader = tp.connect(store)
    assert reader.rows("SELECT name, status FROM runs") == [{"name": "regression-torch", "status": "finished"}]
    assert reader.rows("SELECT round(test_loss, 4) AS t FROM test_results") == [{"t": test_loss}] and test_loss < 0.2
    epochs = reader.rows("SELECT count(*) AS n, min(val_loss) AS best FROM epoch_metrics")[0]
    assert epochs["n"] >= 20
    assert reader.rows("SELECT count(*) AS n FROM step_metrics")[0]["n"] == epochs["n"] * 32  # 2,000 rows / batch 64
    best = reader.rows("SELECT c.monitor_value, f.sha256 FROM checkpoints c JOIN files f "
                       "ON f.task_id = c.task_id AND f.element_seq = c.element_seq ORDER BY c.epoch DESC LIMIT 1")[0]
    assert best["monitor_value"] == epochs["best"]
    assert best["sha256"] == hashlib.sha256((tmp_path / "best.pt").read_bytes()).hexdigest()  # the last best is on disk
    changes = reader.rows("SELECT cause, monitor FROM adaptations WHERE kind = 'learning_rate'")
    assert changes and all(c == {"cause": "ReduceLROnPlateau", "monitor": "val_loss"} for c in changes)
    assert "ReduceLROnPlateau" in done.stdout


def test_the_demo_shows_epochs_live_and_the_analysis(tmp_path):
    done = subprocess.run(
        [sys.executable, os.path.join(ROOT, "examples", "demo.py"), "--samples", "160", "--epochs", "4"],
        cwd=tmp_path, env=clean_env(TRAINPROV_STORE=str(tmp_path / "demo.db"), KERAS_BACKEND="torch"),
        capture_output=True, text=True, timeout=600,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    out = done.stdout
    assert "reads run" in out and "with SQL while it trains" in out
    epoch_lines = [line for line in out.splitlines() if re.match(r"\s+\d+\s+\d+\.\d+\s+\d+\.\d+", line)]
    assert len(epoch_lines) >= 4
    for query in ("best_runs.sql", "progress.sql", "adaptation_effect.sql", "convergence.sql", "epoch_time.sql", "architecture_vs_test.sql"):
        assert f"docs/queries/{query}" in out
    assert str(tmp_path / "demo.db") in out
    # the second run, with a learning rate far too high, is stopped by the built-in rule and checked
    assert "== a second run with learning rate 1e6" in out
    ran = int(re.search(r"it ran (\d+) of 20 epochs", out).group(1))
    assert ran < 20 and re.search(r"training stopped by rule loss_finite at epoch \d+: (val_)?loss is (nan|inf)", out)


def test_the_analysis_queries_are_documented_and_answer_on_real_runs(tmp_path):
    store = str(tmp_path / "mixed.db")
    for args in (["--epochs", "25", "--lr", "0.05"], ["--epochs", "12", "--lr", "0.02"]):
        subprocess.run([sys.executable, os.path.join(ROOT, "examples", "numpy_regression.py"), "--store", store, *args],
                       check=True, capture_output=True, timeout=120)
    # and a Keras run, which brings the architecture and evaluation
    import keras
    import numpy as np
    from trainprov.keras import ProvenanceCallback

    x = np.random.default_rng(1).normal(size=(64, 4)).astype("float32")
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3, activation="relu"), keras.layers.Dense(1)])
    model.compile(optimizer="adam", loss="mse")
    with ProvenanceCallback(store) as cb:
        model.fit(x, x[:, :1], validation_split=0.25, epochs=3, verbose=0, callbacks=[cb])
        model.evaluate(x, x[:, :1], verbose=0, callbacks=[cb])
    guide = open(os.path.join(ROOT, "docs", "analysis.md"), encoding="utf-8").read()
    answers = {}
    for path in sorted(glob.glob(os.path.join(ROOT, "docs", "queries", "*.sql"))):
        sql = open(path, encoding="utf-8").read().strip()
        assert sql in guide, f"{os.path.basename(path)} is not in docs/analysis.md as it is"
        answers[os.path.basename(path)] = tp.query(sql, store=store)
    assert len(answers["best_runs.sql"]) == 3
    assert [r["n_layers"] for r in answers["architecture_vs_test.sql"]] == [2]
    assert answers["best_runs.sql"][0]["best_val_loss"] <= answers["best_runs.sql"][1]["best_val_loss"]
    assert sorted(a["epoch"] for a in answers["adaptation_effect.sql"]) == [11, 11, 21]
    assert all(a["val_loss_before"] is not None and a["val_loss_after"] is not None for a in answers["adaptation_effect.sql"])
    assert {r["epochs_run"] for r in answers["convergence.sql"]} == {25, 12, 3}
    assert len(answers["progress.sql"]) == 3  # the Keras run came last
    assert sorted(r["epochs"] for r in answers["epoch_time.sql"]) == [3, 12, 25]
    # cross-check one answer against the rows themselves
    best = min(r["val_loss"] for r in tp.query("SELECT val_loss FROM epoch_metrics", store=store))
    assert answers["best_runs.sql"][0]["best_val_loss"] == best
    # and each query runs from the command line as documented
    done = subprocess.run([sys.executable, "-m", "trainprov.cli", "--store", store, "query", "--file",
                           os.path.join(ROOT, "docs", "queries", "convergence.sql"), "--format", "csv"],
                          capture_output=True, text=True)
    assert done.returncode == 0 and done.stdout.startswith("run_id,best_val_loss,converged_at_epoch")
