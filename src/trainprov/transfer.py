"""Copying runs between stores (a SQLite file and a PostgreSQL database, either way), keeping identifiers.

The copy goes through the store interface only: the source is read with read-only queries,
the destination gets the dataflow versions by `declare` (so its catalog and dataset tables
are made or evolved as if the runs had been recorded there) and the rows by `write`, as
inserts that skip a row whose key is already there. Run, task and file ids and element
numbers are kept, so queries, lineage and exports give the same answers in both stores.
A row whose key the destination already has is not written again, so copying again writes
only what is new, and a run that was still running when copied is completed by the next copy.
"""

from __future__ import annotations

import datetime as _dt
import functools
import json
import math
import os
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Sequence

from .errors import QueryError, SpecError, StoreError, TrainprovError
from .query import Reader
from .spec import ELEMENT_COLUMN_TYPES, ELEMENT_COLUMNS, Dataflow, Dataset
from .store import Backend, Result, open_backend
from .store.catalog import TABLES, Target

#: catalog tables that `declare` fills from a dataflow specification
DECLARATION_TABLES = ("dataflows", "transformations", "transformation_datasets", "datasets", "attributes")
#: catalog tables without a run_id column: the parent table and the column that tie a row to a run
VIA_PARENT = {"task_dependencies": ("tasks", "task_id"), "file_derivations": ("files", "file_id"),
              "run_groups": ("runs", "group_name")}
#: store tables added after the first release: a source store may not have them yet
NEWER_TABLES = ("run_groups", "run_tags", "steering_requests")
#: rows per write transaction, and per page read from the source
BATCH_ROWS = 5000
_UTC = _dt.timezone.utc


# ---- the summary ------------------------------------------------------------------------


@dataclass
class CopySummary:
    """What a copy did (or, in a dry run, would do)."""

    src: str
    dst: str
    dry_run: bool = False
    #: runs with rows written (or to write), in start order
    copied: list[str] = field(default_factory=list)
    #: runs the destination already held completely
    skipped: list[str] = field(default_factory=list)
    #: copied runs that were still running in the source (copy again when they have ended)
    running: list[str] = field(default_factory=list)
    #: new rows by table
    rows: dict[str, int] = field(default_factory=dict)
    #: rows brought up to date by table (a run or task that ended since the last copy)
    updated: dict[str, int] = field(default_factory=dict)
    #: (dataflow, version in the source) -> version in the destination (None: not declared yet, dry run)
    versions: dict[tuple[str, int], int | None] = field(default_factory=dict)
    #: dataflow versions new in the destination, by their version in the source
    declared: list[tuple[str, int]] = field(default_factory=list)

    @property
    def total_rows(self) -> int:
        """New and updated rows, all tables together."""
        return sum(self.rows.values()) + sum(self.updated.values())

    def lines(self) -> list[str]:
        """The summary as a few lines of text."""
        would = "would copy" if self.dry_run else "copied"
        out = [
            f"{would} {_plural(len(self.copied), 'run')} from {self.src} to {self.dst}; "
            f"{len(self.skipped)} already there" + (" (dry run: nothing was written)" if self.dry_run else "")
        ]
        if self.declared:
            out.append("dataflow versions declared: " + ", ".join(
                f"{name} v{v}" + ("" if self.versions.get((name, v)) in (v, None) else f" (v{self.versions[(name, v)]} there)")
                for name, v in self.declared))
        if self.rows:
            out.append("new rows: " + ", ".join(f"{t} {n:,}" for t, n in self.rows.items()) + f" ({sum(self.rows.values()):,} in all)")
        if self.updated:
            out.append("updated rows: " + ", ".join(f"{t} {n:,}" for t, n in self.updated.items()))
        if not self.total_rows and not self.declared:
            out.append("nothing to copy: the destination already has everything")
        if self.running:
            out.append(f"still running in the source: {', '.join(self.running)} (copy again when they have ended to complete them)")
        return out


def _plural(n: int, word: str) -> str:
    return f"{n:,} {word}{'s' * (n != 1)}"


# ---- values -----------------------------------------------------------------------------


def _to_datetime(value: Any) -> _dt.datetime:
    if isinstance(value, str):
        value = _dt.datetime.fromisoformat(value)
    return value if value.tzinfo is not None else value.replace(tzinfo=_UTC)


def _to_json(value: Any) -> str:
    # trainprov's own JSON text (sorted keys), whatever form the source keeps it in: JSONB
    # reorders keys, so that a round trip through PostgreSQL gives back the same text
    text = value if isinstance(value, str) else json.dumps(value, sort_keys=True, default=str)
    try:
        return json.dumps(json.loads(text), sort_keys=True)
    except ValueError:  # not JSON (written behind trainprov's back): copied as it is
        return text


_NORMALIZE: dict[str, Callable[[Any], Any]] = {
    "float": float,  # a whole number a REAL column gave back as an int
    "datetime": _to_datetime,
    "json": _to_json,
    "bool": bool,
}


def _normalizer(table: str, columns: Sequence[str], kinds: Sequence[str]) -> Callable[[tuple], tuple]:
    """A function giving a row read from a store with each value in the one form its type has."""
    fixes = [(j, _NORMALIZE[k]) for j, k in enumerate(kinds) if k in _NORMALIZE]

    def normalize(row: tuple) -> tuple:
        out = list(row)
        for j, fix in fixes:
            if out[j] is not None:
                try:
                    out[j] = fix(out[j])
                except (TypeError, ValueError):
                    raise StoreError(
                        f"cannot copy {table}.{columns[j]}: the source holds {out[j]!r}, which is not a {kinds[j]}"
                    ) from None
        return tuple(out)

    return normalize


def _project(table: str, names: Sequence[str], rows: Iterable[tuple], columns: tuple[str, ...], kinds: tuple[str, ...]) -> list[tuple]:
    """Rows as the given columns (None for a column the query did not return), normalised."""
    at = [names.index(c) if c in names else None for c in columns]
    normalize = _normalizer(table, columns, kinds)
    return [normalize(tuple(None if j is None else r[j] for j in at)) for r in rows]


def _same(a: Any, b: Any) -> bool:
    """Equal values, a NaN equal to a NaN."""
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    return a == b


def _same_row(a: Sequence[Any], b: Sequence[Any]) -> bool:
    return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))


@functools.lru_cache(maxsize=None)
def _target(table: str, columns: tuple[str, ...], kinds: tuple[str, ...], key: tuple[str, ...], mode: str) -> Target:
    # one Target per shape: backends cache their statements by Target
    return Target(table, columns, kinds, key, mode)


def _as_link(target: Target) -> Target:
    """The same target as an insert that skips rows whose key is already there."""
    return _target(target.table, target.columns, target.types, target.key, "link") if target.mode == "insert" else target


# ---- specifications ---------------------------------------------------------------------


def _since(value: str | _dt.date | None) -> _dt.datetime | None:
    if value is None or isinstance(value, _dt.datetime):
        return None if value is None else _to_datetime(value)
    if isinstance(value, _dt.date):
        return _dt.datetime(value.year, value.month, value.day, tzinfo=_UTC)
    try:
        text = str(value).strip()
        return _to_datetime(_dt.datetime.fromisoformat(text[:-1] + "+00:00" if text.endswith("Z") else text))
    except ValueError:
        raise QueryError(
            f"since must be a date or a time such as 2026-11-01 or 2026-11-01T09:30 (UTC unless it says "
            f"otherwise), got {value!r}"
        ) from None


# ---- the copy ---------------------------------------------------------------------------


class _Writes:
    """Rows waiting for the destination, written in one transaction per batch (never in a dry run)."""

    def __init__(self, dst: Backend, dry_run: bool) -> None:
        self.dst = dst
        self.dry_run = dry_run
        self.groups: list[tuple[Target, list[tuple]]] = []
        self.pending = 0

    def add(self, target: Target, rows: Iterable[tuple]) -> None:
        items = [(target, row) for row in rows]
        if not items:
            return
        if self.groups and self.groups[-1][0] is target:
            self.groups[-1][1].extend(items)
        else:
            self.groups.append((target, items))
        self.pending += len(items)
        if self.pending >= BATCH_ROWS:
            self.flush()

    def flush(self) -> None:
        groups, self.groups, self.pending = self.groups, [], 0
        if not groups or self.dry_run:
            return
        try:
            self.dst.write(groups)
            return
        except TrainprovError:
            raise
        except Exception as exc:
            if all(target.mode != "insert" for target, _ in groups):
                raise StoreError(f"writing to {self.dst.url} failed: {' '.join(str(exc).split())}") from exc
        # Elements of a task the destination had none of go in as plain inserts (COPY on
        # PostgreSQL); another copy of the same run may have written some meanwhile: then
        # the batch is written again, skipping the rows already there.
        self.groups = [(_as_link(target), [(_as_link(target), row) for _, row in items]) for target, items in groups]
        self.flush()


class _Copier:
    """One copy from a source store to a destination store."""

    def __init__(self, src: Reader, dst: Backend, *, dry_run: bool, progress: Callable[[str], None]) -> None:
        self.src = src
        self.dst = dst
        self.dry_run = dry_run
        self.say = progress
        self.p = src.backend.placeholder
        self.q = dst.placeholder
        self.summary = CopySummary(src.url, dst.url, dry_run)
        self.flows: dict[tuple[str, int], Dataflow] = {}
        self.writes = _Writes(dst, dry_run)
        self.dst_has_catalog = False
        self.said_at = 0.0  # when the last progress line of a long table was printed

    # ---- reading ---------------------------------------------------------------------

    def src_rows(self, sql: str, params: Sequence[Any], table: str, kinds: dict[str, str]) -> tuple[list[str], list[tuple]]:
        """Rows of a source query, normalised by the types of their columns."""
        result = self.src.result(sql, params)
        columns = result.columns
        normalize = _normalizer(table, columns, [kinds.get(c, "") for c in columns])
        return columns, [normalize(r) for r in result.rows]

    def dst_query(self, sql: str, params: Sequence[Any] = ()) -> Result:
        """A destination query; no rows where the table is not there yet (a dry run: the copy would create it)."""
        if not self.dst_has_catalog and self.dry_run:
            return Result([], [])
        try:
            return self.dst.query(sql, params)
        except QueryError:
            if self.dry_run:
                return Result([], [])
            raise

    def dst_rows(self, sql: str, params: Sequence[Any] = ()) -> list[tuple]:
        """Rows of a destination query (see dst_query)."""
        return self.dst_query(sql, params).rows

    def src_table(self, sql: str, params: Sequence[Any], table: str) -> tuple[tuple[str, ...], tuple[str, ...], list[tuple]]:
        """The columns of a store table the source has (a store made by an older trainprov may lack
        newer ones), their types, and the rows of a `SELECT *` query on it, normalised."""
        result = self.src.result(sql, params)
        known = dict(TABLES[table].columns)
        columns = tuple(c for c in known if c in result.columns)
        kinds = tuple(known[c] for c in columns)
        return columns, kinds, _project(table, result.columns, result.rows, columns, kinds)

    def src_has(self, table: str) -> bool:
        """True if the source store has a table (an older store lacks the newer catalog tables)."""
        try:
            self.src.result(f"SELECT 1 FROM {table} LIMIT 1")
            return True
        except QueryError:
            return False

    def dst_table(self, sql: str, params: Sequence[Any], table: str, columns: tuple[str, ...], kinds: tuple[str, ...]) -> list[tuple]:
        """Rows of a `SELECT *` query on a destination table, as the given columns (None where it lacks one), normalised."""
        result = self.dst_query(sql, params)
        return _project(table, result.columns, result.rows, columns, kinds)

    # ---- selection -------------------------------------------------------------------

    def select(self, refs: Sequence[str] | None, since: _dt.datetime | None) -> list[dict[str, Any]]:
        """The runs to copy, as rows of the source's runs table, oldest first."""
        columns, _, rows = self.src_table("SELECT * FROM runs ORDER BY started_at, run_id", (), "runs")
        runs = [dict(zip(columns, r)) for r in rows]
        if refs is not None:
            wanted = {self.src.resolve_run(ref) for ref in refs}
            runs = [r for r in runs if r["run_id"] in wanted]
        if since is not None:
            runs = [r for r in runs if r["started_at"] is not None and r["started_at"] >= since]
        return runs

    # ---- declarations ----------------------------------------------------------------

    def declare(self, runs: list[dict[str, Any]]) -> None:
        """Declare in the destination the dataflow versions the runs ran, with the versions before them.

        Earlier versions are the history a run's version grew from (a run that met a new
        metric ran both); declaring them in the source's order keeps version numbers and
        attribute positions equal in a destination that starts empty.
        """
        plans = self.read_plans(runs)
        self.check_types()
        before = self.dst_declarations()
        for name, version, fingerprint, declared_at in plans:
            known = before["dataflows"].get((name, fingerprint))
            if not self.dry_run:
                try:
                    self.summary.versions[(name, version)] = self.dst.declare(self.flows[(name, version)])
                except SpecError as exc:
                    raise SpecError(f"cannot copy dataflow {name!r} v{version} to {self.dst.url}: {exc}") from None
            else:
                self.summary.versions[(name, version)] = known
            if known is None:
                self.summary.declared.append((name, version))
                there = self.summary.versions[(name, version)]
                self.say(f"dataflow {name} v{version}: " + (
                    "would be declared" if self.dry_run else "declared" + ("" if there == version else f" (v{there} there)")))
        if not self.dry_run:
            self.dst_has_catalog = True
            self.keep_source_times(plans, before)

    def read_plans(self, runs: list[dict[str, Any]]) -> list[tuple[str, int, str, Any]]:
        """(name, version, fingerprint, declared_at) of the versions to declare, in the source's order; fills self.flows."""
        highest: dict[str, int] = {}
        for run in runs:
            highest[run["dataflow"]] = max(highest.get(run["dataflow"], 0), int(run["dataflow_version"]))
        names = sorted(highest)
        _, rows = self.src_rows(
            f"SELECT name, version, fingerprint, spec, declared_at FROM dataflows "
            f"WHERE name IN ({', '.join([self.p] * len(names))})",
            names, "dataflows", dict(TABLES["dataflows"].columns),
        )
        rows = sorted(
            (r for r in rows if r[1] <= highest[r[0]]),
            key=lambda r: (r[4] or _dt.datetime.min.replace(tzinfo=_UTC), r[0], r[1]),
        )
        missing = {(r["dataflow"], int(r["dataflow_version"])) for r in runs} - {(r[0], r[1]) for r in rows}
        if missing:
            name, version = sorted(missing)[0]
            raise StoreError(f"cannot copy: the source has no specification of dataflow {name!r} version {version}")
        for name, version, fingerprint, spec, _ in rows:
            flow = Dataflow.from_dict(json.loads(spec))
            if flow.fingerprint() != fingerprint:
                raise StoreError(
                    f"cannot copy dataflow {name!r} v{version}: its stored specification does not match its fingerprint"
                )
            self.flows[(name, version)] = flow
        return [(name, version, fingerprint, declared_at) for name, version, fingerprint, _, declared_at in rows]

    def keep_source_times(self, plans: list[tuple[str, int, str, Any]], before: dict[str, Any]) -> None:
        """Give the catalog rows this copy's declarations made the source's times.

        They say when the plan, the dataset and the attribute were first declared, not when
        they were copied (and a PROV export shows the plan's time).
        """
        kinds = {table: dict(TABLES[table].columns) for table in ("datasets", "attributes")}
        _, datasets = self.src_rows("SELECT name, declared_at FROM datasets", (), "datasets", kinds["datasets"])
        _, attributes = self.src_rows("SELECT dataset, name, added_at FROM attributes", (), "attributes", kinds["attributes"])
        declared = {(ds.name, a.name) for flow in self.flows.values() for ds in flow.datasets.values() for a in ds.attributes}
        fixes = {
            ("dataflows", ("name", "version", "declared_at"), ("str", "int", "datetime"), ("name", "version")): [
                (name, self.summary.versions[(name, version)], at)
                for name, version, fingerprint, at in plans if (name, fingerprint) not in before["dataflows"]
            ],
            ("datasets", ("name", "declared_at"), ("str", "datetime"), ("name",)): [
                (name, at) for name, at in datasets
                if name not in before["datasets"] and any(name == d for d, _ in declared)
            ],
            ("attributes", ("dataset", "name", "added_at"), ("str", "str", "datetime"), ("dataset", "name")): [
                (ds, name, at) for ds, name, at in attributes if (ds, name) in declared and (ds, name) not in before["attributes"]
            ],
        }
        for (table, columns, kinds_, key), rows in fixes.items():
            self.writes.add(_target(table, columns, kinds_, key, "update"), [r for r in rows if r[-1] is not None])
        self.writes.flush()

    def check_types(self) -> None:
        """Refuse, before anything is written, an attribute the destination has with another type."""
        if not self.dst_has_catalog:
            return
        there = {(d, n): t for d, n, t in self.dst_rows("SELECT dataset, name, type FROM attributes")}
        for (name, version), flow in self.flows.items():
            for ds in flow.datasets.values():
                for attr in ds.attributes:
                    kind = there.get((ds.name, attr.name))
                    if kind is not None and kind != attr.type:
                        raise SpecError(
                            f"cannot copy dataflow {name!r} v{version}: dataset {ds.name!r} attribute {attr.name!r} "
                            f"is {attr.type} in {self.src.url} but {kind} in {self.dst.url}; a type cannot change "
                            "once rows may exist (rename the attribute in one store, or copy to another store)"
                        )

    def dst_declarations(self) -> dict[str, Any]:
        """What the destination declared before this copy: dataflow fingerprints, datasets, attributes."""
        q = self.q
        found: dict[str, Any] = {"dataflows": {}, "datasets": set(), "attributes": set()}
        if not self.dst_has_catalog:
            return found
        names = sorted({name for name, _ in self.flows})
        for name, version, fingerprint in self.dst_rows(
            f"SELECT name, version, fingerprint FROM dataflows WHERE name IN ({', '.join([q] * len(names))})", names
        ):
            found["dataflows"].setdefault((name, fingerprint), int(version))
        found["datasets"] = {r[0] for r in self.dst_rows("SELECT name FROM datasets")}
        found["attributes"] = {(r[0], r[1]) for r in self.dst_rows("SELECT dataset, name FROM attributes")}
        return found

    # ---- runs ------------------------------------------------------------------------

    def copy_run(self, run: dict[str, Any]) -> None:
        """Copy one run: its tasks, links, files, agents and elements, then its runs row."""
        run_id = run["run_id"]
        key = (run["dataflow"], int(run["dataflow_version"]))
        running = run["status"] == "running"
        counts: dict[str, int] = {}
        updates: dict[str, int] = {}
        known = dict(TABLES["runs"].columns)
        columns = tuple(c for c in known if c in run)
        kinds = tuple(known[c] for c in columns)
        # the version the destination numbers this specification with
        mine = tuple(self.summary.versions.get(key) or key[1] if c == "dataflow_version" else run[c] for c in columns)
        there = self.dst_run(run_id, columns, kinds, mine)

        tasks = self.copy_run_tables(run_id, running, counts, updates)
        for ds in self.flows[key].datasets.values():
            self.copy_elements(run_id, ds, tasks, running, counts)
        # The runs row last: the run shows up in the destination when the rest is there.
        if there is None:
            self.writes.add(_target("runs", columns, kinds, ("run_id",), "link"), [mine])
            counts["runs"] = 1
        elif _ended_since(there, mine, columns):
            self.writes.add(_target("runs", columns, kinds, ("run_id",), "update"), [mine])
            updates["runs"] = 1
        self.writes.flush()
        self.report(run, counts, updates)

    def dst_run(self, run_id: str, columns: tuple[str, ...], kinds: tuple[str, ...], mine: tuple) -> tuple | None:
        """The destination's row of the run, if it has one; refuse a different run with the same id."""
        rows = self.dst_table(f"SELECT * FROM runs WHERE run_id = {self.q}", (run_id,), "runs", columns, kinds)
        if not rows:
            return None
        there = rows[0]
        flow, start = columns.index("dataflow"), columns.index("started_at")
        if there[flow] != mine[flow] or there[start] != mine[start]:
            raise StoreError(
                f"cannot copy run {run_id}: {self.dst.url} has a different run with that id "
                f"(dataflow {there[flow]!r}, started {there[start]})"
            )
        return there

    def copy_run_tables(self, run_id: str, running: bool, counts: dict[str, int], updates: dict[str, int]) -> set[str]:
        """Copy the run's rows of the store tables (tasks, links, files, agents); return the ids of the tasks read.

        Parents are read before their children, and while the run is running a child whose
        parent was not read waits for the next copy: the copy is a consistent snapshot, as
        an export is.
        """
        p, q = self.p, self.q
        read: dict[str, set] = {}
        for table in _run_tables():
            keys = TABLES[table].key
            if table in VIA_PARENT:
                parent, link = VIA_PARENT[table]
                scope = f"FROM {table} x JOIN {parent} y ON y.{link} = x.{link} WHERE y.run_id = "
                src_sql, dst_sql = f"SELECT x.* {scope}{p}", f"SELECT x.* {scope}{q}"
            else:
                src_sql = f"SELECT * FROM {table} WHERE run_id = {p}"
                dst_sql = f"SELECT * FROM {table} WHERE run_id = {q}"
            try:
                columns, kinds, rows = self.src_table(src_sql, (run_id,), table)
            except QueryError:
                if table in NEWER_TABLES and not self.src_has(table):
                    continue  # a source made before the table existed has no rows for it
                raise
            dst_params: tuple = (run_id,)
            if table == "run_groups":  # shared by the group's runs: the destination may have it from another
                dst_sql, dst_params = f"SELECT * FROM run_groups WHERE group_name = {q}", (rows[0][0] if rows else None,)
            if running:
                rows = [r for r in rows if _parent_read(table, columns, r, read)]
            key_at = [columns.index(c) for c in keys]
            read[table] = {r[key_at[0]] for r in rows} if len(keys) == 1 else set()
            have = {tuple(r[j] for j in key_at): r for r in self.dst_table(dst_sql, dst_params, table, columns, kinds)}
            new = [r for r in rows if tuple(r[j] for j in key_at) not in have]
            self.writes.add(_target(table, columns, kinds, keys, "link"), new)
            if new:
                counts[table] = len(new)
            if "status" in columns:  # a task that ended since the last copy
                stale = [r for r in rows if tuple(r[j] for j in key_at) in have
                         and _ended_since(have[tuple(r[j] for j in key_at)], r, columns)]
                self.writes.add(_target(table, columns, kinds, keys, "update"), stale)
                if stale:
                    updates[table] = len(stale)
        return read.get("tasks", set())

    def report(self, run: dict[str, Any], counts: dict[str, int], updates: dict[str, int]) -> None:
        """Add a run's counts to the summary and say what was done with it."""
        run_id = run["run_id"]
        for table, n in counts.items():
            self.summary.rows[table] = self.summary.rows.get(table, 0) + n
        for table, n in updates.items():
            self.summary.updated[table] = self.summary.updated.get(table, 0) + n
        label = f"run {run_id} ({run['dataflow']} v{run['dataflow_version']}, {run['status']})"
        if counts or updates:
            self.summary.copied.append(run_id)
            parts = [f"{t} {n:,}" for t, n in counts.items()] + [f"{t} {n:,} updated" for t, n in updates.items()]
            total = sum(counts.values()) + sum(updates.values())
            self.say(f"{label}: {'would copy' if self.dry_run else 'copied'} {_plural(total, 'row')}: {', '.join(parts)}")
        else:
            self.summary.skipped.append(run_id)
            self.say(f"{label}: already there, nothing to copy")
        if run["status"] == "running":
            self.summary.running.append(run_id)
            self.say(f"run {run_id} is still running in the source: copied what it has recorded so far; "
                     "copy again when it has ended")

    def copy_elements(self, run_id: str, ds: Dataset, tasks: set, running: bool, counts: dict[str, int]) -> None:
        """Copy a run's rows of one dataset, task by task, skipping the element numbers already there."""
        p, q = self.p, self.q
        columns = (*ELEMENT_COLUMNS, *ds.attribute_names)
        kinds = (*ELEMENT_COLUMN_TYPES, *(a.type for a in ds.attributes))
        self.check_extra_columns(run_id, ds)
        src_counts = self.src.result(
            f"SELECT task_id, count(*), min(element_seq) FROM {ds.name} WHERE run_id = {p} GROUP BY task_id", (run_id,)
        ).rows
        dst_counts = {r[0]: int(r[1]) for r in self.dst_rows(
            f"SELECT task_id, count(*) FROM {ds.name} WHERE run_id = {q} GROUP BY task_id", (run_id,))}
        keys = ("run_id", "task_id", "element_seq")
        normalize = _normalizer(ds.name, columns, kinds)
        todo = sum(int(n) - dst_counts.get(t, 0) for t, n, _ in src_counts if int(n) > dst_counts.get(t, 0))
        done = 0
        for task_id, n, first in sorted(src_counts):
            if int(n) <= dst_counts.get(task_id, 0) or (running and task_id not in tasks):
                continue
            have: set[int] = set()
            target = _target(ds.name, columns, kinds, keys, "link" if dst_counts.get(task_id) else "insert")
            if dst_counts.get(task_id):
                have = {int(r[0]) for r in self.dst_rows(
                    f"SELECT element_seq FROM {ds.name} WHERE run_id = {q} AND task_id = {q}", (run_id, task_id))}
            last = int(first) - 1
            while True:
                rows = self.src.result(
                    f"SELECT {', '.join(columns)} FROM {ds.name} WHERE run_id = {p} AND task_id = {p} "
                    f"AND element_seq > {p} ORDER BY element_seq LIMIT {BATCH_ROWS}",
                    (run_id, task_id, last),
                ).rows
                if not rows:
                    break
                last = int(rows[-1][2])
                new = [normalize(r) for r in rows if int(r[2]) not in have]
                self.writes.add(target, new)
                done += len(new)
                counts[ds.name] = counts.get(ds.name, 0) + len(new)
                if todo > BATCH_ROWS and (done == todo or time.monotonic() - self.said_at >= 1.0):
                    self.say(f"  {run_id} {ds.name}: {done:,} of {todo:,} rows")
                    self.said_at = time.monotonic()
                if len(rows) < BATCH_ROWS:
                    break

    def check_extra_columns(self, run_id: str, ds: Dataset) -> None:
        """Refuse to leave behind values in columns the run's dataflow version does not declare."""
        extra = [name for (d, name) in self.src_attributes if d == ds.name and name not in ds.types]
        if not extra:
            return
        row = self.src.result(
            f"SELECT {', '.join(f'count({c})' for c in extra)} FROM {ds.name} WHERE run_id = {self.p}", (run_id,)
        ).rows[0]
        filled = [c for c, n in zip(extra, row) if n]
        if filled:
            raise StoreError(
                f"cannot copy run {run_id}: its rows of dataset {ds.name!r} have values in {', '.join(filled)}, "
                "which its dataflow version does not declare (if the run is still growing its dataflow, copy it again "
                "when it has ended)"
            )

    @functools.cached_property
    def src_attributes(self) -> set[tuple[str, str]]:
        return {(d, n) for d, n in self.src.result("SELECT dataset, name FROM attributes").rows}


def _parent_read(table: str, columns: tuple[str, ...], row: tuple, read: dict[str, set]) -> bool:
    """True if the rows this row refers to in its run were read before it."""
    if table in VIA_PARENT:
        parent, link = VIA_PARENT[table]
        # the runs row itself is copied last, after everything it refers to
        return parent == "runs" or row[columns.index(link)] in read.get(parent, set())
    if table != "tasks" and "task_id" in columns:
        task = row[columns.index("task_id")]
        return task is None or task in read.get("tasks", set())
    return True


def _ended_since(there: tuple, mine: tuple, columns: Sequence[str]) -> bool:
    """True if the destination's row of a run or task is to be replaced by the source's.

    A row that is running in the destination takes the source's as it is now; one that
    the destination marked interrupted (no heartbeat reached it) takes the source's final
    status. A row the destination holds as finished or failed is kept.
    """
    if _same_row(there, mine):
        return False
    status = columns.index("status")
    return there[status] == "running" or (there[status] == "interrupted" and mine[status] != "running")


def _run_tables() -> list[str]:
    """The store tables whose rows belong to one run, parents before children (runs itself apart)."""
    tables = []
    for name, table in TABLES.items():
        if name in DECLARATION_TABLES or name == "runs":
            continue
        if name not in VIA_PARENT and "run_id" not in dict(table.columns):
            raise StoreError(f"trainprov copy does not know which rows of the store table {name!r} belong to a run")
        tables.append(name)
    return tables


# ---- opening the stores -----------------------------------------------------------------


def _open_source(store: str | os.PathLike | Backend | Reader) -> Reader:
    if isinstance(store, Reader):
        return store
    backend = store if isinstance(store, Backend) else open_backend(store)
    path = getattr(backend, "path", None)
    if path is not None and not os.path.exists(path):
        raise StoreError(f"no store at {path} to copy from: the source must be an existing trainprov store")
    try:
        return Reader(backend)
    except StoreError as exc:
        raise StoreError(f"cannot read the source store: {exc}") from None


def _probe_destination(dst: Backend) -> bool:
    """True if the destination holds a trainprov catalog, False if the copy creates one; raise if unreachable."""
    path = getattr(dst, "path", None)
    if path is not None and not os.path.exists(path):
        folder = os.path.dirname(path)
        if not os.path.isdir(folder):
            raise StoreError(f"cannot copy to {path}: the folder {folder} does not exist")
        return False
    try:
        dst.query("SELECT run_id FROM runs LIMIT 1")
    except QueryError:  # a database without trainprov's tables: the copy creates them
        return False
    except StoreError as exc:
        raise StoreError(f"cannot copy to the destination store: {exc}") from None
    return True


def _same_store(a: Backend, b: Backend) -> bool:
    path_a, path_b = getattr(a, "path", None), getattr(b, "path", None)
    if path_a is not None and path_b is not None and os.path.exists(path_a) and os.path.exists(path_b):
        return os.path.samefile(path_a, path_b)
    return type(a) is type(b) and a.url == b.url


def copy_runs(
    src: str | os.PathLike | Backend | Reader,
    dst: str | os.PathLike | Backend,
    runs: str | Sequence[str] | None = None,
    *,
    since: str | _dt.date | None = None,
    dry_run: bool = False,
    progress: Callable[[str], None] | None = None,
) -> CopySummary:
    """Copy runs (ids, unique prefixes or 'latest'; default all) with everything they recorded from one store to another.

    Identifiers are kept; rows the destination already has are skipped, so copying again
    writes only what is new. `since` keeps the runs started at or after a date or time
    (UTC unless it says otherwise). `progress` receives a line of text per step.
    """
    say = progress or (lambda line: None)
    after = _since(since)
    reader = _open_source(src)
    target = dst if isinstance(dst, Backend) else open_backend(dst)
    try:
        if _same_store(reader.backend, target):
            raise StoreError(f"the source and the destination are the same store ({target.url}): nothing to copy")
        copier = _Copier(reader, target, dry_run=dry_run, progress=say)
        selected = copier.select([runs] if isinstance(runs, str) else runs, after)
        if not selected:
            say(f"no runs to copy in {reader.url}" + (f" started since {after.isoformat()}" if after else ""))
            return copier.summary
        copier.dst_has_catalog = _probe_destination(target)
        say(f"{'checking' if dry_run else 'copying'} {_plural(len(selected), 'run')} from {reader.url} to {target.url}")
        copier.declare(selected)
        for run in selected:
            copier.copy_run(run)
        return copier.summary
    finally:
        if not isinstance(src, (Backend, Reader)):
            reader.close()
        if not isinstance(dst, Backend):
            target.close()
