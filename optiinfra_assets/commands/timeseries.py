"""`optiinfra detect` and `optiinfra forecast`: the shared anomaly detector and forecaster on a CSV file.

Input: a CSV file (or ``-`` for standard input) whose header has ``timestamp`` and ``value`` (other
columns are ignored). Timestamps are ISO 8601 (``2024-05-01T12:00:00Z``, offsets, fractions of a second)
or NAB's ``2014-04-01 00:00:00``; a timestamp without an offset is read as UTC.

* ``detect --input FILE --json`` prints a JSON array, one object per row in input order:
  ``{"timestamp", "value", "anomaly_score", "is_anomaly"}``; the timestamp is echoed as given. The
  decision for a row uses only that row and the rows before it (optiinfra_assets.agents.anomaly).
* ``forecast --input FILE --horizon H --json`` prints a JSON array of H objects
  ``{"timestamp", "forecast", "lower_80", "upper_80"}`` continuing the series at its own step (the
  median spacing of its timestamps), written in the style of the input's timestamps
  (optiinfra_assets.agents.forecast).

Bad input (a missing column, an unparseable timestamp, a value that is not a finite number, too few
rows, timestamps that do not increase for ``forecast``, a bad ``--horizon``) is one line on stderr that
names the row (data rows are counted from 1, after the header) and the field, e.g.
``optiinfra: error: row 17, field 'value': 'abc' is not a number``, and exit code 2. Without ``--json``
both print a short table instead.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import math
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np

from optiinfra_assets.agents.anomaly import detect
from optiinfra_assets.agents.forecast import DEFAULT_SETTINGS as FORECAST_SETTINGS
from optiinfra_assets.agents.forecast import forecast
from optiinfra_assets.commands import positive_int
from optiinfra_assets.config import Settings

COLUMNS = ("timestamp", "value")


@dataclass(frozen=True)
class Series:
    """A CSV series as read: the timestamps as written, as instants, and the values."""

    raw_timestamps: list[str]
    instants: list[datetime]  # timezone-aware, UTC
    values: np.ndarray

    @property
    def epoch_ms(self) -> np.ndarray:
        return np.array([round(t.timestamp() * 1000) for t in self.instants], dtype="datetime64[ms]")


# --- reading -----------------------------------------------------------------------------------------


def parse_timestamp(text: str) -> datetime:
    """An ISO 8601 or NAB timestamp as an aware UTC datetime; ValueError if it is neither."""
    stamp = datetime.fromisoformat(text.strip())
    return stamp.replace(tzinfo=UTC) if stamp.tzinfo is None else stamp.astimezone(UTC)


def parse_value(text: str) -> float:
    """A finite number; ValueError otherwise."""
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(text)
    return value


def read_series(lines: Iterable[str], source: str) -> Series:
    """Parse ``timestamp,value`` CSV text; ValueError names the row and field of the first problem."""
    reader = csv.DictReader(lines)
    header = reader.fieldnames or []
    missing = [c for c in COLUMNS if c not in header]
    if missing:
        found = ", ".join(repr(h) for h in header) or "none"
        raise ValueError(f"{source}: missing column {missing[0]!r} (the header has {found})")
    raw, instants, values = [], [], []
    for row_number, row in enumerate(reader, start=1):
        stamp, value = row["timestamp"], row["value"]
        if stamp is None or value is None:
            raise ValueError(f"row {row_number}: too few fields")
        try:
            instants.append(parse_timestamp(stamp))
        except ValueError:
            raise ValueError(
                f"row {row_number}, field 'timestamp': {stamp!r} is not an ISO 8601 timestamp"
            ) from None
        try:
            values.append(parse_value(value))
        except ValueError:
            raise ValueError(f"row {row_number}, field 'value': {value!r} is not a number") from None
        raw.append(stamp)
    if not raw:
        raise ValueError(f"{source}: no data rows after the header")
    return Series(raw, instants, np.array(values, dtype=np.float64))


def load_series(path: str) -> Series:
    if path == "-":
        return read_series(sys.stdin, "standard input")
    try:
        with open(path, newline="", encoding="utf-8") as f:
            return read_series(io.StringIO(f.read()), path)
    except OSError as exc:
        raise ValueError(f"--input {path!r}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise ValueError(f"--input {path!r}: not UTF-8 text") from None


def check_increasing(series: Series) -> None:
    """ValueError naming the first row whose timestamp is not after the previous row's."""
    for i in range(1, len(series.instants)):
        if series.instants[i] <= series.instants[i - 1]:
            raise ValueError(
                f"row {i + 1}, field 'timestamp': {series.raw_timestamps[i]!r} is not after the "
                f"previous row's {series.raw_timestamps[i - 1]!r}"
            )


# --- writing -----------------------------------------------------------------------------------------


def format_like(example: str, instant: datetime) -> str:
    """``instant`` written in the style of ``example``: date only or date and time, ``T`` or space,
    fractions of a second if it has them, and its offset (``Z``, ``+hh:mm``) or none."""
    text = example.strip()
    parsed = datetime.fromisoformat(text)
    local = instant.astimezone(parsed.tzinfo) if parsed.tzinfo else instant.replace(tzinfo=None)
    if len(text) == 10:  # a date alone
        return local.date().isoformat()
    sep = "T" if "T" in text else " "
    timespec = "microseconds" if "." in text[10:] else "seconds"
    out = local.isoformat(sep=sep, timespec=timespec)
    return out[:-6] + "Z" if text.endswith("Z") and out.endswith("+00:00") else out


def _number(x: float) -> float:
    return round(float(x), 6)


# --- commands ----------------------------------------------------------------------------------------


def cmd_detect(args: argparse.Namespace, settings: Settings) -> int:
    series = load_series(args.input)
    result = detect(series.values, series.epoch_ms)
    rows = [
        {
            "timestamp": stamp,
            "value": float(value),
            "anomaly_score": _number(score),
            "is_anomaly": bool(flag),
        }
        for stamp, value, score, flag in zip(
            series.raw_timestamps, series.values, result.score, result.is_anomaly, strict=True
        )
    ]
    if args.json:
        json.dump(rows, sys.stdout)
        sys.stdout.write("\n")
        return 0
    flagged = np.flatnonzero(result.is_anomaly)
    print(f"{len(rows)} rows, {len(flagged)} anomalies")
    for i in flagged:
        print(
            f"{rows[i]['timestamp']}  value={rows[i]['value']:g}  score={rows[i]['anomaly_score']:.3f}  {result.view[i]}"
        )
    return 0


def cmd_forecast(args: argparse.Namespace, settings: Settings) -> int:
    series = load_series(args.input)
    check_increasing(series)
    need = max(FORECAST_SETTINGS.min_rows, math.ceil(args.horizon / FORECAST_SETTINGS.max_horizon_fraction))
    if len(series.values) < need:
        raise ValueError(
            f"--horizon {args.horizon} needs at least {need} rows of history; {args.input} has "
            f"{len(series.values)}"
        )
    fc = forecast(series.values, series.epoch_ms, args.horizon)
    step = timedelta(milliseconds=round(fc.step_seconds * 1000))
    example, last = series.raw_timestamps[-1], series.instants[-1]
    rows = [
        {
            "timestamp": format_like(example, last + step * (h + 1)),
            "forecast": _number(fc.point[h]),
            "lower_80": _number(fc.lower_80[h]),
            "upper_80": _number(fc.upper_80[h]),
        }
        for h in range(args.horizon)
    ]
    if args.json:
        json.dump(rows, sys.stdout)
        sys.stdout.write("\n")
        return 0
    print(f"method={fc.method} season={fc.season or 'none'} step_s={fc.step_seconds:g}")
    for row in rows:
        print(f"{row['timestamp']}  {row['forecast']:.6g}  [{row['lower_80']:.6g}, {row['upper_80']:.6g}]")
    return 0


def add_parser(subparsers: Any) -> None:
    detect_cmd = subparsers.add_parser(
        "detect", help="flag anomalies in a timestamp,value CSV with the agents' shared detector"
    )
    detect_cmd.add_argument(
        "--input", required=True, help='CSV with a timestamp,value header; "-" reads stdin'
    )
    detect_cmd.add_argument("--json", action="store_true", help="print a JSON array, one object per row")
    detect_cmd.set_defaults(func=cmd_detect)

    forecast_cmd = subparsers.add_parser(
        "forecast", help="forecast a timestamp,value CSV with 80%% intervals (the agents' forecaster)"
    )
    forecast_cmd.add_argument(
        "--input", required=True, help='CSV with a timestamp,value header; "-" reads stdin'
    )
    forecast_cmd.add_argument("--horizon", required=True, type=positive_int, help="points to forecast")
    forecast_cmd.add_argument("--json", action="store_true", help="print a JSON array, one object per step")
    forecast_cmd.set_defaults(func=cmd_forecast)
