"""Export formats: what each is, and `serialize`, which hands a document to its family's writer.

One module per format family, looked up by name (as `prov.serializers` does): `native`
(PROV-JSON, PROV-N, PROV-XML, written by `prov`), `jsonld` (PROV-JSONLD), `rdf` (PROV-O as
Turtle, TriG, RDF/XML) and `graph` (DOT, and pictures through Graphviz). Each has
`write(document, fmt) -> bytes`. Every format's bytes depend only on the document, so
two exports of the same records are byte-identical.
"""

from __future__ import annotations

import importlib
import os
from dataclasses import dataclass
from typing import Any

from prov.model import ProvDocument

from ...errors import ExportError


@dataclass(frozen=True)
class Format:
    """An export format: what it is, its file extension, its MIME type and which writer makes it."""

    name: str
    description: str
    extension: str
    family: str  # the module of this package that writes it
    media_type: str
    options: tuple[tuple[str, Any], ...] = ()  # passed to the `prov` serializer


FORMATS: dict[str, Format] = {
    f.name: f
    for f in (
        Format("json", "PROV-JSON (W3C member submission)", ".json", "native", "application/json", (("indent", 1),)),
        Format("provn", "PROV-N (W3C recommendation), the human-readable notation", ".provn", "native",
               "text/provenance-notation; charset=utf-8"),
        Format("xml", "PROV-XML (W3C note)", ".provx", "native", "application/xml"),
        Format("turtle", "PROV-O (W3C recommendation) as RDF Turtle", ".ttl", "rdf", "text/turtle", (("rdf_format", "turtle"),)),
        Format("trig", "PROV-O as RDF TriG (named graphs for bundles)", ".trig", "rdf", "application/trig", (("rdf_format", "trig"),)),
        Format("rdfxml", "PROV-O as RDF/XML", ".rdf", "rdf", "application/rdf+xml", (("rdf_format", "xml"),)),
        Format(
            "jsonld",
            "PROV-JSONLD (W3C member submission): JSON-LD with PROV-O terms, context embedded",
            ".jsonld",
            "jsonld",
            "application/ld+json",
            (("context", "embed"),),
        ),
        Format("dot", "the graph in Graphviz DOT (no Graphviz needed)", ".dot", "graph", "text/vnd.graphviz; charset=utf-8"),
        Format("svg", "the graph as an SVG picture (needs Graphviz)", ".svg", "graph", "image/svg+xml"),
        Format("png", "the graph as a PNG picture (needs Graphviz)", ".png", "graph", "image/png"),
        Format("pdf", "the graph as a PDF (needs Graphviz)", ".pdf", "graph", "application/pdf"),
    )
}
#: the MIME type of each format, for HTTP responses (the dashboard's downloads)
MIME_TYPES: dict[str, str] = {f.name: f.media_type for f in FORMATS.values()}

_ALIASES = {"ttl": "turtle", "prov-json": "json", "prov-n": "provn", "prov-xml": "xml", "provx": "xml",
            "rdf": "turtle", "gv": "dot", "provjsonld": "jsonld", "prov-jsonld": "jsonld"}
_EXTENSIONS = {f.extension: f.name for f in FORMATS.values()} | {
    ".xml": "xml", ".turtle": "turtle", ".gv": "dot", ".owl": "rdfxml", ".provjson": "json",
}


def get_format(name: str) -> Format:
    """The Format of a name (or alias such as `ttl`); ExportError listing the formats if unknown."""
    key = _ALIASES.get(name.lower(), name.lower())
    try:
        return FORMATS[key]
    except KeyError:
        raise ExportError(f"unknown export format {name!r}; formats: {', '.join(FORMATS)}") from None


def format_for_path(path: str | os.PathLike) -> str:
    """The format a file name's extension asks for (json when it names none we know)."""
    return _EXTENSIONS.get(os.path.splitext(os.fspath(path))[1].lower(), "json")


def serialize(document: ProvDocument, format: str = "json") -> bytes:
    """A document in one format (see FORMATS); pictures need Graphviz, DOT does not."""
    fmt = get_format(format)
    writer = importlib.import_module(f"{__name__}.{fmt.family}")
    return writer.write(document, fmt)
