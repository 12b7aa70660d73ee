"""How the dashboard draws the graphs of trainprov.provgraph: PROV's shapes and colours.

Activities are blue boxes, entities yellow ovals, agents orange houses; a run or task is
filled by its status. The nodes and edges are read by provgraph.py (re-exported here);
graph_layout.py places them; static/graph.js draws them with plotly.js.
"""

from __future__ import annotations

from ..provgraph import COLLAPSE_AFTER, Edge, Graph, Node, dataflow_graph, run_graph

__all__ = ["COLLAPSE_AFTER", "Edge", "Graph", "Node", "STATUS_COLOURS", "STYLES", "dataflow_graph", "run_graph", "style"]

#: PROV's conventional drawing of each kind of node: shape, fill, border
STYLES = {
    "activity": ("box", "#9FB1FC", "#0000FF"),
    "run": ("box", "#E6EBFF", "#0000FF"),
    "entity": ("ellipse", "#FFFC87", "#808080"),
    "agent": ("house", "#FED37F", "#C08000"),
    "files": ("note", "#FFFFFF", "#808080"),
}
STATUS_COLOURS = {"failed": "#F4A6A6", "interrupted": "#F8C98B", "running": "#CFE0FF"}


def style(node: Node) -> tuple[str, str, str]:
    """A node's shape, fill and border colour."""
    shape, fill, border = STYLES[node.kind]
    return shape, STATUS_COLOURS.get(node.status or "", fill), border
