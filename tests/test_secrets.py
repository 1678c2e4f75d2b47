"""Secrets (issue 12): nothing secret printed by `config` or `check`, state files owner-only, and the test
database reached through its own role, never by changing the postgres superuser's password."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
from pathlib import Path

import pytest
import sqlalchemy as sa

from optiinfra_assets import cli
from resources.errors import StoreUnavailableError, mask_secrets, mask_url

ROOT = Path(__file__).resolve().parents[1]
SECRET = "Sup3rS3cret"


@pytest.mark.parametrize(
    ("url", "masked"),
    [
        ("postgresql+psycopg2://app:pa/ss@db:5432/x", "postgresql+psycopg2://app:***@db:5432/x"),
        ("postgresql://app:p?w#x@db/x", "postgresql://app:***@db/x"),
        ("postgresql://app:p@ss@db/x", "postgresql://app:***@db/x"),
        (
            "postgresql://db/x?sslmode=require&password=hunter2",
            "postgresql://db/x?sslmode=require&password=***",
        ),
        ("http://default:pw@ch:8123/optiinfra", "http://default:***@ch:8123/optiinfra"),
        ("postgresql://app@db/x?user=a@b", "postgresql://app@db/x?user=a@b"),
        ("sqlite:////tmp/state.db", "sqlite:////tmp/state.db"),
    ],
)
def test_mask_url(url: str, masked: str) -> None:
    assert mask_url(url) == masked


def test_credentials_inside_prometheus_targets_are_masked() -> None:
    text = (
        f"i-1=http://scraper:{SECRET}@10.0.0.1:8000/metrics,i-2=http://10.0.0.2:8000/metrics?token={SECRET}"
    )
    shown = mask_secrets(text)
    assert SECRET not in shown
    assert shown == "i-1=http://scraper:***@10.0.0.1:8000/metrics,i-2=http://10.0.0.2:8000/metrics?token=***"


def test_a_driver_error_quoting_the_url_is_scrubbed() -> None:
    url = f"postgresql://app:{SECRET}/x@db/x"
    error = StoreUnavailableError("state store", url, f'connection to "{url}" failed: password {SECRET}/x')
    assert SECRET not in str(error)


@pytest.mark.parametrize(
    "url",
    [
        f"postgresql+psycopg2://app@127.0.0.1:1/x?password={SECRET}",
        f"postgresql+psycopg2://app:{SECRET}/x?y#z@127.0.0.1:1/x",
        f"postgresql+psycopg2://app:{SECRET}@x@127.0.0.1:1/x",
        f"postgresql+psycopg2://app:pa@{SECRET}@127.0.0.1:1/x",  # the driver reads "Sup3rS3cret@127.0.0.1"
    ],
)
def test_config_and_check_print_no_password(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], url: str
) -> None:
    monkeypatch.setenv("OPTIINFRA_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("OPTIINFRA_DATABASE_URL", url)
    monkeypatch.setenv("OPTIINFRA_PROMETHEUS_TARGETS", f"i-1=http://scraper:{SECRET}@10.0.0.1:8000/metrics")
    assert cli.main(["config"]) == 0
    out = capsys.readouterr().out
    assert "OPTIINFRA_DATABASE_URL=" in out and SECRET not in out
    assert cli.main(["check"]) == 3  # nothing listens on port 1
    captured = capsys.readouterr()
    assert SECRET not in captured.out + captured.err
    assert "state store unreachable at postgresql+psycopg2://app" in captured.err


def test_check_on_postgres_shows_the_url_without_its_password(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], postgres_url: str
) -> None:
    password = sa.engine.make_url(postgres_url).password
    assert password
    monkeypatch.setenv("OPTIINFRA_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("OPTIINFRA_DATABASE_URL", postgres_url)
    assert cli.main(["check"]) == 0
    out = capsys.readouterr().out
    assert "state store   postgresql+psycopg2://" in out and f":{password}@" not in out


def test_state_files_are_owner_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    home = tmp_path / "home"
    monkeypatch.setenv("OPTIINFRA_HOME", str(home))
    monkeypatch.delenv("OPTIINFRA_DATABASE_URL", raising=False)
    old_umask = os.umask(0o022)  # what a login shell usually has
    try:
        assert cli.main(["check"]) == 0
    finally:
        os.umask(old_umask)
    assert stat.S_IMODE(home.stat().st_mode) == 0o700
    assert stat.S_IMODE((home / "state.db").stat().st_mode) == 0o600
    for path in home.rglob("*"):
        mode = stat.S_IMODE(path.stat().st_mode)
        assert not mode & 0o077, f"{path} is {oct(mode)}"


def test_an_existing_home_is_tightened(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    home = tmp_path / "home"
    home.mkdir(mode=0o755)
    home.chmod(0o755)
    monkeypatch.setenv("OPTIINFRA_HOME", str(home))
    monkeypatch.delenv("OPTIINFRA_DATABASE_URL", raising=False)
    assert cli.main(["audit", "--limit", "1"]) == 0
    assert stat.S_IMODE(home.stat().st_mode) == 0o700


# ---------------------------------------------------------------------------------- ensure-postgres


def test_ensure_postgres_never_changes_the_superuser_password() -> None:
    script = (ROOT / "scripts" / "ensure-postgres.sh").read_text()
    assert "ALTER USER postgres" not in script and "ALTER ROLE postgres" not in script
    assert "CREATE ROLE $ROLE LOGIN CREATEDB NOSUPERUSER" in script


@pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("pg_lsclusters") is None, reason="needs root and a Debian cluster"
)
def test_ensure_postgres_prints_a_url_of_its_own_role_idempotently() -> None:
    # Its own password file, as `make test` uses it: another file would rotate the role's password
    # under a suite that is running with it.
    env = {k: v for k, v in os.environ.items() if k != "OPTIINFRA_TEST_DATABASE_URL"}
    password_file = Path(
        env.get("OPTIINFRA_TEST_PG_PASSWORD_FILE")
        or Path(env.get("XDG_CONFIG_HOME") or Path.home() / ".config")
        / "optiinfra"
        / "test-postgres-password"
    )
    urls = [
        subprocess.run(
            [str(ROOT / "scripts" / "ensure-postgres.sh")],
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        for _ in range(2)
    ]
    assert all(u.returncode == 0 for u in urls), urls[0].stderr
    assert urls[0].stdout == urls[1].stdout
    url = sa.engine.make_url(urls[0].stdout.strip())
    assert url.username == "optiinfra_test" and url.password
    assert stat.S_IMODE(password_file.stat().st_mode) == 0o600
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            superuser = conn.scalar(sa.text("SELECT rolsuper FROM pg_roles WHERE rolname = current_user"))
            assert superuser is False
            can_create = conn.scalar(sa.text("SELECT rolcreatedb FROM pg_roles WHERE rolname = current_user"))
            assert can_create is True  # the tests' per-test databases
    finally:
        engine.dispose()


def test_a_scrape_error_and_a_bad_target_name_no_credentials() -> None:
    from resources.sources import parse_targets

    with pytest.raises(ValueError, match="bad target") as exc:
        parse_targets(f"http://scraper:{SECRET}@10.0.0.1:8000/metrics")  # no "instance_id="
    assert SECRET not in str(exc.value)
