"""Write-ahead log: length- and CRC32-framed records, group-committed fsync.

A gallery's log is a series of segment files ``wal-<first seq>.log``; a new
segment starts after each snapshot. A record on disk is::

    u32 payload length | u32 crc32(payload) | payload
    payload = u64 seq | u8 kind | body

``kind`` 1 (upsert): u32 n, u32 dim, n int64 ids, n*dim float32, u32 meta
length, metadata as a JSON list (empty for none). ``kind`` 2 (delete): u32 n,
n int64 ids. Integers are little-endian.

Readers stop at the first record that is short (torn write) or whose CRC does
not match (bit rot); the caller truncates such a tail of the last segment.
"""

from __future__ import annotations

import json
import os
import struct
import threading
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

UPSERT = 1
DELETE = 2
_FRAME = struct.Struct("<II")
_HEAD = struct.Struct("<QB")
_COUNT2 = struct.Struct("<II")
_COUNT = struct.Struct("<I")
MAX_RECORD = 1 << 31


def segment_name(first_seq: int) -> str:
    return f"wal-{first_seq:020d}.log"


def seq_in_name(path: Path, prefix: str, suffix: str) -> int | None:
    """The number in ``<prefix><digits><suffix>`` file names, else None."""
    name = Path(path).name
    digits = name[len(prefix): -len(suffix)]
    if name.startswith(prefix) and name.endswith(suffix) and digits.isdigit():
        return int(digits)
    return None


def segment_start(path: Path) -> int | None:
    return seq_in_name(path, "wal-", ".log")


def list_segments(directory: Path) -> list[Path]:
    found = [(segment_start(p), p) for p in Path(directory).glob("wal-*.log")]
    return [p for s, p in sorted((s, p) for s, p in found if s is not None)]


def encode_upsert(seq: int, ids: np.ndarray, vectors: np.ndarray, metadata: list[str] | None) -> bytes:
    n, dim = vectors.shape
    meta = json.dumps(metadata, ensure_ascii=False).encode() if metadata else b""
    return b"".join([
        _HEAD.pack(seq, UPSERT), _COUNT2.pack(n, dim),
        np.ascontiguousarray(ids, dtype="<i8").tobytes(),
        np.ascontiguousarray(vectors, dtype="<f4").tobytes(),
        _COUNT.pack(len(meta)), meta,
    ])


def encode_delete(seq: int, ids: np.ndarray) -> bytes:
    ids = np.ascontiguousarray(ids, dtype="<i8")
    return _HEAD.pack(seq, DELETE) + _COUNT.pack(len(ids)) + ids.tobytes()


def frame(payload: bytes) -> bytes:
    return _FRAME.pack(len(payload), zlib.crc32(payload)) + payload


@dataclass
class Record:
    seq: int
    kind: int
    ids: np.ndarray
    vectors: np.ndarray | None = None
    metadata: list[str] | None = None


def decode(payload: bytes) -> Record:
    seq, kind = _HEAD.unpack_from(payload, 0)
    off = _HEAD.size
    if kind == UPSERT:
        n, dim = _COUNT2.unpack_from(payload, off)
        off += _COUNT2.size
        ids = np.frombuffer(payload, dtype="<i8", count=n, offset=off).astype(np.int64)
        off += 8 * n
        vectors = np.frombuffer(payload, dtype="<f4", count=n * dim, offset=off).astype(np.float32).reshape(n, dim)
        off += 4 * n * dim
        (mlen,) = _COUNT.unpack_from(payload, off)
        off += _COUNT.size
        meta = json.loads(payload[off: off + mlen].decode()) if mlen else None
        if off + mlen != len(payload) or (meta is not None and len(meta) != n):
            raise ValueError("upsert record has trailing or missing bytes")
        return Record(seq, kind, ids, vectors, meta)
    if kind == DELETE:
        (n,) = _COUNT.unpack_from(payload, off)
        off += _COUNT.size
        if off + 8 * n != len(payload):
            raise ValueError("delete record has trailing or missing bytes")
        return Record(seq, kind, np.frombuffer(payload, dtype="<i8", count=n, offset=off).astype(np.int64))
    raise ValueError(f"unknown record kind {kind}")


@dataclass
class ScanResult:
    records: list = field(default_factory=list)
    good_bytes: int = 0  # offset just past the last good record
    size: int = 0  # file size
    error: str = ""  # why reading stopped early ("" = clean end)


def scan(path: Path) -> ScanResult:
    """Read every good record of one segment; stop at a torn or corrupt one."""
    data = Path(path).read_bytes()
    out = ScanResult(size=len(data))
    off = 0
    while off < len(data):
        if len(data) - off < _FRAME.size:
            out.error = f"torn record header at byte {off}"
            break
        length, crc = _FRAME.unpack_from(data, off)
        end = off + _FRAME.size + length
        if length < _HEAD.size or end > len(data):
            out.error = f"torn record at byte {off} (length {length}, {len(data) - off} bytes left)"
            break
        payload = data[off + _FRAME.size: end]
        if zlib.crc32(payload) != crc:
            out.error = f"checksum mismatch in record at byte {off}"
            break
        try:
            rec = decode(payload)
        except (ValueError, struct.error, UnicodeDecodeError) as exc:
            out.error = f"undecodable record at byte {off}: {exc}"
            break
        out.records.append(rec)
        off = end
    out.good_bytes = off
    return out


def fsync_dir(path: Path) -> None:
    fd = os.open(str(path), os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class WalWriter:
    """Appends framed records to one segment; ``sync(seq)`` returns once ``seq`` is on disk.

    Group commit: concurrent writers append (cheap), then wait in ``sync``;
    one of them fsyncs for everybody appended so far.
    """

    def __init__(self, path: Path, last_seq: int, fsync: bool = True):
        self.path = Path(path)
        self.fd = os.open(str(self.path), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        self.offset = os.fstat(self.fd).st_size
        self.fsync_enabled = fsync
        self._cond = threading.Condition()
        self.written_seq = last_seq
        self.synced_seq = last_seq
        self._syncing = False
        self.failed: BaseException | None = None
        self.records = 0
        self.fsyncs = 0

    @property
    def bytes(self) -> int:
        return self.offset

    def append(self, payload: bytes, seq: int) -> None:
        """Write one record (not yet durable). Caller serialises appends."""
        if self.failed:
            raise OSError(f"write-ahead log {self.path.name} failed earlier: {self.failed}")
        data = frame(payload)
        if len(data) > MAX_RECORD:
            raise ValueError("record too large for the write-ahead log")
        try:
            view = memoryview(data)
            while view:
                written = os.write(self.fd, view)
                view = view[written:]
        except OSError:
            # Never leave a partial record in front of later ones.
            try:
                os.ftruncate(self.fd, self.offset)
            except OSError as exc2:
                self.failed = exc2
            raise
        self.offset += len(data)
        self.records += 1
        with self._cond:
            self.written_seq = seq

    def sync(self, seq: int) -> None:
        with self._cond:
            while self.synced_seq < seq:
                if self.failed:
                    raise OSError(f"write-ahead log fsync failed: {self.failed}")
                if self._syncing:
                    self._cond.wait()
                    continue
                self._syncing = True
                target = self.written_seq
                self._cond.release()
                try:
                    if self.fsync_enabled:
                        os.fsync(self.fd)
                    self.fsyncs += 1
                except OSError as exc:
                    self.failed = exc
                finally:
                    self._cond.acquire()
                    self._syncing = False
                    if not self.failed:
                        self.synced_seq = max(self.synced_seq, target)
                    self._cond.notify_all()

    def close(self) -> None:
        if self.fd >= 0:
            try:
                if self.fsync_enabled and not self.failed:
                    os.fsync(self.fd)
            finally:
                os.close(self.fd)
                self.fd = -1
