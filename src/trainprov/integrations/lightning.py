"""Lightning: one callback, with the logger it brings, records the provenance of `fit`, `test` and `validate`.

The logger receives what loggers see (hyperparameters from `save_hyperparameters`, every
`self.log` value at its step and epoch); the callback sees the rest (optimizer and
scheduler, architecture, learning-rate changes, early stopping, `ModelCheckpoint` files,
timing) and knows where in the loop each logged value belongs. Both translate Lightning's
events into calls on a `TrainingRecorder` and own nothing else. Steering requests
(docs/steering.md) apply before optimizer steps and at epoch ends; a checkpoint request is
saved by `trainer.save_checkpoint` at the next batch's end, a stop request sets
`trainer.should_stop` at the epoch's end. With several processes
every rank records into one run, its tasks marked with its rank; on one, it records alone.
"""

from __future__ import annotations

import os
import time
import warnings
from argparse import Namespace
from typing import Any, Iterable, Mapping

from lightning.fabric.utilities.rank_zero import rank_zero_only
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import Logger
from lightning.pytorch.trainer.states import RunningStage, TrainerFn

from ..capture.run import Element, FileRef, Run, status_for
from ..capture.training import RecordsTraining, TrainingRecorder, number
from ..errors import CaptureError
from ..spec import Dataflow
from .lightning_support import (fit_loaders, forked_names, hyperparameter_values, logging_step, monitored,
                                trainer_hyperparameters)
from .torch_support import LearningRateWatcher, model_layers

class ProvenanceLogger(Logger):
    """The logger half of `Provenance`: hands what Lightning logs to its callback; writes no files."""

    def __init__(self, provenance: "Provenance") -> None:
        super().__init__()
        self.provenance = provenance
        # called at every logged step: straight to the callback, without a call of ours in between
        self.log_metrics = provenance._metrics_logged  # type: ignore[method-assign]

    # name and version make ModelCheckpoint's default folder: empty strings keep it where
    # Lightning puts checkpoints without a logger (default_root_dir/checkpoints)
    @property
    def name(self) -> str:
        """Empty: trainprov has no experiment folder."""
        return ""

    @property
    def version(self) -> str:
        """Empty: trainprov has no experiment folder."""
        return ""

    def log_hyperparams(self, params: Mapping[str, Any] | Namespace, *args: Any, **kwargs: Any) -> None:
        """Keep the hyperparameters of `save_hyperparameters` for the training's record."""
        self.provenance._hyperparameters_logged(params)

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        """Record what Lightning logs: a training step's values, an epoch's, an evaluation's."""
        self.provenance._metrics_logged(metrics, step)

    def after_save_checkpoint(self, checkpoint_callback: Any) -> None:
        """Record the file a ModelCheckpoint has just written."""
        self.provenance._checkpoint_saved(checkpoint_callback)

    def finalize(self, status: str) -> None:
        """Lightning calls this at the end of each trainer call; "failed" ends the training failed."""
        if status == "failed":
            self.provenance._failed()


class Provenance(RecordsTraining, Callback):
    """Records hyperparameters, architecture, epochs and steps, adaptations, checkpoints and evaluations.

    Pass it as a callback: `Trainer(callbacks=[prov])` (it adds its logger, `prov.logger`, to
    the trainer's loggers if you did not pass it yourself). One run spans every `fit`,
    `test` and `validate` of the trainers it is given, until `end()` (or the `with` block
    ends, or the process exits).
    """

    def __init__(
        self,
        store: str | os.PathLike | None = None,
        *,
        name: str | None = None,
        run: Run | None = None,
        dataflow: Dataflow | None = None,
        hyperparameters: Mapping[str, Any] | None = None,
        include: Iterable[str] | None = None,
        steps: bool = True,
        architecture: bool = True,
        record_agents: bool = True,
        group: str | None = None,
        parent: Run | str | None = None,
        tags: Mapping[str, Any] | None = None,
        rules: Any = None,
        profile: bool = False,
        steering: bool = True,
    ) -> None:
        super().__init__()
        self._recorder_args = dict(store=store, dataflow=dataflow, name=name, record_agents=record_agents,
                                   group=group, parent=parent, tags=tags, rules=rules,
                                   hyperparameters=hyperparameters, include=include, steering=steering)
        self.recorder = TrainingRecorder("lightning", run=run, **self._recorder_args)
        self.logger = ProvenanceLogger(self)
        self.steps = steps
        self.architecture = architecture
        self.profile_data = profile
        self._pid = os.getpid()
        self._fit_steerables: list[str] = []  # the names the last fit registered (its optimizers' rates)
        self._reset()

    def _reset(self) -> None:
        # state of the trainer call in progress (none of it survives pickling to a worker)
        self._trainer: Trainer | None = None
        self._recording = False
        self._lightning_hyperparameters: dict[str, Any] = {}
        self._watchers: list[LearningRateWatcher] = []
        #: suffix -> logged keys -> (the keys kept, their columns)
        self._renamed: dict[str, dict[tuple[str, ...], tuple[tuple[str, ...], tuple[str, ...]]]] = {"_step": {}, "_epoch": {}}
        self._epoch = 0  # the epoch in progress or last run, from 1
        self._first_epoch = 0
        self._epoch_started = 0.0
        self._epoch_values: dict[str, Any] | None = None  # the epoch's values, written once it is over
        self._epoch_seconds: float | None = None
        self._train_epoch_ended = True
        self._steps_before_epoch = 0  # Lightning's logging step when the epoch began
        self._step_offset = 0  # Lightning's steps before the watcher saw its first
        self._step: int | None = None  # the logging step of the step row being gathered
        self._step_values: dict[str, Any] = {}
        self._eval_values: dict[str, Any] = {}
        self._eval_epoch_ended = False
        self._eval_started = 0.0
        self._exception: BaseException | None = None
        self._warned_alone = False

    def __getstate__(self) -> dict[str, Any]:
        # Spawned workers (strategy="ddp_spawn") get a pickled copy: the run, its writer thread
        # and the watchers stay here; the workers record the trainer call as a run of their own.
        state = self.__dict__.copy()
        state["recorder"] = None
        state.update(_trainer=None, _watchers=[], _exception=None)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self.recorder = TrainingRecorder("lightning", **self._recorder_args)

    # ---- the run ----------------------------------------------------------------------------

    @property
    def run(self) -> Run | None:
        """The run: the current or last one; None before it starts and on a process that records nothing."""
        return self.recorder.run

    def start(self) -> Run | None:
        """Start the run before training, to record your own tasks (data preparation, say) first.

        Before a trainer call, only global rank zero (or a process given TRAINPROV_RUN_ID)
        knows which run to record into: elsewhere nothing is recorded and this returns None.
        """
        if not self._records_here():
            return None
        return self.recorder.start()

    def use(self, *elements: Element) -> None:
        """Elements (your data, say) that the next `fit` uses."""
        self.recorder.use(*elements)

    def checkpoint(self, path: str | os.PathLike) -> FileRef | None:
        """Record a model file you saved yourself during training (`trainer.save_checkpoint`, say); on global rank zero."""
        if not self._rank_zero():  # where Lightning writes checkpoints
            return None
        return self.recorder.checkpoint(path, epoch=self._epoch)

    def record_evaluation(self, metrics: Mapping[str, Any]) -> Element | None:
        """Record evaluation results you computed yourself (with this process's rank, in a run of several)."""
        if not self._records_here():
            return None
        return self.recorder.evaluation(metrics)

    def end(self, status: str = "finished", error: str | None = None) -> None:
        """End the run (a training still open ends with it); in a run of several processes, this rank's part."""
        self._close_watchers()
        self.recorder.end(status, error)
        self.recorder.rank_of_run = None  # an ended rank never joins its run again

    def _rank_zero(self) -> bool:
        if self._trainer is not None:
            return self._trainer.is_global_zero
        return getattr(rank_zero_only, "rank", 0) == 0  # set from RANK / LOCAL_RANK before a trainer exists

    def _records_here(self) -> bool:
        """Whether this process records: every rank of a run shared by several, else global rank zero."""
        return self.recorder.rank_of_run is not None or bool(os.environ.get("TRAINPROV_RUN_ID")) or self._rank_zero()

    # ---- several processes ------------------------------------------------------------------

    def _share_run(self, trainer: Trainer) -> bool:
        """Agree with the other ranks on one run, rank zero's; True if this rank records into it.

        A collective call: every rank makes it in `setup`, after the process group exists.
        """
        # not in workers a strategy launches anew for every trainer call (ddp_spawn): their runs are one per call
        first_call = self.recorder.run is None and os.getpid() == self._pid
        proposal = self.recorder.run_to_share(trainer.world_size, first_call=first_call) if trainer.is_global_zero else None
        if proposal is not None:
            # rank zero opens the store first: two processes creating one new SQLite file at
            # once can find it locked
            self.recorder.join_run(proposal, trainer.global_rank, trainer.world_size)
        # broadcast works for every launcher (ddp's script, ddp_spawn's workers, torchrun)
        run_id = trainer.strategy.broadcast(proposal, src=0)
        if run_id is None:
            return trainer.is_global_zero  # rank zero records alone (it had a run of its own open)
        if not trainer.is_global_zero:
            self.recorder.join_run(run_id, trainer.global_rank, trainer.world_size)
        return True

    # ---- every trainer call -----------------------------------------------------------------

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if not any(logger is self.logger for logger in trainer.loggers):
            trainer.loggers = [*trainer.loggers, self.logger]
        # first in the list, so that an epoch has begun before any other callback logs in it
        # (LearningRateMonitor logs its rate in on_train_epoch_start)
        trainer.callbacks = [self, *(c for c in trainer.callbacks if c is not self)]
        self._trainer = trainer
        if trainer.world_size > 1 and stage != TrainerFn.PREDICTING:
            self._recording = self._share_run(trainer)
        else:  # one process, or nothing to record: the run starts with the first thing it records
            self._recording = trainer.is_global_zero
        self._renamed = {"_step": {}, "_epoch": {}}
        self._lightning_hyperparameters, self._exception = {}, None  # this call's own, if any

    def teardown(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if self._recording and os.getpid() != self._pid:
            # a worker process launched by the strategy (ddp_spawn, ddp_fork): it ends when the
            # trainer call returns, and a forked one exits without running exit hooks
            self.end()

    def on_exception(self, trainer: Trainer, pl_module: LightningModule, exception: BaseException) -> None:
        self._exception = exception  # the training ends failed in finalize, after other callbacks' saves

    # ---- fit ----------------------------------------------------------------------------------

    def _hyperparameters(self, trainer: Trainer, module: LightningModule) -> dict[str, Any]:
        return self.recorder.hyperparameters(trainer_hyperparameters(trainer, module), logged=self._lightning_hyperparameters)

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if not self._recording:
            return
        if self.profile_data:
            self._profile_loaders(trainer)
        layers = model_layers(pl_module)[1] if self.architecture else []
        self.recorder.begin_training(self._hyperparameters(trainer, pl_module), layers)
        monitors = {id(c.scheduler.optimizer): c.monitor for c in trainer.lr_scheduler_configs
                    if getattr(c.scheduler, "optimizer", None) is not None}
        self._close_watchers()
        for optimizer in trainer.optimizers:
            watcher = LearningRateWatcher(optimizer, self.recorder, monitor=monitors.get(id(optimizer)))
            watcher.epochs_ended = trainer.current_epoch  # resumed from a checkpoint: epochs go on
            self._watchers.append(watcher)
        self._steerables()
        self._first_epoch = trainer.current_epoch
        self._step_offset = logging_step(trainer)  # a resumed fit goes on counting

    def _steerables(self) -> None:
        """What a fit lets people steer: the first optimizer's rates by group, each further optimizer's as a whole."""
        steering = self.recorder.steering
        for name in self._fit_steerables:  # a previous fit's optimizers
            steering.steerables.pop(name, None)
        before = set(steering.steerables)
        if self._watchers:
            self._watchers[0].steerables(self.recorder)
        for index, watcher in enumerate(self._watchers[1:], 1):
            self.recorder.steerable(f"learning_rate_optimizer{index}",
                                    lambda w=watcher: number(w.optimizer.param_groups[0]["lr"]), watcher.steer, low=0.0)
        self._fit_steerables = [name for name in steering.steerables if name not in before]
        # a request waits for the next safe point (a batch's end, or the fit's end), not inside an optimizer step
        steering.checkpointer = lambda epoch, step: None

    def _save_on_request(self, trainer: Trainer) -> None:
        """Save the checkpoint that steering requests wait for, through Lightning, and record it (which answers them)."""
        steering = self.recorder.steering
        callback = trainer.checkpoint_callback
        folder = getattr(callback, "dirpath", None) or os.path.join(trainer.default_root_dir, "checkpoints")
        path = os.path.join(folder, f"steered-epoch{self._epoch}-step{trainer.global_step}.ckpt")
        try:
            trainer.save_checkpoint(path)
            self.recorder.checkpoint(path, epoch=self._epoch)
        except Exception as exc:  # a failed save must not end the training: the requester learns why
            while steering.awaiting_checkpoint:
                steering.answer(steering.awaiting_checkpoint.pop(0), "refused",
                                f"checkpoint failed: {type(exc).__name__}: {exc}")

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        if self.recorder.steering.awaiting_checkpoint and self._recording:
            self._save_on_request(trainer)

    def _profile_loaders(self, trainer: Trainer) -> None:
        """Profile the fit's training and validation data (the datasets of its loaders)."""
        for name, split, loader in fit_loaders(trainer):
            self.recorder.profile(name, loader, split)

    def on_train_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if not self._recording:
            return
        self._write_epoch()
        if self.recorder.should_stop:
            # a rule with action "stop" failed on the epoch just written: Lightning runs no batch
            # of this epoch and ends the fit; the empty epoch is not recorded
            trainer.should_stop = True
            self._epoch_values = None
            return
        self._epoch = trainer.current_epoch + 1
        self._epoch_values, self._epoch_seconds = {}, None
        self._train_epoch_ended = False
        self._steps_before_epoch = logging_step(trainer)
        self._epoch_started = time.perf_counter()

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        # called before the module's own on_train_epoch_end and before Lightning logs the
        # epoch's training values: the row is written when the next epoch (or the fit) begins
        if not self._recording:
            return
        if self.recorder.should_stop and self._epoch_values is None:
            return  # the epoch a rule stopped before any batch
        self._epoch_seconds = time.perf_counter() - self._epoch_started
        self._train_epoch_ended = True
        self._write_step()
        for watcher in self._watchers:
            watcher.epoch_ended()  # a scheduler stepping from now on changes the next epoch's rate
        if self.recorder.stop_requested:
            trainer.should_stop = True  # asked during this epoch: the fit ends with it

    def _write_epoch(self) -> None:
        if self._epoch_values is None or not self._train_epoch_ended:
            return  # no epoch, or one that did not reach its end
        values, self._epoch_values = self._epoch_values, None
        learning_rate = self._watchers[0].learning_rate if self._watchers else None
        self.recorder.epoch(self._epoch, values, learning_rate=learning_rate, seconds=self._epoch_seconds)

    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if not self._recording:
            return
        self._write_step()
        self._write_epoch()
        if self.recorder.steering.awaiting_checkpoint:
            self._save_on_request(trainer)  # asked at the last epoch's end
        for watcher in self._watchers:
            watcher.flush()
        self._close_watchers()
        self._record_early_stopping(trainer)
        self.recorder.end_training("finished")

    def _failed(self) -> None:
        if not self._recording or self.recorder.train_task is None:
            return
        self._write_step()
        self._write_epoch()
        self._close_watchers()
        status, error = status_for(self._exception) if self._exception is not None else ("failed", None)
        self.recorder.end_training(status if status != "finished" else "failed", error)

    def _close_watchers(self) -> None:
        for watcher in self._watchers:
            watcher.close()
        self._watchers = []

    def _record_early_stopping(self, trainer: Trainer) -> None:
        for callback in trainer.callbacks:
            # by class name: the standalone pytorch_lightning package has a class of its own
            if not any(cls.__name__ == "EarlyStopping" for cls in type(callback).__mro__):
                continue
            reason = getattr(callback, "stopping_reason", None)  # Lightning 2.5 and later
            stopped = reason.name != "NOT_STOPPED" if reason is not None else callback.stopped_epoch > 0
            if not stopped or callback.stopped_epoch < self._first_epoch:
                continue  # it did not stop this fit
            monitor = callback.monitor
            cause = f"EarlyStopping(monitor={monitor}, patience={callback.patience})"
            if reason is not None and reason.name != "PATIENCE_EXHAUSTED":
                cause += f": {reason.name.lower().replace('_', ' ')}"
            self.recorder.early_stopping(
                callback.stopped_epoch + 1, cause, monitor=monitor, best_value=callback.best_score,
                planned_epochs=trainer.max_epochs if trainer.max_epochs and trainer.max_epochs > 0 else None,
                epochs_run=self._epoch,
                seen=[(epoch, monitored(values, monitor)) for epoch, values in self.recorder.epochs_recorded.items()],
            )

    # ---- test and validate ------------------------------------------------------------------

    def on_test_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._evaluation_start()

    def on_test_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._eval_epoch_ended = True

    def on_test_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._evaluation_end()

    def on_validation_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.state.fn != TrainerFn.FITTING:
            self._evaluation_start()
        self._eval_epoch_ended = False

    def on_validation_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._eval_epoch_ended = True

    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.state.fn != TrainerFn.FITTING:
            self._evaluation_end()

    def _evaluation_start(self) -> None:
        self._eval_values, self._eval_epoch_ended = {}, False
        self._eval_started = time.perf_counter()

    def _evaluation_end(self) -> None:
        if not self._recording or not self._eval_values:
            return
        values, self._eval_values = self._eval_values, {}
        self.recorder.evaluation(values, seconds=time.perf_counter() - self._eval_started)

    # ---- what the logger hands over ---------------------------------------------------------

    def _hyperparameters_logged(self, params: Mapping[str, Any] | Namespace) -> None:
        if not self._recording:
            return
        values = hyperparameter_values(params)
        if self.recorder.train_task is not None and values != self._lightning_hyperparameters:
            warnings.warn("trainprov: hyperparameters logged during training are recorded with the next fit",
                          RuntimeWarning, stacklevel=3)
        self._lightning_hyperparameters = values

    def _metrics_logged(self, metrics: Mapping[str, float], step: int | None) -> None:
        trainer = self._trainer
        if trainer is None:
            if not self._warned_alone:
                self._warned_alone = True
                warnings.warn("trainprov: the Provenance logger records nothing without its callback: "
                              "pass Trainer(callbacks=[prov])", RuntimeWarning, stacklevel=3)
            return
        if not self._recording:
            return
        state = trainer.state  # read once: the trainer's properties cost calls, at every step
        stage, fn = state.stage, state.fn
        # identity first: Lightning's enums compare as text, in Python
        fitting = (stage is RunningStage.TRAINING and fn is TrainerFn.FITTING) or (
            stage == RunningStage.TRAINING and fn == TrainerFn.FITTING)
        if fitting:
            if not self._train_epoch_ended:
                if self.steps:
                    self._gather_step(metrics, step)
            elif self._epoch_values is not None:
                self._epoch_values.update(self._named("_epoch", metrics))
        elif stage == RunningStage.SANITY_CHECKING:
            return
        elif not self._eval_epoch_ended:
            return  # an evaluation step's values: not recorded
        elif fn == TrainerFn.FITTING:
            if self._epoch_values is not None:
                self._epoch_values.update(self._named("_epoch", metrics))
        elif fn in (TrainerFn.TESTING, TrainerFn.VALIDATING):
            self._eval_values.update(self._named("_epoch", metrics))

    def _gather_step(self, metrics: Mapping[str, float], step: int | None) -> None:
        # Lightning logs a step's values after its optimizer step; callbacks such as
        # LearningRateMonitor log theirs for the same step before it: one row per step
        if step is None:
            step = self._step if self._step is not None else self._steps_before_epoch
        if step != self._step:  # the step before is complete (written here, not by _write_step: a call less per step)
            previous, values = self._step, self._step_values
            self._step, self._step_values = step, {}
            if previous is not None:
                self.recorder.step(self._epoch, previous + 1 - self._steps_before_epoch, values, global_step=previous + 1)
        plan = self._renamed["_step"].get(tuple(metrics))  # known keys: renamed here, without calling _named
        if plan is not None:
            self._step_values.update(zip(plan[1], map(metrics.__getitem__, plan[0])))
        else:
            self._step_values.update(self._named("_step", metrics))
        watcher = self._watchers[0] if self._watchers else None
        if watcher is not None and watcher.steps + self._step_offset == step + 1:  # this step has run
            self._step_values["learning_rate"] = watcher.last_used if watcher.steps else watcher.learning_rate

    def _write_step(self) -> None:
        if self._step is None:
            return
        step, values = self._step, self._step_values
        self._step, self._step_values = None, {}
        self.recorder.step(self._epoch, step + 1 - self._steps_before_epoch, values, global_step=step + 1)

    def _named(self, suffix: str, metrics: Mapping[str, float]) -> dict[str, Any]:
        """Values under their names: Lightning's `epoch` counter dropped, `name_step` / `name_epoch` as `name`."""
        plans = self._renamed[suffix]
        plan = plans.get(tuple(metrics))
        if plan is None:
            forked = forked_names(self._trainer)
            pairs = [(key, key[: -len(suffix)] if key.endswith(suffix) and key[: -len(suffix)] not in metrics
                      and key[: -len(suffix)] in forked else key) for key in metrics]
            # Lightning adds its own 0-based epoch; ours is a column already
            pairs = [(key, column) for key, column in pairs if column != "epoch"]
            plan = plans[tuple(metrics)] = (tuple(key for key, _ in pairs), tuple(column for _, column in pairs))
        return dict(zip(plan[1], map(metrics.__getitem__, plan[0])))

    # ---- checkpoints --------------------------------------------------------------------------

    def _checkpoint_saved(self, callback: Any) -> None:
        # Lightning writes checkpoints on global rank zero (and tells loggers there only)
        if not self._recording or not self._rank_zero():
            return
        path = getattr(callback, "_last_checkpoint_saved", None) or getattr(callback, "last_model_path", None)
        if not path or not os.path.isfile(path):
            return
        monitor = getattr(callback, "monitor", None)
        value = getattr(callback, "best_k_models", {}).get(path)  # the score it was saved with
        if value is None and monitor and self._epoch_values:
            value = monitored(self._epoch_values, monitor)
        try:
            self.recorder.checkpoint(path, epoch=self._epoch, monitor=monitor, monitor_value=number(value))
        except CaptureError as exc:  # saved outside a training (on an exception, after the fit)
            warnings.warn(f"trainprov: checkpoint {path} not recorded: {exc}", RuntimeWarning, stacklevel=2)
