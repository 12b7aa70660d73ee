"""PyTorch facts every torch-based integration (PyTorch, Lightning, Transformers) records the same way.

`LearningRateWatcher` detects every change of a learning rate, by any
`torch.optim.lr_scheduler` or by hand; `optimizer_hyperparameters` and `scheduler_config`
describe an optimizer and its schedule, `model_layers` the architecture (one row per leaf
module), and `distributed_rank` / `join_distributed_run` the rank of a torch.distributed process.
"""

from __future__ import annotations

import gc
import sys
import numbers
import os
import weakref
from typing import Any, Callable, Mapping

import torch
from torch.optim import lr_scheduler as schedulers

from ..capture.run import new_run_id
from ..capture.training import TrainingRecorder, number

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


def jsonable(value: Any) -> Any:
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
        return [jsonable(v) for v in value]
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
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
        {**{k: jsonable(v) for k, v in group.items() if k != "params"}, "params": sum(p.numel() for p in group["params"])}
        for group in optimizer.param_groups
    ]
    first = optimizer.param_groups[0] if optimizer.param_groups else {}
    # a scheduler may already have moved lr; `initial_lr` is what the optimizer was given
    lr = number(first.get("initial_lr", first.get("lr")))
    return {
        "optimizer": type(optimizer).__name__,
        "learning_rate": lr,
        "optimizer_config": {"defaults": jsonable(optimizer.defaults), "param_groups": groups},
    }


def scheduler_config(scheduler: Any) -> dict[str, Any] | None:
    """A learning-rate scheduler's settings (its class and the state that defines it)."""
    if scheduler is None:
        return None
    try:
        state = scheduler.state_dict()
    except Exception:  # a scheduler without state: its class is what we know
        state = {}
    settings = {k: jsonable(v) for k, v in state.items() if k not in _SCHEDULER_STATE and not k.startswith("_")}
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
        old = dict.get(self, key)
        dict.__setitem__(self, key, value)
        if key != "lr":
            return
        watcher = self.watcher()
        if watcher is None:
            return
        # A continuous schedule sets every rate at every step, and the stack walk that finds
        # who is setting costs more than the rest of a step's capture. Its step counts up
        # before it sets the rates: a set while its count differs from the one seen at its
        # last set of this group is its own, settled here without a further call. Anything
        # else (a set by hand, another scheduler) is found by the walk in _set.
        schedule = watcher._continuous
        if schedule is not None and not watcher._steering:
            count = getattr(schedule, "last_epoch", None)
            if count is not None and count != watcher._counted.get(self.index):
                watcher._counted[self.index] = count
                watcher._known[self.index] = number(value)
                return
        watcher._set(self.index, old, value)

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
                metric = number(frame.f_locals["metrics"])
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
        self.schedulers: list[Any] = []  # every scheduler seen setting a rate (or found by look_in_callers), in order
        # group -> its changes not yet used by a step, in order: [old, new, cause, monitor value, setter]
        self._pending: dict[int, list[list[Any]]] = {}
        self._last_setter: tuple[Any, float | None, Any] | None = None  # (scheduler, metric, its frame)
        # the first continuous schedule found setting rates, and its step counter (last_epoch)
        # when it last set each group: see _set
        self._continuous: Any = None
        self._counted: dict[int, Any] = {}
        self._known = [self._lr(g) for g in self.optimizer.param_groups]
        #: the first group's rate that the last optimizer step used (None before any step)
        self.last_used: float | None = None
        self._steering = False  # True while a steering request sets rates: recorded as steering, not "manual"
        self._watch_groups()
        self._handle = self.optimizer.register_step_pre_hook(self._before_step)

    @property
    def learning_rate(self) -> float | None:
        """The first group's rate that the last optimizer step used (the current one before any step)."""
        return self.last_used if self.steps else self._lr(self.optimizer.param_groups[0])

    @staticmethod
    def _lr(group: Mapping[str, Any]) -> float | None:
        return number(group.get("lr"))

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
        if self._steering:
            self._known[index] = number(new)
            return
        scheduler, metric = self._setter()
        if scheduler is not None and all(s is not scheduler for s in self.schedulers):
            self.schedulers.append(scheduler)
        old, new = number(old), number(new)
        if old == new:
            return  # schedulers set every rate at their start, changed or not
        if isinstance(scheduler, CONTINUOUS_SCHEDULES):
            if self._continuous is None:
                self._continuous = scheduler
            if scheduler is self._continuous:
                self._counted[index] = getattr(scheduler, "last_epoch", None)
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
        if self.recorder.steering.pending:  # a step boundary: steering requests apply to this step
            self.recorder.apply_steering(self.epochs_ended + 1, self.step_in_epoch + 1)
        groups = self.optimizer.param_groups
        known = self._known
        if len(groups) != len(known):
            self._watch_groups()  # add_param_group or load_state_dict made new groups
            known += [self._lr(g) for g in groups[len(known):]]
        for index, group in enumerate(groups):
            if type(group) is not _WatchedGroup:
                self._watch_groups()  # a group replaced by hand
            lr = dict.get(group, "lr")
            # a float the watcher saw set (or read) is the same object still: nothing changed
            if lr is not known[index] and lr != known[index]:
                lr = number(lr)
                if lr != known[index]:
                    # changed without setting the item (a tensor filled in place, update()): cause unknown
                    self._pending.setdefault(index, []).append([known[index], lr, "unknown", None, None])
                    known[index] = lr
        self.step_in_epoch += 1
        self.steps += 1
        if self._pending:
            self._record(self.epochs_ended + 1, self.step_in_epoch)
        self.last_used = known[0] if groups else None

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

    def steer(self, value: float, group: int | None = None) -> None:
        """Set every group's rate (or one group's) for a steering request; this optimizer's schedules continue from it.

        A schedule that computes rates from its base rates (LambdaLR, OneCycleLR, the
        warm-up-then-decay schedules of Transformers) would undo the change at its next
        step: its base rates are scaled by new/old, so it goes on from the steered rate.
        """
        groups = self.optimizer.param_groups
        indexes = range(len(groups)) if group is None else [group]
        if group is not None and not 0 <= group < len(groups):
            raise ValueError(f"the optimizer has {len(groups)} parameter groups (0 to {len(groups) - 1}), not {group}")
        found = self.find_schedulers()
        self._steering = True
        try:
            for index in indexes:
                old = self._lr(groups[index])
                groups[index]["lr"] = value
                for scheduler in found:
                    rescale_schedule(scheduler, groups[index], index, old, value)
        finally:
            self._steering = False

    def steerables(self, recorder: TrainingRecorder) -> None:
        """Let people change `learning_rate` (every group) and `learning_rate_groupN` (one) while the training runs."""
        recorder.steerable("learning_rate", lambda: self._lr(self.optimizer.param_groups[0]), self.steer, low=0.0)
        for index in range(1, len(self.optimizer.param_groups)):
            recorder.steerable(f"learning_rate_group{index}", lambda i=index: self._lr(self.optimizer.param_groups[i]),
                               lambda value, i=index: self.steer(value, i), low=0.0)

    def find_schedulers(self) -> list[Any]:
        """The schedulers of this optimizer the watcher knows: seen setting a rate, or found by `look_in_callers`.

        When it knows none but a scheduler has marked the optimizer (torch's schedulers, all
        but ReduceLROnPlateau, wrap its `step`), every object is scanned for it: tens of ms
        (1-2 % of a short training), not spent when there is no scheduler.
        """
        found = list(self.schedulers)
        if not found and hasattr(self.optimizer.step, "_wrapped_by_lr_sched"):
            found = [r for r in gc.get_referrers(self.optimizer) if isinstance(r, schedulers.LRScheduler)]
        return found

    def look_in_callers(self, frame: Any) -> None:
        """Know the schedulers of this optimizer in the variables of `frame` and its callers (and their attributes and items).

        Call it when the watcher is made, not at a step: before Python 3.13, reading a
        function's variables keeps them until it returns, and at a step those would hold a
        batch and its outputs.
        """
        for value in _reachable_from_callers(frame):
            # by type: isinstance would ask a proxy object for its __class__, which may fail
            if issubclass(type(value), schedulers.LRScheduler) and getattr(value, "optimizer", None) is self.optimizer \
                    and all(s is not value for s in self.schedulers):
                self.schedulers.append(value)

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


def _reachable_from_callers(frame: Any) -> Any:
    """Every local variable of `frame` and the frames that called it, and their attributes and items."""
    while frame is not None:
        for value in list(frame.f_locals.values()):
            yield value
            # in-memory containers only: the values of other mappings (shelve, h5py) may be read from disk
            if issubclass(type(value), dict):
                yield from list(value.values())
            elif issubclass(type(value), (list, tuple)):
                yield from value
            else:
                try:  # an object's own attributes, without running a __getattr__ of its class
                    yield from list(object.__getattribute__(value, "__dict__").values())
                except (AttributeError, TypeError):
                    pass
        frame = frame.f_back


def rescale_schedule(scheduler: Any, group: dict, index: int, old: float | None, new: float) -> None:
    """Make `scheduler` go on from a rate set by hand: its base rates for group `index` scaled by new/old."""
    def scaled(value: Any) -> Any:
        return new if not old else value * (new / old)
    for name in ("base_lrs", "max_lrs"):  # LambdaLR and most others; CyclicLR's upper bounds
        rates = getattr(scheduler, name, None)
        if isinstance(rates, list) and index < len(rates) and isinstance(rates[index], (int, float)):
            rates[index] = scaled(rates[index])
    if isinstance(scheduler, schedulers.OneCycleLR):  # it reads its bounds from the group itself
        for key in ("initial_lr", "max_lr", "min_lr"):
            if isinstance(group.get(key), (int, float)):
                group[key] = scaled(group[key])


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
        recorder.join_run(shared[0], 0, world_size)  # first: two processes creating one new SQLite file at once can find it locked
    torch.distributed.broadcast_object_list(shared, src=0)
    if rank != 0:
        recorder.join_run(shared[0], rank, world_size)
