"""The README's tour and the examples run as written."""

from __future__ import annotations

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


def test_the_demo_shows_epochs_live_and_the_analysis(tmp_path):
    done = subprocess.run(
        [sys.executable, os.path.join(ROOT, "examples", "demo.py")],
        cwd=tmp_path, env=clean_env(TRAINPROV_STORE=str(tmp_path / "demo.db")), capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert "queries run" in out and "best validation loss per run" in out and "effect of each learning-rate change" in out
    epoch_lines = [line for line in out.splitlines() if re.match(r"\s+\d+\s+\d\.\d+", line)]
    assert len(epoch_lines) >= 30
    assert str(tmp_path / "demo.db") in out
