"""The consistent snapshot an export reads from the store, also while a run writes.

Each statement sees its own committed state; reading parents before children (runs,
tasks, then elements, usages, files, derivations) and dropping children whose parents
were not read makes the whole a consistent snapshot.
"""

from __future__ import annotations

import datetime as _dt
import json
from dataclasses import dataclass, field
from typing import Any, Iterable, Sequence

from ..errors import ExportError, QueryError
from ..query import Reader


@dataclass
class Element:
    dataset: str
    run_id: str
    task_id: str
    seq: int
    recorded_at: Any
    values: dict[str, Any]


@dataclass
class Summary:
    dataset: str
    task_id: str
    count: int
    first_seq: int
    last_seq: int
    first_at: Any
    last_at: Any
    ranges: dict[str, tuple[Any, Any]]


@dataclass
class Snapshot:
    """What the store held for some runs, with every reference pointing at something read."""

    runs: list[dict[str, Any]] = field(default_factory=list)
    plans: dict[tuple[str, int], dict[str, Any]] = field(default_factory=dict)
    roles: dict[tuple[str, int, str, str], str] = field(default_factory=dict)  # (df, v, transformation, ds) -> role
    types: dict[str, dict[str, str]] = field(default_factory=dict)  # dataset -> attribute -> type
    tasks: dict[str, dict[str, Any]] = field(default_factory=dict)
    dependencies: list[tuple[str, str]] = field(default_factory=list)
    elements: dict[tuple[str, int], Element] = field(default_factory=dict)  # (task_id, seq) -> element
    summaries: dict[tuple[str, str], Summary] = field(default_factory=dict)  # (dataset, task_id)
    usages: list[dict[str, Any]] = field(default_factory=list)
    files: dict[str, dict[str, Any]] = field(default_factory=dict)
    foreign_files: dict[str, dict[str, Any]] = field(default_factory=dict)  # sources in runs not exported
    derivations: list[tuple[str, str]] = field(default_factory=list)
    agents: list[dict[str, Any]] = field(default_factory=list)
    groups: dict[str, dict[str, Any]] = field(default_factory=dict)  # the run groups of the runs read
    tags: dict[str, dict[str, str]] = field(default_factory=dict)  # run id -> tag -> value

    def role(self, task_id: str, dataset: str) -> str | None:
        """'uses' or 'generates': what the task's transformation does with a dataset."""
        task = self.tasks[task_id]
        run = task["_run"]
        return self.roles.get((run["dataflow"], run["dataflow_version"], task["transformation"], dataset))


def _in(reader: Reader, values: Sequence[Any]) -> str:
    return "(" + ", ".join([reader.backend.placeholder] * len(values)) + ")"


def _chunks(items: Sequence[Any], size: int = 500) -> Iterable[Sequence[Any]]:
    for lo in range(0, len(items), size):
        yield items[lo : lo + size]


def timestamp(value: Any) -> Any:
    """A datetime from what an aggregate returns (SQLite gives the stored text)."""
    if isinstance(value, str):
        try:
            value = _dt.datetime.fromisoformat(value)
        except ValueError:
            return value
    if isinstance(value, _dt.datetime) and value.tzinfo is None:
        value = value.replace(tzinfo=_dt.timezone.utc)
    return value


def read_snapshot(
    reader: Reader,
    run_ids: Sequence[str],
    plans: Sequence[tuple[str, int]],
    *,
    members: bool,
    threshold: int,
    bulky: Sequence[str],
) -> Snapshot:
    """Read runs, then what hangs off them, keeping only rows whose references were read.

    Each statement sees its own committed state; reading parents before children and
    dropping children whose parents were not read makes the whole a consistent snapshot
    even while a run writes.
    """
    snap = Snapshot()
    p = reader.backend.placeholder
    if run_ids:
        rows = reader.rows(f"SELECT * FROM runs WHERE run_id IN {_in(reader, run_ids)} ORDER BY started_at, run_id", run_ids)
        snap.runs = rows
    wanted = set(plans) | {(r["dataflow"], r["dataflow_version"]) for r in snap.runs}
    for name, version in sorted(wanted):
        found = reader.rows(f"SELECT * FROM dataflows WHERE name = {p} AND version = {p}", (name, version))
        if found:
            snap.plans[(name, version)] = found[0]
    # a run whose dataflow grew while it ran was exported under each version it passed
    # through: those stay in the document (as earlier revisions), so that every identifier
    # an earlier export published is still there
    for name in sorted({r["dataflow"] for r in snap.runs}):
        current = [snap.plans[(n, v)] for n, v in sorted(snap.plans) if n == name]
        for row in reader.rows(f"SELECT * FROM dataflows WHERE name = {p} ORDER BY version", (name,)):
            key = (name, row["version"])
            if key not in snap.plans and any(spec_contains(plan_spec(c), plan_spec(row)) for c in current):
                snap.plans[key] = row
    snap.plans = dict(sorted(snap.plans.items()))
    names = sorted({n for n, _ in wanted})
    if names:
        for row in reader.result(
            "SELECT dataflow, dataflow_version, transformation, dataset, role FROM transformation_datasets "
            f"WHERE dataflow IN {_in(reader, names)}",
            names,
        ).rows:
            if (row[0], row[1]) in snap.plans:
                snap.roles[(row[0], row[1], row[2], row[3])] = row[4]
    for dataset, name, kind in reader.result("SELECT dataset, name, type FROM attributes ORDER BY dataset, position").rows:
        snap.types.setdefault(dataset, {})[name] = kind
    if not snap.runs:
        return snap

    runs = {r["run_id"]: r for r in snap.runs}
    transformations = set()
    for (name, version), row in snap.plans.items():
        spec = plan_spec(row)
        transformations |= {(name, version, t["name"]) for t in spec.get("transformations", [])}
    for task in reader.rows(
        f"SELECT * FROM tasks WHERE run_id IN {_in(reader, run_ids)} ORDER BY started_at, task_id", run_ids
    ):
        run = runs[task["run_id"]]
        # a task of a transformation the run's plan (as read) does not have came after it
        if (run["dataflow"], run["dataflow_version"], task["transformation"]) in transformations:
            task["_run"] = run
            snap.tasks[task["task_id"]] = task
    for task_id, depends_on in reader.result(
        "SELECT d.task_id, d.depends_on FROM task_dependencies d JOIN tasks t ON t.task_id = d.task_id "
        f"WHERE t.run_id IN {_in(reader, run_ids)} ORDER BY d.task_id, d.depends_on",
        run_ids,
    ).rows:
        if task_id in snap.tasks and depends_on in snap.tasks:
            snap.dependencies.append((task_id, depends_on))

    versions = {(r["dataflow"], r["dataflow_version"]) for r in snap.runs}
    datasets = sorted({ds for (df, v, _, ds) in snap.roles if (df, v) in versions})
    summarised: set[tuple[str, str]] = set()
    for ds in datasets:
        counts = reader.result(
            f"SELECT task_id, count(*) FROM {ds} WHERE run_id IN {_in(reader, run_ids)} GROUP BY task_id", run_ids
        ).rows
        big = sorted(t for t, n in counts if t in snap.tasks and (ds in bulky or n > threshold))
        summarised.update((ds, t) for t in big)
        if members or not big:
            sql, params = f"SELECT * FROM {ds} WHERE run_id IN {_in(reader, run_ids)}", list(run_ids)
        else:
            sql = f"SELECT * FROM {ds} WHERE run_id IN {_in(reader, run_ids)} AND task_id NOT IN {_in(reader, big)}"
            params = [*run_ids, *big]
        _add_elements(snap, ds, reader.result(sql + " ORDER BY run_id, task_id, element_seq", params))
        if big:
            _add_summaries(snap, reader, ds, run_ids, big)

    # references into summarised datasets: fetched one by one, since they are few
    referenced: dict[tuple[str, str], set[int]] = {}
    for usage in reader.rows(
        f"SELECT * FROM usages WHERE run_id IN {_in(reader, run_ids)} ORDER BY used_at, task_id, dataset, "
        "source_task_id, source_element_seq",
        run_ids,
    ):
        if usage["task_id"] not in snap.tasks or usage["source_task_id"] not in snap.tasks:
            continue
        key = (usage["source_task_id"], usage["source_element_seq"])
        if key not in snap.elements:
            if (usage["dataset"], usage["source_task_id"]) not in summarised:
                continue  # written after the elements were read: the next export has it
            referenced.setdefault((usage["dataset"], usage["source_task_id"]), set()).add(key[1])
        snap.usages.append(usage)
    for row in reader.rows(f"SELECT * FROM files WHERE run_id IN {_in(reader, run_ids)} ORDER BY recorded_at, file_id", run_ids):
        if row["task_id"] not in snap.tasks:
            continue
        if row["element_seq"] is not None and (row["task_id"], row["element_seq"]) not in snap.elements:
            if (row["dataset"], row["task_id"]) not in summarised:
                continue  # its element was not read yet
            referenced.setdefault((row["dataset"], row["task_id"]), set()).add(row["element_seq"])
        snap.files[row["file_id"]] = row
    for (ds, task_id), seqs in sorted(referenced.items()):
        for chunk in _chunks(sorted(seqs)):
            _add_elements(snap, ds, reader.result(
                f"SELECT * FROM {ds} WHERE run_id = {p} AND task_id = {p} AND element_seq IN {_in(reader, chunk)}",
                [snap.tasks[task_id]["run_id"], task_id, *chunk],
            ))
    snap.usages = [u for u in snap.usages if (u["source_task_id"], u["source_element_seq"]) in snap.elements]
    snap.files = {
        k: f for k, f in snap.files.items() if f["element_seq"] is None or (f["task_id"], f["element_seq"]) in snap.elements
    }

    foreign: set[str] = set()
    for file_id, source in reader.result(
        "SELECT d.file_id, d.derived_from FROM file_derivations d JOIN files f ON f.file_id = d.file_id "
        f"WHERE f.run_id IN {_in(reader, run_ids)} ORDER BY d.file_id, d.derived_from",
        run_ids,
    ).rows:
        if file_id in snap.files:
            snap.derivations.append((file_id, source))
            if source not in snap.files:
                foreign.add(source)
    for chunk in _chunks(sorted(foreign)):
        for row in reader.rows(f"SELECT * FROM files WHERE file_id IN {_in(reader, chunk)}", list(chunk)):
            if row["run_id"] not in runs:  # a file of this run not read yet stays out
                snap.foreign_files[row["file_id"]] = row
    snap.derivations = [(f, s) for f, s in snap.derivations if s in snap.files or s in snap.foreign_files]
    snap.agents = reader.rows(
        f"SELECT * FROM agents WHERE run_id IN {_in(reader, run_ids)} ORDER BY run_id, agent_id", run_ids
    )
    names = sorted({r["group_name"] for r in snap.runs if r.get("group_name")})
    if names:
        for row in reader.rows(f"SELECT * FROM run_groups WHERE group_name IN {_in(reader, names)}", names):
            snap.groups[row["group_name"]] = row
    if run_ids and any("group_name" in r for r in snap.runs):  # a store older than run tags has none
        snap.tags = reader.tags(run_ids)
    return snap


def _add_elements(snap: Snapshot, dataset: str, result: Any) -> None:
    columns = result.columns
    i_run, i_task, i_seq, i_at = (columns.index(c) for c in ("run_id", "task_id", "element_seq", "recorded_at"))
    attributes = [(j, c) for j, c in enumerate(columns) if c not in ("run_id", "task_id", "element_seq", "recorded_at")]
    tasks, elements = snap.tasks, snap.elements
    for row in result.rows:
        task_id = row[i_task]
        if task_id not in tasks:
            continue  # its task started after the tasks were read
        values = {c: row[j] for j, c in attributes if row[j] is not None}
        elements[(task_id, row[i_seq])] = Element(dataset, row[i_run], task_id, row[i_seq], row[i_at], values)


def _add_summaries(snap: Snapshot, reader: Reader, dataset: str, run_ids: Sequence[str], tasks: Sequence[str]) -> None:
    numeric = [a for a, kind in snap.types.get(dataset, {}).items() if kind in ("int", "float", "datetime")]
    ranges = "".join(f", min({a}), max({a})" for a in numeric)
    result = reader.result(
        f"SELECT task_id, count(*), min(element_seq), max(element_seq), min(recorded_at), max(recorded_at){ranges} "
        f"FROM {dataset} WHERE run_id IN {_in(reader, run_ids)} AND task_id IN {_in(reader, tasks)} GROUP BY task_id",
        [*run_ids, *tasks],
    )
    for row in result.rows:
        kinds = snap.types[dataset]
        found = {}
        for k, a in enumerate(numeric):
            low, high = row[6 + 2 * k], row[7 + 2 * k]
            if low is not None:
                if kinds[a] == "datetime":
                    low, high = timestamp(low), timestamp(high)
                found[a] = (low, high)
        snap.summaries[(dataset, row[0])] = Summary(
            dataset, row[0], row[1], row[2], row[3], timestamp(row[4]), timestamp(row[5]), found
        )


def plan_spec(row: dict[str, Any]) -> dict[str, Any]:
    """The specification of a `dataflows` row as a dict (SQLite gives its JSON text)."""
    return json.loads(row["spec"]) if isinstance(row["spec"], str) else row["spec"]


def spec_contains(new: dict[str, Any], old: dict[str, Any]) -> bool:
    """Whether a dataflow specification holds all of another: its transformations, their datasets, their attributes.

    A running run's dataflow may only grow (`Run.evolve`), so every version a run passed
    through is contained in the version it runs now.
    """
    transformations = {t["name"]: t for t in new.get("transformations", [])}
    for t in old.get("transformations", []):
        grown = transformations.get(t["name"])
        if grown is None or any(not set(t.get(r, [])) <= set(grown.get(r, [])) for r in ("uses", "generates")):
            return False
    datasets = {d["name"]: d for d in new.get("datasets", [])}
    for d in old.get("datasets", []):
        grown = datasets.get(d["name"])
        if grown is None:
            return False
        attributes = {(a["name"], a["type"]) for a in grown.get("attributes", [])}
        if not {(a["name"], a["type"]) for a in d.get("attributes", [])} <= attributes:
            return False
    return True


def select(
    reader: Reader, runs: str | Sequence[str] | None, dataflow: str | None, version: int | None
) -> tuple[list[str], list[tuple[str, int]]]:
    """The run ids and dataflow versions an export names: run references and/or a dataflow."""
    p = reader.backend.placeholder
    refs = [runs] if isinstance(runs, str) else list(runs or [])
    run_ids: list[str] = []
    for ref in refs:
        run_id = reader.resolve_run(ref)
        if run_id not in run_ids:
            run_ids.append(run_id)
    plans: list[tuple[str, int]] = []
    if dataflow is not None:
        sql = f"SELECT name, version FROM dataflows WHERE name = {p}"
        params: list[Any] = [dataflow]
        if version is not None:
            sql += f" AND version = {p}"
            params.append(int(version))
        plans = [(r[0], int(r[1])) for r in reader.result(sql + " ORDER BY version", params).rows]
        if not plans:
            known = [r[0] for r in reader.result("SELECT DISTINCT name FROM dataflows ORDER BY name").rows]
            what = f"dataflow {dataflow!r}" + (f" version {version}" if version is not None else "")
            raise QueryError(f"no {what} in {reader.url}; dataflows: {', '.join(known) or '(none)'}")
        sql = f"SELECT run_id FROM runs WHERE dataflow = {p}" + (f" AND dataflow_version = {p}" if version is not None else "")
        for (run_id,) in reader.result(sql + " ORDER BY started_at, run_id", params).rows:
            if run_id not in run_ids:
                run_ids.append(run_id)
    if not run_ids and not plans:
        raise ExportError("nothing to export: name one or more runs (an id, a unique prefix, or 'latest') or a dataflow")
    return run_ids, plans


