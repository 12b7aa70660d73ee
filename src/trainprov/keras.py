"""`trainprov.keras`: the Keras 3 callback (see trainprov.integrations.keras)."""

from .integrations.keras import ProvenanceCallback, layer_facts

__all__ = ["ProvenanceCallback", "layer_facts"]
