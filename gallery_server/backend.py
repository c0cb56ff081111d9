"""The store interface behind the gRPC service, and the checks every backend shares.

Two backends implement it: :class:`~hetsearch.gallery_server.store.GalleryStore`
(faiss in this process, write-ahead log + snapshots; the default) and
:class:`~hetsearch.gallery_server.milvus_store.MilvusStore` (one Milvus
collection per gallery). The service only calls what is declared here, so both
answer the same requests with the same status codes: every request is checked
here (names, the embedding-space guard, vector shapes and values, ``k`` and the
search knobs, ids and metadata) before a backend sees it, and a backend only
implements the checked operation (``_upsert``, ``_delete``, ``_search``).

Imports neither faiss nor pymilvus.
"""

from __future__ import annotations

import re
import threading
import time
from abc import ABC, abstractmethod
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np

from hetsearch.hit import Hit
from hetsearch.space import parse_space_id

from .errors import (AlreadyExists, DeadlineExceeded, GalleryCorrupt, InvalidArgument, NotFound, SpaceMismatch,
                     Unavailable, shown)

NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")  # fullmatch: "$" would accept a trailing newline
METRIC_NAMES = ("cosine", "ip", "l2")
READY, LOADING, UNAVAILABLE = "READY", "LOADING", "UNAVAILABLE"
MAX_K = 10_000
# Per-request knobs that size memory: HNSW allocates a candidate heap of efSearch entries per query (2^31 - 1 made
# the server grow past 17 GB), IVF visits at most nlist lists whatever nprobe says. 65,536 candidates is 64x the
# efSearch where recall saturates on our galleries and costs 512 KB per searching thread.
MAX_EF_SEARCH = 1 << 16
MAX_NPROBE = 1 << 20
MAX_NORM = 1e18  # un-normalised metrics: squared norms up to 1e36 stay finite in float32
DEFAULT_EF_SEARCH = 64
DEFAULT_NPROBE = 16


# --------------------------------------------------------------------------- checks
def check_name(name: str) -> str:
    if not name:
        raise InvalidArgument("gallery name is required")
    if not NAME_RE.fullmatch(name):
        raise InvalidArgument(f"invalid gallery name {shown(name)}: use 1-128 letters, digits, '_', '-' or '.', "
                              "starting with a letter or digit")
    return name


def check_vectors(values, dim: int, what: str, normalise: bool) -> np.ndarray:
    """Flat floats → float32 [n, dim]; INVALID_ARGUMENT for wrong size, NaN/Inf or zero vectors (cosine)."""
    arr = np.asarray(values, dtype=np.float32)
    if arr.ndim == 1:
        if arr.size == 0:
            raise InvalidArgument(f"{what} is empty")
        if arr.size % dim:
            raise InvalidArgument(f"{what} has {arr.size} values, not a multiple of the gallery's dim {dim}")
        arr = arr.reshape(-1, dim)
    elif arr.ndim != 2 or arr.shape[1] != dim:
        raise InvalidArgument(f"{what} has shape {tuple(arr.shape)}, expected [n, {dim}]")
    if not np.isfinite(arr).all():
        bad = int(np.flatnonzero(~np.isfinite(arr).all(axis=1))[0])
        raise InvalidArgument(f"{what} row {bad} contains NaN or Inf")
    arr = np.array(arr, dtype=np.float32, order="C", copy=True)
    wide = arr.astype(np.float64)
    norms = np.linalg.norm(wide, axis=1)
    if normalise:
        if (norms == 0).any():
            bad = int(np.flatnonzero(norms == 0)[0])
            raise InvalidArgument(f"{what} row {bad} is a zero vector; cosine needs a direction")
        # in float64: a float32 norm of 3e38-sized components overflows and would turn the row into zeros
        arr = (wide / norms[:, None]).astype(np.float32)
    elif (norms > MAX_NORM).any():
        bad = int(np.flatnonzero(norms > MAX_NORM)[0])
        raise InvalidArgument(f"{what} row {bad} has norm {norms[bad]:.3g}; inner products and distances of "
                              f"vectors beyond {MAX_NORM:.0e} overflow float32")
    return arr


def last_occurrences(ids: np.ndarray) -> np.ndarray | None:
    """Positions that keep only the last occurrence of each id (in order), or None when ids are unique."""
    _, rev_pos = np.unique(ids[::-1], return_index=True)
    if len(rev_pos) == len(ids):
        return None
    return np.sort(len(ids) - 1 - rev_pos)


@dataclass
class SearchKnobs:
    ef_search: int = 0
    nprobe: int = 0


@dataclass
class GallerySpec:
    name: str
    space_id: str
    dim: int
    metric: str = "cosine"
    index_factory: str = "Flat"
    ef_search: int = 0
    nprobe: int = 0
    created_unix_ms: int = 0

    @classmethod
    def from_json(cls, data: dict) -> "GallerySpec":
        known = {k: data[k] for k in cls.__dataclass_fields__ if k in data}
        return cls(**known)


@dataclass
class GalleryInfo:
    """What DescribeGallery reports."""

    spec: GallerySpec
    state: str
    status_message: str = ""
    vector_count: int = 0
    deleted_count: int = 0
    trained: bool = True
    last_seq: int = 0
    snapshot_seq: int = 0
    wal_records: int = 0
    wal_bytes: int = 0
    truncations: int = 0  # torn log tails cut at load (faiss backend)

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def space_id(self) -> str:
        return self.spec.space_id


def new_spec(name: str, space_id: str, dim: int = 0, metric: str = "cosine", index_factory: str = "",
             ef_search: int = 0, nprobe: int = 0, default_index: str = "Flat") -> GallerySpec:
    """A checked spec for a new gallery (the backend then checks that it can build ``index_factory``)."""
    check_name(name)
    try:
        space = parse_space_id(space_id)
    except ValueError as exc:
        raise InvalidArgument(str(exc)) from None
    if dim and int(dim) != space["dim"]:
        raise InvalidArgument(f"dim {dim} does not match space {space_id!r}, whose embeddings have "
                              f"dim {space['dim']}")
    metric = metric or "cosine"
    if metric not in METRIC_NAMES:
        raise InvalidArgument(f"metric must be one of {sorted(METRIC_NAMES)}, got {shown(metric)}")
    if not (0 <= ef_search <= MAX_EF_SEARCH and 0 <= nprobe <= MAX_NPROBE):
        raise InvalidArgument(f"default search params out of range: hnsw_ef_search 0..{MAX_EF_SEARCH}, "
                              f"ivf_nprobe 0..{MAX_NPROBE}; got {ef_search} and {nprobe}")
    return GallerySpec(name=name, space_id=space_id, dim=space["dim"], metric=metric,
                       index_factory=(index_factory or "").strip() or default_index, ef_search=int(ef_search),
                       nprobe=int(nprobe), created_unix_ms=int(time.time() * 1000))


def reuse_existing(existing: GallerySpec, spec: GallerySpec, exist_ok: bool) -> bool:
    """True when ``exist_ok`` and the gallery already exists as asked; ALREADY_EXISTS otherwise."""
    same = (existing.space_id, existing.metric, existing.index_factory) == (
        spec.space_id, spec.metric, spec.index_factory)
    if exist_ok and same:
        return True
    raise AlreadyExists(f"gallery {spec.name!r} already exists (space {existing.space_id!r}, "
                        f"index {existing.index_factory!r})")


def not_found(name: str, have: list[str]) -> NotFound:
    have = sorted(have)
    listed = ", ".join(repr(n) for n in have[:20]) + (f" … ({len(have)} in all)" if len(have) > 20 else "")
    return NotFound(f"gallery {name!r} not found; " + (f"existing galleries: {listed}" if have else
                                                        "there are no galleries yet"))


# --------------------------------------------------------------------------- one gallery
class GalleryBase(ABC):
    """One gallery. The public methods check the request; subclasses implement the checked operation."""

    spec: GallerySpec
    write_mutex: threading.Lock
    state: str = READY
    status_message: str = ""
    dropped: bool = False

    def require_ready(self) -> None:
        if self.dropped:
            raise NotFound(f"gallery {self.spec.name!r} was dropped")
        if self.state == LOADING:
            raise Unavailable(f"gallery {self.spec.name!r} is still loading; retry shortly")
        if self.state != READY:
            raise GalleryCorrupt(f"gallery {self.spec.name!r} is unavailable: {self.status_message}")

    @contextmanager
    def _writing(self, deadline: float | None):
        """Hold the gallery's ``write_mutex`` (writes to one gallery are applied in order), waiting no longer
        than the deadline, and check the gallery is still ready once held."""
        timeout = -1 if deadline is None else max(0.0, deadline - time.monotonic())
        if not self.write_mutex.acquire(timeout=timeout):
            raise DeadlineExceeded(f"deadline passed while waiting to write to gallery {self.spec.name!r}")
        try:
            self.require_ready()
            yield
        finally:
            self.write_mutex.release()

    def check_space(self, space_id: str, what: str) -> None:
        if not space_id:
            raise InvalidArgument(f"space_id is required: name the embedding space the {what} comes from")
        if space_id != self.spec.space_id:
            raise SpaceMismatch(self.spec.name, self.spec.space_id, space_id, what)

    # ------------------------------------------------------------------ checked entry points
    def upsert(self, ids, vectors, metadata=None, space_id: str = "", deadline: float | None = None) -> tuple[int, int]:
        """Insert or replace ``vectors`` under ``ids`` (the last occurrence of an id wins). (seq, live count)."""
        self.require_ready()
        self.check_space(space_id, "vector")
        ids = np.asarray(ids, dtype=np.int64).reshape(-1)
        if len(ids) == 0:
            raise InvalidArgument("upsert has no ids")
        if (ids < 0).any():
            raise InvalidArgument(f"ids must be >= 0, got {int(ids[ids < 0][0])}")
        vec = check_vectors(vectors, self.spec.dim, "vectors", self.spec.metric == "cosine")
        if len(vec) != len(ids):
            raise InvalidArgument(f"{len(ids)} ids but {len(vec)} vectors of dim {self.spec.dim}")
        metadata = list(metadata) if metadata is not None and len(metadata) else None
        if metadata is not None and len(metadata) != len(ids):
            raise InvalidArgument(f"{len(ids)} ids but {len(metadata)} metadata strings (give none or one per id)")
        keep = last_occurrences(ids)  # one batch, one row per id: every backend gets unique ids
        if keep is not None:
            ids, vec = ids[keep], vec[keep]
            metadata = [metadata[i] for i in keep] if metadata else metadata
        return self._upsert(ids, vec, metadata, deadline)

    def delete(self, ids, deadline: float | None = None) -> tuple[int, int, int]:
        """Delete ``ids``; (seq, how many existed, live count)."""
        ids = np.asarray(ids, dtype=np.int64).reshape(-1)
        if len(ids) == 0:
            raise InvalidArgument("delete has no ids")
        return self._delete(ids, deadline)

    def search(self, queries, k: int, space_id: str = "", ef_search: int = 0, nprobe: int = 0,
               deadline: float | None = None):
        """[(ids, scores, metadata)] per query, best first."""
        self.require_ready()
        self.check_space(space_id, "query")
        if not isinstance(k, (int, np.integer)) or k <= 0:
            raise InvalidArgument(f"k must be a positive integer, got {k}")
        if k > MAX_K:
            raise InvalidArgument(f"k={k} is larger than the maximum {MAX_K}")
        if not 0 <= ef_search <= MAX_EF_SEARCH:
            raise InvalidArgument(f"hnsw_ef_search={ef_search} is out of range: 0 (the gallery's default) to "
                                  f"{MAX_EF_SEARCH}")
        if not 0 <= nprobe <= MAX_NPROBE:
            raise InvalidArgument(f"ivf_nprobe={nprobe} is out of range: 0 (the gallery's default) to {MAX_NPROBE}")
        q = check_vectors(queries, self.spec.dim, "query", self.spec.metric == "cosine")
        knobs = SearchKnobs(ef_search=ef_search or self.spec.ef_search, nprobe=nprobe or self.spec.nprobe)
        return self._search(q, int(k), knobs, deadline)

    # ------------------------------------------------------------------ what a backend implements
    @abstractmethod
    def _upsert(self, ids: np.ndarray, vectors: np.ndarray, metadata: list[str] | None,
                deadline: float | None) -> tuple[int, int]: ...

    @abstractmethod
    def _delete(self, ids: np.ndarray, deadline: float | None) -> tuple[int, int, int]: ...

    @abstractmethod
    def _search(self, queries: np.ndarray, k: int, knobs: SearchKnobs, deadline: float | None) -> list: ...

    @abstractmethod
    def info(self) -> GalleryInfo: ...


# --------------------------------------------------------------------------- all galleries
class StoreBase(ABC):
    """What the gRPC service (and ``open_offline``) calls. Thread-safe in every implementation."""

    backend = ""  # "faiss" or "milvus", for logs

    @abstractmethod
    def open(self, create: bool = True) -> "StoreBase": ...

    @abstractmethod
    def load_all(self) -> dict: ...

    @abstractmethod
    def close(self) -> None: ...

    @abstractmethod
    def get(self, name: str) -> GalleryBase: ...

    @abstractmethod
    def list(self) -> list[GalleryInfo]: ...

    @abstractmethod
    def create_gallery(self, name: str, space_id: str, dim: int = 0, metric: str = "cosine", index_factory: str = "",
                       ef_search: int = 0, nprobe: int = 0, exist_ok: bool = False) -> GalleryInfo: ...

    @abstractmethod
    def drop_gallery(self, name: str) -> None: ...

    @abstractmethod
    def snapshot(self, name: str | None = None, compact: bool = False, deadline=None) -> list[dict]:
        """Make every acknowledged write of one gallery (or all) part of the stored state; one dict per gallery."""

    def wal_stats(self) -> dict:
        """{gallery: (log bytes, log records)} since the last snapshot."""
        return {i.name: (i.wal_bytes, i.wal_records) for i in self.list()}

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # ------------------------------------------------------------------ shortcuts
    def upsert(self, name: str, ids, vectors, metadata=None, space_id: str = "", deadline=None) -> tuple[int, int]:
        """Insert or replace ``vectors`` ([n, dim] or flat) under ``ids``; durable on return. (seq, count)."""
        return self.get(name).upsert(ids, vectors, metadata, space_id=space_id, deadline=deadline)

    def delete(self, name: str, ids, deadline=None) -> tuple[int, int, int]:
        return self.get(name).delete(ids, deadline=deadline)

    def search(self, name: str, queries, k: int, space_id: str = "", **kw):
        """Raw results, one ``(ids, scores, metadata)`` per query (arrays, best first); see :meth:`search_hits`."""
        return self.get(name).search(queries, k, space_id=space_id, **kw)

    def search_hits(self, name: str, queries, k: int, space_id: str = "", ef_search: int = 0,
                    nprobe: int = 0) -> list[list[Hit]]:
        """Like ``GalleryClient.batch_search``: one list of :class:`~hetsearch.hit.Hit` per query (``queries``:
        [n, dim] or one [dim] vector), best first, under the same space guard and limits as the server."""
        out = self.get(name).search(queries, k, space_id=space_id, ef_search=ef_search, nprobe=nprobe)
        return [[Hit(int(i), float(s), m) for i, s, m in zip(ids.tolist(), scores.tolist(), meta)]
                for ids, scores, meta in out]
