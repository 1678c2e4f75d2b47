"""Small builders of domain objects shared by the agent tests."""

from __future__ import annotations

from optiinfra_assets.models import Deployment


def deployment(itype: str = "p4de.24xlarge", model: str = "Llama-3.1-70B", replicas: int = 4) -> Deployment:
    return Deployment(
        id="dep-1",
        customer_id="cust-a",
        model=model,
        instance_type=itype,
        replicas=replicas,
        base_requests_per_s=5.0,
    )
