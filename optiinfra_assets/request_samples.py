"""Sampled requests as text, through the one ingestion path: their scores become the quality domain's
rows, their text the ``request_samples`` table.

A request frame has the quality domain's keys and ``request_id``, the text (``prompt``, ``context``,
``response``), optionally ``latency_ms``, and optionally its scores: a row without them (a real
deployment's log) is scored here from its text by the offline scorer; the sandbox brings its own (the same
scorer's verdict on the same text, times what the serving model says of the instance's engine). The
scored frame goes through :func:`optiinfra_assets.ingest.ingest` for the quality domain (keys, fleet,
ranges, duplicates, order; a rejected row lands in quarantine with its text in the raw JSON), and the text
of every accepted row is stored beside it in the same session.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from functools import lru_cache

import polars as pl

from optiinfra_assets.agents.application.llm_judge import RequestJudging
from optiinfra_assets.agents.quality_scoring import QualityScore, score_response
from optiinfra_assets.ingest import QUARANTINE_SCHEMA, IngestReport, ingest
from optiinfra_assets.metrics import KEY_COLUMNS, TS, Domain
from resources.metric_store import QUARANTINE_TABLE, REQUEST_SAMPLES_TABLE, MetricStore

TEXT_COLUMNS = ("prompt", "context", "response")
SCORE_COLUMNS = ("quality_score", "hallucination_score", "toxicity_score")
# A source that parses lines (optiinfra_assets.request_log) marks a line it could not read with these: the
# line as received, what is wrong with it (naming the field) and the field; such rows are quarantined as is.
PROBLEM_COLUMNS = ("raw", "problem", "problem_field")
REQUEST_SCHEMA: dict[str, pl.DataType] = {
    **KEY_COLUMNS,
    "request_id": pl.String(),
    **dict.fromkeys(TEXT_COLUMNS, pl.String()),
    "latency_ms": pl.Float64(),
    **dict.fromkeys(SCORE_COLUMNS, pl.Float64()),
    "failed_checks": pl.String(),  # e.g. "refusal,truncated"; empty when every check passed
}


@lru_cache(maxsize=65_536)
def _score(response: str, context: str, prompt: str) -> QualityScore:
    # Cached: sampled requests repeat (templated answers, retried prompts), and scoring is the cost.
    return score_response(response, context or None, prompt or None)


def failed_checks(score: QualityScore) -> str:
    flags = score.flags
    failed = [
        name
        for name, bad in (
            ("refusal", flags.refusal),
            ("truncated", flags.truncated),
            ("repetitive", flags.repetitive),
            ("format", not flags.format_ok),
        )
        if bad
    ]
    return ",".join(failed)


def score_requests(frame: pl.DataFrame) -> pl.DataFrame:
    """``frame`` with every score column filled (scores it brings are kept) and ``failed_checks``."""
    texts = frame.select(
        [
            pl.col(c).cast(pl.String).fill_null("") if c in frame.columns else pl.lit("").alias(c)
            for c in TEXT_COLUMNS
        ]
    )
    scores = [
        _score(r, c, p) for p, c, r in zip(texts["prompt"], texts["context"], texts["response"], strict=True)
    ]
    out = frame.with_columns(
        pl.Series("failed_checks", [failed_checks(s) for s in scores], dtype=pl.String),
        latency_ms=(
            pl.col("latency_ms").cast(pl.Float64, strict=False)
            if "latency_ms" in frame.columns
            else pl.lit(float("nan"))
        ),
    )
    for name in SCORE_COLUMNS:
        scored = pl.Series(name, [getattr(s, name) for s in scores], dtype=pl.Float64)
        out = out.with_columns(
            pl.coalesce(pl.col(name).cast(pl.Float64, strict=False), scored).alias(name)
            if name in frame.columns
            else scored
        )
    return out


def ingest_requests(
    store: MetricStore,
    frame: pl.DataFrame,
    known_instances: Mapping[str, tuple[str, str]],
    *,
    now: datetime | None = None,
    judging: RequestJudging | None = None,
) -> IngestReport:
    """Score ``frame``'s requests where needed, ingest the scores as quality rows and store the text of
    the accepted ones (offered to ``judging``, the LLM judge's sample of the run, when given). ValueError
    when the frame has no ``response`` column (a programming error: every request source produces one)."""
    if "response" not in frame.columns:
        raise ValueError(f"request frame: missing column 'response' (columns: {', '.join(frame.columns)})")
    unreadable = pl.DataFrame()
    if "problem" in frame.columns:
        unreadable = frame.filter(pl.col("problem").is_not_null())
        frame = frame.filter(pl.col("problem").is_null()).drop(
            [c for c in PROBLEM_COLUMNS if c in frame.columns]
        )
    scored = score_requests(frame)
    text = scored.select("request_id", *TEXT_COLUMNS, "latency_ms", "failed_checks").unique(
        "request_id", keep="first", maintain_order=True
    )

    def store_text(good: pl.DataFrame) -> None:
        rows = good.join(text, on="request_id", how="left").with_columns(
            pl.col(c).fill_null("") for c in TEXT_COLUMNS
        )
        if rows.height:
            store.insert_polars(REQUEST_SAMPLES_TABLE, rows.select(list(REQUEST_SCHEMA)))
            if judging is not None:
                judging.offer(_judge_candidates(rows, judging.limit).to_dicts(), rows.height)

    report = ingest(store, Domain.QUALITY, scored, known_instances, now=now, on_accepted=store_text)
    return _with_unreadable(store, report, unreadable)


def _judge_candidates(rows: pl.DataFrame, per_deployment: int) -> pl.DataFrame:
    """Each deployment's ``per_deployment`` newest requests with text: what the LLM judge may look at."""
    return (
        rows.filter(pl.col("response").str.len_chars() > 0)
        .sort("ts", descending=True)
        .group_by("deployment_id", maintain_order=True)
        .head(per_deployment)
        .select("request_id", "deployment_id", "ts", *TEXT_COLUMNS, *SCORE_COLUMNS)
    )


def _with_unreadable(store: MetricStore, report: IngestReport, unreadable: pl.DataFrame) -> IngestReport:
    """Quarantine the lines a source could not read (their reason names file, line and field) and count
    them in ``report``."""
    if unreadable.is_empty():
        return report
    rows = unreadable.select(
        pl.lit(datetime.now(UTC), TS).alias("received_at"),
        pl.lit(str(Domain.QUALITY)).alias("domain"),
        pl.col("problem").alias("reason"),
        pl.col("problem_field").fill_null("line").alias("field"),
        pl.col("raw").str.slice(0, 200).fill_null("").alias("value"),
        pl.col("raw").fill_null("").alias("raw"),
        pl.lit(report.batch_id).alias("batch_id"),
    )
    with store.session():
        store.insert_polars(QUARANTINE_TABLE, rows.select(list(QUARANTINE_SCHEMA)))
    reasons = dict(report.reasons)
    for field in rows["field"]:
        kind = f"{field}: unreadable line"
        reasons[kind] = reasons.get(kind, 0) + 1
    return report.model_copy(
        update={
            "received": report.received + rows.height,
            "quarantined": report.quarantined + rows.height,
            "reasons": reasons,
        }
    )


WORST_PER_DEPLOYMENT = 3


def load_worst(
    store: MetricStore, since: datetime, per_deployment: int = WORST_PER_DEPLOYMENT
) -> pl.DataFrame:
    """Per deployment, its ``per_deployment`` most hallucinated and most toxic stored requests since
    ``since`` (one query each, the whole fleet at once): what quality findings show as evidence."""
    parts = []
    for column in ("hallucination_score", "toxicity_score"):
        parts.append(
            store.query_polars(
                f"SELECT deployment_id, ts, request_id, prompt, response, {', '.join(SCORE_COLUMNS)}, "
                f"failed_checks, '{column}' AS worst_by FROM {store.database}.{REQUEST_SAMPLES_TABLE} "
                "WHERE ts >= {since:DateTime64(3, 'UTC')} AND " + f"{column} > 0 "
                f"ORDER BY deployment_id, {column} DESC, ts DESC LIMIT {int(per_deployment)} BY deployment_id",
                {"since": since},
            )
        )
    return (
        pl.concat([p for p in parts if p.height], how="vertical_relaxed")
        if any(p.height for p in parts)
        else pl.DataFrame()
    )
