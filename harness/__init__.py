"""Training loop, measurement, result records, tables and the suite runner."""
