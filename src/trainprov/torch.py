"""`trainprov.torch`: record a hand-written PyTorch loop (see trainprov.integrations.torch)."""

from .integrations.torch import LearningRateWatcher, Tracker, model_layers, optimizer_hyperparameters, scheduler_config

__all__ = ["LearningRateWatcher", "Tracker", "model_layers", "optimizer_hyperparameters", "scheduler_config"]
