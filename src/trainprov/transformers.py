"""`trainprov.transformers`: the Hugging Face Transformers Trainer callback (see trainprov.integrations.transformers)."""

from .integrations.transformers import ProvenanceCallback, checkpoint_weights, schedule_config

__all__ = ["ProvenanceCallback", "checkpoint_weights", "schedule_config"]
