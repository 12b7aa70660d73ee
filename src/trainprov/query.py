"""Reading a store: SQL, DataFrames, runs, one run's summary and the schema.

Everything here is read-only and safe to use from another process while a run writes.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import math
import os
from typing import TYPE_CHECKING, Any, Iterator, Sequence

import pandas as pd

from .store import liveness
from .errors import QueryError, StoreError
from .spec import ELEMENT_COLUMN_TYPES, ELEMENT_COLUMNS
from .store import Backend, Result, open_backend
from .store.base import Rows
from .store.catalog import TABLES

if TYPE_CHECKING:
    from .record import RunRecord

_ELEMENT_DOCS = {
    "run_id": "the run that recorded the element",
    "task_id": "the task that used or generated it",
    "element_seq": "its number within the task (1, 2, ...)",
    "recorded_at": "when it was captured (UTC)",
}


def to_dataframe(result: Result) -> pd.DataFrame:
    """A DataFrame of a result; a float column holding both NULL and NaN keeps them apart (dtype object)."""
    frame = pd.DataFrame.from_records(result.rows, columns=result.columns, coerce_float=False)
    for j, name in enumerate(result.columns):
        column = [r[j] for r in result.rows]
        has_none = any(v is None for v in column)
        has_nan = any(isinstance(v, float) and math.isnan(v) for v in column)
        if has_none and has_nan:
            frame[name] = pd.Series(column, dtype=object, index=frame.index)
    return frame


class Reader:
    """Read-only access to a store."""

    def __init__(self, store: str | os.PathLike | Backend | None = None) -> None:
        self.backend = store if isinstance(store, Backend) else open_backend(store)
        try:
            self.backend.query("SELECT run_id FROM runs LIMIT 1")
        except QueryError:
            raise StoreError(f"{self.backend.url} is not a trainprov store: it has no trainprov catalog") from None
        self._upgrade_catalog()
        liveness.reap(self.backend)

    def _upgrade_catalog(self) -> None:
        """Give a store made by an earlier trainprov the newer catalog tables and columns (run groups, tags), as a write would."""
        try:
            self.backend.query("SELECT group_name, parent_run_id FROM runs LIMIT 0")
            self.backend.query("SELECT run_id FROM run_tags LIMIT 0")
            self.backend.query("SELECT request_id FROM steering_requests LIMIT 0")
        except QueryError:
            try:
                self.backend.ensure_catalog()
            except Exception as exc:  # a read-only role: say what is missing rather than fail on each query
                raise StoreError(f"{self.backend.url} was made by an earlier trainprov and lacks the run-group "
                                 f"and steering tables; open it once with write access to upgrade it ({exc})") from None

    @property
    def url(self) -> str:
        """Where the store is."""
        return self.backend.url

    # ---- SQL ---------------------------------------------------------------------------

    def result(self, sql: str, params: Sequence[Any] | dict = (), *, timeout: float | None = None) -> Result:
        """Run one read-only SQL statement; returns columns and rows.

        A statement still running after `timeout` seconds is stopped (QueryTimeout); Ctrl-C
        stops it too (KeyboardInterrupt, once the database has let go of it).
        """
        return self.backend.query(sql, params, timeout=timeout)

    def rows(self, sql: str, params: Sequence[Any] | dict = (), *, timeout: float | None = None) -> list[dict[str, Any]]:
        """Run one read-only SQL statement; returns a list of dicts."""
        return self.result(sql, params, timeout=timeout).dicts()

    def df(self, sql: str, params: Sequence[Any] | dict = (), *, timeout: float | None = None) -> pd.DataFrame:
        """Run one read-only SQL statement; returns a pandas DataFrame."""
        return to_dataframe(self.result(sql, params, timeout=timeout))

    @contextlib.contextmanager
    def stream(self, sql: str, params: Sequence[Any] | dict = (), *, timeout: float | None = None) -> Iterator[Rows]:
        """Run one read-only SQL statement and read its rows in batches (`rows.batches(n)`), never all at once.

        The `timeout` covers the statement and the reading of every batch.
        """
        with self.backend.stream(sql, params, timeout=timeout) as rows:
            yield rows

    def head(self, sql: str, n: int, params: Sequence[Any] | dict = (), *,
             timeout: float | None = None) -> tuple[Result, bool]:
        """The first `n` rows of one read-only statement, and whether it has more; the rest is never read."""
        with self.stream(sql, params, timeout=timeout) as rows:
            first = rows.fetch(n + 1)
        return Result(rows.columns, first[:n]), len(first) > n

    # ---- runs --------------------------------------------------------------------------

    def runs(self, *, status: str | None = None, dataflow: str | None = None, limit: int | None = None,
             group: str | None = None) -> pd.DataFrame:
        """The runs, newest first, with live status and duration in seconds (`group`: only that run group's)."""
        liveness.reap(self.backend)
        p = self.backend.placeholder
        where, params = [], []
        if status:
            where.append(f"status = {p}")
            params.append(status)
        if dataflow:
            where.append(f"dataflow = {p}")
            params.append(dataflow)
        if group:
            where.append(f"group_name = {p}")
            params.append(group)
        sql = (
            "SELECT run_id, dataflow, dataflow_version, name, status, started_at, ended_at, duration_s, "
            "host, user_name, group_name, parent_run_id FROM runs"
            + (" WHERE " + " AND ".join(where) if where else "")
            + " ORDER BY started_at DESC, run_id DESC"
            + (f" LIMIT {int(limit)}" if limit else "")
        )
        result = self.result(sql, params)
        now = _dt.datetime.now(_dt.timezone.utc)
        i_status, i_start, i_dur = (result.columns.index(c) for c in ("status", "started_at", "duration_s"))
        result.rows = [
            r[:i_dur] + ((now - r[i_start]).total_seconds(),) + r[i_dur + 1 :]
            if r[i_status] == "running" and isinstance(r[i_start], _dt.datetime)
            else r
            for r in result.rows
        ]
        return RunsFrame(to_dataframe(result))

    def run(self, ref: str) -> "RunRecord":
        """One run's record (an id, a unique prefix or 'latest'); shown in a notebook with its curves."""
        from .record import read

        return read(self, ref)

    def _repr_html_(self) -> str:  # notebooks: the store and its latest runs
        from .display import reader_html

        return reader_html(self)

    def groups(self) -> pd.DataFrame:
        """The run groups with their kind, number of runs and runs by status, newest first."""
        return self.df(
            "SELECT g.group_name, g.kind, g.description, g.created_at, count(r.run_id) AS runs, "
            "sum(CASE WHEN r.status = 'running' THEN 1 ELSE 0 END) AS running, "
            "sum(CASE WHEN r.status = 'finished' THEN 1 ELSE 0 END) AS finished, "
            "max(r.started_at) AS last_started_at "
            "FROM run_groups g LEFT JOIN runs r ON r.group_name = g.group_name "
            "GROUP BY g.group_name, g.kind, g.description, g.created_at ORDER BY g.created_at DESC, g.group_name"
        )

    def group(self, name: str) -> dict[str, Any]:
        """One run group: its row (kind, description, details) and its runs with their tags."""
        p = self.backend.placeholder
        found = self.rows(f"SELECT * FROM run_groups WHERE group_name = {p}", (name,))
        if not found:
            known = [r[0] for r in self.result("SELECT group_name FROM run_groups ORDER BY group_name").rows]
            raise QueryError(f"no run group {name!r} in {self.url}" + (f"; groups: {', '.join(known[:20])}" if known else "; it has no groups"))
        runs = self.runs(group=name)
        tags = self.tags(list(runs["run_id"]))
        return {"group": found[0], "runs": runs, "tags": tags}

    def tags(self, run_ids: Sequence[str]) -> dict[str, dict[str, str]]:
        """The tags of some runs: run id -> {tag: value}."""
        out: dict[str, dict[str, str]] = {r: {} for r in run_ids}
        ids = list(run_ids)
        for start in range(0, len(ids), 500):
            chunk = ids[start:start + 500]
            marks = ", ".join([self.backend.placeholder] * len(chunk))
            for run_id, tag, value in self.result(
                f"SELECT run_id, tag, value FROM run_tags WHERE run_id IN ({marks}) ORDER BY run_id, tag", chunk
            ).rows:
                out[run_id][tag] = value
        return out

    def resolve_run(self, ref: str) -> str:
        """A run id from an id, a unique prefix of one, or 'latest'."""
        p = self.backend.placeholder
        if ref == "latest":
            rows = self.result("SELECT run_id FROM runs ORDER BY started_at DESC, run_id DESC LIMIT 1").rows
        else:
            rows = self.result(
                f"SELECT run_id FROM runs WHERE run_id = {p} OR substr(run_id, 1, {p}) = {p} LIMIT 3",
                (ref, len(ref), ref),
            ).rows
            exact = [r for r in rows if r[0] == ref]
            rows = exact or rows
        if not rows:
            raise QueryError(f"no run {ref!r} in {self.url} (see `trainprov runs`)")
        if len(rows) > 1:
            raise QueryError(f"run prefix {ref!r} is ambiguous: {', '.join(r[0] for r in rows)}, ...")
        return rows[0][0]

    def show(self, ref: str) -> dict[str, Any]:
        """One run: its record, agents, tasks, files, and for each dataset its rows and last values."""
        liveness.reap(self.backend)
        run_id = self.resolve_run(ref)
        p = self.backend.placeholder
        run = self.rows(f"SELECT * FROM runs WHERE run_id = {p}", (run_id,))[0]
        if run["status"] == "running" and isinstance(run["started_at"], _dt.datetime):
            run["duration_s"] = (_dt.datetime.now(_dt.timezone.utc) - run["started_at"]).total_seconds()
        agents = self.rows(
            f"SELECT agent_id, kind, name, details, acted_on_behalf_of FROM agents WHERE run_id = {p} ORDER BY agent_id",
            (run_id,),
        )
        tasks = self.rows(
            "SELECT task_id, transformation, iteration, status, started_at, ended_at, duration_s, error "
            f"FROM tasks WHERE run_id = {p} ORDER BY started_at, task_id",
            (run_id,),
        )
        files = self.rows(
            f"SELECT file_id, task_id, path, role, size_bytes, sha256 FROM files WHERE run_id = {p} ORDER BY recorded_at",
            (run_id,),
        )
        roles = self.rows(
            "SELECT td.dataset, td.role, td.transformation FROM transformation_datasets td "
            "JOIN runs r ON r.dataflow = td.dataflow AND r.dataflow_version = td.dataflow_version "
            f"WHERE r.run_id = {p} ORDER BY td.dataset, td.role",
            (run_id,),
        )
        datasets: dict[str, dict[str, Any]] = {}
        for row in roles:
            entry = datasets.setdefault(row["dataset"], {"used_by": [], "generated_by": []})
            entry["used_by" if row["role"] == "uses" else "generated_by"].append(row["transformation"])
        for name, entry in datasets.items():
            entry["rows"] = self.result(f"SELECT count(*) FROM {name} WHERE run_id = {p}", (run_id,)).rows[0][0]
            last = self.rows(
                f"SELECT * FROM {name} WHERE run_id = {p} ORDER BY recorded_at DESC, element_seq DESC LIMIT 1",
                (run_id,),
            )
            entry["last"] = {k: v for k, v in last[0].items() if k not in ELEMENT_COLUMNS} if last else None
        tags = self.tags([run_id])[run_id]
        return {"run": run, "agents": agents, "tasks": tasks, "files": files, "datasets": datasets, "tags": tags}

    # ---- schema ------------------------------------------------------------------------

    def schema(self, *, catalog: bool = True) -> list[dict[str, Any]]:
        """Every table a query can use: datasets first, then the store's own tables, column by column.

        `original_name` is the name a column's values were captured under (a framework's
        metric key such as acc/top1) where the column's name had to differ from it, else None.
        """
        sql_types = getattr(self.backend, "sql_types", {})
        out: list[dict[str, Any]] = []
        datasets = self.rows("SELECT name, description FROM datasets ORDER BY name")
        try:
            attributes = self.rows(
                "SELECT dataset, name, type, description, original_name FROM attributes ORDER BY dataset, position"
            )
        except QueryError:  # a store no run of this trainprov has opened yet: no original names kept
            attributes = self.rows("SELECT dataset, name, type, description FROM attributes ORDER BY dataset, position")
        for ds in datasets:
            for column, kind in zip(ELEMENT_COLUMNS, ELEMENT_COLUMN_TYPES):
                out.append(
                    {"table": ds["name"], "kind": "dataset", "column": column, "type": kind,
                     "sql_type": sql_types.get(kind, ""), "description": _ELEMENT_DOCS[column], "original_name": None}
                )
            for attr in attributes:
                if attr["dataset"] == ds["name"]:
                    # the name the values were captured under, where the column's name differs from it
                    original = attr.get("original_name")
                    out.append(
                        {"table": ds["name"], "kind": "dataset", "column": attr["name"], "type": attr["type"],
                         "sql_type": sql_types.get(attr["type"], ""), "description": attr["description"] or "",
                         "original_name": original if original != attr["name"] else None}
                    )
        if catalog:
            for table in TABLES.values():
                for column, kind in table.columns:
                    out.append(
                        {"table": table.name, "kind": "catalog", "column": column, "type": kind,
                         "sql_type": sql_types.get(kind, ""), "description": "", "original_name": None}
                    )
        return out

    def dataset(self, name: str, run: str | None = None) -> pd.DataFrame:
        """All elements of a dataset (of one run, if given) as a DataFrame."""
        p = self.backend.placeholder
        known = [r[0] for r in self.result("SELECT name FROM datasets ORDER BY name").rows]
        if name not in known:
            raise QueryError(f"no dataset {name!r} in {self.url}; datasets: {', '.join(known) or '(none)'}")
        if run is None:
            return self.df(f"SELECT * FROM {name} ORDER BY recorded_at, element_seq")
        return self.df(
            f"SELECT * FROM {name} WHERE run_id = {p} ORDER BY recorded_at, element_seq", (self.resolve_run(run),)
        )

    def close(self) -> None:
        """Close the connections."""
        self.backend.close()

    @classmethod
    @contextlib.contextmanager
    def open(cls, store: "str | os.PathLike | Backend | Reader | None" = None) -> Iterator["Reader"]:
        """The one way to read a store given as a path, URL, Backend or Reader.

        A Reader or Backend given is borrowed (left open); a store opened here from a path or
        URL is closed at the end of the `with` block.
        """
        if isinstance(store, Reader):
            yield store
        elif isinstance(store, Backend):
            yield cls(store)
        else:
            with cls(store) as reader:
                yield reader

    def __enter__(self) -> "Reader":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


class RunsFrame(pd.DataFrame):
    """The DataFrame of Reader.runs: an ordinary DataFrame that a notebook shows with coloured statuses."""

    @property
    def _constructor(self) -> type:
        return RunsFrame

    def _repr_html_(self) -> str | None:
        if "status" not in self.columns or "run_id" not in self.columns:  # a selection of other columns
            return super()._repr_html_()
        from .display import runs_html

        return runs_html(self)


def connect(store: str | os.PathLike | None = None) -> Reader:
    """Open a store for reading (the argument, else $TRAINPROV_STORE, else ./trainprov.db)."""
    return Reader(store)


def query(sql: str, params: Sequence[Any] | dict = (), store: str | os.PathLike | None = None, *,
          timeout: float | None = None) -> list[dict[str, Any]]:
    """Run one read-only SQL statement on a store (stopped after `timeout` seconds, if given); returns a list of dicts."""
    with Reader(store) as reader:
        return reader.rows(sql, params, timeout=timeout)


def query_df(sql: str, params: Sequence[Any] | dict = (), store: str | os.PathLike | None = None, *,
             timeout: float | None = None) -> pd.DataFrame:
    """Run one read-only SQL statement on a store (stopped after `timeout` seconds, if given); returns a pandas DataFrame."""
    with Reader(store) as reader:
        return reader.df(sql, params, timeout=timeout)
