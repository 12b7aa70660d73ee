"""PROV-JSON, PROV-N and PROV-XML: written by the `prov` package's own serializers."""

from __future__ import annotations

import io
import warnings
from typing import Any

from prov import serializers as prov_serializers
from prov.model import ProvDocument

from ...errors import ExportError

# the package each `prov` serializer needs beyond `prov` itself
_PACKAGES = {"xml": "lxml", "rdf": "rdflib"}


def prov_serializer(name: str, fmt: Any) -> Any:
    """The `prov` serializer class `name`; ExportError naming the package to install when it is missing."""
    try:
        return prov_serializers.get(name)
    except prov_serializers.DoNotExist:
        package = _PACKAGES.get(name, name)
        raise ExportError(
            f"the {fmt.name} format needs the {package} package, which is not installed (pip install {package})"
        ) from None


def write(document: ProvDocument, fmt: Any) -> bytes:
    """The document in PROV-JSON, PROV-N or PROV-XML (`fmt.name` json, provn, xml)."""
    serializer = prov_serializer(fmt.name, fmt)
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        serializer(document).serialize(buffer, **dict(fmt.options))
    return buffer.getvalue()
