"""NAB score of the shared anomaly detector on the NAB development set (../shared/datasets/nab_dev).

Every data file is read with the CLI's own reader and run through ``detect`` (the code behind
``optiinfra detect``), its ``is_anomaly`` decisions are written as NAB result files (1.0 / 0.0, as the
set's ``cli_to_nab.py`` does) and scored by the set's ``score.py`` (NAB's scoring: threshold 0.5,
standard / low-FP / low-FN profiles, normalised against NAB's null detector). Also printed: the raw
standard-profile score per category, the detector's speed, and a look-ahead check (the decisions on the
first half of two files must equal those of the whole files).

``--cli`` instead runs the set's ``run_cli.sh`` on this checkout: the real ``optiinfra detect`` process
per file (slower: one start-up per file), with its own look-ahead check.

The last line is ``nab_standard=S nab_low_fp=S nab_low_fn=S``.

    .venv/bin/python bench/nab.py [--data ../shared/datasets/nab_dev] [--per-file] [--cli]
"""

from __future__ import annotations

import argparse
import csv
import importlib.util
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import ModuleType

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from optiinfra_assets.agents.anomaly import DetectionResult, detect
from optiinfra_assets.commands.timeseries import Series, load_series

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = ROOT.parent / "shared" / "datasets" / "nab_dev"
PROFILES = (
    ("standard", "nab_standard"),
    ("reward_low_FP_rate", "nab_low_fp"),
    ("reward_low_FN_rate", "nab_low_fn"),
)
LOOKAHEAD_FILES = ("realKnownCause/nyc_taxi.csv", "realTraffic/speed_7578.csv")


def load_scorer(data: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location("nab_score", data / "score.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_detector(series: Series) -> DetectionResult:
    return detect(series.values, series.epoch_ms)


def write_result(path: Path, series: Series, result: DetectionResult) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        out = csv.writer(f)
        out.writerow(["timestamp", "value", "anomaly_score"])
        for stamp, value, flag in zip(series.raw_timestamps, series.values, result.is_anomaly, strict=True):
            out.writerow([stamp, repr(float(value)), 1.0 if flag else 0.0])


def lookahead_mismatches(data: Path) -> int:
    """Rows whose decision differs between the first half of a file and the whole file."""
    bad = 0
    for rel in LOOKAHEAD_FILES:
        series = load_series(str(data / "data" / rel))
        full = run_detector(series).is_anomaly
        half = len(series.values) // 2
        prefix = Series(series.raw_timestamps[:half], series.instants[:half], series.values[:half])
        bad += int(np.sum(run_detector(prefix).is_anomaly != full[:half]))
    return bad


def in_process(data: Path, per_file: bool) -> int:
    scorer = load_scorer(data)
    files = scorer.corpus_files()
    rows = 0
    seconds = 0.0
    with tempfile.TemporaryDirectory() as tmp:
        for rel in files:
            series = load_series(str(data / "data" / rel))
            started = time.perf_counter()
            result = run_detector(series)
            seconds += time.perf_counter() - started
            rows += len(series.values)
            write_result(Path(tmp) / rel, series, result)
        stamps = {n: scorer.read_data_timestamps(str(data / "data" / n)) for n in files}
        scores = scorer.load_results(tmp, files, stamps)
    thresholds = {profile: 0.5 for profile, _ in PROFILES}
    res = scorer.evaluate(scores, thresholds, files)
    print(f"files={len(files)} rows={rows} detect_seconds={seconds:.1f} rows_per_s={rows / seconds:,.0f}")
    print(f"nab_lookahead_mismatches={lookahead_mismatches(data)}")
    for profile, _ in PROFILES:
        r = res[profile]
        fp = sum(row["fp"] for row in r["rows"].values())
        print(
            f"{profile:20s} raw={r['raw']:8.3f} null={r['null']:.1f} perfect={r['perfect']:.1f} fp_rows={fp} normalized={r['normalized']:.2f}"
        )
    by_category: dict[str, float] = {}
    for name, row in res["standard"]["rows"].items():
        by_category[name.split("/")[0]] = by_category.get(name.split("/")[0], 0.0) + row["score"]
    print("standard raw by category: " + " ".join(f"{c}={v:.2f}" for c, v in sorted(by_category.items())))
    if per_file:
        for name, row in res["standard"]["rows"].items():
            print(f"   {name:60s} score={row['score']:8.3f} tp={row['tp']} fp={row['fp']} fn={row['fn']}")
    print(" ".join(f"{key}={res[profile]['normalized']:.2f}" for profile, key in PROFILES))
    return 0


def via_cli(data: Path, per_file: bool) -> int:
    env = dict(os.environ, PROJECT=str(ROOT), PYTHON=sys.executable)
    if per_file:
        env["NAB_PER_FILE"] = "1"
    return subprocess.call(["bash", str(data / "run_cli.sh")], env=env)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--per-file", action="store_true", help="also print each file's standard-profile row")
    ap.add_argument("--cli", action="store_true", help="score the real `optiinfra detect` via run_cli.sh")
    args = ap.parse_args(argv)
    return via_cli(args.data, args.per_file) if args.cli else in_process(args.data, args.per_file)


if __name__ == "__main__":
    raise SystemExit(main())
