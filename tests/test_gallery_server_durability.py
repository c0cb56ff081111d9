"""Durability: SIGKILL during a stream of upserts, torn and bit-flipped log tails, corrupt galleries,
snapshots, graceful SIGTERM. Crash tests run the server as a subprocess."""

from __future__ import annotations

import json
import os
import random
import signal
import threading
import time

import numpy as np
import pytest

from benchmarks.crash_loop import ids_present, kill_under_load
from hetsearch.gallery_server import wal as wallog
from hetsearch.gallery_server.errors import GalleryCorrupt
from hetsearch.gallery_server.store import open_offline
from hetsearch.sdk.client import GalleryClient, GalleryClientError, GalleryUnavailableError
from test_gallery_server_fixtures import DIM, SPACE, running_server, spawn_server, unit


def test_sigkill_during_upserts_keeps_every_acknowledged_write(tmp_path):
    data = tmp_path / "data"
    acked: dict[int, np.ndarray] = {}
    rng = random.Random(7)
    next_id = [0]
    lock = threading.Lock()
    for cycle in range(4):
        proc, port = spawn_server(data)
        try:
            with GalleryClient(f"127.0.0.1:{port}", gallery="g", space_id=SPACE, retries=0, timeout=5) as c:
                if cycle == 0:
                    c.create_gallery("g", SPACE)
                # everything acknowledged before any earlier crash survived the restart
                assert ids_present(c, acked, acked) == set(acked), f"cycle {cycle}: acknowledged ids lost"
                stop = threading.Event()

                def writer(seed):
                    wrng = np.random.default_rng(seed)
                    while not stop.is_set():
                        with lock:
                            ids = list(range(next_id[0], next_id[0] + 16))
                            next_id[0] += 16
                        vec = wrng.standard_normal((16, DIM)).astype(np.float32)
                        vec /= np.linalg.norm(vec, axis=1, keepdims=True)
                        try:
                            c.upsert(ids, vec)
                        except GalleryClientError:
                            return  # the server died under us: not acknowledged
                        with lock:
                            acked.update(zip(ids, vec))

                threads = [threading.Thread(target=writer, args=(cycle * 10 + w,)) for w in range(3)]
                for t in threads:
                    t.start()
                time.sleep(0.3 + rng.random() * 0.4)
                if cycle == 1:
                    c.snapshot("g")  # a snapshot in the middle of the stream
                    time.sleep(0.2)
                kill_under_load(proc, stop, threads, timeout=10)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert len(acked) > 100
    proc, port = spawn_server(data)
    try:
        with GalleryClient(f"127.0.0.1:{port}", gallery="g", space_id=SPACE) as c:
            assert ids_present(c, acked, acked) == set(acked)
            assert c.describe().vector_count >= len(acked)
    finally:
        proc.terminate()
        assert proc.wait(timeout=15) == 0


def _offline_gallery(root, n_batches=5, batch=10):
    x = unit(n_batches * batch, seed=11)
    with open_offline(root) as store:
        store.create_gallery("g", SPACE)
        for b in range(n_batches):
            ids = range(b * batch, (b + 1) * batch)
            store.upsert("g", list(ids), x[b * batch:(b + 1) * batch], space_id=SPACE)
    return x


def _segment(root):
    [seg] = wallog.list_segments(root / "galleries" / "g")
    return seg


def _count(root):
    with open_offline(root) as store:
        return store.get("g").info().vector_count, store.get("g").load_report


def test_torn_tail_is_cut_and_counted(tmp_path):
    root = tmp_path / "d"
    _offline_gallery(root)
    seg = _segment(root)
    size = seg.stat().st_size
    with open(seg, "r+b") as f:
        f.truncate(size - 37)  # the last record loses its end
    count, rep = _count(root)
    assert count == 40 and rep.truncations == 1 and rep.truncated_bytes > 0
    # the cut is on disk: a second open is clean, and new writes land after it
    with open_offline(root) as store:
        assert store.get("g").load_report.truncations == 0
        store.upsert("g", [100], unit(1, seed=99), space_id=SPACE)
    assert _count(root)[0] == 41


def test_torn_header_and_garbage_tail(tmp_path):
    root = tmp_path / "d"
    _offline_gallery(root)
    with open(_segment(root), "ab") as f:
        f.write(b"\x07\x00")  # half a record header
    count, rep = _count(root)
    assert count == 50 and rep.truncations == 1 and rep.truncated_bytes == 2


def test_bit_flipped_tail_record_is_dropped(tmp_path):
    root = tmp_path / "d"
    _offline_gallery(root)
    seg = _segment(root)
    data = bytearray(seg.read_bytes())
    data[-20] ^= 0x10  # inside the last record's vectors
    seg.write_bytes(bytes(data))
    count, rep = _count(root)
    assert count == 40 and rep.truncations == 1


def test_server_serves_after_a_torn_tail_and_metrics_count_it(tmp_path):
    import urllib.request

    root = tmp_path / "d"
    x = _offline_gallery(root)
    seg = _segment(root)
    with open(seg, "r+b") as f:
        f.truncate(seg.stat().st_size - 5)
    with running_server(root, metrics_port=0) as s:
        with GalleryClient(f"127.0.0.1:{s.port}", gallery="g", space_id=SPACE) as c:
            assert c.describe().vector_count == 40
            assert c.search(x[3], k=1)[0].id == 3
        text = urllib.request.urlopen(f"http://127.0.0.1:{s.metrics_port}/metrics", timeout=5).read().decode()
        assert 'hetsearch_wal_truncations_total{gallery="g"} 1.0' in text


def test_snapshot_then_log_replay(tmp_path):
    root = tmp_path / "d"
    x = unit(300, seed=12)
    with open_offline(root) as store:
        store.create_gallery("g", SPACE, index_factory="HNSW16")
        store.upsert("g", range(200), x[:200], metadata=[f"m{i}" for i in range(200)], space_id=SPACE)
        store.delete("g", [0, 1])
        store.snapshot("g")
        store.upsert("g", range(200, 300), x[200:], space_id=SPACE)
        store.delete("g", [2])
        before = store.search("g", x[:20], 5, space_id=SPACE)
    gdir = root / "galleries" / "g"
    assert len(list(gdir.glob("snap-*.snap"))) == 1 and len(wallog.list_segments(gdir)) == 1
    with open_offline(root) as store:
        g = store.get("g")
        assert g.load_report.snapshot and g.load_report.replayed == 2
        assert g.info().vector_count == 297
        after = store.search("g", x[:20], 5, space_id=SPACE)
        for (i1, s1, m1), (i2, s2, m2) in zip(before, after):
            assert list(i1) == list(i2) and m1 == m2
        assert after[5][2][0] == "m5"
        store.snapshot("g", compact=True)
        assert store.get("g").info().deleted_count == 0


def test_corrupt_gallery_does_not_stop_the_others(tmp_path):
    root = tmp_path / "d"
    x = unit(20, seed=13)
    with open_offline(root) as store:
        for name in ("good", "bad", "badspec"):
            store.create_gallery(name, SPACE)
            store.upsert(name, range(20), x, space_id=SPACE)
        store.snapshot("bad")
    snap = next((root / "galleries" / "bad").glob("snap-*.snap"))
    data = bytearray(snap.read_bytes())
    data[len(data) // 2] ^= 0xFF
    snap.write_bytes(bytes(data))
    (root / "galleries" / "badspec" / "gallery.json").write_text("{not json")
    with running_server(root) as s:
        with GalleryClient(f"127.0.0.1:{s.port}", space_id=SPACE) as c:
            assert c.health() == "SERVING"
            assert c.search(x[4], k=1, gallery="good")[0].id == 4
            states = {g.name: (g.state, g.status_message) for g in c.list_galleries()}
            assert states["good"][0] == "READY"
            assert states["bad"][0] == "UNAVAILABLE" and "snapshot" in states["bad"][1]
            assert states["badspec"][0] == "UNAVAILABLE" and "gallery.json" in states["badspec"][1]
            with pytest.raises(GalleryUnavailableError, match="unavailable"):
                c.search(x[0], k=1, gallery="bad")
            c.drop("bad")  # an operator can remove it
            assert "bad" not in {g.name for g in c.list_galleries()}


def test_log_gap_marks_gallery_unavailable(tmp_path):
    root = tmp_path / "d"
    _offline_gallery(root)
    gdir = root / "galleries" / "g"
    seg = _segment(root)
    recs = wallog.scan(seg).records
    # rewrite the log without its third record: seq 1, 2, 4, 5
    with open(seg, "wb") as f:
        for r in recs:
            if r.seq != 3:
                f.write(wallog.frame(wallog.encode_upsert(r.seq, r.ids, r.vectors, r.metadata)))
    with open_offline(root) as store:
        g = store.get("g")
        assert g.state == "UNAVAILABLE" and "jumps from seq 2 to 4" in g.status_message
        with pytest.raises(GalleryCorrupt):
            g.search(unit(1), 1, space_id=SPACE)
    assert gdir.exists()


def test_data_dir_is_locked_against_a_second_process(tmp_path):
    from hetsearch.gallery_server.errors import DataDirInUse

    with open_offline(tmp_path / "d"):
        with pytest.raises(DataDirInUse):
            open_offline(tmp_path / "d")


def test_sigterm_drains_and_exits_cleanly(tmp_path):
    data = tmp_path / "data"
    proc, port = spawn_server(data, "--metrics-port", "0")
    try:
        with GalleryClient(f"127.0.0.1:{port}", gallery="g", space_id=SPACE) as c:
            c.create_gallery("g", SPACE)
            c.upsert(range(10), unit(10))
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=15) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    log = (tmp_path / "server.log").read_text()
    assert "event=draining" in log and "event=stopped" in log and "event=gallery_created" in log
    spec = json.loads((data / "galleries" / "g" / "gallery.json").read_text())
    assert spec["space_id"] == SPACE
    assert _count(data)[0] == 10
    assert not os.path.exists(data / "galleries" / "g" / ".tmp")


def test_log_is_snapshotted_in_the_background_once_large(tmp_path):
    x = unit(60, seed=14)
    with running_server(tmp_path / "d", auto_snapshot_bytes=4000) as s:
        with GalleryClient(f"127.0.0.1:{s.port}", gallery="g", space_id=SPACE) as c:
            c.create_gallery("g", SPACE)
            for b in range(6):
                c.upsert(range(b * 10, b * 10 + 10), x[b * 10: b * 10 + 10])
            for _ in range(100):  # bounded wait for the background snapshot
                info = c.describe()
                if info.snapshot_seq:
                    break
                time.sleep(0.05)
            assert info.snapshot_seq > 0 and info.wal_bytes < 4000 + 1000
    count, rep = _count(tmp_path / "d")
    assert count == 60 and rep.snapshot
