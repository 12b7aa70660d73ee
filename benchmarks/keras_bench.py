"""Overhead of the Keras callback on training time, next to Keras's own CSVLogger.

Run:  KERAS_BACKEND=torch .venv/bin/python benchmarks/keras_bench.py   (or `make bench`)

Trains one small model (an MLP whose training step takes about 3-5 ms on the project's
machine) again and again: without callback, with a callback that does nothing at each
batch's end, with CSVLogger, with trainprov recording epochs, and with trainprov recording
every step. Each round runs every configuration once in a shuffled order, and one more fit
with every-step capture whose hooks are timed; the overhead is the median over rounds of a
fit's time against the fit of the same round without callback, and against the one with
the callback that does nothing, with the quartiles of those ratios.

Two baselines, because Keras dispatches batch-end hooks two ways: without callbacks that
implement them (or with only `async_safe` ones) it runs them on a thread pool, one task per
batch; a callback with its own `on_train_batch_end` (CSVLogger, trainprov's on a CPU: see
`async_safe` in trainprov/integrations/keras.py) makes it call every batch-end hook on the
training thread. The callback that does nothing shows what that switch alone costs or saves.
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

from hooktimer import nothing, timed, timing  # noqa: E402
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


class DoesNothing(keras.callbacks.Callback):
    """A callback with its own batch-end hook that does nothing: Keras then calls batch-end hooks on the training thread."""

    def on_train_batch_end(self, batch, logs=None):
        pass


class Calibration(keras.callbacks.Callback):
    """In the timed fit: a batch-end hook that only runs the timer (its own cost, taken out of trainprov's)."""

    on_train_batch_end = staticmethod(nothing)


def instrument() -> None:
    """Wrap the callback's hooks with timers (they time only inside `hooktimer.timing`)."""
    cls = ProvenanceCallback
    for hook in ("on_train_batch_begin", "on_train_batch_end"):
        setattr(cls, hook, timed(getattr(cls, hook)))
    for hook in ("on_epoch_begin", "on_epoch_end"):
        setattr(cls, hook, timed(getattr(cls, hook), "epoch"))
    for hook in ("on_train_begin", "on_train_end", "_begin"):  # _begin: the first step's record of the training
        setattr(cls, hook, timed(getattr(cls, hook), "start"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=11)
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
        "does-nothing callback": lambda: [DoesNothing()],
        "keras CSVLogger": lambda: [keras.callbacks.CSVLogger(os.path.join(folder, "log.csv"))],
        "trainprov, per epoch": lambda: [ProvenanceCallback(store, record_agents=False, new_run_per_fit=True)],
        "trainprov, every step": lambda: [ProvenanceCallback(store, record_agents=False, new_run_per_fit=True, steps=True)],
    }
    fit([])  # warm-up: the first fit compiles and allocates
    fit(configurations["trainprov, every step"]())
    instrument()
    # Rounds run every configuration once, in a shuffled order; each fit is compared with
    # the fits without trainprov of its own round, which cancels the machine's slow drifts.
    order = random.Random(0)
    seconds: dict[str, list[float]] = {name: [] for name in configurations}
    inside: dict[str, list[float]] = {}
    for _ in range(args.rounds):
        for name in order.sample([*configurations, "timed"], len(configurations) + 1):
            if name == "timed":
                result: dict[str, float] = {}
                with timing(result):
                    fit([*configurations["trainprov, every step"](), Calibration()])
                for kind, value in result.items():
                    inside.setdefault(kind, []).append(value)
            else:
                seconds[name].append(fit(configurations[name]()))
    steps = args.epochs * args.steps
    base = statistics.median(seconds["no callback"])
    step_s = base / steps
    print(f"model: MLP 128-512-512-10, batch 96, {args.epochs} epochs x {args.steps} steps, {args.rounds} rounds "
          f"(KERAS_BACKEND={keras.backend.backend()})")
    print(f"one training step without callback: {step_s * 1000:.2f} ms (median)")
    per_step = statistics.median(inside["step"]) / steps
    low, high = min(inside["step"]) / steps, max(inside["step"]) / steps
    per_epoch = statistics.median(inside["epoch"]) / args.epochs
    per_fit = statistics.median(inside["start"])
    print(f"time inside trainprov's hooks on the training thread (every-step capture, median of {args.rounds} timed fits; "
          f"the timer's own cost, {statistics.median(inside['timer']) * 1e6:.1f} us a call, taken out):")
    print(f"  per step  {per_step * 1e6:7.1f} us = {100 * per_step / step_s:.2f} % of a step (range {low * 1e6:.1f} .. {high * 1e6:.1f} us; "
          f"{statistics.median(inside['step_calls']) / steps:.1f} timed calls a step)")
    print(f"  per epoch {per_epoch * 1e3:7.2f} ms = {100 * per_epoch / (step_s * args.steps):.2f} % of an epoch (writes the epoch and flushes)")
    print(f"  per fit   {per_fit * 1e3:7.1f} ms (run start, hyperparameters, architecture, the first step's new columns, end)")
    print("wall time of a fit, against the fit of the same round without callback | with the does-nothing callback:")
    for name in configurations:
        cells = []
        for baseline in ("no callback", "does-nothing callback"):
            r = sorted(a / b for a, b in zip(seconds[name], seconds[baseline]))
            q1, q3 = r[len(r) // 4], r[(3 * len(r)) // 4]
            cells.append(f"{100 * (statistics.median(r) - 1):+6.2f} % ({100 * (q1 - 1):+.2f} .. {100 * (q3 - 1):+.2f})")
        print(f"  {name:24s} {statistics.median(seconds[name]):7.3f} s   {cells[0]}   |   {cells[1]}")
    print("(overhead: median of paired rounds, quartiles in brackets)")


if __name__ == "__main__":
    main()
