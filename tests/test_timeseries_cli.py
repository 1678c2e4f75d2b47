"""`optiinfra detect` and `optiinfra forecast` through the real command line: output shapes, timestamps
echoed and continued in the input's style, and every kind of bad input (one line naming the row and field,
exit code 2)."""

from __future__ import annotations

import io
import json
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import pytest

from optiinfra_assets.cli import main


def write_csv(path: Path, rows: list[tuple[str, str]], header: str = "timestamp,value") -> str:
    path.write_text(header + "\n" + "".join(f"{t},{v}\n" for t, v in rows))
    return str(path)


def nab_rows(n: int, spike_at: int | None = None, step_min: int = 5) -> list[tuple[str, str]]:
    """NAB-style rows: '2014-04-01 00:00:00' timestamps, a noisy daily cycle, optionally one spike."""
    rng = np.random.default_rng(0)
    start = datetime(2014, 4, 1)
    values = 50 + 10 * np.sin(2 * np.pi * np.arange(n) / (1440 / step_min)) + rng.normal(0, 1, n)
    if spike_at is not None:
        values[spike_at] += 60
    return [
        ((start + timedelta(minutes=step_min * i)).strftime("%Y-%m-%d %H:%M:%S"), f"{v:.3f}")
        for i, v in enumerate(values)
    ]


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


# --- detect ------------------------------------------------------------------------------------------


def test_detect_json_one_object_per_row_in_order(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rows = nab_rows(900, spike_at=700)
    code, out, err = run(capsys, "detect", "--input", write_csv(tmp_path / "s.csv", rows), "--json")
    assert code == 0, err
    result = json.loads(out)
    assert len(result) == len(rows)
    for obj, (stamp, value) in zip(result, rows, strict=True):
        assert list(obj) == ["timestamp", "value", "anomaly_score", "is_anomaly"]
        assert obj["timestamp"] == stamp  # echoed as given
        assert obj["value"] == float(value)
        assert 0.0 <= obj["anomaly_score"] <= 1.0
        assert isinstance(obj["is_anomaly"], bool)
    assert result[700]["is_anomaly"] and result[700]["anomaly_score"] == 1.0


def test_detect_echoes_iso_timestamps_and_reads_stdin(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    stamps = ["2024-05-01T12:00:00Z", "2024-05-01T12:01:00.500+00:00", "2024-05-01T14:02:00+02:00"]
    text = "value,timestamp,extra\n" + "".join(f"{v},{t},x\n" for v, t in zip([1, 2, 3], stamps, strict=True))
    monkeypatch.setattr("sys.stdin", io.StringIO(text))
    code, out, err = run(capsys, "detect", "--input", "-", "--json")
    assert code == 0, err
    assert [o["timestamp"] for o in json.loads(out)] == stamps


def test_detect_has_no_look_ahead(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rows = nab_rows(1200, spike_at=1000)
    _, out, _ = run(capsys, "detect", "--input", write_csv(tmp_path / "all.csv", rows), "--json")
    full = json.loads(out)
    code, out, _ = run(capsys, "detect", "--input", write_csv(tmp_path / "half.csv", rows[:600]), "--json")
    assert code == 0
    assert json.loads(out) == full[:600]


def test_detect_table(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(
        capsys, "detect", "--input", write_csv(tmp_path / "s.csv", nab_rows(900, spike_at=700))
    )
    assert code == 0
    assert out.splitlines()[0].startswith("900 rows, ")
    assert any(line.startswith(nab_rows(900)[700][0]) for line in out.splitlines()[1:])


def test_detect_a_20k_row_file_in_seconds(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import time

    path = write_csv(tmp_path / "big.csv", nab_rows(20_000))
    started = time.perf_counter()
    code, out, _ = run(capsys, "detect", "--input", path, "--json")
    assert code == 0 and len(json.loads(out)) == 20_000
    assert time.perf_counter() - started < 10


# --- forecast ----------------------------------------------------------------------------------------


def test_forecast_json_continues_the_series_at_its_step(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rows = nab_rows(600, step_min=10)
    code, out, err = run(
        capsys, "forecast", "--input", write_csv(tmp_path / "s.csv", rows), "--horizon", "6", "--json"
    )
    assert code == 0, err
    result = json.loads(out)
    assert len(result) == 6
    last = datetime.strptime(rows[-1][0], "%Y-%m-%d %H:%M:%S")
    for h, obj in enumerate(result, start=1):
        assert list(obj) == ["timestamp", "forecast", "lower_80", "upper_80"]
        assert obj["timestamp"] == (last + timedelta(minutes=10 * h)).strftime("%Y-%m-%d %H:%M:%S")
        assert obj["lower_80"] <= obj["forecast"] <= obj["upper_80"]


@pytest.mark.parametrize(
    ("last", "expected"),
    [
        ("2024-05-01T12:00:00Z", "2024-05-01T12:01:00Z"),
        ("2024-05-01T12:00:00+02:00", "2024-05-01T12:01:00+02:00"),
        ("2024-05-01T12:00:00.250", "2024-05-01T12:01:00.250000"),
    ],
)
def test_forecast_writes_timestamps_in_the_input_style(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], last: str, expected: str
) -> None:
    end = datetime.fromisoformat(last)
    stamps = [end - timedelta(minutes=m) for m in range(29, -1, -1)]
    rows = [
        (s.isoformat().replace("+00:00", "Z") if last.endswith("Z") else s.isoformat(), str(i % 5))
        for i, s in enumerate(stamps)
    ]
    rows[-1] = (last, rows[-1][1])
    code, out, err = run(
        capsys, "forecast", "--input", write_csv(tmp_path / "s.csv", rows), "--horizon", "2", "--json"
    )
    assert code == 0, err
    assert json.loads(out)[0]["timestamp"] == expected


def test_forecast_table(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write_csv(tmp_path / "s.csv", nab_rows(300, step_min=10))
    code, out, _ = run(capsys, "forecast", "--input", path, "--horizon", "3")
    assert code == 0
    assert out.splitlines()[0].startswith("method=") and len(out.splitlines()) == 4


# --- bad input ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("command", ["detect", "forecast"])
@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("time,value\n2024-01-01,1\n", "missing column 'timestamp' (the header has 'time', 'value')"),
        ("timestamp,val\n2024-01-01,1\n", "missing column 'value'"),
        ("", "missing column 'timestamp' (the header has none)"),
        ("timestamp,value\n", "no data rows after the header"),
        (
            "timestamp,value\n2024-01-01 00:00:00,1\nyesterday,2\n",
            "row 2, field 'timestamp': 'yesterday' is not an ISO 8601 timestamp",
        ),
        (
            "timestamp,value\n2024-01-01 00:00:00,1\n2024-01-01 00:05:00,abc\n",
            "row 2, field 'value': 'abc' is not a number",
        ),
        ("timestamp,value\n2024-01-01 00:00:00,\n", "row 1, field 'value': '' is not a number"),
        ("timestamp,value\n2024-01-01 00:00:00,nan\n", "row 1, field 'value': 'nan' is not a number"),
        ("timestamp,value\n2024-01-01 00:00:00,inf\n", "row 1, field 'value': 'inf' is not a number"),
        ("timestamp,value\n2024-01-01 00:00:00\n", "row 1: too few fields"),
    ],
)
def test_bad_csv_is_one_clear_line_and_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], command: str, content: str, message: str
) -> None:
    path = tmp_path / "bad.csv"
    path.write_text(content)
    extra = ["--horizon", "1"] if command == "forecast" else []
    code, out, err = run(capsys, command, "--input", str(path), *extra, "--json")
    assert code == 2
    assert out == ""
    assert err.startswith("optiinfra: error: ") and err.count("\n") == 1
    assert message in err


def test_row_17_value_error_message(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rows = nab_rows(20)
    rows[16] = (rows[16][0], "abc")
    code, _, err = run(capsys, "detect", "--input", write_csv(tmp_path / "s.csv", rows), "--json")
    assert code == 2
    assert err == "optiinfra: error: row 17, field 'value': 'abc' is not a number\n"


def test_missing_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "detect", "--input", str(tmp_path / "nope.csv"))
    assert code == 2 and "--input" in err and "No such file" in err


def test_forecast_refuses_timestamps_that_do_not_increase(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rows = nab_rows(40)
    rows[30] = rows[29]
    code, _, err = run(capsys, "forecast", "--input", write_csv(tmp_path / "s.csv", rows), "--horizon", "2")
    assert code == 2
    assert f"row 31, field 'timestamp': '{rows[30][0]}' is not after the previous row's" in err


def test_forecast_refuses_too_short_a_history(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write_csv(tmp_path / "s.csv", nab_rows(30))
    code, _, err = run(capsys, "forecast", "--input", path, "--horizon", "20")
    assert code == 2
    assert "--horizon 20 needs at least 40 rows of history" in err and "has 30" in err
    code, _, err = run(
        capsys, "forecast", "--input", write_csv(tmp_path / "t.csv", nab_rows(5)), "--horizon", "1"
    )
    assert code == 2 and "needs at least 12 rows" in err


@pytest.mark.parametrize("horizon", ["0", "-3", "x", "1.5"])
def test_forecast_refuses_a_bad_horizon(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], horizon: str
) -> None:
    path = write_csv(tmp_path / "s.csv", nab_rows(50))
    with pytest.raises(SystemExit) as exc:
        main(["forecast", "--input", path, "--horizon", horizon])
    assert exc.value.code == 2
    assert "argument --horizon" in capsys.readouterr().err


def test_forecast_requires_a_horizon(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["forecast", "--input", write_csv(tmp_path / "s.csv", nab_rows(50))])
    assert exc.value.code == 2
    assert "--horizon" in capsys.readouterr().err
