"""The snapshot file format, beside the write-ahead log's (:mod:`.wal`): a gallery's whole state in one file,
written atomically and checked on reading.

    magic "HSSNAP01" | u32 header length | header JSON | sections (raw arrays) | u32 crc32 | "HSEND001"

The header describes each section (name, dtype, shape, nbytes); the CRC covers the header and every section.
A short, corrupt or inconsistent file raises ``ValueError`` (the store then falls back to an older snapshot).
"""

from __future__ import annotations

import json
import os
import struct
import threading
import zlib
from pathlib import Path

import numpy as np

from . import wal as wallog

SNAP_MAGIC = b"HSSNAP01"
SNAP_END = b"HSEND001"


def atomic_write(path: Path, chunks, fsync: bool = True) -> int:
    """Write chunks to ``path`` atomically: temp file, fsync, rename, fsync of the directory."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}-{threading.get_ident()}")
    size = 0
    try:
        with open(tmp, "wb") as f:
            for chunk in chunks:
                f.write(chunk)
                size += len(chunk)
            f.flush()
            if fsync:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    if fsync:
        wallog.fsync_dir(path.parent)
    return size


def _as_bytes(arr: np.ndarray) -> np.ndarray:
    """A flat uint8 view of a contiguous array (also for empty ones)."""
    return arr.reshape(-1).view(np.uint8)


def write_snapshot(path: Path, header: dict, sections: dict, fsync: bool = True) -> int:
    """``magic | u32 len | header JSON | sections... | u32 crc32 | end magic``; CRC covers header and sections."""
    names = list(sections)
    arrays = {k: np.ascontiguousarray(v) for k, v in sections.items()}
    header = dict(header, sections=[{"name": k, "dtype": arrays[k].dtype.str, "shape": list(arrays[k].shape),
                                     "nbytes": int(arrays[k].nbytes)} for k in names])
    head = json.dumps(header).encode()

    def chunks():
        crc = zlib.crc32(head)
        yield SNAP_MAGIC + struct.pack("<I", len(head)) + head
        for k in names:
            view = memoryview(_as_bytes(arrays[k]))
            for i in range(0, len(view), 1 << 26):
                part = view[i: i + (1 << 26)]
                crc = zlib.crc32(part, crc)
                yield part
        yield struct.pack("<I", crc) + SNAP_END

    return atomic_write(path, chunks(), fsync=fsync)


def read_snapshot(path: Path) -> tuple[dict, dict]:
    """Header and section arrays; ValueError when the file is short, corrupt or inconsistent."""
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        first = f.read(len(SNAP_MAGIC) + 4)
        if len(first) < len(SNAP_MAGIC) + 4 or first[: len(SNAP_MAGIC)] != SNAP_MAGIC:
            raise ValueError("not a hetsearch snapshot (bad magic)")
        (hlen,) = struct.unpack("<I", first[len(SNAP_MAGIC):])
        if hlen > size:
            raise ValueError("truncated snapshot header")
        head = f.read(hlen)
        crc = zlib.crc32(head)
        header = json.loads(head.decode())
        expect = len(first) + hlen + sum(s["nbytes"] for s in header["sections"]) + 4 + len(SNAP_END)
        if expect != size:
            raise ValueError(f"snapshot is {size} bytes, its header describes {expect}")
        arrays = {}
        for s in header["sections"]:
            arr = np.empty(s["shape"], dtype=np.dtype(s["dtype"]))
            view = memoryview(_as_bytes(arr))
            got = f.readinto(view)
            if got != s["nbytes"]:
                raise ValueError(f"truncated section {s['name']}")
            crc = zlib.crc32(view, crc)
            arrays[s["name"]] = arr
        tail = f.read(4 + len(SNAP_END))
        if tail[4:] != SNAP_END or struct.unpack("<I", tail[:4])[0] != crc:
            raise ValueError("snapshot checksum mismatch")
    return header, arrays


def snapshot_seq(path: Path) -> int | None:
    return wallog.seq_in_name(path, "snap-", ".snap")
