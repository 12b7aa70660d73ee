"""Hugging Face Transformers: one `TrainerCallback` records the provenance of `Trainer.train` and `evaluate`.

It translates the Trainer's events into calls on a `TrainingRecorder` and owns nothing else:
`TrainingArguments` and the model's config are the hyperparameters, every `on_log` is a row
of `step_metrics` (the Trainer's `state.log_history`, one row per entry), the values logged
at an epoch's last step make its row of `epoch_metrics`, evaluations outside training are
`test_results`, checkpoint weights are files, and the learning rate is watched by the
PyTorch integration's `LearningRateWatcher`. Nothing here talks to the Hugging Face Hub.
"""

from __future__ import annotations

import inspect
import os
import sys
import time
import warnings
from typing import Any, Iterable, Mapping

from transformers import TrainerCallback
from transformers.trainer_callback import CallbackHandler, EarlyStoppingCallback

from ..capture.run import Run
from ..capture.training import RecordsTraining, TrainingRecorder, number, training_dataflow
from ..spec import Dataflow
from .torch_support import LearningRateWatcher, model_layers, unwrap_optimizer
from .transformers_support import (checkpoint_folder, checkpoint_weights, schedule_config, split_of,
                                   trainer_hyperparameters, updates_per_epoch)

FRAMEWORK = "transformers"
# The Trainer's `epoch` is a float (1.5: half-way through the second epoch); the integer
# epoch (from 1) is the `epoch` column, the Trainer's value goes here.
EPOCH_PROGRESS = "epoch_progress"
_UNKNOWN = object()
__all__ = ["EPOCH_PROGRESS", "FRAMEWORK", "ProvenanceCallback", "checkpoint_weights", "schedule_config"]


def _training_loop_depth(hint: int = 0) -> int:
    """Where on the stack the Trainer's training loop runs (sys._getframe's depth here); 0 if it is not on it.

    0 means an evaluation after training, not during it. The depth `hint` is looked at first:
    logs during training come from the same depth every time.
    """
    try:
        if hint and sys._getframe(hint).f_code.co_name == "_inner_training_loop":
            return hint
    except ValueError:  # a shallower stack than last time
        pass
    frame, depth = sys._getframe(1), 1
    while frame is not None:
        if frame.f_code.co_name == "_inner_training_loop":
            return depth
        frame, depth = frame.f_back, depth + 1
    return 0


def _calling_handler() -> CallbackHandler | None:
    """The Trainer's CallbackHandler that is calling us: it knows the callbacks that run alongside ours."""
    frame = inspect.currentframe()
    while frame is not None:
        candidate = frame.f_locals.get("self")
        if isinstance(candidate, CallbackHandler):
            return candidate
        frame = frame.f_back
    return None


class ProvenanceCallback(RecordsTraining, TrainerCallback):
    """Records TrainingArguments, model config, every log, LR changes, checkpoints, early stopping and evaluations.

    Pass it to the Trainer (`Trainer(..., callbacks=[prov])`). One run spans every `train()`,
    `evaluate()` and `predict()` of the Trainer until `end()` (or the `with` block ends, or the
    process exits); `new_run_per_train=True` starts a run per `train()` instead.
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
        architecture: bool = True,
        checkpoints: bool = True,
        new_run_per_train: bool = False,
        record_agents: bool = True,
        group: str | None = None,
        parent: Run | str | None = None,
        tags: Mapping[str, Any] | None = None,
        rules: Any = None,
        profile: bool = False,
        steering: bool = True,
    ) -> None:
        self.recorder = TrainingRecorder(
            FRAMEWORK, store, dataflow=dataflow or training_dataflow(f"{FRAMEWORK}_training"), run=run, name=name,
            record_agents=record_agents, group=group, parent=parent, tags=tags, rules=rules,
            hyperparameters=hyperparameters, include=include, steering=steering,
        )
        self.architecture = architecture
        self.profile_data = profile
        self.record_checkpoints = checkpoints
        self.new_run_per_train = new_run_per_train
        self.watcher: LearningRateWatcher | None = None
        self._training = False
        self._handler: CallbackHandler | None = None
        self._updates_per_epoch: int | None = None
        self._epoch = 0  # the epoch in progress, from 1 (0 before the first)
        self._epoch_first_step = 0  # global steps done before the epoch in progress
        self._epoch_started = 0.0
        self._epoch_seconds: float | None = None
        self._epoch_end_step: int | None = None  # the global step at which the epoch in progress ended
        self._epoch_open = False
        self._logs_step: int | None = None
        self._logs_at_step: dict[str, Any] = {}  # every value logged at the latest global step
        self._splits: dict[tuple[str, ...], str | None] = {}  # a log's keys -> the evaluation it reports, if any
        self._loop_depth = 0  # where on the stack the Trainer's training loop was at the last log
        self._evaluations: list[tuple[int, int, dict[str, Any]]] = []  # (epoch, global step, eval logs)
        self._saved: dict[str, str] = {}  # checkpoint folder -> its last weight file recorded
        self._save_asked = False  # a steering request asked for a checkpoint: the Trainer saves at its next chance
        if checkpoints:
            self.recorder.steering.checkpointer = self._ask_to_save
        else:
            self.recorder.steering.no_checkpointer = (
                "this Trainer's checkpoints are not recorded (ProvenanceCallback(checkpoints=False)), so a checkpoint "
                "saved on request would not be either")

    # ---- the run ----------------------------------------------------------------------------

    def _release(self) -> None:
        self._stop_watching()
        self._training = False

    # ---- what the training was configured with --------------------------------------------

    def _hyperparameters(self, args: Any, state: Any, model: Any, optimizer: Any, scheduler: Any) -> dict[str, Any]:
        facts = trainer_hyperparameters(args, state, model, optimizer, scheduler, self._updates_per_epoch)
        return self.recorder.hyperparameters(facts)

    # ---- train ------------------------------------------------------------------------------

    def on_train_begin(self, args: Any, state: Any, control: Any, model: Any = None, optimizer: Any = None,
                       lr_scheduler: Any = None, train_dataloader: Any = None, **kwargs: Any) -> None:
        if not state.is_world_process_zero:
            return  # one process records a data-parallel training
        if self.new_run_per_train and self.recorder.run is not None:
            self.end()
            self.recorder.run = None
        self.recorder.start()
        optimizer = unwrap_optimizer(optimizer) if optimizer is not None else None
        self._training = True
        self._handler = _calling_handler()
        self._updates_per_epoch = updates_per_epoch(args, train_dataloader)
        # a resumed training starts after the epochs its checkpoint had done, as the Trainer does
        self._epoch = state.global_step // self._updates_per_epoch if self._updates_per_epoch else 0
        self._epoch_first_step = state.global_step
        self._epoch_open, self._epoch_end_step, self._logs_step = False, None, None
        self._logs_at_step, self._evaluations, self._saved = {}, [], {}
        if self.profile_data:
            for split, loader in (("train", train_dataloader), ("validation", kwargs.get("eval_dataloader"))):
                if getattr(loader, "dataset", None) is not None:
                    self.recorder.profile("data", loader.dataset, split)
        layers = model_layers(model)[1] if self.architecture and model is not None else []
        self.recorder.begin_training(self._hyperparameters(args, state, model, optimizer, lr_scheduler), layers)
        self._stop_watching()
        if optimizer is not None:
            monitor = self._monitor(args)
            self.watcher = LearningRateWatcher(optimizer, self.recorder, monitor=monitor)
            self.watcher.epochs_ended = self._epoch
            # requests apply before each optimizer step (the watcher's pre-hook); the Trainer's
            # schedule goes on from a steered rate
            self.watcher.steerables(self.recorder)

    def on_epoch_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if not self._training:
            return
        self._close_epoch()
        if self.recorder.should_stop:
            # a rule with action "stop" failed on the epoch just recorded; the Trainer checks
            # this after the next optimizer step (its first chance), and that epoch is not recorded
            control.should_training_stop = True
            return
        self._epoch += 1
        upe = self._updates_per_epoch
        self._epoch_first_step = (self._epoch - 1) * upe if upe else state.global_step
        self._epoch_started = time.perf_counter()
        self._epoch_open, self._epoch_end_step, self._epoch_seconds = True, None, None
        if self.watcher is not None:
            self.watcher.epochs_ended = self._epoch - 1
            self.watcher.step_in_epoch = state.global_step - self._epoch_first_step

    def on_epoch_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if not self._training:
            return
        # the training time of the epoch; its evaluation and checkpoint come after this event
        self._epoch_seconds = time.perf_counter() - self._epoch_started
        self._epoch_end_step = state.global_step
        if self.watcher is not None:
            self.watcher.epoch_ended()  # a rate set from now on (a plateau at this evaluation) is the next epoch's
        self._between_epochs(control)

    def _between_epochs(self, control: Any) -> None:
        """Apply steering requests after an epoch's last step (at its end, and after its evaluation).

        The Trainer checks should_training_stop only after a step or an epoch: a stop applied
        here ends the training after this epoch; a checkpoint asked for here is saved now.
        """
        self.recorder.apply_steering(self._epoch + 1)
        if self.recorder.stop_requested:
            control.should_training_stop = True
        if self._save_asked:
            control.should_save = True

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self._save_asked and self._training:
            control.should_save = True  # the Trainer saves checkpoint-N right after this event

    def _ask_to_save(self, epoch: int | None, step: int | None) -> None:
        """A checkpoint request: the Trainer saves at the next step's or epoch's end; on_save records it and that answers."""
        self._save_asked = True

    def on_log(self, args: Any, state: Any, control: Any, logs: Mapping[str, Any] | None = None, **kwargs: Any) -> None:
        if not self._training:
            return  # an evaluation after training: on_evaluate records it
        entry = self._entry(state, logs or {})
        keys = tuple(entry)
        split = self._splits.get(keys, _UNKNOWN)  # the evaluation a log reports, if any (by its keys: once)
        if split is _UNKNOWN:
            split = self._splits[keys] = split_of(entry)
        if split is not None:
            # an evaluation's log, or train()'s closing one (train_runtime, train_loss, total_flos):
            # from the training loop, unless the training raised before its end and this log is
            # a later evaluation's (a training step's log comes only from the loop)
            depth = _training_loop_depth(self._loop_depth)
            if not depth:
                self._training_failed()
                return
            self._loop_depth = depth
        summary = "train_runtime" in entry
        if summary:
            self._close_epoch()  # the summary is no epoch's value
        values = dict(entry)
        if "epoch" in values:
            values[EPOCH_PROGRESS] = values.pop("epoch")
        self.recorder.step(self._epoch, state.global_step - self._epoch_first_step, values, global_step=state.global_step)
        if self.recorder.stopped_by is not None:
            control.should_training_stop = True  # a rule failed (a stop request waits for the epoch's end)
        if summary:
            return
        if state.global_step != self._logs_step:
            self._logs_step, self._logs_at_step = state.global_step, {}
        self._logs_at_step.update(entry)  # with the Trainer's fractional epoch, left out where it is read
        if split is not None:
            self._evaluations.append((self._epoch, state.global_step, dict(entry)))

    @staticmethod
    def _entry(state: Any, logs: Mapping[str, Any]) -> Mapping[str, Any]:
        """The log as the Trainer put it in log_history (a callback before us may have popped a key from `logs`).

        Read, not changed: it may be `logs` itself, when no key is missing (the usual case, told by its length).
        """
        history = state.log_history
        last = history[-1] if history else None
        if last is None or len(last) == len(logs) + 1 or last.get("step") != state.global_step:
            return logs
        if all(k in last and (last[k] is v or last[k] == v) for k, v in logs.items()):
            entry = dict(last)
            entry.pop("step", None)
            return entry
        return logs

    def _close_epoch(self) -> None:
        """Record the epoch in progress once it has ended: the values logged at its last step."""
        if not self._epoch_open or self._epoch_end_step is None:
            return
        self._epoch_open = False
        values = {k: v for k, v in self._logs_at_step.items() if k != "epoch"} if self._logs_step == self._epoch_end_step else {}
        rate = self.watcher.learning_rate if self.watcher is not None else values.get("learning_rate")
        self.recorder.epoch(self._epoch, values, learning_rate=rate, seconds=self._epoch_seconds)

    def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if not self._training or not self.record_checkpoints:
            return
        self._save_asked = False  # this save answers any checkpoint request waiting
        folder = checkpoint_folder(args, state)
        files = checkpoint_weights(folder) if folder is not None else []
        if not files:
            warnings.warn(f"trainprov: no model weights found for checkpoint-{state.global_step} in {args.output_dir}",
                          RuntimeWarning, stacklevel=2)
            return
        monitor = self._monitor(args)
        value = None
        if monitor is not None and self._logs_step == state.global_step:
            value = self._logs_at_step.get(monitor)  # the checkpoint's model was evaluated at this step
        for path in files:
            self.recorder.checkpoint(path, epoch=self._epoch, monitor=monitor, monitor_value=value)
        self._saved[os.path.abspath(folder)] = files[-1]

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if not self._training:
            return
        self._close_epoch()
        self._record_early_stopping(args, state, control)
        best = state.best_model_checkpoint
        if args.load_best_model_at_end and best and os.path.abspath(best) in self._saved:
            # the Trainer loaded the best checkpoint back: later evaluations use it, not the last one
            self.recorder.checkpoint_loaded(self._saved[os.path.abspath(best)])
        if self.watcher is not None:
            self.watcher.flush()
        self._stop_watching()
        self._training = False
        self.recorder.end_training("finished")
        if self.new_run_per_train:
            self.recorder.end()

    def _training_failed(self) -> None:
        self._stop_watching()
        self._training = False
        self.recorder.end_training("failed", "the training did not reach its end")

    def _stop_watching(self) -> None:
        if self.watcher is not None:
            self.watcher.close()
            self.watcher = None

    @staticmethod
    def _monitor(args: Any) -> str | None:
        """The metric that picks the best model and drives plateau schedules, prefixed as the Trainer does."""
        metric = getattr(args, "metric_for_best_model", None)
        if not metric:
            return None
        return metric if metric.startswith("eval_") else f"eval_{metric}"

    def _record_early_stopping(self, args: Any, state: Any, control: Any) -> None:
        callbacks = self._handler.callbacks if self._handler is not None else []
        stopper = next((c for c in callbacks if isinstance(c, EarlyStoppingCallback)), None)
        if stopper is None or not control.should_training_stop or state.global_step >= state.max_steps:
            return
        if stopper.early_stopping_patience_counter < stopper.early_stopping_patience:
            return  # something else stopped the training
        monitor = self._monitor(args)
        seen = [(epoch, entry[monitor]) for epoch, _, entry in self._evaluations if monitor in entry]
        self.recorder.early_stopping(
            self._epoch,
            f"EarlyStoppingCallback(monitor={monitor}, patience={stopper.early_stopping_patience}, "
            f"threshold={stopper.early_stopping_threshold})",
            step=state.global_step - self._epoch_first_step, monitor=monitor, planned_epochs=state.num_train_epochs,
            epochs_run=state.epoch,  # a fraction when evaluations are every N steps
            monitor_value=seen[-1][1] if seen else None, best_value=state.best_metric, seen=seen,
        )

    # ---- evaluate and predict ---------------------------------------------------------------

    def on_evaluate(self, args: Any, state: Any, control: Any, metrics: Mapping[str, Any] | None = None,
                    **kwargs: Any) -> None:
        if self._training and _training_loop_depth():
            if self._epoch_open and self._epoch_end_step == state.global_step:
                self._between_epochs(control)  # an epoch-end evaluation: requests that came during it apply now
            return  # an evaluation during training: its values came with on_log
        self._test_results(args, metrics or {})

    def on_predict(self, args: Any, state: Any, control: Any, metrics: Mapping[str, Any] | None = None,
                   **kwargs: Any) -> None:
        if self._training and _training_loop_depth():
            return
        self._test_results(args, metrics or {})

    def _test_results(self, args: Any, metrics: Mapping[str, Any]) -> None:
        if getattr(args, "process_index", 0) != 0:
            return
        if self._training:  # the training raised before its end
            self._training_failed()
        split = split_of(metrics)
        values: dict[str, Any] = {}
        seconds = None
        for key, value in metrics.items():
            name = key[len(split) + 1:] if split and key.startswith(split + "_") else key
            if name == "runtime":
                seconds = number(value)
            else:
                values[EPOCH_PROGRESS if name == "epoch" else name] = value
        self.recorder.start()
        self.recorder.add_attributes("test_results", {"split": "str"})  # a str would otherwise go to `extra`
        values["split"] = split
        self.recorder.evaluation(values, seconds=seconds)
