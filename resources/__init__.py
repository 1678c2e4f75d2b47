"""Engines behind small interfaces (stores, LLM, targets, sources) and the resources choosing them."""
