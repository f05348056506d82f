"""Model registry, the shared backbone and the registered sequence layers (importing this package registers them)."""
from models.registry import build_layer, list_layers, register_layer
from models import lstm, transformer  # noqa: F401  (registration)
from models.backbone import BackboneConfig, SequenceModel, build_model

__all__ = ["BackboneConfig", "SequenceModel", "build_layer", "build_model", "list_layers", "register_layer"]
