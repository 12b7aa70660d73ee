"""Plain PyTorch: a few added lines in a hand-written loop record its provenance.

`Tracker` records hyperparameters (the optimizer's groups and defaults), the architecture
(one row per leaf module), the values the loop reports per epoch and per step, checkpoints
saved through it (path, size, SHA-256) and evaluations. Learning-rate changes are detected by
`LearningRateWatcher` (in `torch_support`, shared with the Lightning and Transformers integrations).
"""

from __future__ import annotations

import os
import time
import warnings
from typing import Any, Mapping

import torch

from ..capture.run import Element, FileRef, Run
from ..capture.training import RecordsTraining, TrainingRecorder
from ..capture.validation import TrainingStopped
from ..errors import SpecError
from ..spec import Dataflow
from .torch_support import (CONTINUOUS_SCHEDULES, LearningRateWatcher, distributed_rank, join_distributed_run, jsonable,
                            model_layers, optimizer_hyperparameters, scheduler_config, unwrap_optimizer)

__all__ = ["CONTINUOUS_SCHEDULES", "LearningRateWatcher", "Tracker", "distributed_rank", "join_distributed_run",
           "jsonable", "model_layers", "optimizer_hyperparameters", "scheduler_config", "unwrap_optimizer"]


class Tracker(RecordsTraining):
    """Records a hand-written PyTorch training loop: hyperparameters, architecture, epochs, steps, checkpoints.

    Create it after the model and optimizer; call `step(...)` after each optimizer step (if
    you want per-step rows), `epoch(...)` at the end of each epoch, `save(...)` for
    checkpoints and `evaluation(...)` for test results; `end()` (or the `with` block) ends
    the run. Learning-rate changes are detected by themselves.

    In a torch.distributed job of several processes (torchrun), create it on every rank with
    `distributed=True` (a collective call: rank zero's run id is broadcast), or set
    TRAINPROV_RUN_ID: each rank records its part of one run. Otherwise each process records
    a run of its own (with a warning, unless `distributed=False`).
    """

    def __init__(
        self,
        model: torch.nn.Module,
        optimizer: Any,
        store: str | os.PathLike | None = None,
        *,
        name: str | None = None,
        run: Run | None = None,
        dataflow: Dataflow | None = None,
        hyperparameters: Mapping[str, Any] | None = None,
        scheduler: Any = None,
        loader: Any = None,
        batch_size: int | None = None,
        epochs: int | None = None,
        loss: Any = None,
        steps: bool | int = False,
        monitor: str | None = None,
        architecture: bool = True,
        record_agents: bool = True,
        distributed: bool | None = None,
        group: str | None = None,
        parent: Run | str | None = None,
        tags: Mapping[str, Any] | None = None,
        rules: Any = None,
        stop: str = "flag",
        profile: bool = False,
    ) -> None:
        if stop not in ("flag", "raise"):
            raise SpecError(f"stop must be 'flag' or 'raise', got {stop!r}")
        self.model = model
        self.stop = stop
        self.profile_data = profile
        self.recorder = TrainingRecorder("pytorch", store, dataflow=dataflow, run=run, name=name,
                                         record_agents=record_agents, rules=rules, group=group, parent=parent,
                                         tags=tags, hyperparameters=hyperparameters)
        if run is None and distributed:
            join_distributed_run(self.recorder)
        elif run is None and distributed is None and not os.environ.get("TRAINPROV_RUN_ID"):
            where = distributed_rank()
            if where is not None:  # a collective call by default would hang a Tracker made on one rank only
                warnings.warn(
                    f"trainprov: this process is rank {where[0]} of {where[1]} in a torch.distributed job and "
                    f"records a run of its own; pass Tracker(..., distributed=True) on every rank to record one "
                    f"run of {where[1]} ranks (or set TRAINPROV_RUN_ID), or distributed=False on a Tracker made "
                    "on one rank only", RuntimeWarning, stacklevel=2)
        self.scheduler = scheduler
        self.loader = loader
        self.batch_size = batch_size
        self.epochs = epochs
        self.loss = loss
        self.step_every = int(steps) if steps else 0
        self.architecture = architecture
        self.epochs_done = 0
        self.steps_in_epoch = 0
        self.steps_done = 0
        self._began = False
        self._epoch_started = time.perf_counter()
        self.watcher = LearningRateWatcher(optimizer, self.recorder, monitor=monitor, before_step=self.begin)

    # ---- what the training was configured with --------------------------------------------

    def _hyperparameters(self) -> dict[str, Any]:
        loader = self.loader
        batch_size = self.batch_size if self.batch_size is not None else getattr(loader, "batch_size", None)
        try:
            steps_per_epoch = len(loader) if loader is not None else None
        except TypeError:  # an iterable without a length
            steps_per_epoch = None
        facts, _ = model_layers(self.model)
        seen = [self.scheduler] if self.scheduler is not None else self.watcher.find_schedulers()
        schedules = [scheduler_config(s) for s in seen]
        loss = self.loss
        return self.recorder.hyperparameters({
            **optimizer_hyperparameters(self.watcher.optimizer),
            "lr_schedule": schedules[0] if len(schedules) == 1 else (schedules or None),
            "loss": loss if loss is None or isinstance(loss, str) else type(loss).__name__,
            "batch_size": batch_size,
            "epochs": self.epochs,
            "steps_per_epoch": steps_per_epoch,
            **facts,
        })

    def begin(self) -> None:
        """Record hyperparameters and architecture; done by itself at the first step or epoch."""
        if self._began:
            return
        self._began = True
        if self.profile_data and self.loader is not None:
            self.recorder.profile("train_data", self.loader, "train")
        layers = model_layers(self.model)[1] if self.architecture else []
        self.recorder.begin_training(self._hyperparameters(), layers)
        self._epoch_started = time.perf_counter()

    # ---- the loop ---------------------------------------------------------------------------

    def step(self, **metrics: Any) -> None:
        """One training step done (after optimizer.step()); its values are recorded every `steps` steps."""
        self.begin()
        self.steps_in_epoch += 1
        self.steps_done += 1
        if self.step_every and self.steps_in_epoch % self.step_every == 0:
            # tensors become numbers here: the recorder's fast path for steps takes plain values
            values = {k: v.item() if isinstance(v, torch.Tensor) and v.numel() == 1 else v for k, v in metrics.items()}
            values.setdefault("learning_rate", self.watcher.learning_rate)
            self.recorder.step(self.epochs_done + 1, self.steps_in_epoch, values, global_step=self.steps_done)

    def epoch(self, **metrics: Any) -> Element:
        """One epoch done: record every value given, the learning rate its last step used, and its duration."""
        self.begin()
        now = time.perf_counter()
        self.epochs_done += 1
        element = self.recorder.epoch(self.epochs_done, metrics, learning_rate=self.watcher.learning_rate,
                                      seconds=now - self._epoch_started)
        self.watcher.epoch_ended()
        self.steps_in_epoch = 0
        self._epoch_started = now
        if self.stop == "raise" and self.recorder.stopped_by is not None:
            verdict = self.recorder.stopped_by[0]
            self.end_training()
            raise TrainingStopped(verdict)
        return element

    @property
    def should_stop(self) -> bool:
        """True once a rule with action "stop" failed: end your loop (`if tracker.should_stop: break`)."""
        return self.recorder.should_stop

    def save(self, obj: Any, path: str | os.PathLike, *, monitor: str | None = None, monitor_value: Any = None) -> FileRef:
        """`torch.save(obj, path)` and record the file (path, size, SHA-256) as a checkpoint of this epoch."""
        torch.save(obj, path)
        return self.checkpoint(path, monitor=monitor, monitor_value=monitor_value)

    def checkpoint(self, path: str | os.PathLike, *, monitor: str | None = None, monitor_value: Any = None) -> FileRef:
        """Record a model file you wrote yourself."""
        self.begin()
        return self.recorder.checkpoint(path, epoch=self.epochs_done, monitor=monitor, monitor_value=monitor_value)

    def stopped_early(self, *, monitor: str | None = None, best_epoch: int | None = None, best_value: Any = None,
                      monitor_value: Any = None, cause: str = "early stopping") -> Element | None:
        """Record that the loop stopped before its planned epochs (an adaptation of `epochs`).

        Without `best_epoch`, the first epoch recorded with `best_value` of `monitor` is the
        best; without `monitor_value`, the value the last epoch recorded.
        """
        return self.recorder.early_stopping(
            self.epochs_done, cause, monitor=monitor, planned_epochs=self.epochs, best_value=best_value,
            best_epoch=best_epoch, monitor_value=monitor_value,
        )

    def end_training(self, status: str = "finished", error: str | None = None) -> None:
        """End the training task (the run stays open for evaluations)."""
        self.watcher.flush()
        self.recorder.end_training(status, error)

    def evaluation(self, seconds: float | None = None, **metrics: Any) -> Element:
        """Record evaluation results (test loss, accuracy) after training."""
        if self.recorder.train_task is not None:
            self.end_training()
        return self.recorder.evaluation(metrics, seconds=seconds)

    def __exit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> bool:
        # a rule stopped the training (stop="raise"): the `with` block ends there, the run finished
        if isinstance(exc, TrainingStopped):
            self.end("finished")
            return True
        super().__exit__(exc_type, exc, tb)
        return False

    def end(self, status: str = "finished", error: str | None = None) -> None:
        """End the training (if still open) and the run; stop watching the optimizer."""
        if self.recorder.train_task is not None:
            self.end_training(status, error)
        self.watcher.close()
        self.recorder.end(status, error)
