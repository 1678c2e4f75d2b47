"""The catalog's commitment rates: every offer of a type with published rates uses them and names their
source, the ratio estimates are only a labelled fallback, and the reserved-capacity evidence says where each
recommended option's rate comes from."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

import polars as pl
import pytest

from optiinfra_assets import catalog
from optiinfra_assets.agents.cost.reserved_capacity import ReservedCapacityEvidence, analyze_reserved_capacity
from optiinfra_assets.catalog import (
    COMMITMENT_RATES_SOURCE,
    ESTIMATED_RESERVED_SOURCE,
    ESTIMATED_SAVINGS_PLAN_SOURCE,
    INSTANCE_TYPES,
    PUBLISHED_COMMITMENT_RATES,
    RESERVED_OPTIONS,
    SAVINGS_PLAN_OPTIONS,
    CommitmentOption,
    instance_type,
    reserved_offers,
    savings_plan_rate,
)
from optiinfra_assets.config import DecisionSettings
from optiinfra_assets.models import Customer, Deployment

SOURCED = sorted(PUBLISHED_COMMITMENT_RATES)


def test_the_source_is_named_by_repository_commit_path_and_date() -> None:
    assert COMMITMENT_RATES_SOURCE.startswith(
        "addisonj/pricesim@cbdb505146ff2c34ea44b6b5deaf6083643d5b5f src/catalog/aws/ec2.gen.ts"
    )
    assert "2026-09-24" in COMMITMENT_RATES_SOURCE and "us-east-1" in COMMITMENT_RATES_SOURCE


@pytest.mark.parametrize("name", SOURCED)
def test_every_offer_of_a_sourced_type_uses_the_published_rate_and_names_its_source(name: str) -> None:
    itype = instance_type(name)  # a published type the catalog does not know is a KeyError here
    published = PUBLISHED_COMMITMENT_RATES[name]
    assert len(published.reserved) == len(RESERVED_OPTIONS)
    assert len(published.savings_plans) == len(SAVINGS_PLAN_OPTIONS)
    offers = {o.option.name: o for o in reserved_offers(itype)}
    for option, rate in zip(RESERVED_OPTIONS, published.reserved, strict=True):
        if rate is None:  # AWS offers no such reservation of the type
            assert option.name not in offers
            continue
        offer = offers[option.name]
        assert offer.effective_usd_hour == rate
        assert offer.rate_source == COMMITMENT_RATES_SOURCE
        # the upfront and the hourly fee add up to the effective rate over the term
        total = offer.upfront_usd + offer.recurring_usd_hour * option.term_hours
        assert total == pytest.approx(rate * option.term_hours)
    for plan, rate in zip(SAVINGS_PLAN_OPTIONS, published.savings_plans, strict=True):
        plan_rate = savings_plan_rate(plan, itype)
        assert plan_rate.fraction_of_on_demand * itype.ondemand_usd_hour == pytest.approx(rate)
        assert plan_rate.rate_source == COMMITMENT_RATES_SOURCE


@pytest.mark.parametrize("name", SOURCED)
def test_published_rates_agree_with_the_catalog_and_fall_with_commitment(name: str) -> None:
    # A transcription error (a dropped digit, a swapped column) breaks one of these.
    itype = instance_type(name)
    published = PUBLISHED_COMMITMENT_RATES[name]
    one_year_no_upfront = published.reserved[0]
    if one_year_no_upfront is None:
        assert itype.reserved_1y_usd_hour is None
    else:
        assert itype.reserved_1y_usd_hour == pytest.approx(one_year_no_upfront, rel=1e-5)
        assert one_year_no_upfront < published.savings_plans[0] < itype.ondemand_usd_hour
    offered = [rate for rate in published.reserved if rate is not None]
    assert offered == sorted(offered, reverse=True) and len(set(offered)) == len(offered)
    assert published.savings_plans[1] < published.savings_plans[0]


def test_payment_options_split_the_rate_as_aws_bills_it() -> None:
    offers = {o.option.name: o for o in reserved_offers(instance_type("g5.xlarge"))}
    all_upfront = offers["ri-1y-all-upfront"]
    assert all_upfront.recurring_usd_hour == 0.0
    assert all_upfront.upfront_usd == pytest.approx(0.591553 * 8760)
    no_upfront = offers["ri-3y-no-upfront"]
    assert no_upfront.upfront_usd == 0.0 and no_upfront.recurring_usd_hour == 0.43459
    partial = offers["ri-3y-partial-upfront"]
    assert partial.upfront_usd == pytest.approx(0.402418 * 3 * 8760 / 2)


def test_p5_has_only_three_year_reservations_and_p5en_savings_plans_only() -> None:
    p5 = [o.option.name for o in reserved_offers(instance_type("p5.48xlarge"))]
    assert p5 == ["ri-3y-no-upfront", "ri-3y-partial-upfront", "ri-3y-all-upfront"]
    assert reserved_offers(instance_type("p5en.48xlarge")) == []
    assert savings_plan_rate(SAVINGS_PLAN_OPTIONS[0], instance_type("p5en.48xlarge")).rate_source == (
        COMMITMENT_RATES_SOURCE
    )


def test_a_type_without_published_rates_gets_estimates_labelled_as_such() -> None:
    unpublished = replace(instance_type("g5.xlarge"), name="g5.unpublished")
    one_year = unpublished.reserved_1y_usd_hour
    assert one_year is not None
    offers = reserved_offers(unpublished)
    assert [o.option.name for o in offers] == [o.name for o in RESERVED_OPTIONS]
    for offer in offers:
        assert offer.rate_source == ESTIMATED_RESERVED_SOURCE
        expected = one_year * offer.option.fraction_of_on_demand / 0.63
        assert offer.effective_usd_hour == pytest.approx(expected)
    for plan in SAVINGS_PLAN_OPTIONS:
        rate = savings_plan_rate(plan, unpublished)
        assert rate.rate_source == ESTIMATED_SAVINGS_PLAN_SOURCE
        assert rate.fraction_of_on_demand == plan.fraction_of_on_demand
    # p3: no published rates and no 1-year rate in the catalog: no reservation, estimated savings plans
    p3 = instance_type("p3.2xlarge")
    assert "p3.2xlarge" not in PUBLISHED_COMMITMENT_RATES and reserved_offers(p3) == []
    assert savings_plan_rate(SAVINGS_PLAN_OPTIONS[1], p3).rate_source == ESTIMATED_SAVINGS_PLAN_SOURCE


def test_an_unknown_savings_plan_option_is_named() -> None:
    bogus = CommitmentOption("sp-5y-no-upfront", "savings_plan", 5, "no_upfront", 0.4, 0.0)
    with pytest.raises(KeyError, match="sp-5y-no-upfront"):
        savings_plan_rate(bogus, instance_type("g5.xlarge"))


CUSTOMER = Customer(id="c", name="c", slo_p95_latency_ms=30_000, min_monthly_savings_usd=0)
YEARLY = DecisionSettings(reserved_horizon_months=12, reserved_min_history_days=5)


def _steady(itype: str, level: float, days: int = 10) -> tuple[Deployment, pl.DataFrame]:
    start = datetime(2026, 1, 5, tzinfo=UTC)
    hours = [start + timedelta(hours=h) for h in range(24 * days)]
    frame = pl.DataFrame(
        {
            "customer_id": "c",
            "deployment_id": "d",
            "instance_type": itype,
            "lifecycle": "on_demand",
            "hour": pl.Series(hours, dtype=pl.Datetime("ms", "UTC")),
            "instance_hours": [level] * len(hours),
            "usd": [level * INSTANCE_TYPES[itype].ondemand_usd_hour] * len(hours),
        }
    )
    deployment = Deployment(
        id="d",
        customer_id="c",
        model="Llama-3.1-8B",
        instance_type=itype,
        replicas=int(level),
        base_requests_per_s=1,
    )
    return deployment, frame


def test_the_evidence_names_the_source_of_each_recommended_rate() -> None:
    deployment, frame = _steady("g5.xlarge", 2.0)
    ev = analyze_reserved_capacity(CUSTOMER, deployment, frame, None, YEARLY)
    assert isinstance(ev, ReservedCapacityEvidence), ev
    recommended = set(ev.reserved_instances) | set(ev.savings_plans_usd_hour)
    assert recommended and set(ev.rate_sources) == recommended
    assert set(ev.rate_sources.values()) == {COMMITMENT_RATES_SOURCE}
    assert any(r.startswith("rates of ") and r.endswith(COMMITMENT_RATES_SOURCE) for r in ev.reasons)
    assert {o.rate_source for o in ev.options} == {COMMITMENT_RATES_SOURCE}
    # the JSON the CLI prints carries them
    dumped = ev.model_dump(mode="json")
    assert dumped["rate_sources"] == ev.rate_sources and dumped["options"][0]["rate_source"]


def test_the_evidence_says_when_a_rate_is_estimated(monkeypatch: pytest.MonkeyPatch) -> None:
    # A type the source does not list, run steadily: its recommendation says its rates are estimates.
    unpublished = replace(instance_type("g5.xlarge"), name="g5.unpublished")
    monkeypatch.setitem(catalog.INSTANCE_TYPES, unpublished.name, unpublished)
    deployment, frame = _steady(unpublished.name, 2.0)
    ev = analyze_reserved_capacity(CUSTOMER, deployment, frame, None, YEARLY)
    assert isinstance(ev, ReservedCapacityEvidence), ev
    assert ev.rate_sources and set(ev.rate_sources.values()) <= {
        ESTIMATED_RESERVED_SOURCE,
        ESTIMATED_SAVINGS_PLAN_SOURCE,
    }
    assert any(r.startswith("rates of ") and "estimated" in r for r in ev.reasons)
    assert all("estimated" in o.rate_source for o in ev.options)


def test_a_slice_of_a_host_pays_its_share_of_the_published_rates() -> None:
    half = catalog.slice_type(instance_type("g5.12xlarge"), 2)  # 2 of its 4 GPUs
    offers = {o.option.name: o for o in reserved_offers(half)}
    assert offers["ri-3y-all-upfront"].effective_usd_hour == pytest.approx(2.13269 / 2)
    assert offers["ri-3y-all-upfront"].rate_source == COMMITMENT_RATES_SOURCE
    plan = savings_plan_rate(SAVINGS_PLAN_OPTIONS[0], half)
    assert plan.fraction_of_on_demand * half.ondemand_usd_hour == pytest.approx(4.4667 / 2)
