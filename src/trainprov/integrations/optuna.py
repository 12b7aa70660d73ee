"""Optuna: a study is a run group, each trial a run.

`StudyRecorder(study)` records the study as a run group (its directions, sampler and pruner
with their settings, the search space). Passed to `study.optimize(callbacks=[...])`, it
records each trial as a run: the sampled values (with the distribution each came from)
plus fixed hyperparameters, the trial's state and objective value(s), its intermediate
values, and a pruning as an adaptation caused by the pruner. With `recorder.wrap(objective)`
(or the one call `optimize`), a training inside the objective that uses one of trainprov's
integrations *is* the trial's run: it joins the group, its hyperparameters get the sampled
values, and the trial's outcome is added to it. Several processes sharing a study through
Optuna's RDB storage each record their own trials into the same group.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import os
import re
import warnings
from typing import Any, Callable, Mapping, Sequence

import optuna
from optuna.distributions import distribution_to_json
from optuna.trial import FrozenTrial, TrialState

from ..capture import groups
from ..capture.past import PastRun, exists
from ..capture.run import Run
from ..capture.training import ADAPT, TRAIN, training_dataflow, value_type
from ..errors import CaptureError
from ..spec import Dataflow, sanitize_name
from .trials import TRIAL

KIND = "optuna_study"
_STATUS = {TrialState.COMPLETE: "finished", TrialState.PRUNED: "finished", TrialState.FAIL: "failed"}
_PLAIN = (int, float, str, bool, type(None))


def settings(thing: Any) -> dict[str, Any]:
    """A sampler's or pruner's class and its plain settings (numbers, text, flags; a wrapped pruner by class)."""
    out: dict[str, Any] = {"class": type(thing).__name__}
    for key, value in sorted(vars(thing).items()):
        name = key.lstrip("_")
        if isinstance(value, _PLAIN):
            out[name] = None if isinstance(value, float) and not math.isfinite(value) else value
        elif isinstance(value, (optuna.pruners.BasePruner, optuna.samplers.BaseSampler)):
            out[name] = settings(value)
    return out


def describe(thing: Any) -> str:
    """A sampler or pruner as one line: `MedianPruner(n_startup_trials=5, n_warmup_steps=0, ...)`."""
    facts = settings(thing)
    name = facts.pop("class")
    return f"{name}(" + ", ".join(f"{k}={v!r}" for k, v in facts.items() if not isinstance(v, dict)) + ")"


def _distribution(d: Any) -> dict[str, Any]:
    return json.loads(distribution_to_json(d))


def _time(value: _dt.datetime | None) -> float | None:
    # Optuna's datetimes are naive local time
    return None if value is None else value.timestamp()


class StudyRecorder:
    """Records an Optuna study as a run group and each trial as a run; an Optuna callback."""

    def __init__(self, study: optuna.Study, store: str | os.PathLike | None = None, *,
                 fixed: Mapping[str, Any] | None = None, group: str | None = None,
                 tags: Mapping[str, Any] | None = None, dataflow_name: str = "optuna_trial") -> None:
        if not isinstance(study, optuna.Study):
            raise CaptureError(f"StudyRecorder records an optuna.Study, got {type(study).__name__}")
        self.study = study
        self.store = store
        self.fixed = dict(fixed or {})
        self.group = group or study.study_name
        self.tags = groups.check_tags(tags)
        self.dataflow_name = dataflow_name
        self._held: dict[int, groups.Joining] = {}
        self._space: dict[str, dict[str, Any]] = {}
        self._store_types: dict[str, str] | None = None
        self._record_group()

    # ---- the study ----------------------------------------------------------------------

    def details(self) -> dict[str, Any]:
        """The group's details: directions, sampler, pruner, search space, fixed values."""
        return {
            "study_name": self.study.study_name,
            "directions": [d.name.lower() for d in self.study.directions],
            "sampler": settings(self.study.sampler),
            "pruner": settings(self.study.pruner),
            "search_space": self._space,
            "fixed": self.fixed,
            "optuna_version": optuna.__version__,
        }

    def _record_group(self) -> None:
        groups.record_group(self.group, kind=KIND, description=f"Optuna study {self.study.study_name}",
                            details=self.details(), store=self.store)

    def _grow_space(self, trial: FrozenTrial) -> None:
        new = {name: _distribution(d) for name, d in trial.distributions.items()}
        if all(self._space.get(k) == v for k, v in new.items()):
            return
        # other processes sharing the study may have sampled other parameters: take the union of all trials
        for other in self.study.get_trials(deepcopy=False):
            for name, d in other.distributions.items():
                self._space.setdefault(name, _distribution(d))
        self._space.update(new)
        self._record_group()

    # ---- trials -------------------------------------------------------------------------

    def wrap(self, objective: Callable[[optuna.Trial], Any]) -> Callable[[optuna.Trial], Any]:
        """The objective, made so that a training it runs through an integration is the trial's run."""

        def recorded(trial: optuna.Trial) -> Any:
            context = groups.Joining(self.group, tags={**self.tags, **self._trial_tags(trial.number)},
                                     hyperparameters=lambda: {**self.fixed, **trial.params}, hold=True)
            self._held[trial.number] = context
            with groups.joining(context):
                try:
                    return objective(trial)
                except optuna.TrialPruned:
                    raise
                except BaseException as exc:
                    # Optuna calls the callbacks for this trial only if it catches the exception
                    # (`catch=`): end the run now, failed; the callback then adds the trial's state
                    context.ended = ("failed", f"{type(exc).__name__}: {exc}")
                    if context.run is not None and context.run.status == "running":
                        context.run.end(*context.ended)
                    raise

        recorded.__name__ = getattr(objective, "__name__", "objective")
        return recorded

    def _trial_tags(self, number: int) -> dict[str, str]:
        return {"optuna.study": self.study.study_name, "optuna.trial_number": str(number)}

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        """Optuna's callback: record a finished trial."""
        self._grow_space(trial)
        context = self._held.pop(trial.number, None)
        run = context.run if context is not None else None
        if run is not None and run.status == "running":
            self._record_into(run, trial, context)
        elif run is not None and context.ended is not None and context.ended[0] == "failed":
            run.set_tags({"optuna.state": trial.state.name})  # the objective raised: its run ended failed then
            run.flush()
        elif run is not None:
            warnings.warn(f"trainprov: the run of trial {trial.number} ({run.id}) ended before the trial did; "
                          "its outcome is recorded as tags only", RuntimeWarning, stacklevel=2)
            run.set_tags({"optuna.state": trial.state.name, "optuna.value": "" if trial.value is None else repr(trial.value)})
            run.flush()
        else:
            self.record_trial(trial)

    def _row(self, trial: FrozenTrial) -> dict[str, Any]:
        start, end = trial.datetime_start, trial.datetime_complete
        values = list(trial.values) if trial.values is not None else None
        return {
            "study": self.study.study_name,
            "trial_number": trial.number,
            "state": trial.state.name,
            "value": values[0] if values and len(values) == 1 else None,
            "objective_values": values,
            "params": dict(trial.params),
            "distributions": {n: _distribution(d) for n, d in trial.distributions.items()},
            "fixed": self.fixed,
            "intermediate_values": {str(k): v for k, v in sorted(trial.intermediate_values.items())},
            "datetime_start": None if start is None else start.astimezone(_dt.timezone.utc),
            "datetime_complete": None if end is None else end.astimezone(_dt.timezone.utc),
            "duration_s": None if start is None or end is None else (end - start).total_seconds(),
            "user_attrs": {k: v for k, v in trial.user_attrs.items()},
        }

    def _pruning(self, trial: FrozenTrial) -> dict[str, Any] | None:
        if trial.state != TrialState.PRUNED:
            return None
        step = trial.last_step
        return {"epoch": step, "step": step, "kind": "pruning", "parameter": "epochs", "new_value": step,
                "cause": describe(self.study.pruner), "monitor": "intermediate_value",
                "monitor_value": None if step is None else trial.intermediate_values.get(step)}

    def _record_into(self, run: Run, trial: FrozenTrial, context: groups.Joining) -> None:
        """Add the trial's outcome to the training run that was its run, then end that run."""
        if TRIAL.name not in run.dataflow.transformations:
            run.evolve(run.dataflow.with_transformation(TRIAL))
        with run.task(TRIAL.name) as task:
            task.generated("trials", **self._row(trial))
        pruning = self._pruning(trial)
        if pruning is not None and ADAPT in run.dataflow.transformations:
            with run.task(ADAPT) as task:
                task.generated("adaptations", **{k: v for k, v in pruning.items() if v is not None})
        run.set_tags({"optuna.state": trial.state.name})
        status, error = context.ended or ("finished", None)
        if trial.state == TrialState.PRUNED:  # stopped on purpose: the pruning adaptation says why
            status, error = "finished", None
        if trial.state == TrialState.FAIL:
            status, error = "failed", trial.system_attrs.get("fail_reason") or error
        run.end(status, error)

    def run_id(self, trial: FrozenTrial) -> str:
        """The id of a trial's run when trainprov starts it: study name and trial number, stable across processes."""
        return f"optuna-{re.sub(r'[^A-Za-z0-9_.-]+', '_', self.study.study_name)}-{trial.number}"

    def record_trial(self, trial: FrozenTrial) -> str | None:
        """Record a finished trial as a run of its own, with the trial's times; None if recorded before."""
        run_id = self.run_id(trial)
        if trial.state not in _STATUS or exists(run_id, self.store):
            return None
        hyper = {**self.fixed, **trial.params}
        flow, columns = self._flow(hyper)
        start = _time(trial.datetime_start)
        end = _time(trial.datetime_complete) or start
        status = _STATUS[trial.state]
        past = PastRun(flow, self.store, run_id=run_id, started=start, ended=end, status=status,
                       name=f"trial {trial.number}", group=self.group,
                       tags={**self.tags, **self._trial_tags(trial.number), "optuna.state": trial.state.name},
                       error=trial.system_attrs.get("fail_reason") if status == "failed" else None)
        past.agent(f"software:optuna-{optuna.__version__}", "software", f"Optuna {optuna.__version__}",
                   {"sampler": settings(self.study.sampler), "pruner": settings(self.study.pruner)})
        train = past.task(TRAIN, start, end, status=status)
        train.element("hyperparameters", start, framework="optuna", **{columns[k]: v for k, v in hyper.items()})
        steps = sorted(trial.intermediate_values.items())
        for step, value in steps:
            train.element("epoch_metrics", end, epoch=step, intermediate_value=value)
        pruning = self._pruning(trial)
        if pruning is not None:
            adapt = past.task(ADAPT, end, end, depends_on=[train])
            adapt.element("adaptations", end, **{k: v for k, v in pruning.items() if v is not None})
        outcome = past.task(TRIAL.name, end, end, depends_on=[train])
        outcome.element("trials", end, **self._row(trial))
        past.write()
        return run_id

    def record_study(self) -> list[str]:
        """Record every finished trial of the study not recorded yet (a study run without the callback)."""
        done = []
        for trial in self.study.get_trials(deepcopy=False):
            self._grow_space(trial)
            run_id = self.record_trial(trial)
            if run_id is not None:
                done.append(run_id)
        return done

    def _flow(self, hyper: Mapping[str, Any]) -> tuple[Dataflow, dict[str, str]]:
        """The dataflow of a trial's own run, with a hyperparameter column per value (the store's type where it has one)."""
        flow = training_dataflow(self.dataflow_name, extra=[TRIAL])
        flow = flow.with_attributes("epoch_metrics", intermediate_value=float)
        declared = flow.datasets["hyperparameters"].types
        if self._store_types is None:
            from ..query import Reader  # read once: which columns other runs already made, and as what

            try:
                with Reader(self.store) as reader:
                    self._store_types = dict(reader.result(
                        "SELECT name, type FROM attributes WHERE dataset = 'hyperparameters'").rows)
            except Exception:  # a new store: nothing declared yet
                self._store_types = {}
        columns, grow = {}, {}
        for key, value in hyper.items():
            column = sanitize_name(key)
            if column in ("framework", "run_id", "task_id", "element_seq", "recorded_at"):
                column += "_"
            kind = value_type(value)
            known = declared.get(column) or self._store_types.get(column)
            if known is not None and known != kind and not (known == "float" and kind == "int"):
                column = f"{column}_{kind}"  # the name is taken with another type by other runs
                known = None
            columns[key] = column
            if column not in declared:
                grow[column] = known or kind
                self._store_types[column] = known or kind
        if grow:
            flow = flow.with_attributes("hyperparameters", grow)
        return flow, columns


def optimize(study: optuna.Study, objective: Callable[[optuna.Trial], Any], *, store: str | os.PathLike | None = None,
             fixed: Mapping[str, Any] | None = None, callbacks: Sequence[Callable] = (), **kwargs: Any) -> StudyRecorder:
    """`study.optimize(objective, ...)` with every trial recorded; returns the recorder."""
    recorder = StudyRecorder(study, store, fixed=fixed)
    study.optimize(recorder.wrap(objective), callbacks=[recorder, *callbacks], **kwargs)
    return recorder
