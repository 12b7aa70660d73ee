"""The runs list of the dashboard: filters, order, the columns worth showing (no HTML here).

The list reads the runs and their hyperparameters first, filters and sorts them, and only
then summarises the metrics, of the rows it shows (or of all runs when sorted by a metric).
Runs recorded by several processes show the values of one rank (`?rank=K`, rank 0 by default).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence
from urllib.parse import urlencode

import pandas as pd

from .. import analysis, checking
from ..query import Reader
from .present import duration, exact, is_missing, number, when

STATUSES = ("running", "finished", "failed", "interrupted")
#: columns of the runs overview that describe the run itself (the rest: best metrics, hyperparameters)
RUN_COLUMNS = ("run_id", "name", "dataflow", "dataflow_version", "status", "started_at", "ended_at", "duration_s",
               "host", "user_name", "epochs_run", "last_epoch_at", "group_name")
#: at most this many metric and hyperparameter columns in the runs list
LIST_METRICS, LIST_HYPERPARAMETERS = 4, 5
#: hyperparameters shown when none varies between runs
USUAL_HYPERPARAMETERS = ("optimizer", "learning_rate", "lr", "batch_size")


def display_metrics(names: Sequence[str]) -> list[str]:
    """Metrics in the order a list shows them: val_loss, loss, other validation metrics, the rest."""
    def key(name: str) -> tuple[int, str]:
        rank = 0 if name == "val_loss" else 1 if name == "loss" else 2 if name.startswith("val_") else 3
        return rank, name

    return sorted(names, key=key)


# ---- runs list ------------------------------------------------------------------------------


@dataclass
class RunsQuery:
    """The filters and order of the runs list (its URL's query string)."""

    status: str = ""
    dataflow: str = ""
    group: str = ""
    q: str = ""
    sort: str = "started_at"
    order: str = "desc"
    limit: int = 100
    rank: int = 0

    @classmethod
    def from_params(cls, params: Any) -> "RunsQuery":
        """From a request's query parameters; unknown values fall back to the defaults."""
        status = params.get("status", "")
        order = params.get("order", "")
        try:
            limit = max(1, min(int(params.get("limit", 100)), 100_000))
        except ValueError:
            limit = 100
        try:
            rank = max(0, int(params.get("rank", 0)))
        except ValueError:
            rank = 0
        return cls(
            status=status if status in STATUSES else "",
            dataflow=params.get("dataflow", ""),
            group=params.get("group", ""),
            q=params.get("q", "").strip(),
            sort=params.get("sort", "") or "started_at",
            order=order if order in ("asc", "desc") else ("desc" if params.get("sort", "") in ("", "started_at") else "asc"),
            limit=limit,
            rank=rank,
        )

    def link(self, **change: Any) -> str:
        """The query string of this list with some parameters changed."""
        values = {"status": self.status, "dataflow": self.dataflow, "group": self.group, "q": self.q, "sort": self.sort,
                  "order": self.order, "limit": self.limit, "rank": self.rank,
                  **change}
        defaults = RunsQuery()
        kept = {k: v for k, v in values.items() if v not in ("", None) and v != getattr(defaults, k)}
        if values["sort"] != defaults.sort:
            kept["order"] = values["order"]  # the default order depends on the column: always say it
        return "?" + urlencode(kept)


@dataclass
class Column:
    """A column of a rendered table: its key in the data, its heading, and how to show values."""

    key: str
    label: str
    kind: str = "text"  # text, number, duration, time, status, run, dataflow
    title: str = ""


@dataclass
class RunsList:
    """The runs list: the visible rows, their columns, and what the filters can offer."""

    query: RunsQuery
    columns: list[Column]
    rows: list[dict[str, Any]]
    total: int
    matched: int
    counts: dict[str, int]
    dataflows: list[str]
    groups: list[str] = field(default_factory=list)
    frame: pd.DataFrame = field(repr=False, default_factory=pd.DataFrame)

    def sort_link(self, column: Column) -> str:
        """The link that sorts by a column: the other way round if it is the current order, else best first."""
        if self.query.sort == column.key:
            order = "asc" if self.query.order == "desc" else "desc"
        elif column.key.startswith("best_"):
            order = "desc" if analysis.higher_is_better(column.key[5:]) else "asc"
        else:
            order = "desc" if column.kind in ("time", "duration", "number") and column.key != "epochs_run" else "asc"
        return self.query.link(sort=column.key, order=order, limit=self.query.limit)


def key_hyperparameters(frame: pd.DataFrame, limit: int = LIST_HYPERPARAMETERS) -> list[str]:
    """Hyperparameter columns worth a column in the list: those whose values differ between runs."""
    candidates = [c for c in frame.columns if c not in RUN_COLUMNS and not c.startswith("best_") and c != "framework"]
    varying = []
    for column in candidates:
        values = frame[column].dropna()
        if len(values) and values.astype(str).nunique() > 1:
            varying.append(column)
    if not varying:
        varying = [c for c in USUAL_HYPERPARAMETERS if c in candidates and frame[c].notna().any()]
    return varying[:limit]


def _matches(frame: pd.DataFrame, text: str) -> pd.Series:
    """Rows where any shown value contains the text (case-insensitive)."""
    needle = text.lower()
    hit = pd.Series(False, index=frame.index)
    for column in frame.columns:
        hit |= frame[column].astype(str).str.lower().str.contains(needle, regex=False, na=False)
    return hit


def runs_list(reader: Reader, query: RunsQuery) -> RunsList:
    """The runs list for a query: filtered, sorted, at most `query.limit` rows.

    The metrics are summarised only for the rows shown, unless the list is sorted by one
    of them: the default list costs one pass over the shown runs' epochs, not the store's.
    """
    frame = analysis.runs_overview(summary=False, rank=query.rank, store=reader)
    total = len(frame)
    counts = {s: int((frame["status"] == s).sum()) for s in STATUSES} if total else dict.fromkeys(STATUSES, 0)
    dataflows = sorted(frame["dataflow"].dropna().unique().tolist()) if total else []
    groups = sorted(frame["group_name"].dropna().unique().tolist()) if total and "group_name" in frame else []
    has_epochs = bool(analysis.attributes(analysis.EPOCH_DATASET, store=reader))
    metrics = display_metrics(analysis.metrics(analysis.EPOCH_DATASET, scores_only=True, store=reader))[:LIST_METRICS] \
        if has_epochs else []
    hps = key_hyperparameters(frame)
    validated = bool(analysis.attributes("validation_results", store=reader))
    columns = [
        Column("run_id", "run", "run"),
        Column("status", "status", "status"),
        Column("dataflow", "dataflow", "dataflow"),
        *([Column("group_name", "group", "group")] if groups else []),
        Column("started_at", "started (UTC)", "time"),
        Column("duration_s", "duration", "duration"),
        *([Column("epochs_run", "epochs", "number")] if has_epochs else []),
        *(Column(f"best_{m}", f"{m} {'↑' if analysis.higher_is_better(m) else '↓'}", "number",
                 f"best {m} over the run's epochs ({'maximum' if analysis.higher_is_better(m) else 'minimum'})")
          for m in metrics),
        *([Column("violations", "violations", "number",
                  "rule violations recorded while the run trained (trainprov check RUN lists them)")] if validated else []),
        *(Column(h, h, "number", "hyperparameter") for h in hps),
    ]
    if validated and not frame.empty:
        found = checking.violation_counts(reader)  # one GROUP BY over the failed verdicts of every run
        frame = frame.assign(violations=frame["run_id"].map(lambda r: found.get(r, 0)))
    if query.status:
        frame = frame[frame["status"] == query.status]
    if query.dataflow:
        frame = frame[frame["dataflow"] == query.dataflow]
    if query.group:
        frame = frame[frame["group_name"] == query.group]
    if query.q and not frame.empty:
        frame = frame[_matches(frame[["run_id", "name", "dataflow", "host", "user_name", *hps]], query.q)]
    summarised = [c.key for c in columns if c.key == "epochs_run" or c.key.startswith("best_")]
    by_summary = query.sort in summarised
    if by_summary and not frame.empty:
        frame = _with_summary(reader, frame, metrics, total, query.rank)
    frame = _sorted(frame, query)
    matched = len(frame)
    shown = frame.head(query.limit)
    if has_epochs and not by_summary and not shown.empty:
        shown = _with_summary(reader, shown, metrics, total, query.rank)
    rows = [dict(zip(shown.columns, row)) for row in shown.astype(object).itertuples(index=False, name=None)]
    return RunsList(query, columns, rows, total, matched, counts, dataflows, groups, shown)


def _with_summary(reader: Reader, frame: pd.DataFrame, metrics: list[str], total: int, rank: int = 0) -> pd.DataFrame:
    """The frame with epochs run, last epoch time and best metrics of its runs (of `rank` in runs of several processes)."""
    runs = None if len(frame) == total else list(frame["run_id"])
    summary = analysis.runs_overview(metrics=metrics, runs=runs, hyperparameters=False, rank=rank, store=reader)
    wanted = ["run_id", "status", "duration_s", "ended_at", "epochs_run", "last_epoch_at", *(f"best_{m}" for m in metrics)]
    summary = summary[[c for c in wanted if c in summary.columns]].set_index("run_id")
    # statuses and durations as of this later read
    return frame.drop(columns=[c for c in summary.columns if c in frame.columns]).join(summary, on="run_id")


def _sorted(frame: pd.DataFrame, query: RunsQuery) -> pd.DataFrame:
    sort = query.sort if query.sort in frame.columns else "started_at"
    if frame.empty or sort not in frame.columns:
        return frame
    values = frame[sort]
    plain = pd.api.types.is_numeric_dtype(values) or pd.api.types.is_datetime64_any_dtype(values)
    return frame.sort_values(sort, ascending=query.order == "asc", na_position="last", kind="stable",
                             key=None if plain else (lambda s: s.map(_sort_key)))


def _sort_key(value: Any) -> Any:
    """Mixed values (numbers, text, missing) in one sortable form: numbers first, by value."""
    if is_missing(value):
        return (2, 0.0, "")
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return (0, float(value), "")
    return (1, 0.0, str(value).lower())


def cell(column: Column, row: dict[str, Any]) -> dict[str, str]:
    """Text, title and CSS class of one cell of the runs list."""
    value = row.get(column.key)
    if column.kind == "duration":
        return {"text": duration(value), "title": exact(value), "cls": "num"}
    if column.kind == "time":
        return {"text": when(value), "title": exact(value), "cls": ""}
    if column.kind == "number":
        # a best of NaN means no number was recorded (NaN never wins a minimum or maximum)
        text = "" if column.key.startswith("best_") and is_missing(value) else number(value)
        numeric = isinstance(value, (int, float)) and not isinstance(value, bool)
        return {"text": text, "title": exact(value), "cls": "num" if numeric else ""}
    return {"text": "" if is_missing(value) else str(value), "title": exact(value), "cls": ""}
