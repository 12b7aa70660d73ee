"""The graph of a document: DOT text (no Graphviz needed), and pictures through Graphviz's `dot`.

This module is the one place that runs Graphviz for an export.
"""

from __future__ import annotations

import shutil
import warnings
from typing import Any

from prov.model import ProvDocument

from ...errors import ExportError, GraphvizMissing


def write(document: ProvDocument, fmt: Any) -> bytes:
    """The document's graph as DOT, or as an SVG, PNG or PDF picture made by Graphviz."""
    try:
        from prov.dot import prov_to_dot
    except ImportError:  # pydot, which prov draws with, comes with the rdf extra
        raise ExportError(f"the {fmt.name} format needs the pydot package, which is not installed "
                          "(pip install 'trainprov[rdf]')") from None

    with warnings.catch_warnings():
        # prov warns that a start without a trigger entity is drawn to a blank node: that is the mapping
        warnings.simplefilter("ignore")
        graph = prov_to_dot(document, use_labels=True)
    if fmt.name == "dot":
        return graph.to_string().encode("utf-8")
    return render(graph, fmt.name)


def render(graph: Any, picture: str) -> bytes:
    """Run Graphviz on a pydot graph; GraphvizMissing (saying how to install it) when `dot` is not there."""
    if shutil.which("dot") is None:
        raise GraphvizMissing(
            f"the {picture} picture needs Graphviz's `dot` program, which is not installed here "
            "(Debian/Ubuntu: apt-get install graphviz; macOS: brew install graphviz); "
            "`--format dot` writes the graph without it, for rendering elsewhere"
        )
    return graph.create(format=picture)
