"""Overhead of the Keras callback on training time, next to Keras's own CSVLogger.

Run:  KERAS_BACKEND=torch .venv/bin/python benchmarks/keras_bench.py   (or `make bench`)

Trains one small model (an MLP whose training step takes about 3-5 ms on the project's
machine) again and again: without callback, with CSVLogger, with trainprov recording
epochs, and with trainprov recording every step. Each round runs every configuration once
in a shuffled order; the overhead is the median over rounds of a fit's time against the
fit without callback of the same round, with the quartiles of those ratios.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import tempfile
import time

os.environ.setdefault("KERAS_BACKEND", "torch")

import keras  # noqa: E402
import numpy as np  # noqa: E402

from trainprov.keras import ProvenanceCallback  # noqa: E402


def model_and_data(steps: int, batch: int = 96) -> tuple[keras.Model, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(steps * batch, 128)).astype("float32")
    y = rng.integers(0, 10, size=steps * batch)
    model = keras.Sequential([
        keras.Input((128,)),
        keras.layers.Dense(512, activation="relu"),
        keras.layers.Dense(512, activation="relu"),
        keras.layers.Dense(10),
    ])
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"])
    return model, x, y


class Timed(ProvenanceCallback):
    """The callback, with the time spent inside its hooks added up (on the training thread)."""

    spent = {"step": 0.0, "epoch": 0.0, "fit": 0.0}

    def _timed(self, kind: str, hook: str, *args: object) -> None:
        start = time.perf_counter()
        getattr(super(), hook)(*args)
        Timed.spent[kind] += time.perf_counter() - start

    def on_train_batch_end(self, batch, logs=None):
        self._timed("step", "on_train_batch_end", batch, logs)

    def on_epoch_begin(self, epoch, logs=None):
        self._timed("epoch", "on_epoch_begin", epoch, logs)

    def on_epoch_end(self, epoch, logs=None):
        self._timed("epoch", "on_epoch_end", epoch, logs)

    def on_train_begin(self, logs=None):
        self._timed("fit", "on_train_begin", logs)

    def on_train_end(self, logs=None):
        self._timed("fit", "on_train_end", logs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--steps", type=int, default=100, help="steps per epoch")
    args = parser.parse_args()
    model, x, y = model_and_data(args.steps)
    folder = tempfile.mkdtemp(prefix="keras-bench-")
    store = os.path.join(folder, "bench.db")

    def fit(callbacks: list) -> float:
        start = time.perf_counter()
        model.fit(x, y, batch_size=96, epochs=args.epochs, verbose=0, shuffle=False, callbacks=callbacks)
        return time.perf_counter() - start

    configurations = {
        "no callback": lambda: [],
        "keras CSVLogger": lambda: [keras.callbacks.CSVLogger(os.path.join(folder, "log.csv"))],
        "trainprov, per epoch": lambda: [ProvenanceCallback(store, record_agents=False, new_run_per_fit=True)],
        "trainprov, every step": lambda: [Timed(store, record_agents=False, new_run_per_fit=True, steps=True)],
    }
    fit([])  # warm-up: the first fit compiles and allocates
    fit([ProvenanceCallback(store, record_agents=False, new_run_per_fit=True, steps=True)])
    # Rounds run every configuration once, in a shuffled order; each fit is compared with
    # the fit without callback of its own round, which cancels the machine's slow drifts.
    order = random.Random(0)
    ratios: dict[str, list[float]] = {name: [] for name in configurations}
    seconds: dict[str, list[float]] = {name: [] for name in configurations}
    for _ in range(args.rounds):
        names = list(configurations)
        order.shuffle(names)
        took = {name: fit(configurations[name]()) for name in names}
        for name in configurations:
            seconds[name].append(took[name])
            ratios[name].append(took[name] / took["no callback"])
    steps = args.epochs * args.steps
    base = statistics.median(seconds["no callback"])
    print(f"model: MLP 128-512-512-10, batch 96, {args.epochs} epochs x {args.steps} steps, {args.rounds} rounds "
          f"(KERAS_BACKEND={keras.backend.backend()})")
    print(f"one training step without callback: {base / steps * 1000:.2f} ms (median)")
    Timed.spent = {"step": 0.0, "epoch": 0.0, "fit": 0.0}
    for _ in range(3):
        fit([Timed(store, record_agents=False, new_run_per_fit=True, steps=True)])
    per_step = Timed.spent["step"] / (3 * steps)
    per_epoch = Timed.spent["epoch"] / (3 * args.epochs)
    per_fit = Timed.spent["fit"] / 3
    step_s = base / steps
    print("time inside trainprov's hooks on the training thread (every-step capture, 3 fits):")
    print(f"  per step  {per_step * 1e6:7.1f} us = {100 * per_step / step_s:.2f} % of a step")
    print(f"  per epoch {per_epoch * 1e3:7.2f} ms = {100 * per_epoch / (step_s * args.steps):.2f} % of an epoch (writes the epoch and flushes)")
    print(f"  per fit   {per_fit * 1e3:7.1f} ms (run start, agents, hyperparameters, architecture, end)")
    print("wall time of a fit, against the fit without callback of the same round:")
    for name in configurations:
        r = sorted(ratios[name])
        q1, q3 = r[len(r) // 4], r[(3 * len(r)) // 4]
        print(f"  {name:24s} {statistics.median(seconds[name]):7.3f} s per fit   overhead {100 * (statistics.median(r) - 1):+6.2f} % "
              f"(median of paired rounds; quartiles {100 * (q1 - 1):+.2f} .. {100 * (q3 - 1):+.2f} %)")


if __name__ == "__main__":
    main()
