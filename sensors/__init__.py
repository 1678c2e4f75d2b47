"""Sensors that refresh the asset graph, launch approved executions and record failures."""
