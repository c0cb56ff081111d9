"""Galleries on disk: atomic snapshots + write-ahead log, loaded and served from memory.

Layout of a data directory::

    DATA_DIR/.lock                     flock'ed by the one process using the directory
    DATA_DIR/galleries/NAME/gallery.json     the gallery's spec (written once, atomically)
    DATA_DIR/galleries/NAME/snap-SEQ.snap    snapshots (newest valid one wins)
    DATA_DIR/galleries/NAME/wal-SEQ.log      write-ahead log segments

Every write gets the next sequence number, is appended to the log, applied in
memory, then fsync'ed (group commit) before it is acknowledged. A write is
visible to searches slightly before it is durable; it is acknowledged only
after. A snapshot holds everything up to its ``seq``; on start the newest
valid snapshot is loaded and the log records after it are replayed; a torn or
corrupt tail of the last segment is cut off (counted and logged). A gallery
that cannot be loaded is marked unavailable; the others serve.

Python API for building a gallery without a server (what ``hetsearch index``
uses)::

    from hetsearch.gallery_server.store import open_offline
    with open_offline("gallery-data") as store:
        store.create_gallery("shoes", space_id, index_factory="HNSW32", exist_ok=True)
        store.upsert("shoes", ids, vectors, metadata=labels, space_id=space_id)
        store.snapshot("shoes")
"""

from __future__ import annotations

import errno
import fcntl
import json
import logging
import os
import re
import shutil
import threading
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from hetsearch.hit import Hit
from hetsearch.space import parse_space_id

from . import wal as wallog
from .errors import (AlreadyExists, DataDirInUse, DeadlineExceeded, GalleryCorrupt, InvalidArgument, NotFound,
                     ResourceExhausted, SpaceMismatch, StoreError, Unavailable, shown)
from .index import METRICS, RWLock, SearchKnobs, VectorIndex, make_faiss_index
from .logfmt import event
from .snapshot import atomic_write, read_snapshot, snapshot_seq, write_snapshot

log = logging.getLogger("hetsearch.gallery_server.store")

NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")  # fullmatch: "$" would accept a trailing newline
SPEC_FILE = "gallery.json"
READY, LOADING, UNAVAILABLE = "READY", "LOADING", "UNAVAILABLE"
MAX_K = 10_000
# Per-request knobs that size memory: HNSW allocates a candidate heap of efSearch entries per query (2^31 - 1 made
# the server grow past 17 GB), IVF visits at most nlist lists whatever nprobe says. 65,536 candidates is 64x the
# efSearch where recall saturates on our galleries and costs 512 KB per searching thread.
MAX_EF_SEARCH = 1 << 16
MAX_NPROBE = 1 << 20
MAX_NORM = 1e18  # un-normalised metrics: squared norms up to 1e36 stay finite in float32


# --------------------------------------------------------------------------- helpers
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

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def space_id(self) -> str:
        return self.spec.space_id


@dataclass
class LoadReport:
    snapshot: str = ""
    replayed: int = 0
    truncated_bytes: int = 0
    truncations: int = 0
    skipped_snapshots: list = field(default_factory=list)


# --------------------------------------------------------------------------- a gallery
class Gallery:
    def __init__(self, directory: Path, spec: GallerySpec, fsync: bool = True, auto_snapshot_bytes: int = 0):
        self.dir = Path(directory)
        self.auto_snapshot_bytes = auto_snapshot_bytes  # 0: only on request
        self._auto = threading.Lock()
        self.spec = spec
        self.fsync = fsync
        self.state = LOADING
        self.status_message = "loading"
        self.index: VectorIndex | None = None
        self.wal: wallog.WalWriter | None = None
        self.rw = RWLock()  # searches share; index mutation excludes
        self.write_mutex = threading.Lock()  # orders log appends + applies; held through snapshots
        self.last_seq = 0
        self.snapshot_seq = 0
        self.wal_records = 0  # records since the last snapshot
        self.load_report = LoadReport()
        self.truncations = 0
        self.dropped = False

    # ------------------------------------------------------------------ loading
    def load(self) -> LoadReport:
        rep = LoadReport()
        snaps = sorted((s, p) for p in self.dir.glob("snap-*.snap") if (s := snapshot_seq(p)) is not None)
        index, base = None, 0
        for seq, path in reversed(snaps):
            try:
                header, sections = read_snapshot(path)
                if header.get("seq") != seq or header.get("dim") != self.spec.dim:
                    raise ValueError("snapshot header does not match its file name or the gallery's dim")
                index = VectorIndex.from_sections(self.spec.dim, self.spec.metric, self.spec.index_factory, sections)
                base, rep.snapshot = seq, path.name
                break
            except (OSError, ValueError, KeyError, TypeError, RuntimeError) as exc:
                rep.skipped_snapshots.append(f"{path.name}: {exc}")
                log.warning(event("snapshot_invalid", gallery=self.spec.name, file=path.name, error=exc))
        if index is None:
            if snaps and not (self.dir / wallog.segment_name(1)).exists():
                raise GalleryCorrupt(f"gallery {self.spec.name!r}: no valid snapshot "
                                     f"({'; '.join(rep.skipped_snapshots)}) and the log does not start at 1")
            index = VectorIndex(self.spec.dim, self.spec.metric, self.spec.index_factory)
        segments = wallog.list_segments(self.dir)
        expected = base + 1
        records = 0
        for i, seg in enumerate(segments):
            res = wallog.scan(seg)
            for rec in res.records:
                if rec.seq < expected:
                    continue
                if rec.seq != expected:
                    raise GalleryCorrupt(f"gallery {self.spec.name!r}: write-ahead log jumps from seq {expected - 1} "
                                         f"to {rec.seq} in {seg.name}; records are missing")
                self._apply(index, rec)
                expected += 1
                records += 1
                rep.replayed += 1
            if res.error:
                last = i == len(segments) - 1
                dropped = res.size - res.good_bytes
                log.warning(event("wal_tail_truncated" if last else "wal_segment_corrupt", gallery=self.spec.name,
                                  segment=seg.name, offset=res.good_bytes, dropped_bytes=dropped, reason=res.error))
                if not last:
                    # Records after this point may be missing; the next segment must continue seamlessly.
                    continue
                with open(seg, "r+b") as f:
                    f.truncate(res.good_bytes)
                    f.flush()
                    os.fsync(f.fileno())
                rep.truncated_bytes += dropped
                rep.truncations += 1
        if index.needs_training():
            index = index.compacted()
        self.index = index
        self.last_seq = expected - 1
        self.snapshot_seq = base
        self.wal_records = records
        if segments and wallog.segment_start(segments[-1]) <= self.last_seq + 1:
            tail = segments[-1]
        else:
            tail = self.dir / wallog.segment_name(self.last_seq + 1)
        self.wal = wallog.WalWriter(tail, self.last_seq, fsync=self.fsync)
        if self.fsync:
            wallog.fsync_dir(self.dir)
        self.load_report = rep
        self.truncations = rep.truncations
        self.state, self.status_message = READY, ""
        return rep

    @staticmethod
    def _apply(index: VectorIndex, rec: wallog.Record) -> None:
        if rec.kind == wallog.UPSERT:
            index.upsert(rec.ids, rec.vectors, rec.metadata)
        else:
            index.delete(rec.ids)

    # ------------------------------------------------------------------ checks
    def require_ready(self) -> None:
        if self.dropped:
            raise NotFound(f"gallery {self.spec.name!r} was dropped")
        if self.state == LOADING:
            raise Unavailable(f"gallery {self.spec.name!r} is still loading; retry shortly")
        if self.state != READY:
            raise GalleryCorrupt(f"gallery {self.spec.name!r} is unavailable: {self.status_message}")

    def check_space(self, space_id: str, what: str) -> None:
        if not space_id:
            raise InvalidArgument(f"space_id is required: name the embedding space the {what} comes from")
        if space_id != self.spec.space_id:
            raise SpaceMismatch(self.spec.name, self.spec.space_id, space_id, what)

    @contextmanager
    def _writing(self, deadline: float | None):
        timeout = -1 if deadline is None else max(0.0, deadline - time.monotonic())
        if not self.write_mutex.acquire(timeout=timeout):
            raise DeadlineExceeded(f"deadline passed while waiting to write to gallery {self.spec.name!r}")
        try:
            self.require_ready()
            yield
        finally:
            self.write_mutex.release()

    def _log(self, payload_fn) -> int:
        """Append one record (caller holds write_mutex); returns its seq."""
        seq = self.last_seq + 1
        try:
            self.wal.append(payload_fn(seq), seq)
        except OSError as exc:
            if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
                raise ResourceExhausted(
                    f"gallery {self.spec.name!r}: the data directory's disk is full ({exc.strerror}); this write was "
                    "not applied and nothing acknowledged is lost. Free space (or snapshot with compaction) and "
                    "retry; searches keep working") from None
            raise Unavailable(f"gallery {self.spec.name!r}: cannot append to the write-ahead log: {exc}") from None
        self.last_seq = seq
        self.wal_records += 1
        return seq

    def _durable(self, seq: int) -> None:
        try:
            self.wal.sync(seq)
        except OSError as exc:
            self.state = UNAVAILABLE
            self.status_message = f"write-ahead log fsync failed ({exc}); restart the server to recover"
            log.error(event("wal_fsync_failed", gallery=self.spec.name, error=exc))
            raise StoreError(self.status_message) from None

    # ------------------------------------------------------------------ writes
    def upsert(self, ids, vectors, metadata=None, space_id: str = "", deadline: float | None = None) -> tuple[int, int]:
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
        with self._writing(deadline):
            seq = self._log(lambda s: wallog.encode_upsert(s, ids, vec, metadata))
            with self.rw.write():
                self.index.upsert(ids, vec, metadata)
            if self.index.needs_training():
                self._swap(self.index.compacted())
            count = self.index.count
        self._durable(seq)
        self._maybe_snapshot()
        return seq, count

    def delete(self, ids, deadline: float | None = None) -> tuple[int, int, int]:
        ids = np.asarray(ids, dtype=np.int64).reshape(-1)
        if len(ids) == 0:
            raise InvalidArgument("delete has no ids")
        with self._writing(deadline):
            seq = self._log(lambda s: wallog.encode_delete(s, ids))
            with self.rw.write():
                deleted = self.index.delete(ids)
            count = self.index.count
        self._durable(seq)
        self._maybe_snapshot()
        return seq, deleted, count

    def _maybe_snapshot(self) -> None:
        """Snapshot in the background once the log outgrows ``auto_snapshot_bytes`` (bounds replay time)."""
        wal = self.wal
        if not self.auto_snapshot_bytes or wal is None or wal.bytes < self.auto_snapshot_bytes:
            return
        if not self._auto.acquire(blocking=False):
            return  # one is already running

        def run():
            try:
                if self.state == READY and not self.dropped:
                    self.snapshot()
            except Exception as exc:  # noqa: BLE001 - logged; the log keeps everything meanwhile
                log.error(event("auto_snapshot_failed", gallery=self.spec.name, error=repr(exc)))
            finally:
                self._auto.release()

        threading.Thread(target=run, name=f"snapshot-{self.spec.name}", daemon=True).start()

    def _swap(self, new_index: VectorIndex) -> None:
        with self.rw.write():
            self.index = new_index

    def snapshot(self, compact: bool = False, deadline: float | None = None) -> dict:
        t0 = time.perf_counter()
        with self._writing(deadline):
            removed = 0
            if compact and (self.index.deleted or self.index.needs_training()):
                removed = self.index.deleted
                self._swap(self.index.compacted())  # searches keep using the old one meanwhile
            seq = self.last_seq
            self.wal.sync(seq)
            path = self.dir / f"snap-{seq:020d}.snap"
            header = {"format": 1, "gallery": self.spec.name, "space_id": self.spec.space_id, "seq": seq,
                      "dim": self.spec.dim, "count": self.index.count, "created_unix_ms": int(time.time() * 1000)}
            size = write_snapshot(path, header, self.index.sections(), fsync=self.fsync)
            # New log segment; older segments and snapshots are now redundant.
            old = self.wal
            self.wal = wallog.WalWriter(self.dir / wallog.segment_name(seq + 1), seq, fsync=self.fsync)
            if self.fsync:
                wallog.fsync_dir(self.dir)
            old.close()
            for seg in wallog.list_segments(self.dir):
                if seg != self.wal.path:
                    seg.unlink(missing_ok=True)
            for p in self.dir.glob("snap-*.snap"):
                if p != path:
                    p.unlink(missing_ok=True)
            for p in self.dir.glob(".snap-*.tmp-*"):
                p.unlink(missing_ok=True)
            if self.fsync:
                wallog.fsync_dir(self.dir)
            self.snapshot_seq = seq
            self.wal_records = 0
            count = self.index.count
        seconds = time.perf_counter() - t0
        log.info(event("snapshot", gallery=self.spec.name, seq=seq, vectors=count, bytes=size, compacted=removed,
                       seconds=round(seconds, 3)))
        return {"gallery": self.spec.name, "seq": seq, "vector_count": count, "bytes": size,
                "compacted": removed, "seconds": seconds}

    # ------------------------------------------------------------------ reads
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
        out = []
        chunk = 256
        for start in range(0, len(q), chunk):
            if deadline is not None and time.monotonic() > deadline:
                raise DeadlineExceeded(f"deadline passed after {start} of {len(q)} queries")
            with self.rw.read():
                index = self.index
                D, I, valid = index.search(q[start: start + chunk], int(k), knobs)
                for r in range(len(D)):
                    ok = valid[r]
                    ids = I[r][ok]
                    out.append((ids, D[r][ok], index.metadata_for(ids.tolist()) if index.metadata else
                                [""] * len(ids)))
        return out

    def info(self) -> GalleryInfo:
        idx = self.index
        return GalleryInfo(
            spec=self.spec, state=self.state, status_message=self.status_message,
            vector_count=idx.count if idx else 0, deleted_count=idx.deleted if idx else 0,
            trained=idx.trained if idx else False, last_seq=self.last_seq, snapshot_seq=self.snapshot_seq,
            wal_records=self.wal_records, wal_bytes=self.wal.bytes if self.wal else 0)

    def close(self) -> None:
        with self.write_mutex:
            if self.wal is not None:
                self.wal.close()
                self.wal = None
            if self.state == READY:
                self.state, self.status_message = UNAVAILABLE, "closed"


# --------------------------------------------------------------------------- the store
class GalleryStore:
    """All galleries of one data directory. Thread-safe."""

    def __init__(self, data_dir, fsync: bool = True, auto_snapshot_bytes: int = 0):
        self.root = Path(data_dir)
        self.fsync = fsync
        self.auto_snapshot_bytes = auto_snapshot_bytes
        self.galleries: dict[str, Gallery] = {}
        self._lock = threading.RLock()
        self._lockfile = None
        self.loaded = False

    # ------------------------------------------------------------------ lifecycle
    def open(self, create: bool = True) -> "GalleryStore":
        if self.root.exists() and not self.root.is_dir():
            raise InvalidArgument(f"data directory {self.root} exists and is not a directory; give a directory "
                                  "(it is created if missing)")
        try:
            if not self.root.exists():
                if not create:
                    raise NotFound(f"data directory {self.root} does not exist")
                self.root.mkdir(parents=True)
            (self.root / "galleries").mkdir(exist_ok=True)
        except OSError as exc:
            raise InvalidArgument(f"cannot use data directory {self.root}: {exc.strerror or exc}") from None
        fd = os.open(str(self.root / ".lock"), os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise DataDirInUse(f"data directory {self.root} is in use by another hetsearch process") from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._lockfile = fd
        for trash in self.root.glob(".trash-*"):
            shutil.rmtree(trash, ignore_errors=True)
        for d in sorted((self.root / "galleries").iterdir()):
            if d.is_dir() and not d.name.startswith("."):
                self.galleries[d.name] = self._placeholder(d)
        return self

    def _placeholder(self, d: Path) -> Gallery:
        try:
            spec = GallerySpec.from_json(json.loads((d / SPEC_FILE).read_text()))
            parse_space_id(spec.space_id)
            if spec.name != d.name:
                raise ValueError(f"spec names gallery {spec.name!r}")
            g = Gallery(d, spec, fsync=self.fsync, auto_snapshot_bytes=self.auto_snapshot_bytes)
        except (OSError, ValueError, TypeError) as exc:
            g = Gallery(d, GallerySpec(name=d.name, space_id="", dim=0), fsync=self.fsync)
            g.state, g.status_message = UNAVAILABLE, f"{SPEC_FILE} unreadable: {exc}"
        return g

    def load_all(self) -> dict[str, LoadReport]:
        """Load every gallery; one that fails is marked unavailable, the rest serve."""
        reports = {}
        for name, g in list(self.galleries.items()):
            if g.state != LOADING:
                log.error(event("gallery_unavailable", gallery=name, reason=g.status_message))
                continue
            t0 = time.perf_counter()
            try:
                rep = g.load()
                reports[name] = rep
                log.info(event("gallery_loaded", gallery=name, vectors=g.index.count, snapshot=rep.snapshot or "-",
                               replayed=rep.replayed, truncated_bytes=rep.truncated_bytes,
                               seconds=round(time.perf_counter() - t0, 3)))
            except Exception as exc:  # one gallery must never stop the others
                g.state = UNAVAILABLE
                g.status_message = str(exc) if isinstance(exc, StoreError) else f"load failed: {exc!r}"
                log.error(event("gallery_unavailable", gallery=name, reason=g.status_message))
        self.loaded = True
        return reports

    def close(self) -> None:
        with self._lock:
            for g in self.galleries.values():
                g.close()
            if self._lockfile is not None:
                os.close(self._lockfile)
                self._lockfile = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # ------------------------------------------------------------------ galleries
    def get(self, name: str) -> Gallery:
        check_name(name)
        g = self.galleries.get(name)
        if g is None:
            have = sorted(self.galleries)
            listed = ", ".join(repr(n) for n in have[:20]) + (f" … ({len(have)} in all)" if len(have) > 20 else "")
            raise NotFound(f"gallery {name!r} not found; " + (f"existing galleries: {listed}" if have else
                                                               "there are no galleries yet"))
        return g

    def list(self) -> list[GalleryInfo]:
        with self._lock:
            gs = sorted(self.galleries.items())
        return [g.info() for _, g in gs]

    def create_gallery(self, name: str, space_id: str, dim: int = 0, metric: str = "cosine",
                       index_factory: str = "Flat", ef_search: int = 0, nprobe: int = 0,
                       exist_ok: bool = False) -> GalleryInfo:
        check_name(name)
        try:
            space = parse_space_id(space_id)
        except ValueError as exc:
            raise InvalidArgument(str(exc)) from None
        if dim and int(dim) != space["dim"]:
            raise InvalidArgument(f"dim {dim} does not match space {space_id!r}, whose embeddings have "
                                  f"dim {space['dim']}")
        metric = metric or "cosine"
        index_factory = (index_factory or "Flat").strip()
        if metric not in METRICS:
            raise InvalidArgument(f"metric must be one of {sorted(METRICS)}, got {shown(metric)}")
        if not (0 <= ef_search <= MAX_EF_SEARCH and 0 <= nprobe <= MAX_NPROBE):
            raise InvalidArgument(f"default search params out of range: hnsw_ef_search 0..{MAX_EF_SEARCH}, "
                                  f"ivf_nprobe 0..{MAX_NPROBE}; got {ef_search} and {nprobe}")
        make_faiss_index(space["dim"], metric, index_factory)  # validates the factory string
        spec = GallerySpec(name=name, space_id=space_id, dim=space["dim"], metric=metric,
                           index_factory=index_factory, ef_search=int(ef_search), nprobe=int(nprobe),
                           created_unix_ms=int(time.time() * 1000))
        with self._lock:
            existing = self.galleries.get(name)
            if existing is not None:
                same = (existing.spec.space_id, existing.spec.metric, existing.spec.index_factory) == (
                    space_id, metric, index_factory)
                if exist_ok and same:
                    return existing.info()
                raise AlreadyExists(f"gallery {name!r} already exists (space {existing.spec.space_id!r}, "
                                    f"index {existing.spec.index_factory!r})")
            final = self.root / "galleries" / name
            tmp = self.root / f".trash-create-{name}-{os.getpid()}"
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
            atomic_write(tmp / SPEC_FILE, [json.dumps(asdict(spec), indent=2).encode()], fsync=self.fsync)
            os.replace(tmp, final)
            if self.fsync:
                wallog.fsync_dir(final.parent)
            g = Gallery(final, spec, fsync=self.fsync, auto_snapshot_bytes=self.auto_snapshot_bytes)
            g.load()
            self.galleries[name] = g
        log.info(event("gallery_created", gallery=name, space_id=space_id, index=index_factory, metric=metric))
        return g.info()

    def drop_gallery(self, name: str) -> None:
        with self._lock:
            g = self.get(name)
            with g.write_mutex:
                g.dropped = True
                if g.wal is not None:
                    g.wal.close()
                    g.wal = None
                trash = self.root / f".trash-{name}-{time.time_ns()}"
                os.replace(g.dir, trash)
                if self.fsync:
                    wallog.fsync_dir(self.root / "galleries")
                del self.galleries[name]
        shutil.rmtree(trash, ignore_errors=True)
        log.info(event("gallery_dropped", gallery=name))

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

    def snapshot(self, name: str | None = None, compact: bool = False, deadline=None) -> list[dict]:
        if name:
            return [self.get(name).snapshot(compact=compact, deadline=deadline)]
        with self._lock:
            ready = [g for g in self.galleries.values() if g.state == READY]
        return [g.snapshot(compact=compact, deadline=deadline) for g in ready]

    def wal_stats(self) -> dict:
        return {name: (g.wal.bytes if g.wal else 0, g.wal_records) for name, g in list(self.galleries.items())}


def open_offline(data_dir, create: bool = True, fsync: bool = True) -> GalleryStore:
    """Open (or create) a data directory without a server and load its galleries.

    Use as a context manager; the directory is locked against a concurrently
    running server until closed (:class:`DataDirInUse` while one holds it)::

        with open_offline("gallery-data") as store:
            store.create_gallery("shoes", space_id, index_factory="HNSW32", exist_ok=True)
            store.upsert("shoes", ids, vectors, metadata=names, space_id=space_id)  # durable on return
            hits = store.search_hits("shoes", query_vectors, k=10, space_id=space_id)  # [[Hit, …], …]
            store.snapshot("shoes")  # bounds the next start's log replay

    Methods: ``create_gallery``, ``upsert``, ``delete``, ``search_hits`` (or ``search`` for raw arrays),
    ``snapshot``, ``list``, ``drop_gallery``. Errors are the server's (``InvalidArgument``, ``NotFound``,
    ``SpaceMismatch`` … in :mod:`hetsearch.gallery_server.errors`), raised instead of sent as statuses.
    """
    store = GalleryStore(data_dir, fsync=fsync).open(create=create)
    store.load_all()
    return store


__all__ = ["GalleryStore", "Gallery", "GallerySpec", "GalleryInfo", "open_offline", "MAX_K", "MAX_EF_SEARCH",
           "MAX_NPROBE", "atomic_write", "read_snapshot", "write_snapshot", "check_vectors"]
