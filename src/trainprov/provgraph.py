"""A run's provenance at the level of tasks, and a dataflow's structure, as nodes and edges read from the store.

The full W3C PROV graph of a run (one node per element) comes from export/; the graph
built here summarises it so that it stays readable for long runs: one node per task, one
per (task, dataset) with its number of elements, one per group of files, one per agent.
Each node carries a read-only statement listing its rows (for the SQL console). The
dashboard (ui/graphs.py, ui/graph_layout.py) and the HTML report draw it; a notebook can
walk it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Iterable

from .errors import GraphError
from .query import Reader


@dataclass
class Node:
    """One node: its PROV kind, the lines of its label, and the details shown on hover."""

    id: str
    kind: str
    label: list[str]
    details: dict[str, Any] = field(default_factory=dict)
    #: the status the node is coloured by (a run's or task's; the worst of collapsed tasks)
    status: str | None = None
    #: a read-only statement that lists the node's rows (offered as a link to the SQL console)
    sql: str | None = None
    #: the transformation whose collapsed tasks this node stands for (a click expands them)
    expand: str | None = None


@dataclass
class Edge:
    """An arrow from `source` to `target`, named by its PROV relation (or dataflow role)."""

    source: str
    target: str
    relation: str


@dataclass
class Graph:
    """Nodes and edges; `flow` says whether arrows follow the flow of data (dataflow) or point to the past (PROV)."""

    title: str
    nodes: list[Node]
    edges: list[Edge]
    flow: bool = False

    def counts(self) -> dict[str, int]:
        """How many nodes of each kind."""
        counts: dict[str, int] = {}
        for node in self.nodes:
            counts[node.kind] = counts.get(node.kind, 0) + 1
        return counts


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'s' * (n != 1)}"


def dataflow_graph(reader: Reader, dataflow: str, version: int) -> Graph:
    """The dataflow as data flows: datasets into the transformations that use them, out of those that generate them."""
    p = reader.backend.placeholder
    transformations = reader.rows(
        f"SELECT name, description FROM transformations WHERE dataflow = {p} AND dataflow_version = {p} ORDER BY name",
        (dataflow, version),
    )
    if not transformations:
        raise GraphError(f"no dataflow {dataflow!r} version {version} in {reader.url}")
    links = reader.rows(
        "SELECT transformation, dataset, role FROM transformation_datasets "
        f"WHERE dataflow = {p} AND dataflow_version = {p} ORDER BY transformation, dataset",
        (dataflow, version),
    )
    # the attributes this version declared (the store's tables may have more, from later versions)
    spec = reader.rows(f"SELECT spec FROM dataflows WHERE name = {p} AND version = {p}", (dataflow, version))
    declared = json.loads(spec[0]["spec"]) if spec and isinstance(spec[0]["spec"], str) else (spec[0]["spec"] if spec else {})
    columns = {d["name"]: {a["name"]: a["type"] for a in d.get("attributes", [])}
               for d in (declared or {}).get("datasets", [])}
    nodes = [Node(f"t:{t['name']}", "activity", [t["name"]],
                  {"transformation": t["name"], "description": t["description"] or ""}) for t in transformations]
    for dataset in sorted({link["dataset"] for link in links}):
        attributes = columns.get(dataset, {})
        nodes.append(Node(f"d:{dataset}", "entity", [dataset, _plural(len(attributes), "attribute")],
                          {"dataset": dataset, **attributes}))
    edges = [Edge(f"d:{link['dataset']}", f"t:{link['transformation']}", "used by") if link["role"] == "uses"
             else Edge(f"t:{link['transformation']}", f"d:{link['dataset']}", "generates") for link in links]
    return Graph(f"dataflow {dataflow} v{version}", nodes, edges, flow=True)


def _quote(value: Any) -> str:
    """A SQL string literal (for the statements offered as links: the console only fills its editor with them)."""
    return "'" + str(value).replace("'", "''") + "'"


#: a transformation with more tasks than this in a run is drawn as one node with their count
COLLAPSE_AFTER = 3


def run_graph(reader: Reader, run_id: str, expand: Iterable[str] = ()) -> Graph:
    """A run's provenance at the level of tasks: tasks, what each used and generated (counted), files and agents.

    The tasks of a transformation that ran more than COLLAPSE_AFTER times (100 `adapt`s, one
    `train` per rank) are one node with their count, as are the elements they used or
    generated, unless the transformation is in `expand`.
    """
    p = reader.backend.placeholder
    found = reader.rows(f"SELECT * FROM runs WHERE run_id = {p}", (run_id,))
    if not found:
        raise GraphError(f"no run {run_id!r} in {reader.url}")
    run = found[0]
    rid = _quote(run_id)
    tasks = reader.rows(
        "SELECT task_id, transformation, iteration, status, started_at, duration_s FROM tasks "
        f"WHERE run_id = {p} ORDER BY started_at, task_id", (run_id,),
    )
    roles = {(r["transformation"], r["dataset"]): r["role"] for r in reader.rows(
        "SELECT transformation, dataset, role FROM transformation_datasets "
        f"WHERE dataflow = {p} AND dataflow_version = {p}", (run["dataflow"], run["dataflow_version"]))}
    transformation_of = {t["task_id"]: t["transformation"] for t in tasks}
    expanded = set(expand)
    by_transformation: dict[str, list[dict[str, Any]]] = {}
    for t in tasks:
        by_transformation.setdefault(t["transformation"], []).append(t)
    collapsed = {name for name, members in by_transformation.items()
                 if len(members) > COLLAPSE_AFTER and name not in expanded}
    # the node a task is drawn as: its own, or its transformation's
    node_of = {t["task_id"]: (f"tasks:{t['transformation']}" if t["transformation"] in collapsed else t["task_id"])
               for t in tasks}

    def tasks_of(key: str) -> str:
        """SQL naming the tasks of a node key (a task id, or a collapsed transformation)."""
        if key.startswith("tasks:"):
            return (f"task_id IN (SELECT task_id FROM tasks WHERE run_id = {rid} "
                    f"AND transformation = {_quote(key[len('tasks:'):])})")
        return f"task_id = {_quote(key)}"

    run_node = f"run:{run_id}"
    nodes = [Node(run_node, "run", [f"run {run['name'] or run_id}", f"{run['dataflow']} v{run['dataflow_version']}, {run['status']}"],
                  {"run": run_id, "status": run["status"], "started": run["started_at"], "duration_s": run["duration_s"],
                   "host": run.get("host")}, status=run["status"],
                  sql=f"SELECT * FROM runs WHERE run_id = {rid}")]
    edges: list[Edge] = []
    for name, members in by_transformation.items():
        if name not in collapsed:
            continue
        statuses: dict[str, int] = {}
        for t in members:
            statuses[t["status"]] = statuses.get(t["status"], 0) + 1
        seconds = sum(t["duration_s"] for t in members if isinstance(t["duration_s"], (int, float)))
        worst = next((s for s in ("failed", "interrupted", "running") if s in statuses), None)
        nodes.append(Node(f"task:tasks:{name}", "activity", [f"{name} \u00d7{len(members)}", ", ".join(
            f"{n} {s}" for s, n in statuses.items())],
            {"transformation": name, "tasks": len(members), **{f"tasks {s}": n for s, n in statuses.items()},
             "first started": members[0]["started_at"], "last started": members[-1]["started_at"],
             "total duration_s": seconds}, status=worst,
            sql=f"SELECT * FROM tasks WHERE run_id = {rid} AND transformation = {_quote(name)} ORDER BY started_at",
            expand=name))
    for t in tasks:
        if t["transformation"] in collapsed:
            continue
        seconds = f" {t['duration_s']:.1f} s" if isinstance(t["duration_s"], (int, float)) else ""
        nodes.append(Node(f"task:{t['task_id']}", "activity", [f"{t['transformation']} #{t['iteration']}", f"{t['status']}{seconds}"],
                          {"task": t["task_id"], "status": t["status"], "started": t["started_at"], "duration_s": t["duration_s"]},
                          status=t["status"], sql=f"SELECT * FROM tasks WHERE task_id = {_quote(t['task_id'])}"))
    elements: set[str] = set()
    counted: dict[str, tuple[str, str, int, int]] = {}  # node -> dataset, task key, elements, tasks
    for dataset in sorted({d for (_, d) in roles}):
        counts = reader.result(f"SELECT task_id, count(*) FROM {dataset} WHERE run_id = {p} GROUP BY task_id", (run_id,)).rows
        for task_id, n in counts:
            key = node_of.get(task_id, task_id)
            node = f"el:{dataset}:{key}"
            _, _, total, in_tasks = counted.get(node, (dataset, key, 0, 0))
            counted[node] = (dataset, key, total + n, in_tasks + 1)
            if node in elements:
                continue
            elements.add(node)
            if roles.get((transformation_of.get(task_id), dataset)) == "uses":
                edges.append(Edge(f"task:{key}", node, "used"))
            else:
                edges.append(Edge(node, f"task:{key}", "wasGeneratedBy"))
    for node, (dataset, key, n, in_tasks) in counted.items():
        where = f" in {_plural(in_tasks, 'task')}" if key.startswith("tasks:") else ""
        nodes.append(Node(node, "entity", [dataset, _plural(n, "element") + where],
                          {"dataset": dataset, "elements": n, "task": key if not key.startswith("tasks:") else None,
                           "tasks": in_tasks if key.startswith("tasks:") else None},
                          sql=f"SELECT * FROM {dataset} WHERE run_id = {rid} AND {tasks_of(key)} ORDER BY recorded_at, element_seq"))
    seen: set[tuple[str, str, str]] = set()

    def link(source: str, target: str, relation: str) -> None:
        if source != target and (source, target, relation) not in seen:
            seen.add((source, target, relation))
            edges.append(Edge(source, target, relation))

    for row in reader.rows(f"SELECT DISTINCT task_id, dataset, source_task_id FROM usages WHERE run_id = {p}", (run_id,)):
        source = f"el:{row['dataset']}:{node_of.get(row['source_task_id'], row['source_task_id'])}"
        if source in elements:
            link(f"task:{node_of.get(row['task_id'], row['task_id'])}", source, "used")
    informed = set()
    for row in reader.rows(
        f"SELECT d.task_id, d.depends_on FROM task_dependencies d JOIN tasks t ON t.task_id = d.task_id WHERE t.run_id = {p}",
        (run_id,),
    ):
        informed.add(node_of.get(row["task_id"], row["task_id"]))
        link(f"task:{node_of.get(row['task_id'], row['task_id'])}", f"task:{node_of.get(row['depends_on'], row['depends_on'])}",
             "wasInformedBy")
    # every task was started by the run; drawn for the first ones only, the others follow from wasInformedBy
    for key in dict.fromkeys(node_of.values()):
        if key not in informed:
            link(f"task:{key}", run_node, "wasStartedBy")
    files: dict[str, dict[str, Any]] = {}
    for row in reader.rows(
        f"SELECT task_id, coalesce(dataset, role, 'file') AS what, count(*) AS n, sum(size_bytes) AS size, "
        f"min(path) AS first FROM files WHERE run_id = {p} GROUP BY task_id, coalesce(dataset, role, 'file')", (run_id,)
    ):
        key = node_of.get(row["task_id"], row["task_id"])
        node = f"files:{key}:{row['what']}"
        entry = files.setdefault(node, {"key": key, "what": row["what"], "n": 0, "size": 0, "first": row["first"]})
        entry["n"] += row["n"]
        entry["size"] += row["size"] or 0
        entry["first"] = min(entry["first"] or "", row["first"] or "") or None
    for node, entry in files.items():
        key = entry["key"]
        task_sql = tasks_of(key) if key is not None else "task_id IS NULL"
        nodes.append(Node(node, "files", [_plural(entry["n"], "file"), f"({entry['what']})"],
                          {"files": entry["n"], "role": entry["what"], "bytes": entry["size"], "first": entry["first"],
                           "task": key}, sql=f"SELECT * FROM files WHERE run_id = {rid} AND {task_sql} ORDER BY path"))
        element = f"el:{entry['what']}:{key}"
        if element in elements:
            edges.append(Edge(node, element, "alternateOf"))
        elif key is not None and (key in transformation_of or key.startswith("tasks:")):
            edges.append(Edge(node, f"task:{key}", "wasGeneratedBy"))
    for agent in reader.rows(f"SELECT agent_id, kind, name, acted_on_behalf_of FROM agents WHERE run_id = {p} ORDER BY agent_id",
                             (run_id,)):
        node = f"agent:{agent['agent_id']}"
        nodes.append(Node(node, "agent", [agent["kind"], agent["name"] or agent["agent_id"]],
                          {"agent": agent["agent_id"], "kind": agent["kind"]},
                          sql=f"SELECT * FROM agents WHERE run_id = {rid} AND agent_id = {_quote(agent['agent_id'])}"))
        edges.append(Edge(run_node, node, "wasAssociatedWith"))
        if agent["acted_on_behalf_of"]:
            edges.append(Edge(node, f"agent:{agent['acted_on_behalf_of']}", "actedOnBehalfOf"))
    known = {n.id for n in nodes}
    return Graph(f"run {run_id}", nodes, [e for e in edges if e.source in known and e.target in known])
