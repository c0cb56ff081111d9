"""One behavioural suite, run against every store backend behind the same gRPC server.

Legs: ``faiss`` (galleries in a data directory), ``milvus-lite`` (a ``milvus-lite server`` subprocess on a
free loopback port with a temporary data directory, so the server talks to Milvus over its real gRPC
protocol) and ``milvus-cluster`` (only when ``HETSEARCH_MILVUS_URI`` names a real Milvus; token in
``HETSEARCH_MILVUS_TOKEN``). Each Milvus test gets a fresh database, dropped afterwards. No mocks.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

import test_gallery_server as base
from hetsearch.gallery_server.auth import Tokens
from hetsearch.gallery_server.lite_process import LiteServer, free_port
from hetsearch.sdk.client import GalleryClient, IncompatibleSpaceError
from hetsearch.v1 import gallery_pb2 as pb
from hetsearch.v1 import gallery_pb2_grpc as pb_grpc
from test_gallery_server_fixtures import (DIM, OTHER_SPACE, SPACE, batch_req, code_of, make_gallery, rpc_error,
                                          running_server, search_req, spawn_server, unit, upsert_req)

C = grpc.StatusCode
LEGS = ["faiss", "milvus-lite", "milvus-cluster"]
CLUSTER_ENV = "HETSEARCH_MILVUS_URI"


# ----------------------------------------------------------------------------------- Milvus processes
@contextlib.contextmanager
def lite_server(root: Path):
    pytest.importorskip("milvus_lite", reason="the Milvus legs need pip install 'hetsearch[milvus]'")
    server = LiteServer(root / "milvus-data", free_port()).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def milvus_lite(tmp_path_factory):
    with lite_server(tmp_path_factory.mktemp("lite")) as server:
        yield server.uri


@contextlib.contextmanager
def fresh_database(uri: str, token: str = ""):
    """A database of its own on that Milvus, and a client on it; dropped with its collections afterwards."""
    from pymilvus import MilvusClient

    db = f"hst_{uuid.uuid4().hex[:12]}"
    admin = MilvusClient(uri=uri, token=token, dedicated=True)
    admin.create_database(db)
    client = MilvusClient(uri=uri, token=token, db_name=db, dedicated=True)
    try:
        yield db, client
    finally:
        for name in client.list_collections():
            client.drop_collection(name)
        client.close()
        admin.drop_database(db)
        admin.close()


# ----------------------------------------------------------------------------------- the legs
@dataclass
class Leg:
    name: str
    store: dict  # the ServerConfig fields that choose and configure the backend
    milvus: object = None  # a pymilvus client on the leg's database, to look at what Milvus holds
    logs: list = field(default_factory=list)

    @property
    def is_milvus(self) -> bool:
        return self.name != "faiss"

    def serve(self, **config):
        store = dict(self.store)
        return running_server(store.pop("data_dir", None), **store, **config)


@pytest.fixture(params=LEGS)
def leg(request, tmp_path):
    if request.param == "faiss":
        yield Leg("faiss", {"data_dir": tmp_path / "data"})
        return
    token = ""
    if request.param == "milvus-lite":
        uri = request.getfixturevalue("milvus_lite")
    else:
        uri = os.environ.get(CLUSTER_ENV)
        if not uri:
            pytest.skip(f"{CLUSTER_ENV} is not set: the leg against a real Milvus runs only when it names one "
                        "(e.g. http://milvus:19530, token in HETSEARCH_MILVUS_TOKEN)")
        token = os.environ.get("HETSEARCH_MILVUS_TOKEN", "")
    pytest.importorskip("pymilvus", reason="the Milvus legs need pip install 'hetsearch[milvus]'")
    with fresh_database(uri, token) as (db, client):
        yield Leg(request.param, {"backend": "milvus", "milvus_uri": uri, "milvus_db": db, "milvus_token": token},
                  client)


@pytest.fixture
def server(leg):
    with leg.serve(metrics_port=0) as s:
        yield s


@pytest.fixture
def stub(server):
    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        yield pb_grpc.GalleryServiceStub(channel)


def describe(stub, name="g") -> pb.Gallery:
    return stub.DescribeGallery(pb.DescribeGalleryRequest(name=name))


def names(stub) -> list[str]:
    return [g.name for g in stub.ListGalleries(pb.ListGalleriesRequest()).galleries]


# ----------------------------------------------------------------------------------- every RPC
def test_every_rpc_round_trip(leg, server, stub):
    g = make_gallery(stub, "g", default_params=pb.SearchParams(hnsw_ef_search=32))
    assert (g.name, g.space_id, g.dim, g.metric, g.index_factory) == ("g", SPACE, DIM, "cosine", "Flat")
    assert g.state == pb.GALLERY_STATE_READY and g.default_params.hnsw_ef_search == 32 and g.vector_count == 0
    x = unit(50)
    up = stub.Upsert(upsert_req(range(50), x, metadata=[f"item{i}" for i in range(50)]))
    assert (up.upserted, up.vector_count) == (50, 50)
    hit = stub.Search(search_req(x[7], k=3)).result
    assert hit.ids[0] == 7 and hit.metadata[0] == "item7" and abs(hit.scores[0] - 1) < 1e-5
    assert list(hit.scores) == sorted(hit.scores, reverse=True)
    assert [r.ids[0] for r in stub.BatchSearch(batch_req(x[:4], k=2)).results] == [0, 1, 2, 3]
    d = stub.Delete(pb.DeleteRequest(gallery="g", ids=[7, 8, 8, 999]))
    assert (d.deleted, d.not_found, d.vector_count) == (2, 1, 48)
    assert 7 not in stub.Search(search_req(x[7], k=48)).result.ids
    assert describe(stub).vector_count == 48
    snap = stub.Snapshot(pb.SnapshotRequest(gallery="g")).snapshots
    assert (snap[0].gallery, snap[0].vector_count) == ("g", 48)
    make_gallery(stub, "h.2-x_y", index_factory="HNSW32")
    assert names(stub) == ["g", "h.2-x_y"]
    assert len(stub.Snapshot(pb.SnapshotRequest()).snapshots) == 2  # all galleries
    stub.DropGallery(pb.DropGalleryRequest(name="h.2-x_y"))
    assert names(stub) == ["g"]
    assert code_of(stub.Search, search_req(x[0], gallery="h.2-x_y")) == C.NOT_FOUND
    if leg.is_milvus:  # Milvus orders writes itself: no sequence numbers, no log of ours
        assert (up.seq, d.seq, snap[0].seq, describe(stub).wal_records) == (0, 0, 0, 0)
    else:
        assert (up.seq, d.seq, snap[0].seq, describe(stub).snapshot_seq) == (1, 2, 2, 2)
    # the SDK, unchanged, on either backend
    with GalleryClient(f"127.0.0.1:{server.port}", gallery="g", space_id=SPACE, retries=0) as client:
        assert [h.id for h in client.search(x[3], k=2)][0] == 3
        assert client.describe().vector_count == 48
        with pytest.raises(IncompatibleSpaceError):
            client.search(x[3], k=2, space_id=OTHER_SPACE)


def test_upsert_replaces_and_last_duplicate_wins(stub):
    make_gallery(stub)
    x = unit(3, seed=1)
    stub.Upsert(upsert_req([1, 2], x[:2], metadata=["a", "b"]))
    stub.Upsert(upsert_req([1, 1], [x[2], x[0]], metadata=["first", "last"]))
    r = stub.Search(search_req(x[0], k=5)).result
    assert list(r.ids) == [1, 2] and r.metadata[0] == "last"
    assert describe(stub).vector_count == 2


def test_create_is_idempotent_only_when_identical(stub):
    make_gallery(stub, index_factory="HNSW16")
    assert code_of(make_gallery, stub, index_factory="HNSW16") == C.ALREADY_EXISTS
    assert code_of(make_gallery, stub, index_factory="Flat") == C.ALREADY_EXISTS
    stub.DropGallery(pb.DropGalleryRequest(name="g"))
    assert make_gallery(stub, index_factory="Flat").index_factory == "Flat"  # a dropped name can be reused


def test_space_guard(stub):
    make_gallery(stub)
    stub.Upsert(upsert_req([1], unit(1)))
    err = rpc_error(stub.Search, search_req(unit(1)[0], space=OTHER_SPACE))
    assert err.code() == C.FAILED_PRECONDITION
    assert SPACE in err.details() and OTHER_SPACE in err.details()
    trailing = dict(err.trailing_metadata())
    assert trailing["hetsearch-expected-space"] == SPACE and trailing["hetsearch-got-space"] == OTHER_SPACE
    assert code_of(stub.Upsert, upsert_req([2], unit(1), space=OTHER_SPACE)) == C.FAILED_PRECONDITION
    assert code_of(stub.BatchSearch, batch_req(unit(2), space=OTHER_SPACE)) == C.FAILED_PRECONDITION
    assert describe(stub).vector_count == 1


def test_error_codes(stub):
    """Every bad request of the faiss suite gets the same status on every backend, and changes nothing."""
    make_gallery(stub)
    stub.Upsert(upsert_req([1, 2, 3], unit(3)))
    wrong = []
    for method, request, code in base.BAD_REQUESTS:
        err = rpc_error(getattr(stub, method), request)
        if err.code() != code or not err.details() or "Traceback" in err.details():
            wrong.append((method, str(request)[:80], err.code(), err.details()[:200]))
    assert not wrong, wrong
    assert describe(stub).vector_count == 3


def test_search_knob_bounds(stub):
    make_gallery(stub, index_factory="HNSW16")
    stub.Upsert(upsert_req(range(20), unit(20)))
    for params in (pb.SearchParams(hnsw_ef_search=(1 << 16) + 1), pb.SearchParams(ivf_nprobe=(1 << 20) + 1)):
        req = search_req(unit(1)[0])
        req.params.CopyFrom(params)
        assert code_of(stub.Search, req) == C.INVALID_ARGUMENT
    req = search_req(unit(1)[0], k=10)
    req.params.hnsw_ef_search = 2  # below k: searched with ef = k on both backends, as faiss does
    assert len(stub.Search(req).result.ids) == 10


# ----------------------------------------------------------------------------------- results
def _exact(x, q, metric, k):
    """Exact top-k (ids, scores) in float64: similarity for cosine/ip, squared distance for l2."""
    x64, q64 = x.astype(np.float64), q.astype(np.float64)
    if metric == "cosine":
        x64 /= np.linalg.norm(x64, axis=1, keepdims=True)
        q64 /= np.linalg.norm(q64, axis=1, keepdims=True)
    if metric == "l2":
        scores = ((q64[:, None, :] - x64[None, :, :]) ** 2).sum(-1)
        order = np.argsort(scores, axis=1)[:, :k]
    else:
        scores = q64 @ x64.T
        order = np.argsort(-scores, axis=1)[:, :k]
    return order, np.take_along_axis(scores, order, axis=1)


@pytest.mark.parametrize("metric", ["cosine", "ip", "l2"])
def test_flat_results_equal_exact_search(stub, metric):
    """Same ids and the same scores (cosine / inner product similarity, squared L2 distance) on every backend."""
    make_gallery(stub, metric=metric)
    rng = np.random.default_rng(3)
    x, q = rng.standard_normal((1500, DIM)).astype(np.float32), rng.standard_normal((20, DIM)).astype(np.float32)
    stub.Upsert(upsert_req(range(1500), x))
    stub.Delete(pb.DeleteRequest(gallery="g", ids=list(range(0, 1500, 3))))
    keep = np.array([i for i in range(1500) if i % 3])
    order, scores = _exact(x[keep], q, metric, 10)
    res = stub.BatchSearch(batch_req(q, k=10)).results
    assert [list(r.ids) for r in res] == keep[order].tolist()
    np.testing.assert_allclose([list(r.scores) for r in res], scores, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("index,params", [("HNSW32", pb.SearchParams(hnsw_ef_search=64)),
                                          ("IVF8,Flat", pb.SearchParams(ivf_nprobe=8))])
def test_approximate_indexes_find_the_neighbours(stub, index, params):
    make_gallery(stub, index_factory=index, default_params=params)
    x, q = unit(1200, seed=6), unit(30, seed=7)
    stub.Upsert(upsert_req(range(1200), x))
    order, _ = _exact(x, q, "cosine", 10)
    res = stub.BatchSearch(batch_req(q, k=10)).results
    recall = np.mean([len(set(r.ids) & set(e)) / 10 for r, e in zip(res, order.tolist())])
    assert recall > 0.9


def test_searches_run_in_parallel_with_writes(stub):
    make_gallery(stub, index_factory="HNSW16")
    base_x = unit(500, seed=9)
    stub.Upsert(upsert_req(range(500), base_x))
    errors, stop = [], threading.Event()

    def reader():
        while not stop.is_set():
            try:
                assert stub.Search(search_req(base_x[11], k=3)).result.ids[0] == 11
            except Exception as exc:  # noqa: BLE001
                errors.append(exc)

    def writer(w):
        for j in range(15):
            ids = range(1000 + w * 1000 + j * 10, 1000 + w * 1000 + j * 10 + 10)
            stub.Upsert(upsert_req(ids, unit(10, seed=100 + w * 50 + j)))
            stub.Delete(pb.DeleteRequest(gallery="g", ids=[ids[0]]))

    threads = [threading.Thread(target=reader) for _ in range(3)]
    writers = [threading.Thread(target=writer, args=(w,)) for w in range(3)]
    for t in threads + writers:
        t.start()
    for t in writers:
        t.join(timeout=60)
    stop.set()
    for t in threads:
        t.join(timeout=10)
    assert not errors, errors[:3]
    assert describe(stub).vector_count == 500 + 3 * 15 * 9


# ----------------------------------------------------------------------------------- auth, restart
def test_auth(leg):
    read, admin = (("authorization", f"Bearer {base.READ_TOKEN}"),), (("authorization", f"Bearer {base.ADMIN_TOKEN}"),)
    tokens = Tokens(read=base.READ_TOKEN.encode(), admin=base.ADMIN_TOKEN.encode())
    with leg.serve(tokens=tokens) as s, grpc.insecure_channel(f"127.0.0.1:{s.port}") as ch:
        st = pb_grpc.GalleryServiceStub(ch)
        req = pb.ListGalleriesRequest()
        assert code_of(st.ListGalleries, req) == C.UNAUTHENTICATED
        assert code_of(st.ListGalleries, req, metadata=(("authorization", "Bearer wrong-token"),)) \
            == C.UNAUTHENTICATED
        assert code_of(st.ListGalleries, req, metadata=(("authorization", base.ADMIN_TOKEN),)) == C.UNAUTHENTICATED
        assert code_of(st.ListGalleries, req, metadata=read) == C.OK
        create = pb.CreateGalleryRequest(name="g", space_id=SPACE)
        err = rpc_error(st.CreateGallery, create, metadata=read)
        assert err.code() == C.PERMISSION_DENIED and "admin" in err.details()
        assert code_of(st.CreateGallery, create, metadata=admin) == C.OK
        assert code_of(st.Upsert, upsert_req([1], unit(1)), metadata=read) == C.PERMISSION_DENIED
        assert code_of(st.Upsert, upsert_req([1], unit(1)), metadata=admin) == C.OK
        assert code_of(st.Search, search_req(unit(1)[0]), metadata=read) == C.OK
        assert code_of(st.Search, search_req(unit(1)[0]), metadata=admin) == C.OK
        assert code_of(st.Search, search_req(unit(1)[0])) == C.UNAUTHENTICATED
        assert code_of(st.DropGallery, pb.DropGalleryRequest(name="g"), metadata=read) == C.PERMISSION_DENIED
        # health stays open for load balancers
        health = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest())
        assert health.status == health_pb2.HealthCheckResponse.SERVING


def test_restart_keeps_every_acknowledged_write(leg):
    x = unit(120, seed=11)
    with leg.serve() as s, grpc.insecure_channel(f"127.0.0.1:{s.port}") as ch:
        st = pb_grpc.GalleryServiceStub(ch)
        before = make_gallery(st, index_factory="IVF4,Flat", metric="ip",
                              default_params=pb.SearchParams(ivf_nprobe=3))
        st.Upsert(upsert_req(range(120), x, metadata=[f"m{i}" for i in range(120)]))
        st.Delete(pb.DeleteRequest(gallery="g", ids=list(range(10))))
    with leg.serve() as s, grpc.insecure_channel(f"127.0.0.1:{s.port}") as ch:  # same data, a new process state
        st = pb_grpc.GalleryServiceStub(ch)
        after = describe(st)
        fields = ("name", "space_id", "dim", "metric", "index_factory", "default_params", "created_unix_ms")
        assert [getattr(after, f) for f in fields] == [getattr(before, f) for f in fields]
        assert after.vector_count == 110
        r = st.Search(search_req(x[50], k=1)).result
        assert (r.ids[0], r.metadata[0]) == (50, "m50")
        assert 5 not in st.Search(search_req(x[5], k=110)).result.ids
        assert code_of(st.Search, search_req(x[5], space=OTHER_SPACE)) == C.FAILED_PRECONDITION


# ----------------------------------------------------------------------------------- Milvus only
def milvus_only(leg):
    if not leg.is_milvus:
        pytest.skip("Milvus backend only")


def test_milvus_collection_layout(leg, stub):
    """Strong consistency (Milvus Lite ignores the level, so only this check catches its absence), the space
    and schema version in the collection's properties, and the explicit schema."""
    milvus_only(leg)
    make_gallery(stub, "shoes.v2", index_factory="IVF16,Flat", metric="l2")
    [collection] = leg.milvus.list_collections()
    assert collection == "hs_shoes_dv2"
    d = leg.milvus.describe_collection(collection)
    assert d["consistency_level"] == 0  # pymilvus ConsistencyLevel.Strong
    props = d["properties"]
    assert props["hetsearch.space_id"] == SPACE and props["hetsearch.schema_version"] == "1"
    assert props["hetsearch.index_factory"] == "IVF16,Flat" and props["hetsearch.metric"] == "l2"
    fields = {f["name"]: f for f in d["fields"]}
    assert fields["id"]["is_primary"] and not d["auto_id"] and int(fields["vector"]["params"]["dim"]) == DIM
    assert int(fields["metadata"]["params"]["max_length"]) == 65535
    index = leg.milvus.describe_index(collection, leg.milvus.list_indexes(collection)[0])
    assert (index["index_type"], index["metric_type"]) == ("IVF_FLAT", "L2")


def test_milvus_index_mapping(leg, stub):
    milvus_only(leg)
    err = rpc_error(make_gallery, stub, index_factory="IVF64,PQ8")  # a valid faiss string with no mapping
    assert err.code() == C.INVALID_ARGUMENT
    assert "HNSW<M>" in err.details() and "IVF<nlist>,Flat" in err.details()
    assert code_of(make_gallery, stub, index_factory="HNSW1") == C.INVALID_ARGUMENT
    assert names(stub) == []
    g = stub.CreateGallery(pb.CreateGalleryRequest(name="default", space_id=SPACE))  # no index string
    assert g.index_factory == "HNSW32"


def test_milvus_dropped_build_params_are_reported(leg, stub, caplog):
    milvus_only(leg)
    with caplog.at_level(logging.WARNING, logger="hetsearch.gallery_server.milvus"):
        g = make_gallery(stub, index_factory="HNSW24")
    if leg.name != "milvus-lite" and not g.status_message:
        return  # a Milvus that keeps M and efConstruction: nothing to report
    assert "M=24, efConstruction=40" in g.status_message and "defaults apply" in g.status_message
    assert describe(stub).status_message == g.status_message  # also in every Describe/List
    assert any("milvus_gallery_differs" in r.getMessage() and r.levelno == logging.WARNING for r in caplog.records)


def test_milvus_collections_that_are_not_galleries(leg, stub):
    """A collection of someone else is left alone; one with unreadable hetsearch properties is DATA_LOSS."""
    milvus_only(leg)
    from pymilvus import DataType, MilvusClient

    leg.milvus.create_collection("someone_else", dimension=DIM)
    schema = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False)
    schema.add_field("id", DataType.INT64, is_primary=True)
    schema.add_field("vector", DataType.FLOAT_VECTOR, dim=DIM)
    index = MilvusClient.prepare_index_params()
    index.add_index(field_name="vector", index_type="FLAT", metric_type="COSINE")
    leg.milvus.create_collection("hs_future", schema=schema, index_params=index, properties={
        "hetsearch.space_id": SPACE, "hetsearch.schema_version": "99"})
    [info] = stub.ListGalleries(pb.ListGalleriesRequest()).galleries
    assert (info.name, info.state) == ("future", pb.GALLERY_STATE_UNAVAILABLE) and "'99'" in info.status_message
    assert code_of(stub.Search, search_req(unit(1)[0], gallery="future")) == C.DATA_LOSS
    assert code_of(stub.Search, search_req(unit(1)[0], gallery="someone_else")) == C.NOT_FOUND
    assert sorted(leg.milvus.list_collections()) == ["hs_future", "someone_else"]


def health_status(ch) -> str:
    r = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(service=""), timeout=5)
    return health_pb2.HealthCheckResponse.ServingStatus.Name(r.status)


def wait_for_health(ch, want: str, seconds: float) -> bool:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        if health_status(ch) == want:
            return True
        time.sleep(0.2)
    return False


def test_milvus_down_is_unavailable_naming_it(tmp_path):
    pytest.importorskip("pymilvus", reason="needs pip install 'hetsearch[milvus]'")
    uri = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    with running_server(None, backend="milvus", milvus_uri=uri, milvus_timeout_s=2, metrics_port=0) as s, \
            grpc.insecure_channel(f"127.0.0.1:{s.port}") as ch:
        st = pb_grpc.GalleryServiceStub(ch)
        for call, req in [(st.ListGalleries, pb.ListGalleriesRequest()), (st.Search, search_req(unit(1)[0])),
                          (st.CreateGallery, pb.CreateGalleryRequest(name="g", space_id=SPACE)),
                          (st.Upsert, upsert_req([1], unit(1))), (st.Snapshot, pb.SnapshotRequest())]:
            err = rpc_error(call, req, timeout=20)
            assert err.code() == C.UNAVAILABLE and uri in err.details(), (call, err.details())
        text = urllib.request.urlopen(f"http://127.0.0.1:{s.metrics_port}/metrics", timeout=5).read().decode()
        assert "hetsearch_backend_up 0.0" in text
        assert health_status(ch) == "NOT_SERVING"  # load balancers route away while Milvus is unreachable


def test_milvus_outage_and_restart(tmp_path):
    """Milvus Lite stopped under a running server: UNAVAILABLE naming it; started again on the same data: the
    same server reconnects and every acknowledged write is there."""
    x = unit(40, seed=2)
    with lite_server(tmp_path) as lite, \
            running_server(None, backend="milvus", milvus_uri=lite.uri, milvus_timeout_s=3,
                           backend_probe_s=0.3) as s, \
            grpc.insecure_channel(f"127.0.0.1:{s.port}") as ch:
        st = pb_grpc.GalleryServiceStub(ch)
        make_gallery(st)
        st.Upsert(upsert_req(range(40), x))
        assert health_status(ch) == "SERVING"
        lite.stop()
        err = rpc_error(st.Search, search_req(x[1]), timeout=20)
        assert err.code() == C.UNAVAILABLE and lite.uri in err.details()
        assert wait_for_health(ch, "NOT_SERVING", 30)
        lite.start()
        # reloading the collection after a restart can take Milvus Lite longer than the server's 3 s backend
        # timeout on a loaded machine: the server then answers UNAVAILABLE (as it should) and the client retries
        deadline = time.monotonic() + 60
        while True:
            try:
                r = st.Search(search_req(x[1], k=1), timeout=20).result
                break
            except grpc.RpcError as exc:
                if exc.code() != C.UNAVAILABLE or time.monotonic() > deadline:
                    raise
                time.sleep(0.5)
        assert r.ids[0] == 1 and describe(st).vector_count == 40
        assert wait_for_health(ch, "SERVING", 30)


def test_serve_command_on_milvus(tmp_path, milvus_lite):
    """The real command line: --backend milvus --milvus-uri --milvus-db --milvus-token-file."""
    from pymilvus import MilvusClient

    db = f"hst_{uuid.uuid4().hex[:12]}"
    MilvusClient(uri=milvus_lite, dedicated=True).create_database(db)
    token_file = tmp_path / "milvus.token"
    token_file.write_text("# Milvus Lite accepts any token\nroot:Milvus\n")
    proc, port = spawn_server(tmp_path / "unused", store_args=[
        "--backend", "milvus", "--milvus-uri", milvus_lite, "--milvus-db", db, "--milvus-token-file", str(token_file)])
    try:
        with GalleryClient(f"127.0.0.1:{port}", gallery="g", space_id=SPACE, retries=0) as client:
            client.create_gallery("g", SPACE)
            client.upsert([5, 6], unit(2, seed=4))
            assert client.search(unit(2, seed=4)[1], k=1)[0].id == 6
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    assert proc.returncode == 0
    assert "root:Milvus" not in (tmp_path / "server.log").read_text()


@pytest.mark.parametrize("args,message", [
    (["--backend", "milvus"], "needs --milvus-uri"),
    (["--backend", "milvus", "--milvus-uri", "http://127.0.0.1:1", "--data-dir", "d"], "not --data-dir"),
    (["--milvus-uri", "http://127.0.0.1:1", "--data-dir", "d"], "are for --backend milvus"),
    ([], "needs --data-dir"),
])
def test_serve_refuses_options_of_the_other_backend(capsys, args, message):
    from hetsearch.gallery_server.__main__ import main

    assert main(["serve", "--port", "0", *args]) == 2
    assert message in capsys.readouterr().err
