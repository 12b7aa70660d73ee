"""Rules a training is checked against while it runs: `Tracker(..., rules=[rules.loss_finite()])`.

Every integration takes `rules=`: a list of the built-ins below, your own callables
(`rules.rule(fn, action="stop")`), or "default" (loss finite: stop; gradient norm finite:
warn). See docs/validation.md.
"""

from __future__ import annotations

from .capture.validation import (
    ACTIONS,
    SEVERITIES,
    Custom,
    EpochTime,
    GapBelow,
    GradientNorm,
    History,
    InputsFinite,
    LearningRateWithin,
    LossFinite,
    NoImprovement,
    Outcome,
    Rule,
    SkewBelow,
    SqlRule,
    TrainingStopped,
    Validator,
    Verdict,
    default_rules,
    rule,
)

loss_finite = LossFinite
no_improvement = NoImprovement
gap_below = GapBelow
learning_rate_within = LearningRateWithin
gradient_norm = GradientNorm
epoch_time = EpochTime
skew_below = SkewBelow
inputs_finite = InputsFinite
sql = SqlRule

__all__ = [
    "ACTIONS", "SEVERITIES", "Custom", "EpochTime", "GapBelow", "GradientNorm", "History", "InputsFinite", "LearningRateWithin",
    "LossFinite", "NoImprovement", "Outcome", "Rule", "SkewBelow", "SqlRule", "TrainingStopped", "Validator", "Verdict", "default_rules",
    "epoch_time", "gap_below", "gradient_norm", "inputs_finite", "learning_rate_within", "loss_finite", "no_improvement", "rule", "skew_below", "sql",
]
