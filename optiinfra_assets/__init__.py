"""OptiInfra: a Dagster asset graph that keeps an LLM inference fleet cheap, fast, well used and safe."""
