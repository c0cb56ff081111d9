"""``serve --processes N``: several server processes on one port (SO_REUSEPORT) over a read-only copy of the
galleries. Real servers (subprocesses) on loopback, real faiss."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import grpc
import numpy as np
import pytest

from hetsearch.gallery_server.__main__ import main
from hetsearch.gallery_server.store import open_offline
from hetsearch.v1 import gallery_pb2 as pb
from hetsearch.v1 import gallery_pb2_grpc as pb_grpc

from test_gallery_server_fixtures import DIM, REPO, SPACE, batch_req, rpc_error, search_req, spawn_server, unit

N = 300


@pytest.fixture
def data(tmp_path):
    """A data directory with an HNSW32 gallery and a Flat one, written offline."""
    d = tmp_path / "data"
    with open_offline(d, fsync=False) as store:
        for name, factory in (("hnsw", "HNSW32"), ("flat", "Flat")):
            store.create_gallery(name, SPACE, index_factory=factory, ef_search=64)
            store.upsert(name, np.arange(N), unit(N), metadata=[f"m{i}" for i in range(N)], space_id=SPACE)
        store.snapshot()
    return d


def workers_of(pid: int) -> list[int]:
    out = []
    for task in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{task}/children") as f:
            out += [int(c) for c in f.read().split()]
    return out


def sockets(pid: int) -> int:
    n = 0
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            n += os.readlink(f"/proc/{pid}/fd/{fd}").startswith("socket:")
        except OSError:
            pass
    return n


def stop(proc) -> int:
    proc.send_signal(signal.SIGTERM)
    return proc.wait(timeout=60)


def wait_for(cond, what: str, timeout: float = 60.0):
    deadline = time.monotonic() + timeout
    while not (out := cond()):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)
    return out


def test_workers_share_the_port_and_answer_as_one_process_would(data):
    with open_offline(data, fsync=False) as store:
        q = unit(20, seed=5)
        expected = {name: store.search(name, q, 10, space_id=SPACE) for name in ("hnsw", "flat")}
    proc, port = spawn_server(data, "--processes", "2")
    try:
        workers = wait_for(lambda: len(workers_of(proc.pid)) == 2 and workers_of(proc.pid), "2 workers")
        before = {w: sockets(w) for w in workers}
        # one connection each (without a local subchannel pool, channels of one process share a connection)
        channels = [grpc.insecure_channel(f"127.0.0.1:{port}", options=[("grpc.use_local_subchannel_pool", 1)])
                    for _ in range(24)]
        try:
            for i, ch in enumerate(channels):
                stub = pb_grpc.GalleryServiceStub(ch)
                for name in ("hnsw", "flat"):
                    got = stub.Search(search_req(q[i % 20], k=10, gallery=name), timeout=30).result
                    ids, scores, meta = expected[name][i % 20]
                    assert list(got.ids) == ids.tolist()
                    np.testing.assert_allclose(got.scores, scores, rtol=1e-5)
                    assert list(got.metadata) == list(meta)
            batch = pb_grpc.GalleryServiceStub(channels[0]).BatchSearch(batch_req(q, k=10, gallery="flat"), timeout=30)
            assert [list(r.ids) for r in batch.results] == [e[0].tolist() for e in expected["flat"]]
            listed = pb_grpc.GalleryServiceStub(channels[1]).ListGalleries(pb.ListGalleriesRequest(), timeout=30)
            assert {g.name: g.vector_count for g in listed.galleries} == {"hnsw": N, "flat": N}
            # the kernel spread the 24 connections over both workers (all on one: a chance of 2 in 2^24)
            assert all(sockets(w) > before[w] for w in workers), "a worker accepted no connection"
        finally:
            for ch in channels:
                ch.close()
    finally:
        assert stop(proc) == 0
    assert not any(os.path.exists(f"/proc/{w}") and open(f"/proc/{w}/stat").read().split()[2] != "Z"
                   for w in workers)


def test_writes_are_refused_with_failed_precondition(data):
    proc, port = spawn_server(data, "--processes", "2")
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
            stub = pb_grpc.GalleryServiceStub(ch)
            writes = [
                (stub.Upsert, pb.UpsertRequest(gallery="flat", space_id=SPACE, ids=[N + 1],
                                               vectors=unit(1, seed=9)[0].tolist())),
                (stub.Delete, pb.DeleteRequest(gallery="flat", ids=[0])),
                (stub.CreateGallery, pb.CreateGalleryRequest(name="new", space_id=SPACE, dim=DIM)),
                (stub.DropGallery, pb.DropGalleryRequest(name="flat")),
                (stub.Snapshot, pb.SnapshotRequest(gallery="flat")),
            ]
            for call, req in writes:
                err = rpc_error(call, req, timeout=30)
                assert err.code() == grpc.StatusCode.FAILED_PRECONDITION, call
                assert "--processes 2" in err.details() and "read-only" in err.details()
                assert ("hetsearch-error", "read_only") in tuple(err.trailing_metadata())
            # nothing changed: the gallery is whole, the dropped one still there
            got = stub.Search(search_req(unit(N)[0], k=1, gallery="flat"), timeout=30).result
            assert list(got.ids) == [0]
            names = {g.name for g in stub.ListGalleries(pb.ListGalleriesRequest(), timeout=30).galleries}
            assert names == {"hnsw", "flat"}
    finally:
        assert stop(proc) == 0


def test_a_dead_worker_is_replaced(data):
    proc, port = spawn_server(data, "--processes", "2")
    try:
        first = wait_for(lambda: len(workers_of(proc.pid)) == 2 and workers_of(proc.pid), "2 workers")
        os.kill(first[0], signal.SIGKILL)
        now = wait_for(lambda: len(w := workers_of(proc.pid)) == 2 and first[0] not in w and w, "a replacement")
        assert first[1] in now
        log = wait_for(lambda: "event=worker_replaced" in (text := (data.parent / "server.log").read_text()) and
                       text.count("event=worker_serving") >= 3 and text, "the replacement to serve")
        assert f"pid={first[0]}" in log
        for _ in range(8):  # fresh connections land on either worker
            with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
                got = pb_grpc.GalleryServiceStub(ch).Search(search_req(unit(N)[3], k=1, gallery="hnsw"), timeout=30)
                assert list(got.result.ids) == [3]
    finally:
        assert stop(proc) == 0


def test_the_data_dir_and_the_port_stay_exclusive(data, tmp_path):
    proc, port = spawn_server(data, "--processes", "2")
    try:  # a writer cannot open the directory the workers serve
        other = subprocess.run([sys.executable, "-m", "hetsearch.gallery_server", "serve", "--data-dir", str(data),
                                "--port", "0"], cwd=REPO, capture_output=True, text=True, timeout=120)
        assert other.returncode != 0 and "in use by another hetsearch process" in other.stderr
    finally:
        assert stop(proc) == 0
    single, port = spawn_server(data)
    try:  # a port a single-process server listens on is refused, not shared
        other = subprocess.run([sys.executable, "-m", "hetsearch.gallery_server", "serve", "--data-dir",
                                str(tmp_path / "other"), "--port", str(port), "--processes", "2"],
                               cwd=REPO, capture_output=True, text=True, timeout=120)
        assert other.returncode == 2 and f"cannot listen on 127.0.0.1:{port}" in other.stderr
    finally:
        assert stop(single) == 0


@pytest.mark.parametrize("args, message", [
    (["--metrics-port", "0"], "--metrics-port cannot be combined with --processes"),
    (["--processes", "0"], "--processes must be at least 1"),
    (["--tls-cert", "missing.crt", "--tls-key", "missing.key"], "cannot read TLS file missing.crt"),
])
def test_settings_several_processes_cannot_honour(tmp_path, capsys, args, message):
    argv = ["serve", "--data-dir", str(tmp_path / "d"), "--port", "0", "--processes", "2", *args]
    assert main(argv) == 2
    assert message in capsys.readouterr().err
