"""A small training in plain NumPy, captured with trainprov.

Linear regression by mini-batch gradient descent on data the script generates, with a
step learning-rate schedule (recorded as adaptations), a checkpoint per epoch and a test
evaluation. It shows the capture API without any framework:

    python examples/numpy_regression.py --epochs 30
    trainprov query "SELECT epoch, loss, val_loss, learning_rate FROM epoch_metrics WHERE run_id = (SELECT max(run_id) FROM runs)"
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import numpy as np

import trainprov as tp

FLOW = tp.Dataflow(
    "numpy_regression",
    [
        tp.Transformation(
            "generate_data",
            uses=[tp.Dataset("data_params", n_samples=int, n_features=int, noise=float, seed=int)],
            generates=[tp.Dataset("data_files", split=str, n_rows=int, path="file")],
        ),
        tp.Transformation(
            "train",
            uses=[
                "data_files",
                tp.Dataset(
                    "hyperparameters",
                    optimizer=str, learning_rate=float, batch_size=int, epochs=int, decay_every=int, decay_factor=float,
                ),
            ],
            generates=[
                tp.Dataset("epoch_metrics", epoch=int, loss=float, val_loss=float, learning_rate=float, epoch_time_s=float),
                tp.Dataset("adaptations", epoch=int, kind=str, parameter=str, old_value=float, new_value=float, cause=str),
                tp.Dataset("checkpoints", epoch=int, path="file"),
            ],
        ),
        tp.Transformation(
            "evaluate",
            uses=["checkpoints"],
            generates=[tp.Dataset("test_results", loss=float, r2=float)],
        ),
    ],
    description="Linear regression by mini-batch SGD on generated data",
)


def mse(w: np.ndarray, x: np.ndarray, y: np.ndarray) -> float:
    return float(np.mean((x @ w - y) ** 2))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--seconds-per-epoch", type=float, default=0.0, help="pause per epoch, to watch it live")
    parser.add_argument("--store", default=None, help="store path (default: $TRAINPROV_STORE or ./trainprov.db)")
    parser.add_argument("--name", default=None, help="a label for the run")
    args = parser.parse_args()

    folder = tempfile.mkdtemp(prefix="numpy_regression-")
    with tp.start_run(FLOW, args.store, name=args.name) as run:
        # 1. data, generated here; its parameters and files are provenance too
        params = dict(n_samples=2000, n_features=20, noise=0.1, seed=7)
        with run.task("generate_data") as gen:
            gen.used("data_params", **params)
            rng = np.random.default_rng(params["seed"])
            x = rng.normal(size=(params["n_samples"], params["n_features"]))
            w_true = rng.normal(size=params["n_features"])
            y = x @ w_true + params["noise"] * rng.normal(size=params["n_samples"])
            splits = {"train": slice(0, 1400), "val": slice(1400, 1700), "test": slice(1700, 2000)}
            files = {}
            for split, rows in splits.items():
                path = os.path.join(folder, f"{split}.npz")
                np.savez(path, x=x[rows], y=y[rows])
                files[split] = gen.generated("data_files", split=split, n_rows=len(y[rows]), path=path)

        # 2. training, one element of epoch_metrics per epoch
        hp = dict(optimizer="sgd", learning_rate=args.lr, batch_size=args.batch_size, epochs=args.epochs, decay_every=10, decay_factor=0.5)
        with run.task("train", depends_on=[gen]) as train:
            train.used(files["train"])
            train.used(files["val"])
            train.used("hyperparameters", **hp)
            xt, yt, xv, yv = x[splits["train"]], y[splits["train"]], x[splits["val"]], y[splits["val"]]
            w = np.zeros(params["n_features"])
            lr = hp["learning_rate"]
            for epoch in range(1, hp["epochs"] + 1):
                start = time.perf_counter()
                if epoch > 1 and (epoch - 1) % hp["decay_every"] == 0:
                    train.generated("adaptations", epoch=epoch, kind="learning_rate", parameter="learning_rate",
                                    old_value=lr, new_value=lr * hp["decay_factor"], cause="step schedule")
                    lr *= hp["decay_factor"]
                order = rng.permutation(len(yt))
                for lo in range(0, len(yt), hp["batch_size"]):
                    batch = order[lo : lo + hp["batch_size"]]
                    grad = 2 * xt[batch].T @ (xt[batch] @ w - yt[batch]) / len(batch)
                    w -= lr * grad
                time.sleep(args.seconds_per_epoch)
                path = os.path.join(folder, "checkpoint.npy")
                np.save(path, w)
                checkpoint = train.generated("checkpoints", epoch=epoch, path=path)
                train.generated("epoch_metrics", epoch=epoch, loss=mse(w, xt, yt), val_loss=mse(w, xv, yv),
                                learning_rate=lr, epoch_time_s=time.perf_counter() - start)
                run.flush()  # the epoch is visible to readers now

        # 3. evaluation on held-out data
        with run.task("evaluate", depends_on=[train]) as evaluate:
            evaluate.used(checkpoint)
            xs, ys = x[splits["test"]], y[splits["test"]]
            test_loss = mse(w, xs, ys)
            evaluate.generated("test_results", loss=test_loss, r2=1 - test_loss / float(np.var(ys)))
    print(f"run {run.id} finished: test loss {test_loss:.4f}; store {run.store}")


if __name__ == "__main__":
    main()
