"""How values look in the dashboard: JSON-safe values, numbers, durations, times."""

from __future__ import annotations

import datetime as _dt
import decimal
import math
from typing import Any

import pandas as pd

from ..formatting import duration, is_missing  # noqa: F401  (the dashboard's templates use both)


def jsonable(value: Any) -> Any:
    """A value JSON can carry: NaN and infinities as the strings 'NaN', 'Infinity', '-Infinity'
    (JavaScript's Number() reads them back), times as ISO 8601, NumPy scalars as Python ones."""
    if value is None or value is pd.NA or value is pd.NaT:
        return None
    if isinstance(value, bool) or isinstance(value, (int, str)):
        return value
    if isinstance(value, float):
        if math.isfinite(value):
            return value
        return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, (pd.Timestamp, _dt.datetime, _dt.date)):
        return value.isoformat()
    if isinstance(value, decimal.Decimal):
        return jsonable(float(value))
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value).hex()
    item = getattr(value, "item", None)  # NumPy scalars
    if callable(item):
        return jsonable(item())
    return str(value)


def records(frame: pd.DataFrame) -> list[dict[str, Any]]:
    """A DataFrame's rows as JSON-safe dictionaries (missing values as None)."""
    columns = [str(c) for c in frame.columns]
    return [dict(zip(columns, (jsonable(v) for v in row))) for row in frame.astype(object).itertuples(index=False, name=None)]


def number(value: Any, digits: int = 4) -> str:
    """A number short enough for a table cell (the exact value goes in the cell's title)."""
    if value is None or value is pd.NA:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        if math.isnan(value):
            return "NaN"
        if math.isinf(value):
            return "∞" if value > 0 else "−∞"
        return f"{value:.{digits}g}"
    item = getattr(value, "item", None)
    if callable(item) and not isinstance(value, (str, bytes)):
        return number(item(), digits)
    return str(value)


def exact(value: Any) -> str:
    """The full text of a value (for titles, CSV and copy)."""
    if is_missing(value) and not isinstance(value, float):
        return ""
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, (pd.Timestamp, _dt.datetime)):
        return value.isoformat()
    return str(value)


def when(value: Any) -> str:
    """A timestamp as UTC 'YYYY-MM-DD HH:MM:SS'."""
    if is_missing(value):
        return ""
    if isinstance(value, str):
        try:
            value = pd.Timestamp(value)
        except ValueError:
            return value
    if isinstance(value, (pd.Timestamp, _dt.datetime)):
        if value.tzinfo is None:
            value = value.replace(tzinfo=_dt.timezone.utc)
        return value.astimezone(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S")
    return str(value)
