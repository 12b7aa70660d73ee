"""Plain PyTorch: a few added lines in a hand-written loop record its provenance.

`Tracker` records hyperparameters (the optimizer's groups and defaults), the architecture
(one row per leaf module), the values the loop reports per epoch and per step, checkpoints
saved through it (path, size, SHA-256) and evaluations. Learning-rate changes are detected by
`LearningRateWatcher` (in `torch_support`, shared with the Lightning and Transformers integrations),
which also applies steering requests before each optimizer step; a checkpoint request saves the
model's and the optimizer's `state_dict` (docs/steering.md).
"""

from __future__ import annotations

import os
import sys
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

    With steering on (the default), `trainprov steer` may change `learning_rate` (or
    `learning_rate_groupN`) before any optimizer step, ask for a checkpoint (the model's and
    the optimizer's `state_dict`, saved into `checkpoint_dir`) and ask the loop to stop:
    `tracker.should_stop` becomes True at the end of the epoch (`if tracker.should_stop: break`).

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
        steering: bool = True,
        checkpoint_dir: str | os.PathLike | None = None,
    ) -> None:
        if stop not in ("flag", "raise"):
            raise SpecError(f"stop must be 'flag' or 'raise', got {stop!r}")
        self.model = model
        self.stop = stop
        self.profile_data = profile
        self.recorder = TrainingRecorder("pytorch", store, dataflow=dataflow, run=run, name=name,
                                         record_agents=record_agents, rules=rules, group=group, parent=parent,
                                         tags=tags, hyperparameters=hyperparameters, steering=steering)
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
        #: where checkpoints asked for by `trainprov steer --checkpoint` go (None: next to the store)
        self.checkpoint_dir = checkpoint_dir
        self._stop_due: int | None = None  # the epoch at whose end a stop request asked the loop to end
        self.watcher = LearningRateWatcher(optimizer, self.recorder, monitor=monitor, before_step=self._before_step)
        if scheduler is None:  # schedulers made before the tracker: in the variables of the code making it
            self.watcher.look_in_callers(sys._getframe(1))
        self.watcher.steerables(self.recorder)
        self.recorder.steering.checkpointer = self._checkpoint_on_request

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
        self.watcher.steerables(self.recorder)  # groups added since the tracker was made
        if self.profile_data and self.loader is not None:
            self.recorder.profile("train_data", self.loader, "train")
        layers = model_layers(self.model)[1] if self.architecture else []
        self.recorder.begin_training(self._hyperparameters(), layers)
        self._epoch_started = time.perf_counter()

    # ---- the loop ---------------------------------------------------------------------------

    def step(self, **metrics: Any) -> None:
        """One training step done (after optimizer.step()); its values are recorded every `steps` steps."""
        if not self._began:
            self.begin()
        self.steps_in_epoch += 1
        self.steps_done += 1
        if self.step_every and self.steps_in_epoch % self.step_every == 0:
            for value in metrics.values():
                if value.__class__ is not float:
                    # tensors become numbers now (their value at this step): the recorder's fast path takes plain values
                    metrics = {k: v.item() if isinstance(v, torch.Tensor) and v.numel() == 1 else v for k, v in metrics.items()}
                    break
            if "learning_rate" not in metrics:
                metrics["learning_rate"] = self.watcher.learning_rate
            self.recorder.step(self.epochs_done + 1, self.steps_in_epoch, metrics, global_step=self.steps_done)

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
        if self.recorder.stop_requested and self._stop_due is None:
            self._stop_due = self.epochs_done  # should_stop from now on: the loop ends after this epoch
        if self.stop == "raise" and self.recorder.stopped_by is not None:
            verdict = self.recorder.stopped_by[0]
            self.end_training()
            raise TrainingStopped(verdict)
        return element

    @property
    def should_stop(self) -> bool:
        """True once a rule with action "stop" failed, or at the end of the epoch in which someone asked for a stop.

        End your loop when it is: `if tracker.should_stop: break` after `tracker.epoch(...)`.
        """
        return self.recorder.stopped_by is not None or self._stop_due is not None

    # ---- steering -----------------------------------------------------------------------------

    def _before_step(self) -> None:
        """Before each optimizer step (the watcher's pre-hook): the first records what the training is."""
        self.begin()
        if self._stop_due is not None:
            self._stop_ignored()

    def _stop_ignored(self) -> None:
        """A step after the epoch a stop request ended: the loop does not look at should_stop; say so, do not claim a stop."""
        steering, epoch = self.recorder.steering, self._stop_due
        request, steering.stop_request, self._stop_due = steering.stop_request, None, None
        if request is not None:
            steering.answer(request, "refused", f"the training went on after epoch {epoch}: its loop does not end "
                                                "when tracker.should_stop is True (add `if tracker.should_stop: break` "
                                                "after tracker.epoch(...))", epoch=epoch)

    def _checkpoint_on_request(self, epoch: int | None, step: int | None) -> None:
        """Save the model's and the optimizer's state now (a steering request) and record the file."""
        run = self.run
        folder = self.checkpoint_dir
        if folder is None:
            # next to a SQLite store (its URL is the file's absolute path), else in the working folder
            beside = os.path.dirname(run.store) if os.path.isabs(run.store) else os.getcwd()
            folder = os.path.join(beside, "trainprov-checkpoints", run.id)
        os.makedirs(folder, exist_ok=True)
        # before step S of epoch E: the weights of the steps before it; at an epoch's end (step None): that epoch's
        saved_in = epoch if step is not None else self.epochs_done
        path = os.path.join(folder, f"steered-epoch{saved_in}-" + (f"step{step}.pt" if step is not None else "end.pt"))
        torch.save({"model": self.model.state_dict(), "optimizer": self.watcher.optimizer.state_dict(),
                    "epoch": saved_in, "step": step}, path)
        self.recorder.checkpoint(path, epoch=saved_in)

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
