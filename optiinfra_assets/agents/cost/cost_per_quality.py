"""Cost per quality: GPU-hours and dollars joined to the application agent's quality scores.

The figure is dollars per 1,000 good responses, per deployment and per model, over a window of complete
hours. Quality is scored on a sample of requests, so the good responses of an hour are the requests served
(the hourly mean of requests/s per instance x the instance-seconds the cost rows cover) times the share
of that hour's scored samples whose quality reaches ``DecisionSettings.good_response_min_quality``; an
hour with no scored sample takes the deployment's share over the window.

GPU-hours are the instance-hours of each instance times the GPUs it holds: a whole instance its type's GPUs,
a slice of a shared host (``Instance.gpus``) its own GPUs only, not its host's.

:func:`read_inputs` reads the three per deployment-hour frames with set-based queries (one per domain, the
whole fleet at once); :func:`cost_per_quality` and :func:`per_model` are pure.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import polars as pl

from optiinfra_assets.catalog import instance_type
from optiinfra_assets.metrics import SCHEMAS, Domain
from optiinfra_assets.models import Deployment
from resources.metric_store import MetricStore

SECONDS_PER_HOUR = 3600.0
RESPONSES_PER_FIGURE = 1000.0

COLUMNS = (
    "deployment_id",
    "customer_id",
    "model",
    "gpu_hours",
    "cost_usd",
    "requests",
    "scored",
    "good_share",
    "good_responses",
    "usd_per_1k_good",
    "usd_per_gpu_hour",
)


@dataclass(frozen=True)
class CostQualityInputs:
    """Per deployment-hour frames of a window (see read_inputs for their columns)."""

    cost: pl.DataFrame  # deployment_id, hour, instance_id, instance_type, instance_hours, cost_usd
    load: pl.DataFrame  # deployment_id, hour, requests_per_s_avg
    quality: pl.DataFrame  # deployment_id, hour, scored, good


def read_inputs(
    metrics: MetricStore, since: datetime, until: datetime, min_quality: float
) -> CostQualityInputs:
    """The window [since, until)'s cost, load and scored quality per deployment-hour, one query each."""
    db = metrics.database
    window = {"since": since, "until": until}
    in_window = "ts >= {since:DateTime64(3, 'UTC')} AND ts < {until:DateTime64(3, 'UTC')}"
    # A cost row's cost over its price is the time it covers: no assumption on the sample step. Per instance,
    # since a slice of a shared host holds fewer GPUs than its type has.
    cost = metrics.query_polars(
        "SELECT deployment_id, toDateTime64(toStartOfHour(ts), 3, 'UTC') AS hour, instance_id, instance_type, "
        "sumIf(cost_usd / price_usd_per_hour, price_usd_per_hour > 0) AS instance_hours, "
        f"sum(cost_usd) AS usd FROM {db}.{SCHEMAS[Domain.COST].table} WHERE {in_window} "
        "GROUP BY deployment_id, hour, instance_id, instance_type",
        window,
    ).rename({"usd": "cost_usd"})
    load = metrics.hourly(Domain.PERFORMANCE, since=since)
    load = load.filter(pl.col("hour") < pl.lit(until).dt.cast_time_unit("ms")).select(
        "deployment_id", "hour", "requests_per_s_avg"
    )
    quality = metrics.query_polars(
        "SELECT deployment_id, toDateTime64(toStartOfHour(ts), 3, 'UTC') AS hour, count() AS scored, "
        "countIf(quality_score >= {min_quality:Float64}) AS good "
        f"FROM {db}.{SCHEMAS[Domain.QUALITY].table} WHERE {in_window} GROUP BY deployment_id, hour",
        window | {"min_quality": min_quality},
    )
    return CostQualityInputs(cost=cost, load=load, quality=quality)


def _hour_key(frame: pl.DataFrame) -> pl.DataFrame:
    return frame.with_columns(pl.col("hour").dt.replace_time_zone(None).dt.cast_time_unit("ms"))


def cost_per_quality(
    inputs: CostQualityInputs, deployments: list[Deployment], slice_gpus: Mapping[str, int] | None = None
) -> pl.DataFrame:
    """One row per deployment with cost in the window (COLUMNS); ``usd_per_1k_good`` is null where no good
    response was served. Deployments unknown to the fleet are left out (they cannot be named by model).

    ``slice_gpus``: instance id -> the GPUs a slice of a shared host holds (StateStore.slice_gpus, ended
    slices included); an instance not in it is a whole instance and counts its type's GPUs."""
    known = {d.id: d for d in deployments}
    if inputs.cost.is_empty():
        return pl.DataFrame(schema={c: pl.Float64 for c in COLUMNS} | _keys_schema())
    type_gpus = {
        t: float(instance_type(t).gpu_count) for t in inputs.cost["instance_type"].unique().to_list()
    }
    held = pl.DataFrame(
        {"instance_id": list(slice_gpus or {}), "held_gpus": [float(g) for g in (slice_gpus or {}).values()]},
        schema={"instance_id": pl.String, "held_gpus": pl.Float64},
    )
    gpus = pl.coalesce(
        pl.col("held_gpus"), pl.col("instance_type").replace_strict(type_gpus, return_dtype=pl.Float64)
    )
    cost = (
        _hour_key(inputs.cost)
        .filter(pl.col("deployment_id").is_in(list(known)))
        .join(held, on="instance_id", how="left")
        .with_columns((pl.col("instance_hours") * gpus).alias("gpu_hours"))
        .group_by("deployment_id", "hour")
        .agg(pl.col("instance_hours").sum(), pl.col("gpu_hours").sum(), pl.col("cost_usd").sum())
    )
    quality = _hour_key(inputs.quality).with_columns(
        pl.col("scored").cast(pl.Float64), pl.col("good").cast(pl.Float64)
    )
    overall = quality.group_by("deployment_id").agg(
        (pl.col("good").sum() / pl.col("scored").sum()).alias("window_share")
    )
    hourly = (
        cost.join(_hour_key(inputs.load), on=["deployment_id", "hour"], how="left")
        .join(quality, on=["deployment_id", "hour"], how="left")
        .join(overall, on="deployment_id", how="left")
        .with_columns(
            (pl.col("requests_per_s_avg").fill_null(0.0) * pl.col("instance_hours") * SECONDS_PER_HOUR).alias(
                "requests"
            ),
            pl.when(pl.col("scored") > 0)
            .then(pl.col("good") / pl.col("scored"))
            .otherwise(pl.col("window_share"))
            .fill_null(0.0)
            .alias("share"),
        )
        .with_columns((pl.col("requests") * pl.col("share")).alias("good_responses"))
    )
    out = (
        hourly.group_by("deployment_id")
        .agg(
            pl.col("gpu_hours").sum(),
            pl.col("cost_usd").sum(),
            pl.col("requests").sum(),
            pl.col("scored").sum().fill_null(0.0),
            pl.col("good").sum().fill_null(0.0),
            pl.col("good_responses").sum(),
        )
        .with_columns(
            pl.col("deployment_id")
            .replace_strict({k: d.customer_id for k, d in known.items()})
            .alias("customer_id"),
            pl.col("deployment_id").replace_strict({k: d.model for k, d in known.items()}).alias("model"),
        )
    )
    return _figures(out).select(COLUMNS).sort("deployment_id")


def _keys_schema() -> dict[str, Any]:
    return {"deployment_id": pl.String, "customer_id": pl.String, "model": pl.String}


def _figures(frame: pl.DataFrame) -> pl.DataFrame:
    """The ratios of summed figures (a mean of per-hour ratios would weigh a quiet hour like a busy one)."""
    return frame.with_columns(
        pl.when(pl.col("scored") > 0).then(pl.col("good") / pl.col("scored")).alias("good_share"),
        pl.when(pl.col("good_responses") > 0)
        .then(pl.col("cost_usd") / pl.col("good_responses") * RESPONSES_PER_FIGURE)
        .alias("usd_per_1k_good"),
        pl.when(pl.col("gpu_hours") > 0)
        .then(pl.col("cost_usd") / pl.col("gpu_hours"))
        .alias("usd_per_gpu_hour"),
    )


def per_model(per_deployment: pl.DataFrame) -> pl.DataFrame:
    """The same figures per model, over all its deployments (COLUMNS without deployment and customer)."""
    summed = per_deployment.group_by("model").agg(
        pl.col("gpu_hours").sum(),
        pl.col("cost_usd").sum(),
        pl.col("requests").sum(),
        pl.col("scored").sum(),
        (pl.col("good_share").fill_null(0.0) * pl.col("scored")).sum().alias("good"),
        pl.col("good_responses").sum(),
    )
    return (
        _figures(summed)
        .select([c for c in COLUMNS if c not in ("deployment_id", "customer_id")])
        .sort("model")
    )
