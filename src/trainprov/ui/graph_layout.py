"""Places a graph's nodes and routes its edges with igraph's layered (Sugiyama) layout, for plotly.js to draw.

Layers are assigned here (longest path from causes to effects, cycles broken with igraph's
feedback arc set) and long edges split into chains of bend points; igraph (a C library in a
wheel) orders each layer to reduce crossings. This module then turns that into page
coordinates: nodes sized to their labels, layers spaced by their largest node, arrows
clipped to node borders. No system program is involved. The result is plain JSON
(static/graph.js draws it).
"""

from __future__ import annotations

import datetime
import math
from typing import Any

from .graphs import Graph, Node, style

#: label font size, and the width of an average character of it (Helvetica/Arial), in page pixels
FONT_PX = 12
CHAR_PX = 0.58 * FONT_PX
LINE_PX = 1.3 * FONT_PX
#: room between neighbours in a layer, and between layers
GAP_PX = 24
LAYER_GAP_PX = 56
ARROW_PX = 9


def node_size(node: Node) -> tuple[float, float]:
    """Width and height of a node, from its label (ellipses and houses need more room than boxes)."""
    shape = style(node)[0]
    width = max(len(line) for line in node.label) * CHAR_PX + 20
    height = len(node.label) * LINE_PX + 12
    if shape == "ellipse":
        width, height = width * 1.2, height * 1.25
    elif shape == "house":
        height += 10
    return round(max(width, 60), 1), round(height, 1)


def _text(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, datetime.datetime):
        return value.isoformat(sep=" ", timespec="seconds")
    return str(value)


def _clip(centre: tuple[float, float], towards: tuple[float, float], size: tuple[float, float], shape: str) -> tuple[float, float]:
    """Where the segment from a node's centre towards a point leaves the node's outline."""
    dx, dy = towards[0] - centre[0], towards[1] - centre[1]
    if dx == 0 and dy == 0:
        return centre
    a, b = size[0] / 2, size[1] / 2
    if shape == "ellipse":
        t = 1 / math.sqrt((dx / a) ** 2 + (dy / b) ** 2)
    else:
        t = min(a / abs(dx) if dx else math.inf, b / abs(dy) if dy else math.inf)
    t = min(t, 1.0)
    return centre[0] + dx * t, centre[1] + dy * t


def _arrowhead(tip: tuple[float, float], before: tuple[float, float]) -> list[list[float]]:
    dx, dy = tip[0] - before[0], tip[1] - before[1]
    length = math.hypot(dx, dy) or 1.0
    ux, uy = dx / length, dy / length
    back = (tip[0] - ux * ARROW_PX, tip[1] - uy * ARROW_PX)
    half = ARROW_PX * 0.45
    return [[round(tip[0], 1), round(tip[1], 1)], [round(back[0] - uy * half, 1), round(back[1] + ux * half, 1)],
            [round(back[0] + uy * half, 1), round(back[1] - ux * half, 1)]]


def _sugiyama(n: int, pairs: list[tuple[int, int]]) -> tuple[list[list[float]], list[list[int]]]:
    """igraph's Sugiyama placement of n vertices, and per edge the dummy vertices it bends through.

    The layers are computed here and long edges split into chains of dummy vertices before
    igraph orders the layers, so that every bend point is a vertex of the layout (igraph
    1.0's own routing of long edges pairs control points with the wrong edges).
    """
    import igraph

    links = [(a, b) for a, b in pairs if a != b]
    g = igraph.Graph(n=n, edges=links, directed=True)
    # a cycle cannot be layered: reverse the fewest edges that break every cycle, for the layering only
    turned = set(g.feedback_arc_set(method="eades")) if not g.is_dag() else set()
    dag = [(b, a) if k in turned else (a, b) for k, (a, b) in enumerate(links)]
    successors: list[list[int]] = [[] for _ in range(n)]
    predecessors: list[list[int]] = [[] for _ in range(n)]
    for a, b in dag:
        successors[a].append(b)
        predecessors[b].append(a)
    layer = [0] * n
    for v in igraph.Graph(n=n, edges=dag, directed=True).topological_sorting():
        for w in successors[v]:
            layer[w] = max(layer[w], layer[v] + 1)
    # a source (hyperparameters, a plan) sits just above its first user, not in the top layer
    for v in range(n):
        if not predecessors[v] and successors[v]:
            layer[v] = min(layer[w] for w in successors[v]) - 1
    layers = list(layer)
    extended = []
    chains: list[list[int]] = []
    for a, b in pairs:
        top, bottom = (a, b) if layer[a] <= layer[b] else (b, a)
        chain = []
        previous = top
        for depth in range(layer[top] + 1, layer[bottom]):
            layers.append(depth)
            chain.append(len(layers) - 1)
            extended.append((previous, chain[-1]))
            previous = chain[-1]
        if a != b:
            extended.append((previous, bottom))
        chains.append(chain if top == a else chain[::-1])
    if not layers:
        return [], chains
    placed = igraph.Graph(n=len(layers), edges=extended, directed=True).layout_sugiyama(layers=layers, maxiter=200)
    return placed.coords, chains


def layout(graph: Graph) -> dict[str, Any]:
    """Page coordinates of every node and edge of `graph` (y grows downwards), as JSON-ready data."""
    index = {node.id: i for i, node in enumerate(graph.nodes)}
    sizes = [node_size(node) for node in graph.nodes]
    # layers follow causes to effects: data flow in a dataflow, the reverse of PROV's arrows in a run
    pairs = [(index[e.source], index[e.target]) if graph.flow else (index[e.target], index[e.source]) for e in graph.edges]
    coords, chains = _sugiyama(len(graph.nodes), pairs)
    horizontal = graph.flow  # a dataflow reads left to right, a provenance graph top to bottom
    along = 0 if horizontal else 1  # which of a node's (width, height) lies along the layer axis

    # everything that sits in a layer: nodes, and the bend points (dummy vertices) of edges that cross it
    n = len(graph.nodes)
    layers: dict[int, list[tuple[float, int]]] = {}
    for i, (x, y) in enumerate(coords):
        layers.setdefault(round(y), []).append((x, i))
    # spread each layer by the real sizes, keeping the order igraph chose and roughly its positions
    across_size = [s[1 - along] for s in sizes] + [0.0] * (len(coords) - n)
    unit = (sorted(across_size[:n])[n // 2] if n else 0) + GAP_PX
    offset: dict[int, float] = {}
    for members in layers.values():
        members.sort(key=lambda m: m[0])
        edge_of_previous = -math.inf
        for x, i in members:
            half = across_size[i] / 2
            centre = max(x * unit, edge_of_previous + (GAP_PX if i < n else GAP_PX / 2) + half)
            offset[i] = centre
            edge_of_previous = centre + half
    # place the layers one after the other, each as deep as its deepest node
    depth_of: dict[int, float] = {}
    position = 0.0
    for layer in sorted(layers):
        deepest = max((sizes[i][along] for _, i in layers[layer] if i < n), default=0.0)
        depth_of[layer] = position + deepest / 2
        position += deepest + LAYER_GAP_PX

    def point(i: int) -> tuple[float, float]:
        across, depth = offset[i], depth_of[round(coords[i][1])]
        return (depth, across) if horizontal else (across, depth)

    nodes = []
    centres = []
    for i, node in enumerate(graph.nodes):
        centre = point(i)
        centres.append(centre)
        shape, fill, border = style(node)
        nodes.append({
            "id": node.id, "kind": node.kind, "shape": shape, "fill": fill, "border": border,
            "x": round(centre[0], 1), "y": round(centre[1], 1), "w": sizes[i][0], "h": sizes[i][1],
            "label": node.label,
            "details": {k: _text(v) for k, v in node.details.items() if v is not None and v != ""},
            "sql": node.sql, "expand": node.expand,
        })
    edges = []
    for e, edge in enumerate(graph.edges):
        s, t = index[edge.source], index[edge.target]
        bends = [point(i) for i in chains[e]]
        # chains run from cause to effect: put the bends in the arrow's direction
        if pairs[e] != (s, t):
            bends.reverse()
        path = [centres[s], *bends, centres[t]]
        path[0] = _clip(centres[s], path[1], sizes[s], style(graph.nodes[s])[0])
        path[-1] = _clip(centres[t], path[-2], sizes[t], style(graph.nodes[t])[0])
        edges.append({"source": edge.source, "target": edge.target, "relation": edge.relation,
                      "points": [[round(x, 1), round(y, 1)] for x, y in path], "arrow": _arrowhead(path[-1], path[-2])})
    xs = [n["x"] - n["w"] / 2 for n in nodes] + [n["x"] + n["w"] / 2 for n in nodes]
    ys = [n["y"] - n["h"] / 2 for n in nodes] + [n["y"] + n["h"] / 2 for n in nodes]
    return {"title": graph.title, "flow": graph.flow, "font_px": FONT_PX, "nodes": nodes, "edges": edges,
            "summary": summary(graph),
            "bounds": [min(xs, default=0), min(ys, default=0), max(xs, default=0), max(ys, default=0)]}


def summary(graph: Graph) -> str:
    """What the graph holds, in words: "1 run, 12 activities, 30 entities, ..., 80 edges"."""
    plurals = {"run": "runs", "activity": "activities", "entity": "entities", "agent": "agents", "files": "groups of files"}
    singulars = {"files": "group of files"}
    words = [f"{n} {singulars.get(kind, kind) if n == 1 else plurals.get(kind, kind)}" for kind, n in graph.counts().items()]
    return ", ".join([*words, f"{len(graph.edges)} edge{'s' * (len(graph.edges) != 1)}"])


def crossings(drawn: dict[str, Any]) -> int:
    """How many pairs of edge segments cross (a layout's usual measure of legibility)."""
    segments = [(tuple(a), tuple(b), i) for i, edge in enumerate(drawn["edges"])
                for a, b in zip(edge["points"], edge["points"][1:])]

    def orient(p: tuple, q: tuple, r: tuple) -> float:
        return (q[0] - p[0]) * (r[1] - p[1]) - (q[1] - p[1]) * (r[0] - p[0])

    count = 0
    for i, (a, b, e) in enumerate(segments):
        for c, d, f in segments[i + 1:]:
            if e == f or {a, b} & {c, d}:
                continue
            if orient(a, b, c) * orient(a, b, d) < 0 and orient(c, d, a) * orient(c, d, b) < 0:
                count += 1
    return count
