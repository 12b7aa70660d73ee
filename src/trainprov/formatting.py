"""How values read in the CLI's tables, on the dashboard and in notebooks: durations, times, which way a metric is better."""

from __future__ import annotations

import math
import re
from typing import Any

import pandas as pd


def is_missing(value: Any) -> bool:
    """None, pandas' NA/NaT, or a float NaN."""
    if value is None or value is pd.NA or value is pd.NaT:
        return True
    return isinstance(value, float) and math.isnan(value)


def duration(seconds: Any) -> str:
    """Seconds as 12.3 s, 4m05s or 2h03m10s."""
    if is_missing(seconds):
        return ""
    seconds = float(seconds)
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, sec = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m{sec:02d}s" if hours else f"{minutes}m{sec:02d}s"


# words in a metric's name that make a higher value better (everything else: lower is better)
_HIGHER_IS_BETTER = {
    "acc", "accuracy", "auc", "precision", "recall", "f1", "fbeta", "r2", "score", "iou", "dice",
    "map", "bleu", "rouge", "psnr", "ssim", "top1", "top5", "top_k", "sensitivity", "specificity",
}


def higher_is_better(metric: str) -> bool:
    """Whether a larger value of a metric is better, from its name (accuracy, auc, f1, r2, ...)."""
    words = set(re.split(r"[^a-z0-9]+", metric.lower()))
    return bool(words & _HIGHER_IS_BETTER)
