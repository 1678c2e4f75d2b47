"""The customer portal: a small FastAPI app beside the Dagster UI (which stays the operators' console).

Everything it shows or does goes through its REST API (``/api/...``, OpenAPI at ``/docs``), which calls
the project's domain functions and stores; nothing here decides, lists or executes on its own.
"""
