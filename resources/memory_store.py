"""Decision memory: past outcomes as vectors in Qdrant, searched for scenarios like a new one.

Two engines behind :class:`MemoryStore`:

* Qdrant local mode on disk (the default). Local mode lets one client (one process) at a time open its
  folder, while Dagster runs several processes; the client is therefore opened only for the duration of
  an operation, under an exclusive ``fcntl`` lock file next to the folder, and closed afterwards.
* A Qdrant server (``OPTIINFRA_QDRANT_URL``), reached at construction so that a wrong URL fails fast.

One collection per outcome kind; a point is one outcome: its vector the ``features`` dict (keys sorted),
its payload the Outcome JSON, its id ``uuid5(recommendation_id)`` so that remembering twice is a no-op.
Distance is Euclidean and similarity ``1 / (1 + distance)``, in (0, 1].
"""

from __future__ import annotations

import re
import threading
import uuid
from abc import ABC, abstractmethod
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any

from optiinfra_assets.models import Outcome, SimilarOutcome
from resources.errors import StoreUnavailableError, mask_url
from resources.locks import exclusive_folder_lock, lock_path_for

__all__ = [
    "FeatureMismatchError",
    "MemoryStore",
    "QdrantMemoryStore",
    "open_memory_store",
]

COLLECTION_PREFIX = "outcomes__"
# Qdrant collection names allow these; a kind is code-defined, so anything else is a bug worth stopping.
_KIND_PATTERN = re.compile(r"^[A-Za-z0-9_-]{1,100}$")
# A stable namespace for point ids: the same recommendation always maps to the same point.
_POINT_NAMESPACE = uuid.UUID("6f1c3c8e-5b7a-4d3e-9a51-0e4b7c2f9d10")
SERVER_TIMEOUT_S = 5


class FeatureMismatchError(ValueError):
    """Features whose keys differ from those a kind's collection was built with."""


def point_id(recommendation_id: str) -> str:
    return str(uuid.uuid5(_POINT_NAMESPACE, recommendation_id))


def collection_name(kind: str) -> str:
    if not _KIND_PATTERN.match(kind):
        raise ValueError(f"outcome kind {kind!r}: only letters, digits, '_' and '-' are allowed")
    return COLLECTION_PREFIX + kind


def feature_vector(features: dict[str, float]) -> tuple[list[str], list[float]]:
    """(sorted keys, values in that order): the same dict always gives the same vector."""
    if not features:
        raise FeatureMismatchError("an outcome needs at least one feature to be remembered or compared")
    keys = sorted(features)
    return keys, [float(features[k]) for k in keys]


def similarity(distance: float) -> float:
    return 1.0 / (1.0 + max(distance, 0.0))


class MemoryStore(ABC):
    """Past outcomes, searchable by scenario similarity within one kind."""

    display_url: str

    @abstractmethod
    def remember(self, outcome: Outcome) -> None:
        """Store ``outcome`` (idempotent per recommendation_id: remembering again replaces it)."""

    @abstractmethod
    def similar(self, kind: str, features: dict[str, float], limit: int = 3) -> list[SimilarOutcome]:
        """The nearest past outcomes of ``kind``, most similar first (similarity in (0, 1])."""

    @abstractmethod
    def count(self, kind: str | None = None) -> int:
        """Outcomes remembered, of one kind or of all."""

    @abstractmethod
    def session(self) -> AbstractContextManager[None]:
        """Group several operations under one open engine (re-entrant)."""


class QdrantMemoryStore(MemoryStore):
    """Qdrant through qdrant-client: a server for ``url``, else local mode on disk at ``path``."""

    def __init__(self, *, url: str = "", path: Path | None = None) -> None:
        url = url.strip()
        if bool(url) == (path is not None):
            raise ValueError("QdrantMemoryStore needs exactly one of url (a server) or path (local mode)")
        self._url = url
        self._path = None if path is None else Path(path).resolve()
        self._server: Any = None
        self._open: Any = None  # the local client of an open session()
        if url:
            self.display_url = mask_url(url)
            self._server = self._connect_server(url)
        else:
            assert self._path is not None
            self.display_url = f"qdrant-local://{self._path}"
            self.lock_path = lock_path_for(self._path)

    # ---- engines --------------------------------------------------------------------------------

    def _connect_server(self, url: str) -> Any:
        from qdrant_client import QdrantClient

        try:
            client = QdrantClient(url=url, timeout=SERVER_TIMEOUT_S, check_compatibility=False)
            client.get_collections()  # the constructor does not connect; this does
        except Exception as exc:
            raise StoreUnavailableError("memory store", url, exc) from None
        return client

    @contextmanager
    def _client(self) -> Iterator[Any]:
        if self._server is not None:
            yield self._server
            return
        if self._open is not None:  # inside session(): reuse the client it opened
            yield self._open
            return
        with _local_lock(self.lock_path):
            client = self._open_local()
            try:
                yield client
            finally:
                client.close()

    @contextmanager
    def session(self) -> Iterator[None]:
        """Group operations under one open client (local mode opens its folder once, not per lookup).
        Re-entrant; a no-op for a server."""
        if self._server is not None or self._open is not None:
            yield
            return
        with self._client() as client:
            self._open = client
            try:
                yield
            finally:
                self._open = None

    def _open_local(self) -> Any:
        from qdrant_client import QdrantClient

        assert self._path is not None
        self._path.mkdir(parents=True, exist_ok=True)
        try:
            return QdrantClient(path=str(self._path))
        except Exception as exc:
            raise StoreUnavailableError("memory store", self.display_url, exc) from exc

    # ---- operations -----------------------------------------------------------------------------

    def remember(self, outcome: Outcome) -> None:
        from qdrant_client import models

        keys, vector = feature_vector(outcome.features)
        name = collection_name(outcome.kind)
        point = models.PointStruct(
            id=point_id(outcome.recommendation_id),
            vector=vector,
            payload=outcome.model_dump(mode="json"),
        )
        with self._client() as client:
            if client.collection_exists(name):
                _check_keys(client, name, outcome.kind, keys)
            else:
                client.create_collection(
                    name,
                    vectors_config=models.VectorParams(size=len(vector), distance=models.Distance.EUCLID),
                )
            client.upsert(name, points=[point], wait=True)

    def similar(self, kind: str, features: dict[str, float], limit: int = 3) -> list[SimilarOutcome]:
        keys, vector = feature_vector(features)
        name = collection_name(kind)
        with self._client() as client:
            if not client.collection_exists(name):
                return []
            _check_keys(client, name, kind, keys)
            hits = client.query_points(name, query=vector, limit=limit, with_payload=True).points
        return [_similar_outcome(hit.payload or {}, hit.score) for hit in hits]

    def count(self, kind: str | None = None) -> int:
        with self._client() as client:
            if kind is not None:
                name = collection_name(kind)
                return client.count(name, exact=True).count if client.collection_exists(name) else 0
            names = [c.name for c in client.get_collections().collections]
            return sum(client.count(n, exact=True).count for n in names if n.startswith(COLLECTION_PREFIX))


def _similar_outcome(payload: dict[str, Any], distance: float) -> SimilarOutcome:
    outcome = Outcome.model_validate(payload)
    return SimilarOutcome(
        recommendation_id=outcome.recommendation_id,
        similarity=round(similarity(distance), 6),
        rolled_back=outcome.rolled_back,
        realized_monthly_savings_usd=outcome.realized_monthly_savings_usd,
        quality_delta_pct=outcome.quality_delta_pct,
        summary=outcome.summary,
    )


def _check_keys(client: Any, name: str, kind: str, keys: list[str]) -> None:
    """Refuse features whose keys differ from the collection's: a vector of other meanings (or another
    dimension) would compare nonsense. The stored keys are read from any point's payload."""
    points, _ = client.scroll(name, limit=1, with_payload=["features"])
    if not points:
        size = client.get_collection(name).config.params.vectors.size
        if size != len(keys):
            raise FeatureMismatchError(
                f"{kind} outcomes have {size} features; got {len(keys)}: {', '.join(keys)}"
            )
        return
    stored = sorted((points[0].payload or {}).get("features", {}))
    if stored != keys:
        missing, extra = sorted(set(stored) - set(keys)), sorted(set(keys) - set(stored))
        raise FeatureMismatchError(
            f"{kind} outcomes are remembered with features [{', '.join(stored)}]; got "
            f"[{', '.join(keys)}] (missing: {', '.join(missing) or 'none'}; unexpected: "
            f"{', '.join(extra) or 'none'})"
        )


# flock serializes processes; local mode also refuses a second client inside one process, so the threads
# of a process take turns through this lock too.
_THREAD_LOCK = threading.Lock()


@contextmanager
def _local_lock(lock_path: Path) -> Iterator[None]:
    with _THREAD_LOCK, exclusive_folder_lock(lock_path):
        yield


def open_memory_store(url: str, home: Path) -> MemoryStore:
    """The configured store: a Qdrant server for a URL, else local mode under ``home/qdrant``."""
    if url.strip():
        return QdrantMemoryStore(url=url)
    return QdrantMemoryStore(path=Path(home) / "qdrant")
