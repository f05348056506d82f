"""Model registry, the shared backbone and the registered sequence layers (importing this package registers them)."""
from models.registry import build_layer, list_layers, register_layer
from models import efficient_attention, lru, mamba, rnn, s5, transformer  # noqa: F401  (registration)
from models.s4 import layer as _s4_layer  # noqa: F401  (registers s4, s4d)
from models.backbone import BackboneConfig, SequenceModel, build_model

__all__ = ["BackboneConfig", "SequenceModel", "build_layer", "build_model", "list_layers", "register_layer"]
