"""The bottom layer: what models/, tasks/ and harness/ all use (registries and option checks, the run environment,
atomic file writes). It imports none of them."""
