"""`trainprov.keras_tuner`: a Keras Tuner search as a run group, each trial a run (see trainprov.integrations.keras_tuner)."""

from .integrations.keras_tuner import TunerRecorder

__all__ = ["TunerRecorder"]
