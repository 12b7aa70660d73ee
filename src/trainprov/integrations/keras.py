"""Keras 3: one callback records the provenance of `model.fit` and `model.evaluate`.

It translates Keras's events into calls on a `TrainingRecorder` and owns nothing else.
Backend-agnostic (tested with KERAS_BACKEND=torch).
"""

from __future__ import annotations

import inspect
import os
import time
from typing import Any, Iterable, Mapping

import keras

from ..capture.run import FileRef, Run
from ..capture.training import RecordsTraining, TrainingRecorder
from ..spec import Dataflow
from .keras_support import (accelerated, batch_size_of, layer_facts, model_hyperparameters,
                            schedule_changes, to_float)

#: where a checkpoint asked for by `trainprov steer --checkpoint` goes when no ModelCheckpoint says (under the
#: working directory, one folder per run)
STEERING_CHECKPOINTS = "trainprov-checkpoints"
_LR_CALLBACK_HOOKS = ("on_epoch_begin", "on_epoch_end", "on_train_batch_begin", "on_train_batch_end", "on_batch_begin", "on_batch_end")


def _calling_list() -> keras.callbacks.CallbackList | None:
    """The CallbackList that is calling us: it knows the callbacks Keras runs alongside ours."""
    frame = inspect.currentframe()
    while frame is not None:
        code = frame.f_code
        first = frame.f_locals.get(code.co_varnames[0]) if code.co_argcount else None
        if isinstance(first, keras.callbacks.CallbackList):
            return first
        frame = frame.f_back
    return None


def _changer() -> tuple[keras.callbacks.Callback | None, str | None, dict]:
    """The callback (and its hook and locals) on the stack that is changing the learning rate."""
    frame = inspect.currentframe()
    while frame is not None:
        code = frame.f_code
        first = frame.f_locals.get(code.co_varnames[0]) if code.co_argcount else None
        if isinstance(first, keras.callbacks.Callback) and not isinstance(
            first, (keras.callbacks.CallbackList, ProvenanceCallback)
        ):
            hook = frame
            while hook is not None and hook.f_code.co_name not in _LR_CALLBACK_HOOKS:
                hook = hook.f_back
            name = hook.f_code.co_name if hook is not None else None
            return first, name, dict(hook.f_locals) if hook is not None else {}
        frame = frame.f_back
    return None, None, {}


class ProvenanceCallback(RecordsTraining, keras.callbacks.Callback):
    """Records hyperparameters, architecture, epochs (and steps), adaptations, checkpoints and evaluations.

    Pass it to `fit` (and to `evaluate` for test results). One run spans every `fit` and
    `evaluate` this callback sees until `end()` (or the `with` block ends, or the process
    exits); `new_run_per_fit=True` starts a run per `fit` instead.
    """

    @property
    def async_safe(self) -> bool:  # type: ignore[override]
        """Let Keras run batch hooks on its callback thread only where that pays: on an accelerator.

        The hook only queues rows (thread-safe). On a GPU, turning each step's logs into
        numbers on the training thread would wait for the device every step; on a CPU,
        handing every step to a thread pool costs more than the conversion it saves.
        """
        return accelerated()

    def __init__(
        self,
        store: str | os.PathLike | None = None,
        *,
        name: str | None = None,
        run: Run | None = None,
        dataflow: Dataflow | None = None,
        hyperparameters: Mapping[str, Any] | None = None,
        hyperparameters_from: tuple[Any, Iterable[str]] | None = None,
        include: Iterable[str] | None = None,
        steps: bool | int = False,
        architecture: bool = True,
        new_run_per_fit: bool = False,
        record_agents: bool = True,
        group: str | None = None,
        parent: Run | str | None = None,
        tags: Mapping[str, Any] | None = None,
        rules: Any = None,
        steering: bool = True,
    ) -> None:
        super().__init__()
        self.recorder = TrainingRecorder(
            "keras", store, dataflow=dataflow, run=run, name=name, record_agents=record_agents,
            group=group, parent=parent, tags=tags, rules=rules, hyperparameters=hyperparameters, include=include,
            steering=steering,
        )
        self.hyperparameters_from = hyperparameters_from
        self.step_every = int(steps) if steps else 0
        self.architecture = architecture
        self.new_run_per_fit = new_run_per_fit
        self._in_fit = False
        self._epoch = 0
        self._fit_list: keras.callbacks.CallbackList | None = None
        self._others: list[keras.callbacks.Callback] = []
        self._lr_variable: Any = None
        self._lr_assign: Any = None
        self._lr_changes: list[tuple[int, str | None, float, float]] = []
        self._epochs_done = 0
        self._steps_done = 0
        self._pending_checkpoints: list[tuple[int, str, str | None, Any, float]] = []
        self._recorded_files: dict[str, int] = {}  # path -> modification time when recorded
        self._steering_lr = False  # True while a steering request sets the rate: recorded as steering, not "manual"
        self.recorder.steerable("learning_rate", self._learning_rate, self._steer_learning_rate, low=0.0)
        self.recorder.steering.checkpointer = self._save_for_request

    # ---- the run ----------------------------------------------------------------------------

    def checkpoint(self, path: str | os.PathLike, epoch: int | None = None) -> FileRef:
        """Record a model file you saved yourself during training."""
        return self.recorder.checkpoint(path, epoch=epoch if epoch is not None else self._epochs_done)

    # ---- what the training was configured with --------------------------------------------

    def _optimizer(self) -> Any:
        opt = self.model.optimizer
        return getattr(opt, "inner_optimizer", opt)  # the LossScaleOptimizer wraps the real one

    def _schedule(self) -> Any:
        lr = getattr(self._optimizer(), "_learning_rate", None)
        return lr if isinstance(lr, keras.optimizers.schedules.LearningRateSchedule) else None

    def _hyperparameters(self, batch_size: int | None) -> dict[str, Any]:
        facts = model_hyperparameters(self.model, self._optimizer(), self._schedule(), self.params, batch_size)
        chosen = {}
        if self.hyperparameters_from is not None:
            source, names = self.hyperparameters_from
            chosen = {attr: source[attr] if isinstance(source, Mapping) else getattr(source, attr) for attr in names}
        return self.recorder.hyperparameters(facts, chosen=chosen)

    # ---- fit --------------------------------------------------------------------------------

    def on_train_begin(self, logs: Mapping[str, Any] | None = None) -> None:
        if self.new_run_per_fit and self.recorder.run is not None:
            self.recorder.end()
            self.recorder.run = None
        self.recorder.start()
        self._in_fit = True
        self._epoch = 0
        self._fit_list = _calling_list()
        self._others = list(self._fit_list.callbacks) if self._fit_list is not None else []
        self._hook_learning_rate()
        self._began = False
        self._wrap_first_step()

    def _wrap_first_step(self) -> None:
        # Keras does not tell the batch size; the first batch does. Unwrapped after one call.
        self._unwrap_first_step()  # left over if an earlier fit failed before its first step
        model = self.model
        original = model.train_step

        def first_step(data: Any) -> Any:
            self._unwrap_first_step()
            self._begin(batch_size_of(data))
            return original(data)

        model.train_step = first_step
        self._first_step = first_step

    def _unwrap_first_step(self) -> None:
        wrapper = getattr(self, "_first_step", None)
        if wrapper is not None and self.model is not None and self.model.__dict__.get("train_step") is wrapper:
            del self.model.train_step
        self._first_step = None

    def _begin(self, batch_size: int | None) -> None:
        if self._began:
            return
        self._began = True
        layers = layer_facts(self.model) if self.architecture else []
        self.recorder.begin_training(self._hyperparameters(batch_size), layers)

    def _iterations(self) -> int:
        return int(to_float(self._optimizer().iterations))

    def on_epoch_begin(self, epoch: int, logs: Mapping[str, Any] | None = None) -> None:
        self._epoch = epoch
        self._iterations_at_epoch = self._iterations()
        self._epoch_started = time.perf_counter()
        self._epoch_started_wall = time.time()
        self._hook_learning_rate()
        self._check_checkpoints()

    def on_train_batch_begin(self, batch: int, logs: Mapping[str, Any] | None = None) -> None:
        # A step boundary on the training thread (batch-end hooks may run on Keras's callback
        # thread, alongside the next step): steering requests apply to the step about to run.
        if self.recorder.steering.pending and self._began:
            self.recorder.apply_steering(self._epoch + 1, batch + 1)

    def on_train_batch_end(self, batch: int, logs: Mapping[str, Any] | None = None) -> None:
        # may run on Keras's callback thread (async_safe): it only reads and queues
        if not self._began:  # a train function built before our wrapper (JAX, TensorFlow)
            self._begin(None)
        if self.step_every and (batch + 1) % self.step_every == 0:
            self.recorder.step(self._epoch + 1, batch + 1, logs or {}, global_step=self._steps_done + batch + 1)
            if self.recorder.stopped_by is not None:  # a step rule failed: stop now (a stop request waits for the epoch's end)
                self.model.stop_training = True

    def on_epoch_end(self, epoch: int, logs: Mapping[str, Any] | None = None) -> None:
        logs = dict(logs or {})
        self._begin(None)  # a compiled train step never called our wrapper
        seconds = time.perf_counter() - self._epoch_started
        iterations = self._iterations()
        self._record_schedule_changes(epoch, self._iterations_at_epoch, iterations)
        self._steps_done += iterations - self._iterations_at_epoch
        self._epochs_done = epoch + 1
        self.recorder.epoch(epoch + 1, logs, learning_rate=self._epoch_learning_rate(epoch), seconds=seconds)
        if self.recorder.should_stop:
            # a rule with action "stop" failed, or a stop request came (recorder.epoch applied it):
            # Keras ends the fit after this epoch
            self.model.stop_training = True
        for callback in self._others:
            if isinstance(callback, keras.callbacks.ModelCheckpoint):
                try:
                    path = callback._get_file_path(epoch, None, logs)
                except Exception:  # a Keras without this helper: such files are recorded by cb.checkpoint()
                    continue
                monitor = getattr(callback, "monitor", None)
                self._pending_checkpoints.append((epoch + 1, path, monitor, logs.get(monitor), self._epoch_started_wall))
        self._check_checkpoints()

    def _check_checkpoints(self) -> None:
        # ModelCheckpoint may run after us in the list: its file appears later, so look again.
        waiting = []
        for epoch, path, monitor, value, started in self._pending_checkpoints:
            try:
                modified = os.stat(path).st_mtime_ns
            except OSError:
                modified = None
            # written during that epoch (file times come from a coarse clock: a little slack),
            # and not the file we already recorded (save_best_only leaves it untouched)
            if modified is not None and modified >= (started - 0.05) * 1e9 and self._recorded_files.get(path) != modified:
                self.recorder.checkpoint(path, epoch=epoch, monitor=monitor, monitor_value=value)
                self._recorded_files[path] = modified
            elif epoch == self._epochs_done:
                waiting.append((epoch, path, monitor, value, started))
        self._pending_checkpoints = waiting

    def on_train_end(self, logs: Mapping[str, Any] | None = None) -> None:
        self._unwrap_first_step()
        self._epoch = self._epochs_done
        self._check_checkpoints()
        self._pending_checkpoints = []
        for callback in self._others:
            if isinstance(callback, keras.callbacks.EarlyStopping) and callback.stopped_epoch > 0:
                self.recorder.early_stopping(
                    callback.stopped_epoch + 1, f"EarlyStopping(monitor={callback.monitor}, patience={callback.patience})",
                    monitor=callback.monitor, planned_epochs=self.params.get("epochs"),
                    best_epoch=callback.best_epoch + 1, best_value=callback.best,
                )
        self._in_fit = False
        self.recorder.end_training("finished")
        if self.new_run_per_fit:
            self._release()
            self.recorder.end()
        # otherwise the learning rate stays watched: a change by hand before the next fit counts

    # ---- evaluate ---------------------------------------------------------------------------

    def on_test_begin(self, logs: Mapping[str, Any] | None = None) -> None:
        self._test_started = time.perf_counter()

    def on_test_end(self, logs: Mapping[str, Any] | None = None) -> None:
        if self._in_fit and _calling_list() is self._fit_list:
            return  # fit's own validation: its values are in the epoch's val_ metrics
        if self._in_fit:  # the fit raised before its end; this is a standalone evaluate
            self._in_fit = False
            self.recorder.end_training("failed", "the training did not reach its end")
        seconds = time.perf_counter() - getattr(self, "_test_started", time.perf_counter())
        self.recorder.evaluation(dict(logs or {}), seconds=seconds)

    # ---- learning rate ----------------------------------------------------------------------

    def _hook_learning_rate(self) -> None:
        """Watch the optimizer's learning-rate variable: every assignment that changes it is an adaptation."""
        variable = getattr(self._optimizer(), "_learning_rate", None)
        if variable is self._lr_variable or not hasattr(variable, "assign"):
            return
        self._release()
        original = variable.assign

        def assign(value: Any, *args: Any, **kwargs: Any) -> Any:
            old = to_float(variable.value)
            result = original(value, *args, **kwargs)
            new = to_float(variable.value)
            if new != old and not self._steering_lr:
                self._learning_rate_changed(old, new)
            return result

        variable.assign = assign
        self._lr_variable, self._lr_assign = variable, original

    def _release(self) -> None:
        if self._lr_variable is not None:
            try:
                del self._lr_variable.assign  # back to the class's own method
            except AttributeError:
                pass
            self._lr_variable = self._lr_assign = None

    def _learning_rate_changed(self, old: float, new: float) -> None:
        callback, hook, local = _changer()
        cause = type(callback).__name__ if callback is not None else "manual"
        epoch = local.get("epoch") if isinstance(local.get("epoch"), int) else None
        if hook == "on_epoch_begin" and epoch is not None:
            first_epoch = epoch + 1  # takes effect in this epoch
        elif hook == "on_epoch_end" and epoch is not None:
            first_epoch = epoch + 2  # takes effect from the next epoch
        else:
            first_epoch = (self._epoch + 1) if self._in_fit else self._epochs_done + 1
        monitor = getattr(callback, "monitor", None)
        logs = local.get("logs") if isinstance(local.get("logs"), Mapping) else {}
        self._lr_changes.append((first_epoch, hook, old, new))
        self.recorder.adaptation(
            first_epoch, "learning_rate", cause, parameter="learning_rate", old_value=old, new_value=new,
            monitor=monitor, monitor_value=logs.get(monitor) if monitor else None,
        )

    # ---- steering ---------------------------------------------------------------------------

    def _learning_rate(self) -> float:
        """The optimizer's current learning rate (a schedule's at the current iteration)."""
        return to_float(self._optimizer().learning_rate)

    def _steer_learning_rate(self, value: float) -> None:
        """Set the optimizer's learning-rate variable for a steering request (recorded as steering, not as a change by hand)."""
        optimizer = self._optimizer()
        variable = getattr(optimizer, "_learning_rate", None)
        if not isinstance(variable, keras.Variable):
            kind = (f"{type(variable).__name__} schedule" if isinstance(variable, keras.optimizers.schedules.LearningRateSchedule)
                    else "learning-rate function")
            raise TypeError(f"{type(optimizer).__name__}'s learning rate is computed by its {kind} at every step, so it "
                            "cannot be set; compile with a float learning rate to steer it (or register a value your "
                            "schedule reads with prov.steerable)")
        self._steering_lr = True
        try:
            variable.assign(value)
        finally:
            self._steering_lr = False

    def _checkpoint_folder(self) -> str:
        """Where a requested checkpoint goes: next to a ModelCheckpoint's files, else trainprov-checkpoints/<run id>."""
        for callback in self._others:
            if isinstance(callback, keras.callbacks.ModelCheckpoint):
                folder = os.path.dirname(os.fspath(callback.filepath))
                if "{" not in folder:  # not a folder named by epoch or metric
                    return folder or os.curdir
        return os.path.join(STEERING_CHECKPOINTS, self.recorder.start().id)

    def _save_for_request(self, epoch: int | None, step: int | None) -> FileRef:
        """Save the model now through Keras (`model.save`, a .keras file) and record it: it answers the request."""
        folder = self._checkpoint_folder()
        os.makedirs(folder, exist_ok=True)
        path = os.path.join(folder, f"steering-checkpoint-{self._iterations()}.keras")  # named by optimizer steps done
        self.model.save(path)
        return self.recorder.checkpoint(path, epoch=self._epochs_done)

    def _epoch_learning_rate(self, epoch: int) -> float:
        """The learning rate the epoch's last step used."""
        schedule = self._schedule()
        if schedule is not None:
            return to_float(schedule(max(0, int(to_float(self._optimizer().iterations)) - 1)))
        # a callback before us may already have lowered it for the next epoch
        for first_epoch, hook, old, _new in self._lr_changes:
            if first_epoch == epoch + 2 and hook == "on_epoch_end":
                return old
        return to_float(self._optimizer().learning_rate)

    def _record_schedule_changes(self, epoch: int, first: int, end: int) -> None:
        """Discrete schedules (piecewise constant, staircase) change the rate at steps: find them.

        The step with iteration count i trains with schedule(i); the epoch ran i = first .. end - 1.
        """
        schedule = self._schedule()
        if schedule is None or end <= first:
            return
        changes = schedule_changes(schedule, first, end)
        if changes is None:
            return  # a continuous decay: its config is a hyperparameter, its rates are in epoch_metrics
        for i, old, new in changes:
            self.recorder.adaptation(
                epoch + 1, "learning_rate", f"{type(schedule).__name__} schedule", parameter="learning_rate",
                old_value=old, new_value=new, step=i - first + 1,
            )
