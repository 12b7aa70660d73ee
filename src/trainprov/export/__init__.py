"""W3C PROV export: runs and dataflows from the store as PROV documents, built with `prov`.

The package, one job per module:

- `identifiers`: the vocabulary (namespaces, roles, dataset names) and the identifiers of
  every record, which `lineage` shares;
- `snapshot`: the consistent snapshot read from the store, also while a run writes;
- `document`: the PROV document builder (the mapping of docs/prov.md);
- `formats`: the formats, their MIME types, and `serialize` with one writer module per
  format family (`native`, `jsonld`, `rdf`, `graph`, the last the one Graphviz runner).

This module keeps the public names: `export`, `build_document`, `serialize`, the formats
and the identifier functions.
"""

from __future__ import annotations

import os
from typing import Sequence

from ..errors import ExportError
from ..query import Reader
from .document import build_document
from .formats import FORMATS, MIME_TYPES, Format, format_for_path, get_format, serialize
from ..errors import GraphvizMissing
from .identifiers import (
    ADAPTATION_COLUMNS,
    ADAPTATIONS,
    BULKY_DATASETS,
    BULKY_THRESHOLD,
    CHECKPOINT_ROLES,
    TP_NS,
    TPA_NS,
    TPID_NS,
    element_identifier,
    file_identifier,
    parse_identifier,
    plan_identifier,
    requester_identifier,
    run_identifier,
    summary_identifier,
    task_identifier,
)

__all__ = [
    "ADAPTATIONS", "ADAPTATION_COLUMNS", "BULKY_DATASETS", "BULKY_THRESHOLD", "CHECKPOINT_ROLES", "FORMATS",
    "MIME_TYPES", "TPA_NS", "TPID_NS", "TP_NS", "ExportError", "Format", "GraphvizMissing", "build_document",
    "element_identifier", "export", "file_identifier", "format_for_path", "get_format", "parse_identifier",
    "plan_identifier", "requester_identifier", "run_identifier", "serialize", "summary_identifier", "task_identifier",
]


def export(
    runs: str | Sequence[str] | None = None,
    path: str | os.PathLike | None = None,
    *,
    format: str | None = None,
    store: str | os.PathLike | Reader | None = None,
    dataflow: str | None = None,
    version: int | None = None,
    members: bool = False,
    bulky_threshold: int = BULKY_THRESHOLD,
    bulky_datasets: Sequence[str] = BULKY_DATASETS,
) -> bytes:
    """Export runs (or a dataflow) as W3C PROV; writes `path` if given and returns the bytes.

    The format defaults to the one `path`'s extension names, else PROV-JSON.
    """
    fmt = get_format(format or (format_for_path(path) if path is not None else "json"))
    document = build_document(
        runs, store=store, dataflow=dataflow, version=version, members=members,
        bulky_threshold=bulky_threshold, bulky_datasets=bulky_datasets,
    )
    data = serialize(document, fmt.name)
    if path is not None:
        with open(path, "wb") as f:
            f.write(data)
    return data
