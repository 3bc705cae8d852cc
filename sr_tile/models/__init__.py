"""Model registry and descriptors."""

from sr_tile.models.descriptor import ModelDescriptor, Routing
from sr_tile.models.registry import DEFAULT_MODEL, MODELS, ModelEntry, create_model, get_entry

__all__ = [
    "DEFAULT_MODEL",
    "MODELS",
    "ModelDescriptor",
    "ModelEntry",
    "Routing",
    "create_model",
    "get_entry",
]
