"""The gallery server (faiss backend) against real gRPC calls on loopback: every RPC, every error code,
auth, TLS, health, reflection, metrics and equality with in-process faiss. What every backend must do alike
(replacing upserts, the space guard, auth with tokens, concurrency, restarts) is in
test_gallery_server_backends.py, which runs it on faiss and on Milvus."""

from __future__ import annotations

import json
import threading
import time
import urllib.request

import faiss
import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from hetsearch.gallery_server.auth import Tokens, load_token_file
from hetsearch.gallery_server.cli import is_loopback
from hetsearch.v1 import gallery_pb2 as pb
from hetsearch.v1 import gallery_pb2_grpc as pb_grpc
from test_gallery_server_fixtures import (DIM, SPACE, batch_req, code_of, make_gallery,  # noqa: F401
                                          rpc_error, running_server, search_req, self_signed_cert, server, stub,
                                          unit, upsert_req)

C = grpc.StatusCode


def test_every_rpc_round_trip(stub):
    g = make_gallery(stub, "g", default_params=pb.SearchParams(hnsw_ef_search=32))
    assert (g.name, g.space_id, g.dim, g.metric, g.index_factory) == ("g", SPACE, DIM, "cosine", "Flat")
    assert g.state == pb.GALLERY_STATE_READY and g.default_params.hnsw_ef_search == 32
    x = unit(50)
    up = stub.Upsert(upsert_req(range(50), x, metadata=[f"item{i}" for i in range(50)]))
    assert (up.upserted, up.vector_count, up.seq) == (50, 50, 1)
    hit = stub.Search(search_req(x[7], k=3)).result
    assert hit.ids[0] == 7 and hit.metadata[0] == "item7" and abs(hit.scores[0] - 1) < 1e-5
    assert list(hit.scores) == sorted(hit.scores, reverse=True)
    batch = stub.BatchSearch(batch_req(x[:4], k=2)).results
    assert [r.ids[0] for r in batch] == [0, 1, 2, 3]
    d = stub.Delete(pb.DeleteRequest(gallery="g", ids=[7, 8, 999]))
    assert (d.deleted, d.not_found, d.vector_count, d.seq) == (2, 1, 48, 2)
    assert 7 not in stub.Search(search_req(x[7], k=48)).result.ids
    info = stub.DescribeGallery(pb.DescribeGalleryRequest(name="g"))
    assert (info.vector_count, info.deleted_count, info.last_seq, info.wal_records) == (48, 2, 2, 2)
    snap = stub.Snapshot(pb.SnapshotRequest(gallery="g", compact=True)).snapshots
    assert (snap[0].gallery, snap[0].seq, snap[0].vector_count, snap[0].compacted) == ("g", 2, 48, 2)
    info = stub.DescribeGallery(pb.DescribeGalleryRequest(name="g"))
    assert (info.deleted_count, info.snapshot_seq, info.wal_records) == (0, 2, 0)
    make_gallery(stub, "h", index_factory="HNSW32")
    assert [x.name for x in stub.ListGalleries(pb.ListGalleriesRequest()).galleries] == ["g", "h"]
    stub.DropGallery(pb.DropGalleryRequest(name="h"))
    assert [x.name for x in stub.ListGalleries(pb.ListGalleriesRequest()).galleries] == ["g"]
    assert len(stub.Snapshot(pb.SnapshotRequest()).snapshots) == 1  # all galleries


NAN = np.full(DIM, np.nan, np.float32)
INF = np.full(DIM, np.inf, np.float32)
ZERO = np.zeros(DIM, np.float32)
V = unit(1)[0]
BAD_REQUESTS = [
    # (method, request, expected code)
    ("Search", search_req(V, gallery="nope"), C.NOT_FOUND),
    ("Search", search_req(V, gallery="bad name!"), C.INVALID_ARGUMENT),
    ("Search", search_req(V, space=""), C.INVALID_ARGUMENT),
    ("Search", search_req(V[:5]), C.INVALID_ARGUMENT),
    ("Search", search_req([]), C.INVALID_ARGUMENT),
    ("Search", search_req(NAN), C.INVALID_ARGUMENT),
    ("Search", search_req(INF), C.INVALID_ARGUMENT),
    ("Search", search_req(ZERO), C.INVALID_ARGUMENT),
    ("Search", search_req(V, k=0), C.INVALID_ARGUMENT),
    ("Search", search_req(V, k=-3), C.INVALID_ARGUMENT),
    ("Search", search_req(V, k=10**6), C.INVALID_ARGUMENT),
    ("BatchSearch", batch_req(unit(2), dim=8), C.INVALID_ARGUMENT),
    ("BatchSearch", batch_req(np.zeros(DIM + 3, np.float32)), C.INVALID_ARGUMENT),
    ("BatchSearch", batch_req([]), C.INVALID_ARGUMENT),
    ("BatchSearch", batch_req(unit(5000)), C.RESOURCE_EXHAUSTED),
    ("BatchSearch", batch_req(unit(2), gallery="nope"), C.NOT_FOUND),
    ("Upsert", upsert_req([], []), C.INVALID_ARGUMENT),
    ("Upsert", upsert_req([-1], unit(1)), C.INVALID_ARGUMENT),
    ("Upsert", upsert_req([1, 2], unit(1)), C.INVALID_ARGUMENT),
    ("Upsert", upsert_req([1], unit(1), metadata=["a", "b"]), C.INVALID_ARGUMENT),
    ("Upsert", upsert_req([1], NAN), C.INVALID_ARGUMENT),
    ("Upsert", upsert_req([1], ZERO), C.INVALID_ARGUMENT),
    ("Upsert", upsert_req([1], unit(1), space=""), C.INVALID_ARGUMENT),
    ("Upsert", upsert_req([1], unit(1), gallery="nope"), C.NOT_FOUND),
    ("Upsert", upsert_req(range(100_001), np.zeros((100_001, 0))), C.RESOURCE_EXHAUSTED),
    ("Delete", pb.DeleteRequest(gallery="g"), C.INVALID_ARGUMENT),
    ("Delete", pb.DeleteRequest(gallery="nope", ids=[1]), C.NOT_FOUND),
    ("DescribeGallery", pb.DescribeGalleryRequest(name="nope"), C.NOT_FOUND),
    ("DescribeGallery", pb.DescribeGalleryRequest(name=""), C.INVALID_ARGUMENT),
    ("DropGallery", pb.DropGalleryRequest(name="nope"), C.NOT_FOUND),
    ("Snapshot", pb.SnapshotRequest(gallery="nope"), C.NOT_FOUND),
    ("CreateGallery", pb.CreateGalleryRequest(name="g", space_id=SPACE), C.ALREADY_EXISTS),
    ("CreateGallery", pb.CreateGalleryRequest(name="x", space_id="not-a-space"), C.INVALID_ARGUMENT),
    ("CreateGallery", pb.CreateGalleryRequest(name="x", space_id=SPACE, dim=DIM + 1), C.INVALID_ARGUMENT),
    ("CreateGallery", pb.CreateGalleryRequest(name="x", space_id=SPACE, metric="hamming"), C.INVALID_ARGUMENT),
    ("CreateGallery", pb.CreateGalleryRequest(name="x", space_id=SPACE, index_factory="Bogus7"),
     C.INVALID_ARGUMENT),
    ("CreateGallery", pb.CreateGalleryRequest(name="../x", space_id=SPACE), C.INVALID_ARGUMENT),
    ("CreateGallery", pb.CreateGalleryRequest(name="", space_id=SPACE), C.INVALID_ARGUMENT),
]


@pytest.mark.parametrize("method,request_,code", BAD_REQUESTS,
                         ids=[f"{m}-{i}-{c.name}" for i, (m, _, c) in enumerate(BAD_REQUESTS)])
def test_error_codes(stub, method, request_, code):
    make_gallery(stub)
    stub.Upsert(upsert_req([1, 2, 3], unit(3)))
    err = rpc_error(getattr(stub, method), request_)
    assert err.code() == code, err.details()
    assert err.details() and "Traceback" not in err.details()
    assert stub.DescribeGallery(pb.DescribeGalleryRequest(name="g")).vector_count == 3  # nothing changed


def test_oversized_message_is_resource_exhausted(tmp_path):
    with running_server(tmp_path / "d", max_message_bytes=64 * 1024) as s:
        with grpc.insecure_channel(f"127.0.0.1:{s.port}") as ch:
            st = pb_grpc.GalleryServiceStub(ch)
            make_gallery(st)
            assert code_of(st.Upsert, upsert_req(range(2000), unit(2000))) == C.RESOURCE_EXHAUSTED
            assert code_of(st.Upsert, upsert_req(range(10), unit(10))) == C.OK


def test_deadlines_are_respected(server, stub):
    make_gallery(stub)
    g = server.store.get("g")
    with g.write_mutex:  # a writer stuck behind a long write waits no longer than its deadline
        t0 = time.monotonic()
        assert code_of(stub.Upsert, upsert_req([1], unit(1)), timeout=0.3) == C.DEADLINE_EXCEEDED
        assert time.monotonic() - t0 < 2.0
    assert code_of(stub.Upsert, upsert_req([1], unit(1)), timeout=5) == C.OK


def test_unavailable_gallery_and_draining_codes(server, stub):
    make_gallery(stub)
    server.store.get("g").state = "LOADING"
    assert code_of(stub.Search, search_req(V)) == C.UNAVAILABLE
    server.store.get("g").state = "UNAVAILABLE"
    server.store.get("g").status_message = "snapshot checksum mismatch"
    err = rpc_error(stub.Search, search_req(V))
    assert err.code() == C.DATA_LOSS and "checksum" in err.details()
    server.servicer.serving = False
    assert code_of(stub.ListGalleries, pb.ListGalleriesRequest()) == C.UNAVAILABLE
    server.servicer.serving = True


def _faiss_reference(ids, x, queries, k):
    """Exact cosine top-k over (ids, x) with faiss in this process."""
    index = faiss.IndexIDMap2(faiss.IndexFlatIP(x.shape[1]))
    index.add_with_ids(x, np.asarray(ids, dtype=np.int64))
    return index.search(queries, k)


def test_results_equal_in_process_faiss_flat(stub):
    make_gallery(stub)
    x, q = unit(3000, seed=3), unit(40, seed=4)
    stub.Upsert(upsert_req(range(3000), x))
    res = stub.BatchSearch(batch_req(q, k=10)).results
    D, I = _faiss_reference(range(3000), x, q, 10)
    assert [list(r.ids) for r in res] == I.tolist()
    np.testing.assert_allclose([list(r.scores) for r in res], D, rtol=1e-5, atol=1e-6)
    # after deletes and replacements: same as faiss over the surviving data
    drop = np.arange(0, 3000, 3)
    stub.Delete(pb.DeleteRequest(gallery="g", ids=drop.tolist()))
    newx = unit(100, seed=5)
    stub.Upsert(upsert_req(range(1, 200, 2), newx))
    keep = {i: x[i] for i in range(3000) if i % 3}
    keep.update({i: newx[j] for j, i in enumerate(range(1, 200, 2))})
    ids = np.array(sorted(keep))
    D, I = _faiss_reference(ids, np.stack([keep[i] for i in ids]), q, 10)
    res = stub.BatchSearch(batch_req(q, k=10)).results
    assert [list(r.ids) for r in res] == I.tolist()
    single = stub.Search(search_req(q[0], k=10)).result
    assert list(single.ids) == I[0].tolist()


def test_results_equal_in_process_faiss_hnsw(stub):
    make_gallery(stub, index_factory="HNSW32", default_params=pb.SearchParams(hnsw_ef_search=40))
    x, q = unit(2000, seed=6), unit(30, seed=7)
    stub.Upsert(upsert_req(range(2000), x))
    index = faiss.index_factory(DIM, "HNSW32", faiss.METRIC_INNER_PRODUCT)
    index.add(x)  # same vectors in the same order, one OpenMP thread: the same graph
    index.hnsw.efSearch = 40
    D, I = index.search(q, 10)
    res = stub.BatchSearch(batch_req(q, k=10)).results
    assert [list(r.ids) for r in res] == I.tolist()
    # deletes on HNSW: tombstones are never returned, recall stays high
    stub.Delete(pb.DeleteRequest(gallery="g", ids=list(range(0, 2000, 2))))
    res = stub.BatchSearch(batch_req(q, k=10)).results
    flat = faiss.IndexFlatIP(DIM)
    flat.add(x[1::2])
    _, exact = flat.search(q, 10)
    exact = exact * 2 + 1
    got = [set(r.ids) for r in res]
    assert all(i % 2 == 1 for r in got for i in r)
    recall = np.mean([len(g & set(e)) / 10 for g, e in zip(got, exact.tolist())])
    assert recall > 0.9


def test_ivf_is_exact_until_trained_then_trains(stub):
    make_gallery(stub, index_factory="IVF8,Flat", default_params=pb.SearchParams(ivf_nprobe=8))
    x = unit(1200, seed=8)
    stub.Upsert(upsert_req(range(500), x[:500]))
    assert not stub.DescribeGallery(pb.DescribeGalleryRequest(name="g")).trained
    assert stub.Search(search_req(x[3], k=1)).result.ids[0] == 3
    stub.Upsert(upsert_req(range(500, 1200), x[500:]))
    assert stub.DescribeGallery(pb.DescribeGalleryRequest(name="g")).trained
    res = stub.BatchSearch(batch_req(x[:50], k=1)).results  # nprobe = nlist: exact
    assert [r.ids[0] for r in res] == list(range(50))


# ----------------------------------------------------------------------------------- auth & TLS
READ_TOKEN, ADMIN_TOKEN = "read-token-123", "admin-token-456"


def test_read_only_server_with_only_a_read_token(tmp_path):
    with running_server(tmp_path / "d", tokens=Tokens(read=READ_TOKEN.encode())) as s, \
            grpc.insecure_channel(f"127.0.0.1:{s.port}") as ch:
        st = pb_grpc.GalleryServiceStub(ch)
        read = (("authorization", f"Bearer {READ_TOKEN}"),)
        assert code_of(st.ListGalleries, pb.ListGalleriesRequest(), metadata=read) == C.OK
        assert code_of(st.CreateGallery, pb.CreateGalleryRequest(name="g", space_id=SPACE), metadata=read) \
            == C.PERMISSION_DENIED


@pytest.mark.parametrize("text,read,admin", [
    ("read=aaaaaaaa1\nadmin=bbbbbbbb2\n", b"aaaaaaaa1", b"bbbbbbbb2"),
    ("# tokens\nadmin = bbbbbbbb2\n", None, b"bbbbbbbb2"),
    ("aaaaaaaa1\nbbbbbbbb2\n", b"aaaaaaaa1", b"bbbbbbbb2"),
])
def test_token_file_formats(tmp_path, text, read, admin):
    p = tmp_path / "tokens"
    p.write_text(text)
    t = load_token_file(p)
    assert (t.read, t.admin) == (read, admin)


@pytest.mark.parametrize("text", ["read=short\n", "root=aaaaaaaaaa\n", "read=aaaaaaaa1\nadmin=aaaaaaaa1\n",
                                  "a\nb\nc\n", ""])
def test_token_file_errors(tmp_path, text):
    from hetsearch.errors import DataError

    p = tmp_path / "tokens"
    p.write_text(text)
    with pytest.raises(DataError):
        load_token_file(p)


def test_tls(tmp_path):
    cert, key = self_signed_cert(tmp_path)
    with running_server(tmp_path / "d", tls_cert=str(cert), tls_key=str(key)) as s:
        creds = grpc.ssl_channel_credentials(root_certificates=cert.read_bytes())
        with grpc.secure_channel(f"127.0.0.1:{s.port}", creds) as ch:
            st = pb_grpc.GalleryServiceStub(ch)
            assert make_gallery(st).name == "g"
        with grpc.insecure_channel(f"127.0.0.1:{s.port}") as ch:  # plaintext to a TLS port fails
            st = pb_grpc.GalleryServiceStub(ch)
            assert code_of(st.ListGalleries, pb.ListGalleriesRequest(), timeout=3) == C.UNAVAILABLE


# ----------------------------------------------------------------------------------- health, reflection, metrics
def test_health_transitions(tmp_path):
    from hetsearch.gallery_server.server import GalleryServer, ServerConfig

    s = GalleryServer(ServerConfig(data_dir=tmp_path / "d", port=0, drain_delay_s=0.6))
    port = s.start(load=False)
    with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
        health = health_pb2_grpc.HealthStub(ch)

        def status(service=""):
            return health.Check(health_pb2.HealthCheckRequest(service=service), timeout=3).status

        NOT, OK = health_pb2.HealthCheckResponse.NOT_SERVING, health_pb2.HealthCheckResponse.SERVING
        assert status() == NOT and status("hetsearch.v1.GalleryService") == NOT
        st = pb_grpc.GalleryServiceStub(ch)
        assert code_of(st.ListGalleries, pb.ListGalleriesRequest()) == C.UNAVAILABLE
        s.load()
        assert status() == OK and status("hetsearch.v1.GalleryService") == OK
        stopper = threading.Thread(target=s.stop, kwargs={"grace": 1.0})
        stopper.start()
        time.sleep(0.2)
        assert status() == NOT  # draining: still answering, but not serving
        stopper.join(timeout=10)
    assert s.wait(0)


def test_reflection_lists_services(server):
    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as ch:
        stub = reflection_pb2_grpc.ServerReflectionStub(ch)
        [resp] = list(stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")])))
        names = {s.name for s in resp.list_services_response.service}
    assert {"hetsearch.v1.GalleryService", "grpc.health.v1.Health"} <= names


def test_metrics_endpoint(server, stub):
    make_gallery(stub)
    stub.Upsert(upsert_req(range(5), unit(5)))
    code_of(stub.Search, search_req(V, gallery="nope"))
    text = urllib.request.urlopen(f"http://127.0.0.1:{server.metrics_port}/metrics", timeout=5).read().decode()
    assert 'hetsearch_requests_total{code="OK",method="Upsert"} 1.0' in text
    assert 'hetsearch_requests_total{code="NOT_FOUND",method="Search"} 1.0' in text
    assert 'hetsearch_request_seconds_bucket{code="OK",le="0.5",method="Upsert"}' in text
    assert 'hetsearch_gallery_vectors{gallery="g"} 5.0' in text
    assert 'hetsearch_wal_lag_records{gallery="g"} 1.0' in text
    assert 'hetsearch_wal_bytes{gallery="g"}' in text


# ----------------------------------------------------------------------------------- command line
def test_serve_refuses_public_host_without_token(tmp_path, capsys):
    from hetsearch.gallery_server.__main__ import main

    assert main(["serve", "--data-dir", str(tmp_path / "d"), "--host", "0.0.0.0"]) == 2
    assert "refusing" in capsys.readouterr().err
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("example.com")


def test_cli_help_has_examples(capsys):
    from hetsearch.cli import build_parser

    parser = build_parser()
    for cmd in ("serve", "gallery"):
        with pytest.raises(SystemExit):
            parser.parse_args([cmd, "--help"])
        assert "examples:" in capsys.readouterr().out


def test_gallery_admin_command(server, capsys, tmp_path):
    from hetsearch.gallery_server.__main__ import main

    addr = f"127.0.0.1:{server.port}"
    assert main(["gallery", "create", "shoes", "--space", SPACE, "--index", "HNSW32", "--server", addr]) == 0
    assert main(["gallery", "list", "--server", addr]) == 0
    assert "shoes" in capsys.readouterr().out
    assert main(["gallery", "describe", "shoes", "--server", addr, "--json", "-"]) == 0
    assert '"index_factory": "HNSW32"' in capsys.readouterr().out
    out = tmp_path / "g.json"
    assert main(["gallery", "describe", "shoes", "--server", addr, "--json", str(out)]) == 0
    assert json.loads(out.read_text())[0]["index_factory"] == "HNSW32" and "HNSW32" in capsys.readouterr().out
    assert main(["gallery", "snapshot", "--server", addr]) == 0
    assert main(["gallery", "drop", "shoes", "--server", addr]) == 0
    assert main(["gallery", "describe", "shoes", "--server", addr]) == 2
    assert "not found; there are no galleries yet" in capsys.readouterr().err
