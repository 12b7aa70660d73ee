"""PROV-JSONLD: the `prov` package's JSON-LD, whose embedded context makes every term PROV-O.

The W3C member submission's context maps `hadMember`, `alternateOf` and `specializationOf`
statements to qualified terms of its own `provext:` namespace, since PROV-O has no
qualified form for them, so a JSON-LD processor (rdflib, say) reading the document finds
no `prov:hadMember`, `prov:alternateOf` or `prov:specializationOf` triple. The context
embedded here keeps the statements' JSON shape (a PROV-JSONLD reader such as `prov` reads
them back unchanged) and maps them to the direct PROV-O properties instead: the statement
object stands for the collection (or the first entity), which gets the property.
"""

from __future__ import annotations

import json
from typing import Any

from prov.model import ProvDocument

from .native import prov_serializer

# statement type -> (the class its subject is in PROV-O, its subject term, its object term, the PROV-O property)
_DIRECT = {
    "Membership": ("prov:Collection", "collection", "entity", "prov:hadMember"),
    "Alternate": ("prov:Entity", "alternate1", "alternate2", "prov:alternateOf"),
    "Specialization": ("prov:Entity", "specificEntity", "generalEntity", "prov:specializationOf"),
}


def prov_o_context(context: dict[str, Any]) -> dict[str, Any]:
    """The submission's context with membership, alternate and specialization as direct PROV-O properties."""
    out = dict(context)
    for term, (cls, subject, obj, prop) in _DIRECT.items():
        if term in out:
            out[term] = {"@id": cls, "@context": {subject: "@id", obj: {"@id": prop, "@type": "@id"}}}
    return out


def write(document: ProvDocument, fmt: Any) -> bytes:
    """The document in PROV-JSONLD with its (PROV-O) context embedded, so that it reads offline."""
    prov_serializer("jsonld", fmt)  # names a missing package like the other formats
    from prov.serializers.provjsonld import encode_jsonld_document

    container = encode_jsonld_document(document, "embed")
    contexts = container.get("@context")
    if isinstance(contexts, list):
        container["@context"] = [prov_o_context(c) if isinstance(c, dict) and "Membership" in c else c for c in contexts]
    return json.dumps(container).encode("utf-8")
