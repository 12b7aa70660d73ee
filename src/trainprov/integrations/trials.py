"""The record every hyperparameter-search integration (Optuna, Keras Tuner) shares: one `trials` row per trial."""

from __future__ import annotations

import datetime as _dt

from ..spec import Dataset, Transformation

#: one row per trial, in the trial's run
TRIALS = Dataset(
    "trials",
    study=str,
    trial_number=int,
    state=str,
    value=float,
    objective_values="json",
    params="json",
    distributions="json",
    fixed="json",
    intermediate_values="json",
    datetime_start=_dt.datetime,
    datetime_complete=_dt.datetime,
    duration_s=float,
    user_attrs="json",
    description="one row per trial of a hyperparameter search: its outcome and what was sampled",
)
TRIAL = Transformation("trial", generates=[TRIALS], description="a trial of a hyperparameter search: its outcome")

__all__ = ["TRIAL", "TRIALS"]
