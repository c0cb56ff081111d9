"""Property-based fuzzing of requests: whatever arrives, the server answers with a deliberate
status (never INTERNAL/UNKNOWN for a well-formed message) and stays up."""

from __future__ import annotations

import grpc
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hetsearch.v1 import gallery_pb2 as pb
from hetsearch.v1 import gallery_pb2_grpc as pb_grpc
from test_gallery_server_fixtures import DIM, OTHER_SPACE, SPACE, make_gallery, running_server, unit, upsert_req

C = grpc.StatusCode
DELIBERATE = {C.OK, C.INVALID_ARGUMENT, C.NOT_FOUND, C.FAILED_PRECONDITION, C.RESOURCE_EXHAUSTED,
              C.ALREADY_EXISTS}
SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@pytest.fixture(scope="module")
def fuzz_server(tmp_path_factory):
    with running_server(tmp_path_factory.mktemp("fuzz") / "d", max_message_bytes=1 << 20) as s:
        with grpc.insecure_channel(f"127.0.0.1:{s.port}") as ch:
            stub = pb_grpc.GalleryServiceStub(ch)
            make_gallery(stub, "g")
            make_gallery(stub, "h", index_factory="HNSW8")
            for name in ("g", "h"):
                stub.Upsert(upsert_req(range(50), unit(50), gallery=name))
            yield s, stub, ch


names = st.sampled_from(["g", "h", "", "nope", "../etc", "g" * 200, "\x00", "ü"])
spaces = st.sampled_from([SPACE, OTHER_SPACE, "", "sp1-d16-n-zz", "x" * 300])
floats = st.floats(allow_nan=True, allow_infinity=True, width=32)
vectors = st.one_of(st.lists(floats, min_size=0, max_size=3 * DIM + 3),
                    st.lists(st.floats(-1, 1, width=32), min_size=DIM, max_size=DIM))
ks = st.one_of(st.integers(-(2 ** 31), 2 ** 31 - 1), st.integers(-2, 60))
params = st.builds(pb.SearchParams, hnsw_ef_search=st.integers(0, 2 ** 32 - 1), ivf_nprobe=st.integers(0, 2 ** 32 - 1))


def _check(stub, call, request):
    try:
        call(request, timeout=10)
    except grpc.RpcError as exc:
        assert exc.code() in DELIBERATE, (exc.code(), exc.details())
        assert "Traceback" not in (exc.details() or "")
    assert stub.ListGalleries(pb.ListGalleriesRequest(), timeout=10).galleries


@SETTINGS
@given(gallery=names, space=spaces, embedding=vectors, k=ks, p=params)
def test_fuzz_search(fuzz_server, gallery, space, embedding, k, p):
    _, stub, _ = fuzz_server
    req = pb.SearchRequest(gallery=gallery, space_id=space, embedding=embedding, k=k, params=p)
    _check(stub, stub.Search, req)


@SETTINGS
@given(gallery=names, space=spaces, embeddings=vectors, k=ks, dim=st.integers(0, 40))
def test_fuzz_batch_search(fuzz_server, gallery, space, embeddings, k, dim):
    _, stub, _ = fuzz_server
    req = pb.BatchSearchRequest(gallery=gallery, space_id=space, embeddings=embeddings, k=k, dim=dim)
    _check(stub, stub.BatchSearch, req)


@SETTINGS
@given(gallery=names, space=spaces, ids=st.lists(st.integers(-(2 ** 63), 2 ** 63 - 1), max_size=4),
       vecs=vectors, meta=st.lists(st.text(max_size=20), max_size=4))
def test_fuzz_upsert_and_delete(fuzz_server, gallery, space, ids, vecs, meta):
    _, stub, _ = fuzz_server
    _check(stub, stub.Upsert, pb.UpsertRequest(gallery=gallery, space_id=space, ids=ids, vectors=vecs,
                                                metadata=meta))
    _check(stub, stub.Delete, pb.DeleteRequest(gallery=gallery, ids=ids))


@SETTINGS
@given(name=names, space=spaces, dim=st.integers(0, 2 ** 32 - 1),
       metric=st.sampled_from(["", "cosine", "l2", "ip", "bogus"]),
       factory=st.sampled_from(["", "Flat", "HNSW4", "IVF2,Flat", "PQ3", "nonsense", "IVF0,Flat", "HNSW-1"]))
def test_fuzz_create(fuzz_server, name, space, dim, metric, factory):
    _, stub, _ = fuzz_server
    req = pb.CreateGalleryRequest(name=name, space_id=space, dim=dim, metric=metric, index_factory=factory)
    try:
        stub.CreateGallery(req, timeout=10)
        stub.DropGallery(pb.DropGalleryRequest(name=name), timeout=10)
    except grpc.RpcError as exc:
        assert exc.code() in DELIBERATE, (exc.code(), exc.details())
    assert stub.ListGalleries(pb.ListGalleriesRequest(), timeout=10).galleries


@SETTINGS
@given(method=st.sampled_from(["Search", "BatchSearch", "Upsert", "Delete", "CreateGallery", "Snapshot"]),
       payload=st.binary(max_size=300))
def test_fuzz_raw_bytes(fuzz_server, method, payload):
    _, stub, channel = fuzz_server
    call = channel.unary_unary(f"/hetsearch.v1.GalleryService/{method}")
    try:
        call(payload, timeout=10)
    except grpc.RpcError as exc:
        # undecodable bytes are refused by grpc itself (INTERNAL "Exception deserializing request")
        assert exc.code() in DELIBERATE | {C.INTERNAL}, (exc.code(), exc.details())
        assert "Traceback" not in (exc.details() or "")
    assert stub.ListGalleries(pb.ListGalleriesRequest(), timeout=10).galleries
