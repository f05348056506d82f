"""Model registry, the shared backbone and the registered sequence layers."""
