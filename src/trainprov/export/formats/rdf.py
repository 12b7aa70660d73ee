"""PROV-O as Turtle, TriG and RDF/XML: `prov` maps the document to RDF, written here in a fixed order.

`prov` draws each qualified relation (a generation with its time, say) as a blank node,
which rdflib labels at random, and RDF/XML lists subjects in the order triples were
added. To make two exports of the same records byte-identical, every blank node is
relabelled from its content (its triples, and those of its neighbours, hashed) and the
triples are handed to rdflib in sorted order. The labels change only when the relation's
own content does; they are labels, not identifiers (PROV relations have none here).
"""

from __future__ import annotations

import hashlib
import io
import warnings
from collections import defaultdict
from typing import Any, Iterable

from prov.model import ProvDocument

from .native import prov_serializer

#: rounds of neighbour hashing: a qualification node's neighbours are IRIs and literals,
#: so one round tells them apart; more rounds cover blank nodes that point to blank nodes
_ROUNDS = 3


def write(document: ProvDocument, fmt: Any) -> bytes:
    """The document as PROV-O in `fmt`'s rdflib format (turtle, trig, xml), deterministically."""
    serializer = prov_serializer("rdf", fmt)
    options = dict(fmt.options)
    rdf_format = options.pop("rdf_format")
    with warnings.catch_warnings():
        # rdflib deprecations raised inside prov's RDF serializer: not the user's to fix
        warnings.simplefilter("ignore", DeprecationWarning)
        container = serializer(document).encode_document(document)
        ordered = sorted_copy(container, plain=rdf_format != "trig")
        buffer = io.BytesIO()
        ordered.serialize(buffer, format=rdf_format, **options)
    return buffer.getvalue()


def sorted_copy(container: Any, *, plain: bool = False) -> Any:
    """The same RDF dataset with blank nodes labelled from their content and triples added in sorted order.

    `plain`: a single graph (rdflib.Graph) when the dataset has no named graphs. TriG keeps the
    dataset: its writer sorts subjects itself; with several named graphs (bundles, which
    trainprov does not make) their order is rdflib's.
    """
    from rdflib import BNode, Graph

    quads = list(container.quads((None, None, None, None)))
    labels = blank_node_labels(quads)
    default = container.default_context.identifier

    def term(t: Any) -> Any:
        return BNode(labels[t]) if isinstance(t, BNode) else t

    renamed = sorted(
        ((term(s), p, term(o), g.identifier if hasattr(g, "identifier") else g) for s, p, o, g in quads),
        key=lambda q: (str(q[3]), q[0].n3(), q[1].n3(), q[2].n3()),
    )
    named = any(g != default and g is not None for *_, g in renamed)
    if plain and not named:
        # one graph, in a store that yields triples in the order they were added (rdflib's
        # default store keeps them in a set, whose order changes from one process to the next)
        out = Graph(store="SimpleMemory")
    else:
        out = type(container)()
    for prefix, namespace in sorted(container.namespaces()):
        out.bind(prefix, namespace, override=True, replace=True)
    for s, p, o, g in renamed:
        if isinstance(out, Graph) and not hasattr(out, "default_context"):
            out.add((s, p, o))
        else:
            (out.default_context if g == default or g is None else out.graph(g)).add((s, p, o))
    return out


def blank_node_labels(quads: Iterable[tuple[Any, Any, Any, Any]]) -> dict[Any, str]:
    """A label for every blank node, from a hash of its triples and (iteratively) its neighbours' labels."""
    from rdflib import BNode

    edges: dict[Any, list[tuple[str, Any, Any, str]]] = defaultdict(list)
    for s, p, o, g in quads:
        graph = str(g.identifier if hasattr(g, "identifier") else g)
        if isinstance(s, BNode):
            edges[s].append(("out", p, o, graph))
        if isinstance(o, BNode):
            edges[o].append(("in", p, s, graph))
    digest = {b: "" for b in edges}
    for _ in range(_ROUNDS):
        digest = {
            b: hashlib.sha256(
                "\n".join(sorted(
                    f"{d} {p.n3()} {'_:' + digest[x] if isinstance(x, BNode) else x.n3()} {g}" for d, p, x, g in found
                )).encode()
            ).hexdigest()
            for b, found in edges.items()
        }
    labels: dict[Any, str] = {}
    seen: dict[str, int] = defaultdict(int)
    # nodes with equal digests have equal triples: whichever gets which suffix, the output is the same
    for b, h in sorted(digest.items(), key=lambda item: item[1]):
        labels[b] = f"b{h[:24]}" + (f"x{seen[h]}" if seen[h] else "")
        seen[h] += 1
    return labels
