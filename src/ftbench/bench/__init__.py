"""Measurement: the timing core, GPU state and the environment record."""
