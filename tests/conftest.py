"""Shared fixtures: a store in a temporary folder and a small dataflow."""

from __future__ import annotations

import os

os.environ.setdefault("KERAS_BACKEND", "torch")  # before any test imports keras

import subprocess
import sys
import textwrap

import pytest

import trainprov as tp

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def training_flow(**extra_metrics: object) -> tp.Dataflow:
    """A dataflow like a real training's: hyperparameters in, metrics out, then evaluation."""
    metrics = {"epoch": int, "loss": float, "val_loss": float, **extra_metrics}
    return tp.Dataflow(
        "training",
        [
            tp.Transformation(
                "train",
                uses=[tp.Dataset("hyperparameters", lr=float, optimizer=str, batch_size=int)],
                generates=[tp.Dataset("epoch_metrics", metrics), tp.Dataset("checkpoints", epoch=int, path="file")],
            ),
            tp.Transformation("evaluate", uses=["checkpoints"], generates=[tp.Dataset("test_results", loss=float)]),
        ],
    )


@pytest.fixture
def store(tmp_path) -> str:
    return str(tmp_path / "store.db")


@pytest.fixture
def flow() -> tp.Dataflow:
    return training_flow()


def run_python(code: str, *args: str, cwd: str | None = None, env: dict | None = None, timeout: float = 120,
               check: bool = True) -> subprocess.CompletedProcess:
    """Run Python code in a new process (the way a second user process would)."""
    full_env = dict(os.environ, **(env or {}))
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code), *args],
        cwd=cwd, env=full_env, capture_output=True, text=True, timeout=timeout,
    )
    if check and done.returncode != 0:
        raise AssertionError(f"child failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
    return done


def spawn_python(code: str, *args: str, cwd: str | None = None) -> subprocess.Popen:
    """Start Python code in a background process whose stdout lines can be read."""
    return subprocess.Popen(
        [sys.executable, "-u", "-c", textwrap.dedent(code), *args],
        cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
