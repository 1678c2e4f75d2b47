"""Jobs: metric refresh, analysis refresh and the partitioned executor."""

import dagster as dg

from optiinfra_assets.agents import AGENTS
from optiinfra_assets.partitions import recommendation_partitions

metrics_refresh_job = dg.define_asset_job(
    "metrics_refresh_job",
    selection=dg.AssetSelection.groups("metrics"),
    description="Collect new metrics from the fleet (a week of backfill at first start) and ingest them.",
)

analysis_refresh_job = dg.define_asset_job(
    "analysis_refresh_job",
    selection=dg.AssetSelection.groups("baselines", "agents", *AGENTS),
    description="Recompute baselines, agent health, every capability's recommendations and every "
    "detector's findings now (automation does this every 15 minutes on its own).",
)

recommendation_executor_job = dg.define_asset_job(
    "recommendation_executor_job",
    selection=dg.AssetSelection.groups("executions"),
    partitions_def=recommendation_partitions,
    description="Apply one approved recommendation (partition = its id) in stages with automatic rollback.",
)

# There is no decision job: a Dagster job's config cannot say who launched it, so anyone who reached the UI
# could approve anything as anyone. People decide in the portal (logged in, role and risk limit checked)
# or with `optiinfra approve` on the host; approval_sensor launches the executor either way.
