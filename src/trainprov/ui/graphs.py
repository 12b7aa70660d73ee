"""What the dashboard's dataflow graph and task-level provenance graph of a run show: nodes and edges.

The full W3C PROV graph of a run (one node per element) comes from export.py; the graph
built here summarises it so that it stays readable for long runs: one node per task, one
per (task, dataset) with its number of elements, one per group of files, one per agent,
with PROV's shapes and colours (activities blue boxes, entities yellow ovals, agents orange
houses). graph_layout.py places it; static/graph.js draws it with plotly.js.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from ..errors import GraphError
from ..query import Reader

#: PROV's conventional drawing of each kind of node: shape, fill, border
STYLES = {
    "activity": ("box", "#9FB1FC", "#0000FF"),
    "run": ("box", "#E6EBFF", "#0000FF"),
    "entity": ("ellipse", "#FFFC87", "#808080"),
    "agent": ("house", "#FED37F", "#C08000"),
    "files": ("note", "#FFFFFF", "#808080"),
}
STATUS_COLOURS = {"failed": "#F4A6A6", "interrupted": "#F8C98B", "running": "#CFE0FF"}


@dataclass
class Node:
    """One node: its PROV kind, the lines of its label, and the details shown on hover."""

    id: str
    kind: str
    label: list[str]
    details: dict[str, Any] = field(default_factory=dict)
    fill: str | None = None

    def style(self) -> tuple[str, str, str]:
        """Shape, fill and border colour."""
        shape, fill, border = STYLES[self.kind]
        return shape, self.fill or fill, border


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


def run_graph(reader: Reader, run_id: str) -> Graph:
    """A run's provenance at the level of tasks: tasks, what each used and generated (counted), files and agents."""
    p = reader.backend.placeholder
    found = reader.rows(f"SELECT * FROM runs WHERE run_id = {p}", (run_id,))
    if not found:
        raise GraphError(f"no run {run_id!r} in {reader.url}")
    run = found[0]
    tasks = reader.rows(
        "SELECT task_id, transformation, iteration, status, started_at, duration_s FROM tasks "
        f"WHERE run_id = {p} ORDER BY started_at, task_id", (run_id,),
    )
    roles = {(r["transformation"], r["dataset"]): r["role"] for r in reader.rows(
        "SELECT transformation, dataset, role FROM transformation_datasets "
        f"WHERE dataflow = {p} AND dataflow_version = {p}", (run["dataflow"], run["dataflow_version"]))}
    transformation_of = {t["task_id"]: t["transformation"] for t in tasks}
    run_node = f"run:{run_id}"
    nodes = [Node(run_node, "run", [f"run {run['name'] or run_id}", f"{run['dataflow']} v{run['dataflow_version']}, {run['status']}"],
                  {"run": run_id, "status": run["status"], "started": run["started_at"], "duration_s": run["duration_s"],
                   "host": run.get("host")}, fill=STATUS_COLOURS.get(run["status"]))]
    edges: list[Edge] = []
    for t in tasks:
        seconds = f" {t['duration_s']:.1f} s" if isinstance(t["duration_s"], (int, float)) else ""
        nodes.append(Node(f"task:{t['task_id']}", "activity", [f"{t['transformation']} #{t['iteration']}", f"{t['status']}{seconds}"],
                          {"task": t["task_id"], "status": t["status"], "started": t["started_at"], "duration_s": t["duration_s"]},
                          fill=STATUS_COLOURS.get(t["status"])))
    elements = set()
    for dataset in sorted({d for (_, d) in roles}):
        counts = reader.result(f"SELECT task_id, count(*) FROM {dataset} WHERE run_id = {p} GROUP BY task_id", (run_id,)).rows
        for task_id, n in counts:
            node = f"el:{dataset}:{task_id}"
            elements.add(node)
            nodes.append(Node(node, "entity", [dataset, _plural(n, "element")],
                              {"dataset": dataset, "elements": n, "task": task_id}))
            if roles.get((transformation_of.get(task_id), dataset)) == "uses":
                edges.append(Edge(f"task:{task_id}", node, "used"))
            else:
                edges.append(Edge(node, f"task:{task_id}", "wasGeneratedBy"))
    for row in reader.rows(f"SELECT DISTINCT task_id, dataset, source_task_id FROM usages WHERE run_id = {p}", (run_id,)):
        if f"el:{row['dataset']}:{row['source_task_id']}" in elements:
            edges.append(Edge(f"task:{row['task_id']}", f"el:{row['dataset']}:{row['source_task_id']}", "used"))
    informed = set()
    for row in reader.rows(
        f"SELECT d.task_id, d.depends_on FROM task_dependencies d JOIN tasks t ON t.task_id = d.task_id WHERE t.run_id = {p}",
        (run_id,),
    ):
        informed.add(row["task_id"])
        edges.append(Edge(f"task:{row['task_id']}", f"task:{row['depends_on']}", "wasInformedBy"))
    # every task was started by the run; drawn for the first ones only, the others follow from wasInformedBy
    edges += [Edge(f"task:{t['task_id']}", run_node, "wasStartedBy") for t in tasks if t["task_id"] not in informed]
    for row in reader.rows(
        f"SELECT task_id, coalesce(dataset, role, 'file') AS what, count(*) AS n, sum(size_bytes) AS size, "
        f"min(path) AS first FROM files WHERE run_id = {p} GROUP BY task_id, coalesce(dataset, role, 'file')", (run_id,)
    ):
        node = f"files:{row['task_id']}:{row['what']}"
        nodes.append(Node(node, "files", [_plural(row["n"], "file"), f"({row['what']})"],
                          {"files": row["n"], "role": row["what"], "bytes": row["size"], "first": row["first"], "task": row["task_id"]}))
        element = f"el:{row['what']}:{row['task_id']}"
        if element in elements:
            edges.append(Edge(node, element, "alternateOf"))
        elif row["task_id"] in transformation_of:
            edges.append(Edge(node, f"task:{row['task_id']}", "wasGeneratedBy"))
    for agent in reader.rows(f"SELECT agent_id, kind, name, acted_on_behalf_of FROM agents WHERE run_id = {p} ORDER BY agent_id",
                             (run_id,)):
        node = f"agent:{agent['agent_id']}"
        nodes.append(Node(node, "agent", [agent["kind"], agent["name"] or agent["agent_id"]],
                          {"agent": agent["agent_id"], "kind": agent["kind"]}))
        edges.append(Edge(run_node, node, "wasAssociatedWith"))
        if agent["acted_on_behalf_of"]:
            edges.append(Edge(node, f"agent:{agent['acted_on_behalf_of']}", "actedOnBehalfOf"))
    known = {n.id for n in nodes}
    return Graph(f"run {run_id}", nodes, [e for e in edges if e.source in known and e.target in known])
