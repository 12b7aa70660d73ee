"""Plain PyTorch: a few added lines in a hand-written loop record its provenance.

`Tracker` records hyperparameters (the optimizer's groups and defaults), the architecture
(one row per leaf module), the values the loop reports per epoch and per step, checkpoints
saved through it (path, size, SHA-256) and evaluations. `LearningRateWatcher` detects every
change of a learning rate, by any `torch.optim.lr_scheduler` or by hand; the Lightning and
Transformers integrations use it and the other helpers here too.
"""

from __future__ import annotations

import gc
import sys
import numbers
import os
import time
import warnings
import weakref
from typing import Any, Callable, Mapping

import torch
from torch.optim import lr_scheduler as schedulers

from ..capture.run import Element, FileRef, Run, new_run_id
from ..capture.training import RecordsTraining, TrainingRecorder, _number
from ..capture.validation import TrainingStopped
from ..errors import SpecError
from ..spec import Dataflow

# Schedules that move the rate a little at (nearly) every step or epoch: their settings are
# the hyperparameter `lr_schedule` and their rates are in the metrics, as with Keras's
# continuous schedules. Any other change (a step schedule, a plateau, by hand) is an adaptation.
CONTINUOUS_SCHEDULES = (
    schedulers.LambdaLR,
    schedulers.MultiplicativeLR,
    schedulers.ExponentialLR,
    schedulers.CosineAnnealingLR,
    schedulers.CosineAnnealingWarmRestarts,
    schedulers.CyclicLR,
    schedulers.OneCycleLR,
    schedulers.LinearLR,
    schedulers.PolynomialLR,
)
_SCHEDULER_STATE = ("last_epoch", "_step_count", "_last_lr", "_get_lr_called_within_step", "verbose",
                    "_is_initial", "_initial_lr", "optimizer", "best", "num_bad_epochs", "cooldown_counter")


def _jsonable(value: Any) -> Any:
    """A value as JSON can hold it: tensors as numbers, tuples as lists, the rest as text."""
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, torch.Tensor):
        return value.item() if value.numel() == 1 else value.tolist()
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real):
        return float(value)
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    return repr(value)


def unwrap_optimizer(optimizer: Any) -> torch.optim.Optimizer:
    """The torch optimizer inside a wrapper (Lightning's LightningOptimizer, accelerate's AcceleratedOptimizer)."""
    # wrappers may themselves subclass Optimizer (AcceleratedOptimizer): go down to the innermost
    for _ in range(5):
        inner = getattr(optimizer, "optimizer", None)
        if inner is None or inner is optimizer or not isinstance(inner, torch.optim.Optimizer):
            break
        optimizer = inner
    return optimizer


def optimizer_hyperparameters(optimizer: Any) -> dict[str, Any]:
    """The optimizer's class, its first group's learning rate, and every group's settings as JSON."""
    optimizer = unwrap_optimizer(optimizer)
    groups = [
        {**{k: _jsonable(v) for k, v in group.items() if k != "params"}, "params": sum(p.numel() for p in group["params"])}
        for group in optimizer.param_groups
    ]
    first = optimizer.param_groups[0] if optimizer.param_groups else {}
    # a scheduler may already have moved lr; `initial_lr` is what the optimizer was given
    lr = _number(first.get("initial_lr", first.get("lr")))
    return {
        "optimizer": type(optimizer).__name__,
        "learning_rate": lr,
        "optimizer_config": {"defaults": _jsonable(optimizer.defaults), "param_groups": groups},
    }


def scheduler_config(scheduler: Any) -> dict[str, Any] | None:
    """A learning-rate scheduler's settings (its class and the state that defines it)."""
    if scheduler is None:
        return None
    try:
        state = scheduler.state_dict()
    except Exception:  # a scheduler without state: its class is what we know
        state = {}
    settings = {k: _jsonable(v) for k, v in state.items() if k not in _SCHEDULER_STATE and not k.startswith("_")}
    if isinstance(scheduler, schedulers.LambdaLR):  # the functions themselves do not serialize
        settings["lr_lambdas"] = [getattr(f, "__qualname__", repr(f)) for f in scheduler.lr_lambdas]
    return {"class": type(scheduler).__name__, **settings}


def _leaf_modules(model: torch.nn.Module) -> list[tuple[str, torch.nn.Module]]:
    """Modules with no children, and containers that hold parameters of their own."""
    out = []
    for name, module in model.named_modules():
        has_children = next(module.children(), None) is not None
        if not has_children or next(module.parameters(recurse=False), None) is not None:
            out.append((name or type(module).__name__, module))
    return out


def model_layers(model: torch.nn.Module) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """(n_layers and parameter counts for the hyperparameters, one `layers` row per leaf module)."""
    rows = []
    for index, (name, module) in enumerate(_leaf_modules(model), 1):
        params = list(module.parameters(recurse=False))
        kernel = getattr(module, "kernel_size", None)
        stride = getattr(module, "stride", None)
        rate = getattr(module, "p", None) if isinstance(module, torch.nn.modules.dropout._DropoutNd) else getattr(module, "dropout", None)
        is_activation = type(module).__module__ == "torch.nn.modules.activation"
        rows.append(
            {
                "layer_index": index,
                "name": name,
                "class_name": type(module).__name__,
                "params": sum(p.numel() for p in params),
                "trainable_params": sum(p.numel() for p in params if p.requires_grad),
                "activation": type(module).__name__.lower() if is_activation else None,
                "units": getattr(module, "out_features", None) or getattr(module, "hidden_size", None),
                "filters": getattr(module, "out_channels", None),
                "kernel_size": None if kernel is None else str(kernel),
                "strides": None if stride is None else str(stride),
                "dropout_rate": float(rate) if isinstance(rate, (int, float)) and not isinstance(rate, bool) else None,
            }
        )
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return {"n_layers": len(rows), "trainable_params": trainable, "non_trainable_params": total - trainable}, rows


class _WatchedGroup(dict):
    """A parameter group that tells its watcher when its learning rate is set."""

    __slots__ = ("watcher", "index")

    def __setitem__(self, key: str, value: Any) -> None:
        if key == "lr":
            old = dict.get(self, "lr")
            dict.__setitem__(self, key, value)
            watcher = self.watcher()
            if watcher is not None:
                watcher._set(self.index, old, value)
        else:
            dict.__setitem__(self, key, value)

    def __reduce__(self) -> tuple:
        return dict, (dict(self),)  # a pickled optimizer holds plain groups, not our watcher


def _is_scheduler(thing: Any, optimizer: torch.optim.Optimizer) -> bool:
    """A torch LR scheduler, or another object that schedules this optimizer (the Trainer's GreedyLR)."""
    if isinstance(thing, schedulers.LRScheduler):
        return True
    if isinstance(thing, torch.optim.Optimizer) or not callable(getattr(thing, "step", None)):
        return False
    theirs = getattr(thing, "optimizer", None)
    return theirs is not None and unwrap_optimizer(theirs) is optimizer


def _setter(optimizer: torch.optim.Optimizer, frame: Any) -> tuple[Any, float | None, Any]:
    """The scheduler on the stack from `frame` up that is setting a rate, the metric it was given, and its frame."""
    found, metric, found_frame = None, None, None
    classes: set[str] = set()
    while frame is not None:
        code = frame.f_code
        # f_locals builds a dict of every local: read it only for methods (a scheduler is
        # `self`), and above the scheduler only for methods of its classes (a training
        # loop's frame has hundreds of locals)
        if not code.co_argcount or code.co_varnames[0] != "self":
            if found is not None:
                break
            frame = frame.f_back
            continue
        qualname = getattr(code, "co_qualname", None)  # Python 3.11+
        if found is not None and qualname is not None and qualname.split(".")[0] not in classes:
            break
        first = frame.f_locals.get("self")
        if (first is found if found is not None else _is_scheduler(first, optimizer)):
            if found is None:
                classes = {cls.__name__ for cls in type(first).__mro__}
            found, found_frame = first, found_frame or frame
            if metric is None and "metrics" in frame.f_locals:  # ReduceLROnPlateau.step(metrics)
                metric = _number(frame.f_locals["metrics"])
        elif found is not None:
            break  # the outermost frame of the innermost scheduler: SequentialLR's children win
        frame = frame.f_back
    return found, metric, found_frame


class LearningRateWatcher:
    """Detects every learning-rate change of an optimizer and records the discrete ones as adaptations.

    A change is recorded at the first optimizer step that uses it: epoch = epochs ended + 1,
    step = that step within the epoch. Its cause is the scheduler that set it (its class
    name) or "manual". Changes by different causes before one step (by hand, then a
    scheduler) are one row each, in the order they were made, as with Keras; repeated
    settings by the same cause are one change, from its first old value.
    """

    def __init__(self, optimizer: Any, recorder: TrainingRecorder, *, monitor: str | None = None,
                 before_step: Callable[[], None] | None = None) -> None:
        self.optimizer = unwrap_optimizer(optimizer)
        self.recorder = recorder
        self.monitor = monitor
        self.before_step = before_step
        self.steps = 0
        self.step_in_epoch = 0
        self.epochs_ended = 0
        self.schedulers: list[Any] = []  # every scheduler seen setting a rate, in order
        # group -> its changes not yet used by a step, in order: [old, new, cause, monitor value, setter]
        self._pending: dict[int, list[list[Any]]] = {}
        self._last_setter: tuple[Any, float | None, Any] | None = None  # (scheduler, metric, its frame)
        self._known = [self._lr(g) for g in self.optimizer.param_groups]
        self._used = self._known[0] if self._known else None
        self._watch_groups()
        self._handle = self.optimizer.register_step_pre_hook(self._before_step)

    @property
    def learning_rate(self) -> float | None:
        """The first group's rate that the last optimizer step used (the current one before any step)."""
        return self._used if self.steps else self._lr(self.optimizer.param_groups[0])

    @staticmethod
    def _lr(group: Mapping[str, Any]) -> float | None:
        return _number(group.get("lr"))

    def _watch_groups(self) -> None:
        groups = self.optimizer.param_groups
        me = weakref.ref(self)
        for index, group in enumerate(groups):
            if type(group) is not _WatchedGroup or group.watcher() is not self:
                watched = _WatchedGroup(group)
                watched.watcher, watched.index = me, index
                groups[index] = watched  # in place: schedulers read this same list

    def _setter(self) -> tuple[Any, float | None]:
        """Who is setting a rate: a scheduler sets every group's in one call, so the walk is done once."""
        frame = sys._getframe(3)  # the code that set the item (above _setter, _set, __setitem__)
        cached = self._last_setter
        if cached is not None:
            # the same scheduler frame, still on the stack (held, so it is no other frame at its address)
            probe = frame
            for _ in range(4):
                if probe is None:
                    break
                if probe is cached[2]:
                    return cached[0], cached[1]
                probe = probe.f_back
        scheduler, metric, found = _setter(self.optimizer, frame)
        self._last_setter = (scheduler, metric, found) if found is not None else None
        return scheduler, metric

    def _set(self, index: int, old: Any, new: Any) -> None:
        scheduler, metric = self._setter()
        if scheduler is not None and all(s is not scheduler for s in self.schedulers):
            self.schedulers.append(scheduler)
        old, new = _number(old), _number(new)
        if old == new:
            return  # schedulers set every rate at their start, changed or not
        if isinstance(scheduler, CONTINUOUS_SCHEDULES):
            self._known[index] = new
            return
        cause = type(scheduler).__name__ if scheduler is not None else "manual"
        changes = self._pending.setdefault(index, [])
        if changes and changes[-1][4] is scheduler:
            # the same setter again (a scheduler's own resets, a loop setting twice): one change
            changes[-1][1:4] = [new, cause, metric]
        else:
            changes.append([old, new, cause, metric, scheduler])
        self._known[index] = new

    def _before_step(self, optimizer: Any, args: Any, kwargs: Any) -> None:
        self._last_setter = None  # let go of the frame (and its locals)
        if self.before_step is not None:
            self.before_step()
        groups = self.optimizer.param_groups
        if len(groups) != len(self._known) or any(type(g) is not _WatchedGroup for g in groups):
            self._watch_groups()  # add_param_group or load_state_dict made new groups
            self._known += [self._lr(g) for g in groups[len(self._known):]]
        for index, group in enumerate(groups):
            lr = self._lr(group)
            if lr != self._known[index]:
                # changed without setting the item (a tensor filled in place, update()): cause unknown
                self._pending.setdefault(index, []).append([self._known[index], lr, "unknown", None, None])
                self._known[index] = lr
        self.step_in_epoch += 1
        self.steps += 1
        if self._pending:
            self._record(self.epochs_ended + 1, self.step_in_epoch)
        self._used = self._lr(groups[0])

    def _record(self, epoch: int, step: int | None) -> None:
        pending, self._pending = self._pending, {}
        for index, changes in sorted(pending.items()):
            for old, new, cause, metric, _by in changes:
                if old == new:
                    continue  # set and set back by the same cause
                self.recorder.adaptation(
                    epoch, "learning_rate", cause, step=step,
                    parameter="learning_rate" if index == 0 else f"learning_rate_group{index}",
                    old_value=old, new_value=new, monitor=self.monitor if metric is not None else None,
                    monitor_value=metric,
                )

    def find_schedulers(self) -> list[Any]:
        """The schedulers of this optimizer: those seen setting a rate, and any made before the watcher."""
        found = list(self.schedulers)
        # one scan of the objects that refer to the optimizer (tens of ms, once per training)
        for referrer in gc.get_referrers(self.optimizer):
            if isinstance(referrer, schedulers.LRScheduler) and all(s is not referrer for s in found):
                found.append(referrer)
        return found

    def epoch_ended(self) -> None:
        """The loop finished an epoch: changes from now on take effect in the next one."""
        self.epochs_ended += 1
        self.step_in_epoch = 0

    def flush(self) -> None:
        """Record changes no step has used yet (made after the last step of the training)."""
        if self._pending:
            self._record(self.epochs_ended + 1, None)

    def close(self) -> None:
        """Stop watching: the optimizer's groups become plain dicts again."""
        self._handle.remove()
        groups = self.optimizer.param_groups
        for index, group in enumerate(groups):
            if type(group) is _WatchedGroup:
                groups[index] = dict(group)


def distributed_rank() -> tuple[int, int] | None:
    """(rank, world size) of this process in an initialized torch.distributed job of several processes, else None."""
    dist = torch.distributed
    if not dist.is_available() or not dist.is_initialized():
        return None
    world_size = dist.get_world_size()
    return (dist.get_rank(), world_size) if world_size > 1 else None


def join_distributed_run(recorder: TrainingRecorder) -> None:
    """Make every rank of a torch.distributed job record into one run, rank zero's; a collective call.

    The run's id is TRAINPROV_RUN_ID if set, else a new one that rank zero broadcasts; each
    rank's run starts now.
    """
    where = distributed_rank()
    if where is None:
        return
    rank, world_size = where
    shared = [None]
    if rank == 0:
        shared[0] = os.environ.get("TRAINPROV_RUN_ID") or new_run_id()
        recorder.rank_of_run = (shared[0], 0, world_size)
        recorder.start()  # first: two processes creating one new SQLite file at once can find it locked
    torch.distributed.broadcast_object_list(shared, src=0)
    if rank != 0:
        recorder.rank_of_run = (shared[0], rank, world_size)
        recorder.start()


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
                                         record_agents=record_agents, rules=rules,
                                         group=group, parent=parent, tags=tags)
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
        self.user_hyperparameters = dict(hyperparameters or {})
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
        return {
            **optimizer_hyperparameters(self.watcher.optimizer),
            "lr_schedule": schedules[0] if len(schedules) == 1 else (schedules or None),
            "loss": loss if loss is None or isinstance(loss, str) else type(loss).__name__,
            "batch_size": batch_size,
            "epochs": self.epochs,
            "steps_per_epoch": steps_per_epoch,
            **facts,
            **self.user_hyperparameters,
        }

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
        """Record that the loop stopped before its planned epochs (an adaptation of `epochs`)."""
        return self.recorder.adaptation(
            self.epochs_done, "early_stopping", cause, parameter="epochs", old_value=self.epochs,
            new_value=self.epochs_done, monitor=monitor, monitor_value=_number(monitor_value),
            best_epoch=best_epoch, best_value=_number(best_value),
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
