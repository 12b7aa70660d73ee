"""The analyses a practitioner asks for during and after training, as pandas DataFrames.

Every function reads the store through a read-only `Reader` (give a store path or URL, a
`Reader`, or nothing for $TRAINPROV_STORE / ./trainprov.db), runs portable SQL (the same
text on SQLite and PostgreSQL) and returns a DataFrame. They work on the shared training
datasets that every integration writes (`hyperparameters`, `layers`, `epoch_metrics`,
`adaptations`, `test_results`), and on any dataset of yours with the same shape: metric and
dataset names are parameters, checked against the store's catalog before they reach SQL.

A run recorded by several processes (data-parallel ranks, `world_size` > 1) has rows from
each rank; every function reads one rank's rows, rank 0 by default (`rank=K` for another),
so that epochs of different ranks are not mixed. Runs of one process are read whole.

NaN is a value a diverging training produces: it never wins a minimum or a maximum, and it
is left out of averages (the store's `Backend.not_nan` filter), but a *last* value or a
value *at an epoch* that is NaN is reported as NaN.
"""

from __future__ import annotations

import itertools
import math
import os
from typing import Any, Literal, Sequence, Union

import pandas as pd

from .store import liveness
from .errors import QueryError
from .formatting import higher_is_better
from .query import Reader

#: where to read: a store path or URL, an open Reader, or None ($TRAINPROV_STORE, else ./trainprov.db)
Store = Union[str, os.PathLike, Reader, None]
Statistic = Literal["min", "max", "last", "at"]

#: the dataset of per-epoch metrics, and of per-step ones, that the integrations write
EPOCH_DATASET, STEP_DATASET = "epoch_metrics", "step_metrics"
#: numeric columns that index a curve rather than measure it
AXIS_COLUMNS = ("epoch", "step", "global_step")
#: numeric columns that describe the training's pace or settings, not how well it does
NOT_SCORES = ("learning_rate", "lr", "epoch_time_s", "evaluation_time_s")
#: the relative gap that sets two curves apart, and for how many epochs it must last (`divergence`)
DIVERGENCE_TOLERANCE, DIVERGENCE_PATIENCE = 0.05, 3
#: hyperparameters that `epoch_time` groups by, when the store has them
EPOCH_TIME_BY = ("optimizer", "batch_size", "learning_rate", "trainable_params")

_NUMERIC = ("int", "float")
_SCALAR = ("int", "float", "str", "bool")


# ---- helpers ------------------------------------------------------------------------------


def attributes(dataset: str, *, store: Store = None) -> dict[str, str]:
    """The attributes of a dataset (name -> trainprov type), in column order; {} if there is no such dataset."""
    with Reader.open(store) as reader:
        p = reader.backend.placeholder
        rows = reader.result(f"SELECT name, type FROM attributes WHERE dataset = {p} ORDER BY position", (dataset,)).rows
    return {name: kind for name, kind in rows}


def metrics(dataset: str = EPOCH_DATASET, *, scores_only: bool = False, store: Store = None) -> list[str]:
    """The numeric columns of a metrics dataset that can be drawn as curves (`epoch`, `step` excluded).

    With `scores_only`, also without the learning rate and times (what `best_runs` can rank).
    """
    return _numeric(attributes(dataset, store=store), scores_only)


def _numeric(columns: dict[str, str], scores_only: bool) -> list[str]:
    skip = AXIS_COLUMNS + (NOT_SCORES if scores_only else ())
    return [n for n, t in columns.items() if t in _NUMERIC and n not in skip]


def _columns(reader: Reader, dataset: str) -> dict[str, str]:
    found = attributes(dataset, store=reader)
    if not found:
        known = [r[0] for r in reader.result("SELECT name FROM datasets ORDER BY name").rows]
        raise QueryError(f"no dataset {dataset!r} in {reader.url}; datasets: {', '.join(known) or '(none)'}")
    return found


def _check(reader: Reader, dataset: str, names: Sequence[str], what: str = "column", kinds: Sequence[str] = ()) -> None:
    """Refuse names that are not attributes of the dataset (they are put into SQL text)."""
    known = _columns(reader, dataset)
    for name in names:
        if name not in known:
            hint = [n for n, t in known.items() if not kinds or t in kinds]
            raise QueryError(f"dataset {dataset!r} has no {what} {name!r}; it has: {', '.join(hint) or '(none)'}")
        if kinds and known[name] not in kinds:
            raise QueryError(f"{what} {name!r} of {dataset!r} is {known[name]}, not a number")


def _run_ids(reader: Reader, runs: str | Sequence[str] | None) -> list[str] | None:
    """Run ids from ids, unique prefixes or 'latest' (None: every run)."""
    if runs is None:
        return None
    refs = [runs] if isinstance(runs, str) else list(runs)
    exact: set[str] = set()
    for lo in range(0, len(refs), 500):  # full ids in one statement per 500: a page of a list is one
        clause, values = _in(reader, "run_id", refs[lo : lo + 500])
        exact |= {r[0] for r in reader.result(f"SELECT run_id FROM runs WHERE {clause}", values).rows}
    out: list[str] = []
    for ref in refs:
        run_id = ref if ref in exact else reader.resolve_run(ref)
        if run_id not in out:
            out.append(run_id)
    return out


def _in(reader: Reader, column: str, values: Sequence[Any]) -> tuple[str, list[Any]]:
    """`column IN (?, ?, ...)` and its parameters."""
    marks = ", ".join([reader.backend.placeholder] * len(values))
    return f"{column} IN ({marks})", list(values)


def _where(reader: Reader, run_ids: list[str] | None, column: str = "run_id", **equal: Any) -> tuple[str, list[Any]]:
    """A WHERE clause (or '') restricting to some runs and to columns equal to values."""
    p = reader.backend.placeholder
    parts, params = [], []
    if run_ids is not None:
        sql, values = _in(reader, column, run_ids) if run_ids else ("1 = 0", [])
        parts.append(sql)
        params += values
    for name, value in equal.items():
        if value is not None:
            parts.append(f"{name} = {p}")
            params.append(value)
    return (" WHERE " + " AND ".join(parts)) if parts else "", params


def _check_rank(rank: int) -> int:
    if isinstance(rank, bool) or not isinstance(rank, int) or rank < 0:
        raise QueryError(f"rank must be a whole number of 0 or more (0 is the first process), got {rank!r}")
    return rank


def rank_filter(reader: Reader, rank: int = 0, column: str = "task_id",
                runs: Sequence[str] | None = None) -> str:
    """An SQL condition (" AND ...", or "") keeping the rows of `rank` in runs recorded by several processes.

    `column` is the rows' task id column. Rows of runs of one process always pass; "" when
    the store has no run of several processes. A run among `runs` with no such rank is a
    QueryError.
    """
    rank = _check_rank(rank)
    try:
        several = reader.result("SELECT run_id, world_size FROM runs WHERE world_size > 1").rows
    except QueryError:  # a store from before ranks: every run is of one process
        return ""
    if not several:
        return ""
    sizes = dict(several)
    for run_id in runs or ():
        if run_id in sizes and rank >= sizes[run_id]:
            raise QueryError(f"run {run_id} was recorded by {sizes[run_id]} processes (ranks 0 .. {sizes[run_id] - 1}); "
                             f"there is no rank {rank}")
    # the task ids of the other ranks: a small set, built once per statement on both backends
    return (f" AND {column} NOT IN (SELECT ot.task_id FROM tasks ot JOIN runs orr ON orr.run_id = ot.run_id "
            f"WHERE orr.world_size > 1 AND ot.rank <> {rank})")


def _and_where(where: str, condition: str) -> str:
    """A WHERE clause (or '') with a rank_filter condition added."""
    if not condition:
        return where
    return where + condition if where else " WHERE" + condition[len(" AND"):]


def _as_timestamps(frame: pd.DataFrame, *columns: str) -> pd.DataFrame:
    """Aggregates of timestamps come back as text from SQLite: make them datetimes (UTC)."""
    for column in columns:
        if column in frame.columns:
            frame[column] = pd.to_datetime(frame[column], utc=True, format="ISO8601")
    return frame


def _as_numbers(frame: pd.DataFrame, *columns: str) -> pd.DataFrame:
    """Numeric result columns as floats: NULL and NaN both become NaN (for sorting and arithmetic)."""
    for column in columns:
        if column in frame.columns:
            frame[column] = pd.to_numeric(frame[column], errors="coerce").astype(float)
    return frame


def _first_rows(reader: Reader, dataset: str, run_ids: list[str] | None, columns: Sequence[str],
                ranks: str = "") -> pd.DataFrame:
    """The first recorded element of a dataset in each run (of one rank: `ranks` from rank_filter), indexed by run_id."""
    where, params = ("", []) if run_ids is None or len(run_ids) > 500 else _where(reader, run_ids)
    where = _and_where(where, ranks)
    cols = "".join(f", {c}" for c in columns)
    frame = reader.df(f"SELECT run_id{cols} FROM {dataset}{where} ORDER BY run_id, recorded_at, element_seq", params)
    frame = frame.drop_duplicates("run_id", keep="first").set_index("run_id")
    if run_ids is not None:
        frame = frame[frame.index.isin(run_ids)]
    return frame


def _hyperparameter_columns(reader: Reader, wanted: Sequence[str] | bool | None) -> list[str]:
    """The hyperparameter columns to show: all scalar ones (None/True), none (False), or those named."""
    if wanted is False:
        return []
    if wanted is None or wanted is True:  # a store without the dataset has none to show
        return [n for n, t in attributes("hyperparameters", store=reader).items() if t in _SCALAR]
    names = [wanted] if isinstance(wanted, str) else list(wanted)
    _check(reader, "hyperparameters", names, "hyperparameter")  # also says when there is no such dataset
    return names


def _join_hyperparameters(frame: pd.DataFrame, reader: Reader, wanted: Sequence[str] | bool | None,
                          ranks: str = "") -> pd.DataFrame:
    """Append each run's (first) hyperparameters, of one rank, to a frame with a run_id column.

    Chosen automatically (`wanted` None or True), columns no run of the frame recorded are left out.
    """
    columns = _hyperparameter_columns(reader, wanted)
    if not columns or frame.empty:
        return frame
    hp = _first_rows(reader, "hyperparameters", list(frame["run_id"]), columns, ranks)
    if wanted is None or wanted is True:
        hp = hp[[c for c in hp.columns if hp[c].notna().any()]]
    hp = hp.rename(columns={c: f"{c}_hp" for c in hp.columns if c in frame.columns})  # `epochs`, say
    return frame.join(hp, on="run_id")


def _sort(frame: pd.DataFrame, column: str, ascending: bool) -> pd.DataFrame:
    return frame.sort_values(column, ascending=ascending, na_position="last", kind="stable").reset_index(drop=True)


# ---- runs ---------------------------------------------------------------------------------


def runs_overview(
    *,
    metrics: Sequence[str] | None = None,
    dataset: str = EPOCH_DATASET,
    status: str | None = None,
    dataflow: str | None = None,
    runs: str | Sequence[str] | None = None,
    hyperparameters: Sequence[str] | bool | None = None,
    summary: bool = True,
    rank: int = 0,
    group: str | None = None,
    store: Store = None,
) -> pd.DataFrame:
    """Every run (newest first; of one run group with `group`) with live status, duration, epochs run, the best of each metric and its hyperparameters.

    A metric's best is its minimum, or its maximum for metrics where higher is better
    (`higher_is_better`); columns are `best_<metric>` (NaN when the run has no number).
    `metrics` defaults to every score column of the dataset. Hyperparameters are the first
    recorded in each run. With `summary=False`, only the runs and their hyperparameters
    (no pass over the metrics: the cheap first step of a long list). Runs of several
    processes: the epochs and hyperparameters of `rank`.
    """
    with Reader.open(store) as reader:
        liveness.reap(reader.backend)  # a run whose process died shows as interrupted
        run_ids = _run_ids(reader, runs)
        ranks = rank_filter(reader, rank)
        columns = attributes(dataset, store=reader) if summary else {}
        has_metrics = bool(columns)
        if not has_metrics:
            chosen: list[str] = []
        elif metrics is None:
            chosen = _numeric(columns, scores_only=True)
        else:
            chosen = list(metrics)
            _check(reader, dataset, chosen, "metric", _NUMERIC)
        where, params = _where(reader, run_ids, "r.run_id",
                               **{"r.status": status, "r.dataflow": dataflow, "r.group_name": group})
        select = ("SELECT r.run_id, r.name, r.dataflow, r.dataflow_version, r.status, r.started_at, r.ended_at, "
                  "r.duration_s, r.host, r.user_name, r.group_name")
        inner, inner_params = _where(reader, run_ids)
        inner = _and_where(inner, ranks)
        if has_metrics:
            # min() already passes NaN over on both backends unless every value is NaN (NaN sorts
            # after numbers on both); max() needs the store's filter
            aggregates = "".join(
                f", max(CASE WHEN {reader.backend.not_nan(m)} THEN {m} END) AS best_{m}" if higher_is_better(m) else f", min({m}) AS best_{m}"
                for m in chosen
            )
            select += ", m.epochs_run, m.last_epoch_at" + "".join(f", m.best_{m}" for m in chosen)
            epochs = "max(epoch)" if "epoch" in columns else "count(*)"
            source = (f" FROM runs r LEFT JOIN (SELECT run_id, {epochs} AS epochs_run, max(recorded_at) AS last_epoch_at"
                      f"{aggregates} FROM {dataset}{inner} GROUP BY run_id) m ON m.run_id = r.run_id")
        else:
            source, inner_params = " FROM runs r", []
        frame = reader.df(select + source + where + " ORDER BY r.started_at DESC, r.run_id DESC", inner_params + params)
        frame = _as_timestamps(frame, "started_at", "ended_at", "last_epoch_at")
        frame = _as_numbers(frame, "duration_s", *(f"best_{m}" for m in chosen))
        if not frame.empty:
            now = pd.Timestamp.now(tz="UTC")
            running = frame["status"] == "running"
            frame.loc[running, "duration_s"] = (now - frame.loc[running, "started_at"]).dt.total_seconds()
        frame = _join_hyperparameters(frame, reader, hyperparameters, ranks)
    return frame


def best_runs(
    metric: str = "val_loss",
    statistic: Statistic | None = None,
    *,
    epoch: int | None = None,
    dataset: str = EPOCH_DATASET,
    ascending: bool | None = None,
    hyperparameters: Sequence[str] | bool | None = None,
    runs: str | Sequence[str] | None = None,
    status: str | None = None,
    dataflow: str | None = None,
    limit: int | None = None,
    rank: int = 0,
    store: Store = None,
) -> pd.DataFrame:
    """Runs ranked by a metric over its whole history: its minimum, maximum, last value, or value at an epoch.

    One row per run: `rank`, the run, the value (column named after the metric), `epoch`
    (where the minimum or maximum was first reached, the last epoch, or `epoch`),
    `epochs_run`, and the run's hyperparameters. `statistic` defaults to `at` when an
    `epoch` is given, else to `max` for metrics where higher is better
    (`higher_is_better`), else `min`. Best first: ascending for `min`, descending for
    `max`; for `last` and `at`, lower first unless higher is better (override with
    `ascending`). NaN never wins a minimum or maximum; a NaN last value (a diverged run)
    ranks after every number. Runs of several processes: the values of `rank`.
    """
    if statistic is None:
        statistic = "at" if epoch is not None else "max" if higher_is_better(metric) else "min"
    if statistic not in ("min", "max", "last", "at"):
        raise QueryError(f"statistic must be min, max, last or at, got {statistic!r}")
    if statistic == "at" and epoch is None:
        raise QueryError("statistic 'at' needs an epoch (epoch=K)")
    with Reader.open(store) as reader:
        _check(reader, dataset, ["epoch"], "epoch column")
        _check(reader, dataset, [metric], "metric", _NUMERIC)
        run_ids = _run_ids(reader, runs)
        p = reader.backend.placeholder
        ranks = rank_filter(reader, rank, "m.task_id")
        where, params = _where(reader, run_ids, "m.run_id")
        where = _and_where(where, ranks)
        conditions = [where[len(" WHERE "):]] if where else []
        if statistic in ("min", "max"):
            conditions.append(reader.backend.not_nan(f"m.{metric}"))
            order = f"m.{metric} {'ASC' if statistic == 'min' else 'DESC'}, m.epoch, m.recorded_at"
        elif statistic == "last":
            conditions.append(f"m.{metric} IS NOT NULL")
            order = "m.epoch DESC, m.recorded_at DESC, m.element_seq DESC"
        else:
            conditions += [f"m.{metric} IS NOT NULL", f"m.epoch = {p}"]
            params.append(int(epoch))  # type: ignore[arg-type]
            order = "m.recorded_at DESC, m.element_seq DESC"
        run_where, run_params = _where(reader, None, **{"r.status": status, "r.dataflow": dataflow})
        sql = (
            f"WITH ranked AS (SELECT m.run_id, m.epoch, m.{metric}, "
            f"ROW_NUMBER() OVER (PARTITION BY m.run_id ORDER BY {order}) AS pos "
            f"FROM {dataset} m WHERE {' AND '.join(conditions)}), "
            f"counts AS (SELECT run_id, max(epoch) AS epochs_run FROM {dataset} m{_and_where('', ranks)} GROUP BY run_id) "
            f"SELECT r.run_id, r.name, r.dataflow, r.status, k.{metric}, k.epoch, c.epochs_run "
            f"FROM runs r JOIN ranked k ON k.run_id = r.run_id AND k.pos = 1 "
            f"JOIN counts c ON c.run_id = r.run_id{run_where}"
        )
        frame = _as_numbers(reader.df(sql, params + run_params), metric)
        if ascending is None:
            ascending = statistic == "min" or (statistic != "max" and not higher_is_better(metric))
        frame = _sort(frame, metric, ascending)
        frame.insert(0, "rank", range(1, len(frame) + 1))
        if limit:
            frame = frame.head(int(limit))
        frame = _join_hyperparameters(frame, reader, hyperparameters, rank_filter(reader, rank))
    return frame


# ---- one run, live ------------------------------------------------------------------------


def progress(run: str | None = None, *, last: int = 5, dataset: str = EPOCH_DATASET, rank: int = 0,
             store: Store = None) -> pd.DataFrame:
    """The last `last` epochs of a run (default: the run that recorded an epoch most recently), oldest first, with its status.

    A run of several processes: the epochs of `rank`.
    """
    with Reader.open(store) as reader:
        columns = [c for c in _columns(reader, dataset) if c != "epoch"]
        _check(reader, dataset, ["epoch"], "epoch column")
        p = reader.backend.placeholder
        if run is None:
            found = reader.result(f"SELECT run_id FROM {dataset} ORDER BY recorded_at DESC LIMIT 1").rows
            if not found:
                return pd.DataFrame(columns=["run_id", "epoch", *columns, "recorded_at", "status"])
            run_id = found[0][0]
        else:
            run_id = reader.resolve_run(run)
        ranks = rank_filter(reader, rank, "m.task_id", [run_id])
        cols = "".join(f", m.{c}" for c in columns)
        frame = reader.df(
            f"SELECT m.run_id, m.epoch{cols}, m.recorded_at, r.status FROM {dataset} m "
            f"JOIN runs r ON r.run_id = m.run_id WHERE m.run_id = {p}{ranks} "
            f"ORDER BY m.recorded_at DESC, m.element_seq DESC LIMIT {max(1, int(last))}",
            (run_id,),
        )
    return frame.iloc[::-1].reset_index(drop=True)


# ---- across runs --------------------------------------------------------------------------


def adaptation_effect(
    metric: str = "val_loss",
    *,
    window: int = 3,
    parameter: str = "learning_rate",
    runs: str | Sequence[str] | None = None,
    dataset: str = EPOCH_DATASET,
    rank: int = 0,
    store: Store = None,
) -> pd.DataFrame:
    """For each adaptation of a parameter: the mean metric over the `window` epochs before it and from it.

    An adaptation's `epoch` is the first epoch trained with the new value, so "before" is
    epochs epoch-window .. epoch-1 and "after" is epoch .. epoch+window-1. NaN epochs are
    left out of the means. `change` is after minus before; `relative_change` divides it
    by |before|. Runs of several processes: the adaptations and epochs of `rank`.
    """
    window = int(window)
    if window < 1:
        raise QueryError(f"window must be at least 1 epoch, got {window}")
    with Reader.open(store) as reader:
        _check(reader, dataset, ["epoch"], "epoch column")
        _check(reader, dataset, [metric], "metric", _NUMERIC)
        kinds = _columns(reader, "adaptations")
        _check(reader, "adaptations", ["epoch", "parameter"])
        shown = [c for c in ("epoch", "step", "kind", "old_value", "new_value", "cause", "monitor") if c in kinds]
        run_ids = _run_ids(reader, runs)
        p = reader.backend.placeholder
        mean = f"avg(CASE WHEN {reader.backend.not_nan('m.' + metric)} THEN m.{metric} END)"
        of_rank = rank_filter(reader, rank, "m.task_id", run_ids)
        sql = (
            f"SELECT a.run_id, {', '.join('a.' + c for c in shown)}, "
            f"(SELECT {mean} FROM {dataset} m WHERE m.run_id = a.run_id "
            f"AND m.epoch BETWEEN a.epoch - {p} AND a.epoch - 1{of_rank}) AS {metric}_before, "
            f"(SELECT {mean} FROM {dataset} m WHERE m.run_id = a.run_id "
            f"AND m.epoch BETWEEN a.epoch AND a.epoch + {p}{of_rank}) AS {metric}_after "
            f"FROM adaptations a WHERE a.parameter = {p}{rank_filter(reader, rank, 'a.task_id')}"
        )
        params: list[Any] = [window, window - 1, parameter]
        if run_ids is not None:
            clause, values = _in(reader, "a.run_id", run_ids) if run_ids else ("1 = 0", [])
            sql += f" AND {clause}"
            params += values
        frame = reader.df(sql + " ORDER BY a.run_id, a.epoch, a.recorded_at", params)
    before, after = f"{metric}_before", f"{metric}_after"
    frame = _as_numbers(frame, before, after)
    frame["change"] = frame[after] - frame[before]
    frame["relative_change"] = frame["change"] / frame[before].abs()
    return frame


def convergence(
    metric: str = "val_loss",
    *,
    tolerance: float = 0.01,
    statistic: Literal["min", "max"] | None = None,
    runs: str | Sequence[str] | None = None,
    dataset: str = EPOCH_DATASET,
    rank: int = 0,
    store: Store = None,
) -> pd.DataFrame:
    """Per run: the best value, the first epoch within `tolerance` (relative) of it, and the epochs run after that.

    For `min`, an epoch has converged when value <= best + tolerance * |best|; for `max`,
    when value >= best - tolerance * |best|; `statistic` defaults to `max` for metrics
    where higher is better, else `min`. `epochs_after_convergence` is what early stopping
    could have saved. Runs of several processes: the epochs of `rank`.
    """
    statistic = statistic or ("max" if higher_is_better(metric) else "min")
    if statistic not in ("min", "max"):
        raise QueryError(f"statistic must be min or max, got {statistic!r}")
    with Reader.open(store) as reader:
        _check(reader, dataset, ["epoch"], "epoch column")
        _check(reader, dataset, [metric], "metric", _NUMERIC)
        run_ids = _run_ids(reader, runs)
        p = reader.backend.placeholder
        where, params = _where(reader, run_ids)
        where = _and_where(where, rank_filter(reader, rank, "task_id", run_ids))
        near = (f"x.{metric} <= b.best + {p} * abs(b.best)" if statistic == "min"
                else f"x.{metric} >= b.best - {p} * abs(b.best)")
        sql = (
            f"WITH b AS (SELECT run_id, {statistic}(CASE WHEN {reader.backend.not_nan(metric)} THEN {metric} END) AS best, "
            f"max(epoch) AS epochs_run FROM {dataset}{where} GROUP BY run_id) "
            f"SELECT b.run_id, b.best AS best_{metric}, "
            f"min(CASE WHEN x.{metric} = b.best THEN x.epoch END) AS best_epoch, "
            f"min(x.epoch) AS converged_at_epoch, b.epochs_run "
            f"FROM b JOIN {dataset} x ON x.run_id = b.run_id AND {reader.backend.not_nan('x.' + metric)} AND {near}"
            f"{rank_filter(reader, rank, 'x.task_id')} "
            f"GROUP BY b.run_id, b.best, b.epochs_run ORDER BY b.run_id"
        )
        frame = reader.df(sql, params + [float(tolerance)])
    frame = _as_numbers(frame, f"best_{metric}")
    frame["epochs_after_convergence"] = frame["epochs_run"] - frame["converged_at_epoch"]
    return frame


def epoch_time(
    by: Sequence[str] | None = None, *, dataset: str = EPOCH_DATASET, column: str = "epoch_time_s", rank: int = 0,
    store: Store = None,
) -> pd.DataFrame:
    """Mean, fastest and slowest epoch for each configuration (hyperparameters `by`), fastest first.

    `by` defaults to those of optimizer, batch_size, learning_rate and trainable_params the
    store has. Runs of several processes: the epochs of `rank`.
    """
    with Reader.open(store) as reader:
        known = _columns(reader, "hyperparameters")
        _check(reader, dataset, [column], "time column", _NUMERIC)
        if by is None:
            by = [c for c in EPOCH_TIME_BY if c in known]
        by = [by] if isinstance(by, str) else list(by)
        _check(reader, "hyperparameters", by, "hyperparameter")
        keys = ", ".join(f"h.{c}" for c in by)
        t = f"m.{column}"
        sql = (
            f"SELECT {keys + ', ' if keys else ''}count(DISTINCT m.run_id) AS runs, count(*) AS epochs, "
            f"avg({t}) AS mean_epoch_s, min({t}) AS fastest_epoch_s, max({t}) AS slowest_epoch_s "
            f"FROM hyperparameters h JOIN {dataset} m ON m.run_id = h.run_id AND m.task_id = h.task_id "
            f"WHERE {reader.backend.not_nan(t)}{rank_filter(reader, rank, 'm.task_id')}" + (f" GROUP BY {keys}" if keys else "") + " ORDER BY mean_epoch_s"
        )
        frame = reader.df(sql)
    return _as_numbers(frame, "mean_epoch_s", "fastest_epoch_s", "slowest_epoch_s")


def architecture_vs_test(metric: str = "loss", *, rank: int = 0, store: Store = None) -> pd.DataFrame:
    """Architecture facts of each evaluated model next to its test results, best first.

    One row per evaluation: the number of layers, convolutional layers (with `filters`),
    normalization layers (class name containing "norm"), the largest dropout rate, the
    parameters (from `hyperparameters` when recorded, else summed over `layers`), and every
    numeric column of `test_results`. The architecture is that of the run's last training
    task before the evaluation (of the same rank). Runs of several processes: the
    evaluations of `rank`.
    """
    with Reader.open(store) as reader:
        tests = _columns(reader, "test_results")
        _check(reader, "test_results", [metric], "metric", _NUMERIC)
        results = [c for c, t in tests.items() if t in _NUMERIC]
        hp = attributes("hyperparameters", store=reader)
        layer_columns = attributes("layers", store=reader)
        ranks = rank_filter(reader, rank, "t.task_id")
        # same rank as the evaluation (NULL in a run of one process); no rank column before ranks existed
        same_rank = " AND (t2.rank = e.rank OR (t2.rank IS NULL AND e.rank IS NULL))" if ranks else ""
        # the training task an evaluation judged: the latest one of its run that started before it
        train = ("(SELECT t2.task_id FROM tasks t2 WHERE t2.run_id = t.run_id AND t2.transformation = 'train' "
                 f"AND t2.started_at <= e.started_at{same_rank} ORDER BY t2.started_at DESC, t2.task_id DESC LIMIT 1)")

        def layers(aggregate: str, condition: str = "") -> str:
            return f"(SELECT {aggregate} FROM layers l WHERE l.run_id = t.run_id AND l.task_id = {train}{condition})"

        def hyperparameter(name: str) -> str:
            return (f"(SELECT h.{name} FROM hyperparameters h WHERE h.run_id = t.run_id AND h.task_id = {train} "
                    "ORDER BY h.element_seq LIMIT 1)")

        facts = []
        if layer_columns:
            facts.append(f"{layers('count(*)')} AS n_layers")
            if "filters" in layer_columns:
                facts.append(f"{layers('count(*)', ' AND l.filters IS NOT NULL')} AS conv_layers")
            if "class_name" in layer_columns:
                facts.append(f"{layers('count(*)', ' AND lower(l.class_name) LIKE ' + repr('%norm%'))} AS norm_layers")
            if "dropout_rate" in layer_columns:
                facts.append(f"{layers('max(l.dropout_rate)')} AS max_dropout")
        elif "n_layers" in hp:
            facts.append(f"{hyperparameter('n_layers')} AS n_layers")
        if "trainable_params" in hp:
            facts.append(f"{hyperparameter('trainable_params')} AS trainable_params")
        elif "params" in layer_columns:
            facts.append(f"{layers('sum(l.params)')} AS params")
        sql = (
            "SELECT t.run_id, r.name, " + "".join(f"{f}, " for f in facts)
            + ", ".join(f"t.{c}" for c in results)
            + " FROM test_results t JOIN runs r ON r.run_id = t.run_id JOIN tasks e ON e.task_id = t.task_id "
            f"WHERE t.{metric} IS NOT NULL{ranks} ORDER BY t.recorded_at"
        )
        frame = reader.df(sql)
    frame = _as_numbers(frame, *results)
    return _sort(frame, metric, not higher_is_better(metric))


# ---- comparing runs -----------------------------------------------------------------------


def hyperparameters(runs: str | Sequence[str] | None = None, *, rank: int = 0, store: Store = None) -> pd.DataFrame:
    """Each run's hyperparameters (its first recorded set; of `rank` in a run of several processes), indexed by run id."""
    with Reader.open(store) as reader:
        run_ids = _run_ids(reader, runs)
        columns = list(_columns(reader, "hyperparameters"))
        frame = _first_rows(reader, "hyperparameters", run_ids, columns, rank_filter(reader, rank, "task_id", run_ids))
    if run_ids is not None:
        frame = frame.reindex([r for r in run_ids if r in frame.index])
    return frame


def _same(a: Any, b: Any) -> bool:
    missing_a, missing_b = a is None or a is pd.NA, b is None or b is pd.NA
    if missing_a or missing_b:
        return missing_a and missing_b
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    return bool(a == b)


def differing_hyperparameters(runs: Sequence[str], *, rank: int = 0, store: Store = None) -> pd.DataFrame:
    """The hyperparameters whose values differ between runs: one row per hyperparameter, one column per run."""
    frame = hyperparameters(runs, rank=rank, store=store).astype(object)
    frame = frame.where(frame.notna(), None)
    differ = [c for c in frame.columns if any(not _same(a, b) for a, b in itertools.combinations(frame[c], 2))]
    out = frame[differ].T
    out.index.name = "hyperparameter"
    out.columns.name = None
    return out


def curves(
    runs: str | Sequence[str], metrics: Sequence[str] | None = None, *, dataset: str = EPOCH_DATASET, rank: int = 0,
    store: Store = None,
) -> pd.DataFrame:
    """The per-epoch values of some runs (of `rank` in runs of several processes), long form: run_id, epoch, one column per metric."""
    with Reader.open(store) as reader:
        run_ids = _run_ids(reader, runs) or []
        known = _columns(reader, dataset)
        chosen = [c for c, t in known.items() if t in _NUMERIC and c not in AXIS_COLUMNS] if metrics is None else list(metrics)
        _check(reader, dataset, ["epoch", *chosen], "column", _NUMERIC)
        where, params = _where(reader, run_ids)
        where = _and_where(where, rank_filter(reader, rank, "task_id", run_ids))
        cols = "".join(f", {c}" for c in chosen)
        frame = reader.df(f"SELECT run_id, epoch{cols} FROM {dataset}{where} ORDER BY run_id, recorded_at, element_seq", params)
    order = {r: i for i, r in enumerate(run_ids)}
    frame = frame.sort_values("run_id", key=lambda s: s.map(order), kind="stable").reset_index(drop=True)
    return _as_numbers(frame, *chosen)


def side_by_side(
    runs: Sequence[str], metric: str = "val_loss", *, dataset: str = EPOCH_DATASET, rank: int = 0, store: Store = None
) -> pd.DataFrame:
    """One metric of several runs side by side: one row per epoch, one column per run.

    An epoch recorded twice in a run gives its last value; an epoch a run did not reach is
    NaN, like a NaN value (`divergence` tells the two apart).
    """
    frame = curves(runs, [metric], dataset=dataset, rank=rank, store=store)
    wide = frame.drop_duplicates(["run_id", "epoch"], keep="last").pivot(index="epoch", columns="run_id", values=metric)
    order = list(dict.fromkeys(frame["run_id"]))
    wide = wide.reindex(columns=order).sort_index()
    wide.columns.name = None
    return wide


def _gap(a: float, b: float) -> float:
    """Relative difference |a - b| / max(|a|, |b|): 0 for equal values (both NaN too), infinite when one is not finite."""
    if a == b or (math.isnan(a) and math.isnan(b)):
        return 0.0
    if not (math.isfinite(a) and math.isfinite(b)):
        return math.inf
    return abs(a - b) / max(abs(a), abs(b))


def _series(reader: Reader, run_ids: list[str], metric: str, dataset: str, rank: int) -> dict[str, dict[int, float]]:
    """Each run's values of a metric by epoch (NULL left out, NaN kept; an epoch recorded twice: its last value)."""
    where, params = _where(reader, run_ids)
    where = _and_where(where, rank_filter(reader, rank, "task_id", run_ids))
    rows = reader.result(
        f"SELECT run_id, epoch, {metric} FROM {dataset}{where} ORDER BY recorded_at, element_seq", params
    ).rows
    out: dict[str, dict[int, float]] = {r: {} for r in run_ids}
    for run_id, epoch, value in rows:
        if value is not None and epoch is not None:
            out[run_id][int(epoch)] = float(value)
    return out


def first_divergence(
    a: Sequence[float], b: Sequence[float], *, tolerance: float = DIVERGENCE_TOLERANCE,
    patience: int = DIVERGENCE_PATIENCE,
) -> tuple[int | None, float | None]:
    """Where two aligned series start to stay apart (see `divergence`): (index or None, gap there)."""
    gaps = [_gap(x, y) for x, y in zip(a, b)]
    apart = [g > tolerance for g in gaps]
    at = next((i for i in range(len(apart)) if all(apart[i : i + patience])), None)
    return at, (gaps[at] if at is not None else None)


def divergence(
    runs: Sequence[str],
    metric: str = "val_loss",
    *,
    tolerance: float = DIVERGENCE_TOLERANCE,
    patience: int = DIVERGENCE_PATIENCE,
    dataset: str = EPOCH_DATASET,
    rank: int = 0,
    store: Store = None,
) -> pd.DataFrame:
    """For each pair of runs, the epoch from which their curves of a metric stay apart.

    On the epochs both runs recorded, the gap is |a - b| / max(|a|, |b|) (0 when equal,
    both NaN included; infinite when exactly one is NaN or infinite). The runs diverge at
    the first common epoch where the gap exceeds `tolerance` and keeps exceeding it for
    `patience` consecutive common epochs (or until the last common epoch, if fewer
    remain); `diverged_at_epoch` is empty if there is none. Runs of several processes:
    the epochs of `rank`.
    """
    if patience < 1:
        raise QueryError(f"patience must be at least 1 epoch, got {patience}")
    with Reader.open(store) as reader:
        run_ids = _run_ids(reader, runs) or []
        _check(reader, dataset, ["epoch", metric], "column", _NUMERIC)
        series = _series(reader, run_ids, metric, dataset, rank)
    rows = []
    for a, b in itertools.combinations(run_ids, 2):
        epochs = sorted(set(series[a]) & set(series[b]))
        gaps = [_gap(series[a][e], series[b][e]) for e in epochs]
        at, _ = first_divergence([series[a][e] for e in epochs], [series[b][e] for e in epochs],
                                 tolerance=tolerance, patience=patience)
        rows.append({
            "run_a": a, "run_b": b, "metric": metric, "common_epochs": len(epochs),
            "diverged_at_epoch": epochs[at] if at is not None else None,
            "gap_at_divergence": gaps[at] if at is not None else None,
            "last_common_epoch": epochs[-1] if epochs else None,
            "gap_at_last": gaps[-1] if gaps else None,
        })
    frame = pd.DataFrame(rows, columns=["run_a", "run_b", "metric", "common_epochs", "diverged_at_epoch",
                                        "gap_at_divergence", "last_common_epoch", "gap_at_last"])
    for column in ("diverged_at_epoch", "last_common_epoch"):
        frame[column] = frame[column].astype("Int64")
    return _as_numbers(frame, "gap_at_divergence", "gap_at_last")
