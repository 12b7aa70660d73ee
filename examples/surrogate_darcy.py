"""A surrogate model of Darcy flow, trained with Keras 3 and captured by trainprov.

The kind of application this approach was made for: a convolutional encoder-decoder
(DenseED-like) learns to map a random permeability field to the pressure solution of
-div(K grad p) = 1 on a 32x32 grid. The data is generated here (Gaussian random fields,
solved with SciPy's sparse solver), and the data generation is a transformation of the
dataflow with its parameters as a dataset: flexible capture, next to what the Keras
callback records by itself (hyperparameters, architecture, epochs, learning-rate changes,
early stopping, checkpoints, evaluation).

    KERAS_BACKEND=torch python examples/surrogate_darcy.py            # a few minutes on 2 cores
    KERAS_BACKEND=torch python examples/surrogate_darcy.py --large    # more data, more epochs
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

os.environ.setdefault("KERAS_BACKEND", "torch")

import keras  # noqa: E402
import numpy as np  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import surrogate_lib as lib  # noqa: E402

import trainprov as tp  # noqa: E402
from trainprov import rules  # noqa: E402
from trainprov.capture.training import training_dataflow  # noqa: E402
from trainprov.keras import ProvenanceCallback  # noqa: E402

GENERATE = tp.Transformation(
    "generate_data",
    uses=[tp.Dataset("darcy_params", n_samples=int, grid=int, length_scale=float, seed=int, source=float, solver=str)],
    generates=[tp.Dataset("data_files", split=str, n_rows=int, path="file", seconds=float)],
    description="Gaussian random permeability fields and their Darcy pressure solutions",
)
FLOW = training_dataflow("darcy_surrogate", extra=[GENERATE], train_uses=["data_files"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--large", action="store_true", help="4,000 samples and up to 150 epochs")
    parser.add_argument("--samples", type=int, help="samples in all (default 1,000; 4,000 with --large)")
    parser.add_argument("--epochs", type=int, help="at most this many epochs (default 60; 150 with --large)")
    parser.add_argument("--lr", type=float, default=3e-3, help="initial learning rate")
    parser.add_argument("--store", default=None, help="store path (default: $TRAINPROV_STORE or ./trainprov.db)")
    parser.add_argument("--name", default=None, help="a label for the run")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quiet", action="store_true", help="no line per epoch (the demo prints its own)")
    args = parser.parse_args()
    samples = args.samples or (4000 if args.large else 1000)
    epochs = args.epochs or (150 if args.large else 60)
    keras.utils.set_random_seed(args.seed)
    folder = tempfile.mkdtemp(prefix="darcy-")

    # rules checked at each epoch's end: a diverging loss stops the training (docs/validation.md)
    checks = [rules.loss_finite(), rules.no_improvement("val_loss", patience=6, action="record"),
              rules.skew_below(max_jensen_shannon=0.1, action="record")]
    callback = ProvenanceCallback(args.store, dataflow=FLOW, name=args.name, rules=checks,
                                  hyperparameters={"samples": samples, "seed": args.seed})
    with callback:
        run = callback.start()
        print(f"run {run.id}: generating {samples} Darcy solutions", flush=True)

        # 1. the data, generated and saved; its parameters and files are provenance too
        params = dict(n_samples=samples, grid=32, length_scale=0.1, seed=args.seed, source=1.0, solver="scipy splu")
        with run.task("generate_data") as generate:
            generate.used("darcy_params", **params)
            started = time.perf_counter()
            x, y = lib.generate_darcy(samples, grid=32, length_scale=0.1, seed=args.seed,
                                      progress=lambda i, n: print(f"  {i}/{n} solved", flush=True) if i % max(1, n // 4) == 0 else None)
            seconds = time.perf_counter() - started
            n_train, n_val = int(samples * 0.8), int(samples * 0.1)
            splits = {"train": slice(0, n_train), "val": slice(n_train, n_train + n_val), "test": slice(n_train + n_val, samples)}
            for split, rows in splits.items():
                path = os.path.join(folder, f"darcy-{split}.npz")
                np.savez(path, x=x[rows], y=y[rows])
                element = generate.generated("data_files", split=split, n_rows=len(x[rows]), path=path, seconds=seconds)
                if split != "test":
                    callback.use(element)
        xtr, ytr, xva, yva, xte, yte, stats = lib.normalize(
            x[splits["train"]], y[splits["train"]], x[splits["val"]], y[splits["val"]], x[splits["test"]], y[splits["test"]]
        )

        # profiles of the data the model sees, and the skew of validation and test against training
        callback.profile("darcy", (xtr, ytr), "train")
        callback.profile("darcy", (xva, yva), "validation")
        callback.profile("darcy", (xte, yte), "test")

        # 2. training: a plateau schedule and early stopping, so adaptations happen
        model = lib.build_dense_ed(grid=32)
        model.compile(optimizer=keras.optimizers.Adam(args.lr), loss="mse", metrics=["mae"])
        checkpoint = keras.callbacks.ModelCheckpoint(os.path.join(folder, "best.keras"), monitor="val_loss", save_best_only=True)
        plateau = keras.callbacks.ReduceLROnPlateau(monitor="val_loss", factor=0.5, patience=3, min_lr=1e-5)
        stop = keras.callbacks.EarlyStopping(monitor="val_loss", patience=8, restore_best_weights=True)
        print(f"training {model.count_params():,} parameters for at most {epochs} epochs", flush=True)
        report = keras.callbacks.LambdaCallback(
            on_epoch_end=lambda e, logs: print(f"  epoch {e + 1}: loss {logs['loss']:.4f} val_loss {logs['val_loss']:.4f}", flush=True)
        )
        model.fit(xtr, ytr, validation_data=(xva, yva), epochs=epochs, batch_size=32, verbose=0,
                  callbacks=[callback, checkpoint, plateau, stop, *([] if args.quiet else [report])])

        # 3. evaluation on held-out data: what Keras reports, and the error in pressure units
        model.evaluate(xte, yte, batch_size=64, verbose=0, callbacks=[callback], return_dict=True)
        error = lib.relative_l2_error(stats.denormalize_y(yte), stats.denormalize_y(model.predict(xte, verbose=0)))
        callback.record_evaluation({"relative_l2_error": error})
    print(f"run {run.id} finished: relative L2 error on the test set {error:.4f}; store {run.store}")


if __name__ == "__main__":
    main()
