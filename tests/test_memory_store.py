"""Decision memory on Qdrant local mode (a Qdrant server cannot run in this test environment).

The server engine is exercised only for its fail-fast error on an unreachable URL.
"""

from __future__ import annotations

import multiprocessing
from datetime import UTC, datetime
from pathlib import Path

import pytest

from optiinfra_assets.models import Outcome
from resources.errors import StoreUnavailableError
from resources.memory_store import (
    FeatureMismatchError,
    QdrantMemoryStore,
    open_memory_store,
    point_id,
)

AT = datetime(2026, 3, 2, 12, 0, tzinfo=UTC)


def outcome(rec_id: str, features: dict[str, float], *, kind: str = "spot_migration", rolled_back=False):
    return Outcome(
        recommendation_id=rec_id,
        kind=kind,
        customer_id="acme",
        deployment_id="acme-chat-8b",
        rolled_back=rolled_back,
        realized_monthly_savings_usd=0.0 if rolled_back else 1200.0,
        quality_delta_pct=-12.0 if rolled_back else 0.3,
        features=features,
        summary=f"{rec_id} {'rolled back' if rolled_back else 'succeeded'}",
        at=AT,
    )


@pytest.fixture
def memory(tmp_path: Path) -> QdrantMemoryStore:
    store = open_memory_store("", tmp_path)
    assert isinstance(store, QdrantMemoryStore)
    return store


def test_open_memory_store_defaults_to_local_mode_under_home(tmp_path: Path) -> None:
    store = open_memory_store("  ", tmp_path)
    assert store.display_url == f"qdrant-local://{(tmp_path / 'qdrant').resolve()}"
    assert store.count() == 0
    assert store.similar("spot_migration", {"a": 1.0}) == []


def test_similar_orders_by_distance_with_similarity_one_over_one_plus_distance(memory) -> None:
    memory.remember(outcome("r-near", {"b": 0.0, "a": 0.0}))
    memory.remember(outcome("r-mid", {"a": 1.0, "b": 0.0}, rolled_back=True))
    memory.remember(outcome("r-far", {"a": 3.0, "b": 4.0}))  # distance 5

    found = memory.similar("spot_migration", {"a": 0.0, "b": 0.0}, limit=3)

    assert [o.recommendation_id for o in found] == ["r-near", "r-mid", "r-far"]
    assert [o.similarity for o in found] == pytest.approx([1.0, 0.5, 1 / 6], abs=1e-5)
    assert found[1].rolled_back and found[1].realized_monthly_savings_usd == 0.0
    assert found[1].quality_delta_pct == -12.0 and found[1].summary == "r-mid rolled back"
    assert len(memory.similar("spot_migration", {"a": 0.0, "b": 0.0}, limit=1)) == 1


def test_remember_is_idempotent_per_recommendation(memory) -> None:
    memory.remember(outcome("r-1", {"a": 0.1}))
    memory.remember(outcome("r-1", {"a": 0.1}))
    memory.remember(outcome("r-1", {"a": 0.2}, rolled_back=True))  # a correction replaces it

    assert memory.count("spot_migration") == 1
    (only,) = memory.similar("spot_migration", {"a": 0.2})
    assert only.rolled_back and only.similarity == pytest.approx(1.0)
    assert point_id("r-1") == point_id("r-1") != point_id("r-2")


def test_kinds_are_separate_collections(memory) -> None:
    memory.remember(outcome("r-spot", {"a": 0.0}))
    memory.remember(outcome("r-kv", {"x": 0.0, "y": 1.0}, kind="kv_cache_tuning"))

    assert memory.count() == 2
    assert memory.count("spot_migration") == 1
    assert memory.count("kv_cache_tuning") == 1
    assert memory.count("right_sizing") == 0
    assert [o.recommendation_id for o in memory.similar("kv_cache_tuning", {"x": 0.0, "y": 1.0})] == ["r-kv"]


def test_feature_mismatch_is_a_clear_error_naming_the_keys(memory) -> None:
    memory.remember(outcome("r-1", {"interruption_rate": 0.3, "risk_score": 0.4}))

    with pytest.raises(
        FeatureMismatchError, match=r"\[interruption_rate, risk_score\].*\[interruption_rate\]"
    ):
        memory.similar("spot_migration", {"interruption_rate": 0.3})
    with pytest.raises(FeatureMismatchError, match=r"missing: risk_score; unexpected: savings_pct"):
        memory.remember(outcome("r-2", {"interruption_rate": 0.3, "savings_pct": 0.5}))
    with pytest.raises(FeatureMismatchError, match="at least one feature"):
        memory.remember(outcome("r-3", {}))
    with pytest.raises(ValueError, match="only letters"):
        memory.similar("spot migration!", {"a": 1.0})
    assert memory.count() == 1


def test_two_stores_on_one_folder_take_turns(tmp_path: Path) -> None:
    """Local mode allows one client per folder: each operation opens and closes its own."""
    first = QdrantMemoryStore(path=tmp_path / "qdrant")
    second = QdrantMemoryStore(path=tmp_path / "qdrant")

    first.remember(outcome("r-1", {"a": 0.0}))
    second.remember(outcome("r-2", {"a": 1.0}))
    first.remember(outcome("r-3", {"a": 2.0}))

    assert first.count() == second.count() == 3
    assert [o.recommendation_id for o in second.similar("spot_migration", {"a": 2.1}, limit=2)] == [
        "r-3",
        "r-2",
    ]
    assert (tmp_path / "qdrant.lock").exists()


def _remember_in_child(path: str, rec_id: str) -> None:
    QdrantMemoryStore(path=Path(path)).remember(outcome(rec_id, {"a": 0.5}))


def test_another_process_writes_to_the_same_folder(tmp_path: Path) -> None:
    """What Dagster does: the daemon, the code server and each run are separate processes."""
    store = QdrantMemoryStore(path=tmp_path / "qdrant")
    store.remember(outcome("r-parent", {"a": 0.0}))
    ctx = multiprocessing.get_context("spawn")
    children = [
        ctx.Process(target=_remember_in_child, args=(str(tmp_path / "qdrant"), f"r-{i}")) for i in range(2)
    ]
    for child in children:
        child.start()
    for child in children:
        child.join(60)
        assert child.exitcode == 0

    assert store.count("spot_migration") == 3


def test_unreachable_server_fails_fast_with_the_masked_url() -> None:
    with pytest.raises(StoreUnavailableError) as err:
        open_memory_store("http://u:pw@127.0.0.1:1", Path("/nonexistent"))

    message = str(err.value)
    assert "memory store unreachable at http://u:***@127.0.0.1:1" in message
    assert "pw" not in message.replace("***", "")


def test_exactly_one_engine_must_be_named(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="exactly one"):
        QdrantMemoryStore()
    with pytest.raises(ValueError, match="exactly one"):
        QdrantMemoryStore(url="http://localhost:6333", path=tmp_path)
