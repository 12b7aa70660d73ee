"""What the Optuna recorder adds to a trial: a small MLP on scikit-learn's digits (no download).

Run:  .venv/bin/python benchmarks/optuna_bench.py  [--trials 8] [--rounds 3] [--epochs 10]

Every trial trains with the PyTorch Tracker in both arms (its cost is the integration's,
measured in frameworks_bench.py). Arm A: `study.optimize(objective)`; arm B:
`trainprov.optuna.optimize(...)`, which adds the recorder (group, trial rows, pruning,
search space). Arms alternate, `rounds` times, each with a fresh study and store. Printed:
median seconds per trial of each arm, their difference, and the time measured inside the
recorder itself (its callback and the objective wrapper's bookkeeping) per trial.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

import optuna
import torch
from sklearn.datasets import load_digits

import trainprov.optuna as tpo
from trainprov.integrations.optuna import StudyRecorder
from trainprov.torch import Tracker

optuna.logging.set_verbosity(optuna.logging.WARNING)
torch.set_num_threads(1)
DIGITS = load_digits()
X = torch.tensor(DIGITS.data / 16.0, dtype=torch.float32)
Y = torch.tensor(DIGITS.target)
TRAIN, VAL = slice(0, 1400), slice(1400, None)


def objective_for(store: str, epochs: int):
    def objective(trial: optuna.Trial) -> float:
        lr = trial.suggest_float("lr", 1e-3, 0.5, log=True)
        units = trial.suggest_int("units", 16, 64)
        torch.manual_seed(trial.number)
        model = torch.nn.Sequential(torch.nn.Linear(64, units), torch.nn.ReLU(), torch.nn.Linear(units, 10))
        opt = torch.optim.SGD(model.parameters(), lr=lr)
        with Tracker(model, opt, store, epochs=epochs, batch_size=32, loss="cross_entropy") as tracker:
            for epoch in range(1, epochs + 1):
                for start in range(0, 1400, 32):
                    opt.zero_grad()
                    loss = torch.nn.functional.cross_entropy(model(X[start:start + 32]), Y[start:start + 32])
                    loss.backward()
                    opt.step()
                with torch.no_grad():
                    acc = (model(X[VAL]).argmax(1) == Y[VAL]).float().mean().item()
                tracker.epoch(loss=loss.item(), val_accuracy=acc)
                trial.report(acc, epoch)
                if trial.should_prune():
                    raise optuna.TrialPruned()
        return acc
    return objective


def study() -> optuna.Study:
    return optuna.create_study(direction="maximize", sampler=optuna.samplers.RandomSampler(seed=0),
                               pruner=optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=3))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--trials", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=10)
    args = parser.parse_args()
    inside: list[float] = []
    original_call, original_wrap = StudyRecorder.__call__, StudyRecorder.wrap

    def timed_call(self, s, trial):
        start = time.perf_counter()
        original_call(self, s, trial)
        inside.append(time.perf_counter() - start)

    StudyRecorder.__call__ = timed_call
    per_trial: dict[str, list[float]] = {"A": [], "B": []}
    states: dict[str, list[int]] = {"A": [], "B": []}
    with tempfile.TemporaryDirectory() as folder:
        for r in range(args.rounds):
            for arm in ("A", "B"):
                store = os.path.join(folder, f"{arm}{r}.db")
                s = study()
                start = time.perf_counter()
                if arm == "A":
                    s.optimize(objective_for(store, args.epochs), n_trials=args.trials)
                else:
                    tpo.optimize(s, objective_for(store, args.epochs), n_trials=args.trials, store=store)
                per_trial[arm].append((time.perf_counter() - start) / args.trials)
                states[arm].append(sum(t.state.name == "PRUNED" for t in s.trials))
    StudyRecorder.__call__, StudyRecorder.wrap = original_call, original_wrap
    a, b = statistics.median(per_trial["A"]), statistics.median(per_trial["B"])
    rec = statistics.median(inside)
    print(f"trials per arm: {args.trials} x {args.rounds} rounds, {args.epochs} epochs each (pruned trials stop earlier)")
    print(f"A  study.optimize, Tracker only          {a * 1000:8.1f} ms per trial (median of rounds)")
    print(f"B  trainprov.optuna.optimize            {b * 1000:8.1f} ms per trial")
    print(f"rounds, ms per trial: A {[round(x * 1000) for x in per_trial['A']]}, B {[round(x * 1000) for x in per_trial['B']]}; "
          f"pruned trials per round: A {states['A']}, B {states['B']}")
    print(f"B - A                                   {(b - a) * 1000:8.1f} ms ({(b - a) / a:+.2%})")
    print(f"inside the recorder's callback          {rec * 1000:8.2f} ms per trial median, "
          f"{max(inside) * 1000:.2f} ms slowest ({rec / a:.2%} of a trial)")


if __name__ == "__main__":
    main()
