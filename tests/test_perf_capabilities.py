"""The performance agent's capabilities on the sandbox, on the real engines (chdb, SQLite and PostgreSQL,
Qdrant local): each proposes on the deployment built for its situation and not on a healthy one, never
proposes a config the hardware cannot run, and its rollout changes the sandbox's metrics as the serving
model predicts; a quantization that costs more quality than the gate rolls back."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import pytest
from workflow_fixtures import GOOD, HISTORY, NOW, SEED, Clock, run_rollout

from optiinfra_assets import sandbox
from optiinfra_assets.agents import application
from optiinfra_assets.agents.baselines import compute_baselines
from optiinfra_assets.agents.capability import Capability
from optiinfra_assets.agents.performance.batch_tuning import BatchTuning, BatchTuningEvidence
from optiinfra_assets.agents.performance.kv_cache_tuning import KvCacheTuning, KvCacheTuningEvidence
from optiinfra_assets.agents.performance.parallelism import Parallelism, ParallelismEvidence
from optiinfra_assets.agents.performance.quantization import QuantizationCapability, QuantizationEvidence
from optiinfra_assets.catalog import instance_type, model
from optiinfra_assets.config import DecisionSettings
from optiinfra_assets.ingest import ingest
from optiinfra_assets.metrics import Domain
from optiinfra_assets.models import (
    DeploymentConfig,
    ExecutionStatus,
    KvCacheDtype,
    Quantization,
    Recommendation,
    RecommendationStatus,
)
from optiinfra_assets.serving import load_points, serving_capacity, validate_config
from optiinfra_assets.workflow import Services, decide, run_analysis_pass
from resources.metric_store import open_metric_store

KV_PRESSURE = "globex-kv-qwen32b"
FP16_HOT = "acme-fp16-llama8b"
BATCH_LIMITED = "globex-batch16-qwen7b"
OVER_SPLIT = "acme-tp4-llama8b"


def _last_full_weekday(before: datetime) -> datetime:
    """Midnight UTC starting the latest Tuesday-Friday that ends before ``before``."""
    day = before.replace(hour=0, minute=0, second=0, microsecond=0) - timedelta(days=1)
    while day.weekday() not in (1, 2, 3, 4):
        day -= timedelta(days=1)
    return day


@pytest.fixture
def weekday(svc: Services, tmp_path: Path) -> Services:
    """The workflow fixture with a whole weekday of history before its last day, in a metric store of its
    own, so that the baselines hold a weekday peak whatever day the tests run on (the sandbox's weekend
    load is 70% of a weekday's)."""
    svc.metrics = open_metric_store("", tmp_path / "weekday")
    svc.metrics.migrate()
    start = _last_full_weekday(NOW - HISTORY)
    known = svc.state.instance_index()
    with svc.metrics.session():
        for begin, end in ((start, start + timedelta(days=1)), (NOW - HISTORY, NOW)):  # ingested in order
            frames = sandbox.generate(
                svc.state.list_customers(),
                svc.state.list_deployments(),
                svc.state.list_instances(include_ended=True),
                [],
                begin,
                end,
                seed=SEED,
                step_s=60,
                quality_sample_s=60,
            )
            for domain, frame in frames.items():
                report = ingest(svc.metrics, domain, frame, known)
                assert report.quarantined == 0, report.reasons
        for domain in Domain:
            compute_baselines(svc.metrics, domain, NOW)
    return svc


def _created(
    svc: Services, cap: Capability, clock: Clock
) -> tuple[dict[str, Recommendation], dict[str, str]]:
    report = run_analysis_pass(svc, clock(), capabilities=(cap,), detectors=())
    mine = report.capabilities[cap.kind]
    assert mine.error is None, mine.error
    return {r.deployment_id: r for r in mine.created}, mine.skipped


def _kv(rec: Recommendation) -> None:
    ev = rec.evidence
    assert isinstance(ev, KvCacheTuningEvidence)
    # vLLM's preemption count (the sandbox preempts what the cache cannot hold) is the signal it acted on.
    assert ev.pressure_signal == "preemptions"
    assert ev.observed_preempted_share is not None
    assert ev.observed_preempted_share >= DecisionSettings().kv_preempted_share
    assert ev.observed_kv_usage_p95 is not None
    assert ev.observed_kv_usage_p95 >= DecisionSettings().kv_pressure_usage
    assert rec.desired.engine.kv_cache_dtype is KvCacheDtype.FP8  # an H100 has FP8
    assert rec.desired.engine.gpu_memory_utilization > rec.current.engine.gpu_memory_utilization
    assert ev.after.max_concurrency >= 2 * ev.before.max_concurrency
    assert ev.after.p95_ms < ev.before.p95_ms and ev.after.kv_cache_tokens > 2 * ev.before.kv_cache_tokens


def _quant(rec: Recommendation) -> None:
    ev = rec.evidence
    assert isinstance(ev, QuantizationEvidence)
    assert (ev.quantization_from, ev.quantization_to) == (Quantization.FP16, Quantization.FP8)
    assert rec.desired.engine.quantization is Quantization.FP8
    assert ev.after.weights_gib_per_gpu < 0.6 * ev.before.weights_gib_per_gpu
    assert ev.after.replica_capacity_rps > ev.before.replica_capacity_rps
    assert 0 < ev.expected_quality_drop_pct < ev.quality_gate_pct
    assert {o.quantization for o in ev.options} == {
        Quantization.FP8,
        Quantization.INT8,
        Quantization.INT4_AWQ,
    }


def _batch(rec: Recommendation) -> None:
    ev = rec.evidence
    assert isinstance(ev, BatchTuningEvidence)
    assert ev.max_num_seqs_from == 16 and 16 < ev.max_num_seqs_to <= ev.kv_holdable_sequences
    assert ev.after.replica_capacity_rps > 2 * ev.before.replica_capacity_rps
    # the chosen point is the highest-capacity one that holds the SLO plan on the frontier
    holding = [p for p in ev.frontier if p.holds_slo]
    assert holding and ev.after.replica_capacity_rps == pytest.approx(
        max(p.replica_capacity_rps for p in holding), rel=1e-3
    )


def _parallel(rec: Recommendation) -> None:
    ev = rec.evidence
    assert isinstance(ev, ParallelismEvidence)
    assert ev.trigger == "gpus_wasted"
    assert ev.current_layout.interconnect == "pcie" and ev.current_layout.tensor_parallel_size == 4
    assert ev.proposed_layout.gpus < ev.current_layout.gpus
    assert ev.after.p95_ms <= 0.8 * ev.slo_p95_ms
    assert rec.estimate.monthly_savings_usd > 0


CASES: dict[str, tuple[Capability, str, Callable[[Recommendation], None]]] = {
    "kv_cache_tuning": (KvCacheTuning(), KV_PRESSURE, _kv),
    "quantization": (QuantizationCapability(), FP16_HOT, _quant),
    "batch_tuning": (BatchTuning(), BATCH_LIMITED, _batch),
    "parallelism": (Parallelism(), OVER_SPLIT, _parallel),
}


def test_each_capability_proposes_on_its_situation_only(weekday: Services, clock: Clock) -> None:
    for kind, (cap, situation, check) in CASES.items():
        created, skipped = _created(weekday, cap, clock)
        assert situation in created, f"{kind}: {skipped.get(situation)}"
        rec = created[situation]
        assert rec.status is RecommendationStatus.PENDING, f"{kind}: {rec.status_reason}"
        assert [v.agent for v in rec.validations] == ["performance", "resource", "application"]
        check(rec)
        assert rec.evidence.reasons and rec.summary
        # Stored and read back typed.
        assert type(weekday.state.get_recommendation(rec.id).evidence) is cap.evidence_model
        # Healthy: the spot candidate at half its capacity, vLLM's defaults, one GPU.
        assert GOOD not in created and GOOD in skipped, kind
        # Never a config vLLM could not run on its hardware.
        for other in created.values():
            validate_config(weekday.state.get_deployment(other.deployment_id).model, other.desired)


def _observed_vs_predicted(svc: Services, rec: Recommendation, at: datetime) -> tuple[dict, dict, dict]:
    """Medians of the deployment's next five minutes of sandbox metrics, and the serving model's
    predictions at the same per-instance loads under the desired and the previous config."""
    dep = svc.state.get_deployment(rec.deployment_id)
    running = svc.state.list_instances(rec.deployment_id)
    frames = sandbox.generate(
        svc.state.list_customers(), [dep], running, [], at, at + timedelta(minutes=5), seed=SEED, step_s=5
    )
    perf = frames[Domain.PERFORMANCE]
    load = perf["requests_per_s"].to_numpy()
    names = ("itl_ms", "ttft_ms", "latency_p95_ms", "kv_cache_usage", "preemptions_per_s")
    observed = {n: float(np.median(perf[n].to_numpy())) for n in names}

    def predicted(config: DeploymentConfig) -> dict[str, float]:
        itype = instance_type(config.instance_type)
        points = load_points(serving_capacity(model(dep.model), itype, config.engine), itype, load)
        return {n: float(np.median(points[n])) for n in names}

    return observed, predicted(rec.desired), predicted(rec.current)


def test_each_rollout_changes_the_sandbox_as_the_serving_model_predicts(
    weekday: Services, clock: Clock
) -> None:
    for kind, (cap, situation, _) in CASES.items():
        rec = _created(weekday, cap, clock)[0][situation]
        decide(weekday.state, rec.id, "approve", "alice", "", "cli", now=clock())
        execution = run_rollout(weekday, clock, rec.id, capabilities=(cap,))
        assert execution.status is ExecutionStatus.SUCCEEDED, f"{kind}: {execution.reason}"
        checked = {c.name for s in execution.stages for c in s.checks}
        assert checked == (
            {"quality", "latency"} if application.quality_gate in cap.stage_checks else {"latency"}
        )
        running = weekday.state.list_instances(situation)
        assert len(running) == rec.desired.replicas, kind
        assert {(i.instance_type, i.engine) for i in running} == {
            (rec.desired.instance_type, rec.desired.engine)
        }
        observed, now, before = _observed_vs_predicted(weekday, rec, clock())
        for name, value in observed.items():
            assert value == pytest.approx(now[name], rel=0.06, abs=1e-3), f"{kind}: {name}"
        # and the old config would have served them differently
        assert any(abs(before[n] - observed[n]) > 0.2 * max(observed[n], 1e-3) for n in observed), kind
        assert weekday.memory.count(cap.kind) == 1, kind


class Int8Only(QuantizationCapability):
    """The quantization capability restricted to INT8 W8A8: ~1.5% quality for an 8B model."""

    formats = (Quantization.INT8,)


def test_a_quantization_that_costs_more_than_the_gate_rolls_back(weekday: Services, clock: Clock) -> None:
    # Analysed under the default 5% gate the 1.5% expected cost passes; the gate is then tightened to 0.5%
    # before the rollout: the sandbox really serves lower quality, and the quality check rolls it back.
    cap = Int8Only()
    created, skipped = _created(weekday, cap, clock)
    assert FP16_HOT in created, skipped.get(FP16_HOT)
    rec = created[FP16_HOT]
    assert rec.status is RecommendationStatus.PENDING, rec.status_reason
    assert rec.desired.engine.quantization is Quantization.INT8
    assert 1.0 < rec.evidence.expected_quality_drop_pct < 2.0
    decide(weekday.state, rec.id, "approve", "alice", "", "cli", now=clock())
    weekday.decisions = DecisionSettings(max_quality_drop_pct=0.5)
    execution = run_rollout(weekday, clock, rec.id, capabilities=(cap,))
    assert execution.status is ExecutionStatus.ROLLED_BACK, execution.reason
    failed = [c for s in execution.stages for c in s.checks if c.name == "quality" and not c.passed]
    assert failed and failed[0].threshold == 0.5
    assert failed[0].value < failed[0].baseline  # the served quality fell, as the serving model expected
    assert weekday.state.get_deployment(FP16_HOT).config == rec.current
    assert {i.engine.quantization for i in weekday.state.list_instances(FP16_HOT)} == {Quantization.FP16}
