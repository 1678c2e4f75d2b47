"""The resource agent: judges whether a proposed config fits and its capacity exists (memory, GPUs, the
spot pool)."""

from __future__ import annotations

from optiinfra_assets.agents.capability import ValidationRequest
from optiinfra_assets.catalog import InstanceType, model, replica_type
from optiinfra_assets.models import Validation
from optiinfra_assets.serving import ConfigError, serving_capacity, validate_config

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


def validate(request: ValidationRequest) -> Validation:
    """Pass when the proposed config fits the model and GPU, and the spot pool can hold its spot replicas."""
    proposed = request.proposed
    itype = replica_type(proposed)  # a slice of a shared host: its GPUs only
    problems: list[str] = []
    notes: list[str] = []
    figures: dict[str, float] = {
        "replicas_needed": float(proposed.replicas),
        "gpu_memory_gib_per_gpu": itype.gpu_memory_gib_per_gpu,
    }
    try:
        validate_config(request.deployment.model, proposed)
    except ConfigError as exc:
        problems.append(f"{request.deployment.model} does not fit as proposed: {exc}")
    cap = serving_capacity(model(request.deployment.model), itype, proposed.engine)
    figures |= {
        "weight_gib_per_gpu": round(cap.weight_gib_per_gpu, 2),
        "kv_cache_tokens": float(cap.kv_cache_tokens),
    }
    if not cap.fits and not problems:
        problems.append(f"{request.deployment.model} does not fit {itype.name}: {cap.reason}")
    if cap.fits:
        notes.append(cap.reason)
    gpus = proposed.replicas * itype.gpu_count
    figures["gpus_needed"] = float(gpus)
    quota = request.settings.gpu_quota_per_family
    if gpus > quota:
        problems.append(
            f"{proposed.replicas} x {itype.name} need {gpus} GPUs, over the {quota}-GPU quota of the "
            f"{itype.family} family"
        )
    if proposed.spot_replicas:
        pool, n_azs, known = spot_pool_instances(itype)
        figures |= {"spot_azs": float(n_azs), "spot_pool_instances_estimate": float(pool)}
        if itype.spot_usd_hour is None:
            problems.append(f"{itype.name} has no spot price: there is no spot market to move to")
        if pool < proposed.spot_replicas:
            problems.append(
                f"the spot pool (~{pool} instances) is thinner than the {proposed.spot_replicas} replicas needed"
            )
        az_text = f"{n_azs} AZ{'s' if n_azs != 1 else ''}" + ("" if known else " (AZ count unknown, assumed)")
        notes.insert(
            0,
            f"heuristic spot pool: {az_text} x {max(1, SPOT_GPUS_PER_AZ // itype.gpu_count)} instances/AZ "
            f"({SPOT_GPUS_PER_AZ} GPUs per AZ / {itype.gpu_count} per instance) = ~{pool} for "
            f"{proposed.spot_replicas} spot replicas",
        )
    return Validation(agent=AGENT, passed=not problems, detail="; ".join(problems + notes), figures=figures)
