"""The in-memory index of one gallery: faiss plus our own id mapping.

faiss holds vectors under *slot* numbers (0, 1, 2, ... in the order they were
added). We keep, per slot, the caller's int64 id, the raw (normalised) vector
and an "alive" bit. An upsert of an existing id or a delete only clears the old
slot's bit (a tombstone); searches pass the alive bitmap to faiss as an
``IDSelectorBitmap`` so tombstoned slots are never returned (and, for HNSW, the
graph still routes through them). ``compacted()`` rebuilds an index without the
tombstones. This works for every index type, including HNSW, which cannot
remove vectors.

Indexes that need training (IVF, PQ) answer exactly from a flat staging index
until enough vectors have arrived (``train_threshold``), then are trained and
rebuilt.

Not thread-safe by itself: :class:`Gallery` in ``store.py`` guards it with a
reader/writer lock (searches share, writes exclude).
"""

from __future__ import annotations

import json
import threading
from contextlib import contextmanager

import faiss
import numpy as np

from .backend import DEFAULT_EF_SEARCH, DEFAULT_NPROBE, SearchKnobs, last_occurrences
from .errors import InvalidArgument, shown

METRICS = {"cosine": faiss.METRIC_INNER_PRODUCT, "ip": faiss.METRIC_INNER_PRODUCT, "l2": faiss.METRIC_L2}


# OpenMP's thread count is per thread: omp_set_num_threads() in the main thread does not reach
# gRPC worker threads (they would use every core each, and oversubscribe). So the setting is
# kept here and applied lazily in whichever thread calls into faiss.
_OMP = {"threads": 0}
_local = threading.local()


def set_omp_threads(n: int) -> None:
    """faiss OpenMP threads for every thread that searches or writes from now on (0: leave as is)."""
    _OMP["threads"] = int(n or 0)
    _apply_threads()


def _apply_threads() -> None:
    n = _OMP["threads"]
    if n and getattr(_local, "threads", 0) != n:
        faiss.omp_set_num_threads(n)
        _local.threads = n


def make_faiss_index(dim: int, metric: str, factory: str):
    """``faiss.index_factory`` with a precise error for a bad string."""
    if metric not in METRICS:
        raise InvalidArgument(f"metric must be one of {sorted(METRICS)}, got {shown(metric)}")
    try:
        return faiss.index_factory(int(dim), factory, METRICS[metric])
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[-1] if str(exc).strip() else "rejected"
        raise InvalidArgument(f"index_factory {shown(factory)} is not a valid faiss index for dim {dim}: "
                              f"{first[:200]}") from None


def train_threshold(index) -> int:
    """How many vectors an untrained index waits for before it is trained."""
    if index.is_trained:
        return 0
    ivf = faiss.try_extract_index_ivf(index)
    if ivf is not None:
        return max(39 * int(ivf.nlist), 1000)
    return 10_000


class RWLock:
    """Many readers or one writer; a waiting writer blocks new readers (no writer starvation)."""

    def __init__(self):
        self._cond = threading.Condition(threading.Lock())
        self._readers = 0
        self._writer = False
        self._writers_waiting = 0

    @contextmanager
    def read(self):
        with self._cond:
            while self._writer or self._writers_waiting:
                self._cond.wait()
            self._readers += 1
        try:
            yield
        finally:
            with self._cond:
                self._readers -= 1
                if not self._readers:
                    self._cond.notify_all()

    @contextmanager
    def write(self):
        with self._cond:
            self._writers_waiting += 1
            try:
                while self._writer or self._readers:
                    self._cond.wait()
            finally:
                self._writers_waiting -= 1
            self._writer = True
        try:
            yield
        finally:
            with self._cond:
                self._writer = False
                self._cond.notify_all()


class VectorIndex:
    def __init__(self, dim: int, metric: str, factory: str, capacity: int = 1024):
        self.dim = int(dim)
        self.metric = metric
        self.factory = factory
        self.index = make_faiss_index(dim, metric, factory)
        self.threshold = train_threshold(self.index)
        # Untrained index: vectors are searched exactly through this until training.
        self.staging = None if self.index.is_trained else faiss.IndexFlat(self.dim, METRICS[metric])
        capacity = max(int(capacity), 16)
        self.n = 0  # slots used
        self.vectors = np.empty((capacity, self.dim), dtype=np.float32)
        self.ids = np.empty(capacity, dtype=np.int64)
        self.alive = np.zeros((capacity + 7) // 8, dtype=np.uint8)  # bit i: slot i is live
        self.slot_of: dict[int, int] = {}
        self.metadata: dict[int, str] = {}

    # ------------------------------------------------------------------ state
    @property
    def count(self) -> int:
        return len(self.slot_of)

    @property
    def deleted(self) -> int:
        return self.n - len(self.slot_of)

    @property
    def trained(self) -> bool:
        return self.staging is None

    def _grow(self, need: int) -> None:
        cap = len(self.ids)
        if need <= cap:
            return
        cap = max(need, cap * 2)
        vec = np.empty((cap, self.dim), dtype=np.float32)
        vec[: self.n] = self.vectors[: self.n]
        ids = np.empty(cap, dtype=np.int64)
        ids[: self.n] = self.ids[: self.n]
        alive = np.zeros((cap + 7) // 8, dtype=np.uint8)
        alive[: len(self.alive)] = self.alive
        self.vectors, self.ids, self.alive = vec, ids, alive

    def _kill(self, slot: int) -> None:
        self.alive[slot >> 3] &= np.uint8(~(1 << (slot & 7)) & 0xFF)

    def _is_alive(self, slots: np.ndarray) -> np.ndarray:
        return ((self.alive[slots >> 3] >> (slots & 7).astype(np.uint8)) & 1).astype(bool)

    # ----------------------------------------------------------------- writes
    def upsert(self, ids: np.ndarray, vectors: np.ndarray, metadata: list[str] | None) -> int:
        """Insert or replace; within one batch the last occurrence of an id wins."""
        _apply_threads()
        ids = np.asarray(ids, dtype=np.int64)
        if len(ids) == 0:
            return 0
        keep = last_occurrences(ids)
        if keep is not None:
            ids = ids[keep]
            vectors = vectors[keep]
            metadata = [metadata[i] for i in keep] if metadata else metadata
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        for i in ids.tolist():
            old = self.slot_of.get(i)
            if old is not None:
                self._kill(old)
        m = len(ids)
        start = self.n
        self._grow(start + m)
        self.vectors[start : start + m] = vectors
        self.ids[start : start + m] = ids
        slots = np.arange(start, start + m)
        np.bitwise_or.at(self.alive, slots >> 3, (1 << (slots & 7)).astype(np.uint8))
        self.slot_of.update(zip(ids.tolist(), range(start, start + m)))
        for j, i in enumerate(ids.tolist()):
            text = metadata[j] if metadata else ""
            if text:
                self.metadata[i] = text
            else:
                self.metadata.pop(i, None)
        self.n = start + m
        (self.index if self.staging is None else self.staging).add(vectors)
        return m

    def delete(self, ids) -> int:
        deleted = 0
        for i in np.asarray(ids, dtype=np.int64).tolist():
            slot = self.slot_of.pop(i, None)
            if slot is not None:
                self._kill(slot)
                self.metadata.pop(i, None)
                deleted += 1
        return deleted

    def needs_training(self) -> bool:
        return self.staging is not None and self.count >= self.threshold

    def compacted(self) -> "VectorIndex":
        """A new index holding only live vectors (trained if it can be). Reads self only."""
        _apply_threads()
        live = np.flatnonzero(self._is_alive(np.arange(self.n)))
        out = VectorIndex(self.dim, self.metric, self.factory, capacity=len(live) + 16)
        vec = np.ascontiguousarray(self.vectors[live])
        if not out.index.is_trained and len(live) >= out.threshold:
            sample = vec
            ivf = faiss.try_extract_index_ivf(out.index)
            cap = 256 * int(ivf.nlist) if ivf is not None else 100_000
            if len(vec) > cap:
                rng = np.random.default_rng(1234)
                sample = vec[np.sort(rng.choice(len(vec), cap, replace=False))]
            out.index.train(sample)
            out.staging = None
        ids = self.ids[live]
        out.upsert(ids, vec, [self.metadata.get(i, "") for i in ids.tolist()] if self.metadata else None)
        return out

    # ----------------------------------------------------------------- search
    def _params(self, knobs: SearchKnobs, sel):
        target = self.index if self.staging is None else self.staging
        inner = faiss.downcast_index(target.index) if isinstance(target, faiss.IndexPreTransform) else target
        if isinstance(inner, faiss.IndexHNSW):
            p = faiss.SearchParametersHNSW()
            p.efSearch = int(knobs.ef_search or DEFAULT_EF_SEARCH)
        elif isinstance(inner, faiss.IndexIVF):
            p = faiss.SearchParametersIVF()
            p.nprobe = int(knobs.nprobe or DEFAULT_NPROBE)
        else:
            p = faiss.SearchParameters()
        if sel is not None:
            p.sel = sel
        if inner is not target:
            outer = faiss.SearchParametersPreTransform()
            outer.index_params = p
            return outer, p
        return p, p

    def search(self, queries: np.ndarray, k: int, knobs: SearchKnobs | None = None):
        """Top-k live vectors per query: (scores [nq, k'], ids [nq, k'], valid mask)."""
        _apply_threads()
        knobs = knobs or SearchKnobs()
        nq = len(queries)
        live = self.count
        if live == 0:
            return np.zeros((nq, 0), np.float32), np.zeros((nq, 0), np.int64), np.zeros((nq, 0), bool)
        kk = min(int(k), live)
        target = self.index if self.staging is None else self.staging
        sel = None
        if self.deleted:
            sel = faiss.IDSelectorBitmap(len(self.alive), faiss.swig_ptr(self.alive))
        params, inner = self._params(knobs, sel)
        D, I = target.search(queries, kk, params=params)
        valid = I >= 0
        if sel is not None and valid.any() and not self._is_alive(I[valid]).all():
            # This index type ignored the selector: over-fetch and drop tombstones.
            inner.sel = None
            D, I = target.search(queries, min(kk + self.deleted, self.n), params=params)
            ok = I >= 0
            ok[ok] = self._is_alive(I[ok])
            D, I, valid = _take_first(D, I, ok, kk)
        slots = np.where(valid, I, 0)
        return D, np.where(valid, self.ids[slots], -1), valid

    def metadata_for(self, ids) -> list[str]:
        get = self.metadata.get
        return [get(i, "") for i in ids]

    # ---------------------------------------------------------- serialisation
    def sections(self) -> dict:
        """Arrays that fully describe the index (for a snapshot)."""
        out = {
            "ids": self.ids[: self.n],
            "alive": self.alive[: (self.n + 7) // 8],
            "vectors": self.vectors[: self.n],
            "metadata": np.frombuffer(json.dumps(
                {str(k): v for k, v in self.metadata.items()}, ensure_ascii=False).encode(), dtype=np.uint8),
        }
        # A flat index is just the vectors; anything else (graph, trained quantiser) is stored.
        if self.staging is None and not isinstance(self.index, faiss.IndexFlat):
            out["faiss"] = faiss.serialize_index(self.index)
        return out

    @classmethod
    def from_sections(cls, dim: int, metric: str, factory: str, sec: dict) -> "VectorIndex":
        ids, vectors, alive = sec["ids"], sec["vectors"], sec["alive"]
        n = len(ids)
        if vectors.shape != (n, dim) or len(alive) != (n + 7) // 8:
            raise ValueError("snapshot sections have inconsistent sizes")
        out = cls(dim, metric, factory, capacity=n + 16)
        out.n = n
        out.ids[:n] = ids
        out.vectors[:n] = vectors
        out.alive[: len(alive)] = alive
        live = np.flatnonzero(out._is_alive(np.arange(n)))
        out.slot_of = dict(zip(ids[live].tolist(), live.tolist()))
        if len(out.slot_of) != len(live):
            raise ValueError("snapshot holds a live id twice")
        out.metadata = {int(k): v for k, v in json.loads(bytes(sec["metadata"]).decode() or "{}").items()}
        if "faiss" in sec:
            out.index = faiss.deserialize_index(np.ascontiguousarray(sec["faiss"]))
            if out.index.ntotal != n or out.index.d != dim:
                raise ValueError(f"stored faiss index holds {out.index.ntotal} vectors of dim {out.index.d}, "
                                 f"expected {n} of dim {dim}")
            out.staging = None
        else:
            (out.index if out.staging is None else out.staging).add(out.vectors[:n])
        return out


def _take_first(D, I, ok, k):
    """Per row, the first k entries where ``ok`` (results are already sorted)."""
    nq = len(D)
    outD = np.zeros((nq, k), dtype=D.dtype)
    outI = np.full((nq, k), -1, dtype=I.dtype)
    valid = np.zeros((nq, k), dtype=bool)
    for r in range(nq):
        cols = np.flatnonzero(ok[r])[:k]
        outD[r, : len(cols)] = D[r, cols]
        outI[r, : len(cols)] = I[r, cols]
        valid[r, : len(cols)] = True
    return outD, outI, valid
