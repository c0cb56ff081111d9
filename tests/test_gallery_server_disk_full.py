"""A full disk under the gallery server (a real tmpfs of a few MB): writes are refused with RESOURCE_EXHAUSTED
and a clear message, searches keep working, nothing acknowledged is lost, and writes resume once space is freed."""

from __future__ import annotations

import subprocess

import grpc
import numpy as np
import pytest

from hetsearch.v1 import gallery_pb2 as pb
from hetsearch.v1 import gallery_pb2_grpc as pb_grpc
from test_gallery_server_fixtures import make_gallery, running_server, search_req, unit, upsert_req

C = grpc.StatusCode


@pytest.fixture
def small_disk(tmp_path):
    mnt = tmp_path / "disk"
    mnt.mkdir()
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(mnt)], capture_output=True,
                          text=True)
    if proc.returncode != 0:
        pytest.skip(f"SKIPPED, not passed: mounting a small tmpfs needs root ({proc.stderr.strip()})")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_full_disk_refuses_writes_keeps_searches_and_loses_nothing(small_disk):
    filler = small_disk / "filler"
    filler.write_bytes(b"\0" * (1 << 20))  # 1 MB to free later
    data = small_disk / "data"
    acked: dict[int, np.ndarray] = {}
    with running_server(data) as s, grpc.insecure_channel(f"127.0.0.1:{s.port}") as ch:
        stub = pb_grpc.GalleryServiceStub(ch)
        make_gallery(stub)
        err = None
        for batch in range(1000):  # 200 vectors of dim 16 per call (~14 KB of log) until the disk is full
            ids = np.arange(batch * 200, (batch + 1) * 200)
            x = unit(200, seed=batch)
            try:
                stub.Upsert(upsert_req(ids, x), timeout=30)
            except grpc.RpcError as exc:
                err = exc
                break
            acked.update(zip(ids.tolist(), x))
        assert err is not None, "the disk never filled"
        assert err.code() == C.RESOURCE_EXHAUSTED and "disk is full" in err.details(), (err.code(), err.details())
        assert len(acked) >= 1000
        # searches keep working and see every acknowledged vector
        some = sorted(acked)[:: max(1, len(acked) // 20)]
        for i in some:
            assert stub.Search(search_req(acked[i], k=1)).result.ids[0] == i
        assert stub.DescribeGallery(pb.DescribeGalleryRequest(name="g")).vector_count == len(acked)
        # freeing space lets writes resume
        filler.unlink()
        stub.Upsert(upsert_req([10**9], unit(1, seed=99999)), timeout=30)
        acked[10**9] = unit(1, seed=99999)[0]
    # a restart replays the log: every acknowledged write is there, the refused one is not
    with running_server(data) as s, grpc.insecure_channel(f"127.0.0.1:{s.port}") as ch:
        stub = pb_grpc.GalleryServiceStub(ch)
        assert stub.DescribeGallery(pb.DescribeGalleryRequest(name="g")).vector_count == len(acked)
        for i in some + [10**9]:
            assert stub.Search(search_req(acked[i], k=1)).result.ids[0] == i
