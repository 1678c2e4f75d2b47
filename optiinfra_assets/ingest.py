"""The one ingestion path for every metric source: validate, quarantine, insert.

A batch is cast to its domain's schema (non-strictly: a value that does not cast is a type error, not an
exception), every row is checked against the limits in :mod:`optiinfra_assets.metrics`, the fleet and
the store's watermarks, and split: good rows land in the domain table, the others in
``metric_quarantine`` with one reason each and the raw row as JSON. Nothing is dropped silently:
``accepted + quarantined == received`` for every batch.

Everything is vectorized polars. Each row gets the index of the first check it fails (cheap boolean
work over the whole batch); reason strings are only formatted for the failing rows.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import polars as pl
from pydantic import BaseModel

from optiinfra_assets.config import DecisionSettings
from optiinfra_assets.metrics import SCHEMAS, TS, Domain, DomainSchema, Measure
from resources.metric_store import QUARANTINE_TABLE, MetricStore

# Timestamps outside these bounds are typos or wrong units (seconds read as milliseconds, ...).
TS_MIN = datetime(2000, 1, 1, tzinfo=UTC)
TS_MAX = datetime(2100, 1, 1, tzinfo=UTC)
# How far ahead of this machine's clock a source's timestamp may be (its clock runs a little fast):
# anything later is rejected, so that one row dated 2099 cannot become an instance's watermark.
DEFAULT_MAX_CLOCK_SKEW = timedelta(seconds=DecisionSettings().max_clock_skew_s)
# Formats tried, in order, for timestamps that arrive as text; a trailing "Z" is read as +00:00 first.
TS_FORMATS = (
    "%Y-%m-%dT%H:%M:%S%.f%:z",
    "%Y-%m-%d %H:%M:%S%.f%:z",
    "%Y-%m-%dT%H:%M:%S%.f",
    "%Y-%m-%d %H:%M:%S%.f",
    "%Y-%m-%dT%H:%M:%S",
    "%Y-%m-%d %H:%M:%S",
)
QUARANTINE_SCHEMA: dict[str, pl.DataType] = {
    "received_at": TS,
    "domain": pl.String(),
    "reason": pl.String(),
    "field": pl.String(),
    "value": pl.String(),
    "raw": pl.String(),
    "batch_id": pl.String(),
}
_TS_TEXT = "%Y-%m-%d %H:%M:%S%.3f"
_CODE = "__code"
_PREV = "__prev_ts"
_FLEET_CUSTOMER, _FLEET_DEPLOYMENT, _WATERMARK = "__fleet_customer", "__fleet_deployment", "__watermark"
_FLEET_INDEX = "__fleet_index"  # an integer per known instance: grouping on it is cheaper than on text


class IngestReport(BaseModel):
    """``received == accepted + quarantined + already_stored``: a row re-collected after a crash, identical
    to the stored one, is neither stored twice nor malformed."""

    domain: Domain
    received: int
    accepted: int
    quarantined: int
    already_stored: int = 0
    reasons: dict[str, int]  # "<field>: <kind>" (e.g. "ttft_ms: NaN") -> rows quarantined for it
    batch_id: str


@dataclass(frozen=True)
class _Check:
    """One rule: ``bad`` flags failing rows; ``reason`` and ``value`` are only evaluated on those."""

    field: str
    kind: str
    bad: pl.Expr
    reason: pl.Expr
    value: pl.Expr


def _raw(name: str) -> str:
    return f"__raw_{name}"


def _show(expr: pl.Expr) -> pl.Expr:
    """A value as text for a reason: repr-like, so that strings are quoted and nulls say null."""
    text = expr.cast(pl.String)
    return pl.when(expr.is_null()).then(pl.lit("null")).otherwise(pl.lit("'") + text + pl.lit("'"))


def _ts_text(expr: pl.Expr) -> pl.Expr:
    return expr.dt.to_string(_TS_TEXT)


# ------------------------------------------------------------------------------------------ casting


def _plain(series: pl.Series) -> pl.Series:
    """Columns polars cannot cast (objects, lists, structs from JSON) become their JSON text."""
    if (
        series.dtype.is_numeric()
        or series.dtype in (pl.String, pl.Boolean, pl.Null)
        or series.dtype.is_temporal()
    ):
        return series
    if series.dtype == pl.Categorical or isinstance(series.dtype, pl.Enum):
        return series.cast(pl.String)
    return series.map_elements(lambda v: json.dumps(v, default=str), return_dtype=pl.String, skip_nulls=True)


def _parse_ts_text(col: pl.Expr) -> pl.Expr:
    text = col.str.strip_chars().str.replace(r"[Zz]$", "+00:00")
    parsed = [text.str.to_datetime(f, time_unit="ms", time_zone="UTC", strict=False) for f in TS_FORMATS]
    return pl.coalesce(parsed)


def _cast_ts(col: pl.Expr, dtype: pl.DataType) -> pl.Expr:
    if isinstance(dtype, pl.Datetime):
        # Naive timestamps are UTC throughout OptiInfra; aware ones are converted.
        aware = (
            col.dt.replace_time_zone("UTC") if dtype.time_zone is None else col.dt.convert_time_zone("UTC")
        )
        return aware.dt.cast_time_unit("ms")
    if dtype == pl.Date:
        return col.cast(pl.Datetime("ms")).dt.replace_time_zone("UTC")
    if dtype == pl.String:
        return _parse_ts_text(col)
    if dtype.is_numeric():
        # Numbers are epoch milliseconds (the unit of TS); absurd ones fail the range check.
        return col.cast(pl.Float64, strict=False).round(0).cast(pl.Int64, strict=False).cast(TS, strict=False)
    return pl.lit(None, dtype=TS)


def _cast(name: str, target: pl.DataType, dtype: pl.DataType) -> pl.Expr:
    col = pl.col(name)
    if dtype == target:
        return col
    if name == "ts":
        return _cast_ts(col, dtype)
    return col.cast(target, strict=False)


# ------------------------------------------------------------------------------------------- checks


def _key_checks(schema: DomainSchema, latest_valid: datetime) -> list[_Check]:
    ts, raw_ts = pl.col("ts"), pl.col(_raw("ts"))
    checks = [
        _Check("ts", "null", raw_ts.is_null(), pl.lit("ts: null"), pl.lit("null")),
        _Check(
            "ts",
            "not a timestamp",
            ts.is_null(),
            pl.lit("ts: not a timestamp (") + _show(raw_ts) + pl.lit(")"),
            raw_ts.cast(pl.String),
        ),
        _Check(
            "ts",
            "out of range",
            (ts < TS_MIN) | (ts >= TS_MAX),
            pl.lit("ts: out of range (") + _ts_text(ts) + pl.lit(")"),
            _ts_text(ts),
        ),
        _Check(
            "ts",
            "in the future",
            ts > pl.lit(latest_valid, TS),
            pl.lit("ts: in the future (")
            + _ts_text(ts)
            + pl.lit(f" > now + clock skew, {latest_valid:%Y-%m-%d %H:%M:%S})"),
            _ts_text(ts),
        ),
    ]
    for name in ("customer_id", "deployment_id", "instance_id", *schema.labels):
        col = pl.col(name)
        checks.append(
            _Check(name, "null", col.is_null() | (col == ""), pl.lit(f"{name}: null"), pl.lit("null"))
        )
    inst = pl.col("instance_id")
    checks.append(
        _Check(
            "instance_id",
            "unknown instance",
            pl.col(_FLEET_CUSTOMER).is_null(),
            pl.lit("instance_id: unknown instance '") + inst + pl.lit("'"),
            inst,
        )
    )
    for name, fleet in (("customer_id", _FLEET_CUSTOMER), ("deployment_id", _FLEET_DEPLOYMENT)):
        col = pl.col(name)
        checks.append(
            _Check(
                name,
                "does not match the fleet",
                col != pl.col(fleet),
                pl.format(
                    f"{name}: '{{}}' does not match the fleet ('{{}}' for {{}})", col, pl.col(fleet), inst
                ),
                col,
            )
        )
    return checks


def _number(expr: pl.Expr) -> pl.Expr:
    return expr.cast(pl.String)


def _measure_checks(measure: Measure, unreported_ok: bool) -> list[_Check]:
    name = measure.name
    col, raw = pl.col(name), pl.col(_raw(name))
    # With ``unreported_ok`` a null is "not reported"; a value that does not cast is still a defect.
    null = pl.lit(False) if unreported_ok else raw.is_null()
    checks = [
        _Check(name, "null", null, pl.lit(f"{name}: null"), pl.lit("null")),
        _Check(
            name,
            "not a number",
            col.is_null() & raw.is_not_null(),
            pl.lit(f"{name}: not a number (") + _show(raw) + pl.lit(")"),
            raw.cast(pl.String),
        ),
        _Check(name, "NaN", col.is_nan(), pl.lit(f"{name}: NaN"), pl.lit("NaN")),
        _Check(name, "infinite", col.is_infinite(), pl.lit(f"{name}: ") + _number(col), _number(col)),
    ]
    if measure.lo == 0.0:
        below = pl.lit(f"{name}: negative (") + _number(col) + pl.lit(")")
        checks.append(_Check(name, "negative", col < 0.0, below, _number(col)))
    elif measure.lo > float("-inf"):
        below = pl.lit(f"{name}: out of range ") + _number(col) + pl.lit(f" < {measure.lo}")
        checks.append(_Check(name, "out of range", col < measure.lo, below, _number(col)))
    if measure.hi < float("inf"):
        above = pl.lit(f"{name}: out of range ") + _number(col) + pl.lit(f" > {measure.hi}")
        checks.append(_Check(name, "out of range", col > measure.hi, above, _number(col)))
    if measure.at_most is not None:
        other = pl.col(measure.at_most)
        above = pl.format(f"{name}: {{}} above {measure.at_most} {{}}", _number(col), _number(other))
        checks.append(_Check(name, f"above {measure.at_most}", col > other, above, _number(col)))
    return checks


def _order_checks(domain: Domain) -> list[_Check]:
    """Evaluated after the row checks, on rows that passed them (``_PREV`` only counts those)."""
    ts, prev = pl.col("ts"), pl.col(_PREV)
    # A series is an instance, or one of its GPUs (DomainSchema.series): named as "i-abc gpu_index=3".
    inst = pl.concat_str(
        [pl.col("instance_id"), *(pl.lit(f" {label}=") + pl.col(label) for label in SCHEMAS[domain].series)]
    )
    ooo = _Check(
        "ts",
        "out of order",
        ts < prev,
        pl.format("ts: out of order ({} after {} for {})", _ts_text(ts), _ts_text(prev), inst),
        _ts_text(ts),
    )
    if domain == Domain.QUALITY:
        req = pl.col("request_id")
        first = pl.when(pl.col(_CODE).is_null()).then(req).is_first_distinct()
        dup = _Check(
            "request_id",
            "duplicate",
            ~first,
            pl.lit("request_id: duplicate ('") + req + pl.lit("')"),
            req,
        )
        return [dup, ooo]
    dup = _Check(
        "ts",
        "duplicate",
        ts == prev,
        pl.format("ts: duplicate ({} {})", inst, _ts_text(ts)),
        _ts_text(ts),
    )
    return [dup, ooo]


def _first_failing(checks: list[_Check], offset: int) -> pl.Expr:
    """Index (offset-based) of the first check a row fails; null if it passes all of them."""
    chain = pl.when(checks[0].bad.fill_null(False)).then(pl.lit(offset, pl.UInt16))
    for i, check in enumerate(checks[1:], start=offset + 1):
        chain = chain.when(check.bad.fill_null(False)).then(pl.lit(i, pl.UInt16))
    return chain.otherwise(pl.lit(None, pl.UInt16))


# ----------------------------------------------------------------------------------------- frames


def _fleet_frame(
    known_instances: Mapping[str, tuple[str, str]], watermarks: Mapping[str, datetime]
) -> pl.DataFrame:
    ids = list(known_instances)
    return pl.DataFrame(
        {
            "instance_id": ids,
            _FLEET_CUSTOMER: [known_instances[i][0] for i in ids],
            _FLEET_DEPLOYMENT: [known_instances[i][1] for i in ids],
            _WATERMARK: [watermarks.get(i) for i in ids],
            _FLEET_INDEX: range(len(ids)),
        },
        schema={
            "instance_id": pl.String(),
            _FLEET_CUSTOMER: pl.String(),
            _FLEET_DEPLOYMENT: pl.String(),
            _WATERMARK: TS,
            _FLEET_INDEX: pl.UInt32(),
        },
    )


def _working_frame(schema: DomainSchema, frame: pl.DataFrame, fleet: pl.DataFrame) -> pl.DataFrame:
    """The batch cast to the schema, the original of every expected column beside it, the fleet joined."""
    target = schema.polars_schema
    cast = [_cast(n, t, frame.schema[n]).alias(n) for n, t in target.items()]
    originals = [pl.col(n).alias(_raw(n)) for n in target]  # zero-copy: same buffers as the input
    work = frame.select(*cast, *originals)
    # A left join keeps every row and the batch's order, which the order checks rely on.
    return work.join(fleet, on="instance_id", how="left", maintain_order="left")


def _with_prev_ts(work: pl.DataFrame, domain: Domain) -> pl.DataFrame:
    """``_PREV``: the latest ts of an earlier passing row of the same instance, or the store's watermark."""
    passing_ts = pl.when(pl.col(_CODE).is_null()).then(pl.col("ts"))
    # Only passing rows have a known instance, so grouping by the fleet index is grouping by instance.
    prior = passing_ts.cum_max().forward_fill().shift(1).over(_FLEET_INDEX, *SCHEMAS[domain].series)
    prev = pl.max_horizontal(prior, pl.col(_WATERMARK))
    if domain == Domain.QUALITY:
        # Many sampled requests share a ts; only the stored watermark rules out older ones.
        prev = pl.max_horizontal(prior, pl.col(_WATERMARK) + pl.duration(milliseconds=1))
    return work.with_columns(prev.alias(_PREV))


def _raw_json(frame: pl.DataFrame) -> pl.Series:
    """Each row of the original input as a JSON object.

    JSON has no NaN or infinity (polars would write null, hiding why the row was quarantined), so a
    float column holding one is written as text.
    """
    cols = []
    for name, dtype in frame.schema.items():
        series = frame[name]
        non_finite = dtype.is_float() and not series.is_finite().fill_null(True).all()
        cols.append(pl.col(name).cast(pl.String) if non_finite else pl.col(name))
    return frame.select(pl.struct(cols).struct.json_encode().alias("raw")).to_series()


def _empty_quarantine() -> pl.DataFrame:
    return pl.DataFrame(schema={**QUARANTINE_SCHEMA, "kind": pl.String()})


def _quarantine_rows(
    domain: Domain, bad: pl.DataFrame, raw: pl.DataFrame, positions: pl.Series, checks: list[_Check]
) -> pl.DataFrame:
    """Reason, field, value and raw JSON of the failing rows, formatted per check on its rows only,
    returned in the batch's order."""
    parts = []
    codes = bad[_CODE]
    for code in codes.unique().sort().to_list():
        mask = codes == code
        check = checks[code]
        rows = bad.filter(mask)
        # with_columns, not select: a literal reason must broadcast to every row of the check.
        formatted = rows.with_columns(
            check.reason.alias("reason"),
            check.value.fill_null("null").alias("value"),
        ).select("reason", "value")
        parts.append(
            formatted.with_columns(
                pl.lit(check.field).alias("field"),
                pl.lit(f"{check.field}: {check.kind}").alias("kind"),
                _raw_json(raw.filter(mask)),
                positions.filter(mask).alias("__position"),
            )
        )
    out = pl.concat(parts).sort("__position") if parts else pl.DataFrame()
    return _finish_quarantine(domain, out)


def _finish_quarantine(domain: Domain, rows: pl.DataFrame) -> pl.DataFrame:
    if rows.is_empty():
        return _empty_quarantine()
    return rows.with_columns(
        pl.lit(None, TS).alias("received_at"),
        pl.lit(str(domain)).alias("domain"),
        pl.lit("").alias("batch_id"),
    ).select([*QUARANTINE_SCHEMA, "kind"])


def _missing_columns(domain: Domain, frame: pl.DataFrame, missing: list[str]) -> pl.DataFrame:
    names = ", ".join(f"'{m}'" for m in missing)
    rows = pl.DataFrame({"raw": _raw_json(_plain_frame(frame))}).with_columns(
        pl.lit(f"columns: missing {names}").alias("reason"),
        pl.lit(", ".join(missing)).alias("value"),
        pl.lit("columns").alias("field"),
        pl.lit("columns: missing").alias("kind"),
    )
    return _finish_quarantine(domain, rows)


def _plain_frame(frame: pl.DataFrame) -> pl.DataFrame:
    if all(_plain(s) is s for s in frame.iter_columns()):
        return frame
    return pl.DataFrame([_plain(s) for s in frame.iter_columns()])


# ------------------------------------------------------------------------------------------- public


def validate_batch(
    domain: Domain,
    frame: pl.DataFrame,
    known_instances: Mapping[str, tuple[str, str]],
    watermarks: Mapping[str, datetime],
    *,
    unreported_ok: bool = False,
    now: datetime | None = None,
    max_clock_skew: timedelta = DEFAULT_MAX_CLOCK_SKEW,
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Split a batch into (good rows in exact SCHEMAS dtypes and order, quarantine rows).

    Quarantine rows carry the quarantine table's columns (``received_at`` and ``batch_id`` left for
    :func:`ingest` to fill) plus ``kind``, the "<field>: <kind>" a report counts them under.

    ``unreported_ok`` (a source reading real servers, which may not report every measure): a null
    measure is "not reported" rather than a defect, and is stored as NaN — the measure columns are
    non-nullable Float64, NaN is the float meaning "no value", and ClickHouse's quantile functions skip
    it — so that the row's other measures are kept and no number is invented. A NaN the source sent
    itself is still quarantined: it comes from a computation gone wrong, not from a missing metric.

    A row dated later than ``now`` (the wall clock by default) plus ``max_clock_skew`` is quarantined.
    """
    schema = SCHEMAS[domain]
    frame = _plain_frame(frame)
    missing = [c for c in schema.columns if c not in frame.columns]
    if missing:
        return pl.DataFrame(schema=schema.polars_schema), _missing_columns(domain, frame, missing)
    if frame.is_empty():
        return pl.DataFrame(schema=schema.polars_schema), _empty_quarantine()

    work = _working_frame(schema, frame, _fleet_frame(known_instances, watermarks))
    latest_valid = (now or datetime.now(UTC)) + max_clock_skew
    row_checks = _key_checks(schema, latest_valid) + [
        c for m in schema.measures for c in _measure_checks(m, unreported_ok)
    ]
    work = work.with_columns(_first_failing(row_checks, 0).alias(_CODE))
    order_checks = _order_checks(domain)
    work = _with_prev_ts(work, domain).with_columns(
        pl.coalesce(pl.col(_CODE), _first_failing(order_checks, len(row_checks))).alias(_CODE)
    )
    checks = row_checks + order_checks

    if unreported_ok:
        work = work.with_columns(pl.col(m.name).fill_null(float("nan")) for m in schema.measures)
    passed = work[_CODE].is_null()
    if passed.all():
        return work.select(schema.columns), _empty_quarantine()
    good = work.filter(passed).select(schema.columns)
    failing = ~passed
    bad = work.filter(failing)
    raw = frame.filter(failing)
    return good, _quarantine_rows(domain, bad, raw, failing.arg_true(), checks)


def ingest(
    store: MetricStore,
    domain: Domain,
    frame: pl.DataFrame,
    known_instances: Mapping[str, tuple[str, str]],
    *,
    unreported_ok: bool = False,
    now: datetime | None = None,
    max_clock_skew: timedelta = DEFAULT_MAX_CLOCK_SKEW,
    on_accepted: Callable[[pl.DataFrame], None] | None = None,
) -> IngestReport:
    """Validate ``frame`` and write its good rows to the domain table and the others to quarantine
    (``unreported_ok``, ``now``, ``max_clock_skew``: see :func:`validate_batch`). ``on_accepted`` gets
    the good rows in the same store session (request texts are stored beside their accepted scores).

    Rows identical to rows already stored (a window collected again after a crash between the insert
    and the collection watermark) are skipped and counted as ``already_stored``, not quarantined.
    """
    batch_id = uuid.uuid4().hex
    now = now or datetime.now(UTC)
    received = frame.height
    with store.session():
        # Rows stored beyond now + skew (written before that rule existed) must not hold the watermark.
        watermarks = store.watermarks(domain, since=_earliest_ts(frame), until=now + max_clock_skew)
        frame, already_stored = _without_stored_rows(store, domain, frame, watermarks)
        good, quarantine = validate_batch(
            domain,
            frame,
            known_instances,
            watermarks,
            unreported_ok=unreported_ok,
            now=now,
            max_clock_skew=max_clock_skew,
        )
        store.insert_polars(SCHEMAS[domain].table, good)
        if on_accepted is not None:
            on_accepted(good)
        if not quarantine.is_empty():
            received_at = datetime.now(UTC)
            rows = quarantine.drop("kind").with_columns(
                pl.lit(received_at, TS).alias("received_at"), pl.lit(batch_id).alias("batch_id")
            )
            store.insert_polars(QUARANTINE_TABLE, rows)
    reasons = quarantine["kind"].value_counts(sort=True) if not quarantine.is_empty() else None
    return IngestReport(
        domain=domain,
        received=received,
        accepted=good.height,
        quarantined=quarantine.height,
        already_stored=already_stored,
        reasons=dict(zip(reasons["kind"], reasons["count"], strict=True)) if reasons is not None else {},
        batch_id=batch_id,
    )


def _identity(domain: Domain) -> list[str]:
    """The columns that name one sample: a quality row is one sampled request."""
    keys = ["instance_id", *SCHEMAS[domain].series, "ts"]
    return [*keys, "request_id"] if domain == Domain.QUALITY else keys


def _without_stored_rows(
    store: MetricStore, domain: Domain, frame: pl.DataFrame, watermarks: Mapping[str, datetime]
) -> tuple[pl.DataFrame, int]:
    """The batch without the rows identical to stored ones, and how many those were.

    Only rows at or before their instance's watermark can be stored already, so a batch of new rows (the
    usual case, and the whole bench) costs one comparison with the watermarks. Identical means the same
    identity (instance, ts, request) and equal measures, NaN equal to NaN (NaN is "not reported"); a row
    that differs from the stored one is left in, and quarantined as a duplicate.
    """
    schema = SCHEMAS[domain]
    if not watermarks or frame.is_empty() or any(c not in frame.columns for c in schema.columns):
        return frame, 0
    target = schema.polars_schema
    plain = _plain_frame(frame)
    marks = pl.DataFrame(
        {"instance_id": list(watermarks), _WATERMARK: list(watermarks.values())},
        schema={"instance_id": pl.String(), _WATERMARK: TS},
    )
    # The keys alone first: casting every column of a large batch of new rows would be wasted work.
    keys = plain.select(
        pl.col("instance_id").cast(pl.String, strict=False),
        _cast("ts", TS, plain.schema["ts"]).alias("ts"),
    ).with_row_index("__row")
    rows = keys.join(marks, on="instance_id", how="inner").filter(pl.col("ts") <= pl.col(_WATERMARK))["__row"]
    if rows.is_empty():
        return frame, 0
    overlap = (
        plain.with_row_index("__row")
        .filter(pl.col("__row").is_in(rows))
        .select("__row", *(_cast(n, t, plain.schema[n]).alias(n) for n, t in target.items()))
    )
    stored = store.stored_rows(
        domain,
        overlap["instance_id"].unique().to_list(),
        overlap["ts"].min(),  # type: ignore[arg-type]
        overlap["ts"].max(),  # type: ignore[arg-type]
    )
    measures = [m.name for m in schema.measures]
    matched = overlap.join(
        stored.select(*_identity(domain), *measures),
        on=_identity(domain),
        how="inner",
        suffix="__stored",
    )
    # A null the source did not report was stored as NaN (see validate_batch's ``unreported_ok``).
    given = [pl.col(m).fill_null(float("nan")) for m in measures]
    same = pl.all_horizontal(
        (value == pl.col(f"{m}__stored")) | (value.is_nan() & pl.col(f"{m}__stored").is_nan())
        for m, value in zip(measures, given, strict=True)
    ).fill_null(False)
    identical = matched.filter(same)["__row"].unique()
    if identical.is_empty():
        return frame, 0
    keep = ~pl.int_range(0, frame.height, dtype=pl.UInt32, eager=True).is_in(identical)
    return frame.filter(keep), identical.len()


def _earliest_ts(frame: pl.DataFrame) -> datetime | None:
    """The batch's earliest valid ts: stored rows older than it cannot conflict with the batch."""
    if "ts" not in frame.columns or frame.is_empty():
        return None
    try:
        ts = frame.select(_cast_ts(pl.col("ts"), frame.schema["ts"]).alias("ts"))["ts"]
    except pl.exceptions.PolarsError:
        return None
    earliest = ts.filter((ts >= TS_MIN) & (ts < TS_MAX)).min()
    return earliest if isinstance(earliest, datetime) else None
