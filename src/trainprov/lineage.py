"""Lineage: what an element or file was derived from, back to the data and hyperparameters.

Computed in the store with one recursive SQL query (standard `WITH RECURSIVE`, window
functions, no dialect-specific function), not from an exported document. The edges are
the ones the PROV export draws:

- an element or file that a task *generated* derives from what that task *used* before
  it was recorded (elements of its `uses` datasets, elements of other tasks it used,
  files it read), and from the latest adaptation of that task in force for it (an
  adaptation recorded by the task itself or by a task that depends on it, recorded before
  it and, when both have an `epoch`, holding from its epoch or earlier: a change for epoch
  N+1 recorded before the epoch-N checkpoint is not that checkpoint's);
- a checkpoint derives from the previous checkpoint of its task;
- a file derives from the files recorded as its sources (`file_derivations`).

An element that stands for a file (a value of a `file` attribute) and that file are one
node. Elements a task used but did not generate (hyperparameters, say) are where the
lineage stops.
"""

from __future__ import annotations

import datetime as _dt
import os
import re
from collections import deque
from dataclasses import asdict, dataclass, field
from typing import Any, Sequence

from .capture.run import file_sha256
from .errors import QueryError
from .export.identifiers import ADAPTATIONS, CHECKPOINT_ROLES, EPOCH, element_identifier, file_identifier, parse_identifier
from .query import Reader
from .spec import ELEMENT_COLUMNS

# an unknown epoch, typed: PostgreSQL must see one column type in every branch of a UNION
_NO_EPOCH = "CAST(NULL AS BIGINT)"


@dataclass
class Node:
    """One entity of a lineage: an element (and its files) or a file recorded on its own."""

    identifier: str  # as in the PROV export: el.DATASET.TASK.SEQ or file.ID
    kind: str  # "element" or "file"
    dataset: str | None
    run_id: str | None
    task_id: str
    transformation: str | None
    iteration: int | None
    seq: int | None
    recorded_at: Any
    values: dict[str, Any] = field(default_factory=dict)
    files: list[dict[str, Any]] = field(default_factory=list)  # file_id, path, role, size_bytes, sha256
    generated: bool = True
    depth: int = 0
    relation: str | None = None  # how it is linked to `via`: used, adapted by, previous checkpoint, derived from
    via: str | None = None  # the identifier of the entity that derives from it


@dataclass
class Lineage:
    """What an entity derives from: the entity, then its ancestors nearest first."""

    start: Node
    ancestors: list[Node]
    edges: list[tuple[str, str, str]]  # (entity, ancestor it derives from, relation)
    note: str | None = None

    def _repr_html_(self) -> str:  # notebooks: the entity and its ancestors as a table
        from .display import lineage_html

        return lineage_html(self)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready form (timestamps as ISO 8601 text)."""

        def plain(node: Node) -> dict[str, Any]:
            d = asdict(node)
            d["recorded_at"] = node.recorded_at.isoformat() if isinstance(node.recorded_at, _dt.datetime) else node.recorded_at
            d["values"] = {k: (v.isoformat() if isinstance(v, _dt.datetime) else v) for k, v in node.values.items()}
            return d

        return {
            "start": plain(self.start),
            "ancestors": [plain(n) for n in self.ancestors],
            "edges": [list(e) for e in self.edges],
            "note": self.note,
        }


# ---- finding the entity ------------------------------------------------------------------


def _datasets(reader: Reader) -> list[str]:
    return [r[0] for r in reader.result("SELECT name FROM datasets ORDER BY name").rows]


def _file_start(reader: Reader, rows: list[dict[str, Any]], what: str) -> tuple[dict[str, Any], str | None]:
    rows = sorted(rows, key=lambda r: (r["recorded_at"], r["file_id"]))
    row = rows[-1]
    note = None
    if len(rows) > 1:
        note = f"{len(rows)} files were recorded with {what}; this is the latest, file {row['file_id']} (name a file id for another)"
    if row["element_seq"] is not None and row["dataset"]:
        return {"kind": "e", "dataset": row["dataset"], "task_id": row["task_id"], "seq": row["element_seq"]}, note
    return {"kind": "f", "file_id": row["file_id"]}, note


def resolve_entity(
    reader: Reader, entity: str, *, run: str | None = None, where: str | None = None
) -> tuple[dict[str, Any], str | None]:
    """Find the element or file an ENTITY names; returns it and a note (or None).

    ENTITY is an export identifier (`el.DATASET.TASK.SEQ`, `file.ID`, with or without the
    `tpid:` prefix), a file id (`RUN.fN`), a dataset name (its last element, in `run` and
    matching the SQL condition `where` if given), a path (a file that exists is found by
    its content, else by its recorded path) or a SHA-256 (or a prefix of 8 or more hex digits).
    """
    p = reader.backend.placeholder
    parsed = parse_identifier(entity)
    if parsed and parsed[0] == "element":
        dataset, task_id, seq = parsed[1]
        if dataset not in _datasets(reader):
            raise QueryError(f"no dataset {dataset!r} in {reader.url} (from the identifier {entity!r})")
        if not reader.result(f"SELECT 1 FROM {dataset} WHERE task_id = {p} AND element_seq = {p}", (task_id, seq)).rows:
            raise QueryError(f"no element {entity!r} in {reader.url}: task {task_id} has no element {seq} in {dataset}")
        return {"kind": "e", "dataset": dataset, "task_id": task_id, "seq": seq}, None
    file_id = parsed[1][0] if parsed else entity
    rows = reader.rows(f"SELECT * FROM files WHERE file_id = {p}", (file_id,))
    if rows:
        return _file_start(reader, rows, f"id {file_id}")
    if parsed:
        raise QueryError(f"no file {file_id!r} in {reader.url} (from the identifier {entity!r})")
    if entity in _datasets(reader):
        return _dataset_start(reader, entity, run, where), None
    if os.path.isfile(entity):
        digest = file_sha256(entity)
        rows = reader.rows(f"SELECT * FROM files WHERE sha256 = {p}", (digest,))
        if rows:
            return _file_start(reader, rows, f"the content of {entity} (sha256 {digest[:12]}...)")
    rows = reader.rows(f"SELECT * FROM files WHERE path = {p}", (os.path.abspath(os.path.expanduser(entity)),))
    if rows:
        return _file_start(reader, rows, f"the path {entity}")
    if re.fullmatch(r"[0-9a-fA-F]{8,64}", entity):
        rows = reader.rows(
            f"SELECT * FROM files WHERE substr(sha256, 1, {p}) = {p}", (len(entity), entity.lower())
        )
        if rows:
            if len({r["sha256"] for r in rows}) > 1:
                raise QueryError(f"sha256 prefix {entity!r} is ambiguous: give more digits")
            return _file_start(reader, rows, f"sha256 {entity}")
    raise QueryError(
        f"unknown entity {entity!r} in {reader.url}: give a file path, a file id (RUN.fN), a sha256, "
        "an export identifier (el.DATASET.TASK.SEQ or file.ID) or a dataset name "
        f"(datasets: {', '.join(_datasets(reader)) or '(none)'})"
    )


def _dataset_start(reader: Reader, dataset: str, run: str | None, where: str | None) -> dict[str, Any]:
    p = reader.backend.placeholder
    conditions, params = [], []
    if run is not None:
        conditions.append(f"run_id = {p}")
        params.append(reader.resolve_run(run))
    if where:
        conditions.append(f"({where})")
    sql = f"SELECT task_id, element_seq FROM {dataset}" + (" WHERE " + " AND ".join(conditions) if conditions else "")
    rows = reader.result(sql + " ORDER BY recorded_at DESC, element_seq DESC LIMIT 1", params).rows
    if not rows:
        scope = (f" in run {params[0]}" if run is not None else "") + (f" where {where}" if where else "")
        raise QueryError(f"dataset {dataset!r} has no element{scope}")
    return {"kind": "e", "dataset": dataset, "task_id": rows[0][0], "seq": rows[0][1]}


def _generated(reader: Reader, start: dict[str, Any]) -> bool:
    """Whether the task that recorded the entity generated it (else it used it)."""
    p = reader.backend.placeholder
    if start["kind"] == "e":
        rows = reader.result(
            "SELECT td.role FROM tasks t JOIN runs r ON r.run_id = t.run_id JOIN transformation_datasets td "
            "ON td.dataflow = r.dataflow AND td.dataflow_version = r.dataflow_version AND td.transformation = t.transformation "
            f"WHERE t.task_id = {p} AND td.dataset = {p}",
            (start["task_id"], start["dataset"]),
        ).rows
        return not rows or rows[0][0] != "uses"
    row = reader.rows(f"SELECT role FROM files WHERE file_id = {p}", (start["file_id"],))[0]
    derived = reader.result(f"SELECT 1 FROM file_derivations WHERE file_id = {p}", (start["file_id"],)).rows
    return row["role"] in CHECKPOINT_ROLES or bool(derived)


# ---- the recursive query -----------------------------------------------------------------


def _lineage_sql(reader: Reader, start: dict[str, Any]) -> tuple[str, list[Any]]:
    """The one statement that walks the derivations back from the start node."""
    p = reader.backend.placeholder
    datasets = set(_datasets(reader))
    file_datasets = sorted(
        {r[0] for r in reader.result("SELECT DISTINCT dataset FROM attributes WHERE type = 'file'").rows} & datasets
    )
    used_datasets = sorted(
        {r[0] for r in reader.result("SELECT DISTINCT dataset FROM transformation_datasets WHERE role = 'uses'").rows}
        & datasets
    )
    usage_datasets = sorted({r[0] for r in reader.result("SELECT DISTINCT dataset FROM usages").rows} & datasets)
    has_adaptations = ADAPTATIONS in datasets
    # datasets whose rows say their epoch: an adaptation counts for a node only from the epoch it holds in
    with_epoch = {r[0] for r in reader.result(
        f"SELECT dataset FROM attributes WHERE name = '{EPOCH}' AND type = 'int'").rows} & datasets

    def epoch_of(dataset: str, alias: str) -> str:
        return f"{alias}.{EPOCH}" if dataset in with_epoch else _NO_EPOCH
    ckpt_roles = ", ".join(f"'{r}'" for r in CHECKPOINT_ROLES)

    file_nodes = [
        f"SELECT f.file_id, f.task_id, f.role, 'e' AS kind, f.task_id AS a, f.element_seq AS b, f.dataset AS dataset, "
        f"x.recorded_at AS at, f.element_seq AS ord, CASE WHEN ro.role = 'uses' THEN 0 ELSE 1 END AS generated, "
        f"{epoch_of(d, 'x')} AS epoch FROM files f JOIN {d} x ON x.run_id = f.run_id AND x.task_id = f.task_id AND x.element_seq = f.element_seq "
        f"LEFT JOIN roles ro ON ro.task_id = f.task_id AND ro.dataset = f.dataset WHERE f.dataset = '{d}'"
        for d in file_datasets
    ]
    file_nodes.append(
        "SELECT f.file_id, f.task_id, f.role, 'f', f.file_id, 0, NULL, f.recorded_at, 0, "
        f"CASE WHEN f.role IN ({ckpt_roles}) OR EXISTS (SELECT 1 FROM file_derivations fd WHERE fd.file_id = f.file_id) "
        f"THEN 1 ELSE 0 END, {_NO_EPOCH} FROM files f WHERE f.element_seq IS NULL"
    )
    # Each step: by_task (1: an input of a task, applying to what the task recorded after it; 0: a
    # step of one node), the task, the child node (by_task 0), when and in what order the input
    # came (at, ord), the parent node and its facts, the relation, and for adaptations when the
    # next adaptation of that task came (next_at, next_ord; elsewhere a copy of at, ord, unused).
    steps = [
        f"SELECT 1 AS by_task, x.task_id AS task_id, '' AS child_kind, '' AS child_a, 0 AS child_b, x.recorded_at AS at, "
        f"x.element_seq AS ord, 'e' AS kind, x.task_id AS a, x.element_seq AS b, x.task_id AS p_task, '{d}' AS dataset, "
        f"x.recorded_at AS p_at, x.element_seq AS p_ord, 0 AS generated, 'used' AS relation, "
        f"x.recorded_at AS next_at, x.element_seq AS next_ord, {epoch_of(d, 'x')} AS p_epoch, {_NO_EPOCH} AS next_epoch "
        f"FROM {d} x JOIN roles ro ON ro.task_id = x.task_id AND ro.dataset = '{d}' AND ro.role = 'uses'"
        for d in used_datasets
    ]
    steps += [
        "SELECT 1, u.task_id, '', '', 0, u.used_at, 0, 'e', u.source_task_id, u.source_element_seq, u.source_task_id, "
        "u.dataset, x.recorded_at, x.element_seq, CASE WHEN ro.role = 'uses' THEN 0 ELSE 1 END, 'used', u.used_at, 0, "
        f"{epoch_of(d, 'x')}, {_NO_EPOCH} FROM usages u JOIN {d} x ON x.run_id = u.run_id AND x.task_id = u.source_task_id "
        "AND x.element_seq = u.source_element_seq "
        f"LEFT JOIN roles ro ON ro.task_id = u.source_task_id AND ro.dataset = u.dataset WHERE u.dataset = '{d}'"
        for d in usage_datasets
    ]
    if has_adaptations:
        steps.append(
            "SELECT 1, ao.task_id, '', '', 0, ao.recorded_at, ao.ord, 'e', ao.rec_task, ao.element_seq, ao.rec_task, "
            f"'{ADAPTATIONS}', ao.recorded_at, ao.element_seq, 1, 'adapted by', "
            "LEAD(ao.recorded_at) OVER w, LEAD(ao.ord) OVER w, ao.epoch, LEAD(ao.epoch) OVER w FROM adapt_of ao "
            "WINDOW w AS (PARTITION BY ao.task_id ORDER BY ao.recorded_at, ao.ord)"
        )
    steps += [
        "SELECT 1, fn.task_id, '', '', 0, fn.at, 0, 'f', fn.a, 0, fn.task_id, fn.dataset, fn.at, 0, 0, 'used', fn.at, 0, "
        f"{_NO_EPOCH}, {_NO_EPOCH} "
        "FROM file_nodes fn WHERE fn.kind = 'f' AND fn.generated = 0",
        "SELECT 0, c.task_id, c.kind, c.a, c.b, c.at, c.ord, c.p_kind, c.p_a, c.p_b, c.task_id, c.p_dataset, c.p_at, "
        f"c.p_ord, 1, 'previous checkpoint', c.at, c.ord, c.p_epoch, {_NO_EPOCH} FROM checkpoints_ c WHERE c.p_kind IS NOT NULL",
        "SELECT 0, c.task_id, c.kind, c.a, c.b, c.at, c.ord, pn.kind, pn.a, pn.b, pn.task_id, pn.dataset, pn.at, pn.ord, "
        f"pn.generated, 'derived from', c.at, c.ord, pn.epoch, {_NO_EPOCH} FROM file_derivations d JOIN file_nodes c ON c.file_id = d.file_id "
        "JOIN file_nodes pn ON pn.file_id = d.derived_from",
    ]
    ctes = [
        "roles AS (SELECT t.task_id, td.dataset, td.role FROM tasks t JOIN runs r ON r.run_id = t.run_id "
        "JOIN transformation_datasets td ON td.dataflow = r.dataflow AND td.dataflow_version = r.dataflow_version "
        "AND td.transformation = t.transformation)",
        "file_nodes AS (" + " UNION ALL ".join(file_nodes) + ")",
        # consecutive checkpoints a task generated: each derives from the one before it
        "checkpoints_ AS (SELECT task_id, kind, a, b, at, ord, LAG(kind) OVER w AS p_kind, LAG(a) OVER w AS p_a, "
        "LAG(b) OVER w AS p_b, LAG(dataset) OVER w AS p_dataset, LAG(at) OVER w AS p_at, LAG(ord) OVER w AS p_ord, "
        "LAG(epoch) OVER w AS p_epoch "
        f"FROM file_nodes WHERE role IN ({ckpt_roles}) AND generated = 1 "
        "WINDOW w AS (PARTITION BY task_id ORDER BY at, ord, file_id))",
    ]
    latest_adaptation = "1 = 1"
    if has_adaptations:
        ctes.append(
            # adaptations, with the task each adapts: the one recording it, and those that task depends on
            "adapt_of AS (SELECT x.task_id AS task_id, x.task_id AS rec_task, x.element_seq, x.recorded_at, "
            f"x.element_seq AS ord, {epoch_of(ADAPTATIONS, 'x')} AS epoch FROM {ADAPTATIONS} x JOIN roles ro ON ro.task_id = x.task_id "
            f"AND ro.dataset = '{ADAPTATIONS}' AND ro.role = 'generates' "
            f"UNION ALL SELECT d.depends_on, x.task_id, x.element_seq, x.recorded_at, 0, {epoch_of(ADAPTATIONS, 'x')} "
            f"FROM {ADAPTATIONS} x JOIN roles ro ON ro.task_id = x.task_id AND ro.dataset = '{ADAPTATIONS}' "
            "AND ro.role = 'generates' JOIN task_dependencies d ON d.task_id = x.task_id)"
        )
        # only the latest adaptation in force for the node: recorded before it and holding from
        # its epoch or earlier (a change for epoch N+1 is often recorded before the epoch-N
        # checkpoint); the next one came at or after the node, or holds only from a later epoch
        latest_adaptation = (
            "(s.relation <> 'adapted by' OR ((s.p_epoch IS NULL OR l.epoch IS NULL OR s.p_epoch <= l.epoch) "
            "AND (s.next_at IS NULL OR l.at < s.next_at OR (l.at = s.next_at AND l.ord <= s.next_ord) "
            "OR (s.next_epoch IS NOT NULL AND l.epoch IS NOT NULL AND s.next_epoch > l.epoch))))"
        )
    ctes.append("steps AS (" + " UNION ALL ".join(steps) + ")")

    if start["kind"] == "e":
        d = start["dataset"]
        seed = (
            f"SELECT 'e', x.task_id, x.element_seq, x.task_id, '{d}', x.recorded_at, x.element_seq, "
            f"CASE WHEN ro.role = 'uses' THEN 0 ELSE 1 END, {epoch_of(d, 'x')} FROM {d} x LEFT JOIN roles ro ON ro.task_id = x.task_id "
            f"AND ro.dataset = '{d}' WHERE x.run_id = {p} AND x.task_id = {p} AND x.element_seq = {p}"
        )
        params: list[Any] = [start["run_id"], start["task_id"], start["seq"]]
    else:
        seed = f"SELECT kind, a, b, task_id, dataset, at, ord, generated, epoch FROM file_nodes WHERE file_id = {p}"
        params = [start["file_id"]]
    # an edge of the lineage: a task's earlier inputs, or a step recorded for this very node
    joined = (
        "((s.by_task = 1 AND l.generated = 1 AND s.task_id = l.task_id "
        "AND (s.at < l.at OR (s.at = l.at AND s.ord < l.ord)) AND " + latest_adaptation + ") "
        "OR (s.by_task = 0 AND s.child_kind = l.kind AND s.child_a = l.a AND s.child_b = l.b))"
    )
    # UNION keeps each node once, so the walk ends even where equal timestamps would make a cycle
    ctes.append(
        "ancestors (kind, a, b, task_id, dataset, at, ord, generated, epoch) AS (" + seed + " UNION "
        "SELECT s.kind, s.a, s.b, s.p_task, s.dataset, s.p_at, s.p_ord, s.generated, s.p_epoch "
        f"FROM ancestors l JOIN steps s ON {joined})"
    )
    sql = (
        "WITH RECURSIVE " + ",\n".join(ctes) + "\n"
        "SELECT DISTINCT l.kind, l.a, l.b, l.dataset, l.generated, s.kind, s.a, s.b, s.p_task, s.dataset, s.generated, s.relation "
        f"FROM ancestors l JOIN steps s ON {joined} ORDER BY 1, 2, 3, 6, 7, 8"
    )
    return sql, params


# ---- describing the nodes ----------------------------------------------------------------


def _describe(reader: Reader, keys: Sequence[tuple[str, str, int, str | None]]) -> dict[tuple[str, str, int], Node]:
    """Nodes with their values, files, tasks and runs, for (kind, a, b, dataset) keys."""
    p = reader.backend.placeholder
    nodes: dict[tuple[str, str, int], Node] = {}
    task_ids = sorted({a for kind, a, _, _ in keys if kind == "e"})
    file_ids = sorted({a for kind, a, _, _ in keys if kind == "f"})
    files_by_element: dict[tuple[str, int], list[dict[str, Any]]] = {}
    files_by_id: dict[str, dict[str, Any]] = {}
    for chunk in _chunks(task_ids):
        for row in reader.rows(f"SELECT * FROM files WHERE task_id IN {_in(reader, chunk)} AND element_seq IS NOT NULL", chunk):
            files_by_element.setdefault((row["task_id"], row["element_seq"]), []).append(row)
    for chunk in _chunks(file_ids):
        for row in reader.rows(f"SELECT * FROM files WHERE file_id IN {_in(reader, chunk)}", chunk):
            files_by_id[row["file_id"]] = row
    tasks: dict[str, dict[str, Any]] = {}
    all_tasks = sorted(set(task_ids) | {f["task_id"] for f in files_by_id.values()})
    for chunk in _chunks(all_tasks):
        for row in reader.rows(
            f"SELECT task_id, run_id, transformation, iteration FROM tasks WHERE task_id IN {_in(reader, chunk)}", chunk
        ):
            tasks[row["task_id"]] = row
    by_dataset: dict[tuple[str, str], list[int]] = {}
    for kind, a, b, dataset in keys:
        if kind == "e":
            by_dataset.setdefault((dataset, a), []).append(b)
    for (dataset, task_id), seqs in sorted(by_dataset.items()):
        run_id = tasks.get(task_id, {}).get("run_id")
        for chunk in _chunks(sorted(set(seqs))):
            for row in reader.rows(
                f"SELECT * FROM {dataset} WHERE run_id = {p} AND task_id = {p} AND element_seq IN {_in(reader, chunk)}",
                [run_id, task_id, *chunk],
            ):
                task = tasks.get(task_id, {})
                files = files_by_element.get((task_id, row["element_seq"]), [])
                nodes[("e", task_id, row["element_seq"])] = Node(
                    identifier=element_identifier(dataset, task_id, row["element_seq"]),
                    kind="element", dataset=dataset, run_id=row["run_id"], task_id=task_id,
                    transformation=task.get("transformation"), iteration=task.get("iteration"), seq=row["element_seq"],
                    recorded_at=row["recorded_at"],
                    values={k: v for k, v in row.items() if k not in ELEMENT_COLUMNS and v is not None},
                    files=[_file_facts(f) for f in files],
                )
    for file_id, row in files_by_id.items():
        task = tasks.get(row["task_id"], {})
        nodes[("f", file_id, 0)] = Node(
            identifier=file_identifier(file_id), kind="file", dataset=None, run_id=row["run_id"], task_id=row["task_id"],
            transformation=task.get("transformation"), iteration=task.get("iteration"), seq=None,
            recorded_at=row["recorded_at"], files=[_file_facts(row)],
        )
    return nodes


def _file_facts(row: dict[str, Any]) -> dict[str, Any]:
    return {k: row[k] for k in ("file_id", "path", "role", "size_bytes", "sha256")}


def _in(reader: Reader, values: Sequence[Any]) -> str:
    return "(" + ", ".join([reader.backend.placeholder] * len(values)) + ")"


def _chunks(items: Sequence[Any], size: int = 500) -> list[Sequence[Any]]:
    return [items[lo : lo + size] for lo in range(0, len(items), size)]


# ---- public API --------------------------------------------------------------------------


def lineage(
    entity: str,
    *,
    store: str | os.PathLike | Reader | None = None,
    run: str | None = None,
    where: str | None = None,
) -> Lineage:
    """What an entity (checkpoint file, metrics row, test result, ...) was derived from, from the store."""
    with Reader.open(store) as reader:
        start, note = resolve_entity(reader, entity, run=run, where=where)
        start["generated"] = _generated(reader, start)
        if start["kind"] == "e":  # the run leads every dataset table's key
            found = reader.result(f"SELECT run_id FROM tasks WHERE task_id = {reader.backend.placeholder}", (start["task_id"],)).rows
            start["run_id"] = found[0][0] if found else None
        sql, params = _lineage_sql(reader, start)
        edges_rows = reader.result(sql, params).rows
        start_key = ("e", start["task_id"], start["seq"]) if start["kind"] == "e" else ("f", start["file_id"], 0)
        children: dict[tuple[str, str, int], list[tuple[tuple[str, str, int], str]]] = {}
        datasets: dict[tuple[str, str, int], str | None] = {start_key: start.get("dataset")}
        generated: dict[tuple[str, str, int], bool] = {}
        for ck, ca, cb, cds, cgen, pk, pa, pb, _ptask, pds, pgen, relation in edges_rows:
            child, parent = (ck, ca, int(cb)), (pk, pa, int(pb))
            children.setdefault(child, []).append((parent, relation))
            datasets.setdefault(child, cds or None)
            datasets.setdefault(parent, pds or None)
            generated[child], generated[parent] = bool(cgen), bool(pgen)
        # nearest first: breadth-first from the entity over the edges the query returned
        depth = {start_key: 0}
        reached: dict[tuple[str, str, int], tuple[str, tuple[str, str, int]]] = {}
        queue = deque([start_key])
        while queue:
            node = queue.popleft()
            for parent, relation in children.get(node, []):
                if parent not in depth:
                    depth[parent] = depth[node] + 1
                    reached[parent] = (relation, node)
                    queue.append(parent)
        described = _describe(reader, [(k, a, b, datasets.get((k, a, b))) for (k, a, b) in depth])
    if start_key not in described:
        raise QueryError(f"entity {entity!r} vanished while its lineage was read")
    first = described[start_key]
    first.generated = generated.get(start_key, start["generated"])
    ancestors = []
    for key, (relation, child) in reached.items():
        node = described.get(key)
        if node is None:
            continue
        node.depth, node.relation, node.via = depth[key], relation, described[child].identifier if child in described else None
        node.generated = generated.get(key, True)
        ancestors.append(node)
    ancestors.sort(key=lambda n: (n.depth, _sort_time(n.recorded_at), n.identifier))
    edges = sorted(
        {
            (described[c].identifier, described[pk].identifier, rel)
            for c, parents in children.items()
            for pk, rel in parents
            if c in described and pk in described
        }
    )
    return Lineage(first, ancestors, edges, note)


def _sort_time(value: Any) -> float:
    return value.timestamp() if isinstance(value, _dt.datetime) else 0.0


def _short(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, _dt.datetime):
        return value.astimezone(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S")
    text = str(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _summary(node: Node) -> str:
    parts = [f"{k}={_short(v)}" for k, v in node.values.items() if not any(f["path"] == v for f in node.files)]
    parts += [f"{os.path.basename(f['path'])} (sha256 {f['sha256'][:12]}...)" for f in node.files]
    return "  ".join(parts)


def _what(node: Node) -> str:
    task = f"{node.transformation} #{node.iteration}" if node.transformation else node.task_id
    return f"{node.dataset or 'file'} of {task}"


def format_lineage(result: Lineage, *, show_all: bool = False, group_limit: int = 4) -> str:
    """The lineage as text, nearest ancestors first; long runs of similar ancestors shortened unless show_all."""
    start = result.start
    lines = [f"lineage of {start.identifier}   {_what(start)}, run {start.run_id}"]
    if _summary(start):
        lines.append(f"  {_summary(start)}")
    if result.note:
        lines.append(f"  note: {result.note}")
    if not result.ancestors:
        reason = "it was recorded as an input of its task" if not start.generated else "nothing was recorded before it"
        lines.append(f"\nno ancestors: {reason}")
        return "\n".join(lines)
    lines.append(f"\n{len(result.ancestors)} ancestor{'s' * (len(result.ancestors) != 1)}, nearest first:")
    rows = [(str(n.depth), n.relation or "", n.identifier, _what(n), _summary(n), n) for n in result.ancestors]
    width = [max(len(r[i]) for r in rows) for i in range(4)]
    groups: dict[tuple[str | None, str | None, str], list[Node]] = {}
    for n in result.ancestors:
        groups.setdefault((n.relation, n.dataset, n.task_id), []).append(n)
    hidden: dict[tuple[str | None, str | None, str], int] = {}
    for depth, relation, ident, what, summary, n in rows:
        key = (n.relation, n.dataset, n.task_id)
        members = groups[key]
        if not show_all and len(members) > group_limit + 1 and n not in members[:group_limit] and n is not members[-1]:
            hidden[key] = hidden.get(key, 0) + 1
            if hidden[key] == 1:
                lines.append(
                    f"  {'':>{width[0]}}  {'':<{width[1]}}  ... {len(members) - group_limit - 1} more {what} "
                    f"({relation}; --all shows them)"
                )
            continue
        lines.append(f"  {depth:>{width[0]}}  {relation:<{width[1]}}  {ident:<{width[2]}}  {what:<{width[3]}}  {summary}".rstrip())
    return "\n".join(lines)
