"""Partitions: one dynamic partition per recommendation, so each executed change is its own partition."""

import dagster as dg

recommendation_partitions = dg.DynamicPartitionsDefinition(name="recommendations")
