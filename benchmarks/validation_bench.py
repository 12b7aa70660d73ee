"""Costs of validation (docs/validation.md): rules per epoch on the training thread, and data profiles.

1. Rules: the six epoch built-ins evaluated at an epoch's end, alone (`Validator.epoch`) and as
   the recorder does it (evaluate, record the verdicts as a validate task, flush), against an
   epoch of the demo's model (the DenseED surrogate on 800 Darcy samples, Keras, torch backend).
2. Profiles: the demo's 1,000 Darcy samples (permeability and pressure fields, 32x32) and
   scikit-learn's digits (1,797 x 64, ten classes), against the trainings that use them.

    KERAS_BACKEND=torch .venv/bin/python benchmarks/validation_bench.py [--epochs-timed 1] [--repeat 200]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
import warnings

os.environ.setdefault("KERAS_BACKEND", "torch")

import numpy as np  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "examples"))

from trainprov import rules  # noqa: E402
from trainprov.capture.profile import profile_rows  # noqa: E402
from trainprov.capture.training import TrainingRecorder  # noqa: E402

EPOCH_RULES = lambda: [rules.loss_finite(), rules.no_improvement("val_loss", patience=5),  # noqa: E731
                       rules.gap_below(0.5), rules.learning_rate_within(1e-6, 1.0), rules.gradient_norm(100.0),
                       rules.epoch_time(2.0)]


def median_ms(work, repeat: int) -> float:
    """Median wall time of `work()` in milliseconds."""
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        work()
        times.append(time.perf_counter() - started)
    return statistics.median(times) * 1e3


def rule_costs(repeat: int) -> dict[str, float]:
    """Milliseconds per epoch: the validator alone, and the recorder's epoch with and without rules."""
    rng = np.random.default_rng(0)
    epochs = [{"loss": float(v), "val_loss": float(v) * 1.1, "mae": 0.3, "val_mae": 0.35, "learning_rate": 1e-3,
               "grad_norm": 2.0, "epoch_time_s": 10.0 + rng.random()} for v in np.linspace(1.0, 0.1, 60)]
    validator = rules.Validator(EPOCH_RULES())
    state = {"i": 0}

    def evaluate() -> None:
        if state["i"] % 60 == 0:
            validator.reset()  # a training of 60 epochs, again and again
        validator.epoch(state["i"] % 60 + 1, epochs[state["i"] % 60])
        state["i"] += 1

    alone = median_ms(evaluate, repeat * 10)
    out = {"validator": alone}
    folder = tempfile.mkdtemp(prefix="valbench-")
    for label, checks in (("recorder without rules", None), ("recorder with rules", EPOCH_RULES())):
        recorder = TrainingRecorder("bench", os.path.join(folder, f"{label.split()[1]}.db"), rules=checks,
                                    record_agents=False)
        recorder.begin_training({"optimizer": "adam", "learning_rate": 1e-3})
        counter = {"i": 0}

        def epoch() -> None:
            i = counter["i"]
            if i and i % 60 == 0:  # a training of 60 epochs, again and again
                recorder.end_training()
                recorder.begin_training({"optimizer": "adam", "learning_rate": 1e-3})
            values = dict(epochs[i % 60])
            recorder.epoch(i + 1, {k: v for k, v in values.items() if k not in ("learning_rate", "epoch_time_s")},
                           learning_rate=values["learning_rate"], seconds=values["epoch_time_s"])
            counter["i"] += 1

        out[label] = median_ms(epoch, repeat)
        recorder.end()
    return out


def demo_epoch_seconds(x: np.ndarray, y: np.ndarray, epochs: int) -> float:
    """Seconds per epoch of the demo's model on the demo's training split."""
    import keras

    import surrogate_lib as lib

    keras.utils.set_random_seed(0)
    model = lib.build_dense_ed(grid=32)
    model.compile(optimizer=keras.optimizers.Adam(3e-3), loss="mse", metrics=["mae"])
    model.fit(x[:64], y[:64], epochs=1, batch_size=32, verbose=0)  # warm-up: the first step builds the model
    started = time.perf_counter()
    model.fit(x, y, epochs=epochs, batch_size=32, verbose=0)
    return (time.perf_counter() - started) / epochs


def digits_training_seconds(epochs: int = 20) -> tuple[float, np.ndarray, np.ndarray]:
    """A small MLP on the digits, in torch: seconds for `epochs` epochs, and the data."""
    import torch
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    x = (x / 16.0).astype("float32")
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.ReLU(), torch.nn.Linear(64, 10))
    opt = torch.optim.Adam(model.parameters(), 1e-3)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    started = time.perf_counter()
    for _ in range(epochs):
        for i in range(0, len(xt), 32):
            opt.zero_grad()
            loss = torch.nn.functional.cross_entropy(model(xt[i:i + 32]), yt[i:i + 32])
            loss.backward()
            opt.step()
    return time.perf_counter() - started, x, y


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=200, help="epochs recorded per rule measurement")
    parser.add_argument("--epochs-timed", type=int, default=1, help="epochs of the demo's model timed")
    parser.add_argument("--demo-epochs", type=int, default=60, help="epochs of the demo's training (its default)")
    args = parser.parse_args()
    warnings.simplefilter("ignore", RuntimeWarning)  # the rules' warnings: what is timed, not what is read

    import surrogate_lib as lib

    print("generating the demo's 1,000 Darcy samples ...", flush=True)
    x, y = lib.generate_darcy(1000, grid=32, length_scale=0.1, seed=0)
    xtr, ytr, xva, yva, xte, yte, _ = lib.normalize(x[:800], y[:800], x[800:900], y[800:900], x[900:], y[900:])
    epoch_s = demo_epoch_seconds(xtr, ytr, args.epochs_timed)
    costs = rule_costs(args.repeat)
    added = costs["recorder with rules"] - costs["recorder without rules"]
    print(f"\nan epoch of the demo's model (800 samples, batch 32): {epoch_s:.2f} s")
    print(f"six epoch rules, Validator.epoch alone:        {costs['validator'] * 1e3:8.1f} us   "
          f"{costs['validator'] / 1e3 / epoch_s * 100:.5f} % of an epoch")
    print(f"recorder.epoch without rules (row + flush):    {costs['recorder without rules']:8.3f} ms")
    print(f"recorder.epoch with the six rules:             {costs['recorder with rules']:8.3f} ms   "
          f"(+{added:.3f} ms: evaluate, validate task, 6 verdict rows; {added / 1e3 / epoch_s * 100:.4f} % of an epoch)")

    profile_demo = median_ms(lambda: [profile_rows("darcy", (xs, ys), split)
                                      for xs, ys, split in ((xtr, ytr, "train"), (xva, yva, "validation"),
                                                            (xte, yte, "test"))], 5) / 1e3
    train_s = epoch_s * args.demo_epochs
    print(f"\nprofiling the demo's 1,000 Darcy samples (3 splits, x and y): {profile_demo * 1e3:.1f} ms   "
          f"{profile_demo / train_s * 100:.3f} % of {args.demo_epochs} epochs ({train_s:.0f} s), "
          f"{profile_demo / epoch_s * 100:.2f} % of one epoch")
    digits_s, dx, dy = digits_training_seconds(20)
    profile_digits = median_ms(lambda: profile_rows("digits", (dx, dy), "train"), 5) / 1e3
    print(f"profiling the digits (1,797 x 64 + labels):                    {profile_digits * 1e3:.1f} ms   "
          f"{profile_digits / digits_s * 100:.2f} % of a 20-epoch MLP training ({digits_s:.2f} s)")
    big = np.random.default_rng(0).normal(size=(400_000, 16)).astype("float32")
    sampled = median_ms(lambda: profile_rows("big", big, "train"), 3) / 1e3
    exact = median_ms(lambda: profile_rows("big", big, "train", exact=True), 3) / 1e3
    print(f"400,000 x 16 floats: sampled (100,000 rows) {sampled * 1e3:.0f} ms, exact {exact * 1e3:.0f} ms")


if __name__ == "__main__":
    main()
