"""`trainprov.lightning`: the Lightning callback and its logger (see trainprov.integrations.lightning)."""

from .integrations.lightning import Provenance, ProvenanceLogger

__all__ = ["Provenance", "ProvenanceLogger"]
