"""How the commands print: table cells, strict JSON values, tables, CSV and JSON of rows or DataFrames."""

from __future__ import annotations

import csv
import datetime as _dt
import io
import json
import math
from typing import Any, Sequence

import click
import pandas as pd
from tabulate import tabulate


def cell(value: Any) -> str:
    """A value as a table shows it: exact floats, NULL for missing, ISO timestamps."""
    if value is None:
        return "NULL"
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, _dt.datetime):
        return value.isoformat(sep=" ", timespec="microseconds")
    return str(value)


def json_value(value: Any) -> Any:
    """A value as strict JSON holds it: NaN and infinities as strings, times as ISO 8601, bytes as hex."""
    if isinstance(value, float) and not math.isfinite(value):
        return repr(value).replace("inf", "Infinity").replace("nan", "NaN")  # strict JSON has no NaN
    if isinstance(value, _dt.datetime):
        return value.isoformat()
    if isinstance(value, bytes):
        return value.hex()
    return value


def when(value: Any) -> str:
    """A timestamp as a listing shows it: UTC, to the second."""
    if isinstance(value, _dt.datetime):
        return value.astimezone(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S")
    return "" if value is None else str(value)


def emit(columns: Sequence[str], rows: Sequence[Sequence[Any]], fmt: str) -> None:
    """Print rows as a table, CSV or strict JSON (a list of objects)."""
    if fmt == "json":
        records = [{c: json_value(v) for c, v in zip(columns, row)} for row in rows]
        click.echo(json.dumps(records, indent=2, default=str, allow_nan=False))
    elif fmt == "csv":
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(columns)
        for row in rows:
            writer.writerow(["" if v is None else cell(v) for v in row])
        click.echo(out.getvalue(), nl=False)
    else:
        click.echo(
            tabulate([[cell(v) for v in row] for row in rows], headers=list(columns), disable_numparse=True)
        )


def plain(value: Any) -> Any:
    """A DataFrame cell as the CLI prints it: missing values as None, NumPy scalars as Python ones."""
    if value is None or value is pd.NA or value is pd.NaT:
        return None
    if isinstance(value, pd.Timestamp):
        return value.to_pydatetime()
    item = getattr(value, "item", None)
    return item() if callable(item) and not isinstance(value, (str, bytes)) else value


def emit_frame(frame: pd.DataFrame, fmt: str, *, index: bool = False, empty: str = "no rows") -> None:
    """Print a DataFrame as `trainprov query` prints results (table, csv or json)."""
    if index:
        frame = frame.reset_index()
    if fmt == "table" and frame.empty:
        click.echo(f"({empty})")
        return
    rows = [[plain(v) for v in row] for row in frame.astype(object).itertuples(index=False, name=None)]
    emit([str(c) for c in frame.columns], rows, fmt)


def json_frame(frame: pd.DataFrame, index: bool = False) -> list[dict[str, Any]]:
    """A DataFrame as a list of strict-JSON objects."""
    if index:
        frame = frame.reset_index()
    return [{str(c): json_value(plain(v)) for c, v in zip(frame.columns, row)}
            for row in frame.astype(object).itertuples(index=False, name=None)]


def details(text: Any) -> str:
    """An agent's JSON details as short `key: value` lines (the command line it ran left out)."""
    try:
        facts = json.loads(text) if isinstance(text, str) else (text or {})
    except json.JSONDecodeError:
        return str(text)
    parts = []
    for key, value in facts.items():
        if key == "argv":
            continue
        if isinstance(value, dict):
            value = ", ".join(f"{k} {v}" for k, v in value.items())
        elif isinstance(value, list):
            value = "; ".join(json.dumps(v) for v in value) or "none"
        parts.append(f"{key}: {value}")
    return "\n".join(parts)


def last_values(last: dict[str, Any] | None, width: int = 48) -> str:
    """A dataset's last element as `name=value` pairs, each value shortened to `width` characters."""
    if not last:
        return ""
    shorten = lambda text: text if len(text) <= width else text[: width - 3] + "..."  # noqa: E731
    return "  ".join(f"{k}={shorten(cell(v))}" for k, v in last.items() if v is not None)
