"""Predictive autoscaling: the pure decision (sizing from the serving model, forecast, fallback, hysteresis,
cooldown, clamping) and the capability end to end on the sandbox (approved by its policy, applied, the fleet
changed)."""

from __future__ import annotations

import numpy as np
import pytest
from workflow_fixtures import Clock, run_rollout

from optiinfra_assets.agents.resource.autoscaling import (
    Autoscaling,
    AutoscalingEvidence,
    RateForecast,
    decide_replicas,
    forecast_rate,
    replica_sizing,
    scaled_config,
)
from optiinfra_assets.catalog import default_config
from optiinfra_assets.config import DecisionSettings
from optiinfra_assets.models import ExecutionStatus, RecommendationStatus
from optiinfra_assets.workflow import Services, run_analysis_pass

SETTINGS = DecisionSettings()
CONFIG = default_config("p5.4xlarge", 4)
SIZING = replica_sizing("Llama-3.1-8B", CONFIG, 30_000.0, SETTINGS)


def _diurnal(days: int, step_s: int = 600) -> tuple[np.ndarray, np.ndarray]:
    ts = np.arange(days * 86_400 // step_s) * float(step_s)
    rate = 1000.0 + 800.0 * np.sin(2 * np.pi * ts / 86_400)
    return ts, rate


def test_sizing_holds_the_slo_at_the_limit_and_breaks_past_it() -> None:
    limit = SIZING.max_rps_per_replica
    assert 0 < limit < SIZING.capacity.max_requests_per_s
    assert SIZING.p95_ms(limit * 10, 10) <= SIZING.target_p95_ms
    assert SIZING.p95_ms(limit * 1.05 * 10, 10) > SIZING.target_p95_ms
    assert SIZING.replicas_for(limit * 10 + 0.01) == 11


def test_predictive_scales_before_the_peak_and_reactive_after() -> None:
    ts, rate = _diurnal(4)
    # Stop on the rising edge: the coming hour is busier than now.
    end = int(np.argmax(np.diff(rate[-144:]))) + len(rate) - 144
    history, times = rate[:end], ts[:end]
    fc = forecast_rate(history, times, SETTINGS)
    assert fc.peak_rps is not None and fc.method is not None
    now = float(history[-1])
    current = SIZING.replicas_for(now)
    predictive = decide_replicas(now, fc, current, 1, 100, SIZING, SETTINGS)
    reactive = decide_replicas(now, None, current, 1, 100, SIZING, SETTINGS)
    assert predictive.method == "predictive" and fc.peak_rps > now
    assert predictive.target_replicas > current  # ordered before the load arrives
    assert predictive.planned_rps == pytest.approx(fc.peak_rps)
    assert predictive.slo_margin >= SETTINGS.autoscaling_slo_margin - 1e-6
    assert reactive.method == "reactive"


def test_a_forecast_with_too_little_history_falls_back_to_reactive_and_says_so() -> None:
    ts, rate = _diurnal(1)
    fc = forecast_rate(rate[:5], ts[:5], SETTINGS)
    assert fc.peak_rps is None and "too few" in (fc.fallback_reason or "")
    decision = decide_replicas(float(rate[4]), fc, 2, 1, 100, SIZING, SETTINGS)
    assert decision.method == "reactive_fallback"
    assert "reactive scaling instead" in (decision.fallback_reason or "")
    per_replica = SIZING.capacity.max_requests_per_s * SETTINGS.autoscaling_target_utilization
    assert decision.replicas_needed == int(np.ceil(rate[4] / per_replica))


def test_a_target_outside_the_bounds_is_clamped_and_recorded() -> None:
    high = RateForecast(SIZING.max_rps_per_replica * 50, "ses(alpha=1)", None)
    decision = decide_replicas(10.0, high, 4, 2, 8, SIZING, SETTINGS)
    assert decision.replicas_needed == 50 and decision.target_replicas == 8
    assert decision.clamped == "max_replicas"
    assert decision.slo_margin < 0  # the bound costs the SLO, and the decision says by how much
    low = decide_replicas(0.01, RateForecast(0.01, "ses(alpha=1)", None), 4, 3, 8, SIZING, SETTINGS)
    assert low.target_replicas == 3 and low.clamped == "min_replicas"


def test_hysteresis_and_cooldown_hold_a_scale_down() -> None:
    quiet = RateForecast(SIZING.max_rps_per_replica * 18.5, "ses(alpha=1)", None)
    # 19 of 20 needed: within the 10% hysteresis band, so 20 stay
    held = decide_replicas(1.0, quiet, 20, 1, 100, SIZING, SETTINGS, since_last_change_s=10_000)
    assert held.replicas_needed == 19 and held.target_replicas == 20 and "hysteresis" in (held.held or "")
    much_lower = RateForecast(SIZING.max_rps_per_replica * 3, "ses(alpha=1)", None)
    cooling = decide_replicas(1.0, much_lower, 10, 1, 100, SIZING, SETTINGS, since_last_change_s=60)
    assert cooling.target_replicas == 10 and "cooldown" in (cooling.held or "")
    down = decide_replicas(1.0, much_lower, 10, 1, 100, SIZING, SETTINGS, since_last_change_s=10_000)
    assert down.target_replicas == 3 and down.held is None
    # scale-up never waits for the cooldown
    up = decide_replicas(
        1.0, RateForecast(SIZING.max_rps_per_replica * 20, "x", None), 10, 1, 100, SIZING, SETTINGS, 5
    )
    assert up.target_replicas == 20


def test_bad_input_names_the_field() -> None:
    with pytest.raises(ValueError, match="observed_rps"):
        decide_replicas(float("nan"), None, 2, 1, 4, SIZING, SETTINGS)
    with pytest.raises(ValueError, match="min_replicas"):
        decide_replicas(1.0, None, 2, 5, 4, SIZING, SETTINGS)


def test_the_written_policy_approves_replica_changes_within_bounds_only() -> None:
    cap = Autoscaling()
    current = CONFIG.model_copy(update={"min_replicas": 2, "max_replicas": 8})
    assert "within the approved bounds" in (cap.policy_approval(current, scaled_config(current, 6)) or "")
    assert (
        cap.policy_approval(
            current, current.model_copy(update={"max_replicas": 16, "on_demand_replicas": 12})
        )
        is None
    )
    other = current.model_copy(update={"instance_type": "p5.48xlarge"})
    assert cap.policy_approval(current, other) is None
    spot = current.model_copy(update={"on_demand_replicas": 2, "spot_replicas": 2})
    assert scaled_config(spot, 1).spot_replicas == 1 and scaled_config(spot, 6).spot_replicas == 2


def test_autoscaling_on_the_sandbox_is_approved_by_policy_and_changes_the_fleet(
    svc: Services, clock: Clock
) -> None:
    cap = Autoscaling()
    report = run_analysis_pass(svc, clock(), capabilities=(cap,), detectors=())
    mine = report.capabilities[cap.kind]
    assert mine.error is None, mine.error
    decided = set(mine.skipped) | {r.deployment_id for r in mine.created}
    assert decided == {d.id for d in svc.state.list_deployments()}
    assert mine.created, mine.skipped
    # only the customer with a written autoscaling policy is scaled (the sandbox's initech)
    assert {r.customer_id for r in mine.created} == {"initech"}
    assert "no written autoscaling policy" in mine.skipped["acme-chat-8b"]
    # its idle deployment (6% at the weekday peak) is scaled down to the floor of its bounds
    idle = next(r for r in mine.created if r.deployment_id == "initech-idle-mistral7b")
    assert idle.desired.replicas == idle.desired.min_replicas == 1
    rec = mine.created[0]
    ev = rec.evidence
    assert isinstance(ev, AutoscalingEvidence)
    # the decision records the forecast, the replicas it implies and the SLO margin
    assert ev.method == "predictive" and ev.forecast_method and ev.forecast_peak_rps is not None
    assert ev.target_replicas == rec.desired.replicas != rec.current.replicas
    assert ev.slo_margin > 0 and ev.predicted_p95_ms < ev.slo_p95_ms
    assert rec.id in mine.auto_approved
    stored = svc.state.get_recommendation(rec.id)
    assert stored.status is RecommendationStatus.APPROVED
    before = len(svc.state.list_instances(rec.deployment_id))
    execution = run_rollout(svc, clock, rec.id, capabilities=(cap,))
    assert execution.status is ExecutionStatus.SUCCEEDED, execution.reason
    assert [s.stage_pct for s in execution.stages] == [100]
    after = svc.state.list_instances(rec.deployment_id)
    assert len(after) == rec.desired.replicas != before
    assert svc.state.get_deployment(rec.deployment_id).config.replicas == rec.desired.replicas


def test_the_fast_path_asset_scales_by_policy_in_dagster(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    import dagster as dg

    from optiinfra_assets import definitions
    from optiinfra_assets.assets.autoscaling import FAST_PATH_AUTOMATION, autoscaling_fast_path
    from optiinfra_assets.assets.baselines import BASELINE_ASSETS
    from optiinfra_assets.assets.metrics import fleet_inventory, raw_metrics
    from optiinfra_assets.partitions import recommendation_partitions
    from resources.state_store import StateStore

    url = f"sqlite:///{tmp_path / 'state.db'}"
    env = {
        "OPTIINFRA_HOME": str(tmp_path / "home"),
        "OPTIINFRA_DATABASE_URL": url,
        "OPTIINFRA_SEED": "7",
        "OPTIINFRA_BACKFILL_DAYS": "2",
        "OPTIINFRA_BACKFILL_STEP_S": "120",
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert "every 2 minutes" in (FAST_PATH_AUTOMATION.get_label() or "")
    resources = definitions.resources()
    with dg.instance_for_test() as instance:
        assert dg.materialize([fleet_inventory, raw_metrics], resources=resources, instance=instance).success
        result = dg.materialize(
            [*BASELINE_ASSETS.values(), autoscaling_fast_path], resources=resources, instance=instance
        )
        assert result.success
        (event,) = [
            e
            for e in result.get_asset_materialization_events()
            if e.asset_key == dg.AssetKey("autoscaling_fast_path")
        ]
        metadata = {k: v.value for k, v in event.materialization.metadata.items()}
        assert metadata["error"] == "" and metadata["created"] >= 1 and metadata["auto_approved"] >= 1
        approved = StateStore(url).list_recommendations(status="approved", kind="autoscaling")
        assert approved and all(r.customer_id == "initech" for r in approved)
        assert {r.id for r in approved} <= set(
            instance.get_dynamic_partitions(recommendation_partitions.name)
        )


def test_a_forecast_behind_the_observed_level_is_raised_by_its_error() -> None:
    # The forecast expected 100 req/s for the step in progress and at most 130 over the lead window; 150 are
    # arriving already: the ramp it has not seen is added to its peak (180), not only the observation (150).
    behind = RateForecast(130.0, "ses(alpha=1)", None, now_rps=100.0)
    decision = decide_replicas(150.0, behind, 5, 1, 100, SIZING, SETTINGS)
    assert decision.planned_rps == pytest.approx(180.0)
    assert decision.target_replicas == SIZING.replicas_for(180.0) > SIZING.replicas_for(150.0)
    # A forecast at or above the observed level is taken as it is.
    ahead = RateForecast(130.0, "ses(alpha=1)", None, now_rps=120.0)
    assert decide_replicas(110.0, ahead, 5, 1, 100, SIZING, SETTINGS).planned_rps == pytest.approx(130.0)
