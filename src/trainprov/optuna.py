"""`trainprov.optuna`: an Optuna study as a run group, each trial a run (see trainprov.integrations.optuna)."""

from .integrations.optuna import StudyRecorder, optimize

__all__ = ["StudyRecorder", "optimize"]
