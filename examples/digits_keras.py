"""A small classifier on scikit-learn's digits (shipped with scikit-learn: no download), with Keras and trainprov.

    KERAS_BACKEND=torch python examples/digits_keras.py [--epochs 30] [--store PATH]
"""

from __future__ import annotations

import argparse
import os

os.environ.setdefault("KERAS_BACKEND", "torch")

import keras  # noqa: E402
from sklearn.datasets import load_digits  # noqa: E402
from sklearn.model_selection import train_test_split  # noqa: E402

from trainprov.keras import ProvenanceCallback  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--store", default=None, help="store path (default: $TRAINPROV_STORE or ./trainprov.db)")
    parser.add_argument("--steps", action="store_true", help="also record every training step")
    args = parser.parse_args()
    keras.utils.set_random_seed(0)
    x, y = load_digits(return_X_y=True)
    x = (x / 16.0).reshape(-1, 8, 8, 1).astype("float32")
    x_train, x_test, y_train, y_test = train_test_split(x, y, test_size=0.2, random_state=0, stratify=y)

    model = keras.Sequential([
        keras.Input((8, 8, 1)),
        keras.layers.Conv2D(16, 3, activation="relu", padding="same", name="conv"),
        keras.layers.MaxPooling2D(name="pool"),
        keras.layers.Flatten(name="flatten"),
        keras.layers.Dropout(0.25, name="dropout"),
        keras.layers.Dense(64, activation="relu", name="dense"),
        keras.layers.Dense(10, activation="softmax", name="classes"),
    ])
    model.compile(optimizer=keras.optimizers.Adam(2e-3), loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    schedule = keras.callbacks.LearningRateScheduler(lambda epoch, lr: lr * 0.5 if epoch and epoch % 10 == 0 else lr)
    stop = keras.callbacks.EarlyStopping(monitor="val_accuracy", patience=6, restore_best_weights=True)
    with ProvenanceCallback(args.store, name="digits", steps=args.steps, hyperparameters={"dataset": "sklearn digits"}) as prov:
        model.fit(x_train, y_train, validation_split=0.15, epochs=args.epochs, batch_size=32, verbose=0,
                  callbacks=[prov, schedule, stop])
        result = model.evaluate(x_test, y_test, verbose=0, callbacks=[prov], return_dict=True)
    print(f"run {prov.run.id}: test accuracy {result['accuracy']:.3f}; store {prov.run.store}")


if __name__ == "__main__":
    main()
