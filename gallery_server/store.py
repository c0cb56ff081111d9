"""Galleries on disk: atomic snapshots + write-ahead log, loaded and served from memory with faiss.

The default backend behind the store interface of :mod:`.backend` (the Milvus one is in
:mod:`.milvus_store`); the request checks shared by both live there.

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
import shutil
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from hetsearch.space import parse_space_id

from . import wal as wallog
from .backend import (LOADING, MAX_EF_SEARCH, MAX_K, MAX_NPROBE, READY, UNAVAILABLE, GalleryBase, GalleryInfo,
                      GallerySpec, StoreBase, check_name, check_vectors, new_spec, not_found, reuse_existing)
from .errors import (DataDirInUse, DeadlineExceeded, GalleryCorrupt, InvalidArgument, NotFound, ResourceExhausted,
                     StoreError, Unavailable)
from .index import RWLock, VectorIndex, make_faiss_index
from .logfmt import event
from .snapshot import atomic_write, read_snapshot, snapshot_seq, write_snapshot

log = logging.getLogger("hetsearch.gallery_server.store")

SPEC_FILE = "gallery.json"


@dataclass
class LoadReport:
    snapshot: str = ""
    replayed: int = 0
    truncated_bytes: int = 0
    truncations: int = 0
    skipped_snapshots: list = field(default_factory=list)


# --------------------------------------------------------------------------- a gallery
class Gallery(GalleryBase):
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

    # ------------------------------------------------------------------ writes
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
    def _upsert(self, ids, vec, metadata, deadline) -> tuple[int, int]:
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

    def _delete(self, ids, deadline) -> tuple[int, int, int]:
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
    def _search(self, q, k, knobs, deadline):
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
            wal_records=self.wal_records, wal_bytes=self.wal.bytes if self.wal else 0,
            truncations=self.truncations)

    def close(self) -> None:
        with self.write_mutex:
            if self.wal is not None:
                self.wal.close()
                self.wal = None
            if self.state == READY:
                self.state, self.status_message = UNAVAILABLE, "closed"


# --------------------------------------------------------------------------- the store
class GalleryStore(StoreBase):
    """All galleries of one data directory, in faiss indexes in this process. Thread-safe."""

    backend = "faiss"

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

    # ------------------------------------------------------------------ galleries
    def get(self, name: str) -> Gallery:
        check_name(name)
        g = self.galleries.get(name)
        if g is None:
            raise not_found(name, list(self.galleries))
        return g

    def list(self) -> list[GalleryInfo]:
        with self._lock:
            gs = sorted(self.galleries.items())
        return [g.info() for _, g in gs]

    def create_gallery(self, name: str, space_id: str, dim: int = 0, metric: str = "cosine",
                       index_factory: str = "", ef_search: int = 0, nprobe: int = 0,
                       exist_ok: bool = False) -> GalleryInfo:
        spec = new_spec(name, space_id, dim, metric, index_factory, ef_search, nprobe, default_index="Flat")
        make_faiss_index(spec.dim, spec.metric, spec.index_factory)  # validates the factory string
        with self._lock:
            existing = self.galleries.get(name)
            if existing is not None and reuse_existing(existing.spec, spec, exist_ok):
                return existing.info()
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
           "MAX_NPROBE", "atomic_write", "read_snapshot", "write_snapshot", "check_name", "check_vectors"]
