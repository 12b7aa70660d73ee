"""A hand-written PyTorch loop on generated data, recorded with trainprov.torch.Tracker.

    python examples/regression_torch.py [--epochs 40] [--store PATH] [--steps]

The task: y = a smooth function of 8 generated features; an MLP; MSE. The lines marked
`# trainprov` are all that the loop needs for its provenance.
"""

from __future__ import annotations

import argparse
import os
import tempfile

import torch

import trainprov
from trainprov.torch import Tracker


def make_data(n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Features and targets of the regression task (generated: no download)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 8, generator=g)
    y = torch.sin(x[:, :4]).sum(1) + 0.5 * x[:, 4] * x[:, 5] - 0.25 * x[:, 6] ** 2 + 0.1 * torch.randn(n, generator=g)
    return x, y.unsqueeze(1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--store", default=None, help="store path (default: $TRAINPROV_STORE or ./trainprov.db)")
    parser.add_argument("--steps", action="store_true", help="also record every training step")
    parser.add_argument("--checkpoints", default=None, help="folder for checkpoints (default: a temporary one)")
    args = parser.parse_args()
    torch.manual_seed(0)
    x, y = make_data(3000)
    train = torch.utils.data.TensorDataset(x[:2000], y[:2000])
    val_x, val_y, test_x, test_y = x[2000:2500], y[2000:2500], x[2500:], y[2500:]
    loader = torch.utils.data.DataLoader(train, batch_size=64, shuffle=True)
    model = torch.nn.Sequential(torch.nn.Linear(8, 64), torch.nn.ReLU(), torch.nn.Linear(64, 64), torch.nn.ReLU(),
                                torch.nn.Linear(64, 1))
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=1e-4)
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, factor=0.5, patience=3)
    folder = args.checkpoints or tempfile.mkdtemp(prefix="trainprov-torch-")
    best, best_epoch, patience = float("inf"), 0, 8

    tracker = Tracker(model, optimizer, args.store, name="regression-torch", loader=loader,  # trainprov
                      epochs=args.epochs, loss="mse", steps=args.steps, monitor="val_loss")
    with tracker:
        for epoch in range(1, args.epochs + 1):
            model.train()
            total = 0.0
            for xb, yb in loader:
                optimizer.zero_grad()
                loss = torch.nn.functional.mse_loss(model(xb), yb)
                loss.backward()
                optimizer.step()
                tracker.step(loss=loss)  # trainprov (rows only with --steps)
                total += loss.item() * len(xb)
            model.eval()
            with torch.no_grad():
                val_loss = torch.nn.functional.mse_loss(model(val_x), val_y).item()
            scheduler.step(val_loss)
            tracker.epoch(loss=total / len(train), val_loss=val_loss)  # trainprov
            if val_loss < best:
                best, best_epoch = val_loss, epoch
                tracker.save(model.state_dict(), os.path.join(folder, "best.pt"),  # trainprov: torch.save + record
                             monitor="val_loss", monitor_value=val_loss)
            elif epoch - best_epoch >= patience:
                tracker.stopped_early(monitor="val_loss", best_epoch=best_epoch, best_value=best,  # trainprov
                                      monitor_value=val_loss)
                break
            if tracker.should_stop:  # trainprov: someone asked for a stop (trainprov steer --stop)
                break
        model.load_state_dict(torch.load(os.path.join(folder, "best.pt")))
        with torch.no_grad():
            test_loss = torch.nn.functional.mse_loss(model(test_x), test_y).item()
        tracker.evaluation(test_loss=test_loss)  # trainprov

    run = tracker.run
    print(f"run {run.id}: best val_loss {best:.4f} at epoch {best_epoch}, test_loss {test_loss:.4f}; store {run.store}")
    rows = trainprov.query(
        "SELECT epoch, step, cause, old_value, new_value, monitor_value FROM adaptations WHERE run_id = ? ORDER BY epoch",
        [run.id], store=run.store,
    )
    for row in rows:
        print(f"  epoch {row['epoch']}: {row['cause']} {row['old_value']:g} -> {row['new_value']:g}"
              + (f" (val_loss {row['monitor_value']:.4f})" if row["monitor_value"] is not None else ""))


if __name__ == "__main__":
    main()
