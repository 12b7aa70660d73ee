"""A Lightning training on generated data, recorded with trainprov.lightning.Provenance.

    python examples/regression_lightning.py [--epochs 40] [--store PATH] [--checkpoints DIR]

The task: y = a smooth function of 8 generated features; an MLP; MSE (as in
examples/regression_torch.py, so that their runs compare in one query). Lightning's
ReduceLROnPlateau, EarlyStopping and ModelCheckpoint make adaptations and checkpoints;
the lines marked `# trainprov` are all the provenance needs. At the end the script reads
its run back from the store with SQL.
"""

from __future__ import annotations

import argparse
import tempfile
import warnings

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint

import trainprov
from trainprov.lightning import Provenance


def make_data(n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Features and targets of the regression task (generated: no download)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 8, generator=g)
    y = torch.sin(x[:, :4]).sum(1) + 0.5 * x[:, 4] * x[:, 5] - 0.25 * x[:, 6] ** 2 + 0.1 * torch.randn(n, generator=g)
    return x, y.unsqueeze(1)


class Regressor(pl.LightningModule):
    """An MLP trained with MSE; its init arguments are its hyperparameters."""

    def __init__(self, hidden: int = 64, lr: float = 3e-3, weight_decay: float = 1e-4) -> None:
        super().__init__()
        self.save_hyperparameters()  # recorded by trainprov's logger, like by any logger
        self.net = torch.nn.Sequential(torch.nn.Linear(8, hidden), torch.nn.ReLU(), torch.nn.Linear(hidden, hidden),
                                       torch.nn.ReLU(), torch.nn.Linear(hidden, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        x, y = batch
        loss = F.mse_loss(self(x), y)
        self.log("loss", loss, on_step=True, on_epoch=True)  # step_metrics.loss and epoch_metrics.loss
        return loss

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        x, y = batch
        self.log("val_loss", F.mse_loss(self(x), y))

    def test_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        x, y = batch
        self.log("test_loss", F.mse_loss(self(x), y))
        self.log("test_mae", F.l1_loss(self(x), y))

    def configure_optimizers(self) -> dict:
        optimizer = torch.optim.AdamW(self.parameters(), lr=self.hparams.lr, weight_decay=self.hparams.weight_decay)
        plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, factor=0.5, patience=1)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": plateau, "monitor": "val_loss"}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--store", default=None, help="store path (default: $TRAINPROV_STORE or ./trainprov.db)")
    parser.add_argument("--checkpoints", default=None, help="folder for checkpoints (default: a temporary one)")
    args = parser.parse_args()
    warnings.filterwarnings("ignore", ".*does not have many workers.*")  # tensors in memory need none
    pl.seed_everything(0, verbose=False)
    x, y = make_data(3000)
    data = torch.utils.data.TensorDataset
    train = torch.utils.data.DataLoader(data(x[:2000], y[:2000]), batch_size=64, shuffle=True)
    val = torch.utils.data.DataLoader(data(x[2000:2500], y[2000:2500]), batch_size=500)
    test = torch.utils.data.DataLoader(data(x[2500:], y[2500:]), batch_size=500)
    folder = args.checkpoints or tempfile.mkdtemp(prefix="trainprov-lightning-")

    prov = Provenance(args.store, name="regression-lightning", hyperparameters={"loss": "mse"})  # trainprov
    trainer = pl.Trainer(
        max_epochs=args.epochs, accelerator="cpu", devices=1, logger=prov.logger, log_every_n_steps=1,
        callbacks=[prov,  # trainprov: the callback (and prov.logger, above) record the training
                   EarlyStopping(monitor="val_loss", patience=8),
                   ModelCheckpoint(dirpath=folder, monitor="val_loss", filename="best-{epoch}")],
        enable_progress_bar=False, enable_model_summary=False,
    )
    with prov:  # trainprov: the run ends finished, or failed with the exception
        trainer.fit(Regressor(), train, val)
        result = trainer.test(ckpt_path="best", dataloaders=test, verbose=False)[0]

    run = prov.run
    print(f"run {run.id}: {trainer.current_epoch} epochs, test_loss {result['test_loss']:.4f}; store {run.store}")
    reader = trainprov.connect(run.store)
    print(reader.df(  # every 5th epoch and the last
        "SELECT epoch, loss, val_loss, learning_rate, round(epoch_time_s, 3) AS seconds FROM epoch_metrics "
        "WHERE run_id = ? AND (epoch % 5 = 0 OR epoch = (SELECT max(epoch) FROM epoch_metrics WHERE run_id = ?)) "
        "ORDER BY epoch", [run.id, run.id],
    ).to_string(index=False))
    for row in reader.rows("SELECT epoch, kind, cause, old_value, new_value, monitor_value FROM adaptations "
                           "WHERE run_id = ? ORDER BY recorded_at", [run.id]):
        print(f"  epoch {row['epoch']}: {row['kind']} {row['old_value']:g} -> {row['new_value']:g} by {row['cause']}"
              + (f" (val_loss {row['monitor_value']:.4f})" if row["monitor_value"] is not None else ""))
    saved = reader.rows("SELECT c.epoch, c.monitor_value, f.path, f.sha256 FROM checkpoints c JOIN files f "
                        "ON f.task_id = c.task_id AND f.element_seq = c.element_seq WHERE c.run_id = ? ORDER BY c.epoch", [run.id])
    best = saved[-1]  # ModelCheckpoint writes a file each time val_loss improves
    print(f"  {len(saved)} checkpoints; the best, of epoch {best['epoch']} (val_loss {best['monitor_value']:.4f}): "
          f"{best['path']} sha256 {best['sha256'][:16]}...")
    print(reader.df("SELECT test_loss, test_mae, evaluation_time_s FROM test_results WHERE run_id = ?", [run.id]).to_string(index=False))


if __name__ == "__main__":
    main()
