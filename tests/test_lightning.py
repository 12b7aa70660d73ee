"""The Lightning callback and its logger, with real training of small models on the CPU."""

from __future__ import annotations

import csv
import hashlib
import json
import os
import subprocess
import sys
import textwrap
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import trainprov as tp
from conftest import ROOT

pl = pytest.importorskip("lightning.pytorch")
from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint  # noqa: E402
from lightning.pytorch.loggers import CSVLogger  # noqa: E402

from trainprov.lightning import Provenance  # noqa: E402

# Lightning's own advice (workers for a DataLoader, a deprecation inside it) is not what these tests are about
pytestmark = [pytest.mark.filterwarnings("ignore:.*does not have many workers"),
              pytest.mark.filterwarnings("ignore:.*LeafSpec")]


def make_data(n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 8, generator=g)
    return x, torch.sin(x[:, :4]).sum(1) + 0.5 * x[:, 4] * x[:, 5]


X, Y = make_data(256)
TRAIN = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(X[:192], Y[:192]), batch_size=32)  # 6 batches
VAL = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(X[192:], Y[192:]), batch_size=32)


class Regressor(pl.LightningModule):
    def __init__(self, lr: float = 0.05, hidden: int = 16, optimizer: str = "sgd", schedule: str | None = None):
        super().__init__()
        self.save_hyperparameters()
        self.net = nn.Sequential(nn.Linear(8, hidden), nn.ReLU(), nn.Linear(hidden, 1))

    def forward(self, x):
        return self.net(x).squeeze(-1)

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = F.mse_loss(self(x), y)
        self.log("loss", loss, on_step=True, on_epoch=True)  # reported as loss_step and loss_epoch
        self.log("mae", F.l1_loss(self(x), y), on_step=False, on_epoch=True)
        self.log("batch_index", float(batch_idx))  # on_step only (training_step's default)
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("val_loss", F.mse_loss(self(x), y))  # on_epoch only (validation_step's default)

    def test_step(self, batch, batch_idx):
        x, y = batch
        self.log("test_loss", F.mse_loss(self(x), y))
        self.log("test_mae", F.l1_loss(self(x), y))

    def configure_optimizers(self):
        hp = self.hparams
        if hp.optimizer == "adam":
            opt = torch.optim.Adam(self.parameters(), lr=hp.lr, betas=(0.8, 0.99))
        else:
            opt = torch.optim.SGD(self.parameters(), lr=hp.lr, momentum=0.9)
        if hp.schedule == "step":
            return {"optimizer": opt, "lr_scheduler": torch.optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.5)}
        if hp.schedule == "plateau":
            # never an improvement (threshold 10x): the rate halves after every validation
            plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=0, threshold=10.0)
            return {"optimizer": opt, "lr_scheduler": {"scheduler": plateau, "monitor": "val_loss"}}
        if hp.schedule == "exponential":
            return {"optimizer": opt, "lr_scheduler": torch.optim.lr_scheduler.ExponentialLR(opt, gamma=0.8)}
        return opt


def make_trainer(prov, tmp_path, *, callbacks=(), loggers=(), **kwargs):
    options = dict(accelerator="cpu", devices=1, max_epochs=4, enable_progress_bar=False, enable_model_summary=False,
                   enable_checkpointing=any(isinstance(c, ModelCheckpoint) for c in callbacks), log_every_n_steps=1,
                   default_root_dir=tmp_path)
    options.update(kwargs)
    return pl.Trainer(logger=[prov.logger, *loggers], callbacks=[prov, *callbacks], **options)


def fit(store, tmp_path, *, prov=None, model=None, ckpt_path=None, **kwargs):
    prov = prov or Provenance(store)
    model = model or Regressor()
    trainer = make_trainer(prov, tmp_path, **kwargs)
    trainer.fit(model, TRAIN, VAL, ckpt_path=ckpt_path)
    return prov, model, trainer


def csv_rows(logger):
    with open(os.path.join(logger.log_dir, "metrics.csv"), newline="") as f:
        return [{k: float(v) for k, v in row.items() if v != ""} for row in csv.DictReader(f)]


def epochs_of(store):
    return tp.query_df("SELECT * FROM epoch_metrics ORDER BY task_id, epoch", store=store)


def lr_changes(store):
    return tp.query("SELECT epoch, step, old_value, new_value, cause, monitor, monitor_value FROM adaptations "
                    "WHERE kind = 'learning_rate' ORDER BY epoch", store=store)


def test_epoch_and_step_values_equal_what_lightning_logged(store, tmp_path):
    csv_logger = CSVLogger(tmp_path)  # a second logger: it receives exactly what ours does
    prov, _, trainer = fit(store, tmp_path, loggers=[csv_logger])
    prov.end()
    logged = csv_rows(csv_logger)
    epochs = epochs_of(store)
    assert list(epochs["epoch"]) == [1, 2, 3, 4]
    # loss was logged on_step and on_epoch: Lightning's loss_epoch is our epoch row's loss
    assert list(epochs["loss"]) == [r["loss_epoch"] for r in logged if "loss_epoch" in r]
    assert list(epochs["mae"]) == [r["mae"] for r in logged if "mae" in r]
    assert list(epochs["val_loss"]) == [r["val_loss"] for r in logged if "val_loss" in r]
    last = epochs.iloc[-1]
    metrics = trainer.callback_metrics
    assert (last["loss"], last["mae"], last["val_loss"]) == (metrics["loss"].item(), metrics["mae"].item(), metrics["val_loss"].item())
    assert "batch_index" not in epochs.columns  # an on_step value has no epoch value
    assert (epochs["learning_rate"] == 0.05).all() and (epochs["epoch_time_s"] > 0).all()

    steps = tp.query_df("SELECT epoch, step, global_step, loss, batch_index, learning_rate FROM step_metrics ORDER BY global_step", store=store)
    logged_steps = [r for r in logged if "loss_step" in r]
    assert len(steps) == 4 * 6 and list(steps["global_step"]) == [int(r["step"]) + 1 for r in logged_steps] == list(range(1, 25))
    assert list(steps["epoch"]) == [e for e in range(1, 5) for _ in range(6)] and list(steps["step"]) == list(range(1, 7)) * 4
    assert list(steps["loss"]) == [r["loss_step"] for r in logged_steps]
    assert list(steps["batch_index"]) == [r["batch_index"] for r in logged_steps] and (steps["learning_rate"] == 0.05).all()
    assert "loss_step" not in steps.columns and "loss_epoch" not in epochs.columns
    assert tp.query("SELECT status FROM runs", store=store) == [{"status": "finished"}]


def test_steps_follow_log_every_n_steps_and_can_be_turned_off(tmp_path):
    sparse = str(tmp_path / "sparse.db")
    prov, _, _ = fit(sparse, tmp_path, log_every_n_steps=4, max_epochs=2)
    prov.end()
    assert [r["global_step"] for r in tp.query("SELECT global_step FROM step_metrics ORDER BY global_step", store=sparse)] == [4, 8, 12]
    off = str(tmp_path / "off.db")
    prov, _, _ = fit(off, tmp_path, prov=Provenance(off, steps=False), max_epochs=2)
    prov.end()
    assert tp.query("SELECT count(*) AS n FROM step_metrics", store=off) == [{"n": 0}]
    assert tp.query("SELECT count(*) AS n FROM epoch_metrics", store=off) == [{"n": 2}]


@pytest.mark.parametrize("interval", ["step", "epoch"])
def test_values_other_callbacks_log_join_the_row_of_their_step(tmp_path, interval):
    # LearningRateMonitor, placed before ours, logs the rate for a step before the step runs
    # (or at the start of each epoch): it joins that step's row, and the epochs stay whole
    store = str(tmp_path / f"{interval}.db")
    monitor = pl.callbacks.LearningRateMonitor(logging_interval=interval)
    prov = Provenance(store)
    trainer = pl.Trainer(accelerator="cpu", max_epochs=5, logger=prov.logger, callbacks=[monitor, prov],
                         enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False,
                         log_every_n_steps=1, default_root_dir=tmp_path)
    trainer.fit(Regressor(lr=0.1, schedule="step"), TRAIN, VAL)
    prov.end()
    steps = tp.query_df('SELECT epoch, step, global_step, loss, learning_rate, lr_sgd AS monitored FROM step_metrics '
                        "ORDER BY global_step", store=store)
    assert list(steps["global_step"]) == list(range(1, 31)) and list(steps["step"]) == list(range(1, 7)) * 5
    assert steps["loss"].notna().all() and list(steps["learning_rate"]) == [0.1] * 12 + [0.05] * 12 + [0.025] * 6
    first_steps = steps[steps["step"] == 1] if interval == "epoch" else steps
    assert list(first_steps["monitored"]) == list(first_steps["learning_rate"])
    epochs = epochs_of(store)
    assert list(epochs["epoch"]) == [1, 2, 3, 4, 5] and list(epochs["learning_rate"]) == [0.1, 0.1, 0.05, 0.05, 0.025]
    assert "lr_sgd" not in epochs.columns  # Lightning's lr-SGD, as a column name


def test_the_standalone_pytorch_lightning_package_works_too(store, tmp_path):
    ptl = pytest.importorskip("pytorch_lightning")

    class Module(ptl.LightningModule):
        def __init__(self, lr=0.05):
            super().__init__()
            self.save_hyperparameters()
            self.net = nn.Linear(8, 1)

        def training_step(self, batch, batch_idx):
            loss = F.mse_loss(self.net(batch[0]).squeeze(-1), batch[1])
            self.log("loss", loss, on_epoch=True)
            return loss

        def validation_step(self, batch, batch_idx):
            self.log("val_loss", F.mse_loss(self.net(batch[0]).squeeze(-1), batch[1]))

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=self.hparams.lr)

    prov = Provenance(store)
    stop = ptl.callbacks.EarlyStopping(monitor="val_loss", patience=0, min_delta=100.0)
    trainer = ptl.Trainer(accelerator="cpu", max_epochs=10, logger=prov.logger, callbacks=[prov, stop],
                          enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False,
                          log_every_n_steps=1, default_root_dir=tmp_path)
    trainer.fit(Module(), TRAIN, VAL)
    prov.end()
    epochs = epochs_of(store)
    assert list(epochs["epoch"]) == [1, 2] and epochs["val_loss"].iloc[-1] == trainer.callback_metrics["val_loss"].item()
    assert tp.query("SELECT lr FROM hyperparameters", store=store) == [{"lr": 0.05}]
    assert tp.query("SELECT epoch, new_value FROM adaptations WHERE kind = 'early_stopping'", store=store) == [{"epoch": 2, "new_value": 2}]


def test_hyperparameters_architecture_and_user_values(store, tmp_path):
    prov = Provenance(store, hyperparameters={"seed": 7, "dataset": "generated"})
    model = Regressor(lr=0.003, hidden=12, optimizer="adam")
    fit(store, tmp_path, prov=prov, model=model, max_epochs=2, gradient_clip_val=1.0)
    prov.end()
    hp = tp.query("SELECT * FROM hyperparameters", store=store)[0]
    assert hp["framework"] == "lightning" and hp["optimizer"] == "Adam" and hp["learning_rate"] == 0.003
    assert '"betas": [0.8, 0.99]' in hp["optimizer_config"]
    assert (hp["batch_size"], hp["epochs"], hp["steps_per_epoch"], hp["world_size"], hp["precision"]) == (32, 2, 6, 1, "32-true")
    assert (hp["gradient_clip_val"], hp["accumulate_grad_batches"]) == (1.0, 1)
    # from save_hyperparameters, and the user's own; an init argument named like a recorded
    # fact but with another value keeps its value under hparam_<name>
    assert (hp["lr"], hp["hidden"], hp["hparam_optimizer"], hp["seed"], hp["dataset"]) == (0.003, 12, "adam", 7, "generated")
    params = sum(p.numel() for p in model.parameters())
    assert (hp["n_layers"], hp["trainable_params"], hp["non_trainable_params"]) == (3, params, 0) and params == 8 * 12 + 12 + 13
    layers = tp.query("SELECT name, class_name, params, units, activation FROM layers ORDER BY layer_index", store=store)
    assert layers == [
        {"name": "net.0", "class_name": "Linear", "params": 108, "units": 12, "activation": None},
        {"name": "net.1", "class_name": "ReLU", "params": 0, "units": None, "activation": "relu"},
        {"name": "net.2", "class_name": "Linear", "params": 13, "units": 1, "activation": None},
    ]


def test_step_schedule_changes_are_recorded_once_each_at_the_epoch_that_first_uses_them(store, tmp_path):
    prov, _, _ = fit(store, tmp_path, model=Regressor(lr=0.1, schedule="step"), max_epochs=5)
    prov.end()
    # StepLR(step_size=2, gamma=0.5), stepped by Lightning after each epoch: epochs 3 and 5 use the new rates
    assert lr_changes(store) == [
        {"epoch": 3, "step": 1, "old_value": 0.1, "new_value": 0.05, "cause": "StepLR", "monitor": None, "monitor_value": None},
        {"epoch": 5, "step": 1, "old_value": 0.05, "new_value": 0.025, "cause": "StepLR", "monitor": None, "monitor_value": None},
    ]
    assert list(epochs_of(store)["learning_rate"]) == [0.1, 0.1, 0.05, 0.05, 0.025]
    schedule = tp.query("SELECT lr_schedule FROM hyperparameters", store=store)[0]["lr_schedule"]
    assert '"class": "StepLR"' in schedule and '"step_size": 2' in schedule and '"interval": "epoch"' in schedule


def test_reduce_lr_on_plateau_is_recorded_with_its_monitor(store, tmp_path):
    prov, _, _ = fit(store, tmp_path, model=Regressor(lr=0.08, schedule="plateau"), max_epochs=4)
    prov.end()
    epochs = epochs_of(store)
    # reduced after each epoch's validation, from that epoch's val_loss; the last one no step used
    assert [(c["epoch"], c["old_value"], c["new_value"], c["cause"], c["monitor"]) for c in lr_changes(store)] == [
        (2, 0.08, 0.04, "ReduceLROnPlateau", "val_loss"),
        (3, 0.04, 0.02, "ReduceLROnPlateau", "val_loss"),
        (4, 0.02, 0.01, "ReduceLROnPlateau", "val_loss"),
        (5, 0.01, 0.005, "ReduceLROnPlateau", "val_loss"),
    ]
    assert [c["monitor_value"] for c in lr_changes(store)] == list(epochs["val_loss"])
    assert list(epochs["learning_rate"]) == [0.08, 0.04, 0.02, 0.01]


def test_a_continuous_schedule_is_a_hyperparameter_not_a_stream_of_adaptations(store, tmp_path):
    prov, _, _ = fit(store, tmp_path, model=Regressor(lr=0.1, schedule="exponential"), max_epochs=3)
    prov.end()
    assert lr_changes(store) == []
    assert list(epochs_of(store)["learning_rate"]) == pytest.approx([0.1, 0.08, 0.064])
    assert '"gamma": 0.8' in tp.query("SELECT lr_schedule FROM hyperparameters", store=store)[0]["lr_schedule"]


def test_model_checkpoint_files_carry_their_sha256_and_chain(store, tmp_path):
    checkpoint = ModelCheckpoint(dirpath=tmp_path / "ckpt", filename="{epoch}", monitor="val_loss", save_top_k=-1)
    prov, _, _ = fit(store, tmp_path, callbacks=[checkpoint], max_epochs=3)
    prov.end()
    files = tp.query("SELECT c.epoch, c.monitor, c.monitor_value, f.file_id, f.path, f.sha256, f.size_bytes FROM checkpoints c "
                     "JOIN files f ON f.task_id = c.task_id AND f.element_seq = c.element_seq ORDER BY c.epoch", store=store)
    assert [f["epoch"] for f in files] == [1, 2, 3]
    assert [os.path.basename(f["path"]) for f in files] == ["epoch=0.ckpt", "epoch=1.ckpt", "epoch=2.ckpt"]
    for f in files:
        content = open(f["path"], "rb").read()
        assert f["sha256"] == hashlib.sha256(content).hexdigest() and f["size_bytes"] == len(content)
    assert [f["monitor_value"] for f in files] == list(epochs_of(store)["val_loss"]) and {f["monitor"] for f in files} == {"val_loss"}
    chain = tp.query("SELECT file_id, derived_from FROM file_derivations ORDER BY file_id", store=store)
    assert [(c["file_id"], c["derived_from"]) for c in chain] == [(files[1]["file_id"], files[0]["file_id"]), (files[2]["file_id"], files[1]["file_id"])]


def test_early_stopping_is_recorded_and_the_training_task_ends(store, tmp_path):
    stop = EarlyStopping(monitor="val_loss", patience=1, min_delta=100.0)  # only the first epoch improves
    prov, _, trainer = fit(store, tmp_path, callbacks=[stop], max_epochs=20)
    prov.end()
    epochs = epochs_of(store)
    assert trainer.current_epoch == len(epochs) == 2  # the last epoch is there
    row = tp.query("SELECT * FROM adaptations WHERE kind = 'early_stopping'", store=store)[0]
    assert (row["epoch"], row["old_value"], row["new_value"]) == (stop.stopped_epoch + 1, 20, 2)
    assert row["monitor"] == "val_loss" and row["monitor_value"] == epochs["val_loss"].iloc[-1]
    assert (row["best_epoch"], row["best_value"]) == (1, stop.best_score.item()) and row["best_value"] == epochs["val_loss"].iloc[0]
    assert row["cause"] == "EarlyStopping(monitor=val_loss, patience=1)"
    assert tp.query("SELECT status FROM tasks WHERE transformation = 'train'", store=store) == [{"status": "finished"}]


def test_test_and_validate_results_equal_what_lightning_returned(store, tmp_path):
    checkpoint = ModelCheckpoint(dirpath=tmp_path / "ckpt", monitor="val_loss")
    prov, model, trainer = fit(store, tmp_path, callbacks=[checkpoint], max_epochs=2)
    tested = trainer.test(model, VAL, verbose=False)[0]
    validated = make_trainer(prov, tmp_path).validate(model, VAL, verbose=False)[0]  # another trainer, same run
    prov.end()
    rows = tp.query("SELECT test_loss, test_mae, val_loss, evaluation_time_s FROM test_results ORDER BY recorded_at", store=store)
    assert [(r["test_loss"], r["test_mae"]) for r in rows] == [(tested["test_loss"], tested["test_mae"]), (None, None)]
    assert rows[1]["val_loss"] == validated["val_loss"] and all(r["evaluation_time_s"] > 0 for r in rows)
    assert tp.query("SELECT count(*) AS n FROM runs", store=store) == [{"n": 1}]
    # the test depends on the training and used its checkpoint
    train = tp.query("SELECT task_id FROM tasks WHERE transformation = 'train'", store=store)[0]["task_id"]
    depends = tp.query("SELECT d.depends_on FROM tasks t JOIN task_dependencies d ON d.task_id = t.task_id "
                       "WHERE t.transformation = 'evaluate' ORDER BY t.iteration", store=store)
    assert [d["depends_on"] for d in depends] == [train, train]
    used = tp.query("SELECT u.dataset FROM usages u JOIN tasks t ON t.task_id = u.task_id WHERE t.transformation = 'evaluate'", store=store)
    assert {u["dataset"] for u in used} == {"checkpoints"}


def test_the_callback_alone_brings_its_logger_and_leaves_checkpoints_where_lightning_puts_them(store, tmp_path):
    prov = Provenance(store)
    trainer = pl.Trainer(accelerator="cpu", max_epochs=2, logger=False, callbacks=[prov], enable_progress_bar=False,
                         enable_model_summary=False, log_every_n_steps=1, default_root_dir=tmp_path)
    trainer.fit(Regressor(), TRAIN, VAL)  # with Lightning's default ModelCheckpoint
    prov.end()
    assert prov.logger in trainer.loggers
    assert tp.query("SELECT epoch FROM epoch_metrics WHERE val_loss IS NOT NULL", store=store) == [{"epoch": 1}, {"epoch": 2}]
    saved = os.listdir(tmp_path / "checkpoints")  # where Lightning saves without a logger
    assert [os.path.basename(r["path"]) for r in tp.query("SELECT path FROM checkpoints ORDER BY epoch DESC LIMIT 1", store=store)] == saved


def test_the_logger_without_its_callback_warns_instead_of_guessing(store, tmp_path):
    prov = Provenance(store)
    trainer = pl.Trainer(accelerator="cpu", max_epochs=1, logger=prov.logger, enable_progress_bar=False,
                         enable_model_summary=False, enable_checkpointing=False, log_every_n_steps=1,
                         default_root_dir=tmp_path)
    with pytest.warns(RuntimeWarning, match="callbacks=\\[prov\\]"):
        trainer.fit(Regressor(), TRAIN, VAL)


def test_an_exception_in_training_fails_the_run_and_keeps_the_finished_epochs(store, tmp_path):
    class Boom(pl.Callback):
        def on_train_epoch_start(self, trainer, pl_module):
            if trainer.current_epoch == 2:
                raise RuntimeError("loss exploded")

    with pytest.raises(RuntimeError):
        with Provenance(store) as prov:
            fit(store, tmp_path, prov=prov, callbacks=[Boom()], max_epochs=5)
    assert tp.query("SELECT status, error FROM runs", store=store) == [{"status": "failed", "error": "RuntimeError: loss exploded"}]
    assert tp.query("SELECT status, error FROM tasks WHERE transformation = 'train'", store=store) == [
        {"status": "failed", "error": "RuntimeError: loss exploded"}]
    assert list(epochs_of(store)["epoch"]) == [1, 2]


@pytest.mark.filterwarnings("ignore:Checkpoint directory")  # resuming from the folder it writes to
def test_a_resumed_fit_continues_the_epochs_in_the_same_run(store, tmp_path):
    def checkpoint():
        return ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)

    prov, model, _ = fit(store, tmp_path, callbacks=[checkpoint()], model=Regressor(schedule="step"), max_epochs=2)
    fit(store, tmp_path, prov=prov, callbacks=[checkpoint()], model=Regressor(schedule="step"), max_epochs=4,
        ckpt_path=str(tmp_path / "ckpt" / "last.ckpt"))
    prov.end()
    assert list(epochs_of(store)["epoch"]) == [1, 2, 3, 4]
    assert tp.query("SELECT iteration FROM tasks WHERE transformation = 'train' ORDER BY iteration", store=store) == [{"iteration": 1}, {"iteration": 2}]
    # StepLR's changes after epochs 2 and 4, each recorded when its fit ended (no step used
    # them yet); the resumed optimizer starts with the rate of the first: no change again
    assert [(c["epoch"], c["step"], c["new_value"]) for c in lr_changes(store)] == [(3, None, 0.025), (5, None, 0.0125)]
    assert list(epochs_of(store)["learning_rate"]) == [0.05, 0.05, 0.025, 0.025]


# ---- several processes -----------------------------------------------------------------------

DDP_SCRIPT = '''
import json
import sys
import torch
import torch.nn.functional as F
import lightning.pytorch as pl
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import Logger
from trainprov.lightning import Provenance


class ListLogger(Logger):
    """Keeps what Lightning logs on this rank (Lightning's own loggers write on rank zero only)."""

    def __init__(self):
        super().__init__()
        self.logged = []

    name, version = "list", "0"

    def log_metrics(self, metrics, step=None):
        self.logged.append(dict(metrics))

    def log_hyperparams(self, params, *args, **kwargs):
        pass


class Regressor(pl.LightningModule):
    def __init__(self, lr=0.05, fail_rank=-1):
        super().__init__()
        self.save_hyperparameters()
        self.net = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 1))

    def step(self, batch):
        x, y = batch
        return F.mse_loss(self.net(x).squeeze(-1), y)

    def training_step(self, batch, batch_idx):
        if self.global_rank == self.hparams.fail_rank and self.current_epoch == 1:
            raise RuntimeError(f"rank {self.global_rank} diverged")
        loss = self.step(batch)
        self.log("loss", loss, on_step=True, on_epoch=True, sync_dist=True)
        self.log("rank_loss", loss.detach(), on_step=False, on_epoch=True)  # this rank's own: not synchronised
        return loss

    def validation_step(self, batch, batch_idx):
        self.log("val_loss", self.step(batch), sync_dist=True)

    def test_step(self, batch, batch_idx):
        self.log("test_loss", self.step(batch), sync_dist=True)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=self.hparams.lr)


def main():
    store, strategy, folder, calls, fail_rank = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5])
    g = torch.Generator().manual_seed(0)
    x = torch.randn(256, 8, generator=g)
    y = torch.sin(x[:, :4]).sum(1)
    train = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x[:192], y[:192]), batch_size=32)
    val = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x[192:], y[192:]), batch_size=32)
    prov, logged = Provenance(store), ListLogger()
    trainer = pl.Trainer(accelerator="cpu", devices=2, strategy=strategy, max_epochs=3, logger=[prov.logger, logged],
                         callbacks=[prov, ModelCheckpoint(dirpath=folder, save_top_k=-1)], log_every_n_steps=1,
                         enable_progress_bar=False, enable_model_summary=False, default_root_dir=folder)
    trainer.fit(Regressor(fail_rank=fail_rank), train, val)
    metrics = {k: v.item() for k, v in trainer.callback_metrics.items()}
    if calls == "fit+test":
        trainer.test(trainer.lightning_module, val, verbose=False)
        metrics.update({k: v.item() for k, v in trainer.callback_metrics.items()})
    run = prov.run.id if prov.run else None
    with open(f"{folder}/result-{trainer.global_rank}.json", "w") as f:  # a pipe would mix the ranks' long lines
        json.dump({"rank": trainer.global_rank, "run": run, "metrics": metrics, "logged": logged.logged}, f)


if __name__ == "__main__":
    main()
'''


def run_ddp(tmp_path, store, strategy, calls="fit+test", fail_rank=-1, returncode=0):
    """Run DDP_SCRIPT with two CPU processes; return each rank's result (the launching process's, with ddp_spawn)."""
    script = tmp_path / "ddp_train.py"
    script.write_text(textwrap.dedent(DDP_SCRIPT))
    env = {k: v for k, v in os.environ.items()
           if k not in ("TRAINPROV_STORE", "TRAINPROV_RUN_ID", "LOCAL_RANK", "RANK", "WORLD_SIZE")}
    done = subprocess.run([sys.executable, str(script), store, strategy, str(tmp_path / "ckpt"), calls, str(fail_rank)],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == returncode, done.stdout + done.stderr
    results = [json.loads(path.read_text()) for path in sorted((tmp_path / "ckpt").glob("result-*.json"))]
    return {r["rank"]: r for r in results}, done


def logged_values(logged, key):
    """The values of `key` a rank's logger received, in order (a forked key under its _step or _epoch name)."""
    return [m[key] for m in logged if key in m]


def fake_trainer(rank, broadcast):
    """What `Provenance.setup` reads of a trainer of two processes; `broadcast` stands for the collective."""
    strategy = SimpleNamespace(broadcast=broadcast)
    return SimpleNamespace(world_size=2, global_rank=rank, is_global_zero=rank == 0, loggers=[], callbacks=[],
                           strategy=strategy)


def test_rank_zero_shares_its_open_run_and_keeps_one_started_alone(store):
    sent = []

    def from_zero(obj, src=0):
        sent.append(obj)
        return obj

    zero, one = Provenance(store), Provenance(store)
    zero.setup(fake_trainer(0, from_zero), None, "fit")
    one.setup(fake_trainer(1, lambda obj, src=0: sent[-1]), None, "fit")
    assert sent[0] is not None and zero.run.id == one.run.id == sent[0] and (zero.run.rank, one.run.rank) == (0, 1)
    zero.setup(fake_trainer(0, from_zero), None, "test")  # the next trainer call: the same run
    assert sent[1] == sent[0]
    zero.end()
    one.end()
    assert tp.query("SELECT status, world_size FROM runs", store=store) == [{"status": "finished", "world_size": 2}]
    # a run started before the trainer by rank zero alone is no run of two: it stays rank zero's
    alone = Provenance(store)
    run = alone.start()
    with pytest.warns(RuntimeWarning, match="only global rank zero records this 2-process call"):
        alone.setup(fake_trainer(0, from_zero), None, "fit")
    assert sent[2] is None and alone.run is run and run.rank is None
    alone.end()


def test_two_ddp_processes_record_one_run_each_rank_its_own_tasks(any_store, tmp_path):
    ranks, _ = run_ddp(tmp_path, any_store, "ddp")
    reader = tp.connect(any_store)
    runs = reader.rows("SELECT run_id, status, world_size, error FROM runs")
    assert runs == [{"run_id": runs[0]["run_id"], "status": "finished", "world_size": 2, "error": None}]
    assert ranks[0]["run"] == ranks[1]["run"] == runs[0]["run_id"]  # fit and test: one run on every rank
    assert reader.rows("SELECT rank, status FROM run_ranks ORDER BY rank") == [
        {"rank": 0, "status": "finished"}, {"rank": 1, "status": "finished"}]
    tasks = reader.rows("SELECT rank, transformation, status FROM tasks ORDER BY rank, started_at")
    assert tasks == [{"rank": r, "transformation": t, "status": "finished"} for r in (0, 1) for t in ("train", "evaluate")]
    assert reader.rows("SELECT t.rank, h.world_size, h.steps_per_epoch FROM hyperparameters h "
                       "JOIN tasks t ON t.task_id = h.task_id ORDER BY t.rank") == [
        {"rank": r, "world_size": 2, "steps_per_epoch": 3} for r in (0, 1)]  # each rank trains on half the data
    for rank in (0, 1):
        logged, reported = ranks[rank]["logged"], ranks[rank]["metrics"]
        epochs = reader.rows("SELECT e.epoch, e.loss, e.rank_loss, e.val_loss FROM epoch_metrics e "
                             f"JOIN tasks t ON t.task_id = e.task_id WHERE t.rank = {rank} ORDER BY e.epoch")
        assert [e["epoch"] for e in epochs] == [1, 2, 3]
        assert [e["loss"] for e in epochs] == logged_values(logged, "loss_epoch")
        assert [e["rank_loss"] for e in epochs] == logged_values(logged, "rank_loss")
        assert [e["val_loss"] for e in epochs] == logged_values(logged, "val_loss")
        steps = reader.rows("SELECT s.loss FROM step_metrics s JOIN tasks t ON t.task_id = s.task_id "
                            f"WHERE t.rank = {rank} ORDER BY s.global_step")
        assert [s["loss"] for s in steps] == logged_values(logged, "loss_step") and len(steps) == 9
        test = reader.rows("SELECT r.test_loss FROM test_results r JOIN tasks t ON t.task_id = r.task_id "
                           f"WHERE t.rank = {rank}")
        assert test == [{"test_loss": reported["test_loss"]}]
    by_rank = {r: reader.rows("SELECT e.loss, e.rank_loss, e.val_loss FROM epoch_metrics e JOIN tasks t "
                              f"ON t.task_id = e.task_id WHERE t.rank = {r} ORDER BY e.epoch") for r in (0, 1)}
    # logged with sync_dist: the same on both ranks; the rank's own value: not
    assert [(e["loss"], e["val_loss"]) for e in by_rank[0]] == [(e["loss"], e["val_loss"]) for e in by_rank[1]]
    assert all(a["rank_loss"] != b["rank_loss"] for a, b in zip(by_rank[0], by_rank[1]))
    # Lightning writes checkpoints on rank zero: recorded there, each with its SHA-256
    files = reader.rows("SELECT t.rank, f.path, f.sha256 FROM checkpoints c JOIN files f ON f.task_id = c.task_id "
                        "AND f.element_seq = c.element_seq JOIN tasks t ON t.task_id = c.task_id")
    assert len(files) == 3 and {f["rank"] for f in files} == {0}
    assert all(hashlib.sha256(open(f["path"], "rb").read()).hexdigest() == f["sha256"] for f in files)
    assert reader.rows("SELECT count(*) AS n FROM agents WHERE kind = 'machine'") == [{"n": 1}]  # by rank zero


def test_a_failing_ddp_rank_fails_the_run_with_the_epochs_before(tmp_path):
    store = str(tmp_path / "fail.db")
    _, done = run_ddp(tmp_path, store, "ddp", calls="fit", fail_rank=1, returncode=1)
    assert "rank 1 diverged" in done.stderr
    reader = tp.connect(store)
    assert [(r["status"], r["world_size"]) for r in reader.rows("SELECT status, world_size FROM runs")] == [("failed", 2)]
    ranks = {r["rank"]: r for r in reader.rows("SELECT rank, status, error FROM run_ranks")}
    assert ranks[1]["status"] == "failed" and "RuntimeError: rank 1 diverged" in ranks[1]["error"]
    assert ranks[0]["status"] == "failed"  # its collective lost its peer
    assert reader.rows("SELECT t.rank, t.status, count(e.epoch) AS epochs FROM tasks t LEFT JOIN epoch_metrics e "
                       "ON e.task_id = t.task_id WHERE t.transformation = 'train' GROUP BY t.rank, t.status "
                       "ORDER BY t.rank") == [{"rank": 0, "status": "failed", "epochs": 1},
                                              {"rank": 1, "status": "failed", "epochs": 1}]


def test_spawned_workers_record_each_trainer_call_as_a_run_of_both_ranks(tmp_path):
    store = str(tmp_path / "spawn.db")
    ranks, _ = run_ddp(tmp_path, store, "ddp_spawn")
    reader = tp.connect(store)
    runs = reader.rows("SELECT run_id, status, world_size FROM runs ORDER BY started_at")
    assert [(r["status"], r["world_size"]) for r in runs] == [("finished", 2), ("finished", 2)]  # fit, then test
    tasks = reader.rows("SELECT run_id, rank, transformation FROM tasks ORDER BY run_id, rank")
    assert tasks == [{"run_id": runs[0]["run_id"], "rank": r, "transformation": "train"} for r in (0, 1)] + [
        {"run_id": runs[1]["run_id"], "rank": r, "transformation": "evaluate"} for r in (0, 1)]
    assert reader.rows("SELECT count(*) AS n FROM run_ranks WHERE status = 'finished'") == [{"n": 4}]
    assert reader.rows("SELECT count(*) AS n FROM epoch_metrics WHERE val_loss IS NOT NULL") == [{"n": 6}]  # 3 a rank
    assert reader.rows("SELECT count(*) AS n FROM checkpoints") == [{"n": 3}]
    # the launching process only started the workers; it has the rank-zero worker's values back
    assert list(ranks) == [0] and ranks[0]["run"] is None
    last = reader.rows("SELECT e.val_loss FROM epoch_metrics e JOIN tasks t ON t.task_id = e.task_id "
                       "WHERE t.rank = 0 AND e.epoch = 3")
    assert last == [{"val_loss": ranks[0]["metrics"]["val_loss"]}]
    assert [r["test_loss"] for r in reader.rows("SELECT test_loss FROM test_results")] == [ranks[0]["metrics"]["test_loss"]] * 2


# ---- the example -----------------------------------------------------------------------------

def test_the_example_trains_and_prints_from_the_store(tmp_path):
    store = str(tmp_path / "example.db")
    done = subprocess.run([sys.executable, os.path.join(ROOT, "examples", "regression_lightning.py"), "--epochs", "4",
                           "--store", store, "--checkpoints", str(tmp_path / "ckpt")],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    reader = tp.connect(store)
    run = reader.rows("SELECT run_id, name, status FROM runs")
    assert run == [{"run_id": run[0]["run_id"], "name": "regression-lightning", "status": "finished"}]
    assert reader.rows("SELECT count(*) AS n FROM epoch_metrics WHERE loss IS NOT NULL AND val_loss IS NOT NULL") == [{"n": 4}]
    assert reader.rows("SELECT count(*) AS n FROM test_results WHERE test_loss > 0") == [{"n": 1}]
    assert f"run {run[0]['run_id']}" in done.stdout and "test_loss" in done.stdout
