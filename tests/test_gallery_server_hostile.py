"""Hostile requests found by probing the server: each gets the right status with a short, precise message, and
nothing that sizes memory or work is left unbounded (real server on loopback, real faiss)."""

from __future__ import annotations

import grpc
import numpy as np
import pytest

from hetsearch.gallery_server.store import MAX_EF_SEARCH, MAX_NPROBE
from hetsearch.v1 import gallery_pb2 as pb
from hetsearch.v1 import gallery_pb2_grpc as pb_grpc
from test_gallery_server_fixtures import (DIM, SPACE, batch_req, make_gallery, rpc_error, running_server,  # noqa: F401
                                          search_req, server, stub, unit, upsert_req)

C = grpc.StatusCode


def _search(stub, vector, gallery="g", k=5, **params):
    req = search_req(vector, k=k, gallery=gallery)
    req.params.CopyFrom(pb.SearchParams(**params))
    return stub.Search(req, timeout=20)


def test_search_knobs_are_bounded(stub):
    make_gallery(stub, "h", index_factory="HNSW32")
    x = unit(2000, seed=3)
    stub.Upsert(upsert_req(range(2000), x, gallery="h"))
    # 2^31 - 1 used to allocate a candidate heap of that size per query (the server grew past 17 GB);
    # 2^31 and above overflowed inside faiss's bindings (INTERNAL)
    for ef in (MAX_EF_SEARCH + 1, 2 ** 31 - 1, 2 ** 31, 2 ** 32 - 1):
        err = rpc_error(_search, stub, x[0], gallery="h", hnsw_ef_search=ef)
        assert err.code() == C.INVALID_ARGUMENT, (ef, err.code())
        assert f"hnsw_ef_search={ef} is out of range" in err.details() and str(MAX_EF_SEARCH) in err.details()
    err = rpc_error(_search, stub, x[0], gallery="h", ivf_nprobe=MAX_NPROBE + 1)
    assert err.code() == C.INVALID_ARGUMENT and "ivf_nprobe" in err.details()
    # the bound itself is a legal request, and it finds the query's own vector
    assert _search(stub, x[0], gallery="h", hnsw_ef_search=MAX_EF_SEARCH).result.ids[0] == 0
    err = rpc_error(stub.CreateGallery, pb.CreateGalleryRequest(
        name="e", space_id=SPACE, index_factory="HNSW8", default_params=pb.SearchParams(hnsw_ef_search=2 ** 31)))
    assert err.code() == C.INVALID_ARGUMENT and "hnsw_ef_search 0..65536" in err.details()


def test_huge_components_are_normalised_not_zeroed(stub):
    make_gallery(stub)
    x = unit(20, seed=4)
    stub.Upsert(upsert_req(range(20), x))
    big = np.full(DIM, 3e38, np.float32)  # finite; its float32 norm overflows
    best = int(np.argmax(x @ (np.ones(DIM) / np.sqrt(DIM))))
    hit = _search(stub, big, k=3).result
    assert hit.ids[0] == best and hit.scores[0] > 0.1, (list(hit.ids), list(hit.scores))
    assert abs(hit.scores[0] - float(x[best].sum() / np.sqrt(DIM))) < 1e-4
    # stored as its direction, not as a zero vector
    stub.Upsert(upsert_req([99], big[None]))
    again = _search(stub, np.ones(DIM, np.float32), k=1).result
    assert again.ids[0] == 99 and abs(again.scores[0] - 1.0) < 1e-5
    tiny = np.full(DIM, 1e-45, np.float32)  # subnormal components: a direction too
    assert _search(stub, tiny, k=1).result.ids[0] == 99
    err = rpc_error(_search, stub, np.zeros(DIM, np.float32))
    assert err.code() == C.INVALID_ARGUMENT and "zero vector" in err.details()


def test_unnormalised_metrics_refuse_vectors_whose_products_overflow(stub):
    for metric in ("l2", "ip"):
        make_gallery(stub, metric, metric=metric)
        err = rpc_error(stub.Upsert, upsert_req([1], np.full((1, DIM), 3e38, np.float32), gallery=metric))
        assert err.code() == C.INVALID_ARGUMENT and "overflow float32" in err.details()
        stub.Upsert(upsert_req([1], np.full((1, DIM), 1e3, np.float32), gallery=metric))
        err = rpc_error(_search, stub, np.full(DIM, 1e30, np.float32), gallery=metric)
        assert err.code() == C.INVALID_ARGUMENT and "row 0 has norm" in err.details()
        assert _search(stub, np.full(DIM, 1e3, np.float32), gallery=metric).result.ids[0] == 1


def test_names_are_matched_whole_and_echoed_short(stub, server):
    for name in ("abc\n", "abc\nx", "\nabc"):
        err = rpc_error(make_gallery, stub, name)
        assert err.code() == C.INVALID_ARGUMENT and "invalid gallery name" in err.details()
    assert not any(p.name.startswith("abc") for p in (server.store.root / "galleries").iterdir())
    for n in (10_000, 20_000):
        long = "a" * n
        for call, req in ((stub.CreateGallery, pb.CreateGalleryRequest(name=long, space_id=SPACE)),
                          (stub.DescribeGallery, pb.DescribeGalleryRequest(name=long)),
                          (stub.Search, search_req(unit(1)[0], gallery=long))):
            err = rpc_error(call, req)
            # used to overflow gRPC's metadata limit: RESOURCE_EXHAUSTED "Stream removed"
            assert err.code() == C.INVALID_ARGUMENT, (call, err.code(), err.details()[:200])
            assert f"({n} characters)" in err.details() and len(err.details()) < 400
    make_gallery(stub)
    long_space = "sp1-" + "x" * 20_000
    err = rpc_error(stub.Search, search_req(unit(1)[0], space=long_space))
    assert err.code() == C.FAILED_PRECONDITION and "(20004 characters)" in err.details()
    assert len(dict(err.trailing_metadata())["hetsearch-got-space"]) <= 256
    err = rpc_error(make_gallery, stub, "s", space=long_space)
    assert err.code() == C.INVALID_ARGUMENT and "(20004 characters)" in err.details()
    err = rpc_error(make_gallery, stub, "s", space=SPACE + "\n")
    assert err.code() == C.INVALID_ARGUMENT and "not a hetsearch space id" in err.details()
    err = rpc_error(make_gallery, stub, "f", index_factory="HNSW" + "9" * 5000)
    assert err.code() == C.INVALID_ARGUMENT and len(err.details()) < 600


def test_counts_are_of_distinct_ids(stub):
    make_gallery(stub)
    x = unit(3, seed=5)
    up = stub.Upsert(upsert_req([4, 4, 5], x))
    assert (up.upserted, up.vector_count) == (2, 2)
    d = stub.Delete(pb.DeleteRequest(gallery="g", ids=[4, 4, 6, 6]))
    assert (d.deleted, d.not_found, d.vector_count) == (1, 1, 1)


def test_batch_results_are_bounded(tmp_path):
    with running_server(tmp_path / "d", max_batch_results=1000) as s, \
            grpc.insecure_channel(f"127.0.0.1:{s.port}") as ch:
        stub = pb_grpc.GalleryServiceStub(ch)
        make_gallery(stub)
        stub.Upsert(upsert_req(range(100), unit(100)))
        assert len(stub.BatchSearch(batch_req(unit(10), k=100)).results) == 10  # 1000 results: at the limit
        err = rpc_error(stub.BatchSearch, batch_req(unit(11), k=100))
        assert err.code() == C.RESOURCE_EXHAUSTED and "asks for 1100 results" in err.details()


def test_oversized_requests_and_connection_churn(tmp_path):
    with running_server(tmp_path / "d", max_message_bytes=1 << 20) as s:
        addr = f"127.0.0.1:{s.port}"
        with grpc.insecure_channel(addr) as ch:
            stub = pb_grpc.GalleryServiceStub(ch)
            make_gallery(stub)
            stub.Upsert(upsert_req(range(100), unit(100)))
            big = upsert_req(range(40_000), unit(40_000))  # 2.6 MB: over this server's 1 MB message limit
            assert rpc_error(stub.Upsert, big).code() == C.RESOURCE_EXHAUSTED
            err = rpc_error(stub.Search, search_req(unit(1)[0], k=10**9))
            assert err.code() == C.INVALID_ARGUMENT and "larger than the maximum" in err.details()
            many = batch_req(unit(5000), k=1)  # under the message limit, over the 4096-query batch limit
            err = rpc_error(stub.BatchSearch, many)
            assert err.code() == C.RESOURCE_EXHAUSTED and "split it" in err.details()
            assert rpc_error(stub.BatchSearch, batch_req(unit(20_000), k=1)).code() == C.RESOURCE_EXHAUSTED
        # connections opened and dropped, some mid-call: the server keeps answering
        for i in range(100):
            c = grpc.insecure_channel(addr)
            fut = pb_grpc.GalleryServiceStub(c).Search.future(search_req(unit(1, seed=i)[0]), timeout=10)
            if i % 2:
                fut.cancel()
            else:
                fut.result()
            c.close()
        with grpc.insecure_channel(addr) as ch:
            assert pb_grpc.GalleryServiceStub(ch).DescribeGallery(pb.DescribeGalleryRequest(name="g")).vector_count == 100
