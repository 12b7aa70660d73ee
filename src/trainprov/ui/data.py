"""What a run's page, the comparison and the SQL console show, read from the store (no HTML here).

Everything goes through the read-only Reader: one short statement at a time, so the
dashboard never holds a transaction open while a training writes. A run recorded by several
processes is shown one rank at a time: rank 0 unless a `rank` is given.
"""

from __future__ import annotations

import csv
import io
import json
import time
from typing import Any, Iterator, Sequence

import pandas as pd

from .. import analysis, checking, record, rundiff, runview, searches
from ..errors import QueryError
from ..query import Reader
from ..spec import ELEMENT_COLUMNS
from .listing import display_metrics
from .present import duration, exact, jsonable, number, when

#: rows of a dataset shown on a run page, and of a query result in the SQL console
TABLE_ROWS, SQL_ROWS = 200, 1000
#: points drawn per step curve (the store keeps every step; this is for drawing only)
STEP_POINTS = 2000


# ---- one run --------------------------------------------------------------------------------


def rank_of(params: Any) -> int:
    """The rank a page or API call asks for (`?rank=K`), 0 when not given."""
    text = params.get("rank", "") or "0"
    try:
        rank = int(text)
    except ValueError:
        raise QueryError(f"rank must be a whole number of 0 or more (0 is the first process), got {text!r}") from None
    if rank < 0:
        raise QueryError(f"rank must be a whole number of 0 or more (0 is the first process), got {text!r}")
    return rank


def resolve(reader: Reader, ref: str) -> str:
    """A run id from an id, a unique prefix or 'latest' (QueryError if none or ambiguous)."""
    return reader.resolve_run(ref)


def _dataset_table(reader: Reader, dataset: str, run_id: str, limit: int = TABLE_ROWS, rank: int = 0) -> dict[str, Any]:
    """A dataset's rows of one run (of `rank`) for display.

    Element columns and columns without any value are left out.
    """
    result = runview.run_rows(reader, dataset, run_id, limit=int(limit) + 1, rank=rank)
    rows = result.rows[:limit]
    keep = [j for j, c in enumerate(result.columns)
            if c not in ELEMENT_COLUMNS and any(row[j] is not None for row in rows)]
    return {"name": dataset, "columns": [result.columns[j] for j in keep],
            "rows": [[_shown(row[j]) for j in keep] for row in rows], "more": len(result.rows) > limit}


def _shown(value: Any) -> dict[str, str]:
    """A value in a table cell: short text, and the exact value as its title."""
    if value is None:
        return {"text": "", "title": ""}
    return {"text": number(value) if not isinstance(value, str) else value, "title": exact(value)}


def _agent_details(text: Any) -> list[tuple[str, str]]:
    try:
        details = json.loads(text) if isinstance(text, str) else (text or {})
    except json.JSONDecodeError:
        return [("details", str(text))]
    out = []
    for key, value in details.items():
        if isinstance(value, dict):
            value = ", ".join(f"{k} {v}" for k, v in value.items())
        elif isinstance(value, list):
            value = " ".join(str(v) for v in value) or "none"
        out.append((key, str(value)))
    return out


#: datasets drawn as curves on the run page instead of listed as tables
CURVE_DATASETS = (analysis.EPOCH_DATASET, analysis.STEP_DATASET)


def run_detail(reader: Reader, run_id: str, rank: int = 0) -> dict[str, Any]:
    """A run page's static parts: the run, its inputs and outputs (of `rank` in a run of several processes), tasks, agents, files."""
    analysis.rank_filter(reader, rank, runs=[run_id])  # an unknown rank is an error before anything is read
    info = reader.show(run_id)
    several = (info["run"].get("world_size") or 1) > 1
    if several:
        for name, entry in info["datasets"].items():  # the rows of the rank shown
            entry["rows"] = runview.row_count(reader, name, run_id, rank=rank)
    inputs, outputs = [], []
    for name, entry in info["datasets"].items():
        if not entry["rows"] or name in CURVE_DATASETS:
            continue
        table = _dataset_table(reader, name, run_id, rank=rank)
        table["count"] = entry["rows"]
        if name == "hyperparameters" and entry["rows"] <= 3:
            table["transpose"] = True
        (inputs if entry["used_by"] and not entry["generated_by"] else outputs).append(table)
    for agent in info["agents"]:
        agent["facts"] = _agent_details(agent.get("details"))
    curves = {name: info["datasets"].get(name, {}).get("rows", 0) for name in CURVE_DATASETS}
    shown = {"rank": rank if several else None, "world_size": info["run"].get("world_size") if several else None}
    violations = checking.recorded(reader, run_id)
    return {**info, "inputs": inputs, "outputs": outputs, "curve_rows": curves, "violations": violations, **shown}


def _run_state(reader: Reader, run_id: str) -> dict[str, Any]:
    run = runview.run_state(reader, run_id)
    seconds = run["duration_s"]
    if run["status"] == "running" and run["started_at"] is not None:
        started = pd.Timestamp(run["started_at"])
        seconds = (pd.Timestamp.now(tz="UTC") - (started if started.tzinfo else started.tz_localize("UTC"))).total_seconds()
    return {"status": run["status"], "duration_s": seconds, "duration": duration(seconds), "error": run["error"],
            "ended_at": when(run["ended_at"])}


def epochs(reader: Reader, run_id: str, rank: int = 0) -> dict[str, Any]:
    """A run's per-epoch curves (every metric with a value), adaptations and live state, for drawing.

    A run of several processes: the epochs and adaptations of `rank`.
    """
    out: dict[str, Any] = {"run_id": run_id, **_run_state(reader, run_id), "epochs": [], "series": {}, "adaptations": []}
    analysis.rank_filter(reader, rank, runs=[run_id])  # an unknown rank is an error even without curves
    epochs, series = runview.epoch_curves(reader, run_id, rank=rank)
    out["epochs"] = epochs
    out["series"] = {name: [jsonable(v) for v in values] for name, values in series.items()}
    out["adaptations"] = [{k: jsonable(v) for k, v in row.items()}
                          for row in runview.adaptations(reader, run_id, rank=rank)]
    out["violations"] = [
        {k: jsonable(v) for k, v in row.items() if k != "source"}
        for row in checking.recorded(reader, run_id)
    ]
    out["count"] = len(out["epochs"])
    return out


def steps(reader: Reader, run_id: str, points: int = STEP_POINTS, rank: int = 0) -> dict[str, Any]:
    """A run's per-step curves, downsampled for drawing to about `points` buckets of global steps.

    Each bucket gives its first step, and the mean, minimum and maximum of each metric in
    it, so that spikes stay visible; runs with fewer steps than `points` are drawn whole.
    A run of several processes: the steps of `rank`.
    """
    curves = runview.step_curves(reader, run_id, points, rank=rank)
    series = {name: {part: [jsonable(v) for v in values] for part, values in parts.items()}
              for name, parts in curves["series"].items()}
    return {"run_id": run_id, **curves, "series": series}


# ---- comparing runs -------------------------------------------------------------------------


def compare(reader: Reader, refs: Sequence[str], metric: str | None, rank: int = 0) -> dict[str, Any]:
    """The comparison page: the runs, their differing hyperparameters and where they diverge (of `rank` in runs of several processes)."""
    run_ids = list(dict.fromkeys(reader.resolve_run(r) for r in refs))
    scores = display_metrics(analysis.metrics(analysis.EPOCH_DATASET, scores_only=True, store=reader)) \
        if analysis.attributes(analysis.EPOCH_DATASET, store=reader) else []
    metric = metric if metric in scores else (scores[0] if scores else None)
    known = runview.run_names(reader, run_ids)
    runs = [{"run_id": r, **known.get(r, {"name": None, "status": None})} for r in run_ids]
    hp = analysis.differing_hyperparameters(run_ids, rank=rank, store=reader) if len(run_ids) > 1 and \
        analysis.attributes("hyperparameters", store=reader) else pd.DataFrame()
    div = analysis.divergence(run_ids, metric, rank=rank, store=reader) if metric and len(run_ids) > 1 else pd.DataFrame()
    labels = {r["run_id"]: (f"{r['name']} ({r['run_id'][-6:]})" if r["name"] else r["run_id"]) for r in runs}
    divergence = [{**row, "label_a": labels[row["run_a"]], "label_b": labels[row["run_b"]]}
                  for row in div.astype(object).to_dict("records")] if not div.empty else []
    first = record.read(reader, run_ids[0]) if len(run_ids) > 1 else None
    diffs = [{"label_a": labels[run_ids[0]], "label_b": labels[other],
              "diff": rundiff.compare(first, record.read(reader, other), metric=metric)} for other in run_ids[1:]]
    return {
        "run_ids": run_ids, "runs": runs, "metric": metric, "metrics": scores, "divergence": divergence, "diffs": diffs,
        "hyperparameters": [{"name": name, "values": [_shown(v) for v in row]}
                            for name, row in zip(hp.index, hp.astype(object).itertuples(index=False, name=None))],
        "tolerance": analysis.DIVERGENCE_TOLERANCE, "patience": analysis.DIVERGENCE_PATIENCE,
    }


def compare_curves(reader: Reader, refs: Sequence[str], rank: int = 0) -> dict[str, Any]:
    """Per-epoch curves of several runs and their differing hyperparameters (of `rank` in runs of several processes), for overlaid drawing."""
    run_ids = list(dict.fromkeys(reader.resolve_run(r) for r in refs))
    out: dict[str, Any] = {"runs": [], "series": {}, "hyperparameters": {}, "higher_is_better": {}}
    for run_id in run_ids:
        data = epochs(reader, run_id, rank)
        out["runs"].append({"run_id": run_id, "status": data["status"]})
        out["series"][run_id] = {"epochs": data["epochs"], **data["series"]}
        for name in data["series"]:
            out["higher_is_better"][name] = analysis.higher_is_better(name)
    known = runview.run_names(reader, run_ids)
    for entry in out["runs"]:
        entry["name"] = known.get(entry["run_id"], {}).get("name")
    if len(run_ids) > 1 and analysis.attributes("hyperparameters", store=reader):
        hp = analysis.differing_hyperparameters(run_ids, rank=rank, store=reader)
        out["hyperparameters"] = {name: [jsonable(v) for v in row]
                                  for name, row in zip(hp.index, hp.astype(object).itertuples(index=False, name=None))}
    out["running"] = any(r["status"] == "running" for r in out["runs"])
    return out


# ---- SQL console ----------------------------------------------------------------------------


def schema(reader: Reader) -> list[dict[str, Any]]:
    """Every table a query can use, datasets first, each with its columns."""
    tables: dict[str, dict[str, Any]] = {}
    for entry in reader.schema():
        table = tables.setdefault(entry["table"], {"table": entry["table"], "kind": entry["kind"], "columns": []})
        table["columns"].append({k: entry[k] for k in ("column", "type", "sql_type", "description", "original_name")})
    return list(tables.values())


def run_sql(reader: Reader, sql: str, max_rows: int = SQL_ROWS, *, timeout: float | None = None) -> dict[str, Any]:
    """The first `max_rows` rows of one read-only statement, JSON-safe, whether there are more, and the time taken.

    Only those rows (and one more, to know) are fetched: the rest of a big result is never read.
    """
    if not sql.strip():
        raise QueryError("write a statement first, e.g. SELECT * FROM runs")
    start = time.perf_counter()
    result, more = reader.head(sql, max_rows, timeout=timeout)
    elapsed = (time.perf_counter() - start) * 1000
    return {"columns": result.columns, "rows": [[jsonable(v) for v in row] for row in result.rows],
            "count": len(result.rows), "truncated": more, "elapsed_ms": round(elapsed, 1)}


def sql_csv_chunks(reader: Reader, sql: str, *, timeout: float | None = None, batch: int = 5000) -> Iterator[str]:
    """Every row of one read-only statement as CSV text, a batch of rows per chunk (NaN as NaN, NULL as an empty field)."""
    if not sql.strip():
        raise QueryError("write a statement first, e.g. SELECT * FROM runs")
    with reader.stream(sql, timeout=timeout) as rows:
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(rows.columns)
        yield out.getvalue()
        for chunk in rows.batches(batch):
            out.seek(0)
            out.truncate()
            for row in chunk:
                writer.writerow(["" if v is None else exact(v) if isinstance(v, float) else jsonable(v) for v in row])
            yield out.getvalue()


def group_details(group: dict[str, Any]) -> list[tuple[str, str]]:
    """A run group's details as (name, text) pairs: a study's directions, sampler, pruner, search space."""
    details = group.get("details")
    if isinstance(details, str):
        try:
            details = json.loads(details)
        except json.JSONDecodeError:
            return [("details", details)]
    if not isinstance(details, dict):
        return []
    return [(key, value if isinstance(value, str) else json.dumps(value, sort_keys=True)) for key, value in details.items()]


def group_search(reader: Reader, name: str) -> dict[str, Any] | None:
    """A search group's analysis for its page (None for a group without trials): best trials, importance,
    pruning, and per trial its state, value, hyperparameters and intermediate values for the charts."""
    try:
        summary = searches.search_summary(name, reader)
    except QueryError:
        return None
    curves = {str(number): [[step, jsonable(v)] for step, v in values]
              for number, values in runview.trial_curves(reader, name).items()}
    trials = summary.trials.astype(object).where(summary.trials.notna(), None)
    return {
        "direction": summary.direction,
        "parameters": summary.parameters,
        "best": [{k: _shown(v) for k, v in row.items()} for row in summary.best.astype(object).to_dict("records")],
        "best_columns": list(summary.best.columns),
        "importance": summary.importance,
        "importance_method": summary.importance_method,
        "pruned": summary.pruned,
        "chart": {"direction": summary.direction, "parameters": summary.parameters,
                  "trials": [jsonable(r) for r in trials.to_dict("records")], "curves": curves},
    }
