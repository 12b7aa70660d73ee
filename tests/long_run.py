"""A generated long training run for the readability tests: 1,000 epochs, 100 learning-rate adaptations, checkpoints."""

from __future__ import annotations

import math
import os

import trainprov as tp
from trainprov.capture.training import training_dataflow


def record_long_run(store: str, folder: str, epochs: int = 1000, adaptations: int = 100, checkpoints: int = 20,
                    layers: int = 64, validations: bool = False) -> str:
    """Record a run of `epochs` epochs with `adaptations` learning-rate changes, as the Keras callback would; its id.

    It trains on one data file; with `validations`, a `validate` task writes a `validation_results` dataset.
    """
    extra = [tp.Transformation("validate", uses=["epoch_metrics"], generates=[
        tp.Dataset("validation_results", rule=str, passed=bool, message=str)])] if validations else []
    flow = training_dataflow("long_training", extra=extra).with_attributes("epoch_metrics", {"val_loss": "float"})
    data = os.path.join(folder, "train.csv")
    with open(data, "w") as f:
        f.write("x,y\n1,2\n")
    every = max(1, epochs // adaptations)
    lr = 0.1
    with tp.start_run(flow, store, name="long") as run:
        with run.task("train") as train:
            train.used("hyperparameters", framework="plain", optimizer="sgd", learning_rate=lr, batch_size=64, epochs=epochs)
            train.file(data, role="training data")
            for i in range(layers):
                train.used("layers", layer_index=i, name=f"dense_{i}", class_name="Dense", units=32, params=32 * 33)
            for epoch in range(1, epochs + 1):
                if epoch % every == 0 and epoch // every <= adaptations:
                    with run.task("adapt", depends_on=[train]) as adapt:
                        adapt.generated("adaptations", epoch=epoch, kind="learning_rate", parameter="learning_rate",
                                        old_value=lr, new_value=lr * 0.97, cause="ReduceLROnPlateau")
                    lr *= 0.97
                loss = 0.1 + math.exp(-epoch / 200)
                train.generated("epoch_metrics", epoch=epoch, loss=loss, val_loss=loss * 1.1, learning_rate=lr,
                                epoch_time_s=0.01)
                if epoch % (epochs // checkpoints) == 0:
                    path = os.path.join(folder, f"ckpt-{epoch:04d}.bin")
                    with open(path, "wb") as f:
                        f.write(epoch.to_bytes(4, "little"))
                    train.generated("checkpoints", epoch=epoch, path=path, monitor="val_loss", monitor_value=loss * 1.1)
        with run.task("evaluate", depends_on=[train]) as evaluate:
            evaluate.generated("test_results", loss=0.2, evaluation_time_s=0.5)
        if validations:
            with run.task("validate", depends_on=[train]) as validate:
                validate.generated("validation_results", rule="val_loss finite", passed=True, message="every epoch")
                validate.generated("validation_results", rule="loss decreases", passed=False, message="rose at epoch 17")
    return run.id


def record_ranked_run(store: str, ranks: int = 4, epochs: int = 50) -> str:
    """Record one run of `ranks` processes (ranks started one after the other here), each training `epochs` epochs; its id."""
    flow = training_dataflow("ranked_training")
    run_id = "ranked-run"
    for rank in range(ranks):
        with tp.start_run(flow, store, run_id=run_id, rank=rank, world_size=ranks, name="4 ranks") as run:
            with run.task("train") as train:
                train.used("hyperparameters", framework="plain", optimizer="sgd", learning_rate=0.1, epochs=epochs)
                for epoch in range(1, epochs + 1):
                    train.generated("epoch_metrics", epoch=epoch, loss=1 / epoch, learning_rate=0.1, epoch_time_s=0.01)
            if rank == 0:
                with run.task("evaluate", depends_on=[train]) as evaluate:
                    evaluate.generated("test_results", loss=0.2, evaluation_time_s=0.5)
    return run_id
