"""Overhead of the Keras callback on training time, next to Keras's own CSVLogger.

Run:  KERAS_BACKEND=torch .venv/bin/python benchmarks/keras_bench.py   (or `make bench`)

Trains one small model (an MLP whose training step takes about 5 ms on the project's
machine) again and again: without callback, with CSVLogger, with trainprov recording
epochs, and with trainprov recording every step. The configurations are interleaved in
rounds so that a slow moment of the machine hits them all alike; each prints the median
time of a fit and its overhead against the median without callback.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

os.environ.setdefault("KERAS_BACKEND", "torch")

import keras  # noqa: E402
import numpy as np  # noqa: E402

from trainprov.keras import ProvenanceCallback  # noqa: E402


def model_and_data(steps: int, batch: int = 64) -> tuple[keras.Model, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(steps * batch, 128)).astype("float32")
    y = rng.integers(0, 10, size=steps * batch)
    model = keras.Sequential([
        keras.Input((128,)),
        keras.layers.Dense(384, activation="relu"),
        keras.layers.Dense(384, activation="relu"),
        keras.layers.Dense(10),
    ])
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"])
    return model, x, y


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--steps", type=int, default=100, help="steps per epoch")
    args = parser.parse_args()
    model, x, y = model_and_data(args.steps)
    folder = tempfile.mkdtemp(prefix="keras-bench-")
    store = os.path.join(folder, "bench.db")

    def fit(callbacks: list) -> float:
        start = time.perf_counter()
        model.fit(x, y, batch_size=64, epochs=args.epochs, verbose=0, shuffle=False, callbacks=callbacks)
        return time.perf_counter() - start

    configurations = {
        "no callback": lambda: [],
        "keras CSVLogger": lambda: [keras.callbacks.CSVLogger(os.path.join(folder, "log.csv"))],
        "trainprov, per epoch": lambda: [ProvenanceCallback(store, record_agents=False, new_run_per_fit=True)],
        "trainprov, every step": lambda: [ProvenanceCallback(store, record_agents=False, new_run_per_fit=True, steps=True)],
    }
    fit([])  # warm-up: the first fit compiles and allocates
    fit([ProvenanceCallback(store, record_agents=False, new_run_per_fit=True, steps=True)])
    times: dict[str, list[float]] = {name: [] for name in configurations}
    for _ in range(args.rounds):
        for name, make in configurations.items():
            times[name].append(fit(make()))
    base = statistics.median(times["no callback"])
    steps = args.epochs * args.steps
    print(f"model: MLP 128-384-384-10, batch 64, {args.epochs} epochs x {args.steps} steps, {args.rounds} rounds, "
          f"median of each (KERAS_BACKEND={keras.backend.backend()})")
    print(f"one training step without callback: {base / steps * 1000:.2f} ms")
    for name, samples in times.items():
        median = statistics.median(samples)
        spread = (max(samples) - min(samples)) / median * 100
        print(f"  {name:24s} {median:7.3f} s per fit   overhead {100 * (median / base - 1):+6.2f} %   (spread of rounds {spread:.1f} %)")


if __name__ == "__main__":
    main()
