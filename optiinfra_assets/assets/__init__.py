"""Dagster assets: thin layers over the plain-Python domain in optiinfra_assets and its agents."""
