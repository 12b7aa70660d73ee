"""How the dashboard's graphs are laid out without Graphviz: candidates compared on the graphs we draw.

Generates, in a temporary folder, a store with
- a dataflow of 10 transformations (load, clean, split, augment, normalize, train, adapt,
  checkpoint, evaluate, export) and the datasets they use and generate;
- one run of that dataflow with 1,000 epochs, 100 learning-rate adaptations (one `adapt`
  task each), 20 checkpoints (one `checkpoint` task each, with its file), an evaluation.

Then builds the dashboard's two graphs (ui/graphs.py) and lays each out with every
candidate installed, printing per graph and candidate: the time of the layout (median of
`--repeat`), the edge crossings of the drawing (polylines through the bend points each
layout routes), and the size of the drawing in layout units:

- igraph's `layout_sugiyama` (the dashboard's choice, ui/graph_layout.py, everything it
  computes for the page included);
- grandalf's Sugiyama layout (pure Python), when installed;
- graphviz-pure's `dot` engine (a Rust port of Graphviz run as a program), when its
  `graphviz-pure` command is on PATH; Graphviz's own `dot` too, when installed.

    python benchmarks/graph_bench.py              # pip install igraph grandalf graphviz-pure for all
    python benchmarks/graph_bench.py --repeat 3
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any, Callable

import trainprov as tp
from trainprov.ui import graph_layout, graphs

TRANSFORMATIONS = ["load", "clean", "split", "augment", "normalize", "train", "adapt", "checkpoint", "evaluate", "export"]


def dataflow() -> tp.Dataflow:
    """Ten transformations chained through the datasets a real training pipeline has."""
    d = tp.Dataset
    return tp.Dataflow("bench_pipeline", [
        tp.Transformation("load", generates=[d("raw_data", n_rows=int, source=str)]),
        tp.Transformation("clean", uses=[d("raw_data", n_rows=int, source=str)], generates=[d("clean_data", n_rows=int, dropped=int)]),
        tp.Transformation("split", uses=[d("clean_data", n_rows=int, dropped=int)],
                          generates=[d("train_split", n_rows=int), d("val_split", n_rows=int), d("test_split", n_rows=int)]),
        tp.Transformation("augment", uses=[d("train_split", n_rows=int)], generates=[d("augmented", n_rows=int, factor=float)]),
        tp.Transformation("normalize", uses=[d("augmented", n_rows=int, factor=float), d("val_split", n_rows=int)],
                          generates=[d("statistics", mean=float, std=float)]),
        tp.Transformation("train", uses=[d("hyperparameters", learning_rate=float, optimizer=str, epochs=int),
                                         d("statistics", mean=float, std=float)],
                          generates=[d("epoch_metrics", epoch=int, loss=float, val_loss=float)]),
        tp.Transformation("adapt", generates=[d("adaptations", epoch=int, parameter=str, old_value=float, new_value=float,
                                                cause=str)]),
        tp.Transformation("checkpoint", generates=[d("checkpoints", epoch=int, path="file")]),
        tp.Transformation("evaluate", uses=[d("test_split", n_rows=int)], generates=[d("test_results", loss=float)]),
        tp.Transformation("export", generates=[d("exported_model", path=str, size_bytes=int)]),
    ])


def fill(store: str, folder: str) -> str:
    """One run of 1,000 epochs, 100 adaptations, 20 checkpoints; returns its id."""
    with tp.start_run(dataflow(), store, name="bench-1000-epochs") as run:
        with run.task("load") as load:
            load.generated("raw_data", n_rows=60000, source="generated")
        with run.task("clean", depends_on=[load]) as clean:
            clean.generated("clean_data", n_rows=59000, dropped=1000)
        with run.task("split", depends_on=[clean]) as split:
            split.generated("train_split", n_rows=47000)
            split.generated("val_split", n_rows=6000)
            split.generated("test_split", n_rows=6000)
        with run.task("augment", depends_on=[split]) as augment:
            augment.generated("augmented", n_rows=94000, factor=2.0)
        with run.task("normalize", depends_on=[augment]) as normalize:
            normalize.generated("statistics", mean=0.13, std=0.31)
        lr = 0.1
        with run.task("train", depends_on=[normalize]) as train:
            train.used("hyperparameters", learning_rate=lr, optimizer="sgd", epochs=1000)
            for epoch in range(1, 1001):
                train.generated("epoch_metrics", epoch=epoch, loss=1 / epoch, val_loss=1.1 / epoch)
                if epoch % 10 == 0:
                    with run.task("adapt", depends_on=[train]) as adapt:
                        adapt.generated("adaptations", epoch=epoch, parameter="learning_rate", old_value=lr,
                                        new_value=lr * 0.97, cause="ReduceLROnPlateau")
                    lr *= 0.97
                if epoch % 50 == 0:
                    path = os.path.join(folder, f"ckpt-{epoch}.bin")
                    with open(path, "wb") as f:
                        f.write(epoch.to_bytes(4, "little"))
                    with run.task("checkpoint", depends_on=[train]) as checkpoint:
                        checkpoint.generated("checkpoints", epoch=epoch, path=path)  # records the file and its digest
        with run.task("evaluate", depends_on=[train]) as evaluate:
            evaluate.generated("test_results", loss=0.002)
        with run.task("export", depends_on=[train]) as export:
            export.generated("exported_model", path="model.keras", size_bytes=1234)
    return run.id


def timed(action: Callable[[], Any], repeat: int) -> tuple[float, Any]:
    """Median seconds of `repeat` calls, and the last result."""
    times, result = [], None
    for _ in range(repeat):
        start = time.perf_counter()
        result = action()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def polylines_to_drawn(lines: list[list[tuple[float, float]]]) -> dict[str, Any]:
    return {"edges": [{"points": [list(p) for p in line]} for line in lines]}


def grandalf_layout(graph: graphs.Graph) -> tuple[dict[str, Any], tuple[float, float]]:
    """grandalf's Sugiyama layout with the same node sizes; edges as polylines through its routing."""
    from grandalf.graphs import Edge, Graph, Vertex
    from grandalf.layouts import SugiyamaLayout
    from grandalf.routing import route_with_lines

    class View:
        def __init__(self, w: float, h: float) -> None:
            self.w, self.h, self.xy = w, h, (0.0, 0.0)

    vertices = {n.id: Vertex(n.id) for n in graph.nodes}
    for n in graph.nodes:
        vertices[n.id].view = View(*graph_layout.node_size(n))
    edges = []
    for e in graph.edges:
        a, b = (e.source, e.target) if graph.flow else (e.target, e.source)
        edges.append(Edge(vertices[a], vertices[b]))
    g = Graph(list(vertices.values()), edges)
    lines = []
    xs, ys = [], []
    for component in g.C:
        for edge in component.sE:
            edge.view = type("EdgeView", (), {"setpath": lambda self, pts: setattr(self, "pts", pts)})()
        sug = SugiyamaLayout(component)
        sug.init_all()
        sug.draw(3)
        sug.route_edge = route_with_lines
        for edge in component.sE:
            pts = getattr(edge.view, "pts", None) or [edge.v[0].view.xy, edge.v[1].view.xy]
            lines.append([tuple(p) for p in pts])
        shift = (max(xs) + 100) if xs else 0
        for v in component.sV:
            v.view.xy = (v.view.xy[0] + shift, v.view.xy[1])
            xs.append(v.view.xy[0])
            ys.append(v.view.xy[1])
    return polylines_to_drawn(lines), (max(xs) - min(xs), max(ys) - min(ys))


def quote(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def dot_source(graph: graphs.Graph) -> str:
    """The graph in DOT, with the shapes the dashboard used when it ran Graphviz."""
    shapes = {"box": "box", "ellipse": "ellipse", "house": "house", "note": "note"}
    lines = [f"digraph g {{ rankdir={'LR' if graph.flow else 'BT'}; node [fontname=Helvetica fontsize=11];"]
    for n in graph.nodes:
        lines.append(f"  {quote(n.id)} [label={quote(chr(10).join(n.label))} shape={shapes[n.style()[0]]}];")
    for e in graph.edges:
        lines.append(f"  {quote(e.source)} -> {quote(e.target)} [label={quote(e.relation)} fontsize=9];")
    lines.append("}")
    return "\n".join(lines)


def bezier(points: list[list[float]], steps: int = 8) -> list[tuple[float, float]]:
    """The curve of Graphviz's piecewise cubic Bezier control points, as a polyline through points on it."""
    line = [tuple(points[0])]
    for i in range(0, len(points) - 3, 3):
        p0, p1, p2, p3 = points[i:i + 4]
        for k in range(1, steps + 1):
            t = k / steps
            line.append(tuple((1 - t) ** 3 * a + 3 * (1 - t) ** 2 * t * b + 3 * (1 - t) * t ** 2 * c + t ** 3 * d
                              for a, b, c, d in zip(p0, p1, p2, p3)))
    return line


def graphviz_layout(program: str, graph: graphs.Graph) -> tuple[dict[str, Any], tuple[float, float]]:
    """A Graphviz-compatible `dot` run as a program, its JSON output read back."""
    done = subprocess.run([program, "-Tjson"], input=dot_source(graph).encode(), capture_output=True, timeout=300, check=True)
    data = json.loads(done.stdout)
    lines = []
    for edge in data.get("edges", []):
        for op in edge.get("_draw_", []):
            if op.get("op") in ("b", "B"):
                # Graphviz ends the edges of one node at one point: leave out the last pixels, where they
                # meet, so that only real crossings count
                line = bezier(op["points"])
                near = lambda p, end: abs(p[0] - end[0]) + abs(p[1] - end[1]) < 12
                lines.append([p for p in line if not near(p, line[0]) and not near(p, line[-1])] or line)
    x0, y0, x1, y1 = (float(v) for v in data["bb"].split(","))
    return polylines_to_drawn(lines), (x1 - x0, y1 - y0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        store = os.path.join(folder, "bench.db")
        start = time.perf_counter()
        run_id = fill(store, folder)
        print(f"filled a store with a run of 1,000 epochs in {time.perf_counter() - start:.1f} s")
        with tp.connect(store) as reader:
            version = reader.rows("SELECT dataflow_version AS v FROM runs WHERE run_id = ?", [run_id])[0]["v"]
            cases = {}
            for name, build in [("dataflow, 10 transformations", lambda: graphs.dataflow_graph(reader, "bench_pipeline", version)),
                                ("provenance, run of 1,000 epochs",
                                 # every task drawn: the dashboard collapses them unless asked (?expand=adapt)
                                 lambda: graphs.run_graph(reader, run_id, expand=["adapt", "checkpoint"]))]:
                seconds, graph = timed(build, args.repeat)
                cases[name] = graph
                print(f"\n{name}: {len(graph.nodes)} nodes, {len(graph.edges)} edges (read from the store in {seconds * 1000:.1f} ms)")
                print(f"  {'candidate':<28} {'layout ms':>10} {'crossings':>10} {'width x height':>18}")
                candidates: list[tuple[str, Callable[[], tuple[dict, tuple[float, float]]]]] = []

                def ours(g: graphs.Graph = graph) -> tuple[dict, tuple[float, float]]:
                    drawn = graph_layout.layout(g)
                    b = drawn["bounds"]
                    return drawn, (b[2] - b[0], b[3] - b[1])

                candidates.append(("igraph layout_sugiyama", ours))
                try:
                    import grandalf  # noqa: F401

                    candidates.append(("grandalf SugiyamaLayout", lambda g=graph: grandalf_layout(g)))
                except ImportError:
                    print("  (grandalf not installed)")
                for program in ("graphviz-pure", "dot"):
                    path = shutil.which(program)
                    if path:
                        candidates.append((f"{program} -Tjson", lambda g=graph, p=path: graphviz_layout(p, g)))
                    else:
                        print(f"  ({program} not on PATH)")
                for label, run in candidates:
                    seconds, (drawn, (w, h)) = timed(run, args.repeat)
                    print(f"  {label:<28} {seconds * 1000:>10.1f} {graph_layout.crossings(drawn):>10} {w:>8.0f} x {h:<8.0f}")


if __name__ == "__main__":
    sys.exit(main())
