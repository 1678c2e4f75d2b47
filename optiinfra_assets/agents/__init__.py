"""Each agent's logic: plain Python the Dagster assets call."""
