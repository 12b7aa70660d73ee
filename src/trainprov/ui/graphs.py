"""The dataflow graph and the task-level provenance graph of a run, as Graphviz DOT and SVG.

The full W3C PROV graph of a run (one node per element) comes from export.py; the graph
drawn here summarises it so that it stays readable for long runs: one node per task, one
per (task, dataset) with its number of elements, one per agent, with PROV's shapes and
colours (activities blue boxes, entities yellow ovals, agents orange houses).
"""

from __future__ import annotations

import functools
import json
import shutil
import subprocess
from typing import Any

from ..errors import TrainprovError
from ..query import Reader

ACTIVITY = 'shape=box style="rounded,filled" fillcolor="#9FB1FC" color="#0000FF"'
ENTITY = 'shape=ellipse style=filled fillcolor="#FFFC87" color="#808080"'
AGENT = 'shape=house style=filled fillcolor="#FED37F"'
FILES = 'shape=note style=filled fillcolor="#FFFFFF" color="#808080"'
STATUS_COLOURS = {"failed": "#F4A6A6", "interrupted": "#F8C98B", "running": "#CFE0FF"}
#: how long Graphviz may take to lay out one graph
DOT_TIMEOUT_S = 30


class GraphError(TrainprovError):
    """A graph could not be drawn (Graphviz missing or failing)."""


def quote(text: Any) -> str:
    """A DOT string literal."""
    return '"' + str(text).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def _node(name: str, label: str, style: str, **attrs: Any) -> str:
    extra = "".join(f" {k}={quote(v)}" for k, v in attrs.items() if v is not None)
    return f"  {quote(name)} [label={quote(label)} {style}{extra}];"


def _edge(a: str, b: str, label: str = "", style: str = "") -> str:
    return f"  {quote(a)} -> {quote(b)} [label={quote(label)} fontsize=9 {style}];"


def dataflow_dot(reader: Reader, dataflow: str, version: int) -> str:
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
    columns = {d["name"]: [f"{a['name']}: {a['type']}" for a in d.get("attributes", [])]
               for d in (declared or {}).get("datasets", [])}
    lines = [f"digraph {quote(dataflow)} {{", '  rankdir=LR; fontname="Helvetica"; node [fontname="Helvetica" fontsize=11];',
             '  edge [fontname="Helvetica" color="#555555"];']
    for t in transformations:
        lines.append(_node(f"t:{t['name']}", t["name"], ACTIVITY, tooltip=t["description"] or f"transformation {t['name']}"))
    for dataset in sorted({link["dataset"] for link in links}):
        cols = columns.get(dataset, [])
        lines.append(_node(f"d:{dataset}", f"{dataset}\n{len(cols)} attributes", ENTITY, tooltip="\n".join(cols) or dataset))
    for link in links:
        if link["role"] == "uses":
            lines.append(_edge(f"d:{link['dataset']}", f"t:{link['transformation']}", "used by"))
        else:
            lines.append(_edge(f"t:{link['transformation']}", f"d:{link['dataset']}", "generates"))
    lines.append("}")
    return "\n".join(lines)


def run_dot(reader: Reader, run_id: str) -> str:
    """A run's provenance at the level of tasks: tasks, what each used and generated (counted), files and agents."""
    p = reader.backend.placeholder
    run = reader.rows(f"SELECT * FROM runs WHERE run_id = {p}", (run_id,))[0]
    tasks = reader.rows(
        f"SELECT task_id, transformation, iteration, status, duration_s FROM tasks WHERE run_id = {p} ORDER BY started_at, task_id",
        (run_id,),
    )
    roles = {(r["transformation"], r["dataset"]): r["role"] for r in reader.rows(
        "SELECT transformation, dataset, role FROM transformation_datasets "
        f"WHERE dataflow = {p} AND dataflow_version = {p}", (run["dataflow"], run["dataflow_version"]))}
    transformation_of = {t["task_id"]: t["transformation"] for t in tasks}
    lines = [f"digraph {quote('run ' + run_id)} {{", '  rankdir=BT; compound=true; fontname="Helvetica"; node [fontname="Helvetica" fontsize=10];',
             '  edge [fontname="Helvetica" color="#555555"];']
    title = f"run {run_id}  ({run['dataflow']} v{run['dataflow_version']}, {run['status']})"
    lines.append(f'  subgraph cluster_run {{ label={quote(title)}; style="rounded,dashed"; color="#0000FF";')
    for t in tasks:
        colour = STATUS_COLOURS.get(t["status"])
        style = ACTIVITY if colour is None else ACTIVITY.replace("#9FB1FC", colour)
        seconds = f"{t['duration_s']:.1f} s" if isinstance(t["duration_s"], (int, float)) else ""
        lines.append("  " + _node(f"task:{t['task_id']}", f"{t['transformation']} #{t['iteration']}\n{t['status']} {seconds}",
                                  style, tooltip=t["task_id"]))
    lines.append("  }")
    for dataset in sorted({d for (_, d) in roles}):
        counts = reader.result(f"SELECT task_id, count(*) FROM {dataset} WHERE run_id = {p} GROUP BY task_id", (run_id,)).rows
        for task_id, n in counts:
            node = f"el:{dataset}:{task_id}"
            lines.append(_node(node, f"{dataset}\n{n} element{'s' * (n != 1)}", ENTITY, tooltip=f"{dataset} of task {task_id}"))
            if roles.get((transformation_of.get(task_id), dataset)) == "uses":
                lines.append(_edge(f"task:{task_id}", node, "used"))
            else:
                lines.append(_edge(node, f"task:{task_id}", "wasGeneratedBy"))
    for row in reader.rows(
        f"SELECT DISTINCT task_id, dataset, source_task_id FROM usages WHERE run_id = {p}", (run_id,)
    ):
        lines.append(_edge(f"task:{row['task_id']}", f"el:{row['dataset']}:{row['source_task_id']}", "used"))
    for row in reader.rows(
        f"SELECT d.task_id, d.depends_on FROM task_dependencies d JOIN tasks t ON t.task_id = d.task_id WHERE t.run_id = {p}",
        (run_id,),
    ):
        lines.append(_edge(f"task:{row['task_id']}", f"task:{row['depends_on']}", "wasInformedBy", 'style=dashed'))
    for row in reader.rows(
        f"SELECT task_id, coalesce(dataset, role, 'file') AS what, count(*) AS n FROM files WHERE run_id = {p} "
        "GROUP BY task_id, coalesce(dataset, role, 'file')", (run_id,)
    ):
        node = f"files:{row['task_id']}:{row['what']}"
        lines.append(_node(node, f"{row['n']} file{'s' * (row['n'] != 1)}\n({row['what']})", FILES))
        target = f"el:{row['what']}:{row['task_id']}" if (transformation_of.get(row["task_id"]), row["what"]) in roles \
            else f"task:{row['task_id']}"
        lines.append(_edge(node, target, "alternateOf" if target.startswith("el:") else "file", "style=dotted"))
    agents = reader.rows(f"SELECT agent_id, kind, name, acted_on_behalf_of FROM agents WHERE run_id = {p} ORDER BY agent_id", (run_id,))
    for agent in agents:
        lines.append(_node(f"agent:{agent['agent_id']}", f"{agent['kind']}\n{agent['name'] or agent['agent_id']}", AGENT,
                           tooltip=agent["agent_id"]))
        first = f"task:{tasks[0]['task_id']}" if tasks else None
        if first:
            # from the run (the cluster's border), which PROV associates with its agents
            lines.append(_edge(first, f"agent:{agent['agent_id']}", "wasAssociatedWith",
                               'style=dashed color="#C08000" ltail=cluster_run'))
        if agent["acted_on_behalf_of"]:
            lines.append(_edge(f"agent:{agent['agent_id']}", f"agent:{agent['acted_on_behalf_of']}", "actedOnBehalfOf"))
    lines.append("}")
    return "\n".join(lines)


@functools.lru_cache(maxsize=64)
def render_svg(dot: str) -> str:
    """Lay out a DOT graph with Graphviz and return the SVG text (the same graph is laid out once)."""
    program = shutil.which("dot")
    if program is None:
        raise GraphError("drawing graphs needs Graphviz's `dot` program (Debian/Ubuntu: apt-get install graphviz; "
                         "macOS: brew install graphviz)")
    try:
        done = subprocess.run([program, "-Tsvg"], input=dot.encode(), capture_output=True, timeout=DOT_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        raise GraphError(f"Graphviz took more than {DOT_TIMEOUT_S} s to lay out this graph") from None
    if done.returncode != 0:
        raise GraphError(f"Graphviz failed: {done.stderr.decode(errors='replace').strip()[:500]}")
    svg = done.stdout.decode()
    return svg[svg.find("<svg"):]  # without the XML prolog and DOCTYPE, to embed in HTML
