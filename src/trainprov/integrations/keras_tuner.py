"""Keras Tuner: a search is a run group, each trial a run (the trial's Keras training run).

`TunerRecorder(tuner, store)` records the search as a run group (`kind = 'keras_tuner'`:
the objective and its direction, the oracle with its settings, the search space) and hooks
the tuner so that every trial's `fit` runs with a `ProvenanceCallback` whose run is the
trial's: it joins the group, its `hyperparameters` row holds the values the oracle chose,
and when the oracle ends the trial its outcome (status, score, best step, the objective per
epoch) is a `trials` row of that run, which then ends. Nothing else of the tuner changes.
"""

from __future__ import annotations

import os
from typing import Any

from ..capture import groups
from ..errors import CaptureError
from .keras import ProvenanceCallback
from .trials import TRIAL

KIND = "keras_tuner"
_STATE = {"COMPLETED": "COMPLETE", "FAILED": "FAIL", "INVALID": "FAIL", "STOPPED": "PRUNED"}
_PLAIN = (int, float, str, bool, type(None))


def _settings(thing: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"class": type(thing).__name__}
    for key, value in sorted(vars(thing).items()):
        if isinstance(value, _PLAIN) and not key.startswith("_"):
            out[key] = value
    return out


def _direction(oracle: Any) -> str:
    objective = oracle.objective
    return "maximize" if getattr(objective, "direction", "min") == "max" else "minimize"


class TunerRecorder:
    """Records a Keras Tuner search as a run group and each trial as its training's run."""

    def __init__(self, tuner: Any, store: str | os.PathLike | None = None, *, group: str | None = None,
                 steps: bool | int = False) -> None:
        if not hasattr(tuner, "oracle") or not hasattr(tuner, "_build_and_fit_model"):
            raise CaptureError(f"TunerRecorder records a keras_tuner Tuner, got {type(tuner).__name__}")
        self.tuner, self.store, self.steps = tuner, store, steps
        self.group = group or tuner.project_name
        self._callbacks: dict[str, ProvenanceCallback] = {}
        groups.record_group(self.group, kind=KIND, description=f"Keras Tuner search {tuner.project_name}",
                            details=self.details(), store=store)
        fit, end = tuner._build_and_fit_model, tuner.on_trial_end  # noqa: SLF001 - Keras Tuner's documented extension points

        def build_and_fit(trial: Any, *args: Any, **kwargs: Any) -> Any:
            callback = self._callbacks.get(trial.trial_id)
            if callback is None:
                callback = self._callbacks[trial.trial_id] = ProvenanceCallback(
                    store, name=f"trial {trial.trial_id}", group=self.group, steps=steps,
                    hyperparameters=dict(trial.hyperparameters.values),
                    tags={"keras_tuner.project": tuner.project_name, "keras_tuner.trial_id": trial.trial_id})
            kwargs["callbacks"] = [callback, *kwargs.get("callbacks", [])]
            return fit(trial, *args, **kwargs)

        def on_trial_end(trial: Any) -> None:
            end(trial)  # the oracle scores the trial
            self._record(tuner.oracle.get_trial(trial.trial_id))

        tuner._build_and_fit_model = build_and_fit
        tuner.on_trial_end = on_trial_end

    def details(self) -> dict[str, Any]:
        """The group's details: objective, direction, oracle and its settings, search space."""
        oracle = self.tuner.oracle
        objective = oracle.objective
        return {
            "project": self.tuner.project_name,
            "objective": getattr(objective, "name", str(objective)),
            "directions": [_direction(oracle)],
            "oracle": _settings(oracle),
            "tuner": type(self.tuner).__name__,
            "search_space": oracle.hyperparameters.get_config(),
        }

    def _record(self, trial: Any) -> None:
        callback = self._callbacks.pop(trial.trial_id, None)
        run = callback.recorder.run if callback is not None else None
        if run is None or run.status != "running":
            return  # the trial never trained (an invalid trial): nothing to add to
        if TRIAL.name not in run.dataflow.transformations:
            run.evolve(run.dataflow.with_transformation(TRIAL))
        objective = self.tuner.oracle.objective
        name = getattr(objective, "name", None)
        history = {}
        if name and trial.metrics.exists(name):
            history = {str(o.step + 1): float(o.value[0] if isinstance(o.value, list) else o.value)
                       for o in trial.metrics.get_history(name)}
        state = _STATE.get(getattr(trial.status, "name", str(trial.status)), str(trial.status))
        space = {hp["config"]["name"]: hp for hp in trial.hyperparameters.get_config()["space"]}
        with run.task(TRIAL.name) as task:
            task.generated("trials", study=self.group, trial_number=int(trial.trial_id) if trial.trial_id.isdigit() else None,
                           state=state, value=None if trial.score is None else float(trial.score),
                           params=dict(trial.hyperparameters.values), distributions=space,
                           intermediate_values=history,
                           user_attrs={"best_step": trial.best_step, "trial_id": trial.trial_id})
        run.set_tags({"keras_tuner.status": state})
        callback.end("finished" if state == "COMPLETE" else "failed", getattr(trial, "message", None) or None)
