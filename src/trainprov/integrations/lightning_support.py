"""Lightning facts the callback records: a trainer's settings and loaders, the names and steps of what it logs."""

from __future__ import annotations

from argparse import Namespace
from typing import Any, Iterator, Mapping

from lightning.pytorch import LightningModule, Trainer

from ..capture.training import number
from .torch_support import jsonable, model_layers, optimizer_hyperparameters, scheduler_config

#: the suffixes Lightning gives a value logged both on_step and on_epoch
SUFFIXES = ("_step", "_epoch")


def forked_names(trainer: Trainer) -> set[str]:
    """Names logged with both on_step and on_epoch, which Lightning reports as name_step and name_epoch."""
    # Lightning keeps this only in its result collection; without it, keys keep Lightning's names.
    try:
        return {metric.meta.name for metric in trainer._results.values() if metric.meta.forked}
    except Exception:
        return set()


def logging_step(trainer: Trainer) -> int:
    """The step Lightning gives loggers: training batches that stepped the optimizer so far."""
    # private, but it is the counter Lightning's own callbacks log with (LearningRateMonitor)
    steps = getattr(getattr(trainer.fit_loop, "epoch_loop", None), "_batches_that_stepped", None)
    return steps if isinstance(steps, int) else trainer.global_step


def hyperparameter_values(params: Mapping[str, Any] | Namespace) -> dict[str, Any]:
    """Hyperparameters as the store can hold them: numbers, text and JSON, never an object."""
    params = vars(params) if isinstance(params, Namespace) else dict(params)
    return {str(key): jsonable(value) for key, value in params.items()}


def monitored(values: Mapping[str, Any], key: str) -> float | None:
    """A monitored key's value in an epoch's values (which hold name, not name_epoch, for forked ones)."""
    if key in values:
        return number(values[key])
    for suffix in SUFFIXES:
        if key.endswith(suffix) and key[: -len(suffix)] in values:
            return number(values[key[: -len(suffix)]])
    return None


def trainer_hyperparameters(trainer: Trainer, module: LightningModule) -> dict[str, Any]:
    """What a fit trains with: optimizers and schedulers, batch and epoch sizes, layers, precision, devices."""
    optimizers = list(trainer.optimizers)
    schedules = [
        {**(scheduler_config(c.scheduler) or {}), "interval": c.interval, "frequency": c.frequency,
         **({"monitor": c.monitor} if c.monitor else {})}
        for c in trainer.lr_scheduler_configs
    ]
    batches = trainer.num_training_batches
    facts, _ = model_layers(module)
    values: dict[str, Any] = {
        **(optimizer_hyperparameters(optimizers[0]) if optimizers else {}),
        "lr_schedule": schedules[0] if len(schedules) == 1 else (schedules or None),
        "batch_size": getattr(trainer.train_dataloader, "batch_size", None),
        "epochs": trainer.max_epochs if trainer.max_epochs is not None and trainer.max_epochs >= 0 else None,
        "steps_per_epoch": batches if isinstance(batches, int) else None,
        **facts,
        "world_size": trainer.world_size,
        "precision": str(trainer.precision),
        "accumulate_grad_batches": trainer.accumulate_grad_batches,
        "gradient_clip_val": number(trainer.gradient_clip_val),
    }
    if len(optimizers) > 1:
        values["optimizers"] = [optimizer_hyperparameters(o) for o in optimizers]
    return values


def fit_loaders(trainer: Trainer) -> Iterator[tuple[str, str, Any]]:
    """(profile name, split, loader) for each training and validation loader of a fit that has a dataset."""
    for split, loaders in (("train", trainer.train_dataloader), ("validation", trainer.val_dataloaders)):
        loaders = getattr(loaders, "iterables", loaders)  # a CombinedLoader holds the user's loaders
        if loaders is None:
            continue
        if isinstance(loaders, dict):
            named = list(loaders.items())
        elif isinstance(loaders, (list, tuple)):
            named = [(str(i), loader) for i, loader in enumerate(loaders)]
        else:
            named = [("", loaders)]
        for key, loader in named:
            if getattr(loader, "dataset", None) is not None:
                yield f"data{'_' + key if len(named) > 1 else ''}", split, loader
