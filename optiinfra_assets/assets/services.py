"""Builds the plain-Python workflow services from the Dagster resources (one place for that wiring)."""

from datetime import timedelta

from optiinfra_assets.workflow import Services
from resources.dagster_resources import (
    FleetResource,
    LlmResource,
    MemoryStoreResource,
    MetricStoreResource,
    StateStoreResource,
)


def build_services(
    state_store: StateStoreResource,
    metric_store: MetricStoreResource,
    memory_store: MemoryStoreResource,
    llm: LlmResource,
    fleet: FleetResource,
) -> Services:
    state = state_store.get()
    return Services(
        state=state,
        metrics=metric_store.get(),
        memory=memory_store.get(),
        target=fleet.fleet_target(state),
        llm=llm.get(),
        recommendation_ttl=timedelta(hours=fleet.recommendation_ttl_h),
        soak_s=fleet.rollout_soak_s,
    )
