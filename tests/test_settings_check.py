"""Configuration that `optiinfra check` let through (issue 12): every OPTIINFRA_* variable validated once,
in Settings, naming the variable, the value and what is allowed; store locations that cannot work are
exit 3 with one line, the rest exit 2; nothing Dagster's EnvVar.int would refuse is accepted."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from optiinfra_assets import cli, config
from optiinfra_assets.config import Settings, SettingsError, target_available

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    for name in list(os.environ):
        if name.startswith("OPTIINFRA_") and name != "OPTIINFRA_TEST_DATABASE_URL":
            monkeypatch.delenv(name)
    monkeypatch.setenv("OPTIINFRA_HOME", str(tmp_path / "home"))
    return tmp_path


@pytest.mark.parametrize(
    ("variable", "value", "allowed"),
    [
        ("OPTIINFRA_ROLLOUT_SOAK_S", "-5", "greater than or equal to 0"),
        ("OPTIINFRA_ROLLOUT_SOAK_S", "2.5", "a whole number is expected"),
        ("OPTIINFRA_ROLLOUT_SOAK_S", "5.0", "a whole number is expected"),  # pydantic alone took it
        ("OPTIINFRA_ROLLOUT_SOAK_S", "abc", "a whole number is expected"),
        ("OPTIINFRA_BACKFILL_DAYS", "-3", "greater than or equal to 1"),
        ("OPTIINFRA_BACKFILL_STEP_S", "0", "greater than or equal to 1"),
        ("OPTIINFRA_RECOMMENDATION_TTL_H", "1e3", "a whole number is expected"),
        ("OPTIINFRA_TARGET", "gcp", "'sandbox' or 'aws'"),
        ("OPTIINFRA_METRICS_SOURCE", "statsd", "'sandbox', 'prometheus' or 'nvml'"),
    ],
)
def test_a_bad_setting_exits_2_naming_variable_value_and_what_is_allowed(
    env: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    variable: str,
    value: str,
    allowed: str,
) -> None:
    monkeypatch.setenv(variable, value)
    assert cli.main(["check"]) == 2
    err = capsys.readouterr().err
    assert f"{variable}={value!r}" in err and allowed in err
    assert len(err.strip().splitlines()) == 1


@pytest.mark.parametrize(
    ("value", "allowed"),
    [
        ("garbage", "not a database URL"),
        ("mysql://root:hunter2@db:3306/optiinfra", "unsupported database 'mysql'"),
        ("postgresql+asyncpg://u@db/x", "unsupported driver 'asyncpg'"),
        ("postgresql://", "no host"),
    ],
)
def test_a_database_url_that_cannot_work_exits_3(
    env: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], value: str, allowed: str
) -> None:
    monkeypatch.setenv("OPTIINFRA_DATABASE_URL", value)
    assert cli.main(["check"]) == 3
    err = capsys.readouterr().err
    assert "OPTIINFRA_DATABASE_URL=" in err and allowed in err
    assert "hunter2" not in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("variable", ["OPTIINFRA_CLICKHOUSE_URL", "OPTIINFRA_QDRANT_URL"])
def test_server_urls_must_be_http(env: Path, monkeypatch: pytest.MonkeyPatch, variable: str) -> None:
    monkeypatch.setenv(variable, "tcp://host:9000")
    with pytest.raises(SettingsError, match=f"{variable}='tcp://host:9000': expected http") as exc:
        Settings.from_env()
    assert exc.value.about_stores


def test_an_unusable_home_exits_3_with_one_line(
    env: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    blocker = env / "a-file"
    blocker.write_text("not a folder")
    monkeypatch.setenv("OPTIINFRA_HOME", str(blocker / "home"))
    assert cli.main(["check"]) == 3
    err = capsys.readouterr().err
    assert err.startswith("optiinfra: error: home unreachable at ") and str(blocker / "home") in err
    assert len(err.strip().splitlines()) == 1


def test_check_exits_3_without_a_traceback_in_a_real_process(env: Path) -> None:
    run_env = {k: v for k, v in os.environ.items() if not k.startswith("OPTIINFRA_") or k == "OPTIINFRA_HOME"}
    run_env["OPTIINFRA_DATABASE_URL"] = "mysql://u:pw@h/db"
    done = subprocess.run(
        [sys.executable, "-m", "optiinfra_assets.cli", "check"],
        cwd=ROOT,
        env=run_env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 3, done.stderr
    assert "Traceback" not in done.stderr and done.stderr.count("\n") == 1


# What Dagster's EnvVar.int does with the text: int(text). Settings must never accept what it refuses.
@pytest.mark.parametrize(
    "text", ["5", " 5 ", "+5", "007", "5.0", "2.5", "1_000", "5e0", "0x10", "٥", "", "-0"]
)
def test_int_settings_accept_only_what_dagster_reads(monkeypatch: pytest.MonkeyPatch, text: str) -> None:
    int_fields = [name for name, f in Settings.model_fields.items() if f.annotation is int]
    assert "rollout_soak_s" in int_fields and "backfill_step_s" in int_fields
    for name in int_fields:
        monkeypatch.setenv(config.env_name(name), text)
        try:
            value = getattr(Settings.from_env(), name)
        except SettingsError:
            value = None
        finally:
            monkeypatch.delenv(config.env_name(name))
        if value is not None:
            assert int(text) == value, (name, text)


def test_aws_is_an_allowed_target_and_check_reports_whether_it_is_installed(
    env: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("OPTIINFRA_TARGET", "aws")
    assert Settings.from_env().target == "aws"
    installed = (ROOT / "resources" / "aws_target.py").exists()
    assert target_available("aws") is installed
    monkeypatch.setitem(config.TARGET_MODULES, "aws", "resources.no_such_target")
    assert cli.main(["check"]) == 2
    err = capsys.readouterr().err
    assert "OPTIINFRA_TARGET='aws': not available in this installation" in err
