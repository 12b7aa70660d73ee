"""What one run holds, read for display: its state, a dataset's rows, its curves, files and trials.

The dashboard, the HTML report, the CLI and notebooks read a run through these calls (the
dashboard's ui/ modules only shape their results for display). Each is one short statement
through the read-only Reader, so no reader holds a transaction open while a training
writes. A run recorded by several processes is read one rank at a time (rank 0 unless
given). Values come back as the store decodes them: NaN as float NaN, NULL as None.
"""

from __future__ import annotations

import json
import math
from typing import Any, Sequence

from . import analysis
from .errors import QueryError
from .query import Reader, Result


def datasets(reader: Reader) -> set[str]:
    """The names of the datasets the store declares."""
    return {r["name"] for r in reader.rows("SELECT name FROM datasets")}


def run_rows(reader: Reader, dataset: str, run_id: str, *, limit: int | None = None, rank: int | None = 0) -> Result:
    """A dataset's rows of one run in recorded order, at most `limit`: of `rank` in a run of several processes, of all with None."""
    p = reader.backend.placeholder
    ranks = analysis.rank_filter(reader, rank, runs=[run_id]) if rank is not None else ""
    cap = f" LIMIT {int(limit)}" if limit is not None else ""
    return reader.result(
        f"SELECT * FROM {dataset} WHERE run_id = {p}{ranks} ORDER BY recorded_at, element_seq{cap}", (run_id,))


def row_count(reader: Reader, dataset: str, run_id: str, *, rank: int = 0) -> int:
    """How many rows of a dataset one run (its `rank`) recorded."""
    p = reader.backend.placeholder
    ranks = analysis.rank_filter(reader, rank, runs=[run_id])
    return reader.result(f"SELECT count(*) FROM {dataset} WHERE run_id = {p}{ranks}", (run_id,)).rows[0][0]


def run_state(reader: Reader, run_id: str) -> dict[str, Any]:
    """A run's status, start, end, duration and error (QueryError for an unknown run)."""
    p = reader.backend.placeholder
    rows = reader.rows(f"SELECT status, started_at, ended_at, duration_s, error FROM runs WHERE run_id = {p}", (run_id,))
    if not rows:
        raise QueryError(f"no run {run_id!r}")
    return rows[0]


def run_names(reader: Reader, run_ids: Sequence[str]) -> dict[str, dict[str, Any]]:
    """Name and status of some runs, by id (unknown ids left out)."""
    if not run_ids:
        return {}
    marks = ", ".join([reader.backend.placeholder] * len(run_ids))
    rows = reader.rows(f"SELECT run_id, name, status FROM runs WHERE run_id IN ({marks})", list(run_ids))
    return {r["run_id"]: {"name": r["name"], "status": r["status"]} for r in rows}


def run_files(reader: Reader, run_id: str) -> list[dict[str, Any]]:
    """A run's files in recorded order: id, task, path, role, dataset, size and sha256."""
    p = reader.backend.placeholder
    return reader.rows(
        f"SELECT file_id, task_id, path, role, dataset, size_bytes, sha256 FROM files WHERE run_id = {p} "
        "ORDER BY recorded_at, file_id", (run_id,))


def epoch_curves(reader: Reader, run_id: str, *, rank: int = 0) -> tuple[list[Any], dict[str, list[Any]]]:
    """A run's epochs and, per metric with at least one value, its value at each of them."""
    names = analysis.metrics(analysis.EPOCH_DATASET, store=reader)
    if not names or "epoch" not in analysis.attributes(analysis.EPOCH_DATASET, store=reader):
        return [], {}
    p = reader.backend.placeholder
    ranks = analysis.rank_filter(reader, rank, runs=[run_id])
    result = reader.result(
        f"SELECT epoch, {', '.join(names)} FROM {analysis.EPOCH_DATASET} WHERE run_id = {p}{ranks} "
        "ORDER BY recorded_at, element_seq", (run_id,))
    series = {}
    for j, name in enumerate(names, start=1):
        values = [r[j] for r in result.rows]
        if any(v is not None for v in values):
            series[name] = values
    return [r[0] for r in result.rows], series


#: the adaptation columns a curve marks, in this order
ADAPTATION_COLUMNS = ("epoch", "step", "kind", "parameter", "old_value", "new_value", "cause", "monitor",
                      "monitor_value", "best_epoch", "best_value", "reason", "requested_by")


def adaptations(reader: Reader, run_id: str, *, rank: int = 0) -> list[dict[str, Any]]:
    """A run's adaptations (learning-rate changes, early stops) with the columns a curve marks; [] without epochs."""
    columns = analysis.attributes("adaptations", store=reader)
    if "epoch" not in columns:
        return []
    p = reader.backend.placeholder
    ranks = analysis.rank_filter(reader, rank, runs=[run_id])
    wanted = [c for c in ADAPTATION_COLUMNS if c in columns]
    return reader.rows(f"SELECT {', '.join(wanted)} FROM adaptations WHERE run_id = {p}{ranks} "
                       "ORDER BY recorded_at, element_seq", (run_id,))


def step_curves(reader: Reader, run_id: str, points: int, *, rank: int = 0) -> dict[str, Any]:
    """A run's per-step curves, downsampled to about `points` buckets of global steps (at least 10).

    Each bucket gives its first step (`x`), and the mean, minimum and maximum of each metric
    in it, so that spikes stay visible (NaN left out); runs with fewer steps than `points`
    come whole (`mean` only). `rows` is the number of steps, `bucket` the steps per bucket.
    """
    out: dict[str, Any] = {"x": [], "series": {}, "rows": 0, "bucket": 1}
    columns = analysis.attributes(analysis.STEP_DATASET, store=reader)
    names = list(analysis.metrics(analysis.STEP_DATASET, store=reader))
    if not names or "global_step" not in columns:
        return out
    p = reader.backend.placeholder
    ranks = analysis.rank_filter(reader, rank, runs=[run_id])
    count, first, last = reader.result(
        f"SELECT count(*), min(global_step), max(global_step) FROM {analysis.STEP_DATASET} "
        f"WHERE run_id = {p} AND global_step IS NOT NULL{ranks}", (run_id,)).rows[0]
    out["rows"] = int(count or 0)
    if not count:
        return out
    points = max(10, int(points))
    if count <= points:
        result = reader.result(
            f"SELECT global_step, {', '.join(names)} FROM {analysis.STEP_DATASET} WHERE run_id = {p} "
            f"AND global_step IS NOT NULL{ranks} ORDER BY global_step, recorded_at", (run_id,))
        out["x"] = [r[0] for r in result.rows]
        for j, name in enumerate(names, start=1):
            values = [r[j] for r in result.rows]
            if any(v is not None for v in values):
                out["series"][name] = {"mean": values}
        return out
    bucket = max(1, math.ceil((int(last) - int(first) + 1) / points))
    group = f"(global_step - {int(first)}) / {bucket}"  # integers: integer division on both backends
    aggregates = []
    for name in names:
        value = f"CASE WHEN {reader.backend.not_nan(name)} THEN {name} END"
        aggregates += [f"avg({value})", f"min({value})", f"max({value})"]
    result = reader.result(
        f"SELECT {group} AS bucket, min(global_step), {', '.join(aggregates)} FROM {analysis.STEP_DATASET} "
        f"WHERE run_id = {p} AND global_step IS NOT NULL{ranks} GROUP BY {group} ORDER BY bucket", (run_id,))
    out["bucket"] = bucket
    out["x"] = [r[1] for r in result.rows]
    for j, name in enumerate(names):
        mean, low, high = ([r[2 + 3 * j + k] for r in result.rows] for k in range(3))
        if any(v is not None for v in mean):
            out["series"][name] = {"mean": mean, "min": low, "max": high}
    return out


def trial_curves(reader: Reader, group: str) -> dict[int, list[tuple[int, Any]]]:
    """The intermediate values each trial of a search group reported, by trial number, in step order."""
    curves = {}
    for row in reader.rows(
        f"SELECT t.trial_number, t.intermediate_values FROM runs r JOIN trials t ON t.run_id = r.run_id "
        f"WHERE r.group_name = {reader.backend.placeholder} ORDER BY t.trial_number", (group,)
    ):
        steps = row["intermediate_values"]
        steps = json.loads(steps) if isinstance(steps, str) else (steps or {})
        curves[row["trial_number"]] = sorted(((int(k), v) for k, v in steps.items()), key=lambda kv: kv[0])
    return curves
