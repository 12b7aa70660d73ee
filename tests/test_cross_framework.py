"""One regression task under Keras, plain PyTorch and Lightning; one SQL query compares the three runs."""

from __future__ import annotations

import warnings

import keras
import lightning.pytorch as pl
import numpy as np
import pytest
import torch

import trainprov as tp
from trainprov.keras import ProvenanceCallback
from trainprov.lightning import Provenance
from trainprov.torch import Tracker

EPOCHS, BATCH, LR = 4, 32, 0.01
HIDDEN_PARAMS = 8 * 16 + 16 + 16 + 1  # Dense/Linear 8->16 and 16->1


def task() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """y = a smooth function of 8 generated features: train and validation splits."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(320, 8, generator=g)
    y = (torch.sin(x[:, :4]).sum(1) + 0.5 * x[:, 4] * x[:, 5]).unsqueeze(1)
    return x[:256], y[:256], x[256:], y[256:]


def torch_mlp() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 1))


def run_keras(store: str) -> list[float]:
    x, y, vx, vy = (t.numpy() for t in task())
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(16, activation="relu"), keras.layers.Dense(1)])
    model.compile(optimizer=keras.optimizers.Adam(LR), loss="mse")
    with ProvenanceCallback(store, name="keras") as prov:
        history = model.fit(x, y, validation_data=(vx, vy), epochs=EPOCHS, batch_size=BATCH, verbose=0, callbacks=[prov])
    return history.history["val_loss"]


def run_torch(store: str) -> list[float]:
    x, y, vx, vy = task()
    model = torch_mlp()
    opt = torch.optim.Adam(model.parameters(), lr=LR)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=BATCH)
    seen = []
    with Tracker(model, opt, store, name="pytorch", loader=loader, epochs=EPOCHS, loss="mse") as tracker:
        for _ in range(EPOCHS):
            total = 0.0
            for xb, yb in loader:
                opt.zero_grad()
                loss = torch.nn.functional.mse_loss(model(xb), yb)
                loss.backward()
                opt.step()
                total += loss.item() * len(xb)
            with torch.no_grad():
                seen.append(torch.nn.functional.mse_loss(model(vx), vy).item())
            tracker.epoch(loss=total / len(x), val_loss=seen[-1])
    return seen


class Regressor(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.net = torch_mlp()

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = torch.nn.functional.mse_loss(self.net(x), y)
        self.log("loss", loss, on_step=False, on_epoch=True)
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("val_loss", torch.nn.functional.mse_loss(self.net(x), y))

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=LR)


class ValLosses(pl.Callback):
    """What Lightning itself reports at each epoch's end."""

    def __init__(self) -> None:
        self.values: list[float] = []

    def on_train_epoch_end(self, trainer, pl_module):
        self.values.append(float(trainer.callback_metrics["val_loss"]))


def run_lightning(store: str, folder: str) -> list[float]:
    x, y, vx, vy = task()
    seen = ValLosses()
    with Provenance(store, name="lightning") as prov, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Lightning's advice on data loader workers
        trainer = pl.Trainer(max_epochs=EPOCHS, callbacks=[prov, seen], logger=False, enable_checkpointing=False,
                             enable_progress_bar=False, enable_model_summary=False, default_root_dir=folder,
                             num_sanity_val_steps=0, accelerator="cpu")
        trainer.fit(Regressor(), torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=BATCH),
                    torch.utils.data.DataLoader(torch.utils.data.TensorDataset(vx, vy), batch_size=BATCH))
    return seen.values


COMPARE = """
SELECT e.epoch,
       MAX(CASE WHEN h.framework = 'keras' THEN e.val_loss END)     AS keras,
       MAX(CASE WHEN h.framework = 'pytorch' THEN e.val_loss END)   AS pytorch,
       MAX(CASE WHEN h.framework = 'lightning' THEN e.val_loss END) AS lightning
FROM epoch_metrics e JOIN hyperparameters h ON h.run_id = e.run_id
GROUP BY e.epoch ORDER BY e.epoch
"""


def test_one_query_returns_the_three_frameworks_side_by_side(store, tmp_path):
    reported = {"keras": run_keras(store), "pytorch": run_torch(store), "lightning": run_lightning(store, str(tmp_path))}
    rows = tp.query(COMPARE, store=store)
    assert [r["epoch"] for r in rows] == list(range(1, EPOCHS + 1))
    for framework, values in reported.items():
        assert [r[framework] for r in rows] == [float(np.float32(v)) if framework == "keras" else v for v in values], framework
    # every run trained: the last epoch is better than the first, in every framework
    assert all(rows[-1][f] < rows[0][f] for f in reported)
    config = tp.query(
        "SELECT h.framework, h.optimizer, h.learning_rate, h.batch_size, h.trainable_params, r.name, r.status "
        "FROM hyperparameters h JOIN runs r ON r.run_id = h.run_id ORDER BY h.framework", store=store)
    assert config == [  # Keras keeps its rate in float32: 0.009999999776
        {"framework": f, "optimizer": "Adam", "learning_rate": pytest.approx(LR, rel=1e-7), "batch_size": BATCH, "trainable_params": HIDDEN_PARAMS,
         "name": f, "status": "finished"}
        for f in ("keras", "lightning", "pytorch")
    ]
    # why the Keras and the PyTorch run differ: the framework, not the data or the machine
    runs = {r["name"]: r["run_id"] for r in tp.query("SELECT name, run_id FROM runs", store=store)}
    result = tp.diff(runs["keras"], runs["pytorch"], store=store)
    framework = [c for c in result.section("hyperparameters").changes if c.path == "framework"]
    assert [(c.a, c.b) for c in framework] == [("keras", "pytorch")]
    assert result.section("machine").same and result.section("environment").same
    assert result.outcome["divergence"]["common_epochs"] == EPOCHS
