"""The resource agent: checks that the capacity a change needs exists (spot market, memory fit, pool depth)."""

from __future__ import annotations

from optiinfra_assets.agents.cost import SpotAnalysis
from optiinfra_assets.catalog import InstanceType, instance_type, model
from optiinfra_assets.models import Deployment, Validation
from optiinfra_assets.serving import ServingProfile, serving_capacity

AGENT = "resource"

# Heuristic, not a measurement: one availability zone's spot pool of a GPU type is assumed to yield about
# this many GPUs reliably, so an 8-GPU type gets 4 instances per AZ and a 1-GPU type 32.
SPOT_GPUS_PER_AZ = 32
# Where the catalog does not know in how many AZs the type has a spot market, assume one (cautious).
DEFAULT_SPOT_AZS = 1


def spot_pool_instances(itype: InstanceType) -> tuple[int, int, bool]:
    """(estimated spot instances available, AZs counted, whether the AZ count is known) - a heuristic."""
    known = itype.spot_n_azs is not None
    n_azs = itype.spot_n_azs if itype.spot_n_azs is not None else DEFAULT_SPOT_AZS
    per_az = max(1, SPOT_GPUS_PER_AZ // itype.gpu_count)
    return n_azs * per_az, n_azs, known


def _market_problems(itype: InstanceType) -> list[str]:
    problems = []
    if itype.spot_usd_hour is None:
        problems.append(f"{itype.name} has no spot price: there is no spot market to move to")
    if itype.spot_n_azs is not None and itype.spot_n_azs < 1:
        problems.append(f"{itype.name} has a spot market in {itype.spot_n_azs} AZs")
    return problems


def validate_spot_migration(deployment: Deployment, analysis: SpotAnalysis) -> Validation:
    """Pass when the type has a spot market, the model fits it, and the spot pool can hold the replicas."""
    itype = instance_type(analysis.instance_type)
    cap = serving_capacity(model(deployment.model), itype, ServingProfile())
    pool, n_azs, known = spot_pool_instances(itype)
    problems = _market_problems(itype)
    if not cap.fits:
        problems.append(f"{deployment.model} does not fit {itype.name}: {cap.reason}")
    if pool < analysis.replicas:
        problems.append(
            f"the spot pool (~{pool} instances) is thinner than the {analysis.replicas} replicas needed"
        )
    az_text = f"{n_azs} AZ{'s' if n_azs != 1 else ''}" + ("" if known else " (AZ count unknown, assumed)")
    pool_text = (
        f"heuristic spot pool: {az_text} x {max(1, SPOT_GPUS_PER_AZ // itype.gpu_count)} instances/AZ "
        f"({SPOT_GPUS_PER_AZ} GPUs per AZ / {itype.gpu_count} per instance) = ~{pool} for "
        f"{analysis.replicas} replicas"
    )
    fit_text = cap.reason if cap.fits else "model does not fit"
    detail = "; ".join([*problems, pool_text, fit_text]) if problems else f"{pool_text}; {fit_text}"
    figures = {
        "spot_azs": float(n_azs),
        "spot_pool_instances_estimate": float(pool),
        "replicas_needed": float(analysis.replicas),
        "weight_gib_per_gpu": round(cap.weight_gib_per_gpu, 2),
        "gpu_memory_gib_per_gpu": itype.gpu_memory_gib_per_gpu,
        "kv_cache_tokens": float(cap.kv_cache_tokens),
    }
    return Validation(agent=AGENT, passed=not problems, detail=detail, figures=figures)
